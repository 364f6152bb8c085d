//! The event cache and reliable delivery (the kernel's `nf_conntrack_ecache.c`, and the seed).
//!
//! Each entry carries an [`Ecache`] extension: the bits the packet in hand raised, and the
//! *missed* bits of messages that failed. At the end of a packet those bits become at most one
//! message ([`Tracker::deliver_cached`]). Messages wait in the [`Outbox`] until the host takes
//! them and come back, in order, as delivered or failed ([`Tracker::apply_delivery`]):
//! - a failed message ORs its bits into the entry's missed bits, so the next message carries
//!   them; a delivered one clears the missed bits it carried;
//! - an ending entry leaves the hash at once and sends a DESTROY; if that fails, the entry goes
//!   to the [`DyingList`], still counted against `nf_conntrack_max`, and the retry policy sends
//!   the DESTROY again until a listener has it: after a random grace delay (the seed), through
//!   the kernel's retry worker ([`RetryWorker`], 16 entries a run, 10 ms back-off), or when the
//!   host says its listeners drained.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::expect::{GROUP_EXP_DESTROY, GROUP_EXP_NEW};
use super::outbox::Outbox;
use super::table::{Life, NIL};
use super::{Delivery, NS_PER_S, Tracker};
use crate::batch;
use crate::config::RetryPolicy;
use crate::event::{EventBits, ExpEventBits, MessageKind};

/// Modern kernel worker: first retry one second after the first failure.
const KERNEL_FIRST_RETRY_NS: u64 = NS_PER_S;
/// Modern kernel worker: back-off while the listener stays congested (`ECACHE_RETRY_JIFFIES`).
pub(super) const KERNEL_RETRY_NS: u64 = 10_000_000;
/// DESTROYs one worker run sends before waiting for their outcomes (the 4.x batch size).
const WORKER_BATCH: usize = 16;

/// The per-entry event-cache extension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Ecache {
    /// Bits raised by the packet being processed.
    pub(super) cache: EventBits,
    /// Bits of messages that failed, to be carried by the next one.
    pub(super) missed: EventBits,
}

/// What a message is about, and the bits it carried in that thing's own bit space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// An entry of the table.
    Entry {
        slot: u32,
        generation: u32,
        bits: EventBits,
        /// The missed bits it carried (cleared from the entry if it gets through).
        missed_sent: EventBits,
    },
    /// An expectation.
    Expectation {
        slot: u32,
        generation: u32,
        bits: ExpEventBits,
        missed_sent: ExpEventBits,
    },
}

impl Source {
    /// The netlink group a message of `kind` about this source goes to, and the bits its frame
    /// carries: an expectation's are its own (`IPEXP_*`), and its messages go to the
    /// expectation groups.
    pub(super) fn group_and_bits(&self, kind: MessageKind) -> (u8, EventBits) {
        match *self {
            Source::Entry { bits, .. } => (kind.group(), bits),
            Source::Expectation { bits, .. } => {
                let group = match kind {
                    MessageKind::Destroy => GROUP_EXP_DESTROY,
                    MessageKind::New | MessageKind::Update => GROUP_EXP_NEW,
                };
                (group, EventBits(bits.0))
            }
        }
    }
}

/// A message produced and not yet reported.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pending {
    pub(super) source: Source,
    pub(super) kind: MessageKind,
    /// Sent by the dying-list worker (kernel and on-drain policies).
    pub(super) from_worker: bool,
    /// Where the frame's bytes are in the [`Outbox`] (fixed-width, so that a `Pending` has the
    /// same size natively and in the guest, which the memory budget relies on).
    pub(super) start: u64,
    pub(super) len: u32,
}

/// Entries whose DESTROY failed, oldest first. The links live in the entries (`dying_prev`,
/// `dying_next`), so joining and leaving cost O(1) and nothing is allocated.
#[derive(Clone, Copy, Debug)]
pub(super) struct DyingList {
    pub(super) head: u32,
    pub(super) tail: u32,
    pub(super) len: u64,
}

impl Default for DyingList {
    fn default() -> Self {
        DyingList {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

/// The kernel's retry worker (kernel and on-drain policies): when it runs next, and how many
/// of the DESTROYs it sent still wait for their outcome (it waits for all before running again).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RetryWorker {
    pub(super) at: Option<u64>,
    pub(super) in_flight: usize,
}

impl RetryWorker {
    fn schedule(&mut self, at: u64) {
        self.at = Some(self.at.map_or(at, |t| t.min(at)));
    }

    pub(super) fn idle(&self) -> bool {
        self.at.is_none() && self.in_flight == 0
    }

    /// When the worker may next run.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.at.filter(|_| self.in_flight == 0)
    }

    /// Whether it is due at `now_ns`; if so it counts as started.
    fn start_if_due(&mut self, now_ns: u64) -> bool {
        let due = self.next_deadline().is_some_and(|at| at <= now_ns);
        if due {
            self.at = None;
        }
        due
    }
}

/// The event machinery of one tracker.
#[derive(Debug)]
pub(super) struct EventCache {
    pub(super) outbox: Outbox,
    pub(super) dying: DyingList,
    pub(super) worker: RetryWorker,
    /// Draws the grace delays.
    pub(super) grace_rng: ChaCha8Rng,
}

impl EventCache {
    pub(super) fn new(seed: u64) -> EventCache {
        let mut grace_rng = ChaCha8Rng::seed_from_u64(seed);
        grace_rng.set_stream(1);
        EventCache {
            outbox: Outbox::default(),
            dying: DyingList::default(),
            worker: RetryWorker::default(),
            grace_rng,
        }
    }
}

impl Tracker {
    /// Ends a live entry: out of the hash at once, DYING, and its DESTROY into the outbox. The
    /// entry keeps its slot (and counts against the maximum) until the DESTROY is delivered.
    pub(super) fn destroy(&mut self, slot: u32, now_ns: u64, stop_ns: u64) {
        self.remove_expectations_of(slot, now_ns);
        self.timers.cancel(slot);
        self.table.unhash(slot);
        let e = self.table.entry_mut(slot);
        debug_assert_eq!(e.life, Life::Live);
        e.status.insert(crate::event::Status::DYING);
        e.stop_ns = stop_ns;
        if e.ecache.is_some() && self.config.sysctls.events != 0 {
            e.life = Life::Destroying;
            self.queue_destroy(slot, now_ns, false, false);
        } else {
            self.release(slot);
        }
    }

    /// Gives a slot back to the table, with its timer.
    pub(super) fn release(&mut self, slot: u32) {
        self.timers.cancel(slot);
        self.table.release(slot);
    }

    fn queue_destroy(&mut self, slot: u32, now_ns: u64, from_worker: bool, redelivery: bool) {
        let missed = self.table.entry(slot).ecache.unwrap_or_default().missed;
        let bits = EventBits::DESTROY.union(missed);
        self.emit(slot, now_ns, bits, missed, from_worker, redelivery);
    }

    /// Sends the bits cached while this packet was processed, plus the missed ones.
    pub(super) fn deliver_cached(&mut self, slot: u32, now_ns: u64) {
        let events_on = self.config.sysctls.events != 0;
        let Some(c) = self.table.entry_mut(slot).ecache.as_mut() else {
            return;
        };
        let cache = core::mem::take(&mut c.cache);
        let missed = c.missed;
        if !events_on || (cache.is_empty() && missed.is_empty()) {
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
        let e = self.table.entry(slot);
        let source = Source::Entry {
            slot,
            generation: e.generation,
            bits,
            missed_sent,
        };
        if !self.listener_present {
            // What `queue` would do, without reading the entry into a message first.
            self.settle(source, kind, from_worker, Delivery::Delivered);
            return;
        }
        let event = e.event(kind, bits, now_ns, &self.config.sysctls);
        self.queue(source, kind, now_ns, redelivery, from_worker, |out| {
            event.write_to(out)
        });
    }

    /// Frames a message written by `write` and queues it; a redelivery is flagged so in its
    /// frame.
    pub(super) fn queue(
        &mut self,
        source: Source,
        kind: MessageKind,
        now_ns: u64,
        redelivery: bool,
        from_worker: bool,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        if !self.listener_present {
            // Nobody listens: the kernel's ctnetlink returns at once and the event counts as
            // delivered, so nothing waits on a host that will not take it.
            self.settle(source, kind, from_worker, Delivery::Delivered);
            return;
        }
        if !self.within_budget(|| self.ecache.outbox.footprint().1)
            || !self.ecache.outbox.reserve_one()
        {
            // The outbox cannot grow inside the memory limit: the message fails as if a
            // listener's buffer were full (a reliable listener's DESTROY is retried later; other
            // listeners lose it, as they would on ENOBUFS).
            self.stats.events_failed = self.stats.events_failed.wrapping_add(1);
            let result = if self.reliable_listener {
                Delivery::Failed
            } else {
                Delivery::Delivered
            };
            self.settle(source, kind, from_worker, result);
            return;
        }
        let (group, bits) = source.group_and_bits(kind);
        let flags = if redelivery {
            batch::EVENT_FLAG_REDELIVERY
        } else {
            0
        };
        self.ecache.outbox.push(
            |out| {
                let frame = batch::begin_event(out, bits, group, flags, now_ns);
                write(out);
                batch::finish_event(out, frame);
            },
            |start, len| Pending {
                source,
                kind,
                from_worker,
                start,
                len,
            },
        );
        if from_worker {
            self.ecache.worker.in_flight += 1;
        }
        self.stats.events_emitted = self.stats.events_emitted.wrapping_add(1);
    }

    /// Applies the outcomes of taken messages, oldest first. Extra outcomes are ignored.
    pub(super) fn apply_delivery(&mut self, results: &[Delivery]) {
        for &result in results {
            let Some(p) = self.ecache.outbox.in_flight.pop_front() else {
                break;
            };
            if p.from_worker {
                self.ecache.worker.in_flight -= 1;
            }
            match result {
                Delivery::Delivered => {
                    self.stats.events_delivered = self.stats.events_delivered.wrapping_add(1)
                }
                Delivery::Failed => {
                    self.stats.events_failed = self.stats.events_failed.wrapping_add(1)
                }
            }
            self.settle(p.source, p.kind, p.from_worker, result);
        }
    }

    /// Applies the outcome of one message to what it was about.
    fn settle(&mut self, source: Source, kind: MessageKind, from_worker: bool, result: Delivery) {
        match source {
            Source::Expectation {
                slot,
                generation,
                bits,
                missed_sent,
            } => self.expect_delivery(slot, generation, bits, missed_sent, result),
            Source::Entry {
                slot,
                generation,
                bits,
                missed_sent,
            } => {
                if self.table.entry(slot).generation == generation {
                    self.entry_delivery(slot, kind, bits, missed_sent, from_worker, result);
                }
            }
        }
    }

    fn entry_delivery(
        &mut self,
        slot: u32,
        kind: MessageKind,
        bits: EventBits,
        missed_sent: EventBits,
        from_worker: bool,
        result: Delivery,
    ) {
        match (kind, result) {
            (MessageKind::Destroy, Delivery::Delivered) => {
                self.release(slot);
                self.after_destroy_sent();
            }
            (MessageKind::Destroy, Delivery::Failed) => {
                if self.table.entry(slot).life == Life::Dropped {
                    self.table.recount_dropped(slot);
                }
                self.table
                    .update_missed(slot, |m| m.insert(bits.without(EventBits::DESTROY)));
                self.dying_push(slot);
                self.after_destroy_failed(slot, from_worker);
            }
            (_, Delivery::Delivered) => self.table.update_missed(slot, |m| m.remove(missed_sent)),
            (_, Delivery::Failed) => {
                if self.table.entry(slot).life == Life::Live {
                    self.table.update_missed(slot, |m| m.insert(bits));
                }
            }
        }
    }

    fn dying_push(&mut self, slot: u32) {
        let list = &mut self.ecache.dying;
        let tail = list.tail;
        let e = self.table.entry_mut(slot);
        e.life = Life::Dying;
        e.dying_prev = tail;
        e.dying_next = NIL;
        if tail == NIL {
            list.head = slot;
        } else {
            self.table.entry_mut(tail).dying_next = slot;
        }
        list.tail = slot;
        list.len += 1;
        self.stats.dying_peak = self.stats.dying_peak.max(list.len);
    }

    fn dying_unlink(&mut self, slot: u32) {
        let list = &mut self.ecache.dying;
        let e = self.table.entry_mut(slot);
        let (prev, next) = (e.dying_prev, e.dying_next);
        e.dying_prev = NIL;
        e.dying_next = NIL;
        if prev == NIL {
            list.head = next;
        } else {
            self.table.entry_mut(prev).dying_next = next;
        }
        if next == NIL {
            list.tail = prev;
        } else {
            self.table.entry_mut(next).dying_prev = prev;
        }
        list.len -= 1;
    }

    /// A dying entry's DESTROY goes out again (its grace timer fired, or the worker took it).
    pub(super) fn retry_destroy(&mut self, slot: u32, now_ns: u64, from_worker: bool) {
        self.dying_unlink(slot);
        self.table.entry_mut(slot).life = Life::Destroying;
        self.stats.destroy_retries = self.stats.destroy_retries.wrapping_add(1);
        self.queue_destroy(slot, now_ns, from_worker, true);
    }

    /// Runs the retry worker if it is due: resends the DESTROYs of the oldest dying entries, a
    /// batch at a time.
    pub(super) fn run_worker_if_due(&mut self, now_ns: u64) {
        if !self.ecache.worker.start_if_due(now_ns) {
            return;
        }
        for _ in 0..WORKER_BATCH {
            let slot = self.ecache.dying.head;
            if slot == NIL {
                break;
            }
            self.retry_destroy(slot, now_ns, true);
        }
    }

    /// Under the on-drain policy, the host's word that its listeners have room starts a retry.
    pub(super) fn on_listeners_drained(&mut self, now_ns: u64) {
        if self.config.retry_policy == RetryPolicy::OnDrain && self.ecache.dying.len > 0 {
            self.ecache.worker.schedule(now_ns);
        }
    }

    /// The longest delay any retry policy puts between a failed DESTROY and its retry: a
    /// restored dying entry without a retry coming is consistent only if a retry this far
    /// ahead would pass the end of the clock.
    pub(super) fn longest_retry_delay_ns(&self) -> u64 {
        let grace_bound = u64::from(self.config.sysctls.events_retry_timeout) * NS_PER_S;
        grace_bound
            .max(1 << crate::timer::TICK_SHIFT)
            .max(KERNEL_FIRST_RETRY_NS)
            .max(KERNEL_RETRY_NS)
    }

    /// The retry delay under the grace policy: uniform in `[0, events_retry_timeout)`. A timeout
    /// of 0 (where the 2009 kernel would divide by zero) retries on the next tick of the wheel.
    pub(super) fn grace_delay_ns(&mut self) -> u64 {
        let bound = self.config.sysctls.events_retry_timeout as u64 * NS_PER_S;
        let delay = if bound == 0 {
            0
        } else {
            self.ecache.grace_rng.random_range(0..bound)
        };
        delay.max(1 << crate::timer::TICK_SHIFT)
    }

    fn after_destroy_sent(&mut self) {
        match self.config.retry_policy {
            RetryPolicy::Grace => {}
            RetryPolicy::Kernel | RetryPolicy::OnDrain => {
                // A DESTROY got through: the listener has room, so retry at once.
                if self.ecache.dying.len > 0 {
                    self.ecache.worker.schedule(self.now_ns);
                }
            }
        }
    }

    /// Schedules the retry of a failed DESTROY. A retry always lies in the future: one whose
    /// instant is past the end of the clock (`u64::MAX` ns) is not scheduled at all, since
    /// firing it at the last instant would fail and reschedule it there again for ever. Such
    /// an entry waits on the dying list (the on-drain policy still retries when the listeners
    /// drain).
    fn after_destroy_failed(&mut self, slot: u32, from_worker: bool) {
        let now = self.now_ns;
        match self.config.retry_policy {
            RetryPolicy::Grace => {
                if let Some(at) = now.checked_add(self.grace_delay_ns()) {
                    self.timers.schedule(slot, at);
                }
            }
            RetryPolicy::Kernel if from_worker => {
                if let Some(at) = now.checked_add(KERNEL_RETRY_NS) {
                    self.ecache.worker.schedule(at);
                }
            }
            // On-drain waits for the host's word that the listener drained; the slow fallback
            // keeps a host that never says so from stranding entries.
            RetryPolicy::Kernel | RetryPolicy::OnDrain => {
                if self.ecache.worker.idle()
                    && let Some(at) = now.checked_add(KERNEL_FIRST_RETRY_NS)
                {
                    self.ecache.worker.schedule(at);
                }
            }
        }
    }
}
