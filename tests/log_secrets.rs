//! Secrets never reach a log: the real binary, at `SMARTHOST_LOG=trace`, delivers a
//! message through an upstream that needs AUTH (PLAIN, LOGIN, XOAUTH2 over implicit
//! TLS), and neither the secret nor any of its base64 forms appears in its output.
//! In `[log] format = "json"` every line of the log is a JSON object. With
//! `[upstream.oauth]` the same holds for the client secret, the refresh tokens (the one
//! configured and the one the provider rotates in) and every access token.

pub mod fake_upstream;
pub mod oauth_idp;
pub mod support;

use std::path::Path;
use std::time::Duration;

use base64::prelude::{BASE64_STANDARD, Engine as _};

use fake_upstream::pki::TestCa;
use fake_upstream::{FakeUpstream, Mode};
use smarthost::ops::send::{SendRequest, send};
use support::process::Smarthost;
use support::{CHILD_GUARD, TestConfig};

const USER: &str = "relay@example.com";
/// Distinctive enough that any occurrence in the output is the secret itself.
const PASSWORD: &str = "Pw-q7Zx9-NOT-IN-LOGS-31k";
const TOKEN: &str = "ya29-Tok-K4mL2-NOT-IN-LOGS-88";
const CLIENT_ID: &str = "relay-app";
const CLIENT_SECRET: &str = "Cs-8fWq-NOT-IN-LOGS-2b";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    Plain,
    Login,
    XOAuth2,
    /// `[upstream.oauth]` with the client credentials grant.
    OAuthClientCredentials,
    /// `[upstream.oauth]` with the refresh token grant (rotating refresh tokens).
    OAuthRefreshToken,
}

/// Every form in which a secret could leak: as it is, base64, and as XOAUTH2's
/// initial response when it is an access token.
fn forms(secret: &str) -> Vec<String> {
    let b64 = |s: &str| BASE64_STANDARD.encode(s.as_bytes());
    vec![
        secret.to_owned(),
        b64(secret),
        b64(&format!("user={USER}\x01auth=Bearer {secret}\x01\x01")),
    ]
}

/// Every form in which `auth`'s secret could leak.
fn forbidden(auth: Auth) -> Vec<String> {
    let b64 = |s: &str| BASE64_STANDARD.encode(s.as_bytes());
    match auth {
        Auth::Plain | Auth::Login => vec![
            PASSWORD.to_owned(),
            // AUTH PLAIN's initial response, and the same without the authzid separator.
            b64(&format!("\0{USER}\0{PASSWORD}")),
            b64(&format!("{USER}\0{PASSWORD}")),
            // AUTH LOGIN's password line.
            b64(PASSWORD),
        ],
        Auth::XOAuth2 => vec![
            TOKEN.to_owned(),
            b64(&format!("user={USER}\x01auth=Bearer {TOKEN}\x01\x01")),
            b64(TOKEN),
        ],
        Auth::OAuthClientCredentials | Auth::OAuthRefreshToken => forms(CLIENT_SECRET),
    }
}

fn config_file(
    dir: &Path,
    fake: &FakeUpstream,
    ca: &TestCa,
    auth: Auth,
    json: bool,
    token_url: &str,
) -> String {
    let oauth = |flow: &str| {
        format!(
            "[upstream.oauth]\nflow = \"{flow}\"\ntoken_url = \"{token_url}\"\nclient_id = \"{CLIENT_ID}\"\n\
             client_secret = \"{CLIENT_SECRET}\"\nscope = \"https://outlook.office365.com/.default\"\n\
             refresh_token_file = {:?}\nca_file = {:?}\n",
            dir.join("oauth.json").display().to_string(),
            ca.ca_file().display().to_string(),
        )
    };
    let secret = match auth {
        Auth::Plain | Auth::Login => format!("password = \"{PASSWORD}\""),
        Auth::XOAuth2 => format!("oauth_token = \"{TOKEN}\""),
        Auth::OAuthClientCredentials => oauth("client_credentials"),
        Auth::OAuthRefreshToken => oauth("refresh_token"),
    };
    let text = format!(
        "[server]\nshutdown_grace = \"2s\"\n\n[metrics]\nlisten = \"off\"\n\n[log]\nformat = \"{format}\"\n\n\
         [[upstream]]\nname = \"auth\"\nurl = \"smtps://localhost:{port}\"\nca_file = {ca:?}\n\
         timeout = \"5s\"\nusername = \"{USER}\"\n{secret}\n",
        format = if json { "json" } else { "text" },
        port = fake.port(),
        ca = ca.ca_file().display().to_string(),
    );
    TestConfig::new(dir)
        .toml(&text)
        .write()
        .display()
        .to_string()
}

fn run(auth: Auth, json: bool) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ca = TestCa::generate();
    let (mechanism, secret) = match auth {
        Auth::Plain => ("PLAIN", PASSWORD),
        Auth::Login => ("LOGIN", PASSWORD),
        Auth::XOAuth2 | Auth::OAuthClientCredentials | Auth::OAuthRefreshToken => {
            ("XOAUTH2", TOKEN)
        }
    };
    let idp = rt.block_on(oauth_idp::IdentityProvider::start(&ca));
    idp.add_client(CLIENT_ID, CLIENT_SECRET);
    idp.set_rotate_refresh_tokens(true);
    let managed = matches!(auth, Auth::OAuthClientCredentials | Auth::OAuthRefreshToken);
    let builder = FakeUpstream::builder(Mode::Implicit)
        .cert(&ca.leaf("localhost"))
        .auth(&[mechanism]);
    let builder = if managed {
        builder.xoauth2_validator(idp.validator())
    } else {
        builder.account(USER, secret)
    };
    let fake = rt.block_on(builder.start());
    let dir = tempfile::tempdir().expect("temp dir");
    let first_refresh_token = idp.issue_refresh_token(CLIENT_ID);
    std::fs::write(
        dir.path().join("oauth.json"),
        format!("{{\"refresh_token\": \"{first_refresh_token}\"}}"),
    )
    .expect("refresh token file");
    let config = config_file(dir.path(), &fake, &ca, auth, json, &idp.token_url());

    let relay = Smarthost::new(&["serve", "-c", &config], dir.path())
        .env("SMARTHOST_LOG", "trace")
        .env_remove("RUST_LOG")
        .start();
    let port = relay.addr().port();

    let request = SendRequest {
        server: format!("127.0.0.1:{port}"),
        from: "app@example.com".into(),
        to: vec!["user@example.net".into()],
        subject: "secret test".into(),
        body: "Nothing to see here.\n".into(),
        raw: None,
        helo: "app.test".into(),
        timeout: CHILD_GUARD,
    };
    let response = rt.block_on(send(&request)).expect("submission");
    assert_eq!(response.code, 250, "{response}");
    relay.wait_for_log("delivered");
    let out = relay.stop();

    // Delivered, with AUTH, as the log says: the search below is not vacuous.
    let messages = fake.messages();
    assert_eq!(messages.len(), 1, "{out:?}");
    assert_eq!(messages[0].user.as_deref(), Some(USER));
    assert!(messages[0].tls);
    let lines: Vec<String> = fake.lines().into_iter().map(|l| l.text).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("AUTH {mechanism}"))),
        "{lines:?}"
    );
    let delivered: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("delivered") && l.contains("upstream"))
        .collect();
    assert_eq!(delivered.len(), 1, "{out:?}");
    assert!(delivered[0].contains("auth"), "{out:?}");
    assert!(out.stderr.contains("config: upstream"), "{out:?}");
    // SMARTHOST_LOG=trace took effect: the debug-level session lines are there too.
    assert!(out.stderr.contains("DEBUG"), "{out:?}");

    let mut forbidden = forbidden(auth);
    if managed {
        // The access tokens the upstream saw, and every refresh token.
        let tokens: Vec<String> = fake
            .xoauth2_attempts()
            .into_iter()
            .map(|a| a.token)
            .collect();
        assert!(!tokens.is_empty());
        let saved: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("oauth.json")).expect("refresh token file"),
        )
        .expect("JSON");
        let mut refresh = vec![first_refresh_token.clone()];
        refresh.extend(saved["refresh_token"].as_str().map(str::to_owned));
        if auth == Auth::OAuthRefreshToken {
            assert_ne!(refresh[0], refresh[1], "the provider rotated the token");
        }
        for secret in tokens.iter().chain(&refresh) {
            forbidden.extend(forms(secret));
        }
        assert!(
            out.stderr.contains("OAuth access token obtained"),
            "{out:?}"
        );
    }
    for secret in forbidden {
        assert!(
            !out.stdout.contains(&secret) && !out.stderr.contains(&secret),
            "secret form {secret:?} leaked:\n{out:?}"
        );
    }

    if json {
        for line in out.stderr.lines() {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{out:?}"));
            assert!(value.is_object(), "{line}");
            assert!(value.get("level").is_some(), "{line}");
            assert!(value.get("timestamp").is_some(), "{line}");
        }
        let line = delivered[0];
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["message"], "delivered", "{line}");
        assert!(value["queue_id"].is_string(), "{line}");
        assert_eq!(value["upstream"], "auth", "{line}");
    } else {
        assert!(out.stderr.lines().all(|l| !l.starts_with('{')), "{out:?}");
    }
    drop(fake);
    rt.shutdown_timeout(Duration::from_secs(1));
}

#[test]
fn auth_plain_text_log() {
    run(Auth::Plain, false);
}

#[test]
fn auth_plain_json_log() {
    run(Auth::Plain, true);
}

#[test]
fn auth_login_text_log() {
    run(Auth::Login, false);
}

#[test]
fn auth_login_json_log() {
    run(Auth::Login, true);
}

#[test]
fn xoauth2_text_log() {
    run(Auth::XOAuth2, false);
}

#[test]
fn xoauth2_json_log() {
    run(Auth::XOAuth2, true);
}

#[test]
fn oauth_client_credentials_text_log() {
    run(Auth::OAuthClientCredentials, false);
}

#[test]
fn oauth_refresh_token_json_log() {
    run(Auth::OAuthRefreshToken, true);
}

#[test]
fn oauth_refresh_token_text_log() {
    run(Auth::OAuthRefreshToken, false);
}
