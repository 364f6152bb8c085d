//! The tracker: the kernel's connection tracking core, split as the kernel splits it.
//!
//! - [`table`](self::table) (`nf_conntrack_core.c`'s table): entries in a slab, found by tuple
//!   or id, counted against `nf_conntrack_max`, early drop's victim;
//! - [`packet`](self::packet) (`nf_conntrack_in`): the per-packet path, one linear walk from
//!   bytes to a verdict and at most one event message;
//! - [`ecache`](self::ecache) (`nf_conntrack_ecache.c` and the seed): the event cache, missed
//!   bits, the outbox, the dying list and the retry policies;
//! - [`expect`] (`nf_conntrack_expect.c`): expectations and their reliable events;
//! - `snapshot`: the whole tracker as bytes.
//!
//! The ctnetlink message itself is built outside, by [`crate::netlink::event`], from the
//! entry's facts, as the kernel's `ctnetlink_conntrack_event` is a notifier outside its core.
//!
//! Delivery is asynchronous at this boundary: messages wait in an outbox until the host takes
//! them, and the host reports each outcome back in order. Reporting outcomes before the next
//! `ingest` gives the kernel's exact semantics.

mod budget;
mod connection;
mod defrag;
mod ecache;
pub mod expect;
mod outbox;
mod packet;
mod snapshot;
mod table;
#[cfg(test)]
mod tests;

use crate::batch;
use crate::config::Config;
use crate::event::{EventBits, MessageKind, SctpState, Status, TcpState};
use crate::netlink::Counters;
use crate::netlink::event::{ConntrackEvent, ProtoInfo, SctpInfo, TcpInfo};
use crate::proto::ProtoState;
use crate::stats::Stats;
use crate::timer::TimerWheel;
use crate::tuple::{Direction, Tuple};
pub use connection::{ConnCall, ConnError, ConnHandle, ConnRef, Ending};
use ecache::EventCache;
use table::{Entry, Life, Table};

const NS_PER_S: u64 = 1_000_000_000;
/// The kernel counts timeouts in jiffies; ctnetlink reports whole seconds of jiffies left.
/// CONFIG_HZ=250 (the kernel the conformance tests run against): one jiffy is 4 ms.
const JIFFY_NS: u64 = NS_PER_S / 250;

/// Seconds left before `deadline_ns`, as the kernel reports them (`nf_ct_expires / HZ`): whole
/// jiffies elapsed, so an entry killed within the jiffy it was refreshed in still shows the full
/// timeout.
fn seconds_left(deadline_ns: u64, now_ns: u64) -> u32 {
    let jiffies = (deadline_ns / JIFFY_NS).saturating_sub(now_ns / JIFFY_NS);
    (jiffies * JIFFY_NS / NS_PER_S) as u32
}

/// What happened to one packet, in the kernel's `ip_conntrack_info` terms plus refusals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Verdict {
    /// First packet of a new entry.
    New = 0,
    /// A packet of a known entry, original direction.
    Established = 1,
    /// An ICMP error about a known entry, original direction.
    Related = 2,
    /// A packet of a known entry, reply direction.
    EstablishedReply = 3,
    /// An ICMP error about a known entry, reply direction.
    RelatedReply = 4,
    /// Malformed, or does not fit its entry (`ct state invalid`); accepted untracked.
    Invalid = 5,
    /// Refused: the table is full, or a fragment the reassembly discarded (overlapping,
    /// inconsistent, oversized, over the memory bound).
    Drop = 6,
    /// Not tracked at all (ICMPv6 neighbour discovery and MLD).
    Untracked = 7,
    /// An IP fragment held until its datagram is complete (the fragment that completes it gets
    /// the datagram's verdict). A fragment the reassembly discards is [`Verdict::Drop`].
    Queued = 8,
}

/// Where a packet met conntrack, as far as its checksums go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Sent by the local stack, or handed on by a device that verified it: trusted.
    Sent,
    /// Arrived from a device with its checksums unverified (PRE_ROUTING, `CHECKSUM_NONE`).
    Arrived,
}

impl Verdict {
    /// The verdict with the highest discriminant: every byte from 0 to it is a verdict.
    pub const LAST: Verdict = Verdict::Queued;

    /// How many verdicts there are: the length of an array indexed by `Verdict as usize`.
    pub const COUNT: usize = Verdict::LAST as usize + 1;

    pub fn from_u8(v: u8) -> Option<Verdict> {
        use Verdict::*;
        [
            New,
            Established,
            Related,
            EstablishedReply,
            RelatedReply,
            Invalid,
            Drop,
            Untracked,
            Queued,
        ]
        .get(v as usize)
        .copied()
    }
    /// A packet of a known entry, in direction `dir`.
    pub fn established(dir: Direction) -> Verdict {
        match dir {
            Direction::Original => Verdict::Established,
            Direction::Reply => Verdict::EstablishedReply,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Verdict::New => "new",
            Verdict::Established => "established",
            Verdict::Related => "related",
            Verdict::EstablishedReply => "established-reply",
            Verdict::RelatedReply => "related-reply",
            Verdict::Invalid => "invalid",
            Verdict::Drop => "drop",
            Verdict::Untracked => "untracked",
            Verdict::Queued => "queued",
        }
    }
}

/// The host's verdict on one event message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Delivery {
    Delivered,
    /// A listener that asked for reliable delivery (broadcast-error) missed it.
    Failed,
}

/// A row of [`Tracker::dump`]: the entry as `conntrack -L` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryView {
    pub id: u32,
    pub zone: u16,
    pub orig: Tuple,
    pub reply: Tuple,
    pub status: Status,
    pub tcp_state: Option<TcpState>,
    pub sctp_state: Option<SctpState>,
    /// Seconds left before the entry times out.
    pub timeout_s: u32,
    pub mark: u32,
    pub counters_orig: Counters,
    pub counters_reply: Counters,
    pub start_ns: u64,
    /// On the dying list or waiting for its DESTROY to be reported.
    pub dying: bool,
}

/// The connection tracker: deterministic, no clock, no I/O.
///
/// Its methods come in four kinds, as quinn's `Connection` documents its own:
/// - **inputs**, each at a time `now_ns` that never goes back: [`Tracker::ingest`] and
///   [`Tracker::ingest_batch_at`] (packets), [`Tracker::advance`] (timers),
///   [`Tracker::report_delivery`] (the outcome of taken messages, in order),
///   [`Tracker::listeners_drained`], [`Tracker::set_listeners`];
/// - **outputs**, pulled by the host: [`Tracker::take_events`] (framed ctnetlink messages),
///   [`Tracker::next_deadline`] (when to call `advance` next);
/// - **control**, as `conntrack` offers it: [`Tracker::flush`], [`Tracker::delete`],
///   [`Tracker::delete_id`], expectations ([`Tracker::expect`], [`Tracker::unexpect`]),
///   [`Tracker::snapshot`] and [`Tracker::restore`];
/// - **getters**: [`Tracker::dump`], [`Tracker::get`], [`Tracker::lookup`],
///   [`Tracker::stats`], [`Tracker::expect_stats`], [`Tracker::pending_events`],
///   [`Tracker::now`], [`Tracker::config`].
#[derive(Debug)]
pub struct Tracker {
    config: Config,
    table: Table,
    /// Entry timeouts and, for dying entries under the grace policy, their retry time.
    timers: TimerWheel,
    /// Scratch list of the slots whose timer fired (kept to reuse its allocation).
    fired: Vec<u32>,
    ecache: EventCache,
    stats: Stats,
    /// Whether any listener exists (`nf_conntrack_events=2` gives new entries an event cache
    /// only then) and whether one asked for reliable delivery.
    listener_present: bool,
    reliable_listener: bool,
    now_ns: u64,
    expectations: expect::Expectations,
    /// The bytes the table, its timers and the outbox may take (see [`Tracker::set_memory_budget`]).
    memory_budget: Option<u64>,
    /// Datagrams waiting for the rest of their fragments.
    defrag: defrag::Defrag,
}

impl Tracker {
    pub fn new(config: Config) -> Tracker {
        let seed = config.seed;
        Tracker {
            table: Table::new(seed),
            timers: TimerWheel::new(),
            fired: Vec::new(),
            ecache: EventCache::new(seed),
            stats: Stats::default(),
            listener_present: true,
            reliable_listener: true,
            now_ns: 0,
            expectations: expect::Expectations::new(seed),
            memory_budget: None,
            defrag: defrag::Defrag::default(),
            config,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Tells the tracker whether any listener exists (for `nf_conntrack_events=2`) and whether
    /// one of them asked for reliable delivery (when none did, a DESTROY cannot fail, so early
    /// drop can free room at once, as in the kernel).
    pub fn set_listeners(&mut self, present: bool, reliable: bool) {
        self.listener_present = present;
        self.reliable_listener = reliable;
    }

    /// Caps the memory the tracker's growing structures may take (the slab and its indexes,
    /// timers, the outbox): past it, a new connection is refused (`drop` and `insert_failed`,
    /// as the kernel counts a failed allocation) and an event that does not fit fails as if a
    /// listener's buffer were full, instead of the tracker running out of memory. The figure is
    /// computed, not measured, so the native engine and the component refuse at the same
    /// point; an embedder sets it below its memory limit, leaving room for call buffers.
    /// `None` (the default) sets no cap. Not part of a snapshot: set it again after a restore.
    pub fn set_memory_budget(&mut self, bytes: Option<u64>) {
        self.memory_budget = bytes;
    }

    /// Bytes the tracker's growing structures take now (what the memory budget caps).
    pub fn memory_footprint(&self) -> u64 {
        self.table.footprint()
            + self.timers.footprint(0).0
            + budget::vec_bytes::<u32>(self.fired.capacity())
            + self.ecache.outbox.footprint().0
    }

    /// Whether the bytes `growth` computes stay within the memory budget; with no budget set
    /// (the default) nothing is computed, so the packet path pays nothing for the check.
    fn within_budget(&self, growth: impl FnOnce() -> u64) -> bool {
        let Some(budget) = self.memory_budget else {
            return true;
        };
        let growth = growth();
        growth == 0 || self.memory_footprint() + growth <= budget
    }

    // ----- inputs ----------------------------------------------------------------------------

    /// Processes every packet of a batch (see [`batch`]) after firing the timers due by
    /// `now_ns`, which also stands in for frames whose time is 0, and appends one verdict byte
    /// each. A frame that runs past the end of the batch stops the batch: nothing after it is
    /// processed, and the framing error is counted.
    pub fn ingest_batch_at(&mut self, now_ns: u64, packets: &[u8], verdicts: &mut Vec<u8>) {
        self.advance(now_ns);
        for frame in batch::packets(packets) {
            match frame {
                Ok(p) => {
                    let ts = if p.ts_ns == 0 { now_ns } else { p.ts_ns };
                    let origin = if p.arrived() {
                        Origin::Arrived
                    } else {
                        Origin::Sent
                    };
                    verdicts.push(self.ingest_from(ts, p.zone, origin, p.bytes) as u8)
                }
                Err(_) => {
                    self.stats.error = self.stats.error.wrapping_add(1);
                    break;
                }
            }
        }
    }

    /// Processes one L3 packet seen at `now_ns` in `zone`, as the local stack sent it (nothing
    /// verifies its checksums). Timers due by `now_ns` fire first.
    pub fn ingest(&mut self, now_ns: u64, zone: u16, packet: &[u8]) -> Verdict {
        self.ingest_from(now_ns, zone, Origin::Sent, packet)
    }

    /// Processes one L3 packet that arrived from a device with its checksums unverified: with
    /// `nf_conntrack_checksum` set they are verified as the kernel verifies them (see
    /// [`crate::batch::PACKET_FLAG_ARRIVED`]). Timers due by `now_ns` fire first.
    pub fn ingest_arrived(&mut self, now_ns: u64, zone: u16, packet: &[u8]) -> Verdict {
        self.ingest_from(now_ns, zone, Origin::Arrived, packet)
    }

    fn ingest_from(&mut self, now_ns: u64, zone: u16, origin: Origin, packet: &[u8]) -> Verdict {
        self.advance(now_ns);
        let verdict = self.ingest_one(now_ns, zone, origin, packet);
        self.count_verdict(verdict)
    }

    /// Processes one packet already read down to its flow (the connection-level calls build
    /// theirs that way). Timers due by `now_ns` fire first.
    fn ingest_parsed(
        &mut self,
        now_ns: u64,
        zone: u16,
        tuple: Tuple,
        segment: &crate::proto::Segment,
    ) -> Verdict {
        self.advance(now_ns);
        let verdict = self.track(now_ns, zone, tuple, segment);
        self.count_verdict(verdict)
    }

    fn count_verdict(&mut self, verdict: Verdict) -> Verdict {
        match verdict {
            Verdict::Invalid => self.stats.invalid = self.stats.invalid.wrapping_add(1),
            Verdict::Drop => self.stats.drop = self.stats.drop.wrapping_add(1),
            Verdict::Untracked => self.stats.untracked = self.stats.untracked.wrapping_add(1),
            _ => {}
        }
        verdict
    }

    /// Fires every timer due by `now_ns`: timeouts end entries, grace timers and the retry worker
    /// resend DESTROYs. Time never goes back: an earlier `now_ns` is taken as the latest seen.
    pub fn advance(&mut self, now_ns: u64) {
        let now_ns = now_ns.max(self.now_ns);
        self.now_ns = now_ns;
        let mut fired = core::mem::take(&mut self.fired);
        fired.clear();
        self.timers.expire(now_ns, &mut fired);
        for &slot in &fired {
            let e = self.table.entry(slot);
            match e.life {
                Life::Live => {
                    let deadline = e.deadline_ns;
                    self.destroy(slot, now_ns, deadline);
                }
                Life::Dying => self.retry_destroy(slot, now_ns, false),
                Life::Destroying | Life::Dropped | Life::Free => {}
            }
        }
        self.fired = fired;
        self.expire_expectations(now_ns);
        self.run_worker_if_due(now_ns);
        self.defrag.expire(now_ns, &mut self.stats);
    }

    /// Applies the outcomes of taken messages, oldest first. Extra outcomes are ignored.
    pub fn report_delivery(&mut self, results: &[Delivery]) {
        self.apply_delivery(results);
        self.stats.dying = self.ecache.dying.len;
    }

    /// The host says its listeners have room again (the on-drain retry policy acts on it).
    pub fn listeners_drained(&mut self, now_ns: u64) {
        self.on_listeners_drained(now_ns.max(self.now_ns));
    }

    // ----- outputs ---------------------------------------------------------------------------

    /// The earliest instant at which [`Tracker::advance`] may have work; never later than the
    /// next real deadline (it may be earlier: advancing to it then refines it).
    pub fn next_deadline(&self) -> Option<u64> {
        [
            self.timers.next_deadline(),
            self.ecache.worker.next_deadline(),
            self.defrag.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Moves up to `max` messages into `out` (event batch format, see [`batch`]); returns how
    /// many. Each must later be reported, in order, through [`Tracker::report_delivery`].
    pub fn take_events(&mut self, max: usize, out: &mut Vec<u8>) -> usize {
        self.ecache.outbox.take(max, out)
    }

    // ----- control ---------------------------------------------------------------------------

    /// Ends every live entry (`conntrack -F`): one DESTROY each, in table order.
    pub fn flush(&mut self, now_ns: u64) {
        self.advance(now_ns);
        for slot in 0..self.table.slab.len() as u32 {
            if self.table.is_live(slot) {
                self.destroy(slot, now_ns, now_ns);
            }
        }
    }

    /// Ends the entry that `tuple` (either direction) finds in `zone` (`conntrack -D`).
    pub fn delete(&mut self, now_ns: u64, zone: u16, tuple: &Tuple) -> bool {
        self.advance(now_ns);
        match self.table.find(zone, tuple) {
            Some((slot, _)) => {
                self.destroy(slot, now_ns, now_ns);
                true
            }
            None => false,
        }
    }

    /// Ends the entry with this id.
    pub fn delete_id(&mut self, now_ns: u64, id: u32) -> bool {
        self.advance(now_ns);
        match self.table.slot_of(id) {
            Some(slot) if self.table.is_live(slot) => {
                self.destroy(slot, now_ns, now_ns);
                true
            }
            _ => false,
        }
    }

    // ----- getters ---------------------------------------------------------------------------

    /// Number of messages waiting to be taken.
    pub fn pending_events(&self) -> usize {
        self.ecache.outbox.queued.len()
    }

    /// Up to `max` entries from slab position `cursor` on, live and dying, plus the cursor to
    /// continue from.
    pub fn dump(&self, cursor: u32, max: usize) -> (Vec<EntryView>, Option<u32>) {
        let mut rows = Vec::new();
        let from = cursor as usize;
        for (slot, e) in self.table.slab.iter().enumerate().skip(from) {
            if rows.len() == max {
                return (rows, Some(slot as u32));
            }
            if e.is_counted() && e.status.contains(Status::CONFIRMED) {
                rows.push(self.table.view(e, self.now_ns));
            }
        }
        (rows, None)
    }

    /// The entry with this id, live or dying.
    pub fn get(&self, id: u32) -> Option<EntryView> {
        let slot = self.table.slot_of(id)?;
        Some(self.table.view(self.table.entry(slot), self.now_ns))
    }

    /// The live entry that `tuple` finds in `zone`.
    pub fn lookup(&self, zone: u16, tuple: &Tuple) -> Option<EntryView> {
        let (slot, _) = self.table.find(zone, tuple)?;
        Some(self.table.view(self.table.entry(slot), self.now_ns))
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.entries = self.table.live;
        s.count = self.table.count;
        s.max = self.config.sysctls.max as u64;
        s.dying = self.ecache.dying.len;
        s.missed_pending = self.table.missed_pending();
        s.frag_queues = self.defrag.len() as u64;
        s
    }

    /// The latest time the tracker has seen.
    pub fn now(&self) -> u64 {
        self.now_ns
    }
}

impl Entry {
    /// The facts an event message reports about this entry now (`ctnetlink_conntrack_event`
    /// reads the same from the kernel's entry and its extensions).
    fn event(
        &self,
        kind: MessageKind,
        bits: EventBits,
        now_ns: u64,
        sysctls: &crate::config::Sysctls,
    ) -> ConntrackEvent {
        ConntrackEvent {
            kind,
            bits,
            orig: self.orig,
            reply: self.reply(),
            zone: self.zone,
            id: self.id,
            status: self.status.0,
            timeout_s: seconds_left(self.deadline_ns, now_ns),
            protoinfo: match &self.proto {
                ProtoState::Tcp(c) => Some(ProtoInfo::Tcp(TcpInfo {
                    state: c.state as u8,
                    wscale: [c.seen[0].td_scale, c.seen[1].td_scale],
                    flags: [c.seen[0].flags, c.seen[1].flags],
                })),
                ProtoState::Sctp(c) => Some(ProtoInfo::Sctp(SctpInfo {
                    state: c.state as u8,
                    vtag: c.vtag,
                })),
                _ => None,
            },
            master: self.master,
            mark: self.mark,
            counters: sysctls.acct.then_some(self.counters),
            timestamps: sysctls.timestamp.then_some((self.start_ns, self.stop_ns)),
            event_ns: now_ns,
            port_id: 0,
        }
    }
}
