//! The real `smarthost` binary as a child process, for the tests that need a process
//! boundary: the command line itself, a crash (`SIGKILL`), a reload (`SIGHUP`), a clean
//! stop (`SIGTERM`), a second relay on the same spool, the `queue` commands run against
//! a spool another process owns, and a relay configured by its environment alone.
//!
//! - [`Smarthost`] builds one invocation: arguments, working directory and environment.
//!   Every child runs with the `SMARTHOST*` variables of the test environment removed and
//!   `SMARTHOST_LOG=info` (a test may set its own on top, or start from an empty
//!   environment with [`Smarthost::env_clear`]).
//! - [`Smarthost::run`] (and [`smarthost`], [`smarthost_async`]) runs a one-shot command
//!   (`check`, `send`, `queue list`, a `serve` that must refuse to start) to completion
//!   and returns its [`Run`].
//! - [`Smarthost::start`] (and [`Daemon::start`]) starts a long-running `serve`, collects
//!   both pipes in the background, waits for the startup line and learns the listening
//!   address from it. The process is killed when dropped, so a failing test never leaves
//!   a relay behind.
//!
//! Every wait is bounded by [`CHILD_GUARD`]; hitting it fails the test with what was
//! awaited and the child's output. The bound only protects against hangs.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::CHILD_GUARD;

/// The log line `smarthost serve` writes once it accepts mail.
const STARTED: &str = "smarthost accepting mail";

/// The output of a finished child.
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

/// One invocation of the binary, not started yet.
pub struct Smarthost {
    cmd: Command,
    args: Vec<String>,
    cwd: PathBuf,
    config: Option<PathBuf>,
    /// What the child reads on standard input (none: `/dev/null`).
    stdin: Option<Vec<u8>>,
}

impl Smarthost {
    /// `smarthost ARGS` in `cwd`, with the test's `SMARTHOST*` variables removed and
    /// `SMARTHOST_LOG=info`.
    pub fn new(args: &[&str], cwd: &Path) -> Smarthost {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_smarthost"));
        cmd.args(args).current_dir(cwd);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SMARTHOST") {
                cmd.env_remove(key);
            }
        }
        cmd.env("SMARTHOST_LOG", "info");
        Smarthost {
            cmd,
            args: args.iter().map(|a| a.to_string()).collect(),
            cwd: cwd.to_owned(),
            config: None,
            stdin: None,
        }
    }

    /// Give the child `input` on standard input (a pipe, closed after it).
    pub fn stdin(mut self, input: &[u8]) -> Smarthost {
        self.stdin = Some(input.to_owned());
        self
    }

    /// `smarthost serve -c CONFIG` in `cwd`.
    pub fn serve(config: &Path, cwd: &Path) -> Smarthost {
        let mut serve = Smarthost::new(&["serve", "-c", &config.display().to_string()], cwd);
        serve.config = Some(config.to_owned());
        serve
    }

    /// Set `key=value` on top of the environment.
    pub fn env(mut self, key: &str, value: &str) -> Smarthost {
        self.cmd.env(key, value);
        self
    }

    /// Set every `(key, value)` on top of the environment.
    pub fn envs(mut self, vars: &[(&str, &str)]) -> Smarthost {
        self.cmd.envs(vars.iter().copied());
        self
    }

    /// Remove `key` from the environment.
    pub fn env_remove(mut self, key: &str) -> Smarthost {
        self.cmd.env_remove(key);
        self
    }

    /// Nothing of the test's environment but `PATH` (the container case); set variables
    /// with [`Smarthost::env`] afterwards.
    pub fn env_clear(mut self) -> Smarthost {
        self.cmd.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            self.cmd.env("PATH", path);
        }
        self
    }

    fn spawn(&mut self) -> Proc {
        let stdin = match self.stdin {
            Some(_) => Stdio::piped(),
            None => Stdio::null(),
        };
        let mut child = self
            .cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn smarthost {:?}: {e}", self.args));
        if let (Some(input), Some(mut pipe)) = (self.stdin.take(), child.stdin.take()) {
            // A thread, so a child that does not read cannot block the test; the pipe
            // closes when the thread ends.
            std::thread::spawn(move || {
                let _ = std::io::Write::write_all(&mut pipe, &input);
            });
        }
        Proc::collect(child, self.args.clone())
    }

    /// Run to completion (bounded by [`CHILD_GUARD`]; a child still running then is
    /// killed and fails the test).
    pub fn run(mut self) -> Run {
        self.spawn().wait()
    }

    /// [`Smarthost::run`] off the async reactor (an in-process relay keeps running
    /// meanwhile).
    pub async fn run_async(self) -> Run {
        tokio::task::spawn_blocking(move || self.run())
            .await
            .expect("smarthost runner")
    }

    /// Start a `serve` and wait until it accepts mail (it logs [`STARTED`]).
    pub fn start(mut self) -> Daemon {
        let proc = self.spawn();
        let line = proc.wait_for_log(STARTED);
        let addr = listen_addr(&line)
            .unwrap_or_else(|| panic!("no listen address in {line:?}\n{}", proc.log()));
        Daemon {
            proc,
            addr,
            cwd: self.cwd,
            config: self.config,
        }
    }
}

/// Run `smarthost ARGS` in `cwd` to completion; see [`Smarthost::run`].
pub fn smarthost(args: &[&str], cwd: &Path) -> Run {
    Smarthost::new(args, cwd).run()
}

/// [`smarthost`] off the async reactor.
pub async fn smarthost_async(args: &[&str], cwd: &Path) -> Run {
    Smarthost::new(args, cwd).run_async().await
}

/// What a child wrote so far, and whether its pipes are closed.
#[derive(Default)]
struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Pipes that reached their end.
    closed: usize,
}

/// A child with both pipes collected in the background; killed when dropped.
struct Proc {
    child: Child,
    args: Vec<String>,
    output: Arc<(Mutex<Output>, Condvar)>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    fn collect(mut child: Child, args: Vec<String>) -> Proc {
        let output = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let reader = |mut pipe: Box<dyn Read + Send>, stderr: bool| {
            let sink = output.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let n = pipe.read(&mut buf).unwrap_or(0);
                    let (lock, cond) = &*sink;
                    let mut out = lock.lock().unwrap();
                    if n == 0 {
                        out.closed += 1;
                        cond.notify_all();
                        return;
                    }
                    let text = if stderr {
                        &mut out.stderr
                    } else {
                        &mut out.stdout
                    };
                    text.extend_from_slice(&buf[..n]);
                    cond.notify_all();
                }
            })
        };
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let readers = vec![
            reader(Box::new(stdout), false),
            reader(Box::new(stderr), true),
        ];
        Proc {
            child,
            args,
            output,
            readers,
        }
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.output.0.lock().unwrap().stderr).into_owned()
    }

    /// Wait until a complete stderr line contains `needle`; returns that line. Panics
    /// with the log if the child closes its pipes or [`CHILD_GUARD`] passes first.
    fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + CHILD_GUARD;
        let (lock, cond) = &*self.output;
        let mut out = lock.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&out.stderr);
            if let Some(line) = text
                .split_inclusive('\n')
                .find(|l| l.ends_with('\n') && l.contains(needle))
            {
                return line.trim_end().to_owned();
            }
            let now = Instant::now();
            if out.closed == 2 || now >= deadline {
                panic!(
                    "smarthost {:?} never logged {needle:?} ({}):\n{text}",
                    self.args,
                    if out.closed == 2 {
                        "it exited"
                    } else {
                        "hang guard"
                    },
                );
            }
            out = cond.wait_timeout(out, deadline - now).unwrap().0;
        }
    }

    /// Wait for the exit (bounded by [`CHILD_GUARD`], `SIGKILL` after it) and return all
    /// output; a child that had to be killed fails the test.
    fn wait(mut self) -> Run {
        let deadline = Instant::now() + CHILD_GUARD;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for smarthost") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let run = self.finish(status.and_then(|s| s.code()));
        assert!(
            status.is_some(),
            "smarthost {:?} still running after {CHILD_GUARD:?}; killed\n{run:?}",
            self.args
        );
        run
    }

    /// `SIGKILL` now and return all output.
    fn kill(mut self) -> Run {
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        self.finish(status.and_then(|s| s.code()))
    }

    /// The exited child's output, once both pipes have reached their end (a grandchild
    /// holding them open is not waited for beyond [`CHILD_GUARD`]).
    fn finish(&mut self, code: Option<i32>) -> Run {
        let deadline = Instant::now() + CHILD_GUARD;
        let (lock, cond) = &*self.output;
        let mut out = lock.lock().unwrap();
        while out.closed < 2 && Instant::now() < deadline {
            out = cond
                .wait_timeout(out, Duration::from_millis(100))
                .unwrap()
                .0;
        }
        let closed = out.closed == 2;
        let run = Run {
            code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        drop(out);
        if closed {
            for reader in self.readers.drain(..) {
                let _ = reader.join();
            }
        }
        run
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `smarthost serve`; killed when dropped.
pub struct Daemon {
    proc: Proc,
    addr: SocketAddr,
    cwd: PathBuf,
    /// The `-c` file, if started with [`Smarthost::serve`].
    config: Option<PathBuf>,
}

impl Daemon {
    /// Start `smarthost serve -c CONFIG` in `cwd` and wait until it accepts mail.
    pub fn start(config: &Path, cwd: &Path) -> Daemon {
        Smarthost::serve(config, cwd).start()
    }

    /// The process id (to send signals).
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// The SMTP listening address (the first one), from the startup line.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Wait until a log line contains `needle`; returns that line. Panics (with the log)
    /// if the process ends or [`CHILD_GUARD`] passes first.
    pub fn wait_for_log(&self, needle: &str) -> String {
        self.proc.wait_for_log(needle)
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

    /// Wait until `smarthost queue list -c CONFIG` (run beside it) reports an empty queue.
    pub fn wait_until_queue_empty(&self) {
        let config = self
            .config
            .as_ref()
            .expect("a relay started with a config file")
            .display()
            .to_string();
        self.wait_until("the queue drained", || {
            let run = smarthost(&["queue", "list", "-c", &config], &self.cwd);
            assert_eq!(run.code, Some(0), "{run:?}");
            run.stdout.starts_with("0 message(s) queued").then_some(())
        });
    }

    /// `SIGKILL` now, as a crash or the OOM killer would; returns the log.
    pub fn kill(self) -> String {
        self.proc.kill().stderr
    }

    /// `SIGTERM`, then wait for the exit (bounded by [`CHILD_GUARD`]) and return all
    /// output.
    pub fn stop(self) -> Run {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        self.proc.wait()
    }
}

/// The first listening address on the startup line, in either log format:
/// `listen=[127.0.0.1:4321, ...]` or `"listen":"[127.0.0.1:4321, ...]"`.
fn listen_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listen")?..];
    let rest = &rest[rest.find('[')? + 1..];
    let list = &rest[..rest.find(']')?];
    list.split(", ").next()?.parse().ok()
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
