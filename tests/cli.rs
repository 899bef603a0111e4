//! The `smarthost` binary: configuration errors, `check`, and `send`.
//!
//! Every child runs in a temp directory through [`process::Smarthost`]: the `SMARTHOST*`
//! variables of the test environment removed, killed if it has not exited after
//! [`process::CHILD_GUARD`].

#[path = "support/process.rs"]
pub mod process;
mod support;

use std::path::Path;

use process::{Run, Smarthost, maildir_upstream};
use support::start_relay;

/// Run `smarthost ARGS` in `cwd` with `env` added, logging warnings and errors only.
fn smarthost(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Run {
    Smarthost::new(args, cwd)
        .env("SMARTHOST_LOG", "warn")
        .envs(env)
        .run()
}

/// A config file in a fresh temp dir: `[server]` keys, then the rest.
fn config(server: &str, rest: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    let text = format!(
        "[server]\n{server}\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[spool]\ndir = \"{spool}\"\nmax_disk_usage = 100\n\n{rest}",
        spool = dir.path().join("spool").display()
    );
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Assert that `serve -c FILE` refuses the configuration with exit code 2 and a message
/// containing every one of `needles` (and the file name).
fn assert_serve_refuses(server: &str, rest: &str, needles: &[&str]) {
    let (dir, path) = config(server, rest);
    let file = path.display().to_string();
    let run = smarthost(&["serve", "-c", &file], &[], dir.path());
    assert_eq!(run.code, Some(2), "{run:?}");
    for needle in needles.iter().chain([&file.as_str()]) {
        assert!(
            run.stderr.contains(needle),
            "stderr lacks {needle:?}\n{run:?}"
        );
    }
}

const LISTEN: &str = "listen = [\"127.0.0.1:0\"]";

#[test]
fn serve_refuses_an_unknown_key_naming_it_and_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    assert_serve_refuses(
        &format!("{LISTEN}\nmax_conections = 5"),
        &maildir_upstream(&tmp.path().join("outbox")),
        &["server.max_conections", "unknown key"],
    );
}

#[test]
fn serve_refuses_an_unknown_delivery_mode_listing_the_valid_ones() {
    let tmp = tempfile::tempdir().unwrap();
    assert_serve_refuses(
        LISTEN,
        &format!(
            "[delivery]\nmode = \"fast\"\n\n{}",
            maildir_upstream(&tmp.path().join("outbox"))
        ),
        &["delivery.mode", "\"fast\"", "\"queue\"", "\"passthrough\""],
    );
}

#[test]
fn serve_refuses_a_listen_address_that_is_not_one() {
    let tmp = tempfile::tempdir().unwrap();
    assert_serve_refuses(
        "listen = [\"nope\"]",
        &maildir_upstream(&tmp.path().join("outbox")),
        &["server.listen", "\"nope\""],
    );
}

#[test]
fn serve_refuses_an_unknown_environment_override_naming_the_variable() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, path) = config(LISTEN, &maildir_upstream(&tmp.path().join("outbox")));
    let run = smarthost(
        &["serve", "-c", &path.display().to_string()],
        &[("SMARTHOST__SERVER__BOGUS", "1")],
        dir.path(),
    );
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("SMARTHOST__SERVER__BOGUS"), "{run:?}");
    assert!(run.stderr.contains("server.bogus"), "{run:?}");
}

#[test]
fn serve_refuses_a_missing_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.toml").display().to_string();
    let run = smarthost(&["serve", "-c", &missing], &[], dir.path());
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains(&missing), "{run:?}");
}

#[test]
fn check_passes_a_valid_config_with_a_maildir_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, path) = config(LISTEN, &maildir_upstream(&tmp.path().join("outbox")));
    let run = smarthost(
        &["check", "-c", &path.display().to_string()],
        &[],
        dir.path(),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("config ok"), "{run:?}");
    assert!(run.stdout.contains("upstream outbox"), "{run:?}");
    assert!(tmp.path().join("outbox/new").is_dir(), "{run:?}");
}

#[test]
fn check_exits_2_on_an_invalid_config() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, path) = config(
        &format!("{LISTEN}\nbogus = 1"),
        &maildir_upstream(&tmp.path().join("outbox")),
    );
    let run = smarthost(
        &["check", "-c", &path.display().to_string()],
        &[],
        dir.path(),
    );
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("server.bogus"), "{run:?}");
}

#[tokio::test]
async fn send_submits_a_message_to_a_running_relay() {
    let mut relay = start_relay("").await;
    let server = relay.addr().to_string();
    let cwd = relay.temp_dir().to_owned();
    let run = tokio::task::spawn_blocking(move || {
        smarthost(
            &[
                "send",
                "--server",
                &server,
                "--from",
                "app@example.com",
                "--to",
                "user@example.net",
                "--subject",
                "cli test",
                "--body",
                "sent by the cli test",
            ],
            &[],
            &cwd,
        )
    })
    .await
    .unwrap();
    assert_eq!(run.code, Some(0), "{run:?}");
    let line = run.stdout.lines().next().unwrap_or_default();
    assert!(line.starts_with("250"), "{run:?}");

    let messages = relay.finish(1).await;
    let text = messages[0].text();
    assert!(text.contains("\r\nSubject: cli test\r\n"), "{text}");
    assert!(text.contains("sent by the cli test"), "{text}");
    assert_eq!(messages[0].delivered_to(), ["user@example.net"]);
}
