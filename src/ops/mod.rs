//! Operator commands behind the CLI: `send` and `check`.

pub mod check;
pub mod dkim;
pub mod send;
