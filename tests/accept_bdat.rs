//! CHUNKING (RFC 3030): `BDAT` chunks are counted octets, never commands and never
//! dot-unstuffed; line endings are still normalised to CRLF.

pub mod support;

use support::{STRICT_HEAD, start_relay};

/// `BDAT n[ LAST]` followed by the chunk.
fn bdat(chunk: &[u8], last: bool) -> Vec<u8> {
    let mut out = format!(
        "BDAT {}{}\r\n",
        chunk.len(),
        if last { " LAST" } else { "" }
    )
    .into_bytes();
    out.extend_from_slice(chunk);
    out
}

#[tokio::test]
async fn chunks_then_last_deliver_the_content_with_crlf() {
    let mut relay = start_relay("").await;
    let mut c = relay.client().await;
    c.expect("MAIL FROM:<a@example.com>", 250).await;
    c.expect("RCPT TO:<b@example.net>", 250).await;

    // A CR at the end of one chunk and its LF at the start of the next are one line
    // break; a lone "." line and command-like text are content; bare LF becomes CRLF.
    let chunks: [&[u8]; 3] = [
        b"Subject: chunked\r\n\r\nfirst line\r",
        b"\n.\r\nbare\nlf\r\nMAIL FROM:<evil@x.y>\r\n",
        b"\r\n.\r\nlast line\r\n",
    ];
    let mut wire = Vec::new();
    wire.extend(bdat(chunks[0], false));
    wire.extend(bdat(chunks[1], false));
    wire.extend(bdat(chunks[2], true));
    c.send(&wire).await; // all three in one write: BDAT is made for pipelining
    let r = c.expect_reply_esc(250, "2.0.0").await;
    assert!(
        r.text().contains(&format!("{} octets", chunks[0].len())),
        "{r}"
    );
    c.expect_reply_esc(250, "2.0.0").await;
    let done = c.expect_reply_esc(250, "2.0.0").await;
    let id = done.queue_id();
    c.expect("QUIT", 221).await;

    let messages = relay.finish(1).await;
    let m = &messages[0];
    m.assert_crlf_only();
    assert_eq!(m.delivered_to(), ["b@example.net"]);
    assert!(m.text().contains(&format!("id {id}")));
    assert_eq!(
        m.body(),
        b"first line\r\n.\r\nbare\r\nlf\r\nMAIL FROM:<evil@x.y>\r\n\r\n.\r\nlast line\r\n",
        "{m:?}"
    );
}

#[tokio::test]
async fn bdat_0_last_ends_the_message() {
    let mut relay = start_relay("").await;
    let mut c = relay.client().await;
    c.expect("MAIL FROM:<a@example.com>", 250).await;
    c.expect("RCPT TO:<b@example.net>", 250).await;
    // Strict headers: the content arrives exactly as sent.
    let chunk = format!("{STRICT_HEAD}Subject: zero last\r\n\r\nbody\r\n");
    let mut wire = bdat(chunk.as_bytes(), false);
    wire.extend_from_slice(b"BDAT 0 LAST\r\n");
    c.send(&wire).await;
    c.expect_reply_esc(250, "2.0.0").await;
    c.expect_reply_esc(250, "2.0.0").await.queue_id();
    c.expect("NOOP", 250).await;

    let messages = relay.finish(1).await;
    assert_eq!(messages[0].body(), b"body\r\n");
    assert!(messages[0].text().ends_with(&chunk), "{messages:?}");
}

#[tokio::test]
async fn bdat_without_a_transaction_is_refused_and_its_octets_are_not_commands() {
    let mut relay = start_relay("").await;
    let mut c = relay.connect().await;
    c.greeting().await;

    // Before EHLO: refused; the chunk would close the session if it were run.
    c.send(bdat(b"QUIT\r\n", true)).await;
    c.expect_reply_esc(503, "5.5.1").await;
    c.expect("EHLO client.test", 250).await;

    // Before MAIL: refused; had the chunk been run, there would be a transaction now.
    let payload = b"MAIL FROM:<evil@x.y>\r\nRCPT TO:<victim@x.y>\r\n";
    c.send(bdat(payload, true)).await;
    c.expect_reply_esc(503, "5.5.1").await;
    c.expect_esc("RCPT TO:<victim@x.y>", 503, "5.5.1").await;
    c.expect_esc("DATA", 503, "5.5.1").await;

    // After MAIL but before any RCPT: no valid recipients; the RSET inside is not run.
    c.expect("MAIL FROM:<a@example.com>", 250).await;
    c.send(bdat(b"RSET\r\n", false)).await;
    c.expect_reply_esc(554, "5.5.1").await;
    c.expect("RCPT TO:<b@example.net>", 250).await;

    // The transaction still works with BDAT.
    c.send(bdat(b"Subject: after all\r\n\r\nok\r\n", true))
        .await;
    c.expect_reply_esc(250, "2.0.0").await;
    c.expect("QUIT", 221).await;
    c.expect_closed().await;

    let messages = relay.finish(1).await;
    assert_eq!(messages[0].delivered_to(), ["b@example.net"]);
    assert!(!messages[0].text().contains("victim"), "{:?}", messages[0]);
}

#[tokio::test]
async fn rset_discards_a_partial_bdat_message_and_data_cannot_follow_bdat() {
    let mut relay = start_relay("").await;
    let mut c = relay.client().await;
    c.expect("MAIL FROM:<a@example.com>", 250).await;
    c.expect("RCPT TO:<b@example.net>", 250).await;
    c.send(bdat(b"Subject: dropped\r\n\r\n", false)).await;
    c.expect_reply(250).await;
    c.expect_esc("DATA", 503, "5.5.1").await;
    c.expect("RSET", 250).await;
    c.expect_esc("RCPT TO:<b@example.net>", 503, "5.5.1").await;
    c.expect("QUIT", 221).await;

    relay.finish(0).await;
}

#[tokio::test]
async fn an_oversized_bdat_message_gets_552_and_nothing_is_kept() {
    let mut relay = start_relay("[server]\nmax_message_size = 2048\n").await;
    let mut c = relay.client().await;
    c.expect("MAIL FROM:<a@example.com>", 250).await;
    c.expect("RCPT TO:<b@example.net>", 250).await;
    let mut wire = bdat(&[b'x'; 1500], false);
    wire.extend(bdat(&[b'y'; 1500], true));
    c.send(&wire).await;
    c.expect_reply(250).await;
    let reply = c.read_reply().await;
    assert_eq!(
        (reply.code, reply.enhanced()),
        (552, Some("5.3.4")),
        "{reply}"
    );
    // The chunk octets were consumed: the session is in sync and usable.
    c.expect("NOOP", 250).await;
    c.expect("MAIL FROM:<a@example.com>", 250).await;
    c.expect("QUIT", 221).await;

    relay.finish(0).await;
}
