//! The test identity provider ([`oauth_idp`]) checked on its own, with a minimal HTTPS
//! client that trusts the test CA (not the relay): every grant, every failure it can be
//! told to produce, and the XOAUTH2 validator it hands the fake upstream.

pub mod fake_upstream;
pub mod oauth_idp;
pub mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use fake_upstream::pki::TestCa;
use fake_upstream::{FakeUpstream, Mode};
use oauth_idp::{DEVICE_GRANT, IdentityProvider};
use support::{HANG_GUARD, within};

const SCOPE: &str = "https://outlook.office365.com/.default";

/// An HTTP response as the client saw it.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_owned()
    }

    fn description(&self) -> String {
        self.json()["error_description"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// One request over HTTPS (trusting only `ca`), read to the end of the connection.
async fn request(
    ca: &TestCa,
    method: &str,
    url: &str,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> Reply {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca.ca_file()).expect("CA file") {
        roots.add(cert.expect("CA cert")).expect("add CA");
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let url = url::Url::parse(url).expect("URL");
    let host = url.host_str().expect("host").to_owned();
    let port = url.port().expect("port");
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        url.path(),
        body.len()
    );
    if let Some((id, secret)) = basic {
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let pair = BASE64_STANDARD.encode(format!("{}:{}", enc(id), enc(secret)));
        head.push_str(&format!("Authorization: Basic {pair}\r\n"));
    }
    head.push_str("\r\n");
    let exchange = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .expect("connect IdP");
        let name = ServerName::try_from(host.clone()).expect("server name");
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the IdP");
        tls.write_all(head.as_bytes()).await.expect("write head");
        tls.write_all(body.as_bytes()).await.expect("write body");
        tls.flush().await.expect("flush");
        let mut raw = Vec::new();
        tls.read_to_end(&mut raw).await.expect("read response");
        raw
    };
    let raw = tokio::time::timeout(HANG_GUARD, exchange)
        .await
        .expect("IdP answers in time");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("response head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let reply = Reply {
        status,
        headers,
        body: body.to_owned(),
    };
    let length: usize = reply
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .expect("Content-Length");
    assert_eq!(length, reply.body.len(), "body length matches");
    reply
}

async fn post(ca: &TestCa, url: &str, form: &[(&str, &str)]) -> Reply {
    request(ca, "POST", url, form, None).await
}

async fn client_credentials(ca: &TestCa, idp: &IdentityProvider, id: &str, secret: &str) -> Reply {
    post(
        ca,
        &idp.token_url(),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
            ("scope", SCOPE),
        ],
    )
    .await
}

async fn setup() -> (TestCa, IdentityProvider) {
    let ca = TestCa::generate();
    let idp = IdentityProvider::start(&ca).await;
    idp.add_client("relay-app", "s3cret+/=");
    (ca, idp)
}

#[tokio::test]
async fn client_credentials_grant() {
    let (ca, idp) = setup().await;
    assert!(idp.token_url().starts_with("https://127.0.0.1:"));
    assert!(idp.token_url().ends_with("/tenant/oauth2/v2.0/token"));

    let first = client_credentials(&ca, &idp, "relay-app", "s3cret+/=").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(
        first
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(first.header("cache-control"), Some("no-store"));
    let json = first.json();
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 3600);
    let token1 = json["access_token"].as_str().unwrap().to_owned();
    assert!(idp.is_valid_access_token(&token1));
    assert!(!idp.is_valid_access_token("made-up"));

    // HTTP Basic client authentication, with form-urlencoded id and secret.
    let second = request(
        &ca,
        "POST",
        &idp.token_url(),
        &[("grant_type", "client_credentials"), ("scope", SCOPE)],
        Some(("relay-app", "s3cret+/=")),
    )
    .await;
    assert_eq!(second.status, 200, "{}", second.body);
    let token2 = second.json()["access_token"].as_str().unwrap().to_owned();
    assert_ne!(token1, token2, "tokens are unique");
    assert!(idp.is_valid_access_token(&token2));
    assert_eq!(idp.access_tokens_issued(), 2);

    let requests = idp.token_requests();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert_eq!(r.grant_type, "client_credentials");
        assert_eq!(r.client_id.as_deref(), Some("relay-app"));
        assert_eq!(r.scope.as_deref(), Some(SCOPE));
        assert!(r.ok);
        assert_eq!(r.error, None);
    }
    assert!(!requests[0].basic_auth);
    assert!(requests[1].basic_auth);
}

#[tokio::test]
async fn client_credentials_refused() {
    let (ca, idp) = setup().await;

    let wrong = client_credentials(&ca, &idp, "relay-app", "wrong").await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.error(), "invalid_client");
    assert!(
        wrong
            .description()
            .starts_with("AADSTS7000215: Invalid client secret provided.")
    );
    assert_eq!(wrong.json()["error_codes"][0], 7000215);

    let unknown = client_credentials(&ca, &idp, "nobody", "x").await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.error(), "unauthorized_client");
    assert!(unknown.description().starts_with("AADSTS700016"));

    let no_secret = post(
        &ca,
        &idp.token_url(),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "relay-app"),
        ],
    )
    .await;
    assert_eq!(no_secret.status, 401);
    assert_eq!(no_secret.error(), "invalid_client");

    let requests = idp.token_requests();
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| !r.ok));
    assert_eq!(requests[0].error.as_deref(), Some("invalid_client"));
    assert_eq!(requests[1].error.as_deref(), Some("unauthorized_client"));
    assert_eq!(requests[2].scope, None);
    assert_eq!(idp.access_tokens_issued(), 0);
}

async fn refresh(ca: &TestCa, idp: &IdentityProvider, client: &str, token: &str) -> Reply {
    post(
        ca,
        &idp.token_url(),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", client),
            ("refresh_token", token),
            (
                "scope",
                "https://outlook.office.com/SMTP.Send offline_access",
            ),
        ],
    )
    .await
}

#[tokio::test]
async fn refresh_token_grant() {
    let (ca, idp) = setup().await;
    idp.add_client("other-app", "");
    let rt = idp.issue_refresh_token("relay-app");

    let ok = refresh(&ca, &idp, "relay-app", &rt).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let json = ok.json();
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(
        json["refresh_token"],
        rt.as_str(),
        "not rotating: the same one"
    );
    assert_eq!(
        json["scope"],
        "https://outlook.office.com/SMTP.Send offline_access"
    );
    assert!(idp.is_valid_access_token(json["access_token"].as_str().unwrap()));

    // Again, still fine (no rotation); with the secret too.
    let with_secret = post(
        &ca,
        &idp.token_url(),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "relay-app"),
            ("client_secret", "s3cret+/="),
            ("refresh_token", &rt),
        ],
    )
    .await;
    assert_eq!(with_secret.status, 200, "{}", with_secret.body);

    // Rotation: a new refresh token each time, the old one dead.
    idp.set_rotate_refresh_tokens(true);
    let rotated = refresh(&ca, &idp, "relay-app", &rt).await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let rt2 = rotated.json()["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt2, rt);
    let reused = refresh(&ca, &idp, "relay-app", &rt).await;
    assert_eq!(reused.status, 400);
    assert_eq!(reused.error(), "invalid_grant");
    assert!(reused.description().starts_with("AADSTS70000"));
    assert_eq!(refresh(&ca, &idp, "relay-app", &rt2).await.status, 200);

    // Someone else's or a made-up refresh token.
    let rt_other = idp.issue_refresh_token("relay-app");
    assert_eq!(
        refresh(&ca, &idp, "other-app", &rt_other).await.error(),
        "invalid_grant"
    );
    assert_eq!(
        refresh(&ca, &idp, "relay-app", "rt.bogus").await.error(),
        "invalid_grant"
    );

    let requests = idp.token_requests();
    assert!(requests.iter().all(|r| r.grant_type == "refresh_token"));
    let oks: Vec<bool> = requests.iter().map(|r| r.ok).collect();
    assert_eq!(oks, [true, true, true, false, true, false, false]);
}

#[tokio::test]
async fn lifetime_revocation_and_validator() {
    let (ca, idp) = setup().await;
    let validator = idp.validator();

    idp.set_token_lifetime(Duration::from_millis(300));
    let short = client_credentials(&ca, &idp, "relay-app", "s3cret+/=").await;
    assert_eq!(short.json()["expires_in"], 1, "rounded up to whole seconds");
    let short = short.json()["access_token"].as_str().unwrap().to_owned();
    assert!(validator("user@example.com", &short));
    assert!(!validator("", &short), "an empty user is refused");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!idp.is_valid_access_token(&short), "expired");
    assert!(!validator("user@example.com", &short));

    idp.set_token_lifetime(Duration::from_secs(2));
    let reply = client_credentials(&ca, &idp, "relay-app", "s3cret+/=").await;
    assert_eq!(reply.json()["expires_in"], 2);
    let token = reply.json()["access_token"].as_str().unwrap().to_owned();
    assert!(idp.is_valid_access_token(&token));
    idp.revoke_access_tokens();
    assert!(!idp.is_valid_access_token(&token), "revoked");
    assert!(!validator("user@example.com", &token));

    let fresh = client_credentials(&ca, &idp, "relay-app", "s3cret+/=").await;
    let fresh = fresh.json()["access_token"].as_str().unwrap().to_owned();
    assert!(
        validator("user@example.com", &fresh),
        "issued after the revocation"
    );
}

#[tokio::test]
async fn failures_on_demand() {
    let (ca, idp) = setup().await;
    idp.fail_next(
        2,
        400,
        "invalid_client",
        "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent ...",
    );
    for _ in 0..2 {
        let failed = client_credentials(&ca, &idp, "relay-app", "s3cret+/=").await;
        assert_eq!(failed.status, 400);
        assert_eq!(failed.error(), "invalid_client");
        assert!(failed.description().starts_with("AADSTS7000215"));
        assert_eq!(failed.header("cache-control"), Some("no-store"));
    }
    let ok = client_credentials(&ca, &idp, "relay-app", "s3cret+/=").await;
    assert_eq!(ok.status, 200, "{}", ok.body);

    idp.fail_next(1, 429, "temporarily_unavailable", "slow down there");
    let limited = client_credentials(&ca, &idp, "relay-app", "s3cret+/=").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.error(), "temporarily_unavailable");
    assert!(limited.json().get("error_codes").is_none());

    idp.set_down(true);
    let down = client_credentials(&ca, &idp, "relay-app", "s3cret+/=").await;
    assert_eq!(down.status, 503);
    assert!(
        down.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(down.body.contains("Service Unavailable"));
    assert!(serde_json::from_str::<Value>(&down.body).is_err());
    let device_down = post(&ca, &idp.device_url(), &[("client_id", "relay-app")]).await;
    assert_eq!(device_down.status, 503);
    idp.set_down(false);
    assert_eq!(
        client_credentials(&ca, &idp, "relay-app", "s3cret+/=")
            .await
            .status,
        200
    );

    let oks: Vec<bool> = idp.token_requests().iter().map(|r| r.ok).collect();
    assert_eq!(oks, [false, false, true, false, false, true]);
    let requests = idp.token_requests();
    assert_eq!(requests[4].error, None, "the 503 carries no OAuth error");
    assert_eq!(requests[4].client_id.as_deref(), Some("relay-app"));
}

#[tokio::test]
async fn malformed_requests() {
    let (ca, idp) = setup().await;
    let unsupported = post(
        &ca,
        &idp.token_url(),
        &[("grant_type", "password"), ("client_id", "relay-app")],
    )
    .await;
    assert_eq!(unsupported.status, 400);
    assert_eq!(unsupported.error(), "unsupported_grant_type");

    let no_grant = post(&ca, &idp.token_url(), &[("client_id", "relay-app")]).await;
    assert_eq!(no_grant.status, 400);
    assert_eq!(no_grant.error(), "invalid_request");

    let port = idp.port();
    let elsewhere = post(
        &ca,
        &format!("https://127.0.0.1:{port}/common/oauth2/token"),
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(elsewhere.status, 404);

    let get = request(&ca, "GET", &idp.token_url(), &[], None).await;
    assert_eq!(get.status, 405);

    // The 404 and 405 never reached the token endpoint.
    assert_eq!(idp.token_requests().len(), 2);
}

async fn device_code(ca: &TestCa, idp: &IdentityProvider) -> String {
    let reply = post(
        ca,
        &idp.device_url(),
        &[
            ("client_id", "relay-app"),
            (
                "scope",
                "https://outlook.office.com/SMTP.Send offline_access",
            ),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let json = reply.json();
    assert_eq!(json["interval"], 1);
    assert_eq!(json["expires_in"], 900);
    assert!(
        json["verification_uri"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );
    let user_code = json["user_code"].as_str().unwrap();
    assert_eq!(user_code.len(), 9);
    assert!(json["message"].as_str().unwrap().contains(user_code));
    json["device_code"].as_str().unwrap().to_owned()
}

async fn poll(ca: &TestCa, idp: &IdentityProvider, code: &str) -> Reply {
    post(
        ca,
        &idp.token_url(),
        &[
            ("grant_type", DEVICE_GRANT),
            ("client_id", "relay-app"),
            ("device_code", code),
        ],
    )
    .await
}

#[tokio::test]
async fn device_code_grant() {
    let (ca, idp) = setup().await;

    // Default: approved at the first poll.
    let code = device_code(&ca, &idp).await;
    let ok = poll(&ca, &idp, &code).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        ok.json()["scope"],
        "https://outlook.office.com/SMTP.Send offline_access"
    );
    let rt = ok.json()["refresh_token"].as_str().unwrap().to_owned();
    assert!(idp.is_valid_access_token(ok.json()["access_token"].as_str().unwrap()));
    assert_eq!(
        poll(&ca, &idp, &code).await.error(),
        "invalid_grant",
        "used"
    );
    assert_eq!(
        refresh(&ca, &idp, "relay-app", &rt).await.status,
        200,
        "the device flow's refresh token works"
    );

    // slow_down once, pending, then approved after 2 polls.
    idp.approve_device_after(2);
    idp.set_slow_down_once(true);
    let code = device_code(&ca, &idp).await;
    assert_eq!(poll(&ca, &idp, &code).await.error(), "slow_down");
    assert_eq!(
        poll(&ca, &idp, &code).await.error(),
        "authorization_pending"
    );
    let approved = poll(&ca, &idp, &code).await;
    assert_eq!(approved.status, 200, "{}", approved.body);

    // Pending, then expired.
    let code = device_code(&ca, &idp).await;
    let pending = poll(&ca, &idp, &code).await;
    assert_eq!(pending.status, 400);
    assert_eq!(pending.error(), "authorization_pending");
    idp.expire_device_codes();
    assert_eq!(poll(&ca, &idp, &code).await.error(), "expired_token");
    assert_eq!(poll(&ca, &idp, &code).await.error(), "expired_token");
    // A new code is fresh.
    idp.approve_device_after(0);
    let code = device_code(&ca, &idp).await;
    idp.set_device_denied(true);
    assert_eq!(poll(&ca, &idp, &code).await.error(), "access_denied");
    idp.set_device_denied(false);
    assert_eq!(poll(&ca, &idp, &code).await.status, 200);

    assert_eq!(poll(&ca, &idp, "dc.bogus").await.error(), "invalid_grant");
    assert_eq!(idp.device_authorizations(), 4);

    // Unknown client at the device endpoint.
    let unknown = post(&ca, &idp.device_url(), &[("client_id", "nobody")]).await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.error(), "unauthorized_client");

    let polls: Vec<(String, bool)> = idp
        .token_requests()
        .iter()
        .filter(|r| r.grant_type == DEVICE_GRANT)
        .map(|r| (r.error.clone().unwrap_or_default(), r.ok))
        .collect();
    let expected: Vec<(String, bool)> = [
        ("", true),
        ("invalid_grant", false),
        ("slow_down", false),
        ("authorization_pending", false),
        ("", true),
        ("authorization_pending", false),
        ("expired_token", false),
        ("expired_token", false),
        ("access_denied", false),
        ("", true),
        ("invalid_grant", false),
    ]
    .iter()
    .map(|(e, ok)| (e.to_string(), *ok))
    .collect();
    assert_eq!(polls, expected);
}

/// A plaintext SMTP client for the fake upstream.
struct Smtp {
    io: BufReader<TcpStream>,
}

impl Smtp {
    async fn connect(port: u16) -> Smtp {
        let tcp = within("connect", TcpStream::connect(("127.0.0.1", port)))
            .await
            .unwrap();
        let mut smtp = Smtp {
            io: BufReader::new(tcp),
        };
        assert!(smtp.reply().await.starts_with("220"));
        smtp
    }

    async fn reply(&mut self) -> String {
        let read = async {
            let mut all = String::new();
            loop {
                let mut line = String::new();
                self.io.read_line(&mut line).await.unwrap();
                assert!(!line.is_empty(), "connection closed");
                all.push_str(&line);
                if line.as_bytes().get(3) != Some(&b'-') {
                    return all.trim_end().to_owned();
                }
            }
        };
        tokio::time::timeout(HANG_GUARD, read).await.expect("reply")
    }

    async fn command(&mut self, line: &str) -> String {
        self.io
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }
}

fn xoauth2(user: &str, token: &str) -> String {
    BASE64_STANDARD.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

#[tokio::test]
async fn fake_upstream_xoauth2_validator() {
    let (ca, idp) = setup().await;
    let token = client_credentials(&ca, &idp, "relay-app", "s3cret+/=").await;
    let token = token.json()["access_token"].as_str().unwrap().to_owned();
    let upstream = FakeUpstream::builder(Mode::Plain)
        .auth(&["XOAUTH2"])
        .xoauth2_validator(idp.validator())
        .start()
        .await;

    let mut smtp = Smtp::connect(upstream.port()).await;
    assert!(
        smtp.command("EHLO client.test")
            .await
            .contains("AUTH XOAUTH2")
    );
    assert!(
        smtp.command("MAIL FROM:<a@example.com>")
            .await
            .starts_with("530")
    );
    let challenge = smtp
        .command(&format!(
            "AUTH XOAUTH2 {}",
            xoauth2("a@example.com", "bogus")
        ))
        .await;
    let status = challenge.strip_prefix("334 ").expect("334 challenge");
    let status: Value = serde_json::from_slice(&BASE64_STANDARD.decode(status).unwrap()).unwrap();
    assert_eq!(status["status"], "401");
    assert_eq!(status["schemes"], "bearer");
    assert_eq!(
        smtp.command("").await,
        "535 5.7.3 Authentication unsuccessful"
    );
    assert_eq!(upstream.auth_failures(), 1);
    assert_eq!(upstream.xoauth2_failures(), 1);

    // Without an initial response, then with a live token.
    assert_eq!(smtp.command("AUTH XOAUTH2").await, "334");
    assert!(
        smtp.command(&xoauth2("a@example.com", &token))
            .await
            .starts_with("235")
    );
    assert!(
        smtp.command("MAIL FROM:<a@example.com>")
            .await
            .starts_with("250")
    );
    smtp.command("QUIT").await;

    // Revoked: refused again.
    idp.revoke_access_tokens();
    let mut smtp = Smtp::connect(upstream.port()).await;
    smtp.command("EHLO client.test").await;
    let challenge = smtp
        .command(&format!(
            "AUTH XOAUTH2 {}",
            xoauth2("a@example.com", &token)
        ))
        .await;
    assert!(challenge.starts_with("334 "));
    assert!(smtp.command("*").await.starts_with("501"), "cancelled");
    assert_eq!(upstream.xoauth2_failures(), 2);
    let attempts = upstream.xoauth2_attempts();
    let accepted: Vec<bool> = attempts.iter().map(|a| a.accepted).collect();
    assert_eq!(accepted, [false, true, false]);
    assert_eq!(attempts[1].token, token);
    assert_eq!(attempts[1].user, "a@example.com");
}
