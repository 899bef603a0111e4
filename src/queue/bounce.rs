//! Delivery status notifications (RFC 3464) for recipients that failed for good.
//!
//! A bounce goes to the envelope sender with the null sender `<>`, so a bounce that
//! cannot be delivered never causes another bounce (RFC 5321 §6.1); mail that arrived
//! with the null sender gets no bounce at all.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::message::{Envelope, Message, QueueId};
use crate::proto::{Address, ReversePath};
use crate::transform::headers;
use crate::transform::trace::rfc5322_date;

/// One recipient that failed.
#[derive(Clone, Debug)]
pub struct FailedRecipient {
    /// The recipient.
    pub address: Address,
    /// The enhanced status code (e.g. `5.1.1`), `5.0.0` if unknown.
    pub status: String,
    /// The upstream's reply or our reason.
    pub diagnostic: String,
}

/// The bounce for `original`, or `None` when it must not get one (null sender).
pub fn bounce(
    original: &Message,
    failed: &[FailedRecipient],
    hostname: &str,
    now: SystemTime,
) -> Option<Message> {
    let ReversePath::Mailbox(sender) = &original.envelope.sender else {
        return None;
    };
    if failed.is_empty() {
        return None;
    }
    let id = QueueId::generate();
    let boundary = format!("{id}/{hostname}");
    let date = rfc5322_date(now);
    let mut text = String::new();
    let _ = write!(
        text,
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{sender}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.bounce@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail relay at {hostname}.\r\n\
         \r\n\
         Your message (queue id {orig}) could not be delivered to the following\r\n\
         recipients. The reasons are below.\r\n\
         \r\n",
        orig = original.id,
    );
    for f in failed {
        let _ = write!(text, "<{}>: {}\r\n", f.address, one_line(&f.diagnostic));
    }
    let _ = write!(
        text,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n\
         X-Smarthost-Queue-ID: {orig}\r\n\
         Arrival-Date: {arrival}\r\n",
        orig = original.id,
        arrival = rfc5322_date(original.received_at),
    );
    for f in failed {
        let _ = write!(
            text,
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\nDiagnostic-Code: smtp; {}\r\n",
            f.address,
            f.status,
            one_line(&f.diagnostic)
        );
    }
    let _ = write!(
        text,
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    );
    let mut content = text.into_bytes();
    let parsed = headers::Parsed::parse(&original.content);
    for field in &parsed.fields {
        content.extend_from_slice(field.name.as_bytes());
        content.push(b':');
        content.extend_from_slice(&field.raw_value);
    }
    content.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    // Only 8-bit octets need 8BITMIME: a bounce that claimed it always could not go
    // through an upstream without it, and would be dropped (a bounce never bounces).
    let eight_bit = !content.is_ascii();
    Some(Message {
        id,
        envelope: Envelope {
            sender: ReversePath::Null,
            recipients: vec![sender.clone()],
            smtputf8: !sender.is_ascii(),
            eight_bit,
            // The bounce leaves the way the message would have.
            route: original.envelope.route.clone(),
        },
        content,
        body: None,
        received_at: now,
    })
}

/// The status code at the start of a reply text (`5.1.1 ...`), or a default.
pub fn status_of(text: &str, permanent: bool) -> String {
    text.split_whitespace()
        .find(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
                && matches!(parts[0], "4" | "5")
        })
        .map(|s| {
            if permanent {
                format!("5{}", &s[1..])
            } else {
                s.to_owned()
            }
        })
        .unwrap_or_else(|| "5.0.0".into())
}

fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original(sender: ReversePath) -> Message {
        Message {
            id: QueueId::generate(),
            envelope: Envelope {
                sender,
                recipients: vec![Address::parse("gone@example.net").unwrap()],
                smtputf8: false,
                eight_bit: false,
                route: None,
            },
            content: b"From: <app@example.com>\r\nSubject: invoice\r\n\r\nsecret body\r\n".to_vec(),
            body: None,
            received_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn bounces_go_to_the_sender_from_the_null_sender() {
        let failed = [FailedRecipient {
            address: Address::parse("gone@example.net").unwrap(),
            status: "5.1.1".into(),
            diagnostic: "primary: 550 5.1.1 no such user".into(),
        }];
        let sender = ReversePath::Mailbox(Address::parse("app@example.com").unwrap());
        let dsn = bounce(
            &original(sender),
            &failed,
            "relay.test",
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(dsn.envelope.sender, ReversePath::Null);
        assert!(
            !dsn.envelope.eight_bit,
            "an ASCII bounce does not need 8BITMIME"
        );
        assert_eq!(dsn.envelope.recipients[0].to_string(), "app@example.com");
        let text = String::from_utf8(dsn.content).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains(
            "Final-Recipient: rfc822; gone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(
            text.contains("Subject: invoice\r\n"),
            "original headers are attached"
        );
        assert!(!text.contains("secret body"), "the original body is not");
    }

    #[test]
    fn null_sender_mail_never_bounces() {
        let failed = [FailedRecipient {
            address: Address::parse("x@y.z").unwrap(),
            status: "5.0.0".into(),
            diagnostic: "x".into(),
        }];
        assert!(
            bounce(
                &original(ReversePath::Null),
                &failed,
                "relay.test",
                SystemTime::UNIX_EPOCH
            )
            .is_none()
        );
    }

    #[test]
    fn finds_status_codes() {
        assert_eq!(status_of("550 5.1.1 no such user", true), "5.1.1");
        assert_eq!(status_of("451 4.4.1 timeout", true), "5.4.1");
        assert_eq!(status_of("connection refused", true), "5.0.0");
    }
}
