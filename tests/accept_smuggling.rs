//! SMTP smuggling: DATA ends only at CRLF.CRLF. Other "end of data" lookalikes inside a
//! message are content, so the commands after them cannot start a second, forged
//! message (CVE-2023-51766 and relatives).

pub mod support;

use support::start_relay;

/// Put `lookalike` inside a message, followed by a forged transaction, then end DATA
/// for real and QUIT, all in one write. Exactly one message may result, holding the
/// forged commands as text.
async fn smuggle(lookalike: &[u8]) {
    let mut relay = start_relay("").await;
    let mut c = relay.client().await;
    c.expect("MAIL FROM:<sender@example.com>", 250).await;
    c.expect("RCPT TO:<rcpt@example.net>", 250).await;
    c.expect("DATA", 354).await;

    let mut wire = b"Subject: smuggling\r\n\r\nhello".to_vec();
    wire.extend_from_slice(lookalike);
    wire.extend_from_slice(b"MAIL FROM:<evil@x.y>\r\nRCPT TO:<victim@x.y>\r\nDATA\r\nsmuggled\r\n");
    wire.extend_from_slice(b"\r\n.\r\n");
    wire.extend_from_slice(b"QUIT\r\n");
    c.send(&wire).await;

    // One 250 for the one message, then the QUIT: a smuggled transaction would have
    // put 250, 250, 354, 250 in between.
    c.expect_reply_esc(250, "2.0.0").await.queue_id();
    c.expect_reply(221).await;
    c.expect_closed().await;

    let messages = relay.finish(1).await;
    let m = &messages[0];
    m.assert_crlf_only();
    assert_eq!(m.delivered_to(), ["rcpt@example.net"]);
    let text = m.text();
    assert!(
        text.starts_with("Return-Path: <sender@example.com>\r\n"),
        "{m:?}"
    );
    assert!(
        text.contains("\r\nMAIL FROM:<evil@x.y>\r\nRCPT TO:<victim@x.y>\r\nDATA\r\nsmuggled\r\n"),
        "{m:?}"
    );
}

#[tokio::test]
async fn lf_dot_lf_does_not_end_data() {
    smuggle(b"\n.\n").await;
}

#[tokio::test]
async fn cr_dot_cr_does_not_end_data() {
    smuggle(b"\r.\r").await;
}

#[tokio::test]
async fn crlf_dot_lf_does_not_end_data() {
    smuggle(b"\r\n.\n").await;
}

#[tokio::test]
async fn lf_dot_crlf_does_not_end_data() {
    smuggle(b"\n.\r\n").await;
}

#[tokio::test]
async fn cr_dot_crlf_does_not_end_data() {
    smuggle(b"\r.\r\n").await;
}

#[tokio::test]
async fn crlf_dot_cr_does_not_end_data() {
    smuggle(b"\r\n.\r").await;
}
