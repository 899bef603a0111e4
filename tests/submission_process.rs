//! Authenticated submission as an operator runs it: `smarthost user add` while the relay
//! runs, SIGHUP, then Python's smtplib (a real client) logs in on the STARTTLS and the
//! implicit-TLS listener. The relay logs at trace level, and neither the password nor
//! its hash nor the base64 AUTH response may show up in that log (issue 14).

pub mod support;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use support::process::{Daemon, Smarthost};
use support::{TestCert, TestConfig, free_port, list_maildir};

const FIRST_PASSWORD: &str = "first-password-not-used";
const PASSWORD: &str = "s3cret-for-the-smtplib-test";

fn user_add(config: &Path, cwd: &Path, name: &str, password: &str, sender: &str) {
    let config = config.display().to_string();
    let run = Smarthost::new(
        &["user", "add", name, "--sender", sender, "-c", &config],
        cwd,
    )
    .stdin(format!("{password}\n").as_bytes())
    .run();
    assert_eq!(run.code, Some(0), "{run:?}");
}

#[test]
fn a_user_added_while_the_relay_runs_sends_with_smtplib_after_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate();
    let (starttls_port, implicit_port) = (free_port(), free_port());
    let config = TestConfig::new(dir.path())
        .toml(&format!(
            "[server]\n{}trusted_networks = [\"10.0.0.0/8\"]\n\
             [auth]\nusers_file = \"users.toml\"\n\
             [[listener]]\naddress = \"127.0.0.1:{starttls_port}\"\ntls = \"starttls\"\n\
             [[listener]]\naddress = \"127.0.0.1:{implicit_port}\"\ntls = \"implicit\"\n",
            cert.server_toml()
        ))
        .write();
    // The users file must exist at start: one user is there before the relay starts.
    user_add(&config, dir.path(), "first", FIRST_PASSWORD, "*@first.test");
    let daemon = Smarthost::serve(&config, dir.path())
        .env("SMARTHOST_LOG", "trace")
        .start();

    user_add(&config, dir.path(), "app", PASSWORD, "*@app.test");
    let status = Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    daemon.wait_for_log("configuration reloaded");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/smtplib_submission.py");
    let cafile = cert.cert_file().display().to_string();
    let out = Command::new("timeout")
        .arg("60")
        .arg("python3")
        .arg(&script)
        .args(["127.0.0.1", &starttls_port.to_string()])
        .args([&implicit_port.to_string(), "app", PASSWORD, &cafile])
        .output()
        .expect("run python3");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "smtplib failed: {}\n{}\n--- relay log ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );

    let maildir = dir.path().join("maildir");
    daemon.wait_until("both messages delivered", || {
        (list_maildir(&maildir).len() == 2).then_some(())
    });
    let log = check_log(&daemon);
    assert!(
        log.contains("user=app"),
        "the accepted line names the user\n{log}"
    );
    // The check of the log means something only if the detailed levels were on.
    assert!(log.contains("STARTTLS done"), "no debug lines\n{log}");
    daemon.kill();
}

/// The log after the run: it names the user, never a password, hash or AUTH response.
fn check_log(daemon: &Daemon) -> String {
    let log = daemon.log();
    let encode = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let secrets = [
        PASSWORD.to_owned(),
        encode(&format!("\0app\0{PASSWORD}")),
        encode(PASSWORD),
        encode("not the password"),
        "$argon2".to_owned(),
    ];
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "the log holds a secret ({secret})\n{log}"
        );
    }
    log
}
