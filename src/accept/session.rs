//! The per-connection driver: reads bytes, runs them through [`Phase`], writes replies.
//!
//! This is the only place that writes to the client socket and the only place where
//! errors from later stages become SMTP replies.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::phase::{Completion, Phase, Rules, Step};
use super::{Handoff, HandoffError, RunState};
use crate::message::{ClientInfo, Message, QueueId};
use crate::proto::{Enhanced, MAX_COMMAND_LINE, Reply, parse_command};
use crate::telemetry::name;
use crate::transform::normalize::{Acceptance, normalize};
use crate::transform::trace::received_header;

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
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

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
                return Ok(if discarding || line.len() + 2 > MAX_COMMAND_LINE {
                    Line::TooLong
                } else {
                    Line::Command(line)
                });
            }
            if self.unread().len() > MAX_COMMAND_LINE {
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
            }
            self.read_more(shutdown, false, Instant::now() + self.timeout)
                .await?;
        }
    }

    /// Read exactly `size` octets of a `BDAT` chunk; kept if a transaction wants them.
    async fn read_chunk(
        &mut self,
        phase: &mut Phase,
        mut size: u64,
        shutdown: &mut watch::Receiver<RunState>,
    ) -> Result<(), End> {
        loop {
            let n = (self.unread().len() as u64).min(size) as usize;
            if n > 0 {
                if let Some(incoming) = phase.incoming() {
                    incoming
                        .reader
                        .feed(&self.rbuf[self.rpos..self.rpos + n], &mut incoming.content);
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
    async fn start_tls(mut self, acceptor: &TlsAcceptor) -> Result<(Connection<S>, String), End> {
        self.flush().await.map_err(End::Io)?;
        let Transport::Plain(plain) = self.stream else {
            return Err(End::Io(std::io::Error::other("STARTTLS on a TLS stream")));
        };
        let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(plain));
        let tls = handshake
            .await
            .map_err(|_| End::Timeout)?
            .map_err(End::Io)?;
        let (_, state) = tls.get_ref();
        let version = match state.protocol_version() {
            Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
            Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
            other => format!("{other:?}"),
        };
        let suite = state
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        let conn = Connection {
            stream: Transport::Tls(Box::new(tls)),
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            timeout: self.timeout,
        };
        Ok((conn, format!("{version} {suite}")))
    }
}

/// Run one SMTP session to its end.
pub(crate) async fn run<S>(
    stream: S,
    peer: SocketAddr,
    refusal: Option<String>,
    ctx: Arc<SessionContext>,
    mut shutdown: watch::Receiver<RunState>,
    initial: Vec<u8>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut rules = ctx.rules.clone();
    rules.starttls_available = ctx.tls.is_some();
    let refused = refusal.is_some();
    let (mut phase, greeting) = Phase::start(&rules, refusal);
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
    let mut tls_info: Option<String> = None;
    let mut errors = 0;

    let end = loop {
        if errors >= MAX_ERRORS {
            let text = format!("{} Too many errors, closing connection", rules.hostname);
            conn.queue(&Reply::new(421, Enhanced(4, 7, 0), text));
            break None;
        }
        let line = match conn.next_line(&mut shutdown, !phase.in_transaction()).await {
            Ok(Line::Command(line)) => line,
            Ok(Line::TooLong) => {
                errors += 1;
                conn.queue(&Reply::new(
                    500,
                    Enhanced(5, 5, 2),
                    format!("Line too long (limit {MAX_COMMAND_LINE} octets)"),
                ));
                continue;
            }
            Err(end) => break Some(end),
        };
        let cmd = match parse_command(&line) {
            Ok(cmd) => cmd,
            Err(e) => {
                errors += 1;
                let reply = e.reply();
                debug!(client = %peer, error = %e, "bad command");
                conn.queue(&reply);
                if reply.close {
                    break None;
                }
                continue;
            }
        };
        let (next, step) = phase.on_command(cmd, &rules);
        phase = next;
        match step {
            Step::Reply(reply) => {
                if matches!(reply.code, 500..=504 | 554 | 555) {
                    errors += 1;
                }
                conn.queue(&reply);
                if reply.close {
                    break None;
                }
            }
            Step::ReadData(go) => {
                conn.queue(&go);
                if let Err(end) = conn.read_data(&mut phase, &mut shutdown).await {
                    break Some(end);
                }
                let (next, reply) = complete(phase, peer, tls_info.as_deref(), &ctx).await;
                phase = next;
                conn.queue(&reply);
            }
            Step::ReadChunk { size, last } => {
                if let Err(end) = conn.read_chunk(&mut phase, size, &mut shutdown).await {
                    break Some(end);
                }
                if let Some(reply) = phase.chunk_without_transaction() {
                    errors += 1;
                    conn.queue(&reply);
                } else if last {
                    if let Some(incoming) = phase.incoming() {
                        incoming.reader.finish(&mut incoming.content);
                    }
                    let (next, reply) = complete(phase, peer, tls_info.as_deref(), &ctx).await;
                    phase = next;
                    conn.queue(&reply);
                } else {
                    conn.queue(&Reply::new(
                        250,
                        Enhanced(2, 0, 0),
                        format!("{size} octets received"),
                    ));
                }
            }
            Step::StartTls(ready) => {
                let acceptor = ctx
                    .tls
                    .clone()
                    .expect("STARTTLS is only offered with a certificate");
                conn.queue(&ready);
                match conn.start_tls(&acceptor).await {
                    Ok((upgraded, info)) => {
                        debug!(client = %peer, tls = %info, "STARTTLS done");
                        conn = upgraded;
                        tls_info = Some(info);
                        rules.starttls_available = false;
                    }
                    Err(end) => {
                        info!(client = %peer, error = ?end, "TLS handshake failed");
                        return;
                    }
                }
            }
        }
    };

    match end {
        Some(End::Timeout) => {
            let text = format!(
                "{} Timeout: no complete command within {}s, closing connection",
                rules.hostname,
                conn.timeout.as_secs()
            );
            conn.queue(&Reply::new(421, Enhanced(4, 4, 2), text));
            info!(client = %peer, "closed after timeout");
        }
        Some(End::Shutdown) => {
            let text = format!(
                "{} Service shutting down, please try again later",
                rules.hostname
            );
            conn.queue(&Reply::new(421, Enhanced(4, 3, 2), text));
        }
        Some(End::Eof) => {
            if phase.in_transaction() {
                info!(client = %peer, "client disconnected during a transaction; nothing was accepted");
            }
            return;
        }
        Some(End::Io(e)) => {
            debug!(client = %peer, error = %e, "connection error");
            return;
        }
        None => {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = conn.flush().await;
        let _ = conn.stream.shutdown().await;
    })
    .await;
}

/// A message is complete: check it, hand it to the next stage, and produce the reply.
async fn complete(
    phase: Phase,
    peer: SocketAddr,
    tls: Option<&str>,
    ctx: &SessionContext,
) -> (Phase, Reply) {
    let helo = phase
        .helo()
        .cloned()
        .expect("a transaction implies a greeting");
    let (next, completion) = phase.end_of_content();
    let (envelope, content) = match completion {
        Completion::Accept { envelope, content } => (envelope, content),
        Completion::Reject(reply) => {
            info!(client = %peer, reply = %reply, "message rejected");
            let reason = match reply.code {
                552 => "size",
                554 => "loop",
                _ => "other",
            };
            metrics::counter!(name::REJECTED, "reason" => reason).increment(1);
            return (next, reply);
        }
    };
    let id = QueueId::generate();
    let now = SystemTime::now();
    let client = ClientInfo {
        ip: peer.ip(),
        helo: helo.name,
        esmtp: helo.extended,
        tls: tls.map(str::to_owned),
    };
    let acceptance = Acceptance {
        sender: &envelope.sender,
        hostname: &ctx.rules.hostname,
        smtputf8: envelope.smtputf8,
        id,
        now,
    };
    let content = match normalize(&content, &acceptance) {
        Ok(content) => content,
        Err(e) => {
            info!(client = %peer, error = %e, "message refused: no usable sender address");
            let text = "The message has no usable From address and the envelope sender is empty; set a From header with an address";
            metrics::counter!(name::REJECTED, "reason" => "no_address").increment(1);
            return (next, Reply::new(550, Enhanced(5, 6, 0), text));
        }
    };
    // The repairs may add a little (Date, Message-ID, encoded words, one display name of
    // at most MAX_NAME_OCTETS); a message that no longer fits the limit we advertise is
    // refused now rather than handed on above it (RFC 1870: 552 5.3.4).
    if content.len() as u64 > ctx.rules.max_message_size {
        let text = format!(
            "Message too big once its headers are repaired: {} octets exceed the limit of {}; nothing was kept",
            content.len(),
            ctx.rules.max_message_size
        );
        info!(client = %peer, size = content.len(), "message refused: too big once normalised");
        metrics::counter!(name::REJECTED, "reason" => "size").increment(1);
        return (next, Reply::new(552, Enhanced(5, 3, 4), text));
    }
    let trace = received_header(&client, &envelope, id, &ctx.rules.hostname, now);
    let mut data = Vec::with_capacity(trace.len() + content.len());
    data.extend_from_slice(trace.as_bytes());
    data.extend_from_slice(&content);
    drop(content);
    let size = data.len();
    let (sender, rcpts) = (envelope.sender.to_string(), envelope.recipients.len());
    let message = Message {
        id,
        envelope,
        content: data,
        received_at: now,
    };
    let reply = match ctx.handoff.submit(message).await {
        Ok(()) => {
            metrics::counter!(name::RECEIVED).increment(1);
            info!(queue_id = %id, client = %peer, from = %sender, rcpts, size, "message accepted");
            Reply::new(250, Enhanced(2, 0, 0), format!("queued as {id}"))
        }
        Err(HandoffError::Refused(reply)) => {
            metrics::counter!(name::REJECTED, "reason" => "delivery").increment(1);
            info!(queue_id = %id, client = %peer, from = %sender, reply = %reply, "message refused by delivery");
            reply
        }
        Err(HandoffError::Unavailable(detail)) => {
            metrics::counter!(name::REJECTED, "reason" => "local_error").increment(1);
            warn!(queue_id = %id, client = %peer, error = %detail, "message not accepted: local failure");
            Reply::temporary_failure()
        }
        Err(HandoffError::NoStorage(detail)) => {
            metrics::counter!(name::REJECTED, "reason" => "no_storage").increment(1);
            warn!(queue_id = %id, client = %peer, error = %detail, "message not accepted: spool storage full");
            Reply::insufficient_storage()
        }
    };
    (next, reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Discard;

    impl Handoff for Discard {
        fn submit(&self, _message: Message) -> crate::accept::HandoffFuture<'_> {
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
            },
            command_timeout: Duration::from_millis(200),
            tls: None,
            handoff: Arc::new(Discard),
        });
        let (client, server) = tokio::io::duplex(256);
        let (_unread, mut commands) = tokio::io::split(client);
        let (_state, shutdown) = watch::channel(RunState::Running);
        let peer = "127.0.0.1:1025".parse().unwrap();
        let session = tokio::spawn(run(server, peer, None, ctx, shutdown, Vec::new()));
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
