//! The embedding API: the one documented way for a program to run the tracker inside itself.
//!
//! A proxy that embeds connection tracking as a sandboxed plugin wants four things from it,
//! and this module is where each is kept:
//!
//! - **A value it can own and move**: [`Tracker`] is `Send`, so it goes into a worker thread
//!   or an async task. It runs the engine as the WebAssembly component (the default: a bug in
//!   the engine traps the instance, not the proxy) or linked natively.
//! - **One error type**: [`Error`] tells a refused call ([`Refusal`], the tracker is fine),
//!   a setting the builder could not apply ([`ConfigError`]) and a guest that failed
//!   ([`Fault`], the instance is gone) apart by `match`.
//! - **Handles that stay honest**: [`Connection`] is an entry's id *and* its start time, so a
//!   handle kept past its connection's end is refused instead of acting on a later connection
//!   that drew the same id.
//! - **Output it can pull in bounded steps**: [`Tracker::poll_events`] takes the event queue
//!   a chunk at a time, however long it has grown, and reports each message's delivery in
//!   order, as the engine requires.
//!
//! Like the engine, a `Tracker` has no clock: every call that can change state takes `now`,
//! nanoseconds on the embedder's clock, which must never go back.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use ctwasm_core::batch::{self, PACKET_HEADER_LEN};
use ctwasm_core::tuple::{Addr, Family, L4Tuple};

use crate::backend::{
    Backend, ComponentBackend, ComponentFault, NativeBackend, SnapshotRefused, TrackerSettings,
    embedded_component,
};
pub use crate::backend::{BackendKind, DEFAULT_CALL_DEADLINE, DEFAULT_MEMORY_LIMIT, GuestFault};
use crate::resilient::{CallDropped, with_recovery};
pub use ctwasm_core::{
    Delivery, Direction, Ending, EntryView, EventBits, ExpectMask, ExpectStats, RetryPolicy, Stats,
    Tuple, Verdict,
};

/// Event messages taken from the tracker per call by [`Tracker::poll_events`].
///
/// A message is at most a few hundred bytes, so a chunk stays near a megabyte, far below the
/// copy limit of one component call (about 128 MB), however many events are pending.
pub const EVENT_CHUNK: u32 = 4096;

// ----- errors ------------------------------------------------------------------------------

/// Everything that can go wrong in a call of this module.
///
/// Three kinds, each its own variant, so that an embedder decides by `match`:
///
/// ```
/// use ctwasm_host::{Error, Fault, Refusal};
///
/// fn what_to_do(e: &Error) -> &'static str {
///     match e {
///         Error::Refused(Refusal::TableFull) => "shed load; the tracker is fine",
///         Error::Refused(_) => "a bad argument; the tracker is fine",
///         Error::Config(_) => "fix the settings",
///         Error::Fault(Fault::DeadlineExceeded) => "the guest hung; build a new tracker",
///         Error::Fault(_) => "the guest failed; build a new tracker",
///         _ => "a kind of error this version does not know",
///     }
/// }
/// # assert_eq!(what_to_do(&Error::Refused(Refusal::NotFound)), "a bad argument; the tracker is fine");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// [`TrackerBuilder::build`] could not apply a setting; no tracker was built.
    Config(ConfigError),
    /// The tracker refused the call and changed nothing; it goes on as before.
    Refused(Refusal),
    /// The guest failed: it trapped, overran its deadline or broke its contract. Its instance
    /// is gone, and every later call returns [`Fault::Dead`]; the state can be carried on from
    /// the last [`Tracker::snapshot`] with [`Tracker::restore`].
    Fault(Fault),
}

/// A setting [`TrackerBuilder::build`] could not apply.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// No sysctl has this name.
    UnknownSysctl {
        /// The name as given.
        name: String,
    },
    /// The sysctl exists but the value is out of range or not a number.
    BadValue {
        /// The sysctl's name.
        name: String,
        /// The value as given.
        value: String,
        /// What the sysctl takes.
        expected: &'static str,
    },
    /// An injected [`GuestFault`] asks for the component backend; the native engine cannot
    /// commit one.
    FaultNeedsComponent,
}

/// Why the tracker refused a call. Nothing changed; the tracker is usable.
///
/// The first seven are the WIT `error-code`s of the calls; the rest are this API's own checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// A tuple that cannot be tracked: its addresses are of two families, or (for
    /// [`Tracker::open`]) its protocol has no connections.
    BadTuple,
    /// No live entry matches the tuple in that zone ([`Tracker::delete`]).
    NotFound,
    /// No live expectation has this id ([`Tracker::unexpect`]).
    UnknownId,
    /// The master given to [`Tracker::expect`] is not a live connection (or not this one: its
    /// id was drawn again).
    UnknownMaster,
    /// The table is full: `nf_conntrack_max` entries, or `nf_conntrack_expect_max`
    /// expectations.
    TableFull,
    /// An expectation for this tuple exists already.
    Exists,
    /// Bytes that are not a snapshot of this format, end early or do not hold together.
    BadSnapshot,
    /// The [`Connection`] has ended: no live entry has its id, or the entry that has it now
    /// is a later connection.
    UnknownConnection,
    /// A packet batch whose frame at byte `offset` is broken: its header or its stated length
    /// runs past the end of the batch, or it carries no packet. Nothing of the batch was
    /// ingested.
    BadFrame {
        /// Where the broken frame starts.
        offset: usize,
    },
}

/// How the guest failed. The instance is gone afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The guest trapped: a panic, an access out of bounds, memory it could not grow past
    /// [`TrackerBuilder::memory_limit`]. The text is wasmtime's.
    Trapped(String),
    /// A call ran past [`TrackerBuilder::call_deadline`] and was stopped.
    DeadlineExceeded,
    /// The guest answered something its WIT contract rules out.
    OffContract(String),
    /// An earlier call failed and the instance is gone; nothing was called.
    Dead,
    /// With recovery on ([`TrackerBuilder::checkpoint_every`]): the call failed in the guest,
    /// failed again on a recovered instance, and was dropped. The tracker lives on, at the
    /// state before the call. The text says how it failed.
    Dropped(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "configuration refused: {e}"),
            Error::Refused(r) => write!(f, "call refused: {r}"),
            Error::Fault(fault) => write!(f, "guest failed: {fault}"),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::UnknownSysctl { name } => write!(f, "unknown sysctl `{name}`"),
            ConfigError::BadValue {
                name,
                value,
                expected,
            } => write!(f, "bad value `{value}` for `{name}`: expected {expected}"),
            ConfigError::FaultNeedsComponent => {
                f.write_str("fault injection needs the component backend")
            }
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::BadTuple => f.write_str("the tuple cannot be tracked"),
            Refusal::NotFound => f.write_str("no live entry matches the tuple"),
            Refusal::UnknownId => f.write_str("no live expectation has this id"),
            Refusal::UnknownMaster => f.write_str("the master is not a live connection"),
            Refusal::TableFull => f.write_str("the table is full"),
            Refusal::Exists => f.write_str("an expectation for this tuple exists"),
            Refusal::BadSnapshot => f.write_str("not a valid snapshot"),
            Refusal::UnknownConnection => f.write_str("the connection has ended"),
            Refusal::BadFrame { offset } => write!(f, "broken packet frame at byte {offset}"),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Trapped(what) => write!(f, "the component trapped: {what}"),
            Fault::DeadlineExceeded => f.write_str("a call overran its deadline"),
            Fault::OffContract(what) => f.write_str(what),
            Fault::Dead => f.write_str("the instance is gone after an earlier failure"),
            Fault::Dropped(what) => write!(f, "the call was dropped after a recovery: {what}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Error {
        Error::Refused(r)
    }
}

/// A failed backend call as a [`Fault`]: the component says which kind; anything else (which
/// the native backend never returns) counts as a trap.
fn fault_of(e: &anyhow::Error) -> Fault {
    match e.downcast_ref::<ComponentFault>() {
        Some(ComponentFault::DeadlineExceeded) => Fault::DeadlineExceeded,
        Some(ComponentFault::OffContract(what)) => Fault::OffContract(what.clone()),
        Some(ComponentFault::Trapped(_)) | None => Fault::Trapped(format!("{e:#}")),
    }
}

fn conn_refusal(e: ctwasm_core::ConnError) -> Error {
    Error::Refused(refusal_of(e))
}

fn refusal_of(e: ctwasm_core::ConnError) -> Refusal {
    match e {
        ctwasm_core::ConnError::UnknownId => Refusal::UnknownConnection,
        ctwasm_core::ConnError::TableFull => Refusal::TableFull,
        ctwasm_core::ConnError::BadTuple => Refusal::BadTuple,
    }
}

// ----- the builder -------------------------------------------------------------------------

/// Settings for a [`Tracker`]: the kernel's sysctls by name, the seed, the retry policy, and
/// the sandbox's limits.
///
/// ```
/// use std::time::Duration;
/// use ctwasm_host::{RetryPolicy, Tracker};
///
/// let tracker = Tracker::builder()
///     .sysctl("net.netfilter.nf_conntrack_max", "65536")
///     .sysctl("net.netfilter.nf_conntrack_udp_timeout", "30")
///     .seed(7)
///     .retry_policy(RetryPolicy::Kernel)
///     .memory_limit(256 << 20)
///     .call_deadline(Duration::from_secs(1))
///     .build()?;
/// # drop(tracker);
/// # Ok::<(), ctwasm_host::Error>(())
/// ```
///
/// With [`TrackerBuilder::checkpoint_every`], the tracker also survives its guest: it snapshots
/// itself every so many calls, and after a trap or an overrun deadline continues on a fresh
/// instance with nothing lost (see [`crate::resilient`]).
#[derive(Clone, Debug)]
pub struct TrackerBuilder {
    settings: TrackerSettings,
    kind: BackendKind,
    memory_limit: usize,
}

impl Default for TrackerBuilder {
    fn default() -> Self {
        TrackerBuilder {
            settings: TrackerSettings::default(),
            kind: BackendKind::Component,
            memory_limit: DEFAULT_MEMORY_LIMIT,
        }
    }
}

impl TrackerBuilder {
    /// The kernel's defaults, seed 0, the grace retry policy, the component backend with
    /// [`DEFAULT_MEMORY_LIMIT`] and [`DEFAULT_CALL_DEADLINE`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a sysctl by the kernel's name, with or without the `net.netfilter.` prefix, e.g.
    /// `nf_conntrack_tcp_timeout_established` = `600`. Checked by [`TrackerBuilder::build`];
    /// a later setting of the same name wins.
    pub fn sysctl(mut self, name: impl Into<String>, value: impl ToString) -> Self {
        self.settings.sysctls.push((name.into(), value.to_string()));
        self
    }

    /// The seed of every random choice the tracker makes (entry ids, grace delays, the hash),
    /// so that the same inputs give the same outputs.
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = seed;
        self
    }

    /// How a DESTROY that a reliable listener missed is retried.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.settings.retry_policy = Some(policy);
        self
    }

    /// The most linear memory the component may use, in bytes. The tracker's own structures
    /// are kept to a budget below it, so a table that fills it refuses new connections
    /// (`drop`, `insert_failed`) instead of trapping. The native backend has no cap.
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// The longest one call into the component may run before it is stopped
    /// ([`Fault::DeadlineExceeded`]), to a resolution of 10 ms. The native backend has no
    /// deadline.
    pub fn call_deadline(mut self, deadline: Duration) -> Self {
        self.settings.call_deadline = Some(deadline);
        self
    }

    /// Which engine runs the tracker: [`BackendKind::Component`] (the default, sandboxed) or
    /// [`BackendKind::Native`] (linked in, faster, shares the embedder's fate).
    pub fn backend(mut self, kind: BackendKind) -> Self {
        self.kind = kind;
        self
    }

    /// Recovery from guest faults (component only): a checkpoint every `calls` calls that
    /// change the tracker and a journal in between; after a trap or an overrun deadline the
    /// tracker continues on a fresh instance at the exact state it had, and the failing call
    /// is tried once more (if it fails again it is dropped: [`Fault::Dropped`]). Costs a
    /// snapshot per checkpoint (about 30 ms at 100 000 entries, 0.3 s at a million); a
    /// checkpoint that cannot be taken keeps the older one and a longer journal.
    pub fn checkpoint_every(mut self, calls: usize) -> Self {
        self.settings.checkpoint_every = Some(calls.max(1));
        self
    }

    /// For tests of the embedder's fault handling only: the component commits `fault` on
    /// purpose.
    pub fn inject_fault(mut self, fault: GuestFault) -> Self {
        self.settings.fault = Some(fault);
        self
    }

    /// Builds the tracker.
    ///
    /// ```
    /// use ctwasm_host::{ConfigError, Error, Tracker};
    ///
    /// let refused = Tracker::builder().sysctl("nf_conntrack_bogus", 1).build();
    /// assert!(matches!(
    ///     refused,
    ///     Err(Error::Config(ConfigError::UnknownSysctl { name })) if name == "nf_conntrack_bogus"
    /// ));
    /// ```
    pub fn build(&self) -> Result<Tracker, Error> {
        let config = self.engine_config()?;
        let backend: Box<dyn Backend> = match self.kind {
            BackendKind::Native => Box::new(NativeBackend::new(config)),
            BackendKind::Component => self
                .component_backend()
                .map_err(|e| Error::Fault(fault_of(&e)))?,
        };
        Ok(self.tracker(backend))
    }

    /// The component instance, wrapped for recovery when asked.
    fn component_backend(&self) -> anyhow::Result<Box<dyn Backend>> {
        let component = embedded_component()?;
        let inner = ComponentBackend::with_component(component, &self.settings, self.memory_limit)?;
        with_recovery(component, inner, self.memory_limit, &self.settings)
    }

    /// Builds a tracker that continues from `snapshot` bytes (from [`Tracker::snapshot`] of
    /// either backend). The sysctls, seed and retry policy are the snapshot's; the limits and
    /// the backend are this builder's.
    pub fn restore(&self, snapshot: &[u8]) -> Result<Tracker, Error> {
        self.engine_config()?;
        let backend: Box<dyn Backend> = match self.kind {
            BackendKind::Native => Box::new(NativeBackend::from_tracker(
                ctwasm_core::Tracker::restore(snapshot)
                    .map_err(|_| Error::Refused(Refusal::BadSnapshot))?,
            )),
            BackendKind::Component => {
                let deadline = self.settings.call_deadline.unwrap_or(DEFAULT_CALL_DEADLINE);
                let restored = embedded_component().and_then(|c| {
                    let inner =
                        ComponentBackend::restore_with(c, snapshot, self.memory_limit, deadline)?;
                    with_recovery(c, inner, self.memory_limit, &self.settings)
                });
                restored.map_err(|e| match e.downcast_ref::<SnapshotRefused>() {
                    Some(_) => Error::Refused(Refusal::BadSnapshot),
                    None => Error::Fault(fault_of(&e)),
                })?
            }
        };
        Ok(self.tracker(backend))
    }

    fn tracker(&self, backend: Box<dyn Backend>) -> Tracker {
        Tracker {
            backend,
            builder: self.clone(),
            dead: false,
            verdicts: Vec::new(),
            verdict_out: Vec::new(),
            events: Vec::new(),
            reports: Vec::new(),
        }
    }

    /// Checks every setting, the same way for both backends, and names the one refused.
    fn engine_config(&self) -> Result<ctwasm_core::Config, Error> {
        if self.settings.fault.is_some() && self.kind == BackendKind::Native {
            return Err(Error::Config(ConfigError::FaultNeedsComponent));
        }
        self.settings.engine_config_typed().map_err(|e| {
            Error::Config(match e {
                ctwasm_core::config::ConfigError::UnknownSysctl(name) => {
                    ConfigError::UnknownSysctl { name }
                }
                ctwasm_core::config::ConfigError::BadValue {
                    name,
                    value,
                    expected,
                } => ConfigError::BadValue {
                    name,
                    value,
                    expected,
                },
            })
        })
    }
}

// ----- handles -----------------------------------------------------------------------------

/// A connection the tracker follows: the entry's id and the instant it started.
///
/// Entry ids are unique among the entries that exist, but an id is drawn again once its entry
/// is gone. The start time tells the two apart, so a handle kept after its connection ended
/// gets [`Refusal::UnknownConnection`] rather than acting on whichever connection drew the
/// id next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Connection {
    id: u32,
    start_ns: u64,
}

impl Connection {
    /// The handle of the connection a [`Tracker::dump`] row shows.
    pub fn of_entry(entry: &EntryView) -> Connection {
        Connection {
            id: entry.id,
            start_ns: entry.start_ns,
        }
    }

    /// The entry's id, as ctnetlink's `CTA_ID` and `conntrack -L -o id` show it.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// When the entry was created, on the embedder's clock.
    pub fn start_ns(&self) -> u64 {
        self.start_ns
    }
}

/// One call of [`Tracker::calls`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// [`Tracker::open`], and the bytes the client sent first: for TCP a transfer in the
    /// original direction after the handshake, for other protocols the payload of the first
    /// datagram (what a UDP proxy sees from a new client). `Tracker::open` opens with none.
    Open {
        zone: u16,
        tuple: Tuple,
        first_bytes: u64,
    },
    /// [`Tracker::transfer`].
    Transfer {
        conn: ConnectionRef,
        dir: Direction,
        bytes: u64,
    },
    /// [`Tracker::close`].
    Close { conn: ConnectionRef, ending: Ending },
}

/// A connection named by a [`Call`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionRef {
    /// One the tracker follows.
    Live(Connection),
    /// The one opened by the [`Call::Open`] at this index of the same [`Tracker::calls`].
    Opened(usize),
}

/// How many calls of [`Tracker::calls`] cross into the component at once: enough that the
/// crossing is paid for, few enough that the lists stay small in the guest's memory.
pub const CALLS_PER_CROSSING: usize = 1024;

/// An expectation announced with [`Tracker::expect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Expectation(u32);

impl Expectation {
    /// The expectation's id, as ctnetlink's `CTA_EXPECT_ID` shows it.
    pub fn id(&self) -> u32 {
        self.0
    }
}

/// Who listens for the tracker's events, as the kernel sees its netlink listeners.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Listeners {
    /// Nobody: `nf_conntrack_events=2` gives new entries no events.
    #[default]
    None,
    /// At least one listener; a missed event is simply lost.
    Present,
    /// A listener that asked for reliable delivery: a DESTROY it misses is retried, and its
    /// entry stays on the dying list (counting against `nf_conntrack_max`) until delivered.
    Reliable,
}

/// A tuple for a port-based protocol (TCP 6, UDP 17, SCTP 132, ...) from `src` to `dst`.
///
/// ```
/// let t = ctwasm_host::port_tuple(6, "10.0.0.1:40000".parse()?, "10.0.0.2:443".parse()?)?;
/// assert_eq!(t.proto, 6);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Addresses of two families are [`Refusal::BadTuple`].
pub fn port_tuple(proto: u8, src: SocketAddr, dst: SocketAddr) -> Result<Tuple, Error> {
    let (family, s, d) = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => (
            Family::Ipv4,
            Addr::v4(s.ip().octets()),
            Addr::v4(d.ip().octets()),
        ),
        (SocketAddr::V6(s), SocketAddr::V6(d)) => (
            Family::Ipv6,
            Addr::v6(s.ip().octets()),
            Addr::v6(d.ip().octets()),
        ),
        _ => return Err(Refusal::BadTuple.into()),
    };
    Ok(Tuple {
        family,
        src: s,
        dst: d,
        proto,
        l4: L4Tuple::Ports {
            src: src.port(),
            dst: dst.port(),
        },
    })
}

// ----- packets and events ------------------------------------------------------------------

/// Packets to ingest in one call, each with its own time and zone.
///
/// The bytes are the batch format of [`ctwasm_core::batch`]; a batch built elsewhere can be
/// handed to [`Tracker::ingest`] as bytes directly, which checks its framing first.
///
/// ```
/// let mut batch = ctwasm_host::Batch::new();
/// batch.push(1_000, 0, &[0x45, 0, 0, 20]);
/// assert_eq!(batch.len(), 1);
/// assert_eq!(batch.as_ref().len(), 16 + 4);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    bytes: Vec<u8>,
    count: usize,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an L3 packet (IPv4 or IPv6, from the IP header on) seen at `ts_ns` in `zone`;
    /// a `ts_ns` of 0 means the `now` of the ingest call. An empty packet is refused by
    /// [`Tracker::ingest`].
    pub fn push(&mut self, ts_ns: u64, zone: u16, packet: &[u8]) {
        batch::push_packet(&mut self.bytes, ts_ns, zone, packet);
        self.count += 1;
    }

    /// How many packets the batch holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the batch holds no packet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Empties the batch, keeping its allocation.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.count = 0;
    }
}

impl AsRef<[u8]> for Batch {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Checks a batch's framing: every frame whole and carrying a packet.
fn check_frames(bytes: &[u8]) -> Result<usize, Error> {
    let mut count = 0;
    let mut offset = 0;
    for frame in batch::packets(bytes) {
        let frame = frame.map_err(|e| Refusal::BadFrame { offset: e.offset })?;
        if frame.bytes.is_empty() {
            return Err(Refusal::BadFrame { offset }.into());
        }
        offset += PACKET_HEADER_LEN + frame.bytes.len();
        count += 1;
    }
    Ok(count)
}

/// One event message: a ctnetlink message (`NEW`, `UPDATE` or `DESTROY` of an entry, or of an
/// expectation) and what the tracker says about it.
///
/// `Display` prints it as `conntrack -E` does.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    frame: batch::EventFrame<'a>,
}

impl<'a> Event<'a> {
    /// The ctnetlink message, `nlmsghdr` first: the bytes a netlink listener would read.
    pub fn netlink(&self) -> &'a [u8] {
        self.frame.netlink
    }

    /// The `IPCT_*` event bits the message carries.
    pub fn events(&self) -> EventBits {
        self.frame.events
    }

    /// The netlink multicast group (`NFNLGRP_CONNTRACK_*`) it is sent to.
    pub fn group(&self) -> u8 {
        self.frame.group
    }

    /// When the tracker emitted it, on the embedder's clock.
    pub fn ts_ns(&self) -> u64 {
        self.frame.ts_ns
    }

    /// Whether this is a DESTROY sent again after a reliable listener missed it.
    pub fn is_redelivery(&self) -> bool {
        self.frame.is_redelivery()
    }

    /// The frame itself, as the output formatters take it (`output::Format::line`).
    pub fn frame(&self) -> batch::EventFrame<'a> {
        self.frame
    }
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match crate::output::decode_frame(&self.frame) {
            Ok(msg) => f.write_str(&crate::output::format_conntrack(&self.frame, &msg)),
            Err(e) => write!(f, "[undecodable event: {e}]"),
        }
    }
}

// ----- the tracker -------------------------------------------------------------------------

/// Connection tracking as Linux does it, in a sandbox the embedder owns.
///
/// The crate documentation opens with a complete program; each method has its own example.
///
/// **The embedder's duties when listeners exist.** Events queue inside the tracker until
/// [`Tracker::poll_events`] takes them, and each message taken must be reported delivered or
/// failed, in order; `poll_events` does the reporting with the sink's answers. An entry whose
/// DESTROY a reliable listener has not had stays on the dying list and counts against
/// `nf_conntrack_max`, so a tracker with [`Listeners::Reliable`] must be polled regularly, and
/// [`Tracker::advance`] called by [`Tracker::next_deadline`] for the retries. With
/// [`Listeners::None`] no events are made.
///
/// A `Tracker` is `Send`: it can be moved to another thread or held across `.await` in a task
/// that moves between threads. It is not `Sync`; every call takes `&mut self`.
#[derive(Debug)]
pub struct Tracker {
    backend: Box<dyn Backend>,
    /// The settings it was built with, for [`Tracker::restore`].
    builder: TrackerBuilder,
    /// An earlier call failed: the instance is gone.
    dead: bool,
    verdicts: Vec<u8>,
    verdict_out: Vec<Verdict>,
    events: Vec<u8>,
    reports: Vec<Delivery>,
}

impl fmt::Debug for dyn Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Tracker {
    /// A builder with the kernel's defaults and the component backend.
    pub fn builder() -> TrackerBuilder {
        TrackerBuilder::new()
    }

    /// Which engine runs the tracker.
    pub fn backend(&self) -> BackendKind {
        self.builder.kind
    }

    /// Runs one backend call; a failure marks the instance gone.
    fn call<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Backend) -> anyhow::Result<T>,
    ) -> Result<T, Error> {
        if self.dead {
            return Err(Error::Fault(Fault::Dead));
        }
        f(self.backend.as_mut()).map_err(|e| {
            if e.downcast_ref::<CallDropped>().is_some() {
                return Error::Fault(Fault::Dropped(format!("{e:#}")));
            }
            self.dead = true;
            Error::Fault(fault_of(&e))
        })
    }

    /// Tells the tracker who listens. Entries created while nobody listens make no events.
    pub fn set_listeners(&mut self, listeners: Listeners) -> Result<(), Error> {
        let (present, reliable) = match listeners {
            Listeners::None => (false, false),
            Listeners::Present => (true, false),
            Listeners::Reliable => (true, true),
        };
        self.call(|b| b.set_listeners(present, reliable))
    }

    /// Tracks a batch of packets, in order, after firing the timers due by `now`; returns one
    /// verdict per packet. `packets` is a [`Batch`] or bytes in its format.
    ///
    /// A batch whose framing is broken is refused whole ([`Refusal::BadFrame`]).
    pub fn ingest(&mut self, now: u64, packets: impl AsRef<[u8]>) -> Result<&[Verdict], Error> {
        let packets = packets.as_ref();
        let count = check_frames(packets)?;
        let mut verdicts = std::mem::take(&mut self.verdicts);
        verdicts.clear();
        let r = self.call(|b| b.ingest(now, packets, &mut verdicts));
        self.verdicts = verdicts;
        r?;
        if self.verdicts.len() != count {
            self.dead = true;
            return Err(Error::Fault(Fault::OffContract(format!(
                "{} verdicts for {count} packets",
                self.verdicts.len()
            ))));
        }
        // Each byte is a verdict's discriminant: the engine's, or the component's checked here.
        self.verdict_out.clear();
        for &byte in &self.verdicts {
            let Some(v) = Verdict::from_u8(byte) else {
                self.dead = true;
                return Err(Error::Fault(Fault::OffContract(format!(
                    "verdict byte {byte} is no verdict"
                ))));
            };
            self.verdict_out.push(v);
        }
        Ok(&self.verdict_out)
    }

    /// Tracks one packet (an L3 packet, from the IP header on) seen at `now` in `zone`.
    pub fn ingest_packet(&mut self, now: u64, zone: u16, packet: &[u8]) -> Result<Verdict, Error> {
        let mut batch = Batch::new();
        batch.push(now, zone, packet);
        Ok(self.ingest(now, &batch)?[0])
    }

    /// Fires the timers due by `now`: timeouts, DESTROY retries.
    pub fn advance(&mut self, now: u64) -> Result<(), Error> {
        self.call(|b| b.advance(now))
    }

    /// The earliest instant at which [`Tracker::advance`] may have work; `None` if no timer
    /// runs. Never later than the next real deadline.
    pub fn next_deadline(&mut self) -> Result<Option<u64>, Error> {
        self.call(|b| b.next_deadline())
    }

    /// Hands every pending event message to `sink`, oldest first, and reports its answer back
    /// to the tracker; returns how many messages there were.
    ///
    /// The queue is taken [`EVENT_CHUNK`] messages at a time, so a queue of any length is
    /// drained without one call copying more than about a megabyte. `sink` answering
    /// [`Delivery::Failed`] for a DESTROY means a reliable listener missed it: the tracker
    /// keeps the entry dying and retries by its policy (at a later [`Tracker::advance`]).
    ///
    /// If `sink` panics, the messages taken in that chunk are never reported; drop the tracker.
    pub fn poll_events(
        &mut self,
        mut sink: impl FnMut(Event<'_>) -> Delivery,
    ) -> Result<usize, Error> {
        let mut total = 0;
        let mut events = std::mem::take(&mut self.events);
        let mut reports = std::mem::take(&mut self.reports);
        let r = loop {
            events.clear();
            reports.clear();
            let taken = match self.call(|b| b.take_events(EVENT_CHUNK, &mut events)) {
                Ok(0) => break Ok(total),
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            // The engine framed these itself: a broken frame is the guest's fault, caught by
            // the count below.
            for frame in batch::events(&events).map_while(Result::ok) {
                reports.push(sink(Event { frame }));
            }
            if reports.len() != taken {
                self.dead = true;
                break Err(Error::Fault(Fault::OffContract(format!(
                    "{taken} event messages taken, {} readable",
                    reports.len()
                ))));
            }
            if let Err(e) = self.call(|b| b.report_delivery(&reports)) {
                break Err(e);
            }
            total += taken;
        };
        self.events = events;
        self.reports = reports;
        r
    }

    /// The listeners have room again: under [`RetryPolicy::OnDrain`] the failed DESTROYs are
    /// sent again now.
    pub fn listeners_drained(&mut self, now: u64) -> Result<(), Error> {
        self.call(|b| b.listeners_drained(now))
    }

    /// Opens a connection `tuple` in `zone` as a proxy sees it: the tracker sees the packets
    /// the kernel would (a TCP handshake, or the first datagram).
    ///
    /// ```
    /// use ctwasm_host::{Direction, Ending, Refusal, Error, Tracker, port_tuple};
    ///
    /// let mut tracker = Tracker::builder().build()?;
    /// let tuple = port_tuple(6, "10.0.0.1:40000".parse()?, "10.0.0.2:443".parse()?)?;
    /// let conn = tracker.open(1_000, 0, &tuple)?;
    /// tracker.transfer(2_000, conn, Direction::Original, 1_500)?;
    /// tracker.transfer(3_000, conn, Direction::Reply, 64_000)?;
    /// tracker.close(4_000, conn, Ending::CLIENT_FIN)?;
    /// tracker.delete(5_000, 0, &tuple)?;
    /// // The handle outlived its connection.
    /// assert_eq!(
    ///     tracker.transfer(6_000, conn, Direction::Original, 1),
    ///     Err(Error::Refused(Refusal::UnknownConnection))
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(&mut self, now: u64, zone: u16, tuple: &Tuple) -> Result<Connection, Error> {
        let id = self
            .call(|b| b.open(now, zone, tuple))?
            .map_err(conn_refusal)?;
        match self.call(|b| b.connection_start(id))? {
            Some(start_ns) => Ok(Connection { id, start_ns }),
            None => Err(Refusal::UnknownConnection.into()),
        }
    }

    /// Refused unless `conn` is still the live connection it was.
    fn check(&mut self, conn: Connection, refusal: Refusal) -> Result<(), Error> {
        match self.call(|b| b.connection_start(conn.id))? {
            Some(start) if start == conn.start_ns => Ok(()),
            _ => Err(refusal.into()),
        }
    }

    /// `bytes` of data carried by `conn` in direction `dir`.
    pub fn transfer(
        &mut self,
        now: u64,
        conn: Connection,
        dir: Direction,
        bytes: u64,
    ) -> Result<(), Error> {
        self.check(conn, Refusal::UnknownConnection)?;
        self.call(|b| b.transfer(now, conn.id, dir, bytes))?
            .map_err(conn_refusal)
    }

    /// `conn` closed as `ending` says: the FIN exchange of an orderly close that one side
    /// started, or one side's reset. A connection of a
    /// protocol without a close on the wire is ended as [`Tracker::delete`] would.
    pub fn close(&mut self, now: u64, conn: Connection, ending: Ending) -> Result<(), Error> {
        self.check(conn, Refusal::UnknownConnection)?;
        self.call(|b| b.close(now, conn.id, ending))?
            .map_err(conn_refusal)
    }

    /// Runs several connection calls at `now`, in order, crossing into the component once per
    /// [`CALLS_PER_CROSSING`] calls: what a proxy that gathers its connections' calls pays.
    /// Each call does what [`Tracker::open`], [`Tracker::transfer`] or [`Tracker::close`]
    /// does; its outcome is the connection it opened or acted on, or why it was refused (a
    /// [`ConnectionRef::Opened`] that names no open before it that succeeded is
    /// [`Refusal::UnknownConnection`]).
    ///
    /// ```
    /// use ctwasm_host::{Call, ConnectionRef, Direction, Ending, Error, Tracker, port_tuple};
    ///
    /// let mut tracker = Tracker::builder().build()?;
    /// let tuple = port_tuple(6, "10.0.0.1:40000".parse()?, "10.0.0.2:443".parse()?)?;
    /// let opened = ConnectionRef::Opened(0);
    /// let outcomes = tracker.calls(1_000, &[
    ///     Call::Open { zone: 0, tuple, first_bytes: 0 },
    ///     Call::Transfer { conn: opened, dir: Direction::Original, bytes: 1_500 },
    ///     Call::Transfer { conn: opened, dir: Direction::Reply, bytes: 64_000 },
    /// ])?;
    /// let conn = outcomes[0].map_err(Error::Refused)?;
    /// assert!(outcomes.iter().all(|o| *o == Ok(conn)));
    /// // Later, by its handle.
    /// let close = Call::Close { conn: ConnectionRef::Live(conn), ending: Ending::CLIENT_FIN };
    /// tracker.calls(2_000, &[close])?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn calls(
        &mut self,
        now: u64,
        calls: &[Call],
    ) -> Result<Vec<Result<Connection, Refusal>>, Error> {
        use ctwasm_core::{ConnCall, ConnError, ConnHandle, ConnRef};
        let mut outcomes: Vec<Result<ConnHandle, ConnError>> = Vec::with_capacity(calls.len());
        let mut chunk = Vec::with_capacity(calls.len().min(CALLS_PER_CROSSING));
        for (start, part) in (0..)
            .step_by(CALLS_PER_CROSSING)
            .zip(calls.chunks(CALLS_PER_CROSSING))
        {
            chunk.clear();
            for call in part {
                // An open in an earlier crossing is named by what it returned.
                let conn = |r: ConnectionRef| match r {
                    ConnectionRef::Live(c) => Ok(ConnRef::Live(ConnHandle {
                        id: c.id,
                        start_ns: c.start_ns,
                    })),
                    ConnectionRef::Opened(i) if i >= start => u32::try_from(i - start)
                        .map(ConnRef::Opened)
                        .map_err(|_| ConnError::UnknownId),
                    ConnectionRef::Opened(i) => match (calls[i], outcomes[i]) {
                        (Call::Open { .. }, Ok(h)) => Ok(ConnRef::Live(h)),
                        _ => Err(ConnError::UnknownId),
                    },
                };
                chunk.push(match *call {
                    Call::Open {
                        zone,
                        tuple,
                        first_bytes,
                    } => ConnCall::Open {
                        zone,
                        tuple,
                        first_bytes,
                    },
                    Call::Transfer {
                        conn: c,
                        dir,
                        bytes,
                    } => match conn(c) {
                        Ok(conn) => ConnCall::Transfer { conn, dir, bytes },
                        Err(e) => ConnCall::Unreadable(e),
                    },
                    Call::Close { conn: c, ending } => match conn(c) {
                        Ok(conn) => ConnCall::Close { conn, ending },
                        Err(e) => ConnCall::Unreadable(e),
                    },
                });
            }
            self.call(|b| b.connection_calls(now, &chunk, &mut outcomes))?;
        }
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.map(|h| Connection {
                    id: h.id,
                    start_ns: h.start_ns,
                })
                .map_err(refusal_of)
            })
            .collect())
    }

    /// Announces a connection `tuple` RELATED to `master`, for `timeout_s` seconds, as a
    /// helper (FTP, SIP) would; `permanent` keeps the expectation after a connection matched
    /// it.
    ///
    /// ```
    /// use ctwasm_host::{ExpectMask, Tracker, port_tuple};
    ///
    /// let mut tracker = Tracker::builder().build()?;
    /// let control = port_tuple(6, "10.0.0.1:40000".parse()?, "10.0.0.2:21".parse()?)?;
    /// let data = port_tuple(6, "10.0.0.2:20".parse()?, "10.0.0.1:50000".parse()?)?;
    /// let master = tracker.open(1_000, 0, &control)?;
    /// let mask = ExpectMask { src_addr: true, src_port: false };
    /// let expectation = tracker.expect(2_000, master, &data, mask, 60, false)?;
    /// assert_eq!(tracker.expect_stats()?.expectations, 1);
    /// tracker.unexpect(3_000, expectation)?;
    /// assert_eq!(tracker.expect_stats()?.expect_delete, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn expect(
        &mut self,
        now: u64,
        master: Connection,
        tuple: &Tuple,
        mask: ExpectMask,
        timeout_s: u32,
        permanent: bool,
    ) -> Result<Expectation, Error> {
        if tuple.invert().is_none() {
            return Err(Refusal::BadTuple.into());
        }
        self.check(master, Refusal::UnknownMaster)?;
        let r = self.call(|b| b.expect(now, master.id, tuple, mask, timeout_s, permanent))?;
        r.map(Expectation).map_err(|e| {
            Error::Refused(match e {
                ctwasm_core::ExpectError::UnknownMaster => Refusal::UnknownMaster,
                ctwasm_core::ExpectError::TableFull => Refusal::TableFull,
                ctwasm_core::ExpectError::Exists => Refusal::Exists,
            })
        })
    }

    /// Removes an expectation, as `conntrack -D expect`.
    pub fn unexpect(&mut self, now: u64, expectation: Expectation) -> Result<(), Error> {
        match self.call(|b| b.unexpect(now, expectation.0))? {
            true => Ok(()),
            false => Err(Refusal::UnknownId.into()),
        }
    }

    /// The expectation counters and how many expectations exist.
    pub fn expect_stats(&mut self) -> Result<ExpectStats, Error> {
        self.call(|b| b.expect_stats())
    }

    /// Ends every entry, as `conntrack -F`.
    pub fn flush(&mut self, now: u64) -> Result<(), Error> {
        self.call(|b| b.flush(now))
    }

    /// Ends the entry `tuple` finds in `zone` (either direction), as `conntrack -D`.
    pub fn delete(&mut self, now: u64, zone: u16, tuple: &Tuple) -> Result<(), Error> {
        if tuple.invert().is_none() {
            return Err(Refusal::BadTuple.into());
        }
        match self.call(|b| b.delete(now, zone, tuple))? {
            true => Ok(()),
            false => Err(Refusal::NotFound.into()),
        }
    }

    /// What recovery from guest faults has done so far: `None` without checkpoints
    /// ([`TrackerBuilder::checkpoint_every`]) or natively.
    pub fn recovery(&self) -> Option<crate::resilient::Recovery> {
        self.backend.recovery()
    }

    /// Every entry, live and dying, as `conntrack -L` lists them.
    pub fn dump(&mut self) -> Result<Vec<EntryView>, Error> {
        self.call(|b| b.dump())
    }

    /// The kernel's counters (`conntrack -S`) and the event-delivery figures.
    pub fn stats(&mut self) -> Result<Stats, Error> {
        self.call(|b| b.stats())
    }

    /// The tracker's whole state as bytes, for [`Tracker::restore`] or
    /// [`TrackerBuilder::restore`]: entries, dying list, timers, pending events, the random
    /// generator's position.
    pub fn snapshot(&mut self) -> Result<Vec<u8>, Error> {
        self.call(|b| b.snapshot())
    }

    /// Replaces the tracker's state with `snapshot`'s, in a fresh instance with this
    /// tracker's backend and limits; also how a tracker comes back after a [`Fault`].
    /// Refused bytes ([`Refusal::BadSnapshot`]) leave the tracker as it was.
    ///
    /// ```
    /// use ctwasm_host::{Error, Refusal, Tracker, port_tuple};
    ///
    /// let mut tracker = Tracker::builder().build()?;
    /// tracker.open(1_000, 0, &port_tuple(17, "10.0.0.1:5000".parse()?, "10.0.0.2:53".parse()?)?)?;
    /// let saved = tracker.snapshot()?;
    /// tracker.flush(2_000)?;
    /// assert_eq!(tracker.restore(b"junk"), Err(Error::Refused(Refusal::BadSnapshot)));
    /// tracker.restore(&saved)?;
    /// assert_eq!(tracker.dump()?.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn restore(&mut self, snapshot: &[u8]) -> Result<(), Error> {
        let fresh = self.builder.restore(snapshot)?;
        self.backend = fresh.backend;
        self.dead = false;
        Ok(())
    }
}
