//! Requests from `smarthost queue` to the relay that owns the spool.
//!
//! The command writes one small file into `<spool>/ctl/` (write to a temporary name,
//! then rename, so a half-written request is never seen); the running relay picks the
//! requests up within a second and deletes them. A relay that is not running applies
//! them when it starts.
//!
//! A drain request is answered: the relay appends its progress, one line per message,
//! to `<spool>/ctl/drain-<token>.out` and ends it with a line `end HANDED LEFT` (see
//! [`drain_output`]); the command prints the lines as they come and removes the file.

use std::fs;
use std::path::{Path, PathBuf};

use crate::message::QueueId;

/// What the operator asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Try this message again now.
    Retry(QueueId),
    /// Try every message again now.
    RetryAll,
    /// Drop this message without delivering or bouncing it.
    Delete(QueueId),
    /// Hand every queued message over to another relay (`queue drain`).
    Drain {
        /// Names the answer file ([`drain_output`]).
        token: QueueId,
        /// The other relay, `HOST:PORT`.
        to: String,
        /// Unix time after which the request is void: the command stopped waiting.
        until: u64,
    },
}

impl Request {
    fn to_text(&self) -> String {
        match self {
            Request::Retry(id) => format!("retry {id}"),
            Request::RetryAll => "retry-all".into(),
            Request::Delete(id) => format!("delete {id}"),
            Request::Drain { token, to, until } => format!("drain {token} {to} {until}"),
        }
    }

    fn from_text(text: &str) -> Option<Request> {
        let mut words = text.split_whitespace();
        let request = match (words.next()?, words.next()) {
            ("retry", Some(id)) => Request::Retry(QueueId::parse(id)?),
            ("retry-all", None) => Request::RetryAll,
            ("delete", Some(id)) => Request::Delete(QueueId::parse(id)?),
            ("drain", Some(token)) => Request::Drain {
                token: QueueId::parse(token)?,
                to: words.next()?.to_owned(),
                until: words.next()?.parse().ok()?,
            },
            _ => return None,
        };
        words.next().is_none().then_some(request)
    }
}

/// Leave `request` for the relay.
pub fn submit(spool_dir: &Path, request: Request) -> std::io::Result<()> {
    let dir = spool_dir.join("ctl");
    fs::create_dir_all(&dir)?;
    let name = format!("{}-{}", QueueId::generate(), std::process::id());
    let tmp = dir.join(format!(".tmp-{name}"));
    fs::write(&tmp, request.to_text())?;
    fs::rename(&tmp, dir.join(format!("{name}.req")))
}

/// Where the relay answers the drain request `token`.
pub fn drain_output(spool_dir: &Path, token: QueueId) -> PathBuf {
    spool_dir.join("ctl").join(format!("drain-{token}.out"))
}

/// Take every pending request, oldest first (unreadable ones are dropped with a warning).
pub fn take(spool_dir: &Path) -> Vec<Request> {
    let dir = spool_dir.join("ctl");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".req"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let path = dir.join(&name);
        match fs::read_to_string(&path)
            .ok()
            .as_deref()
            .and_then(Request::from_text)
        {
            Some(request) => out.push(request),
            None => tracing::warn!(file = %path.display(), "ignoring an unreadable queue request"),
        }
        let _ = fs::remove_file(&path);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let id = QueueId::generate();
        submit(dir.path(), Request::Retry(id)).unwrap();
        submit(dir.path(), Request::RetryAll).unwrap();
        submit(dir.path(), Request::Delete(id)).unwrap();
        let drain = Request::Drain {
            token: id,
            to: "relay-1.relay:25".into(),
            until: 1_700_000_000,
        };
        submit(dir.path(), drain.clone()).unwrap();
        assert_eq!(
            take(dir.path()),
            vec![
                Request::Retry(id),
                Request::RetryAll,
                Request::Delete(id),
                drain
            ]
        );
        assert!(take(dir.path()).is_empty());
    }
}
