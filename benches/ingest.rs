//! `ingest` throughput, native engine and component side by side.
//!
//! Two workloads at batch sizes 1, 32 and 256: packets of established UDP flows (lookup,
//! tracker, counters; no events) and packets that each open a new flow (allocation, id, two
//! hash inserts, a NEW event taken and reported, and the expiry of older flows as simulated time
//! moves on). Each measurement includes taking the batch's events and reporting them delivered,
//! since a host must; the component numbers include the boundary crossing, which the
//! `boundary` group measures on its own. Times are the measuring thread's CPU time
//! (`common::ThreadCpu`). Run with `cargo bench --bench ingest`; the README quotes the medians
//! and ratios of one run.

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ctwasm_core::Delivery;
use ctwasm_core::batch::push_packet;
use ctwasm_core::wire::build;
use ctwasm_host::backend::{Backend, BackendKind, TrackerSettings, open_backend};

mod common;
use common::{ThreadCpu, drain};

const S: u64 = 1_000_000_000;
const FLOWS: u32 = 4096;

fn udp_packet(flow: u32, reply: bool) -> Vec<u8> {
    let client = [10, (flow >> 16) as u8, (flow >> 8) as u8, flow as u8];
    let server = [192, 0, 2, 1];
    let sport = 1024 + (flow % 60_000) as u16;
    if reply {
        build::ipv4(server, client, 17, &build::udp(53, sport, 32))
    } else {
        build::ipv4(client, server, 17, &build::udp(sport, 53, 32))
    }
}

fn backend(kind: BackendKind) -> Box<dyn Backend> {
    let settings = TrackerSettings {
        sysctls: vec![
            ("nf_conntrack_max".into(), "4000000".into()),
            ("nf_conntrack_udp_timeout".into(), "2".into()),
        ],
        ..TrackerSettings::default()
    };
    open_backend(kind, &settings, None).expect("a backend")
}

fn established(c: &mut Criterion<ThreadCpu>) {
    let mut group = c.benchmark_group("ingest/established");
    for kind in [BackendKind::Native, BackendKind::Component] {
        for batch in [1usize, 32, 256] {
            let mut b = backend(kind);
            let (mut events, mut results) = (Vec::new(), Vec::new());
            // Open the flows (request and reply), then replay requests on them.
            let mut setup = Vec::new();
            for flow in 0..FLOWS {
                push_packet(&mut setup, S, 0, &udp_packet(flow, false));
                push_packet(&mut setup, S, 0, &udp_packet(flow, true));
            }
            let mut v = Vec::new();
            b.ingest(S, &setup, &mut v).unwrap();
            drain(b.as_mut(), &mut events, &mut results);
            let batches: Vec<Vec<u8>> = (0..FLOWS as usize / batch)
                .map(|i| {
                    let mut bytes = Vec::new();
                    for j in 0..batch {
                        push_packet(&mut bytes, 0, 0, &udp_packet((i * batch + j) as u32, false));
                    }
                    bytes
                })
                .collect();
            group.throughput(Throughput::Elements(batch as u64));
            let name = format!("{kind:?}").to_lowercase();
            let mut next = 0usize;
            let mut verdicts = Vec::with_capacity(batch);
            group.bench_function(BenchmarkId::new(name, batch), |bench| {
                bench.iter(|| {
                    verdicts.clear();
                    // Same instant: the flows never time out while being measured.
                    b.ingest(
                        S + 1,
                        black_box(&batches[next % batches.len()]),
                        &mut verdicts,
                    )
                    .unwrap();
                    next += 1;
                    drain(b.as_mut(), &mut events, &mut results);
                    black_box(&verdicts);
                })
            });
        }
    }
    group.finish();
}

fn new_connections(c: &mut Criterion<ThreadCpu>) {
    let mut group = c.benchmark_group("ingest/new");
    for kind in [BackendKind::Native, BackendKind::Component] {
        for batch in [1usize, 32, 256] {
            let mut b = backend(kind);
            let (mut events, mut results) = (Vec::new(), Vec::new());
            let mut flow = 0u32;
            let mut now = S;
            group.throughput(Throughput::Elements(batch as u64));
            let name = format!("{kind:?}").to_lowercase();
            let mut verdicts = Vec::with_capacity(batch);
            group.bench_function(BenchmarkId::new(name, batch), |bench| {
                bench.iter_batched_ref(
                    || {
                        let mut bytes = Vec::new();
                        for _ in 0..batch {
                            push_packet(&mut bytes, 0, 0, &udp_packet(flow % (1 << 24), false));
                            flow += 1;
                        }
                        // 1 ms per batch: with a 2 s timeout the table holds a steady
                        // population and expiry runs alongside creation.
                        now += 1_000_000;
                        (bytes, now)
                    },
                    |(bytes, now)| {
                        verdicts.clear();
                        b.ingest(*now, bytes, &mut verdicts).unwrap();
                        drain(b.as_mut(), &mut events, &mut results);
                        black_box(&verdicts);
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

/// What one crossing of the component boundary costs, to weigh calls per batch: an empty
/// `take-events` (what a host pays after a batch that raised no event) and `report-delivery`
/// with 1, 32 and 256 outcomes (what a cumulative report, one count instead of a list, would
/// save).
fn boundary(c: &mut Criterion<ThreadCpu>) {
    let mut group = c.benchmark_group("boundary/component");
    let mut b = backend(BackendKind::Component);
    let mut events = Vec::new();
    group.bench_function("take-events-empty", |bench| {
        bench.iter(|| {
            events.clear();
            black_box(b.take_events(u32::MAX, &mut events).unwrap())
        })
    });
    for n in [1usize, 32, 256] {
        let results = vec![Delivery::Delivered; n];
        group.bench_function(BenchmarkId::new("report-delivery", n), |bench| {
            bench.iter(|| b.report_delivery(black_box(&results)).unwrap())
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu).sample_size(30).measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = established, new_connections, boundary
}
criterion_main!(benches);
