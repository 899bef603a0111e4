//! What `smarthost serve` says when it starts: the log is never silenced by an empty
//! `SMARTHOST_LOG`, and a relay started with its open-relay guard off says so every time.

pub mod support;

use support::TestConfig;
use support::process::Smarthost;

#[test]
fn an_empty_smarthost_log_falls_back_to_info() {
    let dir = tempfile::tempdir().unwrap();
    let path = TestConfig::new(dir.path()).write();
    // `Smarthost::start` itself waits for the info line "smarthost accepting mail".
    let daemon = Smarthost::serve(&path, dir.path())
        .envs(&[("SMARTHOST_LOG", "")])
        .start();
    let log = daemon.kill();
    assert!(log.contains("config: server"), "{log}");
}

#[test]
fn an_invalid_smarthost_log_is_named_and_info_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let path = TestConfig::new(dir.path()).write();
    let daemon = Smarthost::serve(&path, dir.path())
        .envs(&[("SMARTHOST_LOG", "verbose=on=2")])
        .start();
    let log = daemon.kill();
    assert!(
        log.contains("SMARTHOST_LOG=\"verbose=on=2\" is not a log filter"),
        "{log}"
    );
}

#[test]
fn allow_open_relay_warns_at_every_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = TestConfig::new(dir.path()).write();
    let env = [
        ("SMARTHOST__SERVER__TRUSTED_NETWORKS", "0.0.0.0/0"),
        ("SMARTHOST__SERVER__ALLOW_OPEN_RELAY", "true"),
    ];
    for _ in 0..2 {
        let daemon = Smarthost::serve(&path, dir.path()).envs(&env).start();
        let log = daemon.kill();
        let warning = log
            .lines()
            .find(|l| l.contains("server.allow_open_relay = true: the open-relay guard is off"))
            .unwrap_or_else(|| panic!("no warning in\n{log}"));
        assert!(warning.contains("WARN"), "{warning}");
    }
}
