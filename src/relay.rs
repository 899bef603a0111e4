//! Assembling the pipeline from a configuration, and stopping it gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::accept::{BindError, Handoff, Listener, ListenerControl, RunState};
use crate::config::{Config, DeliveryMode, Users, UsersError};
use crate::deliver::{Deliverer, SetupError};
use crate::ops::metrics;
use crate::ops::status::{Queue, Status, StatusSource};
use crate::queue::{Passthrough, Scheduler, Settings};
use crate::spool::{Spool, SpoolError};
use crate::tls::TlsSetupError;
use crate::transform::Transformer;
use crate::transform::dkim::{DkimError, DkimKeys};

/// Why the relay could not start. Nothing is listening when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Inbound TLS certificate or key.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// An upstream could not be set up.
    #[error(transparent)]
    Upstream(#[from] SetupError),
    /// A listening address could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A DKIM key is missing, unreadable, malformed or exposed.
    #[error(transparent)]
    Dkim(#[from] DkimError),
    /// The metrics endpoint cannot listen.
    #[error(
        "cannot listen on {addr} for metrics: {source} (set [metrics] listen to another address, or \"off\")"
    )]
    Metrics {
        /// `metrics.listen`.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The spool cannot be opened (locked by another relay, unwritable).
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The users file (`[auth] users_file`) cannot be read or is invalid.
    #[error(transparent)]
    Users(#[from] UsersError),
}

/// The users of `[auth] users_file`; none without one. A missing file is an error: a
/// mistyped path must not leave every login failing without a word. Read before
/// anything else starts, so a bad file stops the relay before the spool is opened.
fn load_users(config: &Config) -> Result<Arc<Users>, UsersError> {
    let Some(path) = &config.auth.users_file else {
        if !config.listener.is_empty() {
            warn!(
                "[[listener]] is configured without [auth] users_file: only clients in trusted_networks can send there"
            );
        }
        return Ok(Arc::default());
    };
    let users = Users::load(path)?;
    if users.is_empty() && !config.listener.is_empty() {
        warn!(users_file = %path.display(), "the users file has no users: add one with `smarthost user add NAME`, then send SIGHUP");
    } else {
        info!(
            users_file = %path.display(), users = users.len(), max_failures = config.auth.max_failures,
            lockout = ?config.auth.lockout, "config: auth"
        );
    }
    Ok(Arc::new(users))
}

/// A running relay.
pub struct RelayHandle {
    addrs: Vec<SocketAddr>,
    state: watch::Sender<RunState>,
    listener: JoinHandle<()>,
    grace: Duration,
    deliverer: Arc<Deliverer>,
    scheduler: Option<Scheduler>,
    /// Passthrough mode's hand-off, whose spool may hold deferred leftovers.
    passthrough: Option<Arc<Passthrough>>,
    metrics_addr: Option<SocketAddr>,
    metrics_task: Option<JoinHandle<()>>,
    control: ListenerControl,
    running: std::sync::Mutex<Arc<Config>>,
    status: StatusSource,
    /// With a `[cluster]`: the heartbeat, and idle connections given back.
    cluster_tasks: Vec<JoinHandle<()>>,
}

/// Start the relay: set up delivery, bind the listeners, start accepting.
pub async fn start(config: Arc<Config>) -> Result<RelayHandle, StartError> {
    let users = load_users(&config)?;
    let keys = DkimKeys::load(&config.dkim)?;
    for key in keys.iter() {
        info!(domain = %key.domain, selector = %key.selector, algorithm = %key.algorithm, "DKIM key loaded");
    }
    let transformer = Arc::new(Transformer::new(keys));
    let tls = match (&config.server.tls_cert_file, &config.server.tls_key_file) {
        (Some(cert), Some(key)) => Some(crate::tls::server_acceptor(cert, key)?),
        _ => None,
    };
    let deliverer = Arc::new(Deliverer::from_config(&config, transformer)?);
    let mut passthrough_handle: Option<Arc<Passthrough>> = None;
    let (handoff, scheduler, queue): (Arc<dyn Handoff>, Option<Scheduler>, Queue) = match config
        .delivery
        .mode
    {
        DeliveryMode::Queue => {
            let spool = Arc::new(Spool::open(&config.spool.dir)?);
            let scheduler =
                Scheduler::start(spool, deliverer.clone(), Settings::from_config(&config));
            info!(spool = %config.spool.dir.display(), queued = scheduler.queued(), "queue mode: 250 once the message is on disk");
            let queue = Queue::Spool(scheduler.clone());
            (Arc::new(scheduler.clone()), Some(scheduler), queue)
        }
        DeliveryMode::Passthrough => {
            info!("passthrough mode: 250 once an upstream accepted the message");
            let passthrough = Arc::new(
                Passthrough::start(
                    deliverer.clone(),
                    config.spool.dir.clone(),
                    Settings::from_config(&config),
                )
                .await,
            );
            passthrough_handle = Some(passthrough.clone());
            let queue = Queue::Passthrough(passthrough.clone());
            (passthrough, None, queue)
        }
    };
    let metrics_listener = match config.metrics.listen {
        Some(addr) => {
            let listener = metrics::bind(addr)
                .await
                .map_err(|source| StartError::Metrics { addr, source })?;
            Some(listener)
        }
        None => None,
    };
    let status = StatusSource::new(config.server.hostname.clone(), deliverer.clone(), queue);
    let listener = Listener::bind(&config, handoff, tls, users).await?;
    let addrs = listener.local_addrs();
    let control = listener.control();
    let (state, state_rx) = watch::channel(RunState::Running);
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let metrics_task = metrics_listener.map(|listener| {
        for name in deliverer.target_names() {
            metrics::gauge_up(&name);
        }
        let (deliverer, scheduler, state) =
            (deliverer.clone(), scheduler.clone(), state_rx.clone());
        let ready: metrics::Readiness = Arc::new(move || {
            if *state.borrow() != RunState::Running {
                return Err("shutting down".into());
            }
            if let Some(s) = &scheduler {
                s.ready()?;
            }
            deliverer.usable()
        });
        let endpoint = metrics::Endpoint::new(ready, config.metrics.password.as_ref())
            .with_status(status.clone());
        tokio::spawn(metrics::serve(listener, endpoint))
    });
    let cluster_tasks: Vec<JoinHandle<()>> = match deliverer.cluster() {
        Some(cluster) => vec![
            cluster.spawn_heartbeat(),
            tokio::spawn(deliverer.clone().return_idle_connections()),
        ],
        None => Vec::new(),
    };
    let listener = listener.spawn(state_rx);
    info!(listen = ?addrs, hostname = %config.server.hostname, "smarthost accepting mail");
    Ok(RelayHandle {
        addrs,
        state,
        listener,
        grace: config.server.shutdown_grace,
        deliverer,
        scheduler,
        passthrough: passthrough_handle,
        metrics_addr,
        metrics_task,
        control,
        running: std::sync::Mutex::new(config.clone()),
        status,
        cluster_tasks,
    })
}

impl RelayHandle {
    /// Apply a new configuration without dropping sessions or deliveries under way:
    /// upstreams, DKIM keys, trusted networks, limits, host name, the inbound
    /// certificate, header rules and `[transform]` change for new connections and
    /// deliveries. If anything in `config`
    /// cannot be set up, nothing changes and the error says why. Returns notes about
    /// changed keys that only a restart applies.
    pub async fn reload(&self, config: Config) -> Result<Vec<String>, StartError> {
        let keys = DkimKeys::load(&config.dkim)?;
        let tls = match (&config.server.tls_cert_file, &config.server.tls_key_file) {
            (Some(cert), Some(key)) => Some(crate::tls::server_acceptor(cert, key)?),
            _ => None,
        };
        let users = load_users(&config)?;
        self.deliverer
            .replace(&config, Arc::new(Transformer::new(keys)))?;
        self.control.update(&config, tls, users);
        let mut running = self.running.lock().expect("running config");
        let old = running.clone();
        let mut notes = Vec::new();
        let listeners =
            |c: &Config| -> Vec<_> { c.listener.iter().map(|l| (l.address, l.tls)).collect() };
        let cluster = |c: &Config| {
            let k = &c.cluster;
            (k.store.clone(), k.node.clone(), k.namespace.clone())
        };
        let restart_only: [(&str, bool); 9] = [
            ("cluster", cluster(&old) != cluster(&config)),
            ("server.listen", old.server.listen != config.server.listen),
            ("listener", listeners(&old) != listeners(&config)),
            (
                "server.max_connections",
                old.server.max_connections != config.server.max_connections,
            ),
            (
                "server.shutdown_grace",
                old.server.shutdown_grace != config.server.shutdown_grace,
            ),
            (
                "spool",
                old.spool.dir != config.spool.dir
                    || old.spool.memory_limit != config.spool.memory_limit
                    || old.spool.max_disk_usage != config.spool.max_disk_usage,
            ),
            (
                "delivery (mode, retries, lifetime)",
                old.delivery.mode != config.delivery.mode
                    || old.delivery.retry_base != config.delivery.retry_base
                    || old.delivery.retry_max != config.delivery.retry_max
                    || old.delivery.max_queue_lifetime != config.delivery.max_queue_lifetime,
            ),
            (
                "metrics.listen",
                old.metrics.listen != config.metrics.listen,
            ),
            (
                "metrics.password_file",
                old.metrics.password_file != config.metrics.password_file
                    || old.metrics.password != config.metrics.password,
            ),
        ];
        for (key, changed) in restart_only {
            if changed {
                notes.push(format!("{key} changed: it takes effect after a restart"));
            }
        }
        *running = Arc::new(config);
        Ok(notes)
    }

    /// The relay's state now, as the status page and `/api/status` show it.
    pub fn status(&self) -> Status {
        self.status.status()
    }

    /// The address of the metrics and health endpoint, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The queue-mode scheduler (none in passthrough mode).
    pub fn scheduler(&self) -> Option<&Scheduler> {
        self.scheduler.as_ref()
    }

    /// The addresses the SMTP listeners are bound to.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stop accepting, let transactions in progress finish within the grace period,
    /// then close what is left. Messages already accepted are not affected.
    pub async fn shutdown(mut self) {
        let _ = self.state.send(RunState::Draining);
        info!(grace = ?self.grace, "shutting down: no new connections, finishing open transactions");
        if tokio::time::timeout(self.grace, &mut self.listener)
            .await
            .is_err()
        {
            warn!("grace period over: closing the remaining sessions");
            let _ = self.state.send(RunState::Stopped);
            if tokio::time::timeout(Duration::from_secs(5), &mut self.listener)
                .await
                .is_err()
            {
                self.listener.abort();
            }
        }
        if let Some(scheduler) = &self.scheduler {
            // Deliveries under way finish (or stay queued: the spool keeps the rest).
            scheduler.stop(Duration::from_secs(10)).await;
        }
        if let Some(leftovers) = self.passthrough.as_ref().and_then(|p| p.running()) {
            leftovers.stop(Duration::from_secs(10)).await;
        }
        // Say goodbye to upstreams instead of dropping pooled connections.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.deliverer.close_idle()).await;
        if let Some(task) = self.metrics_task.take() {
            task.abort();
        }
        for task in self.cluster_tasks.drain(..) {
            task.abort();
        }
        info!("smarthost stopped");
    }
}
