//! The spool across process boundaries, with the real binary: a relay killed with
//! `SIGKILL` in the middle of a load loses no acknowledged message; damaged segment
//! files are cut or quarantined (with a log line) and the undamaged messages still go
//! out; a second relay cannot open a spool that one already holds.
//!
//! Every relay is a `smarthost serve` child ([`support::process::Daemon`]) delivering into a
//! Maildir in a temp directory; it is killed when the test ends, whatever happens.

pub mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use smarthost::message::{Envelope, Message, QueueId};
use smarthost::ops::send::{SendRequest, send};
use smarthost::proto::{Address, ReversePath};
use smarthost::spool::Spool;
use smarthost::spool::codec::{self, Record};
use support::process::{Daemon, smarthost};
use support::{CHILD_GUARD, TestConfig, header, list_maildir};

/// Messages in the load, and how many of them must have been acknowledged before the
/// relay is killed.
const LOAD: usize = 300;
const CLIENTS: usize = 6;
const KILL_AFTER: usize = 100;

fn request(addr: std::net::SocketAddr, subject: String) -> SendRequest {
    SendRequest {
        server: addr.to_string(),
        from: "app@example.com".into(),
        to: vec!["user@example.net".into()],
        subject,
        body: "load test\n".into(),
        raw: None,
        helo: "load.test".into(),
        timeout: Duration::from_secs(5),
    }
}

/// How often each Subject occurs in the Maildir.
fn subjects(maildir: &Path) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for message in list_maildir(maildir) {
        if let Some(subject) = header(&message.text(), "Subject") {
            *seen.entry(subject).or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn every_acknowledged_message_is_delivered_after_sigkill_mid_load() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = tmp.path().join("outbox");
    let config = TestConfig::new(tmp.path()).maildir(&outbox).write();
    let first = Daemon::start(&config, tmp.path());
    let addr = first.addr();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (acked, count, kill_tx) = (acked.clone(), count.clone(), kill_tx.clone());
            runtime.spawn(async move {
                let mut failures = 0;
                for i in 0..LOAD / CLIENTS {
                    let subject = format!("crash-{c}-{i}");
                    match send(&request(addr, subject.clone())).await {
                        Ok(reply) if reply.code == 250 => {
                            acked.lock().unwrap().push(subject);
                            if count.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                                let _ = kill_tx.send(());
                            }
                        }
                        // Refused, reset or unreachable: the relay is gone (or going).
                        _ => {
                            failures += 1;
                            if failures >= 3 {
                                return;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    drop(kill_tx);
    kill_rx.recv_timeout(CHILD_GUARD).unwrap_or_else(|_| {
        panic!(
            "{KILL_AFTER} messages not acknowledged within {CHILD_GUARD:?}\n{}",
            first.log()
        )
    });
    let log = first.kill();
    runtime.block_on(async {
        for client in clients {
            tokio::time::timeout(CHILD_GUARD, client)
                .await
                .expect("a load client hung after the kill")
                .expect("load client panicked");
        }
    });
    drop(runtime);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= KILL_AFTER, "{log}");
    eprintln!(
        "{} of {LOAD} messages acknowledged before SIGKILL; {} delivered by then",
        acked.len(),
        subjects(&outbox).values().sum::<usize>()
    );

    let second = Daemon::start(&config, tmp.path());
    second.wait_until(
        "every acknowledged message delivered after the restart",
        || {
            let seen = subjects(&outbox);
            acked.iter().all(|s| seen.contains_key(s)).then_some(())
        },
    );
    // Whatever was spooled without an acknowledgement goes out too; the queue drains.
    second.wait_until_queue_empty();
    let seen = subjects(&outbox);
    assert!(
        seen.keys().all(|s| s.starts_with("crash-")),
        "unexpected messages: {seen:?}"
    );
    drop(second);
}

/// A message as the relay would spool it, with `Subject: {subject}`.
fn message(subject: &str) -> Message {
    Message {
        id: QueueId::generate(),
        envelope: Envelope {
            sender: ReversePath::Mailbox(Address::parse("app@example.com").unwrap()),
            recipients: vec![Address::parse("user@example.net").unwrap()],
            smtputf8: false,
            eight_bit: false,
            route: None,
        },
        content: format!(
            "From: <app@example.com>\r\nTo: <user@example.net>\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n"
        )
        .into_bytes(),
        body: None,
        received_at: SystemTime::now(),
    }
}

/// Spool `subjects` with the library API (no relay running); returns the ids and the
/// one segment file they are in.
fn write_spool(dir: &Path, subjects: &[&str]) -> (Vec<QueueId>, PathBuf) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ids = runtime.block_on(async {
        let spool = Spool::open(dir).unwrap();
        let mut ids = Vec::new();
        for subject in subjects {
            let m = message(subject);
            spool.put(&m).await.unwrap();
            ids.push(m.id);
        }
        ids
    });
    let segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    (ids, segments[0].clone())
}

/// Where each record starts in a segment.
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let (_, len) = codec::decode(&bytes[pos..]).expect("an intact segment");
        starts.push(pos);
        pos += len;
    }
    starts
}

/// Start the relay on the damaged spool; wait until `delivered` are in the Maildir and
/// the queue is empty. Returns the relay's log and the Subjects delivered.
fn recover_and_deliver(dir: &Path, delivered: &[&str]) -> (String, HashMap<String, usize>) {
    let outbox = dir.join("outbox");
    let config = TestConfig::new(dir).maildir(&outbox).write();
    let relay = Daemon::start(&config, dir);
    relay.wait_until("the undamaged messages delivered", || {
        let seen = subjects(&outbox);
        delivered
            .iter()
            .all(|s| seen.contains_key(*s))
            .then_some(())
    });
    relay.wait_until_queue_empty();
    (relay.kill(), subjects(&outbox))
}

#[test]
fn a_corrupt_record_is_quarantined_a_torn_tail_cut_and_the_rest_delivered() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let (ids, segment) = write_spool(&spool, &["intact-1", "damaged-2", "intact-3"]);
    let mut bytes = std::fs::read(&segment).unwrap();
    let intact_len = bytes.len();
    // A flipped bit inside the second message's content...
    let at = bytes
        .windows(b"body of damaged-2".len())
        .position(|w| w == b"body of damaged-2")
        .unwrap();
    bytes[at] ^= 0x04;
    // ...and half of a record at the end, as a crash in the middle of an append leaves
    // it: the removal of the first message, never acknowledged, must not apply.
    let mut torn = Vec::new();
    codec::encode(&Record::Remove { id: ids[0] }, &mut torn);
    bytes.extend_from_slice(&torn[..torn.len() / 2]);
    std::fs::write(&segment, &bytes).unwrap();

    let (log, seen) = recover_and_deliver(tmp.path(), &["intact-1", "intact-3"]);
    let line = log
        .lines()
        .find(|l| l.contains("corrupt spool record skipped and quarantined"))
        .unwrap_or_else(|| panic!("no quarantine line in the log:\n{log}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(&segment.display().to_string()), "{line}");
    let quarantined: Vec<PathBuf> = std::fs::read_dir(spool.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert!(
        line.contains(&quarantined[0].display().to_string()),
        "the log line names the quarantine file: {line}"
    );
    let region = std::fs::read(&quarantined[0]).unwrap();
    assert!(
        region.windows(11).any(|w| w == b"Subject: da"),
        "the damaged record is what was quarantined"
    );
    assert!(
        log.contains("cut a torn record at the end of a spool segment"),
        "{log}"
    );
    assert_eq!(seen.get("intact-1"), Some(&1), "{seen:?}");
    assert_eq!(seen.get("intact-3"), Some(&1), "{seen:?}");
    assert!(!seen.contains_key("damaged-2"), "{seen:?}");
    // The torn tail is gone from the file (it may have been deleted once delivered).
    if let Ok(now) = std::fs::metadata(&segment) {
        assert!(now.len() as usize <= intact_len);
    }
}

#[test]
fn a_corrupt_length_field_does_not_cut_off_the_records_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let (_, segment) = write_spool(&spool, &["intact-1", "damaged-2", "intact-3"]);
    let mut bytes = std::fs::read(&segment).unwrap();
    let starts = record_starts(&bytes);
    assert_eq!(starts.len(), 3);
    // The second record claims to be far longer than the file: it reads like a torn
    // write, but an intact record follows it, so it cannot be one.
    let len_at = starts[1] + 5;
    let len = u32::from_le_bytes(bytes[len_at..len_at + 4].try_into().unwrap());
    bytes[len_at..len_at + 4].copy_from_slice(&(len + 1_000_000).to_le_bytes());
    std::fs::write(&segment, &bytes).unwrap();

    let (log, seen) = recover_and_deliver(tmp.path(), &["intact-1", "intact-3"]);
    assert!(
        log.contains("corrupt spool record skipped and quarantined"),
        "{log}"
    );
    assert!(!seen.contains_key("damaged-2"), "{seen:?}");
    assert_eq!(
        std::fs::read_dir(spool.join("quarantine")).unwrap().count(),
        1
    );
}

#[test]
fn a_second_relay_on_the_same_spool_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = tmp.path().join("outbox");
    let config = TestConfig::new(tmp.path()).maildir(&outbox).write();
    let file = config.display().to_string();
    let first = Daemon::start(&config, tmp.path());

    let second = smarthost(&["serve", "-c", &file], tmp.path());
    assert_eq!(second.code, Some(1), "{second:?}");
    let lock = tmp.path().join("spool").join("LOCK").display().to_string();
    assert!(
        second.stderr.contains("in use by another smarthost") && second.stderr.contains(&lock),
        "{second:?}"
    );
    assert!(
        !second.stderr.contains("smarthost accepting mail"),
        "{second:?}"
    );

    // The first relay is unaffected.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reply = runtime
        .block_on(send(&request(first.addr(), "still-here".into())))
        .unwrap();
    assert_eq!(reply.code, 250, "{reply}");
    first.wait_until("delivery by the first relay", || {
        subjects(&outbox).contains_key("still-here").then_some(())
    });
}
