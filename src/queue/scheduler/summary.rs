//! What the status page shows of the queue: how many messages, the oldest one's age,
//! and why the deferred ones wait.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use super::Scheduler;

/// The queue at a glance.
#[derive(Clone, Debug, Serialize)]
pub struct QueueSummary {
    /// Messages in the spool.
    pub messages: usize,
    /// Age of the oldest message, in seconds.
    pub oldest_age_seconds: Option<u64>,
    /// Messages tried at least once and still queued, by the kind of their last
    /// failure (see [`deferral_kind`]).
    pub deferred_by_reason: BTreeMap<String, usize>,
}

impl Scheduler {
    /// The queue at a glance (one pass over the index).
    pub fn summary(&self) -> QueueSummary {
        let spool = &self.inner.spool;
        let (deferred_by_reason, oldest) = spool.tally(|entry| {
            (entry.state.attempts > 0).then(|| deferral_kind(&entry.state.last_error).to_owned())
        });
        QueueSummary {
            messages: spool.len(),
            oldest_age_seconds: oldest
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map(|d| d.as_secs()),
            deferred_by_reason,
        }
    }
}

/// The kind of a deferral, from the last error a message recorded: an upstream's reply
/// (`reply 451`), `circuit breaker open`, `sending budget used up`, `no route`, or `no
/// answer` (connection, TLS, timeout).
pub fn deferral_kind(last_error: &str) -> String {
    // "upstream: 451 4.7.1 text" is an upstream's reply.
    let code = last_error
        .split_once(": ")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.get(..3))
        .filter(|c| {
            c.bytes().all(|b| b.is_ascii_digit()) && (c.starts_with('4') || c.starts_with('5'))
        });
    if let Some(code) = code {
        return format!("reply {code}");
    }
    let lower = last_error.to_ascii_lowercase();
    let kind = if lower.contains("circuit breaker") {
        "circuit breaker open"
    } else if lower.contains("budget") {
        "sending budget used up"
    } else if lower.contains("route") {
        "no route"
    } else {
        "no answer (connection, TLS or timeout)"
    };
    kind.to_owned()
}

#[cfg(test)]
mod tests {
    use super::deferral_kind;

    #[test]
    fn deferrals_are_grouped_by_what_kept_them() {
        assert_eq!(deferral_kind("ses: 451 4.7.1 try later"), "reply 451");
        assert_eq!(deferral_kind("gmail: 421 4.7.0 too many"), "reply 421");
        assert_eq!(
            deferral_kind("ses: skipped while its circuit breaker is open after repeated failures"),
            "circuit breaker open"
        );
        assert_eq!(
            deferral_kind("ses: connection refused"),
            "no answer (connection, TLS or timeout)"
        );
        assert_eq!(
            deferral_kind("no [[route]] named billing; the message waits"),
            "no route"
        );
    }
}
