//! Sockets: per-core accept, HTTP/1.x heads and bodies, the WebSocket handshake and the
//! connect's authorisation.

pub mod chunked;
pub mod connect;
pub mod handshake;
pub mod http;
pub mod listener;
