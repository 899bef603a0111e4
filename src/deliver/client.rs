//! One SMTP client conversation over any byte stream.
//!
//! Used by `smarthost send` today; the upstream delivery builds on it.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::{Capabilities, Response, ResponseError, encode_data, parse_response};

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
    /// The reply was not SMTP.
    #[error("the server's reply is not SMTP: {0}")]
    Protocol(#[from] ResponseError),
    /// The server refused a command.
    #[error("the server refused {command}: {response}")]
    Refused {
        /// The command, e.g. `RCPT TO:<a@b>`.
        command: String,
        /// Its reply.
        response: Response,
    },
}

/// An SMTP client on one connection.
pub struct SmtpClient<S> {
    stream: S,
    rbuf: Vec<u8>,
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SmtpClient<S> {
    /// Wrap a connected stream; `timeout` bounds every wait for a reply.
    pub fn new(stream: S, timeout: Duration) -> SmtpClient<S> {
        SmtpClient {
            stream,
            rbuf: Vec::new(),
            timeout,
        }
    }

    /// Read the next reply.
    pub async fn read_response(&mut self) -> Result<Response, ClientError> {
        loop {
            if let Some((response, used)) = parse_response(&self.rbuf)? {
                self.rbuf.drain(..used);
                return Ok(response);
            }
            self.rbuf.reserve(4096);
            let read = tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.rbuf));
            match read.await {
                Err(_) => return Err(ClientError::Timeout(self.timeout)),
                Ok(Ok(0)) => return Err(ClientError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Read the greeting; it must be `220`.
    pub async fn greeting(&mut self) -> Result<Response, ClientError> {
        let response = self.read_response().await?;
        expect(response, "the connection", |r| r.code == 220)
    }

    /// Send one command line and read its reply, whatever it is.
    pub async fn command(&mut self, line: &str) -> Result<Response, ClientError> {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await?;
        self.stream.flush().await?;
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

    /// `DATA`, then the content (dot-stuffed, CRLF-normalised), then the final reply.
    pub async fn data(&mut self, content: &[u8]) -> Result<Response, ClientError> {
        let go = self.command("DATA").await?;
        expect(go, "DATA", |r| r.code == 354)?;
        let mut wire = Vec::new();
        encode_data(content, &mut wire);
        self.stream.write_all(&wire).await?;
        self.stream.flush().await?;
        let response = self.read_response().await?;
        expect(response, "the message", Response::is_positive)
    }

    /// `QUIT`, ignoring what happens next: the transaction is already settled.
    pub async fn quit(mut self) {
        let _ = self.command("QUIT").await;
        let _ = self.stream.shutdown().await;
    }
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
