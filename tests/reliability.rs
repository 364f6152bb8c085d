//! Reliable event delivery end to end, as a consumer sees it ("Invariants" and "Reliable
//! delivery" in `core-guest/docs/semantics.md`).
//!
//! Each test drives a backend — the engine linked natively and the WebAssembly component — on
//! simulated time through the host's netlink listeners, and checks what a reader gets: exactly
//! one DESTROY per entry at a reliable listener that keeps draining, whatever its buffer, its
//! pace, injected faults or flushes; a mirror that converges to the table; a table that never
//! holds more than `nf_conntrack_max`; and the seed's stress test with and without
//! broadcast-error.

use std::collections::HashMap;

use anyhow::Result;
use ctwasm_core::batch::EventFrame;
use ctwasm_core::netlink::CtMessage;
use ctwasm_core::wire::build;
use ctwasm_core::{
    Addr, Direction, Ending, Family, L4Tuple, MessageKind, RetryPolicy, TcpState, Tuple, Verdict,
};
use ctwasm_host::backend::{BackendKind, TrackerSettings, open_backend};
use ctwasm_host::capture::CapturedPacket;
use ctwasm_host::listener::{ListenerConfig, Listeners, ReceivedMessage};
use ctwasm_host::mirror::Mirror;
use ctwasm_host::replay::{EventSink, Simulation};
use ctwasm_host::stress::{self, StressOptions};
use proptest::prelude::*;

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

/// What the first listener read: every message decoded, DESTROYs counted per (tuple, id), and a
/// mirror fed with all of it.
#[derive(Debug, Default)]
struct Reader {
    messages: Vec<(u64, MessageKind, CtMessage)>,
    destroys: HashMap<(Tuple, u32), u32>,
    mirror: Mirror,
}

impl EventSink for Reader {
    fn event(&mut self, _frame: &EventFrame<'_>, message: &CtMessage) -> Result<()> {
        self.mirror.apply(message);
        Ok(())
    }
    fn read(
        &mut self,
        read: &ReceivedMessage,
        frame: &EventFrame<'_>,
        message: &CtMessage,
    ) -> Result<()> {
        let kind = message.kind().expect("a conntrack event");
        if kind == MessageKind::Destroy {
            *self
                .destroys
                .entry((message.orig().unwrap(), message.id().unwrap()))
                .or_default() += 1;
        }
        self.messages.push((read.read_ns, kind, message.clone()));
        self.event(frame, message)
    }
}

fn settings(policy: RetryPolicy, seed: u64, sysctls: &[(&str, String)]) -> TrackerSettings {
    TrackerSettings {
        sysctls: sysctls
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect(),
        seed,
        retry_policy: Some(policy),
        ..Default::default()
    }
}

fn udp(src: u8, sport: u16, reply: bool) -> Vec<u8> {
    let (a, b) = ([10, 0, 0, src], [10, 9, 9, 9]);
    if reply {
        build::ipv4(b, a, 17, &build::udp(53, sport, 8))
    } else {
        build::ipv4(a, b, 17, &build::udp(sport, 53, 8))
    }
}

fn tcp_tuple(slot: u8) -> Tuple {
    Tuple {
        family: Family::Ipv4,
        src: Addr::v4([10, 1, 0, slot]),
        dst: Addr::v4([10, 9, 9, 9]),
        proto: 6,
        l4: L4Tuple::Ports {
            src: 40_000 + u16::from(slot),
            dst: 443,
        },
    }
}

/// Ingests one packet at `at`; returns its verdict.
fn packet(sim: &mut Simulation<'_>, reader: &mut Reader, at: u64, l3: Vec<u8>) -> Verdict {
    let v = sim.ingest(&[CapturedPacket::new(at, l3)], reader).unwrap();
    Verdict::from_u8(v[0]).unwrap()
}

/// Lets simulated time run in `step`s until the dying list is empty and every listener has read
/// everything (or `horizon` passes), checking the table's bound at every step.
fn drain(sim: &mut Simulation<'_>, reader: &mut Reader, step: u64, horizon: u64) {
    let end = sim.now() + horizon;
    loop {
        let stats = sim.backend.stats().unwrap();
        assert!(
            stats.count <= stats.max,
            "live + dying {} over nf_conntrack_max {}",
            stats.count,
            stats.max
        );
        let queued: usize = sim.listeners.iter().map(|l| l.queued_messages()).sum();
        if stats.dying == 0 && queued == 0 {
            return;
        }
        assert!(
            sim.now() < end,
            "not drained after {} s: {stats:?}",
            horizon / S
        );
        let next = sim.now() + step;
        sim.run_until(next, reader).unwrap();
    }
}

// ----- invariant 1 and 2 under random traffic, buffers, readers, faults and flushes ----------

#[derive(Clone, Debug)]
enum Act {
    /// A UDP datagram of flow `src` (either direction).
    Udp {
        src: u8,
        reply: bool,
    },
    /// Opens TCP connection `slot` with data both ways, or closes it if open.
    Conn {
        slot: u8,
        reset: bool,
    },
    Wait {
        ms: u16,
    },
    Flush,
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        6 => (0u8..40, any::<bool>()).prop_map(|(src, reply)| Act::Udp { src, reply }),
        3 => (0u8..12, any::<bool>()).prop_map(|(slot, reset)| Act::Conn { slot, reset }),
        3 => (0u16..3000).prop_map(|ms| Act::Wait { ms }),
        1 => Just(Act::Flush),
    ]
}

#[derive(Clone, Debug)]
struct Case {
    seed: u64,
    policy: RetryPolicy,
    rcvbuf: usize,
    reader_rate: u32,
    faults: f64,
    max: u32,
    acts: Vec<Act>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        prop_oneof![
            Just(RetryPolicy::Grace),
            Just(RetryPolicy::Kernel),
            Just(RetryPolicy::OnDrain)
        ],
        0usize..1500,
        20u32..3000,
        prop_oneof![Just(0.0), Just(0.1), Just(0.4)],
        10u32..80,
        proptest::collection::vec(act(), 20..120),
    )
        .prop_map(
            |(seed, policy, rcvbuf, reader_rate, faults, max, acts)| Case {
                seed,
                policy,
                rcvbuf,
                reader_rate,
                faults,
                max,
                acts,
            },
        )
}

/// Runs a case; returns what the reliable listener and the lossy one read.
fn run_case(kind: BackendKind, c: &Case) -> (Reader, u64) {
    let settings = settings(
        c.policy,
        c.seed,
        &[("net.netfilter.nf_conntrack_max", c.max.to_string())],
    );
    let mut backend = open_backend(kind, &settings, None).unwrap();
    let reliable = ListenerConfig {
        name: "reliable".into(),
        rcvbuf: c.rcvbuf,
        broadcast_error: true,
        drain: ctwasm_host::listener::DrainPolicy::Rate {
            msgs_per_sec: f64::from(c.reader_rate),
        },
        record: true,
        faults: c.faults,
        fault_seed: c.seed,
        ..ListenerConfig::default()
    };
    let lossy = ListenerConfig::parse("name=lossy,rcvbuf=300,drain=50/s").unwrap();
    let mut sim = Simulation::new(backend.as_mut(), Listeners::new([reliable, lossy])).unwrap();
    let mut reader = Reader::default();
    let mut conns: HashMap<u8, u32> = HashMap::new();
    let mut now = S;
    for a in &c.acts {
        now += MS;
        match *a {
            Act::Udp { src, reply } => {
                packet(
                    &mut sim,
                    &mut reader,
                    now,
                    udp(src, 1000 + u16::from(src), reply),
                );
            }
            Act::Conn { slot, reset } => {
                sim.run_until(now, &mut reader).unwrap();
                let b = &mut *sim.backend;
                match conns.remove(&slot) {
                    // The entry may have been early-dropped or flushed meanwhile.
                    Some(id) => {
                        let ending = match (reset, slot % 2 == 0) {
                            (false, client) => Ending::Fin {
                                first: if client {
                                    Direction::Original
                                } else {
                                    Direction::Reply
                                },
                            },
                            (true, client) => Ending::Reset {
                                from: if client {
                                    Direction::Original
                                } else {
                                    Direction::Reply
                                },
                            },
                        };
                        let _ = b.close(now, id, ending).unwrap();
                    }
                    None => {
                        if let Ok(id) = b.open(now, 0, &tcp_tuple(slot)).unwrap() {
                            let _ = b.transfer(now, id, Direction::Original, 500).unwrap();
                            let _ = b.transfer(now, id, Direction::Reply, 5000).unwrap();
                            conns.insert(slot, id);
                        }
                    }
                }
                sim.pump(now, &mut reader).unwrap();
            }
            Act::Wait { ms } => {
                now += u64::from(ms) * MS;
                sim.run_until(now, &mut reader).unwrap();
            }
            Act::Flush => {
                sim.run_until(now, &mut reader).unwrap();
                sim.backend.flush(now).unwrap();
                sim.pump(now, &mut reader).unwrap();
                conns.clear();
            }
        }
        let stats = sim.backend.stats().unwrap();
        assert!(
            stats.count <= u64::from(c.max),
            "count {} over max {}",
            stats.count,
            c.max
        );
    }
    let now = sim.now() + MS;
    sim.run_until(now, &mut reader).unwrap();
    sim.backend.flush(now).unwrap();
    sim.pump(now, &mut reader).unwrap();
    drain(&mut sim, &mut reader, 250 * MS, 3_600 * S);
    let inserted = sim.backend.stats().unwrap().insert;
    // The mirror must equal the table: both empty now, nothing left over in the mirror.
    let dump = sim.backend.dump().unwrap();
    let diff = reader.mirror.compare(&dump);
    assert!(diff.is_equal(), "{diff}");
    assert!(dump.is_empty());
    (reader, inserted)
}

fn check_exactly_once(kind: BackendKind, c: &Case) -> std::result::Result<(), TestCaseError> {
    let (reader, inserted) = run_case(kind, c);
    prop_assert_eq!(
        reader.destroys.len() as u64,
        inserted,
        "every confirmed entry's DESTROY arrives"
    );
    let repeated: Vec<_> = reader.destroys.iter().filter(|(_, n)| **n != 1).collect();
    prop_assert!(
        repeated.is_empty(),
        "DESTROYs read more than once: {:?}",
        repeated
    );
    prop_assert_eq!(reader.mirror.counters().duplicate_destroy, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    /// Invariants 1–3 natively: exactly one DESTROY per confirmed entry at a reliable listener
    /// with any buffer, pace and share of faults, any retry policy, with flushes; the mirror
    /// converges; the bound holds at every step.
    #[test]
    fn exactly_one_destroy_per_entry_native(c in case()) {
        check_exactly_once(BackendKind::Native, &c)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
    /// The same through the WebAssembly component.
    #[test]
    fn exactly_one_destroy_per_entry_component(c in case()) {
        check_exactly_once(BackendKind::Component, &c)?;
    }
}

/// Native and component read the very same messages at the very same instants.
#[test]
fn native_and_component_read_the_same_messages_under_faults() {
    let c = Case {
        seed: 42,
        policy: RetryPolicy::Grace,
        rcvbuf: 600,
        reader_rate: 300,
        faults: 0.2,
        max: 1_000,
        acts: (0..80u8)
            .map(|i| match i % 9 {
                0 => Act::Conn {
                    slot: i % 7,
                    reset: i % 2 == 0,
                },
                4 => Act::Wait { ms: 700 },
                8 if i == 44 => Act::Flush,
                _ => Act::Udp {
                    src: i % 37,
                    reply: i % 3 == 0,
                },
            })
            .collect(),
    };
    let (native, n_ins) = run_case(BackendKind::Native, &c);
    let (component, c_ins) = run_case(BackendKind::Component, &c);
    assert_eq!(n_ins, c_ins);
    assert!(native.messages.len() > 50);
    let first = native
        .messages
        .iter()
        .zip(&component.messages)
        .position(|(a, b)| a != b);
    if let Some(i) = first {
        panic!(
            "first difference at message {i}:\nnative    {:?}\ncomponent {:?}",
            native.messages[i], component.messages[i]
        );
    }
    assert_eq!(native.messages.len(), component.messages.len());
}

/// With two reliable listeners a failure at one makes the engine send the DESTROY again to
/// both, as netlink's broadcast does: each still gets every entry's DESTROY at least once, and
/// a repeat is always a redelivery that a consumer keyed by (tuple, id) absorbs.
#[test]
fn two_reliable_listeners_each_get_every_destroy_repeats_are_absorbed() {
    for kind in [BackendKind::Native, BackendKind::Component] {
        let mut backend = open_backend(kind, &settings(RetryPolicy::Kernel, 3, &[]), None).unwrap();
        let listeners = Listeners::new([
            ListenerConfig::parse("name=a,rcvbuf=1000,reliable,drain=400/s,record").unwrap(),
            ListenerConfig::parse(
                "name=b,rcvbuf=300,reliable,drain=150/s,faults=0.2,seed=9,record",
            )
            .unwrap(),
        ]);
        let mut sim = Simulation::new(backend.as_mut(), listeners).unwrap();
        let mut reader = Reader::default();
        for i in 0..300u16 {
            packet(
                &mut sim,
                &mut reader,
                S + u64::from(i) * MS,
                udp((i % 250) as u8, 2000 + i, false),
            );
        }
        let now = sim.now() + S;
        sim.run_until(now, &mut reader).unwrap();
        sim.backend.flush(now).unwrap();
        sim.pump(now, &mut reader).unwrap();
        drain(&mut sim, &mut reader, 100 * MS, 600 * S);
        let inserted = sim.backend.stats().unwrap().insert;
        assert_eq!(
            reader.destroys.len() as u64,
            inserted,
            "{kind:?}: listener a"
        );
        let b = sim.listeners.get_mut(1).unwrap().take_received();
        let mut at_b: HashMap<(Tuple, u32), u32> = HashMap::new();
        let mut mirror_b = Mirror::new();
        for m in &b {
            let frame = m.event_frame().unwrap();
            let msg = ctwasm_host::output::decode_frame(&frame).unwrap();
            if msg.kind() == Some(MessageKind::Destroy) {
                let n = at_b
                    .entry((msg.orig().unwrap(), msg.id().unwrap()))
                    .or_default();
                *n += 1;
                assert!(
                    *n == 1 || frame.is_redelivery(),
                    "a repeat that is not a redelivery"
                );
            }
            mirror_b.apply(&msg);
        }
        assert_eq!(at_b.len() as u64, inserted, "{kind:?}: listener b");
        for m in [&reader.mirror, &mirror_b] {
            assert!(m.compare(&sim.backend.dump().unwrap()).is_equal());
        }
    }
}

/// Invariant 2 on a table that is not empty: with nothing lost, the mirror equals the dump
/// entry for entry (ids, tuples, SEEN_REPLY/ASSURED, TCP states).
#[test]
fn mirror_equals_a_live_table_when_nothing_is_lost() {
    for kind in [BackendKind::Native, BackendKind::Component] {
        let mut backend = open_backend(kind, &settings(RetryPolicy::Grace, 1, &[]), None).unwrap();
        let mut sim = Simulation::new(backend.as_mut(), Listeners::lossless()).unwrap();
        let mut reader = Reader::default();
        let mut t = S;
        for i in 0..30u8 {
            t += 10 * MS;
            packet(&mut sim, &mut reader, t, udp(i, 3000, false));
            if i % 2 == 0 {
                packet(&mut sim, &mut reader, t + MS, udp(i, 3000, true));
            }
        }
        for i in 0..6u8 {
            let id = sim.backend.open(t, 0, &tcp_tuple(i)).unwrap().unwrap();
            sim.backend
                .transfer(t, id, Direction::Reply, 100)
                .unwrap()
                .unwrap();
            if i % 3 == 0 {
                sim.backend
                    .close(t, id, Ending::CLIENT_FIN)
                    .unwrap()
                    .unwrap();
            }
        }
        sim.pump(t, &mut reader).unwrap();
        let dump = sim.backend.dump().unwrap();
        assert_eq!(dump.len(), 36);
        assert!(dump.iter().any(|e| e.tcp_state == Some(TcpState::TimeWait)));
        let diff = reader.mirror.compare(&dump);
        assert!(diff.is_equal(), "{kind:?}: {diff}");
    }
}

// ----- the seed's stress test -----------------------------------------------------------------

/// The seed's scenario: a 2048-byte reliable listener, 100 000 short connections, a flush:
/// nothing lost, nothing duplicated, the dying list back to 0, the bound never crossed. Native
/// backend: the component gives the same figures (checked at 5 000 flows below) but takes
/// longer in a debug build.
#[test]
fn seed_stress_100k_flows_reliable_2048_bytes_loses_nothing() {
    let options = StressOptions {
        flows: 100_000,
        mirror: true,
        ..StressOptions::default()
    };
    let r = stress::run(BackendKind::Native, &options, &mut |_| {}).unwrap();
    let s = r.summary;
    assert_eq!(s.created, 100_000);
    assert_eq!(
        (s.destroy_delivered, s.destroy_lost, s.duplicates),
        (100_000, 0, 0)
    );
    assert_eq!(s.dying_final, 0);
    assert!(
        s.dying_peak > 90_000,
        "most DESTROYs overflow the 2048-byte buffer: {s:?}"
    );
    assert!(s.max_seen <= r.stats.max && s.max_seen == 100_000);
    assert_eq!(s.dropped_new, 0);
    assert!(
        r.listener.enobufs > 0,
        "a reliable listener still sees ENOBUFS"
    );
    let (mirror, diff) = r.mirror.unwrap();
    assert!(diff.is_equal(), "{diff}");
    assert_eq!(mirror.counters().duplicate_destroy, 0);
    assert!(r.samples.iter().all(|x| x.count <= r.stats.max));
}

/// The same without broadcast-error: most DESTROYs are lost and the reader sees ENOBUFS, as
/// on Linux ("The seed's stress test on Linux" in `host/docs/kernel-behaviour.md`: 7 % of
/// 2 000 arrive).
#[test]
fn seed_stress_without_broadcast_error_loses_events_and_shows_enobufs() {
    let options = StressOptions {
        flows: 100_000,
        reliable: false,
        ..StressOptions::default()
    };
    let r = stress::run(BackendKind::Native, &options, &mut |_| {}).unwrap();
    let s = r.summary;
    assert_eq!(s.created, 100_000);
    assert!(s.destroy_lost > 90_000, "{s:?}");
    assert_eq!(s.destroy_delivered + s.destroy_lost, 100_000);
    assert_eq!((s.duplicates, s.dying_peak, s.dying_final), (0, 0, 0));
    assert!(
        r.listener.enobufs > 0 && r.listener.dropped > 90_000,
        "{:?}",
        r.listener
    );
    assert!(s.drain_ms.unwrap() < 100.0, "nothing waits: {s:?}");
}

/// The stress test gives identical summaries natively and through the component, for every
/// policy.
#[test]
fn stress_summaries_are_identical_on_both_backends() {
    for policy in [
        RetryPolicy::Grace,
        RetryPolicy::Kernel,
        RetryPolicy::OnDrain,
    ] {
        let options = StressOptions {
            flows: 5_000,
            policy,
            faults: 0.05,
            ..StressOptions::default()
        };
        let native = stress::run(BackendKind::Native, &options, &mut |_| {}).unwrap();
        let component = stress::run(BackendKind::Component, &options, &mut |_| {}).unwrap();
        assert_eq!(native.summary, component.summary, "{policy:?}");
        assert_eq!(native.samples, component.samples, "{policy:?}");
        let s = native.summary;
        assert_eq!(
            (
                s.destroy_delivered,
                s.destroy_lost,
                s.duplicates,
                s.dying_final
            ),
            (5_000, 0, 0, 0)
        );
    }
}

// ----- full of dying ------------------------------------------------------------------------

/// A stalled reliable listener and a small table: after a flush the dying entries fill the
/// table, so new connections are dropped and counted while packets of the existing (ASSURED)
/// flows still pass; once the reader starts again the dying list drains and new connections
/// come back.
#[test]
fn full_of_dying_drops_new_connections_until_the_listener_drains() {
    for kind in [BackendKind::Native, BackendKind::Component] {
        let max = 40u32;
        let mut backend = open_backend(
            kind,
            &settings(
                RetryPolicy::Kernel,
                5,
                &[("nf_conntrack_max", max.to_string())],
            ),
            None,
        )
        .unwrap();
        // Reads nothing for the first 60 s of the run, then everything.
        let listener =
            ListenerConfig::parse("rcvbuf=0,reliable,drain=0/s+unlimited@60,record").unwrap();
        let mut sim = Simulation::new(backend.as_mut(), Listeners::new([listener])).unwrap();
        let mut r = Reader::default();
        // 30 short flows, flushed: their DESTROYs cannot get through, they stay dying.
        for i in 0..30u8 {
            assert_eq!(
                packet(&mut sim, &mut r, S + u64::from(i) * MS, udp(i, 100, false)),
                Verdict::New
            );
        }
        sim.backend.flush(2 * S).unwrap();
        sim.pump(2 * S, &mut r).unwrap();
        let s = sim.backend.stats().unwrap();
        assert!(s.dying >= 29 && s.entries == 0, "{s:?}");
        // 10 flows made ASSURED by the two-second rule (request, reply, a packet 2 s later).
        let fill = (max as u64 - s.count) as u8;
        for i in 0..fill {
            assert_eq!(
                packet(&mut sim, &mut r, 3 * S, udp(100 + i, 200, false)),
                Verdict::New
            );
            packet(&mut sim, &mut r, 3 * S + MS, udp(100 + i, 200, true));
            packet(&mut sim, &mut r, 6 * S, udp(100 + i, 200, false));
        }
        let s = sim.backend.stats().unwrap();
        assert_eq!(s.count, u64::from(max), "{s:?}");
        // Full: new connections are dropped and counted; existing flows pass.
        let drop_before = s.drop;
        for i in 0..20u8 {
            let at = 10 * S + u64::from(i) * S;
            assert_eq!(
                packet(&mut sim, &mut r, at, udp(200 + i, 300, false)),
                Verdict::Drop,
                "{kind:?}"
            );
            let existing = packet(&mut sim, &mut r, at, udp(100 + i % fill, 200, true));
            assert_eq!(existing, Verdict::EstablishedReply, "{kind:?}");
            let s = sim.backend.stats().unwrap();
            assert!(s.count <= u64::from(max));
        }
        assert_eq!(sim.backend.stats().unwrap().drop - drop_before, 20);
        // The reader wakes at 60 s (after the origin, the first packet at 1 s): the dying list
        // drains and new connections are accepted again.
        sim.run_until(65 * S, &mut r).unwrap();
        let s = sim.backend.stats().unwrap();
        assert_eq!(s.dying, 0, "{kind:?}: {s:?}");
        assert_eq!(
            packet(&mut sim, &mut r, 66 * S, udp(250, 400, false)),
            Verdict::New,
            "{kind:?}"
        );
        let flushed: Vec<_> = r
            .destroys
            .keys()
            .filter(|(t, _)| t.l4 == L4Tuple::Ports { src: 100, dst: 53 })
            .collect();
        assert!(!flushed.is_empty());
        assert_eq!(
            r.destroys.len(),
            30,
            "{kind:?}: every flushed entry's DESTROY arrived"
        );
        assert!(r.destroys.values().all(|n| *n == 1));
    }
}

// ----- missed-event merge and nf_conntrack_events=2 -------------------------------------------

/// "Missed events ride on the next packet" (`host/docs/kernel-behaviour.md`) through the host:
/// a reliable listener that is not reading misses NEWs; the next packet of a flow carries the
/// missed bits, so its message is a NEW again (merged with the UPDATEs it missed), and a
/// one-packet flow's second packet resends its NEW.
#[test]
fn missed_events_merge_into_the_next_message() {
    for kind in [BackendKind::Native, BackendKind::Component] {
        let mut backend = open_backend(kind, &settings(RetryPolicy::Grace, 0, &[]), None).unwrap();
        // Room for two messages while the reader sleeps; it reads everything from 5 s on.
        let listener =
            ListenerConfig::parse("rcvbuf=150,reliable,drain=0/s+unlimited@5,record").unwrap();
        let mut sim = Simulation::new(backend.as_mut(), Listeners::new([listener])).unwrap();
        let mut r = Reader::default();
        for i in 0..8u8 {
            packet(&mut sim, &mut r, S + u64::from(i) * MS, udp(i, 5000, false));
        }
        let tuple = tcp_tuple(1);
        let id = sim.backend.open(S + 10 * MS, 0, &tuple).unwrap().unwrap();
        sim.backend
            .transfer(S + 10 * MS, id, Direction::Reply, 10)
            .unwrap()
            .unwrap();
        sim.pump(S + 10 * MS, &mut r).unwrap();
        assert!(sim.backend.stats().unwrap().missed_pending >= 6);
        sim.run_until(6 * S, &mut r).unwrap();
        let first_batch = r.messages.len();
        assert!(
            (2..=3).contains(&first_batch),
            "only what fitted: {first_batch}"
        );
        // Data without a state change: the missed NEW and UPDATEs go out as one NEW.
        sim.backend
            .transfer(7 * S, id, Direction::Original, 100)
            .unwrap()
            .unwrap();
        sim.pump(7 * S, &mut r).unwrap();
        let (_, kind_tcp, msg) = r.messages.last().unwrap().clone();
        assert_eq!(kind_tcp, MessageKind::New, "{kind:?}");
        assert_eq!(msg.orig(), Some(tuple));
        assert_eq!(msg.tcp_state(), Some(TcpState::Established));
        let status = msg.status().unwrap();
        assert!(
            status.contains(ctwasm_core::Status::SEEN_REPLY)
                && status.contains(ctwasm_core::Status::ASSURED)
        );
        // A second packet of UDP flow 7 resends its NEW.
        packet(&mut sim, &mut r, 8 * S, udp(7, 5000, false));
        let (_, k, msg) = r.messages.last().unwrap().clone();
        assert_eq!(
            (k, msg.orig().unwrap().src),
            (MessageKind::New, Addr::v4([10, 0, 0, 7]))
        );
        assert_eq!(
            sim.backend.stats().unwrap().missed_pending,
            5,
            "flows 2..6 still owe their NEW"
        );
    }
}

/// "nf_conntrack_events=2" in `host/docs/kernel-behaviour.md`: with `nf_conntrack_events=2`, entries created while nobody listens get
/// no event cache, so a listener that subscribes later hears nothing of them, not even their
/// DESTROY on a flush; with 1 it gets every DESTROY.
#[test]
fn events_2_forgets_entries_created_before_the_listener_subscribed() {
    for kind in [BackendKind::Native, BackendKind::Component] {
        for (events, expected) in [(2u8, 0usize), (1, 200)] {
            let s = settings(
                RetryPolicy::Kernel,
                0,
                &[("net.netfilter.nf_conntrack_events", events.to_string())],
            );
            let mut backend = open_backend(kind, &s, None).unwrap();
            let mut sim = Simulation::new(backend.as_mut(), Listeners::default()).unwrap();
            let mut r = Reader::default();
            for i in 0..200u16 {
                packet(
                    &mut sim,
                    &mut r,
                    S + u64::from(i) * MS,
                    udp((i % 200) as u8, 6000 + i, false),
                );
            }
            // The listener subscribes (reliable, 2048 bytes, a fast reader), then a flush.
            sim.listeners =
                Listeners::new([
                    ListenerConfig::parse("rcvbuf=2048,reliable,drain=5000/s,record").unwrap(),
                ]);
            sim.backend.set_listeners(true, true).unwrap();
            let now = 2 * S;
            sim.run_until(now, &mut r).unwrap();
            sim.backend.flush(now).unwrap();
            sim.pump(now, &mut r).unwrap();
            drain(&mut sim, &mut r, 100 * MS, 600 * S);
            assert_eq!(r.destroys.len(), expected, "{kind:?} events={events}");
            assert_eq!(sim.backend.stats().unwrap().count, 0);
            // A connection made while the listener is there is heard with either setting.
            packet(&mut sim, &mut r, 700 * S, udp(1, 9, false));
            assert_eq!(
                r.messages.last().unwrap().1,
                MessageKind::New,
                "{kind:?} events={events}"
            );
        }
    }
}

/// Invariant 4 with a full table: early drop must pick the same victim in the native engine and
/// in the component. It does not yet: the engine starts its early-drop scan at
/// `index.hasher().hash_one(tuple) % slab.len()`, and foldhash gives different hashes on 64-bit
/// hosts and on wasm32 (it is documented as not portable), so the two backends evict different
/// entries and their DESTROY streams part ways. Reported to the lead (engine code).
#[test]
fn early_drop_picks_the_same_victim_on_both_backends() {
    let mut victims = Vec::new();
    for kind in [BackendKind::Native, BackendKind::Component] {
        let s = settings(RetryPolicy::Grace, 11, &[("nf_conntrack_max", "16".into())]);
        let mut backend = open_backend(kind, &s, None).unwrap();
        let mut sim = Simulation::new(backend.as_mut(), Listeners::lossless()).unwrap();
        let mut r = Reader::default();
        for i in 0..40u8 {
            packet(&mut sim, &mut r, S + u64::from(i) * MS, udp(i, 7000, false));
        }
        assert!(sim.backend.stats().unwrap().early_drop > 0);
        let destroyed: Vec<u32> = r
            .messages
            .iter()
            .filter(|(_, k, _)| *k == MessageKind::Destroy)
            .map(|(_, _, m)| m.id().unwrap())
            .collect();
        victims.push(destroyed);
    }
    assert_eq!(victims[0], victims[1]);
}
