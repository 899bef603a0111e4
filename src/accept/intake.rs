//! Intake: a message whose content is complete becomes a [`Message`] for the next stage:
//! the transaction's checks (size, loops), a queue id, the header repairs and then the
//! operator's header rules ([`normalize_with_rules_into`]), our `Received` header on top
//! (added after the rules, so no rule removes it), the hand-off, and the reply the
//! client gets.

use std::net::SocketAddr;
use std::time::SystemTime;

use tracing::{info, warn};

use super::HandoffError;
use super::phase::{Completion, Phase};
use super::policy;
use super::session::SessionContext;
use super::submission::Identity;
use crate::config::{Config, HeaderRule};
use crate::message::{ClientInfo, Message, QueueId, SpooledBody};
use crate::proto::{Enhanced, Reply};
use crate::telemetry::name;
use crate::transform::normalize::{Acceptance, normalize_with_rules_into};
use crate::transform::trace::{ClientTrace, received_header};

/// What intake writes into every message besides the repairs, from `[[header_rule]]`
/// and `[transform]`; replaced on reload for new sessions.
#[derive(Clone, Debug, Default)]
pub struct IntakeRewrites {
    /// Applied in order to the repaired header block.
    pub header_rules: Vec<HeaderRule>,
    /// Whether our `Received` header names the client.
    pub client_trace: ClientTrace,
}

impl IntakeRewrites {
    /// The rewrites `config` asks for.
    pub fn from_config(config: &Config) -> IntakeRewrites {
        IntakeRewrites {
            header_rules: config.header_rule.clone(),
            client_trace: if config.transform.hide_client {
                ClientTrace::Hidden
            } else {
                ClientTrace::Shown
            },
        }
    }
}

/// Room for what normalising may add to a message (Date, Message-ID, a rewritten From),
/// so the buffer is not grown (and copied) for it.
const TRANSFORM_SLACK: usize = 1024;

/// A message is complete: check it, hand it to the next stage, and produce the reply.
pub(super) async fn complete(
    phase: Phase,
    peer: SocketAddr,
    (tls, identity): (Option<&str>, &Identity),
    ctx: &SessionContext,
) -> (Phase, Reply) {
    let helo = phase
        .helo()
        .cloned()
        .expect("a transaction implies a greeting");
    let (next, completion) = phase.end_of_content();
    let (envelope, mut content, mut spill) = match completion {
        Completion::Accept {
            envelope,
            content,
            spill,
        } => (envelope, content, spill),
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
    // A large message's body is in a file by now; `content` keeps its header block.
    let body = match spill.finish(&mut content).await {
        Ok(body) => body,
        Err(e) if e.kind() == std::io::ErrorKind::OutOfMemory => {
            metrics::counter!(name::REJECTED, "reason" => "no_memory").increment(1);
            warn!(client = %peer, "message not accepted: the memory for message content (spool.memory_limit) was in use while it arrived, and it could not go to the spool");
            return (next, Reply::insufficient_storage());
        }
        Err(e) => {
            metrics::counter!(name::REJECTED, "reason" => "no_storage").increment(1);
            warn!(client = %peer, error = %e, "message not accepted: cannot write its content to the spool");
            return (next, Reply::insufficient_storage());
        }
    };
    let id = QueueId::generate();
    let now = SystemTime::now();
    let client = ClientInfo {
        ip: peer.ip(),
        helo: helo.name,
        esmtp: helo.extended,
        tls: tls.map(str::to_owned),
        user: identity.user_name().map(str::to_owned),
    };
    let acceptance = Acceptance {
        sender: &envelope.sender,
        hostname: &ctx.rules.hostname,
        smtputf8: envelope.smtputf8,
        id,
        now,
    };
    // Our Received header first, then the normalised message with the header rules
    // applied, in one buffer: the content is copied once, however large. The rules see
    // only the content, so none of them can remove or change our header.
    let trace = received_header(
        &client,
        ctx.rewrites.client_trace,
        &envelope,
        id,
        &ctx.rules.hostname,
        now,
    );
    let mut data = Vec::with_capacity(trace.len() + content.len() + TRANSFORM_SLACK);
    data.extend_from_slice(trace.as_bytes());
    let rules = &ctx.rewrites.header_rules;
    if let Err(e) = normalize_with_rules_into(&content, &acceptance, rules, &mut data) {
        discard(body.as_ref());
        info!(client = %peer, error = %e, "message refused: no usable sender address");
        let text = "The message has no usable From address and the envelope sender is empty; set a From header with an address";
        metrics::counter!(name::REJECTED, "reason" => "no_address").increment(1);
        return (next, Reply::new(550, Enhanced(5, 6, 0), text));
    }
    drop(content);
    // The repairs may add a little (Date, Message-ID, encoded words, one display name of
    // at most MAX_NAME_OCTETS), and so may header rules (one line each); a message that
    // no longer fits the limit we advertise is refused now rather than handed on above
    // it (RFC 1870: 552 5.3.4).
    let normalised = (data.len() - trace.len()) as u64 + body.as_ref().map_or(0, |b| b.len);
    if normalised > ctx.rules.max_message_size {
        discard(body.as_ref());
        let text = format!(
            "Message too big once its headers are repaired: {normalised} octets exceed the limit of {}; nothing was kept",
            ctx.rules.max_message_size
        );
        info!(client = %peer, size = normalised, "message refused: too big once normalised");
        metrics::counter!(name::REJECTED, "reason" => "size").increment(1);
        return (next, Reply::new(552, Enhanced(5, 3, 4), text));
    }
    let judged = policy::judge_from(&ctx.rules.policy, &data[trace.len()..])
        .and_then(|()| policy::judge_user_from(identity, &data[trace.len()..]));
    if let Err(reply) = judged {
        discard(body.as_ref());
        info!(client = %peer, reply = %reply, "message refused by policy");
        metrics::counter!(name::REJECTED, "reason" => "policy").increment(1);
        return (next, reply);
    }
    let mut envelope = envelope;
    policy::redirect(&ctx.rules.policy, &mut envelope, &mut data, trace.len());
    let (sender, rcpts) = (envelope.sender.to_string(), envelope.recipients.len());
    let route = envelope.route.clone();
    let message = Message {
        id,
        envelope,
        content: data,
        body: body.clone(),
        received_at: now,
    };
    let size = message.size();
    let submitted = ctx.handoff.submit(message).await;
    if submitted.is_err() {
        discard(body.as_ref());
    }
    let reply = match submitted {
        Ok(()) => {
            metrics::counter!(name::RECEIVED).increment(1);
            if let Some(activity) = ctx.handoff.activity() {
                activity.received(&id.to_string(), &sender, rcpts);
            }
            // Without routes the field is left out.
            let route = route.as_deref().map(tracing::field::display);
            let user = identity.user_name().map(tracing::field::display);
            info!(queue_id = %id, client = %peer, user, from = %sender, rcpts, size, route, "message accepted");
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

/// The body file of a message that was not accepted.
fn discard(body: Option<&SpooledBody>) {
    if let Some(body) = body {
        let _ = std::fs::remove_file(&body.path);
    }
}
