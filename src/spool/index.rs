//! The in-memory index: every queued message's entry (envelope, state, location; no
//! content) and how many live messages each segment holds.

use std::collections::{BTreeMap, HashMap};
use std::time::{Instant, SystemTime};

use super::{DeliveryState, Entry};
use crate::message::{Envelope, QueueId, SpooledBody};

#[derive(Debug, Default)]
pub(super) struct SegmentInfo {
    /// Messages whose current content record is in this segment.
    pub(super) live: usize,
    /// Still being appended to.
    pub(super) active: bool,
    /// When it stopped being active.
    pub(super) closed_at: Option<Instant>,
}

#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) messages: HashMap<QueueId, Entry>,
    pub(super) segments: BTreeMap<u64, SegmentInfo>,
}

impl Index {
    pub(super) fn insert(&mut self, id: QueueId, entry: Entry) {
        self.segments
            .entry(entry.location.segment)
            .or_default()
            .live += 1;
        if let Some(old) = self.messages.insert(id, entry) {
            self.release(old.location.segment);
        }
    }

    pub(super) fn remove(&mut self, id: QueueId) {
        if let Some(old) = self.messages.remove(&id) {
            self.release(old.location.segment);
        }
    }

    pub(super) fn release(&mut self, segment: u64) {
        if let Some(info) = self.segments.get_mut(&segment) {
            info.live = info.live.saturating_sub(1);
        }
    }
}

/// How the index changes once an append is durable.
pub(super) enum IndexOp {
    Insert {
        id: QueueId,
        envelope: Envelope,
        received_at: SystemTime,
        state: DeliveryState,
        content_at: usize,
        len: u32,
        body: Option<SpooledBody>,
    },
    Update {
        id: QueueId,
        state: DeliveryState,
    },
    Remove {
        id: QueueId,
    },
    /// No change: a commit of what waits in [`super::journal::Deferred`].
    Flush,
}
