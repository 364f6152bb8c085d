//! The seed's stress test, simulated: many short connections, a tiny reliable buffer, a flush.
//!
//! Pablo Neira Ayuso tested reliable delivery by giving conntrackd a 2048-byte buffer with
//! `NETLINK_BROADCAST_ERROR`, creating lots of very small connections and running
//! `conntrack -F`: every DESTROY must eventually arrive, exactly once, while the undelivered ones
//! wait on the dying list. This module replays that on simulated time, through any
//! [`Backend`]: `flows` UDP flows of one datagram each (distinct tuples, created at
//! `flow_rate` per second), one listener, one second of quiet, a flush, then time runs on until
//! the dying list is empty (or a horizon passes).
//!
//! The listener's reads are counted by (original tuple, id), which gives DESTROYs delivered,
//! lost and duplicated; the engine's statistics are sampled along the way (live entries, dying
//! entries, their sum against `nf_conntrack_max`) for the summary and the plot. Samples come
//! more sparsely as a run grows long (the interval grows with the time since the flush), since
//! each costs a pass over the table.

use std::collections::HashMap;

use anyhow::Result;
use ctwasm_core::batch::EventFrame;
use ctwasm_core::netlink::CtMessage;
use ctwasm_core::{MessageKind, RetryPolicy, Stats, Tuple, Verdict};
use serde::Serialize;

use crate::backend::{Backend, BackendKind, TrackerSettings, open_backend};
use crate::capture::CapturedPacket;
use crate::listener::{DrainPolicy, ListenerConfig, ListenerStats, Listeners, ReceivedMessage};
use crate::mirror::{Mirror, MirrorDiff};
use crate::replay::{EventSink, Simulation};

const NS_PER_S: u64 = 1_000_000_000;
const NS_PER_MS: u64 = 1_000_000;
/// The destination of every flow (the kernel test's `127.1.x.y:9999`, in a documentation net).
const DST: [u8; 4] = [192, 0, 2, 1];
const DPORT: u16 = 9999;
/// Flows start one second into simulated time (0 would mean "now" to the batch format).
const START_NS: u64 = NS_PER_S;
/// The seed's `sleep 1` between the last connection and `conntrack -F`.
const QUIET_NS: u64 = NS_PER_S;

/// How a stress run goes.
#[derive(Clone, Debug)]
pub struct StressOptions {
    /// Connections to create: one UDP datagram each, every one on its own tuple.
    pub flows: u64,
    /// New connections per simulated second.
    pub flow_rate: f64,
    /// The listener's effective receive buffer, bytes.
    pub rcvbuf: usize,
    /// `NETLINK_BROADCAST_ERROR` on the listener.
    pub reliable: bool,
    /// Messages the reader reads per simulated second (`None`: as fast as they come).
    pub reader_rate: Option<f64>,
    /// A reader script instead of a rate (a `drain=` spec of the listener, e.g. `0/s+1000/s@30`).
    pub reader: Option<DrainPolicy>,
    /// Share of offers to the listener that fail (fault injection), seeded from `seed`.
    pub faults: f64,
    pub policy: RetryPolicy,
    pub seed: u64,
    /// `nf_conntrack_max`; the engine's default when `None`.
    pub max: Option<u32>,
    /// More sysctls, `name=value`.
    pub sysctls: Vec<(String, String)>,
    /// Packets per ingest call.
    pub batch: usize,
    /// `conntrack -F` after the quiet second (else time simply runs on).
    pub flush: bool,
    /// How long simulated time may run after the flush before the run gives up.
    pub horizon_ns: u64,
    /// Also rebuild the table from the reads and compare it with a dump at the end.
    pub mirror: bool,
}

impl Default for StressOptions {
    fn default() -> Self {
        StressOptions {
            flows: 100_000,
            flow_rate: 100_000.0,
            rcvbuf: 2048,
            reliable: true,
            reader_rate: Some(10_000.0),
            reader: None,
            faults: 0.0,
            policy: RetryPolicy::Grace,
            seed: 0,
            max: None,
            sysctls: Vec::new(),
            batch: 32,
            flush: true,
            horizon_ns: 3_600 * NS_PER_S,
            mirror: false,
        }
    }
}

impl StressOptions {
    /// The tracker settings the run needs (policy, seed, `nf_conntrack_max`, sysctls).
    pub fn settings(&self) -> TrackerSettings {
        let mut sysctls = self.sysctls.clone();
        if let Some(max) = self.max {
            sysctls.push(("net.netfilter.nf_conntrack_max".into(), max.to_string()));
        }
        TrackerSettings {
            sysctls,
            seed: self.seed,
            retry_policy: Some(self.policy),
            ..Default::default()
        }
    }

    /// The one listener: the stress test's conntrackd.
    pub fn listener(&self) -> ListenerConfig {
        ListenerConfig {
            name: "conntrackd".into(),
            rcvbuf: self.rcvbuf,
            broadcast_error: self.reliable,
            drain: match (&self.reader, self.reader_rate) {
                (Some(script), _) => script.clone(),
                (None, Some(rate)) => DrainPolicy::Rate { msgs_per_sec: rate },
                (None, None) => DrainPolicy::Unlimited,
            },
            record: true,
            faults: self.faults,
            fault_seed: self.seed,
            ..ListenerConfig::default()
        }
    }

    /// The `i`-th flow's datagram: source 10.x.y.z, the port stepping every 2^24 flows.
    pub fn flow_packet(i: u64) -> Vec<u8> {
        let src = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let sport = 1024u16.wrapping_add((i >> 24) as u16);
        let l4 = ctwasm_core::wire::build::udp(sport, DPORT, 16);
        ctwasm_core::wire::build::ipv4(src, DST, 17, &l4)
    }
}

/// The engine and the listener at one simulated instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Simulated ns since the first flow.
    pub t_ns: u64,
    /// Live entries (in the hash table).
    pub entries: u64,
    /// Entries on the dying list.
    pub dying: u64,
    /// Live plus dying: what `nf_conntrack_max` bounds.
    pub count: u64,
    /// Distinct DESTROYs read so far.
    pub destroys_read: u64,
}

/// The summary `ctwasm stress --format json` prints, field for field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct StressSummary {
    /// Entries created (confirmed).
    pub created: u64,
    /// Entries whose DESTROY the listener read at least once.
    pub destroy_delivered: u64,
    /// Entries whose DESTROY it never read and that nothing holds any more when the run ends:
    /// a DESTROY still on its way at the horizon (its entry on the dying list or its message
    /// queued, unread, in the reader's buffer) is pending, not lost.
    pub destroy_lost: u64,
    /// DESTROYs read beyond the first for the same entry.
    pub duplicates: u64,
    pub dying_peak: u64,
    /// Dying entries when the run ended (0 unless the horizon cut it short).
    pub dying_final: u64,
    /// The most live plus dying entries sampled.
    pub max_seen: u64,
    /// New connections refused because the table was full.
    pub dropped_new: u64,
    /// Simulated ms from the flush to the last DESTROY read (`None` if none was read after it).
    pub drain_ms: Option<f64>,
}

/// Everything a run found.
#[derive(Clone, Debug)]
pub struct StressReport {
    pub summary: StressSummary,
    pub samples: Vec<Sample>,
    /// The engine's statistics at the end.
    pub stats: Stats,
    pub listener: ListenerStats,
    /// Simulated ns of the flush and of the end of the run, since the first flow.
    pub flush_ns: u64,
    pub end_ns: u64,
    /// The mirror and how it compares with the final dump, when asked for.
    pub mirror: Option<(Mirror, MirrorDiff)>,
    pub backend: &'static str,
}

/// What a run is doing, for progress bars.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Flows created so far, of the total.
    Creating { done: u64, total: u64 },
    /// Distinct DESTROYs read so far, of the entries created.
    Draining { read: u64, total: u64 },
    /// The tracker's and the listeners' figures now (sent before each of the others).
    Figures {
        stats: Stats,
        listeners: Vec<(String, ListenerStats)>,
    },
}

/// Counts what the listener reads.
#[derive(Debug, Default)]
struct Reads {
    destroys: HashMap<(Tuple, u32), u32>,
    last_destroy_ns: Option<u64>,
    mirror: Option<Mirror>,
}

impl EventSink for Reads {
    fn event(&mut self, _frame: &EventFrame<'_>, message: &CtMessage) -> Result<()> {
        if let Some(m) = self.mirror.as_mut() {
            m.apply(message);
        }
        Ok(())
    }
    fn read(
        &mut self,
        read: &ReceivedMessage,
        frame: &EventFrame<'_>,
        message: &CtMessage,
    ) -> Result<()> {
        if message.kind() == Some(MessageKind::Destroy)
            && let (Some(orig), Some(id)) = (message.orig(), message.id())
        {
            *self.destroys.entry((orig, id)).or_default() += 1;
            self.last_destroy_ns = Some(read.read_ns);
        }
        self.event(frame, message)
    }
}

/// Opens a backend of `kind` with the run's settings and runs it.
pub fn run(
    kind: BackendKind,
    options: &StressOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<StressReport> {
    let mut backend = open_backend(kind, &options.settings(), None)?;
    run_with(backend.as_mut(), options, progress)
}

/// Runs the stress test on `backend`, which must have been built with
/// [`StressOptions::settings`].
pub fn run_with(
    backend: &mut dyn Backend,
    options: &StressOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<StressReport> {
    run_with_listeners(
        backend,
        options,
        Listeners::new([options.listener()]),
        progress,
    )
}

/// The same run with other listeners, e.g. an external one whose kernel buffer decides. The
/// summary's DESTROY counts come from the first *simulated* listener's reads (none without one:
/// an external listener's reader counts its own); its `listener` stats are the first listener's,
/// external ones after the simulated.
pub fn run_with_listeners(
    backend: &mut dyn Backend,
    options: &StressOptions,
    listeners: Listeners,
    progress: &mut dyn FnMut(Progress),
) -> Result<StressReport> {
    let name = backend.name();
    let mut sim = Simulation::new(backend, listeners)?;
    let mut reads = Reads {
        mirror: options.mirror.then(Mirror::new),
        ..Reads::default()
    };
    let mut samples: Vec<Sample> = Vec::new();
    let mut verdicts = [0u64; Verdict::COUNT];

    let gap_ns = if options.flow_rate > 0.0 {
        ((1e9 / options.flow_rate).round() as u64).max(1)
    } else {
        1
    };
    let batch = options.batch.max(1) as u64;
    let sample_every = (options.flows / 500).max(1);
    let mut next_sample = sample_every;
    let mut packets: Vec<CapturedPacket> = Vec::with_capacity(batch as usize);
    let mut i = 0u64;
    while i < options.flows {
        packets.clear();
        let end = (i + batch).min(options.flows);
        packets
            .extend((i..end).map(|f| {
                CapturedPacket::new(START_NS + f * gap_ns, StressOptions::flow_packet(f))
            }));
        for v in sim.ingest(&packets, &mut reads)? {
            if let Some(v) = Verdict::from_u8(v) {
                verdicts[v as usize] += 1;
            }
        }
        i = end;
        if i >= next_sample || i == options.flows {
            next_sample = i + sample_every;
            samples.push(sample(&mut sim, &reads, progress)?);
            progress(Progress::Creating {
                done: i,
                total: options.flows,
            });
        }
    }
    let created = verdicts[Verdict::New as usize];

    let quiet_end = sim.now().max(START_NS) + QUIET_NS;
    sim.run_until(quiet_end, &mut reads)?;
    samples.push(sample(&mut sim, &reads, progress)?);
    let flush_at = sim.now();
    if options.flush {
        sim.backend.flush(flush_at)?;
        sim.pump(flush_at, &mut reads)?;
        samples.push(sample(&mut sim, &reads, progress)?);
    }

    let horizon = flush_at.saturating_add(options.horizon_ns);
    loop {
        let stats = sim.backend.stats()?;
        let queued: usize = sim.listeners.iter().map(|l| l.queued_messages()).sum();
        let live_left = !options.flush && stats.count > 0;
        if (stats.dying == 0 && queued == 0 && !live_left) || sim.now() >= horizon {
            break;
        }
        // Fine steps at first, coarser as the drain drags on: about 500 samples per e-fold.
        let elapsed = sim.now() - flush_at;
        let step = (elapsed / 500).max(10 * NS_PER_MS);
        let until = sim.now().saturating_add(step).min(horizon);
        sim.run_until(until, &mut reads)?;
        samples.push(sample(&mut sim, &reads, progress)?);
        progress(Progress::Draining {
            read: reads.destroys.len() as u64,
            total: created,
        });
    }

    let stats = sim.backend.stats()?;
    // The listener whose buffer decided (beside an observer, the socket behind it).
    let listener = sim.listeners.deciding_stats().unwrap_or_default();
    let end_ns = sim.now();
    let mirror = match reads.mirror.take() {
        Some(m) => {
            let dump = sim.backend.dump()?;
            let diff = m.compare(&dump);
            Some((m, diff))
        }
        None => None,
    };
    let delivered = reads.destroys.len() as u64;
    // Still on their way when the run ended: entries the tracker still counts (their DESTROY
    // queued, in flight or on the dying list), and DESTROYs in the first listener's buffer.
    let destroys_pending = stats.count
        + sim.listeners.get_mut(0).map_or(0, |l| {
            l.queued_in_group(MessageKind::Destroy.group()) as u64
        });
    let duplicates = reads.destroys.values().map(|&n| u64::from(n) - 1).sum();
    let summary = StressSummary {
        created,
        destroy_delivered: delivered,
        destroy_lost: created.saturating_sub(delivered + destroys_pending),
        duplicates,
        dying_peak: stats.dying_peak,
        dying_final: stats.dying,
        max_seen: samples.iter().map(|s| s.count).max().unwrap_or(0),
        dropped_new: verdicts[Verdict::Drop as usize],
        drain_ms: reads
            .last_destroy_ns
            .filter(|t| *t >= flush_at)
            .map(|t| (t - flush_at) as f64 / NS_PER_MS as f64),
    };
    let rebase = |t: u64| t.saturating_sub(START_NS);
    for s in &mut samples {
        s.t_ns = rebase(s.t_ns);
    }
    Ok(StressReport {
        summary,
        samples,
        stats,
        listener,
        flush_ns: rebase(flush_at),
        end_ns: rebase(end_ns),
        mirror,
        backend: name,
    })
}

/// Samples the run, and reports the figures to `progress`.
fn sample(
    sim: &mut Simulation<'_>,
    reads: &Reads,
    progress: &mut dyn FnMut(Progress),
) -> Result<Sample> {
    let s = sim.backend.stats()?;
    progress(Progress::Figures {
        stats: s,
        listeners: sim.listeners.all_stats(),
    });
    Ok(Sample {
        t_ns: sim.now(),
        entries: s.entries,
        dying: s.dying,
        count: s.count,
        destroys_read: reads.destroys.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(policy: RetryPolicy) -> StressOptions {
        StressOptions {
            flows: 2_000,
            policy,
            reader_rate: Some(2_000.0),
            mirror: true,
            ..StressOptions::default()
        }
    }

    #[test]
    fn every_policy_delivers_every_destroy_once_and_the_mirror_empties() {
        for policy in [
            RetryPolicy::Grace,
            RetryPolicy::Kernel,
            RetryPolicy::OnDrain,
        ] {
            let r = run(BackendKind::Native, &quick(policy), &mut |_| {}).unwrap();
            let s = r.summary;
            assert_eq!(s.created, 2_000, "{policy:?}");
            assert_eq!(
                (s.destroy_delivered, s.destroy_lost, s.duplicates),
                (2_000, 0, 0),
                "{policy:?}"
            );
            assert_eq!(s.dying_final, 0, "{policy:?}");
            assert!(
                s.dying_peak > 1_000,
                "{policy:?}: the tiny buffer must overflow: {s:?}"
            );
            assert!(s.max_seen <= 2_000 && s.max_seen > 0);
            assert!(r.listener.enobufs > 0);
            let (mirror, diff) = r.mirror.unwrap();
            assert!(diff.is_equal(), "{policy:?}: {diff}");
            assert!(mirror.is_empty());
            // NEWs were lost to the full buffer, so their DESTROYs name unknown entries.
            assert!(mirror.counters().unknown_destroy > 0);
            assert!(s.drain_ms.unwrap() > 0.0);
        }
    }

    /// A reader that never reads, cut short by the horizon: no DESTROY was read, and none is
    /// lost either — each entry is still on the dying list or its DESTROY waits in the
    /// reader's buffer (they used to be counted as lost).
    #[test]
    fn destroys_still_on_their_way_at_the_horizon_are_not_lost() {
        let options = StressOptions {
            flows: 2_000,
            reader_rate: Some(0.0),
            horizon_ns: 10 * NS_PER_S,
            ..StressOptions::default()
        };
        let s = run(BackendKind::Native, &options, &mut |_| {})
            .unwrap()
            .summary;
        assert_eq!(s.created, 2_000, "{s:?}");
        assert_eq!((s.destroy_delivered, s.destroy_lost), (0, 0), "{s:?}");
        assert!(s.dying_final > 1_900, "{s:?}");
    }

    #[test]
    fn flows_have_distinct_tuples() {
        let a = StressOptions::flow_packet(1);
        let b = StressOptions::flow_packet(1 << 24 | 1);
        assert_ne!(a, b);
        assert_eq!(StressOptions::flow_packet(5), StressOptions::flow_packet(5));
    }
}
