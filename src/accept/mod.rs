//! Stage 1: the inbound SMTP server that trusted apps submit mail to.
//!
//! [`Listener`] binds the configured addresses, caps connections in all and per client
//! address, refuses clients outside `trusted_networks`, and runs one session task per
//! connection. A session hands each complete message to a [`Handoff`] — the spool in
//! queue mode, the delivery stage in passthrough mode — and answers `250` only once the
//! handoff says the message is safe.

mod intake;
mod limits;
pub mod phase;
pub mod policy;
mod session;
pub mod spill;
pub mod submission;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::{Config, ListenerTls, ServerConfig, Users};
pub use crate::message::{Handoff, HandoffError, HandoffFuture};
use crate::proto::proxy::{self, ProxiedAddress};
use crate::proto::{Enhanced, Reply};
use crate::telemetry::name;
pub use intake::IntakeRewrites;
use limits::ClientCounter;
use phase::Rules;
use session::SessionContext;
use submission::{FailureGuard, Submission, UserBudgets};

/// What a listening socket is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Port {
    /// `server.listen`: clients outside `trusted_networks` are refused at the greeting.
    Relay,
    /// A `[[listener]]`: clients outside `trusted_networks` may send after AUTH.
    Submission(ListenerTls),
}

/// Lifecycle of the relay, observed by every session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RunState {
    /// Accepting and serving.
    Running,
    /// No new connections; idle sessions close with `421`, transactions may finish.
    Draining,
    /// The grace period is over: every session closes now.
    Stopped,
}

/// The listening sockets and what their sessions share.
pub struct Listener {
    sockets: Vec<(TcpListener, Port)>,
    live: Arc<RwLock<Arc<Live>>>,
    connections: Arc<Semaphore>,
    max_connections: usize,
    per_client: ClientCounter,
    shared: SharedAuthState,
}

/// What a new connection is judged and served by; replaced as a whole on reload, while
/// sessions already running keep the one they started with.
struct Live {
    ctx: Arc<SessionContext>,
    trusted: Vec<IpNet>,
    proxy_protocol: bool,
    trusted_proxies: Vec<IpNet>,
}

impl Live {
    fn new(server: &ServerConfig, ctx: SessionContext) -> Live {
        Live {
            ctx: Arc::new(ctx),
            trusted: server.trusted_networks.clone(),
            proxy_protocol: server.proxy_protocol,
            trusted_proxies: server.trusted_proxies.clone(),
        }
    }
}

/// Changes the rules of a running listener (SIGHUP reload).
#[derive(Clone)]
pub struct ListenerControl {
    live: Arc<RwLock<Arc<Live>>>,
    per_client: ClientCounter,
    shared: SharedAuthState,
}

/// What authenticated submission keeps across reloads: failures per client address
/// and each user's sending budget.
#[derive(Clone)]
struct SharedAuthState {
    guard: Arc<FailureGuard>,
    budgets: Arc<UserBudgets>,
    verifications: Arc<Semaphore>,
}

impl SharedAuthState {
    fn new(config: &Config) -> SharedAuthState {
        SharedAuthState {
            guard: Arc::new(FailureGuard::new(
                config.auth.max_failures,
                config.auth.lockout,
            )),
            budgets: Arc::default(),
            verifications: Arc::new(Semaphore::new(submission::verification_slots())),
        }
    }

    fn submission(&self, users: Arc<Users>) -> Arc<Submission> {
        Arc::new(Submission {
            users,
            guard: self.guard.clone(),
            budgets: self.budgets.clone(),
            verifications: self.verifications.clone(),
        })
    }
}

impl ListenerControl {
    /// New connections from now on use these trusted networks, limits, host name,
    /// certificate, `[policy]`, `[[route]]`, intake rewrites (header rules,
    /// `hide_client`), users and `[auth]` limits. Listen addresses and
    /// `max_connections` need a restart.
    pub fn update(&self, config: &Config, tls: Option<TlsAcceptor>, users: Arc<Users>) {
        let server = &config.server;
        let handoff = self
            .live
            .read()
            .expect("listener settings")
            .ctx
            .handoff
            .clone();
        self.shared
            .guard
            .set_limits(config.auth.max_failures, config.auth.lockout);
        let submission = self.shared.submission(users);
        let live = Live::new(server, context(config, handoff, tls, submission));
        *self.live.write().expect("listener settings") = Arc::new(live);
        self.per_client.set_limit(server.max_connections_per_client);
    }
}

fn context(
    config: &Config,
    handoff: Arc<dyn Handoff>,
    tls: Option<TlsAcceptor>,
    submission: Arc<Submission>,
) -> SessionContext {
    SessionContext {
        rules: Rules::from_config(config, tls.is_some()),
        command_timeout: config.server.command_timeout,
        tls,
        handoff,
        rewrites: Arc::new(IntakeRewrites::from_config(config)),
        submission,
    }
}

/// A listening address could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}{hint}")]
pub struct BindError {
    /// The address from `server.listen`.
    pub addr: SocketAddr,
    /// The operating system's reason.
    pub source: std::io::Error,
    hint: &'static str,
}

impl Listener {
    /// Bind every address of `server.listen`, then every `[[listener]]`. Fails before
    /// anything is accepted if one cannot be bound. Sessions apply the configuration's
    /// `[policy]` and intake rewrites to every message they accept, and judge AUTH by
    /// `users`.
    pub async fn bind(
        config: &Config,
        handoff: Arc<dyn Handoff>,
        tls: Option<TlsAcceptor>,
        users: Arc<Users>,
    ) -> Result<Listener, BindError> {
        let server = &config.server;
        let mut sockets = Vec::new();
        let ports = server.listen.iter().map(|addr| (addr, Port::Relay)).chain(
            config
                .listener
                .iter()
                .map(|l| (&l.address, Port::Submission(l.tls))),
        );
        for (addr, port) in ports {
            let socket = TcpListener::bind(addr).await.map_err(|source| {
                let hint = match source.kind() {
                    std::io::ErrorKind::PermissionDenied => {
                        " (ports below 1024 need root or the CAP_NET_BIND_SERVICE capability)"
                    }
                    std::io::ErrorKind::AddrInUse => " (another process already listens there)",
                    std::io::ErrorKind::AddrNotAvailable => " (this machine has no such address)",
                    _ => "",
                };
                BindError {
                    addr: *addr,
                    source,
                    hint,
                }
            })?;
            sockets.push((socket, port));
        }
        let shared = SharedAuthState::new(config);
        let live = Live::new(
            server,
            context(config, handoff, tls, shared.submission(users)),
        );
        Ok(Listener {
            sockets,
            live: Arc::new(RwLock::new(Arc::new(live))),
            connections: Arc::new(Semaphore::new(server.max_connections)),
            max_connections: server.max_connections,
            per_client: ClientCounter::new(server.max_connections_per_client),
            shared,
        })
    }

    /// The bound addresses (with the real port when `:0` was configured): those of
    /// `server.listen`, then those of the `[[listener]]` entries, in configuration order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|(s, _)| s.local_addr().ok())
            .collect()
    }

    /// A handle to change the rules of this listener while it runs.
    pub fn control(&self) -> ListenerControl {
        ListenerControl {
            live: self.live.clone(),
            per_client: self.per_client.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Serve until `shutdown` leaves [`RunState::Running`]; the returned task ends when
    /// every session has ended.
    pub fn spawn(self, shutdown: watch::Receiver<RunState>) -> JoinHandle<()> {
        let Listener {
            sockets,
            live,
            connections,
            max_connections,
            per_client,
            shared: _,
        } = self;
        tokio::spawn(async move {
            let loops: Vec<_> = sockets
                .into_iter()
                .map(|(socket, port)| {
                    let acceptor = AcceptLoop {
                        live: live.clone(),
                        connections: connections.clone(),
                        per_client: per_client.clone(),
                        shutdown: shutdown.clone(),
                        port,
                    };
                    tokio::spawn(acceptor.run(socket))
                })
                .collect();
            for l in loops {
                let _ = l.await;
            }
            // Every session holds a permit; having them all back means all have ended.
            let _ = connections.acquire_many(max_connections as u32).await;
        })
    }
}

struct AcceptLoop {
    live: Arc<RwLock<Arc<Live>>>,
    connections: Arc<Semaphore>,
    per_client: ClientCounter,
    shutdown: watch::Receiver<RunState>,
    port: Port,
}

impl AcceptLoop {
    async fn run(mut self, socket: TcpListener) {
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.wait_for(|s| *s >= RunState::Draining) => break,
                accepted = socket.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            self.start_session(stream, peer);
        }
        debug!("listener stopped accepting");
    }

    fn start_session(&self, stream: TcpStream, peer: SocketAddr) {
        let live = self.live.read().expect("listener settings").clone();
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            let text = format!(
                "{} Too many connections, please try again later",
                live.ctx.rules.hostname
            );
            warn!(client = %peer, "refused: server.max_connections reached");
            metrics::counter!(name::REJECTED, "reason" => "max_connections").increment(1);
            return turn_away(stream, Reply::new(421, Enhanced(4, 3, 2), text));
        };
        let per_client = self.per_client.clone();
        let shutdown = self.shutdown.clone();
        let port = self.port;
        tokio::spawn(async move {
            let (stream, client, initial) = if live.proxy_protocol {
                if !live
                    .trusted_proxies
                    .iter()
                    .any(|net| net.contains(&normalize(peer.ip())))
                {
                    warn!(client = %peer, "refused: PROXY protocol from an address not in trusted_proxies");
                    metrics::counter!(name::REJECTED, "reason" => "untrusted_proxy").increment(1);
                    let text = format!(
                        "{} This port expects connections through a trusted proxy",
                        live.ctx.rules.hostname
                    );
                    return turn_away(stream, Reply::new(554, Enhanced(5, 7, 1), text));
                }
                match read_proxy_header(stream).await {
                    Ok((stream, ProxiedAddress::Client(addr), initial)) => (stream, addr, initial),
                    Ok((stream, ProxiedAddress::Local, initial)) => (stream, peer, initial),
                    Err(e) => {
                        info!(proxy = %peer, error = %e, "closed: no usable PROXY header");
                        return;
                    }
                }
            } else {
                (stream, peer, Vec::new())
            };
            let hostname = &live.ctx.rules.hostname;
            let client_ip = normalize(client.ip());
            let Some(client_slot) = per_client.try_acquire(client_ip) else {
                let text = format!(
                    "{hostname} Too many connections from {client_ip} (limit {}), please try again later",
                    per_client.limit()
                );
                warn!(client = %client, "refused: server.max_connections_per_client reached");
                metrics::counter!(name::REJECTED, "reason" => "max_connections_per_client")
                    .increment(1);
                return turn_away(stream, Reply::new(421, Enhanced(4, 7, 0), text));
            };
            let trusted = live.trusted.iter().any(|net| net.contains(&client_ip));
            // Only the relay port refuses untrusted clients; a listener asks them to AUTH.
            let refusal = (!trusted && port == Port::Relay)
                .then(|| format!("Relay access denied: {client_ip} is not in trusted_networks"));
            debug!(client = %client, "connected");
            if refusal.is_some() {
                metrics::counter!(name::REJECTED, "reason" => "not_trusted").increment(1);
            }
            let active = metrics::gauge!(name::CONNECTIONS);
            active.increment(1.0);
            let mut start = session::Start {
                peer: client,
                refusal,
                trusted,
                port,
                initial,
            };
            if port == Port::Submission(ListenerTls::Implicit) {
                match session::accept_tls(&live.ctx, stream, &mut start).await {
                    Ok((tls, info)) => {
                        session::run(tls, start, Some(info), live.ctx.clone(), shutdown).await
                    }
                    Err(e) => info!(client = %client, error = %e, "implicit TLS handshake failed"),
                }
            } else {
                session::run(stream, start, None, live.ctx.clone(), shutdown).await;
            }
            active.decrement(1.0);
            drop(client_slot);
            drop(permit);
        });
    }
}

/// Read the PROXY header; returns the stream, the address it names, and any bytes that
/// followed it (the start of the SMTP conversation).
async fn read_proxy_header(
    mut stream: TcpStream,
) -> Result<(TcpStream, ProxiedAddress, Vec<u8>), String> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(256);
    let read = async {
        loop {
            match proxy::parse(&buf) {
                Ok(Some((address, used))) => return Ok((address, used)),
                Ok(None) if buf.len() < 536 => {}
                Ok(None) => return Err("PROXY header too long".to_owned()),
                Err(e) => return Err(e.to_string()),
            }
            let mut chunk = [0u8; 256];
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the proxy closed the connection".to_owned());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let (address, used) = tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .map_err(|_| "no PROXY header within 10 s".to_owned())??;
    Ok((stream, address, buf.split_off(used)))
}

/// An IPv4 client on a dual-stack socket shows up as `::ffff:a.b.c.d`; judge it as IPv4.
fn normalize(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// Send one reply and close, without blocking the accept loop.
fn turn_away(mut stream: TcpStream, reply: Reply) {
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let _ = stream.write_all(reply.to_wire().as_bytes()).await;
            let _ = stream.shutdown().await;
        })
        .await;
    });
    info!("connection turned away");
}
