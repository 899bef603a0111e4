//! A relay configured by environment variables alone (the container case): no file, no
//! `SMARTHOST_CONFIG`, only `SMARTHOST__*` over the embedded default. One message sent
//! with `smarthost send` reaches an implicit-TLS upstream with AUTH, From rewritten to
//! the upstream's sender, its header rules applied, the client left out of `Received`
//! and DKIM-signed for the configured domain.

pub mod fake_upstream;
pub mod support;

use std::path::Path;

use fake_upstream::pki::TestCa;
use fake_upstream::{FakeUpstream, Mode};
use support::process::Smarthost;
use support::{free_port, header};

const USER: &str = "relay@example.org";
const PASSWORD: &str = "env-only-pw-5521";

/// The binary with nothing of the test's environment but `PATH`, plus `vars`.
fn smarthost(args: &[&str], cwd: &Path, vars: &[(&str, String)]) -> Smarthost {
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Smarthost::new(args, cwd).env_clear().envs(&vars)
}

#[test]
fn environment_variables_alone_configure_a_working_relay() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ca = TestCa::generate();
    let fake = rt.block_on(
        FakeUpstream::builder(Mode::Implicit)
            .cert(&ca.leaf("localhost"))
            .auth(&["PLAIN", "LOGIN"])
            .account(USER, PASSWORD)
            .start(),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = free_port();
    let vars = [
        ("SMARTHOST__SERVER__LISTEN", format!("127.0.0.1:{listen}")),
        ("SMARTHOST__SERVER__TRUSTED_NETWORKS", "127.0.0.0/8".into()),
        ("SMARTHOST__SERVER__SHUTDOWN_GRACE", "2s".into()),
        ("SMARTHOST__SPOOL__DIR", "queue".into()),
        ("SMARTHOST__METRICS__LISTEN", "off".into()),
        (
            "SMARTHOST__UPSTREAM__0__URL",
            format!("smtps://localhost:{}", fake.port()),
        ),
        (
            "SMARTHOST__UPSTREAM__0__CA_FILE",
            ca.ca_file().display().to_string(),
        ),
        ("SMARTHOST__UPSTREAM__0__USERNAME", USER.into()),
        ("SMARTHOST__UPSTREAM__0__PASSWORD", PASSWORD.into()),
        ("SMARTHOST__UPSTREAM__0__SENDER", USER.into()),
        ("SMARTHOST__DKIM__0__DOMAIN", "example.org".into()),
        ("SMARTHOST__DKIM__0__SELECTOR", "envsel".into()),
        (
            "SMARTHOST__DKIM__0__KEY_FILE",
            "keys/example.org.pem".into(),
        ),
        ("SMARTHOST__DKIM__0__GENERATE", "true".into()),
        // Header rules as a list like the others: without an index, entry 0.
        ("SMARTHOST__HEADER_RULE__ACTION", "add".into()),
        ("SMARTHOST__HEADER_RULE__NAME", "X-Added".into()),
        ("SMARTHOST__HEADER_RULE__VALUE", "1".into()),
        ("SMARTHOST__HEADER_RULE__1__ACTION", "remove".into()),
        ("SMARTHOST__HEADER_RULE__1__NAME", "mime-version".into()),
        ("SMARTHOST__TRANSFORM__HIDE_CLIENT", "true".into()),
    ];

    let relay = smarthost(&["serve"], dir.path(), &vars).start();
    assert_eq!(relay.addr().port(), listen, "{}", relay.log());
    let log = relay.log();
    assert!(log.contains("the embedded default configuration"), "{log}");

    let sent = smarthost(
        &[
            "send",
            "--server",
            &format!("127.0.0.1:{listen}"),
            "--from",
            "app@example.com",
            "--to",
            "user@example.net",
            "--subject",
            "env only",
            "--timeout",
            "15",
        ],
        dir.path(),
        &[],
    )
    .run();
    assert_eq!(sent.code, Some(0), "{sent:?}");
    assert!(sent.stdout.starts_with("250"), "{sent:?}");

    relay.wait_for_log("delivered");
    let out = relay.stop();
    assert_eq!(out.code, Some(0), "{out:?}");

    let messages = fake.messages();
    assert_eq!(messages.len(), 1, "{out:?}");
    let message = &messages[0];
    assert!(message.tls, "not over TLS");
    assert_eq!(message.user.as_deref(), Some(USER), "no AUTH");
    assert!(message.mail_from.contains(USER), "{}", message.mail_from);
    assert_eq!(message.rcpts, ["user@example.net"]);
    let text = message.text();
    let from = header(&text, "From").expect("From");
    assert!(from.contains(USER), "{from}");
    let signature = header(&text, "DKIM-Signature").expect("DKIM-Signature");
    let tags: String = signature.split_whitespace().collect();
    assert!(tags.contains("d=example.org;"), "{signature}");
    assert!(tags.contains("s=envsel;"), "{signature}");
    assert_eq!(header(&text, "X-Added").as_deref(), Some("1"), "{text}");
    assert_eq!(header(&text, "MIME-Version"), None, "{text}");
    let received = header(&text, "Received").expect("Received");
    assert!(received.starts_with("from unknown"), "{received}");
    assert!(!received.contains("127.0.0.1"), "{received}");
    // The key was generated where the environment said, relative to the working directory.
    assert!(dir.path().join("keys/example.org.pem").is_file());
    assert!(dir.path().join("queue").is_dir());
    // Nothing of the embedded default's Maildir upstream or example.com key was used.
    assert!(!dir.path().join("data").exists(), "{out:?}");
    assert!(!out.stderr.contains(PASSWORD), "{out:?}");
    drop(fake);
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
}
