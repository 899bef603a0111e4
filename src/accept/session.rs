//! The per-connection driver: reads bytes, runs them through [`Phase`], writes replies.
//!
//! This is the only place that writes to the client socket; what a complete message
//! becomes, and the reply it gets, is the [`intake`]'s.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::intake::{self, IntakeRewrites};
use super::phase::{Phase, Rules, Step};
use super::submission::{AuthOffer, Identity, Submission};
use super::{Handoff, Port, RunState};
use crate::message::ContentMemory;
use crate::proto::auth::{self, MAX_RESPONSE_LINE};
use crate::proto::{
    AuthCommand, AuthError, Enhanced, Exchange, MAX_COMMAND_LINE, Reply, parse_command,
};

/// Protocol errors a client may make before we hang up (RFC 5321 §4.3.2 lets a server
/// close on a client that only sends garbage).
const MAX_ERRORS: u32 = 10;

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client refused at the greeting (`554 5.7.1`) may take to send a command
/// (it gets its answer, then the connection closes): it holds a connection slot that a
/// trusted client may need.
const REFUSED_CLIENT_WAIT: Duration = Duration::from_secs(10);

/// What every session of one listener shares.
pub(crate) struct SessionContext {
    /// Protocol rules (host name, limits).
    pub rules: Rules,
    /// Idle limit while waiting for a command or message data.
    pub command_timeout: Duration,
    /// Inbound STARTTLS, when a certificate is configured.
    pub tls: Option<TlsAcceptor>,
    /// The next stage.
    pub handoff: Arc<dyn Handoff>,
    /// What intake writes into each message: header rules, how `Received` names the client.
    pub rewrites: Arc<IntakeRewrites>,
    /// Users, failed attempts and budgets for AUTH on a `[[listener]]`.
    pub submission: Arc<Submission>,
}

/// How a session begins: who connected, to which port, and what was read already.
pub(crate) struct Start {
    /// The client (as the PROXY header names it, when there is one).
    pub peer: SocketAddr,
    /// Why the client is refused at the greeting, if it is.
    pub refusal: Option<String>,
    /// Whether the client is in `trusted_networks`.
    pub trusted: bool,
    /// The port it connected to.
    pub port: Port,
    /// Bytes read after a PROXY header: the start of the conversation.
    pub initial: Vec<u8>,
}

/// A stream with bytes already read from it put back in front (what followed a PROXY
/// header on an implicit-TLS port is the start of the TLS handshake).
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The TLS handshake of an implicit-TLS port (465), before the greeting. `start.initial`
/// (bytes after a PROXY header) is the beginning of the handshake and is taken from it.
/// Returns the stream and its TLS version and cipher suite.
pub(crate) async fn accept_tls<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &SessionContext,
    stream: S,
    start: &mut Start,
) -> std::io::Result<(tokio_rustls::server::TlsStream<Prefixed<S>>, String)> {
    let acceptor = ctx
        .tls
        .as_ref()
        .ok_or_else(|| std::io::Error::other("no certificate configured (server.tls_cert_file)"))?;
    let stream = Prefixed {
        prefix: std::mem::take(&mut start.initial),
        at: 0,
        inner: stream,
    };
    let tls = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no handshake in 30 s"))??;
    let info = describe_tls(tls.get_ref().1);
    Ok((tls, info))
}

/// `TLSv1.3 TLS13_AES_256_GCM_SHA384`: what a `Received` header and the log say.
fn describe_tls(state: &tokio_rustls::rustls::ServerConnection) -> String {
    let version = match state.protocol_version() {
        Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        other => format!("{other:?}"),
    };
    let suite = state
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    format!("{version} {suite}")
}

/// Why a session ended without a QUIT.
#[derive(Debug)]
enum End {
    /// The client closed the connection.
    Eof,
    /// No data within the command timeout.
    Timeout,
    /// The relay is shutting down.
    Shutdown,
    /// A socket or TLS error.
    Io(std::io::Error),
}

/// A plaintext stream, or the same stream after STARTTLS.
enum Transport<S> {
    Plain(S),
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
    /// During the STARTTLS handshake, which owns the stream; never read or written.
    Upgrading,
}

fn upgrading<T>() -> Poll<std::io::Result<T>> {
    Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()))
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Transport<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Upgrading => upgrading(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Transport<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Upgrading => upgrading(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Upgrading => upgrading(),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Upgrading => upgrading(),
        }
    }
}

/// Where content beyond memory goes and the memory content is taken from (see
/// [`super::spill`]).
type Spooling<'a> = (Option<&'a Path>, Option<&'a Arc<ContentMemory>>);

/// Buffered reading and writing with timeouts and the shutdown signal.
struct Connection<S> {
    stream: Transport<S>,
    rbuf: Vec<u8>,
    /// Start of unread bytes in `rbuf`.
    rpos: usize,
    wbuf: Vec<u8>,
    timeout: Duration,
}

/// One command line, or the report that it was too long.
enum Line {
    Command(Vec<u8>),
    TooLong,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    fn unread(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    fn consume(&mut self, n: usize) {
        self.rpos += n;
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
    }

    fn queue(&mut self, reply: &Reply) {
        reply.write_to(&mut self.wbuf);
    }

    /// Send the queued replies. A client that stops reading them (its receive window
    /// full) gets as long as it would get to send a command, not forever.
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            let (stream, wbuf) = (&mut self.stream, &self.wbuf);
            let write = async {
                stream.write_all(wbuf).await?;
                stream.flush().await
            };
            tokio::time::timeout(self.timeout, write)
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client does not read its replies",
                    )
                })??;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Read more bytes. Replies queued so far are sent first: with PIPELINING the client
    /// may send a batch of commands, and we answer the batch once we run out of input
    /// (RFC 2920 §3.2). `idle` means no transaction is under way, so a shutdown may
    /// interrupt right away; otherwise only a forced stop does.
    async fn read_more(
        &mut self,
        shutdown: &mut watch::Receiver<RunState>,
        idle: bool,
        deadline: Instant,
    ) -> Result<(), End> {
        self.flush().await.map_err(End::Io)?;
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        // Small for commands (an idle session holds little memory), large for message data.
        self.rbuf.reserve(if idle { 1024 } else { 16 * 1024 });
        let stop_at = if idle {
            RunState::Draining
        } else {
            RunState::Stopped
        };
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s >= stop_at) => Err(End::Shutdown),
            read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)) => match read {
                Err(_) => Err(End::Timeout),
                Ok(Ok(0)) => Err(End::Eof),
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(End::Io(e)),
            },
        }
    }

    /// The next command line, without its line ending. A line over the limit is read to
    /// its end and reported as [`Line::TooLong`], so its tail is never taken as a command.
    ///
    /// The whole line must arrive within the timeout, however it is split into reads: a
    /// client trickling a byte at a time cannot hold its connection (and its slot) forever.
    async fn next_line(
        &mut self,
        shutdown: &mut watch::Receiver<RunState>,
        idle: bool,
        limit: usize,
    ) -> Result<Line, End> {
        if self.unread().is_empty() && self.rbuf.capacity() > 4096 {
            // Give back the message-sized buffer while the session waits for commands.
            self.rbuf = Vec::new();
            self.rpos = 0;
        }
        let mut discarding = false;
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(nl) = memchr::memchr(b'\n', self.unread()) {
                let line = self.unread()[..nl]
                    .strip_suffix(b"\r")
                    .unwrap_or(&self.unread()[..nl])
                    .to_vec();
                self.consume(nl + 1);
                return Ok(if discarding || line.len() + 2 > limit {
                    Line::TooLong
                } else {
                    Line::Command(line)
                });
            }
            if self.unread().len() > limit {
                discarding = true;
                let n = self.unread().len();
                self.consume(n);
            }
            self.read_more(shutdown, idle && !discarding, deadline)
                .await?;
        }
    }

    /// Read `DATA` content into the phase's buffer until `CRLF.CRLF`.
    async fn read_data(
        &mut self,
        phase: &mut Phase,
        (body_dir, memory): Spooling<'_>,
        shutdown: &mut watch::Receiver<RunState>,
    ) -> Result<(), End> {
        loop {
            if !self.unread().is_empty() {
                let incoming = phase
                    .incoming()
                    .expect("reading DATA only in the Receiving phase");
                let (used, done) = incoming
                    .reader
                    .feed(&self.rbuf[self.rpos..], &mut incoming.content);
                self.consume(used);
                if done {
                    return Ok(());
                }
                incoming
                    .spill
                    .absorb(&mut incoming.content, body_dir, memory)
                    .await;
            }
            self.read_more(shutdown, false, Instant::now() + self.timeout)
                .await?;
        }
    }

    /// Read exactly `size` octets of a `BDAT` chunk; kept if a transaction wants them.
    async fn read_chunk(
        &mut self,
        phase: &mut Phase,
        (mut size, (body_dir, memory)): (u64, Spooling<'_>),
        shutdown: &mut watch::Receiver<RunState>,
    ) -> Result<(), End> {
        loop {
            let n = (self.unread().len() as u64).min(size) as usize;
            if n > 0 {
                if let Some(incoming) = phase.incoming() {
                    incoming
                        .reader
                        .feed(&self.rbuf[self.rpos..self.rpos + n], &mut incoming.content);
                    incoming
                        .spill
                        .absorb(&mut incoming.content, body_dir, memory)
                        .await;
                }
                self.consume(n);
                size -= n as u64;
            }
            if size == 0 {
                return Ok(());
            }
            self.read_more(shutdown, false, Instant::now() + self.timeout)
                .await?;
        }
    }

    /// Answer `220`, drop anything the client pipelined after STARTTLS (it was sent in
    /// plaintext and must not be executed inside TLS), and run the handshake.
    /// Returns the TLS version and cipher suite.
    async fn start_tls(&mut self, acceptor: &TlsAcceptor) -> Result<String, End> {
        self.flush().await.map_err(End::Io)?;
        let Transport::Plain(plain) = std::mem::replace(&mut self.stream, Transport::Upgrading)
        else {
            return Err(End::Io(std::io::Error::other("STARTTLS on a TLS stream")));
        };
        let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(plain));
        let tls = handshake
            .await
            .map_err(|_| End::Timeout)?
            .map_err(End::Io)?;
        let info = describe_tls(tls.get_ref().1);
        self.stream = Transport::Tls(Box::new(tls));
        self.rbuf = Vec::new();
        self.rpos = 0;
        self.wbuf.clear();
        Ok(info)
    }
}

/// Run one SMTP session to its end. `tls` is the TLS version and cipher of a stream
/// that is already encrypted (implicit TLS).
pub(crate) async fn run<S>(
    stream: S,
    start: Start,
    tls: Option<String>,
    ctx: Arc<SessionContext>,
    shutdown: watch::Receiver<RunState>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Start {
        peer,
        refusal,
        trusted,
        port,
        initial,
    } = start;
    let mut rules = ctx.rules.clone().for_client(super::normalize(peer.ip()));
    rules.starttls_available = ctx.tls.is_some() && tls.is_none();
    rules.auth = match (port, &tls) {
        (Port::Relay, _) => AuthOffer::NotHere,
        (Port::Submission(_), Some(_)) => AuthOffer::Offered,
        (Port::Submission(_), None) => AuthOffer::AfterStartTls,
    };
    rules.identity = if trusted {
        Identity::TrustedNetwork
    } else {
        Identity::Anonymous
    };
    let refused = refusal.is_some();
    let (phase, greeting) = Phase::start(&rules, refusal);
    if refused {
        info!(client = %peer, "refused: not in trusted_networks");
    }
    let mut conn = Connection {
        stream: Transport::Plain(stream),
        rbuf: initial,
        rpos: 0,
        wbuf: Vec::new(),
        // A refused client has nothing to wait for: its slot is freed soon.
        timeout: if refused {
            ctx.command_timeout.min(REFUSED_CLIENT_WAIT)
        } else {
            ctx.command_timeout
        },
    };
    conn.queue(&greeting);
    let session = Session {
        conn,
        phase: Some(phase),
        rules,
        ctx,
        peer,
        tls_info: tls,
        errors: 0,
        shutdown,
    };
    session.run().await;
}

/// What the session does after a step.
enum Flow {
    /// Read the next command.
    Continue,
    /// Send what is queued and close (QUIT, too many errors, a reply that closes).
    Close,
    /// The connection ended or must end without a QUIT.
    Ended(End),
    /// Drop the connection as it is (a failed TLS handshake: nothing can be sent).
    Abort,
}

/// One SMTP session: the connection, the protocol phase, and what the session learned.
/// One method per step; only [`Session::run`] loops.
struct Session<S> {
    conn: Connection<S>,
    /// Always `Some` between steps; taken while a step moves the phase by value.
    phase: Option<Phase>,
    rules: Rules,
    ctx: Arc<SessionContext>,
    peer: SocketAddr,
    /// The TLS version and cipher after STARTTLS, for the `Received` header.
    tls_info: Option<String>,
    /// Protocol errors so far; at [`MAX_ERRORS`] the session ends with `421`.
    errors: u32,
    shutdown: watch::Receiver<RunState>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    fn phase(&mut self) -> &mut Phase {
        self.phase
            .as_mut()
            .expect("the phase is back after every step")
    }

    async fn run(mut self) {
        let end = loop {
            let flow = self.next_command().await;
            match flow {
                Flow::Continue => {}
                Flow::Close => break None,
                Flow::Ended(end) => break Some(end),
                Flow::Abort => return,
            }
        };
        self.finish(end).await;
    }

    /// Read one command line and carry it out.
    async fn next_command(&mut self) -> Flow {
        if self.errors >= MAX_ERRORS {
            let text = format!(
                "{} Too many errors, closing connection",
                self.rules.hostname
            );
            self.conn.queue(&Reply::new(421, Enhanced(4, 7, 0), text));
            return Flow::Close;
        }
        let idle = !self.phase().in_transaction();
        // An AUTH line carries an initial response of up to 12288 octets (RFC 4954 §4).
        let limit = if self.rules.auth == AuthOffer::Offered {
            MAX_RESPONSE_LINE + 64
        } else {
            MAX_COMMAND_LINE
        };
        let line = match self.conn.next_line(&mut self.shutdown, idle, limit).await {
            Ok(Line::Command(line)) if line.len() + 2 <= MAX_COMMAND_LINE || is_auth(&line) => line,
            Ok(Line::Command(_) | Line::TooLong) => {
                self.errors += 1;
                self.conn.queue(&Reply::new(
                    500,
                    Enhanced(5, 5, 2),
                    format!("Line too long (limit {MAX_COMMAND_LINE} octets)"),
                ));
                return Flow::Continue;
            }
            Err(end) => return Flow::Ended(end),
        };
        let cmd = match parse_command(&line) {
            Ok(cmd) => cmd,
            Err(e) => {
                self.errors += 1;
                let reply = e.reply();
                debug!(client = %self.peer, error = %e, "bad command");
                return self.reply(reply);
            }
        };
        let phase = self
            .phase
            .take()
            .expect("the phase is back after every step");
        let (next, step) = phase.on_command(cmd, &self.rules);
        self.phase = Some(next);
        match step {
            Step::Reply(reply) => {
                if matches!(reply.code, 500..=504 | 554 | 555) {
                    self.errors += 1;
                }
                self.reply(reply)
            }
            Step::ReadData(go) => self.on_data(go).await,
            Step::ReadChunk { size, last } => self.on_chunk(size, last).await,
            Step::StartTls(ready) => self.on_starttls(ready).await,
            Step::Authenticate(command) => self.on_authenticate(command).await,
        }
    }

    /// `AUTH`: unless the client address is locked out, run the SASL exchange, verify
    /// the credentials off the runtime (argon2 costs tens of milliseconds), and answer
    /// `235` or `535`. Neither the password nor the response lines reach a log.
    async fn on_authenticate(&mut self, command: AuthCommand) -> Flow {
        let client = super::normalize(self.peer.ip());
        let submission = self.ctx.submission.clone();
        if let Some(left) = submission
            .guard
            .locked_for(client, Instant::now().into_std())
        {
            info!(client = %self.peer, "AUTH refused: the address is locked out after too many failures");
            let minutes = left.as_secs().div_ceil(60).max(1);
            return self.reply(Reply::new(
                454,
                Enhanced(4, 7, 0),
                format!(
                    "Too many failed authentication attempts from {client}; try again in {minutes} min"
                ),
            ));
        }
        let (mut exchange, mut step) =
            Exchange::start(command.mechanism, command.initial.as_deref());
        let credentials = loop {
            match step {
                auth::Step::Challenge(text) => {
                    self.conn.queue(&Reply::plain(334, text));
                    let line = match self
                        .conn
                        .next_line(&mut self.shutdown, true, MAX_RESPONSE_LINE + 2)
                        .await
                    {
                        Ok(Line::Command(line)) => line,
                        Ok(Line::TooLong) => {
                            self.errors += 1;
                            return self.reply(AuthError::LineTooLong.reply());
                        }
                        Err(end) => return Flow::Ended(end),
                    };
                    (exchange, step) = exchange.on_line(&line);
                    wipe(line);
                }
                auth::Step::Failed(e) => {
                    self.errors += 1;
                    debug!(client = %self.peer, error = %e, "AUTH exchange failed");
                    return self.reply(e.reply());
                }
                auth::Step::Done(credentials) => break credentials,
            }
        };
        let name = credentials.authcid().to_owned();
        let users = submission.users.clone();
        let Ok(_slot) = submission.verifications.clone().acquire_owned().await else {
            return self.reply(Reply::temporary_failure());
        };
        let verified = tokio::task::spawn_blocking(move || {
            users
                .verify(credentials.authcid(), credentials.password())
                .then(|| users.get(credentials.authcid()).cloned())
                .flatten()
        })
        .await
        .ok()
        .flatten();
        let Some(user) = verified else {
            let locked = submission.guard.failed(client, Instant::now().into_std());
            info!(client = %self.peer, user = ?name, "AUTH failed: wrong user name or password");
            if locked {
                warn!(client = %client, "locked out after too many failed AUTH attempts (auth.max_failures); AUTH from it gets 454 until auth.lockout has passed");
            }
            return self.reply(Reply::new(
                535,
                Enhanced(5, 7, 8),
                "Authentication credentials invalid: wrong user name or password",
            ));
        };
        submission.guard.succeeded(client);
        info!(client = %self.peer, user = %user.name, "authenticated");
        let budget = submission.budgets.for_user(&user);
        self.rules.identity = Identity::User(Arc::new(user), budget);
        self.reply(Reply::new(
            235,
            Enhanced(2, 7, 0),
            "Authentication successful",
        ))
    }

    /// Queue `reply`; close after it if it says so.
    fn reply(&mut self, reply: Reply) -> Flow {
        self.conn.queue(&reply);
        if reply.close {
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    /// `DATA`: read the content up to `CRLF.CRLF`, then hand the message on.
    async fn on_data(&mut self, go: Reply) -> Flow {
        self.conn.queue(&go);
        let phase = self
            .phase
            .as_mut()
            .expect("the phase is back after every step");
        let spooling = (
            self.ctx.handoff.body_dir(),
            self.ctx.handoff.content_memory(),
        );
        if let Err(end) = self
            .conn
            .read_data(phase, spooling, &mut self.shutdown)
            .await
        {
            return Flow::Ended(end);
        }
        self.complete().await;
        Flow::Continue
    }

    /// `BDAT`: read the chunk; after the last one hand the message on.
    async fn on_chunk(&mut self, size: u64, last: bool) -> Flow {
        let phase = self
            .phase
            .as_mut()
            .expect("the phase is back after every step");
        let spooling = (
            self.ctx.handoff.body_dir(),
            self.ctx.handoff.content_memory(),
        );
        if let Err(end) = self
            .conn
            .read_chunk(phase, (size, spooling), &mut self.shutdown)
            .await
        {
            return Flow::Ended(end);
        }
        if let Some(reply) = self.phase().chunk_without_transaction() {
            self.errors += 1;
            self.conn.queue(&reply);
        } else if last {
            if let Some(incoming) = self.phase().incoming() {
                incoming.reader.finish(&mut incoming.content);
            }
            self.complete().await;
        } else {
            self.conn.queue(&Reply::new(
                250,
                Enhanced(2, 0, 0),
                format!("{size} octets received"),
            ));
        }
        Flow::Continue
    }

    /// The content is complete: the intake checks it and hands it on; queue its reply.
    async fn complete(&mut self) {
        let phase = self
            .phase
            .take()
            .expect("the phase is back after every step");
        let (next, reply) = intake::complete(
            phase,
            self.peer,
            (self.tls_info.as_deref(), &self.rules.identity),
            &self.ctx,
        )
        .await;
        self.phase = Some(next);
        self.conn.queue(&reply);
    }

    /// `STARTTLS`: answer, then the handshake; the session goes on encrypted with a
    /// fresh state (the phase has forgotten the greeting).
    async fn on_starttls(&mut self, ready: Reply) -> Flow {
        let acceptor = self
            .ctx
            .tls
            .clone()
            .expect("STARTTLS is only offered with a certificate");
        self.conn.queue(&ready);
        match self.conn.start_tls(&acceptor).await {
            Ok(info) => {
                debug!(client = %self.peer, tls = %info, "STARTTLS done");
                self.tls_info = Some(info);
                self.rules.starttls_available = false;
                if self.rules.auth == AuthOffer::AfterStartTls {
                    self.rules.auth = AuthOffer::Offered;
                }
                Flow::Continue
            }
            Err(end) => {
                info!(client = %self.peer, error = ?end, "TLS handshake failed");
                Flow::Abort
            }
        }
    }

    /// The last words: `421` for a timeout or a shutdown, then flush and close; nothing
    /// for a client that is gone.
    async fn finish(mut self, end: Option<End>) {
        match end {
            Some(End::Timeout) => {
                let text = format!(
                    "{} Timeout: no complete command within {}s, closing connection",
                    self.rules.hostname,
                    self.conn.timeout.as_secs()
                );
                self.conn.queue(&Reply::new(421, Enhanced(4, 4, 2), text));
                info!(client = %self.peer, "closed after timeout");
            }
            Some(End::Shutdown) => {
                let text = format!(
                    "{} Service shutting down, please try again later",
                    self.rules.hostname
                );
                self.conn.queue(&Reply::new(421, Enhanced(4, 3, 2), text));
            }
            Some(End::Eof) => {
                if self.phase().in_transaction() {
                    info!(client = %self.peer, "client disconnected during a transaction; nothing was accepted");
                }
                return;
            }
            Some(End::Io(e)) => {
                debug!(client = %self.peer, error = %e, "connection error");
                return;
            }
            None => {}
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = self.conn.flush().await;
            let _ = self.conn.stream.shutdown().await;
        })
        .await;
    }
}

/// Whether a command line is an `AUTH` command (which may be longer than others).
fn is_auth(line: &[u8]) -> bool {
    line.get(..5)
        .is_some_and(|verb| verb.eq_ignore_ascii_case(b"AUTH "))
}

/// Overwrite a line that held a secret before freeing it.
fn wipe(mut line: Vec<u8>) {
    line.fill(0);
    std::hint::black_box(&line);
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Discard;

    fn peer_ip() -> std::net::IpAddr {
        "127.0.0.1".parse().unwrap()
    }

    impl Handoff for Discard {
        fn submit(&self, _message: crate::message::Message) -> crate::accept::HandoffFuture<'_> {
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_its_replies_is_dropped_after_the_timeout() {
        let ctx = Arc::new(SessionContext {
            rules: Rules {
                hostname: "relay.test".into(),
                max_message_size: 1 << 20,
                max_recipients: 10,
                starttls_available: false,
                policy: Arc::default(),
                routes: Arc::new([]),
                client: peer_ip(),
                auth: AuthOffer::NotHere,
                identity: Identity::TrustedNetwork,
            },
            command_timeout: Duration::from_millis(200),
            tls: None,
            handoff: Arc::new(Discard),
            rewrites: Arc::default(),
            submission: Arc::new(Submission {
                users: Arc::default(),
                guard: Arc::new(super::super::submission::FailureGuard::new(
                    5,
                    Duration::from_secs(60),
                )),
                budgets: Arc::default(),
                verifications: Arc::new(tokio::sync::Semaphore::new(1)),
            }),
        });
        let (client, server) = tokio::io::duplex(256);
        let (_unread, mut commands) = tokio::io::split(client);
        let (_state, shutdown) = watch::channel(RunState::Running);
        let peer = "127.0.0.1:1025".parse().unwrap();
        let start = Start {
            peer,
            refusal: None,
            trusted: true,
            port: Port::Relay,
            initial: Vec::new(),
        };
        let session = tokio::spawn(run(server, start, None, ctx, shutdown));
        let writer = tokio::spawn(async move {
            let batch = "HELP\r\n".repeat(100);
            while commands.write_all(batch.as_bytes()).await.is_ok() {}
        });
        // The bound only guards against a hang; the session ends after ~200 ms.
        tokio::time::timeout(Duration::from_secs(10), session)
            .await
            .expect("the session waited forever for the client to read")
            .unwrap();
        writer.abort();
    }
}
