//! ICMP for IPv4 (RFC 792).
//!
//! Conntrack treats ICMP messages two ways. Queries (echo, timestamp, information, address
//! mask) are flows of their own, keyed on type, code and identifier. Errors (destination
//! unreachable, source quench, redirect, time exceeded, parameter problem) carry the first bytes
//! of the packet that caused them and are RELATED to that packet's entry, so the view hands out
//! the quoted bytes for [`super::parse_embedded_l3`]; [`Repr::Error`] keeps them, as smoltcp's
//! `icmpv4::Repr::DstUnreachable { header, data }` does.

use super::icmp_header::{self, IcmpVersion};

/// Length of the header: every ICMP message has at least these 8 bytes.
pub const HEADER_LEN: usize = icmp_header::HEADER_LEN;

/// Message types conntrack distinguishes.
pub mod kind {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const SOURCE_QUENCH: u8 = 4;
    pub const REDIRECT: u8 = 5;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
    pub const TIMESTAMP: u8 = 13;
    pub const TIMESTAMP_REPLY: u8 = 14;
    pub const INFO_REQUEST: u8 = 15;
    pub const INFO_REPLY: u8 = 16;
    pub const ADDRESS_MASK: u8 = 17;
    pub const ADDRESS_MASK_REPLY: u8 = 18;
}

/// Error types: they quote the offending packet after the 8-byte header.
pub fn is_error_type(msg_type: u8) -> bool {
    matches!(
        msg_type,
        kind::DEST_UNREACHABLE
            | kind::SOURCE_QUENCH
            | kind::REDIRECT
            | kind::TIME_EXCEEDED
            | kind::PARAMETER_PROBLEM
    )
}

/// Types whose second word is an identifier and a sequence number.
pub fn is_echo_like_type(msg_type: u8) -> bool {
    matches!(
        msg_type,
        kind::ECHO_REPLY | kind::ECHO_REQUEST | kind::TIMESTAMP..=kind::ADDRESS_MASK_REPLY
    )
}

/// ICMP for IPv4, as the shared header view's version.
#[derive(Debug)]
pub enum V4 {}

impl IcmpVersion for V4 {
    fn is_error_type(msg_type: u8) -> bool {
        is_error_type(msg_type)
    }
    fn is_echo_like_type(msg_type: u8) -> bool {
        is_echo_like_type(msg_type)
    }
}

/// A read (and, over a mutable buffer, write) view of an ICMP message: the shared header view
/// ([`icmp_header::Packet`]) with the ICMPv4 types, plus the checksum, which covers only the
/// message.
pub type Packet<T> = icmp_header::Packet<T, V4>;

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Computes the checksum over the whole buffer (ICMPv4 has no pseudo-header).
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = super::checksum::sum(self.as_ref());
        self.set_checksum(!sum);
    }
}

/// An ICMP message's meaning, as conntrack sorts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repr<'a> {
    /// Type 8, code 0.
    EchoRequest { ident: u16, seq: u16 },
    /// Type 0, code 0.
    EchoReply { ident: u16, seq: u16 },
    /// Types 13–18, and echo with a non-zero code: keyed on type, code and identifier.
    Query { kind: u8, code: u8, ident: u16 },
    /// Types 3, 4, 5, 11, 12, with the quoted packet as far as the buffer holds it.
    Error {
        kind: u8,
        code: u8,
        embedded: &'a [u8],
    },
    /// Anything else: no identifier, nothing quoted.
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

    /// Type, code and identifier, for the types that have one (what an ICMP tuple holds).
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
    /// least that long), with a correct checksum. Queries get sequence number 0, errors and other
    /// types a zero second word.
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
        packet.set_echo_ident(ident);
        packet.set_echo_seq_no(seq);
        if let Repr::Error { embedded, .. } = self {
            packet.payload_mut().copy_from_slice(embedded);
        }
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuple::{Addr, ipproto};
    use crate::wire::WireError;
    use crate::wire::{build, parse_embedded_l3, parse_l3};

    /// The ICMP part of `ping -c1 127.0.0.1` (iputils, Linux 6.x, `tcpdump -i lo -xx`): echo
    /// request, id 0x1c2f, seq 1, followed by the first 8 bytes of its 56-byte payload (the
    /// sender's timestamp).
    const PING_REQUEST: [u8; 16] = [
        0x08, 0x00, 0x6c, 0xf6, 0x1c, 0x2f, 0x00, 0x01, 0xc6, 0x3a, 0x4a, 0x67, 0x00, 0x00, 0x00,
        0x00,
    ];

    /// A port unreachable from 127.0.0.1 for a UDP datagram 127.0.0.1:45678 -> 127.0.0.1:9: the
    /// ICMP header, then the quoted IPv4 header and UDP header.
    const PORT_UNREACHABLE: [u8; 36] = [
        0x03, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // type 3 code 3, checksum, unused
        0x45, 0x00, 0x00, 0x20, 0x3c, 0x1d, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, // quoted IPv4
        0x7f, 0x00, 0x00, 0x01, 0x7f, 0x00, 0x00, 0x01, //
        0xb2, 0x6e, 0x00, 0x09, 0x00, 0x0c, 0x00, 0x00, // quoted UDP: 45678 -> 9, length 12
    ];

    #[test]
    fn parses_a_ping_request() {
        let packet = Packet::new_checked(&PING_REQUEST[..]).unwrap();
        assert_eq!(packet.msg_type(), kind::ECHO_REQUEST);
        assert_eq!(packet.msg_code(), 0);
        assert_eq!(packet.echo_ident(), 0x1c2f);
        assert_eq!(packet.echo_seq_no(), 1);
        assert!(packet.is_echo_like());
        assert!(!packet.is_error());
        assert_eq!(packet.embedded(), None);
        assert_eq!(packet.payload().len(), 8);
        assert_eq!(
            Repr::parse(&packet),
            Repr::EchoRequest {
                ident: 0x1c2f,
                seq: 1
            }
        );
        assert_eq!(Repr::parse(&packet).query(), Some((8, 0, 0x1c2f)));
    }

    #[test]
    fn echo_emit_round_trips() {
        for repr in [
            Repr::EchoRequest {
                ident: 0x1c2f,
                seq: 1,
            },
            Repr::EchoReply {
                ident: 9,
                seq: 65535,
            },
        ] {
            let mut buf = [0xaa; 8];
            repr.emit(&mut buf);
            let packet = Packet::new_checked(&buf[..]).unwrap();
            assert_eq!(Repr::parse(&packet), repr);
            assert_eq!(crate::wire::checksum::sum(&buf), 0xffff);
        }
        assert_eq!(build::icmp_echo(true, 0x1c2f, 1), {
            let mut header = PING_REQUEST[..8].to_vec();
            Packet::new_unchecked(&mut header[..]).fill_checksum();
            header
        });
    }

    #[test]
    fn parses_a_port_unreachable_and_its_quoted_packet() {
        let packet = Packet::new_checked(&PORT_UNREACHABLE[..]).unwrap();
        assert!(packet.is_error());
        assert!(!packet.is_echo_like());
        let quoted = packet.embedded().unwrap();
        assert_eq!(quoted.len(), 28);
        assert_eq!(
            Repr::parse(&packet),
            Repr::Error {
                kind: kind::DEST_UNREACHABLE,
                code: 3,
                embedded: quoted
            }
        );
        let inner = parse_embedded_l3(quoted).unwrap();
        assert_eq!(
            (inner.src, inner.dst, inner.proto),
            (
                Addr::v4([127, 0, 0, 1]),
                Addr::v4([127, 0, 0, 1]),
                ipproto::UDP
            )
        );
        assert_eq!(crate::wire::tcp::ports(inner.l4(quoted)), Ok((45678, 9)));
    }

    #[test]
    fn error_emit_round_trips() {
        let repr = Repr::Error {
            kind: kind::TIME_EXCEEDED,
            code: 0,
            embedded: &PORT_UNREACHABLE[8..],
        };
        let mut buf = vec![0; repr.buffer_len()];
        repr.emit(&mut buf);
        assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap()), repr);
        assert_eq!(
            buf,
            build::icmp_error(kind::TIME_EXCEEDED, 0, &PORT_UNREACHABLE[8..])
        );
    }

    #[test]
    fn queries_errors_and_others_are_sorted() {
        fn sorted(buf: &mut [u8], kind: u8, code: u8) -> Repr<'_> {
            buf[0] = kind;
            buf[1] = code;
            buf[4..6].copy_from_slice(&7u16.to_be_bytes());
            let buf: &[u8] = buf;
            let repr = Repr::parse(&Packet::new_checked(buf).unwrap());
            let mut out = vec![0; repr.buffer_len()];
            repr.emit(&mut out);
            assert_eq!(Repr::parse(&Packet::new_checked(&out[..]).unwrap()), repr);
            repr
        }
        for kind in 13..=18 {
            assert_eq!(
                sorted(&mut [0; 12], kind, 0),
                Repr::Query {
                    kind,
                    code: 0,
                    ident: 7
                }
            );
        }
        assert_eq!(
            sorted(&mut [0; 12], 8, 1),
            Repr::Query {
                kind: 8,
                code: 1,
                ident: 7
            }
        );
        for kind in [3, 4, 5, 11, 12] {
            assert!(
                matches!(sorted(&mut [0; 12], kind, 1), Repr::Error { embedded, .. } if embedded.len() == 4)
            );
        }
        for kind in [1, 2, 6, 9, 10, 19, 255] {
            assert_eq!(sorted(&mut [0; 12], kind, 0), Repr::Other { kind, code: 0 });
        }
    }

    #[test]
    fn truncated_messages_are_refused() {
        for end in 0..8 {
            assert_eq!(
                Packet::new_checked(&PING_REQUEST[..end]),
                Err(WireError::Truncated)
            );
        }
        // An error quoting nothing parses; the quoted packet does not.
        let packet = Packet::new_checked(&PORT_UNREACHABLE[..8]).unwrap();
        assert_eq!(packet.embedded(), Some(&[][..]));
        assert_eq!(parse_embedded_l3(&[]), Err(WireError::Truncated));
    }

    #[test]
    fn a_whole_error_packet_parses_both_layers() {
        let quoted = build::ipv4(
            [10, 0, 0, 2],
            [10, 0, 0, 1],
            ipproto::TCP,
            &build::tcp(40000, 80, 1, 0, 2, 64240, 0),
        );
        let outer = build::ipv4(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            ipproto::ICMP,
            &build::icmp_error(3, 1, &quoted[..28]),
        );
        let info = parse_l3(&outer).unwrap();
        let packet = Packet::new_checked(info.l4(&outer)).unwrap();
        let inner = parse_embedded_l3(packet.embedded().unwrap()).unwrap();
        assert_eq!(
            (inner.proto, inner.l4_len, inner.wire_len),
            (ipproto::TCP, 8, 40)
        );
    }
}
