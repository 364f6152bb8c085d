//! One interface, two engines: the tracker linked natively, or the component under wasmtime.
//!
//! Everything above this module (replay, stress, the CLI, the tests) talks to a [`Backend`] and
//! cannot tell which one it has, which is how the two are compared byte for byte and timed side
//! by side. The component is compiled once per process (a `OnceLock`), each backend gets its own
//! store with a cap on linear memory, and a trap — the instance is dead afterwards — is turned
//! into an error that names it.

use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use ctwasm_core::netlink::Counters;
use ctwasm_core::{
    Addr, Config, Delivery, Direction, EntryView, Family, L4Tuple, RetryPolicy, Stats, Status,
    TcpState, Tracker, Tuple,
};
use wasmtime::component::{Component, Linker, ResourceAny};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "ctwasm-core",
});

use exports::ctwasm::core::conntrack as wit;

/// The component built by `build.rs` from `core-guest`.
pub const EMBEDDED_COMPONENT: &[u8] = crate::artifacts::COMPONENT;

/// Default cap on the guest's linear memory.
pub const DEFAULT_MEMORY_LIMIT: usize = 4 << 30;

/// What the host needs from a tracker, whichever engine runs it.
pub trait Backend {
    /// "native" or "component".
    fn name(&self) -> &'static str;
    fn set_listeners(&mut self, present: bool, reliable: bool) -> Result<()>;
    /// Ingests a packet batch (`ctwasm_core::batch` format); appends one verdict byte each.
    fn ingest(&mut self, now_ns: u64, packets: &[u8], verdicts: &mut Vec<u8>) -> Result<()>;
    fn advance(&mut self, now_ns: u64) -> Result<()>;
    fn next_deadline(&mut self) -> Result<Option<u64>>;
    /// Appends up to `max` event frames to `out`; returns how many.
    fn take_events(&mut self, max: u32, out: &mut Vec<u8>) -> Result<usize>;
    fn report_delivery(&mut self, results: &[Delivery]) -> Result<()>;
    fn listeners_drained(&mut self, now_ns: u64) -> Result<()>;
    fn flush(&mut self, now_ns: u64) -> Result<()>;
    fn delete(&mut self, now_ns: u64, zone: u16, tuple: &Tuple) -> Result<bool>;
    /// Every entry, live and dying.
    fn dump(&mut self) -> Result<Vec<EntryView>>;
    fn stats(&mut self) -> Result<Stats>;
    fn open(
        &mut self,
        now_ns: u64,
        zone: u16,
        tuple: &Tuple,
    ) -> Result<std::result::Result<u32, ConnError>>;
    fn transfer(
        &mut self,
        now_ns: u64,
        id: u32,
        dir: Direction,
        bytes: u64,
    ) -> Result<std::result::Result<(), ConnError>>;
    fn close(
        &mut self,
        now_ns: u64,
        id: u32,
        reset: bool,
    ) -> Result<std::result::Result<(), ConnError>>;
    /// The tracker's whole state, for [`restore_backend`].
    fn snapshot(&mut self) -> Result<Vec<u8>>;
}

/// A backend of `kind` continuing from `snapshot` bytes (taken from either kind).
pub fn restore_backend(kind: BackendKind, snapshot: &[u8]) -> Result<Box<dyn Backend>> {
    Ok(match kind {
        BackendKind::Native => Box::new(NativeBackend {
            tracker: Tracker::restore(snapshot)
                .map_err(|e| anyhow!("restoring a snapshot: {e}"))?,
        }),
        BackendKind::Component => Box::new(ComponentBackend::restore(snapshot)?),
    })
}

pub use ctwasm_core::ConnError;

/// Which engine to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Native,
    Component,
}

impl std::str::FromStr for BackendKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "native" => Ok(BackendKind::Native),
            "component" => Ok(BackendKind::Component),
            other => bail!("unknown backend `{other}` (expected native or component)"),
        }
    }
}

/// The settings a backend is built from: sysctls as `name=value` pairs, seed, retry policy.
#[derive(Clone, Debug, Default)]
pub struct TrackerSettings {
    pub sysctls: Vec<(String, String)>,
    pub seed: u64,
    pub retry_policy: Option<RetryPolicy>,
}

impl TrackerSettings {
    pub fn engine_config(&self) -> Result<Config> {
        let mut config = Config {
            seed: self.seed,
            ..Config::default()
        };
        if let Some(p) = self.retry_policy {
            config.retry_policy = p;
        }
        for (name, value) in &self.sysctls {
            config
                .sysctls
                .set(name, value)
                .map_err(|e| anyhow!("{e}"))?;
        }
        Ok(config)
    }
}

/// Builds a backend of `kind`; `component` may name a component file to use instead of the
/// embedded one.
pub fn open_backend(
    kind: BackendKind,
    settings: &TrackerSettings,
    component: Option<&std::path::Path>,
) -> Result<Box<dyn Backend>> {
    Ok(match kind {
        BackendKind::Native => Box::new(NativeBackend::new(settings.engine_config()?)),
        BackendKind::Component => Box::new(match component {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("reading component {}", path.display()))?;
                let compiled = Component::new(shared_engine(), &bytes)
                    .map_err(wasm_error)
                    .with_context(|| format!("compiling component {}", path.display()))?;
                ComponentBackend::with_component(&compiled, settings, DEFAULT_MEMORY_LIMIT)?
            }
            None => ComponentBackend::new(settings)?,
        }),
    })
}

// ----- native ------------------------------------------------------------------------------

/// The engine linked into the host.
#[derive(Debug)]
pub struct NativeBackend {
    tracker: Tracker,
}

impl NativeBackend {
    pub fn new(config: Config) -> Self {
        NativeBackend {
            tracker: Tracker::new(config),
        }
    }
}

impl Backend for NativeBackend {
    fn name(&self) -> &'static str {
        "native"
    }
    fn set_listeners(&mut self, present: bool, reliable: bool) -> Result<()> {
        self.tracker.set_listeners(present, reliable);
        Ok(())
    }
    fn ingest(&mut self, now_ns: u64, packets: &[u8], verdicts: &mut Vec<u8>) -> Result<()> {
        self.tracker.ingest_batch_at(now_ns, packets, verdicts);
        Ok(())
    }
    fn advance(&mut self, now_ns: u64) -> Result<()> {
        self.tracker.advance(now_ns);
        Ok(())
    }
    fn next_deadline(&mut self) -> Result<Option<u64>> {
        Ok(self.tracker.next_deadline())
    }
    fn take_events(&mut self, max: u32, out: &mut Vec<u8>) -> Result<usize> {
        Ok(self.tracker.take_events(max as usize, out))
    }
    fn report_delivery(&mut self, results: &[Delivery]) -> Result<()> {
        self.tracker.report_delivery(results);
        Ok(())
    }
    fn listeners_drained(&mut self, now_ns: u64) -> Result<()> {
        self.tracker.listeners_drained(now_ns);
        Ok(())
    }
    fn flush(&mut self, now_ns: u64) -> Result<()> {
        self.tracker.flush(now_ns);
        Ok(())
    }
    fn delete(&mut self, now_ns: u64, zone: u16, tuple: &Tuple) -> Result<bool> {
        Ok(self.tracker.delete(now_ns, zone, tuple))
    }
    fn dump(&mut self) -> Result<Vec<EntryView>> {
        let mut all = Vec::new();
        let mut cursor = 0;
        loop {
            let (rows, next) = self.tracker.dump(cursor, 4096);
            all.extend(rows);
            match next {
                Some(c) => cursor = c,
                None => return Ok(all),
            }
        }
    }
    fn stats(&mut self) -> Result<Stats> {
        Ok(self.tracker.stats())
    }
    fn open(
        &mut self,
        now_ns: u64,
        zone: u16,
        tuple: &Tuple,
    ) -> Result<std::result::Result<u32, ConnError>> {
        Ok(self.tracker.open(now_ns, zone, tuple))
    }
    fn transfer(
        &mut self,
        now_ns: u64,
        id: u32,
        dir: Direction,
        bytes: u64,
    ) -> Result<std::result::Result<(), ConnError>> {
        Ok(self.tracker.transfer(now_ns, id, dir, bytes))
    }
    fn close(
        &mut self,
        now_ns: u64,
        id: u32,
        reset: bool,
    ) -> Result<std::result::Result<(), ConnError>> {
        Ok(self.tracker.close(now_ns, id, reset))
    }
    fn snapshot(&mut self) -> Result<Vec<u8>> {
        Ok(self.tracker.snapshot())
    }
}

// ----- component ---------------------------------------------------------------------------

struct HostState {
    limits: StoreLimits,
}

/// The wasmtime engine every component backend of this process shares.
pub fn shared_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        Engine::new(&config).expect("a wasmtime engine with the component model")
    })
}

/// The embedded component, compiled once per process.
pub fn embedded_component() -> Result<&'static Component> {
    static COMPONENT: OnceLock<std::result::Result<Component, String>> = OnceLock::new();
    COMPONENT
        .get_or_init(|| {
            Component::new(shared_engine(), EMBEDDED_COMPONENT).map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| anyhow!("compiling the embedded component: {e}"))
}

/// The engine as a component instance in its own store.
pub struct ComponentBackend {
    store: Store<HostState>,
    bindings: CtwasmCore,
    tracker: ResourceAny,
}

impl std::fmt::Debug for ComponentBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentBackend").finish_non_exhaustive()
    }
}

impl ComponentBackend {
    pub fn new(settings: &TrackerSettings) -> Result<Self> {
        Self::with_component(embedded_component()?, settings, DEFAULT_MEMORY_LIMIT)
    }

    /// A fresh instance in its own store with `memory_limit` bytes of linear memory at most.
    fn instantiate(
        component: &Component,
        memory_limit: usize,
    ) -> Result<(Store<HostState>, CtwasmCore)> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory_limit)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(shared_engine(), HostState { limits });
        store.limiter(|s| &mut s.limits);
        // The world imports nothing, so the linker stays empty.
        let linker = Linker::new(shared_engine());
        let bindings = CtwasmCore::instantiate(&mut store, component, &linker)
            .map_err(wasm_error)
            .context("instantiating the component")?;
        Ok((store, bindings))
    }

    /// A fresh instance of the embedded component continuing from `snapshot` bytes.
    pub fn restore(snapshot: &[u8]) -> Result<Self> {
        let (mut store, bindings) = Self::instantiate(embedded_component()?, DEFAULT_MEMORY_LIMIT)?;
        let tracker = bindings
            .ctwasm_core_conntrack()
            .tracker()
            .call_restore(&mut store, snapshot)
            .map_err(trap_context)?
            .map_err(|e| anyhow!("restoring a snapshot: {e}"))?;
        Ok(ComponentBackend {
            store,
            bindings,
            tracker,
        })
    }

    pub fn with_component(
        component: &Component,
        settings: &TrackerSettings,
        memory_limit: usize,
    ) -> Result<Self> {
        let (mut store, bindings) = Self::instantiate(component, memory_limit)?;
        let config = wit::Config {
            sysctls: settings
                .sysctls
                .iter()
                .map(|(name, value)| wit::Sysctl {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            seed: settings.seed,
            retry_policy: match settings.retry_policy.unwrap_or(RetryPolicy::Grace) {
                RetryPolicy::Grace => wit::RetryPolicy::Grace,
                RetryPolicy::Kernel => wit::RetryPolicy::Kernel,
                RetryPolicy::OnDrain => wit::RetryPolicy::OnDrain,
            },
        };
        let tracker = bindings
            .ctwasm_core_conntrack()
            .tracker()
            .call_create(&mut store, &config)
            .map_err(trap_context)?
            .map_err(|e| match e {
                wit::ConfigError::UnknownSysctl(n) => anyhow!("unknown sysctl `{n}`"),
                wit::ConfigError::BadValue(m) => anyhow!("{m}"),
            })?;
        Ok(ComponentBackend {
            store,
            bindings,
            tracker,
        })
    }
}

/// Calls a method of the component's `tracker` resource (the bindings and the store are
/// borrowed separately, which a helper method could not do).
macro_rules! call {
    ($backend:ident . $method:ident ( $($arg:expr),* )) => {
        $backend
            .bindings
            .ctwasm_core_conntrack()
            .tracker()
            .$method(&mut $backend.store, $backend.tracker $(, $arg)*)
            .map_err(trap_context)
    };
}

/// A wasmtime error as an `anyhow` one, with its chain of causes.
fn wasm_error(e: wasmtime::Error) -> anyhow::Error {
    anyhow::Error::from_boxed(e.into_boxed_dyn_error())
}

/// Names the trap, which `to_string` of the error hides.
fn trap_context(e: wasmtime::Error) -> anyhow::Error {
    let what = match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => format!("the component trapped ({trap:?}); its instance is dead"),
        None => "the component call failed; its instance is dead".to_string(),
    };
    wasm_error(e).context(what)
}

impl Backend for ComponentBackend {
    fn name(&self) -> &'static str {
        "component"
    }
    fn set_listeners(&mut self, present: bool, reliable: bool) -> Result<()> {
        call!(self.call_set_listeners(present, reliable))
    }
    fn ingest(&mut self, now_ns: u64, packets: &[u8], verdicts: &mut Vec<u8>) -> Result<()> {
        let v = call!(self.call_ingest(now_ns, packets))?;
        verdicts.extend_from_slice(&v);
        Ok(())
    }
    fn advance(&mut self, now_ns: u64) -> Result<()> {
        call!(self.call_advance(now_ns))
    }
    fn next_deadline(&mut self) -> Result<Option<u64>> {
        call!(self.call_next_deadline())
    }
    fn take_events(&mut self, max: u32, out: &mut Vec<u8>) -> Result<usize> {
        let bytes = call!(self.call_take_events(max))?;
        let n = ctwasm_core::batch::events(&bytes).count();
        out.extend_from_slice(&bytes);
        Ok(n)
    }
    fn report_delivery(&mut self, results: &[Delivery]) -> Result<()> {
        let results: Vec<wit::Delivery> = results
            .iter()
            .map(|r| match r {
                Delivery::Delivered => wit::Delivery::Delivered,
                Delivery::Failed => wit::Delivery::Failed,
            })
            .collect();
        call!(self.call_report_delivery(&results))
    }
    fn listeners_drained(&mut self, now_ns: u64) -> Result<()> {
        call!(self.call_listeners_drained(now_ns))
    }
    fn flush(&mut self, now_ns: u64) -> Result<()> {
        call!(self.call_flush(now_ns))
    }
    fn delete(&mut self, now_ns: u64, zone: u16, tuple: &Tuple) -> Result<bool> {
        let wt = tuple_to_wit(tuple);
        call!(self.call_delete(now_ns, zone, &wt))
    }
    fn dump(&mut self) -> Result<Vec<EntryView>> {
        let mut all = Vec::new();
        let mut cursor = 0;
        loop {
            let page = call!(self.call_dump(cursor, 4096))?;
            for e in &page.entries {
                all.push(entry_from_wit(e)?);
            }
            match page.next {
                Some(c) => cursor = c,
                None => return Ok(all),
            }
        }
    }
    fn stats(&mut self) -> Result<Stats> {
        let s = call!(self.call_stats())?;
        macro_rules! from_wit {
            ($($field:ident),+) => {
                Stats { $($field: s.$field),+ }
            };
        }
        Ok(ctwasm_core::stats_fields!(from_wit))
    }
    fn open(
        &mut self,
        now_ns: u64,
        zone: u16,
        tuple: &Tuple,
    ) -> Result<std::result::Result<u32, ConnError>> {
        let wt = tuple_to_wit(tuple);
        let r = call!(self.call_open(now_ns, zone, &wt))?;
        Ok(r.map_err(conn_error))
    }
    fn transfer(
        &mut self,
        now_ns: u64,
        id: u32,
        dir: Direction,
        bytes: u64,
    ) -> Result<std::result::Result<(), ConnError>> {
        let dir = match dir {
            Direction::Original => wit::Direction::Original,
            Direction::Reply => wit::Direction::Reply,
        };
        let r = call!(self.call_transfer(now_ns, id, dir, bytes))?;
        Ok(r.map_err(conn_error))
    }
    fn close(
        &mut self,
        now_ns: u64,
        id: u32,
        reset: bool,
    ) -> Result<std::result::Result<(), ConnError>> {
        let r = call!(self.call_close(now_ns, id, reset))?;
        Ok(r.map_err(conn_error))
    }
    fn snapshot(&mut self) -> Result<Vec<u8>> {
        call!(self.call_snapshot())
    }
}

fn conn_error(e: wit::ConnError) -> ConnError {
    match e {
        wit::ConnError::UnknownId => ConnError::UnknownId,
        wit::ConnError::TableFull => ConnError::TableFull,
        wit::ConnError::BadTuple => ConnError::BadTuple,
    }
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

fn tuple_from_wit(t: &wit::ConnTuple) -> Result<Tuple> {
    let (family, src, dst) = match (t.src.len(), t.dst.len()) {
        (4, 4) => (
            Family::Ipv4,
            Addr::v4(t.src[..].try_into()?),
            Addr::v4(t.dst[..].try_into()?),
        ),
        (16, 16) => (
            Family::Ipv6,
            Addr::v6(t.src[..].try_into()?),
            Addr::v6(t.dst[..].try_into()?),
        ),
        (a, b) => bail!("component returned addresses of {a} and {b} bytes"),
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

fn entry_from_wit(e: &wit::Entry) -> Result<EntryView> {
    Ok(EntryView {
        id: e.id,
        zone: e.zone,
        orig: tuple_from_wit(&e.orig)?,
        reply: tuple_from_wit(&e.reply)?,
        status: Status(e.status),
        tcp_state: e.tcp_state.and_then(TcpState::from_u8),
        timeout_s: e.timeout,
        mark: e.mark,
        counters_orig: Counters {
            packets: e.counters_orig.packets,
            bytes: e.counters_orig.bytes,
        },
        counters_reply: Counters {
            packets: e.counters_reply.packets,
            bytes: e.counters_reply.bytes,
        },
        start_ns: e.start,
        dying: e.dying,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_component_imports_nothing_and_exports_the_conntrack_interface() {
        let component = embedded_component().unwrap();
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(shared_engine())
            .map(|(name, _)| name.to_string())
            .collect();
        assert!(
            imports.is_empty(),
            "the component must import nothing, it imports {imports:?}"
        );
        let exports: Vec<String> = ty
            .exports(shared_engine())
            .map(|(name, _)| name.to_string())
            .collect();
        assert_eq!(exports, ["ctwasm:core/conntrack@0.1.0"]);
    }

    #[test]
    fn a_bad_sysctl_is_refused_by_both_backends() {
        let settings = TrackerSettings {
            sysctls: vec![("net.netfilter.nf_conntrack_bogus".into(), "1".into())],
            ..TrackerSettings::default()
        };
        for kind in [BackendKind::Native, BackendKind::Component] {
            let err = open_backend(kind, &settings, None).err().expect("refused");
            assert!(
                format!("{err:#}").contains("nf_conntrack_bogus"),
                "{kind:?}: {err:#}"
            );
        }
    }

    #[test]
    fn a_memory_cap_turns_growth_into_a_named_trap() {
        // 4 MiB is less than the guest needs for twenty thousand entries.
        let mut backend = ComponentBackend::with_component(
            embedded_component().unwrap(),
            &TrackerSettings::default(),
            4 << 20,
        )
        .unwrap();
        let mut batch = Vec::new();
        for i in 0..20_000u32 {
            let l4 = ctwasm_core::wire::build::udp((i % 60_000) as u16 + 1, 53, 0);
            let p = ctwasm_core::wire::build::ipv4(
                [10, 0, (i >> 8) as u8, i as u8],
                [10, 1, 0, 1],
                17,
                &l4,
            );
            ctwasm_core::batch::push_packet(&mut batch, 1 + i as u64, 0, &p);
        }
        let mut verdicts = Vec::new();
        let err = backend
            .ingest(1, &batch, &mut verdicts)
            .expect_err("the cap is hit");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("instance is dead") && msg.contains("growing memory"),
            "{msg}"
        );
    }

    #[test]
    fn the_proxy_calls_give_the_same_table_in_both_backends() {
        let tuple = Tuple {
            family: Family::Ipv4,
            src: Addr::v4([10, 0, 0, 1]),
            dst: Addr::v4([10, 0, 0, 2]),
            proto: 6,
            l4: L4Tuple::Ports {
                src: 40000,
                dst: 443,
            },
        };
        let mut tables = Vec::new();
        for kind in [BackendKind::Native, BackendKind::Component] {
            let mut b = open_backend(kind, &TrackerSettings::default(), None).unwrap();
            let id = b.open(1_000, 0, &tuple).unwrap().unwrap();
            b.transfer(2_000, id, Direction::Original, 1_000_000)
                .unwrap()
                .unwrap();
            b.transfer(3_000, id, Direction::Reply, 10)
                .unwrap()
                .unwrap();
            let rows = b.dump().unwrap();
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0].tcp_state, Some(TcpState::Established));
            assert!(rows[0].status.contains(Status::ASSURED));
            assert!(rows[0].counters_orig.bytes > 1_000_000);
            b.close(4_000, id, false).unwrap().unwrap();
            assert_eq!(b.dump().unwrap()[0].tcp_state, Some(TcpState::TimeWait));
            assert_eq!(
                b.transfer(5_000, 77, Direction::Original, 1).unwrap(),
                Err(ConnError::UnknownId)
            );
            let mut events = Vec::new();
            b.take_events(u32::MAX, &mut events).unwrap();
            tables.push((rows, events));
        }
        assert_eq!(tables[0], tables[1]);
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;

    /// A snapshot taken from either backend restores into either, and the run goes on with the
    /// same events as an uninterrupted one.
    #[test]
    fn snapshots_move_between_instances_and_backends() {
        let packets: Vec<Vec<u8>> = (0..50u8)
            .map(|i| {
                let l4 = ctwasm_core::wire::build::udp(1000 + i as u16, 53, 8);
                ctwasm_core::wire::build::ipv4([10, 0, 0, i], [10, 0, 1, 1], 17, &l4)
            })
            .collect();
        let feed = |b: &mut dyn Backend, range: std::ops::Range<usize>, events: &mut Vec<u8>| {
            for i in range {
                let mut batch = Vec::new();
                let ts = 1_000 + i as u64;
                ctwasm_core::batch::push_packet(&mut batch, ts, 0, &packets[i]);
                let mut v = Vec::new();
                b.ingest(ts, &batch, &mut v).unwrap();
                let n = b.take_events(u32::MAX, events).unwrap();
                b.report_delivery(&vec![Delivery::Delivered; n]).unwrap();
            }
        };
        let mut straight = Vec::new();
        let mut whole =
            open_backend(BackendKind::Native, &TrackerSettings::default(), None).unwrap();
        feed(whole.as_mut(), 0..50, &mut straight);
        whole.flush(10_000_000).unwrap();
        whole.take_events(u32::MAX, &mut straight).unwrap();

        for (from, to) in [
            (BackendKind::Native, BackendKind::Component),
            (BackendKind::Component, BackendKind::Native),
            (BackendKind::Component, BackendKind::Component),
        ] {
            let mut events = Vec::new();
            let mut first = open_backend(from, &TrackerSettings::default(), None).unwrap();
            feed(first.as_mut(), 0..20, &mut events);
            let bytes = first.snapshot().unwrap();
            let mut second = restore_backend(to, &bytes).unwrap();
            feed(second.as_mut(), 20..50, &mut events);
            second.flush(10_000_000).unwrap();
            second.take_events(u32::MAX, &mut events).unwrap();
            assert!(
                events == straight,
                "{from:?} -> {to:?}: the restored run's events differ"
            );
        }
        assert!(restore_backend(BackendKind::Component, b"not a snapshot").is_err());
    }
}
