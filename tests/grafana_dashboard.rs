//! The Grafana dashboard `deploy/grafana/smarthost.json` against a real relay: the JSON
//! parses and imports anywhere (a `DS_PROMETHEUS` input, every panel on it), every panel
//! queries something, and every metric an expression names exists in the `/metrics`
//! output of a relay that went through a scenario producing them all (a DKIM-signed
//! delivery, a deferral, a bounce, a message over `max_message_size`, an AUTH failure
//! that locks the client out), with the labels the expressions group by.
//!
//! The relay runs in-process; a scripted fake upstream (plaintext) accepts one recipient,
//! answers `451` to another and `550` to a third. Every wait is bounded by
//! [`support::HANG_GUARD`].

pub mod fake_upstream;
pub mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use base64::Engine as _;
use fake_upstream::{FakeUpstream, Mode};
use rustls_pki_types::ServerName;
use serde_json::Value;
use smarthost::config::{AddressGlob, User, Users};
use support::config::upstream;
use support::{Relay, SmtpClient, TestCert, TestConfig, http_get, wait_for};

const DASHBOARD: &str = "deploy/grafana/smarthost.json";

/// Suffixes Prometheus adds to a histogram's name for its series.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DASHBOARD);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a [Value], out: &mut Vec<&'a Value>) {
        for p in list {
            out.push(p);
            if let Some(inner) = p["panels"].as_array() {
                walk(inner, out);
            }
        }
    }
    let mut out = Vec::new();
    let list = dashboard["panels"]
        .as_array()
        .unwrap_or_else(|| panic!("{DASHBOARD} has no panels array"));
    walk(list, &mut out);
    out
}

/// Every PromQL expression: the panels' targets and the template variables' queries.
/// Fails naming a panel without targets or a target without `expr`.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let panels = panels(dashboard);
    assert!(!panels.is_empty(), "{DASHBOARD} has no panels");
    for p in panels {
        let title = p["title"].as_str().unwrap_or("(untitled)").to_owned();
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("panel {title:?} has no targets"));
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .filter(|e| !e.trim().is_empty())
                .unwrap_or_else(|| panic!("a target of panel {title:?} has no expr: {t}"));
            out.push((title.clone(), expr.to_owned()));
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = format!("variable ${}", v["name"].as_str().unwrap_or("?"));
        if let Some(q) = v["query"]["query"].as_str().or(v["query"].as_str()) {
            out.push((name.clone(), q.to_owned()));
        }
        if let Some(d) = v["definition"].as_str() {
            out.push((name, d.to_owned()));
        }
    }
    out
}

/// The identifiers in `expr` that start with `smarthost_`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("smarthost_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        if !before.is_some_and(is_ident) {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The label lists of `by (...)` clauses in `expr`.
fn grouping_labels(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        let tail = &rest[at + 4..];
        let end = tail.find(')').expect("a closing parenthesis after by (");
        labels.extend(
            tail[..end]
                .split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
        rest = &tail[end..];
    }
    labels
}

/// The metric a series name belongs to: a histogram's `_bucket`/`_sum`/`_count` series
/// map to the histogram.
fn metric_of(series: &str) -> &str {
    HISTOGRAM_SUFFIXES
        .iter()
        .find_map(|s| series.strip_suffix(s))
        .unwrap_or(series)
}

/// What a `/metrics` body says: each metric's `# TYPE`, and each series' sample lines.
struct Exposition {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, Vec<String>>,
}

impl Exposition {
    fn parse(body: &str) -> Exposition {
        let mut types = BTreeMap::new();
        let mut samples: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    types.insert(name.to_owned(), kind.to_owned());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                samples
                    .entry(line[..end].to_owned())
                    .or_default()
                    .push(line.to_owned());
            }
        }
        Exposition { types, samples }
    }

    /// Why `series` (a name an expression queries) is not there, if it is not: no
    /// samples, no `# TYPE` for its metric, or a type that does not fit the name.
    fn missing(&self, series: &str) -> Option<String> {
        let metric = metric_of(series);
        let Some(kind) = self.types.get(metric) else {
            return Some(format!("{series}: no `# TYPE {metric}`"));
        };
        if !self.samples.contains_key(series) {
            return Some(format!("{series}: no samples"));
        }
        let fits = if metric != series {
            kind == "histogram"
        } else if series.ends_with("_total") {
            kind == "counter"
        } else {
            kind == "gauge" || kind == "counter"
        };
        (!fits).then(|| format!("{series}: queried as it is, but its metric is a {kind}"))
    }

    /// Whether some sample of one of `series` carries `label`.
    fn has_label(&self, series: &BTreeSet<String>, label: &str) -> bool {
        let carries = |line: &str| {
            line.split_once('{')
                .and_then(|(_, rest)| rest.split_once('}'))
                .is_some_and(|(labels, _)| {
                    labels
                        .split(',')
                        .any(|pair| pair.split_once('=').is_some_and(|(k, _)| k == label))
                })
        };
        series.iter().any(|s| {
            self.samples
                .get(s)
                .is_some_and(|lines| lines.iter().any(|l| carries(l)))
        })
    }
}

#[test]
fn the_dashboard_parses_imports_anywhere_and_every_panel_queries_smarthost_metrics() {
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion: {}",
        dashboard["schemaVersion"]
    );
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    let inputs = dashboard["__inputs"]
        .as_array()
        .expect("__inputs for import");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
            && i["type"] == "datasource"
            && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS datasource input: {inputs:?}"
    );
    // Nothing points at a datasource of the machine it was made on.
    for p in panels(&dashboard) {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or("(untitled)");
        let mut sources = vec![&p["datasource"]];
        sources.extend(
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| &t["datasource"]),
        );
        for ds in sources.into_iter().filter(|d| !d.is_null()) {
            assert_eq!(
                ds["uid"], "${DS_PROMETHEUS}",
                "panel {title:?} uses another datasource: {ds}"
            );
        }
    }
    let exprs = expressions(&dashboard);
    for (panel, expr) in &exprs {
        assert!(
            !metric_names(expr).is_empty(),
            "{panel}: {expr} queries no smarthost_ metric"
        );
    }
    // The panels the issue asks for, by the metrics they query.
    let queried: BTreeSet<String> = exprs.iter().flat_map(|(_, e)| metric_names(e)).collect();
    for wanted in [
        "smarthost_messages_received_total",
        "smarthost_messages_delivered_total",
        "smarthost_messages_deferred_total",
        "smarthost_messages_bounced_total",
        "smarthost_messages_rejected_total",
        "smarthost_queue_messages",
        "smarthost_queue_oldest_age_seconds",
        "smarthost_upstream_up",
        "smarthost_dkim_sign_duration_seconds_bucket",
        "smarthost_delivery_duration_seconds_bucket",
        "smarthost_connections_active",
        "smarthost_auth_failures_total",
        "smarthost_auth_lockouts_total",
    ] {
        assert!(queried.contains(wanted), "no panel queries {wanted}");
    }
}

#[test]
fn metric_names_are_found_and_histogram_series_map_to_their_histogram() {
    let expr = "histogram_quantile(0.9, sum by (le, route) (rate(smarthost_delivery_duration_seconds_bucket{instance=~\"$i\"}[5m]))) / xsmarthost_no";
    assert_eq!(
        metric_names(expr).into_iter().collect::<Vec<_>>(),
        ["smarthost_delivery_duration_seconds_bucket"]
    );
    assert_eq!(
        grouping_labels(expr).into_iter().collect::<Vec<_>>(),
        ["le", "route"]
    );
    assert_eq!(
        metric_of("smarthost_delivery_duration_seconds_bucket"),
        "smarthost_delivery_duration_seconds"
    );
    assert_eq!(
        metric_of("smarthost_messages_received_total"),
        "smarthost_messages_received_total"
    );
}

const PASSWORD: &str = "correct horse battery staple";

/// A relay that trusts 127.0.0.0/8 on its relay port, signs mail from example.com with
/// an Ed25519 key it generates, takes at most 4 KiB, has a STARTTLS submission listener
/// (`addrs()[1]`) that locks a client out after one failed AUTH, and delivers to `fake`.
async fn relay(cert: &TestCert, fake: &FakeUpstream) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    let mut list = Users::default();
    let user = User::new(
        "app",
        PASSWORD,
        vec![AddressGlob::parse("*@example.com").unwrap()],
        None,
    )
    .unwrap();
    list.insert(user, false).unwrap();
    list.save(&users).unwrap();
    let config = TestConfig::new(dir.path()).toml(&format!(
        "[server]\n{}trusted_networks = [\"127.0.0.0/8\"]\nmax_message_size = 4096\n\
         [auth]\nusers_file = \"{}\"\nmax_failures = 1\nlockout = \"1h\"\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n\
         [[dkim]]\ndomain = \"example.com\"\nselector = \"grafana\"\n\
         algorithm = \"ed25519-sha256\"\nkey_file = \"{}\"\ngenerate = true\n{}",
        cert.server_toml(),
        users.display(),
        dir.path().join("dkim/example.com.pem").display(),
        upstream("fake", &fake.plain_url(), "")
    ));
    Relay::start(config, dir).await
}

/// One failed AUTH PLAIN on the STARTTLS listener (`535`), which locks the client out:
/// the next attempt, with the right password, gets `454`.
async fn fail_auth(relay: &Relay, cert: &TestCert) {
    let mut c = SmtpClient::connect(relay.addrs()[1]).await;
    c.greeting().await;
    c.expect("EHLO app.test", 250).await;
    c.expect("STARTTLS", 220).await;
    let name = ServerName::try_from("localhost").unwrap();
    let tls = support::within(
        "the TLS handshake",
        cert.connector().connect(name, c.into_stream()),
    )
    .await
    .expect("TLS handshake fails");
    let mut c = SmtpClient::new(tls);
    let ehlo = c.expect("EHLO app.test", 250).await;
    assert!(ehlo.advertises("AUTH PLAIN LOGIN"), "{ehlo}");
    let plain = |password: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("\0app\0{password}"))
    };
    c.expect_esc(&format!("AUTH PLAIN {}", plain("guess")), 535, "5.7.8")
        .await;
    c.expect_esc(&format!("AUTH PLAIN {}", plain(PASSWORD)), 454, "4.7.0")
        .await;
    c.expect("QUIT", 221).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_exists_after_a_scenario_that_produces_them_all() {
    let fake = FakeUpstream::builder(Mode::Plain)
        .rcpt_reply_for("later@example.net", "451 4.3.0 try again later")
        .rcpt_reply_for("nobody@example.net", "550 5.1.1 no such user")
        .start()
        .await;
    let cert = TestCert::generate();
    let mut relay = relay(&cert, &fake).await;

    // One message: delivered to a (DKIM-signed), deferred for later, refused for nobody
    // (a bounce to app@example.com, which the fake takes too).
    let mut c = relay.client().await;
    let content =
        "From: <app@example.com>\r\nTo: <a@example.net>\r\nSubject: grafana\r\n\r\nhello\r\n";
    let reply = c
        .send_message(
            "app@example.com",
            &["a@example.net", "later@example.net", "nobody@example.net"],
            content.as_bytes(),
        )
        .await;
    assert_eq!(reply.code, 250, "{reply}");
    // One over max_message_size: rejected, reason size.
    let big = format!(
        "From: <app@example.com>\r\nSubject: big\r\n\r\n{}",
        "0123456789abcdef\r\n".repeat(512)
    );
    let reply = c
        .send_message("app@example.com", &["a@example.net"], big.as_bytes())
        .await;
    assert_eq!(
        (reply.code, reply.enhanced()),
        (552, Some("5.3.4")),
        "{reply}"
    );
    c.expect("QUIT", 221).await;
    fail_auth(&relay, &cert).await;

    let delivered = wait_for("the delivery to a and the bounce at the fake", || async {
        let m = fake.messages();
        (m.len() >= 2).then_some(m)
    })
    .await;
    let to_a = delivered
        .iter()
        .find(|m| m.rcpts == ["a@example.net"])
        .unwrap_or_else(|| panic!("no delivery to a: {delivered:#?}"));
    assert!(
        to_a.text().contains("DKIM-Signature:"),
        "the delivery is not signed:\n{}",
        to_a.text()
    );
    assert!(
        delivered.iter().any(|m| m.mail_from.starts_with("<>")),
        "no bounce: {delivered:#?}"
    );

    // Every series the dashboard queries, and the labels it groups them by.
    let exprs = expressions(&dashboard());
    let series: BTreeSet<String> = exprs.iter().flat_map(|(_, e)| metric_names(e)).collect();
    let metrics = relay.metrics_addr().expect("metrics listen is configured");
    // The queue gauges are set once a second; the counters once their event happened.
    // Poll until every one is there, for at most the hang guard, then say which are not.
    let deadline = tokio::time::Instant::now() + support::HANG_GUARD;
    let (body, exposition) = loop {
        let body = http_get(metrics, "/metrics").await.1;
        let exposition = Exposition::parse(&body);
        let complete = series.iter().all(|s| exposition.missing(s).is_none());
        if complete || tokio::time::Instant::now() >= deadline {
            break (body, exposition);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let missing: Vec<String> = series
        .iter()
        .filter_map(|s| exposition.missing(s))
        .collect();
    assert!(
        missing.is_empty(),
        "not in /metrics within {:?}: {missing:#?}\n--- /metrics ---\n{body}",
        support::HANG_GUARD
    );
    for (panel, expr) in &exprs {
        let names = metric_names(expr);
        for label in grouping_labels(expr) {
            if label == "instance" || label == "job" {
                continue; // added by Prometheus when it scrapes
            }
            assert!(
                exposition.has_label(&names, &label),
                "{panel}: {expr} groups by {label}, which no sample of {names:?} has\n--- /metrics ---\n{body}"
            );
        }
    }
    // The scenario's events, as the dashboard will show them.
    for needle in [
        "smarthost_messages_delivered_total{upstream=\"fake\",route=\"none\"}",
        "smarthost_messages_deferred_total{upstream=\"fake\",route=\"none\"}",
        "smarthost_messages_rejected_total{reason=\"size\"} 1",
        "smarthost_auth_failures_total 1",
        "smarthost_auth_lockouts_total 1",
        "smarthost_upstream_up{upstream=\"fake\"} 1",
    ] {
        assert!(body.contains(needle), "{needle} missing from:\n{body}");
    }
    relay.shutdown().await;
}
