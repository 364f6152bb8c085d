//! Replay time against the number of flows in a capture: it must grow linearly. The end of a
//! replay runs simulated time on until every entry has expired and every DESTROY has been read,
//! and it used to ask for the tracker's statistics at every simulated step, which walked the
//! whole table (20 000 flows took 1.5 s, 100 000 flows 62 s, 300 000 flows 392 s). Run with
//! `cargo bench --bench replay`; the time per flow should stay flat from 20 000 to 1 000 000.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ctwasm_core::batch::EventFrame;
use ctwasm_core::netlink::CtMessage;
use ctwasm_core::wire::build;
use ctwasm_host::backend::{BackendKind, TrackerSettings, open_backend};
use ctwasm_host::capture::CapturedPacket;
use ctwasm_host::listener::Listeners;
use ctwasm_host::replay::{EventSink, ReplayOptions, replay};

/// One UDP request per flow, 10 µs apart, as a capture would hold them.
fn capture(flows: u32) -> Vec<CapturedPacket> {
    (0..flows)
        .map(|i| {
            let client = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
            let l4 = build::udp(1024 + (i % 60_000) as u16, 53, 32);
            CapturedPacket::new(
                1_000_000_000 + u64::from(i) * 10_000,
                build::ipv4(client, [192, 0, 2, 1], 17, &l4),
            )
        })
        .collect()
}

/// Reads every event and keeps nothing, as a replay to /dev/null would.
struct Discard;

impl EventSink for Discard {
    fn event(&mut self, _: &EventFrame<'_>, _: &CtMessage) -> anyhow::Result<()> {
        Ok(())
    }
}

fn replay_to_the_end(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay/expire-at-end");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for flows in [20_000u32, 100_000, 300_000, 1_000_000] {
        let packets = capture(flows);
        group.throughput(Throughput::Elements(u64::from(flows)));
        group.bench_function(BenchmarkId::new("native", flows), |bench| {
            bench.iter(|| {
                let settings = TrackerSettings {
                    sysctls: vec![("nf_conntrack_max".into(), "2000000".into())],
                    ..TrackerSettings::default()
                };
                let mut backend = open_backend(BackendKind::Native, &settings, None).unwrap();
                let options = ReplayOptions {
                    batch: 32,
                    expire_at_end: true,
                    ..ReplayOptions::default()
                };
                let report = replay(
                    backend.as_mut(),
                    Listeners::lossless(),
                    &packets,
                    &options,
                    &mut Discard,
                    |_| {},
                )
                .unwrap();
                assert_eq!(report.stats.count, 0);
                report
            })
        });
    }
    group.finish();
}

criterion_group!(benches, replay_to_the_end);
criterion_main!(benches);
