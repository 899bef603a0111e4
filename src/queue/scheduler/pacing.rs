//! In-flow control: when accepted mail waits for a delivery worker faster than the
//! workers take it, each new message's `250` is held back a little, so clients slow to
//! the pace delivery keeps instead of growing the queue (and taking the CPU that
//! delivery needs). Mail waiting for an upstream that is down is not "ready" and holds
//! nothing back: the queue is there to absorb outages.

use std::time::Duration;

use super::Scheduler;
use crate::telemetry::name;

/// The longest a `250` is held back: a paced client slows down but never times out.
pub(super) const MAX_PACE: Duration = Duration::from_secs(1);

/// Ready messages per delivery worker above which new mail is paced.
const READY_PER_WORKER: usize = 8;

/// Never pace below this many ready messages.
const READY_MIN: usize = 64;

/// How many messages may wait for a worker before new mail is paced.
pub(super) fn pace_above(workers: usize) -> usize {
    workers.saturating_mul(READY_PER_WORKER).max(READY_MIN)
}

impl Scheduler {
    /// Wait (at most [`MAX_PACE`]) until the messages ready for delivery are no more
    /// than the pacing limit. The message is already durable: this only slows the
    /// client down.
    pub(super) async fn pace(&self) {
        let limit = self.inner.pace_above;
        if self.ready_len() <= limit {
            return;
        }
        metrics::counter!(name::ACCEPT_PACED).increment(1);
        let _ = tokio::time::timeout(MAX_PACE, async {
            while self.ready_len() > limit {
                self.inner.taken.notified().await;
            }
        })
        .await;
    }

    fn ready_len(&self) -> usize {
        self.inner.queue.lock().expect("queue lock").ready.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_grows_with_the_workers_and_has_a_floor() {
        assert_eq!(pace_above(1), READY_MIN);
        assert_eq!(pace_above(8), 64);
        assert_eq!(pace_above(32), 256);
    }
}
