//! The sandbox as an embedder relies on it: a guest that traps or never returns is stopped and
//! reported as such, and the host goes on. The faults are committed by the guest itself
//! (`GuestFault`, a testing-only setting of the component), not simulated by the host.

use std::time::{Duration, Instant};

use ctwasm_core::Verdict;
use ctwasm_core::batch;
use ctwasm_core::tuple::ipproto;
use ctwasm_core::wire::build;
use ctwasm_host::backend::{
    Backend, BackendKind, ComponentBackend, GuestFault, TrackerSettings, open_backend,
};

const S: u64 = 1_000_000_000;

/// One packet of each flow in `flows`, framed as a batch.
fn batch_of(now: u64, flows: std::ops::Range<u16>) -> Vec<u8> {
    let mut batch = Vec::new();
    for port in flows {
        let l4 = build::udp(port, 53, 8);
        let packet = build::ipv4([10, 0, 0, 1], [192, 0, 2, 1], ipproto::UDP, &l4);
        batch::push_packet(&mut batch, now, 0, &packet);
    }
    batch
}

fn faulty(fault: GuestFault, deadline: Duration) -> ComponentBackend {
    let settings = TrackerSettings {
        call_deadline: Some(deadline),
        fault: Some(fault),
        ..TrackerSettings::default()
    };
    ComponentBackend::new(&settings).expect("a component with a fault to commit")
}

#[test]
fn a_guest_that_loops_is_stopped_by_its_deadline_and_the_host_goes_on() {
    let deadline = Duration::from_millis(200);
    let mut tracker = faulty(GuestFault::LoopAtPacket(8), deadline);
    let mut verdicts = Vec::new();
    // Packets 1 to 5 pass.
    tracker
        .ingest(S, &batch_of(S, 1..6), &mut verdicts)
        .unwrap();
    assert_eq!(verdicts, [Verdict::New as u8; 5]);
    // Packet 8 is in the next batch: the guest loops until the deadline stops it.
    let started = Instant::now();
    let err = tracker
        .ingest(S, &batch_of(S, 6..11), &mut verdicts)
        .expect_err("the loop is stopped");
    let took = started.elapsed();
    assert!(
        took >= deadline,
        "stopped after {took:?}, before the deadline"
    );
    assert!(
        took < Duration::from_secs(10),
        "stopped only after {took:?}"
    );
    let text = format!("{err:#}");
    assert!(text.contains("deadline"), "{text}");
    // The instance is dead and says so; the process, and new instances, are fine.
    let err = tracker.stats().expect_err("a dead instance");
    assert!(format!("{err:#}").contains("dead"), "{err:#}");
    let mut fresh =
        open_backend(BackendKind::Component, &TrackerSettings::default(), None).unwrap();
    fresh.ingest(S, &batch_of(S, 6..11), &mut verdicts).unwrap();
    assert_eq!(fresh.stats().unwrap().entries, 5);
}

#[test]
fn a_guest_that_traps_is_reported_as_a_trap() {
    let mut tracker = faulty(GuestFault::TrapAtPacket(3), Duration::from_secs(5));
    let mut verdicts = Vec::new();
    tracker
        .ingest(S, &batch_of(S, 1..3), &mut verdicts)
        .unwrap();
    let err = tracker
        .ingest(S, &batch_of(S, 3..4), &mut verdicts)
        .expect_err("the trap");
    let text = format!("{err:#}");
    assert!(text.contains("trapped") && text.contains("dead"), "{text}");
    assert!(!text.contains("deadline"), "{text}");
}

#[test]
fn a_deadline_does_not_stop_calls_that_finish_in_time() {
    // A deadline of one tick, and a batch that takes far less.
    let settings = TrackerSettings {
        call_deadline: Some(Duration::from_millis(50)),
        ..TrackerSettings::default()
    };
    let mut tracker = ComponentBackend::new(&settings).unwrap();
    let mut verdicts = Vec::new();
    for round in 0..20u64 {
        tracker
            .ingest(
                (round + 1) * S,
                &batch_of((round + 1) * S, 1..64),
                &mut verdicts,
            )
            .unwrap();
    }
    assert_eq!(tracker.stats().unwrap().entries, 63);
}

#[test]
fn fault_injection_is_refused_by_the_native_backend() {
    let settings = TrackerSettings {
        fault: Some(GuestFault::TrapAtPacket(1)),
        ..TrackerSettings::default()
    };
    let Err(err) = open_backend(BackendKind::Native, &settings, None) else {
        panic!("the native backend took a fault to inject");
    };
    assert!(format!("{err:#}").contains("component"), "{err:#}");
}
