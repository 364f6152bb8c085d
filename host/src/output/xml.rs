//! `conntrack -o xml`: one `<flow>` element per entry or event, as libnetfilter_conntrack's XML
//! formatter writes it (no whitespace between elements, one flow per line).
//!
//! Like the text format, an element is written exactly when its attribute is in the message,
//! in the library's order: each direction's addresses, ports and counters, then the
//! `independent` block (TCP state, timeout, mark, secmark, zone, use, id, `<assured/>`,
//! `<unreplied/>`, the kernel timestamps with `-o ktimestamp`, the lifetime in seconds), then
//! `<when>` with `-o timestamp`. Where the tool reads the wall clock (`<when>`, the lifetime of
//! an entry not yet stopped) the frame's event time stands in, in UTC, so output stays
//! reproducible. `-o extended` and `-o id` change nothing in XML, as in the tool (the id is
//! always written when present).
//!
//! A document is [`PROLOGUE`], the flows, and [`EPILOGUE`]; which commands write which part
//! follows conntrack-tools (`-L` and `-E` write all three, `-G` no epilogue, `-D` flows only).

use std::fmt::Write as _;

use ctwasm_core::batch::EventFrame;
use ctwasm_core::event::{MessageKind, Status};
use ctwasm_core::netlink::CtMessage;
use ctwasm_core::netlink::consts::CTA_SECMARK;
use ctwasm_core::tuple::{Family, ipproto};

use super::{
    ConntrackOptions, TupleFields, Which, counters, ip_text, message_kind, other_u32,
    protocol_name, raw_state, top_level_zone, tuple_nest,
};

/// What comes before the first flow of a document.
pub const PROLOGUE: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<conntrack>";
/// What closes a document.
pub const EPILOGUE: &str = "</conntrack>";

/// The `<flow>` element for `msg` (no trailing newline).
pub fn format_xml(frame: &EventFrame<'_>, msg: &CtMessage, options: ConntrackOptions) -> String {
    let mut out = String::with_capacity(700);
    out.push_str(match message_kind(frame, msg) {
        Some(MessageKind::New) => "<flow type=\"new\">",
        Some(MessageKind::Update) => "<flow type=\"update\">",
        Some(MessageKind::Destroy) => "<flow type=\"destroy\">",
        None => "<flow>",
    });
    let family = Family::from_af(msg.family);
    for which in [Which::Orig, Which::Reply] {
        let tuple = tuple_nest(msg, which).unwrap_or_default();
        direction(&mut out, msg, family, which, tuple);
    }

    let state = raw_state(msg);
    let secmark = other_u32(msg, CTA_SECMARK);
    let zone = top_level_zone(msg);
    let status = msg.status();
    let timestamp = msg.timestamp().unwrap_or_default();
    let independent = state.is_some()
        || msg.timeout().is_some()
        || msg.mark().is_some()
        || secmark.is_some()
        || zone.is_some()
        || msg.use_count().is_some()
        || status.is_some()
        || msg.id().is_some()
        || timestamp.0.is_some()
        || timestamp.1.is_some();
    if independent {
        out.push_str("<meta direction=\"independent\">");
        if let Some(state) = state {
            let _ = write!(out, "<state>{}</state>", state.xml_name());
        }
        if let Some(timeout) = msg.timeout() {
            let _ = write!(out, "<timeout>{timeout}</timeout>");
        }
        if let Some(mark) = msg.mark() {
            let _ = write!(out, "<mark>{mark}</mark>");
        }
        if let Some(secmark) = secmark {
            let _ = write!(out, "<secmark>{secmark}</secmark>");
        }
        if let Some(zone) = zone {
            let _ = write!(out, "<zone>{zone}</zone>");
        }
        if let Some(refs) = msg.use_count() {
            let _ = write!(out, "<use>{refs}</use>");
        }
        if let Some(id) = msg.id() {
            let _ = write!(out, "<id>{id}</id>");
        }
        if let Some(s) = status {
            if s.contains(Status::ASSURED) {
                out.push_str("<assured/>");
            }
            if !s.contains(Status::SEEN_REPLY) {
                out.push_str("<unreplied/>");
            }
        }
        let (start, stop) = timestamp;
        if options.ktimestamp && (start.is_some() || stop.is_some()) {
            out.push_str("<timestamp>");
            if let Some(start) = start {
                let _ = write!(out, "<start>{start}</start>");
            }
            if let Some(stop) = stop {
                let _ = write!(out, "<stop>{stop}</stop>");
            }
            out.push_str("</timestamp>");
        }
        // The library subtracts nanoseconds here (the text format subtracts whole seconds).
        match (start, stop) {
            (Some(start), Some(stop)) => {
                let delta = (stop.wrapping_sub(start) as i64) / 1_000_000_000;
                let _ = write!(out, "<deltatime>{}</deltatime>", delta as u64);
            }
            (Some(start), None) => {
                let delta = (frame.ts_ns / 1_000_000_000) as i64 - (start / 1_000_000_000) as i64;
                let _ = write!(out, "<deltatime>{}</deltatime>", delta as u64);
            }
            _ => {}
        }
        out.push_str("</meta>");
    }
    if options.timestamp {
        out.push_str("<when>");
        when(&mut out, frame.ts_ns / 1_000_000_000);
        out.push_str("</when>");
    }
    out.push_str("</flow>");
    out
}

/// One `<meta direction="original|reply">` block.
fn direction(
    out: &mut String,
    msg: &CtMessage,
    family: Option<Family>,
    which: Which,
    t: TupleFields,
) {
    let name = match which {
        Which::Orig => "original",
        Which::Reply => "reply",
    };
    let l3 = family.map_or("unknown", Family::name);
    let _ = write!(
        out,
        "<meta direction=\"{name}\"><layer3 protonum=\"{}\" protoname=\"{l3}\">",
        msg.family
    );
    let (src, dst) = family.map_or_else(Default::default, |f| {
        (ip_text(f, &t.src), ip_text(f, &t.dst))
    });
    let _ = write!(out, "<src>{src}</src><dst>{dst}</dst></layer3>");
    let _ = write!(
        out,
        "<layer4 protonum=\"{}\" protoname=\"{}\">",
        t.proto,
        protocol_name(t.proto)
    );
    match t.proto {
        ipproto::TCP | ipproto::UDP | ipproto::UDPLITE | ipproto::SCTP | ipproto::DCCP => {
            let _ = write!(out, "<sport>{}</sport><dport>{}</dport>", t.sport, t.dport);
        }
        ipproto::GRE => {
            let _ = write!(
                out,
                "<srckey>0x{:x}</srckey><dstkey>0x{:x}</dstkey>",
                t.sport, t.dport
            );
        }
        _ => {}
    }
    out.push_str("</layer4>");
    if let Some(zone) = t.zone {
        let _ = write!(out, "<zone>{zone}</zone>");
    }
    if let Some((packets, bytes)) = counters(msg, which) {
        let _ = write!(
            out,
            "<counters><packets>{packets}</packets><bytes>{bytes}</bytes></counters>"
        );
    }
    out.push_str("</meta>");
}

/// The `<when>` children for `secs` since the epoch, in UTC.
fn when(out: &mut String, secs: u64) {
    let (year, month, day, weekday) = super::civil_date(secs);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "<hour>{}</hour><min>{:02}</min><sec>{:02}</sec><wday>{}</wday><day>{day}</day>\
         <month>{month}</month><year>{year}</year>",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        weekday + 1,
    );
}
