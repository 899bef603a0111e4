//! Authenticated submission on `[[listener]]` ports: AUTH only over TLS, `530` before
//! it for clients outside `trusted_networks`, `535` for a wrong password, the lockout,
//! the user's sender rights and rate limit, and the trace of who sent (issue 14).
//! The relay runs in-process; the client is the tests' own strict SMTP client over real
//! rustls TLS with a certificate made by rcgen.

pub mod support;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use rustls_pki_types::ServerName;
use smarthost::config::{AddressGlob, RateLimit, User, Users};
use support::{Relay, SmtpClient, TestCert, TestConfig, header};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const PASSWORD: &str = "correct horse battery staple";

/// `billing` may send as `*@billing.test`; `limited` as `*@limited.test`, twice an hour.
fn write_users(path: &Path) {
    let mut users = Users::default();
    let billing = User::new(
        "billing",
        PASSWORD,
        vec![AddressGlob::parse("*@billing.test").unwrap()],
        None,
    )
    .unwrap();
    let limited = User::new(
        "limited",
        PASSWORD,
        vec![AddressGlob::parse("*@limited.test").unwrap()],
        Some(RateLimit {
            count: 2,
            per: Duration::from_secs(3600),
        }),
    )
    .unwrap();
    users.insert(billing, false).unwrap();
    users.insert(limited, false).unwrap();
    users.save(path).unwrap();
}

/// A relay that trusts only 10.0.0.0/8 (so the test client on 127.0.0.1 is not trusted),
/// with a STARTTLS listener (`addrs()[1]`) and an implicit-TLS one (`addrs()[2]`).
async fn relay(cert: &TestCert, trusted: &str, auth: &str) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    write_users(&users);
    let config = TestConfig::new(dir.path()).toml(&format!(
        "[server]\n{}trusted_networks = [\"{trusted}\"]\n\
         [auth]\nusers_file = \"{}\"\n{auth}\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\n",
        cert.server_toml(),
        users.display()
    ));
    Relay::start(config, dir).await
}

async fn tls(cert: &TestCert, tcp: TcpStream) -> SmtpClient<TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").unwrap();
    let stream = tokio::time::timeout(support::HANG_GUARD, cert.connector().connect(name, tcp))
        .await
        .expect("TLS handshake hangs")
        .expect("TLS handshake fails");
    SmtpClient::new(stream)
}

/// A session on the STARTTLS listener, after STARTTLS and EHLO.
async fn submission(relay: &Relay, cert: &TestCert) -> SmtpClient<TlsStream<TcpStream>> {
    let mut c = SmtpClient::connect(relay.addrs()[1]).await;
    c.greeting().await;
    c.expect("EHLO app.test", 250).await;
    c.expect("STARTTLS", 220).await;
    let mut c = tls(cert, c.into_stream()).await;
    let ehlo = c.expect("EHLO app.test", 250).await;
    assert!(ehlo.advertises("AUTH PLAIN LOGIN"), "{ehlo}");
    c
}

fn plain(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn the_starttls_listener_offers_auth_only_after_tls_and_then_accepts_the_user() {
    let cert = TestCert::generate();
    let mut relay = relay(&cert, "10.0.0.0/8", "").await;
    let mut c = SmtpClient::connect(relay.addrs()[1]).await;
    c.greeting().await;
    let ehlo = c.expect("EHLO app.test", 250).await;
    assert!(ehlo.advertises("STARTTLS"), "{ehlo}");
    assert!(
        !ehlo.text().contains("AUTH"),
        "AUTH offered in plaintext: {ehlo}"
    );
    let refused = c
        .expect_esc(
            &format!("AUTH PLAIN {}", plain("billing", PASSWORD)),
            538,
            "5.7.11",
        )
        .await;
    assert!(refused.text().contains("STARTTLS"), "{refused}");
    let refused = c
        .expect_esc("MAIL FROM:<a@billing.test>", 530, "5.7.0")
        .await;
    assert!(refused.text().contains("trusted_networks"), "{refused}");
    c.expect("STARTTLS", 220).await;

    let mut c = tls(&cert, c.into_stream()).await;
    let ehlo = c.expect("EHLO app.test", 250).await;
    assert!(ehlo.advertises("AUTH PLAIN LOGIN"), "{ehlo}");
    c.expect_esc("MAIL FROM:<a@billing.test>", 530, "5.7.0")
        .await;
    c.expect_esc(
        &format!("AUTH PLAIN {}", plain("billing", "wrong")),
        535,
        "5.7.8",
    )
    .await;
    c.expect_esc(
        &format!("AUTH PLAIN {}", plain("nobody", PASSWORD)),
        535,
        "5.7.8",
    )
    .await;
    c.expect_esc(
        &format!("AUTH PLAIN {}", plain("billing", PASSWORD)),
        235,
        "2.7.0",
    )
    .await;
    c.expect_esc(
        &format!("AUTH PLAIN {}", plain("billing", PASSWORD)),
        503,
        "5.5.1",
    )
    .await;
    let content = "From: Billing <invoices@billing.test>\r\nSubject: invoice\r\n\r\nhi\r\n";
    c.send_content("invoices@billing.test", &["customer@example.net"], content)
        .await;
    c.expect("QUIT", 221).await;

    let messages = relay.finish(1).await;
    let received = header(&messages[0].text(), "Received").unwrap();
    assert!(received.contains("with ESMTPSA"), "{received}");
    assert!(
        received.contains("(authenticated as billing)"),
        "{received}"
    );
}

#[tokio::test]
async fn the_implicit_tls_listener_speaks_tls_first_and_takes_auth_login() {
    let cert = TestCert::generate();
    let mut relay = relay(&cert, "10.0.0.0/8", "").await;
    let tcp = TcpStream::connect(relay.addrs()[2]).await.unwrap();
    let mut c = tls(&cert, tcp).await;
    c.greeting().await;
    let ehlo = c.expect("EHLO app.test", 250).await;
    assert!(ehlo.advertises("AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(!ehlo.advertises("STARTTLS"), "STARTTLS inside TLS: {ehlo}");
    let challenge = c.expect("AUTH LOGIN", 334).await;
    assert_eq!(challenge.text(), "VXNlcm5hbWU6");
    c.expect(&b64("billing"), 334).await;
    c.expect_esc(&b64(PASSWORD), 235, "2.7.0").await;
    let content = "From: <a@billing.test>\r\nSubject: over 465\r\n\r\nhi\r\n";
    c.send_content("a@billing.test", &["customer@example.net"], content)
        .await;
    c.expect("QUIT", 221).await;
    let messages = relay.finish(1).await;
    let received = header(&messages[0].text(), "Received").unwrap();
    assert!(received.contains("with ESMTPSA"), "{received}");
}

#[tokio::test]
async fn a_trusted_client_sends_on_a_listener_without_auth_and_the_relay_port_still_refuses_strangers()
 {
    let cert = TestCert::generate();
    let mut relay = relay(&cert, "127.0.0.0/8", "").await;
    let mut c = submission(&relay, &cert).await;
    let content = "From: <anyone@example.com>\r\nSubject: trusted\r\n\r\nhi\r\n";
    c.send_content("anyone@example.com", &["customer@example.net"], content)
        .await;
    c.expect("QUIT", 221).await;
    let messages = relay.finish(1).await;
    let received = header(&messages[0].text(), "Received").unwrap();
    assert!(received.contains("with ESMTPS"), "{received}");
    assert!(!received.contains("ESMTPSA"), "{received}");

    // server.listen keeps refusing clients outside trusted_networks at the greeting.
    let strict = relay_on_port_25_only(&cert).await;
    let mut c = SmtpClient::connect(strict.addr()).await;
    c.expect_reply_esc(554, "5.7.1").await;
}

async fn relay_on_port_25_only(cert: &TestCert) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let config = TestConfig::new(dir.path()).toml(&format!(
        "[server]\n{}trusted_networks = [\"10.0.0.0/8\"]\n",
        cert.server_toml()
    ));
    Relay::start(config, dir).await
}

#[tokio::test]
async fn a_client_address_is_locked_out_after_max_failures_until_the_lockout_passes() {
    let cert = TestCert::generate();
    let relay = relay(&cert, "10.0.0.0/8", "max_failures = 2\nlockout = \"2s\"").await;
    let mut c = submission(&relay, &cert).await;
    c.expect_esc(
        &format!("AUTH PLAIN {}", plain("billing", "guess1")),
        535,
        "5.7.8",
    )
    .await;
    c.expect_esc(
        &format!("AUTH PLAIN {}", plain("billing", "guess2")),
        535,
        "5.7.8",
    )
    .await;
    // Now even the right password is refused, on this and on a new connection.
    let locked = c
        .expect_esc(
            &format!("AUTH PLAIN {}", plain("billing", PASSWORD)),
            454,
            "4.7.0",
        )
        .await;
    assert!(locked.text().contains("127.0.0.1"), "{locked}");
    let mut other = submission(&relay, &cert).await;
    other
        .expect_esc(
            &format!("AUTH PLAIN {}", plain("billing", PASSWORD)),
            454,
            "4.7.0",
        )
        .await;
    let metrics = support::http_get(relay.metrics_addr().unwrap(), "/metrics")
        .await
        .1;
    assert!(
        metrics.contains("smarthost_auth_failures_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("smarthost_auth_lockouts_total 1"),
        "{metrics}"
    );

    // Past the lockout the address may try again.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    other
        .expect_esc(
            &format!("AUTH PLAIN {}", plain("billing", PASSWORD)),
            235,
            "2.7.0",
        )
        .await;
}

#[tokio::test]
async fn a_user_sends_only_as_its_allowed_senders_in_the_envelope_and_the_from_header() {
    let cert = TestCert::generate();
    let relay = relay(&cert, "10.0.0.0/8", "").await;
    let mut c = submission(&relay, &cert).await;
    c.expect(&format!("AUTH PLAIN {}", plain("billing", PASSWORD)), 235)
        .await;
    let refused = c
        .expect_esc("MAIL FROM:<ceo@corp.test>", 550, "5.7.1")
        .await;
    assert!(
        refused.text().contains("billing") && refused.text().contains("<ceo@corp.test>"),
        "{refused}"
    );
    c.expect("MAIL FROM:<a@billing.test>", 250).await;
    c.expect("RCPT TO:<customer@example.net>", 250).await;
    c.expect("DATA", 354).await;
    c.send(support::dot_terminated(
        "From: CEO <ceo@corp.test>\r\nSubject: spoof\r\n\r\nhi\r\n",
    ))
    .await;
    let refused = c.expect_reply_esc(550, "5.7.1").await;
    assert!(
        refused.text().contains("billing") && refused.text().contains("<ceo@corp.test>"),
        "{refused}"
    );
    assert!(relay.messages().is_empty());
}

#[tokio::test]
async fn a_user_over_its_rate_limit_gets_450_and_others_are_not_affected() {
    let cert = TestCert::generate();
    let relay = relay(&cert, "10.0.0.0/8", "").await;
    let mut c = submission(&relay, &cert).await;
    c.expect(&format!("AUTH PLAIN {}", plain("limited", PASSWORD)), 235)
        .await;
    for _ in 0..2 {
        c.expect("MAIL FROM:<a@limited.test>", 250).await;
        c.expect("RSET", 250).await;
    }
    // A refused sender takes nothing from the budget, and the budget is the user's,
    // not the connection's.
    let mut again = submission(&relay, &cert).await;
    again
        .expect(&format!("AUTH PLAIN {}", plain("limited", PASSWORD)), 235)
        .await;
    let over = again
        .expect_esc("MAIL FROM:<a@limited.test>", 450, "4.7.1")
        .await;
    assert!(
        over.text().contains("limited") && over.text().contains("2/h"),
        "{over}"
    );
    let mut other = submission(&relay, &cert).await;
    other
        .expect(&format!("AUTH PLAIN {}", plain("billing", PASSWORD)), 235)
        .await;
    other.expect("MAIL FROM:<a@billing.test>", 250).await;
}

#[tokio::test]
async fn auth_takes_an_initial_response_longer_than_a_command_line() {
    let cert = TestCert::generate();
    let relay = relay(&cert, "10.0.0.0/8", "").await;
    let mut c = submission(&relay, &cert).await;
    // 9,000 octets of password: 12,000 of base64, over the 4,096 of a command line but
    // within RFC 4954's 12,288.
    let long = "p".repeat(9_000);
    c.expect_esc(
        &format!("AUTH PLAIN {}", plain("billing", &long)),
        535,
        "5.7.8",
    )
    .await;
    // Other commands keep their limit.
    let too_long = c.command(&format!("NOOP {}", "x".repeat(5_000))).await;
    assert_eq!(too_long.code, 500, "{too_long}");
    c.expect(&format!("AUTH PLAIN {}", plain("billing", PASSWORD)), 235)
        .await;
}

#[tokio::test]
async fn a_route_with_users_takes_only_the_authenticated_users_mail() {
    let cert = TestCert::generate();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    write_users(&users);
    let (billing_out, rest_out) = (dir.path().join("billing-out"), dir.path().join("rest-out"));
    let config = TestConfig::new(dir.path()).toml(&format!(
        "[server]\n{}trusted_networks = [\"127.0.0.0/8\"]\n\
         [auth]\nusers_file = \"{}\"\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n\
         {}{}\
         [[route]]\nname = \"billing\"\nusers = [\"billing\"]\nupstreams = [\"billing-out\"]\n\
         [[route]]\nname = \"rest\"\nupstreams = [\"rest-out\"]\n",
        cert.server_toml(),
        users.display(),
        support::config::upstream(
            "billing-out",
            &format!("maildir:{}", billing_out.display()),
            ""
        ),
        support::config::upstream("rest-out", &format!("maildir:{}", rest_out.display()), ""),
    ));
    let relay = Relay::start(config, dir).await;

    // The same trusted client: once authenticated as billing, once not.
    let mut c = submission(&relay, &cert).await;
    c.expect(&format!("AUTH PLAIN {}", plain("billing", PASSWORD)), 235)
        .await;
    let content = "From: <a@billing.test>\r\nSubject: billing\r\n\r\nhi\r\n";
    c.send_content("a@billing.test", &["customer@example.net"], content)
        .await;
    let mut c = submission(&relay, &cert).await;
    let content = "From: <a@billing.test>\r\nSubject: trusted\r\n\r\nhi\r\n";
    c.send_content("a@billing.test", &["customer@example.net"], content)
        .await;

    let subjects = |dir: &Path| -> Vec<String> {
        support::list_maildir(dir)
            .iter()
            .filter_map(|m| header(&m.text(), "Subject"))
            .collect()
    };
    support::wait_for("both messages delivered", || async {
        (subjects(&billing_out).len() + subjects(&rest_out).len() == 2).then_some(())
    })
    .await;
    assert_eq!(subjects(&billing_out), ["billing"]);
    assert_eq!(subjects(&rest_out), ["trusted"]);
}

#[tokio::test]
async fn implicit_tls_works_behind_a_proxy_protocol_header() {
    use tokio::io::AsyncWriteExt as _;
    let cert = TestCert::generate();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    write_users(&users);
    let config = TestConfig::new(dir.path()).toml(&format!(
        "[server]\n{}trusted_networks = [\"10.0.0.0/8\"]\n\
         proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
         [auth]\nusers_file = \"{}\"\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"implicit\"\n",
        cert.server_toml(),
        users.display()
    ));
    let mut relay = Relay::start(config, dir).await;
    // The header claims a trusted client; the TLS handshake follows it at once, so
    // the relay reads the start of the handshake together with the header.
    let mut tcp = TcpStream::connect(relay.addrs()[1]).await.unwrap();
    tcp.write_all(b"PROXY TCP4 10.1.2.3 127.0.0.1 40000 465\r\n")
        .await
        .unwrap();
    let mut c = tls(&cert, tcp).await;
    c.greeting().await;
    c.expect("EHLO app.test", 250).await;
    let content = "From: <app@example.com>\r\nSubject: proxied\r\n\r\nhi\r\n";
    c.send_content("app@example.com", &["customer@example.net"], content)
        .await;
    c.expect("QUIT", 221).await;
    let messages = relay.finish(1).await;
    let received = header(&messages[0].text(), "Received").unwrap();
    assert!(received.contains("[10.1.2.3]"), "{received}");
}
