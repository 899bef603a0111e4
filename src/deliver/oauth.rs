//! OAuth 2.0 access tokens for AUTH XOAUTH2, fetched and refreshed by the relay.
//!
//! One [`TokenManager`] per upstream with `[upstream.oauth]`: the token is fetched on
//! first need, shared by every connection, and fetched again shortly before it expires
//! (one request at a time: callers wait for the request under way instead of sending
//! their own). A token the server refuses is dropped ([`TokenManager::invalidate`]) so
//! the next connection gets a fresh one. When the provider rotates the refresh token,
//! the new one is written to `refresh_token_file` atomically with mode 0600, so it
//! survives restarts.
//!
//! The device authorization grant (RFC 8628) for `smarthost oauth login` lives here
//! too ([`device_login`]): same endpoint client, same error handling.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tracing::{info, warn};

use crate::config::{OAuthConfig, OAuthFlow, Secret};
use crate::telemetry::name;
use crate::tls::TlsSetupError;

/// The device-code grant type (RFC 8628 §3.4).
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A token is fetched again when less than this share of its lifetime is left (and at
/// most [`REFRESH_MARGIN_MAX`] before it expires).
const REFRESH_AT_REMAINING: u32 = 5;
const REFRESH_MARGIN_MAX: Duration = Duration::from_secs(120);

/// Why no token could be had. Every variant says what the endpoint said; [`OAuthError::fix`]
/// says what to do.
#[derive(Clone, Debug, thiserror::Error)]
pub enum OAuthError {
    /// The endpoint could not be reached (DNS, connect, TLS, timeout, proxy).
    #[error("token endpoint {url} not reachable: {detail}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The endpoint refused with an OAuth error (RFC 6749 §5.2).
    #[error("token endpoint refused ({status}): {error}: {description}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The `error` code, e.g. `invalid_client`.
        error: String,
        /// The `error_description` (Microsoft's start with an `AADSTS` code).
        description: String,
    },
    /// The endpoint answered something that is not an OAuth token response.
    #[error("token endpoint answered {status} with no usable token: {detail}")]
    Unexpected {
        /// HTTP status.
        status: u16,
        /// What was wrong.
        detail: String,
    },
    /// The refresh token file is missing, unreadable or malformed, or cannot be written.
    #[error("refresh token file {path}: {problem}")]
    RefreshTokenFile {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The device login ended without a token.
    #[error("device login: {0}")]
    Device(String),
}

impl OAuthError {
    /// What the operator should do, for the log line and `smarthost check`.
    pub fn fix(&self, upstream: &str) -> String {
        let login = format!("run `smarthost oauth login --upstream {upstream}`");
        match self {
            OAuthError::Unreachable { .. } => "check DNS and the firewall for HTTPS to the token endpoint; behind a corporate proxy set HTTPS_PROXY (and NO_PROXY for local hosts)".into(),
            OAuthError::Refused { error, description, .. } => {
                let aad = description.split(':').next().unwrap_or_default();
                match (error.as_str(), aad) {
                    (_, "AADSTS7000215" | "AADSTS7000222") => "the client secret is wrong or expired: create a new one under Certificates & secrets in the app registration and set client_secret".into(),
                    (_, "AADSTS700016") => "the application is not known in this tenant: check client_id and tenant (the app must be registered in, or consented to by, that directory)".into(),
                    (_, "AADSTS90002" | "AADSTS900023") => "the tenant does not exist: set tenant to your directory's domain (contoso.onmicrosoft.com) or its ID".into(),
                    (_, "AADSTS65001") => "consent is missing: an administrator must grant consent for the application's permissions (SMTP.Send, or SMTP.SendAsApp for app-only)".into(),
                    (_, "AADSTS7000218") => "the token request needs the client secret: set client_secret, or allow public client flows in the app registration".into(),
                    ("invalid_client", _) => "the client ID or secret is wrong: check client_id and client_secret against the app registration".into(),
                    ("invalid_grant", _) => format!("the refresh token is no longer valid (revoked, expired, or the password changed): {login} again"),
                    ("unauthorized_client", _) => "the application may not use this grant: allow it in the app registration (app-only: application permission SMTP.SendAsApp with admin consent; device login: allow public client flows)".into(),
                    ("invalid_scope", _) => "the scope is not valid for this application: use the provider's SMTP scope (see docs/configuration.md, [upstream.oauth])".into(),
                    ("invalid_request" | "unsupported_grant_type", _) => "the endpoint does not accept this request: check token_url and flow".into(),
                    _ => "read the endpoint's description above; see docs/troubleshooting.md (OAuth)".into(),
                }
            }
            OAuthError::Unexpected { .. } => "check token_url: it must be the provider's OAuth 2.0 token endpoint".into(),
            OAuthError::RefreshTokenFile { .. } => format!(
                "{login} to create it (the relay's user must be able to read and write it)"
            ),
            OAuthError::Device(_) => format!("{login} again"),
        }
    }
}

/// A token handed to a connection.
#[derive(Clone, Debug)]
pub struct Token {
    /// The bearer token.
    pub secret: Secret,
    /// Time left until it expires.
    pub expires_in: Duration,
}

struct Cached {
    secret: Secret,
    expires_at: Instant,
    refresh_at: Instant,
}

/// The endpoint's answer to a token request (RFC 6749 §5.1).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
}

/// The endpoint's error answer (RFC 6749 §5.2, RFC 8628 §3.5).
#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    error_description: Option<String>,
}

/// Tokens for one upstream.
pub struct TokenManager {
    upstream: String,
    config: OAuthConfig,
    http: reqwest::Client,
    current: tokio::sync::Mutex<Option<Cached>>,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager")
            .field("upstream", &self.upstream)
            .field("flow", &self.config.flow)
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    /// Set up for `upstream`; `timeout` bounds each request to the endpoint.
    pub fn new(
        upstream: &str,
        config: &OAuthConfig,
        timeout: Duration,
    ) -> Result<TokenManager, TlsSetupError> {
        Ok(TokenManager {
            upstream: upstream.to_owned(),
            config: config.clone(),
            http: http_client(config.ca_file.as_deref(), timeout)?,
            current: tokio::sync::Mutex::new(None),
        })
    }

    /// The upstream's name.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// A token valid for a while yet: the shared one, or a new one from the endpoint.
    pub async fn token(&self) -> Result<Token, OAuthError> {
        let mut current = self.current.lock().await;
        let now = Instant::now();
        if let Some(cached) = current.as_ref()
            && now < cached.refresh_at
        {
            return Ok(Token {
                secret: cached.secret.clone(),
                expires_in: cached.expires_at - now,
            });
        }
        let counter = |result: &'static str| {
            metrics::counter!(name::OAUTH_REFRESH, "upstream" => self.upstream.clone(), "result" => result)
                .increment(1);
        };
        match self.fetch().await {
            Ok((secret, lifetime)) => {
                counter("ok");
                let now = Instant::now();
                let margin = (lifetime / REFRESH_AT_REMAINING).min(REFRESH_MARGIN_MAX);
                let expiry_wall = SystemTime::now() + lifetime;
                metrics::gauge!(name::OAUTH_TOKEN_EXPIRY, "upstream" => self.upstream.clone()).set(
                    expiry_wall
                        .duration_since(UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64()),
                );
                info!(upstream = %self.upstream, expires_in = ?lifetime, "OAuth access token obtained");
                *current = Some(Cached {
                    secret: secret.clone(),
                    expires_at: now + lifetime,
                    refresh_at: now + (lifetime - margin),
                });
                Ok(Token {
                    secret,
                    expires_in: lifetime,
                })
            }
            Err(e) => {
                counter("error");
                warn!(upstream = %self.upstream, error = %e, fix = %e.fix(&self.upstream), "OAuth token request failed");
                Err(e)
            }
        }
    }

    /// The server refused `token`: forget it, so the next caller fetches a new one. A
    /// token already replaced by another caller is left alone.
    pub async fn invalidate(&self, token: &Secret) {
        let mut current = self.current.lock().await;
        if current
            .as_ref()
            .is_some_and(|c| c.secret.expose() == token.expose())
        {
            *current = None;
        }
    }

    /// One request to the token endpoint for the configured flow.
    async fn fetch(&self) -> Result<(Secret, Duration), OAuthError> {
        let c = &self.config;
        let mut form: Vec<(&str, String)> = vec![("client_id", c.client_id.clone())];
        if let Some(secret) = &c.client_secret {
            form.push(("client_secret", secret.expose().to_owned()));
        }
        form.push(("scope", c.scope.clone().unwrap_or_default()));
        let refresh_token = match c.flow {
            OAuthFlow::ClientCredentials => {
                form.push(("grant_type", "client_credentials".into()));
                None
            }
            OAuthFlow::RefreshToken => {
                let path = self.refresh_token_path();
                let token = read_refresh_token(path)?;
                form.push(("grant_type", "refresh_token".into()));
                form.push(("refresh_token", token.expose().to_owned()));
                Some(token)
            }
        };
        let response = post_form(&self.http, token_url(c), &form).await?;
        let TokenResponse {
            access_token,
            expires_in,
            refresh_token: rotated,
        } = response;
        let (secret, lifetime) = access_token_of(access_token, expires_in)?;
        if let (Some(old), Some(new)) = (refresh_token, rotated)
            && !new.is_empty()
            && new != old.expose()
        {
            let path = self.refresh_token_path();
            write_refresh_token(path, &Secret::new(new))?;
            info!(upstream = %self.upstream, file = %path.display(), "the provider rotated the refresh token; the new one is saved");
        }
        Ok((secret, lifetime))
    }

    fn refresh_token_path(&self) -> &Path {
        self.config
            .refresh_token_file
            .as_deref()
            .expect("validation sets refresh_token_file for the refresh_token flow")
    }
}

fn token_url(config: &OAuthConfig) -> &str {
    config
        .token_url
        .as_deref()
        .expect("validation sets token_url")
}

/// The HTTPS client for token endpoints: the same trust rules as SMTP (public roots plus
/// `ca_file`), HTTP/1.1, the proxy variables honoured.
fn http_client(
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<reqwest::Client, TlsSetupError> {
    let mut tls = crate::tls::client_config(ca_file, true)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(timeout)
        .timeout(timeout)
        .user_agent(concat!("smarthost/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| TlsSetupError::Certificate {
            path: ca_file.map_or_else(String::new, |p| p.display().to_string()),
            reason: format!("cannot set up the HTTPS client: {e}"),
        })
}

/// POST a form and read a JSON answer; an OAuth error answer becomes [`OAuthError::Refused`].
async fn post_form<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, String)],
) -> Result<T, OAuthError> {
    let response = http
        .post(url)
        .header("Accept", "application/json")
        .form(form)
        .send()
        .await
        .map_err(|e| OAuthError::Unreachable {
            url: url.to_owned(),
            detail: describe_http_error(&e),
        })?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| OAuthError::Unreachable {
            url: url.to_owned(),
            detail: describe_http_error(&e),
        })?;
    if !(200..300).contains(&status) {
        return Err(match serde_json::from_slice::<ErrorResponse>(&body) {
            Ok(e) => OAuthError::Refused {
                status,
                error: e.error,
                description: first_line(&e.error_description.unwrap_or_default()),
            },
            Err(_) => OAuthError::Unexpected {
                status,
                detail: "the answer is not an OAuth error (JSON with \"error\")".into(),
            },
        });
    }
    serde_json::from_slice(&body).map_err(|e| OAuthError::Unexpected {
        status,
        detail: format!("the answer is not the expected JSON: {e}"),
    })
}

/// Microsoft's descriptions carry trace and correlation IDs on further lines.
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_owned()
}

/// The error with its causes (reqwest's own message is only the outermost).
fn describe_http_error(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "no answer in time".to_owned()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn access_token_of(
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
) -> Result<(Secret, Duration), OAuthError> {
    let token = access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| OAuthError::Unexpected {
            status: 200,
            detail: "no access_token in the answer".into(),
        })?;
    // A number, or (some providers) a numeric string; without it assume an hour.
    let seconds = match expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => Some(3600),
    }
    .unwrap_or(3600)
    .max(1);
    Ok((Secret::new(token), Duration::from_secs(seconds)))
}

/// The refresh token in `path`: `{"refresh_token": "..."}`, other fields allowed.
pub fn read_refresh_token(path: &Path) -> Result<Secret, OAuthError> {
    let problem = |problem: String| OAuthError::RefreshTokenFile {
        path: path.display().to_string(),
        problem,
    };
    let text = std::fs::read(path).map_err(|e| problem(e.to_string()))?;
    let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
        problem(format!(
            "not JSON ({e}); expected {{\"refresh_token\": \"...\"}}"
        ))
    })?;
    match value.get("refresh_token").and_then(|t| t.as_str()) {
        Some(token) if !token.is_empty() => Ok(Secret::new(token)),
        _ => Err(problem(
            "has no \"refresh_token\" string; expected {\"refresh_token\": \"...\"}".into(),
        )),
    }
}

/// Write `token` into `path`, keeping the file's other fields: a new file next to it
/// (mode 0600), synced, renamed over the old one, and the directory synced, so a crash
/// leaves either the old or the new token, never a torn file.
pub fn write_refresh_token(path: &Path, token: &Secret) -> Result<(), OAuthError> {
    let mut value = std::fs::read(path)
        .ok()
        .and_then(|text| serde_json::from_slice::<serde_json::Value>(&text).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    value["refresh_token"] = serde_json::Value::String(token.expose().to_owned());
    let mut text = serde_json::to_vec_pretty(&value).expect("a JSON object serialises");
    text.push(b'\n');
    crate::config::write_private_file(path, &text).map_err(|e| OAuthError::RefreshTokenFile {
        path: path.display().to_string(),
        problem: format!("cannot write: {e}"),
    })
}

/// What the device authorization endpoint answers (RFC 8628 §3.2).
#[derive(Deserialize)]
struct DeviceAuthorization {
    device_code: String,
    user_code: String,
    #[serde(alias = "verification_url")]
    verification_uri: String,
    verification_uri_complete: Option<String>,
    expires_in: Option<u64>,
    interval: Option<u64>,
    message: Option<String>,
}

/// The device authorization grant (RFC 8628) for the upstream `upstream`: ask for a
/// code, tell the person where to enter it (through `tell`), poll until they did, and
/// write the refresh token to `refresh_token_file`. Returns the file written.
pub async fn device_login(
    upstream: &str,
    config: &OAuthConfig,
    timeout: Duration,
    mut tell: impl FnMut(&str),
) -> Result<PathBuf, OAuthError> {
    let Some(device_url) = config.device_url.as_deref() else {
        return Err(OAuthError::Device(format!(
            "upstream {upstream:?} has no device_url: set [upstream.oauth] device_url (the provider's device authorization endpoint), or use a provider preset"
        )));
    };
    let Some(file) = config.refresh_token_file.clone() else {
        return Err(OAuthError::Device(format!(
            "upstream {upstream:?} uses flow = \"client_credentials\", which needs no login: the relay fetches its tokens with the client secret"
        )));
    };
    let http = http_client(config.ca_file.as_deref(), timeout)
        .map_err(|e| OAuthError::Device(format!("cannot set up HTTPS: {e}")))?;
    let mut form: Vec<(&str, String)> = vec![
        ("client_id", config.client_id.clone()),
        ("scope", config.scope.clone().unwrap_or_default()),
    ];
    let grant: DeviceAuthorization = post_form(&http, device_url, &form).await?;
    match &grant.message {
        Some(message) => tell(message),
        None => tell(&format!(
            "To sign in, open {} and enter the code {}",
            grant.verification_uri, grant.user_code
        )),
    }
    if let Some(complete) = &grant.verification_uri_complete {
        tell(&format!("(or open {complete})"));
    }
    let deadline = Instant::now() + Duration::from_secs(grant.expires_in.unwrap_or(900));
    let mut interval = Duration::from_secs(grant.interval.unwrap_or(5).max(1));
    form.retain(|(k, _)| *k != "scope");
    if let Some(secret) = &config.client_secret {
        form.push(("client_secret", secret.expose().to_owned()));
    }
    form.push(("grant_type", DEVICE_CODE_GRANT.into()));
    form.push(("device_code", grant.device_code.clone()));
    loop {
        if Instant::now() + interval > deadline {
            return Err(OAuthError::Device(
                "the code expired before sign-in was completed".into(),
            ));
        }
        tokio::time::sleep(interval).await;
        match post_form::<TokenResponse>(&http, token_url(config), &form).await {
            Ok(answer) => {
                let refresh = answer.refresh_token.filter(|t| !t.is_empty()).ok_or_else(|| {
                    OAuthError::Device(
                        "signed in, but the provider gave no refresh token: add offline_access to the scope".into(),
                    )
                })?;
                write_refresh_token(&file, &Secret::new(refresh))?;
                return Ok(file);
            }
            Err(OAuthError::Refused { error, .. }) if error == "authorization_pending" => {}
            // RFC 8628 §3.5: wait 5 seconds longer from now on.
            Err(OAuthError::Refused { error, .. }) if error == "slow_down" => {
                interval += Duration::from_secs(5);
            }
            Err(OAuthError::Refused { error, .. }) if error == "expired_token" => {
                return Err(OAuthError::Device(
                    "the code expired before sign-in was completed".into(),
                ));
            }
            Err(OAuthError::Refused { error, .. }) if error == "access_denied" => {
                return Err(OAuthError::Device(
                    "sign-in was declined (access_denied)".into(),
                ));
            }
            Err(other) => return Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_token_files_are_rewritten_atomically_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oauth/m365.json");
        assert!(matches!(
            read_refresh_token(&path),
            Err(OAuthError::RefreshTokenFile { .. })
        ));
        write_refresh_token(&path, &Secret::new("first")).unwrap();
        assert_eq!(read_refresh_token(&path).unwrap().expose(), "first");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);

        // Other fields survive a rotation.
        std::fs::write(
            &path,
            r#"{"refresh_token": "old", "account": "relay@contoso.com"}"#,
        )
        .unwrap();
        write_refresh_token(&path, &Secret::new("new")).unwrap();
        let value: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(value["refresh_token"], "new");
        assert_eq!(value["account"], "relay@contoso.com");
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );

        std::fs::write(&path, "refresh_token=abc").unwrap();
        let e = read_refresh_token(&path).unwrap_err().to_string();
        assert!(e.contains("not JSON"), "{e}");
    }

    #[test]
    fn expires_in_as_number_or_string() {
        let (_, d) = access_token_of(Some("t".into()), Some(serde_json::json!(3599))).unwrap();
        assert_eq!(d, Duration::from_secs(3599));
        let (_, d) = access_token_of(Some("t".into()), Some(serde_json::json!("60"))).unwrap();
        assert_eq!(d, Duration::from_secs(60));
        let (_, d) = access_token_of(Some("t".into()), None).unwrap();
        assert_eq!(d, Duration::from_secs(3600));
        assert!(access_token_of(None, None).is_err());
        assert!(access_token_of(Some(String::new()), None).is_err());
    }

    #[test]
    fn fixes_follow_the_error_codes() {
        let refused = |error: &str, description: &str| OAuthError::Refused {
            status: 400,
            error: error.into(),
            description: description.into(),
        };
        assert!(
            refused(
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided."
            )
            .fix("m365")
            .contains("client secret is wrong or expired")
        );
        assert!(
            refused("invalid_grant", "AADSTS70000: expired")
                .fix("m365")
                .contains("run `smarthost oauth login --upstream m365` again")
        );
        assert!(
            refused("unauthorized_client", "")
                .fix("x")
                .contains("SMTP.SendAsApp")
        );
    }
}
