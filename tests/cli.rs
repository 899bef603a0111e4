//! The `smarthost` binary: configuration errors, `check`, and `send`.
//!
//! Every child runs in a temp directory through [`support::process::Smarthost`]: the `SMARTHOST*`
//! variables of the test environment removed, killed if it has not exited after
//! [`support::CHILD_GUARD`].

pub mod support;

use std::path::Path;

use support::process::{Run, Smarthost};
use support::{TestConfig, start_relay};

/// Run `smarthost ARGS` in `cwd` with `env` added, logging warnings and errors only.
fn smarthost(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Run {
    Smarthost::new(args, cwd)
        .env("SMARTHOST_LOG", "warn")
        .envs(env)
        .run()
}

/// A config file in a fresh temp dir: the test defaults plus `toml`.
fn config(toml: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = TestConfig::new(dir.path()).toml(toml).write();
    (dir, path)
}

/// Assert that `serve -c FILE` refuses the configuration with exit code 2 and a message
/// containing every one of `needles` (and the file name).
fn assert_serve_refuses(toml: &str, needles: &[&str]) {
    let (dir, path) = config(toml);
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

#[test]
fn serve_refuses_an_unknown_key_naming_it_and_the_file() {
    assert_serve_refuses(
        "[server]\nmax_conections = 5\n",
        &["server.max_conections", "unknown key"],
    );
}

#[test]
fn serve_refuses_an_unknown_delivery_mode_listing_the_valid_ones() {
    assert_serve_refuses(
        "[delivery]\nmode = \"fast\"\n",
        &["delivery.mode", "\"fast\"", "\"queue\"", "\"passthrough\""],
    );
}

#[test]
fn serve_refuses_a_listen_address_that_is_not_one() {
    assert_serve_refuses(
        "[server]\nlisten = [\"nope\"]\n",
        &["server.listen", "\"nope\""],
    );
}

#[test]
fn serve_refuses_an_unknown_environment_override_naming_the_variable() {
    let (dir, path) = config("");
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
    let (dir, path) = config("");
    let run = smarthost(
        &["check", "-c", &path.display().to_string()],
        &[],
        dir.path(),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("config ok"), "{run:?}");
    assert!(run.stdout.contains("upstream maildir"), "{run:?}");
    assert!(dir.path().join("maildir/new").is_dir(), "{run:?}");
}

#[test]
fn check_exits_2_on_an_invalid_config() {
    let (dir, path) = config("[server]\nbogus = 1\n");
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
