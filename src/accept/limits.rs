//! Connections per client address.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

/// Counts open connections per client address and refuses those over the limit.
#[derive(Clone)]
pub(crate) struct ClientCounter {
    open: Arc<DashMap<IpAddr, usize>>,
    limit: Arc<AtomicUsize>,
}

/// One connection's place in the count, given back on drop.
pub(crate) struct ClientSlot {
    open: Arc<DashMap<IpAddr, usize>>,
    ip: IpAddr,
}

impl ClientCounter {
    pub(crate) fn new(limit: usize) -> ClientCounter {
        ClientCounter {
            open: Arc::new(DashMap::new()),
            limit: Arc::new(AtomicUsize::new(limit)),
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// A new limit for connections opened from now on.
    pub(crate) fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Count one more connection from `ip`, unless it already has `limit` open.
    pub(crate) fn try_acquire(&self, ip: IpAddr) -> Option<ClientSlot> {
        let mut count = self.open.entry(ip).or_insert(0);
        if *count >= self.limit() {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            open: self.open.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.open.remove_if_mut(&self.ip, |_, count| {
            *count -= 1;
            *count == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_address_and_frees_on_drop() {
        let counter = ClientCounter::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = counter.try_acquire(a).unwrap();
        let _s2 = counter.try_acquire(a).unwrap();
        assert!(counter.try_acquire(a).is_none());
        assert!(counter.try_acquire(b).is_some());
        drop(s1);
        assert!(counter.try_acquire(a).is_some());
    }

    #[test]
    fn entries_are_removed_when_the_last_connection_closes() {
        let counter = ClientCounter::new(1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        drop(counter.try_acquire(a).unwrap());
        assert!(counter.open.is_empty());
    }
}
