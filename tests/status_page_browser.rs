//! The status page in a real browser: headless Chromium (installed by scripts/test.sh)
//! renders `GET /` of a relay that delivered mail through one upstream while another
//! failed. The rendered page must show the failing upstream open with its last error,
//! the queue, and a chart with data; a screenshot is left in `target/` for a person to
//! look at (issue 16).

pub mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::config::failing_then_working;
use support::{Relay, TestConfig, wait_for};

/// Chromium's flags for a sandboxed machine without network or display (the
/// background-networking flags keep it from dialling out at start).
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
];

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_owned())
}

/// Run Chromium on `url` with `extra` flags; its standard output.
fn run_chromium(profile: &Path, url: &str, extra: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("60")
        .arg(chromium())
        .args(FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): scripts/test.sh installs it",
                chromium()
            )
        });
    assert!(
        out.status.success(),
        "chromium failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn the_rendered_page_shows_the_failing_upstream_the_queue_and_a_chart() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("maildir");
    let config = TestConfig::new(dir.path()).toml(&failing_then_working(&maildir, ""));
    let mut relay = Relay::start(config, dir).await;
    for i in 0..3 {
        let mut c = relay.client().await;
        let content = format!("From: <app@example.com>\r\nSubject: page {i}\r\n\r\nhi\r\n");
        c.send_content("app@example.com", &["a@example.net"], &content)
            .await;
        c.expect("QUIT", 221).await;
    }
    relay.wait_for_messages(3).await;
    let http = relay.metrics_addr().expect("the metrics listener");
    wait_for("the deliveries in /api/status", || async {
        let body = support::http_get(http, "/api/status").await.1;
        body.contains("\"delivered_last_hour\":3").then_some(())
    })
    .await;

    let url = format!("http://{http}/");
    let profile = tempfile::tempdir().unwrap();
    let dom = tokio::task::spawn_blocking({
        let (profile, url) = (profile.path().to_owned(), url.clone());
        move || run_chromium(&profile, &url, &["--dump-dom"])
    })
    .await
    .unwrap();

    // The failing upstream: open, with its error.
    let row = dom
        .split("<tr ")
        .find(|r| r.contains("data-upstream=\"broken\""))
        .unwrap_or_else(|| panic!("no row for the broken upstream in:\n{dom}"));
    assert!(row.contains("data-state=\"open\""), "{row}");
    assert!(row.contains("cannot connect"), "{row}");
    let local = dom
        .split("<tr ")
        .find(|r| r.contains("data-upstream=\"local\""))
        .expect("a row for the working upstream");
    assert!(local.contains("data-state=\"up\""), "{local}");
    // The queue count and the chart with data.
    assert!(dom.contains("id=\"queue-messages\">0<"), "{dom}");
    let chart = dom
        .split("id=\"throughput-chart\"")
        .nth(1)
        .expect("the chart element");
    assert!(chart.contains("data-minutes=\"60\""), "{chart}");
    assert!(
        chart.contains("data-series=\"delivered\" data-total=\"3\""),
        "{chart}"
    );
    assert!(dom.contains("<polyline"), "the chart has lines");

    // A picture for people: target/status-page.png.
    let shot = screenshot_path();
    tokio::task::spawn_blocking({
        let (profile, shot) = (profile.path().to_owned(), shot.clone());
        move || {
            let arg = format!("--screenshot={}", shot.display());
            run_chromium(&profile, &url, &[&arg, "--window-size=1280,1100"])
        }
    })
    .await
    .unwrap();
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG: {}", shot.display());
    relay.shutdown().await;
}

/// `target/status-page.png` (or under `CARGO_TARGET_DIR`).
fn screenshot_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&target).unwrap();
    target.join("status-page.png")
}
