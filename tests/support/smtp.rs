//! [`SmtpClient`], a raw SMTP client for tests: it sends whatever bytes a test gives it
//! (pipelined batches, bare CR or LF, half commands) and reads complete, possibly
//! multi-line replies ([`Reply`]), checking their wire form strictly (CRLF, one code
//! per reply). Every read and write is bounded by [`HANG_GUARD`].

use std::fmt;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::HANG_GUARD;

/// One complete reply as the client received it.
#[derive(Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line, after `NNN-` or `NNN `.
    pub lines: Vec<String>,
}

impl Reply {
    /// The lines joined with `\n` (enhanced codes left in place).
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The enhanced status code at the start of the first line, if there is one.
    pub fn enhanced(&self) -> Option<&str> {
        let word = self.lines.first()?.split(' ').next()?;
        let parts: Vec<&str> = word.split('.').collect();
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        (parts.len() == 3 && parts.iter().all(|p| numeric(p))).then_some(word)
    }

    /// Whether any line (after the first, for EHLO) is exactly `keyword` or starts with
    /// `keyword ` — an EHLO capability.
    pub fn advertises(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|l| {
            l.eq_ignore_ascii_case(keyword)
                || l.to_ascii_uppercase()
                    .starts_with(&format!("{} ", keyword.to_ascii_uppercase()))
        })
    }

    /// The queue id of a `250 2.0.0 queued as ID` reply; panics on any other reply.
    pub fn queue_id(&self) -> String {
        let text = self.text();
        let id = text
            .strip_prefix("2.0.0 queued as ")
            .unwrap_or_else(|| panic!("not a `250 2.0.0 queued as ID` reply: {self}"));
        assert!(
            self.code == 250 && !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "bad queue id in {self}"
        );
        id.to_owned()
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.lines.len();
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            if i > 0 {
                f.write_str(" | ")?;
            }
            write!(f, "{}{sep}{line}", self.code)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What came instead of a reply.
#[derive(Debug)]
pub enum ReadError {
    /// The server closed the connection; the bytes of an incomplete reply, if any.
    Closed(Vec<u8>),
    /// Nothing complete within [`HANG_GUARD`]; what had arrived.
    Timeout(Vec<u8>),
    /// Bytes that are not a well-formed reply.
    Malformed(String),
    /// A socket error.
    Io(std::io::Error),
}

/// A raw SMTP client for tests. Every byte sent and every reply read is kept in a
/// transcript that failure messages print.
pub struct SmtpClient<S> {
    stream: S,
    buf: Vec<u8>,
    transcript: Vec<String>,
}

impl SmtpClient<TcpStream> {
    /// Connect to `addr`.
    pub async fn connect(addr: SocketAddr) -> SmtpClient<TcpStream> {
        let stream = tokio::time::timeout(HANG_GUARD, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect to {addr}: no answer within {HANG_GUARD:?}"))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        SmtpClient::new(stream)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> SmtpClient<S> {
    /// Wrap a connected stream.
    pub fn new(stream: S) -> SmtpClient<S> {
        SmtpClient {
            stream,
            buf: Vec::new(),
            transcript: Vec::new(),
        }
    }

    /// What was sent and received so far, one entry per write or reply.
    pub fn transcript(&self) -> String {
        self.transcript.join("\n")
    }

    /// Write `bytes` exactly as given, in one write, and flush.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref();
        self.transcript.push(format!("C: {}", escape(bytes)));
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(HANG_GUARD, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("write failed: {e}\n{}", self.transcript()),
            Err(_) => panic!("write blocked for {HANG_GUARD:?}\n{}", self.transcript()),
        }
    }

    /// Send `line` followed by CRLF.
    pub async fn send_line(&mut self, line: &str) {
        self.send(format!("{line}\r\n")).await;
    }

    /// Read one complete reply, or say why there is none.
    pub async fn try_read_reply(&mut self) -> Result<Reply, ReadError> {
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    self.transcript.push(format!("S: {reply}"));
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(ReadError::Malformed(e)),
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(ReadError::Timeout(self.buf.clone())),
                Ok(Ok(0)) => return Err(ReadError::Closed(self.buf.clone())),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// Read one complete reply; panics with the transcript if there is none.
    pub async fn read_reply(&mut self) -> Reply {
        match self.try_read_reply().await {
            Ok(reply) => reply,
            Err(e) => panic!(
                "expected a reply, got {}\n--- transcript ---\n{}",
                describe(&e),
                self.transcript()
            ),
        }
    }

    /// Read one reply and check its code.
    pub async fn expect_reply(&mut self, code: u16) -> Reply {
        let reply = self.read_reply().await;
        assert_eq!(
            reply.code,
            code,
            "expected {code}, got {reply}\n--- transcript ---\n{}",
            self.transcript()
        );
        reply
    }

    /// Read one reply and check its code and enhanced status code.
    pub async fn expect_reply_esc(&mut self, code: u16, esc: &str) -> Reply {
        let reply = self.expect_reply(code).await;
        assert_eq!(
            reply.enhanced(),
            Some(esc),
            "expected enhanced code {esc} in {reply}\n--- transcript ---\n{}",
            self.transcript()
        );
        reply
    }

    /// Send `line` (CRLF added) and read the reply, whatever it is.
    pub async fn command(&mut self, line: &str) -> Reply {
        self.send_line(line).await;
        self.read_reply().await
    }

    /// Send `line` (CRLF added), read the reply, check its code.
    pub async fn expect(&mut self, line: &str, code: u16) -> Reply {
        self.send_line(line).await;
        self.expect_reply(code).await
    }

    /// Send `line`, read the reply, check its code and enhanced status code.
    pub async fn expect_esc(&mut self, line: &str, code: u16, esc: &str) -> Reply {
        self.send_line(line).await;
        self.expect_reply_esc(code, esc).await
    }

    /// Read the greeting; it must be `220`.
    pub async fn greeting(&mut self) -> Reply {
        self.expect_reply(220).await
    }

    /// `MAIL`, each `RCPT`, `DATA`, then `content` and the `.` line (the content must
    /// already be dot-stuffed and end in CRLF). Returns the final reply, whatever it is.
    pub async fn send_message(&mut self, from: &str, to: &[&str], content: &[u8]) -> Reply {
        self.expect(&format!("MAIL FROM:<{from}>"), 250).await;
        for rcpt in to {
            self.expect(&format!("RCPT TO:<{rcpt}>"), 250).await;
        }
        self.expect("DATA", 354).await;
        let mut wire = content.to_vec();
        wire.extend_from_slice(b".\r\n");
        self.send(&wire).await;
        self.read_reply().await
    }

    /// [`SmtpClient::send_message`] for `content` that may have lines starting with a
    /// dot: it is dot-stuffed here.
    pub async fn send_content(&mut self, from: &str, to: &[&str], content: &str) -> Reply {
        let wire = dot_terminated(content);
        // send_message adds the terminator itself.
        self.send_message(from, to, &wire[..wire.len() - 3]).await
    }

    /// The server must close the connection now, without sending anything more.
    pub async fn expect_closed(&mut self) {
        match self.try_read_reply().await {
            Err(ReadError::Closed(rest)) if rest.is_empty() => {}
            // A reset after our unread data is also a close.
            Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!(
                "expected the server to close the connection, got {}\n--- transcript ---\n{}",
                match &other {
                    Ok(reply) => format!("reply {reply}"),
                    Err(e) => describe(e),
                },
                self.transcript()
            ),
        }
    }

    /// Nothing received that has not been read as a reply yet.
    pub fn assert_nothing_buffered(&self) {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes from the server: {}\n--- transcript ---\n{}",
            escape(&self.buf),
            self.transcript()
        );
    }

    /// The stream, e.g. to start TLS on it. Panics if the server sent bytes that were
    /// not read as replies.
    pub fn into_stream(self) -> S {
        self.assert_nothing_buffered();
        self.stream
    }
}

fn describe(e: &ReadError) -> String {
    match e {
        ReadError::Closed(rest) if rest.is_empty() => "the connection closed".into(),
        ReadError::Closed(rest) => format!("the connection closed after {}", escape(rest)),
        ReadError::Timeout(rest) => {
            format!(
                "nothing complete within {HANG_GUARD:?} (received {})",
                escape(rest)
            )
        }
        ReadError::Malformed(m) => format!("a malformed reply: {m}"),
        ReadError::Io(e) => format!("socket error: {e}"),
    }
}

/// Bytes as readable text: CR, LF and other controls escaped.
/// `content` (CRLF line endings, ending in CRLF) as `DATA` payload: dot-stuffed, with the
/// terminator.
pub fn dot_terminated(content: &str) -> Vec<u8> {
    assert!(content.ends_with("\r\n"), "content ends with CRLF");
    let mut wire = String::new();
    for line in content.split_inclusive("\r\n") {
        if line.starts_with('.') {
            wire.push('.');
        }
        wire.push_str(line);
    }
    wire.push_str(".\r\n");
    wire.into_bytes()
}

pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    let shown = bytes.len().min(400);
    for chunk in bytes[..shown].utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\r' => out.push_str("\\r"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if bytes.len() > shown {
        out.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    out
}

/// Parse one reply from the start of `buf`, strictly: every line is `NNN-text` or
/// `NNN text` (or bare `NNN`) ending in CRLF, all lines carry the same code.
fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let mut pos = 0;
    let mut lines = Vec::new();
    let mut code = None;
    while let Some(nl) = buf[pos..].iter().position(|b| *b == b'\n') {
        let raw = &buf[pos..pos + nl];
        let line = raw
            .strip_suffix(b"\r")
            .ok_or_else(|| format!("reply line without CR before LF: {}", escape(raw)))?;
        if line.contains(&b'\r') {
            return Err(format!("bare CR inside a reply line: {}", escape(line)));
        }
        let line = std::str::from_utf8(line)
            .map_err(|_| format!("reply line is not UTF-8: {}", escape(line)))?;
        pos += nl + 1;
        let digits = line
            .get(..3)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
        let this: u16 = digits
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| format!("reply line without a code: {line:?}"))?;
        if let Some(c) = code
            && c != this
        {
            return Err(format!("reply mixes codes {c} and {this}"));
        }
        code = Some(this);
        let (last, text) = match line.as_bytes().get(3) {
            None => (true, ""),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(format!("bad separator after the code: {line:?}")),
        };
        lines.push(text.to_owned());
        if last {
            return Ok(Some((Reply { code: this, lines }, pos)));
        }
    }
    if buf.len() > 64 * 1024 {
        return Err("reply longer than 64 KiB".into());
    }
    Ok(None)
}
