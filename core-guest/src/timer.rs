//! A hierarchical timer wheel: deadlines for entries and dying-list retries.
//!
//! A conntrack table refreshes a deadline on almost every packet and expires entries in bulk, so
//! both must cost the same whatever the table holds: here an insert, a move and a removal are
//! O(1) (each timer remembers its slot and its neighbours there), and expiring walks only slots that hold due
//! timers. Six levels of 64 slots with a 2^20 ns (≈1 ms) tick reach about 2^56 ns (≈2.3 years);
//! later deadlines are parked in the last level and re-filed when their slot comes round.
//!
//! Timers are keyed by a `u32` handle (the engine's slab index). The wheel keeps per-handle
//! positions in a side array, so the engine's entries stay free of wheel bookkeeping. Each slot
//! is a list linked through those positions: once a handle's position exists, scheduling,
//! moving and expiring it never allocate, so a tracker at its memory limit keeps its timers.

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
/// log2 of the tick length in nanoseconds.
pub const TICK_SHIFT: u32 = 20;

/// "No handle": the end of a slot's list.
const NIL: u32 = u32::MAX;

/// Where a handle's timer is: its slot, its neighbours in the slot's list, its deadline.
#[derive(Clone, Copy, Debug)]
struct Position {
    scheduled: bool,
    level: u8,
    slot: u8,
    prev: u32,
    next: u32,
    deadline_ns: u64,
}

// Same size natively and in the guest: the tracker's memory budget counts positions.
const _: () = assert!(core::mem::size_of::<Position>() == 24);

const UNSCHEDULED: Position = Position {
    scheduled: false,
    level: 0,
    slot: 0,
    prev: NIL,
    next: NIL,
    deadline_ns: 0,
};

/// A slot: the first and last handle of its list, oldest first.
#[derive(Clone, Copy, Debug)]
struct Slot {
    head: u32,
    tail: u32,
}

const EMPTY: Slot = Slot {
    head: NIL,
    tail: NIL,
};

/// The wheel. `elapsed` is the tick up to which every slot before it has been processed.
#[derive(Clone, Debug)]
pub struct TimerWheel {
    slots: Vec<Slot>,
    occupied: [u64; LEVELS],
    positions: Vec<Position>,
    elapsed: u64,
    len: usize,
    /// An instant up to which [`TimerWheel::expire`] has nothing to do: it ran at this instant,
    /// and no timer due by then was filed since. A tracker expires before every packet, and
    /// most packets come at an instant it has expired at already; then the walk is skipped.
    settled_ns: Option<u64>,
}

impl Default for TimerWheel {
    fn default() -> Self {
        Self::new()
    }
}

fn tick_of(ns: u64) -> u64 {
    ns >> TICK_SHIFT
}

fn level_for(elapsed: u64, when: u64) -> usize {
    // The highest bit in which `when` differs from `elapsed` picks the level, so a timer always
    // sits in a slot the wheel has not passed yet.
    let masked = (elapsed ^ when) | (SLOTS as u64 - 1);
    let significant = 63 - masked.leading_zeros();
    ((significant / SLOT_BITS) as usize).min(LEVELS - 1)
}

fn slot_for(when: u64, level: usize) -> usize {
    ((when >> (level as u32 * SLOT_BITS)) as usize) & (SLOTS - 1)
}

impl TimerWheel {
    pub fn new() -> Self {
        TimerWheel {
            slots: vec![EMPTY; LEVELS * SLOTS],
            occupied: [0; LEVELS],
            positions: Vec::new(),
            elapsed: 0,
            len: 0,
            settled_ns: None,
        }
    }

    /// Number of timers scheduled.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The deadline of `handle`, if scheduled.
    pub fn deadline(&self, handle: u32) -> Option<u64> {
        match self.positions.get(handle as usize) {
            Some(p) if p.scheduled => Some(p.deadline_ns),
            _ => None,
        }
    }

    /// Makes room for handles below `handles` without growing past what memory allows; `false`
    /// when the memory is not there.
    pub fn reserve(&mut self, handles: usize) -> bool {
        let more = handles.saturating_sub(self.positions.len());
        self.positions.try_reserve(more).is_ok()
    }

    /// Bytes the per-handle positions take, and what room for handles below `handles` would
    /// allocate: `(now, growth)`.
    pub fn footprint(&self, handles: usize) -> (u64, u64) {
        let size = core::mem::size_of::<Position>();
        let now = (self.positions.capacity() * size) as u64;
        let growth = if handles <= self.positions.capacity() {
            0
        } else {
            (handles.max(self.positions.capacity() * 2) * size) as u64
        };
        (now, growth)
    }

    /// Schedules `handle` at `deadline_ns`, moving it if it was scheduled already.
    pub fn schedule(&mut self, handle: u32, deadline_ns: u64) {
        if self
            .settled_ns
            .is_some_and(|settled| deadline_ns <= settled)
        {
            self.settled_ns = None;
        }
        let h = handle as usize;
        if h >= self.positions.len() {
            self.positions.resize(h + 1, UNSCHEDULED);
        }
        // Deadlines past the wheel's reach are filed half a last-level round ahead and re-filed
        // when that slot comes round, so a slot is never revisited at the same instant.
        let when = tick_of(deadline_ns).clamp(self.elapsed, self.elapsed + (1 << 35));
        let level = level_for(self.elapsed, when);
        let slot = slot_for(when, level);
        let p = self.positions[h];
        if p.scheduled {
            if p.level as usize == level && p.slot as usize == slot {
                self.positions[h].deadline_ns = deadline_ns;
                return;
            }
            self.unlink(handle);
        }
        self.link(handle, level, slot, deadline_ns);
    }

    /// Removes `handle`'s timer, if any.
    pub fn cancel(&mut self, handle: u32) {
        if self.deadline(handle).is_some() {
            self.unlink(handle);
        }
    }

    /// Appends `handle` to the slot's list.
    fn link(&mut self, handle: u32, level: usize, slot: usize, deadline_ns: u64) {
        let at = level * SLOTS + slot;
        let tail = self.slots[at].tail;
        self.positions[handle as usize] = Position {
            scheduled: true,
            level: level as u8,
            slot: slot as u8,
            prev: tail,
            next: NIL,
            deadline_ns,
        };
        if tail == NIL {
            self.slots[at].head = handle;
        } else {
            self.positions[tail as usize].next = handle;
        }
        self.slots[at].tail = handle;
        self.occupied[level] |= 1 << slot;
        self.len += 1;
    }

    fn unlink(&mut self, handle: u32) {
        let p = self.positions[handle as usize];
        let at = p.level as usize * SLOTS + p.slot as usize;
        if p.prev == NIL {
            self.slots[at].head = p.next;
        } else {
            self.positions[p.prev as usize].next = p.next;
        }
        if p.next == NIL {
            self.slots[at].tail = p.prev;
        } else {
            self.positions[p.next as usize].prev = p.prev;
        }
        if self.slots[at].head == NIL {
            self.occupied[p.level as usize] &= !(1 << p.slot);
        }
        self.positions[handle as usize] = Position {
            deadline_ns: p.deadline_ns,
            ..UNSCHEDULED
        };
        self.len -= 1;
    }

    /// The handles of a slot's list, oldest first.
    fn list(&self, at: usize) -> impl Iterator<Item = u32> + '_ {
        let mut next = self.slots[at].head;
        core::iter::from_fn(move || {
            let h = next;
            (h != NIL).then(|| {
                next = self.positions[h as usize].next;
                h
            })
        })
    }

    /// The earliest occupied slot: `(level, slot, first tick it covers)`.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        for level in 0..LEVELS {
            let occupied = self.occupied[level];
            if occupied == 0 {
                continue;
            }
            let shift = level as u32 * SLOT_BITS;
            let position = slot_for(self.elapsed, level);
            // Slots before `position` belong to the next round of this level; only the last
            // level can hold those (deadlines beyond its range).
            let ahead = occupied >> position << position;
            let (slot, round) = if ahead != 0 {
                (ahead.trailing_zeros() as usize, 0u64)
            } else {
                (occupied.trailing_zeros() as usize, 1u64)
            };
            let window = shift + SLOT_BITS;
            let base = if window >= 64 {
                0
            } else {
                (self.elapsed >> window) << window
            };
            let round_len = if window >= 64 { 0 } else { 1u64 << window };
            let start = base + round * round_len + ((slot as u64) << shift);
            return Some((level, slot, start.max(self.elapsed)));
        }
        None
    }

    /// A lower bound of the next deadline: no timer fires before it. Calling
    /// [`TimerWheel::expire`] at this instant either fires timers or refines the bound.
    pub fn next_deadline(&self) -> Option<u64> {
        let (level, slot, start) = self.next_slot()?;
        if level == 0 {
            // One tick: the exact earliest deadline is cheap to find.
            self.list(slot)
                .map(|h| self.positions[h as usize].deadline_ns)
                .min()
        } else {
            // Saturating: a slot of the last rounds before the clock ends starts past u64::MAX ns.
            Some(start.saturating_mul(1 << TICK_SHIFT))
        }
    }

    /// Removes and returns (in `fired`) every timer whose deadline is at or before `now_ns`,
    /// in deadline-tick order (handles within one tick in scheduling order).
    pub fn expire(&mut self, now_ns: u64, fired: &mut Vec<u32>) {
        // What follows would fire nothing and leave every list as it is: the slots it would
        // still walk hold only timers not yet due, which it files back in their order.
        if self.settled_ns.is_some_and(|settled| now_ns <= settled) {
            return;
        }
        let now = tick_of(now_ns);
        while let Some((level, slot, start)) = self.next_slot() {
            if start > now {
                break;
            }
            self.elapsed = start;
            // Detach the slot's list and walk it: each timer fires or is re-filed one level
            // down (never into this slot, which the wheel has now passed).
            let at = level * SLOTS + slot;
            let mut next = core::mem::replace(&mut self.slots[at], EMPTY).head;
            self.occupied[level] &= !(1 << slot);
            let fire_all = level == 0 && start < now;
            while next != NIL {
                let h = next;
                let p = self.positions[h as usize];
                next = p.next;
                self.positions[h as usize] = Position {
                    deadline_ns: p.deadline_ns,
                    ..UNSCHEDULED
                };
                self.len -= 1;
                if fire_all || p.deadline_ns <= now_ns {
                    fired.push(h);
                } else {
                    self.schedule(h, p.deadline_ns);
                }
            }
            if fire_all {
                continue;
            }
            if level == 0 {
                // What is left in the current tick is not due yet, and nothing later can be.
                break;
            }
        }
        self.elapsed = self.elapsed.max(now);
        self.settled_ns = Some(now_ns);
    }
}

impl TimerWheel {
    /// Writes the wheel slot by slot, keeping the order timers fire in within a tick.
    pub(crate) fn encode(&self, w: &mut crate::snapshot::Writer) {
        w.u64(self.elapsed);
        for at in 0..self.slots.len() {
            w.u64(self.list(at).count() as u64);
            for h in self.list(at) {
                w.u32(h);
                w.u64(self.positions[h as usize].deadline_ns);
            }
        }
    }

    /// Whether the wheel has not run past `now_ns` (its clock moves only when a call with a
    /// later instant visits a slot): a restored wheel ahead of its tracker would hold back
    /// every timer until the tracker caught up.
    pub(crate) fn is_not_ahead_of(&self, now_ns: u64) -> bool {
        self.elapsed <= tick_of(now_ns)
    }

    /// Reads a wheel written by [`TimerWheel::encode`]; every handle must be below `handles`
    /// and appear once.
    pub(crate) fn decode(
        r: &mut crate::snapshot::Reader<'_>,
        handles: usize,
    ) -> Result<TimerWheel, crate::snapshot::SnapshotError> {
        use crate::snapshot::SnapshotError::Invalid;
        let mut wheel = TimerWheel::new();
        wheel.elapsed = r.u64()?;
        if wheel.elapsed > tick_of(u64::MAX) {
            return Err(Invalid("timer wheel's clock"));
        }
        wheel.positions = vec![UNSCHEDULED; handles];
        for i in 0..LEVELS * SLOTS {
            let n = r.len()?;
            for _ in 0..n {
                let h = r.u32()?;
                let deadline_ns = r.u64()?;
                let p = wheel
                    .positions
                    .get(h as usize)
                    .ok_or(Invalid("timer handle"))?;
                if p.scheduled {
                    return Err(Invalid("timer wheel (a timer twice)"));
                }
                wheel.link(h, i / SLOTS, i % SLOTS, deadline_ns);
            }
        }
        Ok(wheel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    #[test]
    fn fires_in_order_and_not_early() {
        let mut w = TimerWheel::new();
        w.schedule(1, 30 * S);
        w.schedule(2, 5 * MS);
        w.schedule(3, 432_000 * S);
        let mut fired = Vec::new();
        w.expire(4 * MS, &mut fired);
        assert!(fired.is_empty());
        w.expire(29 * S, &mut fired);
        assert_eq!(fired, [2]);
        fired.clear();
        w.expire(30 * S, &mut fired);
        assert_eq!(fired, [1]);
        fired.clear();
        w.expire(432_000 * S - 1, &mut fired);
        assert!(fired.is_empty());
        assert!(w.next_deadline().unwrap() <= 432_000 * S);
        w.expire(432_000 * S, &mut fired);
        assert_eq!(fired, [3]);
        assert!(w.is_empty());
    }

    #[test]
    fn moving_and_cancelling_keep_positions_right() {
        let mut w = TimerWheel::new();
        for h in 0..10 {
            w.schedule(h, 10 * S);
        }
        w.schedule(3, S);
        w.cancel(5);
        w.schedule(7, 20 * S);
        let mut fired = Vec::new();
        w.expire(10 * S, &mut fired);
        fired.sort();
        assert_eq!(fired, [0, 1, 2, 3, 4, 6, 8, 9]);
        assert_eq!(w.deadline(7), Some(20 * S));
        assert_eq!(w.len(), 1);
    }

    proptest! {
        /// Against a plain list: the same timers fire at the same `expire` calls, and the
        /// next-deadline bound is never later than the real earliest deadline.
        #[test]
        fn matches_a_naive_model(ops in proptest::collection::vec((0u32..40, 0u64..(3 * 3600 * S), 0u8..4), 1..200)) {
            let mut w = TimerWheel::new();
            let mut model: std::collections::BTreeMap<u32, u64> = Default::default();
            let mut now = 0u64;
            for (h, delta, op) in ops {
                match op {
                    0 | 1 => { w.schedule(h, now + delta); model.insert(h, now + delta); }
                    2 => { w.cancel(h); model.remove(&h); }
                    _ => {
                        now += delta / 64;
                        if let Some(min) = model.values().min() {
                            prop_assert!(w.next_deadline().unwrap() <= *min);
                        }
                        let mut fired = Vec::new();
                        w.expire(now, &mut fired);
                        fired.sort();
                        let due: Vec<u32> = model.iter().filter(|(_, d)| **d <= now).map(|(h, _)| *h).collect();
                        model.retain(|_, d| *d > now);
                        prop_assert_eq!(fired, due);
                    }
                }
                prop_assert_eq!(w.len(), model.len());
            }
        }

        /// Skipping an `expire` at an instant the wheel has settled changes nothing: a wheel
        /// that forgets it settled before every `expire` fires the same timers in the same
        /// order and holds the same lists, whatever is filed in between (deadlines at, before
        /// and just after the instant included).
        #[test]
        fn a_skipped_expire_is_one_that_would_have_done_nothing(
            ops in proptest::collection::vec((0u32..40, 0u64..(2 * S), 0u8..6), 1..300)
        ) {
            let (mut fast, mut full) = (TimerWheel::new(), TimerWheel::new());
            let mut now = 0u64;
            let bytes = |w: &TimerWheel| {
                let mut out = crate::snapshot::Writer::default();
                w.encode(&mut out);
                out.buf
            };
            for (h, delta, op) in ops {
                match op {
                    0 => {
                        for w in [&mut fast, &mut full] {
                            w.schedule(h, now + delta);
                        }
                    }
                    // Due at the instant, or a little before or after it.
                    1 => {
                        let at = (now + delta % 3).saturating_sub(1);
                        for w in [&mut fast, &mut full] {
                            w.schedule(h, at);
                        }
                    }
                    2 => {
                        for w in [&mut fast, &mut full] {
                            w.cancel(h);
                        }
                    }
                    // Again at the same instant, or a step on.
                    _ => {
                        if op == 5 {
                            now += delta;
                        }
                        let (mut a, mut b) = (Vec::new(), Vec::new());
                        fast.expire(now, &mut a);
                        full.settled_ns = None;
                        full.expire(now, &mut b);
                        prop_assert_eq!(a, b);
                    }
                }
                prop_assert!(bytes(&fast) == bytes(&full));
            }
        }
    }
}
