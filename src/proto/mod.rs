//! Sans-I/O SMTP: commands, replies, envelope addresses and message data framing.
//!
//! Nothing in here touches a socket or a tokio type. The server side (`accept`) and the
//! client side (`deliver`) both drive these pieces with bytes they read and write
//! themselves, so every rule can be tested with plain tables.

pub mod address;
pub mod auth;
pub mod command;
pub mod dot;
pub mod proxy;
pub mod reply;
pub mod response;

pub use address::{Address, AddressError, ReversePath};
pub use auth::{AuthCommand, AuthError, Credentials, Exchange, Mechanism, Step, parse_auth};
pub use command::{AuthArgs, Body, Command, MailParams, SyntaxError, parse_command};
pub use dot::{DataReader, Framing, encode_data, encode_lines, line_pieces};
pub use reply::{Enhanced, Reply};
pub use response::{Capabilities, Response, ResponseError, parse_response};

/// Longest command line accepted, line ending included. RFC 5321 §4.5.3.1.4 sets 512
/// octets as the minimum a server must accept; ESMTP parameters make real lines longer.
pub const MAX_COMMAND_LINE: usize = 4096;
