//! RFC 6455 frames: encoding the server's (unmasked) frames once, and reading the client's.
//!
//! Encoding uses tungstenite's `FrameHeader::format`; reading uses `FrameHeader::parse` over the
//! bytes at hand and applies the rules a server must enforce itself (section 5): client frames
//! are masked, control frames are final and at most 125 bytes, reserved bits and opcodes are
//! errors, and a message larger than the read limit is refused before it is buffered.

use std::io::Cursor;
use std::sync::Arc;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Close codes wspush sends (RFC 6455 section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

/// One server frame, encoded once and shared by every recipient (server frames are unmasked, so
/// the bytes are identical for all of them).
pub type SharedFrame = Arc<[u8]>;

fn encode(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        is_final: true,
        opcode,
        ..FrameHeader::default()
    };
    let len = payload.len() as u64;
    let mut out = Vec::with_capacity(header.len(len) + payload.len());
    header
        .format(len, &mut out)
        .expect("bug: writing a frame header to a Vec cannot fail");
    out.extend_from_slice(payload);
    out
}

/// A text frame around `json`.
pub fn text(json: &[u8]) -> SharedFrame {
    encode(OpCode::Data(Data::Text), json).into()
}

/// Writes a text frame header for a payload of `len` bytes into `out`; the caller appends the
/// payload. Lets the push path build header and JSON in one buffer with one allocation.
pub fn text_header(len: usize, out: &mut Vec<u8>) {
    let header = FrameHeader {
        is_final: true,
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    header
        .format(len as u64, out)
        .expect("bug: writing a frame header to a Vec cannot fail");
}

/// Size of a text frame header for a payload of `len` bytes.
pub fn text_header_len(len: usize) -> usize {
    FrameHeader::default().len(len as u64)
}

pub fn close(code: u16, reason: &str) -> SharedFrame {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    encode(OpCode::Control(Control::Close), &payload).into()
}

pub fn ping() -> SharedFrame {
    encode(OpCode::Control(Control::Ping), b"").into()
}

pub fn pong(payload: &[u8]) -> SharedFrame {
    encode(OpCode::Control(Control::Pong), payload).into()
}

/// What a client frame means to the server.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// Text, binary or continuation data: read and ignored, as in the original.
    Data,
    Ping(&'a [u8]),
    Pong,
    /// The client's close code, if it sent one.
    Close(Option<u16>),
}

/// A protocol violation: the connection is closed with `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

/// Per-connection reading state: the size of the message being assembled from fragments.
#[derive(Debug, Default, Clone, Copy)]
pub struct MessageState {
    in_message: bool,
    message_len: usize,
}

/// Reads the next complete frame from the front of `buf`, unmasking its payload in place.
/// `Ok(None)`: more bytes are needed. On success also returns how many bytes the frame used.
pub fn read_frame<'a>(
    buf: &'a mut [u8],
    state: &mut MessageState,
    max_message: usize,
) -> Result<Option<(ClientFrame<'a>, usize)>, Violation> {
    let mut cursor = Cursor::new(&buf[..]);
    let (header, len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(_) => return Err(violation(close_code::PROTOCOL_ERROR, "bad frame header")),
    };
    let header_len = cursor.position() as usize;
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(violation(close_code::PROTOCOL_ERROR, "reserved bits set"));
    }
    let Some(mask) = header.mask else {
        return Err(violation(
            close_code::PROTOCOL_ERROR,
            "client frames must be masked",
        ));
    };
    match header.opcode {
        OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
            return Err(violation(close_code::PROTOCOL_ERROR, "reserved opcode"));
        }
        OpCode::Control(_) => {
            if !header.is_final || len > 125 {
                return Err(violation(
                    close_code::PROTOCOL_ERROR,
                    "control frames must be final and at most 125 bytes",
                ));
            }
        }
        OpCode::Data(data) => {
            let continuation = data == Data::Continue;
            if continuation != state.in_message {
                return Err(violation(
                    close_code::PROTOCOL_ERROR,
                    "unexpected continuation or missing continuation",
                ));
            }
            // Refuse before buffering: the total of the message so far plus this frame.
            let total = (state.message_len as u64).saturating_add(len);
            if total > max_message as u64 {
                return Err(violation(close_code::TOO_BIG, "message too big"));
            }
        }
    }
    let len = len as usize;
    let end = header_len + len;
    if buf.len() < end {
        return Ok(None);
    }
    if let OpCode::Data(_) = header.opcode {
        if header.is_final {
            *state = MessageState::default();
        } else {
            state.in_message = true;
            state.message_len += len;
        }
        return Ok(Some((ClientFrame::Data, end)));
    }
    let payload = &mut buf[header_len..end];
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
    let frame = match header.opcode {
        OpCode::Control(Control::Ping) => ClientFrame::Ping(payload),
        OpCode::Control(Control::Pong) => ClientFrame::Pong,
        OpCode::Control(Control::Close) => {
            if payload.len() == 1 {
                return Err(violation(
                    close_code::PROTOCOL_ERROR,
                    "one-byte close payload",
                ));
            }
            let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            if let Some(c) = code {
                if !CloseCode::from(c).is_allowed() {
                    return Err(violation(close_code::PROTOCOL_ERROR, "invalid close code"));
                }
            }
            ClientFrame::Close(code)
        }
        _ => unreachable!("bug: data opcodes returned above"),
    };
    Ok(Some((frame, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![first];
        if payload.len() < 126 {
            out.push(0x80 | payload.len() as u8);
        } else {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    #[test]
    fn server_text_frame_is_unmasked_and_final() {
        let f = text(b"hello");
        assert_eq!(&f[..], b"\x81\x05hello");
        let big = vec![b'x'; 300];
        let f = text(&big);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        assert_eq!(text_header_len(300), 4);
        assert_eq!(&close(1000, "")[..], &[0x88, 2, 0x03, 0xe8]);
    }

    #[test]
    fn reads_ping_close_and_partial_frames() {
        let mut st = MessageState::default();
        let mut ping = masked(0x89, b"abc");
        let (f, used) = read_frame(&mut ping, &mut st, 8192).unwrap().unwrap();
        assert_eq!(f, ClientFrame::Ping(b"abc"));
        assert_eq!(used, 9);
        let mut partial = masked(0x81, b"hello")[..5].to_vec();
        assert_eq!(read_frame(&mut partial, &mut st, 8192).unwrap(), None);
        let mut close = masked(0x88, &1001u16.to_be_bytes());
        let (f, _) = read_frame(&mut close, &mut st, 8192).unwrap().unwrap();
        assert_eq!(f, ClientFrame::Close(Some(1001)));
    }

    #[test]
    fn enforces_limits_and_masking() {
        let mut st = MessageState::default();
        let mut big = masked(0x81, &vec![0u8; 9000]);
        assert_eq!(read_frame(&mut big, &mut st, 8192).unwrap_err().code, 1009);
        // The limit counts whole messages across fragments.
        let mut st = MessageState::default();
        let mut first = masked(0x01, &vec![0u8; 5000]);
        assert_eq!(
            read_frame(&mut first, &mut st, 8192).unwrap().unwrap().0,
            ClientFrame::Data
        );
        let mut second = masked(0x80, &vec![0u8; 5000]);
        assert_eq!(
            read_frame(&mut second, &mut st, 8192).unwrap_err().code,
            1009
        );
        let mut st = MessageState::default();
        let mut unmasked = vec![0x81, 0x01, b'a'];
        assert_eq!(
            read_frame(&mut unmasked, &mut st, 8192).unwrap_err().code,
            1002
        );
        let mut long_ping = masked(0x89, &[0u8; 126]);
        assert_eq!(
            read_frame(&mut long_ping, &mut st, 8192).unwrap_err().code,
            1002
        );
        let mut stray = masked(0x80, b"x");
        assert_eq!(
            read_frame(&mut stray, &mut st, 8192).unwrap_err().code,
            1002
        );
    }
}
