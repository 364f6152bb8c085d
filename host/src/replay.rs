//! The simulation loop: packets into a backend, event messages out to the listeners, outcomes
//! back, on the capture's own clock.
//!
//! Everything happens at simulated instants: packet times, the engine's timer deadlines and the
//! listeners' read times. Between two batches the loop steps through every such instant in
//! order, so a slow reader drains, a grace timer fires and a retried DESTROY lands exactly when
//! they would, whatever the batch size. Outcomes go back to the engine right after each round of
//! deliveries — before the next packet when the batch size is 1, which is the kernel's exact
//! order (its delivery is synchronous).

use std::borrow::Borrow;

use anyhow::Result;
use ctwasm_core::batch::{self, EventFrame};
use ctwasm_core::netlink::CtMessage;
use ctwasm_core::{Delivery, Stats, Verdict};

use crate::backend::Backend;
use crate::capture::{CapturedPacket, LinkDirection};
use crate::listener::{ListenerStats, Listeners, ReceivedMessage};
use crate::output;

/// Messages taken from the engine per call. A flush of a million entries queues a million
/// DESTROYs; taking them all at once would copy hundreds of megabytes out of the component in
/// one call, past what wasmtime lets a call copy.
const TAKE_CHUNK: u32 = 4096;

/// How a run goes.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Packets per `ingest` call.
    pub batch: usize,
    /// What the capturing devices did with arriving packets' checksums.
    pub arriving: ArrivingChecksums,
    /// `conntrack -F` after the last packet.
    pub flush_at_end: bool,
    /// After the last packet, let simulated time run until every entry has timed out.
    pub expire_at_end: bool,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            batch: 1,
            arriving: ArrivingChecksums::default(),
            flush_at_end: false,
            expire_at_end: false,
        }
    }
}

/// What the devices a capture was taken on did with the checksums of the packets that arrived
/// there, which decides whether conntrack verified them (see
/// `ctwasm_core::batch::PACKET_FLAG_ARRIVED`). Only packets the capture marks as arriving
/// ([`LinkDirection::Inbound`]: Linux cooked headers, pcapng's `epb_flags`, live captures) are
/// concerned; the rest are taken as sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ArrivingChecksums {
    /// Nothing: they reach conntrack unverified and are checked (when `nf_conntrack_checksum`
    /// is on): a network card (one that verified a good checksum gives the same answer), a
    /// TUN device.
    #[default]
    Unverified,
    /// The device vouched for them: a veth or bridge carrying packets a local stack sent, whose
    /// checksums are left to be filled in (the capture shows them unfinished) and which the
    /// kernel therefore does not check.
    Offloaded,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct ReplayReport {
    pub packets: u64,
    /// Packets by verdict, indexed by `Verdict as u8`.
    pub verdicts: [u64; Verdict::COUNT],
    pub stats: Stats,
    pub listeners: Vec<(String, ListenerStats)>,
    /// Simulated time from the first packet to the last event read.
    pub sim_ns: u64,
}

/// Receives every message the first listener reads, with its decoded form.
pub trait EventSink {
    fn event(&mut self, frame: &EventFrame<'_>, message: &CtMessage) -> Result<()>;
    /// The same, with the read itself (when it was queued and read); by default just the event.
    fn read(
        &mut self,
        read: &ReceivedMessage,
        frame: &EventFrame<'_>,
        message: &CtMessage,
    ) -> Result<()> {
        let _ = read;
        self.event(frame, message)
    }
}

impl<F: FnMut(&EventFrame<'_>, &CtMessage) -> Result<()>> EventSink for F {
    fn event(&mut self, frame: &EventFrame<'_>, message: &CtMessage) -> Result<()> {
        self(frame, message)
    }
}

/// Drives one backend and its listeners.
pub struct Simulation<'a> {
    pub backend: &'a mut dyn Backend,
    pub listeners: Listeners,
    /// Whether packets the capture marks as arriving reach the engine unverified.
    pub arriving: ArrivingChecksums,
    now_ns: u64,
    events: Vec<u8>,
    results: Vec<Delivery>,
    started: Option<u64>,
}

impl std::fmt::Debug for Simulation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation")
            .field("now_ns", &self.now_ns)
            .finish_non_exhaustive()
    }
}

impl<'a> Simulation<'a> {
    /// The first listener should record (it is the one whose messages are printed).
    pub fn new(backend: &'a mut dyn Backend, listeners: Listeners) -> Result<Self> {
        backend.set_listeners(listeners.has_listeners(), listeners.has_reliable())?;
        Ok(Simulation {
            backend,
            listeners,
            arriving: ArrivingChecksums::default(),
            now_ns: 0,
            events: Vec::new(),
            results: Vec::new(),
            started: None,
        })
    }

    pub fn now(&self) -> u64 {
        self.now_ns
    }

    fn start(&mut self, at: u64) {
        if self.started.is_none() {
            self.started = Some(at);
            self.listeners.set_origin(at);
            self.now_ns = at;
        }
    }

    /// Steps through every timer and read instant up to `target`, delivering as it goes.
    pub fn run_until(&mut self, target: u64, sink: &mut dyn EventSink) -> Result<()> {
        self.start(target);
        loop {
            let next = [self.backend.next_deadline()?, self.listeners.next_read_at()]
                .into_iter()
                .flatten()
                .filter(|t| *t <= target)
                .min();
            let Some(at) = next else { break };
            let at = at.max(self.now_ns);
            self.now_ns = at;
            self.backend.advance(at)?;
            self.pump(at, sink)?;
            // A deadline that is only a lower bound moves on once advanced to; a read time that
            // did not produce a read would repeat, so step past it.
            let again = [self.backend.next_deadline()?, self.listeners.next_read_at()]
                .into_iter()
                .flatten()
                .filter(|t| *t <= at)
                .min();
            if again.is_some() {
                // The clock ends at u64::MAX ns: nothing can happen after its last instant.
                let Some(step) = at.checked_add(1) else {
                    break;
                };
                self.now_ns = step;
                if step > target {
                    break;
                }
                self.listeners.advance(step);
                self.backend.advance(step)?;
                self.pump(step, sink)?;
            }
        }
        self.now_ns = self.now_ns.max(target);
        self.listeners.advance(self.now_ns);
        self.pump(self.now_ns, sink)
    }

    /// Takes the engine's messages, offers each to the listeners, reports the outcomes, hands
    /// what the first listener read to `sink`; again until the engine has nothing more now.
    pub fn pump(&mut self, now_ns: u64, sink: &mut dyn EventSink) -> Result<()> {
        loop {
            self.listeners.advance(now_ns);
            self.print_reads(sink)?;
            self.events.clear();
            let n = self.backend.take_events(TAKE_CHUNK, &mut self.events)?;
            if n == 0 {
                break;
            }
            self.results.clear();
            let frames = batch::events(&self.events)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("bad event framing at {}", e.offset))?;
            self.listeners
                .deliver_all(now_ns, &frames, &mut self.results);
            self.backend.report_delivery(&self.results)?;
            self.backend.advance(now_ns)?;
        }
        if self.listeners.reliable_have_room() {
            self.backend.listeners_drained(now_ns)?;
        }
        self.listeners.advance(now_ns);
        self.print_reads(sink)
    }

    fn print_reads(&mut self, sink: &mut dyn EventSink) -> Result<()> {
        let Some(first) = self.listeners.get_mut(0) else {
            return Ok(());
        };
        for msg in first.take_received() {
            // Expectation events (groups 4 and 6) are counted by the listeners but not printed:
            // the text and JSON formats describe conntrack entries.
            if let Some(frame) = msg.event_frame().filter(|f| f.group <= 3) {
                let decoded = output::decode_frame(&frame)?;
                sink.read(&msg, &frame, &decoded)?;
            }
        }
        Ok(())
    }

    /// Ingests one batch of packets; returns their verdicts.
    pub fn ingest<P: Borrow<CapturedPacket>>(
        &mut self,
        packets: &[P],
        sink: &mut dyn EventSink,
    ) -> Result<Vec<u8>> {
        let Some(first) = packets.first().map(|p| p.borrow().ts_ns) else {
            return Ok(Vec::new());
        };
        self.start(first);
        self.run_until(first, sink)?;
        let mut bytes = Vec::with_capacity(packets.iter().map(|p| p.borrow().l3.len() + 16).sum());
        for p in packets {
            let p = p.borrow();
            let flags = match (p.direction, self.arriving) {
                (LinkDirection::Inbound, ArrivingChecksums::Unverified) => {
                    batch::PACKET_FLAG_ARRIVED
                }
                _ => 0,
            };
            batch::push_packet_with(&mut bytes, p.ts_ns.max(1), 0, flags, &p.l3);
        }
        let mut verdicts = Vec::with_capacity(packets.len());
        let at = first;
        self.backend.ingest(at, &bytes, &mut verdicts)?;
        let last = packets
            .last()
            .map(|p| p.borrow().ts_ns)
            .unwrap_or(at)
            .max(self.now_ns);
        self.now_ns = last;
        self.pump(last, sink)?;
        Ok(verdicts)
    }

    /// Runs simulated time on until nothing is left to happen: the dying list empty and every
    /// listener's queue read (bounded by `horizon_ns` of simulated time).
    pub fn settle(&mut self, horizon_ns: u64, sink: &mut dyn EventSink) -> Result<()> {
        let end = self.now_ns.saturating_add(horizon_ns);
        loop {
            let stats = self.backend.stats()?;
            let queued: usize = self.listeners.iter().map(|l| l.queued_messages()).sum();
            if stats.dying == 0
                && queued == 0
                && self
                    .backend
                    .next_deadline()?
                    .is_none_or(|_| stats.count == 0)
            {
                return Ok(());
            }
            let next = [self.backend.next_deadline()?, self.listeners.next_read_at()]
                .into_iter()
                .flatten()
                .min();
            match (next, self.now_ns.checked_add(1)) {
                (Some(t), Some(step)) if t <= end => self.run_until(t.max(step), sink)?,
                // Nothing due within the horizon, or the clock has reached its end.
                _ => return Ok(()),
            }
        }
    }

    pub fn report(
        &mut self,
        packets: u64,
        verdicts: [u64; Verdict::COUNT],
    ) -> Result<ReplayReport> {
        Ok(ReplayReport {
            packets,
            verdicts,
            stats: self.backend.stats()?,
            listeners: self.listeners.all_stats(),
            sim_ns: self
                .now_ns
                .saturating_sub(self.started.unwrap_or(self.now_ns)),
        })
    }
}

/// Replays `packets` (a slice's items, or packets as a [`crate::capture::CaptureReader`] reads
/// them) through `backend`, printing what the first listener reads to `sink`. Only a batch is
/// held at a time.
pub fn replay<P: Borrow<CapturedPacket>>(
    backend: &mut dyn Backend,
    listeners: Listeners,
    packets: impl IntoIterator<Item = P>,
    options: &ReplayOptions,
    sink: &mut dyn EventSink,
    mut progress: impl FnMut(u64),
) -> Result<ReplayReport> {
    let mut sim = Simulation::new(backend, listeners)?;
    sim.arriving = options.arriving;
    let mut verdicts = [0u64; Verdict::COUNT];
    let mut packets = packets.into_iter();
    let batch = options.batch.max(1);
    let mut chunk = Vec::with_capacity(batch.min(4096));
    let mut total = 0u64;
    loop {
        chunk.clear();
        chunk.extend(packets.by_ref().take(batch));
        if chunk.is_empty() {
            break;
        }
        for v in sim.ingest(&chunk, sink)? {
            if let Some(v) = Verdict::from_u8(v) {
                verdicts[v as usize] += 1;
            }
        }
        total += chunk.len() as u64;
        progress(chunk.len() as u64);
    }
    const HOUR_NS: u64 = 3_600 * 1_000_000_000;
    if options.expire_at_end {
        // Long enough for the longest default timeout (ESTABLISHED, five days).
        sim.settle(6 * 24 * HOUR_NS, sink)?;
    }
    if options.flush_at_end {
        let now = sim.now();
        sim.backend.flush(now)?;
        sim.pump(now, sink)?;
    }
    sim.settle(HOUR_NS, sink)?;
    sim.report(total, verdicts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendKind, TrackerSettings, open_backend};
    use crate::listener::ListenerConfig;
    use ctwasm_core::wire::build;

    /// Reads every event and keeps nothing.
    struct Discard;

    impl EventSink for Discard {
        fn event(&mut self, _: &EventFrame<'_>, _: &CtMessage) -> Result<()> {
            Ok(())
        }
    }

    /// Packets stamped at the very end of the clock (a pcapng whose offset or resolution
    /// saturates its timestamps) with a reliable listener that takes nothing: the replay ends,
    /// under every retry policy, instead of stepping for ever at the last instant.
    #[test]
    fn a_replay_at_the_end_of_the_clock_ends() {
        for policy in ["grace", "kernel", "on-drain"] {
            let settings = TrackerSettings {
                retry_policy: ctwasm_core::config::RetryPolicy::parse(policy),
                ..TrackerSettings::default()
            };
            let mut backend = open_backend(BackendKind::Native, &settings, None).unwrap();
            let listeners =
                Listeners::new([ListenerConfig::parse("reliable,faults=1,record").unwrap()]);
            let packets: Vec<CapturedPacket> = (0..3u16)
                .map(|i| {
                    CapturedPacket::new(
                        u64::MAX - 1_000 + u64::from(i),
                        build::ipv4(
                            [10, 0, 0, 1],
                            [10, 0, 0, 2],
                            17,
                            &build::udp(5000 + i, 53, 8),
                        ),
                    )
                })
                .collect();
            let options = ReplayOptions {
                expire_at_end: true,
                flush_at_end: true,
                ..ReplayOptions::default()
            };
            let report = replay(
                backend.as_mut(),
                listeners,
                &packets,
                &options,
                &mut Discard,
                |_| {},
            )
            .unwrap();
            // Every DESTROY failed and none could be retried later: the entries wait.
            assert_eq!(report.stats.dying, 3, "{policy}: {:?}", report.stats);
        }
    }
}
