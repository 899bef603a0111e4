//! Operator commands behind the CLI: `send`, `check`, `queue`.

pub mod check;
pub mod dkim;
pub mod metrics;
pub mod queue;
pub mod send;
