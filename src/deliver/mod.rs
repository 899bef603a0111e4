//! Stage 4: getting accepted mail to an upstream.
//!
//! [`DirectDelivery`] delivers while the client waits: it walks the upstreams in
//! priority order and the first one that takes the message ends the walk. Today the
//! upstreams are Maildirs; the SMTP client and the durable spool plug in behind the same
//! [`Handoff`](crate::accept::Handoff) interface.

pub mod client;
pub mod maildir;

use std::sync::Arc;

use tracing::{info, warn};

use crate::accept::{Handoff, HandoffError, HandoffFuture};
use crate::config::{Config, UpstreamUrl};
use crate::message::Message;
use maildir::Maildir;

/// An upstream that cannot be set up; names the upstream and the reason.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The Maildir directory cannot be created.
    #[error("upstream {name:?}: cannot create Maildir {path}: {source}")]
    Maildir {
        /// The upstream's name.
        name: String,
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The upstream kind is not available in this build.
    #[error(
        "upstream {name:?} ({url}): delivery over SMTP is not available in this version yet; use a maildir: upstream for now"
    )]
    SmtpUnavailable {
        /// The upstream's name.
        name: String,
        /// Its URL, without password.
        url: String,
    },
}

/// One configured destination.
struct Target {
    name: String,
    maildir: Maildir,
}

/// Delivers each message synchronously to the first upstream that takes it.
pub struct DirectDelivery {
    targets: Arc<Vec<Target>>,
}

impl DirectDelivery {
    /// Build from the `[[upstream]]` list, sorted by priority (stable: file order breaks ties).
    pub fn from_config(config: &Config) -> Result<DirectDelivery, SetupError> {
        let mut upstreams: Vec<_> = config.upstream.iter().collect();
        upstreams.sort_by_key(|u| u.priority);
        let mut targets = Vec::new();
        for up in upstreams {
            let name = up.display_name();
            match &up.url {
                UpstreamUrl::Maildir { path } => {
                    let maildir =
                        Maildir::open(path, &config.server.hostname).map_err(|source| {
                            SetupError::Maildir {
                                name: name.clone(),
                                path: path.display().to_string(),
                                source,
                            }
                        })?;
                    targets.push(Target { name, maildir });
                }
                UpstreamUrl::Smtp { .. } => {
                    return Err(SetupError::SmtpUnavailable {
                        name,
                        url: up.url.to_string(),
                    });
                }
            }
        }
        Ok(DirectDelivery {
            targets: Arc::new(targets),
        })
    }

    async fn deliver(targets: Arc<Vec<Target>>, message: Message) -> Result<(), HandoffError> {
        tokio::task::spawn_blocking(move || {
            let mut last_error = None;
            for target in targets.iter() {
                match target.maildir.deliver(&message) {
                    Ok(path) => {
                        info!(queue_id = %message.id, upstream = %target.name, path = %path.display(), "delivered");
                        return Ok(());
                    }
                    Err(e) => {
                        warn!(queue_id = %message.id, upstream = %target.name, error = %e, "delivery failed, trying the next upstream");
                        last_error = Some(format!("upstream {}: {e}", target.name));
                    }
                }
            }
            Err(HandoffError::Unavailable(last_error.unwrap_or_else(|| "no upstream configured".into())))
        })
        .await
        .map_err(|e| HandoffError::Unavailable(format!("delivery task failed: {e}")))?
    }
}

impl Handoff for DirectDelivery {
    fn submit(&self, message: Message) -> HandoffFuture<'_> {
        Box::pin(Self::deliver(self.targets.clone(), message))
    }
}
