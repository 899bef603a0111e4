//! Loading: layer the sources, interpolate `${VAR}`, deserialize strictly, validate.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Config as Layers, File, FileFormat, Map, Source, Value, ValueKind};

use super::values::Secret;
use super::{Config, UpstreamUrl};

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "SMARTHOST__";

/// Environment variable naming the configuration file when `-c` is not given.
pub const ENV_CONFIG_FILE: &str = "SMARTHOST_CONFIG";

/// Where the base layer of the configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// The default compiled into the binary.
    Embedded,
    /// A TOML file.
    File(PathBuf),
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Embedded => f.write_str("the embedded default configuration"),
            ConfigSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A configuration that cannot be used. The text names the key, where it came from and
/// what would be valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{origin}: not valid TOML: {message}")]
    Syntax {
        /// The file.
        origin: String,
        /// The parser's message.
        message: String,
    },
    /// A key is unknown or its value invalid.
    #[error("{origin}: `{key}`: {message}")]
    Key {
        /// File, embedded default, or environment variable.
        origin: String,
        /// Dotted path of the key, e.g. `server.listen` or `upstream[0].url`.
        key: String,
        /// What is wrong and what is valid.
        message: String,
    },
}

/// Load the configuration the way `smarthost` does when started from a shell: the file
/// from `path`, else from `SMARTHOST_CONFIG`, else the embedded default; then the
/// process environment on top.
pub fn load_from_process(path: Option<&Path>) -> Result<(Config, ConfigSource), ConfigError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let source = match path {
        Some(p) => ConfigSource::File(p.to_owned()),
        None => match env.iter().find(|(k, _)| k == ENV_CONFIG_FILE) {
            Some((_, v)) if !v.is_empty() => ConfigSource::File(v.into()),
            _ => ConfigSource::Embedded,
        },
    };
    load(&source, &env).map(|c| (c, source))
}

/// Load from `source` with `env` as the environment (variables to interpolate and
/// `SMARTHOST__*` overrides).
pub fn load(source: &ConfigSource, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let origin = source.to_string();
    let text = match source {
        ConfigSource::Embedded => super::EMBEDDED_DEFAULT.to_owned(),
        ConfigSource::File(path) => {
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.clone(),
                source: e,
            })?
        }
    };
    let vars: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    let mut base = File::from_str(&text, FileFormat::Toml)
        .collect()
        .map_err(|e| ConfigError::Syntax {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
    for (key, value) in base.iter_mut() {
        interpolate(value, key, &vars).map_err(|(key, message)| ConfigError::Key {
            origin: origin.clone(),
            key,
            message,
        })?;
    }

    let overrides = EnvOverrides::from_env(env);
    overrides.replace_lower_layer_upstream_target(&mut base);
    let layers = Layers::builder()
        .add_source(Layer(base))
        .add_source(overrides.clone())
        .build()
        .map_err(|e| ConfigError::Syntax {
            origin: origin.clone(),
            message: e.to_string(),
        })?;

    let mut config: Config = serde_path_to_error::deserialize(layers).map_err(|e| {
        let mut key = e.path().to_string();
        let inner = e.inner().to_string();
        // The config crate words a missing field its own way, with the path glued on.
        if let Some(field) = inner
            .strip_prefix("missing configuration field \"")
            .and_then(|r| r.split('"').next())
        {
            let name = field.rsplit(['.', ']']).next().unwrap_or(field).to_owned();
            if key == "." || key.is_empty() {
                key = name.clone();
            } else {
                key = format!("{key}.{name}");
            }
            return ConfigError::Key {
                origin: overrides.origin_of(&key).unwrap_or_else(|| origin.clone()),
                message: format!("missing required key `{name}`"),
                key,
            };
        }
        ConfigError::Key {
            origin: overrides.origin_of(&key).unwrap_or_else(|| origin.clone()),
            message: humanize(&e.inner().to_string()),
            key,
        }
    })?;
    validate(&mut config).map_err(|(key, message)| ConfigError::Key {
        origin: overrides.origin_of(&key).unwrap_or(origin),
        key,
        message,
    })?;
    Ok(config)
}

/// Reword serde's messages in the configuration's vocabulary and drop the `config`
/// crate's suffix (we name the key and origin ourselves).
fn humanize(message: &str) -> String {
    let message = match message.find(" for key `") {
        Some(i) => &message[..i],
        None => message,
    };
    message
        .replace("unknown field", "unknown key")
        .replace("expected one of", "valid keys here are")
        .replace("unknown variant", "unknown value")
        .replace("missing field", "missing required key")
}

/// Replace `${VAR}` in every string below `value`; `$${` stands for a literal `${`.
/// On error returns the key at fault and the message.
fn interpolate(
    value: &mut Value,
    path: &str,
    vars: &HashMap<&str, &str>,
) -> Result<(), (String, String)> {
    match &mut value.kind {
        ValueKind::String(s) if s.contains("${") => {
            *s = expand(s, vars).map_err(|message| (path.to_owned(), message))?;
            Ok(())
        }
        ValueKind::Table(map) => map
            .iter_mut()
            .try_for_each(|(k, v)| interpolate(v, &format!("{path}.{k}"), vars)),
        ValueKind::Array(items) => items
            .iter_mut()
            .enumerate()
            .try_for_each(|(i, v)| interpolate(v, &format!("{path}[{i}]"), vars)),
        _ => Ok(()),
    }
}

fn expand(text: &str, vars: &HashMap<&str, &str>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let end = rest[i..]
            .find('}')
            .ok_or("unterminated ${ (write $${ for a literal ${)")?;
        let name = &rest[i + 2..i + end];
        let value = vars.get(name).ok_or_else(|| {
            format!("uses ${{{name}}} but the environment variable {name} is not set")
        })?;
        out.push_str(value);
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A layer of already-collected values.
#[derive(Clone, Debug)]
struct Layer(Map<String, Value>);

impl Source for Layer {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }
    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// `SMARTHOST__SECTION__KEY=value` variables as configuration keys.
///
/// `SMARTHOST__UPSTREAM__0__URL` sets `upstream[0].url`; without an index
/// (`SMARTHOST__UPSTREAM__URL`) the first list entry is meant.
#[derive(Clone, Debug)]
struct EnvOverrides {
    /// (configuration key, variable name, value)
    entries: Vec<(String, String, String)>,
}

impl EnvOverrides {
    fn from_env(env: &[(String, String)]) -> EnvOverrides {
        let entries = env
            .iter()
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix(ENV_PREFIX)?;
                Some((env_key(rest), name.clone(), value.clone()))
            })
            .collect();
        EnvOverrides { entries }
    }

    /// A `url` or `provider` set in the environment replaces the other one of the two
    /// from the file (or the embedded default), so `SMARTHOST__UPSTREAM__0__PROVIDER=gmail`
    /// works on top of the embedded default's Maildir URL. Both in one layer stay a
    /// conflict.
    fn replace_lower_layer_upstream_target(&self, base: &mut Map<String, Value>) {
        let Some(ValueKind::Array(entries)) = base.get_mut("upstream").map(|v| &mut v.kind) else {
            return;
        };
        for (i, entry) in entries.iter_mut().enumerate() {
            let ValueKind::Table(table) = &mut entry.kind else {
                continue;
            };
            let set = |k: &str| {
                self.entries
                    .iter()
                    .any(|(key, _, _)| *key == format!("upstream[{i}].{k}"))
            };
            let (url, provider) = (set("url"), set("provider"));
            if url && !provider {
                table.remove("provider");
            }
            if provider && !url {
                table.remove("url");
            }
        }
    }

    /// The variable that set `key` or one of its parents/children, if any.
    fn origin_of(&self, key: &str) -> Option<String> {
        self.entries
            .iter()
            .find(|(k, _, _)| {
                k == key || k.starts_with(&format!("{key}.")) || key.starts_with(&format!("{k}."))
            })
            .map(|(_, name, _)| format!("environment variable {name}"))
    }
}

/// `UPSTREAM__0__URL` → `upstream[0].url`.
fn env_key(rest: &str) -> String {
    let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    let mut key = String::new();
    for (i, part) in parts.iter().enumerate() {
        if part.parse::<usize>().is_ok() && i > 0 {
            key.push_str(&format!("[{part}]"));
            continue;
        }
        if i > 0 {
            key.push('.');
        }
        key.push_str(part);
        let is_list = matches!(part.as_str(), "upstream" | "dkim") && i == 0;
        let next_is_index = parts.get(i + 1).is_some_and(|p| p.parse::<usize>().is_ok());
        if is_list && !next_is_index && parts.len() > 1 {
            key.push_str("[0]");
        }
    }
    key
}

impl Source for EnvOverrides {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }
    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self
            .entries
            .iter()
            .map(|(key, name, value)| {
                (
                    key.clone(),
                    Value::new(Some(name), ValueKind::String(value.clone())),
                )
            })
            .collect())
    }
}

/// Checks that need more than one key, and secrets read from files. Returns the key at
/// fault and the message.
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

fn validate(config: &mut Config) -> Result<(), (String, String)> {
    let server = &config.server;
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
    if config.upstream.is_empty() {
        return Err((
            "upstream".into(),
            format!(
                "no upstream configured: add an [[upstream]] with url = \"smtps://host:465\", \"smtp://host:587\" or \"maildir:PATH\", \
                 or with provider = one of {} (or set SMARTHOST__UPSTREAM__0__URL or SMARTHOST__UPSTREAM__0__PROVIDER)",
                super::provider::PRESETS
            ),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, up) in config.upstream.iter_mut().enumerate() {
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
        if up.weight == 0 {
            return Err((key("weight"), "must be at least 1".into()));
        }
        if up.max_connections == 0 {
            return Err((key("max_connections"), "must be at least 1".into()));
        }
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
    }
    if !(1..=100).contains(&config.spool.max_disk_usage) {
        return Err((
            "spool.max_disk_usage".into(),
            "must be a percentage from 1 to 100".into(),
        ));
    }
    if config.delivery.retry_base.is_zero()
        || config.delivery.retry_base > config.delivery.retry_max
    {
        return Err((
            "delivery.retry_base".into(),
            "must be longer than zero and not longer than delivery.retry_max".into(),
        ));
    }
    if config.delivery.breaker_threshold == 0 {
        return Err((
            "delivery.breaker_threshold".into(),
            "must be at least 1".into(),
        ));
    }
    if config.delivery.breaker_cooldown > config.delivery.breaker_max_cooldown {
        return Err((
            "delivery.breaker_cooldown".into(),
            "must not be longer than delivery.breaker_max_cooldown".into(),
        ));
    }
    for (i, dkim) in config.dkim.iter_mut().enumerate() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DeliveryMode, TlsMode};
    use std::io::Write;

    fn file(text: &str) -> (tempfile::NamedTempFile, ConfigSource) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        let source = ConfigSource::File(f.path().to_owned());
        (f, source)
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const MINIMAL: &str = "[[upstream]]\nurl = \"maildir:/tmp/out\"\n";

    #[test]
    fn embedded_default_is_valid() {
        let c = load(&ConfigSource::Embedded, &[]).unwrap();
        assert_eq!(c.server.listen[0].to_string(), "127.0.0.1:2525");
        assert_eq!(c.delivery.mode, DeliveryMode::Queue);
        assert_eq!(c.upstream[0].url, "maildir:data/outbox".parse().unwrap());
    }

    #[test]
    fn a_file_is_complete_on_its_own() {
        let (_f, src) = file(MINIMAL);
        let c = load(&src, &[]).unwrap();
        assert_eq!(c.server.max_recipients, 1000);
        assert_eq!(c.upstream.len(), 1);
        assert!(c.dkim.is_empty());
    }

    #[test]
    fn environment_overrides_and_creates_keys() {
        let (_f, src) = file(MINIMAL);
        let vars = env(&[
            ("SMARTHOST__SERVER__MAX_RECIPIENTS", "5"),
            (
                "SMARTHOST__SERVER__TRUSTED_NETWORKS",
                "10.0.0.0/8, 172.16.0.0/12",
            ),
            ("SMARTHOST__UPSTREAM__1__URL", "smtps://smtp.example.com"),
            ("SMARTHOST__UPSTREAM__1__PASSWORD", "pw"),
            ("SMARTHOST__UPSTREAM__1__USERNAME", "me"),
            ("SMARTHOST__DELIVERY__MODE", "passthrough"),
            ("UNRELATED", "x"),
        ]);
        let c = load(&src, &vars).unwrap();
        assert_eq!(c.server.max_recipients, 5);
        assert_eq!(c.server.trusted_networks.len(), 2);
        assert_eq!(c.upstream.len(), 2);
        assert!(matches!(
            c.upstream[1].url,
            UpstreamUrl::Smtp {
                tls: TlsMode::Implicit,
                ..
            }
        ));
        assert_eq!(c.upstream[1].password.as_ref().unwrap().expose(), "pw");
        assert_eq!(c.delivery.mode, DeliveryMode::Passthrough);
    }

    #[test]
    fn log_format_defaults_to_text_and_is_set_by_file_or_environment() {
        use crate::config::LogFormat;
        let (_f, src) = file(MINIMAL);
        assert_eq!(load(&src, &[]).unwrap().log.format, LogFormat::Text);
        let (_f, src) = file(&format!("[log]\nformat = \"json\"\n{MINIMAL}"));
        assert_eq!(load(&src, &[]).unwrap().log.format, LogFormat::Json);
        let vars = env(&[("SMARTHOST__LOG__FORMAT", "JSON")]);
        let c = load(&ConfigSource::Embedded, &vars).unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn env_without_index_means_the_first_entry() {
        let vars = env(&[("SMARTHOST__UPSTREAM__URL", "smtp://mail.example.com")]);
        let c = load(&ConfigSource::Embedded, &vars).unwrap();
        assert!(matches!(
            c.upstream[0].url,
            UpstreamUrl::Smtp { port: 587, .. }
        ));
    }

    #[test]
    fn variables_are_interpolated_and_secret_files_read() {
        let mut pw = tempfile::NamedTempFile::new().unwrap();
        writeln!(pw, "from-file").unwrap();
        let text = format!(
            "[server]\nhostname = \"${{HOST}}\"\n[[upstream]]\nurl = \"smtps://mx.example\"\nusername = \"u\"\npassword_file = \"{}\"\n[[upstream]]\nname = \"b\"\nurl = \"smtps://mx2.example\"\nusername = \"u\"\npassword = \"a$${{b}}${{PW}}\"\n",
            pw.path().display()
        );
        let (_f, src) = file(&text);
        let c = load(&src, &env(&[("HOST", "relay.internal"), ("PW", "secret")])).unwrap();
        assert_eq!(c.server.hostname, "relay.internal");
        assert_eq!(
            c.upstream[0].password.as_ref().unwrap().expose(),
            "from-file"
        );
        assert_eq!(
            c.upstream[1].password.as_ref().unwrap().expose(),
            "a${b}secret"
        );
    }

    fn error(text: &str, vars: &[(&str, &str)]) -> String {
        let (f, src) = file(text);
        let e = load(&src, &env(vars)).unwrap_err().to_string();
        e.replace(&f.path().display().to_string(), "FILE")
    }

    #[test]
    fn errors_name_the_key_the_origin_and_the_valid_values() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                "[server]\nmax_conections = 5\n[[upstream]]\nurl = \"maildir:x\"\n",
                &[],
                "FILE: `server.max_conections`: unknown key `max_conections`, valid keys here are `hostname`",
            ),
            (
                "[delivery]\nmode = \"fast\"\n[[upstream]]\nurl = \"maildir:x\"\n",
                &[],
                "FILE: `delivery.mode`: unknown value \"fast\"; valid values are \"queue\", \"passthrough\"",
            ),
            (
                "[[upstream]]\nurl = \"smtp://smtp.qq.com:465\"\n",
                &[],
                "FILE: `upstream[0].url`: port 465 expects TLS from the first byte",
            ),
            (
                "[[upstream]]\nprovider = \"gmial\"\n",
                &[],
                "FILE: `upstream[0].provider`: unknown provider preset \"gmial\"; valid presets are \"gmail\", \"outlook\", \"office365\", \"qq\", \"exmail\", \"163\", \"ses:REGION\" (e.g. \"ses:us-east-1\"), \"sendgrid\", \"mailgun\"",
            ),
            (
                MINIMAL,
                &[("SMARTHOST__UPSTREAM__0__PROVIDER", "gmial")],
                "environment variable SMARTHOST__UPSTREAM__0__PROVIDER: `upstream[0].provider`: unknown provider preset \"gmial\"",
            ),
            (
                MINIMAL,
                &[("SMARTHOST__SERVER__MAX_CONNECTIONS", "lots")],
                "environment variable SMARTHOST__SERVER__MAX_CONNECTIONS: `server.max_connections`",
            ),
            (
                MINIMAL,
                &[("SMARTHOST__SERVER__BOGUS", "1")],
                "environment variable SMARTHOST__SERVER__BOGUS: `server.bogus`: unknown key",
            ),
            (
                "[[upstream]]\nurl = \"maildir:x\"\n[[dkim]]\ndomain = \"example.com\"\n",
                &[],
                "FILE: `dkim[0].key_file`: missing required key `key_file`",
            ),
            (
                "[server]\nlisten = [\"localhost:25\"]\n",
                &[],
                "FILE: `server.listen`: invalid address \"localhost:25\": expected IP:PORT",
            ),
            (
                "[server]\ntrusted_networks = [\"lan\"]\n",
                &[],
                "FILE: `server.trusted_networks`: invalid network \"lan\"",
            ),
            (
                "[server]\nshutdown_grace = \"soon\"\n",
                &[],
                "FILE: `server.shutdown_grace`: invalid duration \"soon\"",
            ),
            (
                "[server]\n",
                &[],
                "FILE: `upstream`: no upstream configured",
            ),
            (
                "[[upstream]]\nurl = \"smtps://x\"\npassword = \"${NOPE}\"\n",
                &[],
                "FILE: `upstream[0].password`: uses ${NOPE} but the environment variable NOPE is not set",
            ),
            (
                "[[upstream]]\nurl = \"smtps://x\"\npassword = \"p\"\n",
                &[],
                "FILE: `upstream[0].username`: a password or token is configured but no username",
            ),
            (
                "[log]\nformat = \"xml\"\n[[upstream]]\nurl = \"maildir:x\"\n",
                &[],
                "FILE: `log.format`: unknown value \"xml\"; valid values are \"text\", \"json\"",
            ),
            (
                MINIMAL,
                &[("SMARTHOST__LOG__FORMAT", "yaml")],
                "environment variable SMARTHOST__LOG__FORMAT: `log.format`: unknown value \"yaml\"; valid values are \"text\", \"json\"",
            ),
            ("[server\n", &[], "FILE: not valid TOML"),
        ];
        for (text, vars, want) in cases {
            let got = error(text, vars);
            assert!(got.starts_with(want), "\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn upstream_values_are_checked() {
        for (extra, want) in [
            (
                "max_messages_per_connection = 0",
                "`upstream[0].max_messages_per_connection`: must be at least 1",
            ),
            (
                "max_recipients = 0",
                "`upstream[0].max_recipients`: must be at least 1",
            ),
            (
                "timeout = \"0s\"",
                "`upstream[0].timeout`: must be longer than zero",
            ),
            (
                "daily_limit = 0",
                "`upstream[0].daily_limit`: must be at least 1",
            ),
            (
                "username = \"u\"\npassword = \"p\"\noauth_token = \"t\"",
                "give either a password or an OAuth token",
            ),
        ] {
            let got = error(
                &format!("[[upstream]]\nurl = \"smtps://x\"\n{extra}\n"),
                &[],
            );
            assert!(got.contains(want), "{extra}: {got}");
        }
    }

    #[test]
    fn idn_dkim_domains_are_kept_in_a_labels() {
        let (_f, src) = file(
            "[[upstream]]\nurl = \"maildir:x\"\n[[dkim]]\ndomain = \"bücher.example\"\nkey_file = \"k.pem\"\n",
        );
        assert_eq!(
            load(&src, &[]).unwrap().dkim[0].domain,
            "xn--bcher-kva.example"
        );
    }

    #[test]
    fn empty_credentials_mean_no_auth() {
        let (_f, src) =
            file("[[upstream]]\nurl = \"smtps://x\"\nusername = \"\"\npassword = \"\"\n");
        let c = load(&src, &[]).unwrap();
        assert!(c.upstream[0].username.is_none() && c.upstream[0].password.is_none());
    }

    fn upstream(text: &str, vars: &[(&str, &str)]) -> crate::config::UpstreamConfig {
        let (_f, src) = file(text);
        load(&src, &env(vars)).unwrap().upstream.remove(0)
    }

    #[test]
    fn every_provider_preset_fills_the_url() {
        let cases = [
            ("gmail", "smtp.gmail.com", 465, TlsMode::Implicit),
            ("outlook", "smtp-mail.outlook.com", 587, TlsMode::StartTls),
            ("office365", "smtp.office365.com", 587, TlsMode::StartTls),
            ("qq", "smtp.qq.com", 465, TlsMode::Implicit),
            ("exmail", "smtp.exmail.qq.com", 465, TlsMode::Implicit),
            ("163", "smtp.163.com", 465, TlsMode::Implicit),
            (
                "ses:us-east-1",
                "email-smtp.us-east-1.amazonaws.com",
                587,
                TlsMode::StartTls,
            ),
            (
                "ses:eu-west-2",
                "email-smtp.eu-west-2.amazonaws.com",
                587,
                TlsMode::StartTls,
            ),
            ("sendgrid", "smtp.sendgrid.net", 587, TlsMode::StartTls),
            ("mailgun", "smtp.mailgun.org", 587, TlsMode::StartTls),
            ("Gmail", "smtp.gmail.com", 465, TlsMode::Implicit),
        ];
        for (preset, want_host, want_port, want_tls) in cases {
            let up = upstream(
                &format!(
                    "[[upstream]]\nprovider = \"{preset}\"\nusername = \"me@example.com\"\npassword = \"p\"\n"
                ),
                &[],
            );
            let UpstreamUrl::Smtp {
                host, port, tls, ..
            } = &up.url
            else {
                panic!("{preset}: {:?}", up.url);
            };
            assert_eq!(
                (host.as_str(), *port, *tls),
                (want_host, want_port, want_tls),
                "{preset}"
            );
            assert_eq!(
                up.provider.as_ref().unwrap().to_string(),
                preset.to_ascii_lowercase()
            );
            assert_eq!(up.display_name(), format!("{want_host}:{want_port}"));
            assert_eq!(up.username.as_deref(), Some("me@example.com"), "{preset}");
        }
        // 163 is also accepted as a TOML integer.
        let up = upstream("[[upstream]]\nprovider = 163\n", &[]);
        assert_eq!(up.url, "smtps://smtp.163.com:465".parse().unwrap());
    }

    #[test]
    fn bad_ses_regions_are_refused() {
        for region in [
            "ses:",
            "ses:virginia",
            "ses:us-east",
            "ses:us-east-1.evil.example",
        ] {
            let got = error(&format!("[[upstream]]\nprovider = \"{region}\"\n"), &[]);
            assert!(
                got.starts_with("FILE: `upstream[0].provider`: invalid SES region"),
                "{region}: {got}"
            );
            assert!(got.contains("\"ses:us-east-1\""), "{got}");
        }
    }

    #[test]
    fn url_and_provider_are_exclusive() {
        let got = error(
            "[[upstream]]\nurl = \"smtps://smtp.example.com\"\nprovider = \"gmail\"\n",
            &[],
        );
        assert!(
            got.starts_with("FILE: `upstream[0]`: both `url` and `provider` (\"gmail\") are set; give exactly one"),
            "{got}"
        );
        let got = error("[[upstream]]\nname = \"x\"\n", &[]);
        assert!(
            got.starts_with("FILE: `upstream[0]`: needs `url`") && got.contains("\"sendgrid\""),
            "{got}"
        );
        // Both from the environment, in one layer: a conflict too.
        let got = error(
            "[server]\n",
            &[
                ("SMARTHOST__UPSTREAM__0__URL", "smtps://smtp.example.com"),
                ("SMARTHOST__UPSTREAM__0__PROVIDER", "gmail"),
            ],
        );
        assert!(got.contains("both `url` and `provider`"), "{got}");
    }

    #[test]
    fn provider_from_the_environment_replaces_the_files_url() {
        let vars = env(&[
            ("SMARTHOST__UPSTREAM__0__PROVIDER", "gmail"),
            ("SMARTHOST__UPSTREAM__0__USERNAME", "me@gmail.com"),
            ("SMARTHOST__UPSTREAM__0__PASSWORD", "app-password"),
        ]);
        let c = load(&ConfigSource::Embedded, &vars).unwrap();
        assert_eq!(
            c.upstream[0].url,
            "smtps://smtp.gmail.com:465".parse().unwrap()
        );
        assert_eq!(c.upstream[0].sender.as_deref(), Some("me@gmail.com"));
        // And a URL from the environment replaces the file's provider.
        let up = upstream(
            "[[upstream]]\nprovider = \"gmail\"\n",
            &[("SMARTHOST__UPSTREAM__0__URL", "smtp://mx.example.com")],
        );
        assert_eq!(up.url, "smtp://mx.example.com:587".parse().unwrap());
        assert!(up.provider.is_none());
    }

    #[test]
    fn sender_defaults_to_the_account_where_the_provider_requires_it() {
        for preset in ["gmail", "outlook", "office365", "qq", "exmail", "163"] {
            let up = upstream(
                &format!(
                    "[[upstream]]\nprovider = \"{preset}\"\nusername = \"me@example.com\"\npassword = \"p\"\n"
                ),
                &[],
            );
            assert_eq!(up.sender.as_deref(), Some("me@example.com"), "{preset}");
        }
        // An explicit sender wins.
        let up = upstream(
            "[[upstream]]\nprovider = \"gmail\"\nusername = \"me@gmail.com\"\npassword = \"p\"\nsender = \"alias@example.com\"\n",
            &[],
        );
        assert_eq!(up.sender.as_deref(), Some("alias@example.com"));
        // Relay services do not force the From.
        for preset in ["ses:us-east-1", "sendgrid", "mailgun"] {
            let up = upstream(
                &format!(
                    "[[upstream]]\nprovider = \"{preset}\"\nusername = \"AKIAEXAMPLE\"\npassword = \"p\"\n"
                ),
                &[],
            );
            assert_eq!(up.sender, None, "{preset}");
        }
        // Without credentials there is no account to default to.
        assert_eq!(
            upstream("[[upstream]]\nprovider = \"qq\"\n", &[]).sender,
            None
        );
        // A username that is not an address cannot be the From.
        let got = error(
            "[[upstream]]\nprovider = \"office365\"\nusername = \"relay\"\npassword = \"p\"\n",
            &[],
        );
        assert!(
            got.starts_with(
                "FILE: `upstream[0].username`: office365 accepts mail only From the account"
            ),
            "{got}"
        );
    }

    #[test]
    fn sendgrid_username_defaults_to_apikey() {
        let up = upstream(
            "[[upstream]]\nprovider = \"sendgrid\"\npassword = \"SG.key\"\n",
            &[],
        );
        assert_eq!(up.username.as_deref(), Some("apikey"));
        let up = upstream(
            "[[upstream]]\nprovider = \"sendgrid\"\nusername = \"other\"\npassword = \"SG.key\"\n",
            &[],
        );
        assert_eq!(up.username.as_deref(), Some("other"));
    }

    #[test]
    fn max_recipients_defaults_to_100_or_the_presets_cap() {
        let up = upstream("[[upstream]]\nurl = \"smtps://x\"\n", &[]);
        assert_eq!(up.max_recipients, 100);
        for (preset, want) in [
            ("gmail", 100),
            ("office365", 500),
            ("outlook", 100),
            ("ses:us-east-1", 50),
            ("sendgrid", 100),
            ("mailgun", 100),
            ("qq", 100),
        ] {
            let up = upstream(
                &format!(
                    "[[upstream]]\nprovider = \"{preset}\"\nusername = \"me@example.com\"\npassword = \"p\"\n"
                ),
                &[],
            );
            assert_eq!(up.max_recipients, want, "{preset}");
        }
        // Set explicitly, it wins over the preset; the environment wins over the file.
        let up = upstream(
            "[[upstream]]\nprovider = \"ses:us-east-1\"\nusername = \"AKIA\"\npassword = \"p\"\nmax_recipients = 20\n",
            &[],
        );
        assert_eq!(up.max_recipients, 20);
        let up = upstream(
            "[[upstream]]\nurl = \"smtps://x\"\nmax_recipients = 20\n",
            &[("SMARTHOST__UPSTREAM__0__MAX_RECIPIENTS", "7")],
        );
        assert_eq!(up.max_recipients, 7);
        for (preset, want) in [("sendgrid", 5000), ("gmail", 100), ("ses:us-east-1", 100)] {
            let up = upstream(
                &format!(
                    "[[upstream]]\nprovider = \"{preset}\"\nusername = \"me@example.com\"\npassword = \"p\"\n"
                ),
                &[],
            );
            assert_eq!(up.max_messages_per_connection, want, "{preset}");
        }
        let up = upstream(
            "[[upstream]]\nprovider = \"sendgrid\"\npassword = \"p\"\nmax_messages_per_connection = 20\n",
            &[],
        );
        assert_eq!(up.max_messages_per_connection, 20);
        let got = error(
            "[[upstream]]\nurl = \"smtps://x\"\n",
            &[("SMARTHOST__UPSTREAM__0__MAX_RECIPIENTS", "0")],
        );
        assert!(
            got.starts_with(
                "environment variable SMARTHOST__UPSTREAM__0__MAX_RECIPIENTS: `upstream[0].max_recipients`: must be at least 1"
            ),
            "{got}"
        );
    }

    #[test]
    fn a_network_covering_everything_needs_allow_open_relay() {
        for nets in ["0.0.0.0/0", "::/0", "10.0.0.0/8, 128.0.0.0/0"] {
            let text = format!("[server]\ntrusted_networks = \"{nets}\"\n{MINIMAL}");
            let got = error(&text, &[]);
            assert!(
                got.starts_with("FILE: `server.trusted_networks`: ")
                    && got.contains("open relay: anyone who can reach the SMTP port can send mail through your upstream accounts")
                    && got.contains("server.allow_open_relay = true"),
                "{nets}: {got}"
            );
            let got = error(MINIMAL, &[("SMARTHOST__SERVER__TRUSTED_NETWORKS", nets)]);
            assert!(
                got.starts_with("environment variable SMARTHOST__SERVER__TRUSTED_NETWORKS: `server.trusted_networks`"),
                "{got}"
            );
            let (_f, src) = file(&format!(
                "[server]\ntrusted_networks = \"{nets}\"\nallow_open_relay = true\n{MINIMAL}"
            ));
            assert!(load(&src, &[]).unwrap().server.allow_open_relay);
            let (_f, src) = file(MINIMAL);
            let vars = env(&[
                ("SMARTHOST__SERVER__TRUSTED_NETWORKS", nets),
                ("SMARTHOST__SERVER__ALLOW_OPEN_RELAY", "true"),
            ]);
            assert!(load(&src, &vars).is_ok(), "{nets}");
        }
        // Wide but not everything is fine.
        let (_f, src) = file(&format!(
            "[server]\ntrusted_networks = [\"0.0.0.0/1\", \"::/1\"]\n{MINIMAL}"
        ));
        assert!(!load(&src, &[]).unwrap().server.allow_open_relay);
    }

    #[test]
    fn halves_that_together_cover_everything_need_allow_open_relay() {
        let got = error(
            &format!("[server]\ntrusted_networks = [\"0.0.0.0/1\", \"128.0.0.0/1\"]\n{MINIMAL}"),
            &[],
        );
        assert!(
            got.contains("0.0.0.0/1, 128.0.0.0/1 trusts every address"),
            "{got}"
        );
    }

    #[test]
    fn a_proxy_list_covering_everything_needs_allow_open_relay() {
        for nets in ["0.0.0.0/0", "::/0", "0.0.0.0/1, 128.0.0.0/1"] {
            let text =
                format!("[server]\nproxy_protocol = true\ntrusted_proxies = \"{nets}\"\n{MINIMAL}");
            let got = error(&text, &[]);
            assert!(
                got.starts_with("FILE: `server.trusted_proxies`: ")
                    && got.contains("open relay: any client can send a PROXY header claiming an address in trusted_networks")
                    && got.contains("server.allow_open_relay = true"),
                "{nets}: {got}"
            );
            // Even with PROXY off: turning it on later must not open the relay silently.
            let got = error(MINIMAL, &[("SMARTHOST__SERVER__TRUSTED_PROXIES", nets)]);
            assert!(
                got.starts_with("environment variable SMARTHOST__SERVER__TRUSTED_PROXIES: `server.trusted_proxies`"),
                "{got}"
            );
            let (_f, src) = file(&format!(
                "[server]\nproxy_protocol = true\ntrusted_proxies = \"{nets}\"\nallow_open_relay = true\n{MINIMAL}"
            ));
            assert!(load(&src, &[]).is_ok(), "{nets}");
        }
        let (_f, src) = file(&format!(
            "[server]\nproxy_protocol = true\ntrusted_proxies = \"172.17.0.1/32, 10.0.0.0/8\"\n{MINIMAL}"
        ));
        assert!(load(&src, &[]).is_ok());
    }

    #[test]
    fn oauth_tables_from_a_file_and_from_the_environment() {
        let up = upstream(
            "[[upstream]]\nname = \"m365\"\nprovider = \"office365\"\nusername = \"relay@contoso.com\"\n\
             [upstream.oauth]\nflow = \"client_credentials\"\ntenant = \"contoso.onmicrosoft.com\"\n\
             client_id = \"app-id\"\nclient_secret = \"s3cret\"\n",
            &[],
        );
        let oauth = up.oauth.unwrap();
        assert_eq!(
            oauth.token_url.as_deref(),
            Some("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token")
        );
        assert_eq!(up.sender.as_deref(), Some("relay@contoso.com"));

        let (_f, src) = file("");
        let vars = env(&[
            ("SMARTHOST__UPSTREAM__0__PROVIDER", "gmail"),
            ("SMARTHOST__UPSTREAM__0__USERNAME", "me@gmail.com"),
            ("SMARTHOST__UPSTREAM__0__OAUTH__FLOW", "refresh_token"),
            (
                "SMARTHOST__UPSTREAM__0__OAUTH__CLIENT_ID",
                "id.apps.googleusercontent.com",
            ),
            ("SMARTHOST__UPSTREAM__0__OAUTH__CLIENT_SECRET", "gsecret"),
        ]);
        let up = load(&src, &vars).unwrap().upstream.remove(0);
        let oauth = up.oauth.unwrap();
        assert_eq!(oauth.scope.as_deref(), Some("https://mail.google.com/"));
        assert_eq!(
            oauth.refresh_token_file.as_deref(),
            Some(std::path::Path::new("data/oauth/smtp.gmail.com:465.json"))
        );
        assert_eq!(oauth.client_secret.unwrap().expose(), "gsecret");
    }

    #[test]
    fn oauth_mistakes_name_the_key() {
        let base = "[[upstream]]\nprovider = \"office365\"\nusername = \"relay@contoso.com\"\n";
        let got = error(
            &format!(
                "{base}password = \"pw\"\n[upstream.oauth]\nflow = \"client_credentials\"\ntenant = \"t\"\nclient_id = \"a\"\nclient_secret = \"s\"\n"
            ),
            &[],
        );
        assert!(
            got.starts_with("FILE: `upstream[0].password`: [upstream.oauth] fetches the tokens"),
            "{got}"
        );
        let got = error(
            &format!(
                "{base}[upstream.oauth]\nflow = \"client_credentials\"\nclient_id = \"a\"\nclient_secret = \"s\"\n"
            ),
            &[],
        );
        assert!(
            got.starts_with("FILE: `upstream[0].oauth.tenant`: the office365 preset builds token_url from the tenant"),
            "{got}"
        );
        let got = error(
            &format!("{base}[upstream.oauth]\nflow = \"device\"\nclient_id = \"a\"\n"),
            &[],
        );
        assert!(
            got.contains("\"client_credentials\", \"refresh_token\""),
            "{got}"
        );
        let got = error(
            "[[upstream]]\nprovider = \"office365\"\n[upstream.oauth]\nflow = \"client_credentials\"\ntenant = \"t\"\nclient_id = \"a\"\nclient_secret = \"s\"\n",
            &[],
        );
        assert!(
            got.starts_with("FILE: `upstream[0].username`: [upstream.oauth] needs the mailbox"),
            "{got}"
        );
    }

    #[test]
    fn a_missing_file_says_so() {
        let e = load(
            &ConfigSource::File("/nonexistent/smarthost.toml".into()),
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read config file /nonexistent/smarthost.toml"),
            "{e}"
        );
    }
}
