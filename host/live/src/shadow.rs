//! `ctwasm shadow`: the engine running beside the kernel, on the same packets, live (Linux only).
//!
//! For an operator who wants to know whether the engine matches *their* kernel: a capturer on
//! one interface of a namespace feeds every packet to the engine as it comes, a lossless
//! ctnetlink listener reads what the kernel made of the same packets, and each flow's steps
//! (see [`ctwasm_host::compare`]) are compared as both sides grow. A flow agrees while neither
//! side contradicts the other; one side being ahead (the kernel has not evicted an expired entry
//! yet, the engine has not read the packet yet) is only *pending*. At the end both sides are
//! brought to the same instant and every flow must match exactly.
//!
//! The engine takes the kernel's own settings, read from the namespace's
//! `/proc/sys/net/netfilter`, unless the caller overrides some (which is how the tests show a
//! divergence on purpose).
//!
//! Side effect, by design: the table is dumped once a second, because a dump evicts expired
//! entries and so brings their DESTROY forward (see "Dumps bring DESTROYs forward" in
//! `host/docs/kernel-behaviour.md`) — the garbage collector would evict them anyway, up to a
//! minute later. Entries that existed before the shadow started are left out: their beginning
//! was not seen.
//!
//! [`Shadow`] is the comparison, fed by hand; [`run_shadow`] drives it from the sockets and the
//! wall clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use ctwasm_core::config::Sysctls;
use ctwasm_core::netlink::CtMessage;
use ctwasm_host::backend::{Backend, NativeBackend, TrackerSettings};
use ctwasm_host::capture::CapturedPacket;
use ctwasm_host::compare::{Agreement, Comparison, FlowLog};
use ctwasm_host::listener::Listeners;
use ctwasm_host::output::tuple_text;
use ctwasm_host::replay::{ArrivingChecksums, Simulation};

use crate::capture::{Observed, Observer};
use crate::ctnetlink::Conntrack;
use crate::netns::in_netns;

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
    /// What the interface does with arriving packets' checksums (a veth from a local sender
    /// leaves them unfinished, and the kernel trusts them).
    pub arriving: ArrivingChecksums,
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

/// The kernel's settings with the caller's overrides in their place.
fn engine_sysctls(options: &ShadowOptions) -> Result<Vec<(String, String)>> {
    let mut sysctls = kernel_sysctls(&options.netns)?;
    for (n, v) in &options.overrides {
        let short = n.strip_prefix("net.netfilter.").unwrap_or(n);
        sysctls.retain(|(k, _)| k.strip_prefix("net.netfilter.").unwrap_or(k) != short);
        sysctls.push((format!("net.netfilter.{short}"), v.clone()));
    }
    Ok(sysctls)
}

/// How long one side may be ahead, live, before the flow counts as divergent: longer than
/// the once-a-second eviction plus the engine's half second behind the wall clock.
const PENDING_GRACE: Duration = Duration::from_secs(3);

/// The comparison itself, sans I/O: observations go in ([`handle`](Self::handle)), the flows
/// are counted whenever the driver asks ([`evaluate`](Self::evaluate)), and
/// [`finish`](Self::finish) settles both sides at one instant. The driver ([`run_shadow`])
/// owns the sockets and the wall clock.
#[derive(Debug)]
pub struct Shadow<'a> {
    sim: Simulation<'a>,
    kernel: FlowLog,
    ours: FlowLog,
    packets: u64,
    events: u64,
    /// Flows already in the table when the shadow started: their beginning was not seen.
    preexisting: BTreeSet<String>,
    /// When each flow that is only a prefix on one side became so.
    pending_since: BTreeMap<String, Instant>,
    /// Flows whose divergence has been reported.
    reported: BTreeSet<String>,
    latest: ShadowCounts,
}

impl<'a> Shadow<'a> {
    /// Compares `backend` with the kernel, leaving out the flows of `preexisting` (the kernel's
    /// table when the shadow started).
    pub fn new(backend: &'a mut dyn Backend, preexisting: &[CtMessage]) -> Result<Shadow<'a>> {
        Ok(Shadow {
            sim: Simulation::new(backend, Listeners::lossless())?,
            kernel: FlowLog::new(),
            ours: FlowLog::new(),
            packets: 0,
            events: 0,
            preexisting: preexisting
                .iter()
                .filter_map(|m| m.orig().map(|t| format!("{} #0", tuple_text(&t))))
                .collect(),
            pending_since: BTreeMap::new(),
            reported: BTreeSet::new(),
            latest: ShadowCounts::default(),
        })
    }

    /// Takes one observation: a packet goes through the engine, a kernel event into the
    /// kernel's log. Trouble voids the comparison.
    pub fn handle(&mut self, observed: Observed) -> Result<()> {
        match observed {
            Observed::Packet(_, p) => {
                self.packets += 1;
                // A capture's clock can step back by a few ns between CPUs; the engine's may not.
                let p = CapturedPacket {
                    ts_ns: p.ts_ns.max(self.sim.now()),
                    ..p
                };
                self.sim.ingest(std::slice::from_ref(&p), &mut self.ours)?;
            }
            Observed::Event(_, m) => {
                self.events += 1;
                self.kernel.push(&m.message);
            }
            Observed::Trouble(t) => bail!("{t}: the comparison would be void"),
        }
        Ok(())
    }

    /// Runs the engine on to `engine_ns` (if it is not there yet) and counts the flows as they
    /// stand at `now`; a flow pending for longer than [`PENDING_GRACE`] counts as divergent.
    /// Returns the first divergence of each flow that diverged since the last call.
    pub fn evaluate(&mut self, now: Instant, engine_ns: u64) -> Result<Vec<String>> {
        if engine_ns > self.sim.now() {
            self.sim.run_until(engine_ns, &mut self.ours)?;
        }
        let cmp = self.comparison();
        let mut c = ShadowCounts {
            packets: self.packets,
            events: self.events,
            flows: cmp.flows.len(),
            ..ShadowCounts::default()
        };
        let mut diverged = Vec::new();
        for f in &cmp.flows {
            let agreement = f.agreement(false);
            if agreement != Agreement::Prefix {
                self.pending_since.remove(&f.flow);
            }
            match agreement {
                Agreement::Identical => c.agree += 1,
                Agreement::Prefix => {
                    let since = *self.pending_since.entry(f.flow.clone()).or_insert(now);
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
        self.latest = c;
        Ok(diverged
            .into_iter()
            .filter(|f| self.reported.insert(f.flow.clone()))
            .filter_map(|f| f.first_divergence())
            .collect())
    }

    /// The counts of the last [`evaluate`](Self::evaluate), with the packets and events up to
    /// now.
    pub fn counts(&self) -> ShadowCounts {
        ShadowCounts {
            packets: self.packets,
            events: self.events,
            ..self.latest.clone()
        }
    }

    fn comparison(&self) -> Comparison {
        Comparison::of_flows(&self.kernel, &self.ours, |f| !self.preexisting.contains(f))
    }

    /// Brings the engine to `until_ns`, the instant of the kernel's last eviction, and compares
    /// for good: a missing step is now a divergence.
    pub fn finish(mut self, until_ns: u64, sysctls: Vec<(String, String)>) -> Result<ShadowReport> {
        self.sim
            .run_until(until_ns.max(self.sim.now()), &mut self.ours)?;
        let comparison = self.comparison();
        Ok(ShadowReport {
            counts: ShadowCounts {
                packets: self.packets,
                events: self.events,
                flows: comparison.flows.len(),
                agree: comparison.identical(),
                pending: 0,
                diverge: comparison.divergent(true).count(),
            },
            preexisting: self.preexisting.len(),
            sysctls,
            comparison,
        })
    }
}

/// Runs the shadow until `options.duration` has passed or `stop` is set.
pub fn run_shadow(
    options: &ShadowOptions,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&ShadowProgress),
) -> Result<ShadowReport> {
    let sysctls = engine_sysctls(options)?;
    let settings = TrackerSettings {
        sysctls: sysctls.clone(),
        ..TrackerSettings::default()
    };
    let mut backend = NativeBackend::new(settings.engine_config()?);
    let netns = options.netns.as_str();
    let observer = Observer::start(&[netns], &[(netns, options.interface.as_str())])?;
    let mut ct = Conntrack::open(Some(netns))?;
    let table: Vec<CtMessage> = ct.dump()?.into_iter().map(|m| m.message).collect();
    let mut shadow = Shadow::new(&mut backend, &table)?;
    shadow.sim.arriving = options.arriving;

    let started = Instant::now();
    let mut next_evict = started + Duration::from_secs(1);
    let mut next_report = started + options.report_every;
    while !(stop.load(Ordering::SeqCst) || options.duration.is_some_and(|d| started.elapsed() >= d))
    {
        match observer.receiver().recv_timeout(Duration::from_millis(100)) {
            Ok(o) => shadow.handle(o)?,
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
            for line in shadow.evaluate(now, behind)? {
                progress(&ShadowProgress::Diverged(line));
            }
        }
        if now >= next_report {
            next_report = now + options.report_every;
            progress(&ShadowProgress::Counts {
                elapsed: started.elapsed(),
                counts: shadow.counts(),
            });
        }
    }

    // The end: evict what has expired, let the last events arrive, and bring the engine to the
    // instant of that eviction.
    let until = wall_ns();
    ct.dump()?;
    std::thread::sleep(Duration::from_millis(300));
    for o in observer.finish() {
        shadow.handle(o)?;
    }
    shadow.finish(until, sysctls)
}
