//! `--ipfix`: the flow export options the long-running commands share (`watch`, `replay`).

use std::time::Duration;

use anyhow::{Context, Result};
use ctwasm_core::netlink::CtMessage;
use ctwasm_host::ipfix::{Collector, ExportOptions, ExportStats, Exporter, StartTimes};

/// IPFIX export of finished flows.
#[derive(clap::Args, Debug, Default)]
pub struct IpfixArgs {
    /// Export one IPFIX record per finished flow (its DESTROY) to this collector:
    /// HOST:PORT or udp://HOST:PORT (UDP), tcp://HOST:PORT (TCP); the port defaults to 4739.
    #[arg(long, value_name = "COLLECTOR")]
    ipfix: Option<Collector>,
    /// The IPFIX observation domain id.
    #[arg(long, value_name = "ID", default_value_t = 1, requires = "ipfix")]
    ipfix_domain: u32,
    /// Largest IPFIX message over UDP, in bytes (the path MTU; 512 when unknown, as RFC 7011
    /// asks).
    #[arg(long, value_name = "BYTES", default_value_t = 512, requires = "ipfix",
          value_parser = clap::value_parser!(u16).range(256..))]
    ipfix_max_message: u16,
}

/// A running export, fed event by event.
#[derive(Debug)]
pub struct FlowExport {
    exporter: Exporter,
    starts: StartTimes,
    collector: String,
}

impl IpfixArgs {
    /// Whether an export was asked for.
    pub fn is_set(&self) -> bool {
        self.ipfix.is_some()
    }

    /// Starts the export, if one was asked for.
    pub fn start(&self) -> Result<Option<FlowExport>> {
        let Some(collector) = &self.ipfix else {
            return Ok(None);
        };
        let mut options = ExportOptions::new(collector.clone());
        options.domain = self.ipfix_domain;
        options.max_udp_message = usize::from(self.ipfix_max_message);
        let exporter = Exporter::start(options)
            .with_context(|| format!("--ipfix {}: opening the socket", collector.addr))?;
        Ok(Some(FlowExport {
            exporter,
            starts: StartTimes::default(),
            collector: format!("{:?}://{}", collector.transport, collector.addr).to_lowercase(),
        }))
    }
}

impl FlowExport {
    /// Looks at one event message seen at `event_ns`; a DESTROY is exported.
    pub fn observe(&mut self, msg: &CtMessage, event_ns: u64) {
        if let Some(record) = self.starts.observe(msg, event_ns) {
            self.exporter.export(record);
        }
    }

    /// The export's figures, for `--metrics`.
    pub fn push_metrics(&self, s: &mut ctwasm_host::metrics::Snapshot) {
        use ctwasm_host::metrics::Kind;
        let stats = self.exporter.stats();
        s.push(
            "ipfix_records_exported",
            "Flow records handed to the IPFIX collector's socket.",
            Kind::Counter,
            stats.exported,
        );
        s.push(
            "ipfix_messages",
            "IPFIX messages sent.",
            Kind::Counter,
            stats.messages,
        );
        s.push_labelled(
            "ipfix_records_dropped",
            "Flow records dropped, by reason.",
            Kind::Counter,
            "reason",
            [
                ("queue_full", stats.dropped_queue_full),
                ("send_failed", stats.dropped_send_failed),
                ("at_exit", stats.dropped_at_exit),
            ]
            .map(|(r, n)| (r.to_string(), n)),
        );
    }

    /// Sends what is queued (waiting up to two seconds) and says what was done on stderr.
    pub fn finish(self, quiet: bool) -> ExportStats {
        let stats = self.exporter.finish(Duration::from_secs(2));
        if !quiet {
            eprintln!("ctwasm: ipfix to {}: {stats}", self.collector);
        }
        stats
    }
}
