//! 8BITMIME (RFC 6152): `BODY=8BITMIME` only for 8-bit content; 8-bit content for an
//! upstream without 8BITMIME converted to 7 bits (the DKIM side is in dkim_interop.rs);
//! only a raw 8-bit header, which cannot be converted, bounces with `5.6.3`, and its DSN
//! is made sendable and delivered.

pub mod fake_upstream;
pub mod support;

use fake_upstream::{FakeUpstream, Mode, Received};
use support::config::upstream;
use support::{start_relay, wait_for};

async fn wait_for_messages(fake: &FakeUpstream, n: usize) -> Vec<Received> {
    wait_for(&format!("{n} messages at the upstream"), || async {
        let got = fake.messages();
        (got.len() >= n).then_some(got)
    })
    .await
}

#[tokio::test]
async fn declared_8bitmime_with_7bit_content_goes_unchanged_to_a_7bit_upstream() {
    let fake = FakeUpstream::builder(Mode::Plain).start().await;
    let relay = start_relay(&upstream("fake", &fake.plain_url(), "")).await;
    let mut c = relay.client().await;
    c.expect("MAIL FROM:<app@example.com> BODY=8BITMIME", 250)
        .await;
    c.expect("RCPT TO:<user@example.net>", 250).await;
    c.expect("DATA", 354).await;
    let content = format!(
        "{}Subject: plain\r\n\r\nonly ASCII here\r\n",
        support::STRICT_HEAD
    );
    c.send(format!("{content}.\r\n").as_bytes()).await;
    c.expect_reply_esc(250, "2.0.0").await;
    let got = wait_for_messages(&fake, 1).await;
    assert!(!got[0].mail_from.contains("BODY="), "{}", got[0].mail_from);
    assert!(got[0].text().ends_with(&content), "{}", got[0].text());
}

#[tokio::test]
async fn eight_bit_content_goes_as_it_is_with_body_8bitmime_where_offered() {
    let fake = FakeUpstream::builder(Mode::Plain)
        .ext("8BITMIME")
        .start()
        .await;
    let relay = start_relay(&upstream("fake", &fake.plain_url(), "")).await;
    let mut c = relay.client().await;
    let content = format!("{}Subject: umlaut\r\n\r\nGrüße\r\n", support::STRICT_HEAD);
    let reply = c
        .send_message("app@example.com", &["user@example.net"], content.as_bytes())
        .await;
    assert_eq!(reply.code, 250, "{reply}");
    let got = wait_for_messages(&fake, 1).await;
    assert!(
        got[0].mail_from.contains("BODY=8BITMIME"),
        "{}",
        got[0].mail_from
    );
    assert!(got[0].text().ends_with(&content));
}

#[tokio::test]
async fn a_raw_8bit_header_bounces_with_5_6_3_and_the_dsn_is_delivered() {
    let fake = FakeUpstream::builder(Mode::Plain).start().await;
    let relay = start_relay(&upstream("fake", &fake.plain_url(), "")).await;
    let mut c = relay.client().await;
    let reply = c
        .send_message(
            "app@example.com",
            &["user@example.net"],
            "From: <app@example.com>\r\nSubject: Grüße\r\n\r\nGrüße\r\n".as_bytes(),
        )
        .await;
    assert_eq!(reply.code, 250, "{reply}");
    let got = wait_for_messages(&fake, 1).await;
    let dsn = &got[0];
    assert!(
        dsn.mail_from.starts_with("<>"),
        "only the DSN: {}",
        dsn.mail_from
    );
    assert_eq!(dsn.rcpts, ["app@example.com"]);
    assert!(
        dsn.content.is_ascii(),
        "the DSN was made 7-bit:\n{}",
        dsn.text()
    );
    let text = dsn.text();
    assert!(
        text.contains(
            "Final-Recipient: rfc822; user@example.net\r\nAction: failed\r\nStatus: 5.6.3\r\n"
        ),
        "{text}"
    );
    assert!(text.contains("Subject has raw 8-bit characters"), "{text}");
    assert_eq!(got.len(), 1, "the original never went out");
}
