//! The server side of SMTP AUTH (RFC 4954) for the PLAIN (RFC 4616) and LOGIN
//! mechanisms, sans-I/O.
//!
//! [`parse_auth`] reads the arguments of the `AUTH` command; [`Exchange`] is the state
//! machine of the SASL exchange that follows: [`Exchange::start`] with the mechanism and
//! the optional initial response, then [`Exchange::on_line`] with every line the client
//! sends, until a [`Step::Done`] with the [`Credentials`] or a [`Step::Failed`]. Checking
//! the password (and answering `535 5.7.8` when it is wrong) is the caller's business.

use std::fmt;

use base64::prelude::{BASE64_STANDARD, Engine as _};

use super::reply::{Enhanced, Reply};

/// Longest response line accepted, line ending excluded; also the longest initial
/// response. RFC 4954 §4 asks servers to accept at least 12288 octets.
pub const MAX_RESPONSE_LINE: usize = 12_288;

/// The SASL mechanisms this server offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// `PLAIN` (RFC 4616): one message `[authzid] NUL authcid NUL passwd`.
    Plain,
    /// `LOGIN`: user name, then password, each after its own challenge.
    Login,
}

impl Mechanism {
    /// The name as advertised in the EHLO reply.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

/// A parsed `AUTH` command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthCommand {
    /// The mechanism the client asked for.
    pub mechanism: Mechanism,
    /// The initial response as sent (base64, or `=` for an empty one), if any.
    pub initial: Option<String>,
}

/// Why an `AUTH` command or an exchange failed; each variant knows its reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No mechanism, or more than mechanism and initial response.
    #[error("syntax is AUTH mechanism [initial-response]; use AUTH PLAIN or AUTH LOGIN")]
    Arguments,
    /// A mechanism we do not offer (the name is kept for the log, never echoed).
    #[error("unsupported authentication mechanism; use PLAIN or LOGIN")]
    UnknownMechanism(String),
    /// The client answered a challenge with `*` (RFC 4954 §4).
    #[error("authentication cancelled by the client")]
    Cancelled,
    /// A response that is not strict base64 (RFC 4648 alphabet, canonical padding).
    #[error("response is not valid base64; send the credentials base64-encoded")]
    Base64,
    /// A decoded response of the wrong shape.
    #[error("{0}")]
    Malformed(&'static str),
    /// A PLAIN authorization identity other than empty or the user's own.
    #[error("authorization identity must be empty or the user's own")]
    ForeignAuthzid,
    /// A user name, authorization identity or password that is not UTF-8.
    #[error("user names and passwords must be UTF-8")]
    Encoding,
    /// A response line longer than [`MAX_RESPONSE_LINE`].
    #[error("authentication line too long; at most 12288 octets are accepted")]
    LineTooLong,
    /// A line after the exchange had already ended (a caller bug, not a client's).
    #[error("no authentication exchange in progress; send AUTH first")]
    NotInProgress,
}

impl AuthError {
    /// The reply for this error (RFC 4954 §4 and §6, RFC 3463 for the enhanced codes).
    pub fn reply(&self) -> Reply {
        let text = self.to_string();
        match self {
            AuthError::Arguments => Reply::new(501, Enhanced(5, 5, 4), text),
            AuthError::UnknownMechanism(_) => Reply::new(504, Enhanced(5, 5, 4), text),
            AuthError::Cancelled => Reply::new(501, Enhanced(5, 7, 0), text),
            AuthError::Base64
            | AuthError::Malformed(_)
            | AuthError::ForeignAuthzid
            | AuthError::Encoding => Reply::new(501, Enhanced(5, 5, 2), text),
            AuthError::LineTooLong => Reply::new(500, Enhanced(5, 5, 6), text),
            AuthError::NotInProgress => {
                Reply::bad_sequence("no authentication exchange in progress; send AUTH first")
            }
        }
    }
}

/// Parse the arguments of `AUTH` (what follows the verb): a mechanism name in any case
/// and an optional initial response.
pub fn parse_auth(args: &str) -> Result<AuthCommand, AuthError> {
    let mut words = args.split([' ', '\t']).filter(|w| !w.is_empty());
    let name = words.next().ok_or(AuthError::Arguments)?;
    let initial = words.next().map(str::to_owned);
    if words.next().is_some() {
        return Err(AuthError::Arguments);
    }
    let mechanism = if name.eq_ignore_ascii_case("PLAIN") {
        Mechanism::Plain
    } else if name.eq_ignore_ascii_case("LOGIN") {
        Mechanism::Login
    } else {
        return Err(AuthError::UnknownMechanism(name.to_owned()));
    };
    Ok(AuthCommand { mechanism, initial })
}

/// What a successful exchange yields. `Debug` never shows the password, and the
/// password's memory is overwritten when the value is dropped.
pub struct Credentials {
    authcid: String,
    password: String,
    authzid: Option<String>,
}

impl Credentials {
    /// The user name (authentication identity).
    pub fn authcid(&self) -> &str {
        &self.authcid
    }

    /// The password, for the one place that verifies it.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The authorization identity, when the client sent one (always equal to
    /// [`Credentials::authcid`]: any other is refused).
    pub fn authzid(&self) -> Option<&str> {
        self.authzid.as_deref()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("authcid", &self.authcid)
            .field("password", &"<redacted>")
            .field("authzid", &self.authzid)
            .finish()
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        wipe(std::mem::take(&mut self.password).into_bytes());
    }
}

/// Overwrite a buffer that held a secret before freeing it.
fn wipe(mut bytes: Vec<u8>) {
    bytes.fill(0);
    std::hint::black_box(&bytes);
}

/// The state of one SASL exchange.
#[derive(Clone, PartialEq, Eq)]
pub enum Exchange {
    /// PLAIN, after the empty challenge: waiting for the whole message.
    Plain,
    /// LOGIN, after `Username:`.
    LoginUser,
    /// LOGIN, after `Password:`, with the user name already received.
    LoginPassword {
        /// The user name from the first response.
        authcid: String,
    },
    /// The exchange ended (done or failed); further lines are a caller error.
    Finished,
}

impl fmt::Debug for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exchange::Plain => f.write_str("Plain"),
            Exchange::LoginUser => f.write_str("LoginUser"),
            Exchange::LoginPassword { authcid } => f
                .debug_struct("LoginPassword")
                .field("authcid", authcid)
                .finish(),
            Exchange::Finished => f.write_str("Finished"),
        }
    }
}

/// What the server does next.
#[derive(Debug)]
pub enum Step {
    /// Send `334 <text>` (the text is base64, possibly empty) and read one more line.
    Challenge(&'static str),
    /// The exchange succeeded; verify these credentials.
    Done(Credentials),
    /// The exchange failed; send [`AuthError::reply`].
    Failed(AuthError),
}

impl Step {
    /// The reply to send for a challenge or a failure; `None` for [`Step::Done`], whose
    /// reply (`235` or `535`) depends on the verification.
    pub fn reply(&self) -> Option<Reply> {
        match self {
            Step::Challenge(text) => Some(Reply::plain(334, *text)),
            Step::Done(_) => None,
            Step::Failed(err) => Some(err.reply()),
        }
    }
}

/// `Username:` in base64.
const LOGIN_USER: &str = "VXNlcm5hbWU6";
/// `Password:` in base64.
const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

impl Exchange {
    /// Begin an exchange. `initial` is the initial response of the `AUTH` command as
    /// sent: base64, or `=` for an empty response (RFC 4954 §4).
    pub fn start(mechanism: Mechanism, initial: Option<&str>) -> (Exchange, Step) {
        let Some(initial) = initial else {
            return match mechanism {
                Mechanism::Plain => (Exchange::Plain, Step::Challenge("")),
                Mechanism::Login => (Exchange::LoginUser, Step::Challenge(LOGIN_USER)),
            };
        };
        let decoded = if initial == "=" {
            Ok(Vec::new())
        } else {
            decode(initial.as_bytes())
        };
        match decoded {
            Ok(bytes) => Exchange::respond(mechanism_state(mechanism), bytes),
            Err(err) => failed(err),
        }
    }

    /// Feed one line from the client (without its line ending).
    pub fn on_line(self, line: &[u8]) -> (Exchange, Step) {
        if self == Exchange::Finished {
            return failed(AuthError::NotInProgress);
        }
        if line == b"*" {
            return failed(AuthError::Cancelled);
        }
        match decode(line) {
            Ok(bytes) => self.respond(bytes),
            Err(err) => failed(err),
        }
    }

    /// Take one decoded response in this state.
    fn respond(self, bytes: Vec<u8>) -> (Exchange, Step) {
        match self {
            Exchange::Plain => match plain(&bytes) {
                Ok(credentials) => {
                    wipe(bytes);
                    (Exchange::Finished, Step::Done(credentials))
                }
                Err(err) => {
                    wipe(bytes);
                    failed(err)
                }
            },
            Exchange::LoginUser => match login_field(bytes, "user name") {
                Ok(authcid) => (
                    Exchange::LoginPassword { authcid },
                    Step::Challenge(LOGIN_PASSWORD),
                ),
                Err(err) => failed(err),
            },
            Exchange::LoginPassword { authcid } => match login_field(bytes, "password") {
                Ok(password) => (
                    Exchange::Finished,
                    Step::Done(Credentials {
                        authcid,
                        password,
                        authzid: None,
                    }),
                ),
                Err(err) => failed(err),
            },
            Exchange::Finished => failed(AuthError::NotInProgress),
        }
    }
}

/// The state that takes a mechanism's first response.
fn mechanism_state(mechanism: Mechanism) -> Exchange {
    match mechanism {
        Mechanism::Plain => Exchange::Plain,
        Mechanism::Login => Exchange::LoginUser,
    }
}

fn failed(err: AuthError) -> (Exchange, Step) {
    (Exchange::Finished, Step::Failed(err))
}

/// Strict base64 of one line, within the length limit.
fn decode(line: &[u8]) -> Result<Vec<u8>, AuthError> {
    if line.len() > MAX_RESPONSE_LINE {
        return Err(AuthError::LineTooLong);
    }
    BASE64_STANDARD.decode(line).map_err(|_| AuthError::Base64)
}

/// Split a PLAIN message `[authzid] NUL authcid NUL passwd` (RFC 4616 §2).
fn plain(bytes: &[u8]) -> Result<Credentials, AuthError> {
    const SHAPE: &str = "PLAIN response must be [authzid] NUL user name NUL password";
    let mut parts = bytes.split(|b| *b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(SHAPE));
    };
    if authcid.is_empty() {
        return Err(AuthError::Malformed(
            "PLAIN response has an empty user name; send [authzid] NUL user name NUL password",
        ));
    }
    if password.is_empty() {
        return Err(AuthError::Malformed(
            "PLAIN response has an empty password; send [authzid] NUL user name NUL password",
        ));
    }
    fn text(b: &[u8]) -> Result<&str, AuthError> {
        std::str::from_utf8(b).map_err(|_| AuthError::Encoding)
    }
    let authcid = text(authcid)?;
    let authzid = text(authzid)?;
    let password = text(password)?;
    if !authzid.is_empty() && authzid != authcid {
        return Err(AuthError::ForeignAuthzid);
    }
    Ok(Credentials {
        authcid: authcid.to_owned(),
        password: password.to_owned(),
        authzid: (!authzid.is_empty()).then(|| authzid.to_owned()),
    })
}

/// One LOGIN response: non-empty UTF-8 without NUL.
fn login_field(bytes: Vec<u8>, what: &'static str) -> Result<String, AuthError> {
    let err = if bytes.is_empty() {
        Some(if what == "password" {
            AuthError::Malformed("LOGIN password is empty; send the password base64-encoded")
        } else {
            AuthError::Malformed("LOGIN user name is empty; send the user name base64-encoded")
        })
    } else if bytes.contains(&0) {
        Some(AuthError::Malformed(
            "LOGIN user names and passwords must not contain NUL",
        ))
    } else {
        None
    };
    if let Some(err) = err {
        wipe(bytes);
        return Err(err);
    }
    String::from_utf8(bytes).map_err(|e| {
        wipe(e.into_bytes());
        AuthError::Encoding
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b64(bytes: &[u8]) -> String {
        BASE64_STANDARD.encode(bytes)
    }

    fn done(step: Step) -> Credentials {
        match step {
            Step::Done(c) => c,
            other => panic!("expected credentials, got {other:?}"),
        }
    }

    fn failure(step: Step) -> AuthError {
        match step {
            Step::Failed(e) => e,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    fn wire(step: &Step) -> String {
        step.reply().expect("a reply").to_wire()
    }

    #[test]
    fn parses_the_auth_arguments() {
        assert_eq!(
            parse_auth("PLAIN AGFAYgA="),
            Ok(AuthCommand {
                mechanism: Mechanism::Plain,
                initial: Some("AGFAYgA=".into())
            })
        );
        assert_eq!(
            parse_auth("login"),
            Ok(AuthCommand {
                mechanism: Mechanism::Login,
                initial: None
            })
        );
        assert_eq!(
            parse_auth("Plain ="),
            Ok(AuthCommand {
                mechanism: Mechanism::Plain,
                initial: Some("=".into())
            })
        );
        assert_eq!(parse_auth(""), Err(AuthError::Arguments));
        assert_eq!(parse_auth("PLAIN a b"), Err(AuthError::Arguments));
        assert_eq!(
            parse_auth("CRAM-MD5"),
            Err(AuthError::UnknownMechanism("CRAM-MD5".into()))
        );
    }

    #[test]
    fn auth_errors_carry_their_codes() {
        let cases = [
            (AuthError::Arguments, "501 5.5.4"),
            (AuthError::UnknownMechanism("X".into()), "504 5.5.4"),
            (AuthError::Cancelled, "501 5.7.0"),
            (AuthError::Base64, "501 5.5.2"),
            (AuthError::Malformed("x"), "501 5.5.2"),
            (AuthError::ForeignAuthzid, "501 5.5.2"),
            (AuthError::Encoding, "501 5.5.2"),
            (AuthError::LineTooLong, "500 5.5.6"),
            (AuthError::NotInProgress, "503 5.5.1"),
        ];
        for (err, prefix) in cases {
            assert!(err.reply().to_wire().starts_with(prefix), "{err:?}");
        }
        assert_eq!(
            AuthError::UnknownMechanism("CRAM-MD5".into())
                .reply()
                .to_wire(),
            "504 5.5.4 unsupported authentication mechanism; use PLAIN or LOGIN\r\n"
        );
        assert_eq!(
            AuthError::ForeignAuthzid.reply().to_wire(),
            "501 5.5.2 authorization identity must be empty or the user's own\r\n"
        );
    }

    #[test]
    fn plain_with_initial_response() {
        let (state, step) = Exchange::start(Mechanism::Plain, Some(&b64(b"\0alice\0s3cret")));
        assert_eq!(state, Exchange::Finished);
        assert!(step.reply().is_none());
        let c = done(step);
        assert_eq!(c.authcid(), "alice");
        assert_eq!(c.password(), "s3cret");
        assert_eq!(c.authzid(), None);
    }

    #[test]
    fn plain_with_own_authzid() {
        let (_, step) = Exchange::start(Mechanism::Plain, Some(&b64(b"alice\0alice\0pw")));
        let c = done(step);
        assert_eq!(c.authzid(), Some("alice"));
        assert_eq!(c.authcid(), "alice");
    }

    #[test]
    fn plain_without_initial_response_sends_an_empty_challenge() {
        let (state, step) = Exchange::start(Mechanism::Plain, None);
        assert_eq!(wire(&step), "334 \r\n");
        let (state, step) = state.on_line(b64(b"\0bob\0pw").as_bytes());
        assert_eq!(state, Exchange::Finished);
        let c = done(step);
        assert_eq!((c.authcid(), c.password()), ("bob", "pw"));
    }

    #[test]
    fn equals_sign_is_an_empty_initial_response() {
        // Empty is not a valid PLAIN message: malformed, not a base64 error.
        let (_, step) = Exchange::start(Mechanism::Plain, Some("="));
        assert!(matches!(failure(step), AuthError::Malformed(_)));
        // For LOGIN the initial response is the user name: empty is refused too.
        let (_, step) = Exchange::start(Mechanism::Login, Some("="));
        assert_eq!(
            wire(&step),
            "501 5.5.2 LOGIN user name is empty; send the user name base64-encoded\r\n"
        );
    }

    #[test]
    fn login_two_steps() {
        let (state, step) = Exchange::start(Mechanism::Login, None);
        assert_eq!(wire(&step), "334 VXNlcm5hbWU6\r\n");
        let (state, step) = state.on_line(b64(b"carol").as_bytes());
        assert_eq!(wire(&step), "334 UGFzc3dvcmQ6\r\n");
        let (state, step) = state.on_line(b64("pässwörd".as_bytes()).as_bytes());
        assert_eq!(state, Exchange::Finished);
        let c = done(step);
        assert_eq!((c.authcid(), c.password()), ("carol", "pässwörd"));
        assert_eq!(c.authzid(), None);
    }

    #[test]
    fn login_with_the_user_name_as_initial_response() {
        let (state, step) = Exchange::start(Mechanism::Login, Some(&b64(b"carol")));
        assert_eq!(wire(&step), "334 UGFzc3dvcmQ6\r\n");
        let (_, step) = state.on_line(b64(b"pw").as_bytes());
        assert_eq!(done(step).authcid(), "carol");
    }

    #[test]
    fn star_cancels_at_every_challenge() {
        let (state, _) = Exchange::start(Mechanism::Plain, None);
        let (state, step) = state.on_line(b"*");
        assert_eq!(state, Exchange::Finished);
        assert_eq!(
            wire(&step),
            "501 5.7.0 authentication cancelled by the client\r\n"
        );
        let (state, _) = Exchange::start(Mechanism::Login, None);
        let (_, step) = state.on_line(b"*");
        assert_eq!(failure(step), AuthError::Cancelled);
        let (state, _) = Exchange::start(Mechanism::Login, None);
        let (state, _) = state.on_line(b64(b"u").as_bytes());
        let (_, step) = state.on_line(b"*");
        assert_eq!(failure(step), AuthError::Cancelled);
    }

    #[test]
    fn bad_base64_is_refused() {
        for line in [
            &b"not base64!"[..],
            b"AGFAYgA",   // missing padding
            b"AGFAYgA==", // too much padding
            b"AGF AYgA=", // white space
            b"QR==",      // non-zero trailing bits
            b"=",         // only the initial response may be `=`
            b"\xff\xfe",
        ] {
            let (state, _) = Exchange::start(Mechanism::Plain, None);
            let (_, step) = state.on_line(line);
            assert_eq!(failure(step), AuthError::Base64, "line {line:?}");
        }
        let (_, step) = Exchange::start(Mechanism::Plain, Some("%%%"));
        assert_eq!(
            wire(&step),
            "501 5.5.2 response is not valid base64; send the credentials base64-encoded\r\n"
        );
    }

    #[test]
    fn plain_shape_is_exact() {
        for msg in [
            &b"alice"[..],
            b"alice\0pw",
            b"\0alice\0pw\0",
            b"\0\0pw",
            b"\0alice\0",
            b"",
        ] {
            let (_, step) = Exchange::start(Mechanism::Plain, Some(&b64(msg)));
            let err = failure(step);
            assert!(matches!(err, AuthError::Malformed(_)), "{msg:?}: {err:?}");
            assert!(err.reply().to_wire().starts_with("501 5.5.2 "));
        }
    }

    #[test]
    fn foreign_authzid_is_refused() {
        let (_, step) = Exchange::start(Mechanism::Plain, Some(&b64(b"root\0alice\0pw")));
        assert_eq!(failure(step), AuthError::ForeignAuthzid);
    }

    #[test]
    fn non_utf8_is_refused() {
        for msg in [
            &b"\0al\xffice\0pw"[..],
            b"\0alice\0p\xc3",
            b"\xff\0alice\0pw",
        ] {
            let (_, step) = Exchange::start(Mechanism::Plain, Some(&b64(msg)));
            assert_eq!(failure(step), AuthError::Encoding, "{msg:?}");
        }
        let (state, _) = Exchange::start(Mechanism::Login, None);
        let (_, step) = state.on_line(b64(b"\xc0\xaf").as_bytes());
        assert_eq!(failure(step), AuthError::Encoding);
        let (state, _) = Exchange::start(Mechanism::Login, Some(&b64(b"u")));
        let (_, step) = state.on_line(b64(b"p\xff").as_bytes());
        assert_eq!(failure(step), AuthError::Encoding);
    }

    #[test]
    fn login_refuses_nul_and_empty() {
        let (state, _) = Exchange::start(Mechanism::Login, None);
        let (_, step) = state.on_line(b64(b"a\0b").as_bytes());
        assert!(matches!(failure(step), AuthError::Malformed(_)));
        let (state, _) = Exchange::start(Mechanism::Login, Some(&b64(b"u")));
        let (_, step) = state.on_line(b"");
        assert_eq!(
            wire(&step),
            "501 5.5.2 LOGIN password is empty; send the password base64-encoded\r\n"
        );
    }

    #[test]
    fn overlong_lines_are_refused() {
        // 12288 octets of base64 are accepted (9216 decoded octets)...
        let password = "p".repeat(9216 - 3);
        let line = b64(format!("\0u\0{password}").as_bytes());
        assert_eq!(line.len(), MAX_RESPONSE_LINE);
        let (state, _) = Exchange::start(Mechanism::Plain, None);
        let (_, step) = state.on_line(line.as_bytes());
        assert_eq!(done(step).password(), password);
        // ...one quantum more is not, neither as a line nor as initial response.
        let line = b64(format!("\0u\0{password}ppp").as_bytes());
        let (state, _) = Exchange::start(Mechanism::Plain, None);
        let (_, step) = state.on_line(line.as_bytes());
        assert_eq!(
            wire(&step),
            "500 5.5.6 authentication line too long; at most 12288 octets are accepted\r\n"
        );
        let (_, step) = Exchange::start(Mechanism::Plain, Some(&line));
        assert_eq!(failure(step), AuthError::LineTooLong);
        // The limit comes before the cancel check: a long line of stars is not a cancel.
        let (state, _) = Exchange::start(Mechanism::Login, None);
        let (_, step) = state.on_line(&[b'*'; MAX_RESPONSE_LINE + 1]);
        assert_eq!(failure(step), AuthError::LineTooLong);
    }

    #[test]
    fn lines_after_the_end_are_a_sequence_error() {
        let (state, step) = Exchange::start(Mechanism::Plain, Some(&b64(b"\0a\0b")));
        done(step);
        let (state, step) = state.on_line(b"*");
        assert_eq!(state, Exchange::Finished);
        assert!(wire(&step).starts_with("503 5.5.1 "));
    }

    #[test]
    fn debug_never_shows_the_password() {
        let (state, step) = Exchange::start(Mechanism::Plain, Some(&b64(b"\0alice\0hunter2")));
        let c = done(step);
        let first = format!("{c:?}");
        let text = format!("{first} {:?} {state:?}", Step::Done(c));
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("alice") && text.contains("<redacted>"),
            "{text}"
        );
    }

    /// Whatever the step, a failure is a 5xx reply.
    fn check_failure_is_5xx(step: &Step) {
        if let Step::Failed(err) = step {
            let reply = err.reply();
            assert!(reply.is_permanent(), "{err:?} -> {reply}");
        }
    }

    fn name() -> impl Strategy<Value = String> {
        "[^\u{0}]{1,40}"
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_payloads(
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            line in proptest::collection::vec(any::<u8>(), 0..200),
            login in any::<bool>(),
        ) {
            let mechanism = if login { Mechanism::Login } else { Mechanism::Plain };
            let encoded = b64(&payload);
            let (state, step) = Exchange::start(mechanism, Some(&encoded));
            check_failure_is_5xx(&step);
            let (_, step) = state.on_line(&line);
            check_failure_is_5xx(&step);
            // Arbitrary payloads, base64-encoded, through every state.
            let (state, step) = Exchange::start(mechanism, None);
            check_failure_is_5xx(&step);
            let (state2, step) = state.on_line(encoded.as_bytes());
            check_failure_is_5xx(&step);
            let (_, step) = state2.on_line(b64(&line).as_bytes());
            check_failure_is_5xx(&step);
            if let Ok(text) = std::str::from_utf8(&line) {
                if let Err(err) = parse_auth(text) {
                    prop_assert!(err.reply().is_permanent());
                }
                let (_, step) = Exchange::start(mechanism, Some(text));
                check_failure_is_5xx(&step);
            }
        }

        #[test]
        fn credentials_round_trip(authcid in name(), password in name()) {
            let initial = b64(format!("\0{authcid}\0{password}").as_bytes());
            let (_, step) = Exchange::start(Mechanism::Plain, Some(&initial));
            let c = done(step);
            prop_assert_eq!(c.authcid(), authcid.as_str());
            prop_assert_eq!(c.password(), password.as_str());
            prop_assert_eq!(c.authzid(), None);

            let (state, _) = Exchange::start(Mechanism::Plain, None);
            let (_, step) = state.on_line(initial.as_bytes());
            let c = done(step);
            prop_assert_eq!(c.authcid(), authcid.as_str());
            prop_assert_eq!(c.password(), password.as_str());

            let (state, _) = Exchange::start(Mechanism::Login, None);
            let (state, step) = state.on_line(b64(authcid.as_bytes()).as_bytes());
            prop_assert!(matches!(step, Step::Challenge(LOGIN_PASSWORD)));
            let (_, step) = state.on_line(b64(password.as_bytes()).as_bytes());
            let c = done(step);
            prop_assert_eq!(c.authcid(), authcid.as_str());
            prop_assert_eq!(c.password(), password.as_str());
        }
    }
}
