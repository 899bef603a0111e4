//! Client side: parsing the server's replies (RFC 5321 §4.2) and EHLO capabilities.

use std::fmt;

/// A complete reply received from a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line, without the code and separator.
    pub lines: Vec<String>,
}

/// A reply that does not follow RFC 5321 §4.2.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// A line that does not start with a three-digit code and a separator.
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    /// The lines of one multi-line reply carry different codes.
    #[error("reply lines with different codes ({0} then {1})")]
    MixedCodes(u16, u16),
    /// A reply longer than we are willing to buffer.
    #[error("reply too long")]
    TooLong,
}

/// Longest reply we buffer; EHLO replies of real servers are well below 4 KiB.
pub const MAX_RESPONSE_LEN: usize = 64 * 1024;

impl Response {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx (e.g. 354 after DATA).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// All lines joined with a space, for logs and error messages.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text())
    }
}

/// Try to parse one complete reply from the start of `buf`. Returns the reply and the
/// number of bytes it used, or `None` if more bytes are needed.
pub fn parse_response(buf: &[u8]) -> Result<Option<(Response, usize)>, ResponseError> {
    let mut pos = 0;
    let mut code = None;
    let mut lines = Vec::new();
    while let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) {
        let raw = &buf[pos..pos + nl];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        pos += nl + 1;
        let line = String::from_utf8_lossy(raw);
        let malformed = || ResponseError::Malformed(line.to_string());
        if line.len() < 3 || !line.as_bytes()[..3].iter().all(u8::is_ascii_digit) {
            return Err(malformed());
        }
        let this_code: u16 = line[..3].parse().map_err(|_| malformed())?;
        if let Some(c) = code
            && c != this_code
        {
            return Err(ResponseError::MixedCodes(c, this_code));
        }
        code = Some(this_code);
        let (last, text) = match line.as_bytes().get(3) {
            None => (true, ""),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(malformed()),
        };
        lines.push(text.to_owned());
        if last {
            return Ok(Some((
                Response {
                    code: this_code,
                    lines,
                },
                pos,
            )));
        }
    }
    if buf.len() > MAX_RESPONSE_LEN {
        return Err(ResponseError::TooLong);
    }
    Ok(None)
}

/// What a server said it supports in its EHLO reply (RFC 5321 §4.1.1.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The extension keywords (upper-case) with their parameters.
    pub extensions: Vec<(String, String)>,
}

impl Capabilities {
    /// Read the capabilities from an EHLO reply (the first line is the greeting).
    pub fn from_ehlo(response: &Response) -> Capabilities {
        let extensions = response
            .lines
            .iter()
            .skip(1)
            .map(|line| match line.split_once(' ') {
                Some((k, v)) => (k.to_ascii_uppercase(), v.trim().to_owned()),
                None => (line.to_ascii_uppercase(), String::new()),
            })
            .collect();
        Capabilities { extensions }
    }

    /// Whether the server advertised `keyword`.
    pub fn has(&self, keyword: &str) -> bool {
        self.extensions
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(keyword))
    }

    /// The parameters of `keyword`, if advertised.
    pub fn params(&self, keyword: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(keyword))
            .map(|(_, v)| v.as_str())
    }

    /// The `SIZE` limit, if the server announced one (0 means no fixed limit).
    pub fn size_limit(&self) -> Option<u64> {
        self.params("SIZE")
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_multi_line_replies() {
        let (r, used) = parse_response(b"250 OK\r\nrest").unwrap().unwrap();
        assert_eq!((r.code, r.lines, used), (250, vec!["OK".to_owned()], 8));

        let buf = b"250-mx.example\r\n250-SIZE 1000\r\n250 PIPELINING\r\n";
        let (r, used) = parse_response(buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        let caps = Capabilities::from_ehlo(&r);
        assert!(caps.has("pipelining"));
        assert_eq!(caps.size_limit(), Some(1000));
        assert!(!caps.has("STARTTLS"));
    }

    #[test]
    fn incomplete_replies_need_more_bytes() {
        assert_eq!(parse_response(b"250-first\r\n250 sec").unwrap(), None);
        assert_eq!(parse_response(b"").unwrap(), None);
    }

    #[test]
    fn rejects_malformed_replies() {
        assert!(matches!(
            parse_response(b"hello\r\n"),
            Err(ResponseError::Malformed(_))
        ));
        assert_eq!(
            parse_response(b"250-a\r\n251 b\r\n"),
            Err(ResponseError::MixedCodes(250, 251))
        );
        assert!(matches!(
            parse_response(b"250xOK\r\n"),
            Err(ResponseError::Malformed(_))
        ));
    }

    #[test]
    fn a_bare_code_is_a_complete_reply() {
        let (r, _) = parse_response(b"354\r\n").unwrap().unwrap();
        assert_eq!(r.code, 354);
    }
}
