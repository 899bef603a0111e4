//! SMTP dialog scripts against the real relay: `tests/data/dialogs/NN-name.txt`.
//!
//! Each script runs on a fresh relay (see `support::start_relay`) over one TCP
//! connection. The format, one directive per line:
//!
//! ```text
//! # comment                  (blank lines are ignored too)
//! @config <TOML line>        added to the relay configuration (whole [sections]; see
//!                            start_relay for the defaults merged in)
//! @messages N                after the dialog (and a relay shutdown) exactly N messages
//!                            were delivered; without it, N = 0
//! @message I /RE/            delivered message I (1-based, oldest first) matches RE;
//! @message I !/RE/           ... does not match RE
//! > TEXT                     send TEXT and CRLF
//! ~ TEXT                     send TEXT as is (no CRLF added)
//! < CODE [X.Y.Z] [/RE/]      read one complete reply: its code must be CODE, the
//!                            enhanced code X.Y.Z (on every line), and its text match RE
//! < CODE [X.Y.Z] !/RE/       ... and its text must not match RE
//! & /RE/   or   & !/RE/      one more pattern for the reply read last
//! < closed                   the server closes the connection now, sending nothing more
//! ```
//!
//! Bytes from `>` and `~` lines are collected and sent in one write just before the next
//! `<` line, so consecutive sends form one pipelined batch. TEXT understands the escapes
//! `\r`, `\n`, `\t`, `\\`, `\xHH` and `{{N*S}}` (the string S repeated N times). A reply's
//! text, for patterns, is its lines after `NNN-`/`NNN ` joined with `\n`, enhanced codes
//! left in place; RE is a `regex` crate pattern in multi-line CRLF mode (`^`/`$` match
//! at line boundaries, `$` also before `\r\n`; `.` matches neither `\r` nor `\n`). A message is matched as the Maildir file's text, CRLF line endings and
//! all. After the last line, every byte the server sent must have been read as a reply.

pub mod support;

use regex::{Regex, RegexBuilder};
use support::{ReadError, Reply, SmtpClient, escape, start_relay};

#[derive(Debug)]
enum Step {
    Send {
        bytes: Vec<u8>,
    },
    Expect {
        code: u16,
        esc: Option<String>,
        patterns: Vec<(bool, Regex)>,
        line: usize,
    },
    Also {
        pattern: (bool, Regex),
        line: usize,
    },
    Closed {
        line: usize,
    },
}

#[derive(Debug, Default)]
struct Script {
    config: String,
    messages: usize,
    message_patterns: Vec<(usize, bool, Regex, usize)>,
    steps: Vec<Step>,
}

/// `/RE/` → (true, RE); `!/RE/` → (false, RE).
fn pattern(text: &str, line: usize) -> (bool, Regex) {
    let (want, rest) = match text.strip_prefix('!') {
        Some(r) => (false, r),
        None => (true, text),
    };
    let re = rest
        .strip_prefix('/')
        .and_then(|r| r.strip_suffix('/'))
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| panic!("line {line}: a pattern is written /RE/ or !/RE/, got {text:?}"));
    let re = compile(re).unwrap_or_else(|e| panic!("line {line}: {e}"));
    (want, re)
}

/// A dialog pattern: `^` and `$` at line boundaries, CRLF or LF.
fn compile(re: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(re).multi_line(true).crlf(true).build()
}

/// Expand the escapes of a TEXT argument.
fn unescape(text: &str, line: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("{{") {
            let end = r
                .find("}}")
                .unwrap_or_else(|| panic!("line {line}: unclosed {{{{"));
            let (n, s) = r[..end]
                .split_once('*')
                .unwrap_or_else(|| panic!("line {line}: write {{{{N*TEXT}}}}"));
            let n: usize = n
                .parse()
                .unwrap_or_else(|_| panic!("line {line}: bad count {n:?}"));
            out.extend(unescape(s, line).repeat(n));
            rest = &r[end + 2..];
        } else if let Some(r) = rest.strip_prefix('\\') {
            let mut chars = r.chars();
            let e = chars
                .next()
                .unwrap_or_else(|| panic!("line {line}: trailing \\"));
            match e {
                'r' => out.push(b'\r'),
                'n' => out.push(b'\n'),
                't' => out.push(b'\t'),
                '\\' => out.push(b'\\'),
                'x' => {
                    let hex = r
                        .get(1..3)
                        .unwrap_or_else(|| panic!("line {line}: \\x needs two hex digits"));
                    out.push(
                        u8::from_str_radix(hex, 16)
                            .unwrap_or_else(|_| panic!("line {line}: bad \\x{hex}")),
                    );
                    rest = &r[3..];
                    continue;
                }
                other => panic!("line {line}: unknown escape \\{other}"),
            }
            rest = &r[e.len_utf8()..];
        } else {
            let next = rest
                .find(['\\', '{'])
                .map(|i| if i == 0 { 1 } else { i })
                .unwrap_or(rest.len());
            out.extend_from_slice(&rest.as_bytes()[..next]);
            rest = &rest[next..];
        }
    }
    out
}

fn parse(text: &str) -> Script {
    let mut script = Script::default();
    let mut saw_messages = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim_end();
        if trimmed.trim_start().is_empty() || trimmed.trim_start().starts_with('#') {
            continue;
        }
        let (directive, arg) = match trimmed.split_once(' ') {
            Some((d, a)) => (d, a),
            None => (trimmed, ""),
        };
        match directive {
            "@config" => {
                script.config.push_str(arg);
                script.config.push('\n');
            }
            "@messages" => {
                assert!(!saw_messages, "line {line}: @messages given twice");
                saw_messages = true;
                script.messages = arg
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("line {line}: @messages N"));
            }
            "@message" => {
                let (index, pat) = arg
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("line {line}: @message I /RE/"));
                let index: usize = index
                    .parse()
                    .ok()
                    .filter(|i| *i >= 1)
                    .unwrap_or_else(|| panic!("line {line}: message index starts at 1"));
                let (want, re) = pattern(pat.trim(), line);
                script.message_patterns.push((index, want, re, line));
            }
            ">" | "~" => {
                let mut bytes = unescape(arg, line);
                if directive == ">" {
                    bytes.extend_from_slice(b"\r\n");
                }
                script.steps.push(Step::Send { bytes });
            }
            "<" if arg.trim() == "closed" => script.steps.push(Step::Closed { line }),
            "<" => {
                let arg = arg.trim();
                let (code, rest) = arg.split_once(' ').unwrap_or((arg, ""));
                let code: u16 = code
                    .parse()
                    .ok()
                    .filter(|c| (200..600).contains(c))
                    .unwrap_or_else(|| panic!("line {line}: `< CODE ...`, got {arg:?}"));
                let mut rest = rest.trim();
                let mut esc = None;
                let first = rest.split(' ').next().unwrap_or("");
                if !first.is_empty() && !first.starts_with(['/', '!']) {
                    assert!(
                        first.split('.').count() == 3
                            && first.split('.').all(|p| p.parse::<u16>().is_ok()),
                        "line {line}: {first:?} is not an enhanced status code"
                    );
                    esc = Some(first.to_owned());
                    rest = rest[first.len()..].trim();
                }
                let patterns = if rest.is_empty() {
                    Vec::new()
                } else {
                    vec![pattern(rest, line)]
                };
                script.steps.push(Step::Expect {
                    code,
                    esc,
                    patterns,
                    line,
                });
            }
            "&" => {
                let pattern = pattern(arg.trim(), line);
                assert!(
                    matches!(
                        script.steps.last(),
                        Some(Step::Expect { .. } | Step::Also { .. })
                    ),
                    "line {line}: & must follow a < line"
                );
                script.steps.push(Step::Also { pattern, line });
            }
            other => panic!("line {line}: unknown directive {other:?}"),
        }
    }
    assert!(
        script
            .steps
            .iter()
            .any(|s| matches!(s, Step::Expect { .. } | Step::Closed { .. })),
        "a dialog must expect at least one reply"
    );
    if let Some((index, _, _, line)) = script
        .message_patterns
        .iter()
        .find(|p| p.0 > script.messages)
    {
        panic!(
            "line {line}: @message {index} but @messages is {}",
            script.messages
        );
    }
    script
}

fn check_pattern(reply: &Reply, (want, re): &(bool, Regex), line: usize) -> Result<(), String> {
    if re.is_match(&reply.text()) != *want {
        return Err(format!(
            "line {line}: reply {reply} {} /{}/",
            if *want { "does not match" } else { "matches" },
            re.as_str()
        ));
    }
    Ok(())
}

async fn run_dialog(name: &str, text: &str) {
    let script = parse(text);
    let mut relay = start_relay(&script.config).await;
    let mut client = relay.connect().await;
    let mut pending: Vec<u8> = Vec::new();
    let mut last: Option<Reply> = None;
    let fail = |client: &SmtpClient<_>, msg: String| -> ! {
        panic!(
            "dialog {name}: {msg}\n--- transcript ---\n{}",
            client.transcript()
        )
    };
    for step in &script.steps {
        match step {
            Step::Send { bytes } => pending.extend_from_slice(bytes),
            Step::Expect {
                code,
                esc,
                patterns,
                line,
            } => {
                if !pending.is_empty() {
                    client.send(std::mem::take(&mut pending)).await;
                }
                let reply = match client.try_read_reply().await {
                    Ok(r) => r,
                    Err(e) => fail(&client, format!("line {line}: expected {code}, got {e:?}")),
                };
                if reply.code != *code {
                    fail(
                        &client,
                        format!("line {line}: expected {code}, got {reply}"),
                    );
                }
                if let Some(esc) = esc {
                    for l in &reply.lines {
                        if l.split(' ').next() != Some(esc.as_str()) {
                            fail(
                                &client,
                                format!(
                                    "line {line}: expected enhanced code {esc} on every line of {reply}"
                                ),
                            );
                        }
                    }
                }
                for p in patterns {
                    if let Err(e) = check_pattern(&reply, p, *line) {
                        fail(&client, e);
                    }
                }
                last = Some(reply);
            }
            Step::Also { pattern, line } => {
                let reply = last.as_ref().expect("checked by the parser");
                if let Err(e) = check_pattern(reply, pattern, *line) {
                    fail(&client, e);
                }
            }
            Step::Closed { line } => {
                if !pending.is_empty() {
                    client.send(std::mem::take(&mut pending)).await;
                }
                match client.try_read_reply().await {
                    Err(ReadError::Closed(rest)) if rest.is_empty() => {}
                    Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                    other => fail(
                        &client,
                        format!("line {line}: expected the connection to close, got {other:?}"),
                    ),
                }
            }
        }
    }
    if !pending.is_empty() {
        fail(
            &client,
            format!(
                "bytes to send after the last expectation: {}",
                escape(&pending)
            ),
        );
    }
    client.assert_nothing_buffered();
    drop(client);
    // Sessions end, deliveries settle; only then count.
    let messages = relay.finish(script.messages).await;
    for (index, want, re, line) in &script.message_patterns {
        let message = &messages[index - 1];
        assert_eq!(
            re.is_match(&message.text()),
            *want,
            "dialog {name} line {line}: message {index} {} /{}/:\n{message:?}",
            if *want { "does not match" } else { "matches" },
            re.as_str()
        );
    }
}

/// One test per dialog file; `every_dialog_file_has_a_test` keeps this list complete.
macro_rules! dialogs {
    ($($test:ident => $file:literal,)+) => {
        $(
            #[tokio::test]
            async fn $test() {
                run_dialog($file, include_str!(concat!("data/dialogs/", $file))).await;
            }
        )+
        const DIALOG_FILES: &[&str] = &[$($file),+];
    };
}

dialogs! {
    full_transaction => "01-full-transaction.txt",
    helo_versus_ehlo => "02-helo-vs-ehlo.txt",
    unknown_command => "03-unknown-command.txt",
    bad_syntax => "04-bad-syntax.txt",
    bad_sequence => "05-bad-sequence.txt",
    unsupported_parameter => "06-unsupported-parameter.txt",
    size_over_limit_at_mail => "07-size-over-limit.txt",
    too_many_recipients => "08-too-many-recipients.txt",
    command_line_too_long => "09-line-too-long.txt",
    vrfy_noop_rset_help => "10-vrfy-noop-rset-help.txt",
    auth_refused => "11-auth-refused.txt",
    starttls_not_configured => "12-starttls-not-configured.txt",
    too_many_errors => "13-too-many-errors.txt",
    http_request => "14-http-request.txt",
    bare_line_endings_in_commands => "15-bare-line-endings-in-commands.txt",
    pipelined_batch_with_errors => "16-pipelined-batch-with-errors.txt",
    untrusted_client => "17-untrusted-client.txt",
    quit_ends_the_session => "18-quit-ends-the-session.txt",
    null_sender_and_smtputf8 => "19-null-sender-and-smtputf8.txt",
    unusable_from_is_refused_at_data => "20-unusable-from.txt",
}

#[test]
fn every_dialog_file_has_a_test() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dialogs");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/data/dialogs exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = DIALOG_FILES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "dialog files and the dialogs! list differ");
    for name in &on_disk {
        let ok = name.len() > 7
            && name.as_bytes()[..2].iter().all(u8::is_ascii_digit)
            && name.as_bytes()[2] == b'-'
            && name.ends_with(".txt");
        assert!(ok, "dialog file {name:?} is not named NN-name.txt");
    }
}

#[test]
fn the_dialog_parser_rejects_what_it_does_not_know() {
    for bad in [
        "< 250\n? what\n",
        "> NOOP\n",
        "< 25\n",
        "< 250 2.0\n",
        "< 250 /unclosed\n",
        "@messages 0\n@message 1 /x/\n< 220\n",
        "& /x/\n< 220\n",
        "> {{x*3\n< 220\n",
    ] {
        let result = std::panic::catch_unwind(|| parse(bad));
        assert!(result.is_err(), "accepted a bad script: {bad:?}");
    }
}

#[test]
fn text_escapes_expand() {
    assert_eq!(unescape(r"a\r\nb\\c\x00", 1), b"a\r\nb\\c\x00");
    assert_eq!(unescape("{{3*ab}}-{{2*\\r}}", 1), b"ababab-\r\r");
    assert_eq!(unescape("{not repeat}", 1), b"{not repeat}");
}

#[test]
fn dialog_patterns_match_at_line_boundaries() {
    let cases: &[(&str, &str, bool)] = &[
        ("PIPELINING", "mx\nPIPELINING\nSIZE 10", true),
        ("^SIZE \\d+$", "mx\nPIPELINING\nSIZE 10", true),
        ("^SIZE$", "mx\nSIZE 10", false),
        ("^STARTTLS$", "mx\nSTARTTLS\r\nHELP", true),
        ("a.c", "abc", true),
        ("a.c", "a\nc", false),
        ("a.c", "a\rc", false),
        ("ab*c", "ac", true),
        ("ab+c", "ac", false),
        ("colou?r", "color", true),
        ("[0-9a-f]+ queued", "queued as 17AB", false),
        ("queued as [0-9A-F]+$", "2.0.0 queued as 17AB", true),
        ("[^x]y", "xy", false),
        ("\\.", "a.b", true),
        ("\\.", "ab", false),
        ("x*$", "", true),
        ("with ESMTPS$", "by x with ESMTPS\r\n\t(TLSv1.3)", true),
    ];
    for (re, text, want) in cases {
        assert_eq!(
            compile(re).unwrap().is_match(text),
            *want,
            "/{re}/ on {text:?}"
        );
    }
    for bad in ["*a", "[ab", "\\q", "a{2"] {
        assert!(compile(bad).is_err(), "accepted /{bad}/");
    }
}
