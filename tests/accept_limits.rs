//! Timeouts and connection limits.

mod support;

use std::time::Duration;

use support::{HANG_GUARD, start_relay};

#[tokio::test]
async fn a_stalling_client_gets_421_4_4_2_and_is_disconnected() {
    let relay = start_relay("[server]\ncommand_timeout = \"1s\"\n").await;
    let mut c = relay.connect().await;
    c.greeting().await;
    // Say nothing.
    let reply = c.expect_reply_esc(421, "4.4.2").await;
    assert!(reply.text().contains("Timeout"), "{reply}");
    c.expect_closed().await;
}

#[tokio::test]
async fn a_client_stalling_in_data_gets_421_and_nothing_is_kept() {
    let mut relay = start_relay("[server]\ncommand_timeout = \"1s\"\n").await;
    let mut c = relay.client().await;
    c.expect("MAIL FROM:<a@example.com>", 250).await;
    c.expect("RCPT TO:<b@example.net>", 250).await;
    c.expect("DATA", 354).await;
    c.send("Subject: never finished\r\n\r\nhalf a mess").await;
    c.expect_reply_esc(421, "4.4.2").await;
    c.expect_closed().await;
    relay.finish(0).await;
}

#[tokio::test]
async fn the_third_connection_from_one_address_is_turned_away() {
    let relay = start_relay("[server]\nmax_connections_per_client = 2\n").await;
    let mut a = relay.connect().await;
    a.greeting().await;
    let mut b = relay.connect().await;
    b.greeting().await;

    let mut third = relay.connect().await;
    let reply = third.expect_reply_esc(421, "4.7.0").await;
    assert!(reply.text().contains("127.0.0.1"), "{reply}");
    third.expect_closed().await;

    // The two sessions are unaffected.
    a.expect("EHLO a.test", 250).await;
    b.expect("EHLO b.test", 250).await;

    // When one leaves, its slot is free again (once its session has ended).
    a.expect("QUIT", 221).await;
    a.expect_closed().await;
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let mut next = relay.connect().await;
        let reply = next.read_reply().await;
        if reply.code == 220 {
            next.expect("EHLO c.test", 250).await;
            break;
        }
        assert_eq!(reply.code, 421, "{reply}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn past_max_connections_a_new_connection_gets_421() {
    let relay = start_relay("[server]\nmax_connections = 1\n").await;
    let mut first = relay.connect().await;
    first.greeting().await;

    let mut second = relay.connect().await;
    let reply = second.expect_reply(421).await;
    assert!(
        reply.enhanced().is_some_and(|e| e.starts_with("4.")),
        "{reply}"
    );
    second.expect_closed().await;

    first.expect("EHLO a.test", 250).await;
    first.expect("NOOP", 250).await;
}

/// A client that pipelines commands but never reads the replies fills its receive
/// window; the server must not wait forever to write (it holds a connection slot).
#[tokio::test]
async fn a_client_that_never_reads_its_replies_is_dropped_after_the_command_timeout() {
    use tokio::io::AsyncWriteExt;
    let relay = start_relay("[server]\ncommand_timeout = \"1s\"\nmax_connections = 1\n").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(relay.addr()).await.unwrap();
    // HELP answers 6 octets with about 90: the replies pile up fast.
    let writer = tokio::spawn(async move {
        let batch = "HELP\r\n".repeat(10_000);
        while stalled.write_all(batch.as_bytes()).await.is_ok() {}
    });

    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let mut next = relay.connect().await;
        match next.try_read_reply().await {
            Ok(reply) if reply.code == 220 => break,
            Ok(reply) => assert_eq!(reply.code, 421, "{reply}"),
            Err(e) => panic!("{e:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session of the client that does not read was never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.abort();
}
