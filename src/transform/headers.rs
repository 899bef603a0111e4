//! The header section as a list of fields: split, unfold, replace, add.

/// One header field as it appears in the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The name as written (case kept).
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

/// A message split into its header fields and its body.
#[derive(Clone, Debug)]
pub struct Message {
    /// The fields, in order.
    pub fields: Vec<Field>,
    /// Everything from the empty line on (the CRLF that ends the header section included).
    pub body: Vec<u8>,
}

impl Message {
    /// Split `content` (CRLF line endings). Text before the first colon-less line that
    /// is not a continuation ends the header section, as does the empty line.
    pub fn parse(content: &[u8]) -> Message {
        let mut fields: Vec<Field> = Vec::new();
        let mut pos = 0;
        while pos < content.len() {
            let line_end =
                memchr::memchr(b'\n', &content[pos..]).map_or(content.len(), |i| pos + i + 1);
            let line = &content[pos..line_end];
            if line == b"\r\n" || line == b"\n" {
                break;
            }
            if matches!(line[0], b' ' | b'\t') {
                match fields.last_mut() {
                    Some(field) => field.raw_value.extend_from_slice(line),
                    None => break,
                }
                pos = line_end;
                continue;
            }
            let Some(colon) = memchr::memchr(b':', line) else {
                break;
            };
            let name = &line[..colon];
            if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
                break;
            }
            fields.push(Field {
                name: String::from_utf8_lossy(name).into_owned(),
                raw_value: line[colon + 1..].to_vec(),
            });
            pos = line_end;
        }
        Message {
            fields,
            body: content[pos..].to_vec(),
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

    /// Replace the value of field `index` (same form as [`Message::push`]).
    pub fn set(&mut self, index: usize, value: &str) {
        self.fields[index].raw_value = format!(" {value}\r\n").into_bytes();
    }

    /// Serialise back to bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let size = self
            .fields
            .iter()
            .map(|f| f.name.len() + 1 + f.raw_value.len())
            .sum::<usize>()
            + self.body.len();
        let mut out = Vec::with_capacity(size);
        for f in &self.fields {
            out.extend_from_slice(f.name.as_bytes());
            out.push(b':');
            out.extend_from_slice(&f.raw_value);
        }
        out.extend_from_slice(&self.body);
        out
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
        let msg = Message::parse(content);
        assert_eq!(msg.fields.len(), 2);
        assert_eq!(msg.get("from").unwrap().unfolded(), b" a  <a@x>");
        assert_eq!(msg.body, b"\r\nbody\r\n");
        assert_eq!(msg.to_bytes(), content);
    }

    #[test]
    fn replaces_and_appends_fields() {
        let mut msg = Message::parse(b"From: x\r\n\r\nb\r\n");
        msg.set(0, "<a@x>");
        msg.push("Date", "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            msg.to_bytes(),
            b"From: <a@x>\r\nDate: Thu, 01 Jan 1970 00:00:00 +0000\r\n\r\nb\r\n"
        );
    }

    #[test]
    fn a_message_without_body_separator() {
        let msg = Message::parse(b"Subject: only\r\n");
        assert_eq!(msg.fields.len(), 1);
        assert!(msg.body.is_empty());
    }
}
