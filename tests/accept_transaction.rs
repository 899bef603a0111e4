//! Whole transactions over TCP: pipelining, line endings and dot-stuffing, size limit,
//! mail loops, and the trace header.

pub mod support;

use support::{HOSTNAME, STRICT_HEAD, start_relay};

#[tokio::test]
async fn pipelined_mail_rcpt_rcpt_data_are_answered_in_order() {
    let mut relay = start_relay("").await;
    let mut c = relay.client().await;
    c.send(
        "MAIL FROM:<app@example.com>\r\nRCPT TO:<first@example.net>\r\nRCPT TO:<second@example.net>\r\nDATA\r\n",
    )
    .await;
    let mail = c.expect_reply_esc(250, "2.1.0").await;
    assert!(mail.text().contains("<app@example.com>"), "{mail}");
    let first = c.expect_reply_esc(250, "2.1.5").await;
    assert!(first.text().contains("<first@example.net>"), "{first}");
    let second = c.expect_reply_esc(250, "2.1.5").await;
    assert!(second.text().contains("<second@example.net>"), "{second}");
    c.expect_reply(354).await;
    // Headers that need no normalising: the content arrives exactly as sent.
    let content = format!("{STRICT_HEAD}Subject: pipelined\r\n\r\nfor both of you\r\n");
    c.send(format!("{content}.\r\n")).await;
    let id = c.expect_reply_esc(250, "2.0.0").await.queue_id();
    c.expect("QUIT", 221).await;
    c.expect_closed().await;

    let messages = relay.finish(1).await;
    let m = &messages[0];
    assert_eq!(
        m.delivered_to(),
        ["first@example.net", "second@example.net"]
    );
    assert!(m.text().contains(&format!("\tid {id}")), "{m:?}");
    assert!(m.text().ends_with(&content), "{m:?}");
}

#[tokio::test]
async fn commands_pipelined_after_the_data_terminator_start_the_next_transaction() {
    let mut relay = start_relay("").await;
    let mut c = relay.client().await;
    c.expect("MAIL FROM:<app@example.com>", 250).await;
    c.expect("RCPT TO:<one@example.net>", 250).await;
    c.expect("DATA", 354).await;
    let first = format!("{STRICT_HEAD}Subject: first\r\n\r\none\r\n");
    c.send(format!(
        "{first}.\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<two@example.net>\r\nDATA\r\n"
    ))
    .await;
    c.expect_reply_esc(250, "2.0.0").await;
    c.expect_reply(250).await;
    c.expect_reply(250).await;
    c.expect_reply(354).await;
    let second = format!("{STRICT_HEAD}Subject: second\r\n\r\ntwo\r\n");
    c.send(format!("{second}.\r\nQUIT\r\n")).await;
    c.expect_reply_esc(250, "2.0.0").await;
    c.expect_reply(221).await;
    c.expect_closed().await;

    let messages = relay.finish(2).await;
    assert_eq!(messages[0].delivered_to(), ["one@example.net"]);
    assert!(messages[0].text().ends_with(&first), "{messages:?}");
    assert_eq!(messages[1].delivered_to(), ["two@example.net"]);
    assert!(messages[1].text().ends_with(&second), "{messages:?}");
}

#[tokio::test]
async fn a_bare_lf_legacy_message_arrives_with_crlf_and_intact_text() {
    let mut relay = start_relay("").await;
    let mut c = relay.client().await;
    c.expect("MAIL FROM:<legacy@example.com>", 250).await;
    c.expect("RCPT TO:<user@example.net>", 250).await;
    c.expect("DATA", 354).await;
    // Only LF line endings (and one bare CR), then the one terminator that ends DATA.
    // The From, Date and Message-ID need no normalising, so the text arrives unchanged.
    let body = "Subject: legacy app\nFrom: Legacy App <legacy@example.com>\nDate: Thu, 01 Jan 2026 00:00:00 +0000\nMessage-ID: <legacy@client.test>\n\nline one\n..dotted\n.\nbare\rcr\nÜnïcödé stays\nlast line";
    c.send(format!("{body}\r\n.\r\n")).await;
    c.expect_reply_esc(250, "2.0.0").await;

    let messages = relay.finish(1).await;
    let m = &messages[0];
    m.assert_crlf_only();
    let want = "Subject: legacy app\r\nFrom: Legacy App <legacy@example.com>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <legacy@client.test>\r\n\r\nline one\r\n.dotted\r\n.\r\nbare\r\ncr\r\nÜnïcödé stays\r\nlast line\r\n";
    assert!(
        m.text().ends_with(want),
        "want the content to end with {want:?}\n{m:?}"
    );
}

#[tokio::test]
async fn dot_stuffed_lines_arrive_unstuffed() {
    let mut relay = start_relay("").await;
    let mut c = relay.client().await;
    let wire = b"Subject: dots\r\n\r\n..x\r\n...\r\n..\r\n.leading\r\nend\r\n";
    let reply = c
        .send_message("a@example.com", &["b@example.net"], wire)
        .await;
    assert_eq!(reply.code, 250, "{reply}");
    let messages = relay.finish(1).await;
    let m = &messages[0];
    m.assert_crlf_only();
    assert_eq!(m.body(), b".x\r\n..\r\n.\r\nleading\r\nend\r\n", "{m:?}");
}

#[tokio::test]
async fn an_oversized_body_gets_552_nothing_is_kept_and_the_session_goes_on() {
    let mut relay = start_relay("[server]\nmax_message_size = 2048\n").await;
    let mut c = relay.client().await;

    // Strict headers: the message of exactly the limit is delivered as it was sent.
    let head = format!("{STRICT_HEAD}Subject: big\r\n\r\n");
    let exactly = |n: usize| format!("{head}{}\r\n", "x".repeat(n - head.len() - 2));
    let too_big = exactly(2049);
    assert_eq!(too_big.len(), 2049);
    let reply = c
        .send_message("a@example.com", &["b@example.net"], too_big.as_bytes())
        .await;
    assert_eq!(
        (reply.code, reply.enhanced()),
        (552, Some("5.3.4")),
        "{reply}"
    );
    let huge = format!("{head}{}", "0123456789abcdef\r\n".repeat(4000));
    let reply = c
        .send_message("a@example.com", &["b@example.net"], huge.as_bytes())
        .await;
    assert_eq!(reply.code, 552, "{reply}");
    assert!(relay.messages().is_empty(), "{:#?}", relay.messages());

    // The same session still works, and a message of exactly the limit is accepted.
    let at_limit = exactly(2048);
    let reply = c
        .send_message("a@example.com", &["b@example.net"], at_limit.as_bytes())
        .await;
    assert_eq!(reply.code, 250, "{reply}");
    c.expect("QUIT", 221).await;

    let messages = relay.finish(1).await;
    assert!(messages[0].text().ends_with(&at_limit), "{messages:?}");
    let tmp = std::fs::read_dir(relay.maildir().join("tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "leftovers in the Maildir's tmp/");
}

/// A message with `n` trace headers from earlier hops.
fn with_received(n: usize) -> String {
    let mut msg: String = (0..n)
        .map(|i| {
            format!(
                "Received: from hop{i}.example by hop{}.example; Thu, 01 Jan 2026 00:00:00 +0000\r\n",
                i + 1
            )
        })
        .collect();
    msg.push_str("Subject: loop?\r\n\r\nbody\r\n");
    msg
}

#[tokio::test]
async fn more_than_50_received_headers_is_a_mail_loop() {
    let mut relay = start_relay("").await;
    let mut c = relay.client().await;
    let reply = c
        .send_message(
            "a@example.com",
            &["b@example.net"],
            with_received(51).as_bytes(),
        )
        .await;
    assert_eq!(
        (reply.code, reply.enhanced()),
        (554, Some("5.4.6")),
        "{reply}"
    );

    let reply = c
        .send_message(
            "a@example.com",
            &["b@example.net"],
            with_received(50).as_bytes(),
        )
        .await;
    assert_eq!(reply.code, 250, "{reply}");
    c.expect("QUIT", 221).await;

    let messages = relay.finish(1).await;
    let hops = messages[0]
        .header_lines()
        .iter()
        .filter(|l| l.starts_with("Received: "))
        .count();
    assert_eq!(hops, 51, "50 earlier hops and ours");
}

#[tokio::test]
async fn our_received_header_comes_first_with_our_name_and_the_queue_id() {
    let mut relay = start_relay("").await;
    let mut c = relay.connect().await;
    c.greeting().await;
    c.expect("EHLO app.internal", 250).await;
    let content = "Received: from earlier.hop by app.internal; Thu, 01 Jan 2026 00:00:00 +0000\r\nSubject: trace\r\n\r\nbody\r\n";
    let reply = c
        .send_message("app@example.com", &["user@example.net"], content.as_bytes())
        .await;
    let id = reply.queue_id();

    let messages = relay.finish(1).await;
    let m = &messages[0];
    let lines = m.header_lines();
    // The Maildir upstream adds the envelope lines; the message itself starts after them.
    let start = lines
        .iter()
        .position(|l| !l.starts_with("Return-Path: ") && !l.starts_with("Delivered-To: "))
        .unwrap();
    let ours: Vec<&str> = std::iter::once(lines[start].as_str())
        .chain(
            lines[start + 1..]
                .iter()
                .take_while(|l| l.starts_with('\t') || l.starts_with(' '))
                .map(String::as_str),
        )
        .collect();
    let ours = ours.join(" ");
    assert!(
        ours.starts_with("Received: from app.internal ([127.0.0.1])"),
        "first header is not our trace header: {ours:?}\n{m:?}"
    );
    assert!(
        ours.contains(&format!("by {HOSTNAME} (smarthost)")),
        "{ours:?}"
    );
    assert!(ours.contains("with ESMTP"), "{ours:?}");
    assert!(ours.contains(&format!("id {id}")), "{ours:?}");
    assert!(ours.contains("for <user@example.net>"), "{ours:?}");
    let earlier = lines
        .iter()
        .position(|l| l.starts_with("Received: from earlier.hop"))
        .expect("the earlier trace header is kept");
    assert!(earlier > start, "ours must precede the earlier hop's");
}

#[tokio::test]
async fn hide_client_leaves_the_client_out_of_our_received_header() {
    let mut relay = start_relay("[transform]\nhide_client = true\n").await;
    let mut c = relay.connect().await;
    c.greeting().await;
    c.expect("EHLO app.internal", 250).await;
    let content = format!("{STRICT_HEAD}Subject: hidden\r\n\r\nbody\r\n");
    let id = c
        .send_message("app@example.com", &["user@example.net"], content.as_bytes())
        .await
        .queue_id();
    c.expect("QUIT", 221).await;

    let messages = relay.finish(1).await;
    let text = messages[0].text();
    // The rest of the header is as without the option (RFC 5321 §4.4 needs the
    // From-domain: `unknown` stands in for it).
    let want = format!(
        "Received: from unknown\r\n\tby {HOSTNAME} (smarthost) with ESMTP\r\n\tid {id}\r\n\tfor <user@example.net>;\r\n\t"
    );
    assert!(text.contains(&want), "{text}");
    assert!(!text.contains("127.0.0.1"), "{text}");
    assert!(!text.contains("app.internal"), "{text}");
    assert!(text.ends_with(&content), "{text}");
}
