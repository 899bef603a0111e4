//! Upstream URLs: `smtps://`, `smtp://`, `?tls=...`, `maildir:`.
//!
//! The TLS mode comes from the URL, never from a separate flag that can contradict it.
//! A URL whose scheme and well-known port disagree (`smtps://host:587`, `smtp://host:465`)
//! is refused with the fix, unless `?tls=` states the mode explicitly: that mistake is
//! the classic "wrong version number" / "unexpected EOF" failure.

use std::fmt;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;
use serde::Deserialize;

use super::values::Secret;

/// How TLS is negotiated with an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// TLS from the first byte (`smtps://`, port 465; RFC 8314).
    Implicit,
    /// Plaintext greeting, then STARTTLS, which must be offered (RFC 3207).
    StartTls,
    /// STARTTLS if offered, plaintext otherwise; AUTH never in plaintext unless allowed.
    Opportunistic,
    /// Plaintext only.
    None,
    /// Detect implicit TLS or STARTTLS on first contact, then remember it.
    Auto,
}

impl TlsMode {
    /// The `?tls=` word for this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Implicit => "implicit",
            TlsMode::StartTls => "starttls",
            TlsMode::Opportunistic => "opportunistic",
            TlsMode::None => "none",
            TlsMode::Auto => "auto",
        }
    }

    fn parse(word: &str) -> Option<TlsMode> {
        [
            TlsMode::Implicit,
            TlsMode::StartTls,
            TlsMode::Opportunistic,
            TlsMode::None,
            TlsMode::Auto,
        ]
        .into_iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(word))
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed upstream URL.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum UpstreamUrl {
    /// An SMTP server.
    Smtp {
        /// Host name or IP address.
        host: String,
        /// TCP port.
        port: u16,
        /// How TLS is negotiated.
        tls: TlsMode,
        /// Account from the URL's user part, percent-decoded.
        username: Option<String>,
        /// Password from the URL's user part, percent-decoded.
        password: Option<Secret>,
    },
    /// A local Maildir (development, dry runs, the embedded default).
    Maildir {
        /// The Maildir's top directory (holding `tmp/`, `new/`, `cur/`).
        path: PathBuf,
    },
}

/// The schemes we understand, for error messages.
const SCHEMES: &str = "smtps://host[:port] (implicit TLS, port 465), smtp://host[:port] (STARTTLS, port 587), maildir:PATH";

impl TryFrom<String> for UpstreamUrl {
    type Error = String;

    fn try_from(text: String) -> Result<UpstreamUrl, String> {
        text.parse()
    }
}

impl std::str::FromStr for UpstreamUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<UpstreamUrl, String> {
        let text = text.trim();
        if let Some(path) = text.strip_prefix("maildir:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("maildir: needs a directory, e.g. maildir:data/outbox".into());
            }
            return Ok(UpstreamUrl::Maildir { path: path.into() });
        }
        let url = url::Url::parse(text).map_err(|e| {
            format!(
                "invalid upstream URL {:?}: {e}; use {SCHEMES}",
                redact(text)
            )
        })?;
        let (implicit_scheme, default_port) = match url.scheme() {
            "smtps" => (true, 465),
            "smtp" => (false, 587),
            other => return Err(format!("unknown upstream scheme {other:?}; use {SCHEMES}")),
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("upstream URL {:?} has no host", redact(text)))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !matches!(url.path(), "" | "/") || url.fragment().is_some() {
            return Err(format!(
                "upstream URL {:?} must not have a path; use {SCHEMES}",
                redact(text)
            ));
        }
        let port = url.port().unwrap_or(default_port);

        let mut explicit_tls = None;
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "tls" => {
                    let mode = TlsMode::parse(&value).ok_or_else(|| {
                        format!("unknown tls={value:?}; valid values are implicit, starttls, opportunistic, none, auto")
                    })?;
                    explicit_tls = Some(mode);
                }
                other => {
                    return Err(format!(
                        "unknown URL parameter {other:?}; the only parameter is tls=implicit|starttls|opportunistic|none|auto"
                    ));
                }
            }
        }
        let tls = match (implicit_scheme, explicit_tls) {
            (true, None | Some(TlsMode::Implicit)) => TlsMode::Implicit,
            (true, Some(TlsMode::Auto)) => TlsMode::Auto,
            (true, Some(other)) => {
                return Err(format!(
                    "smtps:// always means implicit TLS, but tls={other} was given; for {other} write smtp://{host}{}?tls={other}",
                    url.port().map(|p| format!(":{p}")).unwrap_or_default()
                ));
            }
            (false, Some(mode)) => mode,
            (false, None) => TlsMode::StartTls,
        };
        if explicit_tls.is_none() {
            check_port_matches_mode(&host, port, tls)?;
        }

        let username = Some(url.username())
            .filter(|u| !u.is_empty())
            .map(decode)
            .transpose()?;
        let password = url.password().map(decode).transpose()?.map(Secret::new);
        Ok(UpstreamUrl::Smtp {
            host,
            port,
            tls,
            username,
            password,
        })
    }
}

/// Refuse the scheme/port combinations that are almost always a mistake.
fn check_port_matches_mode(host: &str, port: u16, tls: TlsMode) -> Result<(), String> {
    match (tls, port) {
        (TlsMode::StartTls, 465) => Err(format!(
            "port 465 expects TLS from the first byte (implicit TLS), but smtp:// speaks plaintext and then STARTTLS; \
             use smtps://{host}:465 (or add ?tls=starttls if this server really offers STARTTLS on 465)"
        )),
        (TlsMode::Implicit, 25 | 587) => Err(format!(
            "port {port} speaks plaintext first and upgrades with STARTTLS, but smtps:// starts with TLS; \
             use smtp://{host}:{port} (or add ?tls=implicit if this server really speaks TLS on {port})"
        )),
        _ => Ok(()),
    }
}

fn decode(part: &str) -> Result<String, String> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            "the user or password in the upstream URL is not valid UTF-8 after percent-decoding"
                .to_owned()
        })
}

/// The URL with any password replaced, for error messages and logs. Works on text that
/// is not a valid URL too, since that is when it is shown.
fn redact(text: &str) -> String {
    let Some(start) = text.find("://").map(|i| i + 3) else {
        return text.to_owned();
    };
    let authority_end = text[start..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |i| start + i);
    let Some(at) = text[start..authority_end].rfind('@').map(|i| start + i) else {
        return text.to_owned();
    };
    match text[start..at].find(':') {
        Some(colon) => format!("{}:REDACTED{}", &text[..start + colon], &text[at..]),
        None => text.to_owned(),
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamUrl::Maildir { path } => write!(f, "maildir:{}", path.display()),
            UpstreamUrl::Smtp {
                host,
                port,
                tls,
                username,
                ..
            } => {
                let scheme = if *tls == TlsMode::Implicit {
                    "smtps"
                } else {
                    "smtp"
                };
                let user = username
                    .as_deref()
                    .map(|u| {
                        format!(
                            "{}@",
                            u.replace('%', "%25")
                                .replace('@', "%40")
                                .replace(':', "%3A")
                        )
                    })
                    .unwrap_or_default();
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                write!(f, "{scheme}://{user}{host}:{port}")?;
                if !matches!(tls, TlsMode::Implicit | TlsMode::StartTls) {
                    write!(f, "?tls={tls}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smtp(url: &str) -> (String, u16, TlsMode, Option<String>, Option<String>) {
        match url.parse::<UpstreamUrl>().unwrap() {
            UpstreamUrl::Smtp {
                host,
                port,
                tls,
                username,
                password,
            } => (
                host,
                port,
                tls,
                username,
                password.map(|p| p.expose().to_owned()),
            ),
            other => panic!("not smtp: {other}"),
        }
    }

    #[test]
    fn schemes_set_mode_and_default_port() {
        assert_eq!(
            smtp("smtps://smtp.example.com"),
            (
                "smtp.example.com".into(),
                465,
                TlsMode::Implicit,
                None,
                None
            )
        );
        assert_eq!(
            smtp("smtp://smtp.example.com"),
            (
                "smtp.example.com".into(),
                587,
                TlsMode::StartTls,
                None,
                None
            )
        );
        assert_eq!(smtp("smtp://mx:25?tls=none").2, TlsMode::None);
        assert_eq!(
            smtp("smtp://mx:25?tls=opportunistic").2,
            TlsMode::Opportunistic
        );
        assert_eq!(smtp("smtp://mx:2525?tls=auto").2, TlsMode::Auto);
        assert_eq!(smtp("smtps://mx?tls=auto").2, TlsMode::Auto);
        assert_eq!(smtp("smtp://[::1]:2525").0, "::1");
    }

    #[test]
    fn credentials_are_percent_decoded() {
        let (_, _, _, user, pass) =
            smtp("smtps://relay%40example.com:p%40ss%3Aw0rd@smtp.example.com");
        assert_eq!(user.as_deref(), Some("relay@example.com"));
        assert_eq!(pass.as_deref(), Some("p@ss:w0rd"));
    }

    #[test]
    fn port_and_mode_mismatches_explain_the_fix() {
        let err = "smtp://smtp.qq.com:465".parse::<UpstreamUrl>().unwrap_err();
        assert!(err.contains("use smtps://smtp.qq.com:465"), "{err}");
        let err = "smtps://smtp.office365.com:587"
            .parse::<UpstreamUrl>()
            .unwrap_err();
        assert!(err.contains("use smtp://smtp.office365.com:587"), "{err}");
        assert_eq!(smtp("smtp://odd:465?tls=starttls").2, TlsMode::StartTls);
        assert_eq!(smtp("smtp://odd:587?tls=implicit").2, TlsMode::Implicit);
    }

    #[test]
    fn bad_urls_are_refused_with_the_valid_forms() {
        for (url, needle) in [
            ("http://x", "unknown upstream scheme \"http\""),
            ("smtp://x?tls=ssl", "valid values are implicit, starttls"),
            ("smtp://x?secure=true", "unknown URL parameter \"secure\""),
            ("smtps://x?tls=none", "smtps:// always means implicit TLS"),
            ("smtp://x/path", "must not have a path"),
            ("smtp://", "no host"),
            ("maildir:", "needs a directory"),
            ("smtp.example.com:587", "unknown upstream scheme"),
        ] {
            let err = url.parse::<UpstreamUrl>().unwrap_err();
            assert!(err.contains(needle), "{url}: {err}");
        }
    }

    #[test]
    fn display_never_shows_the_password() {
        let url: UpstreamUrl = "smtps://me:secret@mx.example".parse().unwrap();
        assert_eq!(url.to_string(), "smtps://me@mx.example:465");
        let url: UpstreamUrl = "smtps://relay%40example.com:pw@mx.example".parse().unwrap();
        assert_eq!(
            url.to_string(),
            "smtps://relay%40example.com@mx.example:465"
        );
        let err = "smtps://me:secret@/x".parse::<UpstreamUrl>().unwrap_err();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn maildir_paths() {
        assert_eq!(
            "maildir:data/outbox".parse::<UpstreamUrl>().unwrap(),
            UpstreamUrl::Maildir {
                path: "data/outbox".into()
            }
        );
        assert_eq!(
            "maildir:///var/mail".parse::<UpstreamUrl>().unwrap(),
            UpstreamUrl::Maildir {
                path: "/var/mail".into()
            }
        );
    }
}
