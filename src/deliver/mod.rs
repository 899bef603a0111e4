//! Stage 4: getting accepted mail to an upstream.
//!
//! [`Deliverer`] walks the configured upstreams for each message ([`failover`]): SMTP
//! servers reached through pooled connections with the right TLS mode ([`upstream`],
//! [`connect`], [`client`]) guarded by circuit breakers ([`breaker`]), or local
//! Maildirs ([`maildir`]). Failures are classified in [`outcome`].
//!
//! The queue stage calls it: the scheduler for messages from the spool, the passthrough
//! hand-off while the client waits ([`crate::queue`]). Delivery never calls the queue;
//! it reports progress through [`Progress`].

pub mod breaker;
pub mod client;
pub mod connect;
pub mod failover;
pub mod maildir;
pub mod oauth;
pub mod outcome;
pub mod ratelimit;
mod route;
mod state;
pub mod upstream;

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

use breaker::Recoveries;

use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::config::{Config, UpstreamUrl};
use crate::message::{Handoff, HandoffError, HandoffFuture};
use crate::message::{Message, QueueId};
use crate::proto::{Enhanced, Reply, Response};
use crate::telemetry::activity::{Activity, EventKind};
use crate::telemetry::name;
use crate::transform::Transformer;
use failover::{RcptOutcome, Reason, Report};
use maildir::Maildir;
pub use state::UpstreamState;
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
    /// `[cluster] store` is unusable.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// One configured destination.
pub struct Upstream {
    /// Name in logs.
    pub name: String,
    /// Lower is tried first.
    pub priority: i32,
    /// Share within a priority.
    pub weight: u32,
    /// The upstream's `sender` policy: envelope sender and From address forced to this.
    pub sender: Option<String>,
    /// What it is.
    pub kind: UpstreamKind,
}

/// The kinds of destination.
pub enum UpstreamKind {
    /// An SMTP server.
    Smtp(Arc<SmtpUpstream>),
    /// A local Maildir.
    Maildir(Maildir),
}

/// Delivers messages by walking the upstreams.
pub struct Deliverer {
    routing: RwLock<Arc<Routing>>,
    /// Counts and signals upstreams becoming usable again.
    recovered: Arc<Recoveries>,
    /// Recent outcomes, for the status page.
    activity: Arc<Activity>,
    /// The other replicas' shared budgets (`[cluster]`); fixed at start.
    cluster: Option<Arc<Cluster>>,
}

/// How long a connection may stay idle in a cluster before it is closed.
pub const CLUSTER_IDLE: std::time::Duration = std::time::Duration::from_secs(2);

/// The upstreams and the transformer in force; replaced as a whole on reload, while a
/// delivery under way finishes with the one it started with.
struct Routing {
    targets: Arc<Vec<Upstream>>,
    transformer: Arc<Transformer>,
    routes: route::Routes,
}

impl Deliverer {
    /// Build every upstream of the configuration; `transformer` applies each upstream's
    /// sender policy and the DKIM signature.
    pub fn from_config(
        config: &Config,
        transformer: Arc<Transformer>,
    ) -> Result<Deliverer, SetupError> {
        let recovered = Arc::new(Recoveries::default());
        let cluster = Cluster::from_config(&config.cluster)?;
        let targets = build_upstreams(config, &recovered, cluster.as_ref())?;
        Ok(Deliverer {
            routing: RwLock::new(Arc::new(Routing {
                targets: Arc::new(targets),
                transformer,
                routes: route::Routes::from_config(config),
            })),
            recovered,
            activity: Arc::default(),
            cluster,
        })
    }

    /// The cluster this relay shares budgets with, if `[cluster] store` is set.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The recent activity every stage of this relay records to.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// Use the upstreams of `config` and `transformer` for deliveries from now on (SIGHUP
    /// reload). On error nothing changes. Idle connections of the old upstreams are closed.
    pub fn replace(
        &self,
        config: &Config,
        transformer: Arc<Transformer>,
    ) -> Result<(), SetupError> {
        let targets = build_upstreams(config, &self.recovered, self.cluster.as_ref())?;
        let new = Arc::new(Routing {
            targets: Arc::new(targets),
            transformer,
            routes: route::Routes::from_config(config),
        });
        let old = std::mem::replace(&mut *self.routing.write().expect("routing lock"), new);
        tokio::spawn(async move {
            for target in old.targets.iter() {
                if let UpstreamKind::Smtp(up) = &target.kind {
                    up.close_idle().await;
                }
            }
        });
        // Fresh breakers: mail waiting for the old upstreams may go now.
        self.recovered.recovered();
        Ok(())
    }

    /// Counts and signals each time an upstream becomes usable again after its breaker
    /// was open (and each reload).
    pub fn recoveries(&self) -> &Recoveries {
        &self.recovered
    }

    fn current(&self) -> Arc<Routing> {
        self.routing.read().expect("routing lock").clone()
    }
}

/// Build every upstream of the configuration; their breakers notify `recovered`.
fn build_upstreams(
    config: &Config,
    recovered: &Arc<Recoveries>,
    cluster: Option<&Arc<Cluster>>,
) -> Result<Vec<Upstream>, SetupError> {
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
                UpstreamKind::Maildir(maildir)
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
                    .with_recovery_signal(recovered.clone())
                    .with_cluster(cluster);
                UpstreamKind::Smtp(Arc::new(smtp))
            }
        };
        targets.push(Upstream {
            name,
            priority: up.priority,
            weight: up.weight,
            sender: up.sender.clone(),
            kind,
        });
    }
    Ok(targets)
}

/// The `route` label of deliveries without a route.
const NO_ROUTE: &str = "none";

impl Routing {
    /// The upstreams `message` may use, its route's name for metrics (`none` without
    /// routes), and why it may use none if so.
    fn allowed(&self, message: &Message) -> (Vec<&Upstream>, Cow<'static, str>, Option<String>) {
        match self.routes.for_message(&message.envelope) {
            // The hot path without routes: a constant label, nothing allocated for it.
            route::Allowed::Everywhere => (self.targets.iter().collect(), NO_ROUTE.into(), None),
            route::Allowed::Route {
                route,
                rerouted_from,
            } => {
                if let Some(previous) = rerouted_from {
                    info!(queue_id = %message.id, from_route = %previous, route = %route.name, "routed again: the message's route is not configured any more");
                }
                let allowed = self
                    .targets
                    .iter()
                    .filter(|t| route.upstreams.contains(&t.name))
                    .collect();
                (allowed, route.name.clone().into(), None)
            }
            route::Allowed::Nowhere(why) => {
                warn!(queue_id = %message.id, reason = %why, "no route for a queued message; it waits");
                let label = match &message.envelope.route {
                    Some(name) => Cow::Owned(name.clone()),
                    None => Cow::Borrowed(NO_ROUTE),
                };
                (Vec::new(), label, Some(why))
            }
        }
    }
}

impl Deliverer {
    /// Whether at least one upstream is usable now (a Maildir, or an SMTP upstream whose
    /// circuit breaker is closed); the reason otherwise.
    pub fn usable(&self) -> Result<(), String> {
        let up = self.current().targets.iter().any(|t| match &t.kind {
            UpstreamKind::Maildir(_) => true,
            UpstreamKind::Smtp(up) => up.breaker.is_up(),
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
        let (allowed, route, nowhere) = routing.allowed(&message);
        let mut report = failover::walk(&allowed, &routing.transformer, message, progress).await;
        if let Some(why) = nowhere {
            for (_, status) in report.recipients.iter_mut() {
                if let RcptOutcome::Deferred(reason) = status {
                    *reason = Reason::Text(why.clone());
                }
            }
        }
        metrics::histogram!(name::DELIVERY_DURATION, "route" => route.clone())
            .record(started.elapsed().as_secs_f64());
        for upstream in &report.failed_attempts {
            self.activity.attempt_failed(upstream);
        }
        let queue_id = id.to_string();
        for (rcpt, status) in &report.recipients {
            match status {
                RcptOutcome::Delivered { upstream, .. } => {
                    metrics::counter!(name::DELIVERED, "upstream" => upstream.clone(), "route" => route.clone())
                        .increment(1);
                }
                RcptOutcome::Deferred(reason) => {
                    let upstream = match reason {
                        Reason::Reply { upstream, .. } => upstream.clone(),
                        Reason::Text(_) | Reason::Local { .. } => "none".to_owned(),
                    };
                    metrics::counter!(name::DEFERRED, "upstream" => upstream, "route" => route.clone())
                        .increment(1);
                }
                RcptOutcome::Failed(_) => {}
            }
            let address = rcpt.to_string();
            match status {
                RcptOutcome::Delivered { upstream, response } => {
                    let reply = response
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    info!(queue_id = %id, rcpt = %rcpt, upstream = %upstream, reply = %reply, "delivered");
                    let kind = EventKind::Delivered;
                    self.activity
                        .outcome(&queue_id, &address, kind, Some(upstream), &reply);
                }
                RcptOutcome::Failed(reason) => {
                    warn!(queue_id = %id, rcpt = %rcpt, reason = %reason, "failed permanently");
                    let (kind, upstream) = (EventKind::Failed, reason.upstream());
                    let text = reason.to_string();
                    self.activity
                        .outcome(&queue_id, &address, kind, upstream, &text);
                }
                RcptOutcome::Deferred(reason) => {
                    warn!(queue_id = %id, rcpt = %rcpt, reason = %reason, "deferred");
                    let (kind, upstream) = (EventKind::Deferred, reason.upstream());
                    let text = reason.to_string();
                    self.activity
                        .outcome(&queue_id, &address, kind, upstream, &text);
                }
            }
        }
        report
    }

    /// Close idle pooled connections.
    pub async fn close_idle(&self) {
        for target in self.current().targets.iter() {
            if let UpstreamKind::Smtp(up) = &target.kind {
                up.close_idle().await;
            }
        }
    }

    /// With a `[cluster]`: close connections idle for [`CLUSTER_IDLE`], every second,
    /// so that a connection this replica does not use goes back to the cluster's
    /// `max_connections` for the others. Runs until the task is dropped.
    pub async fn return_idle_connections(self: Arc<Self>) {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            for target in self.current().targets.iter() {
                if let UpstreamKind::Smtp(up) = &target.kind
                    && up.shares_connections()
                {
                    up.close_idle_older_than(CLUSTER_IDLE).await;
                }
            }
        }
    }
}

impl Handoff for Deliverer {
    fn submit(&self, message: Message) -> HandoffFuture<'_> {
        Box::pin(async move {
            let id = message.id;
            let report = self.deliver(Arc::new(message)).await;
            passthrough_result(id, &report)
        })
    }
}

/// What the submitting client hears in passthrough mode without the spool's help. Any
/// deferred recipient makes the whole message temporary-failed, so the client retries
/// rather than loses it (the recipients that did get it may see it twice). Permanent
/// failures next to deliveries are only logged. [`crate::queue::Passthrough`] uses it when
/// no recipient was delivered, and when the spool cannot take the rest.
///
/// An upstream's own reply to the message is relayed (SPEC: passthrough relays the
/// upstream's final answer). Our own diagnosis (a connection, TLS or AUTH failure, a
/// breaker, a budget, an upstream that cannot take the message) stays in the log, with
/// the queue id `id`: the client hears a generic text with the status code that names
/// the class of the cause (STYLE 4: internal error text never reaches the wire).
pub fn passthrough_result(id: QueueId, report: &Report) -> Result<(), HandoffError> {
    if report.all_delivered() {
        return Ok(());
    }
    let deferred = report.recipients.iter().find_map(|(_, s)| match s {
        RcptOutcome::Deferred(reason) => Some(reason),
        _ => None,
    });
    if let Some(reason) = deferred {
        return Err(HandoffError::Refused(match reason {
            Reason::Reply { upstream, response } if response.is_transient() => {
                relay_reply(upstream, response)
            }
            other => {
                let reply = Reply::new(451, Enhanced(4, 4, 1), NOT_DELIVERED_NOW);
                warn!(queue_id = %id, reason = %other, reply = %reply, "passthrough: not delivered now; the client is told to try again later (the reason stays in the log)");
                reply
            }
        }));
    }
    let delivered = report
        .recipients
        .iter()
        .any(|(_, s)| matches!(s, RcptOutcome::Delivered { .. }));
    if delivered {
        return Ok(());
    }
    let reason = report
        .recipients
        .iter()
        .find_map(|(_, s)| match s {
            RcptOutcome::Failed(reason) => Some(reason),
            _ => None,
        })
        .expect("not all delivered, none deferred: some failed");
    let reply = match reason {
        Reason::Reply { upstream, response } => {
            return Err(HandoffError::Refused(relay_reply(upstream, response)));
        }
        Reason::Text(_) => Reply::new(554, Enhanced(5, 3, 0), NOT_DELIVERED),
        Reason::Local { code, status, .. } => Reply::new(*code, *status, not_relayable(*status)),
    };
    warn!(queue_id = %id, reason = %reason, reply = %reply, "passthrough: not delivered; the client is told it failed for good (the reason stays in the log)");
    Err(HandoffError::Refused(reply))
}

/// The text of a deferral we diagnosed ourselves (the log has the diagnosis).
pub const NOT_DELIVERED_NOW: &str = "Not delivered now, please try again later";

/// The text of a permanent failure we diagnosed ourselves, when no status names it.
pub const NOT_DELIVERED: &str = "Not delivered";

/// The text for a message no upstream can take, by the status that names the cause
/// (RFC 3463); which upstream lacked what is in the log.
fn not_relayable(status: Enhanced) -> &'static str {
    match status {
        Enhanced(5, 3, 4) => "Message too big for the upstream servers",
        Enhanced(5, 6, 7) => "Message needs SMTPUTF8, which the upstream servers do not offer",
        Enhanced(5, 6, 3) => {
            "Message has 8-bit content that cannot be converted for the upstream servers"
        }
        _ => NOT_DELIVERED,
    }
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
    fn report(outcomes: Vec<RcptOutcome>) -> Report {
        Report {
            recipients: outcomes
                .into_iter()
                .enumerate()
                .map(|(i, o)| {
                    (
                        crate::proto::Address::parse(&format!("r{i}@example.net")).unwrap(),
                        o,
                    )
                })
                .collect(),
            attempted: true,
            held_until: None,
            breakers_open_until: None,
            waiting_for_upstream: false,
            failed_attempts: Vec::new(),
        }
    }

    fn wire(result: Result<(), HandoffError>) -> String {
        match result {
            Err(HandoffError::Refused(reply)) => reply.to_wire(),
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[test]
    fn passthrough_keeps_our_diagnosis_off_the_wire() {
        let id = QueueId::from_u64(1);
        let diagnosis = "down: cannot connect to 127.0.0.1:1: Connection refused (TLS, AUTH...)";
        let deferred = report(vec![RcptOutcome::Deferred(Reason::Text(diagnosis.into()))]);
        assert_eq!(
            wire(passthrough_result(id, &deferred)),
            "451 4.4.1 Not delivered now, please try again later\r\n"
        );
        // A 5xx the walk treats as a deferral (throttling) is not relayed as a 5xx.
        let throttled = report(vec![RcptOutcome::Deferred(Reason::Reply {
            upstream: "a".into(),
            response: Response {
                code: 550,
                lines: vec!["5.7.0 too many messages, slow down".into()],
            },
        })]);
        assert_eq!(
            wire(passthrough_result(id, &throttled)),
            "451 4.4.1 Not delivered now, please try again later\r\n"
        );
        let failed = report(vec![RcptOutcome::Failed(Reason::Text(diagnosis.into()))]);
        assert_eq!(
            wire(passthrough_result(id, &failed)),
            "554 5.3.0 Not delivered\r\n"
        );
        let too_big = report(vec![RcptOutcome::Failed(Reason::Local {
            code: 552,
            status: Enhanced(5, 3, 4),
            text: "no upstream can take this message: primary: SIZE limit of 2000".into(),
        })]);
        assert_eq!(
            wire(passthrough_result(id, &too_big)),
            "552 5.3.4 Message too big for the upstream servers\r\n"
        );
    }

    #[test]
    fn passthrough_relays_the_upstreams_own_reply() {
        let id = QueueId::from_u64(1);
        let transient = report(vec![RcptOutcome::Deferred(Reason::Reply {
            upstream: "b".into(),
            response: Response {
                code: 451,
                lines: vec!["4.3.0 try later".into()],
            },
        })]);
        assert_eq!(
            wire(passthrough_result(id, &transient)),
            "451 4.3.0 upstream b said: try later\r\n"
        );
        let refused = report(vec![RcptOutcome::Failed(Reason::Reply {
            upstream: "b".into(),
            response: Response {
                code: 550,
                lines: vec!["5.1.1 no such user".into()],
            },
        })]);
        assert_eq!(
            wire(passthrough_result(id, &refused)),
            "550 5.1.1 upstream b said: no such user\r\n"
        );
        let delivered = report(vec![RcptOutcome::Delivered {
            upstream: "b".into(),
            response: None,
        }]);
        assert!(passthrough_result(id, &delivered).is_ok());
    }
}
