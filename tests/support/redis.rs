//! A real `redis-server` for the `[cluster]` tests: started on 127.0.0.1 and a free port
//! with no persistence, stopped (killed) when dropped. scripts/test.sh installs Debian's
//! `redis-server` when it is missing; a test never passes without it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{HANG_GUARD, free_port};

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// Start one on a free port and wait until it answers `PING`.
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    /// Start one on `port` (to bring a stopped store back where the relays look).
    pub fn start_on(port: u16) -> RedisServer {
        RedisServer::spawn(port, &["--port", &port.to_string()])
    }

    /// Start one that speaks only TLS, with `cert` (made for `localhost`).
    pub fn start_tls(cert: &super::TestCert) -> RedisServer {
        let port = free_port();
        let (cert_file, key_file) = (cert.cert_file().display(), cert.key_file().display());
        let (cert_file, key_file) = (cert_file.to_string(), key_file.to_string());
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &cert_file,
            "--tls-key-file",
            &key_file,
            "--tls-ca-cert-file",
            &cert_file,
            "--tls-auth-clients",
            "no",
        ];
        RedisServer::spawn(port, &args)
    }

    fn spawn(port: u16, args: &[&str]) -> RedisServer {
        let tls = args.contains(&"--tls-port");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1"])
            .args(args)
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): scripts/test.sh installs it (Debian: apt-get install redis-server)")
            });
        let server = RedisServer {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + HANG_GUARD;
        // A TLS port is ready when it accepts connections; a plain one answers PING.
        let ready = |s: &RedisServer| {
            if tls {
                std::net::TcpStream::connect(("127.0.0.1", s.port)).is_ok()
            } else {
                s.answers()
            }
        };
        while !ready(&server) {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} does not answer PING"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rediss://localhost:PORT/0`, for a server started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        format!("rediss://localhost:{}/0", self.port)
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Whether it answers `PING` now.
    pub fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Stop it now (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
