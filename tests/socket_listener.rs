//! The seed's stress test with a real kernel buffer deciding the deliveries.
//!
//! `tests/reliability.rs` runs the stress test against simulated listeners, whose netlink rules
//! are a model. Here the listener is a real Unix datagram socket with a small buffer, sent to
//! without blocking, and read by a slow reader on the wall clock: a DESTROY is refused exactly
//! when the kernel refuses the send, and must then wait on the dying list until a retry gets
//! through. Which messages are refused depends on real timing, so the tests assert only what the
//! reliable contract promises whatever the timing — every connection's DESTROY read exactly once
//! — and that the kernel did refuse (else nothing was tested). Every wait has an absolute
//! deadline. The figures are printed (`--nocapture` shows them).
#![cfg(target_os = "linux")]

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ctwasm_core::RetryPolicy;
use ctwasm_host::backend::{BackendKind, open_backend};
use ctwasm_host::listener::{ListenerConfig, Listeners};
use ctwasm_host::stress::{self, StressOptions, StressReport};
use ctwasm_live::socket_listener::{
    ReadPace, SocketListener, SocketListenerConfig, SocketReader, Tally,
};

mod common;
use common::TempDir;

const NS_PER_S: u64 = 1_000_000_000;

/// The stress scenario of the simulated listeners, on the modern kernel's retry policy (first
/// retry 1 s after a failure, then every 10 ms while it fails), whose delays suit a run paced
/// on the wall clock.
fn options(flows: u64, reliable: bool) -> StressOptions {
    StressOptions {
        flows,
        flow_rate: 100_000.0,
        reliable,
        policy: RetryPolicy::Kernel,
        batch: 32,
        // Simulated time is paced 1:1 on the wall clock, so this bounds the run's real time too.
        horizon_ns: 60 * NS_PER_S,
        ..StressOptions::default()
    }
}

fn socket_config(reliable: bool) -> SocketListenerConfig {
    SocketListenerConfig {
        name: "conntrackd".into(),
        // Linux keeps at least 4608 bytes: about four event messages.
        buffer: 2048,
        broadcast_error: reliable,
        pace: Some(1.0),
        ..SocketListenerConfig::default()
    }
}

/// Runs the stress scenario with `listener` as the only listener (beside an observer of what
/// it took, as `ctwasm stress --socket` has, whose reads the report counts); returns the
/// engine's report.
fn run(listener: SocketListener, options: &StressOptions) -> StressReport {
    let mut listeners = Listeners::new([ListenerConfig::observer("observer")]);
    listeners.push_external(Box::new(listener));
    let mut backend = open_backend(BackendKind::Native, &options.settings(), None).unwrap();
    stress::run_with_listeners(backend.as_mut(), options, listeners, &mut |_| {}).unwrap()
}

/// The stress run against an in-process reader thread reading `rate` messages a second; also
/// the wall time of the whole run.
fn stress_with_reader(flows: u64, reliable: bool, rate: f64) -> (StressReport, Tally, Duration) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let (listener, socket) = SocketListener::pair(socket_config(reliable)).unwrap();
    let end = listener.end_handle().unwrap();
    let reader = SocketReader::spawn(socket, ReadPace { rate: Some(rate) }, deadline);
    let started = Instant::now();
    let report = run(listener, &options(flows, reliable));
    end.finish(deadline).unwrap();
    let tally = reader.join().unwrap();
    let wall = started.elapsed();
    assert!(tally.ended, "the reader hit its deadline before the end");
    // Simulated time ran 1:1 with the wall clock from the start, so the flush happened about
    // `flush_ns` after it.
    let flush_at = started + Duration::from_nanos(report.flush_ns);
    let drain = tally
        .last_destroy_at
        .map(|t| t.saturating_duration_since(flush_at).as_secs_f64());
    println!(
        "socket listener, {}: {} connections, {} DESTROYs received ({} distinct, {} duplicates), \
         {} messages read, sends refused {} in {} episodes, dying peak {}, drain {:.2?} s \
         (flush to last DESTROY read, wall), run {:.2} s (wall)",
        if reliable { "reliable" } else { "lossy" },
        report.summary.created,
        tally.destroy,
        tally.distinct_destroys(),
        tally.duplicate_destroys(),
        tally.messages,
        report.listener.dropped,
        report.listener.enobufs,
        report.summary.dying_peak,
        drain,
        wall.as_secs_f64(),
    );
    (report, tally, wall)
}

#[test]
fn reliable_socket_listener_reads_every_destroy_exactly_once() {
    let flows = 2_000;
    let (report, tally, _) = stress_with_reader(flows, true, 2_000.0);
    let s = report.summary;
    assert_eq!(s.created, flows);
    assert_eq!(
        (tally.distinct_destroys(), tally.duplicate_destroys()),
        (flows, 0)
    );
    assert_eq!(tally.destroy, flows);
    assert_eq!(tally.decode_errors, 0);
    assert_eq!(s.dying_final, 0);
    // The report's own counts are what the socket took: each DESTROY once, as the reader read.
    assert_eq!(
        (s.destroy_delivered, s.duplicates, s.destroy_lost),
        (flows, 0, 0)
    );
    // The kernel's buffer did the deciding: sends were refused, DESTROYs waited on the dying list.
    assert!(report.listener.dropped > 0 && report.listener.enobufs > 0);
    assert!(s.dying_peak > 0, "{s:?}");
    assert!(s.max_seen <= flows);
}

#[test]
fn lossy_socket_listener_loses_destroys_but_never_reads_one_twice() {
    let flows = 2_000;
    let (report, tally, _) = stress_with_reader(flows, false, 2_000.0);
    let s = report.summary;
    assert_eq!(s.created, flows);
    assert!(tally.distinct_destroys() < flows, "{tally:?}");
    assert_eq!(tally.duplicate_destroys(), 0);
    assert!(report.listener.dropped > 0);
    // Nothing waits for a lossy listener.
    assert_eq!((s.dying_peak, s.dying_final), (0, 0));
}

/// The child, killed (by its pid) if it is still running when the test ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_for(path: &Path, deadline: Instant) {
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_all(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

#[test]
fn ctwasm_listen_receives_and_prints_what_the_host_sends() {
    let deadline = Instant::now() + Duration::from_secs(60);
    let dir = TempDir::new("listen");
    let path = dir.path().join("events.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_ctwasm"))
        .arg("listen")
        .arg(&path)
        .args(["--format", "json", "--rate", "3000", "--duration", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    let stdout = read_all(child.0.stdout.take().unwrap());
    let stderr = read_all(child.0.stderr.take().unwrap());
    wait_for(&path, deadline);

    let flows = 300;
    let listener = SocketListener::connect(&path, socket_config(true)).unwrap();
    let end = listener.end_handle().unwrap();
    let report = run(listener, &options(flows, true));
    end.finish(deadline).unwrap();
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "ctwasm listen did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = child.0.wait().unwrap();
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(status.success(), "{stderr}");
    assert!(!path.exists(), "ctwasm listen removes its socket");

    // Every DESTROY printed once, keyed by the flow's source and the entry's id.
    let mut destroys: HashMap<(String, u64, u64), u32> = HashMap::new();
    let mut lines = 0;
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        lines += 1;
        if v["type"] == "DESTROY" {
            let key = (
                v["orig"]["src"].as_str().unwrap().to_string(),
                v["orig"]["sport"].as_u64().unwrap(),
                v["id"].as_u64().unwrap(),
            );
            *destroys.entry(key).or_default() += 1;
        }
    }
    assert_eq!(report.summary.created, flows);
    assert_eq!(destroys.len() as u64, flows, "{stderr}");
    assert!(destroys.values().all(|&n| n == 1));
    assert!(report.listener.dropped > 0, "the buffer never refused");
    assert!(
        stderr.contains(&format!("{lines} event messages"))
            && stderr.contains(&format!("distinct destroys={flows} duplicate destroys=0"))
            && stderr.contains("stream ended"),
        "{stderr}"
    );
    println!("ctwasm listen: {lines} lines; {}", stderr.trim());
}
