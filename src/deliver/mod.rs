//! Stage 4: getting accepted mail to an upstream.
//!
//! [`Deliverer`] walks the configured upstreams for each message ([`failover`]): SMTP
//! servers reached through pooled connections with the right TLS mode ([`upstream`],
//! [`connect`], [`client`]) guarded by circuit breakers ([`breaker`]), or local
//! Maildirs ([`maildir`]). Failures are classified in [`outcome`].
//!
//! In queue mode the [`scheduler`] calls it for messages from the spool; in passthrough
//! mode [`Passthrough`] is the session's [`Handoff`](crate::accept::Handoff) and the
//! client hears `250` only once an upstream accepted the message (for some recipients:
//! the rest go to the spool, see [`Passthrough`]).

pub mod bounce;
pub mod breaker;
pub mod client;
pub mod connect;
pub mod failover;
pub mod maildir;
pub mod oauth;
pub mod outcome;
pub mod ratelimit;
pub mod scheduler;
pub mod upstream;

use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

use tracing::{info, warn};

use crate::accept::{Handoff, HandoffError, HandoffFuture};
use crate::config::{Config, UpstreamUrl};
use crate::message::Message;
use crate::proto::{Enhanced, Reply, Response};
use crate::telemetry::name;
use crate::transform::Transformer;
use failover::{RcptStatus, Reason, Report};
use maildir::Maildir;
use scheduler::{Scheduler, Settings};
use upstream::SmtpUpstream;

/// What [`Progress::accepted`] returns: `Err` with the reason when the recipients
/// cannot be recorded.
pub type ProgressFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;

/// The queue's ear during one delivery attempt of a message split into several
/// transactions (recipient caps, failover): told which recipients were accepted while
/// more transactions follow, it makes them durable before the next transaction starts,
/// so a crash in between never sends them again. The delivery stage only reports; what
/// "durable" means is the queue's business.
///
/// Never called for a message that goes in one transaction (the common case costs
/// nothing): the attempt's outcome is recorded once, at its end, as before.
pub trait Progress: Send + Sync {
    /// `accepted` (indices into the recipients of the message handed to the delivery)
    /// were accepted by an upstream, and more transactions follow. When this returns
    /// `Err`, the attempt ends before its next transaction: those not sent yet stay
    /// deferred (sending more that cannot be recorded is what this is here to prevent).
    fn accepted<'a>(&'a self, accepted: &'a [usize]) -> ProgressFuture<'a>;
}

/// No progress to record: passthrough, where the client waits for the whole attempt.
pub struct Untracked;

impl Progress for Untracked {
    fn accepted<'a>(&'a self, _accepted: &'a [usize]) -> ProgressFuture<'a> {
        Box::pin(std::future::ready(Ok(())))
    }
}

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
    /// The TLS set-up (ca_file) is unusable.
    #[error("upstream {name:?}: {source}")]
    Tls {
        /// The upstream's name.
        name: String,
        /// Why.
        source: crate::tls::TlsSetupError,
    },
}

/// One configured destination.
pub struct Target {
    /// Name in logs.
    pub name: String,
    /// Lower is tried first.
    pub priority: i32,
    /// Share within a priority.
    pub weight: u32,
    /// The upstream's `sender` policy: envelope sender and From address forced to this.
    pub sender: Option<String>,
    /// What it is.
    pub kind: TargetKind,
}

/// The kinds of destination.
pub enum TargetKind {
    /// An SMTP server.
    Smtp(Arc<SmtpUpstream>),
    /// A local Maildir.
    Maildir(Maildir),
}

/// Delivers messages by walking the upstreams.
pub struct Deliverer {
    routing: RwLock<Arc<Routing>>,
    /// Notified when an upstream's circuit breaker closes again.
    recovered: Arc<Notify>,
}

/// The upstreams and the transformer in force; replaced as a whole on reload, while a
/// delivery under way finishes with the one it started with.
struct Routing {
    targets: Arc<Vec<Target>>,
    transformer: Arc<Transformer>,
}

impl Deliverer {
    /// Build every upstream of the configuration; `transformer` applies each upstream's
    /// sender policy and the DKIM signature.
    pub fn from_config(
        config: &Config,
        transformer: Arc<Transformer>,
    ) -> Result<Deliverer, SetupError> {
        let recovered = Arc::new(Notify::new());
        let targets = build_targets(config, &recovered)?;
        Ok(Deliverer {
            routing: RwLock::new(Arc::new(Routing {
                targets: Arc::new(targets),
                transformer,
            })),
            recovered,
        })
    }

    /// Use the upstreams of `config` and `transformer` for deliveries from now on (SIGHUP
    /// reload). On error nothing changes. Idle connections of the old upstreams are closed.
    pub fn replace(
        &self,
        config: &Config,
        transformer: Arc<Transformer>,
    ) -> Result<(), SetupError> {
        let targets = build_targets(config, &self.recovered)?;
        let new = Arc::new(Routing {
            targets: Arc::new(targets),
            transformer,
        });
        let old = std::mem::replace(&mut *self.routing.write().expect("routing lock"), new);
        tokio::spawn(async move {
            for target in old.targets.iter() {
                if let TargetKind::Smtp(up) = &target.kind {
                    up.close_idle().await;
                }
            }
        });
        // Fresh breakers: mail waiting for the old upstreams may go now.
        self.recovered.notify_one();
        Ok(())
    }

    /// Notified whenever an upstream becomes usable again after its breaker was open.
    pub fn recoveries(&self) -> Arc<Notify> {
        self.recovered.clone()
    }

    fn current(&self) -> Arc<Routing> {
        self.routing.read().expect("routing lock").clone()
    }
}

/// Build every upstream of the configuration; their breakers notify `recovered`.
fn build_targets(config: &Config, recovered: &Arc<Notify>) -> Result<Vec<Target>, SetupError> {
    let mut targets = Vec::new();
    for up in &config.upstream {
        let name = up.display_name();
        let kind = match &up.url {
            UpstreamUrl::Maildir { path } => {
                let maildir = Maildir::open(path, &config.server.hostname).map_err(|source| {
                    SetupError::Maildir {
                        name: name.clone(),
                        path: path.display().to_string(),
                        source,
                    }
                })?;
                TargetKind::Maildir(maildir)
            }
            UpstreamUrl::Smtp { .. } => {
                if !up.tls_verify {
                    warn!(upstream = %name, "tls_verify = false: the upstream's certificate is not checked; anyone on the path can read the mail and credentials");
                }
                let smtp = SmtpUpstream::from_config(up, config)
                    .map_err(|source| SetupError::Tls {
                        name: name.clone(),
                        source,
                    })?
                    .with_recovery_signal(recovered.clone());
                TargetKind::Smtp(Arc::new(smtp))
            }
        };
        targets.push(Target {
            name,
            priority: up.priority,
            weight: up.weight,
            sender: up.sender.clone(),
            kind,
        });
    }
    Ok(targets)
}

impl Deliverer {
    /// Whether at least one upstream is usable now (a Maildir, or an SMTP upstream whose
    /// circuit breaker is closed); the reason otherwise.
    pub fn usable(&self) -> Result<(), String> {
        let up = self.current().targets.iter().any(|t| match &t.kind {
            TargetKind::Maildir(_) => true,
            TargetKind::Smtp(up) => up.breaker.is_up(),
        });
        if up {
            Ok(())
        } else {
            Err("every upstream is failing (circuit breakers open)".into())
        }
    }

    /// The upstream names (for metrics).
    pub fn target_names(&self) -> Vec<String> {
        self.current()
            .targets
            .iter()
            .map(|t| t.name.clone())
            .collect()
    }

    /// Deliver one message and report per recipient.
    pub async fn deliver(&self, message: Arc<Message>) -> Report {
        self.deliver_tracked(message, &Untracked).await
    }

    /// [`Deliverer::deliver`], telling `progress` of the recipients accepted while
    /// more transactions follow.
    pub async fn deliver_tracked(&self, message: Arc<Message>, progress: &dyn Progress) -> Report {
        let started = std::time::Instant::now();
        let routing = self.current();
        let id = message.id;
        let report =
            failover::walk(&routing.targets, &routing.transformer, message, progress).await;
        metrics::histogram!(name::DELIVERY_DURATION).record(started.elapsed().as_secs_f64());
        for (rcpt, status) in &report.recipients {
            match status {
                RcptStatus::Delivered { upstream, .. } => {
                    metrics::counter!(name::DELIVERED, "upstream" => upstream.clone()).increment(1);
                }
                RcptStatus::Deferred(reason) => {
                    let upstream = match reason {
                        Reason::Reply { upstream, .. } => upstream.clone(),
                        Reason::Text(_) | Reason::Local { .. } => "none".to_owned(),
                    };
                    metrics::counter!(name::DEFERRED, "upstream" => upstream).increment(1);
                }
                RcptStatus::Failed(_) => {}
            }
            match status {
                RcptStatus::Delivered { upstream, response } => {
                    let reply = response
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    info!(queue_id = %id, rcpt = %rcpt, upstream = %upstream, reply = %reply, "delivered");
                }
                RcptStatus::Failed(reason) => {
                    warn!(queue_id = %id, rcpt = %rcpt, reason = %reason, "failed permanently")
                }
                RcptStatus::Deferred(reason) => {
                    warn!(queue_id = %id, rcpt = %rcpt, reason = %reason, "deferred")
                }
            }
        }
        report
    }

    /// Close idle pooled connections.
    pub async fn close_idle(&self) {
        for target in self.current().targets.iter() {
            if let TargetKind::Smtp(up) = &target.kind {
                up.close_idle().await;
            }
        }
    }
}

impl Handoff for Deliverer {
    fn submit(&self, message: Message) -> HandoffFuture<'_> {
        Box::pin(async move {
            let report = self.deliver(Arc::new(message)).await;
            passthrough_result(&report)
        })
    }
}

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
    fn submit(&self, message: Message) -> HandoffFuture<'_> {
        Box::pin(async move {
            let message = Arc::new(message);
            let report = self.deliverer.deliver(message.clone()).await;
            let some_delivered = report
                .recipients
                .iter()
                .any(|(_, s)| matches!(s, RcptStatus::Delivered { .. }));
            if report.all_delivered() || !some_delivered {
                return passthrough_result(&report);
            }
            let adopted = match self.leftovers().await {
                Ok(leftovers) => leftovers.adopt(&message, &report).await,
                Err(e) => Err(e),
            };
            match adopted {
                Ok(()) => Ok(()),
                Err(e) => {
                    tracing::error!(queue_id = %message.id, error = %e, "passthrough: cannot spool the recipients that are not delivered yet; answering as without a spool (a deferred recipient makes the client retry, and the delivered ones may get a second copy)");
                    passthrough_result(&report)
                }
            }
        })
    }
}

/// What the submitting client hears in passthrough mode without the spool's help. Any
/// deferred recipient makes the whole message temporary-failed, so the client retries
/// rather than loses it (the recipients that did get it may see it twice). Permanent
/// failures next to deliveries are only logged. [`Passthrough`] uses it when no
/// recipient was delivered, and when the spool cannot take the rest.
pub fn passthrough_result(report: &Report) -> Result<(), HandoffError> {
    if report.all_delivered() {
        return Ok(());
    }
    let deferred = report.recipients.iter().find_map(|(_, s)| match s {
        RcptStatus::Deferred(reason) => Some(reason),
        _ => None,
    });
    if let Some(reason) = deferred {
        return Err(HandoffError::Refused(match reason {
            Reason::Reply { upstream, response } if response.is_transient() => {
                relay_reply(upstream, response)
            }
            other => Reply::new(
                451,
                Enhanced(4, 4, 1),
                format!("Not delivered, please try again later: {other}"),
            ),
        }));
    }
    let delivered = report
        .recipients
        .iter()
        .any(|(_, s)| matches!(s, RcptStatus::Delivered { .. }));
    if delivered {
        return Ok(());
    }
    let reason = report
        .recipients
        .iter()
        .find_map(|(_, s)| match s {
            RcptStatus::Failed(reason) => Some(reason),
            _ => None,
        })
        .expect("not all delivered, none deferred: some failed");
    Err(HandoffError::Refused(match reason {
        Reason::Reply { upstream, response } => relay_reply(upstream, response),
        Reason::Text(text) => Reply::new(554, Enhanced(5, 3, 0), text.clone()),
        Reason::Local { code, status, text } => Reply::new(*code, *status, text.clone()),
    }))
}

/// An upstream's reply, passed on with its code and enhanced code.
fn relay_reply(upstream: &str, response: &Response) -> Reply {
    // Every line of a multi-line reply repeats the enhanced code (RFC 2034 §3): keep it
    // once, in front, rather than in the middle of the joined text.
    let mut enhanced = None;
    let mut parts = Vec::with_capacity(response.lines.len());
    for line in &response.lines {
        let (code, rest) = split_enhanced(line);
        enhanced = enhanced.or(code);
        if !rest.is_empty() {
            parts.push(rest);
        }
    }
    let rest = parts.join(" ");
    let enhanced = enhanced.unwrap_or(if response.is_permanent() {
        Enhanced(5, 0, 0)
    } else {
        Enhanced(4, 0, 0)
    });
    // The upstream's 421 closes *its* channel (RFC 5321 §3.8); ours stays open.
    let code = if (400..600).contains(&response.code) && response.code != 421 {
        response.code
    } else {
        451
    };
    Reply::new(code, enhanced, format!("upstream {upstream} said: {rest}"))
}

/// `5.1.1 rest` → (Some(5.1.1), "rest").
fn split_enhanced(text: &str) -> (Option<Enhanced>, &str) {
    let (first, rest) = text.split_once(' ').unwrap_or((text, ""));
    let parts: Vec<&str> = first.split('.').collect();
    if let [a, b, c] = parts.as_slice()
        && let (Ok(a), Ok(b), Ok(c)) = (a.parse::<u8>(), b.parse::<u16>(), c.parse::<u16>())
        && (2..=5).contains(&a)
    {
        return (Some(Enhanced(a, b, c)), rest);
    }
    (None, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_upstream_replies_with_their_codes() {
        let r = relay_reply(
            "primary",
            &Response {
                code: 550,
                lines: vec!["5.1.1 no such user".into()],
            },
        );
        assert_eq!(
            r.to_wire(),
            "550 5.1.1 upstream primary said: no such user\r\n"
        );
        let r = relay_reply(
            "b",
            &Response {
                code: 451,
                lines: vec!["try later".into()],
            },
        );
        assert_eq!(r.to_wire(), "451 4.0.0 upstream b said: try later\r\n");
        let r = relay_reply(
            "b",
            &Response {
                code: 421,
                lines: vec!["4.7.0 closing".into()],
            },
        );
        assert_eq!(r.to_wire(), "451 4.7.0 upstream b said: closing\r\n");
        let r = relay_reply(
            "c",
            &Response {
                code: 550,
                lines: vec!["5.7.1 first line".into(), "5.7.1 second line".into()],
            },
        );
        assert_eq!(
            r.to_wire(),
            "550 5.7.1 upstream c said: first line second line\r\n"
        );
    }
}
