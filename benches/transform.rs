//! Messages per second through the transform stage on one core: the acceptance-time
//! normaliser (`normalize`: a sloppy From rewritten, Date and Message-ID added) followed
//! by the delivery-time DKIM signature (`Transformer::for_upstream`), for 4 KiB and
//! 100 KiB messages, with an rsa-sha256 (2048-bit) and an ed25519-sha256 key. The
//! normaliser alone is measured too, to show what signing costs.
//!
//! Each iteration is one message (`Throughput::Elements(1)`), so criterion's `elem/s` is
//! messages per second; the benchmark runs on one thread, so that is per core.
//! Run: `cargo bench --bench transform` (about a minute).

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use smarthost::config::{DkimAlgorithm, DkimConfig};
use smarthost::message::QueueId;
use smarthost::proto::{Address, ReversePath};
use smarthost::transform::Transformer;
use smarthost::transform::dkim::DkimKeys;
use smarthost::transform::normalize::{Acceptance, normalize};

/// A message of `size` octets as a legacy app sends it: raw UTF-8 display name, no Date,
/// no Message-ID; a plain-text body of 76-character lines.
fn message(size: usize) -> Vec<u8> {
    let mut m = "From: 张三 <zhangsan@example.com>\r\nTo: Someone <user@example.net>\r\nSubject: Your order has shipped\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n".as_bytes().to_vec();
    let line = b"The quick brown fox jumps over the lazy dog, and then it does so again....\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m.resize(size - 2, b'x');
    m.extend_from_slice(b"\r\n");
    m
}

fn transformer(dir: &std::path::Path, algorithm: DkimAlgorithm) -> Transformer {
    let keys = DkimKeys::load(&[DkimConfig {
        domain: "example.com".into(),
        selector: "bench".into(),
        key_file: dir.join(format!("{algorithm}.pem")),
        algorithm,
        generate: true,
    }])
    .expect("generate the key");
    Transformer::new(keys)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sender = ReversePath::Mailbox(Address::parse("app@example.com").unwrap());
    let ctx = Acceptance {
        sender: &sender,
        hostname: "relay.bench",
        smtputf8: false,
        id: QueueId::parse("00000000000000AA").unwrap(),
        now: SystemTime::now(),
    };
    let sizes = [("4KiB", 4 * 1024), ("100KiB", 100 * 1024)];

    let mut group = c.benchmark_group("transform");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(1));

    for (label, size) in sizes {
        let msg = message(size);
        group.bench_with_input(BenchmarkId::new("normalize", label), &msg, |b, msg| {
            b.iter(|| normalize(black_box(msg), &ctx).expect("normalised"))
        });
    }
    for algorithm in [DkimAlgorithm::RsaSha256, DkimAlgorithm::Ed25519Sha256] {
        let transformer = transformer(dir.path(), algorithm);
        for (label, size) in sizes {
            let msg = message(size);
            // The check that this is a signing benchmark at all.
            let signed = transformer
                .for_upstream(&normalize(&msg, &ctx).unwrap(), None)
                .unwrap();
            assert!(signed.starts_with(b"DKIM-Signature: "), "signed");
            group.bench_with_input(
                BenchmarkId::new(format!("normalize+sign/{algorithm}"), label),
                &msg,
                |b, msg| {
                    b.iter(|| {
                        let normalised = normalize(black_box(msg), &ctx).expect("normalised");
                        transformer.for_upstream(&normalised, None).expect("signed")
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
