//! A long-running `smarthost` child process for tests that need to stop it with
//! SIGTERM and read everything it wrote: both pipes are collected in the background,
//! waits are bounded by [`CHILD_GUARD`], and the process is killed when dropped, so a
//! failing test never leaves a relay behind.

#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Upper bound for any wait on the child; only a guard against hangs.
pub const CHILD_GUARD: Duration = Duration::from_secs(20);

/// A running child with its output collected.
pub struct Proc {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

/// What a stopped child left behind.
pub struct Output {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error (the log).
    pub stderr: String,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn collect(pipe: impl Read + Send + 'static, sink: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut pipe = pipe;
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

impl Proc {
    /// Spawn `cmd` with piped stdout and stderr (stdin closed).
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn smarthost");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), stdout.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        Proc {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Wait until a complete stderr line contains `needle`; returns that line. Panics
    /// with the log if the child exits or [`CHILD_GUARD`] passes first.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + CHILD_GUARD;
        loop {
            let text = self.stderr();
            if let Some(line) = text
                .split_inclusive('\n')
                .find(|l| l.ends_with('\n') && l.contains(needle))
            {
                return line.trim_end().to_owned();
            }
            let exited = self.child.try_wait().expect("wait").is_some();
            if exited || Instant::now() >= deadline {
                panic!(
                    "never logged {needle:?} ({}):\n{text}",
                    if exited { "it exited" } else { "hang guard" }
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then [`Proc::wait`].
    pub fn stop(self) -> Output {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        self.wait()
    }

    /// Wait for the exit (bounded by [`CHILD_GUARD`], SIGKILL after it) and return all
    /// output.
    pub fn wait(mut self) -> Output {
        let deadline = Instant::now() + CHILD_GUARD;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let output = Output {
            code: status.and_then(|s| s.code()),
            stdout: String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned(),
            stderr: self.stderr(),
        };
        assert!(
            status.is_some(),
            "still running after {CHILD_GUARD:?}; killed\n{output:?}"
        );
        output
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port in `...127.0.0.1:PORT...` on `line` (the startup line's listen address, in
/// either log format).
pub fn port_in(line: &str) -> u16 {
    let rest = &line[line.find("127.0.0.1:").expect("an address on the line") + 10..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().expect("a port")
}

/// A port on 127.0.0.1 that was free a moment ago (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}
