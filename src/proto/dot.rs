//! Message data framing: reading `DATA`/`BDAT` content in, writing `DATA` content out.
//!
//! Inbound, [`DataReader`] ends a `DATA` body only at `CRLF . CRLF` (RFC 5321 §4.1.1.4).
//! Every other line ending — bare LF, bare CR, or a CR LF that follows a bare line break —
//! is content: it is normalised to CRLF and never terminates the message. That closes the
//! "SMTP smuggling" hole where `\n.\n` or `\r.\r` inside one message ends it early for one
//! server but not for the next, letting a second, forged message through.
//!
//! Outbound, [`encode_data`] normalises again and dot-stuffs (§4.5.2), so whatever sits in
//! the spool can never end the upstream `DATA` early either.

use memchr::memchr2;

/// Where we are inside the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a line. `strict` is true when the line break before it was a real
    /// CRLF (or the command line that started the data): only such a line may end `DATA`.
    LineStart { strict: bool },
    /// Saw a `.` at the start of a line.
    Dot { strict: bool },
    /// Saw `.` CR at the start of a line.
    DotCr { strict: bool },
    /// Inside a line.
    Middle,
    /// Saw a CR inside or at the start of a line.
    Cr,
}

/// How the end of the data is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `DATA`: dot-terminated and dot-stuffed.
    Dot,
    /// `BDAT`: counted by the caller, no dot processing.
    Counted,
}

/// Incremental reader for message content: normalises line endings, removes
/// dot-stuffing and finds the end of `DATA`. Sans-I/O: feed it whatever bytes arrived.
#[derive(Clone, Debug)]
pub struct DataReader {
    state: State,
    framing: Framing,
    limit: u64,
    written: u64,
    over_limit: bool,
}

impl DataReader {
    /// A reader that keeps at most `limit` octets of normalised content; anything beyond
    /// is read and thrown away so the client still gets its reply at the end.
    pub fn new(framing: Framing, limit: u64) -> DataReader {
        DataReader {
            state: State::LineStart { strict: true },
            framing,
            limit,
            written: 0,
            over_limit: false,
        }
    }

    /// Whether more content arrived than the limit allows; the output is then incomplete
    /// and must be discarded.
    pub fn is_over_limit(&self) -> bool {
        self.over_limit
    }

    /// The framing this reader applies.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The most content it keeps.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Octets of content seen so far (including any beyond the limit).
    pub fn content_len(&self) -> u64 {
        self.written
    }

    /// Consume `input`, appending normalised content to `out`. Returns how many bytes
    /// were consumed and whether the terminating `CRLF.CRLF` was seen; bytes after the
    /// terminator are left for the caller (they are the next pipelined command).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Middle => match memchr2(b'\r', b'\n', &input[i..]) {
                    None => {
                        self.emit(out, &input[i..]);
                        i = input.len();
                    }
                    Some(p) => {
                        self.emit(out, &input[i..i + p]);
                        let b = input[i + p];
                        i += p + 1;
                        if b == b'\n' {
                            self.emit(out, b"\r\n");
                            self.state = State::LineStart { strict: false };
                        } else {
                            self.state = State::Cr;
                        }
                    }
                },
                State::Cr => {
                    self.emit(out, b"\r\n");
                    if input[i] == b'\n' {
                        i += 1;
                        self.state = State::LineStart { strict: true };
                    } else {
                        self.state = State::LineStart { strict: false };
                    }
                }
                State::LineStart { strict } => {
                    if self.framing == Framing::Dot && input[i] == b'.' {
                        i += 1;
                        self.state = State::Dot { strict };
                    } else {
                        self.state = State::Middle;
                    }
                }
                State::Dot { strict } => match input[i] {
                    b'\r' => {
                        i += 1;
                        self.state = State::DotCr { strict };
                    }
                    b'\n' => {
                        i += 1;
                        self.emit(out, b".\r\n");
                        self.state = State::LineStart { strict: false };
                    }
                    // "If the first character is a period and there are other characters
                    // on the line, the first character is deleted" (RFC 5321 §4.5.2).
                    _ => self.state = State::Middle,
                },
                State::DotCr { strict } => {
                    if input[i] == b'\n' {
                        i += 1;
                        if strict {
                            self.state = State::LineStart { strict: true };
                            return (i, true);
                        }
                        self.emit(out, b".\r\n");
                        self.state = State::LineStart { strict: true };
                    } else {
                        self.emit(out, b".\r\n");
                        self.state = State::LineStart { strict: false };
                    }
                }
            }
        }
        (i, false)
    }

    /// End of counted (`BDAT LAST`) content: the last line gets its CRLF, so stored
    /// content always ends in a line break as `DATA` content does.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.state == State::Cr || self.state == State::Middle {
            self.emit(out, b"\r\n");
            self.state = State::LineStart { strict: true };
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        self.written += bytes.len() as u64;
        if self.written > self.limit {
            self.over_limit = true;
        }
        if !self.over_limit {
            out.extend_from_slice(bytes);
        }
    }
}

/// Append `content` to `out` as `DATA` payload: every line ending becomes CRLF, lines
/// starting with `.` get a second one, and the `.CRLF` terminator follows.
pub fn encode_data(content: &[u8], out: &mut Vec<u8>) {
    encode_lines(content, out);
    out.extend_from_slice(b".\r\n");
}

/// `content` cut into pieces of about `size` octets (more only when a line is longer),
/// each ending at a line end: what [`encode_lines`] turns into wire pieces one after
/// another, so a large message is never encoded whole in memory. Encoded one after
/// another, the pieces give exactly [`encode_data`]'s bytes (without the terminator).
pub fn line_pieces(content: &[u8], size: usize) -> impl Iterator<Item = &[u8]> {
    let mut rest = content;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = if rest.len() <= size {
            rest.len()
        } else {
            memchr::memchr(b'\n', &rest[size..]).map_or(rest.len(), |p| size + p + 1)
        };
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

/// Append `content` to `out` dot-stuffed with CRLF line endings, without the
/// terminator; a last line without its ending gets one.
pub fn encode_lines(content: &[u8], out: &mut Vec<u8>) {
    out.reserve(content.len() + content.len() / 64 + 5);
    let mut rest = content;
    let mut at_line_start = true;
    while !rest.is_empty() {
        if at_line_start && rest[0] == b'.' {
            out.push(b'.');
        }
        match memchr2(b'\r', b'\n', rest) {
            None => {
                out.extend_from_slice(rest);
                out.extend_from_slice(b"\r\n");
                rest = &[];
            }
            Some(p) => {
                out.extend_from_slice(&rest[..p]);
                out.extend_from_slice(b"\r\n");
                let skip = if rest[p] == b'\r' && rest.get(p + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[p + skip..];
            }
        }
        at_line_start = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_encoded_piece_by_piece_is_the_same_as_encoded_whole() {
        let content: &[u8] = b"Subject: x\r\n\r\n.dot\r\nline\nbare lf\rbare cr\r\n..two\r\nlast";
        for size in [1, 2, 3, 5, 8, 13, 64, 1000] {
            let mut pieces = Vec::new();
            let cut: Vec<&[u8]> = line_pieces(content, size).collect();
            assert_eq!(cut.concat(), content, "size {size}");
            for piece in &cut[..cut.len() - 1] {
                assert!(piece.ends_with(b"\n"), "size {size}: {piece:?}");
            }
            for piece in cut {
                encode_lines(piece, &mut pieces);
            }
            pieces.extend_from_slice(b".\r\n");
            let mut whole = Vec::new();
            encode_data(content, &mut whole);
            assert_eq!(
                String::from_utf8_lossy(&pieces),
                String::from_utf8_lossy(&whole),
                "size {size}"
            );
        }
        assert_eq!(line_pieces(b"", 8).count(), 0);
    }

    /// Feed the whole input, one byte at a time and all at once; both must agree.
    fn read_dot(input: &[u8]) -> (Vec<u8>, Option<usize>) {
        let mut whole = Vec::new();
        let mut reader = DataReader::new(Framing::Dot, u64::MAX);
        let (used, done) = reader.feed(input, &mut whole);
        let end = done.then_some(used);

        let mut bytewise = Vec::new();
        let mut reader = DataReader::new(Framing::Dot, u64::MAX);
        let mut bytewise_end = None;
        for (i, b) in input.iter().enumerate() {
            let (_, done) = reader.feed(std::slice::from_ref(b), &mut bytewise);
            if done {
                bytewise_end = Some(i + 1);
                break;
            }
        }
        assert_eq!(whole, bytewise, "chunking changed the output for {input:?}");
        assert_eq!(end, bytewise_end, "chunking changed the end for {input:?}");
        (whole, end)
    }

    #[test]
    fn frames_and_normalises_data() {
        let cases: &[(&[u8], &[u8], Option<usize>)] = &[
            (
                b"Subject: x\r\n\r\nbody\r\n.\r\n",
                b"Subject: x\r\n\r\nbody\r\n",
                Some(23),
            ),
            (b".\r\n", b"", Some(3)),
            (b"a\r\n..b\r\n.\r\nMAIL", b"a\r\n.b\r\n", Some(11)),
            (b"a\r\n.b\r\n.\r\n", b"a\r\nb\r\n", Some(10)),
            (b"bare\nlf\n.\r\n", b"bare\r\nlf\r\n.\r\n", None),
            (
                b"x\n.\nMAIL FROM:<a@b>\r\n.\r\n",
                b"x\r\n.\r\nMAIL FROM:<a@b>\r\n",
                Some(24),
            ),
            (b"x\r.\rRCPT\r\n.\r\n", b"x\r\n.\r\nRCPT\r\n", Some(13)),
            (b"x\r\n.\nRSET\r\n.\r\n", b"x\r\n.\r\nRSET\r\n", Some(14)),
            (b"x\n.\r\nQUIT\r\n.\r\n", b"x\r\n.\r\nQUIT\r\n", Some(14)),
            (b"cr\rcrlf\r\n\r\n.\r\n", b"cr\r\ncrlf\r\n\r\n", Some(14)),
            (
                b"dot-cr-cr\r\n.\r\r\n.\r\n",
                b"dot-cr-cr\r\n.\r\n\r\n",
                Some(18),
            ),
            (b"no end\r\n", b"no end\r\n", None),
        ];
        for (input, want, want_end) in cases {
            let (got, end) = read_dot(input);
            if want_end.is_some() {
                assert_eq!(
                    got,
                    *want,
                    "content for {:?}",
                    String::from_utf8_lossy(input)
                );
            }
            assert_eq!(
                end,
                *want_end,
                "end for {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn counted_framing_keeps_dots_and_normalises() {
        let mut out = Vec::new();
        let mut reader = DataReader::new(Framing::Counted, u64::MAX);
        assert_eq!(reader.feed(b".\r\n.x\nend\r", &mut out), (10, false));
        reader.finish(&mut out);
        assert_eq!(out, b".\r\n.x\r\nend\r\n");
        let mut out = Vec::new();
        let mut reader = DataReader::new(Framing::Counted, u64::MAX);
        reader.feed(b"no final newline", &mut out);
        reader.finish(&mut out);
        assert_eq!(out, b"no final newline\r\n");
    }

    #[test]
    fn content_over_the_limit_is_flagged_and_dropped() {
        let mut out = Vec::new();
        let mut reader = DataReader::new(Framing::Dot, 8);
        let (_, done) = reader.feed(b"0123456789\r\n.\r\n", &mut out);
        assert!(done);
        assert!(reader.is_over_limit());
        assert_eq!(reader.content_len(), 12);
    }

    #[test]
    fn encodes_with_dot_stuffing_and_crlf() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a\r\n.b\r\n", b"a\r\n..b\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"no newline", b"no newline\r\n.\r\n"),
            (b"x\n.\nMAIL\r\n", b"x\r\n..\r\nMAIL\r\n.\r\n"),
            (b"x\r.\r", b"x\r\n..\r\n.\r\n"),
            (b"", b".\r\n"),
        ];
        for (input, want) in cases {
            let mut out = Vec::new();
            encode_data(input, &mut out);
            assert_eq!(out, *want, "input {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn encoded_data_reads_back_to_the_same_content() {
        let content = b"Subject: t\r\n\r\n.\r\n..\r\n.x\r\nend\r\n";
        let mut wire = Vec::new();
        encode_data(content, &mut wire);
        let (got, end) = read_dot(&wire);
        assert_eq!(got, content);
        assert_eq!(end, Some(wire.len()));
    }
}
