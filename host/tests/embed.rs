//! The embedding API as a proxy uses it: a tracker moved into a thread and into an async task,
//! its errors told apart by `match`, handles of dead connections refused, hostile input
//! refused with the tracker still usable, and a long event queue drained in chunks.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use ctwasm_core::wire::build;
use ctwasm_host::{
    BackendKind, Batch, ConfigError, Connection, Delivery, Direction, Ending, Error, ExpectMask,
    Fault, GuestFault, Listeners, Refusal, Tracker, Tuple, Verdict, port_tuple,
};

const BOTH: [BackendKind; 2] = [BackendKind::Native, BackendKind::Component];

fn tracker(kind: BackendKind) -> Tracker {
    Tracker::builder().backend(kind).build().unwrap()
}

fn udp(i: u32) -> Vec<u8> {
    let l4 = build::udp(1000 + (i % 50_000) as u16, 53, 8);
    build::ipv4(
        [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
        [10, 255, 0, 1],
        17,
        &l4,
    )
}

/// The tracker answers after whatever came before: a new UDP flow is `New`.
/// The `proto` tuple between two socket addresses, as `port_tuple` makes it.
fn socket_tuple(proto: u8, src: &str, dst: &str) -> Tuple {
    port_tuple(proto, src.parse().unwrap(), dst.parse().unwrap()).unwrap()
}

fn assert_usable(t: &mut Tracker, n: u32) {
    let v = t.ingest_packet(1_000_000_000 + n as u64, 0, &udp(0xfe_0000 + n));
    assert_eq!(v, Ok(Verdict::New), "after step {n}");
}

// ----- Send --------------------------------------------------------------------------------

#[test]
fn a_tracker_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Tracker>();
    assert_send::<Error>();
}

#[test]
fn a_tracker_moves_into_a_thread() {
    for kind in BOTH {
        let mut t = tracker(kind);
        t.set_listeners(Listeners::Present).unwrap();
        let events = std::thread::spawn(move || {
            t.ingest_packet(1_000, 0, &udp(1)).unwrap();
            t.poll_events(|_| Delivery::Delivered).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(events, 1, "{kind:?}");
    }
}

/// Runs a future to completion on this thread (a dozen lines rather than an executor crate).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// Yields once, so the task is suspended with the tracker held across the `.await`.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// A task that owns the tracker, holds it across an `.await`, and runs on another thread:
/// what `tokio::spawn` asks of it (`Send + 'static`).
#[test]
fn a_tracker_moves_into_an_async_task() {
    fn spawn<F: Future + Send + 'static>(f: F) -> std::thread::JoinHandle<F::Output>
    where
        F::Output: Send,
    {
        std::thread::spawn(move || block_on(f))
    }
    for kind in BOTH {
        let mut t = tracker(kind);
        let task = spawn(async move {
            let conn = t
                .open(1_000, 0, &socket_tuple(6, "10.0.0.1:1", "10.0.0.2:2"))
                .unwrap();
            yield_now().await;
            t.transfer(2_000, conn, Direction::Original, 100).unwrap();
            t.dump().unwrap().len()
        });
        assert_eq!(task.join().unwrap(), 1, "{kind:?}");
    }
}

// ----- errors ------------------------------------------------------------------------------

#[test]
fn config_errors_name_the_sysctl_in_both_backends() {
    for kind in BOTH {
        let b = Tracker::builder().backend(kind);
        assert_eq!(
            b.clone().sysctl("nf_conntrack_bogus", 1).build().err(),
            Some(Error::Config(ConfigError::UnknownSysctl {
                name: "nf_conntrack_bogus".into()
            })),
            "{kind:?}"
        );
        let bad = b
            .sysctl("net.netfilter.nf_conntrack_max", "lots")
            .build()
            .err();
        assert!(
            matches!(
                &bad,
                Some(Error::Config(ConfigError::BadValue { name, value, .. }))
                    if name == "net.netfilter.nf_conntrack_max" && value == "lots"
            ),
            "{kind:?}: {bad:?}"
        );
    }
    assert_eq!(
        Tracker::builder()
            .backend(BackendKind::Native)
            .inject_fault(GuestFault::TrapAtPacket(1))
            .build()
            .err(),
        Some(Error::Config(ConfigError::FaultNeedsComponent))
    );
}

/// Every refusal the WIT names, from both backends, each leaving the tracker usable.
#[test]
fn refusals_are_typed_and_leave_the_tracker_usable() {
    for kind in BOTH {
        let mut t = Tracker::builder()
            .backend(kind)
            .sysctl("nf_conntrack_expect_max", 2)
            .sysctl("nf_conntrack_max", 8)
            .build()
            .unwrap();
        let control = socket_tuple(6, "10.0.0.1:40000", "10.0.0.2:21");
        let data = socket_tuple(6, "10.0.0.2:20", "10.0.0.1:50000");
        let other = socket_tuple(6, "10.0.0.2:20", "10.0.0.1:50001");
        let third = socket_tuple(6, "10.0.0.2:20", "10.0.0.1:50002");
        let mask = ExpectMask::default();

        let master = t.open(1_000, 0, &control).unwrap();
        let e = t.expect(2_000, master, &data, mask, 60, false).unwrap();
        let answers = [
            port_tuple(
                6,
                "10.0.0.1:1".parse().unwrap(),
                "[fd00::1]:2".parse().unwrap(),
            )
            .err(),
            t.expect(2_100, master, &data, mask, 60, false).err(),
            t.expect(2_200, master, &other, mask, 60, false)
                .and_then(|_| t.expect(2_250, master, &third, mask, 60, false))
                .err(),
            t.delete(2_300, 0, &data).err(),
            t.unexpect(2_400, e).and(t.unexpect(2_500, e)).err(),
            t.restore(b"not a snapshot").err(),
        ];
        assert_eq!(
            answers,
            [
                Some(Error::Refused(Refusal::BadTuple)),
                Some(Error::Refused(Refusal::Exists)),
                Some(Error::Refused(Refusal::TableFull)),
                Some(Error::Refused(Refusal::NotFound)),
                Some(Error::Refused(Refusal::UnknownId)),
                Some(Error::Refused(Refusal::BadSnapshot)),
            ],
            "{kind:?}"
        );
        assert_usable(&mut t, 1);
        // The table of eight fills.
        let full = (2..20)
            .map(|i| t.ingest_packet(3_000 + i as u64, 0, &udp(i)))
            .find(|v| *v == Ok(Verdict::Drop));
        assert_eq!(full, Some(Ok(Verdict::Drop)), "{kind:?}");
        let refused = t.open(4_000, 0, &socket_tuple(17, "10.9.0.1:1", "10.9.0.2:2"));
        assert_eq!(refused, Err(Error::Refused(Refusal::TableFull)), "{kind:?}");
    }
}

/// A guest that traps, then one that loops: the embedder sees `Trapped`, then `Dead` for every
/// later call, or `DeadlineExceeded`; `restore` from a snapshot brings the tracker back.
#[test]
fn guest_faults_are_typed_and_restore_brings_the_tracker_back() {
    let mut t = Tracker::builder()
        .inject_fault(GuestFault::TrapAtPacket(3))
        .build()
        .unwrap();
    t.ingest_packet(1_000, 0, &udp(1)).unwrap();
    t.ingest_packet(2_000, 0, &udp(2)).unwrap();
    let saved = t.snapshot().unwrap();
    assert!(matches!(
        t.ingest_packet(3_000, 0, &udp(3)),
        Err(Error::Fault(Fault::Trapped(_)))
    ));
    assert_eq!(t.stats().err(), Some(Error::Fault(Fault::Dead)));
    assert_eq!(
        t.restore(b"junk"),
        Err(Error::Refused(Refusal::BadSnapshot))
    );
    assert_eq!(
        t.stats().err(),
        Some(Error::Fault(Fault::Dead)),
        "still dead"
    );
    t.restore(&saved).unwrap();
    assert_eq!(t.dump().unwrap().len(), 2);

    let mut t = Tracker::builder()
        .inject_fault(GuestFault::LoopAtPacket(1))
        .call_deadline(Duration::from_millis(100))
        .build()
        .unwrap();
    assert_eq!(
        t.ingest_packet(1_000, 0, &udp(1)),
        Err(Error::Fault(Fault::DeadlineExceeded))
    );
    assert_eq!(t.next_deadline(), Err(Error::Fault(Fault::Dead)));
}

/// The memory limit is the builder's: a small one refuses new flows once the table fills it,
/// and the tracker lives on.
#[test]
fn the_memory_limit_is_applied() {
    let mut t = Tracker::builder().memory_limit(8 << 20).build().unwrap();
    let mut batch = Batch::new();
    for i in 0..40_000 {
        batch.push(1 + i as u64, 0, &udp(i));
    }
    let verdicts = t.ingest(1, &batch).unwrap().to_vec();
    let refused = verdicts.iter().filter(|&&v| v == Verdict::Drop).count();
    assert!(refused > 0, "the limit was never reached");
    let stats = t.stats().unwrap();
    assert_eq!(stats.insert_failed, refused as u64, "{stats:?}");
}

// ----- handles -----------------------------------------------------------------------------

/// A handle names one connection: after its connection is gone, and when its id names a later
/// entry (simulated: the same id with another start), it is refused and nothing is touched.
#[test]
fn a_handle_of_a_dead_connection_is_refused() {
    for kind in BOTH {
        let mut t = tracker(kind);
        let tuple = socket_tuple(6, "10.0.0.1:40000", "10.0.0.2:443");
        let conn = t.open(1_000, 0, &tuple).unwrap();
        let entry = t.dump().unwrap().remove(0);
        assert_eq!(Connection::of_entry(&entry), conn);

        let mut later = entry.clone();
        later.start_ns += 1;
        let impostor = Connection::of_entry(&later);
        let before = t.dump().unwrap();
        assert_eq!(
            t.transfer(2_000, impostor, Direction::Original, 10),
            Err(Error::Refused(Refusal::UnknownConnection))
        );
        assert_eq!(
            t.close(2_000, impostor, Ending::CLIENT_RESET),
            Err(Error::Refused(Refusal::UnknownConnection))
        );
        let data = socket_tuple(6, "10.0.0.2:20", "10.0.0.1:5000");
        assert_eq!(
            t.expect(2_000, impostor, &data, ExpectMask::default(), 60, false),
            Err(Error::Refused(Refusal::UnknownMaster))
        );
        assert_eq!(
            t.dump().unwrap(),
            before,
            "{kind:?}: the impostor touched nothing"
        );

        t.close(3_000, conn, Ending::CLIENT_RESET).unwrap();
        // The reset entry times out (CLOSE, 10 s) and is gone once its DESTROY is taken (this
        // version queues events even with no listener).
        t.advance(20_000_000_000).unwrap();
        t.poll_events(|_| Delivery::Delivered).unwrap();
        assert!(t.dump().unwrap().is_empty(), "{kind:?}: {:?}", t.dump());
        assert_eq!(
            t.transfer(20_000_000_001, conn, Direction::Reply, 1),
            Err(Error::Refused(Refusal::UnknownConnection))
        );
        // A new connection on the same tuple is another connection.
        let again = t.open(21_000_000_000, 0, &tuple).unwrap();
        assert_ne!(again, conn);
        assert_eq!(
            t.close(21_000_000_001, conn, Ending::CLIENT_FIN),
            Err(Error::Refused(Refusal::UnknownConnection))
        );
        t.close(21_000_000_002, again, Ending::CLIENT_FIN).unwrap();
    }
}

// ----- hostile input -----------------------------------------------------------------------

/// Frames past the end, cut headers and empty frames are refused whole: nothing ingested.
#[test]
fn broken_batches_are_refused_whole() {
    for kind in BOTH {
        let mut t = tracker(kind);
        let mut good = Batch::new();
        good.push(1_000, 0, &udp(1));
        good.push(1_001, 0, &udp(2));
        let good = good.as_ref().to_vec();
        let second = 16 + udp(1).len();

        let mut past_end = good.clone();
        past_end[second + 12..second + 16].copy_from_slice(&10_000u32.to_le_bytes());
        let mut huge = good.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let cut_header = good[..second + 7].to_vec();
        let mut empty = good.clone();
        ctwasm_core::batch::push_packet(&mut empty, 1_002, 0, &[]);

        let cases: [(&[u8], usize); 4] = [
            (&past_end, second),
            (&huge, 0),
            (&cut_header, second),
            (&empty, good.len()),
        ];
        for (i, (bytes, offset)) in cases.into_iter().enumerate() {
            assert_eq!(
                t.ingest(1_000, bytes).err(),
                Some(Error::Refused(Refusal::BadFrame { offset })),
                "{kind:?} case {i}"
            );
        }
        assert!(
            t.dump().unwrap().is_empty(),
            "{kind:?}: nothing was ingested"
        );
        assert_eq!(t.ingest(1_000, &good).unwrap(), [Verdict::New; 2]);
        assert_eq!(t.ingest(1_000, []).unwrap(), []);
    }
}

/// Random, truncated and bit-flipped snapshots: `BadSnapshot` (or, for a flip the format
/// cannot notice, a tracker like the native engine's answer), and the tracker goes on.
#[test]
fn hostile_snapshots_are_refused_and_leave_the_tracker_usable() {
    for kind in BOTH {
        let mut t = tracker(kind);
        t.set_listeners(Listeners::Reliable).unwrap();
        for i in 0..20 {
            t.ingest_packet(1_000 + i as u64, 0, &udp(i)).unwrap();
        }
        let snapshot = t.snapshot().unwrap();
        let mut n = 0;
        for (round, bytes) in ctwasm_host::testing::snapshot_noise(&snapshot, 50, 2048)
            .into_iter()
            .enumerate()
        {
            assert_eq!(
                t.restore(&bytes),
                Err(Error::Refused(Refusal::BadSnapshot)),
                "{kind:?} round {round}"
            );
            n += 1;
            assert_usable(&mut t, n);
        }
        let step = (snapshot.len() / 100).max(1);
        for len in (0..snapshot.len()).step_by(step) {
            assert_eq!(
                t.restore(&snapshot[..len]),
                Err(Error::Refused(Refusal::BadSnapshot)),
                "{kind:?} cut at {len}"
            );
        }
        n += 1;
        assert_usable(&mut t, n);
        for pos in (0..snapshot.len()).step_by(step) {
            let mut flipped = snapshot.clone();
            flipped[pos] ^= 1 << (pos % 8);
            let native = ctwasm_core::Tracker::restore(&flipped).is_ok();
            let mut probe = tracker(kind);
            let answer = probe.restore(&flipped);
            assert_eq!(answer.is_ok(), native, "{kind:?} flip at {pos}");
            if let Err(e) = answer {
                assert_eq!(e, Error::Refused(Refusal::BadSnapshot));
            }
            n += 1;
            assert_usable(&mut probe, n);
        }
        t.restore(&snapshot).unwrap();
        assert_eq!(t.dump().unwrap().len(), 20, "{kind:?}");
    }
}

// ----- the pump ----------------------------------------------------------------------------

/// The pump hands over every message in order and reports the sink's answers: the same
/// events from both backends, and a DESTROY the sink failed keeps its entry dying.
#[test]
fn the_pump_reports_every_message_in_order() {
    let mut runs = Vec::new();
    for kind in BOTH {
        let mut t = Tracker::builder()
            .backend(kind)
            .retry_policy(ctwasm_host::RetryPolicy::OnDrain)
            .build()
            .unwrap();
        t.set_listeners(Listeners::Reliable).unwrap();
        let mut batch = Batch::new();
        for i in 0..10_000 {
            batch.push(1_000 + i as u64, 0, &udp(i));
        }
        t.ingest(20_000, &batch).unwrap();
        t.flush(30_000).unwrap();
        let mut seen = Vec::new();
        let mut failed_once = false;
        let n = t
            .poll_events(|e| {
                seen.push(e.to_string());
                if !failed_once && seen.len() > 10_000 {
                    failed_once = true;
                    Delivery::Failed
                } else {
                    Delivery::Delivered
                }
            })
            .unwrap();
        assert_eq!(n, 20_000, "{kind:?}");
        assert_eq!(
            t.stats().unwrap().dying,
            1,
            "{kind:?}: the failed DESTROY waits"
        );
        runs.push(seen);
    }
    assert!(runs[0] == runs[1], "the backends' events differ");
}

/// The README's embedding section is `examples/embed.rs`, which the crate's doctest runs.
#[test]
fn the_readme_shows_the_example_program() {
    let readme = include_str!("../../README.md");
    let example = include_str!("../examples/embed.rs");
    let body = example
        .split_once("\n\n")
        .expect("a module doc, then the program")
        .1;
    assert!(
        readme.contains(body),
        "README.md's embedding section differs from host/examples/embed.rs"
    );
}

/// Ten million pending event messages (about 1.9 GB of frames, past wasmtime's ~128 MB per-call
/// copy limit many times over) queued in a component and drained by the pump without a trap:
/// 1.25 million TCP connections open and close while nobody takes an event (seven state
/// changes each), then a flush ends them (an eighth message each). The component only: the
/// native engine has no copy limit, and no 4 GiB address space to run out of.
#[test]
fn ten_million_pending_events_drain_without_a_trap() {
    const FLOWS: u32 = 1_250_000;
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const FIN: u8 = 0x01;
    let mut t = Tracker::builder()
        .sysctl("nf_conntrack_max", FLOWS + 1000)
        .build()
        .unwrap();
    t.set_listeners(Listeners::Present).unwrap();
    let mut batch = Batch::new();
    let mut now = 1_000;
    for first in (0..FLOWS).step_by(25_000) {
        batch.clear();
        for i in first..first + 25_000 {
            let (a, b) = (
                [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
                [10, 255, 0, 1],
            );
            let port = 1024 + (i % 60_000) as u16;
            now += 1;
            let orig = |seq, ack, flags| {
                build::ipv4(a, b, 6, &build::tcp(port, 80, seq, ack, flags, 1000, 0))
            };
            let reply = |seq, ack, flags| {
                build::ipv4(b, a, 6, &build::tcp(80, port, seq, ack, flags, 1000, 0))
            };
            for packet in [
                orig(100, 0, SYN),
                reply(500, 101, SYN | ACK),
                orig(101, 501, ACK),
                orig(101, 501, FIN | ACK),
                reply(501, 102, ACK),
                reply(501, 102, FIN | ACK),
                orig(102, 502, ACK),
            ] {
                batch.push(now, 0, &packet);
            }
        }
        t.ingest(now, &batch).unwrap();
    }
    t.flush(now + 1).unwrap();
    let stats = t.stats().unwrap();
    assert_eq!(stats.events_failed, 0, "an event was refused: {stats:?}");
    let pending = stats.events_emitted;
    assert_eq!(pending, 8 * u64::from(FLOWS));
    let (mut destroys, mut bytes) = (0u64, 0usize);
    let taken = t
        .poll_events(|e| {
            destroys += e.events().contains(ctwasm_core::EventBits::DESTROY) as u64;
            bytes += e.netlink().len();
            Delivery::Delivered
        })
        .unwrap();
    eprintln!("drained {taken} messages, {} MB of ctnetlink", bytes >> 20);
    assert_eq!(taken as u64, pending);
    assert_eq!(destroys, u64::from(FLOWS));
    assert!(bytes > 10 * (128 << 20), "only {bytes} bytes");
    assert_eq!(t.stats().unwrap().count, 0, "every DESTROY was delivered");
    assert_usable(&mut t, 1);
}

/// With recovery on, a guest that traps costs the embedder nothing: every call succeeds and the
/// table is what it would have been.
#[test]
fn with_checkpoints_a_trapping_guest_is_recovered_without_a_trace() {
    let mut recovering = Tracker::builder()
        .checkpoint_every(4)
        .inject_fault(GuestFault::TrapAtPacket(7))
        .build()
        .unwrap();
    let mut plain = Tracker::builder().build().unwrap();
    for i in 0..20 {
        let now = 1_000 + u64::from(i);
        let a = recovering.ingest_packet(now, 0, &udp(i)).unwrap();
        let b = plain.ingest_packet(now, 0, &udp(i)).unwrap();
        assert_eq!(a, b, "packet {i}");
    }
    assert_eq!(recovering.dump().unwrap(), plain.dump().unwrap());
    let mut heard = (Vec::new(), Vec::new());
    recovering
        .poll_events(|e| {
            heard.0.push(e.netlink().to_vec());
            Delivery::Delivered
        })
        .unwrap();
    plain
        .poll_events(|e| {
            heard.1.push(e.netlink().to_vec());
            Delivery::Delivered
        })
        .unwrap();
    assert_eq!(heard.0.len(), 20);
    assert!(heard.0 == heard.1, "the event streams differ");
}

// ----- batches of connection calls -----------------------------------------------------------

/// A batch longer than one crossing, whose later calls name opens of earlier crossings, does
/// what the single calls do, on both backends; references that name no open of the batch,
/// and handles of ended connections, are refused one by one.
#[test]
fn a_batch_of_connection_calls_spans_crossings_and_refuses_what_it_cannot_name() {
    use ctwasm_host::{CALLS_PER_CROSSING, Call, ConnectionRef};
    let n = CALLS_PER_CROSSING + 300;
    let tuple = |i: usize| {
        socket_tuple(
            6,
            &format!("10.1.{}.{}:{}", i / 250, i % 250 + 1, 40_000 + i % 1000),
            "10.2.0.1:443",
        )
    };
    let mut results = Vec::new();
    for kind in BOTH {
        let mut t = tracker(kind);
        let mut single = tracker(kind);
        // Opens fill the first crossing and more; each later transfer names an open from the
        // start of the batch, most of them in an earlier crossing.
        let mut calls: Vec<Call> = (0..n)
            .map(|i| Call::Open {
                zone: 0,
                tuple: tuple(i),
                first_bytes: 0,
            })
            .collect();
        for i in 0..300 {
            calls.push(Call::Transfer {
                conn: ConnectionRef::Opened(i * 3),
                dir: Direction::Reply,
                bytes: 1 << 20,
            });
        }
        let hostile = [
            ConnectionRef::Opened(usize::MAX),
            ConnectionRef::Opened(calls.len() + 5),
            ConnectionRef::Opened(n),
            ConnectionRef::Opened(u32::MAX as usize + 1),
        ];
        for conn in hostile {
            calls.push(Call::Close {
                conn,
                ending: Ending::CLIENT_RESET,
            });
        }
        let outcomes = t.calls(1_000, &calls).unwrap();
        assert_eq!(outcomes.len(), calls.len());
        for (i, outcome) in outcomes[..n].iter().enumerate() {
            let c = single.open(1_000, 0, &tuple(i)).unwrap();
            assert_eq!(*outcome, Ok(c), "{kind:?} open {i}");
        }
        for i in 0..300 {
            let c = outcomes[i * 3].unwrap();
            single
                .transfer(1_000, c, Direction::Reply, 1 << 20)
                .unwrap();
            assert_eq!(outcomes[n + i], Ok(c));
        }
        for o in &outcomes[n + 300..] {
            assert_eq!(*o, Err(Refusal::UnknownConnection), "{kind:?}");
        }
        // A handle of a connection that ended is refused; a live one's works.
        let ended = outcomes[1].unwrap();
        let later = outcomes[2].unwrap();
        t.delete(2_000, 0, &tuple(1)).unwrap();
        let again = t
            .calls(
                3_000,
                &[
                    Call::Close {
                        conn: ConnectionRef::Live(ended),
                        ending: Ending::CLIENT_FIN,
                    },
                    Call::Close {
                        conn: ConnectionRef::Live(later),
                        ending: Ending::CLIENT_FIN,
                    },
                ],
            )
            .unwrap();
        assert_eq!(again, [Err(Refusal::UnknownConnection), Ok(later)]);
        single.delete(2_000, 0, &tuple(1)).unwrap();
        single.close(3_000, later, Ending::CLIENT_FIN).unwrap();
        assert_eq!(t.dump().unwrap(), single.dump().unwrap(), "{kind:?}");
        results.push(t.dump().unwrap());
    }
    assert_eq!(results[0], results[1], "native and component alike");
}
