//! `smarthost user add|list|delete`: manage the users file of `[auth] users_file`.
//! Every change rewrites the file atomically ([`Users::save`]); a running relay reads
//! it again on SIGHUP. Passwords and their hashes are never printed.

use std::fmt::Write as _;
use std::io::{BufRead, IsTerminal as _};
use std::path::Path;

use crate::config::{AddressGlob, RateLimit, Secret, User, Users};

/// What the operator is told after a change.
const RELOAD_HINT: &str = "reload (SIGHUP) a running relay to use it";

/// `user add`: its arguments, the password read already.
pub struct AddRequest {
    /// The user name.
    pub name: String,
    /// The password.
    pub password: Secret,
    /// `--sender` patterns.
    pub senders: Vec<String>,
    /// `--rate-limit`.
    pub rate_limit: Option<String>,
    /// `--replace`: an existing user of that name is changed instead of refused.
    pub replace: bool,
}

/// Add (or replace) a user in the file at `path`; the line to print.
pub fn add(path: &Path, request: AddRequest) -> Result<String, String> {
    let senders = request
        .senders
        .iter()
        .map(|s| AddressGlob::parse(s).map_err(|e| format!("--sender: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let rate_limit = request
        .rate_limit
        .map(|r| RateLimit::try_from(r).map_err(|e| format!("--rate-limit: {e}")))
        .transpose()?;
    let mut users = Users::load_or_empty(path).map_err(|e| e.to_string())?;
    let user = User::new(
        &request.name,
        request.password.expose(),
        senders,
        rate_limit,
    )?;
    users.insert(user, request.replace)?;
    users.save(path).map_err(|e| e.to_string())?;
    let verb = if request.replace {
        "saved in"
    } else {
        "added to"
    };
    Ok(format!(
        "user {:?} {verb} {}; {RELOAD_HINT}",
        request.name,
        path.display()
    ))
}

/// Remove a user from the file at `path`; the line to print.
pub fn delete(path: &Path, name: &str) -> Result<String, String> {
    let mut users = Users::load(path).map_err(|e| e.to_string())?;
    if !users.remove(name) {
        return Err(format!(
            "no user {name:?} in {}; `smarthost user list` shows who there is",
            path.display()
        ));
    }
    users.save(path).map_err(|e| e.to_string())?;
    Ok(format!(
        "user {name:?} deleted from {}; {RELOAD_HINT}",
        path.display()
    ))
}

/// One line per user: name, allowed senders, rate limit. A missing file has no users.
pub fn list(path: &Path) -> Result<String, String> {
    let users = Users::load_or_empty(path).map_err(|e| e.to_string())?;
    let mut text = format!("{} user(s) in {}\n", users.len(), path.display());
    for user in users.iter() {
        let senders: Vec<&str> = user.allowed_senders.iter().map(|g| g.as_str()).collect();
        let rate = user
            .rate_limit
            .map_or_else(|| "none".to_owned(), |r| r.to_string());
        let _ = writeln!(
            text,
            "{}\tallowed_senders={}\trate_limit={rate}",
            user.name,
            senders.join(",")
        );
    }
    Ok(text)
}

/// The new password: from a prompt (twice, without echo) when standard input is a
/// terminal, else the first line of standard input without its line ending. An empty
/// password is refused.
pub fn read_password(name: &str) -> Result<Secret, String> {
    let password = if std::io::stdin().is_terminal() {
        prompt_twice(name)?
    } else {
        first_line(std::io::stdin().lock())?
    };
    if password.is_empty() {
        return Err("the password is empty; give one (on standard input or at the prompt)".into());
    }
    Ok(Secret::new(password))
}

fn prompt_twice(name: &str) -> Result<String, String> {
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt).map_err(|e| format!("cannot read the password: {e}"))
    };
    let first = ask(&format!("Password for {name}: "))?;
    let second = ask("Again: ")?;
    if first != second {
        return Err("the two passwords differ; run the command again".into());
    }
    Ok(first)
}

/// The first line of `input`, without `\n` or `\r\n`.
fn first_line(mut input: impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    let end = line.trim_end_matches(['\r', '\n']).len();
    line.truncate(end);
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::first_line;

    #[test]
    fn the_password_is_the_first_line_without_its_ending() {
        assert_eq!(first_line(&b"s3cret\n"[..]).unwrap(), "s3cret");
        assert_eq!(first_line(&b"s3cret\r\nmore\n"[..]).unwrap(), "s3cret");
        assert_eq!(first_line(&b" spaced \n"[..]).unwrap(), " spaced ");
        assert_eq!(first_line(&b""[..]).unwrap(), "");
    }
}
