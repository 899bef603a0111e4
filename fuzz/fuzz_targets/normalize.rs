//! Arbitrary bytes into the acceptance-time normaliser, `smarthost::transform::normalize`.
//!
//! Input layout: byte 0 = flags, the rest = the payload.
//!
//! - bit 0: the client used SMTPUTF8;
//! - bit 1: the envelope sender is null (`MAIL FROM:<>`), else `app@example.com`;
//! - bit 2: the payload is a header value: the message is `From:` payload, `Reply-To:`
//!   payload, `Sender:` payload, a Subject and a body; else the payload is the message;
//! - bit 3: line endings are made CRLF first, as the DATA reader does before the
//!   normaliser runs; else the bytes go in as they are.
//!
//! Nothing may panic. When the message is accepted:
//!
//! 1. it has exactly one From field, and its value is one mailbox in the strict form
//!    (`is_strict_mailbox`); with SMTPUTF8 the address may be UTF-8 instead, but it is
//!    still exactly one mailbox;
//! 2. normalising the result again changes nothing (the output is a fixed point);
//! 3. the only refusal is "no usable address", and only for the null sender;
//! 4. the body as the header-block splitter finds it in the input is the output's tail,
//!    byte for byte: the rewrites never move body text or header fields across.

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use smarthost::message::QueueId;
use smarthost::proto::{Address, ReversePath};
use smarthost::transform::TransformError;
use smarthost::transform::from_rewrite::{is_strict_mailbox, parse_mailboxes};
use smarthost::transform::headers::Parsed;
use smarthost::transform::normalize::{Acceptance, normalize};

/// Bare CR and bare LF become CRLF, as `proto::dot` delivers content.
fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 16);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, payload)) = data.split_first() else {
        return;
    };
    let smtputf8 = flags & 1 != 0;
    let sender = if flags & 2 != 0 {
        ReversePath::Null
    } else {
        ReversePath::Mailbox(Address::parse("app@example.com").unwrap())
    };
    let mut content = if flags & 4 != 0 {
        let mut m = Vec::with_capacity(payload.len() * 3 + 64);
        for name in [&b"From:"[..], b"Reply-To:", b"Sender:"] {
            m.extend_from_slice(name);
            m.extend_from_slice(payload);
            m.extend_from_slice(b"\r\n");
        }
        m.extend_from_slice(b"Subject: fuzz\r\n\r\nbody\r\n");
        m
    } else {
        payload.to_vec()
    };
    if flags & 8 != 0 {
        content = crlf(&content);
    }
    let ctx = Acceptance {
        sender: &sender,
        hostname: "relay.test",
        smtputf8,
        id: QueueId::parse("00000000000000AA").unwrap(),
        now: UNIX_EPOCH + Duration::from_secs(1_795_311_212),
    };
    let out = match normalize(&content, &ctx) {
        Ok(out) => out,
        Err(TransformError::NoAddress) => {
            assert_eq!(sender, ReversePath::Null, "refused with an envelope sender");
            return;
        }
        Err(e) => panic!("unexpected refusal: {e}"),
    };

    let body = Parsed::parse(&content).body;
    assert!(
        out.ends_with(&body),
        "the input's body is not the output's tail"
    );

    let msg = Parsed::parse(&out);
    if body.is_empty() || body.starts_with(b"\r\n") || body.starts_with(b"\n") {
        assert!(msg.body == body, "the body moved");
    } else {
        // The empty line the input missed is inserted before the body.
        assert!(msg.body == [&b"\r\n"[..], &body].concat(), "the body moved");
    }
    let froms: Vec<_> = msg.fields.iter().filter(|f| f.is("From")).collect();
    assert_eq!(
        froms.len(),
        1,
        "not exactly one From in {:?}",
        String::from_utf8_lossy(&out)
    );
    let value = froms[0].unfolded();
    let text = std::str::from_utf8(&value).expect("the From value is UTF-8");
    if !is_strict_mailbox(text) {
        assert!(
            smtputf8 && !text.is_ascii() && parse_mailboxes(text).len() == 1,
            "From is not strict: {text:?}"
        );
    }

    let again = normalize(&out, &ctx).expect("the output is accepted again");
    assert!(
        again == out,
        "not a fixed point:\n{:?}\n--- became ---\n{:?}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&again)
    );
});
