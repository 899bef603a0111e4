//! The scheduler's housekeeping, every second: the `queue` command's requests (retry,
//! delete, drain), queue gauges, the disk-usage guard, spool segment clean-up and, every
//! minute, body files left by sessions that ended before their message was accepted.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tracing::{error, info, warn};

use super::Scheduler;
use crate::message::QueueId;
use crate::spool::ctl::{self, Request};

impl Scheduler {
    /// Every second: operator requests, disk usage, segment clean-up.
    pub(super) async fn maintain(&self) {
        let mut ticks: u64 = 0;
        while !self.inner.stopping.load(Ordering::SeqCst) {
            if self.inner.spool_failing.load(Ordering::SeqCst) {
                self.write_unrecorded().await;
            }
            for request in ctl::take(self.inner.spool.dir()) {
                self.apply(request).await;
            }
            {
                use crate::telemetry::name;
                metrics::gauge!(name::QUEUE).set(self.inner.spool.len() as f64);
                metrics::gauge!(name::CONTENT_MEMORY).set(self.inner.settings.memory.used() as f64);
                let oldest = self
                    .inner
                    .spool
                    .oldest()
                    .and_then(|t| SystemTime::now().duration_since(t).ok());
                metrics::gauge!(name::QUEUE_OLDEST).set(oldest.map_or(0.0, |d| d.as_secs_f64()));
            }
            if ticks.is_multiple_of(5) {
                let usage = disk_usage_percent(self.inner.spool.dir());
                let full = usage.is_some_and(|u| u > self.inner.settings.max_disk_usage);
                if full != self.inner.disk_full.swap(full, Ordering::SeqCst) {
                    if full {
                        warn!(usage = ?usage, limit = self.inner.settings.max_disk_usage, "spool disk above spool.max_disk_usage: refusing new mail with 452 4.3.1");
                    } else {
                        info!(usage = ?usage, "spool disk usage back below the limit: accepting mail");
                    }
                }
            }
            if let Err(e) = self.inner.spool.maintain(Duration::from_secs(600)).await {
                error!(error = %e, "spool maintenance failed");
            }
            if ticks % 60 == 30 {
                let spool = self.inner.spool.clone();
                let _ = tokio::task::spawn_blocking(move || spool.sweep_bodies()).await;
            }
            ticks += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    pub(super) async fn apply(&self, request: Request) {
        match request {
            Request::Retry(id)
                if self
                    .inner
                    .queue
                    .lock()
                    .expect("queue lock")
                    .in_flight
                    .contains(&id) =>
            {
                info!(queue_id = %id, "retry requested for a message being delivered right now; nothing to do");
            }
            Request::Retry(id) if self.inner.spool.entry(id).is_some() => {
                info!(queue_id = %id, "retry requested");
                self.due_now([id]);
            }
            Request::RetryAll => {
                let ids: Vec<QueueId> = self
                    .inner
                    .queue
                    .lock()
                    .expect("queue lock")
                    .due
                    .keys()
                    .copied()
                    .collect();
                info!(
                    messages = ids.len(),
                    "retry of all waiting messages requested"
                );
                self.due_now(ids);
            }
            Request::Delete(id) if self.inner.spool.entry(id).is_some() => {
                self.inner.queue.lock().expect("queue lock").due.remove(&id);
                match self.inner.spool.remove(id).await {
                    Ok(()) => {
                        self.unrecorded().outcomes.remove(&id);
                        info!(queue_id = %id, "deleted from the queue by the operator")
                    }
                    Err(e) => error!(queue_id = %id, error = %e, "cannot delete"),
                }
            }
            Request::Drain { token, to, until } => self.drain(token, to, until).await,
            Request::Retry(id) | Request::Delete(id) => {
                warn!(queue_id = %id, "queue request for a message that is not queued")
            }
        }
    }
}

/// Percent of the file system holding `dir` that is in use, if it can be read.
fn disk_usage_percent(dir: &std::path::Path) -> Option<u8> {
    // As `df` counts: blocks in use against blocks in use plus those available to
    // unprivileged users (the root reserve is neither).
    let stat = rustix::fs::statvfs(dir).ok()?;
    let used = stat.f_blocks.saturating_sub(stat.f_bfree);
    let usable = used + stat.f_bavail;
    if usable == 0 {
        return None;
    }
    Some((used * 100).div_ceil(usable).min(100) as u8)
}
