//! The one way tests compose a relay configuration: [`TestConfig`].
//!
//! A test names only what it is about (a `[server]` limit, its `[[upstream]]` tables, a
//! `[delivery]` mode); the composer adds what every test relay needs and no test is
//! about: the host name [`HOSTNAME`], listening on `127.0.0.1:0`, a spool and a Maildir
//! inside the test's temp directory, the metrics endpoint on a free port. A key the test
//! sets itself wins over the default, so `[metrics]\nlisten = "off"` turns it off.
//!
//! Tests about broken or unusual configuration files write their literal text instead.

use std::path::{Path, PathBuf};

use smarthost::config::{Config, ConfigSource};

use super::HOSTNAME;

/// A relay configuration rooted in a test's temp directory.
///
/// Defaults (each one only where the test's own TOML does not set that key):
///
/// - `[server]`: `hostname = HOSTNAME`, `listen = ["127.0.0.1:0"]`,
///   `shutdown_grace = "10s"`;
/// - `[spool]`: `dir = "<dir>/spool"`, `max_disk_usage = 100`;
/// - `[metrics]`: `listen = "127.0.0.1:0"`;
/// - unless the test's TOML has an `[[upstream]]` table, one Maildir upstream named
///   `maildir` delivering into `<dir>/maildir` (or the directory given to
///   [`TestConfig::maildir`]).
#[derive(Clone, Debug)]
pub struct TestConfig {
    dir: PathBuf,
    maildir: PathBuf,
    toml: String,
}

impl TestConfig {
    /// The defaults, with the spool and the Maildir under `dir`.
    pub fn new(dir: &Path) -> TestConfig {
        TestConfig {
            dir: dir.to_owned(),
            maildir: dir.join("maildir"),
            toml: String::new(),
        }
    }

    /// Append whole TOML sections (the text must start with a `[section]` header, or
    /// be empty). A key set here wins over the default for that section.
    pub fn toml(mut self, sections: &str) -> TestConfig {
        let first = sections
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'));
        assert!(
            first.is_none_or(|l| l.starts_with('[')),
            "TestConfig::toml takes whole [sections]; got {first:?}"
        );
        if !self.toml.is_empty() && !self.toml.ends_with('\n') {
            self.toml.push('\n');
        }
        self.toml.push_str(sections);
        self
    }

    /// Deliver into the Maildir `dir` (when the TOML has no `[[upstream]]` of its own).
    pub fn maildir(mut self, dir: &Path) -> TestConfig {
        self.maildir = dir.to_owned();
        self
    }

    /// The Maildir the default upstream delivers into.
    pub fn maildir_path(&self) -> &Path {
        &self.maildir
    }

    /// The composed TOML text.
    pub fn text(&self) -> String {
        let spool = quoted(&self.dir.join("spool"));
        let defaults: [(&str, Vec<(&str, String)>); 3] = [
            (
                "[server]",
                vec![
                    ("hostname", format!("\"{HOSTNAME}\"")),
                    ("listen", "[\"127.0.0.1:0\"]".into()),
                    ("shutdown_grace", "\"10s\"".into()),
                ],
            ),
            (
                "[spool]",
                vec![("dir", spool), ("max_disk_usage", "100".into())],
            ),
            ("[metrics]", vec![("listen", "\"127.0.0.1:0\"".into())]),
        ];

        // Which keys does the test set in which section?
        let mut set: Vec<(String, String)> = Vec::new();
        let mut section = String::new();
        let mut has_upstream = false;
        for line in self.toml.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.to_owned();
                has_upstream |= line == "[[upstream]]";
            } else if let Some((key, _)) = line.split_once('=') {
                set.push((section.clone(), key.trim().to_owned()));
            }
        }
        let defaults_for = |sec: &str| -> String {
            defaults
                .iter()
                .filter(|(s, _)| *s == sec)
                .flat_map(|(_, keys)| keys)
                .filter(|(k, _)| !set.iter().any(|(s, key)| s == sec && key == k))
                .map(|(k, v)| format!("{k} = {v}\n"))
                .collect()
        };

        let mut out = String::new();
        let mut present = Vec::new();
        for line in self.toml.lines() {
            out.push_str(line);
            out.push('\n');
            let t = line.trim();
            if defaults.iter().any(|(s, _)| *s == t) {
                out.push_str(&defaults_for(t));
                present.push(t.to_owned());
            }
        }
        for (sec, _) in &defaults {
            if !present.iter().any(|p| p == sec) {
                out.push_str(&format!("{sec}\n{}", defaults_for(sec)));
            }
        }
        if !has_upstream {
            out.push_str(&format!(
                "[[upstream]]\nname = \"maildir\"\nurl = \"maildir:{}\"\n",
                self.maildir.display()
            ));
        }
        out
    }

    /// Write the configuration to `<dir>/smarthost.toml` and return that path.
    pub fn write(&self) -> PathBuf {
        let path = self.dir.join("smarthost.toml");
        std::fs::write(&path, self.text()).expect("write config file");
        path
    }

    /// Write the configuration and load it the way `smarthost` does.
    pub fn load(&self) -> Config {
        let path = self.write();
        load_file(&path)
    }
}

/// One `[[upstream]]` table: `name`, `url`, `timeout = "5s"` unless `extra` sets its own
/// timeout, then `extra` (more keys, one per line).
pub fn upstream(name: &str, url: &str, extra: &str) -> String {
    let timeout = if extra.contains("timeout =") {
        ""
    } else {
        "timeout = \"5s\"\n"
    };
    format!("[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\n{timeout}{extra}\n")
}

/// Two upstreams for failover scenarios: `broken` (priority 0, a port where nothing
/// listens, with `broken_extra` keys) fails every attempt and opens its breaker at the
/// first failure (for five minutes); `local` (priority 1) delivers into `maildir`.
pub fn failing_then_working(maildir: &std::path::Path, broken_extra: &str) -> String {
    format!(
        "[delivery]\nbreaker_threshold = 1\nbreaker_cooldown = \"5m\"\n{}{}",
        upstream(
            "broken",
            &format!("smtp://127.0.0.1:{}?tls=none", super::free_port()),
            &format!("priority = 0\n{broken_extra}")
        ),
        upstream(
            "local",
            &format!("maildir:{}", maildir.display()),
            "priority = 1\n"
        ),
    )
}

/// `sections` with the test defaults, loaded, for a test that needs the [`Config`] value
/// only (to build a `Deliverer`, to run `check`): it is composed in a temp directory
/// that is gone afterwards, so no relay may run with it.
pub fn parsed(sections: &str) -> Config {
    let dir = tempfile::tempdir().expect("create temp dir");
    TestConfig::new(dir.path()).toml(sections).load()
}

/// Load a configuration file the way `smarthost` does; a rejection fails the test and
/// prints the file.
pub fn load_file(path: &Path) -> Config {
    smarthost::config::load(&ConfigSource::File(path.to_owned()), &[]).unwrap_or_else(|e| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        panic!(
            "test config rejected: {e}\n--- {} ---\n{text}",
            path.display()
        )
    })
}

fn quoted(p: &Path) -> String {
    let s = p.display().to_string();
    assert!(
        !s.contains(['"', '\\']),
        "temp path {s:?} needs TOML escaping"
    );
    format!("\"{s}\"")
}
