//! `--export`: reliable export of every event to a NATS JetStream stream, shared by the
//! commands that run an engine (`replay`, `stress`).

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use ctwasm_export::{ExportConfig, ExportReport, Format, NatsExport, parse_servers};

/// Export of events to NATS JetStream, as a listener that asked for reliable delivery.
#[derive(clap::Args, Debug, Default)]
pub struct ExportArgs {
    /// Publish every event to this NATS JetStream cluster (nats://HOST:PORT[,HOST:PORT...]);
    /// the stream's acknowledgement is the delivery result: a DESTROY it has not taken stays
    /// on the dying list and is sent again.
    #[arg(long, value_name = "nats://HOST:PORT[,...]")]
    export: Option<String>,
    /// The stream (created when absent, with subjects PREFIX.>).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "CONNTRACK",
        requires = "export"
    )]
    stream: String,
    /// The subject prefix: events go to PREFIX.HOST.ZONE.new|update|destroy.
    #[arg(
        long,
        value_name = "PREFIX",
        default_value = "conntrack",
        requires = "export"
    )]
    subject: String,
    /// This host's name in subjects, headers and message ids (default: the system's host
    /// name, with characters other than letters, digits, - and _ made _).
    #[arg(long, value_name = "NAME", requires = "export")]
    export_host: Option<String>,
    /// The payload: netlink (the event frame and its ctnetlink bytes) or json.
    #[arg(
        long,
        value_name = "FORMAT",
        default_value = "netlink",
        requires = "export"
    )]
    export_format: String,
    /// Seconds to wait for the stream's acknowledgement before a delivery counts as failed.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 2.0,
        requires = "export"
    )]
    export_ack_timeout: f64,
    /// Replicas of a stream the export creates (1 to 5).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "export")]
    export_replicas: usize,
    /// Keep a stream the export creates in memory instead of files.
    #[arg(long, requires = "export")]
    export_memory: bool,
    /// The duplicate window of a stream the export creates, seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 120,
        requires = "export"
    )]
    export_duplicate_window: u64,
}

/// The system's host name as one subject token.
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

impl ExportArgs {
    pub fn is_set(&self) -> bool {
        self.export.is_some()
    }

    /// The export's configuration, checked.
    pub fn config(&self) -> Result<Option<ExportConfig>> {
        let Some(list) = &self.export else {
            return Ok(None);
        };
        let servers = parse_servers(list).context("--export")?;
        let mut config =
            ExportConfig::new(servers, self.export_host.clone().unwrap_or_else(host_name));
        config.stream = self.stream.clone();
        config.subject_prefix = self.subject.clone();
        config.format = self
            .export_format
            .parse::<Format>()
            .context("--export-format")?;
        if !(self.export_ack_timeout > 0.0 && self.export_ack_timeout <= 600.0) {
            return Err(anyhow!(
                "--export-ack-timeout {}: expected more than 0 and at most 600 seconds",
                self.export_ack_timeout
            ));
        }
        config.ack_timeout = Duration::from_secs_f64(self.export_ack_timeout);
        config.replicas = self.export_replicas;
        config.memory_storage = self.export_memory;
        config.duplicate_window = Duration::from_secs(self.export_duplicate_window);
        config.check().map_err(|e| anyhow!("--export: {e}"))?;
        Ok(Some(config))
    }

    /// Connects, if an export was asked for.
    pub fn start(&self) -> Result<Option<(NatsExport, ExportReport)>> {
        let Some(config) = self.config()? else {
            return Ok(None);
        };
        let what = format!("--export to stream {}", config.stream);
        NatsExport::connect(config).context(what).map(Some)
    }
}

/// The summary line of an export.
pub fn summary(report: &ExportReport) -> String {
    let s = report.stats();
    let mut line = format!(
        "export: acknowledged {} (duplicates {}) failed {} (disconnected {}) batches {}",
        s.acknowledged, s.duplicates, s.failed, s.disconnected, s.batches
    );
    if let Some(e) = report.last_error() {
        line.push_str(&format!("; last error: {e}"));
    }
    line
}
