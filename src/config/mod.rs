//! Typed configuration: every key, its default in code, and its validation.
//!
//! [`load`] layers the sources (embedded default or a TOML file, then `SMARTHOST__*`
//! environment variables), interpolates `${VAR}`, rejects unknown keys and bad values
//! with an error naming the key and where it came from, and returns a [`Config`] that is
//! then shared read-only behind an `Arc`.

mod glob;
mod load;
mod oauth;
mod private_file;
mod provider;
mod upstream_url;
mod users;
mod validate;
mod values;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

pub use glob::{AddressGlob, any_matches};
pub use load::{ConfigError, ConfigSource, load, load_from_process};
pub use oauth::{OAuthConfig, OAuthFlow};
pub use private_file::write_private_file;
pub use provider::Provider;
pub use upstream_url::{TlsMode, UpstreamUrl};
pub use users::{User, Users, UsersError};
pub use values::Secret;

/// The embedded default configuration, used when no file is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/smarthost.toml");

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: the inbound SMTP side.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[spool]`: where accepted mail is kept.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// `[delivery]`: when the client hears 250 and how long mail may wait.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// `[[upstream]]`: where mail goes, in priority order.
    #[serde(default)]
    pub upstream: Vec<UpstreamConfig>,
    /// `[[dkim]]`: signing keys by domain.
    #[serde(default)]
    pub dkim: Vec<DkimConfig>,
    /// `[[route]]`: which upstreams a message may use, chosen at MAIL FROM; none: every
    /// message may use every upstream.
    #[serde(default)]
    pub route: Vec<RouteConfig>,
    /// `[[header_rule]]`: changes to the client's header block at acceptance, in order.
    #[serde(default)]
    pub header_rule: Vec<HeaderRule>,
    /// `[transform]`: what acceptance writes into every message.
    #[serde(default)]
    pub transform: TransformConfig,
    /// `[metrics]`: the Prometheus and health endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[log]`: how `serve` writes its log.
    #[serde(default)]
    pub log: LogConfig,
    /// `[policy]`: which senders and recipients are allowed, and staging redirects.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// `[auth]`: the users who may submit with SMTP AUTH.
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[[listener]]`: submission ports beside `server.listen`, where clients outside
    /// `trusted_networks` may send after AUTH over TLS.
    #[serde(default)]
    pub listener: Vec<ListenerConfig>,
    /// `[cluster]`: what several replicas share through a Redis-protocol store.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// `[cluster]`: replicas share each upstream's `rate_limit` and `daily_limit` through a
/// Redis-protocol store (Valkey, Redis 6 or later). Without `store`, each relay keeps
/// its budgets to itself.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port/db`; a password in it is never logged.
    pub store: Option<Secret>,
    /// A file holding the store's password (Docker and Kubernetes secrets).
    pub store_password_file: Option<PathBuf>,
    /// PEM certificate(s) of the CA that signed a `rediss://` store's certificate, when
    /// it is not a public one.
    pub store_ca_file: Option<PathBuf>,
    /// This replica's name in the store (default: the host name).
    pub node: Option<String>,
    /// Prefix of every key, so that two clusters can share one store.
    pub namespace: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            store: None,
            store_password_file: None,
            store_ca_file: None,
            node: None,
            namespace: "smarthost".into(),
        }
    }
}

/// `[[listener]]`: a submission port (587 with STARTTLS, 465 with implicit TLS). Clients
/// in `server.trusted_networks` may send without AUTH; any other client must AUTH first,
/// and AUTH is offered only over TLS. The certificate is the server's.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Where to listen, e.g. `0.0.0.0:587`.
    pub address: SocketAddr,
    /// How TLS starts on this port.
    pub tls: ListenerTls,
}

/// How TLS starts on a `[[listener]]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    /// Plaintext greeting, then STARTTLS (port 587); AUTH only after it.
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// `[auth]`: authenticated submission. The users file is read at `serve` start (see
/// [`Users`]), not here, so that `smarthost user add` can create it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The users file (TOML, `[[user]]` entries); none: no users.
    pub users_file: Option<PathBuf>,
    /// Failed AUTH attempts from one client address before it is locked out.
    pub max_failures: u32,
    /// How long a locked-out client address waits.
    #[serde(deserialize_with = "values::duration")]
    pub lockout: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            users_file: None,
            max_failures: 5,
            lockout: Duration::from_secs(15 * 60),
        }
    }
}

/// `[[route]]`: one app's way out. Routes are tried in order at MAIL FROM and the first
/// whose every condition holds is the message's; a route without conditions matches
/// all. The message may then use only the route's upstreams, with the usual priority,
/// weight, breaker and failover among them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Its name (logs, metrics, `smarthost route`).
    pub name: String,
    /// Envelope sender patterns (any matches); empty: any sender.
    #[serde(default, deserialize_with = "values::globs")]
    pub senders: Vec<AddressGlob>,
    /// Client networks (any contains the client); empty: any client.
    #[serde(default, deserialize_with = "values::networks")]
    pub clients: Vec<IpNet>,
    /// Authenticated submitters (any is the user); empty: any submitter, and clients
    /// that did not authenticate.
    #[serde(default, deserialize_with = "values::names")]
    pub users: Vec<String>,
    /// Names of `[[upstream]]` entries this route may use.
    #[serde(deserialize_with = "values::names")]
    pub upstreams: Vec<String>,
}

impl RouteConfig {
    /// Whether a message from `sender` (None: the null sender), sent by `client` as
    /// `user` (None: not authenticated), takes this route.
    pub fn matches(
        &self,
        sender: Option<&str>,
        client: std::net::IpAddr,
        user: Option<&str>,
    ) -> bool {
        let sender_ok =
            self.senders.is_empty() || sender.is_some_and(|s| any_matches(&self.senders, s));
        let client_ok = self.clients.is_empty() || self.clients.iter().any(|n| n.contains(&client));
        let user_ok =
            self.users.is_empty() || user.is_some_and(|u| self.users.iter().any(|name| name == u));
        sender_ok && client_ok && user_ok
    }
}

impl Config {
    /// The route a message takes: the first that matches. `None` when no route matches
    /// (then, with routes configured, the message is refused) or none is configured.
    pub fn route_for(
        &self,
        sender: Option<&str>,
        client: std::net::IpAddr,
        user: Option<&str>,
    ) -> Option<&RouteConfig> {
        first_route(&self.route, sender, client, user)
    }
}

/// The first of `routes` that a message from `sender` (None: the null sender), sent by
/// `client` as `user`, takes: the one rule shared by MAIL FROM and `smarthost route`.
pub fn first_route<'a>(
    routes: &'a [RouteConfig],
    sender: Option<&str>,
    client: std::net::IpAddr,
    user: Option<&str>,
) -> Option<&'a RouteConfig> {
    routes.iter().find(|r| r.matches(sender, client, user))
}

/// `[policy]`: rules on the envelope and the From address, judged as early as they can
/// be (a sender at MAIL FROM, a recipient at RCPT, the From address after DATA); each
/// refusal is a `550 5.7.1` naming the rule.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The envelope sender and the From address must each match one (empty: any).
    #[serde(deserialize_with = "values::globs")]
    pub allowed_senders: Vec<AddressGlob>,
    /// Every recipient must match one (empty: any).
    #[serde(deserialize_with = "values::globs")]
    pub allowed_recipients: Vec<AddressGlob>,
    /// Every message goes to this address instead of its recipients, which are kept in
    /// `X-Original-To` fields (a staging relay that must never reach a customer).
    #[serde(deserialize_with = "values::optional_address")]
    pub redirect_all_to: Option<crate::proto::Address>,
}

impl PolicyConfig {
    /// Whether `address` may be a sender (envelope or From).
    pub fn sender_allowed(&self, address: &str) -> bool {
        self.allowed_senders.is_empty() || any_matches(&self.allowed_senders, address)
    }

    /// Whether `address` may be a recipient.
    pub fn recipient_allowed(&self, address: &str) -> bool {
        self.allowed_recipients.is_empty() || any_matches(&self.allowed_recipients, address)
    }
}

/// `[server]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Name used in the banner, the EHLO reply and `Received` headers.
    pub hostname: String,
    /// Addresses to listen on for SMTP.
    #[serde(deserialize_with = "values::socket_addrs")]
    pub listen: Vec<SocketAddr>,
    /// Clients allowed to relay; anyone else gets `554 5.7.1`.
    #[serde(deserialize_with = "values::networks")]
    pub trusted_networks: Vec<IpNet>,
    /// Largest message accepted, in octets; advertised as `SIZE`.
    pub max_message_size: u64,
    /// Simultaneous client connections in all.
    pub max_connections: usize,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Simultaneous connections from one client address.
    pub max_connections_per_client: usize,
    /// How long sessions may take to finish after SIGTERM.
    #[serde(deserialize_with = "values::duration")]
    pub shutdown_grace: Duration,
    /// How long the server waits for the next command or chunk of message data
    /// (RFC 5321 §4.5.3.2 asks for at least 5 minutes).
    #[serde(deserialize_with = "values::duration")]
    pub command_timeout: Duration,
    /// Certificate chain (PEM) for inbound STARTTLS; STARTTLS is offered only with both files.
    pub tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) for inbound STARTTLS.
    pub tls_key_file: Option<PathBuf>,
    /// Permit a `trusted_networks` entry that covers every address (`0.0.0.0/0`, `::/0`).
    pub allow_open_relay: bool,
    /// Expect a PROXY protocol header (v1 or v2) before SMTP on every listener, so the
    /// real client address is what `trusted_networks` judges.
    pub proxy_protocol: bool,
    /// The proxies allowed to send that header; anyone else is refused.
    #[serde(deserialize_with = "values::networks")]
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: "smarthost.local".into(),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            trusted_networks: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            max_message_size: 25 * 1024 * 1024,
            max_connections: 1024,
            max_recipients: 1000,
            max_connections_per_client: 256,
            shutdown_grace: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            tls_cert_file: None,
            tls_key_file: None,
            allow_open_relay: false,
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[spool]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory of the durable queue.
    pub dir: PathBuf,
    /// New mail is refused with `452 4.3.1` while the spool's file system is fuller than
    /// this (percent).
    pub max_disk_usage: u8,
    /// Message content kept in memory for delivery, in octets; beyond it queued mail
    /// waits on disk only and is read back when due.
    pub memory_limit: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: "data/spool".into(),
            max_disk_usage: 95,
            memory_limit: 16 * 1024 * 1024,
        }
    }
}

/// When the client is told `250`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum DeliveryMode {
    /// `250` once the message is durable on disk; delivery follows.
    Queue,
    /// `250` only once an upstream accepted the message.
    Passthrough,
}

/// `[delivery]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// `queue` or `passthrough`.
    pub mode: DeliveryMode,
    /// How long a message may wait for delivery before it is bounced.
    #[serde(deserialize_with = "values::duration")]
    pub max_queue_lifetime: Duration,
    /// First delay after a failed attempt; it doubles per attempt (with jitter).
    #[serde(deserialize_with = "values::duration")]
    pub retry_base: Duration,
    /// Longest delay between attempts.
    #[serde(deserialize_with = "values::duration")]
    pub retry_max: Duration,
    /// Consecutive upstream-level failures (connection, TLS, AUTH, 421) that open an
    /// upstream's circuit breaker.
    pub breaker_threshold: u32,
    /// First cool-down of an open breaker; it doubles after each failed probe.
    #[serde(deserialize_with = "values::duration")]
    pub breaker_cooldown: Duration,
    /// Longest cool-down.
    #[serde(deserialize_with = "values::duration")]
    pub breaker_max_cooldown: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            mode: DeliveryMode::Queue,
            max_queue_lifetime: Duration::from_secs(2 * 24 * 3600),
            retry_base: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(30),
            breaker_max_cooldown: Duration::from_secs(600),
        }
    }
}

/// Recipients per transaction to an upstream unless configured (or set by a preset):
/// RFC 5321 §4.5.3.1.8 requires servers to take at least 100.
pub const DEFAULT_MAX_RECIPIENTS: usize = 100;

/// Messages per pooled connection unless configured or set by a preset.
pub const DEFAULT_MAX_MESSAGES_PER_CONNECTION: usize = 100;

/// One `[[upstream]]`.
///
/// Deserialized from [`RawUpstream`], which has `url` and `provider` both optional;
/// exactly one must be given, and `url` is always set here.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawUpstream")]
pub struct UpstreamConfig {
    /// Name in logs and metrics; defaults to the URL's host (or `maildir`).
    pub name: Option<String>,
    /// Where and how to connect; see [`UpstreamUrl`]. Filled from `provider` if given.
    pub url: UpstreamUrl,
    /// The preset this upstream was configured with, if any.
    pub provider: Option<Provider>,
    /// Account for AUTH (overrides the URL's user).
    pub username: Option<String>,
    /// Password for AUTH (overrides the URL's password).
    pub password: Option<Secret>,
    /// File holding the password (Docker secrets); trailing newlines are ignored.
    pub password_file: Option<PathBuf>,
    /// Lower is tried first.
    pub priority: i32,
    /// Share among upstreams of equal priority.
    pub weight: u32,
    /// Simultaneous connections to this upstream.
    pub max_connections: usize,
    /// Force the envelope sender and From address to this account. With a provider
    /// that requires From = the account, it defaults to the username.
    pub sender: Option<String>,
    /// Verify the upstream's certificate (default true).
    pub tls_verify: bool,
    /// Extra CA certificate(s) (PEM) to trust for this upstream.
    pub ca_file: Option<PathBuf>,
    /// Allow AUTH over a connection without TLS (default false).
    pub allow_plaintext_auth: bool,
    /// OAuth 2.0 access token for AUTH XOAUTH2 (instead of a password).
    pub oauth_token: Option<Secret>,
    /// File holding the OAuth 2.0 access token; read again for every new connection, so
    /// an external refresher can keep it current.
    pub oauth_token_file: Option<PathBuf>,
    /// `[upstream.oauth]`: tokens fetched and refreshed by the relay (completed by
    /// validation: the preset's endpoints filled in, secret files read).
    pub oauth: Option<OAuthConfig>,
    /// Messages sent over one connection before it is closed and a new one opened.
    pub max_messages_per_connection: usize,
    /// Recipients per transaction: more are sent in several transactions (one `MAIL`
    /// each) on the same connection. Default [`DEFAULT_MAX_RECIPIENTS`], or the
    /// provider's documented cap for a preset.
    pub max_recipients: usize,
    /// Limit for connecting, the TLS handshake, each reply but the last, and each write.
    pub timeout: Duration,
    /// Limit for the reply to the end of the message data.
    pub data_timeout: Duration,
    /// Name to give in EHLO (default: `server.hostname`).
    pub helo_name: Option<String>,
    /// Most messages per time unit, e.g. `"30/min"` (Microsoft 365's limit); mail over
    /// it waits in the queue.
    pub rate_limit: Option<RateLimit>,
    /// Most messages per day (UTC); mail over it waits in the queue for the next day.
    pub daily_limit: Option<u64>,
}

/// One `[[upstream]]` as written: `url` or `provider`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Name in logs and metrics; defaults to the URL's host (or `maildir`).
    pub name: Option<String>,
    /// Where and how to connect; see [`UpstreamUrl`].
    pub url: Option<UpstreamUrl>,
    /// A provider preset standing for the URL; see [`Provider`].
    pub provider: Option<Provider>,
    /// Account for AUTH (overrides the URL's user).
    pub username: Option<String>,
    /// Password for AUTH (overrides the URL's password).
    pub password: Option<Secret>,
    /// File holding the password (Docker secrets); trailing newlines are ignored.
    pub password_file: Option<PathBuf>,
    /// Lower is tried first.
    #[serde(default)]
    pub priority: i32,
    /// Share among upstreams of equal priority.
    #[serde(default = "values::one")]
    pub weight: u32,
    /// Simultaneous connections to this upstream.
    #[serde(default = "values::four")]
    pub max_connections: usize,
    /// Force the envelope sender and From address to this account.
    pub sender: Option<String>,
    /// Verify the upstream's certificate (default true).
    #[serde(default = "values::yes")]
    pub tls_verify: bool,
    /// Extra CA certificate(s) (PEM) to trust for this upstream.
    pub ca_file: Option<PathBuf>,
    /// Allow AUTH over a connection without TLS (default false).
    #[serde(default)]
    pub allow_plaintext_auth: bool,
    /// OAuth 2.0 access token for AUTH XOAUTH2 (instead of a password).
    pub oauth_token: Option<Secret>,
    /// File holding the OAuth 2.0 access token; read again for every new connection, so
    /// an external refresher can keep it current.
    pub oauth_token_file: Option<PathBuf>,
    /// `[upstream.oauth]`: tokens fetched and refreshed by the relay.
    pub oauth: Option<OAuthConfig>,
    /// Messages sent over one connection before it is closed and a new one opened
    /// (default: the preset's documented cap, else
    /// [`DEFAULT_MAX_MESSAGES_PER_CONNECTION`]).
    pub max_messages_per_connection: Option<usize>,
    /// Recipients per transaction (default: the preset's cap, else
    /// [`DEFAULT_MAX_RECIPIENTS`]).
    pub max_recipients: Option<usize>,
    /// Limit for connecting, the TLS handshake, and each reply.
    #[serde(
        default = "values::thirty_seconds",
        deserialize_with = "values::duration"
    )]
    pub timeout: Duration,
    /// Limit for the reply to the end of the message data (RFC 5321 §4.5.3.2.6).
    #[serde(default = "values::ten_minutes", deserialize_with = "values::duration")]
    pub data_timeout: Duration,
    /// Name to give in EHLO (default: `server.hostname`).
    pub helo_name: Option<String>,
    /// Most messages per time unit, e.g. `"30/min"` (Microsoft 365's limit); mail over
    /// it waits in the queue.
    pub rate_limit: Option<RateLimit>,
    /// Most messages per day (UTC); mail over it waits in the queue for the next day.
    pub daily_limit: Option<u64>,
}

impl TryFrom<RawUpstream> for UpstreamConfig {
    type Error = String;

    fn try_from(raw: RawUpstream) -> Result<UpstreamConfig, String> {
        let url = match (raw.url, &raw.provider) {
            (Some(url), None) => url,
            (None, Some(provider)) => provider.url(),
            (Some(_), Some(provider)) => {
                return Err(format!(
                    "both `url` and `provider` (\"{provider}\") are set; give exactly one: the preset stands for the URL {}",
                    provider.url()
                ));
            }
            (None, None) => {
                return Err(format!(
                    "needs `url` (\"smtps://host:465\", \"smtp://host:587\" or \"maildir:PATH\") or `provider` (one of {})",
                    provider::PRESETS
                ));
            }
        };
        let max_recipients = raw.max_recipients.unwrap_or_else(|| {
            raw.provider
                .as_ref()
                .and_then(Provider::max_recipients)
                .unwrap_or(DEFAULT_MAX_RECIPIENTS)
        });
        let max_messages_per_connection = raw.max_messages_per_connection.unwrap_or_else(|| {
            raw.provider
                .as_ref()
                .and_then(Provider::max_messages_per_connection)
                .unwrap_or(DEFAULT_MAX_MESSAGES_PER_CONNECTION)
        });
        Ok(UpstreamConfig {
            url,
            provider: raw.provider,
            name: raw.name,
            username: raw.username,
            password: raw.password,
            password_file: raw.password_file,
            priority: raw.priority,
            weight: raw.weight,
            max_connections: raw.max_connections,
            sender: raw.sender,
            tls_verify: raw.tls_verify,
            ca_file: raw.ca_file,
            allow_plaintext_auth: raw.allow_plaintext_auth,
            oauth_token: raw.oauth_token,
            oauth_token_file: raw.oauth_token_file,
            oauth: raw.oauth,
            max_messages_per_connection,
            max_recipients,
            timeout: raw.timeout,
            data_timeout: raw.data_timeout,
            helo_name: raw.helo_name,
            rate_limit: raw.rate_limit,
            daily_limit: raw.daily_limit,
        })
    }
}

/// `N/s`, `N/min`, `N/h`: at most N messages per period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RateLimit {
    /// Messages allowed per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl TryFrom<String> for RateLimit {
    type Error = String;
    fn try_from(text: String) -> Result<RateLimit, String> {
        let bad =
            || format!("invalid rate {text:?}: write it like \"30/min\", \"5/s\" or \"1000/h\"");
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "min" | "minute" | "m" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!(
                "invalid rate {text:?}: the count must be at least 1"
            ));
        }
        Ok(RateLimit { count, per })
    }
}

impl std::fmt::Display for RateLimit {
    /// The configuration form: `30/min`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s".to_owned(),
            60 => "min".to_owned(),
            3600 => "h".to_owned(),
            86_400 => "d".to_owned(),
            secs => format!("{secs}s"),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl UpstreamConfig {
    /// The name used in logs: the configured one or one derived from the URL.
    pub fn display_name(&self) -> String {
        match (&self.name, &self.url) {
            (Some(name), _) => name.clone(),
            (None, UpstreamUrl::Smtp { host, port, .. }) => format!("{host}:{port}"),
            (None, UpstreamUrl::Maildir { .. }) => "maildir".into(),
        }
    }
}

/// DKIM signing algorithm.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum DkimAlgorithm {
    /// RSA with SHA-256 (RFC 6376).
    RsaSha256,
    /// Ed25519 with SHA-256 (RFC 8463).
    Ed25519Sha256,
}

values::word_enum!(DkimAlgorithm { RsaSha256 = "rsa-sha256", Ed25519Sha256 = "ed25519-sha256" });
values::word_enum!(DeliveryMode { Queue = "queue", Passthrough = "passthrough" });
values::word_enum!(LogFormat { Text = "text", Json = "json" });
values::word_enum!(HeaderAction { Remove = "remove", Set = "set", Add = "add" });

/// One `[[dkim]]` signing key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// Domain signed for (`d=`); also covers its subdomains.
    pub domain: String,
    /// Selector (`s=`).
    #[serde(default = "values::selector")]
    pub selector: String,
    /// PEM private key.
    pub key_file: PathBuf,
    /// `rsa-sha256` or `ed25519-sha256`.
    #[serde(default = "values::rsa")]
    pub algorithm: DkimAlgorithm,
    /// Create the key on first start if it is missing (never overwrites).
    #[serde(default)]
    pub generate: bool,
}

/// What a `[[header_rule]]` does to the fields of its name.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum HeaderAction {
    /// Every field of that name goes.
    Remove,
    /// The first field of that name gets the value and any others go; added if absent.
    Set,
    /// One more field of that name is appended.
    Add,
}

/// One `[[header_rule]]`. Validation guarantees `value` for `set` and `add` and none for
/// `remove`, a valid field name other than those the transform owns
/// ([`PROTECTED_HEADERS`]), and a value that is one line of printable text.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeaderRule {
    /// `remove`, `set` or `add`.
    pub action: HeaderAction,
    /// The field name, compared without case.
    pub name: String,
    /// The field value (`set` and `add` only), written as given after `Name: `.
    pub value: Option<String>,
}

/// Header fields that normalisation and DKIM signing own: no `[[header_rule]]` may name
/// them (SPEC: routes and envelope policy).
pub const PROTECTED_HEADERS: [&str; 5] = ["From", "Sender", "Date", "Message-ID", "DKIM-Signature"];

/// `[transform]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformConfig {
    /// Leave the client's IP address and HELO name out of our `Received` header.
    pub hide_client: bool,
}

/// `[metrics]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint (`/metrics`, `/healthz`, `/readyz`); `"off"` (the
    /// default when a file leaves it out) serves none.
    #[serde(deserialize_with = "values::optional_addr")]
    pub listen: Option<SocketAddr>,
    /// A file holding the password of HTTP Basic authentication (user `admin`) for
    /// every endpoint but `/healthz` and `/readyz`; read at start, trailing newlines
    /// trimmed. Empty (`SMARTHOST__METRICS__PASSWORD_FILE=`) means none.
    pub password_file: Option<PathBuf>,
    /// The password read from `password_file` (filled in by validation; never in a
    /// file itself).
    #[serde(skip)]
    pub password: Option<Secret>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
}
