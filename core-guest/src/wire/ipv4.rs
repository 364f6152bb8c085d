//! IPv4 headers (RFC 791).
//!
//! Conntrack reads the addresses, the protocol, the lengths and the fragment fields; it never
//! needs the options' contents, only their length (IHL) to find the L4 header. The view exists so
//! that [`super::parse_l3`] and the builders share one set of offsets, and so a tracker can read
//! a field the [`super::L3Info`] summary leaves out (TTL, identification) without re-deriving
//! offsets.

use super::WireError;

mod field {
    use core::ops::Range;

    pub(super) const VER_IHL: usize = 0;
    pub(super) const DSCP_ECN: usize = 1;
    pub(super) const TOTAL_LEN: Range<usize> = 2..4;
    pub(super) const IDENT: Range<usize> = 4..6;
    pub(super) const FLAGS_FRAG: Range<usize> = 6..8;
    pub(super) const TTL: usize = 8;
    pub(super) const PROTOCOL: usize = 9;
    pub(super) const CHECKSUM: Range<usize> = 10..12;
    pub(super) const SRC_ADDR: Range<usize> = 12..16;
    pub(super) const DST_ADDR: Range<usize> = 16..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

const FLAG_DONT_FRAG: u16 = 0x4000;
const FLAG_MORE_FRAGS: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// A read (and, over a mutable buffer, write) view of an IPv4 header.
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

    /// The header, options included, is in the buffer and IHL is at least 5.
    ///
    /// The total length is not checked: it may exceed the buffer (a capture cut the payload) and
    /// [`Packet::payload`] copes with one shorter than the header. [`super::parse_l3`] judges it,
    /// and the version nibble.
    pub fn check_len(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(WireError::BadHeaderLength);
        }
        if data.len() < header_len {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    pub fn total_len(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::TOTAL_LEN])
    }

    pub fn ident(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::IDENT])
    }

    fn flags_frag(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::FLAGS_FRAG])
    }

    pub fn dont_frag(&self) -> bool {
        self.flags_frag() & FLAG_DONT_FRAG != 0
    }

    pub fn more_frags(&self) -> bool {
        self.flags_frag() & FLAG_MORE_FRAGS != 0
    }

    /// The fragment offset in bytes (the field counts 8-byte units).
    pub fn frag_offset(&self) -> u16 {
        (self.flags_frag() & FRAG_OFFSET_MASK) << 3
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    pub fn src_addr(&self) -> [u8; 4] {
        addr(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    pub fn dst_addr(&self) -> [u8; 4] {
        addr(&self.buffer.as_ref()[field::DST_ADDR])
    }

    /// Whether the header checksum is right. Informational only: see the module docs of `wire`.
    pub fn verify_checksum(&self) -> bool {
        let header = &self.buffer.as_ref()[..self.header_len()];
        super::checksum::sum(header) == 0xffff
    }

    /// The options bytes (possibly empty).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The payload present in the buffer: up to the total length, cut to the buffer. Empty if the
    /// total length is shorter than the header.
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = usize::from(self.total_len()).min(data.len());
        data.get(self.header_len()..end).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 4 and the IHL from a header length in bytes (a multiple of 4, 20..=60).
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((header_len / 4) as u8 & 0x0f);
    }

    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = value;
    }

    pub fn set_total_len(&mut self, value: u16) {
        self.buffer.as_mut()[field::TOTAL_LEN].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_ident(&mut self, value: u16) {
        self.buffer.as_mut()[field::IDENT].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the fragment fields; `offset` is in bytes and is rounded down to 8-byte units.
    pub fn set_fragment(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut value = (offset >> 3) & FRAG_OFFSET_MASK;
        if dont_frag {
            value |= FLAG_DONT_FRAG;
        }
        if more_frags {
            value |= FLAG_MORE_FRAGS;
        }
        self.buffer.as_mut()[field::FLAGS_FRAG].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_ttl(&mut self, value: u8) {
        self.buffer.as_mut()[field::TTL] = value;
    }

    pub fn set_protocol(&mut self, value: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = value;
    }

    pub fn set_src_addr(&mut self, value: [u8; 4]) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&value);
    }

    pub fn set_dst_addr(&mut self, value: [u8; 4]) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&value);
    }

    /// Recomputes the header checksum over the current header (IHL must be set first).
    pub fn fill_checksum(&mut self) {
        let header_len = self.header_len().min(self.buffer.as_ref().len());
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&[0, 0]);
        let sum = super::checksum::sum(&self.buffer.as_ref()[..header_len]);
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&(!sum).to_be_bytes());
    }
}

fn be16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

fn addr(bytes: &[u8]) -> [u8; 4] {
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuple::{Addr, Family, ipproto};
    use crate::wire::{L3Info, build, parse_embedded_l3, parse_l3};

    /// The IPv4 header of a SYN from 127.0.0.1:40001 to 127.0.0.1:5001 on loopback, as
    /// `tcpdump -i lo -xx` shows it on Linux 6.x: DF set, TTL 64, total length 60 (20 + a
    /// 40-byte TCP header with MSS, SACK-permitted, timestamps and window scale).
    const LOOPBACK_SYN_HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x3c, 0x5a, 0x1e, 0x40, 0x00, 0x40, 0x06, 0xe2, 0x9b, 0x7f, 0x00, 0x00,
        0x01, 0x7f, 0x00, 0x00, 0x01,
    ];

    fn loopback_syn() -> Vec<u8> {
        let mut packet = LOOPBACK_SYN_HEADER.to_vec();
        packet.extend_from_slice(&crate::wire::tcp::tests::LOOPBACK_SYN_TCP);
        packet
    }

    #[test]
    fn parses_a_loopback_syn_header() {
        let packet = Packet::new_checked(&LOOPBACK_SYN_HEADER[..]).unwrap();
        assert_eq!(packet.version(), 4);
        assert_eq!(packet.header_len(), 20);
        assert_eq!(packet.total_len(), 60);
        assert_eq!(packet.ident(), 0x5a1e);
        assert!(packet.dont_frag());
        assert!(!packet.more_frags());
        assert_eq!(packet.frag_offset(), 0);
        assert_eq!(packet.ttl(), 64);
        assert_eq!(packet.protocol(), ipproto::TCP);
        assert_eq!(packet.src_addr(), [127, 0, 0, 1]);
        assert_eq!(packet.dst_addr(), [127, 0, 0, 1]);
        assert!(packet.verify_checksum());
        assert!(packet.options().is_empty());
        // The capture holds only the header: the payload is cut, not an error.
        assert!(packet.payload().is_empty());
    }

    #[test]
    fn parse_l3_summarises_the_loopback_syn() {
        let packet = loopback_syn();
        assert_eq!(
            parse_l3(&packet),
            Ok(L3Info {
                family: Family::Ipv4,
                src: Addr::v4([127, 0, 0, 1]),
                dst: Addr::v4([127, 0, 0, 1]),
                proto: ipproto::TCP,
                l4_offset: 20,
                l4_len: 40,
                wire_len: 60,
                first_fragment: false,
            })
        );
    }

    #[test]
    fn the_builder_emits_the_same_header_fields() {
        let packet = build::ipv4([127, 0, 0, 1], [127, 0, 0, 1], ipproto::TCP, &[0; 40]);
        let view = Packet::new_checked(&packet[..]).unwrap();
        assert_eq!(view.total_len(), 60);
        assert_eq!(view.ttl(), 64);
        assert!(view.verify_checksum());
        // Everything but identification, DF (the builder leaves it clear) and checksum matches.
        assert_eq!(packet[..4], LOOPBACK_SYN_HEADER[..4]);
        assert_eq!(packet[8..10], LOOPBACK_SYN_HEADER[8..10]);
        assert_eq!(packet[12..20], LOOPBACK_SYN_HEADER[12..20]);
    }

    #[test]
    fn options_move_the_l4_header() {
        let mut packet = vec![
            0x46, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        packet.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
        packet.extend_from_slice(&build::udp(1000, 2000, 0));
        let view = Packet::new_checked(&packet[..]).unwrap();
        assert_eq!(view.options(), &[1, 1, 1, 0]);
        let info = parse_l3(&packet).unwrap();
        assert_eq!(
            (info.l4_offset, info.l4_len, info.proto),
            (24, 8, ipproto::UDP)
        );
    }

    #[test]
    fn truncated_headers_are_refused() {
        let packet = loopback_syn();
        for end in 0..20 {
            assert_eq!(
                Packet::new_checked(&packet[..end]),
                Err(WireError::Truncated)
            );
            assert_eq!(parse_l3(&packet[..end]).unwrap_err(), WireError::Truncated);
        }
        // IHL 6 but only 20 bytes.
        let mut long_ihl = LOOPBACK_SYN_HEADER;
        long_ihl[0] = 0x46;
        assert_eq!(parse_l3(&long_ihl), Err(WireError::Truncated));
        assert_eq!(parse_embedded_l3(&long_ihl), Err(WireError::Truncated));
    }

    #[test]
    fn an_ihl_below_five_is_refused() {
        for ihl in 0..5 {
            let mut packet = loopback_syn();
            packet[0] = 0x40 | ihl;
            assert_eq!(parse_l3(&packet), Err(WireError::BadHeaderLength));
            assert_eq!(parse_embedded_l3(&packet), Err(WireError::BadHeaderLength));
        }
    }

    #[test]
    fn a_total_length_below_the_header_is_refused() {
        let mut packet = loopback_syn();
        packet[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(parse_l3(&packet), Err(WireError::BadTotalLength));
        assert!(
            Packet::new_checked(&packet[..])
                .unwrap()
                .payload()
                .is_empty()
        );
    }

    #[test]
    fn fragments() {
        let mut packet = build::ipv4(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            ipproto::UDP,
            &build::udp(1, 2, 40),
        );
        build::set_ipv4_fragment(&mut packet, 0, true);
        let info = parse_l3(&packet).unwrap();
        assert!(info.first_fragment);

        build::set_ipv4_fragment(&mut packet, 1480, false);
        let view = Packet::new_checked(&packet[..]).unwrap();
        assert_eq!(view.frag_offset(), 1480);
        assert!(view.verify_checksum());
        assert_eq!(parse_l3(&packet), Err(WireError::NonFirstFragment));
        assert_eq!(parse_embedded_l3(&packet), Err(WireError::NonFirstFragment));
    }

    #[test]
    fn the_wrong_version_is_refused() {
        let mut packet = loopback_syn();
        packet[0] = 0x65;
        // Read as IPv6 it is too short for a 40-byte header.
        assert_eq!(parse_l3(&packet[..39]), Err(WireError::Truncated));
        packet[0] = 0x35;
        assert_eq!(parse_l3(&packet), Err(WireError::BadVersion));
    }
}
