//! DKIM signatures checked by verifiers that are not ours, end to end.
//!
//! The relay runs in-process (see `support::start_relay`) with two `[[dkim]]` keys that
//! it generates on its first start into a temp directory: rsa-sha256 (2048 bits) for
//! `rsa.example` and ed25519-sha256 for `ed.example`. Messages go in over SMTP, and what
//! the upstream receives (the Maildir file without the `Return-Path`/`Delivered-To` lines
//! the Maildir upstream adds, or what a fake SMTP upstream read after DATA) is checked by
//!
//! * dkimpy, through `tests/support/dkim_verify.py`, run with `python3`. The DNS records
//!   are handed to it (its `dnsfunc`); nothing is looked up. Without python3, dkimpy or
//!   PyNaCl the tests fail, saying what to install: they never pass or skip silently.
//! * mail-auth's verifier (`MessageAuthenticator::verify_dkim`), with the records in a
//!   pre-filled TXT cache; its `test` feature answers any other lookup with NXDOMAIN.
//!
//! Every signature must pass both, and a message changed after signing (its body, or a
//! second From added in transit) must fail both: the set-up cannot pass vacuously.

pub mod fake_upstream;
pub mod support;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};
use smarthost::config::DkimConfig;
use smarthost::transform::dkim::DkimKey;
use support::{Delivered, Relay, list_maildir, start_relay};

/// A signing key of the test relay.
#[derive(Clone, Copy, Debug)]
struct Key {
    domain: &'static str,
    selector: &'static str,
    algorithm: &'static str,
}

const RSA: Key = Key {
    domain: "rsa.example",
    selector: "s2048",
    algorithm: "rsa-sha256",
};

const ED25519: Key = Key {
    domain: "ed.example",
    selector: "ed1",
    algorithm: "ed25519-sha256",
};

const KEYS: [Key; 2] = [RSA, ED25519];

/// The `[[dkim]]` tables for both keys, generated on first start into `dir`.
fn dkim_toml(dir: &Path) -> String {
    KEYS.iter()
        .map(|k| {
            format!(
                "[[dkim]]\ndomain = \"{}\"\nselector = \"{}\"\nkey_file = \"{}\"\nalgorithm = \"{}\"\ngenerate = true\n",
                k.domain,
                k.selector,
                dir.join(format!("{}.pem", k.domain)).display(),
                k.algorithm
            )
        })
        .collect()
}

/// The DNS TXT records (name, value) of the configured keys.
fn dns_records(dkim: &[DkimConfig]) -> Vec<(String, String)> {
    assert_eq!(dkim.len(), KEYS.len(), "both keys are configured");
    dkim.iter()
        .map(|cfg| {
            let key = DkimKey::load(cfg).expect("the generated key loads");
            (key.dns_name(), key.dns_value())
        })
        .collect()
}

/// The message as the upstream got it: the Maildir file without the envelope lines the
/// Maildir upstream writes first.
fn as_sent(delivered: &Delivered) -> Vec<u8> {
    let mut rest = &delivered.bytes[..];
    assert!(
        rest.starts_with(b"Return-Path: "),
        "the Maildir file starts with Return-Path: {delivered:?}"
    );
    while rest.starts_with(b"Return-Path: ") || rest.starts_with(b"Delivered-To: ") {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("envelope line ends in CRLF");
        rest = &rest[end + 2..];
    }
    rest.to_vec()
}

/// One SMTP transaction: `MAIL FROM:<mail_from>` + `params`, one recipient, `wire` after
/// DATA (already dot-stuffed and terminated); the message must be accepted.
async fn submit(relay: &Relay, mail_from: &str, params: &str, wire: &[u8]) {
    let mut c = relay.client().await;
    c.expect(&format!("MAIL FROM:<{mail_from}>{params}"), 250)
        .await;
    c.expect("RCPT TO:<user@example.net>", 250).await;
    c.expect("DATA", 354).await;
    c.send(wire).await;
    c.expect_reply_esc(250, "2.0.0").await;
    c.expect("QUIT", 221).await;
}

/// The tag values of the message's `DKIM-Signature` fields (unfolded, white space gone).
fn signatures(message: &[u8]) -> Vec<HashMap<String, String>> {
    let text = String::from_utf8_lossy(message);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", "\t");
    unfolded
        .split("\r\n")
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("DKIM-Signature").then(|| {
                value
                    .split(';')
                    .filter_map(|tag| {
                        let (k, v) = tag.split_once('=')?;
                        let v: String = v.chars().filter(|c| !c.is_whitespace()).collect();
                        Some((k.trim().to_owned(), v))
                    })
                    .collect()
            })
        })
        .collect()
}

/// The one signature of `message` is by `key`, relaxed/relaxed, with From oversigned.
fn assert_signed_by(label: &str, message: &[u8], key: Key) {
    let sigs = signatures(message);
    assert_eq!(
        sigs.len(),
        1,
        "{label}: exactly one DKIM-Signature expected\n{}",
        String::from_utf8_lossy(message)
    );
    let sig = &sigs[0];
    assert_eq!(sig["d"], key.domain, "{label}: d=");
    assert_eq!(sig["s"], key.selector, "{label}: s=");
    assert_eq!(sig["a"], key.algorithm, "{label}: a=");
    assert_eq!(sig["c"], "relaxed/relaxed", "{label}: c=");
    let signed: Vec<String> = sig["h"]
        .split(':')
        .map(|h| h.to_ascii_lowercase())
        .collect();
    assert!(
        signed.iter().filter(|h| *h == "from").count() >= 2,
        "{label}: From is oversigned: h={}",
        sig["h"]
    );
}

/// What dkimpy says about each message: its exit status and its output lines.
fn dkimpy(records: &[(String, String)], messages: &[(String, Vec<u8>)]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let records_file = dir.path().join("records.txt");
    let text: String = records
        .iter()
        .map(|(name, value)| format!("{name}\t{value}\n"))
        .collect();
    std::fs::write(&records_file, text).expect("write records");
    let mut files: Vec<PathBuf> = Vec::new();
    for (i, (_, bytes)) in messages.iter().enumerate() {
        let path = dir.path().join(format!("message-{i}.eml"));
        std::fs::write(&path, bytes).expect("write message");
        files.push(path);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/dkim_verify.py");
    const HINT: &str = "the DKIM interop tests need python3 with dkimpy and PyNaCl; run the project's test script (scripts/test.sh), which installs them (`python3 -m pip install 'dkimpy[ed25519]'`)";
    let output = Command::new("python3")
        .arg(&script)
        .arg(&records_file)
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): {HINT}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let code = output.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "dkim_verify.py failed to run (exit {code}): {stderr}\n{stdout}\n{HINT}"
    );
    // Name the messages by their labels instead of the temp files.
    let mut report = stdout;
    for (path, (label, _)) in files.iter().zip(messages) {
        report = report.replace(&path.display().to_string(), label);
    }
    (code, report)
}

/// Both verifiers pass every message.
async fn assert_verifies(records: &[(String, String)], messages: &[(String, Vec<u8>)]) {
    let (code, report) = dkimpy(records, messages);
    assert_eq!(code, 0, "dkimpy does not verify every signature:\n{report}");
    for (label, _) in messages {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(&format!("PASS {label} "))),
            "dkimpy says nothing about {label}:\n{report}"
        );
    }
    for (label, bytes) in messages {
        let results = mail_auth_results(records, bytes).await;
        assert!(
            !results.is_empty() && results.iter().all(|r| *r == DkimResult::Pass),
            "mail-auth on {label}: {results:?}\n{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// Both verifiers fail every message.
async fn assert_fails(records: &[(String, String)], messages: &[(String, Vec<u8>)]) {
    let (code, report) = dkimpy(records, messages);
    assert_eq!(code, 1, "dkimpy should fail:\n{report}");
    for (label, bytes) in messages {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(&format!("FAIL {label} "))),
            "dkimpy does not fail {label}:\n{report}"
        );
        let results = mail_auth_results(records, bytes).await;
        assert!(
            !results.is_empty() && results.iter().all(|r| *r != DkimResult::Pass),
            "mail-auth passes {label}: {results:?}"
        );
    }
}

/// A TXT cache holding exactly the test records.
struct Records(HashMap<Box<str>, Txt>);

impl ResolverCache<Box<str>, Txt> for Records {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(name).cloned()
    }

    fn remove<Q>(&self, _name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _key: Box<str>, _value: Txt, _valid_until: std::time::Instant) {}
}

/// mail-auth's result for each signature of `message`.
async fn mail_auth_results(records: &[(String, String)], message: &[u8]) -> Vec<DkimResult> {
    let cache = Records(
        records
            .iter()
            .map(|(name, value)| {
                let key = DomainKey::parse(value.as_bytes()).expect("our record parses");
                (
                    format!("{}.", name.to_ascii_lowercase()).into_boxed_str(),
                    Txt::from(key),
                )
            })
            .collect(),
    );
    let authenticator = MessageAuthenticator::new(
        ResolverConfig::from_name_servers(Vec::new()),
        ResolverOpts::default(),
    )
    .expect("resolver without name servers");
    let parsed = AuthenticatedMessage::parse(message).expect("mail-auth parses the message");
    authenticator
        .verify_dkim(Parameters::new(&parsed).with_txt_cache(&cache))
        .await
        .iter()
        .map(|output| output.result().clone())
        .collect()
}

/// A relay with both keys delivering into its Maildir (plus `extra_toml`), and the temp
/// directory holding the keys.
async fn relay_with_keys(extra_toml: &str) -> (Relay, tempfile::TempDir) {
    let keys = tempfile::tempdir().expect("temp dir");
    let relay = start_relay(&format!(
        "{}{extra_toml}",
        dkim_toml(&keys.path().join("keys"))
    ))
    .await;
    (relay, keys)
}

/// Submit `make(key)` from each key's domain, deliver, and return the messages as sent,
/// labelled by algorithm, checking each is signed by its domain's key.
async fn sign_both(
    scenario: &str,
    params: &str,
    make: impl Fn(Key) -> Vec<u8>,
) -> (Vec<(String, String)>, Vec<(String, Vec<u8>)>) {
    let (mut relay, _keys) = relay_with_keys("").await;
    let records = dns_records(&relay.config().dkim);
    for key in KEYS {
        submit(&relay, &format!("app@{}", key.domain), params, &make(key)).await;
    }
    let delivered = relay.finish(KEYS.len()).await;
    let mut messages = Vec::new();
    for key in KEYS {
        let message = delivered
            .iter()
            .map(as_sent)
            .find(|m| {
                signatures(m)
                    .first()
                    .is_some_and(|s| s.get("d").is_some_and(|d| d == key.domain))
            })
            .unwrap_or_else(|| panic!("no message signed for {}: {delivered:#?}", key.domain));
        let label = format!("{scenario}-{}", key.algorithm);
        assert_signed_by(&label, &message, key);
        messages.push((label, message));
    }
    (records, messages)
}

#[tokio::test]
async fn folded_headers_verify() {
    let (records, messages) = sign_both("folded", "", |key| {
        let d = key.domain;
        support::dot_terminated(&format!(
            "From: Folded Sender <news@{d}>\r\n\
             To: Someone Far Away <user@example.net>,\r\n \
             Another Person <other@example.net>\r\n\
             Cc:   spaced@example.net   \r\n\
             Subject: A subject line that is folded\r\n\tover two lines   with  runs   of spaces\r\n\
             Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
             Message-ID: <folded@{d}>\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: text/plain;\r\n charset=\"us-ascii\"\r\n\
             \r\n\
             Body line with trailing spaces   \r\n\
             \tA tab-indented line\r\n\
             .A line that starts with a dot\r\n\
             \r\n\
             \r\n"
        ))
    })
    .await;
    for (label, m) in &messages {
        let text = String::from_utf8_lossy(m);
        assert!(
            text.contains("Subject: A subject line that is folded\r\n\tover two lines"),
            "{label}: the folded header arrives folded\n{text}"
        );
    }
    assert_verifies(&records, &messages).await;
}

#[tokio::test]
async fn eight_bit_utf8_bodies_verify() {
    let (records, messages) = sign_both("8bit", " BODY=8BITMIME", |key| {
        let d = key.domain;
        support::dot_terminated(&format!(
            "From: <shop@{d}>\r\n\
             To: <user@example.net>\r\n\
             Subject: =?UTF-8?B?R3LDvMOfZQ==?=\r\n\
             Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
             Message-ID: <8bit@{d}>\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\
             \r\n\
             Grüße aus Köln — 你好，世界 — 😀\r\n\
             Zeile zwei: äöü ß   \r\n"
        ))
    })
    .await;
    for (label, m) in &messages {
        assert!(
            String::from_utf8_lossy(m).contains("Grüße aus Köln — 你好，世界 — 😀\r\n"),
            "{label}: the 8-bit body arrives as sent"
        );
    }
    assert_verifies(&records, &messages).await;
}

#[tokio::test]
async fn bare_lf_input_verifies() {
    let (records, messages) = sign_both("bare-lf", "", |key| {
        // A legacy app: LF line endings throughout, no Date, no Message-ID; only the
        // final terminator is CRLF . CRLF.
        format!(
            "From: Legacy App <legacy@{}>\nTo: user@example.net\nSubject: bare LF\n folded with LF\n\nline one\n..dotted\nlast line\r\n.\r\n",
            key.domain
        )
        .into_bytes()
    })
    .await;
    for (label, m) in &messages {
        let text = String::from_utf8_lossy(m);
        assert!(
            !text.replace("\r\n", "").contains(['\r', '\n']),
            "{label}: only CRLF line endings"
        );
        assert!(
            text.contains("Subject: bare LF\r\n folded with LF\r\n")
                && text.contains("\r\n\r\nline one\r\n.dotted\r\nlast line\r\n"),
            "{label}: the text arrives with CRLF\n{text}"
        );
    }
    assert_verifies(&records, &messages).await;
}

#[tokio::test]
async fn a_rewritten_sloppy_from_is_what_gets_signed() {
    let (records, messages) = sign_both("sloppy-from", "", |key| {
        support::dot_terminated(&format!(
            "From: 张三 <zhangsan@{}>\r\nTo: user@example.net\r\nSubject: sloppy\r\n\r\nbody\r\n",
            key.domain
        ))
    })
    .await;
    for ((label, m), key) in messages.iter().zip(KEYS) {
        let text = String::from_utf8_lossy(m);
        assert!(
            text.contains(&format!(
                "\r\nFrom: =?UTF-8?B?5byg5LiJ?= <zhangsan@{}>\r\n",
                key.domain
            )),
            "{label}: the From is rewritten before signing\n{text}"
        );
        assert!(
            text.contains("\r\nDate: ") && text.contains("\r\nMessage-ID: <"),
            "{label}: Date and Message-ID are added (and signed)\n{text}"
        );
    }
    assert_verifies(&records, &messages).await;
}

#[tokio::test]
async fn the_upstream_sender_policy_is_signed_for_the_account_domain() {
    let mut all_records = Vec::new();
    let mut messages = Vec::new();
    for key in KEYS {
        let boxes = tempfile::tempdir().expect("temp dir");
        let maildir = boxes.path().join("box");
        let (mut relay, _keys) = relay_with_keys(&format!(
            "[[upstream]]\nname = \"account\"\nurl = \"maildir:{}\"\nsender = \"relay@{}\"\n",
            maildir.display(),
            key.domain
        ))
        .await;
        // Each relay generated keys of its own: keep the record of the one it signs with.
        let selector = format!("{}._domainkey.{}", key.selector, key.domain);
        all_records.extend(
            dns_records(&relay.config().dkim)
                .into_iter()
                .filter(|(name, _)| *name == selector),
        );
        // From a domain without a key: the policy's account makes it signable.
        let content = "From: Shop <orders@shop.test>\r\nTo: user@example.net\r\nSubject: policy\r\n\r\nbody\r\n";
        submit(
            &relay,
            "orders@shop.test",
            "",
            &support::dot_terminated(content),
        )
        .await;
        relay.shutdown().await;
        let delivered = list_maildir(&maildir);
        assert_eq!(delivered.len(), 1, "{delivered:#?}");
        let text = delivered[0].text();
        assert!(
            text.starts_with(&format!("Return-Path: <relay@{}>\r\n", key.domain)),
            "the envelope sender is the account\n{text}"
        );
        let message = as_sent(&delivered[0]);
        let sent = String::from_utf8_lossy(&message).into_owned();
        assert!(
            sent.contains(&format!("\r\nFrom: Shop <relay@{}>\r\n", key.domain))
                && sent.contains("\r\nReply-To: Shop <orders@shop.test>\r\n"),
            "From becomes the account, the original address goes to Reply-To\n{sent}"
        );
        let label = format!("sender-policy-{}", key.algorithm);
        assert_signed_by(&label, &message, key);
        messages.push((label, message));
    }
    assert_verifies(&all_records, &messages).await;
}

#[tokio::test]
async fn changes_after_signing_fail_both_verifiers() {
    let (records, messages) = sign_both("control", "", |key| {
        support::dot_terminated(&format!(
            "From: Control <control@{}>\r\nTo: user@example.net\r\nSubject: control\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <control@x>\r\n\r\nthe body\r\n",
            key.domain
        ))
    })
    .await;
    assert_verifies(&records, &messages).await;

    let mut changed = Vec::new();
    for (label, m) in &messages {
        let mut body = m.clone();
        body.extend_from_slice(b"one more line\r\n");
        changed.push((format!("{label}-body-changed"), body));
        // From is oversigned: a second From added in transit breaks the signature.
        let mut from = b"From: Mallory <mallory@evil.example>\r\n".to_vec();
        from.extend_from_slice(m);
        changed.push((format!("{label}-from-added"), from));
    }
    assert_fails(&records, &changed).await;
}

#[tokio::test]
async fn failover_to_an_upstream_with_another_sender_policy_signs_again() {
    use fake_upstream::{FakeUpstream, Mode, Verb};

    let first = FakeUpstream::builder(Mode::Plain)
        .ext("8BITMIME")
        .reply(Verb::EndOfData, "451 4.3.0 try again later")
        .start()
        .await;
    let second = FakeUpstream::builder(Mode::Plain)
        .ext("8BITMIME")
        .start()
        .await;
    let keys = tempfile::tempdir().expect("temp dir");
    let config = support::TestConfig::new(keys.path()).toml(&format!(
        r#"
[server]
shutdown_grace = "1s"

[delivery]
mode = "passthrough"

[[upstream]]
name = "first"
url = "smtp://localhost:{}?tls=none"
sender = "bounces@{}"
timeout = "5s"

[[upstream]]
name = "second"
url = "smtp://localhost:{}?tls=none"
sender = "relay@{}"
priority = 10
timeout = "5s"

{}"#,
        first.port(),
        RSA.domain,
        second.port(),
        ED25519.domain,
        dkim_toml(&keys.path().join("keys"))
    ));
    let config = Arc::new(config.load());
    let handle = smarthost::start(config.clone())
        .await
        .expect("relay starts");
    let records = dns_records(&config.dkim);
    let addr = handle.local_addrs()[0];
    let mut c = support::SmtpClient::connect(addr).await;
    c.greeting().await;
    c.expect("EHLO client.test", 250).await;
    c.expect("MAIL FROM:<orders@shop.test>", 250).await;
    c.expect("RCPT TO:<user@example.net>", 250).await;
    c.expect("DATA", 354).await;
    c.send(support::dot_terminated(
        "From: Shop <orders@shop.test>\r\nTo: user@example.net\r\nSubject: failover\r\n\r\nbody\r\n",
    ))
    .await;
    c.expect_reply_esc(250, "2.0.0").await;
    c.expect("QUIT", 221).await;
    handle.shutdown().await;

    let refused = first.refused_messages();
    assert_eq!(refused.len(), 1, "the first upstream read the message");
    assert!(
        refused[0]
            .mail_from
            .starts_with(&format!("<bounces@{}>", RSA.domain)),
        "{}",
        refused[0].mail_from
    );
    let delivered = second.messages();
    assert_eq!(delivered.len(), 1, "the second upstream accepted it");
    assert!(
        delivered[0]
            .mail_from
            .starts_with(&format!("<relay@{}>", ED25519.domain)),
        "{}",
        delivered[0].mail_from
    );
    let text = delivered[0].text();
    assert!(
        text.contains(&format!("\r\nFrom: Shop <relay@{}>\r\n", ED25519.domain)),
        "{text}"
    );
    // Each upstream got a copy signed for its own policy, and only that signature.
    assert_signed_by("first-upstream", &refused[0].content, RSA);
    assert_signed_by("second-upstream", &delivered[0].content, ED25519);
    assert_verifies(
        &records,
        &[
            ("first-upstream".into(), refused[0].content.clone()),
            ("second-upstream".into(), delivered[0].content.clone()),
        ],
    )
    .await;
}

/// How dkimpy splits a signed message, with `python3 -c`: the header field names in
/// order, the body, and whether the signature's body hash (`bh=`, relaxed body
/// canonicalisation, SHA-256) is the hash of that whole body and has no `l=` limit.
const DKIMPY_SPLIT: &str = r#"
import base64, hashlib, json, re, sys
try:
    import dkim, dkim.util
    from dkim.canonicalization import Relaxed
except ImportError as missing:
    print(f"MISSING python module {missing.name!r}", file=sys.stderr)
    sys.exit(3)
try:
    headers, body = dkim.rfc822_parse(open(sys.argv[1], "rb").read())
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
    sys.exit(0)
sigs = [v for n, v in headers if n.lower() == b"dkim-signature"]
tags = dkim.util.parse_tag_value(sigs[0]) if sigs else {}
bh = base64.b64encode(hashlib.sha256(Relaxed.canonicalize_body(body)).digest())
print(json.dumps({
    "headers": [n.decode("ascii", "replace") for n, _ in headers],
    "body": base64.b64encode(body).decode("ascii"),
    "bh_matches": re.sub(rb"\s+", b"", tags.get(b"bh", b"")) == bh,
    "has_l": b"l" in tags,
}))
"#;

/// What dkimpy sees in `message`: (header names, body, bh= matches the whole body, l= set),
/// or why it cannot read the message.
fn dkimpy_split(message: &[u8]) -> Result<(Vec<String>, Vec<u8>, bool, bool), String> {
    use base64::Engine as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("message.eml");
    std::fs::write(&path, message).expect("write message");
    let output = Command::new("python3")
        .arg("-c")
        .arg(DKIMPY_SPLIT)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); the DKIM interop tests need python3 with dkimpy (scripts/test.sh installs it)"));
    assert!(
        output.status.success(),
        "dkimpy split failed (exit {:?}): {}; the DKIM interop tests need python3 with dkimpy (scripts/test.sh installs it)",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON from dkimpy");
    if let Some(error) = v["error"].as_str() {
        return Err(error.to_owned());
    }
    let headers = v["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .map(|h| h.as_str().expect("name").to_owned())
        .collect();
    let body = base64::engine::general_purpose::STANDARD
        .decode(v["body"].as_str().expect("body"))
        .expect("base64 body");
    Ok((
        headers,
        body,
        v["bh_matches"].as_bool().expect("bh_matches"),
        v["has_l"].as_bool().expect("has_l"),
    ))
}

/// An odd header block the relay repairs before it signs: the content for the signing
/// domain `d`, the header fields (after ours: DKIM-Signature, Received) and the body
/// that must arrive, and a line the header block must contain.
struct OddHeaderBlock {
    name: &'static str,
    content: fn(&str) -> String,
    headers: &'static [&'static str],
    body: &'static str,
    contains: fn(&str) -> String,
}

const FIVE: &[&str] = &["From", "To", "Subject", "Date", "Message-ID"];

const ODD_HEADER_BLOCKS: &[OddHeaderBlock] = &[
    // Nothing in the header needs a change: before the fix the message went out as it
    // came, its body lines inside the header section, the signature covering no body.
    OddHeaderBlock {
        name: "missing-empty-line",
        content: |d| {
            format!(
                "From: Shop <shop@{d}>\r\nTo: user@example.net\r\nSubject: no empty line\r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <missing-empty-line@{d}>\r\nYour order has shipped.\r\n\r\nThanks: a field-like line in the body\r\n"
            )
        },
        headers: FIVE,
        body: "Your order has shipped.\r\n\r\nThanks: a field-like line in the body\r\n",
        contains: |_| "\r\nMessage-ID: <missing-empty-line@".into(),
    },
    // A line with a valid field name right after the header is still a field; the
    // first line that is not one starts the body.
    OddHeaderBlock {
        name: "field-like-first-body-line",
        content: |d| {
            format!(
                "From: Shop <shop@{d}>\r\nTo: user@example.net\r\nSubject: field-like\r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <field-like-first-body-line@{d}>\r\nNote: a valid field name\r\nOrder number: 42\r\nTotal: 10 EUR\r\n"
            )
        },
        headers: &["From", "To", "Subject", "Date", "Message-ID", "Note"],
        body: "Order number: 42\r\nTotal: 10 EUR\r\n",
        contains: |_| "\r\nNote: a valid field name\r\n\r\nOrder number: 42\r\n".into(),
    },
    OddHeaderBlock {
        name: "space-before-colon",
        content: |d| {
            format!(
                "From: Shop <shop@{d}>\r\nSubject : hello\r\nTo: user@example.net\r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <space-before-colon@{d}>\r\n\r\nbody\r\n"
            )
        },
        headers: &["From", "Subject", "To", "Date", "Message-ID"],
        body: "body\r\n",
        contains: |_| "\r\nSubject: hello\r\nTo: user@example.net\r\n".into(),
    },
    OddHeaderBlock {
        name: "mbox-from-line",
        content: |d| {
            format!(
                "From sender@{d} Mon Dec  7 10:00:00 2026\r\nFrom: Shop <shop@{d}>\r\nTo: user@example.net\r\nSubject: mbox\r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <mbox-from-line@{d}>\r\n\r\nbody\r\n"
            )
        },
        headers: &[
            "X-Mailbox-Line",
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
        ],
        body: "body\r\n",
        contains: |d| format!("\r\nX-Mailbox-Line: sender@{d} Mon Dec  7 10:00:00 2026\r\n"),
    },
    OddHeaderBlock {
        name: "mailboxes-without-comma",
        content: |d| {
            format!(
                "From: A <a@{d}> B <b@example.org>\r\nTo: user@example.net\r\nSubject: no comma\r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <mailboxes-without-comma@{d}>\r\n\r\nbody\r\n"
            )
        },
        headers: FIVE,
        body: "body\r\n",
        contains: |d| format!("\r\nFrom: A <a@{d}>\r\n"),
    },
];

#[tokio::test]
async fn odd_header_blocks_are_repaired_and_the_signature_covers_the_whole_body() {
    let (mut relay, _keys) = relay_with_keys("").await;
    let records = dns_records(&relay.config().dkim);
    for key in KEYS {
        for case in ODD_HEADER_BLOCKS {
            let content = (case.content)(key.domain);
            submit(
                &relay,
                &format!("app@{}", key.domain),
                "",
                &support::dot_terminated(&content),
            )
            .await;
        }
    }
    let delivered: Vec<Vec<u8>> = relay
        .finish(KEYS.len() * ODD_HEADER_BLOCKS.len())
        .await
        .iter()
        .map(as_sent)
        .collect();
    let mut messages = Vec::new();
    for key in KEYS {
        for case in ODD_HEADER_BLOCKS {
            let id = format!("<{}@{}>", case.name, key.domain);
            let message = delivered
                .iter()
                .find(|m| String::from_utf8_lossy(m).contains(&id))
                .unwrap_or_else(|| panic!("no message {id} delivered"))
                .clone();
            let label = format!("{}-{}", case.name, key.algorithm);
            let text = String::from_utf8_lossy(&message).into_owned();
            assert_signed_by(&label, &message, key);
            assert!(
                text.contains(&(case.contains)(key.domain)),
                "{label}: expected {:?} in\n{text}",
                (case.contains)(key.domain)
            );
            let (headers, body, bh_matches, has_l) = dkimpy_split(&message)
                .unwrap_or_else(|e| panic!("{label}: dkimpy cannot read the message: {e}\n{text}"));
            let theirs: Vec<&str> = headers
                .iter()
                .map(String::as_str)
                .filter(|h| {
                    !h.eq_ignore_ascii_case("DKIM-Signature") && !h.eq_ignore_ascii_case("Received")
                })
                .collect();
            assert_eq!(theirs, case.headers, "{label}: header fields\n{text}");
            assert_eq!(
                String::from_utf8_lossy(&body),
                case.body,
                "{label}: body as dkimpy reads it\n{text}"
            );
            assert!(
                bh_matches && !has_l,
                "{label}: bh= is not the hash of the whole body (l= set: {has_l})\n{text}"
            );
            messages.push((label, message));
        }
    }
    assert_verifies(&records, &messages).await;
}

/// An upstream without 8BITMIME gets 8-bit body parts converted (quoted-printable for
/// text, base64 otherwise) before signing: both verifiers accept the signature, and the
/// text decodes to what the app sent.
#[tokio::test]
async fn eight_bit_parts_converted_for_a_7bit_upstream_verify() {
    use fake_upstream::{FakeUpstream, Mode};
    let seven_bit = FakeUpstream::builder(Mode::Plain).start().await;
    let (mut relay, _keys) = relay_with_keys(&format!(
        "[[upstream]]\nname = \"seven-bit\"\nurl = \"smtp://127.0.0.1:{}?tls=none\"\ntimeout = \"5s\"\n",
        seven_bit.port()
    ))
    .await;
    let records = dns_records(&relay.config().dkim);
    let text = "Grüße aus Köln — 你好，世界 — 😀\r\nZeile zwei: äöü ß   \r\n";
    for key in KEYS {
        let d = key.domain;
        submit(
            &relay,
            &format!("app@{d}"),
            " BODY=8BITMIME",
            &support::dot_terminated(&format!(
                "From: <shop@{d}>\r\nTo: <user@example.net>\r\nSubject: =?UTF-8?B?R3LDvMOfZQ==?=\r\n\
                 Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <7bit@{d}>\r\nMIME-Version: 1.0\r\n\
                 Content-Type: multipart/mixed; boundary=\"part\"\r\n\r\n\
                 --part\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
                 {text}--part\r\nContent-Type: application/octet-stream\r\n\r\nbinär\r\n--part--\r\n"
            )),
        )
        .await;
    }
    support::wait_for("every message delivered", || async {
        (seven_bit.messages().len() >= KEYS.len()).then_some(())
    })
    .await;
    relay.shutdown().await;
    let mut messages = Vec::new();
    for m in seven_bit.messages() {
        assert!(m.content.is_ascii(), "7-bit on the wire:\n{}", m.text());
        assert!(
            !m.mail_from.contains("BODY=8BITMIME"),
            "no BODY=8BITMIME to an upstream without it: {}",
            m.mail_from
        );
        let sent = m.text();
        let qp = sent
            .split("Content-Transfer-Encoding: quoted-printable\r\n\r\n")
            .nth(1)
            .and_then(|rest| rest.split("--part").next())
            .unwrap_or_else(|| panic!("no quoted-printable text part:\n{sent}"));
        let decoded =
            quoted_printable::decode(qp, quoted_printable::ParseMode::Strict).expect("valid QP");
        assert_eq!(String::from_utf8(decoded).unwrap(), text);
        assert!(
            sent.contains("Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nYmluw6Ry\r\n"),
            "{sent}"
        );
        let key = KEYS
            .into_iter()
            .find(|k| sent.contains(&format!("From: <shop@{}>", k.domain)))
            .unwrap();
        assert_signed_by(&format!("7bit-{}", key.algorithm), &m.content, key);
        messages.push((format!("7bit-{}", key.algorithm), m.content.clone()));
    }
    assert_verifies(&records, &messages).await;
}

/// The large-message path (issue 12): an 8 MiB message goes to an SMTP upstream with
/// its content written a piece at a time. It arrives byte for byte (lines that start
/// with a dot, long lines and line ends that fall on the piece boundaries included),
/// and the signature made over the whole of it verifies with dkimpy.
#[tokio::test]
async fn a_large_message_arrives_byte_for_byte_and_verifies() {
    use fake_upstream::{FakeUpstream, Mode};

    let upstream = FakeUpstream::builder(Mode::Plain)
        .ext("PIPELINING")
        .ext("SIZE 52428800")
        .start()
        .await;
    let (relay, _keys) = relay_with_keys(&format!(
        "[server]\nmax_message_size = 52428800\n\n[[upstream]]\nname = \"big\"\nurl = \"{}\"\ntimeout = \"10s\"\n",
        upstream.plain_url()
    ))
    .await;
    let records = dns_records(&relay.config().dkim);

    let mut body = String::new();
    let mut line = 0usize;
    while body.len() < 8 * 1024 * 1024 {
        match line % 7 {
            0 => body.push_str(".a line that starts with a dot\r\n"),
            1 => body.push_str(&"x".repeat(990)),
            2 => body.push_str("..two dots\r\n"),
            _ => body.push_str(&format!("line {line} of the large message\r\n")),
        }
        if line % 7 == 1 {
            body.push_str("\r\n");
        }
        line += 1;
    }
    let content = format!(
        "From: Shop <orders@{}>\r\nTo: user@example.net\r\nSubject: large\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <large@shop.test>\r\n\r\n{body}",
        RSA.domain
    );
    submit(
        &relay,
        &format!("orders@{}", RSA.domain),
        "",
        &support::dot_terminated(&content),
    )
    .await;

    let delivered = support::wait_for("the large message delivered", || async {
        upstream.messages().into_iter().next()
    })
    .await;
    let sent = &delivered.content;
    let at = sent
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block")
        + 4;
    assert!(
        sent[at..] == *body.as_bytes(),
        "the body changed on the way ({} octets sent, {} received)",
        body.len(),
        sent.len() - at
    );
    assert_signed_by("large", sent, RSA);
    assert_verifies(&records, &[("large".into(), sent.clone())]).await;
}

/// The header fields of `message` (as sent) called `name`, unfolded, values trimmed.
fn fields(message: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(message);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", "\t");
    unfolded
        .split("\r\n")
        .filter_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
        .collect()
}

/// `[[header_rule]]`s change the client's header block before the message is spooled,
/// so before signing: the delivered message lacks the removed fields (the client's
/// internal `Received` hop too, but not ours, which is added after the rules), has
/// exactly one field that was set and the added one, and its signature verifies with
/// dkimpy and mail-auth.
#[tokio::test]
async fn header_rules_apply_before_signing_and_the_signature_verifies() {
    let rules = "[[header_rule]]\naction = \"remove\"\nname = \"X-Mailer\"\n\
                 [[header_rule]]\naction = \"remove\"\nname = \"Received\"\n\
                 [[header_rule]]\naction = \"set\"\nname = \"X-Env\"\nvalue = \"prod\"\n\
                 [[header_rule]]\naction = \"add\"\nname = \"X-Added\"\nvalue = \"1\"\n";
    let (mut relay, _keys) = relay_with_keys(rules).await;
    let records = dns_records(&relay.config().dkim);
    for key in KEYS {
        let d = key.domain;
        submit(
            &relay,
            &format!("app@{d}"),
            "",
            &support::dot_terminated(&format!(
                "Received: from worker-7.internal.example (10.9.8.7)\r\n\tby app-gateway.internal.example; Thu, 01 Jan 2026 00:00:00 +0000\r\n\
                 From: Shop <shop@{d}>\r\n\
                 To: user@example.net\r\n\
                 Subject: header rules\r\n\
                 Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
                 Message-ID: <rules@{d}>\r\n\
                 X-Mailer: PHPMailer 6.9.1 (https://github.com/PHPMailer/PHPMailer)\r\n\
                 X-Env: dev\r\n\
                 x-mailer: a second one\r\n\
                 X-ENV: staging\r\n\
                 X-Keep: kept\r\n\
                 \r\n\
                 X-Mailer: a body line, not a field\r\n"
            )),
        )
        .await;
    }
    let delivered = relay.finish(KEYS.len()).await;
    let mut messages = Vec::new();
    for key in KEYS {
        let message = delivered
            .iter()
            .map(as_sent)
            .find(|m| String::from_utf8_lossy(m).contains(&format!("<rules@{}>", key.domain)))
            .unwrap_or_else(|| panic!("no message for {}: {delivered:#?}", key.domain));
        let label = format!("rules-{}", key.algorithm);
        let text = String::from_utf8_lossy(&message).into_owned();
        assert!(fields(&message, "X-Mailer").is_empty(), "{label}\n{text}");
        assert_eq!(fields(&message, "X-Env"), ["prod"], "{label}\n{text}");
        assert_eq!(fields(&message, "X-Added"), ["1"], "{label}\n{text}");
        assert_eq!(fields(&message, "X-Keep"), ["kept"], "{label}\n{text}");
        let received = fields(&message, "Received");
        assert_eq!(received.len(), 1, "{label}: only our Received\n{text}");
        assert!(
            received[0].starts_with("from client.test ([127.0.0.1])")
                && received[0].contains(&format!("by {} (smarthost)", support::HOSTNAME)),
            "{label}: {received:?}"
        );
        assert!(!text.contains("internal.example"), "{label}\n{text}");
        assert!(
            text.ends_with("\r\n\r\nX-Mailer: a body line, not a field\r\n"),
            "{label}: the body is untouched\n{text}"
        );
        assert_signed_by(&label, &message, key);
        messages.push((label, message));
    }
    assert_verifies(&records, &messages).await;
}
