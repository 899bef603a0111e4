//! Enhanced status codes (RFC 3463) that name the cause when no upstream can take a
//! message: `5.3.4` too big for the upstream, `5.6.7` SMTPUTF8 needed, `5.6.3`
//! conversion needed but not possible; in the DSN of queue mode and in the reply of
//! passthrough mode, so bounce processors can tell why.

pub mod fake_upstream;
pub mod support;

use fake_upstream::{FakeUpstream, Mode, Received};
use support::config::upstream;
use support::{Relay, start_relay, wait_for};

fn passthrough(fake: &FakeUpstream) -> String {
    format!(
        "[delivery]\nmode = \"passthrough\"\n{}",
        upstream("fake", &fake.plain_url(), "")
    )
}

/// A message of at least `size` octets.
fn message(size: usize) -> Vec<u8> {
    let mut content =
        b"From: <app@example.com>\r\nTo: <user@example.net>\r\nSubject: big\r\n\r\n".to_vec();
    while content.len() < size {
        content.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
    }
    content
}

async fn send(relay: &Relay, content: &[u8]) -> support::Reply {
    let mut client = relay.client().await;
    let reply = client
        .send_message("app@example.com", &["user@example.net"], content)
        .await;
    client.send_line("QUIT").await;
    reply
}

#[tokio::test]
async fn too_big_for_every_upstream_is_552_5_3_4_in_passthrough() {
    let fake = FakeUpstream::builder(Mode::Plain)
        .ext("SIZE 2000")
        .ext("8BITMIME")
        .start()
        .await;
    let relay = start_relay(&passthrough(&fake)).await;
    let reply = send(&relay, &message(5000)).await;
    assert_eq!(
        (reply.code, reply.enhanced()),
        (552, Some("5.3.4")),
        "{reply}"
    );
    assert!(
        !reply.text().contains("2000"),
        "the diagnosis stays in the log: {reply}"
    );
    assert!(fake.messages().is_empty());
}

#[tokio::test]
async fn too_big_for_every_upstream_bounces_with_status_5_3_4_in_queue_mode() {
    let fake = FakeUpstream::builder(Mode::Plain)
        .ext("SIZE 2000")
        .ext("8BITMIME")
        .start()
        .await;
    let relay = start_relay(&upstream("fake", &fake.plain_url(), "")).await;
    let reply = send(&relay, &message(5000)).await;
    assert_eq!(reply.code, 250, "{reply}");
    let dsn: Received = wait_for("the DSN", || async {
        fake.messages()
            .into_iter()
            .find(|m| m.mail_from.starts_with("<>"))
    })
    .await;
    let text = dsn.text();
    assert!(
        text.contains(
            "Final-Recipient: rfc822; user@example.net\r\nAction: failed\r\nStatus: 5.3.4\r\n"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn smtputf8_needed_is_554_5_6_7() {
    let fake = FakeUpstream::builder(Mode::Plain)
        .ext("8BITMIME")
        .start()
        .await;
    let relay = start_relay(&passthrough(&fake)).await;
    let mut client = relay.client().await;
    client
        .expect("MAIL FROM:<josé@example.com> SMTPUTF8", 250)
        .await;
    client.expect("RCPT TO:<user@example.net>", 250).await;
    client.expect("DATA", 354).await;
    client
        .send("From: <josé@example.com>\r\nSubject: hola\r\n\r\nhola\r\n.\r\n".as_bytes())
        .await;
    let reply = client.read_reply().await;
    assert_eq!(
        (reply.code, reply.enhanced()),
        (554, Some("5.6.7")),
        "{reply}"
    );
    assert!(fake.messages().is_empty());
}

#[tokio::test]
async fn an_8bit_header_for_a_7bit_upstream_is_554_5_6_3() {
    let fake = FakeUpstream::builder(Mode::Plain).start().await;
    let relay = start_relay(&passthrough(&fake)).await;
    let reply = send(
        &relay,
        "From: <app@example.com>\r\nSubject: Grüße\r\n\r\nhello\r\n".as_bytes(),
    )
    .await;
    assert_eq!(
        (reply.code, reply.enhanced()),
        (554, Some("5.6.3")),
        "{reply}"
    );
    assert!(fake.messages().is_empty());
}
