//! The one test harness: every integration test includes it as `pub mod support;`.
//!
//! - [`start_relay`] / [`Relay::start`] run the real relay in-process on `127.0.0.1:0`,
//!   configured by [`TestConfig`] ([`config`]), the one config composer: temp spool,
//!   temp Maildir, free ports.
//! - [`process`] runs the real binary as a child process (`serve`, `check`, `queue`, a
//!   crash, a reload).
//! - [`SmtpClient`] ([`smtp`]) is a raw SMTP client that checks replies strictly.
//! - [`list_maildir`] ([`maildir`]) reads what a Maildir upstream delivered.
//! - [`TestCert`] ([`tls`]) is a self-signed certificate for inbound STARTTLS.
//! - [`wait_for`] polls a condition; [`within`] bounds one await.
//!
//! Every wait is bounded by [`HANG_GUARD`] (by [`CHILD_GUARD`], a fixed multiple of it,
//! when a child process is awaited); hitting it is a test failure that says what was
//! awaited, never a silent pass.
//!
//! The module is `pub` in each test binary: its items are the harness's interface, and
//! each binary uses only some of them (so `dead_code` only flags what no caller can
//! reach, such as a private field never read).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use smarthost::RelayHandle;
use smarthost::config::Config;
use tokio::net::TcpStream;

pub mod config;
pub mod maildir;
pub mod process;
pub mod redis;
pub mod smtp;
pub mod tls;

pub use config::TestConfig;
pub use maildir::{Delivered, header, list_maildir};
pub use smtp::{ReadError, Reply, SmtpClient, dot_terminated, escape};
pub use tls::TestCert;

/// The one hang guard: the upper bound for any single wait in a test (a connect, a
/// reply, a delivery, a shutdown, a condition polled with [`wait_for`]). Hitting it
/// fails the test naming what was awaited. It only protects against hangs: no test
/// asserts that anything is fast.
///
/// A wait that is about a long time by design (an upstream told to stall for a minute)
/// is bounded by that time plus the guard, `stall + HANG_GUARD`, not by a constant of
/// its own.
pub const HANG_GUARD: Duration = Duration::from_secs(15);

/// The hang guard for waits on a child process ([`process`]): [`HANG_GUARD`] times two,
/// because such a wait also covers the child's cold start (exec, runtime, config load,
/// spool replay) and the `queue` commands run beside it, on a machine that runs the
/// other test binaries' relays at the same time.
pub const CHILD_GUARD: Duration = HANG_GUARD.saturating_mul(2);

/// The host name every test relay uses (banner, EHLO, `Received: ... by`).
pub const HOSTNAME: &str = "mx.relay.test";

/// Header fields that acceptance leaves exactly as they are: a From in the strict form,
/// a Date and a Message-ID. A message that starts with them is not normalised (nothing is
/// added or rewritten), so what the upstream receives after our `Received` header is the
/// submitted content byte for byte, and a test can compare all of it.
pub const STRICT_HEAD: &str = "From: <app@example.com>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <fixture@client.test>\r\n";

/// A relay running inside the test process.
pub struct Relay {
    handle: Option<RelayHandle>,
    addr: SocketAddr,
    maildir: PathBuf,
    config_path: PathBuf,
    config: Arc<Config>,
    /// Holds the config file, the Maildir and the spool; removed on drop.
    dir: tempfile::TempDir,
}

/// Start the relay on `127.0.0.1:0` in a fresh temp directory, configured by
/// [`TestConfig`] with `extra_toml` appended (whole TOML sections, or empty; see
/// [`TestConfig`] for the defaults it adds).
pub async fn start_relay(extra_toml: &str) -> Relay {
    let dir = tempfile::tempdir().expect("create temp dir");
    let config = TestConfig::new(dir.path()).toml(extra_toml);
    Relay::start(config, dir).await
}

impl Relay {
    /// Start the relay configured by `config`; `dir` (the directory `config` is rooted
    /// in) lives as long as the relay.
    pub async fn start(config: TestConfig, dir: tempfile::TempDir) -> Relay {
        let config_path = config.write();
        let maildir = config.maildir_path().to_owned();
        let loaded = Arc::new(config::load_file(&config_path));
        let handle = smarthost::start(loaded.clone()).await.unwrap_or_else(|e| {
            panic!(
                "relay did not start: {e}\n--- config ---\n{}",
                config.text()
            )
        });
        let addr = *handle
            .local_addrs()
            .first()
            .expect("the relay listens on at least one address");
        assert!(addr.port() != 0, "local_addrs() must report the real port");
        Relay {
            handle: Some(handle),
            addr,
            maildir,
            config_path,
            config: loaded,
            dir,
        }
    }

    /// The SMTP listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every listening address: `server.listen`'s, then each `[[listener]]`'s.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.handle
            .as_ref()
            .expect("the relay runs")
            .local_addrs()
            .to_vec()
    }

    /// The relay's status, as `/api/status` serves it.
    pub fn status(&self) -> smarthost::ops::status::Status {
        self.handle.as_ref().expect("the relay runs").status()
    }

    /// The Maildir the relay delivers into.
    pub fn maildir(&self) -> &Path {
        &self.maildir
    }

    /// The configuration the relay runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The configuration file written for this relay.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// A private temp directory that lives as long as the relay.
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Open a connection; the greeting is not read yet.
    pub async fn connect(&self) -> SmtpClient<TcpStream> {
        SmtpClient::connect(self.addr).await
    }

    /// Open a connection, read the `220` greeting and say `EHLO client.test`.
    pub async fn client(&self) -> SmtpClient<TcpStream> {
        let mut c = self.connect().await;
        c.greeting().await;
        c.expect("EHLO client.test", 250).await;
        c
    }

    /// The messages in `<maildir>/new/`, oldest first.
    pub fn messages(&self) -> Vec<Delivered> {
        list_maildir(&self.maildir)
    }

    /// Wait until at least `n` messages are in the Maildir and return them all.
    /// (Delivery may follow the `250` asynchronously once the spool exists.)
    pub async fn wait_for_messages(&self, n: usize) -> Vec<Delivered> {
        let what = format!("{n} delivered message(s) in {}", self.maildir.display());
        wait_for(&what, || async {
            let got = self.messages();
            (got.len() >= n).then_some(got)
        })
        .await
    }

    /// Wait for `n` messages, shut the relay down (so that whatever else it accepted has
    /// settled), and check that exactly `n` were delivered.
    pub async fn finish(&mut self, n: usize) -> Vec<Delivered> {
        if n > 0 {
            self.wait_for_messages(n).await;
        }
        self.shutdown().await;
        let messages = self.messages();
        assert_eq!(messages.len(), n, "delivered messages: {messages:#?}");
        messages
    }

    /// The metrics endpoint's address, while the relay runs.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.handle.as_ref().and_then(RelayHandle::metrics_addr)
    }

    /// Take the handle, e.g. to call `shutdown()` from a spawned task.
    pub fn take_handle(&mut self) -> RelayHandle {
        self.handle.take().expect("relay handle already taken")
    }

    /// Shut the relay down (bounded by [`HANG_GUARD`]); the Maildir stays readable.
    pub async fn shutdown(&mut self) {
        let handle = self.take_handle();
        tokio::time::timeout(HANG_GUARD, handle.shutdown())
            .await
            .expect("relay shutdown did not complete");
    }
}

/// A port on 127.0.0.1 where nothing listens: free a moment ago (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// Await `future` for at most [`HANG_GUARD`]; hitting the guard fails the test naming
/// `what`. For the one-off socket waits (a connect, a greeting) that [`SmtpClient`]
/// does not make.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("hang guard: {what} not within {HANG_GUARD:?}"))
}

/// `GET path` from the relay's HTTP endpoint at `addr` (metrics, health): the status
/// code and the body. Bounded by [`HANG_GUARD`].
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = http_request(addr, "GET", path, &[]).await;
    (response.status, response.body)
}

/// `method path` with `headers` on a new connection to the relay's HTTP endpoint at
/// `addr` (`Connection: close` is added). Bounded by [`HANG_GUARD`].
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let mut connection = HttpConnection::open(addr).await;
    let mut headers = headers.to_vec();
    headers.push(("Connection", "close"));
    connection.request(method, path, &headers).await
}

/// An HTTP/1.1 response as [`HttpConnection`] reads it.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The header fields, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (empty for HEAD).
    pub body: String,
}

impl HttpResponse {
    /// The value of the first header field named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 client connection that sends requests one after the other (keep-alive)
/// and reads each response by its Content-Length. Every exchange is bounded by
/// [`HANG_GUARD`].
pub struct HttpConnection {
    stream: tokio::io::BufReader<TcpStream>,
}

impl HttpConnection {
    /// Connect to `addr`.
    pub async fn open(addr: SocketAddr) -> HttpConnection {
        let stream = within(&format!("connect to {addr}"), TcpStream::connect(addr))
            .await
            .expect("connect to the HTTP endpoint");
        HttpConnection {
            stream: tokio::io::BufReader::new(stream),
        }
    }

    /// Send `method path` with `headers` (and `Host`) and read the response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let exchange = async {
            self.stream.get_mut().write_all(request.as_bytes()).await?;
            let mut status_line = String::new();
            self.stream.read_line(&mut status_line).await?;
            let status = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                if self.stream.read_line(&mut line).await? == 0 {
                    break;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').expect("a header field");
                headers.push((name.to_owned(), value.trim().to_owned()));
            }
            let length = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse::<usize>().expect("a Content-Length"));
            let mut body = Vec::new();
            match length {
                _ if method == "HEAD" => {}
                Some(n) => {
                    body.resize(n, 0);
                    self.stream.read_exact(&mut body).await?;
                }
                None => {
                    self.stream.read_to_end(&mut body).await?;
                }
            }
            let body = String::from_utf8(body).expect("a UTF-8 body");
            Ok::<_, std::io::Error>(HttpResponse {
                status,
                headers,
                body,
            })
        };
        within(&format!("{method} {path}"), exchange)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

/// Poll `check` every 20 ms until it returns `Some`, for at most [`HANG_GUARD`];
/// hitting the guard fails the test naming `what`.
pub async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    check: impl FnMut() -> F,
) -> T {
    wait_for_up_to(what, HANG_GUARD, check).await
}

/// [`wait_for`] with another bound, for a wait that is long by design; `limit` is
/// that time plus [`HANG_GUARD`] (see there).
pub async fn wait_for_up_to<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hang guard: {what} not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
