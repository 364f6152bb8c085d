//! The export listener: a reliable conntrack event listener whose deliveries a NATS JetStream
//! cluster decides.
//!
//! It joins the host's listeners as an [`ExternalListener`] that asked for reliable delivery
//! (`NETLINK_BROADCAST_ERROR`): a message is delivered when the stream acknowledges it, and it
//! is missed when no acknowledgement comes in time, the server answers with an error, or the
//! client is not connected. A miss fails the delivery as a full netlink buffer would, so the
//! engine keeps the event bits in the entry's missed cache, and keeps an ended entry on the
//! dying list until its DESTROY is taken. Nothing waits in this listener: what the cluster has
//! not taken is still the engine's.
//!
//! A batch of messages is published before any acknowledgement is awaited
//! ([`ExternalListener::offer_all`]), so a batch costs about one round trip. A DESTROY sent
//! again after a lost acknowledgement carries the same `Nats-Msg-Id` (see [`crate::message`]),
//! and the stream's duplicate window drops the second copy.
//!
//! While the cluster is out of reach, simulated time (replay, stress) is held to the wall
//! clock: the engine's retries then come at the pace they would on a live host, instead of
//! running through the run's horizon in a moment.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use async_nats::connection::State;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use async_nats::{ConnectOptions, ServerAddr};
use ctwasm_core::batch::EventFrame;
use ctwasm_host::listener::{ExternalListener, ListenerStats, Offer};

use crate::message::{self, Format, Outgoing};

/// Where and how to export.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// The cluster's servers (`nats://HOST:PORT`); the client moves between them.
    pub servers: Vec<ServerAddr>,
    /// The stream's name; created when absent.
    pub stream: String,
    /// The subject prefix: messages go to `PREFIX.HOST.ZONE.KIND`.
    pub subject_prefix: String,
    /// The name of this host in subjects, headers and message ids.
    pub host: String,
    pub format: Format,
    /// How long to wait for the stream's acknowledgement of a batch before it counts as missed.
    pub ack_timeout: Duration,
    /// For a stream this export creates: its replicas, storage and duplicate window.
    pub replicas: usize,
    pub memory_storage: bool,
    pub duplicate_window: Duration,
    /// Simulated seconds per wall-clock second while the cluster is out of reach.
    pub outage_pace: f64,
}

impl ExportConfig {
    /// A config with the defaults: stream `CONNTRACK`, prefix `conntrack`, one replica, file
    /// storage, a two-minute duplicate window, a two-second acknowledgement timeout.
    pub fn new(servers: Vec<ServerAddr>, host: String) -> ExportConfig {
        ExportConfig {
            servers,
            stream: "CONNTRACK".to_string(),
            subject_prefix: "conntrack".to_string(),
            host,
            format: Format::Netlink,
            ack_timeout: Duration::from_secs(2),
            replicas: 1,
            memory_storage: false,
            duplicate_window: Duration::from_secs(120),
            outage_pace: 1.0,
        }
    }

    /// Checks the names and figures a user gave.
    pub fn check(&self) -> Result<()> {
        if self.servers.is_empty() {
            bail!("no server to export to");
        }
        message::check_token("stream name", &self.stream)?;
        message::check_prefix(&self.subject_prefix)?;
        message::check_token("host name", &self.host)?;
        if !(1..=5).contains(&self.replicas) {
            bail!("{} replicas: JetStream takes 1 to 5", self.replicas);
        }
        if self.ack_timeout.is_zero() || self.ack_timeout > Duration::from_secs(600) {
            bail!("acknowledgement timeout: expected more than 0 and at most 600 seconds");
        }
        if self.duplicate_window < Duration::from_secs(1) {
            bail!("duplicate window: expected at least one second");
        }
        if !(self.outage_pace > 0.0 && self.outage_pace.is_finite()) {
            bail!("outage pace: expected a positive number");
        }
        Ok(())
    }

    /// The servers, as a user writes them.
    pub fn server_list(&self) -> String {
        let urls: Vec<&str> = self.servers.iter().map(|s| s.as_url_str()).collect();
        urls.join(",")
    }

    /// The subjects the stream must take.
    pub fn subjects(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }
}

/// Parses `nats://HOST:PORT[,HOST:PORT...]` (the scheme may be left out after the first, and
/// `tls://` asks for TLS).
pub fn parse_servers(list: &str) -> Result<Vec<ServerAddr>> {
    let mut servers = Vec::new();
    for part in list.split(',') {
        let part = part.trim();
        if part.is_empty() {
            bail!("`{list}`: an empty server address");
        }
        let url = if part.contains("://") {
            part.to_string()
        } else {
            format!("nats://{part}")
        };
        let scheme = url.split("://").next().unwrap_or_default();
        if !matches!(scheme, "nats" | "tls") {
            bail!("`{part}`: expected nats://HOST:PORT (or tls://)");
        }
        let addr: ServerAddr = url
            .parse()
            .map_err(|e| anyhow!("`{part}`: not a server address ({e})"))?;
        if addr.host().is_empty() {
            bail!("`{part}`: no host");
        }
        if addr.port() == 0 {
            bail!("`{part}`: port 0");
        }
        servers.push(addr);
    }
    Ok(servers)
}

/// What the export did, shared with whoever reports on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Messages the stream acknowledged (duplicates included).
    pub acknowledged: u64,
    /// Of those, messages the stream already had (a resent DESTROY whose first copy was
    /// stored).
    pub duplicates: u64,
    /// Messages not taken: no acknowledgement in time, an error, or no connection.
    pub failed: u64,
    /// Of those, the ones refused without trying, the client being disconnected.
    pub disconnected: u64,
    /// Batches published.
    pub batches: u64,
}

/// A handle on the export's figures and its last error, kept after the listener has gone to
/// the host's listener set.
#[derive(Clone, Debug, Default)]
pub struct ExportReport {
    inner: Arc<Mutex<(ExportStats, Option<String>)>>,
}

impl ExportReport {
    pub fn stats(&self) -> ExportStats {
        self.inner.lock().map(|g| g.0).unwrap_or_default()
    }
    /// The last error the cluster gave, if any.
    pub fn last_error(&self) -> Option<String> {
        self.inner.lock().ok().and_then(|g| g.1.clone())
    }
    fn update(&self, f: impl FnOnce(&mut ExportStats, &mut Option<String>)) {
        if let Ok(mut g) = self.inner.lock() {
            let (stats, error) = &mut *g;
            f(stats, error);
        }
    }
}

/// The listener. Build it with [`NatsExport::connect`].
pub struct NatsExport {
    config: ExportConfig,
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
    js: jetstream::Context,
    /// The stream was found or created with a fitting configuration on this connection.
    stream_ready: bool,
    report: ExportReport,
    stats: ListenerStats,
    /// Whether the last batch failed (for `enobufs`: one per episode).
    failing: bool,
    /// While the cluster is out of reach: the simulated and wall-clock instants it was found
    /// so, which hold simulated time to the wall clock.
    outage: Option<(u64, Instant)>,
}

impl fmt::Debug for NatsExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsExport")
            .field("stream", &self.config.stream)
            .field("servers", &self.config.server_list())
            .field("stats", &self.report.stats())
            .finish()
    }
}

/// The configuration of a stream this export creates.
fn stream_config(config: &ExportConfig) -> stream::Config {
    stream::Config {
        name: config.stream.clone(),
        subjects: vec![config.subjects()],
        num_replicas: config.replicas,
        storage: if config.memory_storage {
            stream::StorageType::Memory
        } else {
            stream::StorageType::File
        },
        duplicate_window: config.duplicate_window,
        ..Default::default()
    }
}

/// Whether a NATS subject filter takes every subject under `prefix` (`prefix.>`).
fn filter_covers(filter: &str, prefix: &str) -> bool {
    let wanted: Vec<&str> = prefix.split('.').collect();
    let tokens: Vec<&str> = filter.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        match *token {
            ">" => return true,
            "*" if i < wanted.len() => continue,
            t if i < wanted.len() && t == wanted[i] => continue,
            _ => return false,
        }
    }
    false
}

async fn ensure_stream(js: &jetstream::Context, config: &ExportConfig) -> Result<()> {
    let wanted = stream_config(config);
    let mut stream = match js.get_stream(&config.stream).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref js)
                    if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            js.create_stream(wanted)
                .await
                .with_context(|| format!("creating stream {}", config.stream))?;
            return Ok(());
        }
        Err(e) => return Err(anyhow!("looking up stream {}: {e}", config.stream)),
    };
    let info = stream
        .info()
        .await
        .with_context(|| format!("reading stream {}'s configuration", config.stream))?;
    let have = &info.config;
    if !have
        .subjects
        .iter()
        .any(|s| filter_covers(s, &config.subject_prefix))
    {
        bail!(
            "stream {} exists but takes subjects {:?}, not {}: choose another --subject or \
             --stream",
            config.stream,
            have.subjects,
            config.subjects()
        );
    }
    if have.duplicate_window.is_zero() {
        bail!(
            "stream {} exists without a duplicate window: a resent DESTROY would be stored twice",
            config.stream
        );
    }
    if have.sealed {
        bail!("stream {} exists but is sealed", config.stream);
    }
    Ok(())
}

impl NatsExport {
    /// Connects to the cluster and makes sure the stream exists with a configuration that fits.
    /// A cluster out of reach is not an error: the export starts, its deliveries fail (the
    /// engine keeps what they carried) and the stream is checked once a server answers. A
    /// stream that exists with subjects that do not take the prefix, or without a duplicate
    /// window, is an error.
    pub fn connect(config: ExportConfig) -> Result<(NatsExport, ExportReport)> {
        config.check()?;
        // One worker thread of its own: the client's connection task (pings, reconnects) runs
        // between batches too, while the engine's thread works.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ctwasm-export")
            .enable_all()
            .build()
            .context("starting the export's runtime")?;
        let options = ConnectOptions::new()
            .name(format!("ctwasm export {}", config.host))
            .retry_on_initial_connect()
            .connection_timeout(config.ack_timeout)
            .max_reconnects(None)
            // A quick return after a server restart: a second at most between attempts.
            .reconnect_delay_callback(|attempt| {
                Duration::from_millis((50 * attempt as u64).min(1_000))
            });
        let servers = config.servers.clone();
        let client = runtime
            .block_on(options.connect(servers))
            .map_err(|e| anyhow!("connecting to {}: {e}", config.server_list()))?;
        let js = {
            // The context starts a task of its own.
            let _inside = runtime.enter();
            jetstream::ContextBuilder::new()
                .timeout(config.ack_timeout)
                .max_ack_inflight(16_384)
                .build(client.clone())
        };
        let report = ExportReport::default();
        let mut export = NatsExport {
            config,
            runtime,
            client,
            js,
            stream_ready: false,
            report: report.clone(),
            stats: ListenerStats::default(),
            failing: false,
            outage: None,
        };
        // Give a reachable cluster a moment to answer, so a wrong stream is reported now.
        let deadline = Instant::now() + export.config.ack_timeout;
        while export.client.connection_state() != State::Connected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if export.client.connection_state() == State::Connected {
            export.ready()?;
        } else {
            eprintln!(
                "ctwasm: export: no server of {} answers yet; deliveries fail (the engine keeps \
                 what they carry) until one does",
                export.config.server_list()
            );
        }
        Ok((export, report))
    }

    /// Makes sure the stream is there (once per connection).
    fn ready(&mut self) -> Result<()> {
        if self.stream_ready {
            return Ok(());
        }
        let (js, config) = (&self.js, &self.config);
        self.runtime
            .block_on(async { ensure_stream(js, config).await })?;
        self.stream_ready = true;
        Ok(())
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Marks every message of `outgoing` missed.
    fn miss_all(
        &mut self,
        offers: &mut [Offer],
        outgoing: &[(usize, Outgoing)],
        disconnected: bool,
    ) {
        for (i, _) in outgoing {
            offers[*i] = Offer::Dropped {
                first_overrun: false,
            };
        }
        self.note_failures(outgoing.len() as u64, disconnected);
    }

    fn note_failures(&mut self, count: u64, disconnected: bool) {
        if count == 0 {
            return;
        }
        self.stats.dropped += count;
        if !self.failing {
            self.failing = true;
            self.stats.enobufs += 1;
        }
        self.report.update(|s, _| {
            s.failed += count;
            if disconnected {
                s.disconnected += count;
            }
        });
    }

    fn note_error(&self, error: String) {
        self.report.update(|_, e| *e = Some(error));
    }
}

impl ExternalListener for NatsExport {
    fn name(&self) -> &str {
        "nats"
    }

    fn is_reliable(&self) -> bool {
        true
    }

    fn is_subscribed(&self, group: u8) -> bool {
        (1..=3).contains(&group)
    }

    fn offer(&mut self, now_ns: u64, frame: &EventFrame<'_>) -> Offer {
        let mut offers = Vec::with_capacity(1);
        self.offer_all(now_ns, std::slice::from_ref(frame), &mut offers);
        offers[0]
    }

    fn offer_all(&mut self, now_ns: u64, frames: &[EventFrame<'_>], offers: &mut Vec<Offer>) {
        let first = offers.len();
        // Which frames go out: (index in `frames`, message).
        let mut outgoing: Vec<(usize, Outgoing)> = Vec::with_capacity(frames.len());
        for (i, frame) in frames.iter().enumerate() {
            offers.push(Offer::NotSubscribed);
            match message::outgoing(
                frame,
                &self.config.subject_prefix,
                &self.config.host,
                self.config.format,
            ) {
                Ok(Some(m)) => outgoing.push((i, m)),
                Ok(None) => {}
                Err(e) => {
                    // The engine's own message did not decode: a bug, never the cluster's
                    // fault; a miss keeps the event with the engine.
                    self.note_error(format!("{e:#}"));
                    offers[first + i] = Offer::Faulted;
                    self.note_failures(1, false);
                }
            }
        }
        if outgoing.is_empty() {
            return;
        }
        if !self.connected() {
            self.outage.get_or_insert((now_ns, Instant::now()));
            self.miss_all(&mut offers[first..], &outgoing, true);
            return;
        }
        if let Err(e) = self.ready() {
            self.note_error(format!("{e:#}"));
            self.miss_all(&mut offers[first..], &outgoing, false);
            return;
        }
        let js = &self.js;
        let results: Vec<Result<async_nats::jetstream::publish::PublishAck, String>> =
            self.runtime.block_on(async {
                let mut pending = Vec::with_capacity(outgoing.len());
                for (_, m) in &outgoing {
                    let publish = PublishMessage::build()
                        .payload(m.payload.clone().into())
                        .message_id(&m.msg_id)
                        .header("Ctwasm-Host", self.config.host.as_str())
                        .header("Ctwasm-Zone", m.zone.to_string().as_str())
                        .header("Ctwasm-Event", message::kind_name(m.kind))
                        .header("Ctwasm-Format", self.config.format.name());
                    pending.push(js.send_publish(m.subject.clone(), publish).await);
                }
                let mut results = Vec::with_capacity(pending.len());
                for p in pending {
                    results.push(match p {
                        Ok(ack) => ack.await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    });
                }
                results
            });
        let (mut acked, mut duplicates, mut failed) = (0u64, 0u64, 0u64);
        let mut last_error = None;
        for ((i, _), result) in outgoing.iter().zip(results) {
            offers[first + i] = match result {
                Ok(ack) => {
                    acked += 1;
                    duplicates += u64::from(ack.duplicate);
                    Offer::Queued
                }
                Err(e) => {
                    failed += 1;
                    last_error = Some(e);
                    Offer::Dropped {
                        first_overrun: false,
                    }
                }
            };
        }
        self.stats.received += acked;
        self.stats.read += acked;
        self.report.update(|s, _| {
            s.acknowledged += acked;
            s.duplicates += duplicates;
            s.batches += 1;
        });
        if let Some(e) = last_error {
            self.note_error(e);
        }
        if failed == 0 {
            self.failing = false;
            self.outage = None;
        } else {
            self.outage.get_or_insert((now_ns, Instant::now()));
            self.note_failures(failed, false);
        }
    }

    fn has_room(&self) -> bool {
        self.connected()
    }

    fn advance(&mut self, now_ns: u64) {
        if self.connected() && !self.failing {
            self.outage = None;
            return;
        }
        let Some((sim_start, wall_start)) = self.outage else {
            self.outage = Some((now_ns, Instant::now()));
            return;
        };
        // Hold simulated time to the wall clock (at the configured pace) while out of reach.
        let sim_elapsed = now_ns.saturating_sub(sim_start) as f64 / 1e9;
        let due = wall_start + Duration::from_secs_f64(sim_elapsed / self.config.outage_pace);
        let now = Instant::now();
        if due > now {
            std::thread::sleep((due - now).min(Duration::from_secs(1)));
        }
    }

    fn stats(&self) -> ListenerStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lists_are_checked() {
        let servers = parse_servers("nats://127.0.0.1:4222,127.0.0.1:4223").unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[1].port(), 4223);
        for bad in [
            "",
            ",",
            "nats://127.0.0.1:4222,",
            "http://127.0.0.1:4222",
            "nats://127.0.0.1:99999",
            "nats://127.0.0.1:0",
            "nats://",
        ] {
            assert!(parse_servers(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn configs_with_bad_names_or_figures_are_refused() {
        let servers = parse_servers("127.0.0.1:4222").unwrap();
        let good = ExportConfig::new(servers, "fw1".into());
        good.check().unwrap();
        let bad = [
            ExportConfig {
                stream: "a.b".into(),
                ..good.clone()
            },
            ExportConfig {
                subject_prefix: "ct.>".into(),
                ..good.clone()
            },
            ExportConfig {
                host: "fw 1".into(),
                ..good.clone()
            },
            ExportConfig {
                replicas: 0,
                ..good.clone()
            },
            ExportConfig {
                ack_timeout: Duration::ZERO,
                ..good.clone()
            },
            ExportConfig {
                duplicate_window: Duration::ZERO,
                ..good.clone()
            },
            ExportConfig {
                outage_pace: f64::NAN,
                ..good.clone()
            },
        ];
        for config in bad {
            assert!(config.check().is_err(), "{config:?}");
        }
    }

    #[test]
    fn subject_filters_are_matched_token_by_token() {
        assert!(filter_covers("conntrack.>", "conntrack"));
        assert!(filter_covers(">", "conntrack"));
        assert!(filter_covers("ct.*.>", "ct.events"));
        assert!(!filter_covers("conntrack.*", "conntrack"));
        assert!(!filter_covers("other.>", "conntrack"));
        assert!(!filter_covers("conntrack", "conntrack"));
        assert!(!filter_covers("conntrack.a.>", "conntrack"));
    }
}
