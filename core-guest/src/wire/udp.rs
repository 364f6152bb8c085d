//! UDP headers (RFC 768).
//!
//! The UDP tracker needs only the ports; the length field is exposed raw so that the tracker can
//! judge it (the kernel calls a length below 8 or past the packet invalid), since the wire layer
//! cannot tell a lying length from a payload a capture cut.

use super::WireError;

pub use super::tcp::ports;

mod field {
    use core::ops::Range;

    pub(super) const SRC_PORT: Range<usize> = 0..2;
    pub(super) const DST_PORT: Range<usize> = 2..4;
    pub(super) const LENGTH: Range<usize> = 4..6;
    pub(super) const CHECKSUM: Range<usize> = 6..8;
}

/// Length of the header.
pub const HEADER_LEN: usize = field::CHECKSUM.end;

/// A read (and, over a mutable buffer, write) view of a UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view without checks: only for buffers this code built itself.
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// A view of untrusted bytes: see [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// The 8-byte header is in the buffer. The length field is not checked (see the module docs).
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::SRC_PORT])
    }

    pub fn dst_port(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::DST_PORT])
    }

    /// The length field: header plus payload, as sent.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::LENGTH])
    }

    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// The payload present in the buffer, up to the length field (empty if it is below 8).
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = usize::from(self.len()).min(data.len());
        data.get(HEADER_LEN..end).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, value: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_dst_port(&mut self, value: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_len(&mut self, value: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes());
    }
}

/// A UDP header's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    /// Payload bytes as the length field says (0 if it says less than the header).
    pub payload_len: usize,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Repr {
        Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: usize::from(packet.len()).saturating_sub(HEADER_LEN),
        }
    }

    /// The header length; the payload follows it.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 8-byte header into `buf` (at least 8 bytes), the length field saying
    /// `8 + payload_len` (saturated at 65535). The checksum is left 0 ("none" for IPv4): it
    /// needs the IP addresses (the [`super::build`] helpers fill it in).
    pub fn emit(&self, buf: &mut [u8]) {
        let mut packet = Packet::new_unchecked(&mut buf[..HEADER_LEN]);
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        let len = u16::try_from(HEADER_LEN + self.payload_len).unwrap_or(u16::MAX);
        packet.set_len(len);
        packet.set_checksum(0);
    }
}

fn be16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuple::ipproto;
    use crate::wire::{build, parse_l3};

    /// A DNS query from 127.0.0.1:45678 to 127.0.0.53:53 (`dig example.com @127.0.0.53`,
    /// `tcpdump -i lo -xx`), cut to its first 12 payload bytes (the DNS header) by the snaplen.
    const DNS_QUERY: [u8; 20] = [
        0xb2, 0x6e, 0x00, 0x35, // ports 45678 -> 53
        0x00, 0x34, 0xfe, 0x64, // length 52, checksum
        0x4c, 0x2b, 0x01, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // DNS header
    ];

    #[test]
    fn parses_a_dns_query() {
        let packet = Packet::new_checked(&DNS_QUERY[..]).unwrap();
        assert_eq!(packet.src_port(), 45678);
        assert_eq!(packet.dst_port(), 53);
        assert_eq!(packet.len(), 52);
        assert_eq!(packet.checksum(), 0xfe64);
        assert_eq!(packet.payload(), &DNS_QUERY[8..]);
        assert_eq!(
            Repr::parse(&packet),
            Repr {
                src_port: 45678,
                dst_port: 53,
                payload_len: 44
            }
        );
        assert_eq!(ports(&DNS_QUERY), Ok((45678, 53)));
    }

    #[test]
    fn emit_round_trips() {
        let repr = Repr {
            src_port: 45678,
            dst_port: 53,
            payload_len: 44,
        };
        let mut buf = [0xff; 8];
        repr.emit(&mut buf);
        assert_eq!(buf, [0xb2, 0x6e, 0x00, 0x35, 0x00, 0x34, 0, 0]);
        assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap()), repr);
    }

    #[test]
    fn the_builder_fills_a_checksum_that_verifies() {
        let ip = build::ipv4(
            [127, 0, 0, 1],
            [127, 0, 0, 53],
            ipproto::UDP,
            &build::udp(45678, 53, 44),
        );
        let info = parse_l3(&ip).unwrap();
        let l4 = info.l4(&ip);
        let pseudo = crate::wire::checksum::pseudo_header(
            &[127, 0, 0, 1],
            &[127, 0, 0, 53],
            ipproto::UDP,
            l4.len() as u32,
        );
        let total = crate::wire::checksum::combine(&[pseudo, crate::wire::checksum::sum(l4)]);
        assert_eq!(total, 0xffff);
        assert_ne!(Packet::new_checked(l4).unwrap().checksum(), 0);
    }

    #[test]
    fn short_buffers_and_lying_lengths() {
        for end in 0..8 {
            assert_eq!(
                Packet::new_checked(&DNS_QUERY[..end]),
                Err(WireError::Truncated)
            );
        }
        let mut lying = DNS_QUERY;
        lying[4..6].copy_from_slice(&3u16.to_be_bytes());
        let packet = Packet::new_checked(&lying[..]).unwrap();
        assert!(packet.payload().is_empty());
        assert_eq!(Repr::parse(&packet).payload_len, 0);
    }
}
