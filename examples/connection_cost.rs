//! What a proxy pays per connection (open, a transfer each way, close), native engine against
//! component, in interleaved rounds of thread CPU time: the figure the criterion bench
//! `connections` gives too, made steady on a shared machine. Each round runs a block of
//! connections on each backend, one after the other, and measures the CPU time of this thread
//! alone; the report gives each round's ratio and the medians.
//!
//! `cargo run --release --example connection_cost [ROUNDS] [CONNECTIONS] [BATCH] [OTHER.wasm]`
//! (defaults 15, 20 000 and 32: the calls of 32 connections per crossing, as the proxy
//! gathers them; 1 for one crossing per connection). With a component file as the fourth
//! argument (another build of the guest, `ctwasm component -o` of another checkout), it runs
//! in the same rounds too, for a side-by-side of two builds.
//!
//! The table holds a steady 10 000 connections, as in the bench: simulated time moves 100 µs
//! per connection and TIME_WAIT lasts 1 s, so each connection's expiry and DESTROY are paid
//! within the round.

use ctwasm_core::tuple::{Addr, Direction, Family, L4Tuple, Tuple, ipproto};
use ctwasm_core::{ConnCall, ConnRef, Ending};
use ctwasm_host::backend::{Backend, BackendKind, TrackerSettings, open_backend};

const STEP_NS: u64 = 100_000;

fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(r, 0);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

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

/// One backend and where its clock and connection numbers stand.
struct Runner {
    backend: Box<dyn Backend>,
    n: u64,
    now: u64,
    calls: Vec<ConnCall>,
    results: Vec<Result<ctwasm_core::ConnHandle, ctwasm_core::ConnError>>,
}

impl Runner {
    fn new(kind: BackendKind) -> Runner {
        Runner::with(open_backend(kind, &settings(), None).expect("a backend"))
    }

    fn from_file(path: &str) -> Runner {
        use ctwasm_host::backend::{ComponentBackend, DEFAULT_MEMORY_LIMIT, shared_engine};
        let component = wasmtime::component::Component::from_file(shared_engine(), path)
            .unwrap_or_else(|e| panic!("{path}: {e:#}"));
        let backend =
            ComponentBackend::with_component(&component, &settings(), DEFAULT_MEMORY_LIMIT)
                .unwrap_or_else(|e| panic!("{path}: {e:#}"));
        Runner::with(Box::new(backend))
    }

    fn with(mut backend: Box<dyn Backend>) -> Runner {
        backend.set_listeners(false, false).expect("listeners");
        Runner {
            backend,
            n: 0,
            now: 1_000_000_000,
            calls: Vec::new(),
            results: Vec::new(),
        }
    }

    /// Runs `connections` connections, `batch` per crossing; returns the CPU ns they took.
    fn run(&mut self, connections: u64, batch: u64) -> u64 {
        let started = thread_cpu_ns();
        for _ in 0..connections / batch {
            self.calls.clear();
            for _ in 0..batch {
                self.now += STEP_NS;
                self.n += 1;
                let opened = ConnRef::Opened(self.calls.len() as u32);
                self.calls.push(ConnCall::Open {
                    zone: 0,
                    tuple: client_tuple(self.n),
                    first_bytes: 0,
                });
                for (dir, bytes) in [(Direction::Original, 1_000), (Direction::Reply, 16_000)] {
                    self.calls.push(ConnCall::Transfer {
                        conn: opened,
                        dir,
                        bytes,
                    });
                }
                self.calls.push(ConnCall::Close {
                    conn: opened,
                    ending: Ending::CLIENT_FIN,
                });
            }
            self.results.clear();
            self.backend
                .connection_calls(self.now, &self.calls, &mut self.results)
                .expect("calls");
            assert!(self.results.iter().all(Result::is_ok));
        }
        thread_cpu_ns() - started
    }
}

fn settings() -> TrackerSettings {
    TrackerSettings {
        sysctls: vec![
            ("nf_conntrack_max".into(), "1000000".into()),
            ("nf_conntrack_tcp_timeout_time_wait".into(), "1".into()),
        ],
        ..TrackerSettings::default()
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let arg = |i: usize, default: u64| {
        std::env::args()
            .nth(i)
            .map_or(default, |a| a.parse().expect("a whole number"))
    };
    let (rounds, connections, batch) = (arg(1, 15), arg(2, 20_000), arg(3, 32).max(1));
    let mut native = Runner::new(BackendKind::Native);
    let mut component = Runner::new(BackendKind::Component);
    let mut other = std::env::args().nth(4).map(|p| Runner::from_file(&p));
    // Warm-up: the table fills to its steady size, the code and caches warm.
    native.run(connections, batch);
    component.run(connections, batch);
    if let Some(o) = other.as_mut() {
        o.run(connections, batch);
    }
    let per = |ns: u64| ns as f64 / connections as f64 / 1e3;
    let (mut n_us, mut c_us, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut o_us, mut o_ratios) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let n = per(native.run(connections, batch));
        let c = per(component.run(connections, batch));
        print!(
            "round {round:2}: native {n:.3} µs, component {c:.3} µs per connection, ratio {:.2}",
            c / n
        );
        if let Some(o) = other.as_mut() {
            let o = per(o.run(connections, batch));
            print!("; other {o:.3} µs, ratio {:.2}", o / n);
            o_us.push(o);
            o_ratios.push(o / n);
        }
        println!();
        n_us.push(n);
        c_us.push(c);
        ratios.push(c / n);
    }
    print!(
        "medians of {rounds} rounds ({connections} connections each, {batch} per crossing): \
         native {:.3} µs, component {:.3} µs per connection; ratio {:.2}",
        median(&mut n_us),
        median(&mut c_us),
        median(&mut ratios)
    );
    if other.is_some() {
        print!(
            "; other {:.3} µs, ratio {:.2}",
            median(&mut o_us),
            median(&mut o_ratios)
        );
    }
    println!();
}
