//! Loading: layer the sources, interpolate `${VAR}`, deserialize strictly, validate.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Config as Layers, File, FileFormat, Map, Source, Value, ValueKind};

use super::Config;
use super::validate::validate;

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

    let mut overrides = EnvOverrides::from_env(env);
    overrides.base_entries = list_entries(&base);
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
    let message = message
        .replace("unknown field", "unknown key")
        .replace("expected one of", "valid keys here are")
        .replace("unknown variant", "unknown value")
        .replace("missing field", "missing required key");
    // A section with a single key (`[log]`, `[transform]`): serde names just that one.
    if message.starts_with("unknown key") {
        return message.replace(", expected `", ", the only valid key here is `");
    }
    message
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
/// (`SMARTHOST__UPSTREAM__URL`) the first list entry is meant. The same holds for the
/// other lists, `[[dkim]]`, `[[header_rule]]`, `[[route]]` and `[[listener]]`.
#[derive(Clone, Debug)]
struct EnvOverrides {
    /// (configuration key, variable name, value)
    entries: Vec<(String, String, String)>,
    /// The list entries of the layer below (`upstream[0]`, `header_rule[1]`): an entry
    /// not among them comes from the environment alone.
    base_entries: Vec<String>,
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
        EnvOverrides {
            entries,
            base_entries: Vec::new(),
        }
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

    /// The variable that set `key` or one of its parents/children, if any; for a key of
    /// a list entry that only the environment has (a missing `value` of
    /// `SMARTHOST__HEADER_RULE__0__...`), a variable of that entry.
    fn origin_of(&self, key: &str) -> Option<String> {
        let exact = self.entries.iter().find(|(k, _, _)| {
            k == key || k.starts_with(&format!("{key}.")) || key.starts_with(&format!("{k}."))
        });
        let entry = key.find(']').map(|end| &key[..=end]);
        let env_only_entry = entry
            .filter(|e| !self.base_entries.iter().any(|b| b == e))
            .and_then(|e| {
                self.entries
                    .iter()
                    .find(|(k, _, _)| k.starts_with(&format!("{e}.")))
            });
        exact
            .or(env_only_entry)
            .map(|(_, name, _)| format!("environment variable {name}"))
    }
}

/// The entries of the top-level lists in `layer`: `upstream[0]`, `dkim[0]`, ...
fn list_entries(layer: &Map<String, Value>) -> Vec<String> {
    layer
        .iter()
        .filter_map(|(key, value)| match &value.kind {
            ValueKind::Array(items) => Some((0..items.len()).map(move |i| format!("{key}[{i}]"))),
            _ => None,
        })
        .flatten()
        .collect()
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
        let is_list = matches!(
            part.as_str(),
            "upstream" | "dkim" | "header_rule" | "route" | "listener"
        ) && i == 0;
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

#[cfg(test)]
mod tests;
