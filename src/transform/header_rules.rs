//! `[[header_rule]]`: the operator's changes to the client's header block.
//!
//! They run at acceptance, once per message, right after the repairs of
//! [`super::normalize`] and before our `Received` header is put on top, so a rule sees
//! (and may remove) only the fields the client sent or the repairs added, never ours.
//! What they produce is what the spool keeps and what DKIM signs at delivery.
//!
//! Names compare without case (RFC 5322 §1.2.2). Validation (`config::validate`) has
//! made sure that a rule never names a field the transform owns (From, Sender, Date,
//! Message-ID, DKIM-Signature), that `set` and `add` have a value and that the value is
//! one line of printable text.

use super::headers::Parsed;
use crate::config::{HeaderAction, HeaderRule};

/// Apply `rules` to `msg` in order; returns whether a field changed.
pub fn apply(msg: &mut Parsed, rules: &[HeaderRule]) -> bool {
    let mut changed = false;
    for rule in rules {
        changed |= apply_one(msg, rule);
    }
    changed
}

fn apply_one(msg: &mut Parsed, rule: &HeaderRule) -> bool {
    // Validated: `set` and `add` always carry a value.
    let value = rule.value.as_deref().unwrap_or_default();
    match rule.action {
        HeaderAction::Remove => remove_all(msg, &rule.name, 0),
        HeaderAction::Set => set(msg, &rule.name, value),
        HeaderAction::Add => {
            msg.push(&rule.name, value);
            true
        }
    }
}

/// Remove every field called `name` from index `from` on; returns whether one went.
fn remove_all(msg: &mut Parsed, name: &str, from: usize) -> bool {
    let before = msg.fields.len();
    let mut index = 0;
    msg.fields.retain(|f| {
        let keep = index < from || !f.is(name);
        index += 1;
        keep
    });
    msg.fields.len() != before
}

/// The first field called `name` gets `value` (it keeps its place and the client's
/// spelling of the name) and the others go; without one, the field is appended.
fn set(msg: &mut Parsed, name: &str, value: &str) -> bool {
    let Some(first) = msg.fields.iter().position(|f| f.is(name)) else {
        msg.push(name, value);
        return true;
    };
    let wanted = format!(" {value}\r\n");
    let mut changed = msg.fields[first].raw_value != wanted.as_bytes();
    if changed {
        msg.set(first, value);
    }
    changed |= remove_all(msg, name, first + 1);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(action: HeaderAction, name: &str, value: Option<&str>) -> HeaderRule {
        HeaderRule {
            action,
            name: name.into(),
            value: value.map(str::to_owned),
        }
    }

    fn remove(name: &str) -> HeaderRule {
        rule(HeaderAction::Remove, name, None)
    }

    fn set_to(name: &str, value: &str) -> HeaderRule {
        rule(HeaderAction::Set, name, Some(value))
    }

    fn add(name: &str, value: &str) -> HeaderRule {
        rule(HeaderAction::Add, name, Some(value))
    }

    /// `content` with `rules` applied: the text and whether anything changed.
    fn run(content: &str, rules: &[HeaderRule]) -> (String, bool) {
        let mut msg = Parsed::parse(content.as_bytes());
        let changed = apply(&mut msg, rules);
        (String::from_utf8(msg.to_bytes()).unwrap(), changed)
    }

    const MESSAGE: &str = "Received: from app (internal)\r\n\tby hop1\r\nX-Mailer: PHPMailer 6.0\r\nSubject: s\r\nx-mailer: second\r\n\tfolded\r\nTo: b@x\r\n\r\nX-Mailer: in the body\r\n";

    #[test]
    fn remove_takes_every_field_of_the_name_in_any_case_and_leaves_the_body() {
        let (out, changed) = run(MESSAGE, &[remove("X-MAILER")]);
        assert!(changed);
        assert_eq!(
            out,
            "Received: from app (internal)\r\n\tby hop1\r\nSubject: s\r\nTo: b@x\r\n\r\nX-Mailer: in the body\r\n"
        );
        let (out, _) = run(MESSAGE, &[remove("received")]);
        assert!(out.starts_with("X-Mailer: PHPMailer 6.0\r\n"), "{out}");
    }

    #[test]
    fn remove_of_an_absent_field_changes_nothing() {
        let (out, changed) = run(MESSAGE, &[remove("X-Absent")]);
        assert!(!changed);
        assert_eq!(out, MESSAGE);
    }

    #[test]
    fn set_replaces_the_first_in_place_and_removes_the_others() {
        let (out, changed) = run(MESSAGE, &[set_to("X-Mailer", "relay")]);
        assert!(changed);
        assert_eq!(
            out,
            "Received: from app (internal)\r\n\tby hop1\r\nX-Mailer: relay\r\nSubject: s\r\nTo: b@x\r\n\r\nX-Mailer: in the body\r\n"
        );
        // The client's spelling of the name stays; only the value is the rule's.
        let (out, _) = run("x-env: dev\r\n\r\nb\r\n", &[set_to("X-Env", "prod")]);
        assert_eq!(out, "x-env: prod\r\n\r\nb\r\n");
    }

    #[test]
    fn set_appends_an_absent_field_at_the_end_of_the_header_block() {
        let (out, changed) = run(
            "Subject: s\r\nTo: b@x\r\n\r\nb\r\n",
            &[set_to("X-Env", "prod")],
        );
        assert!(changed);
        assert_eq!(out, "Subject: s\r\nTo: b@x\r\nX-Env: prod\r\n\r\nb\r\n");
    }

    #[test]
    fn set_to_the_value_already_there_changes_nothing() {
        let content = "X-Env: prod\r\nSubject: s\r\n\r\nb\r\n";
        let (out, changed) = run(content, &[set_to("x-env", "prod")]);
        assert!(!changed);
        assert_eq!(out, content);
        // ... but a duplicate still goes.
        let (out, changed) = run(
            "X-Env: prod\r\nX-Env: prod\r\n\r\nb\r\n",
            &[set_to("X-Env", "prod")],
        );
        assert!(changed);
        assert_eq!(out, "X-Env: prod\r\n\r\nb\r\n");
    }

    #[test]
    fn add_appends_one_more_field_even_if_one_exists() {
        let (out, changed) = run("X-Tag: a\r\nSubject: s\r\n\r\nb\r\n", &[add("X-Tag", "b")]);
        assert!(changed);
        assert_eq!(out, "X-Tag: a\r\nSubject: s\r\nX-Tag: b\r\n\r\nb\r\n");
    }

    #[test]
    fn rules_apply_in_order() {
        let content = "X-Tag: old\r\nSubject: s\r\n\r\nb\r\n";
        // add, then remove: nothing of the name is left.
        let (out, _) = run(content, &[add("X-Tag", "new"), remove("x-tag")]);
        assert_eq!(out, "Subject: s\r\n\r\nb\r\n");
        // remove, then add: only the added one.
        let (out, _) = run(content, &[remove("x-tag"), add("X-Tag", "new")]);
        assert_eq!(out, "Subject: s\r\nX-Tag: new\r\n\r\nb\r\n");
        // add twice, then set: the first one gets the value, the second goes.
        let (out, _) = run(
            "Subject: s\r\n\r\nb\r\n",
            &[add("X-Tag", "1"), add("X-Tag", "2"), set_to("X-TAG", "3")],
        );
        assert_eq!(out, "Subject: s\r\nX-Tag: 3\r\n\r\nb\r\n");
    }

    #[test]
    fn no_rules_change_nothing() {
        let (out, changed) = run(MESSAGE, &[]);
        assert!(!changed);
        assert_eq!(out, MESSAGE);
    }
}
