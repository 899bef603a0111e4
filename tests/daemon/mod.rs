//! The real `smarthost` binary as a child process, for the tests that need a process
//! boundary: a crash (`SIGKILL` through [`std::process::Child::kill`]), a second relay
//! on the same spool, and the `queue` commands run against a spool another process owns.
//!
//! - [`Daemon`] runs `smarthost serve -c FILE`, collects its log (stderr) in the
//!   background, learns the listening address from the startup log line, and is killed
//!   when dropped, so a failing test never leaves a relay behind.
//! - [`smarthost`] runs a one-shot command (`queue list`, a `serve` that must refuse to
//!   start) and returns its exit code and output; a child still running after
//!   [`CHILD_GUARD`] is killed and fails the test.
//!
//! Every child runs with the `SMARTHOST*` variables of the test environment removed and
//! `SMARTHOST_LOG=info`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Upper bound for one run of the binary, and for any wait on a daemon's log; only a
/// guard against hangs.
pub const CHILD_GUARD: Duration = Duration::from_secs(20);

/// The output of a finished command.
pub struct Run {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error (the log).
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn command(args: &[&str], cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smarthost"));
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SMARTHOST") {
            cmd.env_remove(key);
        }
    }
    cmd.env("SMARTHOST_LOG", "info");
    cmd
}

/// Run `smarthost ARGS` in `cwd` to completion (bounded by [`CHILD_GUARD`]).
pub fn smarthost(args: &[&str], cwd: &Path) -> Run {
    let mut child = command(args, cwd).spawn().expect("spawn smarthost");
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for smarthost") {
            break Some(status);
        }
        if started.elapsed() > CHILD_GUARD {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let run = Run {
        code: status.and_then(|s| s.code()),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    assert!(
        status.is_some(),
        "smarthost {args:?} still running after {CHILD_GUARD:?}; killed\n{run:?}"
    );
    run
}

/// [`smarthost`] off the async reactor (an in-process relay keeps running meanwhile).
pub async fn smarthost_async(args: &[&str], cwd: &Path) -> Run {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let cwd = cwd.to_owned();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        smarthost(&args, &cwd)
    })
    .await
    .expect("smarthost runner")
}

#[derive(Default)]
struct Log {
    text: String,
    closed: bool,
}

/// A running `smarthost serve`.
pub struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: Arc<(Mutex<Log>, Condvar)>,
    config: PathBuf,
}

impl Daemon {
    /// Start `smarthost serve -c CONFIG` in `cwd` and wait until it accepts mail.
    pub fn start(config: &Path, cwd: &Path) -> Daemon {
        Daemon::start_with_env(config, cwd, &[])
    }

    /// [`Daemon::start`] with `env` set on top of the test environment.
    pub fn start_with_env(config: &Path, cwd: &Path, env: &[(&str, &str)]) -> Daemon {
        let file = config.display().to_string();
        let mut child = command(&["serve", "-c", &file], cwd)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn smarthost serve");
        let log = Arc::new((Mutex::new(Log::default()), Condvar::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader.read_until(b'\n', &mut line).unwrap_or(0);
                let (lock, cond) = &*sink;
                let mut log = lock.lock().unwrap();
                if n == 0 {
                    log.closed = true;
                    cond.notify_all();
                    return;
                }
                log.text.push_str(&String::from_utf8_lossy(&line));
                cond.notify_all();
            }
        });
        let mut daemon = Daemon {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            config: config.to_owned(),
        };
        let line = daemon.wait_for_log("smarthost accepting mail");
        daemon.addr = parse_listen(&line)
            .unwrap_or_else(|| panic!("no listen address in {line:?}\n{}", daemon.log()));
        daemon
    }

    /// The process id (to send signals).
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The SMTP listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration file it runs with.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.0.lock().unwrap().text.clone()
    }

    /// Wait until a log line contains `needle`; returns that line. Panics (with the log)
    /// if the process ends or [`CHILD_GUARD`] passes first.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + CHILD_GUARD;
        let (lock, cond) = &*self.log;
        let mut log = lock.lock().unwrap();
        loop {
            if let Some(line) = log.text.lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            let now = Instant::now();
            if log.closed || now >= deadline {
                panic!(
                    "smarthost serve never logged {needle:?} ({}):\n{}",
                    if log.closed {
                        "it exited"
                    } else {
                        "hang guard"
                    },
                    log.text
                );
            }
            log = cond.wait_timeout(log, deadline - now).unwrap().0;
        }
    }

    /// [`wait_until`], printing this relay's log if the wait fails.
    pub fn wait_until<T>(&self, what: &str, check: impl FnMut() -> Option<T>) -> T {
        poll(check).unwrap_or_else(|()| {
            panic!(
                "hang guard: {what} not within {CHILD_GUARD:?}\n--- relay log ---\n{}",
                self.log()
            )
        })
    }

    /// `SIGKILL` now, as a crash or the OOM killer would; returns the log.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The pipe closes with the process; wait for the reader to see the end.
        let deadline = Instant::now() + CHILD_GUARD;
        let (lock, cond) = &*self.log;
        let mut log = lock.lock().unwrap();
        while !log.closed && Instant::now() < deadline {
            log = cond
                .wait_timeout(log, Duration::from_millis(100))
                .unwrap()
                .0;
        }
        log.text.clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `... listen=[127.0.0.1:4321] ...` → the first address.
fn parse_listen(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listen=[")? + "listen=[".len()..];
    let list = &rest[..rest.find(']')?];
    list.split(", ").next()?.parse().ok()
}

/// Write `relay.toml` into `dir`: listening on 127.0.0.1:0, spool in `dir/spool`, then
/// `rest` (whole TOML sections, at least one `[[upstream]]`).
pub fn write_config(dir: &Path, rest: &str) -> PathBuf {
    let path = dir.join("relay.toml");
    let text = format!(
        "[server]\nhostname = \"relay.test\"\nlisten = [\"127.0.0.1:0\"]\nshutdown_grace = \"2s\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n\n[spool]\ndir = \"{}\"\nmax_disk_usage = 100\n\n{rest}",
        dir.join("spool").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A `maildir:` upstream table delivering into `dir`.
pub fn maildir_upstream(dir: &Path) -> String {
    format!(
        "[[upstream]]\nname = \"outbox\"\nurl = \"maildir:{}\"\n",
        dir.display()
    )
}

/// The content of every file in `<maildir>/new/`.
pub fn maildir_messages(maildir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(maildir.join("new")) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.map(|e| e.expect("read new/").path()).collect();
    paths.sort();
    paths
        .iter()
        .map(|p| String::from_utf8_lossy(&std::fs::read(p).expect("read message")).into_owned())
        .collect()
}

/// The value of the first `name:` header in `message`.
pub fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    let head = message.split("\r\n\r\n").next()?;
    head.split("\r\n").find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Poll `check` every 20 ms until it returns `Some`, for at most [`CHILD_GUARD`];
/// `what` names the wait in the panic.
pub fn wait_until<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    poll(check).unwrap_or_else(|()| panic!("hang guard: {what} not within {CHILD_GUARD:?}"))
}

fn poll<T>(mut check: impl FnMut() -> Option<T>) -> Result<T, ()> {
    let deadline = Instant::now() + CHILD_GUARD;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
