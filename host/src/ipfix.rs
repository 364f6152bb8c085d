//! IPFIX flow export (RFC 7011): one data record per finished connection, built from its
//! DESTROY event, sent to a collector over UDP or TCP.
//!
//! Operators feed conntrack to flow collectors the way ulogd2 does: its IPFIX output turns each
//! DESTROY into a record. This module exports the same facts, with what ulogd2 loses kept:
//! addresses, ports and protocol of the original direction, octets and packets of each
//! direction (the reply's as RFC 5103 reverse elements, enterprise 29305, where ulogd2 sums both
//! into one 32-bit total), flow start and end in milliseconds (ulogd2: seconds), the conntrack
//! id as `flowId`, and the mark as `applicationId` (4 bytes, where ulogd2 puts it: IANA has no
//! element for a connection mark). IPv6 flows get a template of their own (ulogd2 has none).
//!
//! | template | fields (IANA element id, length) |
//! |---|---|
//! | 256, IPv4 | sourceIPv4Address (8, 4), destinationIPv4Address (12, 4), then the common fields |
//! | 257, IPv6 | sourceIPv6Address (27, 16), destinationIPv6Address (28, 16), then the common fields |
//!
//! The common fields: sourceTransportPort (7, 2), destinationTransportPort (11, 2; both 0 for
//! protocols without ports), protocolIdentifier (4, 1), octetDeltaCount (1, 8),
//! packetDeltaCount (2, 8), reverse octetDeltaCount and packetDeltaCount (1 and 2 with the
//! enterprise bit, 8 each, enterprise 29305), flowStartMilliseconds (152, 8),
//! flowEndMilliseconds (153, 8), flowId (148, 8), applicationId (95, 4).
//!
//! Counts need `nf_conntrack_acct=1` (they are 0 without it); the start is the kernel's
//! timestamp (`nf_conntrack_timestamp=1`), else the time of the flow's NEW event if the
//! exporter saw it, else the end; the end is the kernel's stop time, else the DESTROY's time.
//!
//! Messages follow the RFC: the sequence number counts the data records sent before the
//! message in the transport session; over UDP the templates lead the first message and are
//! sent again once the refresh interval has passed (RFC 7011 section 8.4), and a message stays
//! within the configured size (512 bytes by default, the RFC's size for an unknown path MTU);
//! over TCP they lead each connection, and messages may be as large as 65535 bytes.
//!
//! [`Encoder`] is the pure part (records and messages, tested on bytes); [`Exporter`] sends
//! from a thread of its own behind a bounded queue, so a collector that is down, refuses or
//! stops reading never stalls the command that feeds it: what does not fit is dropped and
//! counted ([`ExportStats`]).

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ctwasm_core::MessageKind;
use ctwasm_core::netlink::CtMessage;
use ctwasm_core::tuple::{Family, L4Tuple};

/// The template of IPv4 records.
pub const TEMPLATE_V4: u16 = 256;
/// The template of IPv6 records.
pub const TEMPLATE_V6: u16 = 257;
/// RFC 5103's enterprise number for reverse-direction elements.
pub const REVERSE_PEN: u32 = 29305;
/// The IANA-assigned IPFIX port.
pub const IPFIX_PORT: u16 = 4739;

const VERSION: u16 = 10;
const HEADER_LEN: usize = 16;
const SET_HEADER_LEN: usize = 4;
const TEMPLATE_SET_ID: u16 = 2;

/// One field of a template: element id, length, enterprise number.
type Field = (u16, u16, Option<u32>);

/// The fields after the two addresses, shared by both templates.
const COMMON_FIELDS: [Field; 11] = [
    (7, 2, None),              // sourceTransportPort
    (11, 2, None),             // destinationTransportPort
    (4, 1, None),              // protocolIdentifier
    (1, 8, None),              // octetDeltaCount
    (2, 8, None),              // packetDeltaCount
    (1, 8, Some(REVERSE_PEN)), // reverse octetDeltaCount
    (2, 8, Some(REVERSE_PEN)), // reverse packetDeltaCount
    (152, 8, None),            // flowStartMilliseconds
    (153, 8, None),            // flowEndMilliseconds
    (148, 8, None),            // flowId (the conntrack id)
    (95, 4, None),             // applicationId (the conntrack mark)
];

fn address_fields(family: Family) -> [Field; 2] {
    match family {
        Family::Ipv4 => [(8, 4, None), (12, 4, None)],
        Family::Ipv6 => [(27, 16, None), (28, 16, None)],
    }
}

fn template_id(family: Family) -> u16 {
    match family {
        Family::Ipv4 => TEMPLATE_V4,
        Family::Ipv6 => TEMPLATE_V6,
    }
}

/// The length of one data record of `family`.
pub fn record_len(family: Family) -> usize {
    address_fields(family)
        .iter()
        .chain(&COMMON_FIELDS)
        .map(|f| usize::from(f.1))
        .sum()
}

/// One finished connection, as exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub family: Family,
    /// Source and destination of the original direction (4 or 16 bytes used).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// `(octets, packets)` of the original and of the reply direction.
    pub orig: (u64, u64),
    pub reply: (u64, u64),
    pub start_ms: u64,
    pub end_ms: u64,
    /// The conntrack id (0 when the message has none).
    pub id: u32,
    pub mark: u32,
}

impl FlowRecord {
    /// The record of a DESTROY message received or produced at `event_ns` (ns since the epoch);
    /// `new_ns` is the time its NEW event was seen, if it was. `None` for other messages and
    /// for a DESTROY without its original tuple.
    pub fn from_destroy(msg: &CtMessage, event_ns: u64, new_ns: Option<u64>) -> Option<Self> {
        if msg.kind() != Some(MessageKind::Destroy) {
            return None;
        }
        let orig = msg.orig()?;
        let (sport, dport) = match orig.l4 {
            L4Tuple::Ports { src, dst } => (src, dst),
            _ => (0, 0),
        };
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        let n = orig.family.address_len();
        src[..n].copy_from_slice(orig.src.bytes(orig.family));
        dst[..n].copy_from_slice(orig.dst.bytes(orig.family));
        let counts =
            |c: Option<ctwasm_core::netlink::Counters>| c.map_or((0, 0), |c| (c.bytes, c.packets));
        let (start, stop) = msg.timestamp().unwrap_or_default();
        let end_ns = stop.filter(|s| *s != 0).unwrap_or(event_ns);
        let start_ns = start.or(new_ns).unwrap_or(end_ns);
        Some(FlowRecord {
            family: orig.family,
            src,
            dst,
            sport,
            dport,
            proto: orig.proto,
            orig: counts(msg.counters_orig()),
            reply: counts(msg.counters_reply()),
            start_ms: start_ns / 1_000_000,
            end_ms: end_ns / 1_000_000,
            id: msg.id().unwrap_or(0),
            mark: msg.mark().unwrap_or(0),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let n = self.family.address_len();
        out.extend_from_slice(&self.src[..n]);
        out.extend_from_slice(&self.dst[..n]);
        out.extend_from_slice(&self.sport.to_be_bytes());
        out.extend_from_slice(&self.dport.to_be_bytes());
        out.push(self.proto);
        for value in [
            self.orig.0,
            self.orig.1,
            self.reply.0,
            self.reply.1,
            self.start_ms,
            self.end_ms,
            u64::from(self.id),
        ] {
            out.extend_from_slice(&value.to_be_bytes());
        }
        out.extend_from_slice(&self.mark.to_be_bytes());
    }
}

/// Remembers when each flow's NEW was seen, for flows whose DESTROY carries no kernel start
/// time; bounded, so a flood of flows that never end cannot grow it without limit.
#[derive(Debug, Default)]
pub struct StartTimes {
    by_id: HashMap<u32, u64>,
}

impl StartTimes {
    /// At most this many flows are remembered; later ones start at their end.
    pub const CAPACITY: usize = 1 << 20;

    /// Looks at one event message seen at `event_ns`; for a DESTROY, returns its record.
    pub fn observe(&mut self, msg: &CtMessage, event_ns: u64) -> Option<FlowRecord> {
        let id = msg.id()?;
        match msg.kind()? {
            MessageKind::New => {
                if msg.timestamp().is_none() && self.by_id.len() < Self::CAPACITY {
                    self.by_id.insert(id, event_ns);
                }
                None
            }
            MessageKind::Update => None,
            MessageKind::Destroy => {
                let new_ns = self.by_id.remove(&id);
                FlowRecord::from_destroy(msg, event_ns, new_ns)
            }
        }
    }
}

/// Builds IPFIX messages: templates, data sets and sequence numbers of one transport session.
#[derive(Debug)]
pub struct Encoder {
    domain: u32,
    max_len: usize,
    /// Data records sent before the next message.
    sequence: u32,
}

impl Encoder {
    /// An encoder for observation domain `domain` whose messages stay within `max_len` bytes
    /// (at least one record with both templates; at most 65535).
    pub fn new(domain: u32, max_len: usize) -> Encoder {
        let least = HEADER_LEN + templates_len() + SET_HEADER_LEN + record_len(Family::Ipv6);
        Encoder {
            domain,
            max_len: max_len.clamp(least, usize::from(u16::MAX)),
            sequence: 0,
        }
    }

    /// Starts a new transport session (a TCP reconnection): the sequence starts again at 0.
    pub fn new_session(&mut self) {
        self.sequence = 0;
    }

    /// The messages carrying `records` in order, exported at `export_secs`; the first one
    /// leads with both templates when `templates` is set. Consumes the records it encodes.
    pub fn encode(
        &mut self,
        records: &[FlowRecord],
        templates: bool,
        export_secs: u32,
    ) -> Vec<Vec<u8>> {
        let mut messages = Vec::new();
        let mut rest = records;
        let mut with_templates = templates;
        while !rest.is_empty() || with_templates {
            let mut msg = Vec::with_capacity(self.max_len);
            msg.extend_from_slice(&[0; HEADER_LEN]);
            if with_templates {
                write_templates(&mut msg);
                with_templates = false;
            }
            let mut in_message = 0u32;
            // Consecutive records of one family share a data set.
            while let Some(first) = rest.first() {
                let len = record_len(first.family);
                if msg.len() + SET_HEADER_LEN + len > self.max_len {
                    break;
                }
                let set_start = msg.len();
                msg.extend_from_slice(&template_id(first.family).to_be_bytes());
                msg.extend_from_slice(&[0, 0]);
                while let Some(r) = rest.first() {
                    if r.family != first.family || msg.len() + len > self.max_len {
                        break;
                    }
                    r.encode(&mut msg);
                    rest = &rest[1..];
                    in_message += 1;
                }
                let set_len = (msg.len() - set_start) as u16;
                msg[set_start + 2..set_start + 4].copy_from_slice(&set_len.to_be_bytes());
            }
            let len = msg.len() as u16;
            msg[0..2].copy_from_slice(&VERSION.to_be_bytes());
            msg[2..4].copy_from_slice(&len.to_be_bytes());
            msg[4..8].copy_from_slice(&export_secs.to_be_bytes());
            msg[8..12].copy_from_slice(&self.sequence.to_be_bytes());
            msg[12..16].copy_from_slice(&self.domain.to_be_bytes());
            self.sequence = self.sequence.wrapping_add(in_message);
            messages.push(msg);
        }
        messages
    }
}

fn templates_len() -> usize {
    let one = |family| {
        4 + address_fields(family)
            .iter()
            .chain(&COMMON_FIELDS)
            .map(|f| if f.2.is_some() { 8 } else { 4 })
            .sum::<usize>()
    };
    SET_HEADER_LEN + one(Family::Ipv4) + one(Family::Ipv6)
}

/// One template set with both templates.
fn write_templates(msg: &mut Vec<u8>) {
    let start = msg.len();
    msg.extend_from_slice(&TEMPLATE_SET_ID.to_be_bytes());
    msg.extend_from_slice(&[0, 0]);
    for family in [Family::Ipv4, Family::Ipv6] {
        let fields: Vec<Field> = address_fields(family)
            .into_iter()
            .chain(COMMON_FIELDS)
            .collect();
        msg.extend_from_slice(&template_id(family).to_be_bytes());
        msg.extend_from_slice(&(fields.len() as u16).to_be_bytes());
        for (id, len, pen) in fields {
            let id = if pen.is_some() { id | 0x8000 } else { id };
            msg.extend_from_slice(&id.to_be_bytes());
            msg.extend_from_slice(&len.to_be_bytes());
            if let Some(pen) = pen {
                msg.extend_from_slice(&pen.to_be_bytes());
            }
        }
    }
    let len = (msg.len() - start) as u16;
    msg[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Where the records go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A collector: `HOST:PORT` (UDP), `udp://HOST:PORT` or `tcp://HOST:PORT`; the port defaults
/// to 4739.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collector {
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// A collector address that cannot be used, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectorError {
    pub value: String,
    pub reason: String,
}

impl std::fmt::Display for CollectorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--ipfix `{}`: {} (expected HOST:PORT, udp://HOST:PORT or tcp://HOST:PORT)",
            self.value, self.reason
        )
    }
}

impl std::error::Error for CollectorError {}

impl std::str::FromStr for Collector {
    type Err = CollectorError;

    fn from_str(value: &str) -> Result<Collector, CollectorError> {
        let err = |reason: String| CollectorError {
            value: value.to_string(),
            reason,
        };
        let (transport, rest) = match value.split_once("://") {
            None => (Transport::Udp, value),
            Some(("udp", rest)) => (Transport::Udp, rest),
            Some(("tcp", rest)) => (Transport::Tcp, rest),
            Some((scheme, _)) => return Err(err(format!("unknown transport `{scheme}`"))),
        };
        if rest.is_empty() {
            return Err(err("no host".to_string()));
        }
        // A bare host (or a bracketed IPv6 address) takes the IPFIX port.
        let with_port = if rest.parse::<std::net::IpAddr>().is_ok() {
            format!("{}:{IPFIX_PORT}", bracket(rest))
        } else if rest.ends_with(']') || !rest.contains(':') {
            format!("{rest}:{IPFIX_PORT}")
        } else {
            rest.to_string()
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| err(e.to_string()))?
            .next()
            .ok_or_else(|| err("the name has no address".to_string()))?;
        if addr.port() == 0 {
            return Err(err("port 0".to_string()));
        }
        Ok(Collector { transport, addr })
    }
}

fn bracket(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// How an [`Exporter`] behaves.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub collector: Collector,
    /// The observation domain id.
    pub domain: u32,
    /// Largest message over UDP (TCP messages may be as large as 65535 bytes).
    pub max_udp_message: usize,
    /// Over UDP, how often the templates are sent again.
    pub template_refresh: Duration,
    /// Records waiting to be sent, at most; more are dropped and counted.
    pub queue: usize,
    /// Over TCP, the least time between two connection attempts.
    pub reconnect_after: Duration,
}

impl ExportOptions {
    pub fn new(collector: Collector) -> ExportOptions {
        ExportOptions {
            collector,
            domain: 1,
            max_udp_message: 512,
            template_refresh: Duration::from_secs(60),
            queue: 65_536,
            // RFC 7011 section 10.4.1: no more often than once a minute by default.
            reconnect_after: Duration::from_secs(60),
        }
    }
}

/// What an exporter did, for the command's summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Records handed over to the collector's socket.
    pub exported: u64,
    /// IPFIX messages sent.
    pub messages: u64,
    /// Records dropped because the queue was full (the collector was down or slow).
    pub dropped_queue_full: u64,
    /// Records lost because a send failed (the collector refused, or the connection broke).
    pub dropped_send_failed: u64,
    /// Records still queued when the exporter was told to finish and could not send them.
    pub dropped_at_exit: u64,
    /// TCP connections made.
    pub connections: u64,
}

impl ExportStats {
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full + self.dropped_send_failed + self.dropped_at_exit
    }
}

impl std::fmt::Display for ExportStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records in {} messages, dropped {} (queue full {}, send failed {}, at exit {})",
            self.exported,
            self.messages,
            self.dropped(),
            self.dropped_queue_full,
            self.dropped_send_failed,
            self.dropped_at_exit
        )?;
        if self.connections > 0 {
            write!(f, ", {} TCP connections", self.connections)?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct SharedCounts {
    exported: AtomicU64,
    messages: AtomicU64,
    dropped_send_failed: AtomicU64,
    dropped_at_exit: AtomicU64,
    connections: AtomicU64,
}

enum Command {
    Record(FlowRecord),
    Finish(Instant),
}

/// Sends records to a collector from a thread of its own. [`Exporter::export`] never blocks.
#[derive(Debug)]
pub struct Exporter {
    tx: SyncSender<Command>,
    queue_full: u64,
    counts: Arc<SharedCounts>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Starts exporting. A UDP socket is bound and connected here (an error says why); a TCP
    /// collector is connected by the thread, and retried while it is down.
    pub fn start(options: ExportOptions) -> io::Result<Exporter> {
        let udp = match options.collector.transport {
            Transport::Udp => {
                let local: SocketAddr = if options.collector.addr.is_ipv4() {
                    "0.0.0.0:0".parse().expect("an address")
                } else {
                    "[::]:0".parse().expect("an address")
                };
                let socket = UdpSocket::bind(local)?;
                socket.connect(options.collector.addr)?;
                Some(socket)
            }
            Transport::Tcp => None,
        };
        let (tx, rx) = sync_channel(options.queue.max(1));
        let counts = Arc::new(SharedCounts::default());
        let thread_counts = Arc::clone(&counts);
        let thread = std::thread::Builder::new()
            .name("ctwasm-ipfix".to_string())
            .spawn(move || {
                let mut sender = Sender {
                    encoder: Encoder::new(
                        options.domain,
                        match options.collector.transport {
                            Transport::Udp => options.max_udp_message,
                            Transport::Tcp => usize::from(u16::MAX),
                        },
                    ),
                    options,
                    udp,
                    tcp: None,
                    last_attempt: None,
                    templates_sent: None,
                    counts: thread_counts,
                };
                sender.run(rx);
            })?;
        Ok(Exporter {
            tx,
            queue_full: 0,
            counts,
            thread: Some(thread),
        })
    }

    /// Queues one record; drops and counts it when the queue is full.
    pub fn export(&mut self, record: FlowRecord) {
        match self.tx.try_send(Command::Record(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.queue_full += 1,
        }
    }

    /// What was done so far.
    pub fn stats(&self) -> ExportStats {
        let c = &self.counts;
        ExportStats {
            exported: c.exported.load(Ordering::Relaxed),
            messages: c.messages.load(Ordering::Relaxed),
            dropped_queue_full: self.queue_full,
            dropped_send_failed: c.dropped_send_failed.load(Ordering::Relaxed),
            dropped_at_exit: c.dropped_at_exit.load(Ordering::Relaxed),
            connections: c.connections.load(Ordering::Relaxed),
        }
    }

    /// Sends what is queued, waiting at most `grace`; what cannot be sent by then is counted
    /// as dropped at exit.
    pub fn finish(mut self, grace: Duration) -> ExportStats {
        let deadline = Instant::now() + grace;
        // The queue may be full; the finish order waits its turn until the deadline.
        let mut order = Command::Finish(deadline);
        loop {
            match self.tx.try_send(order) {
                Ok(()) => break,
                Err(TrySendError::Full(o)) if Instant::now() < deadline => {
                    order = o;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => break,
            }
        }
        // The thread ends by the deadline (its sockets have timeouts within it).
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.stats()
    }
}

/// The exporter's thread: batches what is queued into messages and sends them.
struct Sender {
    options: ExportOptions,
    encoder: Encoder,
    udp: Option<UdpSocket>,
    tcp: Option<TcpStream>,
    last_attempt: Option<Instant>,
    /// When the templates were last sent (UDP).
    templates_sent: Option<Instant>,
    counts: Arc<SharedCounts>,
}

impl Sender {
    fn run(&mut self, rx: Receiver<Command>) {
        // At most this many records are held here; behind them the queue fills and drops.
        const BATCH: usize = 4096;
        let mut batch = Vec::new();
        let mut finish_by = None;
        loop {
            // Wait for the next record (unless a batch waits for a collector that is down),
            // then take whatever else is queued, up to a batch.
            let waiting = if batch.len() >= BATCH || finish_by.is_some() {
                Err(RecvTimeoutError::Timeout)
            } else {
                rx.recv_timeout(Duration::from_millis(200))
            };
            match waiting {
                Ok(Command::Record(r)) => batch.push(r),
                Ok(Command::Finish(by)) => finish_by = Some(by),
                Err(RecvTimeoutError::Timeout) => {}
                // The exporter was dropped without `finish`: end now.
                Err(RecvTimeoutError::Disconnected) => {
                    finish_by.get_or_insert_with(Instant::now);
                }
            }
            let mut queue_empty = false;
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(Command::Record(r)) => batch.push(r),
                    Ok(Command::Finish(by)) => finish_by = Some(by),
                    Err(_) => {
                        queue_empty = true;
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                self.send(&mut batch, finish_by);
            }
            if let Some(by) = finish_by
                && ((batch.is_empty() && queue_empty) || Instant::now() >= by)
            {
                let records = |c: Command| matches!(c, Command::Record(_)) as u64;
                let left = batch.len() as u64 + rx.try_iter().map(records).sum::<u64>();
                self.counts
                    .dropped_at_exit
                    .fetch_add(left, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Sends `batch`; leaves it filled only when a TCP collector is down (to retry later).
    fn send(&mut self, batch: &mut Vec<FlowRecord>, finish_by: Option<Instant>) {
        let export_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        match self.options.collector.transport {
            Transport::Udp => {
                let refresh = self
                    .templates_sent
                    .is_none_or(|t| t.elapsed() >= self.options.template_refresh);
                if refresh {
                    self.templates_sent = Some(Instant::now());
                }
                let socket = self.udp.as_ref().expect("a UDP exporter has its socket");
                for msg in self.encoder.encode(batch, refresh, export_secs) {
                    let records = records_in(&msg);
                    match socket.send(&msg) {
                        Ok(_) => {
                            self.counts.messages.fetch_add(1, Ordering::Relaxed);
                            self.counts.exported.fetch_add(records, Ordering::Relaxed);
                        }
                        // Refused (an ICMP port unreachable came back) or no route: lost.
                        Err(_) => {
                            self.counts
                                .dropped_send_failed
                                .fetch_add(records, Ordering::Relaxed);
                        }
                    }
                }
                batch.clear();
            }
            Transport::Tcp => {
                if self.tcp.is_none() && !self.connect(finish_by) {
                    // Down: keep the batch (bounded: the queue behind it fills and drops).
                    std::thread::sleep(Duration::from_millis(50));
                    return;
                }
                let fresh = self.templates_sent.is_none();
                self.templates_sent = Some(Instant::now());
                for msg in self.encoder.encode(batch, fresh, export_secs) {
                    let records = records_in(&msg);
                    let sent = self
                        .tcp
                        .as_mut()
                        .is_some_and(|stream| stream.write_all(&msg).is_ok());
                    if sent {
                        self.counts.messages.fetch_add(1, Ordering::Relaxed);
                        self.counts.exported.fetch_add(records, Ordering::Relaxed);
                    } else {
                        // A broken or stalled connection: what it did not take is lost (a
                        // partial message cannot be completed on a new connection).
                        self.counts
                            .dropped_send_failed
                            .fetch_add(records, Ordering::Relaxed);
                        self.tcp = None;
                        self.templates_sent = None;
                    }
                }
                batch.clear();
            }
        }
    }

    /// Connects to a TCP collector, no more often than the options allow. Returns whether it
    /// is connected.
    fn connect(&mut self, finish_by: Option<Instant>) -> bool {
        let wait = self.options.reconnect_after;
        if self.last_attempt.is_some_and(|t| t.elapsed() < wait) {
            return false;
        }
        self.last_attempt = Some(Instant::now());
        let timeout = finish_by
            .map(|by| by.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(2))
            .clamp(Duration::from_millis(10), Duration::from_secs(2));
        match TcpStream::connect_timeout(&self.options.collector.addr, timeout) {
            Ok(stream) => {
                // A collector that stops reading must not hold the thread forever.
                let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = stream.set_nodelay(true);
                self.tcp = Some(stream);
                self.templates_sent = None;
                self.encoder.new_session();
                self.counts.connections.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }
}

/// The number of data records in an encoded message (from its data set lengths).
pub fn records_in(msg: &[u8]) -> u64 {
    let mut n = 0;
    let mut at = HEADER_LEN;
    while at + SET_HEADER_LEN <= msg.len() {
        let id = u16::from_be_bytes([msg[at], msg[at + 1]]);
        let len = usize::from(u16::from_be_bytes([msg[at + 2], msg[at + 3]]));
        if len < SET_HEADER_LEN {
            break;
        }
        let family = match id {
            TEMPLATE_V4 => Some(Family::Ipv4),
            TEMPLATE_V6 => Some(Family::Ipv6),
            _ => None,
        };
        if let Some(f) = family {
            n += ((len - SET_HEADER_LEN) / record_len(f)) as u64;
        }
        at += len;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctwasm_core::netlink::{CounterAttr, CtAttr, NlHeader, TimestampAttr, tuple_attrs};
    use ctwasm_core::tuple::{Addr, Tuple, ipproto};
    use std::net::TcpListener;

    fn destroy(tuple: Tuple, id: u32) -> CtMessage {
        CtMessage {
            header: NlHeader {
                msg_type: 0x102,
                flags: 0,
                seq: 0,
                port_id: 0,
            },
            family: tuple.family as u8,
            version: 0,
            res_id: 0,
            attrs: vec![
                CtAttr::TupleOrig(tuple_attrs(&tuple)),
                CtAttr::TupleReply(tuple_attrs(&tuple.invert().unwrap())),
                CtAttr::CountersOrig(vec![CounterAttr::Packets(3), CounterAttr::Bytes(180)]),
                CtAttr::CountersReply(vec![CounterAttr::Packets(2), CounterAttr::Bytes(4_000)]),
                CtAttr::Timestamp(vec![
                    TimestampAttr::Start(1_796_071_476_344_759_220),
                    TimestampAttr::Stop(1_796_071_478_343_996_144),
                ]),
                CtAttr::Mark(7),
                CtAttr::Id(id),
            ],
        }
    }

    fn v4(sport: u16) -> Tuple {
        Tuple {
            family: Family::Ipv4,
            src: Addr::v4([10, 0, 0, 1]),
            dst: Addr::v4([10, 0, 0, 2]),
            proto: ipproto::TCP,
            l4: L4Tuple::Ports {
                src: sport,
                dst: 443,
            },
        }
    }

    fn v6() -> Tuple {
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[15] = 1;
        let mut b = a;
        b[15] = 2;
        Tuple {
            family: Family::Ipv6,
            src: Addr::v6(a),
            dst: Addr::v6(b),
            proto: ipproto::ICMPV6,
            l4: L4Tuple::Icmp {
                id: 9,
                kind: 128,
                code: 0,
            },
        }
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn a_destroy_becomes_one_record_with_both_directions() {
        let r = FlowRecord::from_destroy(&destroy(v4(40000), 77), 5, None).unwrap();
        assert_eq!((r.sport, r.dport, r.proto), (40000, 443, ipproto::TCP));
        assert_eq!((r.orig, r.reply), ((180, 3), (4_000, 2)));
        assert_eq!(
            (r.start_ms, r.end_ms),
            (1_796_071_476_344, 1_796_071_478_343)
        );
        assert_eq!((r.id, r.mark), (77, 7));
        assert_eq!(&r.src[..4], &[10, 0, 0, 1]);

        // ICMP has no ports; without kernel times the NEW's time and the DESTROY's are used.
        let mut m = destroy(v6(), 78);
        m.attrs.retain(|a| !matches!(a, CtAttr::Timestamp(_)));
        let r = FlowRecord::from_destroy(&m, 9_000_000_000, Some(2_000_000_000)).unwrap();
        assert_eq!((r.sport, r.dport), (0, 0));
        assert_eq!((r.start_ms, r.end_ms), (2_000, 9_000));
        let r = FlowRecord::from_destroy(&m, 9_000_000_000, None).unwrap();
        assert_eq!(r.start_ms, 9_000);

        // Not a DESTROY: no record.
        let mut new = m.clone();
        new.header.msg_type = 0x100;
        assert_eq!(FlowRecord::from_destroy(&new, 1, None), None);
    }

    #[test]
    fn start_times_come_from_the_new_when_the_kernel_gives_none() {
        let mut times = StartTimes::default();
        let mut m = destroy(v4(1), 5);
        m.attrs.retain(|a| !matches!(a, CtAttr::Timestamp(_)));
        let mut new = m.clone();
        new.header.msg_type = 0x100;
        new.header.flags = 0x600;
        assert_eq!(times.observe(&new, 1_000_000_000), None);
        let r = times.observe(&m, 4_000_000_000).unwrap();
        assert_eq!((r.start_ms, r.end_ms), (1_000, 4_000));
        // Forgotten once used.
        assert_eq!(times.observe(&m, 5_000_000_000).unwrap().start_ms, 5_000);
    }

    #[test]
    fn templates_describe_the_records_field_by_field() {
        let mut enc = Encoder::new(42, 1400);
        let msgs = enc.encode(&[], true, 1_796_000_000);
        assert_eq!(msgs.len(), 1);
        let m = &msgs[0];
        assert_eq!(u16_at(m, 0), 10);
        assert_eq!(usize::from(u16_at(m, 2)), m.len());
        assert_eq!(u32_at(m, 4), 1_796_000_000);
        assert_eq!(u32_at(m, 8), 0);
        assert_eq!(u32_at(m, 12), 42);
        // One template set with two templates.
        assert_eq!(u16_at(m, 16), 2);
        assert_eq!(usize::from(u16_at(m, 18)), m.len() - 16);
        let mut at = 20;
        for (template, family, first_ie) in [(256, Family::Ipv4, 8), (257, Family::Ipv6, 27)] {
            assert_eq!(u16_at(m, at), template);
            assert_eq!(u16_at(m, at + 2), 13);
            at += 4;
            let mut total = 0;
            let mut ies = Vec::new();
            for _ in 0..13 {
                let (ie, len) = (u16_at(m, at), u16_at(m, at + 2));
                at += 4;
                if ie & 0x8000 != 0 {
                    assert_eq!(u32_at(m, at), REVERSE_PEN);
                    at += 4;
                }
                ies.push(ie);
                total += usize::from(len);
            }
            assert_eq!(ies[0], first_ie);
            assert_eq!(
                &ies[2..],
                &[7, 11, 4, 1, 2, 0x8001, 0x8002, 152, 153, 148, 95]
            );
            assert_eq!(total, record_len(family));
        }
        assert_eq!(at, m.len());
    }

    #[test]
    fn messages_stay_within_the_size_and_number_the_records_before_them() {
        let records: Vec<FlowRecord> = (0..20)
            .map(|i| {
                let t = if i % 7 == 3 { v6() } else { v4(40000 + i) };
                FlowRecord::from_destroy(&destroy(t, u32::from(i)), 0, None).unwrap()
            })
            .collect();
        let mut enc = Encoder::new(1, 512);
        let msgs = enc.encode(&records, true, 0);
        assert!(msgs.len() > 3, "{}", msgs.len());
        let mut before = 0u64;
        let mut decoded = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            assert!(m.len() <= 512);
            assert_eq!(usize::from(u16_at(m, 2)), m.len());
            assert_eq!(u64::from(u32_at(m, 8)), before, "message {i}");
            let mut at = 16;
            if i == 0 {
                assert_eq!(u16_at(m, 16), 2, "the templates lead the first message");
                at += usize::from(u16_at(m, 18));
            }
            while at < m.len() {
                let (set, len) = (u16_at(m, at), usize::from(u16_at(m, at + 2)));
                assert!(set == TEMPLATE_V4 || set == TEMPLATE_V6, "set {set}");
                let family = if set == TEMPLATE_V4 {
                    Family::Ipv4
                } else {
                    Family::Ipv6
                };
                let rl = record_len(family);
                assert_eq!((len - 4) % rl, 0);
                for r in (at + 4..at + len).step_by(rl) {
                    let n = family.address_len();
                    let ports = r + 2 * n;
                    decoded.push((
                        family,
                        u16_at(m, ports),
                        u64_at(m, ports + 5),
                        u64_at(m, ports + 21),
                        u64_at(m, ports + 53),
                        u32_at(m, ports + 61),
                    ));
                }
                at += len;
            }
            before += records_in(m);
        }
        assert_eq!(before, 20);
        let expected: Vec<_> = records
            .iter()
            .map(|r| {
                (
                    r.family,
                    r.sport,
                    r.orig.0,
                    r.reply.0,
                    u64::from(r.id),
                    r.mark,
                )
            })
            .collect();
        assert_eq!(decoded, expected);
        // The next call goes on counting, without templates unless asked.
        let next = enc.encode(&records[..1], false, 0);
        assert_eq!(u32_at(&next[0], 8), 20);
        assert_eq!(u16_at(&next[0], 16), TEMPLATE_V4);
        enc.new_session();
        assert_eq!(u32_at(&enc.encode(&records[..1], true, 0)[0], 8), 0);
    }

    #[test]
    fn collectors_parse_or_say_what_is_wrong() {
        let c: Collector = "127.0.0.1:9995".parse().unwrap();
        assert_eq!((c.transport, c.addr.port()), (Transport::Udp, 9995));
        let c: Collector = "tcp://[::1]:4000".parse().unwrap();
        assert_eq!((c.transport, c.addr.port()), (Transport::Tcp, 4000));
        assert!(c.addr.is_ipv6());
        assert_eq!(
            "udp://127.0.0.1".parse::<Collector>().unwrap().addr.port(),
            4739
        );
        assert_eq!("::1".parse::<Collector>().unwrap().addr.port(), 4739);
        assert_eq!("[::1]".parse::<Collector>().unwrap().addr.port(), 4739);
        for (bad, why) in [
            ("", "no host"),
            ("sctp://127.0.0.1:1", "unknown transport `sctp`"),
            ("tcp://", "no host"),
            ("127.0.0.1:0", "port 0"),
            ("127.0.0.1:99999", "invalid"),
            ("127.0.0.1:x", "invalid"),
        ] {
            let e = bad.parse::<Collector>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("--ipfix"), "{bad}: {e}");
        }
    }

    fn records(n: u16) -> Vec<FlowRecord> {
        (0..n)
            .map(|i| FlowRecord::from_destroy(&destroy(v4(i), u32::from(i)), 0, None).unwrap())
            .collect()
    }

    #[test]
    fn a_udp_collector_receives_every_record() {
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
        collector
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let addr = collector.local_addr().unwrap();
        let mut exporter = Exporter::start(ExportOptions::new(Collector {
            transport: Transport::Udp,
            addr,
        }))
        .unwrap();
        for r in records(50) {
            exporter.export(r);
        }
        let stats = exporter.finish(Duration::from_secs(5));
        assert_eq!((stats.exported, stats.dropped()), (50, 0), "{stats}");
        let mut got = 0;
        let mut buf = [0u8; 2048];
        while got < 50 {
            let n = collector.recv(&mut buf).expect("a message");
            assert!(n <= 512);
            assert_eq!(u64::from(u32_at(&buf, 8)), got);
            got += records_in(&buf[..n]);
        }
        assert_eq!(got, 50);
    }

    #[test]
    fn a_collector_that_is_down_or_stops_reading_costs_records_not_time() {
        // UDP to a port nobody listens on: refused, counted, nothing blocks.
        let closed = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut udp = Exporter::start(ExportOptions::new(Collector {
            transport: Transport::Udp,
            addr: closed,
        }))
        .unwrap();
        for r in records(10) {
            udp.export(r);
            std::thread::sleep(Duration::from_millis(2));
        }
        let stats = udp.finish(Duration::from_secs(2));
        assert_eq!(stats.exported + stats.dropped(), 10, "{stats}");
        assert!(stats.dropped_send_failed > 0, "{stats}");

        // TCP to nothing: records wait in a bounded queue; the rest are dropped and counted,
        // and finishing takes no longer than its grace.
        let nobody = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut options = ExportOptions::new(Collector {
            transport: Transport::Tcp,
            addr: nobody,
        });
        options.queue = 100;
        let mut tcp = Exporter::start(options).unwrap();
        let started = Instant::now();
        for r in records(10_000) {
            tcp.export(r);
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        let stats = tcp.finish(Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(stats.exported, 0);
        assert_eq!(stats.dropped(), 10_000, "{stats}");
        assert!(stats.dropped_queue_full > 0, "{stats}");

        // A TCP collector that accepts and never reads: the socket buffers fill, the write
        // times out, the records are counted as lost.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut stalled = Exporter::start(ExportOptions::new(Collector {
            transport: Transport::Tcp,
            addr: listener.local_addr().unwrap(),
        }))
        .unwrap();
        let started = Instant::now();
        for r in records(60_000) {
            stalled.export(r);
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        let stats = stalled.finish(Duration::from_secs(3));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(stats.exported + stats.dropped(), 60_000, "{stats}");
        assert!(stats.dropped() > 0, "{stats}");
        drop(listener);
    }

    #[test]
    fn a_tcp_collector_gets_the_templates_first_and_every_record() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut all = Vec::new();
            std::io::Read::read_to_end(&mut stream, &mut all).unwrap();
            all
        });
        let mut exporter = Exporter::start(ExportOptions::new(Collector {
            transport: Transport::Tcp,
            addr,
        }))
        .unwrap();
        for r in records(3_000) {
            exporter.export(r);
        }
        // The exporter's thread owns the stream and closes it when it ends, which ends the
        // reader's `read_to_end`.
        let stats = exporter.finish(Duration::from_secs(5));
        assert_eq!(
            (stats.exported, stats.dropped(), stats.connections),
            (3_000, 0, 1)
        );
        let all = reader.join().unwrap();
        let mut at = 0;
        let mut before = 0;
        let mut first = true;
        while at < all.len() {
            let len = usize::from(u16_at(&all, at + 2));
            let m = &all[at..at + len];
            assert_eq!(u16_at(m, 0), 10);
            assert_eq!(u64::from(u32_at(m, 8)), before);
            assert_eq!(u16_at(m, 16) == 2, first, "templates once, first");
            first = false;
            before += records_in(m);
            at += len;
        }
        assert_eq!(before, 3_000);
    }
}
