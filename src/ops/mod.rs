//! Operator commands behind the CLI: `send`, `check`, `queue`, `dkim`, `oauth`,
//! `route`, `user`.

pub mod check;
pub mod dkim;
pub mod metrics;
pub mod oauth;
pub mod queue;
pub mod route;
pub mod send;
pub mod status;
pub mod user;
