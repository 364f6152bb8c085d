//! `ctwasm proxy`: a TCP and UDP proxy that tracks the connections it carries, in the
//! sandboxed tracker, as the kernel's conntrack would track them on its sockets.
//!
//! Each `--listen [udp:]ADDR --upstream ADDR` pair is one route; its connections are tracked in
//! the zone of its position (the first route in zone 0); `--config FILE` adds routes from a
//! TOML file (`proxy_routes`). UDP routes relay datagrams in sessions (`udp`). An accepted
//! TCP connection is opened in the
//! tracker with the tuple the kernel gives the client's leg (client address to listening
//! address), its bytes are counted each way as they are copied, and it is closed as it ended:
//! the FIN exchange started by whichever side closed first, or a reset by the side that sent
//! it. The events go to stdout as `conntrack -E` lines or JSON and, with `--socket`, to
//! `ctwasm listen`'s socket, whose refusals a reliable listener turns into retried DESTROYs.
//! `--listener SPEC` adds simulated netlink listeners (the ones `replay` and `stress` take),
//! driven by the proxy's clock: a small buffer or a slow reader loses events, or, when the
//! listener asked for reliable delivery, keeps DESTROYs on the dying list, exactly as a
//! kernel socket of that setup would; stdout then prints what the first one reads.
//!
//! `--limit-per-source N` and `--limit-per-zone N` refuse a connection that would exceed the
//! count of open connections (not dying, not TIME_WAIT or CLOSE: what `nft ct count` counts)
//! from the same source in the zone, or in the zone: the client gets a reset at accept, the
//! refusal is counted and logged. The counts are read from the tracker's own table.
//!
//! One thread owns the tracker; the connection tasks (tokio) send it requests and never wait
//! on it, except for an open a limit may refuse. It gathers what came while it slept into one
//! batch of connection calls (one crossing into the component), naming a connection opened in
//! the same batch by its open's index. A call the guest faults on is recovered from a checkpoint
//! (`--checkpoint-every`); should the tracker be lost anyway, the proxy goes on carrying every
//! connection untracked and says so. SIGINT or SIGTERM stops accepting, lets open connections
//! finish for `--drain` seconds, resets the rest, and prints a summary on stderr.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use ctwasm_core::event::TcpState;
use ctwasm_host::listener::{ListenerConfig, ListenerStats, Listeners as EventListeners};
use ctwasm_host::output::{self, Format};
use ctwasm_host::{
    BackendKind, Call, Connection, ConnectionRef, Delivery, Direction, Ending, EntryView,
    Listeners, Tracker, port_tuple,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use crate::FormatArg;

mod udp;
use crate::proxy_routes::{ListenArg, Protocol, Route};

/// `ctwasm proxy`.
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// Address to accept connections on, `udp:` before it for datagrams (repeatable; the n-th
    /// pairs with the n-th --upstream).
    #[arg(
        long = "listen",
        value_name = "[udp:]ADDR",
        required_unless_present = "config"
    )]
    listen: Vec<ListenArg>,
    /// Where the connections accepted on the matching --listen go.
    #[arg(
        long = "upstream",
        value_name = "ADDR",
        required_unless_present = "config"
    )]
    upstream: Vec<SocketAddr>,
    /// A TOML file of routes (`[[route]]` with listen, upstream, zone, protocol), after the
    /// command line's.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Refuse a connection when its source already has this many open connections in the
    /// zone (0 refuses every one).
    #[arg(long, value_name = "N")]
    limit_per_source: Option<u32>,
    /// Refuse a connection when its zone already has this many open connections.
    #[arg(long, value_name = "N")]
    limit_per_zone: Option<u32>,
    /// Output format of the events.
    #[arg(long, value_enum, default_value = "conntrack")]
    format: FormatArg,
    /// `conntrack -o` options for the conntrack format: xml, extended, id, timestamp,
    /// ktimestamp.
    #[arg(long, short = 'o', default_value = "")]
    output: String,
    /// A kernel sysctl for the tracker, e.g. net.netfilter.nf_conntrack_acct=1 (repeatable).
    #[arg(long = "sysctl", value_name = "NAME=VALUE")]
    sysctls: Vec<String>,
    /// Run the tracker natively or as the WebAssembly component under wasmtime.
    #[arg(long, value_parser = clap::value_parser!(BackendKind), default_value = "component")]
    backend: BackendKind,
    /// Seed of the tracker's random choices (ids).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Checkpoint the tracker every N calls, so a guest fault loses nothing.
    #[arg(long, value_name = "N", default_value_t = 64)]
    checkpoint_every: usize,
    /// End a UDP session after this many seconds without a datagram either way (at most, and
    /// by default, the tracker's nf_conntrack_udp_timeout, so its entry outlives it).
    #[arg(long, value_name = "SECS", value_parser = crate::values::seconds)]
    udp_idle: Option<f64>,
    /// Give up connecting upstream after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = crate::values::seconds)]
    connect_timeout: f64,
    /// At shutdown, let open connections finish for this many seconds, then reset them.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = crate::values::seconds)]
    drain: f64,
    /// Stop by itself after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = crate::values::seconds)]
    duration: Option<f64>,
    /// Also send every event to the Unix datagram socket where `ctwasm listen PATH` reads: a
    /// reliable one's refused DESTROYs wait on the tracker's dying list and are sent again.
    #[arg(long, value_name = "PATH")]
    socket: Option<std::path::PathBuf>,
    /// The socket listener's setup (buffer=BYTES, reliable, groups=...).
    #[arg(long, value_name = "SPEC", default_value = "buffer=212992,reliable")]
    socket_spec: String,
    /// A simulated netlink listener on the proxy's clock, e.g. rcvbuf=64K,reliable,drain=1000/s
    /// (repeatable; the spec of `replay --listener`). stdout prints what the first one reads;
    /// without one, every event as delivered.
    #[arg(long = "listener", value_name = "SPEC", value_parser = parse_listener)]
    listeners: Vec<ListenerConfig>,
    /// How a DESTROY that a reliable listener missed is sent again.
    #[arg(long, value_parser = crate::retry_policy_parser(), default_value = "grace")]
    retry_policy: ctwasm_host::RetryPolicy,
    #[command(flatten)]
    ipfix: crate::ipfix_args::IpfixArgs,
    #[command(flatten)]
    metrics: crate::metrics_args::MetricsArgs,
    /// Carry connections without tracking them: the plain copy loop, a baseline for what the
    /// tracking costs.
    #[arg(long)]
    no_track: bool,
    /// No summary on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// For tests of fault recovery: the component traps at this packet (trap-at-packet=N).
    #[arg(long, hide = true, value_name = "FAULT", value_parser = parse_fault)]
    inject_fault: Option<ctwasm_host::GuestFault>,
}

/// A `--listener` spec.
fn parse_listener(spec: &str) -> Result<ListenerConfig, String> {
    ListenerConfig::parse(spec).map_err(|e| format!("{e:#}"))
}

/// `trap-at-packet=N`.
fn parse_fault(value: &str) -> Result<ctwasm_host::GuestFault, String> {
    value
        .strip_prefix("trap-at-packet=")
        .and_then(|n| n.parse().ok())
        .map(ctwasm_host::GuestFault::TrapAtPacket)
        .ok_or_else(|| format!("`{value}`: expected trap-at-packet=N"))
}

/// What the proxy did, for its summary.
#[derive(Debug, Default)]
struct Counts {
    accepted: AtomicU64,
    refused_source: AtomicU64,
    refused_zone: AtomicU64,
    upstream_failed: AtomicU64,
    closed: AtomicU64,
    reset: AtomicU64,
    bytes_to_upstream: AtomicU64,
    bytes_to_client: AtomicU64,
    untracked: AtomicU64,
    /// UDP datagrams lost on the way: a session's queue full, or its upstream refused.
    datagrams_dropped: AtomicU64,
}

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    PerSource { open: u32, limit: u32 },
    PerZone { open: u32, limit: u32 },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::PerSource { open, limit } => {
                write!(f, "{open} open connections from this source, limit {limit}")
            }
            Refusal::PerZone { open, limit } => {
                write!(f, "{open} open connections in this zone, limit {limit}")
            }
        }
    }
}

/// The connection limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub per_source: Option<u32>,
    pub per_zone: Option<u32>,
}

impl Limits {
    /// Whether any limit is set.
    fn any(&self) -> bool {
        self.per_source.is_some() || self.per_zone.is_some()
    }

    /// Whether a new connection from `src` in `zone` goes over a limit, counting the open
    /// connections of `table` as `nft ct count` does: not dying, not closed (TIME_WAIT, CLOSE).
    pub fn check(&self, table: &[EntryView], zone: u16, src: IpAddr) -> Option<Refusal> {
        let open = |e: &&EntryView| {
            e.zone == zone
                && !e.dying
                && !matches!(e.tcp_state, Some(TcpState::TimeWait | TcpState::Close))
        };
        if let Some(limit) = self.per_source {
            let n = table
                .iter()
                .filter(open)
                .filter(|e| e.orig.src.to_ip(e.orig.family) == src)
                .count() as u32;
            if n >= limit {
                return Some(Refusal::PerSource { open: n, limit });
            }
        }
        if let Some(limit) = self.per_zone {
            let n = table.iter().filter(open).count() as u32;
            if n >= limit {
                return Some(Refusal::PerZone { open: n, limit });
            }
        }
        None
    }
}

/// What a connection task asks of the tracker's thread.
///
/// Each carried connection has a key of the proxy's own: its task names the connection by it
/// from the start, and the tracker's thread maps it to the tracker's connection. So a task
/// need not wait for the open to be answered, which costs a round trip between threads on
/// every accept; it waits only when a limit may refuse the connection.
enum Request {
    Open {
        key: u64,
        zone: u16,
        /// TCP or UDP: the connection's tuple is this protocol's, client to local address.
        protocol: Protocol,
        client: SocketAddr,
        local: SocketAddr,
        /// What the client sent first (a UDP session's first datagram).
        first_bytes: u64,
        /// Where the answer goes, when the task waits for it.
        reply: Option<oneshot::Sender<Opened>>,
    },
    Transfer {
        key: u64,
        dir: Direction,
        bytes: u64,
    },
    Close {
        key: u64,
        ending: Ending,
    },
    /// A UDP session ended: its entry stays until it times out, as the kernel's would (UDP
    /// has no close on the wire); the key is forgotten.
    Forget {
        key: u64,
    },
}

/// The answer to an open.
enum Opened {
    Tracked,
    /// Not tracked (the tracker is gone or refused the tuple); carried all the same.
    Untracked,
    Refused(Refusal),
}

/// The tracker's clock: the wall time at start, advanced by a monotonic clock, so event times
/// read like the kernel's and never go back.
struct Clock {
    wall0: u64,
    start: Instant,
}

impl Clock {
    fn new() -> Clock {
        let wall0 = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Clock {
            wall0,
            start: Instant::now(),
        }
    }
    fn now(&self) -> u64 {
        self.wall0 + self.start.elapsed().as_nanos() as u64
    }
}

/// How long the tracker's thread lets connection calls gather before it takes them, when no
/// connection task waits for an answer: it delays event lines by as much, and no connection.
const GATHER: Duration = Duration::from_micros(500);

/// The thread that owns the tracker: answers opens, applies transfers and closes, fires the
/// timers, prints the events.
struct TrackerThread {
    tracker: Option<Tracker>,
    limits: Limits,
    format: Format,
    clock: Clock,
    /// The printer thread's queue: stdout is a listener with a bounded buffer, so a reader
    /// that does not keep up loses lines (counted) instead of stalling the proxy.
    lines: std_mpsc::SyncSender<String>,
    events: u64,
    lost: u64,
    xml_opened: bool,
    /// `--ipfix`: finished connections as flow records.
    export: Option<crate::ipfix_args::FlowExport>,
    /// `--metrics`: published at most every quarter second.
    metrics: Option<crate::metrics_args::MetricsServer>,
    published: Option<Instant>,
    counts: Arc<Counts>,
    /// The tracker's connection for each key of a connection being carried.
    carried: HashMap<u64, Connection>,
    /// Calls gathered since the last flush.
    batch: Gathered,
    /// Who the events are offered to: the `--listener`s (or stdout's lossless reader), then
    /// `ctwasm listen`'s socket; the first one's reads are printed.
    listeners: EventListeners,
    /// `--socket`: the end of the socket's stream.
    stream_end: Option<ctwasm_live::socket_listener::StreamEnd>,
    /// A reliable listener missed a message since the tracker was last told that the
    /// listeners have room again (the on-drain retry policy waits for that).
    waiting_for_room: bool,
    /// How long to keep sending DESTROYs a reliable listener missed once every connection
    /// ended.
    drain: Duration,
}

/// What the tracker's thread hands back when it ends.
struct Finished {
    events: u64,
    lost: u64,
    stats: Option<ctwasm_host::Stats>,
    recovery: Option<ctwasm_host::resilient::Recovery>,
    /// The `--listener`s' figures, by name.
    simulated: Vec<(String, ListenerStats)>,
    /// The socket's figures.
    socket: Option<ListenerStats>,
    /// Whether a listener asked for reliable delivery (then the dying list is reported).
    reliable: bool,
}

/// Connection calls gathered for one [`Tracker::calls`] batch.
#[derive(Default)]
struct Gathered {
    calls: Vec<Call>,
    /// For each call: the connection key of an open (kept on success) or a close (forgotten),
    /// and whether it closes.
    keys: Vec<(Option<u64>, bool)>,
    /// The index of each open in `calls`, by key, so later calls name it.
    opened: HashMap<u64, usize>,
    /// Keys to forget once the batch is sent (ended UDP sessions).
    forget: Vec<u64>,
}

impl Gathered {
    fn push(&mut self, call: Call, key: Option<u64>, closes: bool) {
        self.calls.push(call);
        self.keys.push((key, closes));
    }
}

impl TrackerThread {
    fn run(mut self, requests: std_mpsc::Receiver<Request>) -> Finished {
        // Every connection call moves the tracker's clock to its time and fires what is due
        // then, so a busy tracker needs no other call for its timers: only when no request
        // came is it advanced, and then woken again when its next timer is due (a quarter
        // second at most, so the figures and the event lines keep flowing).
        let idle_wait = Duration::from_millis(250);
        let mut wait = idle_wait;
        loop {
            let mut handled = false;
            match requests.recv_timeout(wait) {
                Ok(r) => {
                    handled = true;
                    self.handle(r);
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if handled && !self.limits.any() {
                // No task waits for an answer, so the calls can wait a moment to be gathered:
                // one wake-up and one crossing for many, instead of one for each.
                std::thread::sleep(GATHER);
            }
            while let Ok(r) = requests.try_recv() {
                self.handle(r);
            }
            self.flush();
            wait = idle_wait;
            if !handled {
                let now = self.clock.now();
                self.with_tracker("advance", |t| t.advance(now));
                let timer = self
                    .with_tracker("next deadline", |t| t.next_deadline())
                    .flatten();
                // A paced reader reads on its own schedule.
                if let Some(at) = timer.into_iter().chain(self.listeners.next_read_at()).min() {
                    wait = Duration::from_nanos(at.saturating_sub(now))
                        .clamp(Duration::from_millis(1), idle_wait);
                }
            }
            self.print_events();
            self.publish(false);
        }
        // Every connection has ended: the last events (closes), then the timers up to now.
        let now = self.clock.now();
        self.with_tracker("advance", |t| t.advance(now));
        self.print_events();
        self.drain_dying();
        if self.xml_opened {
            self.emit(output::xml::EPILOGUE.to_string());
        }
        self.publish(true);
        let stats = self.tracker.as_mut().and_then(|t| t.stats().ok());
        let recovery = self.tracker.as_ref().and_then(Tracker::recovery);
        if let Some(export) = self.export.take() {
            export.finish(false);
        }
        if let Some(metrics) = self.metrics.take() {
            metrics.finish();
        }
        if let Some(end) = self.stream_end.take() {
            // Ends the reader's stream, waiting for room a second at most.
            if let Err(e) = end.finish(Instant::now() + Duration::from_secs(1)) {
                eprintln!("ctwasm proxy: ending the socket's stream: {e}");
            }
        }
        Finished {
            events: self.events,
            lost: self.lost,
            stats,
            recovery,
            simulated: self
                .listeners
                .iter()
                .filter(|l| !l.config().delivered_only && l.name() != STDOUT_READER)
                .map(|l| (l.name().to_string(), l.stats()))
                .collect(),
            socket: self.listeners.external().next().map(|l| l.stats()),
            reliable: self.listeners.has_reliable(),
        }
    }

    /// With a reliable listener, DESTROYs it missed wait on the dying list: they are sent
    /// again, as the retry policy says, until the list is empty or `--drain` has passed.
    fn drain_dying(&mut self) {
        if !self.listeners.has_reliable() {
            return;
        }
        let deadline = Instant::now() + self.drain;
        let dying = |t: &mut Self| {
            t.with_tracker("stats", |t| t.stats())
                .map_or(0, |s| s.dying)
        };
        while dying(self) > 0 && Instant::now() < deadline {
            let now = self.clock.now();
            self.with_tracker("advance", |t| t.advance(now));
            self.print_events();
            let wait = match self.with_tracker("next deadline", |t| t.next_deadline()) {
                Some(Some(at)) => Duration::from_nanos(at.saturating_sub(self.clock.now())),
                _ => Duration::from_millis(10),
            };
            std::thread::sleep(wait.clamp(Duration::from_millis(1), Duration::from_millis(50)));
        }
        let left = dying(self);
        if left > 0 {
            eprintln!(
                "ctwasm proxy: {left} DESTROY(s) still undelivered to a reliable listener after \
                 --drain"
            );
        }
    }

    /// Publishes the figures for `--metrics`: the tracker's, the proxy's, the export's.
    fn publish(&mut self, now: bool) {
        use ctwasm_host::metrics::{Kind, Snapshot};
        if self.metrics.is_none()
            || (!now
                && self
                    .published
                    .is_some_and(|t| t.elapsed() < Duration::from_millis(250)))
        {
            return;
        }
        self.published = Some(Instant::now());
        let mut s = Snapshot::default();
        if let Some(stats) = self.tracker.as_mut().and_then(|t| t.stats().ok()) {
            s.push_tracker(&stats);
        }
        let c = &self.counts;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, value) in [
            ("proxy_accepted", "Connections accepted.", n(&c.accepted)),
            (
                "proxy_upstream_failed",
                "Connections whose upstream refused or did not answer.",
                n(&c.upstream_failed),
            ),
            (
                "proxy_closed",
                "Connections that ended with a close.",
                n(&c.closed),
            ),
            (
                "proxy_reset",
                "Connections that ended with a reset.",
                n(&c.reset),
            ),
            (
                "proxy_untracked",
                "Connections carried without the tracker.",
                n(&c.untracked),
            ),
            (
                "proxy_bytes_to_upstream",
                "Bytes copied from clients to upstreams.",
                n(&c.bytes_to_upstream),
            ),
            (
                "proxy_bytes_to_clients",
                "Bytes copied from upstreams to clients.",
                n(&c.bytes_to_client),
            ),
            (
                "proxy_udp_datagrams_dropped",
                "UDP datagrams lost on the way (a session's queue full, or its upstream refused).",
                n(&c.datagrams_dropped),
            ),
            ("proxy_event_messages", "Event messages taken.", self.events),
            (
                "proxy_event_lines_lost",
                "Event lines a slow stdout could not take.",
                self.lost,
            ),
        ] {
            s.push(name, help, Kind::Counter, value);
        }
        s.push_labelled(
            "proxy_refused",
            "Connections refused at accept, by limit.",
            Kind::Counter,
            "limit",
            [
                ("per_source", n(&c.refused_source)),
                ("per_zone", n(&c.refused_zone)),
            ]
            .map(|(l, v)| (l.to_string(), v)),
        );
        if let Some(r) = self.tracker.as_ref().and_then(Tracker::recovery) {
            s.push(
                "guest_recoveries",
                "Guest faults recovered from a checkpoint.",
                Kind::Counter,
                r.recoveries,
            );
            s.push(
                "guest_dropped_calls",
                "Calls that failed again after a recovery and were dropped.",
                Kind::Counter,
                r.dropped_calls,
            );
        }
        if let Some(export) = &self.export {
            export.push_metrics(&mut s);
        }
        if let Some(metrics) = &self.metrics {
            metrics.publish(s);
        }
    }

    /// Queues one line for stdout; a full queue loses it.
    fn emit(&mut self, line: String) {
        if self.lines.try_send(line).is_err() {
            self.lost += 1;
        }
    }

    /// Runs one tracker call; a failure is logged, and a tracker that is gone is dropped (the
    /// proxy carries on untracked).
    fn with_tracker<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Tracker) -> Result<T, ctwasm_host::Error>,
    ) -> Option<T> {
        let tracker = self.tracker.as_mut()?;
        match f(tracker) {
            Ok(v) => Some(v),
            Err(ctwasm_host::Error::Refused(r)) => {
                eprintln!("ctwasm proxy: the tracker refused {what}: {r}");
                None
            }
            Err(ctwasm_host::Error::Fault(ctwasm_host::Fault::Dropped(why))) => {
                eprintln!("ctwasm proxy: the tracker dropped one {what} call ({why}); it goes on");
                None
            }
            Err(e) => {
                eprintln!(
                    "ctwasm proxy: the tracker is gone ({e}); connections are carried untracked"
                );
                self.tracker = None;
                None
            }
        }
    }

    /// Takes one request. An open that waits for its answer (a limit may refuse it) is
    /// answered now; everything else joins the batch that [`TrackerThread::flush`] sends.
    fn handle(&mut self, request: Request) {
        match request {
            Request::Open {
                key,
                zone,
                protocol,
                client,
                local,
                first_bytes,
                reply: Some(reply),
            } => {
                // The limit counts what the tracker holds, so what came before goes first.
                self.flush();
                let now = self.clock.now();
                let answer = match self.open(now, zone, protocol, client, local, first_bytes) {
                    Ok(conn) => {
                        self.carried.insert(key, conn);
                        Opened::Tracked
                    }
                    Err(answer) => answer,
                };
                if matches!(answer, Opened::Untracked) {
                    self.counts.untracked.fetch_add(1, Ordering::Relaxed);
                }
                let _ = reply.send(answer);
            }
            Request::Open {
                key,
                zone,
                protocol,
                client,
                local,
                first_bytes,
                reply: None,
            } => match port_tuple(protocol.number(), client, local) {
                Ok(tuple) => {
                    self.batch.opened.insert(key, self.batch.calls.len());
                    self.batch.push(
                        Call::Open {
                            zone,
                            tuple,
                            first_bytes,
                        },
                        Some(key),
                        false,
                    );
                }
                Err(_) => {
                    self.counts.untracked.fetch_add(1, Ordering::Relaxed);
                }
            },
            Request::Transfer { key, dir, bytes } => {
                if let Some(conn) = self.named(key) {
                    self.batch
                        .push(Call::Transfer { conn, dir, bytes }, None, false);
                }
            }
            Request::Close { key, ending } => {
                if let Some(conn) = self.named(key) {
                    // `flush` forgets the connection once the close is sent.
                    self.batch.opened.remove(&key);
                    self.batch
                        .push(Call::Close { conn, ending }, Some(key), true);
                }
            }
            Request::Forget { key } => {
                self.batch.opened.remove(&key);
                self.batch.forget.push(key);
            }
        }
    }

    /// How the batch names connection `key`: by its open in the batch, or by its handle.
    fn named(&self, key: u64) -> Option<ConnectionRef> {
        match self.batch.opened.get(&key) {
            Some(&i) => Some(ConnectionRef::Opened(i)),
            None => self.carried.get(&key).map(|&c| ConnectionRef::Live(c)),
        }
    }

    /// Sends the gathered calls to the tracker in one batch, at one instant, and keeps the
    /// connections the opens gave.
    fn flush(&mut self) {
        if self.batch.calls.is_empty() {
            for key in self.batch.forget.drain(..) {
                self.carried.remove(&key);
            }
            return;
        }
        let now = self.clock.now();
        let calls = std::mem::take(&mut self.batch.calls);
        let outcomes = self.with_tracker("connection calls", |t| t.calls(now, &calls));
        // In order: a connection opened and closed in this batch is kept, then forgotten.
        for (i, (key, closes)) in self.batch.keys.drain(..).enumerate() {
            let outcome = outcomes.as_ref().and_then(|o| o.get(i).copied());
            match (key, closes, outcome) {
                (Some(key), false, Some(Ok(conn))) => {
                    self.carried.insert(key, conn);
                }
                (Some(key), true, _) => {
                    self.carried.remove(&key);
                }
                (Some(_), false, _) => {
                    self.counts.untracked.fetch_add(1, Ordering::Relaxed);
                }
                (None, ..) => {}
            }
        }
        for key in self.batch.forget.drain(..) {
            self.carried.remove(&key);
        }
        self.batch.opened.clear();
        self.batch.calls = calls;
        self.batch.calls.clear();
    }

    /// Opens the connection in the tracker, or says why not.
    fn open(
        &mut self,
        now: u64,
        zone: u16,
        protocol: Protocol,
        client: SocketAddr,
        local: SocketAddr,
        first_bytes: u64,
    ) -> Result<Connection, Opened> {
        if self.limits != Limits::default() {
            let Some(table) = self.with_tracker("dump", |t| t.dump()) else {
                return Err(Opened::Untracked);
            };
            if let Some(refusal) = self.limits.check(&table, zone, client.ip()) {
                return Err(Opened::Refused(refusal));
            }
        }
        let Ok(tuple) = port_tuple(protocol.number(), client, local) else {
            return Err(Opened::Untracked);
        };
        let open = Call::Open {
            zone,
            tuple,
            first_bytes,
        };
        match self.with_tracker("open", |t| t.calls(now, &[open])) {
            Some(outcomes) => match outcomes.first() {
                Some(Ok(conn)) => Ok(*conn),
                Some(Err(why)) => {
                    eprintln!("ctwasm proxy: the tracker refused {client}: {why}");
                    Err(Opened::Untracked)
                }
                None => Err(Opened::Untracked),
            },
            None => Err(Opened::Untracked),
        }
    }

    /// Offers the tracker's new messages to the listeners, tells the tracker which a reliable
    /// one missed (they come again), and prints what the first listener read.
    fn print_events(&mut self) {
        let Some(tracker) = self.tracker.as_mut() else {
            return;
        };
        let now = self.clock.now();
        let (listeners, export) = (&mut self.listeners, &mut self.export);
        let mut missed = false;
        listeners.advance(now);
        let polled = tracker.poll_events(|event| {
            let frame = event.frame();
            let outcome = listeners.deliver(now, &frame);
            match outcome {
                Delivery::Failed => missed = true,
                // A missed message is offered again later: the export sees it once, delivered.
                Delivery::Delivered => {
                    if let Some(export) = export.as_mut()
                        && let Ok(msg) = output::decode_frame(&frame)
                    {
                        export.observe(&msg, frame.ts_ns);
                    }
                }
            }
            outcome
        });
        if let Err(e) = polled {
            eprintln!("ctwasm proxy: taking the tracker's events failed ({e})");
        }
        self.listeners.advance(now);
        // The on-drain retry policy sends again once the reliable listeners have room.
        self.waiting_for_room |= missed;
        if self.waiting_for_room && self.listeners.reliable_have_room() {
            self.waiting_for_room = false;
            self.with_tracker("listeners drained", |t| t.listeners_drained(now));
        }
        self.print_reads();
    }

    /// Prints the messages the first listener has read.
    fn print_reads(&mut self) {
        let Some(first) = self.listeners.get_mut(0) else {
            return;
        };
        for msg in first.take_received() {
            // Expectation events are counted by the listeners but not printed: the formats
            // describe conntrack entries.
            let Some(frame) = msg.event_frame().filter(|f| f.group <= 3) else {
                continue;
            };
            let line = match output::decode_frame(&frame) {
                Ok(decoded) => self.format.line(&frame, &decoded),
                Err(e) => format!("[undecodable event: {e}]"),
            };
            if self.format.is_xml() && !self.xml_opened {
                self.xml_opened = true;
                self.emit(output::xml::PROLOGUE.to_string());
            }
            self.events += 1;
            self.emit(line);
        }
    }
}

/// The client leg of a connection as the kernel keys it: protocol, client, local address.
#[derive(Clone, Copy, Debug)]
struct Legs {
    protocol: Protocol,
    client: SocketAddr,
    local: SocketAddr,
}

/// The connection tasks' handle on the tracker's thread.
#[derive(Clone)]
struct Handle {
    requests: std_mpsc::Sender<Request>,
    /// Whether a limit may refuse a connection: then an open waits for its answer.
    limited: bool,
}

impl Handle {
    /// Opens connection `key` in the tracker; waits for the answer only if a limit may
    /// refuse it (otherwise the answer is `Tracked`, and the tracker's thread counts the
    /// connection as untracked should the tracker not take it).
    async fn open(&self, key: u64, zone: u16, legs: Legs, first_bytes: u64) -> Opened {
        let (reply, answer) = match self.limited {
            true => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let request = Request::Open {
            key,
            zone,
            protocol: legs.protocol,
            client: legs.client,
            local: legs.local,
            first_bytes,
            reply,
        };
        if self.requests.send(request).is_err() {
            return Opened::Untracked;
        }
        match answer {
            Some(answer) => answer.await.unwrap_or(Opened::Untracked),
            None => Opened::Tracked,
        }
    }

    fn send(&self, request: Request) {
        let _ = self.requests.send(request);
    }
}

pub fn run(args: ProxyArgs) -> Result<()> {
    let routes = crate::proxy_routes::routes(&args.listen, &args.upstream, args.config.as_deref())?;
    let format = crate::output_format(args.format, &args.output)?;
    let mut builder = Tracker::builder()
        .backend(args.backend)
        .retry_policy(args.retry_policy)
        .seed(args.seed)
        .checkpoint_every(args.checkpoint_every.max(1));
    if let Some(fault) = args.inject_fault {
        builder = builder.inject_fault(fault);
    }
    for (name, value) in crate::parse_sysctls(&args.sysctls)? {
        builder = builder.sysctl(name, value);
    }
    let mut tracker = builder.build().context("starting the tracker")?;
    let (socket, stream_end) = match &args.socket {
        Some(path) => {
            let (listener, end) = ctwasm_live::socket_listener::SocketListener::connect_spec(
                path,
                &args.socket_spec,
            )?;
            (Some(listener), Some(end))
        }
        None => (None, None),
    };
    let listeners = event_listeners(&args.listeners, socket);
    tracker.set_listeners(match listeners.has_reliable() {
        true => Listeners::Reliable,
        false => Listeners::Present,
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the proxy's runtime")?;
    runtime.block_on(serve(args, routes, tracker, listeners, stream_end, format))
}

/// How long a UDP session may stay idle: `--udp-idle`, at most the tracker's UDP timeout (the
/// last `--sysctl` that sets nf_conntrack_udp_timeout, else the kernel's 30 s), so that an
/// entry never times out under a live session.
fn udp_idle(asked: Option<f64>, sysctls: &[(String, String)]) -> Duration {
    let timeout = sysctls
        .iter()
        .rev()
        .find(|(name, _)| {
            name.strip_prefix("net.netfilter.").unwrap_or(name) == "nf_conntrack_udp_timeout"
        })
        .and_then(|(_, value)| value.parse::<u64>().ok())
        .map_or(Duration::from_secs(30), Duration::from_secs);
    asked
        .map(Duration::from_secs_f64)
        .map_or(timeout, |d| d.min(timeout))
}

/// The name of stdout's own reader, when no `--listener` is given.
const STDOUT_READER: &str = "stdout";

/// Who the events are offered to: the `--listener`s, the first of which records what it reads
/// for stdout, or else a reader for stdout that loses nothing; then the socket. With a reliable
/// socket, stdout's reader is an observer, which reads each message once, as delivered, where
/// a second socket would read every retry of a message the first one refused.
fn event_listeners(
    configs: &[ListenerConfig],
    socket: Option<ctwasm_live::socket_listener::SocketListener>,
) -> EventListeners {
    use ctwasm_host::listener::ExternalListener as _;
    let mut listeners = match configs.split_first() {
        Some((first, rest)) => {
            let first = ListenerConfig {
                record: true,
                ..first.clone()
            };
            EventListeners::new(std::iter::once(first).chain(rest.iter().cloned()))
        }
        None if socket.as_ref().is_some_and(|s| s.is_reliable()) => {
            EventListeners::new([ListenerConfig::observer(STDOUT_READER)])
        }
        None => EventListeners::new([ListenerConfig {
            name: STDOUT_READER.to_string(),
            rcvbuf: usize::MAX,
            record: true,
            ..ListenerConfig::default()
        }]),
    };
    if let Some(socket) = socket {
        listeners.push_external(Box::new(socket));
    }
    listeners
}

async fn serve(
    args: ProxyArgs,
    routes: Vec<Route>,
    tracker: Tracker,
    mut event_listeners: EventListeners,
    stream_end: Option<ctwasm_live::socket_listener::StreamEnd>,
    format: Format,
) -> Result<()> {
    let mut listeners = Vec::new();
    let mut udp_routes = Vec::new();
    let udp_idle = udp_idle(args.udp_idle, &crate::parse_sysctls(&args.sysctls)?);
    for route in &routes {
        let (addr, upstream, zone) = (route.listen, route.upstream, route.zone);
        if route.protocol == Protocol::Udp {
            let socket = tokio::net::UdpSocket::bind(addr)
                .await
                .with_context(|| format!("--listen udp:{addr}"))?;
            if !args.quiet {
                eprintln!(
                    "ctwasm proxy: udp {} -> {upstream} (zone {zone}, sessions idle {:.1} s)",
                    socket.local_addr()?,
                    udp_idle.as_secs_f64()
                );
            }
            udp_routes.push(udp::UdpRoute {
                socket,
                upstream,
                zone,
                idle: udp_idle,
            });
            continue;
        }
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("--listen {addr}"))?;
        if !args.quiet {
            eprintln!(
                "ctwasm proxy: {} -> {upstream} (zone {zone})",
                listener.local_addr()?
            );
        }
        listeners.push((listener, upstream, zone));
    }
    let counts = Arc::new(Counts::default());
    let (requests, receiver) = std_mpsc::channel();
    let (lines, printer) = printer()?;
    let limits = Limits {
        per_source: args.limit_per_source,
        per_zone: args.limit_per_zone,
    };
    let clock = Clock::new();
    event_listeners.set_origin(clock.now());
    let thread = TrackerThread {
        tracker: Some(tracker),
        limits,
        format,
        clock,
        lines,
        events: 0,
        lost: 0,
        xml_opened: false,
        export: args.ipfix.start()?,
        metrics: args.metrics.start()?,
        published: None,
        counts: Arc::clone(&counts),
        carried: HashMap::new(),
        batch: Gathered::default(),
        listeners: event_listeners,
        stream_end,
        waiting_for_room: false,
        drain: Duration::from_secs_f64(args.drain),
    };
    let tracker_thread = std::thread::Builder::new()
        .name("ctwasm-tracker".to_string())
        .spawn(move || thread.run(receiver))?;
    let handle = Handle {
        requests,
        limited: limits.any(),
    };
    let started = Instant::now();

    // Stop accepting at a signal or at --duration; reset what is left after --drain.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (abort_tx, abort_rx) = watch::channel(false);
    let connect_timeout = Duration::from_secs_f64(args.connect_timeout);
    let track = !args.no_track;
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, upstream, zone) in listeners {
        let (handle, counts, mut stop, abort) = (
            handle.clone(),
            Arc::clone(&counts),
            stop_rx.clone(),
            abort_rx.clone(),
        );
        tasks.spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    accepted = listener.accept() => {
                        let Ok((client, peer)) = accepted else { continue };
                        let key = counts.accepted.fetch_add(1, Ordering::Relaxed);
                        let (handle, counts, abort) =
                            (handle.clone(), Arc::clone(&counts), abort.clone());
                        let handle = track.then_some(handle);
                        connections.spawn(carry(
                            client,
                            Accepted { key, peer, upstream, zone },
                            connect_timeout,
                            handle,
                            counts,
                            abort,
                        ));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
            drop(listener);
            while connections.join_next().await.is_some() {}
        });
    }
    for route in udp_routes {
        let handle = track.then(|| handle.clone());
        tasks.spawn(udp::serve(
            route,
            handle,
            Arc::clone(&counts),
            stop_rx.clone(),
        ));
    }
    drop(handle);

    let duration = args.duration.map(Duration::from_secs_f64);
    let signal = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = async {
                match duration {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    };
    signal.await;
    let _ = stop_tx.send(true);
    let drain = tokio::time::sleep(Duration::from_secs_f64(args.drain));
    tokio::pin!(drain);
    loop {
        tokio::select! {
            joined = tasks.join_next() => if joined.is_none() { break },
            _ = &mut drain => {
                let _ = abort_tx.send(true);
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
    // The connection tasks are gone, and with them every handle: the thread ends.
    let Finished {
        events,
        lost,
        stats,
        recovery,
        simulated,
        socket,
        reliable,
    } = tokio::task::spawn_blocking(move || {
        let r = tracker_thread.join();
        // The tracker's thread held the only sender: the printer ends once it wrote the rest.
        let _ = printer.join();
        r
    })
    .await
    .context("the tracker's thread")?
    .map_err(|_| anyhow::anyhow!("the tracker's thread panicked"))?;
    if !args.quiet {
        let c = &counts;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        eprintln!(
            "ctwasm proxy: {:.1} s: {} connections accepted, refused {} (per source {}, per \
             zone {}), upstream failed {}, closed {}, reset {}, untracked {}; bytes to upstream \
             {}, to clients {}; udp datagrams dropped {}; {events} event messages ({lost} lost \
             to a slow stdout)",
            started.elapsed().as_secs_f64(),
            n(&c.accepted),
            n(&c.refused_source) + n(&c.refused_zone),
            n(&c.refused_source),
            n(&c.refused_zone),
            n(&c.upstream_failed),
            n(&c.closed),
            n(&c.reset),
            n(&c.untracked),
            n(&c.bytes_to_upstream),
            n(&c.bytes_to_client),
            n(&c.datagrams_dropped),
        );
        if let Some(s) = stats {
            eprintln!(
                "  conntrack: entries={} insert={} drop={} events_emitted={}",
                s.entries, s.insert, s.drop, s.events_emitted
            );
        }
        if let Some(r) = recovery {
            eprintln!(
                "  guest faults recovered: {}, calls dropped: {}",
                r.recoveries, r.dropped_calls
            );
        }
        for (name, s) in simulated {
            eprintln!("  listener {name}: {s}");
        }
        if let Some(s) = socket {
            eprintln!(
                "  socket listener: queued {}, refused {} (ENOBUFS {})",
                s.received, s.dropped, s.enobufs
            );
        }
        if reliable {
            eprintln!(
                "  reliable delivery: dying now {}",
                stats.map_or(0, |s| s.dying)
            );
        }
    }
    Ok(())
}

/// The thread that writes the event lines to stdout, and its queue (64 Ki lines). A reader
/// that went away ends the printing, not the proxy.
fn printer() -> Result<(std_mpsc::SyncSender<String>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std_mpsc::sync_channel::<String>(64 * 1024);
    let thread = std::thread::Builder::new()
        .name("ctwasm-printer".to_string())
        .spawn(move || {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut live = true;
            while let Ok(line) = rx.recv() {
                live = live && writeln!(out, "{line}").is_ok();
                // Whatever else waits, then one flush, so lines show as they come.
                while let Ok(more) = rx.try_recv() {
                    live = live && writeln!(out, "{more}").is_ok();
                }
                live = live && out.flush().is_ok();
            }
        })?;
    Ok((tx, thread))
}

/// Where an accepted connection goes: its key, its client, its upstream and the zone it is
/// tracked in.
struct Accepted {
    key: u64,
    peer: SocketAddr,
    upstream: SocketAddr,
    zone: u16,
}

/// Carries one accepted connection to its upstream and back.
async fn carry(
    client: TcpStream,
    accepted: Accepted,
    connect_timeout: Duration,
    handle: Option<Handle>,
    counts: Arc<Counts>,
    mut abort: watch::Receiver<bool>,
) {
    let Accepted {
        key,
        peer,
        upstream,
        zone,
    } = accepted;
    let Ok(local) = client.local_addr() else {
        return;
    };
    let opened = match &handle {
        Some(handle) => {
            let legs = Legs {
                protocol: Protocol::Tcp,
                client: peer,
                local,
            };
            handle.open(key, zone, legs, 0).await
        }
        None => Opened::Untracked,
    };
    // The tracker's thread counts the untracked ones.
    let conn = match opened {
        Opened::Tracked => Some(key),
        Opened::Untracked => None,
        Opened::Refused(why) => {
            match why {
                Refusal::PerSource { .. } => &counts.refused_source,
                Refusal::PerZone { .. } => &counts.refused_zone,
            }
            .fetch_add(1, Ordering::Relaxed);
            eprintln!("ctwasm proxy: refused {peer} (zone {zone}): {why}");
            reset(client);
            return;
        }
    };
    let server = match tokio::time::timeout(connect_timeout, TcpStream::connect(upstream)).await {
        Ok(Ok(s)) => s,
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer in {:.1} s", connect_timeout.as_secs_f64()),
            };
            eprintln!("ctwasm proxy: {peer}: upstream {upstream}: {why}; the client is reset");
            counts.upstream_failed.fetch_add(1, Ordering::Relaxed);
            if let (Some(conn), Some(handle)) = (conn, &handle) {
                // The proxy resets the client: a reset towards it.
                handle.send(Request::Close {
                    key: conn,
                    ending: Ending::Reset {
                        from: Direction::Reply,
                    },
                });
            }
            reset(client);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Both directions run until each has passed its FIN on; an error in either (a reset) ends
    // both at once, as does the shutdown's abort. The tracker is told how the client's leg
    // ended: who sent the first FIN, or who reset it (the proxy itself, towards the client,
    // when the server reset or the proxy aborts).
    let ending = {
        let to_upstream = pump(
            &mut client_read,
            &mut server_write,
            conn.zip(handle.clone())
                .map(|(c, h)| (c, Direction::Original, h)),
            &counts.bytes_to_upstream,
        );
        let to_client = pump(
            &mut server_read,
            &mut client_write,
            conn.zip(handle.clone())
                .map(|(c, h)| (c, Direction::Reply, h)),
            &counts.bytes_to_client,
        );
        tokio::pin!(to_upstream, to_client);
        let (mut up_done, mut down_done) = (false, false);
        let mut first_fin = None;
        let (client, proxy) = (Direction::Original, Direction::Reply);
        loop {
            tokio::select! {
                r = &mut to_upstream, if !up_done => {
                    up_done = true;
                    if r.is_err() { break Ending::Reset { from: client }; }
                    first_fin.get_or_insert(client);
                }
                r = &mut to_client, if !down_done => {
                    down_done = true;
                    if r.is_err() { break Ending::Reset { from: proxy }; }
                    first_fin.get_or_insert(proxy);
                }
                () = aborted(&mut abort) => break Ending::Reset { from: proxy },
            }
            if let (true, true, Some(first)) = (up_done, down_done, first_fin) {
                break Ending::Fin { first };
            }
        }
    };
    if let (Some(conn), Some(handle)) = (conn, &handle) {
        handle.send(Request::Close { key: conn, ending });
    }
    if matches!(ending, Ending::Reset { .. }) {
        counts.reset.fetch_add(1, Ordering::Relaxed);
        // Both sockets close with a reset once their halves are dropped.
        linger_zero(client_read.as_ref());
        linger_zero(server_read.as_ref());
    } else {
        counts.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Resolves once the shutdown's abort is given.
async fn aborted(abort: &mut watch::Receiver<bool>) {
    while !*abort.borrow_and_update() {
        if abort.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Copies one direction until its end, counting each chunk in the tracker; at the end, passes
/// the FIN on (a half close).
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    tracked: Option<(u64, Direction, Handle)>,
    total: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        total.fetch_add(n as u64, Ordering::Relaxed);
        if let Some((key, dir, handle)) = &tracked {
            handle.send(Request::Transfer {
                key: *key,
                dir: *dir,
                bytes: n as u64,
            });
        }
    }
}

/// Closes a socket with a reset.
fn reset(stream: TcpStream) {
    linger_zero(&stream);
    drop(stream);
}

/// SO_LINGER 0: the socket's close sends a reset.
fn linger_zero(stream: &TcpStream) {
    // tokio warns that a lingering close blocks the thread; a zero linger does not wait, it
    // sends the reset at once.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctwasm_core::Status;
    use ctwasm_core::netlink::Counters;
    use ctwasm_host::Tuple;

    fn entry(zone: u16, src: &str, state: TcpState, dying: bool) -> EntryView {
        let src: SocketAddr = format!("{src}:40000").parse().unwrap();
        let orig: Tuple = port_tuple(6, src, "10.0.0.9:80".parse().unwrap()).unwrap();
        EntryView {
            id: 1,
            zone,
            orig,
            reply: orig.invert().unwrap(),
            status: Status::CONFIRMED,
            tcp_state: Some(state),
            sctp_state: None,
            timeout_s: 10,
            mark: 0,
            counters_orig: Counters::default(),
            counters_reply: Counters::default(),
            start_ns: 0,
            dying,
        }
    }

    #[test]
    fn limits_count_open_connections_of_the_source_and_zone() {
        let table = vec![
            entry(0, "10.0.0.1", TcpState::Established, false),
            entry(0, "10.0.0.1", TcpState::SynSent, false),
            // Not open: closed, dying, or in another zone.
            entry(0, "10.0.0.1", TcpState::TimeWait, false),
            entry(0, "10.0.0.1", TcpState::Close, false),
            entry(0, "10.0.0.1", TcpState::Established, true),
            entry(1, "10.0.0.1", TcpState::Established, false),
            entry(0, "10.0.0.2", TcpState::Established, false),
        ];
        let src: IpAddr = "10.0.0.1".parse().unwrap();
        let per_source = |limit| Limits {
            per_source: Some(limit),
            per_zone: None,
        };
        assert_eq!(per_source(3).check(&table, 0, src), None);
        assert_eq!(
            per_source(2).check(&table, 0, src),
            Some(Refusal::PerSource { open: 2, limit: 2 })
        );
        assert_eq!(per_source(2).check(&table, 1, src), None);
        assert_eq!(
            per_source(0).check(&[], 0, src),
            Some(Refusal::PerSource { open: 0, limit: 0 })
        );
        let per_zone = Limits {
            per_source: None,
            per_zone: Some(3),
        };
        assert_eq!(
            per_zone.check(&table, 0, src),
            Some(Refusal::PerZone { open: 3, limit: 3 })
        );
        assert_eq!(per_zone.check(&table, 1, src), None);
        assert_eq!(Limits::default().check(&table, 0, src), None);
    }
}
