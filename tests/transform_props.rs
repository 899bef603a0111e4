//! Properties of the mailbox rewriter, for arbitrary display names (non-ASCII, quotes,
//! backslashes, specials, control characters, encoded-word look-alikes, long) and valid
//! addresses:
//!
//! * what `render` writes is one mailbox in the strict form (`is_strict_mailbox`), no
//!   line longer than 78 characters, and `parse_mailboxes` reads back the same name
//!   (white space tidied: runs become one space, control characters go) and address;
//! * a sloppy From made of such a name (raw UTF-8, quoted or as bare words) comes out of
//!   `normalize` strict, folded at 78, with the same name and address, and normalising
//!   the result again changes nothing.
//!
//! Addresses are kept short enough (at most 68 characters) that `<address>` fits on a
//! continuation line: a longer one cannot be folded at 78, whatever the renderer does.

use std::time::UNIX_EPOCH;

use proptest::prelude::*;
use smarthost::message::QueueId;
use smarthost::proto::{Address, ReversePath};
use smarthost::transform::from_rewrite::{Mailbox, is_strict_mailbox, parse_mailboxes, render};
use smarthost::transform::headers::{Parsed, unfold};
use smarthost::transform::normalize::{Acceptance, normalize};

/// The name as the rewriter keeps it: control characters dropped, white space runs
/// made one space, trimmed; `None` if nothing is left.
fn tidied(name: &str) -> Option<String> {
    let kept: String = name
        .chars()
        .filter(|c| c.is_whitespace() || !c.is_control())
        .collect();
    let words: Vec<&str> = kept.split_whitespace().collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// RFC 5322 atext, the characters of an unquoted local part.
const ATEXT: &str = "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]";

fn local_part() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::string::string_regex(&format!("{ATEXT}{{1,12}}(\\.{ATEXT}{{1,8}}){{0,2}}"))
            .unwrap(),
        // A quoted local part: spaces and specials inside, quotes and backslashes escaped.
        1 => proptest::string::string_regex("([a-zA-Z0-9 .,:;<>@()\\[\\]]|\\\\\"|\\\\\\\\){1,12}")
            .unwrap()
            .prop_filter("not blank", |s| !s.trim().is_empty())
            .prop_map(|s| format!("\"{s}\"")),
    ]
}

fn domain() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 1..4),
        "[a-z]{2,6}",
    )
        .prop_map(|(labels, tld)| format!("{}.{tld}", labels.join(".")))
}

fn address() -> impl Strategy<Value = String> {
    (local_part(), domain())
        .prop_map(|(l, d)| format!("{l}@{d}"))
        .prop_filter("fits on a line", |a| a.len() <= 68)
        .prop_filter("a valid address", |a| Address::parse(a).is_ok())
}

fn display_name() -> impl Strategy<Value = String> {
    prop_oneof![
        // Anything at all, control characters included.
        any::<String>(),
        // Printable ASCII: specials, quotes, backslashes, runs of spaces and tabs.
        "[ -~\t]{0,100}",
        // Atoms and dots ("Dr. Who"), long enough to need folding.
        "([A-Za-z0-9]{1,12}[ .]{1,2}){0,15}",
        // Chinese, Latin with diacritics, emoji, mixed with ASCII.
        "[张三李四北京科技有限公司éüñçÅØ😀 a-z,.\"\\\\]{0,80}",
        // Encoded-word look-alikes, which must not decode into something else.
        "(=\\?(UTF-8|utf-8|x)\\?[BbQq]\\?[A-Za-z0-9+/=_]{0,12}\\?= ?){1,3}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn rendered_mailboxes_are_strict_short_and_read_back(
        name in display_name(),
        address in address(),
        header in prop_oneof![Just("From"), Just("Sender"), Just("Reply-To")],
    ) {
        let value = render(
            &[Mailbox { name: Some(name.clone()), address: address.clone() }],
            header,
        );
        let field = format!("{header}: {value}");
        for line in field.split("\r\n") {
            prop_assert!(line.len() <= 78, "line over 78: {line:?} in {field:?}");
            prop_assert!(!line.contains(['\r', '\n']), "bare CR or LF in {field:?}");
        }
        for line in field.split("\r\n").skip(1) {
            prop_assert!(line.starts_with(' '), "a continuation line starts with white space: {field:?}");
        }
        let unfolded = String::from_utf8(unfold(value.as_bytes())).unwrap();
        prop_assert!(is_strict_mailbox(&unfolded), "not strict: {unfolded:?}");
        let parsed = parse_mailboxes(&unfolded);
        prop_assert_eq!(
            parsed,
            vec![Mailbox { name: tidied(&name), address }],
            "read back from {:?}", unfolded
        );
    }
}

fn normalized(content: &[u8], smtputf8: bool) -> Vec<u8> {
    let sender = ReversePath::Mailbox(Address::parse("app@example.com").unwrap());
    let ctx = Acceptance {
        sender: &sender,
        hostname: "relay.test",
        smtputf8,
        id: QueueId::parse("00000000000000AA").unwrap(),
        now: UNIX_EPOCH,
    };
    normalize(content, &ctx).expect("a From with an address is never refused")
}

/// A sloppy From header value for `name` and `address`.
fn sloppy_from(name: &str, address: &str, form: u8) -> String {
    match form {
        // A quoted string with raw UTF-8 (not strict if non-ASCII).
        0 => {
            let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
            format!("\"{escaped}\" <{address}>")
        }
        // Bare words, as sloppy apps write them.
        1 => format!("{name} <{address}>"),
        // No space before the bracket.
        _ => format!("{name}<{address}>"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn sloppy_from_headers_come_out_strict_with_the_same_name_and_address(
        quoted_name in "[^\r\n\u{0}-\u{1f}\u{7f}]{0,90}",
        bare_name in "[A-Za-z0-9.'张三é😀-]{1,12}( [A-Za-z0-9.'张三é😀-]{1,12}){0,8}",
        address in address(),
        form in 0u8..3,
    ) {
        let name = if form == 0 { quoted_name } else { bare_name };
        let from = sloppy_from(&name, &address, form);
        let content = format!("From: {from}\r\nSubject: p\r\n\r\nbody\r\n");
        let out = normalized(content.as_bytes(), false);
        let msg = Parsed::parse(&out);
        let froms: Vec<_> = msg.fields.iter().filter(|f| f.is("From")).collect();
        prop_assert_eq!(froms.len(), 1);
        let raw = format!("From:{}", String::from_utf8(froms[0].raw_value.clone()).unwrap());
        // A value that was already strict is kept byte for byte, however long; one we
        // wrote ourselves is folded at 78.
        let kept = froms[0].raw_value == format!(" {from}\r\n").into_bytes();
        for line in raw.trim_end().split("\r\n") {
            prop_assert!(kept || line.len() <= 78, "line over 78: {line:?}");
        }
        let value = String::from_utf8(froms[0].unfolded()).unwrap();
        prop_assert!(is_strict_mailbox(&value), "not strict: {value:?} from {from:?}");
        let parsed = parse_mailboxes(&value);
        let want_name = tidied(&name);
        prop_assert_eq!(parsed, vec![Mailbox { name: want_name, address }], "from {:?}", from);
        prop_assert_eq!(normalized(&out, false), out, "normalising again changes it");
    }
}
