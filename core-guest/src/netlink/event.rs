//! Event messages, built in one place: what the kernel's `ctnetlink_conntrack_event` and
//! `ctnetlink_expect_event` put in a message, and in which order.
//!
//! The engine describes an event as a small value ([`ConntrackEvent`], [`ExpectEvent`]): the
//! facts of the entry at the moment of the event. The one encoder here turns that value into
//! attributes through an [`AttrSink`]. Production uses [`MessageWriter`], which writes bytes
//! straight into the engine's outbox (building a typed tree per event would cost a dozen small
//! allocations on the hot path); the tests use a sink that builds the typed model
//! ([`CtMessage`], [`ExpMessage`]), and check, for every event captured from Linux, that the byte
//! path gives the kernel's bytes and the typed path gives the kernel's parsed message.
//!
//! The attribute order and its conditions are the kernel's (Linux 6.18):
//! - every event: `CTA_TUPLE_ORIG`, `CTA_TUPLE_REPLY`, `CTA_ZONE` (only outside zone 0),
//!   `CTA_ID`, `CTA_STATUS`;
//! - DESTROY: `CTA_TIMEOUT` only while time is left (an entry that timed out has none), the
//!   counters when accounting is on, `CTA_TIMESTAMP` (start, and stop once set) when timestamps
//!   are on, and a `CTA_PROTOINFO` holding the TCP or SCTP state alone;
//! - NEW and UPDATE: `CTA_TIMEOUT` always, the full `CTA_PROTOINFO` when the PROTOINFO bit is
//!   set (TCP: state, window scales, flags; SCTP: state and both verification tags),
//!   `CTA_TUPLE_MASTER` when RELATED is set on an entry an expectation created;
//! - then `CTA_MARK` when the mark is set or the MARK bit is, and `CTA_TIMESTAMP_EVENT` when
//!   timestamps are on.

use super::consts::*;
use super::{MessageWriter, NlHeader};
use crate::event::{EventBits, MessageKind};
use crate::netlink::Counters;
use crate::tuple::{L4Tuple, Tuple, ipproto};

/// Where the encoder puts attributes. Leaf payloads are given in host values and written
/// big-endian, as ctnetlink payloads are; nests are closed in the order they were opened.
pub trait AttrSink {
    /// What [`AttrSink::begin_nest`] hands back to close the nest with.
    type Nest;
    fn u8(&mut self, kind: u16, v: u8);
    fn u16(&mut self, kind: u16, v: u16);
    fn u32(&mut self, kind: u16, v: u32);
    fn u64(&mut self, kind: u16, v: u64);
    fn bytes(&mut self, kind: u16, v: &[u8]);
    fn begin_nest(&mut self, kind: u16) -> Self::Nest;
    fn end_nest(&mut self, nest: Self::Nest);
}

impl AttrSink for MessageWriter<'_> {
    type Nest = usize;
    #[inline]
    fn u8(&mut self, kind: u16, v: u8) {
        MessageWriter::u8(self, kind, v)
    }
    #[inline]
    fn u16(&mut self, kind: u16, v: u16) {
        MessageWriter::u16(self, kind, v)
    }
    #[inline]
    fn u32(&mut self, kind: u16, v: u32) {
        MessageWriter::u32(self, kind, v)
    }
    #[inline]
    fn u64(&mut self, kind: u16, v: u64) {
        MessageWriter::u64(self, kind, v)
    }
    #[inline]
    fn bytes(&mut self, kind: u16, v: &[u8]) {
        MessageWriter::bytes(self, kind, v)
    }
    #[inline]
    fn begin_nest(&mut self, kind: u16) -> usize {
        MessageWriter::begin_nest(self, kind)
    }
    #[inline]
    fn end_nest(&mut self, nest: usize) {
        MessageWriter::end_nest(self, nest)
    }
}

/// The TCP part of an entry that events report (`CTA_PROTOINFO_TCP`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// `enum tcp_conntrack` numbering.
    pub state: u8,
    /// Window scale seen from the original and the reply side.
    pub wscale: [u8; 2],
    /// `IP_CT_TCP_FLAG_*` seen from each side.
    pub flags: [u8; 2],
}

/// The SCTP part of an entry that events report (`CTA_PROTOINFO_SCTP`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SctpInfo {
    /// `enum sctp_conntrack` numbering.
    pub state: u8,
    /// The verification tag of the original and the reply direction.
    pub vtag: [u32; 2],
}

/// What a protocol's tracker reports in `CTA_PROTOINFO` (the protocols that have one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoInfo {
    Tcp(TcpInfo),
    Sctp(SctpInfo),
}

impl ProtoInfo {
    /// The nest as a DESTROY carries it (`destroy` set) or as NEW and UPDATE do.
    fn write<S: AttrSink>(&self, out: &mut S, destroy: bool) {
        let n = out.begin_nest(CTA_PROTOINFO);
        match self {
            ProtoInfo::Tcp(tcp) => {
                let t = out.begin_nest(CTA_PROTOINFO_TCP);
                out.u8(CTA_PROTOINFO_TCP_STATE, tcp.state);
                if !destroy {
                    out.u8(CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, tcp.wscale[0]);
                    out.u8(CTA_PROTOINFO_TCP_WSCALE_REPLY, tcp.wscale[1]);
                    // `struct nf_ct_tcp_flags { flags, mask }`: events leave the mask at zero.
                    out.bytes(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &[tcp.flags[0], 0]);
                    out.bytes(CTA_PROTOINFO_TCP_FLAGS_REPLY, &[tcp.flags[1], 0]);
                }
                out.end_nest(t);
            }
            ProtoInfo::Sctp(sctp) => {
                let t = out.begin_nest(CTA_PROTOINFO_SCTP);
                out.u8(CTA_PROTOINFO_SCTP_STATE, sctp.state);
                if !destroy {
                    out.u32(CTA_PROTOINFO_SCTP_VTAG_ORIGINAL, sctp.vtag[0]);
                    out.u32(CTA_PROTOINFO_SCTP_VTAG_REPLY, sctp.vtag[1]);
                }
                out.end_nest(t);
            }
        }
        out.end_nest(n);
    }
}

/// Per-direction accounting, present when `nf_conntrack_acct` was on.
pub type DirCounters = [Counters; 2];

/// One conntrack event: the entry's facts at the moment of the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackEvent {
    pub kind: MessageKind,
    /// The event bits the message carries (they decide PROTOINFO, the master tuple and MARK).
    pub bits: EventBits,
    pub orig: Tuple,
    pub reply: Tuple,
    pub zone: u16,
    pub id: u32,
    pub status: u32,
    /// Seconds left, as the kernel reports them.
    pub timeout_s: u32,
    /// The tracker's own part, for the protocols that report one.
    pub protoinfo: Option<ProtoInfo>,
    /// The master's original tuple, for an entry an expectation created.
    pub master: Option<Tuple>,
    pub mark: u32,
    /// Counters, when accounting is on.
    pub counters: Option<DirCounters>,
    /// `(start, stop)` in nanoseconds when timestamps are on; stop is 0 until the entry ends.
    pub timestamps: Option<(u64, u64)>,
    /// When the event happened, reported when timestamps are on.
    pub event_ns: u64,
    /// The netlink port of the request that caused the event (0 for the engine's own events).
    pub port_id: u32,
}

impl ConntrackEvent {
    /// The message's `nlmsghdr` (the length aside).
    pub fn header(&self) -> NlHeader {
        let (msg, flags) = match self.kind {
            MessageKind::Destroy => (IPCTNL_MSG_CT_DELETE, 0),
            MessageKind::New => (IPCTNL_MSG_CT_NEW, NLM_F_CREATE | NLM_F_EXCL),
            MessageKind::Update => (IPCTNL_MSG_CT_NEW, 0),
        };
        NlHeader {
            msg_type: nfnl_msg_type(NFNL_SUBSYS_CTNETLINK, msg),
            flags,
            seq: 0,
            port_id: self.port_id,
        }
    }

    /// Writes the attributes, in the kernel's order and under its conditions (module docs).
    pub fn write_attrs<S: AttrSink>(&self, out: &mut S) {
        let destroy = self.kind == MessageKind::Destroy;
        write_tuple(out, CTA_TUPLE_ORIG, &self.orig);
        write_tuple(out, CTA_TUPLE_REPLY, &self.reply);
        if self.zone != 0 {
            out.u16(CTA_ZONE, self.zone);
        }
        out.u32(CTA_ID, self.id);
        out.u32(CTA_STATUS, self.status);
        if destroy {
            if self.timeout_s != 0 {
                out.u32(CTA_TIMEOUT, self.timeout_s);
            }
            if let Some(counters) = self.counters {
                for (kind, c) in [CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY]
                    .into_iter()
                    .zip(counters)
                {
                    let n = out.begin_nest(kind);
                    out.u64(CTA_COUNTERS_PACKETS, c.packets);
                    out.u64(CTA_COUNTERS_BYTES, c.bytes);
                    out.end_nest(n);
                }
            }
            if let Some((start, stop)) = self.timestamps {
                let n = out.begin_nest(CTA_TIMESTAMP);
                out.u64(CTA_TIMESTAMP_START, start);
                if stop != 0 {
                    out.u64(CTA_TIMESTAMP_STOP, stop);
                }
                out.end_nest(n);
            }
            if let Some(info) = self.protoinfo {
                info.write(out, true);
            }
        } else {
            out.u32(CTA_TIMEOUT, self.timeout_s);
            if let (Some(info), true) = (self.protoinfo, self.bits.contains(EventBits::PROTOINFO)) {
                info.write(out, false);
            }
            if let Some(master) = &self.master
                && self.bits.contains(EventBits::RELATED)
            {
                write_tuple(out, CTA_TUPLE_MASTER, master);
            }
        }
        if self.mark != 0 || self.bits.contains(EventBits::MARK) {
            out.u32(CTA_MARK, self.mark);
        }
        if self.timestamps.is_some() {
            out.u64(CTA_TIMESTAMP_EVENT, self.event_ns);
        }
    }

    /// Appends the whole message (`nlmsghdr`, `nfgenmsg`, attributes) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        write_message(out, self.header(), self.orig.family as u8, |w| {
            self.write_attrs(w)
        });
    }
}

/// The two expectation events (`IPEXP_NEW`, `IPEXP_DESTROY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectEventKind {
    New,
    Destroy,
}

/// One expectation event: the expectation's facts at the moment of the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectEvent {
    pub kind: ExpectEventKind,
    /// The master connection's original tuple.
    pub master: Tuple,
    /// The tuple the expected connection will have.
    pub tuple: Tuple,
    /// Which parts of `tuple` must match: all-ones fields must, zero fields are wildcards.
    pub mask: Tuple,
    pub timeout_s: u32,
    pub id: u32,
    pub zone: u16,
    pub flags: u32,
    pub class: u32,
}

impl ExpectEvent {
    pub fn header(&self) -> NlHeader {
        let (msg, flags) = match self.kind {
            ExpectEventKind::Destroy => (IPCTNL_MSG_EXP_DELETE, 0),
            ExpectEventKind::New => (IPCTNL_MSG_EXP_NEW, NLM_F_CREATE | NLM_F_EXCL),
        };
        NlHeader {
            msg_type: nfnl_msg_type(NFNL_SUBSYS_CTNETLINK_EXP, msg),
            flags,
            seq: 0,
            port_id: 0,
        }
    }

    /// Writes the attributes in `ctnetlink_exp_dump_expect`'s order.
    pub fn write_attrs<S: AttrSink>(&self, out: &mut S) {
        write_tuple(out, CTA_EXPECT_MASTER, &self.master);
        write_tuple(out, CTA_EXPECT_TUPLE, &self.tuple);
        write_tuple(out, CTA_EXPECT_MASK, &self.mask);
        out.u32(CTA_EXPECT_TIMEOUT, self.timeout_s);
        out.u32(CTA_EXPECT_ID, self.id);
        if self.zone != 0 {
            out.u16(CTA_EXPECT_ZONE, self.zone);
        }
        out.u32(CTA_EXPECT_FLAGS, self.flags);
        out.u32(CTA_EXPECT_CLASS, self.class);
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        write_message(out, self.header(), self.tuple.family as u8, |w| {
            self.write_attrs(w)
        });
    }
}

fn write_message(
    out: &mut Vec<u8>,
    header: NlHeader,
    family: u8,
    attrs: impl FnOnce(&mut MessageWriter<'_>),
) {
    let mut w = MessageWriter::begin(
        out,
        header.msg_type,
        header.flags,
        header.seq,
        header.port_id,
        family,
    );
    attrs(&mut w);
    w.finish();
}

/// A tuple nest as `ctnetlink_dump_tuples` writes it: the addresses, then the protocol number
/// and its ports or ICMP fields.
pub fn write_tuple<S: AttrSink>(out: &mut S, nest: u16, t: &Tuple) {
    use crate::tuple::Family;
    let n = out.begin_nest(nest);
    let ip = out.begin_nest(CTA_TUPLE_IP);
    match t.family {
        Family::Ipv4 => {
            out.bytes(CTA_IP_V4_SRC, &t.src.0[..4]);
            out.bytes(CTA_IP_V4_DST, &t.dst.0[..4]);
        }
        Family::Ipv6 => {
            out.bytes(CTA_IP_V6_SRC, &t.src.0);
            out.bytes(CTA_IP_V6_DST, &t.dst.0);
        }
    }
    out.end_nest(ip);
    let p = out.begin_nest(CTA_TUPLE_PROTO);
    out.u8(CTA_PROTO_NUM, t.proto);
    match t.l4 {
        L4Tuple::Ports { src, dst } => {
            out.u16(CTA_PROTO_SRC_PORT, src);
            out.u16(CTA_PROTO_DST_PORT, dst);
        }
        L4Tuple::Icmp { id, kind, code } if t.proto == ipproto::ICMPV6 => {
            out.u16(CTA_PROTO_ICMPV6_ID, id);
            out.u8(CTA_PROTO_ICMPV6_TYPE, kind);
            out.u8(CTA_PROTO_ICMPV6_CODE, code);
        }
        L4Tuple::Icmp { id, kind, code } => {
            out.u16(CTA_PROTO_ICMP_ID, id);
            out.u8(CTA_PROTO_ICMP_TYPE, kind);
            out.u8(CTA_PROTO_ICMP_CODE, code);
        }
        L4Tuple::None => {}
    }
    out.end_nest(p);
    out.end_nest(n);
}

#[cfg(test)]
pub(crate) mod typed;
