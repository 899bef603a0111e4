//! Large messages without large memory (issue 12): the body of a message past the
//! spill size goes to a file in `<spool>/body/` while it arrives, the journal record
//! keeps only its header block, delivery reads the body from the file, and the file
//! goes when the message is finished. Every wait has its own deadline.

pub mod fake_upstream;
pub mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fake_upstream::{FakeUpstream, Fault, Mode};
use support::{Relay, STRICT_HEAD, TestConfig, start_relay, wait_for};
use tokio::io::AsyncWriteExt;

/// A body of about `size` octets with lines that start with a dot, long lines and
/// short ones; CRLF line ends.
fn body(size: usize) -> String {
    let mut body = String::new();
    let mut line = 0usize;
    while body.len() < size {
        match line % 5 {
            0 => body.push_str(".a line that starts with a dot\r\n"),
            1 => body.push_str(&format!("{}\r\n", "y".repeat(900))),
            _ => body.push_str(&format!("line {line} of the large message\r\n")),
        }
        line += 1;
    }
    body
}

fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| (e.path(), e.metadata().map_or(0, |m| m.len())))
                .collect()
        })
        .unwrap_or_default()
}

fn body_dir(relay: &Relay) -> PathBuf {
    relay.config().spool.dir.join("body")
}

/// Bytes in the journal segments.
fn journal_bytes(relay: &Relay) -> u64 {
    files(&relay.config().spool.dir)
        .iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "log"))
        .map(|(_, len)| len)
        .sum()
}

/// What follows our `Received` header in delivered content.
fn after_received(content: &[u8]) -> &[u8] {
    let text = std::str::from_utf8(content).expect("ASCII content");
    let at = text.find(STRICT_HEAD).expect("the submitted header block");
    &content[at..]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_waits_in_a_file_and_arrives_byte_for_byte() {
    let upstream = FakeUpstream::builder(Mode::Plain)
        .ext("PIPELINING")
        .ext("SIZE 52428800")
        .start()
        .await;
    // The upstream takes its time with the end of data: the message is in the spool
    // meanwhile, to be looked at.
    upstream.set_fault(Some(Fault::SlowEndOfData(Duration::from_secs(3))));
    let relay = start_relay(&format!(
        "[server]\nmax_message_size = 52428800\n\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\ntimeout = \"20s\"\n",
        upstream.plain_url()
    ))
    .await;
    let body = body(6 * 1024 * 1024);
    let content = format!("{STRICT_HEAD}Subject: large\r\n\r\n{body}");
    let mut client = relay.client().await;
    client.expect("MAIL FROM:<app@example.com>", 250).await;
    client.expect("RCPT TO:<user@example.net>", 250).await;
    client.expect("DATA", 354).await;
    client.send(support::dot_terminated(&content)).await;
    client.expect_reply(250).await;

    let spooled = files(&body_dir(&relay));
    assert_eq!(spooled.len(), 1, "one body file: {spooled:?}");
    assert_eq!(
        spooled[0].1,
        body.len() as u64,
        "the file holds the body, the record the header block"
    );
    assert!(
        journal_bytes(&relay) < 64 * 1024,
        "the journal does not hold the body: {} octets",
        journal_bytes(&relay)
    );

    let delivered = wait_for("the large message delivered", || async {
        upstream.messages().into_iter().next()
    })
    .await;
    assert!(
        after_received(&delivered.content) == content.as_bytes(),
        "the content changed on the way ({} octets sent, {} received)",
        content.len(),
        delivered.content.len()
    );
    wait_for("the body file removed once delivered", || async {
        files(&body_dir(&relay)).is_empty().then_some(())
    })
    .await;
    client.expect("QUIT", 221).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_of_a_session_cut_off_in_the_middle_is_not_kept() {
    let relay = start_relay("[server]\nmax_message_size = 52428800\n").await;
    let mut client = relay.client().await;
    client.expect("MAIL FROM:<app@example.com>", 250).await;
    client.expect("RCPT TO:<user@example.net>", 250).await;
    client.expect("DATA", 354).await;
    let content = format!("{STRICT_HEAD}Subject: cut\r\n\r\n{}", body(3 * 1024 * 1024));
    let mut stream = client.into_stream();
    stream.write_all(content.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    wait_for("the body going to a file", || async {
        (!files(&body_dir(&relay)).is_empty()).then_some(())
    })
    .await;
    drop(stream);
    wait_for("the file of the unfinished message removed", || async {
        files(&body_dir(&relay)).is_empty().then_some(())
    })
    .await;
    assert!(relay.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_sent_with_bdat_is_kept_the_same_way() {
    let mut relay = start_relay("[server]\nmax_message_size = 52428800\n").await;
    let content = format!(
        "{STRICT_HEAD}Subject: chunks\r\n\r\n{}",
        body(4 * 1024 * 1024)
    );
    let mut client = relay.client().await;
    client.expect("MAIL FROM:<app@example.com>", 250).await;
    client.expect("RCPT TO:<user@example.net>", 250).await;
    let chunks: Vec<&[u8]> = content.as_bytes().chunks(1024 * 1024 + 7).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i + 1 == chunks.len() { " LAST" } else { "" };
        client
            .send(format!("BDAT {}{last}\r\n", chunk.len()).as_bytes())
            .await;
        client.send(chunk).await;
        client.expect_reply(250).await;
    }
    client.expect("QUIT", 221).await;
    relay.wait_for_messages(1).await;
    wait_for("the body file removed once delivered", || async {
        files(&body_dir(&relay)).is_empty().then_some(())
    })
    .await;
    let delivered = relay.finish(1).await;
    assert!(
        after_received(&delivered[0].bytes) == content.as_bytes(),
        "the content changed on the way"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_large_message_survives_a_restart() {
    let shared = tempfile::tempdir().unwrap();
    let spool = shared.path().join("spool");
    let outbox = shared.path().join("outbox");
    let spool_section = format!(
        "[server]\nmax_message_size = 52428800\n\n[spool]\ndir = \"{}\"\n",
        spool.display()
    );
    let down = format!(
        "{spool_section}\n[delivery]\nretry_base = \"1s\"\nretry_max = \"2s\"\n\n[[upstream]]\nname = \"down\"\nurl = \"smtp://127.0.0.1:{}?tls=none\"\ntimeout = \"2s\"\n",
        support::free_port()
    );
    let content = format!(
        "{STRICT_HEAD}Subject: restart\r\n\r\n{}",
        body(3 * 1024 * 1024)
    );
    {
        let dir = tempfile::tempdir_in(shared.path()).unwrap();
        let mut relay = Relay::start(TestConfig::new(dir.path()).toml(&down), dir).await;
        let mut client = relay.client().await;
        let reply = client
            .send_content("app@example.com", &["user@example.net"], &content)
            .await;
        assert_eq!(reply.code, 250, "{}", reply.text());
        client.expect("QUIT", 221).await;
        relay.shutdown().await;
    }
    assert_eq!(files(&spool.join("body")).len(), 1);
    // In a process that goes on, the spool's lock goes with the last task that held the
    // spool, a moment after the shutdown returned (a real restart is a new process).
    wait_for("the first relay's spool lock released", || async {
        (!smarthost::spool::Spool::is_locked(&spool)).then_some(())
    })
    .await;

    let dir = tempfile::tempdir_in(shared.path()).unwrap();
    let config = TestConfig::new(dir.path())
        .toml(&spool_section)
        .maildir(&outbox);
    let mut relay = Relay::start(config, dir).await;
    relay.wait_for_messages(1).await;
    wait_for("the body file removed once delivered", || async {
        files(&spool.join("body")).is_empty().then_some(())
    })
    .await;
    let delivered = relay.finish(1).await;
    assert!(
        after_received(&delivered[0].bytes) == content.as_bytes(),
        "the content changed across the restart"
    );
}

/// Memory for message content is `spool.memory_limit` in all: clients sending more than
/// that at once have their bodies written to the spool earlier, and all of them arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_messages_beyond_the_memory_limit_go_to_the_spool_and_arrive() {
    let mut relay =
        start_relay("[server]\nmax_message_size = 52428800\n\n[spool]\nmemory_limit = 1048576\n")
            .await;
    let addr = relay.addr();
    let sends: Vec<_> = (0..6)
        .map(|i| {
            tokio::spawn(async move {
                let content = format!(
                    "{STRICT_HEAD}Subject: concurrent {i}\r\n\r\n{}",
                    body(900 * 1024 + i * 1000)
                );
                let mut client = support::SmtpClient::connect(addr).await;
                client.greeting().await;
                client.expect("EHLO client.test", 250).await;
                let reply = client
                    .send_content("app@example.com", &["user@example.net"], &content)
                    .await;
                assert_eq!(reply.code, 250, "client {i}: {}", reply.text());
                client.expect("QUIT", 221).await;
                content
            })
        })
        .collect();
    let mut sent = Vec::new();
    for send in sends {
        sent.push(support::within("a client's message", send).await.unwrap());
    }
    relay.wait_for_messages(6).await;
    let metrics_addr = relay.metrics_addr().expect("metrics listen");
    let (_, metrics) = support::http_get(metrics_addr, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("smarthost_spooled_bodies_total{reason=\"memory\"}")),
        "bodies below the usual size went to the spool for want of memory:\n{metrics}"
    );
    wait_for("every body file removed once delivered", || async {
        files(&body_dir(&relay)).is_empty().then_some(())
    })
    .await;
    let delivered = relay.finish(6).await;
    for content in &sent {
        assert!(
            delivered
                .iter()
                .any(|d| after_received(&d.bytes) == content.as_bytes()),
            "a message changed on the way or is missing"
        );
    }
}

/// A header block has to be in memory whole. One larger than what is left of
/// `spool.memory_limit` may go over it, one session at a time; a second one meanwhile
/// can neither stay in memory nor go to the spool and is refused with `452 4.3.1` at its
/// end. Both sessions go on, and the memory is free again for the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_huge_header_block_at_once_gets_452_and_the_sessions_go_on() {
    let mut relay =
        start_relay("[server]\nmax_message_size = 52428800\n\n[spool]\nmemory_limit = 1048576\n")
            .await;
    let mut headers = String::new();
    for i in 0..40_000 {
        headers.push_str(&format!("X-Filler-{i}: a header block that never ends\r\n"));
    }
    let huge = |subject: &str| format!("{STRICT_HEAD}{headers}Subject: {subject}\r\n\r\nbody\r\n");
    let first = huge("first");
    let (first_part, first_rest) = first.split_at(first.len() - 100);

    let mut over = relay.client().await;
    over.expect("MAIL FROM:<app@example.com>", 250).await;
    over.expect("RCPT TO:<user@example.net>", 250).await;
    over.expect("DATA", 354).await;
    over.send(first_part.as_bytes()).await;
    let metrics_addr = relay.metrics_addr().expect("metrics listen");
    wait_for("the first header block held in memory", || async {
        let (_, metrics) = support::http_get(metrics_addr, "/metrics").await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("smarthost_content_memory_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|held| *held > 1048576.0)
    })
    .await;

    let mut refused = relay.client().await;
    refused.expect("MAIL FROM:<app@example.com>", 250).await;
    refused.expect("RCPT TO:<user@example.net>", 250).await;
    refused.expect("DATA", 354).await;
    refused.send(support::dot_terminated(&huge("second"))).await;
    refused.expect_reply_esc(452, "4.3.1").await;

    // The rest of the first message has no line that starts with a dot.
    over.send(format!("{first_rest}.\r\n").as_bytes()).await;
    over.expect_reply(250).await;
    over.expect("QUIT", 221).await;

    let small = format!("{STRICT_HEAD}Subject: small\r\n\r\nbody\r\n");
    let reply = refused
        .send_message("app@example.com", &["user@example.net"], small.as_bytes())
        .await;
    assert_eq!(reply.code, 250, "{}", reply.text());
    refused.expect("QUIT", 221).await;
    let delivered = relay.finish(2).await;
    for content in [&first, &small] {
        assert!(
            delivered
                .iter()
                .any(|d| after_received(&d.bytes) == content.as_bytes()),
            "a message changed on the way or is missing"
        );
    }
}

/// Passthrough mode streams too: the body goes to `<spool>/body/` while it arrives and
/// is sent from there while the client waits; nothing stays behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_mode_streams_a_large_message_and_keeps_nothing() {
    let upstream = FakeUpstream::builder(Mode::Plain)
        .ext("PIPELINING")
        .ext("SIZE 52428800")
        .start()
        .await;
    let relay = start_relay(&format!(
        "[server]\nmax_message_size = 52428800\n\n[delivery]\nmode = \"passthrough\"\n\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\ntimeout = \"20s\"\n",
        upstream.plain_url()
    ))
    .await;
    let content = format!(
        "{STRICT_HEAD}Subject: passthrough\r\n\r\n{}",
        body(4 * 1024 * 1024)
    );
    let mut client = relay.client().await;
    let reply = client
        .send_content("app@example.com", &["user@example.net"], &content)
        .await;
    assert_eq!(reply.code, 250, "{}", reply.text());
    let delivered = upstream.messages();
    assert_eq!(delivered.len(), 1, "delivered before the 250");
    assert!(after_received(&delivered[0].content) == content.as_bytes());
    assert!(
        body_dir(&relay).exists(),
        "the body went through the spool's body directory"
    );
    assert!(files(&body_dir(&relay)).is_empty(), "and nothing is left");
    client.expect("QUIT", 221).await;
}
