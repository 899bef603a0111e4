//! Passthrough mode's hand-off: the message is delivered while the client waits, and
//! what cannot be delivered now but must not be sent twice goes to the queue. It lives
//! in the queue stage because of those leftovers: the arrows stay accept → queue →
//! deliver.

use std::sync::Arc;

use tracing::{info, warn};

use super::scheduler::{Scheduler, Settings};
use crate::deliver::failover::RcptOutcome;
use crate::deliver::{Deliverer, passthrough_result};
use crate::message::{Handoff, HandoffFuture, Message};

/// Passthrough mode's hand-off: deliver while the client waits, and never make the
/// client's retry the cause of a second copy.
///
/// - Every recipient accepted: `250`.
/// - None accepted: the upstream's reply (the client keeps the message and retries, or
///   bounces it); nobody got a copy, so a retry duplicates nothing.
/// - Some accepted, the others deferred or refused: `250`, because any other answer
///   makes the client send the message again, and the accepted recipients would get
///   it twice (RFC 5321 §6.1: once the relay said 250 it owns the rest). The deferred
///   recipients are written to the spool and retried like queue-mode mail by a
///   [`Scheduler`]; the refused ones get a DSN from the relay ([`Scheduler::adopt`]).
///   Only when the spool cannot take them does the old answer stand (a `4xx` if any
///   recipient is deferred: a duplicate is better than a loss).
///
/// The spool is opened (and its scheduler started) the first time it is needed, or at
/// start when `spool.dir` already exists (leftovers of an earlier run are retried):
/// a passthrough relay that never needs it neither creates nor locks it.
pub struct Passthrough {
    deliverer: Arc<Deliverer>,
    dir: std::path::PathBuf,
    /// `<dir>/body`: where large messages' bodies go while they are received (created
    /// when the first one arrives).
    body_dir: std::path::PathBuf,
    settings: Settings,
    leftovers: tokio::sync::OnceCell<Scheduler>,
}

impl Passthrough {
    /// Deliver with `deliverer`; what is left goes to the spool in `dir`, retried with
    /// `settings`. If `dir` exists, it is opened now (a failure is logged, and opening
    /// is tried again when needed).
    pub async fn start(
        deliverer: Arc<Deliverer>,
        dir: std::path::PathBuf,
        settings: Settings,
    ) -> Passthrough {
        let this = Passthrough {
            deliverer,
            body_dir: dir.join("body"),
            dir,
            settings,
            leftovers: tokio::sync::OnceCell::new(),
        };
        if this.dir.exists() {
            match this.leftovers().await {
                Ok(s) => {
                    info!(spool = %this.dir.display(), queued = s.queued(), "passthrough mode: recipients left deferred next to delivered ones are retried from the spool")
                }
                Err(e) => {
                    warn!(spool = %this.dir.display(), error = %e, "passthrough mode: cannot open the spool now; tried again when a delivery leaves deferred recipients")
                }
            }
        }
        this
    }

    /// The scheduler on the spool, opened on first use.
    async fn leftovers(&self) -> Result<&Scheduler, crate::spool::SpoolError> {
        self.leftovers
            .get_or_try_init(|| async {
                let spool = Arc::new(crate::spool::Spool::open(&self.dir)?);
                Ok(Scheduler::start(
                    spool,
                    self.deliverer.clone(),
                    self.settings.clone(),
                ))
            })
            .await
    }

    /// The scheduler, if the spool was opened (to stop it at shutdown).
    pub fn running(&self) -> Option<&Scheduler> {
        self.leftovers.get()
    }
}

impl Handoff for Passthrough {
    fn body_dir(&self) -> Option<&std::path::Path> {
        Some(&self.body_dir)
    }

    fn content_memory(&self) -> Option<&Arc<crate::message::ContentMemory>> {
        Some(&self.settings.memory)
    }

    fn activity(&self) -> Option<&Arc<crate::telemetry::activity::Activity>> {
        Some(self.deliverer.activity())
    }

    fn submit(&self, message: Message) -> HandoffFuture<'_> {
        Box::pin(async move {
            let message = Arc::new(message);
            let report = self.deliverer.deliver(message.clone()).await;
            let some_delivered = report
                .recipients
                .iter()
                .any(|(_, s)| matches!(s, RcptOutcome::Delivered { .. }));
            if report.all_delivered() || !some_delivered {
                // Nothing goes to the queue: a body file has served its purpose.
                if let Some(body) = &message.body {
                    let _ = std::fs::remove_file(&body.path);
                }
                return passthrough_result(message.id, &report);
            }
            let adopted = match self.leftovers().await {
                Ok(leftovers) => leftovers.adopt(&message, &report).await,
                Err(e) => Err(e),
            };
            match adopted {
                Ok(()) => Ok(()),
                Err(e) => {
                    tracing::error!(queue_id = %message.id, error = %e, "passthrough: cannot spool the recipients that are not delivered yet; answering as without a spool (a deferred recipient makes the client retry, and the delivered ones may get a second copy)");
                    if let Some(body) = &message.body {
                        let _ = std::fs::remove_file(&body.path);
                    }
                    passthrough_result(message.id, &report)
                }
            }
        })
    }
}
