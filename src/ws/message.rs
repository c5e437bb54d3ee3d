//! The JSON of pushed messages, written straight into the frame that carries it.
//!
//! Field order follows the original (`messageId, sendUserId, code, msg, data`); `data` is raw
//! JSON copied as the API received it, so a string stays a string and an object an object.

use super::frame::{self, SharedFrame};

pub const CODE_SYSTEM_ID_ERROR: i64 = -1001;
pub const CODE_ONLINE: i64 = 1001;
pub const CODE_OFFLINE: i64 = 1002;
/// wspush's own: a client left a group by unbind_from_group and is still connected.
pub const CODE_LEFT: i64 = 1003;
pub const MSG_ONLINE: &str = "client online";
pub const MSG_OFFLINE: &str = "client offline";
pub const MSG_LEFT: &str = "client left the group";

/// Appends `s` as a JSON string literal.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("bug: writing a JSON string to a Vec cannot fail");
}

/// One pushed message as a complete text frame, built once for all its recipients.
/// `data` must be valid JSON (it comes from a parsed request or from [`member_event_data`]).
pub fn push_frame(
    message_id: &str,
    send_user_id: &str,
    code: i64,
    msg: &str,
    data: &str,
) -> SharedFrame {
    frame_with(message_id, send_user_id, code, msg, data, None)
}

/// A push of a group with history (docs/history.md): [`push_frame`]'s fields, then
/// `"offset":N,"epoch":"..."` as the last two, which [`frame_offset`] reads back.
pub fn push_frame_at(
    message_id: &str,
    send_user_id: &str,
    code: i64,
    msg: &str,
    data: &str,
    offset: u64,
    epoch: &str,
) -> SharedFrame {
    let position = (offset, epoch);
    frame_with(message_id, send_user_id, code, msg, data, Some(position))
}

/// The fields before `data` are written to a small buffer first, so the frame's length is known
/// and header, fields and `data` go into one allocation of the exact size.
fn frame_with(
    message_id: &str,
    send_user_id: &str,
    code: i64,
    msg: &str,
    data: &str,
    position: Option<(u64, &str)>,
) -> SharedFrame {
    let mut head = Vec::with_capacity(64 + message_id.len() + send_user_id.len() + msg.len());
    head.extend_from_slice(b"{\"messageId\":");
    write_json_str(&mut head, message_id);
    head.extend_from_slice(b",\"sendUserId\":");
    write_json_str(&mut head, send_user_id);
    head.extend_from_slice(b",\"code\":");
    head.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
    head.extend_from_slice(b",\"msg\":");
    write_json_str(&mut head, msg);
    head.extend_from_slice(b",\"data\":");
    // Empty (no allocation) for the pushes without history.
    let mut tail = Vec::new();
    if let Some((offset, epoch)) = position {
        tail.extend_from_slice(b",\"offset\":");
        tail.extend_from_slice(itoa::Buffer::new().format(offset).as_bytes());
        tail.extend_from_slice(b",\"epoch\":");
        write_json_str(&mut tail, epoch);
    }
    let json_len = head.len() + data.len() + tail.len() + 1;
    let mut out = Vec::with_capacity(frame::text_header_len(json_len) + json_len);
    frame::text_header(json_len, &mut out);
    out.extend_from_slice(&head);
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(&tail);
    out.push(b'}');
    out.into()
}

/// The offset and epoch of a frame built by [`push_frame_at`]; `None` for any other frame. It
/// reads the last two fields only, so whatever `data` holds cannot fool it: inside `data` a
/// quote is either structure before these fields or escaped.
pub fn frame_position(frame: &[u8]) -> Option<(u64, &[u8])> {
    const EPOCH: &[u8] = b",\"epoch\":\"";
    const OFFSET: &[u8] = b",\"offset\":";
    let body = frame.strip_suffix(b"\"}")?;
    let at = body.windows(EPOCH.len()).rposition(|w| w == EPOCH)?;
    let epoch = &body[at + EPOCH.len()..];
    if !epoch.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let digits = (body[..at].iter().rev())
        .take_while(|b| b.is_ascii_digit())
        .count();
    let start = at - digits;
    if digits == 0 || !body[..start].ends_with(OFFSET) {
        return None;
    }
    let offset = std::str::from_utf8(&body[start..at]).ok()?.parse().ok()?;
    Some((offset, epoch))
}

/// The offset of a frame built by [`push_frame_at`] ([`frame_position`]).
pub fn frame_offset(frame: &[u8]) -> Option<u64> {
    frame_position(frame).map(|(offset, _)| offset)
}

/// The JSON text of a text frame built here (its payload; server frames are unmasked).
pub fn frame_json(frame: &[u8]) -> &[u8] {
    let start = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return &[],
    };
    frame.get(start..).unwrap_or(&[])
}

/// The `data` of 1001/1002/1003 pushes: a JSON *string* holding
/// `{"clientId":...,"userId":...,"extend":...}`, as the original sends it.
pub fn member_event_data(client_id: &str, user_id: &str, extend: &str) -> String {
    let inner = serde_json::json!({
        "clientId": client_id,
        "userId": user_id,
        "extend": extend,
    })
    .to_string();
    serde_json::to_string(&inner).expect("bug: a string always serializes")
}

/// `{"code":0,"msg":"success","data":{"clientId":"..."}}`, the first frame of every session.
pub fn welcome(client_id: &str) -> SharedFrame {
    let mut out = Vec::with_capacity(128);
    write_welcome(&mut out, client_id);
    out.into()
}

/// Appends [`welcome`]'s frame to `out` (after the 101, so both leave in one write).
pub fn write_welcome(out: &mut Vec<u8>, client_id: &str) {
    let start = out.len();
    out.extend_from_slice(b"{\"code\":0,\"msg\":\"success\",\"data\":{\"clientId\":");
    write_json_str(out, client_id);
    out.extend_from_slice(b"}}");
    // The header (2 to 10 bytes) goes in front of the JSON just written.
    let len = out.len() - start;
    let mut header = [0u8; 10];
    let n = frame::text_header_len(len);
    frame::text_header(len, &mut &mut header[..]);
    out.splice(start..start, header[..n].iter().copied());
}

/// The original's answer to a connect without systemId.
pub fn missing_system_id() -> SharedFrame {
    push_frame(
        "",
        "",
        CODE_SYSTEM_ID_ERROR,
        "systemId is required: connect to /ws?systemId=<id>",
        "[]",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(f: &[u8]) -> serde_json::Value {
        let start = if f[1] & 0x7f == 126 { 4 } else { 2 };
        serde_json::from_slice(&f[start..]).unwrap()
    }

    #[test]
    fn welcome_goes_behind_what_the_buffer_holds() {
        for id in ["abc", &"x".repeat(200)] {
            let mut out = b"HTTP/1.1 101 ...\r\n\r\n".to_vec();
            let head = out.len();
            write_welcome(&mut out, id);
            assert_eq!(&out[..head], b"HTTP/1.1 101 ...\r\n\r\n");
            assert_eq!(&out[head..], &*welcome(id));
            let f = &out[head..];
            assert_eq!(f[0], 0x81, "a final text frame");
            let v = payload(f);
            assert_eq!(v["code"], 0);
            assert_eq!(v["data"]["clientId"], id);
            let json_len = serde_json::to_vec(&v).unwrap().len();
            assert_eq!(f.len(), frame::text_header_len(json_len) + json_len);
        }
    }

    #[test]
    fn push_frame_keeps_data_as_given() {
        let f = push_frame("0123456789abcdef", "u\"1", 7, "hi", r#"{"a":[1,2]}"#);
        let v = payload(&f);
        assert_eq!(v["messageId"], "0123456789abcdef");
        assert_eq!(v["sendUserId"], "u\"1");
        assert_eq!(v["code"], 7);
        assert_eq!(v["data"]["a"][1], 2);
        let f = push_frame("x", "", -1, "m", r#""text""#);
        assert_eq!(payload(&f)["data"], "text");
    }

    #[test]
    fn positioned_frames_add_offset_and_epoch_last_and_read_back() {
        let plain = push_frame("m", "u", 1, "hi", r#"{"offset":5,"epoch":"x"}"#);
        assert_eq!(frame_offset(&plain), None);
        let f = push_frame_at("m", "u", 1, "hi", r#"{"a":1}"#, 42, "0123abcd");
        let v = payload(&f);
        assert_eq!(
            (v["offset"].as_u64(), v["epoch"].as_str()),
            (Some(42), Some("0123abcd"))
        );
        assert_eq!(v["data"]["a"], 1);
        assert_eq!(frame_offset(&f), Some(42));
        assert_eq!(frame_position(&f), Some((42, &b"0123abcd"[..])));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(frame_json(&f)).unwrap(),
            v
        );
        // A string data that ends like a position is still data of a plain frame.
        let tricky = push_frame("m", "", 0, "", r#"",\"offset\":7,\"epoch\":\"ab""#);
        assert_eq!(frame_offset(&tricky), None);
        let big = push_frame_at(
            "m",
            "",
            0,
            "",
            &format!("\"{}\"", "x".repeat(10_000)),
            9,
            "e",
        );
        assert_eq!(frame_offset(&big), Some(9));
        assert_eq!(payload(&big)["offset"], 9);
    }

    #[test]
    fn member_event_data_is_a_json_string() {
        let data = member_event_data("cid", "u1", "e");
        let f = push_frame("x", "", CODE_ONLINE, MSG_ONLINE, &data);
        let v = payload(&f);
        let inner: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(inner["clientId"], "cid");
        assert_eq!(inner["userId"], "u1");
        assert_eq!(inner["extend"], "e");
        assert_eq!(v["sendUserId"], "");
    }
}
