//! Faults of the world around the relay, end to end over real sockets: upstreams that
//! stall at each step of the conversation, an upstream that heals, a slow final reply,
//! and a spool on a file system that fills up. The relay runs in-process; the upstreams
//! are scripted fakes (real rustls for the TLS cases).
//!
//! Every wait is bounded. Nothing asserts that something is fast: where a test shows
//! that mail did not sit on its back-off timer, the back-off is configured in minutes
//! and the wait is bounded in seconds.

pub mod fake_upstream;
pub mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fake_upstream::pki::TestCa;
use fake_upstream::{FakeUpstream, Fault, Mode, Received};
use smarthost::spool::Spool;
use support::{HANG_GUARD, Relay, SmtpClient, start_relay, wait_for, wait_for_up_to};
use tokio::net::TcpStream;

/// The upstream timeout in these tests: every stall is noticed after this long.
const TIMEOUT: &str = "2s";

/// An `[[upstream]]` table with the stall timeout [`TIMEOUT`].
fn upstream(name: &str, url: &str, extra: &str) -> String {
    support::config::upstream(name, url, &format!("timeout = \"{TIMEOUT}\"\n{extra}"))
}

/// A plaintext upstream tried after the faulty one.
fn backup(fake: &FakeUpstream) -> String {
    upstream("backup", &fake.plain_url(), "priority = 10")
}

/// A message of about `size` octets whose Subject is `subject`, dot-stuffed, CRLF.
fn message(subject: &str, size: usize) -> Vec<u8> {
    let mut content =
        format!("From: <app@example.com>\r\nTo: <user@example.net>\r\nSubject: {subject}\r\n\r\n")
            .into_bytes();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    while content.len() < size {
        content.extend_from_slice(line);
    }
    content
}

/// Submit one message; the relay's final reply.
async fn submit(relay: &Relay, subject: &str, size: usize) -> support::Reply {
    let mut client = relay.client().await;
    let reply = client
        .send_message(
            "app@example.com",
            &["user@example.net"],
            &message(subject, size),
        )
        .await;
    client.send_line("QUIT").await;
    reply
}

fn subject(m: &Received) -> String {
    let text = String::from_utf8_lossy(&m.content[..m.content.len().min(4096)]).into_owned();
    text.split("\r\n")
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or("")
        .to_owned()
}

/// The ids in the relay's spool, read the way `smarthost queue list` reads it.
fn queued(dir: &Path) -> usize {
    Spool::inspect(dir).expect("read the spool").len()
}

/// A faulty primary upstream for each stall, a healthy backup; `big` for the stall that
/// needs more data than the socket buffers hold.
struct StallCase {
    name: &'static str,
    fault: Fault,
    mode: Mode,
    big: bool,
}

const STALLS: [StallCase; 4] = [
    StallCase {
        name: "silent upstream (no greeting)",
        fault: Fault::Silent,
        mode: Mode::Plain,
        big: false,
    },
    StallCase {
        name: "TLS handshake that stalls (implicit TLS)",
        fault: Fault::Silent,
        mode: Mode::Implicit,
        big: false,
    },
    StallCase {
        name: "TLS handshake that stalls after STARTTLS",
        fault: Fault::StallAfterStartTls,
        mode: Mode::StartTls,
        big: false,
    },
    StallCase {
        name: "upstream that stops reading after 354",
        fault: Fault::StopReadingAfterData,
        mode: Mode::Plain,
        big: true,
    },
];

/// Bigger than what the loopback socket buffers of both ends take in, so the DATA
/// write itself stalls.
const BIG: usize = 20 * 1024 * 1024;

async fn faulty_primary(ca: &TestCa, case: &StallCase) -> (FakeUpstream, String) {
    let builder = FakeUpstream::builder(case.mode).ext("PIPELINING");
    let fake = match case.mode {
        Mode::Plain => builder.start().await,
        _ => builder.cert(&ca.leaf("localhost")).start().await,
    };
    fake.set_fault(Some(case.fault));
    let ca_file = format!("ca_file = {:?}\n", ca.ca_file().display().to_string());
    let url = match case.mode {
        Mode::Plain => fake.plain_url(),
        Mode::Implicit => format!("smtps://localhost:{}", fake.port()),
        Mode::StartTls => format!("smtp://localhost:{}", fake.port()),
    };
    let table = upstream("primary", &url, &ca_file);
    (fake, table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stall_of_an_upstream_fails_over_to_the_next_one_in_queue_mode() {
    let ca = TestCa::generate();
    for case in &STALLS {
        let (primary, primary_table) = faulty_primary(&ca, case).await;
        let spare = FakeUpstream::builder(Mode::Plain).start().await;
        let mut relay = start_relay(&format!(
            "[delivery]\nretry_base = \"5m\"\n{primary_table}{}",
            backup(&spare)
        ))
        .await;
        let size = if case.big { BIG } else { 1000 };
        let reply = submit(&relay, case.name, size).await;
        assert_eq!(reply.code, 250, "{}: {reply}", case.name);

        // Within the timeout the attempt fails and the same delivery walks on; the
        // retry is minutes away, so only failover can bring the message here.
        let got = wait_for(case.name, || async {
            let m = spare.messages();
            (!m.is_empty()).then_some(m)
        })
        .await;
        assert_eq!(got.len(), 1, "{}", case.name);
        assert_eq!(subject(&got[0]), case.name);
        if case.big {
            assert!(got[0].content.len() >= BIG, "{}", case.name);
        }
        assert!(primary.messages().is_empty(), "{}", case.name);
        assert!(primary.connections() >= 1, "{}: never tried", case.name);
        let dir = relay.config().spool.dir.clone();
        wait_for("the queue to drain", || async {
            (queued(&dir) == 0).then_some(())
        })
        .await;
        relay.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_fails_over_in_passthrough_mode_and_the_client_hears_250() {
    let ca = TestCa::generate();
    let (primary, primary_table) = faulty_primary(&ca, &STALLS[3]).await;
    let spare = FakeUpstream::builder(Mode::Plain).start().await;
    let mut relay = start_relay(&format!(
        "[delivery]\nmode = \"passthrough\"\n{primary_table}{}",
        backup(&spare)
    ))
    .await;
    let started = Instant::now();
    let reply = submit(&relay, "passthrough stall", BIG).await;
    assert_eq!(reply.code, 250, "{reply}");
    eprintln!(
        "passthrough: the client had its reply after {:?}",
        started.elapsed()
    );
    let got = spare.messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].content.len() >= BIG);
    assert!(primary.messages().is_empty());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_upstream_that_heals_gets_the_waiting_mail_after_one_probe_without_a_restart() {
    let ca = TestCa::generate();
    debug_logs();
    for case in &STALLS[..1] {
        let (fake, table) = faulty_primary(&ca, case).await;
        // Back-off in minutes: only the breaker's recovery can release the mail soon.
        let mut relay = start_relay(&format!(
            "[delivery]\nretry_base = \"5m\"\nretry_max = \"10m\"\nbreaker_threshold = 2\nbreaker_cooldown = \"2s\"\n{table}max_connections = 4\n"
        ))
        .await;
        for n in 0..4 {
            let reply = submit(&relay, &format!("{} {n}", case.name), 1000).await;
            assert_eq!(reply.code, 250, "{}: {reply}", case.name);
        }
        // Every message has been tried and has failed (or is about to).
        wait_for("four attempts", || async {
            (fake.connections() >= 4).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(fake.messages().is_empty());
        fake.set_fault(None);
        let healed = Instant::now();

        let got = wait_for(case.name, || async {
            let m = fake.messages();
            (m.len() >= 4).then_some(m)
        })
        .await;
        eprintln!(
            "{}: all 4 delivered {:?} after the upstream healed (cool-down 2 s)",
            case.name,
            healed.elapsed()
        );
        let mut subjects: Vec<String> = got.iter().map(subject).collect();
        subjects.sort();
        subjects.dedup();
        assert_eq!(subjects.len(), 4, "{}: {subjects:?}", case.name);
        relay.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_reply_after_60_seconds_is_awaited_and_the_message_goes_out_once() {
    let fake = FakeUpstream::builder(Mode::Plain).start().await;
    const STALL: Duration = Duration::from_secs(60);
    fake.set_fault(Some(Fault::SlowEndOfData(STALL)));
    // `data_timeout` is left at its default (10 minutes); every other wait is 2 s.
    let mut relay = start_relay(&format!(
        "[delivery]\nretry_base = \"1s\"\nretry_max = \"2s\"\n{}",
        upstream("slow", &fake.plain_url(), "")
    ))
    .await;
    let reply = submit(&relay, "slow final reply", 1000).await;
    assert_eq!(reply.code, 250, "{reply}");
    let dir = relay.config().spool.dir.clone();
    wait_for_up_to("the delivery", STALL + HANG_GUARD, || async {
        (queued(&dir) == 0).then_some(())
    })
    .await;
    let data_commands = fake.verbs().iter().filter(|v| *v == "DATA").count();
    assert_eq!(data_commands, 1, "the message was sent again");
    assert_eq!(fake.messages().len(), 1);
    relay.shutdown().await;
}

/// A tmpfs of `size` mounted for the test, unmounted when dropped.
struct SmallDisk {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test mounts a small tmpfs to fill it, which needs root (CI runs as root)"
        );
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = parent.path().join("small");
        std::fs::create_dir(&dir).expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        SmallDisk {
            dir,
            _parent: parent,
        }
    }

    /// Write a file until the file system is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let block = vec![0u8; 64 * 1024];
        loop {
            if let Err(e) = file.write_all(&block) {
                assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
                break;
            }
        }
        // Then the last pages' worth, byte by byte.
        while file.write_all(&[0]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_disk_delivers_nothing_twice_and_refuses_new_mail_with_452() {
    const MESSAGES: usize = 200;
    let disk = SmallDisk::mount("8m");
    let spool = disk.dir.join("spool");
    let fake = FakeUpstream::builder(Mode::Plain)
        .ext("PIPELINING")
        .start()
        .await;
    // Every delivery is under way when the disk fills: the upstream holds its reply.
    fake.set_fault(Some(Fault::SlowEndOfData(Duration::from_secs(4))));
    let mut relay = start_relay(&format!(
        "[spool]\ndir = {:?}\n[delivery]\nretry_base = \"300ms\"\nretry_max = \"1s\"\n{}max_connections = {MESSAGES}\n",
        spool.display().to_string(),
        upstream("fake", &fake.plain_url(), "")
    ))
    .await;

    // Submit from several connections at once, so all are in flight together.
    let mut senders = Vec::new();
    for batch in 0..10 {
        let addr = relay.addr();
        senders.push(tokio::spawn(async move {
            let mut client = SmtpClient::<TcpStream>::connect(addr).await;
            client.greeting().await;
            client.expect("EHLO app.test", 250).await;
            for n in 0..MESSAGES / 10 {
                let subject = format!("m{}", batch * 1000 + n);
                let reply = client
                    .send_message(
                        "app@example.com",
                        &["user@example.net"],
                        &message(&subject, 800),
                    )
                    .await;
                assert_eq!(reply.code, 250, "{reply}");
            }
            client.send_line("QUIT").await;
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    wait_for("every message at the upstream", || async {
        (fake.verbs().iter().filter(|v| *v == "DATA").count() >= MESSAGES).then_some(())
    })
    .await;
    let filler = disk.fill();

    // New mail while the disk is full: one answer, 452 4.3.1.
    let reply = submit(&relay, "while full", 64 * 1024).await;
    assert_eq!(
        (reply.code, reply.enhanced()),
        (452, Some("4.3.1")),
        "{reply}"
    );

    // The upstream accepts everything; much of it cannot be recorded.
    wait_for("the upstream's replies", || async {
        (fake.messages().len() >= MESSAGES).then_some(())
    })
    .await;
    fake.set_fault(None);
    // Several retry intervals with the disk still full: nothing goes out again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let while_full = fake.messages().len();
    let reply = submit(&relay, "still full", 64 * 1024).await;
    assert_eq!(
        (reply.code, reply.enhanced()),
        (452, Some("4.3.1")),
        "{reply}"
    );

    std::fs::remove_file(&filler).expect("free the space");
    wait_for("the queue to drain", || async {
        (queued(&spool) == 0).then_some(())
    })
    .await;
    // A little longer, for any late duplicate.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let got = fake.messages();
    let mut subjects: Vec<String> = got.iter().map(subject).collect();
    subjects.sort();
    let total = subjects.len();
    subjects.dedup();
    assert_eq!(
        (while_full, total, subjects.len()),
        (MESSAGES, MESSAGES, MESSAGES),
        "deliveries while the disk was full, in all, distinct"
    );
    // And new mail is taken again.
    let reply = submit(&relay, "after", 1000).await;
    assert_eq!(reply.code, 250, "{reply}");
    relay.shutdown().await;
}

fn debug_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_test_writer()
        .try_init();
}
