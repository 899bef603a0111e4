//! Reading mailbox headers leniently: raw bytes decoded (UTF-8, GB18030, Windows-1252),
//! values unfolded and bounded while they are read, comments dropped, lists split, and
//! display names and addresses taken from whatever form a client sent.

use mail_parser::HeaderValue;
use mail_parser::parsers::MessageStream;

use super::{MAX_ANGLE_READ, MAX_PHRASE_READ, MAX_VALUE_READ, Mailbox, is_atext, is_quoted};
use crate::proto::Address;

/// Decode raw header bytes: UTF-8 if valid, else GB18030 (covering GBK and GB2312,
/// which Chinese legacy apps send raw), else Windows-1252.
pub fn decode_raw(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    decode_chunks(bytes, |text| {
        out.push_str(text);
        true
    });
    out
}

/// Decode `bytes` as [`decode_raw`] does, handing the text to `each` a piece at a time
/// (until it returns false): UTF-8 in one piece without a copy, a legacy charset through
/// a small buffer, so that decoding never needs memory in proportion to the input.
pub(super) fn decode_chunks(bytes: &[u8], mut each: impl FnMut(&str) -> bool) {
    use encoding_rs::{CoderResult, DecoderResult, Encoding, GB18030, WINDOWS_1252};
    if let Ok(text) = std::str::from_utf8(bytes) {
        each(text);
        return;
    }
    let mut buf = vec![0u8; 8192];
    let valid = |encoding: &'static Encoding, buf: &mut [u8]| {
        let mut decoder = encoding.new_decoder_without_bom_handling();
        let mut src = bytes;
        loop {
            let (result, read, _) = decoder.decode_to_utf8_without_replacement(src, buf, true);
            src = &src[read..];
            match result {
                DecoderResult::InputEmpty => return true,
                DecoderResult::Malformed(..) => return false,
                DecoderResult::OutputFull => {}
            }
        }
    };
    let encoding = if valid(GB18030, &mut buf) {
        GB18030
    } else {
        WINDOWS_1252
    };
    let mut decoder = encoding.new_decoder_without_bom_handling();
    let mut src = bytes;
    loop {
        let (result, read, written, _) = decoder.decode_to_utf8(src, &mut buf, true);
        src = &src[read..];
        let text = std::str::from_utf8(&buf[..written]).expect("encoding_rs writes UTF-8");
        if !each(text) || result == CoderResult::InputEmpty {
            return;
        }
    }
}

/// A raw header value (as [`crate::transform::headers::Field::raw_value`] holds it: folded, any
/// bytes) decoded ([`decode_raw`]), unfolded, and bounded for reading, in one pass: a
/// run outside angle brackets longer than `MAX_PHRASE_READ` is cut (an open quoted
/// string or comment is closed), an address in angle brackets longer than
/// `MAX_ANGLE_READ` becomes `<>`, and a list longer than `MAX_VALUE_READ` ends at
/// a separator. The structure (quotes, comments, brackets, separators) of what is kept
/// is that of the value, so it reads as the value does, up to the cut. Returns the text
/// and whether anything was cut.
///
/// Reading then costs memory in proportion to the bounds, not to the header: a 24 MiB
/// display name is scanned once (twice in a legacy charset: once to tell GB18030 from
/// Windows-1252), never copied and never handed to mail-parser.
pub fn bounded_value(raw: &[u8]) -> (String, bool) {
    let mut reader = BoundedReader {
        out: String::with_capacity(raw.len().min(MAX_VALUE_READ + 16)),
        ..BoundedReader::default()
    };
    decode_chunks(raw, |text| text.chars().all(|c| reader.push(c)));
    reader.finish()
}

/// The state of [`bounded_value`].
#[derive(Default)]
pub(super) struct BoundedReader {
    out: String,
    in_quote: bool,
    /// Comment nesting.
    depth: usize,
    /// After a backslash in a quoted string or comment.
    escaped: bool,
    in_angle: bool,
    /// A CR not yet known to start a line break.
    pending_cr: bool,
    /// Octets of the current run outside brackets, and where it starts in `out`.
    run: usize,
    run_start: usize,
    /// Octets of the current address in brackets, and where it starts in `out`.
    angle: usize,
    angle_start: usize,
    /// Dropping the rest of an over-long run or address.
    skipping: bool,
    /// Something was dropped.
    cut: bool,
}

impl BoundedReader {
    /// Read `c`; false once the rest of the value is to be dropped.
    fn push(&mut self, c: char) -> bool {
        // Unfold: a line break goes (RFC 5322 §2.2.3), as in `headers::unfold`.
        if std::mem::take(&mut self.pending_cr) {
            if c == '\n' {
                return true;
            }
            if !self.read('\r') {
                return false;
            }
        }
        match c {
            '\n' => true,
            '\r' => {
                self.pending_cr = true;
                true
            }
            c => self.read(c),
        }
    }

    /// The text read and whether anything was cut.
    fn finish(mut self) -> (String, bool) {
        if std::mem::take(&mut self.pending_cr) {
            self.read('\r');
        }
        (self.out, self.cut)
    }

    fn read(&mut self, c: char) -> bool {
        let out = &mut self.out;
        if self.in_angle {
            let closing = match c {
                _ if self.escaped => {
                    self.escaped = false;
                    false
                }
                '\\' if self.in_quote => {
                    self.escaped = true;
                    false
                }
                '"' => {
                    self.in_quote = !self.in_quote;
                    false
                }
                '>' if !self.in_quote => true,
                _ => false,
            };
            if closing {
                self.in_angle = false;
                self.skipping = false;
                out.push('>');
                (self.run, self.run_start) = (0, out.len());
                return true;
            }
            self.angle += c.len_utf8();
            if self.skipping {
                return true;
            }
            if self.angle > MAX_ANGLE_READ {
                out.truncate(self.angle_start);
                (self.skipping, self.cut) = (true, true);
                return true;
            }
            out.push(c);
            return true;
        }
        let top = !self.in_quote && self.depth == 0 && !self.escaped;
        if top && matches!(c, ',' | ';' | ':' | '<' | '>') {
            if out.len() >= MAX_VALUE_READ {
                self.cut = true;
                return false;
            }
            self.skipping = false;
            out.push(c);
            (self.run, self.run_start) = (0, out.len());
            if c == '<' {
                (self.in_angle, self.angle, self.angle_start) = (true, 0, out.len());
            }
            return true;
        }
        // The state before `c`, for closing what is open if the run is cut here.
        let (was_quote, was_depth, was_escaped) = (self.in_quote, self.depth, self.escaped);
        match c {
            _ if self.escaped => self.escaped = false,
            '\\' if self.in_quote || self.depth > 0 => self.escaped = true,
            '"' if self.depth == 0 => self.in_quote = !self.in_quote,
            '(' if !self.in_quote => self.depth += 1,
            ')' if !self.in_quote && self.depth > 0 => self.depth -= 1,
            _ => {}
        }
        self.run += c.len_utf8();
        if self.skipping {
            return true;
        }
        if self.run > MAX_PHRASE_READ {
            (self.skipping, self.cut) = (true, true);
            if was_escaped {
                out.pop();
            }
            if was_quote {
                out.push('"');
            } else if was_depth > 0 {
                out.extend(std::iter::repeat_n(')', was_depth));
            } else if let Some(space) = out[self.run_start..].rfind([' ', '\t'])
                && out[self.run_start + space + 1..].starts_with("=?")
            {
                // Not half an encoded word: it would read as text.
                out.truncate(self.run_start + space);
            }
            return true;
        }
        out.push(c);
        true
    }
}

/// Whitespace runs become one space, leading and trailing white space goes, and so do
/// control characters (before splitting, so that none leaves two spaces behind).
pub(super) fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let kept: String = text
        .chars()
        .filter(|c| c.is_whitespace() || !c.is_control())
        .collect();
    for word in kept
        .split(|c: char| c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

pub(super) fn unquote(quoted: &str) -> String {
    let inner = &quoted[1..quoted.len() - 1];
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// RFC 2047 encoded words in free text, decoded. Text with a quoted string in it is
/// taken literally: an encoded word inside quotes is not one (RFC 2047 §5 (3)).
pub(super) fn decode_words(text: &str) -> String {
    if !text.contains("=?") || text.contains('"') {
        return text.to_owned();
    }
    let bytes = format!("{text}\r\n");
    match MessageStream::new(bytes.as_bytes()).parse_unstructured() {
        HeaderValue::Text(t) => t.into_owned(),
        _ => text.to_owned(),
    }
}

/// The display name as text from what stands before `<`.
pub(super) fn display_text(before: &str) -> Option<String> {
    let before = before.trim();
    let text = if is_quoted(before, true) {
        unquote(before)
    } else {
        decode_words(before)
    };
    let text = tidy(&text);
    (!text.is_empty()).then_some(text)
}

/// `value` without its comments (RFC 5322 §3.2.2); quoted strings are kept as they are.
/// Each comment becomes `instead` (a space between words, nothing inside an address).
pub(super) fn strip_comments(value: &str, instead: &str) -> String {
    let (mut in_quote, mut depth, mut escaped) = (false, 0usize, false);
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        let in_comment = depth > 0;
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote || in_comment => escaped = true,
            '"' if !in_comment => in_quote = !in_quote,
            '(' if !in_quote => {
                depth += 1;
                if depth == 1 {
                    out.push_str(instead);
                }
                continue;
            }
            ')' if in_comment => {
                depth -= 1;
                continue;
            }
            _ => {}
        }
        if !in_comment {
            out.push(c);
        }
    }
    out
}

/// `value` split at the commas outside quoted strings and comments.
pub(super) fn split_list(value: &str) -> Vec<&str> {
    let (mut in_quote, mut depth, mut escaped) = (false, 0usize, false);
    let (mut parts, mut start) = (Vec::new(), 0);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote || depth > 0 => escaped = true,
            '"' if depth == 0 => in_quote = !in_quote,
            '(' if !in_quote => depth += 1,
            ')' if !in_quote && depth > 0 => depth -= 1,
            ',' if !in_quote && depth == 0 => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

/// The `>` that closes the `<` at `open`, skipping quoted strings (`<">"@x.org>`).
pub(super) fn closing_angle(value: &str, open: usize) -> Option<usize> {
    let (mut in_quote, mut escaped) = (false, false);
    for (i, c) in value[open + 1..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '>' if !in_quote => return Some(open + 1 + i),
            _ => {}
        }
    }
    None
}

/// Positions of `<` outside quoted strings and comments.
pub(super) fn angle_positions(value: &str) -> Vec<usize> {
    let (mut in_quote, mut depth, mut escaped) = (false, 0usize, false);
    let mut found = Vec::new();
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote || depth > 0 => escaped = true,
            '"' if depth == 0 => in_quote = !in_quote,
            '(' if !in_quote => depth += 1,
            ')' if !in_quote && depth > 0 => depth -= 1,
            '<' if !in_quote && depth == 0 => found.push(i),
            _ => {}
        }
    }
    found
}

/// The address in the strict `addr-spec` form (RFC 5322 §3.4.1) if it is a mailbox: a
/// local part that is not a dot-atom (`joe..smith`) is quoted, which names the same
/// mailbox (RFC 5321 §4.1.2), and a trailing dot after the domain goes. Non-ASCII stays
/// (RFC 6532); whether it may is the caller's decision (SMTPUTF8).
pub fn header_address(address: &str) -> Option<String> {
    let parsed = Address::parse(address.trim()).ok()?;
    let local = parsed.local();
    let is_utf8_dot_atom = !local.is_empty()
        && local
            .split('.')
            .all(|part| !part.is_empty() && part.chars().all(|c| is_atext(c) || !c.is_ascii()));
    let local = if is_utf8_dot_atom || local.starts_with('"') {
        local.to_owned()
    } else {
        let mut quoted = String::with_capacity(local.len() + 2);
        quoted.push('"');
        for c in local.chars() {
            if c == '"' || c == '\\' {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        quoted
    };
    let domain = parsed.domain();
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    Some(format!("{local}@{domain}"))
}

/// Whether the text before a lone `<` holds a mailbox of its own before a comma
/// (`a@x.org, Name <b@x.org>`): then the value is a list, not one sloppy display name
/// with a comma in it (`Support Team, ACME <s@acme.com>`).
pub(super) fn is_list_head(before: &str) -> bool {
    let parts = split_list(before);
    parts[..parts.len() - 1]
        .iter()
        .any(|part| header_address(&strip_comments(part, "")).is_some())
}

/// The address between angle brackets, comments and obsolete white space removed
/// (RFC 5322 §4.4: `<pete(his account)@silly.test>`, `<joe . smith@x.org>`).
pub(super) fn angle_address(inside: &str) -> Option<String> {
    let bare = strip_comments(inside, "");
    let (mut in_quote, mut escaped) = (false, false);
    let mut compact = String::with_capacity(bare.len());
    for c in bare.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            ' ' | '\t' if !in_quote => continue,
            _ => {}
        }
        compact.push(c);
    }
    header_address(&compact)
}

/// `value` with a comma after every `<...>` that another `<` follows without a list
/// separator between them: `A <a@x.org> B <b@x.org>` (mailboxes without their comma, as
/// hand-made headers have them) reads as the two mailboxes it names, not as one address
/// glued together from both, which no upstream takes.
pub(super) fn separate_mailboxes(value: &str) -> std::borrow::Cow<'_, str> {
    let (mut in_quote, mut depth, mut escaped, mut in_angle) = (false, 0usize, false, false);
    // Just after a `>` with no `,`, `;` or `:` since.
    let mut after_angle: Option<usize> = None;
    let mut commas = Vec::new();
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote || depth > 0 => escaped = true,
            '"' if depth == 0 => in_quote = !in_quote,
            '(' if !in_quote => depth += 1,
            ')' if !in_quote && depth > 0 => depth -= 1,
            _ if in_quote || depth > 0 => {}
            '<' if !in_angle => {
                commas.extend(after_angle.take());
                in_angle = true;
            }
            '>' if in_angle => {
                in_angle = false;
                after_angle = Some(i + 1);
            }
            ',' | ';' | ':' if !in_angle => after_angle = None,
            _ => {}
        }
    }
    if commas.is_empty() {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + commas.len());
    let mut start = 0;
    for at in commas {
        out.push_str(&value[start..at]);
        out.push(',');
        start = at;
    }
    out.push_str(&value[start..]);
    std::borrow::Cow::Owned(out)
}

/// Read every mailbox of a header value, leniently; groups are flattened, and mailboxes
/// without the comma between them are read as a list (`separate_mailboxes`).
pub fn parse_mailboxes(value: &str) -> Vec<Mailbox> {
    let angles = angle_positions(value);
    if let [open] = angles.as_slice()
        && let Some(close) = closing_angle(value, *open)
        && let Some(address) = angle_address(&value[open + 1..close])
        && is_comment_or_blank(&value[close + 1..])
        && !is_list_head(&value[..*open])
    {
        return vec![Mailbox {
            name: display_text(&strip_comments(&value[..*open], " ")),
            address,
        }];
    }
    let bytes = format!("{}\r\n", separate_mailboxes(value));
    let parsed = MessageStream::new(bytes.as_bytes()).parse_address();
    let addrs: Vec<&mail_parser::Addr> = match &parsed {
        HeaderValue::Address(mail_parser::Address::List(list)) => list.iter().collect(),
        HeaderValue::Address(mail_parser::Address::Group(groups)) => {
            groups.iter().flat_map(|g| g.addresses.iter()).collect()
        }
        _ => Vec::new(),
    };
    addrs
        .into_iter()
        .filter_map(|a| {
            let address = header_address(a.address.as_deref()?)?;
            let name = a
                .name
                .as_deref()
                .map(tidy)
                .filter(|n| !n.is_empty() && *n != address);
            Some(Mailbox { name, address })
        })
        .collect()
}

/// The mailboxes of a raw header value ([`crate::transform::headers::Field::raw_value`]), read
/// through [`bounded_value`].
pub fn read_mailboxes(raw: &[u8]) -> Vec<Mailbox> {
    parse_mailboxes(&bounded_value(raw).0)
}

pub(super) fn is_comment_or_blank(rest: &str) -> bool {
    let rest = rest.trim();
    rest.is_empty() || (rest.starts_with('(') && rest.ends_with(')'))
}

/// The address with an internationalised domain turned into A-labels (RFC 5890), unless
/// the message may carry UTF-8 (SMTPUTF8).
pub fn ascii_domain(address: &str, smtputf8: bool) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) if !smtputf8 && !domain.is_ascii() => {
            match idna::domain_to_ascii(domain) {
                Ok(ascii) => format!("{local}@{ascii}"),
                Err(_) => address.to_owned(),
            }
        }
        _ => address.to_owned(),
    }
}
