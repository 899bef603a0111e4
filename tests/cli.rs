//! The `smarthost` binary: configuration errors, `check`, `send`, and `user`.
//!
//! Every child runs in a temp directory through [`support::process::Smarthost`]: the `SMARTHOST*`
//! variables of the test environment removed, killed if it has not exited after
//! [`support::CHILD_GUARD`].

pub mod support;

use std::path::Path;

use support::process::{Daemon, Run, Smarthost};
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

/// The password the `user` tests set; it must never appear in the binary's output.
const PASSWORD: &str = "correct horse battery";

/// A config with `[auth] users_file = "users.toml"` (relative to the temp dir, where
/// the commands run); the dir, the config's path as an argument, and the users file.
fn users_config() -> (tempfile::TempDir, String, std::path::PathBuf) {
    let (dir, path) = config("[auth]\nusers_file = \"users.toml\"\n");
    let users = dir.path().join("users.toml");
    (dir, path.display().to_string(), users)
}

/// `smarthost ARGS` with `input` on standard input; asserts that no output holds
/// [`PASSWORD`].
fn smarthost_stdin(args: &[&str], input: &str, cwd: &Path) -> Run {
    let run = Smarthost::new(args, cwd)
        .env("SMARTHOST_LOG", "warn")
        .stdin(input.as_bytes())
        .run();
    assert!(
        !run.stdout.contains(PASSWORD) && !run.stderr.contains(PASSWORD),
        "the password was printed\n{run:?}"
    );
    run
}

/// `user add NAME --sender *@example.com EXTRA... -c CONFIG` with `password` on stdin.
fn user_add(config: &str, cwd: &Path, name: &str, password: &str, extra: &[&str]) -> Run {
    let mut args = vec!["user", "add", name, "--sender", "*@example.com"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-c", config]);
    smarthost_stdin(&args, &format!("{password}\n"), cwd)
}

#[test]
fn user_add_reads_the_password_from_stdin_and_user_list_shows_the_user() {
    use std::os::unix::fs::PermissionsExt as _;
    let (dir, config, users) = users_config();
    let extra = ["--sender", "ops@example.net", "--rate-limit", "100/min"];
    let run = user_add(&config, dir.path(), "billing", PASSWORD, &extra);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout.contains("reload (SIGHUP) a running relay"),
        "{run:?}"
    );

    let mode = std::fs::metadata(&users).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the users file is private");
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(!text.contains(PASSWORD), "no plaintext password: {text}");
    assert!(text.contains("$argon2id$"), "{text}");
    let loaded = smarthost::config::Users::load(&users).unwrap();
    assert!(loaded.verify("billing", PASSWORD));

    let run = smarthost_stdin(&["user", "list", "-c", &config], "", dir.path());
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains("billing\tallowed_senders=*@example.com,ops@example.net\trate_limit=100/min"),
        "{run:?}"
    );
    assert!(!run.stdout.contains("argon2"), "never the hash: {run:?}");
}

#[test]
fn user_add_refuses_a_duplicate_unless_replace() {
    let (dir, config, users) = users_config();
    let run = user_add(&config, dir.path(), "billing", PASSWORD, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let run = user_add(&config, dir.path(), "billing", "other password", &[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("exists already"), "{run:?}");
    assert!(run.stderr.contains("--replace"), "{run:?}");
    let loaded = smarthost::config::Users::load(&users).unwrap();
    assert!(loaded.verify("billing", PASSWORD), "unchanged");

    let run = user_add(&config, dir.path(), "billing", "new one", &["--replace"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let loaded = smarthost::config::Users::load(&users).unwrap();
    assert_eq!(loaded.len(), 1);
    assert!(loaded.verify("billing", "new one"));
    assert!(!loaded.verify("billing", PASSWORD));
}

#[test]
fn user_add_refuses_an_empty_password_and_a_bad_sender() {
    let (dir, config, users) = users_config();
    let run = user_add(&config, dir.path(), "billing", "", &[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("the password is empty"), "{run:?}");
    let run = user_add(
        &config,
        dir.path(),
        "billing",
        PASSWORD,
        &["--sender", "example.com"],
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("--sender: `example.com` has no `@`"),
        "{run:?}"
    );
    assert!(!users.exists(), "nothing written");
}

#[test]
fn user_delete_removes_the_user_and_refuses_an_unknown_one() {
    let (dir, config, users) = users_config();
    for name in ["billing", "alerts"] {
        let run = user_add(&config, dir.path(), name, PASSWORD, &[]);
        assert_eq!(run.code, Some(0), "{run:?}");
    }
    let run = smarthost_stdin(
        &["user", "delete", "billing", "-c", &config],
        "",
        dir.path(),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("reload (SIGHUP)"), "{run:?}");
    let loaded = smarthost::config::Users::load(&users).unwrap();
    assert!(loaded.get("billing").is_none() && loaded.get("alerts").is_some());

    let run = smarthost_stdin(
        &["user", "delete", "billing", "-c", &config],
        "",
        dir.path(),
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("no user \"billing\""), "{run:?}");
}

#[test]
fn user_exits_2_on_an_invalid_config_or_one_without_a_users_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.toml").display().to_string();
    let run = smarthost_stdin(&["user", "list", "-c", &missing], "", dir.path());
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains(&missing), "{run:?}");

    let (dir, path) = config("[auth]\nmax_failures = 0\n");
    let path = path.display().to_string();
    let run = user_add(&path, dir.path(), "billing", PASSWORD, &[]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("auth.max_failures"), "{run:?}");

    let (dir, path) = config("");
    let run = user_add(&path.display().to_string(), dir.path(), "b", PASSWORD, &[]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("[auth] users_file"), "{run:?}");
}

#[test]
fn serve_refuses_a_missing_or_malformed_users_file_with_the_fix() {
    let (dir, config, users) = users_config();
    let run = smarthost(&["serve", "-c", &config], &[], dir.path());
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("users.toml"), "{run:?}");
    assert!(run.stderr.contains("smarthost user add"), "{run:?}");

    std::fs::write(&users, "[[user]]\nname = \"billing\"\npassword_hash = \"x\"\nallowed_senders = [\"*@example.com\"]\n").unwrap();
    let run = smarthost(&["serve", "-c", &config], &[], dir.path());
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr
            .contains("user[0] \"billing\": `password_hash`: is not a PHC string"),
        "{run:?}"
    );
}

#[test]
fn serve_starts_with_a_valid_users_file() {
    let (dir, config, _) = users_config();
    let run = user_add(&config, dir.path(), "billing", PASSWORD, &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let relay = Daemon::start(Path::new(&config), dir.path());
    let line = relay.wait_for_log("config: auth");
    assert!(line.contains("users=1"), "{line}");
    let run = relay.stop();
    assert_eq!(run.code, Some(0), "{run:?}");
}
