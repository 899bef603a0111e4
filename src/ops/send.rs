//! `smarthost send`: submit a test message to an SMTP server.

use std::time::{Duration, SystemTime};

use base64::prelude::{BASE64_STANDARD, Engine as _};
use tokio::net::TcpStream;

use crate::deliver::client::{ClientError, RcptReply, SmtpClient};
use crate::message::QueueId;
use crate::proto::{Address, Response};
use crate::transform::trace::rfc5322_date;

/// What to send.
#[derive(Clone, Debug)]
pub struct SendRequest {
    /// `host:port` of the server.
    pub server: String,
    /// Envelope sender and From.
    pub from: String,
    /// Envelope recipients and To.
    pub to: Vec<String>,
    /// Subject of the generated message.
    pub subject: String,
    /// Body of the generated message.
    pub body: String,
    /// A complete message to send instead of the generated one.
    pub raw: Option<Vec<u8>>,
    /// Name for EHLO.
    pub helo: String,
    /// Limit for connecting and for each reply.
    pub timeout: Duration,
}

/// Why sending failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// An address on the command line is malformed.
    #[error("{0:?} is not an email address: {1}")]
    Address(String, crate::proto::AddressError),
    /// The connection could not be made.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    /// Connecting took too long.
    #[error("cannot connect to {0}: no answer within {1:?}")]
    ConnectTimeout(String, Duration),
    /// The SMTP conversation failed.
    #[error("{0}")]
    Smtp(#[from] ClientError),
}

/// Build the test message (headers in strict form, CRLF line endings).
pub fn compose(req: &SendRequest, now: SystemTime) -> Vec<u8> {
    let domain = req.from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    let mut msg = format!(
        "Date: {}\r\nFrom: <{}>\r\nTo: {}\r\nSubject: {}\r\nMessage-ID: <{}.send@{}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        rfc5322_date(now),
        req.from,
        req.to
            .iter()
            .map(|t| format!("<{t}>"))
            .collect::<Vec<_>>()
            .join(", "),
        encode_subject(&req.subject),
        QueueId::generate(),
        domain,
    );
    msg.push_str(&req.body.replace("\r\n", "\n").replace('\n', "\r\n"));
    if !msg.ends_with("\r\n") {
        msg.push_str("\r\n");
    }
    msg.into_bytes()
}

/// A subject with non-ASCII text becomes one RFC 2047 encoded word per chunk.
fn encode_subject(subject: &str) -> String {
    if subject.is_ascii() {
        return subject.to_owned();
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in subject.chars() {
        // 45 octets of UTF-8 encode to 60 base64 characters: the word stays under 75.
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    words.push(chunk);
    words
        .iter()
        .map(|w| format!("=?UTF-8?B?{}?=", BASE64_STANDARD.encode(w.as_bytes())))
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// Submit the message; returns the server's final reply to the message.
pub async fn send(req: &SendRequest) -> Result<Response, SendError> {
    for addr in std::iter::once(&req.from).chain(&req.to) {
        Address::parse(addr).map_err(|e| SendError::Address(addr.clone(), e))?;
    }
    let stream = tokio::time::timeout(req.timeout, TcpStream::connect(&req.server))
        .await
        .map_err(|_| SendError::ConnectTimeout(req.server.clone(), req.timeout))?
        .map_err(|e| SendError::Connect(req.server.clone(), e))?;
    let mut client = SmtpClient::new(stream, req.timeout);
    client.greeting().await?;
    let caps = client.ehlo(&req.helo).await?;
    let content = req
        .raw
        .clone()
        .unwrap_or_else(|| compose(req, SystemTime::now()));
    let mut mail_from = format!("<{}>", req.from);
    if caps.has("SIZE") {
        mail_from.push_str(&format!(" SIZE={}", content.len()));
    }
    if caps.has("8BITMIME") && !content.is_ascii() {
        mail_from.push_str(" BODY=8BITMIME");
    }
    if caps.has("SMTPUTF8") && !(req.from.is_ascii() && req.to.iter().all(|t| t.is_ascii())) {
        mail_from.push_str(" SMTPUTF8");
    }
    let replies = client
        .transaction(
            &mail_from,
            &req.to,
            (&content, None),
            caps.has("PIPELINING"),
        )
        .await?;
    let mut response = None;
    for (to, reply) in req.to.iter().zip(replies) {
        match reply {
            RcptReply::Accepted(r) => response = Some(r),
            RcptReply::Refused(r) => {
                client.quit().await;
                return Err(ClientError::Refused {
                    command: format!("the message for <{to}>"),
                    response: r,
                }
                .into());
            }
        }
    }
    let response = response.expect("at least one recipient is required");
    client.quit().await;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_subjects_are_encoded_words() {
        assert_eq!(encode_subject("plain"), "plain");
        assert_eq!(encode_subject("你好"), "=?UTF-8?B?5L2g5aW9?=");
        let long = encode_subject(&"é".repeat(40));
        assert!(long.split("\r\n ").all(|w| w.len() <= 75), "{long}");
    }

    #[test]
    fn composes_a_complete_message() {
        let req = SendRequest {
            server: "x:25".into(),
            from: "app@example.com".into(),
            to: vec!["a@example.net".into()],
            subject: "Hi".into(),
            body: "line1\nline2".into(),
            raw: None,
            helo: "me".into(),
            timeout: Duration::from_secs(1),
        };
        let text = String::from_utf8(compose(&req, std::time::UNIX_EPOCH)).unwrap();
        assert!(text.starts_with("Date: Thu, 01 Jan 1970 00:00:00 +0000\r\nFrom: <app@example.com>\r\nTo: <a@example.net>\r\nSubject: Hi\r\n"));
        assert!(text.ends_with("\r\n\r\nline1\r\nline2\r\n"));
    }
}
