//! Shared helpers for the end-to-end tests of the inbound SMTP server.
//!
//! - [`start_relay`] starts the real relay in-process on `127.0.0.1:0`, configured from a
//!   TOML file written to a temp directory, delivering into a temp Maildir.
//! - [`SmtpClient`] is a raw SMTP client: it sends whatever bytes a test gives it
//!   (pipelined batches, bare CR or LF, half commands) and reads complete, possibly
//!   multi-line replies, checking their wire form strictly (CRLF, one code per reply).
//! - [`TestCert`] is a self-signed certificate for `localhost` made with rcgen, and the
//!   rustls connector that trusts it.
//!
//! - [`TestConfig`] ([`config`]) composes every relay configuration the tests use.
//! - [`process`] runs the real binary as a child process.
//!
//! Every wait is bounded by [`HANG_GUARD`] (by [`CHILD_GUARD`], a fixed multiple of it,
//! when a child process is awaited); hitting it is a test failure that says what was
//! awaited, never a silent pass.
//!
//! Test files include the harness as `pub mod support;`: the helpers are the harness's
//! public interface, and each test binary uses only some of them.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use smarthost::RelayHandle;
use smarthost::config::Config;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub mod config;
pub mod process;

pub use config::TestConfig;

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

/// One message file from a Maildir's `new/`.
#[derive(Clone)]
pub struct Delivered {
    /// Where it is.
    pub path: PathBuf,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

impl Delivered {
    /// The content as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The header lines (unfolded lines kept as on disk), up to the empty line.
    pub fn header_lines(&self) -> Vec<String> {
        let text = self.text();
        let head = text.split("\r\n\r\n").next().unwrap_or("").to_owned();
        head.split("\r\n").map(str::to_owned).collect()
    }

    /// The addresses of the `Delivered-To` lines the Maildir upstream writes.
    pub fn delivered_to(&self) -> Vec<String> {
        self.header_lines()
            .iter()
            .filter_map(|l| l.strip_prefix("Delivered-To: ").map(str::to_owned))
            .collect()
    }

    /// The body: everything after the first empty line.
    pub fn body(&self) -> &[u8] {
        match self.bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => &self.bytes[i + 4..],
            None => &[],
        }
    }

    /// Panic unless every line ending is CRLF (no bare CR, no bare LF).
    pub fn assert_crlf_only(&self) {
        for (i, b) in self.bytes.iter().enumerate() {
            let ok = match b {
                b'\r' => self.bytes.get(i + 1) == Some(&b'\n'),
                b'\n' => i > 0 && self.bytes[i - 1] == b'\r',
                _ => true,
            };
            assert!(
                ok,
                "bare {} at offset {i} in {}:\n{:?}",
                if *b == b'\r' { "CR" } else { "LF" },
                self.path.display(),
                self.text()
            );
        }
    }
}

impl fmt::Debug for Delivered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:\n{}", self.path.display(), self.text())
    }
}

/// The messages in `<maildir>/new/`, sorted by file name (time, then queue id).
pub fn list_maildir(maildir: &Path) -> Vec<Delivered> {
    let new = maildir.join("new");
    let Ok(entries) = std::fs::read_dir(&new) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.map(|e| e.expect("read new/").path()).collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| Delivered {
            bytes: std::fs::read(&path).expect("read message file"),
            path,
        })
        .collect()
}

/// The value of the first `name:` header in `message`, continuation lines appended
/// (folding whitespace kept).
pub fn header(message: &str, name: &str) -> Option<String> {
    let head = message.split("\r\n\r\n").next()?;
    let mut found: Option<String> = None;
    for line in head.split("\r\n") {
        if let Some(value) = found.as_mut() {
            if line.starts_with([' ', '\t']) {
                value.push_str(line);
                continue;
            }
            break;
        }
        if let Some((n, v)) = line.split_once(':')
            && n.eq_ignore_ascii_case(name)
        {
            found = Some(v.trim().to_owned());
        }
    }
    found
}

/// One complete reply as the client received it.
#[derive(Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line, after `NNN-` or `NNN `.
    pub lines: Vec<String>,
}

impl Reply {
    /// The lines joined with `\n` (enhanced codes left in place).
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The enhanced status code at the start of the first line, if there is one.
    pub fn enhanced(&self) -> Option<&str> {
        let word = self.lines.first()?.split(' ').next()?;
        let parts: Vec<&str> = word.split('.').collect();
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        (parts.len() == 3 && parts.iter().all(|p| numeric(p))).then_some(word)
    }

    /// Whether any line (after the first, for EHLO) is exactly `keyword` or starts with
    /// `keyword ` — an EHLO capability.
    pub fn advertises(&self, keyword: &str) -> bool {
        self.lines.iter().skip(1).any(|l| {
            l.eq_ignore_ascii_case(keyword)
                || l.to_ascii_uppercase()
                    .starts_with(&format!("{} ", keyword.to_ascii_uppercase()))
        })
    }

    /// The queue id of a `250 2.0.0 queued as ID` reply; panics on any other reply.
    pub fn queue_id(&self) -> String {
        let text = self.text();
        let id = text
            .strip_prefix("2.0.0 queued as ")
            .unwrap_or_else(|| panic!("not a `250 2.0.0 queued as ID` reply: {self}"));
        assert!(
            self.code == 250 && !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()),
            "bad queue id in {self}"
        );
        id.to_owned()
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.lines.len();
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            if i > 0 {
                f.write_str(" | ")?;
            }
            write!(f, "{}{sep}{line}", self.code)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What came instead of a reply.
#[derive(Debug)]
pub enum ReadError {
    /// The server closed the connection; the bytes of an incomplete reply, if any.
    Closed(Vec<u8>),
    /// Nothing complete within [`HANG_GUARD`]; what had arrived.
    Timeout(Vec<u8>),
    /// Bytes that are not a well-formed reply.
    Malformed(String),
    /// A socket error.
    Io(std::io::Error),
}

/// A raw SMTP client for tests. Every byte sent and every reply read is kept in a
/// transcript that failure messages print.
pub struct SmtpClient<S> {
    stream: S,
    buf: Vec<u8>,
    transcript: Vec<String>,
}

impl SmtpClient<TcpStream> {
    /// Connect to `addr`.
    pub async fn connect(addr: SocketAddr) -> SmtpClient<TcpStream> {
        let stream = tokio::time::timeout(HANG_GUARD, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect to {addr}: no answer within {HANG_GUARD:?}"))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        SmtpClient::new(stream)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> SmtpClient<S> {
    /// Wrap a connected stream.
    pub fn new(stream: S) -> SmtpClient<S> {
        SmtpClient {
            stream,
            buf: Vec::new(),
            transcript: Vec::new(),
        }
    }

    /// What was sent and received so far, one entry per write or reply.
    pub fn transcript(&self) -> String {
        self.transcript.join("\n")
    }

    /// Write `bytes` exactly as given, in one write, and flush.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref();
        self.transcript.push(format!("C: {}", escape(bytes)));
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(HANG_GUARD, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("write failed: {e}\n{}", self.transcript()),
            Err(_) => panic!("write blocked for {HANG_GUARD:?}\n{}", self.transcript()),
        }
    }

    /// Send `line` followed by CRLF.
    pub async fn send_line(&mut self, line: &str) {
        self.send(format!("{line}\r\n")).await;
    }

    /// Read one complete reply, or say why there is none.
    pub async fn try_read_reply(&mut self) -> Result<Reply, ReadError> {
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    self.transcript.push(format!("S: {reply}"));
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(ReadError::Malformed(e)),
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(ReadError::Timeout(self.buf.clone())),
                Ok(Ok(0)) => return Err(ReadError::Closed(self.buf.clone())),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// Read one complete reply; panics with the transcript if there is none.
    pub async fn read_reply(&mut self) -> Reply {
        match self.try_read_reply().await {
            Ok(reply) => reply,
            Err(e) => panic!(
                "expected a reply, got {}\n--- transcript ---\n{}",
                describe(&e),
                self.transcript()
            ),
        }
    }

    /// Read one reply and check its code.
    pub async fn expect_reply(&mut self, code: u16) -> Reply {
        let reply = self.read_reply().await;
        assert_eq!(
            reply.code,
            code,
            "expected {code}, got {reply}\n--- transcript ---\n{}",
            self.transcript()
        );
        reply
    }

    /// Read one reply and check its code and enhanced status code.
    pub async fn expect_reply_esc(&mut self, code: u16, esc: &str) -> Reply {
        let reply = self.expect_reply(code).await;
        assert_eq!(
            reply.enhanced(),
            Some(esc),
            "expected enhanced code {esc} in {reply}\n--- transcript ---\n{}",
            self.transcript()
        );
        reply
    }

    /// Send `line` (CRLF added) and read the reply, whatever it is.
    pub async fn command(&mut self, line: &str) -> Reply {
        self.send_line(line).await;
        self.read_reply().await
    }

    /// Send `line` (CRLF added), read the reply, check its code.
    pub async fn expect(&mut self, line: &str, code: u16) -> Reply {
        self.send_line(line).await;
        self.expect_reply(code).await
    }

    /// Send `line`, read the reply, check its code and enhanced status code.
    pub async fn expect_esc(&mut self, line: &str, code: u16, esc: &str) -> Reply {
        self.send_line(line).await;
        self.expect_reply_esc(code, esc).await
    }

    /// Read the greeting; it must be `220`.
    pub async fn greeting(&mut self) -> Reply {
        self.expect_reply(220).await
    }

    /// `MAIL`, each `RCPT`, `DATA`, then `content` and the `.` line (the content must
    /// already be dot-stuffed and end in CRLF). Returns the final reply, whatever it is.
    pub async fn send_message(&mut self, from: &str, to: &[&str], content: &[u8]) -> Reply {
        self.expect(&format!("MAIL FROM:<{from}>"), 250).await;
        for rcpt in to {
            self.expect(&format!("RCPT TO:<{rcpt}>"), 250).await;
        }
        self.expect("DATA", 354).await;
        let mut wire = content.to_vec();
        wire.extend_from_slice(b".\r\n");
        self.send(&wire).await;
        self.read_reply().await
    }

    /// The server must close the connection now, without sending anything more.
    pub async fn expect_closed(&mut self) {
        match self.try_read_reply().await {
            Err(ReadError::Closed(rest)) if rest.is_empty() => {}
            // A reset after our unread data is also a close.
            Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!(
                "expected the server to close the connection, got {}\n--- transcript ---\n{}",
                match &other {
                    Ok(reply) => format!("reply {reply}"),
                    Err(e) => describe(e),
                },
                self.transcript()
            ),
        }
    }

    /// Nothing received that has not been read as a reply yet.
    pub fn assert_nothing_buffered(&self) {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes from the server: {}\n--- transcript ---\n{}",
            escape(&self.buf),
            self.transcript()
        );
    }

    /// The stream, e.g. to start TLS on it. Panics if the server sent bytes that were
    /// not read as replies.
    pub fn into_stream(self) -> S {
        self.assert_nothing_buffered();
        self.stream
    }
}

fn describe(e: &ReadError) -> String {
    match e {
        ReadError::Closed(rest) if rest.is_empty() => "the connection closed".into(),
        ReadError::Closed(rest) => format!("the connection closed after {}", escape(rest)),
        ReadError::Timeout(rest) => {
            format!(
                "nothing complete within {HANG_GUARD:?} (received {})",
                escape(rest)
            )
        }
        ReadError::Malformed(m) => format!("a malformed reply: {m}"),
        ReadError::Io(e) => format!("socket error: {e}"),
    }
}

/// Bytes as readable text: CR, LF and other controls escaped.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    let shown = bytes.len().min(400);
    for chunk in bytes[..shown].utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\r' => out.push_str("\\r"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if bytes.len() > shown {
        out.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    out
}

/// Parse one reply from the start of `buf`, strictly: every line is `NNN-text` or
/// `NNN text` (or bare `NNN`) ending in CRLF, all lines carry the same code.
fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let mut pos = 0;
    let mut lines = Vec::new();
    let mut code = None;
    while let Some(nl) = buf[pos..].iter().position(|b| *b == b'\n') {
        let raw = &buf[pos..pos + nl];
        let line = raw
            .strip_suffix(b"\r")
            .ok_or_else(|| format!("reply line without CR before LF: {}", escape(raw)))?;
        if line.contains(&b'\r') {
            return Err(format!("bare CR inside a reply line: {}", escape(line)));
        }
        let line = std::str::from_utf8(line)
            .map_err(|_| format!("reply line is not UTF-8: {}", escape(line)))?;
        pos += nl + 1;
        let digits = line
            .get(..3)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
        let this: u16 = digits
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| format!("reply line without a code: {line:?}"))?;
        if let Some(c) = code
            && c != this
        {
            return Err(format!("reply mixes codes {c} and {this}"));
        }
        code = Some(this);
        let (last, text) = match line.as_bytes().get(3) {
            None => (true, ""),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(format!("bad separator after the code: {line:?}")),
        };
        lines.push(text.to_owned());
        if last {
            return Ok(Some((Reply { code: this, lines }, pos)));
        }
    }
    if buf.len() > 64 * 1024 {
        return Err("reply longer than 64 KiB".into());
    }
    Ok(None)
}

/// A port on 127.0.0.1 where nothing listens: free a moment ago (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// A self-signed certificate for `localhost` (rcgen) in PEM files, and a client
/// connector that trusts exactly that certificate.
pub struct TestCert {
    /// The certificate file.
    pub cert_file: PathBuf,
    /// The private key file.
    pub key_file: PathBuf,
    der: rustls_pki_types::CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

impl TestCert {
    /// Generate a new certificate and key.
    pub fn generate() -> TestCert {
        let dir = tempfile::tempdir().expect("temp dir");
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("generate certificate");
        let cert_file = dir.path().join("cert.pem");
        let key_file = dir.path().join("key.pem");
        std::fs::write(&cert_file, certified.cert.pem()).expect("write cert");
        std::fs::write(&key_file, certified.key_pair.serialize_pem()).expect("write key");
        TestCert {
            cert_file,
            key_file,
            der: certified.cert.der().clone(),
            _dir: dir,
        }
    }

    /// The `[server]` keys that configure inbound STARTTLS with this certificate.
    pub fn server_toml(&self) -> String {
        format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            self.cert_file.display(),
            self.key_file.display()
        )
    }

    /// A TLS connector that trusts only this certificate.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("add test root");
        let config = tokio_rustls::rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// Await `future` for at most [`HANG_GUARD`]; hitting the guard fails the test naming
/// `what`. For the one-off socket waits (a connect, a greeting) that [`SmtpClient`]
/// does not make.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("hang guard: {what} not within {HANG_GUARD:?}"))
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
