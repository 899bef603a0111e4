//! Stage 3: rewrites of the message itself. Pure functions; the clock is a parameter.
//!
//! For now this holds the trace header every hop adds and the header scan used for loop
//! detection; the From normalisation and DKIM signing live here as well once they land.

pub mod headers;
pub mod trace;
