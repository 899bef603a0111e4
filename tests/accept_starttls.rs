//! Inbound STARTTLS (RFC 3207) with a certificate made by rcgen for `localhost`.

pub mod support;

use rustls_pki_types::ServerName;
use support::{SmtpClient, TestCert, start_relay};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Run the TLS handshake on `tcp`, trusting only `cert`.
async fn handshake(cert: &TestCert, tcp: TcpStream) -> SmtpClient<TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(support::HANG_GUARD, cert.connector().connect(name, tcp))
        .await
        .expect("TLS handshake hangs")
        .expect("TLS handshake fails");
    let (_, state) = tls.get_ref();
    assert_eq!(
        state.protocol_version(),
        Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_3)
    );
    SmtpClient::new(tls)
}

#[tokio::test]
async fn starttls_upgrades_the_session_and_the_trace_says_so() {
    let cert = TestCert::generate();
    let mut relay = start_relay(&format!("[server]\n{}", cert.server_toml())).await;
    let mut c = relay.connect().await;
    c.greeting().await;
    let ehlo = c.expect("EHLO client.test", 250).await;
    assert!(ehlo.advertises("STARTTLS"), "{ehlo}");
    c.expect_esc("STARTTLS", 220, "2.0.0").await;

    let mut c = handshake(&cert, c.into_stream()).await;
    // No new greeting: the client speaks first, and EHLO again (RFC 3207 §4.2).
    let ehlo = c.expect("EHLO client.test", 250).await;
    assert!(
        !ehlo.advertises("STARTTLS"),
        "STARTTLS offered again inside TLS: {ehlo}"
    );
    assert!(
        ehlo.advertises("PIPELINING") && ehlo.advertises("CHUNKING"),
        "{ehlo}"
    );
    let again = c.command("STARTTLS").await;
    assert!(
        (500..600).contains(&again.code),
        "a second STARTTLS must be refused: {again}"
    );

    let reply = c
        .send_message(
            "a@example.com",
            &["b@example.net"],
            b"Subject: over TLS\r\n\r\nsecret\r\n",
        )
        .await;
    let id = reply.queue_id();
    c.expect("QUIT", 221).await;

    let messages = relay.finish(1).await;
    let m = &messages[0];
    let received: String = m
        .header_lines()
        .iter()
        .skip_while(|l| !l.starts_with("Received: "))
        .take_while(|l| !l.starts_with("Subject: "))
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(received.contains("with ESMTPS"), "{received}");
    assert!(received.contains("TLSv1.3"), "{received}");
    assert!(received.contains(&format!("id {id}")), "{received}");
}

#[tokio::test]
async fn starttls_is_refused_inside_a_transaction() {
    let cert = TestCert::generate();
    let relay = start_relay(&format!("[server]\n{}", cert.server_toml())).await;
    let mut c = relay.client().await;
    c.expect("MAIL FROM:<a@example.com>", 250).await;
    c.expect_esc("STARTTLS", 503, "5.5.1").await;
    c.expect("RCPT TO:<b@example.net>", 250).await;
}

/// CVE-2011-0411: a man in the middle appends a command to the client's STARTTLS in the
/// same packet. It must be discarded, not run once TLS is up.
#[tokio::test]
async fn a_command_injected_after_starttls_is_not_executed_inside_tls() {
    let cert = TestCert::generate();
    let mut relay = start_relay(&format!("[server]\n{}", cert.server_toml())).await;
    let mut c = relay.client().await;
    c.send("STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
        .await;
    c.expect_reply(220).await;
    // into_stream also checks that no plaintext reply to the injected command arrived.
    let mut c = handshake(&cert, c.into_stream()).await;

    // Run inside TLS, the injected MAIL would be answered before our EHLO (with 503,
    // as STARTTLS resets the session), or open a transaction we did not ask for.
    let ehlo = c.expect("EHLO client.test", 250).await;
    assert!(ehlo.lines[0].starts_with(support::HOSTNAME), "{ehlo}");
    c.expect_esc("MAIL FROM:<real@example.com>", 250, "2.1.0")
        .await;
    c.expect("RCPT TO:<b@example.net>", 250).await;
    c.expect("DATA", 354).await;
    c.send("Subject: after injection\r\n\r\nbody\r\n.\r\n")
        .await;
    c.expect_reply_esc(250, "2.0.0").await;
    c.expect("QUIT", 221).await;

    let messages = relay.finish(1).await;
    let text = messages[0].text();
    assert!(
        text.starts_with("Return-Path: <real@example.com>\r\n"),
        "{text}"
    );
    assert!(!text.contains("injected"), "{text}");
}
