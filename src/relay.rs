//! Assembling the pipeline from a configuration, and stopping it gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::accept::{BindError, Handoff, Listener, RunState};
use crate::config::Config;
use crate::deliver::{Deliverer, SetupError};
use crate::tls::TlsSetupError;

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
    /// A configured feature this version cannot honour.
    #[error("{0}")]
    Unsupported(String),
}

/// A running relay.
pub struct RelayHandle {
    addrs: Vec<SocketAddr>,
    state: watch::Sender<RunState>,
    listener: JoinHandle<()>,
    grace: Duration,
    deliverer: Arc<Deliverer>,
}

/// Start the relay: set up delivery, bind the listeners, start accepting.
pub async fn start(config: Arc<Config>) -> Result<RelayHandle, StartError> {
    if let Some(dkim) = config.dkim.first() {
        return Err(StartError::Unsupported(format!(
            "[[dkim]] for {:?}: DKIM signing is not available in this version yet; remove the [[dkim]] entries to send unsigned mail",
            dkim.domain
        )));
    }
    let tls = match (&config.server.tls_cert_file, &config.server.tls_key_file) {
        (Some(cert), Some(key)) => Some(crate::tls::server_acceptor(cert, key)?),
        _ => None,
    };
    let deliverer = Arc::new(Deliverer::from_config(&config)?);
    let handoff: Arc<dyn Handoff> = deliverer.clone();
    if config.delivery.mode == crate::config::DeliveryMode::Queue {
        info!(
            "delivery.mode = queue: until the durable spool is available, messages are delivered while the client waits and 250 means an upstream has the message"
        );
    }
    let listener = Listener::bind(&config.server, handoff, tls).await?;
    let addrs = listener.local_addrs();
    let (state, state_rx) = watch::channel(RunState::Running);
    let listener = listener.spawn(state_rx);
    info!(listen = ?addrs, hostname = %config.server.hostname, "smarthost accepting mail");
    Ok(RelayHandle {
        addrs,
        state,
        listener,
        grace: config.server.shutdown_grace,
        deliverer,
    })
}

impl RelayHandle {
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
        // Say goodbye to upstreams instead of dropping pooled connections.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.deliverer.close_idle()).await;
        info!("smarthost stopped");
    }
}
