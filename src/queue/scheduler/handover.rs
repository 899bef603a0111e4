//! A `queue drain` request carried out by the running relay (see `queue/drain.rs` for
//! the design): close the delivery gate, so no delivery starts and those under way
//! finish first; hand the queue over; open the gate again. The command that asked reads
//! the progress from the answer file (`spool::ctl::drain_output`).
//!
//! It runs in the housekeeping task, like the other requests, so nothing else changes
//! the spool meanwhile (a deletion, segment compaction); gauges pause until it ends.

use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use super::Scheduler;
use crate::message::QueueId;
use crate::queue::drain::{Summary, Target, hand_over};
use crate::spool::ctl;

/// Bound for connecting to the other relay and for each of its replies (but the one to
/// the end of data, which gets the usual ten minutes).
const TARGET_TIMEOUT: Duration = Duration::from_secs(30);

impl Scheduler {
    /// Hand the queue to `to`, answering in the drain output file of `token`, unless
    /// the request is older than `until` (the command stopped waiting for it).
    pub(super) async fn drain(&self, token: QueueId, to: String, until: u64) {
        let until = UNIX_EPOCH + Duration::from_secs(until);
        if SystemTime::now() >= until {
            warn!(to = %to, "ignoring a queue drain request whose command stopped waiting for it");
            return;
        }
        let path = ctl::drain_output(self.inner.spool.dir(), token);
        let mut file = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(f) => Some(f),
            Err(e) => {
                warn!(file = %path.display(), error = %e, "cannot answer the queue drain request; draining all the same");
                None
            }
        };
        let mut say = move |line: &str| {
            info!("queue drain: {line}");
            if let Some(f) = file.as_mut() {
                let _ = f.write_all(format!("{line}\n").as_bytes());
            }
        };
        info!(to = %to, "queue drain requested: no new delivery starts, handing the queue over");
        let busy = self.inner.busy.load(Ordering::SeqCst);
        if busy > 0 {
            say(&format!(
                "waiting for {busy} delivery attempt(s) under way to finish"
            ));
        }
        let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
        let Ok(gate) = tokio::time::timeout(wait, self.inner.gate.write()).await else {
            let summary = Summary {
                handed: 0,
                left: self.inner.spool.len(),
                stopped: Some("deliveries under way did not finish in time".into()),
            };
            say(&summary.text(&to));
            say(&summary.end_line());
            return;
        };
        if self.inner.spool_failing.load(Ordering::SeqCst) {
            self.write_unrecorded().await;
        }
        let target = Target {
            addr: to.clone(),
            helo: self.inner.settings.hostname.clone(),
            timeout: TARGET_TIMEOUT,
        };
        let skip = |id: QueueId| {
            self.unrecorded()
                .outcomes
                .contains_key(&id)
                .then(|| "its last delivery outcome is not recorded in the spool yet".to_owned())
        };
        let stopping = || {
            self.inner
                .stopping
                .load(Ordering::SeqCst)
                .then(|| "the relay is shutting down".to_owned())
        };
        let summary = hand_over(
            &self.inner.spool,
            &target,
            until,
            &skip,
            &stopping,
            &mut say,
        )
        .await;
        drop(gate);
        info!(to = %to, handed = summary.handed, left = summary.left, "queue drain ended");
        say(&summary.text(&to));
        say(&summary.end_line());
    }
}
