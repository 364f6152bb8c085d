//! The component glue: the engine behind the `ctwasm:core@0.2.0` WIT interfaces (`tracker`,
//! `proxy`, `expect`, over the shared `types`).
//!
//! Compiled only for the wasm target (see `lib.rs`); every function here converts between WIT
//! types and engine types and calls one engine method, nothing more. The WIT flags and enums are
//! declared in the kernel's order, so `status` and `expect-flags` map bit for bit onto the
//! engine's `Status` and expectation flags, and `tcp-state` by discriminant.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv6Addr};

use crate::config::{Config, ConfigError, RetryPolicy};
use crate::engine::expect::{ExpectError, ExpectMask};
use crate::engine::{ConnCall, ConnError, ConnHandle, ConnRef, Ending};
use crate::engine::{Delivery, EntryView, Tracker as Engine};
use crate::snapshot::SnapshotError;
use crate::tuple::{Addr, Direction, Family, L4Tuple, Tuple};

wit_bindgen::generate!({
    path: "../wit",
    world: "ctwasm-core",
});

use exports::ctwasm::core::tracker as wit_tracker;
use exports::ctwasm::core::types as wit;
use exports::ctwasm::core::{expect as wit_expect, proxy as wit_proxy};
use wit::ErrorCode;

struct Component;

export!(Component);

impl wit_tracker::Guest for Component {
    type Tracker = TrackerResource;
    type SnapshotBytes = SnapshotBytes;
}

/// The guest-owned `snapshot-bytes` resource: a snapshot that crosses the boundary in pieces.
struct SnapshotBytes {
    bytes: RefCell<Vec<u8>>,
}

impl wit_tracker::GuestSnapshotBytes for SnapshotBytes {
    fn new() -> Self {
        SnapshotBytes {
            bytes: RefCell::new(Vec::new()),
        }
    }

    fn len(&self) -> u64 {
        self.bytes.borrow().len() as u64
    }

    fn read(&self, offset: u64, max: u32) -> Vec<u8> {
        let bytes = self.bytes.borrow();
        let start = usize::try_from(offset).map_or(bytes.len(), |o| o.min(bytes.len()));
        let end = start.saturating_add(max as usize).min(bytes.len());
        bytes[start..end].to_vec()
    }

    fn append(&self, more: Vec<u8>) -> Result<(), ErrorCode> {
        let mut bytes = self.bytes.borrow_mut();
        bytes
            .try_reserve(more.len())
            .map_err(|_| ErrorCode::NoMemory)?;
        bytes.extend_from_slice(&more);
        Ok(())
    }
}

/// The guest-owned `tracker` resource. The component model hands out `&self`, and a resource
/// is only ever entered by one call at a time, so a `RefCell` suffices.
struct TrackerResource {
    engine: RefCell<Engine>,
    /// The fault to commit on purpose (testing only), and the packets ingested since it was set.
    fault: Cell<Option<wit::Fault>>,
    packets: Cell<u64>,
}

impl TrackerResource {
    fn wrap(engine: Engine) -> wit_tracker::Tracker {
        wit_tracker::Tracker::new(TrackerResource {
            engine: RefCell::new(engine),
            fault: Cell::new(None),
            packets: Cell::new(0),
        })
    }

    /// Commits the configured fault if its packet is in this batch.
    fn commit_fault(&self, batch: &[u8]) {
        if self.fault.get().is_none() {
            return;
        }
        let count = crate::batch::packets(batch).count() as u64;
        let in_zone = |zone| crate::batch::packets(batch).any(|p| p.is_ok_and(|p| p.zone == zone));
        self.commit_fault_for(count, in_zone);
    }

    /// Commits the configured fault for a connection call (`open`, `transfer`, `close`), which
    /// counts as one packet (of `zone`, where the call names one).
    fn commit_call_fault(&self, zone: Option<u16>) {
        if self.fault.get().is_some() {
            self.commit_fault_for(1, |z| zone == Some(z));
        }
    }

    /// Counts `count` packets and commits the fault if its packet is among them (or, for a
    /// zone fault, if `in_zone` says one of them is in its zone).
    fn commit_fault_for(&self, count: u64, in_zone: impl Fn(u16) -> bool) {
        let Some(fault) = self.fault.get() else {
            return;
        };
        let before = self.packets.get();
        let after = before + count;
        self.packets.set(after);
        match fault {
            wit::Fault::TrapAtPacket(n) if before < n && n <= after => {
                panic!("fault injected at packet {n}")
            }
            wit::Fault::LoopAtPacket(n) if before < n && n <= after => loop {
                core::hint::black_box(n);
            },
            wit::Fault::TrapInZone(zone) if in_zone(zone) => {
                panic!("fault injected in zone {zone}")
            }
            _ => {}
        }
    }
}

/// Messages waiting to be taken, as the WIT counts them (a queue past `u32::MAX` would not fit
/// in a guest's memory, but saturate rather than wrap).
fn queued_events(engine: &Engine) -> u32 {
    u32::try_from(engine.pending_events()).unwrap_or(u32::MAX)
}

/// The engine behind a borrowed `tracker` handle.
fn engine<'a>(t: &'a wit_tracker::TrackerBorrow<'_>) -> std::cell::RefMut<'a, Engine> {
    t.get::<TrackerResource>().engine.borrow_mut()
}

impl wit_tracker::GuestTracker for TrackerResource {
    fn create(config: wit::Config) -> Result<wit_tracker::Tracker, wit::ConfigError> {
        let mut engine_config = Config {
            seed: config.seed,
            retry_policy: match config.retry_policy {
                wit::RetryPolicy::Grace => RetryPolicy::Grace,
                wit::RetryPolicy::Kernel => RetryPolicy::Kernel,
                wit::RetryPolicy::OnDrain => RetryPolicy::OnDrain,
            },
            ..Config::default()
        };
        for (i, s) in config.sysctls.iter().enumerate() {
            engine_config
                .sysctls
                .set(&s.name, &s.value)
                .map_err(|e| wit::ConfigError {
                    code: match e {
                        ConfigError::UnknownSysctl(_) => ErrorCode::UnknownSysctl,
                        ConfigError::BadValue { .. } => ErrorCode::BadValue,
                    },
                    sysctl: i as u32,
                })?;
        }
        Ok(Self::wrap(Engine::new(engine_config)))
    }

    fn restore(
        bytes: wit_tracker::SnapshotBytesBorrow<'_>,
    ) -> Result<wit_tracker::Tracker, ErrorCode> {
        let bytes = bytes.get::<SnapshotBytes>().bytes.borrow();
        let engine = Engine::restore(&bytes).map_err(|e| match e {
            SnapshotError::UnsupportedVersion { .. } => ErrorCode::UnsupportedSnapshot,
            _ => ErrorCode::BadSnapshot,
        })?;
        Ok(Self::wrap(engine))
    }

    fn set_listeners(&self, listeners: wit::ListenerPresence) {
        use wit::ListenerPresence as L;
        self.engine.borrow_mut().set_listeners(
            (listeners & L::PRESENT).bits() != 0,
            (listeners & L::RELIABLE).bits() != 0,
        );
    }

    fn ingest(&self, now: u64, packets: Vec<u8>) -> wit::Ingested {
        self.commit_fault(&packets);
        let mut verdicts = Vec::with_capacity(packets.len() / 64 + 1);
        let mut engine = self.engine.borrow_mut();
        engine.ingest_batch_at(now, &packets, &mut verdicts);
        wit::Ingested {
            verdicts,
            queued_events: queued_events(&engine),
        }
    }

    fn advance(&self, now: u64) {
        self.engine.borrow_mut().advance(now);
    }

    fn next_deadline(&self) -> Option<u64> {
        self.engine.borrow().next_deadline()
    }

    fn take_events(&self, max: u32) -> Vec<u8> {
        let mut out = Vec::new();
        self.engine.borrow_mut().take_events(max as usize, &mut out);
        out
    }

    fn report_delivery(&self, results: Vec<wit::Delivery>) -> u32 {
        let results: Vec<Delivery> = results
            .into_iter()
            .map(|r| match r {
                wit::Delivery::Delivered => Delivery::Delivered,
                wit::Delivery::Failed => Delivery::Failed,
            })
            .collect();
        let mut engine = self.engine.borrow_mut();
        engine.report_delivery(&results);
        queued_events(&engine)
    }

    fn listeners_drained(&self, now: u64) {
        self.engine.borrow_mut().listeners_drained(now);
    }

    fn flush(&self, now: u64) {
        self.engine.borrow_mut().flush(now);
    }

    fn delete(&self, now: u64, zone: u16, t: wit::ConnTuple) -> Result<(), ErrorCode> {
        let tuple = tuple_from_wit(&t)?;
        let found = self.engine.borrow_mut().delete(now, zone, &tuple);
        found.then_some(()).ok_or(ErrorCode::NotFound)
    }

    fn dump(&self, cursor: u32, max: u32) -> wit::DumpPage {
        let (rows, next) = self.engine.borrow().dump(cursor, max as usize);
        wit::DumpPage {
            entries: rows.iter().map(entry_to_wit).collect(),
            next,
        }
    }

    fn stats(&self) -> wit::Stats {
        let s = self.engine.borrow().stats();
        macro_rules! to_wit {
            ($($field:ident),+) => {
                wit::Stats { $($field: s.$field),+ }
            };
        }
        crate::stats_fields!(to_wit)
    }

    fn snapshot(&self) -> wit_tracker::SnapshotBytes {
        wit_tracker::SnapshotBytes::new(SnapshotBytes {
            bytes: RefCell::new(self.engine.borrow().snapshot()),
        })
    }

    fn set_memory_budget(&self, bytes: Option<u64>) {
        self.engine.borrow_mut().set_memory_budget(bytes);
    }

    fn set_fault(&self, fault: Option<wit::Fault>) {
        self.fault.set(fault);
        self.packets.set(0);
    }
}

impl wit_proxy::Guest for Component {
    fn open(
        tracker: wit_tracker::TrackerBorrow<'_>,
        now: u64,
        zone: u16,
        t: wit::ConnTuple,
    ) -> Result<u32, ErrorCode> {
        let tuple = tuple_from_wit(&t)?;
        tracker
            .get::<TrackerResource>()
            .commit_call_fault(Some(zone));
        engine(&tracker).open(now, zone, &tuple).map_err(conn_error)
    }

    fn transfer(
        tracker: wit_tracker::TrackerBorrow<'_>,
        now: u64,
        id: u32,
        dir: wit::Direction,
        bytes: u64,
    ) -> Result<(), ErrorCode> {
        let dir = direction_from_wit(dir);
        tracker.get::<TrackerResource>().commit_call_fault(None);
        engine(&tracker)
            .transfer(now, id, dir, bytes)
            .map_err(conn_error)
    }

    fn close(
        tracker: wit_tracker::TrackerBorrow<'_>,
        now: u64,
        id: u32,
        ending: wit_proxy::Ending,
    ) -> Result<(), ErrorCode> {
        tracker.get::<TrackerResource>().commit_call_fault(None);
        engine(&tracker)
            .close(now, id, ending_from_wit(ending))
            .map_err(conn_error)
    }

    fn start(tracker: wit_tracker::TrackerBorrow<'_>, id: u32) -> Option<u64> {
        engine(&tracker).connection_start(id)
    }

    fn calls(
        tracker: wit_tracker::TrackerBorrow<'_>,
        now: u64,
        calls: Vec<wit_proxy::ConnCall>,
    ) -> Vec<Result<wit_proxy::ConnHandle, ErrorCode>> {
        use wit_proxy::{ConnCall as Call, ConnRef as Ref};
        let conn = |r: Ref| match r {
            Ref::Live(h) => ConnRef::Live(ConnHandle {
                id: h.id,
                start_ns: h.start,
            }),
            Ref::Opened(i) => ConnRef::Opened(i),
        };
        let batch: Vec<ConnCall> = calls
            .iter()
            .map(|call| match call {
                Call::Open(o) => match tuple_from_wit(&o.t) {
                    Ok(tuple) => ConnCall::Open {
                        zone: o.zone,
                        tuple,
                        first_bytes: o.first_bytes,
                    },
                    Err(_) => ConnCall::Unreadable(ConnError::BadTuple),
                },
                Call::Transfer(t) => ConnCall::Transfer {
                    conn: conn(t.conn),
                    dir: direction_from_wit(t.dir),
                    bytes: t.bytes,
                },
                Call::Close(c) => ConnCall::Close {
                    conn: conn(c.conn),
                    ending: ending_from_wit(c.ending),
                },
            })
            .collect();
        // Each call counts for the fault injector, as the single calls do.
        let resource = tracker.get::<TrackerResource>();
        for call in &batch {
            resource.commit_call_fault(match call {
                ConnCall::Open { zone, .. } => Some(*zone),
                _ => None,
            });
        }
        let mut results = Vec::with_capacity(batch.len());
        engine(&tracker).connection_calls(now, &batch, &mut results);
        let handle = |h: ConnHandle| wit_proxy::ConnHandle {
            id: h.id,
            start: h.start_ns,
        };
        results
            .into_iter()
            .map(|r| r.map(handle).map_err(conn_error))
            .collect()
    }
}

impl wit_expect::Guest for Component {
    fn expect(
        tracker: wit_tracker::TrackerBorrow<'_>,
        now: u64,
        master_id: u32,
        t: wit::ConnTuple,
        mask: wit::ExpectMask,
        timeout: u32,
        flags: wit::ExpectFlags,
    ) -> Result<u32, ErrorCode> {
        let tuple = tuple_from_wit(&t)?;
        let mask = ExpectMask {
            src_addr: mask.src_addr,
            src_port: mask.src_port,
        };
        engine(&tracker)
            .expect(
                now,
                master_id,
                &tuple,
                mask,
                timeout,
                u32::from(flags.bits()),
            )
            .map_err(|e| match e {
                ExpectError::UnknownMaster => ErrorCode::UnknownMaster,
                ExpectError::TableFull => ErrorCode::TableFull,
                ExpectError::Exists => ErrorCode::Exists,
            })
    }

    fn unexpect(
        tracker: wit_tracker::TrackerBorrow<'_>,
        now: u64,
        id: u32,
    ) -> Result<(), ErrorCode> {
        let found = engine(&tracker).unexpect(now, id);
        found.then_some(()).ok_or(ErrorCode::UnknownId)
    }

    fn stats(tracker: wit_tracker::TrackerBorrow<'_>) -> wit::ExpectStats {
        let s = engine(&tracker).expect_stats();
        wit::ExpectStats {
            expect_new: s.expect_new,
            expect_create: s.expect_create,
            expect_delete: s.expect_delete,
            expectations: s.expectations,
        }
    }
}

fn direction_from_wit(d: wit::Direction) -> Direction {
    match d {
        wit::Direction::Original => Direction::Original,
        wit::Direction::Reply => Direction::Reply,
    }
}

fn ending_from_wit(e: wit_proxy::Ending) -> Ending {
    match e {
        wit_proxy::Ending::Fin(d) => Ending::Fin {
            first: direction_from_wit(d),
        },
        wit_proxy::Ending::Reset(d) => Ending::Reset {
            from: direction_from_wit(d),
        },
    }
}

fn conn_error(e: ConnError) -> ErrorCode {
    match e {
        ConnError::UnknownId => ErrorCode::UnknownId,
        ConnError::TableFull => ErrorCode::TableFull,
        ConnError::BadTuple => ErrorCode::BadTuple,
    }
}

/// The one way a WIT tuple can be malformed: addresses of two families.
fn tuple_from_wit(t: &wit::ConnTuple) -> Result<Tuple, ErrorCode> {
    use wit::IpAddress::{Ipv4, Ipv6};
    let (family, src, dst) = match (t.src, t.dst) {
        (Ipv4(s), Ipv4(d)) => (Family::Ipv4, v4(s), v4(d)),
        (Ipv6(s), Ipv6(d)) => (Family::Ipv6, v6(s), v6(d)),
        _ => return Err(ErrorCode::BadTuple),
    };
    let l4 = match t.l4 {
        wit::L4Tuple::Ports((src, dst)) => L4Tuple::Ports { src, dst },
        wit::L4Tuple::Icmp(k) => L4Tuple::Icmp {
            id: k.id,
            kind: k.kind,
            code: k.code,
        },
        wit::L4Tuple::None => L4Tuple::None,
    };
    Ok(Tuple {
        family,
        src,
        dst,
        proto: t.proto,
        l4,
    })
}

fn v4((a, b, c, d): wit::Ipv4Address) -> Addr {
    Addr::v4([a, b, c, d])
}

fn v6((a, b, c, d, e, f, g, h): wit::Ipv6Address) -> Addr {
    Addr::v6(Ipv6Addr::new(a, b, c, d, e, f, g, h).octets())
}

fn address_to_wit(family: Family, a: Addr) -> wit::IpAddress {
    match a.to_ip(family) {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            wit::IpAddress::Ipv4((a, b, c, d))
        }
        IpAddr::V6(v6) => {
            let [a, b, c, d, e, f, g, h] = v6.segments();
            wit::IpAddress::Ipv6((a, b, c, d, e, f, g, h))
        }
    }
}

fn tuple_to_wit(t: &Tuple) -> wit::ConnTuple {
    wit::ConnTuple {
        src: address_to_wit(t.family, t.src),
        dst: address_to_wit(t.family, t.dst),
        proto: t.proto,
        l4: match t.l4 {
            L4Tuple::Ports { src, dst } => wit::L4Tuple::Ports((src, dst)),
            L4Tuple::Icmp { id, kind, code } => wit::L4Tuple::Icmp(wit::IcmpKey { id, kind, code }),
            L4Tuple::None => wit::L4Tuple::None,
        },
    }
}

fn entry_to_wit(e: &EntryView) -> wit::Entry {
    use crate::event::TcpState as S;
    wit::Entry {
        id: e.id,
        zone: e.zone,
        orig: tuple_to_wit(&e.orig),
        reply: tuple_to_wit(&e.reply),
        // The engine names the kernel's first 16 bits, as many as the WIT flags do.
        status: wit::Status::from_bits_retain(e.status.0 as u16),
        tcp_state: e.tcp_state.map(|s| match s {
            S::None => wit::TcpState::None,
            S::SynSent => wit::TcpState::SynSent,
            S::SynRecv => wit::TcpState::SynRecv,
            S::Established => wit::TcpState::Established,
            S::FinWait => wit::TcpState::FinWait,
            S::CloseWait => wit::TcpState::CloseWait,
            S::LastAck => wit::TcpState::LastAck,
            S::TimeWait => wit::TcpState::TimeWait,
            S::Close => wit::TcpState::Close,
            S::SynSent2 => wit::TcpState::SynSent2,
        }),
        sctp_state: e.sctp_state.map(|s| {
            use crate::event::SctpState as C;
            match s {
                C::None => wit::SctpState::None,
                C::Closed => wit::SctpState::Closed,
                C::CookieWait => wit::SctpState::CookieWait,
                C::CookieEchoed => wit::SctpState::CookieEchoed,
                C::Established => wit::SctpState::Established,
                C::ShutdownSent => wit::SctpState::ShutdownSent,
                C::ShutdownRecd => wit::SctpState::ShutdownRecd,
                C::ShutdownAckSent => wit::SctpState::ShutdownAckSent,
                C::HeartbeatSent => wit::SctpState::HeartbeatSent,
            }
        }),
        timeout: e.timeout_s,
        mark: e.mark,
        counters_orig: wit::Counters {
            packets: e.counters_orig.packets,
            bytes: e.counters_orig.bytes,
        },
        counters_reply: wit::Counters {
            packets: e.counters_reply.packets,
            bytes: e.counters_reply.bytes,
        },
        start: e.start_ns,
        dying: e.dying,
    }
}
