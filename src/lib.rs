//! smarthost: a smart outbound SMTP relay.
//!
//! Apps on a trusted network hand it mail without credentials; smarthost makes every
//! message acceptable to strict providers and delivers it through a pool of upstreams.
//!
//! ```text
//!  client ─SMTP─▶ accept ──▶ Handoff ─┬─ queue mode:  queue ─▶ spool (fsync) ─▶ scheduler ─┐
//!                 (session,           │                                                  ├─▶ deliver ─▶ upstreams
//!                  normalize,         └─ passthrough: queue::Passthrough ────────────────┘   (failover, sender policy,
//!                  header rules,          (leftovers go to the spool)                         7-bit, DKIM, pool, TLS, OAuth)
//!                  Received)
//! ```
//!
//! | module | owns |
//! | --- | --- |
//! | [`proto`] | sans-I/O SMTP: command parser, replies, addresses, DATA framing, client-side reply parser, PROXY header |
//! | [`accept`] | stage 1: listener, connection limits, the session state machine ([`accept::phase`]) and its driver; hands each message over through [`accept::Handoff`] |
//! | [`spool`] | stage 2: the durable journal (group commit, recovery, quarantine), per-recipient state, `ctl/` requests from the `queue` command |
//! | [`transform`] | stage 3: pure rewrites: the header block, From/Sender/Reply-To and the `[[header_rule]]`s at acceptance, the upstream's `sender` policy, 7-bit conversion and DKIM at delivery |
//! | [`queue`] | between spool and delivery: the scheduler (retries, bounces, outcomes the disk cannot take yet, disk guard, `queue` requests), the passthrough hand-off, and `drain` (the queue handed to another relay) |
//! | [`deliver`] | stage 4: the walk over the upstreams, the SMTP client, connection pools, circuit breakers, rate budgets, OAuth tokens, Maildir |
//! | [`cluster`] | what several replicas share through a Redis-protocol store: upstream budgets, the live replicas |
//! | [`config`] | typed configuration: layering, environment, validation per section, provider presets |
//! | [`ops`] | what operators run: `check`, `queue`, `dkim`, `oauth login`, `route`, `send`, `user`, and the HTTP endpoint (status page, metrics, health) |
//! | [`relay`] | wiring the stages together, reload, graceful shutdown |
//! | [`message`] | what flows between stages: queue id, envelope, content |
//! | [`telemetry`] | metric names and descriptions, and the recent activity the status page shows: a leaf every stage records to |
//! | [`tls`] | rustls set-up from PEM files, shared by SMTP and HTTPS |
//!
//! In queue mode a client hears `250` only once the message is fsync'd in the spool; in
//! passthrough mode only once an upstream accepted it (recipients left over then go to
//! the spool). See `docs/` for the user-facing behaviour.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod accept;
pub mod cluster;
pub mod config;
pub mod deliver;
pub mod message;
pub mod ops;
pub mod proto;
pub mod queue;
pub mod relay;
pub mod spool;
pub mod telemetry;
pub mod tls;
pub mod transform;

pub use relay::{RelayHandle, StartError, start};
