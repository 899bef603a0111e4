//! Golden tests for the acceptance-time normaliser: `tests/data/transform/NN-scenario.*`.
//!
//! For every `NN-scenario.in.eml` (the content as the DATA reader hands it over: CRLF
//! line endings, any bytes) the runner calls `smarthost::transform::normalize::normalize`
//! with a fixed clock, queue id and host name, and compares the result with
//!
//! * `NN-scenario.out.eml`: the expected content, byte for byte, or
//! * `NN-scenario.refused`: the message is refused; the file holds the error's text (the
//!   session answers it with `550 5.6.0`, see `tests/data/dialogs/20-unusable-from.txt`).
//!
//! An optional `NN-scenario.env` sets the envelope, one `key=value` a line:
//! `sender=<>` (the null sender) or `sender=addr@domain` (default `app@example.com`), and
//! `smtputf8=true|false` (default false).
//!
//! Every expected output must itself be normalised already: running the normaliser on it
//! again changes nothing, and its From is one mailbox in the strict form.
//!
//! To write missing or changed `.out.eml` files after a deliberate change, run with
//! `BLESS=1` and review the diff: a blessed file is only as right as its review.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use smarthost::message::QueueId;
use smarthost::proto::{Address, ReversePath};
use smarthost::transform::from_rewrite::is_strict_mailbox;
use smarthost::transform::headers::Parsed;
use smarthost::transform::normalize::{Acceptance, normalize};

/// `Sun, 22 Nov 2026 01:33:32 +0000`
const NOW_SECS: u64 = 1_795_311_212;
const HOSTNAME: &str = "relay.test";
const QUEUE_ID: &str = "00000000000000AA";

struct Case {
    name: String,
    input: Vec<u8>,
    sender: ReversePath,
    smtputf8: bool,
    expected: Expected,
}

enum Expected {
    Content(Vec<u8>),
    Refused(String),
    Missing,
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/transform")
}

fn load_cases() -> Vec<Case> {
    let dir = data_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/data/transform exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let known = |n: &str| {
        [".in.eml", ".out.eml", ".refused", ".env"]
            .iter()
            .any(|suffix| n.ends_with(suffix))
            || n == ".gitattributes"
    };
    let stray: Vec<&String> = names.iter().filter(|n| !known(n)).collect();
    assert!(stray.is_empty(), "unexpected files in {dir:?}: {stray:?}");
    let mut cases = Vec::new();
    for file in &names {
        let Some(name) = file.strip_suffix(".in.eml") else {
            let base = file
                .strip_suffix(".out.eml")
                .or_else(|| file.strip_suffix(".refused"))
                .or_else(|| file.strip_suffix(".env"));
            if let Some(base) = base {
                assert!(
                    names.contains(&format!("{base}.in.eml")),
                    "{file} has no {base}.in.eml"
                );
            }
            continue;
        };
        assert!(
            name.len() > 3 && name.as_bytes()[..2].iter().all(u8::is_ascii_digit),
            "{file}: name it NN-scenario.in.eml"
        );
        let read = |suffix: &str| std::fs::read(dir.join(format!("{name}{suffix}"))).ok();
        let (mut sender, mut smtputf8) = (
            ReversePath::Mailbox(Address::parse("app@example.com").unwrap()),
            false,
        );
        if let Some(env) = read(".env") {
            for line in String::from_utf8(env).expect("env is UTF-8").lines() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                match line.split_once('=') {
                    Some(("sender", "<>")) => sender = ReversePath::Null,
                    Some(("sender", addr)) => {
                        sender = ReversePath::Mailbox(
                            Address::parse(addr)
                                .unwrap_or_else(|e| panic!("{name}.env: sender {addr:?}: {e}")),
                        )
                    }
                    Some(("smtputf8", v)) => {
                        smtputf8 = v.parse().unwrap_or_else(|_| {
                            panic!("{name}.env: smtputf8 is true or false, not {v:?}")
                        })
                    }
                    _ => panic!("{name}.env: unknown line {line:?}"),
                }
            }
        }
        let expected = match (read(".out.eml"), read(".refused")) {
            (Some(_), Some(_)) => panic!("{name}: both .out.eml and .refused"),
            (Some(out), None) => Expected::Content(out),
            (None, Some(reason)) => Expected::Refused(
                String::from_utf8(reason)
                    .expect("refused is UTF-8")
                    .trim()
                    .to_owned(),
            ),
            (None, None) => Expected::Missing,
        };
        cases.push(Case {
            name: name.to_owned(),
            input: read(".in.eml").unwrap(),
            sender,
            smtputf8,
            expected,
        });
    }
    cases
}

fn run(input: &[u8], sender: &ReversePath, smtputf8: bool) -> Result<Vec<u8>, String> {
    let ctx = Acceptance {
        sender,
        hostname: HOSTNAME,
        smtputf8,
        id: QueueId::parse(QUEUE_ID).unwrap(),
        now: UNIX_EPOCH + Duration::from_secs(NOW_SECS),
    };
    normalize(input, &ctx).map_err(|e| e.to_string())
}

/// Bytes as text with CR and LF visible, for failure messages.
fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace('\r', "\\r")
        .replace('\n', "\\n\n")
}

/// The normalised message must be a fixed point with exactly one strict From.
fn check_normalised(name: &str, out: &[u8], sender: &ReversePath, smtputf8: bool) {
    let again =
        run(out, sender, smtputf8).unwrap_or_else(|e| panic!("{name}: output refused: {e}"));
    assert!(
        again == out,
        "{name}: normalising the output again changes it:\n{}\n--- became ---\n{}",
        show(out),
        show(&again)
    );
    let msg = Parsed::parse(out);
    let froms: Vec<_> = msg.fields.iter().filter(|f| f.is("From")).collect();
    assert_eq!(froms.len(), 1, "{name}: one From field\n{}", show(out));
    let value = String::from_utf8(froms[0].unfolded()).expect("From is UTF-8");
    assert!(
        is_strict_mailbox(&value) || (smtputf8 && !value.is_ascii()),
        "{name}: From is not strict: {value:?}"
    );
    for field in msg
        .fields
        .iter()
        .filter(|f| f.is("From") || f.is("Sender") || f.is("Reply-To"))
    {
        let text = format!(
            "{}:{}",
            field.name,
            String::from_utf8_lossy(&field.raw_value)
        );
        for line in text.split("\r\n") {
            assert!(
                line.len() <= 78,
                "{name}: line over 78 characters: {line:?}"
            );
        }
    }
    for line in out.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            !line.contains(&b'\r'),
            "{name}: bare CR in {:?}",
            show(line)
        );
    }
}

#[test]
fn normaliser_matches_the_golden_files() {
    let cases = load_cases();
    assert!(cases.len() >= 30, "only {} cases found", cases.len());
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let got = run(&case.input, &case.sender, case.smtputf8);
        match (&case.expected, &got) {
            (Expected::Content(want), Ok(out)) if want == out => {
                check_normalised(&case.name, out, &case.sender, case.smtputf8);
            }
            (Expected::Refused(want), Err(reason)) if want == reason => {}
            (Expected::Missing | Expected::Content(_), Ok(out)) if bless => {
                std::fs::write(data_dir().join(format!("{}.out.eml", case.name)), out).unwrap();
                eprintln!("blessed {}.out.eml", case.name);
            }
            (expected, got) => failures.push(format!(
                "{}: expected {}\n--- got ---\n{}",
                case.name,
                match expected {
                    Expected::Content(c) => show(c),
                    Expected::Refused(r) => format!("refusal {r:?}"),
                    Expected::Missing => "(no .out.eml or .refused file)".into(),
                },
                match got {
                    Ok(out) => show(out),
                    Err(e) => format!("refusal {e:?}"),
                }
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden cases differ:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// The SPEC's From table, row by row, as golden cases: a file pair for each row.
#[test]
fn every_spec_table_row_has_a_golden_case() {
    let rows: [(&str, &str); 7] = [
        (
            "From: 张三 <zhangsan@qq.com>",
            "From: =?UTF-8?B?5byg5LiJ?= <zhangsan@qq.com>",
        ),
        (
            "From: Support Team, ACME <support@acme.com>",
            "From: \"Support Team, ACME\" <support@acme.com>",
        ),
        ("From: Dr. Who <who@x.org>", "From: \"Dr. Who\" <who@x.org>"),
        (
            "From: support@acme.com (Support)",
            "From: Support <support@acme.com>",
        ),
        (
            "From: Bob \"The Builder\" Smith <bob@x.org>",
            "From: \"Bob \\\"The Builder\\\" Smith\" <bob@x.org>",
        ),
        (
            "From: \"re- AI Radio\" <re-ai-radio@reload.com.cn>",
            "From: \"re- AI Radio\" <re-ai-radio@reload.com.cn>",
        ),
        ("From: <noreply@acme.com>", "From: <noreply@acme.com>"),
    ];
    let cases = load_cases();
    for (input, output) in rows {
        let line_in = format!("{input}\r\n");
        let line_out = format!("{output}\r\n");
        let found = cases.iter().any(|c| {
            let Expected::Content(out) = &c.expected else {
                return false;
            };
            c.input.starts_with(line_in.as_bytes()) && out.starts_with(line_out.as_bytes())
        });
        assert!(
            found,
            "no golden case starts with {input:?} and expects {output:?}"
        );
    }
}
