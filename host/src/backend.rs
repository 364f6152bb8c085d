//! One interface, two engines: the tracker linked natively, or the component under wasmtime.
//!
//! Everything above this module (replay, stress, the CLI, the tests) talks to a [`Backend`] and
//! cannot tell which one it has, which is how the two are compared byte for byte and timed side
//! by side. The component is compiled once per process (a `OnceLock`), each backend gets its own
//! store with a cap on linear memory, and a trap — the instance is dead afterwards — is turned
//! into an error that names it.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ctwasm_core::engine::expect::FLAG_PERMANENT;
use ctwasm_core::netlink::Counters;
use ctwasm_core::{
    Addr, Config, ConnCall, ConnHandle, ConnRef, Delivery, Direction, Ending, EntryView,
    ExpectError, ExpectMask, ExpectStats, Family, L4Tuple, RetryPolicy, SctpState, Stats, Status,
    TcpState, Tracker, Tuple, Verdict,
};
use wasmtime::component::{Component, Linker, ResourceAny};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "ctwasm-core",
});

use exports::ctwasm::core::types as wit;
use wit::ErrorCode;

/// The component built by `build.rs` from `core-guest`.
pub const EMBEDDED_COMPONENT: &[u8] = crate::artifacts::COMPONENT;

/// Default cap on the guest's linear memory.
pub const DEFAULT_MEMORY_LIMIT: usize = 4 << 30;

/// Event messages one `take-events` call asks for at most: a few hundred bytes each, so a
/// chunk stays far below the size wasmtime refuses to copy out of a call (about 128 MB).
const TAKE_CHUNK: u32 = 65_536;

/// The memory budget a component gets under `memory_limit` bytes of linear memory: a quarter of
/// the limit (between 4 and 256 MiB) stays free for the guest's own data, its stack and the
/// buffers each call copies in and out, so that the tracker refuses connections before any
/// allocation can fail.
pub fn memory_budget(memory_limit: usize) -> u64 {
    let headroom = (memory_limit / 4).clamp(4 << 20, 256 << 20);
    memory_limit.saturating_sub(headroom) as u64
}

/// What the host needs from a tracker, whichever engine runs it.
///
/// Each method is one call of the WIT package `ctwasm:core@0.2.0` (`wit/ctwasm.wit`). The outer
/// `Result` is the host's: a component that trapped (its instance is dead) or answered
/// something its WIT contract rules out. The native backend never fails it. A refusal the
/// tracker itself may give (an unknown id, a full table) is the inner `Result` or the `bool`.
pub trait Backend: Send {
    /// "native" or "component".
    fn name(&self) -> &'static str;
    /// What recovery from guest faults has done, for a backend that recovers (checkpoints);
    /// `None` for the others.
    fn recovery(&self) -> Option<crate::resilient::Recovery> {
        None
    }
    /// Tells the tracker whether any listener exists (`nf_conntrack_events=2` asks when an
    /// entry is created) and whether one asked for reliable delivery.
    fn set_listeners(&mut self, present: bool, reliable: bool) -> Result<()>;
    /// Ingests a packet batch (`ctwasm_core::batch` format); appends one verdict byte each
    /// (a `ctwasm_core::Verdict` discriminant).
    fn ingest(&mut self, now_ns: u64, packets: &[u8], verdicts: &mut Vec<u8>) -> Result<()>;
    /// Fires the timers due by `now_ns`: timeouts, grace retries, the retry worker.
    fn advance(&mut self, now_ns: u64) -> Result<()>;
    /// The earliest instant at which [`Backend::advance`] may have work, if any.
    fn next_deadline(&mut self) -> Result<Option<u64>>;
    /// Appends up to `max` event frames to `out`; returns how many. Each must be reported with
    /// [`Backend::report_delivery`], in order.
    fn take_events(&mut self, max: u32, out: &mut Vec<u8>) -> Result<usize>;
    /// Outcomes of the event messages taken, oldest first.
    fn report_delivery(&mut self, results: &[Delivery]) -> Result<()>;
    /// The listeners have room again (the on-drain retry policy retries now).
    fn listeners_drained(&mut self, now_ns: u64) -> Result<()>;
    /// Ends every entry, as `conntrack -F`.
    fn flush(&mut self, now_ns: u64) -> Result<()>;
    /// Ends the entry `tuple` finds in `zone`, as `conntrack -D`; false if none.
    fn delete(&mut self, now_ns: u64, zone: u16, tuple: &Tuple) -> Result<bool>;
    /// Every entry, live and dying.
    fn dump(&mut self) -> Result<Vec<EntryView>>;
    /// The kernel's counters plus the event-delivery figures.
    fn stats(&mut self) -> Result<Stats>;
    /// Opens a connection `tuple` in `zone` as a proxy sees it (the handshake is tracked as
    /// the kernel would see it); returns the entry's id.
    fn open(
        &mut self,
        now_ns: u64,
        zone: u16,
        tuple: &Tuple,
    ) -> Result<std::result::Result<u32, ConnError>>;
    /// `bytes` carried by the connection `id` in direction `dir`.
    fn transfer(
        &mut self,
        now_ns: u64,
        id: u32,
        dir: Direction,
        bytes: u64,
    ) -> Result<std::result::Result<(), ConnError>>;
    /// The connection `id` closed as `ending` says.
    fn close(
        &mut self,
        now_ns: u64,
        id: u32,
        ending: Ending,
    ) -> Result<std::result::Result<(), ConnError>>;
    /// When the live connection `id` started (its entry's start), `None` if no live entry has
    /// this id: with the id, it names one connection even after the id is drawn again.
    fn connection_start(&mut self, id: u32) -> Result<Option<u64>>;
    /// Runs `calls` in order at `now_ns` (see [`ctwasm_core::Tracker::connection_calls`]),
    /// appending each one's outcome to `results`: an open's id, 0 for the others.
    fn connection_calls(
        &mut self,
        now_ns: u64,
        calls: &[ConnCall],
        results: &mut Vec<std::result::Result<ConnHandle, ConnError>>,
    ) -> Result<()>;
    /// Announces a connection `tuple` RELATED to the live entry `master_id`, for `timeout_s`
    /// seconds; `permanent` keeps the expectation after a connection matched it. Returns the
    /// expectation's id.
    fn expect(
        &mut self,
        now_ns: u64,
        master_id: u32,
        tuple: &Tuple,
        mask: ExpectMask,
        timeout_s: u32,
        permanent: bool,
    ) -> Result<std::result::Result<u32, ExpectError>>;
    /// Removes the expectation `id`, as `conntrack -D expect`; false if none is live.
    fn unexpect(&mut self, now_ns: u64, id: u32) -> Result<bool>;
    /// The expectation counters and table size.
    fn expect_stats(&mut self) -> Result<ExpectStats>;
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

/// The settings a backend is built from: sysctls as `name=value` pairs, seed, retry policy,
/// and for the component the longest a call may run and (testing only) a fault to commit.
#[derive(Clone, Debug, Default)]
pub struct TrackerSettings {
    pub sysctls: Vec<(String, String)>,
    pub seed: u64,
    pub retry_policy: Option<RetryPolicy>,
    /// How long one call into the component may run before it is stopped (epoch interruption);
    /// `None` is [`DEFAULT_CALL_DEADLINE`]. The stopped instance is dead, as after a trap.
    pub call_deadline: Option<Duration>,
    /// A fault the guest commits on purpose (component only), to test containment.
    pub fault: Option<GuestFault>,
    /// Recovery from guest faults (component only): a checkpoint every this many calls that
    /// change the tracker, and a journal in between (see [`crate::resilient`]). `None`: a
    /// fault leaves the instance dead.
    pub checkpoint_every: Option<usize>,
}

/// A fault the component commits on purpose, so that its host's containment can be tested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestFault {
    /// Trap while ingesting this packet (counted from 1 over the instance's life; a connection
    /// call counts as one): a one-off failure, which a restored instance does not repeat.
    TrapAtPacket(u64),
    /// Loop for ever at this packet, until the per-call deadline stops it (one-off, too).
    LoopAtPacket(u64),
    /// Trap on every packet of this zone: a bug that the same input hits every time, in every
    /// instance, restored ones included.
    TrapInZone(u16),
}

impl GuestFault {
    /// Whether a fresh instance of the same build would commit it again on the same input.
    pub fn recurs(self) -> bool {
        matches!(self, GuestFault::TrapInZone(_))
    }
}

/// The default longest call: generous (a flush of millions of entries takes seconds), a guard
/// against a guest that never returns rather than a budget.
pub const DEFAULT_CALL_DEADLINE: Duration = Duration::from_secs(30);

/// How often the shared engine's epoch advances: the resolution of call deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Epoch ticks for a deadline. The epoch may advance right after the deadline is set, so one
/// tick more: a call is never stopped before its deadline, and at most a tick after it.
fn deadline_ticks(deadline: Duration) -> u64 {
    let ticks = deadline.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) + 1;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

impl TrackerSettings {
    pub fn engine_config(&self) -> Result<Config> {
        self.engine_config_typed().map_err(|e| anyhow!("{e}"))
    }

    /// The engine's configuration, or the first setting it refused.
    pub fn engine_config_typed(
        &self,
    ) -> std::result::Result<Config, ctwasm_core::config::ConfigError> {
        let mut config = Config {
            seed: self.seed,
            ..Config::default()
        };
        if let Some(p) = self.retry_policy {
            config.retry_policy = p;
        }
        for (name, value) in &self.sysctls {
            config.sysctls.set(name, value)?;
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
        BackendKind::Native => {
            if settings.fault.is_some() {
                bail!("fault injection is a component feature: use the component backend");
            }
            if let Some(path) = component {
                bail!(
                    "a component file ({}) is for the component backend; the native backend \
                     runs the engine linked into this binary",
                    path.display()
                );
            }
            Box::new(NativeBackend::new(settings.engine_config()?))
        }
        BackendKind::Component => {
            let compiled = match component {
                Some(path) => {
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("reading component {}", path.display()))?;
                    Component::new(shared_engine(), &bytes)
                        .map_err(wasm_error)
                        .with_context(|| format!("compiling component {}", path.display()))?
                }
                None => embedded_component()?.clone(),
            };
            let inner =
                ComponentBackend::with_component(&compiled, settings, DEFAULT_MEMORY_LIMIT)?;
            crate::resilient::with_recovery(&compiled, inner, DEFAULT_MEMORY_LIMIT, settings)?
        }
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
        Self::from_tracker(Tracker::new(config))
    }

    /// The backend of an engine built already (restored from a snapshot, say).
    pub fn from_tracker(tracker: Tracker) -> Self {
        NativeBackend { tracker }
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
        ending: Ending,
    ) -> Result<std::result::Result<(), ConnError>> {
        Ok(self.tracker.close(now_ns, id, ending))
    }
    fn connection_start(&mut self, id: u32) -> Result<Option<u64>> {
        Ok(self.tracker.connection_start(id))
    }
    fn connection_calls(
        &mut self,
        now_ns: u64,
        calls: &[ConnCall],
        results: &mut Vec<std::result::Result<ConnHandle, ConnError>>,
    ) -> Result<()> {
        self.tracker.connection_calls(now_ns, calls, results);
        Ok(())
    }
    fn expect(
        &mut self,
        now_ns: u64,
        master_id: u32,
        tuple: &Tuple,
        mask: ExpectMask,
        timeout_s: u32,
        permanent: bool,
    ) -> Result<std::result::Result<u32, ExpectError>> {
        let flags = if permanent { FLAG_PERMANENT } else { 0 };
        Ok(self
            .tracker
            .expect(now_ns, master_id, tuple, mask, timeout_s, flags))
    }
    fn unexpect(&mut self, now_ns: u64, id: u32) -> Result<bool> {
        Ok(self.tracker.unexpect(now_ns, id))
    }
    fn expect_stats(&mut self) -> Result<ExpectStats> {
        Ok(self.tracker.expect_stats())
    }
    fn snapshot(&mut self) -> Result<Vec<u8>> {
        Ok(self.tracker.snapshot())
    }
}

// ----- component ---------------------------------------------------------------------------

struct HostState {
    limits: StoreLimits,
}

/// The wasmtime engine every component backend of this process shares. Its epoch advances
/// every [`EPOCH_TICK`] on a background thread, which is what ends a call past its deadline.
pub fn shared_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    static TICKER: OnceLock<()> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // For profiling: wasmtime writes /tmp/perf-PID.map, so `perf report` names the guest's
        // functions (`wasm[0]::function[N]`; an unstripped build of the guest maps N to names).
        if std::env::var_os("CTWASM_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        Engine::new(&config).expect("a wasmtime engine with the component model")
    });
    TICKER.get_or_init(|| {
        let engine = engine.clone();
        std::thread::Builder::new()
            .name("ctwasm-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("starting the epoch ticker thread");
    });
    engine
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
    /// Epoch ticks one call may take.
    deadline_ticks: u64,
    /// A call failed in the guest (a trap or an overrun deadline): the instance is dead.
    dead: bool,
    /// Messages waiting in the guest, as far as the last call tells (`ingest` and
    /// `report-delivery` count them, and a `take-events` that returns fewer than asked leaves
    /// none); every other call forgets it. At `Some(0)` `take_events` skips the call.
    queued_events: Option<u32>,
    /// The latest instant the tracker was advanced to: no deadline it names later may lie
    /// before it (what was due has fired), or a host that steps to its deadlines would spin.
    advanced_to: Option<u64>,
}

impl std::fmt::Debug for ComponentBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentBackend").finish_non_exhaustive()
    }
}

/// Calls a method of the component's `tracker` resource, or with `$interface` a function of
/// that interface on it (the bindings and the store are borrowed separately, which a helper
/// method could not do).
macro_rules! call {
    ($backend:ident . $method:ident ( $($arg:expr),* )) => {{
        $backend.queued_events = None;
        $backend.store.set_epoch_deadline($backend.deadline_ticks);
        let result = $backend
            .bindings
            .ctwasm_core_tracker()
            .tracker()
            .$method(&mut $backend.store, $backend.tracker $(, $arg)*);
        // Any failure of the call itself (a trap, an overrun deadline) kills the instance.
        $backend.dead |= result.is_err();
        result.map_err(trap_context)
    }};
    ($interface:ident : $backend:ident . $method:ident ( $($arg:expr),* )) => {{
        $backend.queued_events = None;
        $backend.store.set_epoch_deadline($backend.deadline_ticks);
        let result = $backend
            .bindings
            .$interface()
            .$method(&mut $backend.store, $backend.tracker $(, $arg)*);
        $backend.dead |= result.is_err();
        result.map_err(trap_context)
    }};
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
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks(DEFAULT_CALL_DEADLINE));
        // The world imports nothing, so the linker stays empty.
        let linker = Linker::new(shared_engine());
        let bindings = CtwasmCore::instantiate(&mut store, component, &linker)
            .map_err(wasm_error)
            .context("instantiating the component")?;
        Ok((store, bindings))
    }

    /// A fresh instance of the embedded component continuing from `snapshot` bytes.
    pub fn restore(snapshot: &[u8]) -> Result<Self> {
        Self::restore_with(
            embedded_component()?,
            snapshot,
            DEFAULT_MEMORY_LIMIT,
            DEFAULT_CALL_DEADLINE,
        )
    }

    /// Whether a call failed in the guest, which leaves the instance dead.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// A fresh instance of `component` continuing from `snapshot` bytes, with its memory limit
    /// and per-call deadline.
    pub fn restore_with(
        component: &Component,
        snapshot: &[u8],
        memory_limit: usize,
        call_deadline: Duration,
    ) -> Result<Self> {
        let (mut store, bindings) = Self::instantiate(component, memory_limit)?;
        let deadline_ticks = deadline_ticks(call_deadline);
        let buffer = snapshot_into_guest(&mut store, &bindings, deadline_ticks, snapshot)?;
        store.set_epoch_deadline(deadline_ticks);
        let restored = bindings
            .ctwasm_core_tracker()
            .tracker()
            .call_restore(&mut store, buffer)
            .map_err(trap_context)?;
        buffer.resource_drop(&mut store).map_err(trap_context)?;
        let tracker = restored.map_err(|e| {
            anyhow::Error::new(SnapshotRefused).context(format!(
                "restoring a snapshot: the component refused it ({e:?})"
            ))
        })?;
        let mut backend = ComponentBackend {
            store,
            bindings,
            tracker,
            deadline_ticks,
            dead: false,
            queued_events: None,
            advanced_to: None,
        };
        call!(backend.call_set_memory_budget(Some(memory_budget(memory_limit))))?;
        Ok(backend)
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
        let deadline_ticks =
            deadline_ticks(settings.call_deadline.unwrap_or(DEFAULT_CALL_DEADLINE));
        store.set_epoch_deadline(deadline_ticks);
        let tracker = bindings
            .ctwasm_core_tracker()
            .tracker()
            .call_create(&mut store, &config)
            .map_err(trap_context)?
            .map_err(|e| config_error(settings, e))?;
        let mut backend = ComponentBackend {
            store,
            bindings,
            tracker,
            deadline_ticks,
            dead: false,
            queued_events: None,
            advanced_to: None,
        };
        call!(backend.call_set_memory_budget(Some(memory_budget(memory_limit))))?;
        if settings.fault.is_some() {
            backend.set_fault(settings.fault)?;
        }
        Ok(backend)
    }

    /// Makes the guest commit `fault` from now on (none: no fault). For tests only.
    pub fn set_fault(&mut self, fault: Option<GuestFault>) -> Result<()> {
        let fault = fault.map(|f| match f {
            GuestFault::TrapAtPacket(n) => wit::Fault::TrapAtPacket(n),
            GuestFault::LoopAtPacket(n) => wit::Fault::LoopAtPacket(n),
            GuestFault::TrapInZone(zone) => wit::Fault::TrapInZone(zone),
        });
        call!(self.call_set_fault(fault))
    }
}

/// Checks a guest's `next-deadline` against the latest instant it was advanced to: a deadline
/// before it would have fired already (one at that very instant is work the last calls
/// scheduled for now, such as a retry after a delivery), and a host stepping from deadline to
/// deadline would never get past it.
fn check_deadline(next: Option<u64>, advanced_to: Option<u64>) -> Result<()> {
    match (next, advanced_to) {
        (Some(next), Some(now)) if next < now => {
            Err(anyhow::Error::new(ComponentFault::OffContract(format!(
                "the component's `next-deadline` gave {next} ns after it was advanced to {now} ns"
            ))))
        }
        _ => Ok(()),
    }
}

/// Checks what a guest answered to `ingest`: one verdict for each packet the batch frames (up
/// to the first broken frame, where the engine stops), each a verdict the WIT lists. A guest
/// that says otherwise is off contract: its answer is not passed on.
fn check_verdicts(packets: &[u8], verdicts: &[u8]) -> Result<()> {
    let framed = ctwasm_core::batch::packets(packets)
        .take_while(Result::is_ok)
        .count();
    if verdicts.len() != framed {
        return Err(anyhow::Error::new(ComponentFault::OffContract(format!(
            "the component's `ingest` gave {} verdicts for {framed} packets",
            verdicts.len()
        ))));
    }
    // The discriminants run from 0 to the last one: one comparison a byte, which vectorizes.
    if verdicts.iter().any(|&v| v > Verdict::LAST as u8) {
        let v = verdicts.iter().max().expect("not empty");
        return Err(anyhow::Error::new(ComponentFault::OffContract(format!(
            "the component's `ingest` gave verdict {v}, which the WIT does not list"
        ))));
    }
    Ok(())
}

/// The number of event messages in what a guest answered to `take-events(max)`: every frame
/// must be whole, and there may be no more than `max`.
fn count_event_frames(bytes: &[u8], max: u32) -> Result<usize> {
    let mut n = 0usize;
    for frame in ctwasm_core::batch::events(bytes) {
        if let Err(e) = frame {
            return Err(anyhow::Error::new(ComponentFault::OffContract(format!(
                "the component's `take-events` gave a broken frame at byte {}",
                e.offset
            ))));
        }
        n += 1;
    }
    if n > max as usize {
        return Err(anyhow::Error::new(ComponentFault::OffContract(format!(
            "the component's `take-events({max})` gave {n} messages"
        ))));
    }
    Ok(n)
}

/// The most bytes of a snapshot one call moves across the boundary: far below the ~128 MB
/// wasmtime copies in one call, and large enough that a 150 MB snapshot takes ten calls.
const SNAPSHOT_PIECE: u32 = 16 << 20;

/// Copies `bytes` into a new `snapshot-bytes` resource of the instance, a piece at a time.
fn snapshot_into_guest(
    store: &mut Store<HostState>,
    bindings: &CtwasmCore,
    deadline_ticks: u64,
    bytes: &[u8],
) -> Result<ResourceAny> {
    let api = bindings.ctwasm_core_tracker().snapshot_bytes();
    store.set_epoch_deadline(deadline_ticks);
    let buffer = api.call_constructor(&mut *store).map_err(trap_context)?;
    for piece in bytes.chunks(SNAPSHOT_PIECE as usize) {
        store.set_epoch_deadline(deadline_ticks);
        if let Err(code) = api
            .call_append(&mut *store, buffer, piece)
            .map_err(trap_context)?
        {
            buffer.resource_drop(&mut *store).map_err(trap_context)?;
            return Err(anyhow::Error::new(SnapshotRefused).context(format!(
                "the instance cannot hold a snapshot of {} bytes ({code:?})",
                bytes.len()
            )));
        }
    }
    Ok(buffer)
}

/// Copies the bytes of the instance's `snapshot-bytes` resource `buffer` out, a piece at a
/// time, and drops it.
fn snapshot_out_of_guest(
    store: &mut Store<HostState>,
    bindings: &CtwasmCore,
    deadline_ticks: u64,
    buffer: ResourceAny,
) -> Result<Vec<u8>> {
    let api = bindings.ctwasm_core_tracker().snapshot_bytes();
    store.set_epoch_deadline(deadline_ticks);
    let len = api.call_len(&mut *store, buffer).map_err(trap_context)?;
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(usize::try_from(len).unwrap_or(usize::MAX))
        .map_err(|_| {
            anyhow!("the component's snapshot of {len} bytes does not fit in the host's memory")
        })?;
    while (bytes.len() as u64) < len {
        store.set_epoch_deadline(deadline_ticks);
        let piece = api
            .call_read(&mut *store, buffer, bytes.len() as u64, SNAPSHOT_PIECE)
            .map_err(trap_context)?;
        if piece.is_empty() || piece.len() > SNAPSHOT_PIECE as usize {
            return Err(anyhow::Error::new(ComponentFault::OffContract(format!(
                "the component's `snapshot-bytes.read` gave {} bytes at offset {} of {len}",
                piece.len(),
                bytes.len()
            ))));
        }
        bytes.extend_from_slice(&piece);
    }
    bytes.truncate(len as usize);
    buffer.resource_drop(&mut *store).map_err(trap_context)?;
    Ok(bytes)
}

/// The tracker refused a snapshot's bytes (not a snapshot of this format, cut short, or
/// inconsistent); carried by the error of [`ComponentBackend::restore_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotRefused;

impl std::fmt::Display for SnapshotRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the tracker refused the snapshot")
    }
}

impl std::error::Error for SnapshotRefused {}

/// Names the sysctl `create` refused, by the position the component reports.
fn config_error(settings: &TrackerSettings, e: wit::ConfigError) -> anyhow::Error {
    let Some((name, value)) = settings.sysctls.get(e.sysctl as usize) else {
        return anyhow!("the component refused sysctl #{} ({:?})", e.sysctl, e.code);
    };
    match e.code {
        ErrorCode::UnknownSysctl => anyhow!("unknown sysctl `{name}`"),
        ErrorCode::BadValue => anyhow!("bad value `{value}` for `{name}`"),
        other => anyhow!("the component refused sysctl `{name}` = `{value}` ({other:?})"),
    }
}

/// How a component call failed, attached to the error a [`Backend`] method returns so that a
/// caller can tell the cases apart (`err.downcast_ref::<ComponentFault>()`); its `Display` is
/// the sentence the CLI prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ComponentFault {
    /// The guest trapped (a panic, an out-of-bounds access, memory it could not grow): the
    /// instance is dead.
    Trapped(String),
    /// The call ran past [`TrackerSettings::call_deadline`] and was stopped: the instance is
    /// dead.
    DeadlineExceeded,
    /// The guest answered something its WIT contract rules out.
    OffContract(String),
}

impl std::fmt::Display for ComponentFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ComponentFault::Trapped(what) => write!(f, "{what}; its instance is dead"),
            ComponentFault::DeadlineExceeded => f.write_str(
                "the component overran its per-call deadline and was stopped; its instance is dead",
            ),
            ComponentFault::OffContract(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for ComponentFault {}

/// A code the WIT does not list for the call that returned it: the component broke its
/// contract, which the host reports as it reports a trap.
fn off_contract(call: &str, code: ErrorCode) -> anyhow::Error {
    anyhow::Error::new(ComponentFault::OffContract(format!(
        "the component's `{call}` returned {code:?}, which its WIT contract rules out"
    )))
}

/// A wasmtime error as an `anyhow` one, with its chain of causes.
fn wasm_error(e: wasmtime::Error) -> anyhow::Error {
    anyhow::Error::from_boxed(e.into_boxed_dyn_error())
}

/// Names the trap, which `to_string` of the error hides.
fn trap_context(e: wasmtime::Error) -> anyhow::Error {
    let fault = match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => ComponentFault::DeadlineExceeded,
        Some(trap) => ComponentFault::Trapped(format!("the component trapped ({trap:?})")),
        None => ComponentFault::Trapped("the component call failed".to_string()),
    };
    wasm_error(e).context(fault)
}

impl Backend for ComponentBackend {
    fn name(&self) -> &'static str {
        "component"
    }
    fn set_listeners(&mut self, present: bool, reliable: bool) -> Result<()> {
        let mut listeners = wit::ListenerPresence::empty();
        if present {
            listeners |= wit::ListenerPresence::PRESENT;
        }
        if reliable {
            listeners |= wit::ListenerPresence::RELIABLE;
        }
        call!(self.call_set_listeners(listeners))
    }
    fn ingest(&mut self, now_ns: u64, packets: &[u8], verdicts: &mut Vec<u8>) -> Result<()> {
        let ingested = call!(self.call_ingest(now_ns, packets))?;
        check_verdicts(packets, &ingested.verdicts)?;
        verdicts.extend_from_slice(&ingested.verdicts);
        self.queued_events = Some(ingested.queued_events);
        Ok(())
    }
    fn advance(&mut self, now_ns: u64) -> Result<()> {
        call!(self.call_advance(now_ns))?;
        self.advanced_to = self.advanced_to.max(Some(now_ns));
        Ok(())
    }
    fn next_deadline(&mut self) -> Result<Option<u64>> {
        let next = call!(self.call_next_deadline())?;
        check_deadline(next, self.advanced_to)?;
        Ok(next)
    }
    fn take_events(&mut self, max: u32, out: &mut Vec<u8>) -> Result<usize> {
        // The guest hands messages over as soon as it is asked, so one call whose result is
        // too large for wasmtime to copy back (about 128 MB) would strand them: ask in chunks
        // that always fit, as many times as `max` needs.
        let mut taken = 0usize;
        while (taken as u64) < u64::from(max) && self.queued_events != Some(0) {
            let chunk = (max - taken as u32).min(TAKE_CHUNK);
            let known = self.queued_events;
            let bytes = call!(self.call_take_events(chunk))?;
            let n = count_event_frames(&bytes, chunk)?;
            out.extend_from_slice(&bytes);
            taken += n;
            self.queued_events = if n < chunk as usize {
                Some(0)
            } else {
                known.map(|k| k.saturating_sub(n as u32))
            };
        }
        Ok(taken)
    }
    fn report_delivery(&mut self, results: &[Delivery]) -> Result<()> {
        let results: Vec<wit::Delivery> = results
            .iter()
            .map(|r| match r {
                Delivery::Delivered => wit::Delivery::Delivered,
                Delivery::Failed => wit::Delivery::Failed,
            })
            .collect();
        self.queued_events = Some(call!(self.call_report_delivery(&results))?);
        Ok(())
    }
    fn listeners_drained(&mut self, now_ns: u64) -> Result<()> {
        call!(self.call_listeners_drained(now_ns))
    }
    fn flush(&mut self, now_ns: u64) -> Result<()> {
        call!(self.call_flush(now_ns))
    }
    fn delete(&mut self, now_ns: u64, zone: u16, tuple: &Tuple) -> Result<bool> {
        let wt = tuple_to_wit(tuple);
        match call!(self.call_delete(now_ns, zone, wt))? {
            Ok(()) => Ok(true),
            Err(ErrorCode::NotFound) => Ok(false),
            Err(other) => Err(off_contract("delete", other)),
        }
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
        let r = call!(ctwasm_core_proxy: self.call_open(now_ns, zone, wt))?;
        r.map_or_else(|e| conn_error("open", e).map(Err), |id| Ok(Ok(id)))
    }
    fn transfer(
        &mut self,
        now_ns: u64,
        id: u32,
        dir: Direction,
        bytes: u64,
    ) -> Result<std::result::Result<(), ConnError>> {
        let dir = direction_to_wit(dir);
        let r = call!(ctwasm_core_proxy: self.call_transfer(now_ns, id, dir, bytes))?;
        r.map_or_else(|e| conn_error("transfer", e).map(Err), |()| Ok(Ok(())))
    }
    fn close(
        &mut self,
        now_ns: u64,
        id: u32,
        ending: Ending,
    ) -> Result<std::result::Result<(), ConnError>> {
        let ending = ending_to_wit(ending);
        let r = call!(ctwasm_core_proxy: self.call_close(now_ns, id, ending))?;
        r.map_or_else(|e| conn_error("close", e).map(Err), |()| Ok(Ok(())))
    }
    fn connection_start(&mut self, id: u32) -> Result<Option<u64>> {
        call!(ctwasm_core_proxy: self.call_start(id))
    }
    fn connection_calls(
        &mut self,
        now_ns: u64,
        calls: &[ConnCall],
        results: &mut Vec<std::result::Result<ConnHandle, ConnError>>,
    ) -> Result<()> {
        use exports::ctwasm::core::proxy as p;
        let conn = |r: ConnRef| match r {
            ConnRef::Live(h) => p::ConnRef::Live(p::ConnHandle {
                id: h.id,
                start: h.start_ns,
            }),
            ConnRef::Opened(i) => p::ConnRef::Opened(i),
        };
        // A call that needs no crossing fails on this side; the guest sees a transfer on id 0,
        // which no connection has, so indices and outcomes stay aligned.
        let nobody = p::ConnRef::Live(p::ConnHandle { id: 0, start: 0 });
        let mut unreadable = Vec::new();
        let wit_calls: Vec<p::ConnCall> = calls
            .iter()
            .enumerate()
            .map(|(i, call)| match *call {
                ConnCall::Open {
                    zone,
                    tuple,
                    first_bytes,
                } => p::ConnCall::Open(p::OpenCall {
                    zone,
                    t: tuple_to_wit(&tuple),
                    first_bytes,
                }),
                ConnCall::Transfer {
                    conn: c,
                    dir,
                    bytes,
                } => p::ConnCall::Transfer(p::TransferCall {
                    conn: conn(c),
                    dir: direction_to_wit(dir),
                    bytes,
                }),
                ConnCall::Close { conn: c, ending } => p::ConnCall::Close(p::CloseCall {
                    conn: conn(c),
                    ending: ending_to_wit(ending),
                }),
                ConnCall::Unreadable(e) => {
                    unreadable.push((i, e));
                    p::ConnCall::Transfer(p::TransferCall {
                        conn: nobody,
                        dir: wit::Direction::Original,
                        bytes: 0,
                    })
                }
            })
            .collect();
        let outcomes = call!(ctwasm_core_proxy: self.call_calls(now_ns, &wit_calls))?;
        if outcomes.len() != calls.len() {
            return Err(anyhow::Error::new(ComponentFault::OffContract(format!(
                "the component's `calls` returned {} outcomes for {} calls",
                outcomes.len(),
                calls.len()
            ))));
        }
        let first = results.len();
        for outcome in outcomes {
            results.push(match outcome {
                Ok(h) => Ok(ConnHandle {
                    id: h.id,
                    start_ns: h.start,
                }),
                Err(e) => Err(conn_error("calls", e)?),
            });
        }
        for (i, e) in unreadable {
            results[first + i] = Err(e);
        }
        Ok(())
    }
    fn expect(
        &mut self,
        now_ns: u64,
        master_id: u32,
        tuple: &Tuple,
        mask: ExpectMask,
        timeout_s: u32,
        permanent: bool,
    ) -> Result<std::result::Result<u32, ExpectError>> {
        let wt = tuple_to_wit(tuple);
        let mask = wit::ExpectMask {
            src_addr: mask.src_addr,
            src_port: mask.src_port,
        };
        let flags = if permanent {
            wit::ExpectFlags::PERMANENT
        } else {
            wit::ExpectFlags::empty()
        };
        let r = call!(ctwasm_core_expect: self.call_expect(
            now_ns, master_id, wt, mask, timeout_s, flags
        ))?;
        match r {
            Ok(id) => Ok(Ok(id)),
            Err(ErrorCode::UnknownMaster) => Ok(Err(ExpectError::UnknownMaster)),
            Err(ErrorCode::TableFull) => Ok(Err(ExpectError::TableFull)),
            Err(ErrorCode::Exists) => Ok(Err(ExpectError::Exists)),
            Err(other) => Err(off_contract("expect", other)),
        }
    }
    fn unexpect(&mut self, now_ns: u64, id: u32) -> Result<bool> {
        match call!(ctwasm_core_expect: self.call_unexpect(now_ns, id))? {
            Ok(()) => Ok(true),
            Err(ErrorCode::UnknownId) => Ok(false),
            Err(other) => Err(off_contract("unexpect", other)),
        }
    }
    fn expect_stats(&mut self) -> Result<ExpectStats> {
        let s = call!(ctwasm_core_expect: self.call_stats())?;
        Ok(ExpectStats {
            expect_new: s.expect_new,
            expect_create: s.expect_create,
            expect_delete: s.expect_delete,
            expectations: s.expectations,
        })
    }
    fn snapshot(&mut self) -> Result<Vec<u8>> {
        let buffer = call!(self.call_snapshot())?;
        let bytes =
            snapshot_out_of_guest(&mut self.store, &self.bindings, self.deadline_ticks, buffer);
        // Only a failed call (a trap, an overrun deadline) kills the instance.
        self.dead |= bytes.as_ref().is_err_and(|e| {
            matches!(
                e.downcast_ref::<ComponentFault>(),
                Some(ComponentFault::Trapped(_) | ComponentFault::DeadlineExceeded)
            )
        });
        bytes
    }
}

/// The proxy calls' codes as the engine's `ConnError`; any other code is off contract.
fn direction_to_wit(d: Direction) -> wit::Direction {
    match d {
        Direction::Original => wit::Direction::Original,
        Direction::Reply => wit::Direction::Reply,
    }
}

fn ending_to_wit(e: Ending) -> exports::ctwasm::core::proxy::Ending {
    use exports::ctwasm::core::proxy::Ending as W;
    match e {
        Ending::Fin { first } => W::Fin(direction_to_wit(first)),
        Ending::Reset { from } => W::Reset(direction_to_wit(from)),
    }
}

fn conn_error(call: &str, e: ErrorCode) -> Result<ConnError> {
    match e {
        ErrorCode::UnknownId => Ok(ConnError::UnknownId),
        ErrorCode::TableFull => Ok(ConnError::TableFull),
        ErrorCode::BadTuple => Ok(ConnError::BadTuple),
        other => Err(off_contract(call, other)),
    }
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

fn tuple_from_wit(t: &wit::ConnTuple) -> Result<Tuple> {
    use wit::IpAddress::{Ipv4, Ipv6};
    let v6 = |(a, b, c, d, e, f, g, h)| Addr::v6(Ipv6Addr::new(a, b, c, d, e, f, g, h).octets());
    let (family, src, dst) = match (t.src, t.dst) {
        (Ipv4((a, b, c, d)), Ipv4((e, f, g, h))) => {
            (Family::Ipv4, Addr::v4([a, b, c, d]), Addr::v4([e, f, g, h]))
        }
        (Ipv6(s), Ipv6(d)) => (Family::Ipv6, v6(s), v6(d)),
        (s, d) => bail!("the component returned a tuple from {s:?} to {d:?}"),
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
        // Flag n of the WIT `status` is the kernel's bit n.
        status: Status(e.status.as_array()[0]),
        tcp_state: e.tcp_state.map(tcp_state_from_wit),
        sctp_state: e.sctp_state.map(sctp_state_from_wit),
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

fn tcp_state_from_wit(s: wit::TcpState) -> TcpState {
    use wit::TcpState as W;
    match s {
        W::None => TcpState::None,
        W::SynSent => TcpState::SynSent,
        W::SynRecv => TcpState::SynRecv,
        W::Established => TcpState::Established,
        W::FinWait => TcpState::FinWait,
        W::CloseWait => TcpState::CloseWait,
        W::LastAck => TcpState::LastAck,
        W::TimeWait => TcpState::TimeWait,
        W::Close => TcpState::Close,
        W::SynSent2 => TcpState::SynSent2,
    }
}

fn sctp_state_from_wit(s: wit::SctpState) -> SctpState {
    use wit::SctpState as W;
    match s {
        W::None => SctpState::None,
        W::Closed => SctpState::Closed,
        W::CookieWait => SctpState::CookieWait,
        W::CookieEchoed => SctpState::CookieEchoed,
        W::Established => SctpState::Established,
        W::ShutdownSent => SctpState::ShutdownSent,
        W::ShutdownRecd => SctpState::ShutdownRecd,
        W::ShutdownAckSent => SctpState::ShutdownAckSent,
        W::HeartbeatSent => SctpState::HeartbeatSent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_component_imports_nothing_and_exports_the_four_interfaces() {
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
        assert_eq!(
            exports,
            [
                "ctwasm:core/types@0.2.0",
                "ctwasm:core/tracker@0.2.0",
                "ctwasm:core/proxy@0.2.0",
                "ctwasm:core/expect@0.2.0",
            ]
        );
    }

    #[test]
    fn a_bad_sysctl_is_refused_by_both_backends() {
        let settings = TrackerSettings {
            sysctls: vec![("net.netfilter.nf_conntrack_bogus".into(), "1".into())],
            ..TrackerSettings::default()
        };
        for kind in [BackendKind::Native, BackendKind::Component] {
            let err = open_backend(kind, &settings, None).expect_err("refused");
            assert!(
                format!("{err:#}").contains("nf_conntrack_bogus"),
                "{kind:?}: {err:#}"
            );
        }
    }

    #[test]
    fn a_memory_cap_refuses_new_flows_instead_of_trapping() {
        // 8 MiB holds fewer than the twenty thousand entries offered: the rest are refused.
        let mut backend = ComponentBackend::with_component(
            embedded_component().unwrap(),
            &TrackerSettings::default(),
            8 << 20,
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
        backend.ingest(1, &batch, &mut verdicts).expect("no trap");
        let refused = verdicts
            .iter()
            .filter(|&&v| v == Verdict::Drop as u8)
            .count();
        assert!(refused > 0, "the cap was never reached");
        let stats = backend.stats().expect("the instance lives");
        assert_eq!(stats.insert_failed, refused as u64, "{stats:?}");
        assert_eq!(stats.entries as usize + refused, 20_000, "{stats:?}");
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
            b.close(4_000, id, Ending::CLIENT_FIN).unwrap().unwrap();
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

#[cfg(test)]
mod guest_answer_tests {
    //! What the host accepts from a guest, checked without a hostile component: the pure
    //! checks `ComponentBackend` applies to every answer.

    use super::*;
    use ctwasm_core::batch;

    fn batch_of(n: usize) -> Vec<u8> {
        let mut b = Vec::new();
        for _ in 0..n {
            batch::push_packet(&mut b, 1, 0, &[0x45, 0, 0, 20]);
        }
        b
    }

    #[test]
    fn a_deadline_before_the_clock_it_was_advanced_to_is_off_contract() {
        assert!(check_deadline(Some(5), Some(4)).is_ok());
        // Work scheduled for the current instant (a retry after a delivery) is due now.
        assert!(check_deadline(Some(4), Some(4)).is_ok());
        assert!(check_deadline(Some(0), None).is_ok());
        assert!(check_deadline(None, Some(4)).is_ok());
        for stuck in [0, 3] {
            let err = check_deadline(Some(stuck), Some(4)).unwrap_err();
            assert!(
                matches!(
                    err.downcast_ref::<ComponentFault>(),
                    Some(ComponentFault::OffContract(_))
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn verdicts_must_match_the_packets_one_for_one() {
        let ten = batch_of(10);
        assert!(check_verdicts(&ten, &[Verdict::New as u8; 10]).is_ok());
        for wrong in [0usize, 9, 11, 50_000] {
            let err = check_verdicts(&ten, &vec![0; wrong]).unwrap_err();
            assert!(
                matches!(err.downcast_ref(), Some(ComponentFault::OffContract(_))),
                "{wrong}: {err:#}"
            );
        }
        assert!(
            check_verdicts(&ten, &[200; 10]).is_err(),
            "an unlisted verdict"
        );
        // A batch cut inside its third frame has two verdicts, as the engine gives.
        let mut cut = batch_of(3);
        cut.truncate(cut.len() - 2);
        assert!(check_verdicts(&cut, &[0, 0]).is_ok());
        assert!(check_verdicts(&cut, &[0, 0, 0]).is_err());
    }

    #[test]
    fn taken_events_must_be_whole_frames_and_no_more_than_asked() {
        let mut events = Vec::new();
        for _ in 0..3 {
            let at = batch::begin_event(&mut events, Default::default(), 1, 0, 5);
            events.extend_from_slice(&[0u8; 20]);
            batch::finish_event(&mut events, at);
        }
        assert_eq!(count_event_frames(&events, 3).unwrap(), 3);
        assert!(count_event_frames(&events, 2).is_err(), "more than asked");
        assert!(
            count_event_frames(&events[..events.len() - 1], 3).is_err(),
            "a cut frame"
        );
        assert!(count_event_frames(&[0xff; 7], 10).is_err(), "garbage");
        assert_eq!(count_event_frames(&[], 10).unwrap(), 0);
    }
}

#[cfg(test)]
mod boundary_tests {
    //! The expectation calls through [`Backend`], and hostile arguments at the WIT boundary,
    //! where the component's `error-code` is checked as it crosses (below `Backend`, which
    //! cannot build a malformed tuple).

    use super::*;

    fn v4_tuple(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> Tuple {
        Tuple {
            family: Family::Ipv4,
            src: Addr::v4(src),
            dst: Addr::v4(dst),
            proto,
            l4: L4Tuple::Ports {
                src: sport,
                dst: dport,
            },
        }
    }

    /// An FTP-like control connection, its data channel expected, refused three ways, matched
    /// by a packet, removed: the same answers, table and events from both backends.
    #[test]
    fn the_expectation_calls_agree_in_both_backends() {
        let settings = TrackerSettings {
            sysctls: vec![("net.netfilter.nf_conntrack_expect_max".into(), "2".into())],
            ..TrackerSettings::default()
        };
        let control = v4_tuple([10, 0, 0, 1], [10, 0, 0, 2], 6, 40000, 21);
        let data = v4_tuple([10, 0, 0, 2], [10, 0, 0, 1], 6, 20, 50000);
        let mask = ExpectMask {
            src_addr: true,
            src_port: false,
        };
        let mut runs = Vec::new();
        for kind in [BackendKind::Native, BackendKind::Component] {
            let mut b = open_backend(kind, &settings, None).unwrap();
            let mut answers = Vec::new();
            let master = b.open(1_000, 0, &control).unwrap().unwrap();
            let first = b.expect(2_000, master, &data, mask, 60, false).unwrap();
            answers.push(first.map(|_| ()));
            answers.push(
                b.expect(2_100, master, &data, mask, 60, false)
                    .unwrap()
                    .map(|_| ()),
            );
            answers.push(
                b.expect(2_200, master ^ 1, &data, mask, 60, false)
                    .unwrap()
                    .map(|_| ()),
            );
            let other = v4_tuple([10, 0, 0, 2], [10, 0, 0, 1], 6, 20, 50001);
            let permanent = b
                .expect(2_300, master, &other, mask, 60, true)
                .unwrap()
                .unwrap();
            let third = v4_tuple([10, 0, 0, 2], [10, 0, 0, 1], 6, 20, 50002);
            answers.push(
                b.expect(2_400, master, &third, mask, 60, false)
                    .unwrap()
                    .map(|_| ()),
            );
            assert_eq!(
                answers,
                [
                    Ok(()),
                    Err(ExpectError::Exists),
                    Err(ExpectError::UnknownMaster),
                    Err(ExpectError::TableFull),
                ],
                "{kind:?}"
            );
            let stats_before = b.expect_stats().unwrap();

            // The data channel's SYN matches the first expectation.
            let syn = ctwasm_core::wire::build::tcp(20, 50000, 1, 0, 0x02, 65_535, 0);
            let packet = ctwasm_core::wire::build::ipv4([10, 0, 0, 2], [10, 0, 0, 1], 6, &syn);
            let mut batch = Vec::new();
            ctwasm_core::batch::push_packet(&mut batch, 3_000, 0, &packet);
            let mut verdicts = Vec::new();
            b.ingest(3_000, &batch, &mut verdicts).unwrap();

            let removed = b.unexpect(4_000, permanent).unwrap();
            let again = b.unexpect(4_100, permanent).unwrap();
            assert!(removed && !again, "{kind:?}");
            let mut events = Vec::new();
            b.take_events(1_000, &mut events).unwrap();
            runs.push((
                answers,
                stats_before,
                verdicts,
                b.expect_stats().unwrap(),
                b.dump().unwrap(),
                events,
            ));
        }
        assert_eq!(runs[0], runs[1]);
        let (_, before, _, after, table, _) = &runs[0];
        assert_eq!(before.expectations, 2);
        assert_eq!(
            after.expect_new, 1,
            "the SYN came in as an expected connection"
        );
        assert!(table.iter().any(|e| e.status.contains(Status::EXPECTED)));
    }

    fn component() -> ComponentBackend {
        ComponentBackend::new(&TrackerSettings::default()).unwrap()
    }

    /// The tracker still answers after a refused call: a new connection opens.
    fn assert_usable(b: &mut ComponentBackend, n: u16) {
        let t = v4_tuple([10, 9, 0, 1], [10, 9, 0, 2], 17, n, 53);
        let id = b.open(1_000_000 + n as u64, 0, &t).unwrap();
        assert!(id.is_ok(), "after call {n}: {id:?}");
    }

    const MIXED: [wit::ConnTuple; 2] = [
        wit::ConnTuple {
            src: wit::IpAddress::Ipv4((10, 0, 0, 1)),
            dst: wit::IpAddress::Ipv6((0xfd00, 0, 0, 0, 0, 0, 0, 1)),
            proto: 6,
            l4: wit::L4Tuple::Ports((40000, 80)),
        },
        wit::ConnTuple {
            src: wit::IpAddress::Ipv6((0xfd00, 0, 0, 0, 0, 0, 0, 1)),
            dst: wit::IpAddress::Ipv4((10, 0, 0, 1)),
            proto: 17,
            l4: wit::L4Tuple::Ports((40000, 53)),
        },
    ];

    /// A tuple whose addresses are of two families is `bad-tuple` for every call that takes a
    /// tuple, even where another code would also apply (an unknown master).
    #[test]
    fn a_malformed_tuple_is_bad_tuple_everywhere() {
        let mut b = component();
        let master = b
            .open(1, 0, &v4_tuple([10, 0, 0, 1], [10, 0, 0, 2], 6, 1, 2))
            .unwrap()
            .unwrap();
        let mask = wit::ExpectMask {
            src_addr: true,
            src_port: true,
        };
        let no_flags = wit::ExpectFlags::empty();
        let mut n = 100;
        for t in MIXED {
            let answers = [
                call!(b.call_delete(10, 0, t)).unwrap(),
                call!(ctwasm_core_proxy: b.call_open(10, 0, t))
                    .unwrap()
                    .map(drop),
                call!(ctwasm_core_expect: b.call_expect(10, master, t, mask, 60, no_flags))
                    .unwrap()
                    .map(drop),
                call!(ctwasm_core_expect: b.call_expect(10, master ^ 1, t, mask, 60, no_flags))
                    .unwrap()
                    .map(drop),
            ];
            for (i, answer) in answers.into_iter().enumerate() {
                assert_eq!(answer, Err(ErrorCode::BadTuple), "{t:?}, call {i}");
                n += 1;
                assert_usable(&mut b, n);
            }
        }
        assert_eq!(b.expect_stats().unwrap().expectations, 0);
    }

    /// In a batch, a malformed tuple fails its own call and nothing else: the calls after it
    /// keep their indices (an `opened` reference past it still finds its open).
    #[test]
    fn a_malformed_tuple_fails_its_call_alone_in_a_batch() {
        use exports::ctwasm::core::proxy as p;
        let mut b = component();
        let good = tuple_to_wit(&v4_tuple([10, 0, 0, 1], [10, 0, 0, 2], 6, 1, 2));
        let open = |t| {
            p::ConnCall::Open(p::OpenCall {
                zone: 0,
                t,
                first_bytes: 0,
            })
        };
        let calls = [
            open(MIXED[0]),
            open(good),
            open(MIXED[1]),
            p::ConnCall::Transfer(p::TransferCall {
                conn: p::ConnRef::Opened(1),
                dir: wit::Direction::Reply,
                bytes: 10,
            }),
            p::ConnCall::Close(p::CloseCall {
                conn: p::ConnRef::Opened(0),
                ending: p::Ending::Fin(wit::Direction::Original),
            }),
        ];
        let answers = call!(ctwasm_core_proxy: b.call_calls(10, &calls)).unwrap();
        let codes: Vec<_> = answers.iter().map(|a| a.map(drop)).collect();
        use ErrorCode::{BadTuple, UnknownId};
        assert_eq!(
            codes,
            [Err(BadTuple), Ok(()), Err(BadTuple), Ok(()), Err(UnknownId)]
        );
        let id = |a: &Result<p::ConnHandle, ErrorCode>| a.as_ref().map(|h| (h.id, h.start)).ok();
        assert_eq!(
            id(&answers[1]),
            id(&answers[3]),
            "the transfer acted on the one opened"
        );
        let entries = b.dump().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            entries[0].counters_reply.bytes,
            40 + 50,
            "SYN-ACK, then 10 bytes"
        );
    }

    /// The same batch, hostile references included, gives the same outcomes and leaves the
    /// same table in the component as in the native engine.
    #[test]
    fn a_batch_answers_alike_on_both_backends() {
        let t = |n| v4_tuple([10, 0, 0, n], [10, 0, 1, 1], 6, 40_000 + u16::from(n), 443);
        let stale = ConnHandle { id: 7, start_ns: 1 };
        let calls = [
            // As many first bytes as a u64 holds: carried in constant time like any transfer.
            ConnCall::Open {
                zone: 3,
                tuple: t(1),
                first_bytes: u64::MAX,
            },
            ConnCall::Open {
                zone: 3,
                tuple: t(2),
                first_bytes: 700,
            },
            ConnCall::Transfer {
                conn: ConnRef::Opened(0),
                dir: Direction::Original,
                bytes: 1 << 40,
            },
            ConnCall::Transfer {
                conn: ConnRef::Opened(9),
                dir: Direction::Original,
                bytes: 1,
            },
            ConnCall::Close {
                conn: ConnRef::Opened(2),
                ending: Ending::CLIENT_FIN,
            },
            ConnCall::Close {
                conn: ConnRef::Live(stale),
                ending: Ending::CLIENT_FIN,
            },
            ConnCall::Unreadable(ConnError::BadTuple),
            ConnCall::Close {
                conn: ConnRef::Opened(1),
                ending: Ending::CLIENT_RESET,
            },
        ];
        let mut answers = Vec::new();
        for kind in [BackendKind::Native, BackendKind::Component] {
            let mut b = open_backend(kind, &TrackerSettings::default(), None).unwrap();
            let mut results = Vec::new();
            b.connection_calls(1_000, &calls, &mut results).unwrap();
            // A second batch names the first's connections by handle.
            let live = results[0].unwrap();
            let close = [ConnCall::Close {
                conn: ConnRef::Live(live),
                ending: Ending::CLIENT_FIN,
            }];
            b.connection_calls(2_000, &close, &mut results).unwrap();
            answers.push((results, b.dump().unwrap(), b.stats().unwrap()));
        }
        let (native, component) = (&answers[0], &answers[1]);
        assert_eq!(native, component);
        use ConnError::{BadTuple, UnknownId};
        let outcomes: Vec<_> = native.0.iter().map(|r| r.map(drop)).collect();
        assert_eq!(
            outcomes,
            [
                Ok(()),
                Ok(()),
                Ok(()),
                Err(UnknownId),
                Err(UnknownId),
                Err(UnknownId),
                Err(BadTuple),
                Ok(()),
                Ok(())
            ]
        );
        assert_eq!(native.1.len(), 2, "both entries, closed");
    }

    /// Ids and tuples that name nothing get `unknown-id`, `unknown-master` and `not-found`.
    #[test]
    fn unknown_ids_and_tuples_get_their_codes() {
        let mut b = component();
        let absent = tuple_to_wit(&v4_tuple([10, 0, 0, 1], [10, 0, 0, 2], 6, 1, 2));
        let mask = wit::ExpectMask {
            src_addr: false,
            src_port: false,
        };
        let answers = [
            call!(ctwasm_core_proxy: b.call_transfer(1, 77, wit::Direction::Reply, 10)).unwrap(),
            call!(ctwasm_core_proxy: b.call_close(2, 77, exports::ctwasm::core::proxy::Ending::Reset(wit::Direction::Original))).unwrap(),
            call!(ctwasm_core_expect: b.call_unexpect(3, 77)).unwrap(),
            call!(ctwasm_core_expect: b.call_expect(
                4, 77, absent, mask, 60, wit::ExpectFlags::PERMANENT
            ))
            .unwrap()
            .map(drop),
            call!(b.call_delete(5, 0, absent)).unwrap(),
        ];
        assert_eq!(
            answers,
            [
                Err(ErrorCode::UnknownId),
                Err(ErrorCode::UnknownId),
                Err(ErrorCode::UnknownId),
                Err(ErrorCode::UnknownMaster),
                Err(ErrorCode::NotFound),
            ]
        );
        assert_usable(&mut b, 1);
    }

    /// Restores one candidate inside `b`'s instance; the new tracker, if any, is dropped again.
    fn try_restore(b: &mut ComponentBackend, bytes: &[u8]) -> std::result::Result<(), ErrorCode> {
        let buffer =
            snapshot_into_guest(&mut b.store, &b.bindings, b.deadline_ticks, bytes).unwrap();
        let r = b
            .bindings
            .ctwasm_core_tracker()
            .tracker()
            .call_restore(&mut b.store, buffer)
            .map_err(trap_context)
            .unwrap();
        buffer.resource_drop(&mut b.store).unwrap();
        r.map(|restored| restored.resource_drop(&mut b.store).unwrap())
    }

    /// The `snapshot-bytes` buffer's calls with hostile offsets and sizes: reads past the end
    /// or of nothing give nothing, never a trap; a buffer filled by pieces of any size restores
    /// as the whole; a buffer cut short is `bad-snapshot`.
    #[test]
    fn snapshot_bytes_with_hostile_offsets_and_pieces() {
        let mut b = component();
        for i in 0..50u16 {
            b.open(
                1_000 + u64::from(i),
                0,
                &v4_tuple([10, 0, 0, 1], [10, 0, 1, 1], 17, i, 53),
            )
            .unwrap()
            .unwrap();
        }
        let snapshot = b.snapshot().unwrap();
        let len = snapshot.len() as u64;
        let api = b.bindings.ctwasm_core_tracker().snapshot_bytes();
        let buffer = call!(b.call_snapshot()).unwrap();
        assert_eq!(api.call_len(&mut b.store, buffer).unwrap(), len);
        for (offset, max, expect) in [
            (0, 0, 0),
            (0, u32::MAX, len),
            (len - 1, 10, 1),
            (len, 10, 0),
            (len + 1, u32::MAX, 0),
            (u64::MAX, u32::MAX, 0),
            (u64::MAX - 3, 8, 0),
        ] {
            let got = api.call_read(&mut b.store, buffer, offset, max).unwrap();
            assert_eq!(got.len() as u64, expect, "read({offset}, {max})");
        }
        buffer.resource_drop(&mut b.store).unwrap();

        // Pieces of 1, 7 and 4 096 bytes, and empty appends between them, make the same bytes.
        let buffer = api.call_constructor(&mut b.store).unwrap();
        let mut at = 0;
        for size in [1usize, 0, 7, 4096].into_iter().cycle() {
            if at == snapshot.len() {
                break;
            }
            let end = (at + size).min(snapshot.len());
            api.call_append(&mut b.store, buffer, &snapshot[at..end])
                .unwrap()
                .unwrap();
            at = end;
        }
        let restored = b
            .bindings
            .ctwasm_core_tracker()
            .tracker()
            .call_restore(&mut b.store, buffer)
            .unwrap()
            .unwrap();
        restored.resource_drop(&mut b.store).unwrap();
        buffer.resource_drop(&mut b.store).unwrap();
        assert_eq!(
            try_restore(&mut b, &snapshot[..snapshot.len() - 1]),
            Err(ErrorCode::BadSnapshot)
        );
        assert_eq!(try_restore(&mut b, &[]), Err(ErrorCode::BadSnapshot));
        assert_usable(&mut b, 1);
    }

    /// Random, truncated and bit-flipped snapshots: `bad-snapshot` (or, for a flip the format
    /// cannot notice, whatever the native engine says), never a trap, and the instance's own
    /// tracker goes on.
    #[test]
    fn hostile_snapshots_are_bad_snapshot_and_leave_the_tracker_usable() {
        let mut b = component();
        for i in 0..20u8 {
            b.open(
                1_000 + i as u64,
                0,
                &v4_tuple([10, 0, 0, i], [10, 0, 1, 1], 17, 5000, 53),
            )
            .unwrap()
            .unwrap();
        }
        let master = b.dump().unwrap()[0].id;
        b.expect(
            2_000,
            master,
            &v4_tuple([10, 0, 1, 1], [10, 0, 0, 0], 17, 53, 6000),
            ExpectMask::default(),
            60,
            false,
        )
        .unwrap()
        .unwrap();
        let snapshot = b.snapshot().unwrap();
        assert_eq!(try_restore(&mut b, &snapshot), Ok(()));

        let mut n = 0;
        for (round, bytes) in crate::testing::snapshot_noise(&snapshot, 200, 4096)
            .into_iter()
            .enumerate()
        {
            assert_eq!(
                try_restore(&mut b, &bytes),
                Err(ErrorCode::BadSnapshot),
                "round {round}"
            );
            n += 1;
            assert_usable(&mut b, n);
        }

        let step = (snapshot.len() / 1500).max(1);
        for len in (0..snapshot.len()).step_by(step) {
            assert_eq!(
                try_restore(&mut b, &snapshot[..len]),
                Err(ErrorCode::BadSnapshot),
                "cut at {len} of {}",
                snapshot.len()
            );
        }
        n += 1;
        assert_usable(&mut b, n);

        let mut refused = 0;
        for pos in (0..snapshot.len()).step_by(step) {
            let mut flipped = snapshot.clone();
            flipped[pos] ^= 1 << (pos % 8);
            let native = Tracker::restore(&flipped).map(drop).map_err(|e| match e {
                ctwasm_core::SnapshotError::UnsupportedVersion { .. } => {
                    ErrorCode::UnsupportedSnapshot
                }
                _ => ErrorCode::BadSnapshot,
            });
            let answer = try_restore(&mut b, &flipped);
            assert_eq!(answer, native, "bit {} of byte {pos}", pos % 8);
            let expected = if pos == 7 {
                // The format version byte.
                ErrorCode::UnsupportedSnapshot
            } else {
                // The magic, or anything the checksum covers.
                ErrorCode::BadSnapshot
            };
            assert_eq!(answer, Err(expected), "bit {} of byte {pos}", pos % 8);
            refused += answer.is_err() as usize;
        }
        assert_eq!(
            refused,
            snapshot.len().div_ceil(step),
            "every flip is refused"
        );
        n += 1;
        assert_usable(&mut b, n);
        eprintln!(
            "snapshot of {} bytes: {refused} of {} bit flips refused",
            snapshot.len(),
            snapshot.len().div_ceil(step)
        );

        // Forged: flipped and re-signed, so the field checks decide. Both backends must
        // accept exactly the same snapshots.
        let mut accepted = 0;
        for pos in (8..snapshot.len() - 4).step_by(step) {
            let mut forged = snapshot.clone();
            forged[pos] ^= 1 << (pos % 8);
            ctwasm_core::snapshot::resign(&mut forged);
            let native = Tracker::restore(&forged).is_ok();
            let component = try_restore(&mut b, &forged).is_ok();
            assert_eq!(component, native, "forged bit {} of byte {pos}", pos % 8);
            accepted += usize::from(native);
        }
        n += 1;
        assert_usable(&mut b, n);
        eprintln!("forged snapshots: {accepted} accepted by both backends, the rest by neither");
    }
}
