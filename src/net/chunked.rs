//! Chunked request bodies (`Transfer-Encoding: chunked`, RFC 9112 section 7.1): a decoder that
//! keeps its place between reads, strict about framing and bounded by MaxBodyBytes. The
//! listener feeds it what a connection reads after a head that said `chunked`
//! (see [`super::http`]).

/// Why a chunked body cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    Malformed,
    TooLarge,
}

/// Longest chunk-size line (size and extensions, CRLF not counted) accepted.
const MAX_SIZE_LINE: usize = 1024;

/// The most bytes of chunked encoding read for a body of at most `max_body` bytes.
pub fn chunked_wire_limit(max_body: usize) -> usize {
    max_body.saturating_mul(2).saturating_add(16 * 1024)
}

/// Where a [`Dechunker`] is in the encoding (RFC 9112 section 7.1):
///
/// ```text
/// chunked-body = *chunk last-chunk trailer-section CRLF
/// chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
/// chunk-size   = 1*HEXDIG
/// chunk-ext    = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// The hex digits of a chunk size (`Dechunker::line` counts them).
    Size,
    /// Whitespace after the size, before `;` or CRLF.
    AfterSize,
    /// Chunk extensions, up to CR. They are read and ignored.
    Ext,
    /// The LF of the size line.
    SizeLf,
    /// Chunk data: `Dechunker::size` bytes left.
    Data,
    DataCr,
    DataLf,
    /// The start of a trailer field line, or of the empty line that ends the body.
    TrailerStart,
    /// A trailer field line, up to CR. Trailers are read and ignored.
    Trailer,
    /// The LF of a trailer line; `true` when the line was empty (the end of the body).
    TrailerLf(bool),
    Done,
}

/// Decodes a chunked body as its bytes arrive, keeping its place between reads, so a body
/// read in many small pieces costs one pass over its bytes: decoding again from the start after
/// every read was quadratic (a 2 MiB encoding read 4 KiB at a time took seconds of CPU).
///
/// Limits, the same whatever the split of the bytes: the body is at most `max_body` bytes
/// (a chunk size that would pass it is [`ChunkError::TooLarge`] as soon as its digits do); the
/// encoding (framing, extensions and trailers included) at most [`chunked_wire_limit`] bytes,
/// else `TooLarge` too (without that, endless trailers or one-byte chunks with long extensions
/// would keep a connection reading for all of HeadTimeout); a size line at most
/// `MAX_SIZE_LINE` bytes. Strictness, since a proxy in front that reads the framing otherwise
/// would let a request smuggle another past it: sizes are hex digits only (no sign, no
/// leading space), and CR and LF only come as CRLF; a bare CR or LF is
/// [`ChunkError::Malformed`], as is a control character in an extension.
#[derive(Debug, Clone)]
pub struct Dechunker {
    state: ChunkState,
    max_body: usize,
    max_wire: usize,
    /// Encoded bytes consumed so far.
    wire: usize,
    /// Body bytes decoded so far.
    body_len: usize,
    /// Bytes of the current size line so far.
    line: usize,
    /// The chunk size being read, then the bytes of its data still to come.
    size: usize,
}

impl Dechunker {
    pub fn new(max_body: usize) -> Dechunker {
        Dechunker {
            state: ChunkState::Size,
            max_body,
            max_wire: chunked_wire_limit(max_body),
            wire: 0,
            body_len: 0,
            line: 0,
            size: 0,
        }
    }

    /// Consumes bytes from the front of `input`, appending the data they carry to `body`.
    /// `Ok(None)`: all of `input` was consumed and the body goes on. `Ok(Some(used))`: the body
    /// ended after `used` bytes of `input` (what follows is the next request). After an error
    /// or the end, the decoder must not be fed again.
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<Option<usize>, ChunkError> {
        use ChunkState::*;
        // Only the bytes within the encoding limit are looked at: an error inside them, or the
        // end, wins over "too large", as it would have had the rest not arrived yet.
        let budget = self.max_wire - self.wire;
        let within = &input[..input.len().min(budget)];
        let mut at = 0;
        while at < within.len() {
            if self.state == Size && self.line == 0 {
                // Fast path: a whole chunk without extensions (`size CRLF data CRLF`) in the
                // bytes at hand is taken in one step. Anything else, errors included, goes
                // through the byte-at-a-time states below, which decide the same way.
                if let Some((size, used)) = whole_chunk(&within[at..]) {
                    if size <= self.max_body - self.body_len {
                        let data = at + used - size - 2;
                        body.extend_from_slice(&within[data..data + size]);
                        self.body_len += size;
                        at += used;
                        continue;
                    }
                }
            }
            let byte = within[at];
            let in_line = matches!(self.state, Size | AfterSize | Ext);
            match self.state {
                Data => {
                    let n = self.size.min(within.len() - at);
                    body.extend_from_slice(&within[at..at + n]);
                    self.body_len += n;
                    self.size -= n;
                    at += n;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                Size => match (hex_value(byte), byte) {
                    (Some(digit), _) => {
                        self.size = (self.size.checked_mul(16))
                            .and_then(|s| s.checked_add(digit))
                            .ok_or(ChunkError::TooLarge)?;
                        // Subtract, never add: the body so far is within the limit, so this
                        // cannot underflow, and a size near usize::MAX cannot wrap a sum.
                        if self.size > self.max_body - self.body_len {
                            return Err(ChunkError::TooLarge);
                        }
                    }
                    // chunk-size = 1*HEXDIG: at least one digit before anything else.
                    _ if self.line == 0 => return Err(ChunkError::Malformed),
                    (None, b' ' | b'\t') => self.state = AfterSize,
                    (None, b';') => self.state = Ext,
                    (None, b'\r') => self.state = SizeLf,
                    _ => return Err(ChunkError::Malformed),
                },
                AfterSize => match byte {
                    b' ' | b'\t' => {}
                    b';' => self.state = Ext,
                    b'\r' => self.state = SizeLf,
                    _ => return Err(ChunkError::Malformed),
                },
                Ext => match byte {
                    b'\r' => self.state = SizeLf,
                    b'\t' => {}
                    0..=0x1f | 0x7f => return Err(ChunkError::Malformed),
                    _ => {}
                },
                SizeLf => {
                    if byte != b'\n' {
                        return Err(ChunkError::Malformed);
                    }
                    self.line = 0;
                    self.state = if self.size == 0 { TrailerStart } else { Data };
                }
                DataCr => {
                    if byte != b'\r' {
                        return Err(ChunkError::Malformed);
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if byte != b'\n' {
                        return Err(ChunkError::Malformed);
                    }
                    self.state = Size;
                }
                TrailerStart | Trailer => match byte {
                    b'\r' => self.state = TrailerLf(self.state == TrailerStart),
                    b'\n' => return Err(ChunkError::Malformed),
                    _ => self.state = Trailer,
                },
                TrailerLf(empty) => {
                    if byte != b'\n' {
                        return Err(ChunkError::Malformed);
                    }
                    if empty {
                        self.state = Done;
                        self.wire += at + 1;
                        return Ok(Some(at + 1));
                    }
                    self.state = TrailerStart;
                }
                Done => return Ok(Some(at)),
            }
            if in_line && self.state != SizeLf {
                // The byte just read belongs to the size line (its CR does not).
                self.line += 1;
                if self.line > MAX_SIZE_LINE {
                    return Err(ChunkError::Malformed);
                }
            }
            at += 1;
        }
        self.wire += within.len();
        if input.len() > within.len() {
            return Err(ChunkError::TooLarge);
        }
        Ok(None)
    }
}

/// A whole non-empty chunk without extensions at the front of `bytes`: its size and the bytes
/// it takes, framing included. At most 15 digits, so the size cannot overflow.
fn whole_chunk(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut size = 0;
    let mut digits = 0;
    while let Some(digit) = bytes.get(digits).copied().and_then(hex_value) {
        if digits == 15 {
            return None;
        }
        size = size * 16 + digit;
        digits += 1;
    }
    let used = digits + 2 + size + 2;
    let whole = digits > 0
        && size > 0
        && bytes.len() >= used
        && bytes[digits..digits + 2] == *b"\r\n"
        && bytes[used - 2..used] == *b"\r\n";
    whole.then_some((size, used))
}

fn hex_value(byte: u8) -> Option<usize> {
    match byte {
        b'0'..=b'9' => Some((byte - b'0') as usize),
        b'a'..=b'f' => Some((byte - b'a' + 10) as usize),
        b'A'..=b'F' => Some((byte - b'A' + 10) as usize),
        _ => None,
    }
}

/// Decodes a complete chunked body at the front of `buf` in one go (a [`Dechunker`] fed once).
/// `Ok(None)`: incomplete. `Ok(Some((body, used)))`: the body and the bytes it took, trailers
/// included.
pub fn dechunk(buf: &[u8], max_body: usize) -> Result<Option<(Vec<u8>, usize)>, ChunkError> {
    let mut body = Vec::new();
    Ok(Dechunker::new(max_body)
        .feed(buf, &mut body)?
        .map(|used| (body, used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `raw` to one decoder in pieces cut at `cuts`: what a connection's reads do.
    fn feed_split(raw: &[u8], cuts: &[usize], max_body: usize) -> DechunkResult {
        let mut d = Dechunker::new(max_body);
        let mut body = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&raw.len())) {
            match d.feed(&raw[from..to], &mut body)? {
                Some(used) => return Ok(Some((body, from + used))),
                None => from = to,
            }
        }
        Ok(None)
    }

    type DechunkResult = Result<Option<(Vec<u8>, usize)>, ChunkError>;

    #[test]
    fn the_decoder_gives_the_same_answer_however_the_bytes_are_split() {
        let inputs: [&[u8]; 6] = [
            b"4\r\n{\"a\"\r\n3;ext=1\r\n:1}\r\n0\r\nX-Trailer: y\r\n\r\nNEXT",
            b"1\r\na\r\n1\r\nb\r\n0\r\n\r\n",
            b"5 \t;x=\"y z\"\r\nhello\r\n0\r\n\r\n",
            b"2\r\nabX\r\n",
            b"1\r\na\r\nffffffffffffffff\r\n",
            b"0\r\nX: 1\r\nY: 2\r\n\r",
        ];
        for raw in inputs {
            let whole = dechunk(raw, 100);
            for a in 0..=raw.len() {
                assert_eq!(feed_split(raw, &[a], 100), whole, "{raw:?} cut at {a}");
                for b in a..=raw.len() {
                    assert_eq!(
                        feed_split(raw, &[a, b], 100),
                        whole,
                        "{raw:?} cut at {a}, {b}"
                    );
                }
            }
            // One byte a read, the worst split a client can choose.
            let every: Vec<usize> = (1..raw.len()).collect();
            assert_eq!(feed_split(raw, &every, 100), whole, "{raw:?} byte by byte");
        }
    }

    #[test]
    fn the_decoder_is_strict_about_framing() {
        for bad in [
            &b" 5\r\nhello\r\n0\r\n\r\n"[..], // leading space
            b"-5\r\nhello\r\n0\r\n\r\n",      // sign
            b"5\nhello\r\n0\r\n\r\n",         // bare LF after the size
            b"5\rhello\r\n0\r\n\r\n",         // bare CR after the size
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",  // bare LF in an extension
            b"5;a\x00\r\nhello\r\n0\r\n\r\n", // control character in an extension
            b"5 x\r\nhello\r\n0\r\n\r\n",     // junk after the size
            b"5\r\nhello\n0\r\n\r\n",         // data not followed by CRLF
            b"0\r\nX: y\n\r\n",               // bare LF in a trailer
            b"0\r\n\n",                       // bare LF ending the body
            b";\r\n",                         // no size at all
        ] {
            assert_eq!(dechunk(bad, 100), Err(ChunkError::Malformed), "{bad:?}");
        }
        // Leading zeros are hex digits too.
        let (body, _) = dechunk(b"0005\r\nhello\r\n00\r\n\r\n", 100)
            .unwrap()
            .unwrap();
        assert_eq!(body, b"hello");
    }

    #[test]
    fn the_decoder_keeps_its_place_between_reads() {
        // A large body in 1-byte chunks, fed 4 KiB at a time as the listener reads it: the
        // decoder ends exactly where the body does, with every byte of it.
        let data: Vec<u8> = (0..50_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut raw = Vec::new();
        for b in &data {
            raw.extend_from_slice(b"1\r\n");
            raw.push(*b);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"0\r\n\r\nGET /next");
        let mut d = Dechunker::new(1 << 20);
        let mut body = Vec::new();
        let mut end = None;
        for (i, piece) in raw.chunks(4096).enumerate() {
            if let Some(used) = d.feed(piece, &mut body).unwrap() {
                end = Some(i * 4096 + used);
                break;
            }
        }
        assert_eq!(body, data);
        assert_eq!(&raw[end.unwrap()..], b"GET /next");
    }

    #[test]
    fn dechunks_bodies() {
        let raw = b"4\r\n{\"a\"\r\n3;ext=1\r\n:1}\r\n0\r\nX-Trailer: y\r\n\r\nNEXT";
        let (body, used) = dechunk(raw, 100).unwrap().unwrap();
        assert_eq!(body, b"{\"a\":1}");
        assert_eq!(&raw[used..], b"NEXT");
        for cut in 0..used {
            assert_eq!(dechunk(&raw[..cut], 100), Ok(None), "cut at {cut}");
        }
        assert_eq!(dechunk(raw, 5), Err(ChunkError::TooLarge));
        assert_eq!(dechunk(b"zz\r\n", 100), Err(ChunkError::Malformed));
        assert_eq!(dechunk(b"2\r\nabX\r\n", 100), Err(ChunkError::Malformed));
    }

    #[test]
    fn dechunk_bounds_sizes_lines_and_framing() {
        // `body.len() + size` used to overflow here (fuzz/regressions/http_request/).
        assert_eq!(
            dechunk(b"1\r\na\r\nffffffffffffffff\r\n", 100),
            Err(ChunkError::TooLarge)
        );
        assert_eq!(
            dechunk(b"fffffffffffffffff\r\n", 100),
            Err(ChunkError::TooLarge)
        );
        assert_eq!(
            dechunk(b"+1\r\na\r\n0\r\n\r\n", 100),
            Err(ChunkError::Malformed)
        );
        // A long size line is refused whether or not its CRLF has arrived.
        let mut long = b"1;".to_vec();
        long.extend_from_slice(&[b'x'; 1100]);
        assert_eq!(dechunk(&long, 100), Err(ChunkError::Malformed));
        long.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
        assert_eq!(dechunk(&long, 100), Err(ChunkError::Malformed));
        // The size line limit is the same for every chunk: 1024 bytes taken, 1025 not.
        for (pad, ok) in [(1022, true), (1023, false)] {
            let mut raw = b"1\r\na\r\n1;".to_vec();
            raw.extend(std::iter::repeat_n(b'x', pad));
            raw.extend_from_slice(b"\r\nb\r\n0\r\n\r\n");
            let got = dechunk(&raw, 100).map(|done| done.map(|(body, _)| body));
            let want = if ok {
                Ok(Some(b"ab".to_vec()))
            } else {
                Err(ChunkError::Malformed)
            };
            assert_eq!(got, want, "size line of {} bytes", pad + 2);
        }
        // Endless trailers: refused once past the framing allowance, not buffered for ever.
        let mut trailers = b"1\r\na\r\n0\r\n".to_vec();
        while trailers.len() <= 2 * 100 + 16 * 1024 {
            trailers.extend_from_slice(b"X-Pad: yyyyyyyyyyyyyyyy\r\n");
        }
        assert_eq!(dechunk(&trailers, 100), Err(ChunkError::TooLarge));
        assert_eq!(dechunk(&trailers[..1000], 100), Ok(None));
    }
}
