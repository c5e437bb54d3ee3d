//! WebSocket: frames, the pushed-message JSON, and the per-connection session.

pub mod frame;
pub mod message;
pub mod session;
