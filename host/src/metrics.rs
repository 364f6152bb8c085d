//! Metrics for Prometheus: the tracker's, the listeners' and a command's own figures in the
//! OpenMetrics text format, encoded by the Prometheus project's Rust client.
//!
//! A long-running command (`watch`, `stress`, `shadow`) publishes a [`Snapshot`] of its
//! figures whenever they change; a scrape encodes the latest one. The figures are plain
//! numbers the command already keeps (the tracker's [`Stats`], [`ListenerStats`], socket
//! counts), so publishing is a copy under a lock and a scrape never waits on the command's
//! work. Serving the text over HTTP is the command's business (the `ctwasm` binary does it).
//!
//! Names: `ctwasm_` then the figure's own name (the tracker's as `conntrack -S` and
//! [`Stats`] name them), counters with `_total`. A figure that only grows is a counter; one
//! that goes up and down (entries, dying, queued bytes) is a gauge.

use std::sync::{Arc, Mutex};

use ctwasm_core::Stats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::listener::ListenerStats;

/// Whether a figure only grows or goes both ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One metric: a name (without `ctwasm_` and `_total`), its help, and its values by label set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metric {
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub samples: Vec<(Vec<(String, String)>, u64)>,
}

/// Everything a command publishes at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub metrics: Vec<Metric>,
}

impl Snapshot {
    /// Adds one unlabelled figure.
    pub fn push(&mut self, name: &str, help: &str, kind: Kind, value: u64) {
        self.metrics.push(Metric {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            samples: vec![(Vec::new(), value)],
        });
    }

    /// Adds one figure per label value: `label="value"` each.
    pub fn push_labelled(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        label: &str,
        values: impl IntoIterator<Item = (String, u64)>,
    ) {
        self.metrics.push(Metric {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            samples: values
                .into_iter()
                .map(|(v, n)| (vec![(label.to_string(), v)], n))
                .collect(),
        });
    }

    /// The tracker's statistics, one metric each.
    pub fn push_tracker(&mut self, stats: &Stats) {
        for (name, value) in stats.fields() {
            let (kind, help) = tracker_figure(name);
            // `_count` is a histogram's suffix in Prometheus: the kernel's count of live plus
            // dying entries is exported as `counted`.
            let name = if name == "count" { "counted" } else { name };
            self.push(&format!("conntrack_{name}"), help, kind, value);
        }
    }

    /// Simulated listeners' figures, labelled by listener name.
    pub fn push_listeners(&mut self, listeners: &[(String, ListenerStats)]) {
        type Pick = fn(&ListenerStats) -> u64;
        let figures: [(&str, &str, Kind, Pick); 6] = [
            (
                "listener_received",
                "Event messages queued on the listener's socket.",
                Kind::Counter,
                |s| s.received,
            ),
            (
                "listener_read",
                "Event messages the listener's reader read.",
                Kind::Counter,
                |s| s.read,
            ),
            (
                "listener_dropped",
                "Event messages the socket refused (a full receive buffer).",
                Kind::Counter,
                |s| s.dropped,
            ),
            (
                "listener_enobufs",
                "Overruns reported to the reader as ENOBUFS.",
                Kind::Counter,
                |s| s.enobufs,
            ),
            (
                "listener_faults",
                "Refusals made by fault injection.",
                Kind::Counter,
                |s| s.faults,
            ),
            (
                "listener_peak_queued_bytes",
                "The most bytes ever queued on the socket at once.",
                Kind::Gauge,
                |s| s.peak_queued_bytes as u64,
            ),
        ];
        for (name, help, kind, pick) in figures {
            self.push_labelled(
                name,
                help,
                kind,
                "listener",
                listeners.iter().map(|(n, s)| (n.clone(), pick(s))),
            );
        }
    }
}

/// How a tracker statistic is exported.
fn tracker_figure(name: &str) -> (Kind, &'static str) {
    match name {
        "found" => (Kind::Counter, "Packets whose entry was found in the table."),
        "invalid" => (
            Kind::Counter,
            "Packets that fit no entry or were malformed.",
        ),
        "insert" => (Kind::Counter, "Entries confirmed into the table."),
        "insert_failed" => (Kind::Counter, "Entries that could not be inserted."),
        "drop" => (
            Kind::Counter,
            "New connections refused because the table was full.",
        ),
        "early_drop" => (Kind::Counter, "Entries evicted to make room."),
        "error" => (Kind::Counter, "Packets refused with an error."),
        "ignore" => (
            Kind::Counter,
            "TCP packets accepted without a state change.",
        ),
        "untracked" => (Kind::Counter, "Packets conntrack does not track."),
        "entries" => (Kind::Gauge, "Live entries (in the hash table)."),
        "count" => (
            Kind::Gauge,
            "Live plus dying entries (nf_conntrack_count, what nf_conntrack_max bounds).",
        ),
        "max" => (Kind::Gauge, "nf_conntrack_max in force."),
        "events_emitted" => (Kind::Counter, "Event messages produced."),
        "events_delivered" => (Kind::Counter, "Event messages reported delivered."),
        "events_failed" => (Kind::Counter, "Event messages reported failed."),
        "destroy_retries" => (
            Kind::Counter,
            "DESTROY messages sent again from the dying list.",
        ),
        "missed_pending" => (Kind::Gauge, "Entries carrying undelivered event bits."),
        "dying" => (
            Kind::Gauge,
            "Entries on the dying list (their DESTROY not yet delivered).",
        ),
        "dying_peak" => (Kind::Gauge, "The most entries ever on the dying list."),
        "frag_received" => (Kind::Counter, "IP fragments received for reassembly."),
        "frag_reassembled" => (
            Kind::Counter,
            "Datagrams reassembled from fragments and tracked whole.",
        ),
        "frag_failed" => (
            Kind::Counter,
            "Fragments dropped and datagrams given up (overlapping, inconsistent, oversized, \
             over the memory bound).",
        ),
        "frag_timeout" => (
            Kind::Counter,
            "Incomplete datagrams given up when their time ran out.",
        ),
        "frag_queues" => (Kind::Gauge, "Incomplete datagrams waiting for fragments."),
        _ => (Kind::Gauge, "A tracker statistic."),
    }
}

/// Where a command publishes and a scrape reads.
#[derive(Clone, Debug, Default)]
pub struct Published {
    latest: Arc<Mutex<Snapshot>>,
}

impl Published {
    pub fn new() -> Published {
        Published::default()
    }

    /// Replaces what the next scrape sees.
    pub fn publish(&self, snapshot: Snapshot) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }

    /// The latest snapshot in Prometheus' classic text format (version 0.0.4), for scrapers
    /// that do not ask for OpenMetrics: the same samples, with each counter's HELP and TYPE
    /// under its sample name (`_total`) and no `# EOF`.
    pub fn encode_classic(&self) -> String {
        let open = self.encode();
        let counters: Vec<String> = self
            .latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .metrics
            .iter()
            .filter(|m| m.kind == Kind::Counter)
            .map(|m| format!("ctwasm_{}", m.name))
            .collect();
        let mut out = String::with_capacity(open.len() + 8 * counters.len());
        for line in open.lines() {
            if line == "# EOF" {
                continue;
            }
            let meta = line
                .strip_prefix("# HELP ")
                .map(|rest| ("# HELP ", rest))
                .or_else(|| line.strip_prefix("# TYPE ").map(|rest| ("# TYPE ", rest)));
            match meta {
                Some((tag, rest)) => {
                    let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                    if counters.iter().any(|c| c == name) {
                        out.push_str(&format!("{tag}{name}_total {tail}\n"));
                    } else {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
                None => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// The latest snapshot as OpenMetrics text (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut registry = Registry::with_prefix("ctwasm");
        registry.register_collector(Box::new(SnapshotCollector {
            latest: Arc::clone(&self.latest),
        }));
        let mut text = String::new();
        // Writing into a String does not fail, and the collector's only errors are the
        // String's.
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("encoding into a String");
        text
    }
}

#[derive(Debug)]
struct SnapshotCollector {
    latest: Arc<Mutex<Snapshot>>,
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self
            .latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for m in &snapshot.metrics {
            let kind = match m.kind {
                Kind::Counter => ConstCounter::new(0u64).metric_type(),
                Kind::Gauge => ConstGauge::new(0i64).metric_type(),
            };
            let mut family = encoder.encode_descriptor(&m.name, &m.help, None, kind)?;
            for (labels, value) in &m.samples {
                let sample = family.encode_family(labels)?;
                match m.kind {
                    Kind::Counter => ConstCounter::new(*value).encode(sample)?,
                    Kind::Gauge => {
                        ConstGauge::new(i64::try_from(*value).unwrap_or(i64::MAX)).encode(sample)?
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_encodes_as_openmetrics_text() {
        let published = Published::new();
        let mut s = Snapshot::default();
        s.push_tracker(&Stats {
            found: 5,
            entries: 2,
            dying: 1,
            ..Stats::default()
        });
        s.push_listeners(&[(
            "slow \"one\"".to_string(),
            ListenerStats {
                received: 9,
                dropped: 3,
                ..ListenerStats::default()
            },
        )]);
        published.publish(s);
        let text = published.encode();
        assert!(
            text.contains("# TYPE ctwasm_conntrack_found counter\n"),
            "{text}"
        );
        assert!(
            text.contains("\nctwasm_conntrack_found_total 5\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ctwasm_conntrack_entries gauge\n"),
            "{text}"
        );
        assert!(text.contains("\nctwasm_conntrack_entries 2\n"), "{text}");
        assert!(text.contains("\nctwasm_conntrack_dying 1\n"), "{text}");
        // Label values are escaped.
        assert!(
            text.contains("ctwasm_listener_dropped_total{listener=\"slow \\\"one\\\"\"} 3\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        // One HELP and one TYPE per metric.
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        assert_eq!(types, Stats::FIELD_COUNT + 6);
        assert_eq!(helps, types);
    }

    #[test]
    fn the_classic_format_names_counters_by_their_samples() {
        let published = Published::new();
        let mut s = Snapshot::default();
        s.push("events", "Events.", Kind::Counter, 4);
        s.push("queued", "Queued.", Kind::Gauge, 2);
        published.publish(s);
        assert_eq!(
            published.encode_classic(),
            "# HELP ctwasm_events_total Events.\n# TYPE ctwasm_events_total counter\n\
             ctwasm_events_total 4\n# HELP ctwasm_queued Queued.\n# TYPE ctwasm_queued gauge\n\
             ctwasm_queued 2\n"
        );
    }

    #[test]
    fn an_empty_snapshot_is_a_valid_document() {
        assert_eq!(Published::new().encode(), "# EOF\n");
    }
}
