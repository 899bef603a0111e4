//! Authenticated submission on a `[[listener]]`: who the client is ([`Identity`]),
//! whether AUTH can be offered ([`AuthOffer`]), and what every session of the relay
//! shares to judge AUTH: the users file, the failures per client address
//! ([`FailureGuard`]) and each user's sending budget ([`UserBudgets`]).
//!
//! The guard and the budgets outlive a SIGHUP reload (a reload must not lift a lockout
//! or refill a budget); the users are replaced by it.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::config::{RateLimit, User, Users};
use crate::deliver::ratelimit::Budget;
use crate::telemetry::name;

/// Whether this session can offer AUTH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthOffer {
    /// `server.listen`: trusted networks only, no credentials are needed.
    NotHere,
    /// A `[[listener]]` before STARTTLS: AUTH only once the connection is encrypted.
    AfterStartTls,
    /// A `[[listener]]` over TLS: AUTH PLAIN and LOGIN are offered.
    Offered,
}

/// Who the client is, as far as sending rights go.
#[derive(Clone, Debug)]
pub enum Identity {
    /// Its address is in `server.trusted_networks`: it may send without AUTH.
    TrustedNetwork,
    /// Outside the trusted networks on a `[[listener]]`: it must AUTH before MAIL.
    Anonymous,
    /// It authenticated as this user, with this user's sending budget (if it has a
    /// `rate_limit`).
    User(Arc<User>, Option<Arc<Budget>>),
}

impl Identity {
    /// The authenticated user's name.
    pub fn user_name(&self) -> Option<&str> {
        match self {
            Identity::User(user, _) => Some(&user.name),
            _ => None,
        }
    }
}

/// What AUTH is judged by, shared by every session.
#[derive(Debug)]
pub struct Submission {
    /// The users file's users (empty without `[auth] users_file`).
    pub users: Arc<Users>,
    /// Failed attempts per client address.
    pub guard: Arc<FailureGuard>,
    /// Sending budgets per user.
    pub budgets: Arc<UserBudgets>,
    /// Password checks running at once: each takes argon2's memory (19 MiB) and tens of
    /// milliseconds of a core, so a flood of AUTH attempts waits here instead of
    /// filling the blocking pool.
    pub verifications: Arc<tokio::sync::Semaphore>,
}

/// Password checks allowed at once: one per core.
pub fn verification_slots() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// Failed AUTH attempts per client address: after `max_failures` within `lockout` of
/// each other, the address is locked out until `lockout` has passed since its last
/// failure.
#[derive(Debug)]
pub struct FailureGuard {
    settings: Mutex<(u32, Duration)>,
    clients: DashMap<IpAddr, Failures>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Past this many tracked addresses, expired entries are swept on the next failure, so
/// a scan from many addresses cannot grow the map without bound.
const SWEEP_AT: usize = 4096;

impl FailureGuard {
    /// A guard that locks an address out after `max_failures` for `lockout`.
    pub fn new(max_failures: u32, lockout: Duration) -> FailureGuard {
        FailureGuard {
            settings: Mutex::new((max_failures, lockout)),
            clients: DashMap::new(),
        }
    }

    /// New limits (reload); what was counted so far stays.
    pub fn set_limits(&self, max_failures: u32, lockout: Duration) {
        *self.settings.lock().expect("guard settings") = (max_failures, lockout);
    }

    fn limits(&self) -> (u32, Duration) {
        *self.settings.lock().expect("guard settings")
    }

    /// How long `client` stays locked out, if it is.
    pub fn locked_for(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let (max_failures, lockout) = self.limits();
        let failures = *self.clients.get(&client)?;
        let until = failures.last + lockout;
        (failures.count >= max_failures && now < until).then(|| until - now)
    }

    /// Count a failed attempt from `client`; true when it locks the address out.
    pub fn failed(&self, client: IpAddr, now: Instant) -> bool {
        let (max_failures, lockout) = self.limits();
        metrics::counter!(name::AUTH_FAILURES).increment(1);
        if self.clients.len() >= SWEEP_AT {
            self.clients.retain(|_, f| now < f.last + lockout);
        }
        let mut entry = self.clients.entry(client).or_insert(Failures {
            count: 0,
            last: now,
        });
        // Failures further apart than the lockout do not add up.
        if now >= entry.last + lockout {
            entry.count = 0;
        }
        entry.count += 1;
        entry.last = now;
        let locked = entry.count == max_failures;
        if locked {
            metrics::counter!(name::AUTH_LOCKOUTS).increment(1);
        }
        locked
    }

    /// A successful AUTH from `client` forgets its failures.
    pub fn succeeded(&self, client: IpAddr) {
        self.clients.remove(&client);
    }
}

/// One sending budget per user with a `rate_limit`, kept across reloads while the
/// user's rate stays the same.
#[derive(Debug, Default)]
pub struct UserBudgets {
    budgets: DashMap<String, (RateLimit, Arc<Budget>)>,
}

impl UserBudgets {
    /// The budget `user` sends from; `None` without a `rate_limit`.
    pub fn for_user(&self, user: &User) -> Option<Arc<Budget>> {
        let rate = user.rate_limit?;
        let mut entry = self
            .budgets
            .entry(user.name.clone())
            .or_insert_with(|| (rate, Arc::new(Budget::with_burst(rate))));
        if entry.0 != rate {
            *entry = (rate, Arc::new(Budget::with_burst(rate)));
        }
        Some(entry.1.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_is_locked_out_after_max_failures_until_the_lockout_passes() {
        let guard = FailureGuard::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let client = ip("192.0.2.7");
        assert!(!guard.failed(client, t0));
        assert!(!guard.failed(client, t0 + Duration::from_secs(1)));
        assert_eq!(guard.locked_for(client, t0 + Duration::from_secs(1)), None);
        assert!(guard.failed(client, t0 + Duration::from_secs(2)));
        assert_eq!(
            guard.locked_for(client, t0 + Duration::from_secs(12)),
            Some(Duration::from_secs(50))
        );
        // Another address is not affected.
        assert_eq!(guard.locked_for(ip("192.0.2.8"), t0), None);
        // After the lockout the address starts again from zero.
        let later = t0 + Duration::from_secs(62);
        assert_eq!(guard.locked_for(client, later), None);
        assert!(!guard.failed(client, later));
        assert_eq!(guard.locked_for(client, later), None);
    }

    #[test]
    fn failures_further_apart_than_the_lockout_do_not_add_up_and_success_forgets() {
        let guard = FailureGuard::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        let client = ip("2001:db8::1");
        assert!(!guard.failed(client, t0));
        assert!(!guard.failed(client, t0 + Duration::from_secs(11)));
        guard.succeeded(client);
        assert!(!guard.failed(client, t0 + Duration::from_secs(12)));
        assert!(guard.failed(client, t0 + Duration::from_secs(13)));
        // A reload with a larger limit applies to what was counted.
        guard.set_limits(5, Duration::from_secs(10));
        assert_eq!(guard.locked_for(client, t0 + Duration::from_secs(14)), None);
    }

    #[test]
    fn many_addresses_do_not_grow_the_guard_without_bound() {
        let guard = FailureGuard::new(5, Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..(SWEEP_AT as u32 + 10) {
            guard.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        guard.failed(ip("198.51.100.1"), t0 + Duration::from_secs(2));
        assert!(guard.clients.len() < 20, "{}", guard.clients.len());
    }

    #[test]
    fn a_users_budget_survives_a_reload_unless_its_rate_changes() {
        let budgets = UserBudgets::default();
        let mut user = User::new(
            "app",
            "secret",
            vec![crate::config::AddressGlob::parse("*@app.test").unwrap()],
            Some(RateLimit {
                count: 1,
                per: Duration::from_secs(3600),
            }),
        )
        .unwrap();
        let now = std::time::SystemTime::now();
        assert!(budgets.for_user(&user).unwrap().take(now).is_ok());
        assert!(budgets.for_user(&user).unwrap().take(now).is_err());
        user.rate_limit = Some(RateLimit {
            count: 2,
            per: Duration::from_secs(3600),
        });
        assert!(budgets.for_user(&user).unwrap().take(now).is_ok());
        user.rate_limit = None;
        assert!(budgets.for_user(&user).is_none());
    }
}
