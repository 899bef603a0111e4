//! `smarthost queue list|show|retry|delete`: the real binary against the spool of a
//! relay that runs (in-process, holding the spool's lock) and of one that is stopped.
//!
//! The relay's first retry is an hour away, so a message that goes out within the
//! test went out because the operator asked for it.

pub mod fake_upstream;
pub mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fake_upstream::{FakeUpstream, Mode, Received};
use smarthost::message::{Envelope, Message, QueueId};
use smarthost::proto::{Address, ReversePath};
use smarthost::spool::Spool;
use support::process::{Run, smarthost_async};
use support::{HANG_GUARD, Relay, TestConfig, start_relay, wait_for};

const SLOW_RETRIES: &str = "[delivery]\nretry_base = \"1h\"\nretry_max = \"2h\"\n";
const LATER: &str = "451 4.3.0 greylisted, come back later";

/// A fake that refuses each of `addrs` once with [`LATER`], then accepts it.
async fn fake_refusing_once(addrs: &[&str]) -> FakeUpstream {
    let mut builder = FakeUpstream::builder(Mode::Plain);
    for addr in addrs {
        builder = builder.rcpt_replies_then(addr, &[LATER]);
    }
    builder.start().await
}

async fn relay_for(fake: &FakeUpstream) -> Relay {
    start_relay(&format!(
        "{SLOW_RETRIES}[[upstream]]\nname = \"fake\"\nurl = \"smtp://127.0.0.1:{}?tls=none\"\ntimeout = \"5s\"\n",
        fake.port()
    ))
    .await
}

async fn submit(relay: &Relay, to: &str, subject: &str) -> String {
    let mut client = relay.client().await;
    let content = format!("From: <app@example.com>\r\nSubject: {subject}\r\n\r\nbody\r\n");
    let reply = client
        .send_message("app@example.com", &[to], content.as_bytes())
        .await;
    client.expect("QUIT", 221).await;
    reply.queue_id()
}

/// (id, attempts) of every queued message.
fn queued(spool: &Path) -> Vec<(String, u32)> {
    Spool::inspect(spool)
        .expect("read the spool")
        .iter()
        .map(|(id, e)| (id.to_string(), e.state.attempts))
        .collect()
}

/// Wait until every message in the queue has had its first (refused) attempt.
async fn wait_for_first_attempts(spool: &Path, n: usize) {
    wait_for("the first attempts", || async {
        let q = queued(spool);
        (q.len() == n && q.iter().all(|(_, attempts)| *attempts == 1)).then_some(())
    })
    .await;
}

fn subjects(fake: &FakeUpstream) -> Vec<String> {
    fake.messages()
        .iter()
        .map(|m: &Received| {
            m.text()
                .split("\r\n")
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

fn no_bounces(fake: &FakeUpstream) {
    let bounces: Vec<Received> = fake
        .messages()
        .into_iter()
        .filter(|m| m.mail_from.starts_with("<>"))
        .collect();
    assert!(bounces.is_empty(), "unexpected DSN: {bounces:#?}");
}

/// `smarthost queue ARGS -c CONFIG`.
async fn queue(relay: &Relay, args: &[&str]) -> Run {
    let config = relay.config_path().display().to_string();
    let mut all = vec!["queue"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-c", &config]);
    smarthost_async(&all, relay.temp_dir()).await
}

fn assert_ok(run: &Run) {
    assert_eq!(run.code, Some(0), "{run:?}");
}

/// An unusable or unknown id: a clear error and exit code 1, for every command.
async fn assert_bad_ids_refused(relay: &Relay, gone: &str) {
    for args in [
        &["show", "not-an-id"][..],
        &["retry", "12345"],
        &["delete", "zzzzzzzzzzzzzzzz"],
    ] {
        let run = queue(relay, args).await;
        assert_eq!(run.code, Some(1), "{args:?}: {run:?}");
        assert!(
            run.stderr.contains("is not a queue id"),
            "{args:?}: {run:?}"
        );
        assert!(
            run.stderr.contains(args[1]),
            "the error names the input: {run:?}"
        );
    }
    for verb in ["show", "retry", "delete"] {
        let run = queue(relay, &[verb, gone]).await;
        assert_eq!(run.code, Some(1), "{verb} {gone}: {run:?}");
        assert!(
            run.stderr
                .contains(&format!("no message {gone} in the queue")),
            "{verb}: {run:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_while_the_relay_runs() {
    let fake =
        fake_refusing_once(&["one@example.net", "two@example.net", "three@example.net"]).await;
    let mut relay = relay_for(&fake).await;
    let spool = relay.config().spool.dir.clone();
    let one = submit(&relay, "one@example.net", "cli-1").await;
    let two = submit(&relay, "two@example.net", "cli-2").await;
    let three = submit(&relay, "three@example.net", "cli-3").await;
    wait_for_first_attempts(&spool, 3).await;

    // list: one line per message, starting with the id of `queued as ID`.
    let list = queue(&relay, &["list"]).await;
    assert_ok(&list);
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{list:?}");
    for (line, (id, to)) in lines.iter().zip([
        (&one, "one@example.net"),
        (&two, "two@example.net"),
        (&three, "three@example.net"),
    ]) {
        assert!(line.starts_with(&format!("{id}  ")), "{list:?}");
        assert!(line.contains("attempts 1"), "{line}");
        assert!(line.contains(&format!("app@example.com -> {to}")), "{line}");
        assert!(line.contains(LATER), "{line}");
    }
    assert_eq!(lines[3], "3 message(s) queued");

    // show: envelope, state, headers (ids are accepted in lower case too).
    let show = queue(&relay, &["show", &one.to_ascii_lowercase()]).await;
    assert_ok(&show);
    for needle in [
        format!("queue id:    {one}\n"),
        "sender:      app@example.com\n".into(),
        "recipient:   one@example.net (pending)\n".into(),
        "attempts:    1\n".into(),
        "next:        in ".into(),
        format!("last error:  fake: {LATER}\n"),
        "headers:\n".into(),
        "Subject: cli-1\n".into(),
    ] {
        assert!(show.stdout.contains(&needle), "{needle:?} in {show:?}");
    }
    assert!(!show.stdout.contains("body"), "headers only: {show:?}");

    // retry ID: out now rather than in an hour; the others keep waiting.
    let retry = queue(&relay, &["retry", &one]).await;
    assert_ok(&retry);
    assert!(retry.stdout.contains("running relay"), "{retry:?}");
    wait_for("cli-1 delivered on request", || async {
        subjects(&fake).contains(&"cli-1".to_owned()).then_some(())
    })
    .await;
    wait_for("cli-1 out of the queue", || async {
        (!queued(&spool).iter().any(|(id, _)| *id == one)).then_some(())
    })
    .await;

    // delete ID: gone without delivery and without a DSN.
    assert_ok(&queue(&relay, &["delete", &two]).await);
    wait_for("cli-2 deleted", || async {
        (!queued(&spool).iter().any(|(id, _)| *id == two)).then_some(())
    })
    .await;

    // retry --all: what is left goes out.
    let all = queue(&relay, &["retry", "--all"]).await;
    assert_ok(&all);
    wait_for("cli-3 delivered on request", || async {
        subjects(&fake).contains(&"cli-3".to_owned()).then_some(())
    })
    .await;
    wait_for("the queue drained", || async {
        queued(&spool).is_empty().then_some(())
    })
    .await;
    assert_eq!(subjects(&fake), ["cli-1", "cli-3"]);
    no_bounces(&fake);
    assert_eq!(
        queue(&relay, &["list"]).await.stdout,
        "0 message(s) queued\n"
    );

    assert_bad_ids_refused(&relay, &one).await;
    let neither = queue(&relay, &["retry"]).await;
    assert_ne!(neither.code, Some(0), "{neither:?}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_while_the_relay_is_stopped_take_effect_at_the_next_start() {
    let fake = fake_refusing_once(&["one@example.net", "two@example.net"]).await;
    let mut relay = relay_for(&fake).await;
    let spool = relay.config().spool.dir.clone();
    let one = submit(&relay, "one@example.net", "stopped-1").await;
    let two = submit(&relay, "two@example.net", "stopped-2").await;
    wait_for_first_attempts(&spool, 2).await;
    relay.shutdown().await;
    // The in-process relay's last tasks (and with them the spool's lock) end within a
    // second of shutdown(); a stopped `serve` process has released it by exiting.
    wait_for("the stopped relay to release the spool", || async {
        (!Spool::is_locked(&spool)).then_some(())
    })
    .await;

    let list = queue(&relay, &["list"]).await;
    assert_ok(&list);
    assert!(list.stdout.starts_with(&format!("{one}  ")), "{list:?}");
    assert!(list.stdout.contains(&format!("\n{two}  ")), "{list:?}");
    assert!(list.stdout.ends_with("2 message(s) queued\n"), "{list:?}");
    let show = queue(&relay, &["show", &two]).await;
    assert_ok(&show);
    assert!(show.stdout.contains("Subject: stopped-2\n"), "{show:?}");

    for args in [["retry", one.as_str()], ["delete", two.as_str()]] {
        let run = queue(&relay, &args).await;
        assert_ok(&run);
        assert!(
            run.stdout
                .contains("carried out when `smarthost serve` starts"),
            "{run:?}"
        );
    }
    assert_bad_ids_refused(&relay, "00000000000000AB").await;
    assert!(fake.messages().is_empty());

    let restarted = smarthost::start(Arc::new(relay.config().clone()))
        .await
        .expect("the relay restarts on its spool");
    wait_for("the queue emptied by the requests", || async {
        queued(&spool).is_empty().then_some(())
    })
    .await;
    assert_eq!(subjects(&fake), ["stopped-1"], "retried, not deleted");
    no_bounces(&fake);
    tokio::time::timeout(HANG_GUARD, restarted.shutdown())
        .await
        .expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_requested_while_stopped_wins_over_a_message_due_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let outbox = tmp.path().join("outbox");
    let config = TestConfig::new(tmp.path())
        .maildir(&outbox)
        .toml("[server]\nshutdown_grace = \"2s\"\n");
    let config_path = config.write();
    // Two messages due now, left by a relay that stopped before delivering them.
    let (keep, deleted) = {
        let spool = Spool::open(&spool).unwrap();
        let mut ids = Vec::new();
        for subject in ["keep", "drop"] {
            let message = Message {
                id: QueueId::generate(),
                envelope: Envelope {
                    sender: ReversePath::Mailbox(Address::parse("app@example.com").unwrap()),
                    recipients: vec![Address::parse("user@example.net").unwrap()],
                    smtputf8: false,
                    eight_bit: false,
                    route: None,
                },
                content: format!("Subject: {subject}\r\n\r\nbody\r\n").into_bytes(),
                body: None,
                received_at: SystemTime::now(),
            };
            spool.put(&message).await.unwrap();
            ids.push(message.id.to_string());
        }
        (ids[0].clone(), ids[1].clone())
    };
    let file = config_path.display().to_string();
    let run = smarthost_async(&["queue", "delete", &deleted, "-c", &file], tmp.path()).await;
    assert_eq!(run.code, Some(0), "{run:?}");

    let relay = smarthost::start(Arc::new(config.load()))
        .await
        .expect("the relay starts");
    wait_for("the queue drained", || async {
        queued(&spool).is_empty().then_some(())
    })
    .await;
    let delivered = support::list_maildir(&outbox);
    assert_eq!(delivered.len(), 1, "{delivered:#?}");
    assert_eq!(
        support::header(&delivered[0].text(), "Subject").as_deref(),
        Some("keep"),
        "{keep}"
    );
    tokio::time::timeout(HANG_GUARD, relay.shutdown())
        .await
        .expect("shutdown");
}
