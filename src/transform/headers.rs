//! The header section as a list of fields: split, unfold, replace, add.
//!
//! [`Parsed::parse`] is the one place where a message is split into its header block
//! and its body. It reads leniently and repairs, never moving a header field into the
//! body or body text into the header block:
//!
//! * a line is a field if it starts with a field name (printable ASCII except `:`)
//!   followed by the colon, or by white space and the colon (the obsolete form of RFC
//!   5322 §4.5, written back as `Name:`);
//! * a line starting with white space continues the field before it;
//! * a first line `From ...` (an mbox envelope line) becomes the field
//!   `X-Mailbox-Line: ...`, as Postfix does;
//! * the empty line ends the header block, and so does any other line: there the body
//!   starts, and [`Parsed::to_bytes`] inserts the missing empty line before it;
//! * content that ends inside the header block gets a final CRLF.
//!
//! What was repaired is in [`Parsed::repairs`]: a message with repairs must be written
//! back with [`Parsed::to_bytes`], else what is signed and sent is not what was read.

/// One header field as it appears in the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The name as written (case kept), without obsolete white space before the colon.
    pub name: String,
    /// Everything after the colon up to and including the final CRLF, folding kept.
    pub raw_value: Vec<u8>,
}

impl Field {
    /// Whether the field is called `name` (case-insensitive).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// The value unfolded (RFC 5322 §2.2.3), without the final CRLF.
    pub fn unfolded(&self) -> Vec<u8> {
        unfold(&self.raw_value)
    }
}

/// The name of the field an mbox `From ` line becomes.
pub const MAILBOX_LINE: &str = "X-Mailbox-Line";

/// A repair [`Parsed::parse`] made to the header block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repair {
    /// The first line was an mbox `From ` line; it became an `X-Mailbox-Line` field.
    MailboxLine,
    /// A field had white space between its name and the colon (`Subject : x`).
    ObsoleteFieldName,
    /// A line that is neither a field nor a continuation ended the header block: the
    /// body starts there, and the empty line is inserted before it.
    MissingSeparator,
    /// The content ended inside the header block without a line ending.
    MissingLineEnd,
}

/// What a line at the start of a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line {
    /// The empty line that ends the header block.
    Empty,
    /// A header field: the name is `line[..name_end]`, the value follows the colon at
    /// `colon` (`colon > name_end` in the obsolete form `Name : value`).
    Field {
        /// End of the field name.
        name_end: usize,
        /// Position of the colon.
        colon: usize,
    },
    /// A continuation of the field before it (starts with SP or HTAB).
    Continuation,
    /// An mbox envelope line, `From sender date`.
    MailboxLine,
    /// Anything else: the body starts here.
    Body,
}

/// RFC 5322 `ftext`: printable US-ASCII except the colon.
fn is_ftext(b: u8) -> bool {
    matches!(b, 33..=57 | 59..=126)
}

/// What `line` (with its line ending, if any) is; `first` says whether it is the first
/// line of the message (only there a continuation cannot be, and an mbox line can).
pub fn classify(line: &[u8], first: bool) -> Line {
    if line == b"\r\n" || line == b"\n" {
        return Line::Empty;
    }
    match line.first() {
        None => return Line::Body,
        Some(b' ' | b'\t') => {
            return if first {
                Line::Body
            } else {
                Line::Continuation
            };
        }
        _ => {}
    }
    let name_end = line
        .iter()
        .position(|b| !is_ftext(*b))
        .unwrap_or(line.len());
    let colon = name_end
        + line[name_end..]
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t'))
            .unwrap_or(line.len() - name_end);
    if name_end > 0 && line.get(colon) == Some(&b':') {
        return Line::Field { name_end, colon };
    }
    if first && line.starts_with(b"From ") {
        return Line::MailboxLine;
    }
    Line::Body
}

/// A message split into its header fields and its body.
#[derive(Clone, Debug)]
pub struct Parsed {
    /// The fields, in order.
    pub fields: Vec<Field>,
    /// Everything from the empty line on (the CRLF that ends the header section
    /// included); without it if the header block was ended by another line.
    pub body: Vec<u8>,
    /// What was repaired while splitting; empty for a well-formed header block.
    pub repairs: Vec<Repair>,
}

impl Parsed {
    /// Split `content` into header fields and body; see the module documentation for the
    /// rules. Lines end at LF (CRLF in practice: the DATA reader makes every line
    /// ending CRLF).
    pub fn parse(content: &[u8]) -> Parsed {
        let mut fields: Vec<Field> = Vec::new();
        let mut repairs = Vec::new();
        let mut pos = 0;
        while pos < content.len() {
            let line_end =
                memchr::memchr(b'\n', &content[pos..]).map_or(content.len(), |i| pos + i + 1);
            let line = &content[pos..line_end];
            match classify(line, pos == 0) {
                Line::Empty => break,
                Line::Body => {
                    repairs.push(Repair::MissingSeparator);
                    break;
                }
                Line::Continuation => {
                    // Never the first line: a field (or the mailbox line) is before it.
                    if let Some(field) = fields.last_mut() {
                        field.raw_value.extend_from_slice(line);
                    }
                }
                Line::Field { name_end, colon } => {
                    if colon > name_end {
                        repairs.push(Repair::ObsoleteFieldName);
                    }
                    fields.push(Field {
                        name: String::from_utf8(line[..name_end].to_vec()).expect("ftext is ASCII"),
                        raw_value: line[colon + 1..].to_vec(),
                    });
                }
                Line::MailboxLine => {
                    repairs.push(Repair::MailboxLine);
                    let rest = &line[b"From ".len()..];
                    let blank = rest == b"\r\n" || rest == b"\n" || rest.is_empty();
                    let mut raw_value = Vec::with_capacity(rest.len() + 1);
                    if !blank {
                        raw_value.push(b' ');
                    }
                    raw_value.extend_from_slice(rest);
                    fields.push(Field {
                        name: MAILBOX_LINE.to_owned(),
                        raw_value,
                    });
                }
            }
            pos = line_end;
        }
        // A last header line without its line ending (content that ends inside the
        // header section) gets one, so that a field added after it stays a field.
        if pos == content.len()
            && let Some(last) = fields.last_mut()
            && !last.raw_value.ends_with(b"\n")
        {
            last.raw_value.extend_from_slice(b"\r\n");
            repairs.push(Repair::MissingLineEnd);
        }
        Parsed {
            fields,
            body: content[pos..].to_vec(),
            repairs,
        }
    }

    /// The first field called `name`.
    pub fn get(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.is(name))
    }

    /// Whether a field called `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Append a field at the end of the header section. `value` is the text after
    /// `Name: `, without CRLF, already folded if needed.
    pub fn push(&mut self, name: &str, value: &str) {
        self.fields.push(Field {
            name: name.to_owned(),
            raw_value: format!(" {value}\r\n").into_bytes(),
        });
    }

    /// Replace the value of field `index` (same form as [`Parsed::push`]).
    pub fn set(&mut self, index: usize, value: &str) {
        self.fields[index].raw_value = format!(" {value}\r\n").into_bytes();
    }

    /// Serialise back to bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }

    /// Append the message with its fields as they are now to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let size = self
            .fields
            .iter()
            .map(|f| f.name.len() + 1 + f.raw_value.len())
            .sum::<usize>()
            + self.body.len();
        out.reserve(size + 2);
        for f in &self.fields {
            out.extend_from_slice(f.name.as_bytes());
            out.push(b':');
            out.extend_from_slice(&f.raw_value);
        }
        // A header section that a line other than a field ended (no empty line) gets its
        // empty line: else that line would read as a continuation of the last field or
        // as a field of its own, and the fields would change on every pass.
        if !self.fields.is_empty()
            && !self.body.is_empty()
            && !self.body.starts_with(b"\r\n")
            && !self.body.starts_with(b"\n")
        {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&self.body);
    }
}

/// Remove folding: CRLF followed by white space becomes that white space; the final
/// line ending goes.
pub fn unfold(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' if raw.get(i + 1) == Some(&b'\n') => i += 2,
            b'\n' => i += 1,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_unfolds_and_round_trips() {
        let content = b"From: a\r\n  <a@x>\r\nSubject: hi\r\n\r\nbody\r\n";
        let msg = Parsed::parse(content);
        assert_eq!(msg.fields.len(), 2);
        assert_eq!(msg.get("from").unwrap().unfolded(), b" a  <a@x>");
        assert_eq!(msg.body, b"\r\nbody\r\n");
        assert_eq!(msg.to_bytes(), content);
    }

    #[test]
    fn replaces_and_appends_fields() {
        let mut msg = Parsed::parse(b"From: x\r\n\r\nb\r\n");
        msg.set(0, "<a@x>");
        msg.push("Date", "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            msg.to_bytes(),
            b"From: <a@x>\r\nDate: Thu, 01 Jan 1970 00:00:00 +0000\r\n\r\nb\r\n"
        );
    }

    #[test]
    fn a_header_section_ended_by_a_non_field_line_gets_its_empty_line() {
        let mut msg = Parsed::parse(b" indented first line\r\nFrom: x\r\n");
        assert!(msg.fields.is_empty());
        msg.push("From", "<a@x>");
        assert_eq!(
            msg.to_bytes(),
            b"From: <a@x>\r\n\r\n indented first line\r\nFrom: x\r\n"
        );
        let mut msg = Parsed::parse(b"Subject: s\r\nno colon here\r\n");
        msg.push("Date", "d");
        assert_eq!(
            msg.to_bytes(),
            b"Subject: s\r\nDate: d\r\n\r\nno colon here\r\n"
        );
        let mut msg = Parsed::parse(b"Subject: no line ending");
        msg.push("Date", "d");
        assert_eq!(msg.to_bytes(), b"Subject: no line ending\r\nDate: d\r\n");
    }

    #[test]
    fn a_message_without_body_separator() {
        let msg = Parsed::parse(b"Subject: only\r\n");
        assert_eq!(msg.fields.len(), 1);
        assert!(msg.body.is_empty());
    }

    #[test]
    fn classifies_lines() {
        let field = |name_end, colon| Line::Field { name_end, colon };
        for (line, first, want) in [
            (&b"\r\n"[..], false, Line::Empty),
            (b"\n", true, Line::Empty),
            (b"Subject: x\r\n", true, field(7, 7)),
            (b"Subject : x\r\n", false, field(7, 8)),
            (b"Subject\t \t:x\r\n", false, field(7, 10)),
            (b"X:\r\n", false, field(1, 1)),
            (b"From: a@x\r\n", true, field(4, 4)),
            (b"From : a@x\r\n", true, field(4, 5)),
            (
                b"From a@x Mon Dec  7 10:00:00 2026\r\n",
                true,
                Line::MailboxLine,
            ),
            (b"From a@x Mon Dec  7 10:00:00 2026\r\n", false, Line::Body),
            (b"From \r\n", true, Line::MailboxLine),
            (b"From\r\n", true, Line::Body),
            (b" folded\r\n", false, Line::Continuation),
            (b"\tfolded\r\n", false, Line::Continuation),
            (b" indented first line\r\n", true, Line::Body),
            (b": no name\r\n", false, Line::Body),
            (b"no colon here\r\n", false, Line::Body),
            (b"two words: x\r\n", false, Line::Body),
            (b"S\xc3\xbcbject: x\r\n", false, Line::Body),
            (b"Subject \r\n", false, Line::Body),
            (b"Subject", false, Line::Body),
            (b"Subject:", false, field(7, 7)),
            (b"", false, Line::Body),
        ] {
            assert_eq!(
                classify(line, first),
                want,
                "{:?} (first: {first})",
                String::from_utf8_lossy(line)
            );
        }
    }

    /// Split, write back, and split again: the second pass finds nothing to repair.
    fn repaired(content: &[u8]) -> (Parsed, Vec<u8>) {
        let msg = Parsed::parse(content);
        let out = msg.to_bytes();
        let again = Parsed::parse(&out);
        assert!(again.repairs.is_empty(), "{:?}", again.repairs);
        assert_eq!(again.fields, msg.fields);
        assert_eq!(again.to_bytes(), out);
        (msg, out)
    }

    #[test]
    fn a_well_formed_header_block_needs_no_repair() {
        let content = b"From: a@x\r\nSubject: s\r\n\tfolded\r\n\r\nbody\r\n";
        let (msg, out) = repaired(content);
        assert!(msg.repairs.is_empty());
        assert_eq!(out, content);
    }

    #[test]
    fn a_missing_empty_line_is_inserted_where_the_body_starts() {
        let (msg, out) = repaired(
            b"From: a@x\r\nDate: d\r\nSee: a line like a field is a field\r\nthis is body\r\nKey: value\r\n",
        );
        assert_eq!(msg.repairs, [Repair::MissingSeparator]);
        assert_eq!(msg.fields.len(), 3);
        assert_eq!(
            out,
            b"From: a@x\r\nDate: d\r\nSee: a line like a field is a field\r\n\r\nthis is body\r\nKey: value\r\n"
        );
        // A would-be field name with 8-bit bytes is no field name: the body starts.
        let (msg, out) = repaired(b"From: a@x\r\nS\xc3\xbcbject: x\r\nTo: b@x\r\n");
        assert_eq!(msg.fields.len(), 1);
        assert_eq!(out, b"From: a@x\r\n\r\nS\xc3\xbcbject: x\r\nTo: b@x\r\n");
    }

    #[test]
    fn obsolete_white_space_before_the_colon_is_removed() {
        let (msg, out) = repaired(b"Subject : hello\r\nTo\t: b@x\r\nDate: d\r\n\r\nbody\r\n");
        assert_eq!(
            msg.repairs,
            [Repair::ObsoleteFieldName, Repair::ObsoleteFieldName]
        );
        assert_eq!(msg.get("subject").unwrap().unfolded(), b" hello");
        assert_eq!(out, b"Subject: hello\r\nTo: b@x\r\nDate: d\r\n\r\nbody\r\n");
    }

    #[test]
    fn a_leading_mbox_line_becomes_a_field() {
        let (msg, out) =
            repaired(b"From sender@example.com Mon Dec  7 10:00:00 2026\r\nFrom: a@x\r\n\r\nb\r\n");
        assert_eq!(msg.repairs, [Repair::MailboxLine]);
        assert_eq!(
            out,
            b"X-Mailbox-Line: sender@example.com Mon Dec  7 10:00:00 2026\r\nFrom: a@x\r\n\r\nb\r\n"
        );
        // Only the first line: later it is body text.
        let (msg, out) = repaired(b"Subject: s\r\nFrom a@x Mon Dec  7 10:00:00 2026\r\n");
        assert_eq!(msg.repairs, [Repair::MissingSeparator]);
        assert_eq!(
            out,
            b"Subject: s\r\n\r\nFrom a@x Mon Dec  7 10:00:00 2026\r\n"
        );
        // `From :` is the obsolete form of a field, not an mbox line.
        let (msg, _) = repaired(b"From : a@x\r\n\r\nb\r\n");
        assert_eq!(msg.repairs, [Repair::ObsoleteFieldName]);
        assert!(msg.get("From").is_some());
        let (_, out) = repaired(b"From \r\n\r\nb\r\n");
        assert_eq!(out, b"X-Mailbox-Line:\r\n\r\nb\r\n");
    }

    #[test]
    fn content_ending_inside_the_header_block_gets_its_line_ending() {
        let (msg, out) = repaired(b"Subject: s\r\nTo: b@x");
        assert_eq!(msg.repairs, [Repair::MissingLineEnd]);
        assert_eq!(out, b"Subject: s\r\nTo: b@x\r\n");
        let (msg, out) = repaired(b"");
        assert!(msg.repairs.is_empty() && msg.fields.is_empty());
        assert!(out.is_empty());
    }
}
