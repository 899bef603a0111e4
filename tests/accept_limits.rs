//! Timeouts and connection limits.

pub mod support;

use std::time::Duration;

use support::{HANG_GUARD, start_relay, wait_for, within};

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
    wait_for("the slot freed", || async {
        let mut next = relay.connect().await;
        let reply = next.read_reply().await;
        if reply.code == 220 {
            next.expect("EHLO c.test", 250).await;
            return Some(());
        }
        assert_eq!(reply.code, 421, "{reply}");
        None
    })
    .await;
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
    let mut stalled = within("connect", socket.connect(relay.addr()))
        .await
        .unwrap();
    // HELP answers 6 octets with about 90: the replies pile up fast.
    let writer = tokio::spawn(async move {
        let batch = "HELP\r\n".repeat(10_000);
        while stalled.write_all(batch.as_bytes()).await.is_ok() {}
    });

    wait_for(
        "the session of the client that does not read closed",
        || async {
            let mut next = relay.connect().await;
            match next.try_read_reply().await {
                Ok(reply) if reply.code == 220 => Some(()),
                Ok(reply) => {
                    assert_eq!(reply.code, 421, "{reply}");
                    None
                }
                Err(e) => panic!("{e:?}"),
            }
        },
    )
    .await;
    writer.abort();
}

/// A trusted client sending a command a byte at a time still has to finish it within
/// `command_timeout`: the deadline is per command, not per read.
#[tokio::test]
async fn a_command_trickled_a_byte_at_a_time_times_out() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let relay = start_relay("[server]\ncommand_timeout = \"1s\"\n").await;
    let stream = within("connect", tokio::net::TcpStream::connect(relay.addr()))
        .await
        .unwrap();
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    within("the greeting", read.read_line(&mut line))
        .await
        .unwrap();
    assert!(line.starts_with("220 "), "{line}");
    // A byte every 200 ms for 6 s: each read comes well within the timeout.
    let trickler = tokio::spawn(async move {
        for byte in b"NOOP NOOP NOOP NOOP NOOP NOOP" {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    line.clear();
    tokio::time::timeout(HANG_GUARD, read.read_line(&mut line))
        .await
        .expect("no reply at all")
        .unwrap();
    assert!(
        line.starts_with("421 4.4.2 ") && line.contains("no complete command within 1s"),
        "{line}"
    );
    assert!(
        !trickler.is_finished(),
        "the timeout came only after the client stopped sending"
    );
    trickler.abort();
}

/// Untrusted clients trickling bytes used to keep their connections forever: 400 of
/// them locked trusted apps out. A refused client gets one answer and is closed, and
/// its first command must arrive within the (shorter) wait for refused clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_untrusted_clients_do_not_lock_out_a_trusted_one() {
    use tokio::io::AsyncWriteExt;
    const TRICKLERS: usize = 400;
    // Room for 400 client and 400 server sockets in this process.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
    // The trusted app is 127.0.0.2; the tricklers come from 127.0.0.1.
    let relay = start_relay(&format!(
        "[server]\ntrusted_networks = [\"127.0.0.2/32\"]\ncommand_timeout = \"2s\"\n\
         max_connections = {TRICKLERS}\nmax_connections_per_client = {}\n",
        TRICKLERS * 2
    ))
    .await;
    let addr = relay.addr();
    let mut tricklers = Vec::new();
    for _ in 0..TRICKLERS {
        let mut stream = within("connect", tokio::net::TcpStream::connect(addr))
            .await
            .unwrap();
        tricklers.push(tokio::spawn(async move {
            // One byte a second, never a whole line, until the server closes.
            for _ in 0..120 {
                if stream.write_all(b"E").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }

    let mut sent = 0;
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while sent < 21 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trusted client sent {sent} of 21 messages: the tricklers keep the slots"
        );
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let stream = within("connect", socket.connect(addr)).await.unwrap();
        let mut c = support::SmtpClient::new(stream);
        let greeting = c.read_reply().await;
        if greeting.code != 220 {
            assert_eq!(greeting.code, 421, "{greeting}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        c.expect("EHLO app.test", 250).await;
        let reply = c
            .send_message(
                "app@example.com",
                &["user@example.net"],
                format!("Subject: m{sent}\r\n\r\nhello\r\n").as_bytes(),
            )
            .await;
        assert_eq!(reply.code, 250, "{reply}");
        sent += 1;
    }
    for trickler in tricklers {
        trickler.abort();
    }
}
