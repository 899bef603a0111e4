//! Mailbox headers (From, Sender, Reply-To) in strict RFC 5322 form.
//!
//! Strict providers refuse `From: 张三 <a@qq.com>` (raw UTF-8), `From: Dr. Who <w@x>`
//! (an unquoted special), and friends. A value already in the strict form is kept byte
//! for byte; anything else is read leniently and written back strictly:
//!
//! * ASCII only, no comments, no obsolete syntax;
//! * one of `addr-spec`, `<addr-spec>`, `display-name <addr-spec>`;
//! * a display name is atoms separated by single spaces, one quoted string, or RFC 2047
//!   encoded words (RFC 5322 §3.4, RFC 2047 §5).

use base64::prelude::{BASE64_STANDARD, Engine as _};
use mail_parser::HeaderValue;
use mail_parser::parsers::MessageStream;

use crate::proto::Address;

/// Longest line we produce when folding (RFC 5322 §2.1.1 "SHOULD be no more than 78").
const FOLD_AT: usize = 78;

/// Longest encoded word (RFC 2047 §2).
const MAX_ENCODED_WORD: usize = 75;

/// Longest token of a display name we write: it fits on the first line after the longest
/// header name we render (`Reply-To: `) as well as on a continuation line, so no line
/// is longer than [`FOLD_AT`] unless the address alone is.
const MAX_NAME_TOKEN: usize = FOLD_AT - "Reply-To: ".len();

/// Longest display name we write, in octets of decoded (UTF-8) text; a longer one is cut
/// at a character boundary. RFC 5322 §2.1.1 limits a line to 998 octets: a name longer
/// than a whole line is no name a reader can show, and without a bound a rewrite
/// amplifies (every 42 octets of text become a 68-character encoded word, so a 24 MiB
/// name became 41 MiB, and twice that with the `sender` policy, From and Reply-To).
/// Rendered, a name at the bound takes at most 24 encoded words, about 1.7 KB.
pub const MAX_NAME_OCTETS: usize = 998;

/// Longest run of a header value outside angle brackets (a display name, a comment,
/// an address without brackets, up to the next `,` `;` `:` `<` or `>`) that is read, in
/// octets after unfolding. Far above [`MAX_NAME_OCTETS`] so that any encoding of a name
/// at the bound (quoted pairs, Q-encoded words: up to 7 characters an octet) is read
/// whole before the name is cut.
const MAX_PHRASE_READ: usize = 16 * 1024;

/// Longest address between angle brackets that is read: a path has at most 256 octets
/// (RFC 5321 §4.5.3.1.3); the rest is room for comments and obsolete white space. A
/// longer one is no address and is read as `<>`.
const MAX_ANGLE_READ: usize = 4 * 1024;

/// Longest header value that is read: at the first list separator past this bound the
/// rest of the list is dropped (a Reply-To of a thousand addresses is no reply address).
const MAX_VALUE_READ: usize = 64 * 1024;

/// A mailbox read from a header: display name (decoded) and address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mailbox {
    /// The display name as text, if any.
    pub name: Option<String>,
    /// `local@domain`.
    pub address: String,
}

/// RFC 5322 `atext`.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|part| !part.is_empty() && part.chars().all(is_atext))
}

/// `"..."` with only qtext, spaces and quoted-pairs inside.
fn is_quoted_string(s: &str) -> bool {
    is_quoted(s, false)
}

/// `"..."` as [`is_quoted_string`], or with `utf8` also non-ASCII text inside (RFC 6532
/// §3.2), as sloppy and internationalised mail has it.
fn is_quoted(s: &str, utf8: bool) -> bool {
    let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
        return false;
    };
    if s.len() < 2 {
        return false;
    }
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) if n == ' ' || n == '\t' || n.is_ascii_graphic() => {}
                Some(n) if utf8 && !n.is_ascii() => {}
                _ => return false,
            },
            '"' => return false,
            ' ' => {}
            c if c.is_ascii_graphic() => {}
            c if utf8 && !c.is_ascii() => {}
            _ => return false,
        }
    }
    true
}

/// `=?charset?B|Q?text?=` of at most 75 characters.
fn is_encoded_word(w: &str) -> bool {
    if w.len() > MAX_ENCODED_WORD {
        return false;
    }
    let Some(inner) = w.strip_prefix("=?").and_then(|r| r.strip_suffix("?=")) else {
        return false;
    };
    let parts: Vec<&str> = inner.split('?').collect();
    let [charset, encoding, text] = parts.as_slice() else {
        return false;
    };
    !charset.is_empty()
        && charset
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_*".contains(c))
        && matches!(*encoding, "B" | "b" | "Q" | "q")
        && !text.is_empty()
        && text.chars().all(|c| c.is_ascii_graphic())
}

/// `"[" *dtext "]"` (RFC 5322 §3.4.1; no FWS inside, as we write it).
fn is_domain_literal(s: &str) -> bool {
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|inner| {
            inner
                .chars()
                .all(|c| c.is_ascii_graphic() && !"[]\\".contains(c))
        })
}

fn is_addr_spec(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    (is_dot_atom(local) || is_quoted_string(local))
        && (is_dot_atom(domain) || is_domain_literal(domain))
}

fn is_display_name(name: &str) -> bool {
    let words: Vec<&str> = name.split(' ').collect();
    is_quoted_string(name)
        || words
            .iter()
            .all(|w| !w.is_empty() && w.chars().all(is_atext))
        || words.iter().all(|w| is_encoded_word(w))
}

/// Whether an unfolded header value is one mailbox in the strict form.
pub fn is_strict_mailbox(value: &str) -> bool {
    let value = value.trim_matches([' ', '\t']);
    if !value.is_ascii() || value.chars().any(|c| c.is_ascii_control() && c != '\t') {
        return false;
    }
    if is_addr_spec(value) {
        return true;
    }
    let Some(rest) = value.strip_suffix('>') else {
        return false;
    };
    let [open] = angle_positions(rest)[..] else {
        return false;
    };
    let (name, addr) = (&rest[..open], &rest[open + 1..]);
    if !is_addr_spec(addr) {
        return false;
    }
    let display = match name.strip_suffix(' ') {
        _ if name.is_empty() => return true,
        Some(display) if !display.is_empty() && !display.ends_with(' ') => display,
        _ => return false,
    };
    // A name above the bound is cut when rewritten, so it is not strict (checked last,
    // and decoded only for a value that could hold one).
    is_display_name(display)
        && (value.len() <= MAX_NAME_OCTETS
            || display_text(display).is_none_or(|t| t.len() <= MAX_NAME_OCTETS))
}

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
fn decode_chunks(bytes: &[u8], mut each: impl FnMut(&str) -> bool) {
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

/// A raw header value (as [`super::headers::Field::raw_value`] holds it: folded, any
/// bytes) decoded ([`decode_raw`]), unfolded, and bounded for reading, in one pass: a
/// run outside angle brackets longer than [`MAX_PHRASE_READ`] is cut (an open quoted
/// string or comment is closed), an address in angle brackets longer than
/// [`MAX_ANGLE_READ`] becomes `<>`, and a list longer than [`MAX_VALUE_READ`] ends at
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
struct BoundedReader {
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

/// The display name cut to [`MAX_NAME_OCTETS`] at a character boundary.
fn cap_name(mut name: String) -> String {
    if name.len() > MAX_NAME_OCTETS {
        let mut end = MAX_NAME_OCTETS;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
        let kept = name.trim_end().len();
        name.truncate(kept);
    }
    name
}

/// Whitespace runs become one space, leading and trailing white space goes, and so do
/// control characters (before splitting, so that none leaves two spaces behind).
fn tidy(text: &str) -> String {
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

fn unquote(quoted: &str) -> String {
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
fn decode_words(text: &str) -> String {
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
fn display_text(before: &str) -> Option<String> {
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
fn strip_comments(value: &str, instead: &str) -> String {
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
fn split_list(value: &str) -> Vec<&str> {
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
fn closing_angle(value: &str, open: usize) -> Option<usize> {
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
fn angle_positions(value: &str) -> Vec<usize> {
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
fn is_list_head(before: &str) -> bool {
    let parts = split_list(before);
    parts[..parts.len() - 1]
        .iter()
        .any(|part| header_address(&strip_comments(part, "")).is_some())
}

/// The address between angle brackets, comments and obsolete white space removed
/// (RFC 5322 §4.4: `<pete(his account)@silly.test>`, `<joe . smith@x.org>`).
fn angle_address(inside: &str) -> Option<String> {
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
fn separate_mailboxes(value: &str) -> std::borrow::Cow<'_, str> {
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
/// without the comma between them are read as a list ([`separate_mailboxes`]).
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

/// The mailboxes of a raw header value ([`super::headers::Field::raw_value`]), read
/// through [`bounded_value`].
pub fn read_mailboxes(raw: &[u8]) -> Vec<Mailbox> {
    parse_mailboxes(&bounded_value(raw).0)
}

fn is_comment_or_blank(rest: &str) -> bool {
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

/// The display name (already tidied) as tokens that may be separated by folding white
/// space: atoms, or a quoted string cut at its spaces (RFC 5322 §3.2.4 allows FWS in
/// it), or encoded words for non-ASCII text. Text that looks like an encoded word is
/// encoded too, since readers differ on decoding it inside quotes (RFC 2047 §5), and so
/// is a name with a word too long for any line.
fn name_tokens(name: &str) -> Vec<String> {
    if !name.is_ascii() || name.contains("=?") {
        return encode_words(name);
    }
    let tokens: Vec<String> = if name.chars().all(|c| c == ' ' || is_atext(c)) {
        name.split(' ').map(str::to_owned).collect()
    } else {
        let mut quoted = String::with_capacity(name.len() + 2);
        quoted.push('"');
        for c in name.chars() {
            if c == '"' || c == '\\' {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        quoted.split(' ').map(str::to_owned).collect()
    };
    if tokens.iter().any(|t| t.len() > MAX_NAME_TOKEN) {
        return encode_words(name);
    }
    tokens
}

/// `=?UTF-8?B?...?=` words of at most [`MAX_NAME_TOKEN`] characters (RFC 2047 allows
/// 75), never splitting a character.
pub fn encode_words(text: &str) -> Vec<String> {
    // 12 characters of overhead leave 56 for base64: 42 octets of UTF-8 at most.
    const MAX_WORD: usize = if MAX_NAME_TOKEN < MAX_ENCODED_WORD {
        MAX_NAME_TOKEN
    } else {
        MAX_ENCODED_WORD
    };
    const MAX_OCTETS: usize = (MAX_WORD - "=?UTF-8?B??=".len()) / 4 * 3;
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > MAX_OCTETS {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| format!("=?UTF-8?B?{}?=", BASE64_STANDARD.encode(w.as_bytes())))
        .collect()
}

/// Render mailboxes strictly (comma-separated), folded at 78 characters for a header
/// called `header` (the returned text goes after `Header: `). Names are tidied first
/// (white space runs become one space, control characters go) and cut to
/// [`MAX_NAME_OCTETS`]; an empty name is left out. A list is cut after the mailboxes
/// that fit in half of [`MAX_VALUE_READ`], so that what is written is read back whole
/// (normalising twice changes nothing).
pub fn render(mailboxes: &[Mailbox], header: &str) -> String {
    // An upper bound of each mailbox's unfolded length: a name at most doubles (quoted
    // pairs; encoded words take 68 characters for 42 octets).
    let mut budget = MAX_VALUE_READ / 2;
    let count = mailboxes
        .iter()
        .take_while(|m| {
            let name = m.name.as_ref().map_or(0, |n| n.len().min(MAX_NAME_OCTETS));
            let need = 2 * name + m.address.len() + 8;
            let fits = need <= budget;
            budget = budget.saturating_sub(need);
            fits
        })
        .count()
        .max(1);
    let mailboxes = &mailboxes[..count.min(mailboxes.len())];
    let mut out = String::new();
    let mut line_len = header.len() + 2;
    for (i, mailbox) in mailboxes.iter().enumerate() {
        let name = mailbox
            .name
            .as_deref()
            .map(|n| cap_name(tidy(n)))
            .filter(|n| !n.is_empty());
        let mut tokens = name.as_deref().map(name_tokens).unwrap_or_default();
        tokens.push(format!("<{}>", mailbox.address));
        if i + 1 < mailboxes.len() {
            tokens.last_mut().expect("pushed above").push(',');
        }
        for token in tokens {
            let first = out.is_empty();
            if !first && line_len + 1 + token.len() > FOLD_AT {
                out.push_str("\r\n ");
                line_len = 1;
            } else if !first {
                out.push(' ');
                line_len += 1;
            }
            out.push_str(&token);
            line_len += token.len();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_strict_forms() {
        for strict in [
            "a@example.com",
            "<noreply@acme.com>",
            "\"re- AI Radio\" <re-ai-radio@reload.com.cn>",
            "Support <support@acme.com>",
            "John Q Public <john@example.com>",
            "=?UTF-8?B?5byg5LiJ?= <zhangsan@qq.com>",
            "=?GB2312?B?1cXI/Q==?= <zhangsan@qq.com>",
            "\"a \\\"b\\\" c\" <x@y.z>",
            "Admin <admin@[192.0.2.1]>",
        ] {
            assert!(is_strict_mailbox(strict), "{strict}");
        }
        for sloppy in [
            "张三 <zhangsan@qq.com>",
            "Dr. Who <who@x.org>",
            "Support Team, ACME <support@acme.com>",
            "support@acme.com (Support)",
            "Two  Spaces <a@x.y>",
            "NoSpace<a@x.y>",
            "a@x.y, b@x.y",
            "<a@x.y> trailing",
            "Bob \"The Builder\" Smith <bob@x.org>",
            "",
        ] {
            assert!(!is_strict_mailbox(sloppy), "{sloppy}");
        }
    }

    fn first(value: &str) -> Mailbox {
        parse_mailboxes(value)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no mailbox in {value:?}"))
    }

    fn mailbox(name: Option<&str>, address: &str) -> Mailbox {
        Mailbox {
            name: name.map(str::to_owned),
            address: address.into(),
        }
    }

    #[test]
    fn reads_sloppy_values() {
        assert_eq!(
            first("张三 <zhangsan@qq.com>"),
            mailbox(Some("张三"), "zhangsan@qq.com")
        );
        assert_eq!(
            first("Support Team, ACME <support@acme.com>"),
            mailbox(Some("Support Team, ACME"), "support@acme.com")
        );
        assert_eq!(
            first("Dr. Who <who@x.org>"),
            mailbox(Some("Dr. Who"), "who@x.org")
        );
        assert_eq!(
            first("support@acme.com (Support)"),
            mailbox(Some("Support"), "support@acme.com")
        );
        assert_eq!(
            first("Bob \"The Builder\" Smith <bob@x.org>"),
            mailbox(Some("Bob \"The Builder\" Smith"), "bob@x.org")
        );
        assert_eq!(
            first("\"Quoted, Name\" <q@x.org>"),
            mailbox(Some("Quoted, Name"), "q@x.org")
        );
        assert_eq!(
            first("=?UTF-8?B?5byg5LiJ?= <z@qq.com>"),
            mailbox(Some("张三"), "z@qq.com")
        );
        assert_eq!(
            first("first@x.org, second@x.org"),
            mailbox(None, "first@x.org")
        );
        assert_eq!(
            first("Team: one@x.org, two@x.org;"),
            mailbox(None, "one@x.org")
        );
        assert_eq!(
            first("first@x.org, Second <second@x.org>"),
            mailbox(None, "first@x.org")
        );
        assert_eq!(
            first("Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>"),
            mailbox(Some("Pete"), "pete@silly.test")
        );
        assert_eq!(
            first("Joe <joe..smith@example.com.>"),
            mailbox(Some("Joe"), "\"joe..smith\"@example.com")
        );
        assert!(parse_mailboxes("Undisclosed recipients:;").is_empty());
        assert!(parse_mailboxes("just a name").is_empty());
    }

    #[test]
    fn mailboxes_without_their_comma_are_a_list() {
        assert_eq!(
            parse_mailboxes("A <a@x.org> B <b@x.org>"),
            [mailbox(Some("A"), "a@x.org"), mailbox(Some("B"), "b@x.org")]
        );
        assert_eq!(
            parse_mailboxes("A <a@x.org><b@x.org> C <c@x.org>"),
            [
                mailbox(Some("A"), "a@x.org"),
                mailbox(None, "b@x.org"),
                mailbox(Some("C"), "c@x.org")
            ]
        );
        assert_eq!(
            first("\"A <q@x.org> B\" <a@x.org> (c <c@x.org>) B <b@x.org>"),
            mailbox(Some("A <q@x.org> B"), "a@x.org")
        );
        assert_eq!(
            first("Team: A <a@x.org> B <b@x.org>;"),
            mailbox(Some("A"), "a@x.org")
        );
        // With the comma, or with one mailbox, nothing changes.
        for value in [
            "A <a@x.org>, B <b@x.org>",
            "<a@x.y> trailing",
            "Team: <a@x.org>, <b@x.org>;",
            "<@route:a@x.org>",
        ] {
            assert_eq!(separate_mailboxes(value), value);
        }
    }

    #[test]
    fn renders_names_by_their_kind() {
        let r = |name: &str, addr: &str| render(&[mailbox(Some(name), addr)], "From");
        assert_eq!(
            r("张三", "zhangsan@qq.com"),
            "=?UTF-8?B?5byg5LiJ?= <zhangsan@qq.com>"
        );
        assert_eq!(
            r("Support Team, ACME", "support@acme.com"),
            "\"Support Team, ACME\" <support@acme.com>"
        );
        assert_eq!(r("Dr. Who", "who@x.org"), "\"Dr. Who\" <who@x.org>");
        assert_eq!(
            r("Support", "support@acme.com"),
            "Support <support@acme.com>"
        );
        assert_eq!(
            r("Bob \"The Builder\" Smith", "bob@x.org"),
            "\"Bob \\\"The Builder\\\" Smith\" <bob@x.org>"
        );
        assert_eq!(r("back\\slash", "b@x.org"), "\"back\\\\slash\" <b@x.org>");
        assert_eq!(render(&[mailbox(None, "a@x.org")], "From"), "<a@x.org>");
        assert_eq!(r(" \t\u{1}", "e@x.org"), "<e@x.org>");
        assert_eq!(r("a \u{1} b", "c@x.org"), "a b <c@x.org>");
        assert_eq!(
            r("=?UTF-8?B?5byg5LiJ?=", "l@x.org"),
            "=?UTF-8?B?PT9VVEYtOD9CPzVieWc1TGlKPz0=?= <l@x.org>"
        );
    }

    #[test]
    fn long_non_ascii_names_fold_into_short_encoded_words() {
        let name = "非常长的显示名称".repeat(8);
        let value = render(&[mailbox(Some(&name), "a@example.com")], "From");
        let header = format!("From: {value}");
        for line in header.split("\r\n") {
            assert!(line.len() <= 78, "line too long: {line:?}");
        }
        for word in value.split_whitespace().filter(|w| w.starts_with("=?")) {
            assert!(word.len() <= 75 && is_encoded_word(word), "{word}");
        }
        let unfolded = value.replace("\r\n", "");
        assert!(is_strict_mailbox(&unfolded), "{unfolded}");
        assert_eq!(first(&unfolded), mailbox(Some(&name), "a@example.com"));
    }

    #[test]
    fn bounded_values_read_like_the_unfolded_value() {
        for raw in [
            &b" A <a@x.org>\r\n"[..],
            b" \"Quoted, \\\"Name\" <q@x.org>\r\n",
            b" Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>\r\n",
            b" Team: one@x.org,\r\n two@x.org;\r\n",
            b" =?UTF-8?B?5byg5LiJ?=\r\n <z@qq.com>\r\n",
            b" <\">\"@x.org>, b@x.org\r\n",
            b" \xd5\xc5\xc8\xfd <zhangsan@qq.com>\r\n",
            b" a\rb <c@d.org>\r\n",
            b" a@x.org\r",
            b" \x80uro <e@x.org>\r\n",
        ] {
            let want = decode_raw(&crate::transform::headers::unfold(raw));
            assert_eq!(bounded_value(raw), (want, false), "{raw:?}");
        }
    }

    /// A value with a run of `n` octets of `unit` in the middle.
    fn huge(before: &str, unit: &str, n: usize, after: &str) -> Vec<u8> {
        let mut raw = Vec::with_capacity(n + 100);
        raw.extend_from_slice(before.as_bytes());
        let mut line = 0;
        while raw.len() < n {
            raw.extend_from_slice(unit.as_bytes());
            line += unit.len();
            if line > 900 {
                raw.extend_from_slice(b"\r\n ");
                line = 0;
            }
        }
        raw.extend_from_slice(after.as_bytes());
        raw
    }

    #[test]
    fn huge_values_are_cut_while_reading() {
        const N: usize = 4 << 20;
        for (raw, name) in [
            (huge(" ", "Big ", N, "<big@x.org>\r\n"), "Big"),
            (huge(" \"", "q\\\" ", N, "\" <big@x.org>\r\n"), "q\""),
            (huge(" big@x.org (", "c(o)m ", N, ")\r\n"), "c(o)m"),
            (
                huge(" ", "=?UTF-8?B?5byg5LiJ?= ", N, "<big@x.org>\r\n"),
                "张三",
            ),
            (huge(" ", "张三", N, " <big@x.org>\r\n"), "张三"),
        ] {
            let (value, cut) = bounded_value(&raw);
            assert!(cut);
            assert!(value.len() <= MAX_PHRASE_READ + 100, "{}", value.len());
            let read = parse_mailboxes(&value);
            assert_eq!(read.len(), 1, "{value}");
            assert_eq!(read[0].address, "big@x.org");
            let text = read[0].name.as_deref().unwrap();
            assert!(text.len() >= MAX_NAME_OCTETS, "{text}");
            assert!(text.starts_with(name), "{text}");
            let rendered = render(&read, "From");
            assert!(rendered.len() < 2 * MAX_NAME_OCTETS, "{rendered}");
            let unfolded = rendered.replace("\r\n", "");
            assert!(is_strict_mailbox(&unfolded), "{unfolded}");
            let again = parse_mailboxes(&unfolded);
            let capped = again[0].name.as_deref().unwrap();
            assert!(capped.len() <= MAX_NAME_OCTETS && text.starts_with(capped));
        }
        // A legacy charset is decoded through a small buffer, and cut the same way.
        let gbk = huge(" ", "\u{0}", N, "").len();
        let mut raw = b" ".to_vec();
        while raw.len() < gbk {
            raw.extend_from_slice(b"\xd5\xc5\xc8\xfd \r\n ");
        }
        raw.extend_from_slice(b"<big@x.org>\r\n");
        let (value, cut) = bounded_value(&raw);
        assert!(cut && value.len() <= MAX_PHRASE_READ + 100);
        let read = parse_mailboxes(&value);
        assert_eq!(read[0].address, "big@x.org");
        assert!(read[0].name.as_deref().unwrap().starts_with("张三 张三"));
        // An address that long is none; a list that long ends early.
        let (value, cut) = bounded_value(&huge(" A <", "a", N, "@x.org>, b@x.org\r\n"));
        assert!(cut);
        assert_eq!(value, " A <>, b@x.org");
        let (value, cut) = bounded_value(&huge(" ", "a@x.org, ", N, "last@x.org\r\n"));
        assert!(cut && value.len() <= MAX_VALUE_READ + 16, "{}", value.len());
        assert!(parse_mailboxes(&value).len() > 1000);
    }

    #[test]
    fn long_lists_are_written_so_that_they_read_back_whole() {
        let raw = huge(" ", "a@x.org, ", 4 << 20, "last@x.org\r\n");
        let (value, cut) = bounded_value(&raw);
        assert!(cut);
        let read = parse_mailboxes(&value);
        let rendered = render(&read, "Reply-To");
        assert!(
            rendered.len() <= MAX_VALUE_READ / 2 + 100,
            "{}",
            rendered.len()
        );
        let (again, cut) = bounded_value(format!(" {rendered}\r\n").as_bytes());
        assert!(!cut);
        let reread = parse_mailboxes(&again);
        assert!(reread.len() > 1000 && reread.len() < read.len());
        assert_eq!(render(&reread, "Reply-To"), rendered);
    }

    #[test]
    fn names_are_cut_at_a_character_boundary() {
        for (unit, kept) in [("a", 998), ("é", 998), ("张", 996), ("😀", 996)] {
            let name = unit.repeat(2000);
            let rendered = render(&[mailbox(Some(&name), "a@x.org")], "From");
            let unfolded = rendered.replace("\r\n", "");
            let read = first(&unfolded);
            assert_eq!(read.name.as_deref(), Some(&name[..kept]), "{unit}");
            assert!(is_strict_mailbox(&unfolded));
        }
        assert_eq!(cap_name(format!("{} b", "a".repeat(997))), "a".repeat(997));
        // A strict value is kept only with a name within the bound.
        let long = format!("{} <a@x.org>", "a".repeat(MAX_NAME_OCTETS + 1));
        assert!(!is_strict_mailbox(&long));
        assert!(is_strict_mailbox(&long[1..]));
    }

    #[test]
    fn decodes_legacy_charsets() {
        let gbk = b"\xd5\xc5\xc8\xfd <zhangsan@qq.com>";
        assert_eq!(decode_raw(gbk), "张三 <zhangsan@qq.com>");
        assert_eq!(decode_raw("é <a@x.org>".as_bytes()), "é <a@x.org>");
        assert_eq!(decode_raw(b"\x80 \xe9"), "€ é");
        let long = b"\xd5\xc5\xc8\xfd".repeat(10_000);
        assert_eq!(decode_raw(&long), "张三".repeat(10_000));
    }

    #[test]
    fn idn_domains_become_a_labels_without_smtputf8() {
        assert_eq!(
            ascii_domain("info@bücher.example", false),
            "info@xn--bcher-kva.example"
        );
        assert_eq!(
            ascii_domain("info@bücher.example", true),
            "info@bücher.example"
        );
        assert_eq!(ascii_domain("a@plain.example", false), "a@plain.example");
    }
}
