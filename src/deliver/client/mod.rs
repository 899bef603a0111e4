//! One SMTP client conversation over any byte stream: replies, commands, STARTTLS,
//! AUTH and the mail transaction (with PIPELINING when offered).
//!
//! Nothing here logs: AUTH lines carry secrets, and the caller knows which upstream
//! and queue id a failure belongs to.

use std::time::Duration;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::config::Secret;
use crate::message::SpooledBody;
use crate::proto::{
    Capabilities, Response, ResponseError, encode_lines, line_pieces, parse_response,
};

/// A byte stream the client can run on: TCP, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A boxed [`Stream`], so that a plaintext connection can become a TLS one in place.
pub type BoxStream = Box<dyn Stream>;

/// What went wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// No reply in time.
    #[error("no reply from the server within {0:?}")]
    Timeout(Duration),
    /// The server took the whole message but gave no reply to its end in time.
    #[error("no reply to the end of the message data within {0:?}")]
    FinalReplyTimeout(Duration),
    /// The server stopped reading what we sent.
    #[error("the server stopped reading: no data could be written for {0:?}")]
    WriteStalled(Duration),
    /// The reply was not SMTP.
    #[error("the server's reply is not SMTP: {0}")]
    Protocol(#[from] ResponseError),
    /// The server sent bytes after its `220` to STARTTLS, before the TLS handshake:
    /// they would be taken as TLS data (RFC 3207 §5 forbids this).
    #[error("the server sent data after agreeing to STARTTLS")]
    DataAfterStartTls,
    /// The message's content could not be read (its spool body file) while it was being
    /// sent: the transaction is cut off, and the connection with it.
    #[error("{0}")]
    Content(String),
    /// The server refused a command.
    #[error("the server refused {command}: {response}")]
    Refused {
        /// The command, e.g. `RCPT TO:<a@b>` (never an AUTH payload).
        command: String,
        /// Its reply.
        response: Response,
    },
}

/// Credentials for AUTH.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// Account name.
    pub username: String,
    /// Password, or OAuth 2.0 bearer token.
    pub secret: Secret,
    /// Which of the two `secret` is.
    pub kind: SecretKind,
}

/// What kind of secret [`Credentials`] carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// A password: AUTH PLAIN or LOGIN.
    Password,
    /// An OAuth 2.0 access token: AUTH XOAUTH2.
    OAuthToken,
}

/// SASL mechanisms we implement, in order of preference for passwords.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616.
    Plain,
    /// The de-facto LOGIN mechanism.
    Login,
    /// Google/Microsoft XOAUTH2.
    XOAuth2,
}

impl Mechanism {
    /// The SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::XOAuth2 => "XOAUTH2",
        }
    }

    /// The best mechanism for `kind` among those the server offers.
    pub fn choose(offered: &Capabilities, kind: SecretKind) -> Option<Mechanism> {
        let params = offered.params("AUTH").unwrap_or("");
        let has = |m: Mechanism| {
            params
                .split_ascii_whitespace()
                .any(|w| w.eq_ignore_ascii_case(m.name()))
        };
        let preference: &[Mechanism] = match kind {
            SecretKind::Password => &[Mechanism::Plain, Mechanism::Login],
            SecretKind::OAuthToken => &[Mechanism::XOAuth2],
        };
        preference.iter().copied().find(|m| has(*m))
    }
}

/// The outcome of one recipient in a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptReply {
    /// The server accepted the message for this recipient.
    Accepted(Response),
    /// Refused, temporarily (4xx) or permanently (5xx); the reply says which.
    Refused(Response),
}

/// How long the reply to the end of the message data is awaited unless configured
/// otherwise: RFC 5321 §4.5.3.2.6 asks for 10 minutes, because the server may be
/// processing the message, and giving up early makes the message go out twice.
pub const FINAL_REPLY_TIMEOUT: Duration = Duration::from_secs(600);

/// Message data is written in pieces of at most this size, so that a stalled reader is
/// noticed by the lack of progress rather than after the whole message.
const WRITE_CHUNK: usize = 64 * 1024;

/// An SMTP client on one connection.
pub struct SmtpClient<S> {
    stream: S,
    rbuf: Vec<u8>,
    /// Bound for every reply but the final one, and for each write making progress.
    timeout: Duration,
    /// Bound for the reply to the end of the message data.
    final_reply_timeout: Duration,
    /// Whether the last [`SmtpClient::transaction`] got as far as sending `DATA`.
    reached_data: bool,
    /// Whether the next [`SmtpClient::transaction`] starts with `RSET`.
    reset_first: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SmtpClient<S> {
    /// Wrap a connected stream; `timeout` bounds every wait for a reply and every write
    /// that makes no progress; the reply to the end of data gets [`FINAL_REPLY_TIMEOUT`].
    pub fn new(stream: S, timeout: Duration) -> SmtpClient<S> {
        SmtpClient {
            stream,
            rbuf: Vec::new(),
            timeout,
            final_reply_timeout: FINAL_REPLY_TIMEOUT,
            reached_data: false,
            reset_first: false,
        }
    }

    /// Start the next [`SmtpClient::transaction`] with `RSET` (a pooled connection
    /// between messages). With PIPELINING it goes out in the transaction's command
    /// group, so it costs no round trip of its own.
    pub fn reset_before_next(&mut self) {
        self.reset_first = true;
    }

    /// Whether the last [`SmtpClient::transaction`] sent `DATA`. When it ended in an
    /// error before that, the server cannot have taken the message.
    pub fn reached_data(&self) -> bool {
        self.reached_data
    }

    /// Wait up to `wait` for the reply to the end of the message data.
    pub fn with_final_reply_timeout(mut self, wait: Duration) -> SmtpClient<S> {
        self.final_reply_timeout = wait;
        self
    }

    /// Read the next reply.
    pub async fn read_response(&mut self) -> Result<Response, ClientError> {
        self.read_response_within(self.timeout).await
    }

    /// Read the next reply, waiting at most `wait`.
    pub async fn read_response_within(&mut self, wait: Duration) -> Result<Response, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some((response, used)) = parse_response(&self.rbuf)? {
                self.rbuf.drain(..used);
                return Ok(response);
            }
            self.rbuf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => return Err(ClientError::Timeout(wait)),
                Ok(Ok(0)) => return Err(ClientError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// The underlying stream (any unread buffered input is dropped).
    pub fn into_stream(self) -> S {
        self.stream
    }

    /// Whether the server has sent bytes we have not read as a reply yet.
    pub fn has_buffered_input(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// Read the greeting; it must be `220`.
    pub async fn greeting(&mut self) -> Result<Response, ClientError> {
        let response = self.read_response().await?;
        expect(response, "the connection", |r| r.code == 220)
    }

    /// Write all of `bytes`. Each write must make progress within the timeout: a server
    /// that stops reading (its socket buffers full) fails the attempt instead of
    /// holding it forever, however large the message.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let wait = self.timeout;
        let mut rest = bytes;
        while !rest.is_empty() {
            let piece = &rest[..rest.len().min(WRITE_CHUNK)];
            let written = tokio::time::timeout(wait, self.stream.write(piece))
                .await
                .map_err(|_| ClientError::WriteStalled(wait))??;
            if written == 0 {
                return Err(ClientError::Io(std::io::ErrorKind::WriteZero.into()));
            }
            rest = &rest[written..];
        }
        tokio::time::timeout(wait, self.stream.flush())
            .await
            .map_err(|_| ClientError::WriteStalled(wait))??;
        Ok(())
    }

    /// Send one command line and read its reply, whatever it is.
    pub async fn command(&mut self, line: &str) -> Result<Response, ClientError> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_response().await
    }

    /// Send a command that must get a 2xx reply.
    pub async fn expect_ok(&mut self, line: &str) -> Result<Response, ClientError> {
        let response = self.command(line).await?;
        expect(response, line, Response::is_positive)
    }

    /// EHLO, falling back to HELO for servers that do not speak ESMTP.
    pub async fn ehlo(&mut self, name: &str) -> Result<Capabilities, ClientError> {
        let response = self.command(&format!("EHLO {name}")).await?;
        if response.is_positive() {
            return Ok(Capabilities::from_ehlo(&response));
        }
        self.expect_ok(&format!("HELO {name}")).await?;
        Ok(Capabilities::default())
    }

    /// AUTH with `mechanism`. The secret never appears in an error.
    pub async fn authenticate(
        &mut self,
        mechanism: Mechanism,
        creds: &Credentials,
    ) -> Result<Response, ClientError> {
        let command = format!("AUTH {}", mechanism.name());
        let b64 = |s: &str| BASE64_STANDARD.encode(s.as_bytes());
        let refused = |response: Response| ClientError::Refused {
            command: command.clone(),
            response,
        };
        let response = match mechanism {
            Mechanism::Plain => {
                let token = b64(&format!("\0{}\0{}", creds.username, creds.secret.expose()));
                self.command(&format!("AUTH PLAIN {token}")).await?
            }
            Mechanism::Login => {
                let r = self.command("AUTH LOGIN").await?;
                if r.code != 334 {
                    return Err(refused(r));
                }
                let r = self.command(&b64(&creds.username)).await?;
                if r.code != 334 {
                    return Err(refused(r));
                }
                self.command(&b64(creds.secret.expose())).await?
            }
            Mechanism::XOAuth2 => {
                let token = b64(&format!(
                    "user={}\x01auth=Bearer {}\x01\x01",
                    creds.username,
                    creds.secret.expose()
                ));
                let r = self.command(&format!("AUTH XOAUTH2 {token}")).await?;
                if r.code == 334 {
                    // The server sent an error description; an empty line ends the exchange.
                    self.command("").await?
                } else {
                    r
                }
            }
        };
        if response.code == 235 {
            Ok(response)
        } else {
            Err(refused(response))
        }
    }

    /// The mail transaction: `MAIL FROM` (with `params`), one `RCPT TO` per recipient,
    /// and — if any recipient was accepted — `DATA` with the content. With `pipelining`
    /// the MAIL, RCPT and DATA commands go out in one write (RFC 2920).
    ///
    /// Returns the reply per recipient, in order. A refused `MAIL FROM` or final reply
    /// counts for every recipient that was still in the running.
    pub async fn transaction(
        &mut self,
        mail_from: &str,
        recipients: &[String],
        content: (&[u8], Option<&SpooledBody>),
        pipelining: bool,
    ) -> Result<Vec<RcptReply>, ClientError> {
        self.reached_data = false;
        let mail = format!("MAIL FROM:{mail_from}");
        let rcpt_lines: Vec<String> = recipients
            .iter()
            .map(|r| format!("RCPT TO:<{r}>"))
            .collect();
        let reset_first = std::mem::take(&mut self.reset_first);
        let (mail_reply, rcpt_replies, data_reply) = if pipelining {
            self.pipelined_envelope(reset_first, &mail, &rcpt_lines)
                .await?
        } else {
            if reset_first {
                let reply = self.command("RSET").await?;
                if reply.code == 421 {
                    return Ok(recipients
                        .iter()
                        .map(|_| RcptReply::Refused(reply.clone()))
                        .collect());
                }
            }
            let mail_reply = self.command(&mail).await?;
            let mut replies = Vec::new();
            if mail_reply.is_positive() {
                for line in &rcpt_lines {
                    let reply = self.command(line).await?;
                    let closing = reply.code == 421;
                    replies.push(reply);
                    if closing {
                        break;
                    }
                }
            }
            (mail_reply, replies, None)
        };
        // 421: the server is closing the channel (RFC 5321 §3.8) and answers nothing
        // more; its reply, not a closed connection, is the outcome for everyone.
        let closing = std::iter::once(&mail_reply)
            .chain(&rcpt_replies)
            .find(|r| r.code == 421)
            .cloned();
        if let Some(closing) = closing {
            return Ok(recipients
                .iter()
                .map(|_| RcptReply::Refused(closing.clone()))
                .collect());
        }
        if !mail_reply.is_positive() {
            self.end_unwanted_data(data_reply.as_ref()).await?;
            self.reset().await;
            return Ok(recipients
                .iter()
                .map(|_| RcptReply::Refused(mail_reply.clone()))
                .collect());
        }
        let mut results: Vec<RcptReply> = rcpt_replies
            .into_iter()
            .map(|r| {
                if r.is_positive() {
                    RcptReply::Accepted(r)
                } else {
                    RcptReply::Refused(r)
                }
            })
            .collect();
        if !results.iter().any(|r| matches!(r, RcptReply::Accepted(_))) {
            self.end_unwanted_data(data_reply.as_ref()).await?;
            self.reset().await;
            return Ok(results);
        }
        self.reached_data = true;
        let go = match data_reply {
            Some(reply) => reply,
            None => self.command("DATA").await?,
        };
        let final_reply = if go.code == 354 {
            self.write_content(content).await?;
            match self.read_response_within(self.final_reply_timeout).await {
                Err(ClientError::Timeout(after)) => {
                    return Err(ClientError::FinalReplyTimeout(after));
                }
                other => other?,
            }
        } else {
            go
        };
        if !final_reply.is_positive() {
            for r in results.iter_mut() {
                if matches!(r, RcptReply::Accepted(_)) {
                    *r = RcptReply::Refused(final_reply.clone());
                }
            }
        } else {
            for r in results.iter_mut() {
                if matches!(r, RcptReply::Accepted(_)) {
                    *r = RcptReply::Accepted(final_reply.clone());
                }
            }
        }
        Ok(results)
    }

    /// The message content as `DATA` payload, encoded and written a piece at a time:
    /// however large the message, only one piece of its wire form is in memory. The
    /// terminator goes with the last piece. A large message's body is read from its
    /// spool file as it is sent.
    async fn write_content(
        &mut self,
        (content, body): (&[u8], Option<&SpooledBody>),
    ) -> Result<(), ClientError> {
        let mut wire = Vec::with_capacity(content.len().min(WRITE_CHUNK) + WRITE_CHUNK / 32);
        let mut pieces = line_pieces(content, WRITE_CHUNK).peekable();
        while let Some(piece) = pieces.next() {
            wire.clear();
            encode_lines(piece, &mut wire);
            if pieces.peek().is_none() && body.is_none() {
                wire.extend_from_slice(b".\r\n");
            }
            self.write(&wire).await?;
        }
        match body {
            Some(body) => self.write_body(body, &mut wire).await,
            None if content.is_empty() => self.write(b".\r\n").await,
            None => Ok(()),
        }
    }

    /// The body file of a large message as `DATA` payload, then the terminator. The
    /// content before it ends with a line break, so the file starts at a line start;
    /// each piece read is encoded up to its last line end, the rest carried over.
    async fn write_body(
        &mut self,
        body: &SpooledBody,
        wire: &mut Vec<u8>,
    ) -> Result<(), ClientError> {
        use tokio::io::AsyncReadExt;
        let unreadable = |e: std::io::Error| {
            ClientError::Content(format!(
                "cannot read the message body file {}: {e}; the message stays queued and is tried again: check the disk and permissions of spool.dir/body",
                body.path.display()
            ))
        };
        let mut file = tokio::fs::File::open(&body.path)
            .await
            .map_err(unreadable)?;
        let mut pending: Vec<u8> = Vec::with_capacity(WRITE_CHUNK * 2);
        loop {
            let before = pending.len();
            pending.resize(before + WRITE_CHUNK, 0);
            let n = file
                .read(&mut pending[before..])
                .await
                .map_err(unreadable)?;
            pending.truncate(before + n);
            let whole_lines = if n == 0 {
                pending.len()
            } else {
                memchr::memrchr(b'\n', &pending).map_or(0, |p| p + 1)
            };
            wire.clear();
            encode_lines(&pending[..whole_lines], wire);
            if n == 0 {
                wire.extend_from_slice(b".\r\n");
            }
            if !wire.is_empty() {
                self.write(wire).await?;
            }
            pending.drain(..whole_lines);
            if n == 0 {
                return Ok(());
            }
        }
    }

    /// With PIPELINING (RFC 2920), `RSET` (if `reset_first`), `MAIL FROM`, every
    /// `RCPT TO` and `DATA` go out in one write, so a message costs two round trips (this
    /// group, then the content) instead of one per command. Every reply is read; after a
    /// `421` the server answers nothing more, so reading stops there (and `DATA`'s reply
    /// is `None`; a `421` to `RSET` stands for the `MAIL` reply).
    async fn pipelined_envelope(
        &mut self,
        reset_first: bool,
        mail: &str,
        rcpt_lines: &[String],
    ) -> Result<(Response, Vec<Response>, Option<Response>), ClientError> {
        let mut group = String::new();
        if reset_first {
            group.push_str("RSET\r\n");
        }
        group.push_str(mail);
        group.push_str("\r\n");
        for line in rcpt_lines {
            group.push_str(line);
            group.push_str("\r\n");
        }
        group.push_str("DATA\r\n");
        self.write(group.as_bytes()).await?;
        if reset_first {
            // Any other answer to RSET leaves the server ready for MAIL all the same.
            let reply = self.read_response().await?;
            if reply.code == 421 {
                return Ok((reply, Vec::new(), None));
            }
        }
        let mail_reply = self.read_response().await?;
        let mut replies = Vec::with_capacity(rcpt_lines.len());
        if mail_reply.code == 421 {
            return Ok((mail_reply, replies, None));
        }
        for _ in rcpt_lines {
            let reply = self.read_response().await?;
            let closing = reply.code == 421;
            replies.push(reply);
            if closing {
                return Ok((mail_reply, replies, None));
            }
        }
        let data_reply = self.read_response().await?;
        Ok((mail_reply, replies, Some(data_reply)))
    }

    /// A pipelined `DATA` the server accepted although no recipient was: end that
    /// message at once with an empty body (RFC 2920 §3.1), whatever the server says.
    async fn end_unwanted_data(
        &mut self,
        data_reply: Option<&Response>,
    ) -> Result<(), ClientError> {
        if data_reply.is_some_and(|r| r.code == 354) {
            self.write(b".\r\n").await?;
            self.read_response_within(self.final_reply_timeout).await?;
        }
        Ok(())
    }

    /// `RSET`; true if the server is ready for the next transaction.
    pub async fn reset(&mut self) -> bool {
        matches!(self.command("RSET").await, Ok(r) if r.is_positive())
    }

    /// `QUIT`, ignoring what happens next: the transaction is already settled.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = self.command("QUIT").await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

impl SmtpClient<BoxStream> {
    /// Send `STARTTLS`, expect `220`, and run the TLS handshake on the same connection.
    /// The caller must send EHLO again afterwards (RFC 3207 §4.2).
    pub async fn starttls(
        mut self,
        connector: &TlsConnector,
        name: ServerName<'static>,
    ) -> Result<(SmtpClient<BoxStream>, String), ClientError> {
        let response = self.command("STARTTLS").await?;
        let response = expect(response, "STARTTLS", |r| r.code == 220)?;
        drop(response);
        if self.has_buffered_input() {
            return Err(ClientError::DataAfterStartTls);
        }
        let (timeout, final_reply) = (self.timeout, self.final_reply_timeout);
        let (stream, info) = tls_handshake(self.stream, connector, name, timeout).await?;
        Ok((
            SmtpClient::new(stream, timeout).with_final_reply_timeout(final_reply),
            info,
        ))
    }
}

/// Run a client TLS handshake over `stream`; returns the TLS stream and a description
/// of the negotiated version and cipher suite.
pub async fn tls_handshake(
    stream: BoxStream,
    connector: &TlsConnector,
    name: ServerName<'static>,
    timeout: Duration,
) -> Result<(BoxStream, String), ClientError> {
    let tls = tokio::time::timeout(timeout, connector.connect(name, stream))
        .await
        .map_err(|_| ClientError::Timeout(timeout))??;
    let (_, conn) = tls.get_ref();
    let info = describe_tls(conn.protocol_version(), conn.negotiated_cipher_suite());
    Ok((Box::new(tls), info))
}

/// `TLSv1.3 TLS13_AES_256_GCM_SHA384`
pub fn describe_tls(
    version: Option<tokio_rustls::rustls::ProtocolVersion>,
    suite: Option<tokio_rustls::rustls::SupportedCipherSuite>,
) -> String {
    use tokio_rustls::rustls::ProtocolVersion;
    let version = match version {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        other => format!("{other:?}"),
    };
    let suite = suite
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    format!("{version} {suite}")
}

fn expect(
    response: Response,
    command: &str,
    ok: impl Fn(&Response) -> bool,
) -> Result<Response, ClientError> {
    if ok(&response) {
        Ok(response)
    } else {
        Err(ClientError::Refused {
            command: command.to_owned(),
            response,
        })
    }
}

#[cfg(test)]
mod tests;
