//! What every message gets once, at acceptance: a repaired header block (see
//! [`super::headers`]), strict From/Sender/Reply-To (display names cut to
//! [`super::from_rewrite::MAX_NAME_OCTETS`]), a Date and a Message-ID if missing. Runs
//! while the client is still connected, so a message that cannot be repaired is refused
//! with a reason instead of bouncing later.
//!
//! Header values are read through [`bounded_value`]: memory for reading them is bounded,
//! whatever their size, and the rewrite never makes a header much longer than the
//! bounds (a From or Sender of at most a couple of KB).

use std::time::SystemTime;

use super::TransformError;
use super::from_rewrite::{
    Mailbox, ascii_domain, bounded_value, header_address, is_strict_mailbox, parse_mailboxes,
    render,
};
use super::header_rules;
use super::headers::Parsed;
use super::trace::rfc5322_date;
use crate::config::HeaderRule;
use crate::message::QueueId;
use crate::proto::ReversePath;

/// Facts the normalisation needs.
pub struct Acceptance<'a> {
    /// The envelope sender: the From of last resort.
    pub sender: &'a ReversePath,
    /// Our host name (Message-ID, postmaster address).
    pub hostname: &'a str,
    /// The message may carry UTF-8 addresses (SMTPUTF8).
    pub smtputf8: bool,
    /// The queue id (Message-ID).
    pub id: QueueId,
    /// The clock (Date).
    pub now: SystemTime,
}

/// The header's mailboxes, with domains in A-labels unless SMTPUTF8 allows UTF-8. Without
/// SMTPUTF8 a mailbox whose local part is not ASCII is unusable: no upstream could
/// take it (RFC 6531 §3.2); so is one whose A-label form is no valid domain (a label
/// over 63 octets). `value` comes from [`bounded_value`]: decoded, unfolded, bounded.
fn mailboxes(value: &str, smtputf8: bool) -> Vec<Mailbox> {
    parse_mailboxes(value)
        .into_iter()
        .filter_map(|m| {
            let address = header_address(&ascii_domain(&m.address, smtputf8))?;
            (smtputf8 || address.is_ascii()).then_some(Mailbox { address, ..m })
        })
        .collect()
}

/// The envelope sender as a From address, in the strict form.
fn envelope_address(sender: &crate::proto::Address) -> String {
    let text = sender.to_string();
    header_address(&text).unwrap_or(text)
}

/// Apply the acceptance-time rewrites.
pub fn normalize(content: &[u8], ctx: &Acceptance<'_>) -> Result<Vec<u8>, TransformError> {
    let mut out = Vec::with_capacity(content.len());
    normalize_into(content, ctx, &mut out)?;
    Ok(out)
}

/// Apply the acceptance-time rewrites, appending the result to `out` (after the trace
/// header already there): the content is copied once, however large.
pub fn normalize_into(
    content: &[u8],
    ctx: &Acceptance<'_>,
    out: &mut Vec<u8>,
) -> Result<(), TransformError> {
    normalize_with_rules_into(content, ctx, &[], out)
}

/// [`normalize_into`], then the operator's `[[header_rule]]`s on the repaired header
/// block ([`super::header_rules`]): they see the repaired fields and may not touch the
/// ones the repairs own. A message that neither changes stays byte for byte.
pub fn normalize_with_rules_into(
    content: &[u8],
    ctx: &Acceptance<'_>,
    rules: &[HeaderRule],
    out: &mut Vec<u8>,
) -> Result<(), TransformError> {
    let (mut msg, mut changed) = repaired(content, ctx)?;
    changed |= header_rules::apply(&mut msg, rules);
    if changed {
        msg.write_to(out);
    } else {
        out.extend_from_slice(content);
    }
    Ok(())
}

/// `content` split into fields with the repairs applied, and whether anything changed.
fn repaired(content: &[u8], ctx: &Acceptance<'_>) -> Result<(Parsed, bool), TransformError> {
    let mut msg = Parsed::parse(content);
    // A repaired header block (missing empty line, `Name :`, mbox line) is written
    // back even if no field changes: the signature must cover what is sent.
    let mut changed = !msg.repairs.is_empty();

    // From: exactly one field holding exactly one mailbox (RFC 5322 §3.6.2).
    let from_fields: Vec<usize> = (0..msg.fields.len())
        .filter(|i| msg.fields[*i].is("From"))
        .collect();
    match from_fields.first() {
        Some(&first) => {
            // Read once, bounded: a huge display name is neither copied nor parsed.
            let (value, cut) = bounded_value(&msg.fields[first].raw_value);
            let strict = !cut && is_strict_mailbox(&value);
            if !strict || from_fields.len() > 1 {
                let mailbox = match mailboxes(&value, ctx.smtputf8).into_iter().next() {
                    Some(m) => m,
                    None => {
                        let ReversePath::Mailbox(sender) = ctx.sender else {
                            return Err(TransformError::NoAddress);
                        };
                        Mailbox {
                            name: None,
                            address: envelope_address(sender),
                        }
                    }
                };
                msg.set(first, &render(&[mailbox], "From"));
                for extra in from_fields[1..].iter().rev() {
                    msg.fields.remove(*extra);
                }
                changed = true;
            }
        }
        None => {
            let address = match ctx.sender {
                ReversePath::Mailbox(a) => envelope_address(a),
                ReversePath::Null => format!("postmaster@{}", ctx.hostname),
            };
            msg.push(
                "From",
                &render(
                    &[Mailbox {
                        name: None,
                        address,
                    }],
                    "From",
                ),
            );
            changed = true;
        }
    }

    // Sender (one mailbox) and Reply-To (a list) get the same treatment; a field with
    // no usable address is dropped rather than passed on broken.
    for (name, single) in [("Sender", true), ("Reply-To", false)] {
        let found_at: Vec<usize> = (0..msg.fields.len())
            .filter(|i| msg.fields[*i].is(name))
            .collect();
        let Some(&index) = found_at.first() else {
            continue;
        };
        // Each may occur once (RFC 5322 §3.6); as with From, the first one counts.
        for extra in found_at[1..].iter().rev() {
            msg.fields.remove(*extra);
            changed = true;
        }
        let (value, cut) = bounded_value(&msg.fields[index].raw_value);
        if !cut && is_strict_mailbox(&value) {
            continue;
        }
        let mut found = mailboxes(&value, ctx.smtputf8);
        if single {
            found.truncate(1);
        }
        if found.is_empty() {
            msg.fields.remove(index);
        } else {
            msg.set(index, &render(&found, name));
        }
        changed = true;
    }

    if !msg.has("Date") {
        msg.push("Date", &rfc5322_date(ctx.now));
        changed = true;
    }
    if !msg.has("Message-ID") {
        msg.push("Message-ID", &format!("<{}@{}>", ctx.id, ctx.hostname));
        changed = true;
    }
    Ok((msg, changed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Address;

    fn ctx(sender: &ReversePath) -> Acceptance<'_> {
        Acceptance {
            sender,
            hostname: "relay.test",
            smtputf8: false,
            id: QueueId::parse("00000000000000AA").unwrap(),
            now: std::time::UNIX_EPOCH,
        }
    }

    fn sender() -> ReversePath {
        ReversePath::Mailbox(Address::parse("app@example.com").unwrap())
    }

    #[test]
    fn strict_messages_stay_byte_for_byte() {
        let content = b"From: \"re- AI Radio\" <re-ai-radio@reload.com.cn>\r\nDate: Thu, 01 Jan 1970 00:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nbody\r\n";
        assert_eq!(normalize(content, &ctx(&sender())).unwrap(), content);
    }

    #[test]
    fn adds_missing_from_date_and_message_id() {
        let s = sender();
        let out =
            String::from_utf8(normalize(b"Subject: x\r\n\r\nbody\r\n", &ctx(&s)).unwrap()).unwrap();
        assert_eq!(
            out,
            "Subject: x\r\nFrom: <app@example.com>\r\nDate: Thu, 01 Jan 1970 00:00:00 +0000\r\nMessage-ID: <00000000000000AA@relay.test>\r\n\r\nbody\r\n"
        );
        let out = String::from_utf8(
            normalize(b"Subject: x\r\n\r\nb\r\n", &ctx(&ReversePath::Null)).unwrap(),
        )
        .unwrap();
        assert!(out.contains("From: <postmaster@relay.test>\r\n"), "{out}");
    }

    #[test]
    fn repairs_from_and_keeps_one() {
        let s = sender();
        let out = normalize("From: 张三 <zhangsan@qq.com>\r\nFrom: other@x.org\r\nDate: d\r\nMessage-ID: <m@x>\r\n\r\nb\r\n".as_bytes(), &ctx(&s)).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "From: =?UTF-8?B?5byg5LiJ?= <zhangsan@qq.com>\r\nDate: d\r\nMessage-ID: <m@x>\r\n\r\nb\r\n"
        );
    }

    #[test]
    fn an_unusable_from_falls_back_to_the_envelope_or_is_refused() {
        let s = sender();
        let out = normalize(b"From: Undisclosed\r\n\r\nb\r\n", &ctx(&s)).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .starts_with("From: <app@example.com>\r\n")
        );
        let null = ReversePath::Null;
        assert!(matches!(
            normalize(b"From: Undisclosed\r\n\r\nb\r\n", &ctx(&null)),
            Err(TransformError::NoAddress)
        ));
    }

    #[test]
    fn sender_and_reply_to_are_repaired_or_dropped() {
        let s = sender();
        let content = b"From: a@x.org\r\nSender: Dr. No <no@x.org>\r\nReply-To: A <a@x.org>, B. <b@x.org>\r\nDate: d\r\nMessage-ID: <m@x>\r\n\r\nb\r\n";
        let out = String::from_utf8(normalize(content, &ctx(&s)).unwrap()).unwrap();
        assert!(out.contains("Sender: \"Dr. No\" <no@x.org>\r\n"), "{out}");
        assert!(
            out.contains("Reply-To: A <a@x.org>, \"B.\" <b@x.org>\r\n"),
            "{out}"
        );
        let out = String::from_utf8(
            normalize(
                b"From: a@x.org\r\nReply-To: nobody\r\nDate: d\r\nMessage-ID: <m@x>\r\n\r\nb\r\n",
                &ctx(&s),
            )
            .unwrap(),
        )
        .unwrap();
        assert!(!out.contains("Reply-To"), "{out}");
    }

    #[test]
    fn huge_display_names_are_cut_and_the_message_shrinks() {
        use crate::transform::apply_sender_policy;
        use crate::transform::from_rewrite::MAX_NAME_OCTETS;
        let s = sender();
        // 8 MiB names, folded, in each of the three fields (the worst case is 24 MiB
        // in tests/transform_amplify.rs; the cost is the same per octet).
        let name = "Long Name\r\n ".repeat(8 << 20 >> 4);
        let content = format!(
            "From: {name}<big@x.org>\r\nSender: \"{name}\" <s@x.org>\r\nReply-To: {name}(c) <r@x.org>, <r2@x.org>\r\nDate: d\r\nMessage-ID: <m@x>\r\n\r\nb\r\n"
        );
        let out = normalize(content.as_bytes(), &ctx(&s)).unwrap();
        assert!(out.len() < 8 * 1024, "{}", out.len());
        let msg = Parsed::parse(&out);
        for field in ["From", "Sender", "Reply-To"] {
            let value = String::from_utf8(msg.get(field).unwrap().unfolded()).unwrap();
            let read = parse_mailboxes(&value);
            let name = read[0].name.as_deref().unwrap();
            assert!(name.starts_with("Long Name Long Name"), "{field}: {value}");
            assert!(
                name.len() <= MAX_NAME_OCTETS && name.len() > 900,
                "{field}: {value}"
            );
            if field != "Reply-To" {
                assert!(is_strict_mailbox(&value), "{field}: {value}");
            }
        }
        assert_eq!(
            parse_mailboxes(&String::from_utf8(msg.get("Reply-To").unwrap().unfolded()).unwrap())
                .len(),
            2
        );
        assert_eq!(normalize(&out, &ctx(&s)).unwrap(), out, "normalised twice");
        // The sender policy at delivery: From and Reply-To short and strict.
        let delivered = apply_sender_policy(&out, "relay@example.com");
        assert!(delivered.len() < 8 * 1024, "{}", delivered.len());
        // Even on content that was never normalised (spooled before the bound).
        let only_from = format!("From: {name}<big@x.org>\r\n\r\nb\r\n");
        let delivered = apply_sender_policy(only_from.as_bytes(), "relay@example.com");
        assert!(delivered.len() < 8 * 1024, "{}", delivered.len());
        let msg = Parsed::parse(&delivered);
        for field in ["From", "Reply-To"] {
            let value = String::from_utf8(msg.get(field).unwrap().unfolded()).unwrap();
            assert!(is_strict_mailbox(&value), "{field}: {value}");
        }
    }

    #[test]
    fn a_huge_reply_to_list_is_cut_once() {
        let s = sender();
        let list = "Some One <some.one@example.com>, ".repeat(100_000);
        let content = format!(
            "From: a@x.org\r\nReply-To: {list}last@x.org\r\nDate: d\r\nMessage-ID: <m@x>\r\n\r\nb\r\n"
        );
        let out = normalize(content.as_bytes(), &ctx(&s)).unwrap();
        assert!(out.len() < 64 * 1024, "{}", out.len());
        assert_eq!(normalize(&out, &ctx(&s)).unwrap(), out, "normalised twice");
    }

    #[test]
    fn header_rules_run_on_the_repaired_header_block() {
        use crate::config::{HeaderAction, HeaderRule};
        let s = sender();
        let rule = |action, name: &str, value: Option<&str>| HeaderRule {
            action,
            name: name.into(),
            value: value.map(str::to_owned),
        };
        let rules = [
            rule(HeaderAction::Remove, "X-Mailbox-Line", None),
            rule(HeaderAction::Remove, "received", None),
            rule(HeaderAction::Set, "X-Env", Some("prod")),
        ];
        // The mbox line became a field before the rules ran, so a rule removes it; the
        // Date and Message-ID the repairs add are there, the rules' field after them.
        let content = b"From app@example.com Mon Dec  7 10:00:00 2026\r\nReceived: from a by b\r\nFrom: a@x.org\r\nX-Env: dev\r\n\r\nb\r\n";
        let mut out = Vec::new();
        normalize_with_rules_into(content, &ctx(&s), &rules, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "From: a@x.org\r\nX-Env: prod\r\nDate: Thu, 01 Jan 1970 00:00:00 +0000\r\nMessage-ID: <00000000000000AA@relay.test>\r\n\r\nb\r\n"
        );
        // Rules that find nothing to do leave a strict message byte for byte.
        let strict = b"From: <a@x.org>\r\nDate: d\r\nMessage-ID: <m@x>\r\nX-Env: prod\r\n\r\nb\r\n";
        let mut out = Vec::new();
        normalize_with_rules_into(strict, &ctx(&s), &rules, &mut out).unwrap();
        assert_eq!(out, strict);
    }

    #[test]
    fn raw_gbk_names_become_utf8_encoded_words() {
        let s = sender();
        let out = normalize(b"From: \xd5\xc5\xc8\xfd <zhangsan@qq.com>\r\nDate: d\r\nMessage-ID: <m@x>\r\n\r\nb\r\n", &ctx(&s)).unwrap();
        assert!(out.starts_with(b"From: =?UTF-8?B?5byg5LiJ?= <zhangsan@qq.com>\r\n"));
    }
}
