//! The status the page and `/api/status` show, taken from a running relay after real
//! deliveries: an upstream that fails is shown open with its last error, the one that
//! works with its deliveries, the queue with why its messages wait, the per-minute
//! counts and the message events (issue 16).

pub mod support;

use support::config::{failing_then_working, upstream};
use support::{Relay, TestConfig, free_port, wait_for};

const CONTENT: &str = "From: <app@example.com>\r\nSubject: status\r\n\r\nhi\r\n";

#[tokio::test]
async fn a_failing_upstream_shows_open_with_its_error_and_the_working_one_its_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("maildir");
    let config = TestConfig::new(dir.path())
        .toml(&failing_then_working(&maildir, "rate_limit = \"10/min\"\n"));
    let mut relay = Relay::start(config, dir).await;
    let mut c = relay.client().await;
    let id = c
        .send_content(
            "app@example.com",
            &["a@example.net", "b@example.net"],
            CONTENT,
        )
        .await
        .queue_id();
    c.expect("QUIT", 221).await;
    relay.wait_for_messages(1).await;

    let handle = relay.take_handle();
    let status = wait_for("the deliveries in the status", || async {
        let status = handle.status();
        (status.upstreams[1].delivered_last_hour == 2).then_some(status)
    })
    .await;
    let json = serde_json::to_value(&status).unwrap();
    let broken = &json["upstreams"][0];
    assert_eq!(broken["name"], "broken");
    assert_eq!(broken["kind"], "smtp");
    assert_eq!(broken["state"], "open", "{json:#}");
    assert!(broken["probe_at"].as_u64().is_some(), "{json:#}");
    assert!(
        broken["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{json:#}"
    );
    assert!(broken["last_error_at"].as_u64().is_some(), "{json:#}");
    assert_eq!(broken["in_flight"], 0);
    assert_eq!(broken["failed_attempts_last_hour"], 1, "{json:#}");
    // The failed attempt took one message from its budget.
    assert_eq!(broken["rate_left"], 9, "{json:#}");
    assert!(broken["daily_left"].is_null());
    let local = &json["upstreams"][1];
    assert_eq!(
        (local["name"].as_str(), local["state"].as_str()),
        (Some("local"), Some("up"))
    );
    assert_eq!(local["delivered_last_hour"], 2);

    assert_eq!(json["mode"], "queue");
    assert_eq!(json["queue"]["messages"], 0);
    let minutes = json["per_minute"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    let total = |key: &str| {
        minutes
            .iter()
            .map(|m| m[key].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!((total("received"), total("delivered")), (1, 2), "{json:#}");
    let events = json["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["delivered", "delivered", "received"], "{json:#}");
    assert!(
        events.iter().all(|e| e["queue_id"] == id.as_str()),
        "{json:#}"
    );
    assert_eq!(events[0]["upstream"], "local");
    handle.shutdown().await;
}

#[tokio::test]
async fn the_queue_shows_its_messages_and_why_they_wait() {
    let dir = tempfile::tempdir().unwrap();
    let config = TestConfig::new(dir.path()).toml(&upstream(
        "broken",
        &format!("smtp://127.0.0.1:{}?tls=none", free_port()),
        "",
    ));
    let mut relay = Relay::start(config, dir).await;
    let mut c = relay.client().await;
    c.send_content("app@example.com", &["a@example.net"], CONTENT)
        .await;
    c.expect("QUIT", 221).await;

    let handle = relay.take_handle();
    let status = wait_for("the deferral in the status", || async {
        let status = handle.status();
        status
            .queue
            .as_ref()
            .is_some_and(|q| !q.deferred_by_reason.is_empty())
            .then_some(status)
    })
    .await;
    let queue = status.queue.unwrap();
    assert_eq!(queue.messages, 1);
    assert!(queue.oldest_age_seconds.is_some());
    assert_eq!(
        queue.deferred_by_reason.into_iter().collect::<Vec<_>>(),
        [("no answer (connection, TLS or timeout)".to_owned(), 1)]
    );
    let deferred = status.per_minute.iter().map(|m| m.deferred).sum::<u64>();
    assert_eq!(deferred, 1);
    handle.shutdown().await;
}

/// Every key `/api/status` documents, with the JSON type of its value (`null` allowed
/// where a key is optional).
fn assert_schema(json: &serde_json::Value) {
    use serde_json::Value;
    fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }
    fn check(v: &Value, fields: &[(&str, &[&str])], what: &str) {
        let object = v
            .as_object()
            .unwrap_or_else(|| panic!("{what} is not an object: {v}"));
        for (key, kinds) in fields {
            let value = object
                .get(*key)
                .unwrap_or_else(|| panic!("{what} has no {key}: {v}"));
            assert!(kinds.contains(&kind(value)), "{what}.{key} is {value}");
        }
        let known: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
        for key in object.keys() {
            assert!(
                known.contains(&key.as_str()),
                "{what}.{key} is not documented"
            );
        }
    }
    const N: &[&str] = &["number"];
    const S: &[&str] = &["string"];
    const NN: &[&str] = &["number", "null"];
    const SN: &[&str] = &["string", "null"];
    check(
        json,
        &[
            ("generated_at", N),
            ("hostname", S),
            ("version", S),
            ("started_at", N),
            ("mode", S),
            ("upstreams", &["array"]),
            ("queue", &["object", "null"]),
            ("per_minute", &["array"]),
            ("events", &["array"]),
        ],
        "status",
    );
    for upstream in json["upstreams"].as_array().unwrap() {
        check(
            upstream,
            &[
                ("name", S),
                ("kind", S),
                ("state", S),
                ("probe_at", NN),
                ("in_flight", N),
                ("max_connections", NN),
                ("delivered_last_hour", N),
                ("deferred_last_hour", N),
                ("failed_attempts_last_hour", N),
                ("last_error", SN),
                ("last_error_at", NN),
                ("rate_left", NN),
                ("daily_left", NN),
            ],
            "upstream",
        );
    }
    if !json["queue"].is_null() {
        check(
            &json["queue"],
            &[
                ("messages", N),
                ("oldest_age_seconds", NN),
                ("deferred_by_reason", &["object"]),
            ],
            "queue",
        );
    }
    for minute in json["per_minute"].as_array().unwrap() {
        let counts = [
            "minute",
            "received",
            "delivered",
            "deferred",
            "failed",
            "bounced",
            "failed_attempts",
        ];
        let fields: Vec<(&str, &[&str])> = counts.iter().map(|k| (*k, N)).collect();
        check(minute, &fields, "per_minute[]");
    }
    for event in json["events"].as_array().unwrap() {
        let object = event.as_object().unwrap();
        // rcpt and upstream are left out where they do not apply.
        let mut fields: Vec<(&str, &[&str])> =
            vec![("at", N), ("queue_id", S), ("kind", S), ("detail", S)];
        for optional in ["rcpt", "upstream"] {
            if object.contains_key(optional) {
                fields.push((optional, S));
            }
        }
        check(event, &fields, "events[]");
    }
}

#[tokio::test]
async fn api_status_serves_the_documented_json_behind_the_metrics_password() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("metrics-password");
    std::fs::write(&password_file, "status-secret\n").unwrap();
    let config = TestConfig::new(dir.path()).toml(&format!(
        "[metrics]\npassword_file = \"{}\"\n",
        password_file.display()
    ));
    let mut relay = Relay::start(config, dir).await;
    let mut c = relay.client().await;
    c.send_content("app@example.com", &["a@example.net"], CONTENT)
        .await;
    c.expect("QUIT", 221).await;
    relay.wait_for_messages(1).await;

    let http = relay.metrics_addr().unwrap();
    for path in ["/", "/api/status"] {
        let refused = support::http_request(http, "GET", path, &[]).await;
        assert_eq!(refused.status, 401, "{path}: {}", refused.body);
    }
    let login = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin:status-secret")
    );
    let auth = [("Authorization", login.as_str())];
    let api = support::http_request(http, "GET", "/api/status", &auth).await;
    assert_eq!(api.status, 200, "{}", api.body);
    assert_eq!(api.header("Content-Type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_str(&api.body).unwrap();
    assert_schema(&json);
    assert_eq!(json["upstreams"][0]["name"], "maildir");
    assert!(!api.body.contains("status-secret"));

    let page = support::http_request(http, "GET", "/", &auth).await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("Content-Type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.header("Content-Security-Policy")
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(page.body.contains("id=\"throughput-chart\""));
    // No external assets: nothing is loaded from another origin.
    for reference in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(
            !page.body.contains(reference),
            "the page loads {reference}..."
        );
    }
    relay.shutdown().await;
}
