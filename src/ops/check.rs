//! `smarthost check`: probe every upstream step by step — DNS, TCP, TLS, greeting, EHLO,
//! AUTH, optionally a test message — printing one line per step with its time, and on
//! failure the diagnosis with the fix. Secrets are never printed.

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use crate::config::{Config, UpstreamUrl};
use crate::deliver::client::RcptReply;
use crate::deliver::connect::{Event, Session};
use crate::deliver::maildir::Maildir;
use crate::deliver::outcome::{Failure, Stage};
use crate::deliver::upstream::SmtpUpstream;
use crate::ops::send::{SendRequest, compose};

/// The outcome of probing all upstreams.
pub struct CheckReport {
    /// Human-readable lines, one per step.
    pub text: String,
    /// Whether every upstream passed.
    pub all_ok: bool,
}

/// Probe every configured upstream; with `send_to`, also send a test message through each.
pub async fn check_upstreams(config: &Config, send_to: Option<&str>) -> CheckReport {
    let mut text = String::new();
    let mut all_ok = true;
    for up in &config.upstream {
        let name = up.display_name();
        let _ = writeln!(text, "upstream {name} ({})", up.url);
        let ok = match &up.url {
            UpstreamUrl::Maildir { path } => check_maildir(path, config, &mut text),
            UpstreamUrl::Smtp { .. } => match SmtpUpstream::from_config(up, config) {
                Ok(smtp) => check_smtp(&smtp, config, send_to, &mut text).await,
                Err(e) => {
                    line(&mut text, false, "tls", &e.to_string(), None);
                    false
                }
            },
        };
        all_ok &= ok;
    }
    CheckReport { text, all_ok }
}

fn line(out: &mut String, ok: bool, step: &str, detail: &str, took: Option<Duration>) {
    let status = if ok { "ok  " } else { "FAIL" };
    let took = took
        .map(|d| format!(" ({:.1} ms)", d.as_secs_f64() * 1000.0))
        .unwrap_or_default();
    let _ = writeln!(out, "  {status}  {step:<9} {detail}{took}");
}

fn check_maildir(path: &std::path::Path, config: &Config, out: &mut String) -> bool {
    let started = Instant::now();
    let result = Maildir::open(path, &config.server.hostname).and_then(|m| {
        let probe = m
            .root()
            .join("tmp")
            .join(format!(".smarthost-check-{}", std::process::id()));
        std::fs::write(&probe, b"probe")?;
        std::fs::remove_file(&probe)
    });
    match result {
        Ok(()) => {
            line(
                out,
                true,
                "maildir",
                &format!("{} is writable", path.display()),
                Some(started.elapsed()),
            );
            true
        }
        Err(e) => {
            line(
                out,
                false,
                "maildir",
                &format!("{}: {e}", path.display()),
                Some(started.elapsed()),
            );
            let _ = writeln!(
                out,
                "        fix: create the directory or give the smarthost user write access to it"
            );
            false
        }
    }
}

async fn check_smtp(
    up: &SmtpUpstream,
    config: &Config,
    send_to: Option<&str>,
    out: &mut String,
) -> bool {
    if !check_oauth(up, out).await {
        return false;
    }
    let Some(mut session) = open_session(up, out).await else {
        return false;
    };
    if !up.has_credentials() {
        line(
            out,
            true,
            "auth",
            "no credentials configured: AUTH not used",
            None,
        );
    }
    let ok = match send_to {
        Some(to) => send_test(up, config, &mut session, to, out).await,
        None => true,
    };
    session.client.quit().await;
    ok
}

/// Step `oauth` for an upstream with `[upstream.oauth]`: an access token can be had.
async fn check_oauth(up: &SmtpUpstream, out: &mut String) -> bool {
    let Some(tokens) = up.oauth() else {
        return true;
    };
    let started = Instant::now();
    match tokens.token().await {
        Ok(token) => {
            line(
                out,
                true,
                "oauth",
                &format!(
                    "access token obtained, expires in {} s",
                    token.expires_in.as_secs()
                ),
                Some(started.elapsed()),
            );
            true
        }
        Err(error) => {
            line(
                out,
                false,
                "oauth",
                &error.to_string(),
                Some(started.elapsed()),
            );
            let _ = writeln!(out, "        fix: {}", error.fix(&up.name));
            false
        }
    }
}

/// Steps `dns` to `auth`: open a session, one line per step as it happens; on failure
/// the failing step with its diagnosis.
async fn open_session(up: &SmtpUpstream, out: &mut String) -> Option<Session> {
    let mut last = Instant::now();
    let mut steps = String::new();
    let mut observe = |event: Event<'_>| {
        let took = Some(last.elapsed());
        last = Instant::now();
        let (step, detail) = describe_event(event);
        line(&mut steps, true, step, &detail, took);
    };
    let opened = up.open(&mut observe).await;
    out.push_str(&steps);
    match opened {
        Ok(session) => Some(session),
        Err(failure) => {
            line(
                out,
                false,
                step_of(&failure),
                &failure.to_string(),
                Some(last.elapsed()),
            );
            let (host, port, mode) = up.describe();
            if let Some(fix) = failure.diagnosis(host, port, mode) {
                let _ = writeln!(out, "        fix: {fix}");
            }
            None
        }
    }
}

/// The step label and detail printed for one connection event.
fn describe_event(event: Event<'_>) -> (&'static str, String) {
    match event {
        Event::Resolved(addrs) => (
            "dns",
            addrs
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        Event::Connected(addr) => ("connect", addr.to_string()),
        Event::Detected(mode) => ("detect", format!("tls=auto found {mode}")),
        Event::Tls(info) => ("tls", info.to_owned()),
        Event::Greeting(r) => ("greeting", r.to_string()),
        Event::Ehlo(caps) => {
            let list: Vec<String> = caps
                .extensions
                .iter()
                .map(|(k, v)| {
                    if v.is_empty() {
                        k.clone()
                    } else {
                        format!("{k} {v}")
                    }
                })
                .collect();
            ("ehlo", list.join(", "))
        }
        Event::Authenticated(m) => ("auth", format!("{} accepted", m.name())),
    }
}

/// Step `send`: a test message to `to` on the open session.
async fn send_test(
    up: &SmtpUpstream,
    config: &Config,
    session: &mut Session,
    to: &str,
    out: &mut String,
) -> bool {
    let from = up
        .sender
        .clone()
        .or_else(|| up.username().filter(|u| u.contains('@')).map(str::to_owned));
    let from = from.unwrap_or_else(|| format!("postmaster@{}", config.server.hostname));
    let request = SendRequest {
        server: String::new(),
        from: from.clone(),
        to: vec![to.to_owned()],
        subject: format!("smarthost check: {}", up.name),
        body: format!(
            "Test message from smarthost check through upstream {}.",
            up.name
        ),
        raw: None,
        helo: String::new(),
        timeout: Duration::from_secs(30),
    };
    let content = compose(&request, SystemTime::now());
    let started = Instant::now();
    let result = session
        .client
        .transaction(
            &format!("<{from}>"),
            &request.to,
            (&content, None),
            session.caps.has("PIPELINING"),
        )
        .await;
    let what = format!("test message from <{from}> to <{to}>");
    match result {
        Ok(replies) => match replies.into_iter().next() {
            Some(RcptReply::Accepted(r)) => {
                line(
                    out,
                    true,
                    "send",
                    &format!("{what}: {r}"),
                    Some(started.elapsed()),
                );
                true
            }
            Some(RcptReply::Refused(response)) => {
                line(
                    out,
                    false,
                    "send",
                    &format!("{what}: {response}"),
                    Some(started.elapsed()),
                );
                let failure = Failure::Refused {
                    command: "the test message".into(),
                    response,
                };
                let (host, port, mode) = up.describe();
                if let Some(fix) = failure.diagnosis(host, port, mode) {
                    let _ = writeln!(out, "        fix: {fix}");
                }
                false
            }
            None => false,
        },
        Err(e) => {
            line(out, false, "send", &e.to_string(), Some(started.elapsed()));
            false
        }
    }
}

/// The step label under which a failure is printed.
fn step_of(failure: &Failure) -> &'static str {
    let stage = match failure {
        Failure::OAuth { .. } => return "oauth",
        Failure::Dns { .. } => Stage::Dns,
        Failure::Connect { .. } => Stage::Connect,
        Failure::Timeout { stage, .. }
        | Failure::Stalled { stage, .. }
        | Failure::Closed { stage }
        | Failure::Protocol { stage, .. }
        | Failure::Io { stage, .. }
        | Failure::SessionRefused { stage, .. } => *stage,
        Failure::Tls { .. } => Stage::Tls,
        Failure::Greeting(_) => Stage::Greeting,
        Failure::MissingStartTls => Stage::StartTls,
        Failure::PlaintextAuth
        | Failure::NoAuthMechanism { .. }
        | Failure::AuthRejected(_)
        | Failure::TokenFile(_) => Stage::Auth,
        Failure::Refused { .. }
        | Failure::Unsuitable(_)
        | Failure::Busy(_)
        | Failure::Unrecorded(_)
        | Failure::Content(_)
        | Failure::FinalReplyTimeout { .. } => Stage::Transaction,
    };
    match stage {
        Stage::Dns => "dns",
        Stage::Connect => "connect",
        Stage::Tls => "tls",
        Stage::Greeting => "greeting",
        Stage::Ehlo => "ehlo",
        Stage::StartTls => "starttls",
        Stage::Auth => "auth",
        Stage::Transaction => "send",
    }
}

/// Load every `[[dkim]]` key without creating any; a key `serve` would generate is
/// reported as such.
pub fn check_dkim(config: &Config) -> CheckReport {
    let mut text = String::new();
    let mut all_ok = true;
    for cfg in &config.dkim {
        let what = format!(
            "{} (selector {}, {})",
            cfg.domain, cfg.selector, cfg.algorithm
        );
        if cfg.generate && !cfg.key_file.exists() {
            let _ = writeln!(text, "dkim {what}");
            line(
                &mut text,
                true,
                "key",
                &format!(
                    "{} will be created on the first start",
                    cfg.key_file.display()
                ),
                None,
            );
            continue;
        }
        let started = Instant::now();
        let _ = writeln!(text, "dkim {what}");
        match crate::transform::dkim::DkimKey::load(cfg) {
            Ok(key) => line(
                &mut text,
                true,
                "key",
                &format!(
                    "{} loads; publish {}",
                    cfg.key_file.display(),
                    key.dns_name()
                ),
                Some(started.elapsed()),
            ),
            Err(e) => {
                all_ok = false;
                line(
                    &mut text,
                    false,
                    "key",
                    &e.to_string(),
                    Some(started.elapsed()),
                );
            }
        }
    }
    CheckReport { text, all_ok }
}
