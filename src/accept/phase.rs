//! The SMTP server session as a state machine, without I/O.
//!
//! [`Phase`] names what the session waits for; each state owns exactly the data it needs.
//! [`Phase::on_command`] consumes the state and returns the next one with a [`Step`] that
//! tells the session driver what to do (send a reply, read message data, start TLS).
//! Every rule here is tested without sockets.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use super::spill::Spill;
use super::submission::{AuthOffer, Identity};
use crate::config::{Config, PolicyConfig, RouteConfig};
use crate::message::Envelope;
use crate::proto::{
    Address, AuthArgs, AuthCommand, Body, Command, DataReader, Enhanced, Framing, MailParams,
    Reply, ReversePath, parse_auth,
};
use crate::transform::trace::{MAX_RECEIVED_HEADERS, count_received};

/// Fixed facts about the session that the rules depend on.
#[derive(Clone, Debug)]
pub struct Rules {
    /// Our host name, for replies.
    pub hostname: String,
    /// Largest message, in octets.
    pub max_message_size: u64,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Whether STARTTLS can be offered now (a certificate is configured and TLS is not active yet).
    pub starttls_available: bool,
    /// `[policy]`: allowed senders and recipients.
    pub policy: Arc<PolicyConfig>,
    /// `[[route]]`, in order; empty: every message may use every upstream.
    pub routes: Arc<[RouteConfig]>,
    /// The client's address (the one the PROXY header gives when `proxy_protocol` is
    /// on), set per session: a route may depend on it.
    pub client: IpAddr,
    /// Whether AUTH can be offered now (a `[[listener]]`, and TLS is active).
    pub auth: AuthOffer,
    /// Who the client is: trusted by network, not yet authenticated, or a user.
    pub identity: Identity,
}

impl Rules {
    /// The rules `config` sets, for a session whose client is not known yet (see
    /// [`Rules::for_client`]).
    pub fn from_config(config: &Config, starttls_available: bool) -> Rules {
        let server = &config.server;
        Rules {
            hostname: server.hostname.clone(),
            max_message_size: server.max_message_size,
            max_recipients: server.max_recipients,
            starttls_available,
            policy: Arc::new(config.policy.clone()),
            routes: config.route.clone().into(),
            client: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            auth: AuthOffer::NotHere,
            identity: Identity::TrustedNetwork,
        }
    }

    /// These rules for a session with `client`.
    pub fn for_client(mut self, client: IpAddr) -> Rules {
        self.client = client;
        self
    }

    /// The route a transaction from `sender` takes: `Ok(None)` without routes, the
    /// route's name when one matches, the `550 5.7.1` refusal when none does. The
    /// authenticated user, if any, is one of the conditions.
    pub fn choose_route(&self, sender: &ReversePath) -> Result<Option<String>, Reply> {
        if self.routes.is_empty() {
            return Ok(None);
        }
        let address = sender.mailbox().map(ToString::to_string);
        let user = self.identity.user_name();
        match crate::config::first_route(&self.routes, address.as_deref(), self.client, user) {
            Some(route) => Ok(Some(route.name.clone())),
            None => {
                let by = user.map(|u| format!(" (user {u})")).unwrap_or_default();
                Err(Reply::new(
                    550,
                    Enhanced(5, 7, 1),
                    format!(
                        "No route matches sender {sender} from {}{by}: add a [[route]] for it",
                        self.client
                    ),
                ))
            }
        }
    }

    /// Whether this client may start a transaction from `sender`: the `530` for a
    /// client that must authenticate first, the `550 5.7.1` for an address the user
    /// may not send as, the `450 4.7.1` for a user over its rate limit. The budget is
    /// taken from last, so a refused MAIL costs nothing.
    fn admit_sender(&self, sender: &ReversePath) -> Result<(), Reply> {
        match &self.identity {
            Identity::TrustedNetwork => Ok(()),
            Identity::Anonymous => Err(Reply::new(
                530,
                Enhanced(5, 7, 0),
                format!(
                    "Authentication required: {} is not in trusted_networks; authenticate with AUTH PLAIN or LOGIN over TLS first",
                    self.client
                ),
            )),
            Identity::User(user, _) => match sender.mailbox() {
                Some(address) if !user.may_send_as(&address.to_string()) => Err(Reply::new(
                    550,
                    Enhanced(5, 7, 1),
                    format!(
                        "User {} may not send as <{address}>: it matches none of the user's allowed_senders",
                        user.name
                    ),
                )),
                _ => Ok(()),
            },
        }
    }

    /// Take one message from the authenticated user's budget, or the `450 4.7.1`.
    fn take_budget(&self) -> Result<(), Reply> {
        let Identity::User(user, Some(budget)) = &self.identity else {
            return Ok(());
        };
        let now = std::time::SystemTime::now();
        budget.take(now).map_err(|next| {
            let wait = next
                .duration_since(now)
                .unwrap_or_default()
                .as_secs()
                .max(1);
            let rate = user.rate_limit.map(|r| r.to_string()).unwrap_or_default();
            Reply::new(
                450,
                Enhanced(4, 7, 1),
                format!(
                    "User {} is over its rate limit of {rate}; try again in {wait} s",
                    user.name
                ),
            )
        })
    }
}

/// The client's greeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Helo {
    /// The name it gave.
    pub name: String,
    /// EHLO (true) or HELO (false).
    pub extended: bool,
}

/// A mail transaction in progress.
#[derive(Clone, Debug)]
pub struct Transaction {
    sender: ReversePath,
    params: MailParams,
    recipients: Vec<Address>,
    /// The `[[route]]` chosen at MAIL FROM (`None` without routes).
    route: Option<String>,
}

/// Message content being received with `DATA` or `BDAT`.
#[derive(Debug)]
pub struct Incoming {
    /// Framing and normalisation state.
    pub reader: DataReader,
    /// Normalised content so far (for a large message: its header block and the part
    /// of the body not yet in `spill`'s file).
    pub content: Vec<u8>,
    /// Where the body of a large message goes.
    pub spill: Spill,
}

/// What the session waits for.
#[derive(Debug)]
pub enum Phase {
    /// The client is not allowed to relay; only QUIT is of use.
    Refused {
        /// Why, as told to the client.
        reason: String,
    },
    /// Waiting for EHLO or HELO.
    ExpectHelo,
    /// Greeted, no transaction: waiting for MAIL.
    Ready {
        /// The greeting.
        helo: Helo,
    },
    /// MAIL accepted: waiting for RCPT, DATA or BDAT.
    Mail {
        /// The greeting.
        helo: Helo,
        /// The transaction so far.
        tx: Transaction,
    },
    /// Receiving content: the driver reads `DATA` until its end, or `BDAT` chunks.
    Receiving {
        /// The greeting.
        helo: Helo,
        /// The transaction.
        tx: Transaction,
        /// The content so far.
        incoming: Incoming,
    },
}

/// What the driver does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this reply.
    Reply(Reply),
    /// Send this `354` reply, then read `DATA` content until `CRLF.CRLF`.
    ReadData(Reply),
    /// Read `size` octets of `BDAT` content.
    ReadChunk {
        /// Octets announced.
        size: u64,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// Send this `220` reply, discard any buffered input, and start the TLS handshake.
    StartTls(Reply),
    /// Run this SASL exchange and verify its credentials (`235` or `535`).
    Authenticate(AuthCommand),
}

/// The result of a complete message.
#[derive(Debug)]
pub enum Completion {
    /// Hand this over to the next stage.
    Accept {
        /// The envelope.
        envelope: Envelope,
        /// The normalised content (for a large message, what is not yet in `spill`).
        content: Vec<u8>,
        /// The rest of a large message's content.
        spill: Spill,
    },
    /// Refuse it with this reply.
    Reject(Reply),
}

fn reply(code: u16, esc: (u8, u16, u16), text: impl Into<std::borrow::Cow<'static, str>>) -> Step {
    Step::Reply(Reply::new(code, Enhanced(esc.0, esc.1, esc.2), text))
}

impl Phase {
    /// The first state of a session, and the greeting to send.
    pub fn start(rules: &Rules, refusal: Option<String>) -> (Phase, Reply) {
        match refusal {
            Some(reason) => {
                let greeting = Reply::new(
                    554,
                    Enhanced(5, 7, 1),
                    format!("{} {reason}", rules.hostname),
                );
                (Phase::Refused { reason }, greeting)
            }
            None => (
                Phase::ExpectHelo,
                Reply::plain(220, format!("{} ESMTP smarthost ready", rules.hostname)),
            ),
        }
    }

    /// Whether a transaction is under way (a shutdown lets it finish first).
    pub fn in_transaction(&self) -> bool {
        matches!(self, Phase::Mail { .. } | Phase::Receiving { .. })
    }

    /// The content buffer while receiving.
    pub fn incoming(&mut self) -> Option<&mut Incoming> {
        match self {
            Phase::Receiving { incoming, .. } => Some(incoming),
            _ => None,
        }
    }

    /// The greeting of the session, if given.
    pub fn helo(&self) -> Option<&Helo> {
        match self {
            Phase::Ready { helo } | Phase::Mail { helo, .. } | Phase::Receiving { helo, .. } => {
                Some(helo)
            }
            Phase::Refused { .. } | Phase::ExpectHelo => None,
        }
    }

    /// Apply one command.
    pub fn on_command(self, cmd: Command, rules: &Rules) -> (Phase, Step) {
        // RFC 5321 §3.1 lets the server close after refusing at the greeting: a refused
        // client gets one answer and the connection ends, so it cannot hold a slot.
        if let Phase::Refused { reason } = self {
            let step = match cmd {
                Command::Quit => Step::Reply(Reply::new(221, Enhanced(2, 0, 0), "Bye").and_close()),
                _ => Step::Reply(
                    Reply::new(
                        554,
                        Enhanced(5, 7, 1),
                        format!("{reason}; closing connection"),
                    )
                    .and_close(),
                ),
            };
            return (Phase::Refused { reason }, step);
        }
        match cmd {
            Command::Ehlo(_) | Command::Helo(_) if matches!(self, Phase::Receiving { .. }) => (
                self,
                Step::Reply(Reply::bad_sequence(
                    "Finish the BDAT transfer first (or RSET)",
                )),
            ),
            Command::Ehlo(name) => (
                Phase::Ready {
                    helo: Helo {
                        name,
                        extended: true,
                    },
                },
                Step::Reply(ehlo_reply(rules)),
            ),
            Command::Helo(name) => {
                let step = Step::Reply(Reply::plain(250, rules.hostname.clone()));
                (
                    Phase::Ready {
                        helo: Helo {
                            name,
                            extended: false,
                        },
                    },
                    step,
                )
            }
            Command::Mail { from, params } => self.on_mail(from, params, rules),
            Command::Rcpt { to } => self.on_rcpt(to, rules),
            Command::Data => self.on_data(rules),
            Command::Bdat { size, last } => self.on_bdat(size, last, rules),
            Command::Rset => {
                let next = match self {
                    Phase::ExpectHelo => Phase::ExpectHelo,
                    Phase::Ready { helo }
                    | Phase::Mail { helo, .. }
                    | Phase::Receiving { helo, .. } => Phase::Ready { helo },
                    Phase::Refused { .. } => unreachable!("handled above"),
                };
                (next, Step::Reply(Reply::ok()))
            }
            Command::Noop => (self, Step::Reply(Reply::ok())),
            Command::Quit => {
                let bye = Reply::new(
                    221,
                    Enhanced(2, 0, 0),
                    format!("{} closing connection", rules.hostname),
                );
                (self, Step::Reply(bye.and_close()))
            }
            Command::Vrfy => (
                self,
                reply(
                    252,
                    (2, 5, 2),
                    "Cannot VRFY user, but will accept message and attempt delivery",
                ),
            ),
            Command::Expn => (self, reply(502, (5, 5, 1), "EXPN is not supported")),
            Command::Help => {
                let starttls = if rules.starttls_available {
                    " STARTTLS"
                } else {
                    ""
                };
                let auth = if rules.auth == AuthOffer::Offered {
                    " AUTH"
                } else {
                    ""
                };
                let text = format!(
                    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP{starttls}{auth}"
                );
                (self, reply(214, (2, 0, 0), text))
            }
            Command::StartTls => self.on_starttls(rules),
            Command::Auth(args) => self.on_auth(args, rules),
        }
    }

    fn on_auth(self, args: AuthArgs, rules: &Rules) -> (Phase, Step) {
        match rules.auth {
            AuthOffer::NotHere => {
                return (
                    self,
                    reply(
                        503,
                        (5, 5, 1),
                        "AUTH is not needed here: clients on trusted networks send without authentication; remove the credentials from the client",
                    ),
                );
            }
            AuthOffer::AfterStartTls => {
                return (
                    self,
                    reply(
                        538,
                        (5, 7, 11),
                        "Encryption required for authentication: send STARTTLS first, then AUTH",
                    ),
                );
            }
            AuthOffer::Offered => {}
        }
        let sequence = match &self {
            Phase::Ready { .. } if rules.identity.user_name().is_some() => {
                Some("Already authenticated")
            }
            Phase::Ready { .. } => None,
            Phase::ExpectHelo => Some("Send EHLO first"),
            _ => Some("AUTH is not allowed during a mail transaction"),
        };
        if let Some(text) = sequence {
            return (self, Step::Reply(Reply::bad_sequence(text)));
        }
        match parse_auth(&args.0) {
            Ok(command) => (self, Step::Authenticate(command)),
            Err(e) => (self, Step::Reply(e.reply())),
        }
    }

    fn on_mail(self, sender: ReversePath, params: MailParams, rules: &Rules) -> (Phase, Step) {
        let helo = match self {
            Phase::Ready { helo } => helo,
            Phase::ExpectHelo => {
                return (
                    self,
                    Step::Reply(Reply::bad_sequence("Send EHLO or HELO first")),
                );
            }
            other => {
                return (
                    other,
                    Step::Reply(Reply::bad_sequence(
                        "Nested MAIL command: finish or RSET the current transaction",
                    )),
                );
            }
        };
        if let Err(refusal) = rules.admit_sender(&sender) {
            return (Phase::Ready { helo }, Step::Reply(refusal));
        }
        if let Some(size) = params.size
            && size > rules.max_message_size
        {
            let text = format!(
                "Message size {size} exceeds the limit of {} octets",
                rules.max_message_size
            );
            return (Phase::Ready { helo }, reply(552, (5, 3, 4), text));
        }
        if let ReversePath::Mailbox(addr) = &sender
            && !addr.is_ascii()
            && !params.smtputf8
        {
            return (
                Phase::Ready { helo },
                reply(
                    553,
                    (5, 6, 7),
                    "Non-ASCII sender address needs MAIL FROM with SMTPUTF8",
                ),
            );
        }
        if let ReversePath::Mailbox(addr) = &sender
            && !rules.policy.sender_allowed(&addr.to_string())
        {
            let text = format!(
                "Sender <{addr}> is not allowed here: it matches none of policy.allowed_senders"
            );
            return (Phase::Ready { helo }, reply(550, (5, 7, 1), text));
        }
        let route = match rules.choose_route(&sender) {
            Ok(route) => route,
            Err(refusal) => return (Phase::Ready { helo }, Step::Reply(refusal)),
        };
        if let Err(refusal) = rules.take_budget() {
            return (Phase::Ready { helo }, Step::Reply(refusal));
        }
        let step = reply(250, (2, 1, 0), format!("Sender {sender} OK"));
        (
            Phase::Mail {
                helo,
                tx: Transaction {
                    sender,
                    params,
                    recipients: Vec::new(),
                    route,
                },
            },
            step,
        )
    }

    fn on_rcpt(self, to: Address, rules: &Rules) -> (Phase, Step) {
        let (helo, mut tx) = match self {
            Phase::Mail { helo, tx } => (helo, tx),
            Phase::Receiving { .. } => {
                return (
                    self,
                    Step::Reply(Reply::bad_sequence("RCPT is not allowed during BDAT")),
                );
            }
            other => {
                return (
                    other,
                    Step::Reply(Reply::bad_sequence("Send MAIL FROM first")),
                );
            }
        };
        let step = if !to.is_ascii() && !tx.params.smtputf8 {
            reply(
                553,
                (5, 6, 7),
                "Non-ASCII recipient address needs MAIL FROM with SMTPUTF8",
            )
        } else if !rules.policy.recipient_allowed(&to.to_string()) {
            let text = format!(
                "Recipient <{to}> is not allowed here: it matches none of policy.allowed_recipients"
            );
            reply(550, (5, 7, 1), text)
        } else if tx.recipients.contains(&to) {
            reply(
                250,
                (2, 1, 5),
                format!("Recipient <{to}> OK (duplicate ignored)"),
            )
        } else if tx.recipients.len() >= rules.max_recipients {
            let text = format!(
                "Too many recipients (limit {}); send the rest in another transaction",
                rules.max_recipients
            );
            reply(452, (4, 5, 3), text)
        } else {
            let text = format!("Recipient <{to}> OK");
            tx.recipients.push(to);
            reply(250, (2, 1, 5), text)
        };
        (Phase::Mail { helo, tx }, step)
    }

    fn on_data(self, rules: &Rules) -> (Phase, Step) {
        match self {
            Phase::Mail { helo, tx } if !tx.recipients.is_empty() => {
                let incoming = Incoming {
                    reader: DataReader::new(Framing::Dot, rules.max_message_size),
                    content: Vec::new(),
                    spill: Spill::default(),
                };
                let go = Reply::plain(354, "End data with <CR><LF>.<CR><LF>");
                (Phase::Receiving { helo, tx, incoming }, Step::ReadData(go))
            }
            Phase::Mail { helo, tx } => (
                Phase::Mail { helo, tx },
                reply(554, (5, 5, 1), "No valid recipients"),
            ),
            Phase::Receiving { .. } => (
                self,
                Step::Reply(Reply::bad_sequence("DATA cannot follow BDAT; RSET first")),
            ),
            other => (
                other,
                Step::Reply(Reply::bad_sequence("Send MAIL FROM and RCPT TO first")),
            ),
        }
    }

    fn on_bdat(self, size: u64, last: bool, rules: &Rules) -> (Phase, Step) {
        match self {
            Phase::Mail { helo, tx } if !tx.recipients.is_empty() => {
                let incoming = Incoming {
                    reader: DataReader::new(Framing::Counted, rules.max_message_size),
                    content: Vec::new(),
                    spill: Spill::default(),
                };
                (
                    Phase::Receiving { helo, tx, incoming },
                    Step::ReadChunk { size, last },
                )
            }
            // The chunk must still be read (and dropped) so its bytes are not taken as commands.
            Phase::Receiving { incoming, helo, tx }
                if incoming.reader.framing() == Framing::Counted =>
            {
                (
                    Phase::Receiving { helo, tx, incoming },
                    Step::ReadChunk { size, last },
                )
            }
            other => (other, Step::ReadChunk { size, last }),
        }
    }

    fn on_starttls(self, rules: &Rules) -> (Phase, Step) {
        if !rules.starttls_available {
            return (self, reply(502, (5, 5, 1), "STARTTLS is not available"));
        }
        match self {
            Phase::ExpectHelo | Phase::Ready { .. } => (
                Phase::ExpectHelo,
                Step::StartTls(Reply::new(220, Enhanced(2, 0, 0), "Ready to start TLS")),
            ),
            other => (
                other,
                Step::Reply(Reply::bad_sequence(
                    "STARTTLS is not allowed inside a transaction",
                )),
            ),
        }
    }

    /// A `BDAT` chunk was read completely but this phase had no transaction for it
    /// (sent before MAIL/RCPT): the bytes were dropped; tell the client.
    pub fn chunk_without_transaction(&self) -> Option<Reply> {
        match self {
            Phase::Receiving { .. } => None,
            Phase::Mail { .. } => Some(Reply::new(554, Enhanced(5, 5, 1), "No valid recipients")),
            _ => Some(Reply::bad_sequence("Send MAIL FROM and RCPT TO first")),
        }
    }

    /// The content ended (`DATA` terminator or `BDAT LAST`): decide about the message.
    pub fn end_of_content(self) -> (Phase, Completion) {
        let Phase::Receiving { helo, tx, incoming } = self else {
            let reply = Reply::bad_sequence("No message in progress");
            return (self, Completion::Reject(reply));
        };
        let next = Phase::Ready { helo };
        if incoming.reader.is_over_limit() {
            let text = format!(
                "Message too big: {} octets exceed the limit of {}; nothing was kept",
                incoming.reader.content_len(),
                incoming.reader.limit()
            );
            return (
                next,
                Completion::Reject(Reply::new(552, Enhanced(5, 3, 4), text)),
            );
        }
        let hops = count_received(&incoming.content);
        if hops > MAX_RECEIVED_HEADERS {
            let text = format!(
                "Mail loop detected: {hops} Received headers (limit {MAX_RECEIVED_HEADERS})"
            );
            return (
                next,
                Completion::Reject(Reply::new(554, Enhanced(5, 4, 6), text)),
            );
        }
        let envelope = Envelope {
            sender: tx.sender,
            recipients: tx.recipients,
            smtputf8: tx.params.smtputf8,
            eight_bit: tx.params.body == Body::EightBitMime,
            route: tx.route,
        };
        (
            next,
            Completion::Accept {
                envelope,
                content: incoming.content,
                spill: incoming.spill,
            },
        )
    }
}

fn ehlo_reply(rules: &Rules) -> Reply {
    let mut text = format!(
        "{}\nPIPELINING\nSIZE {}\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES\nCHUNKING",
        rules.hostname, rules.max_message_size
    );
    if rules.starttls_available {
        text.push_str("\nSTARTTLS");
    }
    if rules.auth == AuthOffer::Offered {
        text.push_str("\nAUTH PLAIN LOGIN");
    }
    text.push_str("\nHELP");
    Reply::plain(250, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::parse_command;

    fn rules() -> Rules {
        Rules {
            hostname: "relay.test".into(),
            max_message_size: 1000,
            max_recipients: 2,
            starttls_available: false,
            policy: Arc::default(),
            routes: Arc::new([]),
            client: "10.1.2.3".parse().unwrap(),
            auth: AuthOffer::NotHere,
            identity: Identity::TrustedNetwork,
        }
    }

    /// Run command lines from a fresh greeted session; return each reply code.
    fn codes(lines: &[&str], rules: &Rules) -> (Phase, Vec<u16>) {
        let (mut phase, _) = Phase::start(rules, None);
        let mut out = Vec::new();
        for line in lines {
            let cmd = parse_command(line.as_bytes()).unwrap();
            let (next, step) = phase.on_command(cmd, rules);
            phase = next;
            out.push(match step {
                Step::Reply(r) | Step::ReadData(r) | Step::StartTls(r) => r.code,
                Step::ReadChunk { .. } => 0,
                Step::Authenticate(_) => 334,
            });
        }
        (phase, out)
    }

    #[test]
    fn a_normal_transaction() {
        let (phase, got) = codes(
            &["EHLO c", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"],
            &rules(),
        );
        assert_eq!(got, [250, 250, 250, 354]);
        assert!(matches!(phase, Phase::Receiving { .. }));
    }

    #[test]
    fn sequence_errors() {
        let r = rules();
        assert_eq!(codes(&["MAIL FROM:<a@b.c>"], &r).1, [503]);
        assert_eq!(codes(&["EHLO c", "RCPT TO:<d@e.f>"], &r).1, [250, 503]);
        assert_eq!(codes(&["EHLO c", "DATA"], &r).1, [250, 503]);
        assert_eq!(
            codes(&["EHLO c", "MAIL FROM:<a@b.c>", "DATA"], &r).1,
            [250, 250, 554]
        );
        assert_eq!(
            codes(&["EHLO c", "MAIL FROM:<a@b.c>", "MAIL FROM:<a@b.c>"], &r).1,
            [250, 250, 503]
        );
        assert_eq!(
            codes(
                &["EHLO c", "MAIL FROM:<a@b.c>", "RSET", "MAIL FROM:<a@b.c>"],
                &r
            )
            .1,
            [250, 250, 250, 250]
        );
        assert_eq!(codes(&["EHLO c", "STARTTLS"], &r).1, [250, 502]);
        assert_eq!(codes(&["EHLO c", "AUTH PLAIN x"], &r).1, [250, 503]);
    }

    #[test]
    fn limits_on_size_and_recipients() {
        let r = rules();
        assert_eq!(
            codes(&["EHLO c", "MAIL FROM:<a@b.c> SIZE=1001"], &r).1,
            [250, 552]
        );
        let rcpts = [
            "EHLO c",
            "MAIL FROM:<a@b.c>",
            "RCPT TO:<1@x.y>",
            "RCPT TO:<2@x.y>",
            "RCPT TO:<3@x.y>",
            "RCPT TO:<1@x.y>",
        ];
        assert_eq!(codes(&rcpts, &r).1, [250, 250, 250, 250, 452, 250]);
    }

    #[test]
    fn policy_refuses_senders_at_mail_and_recipients_at_rcpt() {
        let mut r = rules();
        r.max_recipients = 10;
        r.policy = Arc::new(crate::config::PolicyConfig {
            allowed_senders: vec![crate::config::AddressGlob::parse("*@app.test").unwrap()],
            allowed_recipients: vec![crate::config::AddressGlob::parse("*@x.y").unwrap()],
            redirect_all_to: None,
        });
        let lines = [
            "EHLO c",
            "MAIL FROM:<a@elsewhere.test>",
            "MAIL FROM:<A@APP.test>",
            "RCPT TO:<1@x.y>",
            "RCPT TO:<1@customer.test>",
            "DATA",
        ];
        assert_eq!(codes(&lines, &r).1, [250, 550, 250, 250, 550, 354]);
        assert_eq!(
            codes(&["EHLO c", "MAIL FROM:<>", "RCPT TO:<1@x.y>"], &r).1,
            [250, 250, 250],
            "a null sender has no address to judge at MAIL FROM; its From is judged after DATA"
        );
    }

    fn route(name: &str, senders: &[&str], clients: &[&str]) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            senders: senders
                .iter()
                .map(|s| crate::config::AddressGlob::parse(s).unwrap())
                .collect(),
            clients: clients.iter().map(|c| c.parse().unwrap()).collect(),
            users: Vec::new(),
            upstreams: vec!["up".into()],
        }
    }

    #[test]
    fn routes_refuse_unmatched_senders_at_mail_and_name_the_chosen_one() {
        let mut r = rules();
        r.routes = vec![
            route("billing", &["*@billing.test"], &[]),
            route("office", &[], &["10.1.0.0/16"]),
        ]
        .into();
        r.client = "192.0.2.7".parse().unwrap();
        let lines = [
            "EHLO c",
            "MAIL FROM:<a@other.test>",
            "MAIL FROM:<>",
            "MAIL FROM:<Invoices@BILLING.test>",
        ];
        let (phase, got) = codes(&lines, &r);
        assert_eq!(got, [250, 550, 550, 250]);
        let Phase::Mail { tx, .. } = phase else {
            panic!("a transaction")
        };
        assert_eq!(tx.route.as_deref(), Some("billing"));
        let refusal = r.choose_route(&ReversePath::Null).unwrap_err();
        assert_eq!(
            refusal.to_wire(),
            "550 5.7.1 No route matches sender <> from 192.0.2.7: add a [[route]] for it\r\n"
        );
        r.client = "10.1.2.3".parse().unwrap();
        assert_eq!(
            r.choose_route(&ReversePath::Null).unwrap().as_deref(),
            Some("office")
        );
        r.routes = Arc::new([]);
        assert_eq!(
            r.choose_route(&ReversePath::Null).unwrap(),
            None,
            "no routes: no route"
        );
    }

    #[test]
    fn the_route_ends_up_in_the_envelope() {
        let mut r = rules();
        r.routes = vec![route("all", &[], &[])].into();
        let (mut phase, _) = codes(
            &["EHLO c", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"],
            &r,
        );
        let incoming = phase.incoming().unwrap();
        let (_, done) = incoming
            .reader
            .feed(b"Subject: s\r\n\r\nb\r\n.\r\n", &mut incoming.content);
        assert!(done);
        let Completion::Accept { envelope, .. } = phase.end_of_content().1 else {
            panic!("accepted")
        };
        assert_eq!(envelope.route.as_deref(), Some("all"));
        assert_eq!(receive_route(&rules()), None, "without routes, no route");
    }

    fn receive_route(rules: &Rules) -> Option<String> {
        match receive(b"Subject: s\r\n\r\nb\r\n.\r\n", rules) {
            Completion::Accept { envelope, .. } => envelope.route,
            Completion::Reject(r) => panic!("{r}"),
        }
    }

    #[test]
    fn non_ascii_addresses_need_smtputf8() {
        let r = rules();
        assert_eq!(
            codes(&["EHLO c", "MAIL FROM:<用户@例子.广告>"], &r).1,
            [250, 553]
        );
        assert_eq!(
            codes(
                &[
                    "EHLO c",
                    "MAIL FROM:<用户@例子.广告> SMTPUTF8",
                    "RCPT TO:<收@例子.广告>"
                ],
                &r
            )
            .1,
            [250, 250, 250]
        );
    }

    #[test]
    fn refused_clients_get_one_answer_and_are_closed() {
        let r = rules();
        let (phase, greeting) =
            Phase::start(&r, Some("10.9.9.9 is not in trusted_networks".into()));
        assert_eq!(
            greeting.to_wire(),
            "554 5.7.1 relay.test 10.9.9.9 is not in trusted_networks\r\n"
        );
        let (_, step) = phase.on_command(Command::Ehlo("x".into()), &r);
        let Step::Reply(reply) = step else { panic!() };
        assert_eq!(
            (reply.to_wire().as_str(), reply.close),
            (
                "554 5.7.1 10.9.9.9 is not in trusted_networks; closing connection\r\n",
                true
            )
        );
        let (phase, _) = Phase::start(&r, Some("refused".into()));
        let (_, step) = phase.on_command(Command::Quit, &r);
        assert!(matches!(step, Step::Reply(ref rep) if rep.code == 221 && rep.close));
    }

    #[test]
    fn ehlo_advertises_the_extensions() {
        let mut r = rules();
        r.starttls_available = true;
        let (_, step) = Phase::ExpectHelo.on_command(Command::Ehlo("c".into()), &r);
        let Step::Reply(reply) = step else { panic!() };
        assert_eq!(
            reply.to_wire(),
            "250-relay.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-STARTTLS\r\n250 HELP\r\n"
        );
    }

    fn receive(content: &[u8], rules: &Rules) -> Completion {
        let (mut phase, _) = codes(
            &["EHLO c", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"],
            rules,
        );
        let incoming = phase.incoming().unwrap();
        let (_, done) = incoming.reader.feed(content, &mut incoming.content);
        assert!(done);
        phase.end_of_content().1
    }

    #[test]
    fn completed_messages_are_checked() {
        let r = rules();
        assert!(matches!(
            receive(b"Subject: hi\r\n\r\nbody\r\n.\r\n", &r),
            Completion::Accept { .. }
        ));
        let big = format!("{}\r\n.\r\n", "x".repeat(1200));
        assert!(
            matches!(receive(big.as_bytes(), &r), Completion::Reject(ref rep) if rep.code == 552)
        );
        let mut r = r;
        r.max_message_size = 100_000;
        let looping = format!("{}\r\nbody\r\n.\r\n", "Received: from x\r\n".repeat(51));
        assert!(
            matches!(receive(looping.as_bytes(), &r), Completion::Reject(ref rep) if rep.code == 554 && rep.enhanced == Some(Enhanced(5, 4, 6)))
        );
        let fifty = format!("{}\r\nbody\r\n.\r\n", "Received: from x\r\n".repeat(50));
        assert!(matches!(
            receive(fifty.as_bytes(), &r),
            Completion::Accept { .. }
        ));
    }
}
