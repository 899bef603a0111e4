//! Checks that need more than one key, defaults that depend on other keys, and secrets
//! read from files: one function per section. Each returns the key at fault and the
//! message with the fix.

use std::collections::HashSet;

mod route;

use super::values::Secret;
use super::{
    AuthConfig, Config, DeliveryConfig, DkimConfig, HeaderAction, HeaderRule, MetricsConfig,
    PROTECTED_HEADERS, ServerConfig, SpoolConfig, UpstreamConfig, UpstreamUrl,
};

/// An error: the key (`server.listen`, `upstream[0].timeout`) and what to do.
type Invalid = (String, String);

/// Validate and complete `config`, section by section.
pub(super) fn validate(config: &mut Config) -> Result<(), Invalid> {
    server(&config.server)?;
    upstreams(&mut config.upstream)?;
    spool(&config.spool)?;
    delivery(&config.delivery)?;
    dkim(&mut config.dkim)?;
    header_rules(&config.header_rule)?;
    auth(&mut config.auth)?;
    listeners(&config.listener, &config.server)?;
    cluster(&mut config.cluster)?;
    metrics(&mut config.metrics)?;
    route::routes(&config.route, &config.upstream)
}

/// `[server]`.
fn server(server: &ServerConfig) -> Result<(), Invalid> {
    if server.listen.is_empty() {
        return Err((
            "server.listen".into(),
            "needs at least one address, e.g. \"127.0.0.1:2525\"".into(),
        ));
    }
    if server.hostname.trim().is_empty() || server.hostname.contains(char::is_whitespace) {
        return Err((
            "server.hostname".into(),
            "must be a host name without spaces".into(),
        ));
    }
    for (key, value) in [
        ("server.max_connections", server.max_connections),
        ("server.max_recipients", server.max_recipients),
        (
            "server.max_connections_per_client",
            server.max_connections_per_client,
        ),
    ] {
        if value == 0 {
            return Err((key.into(), "must be at least 1".into()));
        }
    }
    if server.max_message_size < 1024 {
        return Err((
            "server.max_message_size".into(),
            "must be at least 1024 octets".into(),
        ));
    }
    if server.command_timeout.is_zero() {
        return Err((
            "server.command_timeout".into(),
            "must be longer than zero".into(),
        ));
    }
    if server.tls_cert_file.is_some() != server.tls_key_file.is_some() {
        return Err((
            "server.tls_cert_file".into(),
            "STARTTLS needs both server.tls_cert_file and server.tls_key_file".into(),
        ));
    }
    if !server.allow_open_relay {
        if let Some(net) = covers_every_address(&server.trusted_networks) {
            return Err((
                "server.trusted_networks".into(),
                format!(
                    "{net} trusts every address, which makes this relay an open relay: anyone who can reach \
                     the SMTP port can send mail through your upstream accounts (spam under your name, suspended \
                     accounts, blocklisted addresses). List only the networks of your apps, e.g. \
                     \"10.0.0.0/8, 172.16.0.0/12\" (Docker's default bridge networks are in 172.16.0.0/12); \
                     if a firewall or a private network already limits who reaches the port and you accept \
                     the risk, set server.allow_open_relay = true (SMARTHOST__SERVER__ALLOW_OPEN_RELAY=true)"
                ),
            ));
        }
        // A trusted proxy vouches for the client address it reports: trusting every
        // proxy lets any client claim a trusted address in its PROXY header.
        if let Some(net) = covers_every_address(&server.trusted_proxies) {
            return Err((
                "server.trusted_proxies".into(),
                format!(
                    "{net} trusts every address as a proxy, which makes this relay an open relay: any client \
                     can send a PROXY header claiming an address in trusted_networks. List only your proxies or \
                     load balancers (e.g. the Docker bridge gateway \"172.17.0.1/32\"); if a firewall already \
                     limits who reaches the port and you accept the risk, set server.allow_open_relay = true \
                     (SMARTHOST__SERVER__ALLOW_OPEN_RELAY=true)"
                ),
            ));
        }
    }
    if server.proxy_protocol && server.trusted_proxies.is_empty() {
        return Err((
            "server.trusted_proxies".into(),
            "server.proxy_protocol is on but no proxy is trusted: list the proxies' addresses (e.g. the Docker bridge gateway or the load balancer), or turn proxy_protocol off".into(),
        ));
    }
    Ok(())
}

/// Every `[[upstream]]`: at least one, names distinct, each valid.
fn upstreams(upstreams: &mut [UpstreamConfig]) -> Result<(), Invalid> {
    if upstreams.is_empty() {
        return Err((
            "upstream".into(),
            format!(
                "no upstream configured: add an [[upstream]] with url = \"smtps://host:465\", \"smtp://host:587\" or \"maildir:PATH\", \
                 or with provider = one of {} (or set SMARTHOST__UPSTREAM__0__URL or SMARTHOST__UPSTREAM__0__PROVIDER)",
                super::provider::PRESETS
            ),
        ));
    }
    let mut names = HashSet::new();
    for (i, up) in upstreams.iter_mut().enumerate() {
        let key = |k: &str| format!("upstream[{i}].{k}");
        if !names.insert(up.display_name()) {
            return Err((
                key("name"),
                format!(
                    "two upstreams are named {:?}; give each a distinct name",
                    up.display_name()
                ),
            ));
        }
        upstream_credentials(up, &key)?;
        upstream_sender(up, &key)?;
        upstream_limits(up, &key)?;
    }
    Ok(())
}

/// Credentials: password_file read, URL user and password, preset defaults, empty
/// meaning none, `[upstream.oauth]` completed and exclusive of the other secrets.
fn upstream_credentials(
    up: &mut UpstreamConfig,
    key: &dyn Fn(&str) -> String,
) -> Result<(), Invalid> {
    if let Some(file) = &up.password_file {
        if up.password.is_some() {
            return Err((
                key("password_file"),
                "give either password or password_file, not both".into(),
            ));
        }
        let secret = std::fs::read_to_string(file).map_err(|e| {
            (
                key("password_file"),
                format!("cannot read {}: {e}", file.display()),
            )
        })?;
        up.password = Some(Secret::new(secret.trim_end_matches(['\r', '\n'])));
    }
    if let UpstreamUrl::Smtp {
        username, password, ..
    } = &up.url
    {
        if up.username.is_none() {
            up.username = username.clone();
        }
        if up.password.is_none() {
            up.password = password.clone();
        }
    }
    if up.username.is_none()
        && let Some(default) = up.provider.as_ref().and_then(|p| p.default_username())
    {
        up.username = Some(default.to_owned());
    }
    // Empty credentials mean "no AUTH", never an AUTH with empty strings.
    if up.username.as_deref() == Some("") {
        up.username = None;
    }
    if up.password.as_ref().is_some_and(|p| p.expose().is_empty()) {
        up.password = None;
    }
    let name = up.display_name();
    if let Some(oauth) = &mut up.oauth {
        oauth
            .resolve(up.provider.as_ref(), &name)
            .map_err(|(k, why)| (key(&format!("oauth.{k}")), why))?;
        let other = if up.password.is_some() {
            Some("password")
        } else if up.oauth_token.is_some() {
            Some("oauth_token")
        } else if up.oauth_token_file.is_some() {
            Some("oauth_token_file")
        } else {
            None
        };
        if let Some(other) = other {
            return Err((
                key(other),
                format!(
                    "[upstream.oauth] fetches the tokens for this upstream; remove {other} (XOAUTH2 uses the fetched token instead)"
                ),
            ));
        }
        if up.username.is_none() {
            return Err((
                key("username"),
                "[upstream.oauth] needs the mailbox to send as: set username (the XOAUTH2 user, e.g. \"relay@contoso.com\")".into(),
            ));
        }
    }
    let has_secret =
        up.password.is_some() || up.oauth_token.is_some() || up.oauth_token_file.is_some();
    if has_secret && up.username.is_none() {
        return Err((
            key("username"),
            "a password or token is configured but no username; set username (or put it in the URL)"
                .into(),
        ));
    }
    if up.oauth_token.is_some() && up.oauth_token_file.is_some() {
        return Err((
            key("oauth_token_file"),
            "give either oauth_token or oauth_token_file, not both".into(),
        ));
    }
    if (up.oauth_token.is_some() || up.oauth_token_file.is_some()) && up.password.is_some() {
        return Err((
            key("oauth_token"),
            "give either a password or an OAuth token, not both".into(),
        ));
    }
    Ok(())
}

/// `sender`: defaulted to the account where the provider demands it, and an address.
fn upstream_sender(up: &mut UpstreamConfig, key: &dyn Fn(&str) -> String) -> Result<(), Invalid> {
    if let Some(provider) = &up.provider
        && provider.from_must_be_account()
        && up.sender.is_none()
        && let Some(username) = &up.username
    {
        if crate::proto::Address::parse(username).is_err() {
            return Err((
                key("username"),
                format!(
                    "{provider} accepts mail only From the account, so sender defaults to the username, \
                     but {username:?} is not an email address; give the full address as username (or set sender)"
                ),
            ));
        }
        up.sender = Some(username.clone());
    }
    if let Some(sender) = &up.sender
        && crate::proto::Address::parse(sender).is_err()
    {
        return Err((key("sender"), format!("{sender:?} is not an email address")));
    }
    Ok(())
}

/// Pool, recipient and time limits.
fn upstream_limits(up: &UpstreamConfig, key: &dyn Fn(&str) -> String) -> Result<(), Invalid> {
    if up.weight == 0 {
        return Err((key("weight"), "must be at least 1".into()));
    }
    if up.max_connections == 0 {
        return Err((key("max_connections"), "must be at least 1".into()));
    }
    if up.max_messages_per_connection == 0 {
        return Err((
            key("max_messages_per_connection"),
            "must be at least 1".into(),
        ));
    }
    if up.max_recipients == 0 {
        return Err((key("max_recipients"), "must be at least 1".into()));
    }
    if up.timeout.is_zero() {
        return Err((key("timeout"), "must be longer than zero".into()));
    }
    if up.data_timeout < up.timeout {
        return Err((
            key("data_timeout"),
            format!(
                "must be at least `timeout` ({:?}): it bounds the wait for the reply to the whole message, which takes the server longest (RFC 5321 suggests 10 minutes)",
                up.timeout
            ),
        ));
    }
    if up.daily_limit == Some(0) {
        return Err((
            key("daily_limit"),
            "must be at least 1 (leave it out for no daily limit)".into(),
        ));
    }
    Ok(())
}

/// `[spool]`.
fn spool(spool: &SpoolConfig) -> Result<(), Invalid> {
    if !(1..=100).contains(&spool.max_disk_usage) {
        return Err((
            "spool.max_disk_usage".into(),
            "must be a percentage from 1 to 100".into(),
        ));
    }
    if spool.memory_limit < MIN_MEMORY_LIMIT {
        return Err((
            "spool.memory_limit".into(),
            format!(
                "must be at least {MIN_MEMORY_LIMIT} (1 MiB): a message's header block and the first part of its body are held in memory while it is received"
            ),
        ));
    }
    Ok(())
}

/// The smallest `spool.memory_limit`.
const MIN_MEMORY_LIMIT: u64 = 1024 * 1024;

/// `[auth]`: an empty `users_file` (`SMARTHOST__AUTH__USERS_FILE=`) means none.
fn auth(auth: &mut AuthConfig) -> Result<(), Invalid> {
    if auth
        .users_file
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        auth.users_file = None;
    }
    if auth.max_failures == 0 {
        return Err((
            "auth.max_failures".into(),
            "must be at least 1 (failed AUTH attempts from one client address before its lockout)"
                .into(),
        ));
    }
    if auth.lockout.is_zero() {
        return Err((
            "auth.lockout".into(),
            "must be longer than zero, e.g. \"15m\"".into(),
        ));
    }
    Ok(())
}

/// `[metrics]`: the password of `password_file` read (an empty path means none).
fn metrics(metrics: &mut MetricsConfig) -> Result<(), Invalid> {
    metrics.password = None;
    let Some(file) = metrics
        .password_file
        .as_ref()
        .filter(|p| !p.as_os_str().is_empty())
    else {
        metrics.password_file = None;
        return Ok(());
    };
    let text = std::fs::read_to_string(file).map_err(|e| {
        (
            "metrics.password_file".into(),
            format!(
                "cannot read {}: {e}; make the file readable by smarthost, or remove password_file",
                file.display()
            ),
        )
    })?;
    let password = text.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err((
            "metrics.password_file".into(),
            format!(
                "{} is empty: write the password for the HTTP endpoint (user admin) into it, or remove password_file",
                file.display()
            ),
        ));
    }
    metrics.password = Some(Secret::new(password));
    Ok(())
}

/// `[cluster]`: a `redis://` store, the password file read, a node name.
fn cluster(cluster: &mut super::ClusterConfig) -> Result<(), Invalid> {
    if cluster
        .store
        .as_ref()
        .is_some_and(|s| s.expose().trim().is_empty())
    {
        cluster.store = None;
    }
    let Some(store) = &cluster.store else {
        if cluster.store_password_file.is_some() {
            return Err((
                "cluster.store_password_file".into(),
                "is set but cluster.store is not: give the store's URL, e.g. \"redis://valkey:6379/0\"".into(),
            ));
        }
        return Ok(());
    };
    let url = store.expose();
    let scheme = if url.starts_with("rediss://") {
        "rediss://"
    } else if url.starts_with("redis://") {
        "redis://"
    } else {
        return Err((
            "cluster.store".into(),
            "must be a redis:// or rediss:// (TLS) URL, e.g. \"redis://valkey:6379/0\" (Valkey, or Redis 6 or later)".into(),
        ));
    };
    if let Some(ca) = &cluster.store_ca_file {
        if scheme != "rediss://" {
            return Err((
                "cluster.store_ca_file".into(),
                "is only for a rediss:// (TLS) store".into(),
            ));
        }
        crate::tls::load_certificates(ca)
            .map_err(|e| ("cluster.store_ca_file".into(), e.to_string()))?;
    }
    if let Some(file) = &cluster.store_password_file {
        let password = std::fs::read_to_string(file).map_err(|e| {
            (
                "cluster.store_password_file".into(),
                format!("cannot read {}: {e}", file.display()),
            )
        })?;
        let password = password.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err((
                "cluster.store_password_file".into(),
                format!(
                    "{} is empty: put the store's password in it",
                    file.display()
                ),
            ));
        }
        let rest = &url[scheme.len()..];
        if rest.contains('@') {
            return Err((
                "cluster.store_password_file".into(),
                "cluster.store already has credentials: give the password in one place".into(),
            ));
        }
        let encoded =
            percent_encoding::utf8_percent_encode(password, percent_encoding::NON_ALPHANUMERIC);
        cluster.store = Some(Secret::new(format!("{scheme}:{encoded}@{rest}")));
    }
    if cluster.namespace.is_empty() || cluster.namespace.contains(char::is_whitespace) {
        return Err((
            "cluster.namespace".into(),
            "must be a non-empty name without spaces".into(),
        ));
    }
    if cluster.node.as_deref().is_some_and(|n| n.trim().is_empty()) {
        cluster.node = None;
    }
    Ok(())
}

/// Every `[[listener]]`: TLS needs the server's certificate, and no port twice.
fn listeners(listeners: &[super::ListenerConfig], server: &ServerConfig) -> Result<(), Invalid> {
    let mut seen: HashSet<std::net::SocketAddr> = server.listen.iter().copied().collect();
    for (i, listener) in listeners.iter().enumerate() {
        if server.tls_cert_file.is_none() {
            return Err((
                format!("listener[{i}].tls"),
                format!(
                    "the listener on {} needs a certificate: set server.tls_cert_file and server.tls_key_file \
                     (AUTH is offered only over TLS)",
                    listener.address
                ),
            ));
        }
        // Port 0 asks the system for a free port: never the same twice.
        if listener.address.port() != 0 && !seen.insert(listener.address) {
            return Err((
                format!("listener[{i}].address"),
                format!(
                    "{} is already a listening address (server.listen or an earlier listener): give each port once",
                    listener.address
                ),
            ));
        }
    }
    Ok(())
}

/// `[delivery]`.
fn delivery(delivery: &DeliveryConfig) -> Result<(), Invalid> {
    if delivery.retry_base.is_zero() || delivery.retry_base > delivery.retry_max {
        return Err((
            "delivery.retry_base".into(),
            "must be longer than zero and not longer than delivery.retry_max".into(),
        ));
    }
    if delivery.breaker_threshold == 0 {
        return Err((
            "delivery.breaker_threshold".into(),
            "must be at least 1".into(),
        ));
    }
    if delivery.breaker_cooldown > delivery.breaker_max_cooldown {
        return Err((
            "delivery.breaker_cooldown".into(),
            "must not be longer than delivery.breaker_max_cooldown".into(),
        ));
    }
    Ok(())
}

/// Every `[[dkim]]`: domains in A-labels, selectors valid.
fn dkim(keys: &mut [DkimConfig]) -> Result<(), Invalid> {
    for (i, dkim) in keys.iter_mut().enumerate() {
        // Signing matches the From domain as rewritten (A-labels), so the key's domain is
        // kept in A-labels too.
        if !dkim.domain.is_ascii() {
            dkim.domain = idna::domain_to_ascii(&dkim.domain).map_err(|_| {
                (
                    format!("dkim[{i}].domain"),
                    format!("{:?} is not a valid domain name", dkim.domain),
                )
            })?;
        }
        if dkim.domain.trim().is_empty() || dkim.domain.contains(['@', ' ']) {
            return Err((
                format!("dkim[{i}].domain"),
                format!("{:?} is not a domain name", dkim.domain),
            ));
        }
        if dkim.selector.is_empty()
            || !dkim
                .selector
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err((
                format!("dkim[{i}].selector"),
                format!("{:?} is not a valid DKIM selector", dkim.selector),
            ));
        }
    }
    Ok(())
}

/// The longest header line RFC 5322 §2.1.1 allows, without its CRLF.
const MAX_HEADER_LINE: usize = 998;

/// Every `[[header_rule]]`: a value exactly where the action takes one, a field name
/// the transform does not own, and a field that fits on one line.
fn header_rules(rules: &[HeaderRule]) -> Result<(), Invalid> {
    for (i, rule) in rules.iter().enumerate() {
        let key = |k: &str| format!("header_rule[{i}].{k}");
        header_rule_name(&rule.name).map_err(|why| (key("name"), why))?;
        match (rule.action, &rule.value) {
            (HeaderAction::Remove, Some(_)) => {
                return Err((
                    key("value"),
                    "action \"remove\" takes no value: every field of that name is removed; drop `value` (or use action \"set\" to replace the fields' value)".into(),
                ));
            }
            (HeaderAction::Set | HeaderAction::Add, None) => {
                return Err((
                    key("value"),
                    format!(
                        "action \"{}\" needs a value: add value = \"...\" (the text after `{}: `)",
                        rule.action, rule.name
                    ),
                ));
            }
            (_, Some(value)) => {
                header_rule_value(&rule.name, value).map_err(|why| (key("value"), why))?
            }
            (HeaderAction::Remove, None) => {}
        }
    }
    Ok(())
}

/// A field name: RFC 5322 `ftext` (printable ASCII but the colon), and none of the
/// fields normalisation and DKIM signing own.
fn header_rule_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| matches!(b, 33..=57 | 59..=126)) {
        return Err(format!(
            "{name:?} is not a header field name: use printable ASCII without spaces or `:` (RFC 5322 ftext), e.g. \"X-Mailer\""
        ));
    }
    if let Some(owned) = PROTECTED_HEADERS
        .iter()
        .find(|p| p.eq_ignore_ascii_case(name))
    {
        return Err(format!(
            "{owned} is written by smarthost itself (normalisation, DKIM signing) and cannot be changed by a header rule; the header fields a rule may not name are {}",
            PROTECTED_HEADERS.join(", ")
        ));
    }
    Ok(())
}

/// A field value: one unfolded line of printable text (ASCII or UTF-8), so that the
/// field a rule writes is exactly one header line.
fn header_rule_value(name: &str, value: &str) -> Result<(), String> {
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!(
            "contains the control character {c:?}: a value must be one line of printable text (no CR, LF, tab or other control characters; smarthost does not fold it)"
        ));
    }
    let line = name.len() + 2 + value.len();
    if line > MAX_HEADER_LINE {
        return Err(format!(
            "`{name}: ` and the value take {line} octets, over the {MAX_HEADER_LINE} a header line may have (RFC 5322 §2.1.1); shorten the value"
        ));
    }
    Ok(())
}

/// The networks of `nets` that together trust every address, written as the list gave
/// them, if they do (`0.0.0.0/0`, `::/0`, or halves such as `0.0.0.0/1, 128.0.0.0/1`).
fn covers_every_address(nets: &[ipnet::IpNet]) -> Option<String> {
    let aggregated = ipnet::IpNet::aggregate(&nets.to_vec());
    let everything = aggregated.iter().find(|n| n.prefix_len() == 0)?;
    let parts: Vec<String> = nets
        .iter()
        .filter(|n| everything.contains(*n))
        .map(ToString::to_string)
        .collect();
    Some(parts.join(", "))
}
