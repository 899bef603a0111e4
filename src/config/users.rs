//! The users file named by `[auth] users_file`: who may submit mail with SMTP AUTH.
//!
//! ```toml
//! [[user]]
//! name = "billing"                                   # [A-Za-z0-9._@-]+, unique
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."  # `smarthost user add` writes it
//! allowed_senders = ["*@billing.example.com"]        # address patterns, at least one
//! rate_limit = "100/min"                             # optional
//! ```
//!
//! [`Users::load`] reads and checks the whole file (an error names the file, the user
//! and the key); [`Users::verify`] checks a password; [`Users::save`] writes the file
//! atomically with mode 0600. Password hashes are never printed: [`User`]'s `Debug`
//! leaves them out.
//!
//! Verifying a password costs tens of milliseconds of CPU by design (argon2id): callers
//! on the async runtime must run [`Users::verify`] in `tokio::task::spawn_blocking`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{ARGON2ID_IDENT, Argon2};
use serde::{Deserialize, Serialize};

use super::{AddressGlob, RateLimit};

/// A users file that cannot be read, used or written. The text names the file, and for
/// a bad entry the user and the key, and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read.
    #[error(
        "cannot read the users file {path}: {source}; create it with `smarthost user add NAME --sender PATTERN` or correct [auth] users_file"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has a key that does not belong.
    #[error("users file {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the key where the parser knows it.
        message: String,
    },
    /// One `[[user]]` entry is invalid.
    #[error("users file {path}: {user}: `{key}`: {message}")]
    Entry {
        /// The file.
        path: PathBuf,
        /// The entry: `user[1] "billing"`.
        user: String,
        /// The key at fault.
        key: &'static str,
        /// What is wrong and what is valid.
        message: String,
    },
    /// The file could not be written.
    #[error("cannot write the users file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The file as written.
#[derive(Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    user: Vec<RawUser>,
}

/// One `[[user]]` as written.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password_hash: String,
    #[serde(default)]
    allowed_senders: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_limit: Option<String>,
}

/// One user who may authenticate.
#[derive(Clone)]
pub struct User {
    /// The name given in AUTH.
    pub name: String,
    /// The argon2id PHC string (checked to parse when loaded).
    password_hash: String,
    /// Addresses the user may send as (envelope sender and From); at least one.
    pub allowed_senders: Vec<AddressGlob>,
    /// Most messages per period, if limited.
    pub rate_limit: Option<RateLimit>,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("password_hash", &"<redacted>")
            .field("allowed_senders", &self.allowed_senders)
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

impl User {
    /// A new user whose password is hashed here: argon2id, default parameters, a random
    /// salt. CPU-heavy (see the module documentation).
    pub fn new(
        name: &str,
        password: &str,
        allowed_senders: Vec<AddressGlob>,
        rate_limit: Option<RateLimit>,
    ) -> Result<User, String> {
        check_name(name)?;
        if password.is_empty() {
            return Err("the password is empty; give one".into());
        }
        if allowed_senders.is_empty() {
            return Err("give at least one allowed sender pattern, e.g. `*@example.com`".into());
        }
        Ok(User {
            name: name.to_owned(),
            password_hash: hash_password(password)?,
            allowed_senders,
            rate_limit,
        })
    }

    /// Whether `password` is this user's. Constant-time in the comparison (argon2's
    /// verifier); CPU-heavy.
    pub fn verify(&self, password: &str) -> bool {
        verify_hash(&self.password_hash, password)
    }

    /// Whether the user may send as `address` (envelope sender or From).
    pub fn may_send_as(&self, address: &str) -> bool {
        super::any_matches(&self.allowed_senders, address)
    }
}

/// Every user of a users file, in file order.
#[derive(Clone, Debug, Default)]
pub struct Users {
    users: Vec<User>,
}

impl Users {
    /// Read and check the file at `path`; a missing file is an error.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.to_owned(),
            source,
        })?;
        Users::parse(&text, path)
    }

    /// [`Users::load`], but a file that does not exist yet is empty (for `user add`).
    pub fn load_or_empty(path: &Path) -> Result<Users, UsersError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Users::default()),
            _ => Users::load(path),
        }
    }

    /// Check the text of a users file; `path` is for the errors.
    pub fn parse(text: &str, path: &Path) -> Result<Users, UsersError> {
        let syntax = |message: String| UsersError::Syntax {
            path: path.to_owned(),
            message,
        };
        let de = toml::Deserializer::parse(text).map_err(|e| syntax(toml_error(&e, text)))?;
        let raw: RawFile = serde_path_to_error::deserialize(de)
            .map_err(|e| syntax(format!("`{}`: {}", e.path(), toml_error(e.inner(), text))))?;
        let mut users = Users::default();
        for (i, entry) in raw.user.into_iter().enumerate() {
            let label = format!("user[{i}] {:?}", entry.name);
            let user = checked(entry).map_err(|(key, message)| UsersError::Entry {
                path: path.to_owned(),
                user: label.clone(),
                key,
                message,
            })?;
            if users.get(&user.name).is_some() {
                return Err(UsersError::Entry {
                    path: path.to_owned(),
                    user: label,
                    key: "name",
                    message: "another user has this name; names must be unique".into(),
                });
            }
            users.users.push(user);
        }
        Ok(users)
    }

    /// The user named `name`.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Every user, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.users.iter()
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `name` is a user and `password` is theirs. An unknown name costs the same
    /// work as a known one, so timing does not tell which names exist. CPU-heavy: run it
    /// in `spawn_blocking`.
    pub fn verify(&self, name: &str, password: &str) -> bool {
        match self.get(name) {
            Some(user) => user.verify(password),
            None => {
                let _ = verify_hash(dummy_hash(), password);
                false
            }
        }
    }

    /// Add `user`, or replace the one of that name when `replace` is set; an existing
    /// name without `replace` is an error.
    pub fn insert(&mut self, user: User, replace: bool) -> Result<(), String> {
        match self.users.iter_mut().find(|u| u.name == user.name) {
            Some(_) if !replace => Err(format!(
                "user {:?} exists already; give --replace to change its password and settings",
                user.name
            )),
            Some(existing) => {
                *existing = user;
                Ok(())
            }
            None => {
                self.users.push(user);
                Ok(())
            }
        }
    }

    /// Remove the user named `name`; whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.users.len();
        self.users.retain(|u| u.name != name);
        self.users.len() != before
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let raw = RawFile {
            user: self.users.iter().map(raw_user).collect(),
        };
        toml::to_string(&raw).expect("strings and lists of strings always serialize")
    }

    /// Write the file atomically: a temp file (mode 0600) in the same directory, fsync,
    /// rename over `path`, fsync the directory. A missing directory is created (0700).
    pub fn save(&self, path: &Path) -> Result<(), UsersError> {
        super::write_private_file(path, self.to_toml().as_bytes()).map_err(|source| {
            UsersError::Write {
                path: path.to_owned(),
                source,
            }
        })
    }
}

/// The parser's message on one line, with the line it is about (instead of the
/// parser's drawing of that line).
fn toml_error(error: &toml::de::Error, text: &str) -> String {
    let message = error
        .message()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match error.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message,
    }
}

/// Check one entry; on error the key and the message.
fn checked(raw: RawUser) -> Result<User, (&'static str, String)> {
    check_name(&raw.name).map_err(|m| ("name", m))?;
    check_hash(&raw.password_hash).map_err(|m| ("password_hash", m))?;
    if raw.allowed_senders.is_empty() {
        return Err((
            "allowed_senders",
            "is missing or empty: list the addresses this user may send as, e.g. [\"*@example.com\"]".into(),
        ));
    }
    let allowed_senders = raw
        .allowed_senders
        .iter()
        .map(|text| AddressGlob::parse(text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| ("allowed_senders", m))?;
    let rate_limit = raw
        .rate_limit
        .map(RateLimit::try_from)
        .transpose()
        .map_err(|m| ("rate_limit", m))?;
    Ok(User {
        name: raw.name,
        password_hash: raw.password_hash,
        allowed_senders,
        rate_limit,
    })
}

fn raw_user(user: &User) -> RawUser {
    RawUser {
        name: user.name.clone(),
        password_hash: user.password_hash.clone(),
        allowed_senders: user
            .allowed_senders
            .iter()
            .map(|g| g.as_str().to_owned())
            .collect(),
        rate_limit: user.rate_limit.map(|r| r.to_string()),
    }
}

/// A user name: `[A-Za-z0-9._@-]+`.
fn check_name(name: &str) -> Result<(), String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || ".-_@".contains(c);
    if name.is_empty() || !name.chars().all(valid) {
        return Err(format!(
            "{name:?} is not a user name: use letters, digits and . _ @ - only (e.g. \"billing\" or \"app@example.com\")"
        ));
    }
    Ok(())
}

/// An argon2id PHC string whose parameters argon2 accepts. The hash itself is never
/// part of the message.
fn check_hash(hash: &str) -> Result<(), String> {
    let fix = "write it with `smarthost user add NAME --replace`";
    let parsed =
        PasswordHash::new(hash).map_err(|e| format!("is not a PHC string ({e}); {fix}"))?;
    if parsed.algorithm != ARGON2ID_IDENT {
        return Err(format!("uses {}, not argon2id; {fix}", parsed.algorithm));
    }
    argon2::Params::try_from(&parsed)
        .map_err(|e| format!("has invalid argon2 parameters ({e}); {fix}"))?;
    if parsed.hash.is_none() || parsed.salt.is_none() {
        return Err(format!("has no salt or no hash; {fix}"));
    }
    Ok(())
}

/// Hash `password` with argon2id, default parameters and a random 16-byte salt.
fn hash_password(password: &str) -> Result<String, String> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| format!("salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// argon2's verifier: it hashes `password` with the parameters and salt of `hash` and
/// compares the outputs in constant time.
fn verify_hash(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A hash to verify against for unknown names, made once.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("no such user").unwrap_or_default())
}

#[cfg(test)]
mod tests;
