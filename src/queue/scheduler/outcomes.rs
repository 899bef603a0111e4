//! Delivery outcomes on their way to the spool. An outcome the spool cannot record (its
//! file system is full or failing) is kept in memory and written again every second;
//! meanwhile no delivery starts and new mail is refused, so a message already delivered
//! is never delivered again because its state was lost.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tracing::{error, info, warn};

use super::Scheduler;
use crate::message::QueueId;
use crate::spool::{DeliveryState, SpoolError};

/// A delivery outcome the spool could not record yet.
#[derive(Clone, Debug)]
pub(super) enum Outcome {
    /// No recipient is pending: the message leaves the spool.
    Finished,
    /// Some recipients wait: the new state, and when to try them.
    Deferred {
        state: DeliveryState,
        next: SystemTime,
        /// Waiting for an upstream (none could be used): the recovery count when the
        /// attempt began. Parked until a breaker closes, or due at once if one closed
        /// meanwhile.
        upstream_since: Option<u64>,
    },
}

/// Outcomes waiting to be written, and why the last write failed.
#[derive(Default)]
pub(super) struct Unrecorded {
    pub(super) outcomes: HashMap<QueueId, Outcome>,
    /// Whether the last failure was the file system being out of space (`452 4.3.1` to
    /// new mail) rather than another local fault (`451 4.3.0`).
    pub(super) out_of_space: bool,
}

impl Scheduler {
    /// Write `outcome` to the spool; a deferred message is scheduled once it is written.
    pub(super) async fn record(&self, id: QueueId, outcome: &Outcome) -> Result<(), SpoolError> {
        match outcome {
            Outcome::Finished => self.inner.spool.finish(id).await,
            Outcome::Deferred {
                state,
                next,
                upstream_since,
            } => {
                self.inner.spool.update(id, state.clone()).await?;
                match upstream_since {
                    Some(seen) => self.park(id, *next, *seen),
                    None => self.schedule(id, *next),
                }
                Ok(())
            }
        }
    }

    pub(super) fn unrecorded(&self) -> std::sync::MutexGuard<'_, Unrecorded> {
        self.inner
            .unrecorded
            .lock()
            .expect("unrecorded outcomes lock")
    }

    /// The spool refused `outcome`: hold it in memory and pause deliveries until it is
    /// written (see `write_unrecorded`).
    pub(super) fn keep_unrecorded(&self, id: QueueId, outcome: Outcome, error: &SpoolError) {
        let mut unrecorded = self.unrecorded();
        unrecorded.outcomes.insert(id, outcome);
        unrecorded.out_of_space = error.is_out_of_space();
        let held = unrecorded.outcomes.len();
        drop(unrecorded);
        if !self.inner.spool_failing.swap(true, Ordering::SeqCst) {
            error!(queue_id = %id, error = %error, "the spool cannot record delivery outcomes: they are kept in memory and written again every second; no new delivery starts and new mail is refused until then (free space in spool.dir, or fix the error)");
        } else {
            warn!(queue_id = %id, error = %error, outcomes = held, "delivery outcome kept in memory: the spool still cannot record it");
        }
    }

    /// Write the outcomes held in memory. Returns true when none is left, and then
    /// lets deliveries start again.
    pub(super) async fn write_unrecorded(&self) -> bool {
        let held: Vec<(QueueId, Outcome)> = self
            .unrecorded()
            .outcomes
            .iter()
            .map(|(id, o)| (*id, o.clone()))
            .collect();
        for (id, outcome) in &held {
            if self.inner.spool.entry(*id).is_none() {
                // Deleted by the operator meanwhile.
                self.unrecorded().outcomes.remove(id);
                continue;
            }
            if let Err(e) = self.record(*id, outcome).await {
                self.unrecorded().out_of_space = e.is_out_of_space();
                return false;
            }
            self.unrecorded().outcomes.remove(id);
        }
        let mut unrecorded = self.unrecorded();
        if !unrecorded.outcomes.is_empty() {
            return false;
        }
        unrecorded.out_of_space = false;
        drop(unrecorded);
        if self.inner.spool_failing.swap(false, Ordering::SeqCst) {
            info!(
                outcomes = held.len(),
                "the spool records delivery outcomes again: held outcomes written, deliveries and new mail resume"
            );
            self.inner.wake.notify_waiters();
        }
        true
    }
}
