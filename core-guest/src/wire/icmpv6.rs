//! ICMPv6 (RFC 4443), as conntrack sorts it.
//!
//! The same two roles as ICMPv4: echo (128/129) and node information (139/140) messages are
//! flows keyed on type, code and identifier; errors (every type below 128) quote the offending
//! packet after the 8-byte header and are RELATED to its entry. A third group matters only to
//! IPv6: neighbour discovery, router discovery and multicast listener messages, which the kernel
//! marks untracked instead of tracking or calling invalid ([`is_untracked_type`]).
//!
//! The checksum covers a pseudo-header with the IP addresses, so [`Repr::emit`] leaves it 0;
//! [`super::build::ipv6`] fills it in.

use super::icmp_header::{self, IcmpVersion};

/// Length of the header: every ICMPv6 message conntrack looks at has these 8 bytes.
pub const HEADER_LEN: usize = icmp_header::HEADER_LEN;

/// Message types conntrack distinguishes.
pub mod kind {
    pub const DEST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAMETER_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    pub const NODE_INFO_QUERY: u8 = 139;
    pub const NODE_INFO_RESPONSE: u8 = 140;
}

/// Error types: every type below 128 (RFC 4443 §2.1), quoting the offending packet.
pub fn is_error_type(msg_type: u8) -> bool {
    msg_type < 128
}

/// Types with an identifier: echo and node information.
pub fn is_echo_like_type(msg_type: u8) -> bool {
    matches!(
        msg_type,
        kind::ECHO_REQUEST | kind::ECHO_REPLY | kind::NODE_INFO_QUERY | kind::NODE_INFO_RESPONSE
    )
}

/// Types the kernel marks untracked: multicast listener query/report/done (130–132), router
/// solicitation and advertisement, neighbour solicitation and advertisement, redirect
/// (133–137), MLDv2 report (143), multicast router advertisement/solicitation/termination
/// (151–153).
pub fn is_untracked_type(msg_type: u8) -> bool {
    matches!(msg_type, 130..=137 | 143 | 151..=153)
}

/// ICMPv6, as the shared header view's version.
#[derive(Debug)]
pub enum V6 {}

impl IcmpVersion for V6 {
    fn is_error_type(msg_type: u8) -> bool {
        is_error_type(msg_type)
    }
    fn is_echo_like_type(msg_type: u8) -> bool {
        is_echo_like_type(msg_type)
    }
}

/// A read (and, over a mutable buffer, write) view of an ICMPv6 message: the shared header view
/// ([`icmp_header::Packet`]) with the ICMPv6 types. It has no `fill_checksum`: the checksum
/// covers a pseudo-header with the IP addresses, which only [`super::build::ipv6`] knows.
pub type Packet<T> = icmp_header::Packet<T, V6>;

impl<T: AsRef<[u8]>> Packet<T> {
    /// Neighbour discovery, router discovery or multicast listener traffic
    /// ([`is_untracked_type`]).
    pub fn is_untracked_type(&self) -> bool {
        is_untracked_type(self.msg_type())
    }
}

/// An ICMPv6 message's meaning, as conntrack sorts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repr<'a> {
    /// Type 128, code 0.
    EchoRequest { ident: u16, seq: u16 },
    /// Type 129, code 0.
    EchoReply { ident: u16, seq: u16 },
    /// Node information (139/140), and echo with a non-zero code: keyed on type, code and
    /// identifier.
    Query { kind: u8, code: u8, ident: u16 },
    /// Types below 128, with the quoted packet as far as the buffer holds it.
    Error {
        kind: u8,
        code: u8,
        embedded: &'a [u8],
    },
    /// Anything else, including the untracked neighbour discovery and MLD types.
    Other { kind: u8, code: u8 },
}

impl<'a> Repr<'a> {
    /// Reads a checked message.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Repr<'a> {
        let (kind, code) = (packet.msg_type(), packet.msg_code());
        let (ident, seq) = (packet.echo_ident(), packet.echo_seq_no());
        match (kind, code) {
            (kind::ECHO_REQUEST, 0) => Repr::EchoRequest { ident, seq },
            (kind::ECHO_REPLY, 0) => Repr::EchoReply { ident, seq },
            _ if is_echo_like_type(kind) => Repr::Query { kind, code, ident },
            _ if is_error_type(kind) => Repr::Error {
                kind,
                code,
                embedded: packet.payload_of_buffer(),
            },
            _ => Repr::Other { kind, code },
        }
    }

    /// Type, code and identifier, for the types that have one (what an ICMPv6 tuple holds).
    pub fn query(&self) -> Option<(u8, u8, u16)> {
        match *self {
            Repr::EchoRequest { ident, .. } => Some((kind::ECHO_REQUEST, 0, ident)),
            Repr::EchoReply { ident, .. } => Some((kind::ECHO_REPLY, 0, ident)),
            Repr::Query { kind, code, ident } => Some((kind, code, ident)),
            Repr::Error { .. } | Repr::Other { .. } => None,
        }
    }

    /// The message length `emit` writes: the header, plus the quoted bytes of an error.
    pub fn buffer_len(&self) -> usize {
        match self {
            Repr::Error { embedded, .. } => HEADER_LEN + embedded.len(),
            _ => HEADER_LEN,
        }
    }

    /// Writes the message into the first [`Repr::buffer_len`] bytes of `buf` (which must be at
    /// least that long). The checksum is left 0: it covers the IPv6 addresses, which
    /// [`super::build::ipv6`] knows and fills in. Queries get sequence number 0, errors and
    /// other types a zero second word.
    pub fn emit(&self, buf: &mut [u8]) {
        let len = self.buffer_len();
        let mut packet = Packet::new_unchecked(&mut buf[..len]);
        let (kind, code, ident, seq) = match *self {
            Repr::EchoRequest { ident, seq } => (kind::ECHO_REQUEST, 0, ident, seq),
            Repr::EchoReply { ident, seq } => (kind::ECHO_REPLY, 0, ident, seq),
            Repr::Query { kind, code, ident } => (kind, code, ident, 0),
            Repr::Error { kind, code, .. } | Repr::Other { kind, code } => (kind, code, 0, 0),
        };
        packet.set_msg_type(kind);
        packet.set_msg_code(code);
        packet.set_checksum(0);
        packet.set_echo_ident(ident);
        packet.set_echo_seq_no(seq);
        if let Repr::Error { embedded, .. } = self {
            packet.payload_mut().copy_from_slice(embedded);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuple::{Addr, ipproto};
    use crate::wire::WireError;
    use crate::wire::{build, ipv6, parse_embedded_l3, parse_l3};

    /// `ping -6 -c1 ::1` (iputils, `tcpdump -i lo -xx`): echo request, id 42, seq 1, with 8
    /// bytes of data kept.
    const PING6_REQUEST: [u8; 16] = [
        0x80, 0x00, 0xed, 0xf2, 0x00, 0x2a, 0x00, 0x01, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67,
        0x68,
    ];

    const LOOPBACK: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    /// A neighbour solicitation for fe80::1 (type 135), header and target address.
    const NEIGHBOUR_SOLICITATION: [u8; 24] = [
        0x87, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 1,
    ];

    #[test]
    fn parses_a_ping6_request() {
        let packet = Packet::new_checked(&PING6_REQUEST[..]).unwrap();
        assert_eq!(packet.msg_type(), kind::ECHO_REQUEST);
        assert_eq!(packet.msg_code(), 0);
        assert_eq!(packet.checksum(), 0xedf2);
        assert_eq!(packet.echo_ident(), 42);
        assert_eq!(packet.echo_seq_no(), 1);
        assert!(packet.is_echo_like());
        assert!(!packet.is_error());
        assert!(!packet.is_untracked_type());
        assert_eq!(packet.embedded(), None);
        assert_eq!(
            Repr::parse(&packet),
            Repr::EchoRequest { ident: 42, seq: 1 }
        );
        assert_eq!(Repr::parse(&packet).query(), Some((128, 0, 42)));
    }

    #[test]
    fn echo_emit_round_trips_and_the_builder_checksums_it() {
        for repr in [
            Repr::EchoRequest { ident: 42, seq: 1 },
            Repr::EchoReply { ident: 42, seq: 1 },
        ] {
            let mut buf = [0xaa; 8];
            repr.emit(&mut buf);
            assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap()), repr);
            assert_eq!(
                buf.to_vec(),
                build::icmpv6_echo(repr == Repr::EchoRequest { ident: 42, seq: 1 }, 42, 1)
            );
        }
        let ip = build::ipv6(LOOPBACK, LOOPBACK, ipproto::ICMPV6, &PING6_REQUEST);
        assert_eq!(ip[40..], PING6_REQUEST);
    }

    #[test]
    fn neighbour_discovery_is_untracked() {
        let packet = Packet::new_checked(&NEIGHBOUR_SOLICITATION[..]).unwrap();
        assert!(packet.is_untracked_type());
        assert_eq!(Repr::parse(&packet), Repr::Other { kind: 135, code: 0 });
        let untracked: Vec<u8> = (0..=255).filter(|t| is_untracked_type(*t)).collect();
        assert_eq!(
            untracked,
            [130, 131, 132, 133, 134, 135, 136, 137, 143, 151, 152, 153]
        );
    }

    #[test]
    fn a_packet_too_big_quotes_its_packet() {
        let tcp = build::tcp(40001, 5001, 1, 1, 0x10, 512, 1400);
        let quoted = build::ipv6(LOOPBACK, LOOPBACK, ipproto::TCP, &tcp);
        let mut error = build::icmpv6_error(kind::PACKET_TOO_BIG, 0, &quoted[..48]);
        Packet::new_unchecked(&mut error[..]).set_rest_of_header(1280);
        let packet = Packet::new_checked(&error[..]).unwrap();
        assert_eq!(packet.rest_of_header(), 1280);
        let repr = Repr::parse(&packet);
        assert_eq!(
            repr,
            Repr::Error {
                kind: 2,
                code: 0,
                embedded: &quoted[..48]
            }
        );
        let inner = parse_embedded_l3(packet.embedded().unwrap()).unwrap();
        assert_eq!(
            (inner.src, inner.proto, inner.l4_len, inner.wire_len),
            (Addr::v6(LOOPBACK), ipproto::TCP, 8, 1460)
        );
        // The same quote as an outer packet would be fine too (the payload is merely cut).
        assert_eq!(parse_l3(&quoted[..48]).unwrap().l4_len, 8);

        let mut buf = vec![0; repr.buffer_len()];
        repr.emit(&mut buf);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&buf[..]).unwrap()),
            Repr::Error {
                kind: 2,
                code: 0,
                embedded: &quoted[..48]
            }
        );
    }

    #[test]
    fn an_error_quoting_extension_headers() {
        let chain = [(ipv6::ext::HOP_BY_HOP, vec![])];
        let quoted = build::ipv6_with_ext(
            LOOPBACK,
            LOOPBACK,
            &chain,
            ipproto::UDP,
            &build::udp(5353, 5353, 100),
        );
        let outer = build::ipv6(
            LOOPBACK,
            LOOPBACK,
            ipproto::ICMPV6,
            &build::icmpv6_error(1, 4, &quoted[..56]),
        );
        let info = parse_l3(&outer).unwrap();
        let packet = Packet::new_checked(info.l4(&outer)).unwrap();
        let inner = parse_embedded_l3(packet.embedded().unwrap()).unwrap();
        assert_eq!(
            (inner.proto, inner.l4_offset, inner.l4_len),
            (ipproto::UDP, 48, 8)
        );
    }

    #[test]
    fn node_information_and_others_are_sorted() {
        fn sorted(buf: &mut [u8], kind: u8, code: u8) -> Repr<'_> {
            buf[0] = kind;
            buf[1] = code;
            buf[4..6].copy_from_slice(&3u16.to_be_bytes());
            let buf: &[u8] = buf;
            let repr = Repr::parse(&Packet::new_checked(buf).unwrap());
            let mut out = vec![0; repr.buffer_len()];
            repr.emit(&mut out);
            assert_eq!(Repr::parse(&Packet::new_checked(&out[..]).unwrap()), repr);
            repr
        }
        assert_eq!(
            sorted(&mut [0; 8], 139, 0),
            Repr::Query {
                kind: 139,
                code: 0,
                ident: 3
            }
        );
        assert_eq!(
            sorted(&mut [0; 8], 140, 2),
            Repr::Query {
                kind: 140,
                code: 2,
                ident: 3
            }
        );
        assert_eq!(
            sorted(&mut [0; 8], 128, 1),
            Repr::Query {
                kind: 128,
                code: 1,
                ident: 3
            }
        );
        for kind in [0, 1, 2, 3, 4, 100, 127] {
            assert!(matches!(
                sorted(&mut [0; 8], kind, 0),
                Repr::Error { embedded: [], .. }
            ));
        }
        for kind in [130, 141, 200, 255] {
            assert_eq!(sorted(&mut [0; 8], kind, 0), Repr::Other { kind, code: 0 });
        }
    }

    #[test]
    fn truncated_messages_are_refused() {
        for end in 0..8 {
            assert_eq!(
                Packet::new_checked(&PING6_REQUEST[..end]),
                Err(WireError::Truncated)
            );
        }
    }
}
