//! smarthost: a smart outbound SMTP relay.
//!
//! Apps on a trusted network hand it mail without credentials; smarthost makes every
//! message acceptable to strict providers and delivers it through a pool of upstreams.
//!
//! ```text
//!   client ──SMTP──▶ accept ──▶ spool ──▶ transform ──▶ deliver ──▶ upstream
//!                    (server)   (durable)  (From, DKIM)  (pool, TLS)  (smtps/smtp/maildir)
//! ```
//!
//! | module | owns |
//! | --- | --- |
//! | [`proto`] | sans-I/O SMTP: command parser, replies, addresses, DATA framing, client-side reply parser |
//! | [`accept`] | stage 1: listener, connection limits, the session state machine and its driver |
//! | [`transform`] | stage 3: pure rewrites of the message (trace headers today) |
//! | [`deliver`] | stage 4: upstreams (Maildir today) and the SMTP client |
//! | [`config`] | typed configuration: layering, environment, validation |
//! | [`relay`] | wiring the stages together, graceful shutdown |
//! | [`message`] | what flows between stages: queue id, envelope, content |
//! | [`tls`] | rustls set-up from PEM files |
//!
//! The durable spool (stage 2) sits between accept and deliver behind the
//! [`accept::Handoff`] interface; until it lands, messages are delivered while the
//! client waits, and `250` is sent only once the upstream has the message.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod accept;
pub mod config;
pub mod deliver;
pub mod message;
pub mod ops;
pub mod proto;
pub mod relay;
pub mod spool;
pub mod tls;
pub mod transform;

pub use relay::{RelayHandle, StartError, start};
