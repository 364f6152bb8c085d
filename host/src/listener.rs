//! Simulated netlink listeners: conntrack event subscribers as Linux treats them.
//!
//! Whether an event is lost, and whether its loss makes the delivery *fail* (so the engine keeps
//! the bits as missed events, or keeps a dead entry on the dying list), is decided entirely by the
//! kernel's netlink broadcast rules. To replay a capture deterministically and compare with a
//! live kernel, the host reproduces those rules exactly, on simulated time:
//!
//! - A listener has a receive buffer (`sk_rcvbuf`, bytes). A message is queued only if the bytes
//!   already queued are **at most** `rcvbuf` — checked *before* adding, so the last message
//!   accepted may overshoot the buffer, as in `netlink_broadcast_deliver`.
//! - A refused message is dropped (`sk_drops`). Unless the listener set `NETLINK_NO_ENOBUFS`, the
//!   first refusal also marks the socket **congested** and leaves ENOBUFS pending for the reader
//!   (`netlink_overrun`). A congested socket refuses every broadcast until the reader has emptied
//!   its queue completely (`netlink_rcv_wake`), however much room the buffer has meanwhile.
//! - `netlink_broadcast` fails (`-ENOBUFS`) iff some listener that set
//!   `NETLINK_BROADCAST_ERROR` missed the message; the other listeners still get it. Listeners
//!   without that flag never make a delivery fail, and with no listener at all nothing fails.
//! - The reader drains its queue in FIFO order at a configured pace: all at once, a fixed rate, or
//!   a script of rates and pauses over time.
//! - Fault injection (a test device, not a kernel rule): a seeded share of the offers to a
//!   listener fails to queue as if the buffer were full — counted as a drop, and failing the
//!   delivery when the listener is reliable. It models a transient failure (an skb that could not
//!   be cloned under memory pressure), so it neither congests the socket nor leaves ENOBUFS: a
//!   congested socket with nothing queued would wait for a read that never comes.
//!
//! Every listener is plain state driven by `now` in nanoseconds (the capture's clock): no threads,
//! no sleeps, no wall clock, so the same inputs always give the same losses.
//!
//! Beside them, [`Listeners`] can hold [`ExternalListener`]s: listeners outside the model whose
//! deliveries a real kernel decides (`socket_listener` sends each message to a real local socket
//! and reports whether the kernel took it). They join the same broadcast with the same rule — a
//! miss by a broadcast-error listener fails the delivery — but they live in real time, so a run
//! that uses them is only as repeatable as its reader.
//!
//! # Listener spec (`--listener`)
//!
//! A comma-separated list; every part but `rcvbuf` is optional, in any order:
//!
//! ```text
//! rcvbuf=BYTES          effective sk_rcvbuf (what SO_RCVBUFFORCE leaves; SO_RCVBUF doubles its
//!                       argument). Suffixes K, M, G (x1024); `unlimited` for no limit.
//!                       Default 212992 (net.core.rmem_default).
//! reliable              NETLINK_BROADCAST_ERROR: a message this listener misses fails the delivery
//!                       (alias: broadcast-error)
//! no-enobufs            NETLINK_NO_ENOBUFS: drop silently, never congest
//! groups=G[+G...]       conntrack groups: new, update, destroy, or all (default: all)
//! drain=D               the reader's pace (default: unlimited):
//!                         unlimited          reads every message as soon as it arrives
//!                         N/s                reads one message every 1/N s (N may be fractional;
//!                                            0/s never reads)
//!                         D+pause@A..B       no reads from A s to B s (B may be left out: for ever)
//!                         D+N/s@T            switches to N/s (or `unlimited@T`) from T s on
//!                       Times are seconds after the listeners' origin (the first instant they are
//!                       told about, normally the first packet).
//! name=NAME             a label for reports (default: listener)
//! record                keep every message read, for tests and mirrors
//! faults=P              fail a share P (0 to 1) of the offers, drawn from a seeded generator
//! seed=N                seed of the fault generator (default 0): same seed, same faults
//! ```
//!
//! Examples: `rcvbuf=2048,reliable,drain=100/s` (the seed's stress test),
//! `rcvbuf=4M,groups=destroy,drain=unlimited+pause@2..5`, `rcvbuf=64K,reliable,faults=0.1,seed=7`.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use anyhow::{Context, bail};
use ctwasm_core::batch::{self, EventFrame};
use ctwasm_core::{Delivery, MessageKind};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The subscription bit of a group, as `ListenerConfig::groups` holds it.
pub const fn group_bit(group: u8) -> u8 {
    if group >= 1 && group <= 8 {
        1 << (group - 1)
    } else {
        0
    }
}

/// All three conntrack event groups.
pub const ALL_GROUPS: u8 = group_bit(MessageKind::New.group())
    | group_bit(MessageKind::Update.group())
    | group_bit(MessageKind::Destroy.group());

/// The kernel's default receive buffer, `net.core.rmem_default`.
pub const DEFAULT_RCVBUF: usize = 212_992;

/// What one message costs in a receive buffer.
///
/// Linux charges an skb's `truesize` (the allocation, about the ctnetlink worst-case message size
/// rounded up to a slab size, plus the `sk_buff` overhead), which is why only three small UDP NEW
/// events fit in 4096 bytes on Linux 6.18. Here a message costs its encoded length, which keeps
/// the model independent of kernel build details; switching to a truesize model means changing
/// only this function.
pub fn message_cost(netlink: &[u8]) -> usize {
    netlink.len()
}

/// How fast the reader of a listener drains its queue, on simulated time.
#[derive(Clone, Debug, PartialEq)]
pub enum DrainPolicy {
    /// Reads everything as soon as it arrives: the queue never holds anything.
    Unlimited,
    /// Reads one message every `1 / msgs_per_sec` seconds (0: never reads).
    Rate { msgs_per_sec: f64 },
    /// A script: from each offset (ns after the origin) on, the given rate (`0.0` = paused,
    /// `f64::INFINITY` = unlimited). Before the first entry the reader is paused.
    Schedule(Vec<(u64, f64)>),
}

impl DrainPolicy {
    /// The rate in effect at `offset` ns after the origin.
    fn rate_at(&self, offset: u64) -> f64 {
        match self {
            DrainPolicy::Unlimited => f64::INFINITY,
            DrainPolicy::Rate { msgs_per_sec } => *msgs_per_sec,
            DrainPolicy::Schedule(steps) => steps
                .iter()
                .rev()
                .find(|(from, _)| *from <= offset)
                .map_or(0.0, |(_, r)| *r),
        }
    }

    /// The first offset at or after `offset` where the reader is not paused.
    fn resume_at(&self, offset: u64) -> Option<u64> {
        if self.rate_at(offset) > 0.0 {
            return Some(offset);
        }
        match self {
            DrainPolicy::Schedule(steps) => steps
                .iter()
                .find(|(from, rate)| *from > offset && *rate > 0.0)
                .map(|(from, _)| *from),
            _ => None,
        }
    }
}

/// Nanoseconds between two reads at `rate` messages per second.
fn read_interval_ns(rate: f64) -> u64 {
    if rate.is_infinite() || rate <= 0.0 {
        0
    } else {
        // Saturating float-to-int conversion; at least 1 ns so time always moves.
        ((1e9 / rate).round() as u64).max(1)
    }
}

/// One listener's socket setup and reader.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    /// The effective `sk_rcvbuf`, in bytes.
    pub rcvbuf: usize,
    /// Subscribed groups, as [`group_bit`]s.
    pub groups: u8,
    /// `NETLINK_BROADCAST_ERROR`: missing a message fails the delivery (reliable events).
    pub broadcast_error: bool,
    /// `NETLINK_NO_ENOBUFS`: overruns drop silently and never congest the socket.
    pub no_enobufs: bool,
    pub drain: DrainPolicy,
    /// Keep every message read (see [`Listener::received`]).
    pub record: bool,
    /// Share of offers (0 to 1) that fail as if the buffer were full (fault injection).
    pub faults: f64,
    /// Seed of the fault generator.
    pub fault_seed: u64,
    /// An observer, not a socket: offered a message only after the other listeners, and only
    /// when one of them took it and none failed it, so it sees each message once, as
    /// delivered (a second netlink socket would see every retry of a message the first one
    /// refused, and messages nobody read). It never fails a delivery itself.
    pub delivered_only: bool,
}

impl Default for ListenerConfig {
    fn default() -> ListenerConfig {
        ListenerConfig {
            name: "listener".to_string(),
            rcvbuf: DEFAULT_RCVBUF,
            groups: ALL_GROUPS,
            broadcast_error: false,
            no_enobufs: false,
            drain: DrainPolicy::Unlimited,
            record: false,
            faults: 0.0,
            fault_seed: 0,
            delivered_only: false,
        }
    }
}

impl ListenerConfig {
    /// An observer of what the other listeners took (see [`ListenerConfig::delivered_only`]):
    /// unbounded, read at once, recording.
    pub fn observer(name: &str) -> ListenerConfig {
        ListenerConfig {
            name: name.to_string(),
            rcvbuf: usize::MAX,
            drain: DrainPolicy::Unlimited,
            record: true,
            delivered_only: true,
            ..ListenerConfig::default()
        }
    }
}

impl ListenerConfig {
    /// Parses a `--listener` spec (syntax in the module documentation).
    pub fn parse(spec: &str) -> anyhow::Result<ListenerConfig> {
        parse_spec(spec).with_context(|| format!("listener spec `{spec}`"))
    }
}

impl FromStr for ListenerConfig {
    type Err = anyhow::Error;
    fn from_str(spec: &str) -> anyhow::Result<ListenerConfig> {
        ListenerConfig::parse(spec)
    }
}

fn parse_spec(spec: &str) -> anyhow::Result<ListenerConfig> {
    let mut config = ListenerConfig::default();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (part, None),
        };
        match (key, value) {
            ("rcvbuf", Some(v)) => config.rcvbuf = parse_bytes(v)?,
            ("reliable" | "broadcast-error", None) => config.broadcast_error = true,
            ("no-enobufs", None) => config.no_enobufs = true,
            ("groups", Some(v)) => config.groups = parse_groups(v)?,
            ("drain", Some(v)) => config.drain = parse_drain(v)?,
            ("name", Some(v)) if !v.is_empty() => config.name = v.to_string(),
            ("record", None) => config.record = true,
            ("faults", Some(v)) => config.faults = parse_probability(v)?,
            ("seed", Some(v)) => {
                config.fault_seed = v
                    .parse()
                    .map_err(|_| anyhow::anyhow!("seed `{v}` is not a whole number"))?
            }
            ("rcvbuf" | "groups" | "drain" | "name" | "faults" | "seed", _) => {
                bail!("`{key}` needs a value: `{key}=...`")
            }
            ("reliable" | "broadcast-error" | "no-enobufs" | "record", Some(_)) => {
                bail!("`{key}` is a flag and takes no value")
            }
            _ => bail!(
                "unknown option `{part}` (expected rcvbuf=BYTES, reliable, no-enobufs, \
                 groups=new+update+destroy, drain=..., name=NAME, record, faults=P, seed=N)"
            ),
        }
    }
    Ok(config)
}

/// A byte count: `2048`, `64K`, `4M`, `1G` or `unlimited`.
pub fn parse_bytes(v: &str) -> anyhow::Result<usize> {
    if v.eq_ignore_ascii_case("unlimited") {
        return Ok(usize::MAX);
    }
    let (digits, scale) = match v.char_indices().last() {
        Some((i, 'k' | 'K')) => (&v[..i], 1usize << 10),
        Some((i, 'm' | 'M')) => (&v[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&v[..i], 1 << 30),
        _ => (v, 1),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| anyhow::anyhow!("rcvbuf `{v}` is not a byte count (e.g. 2048, 64K, 4M)"))?;
    n.checked_mul(scale)
        .ok_or_else(|| anyhow::anyhow!("rcvbuf `{v}` is too large"))
}

fn parse_probability(v: &str) -> anyhow::Result<f64> {
    match v.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => bail!("faults `{v}` is not a probability between 0 and 1"),
    }
}

/// A `+`-separated list of event groups (`new+destroy`), as subscription bits.
pub fn parse_groups(v: &str) -> anyhow::Result<u8> {
    let mut groups = 0u8;
    for name in v.split('+').map(str::trim) {
        groups |= match name.to_ascii_lowercase().as_str() {
            "new" => group_bit(MessageKind::New.group()),
            "update" | "updates" => group_bit(MessageKind::Update.group()),
            "destroy" => group_bit(MessageKind::Destroy.group()),
            "all" => ALL_GROUPS,
            _ => {
                bail!("unknown group `{name}` (expected new, update, destroy or all, joined by +)")
            }
        };
    }
    Ok(groups)
}

/// A rate: `unlimited` or `N/s`.
/// A message rate: `unlimited` (infinite) or messages per second like `100/s`.
pub fn parse_rate(v: &str) -> anyhow::Result<f64> {
    if v.eq_ignore_ascii_case("unlimited") {
        return Ok(f64::INFINITY);
    }
    let Some(n) = v.strip_suffix("/s") else {
        bail!("drain rate `{v}` must be `unlimited` or messages per second like `100/s`");
    };
    match n.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => bail!("drain rate `{v}` is not a non-negative number of messages per second"),
    }
}

/// Seconds (decimal) to nanoseconds.
fn parse_seconds(v: &str) -> anyhow::Result<u64> {
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 && s * 1e9 < u64::MAX as f64 => {
            Ok((s * 1e9).round() as u64)
        }
        _ => bail!("`{v}` is not a time in seconds"),
    }
}

fn parse_drain(v: &str) -> anyhow::Result<DrainPolicy> {
    let mut parts = v.split('+').map(str::trim);
    let base = parse_rate(parts.next().unwrap_or_default())?;
    let mut changes: Vec<(u64, f64)> = vec![(0, base)];
    let mut pauses: Vec<(u64, u64)> = Vec::new();
    for part in parts {
        if let Some(range) = part.strip_prefix("pause@") {
            let Some((from, to)) = range.split_once("..") else {
                bail!("pause `{part}` must look like pause@A..B (seconds; B may be left out)");
            };
            let from = parse_seconds(from)?;
            let to = if to.trim().is_empty() {
                u64::MAX
            } else {
                parse_seconds(to)?
            };
            if to <= from {
                bail!("pause `{part}` ends before it starts");
            }
            pauses.push((from, to));
        } else if let Some((rate, at)) = part.split_once('@') {
            changes.push((parse_seconds(at)?, parse_rate(rate)?));
        } else {
            bail!("drain step `{part}` must be pause@A..B or RATE@SECS");
        }
    }
    if changes.len() == 1 && pauses.is_empty() {
        return Ok(if base.is_infinite() {
            DrainPolicy::Unlimited
        } else {
            DrainPolicy::Rate { msgs_per_sec: base }
        });
    }
    // Later rate changes at the same instant win; pauses override rates while they last.
    changes.sort_by_key(|(at, _)| *at);
    let mut breakpoints: Vec<u64> = changes.iter().map(|(at, _)| *at).collect();
    breakpoints.extend(
        pauses
            .iter()
            .flat_map(|(a, b)| [*a, *b])
            .filter(|t| *t != u64::MAX),
    );
    breakpoints.sort_unstable();
    breakpoints.dedup();
    let mut steps: Vec<(u64, f64)> = Vec::new();
    for at in breakpoints {
        let paused = pauses.iter().any(|(a, b)| *a <= at && at < *b);
        let rate = if paused {
            0.0
        } else {
            changes
                .iter()
                .rev()
                .find(|(from, _)| *from <= at)
                .map_or(base, |(_, r)| *r)
        };
        if steps.last().is_none_or(|(_, r)| *r != rate) {
            steps.push((at, rate));
        }
    }
    Ok(DrainPolicy::Schedule(steps))
}

/// The result of offering one message to one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// The listener is not subscribed to the message's group.
    NotSubscribed,
    /// Queued on the listener's socket.
    Queued,
    /// Refused: the buffer was over its limit or the socket congested. `first_overrun` is true
    /// when this refusal congested the socket and left ENOBUFS for the reader.
    Dropped { first_overrun: bool },
    /// Refused by fault injection: counted as a drop, the socket left as it was.
    Faulted,
}

impl Offer {
    /// Whether the listener missed the message (what fails a reliable delivery).
    pub fn missed(self) -> bool {
        matches!(self, Offer::Dropped { .. } | Offer::Faulted)
    }
}

/// A message the reader has read (kept when the listener records).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// When the message was queued and when the reader read it, ns.
    pub queued_ns: u64,
    pub read_ns: u64,
    pub group: u8,
    /// The bytes offered: [`Listeners::deliver`] passes the whole event frame (decode it with
    /// [`ReceivedMessage::event_frame`]).
    pub bytes: Vec<u8>,
}

impl ReceivedMessage {
    /// The event frame, when the bytes are one (as [`Listeners::deliver`] records them).
    pub fn event_frame(&self) -> Option<EventFrame<'_>> {
        batch::events(&self.bytes).next()?.ok()
    }
}

/// Counters of one listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Messages queued on the socket.
    pub received: u64,
    /// Messages the reader has read.
    pub read: u64,
    /// Messages refused (`sk_drops`).
    pub dropped: u64,
    /// Overruns reported to the reader as ENOBUFS (one per congestion episode).
    pub enobufs: u64,
    /// Of the drops, those made by fault injection.
    pub faults: u64,
    /// The most bytes ever queued at once.
    pub peak_queued_bytes: usize,
}

#[derive(Clone, Debug)]
struct Queued {
    queued_ns: u64,
    cost: usize,
    group: u8,
    bytes: Option<Vec<u8>>,
}

/// One simulated netlink socket subscribed to conntrack events, with its reader.
#[derive(Clone, Debug)]
pub struct Listener {
    config: ListenerConfig,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    congested: bool,
    /// When the reader last read, ns (pacing counts from there).
    last_read_ns: Option<u64>,
    /// The instant drain schedules count from.
    origin_ns: Option<u64>,
    stats: ListenerStats,
    received: Vec<ReceivedMessage>,
    /// Draws the injected faults (present when `faults > 0`).
    fault_rng: Option<ChaCha8Rng>,
}

impl Listener {
    pub fn new(config: ListenerConfig) -> Listener {
        let fault_rng = (config.faults > 0.0).then(|| ChaCha8Rng::seed_from_u64(config.fault_seed));
        Listener {
            fault_rng,
            config,
            queue: VecDeque::new(),
            queued_bytes: 0,
            congested: false,
            last_read_ns: None,
            origin_ns: None,
            stats: ListenerStats::default(),
            received: Vec::new(),
        }
    }

    pub fn config(&self) -> &ListenerConfig {
        &self.config
    }
    pub fn name(&self) -> &str {
        &self.config.name
    }
    pub fn is_reliable(&self) -> bool {
        self.config.broadcast_error
    }
    pub fn is_subscribed(&self, group: u8) -> bool {
        self.config.groups & group_bit(group) != 0
    }
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }
    pub fn queued_messages(&self) -> usize {
        self.queue.len()
    }
    /// Messages of conntrack group `group` in the socket's queue, not yet read.
    pub fn queued_in_group(&self, group: u8) -> usize {
        self.queue.iter().filter(|q| q.group == group).count()
    }
    /// Whether the socket refuses everything until its reader empties the queue.
    pub fn is_congested(&self) -> bool {
        self.congested
    }
    pub fn stats(&self) -> ListenerStats {
        self.stats
    }
    /// The messages read so far, oldest first (empty unless the listener records).
    pub fn received(&self) -> &[ReceivedMessage] {
        &self.received
    }
    /// Takes the recorded messages out, leaving the record empty.
    pub fn take_received(&mut self) -> Vec<ReceivedMessage> {
        std::mem::take(&mut self.received)
    }
    /// Whether the next message would be queued now (`netlink_broadcast_deliver`'s test).
    pub fn has_room(&self) -> bool {
        !self.congested && self.queued_bytes <= self.config.rcvbuf
    }

    /// Sets the instant drain schedules count from (else the first instant the listener sees).
    pub fn set_origin(&mut self, origin_ns: u64) {
        self.origin_ns = Some(origin_ns);
    }

    fn origin(&mut self, now_ns: u64) -> u64 {
        *self.origin_ns.get_or_insert(now_ns)
    }

    /// Offers one message multicast to `group` at `now_ns`, costing `msg_cost` bytes of buffer
    /// (see [`message_cost`]); `frame` is kept if the listener records. The reader first catches
    /// up to `now_ns`, then the kernel's admission test runs, then the reader may read at once.
    pub fn offer(&mut self, now_ns: u64, group: u8, msg_cost: usize, frame: &[u8]) -> Offer {
        if !self.is_subscribed(group) {
            return Offer::NotSubscribed;
        }
        self.advance(now_ns);
        let faults = self.config.faults;
        if let Some(rng) = self.fault_rng.as_mut()
            && rng.random::<f64>() < faults
        {
            self.stats.dropped += 1;
            self.stats.faults += 1;
            return Offer::Faulted;
        }
        if !self.has_room() {
            self.stats.dropped += 1;
            let first_overrun = !self.config.no_enobufs && !self.congested;
            if first_overrun {
                self.congested = true;
                self.stats.enobufs += 1;
            }
            return Offer::Dropped { first_overrun };
        }
        let bytes = self.config.record.then(|| frame.to_vec());
        self.queue.push_back(Queued {
            queued_ns: now_ns,
            cost: msg_cost,
            group,
            bytes,
        });
        self.queued_bytes = self.queued_bytes.saturating_add(msg_cost);
        self.stats.received += 1;
        self.stats.peak_queued_bytes = self.stats.peak_queued_bytes.max(self.queued_bytes);
        self.advance(now_ns);
        Offer::Queued
    }

    /// When the reader will read the next queued message, if it ever will.
    pub fn next_read_at(&self) -> Option<u64> {
        let head = self.queue.front()?;
        let origin = self.origin_ns.unwrap_or(head.queued_ns);
        let paced = match self.last_read_ns {
            Some(last) => {
                let rate = self.config.drain.rate_at(last.saturating_sub(origin));
                last.saturating_add(read_interval_ns(rate))
            }
            None => head.queued_ns,
        };
        let candidate = paced.max(head.queued_ns).max(origin);
        let resume = self.config.drain.resume_at(candidate - origin)?;
        Some(origin.saturating_add(resume))
    }

    /// Lets the reader read everything its pace allows up to `now_ns`, oldest first.
    pub fn advance(&mut self, now_ns: u64) {
        self.origin(now_ns);
        while let Some(at) = self.next_read_at() {
            if at > now_ns {
                break;
            }
            let Some(message) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes = self.queued_bytes.saturating_sub(message.cost);
            self.last_read_ns = Some(at);
            self.stats.read += 1;
            if let Some(bytes) = message.bytes {
                self.received.push(ReceivedMessage {
                    queued_ns: message.queued_ns,
                    read_ns: at,
                    group: message.group,
                    bytes,
                });
            }
            // netlink_rcv_wake: only a read that leaves the queue empty lifts congestion.
            if self.queue.is_empty() {
                self.congested = false;
            }
        }
    }
}

/// An event frame as `take-events` framed it: its header, then its ctnetlink message.
pub fn encode_frame(frame: &EventFrame<'_>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(batch::EVENT_HEADER_LEN + frame.netlink.len());
    let start = batch::begin_event(
        &mut bytes,
        frame.events,
        frame.group,
        frame.flags,
        frame.ts_ns,
    );
    bytes.extend_from_slice(frame.netlink);
    batch::finish_event(&mut bytes, start);
    bytes
}

/// A listener outside the simulation: a real socket whose kernel decides each delivery.
///
/// [`Listeners::deliver`] offers it the message's ctnetlink bytes after the simulated listeners;
/// a miss ([`Offer::missed`]) by one that [`is_reliable`](ExternalListener::is_reliable) fails the
/// delivery. It has no simulated read times: its reader runs on the wall clock. It is `Send`, so
/// a tracker thread (the proxy's) can own the listeners.
pub trait ExternalListener: fmt::Debug + Send {
    fn name(&self) -> &str;
    /// `NETLINK_BROADCAST_ERROR`: a message it misses fails the delivery.
    fn is_reliable(&self) -> bool;
    fn is_subscribed(&self, group: u8) -> bool;
    /// Offers one event message (its frame: header and ctnetlink bytes), multicast to its
    /// group at simulated `now_ns`.
    fn offer(&mut self, now_ns: u64, frame: &EventFrame<'_>) -> Offer;
    /// Offers several messages at once, in order, pushing one outcome each onto `offers`. A
    /// listener whose outcome comes back over a network (a broker's acknowledgement) sends them
    /// all before it waits, so a batch costs one round trip rather than one per message.
    fn offer_all(&mut self, now_ns: u64, frames: &[EventFrame<'_>], offers: &mut Vec<Offer>) {
        for frame in frames {
            offers.push(self.offer(now_ns, frame));
        }
    }
    /// Whether the next message would probably be taken now (a hint for retry policies).
    fn has_room(&self) -> bool;
    /// The simulated instant the run starts at.
    fn set_origin(&mut self, origin_ns: u64) {
        let _ = origin_ns;
    }
    /// Simulated time has reached `now_ns` (a listener that paces the run may wait here).
    fn advance(&mut self, now_ns: u64) {
        let _ = now_ns;
    }
    fn stats(&self) -> ListenerStats;
}

/// All the listeners of one simulated network namespace.
#[derive(Debug, Default)]
pub struct Listeners {
    listeners: Vec<Listener>,
    external: Vec<Box<dyn ExternalListener>>,
}

impl Listeners {
    pub fn new(configs: impl IntoIterator<Item = ListenerConfig>) -> Listeners {
        Listeners {
            listeners: configs.into_iter().map(Listener::new).collect(),
            external: Vec::new(),
        }
    }

    /// Adds a listener whose deliveries a real kernel decides (offered after the simulated ones).
    pub fn push_external(&mut self, listener: Box<dyn ExternalListener>) {
        self.external.push(listener);
    }
    /// The external listeners, in the order they were added.
    pub fn external(&self) -> impl Iterator<Item = &dyn ExternalListener> {
        self.external.iter().map(|l| l.as_ref())
    }
    /// Every listener's name and counters, simulated ones first.
    pub fn all_stats(&self) -> Vec<(String, ListenerStats)> {
        self.listeners
            .iter()
            .map(|l| (l.name().to_string(), l.stats()))
            .chain(
                self.external
                    .iter()
                    .map(|l| (l.name().to_string(), l.stats())),
            )
            .collect()
    }
    /// The statistics of the first listener that takes part in deliveries (an observer does
    /// not): the simulated ones first, then the external ones.
    pub fn deciding_stats(&self) -> Option<ListenerStats> {
        self.listeners
            .iter()
            .find(|l| !l.config.delivered_only)
            .map(Listener::stats)
            .or_else(|| self.external.first().map(|l| l.stats()))
    }

    /// Whether any listener, simulated or external, set broadcast-error.
    pub fn has_reliable(&self) -> bool {
        self.listeners.iter().any(Listener::is_reliable)
            || self.external.iter().any(|l| l.is_reliable())
    }

    /// One listener on every group that never loses anything: unlimited buffer and reader,
    /// recording what it reads (what `ctwasm replay` prints by default).
    pub fn lossless() -> Listeners {
        Listeners::new([ListenerConfig {
            name: "lossless".to_string(),
            rcvbuf: usize::MAX,
            record: true,
            ..ListenerConfig::default()
        }])
    }

    pub fn push(&mut self, listener: Listener) {
        self.listeners.push(listener);
    }
    pub fn iter(&self) -> impl Iterator<Item = &Listener> {
        self.listeners.iter()
    }
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Listener> {
        self.listeners.iter_mut()
    }
    pub fn get(&self, index: usize) -> Option<&Listener> {
        self.listeners.get(index)
    }
    pub fn get_mut(&mut self, index: usize) -> Option<&mut Listener> {
        self.listeners.get_mut(index)
    }
    pub fn len(&self) -> usize {
        self.listeners.len()
    }
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    /// Whether anyone listens to any conntrack group (`nf_conntrack_events=2` asks this when an
    /// entry is created).
    pub fn has_listeners(&self) -> bool {
        self.listeners
            .iter()
            .any(|l| l.config.groups & ALL_GROUPS != 0)
            || self.external.iter().any(|l| {
                [MessageKind::New, MessageKind::Update, MessageKind::Destroy]
                    .into_iter()
                    .any(|k| l.is_subscribed(k.group()))
            })
    }

    /// Whether anyone listens to `group`.
    pub fn has_listeners_for(&self, group: u8) -> bool {
        self.listeners.iter().any(|l| l.is_subscribed(group))
            || self.external.iter().any(|l| l.is_subscribed(group))
    }

    /// Whether every reliable listener would queue a message now (for retry policies; call
    /// [`Listeners::advance`] first so readers have caught up).
    pub fn reliable_have_room(&self) -> bool {
        self.listeners
            .iter()
            .filter(|l| l.is_reliable())
            .all(Listener::has_room)
            && self
                .external
                .iter()
                .filter(|l| l.is_reliable())
                .all(|l| l.has_room())
    }

    /// Sets the instant every listener's drain schedule counts from.
    pub fn set_origin(&mut self, origin_ns: u64) {
        for l in &mut self.listeners {
            l.set_origin(origin_ns);
        }
        for l in &mut self.external {
            l.set_origin(origin_ns);
        }
    }

    /// Multicasts one event message to its group, as `netlink_broadcast` does: the message is
    /// [`Delivery::Failed`] when a listener with broadcast-error missed it (`-ENOBUFS`), else
    /// delivered.
    pub fn deliver(&mut self, now_ns: u64, frame: &EventFrame<'_>) -> Delivery {
        let mut outcome = Vec::with_capacity(1);
        self.deliver_all(now_ns, std::slice::from_ref(frame), &mut outcome);
        outcome[0]
    }

    /// [`Listeners::deliver`] for several messages at the same instant, in order, pushing one
    /// outcome each onto `outcomes`. Each listener sees the messages in the order given, as it
    /// would one by one; external listeners are offered the batch at once
    /// ([`ExternalListener::offer_all`]).
    pub fn deliver_all(
        &mut self,
        now_ns: u64,
        frames: &[EventFrame<'_>],
        outcomes: &mut Vec<Delivery>,
    ) {
        let recording = self.listeners.iter().any(|l| l.config.record);
        let recorded: Vec<Vec<u8>> = frames
            .iter()
            .map(|frame| {
                if recording {
                    encode_frame(frame)
                } else {
                    Vec::new()
                }
            })
            .collect();
        // Whether another listener exists, and per message whether one of them took it.
        let others =
            !self.external.is_empty() || self.listeners.iter().any(|l| !l.config.delivered_only);
        let mut taken = vec![false; frames.len()];
        let first = outcomes.len();
        outcomes.resize(first + frames.len(), Delivery::Delivered);
        let outcome = &mut outcomes[first..];
        for (i, frame) in frames.iter().enumerate() {
            let cost = message_cost(frame.netlink);
            for l in self
                .listeners
                .iter_mut()
                .filter(|l| !l.config.delivered_only)
            {
                let offer = l.offer(now_ns, frame.group, cost, &recorded[i]);
                taken[i] |= offer == Offer::Queued;
                if offer.missed() && l.config.broadcast_error {
                    outcome[i] = Delivery::Failed;
                }
            }
        }
        let mut offers = Vec::with_capacity(frames.len());
        for l in &mut self.external {
            offers.clear();
            l.offer_all(now_ns, frames, &mut offers);
            debug_assert_eq!(offers.len(), frames.len(), "one outcome per message");
            for (i, offer) in offers.iter().enumerate() {
                taken[i] |= *offer == Offer::Queued;
                if offer.missed() && l.is_reliable() {
                    outcome[i] = Delivery::Failed;
                }
            }
        }
        for (i, frame) in frames.iter().enumerate() {
            if outcome[i] == Delivery::Delivered && (taken[i] || !others) {
                let cost = message_cost(frame.netlink);
                for l in self
                    .listeners
                    .iter_mut()
                    .filter(|l| l.config.delivered_only)
                {
                    l.offer(now_ns, frame.group, cost, &recorded[i]);
                }
            }
        }
    }

    /// Lets every reader catch up to `now_ns`.
    pub fn advance(&mut self, now_ns: u64) {
        for l in &mut self.listeners {
            l.advance(now_ns);
        }
        for l in &mut self.external {
            l.advance(now_ns);
        }
    }

    /// The earliest instant a reader will read, if any will.
    pub fn next_read_at(&self) -> Option<u64> {
        self.listeners
            .iter()
            .filter_map(Listener::next_read_at)
            .min()
    }
}

impl fmt::Display for ListenerStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received {} read {} dropped {} enobufs {} peak {} bytes",
            self.received, self.read, self.dropped, self.enobufs, self.peak_queued_bytes
        )?;
        if self.faults > 0 {
            write!(f, " (faults injected {})", self.faults)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctwasm_core::event::EventBits;

    const GROUP_NEW: u8 = MessageKind::New.group();
    const GROUP_UPDATE: u8 = MessageKind::Update.group();
    const GROUP_DESTROY: u8 = MessageKind::Destroy.group();

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    fn listener(spec: &str) -> Listener {
        Listener::new(ListenerConfig::parse(spec).unwrap())
    }

    fn frame(group: u8, netlink: &[u8]) -> EventFrame<'_> {
        let events = match group {
            GROUP_NEW => EventBits::NEW,
            GROUP_UPDATE => EventBits::REPLY,
            _ => EventBits::DESTROY,
        };
        EventFrame {
            events,
            group,
            flags: 0,
            ts_ns: 0,
            netlink,
        }
    }

    #[test]
    fn accepts_while_queued_bytes_do_not_exceed_rcvbuf_checked_before_adding() {
        let mut l = listener("rcvbuf=250,drain=0/s");
        assert_eq!(l.offer(0, GROUP_NEW, 100, &[]), Offer::Queued); // 0 <= 250
        assert_eq!(l.offer(0, GROUP_NEW, 100, &[]), Offer::Queued); // 100 <= 250
        assert_eq!(l.offer(0, GROUP_NEW, 100, &[]), Offer::Queued); // 200 <= 250, now 300
        assert_eq!(l.queued_bytes(), 300);
        assert_eq!(
            l.offer(0, GROUP_NEW, 1, &[]),
            Offer::Dropped {
                first_overrun: true
            }
        );
        assert_eq!(l.stats().peak_queued_bytes, 300);

        // Exactly at the limit still accepts.
        let mut l = listener("rcvbuf=200,drain=0/s");
        l.offer(0, GROUP_NEW, 100, &[]);
        l.offer(0, GROUP_NEW, 100, &[]);
        assert_eq!(l.offer(0, GROUP_NEW, 100, &[]), Offer::Queued);
    }

    #[test]
    fn a_congested_socket_refuses_until_the_reader_empties_its_queue() {
        // Reads one message per second; the first arrives into an idle reader and is read at once.
        let mut l = listener("rcvbuf=150,drain=1/s");
        assert_eq!(l.offer(0, GROUP_NEW, 100, &[]), Offer::Queued);
        assert_eq!(l.queued_messages(), 0);
        assert_eq!(l.offer(0, GROUP_NEW, 100, &[]), Offer::Queued);
        assert_eq!(l.offer(0, GROUP_NEW, 100, &[]), Offer::Queued);
        assert_eq!(
            l.offer(0, GROUP_NEW, 100, &[]),
            Offer::Dropped {
                first_overrun: true
            }
        );
        assert!(l.is_congested());
        // At 1 s one message was read: 100 bytes queued, room by size, but still congested.
        assert_eq!(
            l.offer(S, GROUP_NEW, 100, &[]),
            Offer::Dropped {
                first_overrun: false
            }
        );
        assert_eq!(l.queued_bytes(), 100);
        assert!(!l.has_room());
        // At 2 s the queue is empty: congestion lifts and the next message is taken.
        assert_eq!(l.next_read_at(), Some(2 * S));
        assert_eq!(l.offer(2 * S, GROUP_NEW, 100, &[]), Offer::Queued);
        assert!(!l.is_congested());
        let s = l.stats();
        assert_eq!((s.received, s.dropped, s.enobufs), (4, 2, 1));
    }

    #[test]
    fn no_enobufs_drops_but_never_congests_nor_reports() {
        for (spec, after_one_read) in [
            ("rcvbuf=100,no-enobufs,drain=1/s", Offer::Queued),
            (
                "rcvbuf=100,drain=1/s",
                Offer::Dropped {
                    first_overrun: false,
                },
            ),
        ] {
            let mut l = listener(spec);
            assert_eq!(l.offer(0, GROUP_NEW, 100, &[]), Offer::Queued); // read at once
            assert_eq!(l.offer(0, GROUP_NEW, 60, &[]), Offer::Queued);
            assert_eq!(l.offer(0, GROUP_NEW, 60, &[]), Offer::Queued);
            let first_overrun = !spec.contains("no-enobufs");
            assert_eq!(
                l.offer(0, GROUP_NEW, 10, &[]),
                Offer::Dropped { first_overrun }
            );
            assert_eq!(l.is_congested(), first_overrun);
            // One read later 60 bytes are queued: room by size. Only the congested socket, whose
            // queue is not yet empty, still refuses.
            assert_eq!(l.offer(S, GROUP_NEW, 10, &[]), after_one_read, "{spec}");
            assert_eq!(l.stats().enobufs, u64::from(first_overrun));
        }
    }

    #[test]
    fn only_reliable_listeners_fail_a_delivery_and_others_still_receive() {
        let mut set = Listeners::new([
            ListenerConfig::parse("name=slow,rcvbuf=10,reliable,drain=0/s").unwrap(),
            ListenerConfig::parse("name=fast,rcvbuf=10").unwrap(),
            ListenerConfig::parse("name=lossy,rcvbuf=10,drain=0/s").unwrap(),
        ]);
        let msg = [0u8; 64];
        assert_eq!(set.deliver(0, &frame(GROUP_NEW, &msg)), Delivery::Delivered);
        assert!(!set.reliable_have_room());
        assert_eq!(set.deliver(0, &frame(GROUP_NEW, &msg)), Delivery::Failed);
        assert_eq!(set.get(1).unwrap().stats().received, 2);
        assert_eq!(set.get(2).unwrap().stats().dropped, 1);

        // A lossy listener alone never fails anything.
        let mut lossy = Listeners::new([ListenerConfig::parse("rcvbuf=0,drain=0/s").unwrap()]);
        for _ in 0..3 {
            assert_eq!(
                lossy.deliver(0, &frame(GROUP_DESTROY, &msg)),
                Delivery::Delivered
            );
        }
        assert!(lossy.reliable_have_room());
        // Nobody at all: delivered, and nobody exists.
        let mut none = Listeners::default();
        assert!(!none.has_listeners());
        assert_eq!(
            none.deliver(0, &frame(GROUP_NEW, &msg)),
            Delivery::Delivered
        );
    }

    #[test]
    fn groups_filter_what_a_listener_sees() {
        let mut set =
            Listeners::new([
                ListenerConfig::parse("groups=destroy,reliable,rcvbuf=0,drain=0/s").unwrap(),
            ]);
        assert!(set.has_listeners());
        assert!(set.has_listeners_for(GROUP_DESTROY) && !set.has_listeners_for(GROUP_NEW));
        // NEW and UPDATE are not its business: they never fail even with a full buffer.
        for _ in 0..3 {
            assert_eq!(
                set.deliver(0, &frame(GROUP_NEW, &[0; 8])),
                Delivery::Delivered
            );
            assert_eq!(
                set.deliver(0, &frame(GROUP_UPDATE, &[0; 8])),
                Delivery::Delivered
            );
        }
        assert_eq!(
            set.deliver(0, &frame(GROUP_DESTROY, &[0; 8])),
            Delivery::Delivered
        );
        assert_eq!(
            set.deliver(0, &frame(GROUP_DESTROY, &[0; 8])),
            Delivery::Failed
        );
        assert_eq!(set.get(0).unwrap().stats().received, 1);
        let mut l = listener("groups=new+update");
        assert_eq!(l.offer(0, GROUP_DESTROY, 1, &[]), Offer::NotSubscribed);
        let nobody = Listeners::new([ListenerConfig {
            groups: 0,
            ..ListenerConfig::default()
        }]);
        assert!(!nobody.has_listeners());
    }

    #[test]
    fn an_observer_sees_each_message_once_as_delivered() {
        // A reliable listener that holds one message and reads none, beside an observer.
        let mut set = Listeners::new([
            ListenerConfig::observer("observer"),
            ListenerConfig::parse("reliable,rcvbuf=0,drain=0/s").unwrap(),
        ]);
        assert_eq!(
            set.deliver(0, &frame(GROUP_DESTROY, &[1; 8])),
            Delivery::Delivered
        );
        // Refused twice (the retries of one DESTROY), then taken once the reader caught up.
        for _ in 0..2 {
            assert_eq!(
                set.deliver(0, &frame(GROUP_DESTROY, &[2; 8])),
                Delivery::Failed
            );
        }
        assert_eq!(
            set.get(0).unwrap().stats().received,
            1,
            "not the refused tries"
        );
        assert_eq!(
            set.deciding_stats().unwrap().dropped,
            2,
            "the socket's own figures"
        );
        // Nobody took it (the only other listener is not subscribed): nor does the observer.
        let mut alone = Listeners::new([
            ListenerConfig::observer("observer"),
            ListenerConfig::parse("groups=new").unwrap(),
        ]);
        assert_eq!(
            alone.deliver(0, &frame(GROUP_DESTROY, &[3; 8])),
            Delivery::Delivered
        );
        assert_eq!(alone.get(0).unwrap().stats().received, 0);
    }

    #[test]
    fn rate_reader_paces_reads_on_simulated_time() {
        let mut l = listener("rcvbuf=unlimited,drain=10/s,record");
        for i in 0..5u8 {
            l.offer(0, GROUP_NEW, 10, &[i]);
        }
        assert_eq!(l.stats().read, 1); // the idle reader took the first one at once
        assert_eq!(l.next_read_at(), Some(100 * MS));
        l.advance(250 * MS);
        assert_eq!(l.stats().read, 3);
        l.advance(10 * S);
        let times: Vec<u64> = l.received().iter().map(|m| m.read_ns).collect();
        assert_eq!(times, vec![0, 100 * MS, 200 * MS, 300 * MS, 400 * MS]);
        assert_eq!(
            l.received().iter().map(|m| m.bytes[0]).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        assert_eq!(l.next_read_at(), None);
        // A message arriving long after the last read is read on arrival.
        l.offer(20 * S, GROUP_NEW, 10, &[9]);
        assert_eq!(l.received().last().unwrap().read_ns, 20 * S);
    }

    #[test]
    fn unlimited_reader_never_holds_anything() {
        let mut set = Listeners::lossless();
        for i in 0..1000u64 {
            assert_eq!(
                set.deliver(i, &frame(GROUP_UPDATE, &[0; 200])),
                Delivery::Delivered
            );
        }
        let l = set.get(0).unwrap();
        assert_eq!(
            (
                l.queued_bytes(),
                l.stats().read,
                l.stats().peak_queued_bytes
            ),
            (0, 1000, 200)
        );
    }

    #[test]
    fn a_scheduled_pause_stops_reads_and_resumes_at_its_end() {
        let mut l = listener("rcvbuf=unlimited,drain=unlimited+pause@1..3,record");
        assert_eq!(
            l.config().drain,
            DrainPolicy::Schedule(vec![(0, f64::INFINITY), (S, 0.0), (3 * S, f64::INFINITY)])
        );
        l.set_origin(0);
        l.offer(500 * MS, GROUP_NEW, 10, &[1]);
        l.offer(1500 * MS, GROUP_NEW, 10, &[2]);
        l.offer(2 * S, GROUP_NEW, 10, &[3]);
        assert_eq!(l.queued_messages(), 2);
        assert_eq!(l.next_read_at(), Some(3 * S));
        l.advance(3 * S);
        let times: Vec<u64> = l.received().iter().map(|m| m.read_ns).collect();
        assert_eq!(times, vec![500 * MS, 3 * S, 3 * S]);
    }

    #[test]
    fn schedule_counts_from_the_origin() {
        let mut l = listener("rcvbuf=unlimited,drain=0/s+2/s@10");
        l.set_origin(100 * S);
        l.offer(101 * S, GROUP_NEW, 1, &[]);
        l.offer(101 * S, GROUP_NEW, 1, &[]);
        assert_eq!(l.next_read_at(), Some(110 * S));
        l.advance(110 * S);
        assert_eq!(l.next_read_at(), Some(110 * S + 500 * MS));
        l.advance(u64::MAX);
        assert_eq!(l.stats().read, 2);
    }

    #[test]
    fn spec_parsing() {
        let c = ListenerConfig::parse(
            "rcvbuf=2048,reliable,no-enobufs,groups=new+destroy,drain=100/s,name=ct",
        )
        .unwrap();
        assert_eq!(
            c,
            ListenerConfig {
                name: "ct".into(),
                rcvbuf: 2048,
                groups: group_bit(GROUP_NEW) | group_bit(GROUP_DESTROY),
                broadcast_error: true,
                no_enobufs: true,
                drain: DrainPolicy::Rate {
                    msgs_per_sec: 100.0
                },
                record: false,
                faults: 0.0,
                fault_seed: 0,
                delivered_only: false,
            }
        );
        assert_eq!(ListenerConfig::parse("rcvbuf=4M").unwrap().rcvbuf, 4 << 20);
        assert_eq!(
            ListenerConfig::parse("rcvbuf=64k").unwrap().rcvbuf,
            64 << 10
        );
        assert_eq!(
            "".parse::<ListenerConfig>().unwrap(),
            ListenerConfig::default()
        );
        assert_eq!(
            ListenerConfig::parse("drain=unlimited").unwrap().drain,
            DrainPolicy::Unlimited
        );
        assert_eq!(
            ListenerConfig::parse("drain=0.5/s").unwrap().drain,
            DrainPolicy::Rate { msgs_per_sec: 0.5 }
        );
        assert_eq!(
            ListenerConfig::parse("drain=10/s+pause@1..2+unlimited@5+pause@6..")
                .unwrap()
                .drain,
            DrainPolicy::Schedule(vec![
                (0, 10.0),
                (S, 0.0),
                (2 * S, 10.0),
                (5 * S, f64::INFINITY),
                (6 * S, 0.0)
            ])
        );
        let err = |spec: &str| format!("{:#}", ListenerConfig::parse(spec).unwrap_err());
        assert_eq!(
            err("rcvbuf=lots"),
            "listener spec `rcvbuf=lots`: rcvbuf `lots` is not a byte count (e.g. 2048, 64K, 4M)"
        );
        assert!(err("rcvbuf=1,fast").contains("unknown option `fast`"));
        assert!(err("groups=new+nat").contains("unknown group `nat`"));
        assert!(err("drain=fast").contains("messages per second"));
        assert!(err("drain=1/s+pause@5..2").contains("ends before it starts"));
        assert!(err("drain=1/s+pause@x..2").contains("not a time in seconds"));
        assert!(err("drain=-1/s").contains("non-negative"));
        assert!(err("reliable=yes").contains("takes no value"));
        assert!(err("rcvbuf").contains("needs a value"));
        assert!(err("faults=1.5").contains("not a probability"));
        assert!(err("seed=x").contains("not a whole number"));
    }

    #[test]
    fn injected_faults_are_seeded_counted_as_drops_and_fail_only_reliable_deliveries() {
        let spec = "rcvbuf=unlimited,faults=0.25,seed=7";
        let c = ListenerConfig::parse(spec).unwrap();
        assert_eq!((c.faults, c.fault_seed), (0.25, 7));
        let run = |spec: &str| {
            let mut l = listener(spec);
            let offers: Vec<Offer> = (0..400).map(|i| l.offer(i, GROUP_NEW, 10, &[])).collect();
            (offers, l.stats())
        };
        let (offers, stats) = run(spec);
        // Same seed, same faults; another seed, other faults.
        assert_eq!(run(spec).0, offers);
        assert_ne!(run("rcvbuf=unlimited,faults=0.25,seed=8").0, offers);
        let faulted = offers.iter().filter(|o| **o == Offer::Faulted).count() as u64;
        assert!(
            (60..140).contains(&faulted),
            "{faulted} faults in 400 at 25 %"
        );
        assert_eq!(
            (stats.faults, stats.dropped, stats.enobufs),
            (faulted, faulted, 0)
        );
        assert_eq!(stats.received, 400 - faulted);

        // A fault fails the delivery only for a reliable listener, and never congests it.
        for (spec, failing) in [("faults=1,reliable", true), ("faults=1", false)] {
            let mut set = Listeners::new([ListenerConfig::parse(spec).unwrap()]);
            let outcome = set.deliver(0, &frame(GROUP_NEW, &[0; 8]));
            assert_eq!(outcome == Delivery::Failed, failing, "{spec}");
            let l = set.get(0).unwrap();
            assert!(!l.is_congested() && l.has_room());
        }
    }

    #[derive(Clone, Debug)]
    enum Step {
        Offer { dt_ms: u64, group: u8, cost: usize },
        Advance { dt_ms: u64 },
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0u64..50, 1u8..=3, 0usize..400).prop_map(|(dt_ms, group, cost)| Step::Offer {
                dt_ms,
                group,
                cost
            }),
            (0u64..500).prop_map(|dt_ms| Step::Advance { dt_ms }),
        ]
    }

    proptest::proptest! {
        /// The kernel's rules hold under any traffic: nothing is queued past `rcvbuf` plus the
        /// last message, a congested socket always has something queued, NO_ENOBUFS never
        /// congests, and every message offered is counted exactly once.
        #[test]
        fn kernel_rules_hold_for_any_traffic(
            rcvbuf in 0usize..2000,
            no_enobufs in proptest::bool::ANY,
            rate in 0u32..200,
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let mut l = Listener::new(ListenerConfig {
                rcvbuf,
                no_enobufs,
                groups: group_bit(GROUP_NEW) | group_bit(GROUP_DESTROY),
                drain: DrainPolicy::Rate { msgs_per_sec: f64::from(rate) },
                ..ListenerConfig::default()
            });
            let (mut now, mut offered) = (0u64, 0u64);
            for s in steps {
                match s {
                    Step::Offer { dt_ms, group, cost } => {
                        now += dt_ms * MS;
                        let before = l.queued_bytes();
                        match l.offer(now, group, cost, &[]) {
                            Offer::NotSubscribed => proptest::prop_assert_eq!(group, GROUP_UPDATE),
                            Offer::Queued => offered += 1,
                            Offer::Dropped { first_overrun } => {
                                offered += 1;
                                proptest::prop_assert!(!(first_overrun && no_enobufs));
                                proptest::prop_assert!(before > rcvbuf || l.is_congested());
                            }
                            Offer::Faulted => proptest::prop_assert!(false, "no faults asked for"),
                        }
                        proptest::prop_assert!(l.queued_bytes() <= rcvbuf + cost || l.queued_bytes() <= before);
                    }
                    Step::Advance { dt_ms } => {
                        now += dt_ms * MS;
                        l.advance(now);
                    }
                }
                let st = l.stats();
                proptest::prop_assert_eq!(st.received + st.dropped, offered);
                proptest::prop_assert_eq!(st.received, st.read + l.queued_messages() as u64);
                proptest::prop_assert!(!l.is_congested() || l.queued_messages() > 0);
                proptest::prop_assert!(!(no_enobufs && l.is_congested()));
                proptest::prop_assert!(st.enobufs <= st.dropped);
            }
        }
    }

    #[test]
    fn recorded_frames_decode_back() {
        let mut set = Listeners::new([ListenerConfig::parse("record").unwrap()]);
        let f = EventFrame {
            events: EventBits::DESTROY,
            group: GROUP_DESTROY,
            flags: 1,
            ts_ns: 77,
            netlink: &[1, 2, 3, 4],
        };
        set.deliver(5, &f);
        let got = &set.get(0).unwrap().received()[0];
        assert_eq!(
            (got.queued_ns, got.read_ns, got.group),
            (5, 5, GROUP_DESTROY)
        );
        assert_eq!(got.event_frame(), Some(f));
    }
}
