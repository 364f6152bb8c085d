//! `ctwasm shadow`: the engine running beside the kernel, on the same packets, live (Linux only).
//!
//! For an operator who wants to know whether the engine matches *their* kernel: a capturer on
//! one interface of a namespace feeds every packet to the engine as it comes, a lossless
//! ctnetlink listener reads what the kernel made of the same packets, and each flow's steps
//! (see [`crate::conformance`]) are compared as both sides grow. A flow agrees while neither
//! side contradicts the other; one side being ahead (the kernel has not evicted an expired entry
//! yet, the engine has not read the packet yet) is only *pending*. At the end both sides are
//! brought to the same instant and every flow must match exactly.
//!
//! The engine takes the kernel's own settings, read from the namespace's
//! `/proc/sys/net/netfilter`, unless the caller overrides some (which is how the tests show a
//! divergence on purpose).
//!
//! Side effect, by design: the table is dumped once a second, because a dump evicts expired
//! entries and so brings their DESTROY forward (kernel-oracle §5) — the garbage collector would
//! evict them anyway, up to a minute later. Entries that existed before the shadow started are
//! left out: their beginning was not seen.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use ctwasm_core::batch::EventFrame;
use ctwasm_core::config::Sysctls;
use ctwasm_core::netlink::CtMessage;

use crate::backend::{NativeBackend, TrackerSettings};
use crate::capture::CapturedPacket;
use crate::conformance::{Agreement, Comparison, FlowDiff, FlowLog, flow_name};
use crate::ctnetlink::{Conntrack, in_netns};
use crate::listener::Listeners;
use crate::live_capture::{Observed, Observer};
use crate::replay::Simulation;

/// How a shadow run goes.
#[derive(Clone, Debug)]
pub struct ShadowOptions {
    /// The namespace (name under /run/netns, or a path).
    pub netns: String,
    /// The interface to capture (`lo` by default).
    pub interface: String,
    /// Stop after this long (`None`: until `stop` is set).
    pub duration: Option<Duration>,
    /// Sysctls that replace the kernel's in the engine.
    pub overrides: Vec<(String, String)>,
    /// A running count this often.
    pub report_every: Duration,
}

/// Where a run stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShadowCounts {
    pub packets: u64,
    pub events: u64,
    pub flows: usize,
    pub agree: usize,
    pub pending: usize,
    pub diverge: usize,
}

/// What a whole run found.
#[derive(Clone, Debug)]
pub struct ShadowReport {
    pub counts: ShadowCounts,
    /// Flows left out because they existed when the shadow started.
    pub preexisting: usize,
    /// The settings the engine ran with.
    pub sysctls: Vec<(String, String)>,
    /// The final comparison (pre-existing flows left out).
    pub comparison: Comparison,
}

impl ShadowReport {
    pub fn all_agree(&self) -> bool {
        self.counts.diverge == 0 && self.counts.pending == 0
    }
}

/// What the running report hands out.
#[derive(Clone, Debug)]
pub enum ShadowProgress {
    Counts {
        elapsed: Duration,
        counts: ShadowCounts,
    },
    /// A flow diverged for the first time: its first divergence, in one line.
    Diverged(String),
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The namespace's `net.netfilter.nf_conntrack_*` settings that the engine knows.
pub fn kernel_sysctls(netns: &str) -> Result<Vec<(String, String)>> {
    let read = in_netns(Some(netns), || -> std::io::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc/sys/net/netfilter")? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !e.file_type()?.is_file() || !name.starts_with("nf_conntrack_") {
                continue;
            }
            if let Ok(v) = std::fs::read_to_string(e.path()) {
                out.push((format!("net.netfilter.{name}"), v.trim().to_string()));
            }
        }
        out.sort();
        Ok(out)
    })?
    .with_context(|| format!("reading the conntrack sysctls of `{netns}`"))?;
    let mut probe = Sysctls::default();
    Ok(read
        .into_iter()
        .filter(|(n, v)| probe.set(n, v).is_ok())
        .collect())
}

/// How long one side may be ahead, live, before the flow counts as divergent: longer than
/// the once-a-second eviction plus the engine's half second behind the wall clock.
const PENDING_GRACE: Duration = Duration::from_secs(3);

/// Counts the flows; a flow pending for longer than [`PENDING_GRACE`] counts as divergent and
/// is returned in the second list.
fn evaluate<'c>(
    cmp: &'c Comparison,
    packets: u64,
    events: u64,
    pending_since: &mut BTreeMap<String, Instant>,
    now: Instant,
) -> (ShadowCounts, Vec<&'c FlowDiff>) {
    let mut c = ShadowCounts {
        packets,
        events,
        flows: cmp.flows.len(),
        ..ShadowCounts::default()
    };
    let mut diverged = Vec::new();
    for f in &cmp.flows {
        let agreement = f.agreement(false);
        if agreement != Agreement::Prefix {
            pending_since.remove(&f.flow);
        }
        match agreement {
            Agreement::Identical => c.agree += 1,
            Agreement::Prefix => {
                let since = *pending_since.entry(f.flow.clone()).or_insert(now);
                if now.duration_since(since) > PENDING_GRACE {
                    c.diverge += 1;
                    diverged.push(f);
                } else {
                    c.pending += 1;
                }
            }
            Agreement::DivergesAt(_) => {
                c.diverge += 1;
                diverged.push(f);
            }
        }
    }
    (c, diverged)
}

/// Runs the shadow until `options.duration` has passed or `stop` is set.
pub fn run_shadow(
    options: &ShadowOptions,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&ShadowProgress),
) -> Result<ShadowReport> {
    let mut sysctls = kernel_sysctls(&options.netns)?;
    for (n, v) in &options.overrides {
        let short = n.strip_prefix("net.netfilter.").unwrap_or(n);
        sysctls.retain(|(k, _)| k.strip_prefix("net.netfilter.").unwrap_or(k) != short);
        sysctls.push((format!("net.netfilter.{short}"), v.clone()));
    }
    let settings = TrackerSettings {
        sysctls: sysctls.clone(),
        ..TrackerSettings::default()
    };
    let mut backend = NativeBackend::new(settings.engine_config()?);
    let mut sim = Simulation::new(&mut backend, Listeners::lossless())?;
    let netns = options.netns.as_str();
    let observer = Observer::start(&[netns], &[(netns, options.interface.as_str())])?;
    let mut ct = Conntrack::open(Some(netns))?;
    // Whatever is in the table now began unseen.
    let preexisting: BTreeSet<String> = ct
        .dump()?
        .iter()
        .filter_map(|m| m.message.orig().map(|t| format!("{} #0", flow_name(&t))))
        .collect();

    let mut kernel = FlowLog::new();
    let mut ours = FlowLog::new();
    let (mut packets, mut events) = (0u64, 0u64);
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut pending_since: BTreeMap<String, Instant> = BTreeMap::new();
    let mut latest = ShadowCounts::default();
    let started = Instant::now();
    let mut next_evict = started + Duration::from_secs(1);
    let mut next_report = started + options.report_every;
    let keep = |f: &str| !preexisting.contains(f);

    let take = |o: Observed,
                sim: &mut Simulation<'_>,
                kernel: &mut FlowLog,
                ours: &mut FlowLog,
                packets: &mut u64,
                events: &mut u64|
     -> Result<()> {
        match o {
            Observed::Packet(_, p) => {
                *packets += 1;
                let p = CapturedPacket {
                    ts_ns: p.ts_ns.max(sim.now()),
                    l3: p.l3,
                };
                let mut sink = |_: &EventFrame<'_>, m: &CtMessage| -> Result<()> {
                    ours.push(m);
                    Ok(())
                };
                sim.ingest(std::slice::from_ref(&p), &mut sink)?;
            }
            Observed::Event(_, m) => {
                *events += 1;
                kernel.push(&m.message);
            }
            Observed::Trouble(t) => bail!("{t}: the comparison would be void"),
        }
        Ok(())
    };

    loop {
        let done =
            stop.load(Ordering::SeqCst) || options.duration.is_some_and(|d| started.elapsed() >= d);
        if done {
            break;
        }
        match observer.receiver().recv_timeout(Duration::from_millis(100)) {
            Ok(o) => take(
                o,
                &mut sim,
                &mut kernel,
                &mut ours,
                &mut packets,
                &mut events,
            )?,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("the observer stopped"),
        }
        let now = Instant::now();
        if now >= next_evict {
            next_evict = now + Duration::from_secs(1);
            ct.dump()?;
            // Half a second behind the wall clock, so a packet still on its way to us does not
            // arrive in the engine's past.
            let behind = wall_ns().saturating_sub(500_000_000);
            if behind > sim.now() {
                let mut sink = |_: &EventFrame<'_>, m: &CtMessage| -> Result<()> {
                    ours.push(m);
                    Ok(())
                };
                sim.run_until(behind, &mut sink)?;
            }
            let cmp = Comparison::of_flows(&kernel, &ours, keep);
            let (counts, diverged) = evaluate(&cmp, packets, events, &mut pending_since, now);
            latest = counts;
            for f in diverged {
                if reported.insert(f.flow.clone())
                    && let Some(line) = f.first_divergence()
                {
                    progress(&ShadowProgress::Diverged(line));
                }
            }
        }
        if now >= next_report {
            next_report = now + options.report_every;
            progress(&ShadowProgress::Counts {
                elapsed: started.elapsed(),
                counts: ShadowCounts {
                    packets,
                    events,
                    ..latest.clone()
                },
            });
        }
    }

    // The end: evict what has expired, let the last events arrive, and bring the engine to the
    // instant of that eviction.
    let until = wall_ns();
    ct.dump()?;
    std::thread::sleep(Duration::from_millis(300));
    for o in observer.finish() {
        take(
            o,
            &mut sim,
            &mut kernel,
            &mut ours,
            &mut packets,
            &mut events,
        )?;
    }
    let mut sink = |_: &EventFrame<'_>, m: &CtMessage| -> Result<()> {
        ours.push(m);
        Ok(())
    };
    sim.run_until(until.max(sim.now()), &mut sink)?;
    let comparison = Comparison::of_flows(&kernel, &ours, keep);
    // Settled now: a missing step is a divergence.
    let final_counts = ShadowCounts {
        packets,
        events,
        flows: comparison.flows.len(),
        agree: comparison.identical(),
        pending: 0,
        diverge: comparison.divergent(true).count(),
    };
    Ok(ShadowReport {
        counts: final_counts,
        preexisting: preexisting.len(),
        sysctls,
        comparison,
    })
}
