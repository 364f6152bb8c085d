//! Holding the engine against the kernel, flow by flow.
//!
//! The kernel is the judge of our trackers. A conformance check puts the same packets through
//! both: the kernel saw them live (its events come from a ctnetlink listener), the engine sees
//! them from a capture taken at the same time (see [`crate::live_capture`]). What is compared is
//! what a listener can rely on and what the trackers decide: per flow, the ordered sequence of
//! (message type, TCP state, SEEN_REPLY, ASSURED) and the timeout the entry was given — a
//! [`Step`]. Timeouts match within a second (the kernel reads the remaining time a moment after
//! setting it, and a jiffy may tick in between). Ids, counters and timestamps are left out: they
//! are checked by the replay tests against recorded captures.
//!
//! A flow is the original tuple plus a generation number: a tuple that is reused after a
//! DESTROY (a reopen after TIME_WAIT) is a new flow, `#1`, `#2`, ... The kernel prints
//! concurrent flows' events in its own order, so only the order within a flow is meaningful.
//!
//! The comparison is pure; [`replay_capture`] runs the engine (either backend) on a capture up to the instant the
//! kernel's table was last read, so both sides have had the same chance to time entries out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

use anyhow::Result;
use ctwasm_core::batch::EventFrame;
use ctwasm_core::event::{MessageKind, Status, TcpState};
use ctwasm_core::netlink::CtMessage;
use ctwasm_core::tuple::{L4Tuple, Tuple, ipproto};

use crate::backend::{BackendKind, TrackerSettings, open_backend};
use crate::capture::CapturedPacket;
use crate::listener::Listeners;
use crate::replay::Simulation;

/// One event message, reduced to what the trackers decide.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub kind: MessageKind,
    pub tcp_state: Option<TcpState>,
    pub seen_reply: bool,
    pub assured: bool,
    /// Seconds left when the message was made (DESTROY carries none).
    pub timeout: Option<u32>,
}

/// Equal when everything but the timeout is, and the timeouts are within a second.
impl PartialEq for Step {
    fn eq(&self, o: &Step) -> bool {
        self.kind == o.kind
            && self.tcp_state == o.tcp_state
            && self.seen_reply == o.seen_reply
            && self.assured == o.assured
            && match (self.timeout, o.timeout) {
                (Some(a), Some(b)) => a.abs_diff(b) <= 1,
                (a, b) => a == b,
            }
    }
}

impl Step {
    pub fn of(msg: &CtMessage) -> Option<Step> {
        let status = msg.status().unwrap_or(Status(0));
        Some(Step {
            kind: msg.kind()?,
            tcp_state: msg.tcp_state(),
            seen_reply: status.contains(Status::SEEN_REPLY),
            assured: status.contains(Status::ASSURED),
            timeout: msg.timeout(),
        })
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            MessageKind::New => "NEW",
            MessageKind::Update => "UPDATE",
            MessageKind::Destroy => "DESTROY",
        };
        write!(f, "{kind}")?;
        if let Some(s) = self.tcp_state {
            write!(f, " {}", s.name())?;
        }
        if self.seen_reply {
            write!(f, " SEEN_REPLY")?;
        }
        if self.assured {
            write!(f, " ASSURED")?;
        }
        if let Some(t) = self.timeout {
            write!(f, " {t}s")?;
        }
        Ok(())
    }
}

/// The name of a flow's original direction, the same for the kernel's and the engine's
/// messages: `tcp 127.0.0.1:40001 > 127.0.0.1:5001`.
pub fn flow_name(t: &Tuple) -> String {
    let proto = ipproto::name(t.proto)
        .map(str::to_string)
        .unwrap_or_else(|| format!("proto-{}", t.proto));
    let (src, dst) = (t.src.to_ip(t.family), t.dst.to_ip(t.family));
    match t.l4 {
        L4Tuple::Ports { src: sp, dst: dp } => {
            let host = |a: std::net::IpAddr, p: u16| match a {
                std::net::IpAddr::V4(a) => format!("{a}:{p}"),
                std::net::IpAddr::V6(a) => format!("[{a}]:{p}"),
            };
            format!("{proto} {} > {}", host(src, sp), host(dst, dp))
        }
        L4Tuple::Icmp { id, kind, code } => {
            format!("{proto} {src} > {dst} type={kind} code={code} id={id}")
        }
        L4Tuple::None => format!("{proto} {src} > {dst}"),
    }
}

/// Event messages grouped by flow, each flow's steps in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowLog {
    flows: BTreeMap<String, Vec<Step>>,
    generation: BTreeMap<String, usize>,
}

impl FlowLog {
    pub fn new() -> FlowLog {
        FlowLog::default()
    }

    /// Adds one event message; returns the flow it belongs to (`None` for a message that is not
    /// a conntrack event or has no original tuple).
    pub fn push(&mut self, msg: &CtMessage) -> Option<String> {
        let step = Step::of(msg)?;
        let tuple = flow_name(&msg.orig()?);
        let tuple = match msg.zone() {
            0 => tuple,
            z => format!("{tuple} zone={z}"),
        };
        let g = self.generation.entry(tuple.clone()).or_default();
        let key = format!("{tuple} #{g}");
        if step.kind == MessageKind::Destroy {
            *g += 1;
        }
        self.flows.entry(key.clone()).or_default().push(step);
        Some(key)
    }

    pub fn extend<'a>(&mut self, msgs: impl IntoIterator<Item = &'a CtMessage>) {
        for m in msgs {
            self.push(m);
        }
    }

    /// Puts a whole flow in under `flow` (merging logs of several namespaces).
    pub fn insert(&mut self, flow: String, steps: Vec<Step>) {
        self.flows.insert(flow, steps);
    }

    pub fn flows(&self) -> &BTreeMap<String, Vec<Step>> {
        &self.flows
    }

    pub fn get(&self, flow: &str) -> &[Step] {
        self.flows.get(flow).map_or(&[], Vec::as_slice)
    }
}

/// One flow as both sides saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowDiff {
    pub flow: String,
    pub kernel: Vec<Step>,
    pub ours: Vec<Step>,
}

/// How one flow compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agreement {
    /// The same steps on both sides.
    Identical,
    /// No step differs, but one side is ahead (the other may still catch up, live).
    Prefix,
    /// Step `n` (0-based) differs, or one side ended there while the comparison is final.
    DivergesAt(usize),
}

impl FlowDiff {
    /// `settled`: both sides are complete, so a missing step is a divergence.
    pub fn agreement(&self, settled: bool) -> Agreement {
        let common = self.kernel.len().min(self.ours.len());
        if let Some(i) = (0..common).find(|&i| self.kernel[i] != self.ours[i]) {
            return Agreement::DivergesAt(i);
        }
        if self.kernel.len() == self.ours.len() {
            Agreement::Identical
        } else if settled {
            Agreement::DivergesAt(common)
        } else {
            Agreement::Prefix
        }
    }

    /// Both sequences side by side, the first differing row marked.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "  {}", self.flow);
        let _ = writeln!(s, "      {:<50} | ours", "kernel");
        let first = match self.agreement(true) {
            Agreement::DivergesAt(i) => Some(i),
            _ => None,
        };
        for i in 0..self.kernel.len().max(self.ours.len()) {
            let cell = |v: &[Step]| v.get(i).map_or("-".to_string(), Step::to_string);
            let (k, o) = (cell(&self.kernel), cell(&self.ours));
            let mark = if Some(i) == first {
                ">>"
            } else if k != o {
                " !"
            } else {
                "  "
            };
            let _ = writeln!(s, "  {mark}  {k:<50} | {o}");
        }
        s
    }

    /// The first divergence in one line, for a running report.
    pub fn first_divergence(&self) -> Option<String> {
        let Agreement::DivergesAt(i) = self.agreement(true) else {
            return None;
        };
        let cell = |v: &[Step]| v.get(i).map_or("(nothing)".to_string(), Step::to_string);
        Some(format!(
            "{}: step {}: kernel {}, ours {}",
            self.flow,
            i + 1,
            cell(&self.kernel),
            cell(&self.ours)
        ))
    }
}

/// Every flow either side saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Comparison {
    pub flows: Vec<FlowDiff>,
}

impl Comparison {
    pub fn new(kernel: &FlowLog, ours: &FlowLog) -> Comparison {
        Comparison::of_flows(kernel, ours, |_| true)
    }

    /// Only the flows `keep` accepts (live: flows that existed before the comparison began are
    /// left out).
    pub fn of_flows(kernel: &FlowLog, ours: &FlowLog, keep: impl Fn(&str) -> bool) -> Comparison {
        let names: BTreeSet<&String> = kernel.flows.keys().chain(ours.flows.keys()).collect();
        Comparison {
            flows: names
                .into_iter()
                .filter(|n| keep(n))
                .map(|n| FlowDiff {
                    flow: n.clone(),
                    kernel: kernel.get(n).to_vec(),
                    ours: ours.get(n).to_vec(),
                })
                .collect(),
        }
    }

    pub fn compared(&self) -> usize {
        self.flows.len()
    }

    pub fn identical(&self) -> usize {
        self.flows
            .iter()
            .filter(|f| f.agreement(true) == Agreement::Identical)
            .count()
    }

    pub fn divergent(&self, settled: bool) -> impl Iterator<Item = &FlowDiff> {
        self.flows
            .iter()
            .filter(move |f| matches!(f.agreement(settled), Agreement::DivergesAt(_)))
    }

    /// The divergent flows side by side; empty when all agree.
    pub fn diff_text(&self) -> String {
        self.divergent(true).map(FlowDiff::render).collect()
    }

    /// Every flow, divergent or not, side by side (for a passing run's log).
    pub fn full_text(&self) -> String {
        self.flows.iter().map(FlowDiff::render).collect()
    }
}

/// Parses `NAME=VALUE` sysctl settings as the CLI takes them.
pub fn parse_sysctls<S: AsRef<str>>(list: &[S]) -> Result<Vec<(String, String)>> {
    list.iter()
        .map(|s| {
            let s = s.as_ref();
            let (n, v) = s
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("sysctl `{s}`: expected NAME=VALUE"))?;
            Ok((n.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Runs the engine (`kind`: native or the component) with `sysctls` over `packets` (in capture
/// order) and on to `until_ns`, with one lossless listener; returns every message it read.
pub fn replay_capture(
    kind: BackendKind,
    packets: &[CapturedPacket],
    sysctls: &[(String, String)],
    until_ns: u64,
) -> Result<Vec<CtMessage>> {
    let settings = TrackerSettings {
        sysctls: sysctls.to_vec(),
        ..TrackerSettings::default()
    };
    let mut backend = open_backend(kind, &settings, None)?;
    let mut sim = Simulation::new(backend.as_mut(), Listeners::lossless())?;
    let mut out = Vec::new();
    let mut sink = |_: &EventFrame<'_>, m: &CtMessage| -> Result<()> {
        out.push(m.clone());
        Ok(())
    };
    for p in packets {
        // A capture's clock can step back by a few ns between CPUs; the engine's may not.
        let p = CapturedPacket {
            ts_ns: p.ts_ns.max(sim.now()),
            l3: p.l3.clone(),
        };
        sim.ingest(std::slice::from_ref(&p), &mut sink)?;
    }
    let end = until_ns.max(sim.now());
    sim.run_until(end, &mut sink)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(kind: MessageKind, st: Option<TcpState>, r: bool, a: bool) -> Step {
        Step {
            kind,
            tcp_state: st,
            seen_reply: r,
            assured: a,
            timeout: None,
        }
    }

    #[test]
    fn timeouts_match_within_a_second() {
        let at = |t| Step {
            timeout: Some(t),
            ..step(MessageKind::Update, Some(TcpState::Established), true, true)
        };
        assert_eq!(at(432000), at(431999));
        assert_ne!(at(120), at(300));
        assert_ne!(
            at(120),
            step(MessageKind::Update, Some(TcpState::Established), true, true)
        );
        assert_eq!(
            at(60).to_string(),
            "UPDATE ESTABLISHED SEEN_REPLY ASSURED 60s"
        );
    }

    #[test]
    fn agreement_tells_identical_prefix_and_divergence_apart() {
        let new = step(MessageKind::New, Some(TcpState::SynSent), false, false);
        let upd = step(MessageKind::Update, Some(TcpState::SynRecv), true, false);
        let other = step(MessageKind::Update, Some(TcpState::Established), true, true);
        let f = |k: Vec<Step>, o: Vec<Step>| FlowDiff {
            flow: "f".into(),
            kernel: k,
            ours: o,
        };
        assert_eq!(
            f(vec![new, upd], vec![new, upd]).agreement(true),
            Agreement::Identical
        );
        assert_eq!(
            f(vec![new, upd], vec![new]).agreement(false),
            Agreement::Prefix
        );
        assert_eq!(
            f(vec![new, upd], vec![new]).agreement(true),
            Agreement::DivergesAt(1)
        );
        let d = f(vec![new, upd], vec![new, other]);
        assert_eq!(d.agreement(false), Agreement::DivergesAt(1));
        let text = d.render();
        assert!(text.contains(">>  UPDATE SYN_RECV SEEN_REPLY"), "{text}");
        assert!(
            d.first_divergence()
                .unwrap()
                .contains("kernel UPDATE SYN_RECV SEEN_REPLY, ours UPDATE ESTABLISHED"),
        );
    }
}
