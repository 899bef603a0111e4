//! `smarthost oauth login --upstream NAME`: the device authorization grant (RFC 8628)
//! for delegated consent. A person opens the provider's page, enters the code, signs in
//! as the mailbox; the refresh token lands in the upstream's `refresh_token_file`, where
//! `serve` picks it up.

use std::path::PathBuf;

use crate::config::Config;
use crate::deliver::oauth::device_login;

/// Why the login did not produce a refresh token; the text says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// No upstream of that name, or it has no `[upstream.oauth]`.
    #[error("{0}")]
    Setup(String),
    /// The provider's answer.
    #[error("{error}\n  fix: {fix}")]
    Provider {
        /// What went wrong.
        error: crate::deliver::oauth::OAuthError,
        /// What to do.
        fix: String,
    },
}

/// Run the device login for `upstream`; `tell` shows lines to the person. Returns the
/// file the refresh token was written to.
pub async fn login(
    config: &Config,
    upstream: &str,
    tell: impl FnMut(&str),
) -> Result<PathBuf, LoginError> {
    let names: Vec<String> = config.upstream.iter().map(|u| u.display_name()).collect();
    let Some(up) = config
        .upstream
        .iter()
        .find(|u| u.display_name() == upstream)
    else {
        return Err(LoginError::Setup(format!(
            "no upstream named {upstream:?}; the configured upstreams are {}",
            names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let Some(oauth) = &up.oauth else {
        return Err(LoginError::Setup(format!(
            "upstream {upstream:?} has no [upstream.oauth] table: add one with flow = \"refresh_token\" (see docs/configuration.md)"
        )));
    };
    device_login(upstream, oauth, up.timeout, tell)
        .await
        .map_err(|error| LoginError::Provider {
            fix: error.fix(upstream),
            error,
        })
}
