//! Printing event messages: as `conntrack -E` prints them, and as the project's JSON lines.
//!
//! Operators read conntrack events in the text of conntrack-tools, and scripts already parse it;
//! printing the same bytes lets `ctwasm replay` stand in for `conntrack -E` and lets a test diff
//! the engine's output against the live kernel's. The text follows conntrack 1.4.7 with
//! libnetfilter_conntrack's default formatter: a field is printed exactly when its attribute is in
//! the message (a DESTROY has no timeout, an UPDATE without a state change has no TCP or SCTP
//! state), in
//! the tool's order and padding. The expected strings in the tests were printed by the real tool
//! (see the note there).
//!
//! The JSON line (see "The JSON event line" in `core-guest/docs/semantics.md`) is the
//! machine-readable form: the same facts under fixed names, keys in a fixed order, so two runs
//! can be compared byte for byte.
//!
//! Everything is computed from the message and its frame alone: where `conntrack` would read the
//! wall clock (the `-o timestamp` prefix, `delta-time` of an entry not yet stopped), the frame's
//! event time is used, so the output stays deterministic. Times print in UTC.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::anyhow;
use ctwasm_core::batch::EventFrame;
use ctwasm_core::event::{MessageKind, Status};
use ctwasm_core::netlink::consts::{
    CTA_COUNTERS32_BYTES, CTA_COUNTERS32_PACKETS, CTA_SECMARK, NLA_TYPE_MASK,
};
use ctwasm_core::netlink::{
    CounterAttr, CtAttr, CtMessage, IpAttr, ProtoAttr, ProtoInfoAttr, SctpInfoAttr, TcpInfoAttr,
    TupleAttr,
};
use ctwasm_core::tuple::{Family, L4Tuple, Tuple, ipproto};
use serde::Serialize;

pub mod expect;
pub mod xml;

/// Decodes the ctnetlink message an event frame carries.
pub fn decode_frame(frame: &EventFrame<'_>) -> anyhow::Result<CtMessage> {
    let (msg, used) = CtMessage::parse(frame.netlink)
        .map_err(|e| anyhow!("event message at {} ns does not decode: {e}", frame.ts_ns))?;
    if used < frame.netlink.len() {
        return Err(anyhow!(
            "event message at {} ns: {} bytes after the message",
            frame.ts_ns,
            frame.netlink.len() - used
        ));
    }
    Ok(msg)
}

/// The `conntrack -E -o ...` choices that change the text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackOptions {
    /// `-o extended`: the layer-3 name and number before the protocol.
    pub extended: bool,
    /// `-o id`: `id=` (the conntrack id) at the end.
    pub id: bool,
    /// `-o timestamp`: a `[seconds.micros]` prefix and a tab (the event time here).
    pub timestamp: bool,
    /// `-o ktimestamp`: the entry's `[start=...]` / `[stop=...]` times.
    pub ktimestamp: bool,
    /// `-o xml`: libnetfilter_conntrack's XML instead of the text ([`xml`]).
    pub xml: bool,
}

impl ConntrackOptions {
    /// Parses a `-o` list such as `extended,id,timestamp,ktimestamp`.
    pub fn parse(list: &str) -> anyhow::Result<ConntrackOptions> {
        let mut o = ConntrackOptions::default();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "extended" => o.extended = true,
                "id" => o.id = true,
                "timestamp" => o.timestamp = true,
                "ktimestamp" => o.ktimestamp = true,
                "xml" => o.xml = true,
                _ => {
                    return Err(anyhow!(
                        "unknown output option `{word}` (expected xml, extended, id, timestamp, \
                         ktimestamp)"
                    ));
                }
            }
        }
        Ok(o)
    }
}

/// How the commands print an event or an entry: as conntrack-tools does, or as JSON lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `conntrack -E` / `conntrack -L` text, with its `-o` options.
    Conntrack(ConntrackOptions),
    /// One JSON object per message.
    Json,
}

impl Format {
    /// Whether this is `-o xml`, whose lines are the flows of a document the command opens
    /// with [`xml::PROLOGUE`] and closes with [`xml::EPILOGUE`].
    pub fn is_xml(&self) -> bool {
        matches!(self, Format::Conntrack(o) if o.xml)
    }

    /// The line for `msg` (no trailing newline).
    pub fn line(&self, frame: &EventFrame<'_>, msg: &CtMessage) -> String {
        self.line_with_progname(frame, msg, None)
    }

    /// The line for a message a userspace program caused, naming the program as `conntrack`
    /// does (`[USERSPACE] portid=N progname=NAME`; the JSON line has no such key).
    pub fn line_with_progname(
        &self,
        frame: &EventFrame<'_>,
        msg: &CtMessage,
        progname: Option<&str>,
    ) -> String {
        match *self {
            Format::Conntrack(options) => {
                let mut line = if options.xml {
                    // conntrack tags a userspace-caused event after its XML flow too.
                    let mut flow = xml::format_xml(frame, msg, options);
                    if msg.header.port_id != 0 {
                        let _ = write!(flow, " [USERSPACE] portid={}", msg.header.port_id);
                    }
                    flow
                } else {
                    format_conntrack_with(frame, msg, options)
                };
                if let Some(name) = progname.filter(|_| msg.header.port_id != 0) {
                    line.push_str(" progname=");
                    line.push_str(name);
                }
                line
            }
            Format::Json => format_json(frame, msg),
        }
    }
}

/// The line `conntrack -E` prints for `msg`, with default options (no trailing newline).
pub fn format_conntrack(frame: &EventFrame<'_>, msg: &CtMessage) -> String {
    format_conntrack_with(frame, msg, ConntrackOptions::default())
}

/// The line `conntrack -E -o ...` prints for `msg` (no trailing newline).
pub fn format_conntrack_with(
    frame: &EventFrame<'_>,
    msg: &CtMessage,
    options: ConntrackOptions,
) -> String {
    let mut out = String::with_capacity(200);
    // `write!` into a String cannot fail; the results are ignored throughout.
    if options.timestamp {
        let _ = write!(
            out,
            "[{:08}.{:06}]\t",
            frame.ts_ns / 1_000_000_000,
            frame.ts_ns % 1_000_000_000 / 1000
        );
    }
    let kind = message_kind(frame, msg);
    if let Some(kind) = kind {
        let _ = write!(out, "{:>9} ", format!("[{}]", kind.name()));
    }
    if options.extended {
        let l3 = Family::from_af(msg.family).map_or("unknown", Family::name);
        let _ = write!(out, "{l3:<8} {} ", msg.family);
    }
    let orig = tuple_nest(msg, Which::Orig);
    let reply = tuple_nest(msg, Which::Reply);
    let proto = orig.map_or(0, |t| t.proto);
    let _ = write!(out, "{:<8} {proto} ", protocol_name(proto));
    if let Some(timeout) = msg.timeout() {
        let _ = write!(out, "{timeout} ");
    }
    if let Some(state) = raw_state(msg) {
        let _ = write!(out, "{} ", state.name());
    }
    let status = msg.status();
    let direction = |out: &mut String,
                     tuple: Option<TupleFields>,
                     counters: Option<(u64, u64)>,
                     zone_tag: &str| {
        let t = tuple.unwrap_or_default();
        if let Some(family) = Family::from_af(msg.family) {
            let _ = write!(
                out,
                "src={} dst={} ",
                ip_text(family, &t.src),
                ip_text(family, &t.dst)
            );
        }
        l4_text(out, &t);
        if let Some(zone) = t.zone {
            let _ = write!(out, "zone-{zone_tag}={zone} ");
        }
        if let Some((packets, bytes)) = counters {
            let _ = write!(out, "packets={packets} bytes={bytes} ");
        }
    };
    direction(&mut out, orig, counters(msg, Which::Orig), "orig");
    if let Some(s) = status
        && !s.contains(Status::SEEN_REPLY)
    {
        out.push_str("[UNREPLIED] ");
    }
    direction(&mut out, reply, counters(msg, Which::Reply), "reply");
    if let Some(s) = status {
        if s.contains(Status::HW_OFFLOAD) {
            out.push_str("[HW_OFFLOAD] ");
        } else if s.contains(Status::OFFLOAD) {
            out.push_str("[OFFLOAD] ");
        } else if s.contains(Status::ASSURED) {
            out.push_str("[ASSURED] ");
        }
    }
    if let Some(mark) = msg.mark() {
        let _ = write!(out, "mark={mark} ");
    }
    if let Some(secmark) = other_u32(msg, CTA_SECMARK) {
        let _ = write!(out, "secmark={secmark} ");
    }
    if let Some(zone) = top_level_zone(msg) {
        let _ = write!(out, "zone={zone} ");
    }
    if let Some((start, stop)) = msg.timestamp() {
        if let Some(start) = start {
            // Whole seconds subtracted, as `time_t`s; a running entry counts to "now".
            let stop_secs = match stop {
                Some(s) if s != 0 => s / 1_000_000_000,
                _ => frame.ts_ns / 1_000_000_000,
            };
            let delta = (stop_secs as i64).wrapping_sub((start / 1_000_000_000) as i64) as u64;
            let _ = write!(out, "delta-time={delta} ");
        }
        if options.ktimestamp {
            if let Some(start) = start {
                let _ = write!(out, "[start={}] ", ctime_utc(start / 1_000_000_000));
            }
            if let Some(stop) = stop {
                let _ = write!(out, "[stop={}] ", ctime_utc(stop / 1_000_000_000));
            }
        }
    }
    if let Some(refs) = msg.use_count() {
        let _ = write!(out, "use={refs} ");
    }
    if options.id
        && let Some(id) = msg.id()
    {
        let _ = write!(out, "id={id} ");
    }
    if out.ends_with(' ') {
        out.pop();
    }
    // conntrack names the sender of a message a userspace program caused (the kernel's own
    // events have port id 0).
    if msg.header.port_id != 0 {
        let _ = write!(out, " [USERSPACE] portid={}", msg.header.port_id);
    }
    out
}

/// The JSON line for `msg` ("The JSON event line" in `core-guest/docs/semantics.md`), keys
/// in a fixed order, no trailing newline.
pub fn format_json(frame: &EventFrame<'_>, msg: &CtMessage) -> String {
    let family = msg.family();
    let orig = msg.orig();
    let proto = orig
        .map(|t| t.proto)
        .or_else(|| tuple_nest(msg, Which::Orig).map(|t| t.proto));
    let counters_orig = msg.counters_orig().map(|c| JsonCounter {
        packets: c.packets,
        bytes: c.bytes,
    });
    let counters_reply = msg.counters_reply().map(|c| JsonCounter {
        packets: c.packets,
        bytes: c.bytes,
    });
    let line = JsonEvent {
        ts_ns: frame.ts_ns,
        kind: message_kind(frame, msg).map(MessageKind::name),
        // What the message proves, not the engine's own mask: a replayed event and the same
        // event read from the kernel print the same line.
        events: msg.proven_events().names().collect(),
        id: msg.id(),
        zone: msg.zone(),
        l3: match family {
            Some(f) => NameOrNumber::Name(f.name()),
            None => NameOrNumber::Number(msg.family),
        },
        proto: proto.map(|p| match ipproto::name(p) {
            Some(name) => NameOrNumber::Name(name),
            None => NameOrNumber::Number(p),
        }),
        orig: orig.map(|t| JsonTuple::from_tuple(&t)),
        reply: msg.reply().map(|t| JsonTuple::from_tuple(&t)),
        status: msg
            .status()
            .map(|s| s.names().collect())
            .unwrap_or_default(),
        tcp_state: msg.tcp_state().map(|s| s.name()),
        sctp_state: msg.sctp_state().map(|s| s.name()),
        timeout: msg.timeout(),
        mark: msg.mark().unwrap_or(0),
        counters: (counters_orig.is_some() || counters_reply.is_some()).then_some(JsonCounters {
            orig: counters_orig,
            reply: counters_reply,
        }),
        timestamp: msg
            .timestamp()
            .map(|(start, stop)| JsonTimestamp { start, stop }),
    };
    serde_json::to_string(&line).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

#[derive(Serialize)]
struct JsonEvent {
    ts_ns: u64,
    #[serde(rename = "type")]
    kind: Option<&'static str>,
    events: Vec<&'static str>,
    id: Option<u32>,
    zone: u16,
    l3: NameOrNumber,
    proto: Option<NameOrNumber>,
    orig: Option<JsonTuple>,
    reply: Option<JsonTuple>,
    status: Vec<&'static str>,
    tcp_state: Option<&'static str>,
    /// Only on SCTP events, so that every other line stays as it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    sctp_state: Option<&'static str>,
    timeout: Option<u32>,
    mark: u32,
    counters: Option<JsonCounters>,
    timestamp: Option<JsonTimestamp>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum NameOrNumber {
    Name(&'static str),
    Number(u8),
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonTuple {
    Ports {
        src: String,
        dst: String,
        sport: u16,
        dport: u16,
    },
    Icmp {
        src: String,
        dst: String,
        #[serde(rename = "type")]
        kind: u8,
        code: u8,
        id: u16,
    },
    Addresses {
        src: String,
        dst: String,
    },
}

impl JsonTuple {
    fn from_tuple(t: &Tuple) -> JsonTuple {
        let src = ip_text(t.family, t.src.bytes(t.family));
        let dst = ip_text(t.family, t.dst.bytes(t.family));
        match t.l4 {
            L4Tuple::Ports {
                src: sport,
                dst: dport,
            } => JsonTuple::Ports {
                src,
                dst,
                sport,
                dport,
            },
            L4Tuple::Icmp { id, kind, code } => JsonTuple::Icmp {
                src,
                dst,
                kind,
                code,
                id,
            },
            L4Tuple::None => JsonTuple::Addresses { src, dst },
        }
    }
}

#[derive(Serialize)]
struct JsonCounters {
    orig: Option<JsonCounter>,
    reply: Option<JsonCounter>,
}

#[derive(Serialize)]
struct JsonCounter {
    packets: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct JsonTimestamp {
    start: Option<u64>,
    stop: Option<u64>,
}

/// `udp 10.0.0.1:1024 -> 192.0.2.1:9999`, as a person reads a flow (and as the comparison names
/// one).
pub fn tuple_text(t: &Tuple) -> String {
    let proto = match protocol_name(t.proto) {
        "unknown" => t.proto.to_string(),
        name => name.to_string(),
    };
    let (src, dst) = (t.src.to_ip(t.family), t.dst.to_ip(t.family));
    match t.l4 {
        L4Tuple::Ports { src: sp, dst: dp } => {
            let ep = |ip: std::net::IpAddr, port: u16| match ip {
                std::net::IpAddr::V6(_) => format!("[{ip}]:{port}"),
                std::net::IpAddr::V4(_) => format!("{ip}:{port}"),
            };
            format!("{proto} {} -> {}", ep(src, sp), ep(dst, dp))
        }
        L4Tuple::Icmp { id, kind, code } => {
            format!("{proto} {src} -> {dst} type={kind} code={code} id={id}")
        }
        L4Tuple::None => format!("{proto} {src} -> {dst}"),
    }
}

/// The layer-4 part of a tuple as libnetfilter_conntrack prints it, by protocol.
fn l4_text(out: &mut String, t: &TupleFields) {
    match t.proto {
        ipproto::TCP | ipproto::UDP | ipproto::UDPLITE | ipproto::SCTP | ipproto::DCCP => {
            let _ = write!(out, "sport={} dport={} ", t.sport, t.dport);
        }
        ipproto::GRE => {
            let _ = write!(out, "srckey=0x{:x} dstkey=0x{:x} ", t.sport, t.dport);
        }
        ipproto::ICMP | ipproto::ICMPV6 => {
            let _ = write!(
                out,
                "type={} code={} id={} ",
                t.icmp_type, t.icmp_code, t.icmp_id
            );
        }
        _ => {}
    }
}

/// The message's type from its header, else from the frame's event bits.
fn message_kind(frame: &EventFrame<'_>, msg: &CtMessage) -> Option<MessageKind> {
    msg.kind().or_else(|| frame.events.message_kind())
}

/// libnetfilter_conntrack's protocol names; others print as `unknown`.
fn protocol_name(proto: u8) -> &'static str {
    match proto {
        ipproto::UDPLITE => "udplite",
        ipproto::SCTP => "sctp",
        ipproto::DCCP => "dccp",
        ipproto::GRE => "gre",
        p => ipproto::name(p).unwrap_or("unknown"),
    }
}

/// A protocol state byte as a message carries it, even when out of range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RawState {
    Tcp(u8),
    Sctp(u8),
}

impl RawState {
    /// libnetfilter_conntrack's state names; out-of-range values print as `NONE`. (Its SCTP
    /// table still names state 9, which the kernel no longer reaches.)
    pub(crate) fn name(self) -> &'static str {
        use ctwasm_core::event::{SctpState, TcpState};
        match self {
            RawState::Tcp(s) => TcpState::from_u8(s).map_or("NONE", |s| s.name()),
            RawState::Sctp(9) => "HEARTBEAT_ACKED",
            RawState::Sctp(s) => SctpState::from_u8(s).map_or("NONE", |s| s.name()),
        }
    }

    /// The name in `-o xml`: there libnetfilter_conntrack 1.4.7 reads every state through its
    /// TCP table, so an SCTP entry in COOKIE_WAIT (2) prints `SYN_RECV`. The tool's output is
    /// what scripts parse, so it is reproduced as printed.
    pub(crate) fn xml_name(self) -> &'static str {
        match self {
            RawState::Tcp(s) | RawState::Sctp(s) => RawState::Tcp(s).name(),
        }
    }
}

#[derive(Clone, Copy)]
enum Which {
    Orig,
    Reply,
}

/// One tuple nest as the text format reads it: fields the message lacks read as zero, as in
/// libnetfilter_conntrack's zeroed object.
#[derive(Clone, Copy, Default)]
struct TupleFields {
    src: [u8; 16],
    dst: [u8; 16],
    proto: u8,
    sport: u16,
    dport: u16,
    icmp_type: u8,
    icmp_code: u8,
    icmp_id: u16,
    zone: Option<u16>,
}

fn tuple_nest(msg: &CtMessage, which: Which) -> Option<TupleFields> {
    let attrs = msg.attrs.iter().find_map(|a| match (a, which) {
        (CtAttr::TupleOrig(t), Which::Orig) | (CtAttr::TupleReply(t), Which::Reply) => Some(t),
        _ => None,
    })?;
    Some(tuple_fields(attrs))
}

/// The fields of one tuple nest.
fn tuple_fields(attrs: &[TupleAttr]) -> TupleFields {
    let mut f = TupleFields::default();
    for a in attrs {
        match a {
            TupleAttr::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IpAttr::V4Src(a) => f.src[..4].copy_from_slice(a),
                        IpAttr::V4Dst(a) => f.dst[..4].copy_from_slice(a),
                        IpAttr::V6Src(a) => f.src = *a,
                        IpAttr::V6Dst(a) => f.dst = *a,
                        _ => {}
                    }
                }
            }
            TupleAttr::Proto(ps) => {
                for p in ps {
                    match *p {
                        ProtoAttr::Num(n) => f.proto = n,
                        ProtoAttr::SrcPort(v) => f.sport = v,
                        ProtoAttr::DstPort(v) => f.dport = v,
                        ProtoAttr::IcmpId(v) | ProtoAttr::Icmpv6Id(v) => f.icmp_id = v,
                        ProtoAttr::IcmpType(v) | ProtoAttr::Icmpv6Type(v) => f.icmp_type = v,
                        ProtoAttr::IcmpCode(v) | ProtoAttr::Icmpv6Code(v) => f.icmp_code = v,
                        _ => {}
                    }
                }
            }
            TupleAttr::Zone(z) => f.zone = Some(*z),
            _ => {}
        }
    }
    f
}

/// Packets and bytes of one direction, only when the message carries both (64- or 32-bit).
fn counters(msg: &CtMessage, which: Which) -> Option<(u64, u64)> {
    let attrs = msg.attrs.iter().find_map(|a| match (a, which) {
        (CtAttr::CountersOrig(c), Which::Orig) | (CtAttr::CountersReply(c), Which::Reply) => {
            Some(c)
        }
        _ => None,
    })?;
    let (mut packets, mut bytes) = (None, None);
    for a in attrs {
        match a {
            CounterAttr::Packets(v) => packets = Some(*v),
            CounterAttr::Bytes(v) => bytes = Some(*v),
            CounterAttr::Other(raw) => {
                let value = <[u8; 4]>::try_from(&raw.payload[..])
                    .ok()
                    .map(|b| u64::from(u32::from_be_bytes(b)));
                match raw.kind & NLA_TYPE_MASK {
                    CTA_COUNTERS32_PACKETS => packets = packets.or(value),
                    CTA_COUNTERS32_BYTES => bytes = bytes.or(value),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Some((packets?, bytes?))
}

/// The TCP or SCTP state byte as sent, even when it is out of range.
fn raw_state(msg: &CtMessage) -> Option<RawState> {
    msg.attrs.iter().find_map(|a| match a {
        CtAttr::ProtoInfo(p) => p.iter().find_map(|p| match p {
            ProtoInfoAttr::Tcp(t) => t.iter().find_map(|t| match t {
                TcpInfoAttr::State(s) => Some(RawState::Tcp(*s)),
                _ => None,
            }),
            ProtoInfoAttr::Sctp(t) => t.iter().find_map(|t| match t {
                SctpInfoAttr::State(s) => Some(RawState::Sctp(*s)),
                _ => None,
            }),
            _ => None,
        }),
        _ => None,
    })
}

/// The top-level `CTA_ZONE`, only when the message carries it (the kernel leaves zone 0 out).
fn top_level_zone(msg: &CtMessage) -> Option<u16> {
    msg.attrs.iter().find_map(|a| match a {
        CtAttr::Zone(z) => Some(*z),
        _ => None,
    })
}

/// A big-endian 32-bit attribute this codec keeps as `Other`.
fn other_u32(msg: &CtMessage, kind: u16) -> Option<u32> {
    msg.attrs.iter().find_map(|a| match a {
        CtAttr::Other(raw) if raw.kind & NLA_TYPE_MASK == kind => {
            <[u8; 4]>::try_from(&raw.payload[..])
                .ok()
                .map(u32::from_be_bytes)
        }
        _ => None,
    })
}

/// An address as `inet_ntoa` / glibc's `inet_ntop` write it. They differ from Rust's `Display`
/// only for IPv4-compatible IPv6 addresses (`::1.2.3.4`), which glibc still prints dotted.
fn ip_text(family: Family, bytes: &[u8]) -> String {
    match family {
        Family::Ipv4 => {
            let mut a = [0u8; 4];
            let n = bytes.len().min(4);
            a[..n].copy_from_slice(&bytes[..n]);
            Ipv4Addr::from(a).to_string()
        }
        Family::Ipv6 => {
            let mut a = [0u8; 16];
            let n = bytes.len().min(16);
            a[..n].copy_from_slice(&bytes[..n]);
            if a[..12].iter().all(|b| *b == 0) && (a[12] != 0 || a[13] != 0) {
                format!("::{}.{}.{}.{}", a[12], a[13], a[14], a[15])
            } else {
                Ipv6Addr::from(a).to_string()
            }
        }
    }
}

/// `ctime(3)` without the newline, in UTC: `Fri Nov 27 07:52:07 2026`.
fn ctime_utc(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day, weekday) = civil_date(secs);
    let rem = secs % 86_400;
    format!(
        "{} {}{:3} {:02}:{:02}:{:02} {}",
        DAYS[weekday as usize],
        MONTHS[(month - 1) as usize],
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        year
    )
}

/// `(year, month 1-12, day 1-31, weekday 0-6 from Sunday)` of `secs` since the epoch, in UTC.
pub fn civil_date(secs: u64) -> (i64, i64, i64, u64) {
    let days = secs / 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // 1970-01-01 was a Thursday.
    (year, month, day, (days + 4) % 7)
}

#[cfg(test)]
mod tests {
    //! Expected lines were printed by conntrack v1.4.7 (conntrack-tools, Debian build, with
    //! libnetfilter_conntrack 1.0.9) on Linux 6.18, in a fresh network namespace with
    //! `nf_conntrack_acct=1`, `nf_conntrack_timestamp=1` and 2-3 s UDP/ICMP/TIME_WAIT timeouts:
    //! `conntrack -E`, `-E -o id`, `-E -o extended` and `-E -o extended,id,timestamp,ktimestamp`,
    //! while a Python client/server ran TCP (40001 -> 5001) and UDP (40002 -> 5002) over 127.0.0.1
    //! and ::1 and `ping -c 1` pinged both; a second run set `ct zone 3` and `ct mark 7` with nft
    //! for UDP 40003 -> 5002. The messages below carry the attributes the kernel sends for those
    //! events.

    use super::*;
    use ctwasm_core::event::{EventBits, TcpState};
    use ctwasm_core::netlink::{NlHeader, TimestampAttr, tuple_attrs};
    use ctwasm_core::tuple::Addr;

    const V4: [u8; 4] = [127, 0, 0, 1];
    const V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const CONFIRMED: u32 = Status::CONFIRMED.0;
    const SEEN_REPLY: u32 = Status::SEEN_REPLY.0;
    const ASSURED: u32 = Status::ASSURED.0;
    const DYING: u32 = Status::DYING.0;
    /// 2026-11-27 07:52:07 UTC.
    const T0: u64 = 1_795_765_927;

    fn tuple(family: Family, proto: u8, l4: L4Tuple) -> Tuple {
        let (src, dst) = match family {
            Family::Ipv4 => (Addr::v4(V4), Addr::v4(V4)),
            Family::Ipv6 => (Addr::v6(V6), Addr::v6(V6)),
        };
        Tuple {
            family,
            src,
            dst,
            proto,
            l4,
        }
    }
    fn ports(family: Family, proto: u8, sport: u16, dport: u16) -> Tuple {
        tuple(
            family,
            proto,
            L4Tuple::Ports {
                src: sport,
                dst: dport,
            },
        )
    }
    fn echo(family: Family, id: u16) -> Tuple {
        let (proto, kind) = if family == Family::Ipv4 {
            (ipproto::ICMP, 8)
        } else {
            (ipproto::ICMPV6, 128)
        };
        tuple(family, proto, L4Tuple::Icmp { id, kind, code: 0 })
    }

    /// Builds an event message as ctnetlink lays it out.
    struct Msg {
        kind: MessageKind,
        orig: Tuple,
        status: u32,
        timeout: Option<u32>,
        tcp_state: Option<TcpState>,
        counters: Option<[(u64, u64); 2]>,
        timestamp: Option<(u64, Option<u64>)>,
        mark: Option<u32>,
        zone: Option<u16>,
        id: u32,
    }
    impl Msg {
        fn new(kind: MessageKind, orig: Tuple, status: u32) -> Msg {
            Msg {
                kind,
                orig,
                status,
                timeout: None,
                tcp_state: None,
                counters: None,
                timestamp: None,
                mark: None,
                zone: None,
                id: 3_800_456_667,
            }
        }
        fn build(&self) -> CtMessage {
            let (msg_type, flags) = match self.kind {
                MessageKind::New => (0x100, 0x400 | 0x200),
                MessageKind::Update => (0x100, 0),
                MessageKind::Destroy => (0x102, 0),
            };
            let mut attrs = vec![
                CtAttr::TupleOrig(tuple_attrs(&self.orig)),
                CtAttr::TupleReply(tuple_attrs(&self.orig.invert().unwrap())),
            ];
            if let Some(z) = self.zone {
                attrs.push(CtAttr::Zone(z));
            }
            attrs.push(CtAttr::Status(self.status));
            if let Some(t) = self.timeout {
                attrs.push(CtAttr::Timeout(t));
            }
            if let Some([o, r]) = self.counters {
                attrs.push(CtAttr::CountersOrig(vec![
                    CounterAttr::Packets(o.0),
                    CounterAttr::Bytes(o.1),
                ]));
                attrs.push(CtAttr::CountersReply(vec![
                    CounterAttr::Packets(r.0),
                    CounterAttr::Bytes(r.1),
                ]));
            }
            if let Some((start, stop)) = self.timestamp {
                let mut ts = vec![TimestampAttr::Start(start)];
                ts.extend(stop.map(TimestampAttr::Stop));
                attrs.push(CtAttr::Timestamp(ts));
            }
            if let Some(s) = self.tcp_state {
                attrs.push(CtAttr::ProtoInfo(vec![ProtoInfoAttr::Tcp(vec![
                    TcpInfoAttr::State(s as u8),
                ])]));
            }
            if let Some(m) = self.mark {
                attrs.push(CtAttr::Mark(m));
            }
            attrs.push(CtAttr::Id(self.id));
            CtMessage {
                header: NlHeader {
                    msg_type,
                    flags,
                    seq: 0,
                    port_id: 0,
                },
                family: self.orig.family as u8,
                version: 0,
                res_id: 0,
                attrs,
            }
        }
    }

    fn frame(kind: MessageKind, ts_ns: u64) -> EventFrame<'static> {
        let events = match kind {
            MessageKind::New => EventBits::NEW,
            MessageKind::Update => EventBits::REPLY,
            MessageKind::Destroy => EventBits::DESTROY,
        };
        EventFrame {
            events,
            group: kind.group(),
            flags: 0,
            ts_ns,
            netlink: &[],
        }
    }

    fn text(m: &Msg) -> String {
        format_conntrack(&frame(m.kind, T0 * 1_000_000_000), &m.build())
    }

    #[test]
    fn tcp_new_update_destroy_as_conntrack_prints_them() {
        let orig = ports(Family::Ipv4, ipproto::TCP, 40001, 5001);
        let mut new = Msg::new(MessageKind::New, orig, CONFIRMED);
        new.timeout = Some(120);
        new.tcp_state = Some(TcpState::SynSent);
        assert_eq!(
            text(&new),
            "    [NEW] tcp      6 120 SYN_SENT src=127.0.0.1 dst=127.0.0.1 sport=40001 dport=5001 [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=5001 dport=40001"
        );
        let mut est = Msg::new(MessageKind::Update, orig, CONFIRMED | SEEN_REPLY | ASSURED);
        est.timeout = Some(432_000);
        est.tcp_state = Some(TcpState::Established);
        assert_eq!(
            text(&est),
            " [UPDATE] tcp      6 432000 ESTABLISHED src=127.0.0.1 dst=127.0.0.1 sport=40001 dport=5001 src=127.0.0.1 dst=127.0.0.1 sport=5001 dport=40001 [ASSURED]"
        );
        let mut syn_recv = Msg::new(MessageKind::Update, orig, CONFIRMED | SEEN_REPLY);
        syn_recv.timeout = Some(60);
        syn_recv.tcp_state = Some(TcpState::SynRecv);
        assert_eq!(
            format_conntrack_with(
                &frame(MessageKind::Update, 0),
                &syn_recv.build(),
                ConntrackOptions {
                    id: true,
                    ..Default::default()
                }
            ),
            " [UPDATE] tcp      6 60 SYN_RECV src=127.0.0.1 dst=127.0.0.1 sport=40001 dport=5001 src=127.0.0.1 dst=127.0.0.1 sport=5001 dport=40001 id=3800456667"
        );
        let mut destroy = Msg::new(
            MessageKind::Destroy,
            ports(Family::Ipv6, ipproto::TCP, 40001, 5001),
            CONFIRMED | SEEN_REPLY | ASSURED | DYING,
        );
        destroy.tcp_state = Some(TcpState::TimeWait);
        destroy.counters = Some([(6, 444), (5, 372)]);
        destroy.timestamp = Some((
            (T0) * 1_000_000_000 + 581_000_000,
            Some((T0 + 2) * 1_000_000_000 + 900_000_000),
        ));
        assert_eq!(
            text(&destroy),
            "[DESTROY] tcp      6 TIME_WAIT src=::1 dst=::1 sport=40001 dport=5001 packets=6 bytes=444 src=::1 dst=::1 sport=5001 dport=40001 packets=5 bytes=372 [ASSURED] delta-time=2"
        );
    }

    #[test]
    fn udp_v4_and_v6_as_conntrack_prints_them() {
        let mut new = Msg::new(
            MessageKind::New,
            ports(Family::Ipv4, ipproto::UDP, 40002, 5002),
            CONFIRMED,
        );
        new.timeout = Some(2);
        assert_eq!(
            text(&new),
            "    [NEW] udp      17 2 src=127.0.0.1 dst=127.0.0.1 sport=40002 dport=5002 [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=5002 dport=40002"
        );
        let mut update = Msg::new(
            MessageKind::Update,
            ports(Family::Ipv6, ipproto::UDP, 40002, 5002),
            CONFIRMED | SEEN_REPLY,
        );
        update.timeout = Some(2);
        assert_eq!(
            text(&update),
            " [UPDATE] udp      17 2 src=::1 dst=::1 sport=40002 dport=5002 src=::1 dst=::1 sport=5002 dport=40002"
        );
        let mut destroy = Msg::new(
            MessageKind::Destroy,
            ports(Family::Ipv4, ipproto::UDP, 40002, 5002),
            CONFIRMED | SEEN_REPLY | DYING,
        );
        destroy.counters = Some([(1, 33), (1, 33)]);
        destroy.timestamp = Some((T0 * 1_000_000_000, Some((T0 + 2) * 1_000_000_000)));
        assert_eq!(
            text(&destroy),
            "[DESTROY] udp      17 src=127.0.0.1 dst=127.0.0.1 sport=40002 dport=5002 packets=1 bytes=33 src=127.0.0.1 dst=127.0.0.1 sport=5002 dport=40002 packets=1 bytes=33 delta-time=2"
        );
    }

    #[test]
    fn icmp_and_icmpv6_as_conntrack_prints_them() {
        let mut new = Msg::new(MessageKind::New, echo(Family::Ipv4, 8004), CONFIRMED);
        new.timeout = Some(2);
        assert_eq!(
            text(&new),
            "    [NEW] icmp     1 2 src=127.0.0.1 dst=127.0.0.1 type=8 code=0 id=8004 [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 type=0 code=0 id=8004"
        );
        let mut update6 = Msg::new(
            MessageKind::Update,
            echo(Family::Ipv6, 8005),
            CONFIRMED | SEEN_REPLY,
        );
        update6.timeout = Some(2);
        assert_eq!(
            text(&update6),
            " [UPDATE] icmpv6   58 2 src=::1 dst=::1 type=128 code=0 id=8005 src=::1 dst=::1 type=129 code=0 id=8005"
        );
        let mut destroy6 = Msg::new(
            MessageKind::Destroy,
            echo(Family::Ipv6, 8005),
            CONFIRMED | SEEN_REPLY | DYING,
        );
        destroy6.counters = Some([(1, 104), (1, 104)]);
        destroy6.timestamp = Some((
            T0 * 1_000_000_000 + 912_000_000,
            Some((T0 + 2) * 1_000_000_000),
        ));
        destroy6.id = 1_670_759_184;
        assert_eq!(
            text(&destroy6),
            "[DESTROY] icmpv6   58 src=::1 dst=::1 type=128 code=0 id=8005 packets=1 bytes=104 src=::1 dst=::1 type=129 code=0 id=8005 packets=1 bytes=104 delta-time=2"
        );
        let all = ConntrackOptions::parse("extended,id,timestamp,ktimestamp").unwrap();
        let at = 1_795_765_931_926_426_512;
        assert_eq!(
            format_conntrack_with(&frame(MessageKind::Destroy, at), &destroy6.build(), all),
            "[1795765931.926426]\t[DESTROY] ipv6     10 icmpv6   58 src=::1 dst=::1 type=128 code=0 id=8005 packets=1 bytes=104 src=::1 dst=::1 type=129 code=0 id=8005 packets=1 bytes=104 delta-time=2 [start=Fri Nov 27 07:52:07 2026] [stop=Fri Nov 27 07:52:09 2026] id=1670759184"
        );
    }

    #[test]
    fn mark_and_zone_follow_the_status_flags() {
        let orig = ports(Family::Ipv4, ipproto::UDP, 40003, 5002);
        let mut new = Msg::new(MessageKind::New, orig, CONFIRMED);
        new.timeout = Some(2);
        new.mark = Some(7);
        new.zone = Some(3);
        new.id = 718_438_209;
        assert_eq!(
            text(&new),
            "    [NEW] udp      17 2 src=127.0.0.1 dst=127.0.0.1 sport=40003 dport=5002 [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=5002 dport=40003 mark=7 zone=3"
        );
        assert_eq!(
            format_conntrack_with(
                &frame(MessageKind::New, 0),
                &new.build(),
                ConntrackOptions::parse("extended,id").unwrap()
            ),
            "    [NEW] ipv4     2 udp      17 2 src=127.0.0.1 dst=127.0.0.1 sport=40003 dport=5002 [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=5002 dport=40003 mark=7 zone=3 id=718438209"
        );
        let mut destroy = Msg::new(MessageKind::Destroy, orig, CONFIRMED | DYING);
        destroy.counters = Some([(1, 29), (0, 0)]);
        destroy.mark = Some(7);
        destroy.zone = Some(3);
        destroy.timestamp = Some((T0 * 1_000_000_000, Some((T0 + 2) * 1_000_000_000 + 5)));
        assert_eq!(
            text(&destroy),
            "[DESTROY] udp      17 src=127.0.0.1 dst=127.0.0.1 sport=40003 dport=5002 packets=1 bytes=29 [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=5002 dport=40003 packets=0 bytes=0 mark=7 zone=3 delta-time=2"
        );
    }

    #[test]
    fn odd_messages_print_without_panicking() {
        // No tuples, an unknown family and protocol, an out-of-range TCP state.
        let msg = CtMessage {
            header: NlHeader {
                msg_type: 0x100,
                flags: 0,
                seq: 0,
                port_id: 4242,
            },
            family: 7,
            version: 0,
            res_id: 0,
            attrs: vec![CtAttr::ProtoInfo(vec![ProtoInfoAttr::Tcp(vec![
                TcpInfoAttr::State(99),
            ])])],
        };
        assert_eq!(
            format_conntrack(&frame(MessageKind::Update, 0), &msg),
            " [UPDATE] unknown  0 NONE [USERSPACE] portid=4242"
        );
        let json = format_json(&frame(MessageKind::Update, 0), &msg);
        assert!(
            json.starts_with("{\"ts_ns\":0,\"type\":\"UPDATE\""),
            "{json}"
        );
        // A running entry's delta-time counts to the event time.
        let mut running = Msg::new(
            MessageKind::Update,
            ports(Family::Ipv4, ipproto::UDP, 1, 2),
            CONFIRMED,
        );
        running.timestamp = Some((T0 * 1_000_000_000, None));
        let line = format_conntrack(
            &frame(MessageKind::Update, (T0 + 90) * 1_000_000_000),
            &running.build(),
        );
        assert!(line.ends_with("delta-time=90"), "{line}");
    }

    #[test]
    fn addresses_print_as_glibc_does() {
        assert_eq!(ip_text(Family::Ipv6, &V6), "::1");
        let mut compat = [0u8; 16];
        compat[12..].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(ip_text(Family::Ipv6, &compat), "::10.0.0.1");
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1];
        assert_eq!(ip_text(Family::Ipv6, &mapped), "::ffff:10.0.0.1");
        let doc: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1];
        assert_eq!(ip_text(Family::Ipv6, &doc), "2001:db8::1:0:0:1");
        assert_eq!(ip_text(Family::Ipv4, &[192, 0, 2, 1]), "192.0.2.1");
    }

    #[test]
    fn ctime_matches_the_c_library() {
        assert_eq!(ctime_utc(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(ctime_utc(951_782_400), "Tue Feb 29 00:00:00 2000");
        assert_eq!(ctime_utc(T0), "Fri Nov 27 07:52:07 2026");
    }

    /// `conntrack -E -o xml,ktimestamp` printed these for a TCP connection and a UDP datagram
    /// (nft: `udp dport 5002 ct mark set 7`, `ct zone set 3`), with accounting and timestamps
    /// on; the messages below carry the attributes the kernel sent.
    #[test]
    fn xml_flows_as_conntrack_prints_them() {
        let xml = |m: &Msg, ts_ns: u64| {
            let options = ConntrackOptions::parse("xml,ktimestamp").unwrap();
            Format::Conntrack(options).line(&frame(m.kind, ts_ns), &m.build())
        };
        let head = |proto: &str, num: u8, sport: u16, dport: u16, counters: [&str; 2]| {
            let dir = |name: &str, s: u16, d: u16, c: &str| {
                format!(
                    "<meta direction=\"{name}\"><layer3 protonum=\"2\" protoname=\"ipv4\">\
                     <src>127.0.0.1</src><dst>127.0.0.1</dst></layer3><layer4 protonum=\"{num}\" \
                     protoname=\"{proto}\"><sport>{s}</sport><dport>{d}</dport></layer4>{c}</meta>"
                )
            };
            dir("original", sport, dport, counters[0]) + &dir("reply", dport, sport, counters[1])
        };

        let mut established = Msg::new(
            MessageKind::Update,
            ports(Family::Ipv4, ipproto::TCP, 40001, 5001),
            CONFIRMED | SEEN_REPLY | ASSURED,
        );
        established.tcp_state = Some(TcpState::Established);
        established.timeout = Some(432_000);
        established.id = 2_799_972_769;
        assert_eq!(
            xml(&established, T0 * 1_000_000_000),
            format!(
                "<flow type=\"update\">{}<meta direction=\"independent\"><state>ESTABLISHED\
                 </state><timeout>432000</timeout><id>2799972769</id><assured/></meta></flow>",
                head("tcp", 6, 40001, 5001, ["", ""])
            )
        );

        let mut new = Msg::new(
            MessageKind::New,
            ports(Family::Ipv4, ipproto::UDP, 40003, 5002),
            CONFIRMED,
        );
        new.timeout = Some(2);
        new.mark = Some(7);
        new.zone = Some(3);
        new.id = 3_830_234_838;
        assert_eq!(
            xml(&new, T0 * 1_000_000_000),
            format!(
                "<flow type=\"new\">{}<meta direction=\"independent\"><timeout>2</timeout>\
                 <mark>7</mark><zone>3</zone><id>3830234838</id><unreplied/></meta></flow>",
                head("udp", 17, 40003, 5002, ["", ""])
            )
        );

        // The lifetime is the nanoseconds between start and stop, truncated: 1.999 s is 1
        // (the text format subtracts whole seconds and says 2).
        let mut destroy = new;
        destroy.kind = MessageKind::Destroy;
        destroy.timeout = None;
        destroy.counters = Some([(1, 29), (0, 0)]);
        destroy.timestamp = Some((1_796_071_476_344_759_220, Some(1_796_071_478_343_996_144)));
        assert_eq!(
            xml(&destroy, 1_796_071_478_343_996_144),
            format!(
                "<flow type=\"destroy\">{}<meta direction=\"independent\"><mark>7</mark>\
                 <zone>3</zone><id>3830234838</id><unreplied/><timestamp><start>\
                 1796071476344759220</start><stop>1796071478343996144</stop></timestamp>\
                 <deltatime>1</deltatime></meta></flow>",
                head(
                    "udp",
                    17,
                    40003,
                    5002,
                    [
                        "<counters><packets>1</packets><bytes>29</bytes></counters>",
                        "<counters><packets>0</packets><bytes>0</bytes></counters>"
                    ]
                )
            )
        );
        assert!(
            text(&destroy).ends_with("delta-time=2"),
            "{}",
            text(&destroy)
        );
    }

    #[test]
    fn xml_when_is_the_event_time_in_utc() {
        let m = Msg::new(
            MessageKind::New,
            ports(Family::Ipv4, ipproto::UDP, 1, 2),
            CONFIRMED,
        );
        let options = ConntrackOptions::parse("xml,timestamp").unwrap();
        let line = Format::Conntrack(options).line(&frame(m.kind, T0 * 1_000_000_000), &m.build());
        // 2026-11-27 07:52:07 UTC was a Friday (wday 6 counting Sunday as 1).
        assert!(
            line.ends_with(
                "</meta><when><hour>7</hour><min>52</min><sec>07</sec><wday>6</wday>\
                 <day>27</day><month>11</month><year>2026</year></when></flow>"
            ),
            "{line}"
        );
    }

    #[test]
    fn json_lines_have_the_design_keys_in_order() {
        let mut destroy = Msg::new(
            MessageKind::Destroy,
            ports(Family::Ipv4, ipproto::TCP, 40001, 5001),
            CONFIRMED | SEEN_REPLY | ASSURED | DYING,
        );
        destroy.tcp_state = Some(TcpState::TimeWait);
        destroy.counters = Some([(6, 324), (5, 272)]);
        destroy.timestamp = Some((1, Some(2)));
        // The engine's frame says DESTROY|PROTOINFO; the line says what the message proves,
        // as a line printed from the kernel's own message would.
        let mut f = frame(MessageKind::Destroy, 42);
        f.events = EventBits::DESTROY.union(EventBits::PROTOINFO);
        assert_eq!(
            format_json(&f, &destroy.build()),
            concat!(
                r#"{"ts_ns":42,"type":"DESTROY","events":["DESTROY"],"id":3800456667,"zone":0,"l3":"ipv4","proto":"tcp","#,
                r#""orig":{"src":"127.0.0.1","dst":"127.0.0.1","sport":40001,"dport":5001},"#,
                r#""reply":{"src":"127.0.0.1","dst":"127.0.0.1","sport":5001,"dport":40001},"#,
                r#""status":["SEEN_REPLY","ASSURED","CONFIRMED","DYING"],"tcp_state":"TIME_WAIT","timeout":null,"mark":0,"#,
                r#""counters":{"orig":{"packets":6,"bytes":324},"reply":{"packets":5,"bytes":272}},"#,
                r#""timestamp":{"start":1,"stop":2}}"#
            )
        );
        let mut ping = Msg::new(MessageKind::New, echo(Family::Ipv6, 8005), CONFIRMED);
        ping.timeout = Some(30);
        ping.zone = Some(3);
        ping.mark = Some(9);
        assert_eq!(
            format_json(&frame(MessageKind::New, 7), &ping.build()),
            concat!(
                r#"{"ts_ns":7,"type":"NEW","events":["NEW"],"id":3800456667,"zone":3,"l3":"ipv6","proto":"icmpv6","#,
                r#""orig":{"src":"::1","dst":"::1","type":128,"code":0,"id":8005},"#,
                r#""reply":{"src":"::1","dst":"::1","type":129,"code":0,"id":8005},"#,
                r#""status":["CONFIRMED"],"tcp_state":null,"timeout":30,"mark":9,"counters":null,"timestamp":null}"#
            )
        );
        let gre = Msg::new(
            MessageKind::Update,
            tuple(Family::Ipv4, 99, L4Tuple::None),
            CONFIRMED | SEEN_REPLY,
        );
        let json = format_json(&frame(MessageKind::Update, 7), &gre.build());
        assert!(
            json.contains(r#""proto":99,"orig":{"src":"127.0.0.1","dst":"127.0.0.1"},"#),
            "{json}"
        );
    }

    #[test]
    fn decode_frame_reads_what_the_codec_writes_and_reports_junk() {
        let msg = Msg::new(
            MessageKind::New,
            ports(Family::Ipv4, ipproto::UDP, 1, 2),
            CONFIRMED,
        )
        .build();
        let bytes = msg.to_vec();
        let f = EventFrame {
            netlink: &bytes,
            ..frame(MessageKind::New, 5)
        };
        assert_eq!(decode_frame(&f).unwrap(), msg);
        let junk = [1u8, 2, 3];
        let err = decode_frame(&EventFrame {
            netlink: &junk,
            ..frame(MessageKind::New, 5)
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("event message at 5 ns does not decode"),
            "{err}"
        );
        let mut long = bytes.clone();
        long.extend_from_slice(&[0; 8]);
        assert!(
            decode_frame(&EventFrame {
                netlink: &long,
                ..frame(MessageKind::New, 5)
            })
            .is_err()
        );
    }
}
