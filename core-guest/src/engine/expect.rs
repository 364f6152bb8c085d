//! Expectations: connections announced before they start, which become RELATED to their master.
//!
//! Userspace (a proxy, an ALG, `conntrack -I expect`) tells the table that a connection with a
//! given tuple is coming — the data channel of an FTP session, the media of a SIP call. The
//! first packet that matches (exactly on the destination side, under a mask on the source side)
//! creates an entry with `EXPECTED` set whose first event is RELATED rather than NEW and names
//! its master. Expectations live for a timeout, die with their master, and are limited by
//! `nf_conntrack_expect_max`.
//!
//! Their events go beyond the 2009 kernel, which sent only new-expectation events and noted that
//! reliability would need a per-expectation cache: here each expectation has one. A NEW that
//! fails is remembered in the expectation's missed bits and carried by its DESTROY; a DESTROY
//! that fails keeps the expectation (counted, out of the lookup) and is retried after a delay —
//! the grace delay under the grace policy, otherwise the kernel worker's 10 ms back-off.

use std::collections::HashMap;

use foldhash::fast::FixedState;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::ecache::{KERNEL_RETRY_NS, Source};
use super::table::Life;
use super::{Delivery, NS_PER_S, Tracker, seconds_left};
use crate::config::RetryPolicy;
use crate::event::{ExpEventBits, MessageKind};
use crate::netlink::consts::{NFNLGRP_CONNTRACK_EXP_DESTROY, NFNLGRP_CONNTRACK_EXP_NEW};
use crate::netlink::event::{ExpectEvent, ExpectEventKind};
use crate::snapshot::{Reader, SnapshotError, Writer};
use crate::timer::TimerWheel;
use crate::tuple::{Addr, Family, L4Tuple, Tuple};

/// Frame groups of expectation events (`NFNLGRP_CONNTRACK_EXP_*`).
pub const GROUP_EXP_NEW: u8 = NFNLGRP_CONNTRACK_EXP_NEW as u8;
pub const GROUP_EXP_DESTROY: u8 = NFNLGRP_CONNTRACK_EXP_DESTROY as u8;

/// An expectation that stays after a connection matched it.
pub const FLAG_PERMANENT: u32 = 1;

/// Which parts of the expected tuple's source must match (the destination always must).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExpectMask {
    pub src_addr: bool,
    pub src_port: bool,
}

/// Why an expectation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectError {
    /// No live entry has the master id.
    UnknownMaster,
    /// `nf_conntrack_expect_max` expectations exist already.
    TableFull,
    /// An expectation for the same tuple exists.
    Exists,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExpLife {
    Free,
    Live,
    Destroying,
    Dying,
}

#[derive(Clone, Debug)]
struct Expectation {
    generation: u32,
    id: u32,
    zone: u16,
    master_slot: u32,
    master_tuple: Tuple,
    tuple: Tuple,
    mask: ExpectMask,
    flags: u32,
    deadline_ns: u64,
    missed: ExpEventBits,
    life: ExpLife,
}

/// The destination half that expected tuples are indexed by.
type ExpKey = (u16, Family, u8, Addr, u16);

fn key_of(zone: u16, t: &Tuple) -> ExpKey {
    let dport = match t.l4 {
        L4Tuple::Ports { dst, .. } => dst,
        _ => 0,
    };
    (zone, t.family, t.proto, t.dst, dport)
}

/// The expectation table.
#[derive(Debug)]
pub(super) struct Expectations {
    slab: Vec<Expectation>,
    free: Vec<u32>,
    index: HashMap<ExpKey, Vec<u32>, FixedState>,
    timers: TimerWheel,
    rng: ChaCha8Rng,
    /// Live plus those whose DESTROY is pending: what `nf_conntrack_expect_max` bounds.
    count: u32,
    live: u32,
    pub(super) stats: ExpectStats,
}

/// Expectation counters, as the kernel names them, plus the table size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpectStats {
    /// Connections created by an expectation.
    pub expect_new: u64,
    /// Expectations created.
    pub expect_create: u64,
    /// Expectations removed (matched, timed out, deleted, or with their master).
    pub expect_delete: u64,
    /// Expectations now (live, or their DESTROY pending).
    pub expectations: u64,
}

impl Expectations {
    pub(super) fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(3);
        Expectations {
            slab: Vec::new(),
            free: Vec::new(),
            index: HashMap::with_hasher(FixedState::with_seed(seed ^ 0x6578_7065_6374_0001)),
            timers: TimerWheel::new(),
            rng,
            count: 0,
            live: 0,
            stats: ExpectStats::default(),
        }
    }

    fn matches(e: &Expectation, t: &Tuple) -> bool {
        let src_port = |t: &Tuple| match t.l4 {
            L4Tuple::Ports { src, .. } => src,
            _ => 0,
        };
        e.life == ExpLife::Live
            && (!e.mask.src_addr || e.tuple.src == t.src)
            && (!e.mask.src_port || src_port(&e.tuple) == src_port(t))
    }
}

impl Tracker {
    /// Announces a connection `tuple` RELATED to the live entry `master_id`, for `timeout_s`
    /// seconds. Returns the expectation's id.
    pub fn expect(
        &mut self,
        now_ns: u64,
        master_id: u32,
        tuple: &Tuple,
        mask: ExpectMask,
        timeout_s: u32,
        flags: u32,
    ) -> Result<u32, ExpectError> {
        self.advance(now_ns);
        let master_slot = match self.table.slot_of(master_id) {
            Some(s) if self.table.entry(s).life == Life::Live => s,
            _ => return Err(ExpectError::UnknownMaster),
        };
        let (zone, master_tuple) = {
            let m = self.table.entry(master_slot);
            (m.zone, m.orig)
        };
        let x = &mut self.expectations;
        if x.count >= self.config.sysctls.expect_max {
            return Err(ExpectError::TableFull);
        }
        let key = key_of(zone, tuple);
        if let Some(list) = x.index.get(&key)
            && list.iter().any(|&s| x.slab[s as usize].tuple == *tuple)
        {
            return Err(ExpectError::Exists);
        }
        let id = loop {
            let c: u32 = x.rng.random();
            if c != 0 && !x.slab.iter().any(|e| e.life != ExpLife::Free && e.id == c) {
                break c;
            }
        };
        let exp = Expectation {
            generation: 0,
            id,
            zone,
            master_slot,
            master_tuple,
            tuple: *tuple,
            mask,
            flags,
            deadline_ns: now_ns.saturating_add(timeout_s as u64 * NS_PER_S),
            missed: ExpEventBits::empty(),
            life: ExpLife::Live,
        };
        let slot = match x.free.pop() {
            Some(s) => {
                let generation = x.slab[s as usize].generation.wrapping_add(1);
                x.slab[s as usize] = Expectation { generation, ..exp };
                s
            }
            None => {
                x.slab.push(exp);
                (x.slab.len() - 1) as u32
            }
        };
        x.index.entry(key).or_default().push(slot);
        x.timers.schedule(slot, x.slab[slot as usize].deadline_ns);
        x.count += 1;
        x.live += 1;
        x.stats.expect_create = x.stats.expect_create.wrapping_add(1);
        self.emit_expect(slot, now_ns, ExpEventBits::NEW);
        Ok(id)
    }

    /// Removes the expectation with this id (`conntrack -D expect`).
    pub fn unexpect(&mut self, now_ns: u64, id: u32) -> bool {
        self.advance(now_ns);
        let found = self
            .expectations
            .slab
            .iter()
            .position(|e| e.life == ExpLife::Live && e.id == id);
        match found {
            Some(slot) => {
                self.remove_expectation(slot as u32, now_ns);
                true
            }
            None => false,
        }
    }

    /// The live expectation `tuple` fulfils in `zone`, consumed (unless permanent): the new
    /// entry becomes EXPECTED with this master tuple.
    pub(super) fn claim_expectation(
        &mut self,
        now_ns: u64,
        zone: u16,
        tuple: &Tuple,
    ) -> Option<Tuple> {
        if self.expectations.live == 0 {
            return None;
        }
        let x = &self.expectations;
        let list = x.index.get(&key_of(zone, tuple))?;
        let slot = *list
            .iter()
            .find(|&&s| Expectations::matches(&x.slab[s as usize], tuple))?;
        let exp = &x.slab[slot as usize];
        let master = exp.master_tuple;
        let permanent = exp.flags & FLAG_PERMANENT != 0;
        self.expectations.stats.expect_new = self.expectations.stats.expect_new.wrapping_add(1);
        if !permanent {
            self.remove_expectation(slot, now_ns);
        }
        Some(master)
    }

    /// Removes every expectation of a master that is ending.
    pub(super) fn remove_expectations_of(&mut self, master_slot: u32, now_ns: u64) {
        if self.expectations.live == 0 {
            return;
        }
        let doomed: Vec<u32> = (0..self.expectations.slab.len() as u32)
            .filter(|&s| {
                let e = &self.expectations.slab[s as usize];
                e.life == ExpLife::Live && e.master_slot == master_slot
            })
            .collect();
        for s in doomed {
            self.remove_expectation(s, now_ns);
        }
    }

    /// Takes a live expectation out of the lookup and sends its DESTROY.
    fn remove_expectation(&mut self, slot: u32, now_ns: u64) {
        let x = &mut self.expectations;
        let e = &mut x.slab[slot as usize];
        e.life = ExpLife::Destroying;
        let key = key_of(e.zone, &e.tuple);
        if let Some(list) = x.index.get_mut(&key) {
            list.retain(|&s| s != slot);
            if list.is_empty() {
                x.index.remove(&key);
            }
        }
        x.timers.cancel(slot);
        x.live -= 1;
        x.stats.expect_delete = x.stats.expect_delete.wrapping_add(1);
        let missed = e.missed;
        self.emit_expect(slot, now_ns, ExpEventBits::DESTROY.union(missed));
    }

    fn free_expectation(&mut self, slot: u32) {
        let x = &mut self.expectations;
        x.timers.cancel(slot);
        let e = &mut x.slab[slot as usize];
        e.life = ExpLife::Free;
        e.generation = e.generation.wrapping_add(1);
        x.count -= 1;
        x.free.push(slot);
    }

    /// Expectation timeouts and DESTROY retries due by `now_ns`.
    pub(super) fn expire_expectations(&mut self, now_ns: u64) {
        if self.expectations.count == 0 {
            return;
        }
        let mut fired = Vec::new();
        self.expectations.timers.expire(now_ns, &mut fired);
        for slot in fired {
            match self.expectations.slab[slot as usize].life {
                ExpLife::Live => self.remove_expectation(slot, now_ns),
                ExpLife::Dying => {
                    self.expectations.slab[slot as usize].life = ExpLife::Destroying;
                    self.stats.destroy_retries = self.stats.destroy_retries.wrapping_add(1);
                    let missed = self.expectations.slab[slot as usize].missed;
                    self.emit_expect(slot, now_ns, ExpEventBits::DESTROY.union(missed));
                }
                ExpLife::Destroying | ExpLife::Free => {}
            }
        }
    }

    /// Applies the outcome of an expectation event.
    pub(super) fn expect_delivery(
        &mut self,
        slot: u32,
        generation: u32,
        bits: ExpEventBits,
        missed_sent: ExpEventBits,
        result: Delivery,
    ) {
        let Some(e) = self.expectations.slab.get_mut(slot as usize) else {
            return;
        };
        if e.generation != generation {
            return;
        }
        match (bits.contains(ExpEventBits::DESTROY), result) {
            (true, Delivery::Delivered) => self.free_expectation(slot),
            (true, Delivery::Failed) => {
                e.life = ExpLife::Dying;
                e.missed.insert(bits.without(ExpEventBits::DESTROY));
                let delay = match self.config.retry_policy {
                    RetryPolicy::Grace => self.grace_delay_ns(),
                    RetryPolicy::Kernel | RetryPolicy::OnDrain => KERNEL_RETRY_NS,
                };
                let at = self.now_ns.saturating_add(delay);
                self.expectations.timers.schedule(slot, at);
            }
            (false, Delivery::Delivered) => e.missed.remove(missed_sent),
            (false, Delivery::Failed) => e.missed.insert(bits),
        }
    }

    /// Queues an expectation event (`ctnetlink_expect_event`'s message).
    fn emit_expect(&mut self, slot: u32, now_ns: u64, bits: ExpEventBits) {
        if self.config.sysctls.events == 0 {
            if bits.contains(ExpEventBits::DESTROY) {
                self.free_expectation(slot);
            }
            return;
        }
        let e = &self.expectations.slab[slot as usize];
        let destroy = bits.contains(ExpEventBits::DESTROY);
        let mask_tuple = {
            let mut m = e.tuple;
            m.src = if e.mask.src_addr {
                Addr([0xff; 16])
            } else {
                Addr::default()
            };
            if let L4Tuple::Ports { dst, .. } = m.l4 {
                m.l4 = L4Tuple::Ports {
                    src: if e.mask.src_port { 0xffff } else { 0 },
                    dst: dst | 0xffff,
                };
            }
            m.dst = Addr([0xff; 16]);
            m
        };
        let event = ExpectEvent {
            kind: if destroy {
                ExpectEventKind::Destroy
            } else {
                ExpectEventKind::New
            },
            master: e.master_tuple,
            tuple: e.tuple,
            mask: mask_tuple,
            timeout_s: seconds_left(e.deadline_ns, now_ns),
            id: e.id,
            zone: e.zone,
            flags: e.flags,
            class: 0,
        };
        let generation = e.generation;
        let missed_sent = e.missed;
        let source = Source::Expectation {
            slot,
            generation,
            bits,
            missed_sent,
        };
        let kind = if destroy {
            MessageKind::Destroy
        } else {
            MessageKind::New
        };
        self.queue(source, kind, now_ns, false, false, |out| {
            event.write_to(out)
        });
    }

    /// Expectation counters.
    pub fn expect_stats(&self) -> ExpectStats {
        let mut s = self.expectations.stats;
        s.expectations = self.expectations.count as u64;
        s
    }
}

impl Expectations {
    pub(super) fn encode(&self, w: &mut Writer) {
        w.u64(self.slab.len() as u64);
        for e in &self.slab {
            w.u32(e.generation);
            w.u32(e.id);
            w.u16(e.zone);
            w.u32(e.master_slot);
            super::snapshot::write_tuple(w, &e.master_tuple);
            super::snapshot::write_tuple(w, &e.tuple);
            w.bool(e.mask.src_addr);
            w.bool(e.mask.src_port);
            w.u32(e.flags);
            w.u64(e.deadline_ns);
            w.u16(e.missed.0);
            w.u8(e.life as u8);
        }
        w.u64(self.free.len() as u64);
        for &f in &self.free {
            w.u32(f);
        }
        self.timers.encode(w);
        w.rng(&self.rng);
        for v in [
            self.stats.expect_new,
            self.stats.expect_create,
            self.stats.expect_delete,
        ] {
            w.u64(v);
        }
    }

    pub(super) fn decode(
        r: &mut Reader<'_>,
        seed: u64,
        entries: usize,
    ) -> Result<Self, SnapshotError> {
        use SnapshotError::Invalid;
        let mut x = Expectations::new(seed);
        let n = r.len()?;
        for _ in 0..n {
            let e = Expectation {
                generation: r.u32()?,
                id: r.u32()?,
                zone: r.u16()?,
                master_slot: r.u32()?,
                master_tuple: super::snapshot::read_tuple(r)?,
                tuple: super::snapshot::read_tuple(r)?,
                mask: ExpectMask {
                    src_addr: r.bool()?,
                    src_port: r.bool()?,
                },
                flags: r.u32()?,
                deadline_ns: r.u64()?,
                missed: ExpEventBits(r.u16()?),
                life: match r.u8()? {
                    0 => ExpLife::Free,
                    1 => ExpLife::Live,
                    2 => ExpLife::Destroying,
                    3 => ExpLife::Dying,
                    _ => return Err(Invalid("expectation state")),
                },
            };
            if e.master_slot as usize >= entries && e.life == ExpLife::Live {
                return Err(Invalid("expectation master"));
            }
            x.slab.push(e);
        }
        let n = r.len()?;
        for _ in 0..n {
            let f = r.u32()?;
            if x.slab
                .get(f as usize)
                .is_none_or(|e| e.life != ExpLife::Free)
            {
                return Err(Invalid("expectation free list"));
            }
            x.free.push(f);
        }
        x.timers = TimerWheel::decode(r, x.slab.len())?;
        x.rng = r.rng()?;
        x.stats.expect_new = r.u64()?;
        x.stats.expect_create = r.u64()?;
        x.stats.expect_delete = r.u64()?;
        for (slot, e) in x.slab.iter().enumerate() {
            match e.life {
                ExpLife::Free => continue,
                ExpLife::Live => {
                    x.live += 1;
                    x.index
                        .entry(key_of(e.zone, &e.tuple))
                        .or_default()
                        .push(slot as u32);
                }
                ExpLife::Destroying | ExpLife::Dying => {}
            }
            x.count += 1;
        }
        Ok(x)
    }
}

impl Expectations {
    pub(super) fn len(&self) -> usize {
        self.slab.len()
    }
}
