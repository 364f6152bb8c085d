//! The tracker: the table, the per-packet path, the event cache, the dying list and the outbox.
//!
//! One linear path per packet, as in the kernel's `nf_conntrack_in` + `nf_conntrack_confirm`:
//! parse, handle ICMP errors (RELATED), build the tuple, find or create the entry, run the
//! protocol tracker, note SEEN_REPLY, confirm a new entry, then turn the bits cached during this
//! packet plus the entry's missed bits into at most one event message.
//!
//! Delivery is asynchronous at this boundary: messages wait in an outbox until the host takes
//! them, and the host reports each outcome back in order. A failed message ORs its bits into the
//! entry's `missed` bits; a failed DESTROY sends the entry (already out of the hash, still
//! counted against `nf_conntrack_max`) to the dying list, from which the retry policy sends the
//! DESTROY again until it gets through. Reporting outcomes before the next `ingest` gives the
//! kernel's exact semantics.

use std::collections::{HashMap, VecDeque};

use foldhash::fast::FixedState;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::batch;
use crate::config::{Config, RetryPolicy};
use crate::event::{EventBits, MessageKind, Status, TcpState};
use crate::netlink::Counters;
use crate::netlink::event::{ConntrackEvent, TcpInfo};
use crate::proto::{self, L4Packet, Outcome, PacketContext, ProtoState, Segment};
use crate::stats::Stats;
use crate::timer::TimerWheel;
use crate::tuple::{self, Direction, L4Tuple, Tuple, ipproto};

const NS_PER_S: u64 = 1_000_000_000;
/// The kernel counts timeouts in jiffies; ctnetlink reports whole seconds of jiffies left.
/// CONFIG_HZ=250 (the oracle machines' kernel): one jiffy is 4 ms.
const JIFFY_NS: u64 = NS_PER_S / 250;

/// Seconds left before `deadline_ns`, as the kernel reports them (`nf_ct_expires / HZ`): whole
/// jiffies elapsed, so an entry killed within the jiffy it was refreshed in still shows the full
/// timeout.
fn seconds_left(deadline_ns: u64, now_ns: u64) -> u32 {
    let jiffies = (deadline_ns / JIFFY_NS).saturating_sub(now_ns / JIFFY_NS);
    (jiffies * JIFFY_NS / NS_PER_S) as u32
}
/// Modern kernel worker: first retry one second after the first failure.
const KERNEL_FIRST_RETRY_NS: u64 = NS_PER_S;
/// Modern kernel worker: back-off while the listener stays congested (`ECACHE_RETRY_JIFFIES`).
const KERNEL_RETRY_NS: u64 = 10_000_000;
/// DESTROYs one worker run sends before waiting for their outcomes (the 4.x batch size).
const WORKER_BATCH: usize = 16;
/// Early drop looks at this many entries at most (the kernel scans up to 8 buckets).
const EARLY_DROP_SCAN: usize = 64;

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
    /// Refused: the table is full.
    Drop = 6,
    /// Not tracked at all (ICMPv6 neighbour discovery and MLD).
    Untracked = 7,
}

impl Verdict {
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
        ]
        .get(v as usize)
        .copied()
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

/// Where an entry is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    /// A free slab slot.
    Free,
    /// In the hash table (or being created by the packet in hand).
    Live,
    /// Out of the hash, its DESTROY handed to the host and not yet reported.
    Destroying,
    /// Out of the hash, its DESTROY failed: on the dying list, waiting for a retry.
    Dying,
}

/// One connection.
#[derive(Clone, Debug)]
struct Entry {
    generation: u32,
    orig: Tuple,
    zone: u16,
    id: u32,
    status: Status,
    mark: u32,
    proto: ProtoState,
    counters: [Counters; 2],
    start_ns: u64,
    stop_ns: u64,
    deadline_ns: u64,
    /// The event-cache extension: `None` when events were off when the entry was created.
    ecache: Option<Ecache>,
    life: Life,
    /// Intrusive dying-list links (slab indices).
    dying_prev: u32,
    dying_next: u32,
    /// The master's original tuple, for an entry an expectation created (RELATED).
    master: Option<Tuple>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Ecache {
    /// Bits raised by the packet being processed.
    cache: EventBits,
    /// Bits of messages that failed, to be carried by the next one.
    missed: EventBits,
}

const NIL: u32 = u32::MAX;

/// A message produced and not yet reported.
#[derive(Clone, Copy, Debug)]
struct Pending {
    slot: u32,
    generation: u32,
    bits: EventBits,
    /// The missed bits this message carried (cleared from the entry if it gets through).
    missed_sent: EventBits,
    kind: MessageKind,
    /// Sent by the dying-list worker (kernel and on-drain policies).
    from_worker: bool,
    /// An expectation event (`slot` indexes the expectation table).
    expect: bool,
    /// Byte range of the frame in `Outbox::bytes`.
    start: usize,
    len: usize,
}

#[derive(Debug, Default)]
struct Outbox {
    bytes: Vec<u8>,
    queued: VecDeque<Pending>,
    in_flight: VecDeque<Pending>,
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
    /// Seconds left before the entry times out.
    pub timeout_s: u32,
    pub mark: u32,
    pub counters_orig: Counters,
    pub counters_reply: Counters,
    pub start_ns: u64,
    /// On the dying list or waiting for its DESTROY to be reported.
    pub dying: bool,
}

type Index = HashMap<(u16, Tuple), (u32, Direction), FixedState>;

/// The connection tracker: deterministic, no clock, no I/O. See the module docs.
#[derive(Debug)]
pub struct Tracker {
    config: Config,
    slab: Vec<Entry>,
    free: Vec<u32>,
    index: Index,
    ids: HashMap<u32, u32, FixedState>,
    timers: TimerWheel,
    fired: Vec<u32>,
    outbox: Outbox,
    dying_head: u32,
    dying_tail: u32,
    dying_len: u64,
    /// Entries counted against `nf_conntrack_max`: live, destroying and dying.
    count: u64,
    live: u64,
    stats: Stats,
    grace_rng: ChaCha8Rng,
    id_rng: ChaCha8Rng,
    listener_present: bool,
    reliable_listener: bool,
    /// The retry worker (kernel and on-drain policies): when it next runs.
    worker_at: Option<u64>,
    worker_in_flight: usize,
    now_ns: u64,
    expectations: expect::Expectations,
}

impl Tracker {
    pub fn new(config: Config) -> Tracker {
        let seed = config.seed;
        let mut grace_rng = ChaCha8Rng::seed_from_u64(seed);
        grace_rng.set_stream(1);
        let mut id_rng = ChaCha8Rng::seed_from_u64(seed);
        id_rng.set_stream(2);
        Tracker {
            index: HashMap::with_hasher(FixedState::with_seed(seed ^ 0x636f_6e6e_7472_6163)),
            ids: HashMap::with_hasher(FixedState::with_seed(seed ^ 0x6964_7300_0000_0001)),
            config,
            slab: Vec::new(),
            free: Vec::new(),
            timers: TimerWheel::new(),
            fired: Vec::new(),
            outbox: Outbox::default(),
            dying_head: NIL,
            dying_tail: NIL,
            dying_len: 0,
            count: 0,
            live: 0,
            stats: Stats::default(),
            grace_rng,
            id_rng,
            listener_present: true,
            reliable_listener: true,
            worker_at: None,
            worker_in_flight: 0,
            now_ns: 0,
            expectations: expect::Expectations::new(seed),
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

    // ----- packets -------------------------------------------------------------------------

    /// Processes every packet of a batch (see [`batch`]) and appends one verdict byte each.
    /// A frame that runs past the end of the batch stops the batch; its verdict and those of
    /// nothing after it are written, and the error is counted.
    pub fn ingest_batch(&mut self, packets: &[u8], verdicts: &mut Vec<u8>) {
        self.ingest_batch_at(0, packets, verdicts)
    }

    /// As [`Tracker::ingest_batch`], after firing the timers due by `now_ns`, which also
    /// stands in for frames whose time is 0 (the WIT `ingest`).
    pub fn ingest_batch_at(&mut self, now_ns: u64, packets: &[u8], verdicts: &mut Vec<u8>) {
        self.advance(now_ns);
        for frame in batch::packets(packets) {
            match frame {
                Ok(p) => {
                    let ts = if p.ts_ns == 0 { now_ns } else { p.ts_ns };
                    verdicts.push(self.ingest(ts, p.zone, p.bytes) as u8)
                }
                Err(_) => {
                    self.stats.error += 1;
                    break;
                }
            }
        }
    }

    /// Processes one L3 packet seen at `now_ns` in `zone`. Timers due by `now_ns` fire first.
    pub fn ingest(&mut self, now_ns: u64, zone: u16, packet: &[u8]) -> Verdict {
        self.advance(now_ns);
        let verdict = self.ingest_one(now_ns, zone, packet);
        match verdict {
            Verdict::Invalid => self.stats.invalid += 1,
            Verdict::Drop => self.stats.drop += 1,
            Verdict::Untracked => self.stats.untracked += 1,
            _ => {}
        }
        verdict
    }

    fn ingest_one(&mut self, now_ns: u64, zone: u16, packet: &[u8]) -> Verdict {
        match proto::parse_packet(packet) {
            L4Packet::Track { tuple, segment } => self.track(now_ns, zone, tuple, &segment),
            L4Packet::Error { quoted } => self.related(zone, &quoted),
            L4Packet::Untracked => Verdict::Untracked,
            L4Packet::Invalid => Verdict::Invalid,
        }
    }

    /// An ICMP error about the flow `quoted`: attached as RELATED to its entry. It never creates
    /// an entry, refreshes nothing and raises no event.
    fn related(&mut self, zone: u16, quoted: &Tuple) -> Verdict {
        match self.index.get(&(zone, *quoted)) {
            Some(&(_, Direction::Original)) => {
                self.stats.found += 1;
                // The quoted packet went in the original direction, so the error is a reply.
                Verdict::RelatedReply
            }
            Some(&(_, Direction::Reply)) => {
                self.stats.found += 1;
                Verdict::Related
            }
            None => Verdict::Invalid,
        }
    }

    /// Finds or creates the entry for `tuple` and runs its tracker.
    fn track(&mut self, now_ns: u64, zone: u16, tuple: Tuple, segment: &Segment) -> Verdict {
        // Two rounds at most: a TCP reopen ends the old entry and looks again.
        for _ in 0..2 {
            let (slot, dir, is_new) = match self.index.get(&(zone, tuple)) {
                Some(&(slot, dir)) => {
                    self.stats.found += 1;
                    (slot, dir, false)
                }
                None => {
                    if matches!(tuple.l4, L4Tuple::Icmp { kind, .. } if !tuple::icmp_type_creates_entry(tuple.proto, kind))
                    {
                        return Verdict::Invalid;
                    }
                    let Some(proto) =
                        ProtoState::new_entry(tuple.proto, segment, &self.config.sysctls)
                    else {
                        return Verdict::Invalid;
                    };
                    if !self.make_room(now_ns, &tuple) {
                        return Verdict::Drop;
                    }
                    let slot = self.allocate(now_ns, zone, tuple, proto);
                    if let Some(master) = self.claim_expectation(now_ns, zone, &tuple) {
                        let e = self.entry_mut(slot);
                        e.status.insert(Status::EXPECTED);
                        e.master = Some(master);
                    }
                    (slot, Direction::Original, true)
                }
            };
            let outcome = self.run_tracker(slot, now_ns, segment, dir);
            match outcome {
                Outcome::Repeat => {
                    self.destroy(slot, now_ns, now_ns);
                    continue;
                }
                Outcome::Invalid => {
                    if is_new {
                        self.release(slot);
                    }
                    return Verdict::Invalid;
                }
                Outcome::InvalidShortenTimeout { timeout_s } => {
                    // Only assured entries get here, so never a new one.
                    let deadline = now_ns.saturating_add(timeout_s as u64 * NS_PER_S);
                    self.entry_mut(slot).deadline_ns = deadline;
                    self.timers.schedule(slot, deadline);
                    return Verdict::Invalid;
                }
                _ => {}
            }
            if outcome == Outcome::AcceptKeepTimeout && !is_new {
                self.stats.ignore += segment.tcp.is_some() as u64;
            }
            if outcome != Outcome::AcceptKeepTimeout {
                // Ignored packets and SYN retransmits leave before the kernel's
                // `nf_ct_refresh_acct`: neither the timeout nor the counters move.
                self.account(slot, dir, segment.wire_len);
            }
            if let Outcome::Accept { timeout_s } = outcome {
                let deadline = now_ns.saturating_add(timeout_s as u64 * NS_PER_S);
                self.entry_mut(slot).deadline_ns = deadline;
            }
            if is_new {
                self.confirm(slot, now_ns);
            }
            if outcome == Outcome::AcceptAndKill {
                self.destroy(slot, now_ns, now_ns);
                return if is_new {
                    Verdict::New
                } else {
                    dir_verdict(dir)
                };
            }
            if dir == Direction::Reply
                && !self.slab[slot as usize].status.contains(Status::SEEN_REPLY)
            {
                let e = self.entry_mut(slot);
                e.status.insert(Status::SEEN_REPLY);
                e.cache_event(EventBits::REPLY);
            }
            let deadline = self.slab[slot as usize].deadline_ns;
            self.timers.schedule(slot, deadline);
            self.deliver_cached(slot, now_ns);
            return if is_new {
                Verdict::New
            } else {
                dir_verdict(dir)
            };
        }
        Verdict::Invalid
    }

    fn run_tracker(
        &mut self,
        slot: u32,
        now_ns: u64,
        segment: &Segment,
        dir: Direction,
    ) -> Outcome {
        let sysctls = &self.config.sysctls;
        let e = &mut self.slab[slot as usize];
        let mut events = EventBits::empty();
        let mut ctx = PacketContext {
            now_ns,
            status: &mut e.status,
            events: &mut events,
            created_ns: e.start_ns,
            deadline_ns: e.deadline_ns,
            sysctls,
        };
        let outcome = e.proto.packet(&mut ctx, segment, dir);
        if !matches!(
            outcome,
            Outcome::Invalid | Outcome::InvalidShortenTimeout { .. } | Outcome::Repeat
        ) {
            e.cache_event(events);
        }
        outcome
    }

    fn account(&mut self, slot: u32, dir: Direction, wire_len: u32) {
        let c = &mut self.entry_mut(slot).counters[dir.index()];
        c.packets += 1;
        c.bytes += wire_len as u64;
    }

    fn entry_mut(&mut self, slot: u32) -> &mut Entry {
        &mut self.slab[slot as usize]
    }

    /// Takes a slab slot for a new, not yet confirmed entry.
    fn allocate(&mut self, now_ns: u64, zone: u16, orig: Tuple, proto: ProtoState) -> u32 {
        let events = self.config.sysctls.events;
        let ecache = match events {
            1 => Some(Ecache::default()),
            2 if self.listener_present => Some(Ecache::default()),
            _ => None,
        };
        let entry = Entry {
            generation: 0,
            orig,
            zone,
            id: 0,
            status: Status::default(),
            mark: 0,
            proto,
            counters: [Counters::default(); 2],
            start_ns: now_ns,
            stop_ns: 0,
            deadline_ns: now_ns,
            ecache,
            life: Life::Live,
            dying_prev: NIL,
            dying_next: NIL,
            master: None,
        };
        self.count += 1;
        match self.free.pop() {
            Some(slot) => {
                let generation = self.slab[slot as usize].generation.wrapping_add(1);
                self.slab[slot as usize] = Entry {
                    generation,
                    ..entry
                };
                slot
            }
            None => {
                self.slab.push(entry);
                (self.slab.len() - 1) as u32
            }
        }
    }

    /// Gives back a slot (an unconfirmed entry that turned out invalid, or a freed one).
    fn release(&mut self, slot: u32) {
        self.timers.cancel(slot);
        let e = &mut self.slab[slot as usize];
        if e.id != 0 {
            self.ids.remove(&e.id);
            e.id = 0;
        }
        e.generation = e.generation.wrapping_add(1);
        e.ecache = None;
        e.life = Life::Free;
        self.count -= 1;
        self.free.push(slot);
    }

    /// Puts a new entry into the hash: both tuples, an id, CONFIRMED, and the NEW event.
    fn confirm(&mut self, slot: u32, now_ns: u64) {
        let id = loop {
            let candidate: u32 = self.id_rng.random();
            if candidate != 0 && !self.ids.contains_key(&candidate) {
                break candidate;
            }
        };
        self.ids.insert(id, slot);
        let e = &mut self.slab[slot as usize];
        e.id = id;
        e.status.insert(Status::CONFIRMED);
        e.start_ns = now_ns;
        let related = e.status.contains(Status::EXPECTED);
        e.cache_event(if related {
            EventBits::RELATED
        } else {
            EventBits::NEW
        });
        let (zone, orig) = (e.zone, e.orig);
        let reply = orig.invert().unwrap_or(orig);
        self.index.insert((zone, orig), (slot, Direction::Original));
        self.index.insert((zone, reply), (slot, Direction::Reply));
        self.live += 1;
        self.stats.insert += 1;
    }

    /// Makes room for one more entry: true if the table has room (possibly after early drop).
    fn make_room(&mut self, now_ns: u64, tuple: &Tuple) -> bool {
        let max = self.config.sysctls.max as u64;
        if self.count < max {
            return true;
        }
        if self.slab.is_empty() {
            return false;
        }
        // Look at a window of the table starting from a place the new tuple picks, as the
        // kernel scans the buckets after the new tuple's hash.
        let start = (portable_hash(self.config.seed, tuple) % self.slab.len() as u64) as usize;
        for i in 0..EARLY_DROP_SCAN.min(self.slab.len()) {
            let slot = ((start + i) % self.slab.len()) as u32;
            let e = &self.slab[slot as usize];
            let candidate = self.is_live(slot)
                && (!e.status.contains(Status::ASSURED) || e.proto.can_early_drop());
            if !candidate {
                continue;
            }
            self.destroy(slot, now_ns, now_ns);
            self.stats.early_drop += 1;
            // Room appears only once the DESTROY got through. With no reliable listener it
            // cannot fail, so the slot is free now (its report will find a new generation);
            // with one, this packet is dropped and the room comes when the report does.
            if !self.reliable_listener && self.slab[slot as usize].life == Life::Destroying {
                self.release(slot);
            }
            return self.count < max;
        }
        false
    }

    // ----- ending entries ------------------------------------------------------------------

    /// Ends a live entry: out of the hash at once, DYING, and its DESTROY into the outbox. The
    /// entry keeps its slot (and counts against the maximum) until the DESTROY is delivered.
    fn destroy(&mut self, slot: u32, now_ns: u64, stop_ns: u64) {
        self.remove_expectations_of(slot, now_ns);
        self.timers.cancel(slot);
        let e = &mut self.slab[slot as usize];
        debug_assert_eq!(e.life, Life::Live);
        e.status.insert(Status::DYING);
        e.stop_ns = stop_ns;
        let (zone, orig) = (e.zone, e.orig);
        let reply = orig.invert().unwrap_or(orig);
        self.index.remove(&(zone, orig));
        self.index.remove(&(zone, reply));
        self.live -= 1;
        let has_ecache = e.ecache.is_some();
        if has_ecache && self.config.sysctls.events != 0 {
            e.life = Life::Destroying;
            self.queue_destroy(slot, now_ns, false, false);
        } else {
            self.release(slot);
        }
    }

    fn queue_destroy(&mut self, slot: u32, now_ns: u64, from_worker: bool, redelivery: bool) {
        let missed = self.slab[slot as usize]
            .ecache
            .map(|c| c.missed)
            .unwrap_or_default();
        let bits = EventBits::DESTROY.union(missed);
        self.emit(slot, now_ns, bits, missed, from_worker, redelivery);
    }

    /// Sends the bits cached while this packet was processed, plus the missed ones.
    fn deliver_cached(&mut self, slot: u32, now_ns: u64) {
        if self.config.sysctls.events == 0 {
            if let Some(c) = self.slab[slot as usize].ecache.as_mut() {
                c.cache = EventBits::empty();
            }
            return;
        }
        let Some(c) = self.slab[slot as usize].ecache.as_mut() else {
            return;
        };
        let cache = core::mem::take(&mut c.cache);
        let missed = c.missed;
        if cache.is_empty() && missed.is_empty() {
            return;
        }
        self.emit(slot, now_ns, cache.union(missed), missed, false, false);
    }

    /// Encodes one event message for the entry as it is now and queues it.
    fn emit(
        &mut self,
        slot: u32,
        now_ns: u64,
        bits: EventBits,
        missed_sent: EventBits,
        from_worker: bool,
        redelivery: bool,
    ) {
        let Some(kind) = bits.message_kind() else {
            return;
        };
        let generation = self.slab[slot as usize].generation;
        let flags = if redelivery {
            batch::EVENT_FLAG_REDELIVERY
        } else {
            0
        };
        let event = self.slab[slot as usize].event(kind, bits, now_ns, &self.config.sysctls);
        let mut out = core::mem::take(&mut self.outbox.bytes);
        let start = out.len();
        let frame = batch::begin_event(&mut out, bits, kind.group(), flags, now_ns);
        event.write_to(&mut out);
        batch::finish_event(&mut out, frame);
        let len = out.len() - start;
        self.outbox.bytes = out;
        self.outbox.queued.push_back(Pending {
            slot,
            generation,
            bits,
            missed_sent,
            kind,
            from_worker,
            expect: false,
            start,
            len,
        });
        if from_worker {
            self.worker_in_flight += 1;
        }
        self.stats.events_emitted += 1;
    }

    // ----- dying list ----------------------------------------------------------------------

    fn dying_push(&mut self, slot: u32) {
        let tail = self.dying_tail;
        {
            let e = &mut self.slab[slot as usize];
            e.life = Life::Dying;
            e.dying_prev = tail;
            e.dying_next = NIL;
        }
        if tail == NIL {
            self.dying_head = slot;
        } else {
            self.slab[tail as usize].dying_next = slot;
        }
        self.dying_tail = slot;
        self.dying_len += 1;
        self.stats.dying_peak = self.stats.dying_peak.max(self.dying_len);
    }

    fn dying_unlink(&mut self, slot: u32) {
        let (prev, next) = {
            let e = &self.slab[slot as usize];
            (e.dying_prev, e.dying_next)
        };
        if prev == NIL {
            self.dying_head = next;
        } else {
            self.slab[prev as usize].dying_next = next;
        }
        if next == NIL {
            self.dying_tail = prev;
        } else {
            self.slab[next as usize].dying_prev = prev;
        }
        let e = &mut self.slab[slot as usize];
        e.dying_prev = NIL;
        e.dying_next = NIL;
        self.dying_len -= 1;
    }

    /// Schedules the next retry of a dying entry under the grace policy: a uniformly random
    /// delay in `[0, nf_conntrack_events_retry_timeout)`. A timeout of 0 (where the 2009 kernel
    /// would divide by zero) retries on the next tick of the timer wheel.
    fn grace_delay_ns(&mut self) -> u64 {
        let bound = self.config.sysctls.events_retry_timeout as u64 * NS_PER_S;
        let delay = if bound == 0 {
            0
        } else {
            self.grace_rng.random_range(0..bound)
        };
        delay.max(1 << crate::timer::TICK_SHIFT)
    }

    fn schedule_worker(&mut self, at: u64) {
        self.worker_at = Some(match self.worker_at {
            Some(t) => t.min(at),
            None => at,
        });
    }

    // ----- time ----------------------------------------------------------------------------

    /// Fires every timer due by `now_ns`: timeouts end entries, grace timers and the retry worker
    /// resend DESTROYs. Time never goes back: an earlier `now_ns` is taken as the latest seen.
    pub fn advance(&mut self, now_ns: u64) {
        let now_ns = now_ns.max(self.now_ns);
        self.now_ns = now_ns;
        let mut fired = core::mem::take(&mut self.fired);
        fired.clear();
        self.timers.expire(now_ns, &mut fired);
        for &slot in &fired {
            let e = &self.slab[slot as usize];
            match e.life {
                Life::Live => {
                    let deadline = e.deadline_ns;
                    self.destroy(slot, now_ns, deadline);
                }
                Life::Dying => {
                    self.dying_unlink(slot);
                    self.slab[slot as usize].life = Life::Destroying;
                    self.stats.destroy_retries += 1;
                    self.queue_destroy(slot, now_ns, false, true);
                }
                Life::Destroying | Life::Free => {}
            }
        }
        self.fired = fired;
        self.expire_expectations(now_ns);
        if let Some(at) = self.worker_at
            && at <= now_ns
            && self.worker_in_flight == 0
        {
            self.worker_at = None;
            self.run_worker(now_ns);
        }
    }

    /// The retry worker: resend the DESTROY of the oldest dying entries, a batch at a time.
    fn run_worker(&mut self, now_ns: u64) {
        for _ in 0..WORKER_BATCH {
            let slot = self.dying_head;
            if slot == NIL {
                break;
            }
            self.dying_unlink(slot);
            self.slab[slot as usize].life = Life::Destroying;
            self.stats.destroy_retries += 1;
            self.queue_destroy(slot, now_ns, true, true);
        }
    }

    /// The earliest instant at which [`Tracker::advance`] may have work; never later than the
    /// next real deadline (it may be earlier: advancing to it then refines it).
    pub fn next_deadline(&self) -> Option<u64> {
        let wheel = self.timers.next_deadline();
        let worker = self.worker_at.filter(|_| self.worker_in_flight == 0);
        match (wheel, worker) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The host says its listeners have room again (the on-drain retry policy acts on it).
    pub fn listeners_drained(&mut self, now_ns: u64) {
        if self.config.retry_policy == RetryPolicy::OnDrain && self.dying_len > 0 {
            self.schedule_worker(now_ns.max(self.now_ns));
        }
    }

    // ----- the outbox ----------------------------------------------------------------------

    /// Entries whose DESTROY is out with the host, not yet reported.
    pub fn pending_destroys(&self) -> u64 {
        self.slab
            .iter()
            .filter(|e| e.life == Life::Destroying)
            .count() as u64
    }

    /// Number of messages waiting to be taken.
    pub fn pending_events(&self) -> usize {
        self.outbox.queued.len()
    }

    /// Moves up to `max` messages into `out` (event batch format, see [`batch`]); returns how
    /// many. Each must later be reported, in order, through [`Tracker::report_delivery`].
    pub fn take_events(&mut self, max: usize, out: &mut Vec<u8>) -> usize {
        let n = max.min(self.outbox.queued.len());
        for _ in 0..n {
            let p = self.outbox.queued.pop_front().expect("counted above");
            out.extend_from_slice(&self.outbox.bytes[p.start..p.start + p.len]);
            self.outbox.in_flight.push_back(p);
        }
        if self.outbox.queued.is_empty() {
            self.outbox.bytes.clear();
        }
        n
    }

    /// Applies the outcomes of taken messages, oldest first. Extra outcomes are ignored.
    pub fn report_delivery(&mut self, results: &[Delivery]) {
        for &result in results {
            let Some(p) = self.outbox.in_flight.pop_front() else {
                break;
            };
            if p.from_worker {
                self.worker_in_flight -= 1;
            }
            match result {
                Delivery::Delivered => self.stats.events_delivered += 1,
                Delivery::Failed => self.stats.events_failed += 1,
            }
            if p.expect {
                self.expect_delivery(p.slot, p.generation, p.bits, p.missed_sent, result);
                continue;
            }
            let e = &self.slab[p.slot as usize];
            if e.generation != p.generation {
                continue;
            }
            match (p.kind, result) {
                (MessageKind::Destroy, Delivery::Delivered) => {
                    self.release(p.slot);
                    self.after_destroy_sent();
                }
                (MessageKind::Destroy, Delivery::Failed) => {
                    if let Some(c) = self.slab[p.slot as usize].ecache.as_mut() {
                        c.missed.insert(p.bits.without(EventBits::DESTROY));
                    }
                    self.dying_push(p.slot);
                    self.after_destroy_failed(p.slot, p.from_worker);
                }
                (_, Delivery::Delivered) => {
                    if let Some(c) = self.slab[p.slot as usize].ecache.as_mut() {
                        c.missed.remove(p.missed_sent);
                    }
                }
                (_, Delivery::Failed) => {
                    let e = &mut self.slab[p.slot as usize];
                    if e.life == Life::Live
                        && let Some(c) = e.ecache.as_mut()
                    {
                        c.missed.insert(p.bits);
                    }
                }
            }
        }
        self.stats.dying = self.dying_len;
    }

    fn after_destroy_sent(&mut self) {
        match self.config.retry_policy {
            RetryPolicy::Grace => {}
            RetryPolicy::Kernel | RetryPolicy::OnDrain => {
                // A DESTROY got through: the listener has room, so retry at once.
                if self.dying_len > 0 {
                    self.schedule_worker(self.now_ns);
                }
            }
        }
    }

    fn after_destroy_failed(&mut self, slot: u32, from_worker: bool) {
        let now = self.now_ns;
        match self.config.retry_policy {
            RetryPolicy::Grace => {
                let at = now + self.grace_delay_ns();
                self.timers.schedule(slot, at);
            }
            RetryPolicy::Kernel => {
                if from_worker {
                    self.schedule_worker(now + KERNEL_RETRY_NS);
                } else if self.worker_at.is_none() && self.worker_in_flight == 0 {
                    self.schedule_worker(now + KERNEL_FIRST_RETRY_NS);
                }
            }
            RetryPolicy::OnDrain => {
                // Wait for the host's word that the listener drained; a slow fallback keeps
                // a host that never says so from stranding entries.
                if self.worker_at.is_none() && self.worker_in_flight == 0 {
                    self.schedule_worker(now + KERNEL_FIRST_RETRY_NS);
                }
            }
        }
    }

    // ----- control -------------------------------------------------------------------------

    /// Ends every live entry (`conntrack -F`): one DESTROY each, in table order.
    pub fn flush(&mut self, now_ns: u64) {
        self.advance(now_ns);
        for slot in 0..self.slab.len() as u32 {
            if self.is_live(slot) {
                self.destroy(slot, now_ns, now_ns);
            }
        }
    }

    /// Ends the entry that `tuple` (either direction) finds in `zone` (`conntrack -D`).
    pub fn delete(&mut self, now_ns: u64, zone: u16, tuple: &Tuple) -> bool {
        self.advance(now_ns);
        match self.index.get(&(zone, *tuple)) {
            Some(&(slot, _)) => {
                self.destroy(slot, now_ns, now_ns);
                true
            }
            None => false,
        }
    }

    /// Ends the entry with this id.
    pub fn delete_id(&mut self, now_ns: u64, id: u32) -> bool {
        self.advance(now_ns);
        match self.ids.get(&id) {
            Some(&slot) if self.is_live(slot) => {
                self.destroy(slot, now_ns, now_ns);
                true
            }
            _ => false,
        }
    }

    fn is_live(&self, slot: u32) -> bool {
        let e = &self.slab[slot as usize];
        e.life == Life::Live && e.status.contains(Status::CONFIRMED)
    }

    /// Up to `max` entries from slab position `cursor` on, live and dying, plus the cursor to
    /// continue from.
    pub fn dump(&self, cursor: u32, max: usize) -> (Vec<EntryView>, Option<u32>) {
        let mut rows = Vec::new();
        let mut slot = cursor as usize;
        while slot < self.slab.len() {
            if rows.len() == max {
                return (rows, Some(slot as u32));
            }
            let e = &self.slab[slot];
            if e.life != Life::Free && e.status.contains(Status::CONFIRMED) {
                rows.push(self.view(e));
            }
            slot += 1;
        }
        (rows, None)
    }

    /// The entry with this id, live or dying.
    pub fn get(&self, id: u32) -> Option<EntryView> {
        self.ids
            .get(&id)
            .map(|&slot| self.view(&self.slab[slot as usize]))
    }

    /// The live entry that `tuple` finds in `zone`.
    pub fn lookup(&self, zone: u16, tuple: &Tuple) -> Option<EntryView> {
        self.index
            .get(&(zone, *tuple))
            .map(|&(slot, _)| self.view(&self.slab[slot as usize]))
    }

    fn view(&self, e: &Entry) -> EntryView {
        EntryView {
            id: e.id,
            zone: e.zone,
            orig: e.orig,
            reply: e.orig.invert().unwrap_or(e.orig),
            status: e.status,
            tcp_state: e.proto.tcp_state(),
            timeout_s: if e.life == Life::Live {
                seconds_left(e.deadline_ns, self.now_ns)
            } else {
                0
            },
            mark: e.mark,
            counters_orig: e.counters[0],
            counters_reply: e.counters[1],
            start_ns: e.start_ns,
            dying: e.life != Life::Live,
        }
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.entries = self.live;
        s.count = self.count;
        s.max = self.config.sysctls.max as u64;
        s.dying = self.dying_len;
        s.missed_pending = self
            .slab
            .iter()
            .filter(|e| e.life == Life::Live && e.ecache.is_some_and(|c| !c.missed.is_empty()))
            .count() as u64;
        s
    }

    /// `td_end` of both directions of a TCP entry (the proxy calls continue its sequence).
    pub(crate) fn tcp_ends(&self, id: u32) -> Option<[u32; 2]> {
        let &slot = self.ids.get(&id)?;
        match &self.slab[slot as usize].proto {
            ProtoState::Tcp(c) => Some([c.seen[0].td_end, c.seen[1].td_end]),
            _ => None,
        }
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
            reply: self.orig.invert().unwrap_or(self.orig),
            zone: self.zone,
            id: self.id,
            status: self.status.0,
            timeout_s: seconds_left(self.deadline_ns, now_ns),
            tcp: match &self.proto {
                ProtoState::Tcp(c) => Some(TcpInfo {
                    state: c.state as u8,
                    wscale: [c.seen[0].td_scale, c.seen[1].td_scale],
                    flags: [c.seen[0].flags, c.seen[1].flags],
                }),
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

    fn cache_event(&mut self, bits: EventBits) {
        if let Some(c) = self.ecache.as_mut() {
            c.cache.insert(bits);
        }
    }
}

/// A hash of a tuple that is the same on every platform (foldhash's output depends on the
/// pointer width, so it must not decide anything visible, such as early drop's victim).
fn portable_hash(seed: u64, t: &Tuple) -> u64 {
    // splitmix64 steps over the tuple's fields.
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let (a, b) = match t.l4 {
        L4Tuple::Ports { src, dst } => (src as u64, dst as u64),
        L4Tuple::Icmp { id, kind, code } => (id as u64, ((kind as u64) << 8) | code as u64),
        L4Tuple::None => (0, 0),
    };
    let mut h = mix(seed ^ 0x9e37_79b9_7f4a_7c15);
    for chunk in t.src.0.chunks(8).chain(t.dst.0.chunks(8)) {
        h = mix(h ^ u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
    }
    mix(h ^ (a << 32) ^ (b << 16) ^ ((t.proto as u64) << 8) ^ t.family as u64)
}

fn dir_verdict(dir: Direction) -> Verdict {
    match dir {
        Direction::Original => Verdict::Established,
        Direction::Reply => Verdict::EstablishedReply,
    }
}

pub mod expect;
mod snapshot;
#[cfg(test)]
mod tests;
