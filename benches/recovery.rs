//! What recovering from a guest fault costs: restoring a fresh component instance from the last
//! checkpoint (a snapshot of `N` live entries) and replaying a journal of 64 calls, which is
//! what `ResilientBackend` does after a trap or an overrun deadline. Also the checkpoint itself
//! (the snapshot taken every `checkpoint_every` calls), which crosses the component boundary in
//! pieces of 16 MiB. Run with `cargo bench --bench recovery`.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ctwasm_core::batch::push_packet;
use ctwasm_core::wire::build;
use ctwasm_host::backend::{
    Backend, ComponentBackend, DEFAULT_CALL_DEADLINE, DEFAULT_MEMORY_LIMIT, TrackerSettings,
    embedded_component,
};

const S: u64 = 1_000_000_000;

fn udp_packet(flow: u32) -> Vec<u8> {
    let client = [10, (flow >> 16) as u8, (flow >> 8) as u8, flow as u8];
    build::ipv4(
        client,
        [192, 0, 2, 1],
        17,
        &build::udp(1024 + (flow % 60_000) as u16, 53, 32),
    )
}

/// A component holding `entries` live UDP entries, events taken and delivered.
fn loaded(entries: u32) -> ComponentBackend {
    let settings = TrackerSettings {
        sysctls: vec![("nf_conntrack_max".into(), "4000000".into())],
        ..TrackerSettings::default()
    };
    let mut b = ComponentBackend::new(&settings).unwrap();
    b.set_listeners(false, false).unwrap();
    let mut batch = Vec::new();
    let mut verdicts = Vec::new();
    for chunk in (0..entries).collect::<Vec<_>>().chunks(10_000) {
        batch.clear();
        for &flow in chunk {
            push_packet(&mut batch, S, 0, &udp_packet(flow));
        }
        b.ingest(S, &batch, &mut verdicts).unwrap();
    }
    assert_eq!(b.stats().unwrap().entries, u64::from(entries));
    b
}

fn recovery(c: &mut Criterion) {
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    let component = embedded_component().unwrap();
    for entries in [100_000u32, 1_000_000] {
        let mut b = loaded(entries);
        let snapshot = b.snapshot().unwrap();
        // A journal of 64 calls: 63 batches of 32 packets of known flows, and an advance.
        let journal: Vec<Vec<u8>> = (0..63u32)
            .map(|i| {
                let mut batch = Vec::new();
                for k in 0..32 {
                    push_packet(&mut batch, 2 * S, 0, &udp_packet((i * 32 + k) % entries));
                }
                batch
            })
            .collect();
        group.bench_function(BenchmarkId::new("checkpoint", entries), |bench| {
            bench.iter(|| b.snapshot().unwrap())
        });
        group.bench_function(BenchmarkId::new("restore-and-replay", entries), |bench| {
            bench.iter(|| {
                let mut fresh = ComponentBackend::restore_with(
                    component,
                    &snapshot,
                    DEFAULT_MEMORY_LIMIT,
                    DEFAULT_CALL_DEADLINE,
                )
                .unwrap();
                let mut verdicts = Vec::new();
                for batch in &journal {
                    fresh.ingest(2 * S, batch, &mut verdicts).unwrap();
                }
                fresh.advance(3 * S).unwrap();
                fresh
            })
        });
    }
    group.finish();
}

criterion_group!(benches, recovery);
criterion_main!(benches);
