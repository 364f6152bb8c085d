//! Holding the engine against the kernel, flow by flow.
//!
//! The kernel is the judge of our trackers. A comparison puts the same packets through both: the
//! kernel saw them live (its events come from a ctnetlink listener), the engine sees them from a
//! capture taken at the same time (see `ctwasm_live::capture`). What is compared is what a
//! listener can rely on and what the trackers decide: per flow, the ordered sequence of
//! (message type, TCP or SCTP state, SEEN_REPLY, ASSURED) and the timeout the entry was given — a
//! [`Step`]. Timeouts match within a second (the kernel reads the remaining time a moment after
//! setting it, and a jiffy may tick in between). Ids, counters and timestamps are left out: they
//! are checked by the replay tests against recorded captures.
//!
//! A flow is the original tuple plus a generation number: a tuple that is reused after a
//! DESTROY (a reopen after TIME_WAIT) is a new flow, `#1`, `#2`, ... The kernel prints
//! concurrent flows' events in its own order, so only the order within a flow is meaningful.
//!
//! Everything here is pure; the conformance tests and `ctwasm shadow` feed it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

use anyhow::Result;
use ctwasm_core::batch::EventFrame;
use ctwasm_core::event::{MessageKind, SctpState, Status, TcpState};
use ctwasm_core::netlink::CtMessage;

use crate::output::tuple_text;
use crate::replay::EventSink;

/// One event message, reduced to what the trackers decide.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub kind: MessageKind,
    pub tcp_state: Option<TcpState>,
    pub sctp_state: Option<SctpState>,
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
            && self.sctp_state == o.sctp_state
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
            sctp_state: msg.sctp_state(),
            seen_reply: status.contains(Status::SEEN_REPLY),
            assured: status.contains(Status::ASSURED),
            timeout: msg.timeout(),
        })
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind.name())?;
        if let Some(s) = self.tcp_state {
            write!(f, " {}", s.name())?;
        }
        if let Some(s) = self.sctp_state {
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
        let tuple = tuple_text(&msg.orig()?);
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

/// A log fed by a simulation: every message read goes in.
impl EventSink for FlowLog {
    fn event(&mut self, _: &EventFrame<'_>, message: &CtMessage) -> Result<()> {
        self.push(message);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn step(kind: MessageKind, st: Option<TcpState>, r: bool, a: bool) -> Step {
        Step {
            kind,
            tcp_state: st,
            sctp_state: None,
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
