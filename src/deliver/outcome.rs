//! Why an upstream attempt failed, whose fault it is, and what to do about it.
//!
//! Every [`Failure`] knows its [`Scope`] (the upstream as a whole, which feeds the circuit
//! breaker and moves on to the next upstream, or this one message) and can explain
//! itself with the fix ([`Failure::diagnosis`]), for `smarthost check`, the logs and the
//! `451` text a client sees in passthrough mode.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio_rustls::rustls;

use crate::config::TlsMode;
use crate::deliver::client::ClientError;
use crate::proto::{Enhanced, Response};

/// A step of the conversation with an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Resolving the host name.
    Dns,
    /// Opening the TCP connection.
    Connect,
    /// The TLS handshake.
    Tls,
    /// Waiting for the `220` greeting.
    Greeting,
    /// EHLO.
    Ehlo,
    /// STARTTLS.
    StartTls,
    /// AUTH.
    Auth,
    /// MAIL, RCPT, DATA.
    Transaction,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Dns => "DNS lookup",
            Stage::Connect => "TCP connect",
            Stage::Tls => "TLS handshake",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Transaction => "mail transaction",
        })
    }
}

/// What went wrong with a TLS handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsProblem {
    /// The server answered with something that is not TLS (a plaintext SMTP banner).
    NotTls,
    /// The certificate does not name the host we connected to.
    WrongName,
    /// The certificate chain ends in a CA we do not trust.
    UnknownIssuer,
    /// The certificate has expired (or is not valid yet).
    Expired,
    /// The server presents a self-signed CA certificate as its own certificate.
    SelfSigned,
    /// The server closed the connection during the handshake.
    Closed,
    /// Anything else rustls reports.
    Other(String),
}

/// Whose problem a failure is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The upstream as a whole is unusable now: count it for its circuit breaker, try
    /// the next upstream.
    Upstream,
    /// Only this message is affected (the upstream refused it, or cannot take it).
    Message,
}

/// One failed attempt at an upstream.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The host name does not resolve.
    #[error("cannot resolve {host}: {detail}")]
    Dns {
        /// The host.
        host: String,
        /// The resolver's message.
        detail: String,
    },
    /// No TCP connection could be made.
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        /// The last address tried.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// A step took too long.
    #[error("{stage}: no answer within {after:?}")]
    Timeout {
        /// The step.
        stage: Stage,
        /// The limit.
        after: Duration,
    },
    /// The server stopped reading: a write made no progress for the limit.
    #[error("{stage}: the server stopped reading; nothing could be written for {after:?}")]
    Stalled {
        /// The step.
        stage: Stage,
        /// The limit.
        after: Duration,
    },
    /// The whole message was sent, and its end was not answered in time.
    #[error("no reply to the end of the message data within {after:?}")]
    FinalReplyTimeout {
        /// The limit (`data_timeout`).
        after: Duration,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {detail}")]
    Tls {
        /// What kind of failure.
        problem: TlsProblem,
        /// rustls' words.
        detail: String,
    },
    /// The server closed the connection.
    #[error("{stage}: the server closed the connection")]
    Closed {
        /// The step.
        stage: Stage,
    },
    /// The server does not speak SMTP as expected.
    #[error("{stage}: protocol error: {detail}")]
    Protocol {
        /// The step.
        stage: Stage,
        /// What was wrong.
        detail: String,
    },
    /// A socket error after the connection was made.
    #[error("{stage}: connection error: {error}")]
    Io {
        /// The step.
        stage: Stage,
        /// The error.
        error: std::io::Error,
    },
    /// The greeting was not `220`.
    #[error("the server refused the connection: {0}")]
    Greeting(Response),
    /// STARTTLS is required (`smtp://`, `tls=starttls`) and the server does not offer it.
    #[error("STARTTLS is required but the server does not offer it")]
    MissingStartTls,
    /// Credentials are configured, the connection is not encrypted, and plaintext AUTH
    /// is not allowed.
    #[error("refusing to send credentials over an unencrypted connection")]
    PlaintextAuth,
    /// Credentials are configured but no mechanism we know is offered.
    #[error("no common AUTH mechanism (server offers: {offered})")]
    NoAuthMechanism {
        /// The server's AUTH line, or "none".
        offered: String,
    },
    /// The server refused our credentials.
    #[error("authentication failed: {0}")]
    AuthRejected(Response),
    /// The server refused a command of the session set-up (EHLO and HELO, STARTTLS).
    /// That is about this relay or the upstream, never about the message: another
    /// upstream may take it, even when the code is 5xx.
    #[error("the server refused {stage}: {response}")]
    SessionRefused {
        /// The step.
        stage: Stage,
        /// The reply.
        response: Response,
    },
    /// A reply to MAIL, RCPT or DATA that refuses the whole transaction.
    #[error("{command}: {response}")]
    Refused {
        /// What was refused.
        command: String,
        /// The reply.
        response: Response,
    },
    /// This upstream cannot take this message (size, 8BITMIME, SMTPUTF8); another may.
    #[error("{0}")]
    Unsuitable(Unsuitable),
    /// Every connection slot of the upstream stayed busy.
    #[error("all {0} connections to this upstream are busy")]
    Busy(usize),
    /// The queue could not record the recipients accepted so far, so the attempt ends
    /// before its next transaction (nothing more is sent that a crash could make us send
    /// again). About this relay, not the upstream nor the message.
    #[error("stopped before the next transaction: {0}")]
    Unrecorded(String),
    /// The message's own content could not be read (its spool body file): nothing
    /// about the upstream; the message is tried again later.
    #[error("{0}")]
    Content(String),
    /// The OAuth token file could not be read.
    #[error("cannot read oauth_token_file: {0}")]
    TokenFile(std::io::Error),
    /// No OAuth access token could be had from the token endpoint.
    #[error("OAuth: {error}")]
    OAuth {
        /// The upstream (for the fix, which names `oauth login --upstream NAME`).
        upstream: String,
        /// What the endpoint said.
        error: crate::deliver::oauth::OAuthError,
    },
}

impl Failure {
    /// Translate a client error at `stage`.
    pub fn from_client(stage: Stage, error: ClientError) -> Failure {
        match error {
            ClientError::Io(e) if stage == Stage::Tls || stage == Stage::StartTls => tls_failure(e),
            ClientError::Io(error) => Failure::Io { stage, error },
            ClientError::Closed if stage == Stage::Tls => Failure::Tls {
                problem: TlsProblem::Closed,
                detail: "the server closed the connection".into(),
            },
            ClientError::Closed => Failure::Closed { stage },
            ClientError::Timeout(after) => Failure::Timeout { stage, after },
            ClientError::WriteStalled(after) => Failure::Stalled { stage, after },
            ClientError::FinalReplyTimeout(after) => Failure::FinalReplyTimeout { after },
            ClientError::Protocol(e) => Failure::Protocol {
                stage,
                detail: e.to_string(),
            },
            e @ ClientError::DataAfterStartTls => Failure::Protocol {
                stage,
                detail: e.to_string(),
            },
            ClientError::Refused { response, .. } if stage == Stage::Greeting => {
                Failure::Greeting(response)
            }
            ClientError::Refused { response, .. } if stage == Stage::Auth => {
                Failure::AuthRejected(response)
            }
            ClientError::Refused { response, .. } if stage != Stage::Transaction => {
                Failure::SessionRefused { stage, response }
            }
            ClientError::Refused { command, response } => Failure::Refused { command, response },
            ClientError::Content(detail) => Failure::Content(detail),
        }
    }

    /// Whether this failure is about the upstream or only about this message.
    pub fn scope(&self) -> Scope {
        match self {
            Failure::Refused { response, .. } if response.code == 421 => Scope::Upstream,
            Failure::Refused { .. }
            | Failure::Unsuitable(_)
            | Failure::Busy(_)
            | Failure::Unrecorded(_)
            | Failure::Content(_) => Scope::Message,
            _ => Scope::Upstream,
        }
    }

    /// Whether retrying (here or elsewhere) cannot help.
    pub fn is_permanent(&self) -> bool {
        match self {
            Failure::Refused { response, .. } => {
                response.is_permanent()
                    && !is_throttling(response)
                    && !is_too_many_recipients(response)
            }
            _ => false,
        }
    }

    /// The fix, in one or two sentences, for the operator. `url` describes the upstream
    /// as configured.
    pub fn diagnosis(&self, host: &str, port: u16, mode: TlsMode) -> Option<String> {
        let text = match self {
            Failure::Dns { .. } => format!("check the host name {host:?} in the upstream URL and this machine's DNS resolver"),
            Failure::Connect { error, .. } => match error.kind() {
                std::io::ErrorKind::ConnectionRefused => format!(
                    "nothing listens on {host}:{port}: check the port (465 for smtps://, 587 for smtp://) and that the server is up"
                ),
                _ => format!("{host}:{port} is not reachable from here: check firewalls and outbound port {port} (many clouds block port 25)"),
            },
            Failure::Timeout { stage: Stage::Connect, .. } => {
                format!("no answer from {host}:{port}: a firewall may drop outbound port {port}, or the host is down")
            }
            Failure::Timeout { stage: Stage::Greeting, .. } if mode != TlsMode::Implicit => format!(
                "the server sent no greeting: it probably expects TLS from the first byte (implicit TLS); use smtps://{host}:{port}"
            ),
            Failure::Timeout { .. } => "the server is too slow or stalled; try again, or raise the upstream's timeout".into(),
            Failure::Stalled { .. } => {
                "the server stopped reading what the relay sent (an overloaded or stalled server, or a middlebox holding the connection); the message is retried, on another upstream if there is one".into()
            }
            Failure::FinalReplyTimeout { after } => format!(
                "the server received the whole message but did not confirm it within {}; it may still deliver it, so the retry can arrive twice: raise the upstream's data_timeout if this server is slow",
                humantime_short(*after)
            ),
            Failure::Tls { problem: TlsProblem::NotTls, .. } => format!(
                "the server answered in plaintext: port {port} speaks SMTP first and upgrades with STARTTLS; use smtp://{host}:{port}"
            ),
            Failure::Tls { problem: TlsProblem::WrongName, .. } => format!(
                "the server's certificate is not valid for {host:?}: use the host name the provider documents (the one in its certificate)"
            ),
            Failure::Tls { problem: TlsProblem::UnknownIssuer, .. } => {
                "the certificate is signed by a CA this relay does not trust: set ca_file to the CA certificate (PEM), or tls_verify = false for testing only".into()
            }
            Failure::Tls { problem: TlsProblem::SelfSigned, .. } => {
                "the server presents a self-signed certificate: set ca_file to that certificate (PEM) to trust exactly it; tls_verify = false for testing only".into()
            }
            Failure::Tls { problem: TlsProblem::Expired, .. } => {
                "the server's certificate has expired (or the clock of this machine is wrong): tell the provider, or check the clock".into()
            }
            Failure::Tls { problem: TlsProblem::Closed, .. } if mode == TlsMode::Implicit => format!(
                "the server closed the connection during the TLS handshake: port {port} may not speak implicit TLS; try smtp://{host}:{port}"
            ),
            Failure::Tls { .. } => "the TLS handshake failed: check the port and TLS mode of the upstream URL".into(),
            Failure::MissingStartTls => format!(
                "the server does not offer STARTTLS on port {port}: use smtps://{host}:465 if it offers implicit TLS; only if you accept sending mail and credentials in the clear, add ?tls=opportunistic"
            ),
            Failure::PlaintextAuth => {
                "credentials would cross the network unencrypted: use smtps:// or smtp:// (STARTTLS); set allow_plaintext_auth = true only for a trusted local server".into()
            }
            Failure::NoAuthMechanism { offered } if offered == "none" => {
                "the server offers no AUTH: remove username/password, or check that TLS is active (many servers offer AUTH only after STARTTLS)".into()
            }
            Failure::NoAuthMechanism { .. } => "the server offers no mechanism smarthost speaks (PLAIN, LOGIN, XOAUTH2)".into(),
            Failure::AuthRejected(response) if is_basic_auth_off(response) => BASIC_AUTH_OFF.into(),
            Failure::Refused { response, .. } if is_basic_auth_off(response) => BASIC_AUTH_OFF.into(),
            Failure::AuthRejected(_) => {
                "the username or password is wrong, or the account needs an app password / SMTP access enabled at the provider".into()
            }
            Failure::OAuth { upstream, error } => error.fix(upstream),
            Failure::SessionRefused { stage: Stage::StartTls, .. } => format!(
                "the server offers STARTTLS but refuses it: tell the provider, or use smtps://{host}:465 if it offers implicit TLS"
            ),
            Failure::SessionRefused { .. } => {
                "the server refuses this relay's EHLO/HELO: set helo_name on the upstream (or server.hostname) to a fully qualified name that resolves to this machine".into()
            }
            Failure::Refused { response, .. } if looks_like_sender_mismatch(response) => {
                "the provider requires the From address to be the account: set sender = \"<account address>\" on this upstream".into()
            }
            Failure::Greeting(_) | Failure::Closed { .. } | Failure::Protocol { .. } | Failure::Io { .. } => return None,
            Failure::Refused { .. } | Failure::Unsuitable(_) | Failure::Busy(_) | Failure::TokenFile(_) | Failure::Unrecorded(_) | Failure::Content(_) => return None,
        };
        Some(text)
    }
}

/// Why an upstream cannot take a message, with the enhanced status code (RFC 3463) that
/// names the cause when no upstream can.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsuitable {
    /// Bigger than the upstream's SIZE limit.
    #[error("message of {size} octets exceeds the upstream's SIZE limit of {limit}")]
    TooBig {
        /// The message.
        size: u64,
        /// The upstream's limit.
        limit: u64,
    },
    /// The envelope needs SMTPUTF8 (RFC 6531), which the upstream does not offer.
    #[error("the message needs SMTPUTF8, which the upstream does not offer")]
    NeedsSmtpUtf8,
    /// 8-bit content that cannot be converted to 7 bits, and no 8BITMIME upstream.
    #[error("{0}")]
    NeedsConversion(String),
}

impl Unsuitable {
    /// The SMTP reply code and enhanced status code of a refusal for this reason:
    /// `552 5.3.4` (too big), `554 5.6.7` (SMTPUTF8 needed), `554 5.6.3` (conversion
    /// required but not possible).
    pub fn status(&self) -> (u16, Enhanced) {
        match self {
            Unsuitable::TooBig { .. } => (552, Enhanced(5, 3, 4)),
            Unsuitable::NeedsSmtpUtf8 => (554, Enhanced(5, 6, 7)),
            Unsuitable::NeedsConversion(_) => (554, Enhanced(5, 6, 3)),
        }
    }
}

/// The fix when Microsoft refuses password AUTH for the tenant.
const BASIC_AUTH_OFF: &str = "basic auth is off for this tenant (Microsoft switches off password SMTP AUTH): configure [upstream.oauth] (see docs/configuration.md, Microsoft 365 with OAuth)";

/// Microsoft's answers when password SMTP AUTH is switched off: `550 5.7.30 Basic
/// authentication is not supported for Client Submission`, `535 5.7.139 ...
/// SmtpClientAuthentication is disabled for the Tenant`.
fn is_basic_auth_off(response: &Response) -> bool {
    let text = response.to_string();
    text.contains("5.7.30")
        || text.contains("5.7.139")
        || text.contains("SmtpClientAuthentication is disabled")
        || text.contains("Basic authentication is not supported")
}

/// `10m`, `90s`: a limit as the configuration writes it.
fn humantime_short(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// A refusal that means "you are sending too much", not "this message is bad": it is
/// retried later instead of bounced, whatever its code (providers use 5xx for quotas).
pub fn is_throttling(response: &Response) -> bool {
    let text = response.text().to_ascii_lowercase();
    [
        "quota",
        "rate limit",
        "ratelimit",
        "too many messages",
        "sending limit",
        "exceeded the maximum",
        "try again later",
        "throttl",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// A refusal of a recipient that only means "no more recipients in this transaction"
/// (RFC 5321 §4.5.3.1.10): `452` (`4.5.3`, or without an enhanced code, which is the
/// RFC's own wording), or a `552` that says too many recipients (`5.5.3`, or the words):
/// old servers used 552, and the RFC asks clients to take it as temporary. The
/// recipients that got it are sent in the next transaction; they are never bounced for
/// it. A `452 4.2.2` (mailbox full) or `452 4.3.1` (no storage) is not this.
pub fn is_too_many_recipients(response: &Response) -> bool {
    if !matches!(response.code, 452 | 552) {
        return false;
    }
    let text = response.text();
    let enhanced = text.split_whitespace().next().filter(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    });
    let lower = text.to_ascii_lowercase();
    let says_so = lower.contains("too many recipients")
        || lower.contains("too many rcpt")
        || lower.contains("recipient limit");
    match enhanced {
        Some(code) => code.ends_with(".5.3") || says_so,
        None => response.code == 452 || says_so,
    }
}

/// Providers' wordings for "From must be the authenticated account".
fn looks_like_sender_mismatch(response: &Response) -> bool {
    let text = response.text().to_ascii_lowercase();
    [
        "mail from address must be same as authorization user",
        "sender address rejected: not owned by",
        "sendasdenied",
        "not authorized to send as",
        "from address is not",
        "envelope sender",
        "does not match",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// Classify a TLS handshake error.
fn tls_failure(error: std::io::Error) -> Failure {
    use rustls::CertificateError as C;
    let detail = error.to_string();
    let problem = match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidMessage(_)) => TlsProblem::NotTls,
        Some(rustls::Error::InvalidCertificate(cert)) => match cert {
            C::NotValidForName | C::NotValidForNameContext { .. } => TlsProblem::WrongName,
            C::UnknownIssuer => TlsProblem::UnknownIssuer,
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => TlsProblem::Expired,
            other if format!("{other:?}").contains("CaUsedAsEndEntity") => TlsProblem::SelfSigned,
            other => TlsProblem::Other(format!("{other:?}")),
        },
        Some(other) => TlsProblem::Other(other.to_string()),
        None if error.kind() == std::io::ErrorKind::UnexpectedEof => TlsProblem::Closed,
        None if error.kind() == std::io::ErrorKind::ConnectionReset => TlsProblem::Closed,
        None => TlsProblem::Other(detail.clone()),
    };
    Failure::Tls { problem, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, text: &str) -> Response {
        Response {
            code,
            lines: vec![text.into()],
        }
    }

    #[test]
    fn microsoft_switching_off_basic_auth_is_named() {
        let fix = |f: Failure| {
            f.diagnosis("smtp.office365.com", 587, TlsMode::StartTls)
                .unwrap()
        };
        let submission = Failure::Refused {
            command: "MAIL".into(),
            response: reply(
                550,
                "5.7.30 Basic authentication is not supported for Client Submission.",
            ),
        };
        assert!(fix(submission).starts_with("basic auth is off for this tenant"));
        let auth = Failure::AuthRejected(reply(
            535,
            "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
        ));
        assert!(fix(auth).contains("configure [upstream.oauth]"));
        let wrong_password = Failure::AuthRejected(reply(535, "5.7.3 Authentication unsuccessful"));
        assert!(fix(wrong_password).starts_with("the username or password is wrong"));
    }

    #[test]
    fn scopes_and_permanence() {
        let refused = |code| Failure::Refused {
            command: "MAIL".into(),
            response: reply(code, "x"),
        };
        assert_eq!(refused(421).scope(), Scope::Upstream);
        assert_eq!(refused(451).scope(), Scope::Message);
        assert!(!refused(451).is_permanent());
        assert!(refused(550).is_permanent());
        assert_eq!(Failure::MissingStartTls.scope(), Scope::Upstream);
        assert_eq!(
            Failure::AuthRejected(reply(535, "bad")).scope(),
            Scope::Upstream
        );
        assert!(!Failure::AuthRejected(reply(535, "bad")).is_permanent());
        let setup = Failure::from_client(
            Stage::StartTls,
            ClientError::Refused {
                command: "STARTTLS".into(),
                response: reply(554, "5.7.3 TLS not available"),
            },
        );
        assert_eq!(setup.scope(), Scope::Upstream);
        assert!(!setup.is_permanent());
    }

    #[test]
    fn too_many_recipients_is_recognised_and_nothing_else() {
        for (code, text) in [
            (452, "4.5.3 Too many recipients"),
            (452, "Too many recipients"),
            (452, "4.5.3 Your message has too many recipients."),
            (552, "5.5.3 Too many recipients"),
            (552, "Too many recipients"),
            (552, "5.5.3 Recipient limit exceeded"),
            (452, "4.3.1 too many recipients in this transaction"),
        ] {
            assert!(is_too_many_recipients(&reply(code, text)), "{code} {text}");
        }
        for (code, text) in [
            (
                452,
                "4.2.2 The email account that you tried to reach is over quota",
            ),
            (452, "4.3.1 Insufficient system storage"),
            (552, "5.3.4 Message too big"),
            (552, "5.2.2 Mailbox full"),
            (550, "5.5.3 Too many recipients"),
            (451, "4.5.3 Too many recipients"),
        ] {
            assert!(!is_too_many_recipients(&reply(code, text)), "{code} {text}");
        }
        let too_many = Failure::Refused {
            command: "RCPT".into(),
            response: reply(552, "5.5.3 Too many recipients"),
        };
        assert!(!too_many.is_permanent());
    }

    #[test]
    fn diagnoses_name_the_fix() {
        let d = |f: Failure, mode| f.diagnosis("smtp.example.com", 465, mode).unwrap();
        assert!(
            d(Failure::MissingStartTls, TlsMode::StartTls)
                .contains("use smtps://smtp.example.com:465")
        );
        let not_tls = Failure::Tls {
            problem: TlsProblem::NotTls,
            detail: String::new(),
        };
        assert!(d(not_tls, TlsMode::Implicit).contains("use smtp://smtp.example.com:465"));
        let silent = Failure::Timeout {
            stage: Stage::Greeting,
            after: Duration::from_secs(1),
        };
        assert!(d(silent, TlsMode::StartTls).contains("use smtps://"));
        let mismatch = Failure::Refused {
            command: "MAIL FROM".into(),
            response: reply(
                501,
                "5.7.1 Mail from address must be same as authorization user",
            ),
        };
        assert!(d(mismatch, TlsMode::Implicit).contains("sender ="));
    }
}
