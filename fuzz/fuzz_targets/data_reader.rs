//! Message data framing: `DataReader` (inbound) and `encode_data` (outbound).
//!
//! Input layout: byte 0 = `n` (mod 16), bytes 1..=n = chunk sizes the body is fed in
//! (cycled; 0 = an empty feed; n = 0 means byte by byte), next byte = size limit
//! selector, the rest = the body as it would arrive on the socket after `DATA`.
//!
//! Invariants (Dot framing, unless noted):
//! 1. Feeding in chunks gives the same output and the same end position as one feed;
//!    `feed` consumes whole chunks until it reports the end.
//! 2. The output has only CRLF line endings: no bare CR, no bare LF.
//! 3. The end is reported only right after a `CRLF . CRLF` (or `. CRLF` at the start).
//! 4. Round trip / no smuggling: `encode_data(output)` read by a fresh reader gives the
//!    output back (plus the CRLF the encoder adds to an unfinished last line) and ends
//!    exactly at the end of the encoded bytes, never earlier.
//! 5. `encode_data(raw body)` read back gives the body with its line endings normalised
//!    (as Counted framing + `finish` normalises them) and ends exactly at its end.
//! 6. A size limit changes neither the end nor `content_len`; it flags the overflow
//!    exactly when the content is longer than the limit and then keeps only a prefix.
//! 7. Counted framing never panics, never ends, consumes everything, is chunking-proof
//!    and after `finish` has only CRLF line endings.

#![no_main]

use libfuzzer_sys::fuzz_target;
use smarthost::proto::{DataReader, Framing, encode_data};

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (sizes, rest) = rest.split_at(n);
    let Some((&limit_sel, body)) = rest.split_first() else {
        return;
    };
    let mut sizes: Vec<usize> = sizes.iter().map(|&s| usize::from(s)).collect();
    if sizes.iter().all(|&s| s == 0) {
        sizes = vec![1];
    }

    // 1. One feed vs. chunked feeds.
    let (whole, end) = read_whole(Framing::Dot, u64::MAX, body);
    let (chunked, chunked_end) = read_chunked(Framing::Dot, body, &sizes);
    assert_eq!(whole, chunked, "chunking changed the output");
    assert_eq!(end, chunked_end, "chunking changed the end");

    // 2. CRLF only.
    assert_crlf_only(&whole);

    // 3. Where the end may be.
    if let Some(end) = end {
        let read = &body[..end];
        assert!(
            read == b".\r\n" || read.ends_with(b"\r\n.\r\n"),
            "ended at {end} after {:?}",
            tail(read)
        );
        assert!(whole.is_empty() || whole.ends_with(b"\r\n"));
    }

    // 4. Re-encoding what we read can never end early or change it.
    let mut expected = whole.clone();
    if !expected.is_empty() && !expected.ends_with(b"\r\n") {
        expected.extend_from_slice(b"\r\n");
    }
    assert_round_trip(&whole, &expected);

    // 5. Encoding the raw body: the outbound side on its own.
    let (mut normalised, counted_end) = read_whole(Framing::Counted, u64::MAX, body);
    assert_eq!(counted_end, None, "counted framing reported an end");
    if !normalised.is_empty() && !normalised.ends_with(b"\r\n") {
        normalised.extend_from_slice(b"\r\n");
    }
    assert_round_trip(body, &normalised);

    // 6. Size limit.
    let limit = match limit_sel {
        255 => u64::MAX,
        s => u64::from(s) * 3,
    };
    let mut limited = Vec::new();
    let mut reader = DataReader::new(Framing::Dot, limit);
    let (used, done) = reader.feed(body, &mut limited);
    assert_eq!(done.then_some(used), end, "limit changed the end");
    assert_eq!(reader.content_len(), whole.len() as u64, "content_len");
    assert_eq!(
        reader.is_over_limit(),
        whole.len() as u64 > limit,
        "is_over_limit"
    );
    if reader.is_over_limit() {
        assert!(limited.len() as u64 <= limit && whole.starts_with(&limited));
    } else {
        assert_eq!(limited, whole);
    }

    // 7. Counted framing.
    let (counted_chunked, counted_chunked_end) = read_chunked(Framing::Counted, body, &sizes);
    assert_eq!(counted_chunked_end, None);
    let mut counted_whole = Vec::new();
    let mut reader = DataReader::new(Framing::Counted, u64::MAX);
    assert_eq!(reader.feed(body, &mut counted_whole), (body.len(), false));
    reader.finish(&mut counted_whole);
    assert_eq!(
        counted_whole, counted_chunked,
        "chunking changed counted output"
    );
    assert_crlf_only(&counted_whole);
});

/// One feed, then `finish` for Counted framing. Returns the output and the end position.
fn read_whole(framing: Framing, limit: u64, input: &[u8]) -> (Vec<u8>, Option<usize>) {
    let mut out = Vec::new();
    let mut reader = DataReader::new(framing, limit);
    let (used, done) = reader.feed(input, &mut out);
    assert!(used <= input.len());
    if !done {
        assert_eq!(used, input.len(), "stopped early without an end");
    }
    if framing == Framing::Counted {
        reader.finish(&mut out);
    }
    (out, done.then_some(used))
}

/// Feed `input` in chunks of the given sizes (cycled) until the end is seen.
fn read_chunked(framing: Framing, input: &[u8], sizes: &[usize]) -> (Vec<u8>, Option<usize>) {
    let mut out = Vec::new();
    let mut reader = DataReader::new(framing, u64::MAX);
    let mut pos = 0;
    for &size in sizes.iter().cycle() {
        if pos >= input.len() {
            break;
        }
        let chunk = &input[pos..(pos + size).min(input.len())];
        let (used, done) = reader.feed(chunk, &mut out);
        assert!(used <= chunk.len());
        pos += used;
        if done {
            return (out, Some(pos));
        }
        assert_eq!(used, chunk.len(), "stopped early without an end");
    }
    if framing == Framing::Counted {
        reader.finish(&mut out);
    }
    (out, None)
}

/// `encode_data(content)` read back by a fresh Dot reader gives `expected` and ends
/// exactly at the end of the encoded bytes.
fn assert_round_trip(content: &[u8], expected: &[u8]) {
    let mut wire = Vec::new();
    encode_data(content, &mut wire);
    assert!(wire.ends_with(b".\r\n"));
    let mut back = Vec::new();
    let mut reader = DataReader::new(Framing::Dot, u64::MAX);
    let (used, done) = reader.feed(&wire, &mut back);
    assert!(done, "encoded data never ended: {:?}", tail(&wire));
    assert_eq!(
        used,
        wire.len(),
        "encoded data ended early (smuggling) at {used} of {}",
        wire.len()
    );
    assert_eq!(back, expected, "round trip changed the content");
}

/// Every CR is followed by LF and every LF preceded by CR.
fn assert_crlf_only(bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(
                bytes.get(i + 1),
                Some(&b'\n'),
                "bare CR at {i}: {:?}",
                tail(&bytes[..=i])
            ),
            b'\n' => assert!(
                i > 0 && bytes[i - 1] == b'\r',
                "bare LF at {i}: {:?}",
                tail(&bytes[..=i])
            ),
            _ => {}
        }
    }
}

fn tail(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(40)..]).into_owned()
}
