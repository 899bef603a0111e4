//! Passthrough mode keeps the relay's own diagnosis off the wire (STYLE 4): when no
//! upstream can be reached, the client hears a generic `451 4.4.1`, and the reason
//! (which upstream, what failed, the fix) is in the relay's log under the message's
//! queue id. An upstream's own reply is still relayed (tests/deliver_upstream.rs).

pub mod support;

use std::time::Duration;

use smarthost::deliver::client::ClientError;
use smarthost::ops::send::{SendError, SendRequest, send};
use support::TestConfig;
use support::free_port;
use support::process::Daemon;

#[test]
fn an_unreachable_upstream_is_a_generic_451_and_the_diagnosis_is_logged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dead = free_port();
    let config = TestConfig::new(dir.path())
        .toml(&format!(
            "[delivery]\nmode = \"passthrough\"\n\n[[upstream]]\nname = \"dead\"\nurl = \"smtp://127.0.0.1:{dead}?tls=none\"\n"
        ))
        .write();
    let relay = Daemon::start(&config, dir.path());
    let request = SendRequest {
        server: relay.addr().to_string(),
        from: "app@example.com".into(),
        to: vec!["user@example.net".into()],
        subject: "hello".into(),
        body: "hello".into(),
        raw: None,
        helo: "client.test".into(),
        timeout: Duration::from_secs(30),
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let response = match runtime.block_on(send(&request)) {
        Err(SendError::Smtp(ClientError::Refused { response, .. })) => response,
        other => panic!("expected a refusal, got {other:?}\n{}", relay.log()),
    };

    assert_eq!(
        response.to_string(),
        "451 4.4.1 Not delivered now, please try again later"
    );
    let line = relay.wait_for_log("passthrough: not delivered now");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("queue_id="), "{line}");
    assert!(
        line.contains(&format!("dead: cannot connect to 127.0.0.1:{dead}")),
        "{line}"
    );
    relay.stop();
}
