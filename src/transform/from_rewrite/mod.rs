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
//!
//! This module holds the strict-form checks, the bounds and [`Mailbox`]; `read` reads
//! values leniently, `write` writes them strictly.

mod read;
mod write;

pub use read::{
    ascii_domain, bounded_value, decode_raw, header_address, parse_mailboxes, read_mailboxes,
};
pub use write::{encode_words, render};

use read::{angle_positions, display_text};

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

#[cfg(test)]
mod tests;
