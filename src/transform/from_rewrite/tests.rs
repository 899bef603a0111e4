use super::read::separate_mailboxes;
use super::write::cap_name;
use super::*;

#[test]
fn recognises_the_strict_forms() {
    for strict in [
        "a@example.com",
        "<noreply@acme.com>",
        "\"re- AI Radio\" <re-ai-radio@reload.com.cn>",
        "Support <support@acme.com>",
        "John Q Public <john@example.com>",
        "=?UTF-8?B?5byg5LiJ?= <zhangsan@qq.com>",
        "=?GB2312?B?1cXI/Q==?= <zhangsan@qq.com>",
        "\"a \\\"b\\\" c\" <x@y.z>",
        "Admin <admin@[192.0.2.1]>",
    ] {
        assert!(is_strict_mailbox(strict), "{strict}");
    }
    for sloppy in [
        "张三 <zhangsan@qq.com>",
        "Dr. Who <who@x.org>",
        "Support Team, ACME <support@acme.com>",
        "support@acme.com (Support)",
        "Two  Spaces <a@x.y>",
        "NoSpace<a@x.y>",
        "a@x.y, b@x.y",
        "<a@x.y> trailing",
        "Bob \"The Builder\" Smith <bob@x.org>",
        "",
    ] {
        assert!(!is_strict_mailbox(sloppy), "{sloppy}");
    }
}

fn first(value: &str) -> Mailbox {
    parse_mailboxes(value)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no mailbox in {value:?}"))
}

fn mailbox(name: Option<&str>, address: &str) -> Mailbox {
    Mailbox {
        name: name.map(str::to_owned),
        address: address.into(),
    }
}

#[test]
fn reads_sloppy_values() {
    assert_eq!(
        first("张三 <zhangsan@qq.com>"),
        mailbox(Some("张三"), "zhangsan@qq.com")
    );
    assert_eq!(
        first("Support Team, ACME <support@acme.com>"),
        mailbox(Some("Support Team, ACME"), "support@acme.com")
    );
    assert_eq!(
        first("Dr. Who <who@x.org>"),
        mailbox(Some("Dr. Who"), "who@x.org")
    );
    assert_eq!(
        first("support@acme.com (Support)"),
        mailbox(Some("Support"), "support@acme.com")
    );
    assert_eq!(
        first("Bob \"The Builder\" Smith <bob@x.org>"),
        mailbox(Some("Bob \"The Builder\" Smith"), "bob@x.org")
    );
    assert_eq!(
        first("\"Quoted, Name\" <q@x.org>"),
        mailbox(Some("Quoted, Name"), "q@x.org")
    );
    assert_eq!(
        first("=?UTF-8?B?5byg5LiJ?= <z@qq.com>"),
        mailbox(Some("张三"), "z@qq.com")
    );
    assert_eq!(
        first("first@x.org, second@x.org"),
        mailbox(None, "first@x.org")
    );
    assert_eq!(
        first("Team: one@x.org, two@x.org;"),
        mailbox(None, "one@x.org")
    );
    assert_eq!(
        first("first@x.org, Second <second@x.org>"),
        mailbox(None, "first@x.org")
    );
    assert_eq!(
        first("Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>"),
        mailbox(Some("Pete"), "pete@silly.test")
    );
    assert_eq!(
        first("Joe <joe..smith@example.com.>"),
        mailbox(Some("Joe"), "\"joe..smith\"@example.com")
    );
    assert!(parse_mailboxes("Undisclosed recipients:;").is_empty());
    assert!(parse_mailboxes("just a name").is_empty());
}

#[test]
fn mailboxes_without_their_comma_are_a_list() {
    assert_eq!(
        parse_mailboxes("A <a@x.org> B <b@x.org>"),
        [mailbox(Some("A"), "a@x.org"), mailbox(Some("B"), "b@x.org")]
    );
    assert_eq!(
        parse_mailboxes("A <a@x.org><b@x.org> C <c@x.org>"),
        [
            mailbox(Some("A"), "a@x.org"),
            mailbox(None, "b@x.org"),
            mailbox(Some("C"), "c@x.org")
        ]
    );
    assert_eq!(
        first("\"A <q@x.org> B\" <a@x.org> (c <c@x.org>) B <b@x.org>"),
        mailbox(Some("A <q@x.org> B"), "a@x.org")
    );
    assert_eq!(
        first("Team: A <a@x.org> B <b@x.org>;"),
        mailbox(Some("A"), "a@x.org")
    );
    // With the comma, or with one mailbox, nothing changes.
    for value in [
        "A <a@x.org>, B <b@x.org>",
        "<a@x.y> trailing",
        "Team: <a@x.org>, <b@x.org>;",
        "<@route:a@x.org>",
    ] {
        assert_eq!(separate_mailboxes(value), value);
    }
}

#[test]
fn renders_names_by_their_kind() {
    let r = |name: &str, addr: &str| render(&[mailbox(Some(name), addr)], "From");
    assert_eq!(
        r("张三", "zhangsan@qq.com"),
        "=?UTF-8?B?5byg5LiJ?= <zhangsan@qq.com>"
    );
    assert_eq!(
        r("Support Team, ACME", "support@acme.com"),
        "\"Support Team, ACME\" <support@acme.com>"
    );
    assert_eq!(r("Dr. Who", "who@x.org"), "\"Dr. Who\" <who@x.org>");
    assert_eq!(
        r("Support", "support@acme.com"),
        "Support <support@acme.com>"
    );
    assert_eq!(
        r("Bob \"The Builder\" Smith", "bob@x.org"),
        "\"Bob \\\"The Builder\\\" Smith\" <bob@x.org>"
    );
    assert_eq!(r("back\\slash", "b@x.org"), "\"back\\\\slash\" <b@x.org>");
    assert_eq!(render(&[mailbox(None, "a@x.org")], "From"), "<a@x.org>");
    assert_eq!(r(" \t\u{1}", "e@x.org"), "<e@x.org>");
    assert_eq!(r("a \u{1} b", "c@x.org"), "a b <c@x.org>");
    assert_eq!(
        r("=?UTF-8?B?5byg5LiJ?=", "l@x.org"),
        "=?UTF-8?B?PT9VVEYtOD9CPzVieWc1TGlKPz0=?= <l@x.org>"
    );
}

#[test]
fn long_non_ascii_names_fold_into_short_encoded_words() {
    let name = "非常长的显示名称".repeat(8);
    let value = render(&[mailbox(Some(&name), "a@example.com")], "From");
    let header = format!("From: {value}");
    for line in header.split("\r\n") {
        assert!(line.len() <= 78, "line too long: {line:?}");
    }
    for word in value.split_whitespace().filter(|w| w.starts_with("=?")) {
        assert!(word.len() <= 75 && is_encoded_word(word), "{word}");
    }
    let unfolded = value.replace("\r\n", "");
    assert!(is_strict_mailbox(&unfolded), "{unfolded}");
    assert_eq!(first(&unfolded), mailbox(Some(&name), "a@example.com"));
}

#[test]
fn bounded_values_read_like_the_unfolded_value() {
    for raw in [
        &b" A <a@x.org>\r\n"[..],
        b" \"Quoted, \\\"Name\" <q@x.org>\r\n",
        b" Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>\r\n",
        b" Team: one@x.org,\r\n two@x.org;\r\n",
        b" =?UTF-8?B?5byg5LiJ?=\r\n <z@qq.com>\r\n",
        b" <\">\"@x.org>, b@x.org\r\n",
        b" \xd5\xc5\xc8\xfd <zhangsan@qq.com>\r\n",
        b" a\rb <c@d.org>\r\n",
        b" a@x.org\r",
        b" \x80uro <e@x.org>\r\n",
    ] {
        let want = decode_raw(&crate::transform::headers::unfold(raw));
        assert_eq!(bounded_value(raw), (want, false), "{raw:?}");
    }
}

/// A value with a run of `n` octets of `unit` in the middle.
fn huge(before: &str, unit: &str, n: usize, after: &str) -> Vec<u8> {
    let mut raw = Vec::with_capacity(n + 100);
    raw.extend_from_slice(before.as_bytes());
    let mut line = 0;
    while raw.len() < n {
        raw.extend_from_slice(unit.as_bytes());
        line += unit.len();
        if line > 900 {
            raw.extend_from_slice(b"\r\n ");
            line = 0;
        }
    }
    raw.extend_from_slice(after.as_bytes());
    raw
}

#[test]
fn huge_values_are_cut_while_reading() {
    const N: usize = 4 << 20;
    for (raw, name) in [
        (huge(" ", "Big ", N, "<big@x.org>\r\n"), "Big"),
        (huge(" \"", "q\\\" ", N, "\" <big@x.org>\r\n"), "q\""),
        (huge(" big@x.org (", "c(o)m ", N, ")\r\n"), "c(o)m"),
        (
            huge(" ", "=?UTF-8?B?5byg5LiJ?= ", N, "<big@x.org>\r\n"),
            "张三",
        ),
        (huge(" ", "张三", N, " <big@x.org>\r\n"), "张三"),
    ] {
        let (value, cut) = bounded_value(&raw);
        assert!(cut);
        assert!(value.len() <= MAX_PHRASE_READ + 100, "{}", value.len());
        let read = parse_mailboxes(&value);
        assert_eq!(read.len(), 1, "{value}");
        assert_eq!(read[0].address, "big@x.org");
        let text = read[0].name.as_deref().unwrap();
        assert!(text.len() >= MAX_NAME_OCTETS, "{text}");
        assert!(text.starts_with(name), "{text}");
        let rendered = render(&read, "From");
        assert!(rendered.len() < 2 * MAX_NAME_OCTETS, "{rendered}");
        let unfolded = rendered.replace("\r\n", "");
        assert!(is_strict_mailbox(&unfolded), "{unfolded}");
        let again = parse_mailboxes(&unfolded);
        let capped = again[0].name.as_deref().unwrap();
        assert!(capped.len() <= MAX_NAME_OCTETS && text.starts_with(capped));
    }
    // A legacy charset is decoded through a small buffer, and cut the same way.
    let gbk = huge(" ", "\u{0}", N, "").len();
    let mut raw = b" ".to_vec();
    while raw.len() < gbk {
        raw.extend_from_slice(b"\xd5\xc5\xc8\xfd \r\n ");
    }
    raw.extend_from_slice(b"<big@x.org>\r\n");
    let (value, cut) = bounded_value(&raw);
    assert!(cut && value.len() <= MAX_PHRASE_READ + 100);
    let read = parse_mailboxes(&value);
    assert_eq!(read[0].address, "big@x.org");
    assert!(read[0].name.as_deref().unwrap().starts_with("张三 张三"));
    // An address that long is none; a list that long ends early.
    let (value, cut) = bounded_value(&huge(" A <", "a", N, "@x.org>, b@x.org\r\n"));
    assert!(cut);
    assert_eq!(value, " A <>, b@x.org");
    let (value, cut) = bounded_value(&huge(" ", "a@x.org, ", N, "last@x.org\r\n"));
    assert!(cut && value.len() <= MAX_VALUE_READ + 16, "{}", value.len());
    assert!(parse_mailboxes(&value).len() > 1000);
}

#[test]
fn long_lists_are_written_so_that_they_read_back_whole() {
    let raw = huge(" ", "a@x.org, ", 4 << 20, "last@x.org\r\n");
    let (value, cut) = bounded_value(&raw);
    assert!(cut);
    let read = parse_mailboxes(&value);
    let rendered = render(&read, "Reply-To");
    assert!(
        rendered.len() <= MAX_VALUE_READ / 2 + 100,
        "{}",
        rendered.len()
    );
    let (again, cut) = bounded_value(format!(" {rendered}\r\n").as_bytes());
    assert!(!cut);
    let reread = parse_mailboxes(&again);
    assert!(reread.len() > 1000 && reread.len() < read.len());
    assert_eq!(render(&reread, "Reply-To"), rendered);
}

#[test]
fn names_are_cut_at_a_character_boundary() {
    for (unit, kept) in [("a", 998), ("é", 998), ("张", 996), ("😀", 996)] {
        let name = unit.repeat(2000);
        let rendered = render(&[mailbox(Some(&name), "a@x.org")], "From");
        let unfolded = rendered.replace("\r\n", "");
        let read = first(&unfolded);
        assert_eq!(read.name.as_deref(), Some(&name[..kept]), "{unit}");
        assert!(is_strict_mailbox(&unfolded));
    }
    assert_eq!(cap_name(format!("{} b", "a".repeat(997))), "a".repeat(997));
    // A strict value is kept only with a name within the bound.
    let long = format!("{} <a@x.org>", "a".repeat(MAX_NAME_OCTETS + 1));
    assert!(!is_strict_mailbox(&long));
    assert!(is_strict_mailbox(&long[1..]));
}

#[test]
fn decodes_legacy_charsets() {
    let gbk = b"\xd5\xc5\xc8\xfd <zhangsan@qq.com>";
    assert_eq!(decode_raw(gbk), "张三 <zhangsan@qq.com>");
    assert_eq!(decode_raw("é <a@x.org>".as_bytes()), "é <a@x.org>");
    assert_eq!(decode_raw(b"\x80 \xe9"), "€ é");
    let long = b"\xd5\xc5\xc8\xfd".repeat(10_000);
    assert_eq!(decode_raw(&long), "张三".repeat(10_000));
}

#[test]
fn idn_domains_become_a_labels_without_smtputf8() {
    assert_eq!(
        ascii_domain("info@bücher.example", false),
        "info@xn--bcher-kva.example"
    );
    assert_eq!(
        ascii_domain("info@bücher.example", true),
        "info@bücher.example"
    );
    assert_eq!(ascii_domain("a@plain.example", false), "a@plain.example");
}
