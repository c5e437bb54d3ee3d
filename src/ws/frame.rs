//! RFC 6455 frames: encoding the server's (unmasked) frames once, and reading the client's.
//!
//! Encoding uses tungstenite's `FrameHeader::format`; reading uses `FrameHeader::parse` over the
//! bytes at hand and applies the rules a server must enforce itself (section 5): client frames
//! are masked, control frames are final and at most 125 bytes, reserved bits and opcodes are
//! errors, a message larger than the read limit is refused before it is buffered, and text
//! messages and close reasons must be UTF-8 (section 8.1).

use std::io::Cursor;
use std::sync::Arc;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Close codes wspush sends (RFC 6455 section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Data not consistent with its message type: a text message (or close reason) that is
    /// not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// wspush's own: a newer connection of the same user replaced this one (a system with
    /// singleConnection).
    pub const REPLACED: u16 = 4001;
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
pub fn text_header(len: usize, out: &mut impl std::io::Write) {
    let header = FrameHeader {
        is_final: true,
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    header
        .format(len as u64, out)
        .expect("bug: a frame header fits its buffer");
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

/// Per-connection reading state: the size of the message being assembled from fragments, and
/// (a text message) where its UTF-8 check stands.
#[derive(Debug, Default, Clone, Copy)]
pub struct MessageState {
    in_message: bool,
    message_len: usize,
    text: bool,
    utf8: Utf8Tail,
}

/// The UTF-8 check of a text message whose fragments arrive one by one. A code point may be
/// split between two fragments (section 5.6 allows any split), so the 1 to 3 bytes of one
/// that a fragment left open wait here for the next; only the message's end must close it.
#[derive(Debug, Default, Clone, Copy)]
struct Utf8Tail {
    bytes: [u8; 4],
    len: u8,
}

impl Utf8Tail {
    /// Checks the next `more` bytes of the message (`fin`: they end it); false when the
    /// message is not UTF-8.
    fn check(&mut self, mut more: &[u8], fin: bool) -> bool {
        if self.len > 0 {
            // Complete the code point the last fragment left open. Its first byte is a valid
            // lead byte (std said the bytes were a valid prefix), so its width is known.
            let width = match self.bytes[0] {
                0xf0..=0xf4 => 4,
                0xe0..=0xef => 3,
                _ => 2,
            };
            while usize::from(self.len) < width && !more.is_empty() {
                self.bytes[usize::from(self.len)] = more[0];
                self.len += 1;
                more = &more[1..];
            }
            match std::str::from_utf8(&self.bytes[..usize::from(self.len)]) {
                Ok(_) => self.len = 0,
                // Still a valid prefix, and this fragment is used up.
                Err(e) if e.error_len().is_none() => return !fin,
                Err(_) => return false,
            }
        }
        match std::str::from_utf8(more) {
            Ok(_) => true,
            Err(e) if e.error_len().is_none() && !fin => {
                let tail = &more[e.valid_up_to()..];
                self.bytes[..tail.len()].copy_from_slice(tail);
                self.len = tail.len() as u8;
                true
            }
            Err(_) => false,
        }
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
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
    if let OpCode::Data(data) = header.opcode {
        let text = match data {
            Data::Text => true,
            Data::Continue => state.text,
            _ => false,
        };
        // Section 8.1: "When an endpoint is to interpret a byte stream as UTF-8 but finds
        // that the byte stream is not, in fact, a valid UTF-8 stream, that endpoint MUST _Fail
        // the WebSocket Connection_." The message is ignored, but it is still checked as it
        // comes (a fragment at a time): only text is unmasked for that, binary is not.
        if text {
            let payload = &mut buf[header_len..end];
            unmask(payload, mask);
            if !state.utf8.check(payload, header.is_final) {
                return Err(violation(
                    close_code::INVALID_DATA,
                    "text message is not valid UTF-8",
                ));
            }
        }
        if header.is_final {
            *state = MessageState::default();
        } else {
            state.in_message = true;
            state.message_len += len;
            state.text = text;
        }
        return Ok(Some((ClientFrame::Data, end)));
    }
    let payload = &mut buf[header_len..end];
    unmask(payload, mask);
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
            // Section 5.5.1: after the code, "the body MAY contain UTF-8-encoded data with
            // value /reason/". Not UTF-8 fails the connection as section 8.1 says for any
            // UTF-8 the endpoint reads, with 1007 (section 7.4.1: "data within a message that
            // was not consistent with the type of the message").
            if payload.len() > 2 && std::str::from_utf8(&payload[2..]).is_err() {
                return Err(violation(
                    close_code::INVALID_DATA,
                    "close reason is not valid UTF-8",
                ));
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
    fn text_messages_and_close_reasons_must_be_utf8() {
        let read = |st: &mut MessageState, mut frame: Vec<u8>| {
            read_frame(&mut frame, st, 8192).map(|f| f.map(|(f, _)| f == ClientFrame::Data))
        };
        let mut st = MessageState::default();
        assert_eq!(
            read(&mut st, masked(0x81, "h\u{e9}llo \u{20ac}".as_bytes())),
            Ok(Some(true))
        );
        assert_eq!(read(&mut st, masked(0x81, b"\xff")).unwrap_err().code, 1007);
        // Binary is not text: any bytes.
        let mut st = MessageState::default();
        assert_eq!(read(&mut st, masked(0x82, b"\xff\xfe")), Ok(Some(true)));
        // A code point split between fragments, at every point of it, is fine...
        let euro = "a\u{20ac}\u{10348}b".as_bytes();
        for cut in 0..=euro.len() {
            let mut st = MessageState::default();
            assert_eq!(
                read(&mut st, masked(0x01, &euro[..cut])),
                Ok(Some(true)),
                "{cut}"
            );
            assert_eq!(
                read(&mut st, masked(0x80, &euro[cut..])),
                Ok(Some(true)),
                "{cut}"
            );
        }
        // ...in three fragments too; one left open at the end of the message is not.
        let mut st = MessageState::default();
        assert_eq!(read(&mut st, masked(0x01, &euro[..2])), Ok(Some(true)));
        assert_eq!(read(&mut st, masked(0x00, &euro[2..3])), Ok(Some(true)));
        assert_eq!(read(&mut st, masked(0x80, &euro[3..])), Ok(Some(true)));
        let mut st = MessageState::default();
        assert_eq!(read(&mut st, masked(0x01, b"ok\xe2\x82")), Ok(Some(true)));
        assert_eq!(read(&mut st, masked(0x80, b"")).unwrap_err().code, 1007);
        // A bad byte in the continuation of an open code point, or a surrogate.
        let mut st = MessageState::default();
        assert_eq!(read(&mut st, masked(0x01, b"\xe2")), Ok(Some(true)));
        assert_eq!(
            read(&mut st, masked(0x80, b"\x82x")).unwrap_err().code,
            1007
        );
        let mut st = MessageState::default();
        assert_eq!(
            read(&mut st, masked(0x81, b"\xed\xa0\x80"))
                .unwrap_err()
                .code,
            1007
        );
        // After a valid message the next one starts afresh.
        let mut st = MessageState::default();
        assert_eq!(read(&mut st, masked(0x81, b"fine")), Ok(Some(true)));
        assert_eq!(read(&mut st, masked(0x82, b"\xe2")), Ok(Some(true)));

        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice("bye \u{e9}".as_bytes());
        let mut frame = masked(0x88, &close);
        let (f, _) = read_frame(&mut frame, &mut st, 8192).unwrap().unwrap();
        assert_eq!(f, ClientFrame::Close(Some(1000)));
        let mut frame = masked(0x88, b"\x03\xe8bye \xff");
        assert_eq!(
            read_frame(&mut frame, &mut st, 8192).unwrap_err().code,
            1007
        );
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
