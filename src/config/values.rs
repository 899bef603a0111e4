//! Value types and deserializers shared by the configuration sections.

use std::fmt;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// A secret (password, token): usable by the code, never printed by `Debug`/`Display`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A list of address patterns (see [`super::AddressGlob`]), as [`string_list`] reads it.
pub fn globs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<super::AddressGlob>, D::Error> {
    string_list(d)?
        .iter()
        .map(|text| super::AddressGlob::parse(text).map_err(de::Error::custom))
        .collect()
}

/// A list of names (upstream names, user names), as [`string_list`] reads it.
pub fn names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    string_list(d)
}

/// An optional mail address (`user@example.com`, no angle brackets).
pub fn optional_address<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::proto::Address>, D::Error> {
    let text = String::deserialize(d)?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    crate::proto::Address::parse(text)
        .map(Some)
        .map_err(|e| de::Error::custom(format!("`{text}` is not a mail address: {e}")))
}

/// A list given either as a TOML array or as one comma-separated string (the form an
/// environment variable can carry).
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct ListVisitor;
    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of strings or one comma-separated string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                out.push(item.trim().to_owned());
            }
            Ok(out)
        }
    }
    d.deserialize_any(ListVisitor)
}

/// Parse a network in CIDR form; a bare address means just that host.
pub fn parse_network(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!(
                "invalid network {s:?}: expected an address or CIDR such as 10.0.0.0/8 or fd00::/8"
            )
        })
}

/// A list of `IP:PORT` socket addresses.
pub fn socket_addrs<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<std::net::SocketAddr>, D::Error> {
    string_list(d)?
        .iter()
        .map(|s| {
            s.parse().map_err(|_| {
                de::Error::custom(format!("invalid address {s:?}: expected IP:PORT such as \"0.0.0.0:25\", \"127.0.0.1:2525\" or \"[::]:25\""))
            })
        })
        .collect()
}

/// One `IP:PORT`, or `"off"` / `""` for none.
pub fn optional_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        de::Error::custom(format!(
            "invalid address {text:?}: expected IP:PORT such as \"127.0.0.1:9025\", or \"off\""
        ))
    })
}

/// A list of networks; see [`parse_network`].
pub fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    string_list(d)?
        .iter()
        .map(|s| parse_network(s).map_err(de::Error::custom))
        .collect()
}

/// A duration written as `30s`, `5m`, `2h`, `2d` (or a number of seconds).
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct DurationVisitor;
    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as \"30s\", \"5m\", \"2d\"")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("a duration cannot be negative"))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            if let Ok(secs) = v.trim().parse::<u64>() {
                return Ok(Duration::from_secs(secs));
            }
            humantime::parse_duration(v.trim()).map_err(|e| {
                E::custom(format!(
                    "invalid duration {v:?} ({e}); write it like \"30s\", \"5m\", \"2d\""
                ))
            })
        }
    }
    d.deserialize_any(DurationVisitor)
}

/// Give a fieldless enum its configuration words: `as_str`, `Display`, and
/// `TryFrom<String>` whose error lists the valid words.
macro_rules! word_enum {
    ($ty:ident { $($variant:ident = $word:literal),+ $(,)? }) => {
        impl $ty {
            /// The word used in the configuration.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $word),+ }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(word: String) -> Result<$ty, String> {
                match word.trim().to_ascii_lowercase().as_str() {
                    $($word => Ok($ty::$variant),)+
                    _ => Err(format!(
                        "unknown value {:?}; valid values are {}",
                        word,
                        [$(concat!("\"", $word, "\"")),+].join(", ")
                    )),
                }
            }
        }
    };
}
pub(crate) use word_enum;

pub(super) fn one() -> u32 {
    1
}

pub(super) fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}

pub(super) fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}

pub(super) fn four() -> usize {
    4
}

pub(super) fn yes() -> bool {
    true
}

pub(super) fn selector() -> String {
    "smarthost".into()
}

pub(super) fn rsa() -> super::DkimAlgorithm {
    super::DkimAlgorithm::RsaSha256
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_accept_cidr_and_bare_addresses() {
        assert_eq!(
            parse_network("10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_network("192.0.2.7").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(parse_network("::1").unwrap().to_string(), "::1/128");
        assert!(parse_network("10.0.0.0/33").is_err());
        assert!(parse_network("intranet").is_err());
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "hunter2");
    }
}
