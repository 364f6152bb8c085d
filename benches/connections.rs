//! What a proxy pays per connection: `open`, a `transfer` each way and `close`, native engine
//! and component side by side, and one `transfer` of growing size (it must not grow with the
//! byte count).
//!
//! `per-connection/quiet`: no event listener, so the calls do the tracking alone.
//! `per-connection/events`: a listener is present, and after each connection its events (NEW,
//! the state changes, later the DESTROY) are taken and reported delivered, as a host must.
//! `per-connection-batched/N`: quiet, the calls of N connections in one `connection_calls`
//! crossing (N = 1, and 32 as a proxy that gathers its connections' calls); throughput is per
//! connection.
//! Simulated time moves 100 µs per connection and TIME_WAIT lasts 1 s, so the table holds a
//! steady 10 000 entries and each connection's expiry (with its DESTROY) is paid inside the
//! measurement, as a proxy pays it. Times are the measuring thread's CPU time
//! (`common::ThreadCpu`). Run with `cargo bench --bench connections`; the README quotes the
//! medians and ratios of one run; `examples/connection_cost.rs` gives the same figure in
//! interleaved rounds, steadier on a shared machine.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ctwasm_core::tuple::{Addr, Direction, Family, L4Tuple, Tuple, ipproto};
use ctwasm_core::{ConnCall, ConnRef, Ending};
use ctwasm_host::backend::{Backend, BackendKind, TrackerSettings, open_backend};

mod common;
use common::{ThreadCpu, drain};

const S: u64 = 1_000_000_000;
const STEP_NS: u64 = 100_000;

fn backend(kind: BackendKind, listener: bool) -> Box<dyn Backend> {
    let settings = TrackerSettings {
        sysctls: vec![
            ("nf_conntrack_max".into(), "1000000".into()),
            ("nf_conntrack_tcp_timeout_time_wait".into(), "1".into()),
        ],
        ..TrackerSettings::default()
    };
    let mut b = open_backend(kind, &settings, None).expect("a backend");
    b.set_listeners(listener, false).expect("listeners");
    b
}

/// The client leg of connection number `n`: 64 Ki source ports on each of 256 addresses.
fn client_tuple(n: u64) -> Tuple {
    Tuple {
        family: Family::Ipv4,
        src: Addr::v4([10, 1, (n >> 16) as u8, 1]),
        dst: Addr::v4([10, 2, 0, 1]),
        proto: ipproto::TCP,
        l4: L4Tuple::Ports {
            src: n as u16 | 1024,
            dst: 443,
        },
    }
}

fn per_connection(c: &mut Criterion<ThreadCpu>) {
    let mut group = c.benchmark_group("per-connection");
    group.throughput(Throughput::Elements(1));
    for listener in [false, true] {
        for kind in [BackendKind::Native, BackendKind::Component] {
            let mut b = backend(kind, listener);
            let (mut events, mut results) = (Vec::new(), Vec::new());
            let (mut n, mut now) = (0u64, S);
            let name = format!("{kind:?}").to_lowercase();
            let variant = if listener { "events" } else { "quiet" };
            group.bench_function(BenchmarkId::new(variant, name), |bench| {
                bench.iter(|| {
                    now += STEP_NS;
                    n += 1;
                    let id = b.open(now, 0, &client_tuple(n)).unwrap().unwrap();
                    b.transfer(now, id, Direction::Original, 1_000)
                        .unwrap()
                        .unwrap();
                    b.transfer(now, id, Direction::Reply, 16_000)
                        .unwrap()
                        .unwrap();
                    b.close(now, id, Ending::CLIENT_FIN).unwrap().unwrap();
                    if listener {
                        drain(b.as_mut(), &mut events, &mut results);
                    }
                    black_box(id)
                })
            });
        }
    }
    group.finish();
}

/// The same connections through `connection_calls`, `per_call` connections in one crossing:
/// open, a transfer each way and close, the later calls naming the open by its index.
fn batched(c: &mut Criterion<ThreadCpu>) {
    let mut group = c.benchmark_group("per-connection-batched");
    for per_call in [1u64, 32] {
        group.throughput(Throughput::Elements(per_call));
        for kind in [BackendKind::Native, BackendKind::Component] {
            let mut b = backend(kind, false);
            let (mut n, mut now) = (0u64, S);
            let mut calls = Vec::new();
            let mut results = Vec::new();
            let name = format!("{kind:?}").to_lowercase();
            group.bench_function(BenchmarkId::new(name, per_call), |bench| {
                bench.iter(|| {
                    calls.clear();
                    for _ in 0..per_call {
                        now += STEP_NS;
                        n += 1;
                        let opened = ConnRef::Opened(calls.len() as u32);
                        calls.push(ConnCall::Open {
                            zone: 0,
                            tuple: client_tuple(n),
                            first_bytes: 0,
                        });
                        for (dir, bytes) in
                            [(Direction::Original, 1_000), (Direction::Reply, 16_000)]
                        {
                            calls.push(ConnCall::Transfer {
                                conn: opened,
                                dir,
                                bytes,
                            });
                        }
                        calls.push(ConnCall::Close {
                            conn: opened,
                            ending: Ending::CLIENT_FIN,
                        });
                    }
                    results.clear();
                    b.connection_calls(now, &calls, &mut results).unwrap();
                    black_box(&results);
                })
            });
        }
    }
    group.finish();
}

/// One `transfer` of 1 KiB to 10 GiB on an established connection: flat if it is O(1).
fn transfer_size(c: &mut Criterion<ThreadCpu>) {
    let mut group = c.benchmark_group("transfer-size");
    for kind in [BackendKind::Native, BackendKind::Component] {
        let mut b = backend(kind, false);
        let id = b.open(S, 0, &client_tuple(1)).unwrap().unwrap();
        let name = format!("{kind:?}").to_lowercase();
        for bytes in [1u64 << 10, 1 << 20, 1 << 30, 10 << 30] {
            group.bench_function(BenchmarkId::new(&name, bytes), |bench| {
                bench.iter(|| {
                    b.transfer(S, id, Direction::Original, black_box(bytes))
                        .unwrap()
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu).sample_size(30).measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = per_connection, batched, transfer_size
}
criterion_main!(benches);
