//! What the benches share.

use ctwasm_core::Delivery;
use ctwasm_host::backend::Backend;

/// Takes every pending event and reports it delivered, as a lossless host does.
pub fn drain(b: &mut dyn Backend, events: &mut Vec<u8>, results: &mut Vec<Delivery>) {
    loop {
        events.clear();
        let n = b.take_events(u32::MAX, events).unwrap();
        if n == 0 {
            return;
        }
        results.clear();
        results.resize(n, Delivery::Delivered);
        b.report_delivery(results).unwrap();
    }
}

/// The CPU time of the measuring thread, for criterion (`Criterion::with_measurement`): these
/// machines are shared, and wall time counts every moment another process had the core. The
/// component runs on the calling thread (wasmtime has no threads of its own in a call), so the
/// thread's CPU time is all a call costs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadCpu;

impl ThreadCpu {
    fn now_ns() -> u64 {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid timespec for the call to fill; the clock id is a constant the
        // kernel knows.
        let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
    }
}

impl criterion::measurement::Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        Self::now_ns()
    }
    fn end(&self, start: u64) -> u64 {
        Self::now_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, value: &u64) -> f64 {
        *value as f64
    }
    fn formatter(&self) -> &dyn criterion::measurement::ValueFormatter {
        &CpuFormatter
    }
}

/// Formats nanoseconds of CPU time (`cpu ns`, `cpu µs`, ...), and elements per CPU second.
struct CpuFormatter;

impl criterion::measurement::ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical < 1e3 {
            (1.0, "cpu ns")
        } else if typical < 1e6 {
            (1e-3, "cpu µs")
        } else if typical < 1e9 {
            (1e-6, "cpu ms")
        } else {
            (1e-9, "cpu s")
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }
    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &criterion::Throughput,
        values: &mut [f64],
    ) -> &'static str {
        use criterion::Throughput as T;
        let (per, unit) = match *throughput {
            T::Bytes(n) | T::BytesDecimal(n) => (n as f64, "B/cpu s"),
            T::Bits(n) => (n as f64, "bit/cpu s"),
            T::Elements(n) | T::ElementsAndBytes { elements: n, .. } => (n as f64, "elem/cpu s"),
        };
        values.iter_mut().for_each(|v| *v = per * 1e9 / *v);
        unit
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}
