//! Writing mailboxes in the strict form: names as atoms, one quoted string or RFC 2047
//! encoded words, cut to a bound, and the list folded at 78 characters.

use base64::prelude::{BASE64_STANDARD, Engine as _};

use super::read::tidy;
use super::{
    FOLD_AT, MAX_ENCODED_WORD, MAX_NAME_OCTETS, MAX_NAME_TOKEN, MAX_VALUE_READ, Mailbox, is_atext,
};

/// The display name cut to [`MAX_NAME_OCTETS`] at a character boundary.
pub(super) fn cap_name(mut name: String) -> String {
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

/// The display name (already tidied) as tokens that may be separated by folding white
/// space: atoms, or a quoted string cut at its spaces (RFC 5322 §3.2.4 allows FWS in
/// it), or encoded words for non-ASCII text. Text that looks like an encoded word is
/// encoded too, since readers differ on decoding it inside quotes (RFC 2047 §5), and so
/// is a name with a word too long for any line.
pub(super) fn name_tokens(name: &str) -> Vec<String> {
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

/// `=?UTF-8?B?...?=` words of at most `MAX_NAME_TOKEN` characters (RFC 2047 allows
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
/// that fit in half of `MAX_VALUE_READ`, so that what is written is read back whole
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
