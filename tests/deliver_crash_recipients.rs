//! Recipient state across a crash between two transactions of one message (issue 21):
//! the real binary (`smarthost serve`, [`support::process::Daemon`]) delivers a message whose
//! recipients the upstream's `max_recipients` splits into transactions; it is killed
//! with `SIGKILL` while a later transaction waits for its end-of-data reply, and
//! restarted on the same spool. The recipients an earlier transaction got accepted are
//! recorded before the next one starts, so they are never sent again: at least once
//! holds only for the transaction in flight.
//!
//! The scripted upstream ([`fake_upstream`]) holds the end of data of every message
//! after the first ([`Fault::HoldEndOfDataAfter`]), so the kill always falls inside the
//! second transaction; every wait has its own deadline and the relay is killed when the
//! test ends.
//!
//! The contract between the delivery stage and the queue ([`Progress`]) is tested on
//! the [`Deliverer`] itself: a single transaction reports nothing (no extra write), a
//! split message reports each transaction before the next, and a report the queue
//! cannot record ends the attempt before the next transaction.

pub mod fake_upstream;
pub mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fake_upstream::{FakeUpstream, Fault, Mode};
use smarthost::deliver::failover::RcptOutcome;
use smarthost::deliver::{Deliverer, Progress, ProgressFuture};
use smarthost::message::{Envelope, Message, QueueId};
use smarthost::ops::send::{SendRequest, send};
use smarthost::proto::{Address, ReversePath};
use smarthost::transform::Transformer;
use smarthost::transform::dkim::DkimKeys;
use support::process::Daemon;
use support::{CHILD_GUARD, HANG_GUARD, TestConfig, config};

fn recipients(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("r{i}@example.net")).collect()
}

/// How many `RCPT TO` each address got, over every connection the upstream saw.
fn rcpt_commands(fake: &FakeUpstream) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for line in fake.lines() {
        let text = line.text.to_ascii_lowercase();
        if let Some(arg) = text.strip_prefix("rcpt to:") {
            let addr = arg.trim().trim_start_matches('<');
            let addr = addr.split('>').next().unwrap_or("").to_owned();
            *seen.entry(addr).or_insert(0) += 1;
        }
    }
    seen
}

/// How many accepted copies each recipient got.
fn accepted_copies(fake: &FakeUpstream) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for message in fake.messages() {
        for rcpt in message.rcpts {
            *seen.entry(rcpt).or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn sigkill_between_transactions_resends_no_accepted_recipient() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Serves on the runtime's workers while this thread drives the relay.
    let fake = runtime.block_on(FakeUpstream::builder(Mode::Plain).ext("PIPELINING").start());
    fake.set_fault(Some(Fault::HoldEndOfDataAfter(1)));

    let tmp = tempfile::tempdir().unwrap();
    let config = TestConfig::new(tmp.path())
        .toml(&format!(
            "[delivery]\nretry_base = \"1h\"\nretry_max = \"2h\"\n\n\
             [[upstream]]\nname = \"capped\"\nurl = \"smtp://127.0.0.1:{}?tls=none\"\n\
             timeout = \"5s\"\ndata_timeout = \"60s\"\nmax_recipients = 2\n",
            fake.port()
        ))
        .write();
    let first = Daemon::start(&config, tmp.path());
    let to = recipients(5);
    let reply = runtime
        .block_on(async {
            tokio::time::timeout(
                CHILD_GUARD,
                send(&SendRequest {
                    server: first.addr().to_string(),
                    from: "app@example.com".into(),
                    to: to.clone(),
                    subject: "five recipients, two per transaction".into(),
                    body: "split in three transactions\n".into(),
                    raw: None,
                    helo: "crash.test".into(),
                    timeout: Duration::from_secs(5),
                }),
            )
            .await
        })
        .expect("submission hung")
        .expect("submission failed");
    assert_eq!(reply.code, 250, "{}", first.log());

    // Transaction 1 (r1, r2) accepted; transaction 2 (r3, r4) sent and held.
    first.wait_until("the second transaction held by the upstream", || {
        (fake.held() == 1).then_some(())
    });
    let before = fake.messages();
    assert_eq!(before.len(), 1, "{}", first.log());
    assert_eq!(before[0].rcpts, ["r1@example.net", "r2@example.net"]);
    let log = first.kill();
    // The held connection closes unanswered: transaction 2 was never accepted.
    fake.set_fault(None);

    let second = Daemon::start(&config, tmp.path());
    second.wait_until("every recipient accepted after the restart", || {
        let copies = accepted_copies(&fake);
        to.iter().all(|r| copies.contains_key(r)).then_some(())
    });
    second.wait_until_queue_empty();

    let copies = accepted_copies(&fake);
    let rcpts = rcpt_commands(&fake);
    let context = format!(
        "copies {copies:?}, RCPT commands {rcpts:?}\n--- first relay ---\n{log}\n--- second relay ---\n{}",
        second.log()
    );
    // Transaction 1's recipients were recorded before transaction 2 started: never
    // sent again, not even offered in a RCPT.
    for r in ["r1@example.net", "r2@example.net"] {
        assert_eq!(copies.get(r), Some(&1), "{r}: {context}");
        assert_eq!(rcpts.get(r), Some(&1), "{r} sent again: {context}");
    }
    // The transaction in flight (r3, r4) is the only one sent twice (at least once);
    // its first try was never accepted, so every recipient has exactly one copy.
    for r in ["r3@example.net", "r4@example.net"] {
        assert_eq!(rcpts.get(r), Some(&2), "{r}: {context}");
    }
    assert_eq!(rcpts.get("r5@example.net"), Some(&1), "{context}");
    for r in &to {
        assert_eq!(copies.get(r), Some(&1), "{r}: {context}");
    }
    drop(second);
    drop(fake);
    drop(runtime);
}

/// A queue stand-in: remembers every report; refuses them all when `refuse`.
#[derive(Default)]
struct Reports {
    seen: Mutex<Vec<Vec<usize>>>,
    refuse: bool,
}

impl Progress for Reports {
    fn accepted<'a>(&'a self, accepted: &'a [usize]) -> ProgressFuture<'a> {
        self.seen.lock().unwrap().push(accepted.to_vec());
        let result = if self.refuse {
            Err("the spool cannot record delivery progress: test".to_owned())
        } else {
            Ok(())
        };
        Box::pin(std::future::ready(result))
    }
}

fn deliverer(fake: &FakeUpstream, max_recipients: usize) -> Deliverer {
    let config = config::parsed(&format!(
        "[[upstream]]\nname = \"capped\"\nurl = \"smtp://127.0.0.1:{}?tls=none\"\n\
         timeout = \"5s\"\nmax_recipients = {max_recipients}\n",
        fake.port()
    ));
    let transformer = Arc::new(Transformer::new(DkimKeys::load(&config.dkim).unwrap()));
    Deliverer::from_config(&config, transformer).unwrap()
}

fn message(n: usize) -> Arc<Message> {
    Arc::new(Message {
        id: QueueId::generate(),
        envelope: Envelope {
            sender: ReversePath::Mailbox(Address::parse("app@example.com").unwrap()),
            recipients: recipients(n)
                .iter()
                .map(|r| Address::parse(r).unwrap())
                .collect(),
            smtputf8: false,
            eight_bit: false,
            route: None,
        },
        content: b"From: <app@example.com>\r\nSubject: split\r\n\r\nbody\r\n".to_vec(),
        body: None,
        received_at: SystemTime::now(),
    })
}

async fn deliver(
    deliverer: &Deliverer,
    message: Arc<Message>,
    progress: &Reports,
) -> smarthost::deliver::failover::Report {
    tokio::time::timeout(HANG_GUARD, deliverer.deliver_tracked(message, progress))
        .await
        .expect("delivery hung")
}

#[tokio::test]
async fn one_transaction_reports_nothing_and_a_split_one_each_transaction_before_the_next() {
    let fake = FakeUpstream::builder(Mode::Plain)
        .ext("PIPELINING")
        .start()
        .await;
    let deliverer = deliverer(&fake, 2);

    let single = Reports::default();
    let report = deliver(&deliverer, message(2), &single).await;
    assert!(report.all_delivered(), "{report:?}");
    assert!(
        single.seen.lock().unwrap().is_empty(),
        "one transaction must cost no progress write"
    );

    let split = Reports::default();
    let report = deliver(&deliverer, message(5), &split).await;
    assert!(report.all_delivered(), "{report:?}");
    // Transactions {0,1}, {2,3}, {4}: the last is recorded with the attempt's outcome.
    assert_eq!(*split.seen.lock().unwrap(), vec![vec![0, 1], vec![2, 3]]);
    assert_eq!(fake.messages().len(), 1 + 3);
}

#[tokio::test]
async fn a_report_the_queue_cannot_record_ends_the_attempt_before_the_next_transaction() {
    let fake = FakeUpstream::builder(Mode::Plain)
        .ext("PIPELINING")
        .start()
        .await;
    let deliverer = deliverer(&fake, 2);
    let refusing = Reports {
        refuse: true,
        ..Reports::default()
    };
    let report = deliver(&deliverer, message(5), &refusing).await;
    assert_eq!(*refusing.seen.lock().unwrap(), vec![vec![0, 1]]);
    // Only the first transaction went out; the others wait, not failed.
    assert_eq!(fake.messages().len(), 1);
    let statuses: Vec<&RcptOutcome> = report.recipients.iter().map(|(_, s)| s).collect();
    assert!(
        matches!(statuses[0], RcptOutcome::Delivered { .. }),
        "{report:?}"
    );
    assert!(
        matches!(statuses[1], RcptOutcome::Delivered { .. }),
        "{report:?}"
    );
    for status in &statuses[2..] {
        match status {
            RcptOutcome::Deferred(reason) => {
                assert!(reason.to_string().contains("cannot record"), "{report:?}")
            }
            other => panic!("expected deferred, got {other:?}"),
        }
    }
    // Not the upstream's fault: its breaker stays closed.
    assert!(deliverer.usable().is_ok());
}

#[tokio::test]
async fn recipients_one_upstream_accepted_are_reported_before_the_next_upstream_is_tried() {
    let first = FakeUpstream::builder(Mode::Plain)
        .rcpt_reply_for("r2@example.net", "451 4.3.0 try elsewhere")
        .start()
        .await;
    let second = FakeUpstream::builder(Mode::Plain).start().await;
    let config = config::parsed(&format!(
        "[[upstream]]\nname = \"first\"\nurl = \"smtp://127.0.0.1:{}?tls=none\"\ntimeout = \"5s\"\npriority = 0\n\n\
         [[upstream]]\nname = \"second\"\nurl = \"smtp://127.0.0.1:{}?tls=none\"\ntimeout = \"5s\"\npriority = 1\n",
        first.port(),
        second.port()
    ));
    let transformer = Arc::new(Transformer::new(DkimKeys::load(&config.dkim).unwrap()));
    let deliverer = Deliverer::from_config(&config, transformer).unwrap();
    let reports = Reports::default();
    let report = deliver(&deliverer, message(2), &reports).await;
    assert!(report.all_delivered(), "{report:?}");
    assert_eq!(*reports.seen.lock().unwrap(), vec![vec![0]]);
    assert_eq!(first.messages()[0].rcpts, ["r1@example.net"]);
    assert_eq!(second.messages()[0].rcpts, ["r2@example.net"]);
}
