//! A rewrite never makes a message bigger than `server.max_message_size` allows (issue
//! 9, item 7): over real sockets, a 24 MiB display name is accepted and delivered
//! through an upstream with the `sender` policy as a short, strict From and Reply-To,
//! and a message that outgrows the limit when its headers are repaired is refused with
//! `552 5.3.4` at DATA, nothing kept.
//!
//! Big inputs are generated here; no 24 MiB file is in the repository. Memory is not
//! asserted (see docs/transformation.md#size-limits-long-display-names for the
//! measurement).

pub mod support;

use std::path::Path;
use std::time::Duration;

use smarthost::transform::from_rewrite::{MAX_NAME_OCTETS, is_strict_mailbox, parse_mailboxes};
use smarthost::transform::headers::Parsed;
use support::{Delivered, HANG_GUARD, list_maildir, start_relay};

/// `max_message_size` for the big message: 32 MiB.
const LIMIT: usize = 32 << 20;

/// A From display name of `size` octets, folded into lines of about 900 octets.
fn huge_name(size: usize) -> Vec<u8> {
    let mut name = Vec::with_capacity(size + size / 900 * 3 + 16);
    let mut line = 0;
    while name.len() < size {
        name.extend_from_slice(b"Big Name ");
        line += 9;
        if line >= 900 {
            name.extend_from_slice(b"\r\n ");
            line = 0;
        }
    }
    name
}

/// Wait for `n` messages in the Maildir at `dir`, for at most `bound`.
async fn wait_for(dir: &Path, n: usize, bound: Duration) -> Vec<Delivered> {
    support::wait_for_up_to(
        &format!("{n} message(s) in {}", dir.display()),
        bound,
        || async {
            let got = list_maildir(dir);
            (got.len() >= n).then_some(got)
        },
    )
    .await
}

/// The unfolded value of the first field `name`.
fn field(msg: &Parsed, name: &str) -> String {
    let field = msg
        .get(name)
        .unwrap_or_else(|| panic!("no {name} field delivered"));
    String::from_utf8(field.unfolded()).expect("delivered headers are ASCII")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_24_mib_display_name_goes_out_short_and_strict_through_the_sender_policy() {
    let outbox = tempfile::tempdir().unwrap();
    let mut relay = start_relay(&format!(
        "[server]\nmax_message_size = {LIMIT}\n\n[[upstream]]\nname = \"account\"\nurl = \"maildir:{}\"\nsender = \"relay@example.com\"\n",
        outbox.path().display()
    ))
    .await;
    let mut content = b"From: ".to_vec();
    content.extend_from_slice(&huge_name(24 << 20));
    content.extend_from_slice(
        b"<app@example.com>\r\nTo: rcpt@example.net\r\nSubject: a big name\r\n\r\nThe body.\r\n",
    );
    assert!(content.len() > 24 << 20 && content.len() < LIMIT);

    let mut client = relay.client().await;
    let reply = client
        .send_message("app@example.com", &["rcpt@example.net"], &content)
        .await;
    assert_eq!(reply.code, 250, "{}", reply.text());
    drop(content);

    // Parsing and repairing 24 MiB in a debug build takes seconds: four hang guards.
    let delivered = wait_for(outbox.path(), 1, HANG_GUARD.saturating_mul(4)).await;
    let bytes = &delivered[0].bytes;
    assert!(
        bytes.len() < 16 * 1024,
        "delivered {} octets (limit {LIMIT})",
        bytes.len()
    );
    assert!(bytes.ends_with(b"\r\n\r\nThe body.\r\n"));
    let msg = Parsed::parse(bytes);
    for (name, address) in [
        ("From", "relay@example.com"),
        ("Reply-To", "app@example.com"),
    ] {
        let value = field(&msg, name);
        assert!(is_strict_mailbox(&value), "{name}: {value}");
        let read = parse_mailboxes(&value);
        assert_eq!(read.len(), 1, "{name}: {value}");
        assert_eq!(read[0].address, address, "{name}: {value}");
        let display = read[0].name.as_deref().unwrap_or_default();
        assert!(
            display.starts_with("Big Name Big Name") && display.len() <= MAX_NAME_OCTETS,
            "{name}: {value}"
        );
        for line in msg
            .get(name)
            .unwrap()
            .raw_value
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            assert!(line.len() <= 80, "{name}: a line of {} octets", line.len());
        }
    }
    relay.shutdown().await;
}

#[tokio::test]
async fn a_message_that_outgrows_the_limit_when_repaired_is_refused_with_552() {
    let outbox = tempfile::tempdir().unwrap();
    let mut relay = start_relay(&format!(
        "[server]\nmax_message_size = 1024\n\n[[upstream]]\nname = \"account\"\nurl = \"maildir:{}\"\nsender = \"relay@example.com\"\n",
        outbox.path().display()
    ))
    .await;
    // 1,000 octets as sent, within the limit; the Date and Message-ID the relay adds
    // take it over.
    let head = "From: <app@example.com>\r\nTo: rcpt@example.net\r\nSubject: near the limit\r\n\r\n";
    let mut content = head.to_owned();
    while content.len() < 1000 - 12 {
        content.push_str("0123456789\r\n");
    }
    while content.len() < 998 {
        content.push('x');
    }
    content.push_str("\r\n");
    assert_eq!(content.len(), 1000);

    let mut client = relay.client().await;
    let reply = client
        .send_message("app@example.com", &["rcpt@example.net"], content.as_bytes())
        .await;
    assert_eq!(reply.code, 552, "{}", reply.text());
    assert_eq!(reply.enhanced(), Some("5.3.4"), "{}", reply.text());
    assert!(
        reply
            .text()
            .contains("exceed the limit of 1024; nothing was kept"),
        "{}",
        reply.text()
    );

    // The session goes on; a message with its own Date and Message-ID is taken.
    let fitting = format!(
        "From: <app@example.com>\r\nTo: rcpt@example.net\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <n@x>\r\n\r\n{}",
        "0123456789\r\n".repeat(60)
    );
    assert!(fitting.len() <= 1024);
    let reply = client
        .send_message("app@example.com", &["rcpt@example.net"], fitting.as_bytes())
        .await;
    assert_eq!(reply.code, 250, "{}", reply.text());
    let delivered = wait_for(outbox.path(), 1, HANG_GUARD).await;
    relay.shutdown().await;
    assert_eq!(list_maildir(outbox.path()).len(), 1, "{delivered:?}");
}
