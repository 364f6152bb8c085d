//! The component glue: the engine behind the `ctwasm:core/conntrack` WIT interface.
//!
//! Compiled only for the wasm target (see `lib.rs`); every function here converts between WIT
//! types and engine types and calls one engine method, nothing more.

use std::cell::RefCell;

use crate::config::{Config, ConfigError, RetryPolicy};
use crate::engine::expect::{ExpectError, ExpectMask};
use crate::engine::{Delivery, EntryView, Tracker as Engine};
use crate::proxy::ConnError as EngineConnError;
use crate::tuple::{Addr, Direction as EngineDirection, Family, L4Tuple, Tuple};

wit_bindgen::generate!({
    path: "../wit",
    world: "ctwasm-core",
});

use exports::ctwasm::core::conntrack as wit;

struct Component;

export!(Component);

impl wit::Guest for Component {
    type Tracker = TrackerResource;
}

/// The guest-owned `tracker` resource. The component model hands out `&self`, and a resource
/// is only ever entered by one call at a time, so a `RefCell` suffices.
struct TrackerResource {
    engine: RefCell<Engine>,
}

impl wit::GuestTracker for TrackerResource {
    fn create(config: wit::Config) -> Result<wit::Tracker, wit::ConfigError> {
        let mut engine_config = Config {
            seed: config.seed,
            retry_policy: match config.retry_policy {
                wit::RetryPolicy::Grace => RetryPolicy::Grace,
                wit::RetryPolicy::Kernel => RetryPolicy::Kernel,
                wit::RetryPolicy::OnDrain => RetryPolicy::OnDrain,
            },
            ..Config::default()
        };
        for s in &config.sysctls {
            engine_config
                .sysctls
                .set(&s.name, &s.value)
                .map_err(|e| match e {
                    ConfigError::UnknownSysctl(n) => wit::ConfigError::UnknownSysctl(n),
                    other @ ConfigError::BadValue { .. } => {
                        wit::ConfigError::BadValue(other.to_string())
                    }
                })?;
        }
        Ok(wit::Tracker::new(TrackerResource {
            engine: RefCell::new(Engine::new(engine_config)),
        }))
    }

    fn restore(bytes: Vec<u8>) -> Result<wit::Tracker, String> {
        let engine = Engine::restore(&bytes).map_err(|e| e.to_string())?;
        Ok(wit::Tracker::new(TrackerResource {
            engine: RefCell::new(engine),
        }))
    }

    fn expect(
        &self,
        now: u64,
        master_id: u32,
        t: wit::ConnTuple,
        mask: wit::ExpectMask,
        timeout: u32,
        flags: u32,
    ) -> Result<u32, wit::ExpectError> {
        let tuple = tuple_from_wit(&t).ok_or(wit::ExpectError::UnknownMaster)?;
        let mask = ExpectMask {
            src_addr: mask.src_addr,
            src_port: mask.src_port,
        };
        self.engine
            .borrow_mut()
            .expect(now, master_id, &tuple, mask, timeout, flags)
            .map_err(|e| match e {
                ExpectError::UnknownMaster => wit::ExpectError::UnknownMaster,
                ExpectError::TableFull => wit::ExpectError::TableFull,
                ExpectError::Exists => wit::ExpectError::Exists,
            })
    }

    fn unexpect(&self, now: u64, id: u32) -> bool {
        self.engine.borrow_mut().unexpect(now, id)
    }

    fn expect_stats(&self) -> wit::ExpectStats {
        let s = self.engine.borrow().expect_stats();
        wit::ExpectStats {
            expect_new: s.expect_new,
            expect_create: s.expect_create,
            expect_delete: s.expect_delete,
            expectations: s.expectations,
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.engine.borrow().snapshot()
    }

    fn set_listeners(&self, present: bool, reliable: bool) {
        self.engine.borrow_mut().set_listeners(present, reliable);
    }

    fn ingest(&self, now: u64, packets: Vec<u8>) -> Vec<u8> {
        let mut verdicts = Vec::with_capacity(packets.len() / 64 + 1);
        self.engine
            .borrow_mut()
            .ingest_batch_at(now, &packets, &mut verdicts);
        verdicts
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

    fn report_delivery(&self, results: Vec<wit::Delivery>) {
        let results: Vec<Delivery> = results
            .into_iter()
            .map(|r| match r {
                wit::Delivery::Delivered => Delivery::Delivered,
                wit::Delivery::Failed => Delivery::Failed,
            })
            .collect();
        self.engine.borrow_mut().report_delivery(&results);
    }

    fn listeners_drained(&self, now: u64) {
        self.engine.borrow_mut().listeners_drained(now);
    }

    fn flush(&self, now: u64) {
        self.engine.borrow_mut().flush(now);
    }

    fn delete(&self, now: u64, zone: u16, t: wit::ConnTuple) -> bool {
        match tuple_from_wit(&t) {
            Some(tuple) => self.engine.borrow_mut().delete(now, zone, &tuple),
            None => false,
        }
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

    fn open(&self, now: u64, zone: u16, t: wit::ConnTuple) -> Result<u32, wit::ConnError> {
        let tuple = tuple_from_wit(&t).ok_or(wit::ConnError::BadTuple)?;
        self.engine
            .borrow_mut()
            .open(now, zone, &tuple)
            .map_err(conn_error)
    }

    fn transfer(
        &self,
        now: u64,
        id: u32,
        dir: wit::Direction,
        bytes: u64,
    ) -> Result<(), wit::ConnError> {
        let dir = match dir {
            wit::Direction::Original => EngineDirection::Original,
            wit::Direction::Reply => EngineDirection::Reply,
        };
        self.engine
            .borrow_mut()
            .transfer(now, id, dir, bytes)
            .map_err(conn_error)
    }

    fn close(&self, now: u64, id: u32, reset: bool) -> Result<(), wit::ConnError> {
        self.engine
            .borrow_mut()
            .close(now, id, reset)
            .map_err(conn_error)
    }
}

fn conn_error(e: EngineConnError) -> wit::ConnError {
    match e {
        EngineConnError::UnknownId => wit::ConnError::UnknownId,
        EngineConnError::TableFull => wit::ConnError::TableFull,
        EngineConnError::BadTuple => wit::ConnError::BadTuple,
    }
}

fn tuple_from_wit(t: &wit::ConnTuple) -> Option<Tuple> {
    let (family, src, dst) = match (t.src.len(), t.dst.len()) {
        (4, 4) => (
            Family::Ipv4,
            Addr::v4(t.src[..].try_into().ok()?),
            Addr::v4(t.dst[..].try_into().ok()?),
        ),
        (16, 16) => (
            Family::Ipv6,
            Addr::v6(t.src[..].try_into().ok()?),
            Addr::v6(t.dst[..].try_into().ok()?),
        ),
        _ => return None,
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
    Some(Tuple {
        family,
        src,
        dst,
        proto: t.proto,
        l4,
    })
}

fn tuple_to_wit(t: &Tuple) -> wit::ConnTuple {
    wit::ConnTuple {
        src: t.src.bytes(t.family).to_vec(),
        dst: t.dst.bytes(t.family).to_vec(),
        proto: t.proto,
        l4: match t.l4 {
            L4Tuple::Ports { src, dst } => wit::L4Tuple::Ports((src, dst)),
            L4Tuple::Icmp { id, kind, code } => wit::L4Tuple::Icmp(wit::IcmpKey { id, kind, code }),
            L4Tuple::None => wit::L4Tuple::None,
        },
    }
}

fn entry_to_wit(e: &EntryView) -> wit::Entry {
    wit::Entry {
        id: e.id,
        zone: e.zone,
        orig: tuple_to_wit(&e.orig),
        reply: tuple_to_wit(&e.reply),
        status: e.status.0,
        tcp_state: e.tcp_state.map(|s| s as u8),
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
