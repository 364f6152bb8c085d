//! The table: where entries live and how they are found (the kernel's `nf_conntrack_core.c`
//! minus the per-packet path).
//!
//! Entries sit in a slab and are addressed by slot; a freed slot is reused with a new
//! generation, so a late report about the old entry finds a different generation and is
//! ignored. Two indexes find a live entry: its two tuples (original and reply, inside a zone)
//! and its 32-bit id. The id map keeps dying entries too, because an id stays unique among live
//! and dying entries for the whole life of an entry. `count` is what `nf_conntrack_max` bounds:
//! live entries, and the ones whose DESTROY is out with the host or waiting on the dying list.

use std::collections::HashMap;

use foldhash::fast::FixedState;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::budget::{map_bytes, map_growth, vec_bytes, vec_growth};
use super::ecache::Ecache;
use super::{EntryView, seconds_left};
use crate::event::{EventBits, Status, TcpState};
use crate::netlink::Counters;
use crate::proto::ProtoState;
use crate::tuple::{Direction, L4Tuple, Tuple};

/// Early drop looks at this many entries at most (the kernel scans up to 8 buckets).
const EARLY_DROP_SCAN: usize = 64;

/// "No slot", in the dying list's links.
pub(super) const NIL: u32 = u32::MAX;

/// Where an entry is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Life {
    /// A free slab slot.
    Free,
    /// In the hash table (or being created by the packet in hand).
    Live,
    /// Out of the hash, its DESTROY handed to the host and not yet reported.
    Destroying,
    /// Out of the hash, its DESTROY failed: on the dying list, waiting for a retry.
    Dying,
    /// Evicted by early drop while no listener asked for reliable delivery: out of the hash and
    /// no longer counted against the maximum (the kernel frees such an entry at once, so the
    /// new connection gets its room), but the slot is kept until the host reports the DESTROY.
    /// Should a reliable listener have joined meanwhile and that DESTROY fail, the entry is
    /// counted again and joins the dying list instead of losing its DESTROY.
    Dropped,
}

/// One connection.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Entry {
    pub(super) generation: u32,
    pub(super) orig: Tuple,
    pub(super) zone: u16,
    pub(super) id: u32,
    pub(super) status: Status,
    pub(super) mark: u32,
    pub(super) proto: ProtoState,
    pub(super) counters: [Counters; 2],
    pub(super) start_ns: u64,
    pub(super) stop_ns: u64,
    pub(super) deadline_ns: u64,
    /// The event-cache extension: `None` when events were off when the entry was created.
    pub(super) ecache: Option<Ecache>,
    pub(super) life: Life,
    /// Intrusive dying-list links (slots), see [`super::ecache::DyingList`].
    pub(super) dying_prev: u32,
    pub(super) dying_next: u32,
    /// The master's original tuple, for an entry an expectation created (RELATED).
    pub(super) master: Option<Tuple>,
}

impl Entry {
    /// A new, unconfirmed entry for the first packet of `orig`.
    pub(super) fn new(
        now_ns: u64,
        zone: u16,
        orig: Tuple,
        proto: ProtoState,
        ecache: Option<Ecache>,
    ) -> Entry {
        Entry {
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
        }
    }

    pub(super) fn reply(&self) -> Tuple {
        self.orig.invert().unwrap_or(self.orig)
    }

    /// Failed messages left bits for the next one to carry.
    pub(super) fn has_missed(&self) -> bool {
        self.ecache.is_some_and(|c| !c.missed.is_empty())
    }

    /// Counted against `nf_conntrack_max`: every entry that holds a slot, but a dropped one
    /// (see [`Life::Dropped`]).
    pub(super) fn is_counted(&self) -> bool {
        !matches!(self.life, Life::Free | Life::Dropped)
    }

    /// Confirmed and in the hash.
    pub(super) fn is_live(&self) -> bool {
        self.life == Life::Live && self.status.contains(Status::CONFIRMED)
    }

    pub(super) fn tcp_state(&self) -> Option<TcpState> {
        self.proto.tcp_state()
    }
}

type Index = HashMap<FlowKey, (u32, Direction), FixedState>;

/// What the index is keyed by: a tuple in its zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlowKey(u16, Tuple);

/// Every packet hashes its tuple once, and a new connection three times more; the derived
/// hash feeds the hasher a dozen small pieces (each address with its length, each enum's
/// discriminant, each port), this one five words: the addresses as two words each, the
/// rest packed into one. Equal keys still give equal words, which is all a hash must keep.
impl std::hash::Hash for FlowKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let FlowKey(zone, t) = self;
        let word = |a: &[u8; 16], half: usize| {
            u64::from_le_bytes(a[half * 8..half * 8 + 8].try_into().expect("8 bytes"))
        };
        let l4 = match t.l4 {
            L4Tuple::Ports { src, dst } => u64::from(src) << 16 | u64::from(dst),
            L4Tuple::Icmp { id, kind, code } => {
                1 << 32 | u64::from(id) << 16 | u64::from(kind) << 8 | u64::from(code)
            }
            L4Tuple::None => 2 << 32,
        };
        let rest = l4 | u64::from(t.proto) << 40 | (t.family as u64) << 48 | u64::from(*zone) << 52;
        for w in [
            word(&t.src.0, 0),
            word(&t.src.0, 1),
            word(&t.dst.0, 0),
            word(&t.dst.0, 1),
            rest,
        ] {
            state.write_u64(w);
        }
    }
}

/// The slab, its two indexes and its counts.
#[derive(Debug)]
pub(super) struct Table {
    pub(super) slab: Vec<Entry>,
    pub(super) free: Vec<u32>,
    index: Index,
    ids: HashMap<u32, u32, FixedState>,
    pub(super) id_rng: ChaCha8Rng,
    /// Entries counted against `nf_conntrack_max`: live, destroying and dying.
    pub(super) count: u64,
    /// Live entries whose missed bits wait for the next message (`Stats::missed_pending`), kept
    /// as they change so that `stats` does not walk the table.
    missed_live: u64,
    /// Entries in the hash.
    pub(super) live: u64,
}

impl Table {
    pub(super) fn new(seed: u64) -> Table {
        let mut id_rng = ChaCha8Rng::seed_from_u64(seed);
        id_rng.set_stream(2);
        Table {
            slab: Vec::new(),
            free: Vec::new(),
            index: HashMap::with_hasher(FixedState::with_seed(seed ^ 0x636f_6e6e_7472_6163)),
            ids: HashMap::with_hasher(FixedState::with_seed(seed ^ 0x6964_7300_0000_0001)),
            id_rng,
            count: 0,
            missed_live: 0,
            live: 0,
        }
    }

    pub(super) fn entry(&self, slot: u32) -> &Entry {
        &self.slab[slot as usize]
    }

    pub(super) fn entry_mut(&mut self, slot: u32) -> &mut Entry {
        &mut self.slab[slot as usize]
    }

    /// The live entry `tuple` finds in `zone`, and the direction `tuple` has in it.
    pub(super) fn find(&self, zone: u16, tuple: &Tuple) -> Option<(u32, Direction)> {
        self.index.get(&FlowKey(zone, *tuple)).copied()
    }

    /// The slot of the entry with this id, live or dying.
    pub(super) fn slot_of(&self, id: u32) -> Option<u32> {
        self.ids.get(&id).copied()
    }

    pub(super) fn is_live(&self, slot: u32) -> bool {
        self.entry(slot).is_live()
    }

    /// Makes sure one more entry fits without growing anything past what memory allows: the
    /// slab (by a quarter when doubling is refused), the tuple index and the id map. `false`
    /// when the memory is not there; the caller then refuses the new connection.
    pub(super) fn reserve_one(&mut self) -> bool {
        let slab_ok = !self.free.is_empty()
            || self.slab.try_reserve(1).is_ok()
            || self.slab.try_reserve_exact(self.slab.len() / 4 + 1).is_ok();
        // Every slot may come back to the free list: keep room for all of them, so `release`
        // never has to allocate.
        let free_room = self.slab.capacity().saturating_sub(self.free.len());
        slab_ok
            && self.free.try_reserve(free_room).is_ok()
            && self.index.try_reserve(2).is_ok()
            && self.ids.try_reserve(1).is_ok()
    }

    /// Bytes the table's structures take now (see [`super::budget`]).
    pub(super) fn footprint(&self) -> u64 {
        vec_bytes::<Entry>(self.slab.capacity())
            + vec_bytes::<u32>(self.free.capacity())
            + map_bytes::<FlowKey, (u32, Direction)>(self.index.capacity())
            + map_bytes::<u32, u32>(self.ids.capacity())
    }

    /// Bytes [`Table::reserve_one`] may allocate.
    pub(super) fn growth_for_one(&self) -> u64 {
        let (len, cap) = (self.slab.len(), self.slab.capacity());
        let slab = if self.free.is_empty() {
            let grown = vec_growth::<Entry>(len, cap, 1);
            let new_cap = grown as usize / core::mem::size_of::<Entry>().max(1);
            grown + vec_growth::<u32>(self.free.len(), self.free.capacity(), new_cap)
        } else {
            0
        };
        slab + map_growth::<FlowKey, (u32, Direction)>(self.index.len(), self.index.capacity(), 2)
            + map_growth::<u32, u32>(self.ids.len(), self.ids.capacity(), 1)
    }

    /// Takes a slot for a new, not yet confirmed entry; it counts from now on.
    pub(super) fn allocate(&mut self, entry: Entry) -> u32 {
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

    /// Stops counting an early-dropped entry whose DESTROY is on its way (see [`Life::Dropped`]).
    pub(super) fn uncount_dropped(&mut self, slot: u32) {
        let e = &mut self.slab[slot as usize];
        debug_assert_eq!(e.life, Life::Destroying);
        e.life = Life::Dropped;
        self.count -= 1;
    }

    /// Counts a dropped entry again: its DESTROY failed and it is about to wait on the dying
    /// list.
    pub(super) fn recount_dropped(&mut self, slot: u32) {
        let e = &mut self.slab[slot as usize];
        debug_assert_eq!(e.life, Life::Dropped);
        e.life = Life::Destroying;
        self.count += 1;
    }

    /// Gives a slot back: an unconfirmed entry that turned out invalid, or one whose DESTROY
    /// got through. Reports still on their way about it will find a new generation.
    /// `missed_live` is not touched: an unconfirmed entry has no missed bits, and a confirmed
    /// one left it when it was unhashed.
    pub(super) fn release(&mut self, slot: u32) {
        let e = &mut self.slab[slot as usize];
        if e.id != 0 {
            self.ids.remove(&e.id);
            e.id = 0;
        }
        e.generation = e.generation.wrapping_add(1);
        e.ecache = None;
        if e.is_counted() {
            self.count -= 1;
        }
        e.life = Life::Free;
        self.free.push(slot);
    }

    /// Puts a new entry into the hash under both tuples, with a fresh id unique among live and
    /// dying entries.
    pub(super) fn insert(&mut self, slot: u32) {
        let id = loop {
            let candidate: u32 = self.id_rng.random();
            if candidate != 0 && !self.ids.contains_key(&candidate) {
                break candidate;
            }
        };
        self.ids.insert(id, slot);
        let e = &mut self.slab[slot as usize];
        e.id = id;
        let (zone, orig, reply) = (e.zone, e.orig, e.reply());
        self.index
            .insert(FlowKey(zone, orig), (slot, Direction::Original));
        self.index
            .insert(FlowKey(zone, reply), (slot, Direction::Reply));
        self.live += 1;
    }

    /// Takes a live entry out of the hash; it keeps its slot, id and count.
    pub(super) fn unhash(&mut self, slot: u32) {
        let e = &self.slab[slot as usize];
        let (zone, orig, reply) = (e.zone, e.orig, e.reply());
        self.missed_live -= u64::from(e.has_missed());
        self.index.remove(&FlowKey(zone, orig));
        self.index.remove(&FlowKey(zone, reply));
        self.live -= 1;
    }

    /// An entry early drop may evict to make room for `tuple`: a live one that is not ASSURED
    /// (or TCP in a closing state), found in a window of the table that the new tuple's hash
    /// picks, as the kernel scans the buckets after the new tuple's.
    pub(super) fn early_drop_victim(&self, seed: u64, tuple: &Tuple) -> Option<u32> {
        if self.slab.is_empty() {
            return None;
        }
        let start = (portable_hash(seed, tuple) % self.slab.len() as u64) as usize;
        (0..EARLY_DROP_SCAN.min(self.slab.len()))
            .map(|i| ((start + i) % self.slab.len()) as u32)
            .find(|&slot| {
                let e = self.entry(slot);
                e.is_live() && (!e.status.contains(Status::ASSURED) || e.proto.can_early_drop())
            })
    }

    /// The entry as `conntrack -L` shows it.
    pub(super) fn view(&self, e: &Entry, now_ns: u64) -> EntryView {
        EntryView {
            id: e.id,
            zone: e.zone,
            orig: e.orig,
            reply: e.reply(),
            status: e.status,
            tcp_state: e.tcp_state(),
            sctp_state: e.proto.sctp_state(),
            timeout_s: if e.life == Life::Live {
                seconds_left(e.deadline_ns, now_ns)
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

    /// Live entries carrying undelivered event bits.
    pub(super) fn missed_pending(&self) -> u64 {
        debug_assert!(
            self.slab.len() > 100_000 || self.missed_live == self.count_missed_live(),
            "the missed_pending counter drifted"
        );
        self.missed_live
    }

    /// Walks the table for what `missed_live` counts (restores, and checks in debug builds of
    /// small tables).
    fn count_missed_live(&self) -> u64 {
        self.slab
            .iter()
            .filter(|e| e.life == Life::Live && e.has_missed())
            .count() as u64
    }

    /// Changes the missed bits of the entry in `slot` with `change`, keeping `missed_live`.
    pub(super) fn update_missed(&mut self, slot: u32, change: impl FnOnce(&mut EventBits)) {
        let e = &mut self.slab[slot as usize];
        let Some(c) = e.ecache.as_mut() else {
            return;
        };
        let before = !c.missed.is_empty();
        change(&mut c.missed);
        let after = !c.missed.is_empty();
        if e.life == Life::Live {
            self.missed_live = self.missed_live + u64::from(after) - u64::from(before);
        }
    }

    /// Rebuilds both indexes from the slab (after a restore); `Err` names what is inconsistent.
    /// Returns the number of live, counted and dying entries.
    pub(super) fn reindex(&mut self) -> Result<(u64, u64, u64), &'static str> {
        let (mut live, mut counted, mut dying) = (0u64, 0u64, 0u64);
        self.index.clear();
        self.ids.clear();
        for (slot, e) in self.slab.iter().enumerate() {
            let slot = slot as u32;
            if e.life == Life::Free {
                continue;
            }
            counted += u64::from(e.is_counted());
            if e.id == 0 || self.ids.insert(e.id, slot).is_some() {
                return Err("entry ids");
            }
            match e.life {
                Life::Live => {
                    live += 1;
                    let orig = self
                        .index
                        .insert(FlowKey(e.zone, e.orig), (slot, Direction::Original));
                    let reply = self
                        .index
                        .insert(FlowKey(e.zone, e.reply()), (slot, Direction::Reply));
                    // A self-addressed packet (`a:p -> a:p`) makes an entry whose reply tuple is
                    // its original: one key, the reply direction, as `insert` leaves it.
                    if orig.is_some() || reply.is_some_and(|(other, _)| other != slot) {
                        return Err("tuples (two entries with one tuple)");
                    }
                }
                Life::Dying => dying += 1,
                Life::Destroying | Life::Dropped | Life::Free => {}
            }
        }
        self.missed_live = self.count_missed_live();
        Ok((live, counted, dying))
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
