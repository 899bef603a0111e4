//! What a Maildir upstream delivered: [`list_maildir`] reads `<maildir>/new/` into
//! [`Delivered`] messages; [`header`] finds a field in a message's text.

use std::fmt;
use std::path::{Path, PathBuf};

/// One message file from a Maildir's `new/`.
#[derive(Clone)]
pub struct Delivered {
    /// Where it is.
    pub path: PathBuf,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

impl Delivered {
    /// The content as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The header lines (unfolded lines kept as on disk), up to the empty line.
    pub fn header_lines(&self) -> Vec<String> {
        let text = self.text();
        let head = text.split("\r\n\r\n").next().unwrap_or("").to_owned();
        head.split("\r\n").map(str::to_owned).collect()
    }

    /// The addresses of the `Delivered-To` lines the Maildir upstream writes.
    pub fn delivered_to(&self) -> Vec<String> {
        self.header_lines()
            .iter()
            .filter_map(|l| l.strip_prefix("Delivered-To: ").map(str::to_owned))
            .collect()
    }

    /// The body: everything after the first empty line.
    pub fn body(&self) -> &[u8] {
        match self.bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => &self.bytes[i + 4..],
            None => &[],
        }
    }

    /// Panic unless every line ending is CRLF (no bare CR, no bare LF).
    pub fn assert_crlf_only(&self) {
        for (i, b) in self.bytes.iter().enumerate() {
            let ok = match b {
                b'\r' => self.bytes.get(i + 1) == Some(&b'\n'),
                b'\n' => i > 0 && self.bytes[i - 1] == b'\r',
                _ => true,
            };
            assert!(
                ok,
                "bare {} at offset {i} in {}:\n{:?}",
                if *b == b'\r' { "CR" } else { "LF" },
                self.path.display(),
                self.text()
            );
        }
    }
}

impl fmt::Debug for Delivered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:\n{}", self.path.display(), self.text())
    }
}

/// The messages in `<maildir>/new/`, sorted by file name (time, then queue id).
pub fn list_maildir(maildir: &Path) -> Vec<Delivered> {
    let new = maildir.join("new");
    let Ok(entries) = std::fs::read_dir(&new) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.map(|e| e.expect("read new/").path()).collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| Delivered {
            bytes: std::fs::read(&path).expect("read message file"),
            path,
        })
        .collect()
}

/// The value of the first `name:` header in `message`, continuation lines appended
/// (folding whitespace kept).
pub fn header(message: &str, name: &str) -> Option<String> {
    let head = message.split("\r\n\r\n").next()?;
    let mut found: Option<String> = None;
    for line in head.split("\r\n") {
        if let Some(value) = found.as_mut() {
            if line.starts_with([' ', '\t']) {
                value.push_str(line);
                continue;
            }
            break;
        }
        if let Some((n, v)) = line.split_once(':')
            && n.eq_ignore_ascii_case(name)
        {
            found = Some(v.trim().to_owned());
        }
    }
    found
}
