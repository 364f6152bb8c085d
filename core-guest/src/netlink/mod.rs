//! The ctnetlink codec: conntrack messages as the kernel puts them on a `NETLINK_NETFILTER`
//! socket.
//!
//! The engine encodes every event message with it (so a simulated listener charges each message
//! its real size, and the host can put the very bytes on a socket), the host decodes with it
//! (the kernel's events, and the component's), and both directions are checked against bytes
//! captured from a live kernel.
//!
//! Byte order lives here and nowhere else: netlink and attribute headers are host-endian,
//! attribute payloads are big-endian, nests carry `NLA_F_NESTED`, every attribute is padded to
//! four bytes with zeroes. Attributes are kept as ordered lists of enums ending in `Other`, so a
//! message with attributes this code does not know survives a decode/encode round trip.
//!
//! Panic contract: `CtMessage::parse` accepts any byte slice and returns a typed error for
//! anything malformed; nothing in this module panics on input.

mod codec;
mod writer;
pub use writer::MessageWriter;
pub mod consts;
pub mod event;
#[cfg(test)]
pub(crate) mod tests;
pub use event::{AttrSink, ConntrackEvent, ExpectEvent, ExpectEventKind, TcpInfo};

pub use codec::{DecodeError, parse_messages};
pub use codec::{
    Emitable, MAX_NEST_DEPTH, ParseNla, dump_attr_order, event_attr_order, follows_order, request,
};

use crate::event::{EventBits, MessageKind, SctpState, Status, TcpState};
use crate::tuple::{Addr, Family, L4Tuple, Tuple};

/// `struct nlmsghdr`, without the length (computed when emitting, checked when parsing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NlHeader {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub port_id: u32,
}

/// An attribute this codec does not interpret, kept verbatim (payload without padding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawAttr {
    /// The attribute type including the `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER` flag bits.
    pub kind: u16,
    pub payload: Vec<u8>,
}

/// `CTA_IP_*` inside `CTA_TUPLE_IP`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IpAttr {
    V4Src([u8; 4]),
    V4Dst([u8; 4]),
    V6Src([u8; 16]),
    V6Dst([u8; 16]),
    Other(RawAttr),
}

/// `CTA_PROTO_*` inside `CTA_TUPLE_PROTO`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtoAttr {
    Num(u8),
    SrcPort(u16),
    DstPort(u16),
    IcmpId(u16),
    IcmpType(u8),
    IcmpCode(u8),
    Icmpv6Id(u16),
    Icmpv6Type(u8),
    Icmpv6Code(u8),
    Other(RawAttr),
}

/// `CTA_TUPLE_*` inside `CTA_TUPLE_ORIG` / `CTA_TUPLE_REPLY` / `CTA_TUPLE_MASTER`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TupleAttr {
    Ip(Vec<IpAttr>),
    Proto(Vec<ProtoAttr>),
    Zone(u16),
    Other(RawAttr),
}

/// `CTA_PROTOINFO_TCP_*` inside `CTA_PROTOINFO_TCP`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TcpInfoAttr {
    State(u8),
    WscaleOriginal(u8),
    WscaleReply(u8),
    /// `struct nf_ct_tcp_flags { flags, mask }`.
    FlagsOriginal {
        flags: u8,
        mask: u8,
    },
    FlagsReply {
        flags: u8,
        mask: u8,
    },
    Other(RawAttr),
}

/// `CTA_PROTOINFO_*` inside `CTA_PROTOINFO`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtoInfoAttr {
    Tcp(Vec<TcpInfoAttr>),
    Sctp(Vec<SctpInfoAttr>),
    Other(RawAttr),
}

/// `CTA_PROTOINFO_SCTP_*` inside `CTA_PROTOINFO_SCTP`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SctpInfoAttr {
    State(u8),
    VtagOriginal(u32),
    VtagReply(u32),
    Other(RawAttr),
}

/// `CTA_COUNTERS_*` inside `CTA_COUNTERS_ORIG` / `CTA_COUNTERS_REPLY`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CounterAttr {
    Packets(u64),
    Bytes(u64),
    Other(RawAttr),
}

/// `CTA_TIMESTAMP_*` inside `CTA_TIMESTAMP`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimestampAttr {
    Start(u64),
    Stop(u64),
    Other(RawAttr),
}

/// Top-level `CTA_*` conntrack attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CtAttr {
    TupleOrig(Vec<TupleAttr>),
    TupleReply(Vec<TupleAttr>),
    TupleMaster(Vec<TupleAttr>),
    Status(u32),
    ProtoInfo(Vec<ProtoInfoAttr>),
    Timeout(u32),
    Mark(u32),
    CountersOrig(Vec<CounterAttr>),
    CountersReply(Vec<CounterAttr>),
    Use(u32),
    Id(u32),
    Zone(u16),
    Timestamp(Vec<TimestampAttr>),
    TimestampEvent(u64),
    Other(RawAttr),
}

/// One conntrack message: netlink header, `nfgenmsg`, attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtMessage {
    pub header: NlHeader,
    /// `nfgen_family`: `AF_INET` or `AF_INET6` for conntrack messages.
    pub family: u8,
    pub version: u8,
    /// `res_id`, big-endian on the wire.
    pub res_id: u16,
    pub attrs: Vec<CtAttr>,
}

/// Per-direction packet and byte counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

impl CtMessage {
    /// The event kind of a conntrack event message, from its type and flags
    /// (`IPCTNL_MSG_CT_DELETE` → DESTROY; `IPCTNL_MSG_CT_NEW` with `NLM_F_CREATE|NLM_F_EXCL` →
    /// NEW; `IPCTNL_MSG_CT_NEW` without → UPDATE).
    pub fn kind(&self) -> Option<MessageKind> {
        use consts::*;
        if self.header.msg_type >> 8 != NFNL_SUBSYS_CTNETLINK as u16 {
            return None;
        }
        match (self.header.msg_type & 0xff) as u8 {
            IPCTNL_MSG_CT_DELETE => Some(MessageKind::Destroy),
            IPCTNL_MSG_CT_NEW if self.header.flags & (NLM_F_CREATE | NLM_F_EXCL) != 0 => {
                Some(MessageKind::New)
            }
            IPCTNL_MSG_CT_NEW => Some(MessageKind::Update),
            _ => None,
        }
    }

    /// The `IPCT_*` event bits this message proves. The kernel does not send its event mask,
    /// so a reader of the message knows only the kind's own bit (NEW, DESTROY) and PROTOINFO,
    /// whose attribute the kernel adds to a NEW or an UPDATE exactly when that bit is set (a
    /// DESTROY always carries the TCP state). The same message gives the same bits whoever
    /// emitted it, the engine or the kernel.
    pub fn proven_events(&self) -> EventBits {
        let protoinfo = self.attrs.iter().any(|a| matches!(a, CtAttr::ProtoInfo(_)));
        match self.kind() {
            Some(MessageKind::Destroy) => EventBits::DESTROY,
            Some(MessageKind::New) if protoinfo => EventBits::NEW.union(EventBits::PROTOINFO),
            Some(MessageKind::New) => EventBits::NEW,
            Some(MessageKind::Update) if protoinfo => EventBits::PROTOINFO,
            _ => EventBits(0),
        }
    }

    pub fn family(&self) -> Option<Family> {
        Family::from_af(self.family)
    }
    pub fn orig(&self) -> Option<Tuple> {
        self.attrs.iter().find_map(|a| match a {
            CtAttr::TupleOrig(t) => tuple_from_attrs(self.family()?, t),
            _ => None,
        })
    }
    pub fn reply(&self) -> Option<Tuple> {
        self.attrs.iter().find_map(|a| match a {
            CtAttr::TupleReply(t) => tuple_from_attrs(self.family()?, t),
            _ => None,
        })
    }
    pub fn status(&self) -> Option<Status> {
        self.attrs.iter().find_map(|a| match a {
            CtAttr::Status(s) => Some(Status(*s)),
            _ => None,
        })
    }
    pub fn id(&self) -> Option<u32> {
        self.attrs.iter().find_map(|a| match a {
            CtAttr::Id(v) => Some(*v),
            _ => None,
        })
    }
    pub fn timeout(&self) -> Option<u32> {
        self.attrs.iter().find_map(|a| match a {
            CtAttr::Timeout(v) => Some(*v),
            _ => None,
        })
    }
    pub fn mark(&self) -> Option<u32> {
        self.attrs.iter().find_map(|a| match a {
            CtAttr::Mark(v) => Some(*v),
            _ => None,
        })
    }
    pub fn use_count(&self) -> Option<u32> {
        self.attrs.iter().find_map(|a| match a {
            CtAttr::Use(v) => Some(*v),
            _ => None,
        })
    }
    /// The zone: the top-level `CTA_ZONE`, else 0 (the kernel leaves the default zone out).
    pub fn zone(&self) -> u16 {
        self.attrs
            .iter()
            .find_map(|a| match a {
                CtAttr::Zone(v) => Some(*v),
                _ => None,
            })
            .unwrap_or(0)
    }
    pub fn tcp_state(&self) -> Option<TcpState> {
        self.attrs.iter().find_map(|a| match a {
            CtAttr::ProtoInfo(p) => p.iter().find_map(|p| match p {
                ProtoInfoAttr::Tcp(t) => t.iter().find_map(|t| match t {
                    TcpInfoAttr::State(s) => TcpState::from_u8(*s),
                    _ => None,
                }),
                _ => None,
            }),
            _ => None,
        })
    }
    pub fn sctp_state(&self) -> Option<SctpState> {
        self.attrs.iter().find_map(|a| match a {
            CtAttr::ProtoInfo(p) => p.iter().find_map(|p| match p {
                ProtoInfoAttr::Sctp(t) => t.iter().find_map(|t| match t {
                    SctpInfoAttr::State(s) => SctpState::from_u8(*s),
                    _ => None,
                }),
                _ => None,
            }),
            _ => None,
        })
    }
    pub fn counters_orig(&self) -> Option<Counters> {
        self.attrs.iter().find_map(|a| match a {
            CtAttr::CountersOrig(c) => Some(counters_from_attrs(c)),
            _ => None,
        })
    }
    pub fn counters_reply(&self) -> Option<Counters> {
        self.attrs.iter().find_map(|a| match a {
            CtAttr::CountersReply(c) => Some(counters_from_attrs(c)),
            _ => None,
        })
    }
    /// `(start, stop)` in nanoseconds, from `CTA_TIMESTAMP`.
    pub fn timestamp(&self) -> Option<(Option<u64>, Option<u64>)> {
        self.attrs.iter().find_map(|a| match a {
            CtAttr::Timestamp(t) => {
                let start = t.iter().find_map(|t| match t {
                    TimestampAttr::Start(v) => Some(*v),
                    _ => None,
                });
                let stop = t.iter().find_map(|t| match t {
                    TimestampAttr::Stop(v) => Some(*v),
                    _ => None,
                });
                Some((start, stop))
            }
            _ => None,
        })
    }
    pub fn timestamp_event(&self) -> Option<u64> {
        self.attrs.iter().find_map(|a| match a {
            CtAttr::TimestampEvent(v) => Some(*v),
            _ => None,
        })
    }
}

fn counters_from_attrs(attrs: &[CounterAttr]) -> Counters {
    let mut c = Counters::default();
    for a in attrs {
        match a {
            CounterAttr::Packets(v) => c.packets = *v,
            CounterAttr::Bytes(v) => c.bytes = *v,
            CounterAttr::Other(_) => {}
        }
    }
    c
}

/// Reads a tuple nest back into a [`Tuple`]; `None` when a part the family or protocol needs is
/// missing.
pub fn tuple_from_attrs(family: Family, attrs: &[TupleAttr]) -> Option<Tuple> {
    let mut src = None;
    let mut dst = None;
    let mut proto = None;
    let (mut sport, mut dport) = (None, None);
    let (mut icmp_id, mut icmp_type, mut icmp_code) = (None, None, None);
    for a in attrs {
        match a {
            TupleAttr::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IpAttr::V4Src(a) => src = Some(Addr::v4(*a)),
                        IpAttr::V4Dst(a) => dst = Some(Addr::v4(*a)),
                        IpAttr::V6Src(a) => src = Some(Addr::v6(*a)),
                        IpAttr::V6Dst(a) => dst = Some(Addr::v6(*a)),
                        IpAttr::Other(_) => {}
                    }
                }
            }
            TupleAttr::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoAttr::Num(n) => proto = Some(*n),
                        ProtoAttr::SrcPort(v) => sport = Some(*v),
                        ProtoAttr::DstPort(v) => dport = Some(*v),
                        ProtoAttr::IcmpId(v) | ProtoAttr::Icmpv6Id(v) => icmp_id = Some(*v),
                        ProtoAttr::IcmpType(v) | ProtoAttr::Icmpv6Type(v) => icmp_type = Some(*v),
                        ProtoAttr::IcmpCode(v) | ProtoAttr::Icmpv6Code(v) => icmp_code = Some(*v),
                        ProtoAttr::Other(_) => {}
                    }
                }
            }
            TupleAttr::Zone(_) | TupleAttr::Other(_) => {}
        }
    }
    let l4 = match (sport, dport, icmp_id, icmp_type) {
        (Some(src), Some(dst), _, _) => L4Tuple::Ports { src, dst },
        (_, _, Some(id), Some(kind)) => L4Tuple::Icmp {
            id,
            kind,
            code: icmp_code.unwrap_or(0),
        },
        _ => L4Tuple::None,
    };
    Some(Tuple {
        family,
        src: src?,
        dst: dst?,
        proto: proto?,
        l4,
    })
}

/// Builds the tuple nest the kernel emits for `tuple` (`ctnetlink_dump_tuples`): IP addresses,
/// then the protocol number and its ports or ICMP fields.
pub fn tuple_attrs(tuple: &Tuple) -> Vec<TupleAttr> {
    use crate::tuple::ipproto;
    let ip = match tuple.family {
        Family::Ipv4 => {
            let s: [u8; 4] = tuple.src.0[..4].try_into().expect("four bytes");
            let d: [u8; 4] = tuple.dst.0[..4].try_into().expect("four bytes");
            vec![IpAttr::V4Src(s), IpAttr::V4Dst(d)]
        }
        Family::Ipv6 => vec![IpAttr::V6Src(tuple.src.0), IpAttr::V6Dst(tuple.dst.0)],
    };
    let mut proto = vec![ProtoAttr::Num(tuple.proto)];
    match tuple.l4 {
        L4Tuple::Ports { src, dst } => {
            proto.push(ProtoAttr::SrcPort(src));
            proto.push(ProtoAttr::DstPort(dst));
        }
        L4Tuple::Icmp { id, kind, code } if tuple.proto == ipproto::ICMPV6 => {
            proto.push(ProtoAttr::Icmpv6Id(id));
            proto.push(ProtoAttr::Icmpv6Type(kind));
            proto.push(ProtoAttr::Icmpv6Code(code));
        }
        L4Tuple::Icmp { id, kind, code } => {
            proto.push(ProtoAttr::IcmpId(id));
            proto.push(ProtoAttr::IcmpType(kind));
            proto.push(ProtoAttr::IcmpCode(code));
        }
        L4Tuple::None => {}
    }
    vec![TupleAttr::Ip(ip), TupleAttr::Proto(proto)]
}

/// `CTA_EXPECT_*`: attributes of expectation messages (subsystem `CTNETLINK_EXP`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExpAttr {
    /// The master connection's original tuple.
    Master(Vec<TupleAttr>),
    /// The tuple the expected connection will have.
    Tuple(Vec<TupleAttr>),
    /// Which parts of `Tuple` must match (all-ones bytes must, zeroes are wildcards).
    Mask(Vec<TupleAttr>),
    /// Seconds left.
    Timeout(u32),
    Id(u32),
    Zone(u16),
    Flags(u32),
    Class(u32),
    Other(RawAttr),
}

/// One expectation message: netlink header, `nfgenmsg`, attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpMessage {
    pub header: NlHeader,
    pub family: u8,
    pub version: u8,
    pub res_id: u16,
    pub attrs: Vec<ExpAttr>,
}

impl ExpMessage {
    /// NEW or DESTROY, from the message type.
    pub fn kind(&self) -> Option<MessageKind> {
        use consts::*;
        if self.header.msg_type >> 8 != NFNL_SUBSYS_CTNETLINK_EXP as u16 {
            return None;
        }
        match (self.header.msg_type & 0xff) as u8 {
            IPCTNL_MSG_EXP_NEW => Some(MessageKind::New),
            IPCTNL_MSG_EXP_DELETE => Some(MessageKind::Destroy),
            _ => None,
        }
    }
    pub fn id(&self) -> Option<u32> {
        self.attrs.iter().find_map(|a| match a {
            ExpAttr::Id(v) => Some(*v),
            _ => None,
        })
    }
    pub fn tuple(&self) -> Option<Tuple> {
        self.attrs.iter().find_map(|a| match a {
            ExpAttr::Tuple(t) => tuple_from_attrs(Family::from_af(self.family)?, t),
            _ => None,
        })
    }
    pub fn master(&self) -> Option<Tuple> {
        self.attrs.iter().find_map(|a| match a {
            ExpAttr::Master(t) => tuple_from_attrs(Family::from_af(self.family)?, t),
            _ => None,
        })
    }
}
