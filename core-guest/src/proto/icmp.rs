//! The ICMP and ICMPv6 trackers for queries (echo, timestamp, information, address mask, node
//! information): a request and its reply share one entry, every packet refreshes a 30 s timeout,
//! and the entry is deliberately kept after the first reply so a `ping -c 2` is one flow.
//!
//! Only request types create entries. Errors never do: [`classify_v4`] and [`classify_v6`] read
//! the packet an error quotes into its flow's tuple (the kernel's `nf_conntrack_inet_error`), and
//! the engine attaches the error as RELATED to that flow's entry, so this tracker never sees them.

use super::{L4Packet, L4Tracker, Outcome, PacketContext, Segment, flow_tuple};
use crate::config::Sysctls;
use crate::tuple::{self, Direction, L4Tuple, Tuple, ipproto};
use crate::wire::{self, L3Info, icmp, icmpv6};

/// An ICMP message: a query flow, an error about another flow, or invalid.
pub fn classify_v4<'a>(l3: &L3Info, l4: &[u8], segment: Segment<'a>) -> L4Packet<'a> {
    let Ok(packet) = icmp::Packet::new_checked(l4) else {
        return L4Packet::Invalid;
    };
    match icmp::Repr::parse(&packet) {
        icmp::Repr::Error { embedded, .. } => error(l3, embedded),
        repr => query(l3, ipproto::ICMP, repr.query(), segment),
    }
}

/// An ICMPv6 message: untracked (neighbour discovery, MLD), a query flow, an error about
/// another flow, or invalid.
pub fn classify_v6<'a>(l3: &L3Info, l4: &[u8], segment: Segment<'a>) -> L4Packet<'a> {
    let Ok(packet) = icmpv6::Packet::new_checked(l4) else {
        return L4Packet::Invalid;
    };
    if packet.is_untracked_type() {
        return L4Packet::Untracked;
    }
    match icmpv6::Repr::parse(&packet) {
        icmpv6::Repr::Error { embedded, .. } => error(l3, embedded),
        repr => query(l3, ipproto::ICMPV6, repr.query(), segment),
    }
}

/// A query (type, code, identifier) is a flow when its type has a counterpart: a request and
/// its reply share an entry. Other types are invalid.
fn query<'a>(
    l3: &L3Info,
    proto: u8,
    query: Option<(u8, u8, u16)>,
    segment: Segment<'a>,
) -> L4Packet<'a> {
    match query {
        Some((kind, code, id)) if tuple::invert_icmp_type(proto, kind).is_some() => {
            L4Packet::Track {
                tuple: flow_tuple(l3, L4Tuple::Icmp { id, kind, code }),
                segment,
            }
        }
        _ => L4Packet::Invalid,
    }
}

/// An error is about the flow of the packet it quotes, and travels back towards that packet's
/// sender; anything else about it makes it invalid.
fn error(outer: &L3Info, embedded: &[u8]) -> L4Packet<'static> {
    match quoted_tuple(embedded) {
        Some(quoted) if outer.dst == quoted.src && outer.family == quoted.family => {
            L4Packet::Error { quoted }
        }
        _ => L4Packet::Invalid,
    }
}

/// The tuple of the packet an error quotes, in the direction that packet travelled. Quotes may
/// be cut short: the IP header and the first eight bytes of layer 4 are all it takes.
pub fn quoted_tuple(embedded: &[u8]) -> Option<Tuple> {
    let inner = wire::parse_embedded_l3(embedded).ok()?;
    let l4 = embedded.get(inner.l4_offset..)?;
    let l4_tuple = match inner.proto {
        ipproto::TCP | ipproto::UDP | ipproto::UDPLITE | ipproto::SCTP => {
            let (src, dst) = wire::tcp::ports(l4).ok()?;
            L4Tuple::Ports { src, dst }
        }
        ipproto::GRE => super::gre::keys(l4)?,
        ipproto::ICMP => {
            let (kind, code, id) =
                icmp::Repr::parse(&icmp::Packet::new_checked(l4).ok()?).query()?;
            L4Tuple::Icmp { id, kind, code }
        }
        ipproto::ICMPV6 => {
            let packet = icmpv6::Packet::new_checked(l4).ok()?;
            let (kind, code, id) = icmpv6::Repr::parse(&packet).query()?;
            L4Tuple::Icmp { id, kind, code }
        }
        _ => L4Tuple::None,
    };
    Some(flow_tuple(&inner, l4_tuple))
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IcmpConn {
    pub v6: bool,
}

impl IcmpConn {
    pub fn v4(self) -> IcmpConn {
        IcmpConn { v6: false }
    }
    pub fn v6(self) -> IcmpConn {
        IcmpConn { v6: true }
    }
}

impl L4Tracker for IcmpConn {
    fn new_entry(_segment: &Segment, _sysctls: &Sysctls) -> Option<Self> {
        // Whether the type may create an entry is decided from the tuple by the engine
        // (`tuple::icmp_type_creates_entry`), before the tracker is asked.
        Some(IcmpConn::default())
    }

    fn packet(
        &mut self,
        ctx: &mut PacketContext<'_>,
        _segment: &Segment,
        _dir: Direction,
    ) -> Outcome {
        let timeout_s = if self.v6 {
            ctx.sysctls.icmpv6_timeout
        } else {
            ctx.sysctls.icmp_timeout
        };
        Outcome::Accept { timeout_s }
    }
}
