//! Recipient state across a crash between two transactions of one message (issue 21):
//! the real binary (`smarthost serve`, [`daemon::Daemon`]) delivers a message whose
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

mod daemon;
mod fake_upstream;

use std::collections::HashMap;
use std::time::Duration;

use daemon::{CHILD_GUARD, Daemon, smarthost, write_config};
use fake_upstream::{FakeUpstream, Fault, Mode};
use smarthost::ops::send::{SendRequest, send};

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
    let config = write_config(
        tmp.path(),
        &format!(
            "[delivery]\nretry_base = \"1h\"\nretry_max = \"2h\"\n\n\
             [[upstream]]\nname = \"capped\"\nurl = \"smtp://127.0.0.1:{}?tls=none\"\n\
             timeout = \"5s\"\ndata_timeout = \"60s\"\nmax_recipients = 2\n",
            fake.port()
        ),
    );
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
    let file = config.display().to_string();
    second.wait_until("the queue drained", || {
        let run = smarthost(&["queue", "list", "-c", &file], tmp.path());
        assert_eq!(run.code, Some(0), "{run:?}");
        run.stdout.starts_with("0 message(s) queued").then_some(())
    });

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
