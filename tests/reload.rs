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
