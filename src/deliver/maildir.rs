//! Delivery into a local Maildir: development, dry runs, and the embedded default.
//!
//! A message is written to `tmp/`, fsync'd, renamed into `new/`, and `new/` itself is
//! fsync'd, so once [`Maildir::deliver`] returns the message survives a crash.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::message::Message;

/// A Maildir (`tmp/`, `new/`, `cur/`).
#[derive(Clone, Debug)]
pub struct Maildir {
    root: PathBuf,
    hostname: String,
}

impl Maildir {
    /// Open the Maildir at `root`, creating it and its subdirectories if needed.
    pub fn open(root: &Path, hostname: &str) -> std::io::Result<Maildir> {
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(root.join(sub))?;
        }
        // Maildir file names use the host name; '/' and ':' have meanings there.
        let hostname = hostname.replace('/', "\\057").replace(':', "\\072");
        Ok(Maildir {
            root: root.to_owned(),
            hostname,
        })
    }

    /// The top directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Store `message` durably; returns the path in `new/`. Blocking: call it off the
    /// async reactor.
    pub fn deliver(&self, message: &Message) -> std::io::Result<PathBuf> {
        let secs = message
            .received_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!(
            "{secs}.{}_P{}.{}",
            message.id,
            std::process::id(),
            self.hostname
        );
        let tmp = self.root.join("tmp").join(&name);
        let new = self.root.join("new").join(&name);

        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let result = (|| {
            let mut head = format!("Return-Path: {}\r\n", message.envelope.sender);
            for rcpt in &message.envelope.recipients {
                head.push_str(&format!("Delivered-To: {rcpt}\r\n"));
            }
            file.write_all(head.as_bytes())?;
            file.write_all(&message.content)?;
            if let Some(body) = &message.body {
                std::io::copy(&mut File::open(&body.path)?, &mut file)?;
            }
            file.sync_all()?;
            fs::rename(&tmp, &new)?;
            File::open(self.root.join("new"))?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Envelope, QueueId};
    use crate::proto::{Address, ReversePath};

    #[test]
    fn delivers_into_new_with_envelope_headers() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::open(&dir.path().join("box"), "relay.test").unwrap();
        let message = Message {
            id: QueueId::generate(),
            envelope: Envelope {
                sender: ReversePath::Mailbox(Address::parse("app@example.com").unwrap()),
                recipients: vec![
                    Address::parse("a@example.net").unwrap(),
                    Address::parse("b@example.net").unwrap(),
                ],
                smtputf8: false,
                eight_bit: false,
                route: None,
            },
            content: b"Subject: hi\r\n\r\nbody\r\n".to_vec(),
            body: None,
            received_at: std::time::SystemTime::now(),
        };
        let path = maildir.deliver(&message).unwrap();
        assert!(path.starts_with(dir.path().join("box/new")));
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "Return-Path: <app@example.com>\r\nDelivered-To: a@example.net\r\nDelivered-To: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n"
        );
        assert_eq!(fs::read_dir(dir.path().join("box/tmp")).unwrap().count(), 0);
    }
}
