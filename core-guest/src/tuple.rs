//! Connection tuples: what identifies one direction of a flow.
//!
//! An entry is found by either of its two tuples (original and reply) inside a zone. ctwasm does
//! no NAT, so the reply tuple is always the inverse of the original one and is derived rather
//! than stored; the hash index holds both so that a reply packet finds its entry in one lookup.
//! Addresses are kept in a 16-byte array for both families (IPv4 in the first four bytes) so a
//! tuple is one small `Copy` value with a derived `Hash`.

use core::fmt;

/// The layer-3 family, numbered as the kernel's `AF_*` constants (the `nfgen_family` byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Family {
    Ipv4 = 2,
    Ipv6 = 10,
}

impl Family {
    pub fn from_af(af: u8) -> Option<Family> {
        match af {
            2 => Some(Family::Ipv4),
            10 => Some(Family::Ipv6),
            _ => None,
        }
    }
    pub fn address_len(self) -> usize {
        match self {
            Family::Ipv4 => 4,
            Family::Ipv6 => 16,
        }
    }
    /// The name `conntrack -E` and the JSON lines use.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// IP protocol numbers the trackers know by name.
pub mod ipproto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    /// Protocols the engine tracks generically; named here because `conntrack` names them.
    pub const DCCP: u8 = 33;
    pub const GRE: u8 = 47;
    pub const SCTP: u8 = 132;
    pub const UDPLITE: u8 = 136;

    /// The protocol name as `conntrack` prints it, if it has one.
    pub fn name(proto: u8) -> Option<&'static str> {
        match proto {
            ICMP => Some("icmp"),
            TCP => Some("tcp"),
            UDP => Some("udp"),
            ICMPV6 => Some("icmpv6"),
            _ => None,
        }
    }
}

/// An address of either family; IPv4 uses the first four bytes, the rest stay zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Addr(pub [u8; 16]);

impl Addr {
    pub fn v4(octets: [u8; 4]) -> Addr {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&octets);
        Addr(a)
    }
    pub fn v6(octets: [u8; 16]) -> Addr {
        Addr(octets)
    }
    /// The address bytes as they go on the wire for `family`.
    pub fn bytes(&self, family: Family) -> &[u8] {
        &self.0[..family.address_len()]
    }
    pub fn to_ip(self, family: Family) -> std::net::IpAddr {
        match family {
            Family::Ipv4 => std::net::IpAddr::from([self.0[0], self.0[1], self.0[2], self.0[3]]),
            Family::Ipv6 => std::net::IpAddr::from(self.0),
        }
    }
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0[4..].iter().all(|b| *b == 0) {
            write!(f, "{}", self.to_ip(Family::Ipv4))
        } else {
            write!(f, "{}", self.to_ip(Family::Ipv6))
        }
    }
}

/// The layer-4 part of a tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4Tuple {
    /// TCP, UDP, UDP-Lite, SCTP, DCCP: source and destination ports.
    Ports { src: u16, dst: u16 },
    /// ICMP and ICMPv6 queries: the echo id plays the role of the port; type and code belong to
    /// the destination half, as in the kernel's `nf_conntrack_tuple`.
    Icmp { id: u16, kind: u8, code: u8 },
    /// Any other protocol: the generic tracker keys on addresses and protocol only.
    None,
}

/// One direction of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub family: Family,
    pub src: Addr,
    pub dst: Addr,
    pub proto: u8,
    pub l4: L4Tuple,
}

impl Tuple {
    /// The tuple of the other direction, or `None` when the protocol has no inverse (an ICMP
    /// type that is not a query, which is why such packets never create entries).
    pub fn invert(&self) -> Option<Tuple> {
        let l4 = match self.l4 {
            L4Tuple::Ports { src, dst } => L4Tuple::Ports { src: dst, dst: src },
            L4Tuple::Icmp { id, kind, code } => L4Tuple::Icmp {
                id,
                kind: invert_icmp_type(self.proto, kind)?,
                code,
            },
            L4Tuple::None => L4Tuple::None,
        };
        Some(Tuple {
            family: self.family,
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            l4,
        })
    }
}

/// The query/answer pairs the kernel can invert (`icmp_invert_tuple`, `icmpv6_invert_tuple`).
pub fn invert_icmp_type(proto: u8, kind: u8) -> Option<u8> {
    let pairs: &[(u8, u8)] = match proto {
        ipproto::ICMP => &[(8, 0), (13, 14), (15, 16), (17, 18)],
        ipproto::ICMPV6 => &[(128, 129), (139, 140)],
        _ => return None,
    };
    pairs.iter().find_map(|&(a, b)| {
        if kind == a {
            Some(b)
        } else if kind == b {
            Some(a)
        } else {
            None
        }
    })
}

/// Only these ICMP types may create an entry (the "request" halves of the pairs above).
pub fn icmp_type_creates_entry(proto: u8, kind: u8) -> bool {
    match proto {
        ipproto::ICMP => matches!(kind, 8 | 13 | 15 | 17),
        ipproto::ICMPV6 => matches!(kind, 128 | 139),
        _ => false,
    }
}

/// Direction of a packet relative to its entry, numbered as the kernel's `IP_CT_DIR_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Direction {
    Original = 0,
    Reply = 1,
}

impl Direction {
    pub fn index(self) -> usize {
        self as usize
    }
    pub fn opposite(self) -> Direction {
        match self {
            Direction::Original => Direction::Reply,
            Direction::Reply => Direction::Original,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Tuple {
        Tuple {
            family: Family::Ipv4,
            src: Addr::v4(src),
            dst: Addr::v4(dst),
            proto: ipproto::UDP,
            l4: L4Tuple::Ports {
                src: sport,
                dst: dport,
            },
        }
    }

    #[test]
    fn inverting_twice_gives_the_tuple_back() {
        let t = udp([127, 0, 0, 1], 40002, [127, 0, 0, 2], 5001);
        let r = t.invert().unwrap();
        assert_eq!(r, udp([127, 0, 0, 2], 5001, [127, 0, 0, 1], 40002));
        assert_eq!(r.invert().unwrap(), t);
    }

    #[test]
    fn echo_inverts_to_echo_reply_and_errors_do_not_invert() {
        assert_eq!(invert_icmp_type(ipproto::ICMP, 8), Some(0));
        assert_eq!(invert_icmp_type(ipproto::ICMP, 0), Some(8));
        assert_eq!(invert_icmp_type(ipproto::ICMP, 3), None);
        assert_eq!(invert_icmp_type(ipproto::ICMPV6, 129), Some(128));
        assert!(icmp_type_creates_entry(ipproto::ICMPV6, 128));
        assert!(!icmp_type_creates_entry(ipproto::ICMPV6, 129));
    }
}
