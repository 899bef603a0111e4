//! Throughput of message data framing: `DataReader` (inbound `DATA`) and `encode_data`
//! (outbound `DATA`).
//!
//! Run with `cargo bench --bench data_reader`; kept short (3 s of measurement per case).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use smarthost::proto::{DataReader, Framing, encode_data};

/// Size of one socket read in the large cases.
const CHUNK: usize = 16 * 1024;

/// Message content (not yet dot-stuffed) of about `size` bytes: a header block and
/// body lines of 40–78 characters, some of them starting with a dot.
fn message(size: usize, eol: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 128);
    let headers: [&[u8]; 8] = [
        b"Received: from app1.internal (app1.internal [10.0.0.5]) by relay.example.com with ESMTP",
        b"From: Billing <billing@example.com>",
        b"To: Customer <customer@example.org>",
        b"Subject: Your invoice for November",
        b"Date: Sun, 22 Nov 2026 01:00:00 +0000",
        b"Message-ID: <20261122010000.12345@app1.example.com>",
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=utf-8",
    ];
    for h in headers {
        out.extend_from_slice(h);
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(eol);
    let words = [
        "the",
        "invoice",
        "amount",
        "due",
        "payment",
        "account",
        "please",
        "contact",
        "support",
        "thank",
        "you",
        "for",
        "your",
        "business",
        "reference",
        "number",
    ];
    let mut seed: u32 = 0x9e37_79b9;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    while out.len() < size {
        let target = 40 + (next() % 39) as usize;
        let mut line = String::with_capacity(target + 8);
        if next() % 50 == 0 {
            line.push('.');
        }
        while line.len() < target {
            if !line.is_empty() && !line.ends_with('.') {
                line.push(' ');
            }
            line.push_str(words[(next() as usize) % words.len()]);
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(eol);
    }
    out
}

/// The bytes a client sends after `DATA`: dot-stuffed content and the terminator. With a
/// bare-LF `eol` the stuffing is redone by hand so the line endings stay bare LF, and the
/// terminator is the real `CRLF.CRLF`.
fn wire(content: &[u8], eol: &[u8]) -> Vec<u8> {
    if eol == b"\r\n" {
        let mut out = Vec::new();
        encode_data(content, &mut out);
        return out;
    }
    let mut out = Vec::with_capacity(content.len() + content.len() / 64 + 8);
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b"\r\n.\r\n");
    out
}

/// Read one `DATA` body the way the server does: one socket read at a time.
fn read_data(input: &[u8], chunk: usize, out: &mut Vec<u8>) -> usize {
    out.clear();
    let mut reader = DataReader::new(Framing::Dot, u64::MAX);
    let mut pos = 0;
    for piece in input.chunks(chunk) {
        let (used, done) = reader.feed(piece, out);
        pos += used;
        if done {
            return pos;
        }
    }
    panic!("no end of data in the benchmark input");
}

fn bench_data_reader(c: &mut Criterion) {
    let mut group = c.benchmark_group("data_reader");
    let cases: [(&str, usize, &[u8]); 3] = [
        ("4KiB_crlf", 4 * 1024, b"\r\n"),
        ("1MiB_crlf", 1024 * 1024, b"\r\n"),
        ("1MiB_bare_lf", 1024 * 1024, b"\n"),
    ];
    for (name, size, eol) in cases {
        let input = wire(&message(size, eol), eol);
        let mut out = Vec::with_capacity(input.len() * 2);
        assert_eq!(read_data(&input, CHUNK, &mut out), input.len());
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_with_input(BenchmarkId::new("feed", name), &input, |b, input| {
            b.iter(|| read_data(black_box(input), CHUNK, &mut out));
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_data");
    let content = message(1024 * 1024, b"\r\n");
    let mut out = Vec::with_capacity(content.len() * 2);
    group.throughput(Throughput::Bytes(content.len() as u64));
    group.bench_with_input(
        BenchmarkId::new("encode", "1MiB_crlf"),
        &content,
        |b, content| {
            b.iter(|| {
                out.clear();
                encode_data(black_box(content), &mut out);
                out.len()
            });
        },
    );
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_data_reader, bench_encode
}
criterion_main!(benches);
