//! Sockets: per-core accept, HTTP/1.x heads and bodies, the WebSocket handshake.

pub mod chunked;
pub mod handshake;
pub mod http;
pub mod listener;
