//! The sandbox as an embedder relies on it: a tracker that fills its memory limit refuses new
//! connections and keeps the table; a guest that traps or never returns is stopped and
//! reported as such, and the host goes on. The faults are committed by the guest itself
//! (`GuestFault`, a testing-only setting of the component), not simulated by the host.

use std::time::{Duration, Instant};

use ctwasm_core::Verdict;
use ctwasm_core::batch;
use ctwasm_core::tuple::ipproto;
use ctwasm_core::wire::build;
use ctwasm_host::backend::{
    Backend, BackendKind, ComponentBackend, GuestFault, TrackerSettings, embedded_component,
    open_backend,
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

fn udp_packet(flow: u32, reply: bool) -> Vec<u8> {
    let client = [10, (flow >> 16) as u8, (flow >> 8) as u8, flow as u8];
    let server = [192, 0, 2, 1];
    let l4 = build::udp(40_000, 53, 8);
    if reply {
        build::ipv4(server, client, ipproto::UDP, &build::udp(53, 40_000, 8))
    } else {
        build::ipv4(client, server, ipproto::UDP, &l4)
    }
}

/// Ingests one packet of each flow in `flows`, returns the verdicts.
fn ingest_flows(tracker: &mut dyn Backend, now: u64, flows: impl Iterator<Item = u32>) -> Vec<u8> {
    let mut batch = Vec::new();
    for flow in flows {
        batch::push_packet(&mut batch, now, 0, &udp_packet(flow, false));
    }
    let mut verdicts = Vec::new();
    tracker
        .ingest(now, &batch, &mut verdicts)
        .expect("the guest survives");
    verdicts
}

/// A component tracker with room for `flows` entries and one UDP entry for each of them,
/// ingested in batches of 50 000.
fn component_with_flows(flows: u32) -> Box<dyn Backend> {
    let settings = TrackerSettings {
        sysctls: vec![("nf_conntrack_max".into(), (flows + 1000).to_string())],
        ..TrackerSettings::default()
    };
    let mut b = open_backend(BackendKind::Component, &settings, None).unwrap();
    for start in (0..flows).step_by(50_000) {
        ingest_flows(b.as_mut(), S, start..(start + 50_000).min(flows));
    }
    b
}

#[test]
fn a_table_that_fills_its_memory_refuses_new_flows_and_keeps_the_old_ones() {
    let settings = TrackerSettings {
        sysctls: vec![
            // No bound but memory: the table grows until the memory limit refuses it.
            ("net.netfilter.nf_conntrack_max".into(), "100000000".into()),
            // Events off, so only the table grows.
            ("net.netfilter.nf_conntrack_events".into(), "0".into()),
        ],
        seed: 1,
        ..TrackerSettings::default()
    };
    let limit = 32 << 20;
    let mut tracker =
        ComponentBackend::with_component(embedded_component().unwrap(), &settings, limit).unwrap();
    let mut created = 0u32;
    let mut refused = 0;
    let chunk = 4096;
    for round in 0..200u32 {
        let first = round * chunk;
        let verdicts = ingest_flows(&mut tracker, S, first..first + chunk);
        created += verdicts
            .iter()
            .filter(|&&v| v == Verdict::New as u8)
            .count() as u32;
        refused = verdicts
            .iter()
            .filter(|&&v| v == Verdict::Drop as u8)
            .count();
        if refused > 0 {
            break;
        }
    }
    assert!(
        refused > 0,
        "the memory limit was never reached ({created} flows)"
    );
    let stats = tracker.stats().expect("the guest is alive");
    assert_eq!(stats.entries, u64::from(created), "{stats:?}");
    assert!(stats.insert_failed > 0, "{stats:?}");
    assert_eq!(stats.drop, refused as u64, "{stats:?}");
    // The flows the table holds still work: a reply finds its entry.
    let mut batch = Vec::new();
    for flow in 0..100 {
        batch::push_packet(&mut batch, 2 * S, 0, &udp_packet(flow, true));
    }
    let mut verdicts = Vec::new();
    tracker.ingest(2 * S, &batch, &mut verdicts).unwrap();
    assert!(
        verdicts
            .iter()
            .all(|&v| v == Verdict::EstablishedReply as u8),
        "{verdicts:?}"
    );
    // Once entries time out, room comes back and new flows are accepted again.
    tracker.advance(400 * S).unwrap();
    let verdicts = ingest_flows(&mut tracker, 400 * S, 10_000_000..10_000_010);
    assert!(
        verdicts.iter().all(|&v| v == Verdict::New as u8),
        "{verdicts:?}"
    );
}

mod recovery {
    use super::*;
    use ctwasm_core::netlink::CtMessage;
    use ctwasm_core::{Delivery, MessageKind};
    use ctwasm_host::backend::DEFAULT_MEMORY_LIMIT;
    use ctwasm_host::resilient::{CallDropped, Recovery, ResilientBackend};
    use std::collections::BTreeMap;

    const MS: u64 = 1_000_000;

    /// What a reliable listener saw: every event message's bytes, in order, and the DESTROYs
    /// it received per entry id.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Heard {
        messages: Vec<Vec<u8>>,
        destroys: BTreeMap<u32, u32>,
    }

    /// Takes every pending event; every seventh delivery fails, so missed bits and the dying
    /// list are in play when the fault strikes.
    fn pump(b: &mut dyn Backend, heard: &mut Heard) {
        loop {
            let mut out = Vec::new();
            let n = b.take_events(512, &mut out).unwrap();
            if n == 0 {
                return;
            }
            let mut results = Vec::new();
            for frame in batch::events(&out) {
                let frame = frame.unwrap();
                let failed = heard.messages.len() % 7 == 3;
                heard.messages.push(frame.netlink.to_vec());
                if failed {
                    results.push(Delivery::Failed);
                    continue;
                }
                results.push(Delivery::Delivered);
                let (msg, _) = CtMessage::parse(frame.netlink).unwrap();
                if msg.kind() == Some(MessageKind::Destroy) {
                    *heard.destroys.entry(msg.id().unwrap()).or_default() += 1;
                }
            }
            b.report_delivery(&results).unwrap();
        }
    }

    /// 1 600 short UDP flows over 8 simulated seconds, then everything times out and drains;
    /// `before_step` runs before each of the 160 steps (the hot swap uses it).
    fn stress(
        b: &mut ResilientBackend,
        mut before_step: impl FnMut(u64, &mut ResilientBackend),
    ) -> (Heard, usize) {
        let mut heard = Heard::default();
        b.set_listeners(true, true).unwrap();
        for step in 0..160u64 {
            before_step(step, b);
            let now = S + step * 50 * MS;
            let mut batch = Vec::new();
            for k in 0..10u16 {
                let port = 1000 + (step as u16) * 10 + k;
                let l4 = build::udp(port, 53, 8);
                let p = build::ipv4([10, 0, 0, 1], [192, 0, 2, 1], ipproto::UDP, &l4);
                batch::push_packet(&mut batch, now, 0, &p);
            }
            let mut verdicts = Vec::new();
            b.ingest(now, &batch, &mut verdicts).unwrap();
            assert_eq!(verdicts.len(), 10);
            pump(b, &mut heard);
        }
        let mut now = 10 * S;
        for _ in 0..400 {
            now += S;
            b.advance(now).unwrap();
            pump(b, &mut heard);
        }
        let left = b.dump().unwrap().len();
        (heard, left)
    }

    fn resilient(fault: Option<GuestFault>, deadline: Duration) -> ResilientBackend {
        let settings = TrackerSettings {
            seed: 7,
            call_deadline: Some(deadline),
            fault,
            ..TrackerSettings::default()
        };
        let component = embedded_component().unwrap();
        let inner =
            ComponentBackend::with_component(component, &settings, DEFAULT_MEMORY_LIMIT).unwrap();
        ResilientBackend::new(component, inner, DEFAULT_MEMORY_LIMIT, deadline, 64)
            .unwrap()
            .with_recurring_fault(fault.filter(|f| f.recurs()))
    }

    fn uninterrupted() -> (Heard, usize) {
        let mut b = resilient(None, Duration::from_secs(30));
        let run = stress(&mut b, |_, _| {});
        assert_eq!(b.recovery().recoveries, 0);
        run
    }

    /// One recovery, nothing dropped, and the uninterrupted run's events.
    fn assert_nothing_lost(run: &(Heard, usize), reference: &(Heard, usize), r: Recovery) {
        assert_eq!(r.recoveries, 1, "{r:?}");
        assert_eq!((r.dropped_calls, r.dropped_packets), (0, 0), "{r:?}");
        assert_same_run(run, reference);
    }

    fn assert_same_run(run: &(Heard, usize), reference: &(Heard, usize)) {
        let (heard, left) = run;
        assert_eq!(*left, 0, "entries left in the table");
        assert_eq!(heard.destroys.len(), 1600, "one DESTROY per connection");
        assert!(heard.destroys.values().all(|&n| n == 1), "a DESTROY twice");
        // The very messages an uninterrupted run sends, byte for byte and in order.
        assert_eq!(heard.messages.len(), reference.0.messages.len());
        assert!(
            heard.messages == reference.0.messages,
            "the event stream differs"
        );
    }

    #[test]
    fn a_guest_that_traps_mid_stress_loses_and_repeats_nothing() {
        let reference = uninterrupted();
        let mut b = resilient(Some(GuestFault::TrapAtPacket(777)), Duration::from_secs(30));
        let run = stress(&mut b, |_, _| {});
        assert_nothing_lost(&run, &reference, b.recovery());
    }

    #[test]
    fn a_guest_that_loops_mid_stress_is_stopped_and_loses_nothing() {
        let reference = uninterrupted();
        let mut b = resilient(
            Some(GuestFault::LoopAtPacket(1234)),
            Duration::from_millis(100),
        );
        let run = stress(&mut b, |_, _| {});
        assert_nothing_lost(&run, &reference, b.recovery());
    }

    /// A packet that makes the guest trap every time (a bug on that input, in every instance):
    /// recovery retries the call once on a restored instance, which traps again; the call is
    /// dropped and reported, its packets counted, and everything else goes on as if the call
    /// had never been made.
    #[test]
    fn a_fault_that_comes_back_drops_only_its_call() {
        let reference = uninterrupted();
        let mut b = resilient(Some(GuestFault::TrapInZone(7)), Duration::from_secs(30));
        let run = stress(&mut b, |step, b| {
            if step == 80 {
                let now = S + step * 50 * MS;
                let mut poison = Vec::new();
                for k in 0..5u16 {
                    let l4 = build::udp(40_000 + k, 53, 8);
                    let p = build::ipv4([10, 0, 0, 9], [192, 0, 2, 9], ipproto::UDP, &l4);
                    batch::push_packet(&mut poison, now, 7, &p);
                }
                let err = b.ingest(now, &poison, &mut Vec::new()).unwrap_err();
                assert!(err.downcast_ref::<CallDropped>().is_some(), "{err:#}");
            }
        });
        let r = b.recovery();
        assert_eq!(
            (r.recoveries, r.dropped_calls, r.dropped_packets),
            (2, 1, 5),
            "{r:?}"
        );
        assert_same_run(&run, &reference);
    }

    #[test]
    fn hot_swap_mid_stress_loses_and_repeats_nothing() {
        let reference = uninterrupted();
        // Another build of the same guest: optimized for size instead of speed, so its code
        // differs throughout while it reads the same snapshots. The run moves to it mid-stress
        // and back to the embedded build later.
        let bytes = std::fs::read(ctwasm_host::artifacts::SIZE_BUILD_PATH).unwrap();
        assert_ne!(
            bytes,
            ctwasm_host::artifacts::COMPONENT,
            "the same build twice"
        );
        let engine = ctwasm_host::backend::shared_engine();
        let other = wasmtime::component::Component::new(engine, &bytes).unwrap();
        let embedded = embedded_component().unwrap().clone();
        let mut b = resilient(None, Duration::from_secs(30));
        let (heard, left) = stress(&mut b, |step, b| match step {
            60 => b.upgrade(&other).unwrap(),
            120 => b.upgrade(&embedded).unwrap(),
            _ => {}
        });
        assert_eq!(left, 0);
        assert_eq!(heard.destroys.len(), 1600);
        assert!(heard.destroys.values().all(|&n| n == 1));
        assert!(
            heard.messages == reference.0.messages,
            "the event stream differs"
        );
        // A component that cannot read the snapshot is refused, and the running one stays.
        let mut b = resilient(None, Duration::from_secs(30));
        // An empty component: the component-model preamble and nothing else.
        let empty = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
        let not_ours =
            wasmtime::component::Component::new(ctwasm_host::backend::shared_engine(), empty)
                .unwrap();
        assert!(b.upgrade(&not_ours).is_err());
        assert_eq!(b.stats().unwrap().entries, 0);
    }
}

/// The host reports outcomes for the messages it took, in order. Reports beyond what was taken
/// are ignored, fewer leave the rest waiting; either way the tracker keeps working, the same in
/// both backends.
#[test]
fn more_or_fewer_delivery_reports_than_messages_taken_are_harmless() {
    use ctwasm_core::Delivery;
    for kind in [BackendKind::Native, BackendKind::Component] {
        let mut b = open_backend(kind, &TrackerSettings::default(), None).unwrap();
        let mut verdicts = Vec::new();
        b.ingest(S, &batch_of(S, 1..4), &mut verdicts).unwrap();
        let mut out = Vec::new();
        assert_eq!(b.take_events(u32::MAX, &mut out).unwrap(), 3);
        // Five reports for three messages: the extra two are ignored.
        b.report_delivery(&[Delivery::Delivered; 5]).unwrap();
        b.flush(2 * S).unwrap();
        out.clear();
        assert_eq!(b.take_events(u32::MAX, &mut out).unwrap(), 3, "{kind:?}");
        // One report for three DESTROYs: two stay in flight, their entries still counted.
        b.report_delivery(&[Delivery::Delivered]).unwrap();
        assert_eq!(b.stats().unwrap().count, 2, "{kind:?}");
        // No report at all is fine too; the late ones settle them.
        b.report_delivery(&[]).unwrap();
        b.report_delivery(&[Delivery::Delivered, Delivery::Delivered])
            .unwrap();
        let s = b.stats().unwrap();
        assert_eq!((s.count, s.events_delivered), (0, 6), "{kind:?}");
    }
}

/// A snapshot of a million entries (about 150 MB, more than one component call may copy)
/// leaves the component and enters a fresh one in pieces; the restored tracker's own snapshot is
/// the same bytes, and so is the native engine's after restoring them.
#[test]
fn a_snapshot_of_a_million_entries_crosses_the_boundary() {
    const FLOWS: u32 = 1_000_000;
    let mut b = component_with_flows(FLOWS);
    let snapshot = b.snapshot().unwrap();
    assert!(snapshot.len() > 128 << 20, "only {} bytes", snapshot.len());
    let mut restored = ComponentBackend::restore(&snapshot).unwrap();
    assert_eq!(restored.stats().unwrap().count, u64::from(FLOWS));
    assert!(
        restored.snapshot().unwrap() == snapshot,
        "the restored snapshot differs"
    );
    let mut native = ctwasm_host::backend::restore_backend(BackendKind::Native, &snapshot).unwrap();
    assert!(
        native.snapshot().unwrap() == snapshot,
        "the native engine's snapshot differs"
    );
    // Both go on alike: a reply finds its entry.
    let mut batch = Vec::new();
    batch::push_packet(&mut batch, 2 * S, 0, &udp_packet(0, true));
    for t in [&mut restored as &mut dyn Backend, native.as_mut()] {
        let mut v = Vec::new();
        t.ingest(2 * S, &batch, &mut v).unwrap();
        assert_eq!(v, [Verdict::EstablishedReply as u8]);
    }
}

/// Taking every pending event at once (`take_events(u32::MAX)`) when they are far more than one
/// component call can copy out: the backend asks in chunks, so nothing traps and nothing is
/// stranded in flight.
#[test]
fn taking_more_events_than_one_call_can_copy_strands_nothing() {
    const FLOWS: u32 = 450_000;
    let mut b = component_with_flows(FLOWS);
    b.flush(2 * S).unwrap();
    // A NEW and a DESTROY per flow: 900 000 messages, about 148 MB of frames.
    let mut out = Vec::new();
    let n = b.take_events(u32::MAX, &mut out).unwrap();
    assert_eq!(n, 2 * FLOWS as usize);
    assert!(out.len() > 128 << 20, "only {} bytes", out.len());
    b.report_delivery(&vec![ctwasm_core::Delivery::Delivered; n])
        .unwrap();
    let s = b.stats().unwrap();
    assert_eq!(
        (s.count, s.events_delivered),
        (0, 2 * u64::from(FLOWS)),
        "{s:?}"
    );
}
