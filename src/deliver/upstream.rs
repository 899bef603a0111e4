//! One SMTP upstream at run time: its endpoint, credentials, connection pool, breaker,
//! and the TLS mode `auto` detected.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
use crate::config::{Config, DeliveryConfig, Secret, TlsMode, UpstreamConfig, UpstreamUrl};
use crate::message::Message;
use crate::proto::{Address, ReversePath};
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
    /// Sending budget (`rate_limit`, `daily_limit`).
    pub budget: Budget,
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
}

/// A connection in use, with its pool slot.
struct Lease {
    session: Session,
    sent: usize,
    /// Taken from the pool: it carried earlier messages, and the server may be done
    /// with it (a per-connection message cap) even though it answered RSET.
    reused: bool,
    _slot: OwnedSemaphorePermit,
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
            idle: Mutex::new(Vec::new()),
            breaker: breaker(&config.delivery, up.timeout),
            budget: Budget::new(up.rate_limit, up.daily_limit),
        })
    }

    /// Notify `signal` when this upstream's breaker closes after having been open.
    pub fn with_recovery_signal(mut self, signal: Arc<tokio::sync::Notify>) -> SmtpUpstream {
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

    /// A connection: an idle pooled one that answers RSET, or a new one.
    async fn checkout(&self) -> Result<Lease, Failure> {
        let slot = tokio::time::timeout(self.endpoint.timeout, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| Failure::Busy(self.max_connections))?
            .expect("the pool semaphore is never closed");
        loop {
            let candidate = self.idle.lock().expect("pool lock").pop();
            let Some(mut idle) = candidate else { break };
            if idle.since.elapsed() > IDLE_REUSE_LIMIT {
                tokio::spawn(idle.session.client.quit());
                continue;
            }
            if idle.session.client.reset().await {
                return Ok(Lease {
                    session: idle.session,
                    sent: idle.sent,
                    reused: true,
                    _slot: slot,
                });
            }
        }
        let session = self.open(&mut |_| {}).await?;
        Ok(Lease {
            session,
            sent: 0,
            reused: false,
            _slot: slot,
        })
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
        let caps = &lease.session.caps;
        let mut mail_from = match &message.envelope.sender {
            ReversePath::Null => "<>".to_owned(),
            ReversePath::Mailbox(a) => format!("<{a}>"),
        };
        if caps.has("SIZE") {
            mail_from.push_str(&format!(" SIZE={}", message.content.len()));
        }
        if needs_8bit(message) {
            mail_from.push_str(" BODY=8BITMIME");
        }
        if message.envelope.smtputf8 {
            mail_from.push_str(" SMTPUTF8");
        }
        let pipelining = caps.has("PIPELINING");
        let mut replies: Vec<Option<RcptReply>> = vec![None; recipients.len()];
        // Indices of the recipients still to send, in envelope order.
        let mut waiting: VecDeque<usize> = (0..recipients.len()).collect();
        let mut per_transaction = self.max_recipients.max(1);
        // Transactions settled on the current connection.
        let mut transactions = 0usize;
        while !waiting.is_empty() {
            let take = per_transaction.min(waiting.len());
            let batch: Vec<usize> = waiting.drain(..take).collect();
            let rcpts: Vec<String> = batch.iter().map(|i| recipients[*i].to_string()).collect();
            let result = lease
                .session
                .client
                .transaction(&mail_from, &rcpts, &message.content, pipelining)
                .await;
            // The server is finished with this connection before taking anything of
            // this transaction: a 421 (RFC 5321 §3.8), or a close before DATA.
            let finished = match &result {
                Ok(answers) => answers.iter().find_map(|r| match r {
                    RcptReply::Refused(resp) if resp.code == 421 => Some(resp.to_string()),
                    _ => None,
                }),
                Err(e @ (ClientError::Closed | ClientError::Io(_)))
                    if !lease.session.client.reached_data() =>
                {
                    Some(e.to_string())
                }
                Err(_) => None,
            };
            if let Some(why) = finished
                && (transactions > 0 || lease.reused)
            {
                // The connection carried earlier transactions (of this message, or of
                // earlier ones from the pool) and is finished: servers cap messages
                // per connection. That is no failure of the upstream nor of the
                // message: the rest goes on a new connection at once. A fresh
                // connection that does the same before any transaction is a real
                // failure, so this cannot loop: each reconnection follows a settled
                // transaction or the first use of a pooled connection.
                info!(
                    queue_id = %message.id,
                    upstream = %self.name,
                    reply = %why,
                    transactions_on_it = lease.sent + transactions,
                    "the upstream ended a reused connection at the start of a transaction (a per-connection message limit); continuing on a new connection now (set max_messages_per_connection to its limit to retire connections before it does)"
                );
                for index in batch.into_iter().rev() {
                    waiting.push_front(index);
                }
                match self.open(&mut |_| {}).await {
                    Ok(session) => {
                        // The old one is closing from the server's side.
                        drop(std::mem::replace(&mut lease.session, session));
                        lease.sent = 0;
                        lease.reused = false;
                        transactions = 0;
                        continue;
                    }
                    Err(failure) => return Err(Partial { replies, failure }),
                }
            }
            let answers = match result {
                Ok(answers) => answers,
                Err(e) => {
                    return Err(Partial {
                        replies,
                        failure: Failure::from_client(Stage::Transaction, e),
                    });
                }
            };
            // 421 on a fresh connection: nothing of this transaction was taken, and the
            // upstream is failing.
            if let Some(closing) = answers.iter().find_map(|r| match r {
                RcptReply::Refused(resp) if resp.code == 421 => Some(resp.clone()),
                _ => None,
            }) {
                return Err(Partial {
                    replies,
                    failure: Failure::Refused {
                        command: "the transaction".into(),
                        response: closing,
                    },
                });
            }
            // The server takes `took` recipients per transaction: the ones it refused
            // beyond that for being too many go in the next transaction.
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
                        replies[*index] = Some(RcptReply::Refused(resp));
                    }
                    answer => replies[*index] = Some(answer),
                }
            }
            transactions += 1;
            if took == 0 {
                // Not even the first recipient: a deferral like any other, and so are
                // the recipients not sent yet (no loop on a server that takes none).
                let refusal = replies[batch[0]].clone();
                for index in waiting.drain(..) {
                    replies[index] = refusal.clone();
                }
                break;
            }
            if !again.is_empty() {
                info!(
                    queue_id = %message.id,
                    upstream = %self.name,
                    took,
                    rest = again.len() + waiting.len(),
                    "the upstream took fewer recipients than sent in one transaction; the rest go in the next transaction now (lower max_recipients to the number it takes)"
                );
                per_transaction = per_transaction.min(took);
                for index in again.into_iter().rev() {
                    waiting.push_front(index);
                }
            }
            if !waiting.is_empty() {
                // More transactions follow: what this one got accepted is recorded
                // first, so a crash during the next never sends it again.
                let accepted: Vec<usize> = batch
                    .iter()
                    .copied()
                    .filter(|i| matches!(replies[*i], Some(RcptReply::Accepted(_))))
                    .collect();
                if !accepted.is_empty()
                    && let Err(why) = progress.accepted(&accepted).await
                {
                    lease.sent += transactions.saturating_sub(1);
                    self.checkin(lease);
                    return Err(Partial {
                        replies,
                        failure: Failure::Unrecorded(why),
                    });
                }
            }
        }
        // Each transaction counts toward `max_messages_per_connection`.
        lease.sent += transactions.saturating_sub(1);
        self.checkin(lease);
        Ok(replies
            .into_iter()
            .map(|r| r.expect("every recipient was answered"))
            .collect())
    }

    /// Return a connection that sent nothing.
    fn checkin_unused(&self, lease: Lease) {
        self.idle.lock().expect("pool lock").push(Idle {
            session: lease.session,
            sent: lease.sent,
            since: Instant::now(),
        });
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
    !message.content.is_ascii()
}

/// Can this server take this message? (SIZE, 8BITMIME, SMTPUTF8)
fn suitability(session: &Session, message: &Message) -> Result<(), Failure> {
    let caps = &session.caps;
    if let Some(limit) = caps.size_limit()
        && message.content.len() as u64 > limit
    {
        return Err(Failure::Unsuitable(Unsuitable::TooBig {
            size: message.content.len(),
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
