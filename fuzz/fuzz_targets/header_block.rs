//! Arbitrary bytes into the header-block splitter, `smarthost::transform::headers`.
//!
//! The input is the message content as it is, any bytes and line endings. Nothing may
//! panic, and for `msg = Parsed::parse(input)`, `out = msg.to_bytes()`:
//!
//! 1. the header block of `out` is fields in the strict form (`Name:` without white space
//!    before the colon) and their continuations, every line ending in LF;
//! 2. the body is the input's tail, byte for byte: `out` ends with it, and it starts at
//!    a line the splitter cannot read as a field (or at the empty line, or at the end);
//!    between header block and body there is exactly one empty line when both exist;
//! 3. nothing is changed without a repair: with no repairs, `out` is the input;
//! 4. splitting `out` again finds the same fields and body (now after the inserted empty
//!    line, if one was missing) and nothing to repair: the output is a fixed point. Only
//!    a message without any field still "misses" its empty line, which `to_bytes` inserts
//!    only after a field.

#![no_main]

use libfuzzer_sys::fuzz_target;
use smarthost::transform::headers::{Line, Parsed, Repair, classify};

fuzz_target!(|input: &[u8]| {
    let msg = Parsed::parse(input);
    let out = msg.to_bytes();

    // 2. The body is the input's tail and starts where no field can be.
    assert!(
        input.ends_with(&msg.body),
        "the body is not the input's tail"
    );
    let body_start = input.len() - msg.body.len();
    assert!(
        body_start == 0 || msg.body.is_empty() || input[body_start - 1] == b'\n',
        "the body starts inside a line"
    );
    if !msg.body.is_empty() {
        let line_end = msg
            .body
            .iter()
            .position(|b| *b == b'\n')
            .map_or(msg.body.len(), |i| i + 1);
        let first = classify(&msg.body[..line_end], body_start == 0);
        assert!(
            matches!(first, Line::Empty | Line::Body),
            "a {first:?} line was put into the body"
        );
    }
    assert!(
        out.ends_with(&msg.body),
        "the output does not end with the body"
    );

    // 1. The header block: strict fields and continuations.
    let header: Vec<u8> = msg
        .fields
        .iter()
        .flat_map(|f| [f.name.as_bytes(), b":", &f.raw_value].concat())
        .collect();
    assert!(
        out.starts_with(&header),
        "the output does not start with the fields"
    );
    let mut first = true;
    for line in header.split_inclusive(|b| *b == b'\n') {
        assert!(line.ends_with(b"\n"), "a header line without line ending");
        match classify(line, first) {
            Line::Field { name_end, colon } => assert_eq!(name_end, colon, "obsolete name"),
            Line::Continuation => assert!(!first),
            other => panic!(
                "{other:?} in the header block: {:?}",
                String::from_utf8_lossy(line)
            ),
        }
        first = false;
    }
    let between = &out[header.len()..out.len() - msg.body.len()];
    let separated = msg.body.starts_with(b"\r\n") || msg.body.starts_with(b"\n");
    let inserted = !msg.fields.is_empty() && !msg.body.is_empty() && !separated;
    if inserted {
        assert_eq!(between, b"\r\n", "the missing empty line is inserted");
        assert!(msg.repairs.contains(&Repair::MissingSeparator));
    } else {
        assert!(between.is_empty(), "bytes between the fields and the body");
    }

    // 3. No repair, no change.
    if msg.repairs.is_empty() {
        assert!(out == input, "changed without a repair");
    }

    // 4. A fixed point.
    let again = Parsed::parse(&out);
    assert_eq!(
        again.fields, msg.fields,
        "the fields change on a second pass"
    );
    if inserted {
        assert!(
            again.body == [&b"\r\n"[..], &msg.body].concat(),
            "the body changes on a second pass"
        );
    } else {
        assert!(again.body == msg.body, "the body changes on a second pass");
    }
    assert!(
        again.repairs.is_empty()
            || (msg.fields.is_empty() && again.repairs == [Repair::MissingSeparator]),
        "a second pass repairs again: {:?}",
        again.repairs
    );
    assert!(again.to_bytes() == out, "not a fixed point");
});
