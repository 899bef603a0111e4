//! `smarthost check`: validate the configuration, then probe every upstream step by step.

use std::fmt::Write as _;
use std::time::Instant;

use crate::config::{Config, UpstreamUrl};
use crate::deliver::maildir::Maildir;

/// The outcome of probing all upstreams.
pub struct CheckReport {
    /// Human-readable lines, one per step.
    pub text: String,
    /// Whether every upstream passed.
    pub all_ok: bool,
}

/// Probe every configured upstream.
pub fn check_upstreams(config: &Config) -> CheckReport {
    let mut text = String::new();
    let mut all_ok = true;
    for up in &config.upstream {
        let name = up.display_name();
        let _ = writeln!(text, "upstream {name} ({})", up.url);
        match &up.url {
            UpstreamUrl::Maildir { path } => {
                let started = Instant::now();
                let result =
                    Maildir::open(path, &config.server.hostname).and_then(|m| probe_writable(&m));
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                match result {
                    Ok(()) => {
                        let _ = writeln!(
                            text,
                            "  ok    maildir {} is writable ({ms:.1} ms)",
                            path.display()
                        );
                    }
                    Err(e) => {
                        all_ok = false;
                        let _ =
                            writeln!(text, "  FAIL  maildir {}: {e} ({ms:.1} ms)", path.display());
                        let _ = writeln!(
                            text,
                            "        fix: create the directory or give the smarthost user write access to it"
                        );
                    }
                }
            }
            UpstreamUrl::Smtp { .. } => {
                all_ok = false;
                let _ = writeln!(
                    text,
                    "  FAIL  delivery over SMTP is not available in this version yet"
                );
                let _ = writeln!(
                    text,
                    "        fix: use a maildir: upstream until SMTP upstream support lands"
                );
            }
        }
    }
    CheckReport { text, all_ok }
}

fn probe_writable(maildir: &Maildir) -> std::io::Result<()> {
    let probe = maildir
        .root()
        .join("tmp")
        .join(format!(".smarthost-check-{}", std::process::id()));
    std::fs::write(&probe, b"probe")?;
    std::fs::remove_file(&probe)
}
