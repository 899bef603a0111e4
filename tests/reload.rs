//! SIGHUP reload: new upstreams, trusted networks and keys take effect without a
//! restart; a bad new configuration is refused and the running one kept.

pub mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use smarthost::ops::send::{SendRequest, send};
use support::process::{Daemon, wait_until};
use support::{HANG_GUARD, TestConfig, list_maildir};

fn request(server: std::net::SocketAddr, subject: &str) -> SendRequest {
    SendRequest {
        server: server.to_string(),
        from: "app@example.com".into(),
        to: vec!["user@example.net".into()],
        subject: subject.into(),
        body: "reload test".into(),
        raw: None,
        helo: "test".into(),
        timeout: Duration::from_secs(10),
    }
}

/// The test configuration rooted in `dir`, delivering into `maildir`, plus `extra`.
fn config(dir: &Path, maildir: &Path, extra: &str) -> smarthost::config::Config {
    TestConfig::new(dir).maildir(maildir).toml(extra).load()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_switches_upstreams_and_trust_and_refuses_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    let relay = smarthost::start(Arc::new(config(dir.path(), &first, "")))
        .await
        .unwrap();
    let addr = relay.local_addrs()[0];

    send(&request(addr, "one")).await.unwrap();
    wait_until("message one in the first maildir", || {
        (list_maildir(&first).len() == 1).then_some(())
    });

    let notes = relay.reload(config(dir.path(), &second, "")).await.unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    send(&request(addr, "two")).await.unwrap();
    wait_until("message two in the second maildir", || {
        (list_maildir(&second).len() == 1).then_some(())
    });
    assert_eq!(list_maildir(&first).len(), 1);

    // A key that does not exist (and may not be generated) makes the reload fail as a whole.
    let bad = format!(
        "[[dkim]]\ndomain = \"example.com\"\nkey_file = \"{}/missing.pem\"\n",
        dir.path().display()
    );
    let err = relay
        .reload(config(dir.path(), &first, &bad))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
    send(&request(addr, "three")).await.unwrap();
    wait_until("message three still in the second maildir", || {
        (list_maildir(&second).len() == 2).then_some(())
    });

    // Trusted networks apply to new connections.
    let mut cfg = config(dir.path(), &second, "");
    cfg.server.trusted_networks = vec!["10.0.0.0/8".parse().unwrap()];
    relay.reload(cfg).await.unwrap();
    let err = send(&request(addr, "four")).await.unwrap_err().to_string();
    assert!(
        err.contains("554") && err.contains("trusted_networks"),
        "{err}"
    );
    relay.shutdown().await;
}

#[test]
fn sighup_reloads_the_file_and_keeps_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    let path = TestConfig::new(dir.path()).maildir(&first).write();
    let daemon = Daemon::start(&path, dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // A session opened before the reload stays usable after it.
    let addr = daemon.addr();
    let mut open = std::net::TcpStream::connect_timeout(&addr, HANG_GUARD).unwrap();
    open.set_read_timeout(Some(HANG_GUARD)).unwrap();
    open.set_write_timeout(Some(HANG_GUARD)).unwrap();
    let mut greeting = [0u8; 64];
    let _ = std::io::Read::read(&mut open, &mut greeting).unwrap();

    TestConfig::new(dir.path()).maildir(&second).write();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    daemon.wait_for_log("configuration reloaded");

    rt.block_on(send(&request(addr, "after reload"))).unwrap();
    wait_until("the message in the new maildir", || {
        (list_maildir(&second).len() == 1).then_some(())
    });
    assert!(list_maildir(&first).is_empty());

    std::io::Write::write_all(&mut open, b"NOOP\r\n").unwrap();
    let mut reply = [0u8; 64];
    let n = std::io::Read::read(&mut open, &mut reply).unwrap();
    assert!(
        reply[..n].starts_with(b"250"),
        "{}",
        String::from_utf8_lossy(&reply[..n])
    );

    // A broken file is refused; the relay keeps going on the last good configuration.
    std::fs::write(&path, "[server\n").unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    daemon.wait_for_log("reload refused, the running configuration stays");
    rt.block_on(send(&request(addr, "after a bad reload")))
        .unwrap();
    wait_until("the message in the new maildir", || {
        (list_maildir(&second).len() == 2).then_some(())
    });
    daemon.kill();
}

/// Send a message with an `X-Mailer` field and `subject` on `c`; it must be accepted.
async fn submit(c: &mut support::SmtpClient<tokio::net::TcpStream>, subject: &str) {
    let content = format!(
        "{}X-Mailer: app 1.0\r\nSubject: {subject}\r\n\r\nbody\r\n",
        support::STRICT_HEAD
    );
    let reply = c
        .send_message("app@example.com", &["user@example.net"], content.as_bytes())
        .await;
    assert_eq!(reply.code, 250, "{subject}: {reply}");
}

/// Header rules and `[transform] hide_client` reload for new sessions; a session opened
/// before the reload keeps the rules it started with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_header_rules_and_hide_client_to_new_sessions() {
    use support::{SmtpClient, header};
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("out");
    let relay = smarthost::start(Arc::new(config(dir.path(), &maildir, "")))
        .await
        .unwrap();
    let addr = relay.local_addrs()[0];
    let open = || async move {
        let mut c = SmtpClient::connect(addr).await;
        c.greeting().await;
        c.expect("EHLO app.internal", 250).await;
        c
    };
    let mut before = open().await;
    submit(&mut before, "before").await;

    let rules = "[[header_rule]]\naction = \"remove\"\nname = \"x-mailer\"\n[transform]\nhide_client = true\n";
    let notes = relay
        .reload(config(dir.path(), &maildir, rules))
        .await
        .unwrap();
    assert!(notes.is_empty(), "both reload without a restart: {notes:?}");
    let mut after = open().await;
    submit(&mut after, "after").await;
    // The session from before the reload keeps its rules.
    submit(&mut before, "old session").await;

    let messages = support::wait_for("three messages delivered", || async {
        let got = list_maildir(&maildir);
        (got.len() == 3).then_some(got)
    })
    .await;
    relay.shutdown().await;
    let by_subject = |subject: &str| {
        messages
            .iter()
            .map(|m| m.text())
            .find(|t| header(t, "Subject").as_deref() == Some(subject))
            .unwrap_or_else(|| panic!("no message {subject:?}: {messages:#?}"))
    };
    for subject in ["before", "old session"] {
        let text = by_subject(subject);
        assert_eq!(
            header(&text, "X-Mailer").as_deref(),
            Some("app 1.0"),
            "{text}"
        );
        assert!(
            text.contains("Received: from app.internal ([127.0.0.1])"),
            "{text}"
        );
    }
    let text = by_subject("after");
    assert_eq!(header(&text, "X-Mailer"), None, "{text}");
    assert!(text.contains("Received: from unknown\r\n\tby "), "{text}");
    assert!(
        !text.contains("127.0.0.1") && !text.contains("app.internal"),
        "{text}"
    );
}
