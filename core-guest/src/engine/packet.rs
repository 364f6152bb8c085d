//! The per-packet path (the kernel's `nf_conntrack_in`, `resolve_normal_ct`, `init_conntrack`
//! and `__nf_conntrack_confirm`): read the packet down to its flow, attach ICMP errors as
//! RELATED, find or create the entry (making room by early drop when the table is full), run
//! the protocol tracker, note SEEN_REPLY, confirm a new entry, then deliver the events this
//! packet cached.

use super::defrag::{self, Reassembly};
use super::ecache::Ecache;
use super::table::{Entry, Life};
use super::{NS_PER_S, Origin, Tracker, Verdict};
use crate::event::{EventBits, Status};
use crate::proto::{self, L4Packet, Outcome, PacketContext, ProtoState, Segment};
use crate::tuple::{self, Direction, L4Tuple, Tuple};

impl Tracker {
    pub(super) fn ingest_one(
        &mut self,
        now_ns: u64,
        zone: u16,
        origin: Origin,
        packet: &[u8],
    ) -> Verdict {
        // The IP layer checks an arriving IPv4 header before anything else sees the packet.
        if origin == Origin::Arrived && !proto::checksum::ip_header_holds(packet) {
            return Verdict::Drop;
        }
        // Fragments are reassembled first: conntrack sees whole datagrams only.
        if let Some(fragment) = defrag::fragment_of(zone, packet) {
            // The tracker's clock, which never goes back, dates the queue.
            let now = self.now_ns.max(now_ns);
            match self
                .defrag
                .add(now, fragment, &self.config.sysctls, &mut self.stats)
            {
                Reassembly::Held => return Verdict::Queued,
                Reassembly::Dropped => return Verdict::Drop,
                Reassembly::Whole(whole) => {
                    return self.ingest_whole(now_ns, zone, origin, &whole);
                }
                Reassembly::AsIs => {}
            }
        }
        self.ingest_whole(now_ns, zone, origin, packet)
    }

    /// A packet that is not a fragment the reassembly holds: read it down to its flow and track
    /// it. A reassembled datagram is checked as arriving when the fragment that completed it
    /// arrived.
    fn ingest_whole(&mut self, now_ns: u64, zone: u16, origin: Origin, packet: &[u8]) -> Verdict {
        let parsed = proto::parse_packet(packet);
        // The protocols' error callbacks verify the checksum before anything else they decide
        // (an ICMPv6 neighbour solicitation with a wrong checksum is invalid, not untracked).
        if origin == Origin::Arrived
            && self.config.sysctls.checksum
            && !matches!(parsed, L4Packet::Invalid)
            && !proto::checksum::arriving_checksum_holds(packet)
        {
            return Verdict::Invalid;
        }
        match parsed {
            L4Packet::Track { tuple, segment } => self.track(now_ns, zone, tuple, &segment),
            L4Packet::Error { quoted } => self.related(zone, &quoted),
            L4Packet::Untracked => Verdict::Untracked,
            L4Packet::Invalid => Verdict::Invalid,
        }
    }

    /// An ICMP error about the flow `quoted`: attached as RELATED to its entry. It never creates
    /// an entry, refreshes nothing and raises no event.
    fn related(&mut self, zone: u16, quoted: &Tuple) -> Verdict {
        let Some((_, dir)) = self.table.find(zone, quoted) else {
            return Verdict::Invalid;
        };
        self.stats.found = self.stats.found.wrapping_add(1);
        match dir {
            // The quoted packet went in the original direction, so the error is a reply.
            Direction::Original => Verdict::RelatedReply,
            Direction::Reply => Verdict::Related,
        }
    }

    /// Finds or creates the entry for `tuple` and runs its tracker.
    pub(super) fn track(
        &mut self,
        now_ns: u64,
        zone: u16,
        tuple: Tuple,
        segment: &Segment,
    ) -> Verdict {
        // Two rounds at most: a TCP reopen ends the old entry and looks again.
        for _ in 0..2 {
            let (slot, dir, is_new) = match self.table.find(zone, &tuple) {
                Some((slot, dir)) => (slot, dir, false),
                None => match self.create(now_ns, zone, tuple, segment) {
                    Ok(slot) => (slot, Direction::Original, true),
                    Err(verdict) => return verdict,
                },
            };
            if let Some(verdict) = self.track_in(slot, dir, is_new, now_ns, segment) {
                return verdict;
            }
        }
        Verdict::Invalid
    }

    /// Runs the tracker of the entry in `slot` (a new one if `is_new`) on a packet in `dir`,
    /// then what follows: counters, timeout, confirmation, SEEN_REPLY, the events. `None` when
    /// the packet reopened the connection: the entry is ended and the packet must be looked up
    /// again.
    pub(super) fn track_in(
        &mut self,
        slot: u32,
        dir: Direction,
        is_new: bool,
        now_ns: u64,
        segment: &Segment,
    ) -> Option<Verdict> {
        if !is_new {
            self.stats.found = self.stats.found.wrapping_add(1);
        }
        let outcome = self.run_tracker(slot, now_ns, segment, dir);
        match outcome {
            Outcome::Repeat => {
                self.destroy(slot, now_ns, now_ns);
                return None;
            }
            Outcome::Invalid => {
                if is_new {
                    self.release(slot);
                }
                return Some(Verdict::Invalid);
            }
            Outcome::InvalidShortenTimeout { timeout_s } => {
                // Only assured entries get here, so never a new one.
                self.set_timeout(slot, now_ns, timeout_s);
                return Some(Verdict::Invalid);
            }
            _ => {}
        }
        if outcome == Outcome::AcceptKeepTimeout && !is_new {
            self.stats.ignore = self.stats.ignore.wrapping_add(segment.tcp.is_some() as u64);
        }
        if outcome != Outcome::AcceptKeepTimeout {
            // Ignored packets and SYN retransmits leave before the kernel's
            // `nf_ct_refresh_acct`: neither the timeout nor the counters move. The counters
            // wrap, as the kernel's 64-bit ones do (a restored snapshot may start them
            // anywhere).
            let c = &mut self.table.entry_mut(slot).counters[dir.index()];
            c.packets = c.packets.wrapping_add(1);
            c.bytes = c.bytes.wrapping_add(segment.wire_len as u64);
        }
        if let Outcome::Accept { timeout_s } = outcome {
            self.table.entry_mut(slot).deadline_ns =
                now_ns.saturating_add(timeout_s as u64 * NS_PER_S);
        }
        if is_new {
            self.confirm(slot, now_ns);
        }
        let verdict = if is_new {
            Verdict::New
        } else {
            Verdict::established(dir)
        };
        if outcome == Outcome::AcceptAndKill {
            self.destroy(slot, now_ns, now_ns);
            return Some(verdict);
        }
        let e = self.table.entry_mut(slot);
        if dir == Direction::Reply && !e.status.contains(Status::SEEN_REPLY) {
            e.status.insert(Status::SEEN_REPLY);
            e.cache_event(EventBits::REPLY);
        }
        let deadline = e.deadline_ns;
        self.timers.schedule(slot, deadline);
        self.deliver_cached(slot, now_ns);
        Some(verdict)
    }

    /// A new, unconfirmed entry for the first packet of `tuple`, or the verdict that refuses it.
    fn create(
        &mut self,
        now_ns: u64,
        zone: u16,
        tuple: Tuple,
        segment: &Segment,
    ) -> Result<u32, Verdict> {
        if matches!(tuple.l4, L4Tuple::Icmp { kind, .. } if !tuple::icmp_type_creates_entry(tuple.proto, kind))
        {
            return Err(Verdict::Invalid);
        }
        let proto = ProtoState::new_entry(tuple.proto, segment, &self.config.sysctls)
            .ok_or(Verdict::Invalid)?;
        if !self.make_room(now_ns, &tuple) {
            return Err(Verdict::Drop);
        }
        let handles = self.table.slab.len() + 1;
        let growth = || {
            self.table.growth_for_one()
                + self.timers.footprint(handles).1
                + super::budget::vec_growth::<u32>(self.fired.len(), self.fired.capacity(), handles)
        };
        if !self.within_budget(growth)
            || !self.table.reserve_one()
            || !self.timers.reserve(handles)
            || self.fired.try_reserve(handles).is_err()
        {
            // The table cannot grow inside the memory it has: the kernel's answer to a failed
            // allocation, the packet is dropped and counted, and the table stays as it is.
            self.stats.insert_failed = self.stats.insert_failed.wrapping_add(1);
            return Err(Verdict::Drop);
        }
        let ecache = match self.config.sysctls.events {
            1 => Some(Ecache::default()),
            2 if self.listener_present => Some(Ecache::default()),
            _ => None,
        };
        let slot = self
            .table
            .allocate(Entry::new(now_ns, zone, tuple, proto, ecache));
        if let Some(master) = self.claim_expectation(now_ns, zone, &tuple) {
            let e = self.table.entry_mut(slot);
            e.status.insert(Status::EXPECTED);
            e.master = Some(master);
        }
        Ok(slot)
    }

    fn run_tracker(
        &mut self,
        slot: u32,
        now_ns: u64,
        segment: &Segment,
        dir: Direction,
    ) -> Outcome {
        let sysctls = &self.config.sysctls;
        let e = self.table.entry_mut(slot);
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
        // What a tracker raised stays cached even when it then called the packet invalid (an
        // SCTP chunk that moved the entry before a later chunk failed): the kernel delivers such
        // bits with the entry's next event.
        if outcome != Outcome::Repeat {
            e.cache_event(events);
        }
        outcome
    }

    fn set_timeout(&mut self, slot: u32, now_ns: u64, timeout_s: u32) {
        let deadline = now_ns.saturating_add(timeout_s as u64 * NS_PER_S);
        self.table.entry_mut(slot).deadline_ns = deadline;
        self.timers.schedule(slot, deadline);
    }

    /// Puts a new entry into the hash: both tuples, an id, CONFIRMED, and the NEW (or RELATED)
    /// event.
    fn confirm(&mut self, slot: u32, now_ns: u64) {
        self.table.insert(slot);
        let e = self.table.entry_mut(slot);
        e.status.insert(Status::CONFIRMED);
        e.start_ns = now_ns;
        e.cache_event(if e.status.contains(Status::EXPECTED) {
            EventBits::RELATED
        } else {
            EventBits::NEW
        });
        self.stats.insert = self.stats.insert.wrapping_add(1);
    }

    /// Makes room for one more entry: true if the table has room (possibly after early drop).
    fn make_room(&mut self, now_ns: u64, tuple: &Tuple) -> bool {
        let max = self.config.sysctls.max as u64;
        if self.table.count < max {
            return true;
        }
        let Some(victim) = self.table.early_drop_victim(self.config.seed, tuple) else {
            return false;
        };
        self.destroy(victim, now_ns, now_ns);
        self.stats.early_drop = self.stats.early_drop.wrapping_add(1);
        // Room appears only once the DESTROY got through. With no reliable listener it cannot
        // fail, so the room is there now (the slot waits for the report: see `Life::Dropped`);
        // with one, this packet is dropped and the room comes when the report does.
        if !self.reliable_listener && self.table.entry(victim).life == Life::Destroying {
            self.table.uncount_dropped(victim);
        }
        self.table.count < max
    }
}

impl Entry {
    pub(super) fn cache_event(&mut self, bits: EventBits) {
        if let Some(c) = self.ecache.as_mut() {
            c.cache.insert(bits);
        }
    }
}
