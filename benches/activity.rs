//! Cost of the status page's bookkeeping on the delivery path: what
//! `Activity::outcome` adds per delivered recipient (a per-minute ring, the upstream's
//! ring, an event), and `Activity::received` per accepted message.
//!
//! Run with `cargo bench --bench activity`; kept short (2 s of measurement per case).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use smarthost::telemetry::activity::{Activity, EventKind};

fn bookkeeping(c: &mut Criterion) {
    let activity = Activity::default();
    let mut group = c.benchmark_group("activity");
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("outcome per delivered recipient", |b| {
        b.iter(|| {
            activity.outcome(
                black_box("00066213FAE190E1"),
                black_box("customer@example.net"),
                EventKind::Delivered,
                Some(black_box("ses")),
                black_box("250 2.0.0 Ok: queued as 4F1A2B3C4D"),
            )
        })
    });
    group.bench_function("received per accepted message", |b| {
        b.iter(|| {
            activity.received(
                black_box("00066213FAE190E1"),
                black_box("<app@example.com>"),
                1,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bookkeeping);
criterion_main!(benches);
