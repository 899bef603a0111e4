//! Arbitrary bytes into every line-level parser of `smarthost::proto`.
//!
//! None of them may panic. Besides that, a few cheap properties are checked:
//! - the reply to a refused command line is well-formed on the wire (no bare CR or LF)
//!   and our own response parser reads it back whole, with the same code;
//! - `parse_response` never claims more bytes than it was given, and what it claims ends
//!   at a line feed;
//! - an address that `parse_mailbox` accepts prints as text that parses back to the same
//!   address, both on its own and inside `RCPT TO:<...>` (what goes upstream must mean
//!   what we accepted).

#![no_main]

use libfuzzer_sys::fuzz_target;
use smarthost::proto::address::{parse_mailbox, split_path};
use smarthost::proto::{Command, parse_command, parse_response};

fuzz_target!(|data: &[u8]| {
    // Server side: one command line.
    if let Err(err) = parse_command(data) {
        let reply = err.reply();
        let mut wire = Vec::new();
        reply.write_to(&mut wire);
        assert_well_formed_lines(&wire);
        let (resp, used) = parse_response(&wire)
            .expect("our own reply must parse")
            .expect("our own reply must be complete");
        assert_eq!(used, wire.len(), "reply read back partially: {wire:?}");
        assert_eq!(resp.code, reply.code);
    }

    // Client side: a server's reply.
    if let Ok(Some((_resp, used))) = parse_response(data) {
        assert!(used >= 1 && used <= data.len());
        assert_eq!(data[used - 1], b'\n');
    }

    // Envelope addresses, on the UTF-8-lossy text.
    let text = String::from_utf8_lossy(data);
    let _ = split_path(&text);
    if let Ok(addr) = parse_mailbox(&text) {
        let printed = addr.to_string();
        assert_eq!(
            parse_mailbox(&printed).as_ref(),
            Ok(&addr),
            "printed form {printed:?}"
        );
        let line = format!("RCPT TO:<{printed}>");
        match parse_command(line.as_bytes()) {
            Ok(Command::Rcpt { to }) => assert_eq!(to, addr, "via {line:?}"),
            other => panic!("{line:?} parsed as {other:?}"),
        }
    }
});

/// Every CR is followed by LF and every LF preceded by CR.
fn assert_well_formed_lines(bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(
                bytes.get(i + 1),
                Some(&b'\n'),
                "bare CR at {i} in {bytes:?}"
            ),
            b'\n' => assert!(
                i > 0 && bytes[i - 1] == b'\r',
                "bare LF at {i} in {bytes:?}"
            ),
            _ => {}
        }
    }
}
