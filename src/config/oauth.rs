//! `[upstream.oauth]`: OAuth 2.0 for an upstream, so XOAUTH2 keeps working without a
//! second program refreshing tokens.
//!
//! The table is read as written ([`OAuthConfig`]) and completed by [`OAuthConfig::resolve`]
//! during validation: a provider preset fills the token URL (from `tenant` where the
//! provider needs one), the scope and the device URL; secrets given as files are read;
//! the refresh token file gets its default path.

use std::path::PathBuf;

use serde::Deserialize;

use super::Provider;
use super::values::Secret;

/// The OAuth 2.0 grant used to obtain access tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum OAuthFlow {
    /// Client credentials (RFC 6749 §4.4): app-only access, e.g. Microsoft 365 with the
    /// `SMTP.SendAsApp` permission.
    ClientCredentials,
    /// Refresh token (RFC 6749 §6): delegated access (Gmail, Outlook.com, delegated
    /// Microsoft 365); the refresh token comes from `smarthost oauth login`.
    RefreshToken,
}

super::values::word_enum!(OAuthFlow {
    ClientCredentials = "client_credentials",
    RefreshToken = "refresh_token"
});

/// `[upstream.oauth]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// Which grant obtains the access tokens.
    pub flow: OAuthFlow,
    /// Microsoft directory (`contoso.onmicrosoft.com` or its ID); the office365 and
    /// outlook presets build `token_url` and `device_url` from it.
    pub tenant: Option<String>,
    /// The token endpoint (HTTPS).
    pub token_url: Option<String>,
    /// The application's client ID.
    pub client_id: String,
    /// The application's client secret.
    pub client_secret: Option<Secret>,
    /// File holding the client secret (Docker secrets); trailing newlines are ignored.
    pub client_secret_file: Option<PathBuf>,
    /// Scope(s) to ask for, separated by spaces.
    pub scope: Option<String>,
    /// JSON file with `{"refresh_token": "..."}` (refresh_token flow); rewritten
    /// atomically (0600) when the provider rotates the token. Default
    /// `data/oauth/NAME.json`.
    pub refresh_token_file: Option<PathBuf>,
    /// The device authorization endpoint, for `smarthost oauth login`.
    pub device_url: Option<String>,
    /// Extra CA certificate(s) (PEM) to trust for the token endpoint.
    pub ca_file: Option<PathBuf>,
}

/// What a provider preset knows about its identity platform.
struct Platform {
    token_url: String,
    device_url: Option<String>,
    scope: &'static str,
}

fn platform(provider: &Provider, flow: OAuthFlow, tenant: &str) -> Result<Platform, String> {
    let microsoft = |tenant: &str, scope| Platform {
        token_url: format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"),
        device_url: Some(format!(
            "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode"
        )),
        scope,
    };
    match (provider, flow) {
        (Provider::Office365, OAuthFlow::ClientCredentials) => {
            Ok(microsoft(tenant, "https://outlook.office365.com/.default"))
        }
        (Provider::Office365, OAuthFlow::RefreshToken) => Ok(microsoft(
            tenant,
            "https://outlook.office365.com/SMTP.Send offline_access",
        )),
        (Provider::Outlook, OAuthFlow::RefreshToken) => Ok(microsoft(
            tenant,
            "https://outlook.office.com/SMTP.Send offline_access",
        )),
        (Provider::Gmail, OAuthFlow::RefreshToken) => Ok(Platform {
            token_url: "https://oauth2.googleapis.com/token".into(),
            device_url: Some("https://oauth2.googleapis.com/device/code".into()),
            scope: "https://mail.google.com/",
        }),
        (Provider::Outlook | Provider::Gmail, OAuthFlow::ClientCredentials) => Err(format!(
            "{provider} accounts cannot send with app-only tokens: use flow = \"refresh_token\" and run `smarthost oauth login` once"
        )),
        (other, _) => Err(format!(
            "the {other} preset has no OAuth settings: give token_url and scope yourself"
        )),
    }
}

impl OAuthConfig {
    /// Complete the table for the upstream `name` configured with `provider`: fill what
    /// the preset knows, read `client_secret_file`, default `refresh_token_file`.
    /// Errors are `(key below oauth, problem and fix)`.
    pub fn resolve(
        &mut self,
        provider: Option<&Provider>,
        name: &str,
    ) -> Result<(), (&'static str, String)> {
        if self.client_id.trim().is_empty() {
            return Err((
                "client_id",
                "is empty: give the application (client) ID from the app registration".into(),
            ));
        }
        if let Some(file) = &self.client_secret_file {
            if self.client_secret.is_some() {
                return Err((
                    "client_secret_file",
                    "give either client_secret or client_secret_file, not both".into(),
                ));
            }
            let secret = std::fs::read_to_string(file).map_err(|e| {
                (
                    "client_secret_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            self.client_secret = Some(Secret::new(secret.trim_end_matches(['\r', '\n'])));
        }
        if self
            .client_secret
            .as_ref()
            .is_some_and(|s| s.expose().is_empty())
        {
            self.client_secret = None;
        }
        let microsoft = matches!(provider, Some(Provider::Office365 | Provider::Outlook));
        let tenant = match (&self.tenant, provider) {
            (Some(t), _) => Some(t.trim().to_owned()),
            (None, Some(Provider::Outlook)) => Some("consumers".to_owned()),
            _ => None,
        };
        if let Some(provider) = provider
            && (self.token_url.is_none() || self.scope.is_none() || self.device_url.is_none())
        {
            let needs_tenant = microsoft && self.token_url.is_none();
            let tenant = match &tenant {
                Some(t) if !t.is_empty() => t.clone(),
                _ if needs_tenant => {
                    return Err((
                        "tenant",
                        format!(
                            "the {provider} preset builds token_url from the tenant: set tenant = \"contoso.onmicrosoft.com\" (your directory's domain or ID), or give token_url"
                        ),
                    ));
                }
                _ => String::new(),
            };
            match platform(provider, self.flow, &tenant) {
                Ok(p) => {
                    self.token_url.get_or_insert(p.token_url);
                    self.scope.get_or_insert_with(|| p.scope.to_owned());
                    if self.device_url.is_none() {
                        self.device_url = p.device_url;
                    }
                }
                Err(problem) if self.token_url.is_none() || self.scope.is_none() => {
                    return Err(("flow", problem));
                }
                Err(_) => {}
            }
        }
        let Some(token_url) = &self.token_url else {
            return Err((
                "token_url",
                "is missing: give the provider's token endpoint (https://...), or use a provider preset (office365, outlook, gmail)".into(),
            ));
        };
        check_https("token_url", token_url)?;
        if let Some(device_url) = &self.device_url {
            check_https("device_url", device_url)?;
        }
        if self.scope.as_deref().is_none_or(|s| s.trim().is_empty()) {
            return Err((
                "scope",
                "is missing: give the scope the provider documents for SMTP (e.g. \"https://outlook.office365.com/.default\")".into(),
            ));
        }
        match self.flow {
            OAuthFlow::ClientCredentials if self.client_secret.is_none() => {
                return Err((
                    "client_secret",
                    "flow = \"client_credentials\" needs the application's client secret (client_secret or client_secret_file)".into(),
                ));
            }
            OAuthFlow::ClientCredentials => {}
            OAuthFlow::RefreshToken => {
                self.refresh_token_file
                    .get_or_insert_with(|| PathBuf::from(format!("data/oauth/{name}.json")));
            }
        }
        Ok(())
    }
}

fn check_https(key: &'static str, text: &str) -> Result<(), (&'static str, String)> {
    match url::Url::parse(text) {
        Ok(u) if u.scheme() == "https" && u.host().is_some() => Ok(()),
        Ok(_) => Err((
            key,
            format!("{text:?} is not an https:// URL: tokens and secrets travel only over HTTPS"),
        )),
        Err(e) => Err((key, format!("{text:?} is not a URL: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth(flow: OAuthFlow) -> OAuthConfig {
        OAuthConfig {
            flow,
            tenant: None,
            token_url: None,
            client_id: "app".into(),
            client_secret: Some(Secret::new("s")),
            client_secret_file: None,
            scope: None,
            refresh_token_file: None,
            device_url: None,
            ca_file: None,
        }
    }

    #[test]
    fn presets_fill_the_endpoints() {
        let mut o = oauth(OAuthFlow::ClientCredentials);
        o.tenant = Some("contoso.onmicrosoft.com".into());
        o.resolve(Some(&Provider::Office365), "m365").unwrap();
        assert_eq!(
            o.token_url.as_deref(),
            Some("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token")
        );
        assert_eq!(
            o.scope.as_deref(),
            Some("https://outlook.office365.com/.default")
        );
        assert!(o.refresh_token_file.is_none());

        let mut o = oauth(OAuthFlow::RefreshToken);
        o.client_secret = None;
        o.resolve(Some(&Provider::Outlook), "live").unwrap();
        assert_eq!(
            o.token_url.as_deref(),
            Some("https://login.microsoftonline.com/consumers/oauth2/v2.0/token")
        );
        assert_eq!(
            o.refresh_token_file.as_deref(),
            Some(std::path::Path::new("data/oauth/live.json"))
        );

        let mut o = oauth(OAuthFlow::RefreshToken);
        o.resolve(Some(&Provider::Gmail), "gmail").unwrap();
        assert_eq!(o.scope.as_deref(), Some("https://mail.google.com/"));
        assert_eq!(
            o.device_url.as_deref(),
            Some("https://oauth2.googleapis.com/device/code")
        );
    }

    #[test]
    fn what_is_missing_is_named_with_the_fix() {
        let mut o = oauth(OAuthFlow::ClientCredentials);
        let (key, why) = o.resolve(Some(&Provider::Office365), "m").unwrap_err();
        assert_eq!(key, "tenant");
        assert!(why.contains("set tenant = "), "{why}");

        let mut o = oauth(OAuthFlow::ClientCredentials);
        let (key, why) = o.resolve(Some(&Provider::Gmail), "g").unwrap_err();
        assert_eq!(key, "flow");
        assert!(why.contains("flow = \"refresh_token\""), "{why}");

        let mut o = oauth(OAuthFlow::ClientCredentials);
        assert_eq!(o.resolve(None, "x").unwrap_err().0, "token_url");

        let mut o = oauth(OAuthFlow::ClientCredentials);
        o.token_url = Some("http://idp.example/token".into());
        o.scope = Some("s".into());
        let (key, why) = o.resolve(None, "x").unwrap_err();
        assert_eq!(key, "token_url");
        assert!(why.contains("only over HTTPS"), "{why}");

        let mut o = oauth(OAuthFlow::ClientCredentials);
        o.token_url = Some("https://idp.example/token".into());
        assert_eq!(o.resolve(None, "x").unwrap_err().0, "scope");

        let mut o = oauth(OAuthFlow::ClientCredentials);
        o.token_url = Some("https://idp.example/token".into());
        o.scope = Some("s".into());
        o.client_secret = Some(Secret::new(""));
        assert_eq!(o.resolve(None, "x").unwrap_err().0, "client_secret");
    }
}
