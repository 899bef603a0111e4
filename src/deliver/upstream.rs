//! One SMTP upstream at run time: its endpoint, credentials, connection pool, breaker,
//! and the TLS mode `auto` detected.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::info;

use super::Progress;
use super::breaker::Breaker;
use super::client::{ClientError, Credentials, RcptReply, SecretKind};
use super::connect::{Endpoint, Event, Session, establish};
use super::oauth::TokenManager;
use super::outcome::{Failure, Stage, Unsuitable, is_too_many_recipients};
use super::ratelimit::Budget;
use crate::cluster::{
    Cluster, ConnectionLease, SharedBreaker, SharedBudget, SharedConnections, Verdict,
};
use crate::config::{Config, DeliveryConfig, Secret, TlsMode, UpstreamConfig, UpstreamUrl};
use crate::message::Message;
use crate::proto::{Address, Response, ReversePath};
use crate::tls::TlsSetupError;

/// An idle connection is closed rather than reused after this long; servers drop idle
/// clients after a few minutes (RFC 5321 §4.5.3.2 asks them to wait 5).
const IDLE_REUSE_LIMIT: Duration = Duration::from_secs(60);

/// Where the upstream's secret comes from.
#[derive(Clone, Debug)]
enum SecretSource {
    Fixed(Secret),
    /// Read for every new connection, so a refresher can replace the token.
    TokenFile(std::path::PathBuf),
    /// Fetched and refreshed by the relay (`[upstream.oauth]`).
    OAuth(Arc<TokenManager>),
}

/// An SMTP upstream.
pub struct SmtpUpstream {
    /// Name in logs and metrics.
    pub name: String,
    /// Lower is tried first.
    pub priority: i32,
    /// Share within a priority.
    pub weight: u32,
    /// Forced envelope sender and From address, if configured.
    pub sender: Option<String>,
    endpoint: Endpoint,
    /// The mode `tls=auto` found on first contact.
    detected: Mutex<Option<TlsMode>>,
    /// Whether the server offered 8BITMIME in its last EHLO (unknown before the first).
    offers_8bitmime: Mutex<Option<bool>>,
    username: Option<String>,
    secret: Option<(SecretSource, SecretKind)>,
    max_messages_per_connection: usize,
    /// Recipients per transaction.
    max_recipients: usize,
    max_connections: usize,
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
    /// Health: skipped while open.
    pub breaker: Breaker,
    /// Sending budget (`rate_limit`, `daily_limit`) of this replica.
    pub budget: Budget,
    /// The same budget shared by every replica of a `[cluster]`, when there is one.
    pub shared: Option<SharedBudget>,
    /// The cluster's view of this upstream's breaker, when there is a `[cluster]`.
    pub shared_breaker: Option<SharedBreaker>,
    /// `max_connections` across the cluster, when there is a `[cluster]`.
    shared_connections: Option<SharedConnections>,
    /// The last failed attempt: when, and what went wrong (for the status page).
    last_error: Mutex<Option<(SystemTime, String)>>,
}

/// An attempt that ended early ([`SmtpUpstream::send`]).
#[derive(Debug)]
pub struct Partial {
    /// Per recipient, in order: the reply it got before the attempt ended, if any.
    pub replies: Vec<Option<RcptReply>>,
    /// What ended the attempt.
    pub failure: Failure,
}

impl Partial {
    /// Nothing was sent.
    fn none(recipients: &[Address], failure: Failure) -> Partial {
        Partial {
            replies: vec![None; recipients.len()],
            failure,
        }
    }
}

/// A pooled connection waiting for its next message.
struct Idle {
    session: Session,
    sent: usize,
    since: Instant,
    /// The cluster's permission for this connection: held while it is open.
    lease: Option<ConnectionLease>,
}

/// A connection in use, with its pool slot.
struct Lease {
    session: Session,
    sent: usize,
    /// Taken from the pool: it carried earlier messages, and the server may be done
    /// with it (a per-connection message cap, an idle timeout).
    reused: bool,
    _slot: OwnedSemaphorePermit,
    /// The cluster's permission for this connection, with a `[cluster]`: held as long
    /// as the connection is open, in use or idle (the provider counts both).
    lease: Option<ConnectionLease>,
}

impl SmtpUpstream {
    /// Build from configuration. Only for `smtp://`/`smtps://` URLs.
    pub fn from_config(
        up: &UpstreamConfig,
        config: &Config,
    ) -> Result<SmtpUpstream, TlsSetupError> {
        let UpstreamUrl::Smtp {
            host, port, tls, ..
        } = &up.url
        else {
            unreachable!("SmtpUpstream::from_config is only called for SMTP URLs");
        };
        let connector = crate::tls::client_connector(up.ca_file.as_deref(), up.tls_verify)?;
        let endpoint = Endpoint {
            host: host.clone(),
            port: *port,
            mode: *tls,
            connector,
            helo: up
                .helo_name
                .clone()
                .unwrap_or_else(|| config.server.hostname.clone()),
            timeout: up.timeout,
            data_timeout: up.data_timeout,
            allow_plaintext_auth: up.allow_plaintext_auth,
        };
        let name = up.display_name();
        let secret = match (&up.password, &up.oauth_token, &up.oauth_token_file) {
            _ if up.oauth.is_some() => {
                let oauth = up.oauth.as_ref().expect("checked");
                let tokens = TokenManager::new(&name, oauth, up.timeout)?;
                Some((
                    SecretSource::OAuth(Arc::new(tokens)),
                    SecretKind::OAuthToken,
                ))
            }
            (Some(p), _, _) => Some((SecretSource::Fixed(p.clone()), SecretKind::Password)),
            (None, Some(t), _) => Some((SecretSource::Fixed(t.clone()), SecretKind::OAuthToken)),
            (None, None, Some(f)) => {
                Some((SecretSource::TokenFile(f.clone()), SecretKind::OAuthToken))
            }
            (None, None, None) => None,
        };
        Ok(SmtpUpstream {
            name,
            priority: up.priority,
            weight: up.weight,
            sender: up.sender.clone(),
            endpoint,
            detected: Mutex::new(None),
            offers_8bitmime: Mutex::new(None),
            username: up.username.clone(),
            secret,
            max_messages_per_connection: up.max_messages_per_connection,
            max_recipients: up.max_recipients,
            max_connections: up.max_connections,
            slots: Arc::new(Semaphore::new(up.max_connections)),
            last_error: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            breaker: breaker(&config.delivery, up.timeout),
            budget: Budget::new(up.rate_limit, up.daily_limit),
            shared: None,
            shared_breaker: None,
            shared_connections: None,
        })
    }

    /// Share this upstream's budget with the other replicas of `cluster`.
    pub fn with_cluster(mut self, cluster: Option<&Arc<Cluster>>) -> SmtpUpstream {
        self.shared = cluster.and_then(|c| {
            let (rate, daily) = (self.budget.rate(), self.budget.daily());
            SharedBudget::new(c.clone(), &self.name, rate, daily)
        });
        self.shared_breaker = cluster.map(|c| {
            // A probe is one delivery attempt: it may take the whole data timeout.
            let probe_timeout = self.endpoint.timeout + self.endpoint.data_timeout;
            SharedBreaker::new(c.clone(), &self.name, probe_timeout)
        });
        self.shared_connections =
            cluster.map(|c| SharedConnections::new(c.clone(), &self.name, self.max_connections));
        self
    }

    /// Take one message from the sending budget (the cluster's when shared), or say
    /// when the next one may go.
    pub async fn take_budget(&self) -> Result<(), SystemTime> {
        match &self.shared {
            Some(shared) => match shared.take().await {
                Verdict::Go => Ok(()),
                Verdict::WaitUntil(until) => Err(until),
            },
            None => self.budget.take(SystemTime::now()),
        }
    }

    /// What the budget still allows: the next window's room and today's rest.
    pub fn budget_left(&self) -> (Option<u64>, Option<u64>) {
        let now = SystemTime::now();
        match &self.shared {
            Some(shared) => shared.left(now),
            None => self.budget.left(now),
        }
    }

    /// Notify `signal` when this upstream's breaker closes after having been open.
    pub fn with_recovery_signal(mut self, signal: Arc<super::breaker::Recoveries>) -> SmtpUpstream {
        self.breaker = self.breaker.with_recovery_signal(signal);
        self
    }

    /// Host, port and configured TLS mode, for diagnoses.
    pub fn describe(&self) -> (&str, u16, TlsMode) {
        (&self.endpoint.host, self.endpoint.port, self.endpoint.mode)
    }

    /// The endpoint with the detected mode applied.
    pub fn endpoint(&self) -> Endpoint {
        let mut ep = self.endpoint.clone();
        if ep.mode == TlsMode::Auto
            && let Some(found) = *self.detected.lock().expect("detected lock")
        {
            ep.mode = found;
        }
        ep
    }

    /// The configured account, if any.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// Whether the server offered 8BITMIME when last asked; `None` before the first
    /// connection.
    pub fn offers_8bitmime(&self) -> Option<bool> {
        *self.offers_8bitmime.lock().expect("8BITMIME lock")
    }

    /// Whether AUTH is used (an account and a secret are configured).
    pub fn has_credentials(&self) -> bool {
        self.username.is_some() && self.secret.is_some()
    }

    /// The token manager, when the relay fetches this upstream's OAuth tokens.
    pub fn oauth(&self) -> Option<&TokenManager> {
        match &self.secret {
            Some((SecretSource::OAuth(tokens), _)) => Some(tokens),
            _ => None,
        }
    }

    /// The credentials: reading a token file, or getting a current OAuth token, if so
    /// configured. `None`: no AUTH.
    pub async fn credentials(&self) -> Result<Option<Credentials>, Failure> {
        let (Some(username), Some((source, kind))) = (&self.username, &self.secret) else {
            return Ok(None);
        };
        let secret = match source {
            SecretSource::Fixed(s) => s.clone(),
            SecretSource::TokenFile(path) => {
                let text = std::fs::read_to_string(path).map_err(Failure::TokenFile)?;
                Secret::new(text.trim())
            }
            SecretSource::OAuth(tokens) => {
                tokens
                    .token()
                    .await
                    .map_err(|error| Failure::OAuth {
                        upstream: self.name.clone(),
                        error,
                    })?
                    .secret
            }
        };
        Ok(Some(Credentials {
            username: username.clone(),
            secret,
            kind: *kind,
        }))
    }

    /// Open a new session, observing each step (used by `check`).
    ///
    /// With `[upstream.oauth]`, a refused token is dropped and the session opened once
    /// more with a new one (the server may have revoked it early); a second refusal is
    /// the upstream's failure.
    pub async fn open(
        &self,
        observe: &mut (dyn FnMut(Event<'_>) + Send),
    ) -> Result<Session, Failure> {
        let creds = self.credentials().await?;
        let first = establish(&self.endpoint(), creds.as_ref(), observe).await;
        let session = match (first, self.oauth(), &creds) {
            (Err(Failure::AuthRejected(response)), Some(tokens), Some(refused)) => {
                tracing::info!(upstream = %self.name, reply = %response, "the upstream refused the OAuth token; fetching a new one and trying once more");
                tokens.invalidate(&refused.secret).await;
                let creds = self.credentials().await?;
                establish(&self.endpoint(), creds.as_ref(), observe).await?
            }
            (first, _, _) => first?,
        };
        if self.endpoint.mode == TlsMode::Auto {
            *self.detected.lock().expect("detected lock") = Some(session.mode);
        }
        *self.offers_8bitmime.lock().expect("8BITMIME lock") = Some(session.caps.has("8BITMIME"));
        Ok(session)
    }

    /// Most connections at once (`max_connections`).
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Connections in use by deliveries now.
    pub fn in_flight(&self) -> usize {
        self.max_connections - self.slots.available_permits()
    }

    /// Remember a failed attempt (its text names no secret: replies and our diagnoses).
    pub fn note_failure(&self, error: String) {
        *self.last_error.lock().expect("last error lock") = Some((SystemTime::now(), error));
    }

    /// The last failed attempt, if any: when, and what went wrong.
    pub fn last_error(&self) -> Option<(SystemTime, String)> {
        self.last_error.lock().expect("last error lock").clone()
    }

    /// A connection: an idle pooled one, or a new one.
    async fn checkout(&self) -> Result<Lease, Failure> {
        let slot = tokio::time::timeout(self.endpoint.timeout, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| Failure::Busy(self.max_connections))?
            .expect("the pool semaphore is never closed");
        loop {
            let candidate = self.idle.lock().expect("pool lock").pop();
            let Some(idle) = candidate else { break };
            if idle.since.elapsed() > IDLE_REUSE_LIMIT {
                tokio::spawn(idle.session.client.quit());
                continue;
            }
            // RSET between messages goes out with the next transaction's commands (one
            // round trip less per message than asking first). If the server closed the
            // connection meanwhile, that transaction finds out before anything is taken
            // and goes on a new connection (see `send`).
            let mut session = idle.session;
            session.client.reset_before_next();
            return Ok(Lease {
                session,
                sent: idle.sent,
                reused: true,
                _slot: slot,
                lease: idle.lease,
            });
        }
        let lease = match &self.shared_connections {
            Some(shared) => Some(self.cluster_lease(shared).await?),
            None => None,
        };
        let session = self.open(&mut |_| {}).await?;
        Ok(Lease {
            session,
            sent: 0,
            reused: false,
            _slot: slot,
            lease,
        })
    }

    /// Close idle connections older than `age`: in a cluster an idle connection holds
    /// one of the cluster's `max_connections`, which another replica may be waiting for.
    pub async fn close_idle_older_than(&self, age: Duration) {
        let old: Vec<Idle> = {
            let mut idle = self.idle.lock().expect("pool lock");
            let (old, keep) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|c| c.since.elapsed() >= age);
            *idle = keep;
            old
        };
        for conn in old {
            conn.session.client.quit().await;
        }
    }

    /// Whether this upstream's connections count against a cluster-wide cap.
    pub fn shares_connections(&self) -> bool {
        self.shared_connections.is_some()
    }

    /// A connection lease from the cluster, waiting up to the connect timeout for one
    /// that another replica gives back.
    async fn cluster_lease(&self, shared: &SharedConnections) -> Result<ConnectionLease, Failure> {
        let deadline = tokio::time::Instant::now() + self.endpoint.timeout;
        loop {
            if let Some(lease) = shared.try_acquire().await {
                return Ok(lease);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Failure::Busy(self.max_connections));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn checkin(&self, lease: Lease) {
        let sent = lease.sent + 1;
        if sent >= self.max_messages_per_connection {
            tokio::spawn(lease.session.client.quit());
            return;
        }
        self.idle.lock().expect("pool lock").push(Idle {
            session: lease.session,
            sent,
            since: Instant::now(),
            lease: lease.lease,
        });
    }

    /// Close every idle connection (shutdown, reload).
    pub async fn close_idle(&self) {
        let idle: Vec<Idle> = std::mem::take(&mut *self.idle.lock().expect("pool lock"));
        for conn in idle {
            conn.session.client.quit().await;
        }
    }

    /// One attempt to deliver `message` to `recipients` here, in transactions of at most
    /// `max_recipients` recipients on one connection (one `MAIL` each, RFC 5321 §3.3).
    /// A recipient refused only because the transaction has too many
    /// ([`is_too_many_recipients`]) goes in the next transaction at once, and later
    /// transactions take no more than the server took.
    ///
    /// Per-recipient refusals come back as [`RcptReply::Refused`]. An error ends the
    /// attempt: it carries the replies of the recipients settled before it (accepted
    /// ones must not be sent again); the others have none.
    ///
    /// After each transaction that more follow, the recipients it got accepted are told
    /// to `progress` (indices into `recipients`) before the next one starts; a single
    /// transaction tells it nothing. If `progress` cannot take them, the attempt ends
    /// there ([`Failure::Unrecorded`]).
    pub async fn send(
        &self,
        message: &Message,
        recipients: &[Address],
        progress: &dyn Progress,
    ) -> Result<Vec<RcptReply>, Partial> {
        let mut lease = self
            .checkout()
            .await
            .map_err(|f| Partial::none(recipients, f))?;
        if let Err(unsuitable) = suitability(&lease.session, message) {
            self.checkin_unused(lease);
            return Err(Partial::none(recipients, unsuitable));
        }
        let mail_from = mail_from(&lease.session, message);
        let pipelining = lease.session.caps.has("PIPELINING");
        let mut plan = Transactions::new(recipients.len(), self.max_recipients);
        while let Some(batch) = plan.next_batch() {
            let rcpts: Vec<String> = batch.iter().map(|i| recipients[*i].to_string()).collect();
            let result = lease
                .session
                .client
                .transaction(
                    &mail_from,
                    &rcpts,
                    (&message.content, message.body.as_ref()),
                    pipelining,
                )
                .await;
            if let Some(why) = finished_at_start(&result, &lease.session)
                && (plan.on_connection > 0 || lease.reused)
            {
                self.log_reused_end(message, &why, lease.sent + plan.on_connection);
                plan.put_back(batch);
                match self.reconnect(&mut lease).await {
                    Ok(()) => {
                        plan.on_connection = 0;
                        continue;
                    }
                    Err(failure) => return Err(plan.into_partial(failure)),
                }
            }
            let answers = match result {
                Ok(answers) => answers,
                Err(e) => {
                    let failure = Failure::from_client(Stage::Transaction, e);
                    return Err(plan.into_partial(failure));
                }
            };
            // 421 on a fresh connection: nothing of this transaction was taken, and the
            // upstream is failing.
            if let Some(closing) = closing_reply(&answers) {
                return Err(plan.into_partial(Failure::Refused {
                    command: "the transaction".into(),
                    response: closing,
                }));
            }
            match plan.settle(&batch, answers) {
                Settled::NoneTaken => break,
                Settled::Took { again: 0, .. } => {}
                Settled::Took { took, .. } => info!(
                    queue_id = %message.id,
                    upstream = %self.name,
                    took,
                    rest = plan.waiting.len(),
                    "the upstream took fewer recipients than sent in one transaction; the rest go in the next transaction now (lower max_recipients to the number it takes)"
                ),
            }
            if let Err(why) = plan.record_accepted(&batch, progress).await {
                lease.sent += plan.on_connection.saturating_sub(1);
                self.checkin(lease);
                return Err(plan.into_partial(Failure::Unrecorded(why)));
            }
        }
        // Each transaction counts toward `max_messages_per_connection`.
        lease.sent += plan.on_connection.saturating_sub(1);
        self.checkin(lease);
        Ok(plan.into_replies())
    }

    /// The connection carried earlier transactions (of this message, or of earlier
    /// ones from the pool) and is finished: servers cap messages per connection. That
    /// is no failure of the upstream nor of the message: the rest goes on a new
    /// connection at once. A fresh connection that does the same before any
    /// transaction is a real failure, so this cannot loop: each reconnection follows a
    /// settled transaction or the first use of a pooled connection.
    fn log_reused_end(&self, message: &Message, why: &str, transactions_on_it: usize) {
        info!(
            queue_id = %message.id,
            upstream = %self.name,
            reply = %why,
            transactions_on_it,
            "the upstream ended a reused connection at the start of a transaction (a per-connection message limit); continuing on a new connection now (set max_messages_per_connection to its limit to retire connections before it does)"
        );
    }

    /// Replace the leased connection, which the server is closing, by a new one.
    async fn reconnect(&self, lease: &mut Lease) -> Result<(), Failure> {
        let session = self.open(&mut |_| {}).await?;
        // The old one is closing from the server's side.
        drop(std::mem::replace(&mut lease.session, session));
        lease.sent = 0;
        lease.reused = false;
        Ok(())
    }

    /// Return a connection that sent nothing.
    fn checkin_unused(&self, lease: Lease) {
        self.idle.lock().expect("pool lock").push(Idle {
            session: lease.session,
            sent: lease.sent,
            since: Instant::now(),
            lease: lease.lease,
        });
    }
}

/// The `MAIL FROM` argument for `message` on this session: the reverse path and the
/// parameters the server takes (SIZE, BODY=8BITMIME, SMTPUTF8).
fn mail_from(session: &Session, message: &Message) -> String {
    let mut mail_from = match &message.envelope.sender {
        ReversePath::Null => "<>".to_owned(),
        ReversePath::Mailbox(a) => format!("<{a}>"),
    };
    if session.caps.has("SIZE") {
        mail_from.push_str(&format!(" SIZE={}", message.size()));
    }
    if needs_8bit(message) {
        mail_from.push_str(" BODY=8BITMIME");
    }
    if message.envelope.smtputf8 {
        mail_from.push_str(" SMTPUTF8");
    }
    mail_from
}

/// Why the server is finished with this connection before taking anything of this
/// transaction: a 421 (RFC 5321 §3.8), or a close before DATA.
fn finished_at_start(
    result: &Result<Vec<RcptReply>, ClientError>,
    session: &Session,
) -> Option<String> {
    match result {
        Ok(answers) => closing_reply(answers).map(|resp| resp.to_string()),
        Err(e @ (ClientError::Closed | ClientError::Io(_))) if !session.client.reached_data() => {
            Some(e.to_string())
        }
        Err(_) => None,
    }
}

/// The first `421` among the recipient replies: the server is closing.
fn closing_reply(answers: &[RcptReply]) -> Option<Response> {
    answers.iter().find_map(|r| match r {
        RcptReply::Refused(resp) if resp.code == 421 => Some(resp.clone()),
        _ => None,
    })
}

/// The recipients of one attempt, sent in transactions of at most `per_transaction`.
struct Transactions {
    /// Per recipient: the reply it got so far.
    replies: Vec<Option<RcptReply>>,
    /// Indices of the recipients still to send, in envelope order.
    waiting: VecDeque<usize>,
    per_transaction: usize,
    /// Transactions settled on the current connection.
    on_connection: usize,
}

/// What one transaction's replies did to the plan.
enum Settled {
    /// Not even the first recipient was taken: every recipient still waiting got
    /// that refusal too (no loop on a server that takes none).
    NoneTaken,
    /// The server took `took` recipients; `again` refused for being too many wait for
    /// the next transaction.
    Took { took: usize, again: usize },
}

impl Transactions {
    fn new(recipients: usize, max_recipients: usize) -> Transactions {
        Transactions {
            replies: vec![None; recipients],
            waiting: (0..recipients).collect(),
            per_transaction: max_recipients.max(1),
            on_connection: 0,
        }
    }

    /// The recipients of the next transaction, if any wait.
    fn next_batch(&mut self) -> Option<Vec<usize>> {
        let take = self.per_transaction.min(self.waiting.len());
        (take > 0).then(|| self.waiting.drain(..take).collect())
    }

    /// Send these recipients first in the next transaction.
    fn put_back(&mut self, batch: Vec<usize>) {
        for index in batch.into_iter().rev() {
            self.waiting.push_front(index);
        }
    }

    /// Take the replies to a transaction of `batch`. The server takes `took`
    /// recipients per transaction: the ones it refused beyond that for being too many
    /// go in the next transaction, and later transactions take no more.
    fn settle(&mut self, batch: &[usize], answers: Vec<RcptReply>) -> Settled {
        let took = answers
            .iter()
            .position(|r| matches!(r, RcptReply::Refused(resp) if is_too_many_recipients(resp)))
            .unwrap_or(answers.len());
        let mut again = Vec::new();
        for (position, (index, answer)) in batch.iter().zip(answers).enumerate() {
            match answer {
                RcptReply::Refused(resp)
                    if took > 0 && position >= took && is_too_many_recipients(&resp) =>
                {
                    again.push(*index);
                    self.replies[*index] = Some(RcptReply::Refused(resp));
                }
                answer => self.replies[*index] = Some(answer),
            }
        }
        self.on_connection += 1;
        if took == 0 {
            // A deferral like any other, and so are the recipients not sent yet.
            let refusal = self.replies[batch[0]].clone();
            for index in self.waiting.drain(..) {
                self.replies[index] = refusal.clone();
            }
            return Settled::NoneTaken;
        }
        let again_count = again.len();
        if again_count > 0 {
            self.per_transaction = self.per_transaction.min(took);
            self.put_back(again);
        }
        Settled::Took {
            took,
            again: again_count,
        }
    }

    /// When more transactions follow, record what this one got accepted first, so a
    /// crash during the next never sends it again.
    async fn record_accepted(
        &self,
        batch: &[usize],
        progress: &dyn Progress,
    ) -> Result<(), String> {
        if self.waiting.is_empty() {
            return Ok(());
        }
        let accepted: Vec<usize> = batch
            .iter()
            .copied()
            .filter(|i| matches!(self.replies[*i], Some(RcptReply::Accepted(_))))
            .collect();
        if accepted.is_empty() {
            return Ok(());
        }
        progress.accepted(&accepted).await
    }

    /// The attempt ended early with `failure`.
    fn into_partial(self, failure: Failure) -> Partial {
        Partial {
            replies: self.replies,
            failure,
        }
    }

    /// Every recipient answered.
    fn into_replies(self) -> Vec<RcptReply> {
        self.replies
            .into_iter()
            .map(|r| r.expect("every recipient was answered"))
            .collect()
    }
}

fn breaker(delivery: &DeliveryConfig, timeout: Duration) -> Breaker {
    Breaker::new(
        delivery.breaker_threshold,
        delivery.breaker_cooldown,
        delivery.breaker_max_cooldown,
        timeout * 4,
    )
}

/// Whether the content has 8-bit octets (it then needs 8BITMIME, RFC 6152). What the
/// client declared does not matter: 7-bit content goes without `BODY=8BITMIME`
/// (RFC 6152 §3), to any upstream.
fn needs_8bit(message: &Message) -> bool {
    message.has_eight_bit()
}

/// Can this server take this message? (SIZE, 8BITMIME, SMTPUTF8)
fn suitability(session: &Session, message: &Message) -> Result<(), Failure> {
    let caps = &session.caps;
    if let Some(limit) = caps.size_limit()
        && message.size() > limit
    {
        return Err(Failure::Unsuitable(Unsuitable::TooBig {
            size: message.size(),
            limit,
        }));
    }
    if message.envelope.smtputf8 && !caps.has("SMTPUTF8") {
        return Err(Failure::Unsuitable(Unsuitable::NeedsSmtpUtf8));
    }
    if needs_8bit(message) && !caps.has("8BITMIME") {
        return Err(Failure::Unsuitable(Unsuitable::NeedsConversion(
            "the message has 8-bit content and the upstream does not offer 8BITMIME".into(),
        )));
        // (The delivery walk converts it and tries again; see failover::walk.)
    }
    Ok(())
}
