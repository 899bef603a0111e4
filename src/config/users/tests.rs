//! Tests of the users file: a good file, each mistake naming the file, the user and the
//! key, password verification, and the round trip through [`Users::save`].

use std::os::unix::fs::PermissionsExt as _;

use argon2::password_hash::{PasswordHasher as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use super::*;

/// A PHC string for `password` with the smallest parameters (fast tests); verification
/// takes the parameters from the string.
fn cheap_hash(password: &str, algorithm: Algorithm) -> String {
    let params = Params::new(8, 1, 1, None).unwrap();
    let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
    Argon2::new(algorithm, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

fn entry(name: &str, hash: &str, extra: &str) -> String {
    format!(
        "[[user]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\nallowed_senders = [\"*@example.com\"]\n{extra}\n"
    )
}

fn parse(text: &str) -> Result<Users, UsersError> {
    Users::parse(text, Path::new("users.toml"))
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn a_good_file_loads_every_user() {
    let hash = cheap_hash("s3cret", Algorithm::Argon2id);
    let text =
        entry("billing", &hash, "rate_limit = \"100/min\"") + &entry("app@example.com", &hash, "");
    let users = parse(&text).unwrap();
    assert_eq!(users.len(), 2);
    let billing = users.get("billing").unwrap();
    assert_eq!(billing.rate_limit.unwrap().to_string(), "100/min");
    assert!(billing.may_send_as("Invoices@Example.com"));
    assert!(!billing.may_send_as("x@other.test"));
    assert_eq!(users.get("app@example.com").unwrap().rate_limit, None);
    assert!(parse("").unwrap().is_empty(), "an empty file has no users");
}

#[test]
fn verify_takes_the_right_password_only() {
    let text = entry("billing", &cheap_hash("s3cret", Algorithm::Argon2id), "");
    let users = parse(&text).unwrap();
    assert!(users.verify("billing", "s3cret"));
    assert!(!users.verify("billing", "s3cret "));
    assert!(!users.verify("billing", ""));
    assert!(!users.verify("nobody", "s3cret"));
}

#[test]
fn a_new_user_gets_an_argon2id_hash_with_a_random_salt() {
    let senders = vec![AddressGlob::parse("*@example.com").unwrap()];
    let a = User::new("a", "pw", senders.clone(), None).unwrap();
    let b = User::new("b", "pw", senders.clone(), None).unwrap();
    assert!(a.password_hash.starts_with("$argon2id$v=19$"), "{a:?}");
    assert_ne!(a.password_hash, b.password_hash, "salts differ");
    assert!(a.verify("pw") && !a.verify("PW"));
    assert!(!format!("{a:?}").contains("argon2"), "Debug hides the hash");
    assert!(User::new("c", "", senders.clone(), None).is_err());
    assert!(User::new("c", "pw", Vec::new(), None).is_err());
    assert!(User::new("bad name", "pw", senders, None).is_err());
}

#[test]
fn each_mistake_names_the_file_the_user_and_the_key() {
    let good = cheap_hash("pw", Algorithm::Argon2id);
    let argon2i = cheap_hash("pw", Algorithm::Argon2i);
    let cases = [
        (
            entry("bad name", &good, ""),
            "users file users.toml: user[0] \"bad name\": `name`: \"bad name\" is not a user name",
        ),
        (
            entry("a", "plaintext", ""),
            "user[0] \"a\": `password_hash`: is not a PHC string",
        ),
        (
            entry("a", &argon2i, ""),
            "user[0] \"a\": `password_hash`: uses argon2i, not argon2id",
        ),
        (
            entry("a", &good, "rate_limit = \"lots\""),
            "user[0] \"a\": `rate_limit`: invalid rate \"lots\"",
        ),
        (
            format!("[[user]]\nname = \"a\"\npassword_hash = \"{good}\"\n"),
            "user[0] \"a\": `allowed_senders`: is missing or empty",
        ),
        (
            format!(
                "[[user]]\nname = \"a\"\npassword_hash = \"{good}\"\nallowed_senders = [\"example.com\"]\n"
            ),
            "user[0] \"a\": `allowed_senders`: `example.com` has no `@`",
        ),
        (
            entry("a", &good, "") + &entry("a", &good, ""),
            "user[1] \"a\": `name`: another user has this name",
        ),
        (
            entry("a", &good, "pasword = \"x\""),
            "users file users.toml: `user[0].pasword`: line 5: unknown field `pasword`",
        ),
        (
            "[[user]]\nname = \"a\"\n".to_owned(),
            "missing field `password_hash`",
        ),
        ("[[user]\n".to_owned(), "users file users.toml: line 1: "),
    ];
    for (text, want) in cases {
        let got = error(&text);
        assert!(got.contains(want), "{got}\nwanted: {want}");
        assert!(!got.contains(&good[20..]), "no hash in errors: {got}");
    }
}

#[test]
fn a_missing_file_is_an_error_with_the_fix_or_empty_for_user_add() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    let got = Users::load(&path).unwrap_err().to_string();
    assert!(got.contains(&path.display().to_string()), "{got}");
    assert!(got.contains("smarthost user add"), "{got}");
    assert!(Users::load_or_empty(&path).unwrap().is_empty());
}

#[test]
fn save_writes_a_private_file_that_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth/users.toml");
    let senders = vec![
        AddressGlob::parse("*@example.com").unwrap(),
        AddressGlob::parse("ops@example.net").unwrap(),
    ];
    let rate = Some(RateLimit::try_from("5/s".to_owned()).unwrap());
    let mut users = Users::default();
    users
        .insert(User::new("a", "pw", senders.clone(), rate).unwrap(), false)
        .unwrap();
    assert!(
        users
            .insert(User::new("a", "pw2", senders.clone(), None).unwrap(), false)
            .is_err()
    );
    users
        .insert(User::new("b", "pw2", senders, None).unwrap(), false)
        .unwrap();
    users.save(&path).unwrap();

    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("\"pw\""), "{text}");
    let back = Users::load(&path).unwrap();
    assert_eq!(back.len(), 2);
    assert!(back.verify("a", "pw") && back.verify("b", "pw2"));
    assert_eq!(
        back.get("a").unwrap().rate_limit.unwrap().to_string(),
        "5/s"
    );
    assert_eq!(back.get("a").unwrap().allowed_senders.len(), 2);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("auth"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["users.toml"], "no temp file left");

    let mut back = back;
    assert!(back.remove("a") && !back.remove("a"));
    back.save(&path).unwrap();
    assert_eq!(Users::load(&path).unwrap().len(), 1);
}
