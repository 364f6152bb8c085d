//! Protocol trackers: one per layer-4 protocol, all of one shape.
//!
//! The kernel gives every protocol the same operations (`nf_conntrack_l4proto`): may this packet
//! create an entry, and what does a packet do to an existing one. Here that shape is the
//! [`L4Tracker`] trait, and an entry holds its protocol's state inline as a [`ProtoState`]
//! enum, dispatched by `match` on the hot path: no box and no virtual call per flow.

pub mod checksum;
pub mod generic;
pub mod gre;
pub mod icmp;
pub mod sctp;
pub mod tcp;
pub mod udp;
pub mod udplite;

use crate::config::Sysctls;
use crate::event::{EventBits, SctpState, Status, TcpState};
use crate::tuple::{Direction, L4Tuple, Tuple, ipproto};
use crate::wire;

/// What layer 4 makes of a packet before the table is consulted: the kernel's tuple extraction
/// (`nf_ct_get_tuple` and each protocol's `pkt_to_tuple`) and its ICMP error handling
/// (`nf_conntrack_inet_error`), which decide whether the packet is tracked, related or refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Packet<'a> {
    /// A packet of the flow `tuple`, with what its tracker needs.
    Track { tuple: Tuple, segment: Segment<'a> },
    /// An ICMP error quoting a packet of the flow `quoted`: RELATED to that flow's entry, if
    /// there is one. It never creates an entry.
    Error { quoted: Tuple },
    /// Conntrack leaves it alone (ICMPv6 neighbour discovery and MLD).
    Untracked,
    /// Malformed, or a kind of message conntrack refuses (`ct state invalid`).
    Invalid,
}

/// Reads an L3 packet down to its flow.
pub fn parse_packet<'a>(packet: &'a [u8]) -> L4Packet<'a> {
    let Ok(l3) = wire::parse_l3(packet) else {
        return L4Packet::Invalid;
    };
    let l4 = l3.l4(packet);
    let segment = Segment {
        wire_len: l3.wire_len,
        tcp: None,
        sctp: None,
    };
    let flow = |l4: L4Tuple, segment: Segment<'a>| L4Packet::Track {
        tuple: flow_tuple(&l3, l4),
        segment,
    };
    match l3.proto {
        ipproto::TCP => match tcp::parse_segment(l4, l3.l4_wire_len()) {
            Some((ports, tcp)) => flow(
                ports,
                Segment {
                    tcp: Some(tcp),
                    ..segment
                },
            ),
            None => L4Packet::Invalid,
        },
        ipproto::UDP => match wire::udp::Packet::new_checked(l4) {
            Ok(p) => flow(
                L4Tuple::Ports {
                    src: p.src_port(),
                    dst: p.dst_port(),
                },
                segment,
            ),
            Err(_) => L4Packet::Invalid,
        },
        ipproto::UDPLITE => match udplite::ports(l4, l3.l4_wire_len()) {
            Some(ports) => flow(ports, segment),
            None => L4Packet::Invalid,
        },
        // The kernel reads the ports first and the rest of the common header in the tracker;
        // either way a packet without the whole of it is invalid.
        ipproto::SCTP => match wire::sctp::Packet::new_checked(l4) {
            Ok(p) => flow(
                L4Tuple::Ports {
                    src: p.src_port(),
                    dst: p.dst_port(),
                },
                Segment {
                    sctp: Some(p),
                    ..segment
                },
            ),
            Err(_) => L4Packet::Invalid,
        },
        ipproto::GRE => match gre::keys(l4) {
            Some(keys) => flow(keys, segment),
            None => L4Packet::Invalid,
        },
        ipproto::ICMP => icmp::classify_v4(&l3, l4, segment),
        ipproto::ICMPV6 => icmp::classify_v6(&l3, l4, segment),
        _ => flow(L4Tuple::None, segment),
    }
}

/// What the engine learnt about a packet's layer 4 before calling the tracker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Length of the L3 packet as its IP header says (what the kernel's `skb->len` counts).
    pub wire_len: u32,
    /// TCP fields; `None` for other protocols.
    pub tcp: Option<tcp::TcpSegment>,
    /// The SCTP packet, whose chunks its tracker walks; `None` for other protocols.
    pub sctp: Option<wire::sctp::Packet<&'a [u8]>>,
}

/// The part of an entry a tracker may read and change while it handles one packet.
#[derive(Debug)]
pub struct PacketContext<'a> {
    pub now_ns: u64,
    pub status: &'a mut Status,
    /// Events this packet raises; the engine delivers them once the packet is done.
    pub events: &'a mut EventBits,
    /// When the entry was created, for the UDP two-second rule.
    pub created_ns: u64,
    /// When the entry times out as things stand.
    pub deadline_ns: u64,
    pub sysctls: &'a Sysctls,
}

impl PacketContext<'_> {
    /// Marks the entry ASSURED, raising the ASSURED event the first time only (the kernel's
    /// `test_and_set_bit(IPS_ASSURED_BIT)` before `nf_conntrack_event_cache(IPCT_ASSURED)`).
    pub fn assure(&mut self) {
        if !self.status.contains(Status::ASSURED) {
            self.status.insert(Status::ASSURED);
            self.events.insert(EventBits::ASSURED);
        }
    }

    /// The rule of the trackers without states (UDP-Lite, GRE): `unreplied` seconds until a
    /// reply has been seen; after it, `replied` seconds, and the entry is assured. SEEN_REPLY
    /// is set after the tracker ran, so the reply itself still gets `unreplied`, as in the
    /// kernel.
    pub fn replied_stream(&mut self, unreplied: u32, replied: u32) -> Outcome {
        if !self.status.contains(Status::SEEN_REPLY) {
            return Outcome::Accept {
                timeout_s: unreplied,
            };
        }
        self.assure();
        Outcome::Accept { timeout_s: replied }
    }
}

/// What a tracker decided about a packet on an existing entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Accept, and set the entry's timeout to this many seconds from now.
    Accept { timeout_s: u32 },
    /// Accept without touching the entry's timeout (ignored TCP packets, SYN retransmits).
    AcceptKeepTimeout,
    /// Accept and count the packet, then end the entry at once (an RST before any reply).
    AcceptAndKill,
    /// The packet does not fit the entry: the kernel's `-NF_ACCEPT`, counted as invalid.
    Invalid,
    /// Invalid, and the entry's timeout is cut to this many seconds from now (TCP: an
    /// out-of-window FIN/RST answering one from the other side, on an entry with long to live).
    InvalidShortenTimeout { timeout_s: u32 },
    /// The entry is over (TCP reopen after TIME_WAIT): end it and look the packet up again.
    Repeat,
}

/// The operations every protocol tracker provides.
pub trait L4Tracker: Sized {
    /// Decides whether `segment` may create an entry (the original direction, first packet) and
    /// gives the initial state; `None` means the packet is invalid and no entry is made.
    fn new_entry(segment: &Segment, sysctls: &Sysctls) -> Option<Self>;
    /// Handles one packet on an entry (the first one included, right after `new_entry`).
    fn packet(&mut self, ctx: &mut PacketContext<'_>, segment: &Segment, dir: Direction)
    -> Outcome;
}

/// The tuple of a packet in the direction it travels.
fn flow_tuple(l3: &wire::L3Info, l4: L4Tuple) -> Tuple {
    Tuple {
        family: l3.family,
        src: l3.src,
        dst: l3.dst,
        proto: l3.proto,
        l4,
    }
}

/// The per-entry protocol state, inline in the entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtoState {
    Tcp(tcp::TcpConn),
    Udp(udp::UdpConn),
    UdpLite(udplite::UdpLiteConn),
    Gre(gre::GreConn),
    Sctp(sctp::SctpConn),
    Icmp(icmp::IcmpConn),
    Generic(generic::GenericConn),
}

impl ProtoState {
    /// Creates the state for a first packet of protocol `proto`.
    pub fn new_entry(proto: u8, segment: &Segment, sysctls: &Sysctls) -> Option<ProtoState> {
        match proto {
            ipproto::TCP => tcp::TcpConn::new_entry(segment, sysctls).map(ProtoState::Tcp),
            ipproto::UDP => udp::UdpConn::new_entry(segment, sysctls).map(ProtoState::Udp),
            ipproto::UDPLITE => {
                udplite::UdpLiteConn::new_entry(segment, sysctls).map(ProtoState::UdpLite)
            }
            ipproto::GRE => gre::GreConn::new_entry(segment, sysctls).map(ProtoState::Gre),
            ipproto::SCTP => sctp::SctpConn::new_entry(segment, sysctls).map(ProtoState::Sctp),
            ipproto::ICMP => {
                icmp::IcmpConn::new_entry(segment, sysctls).map(|c| ProtoState::Icmp(c.v4()))
            }
            ipproto::ICMPV6 => {
                icmp::IcmpConn::new_entry(segment, sysctls).map(|c| ProtoState::Icmp(c.v6()))
            }
            _ => generic::GenericConn::new_entry(segment, sysctls).map(ProtoState::Generic),
        }
    }

    pub fn packet(
        &mut self,
        ctx: &mut PacketContext<'_>,
        segment: &Segment,
        dir: Direction,
    ) -> Outcome {
        match self {
            ProtoState::Tcp(c) => c.packet(ctx, segment, dir),
            ProtoState::Udp(c) => c.packet(ctx, segment, dir),
            ProtoState::UdpLite(c) => c.packet(ctx, segment, dir),
            ProtoState::Gre(c) => c.packet(ctx, segment, dir),
            ProtoState::Sctp(c) => c.packet(ctx, segment, dir),
            ProtoState::Icmp(c) => c.packet(ctx, segment, dir),
            ProtoState::Generic(c) => c.packet(ctx, segment, dir),
        }
    }

    pub fn tcp_state(&self) -> Option<TcpState> {
        match self {
            ProtoState::Tcp(c) => Some(c.state),
            _ => None,
        }
    }

    pub fn sctp_state(&self) -> Option<SctpState> {
        match self {
            ProtoState::Sctp(c) => Some(c.state),
            _ => None,
        }
    }

    /// Whether early drop may evict this entry even when ASSURED (TCP and SCTP in a closing
    /// state).
    pub fn can_early_drop(&self) -> bool {
        match self {
            ProtoState::Tcp(c) => c.can_early_drop(),
            ProtoState::Sctp(c) => c.can_early_drop(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuple::Addr;
    use crate::wire::build;

    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];

    fn ports(src: u16, dst: u16) -> L4Tuple {
        L4Tuple::Ports { src, dst }
    }

    #[test]
    fn tcp_and_udp_become_flows_with_their_segment() {
        let p = build::ipv4(
            A,
            B,
            ipproto::TCP,
            &build::tcp(40000, 80, 7, 0, 0x02, 512, 10),
        );
        let L4Packet::Track { tuple, segment } = parse_packet(&p) else {
            panic!("a tracked TCP packet");
        };
        assert_eq!((tuple.src, tuple.dst), (Addr::v4(A), Addr::v4(B)));
        assert_eq!(tuple.l4, ports(40000, 80));
        let tcp = segment.tcp.expect("TCP fields");
        assert_eq!((tcp.seq, tcp.flags, tcp.payload_len), (7, 0x02, 10));
        assert_eq!(segment.wire_len, p.len() as u32);

        let p = build::ipv4(A, B, ipproto::UDP, &build::udp(5353, 53, 4));
        assert!(matches!(
            parse_packet(&p),
            L4Packet::Track { tuple, segment } if tuple.l4 == ports(5353, 53) && segment.tcp.is_none()
        ));
    }

    #[test]
    fn refused_tcp_flags_and_truncated_headers_are_invalid() {
        // SYN|FIN is one of the combinations `tcp_valid_flags` refuses.
        let p = build::ipv4(A, B, ipproto::TCP, &build::tcp(1, 2, 0, 0, 0x03, 512, 0));
        assert_eq!(parse_packet(&p), L4Packet::Invalid);
        let p = build::ipv4(A, B, ipproto::UDP, &[0, 53, 0]);
        assert_eq!(parse_packet(&p), L4Packet::Invalid);
        assert_eq!(parse_packet(&[0x45, 0]), L4Packet::Invalid);
    }

    #[test]
    fn icmp_queries_are_flows_and_other_types_invalid() {
        let p = build::ipv4(A, B, ipproto::ICMP, &build::icmp_echo(true, 0x1234, 1));
        assert!(matches!(
            parse_packet(&p),
            L4Packet::Track { tuple, .. }
                if tuple.l4 == L4Tuple::Icmp { id: 0x1234, kind: 8, code: 0 }
        ));
        // A router advertisement (type 9) has no counterpart: conntrack calls it invalid.
        let mut advert = build::icmp_echo(true, 0, 0);
        advert[0] = 9;
        let p = build::ipv4(A, B, ipproto::ICMP, &advert);
        assert_eq!(parse_packet(&p), L4Packet::Invalid);
    }

    #[test]
    fn icmp_errors_name_the_flow_they_quote() {
        let udp = build::ipv4(A, B, ipproto::UDP, &build::udp(40000, 53, 0));
        let unreachable = build::icmp_error(3, 3, &udp);
        // The error travels from B back to A, the quoted packet's sender.
        let p = build::ipv4(B, A, ipproto::ICMP, &unreachable);
        let L4Packet::Error { quoted } = parse_packet(&p) else {
            panic!("an error");
        };
        assert_eq!((quoted.src, quoted.l4), (Addr::v4(A), ports(40000, 53)));
        // Sent anywhere but to the quoted packet's sender, it is invalid.
        let p = build::ipv4(B, B, ipproto::ICMP, &unreachable);
        assert_eq!(parse_packet(&p), L4Packet::Invalid);
        // A quote cut inside the IP header is invalid.
        let p = build::ipv4(B, A, ipproto::ICMP, &build::icmp_error(3, 3, &udp[..12]));
        assert_eq!(parse_packet(&p), L4Packet::Invalid);
    }

    #[test]
    fn an_error_quoting_an_echo_names_the_echo_flow() {
        let echo = build::ipv4(A, B, ipproto::ICMP, &build::icmp_echo(true, 77, 1));
        let p = build::ipv4(B, A, ipproto::ICMP, &build::icmp_error(11, 0, &echo));
        assert!(matches!(
            parse_packet(&p),
            L4Packet::Error { quoted } if quoted.l4 == L4Tuple::Icmp { id: 77, kind: 8, code: 0 }
        ));
    }

    #[test]
    fn icmpv6_neighbour_discovery_is_untracked() {
        let lo = std::net::Ipv6Addr::LOCALHOST.octets();
        let mut solicitation = build::icmpv6_echo(true, 0, 0);
        solicitation[0] = 135;
        let p = build::ipv6(lo, lo, ipproto::ICMPV6, &solicitation);
        assert_eq!(parse_packet(&p), L4Packet::Untracked);
        let p = build::ipv6(lo, lo, ipproto::ICMPV6, &build::icmpv6_echo(false, 9, 1));
        assert!(matches!(
            parse_packet(&p),
            L4Packet::Track { tuple, .. } if tuple.l4 == L4Tuple::Icmp { id: 9, kind: 129, code: 0 }
        ));
    }
}
