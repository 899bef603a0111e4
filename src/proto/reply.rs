//! Server replies: a typed value with code, enhanced status code and text.
//!
//! Handlers return a [`Reply`]; only the session loop turns it into bytes. Internal
//! error text never goes into a reply: callers log the detail and answer with one of
//! the generic constructors here.

use std::borrow::Cow;
use std::fmt;

/// An enhanced status code (RFC 3463), e.g. `5.7.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply, possibly multi-line (lines separated by `\n` in `text`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code (RFC 5321 §4.2).
    pub code: u16,
    /// Enhanced status code; `None` for the greeting and EHLO, where RFC 2034 leaves it out.
    pub enhanced: Option<Enhanced>,
    /// Human-readable text; `\n` separates the lines of a multi-line reply.
    pub text: Cow<'static, str>,
    /// Close the connection after sending this reply.
    pub close: bool,
}

impl Reply {
    /// A reply with an enhanced status code.
    pub fn new(code: u16, enhanced: Enhanced, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            text: text.into(),
            close: false,
        }
    }

    /// A reply without enhanced status code (greeting, EHLO, HELO).
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            enhanced: None,
            text: text.into(),
            close: false,
        }
    }

    /// The same reply, closing the connection after it is sent.
    pub fn and_close(mut self) -> Reply {
        self.close = true;
        self
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Append the wire form (`code[-| ]esc text CRLF` per line) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        if lines.peek().is_none() {
            lines = "".split('\n').peekable();
        }
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(sep as u8);
            if let Some(esc) = self.enhanced {
                out.extend_from_slice(esc.to_string().as_bytes());
                out.push(b' ');
            }
            // A reply line must never contain a bare CR or LF of its own.
            out.extend(line.bytes().filter(|b| *b != b'\r'));
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a string (tests and logs).
    pub fn to_wire(&self) -> String {
        let mut out = Vec::new();
        self.write_to(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// `250 2.0.0 OK`
    pub fn ok() -> Reply {
        Reply::new(250, Enhanced(2, 0, 0), "OK")
    }

    /// `503 5.5.1` bad sequence of commands, saying what was expected.
    pub fn bad_sequence(what: &'static str) -> Reply {
        Reply::new(503, Enhanced(5, 5, 1), what)
    }

    /// `451 4.3.0`: a local problem; the detail goes to the log, never to the client.
    pub fn temporary_failure() -> Reply {
        Reply::new(
            451,
            Enhanced(4, 3, 0),
            "Temporary local problem, message not accepted; please try again later",
        )
    }
}

impl Reply {
    /// `452 4.3.1`: the spool's disk is full (RFC 5321 §4.2.2 "insufficient system
    /// storage", RFC 3463 "mail system full"); the client keeps the message and retries.
    pub fn insufficient_storage() -> Reply {
        Reply::new(
            452,
            Enhanced(4, 3, 1),
            "Insufficient system storage, message not accepted; please try again later",
        )
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some(esc) => write!(
                f,
                "{} {} {}",
                self.code,
                esc,
                self.text.replace('\n', " / ")
            ),
            None => write!(f, "{} {}", self.code, self.text.replace('\n', " / ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_with_enhanced_code() {
        let r = Reply::new(554, Enhanced(5, 7, 1), "Relay access denied");
        assert_eq!(r.to_wire(), "554 5.7.1 Relay access denied\r\n");
    }

    #[test]
    fn multi_line_uses_dash_until_the_last_line() {
        let r = Reply::plain(250, "mx.example\nPIPELINING\nSIZE 10");
        assert_eq!(
            r.to_wire(),
            "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
    }

    #[test]
    fn carriage_returns_in_text_are_dropped() {
        let r = Reply::plain(220, "evil\rtext");
        assert_eq!(r.to_wire(), "220 eviltext\r\n");
    }
}
