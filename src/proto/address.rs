//! Envelope addresses: the `Path` of `MAIL FROM` and `RCPT TO` (RFC 5321 §4.1.2).
//!
//! The parser is lenient where legacy senders are sloppy but harmless (a missing pair of
//! angle brackets, consecutive dots in a local part, underscores in host names) and strict
//! where sloppiness would be ambiguous or unsafe (spaces, control characters, several `@`
//! outside quotes, an empty domain).

use std::fmt;

/// A mailbox `local@domain` from the envelope.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    local: String,
    domain: String,
}

/// Why an envelope address was refused; shown to the client after the reply code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing between the brackets, or no brackets and no text.
    #[error("empty address")]
    Empty,
    /// `<` without `>` or the reverse.
    #[error("unbalanced angle brackets")]
    Unbalanced,
    /// The address has no `@domain` part.
    #[error("address must have the form local-part@domain")]
    MissingDomain,
    /// A character that an unquoted local part cannot hold.
    #[error("invalid character {0:?} in local part (quote the local part to use it)")]
    BadLocalChar(char),
    /// An unterminated quoted local part.
    #[error("unterminated quoted local part")]
    UnterminatedQuote,
    /// A domain that is not a host name or an address literal.
    #[error("invalid domain {0:?}")]
    BadDomain(String),
    /// Text after the closing bracket that is not a parameter.
    #[error("unexpected text after the address")]
    TrailingText,
    /// Local part over 64 octets or domain over 255 (RFC 5321 §4.5.3.1).
    #[error("address too long")]
    TooLong,
}

impl Address {
    /// Build from parts that are already known to be valid (tests, configuration).
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        parse_mailbox(text)
    }

    /// The local part, quotes kept as sent.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The domain (host name or address literal), as sent.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Whether the address needs SMTPUTF8 (RFC 6531) to be transmitted.
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// The reverse path of `MAIL FROM`: a mailbox or the null sender `<>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReversePath {
    /// `MAIL FROM:<>`, used by bounces; such mail must never cause a bounce itself.
    Null,
    /// An ordinary sender.
    Mailbox(Address),
}

impl ReversePath {
    /// The sender's address; `None` for the null sender.
    pub fn mailbox(&self) -> Option<&Address> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(addr) => Some(addr),
        }
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(a) => write!(f, "<{a}>"),
        }
    }
}

/// Split the argument of `MAIL FROM:` / `RCPT TO:` into the path text and the rest
/// (parameters). Accepts `<path>`, `< path >` and, for legacy clients, a bare `path`.
pub fn split_path(arg: &str) -> Result<(&str, &str), AddressError> {
    let arg = arg.trim_start();
    if let Some(rest) = arg.strip_prefix('<') {
        let close = find_closing_bracket(rest).ok_or(AddressError::Unbalanced)?;
        let path = rest[..close].trim();
        let after = &rest[close + 1..];
        if !after.is_empty() && !after.starts_with(' ') {
            return Err(AddressError::TrailingText);
        }
        Ok((path, after.trim_start()))
    } else {
        let end = arg.find(' ').unwrap_or(arg.len());
        let path = &arg[..end];
        if path.contains('>') {
            return Err(AddressError::Unbalanced);
        }
        Ok((path, arg[end..].trim_start()))
    }
}

/// Find the `>` that closes the path, skipping quoted local parts.
fn find_closing_bracket(s: &str) -> Option<usize> {
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '>' if !in_quote => return Some(i),
            _ => {}
        }
    }
    None
}

/// Parse a mailbox, dropping an RFC 5321 source route (`@a,@b:user@c`), which servers
/// must accept and ignore (§4.1.1.3, appendix C).
pub fn parse_mailbox(path: &str) -> Result<Address, AddressError> {
    let mut path = path.trim();
    if path.is_empty() {
        return Err(AddressError::Empty);
    }
    if path.starts_with('@') {
        let colon = path.find(':').ok_or(AddressError::MissingDomain)?;
        path = &path[colon + 1..];
    }
    let (local, domain) = split_local_domain(path)?;
    if local.len() > 64 || domain.len() > 255 {
        return Err(AddressError::TooLong);
    }
    check_domain(domain)?;
    Ok(Address {
        local: local.to_owned(),
        domain: domain.to_owned(),
    })
}

fn split_local_domain(path: &str) -> Result<(&str, &str), AddressError> {
    if let Some(rest) = path.strip_prefix('"') {
        let mut escaped = false;
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    let local = &path[..i + 2];
                    let after = &rest[i + 1..];
                    let domain = after.strip_prefix('@').ok_or(AddressError::MissingDomain)?;
                    return Ok((local, domain));
                }
                c if c.is_control() => return Err(AddressError::BadLocalChar(c)),
                _ => {}
            }
        }
        return Err(AddressError::UnterminatedQuote);
    }
    let at = path.rfind('@').ok_or(AddressError::MissingDomain)?;
    let (local, domain) = (&path[..at], &path[at + 1..]);
    if local.is_empty() {
        return Err(AddressError::Empty);
    }
    if let Some(c) = local.chars().find(|c| !is_local_char(*c)) {
        return Err(AddressError::BadLocalChar(c));
    }
    Ok((local, domain))
}

/// atext plus `.` (RFC 5322 §3.2.3), and any non-ASCII character (RFC 6531).
fn is_local_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~.".contains(c)
        || (!c.is_ascii() && !c.is_control())
}

fn check_domain(domain: &str) -> Result<(), AddressError> {
    let bad = || AddressError::BadDomain(domain.to_owned());
    if domain.is_empty() {
        return Err(AddressError::MissingDomain);
    }
    if let Some(literal) = domain.strip_prefix('[') {
        let inner = literal.strip_suffix(']').ok_or_else(bad)?;
        let valid = match inner.strip_prefix("IPv6:") {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => inner.parse::<std::net::Ipv4Addr>().is_ok(),
        };
        return if valid { Ok(()) } else { Err(bad()) };
    }
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && label.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || c == '-'
                    || c == '_'
                    || (!c.is_ascii() && c.is_alphanumeric())
            });
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mailboxes() {
        let cases: &[(&str, Result<&str, AddressError>)] = &[
            ("user@example.com", Ok("user@example.com")),
            (
                "first.last+tag@sub.example.co.uk",
                Ok("first.last+tag@sub.example.co.uk"),
            ),
            ("\"john doe\"@example.com", Ok("\"john doe\"@example.com")),
            ("\"a\\\"b\"@example.com", Ok("\"a\\\"b\"@example.com")),
            (
                "@relay.example,@b.example:user@example.com",
                Ok("user@example.com"),
            ),
            ("user@[192.0.2.1]", Ok("user@[192.0.2.1]")),
            ("user@[IPv6:2001:db8::1]", Ok("user@[IPv6:2001:db8::1]")),
            ("用户@例子.广告", Ok("用户@例子.广告")),
            ("app_host@my_host.local", Ok("app_host@my_host.local")),
            ("user", Err(AddressError::MissingDomain)),
            ("user@", Err(AddressError::MissingDomain)),
            ("@example.com", Err(AddressError::MissingDomain)),
            ("us er@example.com", Err(AddressError::BadLocalChar(' '))),
            ("a@b@example.com", Err(AddressError::BadLocalChar('@'))),
            (
                "user@exa mple.com",
                Err(AddressError::BadDomain("exa mple.com".into())),
            ),
            (
                "user@-bad.com",
                Err(AddressError::BadDomain("-bad.com".into())),
            ),
            ("user@a..com", Err(AddressError::BadDomain("a..com".into()))),
            (
                "user@[999.1.1.1]",
                Err(AddressError::BadDomain("[999.1.1.1]".into())),
            ),
            ("\"open@example.com", Err(AddressError::UnterminatedQuote)),
        ];
        for (input, want) in cases {
            let got = parse_mailbox(input).map(|a| a.to_string());
            assert_eq!(got, want.clone().map(str::to_owned), "input {input:?}");
        }
    }

    #[test]
    fn splits_path_and_parameters() {
        assert_eq!(split_path("<a@b.c> SIZE=10"), Ok(("a@b.c", "SIZE=10")));
        assert_eq!(split_path(" <a@b.c>"), Ok(("a@b.c", "")));
        assert_eq!(
            split_path("a@b.c BODY=8BITMIME"),
            Ok(("a@b.c", "BODY=8BITMIME"))
        );
        assert_eq!(split_path("<>"), Ok(("", "")));
        assert_eq!(split_path("<\"x>y\"@b.c>"), Ok(("\"x>y\"@b.c", "")));
        assert_eq!(split_path("<a@b.c"), Err(AddressError::Unbalanced));
        assert_eq!(split_path("<a@b.c>x"), Err(AddressError::TrailingText));
    }

    #[test]
    fn long_local_part_is_refused() {
        let local = "a".repeat(65);
        assert_eq!(
            parse_mailbox(&format!("{local}@example.com")),
            Err(AddressError::TooLong)
        );
    }
}
