//! A scripted in-process SMTP server standing in for an upstream provider, plus a test
//! CA in [`pki`].
//!
//! The server listens on `127.0.0.1:0` and speaks plaintext, implicit TLS, or plaintext
//! offering STARTTLS (real rustls). What it offers and answers is scripted with
//! [`FakeUpstream::builder`]; what it saw is recorded: connections, every client line
//! with whether it arrived under TLS and in which read (pipelining shows as several
//! lines from one read), and the messages it accepted.

pub mod pki;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

/// How the fake speaks TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plaintext only; no STARTTLS.
    Plain,
    /// TLS from the first byte (port 465 style).
    Implicit,
    /// Plaintext greeting, STARTTLS offered in EHLO.
    StartTls,
}

/// What the fake says when a client connects.
#[derive(Clone, Debug)]
pub enum Greeting {
    /// `220 fake.test ESMTP ready`.
    Normal,
    /// This reply; the connection is closed after it unless it is a `220`.
    Reply(String),
    /// Nothing at all (an implicit-TLS server seen from plaintext): wait for the client
    /// to give up.
    Silent,
}

/// A misbehaviour switched on and off while the fake runs ([`FakeUpstream::set_fault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// New connections are accepted and read, but never answered. For [`Mode::Implicit`]
    /// this is a TLS handshake that stalls; otherwise a greeting that never comes.
    Silent,
    /// `220` to STARTTLS, then no TLS handshake: the connection is read and ignored.
    StallAfterStartTls,
    /// `354` to DATA, then nothing is read any more: the client's writes stall once the
    /// socket buffers are full.
    StopReadingAfterData,
    /// The reply to the end of DATA comes only after this long.
    SlowEndOfData(std::time::Duration),
    /// Once this many messages were accepted, the end of any further message's data is
    /// never answered: the connection is held (see [`FakeUpstream::held`]) until the
    /// fault is switched off, then closed without a reply and nothing is recorded. A
    /// client crash (kill -9) in the middle of a transaction, seen from the server.
    HoldEndOfDataAfter(usize),
}

/// Commands whose reply can be scripted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// The whole EHLO reply.
    Ehlo,
    /// The reply to HELO (sent after a refused EHLO).
    Helo,
    /// The reply to STARTTLS (a `220` still starts TLS).
    StartTls,
    /// `MAIL FROM`.
    Mail,
    /// Every `RCPT TO` (see also [`Builder::rcpt_reply_for`]).
    Rcpt,
    /// `DATA` (a `354` still reads the content).
    Data,
    /// The final reply after the content.
    EndOfData,
}

/// One line a client sent.
#[derive(Clone, Debug)]
pub struct Line {
    /// The line without CRLF.
    pub text: String,
    /// Whether it arrived inside TLS.
    pub tls: bool,
    /// Which socket read delivered it; lines sent in one write share it.
    pub read: usize,
    /// Which connection (1-based, in accept order).
    pub conn: usize,
    /// When the fake read it.
    pub at: Instant,
}

/// A message the fake accepted.
#[derive(Clone, Debug)]
pub struct Received {
    /// The `MAIL FROM:` argument, with parameters.
    pub mail_from: String,
    /// The accepted recipients (addresses without brackets).
    pub rcpts: Vec<String>,
    /// The content, dot-unstuffed, without the final `.` line.
    pub content: Vec<u8>,
    /// Whether the transaction ran inside TLS.
    pub tls: bool,
    /// The authenticated user, if any.
    pub user: Option<String>,
    /// Which connection carried it.
    pub conn: usize,
    /// When the fake accepted it (after the content).
    pub at: Instant,
}

impl Received {
    /// The content as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.content).into_owned()
    }
}

#[derive(Clone)]
struct Script {
    mode: Mode,
    tls: Option<Arc<ServerConfig>>,
    extensions: Vec<String>,
    auth: Vec<String>,
    accounts: Vec<(String, String)>,
    greeting: Greeting,
    unhealthy_greeting: String,
    replies: HashMap<Verb, String>,
    rcpt_replies: HashMap<String, String>,
    /// Replies used once each, in order, before the steady ones above.
    sequences: HashMap<SequenceKey, VecDeque<String>>,
    only_sender: Option<(String, String)>,
    hang_up_after_message: bool,
    xoauth2_validator: Option<Xoauth2Validator>,
    /// At most this many accepted recipients per transaction; further RCPTs get the reply.
    rcpt_cap: Option<(usize, String)>,
    /// At most this many messages per connection; the next MAIL gets the reply, or the
    /// connection is closed without a word (`None`).
    messages_per_connection: Option<(usize, Option<String>)>,
}

/// Decides whether a bearer token is good for a user ([`Builder::xoauth2_validator`]).
pub type Xoauth2Validator = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// One AUTH XOAUTH2 attempt ([`FakeUpstream::xoauth2_attempts`]).
#[derive(Clone, Debug)]
pub struct Xoauth2Attempt {
    /// The `user=` of the initial response.
    pub user: String,
    /// The bearer token.
    pub token: String,
    /// Whether it was accepted (`235`).
    pub accepted: bool,
    /// Which connection.
    pub conn: usize,
}

/// What a scripted sequence of replies answers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum SequenceKey {
    Verb(Verb),
    Rcpt(String),
}

/// Scripts a [`FakeUpstream`].
pub struct Builder {
    script: Script,
}

impl Builder {
    /// Present this certificate (required for [`Mode::Implicit`] and [`Mode::StartTls`]).
    pub fn cert(mut self, cert: &pki::ServerCert) -> Builder {
        self.script.tls = Some(cert.server_config());
        self
    }

    /// Offer this EHLO extension line, e.g. `"PIPELINING"` or `"SIZE 1000"`.
    pub fn ext(mut self, line: &str) -> Builder {
        self.script.extensions.push(line.to_owned());
        self
    }

    /// Offer these AUTH mechanisms (the fake implements PLAIN, LOGIN and XOAUTH2).
    pub fn auth(mut self, mechanisms: &[&str]) -> Builder {
        self.script.auth = mechanisms.iter().map(|m| m.to_string()).collect();
        self
    }

    /// Accept these credentials (`535` for any other); with an account, MAIL needs AUTH.
    /// For XOAUTH2 the password is the bearer token.
    pub fn account(mut self, user: &str, password: &str) -> Builder {
        self.script
            .accounts
            .push((user.to_owned(), password.to_owned()));
        self
    }

    /// Replace the greeting.
    pub fn greeting(mut self, greeting: Greeting) -> Builder {
        self.script.greeting = greeting;
        self
    }

    /// Answer `verb` with `reply` (a full reply, e.g. `"451 4.3.0 try later"`; lines of a
    /// multi-line reply separated by CRLF). A `421` closes the connection after it.
    pub fn reply(mut self, verb: Verb, reply: &str) -> Builder {
        self.script.replies.insert(verb, reply.to_owned());
        self
    }

    /// Answer `RCPT TO:<addr>` with `reply`.
    pub fn rcpt_reply_for(mut self, addr: &str, reply: &str) -> Builder {
        self.script
            .rcpt_replies
            .insert(addr.to_ascii_lowercase(), reply.to_owned());
        self
    }

    /// Answer the first `replies.len()` commands `verb` with `replies`, one each in order,
    /// then as scripted otherwise (e.g. `451` twice, then accept).
    pub fn replies_then(mut self, verb: Verb, replies: &[&str]) -> Builder {
        self.script.sequences.insert(
            SequenceKey::Verb(verb),
            replies.iter().map(|r| r.to_string()).collect(),
        );
        self
    }

    /// Answer the first `replies.len()` `RCPT TO:<addr>` with `replies`, one each in
    /// order, then as scripted otherwise.
    pub fn rcpt_replies_then(mut self, addr: &str, replies: &[&str]) -> Builder {
        self.script.sequences.insert(
            SequenceKey::Rcpt(addr.to_ascii_lowercase()),
            replies.iter().map(|r| r.to_string()).collect(),
        );
        self
    }

    /// Refuse any `MAIL FROM` but `addr` with `reply`, as providers do that insist on
    /// mail from the account (QQ: "Mail from address must be same as authorization
    /// user"; SendGrid: "does not match a verified Sender Identity").
    pub fn only_sender(mut self, addr: &str, reply: &str) -> Builder {
        self.script.only_sender = Some((addr.to_ascii_lowercase(), reply.to_owned()));
        self
    }

    /// Decide AUTH XOAUTH2 with `validator(user, token)` instead of the accounts (e.g.
    /// `IdentityProvider::validator`); MAIL then needs AUTH. A refused token is answered
    /// the Gmail/Microsoft way: `334` with a base64 JSON error status, then, after the
    /// client's empty line, `535 5.7.3 Authentication unsuccessful`.
    pub fn xoauth2_validator(mut self, validator: Xoauth2Validator) -> Builder {
        self.script.xoauth2_validator = Some(validator);
        self
    }

    /// Accept at most `n` recipients per transaction: every `RCPT` after the `n`-th
    /// accepted one is answered `reply` (e.g. `"452 4.5.3 Too many recipients"`), as
    /// providers that cap recipients per message do.
    pub fn rcpt_cap(mut self, n: usize, reply: &str) -> Builder {
        self.script.rcpt_cap = Some((n, reply.to_owned()));
        self
    }

    /// Take at most `n` messages per connection, as providers do: the next `MAIL` on the
    /// connection is answered `reply` (e.g. `"421 4.7.0 Too many messages for this
    /// session"`, which closes it), or with `None` the connection is closed without a
    /// word. RSET is still answered `250` before that.
    pub fn messages_per_connection(mut self, n: usize, reply: Option<&str>) -> Builder {
        self.script.messages_per_connection = Some((n, reply.map(str::to_owned)));
        self
    }

    /// Close the connection, without a word, after each accepted message (as servers do
    /// with idle clients).
    pub fn hang_up_after_message(mut self) -> Builder {
        self.script.hang_up_after_message = true;
        self
    }

    /// Listen on `127.0.0.1:0` and serve.
    pub async fn start(self) -> FakeUpstream {
        let needs_cert = self.script.mode != Mode::Plain;
        assert!(
            !needs_cert || self.script.tls.is_some(),
            "{:?} needs a certificate",
            self.script.mode
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake");
        let addr = listener.local_addr().expect("fake address");
        let shared = Arc::new(Shared {
            sequences: Mutex::new(self.script.sequences.clone()),
            script: self.script,
            healthy: AtomicBool::new(true),
            fault: Mutex::new(None),
            connections: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
            auth_failures: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            log: Mutex::new(Log::default()),
        });
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                // Small replies right after the TLS session tickets would otherwise wait
                // for a delayed ACK (Nagle).
                let _ = tcp.set_nodelay(true);
                let id = accept_shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(serve(accept_shared.clone(), tcp, id));
            }
        });
        FakeUpstream { addr, shared, task }
    }
}

#[derive(Default)]
struct Log {
    lines: Vec<Line>,
    messages: Vec<Received>,
    refused: Vec<Received>,
    xoauth2: Vec<Xoauth2Attempt>,
}

struct Shared {
    script: Script,
    sequences: Mutex<HashMap<SequenceKey, VecDeque<String>>>,
    healthy: AtomicBool,
    fault: Mutex<Option<Fault>>,
    connections: AtomicUsize,
    /// Connections open now, and the most open at once.
    open: AtomicUsize,
    peak: AtomicUsize,
    reads: AtomicUsize,
    auth_failures: AtomicUsize,
    /// Messages whose end of data is being held ([`Fault::HoldEndOfDataAfter`]).
    held: AtomicUsize,
    log: Mutex<Log>,
}

/// A running fake upstream; stops accepting when dropped.
pub struct FakeUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    /// Script a fake speaking `mode`.
    pub fn builder(mode: Mode) -> Builder {
        Builder {
            script: Script {
                mode,
                tls: None,
                extensions: Vec::new(),
                auth: Vec::new(),
                accounts: Vec::new(),
                greeting: Greeting::Normal,
                unhealthy_greeting: "421 4.3.2 fake.test busy, try again later".into(),
                replies: HashMap::new(),
                rcpt_replies: HashMap::new(),
                sequences: HashMap::new(),
                only_sender: None,
                hang_up_after_message: false,
                xoauth2_validator: None,
                rcpt_cap: None,
                messages_per_connection: None,
            },
        }
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The upstream URL for a plaintext fake: `smtp://127.0.0.1:PORT?tls=none`.
    pub fn plain_url(&self) -> String {
        format!("smtp://127.0.0.1:{}?tls=none", self.port())
    }

    /// While unhealthy, every new connection is greeted with `421` and closed.
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Misbehave from now on (`None`: heal). A connection takes the fault in force when
    /// it reaches the step the fault is about.
    pub fn set_fault(&self, fault: Option<Fault>) {
        *self.shared.fault.lock().unwrap() = fault;
    }

    /// Messages whose end of data was held so far ([`Fault::HoldEndOfDataAfter`]).
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// The most connections that were open at once so far.
    pub fn peak_connections(&self) -> usize {
        self.shared.peak.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Every line clients sent, in order.
    pub fn lines(&self) -> Vec<Line> {
        self.shared.log.lock().unwrap().lines.clone()
    }

    /// The command words clients sent (`EHLO`, `MAIL`, ...), in order.
    pub fn verbs(&self) -> Vec<String> {
        self.lines()
            .iter()
            .map(|l| l.text.split(' ').next().unwrap_or("").to_ascii_uppercase())
            .collect()
    }

    /// The messages accepted so far.
    pub fn messages(&self) -> Vec<Received> {
        self.shared.log.lock().unwrap().messages.clone()
    }

    /// The messages whose content arrived but was refused at the end of DATA.
    pub fn refused_messages(&self) -> Vec<Received> {
        self.shared.log.lock().unwrap().refused.clone()
    }

    /// How many AUTH exchanges (any mechanism) ended in a refusal so far.
    pub fn auth_failures(&self) -> usize {
        self.shared.auth_failures.load(Ordering::SeqCst)
    }

    /// Every AUTH XOAUTH2 attempt, in order.
    pub fn xoauth2_attempts(&self) -> Vec<Xoauth2Attempt> {
        self.shared.log.lock().unwrap().xoauth2.clone()
    }

    /// How many AUTH XOAUTH2 attempts were refused so far.
    pub fn xoauth2_failures(&self) -> usize {
        self.xoauth2_attempts()
            .iter()
            .filter(|a| !a.accepted)
            .count()
    }
}

/// Anything the fake can talk over: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    tls: bool,
    read: usize,
    id: usize,
    shared: Arc<Shared>,
}

impl Conn {
    async fn send(&mut self, reply: &str) -> std::io::Result<()> {
        self.io.write_all(format!("{reply}\r\n").as_bytes()).await?;
        self.io.flush().await
    }

    /// Read more bytes; false at end of stream or on error.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        match self.io.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.read = self.shared.reads.fetch_add(1, Ordering::SeqCst) + 1;
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next line, recorded.
    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=i).collect();
                let text = String::from_utf8_lossy(&raw)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned();
                self.shared.log.lock().unwrap().lines.push(Line {
                    text: text.clone(),
                    tls: self.tls,
                    read: self.read,
                    conn: self.id,
                    at: Instant::now(),
                });
                return Some(text);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The message content up to `CRLF.CRLF`, dot-unstuffed.
    async fn content(&mut self) -> Option<Vec<u8>> {
        // Where the search for the end resumes: each read is scanned once, so a big
        // message does not make the fake slow enough to look stalled.
        let mut scanned = 0;
        loop {
            let end = if self.buf.starts_with(b".\r\n") {
                Some((0, 3))
            } else {
                let found = self.buf[scanned..]
                    .windows(5)
                    .position(|w| w == b"\r\n.\r\n")
                    .map(|i| (scanned + i + 2, scanned + i + 5));
                scanned = self.buf.len().saturating_sub(4);
                found
            };
            if let Some((content_end, used)) = end {
                let raw: Vec<u8> = self.buf.drain(..used).take(content_end).collect();
                let mut out = Vec::with_capacity(raw.len());
                for line in raw.split_inclusive(|b| *b == b'\n') {
                    out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
                }
                return Some(out);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Run the server side of a TLS handshake on this connection. Plaintext the client
    /// sent ahead of the handshake is discarded (RFC 3207 §4.2), but recorded as a line
    /// so that tests see it crossed in the clear.
    async fn start_tls(self) -> Option<Conn> {
        let Conn {
            io,
            buf,
            read,
            id,
            shared,
            ..
        } = self;
        if !buf.is_empty() {
            shared.log.lock().unwrap().lines.push(Line {
                text: String::from_utf8_lossy(&buf).into_owned(),
                tls: false,
                read,
                conn: id,
                at: Instant::now(),
            });
        }
        let config = shared.script.tls.clone().expect("certificate");
        let tls = TlsAcceptor::from(config).accept(io).await.ok()?;
        Some(Conn {
            io: Box::new(tls),
            buf: Vec::new(),
            tls: true,
            read,
            id,
            shared,
        })
    }
}

#[derive(Default)]
struct Session {
    user: Option<String>,
    mail_from: Option<String>,
    rcpts: Vec<String>,
}

fn address(arg: &str) -> String {
    let start = arg.find('<').map_or(0, |i| i + 1);
    let end = arg[start..].find('>').map_or(arg.len(), |i| start + i);
    arg[start..end].to_ascii_lowercase()
}

fn b64(text: &str) -> Option<String> {
    BASE64_STANDARD
        .decode(text.trim())
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Counts a connection as open while it lives.
struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    fn new(shared: &Arc<Shared>) -> OpenConnection {
        let now = shared.open.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak.fetch_max(now, Ordering::SeqCst);
        OpenConnection(shared.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(shared: Arc<Shared>, tcp: TcpStream, id: usize) {
    let _open = OpenConnection::new(&shared);
    let mut conn = Conn {
        io: Box::new(tcp),
        buf: Vec::new(),
        tls: false,
        read: 0,
        id,
        shared: shared.clone(),
    };
    let script = &shared.script;
    let fault = || *shared.fault.lock().unwrap();
    if fault() == Some(Fault::Silent) {
        while conn.fill().await {}
        return;
    }
    if script.mode == Mode::Implicit {
        conn = match conn.start_tls().await {
            Some(conn) => conn,
            None => return,
        };
    }
    if !shared.healthy.load(Ordering::SeqCst) {
        let _ = conn.send(&script.unhealthy_greeting).await;
        return;
    }
    match &script.greeting {
        Greeting::Silent => {
            while conn.fill().await {}
            return;
        }
        Greeting::Reply(reply) => {
            if conn.send(reply).await.is_err() || !reply.starts_with("220") {
                return;
            }
        }
        Greeting::Normal => {
            if conn.send("220 fake.test ESMTP ready").await.is_err() {
                return;
            }
        }
    }
    let mut session = Session::default();
    let mut delivered = 0;
    while let Some(line) = conn.line().await {
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let next_in_sequence = |key: SequenceKey| {
            shared
                .sequences
                .lock()
                .unwrap()
                .get_mut(&key)
                .and_then(VecDeque::pop_front)
        };
        let scripted = |verb: Verb| {
            next_in_sequence(SequenceKey::Verb(verb)).or_else(|| script.replies.get(&verb).cloned())
        };
        let reply = match verb.as_str() {
            "EHLO" => scripted(Verb::Ehlo).unwrap_or_else(|| {
                let name = line.split(' ').nth(1).unwrap_or("");
                let mut lines = vec![format!("fake.test greets {name}")];
                lines.extend(script.extensions.iter().cloned());
                if script.mode == Mode::StartTls && !conn.tls {
                    lines.push("STARTTLS".into());
                }
                if !script.auth.is_empty() {
                    lines.push(format!("AUTH {}", script.auth.join(" ")));
                }
                lines.push("ENHANCEDSTATUSCODES".into());
                let last = lines.len() - 1;
                lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
                    .collect::<Vec<_>>()
                    .join("\r\n")
            }),
            "HELO" => scripted(Verb::Helo).unwrap_or("250 fake.test".into()),
            "STARTTLS" if script.mode == Mode::StartTls && !conn.tls => {
                let reply = scripted(Verb::StartTls).unwrap_or("220 2.0.0 go ahead".into());
                if conn.send(&reply).await.is_err() {
                    return;
                }
                if reply.starts_with("220") && fault() == Some(Fault::StallAfterStartTls) {
                    while conn.fill().await {}
                    return;
                }
                if reply.starts_with("220") {
                    // RFC 3207 §4.2: anything learned before TLS is forgotten.
                    session = Session::default();
                    conn = match conn.start_tls().await {
                        Some(conn) => conn,
                        None => return,
                    };
                }
                continue;
            }
            "STARTTLS" => "502 5.5.1 STARTTLS not available".into(),
            "AUTH" => {
                let reply = auth(&mut conn, &mut session, &line).await;
                match reply {
                    Some(reply) => reply,
                    None => return,
                }
            }
            "MAIL" => {
                let arg = line.split_once(':').map_or("", |(_, arg)| arg).to_owned();
                let capped = script
                    .messages_per_connection
                    .as_ref()
                    .filter(|(n, _)| delivered >= *n);
                let reply = if let Some((_, cap_reply)) = capped {
                    match cap_reply {
                        Some(reply) => reply.clone(),
                        None => return,
                    }
                } else if session.mail_from.is_some() {
                    "503 5.5.1 nested MAIL".into()
                } else if let Some(reply) = scripted(Verb::Mail) {
                    reply
                } else if (!script.accounts.is_empty() || script.xoauth2_validator.is_some())
                    && session.user.is_none()
                {
                    "530 5.7.0 Authentication required".into()
                } else if let Some((_, reply)) = script
                    .only_sender
                    .as_ref()
                    .filter(|(allowed, _)| *allowed != address(&arg))
                {
                    reply.clone()
                } else {
                    "250 2.1.0 sender ok".into()
                };
                if reply.starts_with('2') {
                    session.mail_from = Some(arg);
                    session.rcpts.clear();
                }
                reply
            }
            "RCPT" => {
                let addr = address(line.split_once(':').map_or("", |(_, arg)| arg));
                let reply = if session.mail_from.is_none() {
                    "503 5.5.1 need MAIL first".into()
                } else if let Some((_, reply)) = script
                    .rcpt_cap
                    .as_ref()
                    .filter(|(n, _)| session.rcpts.len() >= *n)
                {
                    reply.clone()
                } else if let Some(reply) = next_in_sequence(SequenceKey::Rcpt(addr.clone())) {
                    reply
                } else if let Some(reply) = script.rcpt_replies.get(&addr) {
                    reply.clone()
                } else {
                    scripted(Verb::Rcpt).unwrap_or("250 2.1.5 recipient ok".into())
                };
                if reply.starts_with('2') {
                    session.rcpts.push(addr);
                }
                reply
            }
            "DATA" => {
                let go = if let Some(reply) = scripted(Verb::Data) {
                    reply
                } else if session.mail_from.is_none() || session.rcpts.is_empty() {
                    "554 5.5.1 no valid recipients".into()
                } else {
                    "354 end with <CRLF>.<CRLF>".into()
                };
                if !go.starts_with("354") {
                    go
                } else {
                    if conn.send(&go).await.is_err() {
                        return;
                    }
                    if fault() == Some(Fault::StopReadingAfterData) {
                        // Hold the connection open, reading nothing, until the test ends.
                        std::future::pending::<()>().await;
                    }
                    let Some(content) = conn.content().await else {
                        return;
                    };
                    if let Some(Fault::SlowEndOfData(after)) = fault() {
                        tokio::time::sleep(after).await;
                    }
                    if let Some(Fault::HoldEndOfDataAfter(n)) = fault()
                        && shared.log.lock().unwrap().messages.len() >= n
                    {
                        shared.held.fetch_add(1, Ordering::SeqCst);
                        while matches!(fault(), Some(Fault::HoldEndOfDataAfter(_))) {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                        return;
                    }
                    let reply = scripted(Verb::EndOfData).unwrap_or_else(|| {
                        delivered += 1;
                        format!("250 2.0.0 ok: queued as {id}.{delivered}")
                    });
                    let received = Received {
                        mail_from: session.mail_from.clone().unwrap_or_default(),
                        rcpts: session.rcpts.clone(),
                        content,
                        tls: conn.tls,
                        user: session.user.clone(),
                        conn: id,
                        at: Instant::now(),
                    };
                    {
                        let mut log = shared.log.lock().unwrap();
                        if reply.starts_with('2') {
                            log.messages.push(received);
                        } else {
                            log.refused.push(received);
                        }
                    }
                    session.mail_from = None;
                    session.rcpts.clear();
                    if script.hang_up_after_message && reply.starts_with('2') {
                        let _ = conn.send(&reply).await;
                        return;
                    }
                    reply
                }
            }
            "RSET" => {
                session.mail_from = None;
                session.rcpts.clear();
                "250 2.0.0 reset".into()
            }
            "NOOP" => "250 2.0.0 ok".into(),
            "QUIT" => {
                let _ = conn.send("221 2.0.0 bye").await;
                return;
            }
            _ => "500 5.5.2 command not recognized".into(),
        };
        if conn.send(&reply).await.is_err() || reply.starts_with("421") {
            return;
        }
    }
}

/// AUTH PLAIN, LOGIN or XOAUTH2; `None` if the client went away.
async fn auth(conn: &mut Conn, session: &mut Session, line: &str) -> Option<String> {
    let shared = conn.shared.clone();
    let script = &shared.script;
    let mut words = line.split(' ').skip(1);
    let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
    let initial = words.next().map(str::to_owned);
    if session.user.is_some() {
        return Some("503 5.5.1 already authenticated".into());
    }
    if !script
        .auth
        .iter()
        .any(|m| m.eq_ignore_ascii_case(&mechanism))
    {
        return Some("504 5.5.4 mechanism not supported".into());
    }
    let (user, password) = match mechanism.as_str() {
        "PLAIN" => {
            let token = match initial {
                Some(token) => token,
                None => {
                    conn.send("334 ").await.ok()?;
                    conn.line().await?
                }
            };
            let decoded = b64(&token).unwrap_or_default();
            let mut parts = decoded.split('\0').skip(1);
            (
                parts.next().unwrap_or("").to_owned(),
                parts.next().unwrap_or("").to_owned(),
            )
        }
        "LOGIN" => {
            conn.send("334 VXNlcm5hbWU6").await.ok()?;
            let user = b64(&conn.line().await?).unwrap_or_default();
            conn.send("334 UGFzc3dvcmQ6").await.ok()?;
            let password = b64(&conn.line().await?).unwrap_or_default();
            (user, password)
        }
        "XOAUTH2" => {
            // base64("user=USER\x01auth=Bearer TOKEN\x01\x01")
            let initial = match initial {
                Some(initial) => initial,
                None => {
                    conn.send("334 ").await.ok()?;
                    conn.line().await?
                }
            };
            let decoded = b64(&initial).unwrap_or_default();
            let mut user = String::new();
            let mut token = String::new();
            for part in decoded.split('\x01') {
                if let Some(u) = part.strip_prefix("user=") {
                    user = u.to_owned();
                } else if let Some(t) = part.strip_prefix("auth=Bearer ") {
                    token = t.to_owned();
                }
            }
            if let Some(validator) = &script.xoauth2_validator {
                let accepted = validator(&user, &token);
                shared.log.lock().unwrap().xoauth2.push(Xoauth2Attempt {
                    user: user.clone(),
                    token,
                    accepted,
                    conn: conn.id,
                });
                if accepted {
                    session.user = Some(user);
                    return Some("235 2.7.0 Authentication successful".into());
                }
                shared.auth_failures.fetch_add(1, Ordering::SeqCst);
                let status = BASE64_STANDARD.encode(
                    r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#,
                );
                conn.send(&format!("334 {status}")).await.ok()?;
                let answer = conn.line().await?;
                return Some(if answer.trim() == "*" {
                    "501 5.7.0 Authentication aborted".into()
                } else {
                    "535 5.7.3 Authentication unsuccessful".into()
                });
            }
            (user, token)
        }
        _ => return Some("504 5.5.4 mechanism not implemented by the fake".into()),
    };
    let accepted = script
        .accounts
        .iter()
        .any(|(u, p)| *u == user && *p == password);
    if mechanism == "XOAUTH2" {
        shared.log.lock().unwrap().xoauth2.push(Xoauth2Attempt {
            user: user.clone(),
            token: password.clone(),
            accepted,
            conn: conn.id,
        });
    }
    if accepted {
        session.user = Some(user);
        Some("235 2.7.0 Authentication successful".into())
    } else {
        shared.auth_failures.fetch_add(1, Ordering::SeqCst);
        Some("535 5.7.8 Authentication credentials invalid".into())
    }
}
