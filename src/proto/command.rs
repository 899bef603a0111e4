//! SMTP commands received by the server, and their parser (RFC 5321 §4.1).
//!
//! [`parse_command`] takes one command line without its line ending and returns a typed
//! [`Command`] or a [`SyntaxError`] that already knows its reply.

use super::address::{self, Address, AddressError, ReversePath};
use super::reply::{Enhanced, Reply};

/// One parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain`
    Ehlo(String),
    /// `HELO domain`
    Helo(String),
    /// `MAIL FROM:<path> [params]`
    Mail {
        /// The sender, or the null sender.
        from: ReversePath,
        /// ESMTP parameters we understand.
        params: MailParams,
    },
    /// `RCPT TO:<path>`
    Rcpt {
        /// The recipient.
        to: Address,
    },
    /// `DATA`
    Data,
    /// `BDAT size [LAST]` (RFC 3030)
    Bdat {
        /// Octets of message data that follow the command line.
        size: u64,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// `RSET`
    Rset,
    /// `NOOP [text]`
    Noop,
    /// `QUIT`
    Quit,
    /// `VRFY text`
    Vrfy,
    /// `EXPN text`
    Expn,
    /// `HELP [topic]`
    Help,
    /// `STARTTLS` (RFC 3207)
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth(AuthArgs),
}

/// What follows `AUTH`. It may hold a password (an initial response), so `Debug` shows
/// only the mechanism.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthArgs(pub String);

impl std::fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mechanism = self.0.split_whitespace().next().unwrap_or_default();
        write!(f, "AuthArgs({mechanism:?} ..)")
    }
}

/// `BODY=` values of `MAIL FROM` (RFC 6152).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Body {
    /// `BODY=7BIT` or no parameter.
    #[default]
    SevenBit,
    /// `BODY=8BITMIME`
    EightBitMime,
}

/// The ESMTP parameters of `MAIL FROM` that this server advertises.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MailParams {
    /// `SIZE=n` (RFC 1870): the client's estimate of the message size.
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152).
    pub body: Body,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
}

/// A command line that could not be parsed; each variant knows its reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// The verb is not one we know.
    #[error("unknown command")]
    UnknownCommand,
    /// Looks like an HTTP request: a browser or proxy pointed at the SMTP port.
    #[error("HTTP request on the SMTP port")]
    Http,
    /// The verb is known but its arguments are malformed.
    #[error("{0}")]
    Arguments(&'static str),
    /// The line is not valid UTF-8.
    #[error("command line is not valid UTF-8")]
    Encoding,
    /// The sender address is malformed.
    #[error("bad sender address: {0}")]
    Sender(AddressError),
    /// The recipient address is malformed.
    #[error("bad recipient address: {0}")]
    Recipient(AddressError),
    /// An ESMTP parameter we do not support.
    #[error("unsupported parameter {0}")]
    Parameter(String),
}

impl SyntaxError {
    /// The reply for this error (RFC 5321 §4.2.2, RFC 3463 for the enhanced codes).
    pub fn reply(&self) -> Reply {
        let text = self.to_string();
        match self {
            SyntaxError::UnknownCommand => Reply::new(500, Enhanced(5, 5, 1), "Unknown command"),
            SyntaxError::Http => {
                Reply::new(554, Enhanced(5, 7, 0), "This is an SMTP server, not HTTP").and_close()
            }
            SyntaxError::Arguments(_) | SyntaxError::Encoding => {
                Reply::new(501, Enhanced(5, 5, 4), text)
            }
            SyntaxError::Sender(_) => Reply::new(501, Enhanced(5, 1, 7), text),
            SyntaxError::Recipient(_) => Reply::new(501, Enhanced(5, 1, 3), text),
            SyntaxError::Parameter(_) => Reply::new(555, Enhanced(5, 5, 4), text),
        }
    }
}

/// Parse one command line (without CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, SyntaxError> {
    let line = std::str::from_utf8(line).map_err(|_| SyntaxError::Encoding)?;
    let line = line.trim_end_matches([' ', '\t']);
    let (verb, arg) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim_start()),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let no_args = |cmd: Command| {
        if arg.is_empty() {
            Ok(cmd)
        } else {
            Err(SyntaxError::Arguments("this command takes no arguments"))
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" => {
            if arg.is_empty() {
                return Err(SyntaxError::Arguments(
                    "EHLO/HELO needs the client's domain name",
                ));
            }
            let domain = arg.split(' ').next().unwrap_or(arg).to_owned();
            Ok(if verb == "EHLO" {
                Command::Ehlo(domain)
            } else {
                Command::Helo(domain)
            })
        }
        "MAIL" => parse_mail(arg),
        "RCPT" => parse_rcpt(arg),
        "DATA" => no_args(Command::Data),
        "BDAT" => parse_bdat(arg),
        "RSET" => no_args(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "HELP" => Ok(Command::Help),
        "STARTTLS" => no_args(Command::StartTls),
        "AUTH" => Ok(Command::Auth(AuthArgs(arg.to_owned()))),
        "GET" | "POST" | "HEAD" | "PUT" | "CONNECT" | "OPTIONS" | "DELETE" => {
            Err(SyntaxError::Http)
        }
        _ => Err(SyntaxError::UnknownCommand),
    }
}

/// Strip a case-insensitive keyword like `FROM:` and return what follows.
fn strip_keyword<'a>(arg: &'a str, keyword: &str) -> Option<&'a str> {
    let head = arg.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| &arg[keyword.len()..])
}

fn parse_mail(arg: &str) -> Result<Command, SyntaxError> {
    let rest = strip_keyword(arg, "FROM:")
        .ok_or(SyntaxError::Arguments("syntax is MAIL FROM:<address>"))?;
    let (path, params) = address::split_path(rest).map_err(SyntaxError::Sender)?;
    let from = if path.is_empty() {
        ReversePath::Null
    } else {
        ReversePath::Mailbox(address::parse_mailbox(path).map_err(SyntaxError::Sender)?)
    };
    let mut parsed = MailParams::default();
    for param in params.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        match (key.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(v)) => {
                let size = v
                    .parse()
                    .map_err(|_| SyntaxError::Arguments("SIZE= needs a number of octets"))?;
                parsed.size = Some(size);
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => parsed.body = Body::SevenBit,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                parsed.body = Body::EightBitMime
            }
            ("SMTPUTF8", None) => parsed.smtputf8 = true,
            _ => return Err(SyntaxError::Parameter(param.to_owned())),
        }
    }
    Ok(Command::Mail {
        from,
        params: parsed,
    })
}

fn parse_rcpt(arg: &str) -> Result<Command, SyntaxError> {
    let rest =
        strip_keyword(arg, "TO:").ok_or(SyntaxError::Arguments("syntax is RCPT TO:<address>"))?;
    let (path, params) = address::split_path(rest).map_err(SyntaxError::Recipient)?;
    if let Some(param) = params.split(' ').find(|p| !p.is_empty()) {
        return Err(SyntaxError::Parameter(param.to_owned()));
    }
    let to = address::parse_mailbox(path).map_err(SyntaxError::Recipient)?;
    Ok(Command::Rcpt { to })
}

fn parse_bdat(arg: &str) -> Result<Command, SyntaxError> {
    const USAGE: &str = "syntax is BDAT <size> [LAST]";
    let mut words = arg.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .and_then(|w| w.parse().ok())
        .ok_or(SyntaxError::Arguments(USAGE))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(SyntaxError::Arguments(USAGE)),
    };
    if words.next().is_some() {
        return Err(SyntaxError::Arguments(USAGE));
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn parses_commands() {
        let cases: Vec<(&str, Result<Command, SyntaxError>)> = vec![
            (
                "EHLO client.example",
                Ok(Command::Ehlo("client.example".into())),
            ),
            ("ehlo [192.0.2.1]", Ok(Command::Ehlo("[192.0.2.1]".into()))),
            ("HELO legacy", Ok(Command::Helo("legacy".into()))),
            (
                "EHLO",
                Err(SyntaxError::Arguments(
                    "EHLO/HELO needs the client's domain name",
                )),
            ),
            (
                "MAIL FROM:<a@b.example>",
                Ok(Command::Mail {
                    from: ReversePath::Mailbox(mailbox("a@b.example")),
                    params: MailParams::default(),
                }),
            ),
            (
                "mail from: <a@b.example> SIZE=1000 BODY=8BITMIME SMTPUTF8",
                Ok(Command::Mail {
                    from: ReversePath::Mailbox(mailbox("a@b.example")),
                    params: MailParams {
                        size: Some(1000),
                        body: Body::EightBitMime,
                        smtputf8: true,
                    },
                }),
            ),
            (
                "MAIL FROM:<>",
                Ok(Command::Mail {
                    from: ReversePath::Null,
                    params: MailParams::default(),
                }),
            ),
            (
                "MAIL FROM:a@b.example",
                Ok(Command::Mail {
                    from: ReversePath::Mailbox(mailbox("a@b.example")),
                    params: MailParams::default(),
                }),
            ),
            (
                "MAIL FROM:<a@b.example> RET=FULL",
                Err(SyntaxError::Parameter("RET=FULL".into())),
            ),
            (
                "MAIL FROM:<a@b.example> SIZE=x",
                Err(SyntaxError::Arguments("SIZE= needs a number of octets")),
            ),
            (
                "MAIL TO:<a@b.example>",
                Err(SyntaxError::Arguments("syntax is MAIL FROM:<address>")),
            ),
            (
                "MAIL FROM:<a b@c>",
                Err(SyntaxError::Sender(AddressError::BadLocalChar(' '))),
            ),
            (
                "RCPT TO:<c@d.example>",
                Ok(Command::Rcpt {
                    to: mailbox("c@d.example"),
                }),
            ),
            (
                "RCPT TO:<>",
                Err(SyntaxError::Recipient(AddressError::Empty)),
            ),
            (
                "RCPT TO:<c@d.example> NOTIFY=NEVER",
                Err(SyntaxError::Parameter("NOTIFY=NEVER".into())),
            ),
            ("DATA", Ok(Command::Data)),
            (
                "DATA now",
                Err(SyntaxError::Arguments("this command takes no arguments")),
            ),
            (
                "BDAT 100",
                Ok(Command::Bdat {
                    size: 100,
                    last: false,
                }),
            ),
            (
                "BDAT 0 LAST",
                Ok(Command::Bdat {
                    size: 0,
                    last: true,
                }),
            ),
            (
                "BDAT x",
                Err(SyntaxError::Arguments("syntax is BDAT <size> [LAST]")),
            ),
            (
                "BDAT 1 FIRST",
                Err(SyntaxError::Arguments("syntax is BDAT <size> [LAST]")),
            ),
            ("RSET", Ok(Command::Rset)),
            ("NOOP hello", Ok(Command::Noop)),
            ("QUIT", Ok(Command::Quit)),
            ("VRFY postmaster", Ok(Command::Vrfy)),
            ("STARTTLS", Ok(Command::StartTls)),
            (
                "AUTH PLAIN AGFAYgA=",
                Ok(Command::Auth(AuthArgs("PLAIN AGFAYgA=".into()))),
            ),
            ("GET / HTTP/1.1", Err(SyntaxError::Http)),
            ("FROB", Err(SyntaxError::UnknownCommand)),
            ("", Err(SyntaxError::UnknownCommand)),
        ];
        for (line, want) in cases {
            assert_eq!(parse_command(line.as_bytes()), want, "line {line:?}");
        }
    }

    #[test]
    fn invalid_utf8_is_a_syntax_error() {
        assert_eq!(
            parse_command(b"MAIL FROM:<\xff@x>"),
            Err(SyntaxError::Encoding)
        );
    }

    #[test]
    fn syntax_errors_carry_enhanced_codes() {
        assert_eq!(
            SyntaxError::UnknownCommand.reply().to_wire(),
            "500 5.5.1 Unknown command\r\n"
        );
        let r = SyntaxError::Recipient(AddressError::MissingDomain).reply();
        assert_eq!(
            r.to_wire(),
            "501 5.1.3 bad recipient address: address must have the form local-part@domain\r\n"
        );
        assert!(SyntaxError::Http.reply().close);
    }
}
