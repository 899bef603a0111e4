//! `[[route]]` at acceptance (issue 13): the route is chosen at MAIL FROM by the sender
//! and the client, an unmatched sender gets `550 5.7.1`, the choice agrees with what
//! `smarthost route` reports, the command itself, and a reload that brings routes.
//! Every wait has its own deadline (`within`, `wait_for`, `CHILD_GUARD`).

pub mod support;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use smarthost::accept::phase::{Completion, Phase, Rules, Step};
use smarthost::config::Config;
use smarthost::ops::route::{Decision, decide, parse_sender};
use smarthost::proto::parse_command;
use support::config::{parsed, upstream};
use support::process::Smarthost;
use support::{STRICT_HEAD, SmtpClient, TestConfig, list_maildir, wait_for};

/// Two Maildir upstreams: `a` (tried first) and `b`.
fn upstreams(dir: &Path) -> String {
    format!(
        "{}{}",
        upstream("a", &format!("maildir:{}", dir.join("a").display()), ""),
        upstream(
            "b",
            &format!("maildir:{}", dir.join("b").display()),
            "priority = 10"
        )
    )
}

/// Billing mail by sender, office mail by sender and client, bounces (`<>`) from the
/// office network.
const ROUTES: &str = "[[route]]\nname = \"billing\"\nsenders = [\"*@billing.example.com\", \"invoices@example.com\"]\nupstreams = [\"a\"]\n\
[[route]]\nname = \"office\"\nsenders = [\"*@example.com\"]\nclients = [\"127.0.0.0/8\", \"10.1.0.0/16\"]\nupstreams = [\"b\", \"a\"]\n\
[[route]]\nname = \"bounces\"\nclients = [\"10.1.0.0/16\", \"fd00::/64\"]\nupstreams = [\"b\"]\n";

// ---------------------------------------------------------------------------------
// The relay's MAIL FROM logic and `smarthost route` agree.

/// The route the relay's session logic gives mail from `sender` (the text inside
/// `MAIL FROM:<...>`) sent by `client`: `Ok(name)` once the message is accepted,
/// `Err(code)` when MAIL FROM is refused.
fn route_at_mail_from(config: &Config, sender: &str, client: IpAddr) -> Result<String, u16> {
    let rules = Rules::from_config(config, false).for_client(client);
    let (mut phase, _) = Phase::start(&rules, None);
    let lines = [
        "EHLO client.test".to_owned(),
        format!("MAIL FROM:<{sender}>"),
        "RCPT TO:<someone@customer.test>".to_owned(),
        "DATA".to_owned(),
    ];
    for line in &lines {
        let (next, step) = phase.on_command(parse_command(line.as_bytes()).unwrap(), &rules);
        phase = next;
        match step {
            Step::Reply(r) if r.code >= 400 => return Err(r.code),
            Step::Reply(_) | Step::ReadData(_) => {}
            other => panic!("{line}: {other:?}"),
        }
    }
    let incoming = phase.incoming().expect("receiving after DATA");
    let (_, done) = incoming
        .reader
        .feed(b"Subject: s\r\n\r\nbody\r\n.\r\n", &mut incoming.content);
    assert!(done);
    match phase.end_of_content().1 {
        Completion::Accept { envelope, .. } => Ok(envelope.route.expect("routes are configured")),
        Completion::Reject(r) => panic!("refused after DATA: {r}"),
    }
}

fn sender() -> impl Strategy<Value = String> {
    let local = prop::sample::select(vec!["invoices", "app", "Billing", "x.y", "noreply"]);
    let domain = prop::sample::select(vec![
        "billing.example.com",
        "example.com",
        "other.test",
        "sub.billing.example.com",
        "example.com.evil.test",
    ]);
    let address = (local, domain, any::<u64>()).prop_map(|(l, d, case)| {
        // Any case: each letter upper or lower by a bit of `case`.
        format!("{l}@{d}")
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if case >> (i % 64) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    });
    prop_oneof![4 => address, 1 => Just(String::new())]
}

fn client() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u16>().prop_map(|n| IpAddr::from([10, 1, (n >> 8) as u8, n as u8])),
        any::<u16>().prop_map(|n| IpAddr::from([10, 2, (n >> 8) as u8, n as u8])),
        any::<u8>().prop_map(|n| IpAddr::from([127, 0, 0, n])),
        any::<u8>().prop_map(|n| IpAddr::from([192, 0, 2, n])),
        any::<u16>().prop_map(|n| IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, n])),
        any::<u16>().prop_map(|n| IpAddr::from([0xfd00, 0, 0, 1, 0, 0, 0, n])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mail_from_and_the_route_command_choose_the_same_route(sender in sender(), client in client()) {
        let dir = tempfile::tempdir().unwrap();
        let config = parsed(&format!("{}{ROUTES}", upstreams(dir.path())));
        let relay = route_at_mail_from(&config, &sender, client);
        let command = decide(&config, &parse_sender(&sender).unwrap(), client, None);
        match (&relay, &command) {
            (Ok(name), Decision::Route(_, route)) => prop_assert_eq!(name, &route.name),
            (Err(550), Decision::Refused) => {}
            _ => prop_assert!(false, "<{}> from {}: relay {:?}, route command {:?}", sender, client, relay, command),
        }
    }
}

// ---------------------------------------------------------------------------------
// Over real SMTP.

fn message(subject: &str) -> String {
    format!("{STRICT_HEAD}Subject: {subject}\r\n\r\nbody\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_routes_refuses_unmatched_senders_and_accepts_matched_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = TestConfig::new(dir.path()).toml(&format!("{}{ROUTES}", upstreams(dir.path())));
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let mut relay = support::Relay::start(config, dir).await;
    let mut client = relay.client().await;

    let refused = client
        .expect_esc("MAIL FROM:<app@other.test>", 550, "5.7.1")
        .await;
    assert!(
        refused
            .text()
            .contains("No route matches sender <app@other.test> from 127.0.0.1: add a [[route]]"),
        "{}",
        refused.text()
    );
    // The null sender: only `bounces` takes it, and not from 127.0.0.1.
    client.expect_esc("MAIL FROM:<>", 550, "5.7.1").await;

    for sender in ["Invoices@Billing.Example.com", "app@example.com"] {
        let reply = client
            .send_message(sender, &["user@customer.test"], message(sender).as_bytes())
            .await;
        assert_eq!(reply.code, 250, "{sender}: {}", reply.text());
    }
    client.expect("QUIT", 221).await;

    // Both went out (which upstream is the delivery side's business).
    wait_for("2 messages in the Maildirs a and b", || async {
        (list_maildir(&a).len() + list_maildir(&b).len() == 2).then_some(())
    })
    .await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_brings_routes_applies_to_new_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let config = |extra: &str| {
        Arc::new(
            TestConfig::new(dir.path())
                .toml(&format!("{}{extra}", upstreams(dir.path())))
                .load(),
        )
    };
    let relay = smarthost::start(config("")).await.unwrap();
    let addr = relay.local_addrs()[0];

    let mut before = SmtpClient::connect(addr).await;
    before.greeting().await;
    before.expect("EHLO client.test", 250).await;

    let notes = relay.reload((*config(ROUTES)).clone()).await.unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    let mut after = SmtpClient::connect(addr).await;
    after.greeting().await;
    after.expect("EHLO client.test", 250).await;
    after
        .expect_esc("MAIL FROM:<app@other.test>", 550, "5.7.1")
        .await;
    after.expect("MAIL FROM:<app@example.com>", 250).await;
    after.expect("QUIT", 221).await;
    // A session that started before the reload keeps its rules.
    before.expect("MAIL FROM:<app@other.test>", 250).await;
    before.expect("QUIT", 221).await;

    // And back: without routes every sender is taken again.
    relay.reload((*config("")).clone()).await.unwrap();
    let mut again = SmtpClient::connect(addr).await;
    again.greeting().await;
    again.expect("EHLO client.test", 250).await;
    again.expect("MAIL FROM:<app@other.test>", 250).await;
    again.expect("QUIT", 221).await;
    support::within("shutdown", relay.shutdown()).await;
}

// ---------------------------------------------------------------------------------
// `smarthost route` through the binary.

/// `smarthost ARGS` in `dir`, warnings and errors only in the log.
fn run(args: &[&str], dir: &Path) -> support::process::Run {
    Smarthost::new(args, dir).env("SMARTHOST_LOG", "warn").run()
}

#[test]
fn the_route_command_shows_route_upstreams_and_dkim_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let keygen = run(
        &[
            "dkim",
            "keygen",
            "--domain",
            "billing.example.com",
            "--selector",
            "s2026",
            "--algorithm",
            "ed25519-sha256",
            "--out",
            &keys.display().to_string(),
        ],
        dir.path(),
    );
    assert_eq!(keygen.code, Some(0), "{keygen:?}");
    let dkim = format!(
        "[[dkim]]\ndomain = \"billing.example.com\"\nselector = \"s2026\"\nalgorithm = \"ed25519-sha256\"\nkey_file = \"{}\"\n",
        keys.join("billing.example.com.s2026.pem").display()
    );
    let file = TestConfig::new(dir.path())
        .toml(&format!("{}{ROUTES}{dkim}", upstreams(dir.path())))
        .write();
    let file = file.display().to_string();

    let got = run(
        &[
            "route",
            "--from",
            "Invoices@Billing.Example.com",
            "-c",
            &file,
        ],
        dir.path(),
    );
    assert_eq!(got.code, Some(0), "{got:?}");
    for needle in [
        "route: billing (route[0])",
        "1. a (maildir:",
        "dkim: domain billing.example.com, selector s2026, ed25519-sha256",
    ] {
        assert!(
            got.stdout.contains(needle),
            "lacks {needle:?}:\n{}",
            got.stdout
        );
    }
    assert!(
        !got.stdout.contains("2. "),
        "billing may use `a` only:\n{}",
        got.stdout
    );

    let got = run(
        &[
            "route",
            "--from",
            "app@example.com",
            "--client",
            "10.1.9.9",
            "-c",
            &file,
        ],
        dir.path(),
    );
    assert_eq!(got.code, Some(0), "{got:?}");
    for needle in [
        "route: office (route[1])",
        "1. a (maildir:",
        "2. b (maildir:",
        "no DKIM key for example.com: unsigned",
    ] {
        assert!(
            got.stdout.contains(needle),
            "lacks {needle:?}:\n{}",
            got.stdout
        );
    }

    let got = run(
        &[
            "route",
            "--from",
            "app@example.com",
            "--client",
            "192.0.2.1",
            "-c",
            &file,
        ],
        dir.path(),
    );
    assert_eq!(got.code, Some(1), "{got:?}");
    assert!(
        got.stdout
            .contains("no route matches: the relay refuses this sender with 550 5.7.1"),
        "{got:?}"
    );
}

#[test]
fn the_route_command_without_routes_and_with_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let plain = TestConfig::new(dir.path()).write().display().to_string();
    let got = run(&["route", "--from", "a@x.test", "-c", &plain], dir.path());
    assert_eq!(got.code, Some(0), "{got:?}");
    assert!(
        got.stdout
            .contains("no [[route]] configured: every upstream")
            && got.stdout.contains("1. maildir"),
        "{got:?}"
    );

    let other = tempfile::tempdir().unwrap();
    let broken = TestConfig::new(other.path())
        .toml("[[route]]\nname = \"x\"\nupstreams = [\"nope\"]\n")
        .write()
        .display()
        .to_string();
    let got = run(&["route", "--from", "a@x.test", "-c", &broken], dir.path());
    assert_eq!(got.code, Some(2), "{got:?}");
    assert!(
        got.stderr
            .contains("`route[0].upstreams`: no [[upstream]] is named \"nope\""),
        "{got:?}"
    );

    let got = run(
        &["route", "--from", "not an address", "-c", &plain],
        dir.path(),
    );
    assert_eq!(got.code, Some(2), "{got:?}");
    assert!(got.stderr.contains("--from"), "{got:?}");
}

#[test]
fn the_accepted_line_names_the_route() {
    let dir = tempfile::tempdir().unwrap();
    let file = TestConfig::new(dir.path())
        .toml(&format!("{}{ROUTES}", upstreams(dir.path())))
        .write();
    let relay = support::process::Daemon::start(&file, dir.path());
    let server = relay.addr().to_string();
    let sent = run(
        &[
            "send",
            "--server",
            &server,
            "--from",
            "invoices@example.com",
            "--to",
            "user@customer.test",
        ],
        dir.path(),
    );
    assert_eq!(sent.code, Some(0), "{sent:?}");
    let line = relay.wait_for_log("message accepted");
    assert!(line.contains("route=billing"), "{line}");
    relay.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_proxied_client_address_chooses_the_route() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let config = TestConfig::new(dir.path()).toml(&format!(
        "[server]\ntrusted_networks = [\"127.0.0.0/8\", \"10.1.0.0/16\"]\nproxy_protocol = true\ntrusted_proxies = [\"127.0.0.1/32\"]\n{}{ROUTES}",
        upstreams(dir.path())
    ));
    let mut relay = support::Relay::start(config, dir).await;
    let addr = relay.addr();
    let session = |client: &'static str| async move {
        let mut stream = support::within("connect", tokio::net::TcpStream::connect(addr))
            .await
            .unwrap();
        let header = format!("PROXY TCP4 {client} 127.0.0.1 40000 25\r\n");
        support::within("PROXY header", stream.write_all(header.as_bytes()))
            .await
            .unwrap();
        let mut smtp = SmtpClient::new(stream);
        smtp.greeting().await;
        smtp.expect("EHLO client.test", 250).await;
        smtp
    };
    // Bounces are routed only from 10.1.0.0/16: the proxied address counts, not the
    // proxy's own 127.0.0.1.
    let mut office = session("10.1.2.3").await;
    office.expect("MAIL FROM:<>", 250).await;
    office.expect("QUIT", 221).await;
    let mut local = session("127.0.0.2").await;
    let refused = local.expect_esc("MAIL FROM:<>", 550, "5.7.1").await;
    assert!(
        refused.text().contains("from 127.0.0.2"),
        "{}",
        refused.text()
    );
    local.expect("QUIT", 221).await;
    relay.shutdown().await;
}
