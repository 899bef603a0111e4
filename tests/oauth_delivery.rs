//! OAuth 2.0 for upstreams, end to end: a local HTTPS identity provider (tests/oauth_idp)
//! issues short-lived tokens, the in-process fake upstream accepts XOAUTH2 only with a
//! currently valid one, and the relay must keep delivering across expiries, revocations,
//! refresh-token rotations, restarts and endpoint failures.

pub mod fake_upstream;
pub mod oauth_idp;
pub mod support;

use std::path::Path;
use std::time::Duration;

use fake_upstream::pki::TestCa;
use fake_upstream::{FakeUpstream, Mode};
use oauth_idp::IdentityProvider;
use support::process::Smarthost;
use support::{HANG_GUARD, Relay, TestConfig, start_relay, wait_for};

const CLIENT_ID: &str = "relay-app";
const CLIENT_SECRET: &str = "client-secret-Zq8x";
const MAILBOX: &str = "relay@contoso.example";

/// A fake upstream over implicit TLS that takes XOAUTH2 with the provider's tokens only.
async fn oauth_upstream(ca: &TestCa, idp: &IdentityProvider) -> FakeUpstream {
    FakeUpstream::builder(Mode::Implicit)
        .cert(&ca.leaf("localhost"))
        .auth(&["XOAUTH2"])
        .xoauth2_validator(idp.validator())
        .start()
        .await
}

/// The `[[upstream]]` and `[upstream.oauth]` tables; `oauth_extra` adds oauth keys.
fn upstream_tables(
    name: &str,
    fake: &FakeUpstream,
    ca: &TestCa,
    idp: &IdentityProvider,
    extra: &str,
    oauth_extra: &str,
) -> String {
    let ca_file = ca.ca_file().display().to_string();
    format!(
        "[[upstream]]\nname = \"{name}\"\nurl = \"smtps://localhost:{port}\"\nca_file = {ca_file:?}\n\
         username = \"{MAILBOX}\"\nmax_messages_per_connection = 1\ntimeout = \"5s\"\n{extra}\n\
         [upstream.oauth]\ntoken_url = \"{token_url}\"\nclient_id = \"{CLIENT_ID}\"\n\
         scope = \"https://outlook.office365.com/.default\"\nca_file = {ca_file:?}\n{oauth_extra}\n",
        port = fake.port(),
        token_url = idp.token_url(),
    )
}

fn client_credentials() -> String {
    format!("flow = \"client_credentials\"\nclient_secret = \"{CLIENT_SECRET}\"\n")
}

fn refresh_token_flow(file: &Path) -> String {
    format!(
        "flow = \"refresh_token\"\nrefresh_token_file = {:?}\n",
        file.display().to_string()
    )
}

async fn submit(relay: &Relay, subject: &str) {
    let mut client = relay.client().await;
    let reply = client
        .send_message(
            "app@example.com",
            &["user@example.net"],
            format!("From: <app@example.com>\r\nSubject: {subject}\r\n\r\nhello\r\n").as_bytes(),
        )
        .await;
    assert_eq!(reply.code, 250, "{reply}");
    client.send_line("QUIT").await;
}

async fn wait_for_messages(fake: &FakeUpstream, n: usize) {
    wait_for(&format!("{n} messages at the upstream"), || async {
        (fake.messages().len() >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_keep_delivering_across_token_expiries() {
    let ca = TestCa::generate();
    let idp = IdentityProvider::start(&ca).await;
    idp.add_client(CLIENT_ID, CLIENT_SECRET);
    idp.set_token_lifetime(Duration::from_secs(2));
    let fake = oauth_upstream(&ca, &idp).await;
    let mut relay = start_relay(&upstream_tables(
        "m365-expiries",
        &fake,
        &ca,
        &idp,
        "",
        &client_credentials(),
    ))
    .await;

    // A stream of messages over about three token lifetimes, each on a new connection.
    for n in 0..8 {
        submit(&relay, &format!("m{n}")).await;
        wait_for_messages(&fake, n + 1).await;
        tokio::time::sleep(Duration::from_millis(750)).await;
    }
    assert_eq!(fake.xoauth2_failures(), 0, "a 535 reached the relay");
    let requests = idp.token_requests();
    assert!(
        requests.len() >= 3 && requests.iter().all(|r| r.ok),
        "tokens must be refreshed before they expire: {} requests",
        requests.len()
    );
    assert!(
        requests.iter().all(|r| r.grant_type == "client_credentials"
            && r.scope.as_deref() == Some("https://outlook.office365.com/.default")),
        "{:?}",
        requests.iter().map(|r| &r.grant_type).collect::<Vec<_>>()
    );
    // The metrics say it too (the recorder is shared by the tests of this binary, hence
    // the distinct upstream name).
    let metrics = support::http_get(relay.metrics_addr().expect("metrics listen"), "/metrics")
        .await
        .1;
    let refreshed = metrics
        .lines()
        .find(|l| {
            l.starts_with("smarthost_oauth_refresh_total{")
                && l.contains("upstream=\"m365-expiries\"")
                && l.contains("result=\"ok\"")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    let count: f64 = refreshed.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(count as usize, requests.len(), "{refreshed}");
    let expiry = metrics
        .lines()
        .find(|l| {
            l.starts_with("smarthost_oauth_token_expiry_seconds{")
                && l.contains("upstream=\"m365-expiries\"")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    let expiry: f64 = expiry.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now - 10.0 && expiry < now + 10.0,
        "{expiry} vs {now}"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refreshed_once_and_the_message_goes() {
    let ca = TestCa::generate();
    let idp = IdentityProvider::start(&ca).await;
    idp.add_client(CLIENT_ID, CLIENT_SECRET);
    let fake = oauth_upstream(&ca, &idp).await;
    let mut relay = start_relay(&upstream_tables(
        "m365",
        &fake,
        &ca,
        &idp,
        "",
        &client_credentials(),
    ))
    .await;
    submit(&relay, "before").await;
    wait_for_messages(&fake, 1).await;
    assert_eq!(idp.token_requests().len(), 1);

    // The provider revokes the token long before it expires.
    idp.revoke_access_tokens();
    submit(&relay, "after").await;
    wait_for_messages(&fake, 2).await;
    assert_eq!(fake.xoauth2_failures(), 1, "one refused token");
    assert_eq!(idp.token_requests().len(), 2, "exactly one refresh");
    let dir = relay.config().spool.dir.clone();
    wait_for("the queue to be empty", || async {
        smarthost::spool::Spool::inspect(&dir)
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_endpoint_moves_mail_to_the_next_upstream_and_check_says_why() {
    let ca = TestCa::generate();
    let idp = IdentityProvider::start(&ca).await;
    idp.add_client(CLIENT_ID, "the-real-secret");
    let fake = oauth_upstream(&ca, &idp).await;
    let spare = FakeUpstream::builder(Mode::Plain).start().await;
    let spare_table = format!(
        "[[upstream]]\nname = \"spare\"\nurl = \"smtp://127.0.0.1:{}?tls=none\"\npriority = 10\n",
        spare.port()
    );
    let mut relay = start_relay(&format!(
        "{}{spare_table}",
        upstream_tables("m365", &fake, &ca, &idp, "", &client_credentials())
    ))
    .await;
    submit(&relay, "goes to the spare").await;
    wait_for_messages(&spare, 1).await;
    assert!(fake.messages().is_empty());
    assert_eq!(fake.connections(), 0, "no SMTP without a token");
    let refused = idp.token_requests();
    assert!(
        refused
            .iter()
            .all(|r| !r.ok && r.error.as_deref() == Some("invalid_client")),
        "{:?}",
        refused.iter().map(|r| &r.error).collect::<Vec<_>>()
    );

    let report = smarthost::ops::check::check_upstreams(relay.config(), None).await;
    assert!(!report.all_ok);
    let text = report.text;
    assert!(
        text.contains("FAIL  oauth")
            && text.contains("invalid_client")
            && text.contains("AADSTS7000215")
            && text.contains("fix: the client secret is wrong or expired"),
        "{text}"
    );
    assert!(!text.contains(CLIENT_SECRET), "{text}");
    relay.shutdown().await;

    // A broken endpoint (503 and HTML) is named as that.
    idp.set_down(true);
    let report = smarthost::ops::check::check_upstreams(relay.config(), None).await;
    assert!(
        report.text.contains("FAIL  oauth") && report.text.contains("503"),
        "{}",
        report.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_shows_the_oauth_step_before_auth() {
    let ca = TestCa::generate();
    let idp = IdentityProvider::start(&ca).await;
    idp.add_client(CLIENT_ID, CLIENT_SECRET);
    let fake = oauth_upstream(&ca, &idp).await;
    let relay = start_relay(&upstream_tables(
        "m365",
        &fake,
        &ca,
        &idp,
        "",
        &client_credentials(),
    ))
    .await;
    let report = smarthost::ops::check::check_upstreams(relay.config(), None).await;
    assert!(report.all_ok, "{}", report.text);
    let text = report.text;
    let oauth = text
        .find("ok    oauth     access token obtained, expires in 3")
        .unwrap_or_else(|| panic!("{text}"));
    let auth = text
        .find("ok    auth      XOAUTH2 accepted")
        .unwrap_or_else(|| panic!("{text}"));
    assert!(oauth < auth, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_refresh_token_is_saved_and_used_after_a_restart() {
    use std::os::unix::fs::PermissionsExt as _;
    let ca = TestCa::generate();
    let idp = IdentityProvider::start(&ca).await;
    idp.add_client(CLIENT_ID, "");
    idp.set_token_lifetime(Duration::from_secs(2));
    idp.set_rotate_refresh_tokens(true);
    let fake = oauth_upstream(&ca, &idp).await;
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("oauth/m365.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let first = idp.issue_refresh_token(CLIENT_ID);
    std::fs::write(
        &file,
        format!("{{\"refresh_token\": \"{first}\", \"note\": \"kept\"}}"),
    )
    .unwrap();
    let tables = upstream_tables("m365", &fake, &ca, &idp, "", &refresh_token_flow(&file));

    let mut relay = start_relay(&tables).await;
    for n in 0..4 {
        submit(&relay, &format!("m{n}")).await;
        wait_for_messages(&fake, n + 1).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    relay.shutdown().await;
    drop(relay);
    assert_eq!(fake.xoauth2_failures(), 0);
    let requests = idp.token_requests();
    assert!(
        requests.len() >= 2
            && requests
                .iter()
                .all(|r| r.ok && r.grant_type == "refresh_token"),
        "{} requests",
        requests.len()
    );
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let rotated = saved["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rotated, first, "the rotated token must be on disk");
    assert_eq!(saved["note"], "kept");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // A new process (a new relay) starts from the file: the first token, now invalid,
    // would fail with invalid_grant.
    let relay = start_relay(&tables).await;
    submit(&relay, "after the restart").await;
    wait_for_messages(&fake, 5).await;
    let last = idp.token_requests().pop().unwrap();
    assert!(last.ok, "{:?}", last.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_login_writes_a_usable_refresh_token() {
    let ca = TestCa::generate();
    let idp = IdentityProvider::start(&ca).await;
    idp.add_client(CLIENT_ID, "");
    idp.approve_device_after(2);
    let fake = oauth_upstream(&ca, &idp).await;
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("m365.json");
    let tables = upstream_tables(
        "m365",
        &fake,
        &ca,
        &idp,
        "",
        &format!(
            "{}device_url = \"{}\"\n",
            refresh_token_flow(&file),
            idp.device_url()
        ),
    );
    // `smarthost oauth login` as a person runs it.
    let config = TestConfig::new(state.path())
        .toml(&tables)
        .write()
        .display()
        .to_string();
    let login = Smarthost::new(
        &["oauth", "login", "--upstream", "m365", "-c", &config],
        state.path(),
    )
    .env("SMARTHOST_LOG", "warn")
    .run_async()
    .await;
    let stdout = &login.stdout;
    assert_eq!(login.code, Some(0), "{login:?}");
    assert!(
        stdout.contains("https://") && stdout.contains("code"),
        "the verification URL and code: {stdout}"
    );
    assert!(stdout.contains(&file.display().to_string()), "{stdout}");
    assert_eq!(idp.device_authorizations(), 1);

    let relay = start_relay(&tables).await;
    submit(&relay, "with the device login's token").await;
    wait_for_messages(&fake, 1).await;
    assert_eq!(fake.xoauth2_failures(), 0);
}

/// An `[upstream.oauth]` for the device grant against `idp`, writing into `file`.
fn device_config(
    ca: &TestCa,
    idp: &IdentityProvider,
    file: &Path,
) -> smarthost::config::OAuthConfig {
    smarthost::config::OAuthConfig {
        flow: smarthost::config::OAuthFlow::RefreshToken,
        tenant: None,
        token_url: Some(idp.token_url()),
        client_id: CLIENT_ID.into(),
        client_secret: None,
        client_secret_file: None,
        scope: Some("https://outlook.office.com/SMTP.Send offline_access".into()),
        refresh_token_file: Some(file.to_owned()),
        device_url: Some(idp.device_url()),
        ca_file: Some(ca.ca_file().to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_login_slows_down_when_asked_and_stops_on_expiry_or_refusal() {
    use smarthost::deliver::oauth::device_login;
    let ca = TestCa::generate();
    let idp = IdentityProvider::start(&ca).await;
    idp.add_client(CLIENT_ID, "");
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("m365.json");
    let config = device_config(&ca, &idp, &file);
    let timeout = Duration::from_secs(5);

    // slow_down: every later poll waits 5 s more (RFC 8628 §3.5).
    idp.set_slow_down_once(true);
    idp.approve_device_after(1);
    let mut told = Vec::new();
    let written = tokio::time::timeout(
        Duration::from_secs(20),
        device_login("m365", &config, timeout, |line| told.push(line.to_owned())),
    )
    .await
    .expect("device login hangs")
    .unwrap();
    assert_eq!(written, file);
    assert!(told.iter().any(|l| l.contains("https://")), "{told:?}");
    let polls = idp.token_requests();
    assert_eq!(polls.len(), 2, "a slow_down, then the tokens");
    assert_eq!(polls[0].error.as_deref(), Some("slow_down"));
    assert!(
        polls[1].at - polls[0].at >= Duration::from_secs(6),
        "the poll after slow_down came {:?} later",
        polls[1].at - polls[0].at
    );
    assert!(smarthost::deliver::oauth::read_refresh_token(&file).is_ok());

    // The code expires while the person has not signed in.
    idp.approve_device_after(1000);
    let login = tokio::spawn({
        let config = config.clone();
        async move { device_login("m365", &config, timeout, |_| {}).await }
    });
    wait_for("the device authorization", || async {
        (idp.device_authorizations() == 2).then_some(())
    })
    .await;
    idp.expire_device_codes();
    let e = tokio::time::timeout(HANG_GUARD, login)
        .await
        .expect("device login hangs")
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("the code expired"), "{e}");

    // The person declines.
    idp.set_device_denied(true);
    let e = tokio::time::timeout(HANG_GUARD, device_login("m365", &config, timeout, |_| {}))
        .await
        .expect("device login hangs")
        .unwrap_err();
    assert!(e.to_string().contains("declined"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connections_share_one_token_request() {
    let ca = TestCa::generate();
    let idp = IdentityProvider::start(&ca).await;
    idp.add_client(CLIENT_ID, CLIENT_SECRET);
    let fake = oauth_upstream(&ca, &idp).await;
    let mut relay = start_relay(&upstream_tables(
        "m365",
        &fake,
        &ca,
        &idp,
        "max_connections = 8\n",
        &client_credentials(),
    ))
    .await;
    let mut senders = Vec::new();
    for n in 0..8 {
        let addr = relay.addr();
        senders.push(tokio::spawn(async move {
            let mut client = support::SmtpClient::<tokio::net::TcpStream>::connect(addr).await;
            client.greeting().await;
            client.expect("EHLO app.test", 250).await;
            let reply = client
                .send_message(
                    "app@example.com",
                    &["user@example.net"],
                    format!("From: <app@example.com>\r\nSubject: c{n}\r\n\r\nhi\r\n").as_bytes(),
                )
                .await;
            assert_eq!(reply.code, 250, "{reply}");
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    wait_for_messages(&fake, 8).await;
    assert!(fake.connections() >= 2, "deliveries ran in parallel");
    assert_eq!(
        idp.token_requests().len(),
        1,
        "one token for all connections"
    );
    relay.shutdown().await;
}
