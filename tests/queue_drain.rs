//! `smarthost queue drain --to HOST:PORT`: the real binary hands a relay's queue to a
//! second relay (in-process, delivering into a Maildir), with the first relay running
//! (the binary, [`Daemon`], whose only upstream is unreachable so its mail stays queued)
//! and with no relay running on the spool. Every message must arrive exactly once with
//! its pending recipients and its content, and leave the first queue only then; with
//! the target unreachable nothing leaves. A scripted target ([`fake_upstream`]) refuses
//! recipients permanently (they stay queued, the others are handed over) and
//! temporarily (the drain stops there).

pub mod fake_upstream;
pub mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use fake_upstream::{FakeUpstream, Mode};
use smarthost::message::{Envelope, Message, QueueId, SpooledBody};
use smarthost::proto::{Address, ReversePath};
use smarthost::spool::{DeliveryState, RcptState, Spool};
use support::process::{Daemon, Run, smarthost_async};
use support::{Delivered, Relay, SmtpClient, TestConfig, free_port, header, start_relay};

/// A relay configuration whose only upstream is a port where nothing listens, with the
/// first retry an hour away: its mail stays queued.
fn stuck_config(dir: &Path) -> PathBuf {
    TestConfig::new(dir)
        .toml(&format!(
            "[delivery]\nretry_base = \"1h\"\nretry_max = \"2h\"\n\n\
             [[upstream]]\nname = \"down\"\nurl = \"smtp://127.0.0.1:{}?tls=none\"\ntimeout = \"2s\"\n",
            free_port()
        ))
        .write()
}

/// A large body (> 1 MiB: the spool keeps it in a body file), with lines that start
/// with a dot to check the transparency on the way.
fn large_body() -> String {
    (0..30_000)
        .map(|i| format!(".line {i:05} of a large message, padded to be long enough\r\n"))
        .collect()
}

fn content(subject: &str, body: &str) -> String {
    format!("From: <app@example.com>\r\nSubject: {subject}\r\n\r\n{body}")
}

/// A message with `recipients`, the first `delivered` of them already delivered.
async fn seed(
    spool: &Spool,
    subject: &str,
    recipients: &[&str],
    delivered: usize,
    body: Option<&str>,
) -> QueueId {
    let id = QueueId::generate();
    let mut message = Message {
        id,
        envelope: Envelope {
            sender: ReversePath::Mailbox(Address::parse("app@example.com").unwrap()),
            recipients: recipients
                .iter()
                .map(|r| Address::parse(r).unwrap())
                .collect(),
            smtputf8: false,
            eight_bit: false,
            route: None,
        },
        content: content(subject, "short body\r\n").into_bytes(),
        body: None,
        received_at: SystemTime::now(),
    };
    if let Some(body) = body {
        message.content = content(subject, "").into_bytes();
        let path = spool
            .body_dir()
            .join(format!("{:016x}", QueueId::generate().as_u64()));
        std::fs::write(&path, body).unwrap();
        message.body = Some(SpooledBody {
            path,
            len: body.len() as u64,
            eight_bit: false,
        });
    }
    let mut state = DeliveryState::new(recipients.len());
    for r in state.rcpts.iter_mut().take(delivered) {
        *r = RcptState::Delivered;
    }
    spool.put_with_state(&message, state).await.unwrap();
    id
}

async fn drain(config: &Path, to: &str, cwd: &Path) -> Run {
    let config = config.display().to_string();
    smarthost_async(&["queue", "drain", "--to", to, "-c", &config], cwd).await
}

fn queued_ids(spool: &Path) -> Vec<String> {
    Spool::inspect(spool)
        .unwrap()
        .iter()
        .map(|(id, _)| id.to_string())
        .collect()
}

/// What the second relay delivered, by subject: (Delivered-To recipients, message).
fn by_subject(messages: &[Delivered]) -> BTreeMap<String, Vec<(Vec<String>, Delivered)>> {
    let mut out: BTreeMap<String, Vec<(Vec<String>, Delivered)>> = BTreeMap::new();
    for m in messages {
        let subject = header(&m.text(), "Subject").unwrap_or_default();
        out.entry(subject)
            .or_default()
            .push((m.delivered_to(), m.clone()));
    }
    out
}

/// Each subject arrived exactly once, to exactly `rcpts`; the large one with its body.
fn assert_arrived_once(target: &Relay, expected: &[(&str, &[&str])], large: &str) {
    let delivered = by_subject(&target.messages());
    assert_eq!(
        delivered.len(),
        expected.len(),
        "subjects: {:?}",
        delivered.keys()
    );
    for (subject, rcpts) in expected {
        let copies = delivered
            .get(*subject)
            .unwrap_or_else(|| panic!("{subject} not delivered: {delivered:#?}"));
        assert_eq!(copies.len(), 1, "{subject} arrived twice: {copies:#?}");
        assert_eq!(copies[0].0, *rcpts, "{subject}");
    }
    let big = &delivered["large"][0].1;
    assert_eq!(
        big.body(),
        large.as_bytes(),
        "the large body arrived as it was"
    );
}

fn assert_code(run: &Run, code: i32) {
    assert_eq!(run.code, Some(code), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_relay_hands_its_queue_over_once() {
    let tmp = tempfile::tempdir().unwrap();
    let config = stuck_config(tmp.path());
    let spool_dir = tmp.path().join("spool");
    // Left by an earlier run: one recipient delivered, one pending.
    {
        let spool = Spool::open(&spool_dir).unwrap();
        seed(
            &spool,
            "half-done",
            &["done@example.net", "pending@example.net"],
            1,
            None,
        )
        .await;
    }
    let daemon = {
        let (config, cwd) = (config.clone(), tmp.path().to_owned());
        tokio::task::spawn_blocking(move || Daemon::start(&config, &cwd))
            .await
            .unwrap()
    };
    let large = large_body();
    let mut client = SmtpClient::connect(daemon.addr()).await;
    client.greeting().await;
    client.expect("EHLO client.test", 250).await;
    for (subject, to, body) in [
        ("first", "a@example.net", "one\r\n".to_owned()),
        ("second", "b@example.net", "two\r\n".to_owned()),
        ("large", "c@example.net", large.clone()),
    ] {
        let reply = client
            .send_content("app@example.com", &[to], &content(subject, &body))
            .await;
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    client.expect("QUIT", 221).await;
    assert_eq!(queued_ids(&spool_dir).len(), 4);
    assert!(
        std::fs::read_dir(spool_dir.join("body")).unwrap().count() >= 1,
        "the large message has a body file"
    );

    // The target is unreachable: exit 1, nothing removed.
    let before = queued_ids(&spool_dir);
    let unreachable = format!("127.0.0.1:{}", free_port());
    let run = drain(&config, &unreachable, tmp.path()).await;
    assert_code(&run, 1);
    assert!(run.stdout.contains("cannot connect"), "{run:?}");
    assert!(run.stdout.contains("4 left in the queue"), "{run:?}");
    assert_eq!(queued_ids(&spool_dir), before);

    let mut target = start_relay("").await;
    let run = drain(&config, &target.addr().to_string(), tmp.path()).await;
    assert_code(&run, 0);
    assert!(run.stdout.contains("running relay"), "{run:?}");
    assert_eq!(
        run.stdout.matches("handed over ").count() - 1,
        4,
        "one line per message, and the summary: {run:?}"
    );
    assert!(
        run.stdout
            .contains("4 message(s) handed over to 127.0.0.1:"),
        "{run:?}"
    );
    target.wait_for_messages(4).await;
    let list = smarthost_async(
        &["queue", "list", "-c", &config.display().to_string()],
        tmp.path(),
    )
    .await;
    assert_eq!(list.stdout, "0 message(s) queued\n", "{list:?}");
    assert_eq!(
        std::fs::read_dir(spool_dir.join("body")).unwrap().count(),
        0,
        "the body file went with its message"
    );
    // The relay goes on working after the drain.
    client = SmtpClient::connect(daemon.addr()).await;
    client.greeting().await;
    client.expect("EHLO client.test", 250).await;
    let reply = client
        .send_content(
            "app@example.com",
            &["d@example.net"],
            &content("after", "x\r\n"),
        )
        .await;
    assert_eq!(reply.code, 250, "{reply:?}\n{}", daemon.log());
    drop(daemon);

    target.finish(4).await;
    assert_arrived_once(
        &target,
        &[
            ("half-done", &["pending@example.net"]),
            ("first", &["a@example.net"]),
            ("second", &["b@example.net"]),
            ("large", &["c@example.net"]),
        ],
        &large,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_relay_running_the_command_drains_the_spool_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let config = stuck_config(tmp.path());
    let spool_dir = tmp.path().join("spool");
    let large = large_body();
    {
        let spool = Spool::open(&spool_dir).unwrap();
        seed(&spool, "first", &["a@example.net"], 0, None).await;
        seed(
            &spool,
            "half-done",
            &["done@example.net", "pending@example.net"],
            1,
            None,
        )
        .await;
        seed(&spool, "large", &["c@example.net"], 0, Some(&large)).await;
    }
    assert!(!Spool::is_locked(&spool_dir));

    // Unreachable target: exit 1, nothing removed.
    let before = queued_ids(&spool_dir);
    let run = drain(&config, &format!("127.0.0.1:{}", free_port()), tmp.path()).await;
    assert_code(&run, 1);
    assert!(run.stdout.contains("cannot connect"), "{run:?}");
    assert_eq!(queued_ids(&spool_dir), before);

    // Not HOST:PORT: a usage error.
    assert_code(&drain(&config, "nowhere", tmp.path()).await, 2);

    let mut target = start_relay("").await;
    let run = drain(&config, &target.addr().to_string(), tmp.path()).await;
    assert_code(&run, 0);
    assert!(!run.stdout.contains("running relay"), "{run:?}");
    assert!(
        run.stdout
            .contains("3 message(s) handed over to 127.0.0.1:"),
        "{run:?}"
    );
    assert!(queued_ids(&spool_dir).is_empty());
    assert_eq!(
        std::fs::read_dir(spool_dir.join("body")).unwrap().count(),
        0
    );
    target.finish(3).await;
    assert_arrived_once(
        &target,
        &[
            ("first", &["a@example.net"]),
            ("half-done", &["pending@example.net"]),
            ("large", &["c@example.net"]),
        ],
        &large,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_recipients_stay_queued_and_a_temporary_refusal_stops_the_drain() {
    let tmp = tempfile::tempdir().unwrap();
    let config = stuck_config(tmp.path());
    let spool_dir = tmp.path().join("spool");
    let (mixed, busy, plain) = {
        let spool = Spool::open(&spool_dir).unwrap();
        (
            seed(
                &spool,
                "mixed",
                &["ok@example.net", "gone@example.net"],
                0,
                None,
            )
            .await,
            seed(&spool, "busy", &["busy@example.net"], 0, None).await,
            seed(&spool, "plain", &["plain@example.net"], 0, None).await,
        )
    };
    let fake = FakeUpstream::builder(Mode::Plain)
        .rcpt_reply_for("gone@example.net", "550 5.1.1 no such user")
        .rcpt_reply_for("busy@example.net", "451 4.2.0 mailbox busy")
        .start()
        .await;
    let run = drain(&config, &format!("127.0.0.1:{}", fake.port()), tmp.path()).await;
    assert_code(&run, 1);
    assert!(
        run.stdout.contains(&format!(
            "left {mixed}: refused: <gone@example.net>: 550 5.1.1 no such user"
        )),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains(&format!("stopped at {busy}: refused for now")),
        "{run:?}"
    );
    assert!(run.stdout.contains("3 left in the queue"), "{run:?}");

    // The accepted recipient went once; the refused one and the rest stay queued.
    let got: Vec<Vec<String>> = fake.messages().into_iter().map(|m| m.rcpts).collect();
    assert_eq!(got, [["ok@example.net"]]);
    let queued = Spool::inspect(&spool_dir).unwrap();
    let ids: Vec<QueueId> = queued.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        [mixed, busy, plain],
        "plain was not tried after the 4xx"
    );
    assert_eq!(
        queued[0].1.state.rcpts,
        [RcptState::Delivered, RcptState::Pending],
        "the accepted recipient is recorded, the refused one pending"
    );
}
