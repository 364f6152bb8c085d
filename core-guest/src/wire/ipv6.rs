//! IPv6 headers (RFC 8200) and the walk over their extension headers.
//!
//! Unlike IPv4, the protocol field of an IPv6 header does not always name the transport: hop-by-hop
//! options, routing, fragment, destination options and AH headers may sit in between, each
//! naming the next. Conntrack keys on the final protocol and must refuse non-first fragments
//! (they have no L4 header), so the walk lives here, bounded, once, for both the outer packet and
//! the one quoted in an ICMPv6 error.

use super::WireError;

mod field {
    use core::ops::Range;

    pub(super) const VER_TC_FLOW: Range<usize> = 0..4;
    pub(super) const PAYLOAD_LEN: Range<usize> = 4..6;
    pub(super) const NEXT_HEADER: usize = 6;
    pub(super) const HOP_LIMIT: usize = 7;
    pub(super) const SRC_ADDR: Range<usize> = 8..24;
    pub(super) const DST_ADDR: Range<usize> = 24..40;

    /// In every extension header walked here: the next header, then a length byte.
    pub(super) const EXT_NEXT_HEADER: usize = 0;
    pub(super) const EXT_LEN: usize = 1;
    /// In a fragment header: offset (13 bits), two reserved bits, more-fragments.
    pub(super) const FRAG_OFFSET_FLAGS: Range<usize> = 2..4;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// At most this many extension headers are walked; a longer chain is refused. Real traffic uses
/// one or two; the bound keeps a crafted chain from costing more than a few reads.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// Extension header numbers the walk knows how to skip.
pub mod ext {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTH: u8 = 51;
    pub const DEST_OPTIONS: u8 = 60;
    /// "No next header": the chain ends with no upper layer.
    pub const NO_NEXT_HEADER: u8 = 59;
}

/// A read (and, over a mutable buffer, write) view of the fixed IPv6 header.
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

    /// The 40-byte fixed header is in the buffer. The payload length is not checked (captures
    /// cut payloads); [`Packet::payload`] cuts to the buffer.
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn ver_tc_flow(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn version(&self) -> u8 {
        (self.ver_tc_flow() >> 28) as u8
    }

    pub fn traffic_class(&self) -> u8 {
        (self.ver_tc_flow() >> 20) as u8
    }

    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow() & 0x000f_ffff
    }

    /// Bytes after the fixed header, extension headers included.
    pub fn payload_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::PAYLOAD_LEN];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The header after the fixed one: an extension header or the upper layer.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> [u8; 16] {
        addr(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    pub fn dst_addr(&self) -> [u8; 16] {
        addr(&self.buffer.as_ref()[field::DST_ADDR])
    }

    /// The bytes after the fixed header present in the buffer, up to the payload length.
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let end = (HEADER_LEN + usize::from(self.payload_len())).min(data.len());
        &data[HEADER_LEN..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 6, the traffic class and the flow label (its low 20 bits).
    pub fn set_version_tc_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let value = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_payload_len(&mut self, value: u16) {
        self.buffer.as_mut()[field::PAYLOAD_LEN].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_next_header(&mut self, value: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = value;
    }

    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = value;
    }

    pub fn set_src_addr(&mut self, value: [u8; 16]) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&value);
    }

    pub fn set_dst_addr(&mut self, value: [u8; 16]) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&value);
    }
}

/// Where an extension header chain led.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtensionChain {
    /// The upper-layer protocol (or 59, or a header the walk does not skip, such as ESP).
    pub proto: u8,
    /// Offset of the upper-layer header from the start of the IPv6 header.
    pub l4_offset: usize,
    /// How many extension headers were skipped.
    pub count: usize,
    /// A fragment header with offset 0 and more-fragments set was seen.
    pub first_fragment: bool,
}

/// Whether the walk skips headers of this number.
pub fn is_extension_header(next_header: u8) -> bool {
    matches!(
        next_header,
        ext::HOP_BY_HOP | ext::ROUTING | ext::FRAGMENT | ext::AUTH | ext::DEST_OPTIONS
    )
}

/// The total length of an extension header of kind `kind` whose length byte is `len_byte`:
/// fragment headers are 8 bytes, AH counts 4-octet units minus 2, the others 8-octet units not
/// counting the first.
fn extension_header_len(kind: u8, len_byte: u8) -> usize {
    match kind {
        ext::FRAGMENT => 8,
        ext::AUTH => (usize::from(len_byte) + 2) * 4,
        _ => (usize::from(len_byte) + 1) * 8,
    }
}

/// Walks the extension headers of the IPv6 packet in `packet` (starting at its fixed header),
/// whose fixed header names `first` as the next header.
///
/// Every skipped header must be complete in the buffer (else `Truncated`); at most
/// [`MAX_EXTENSION_HEADERS`] are skipped (else `ExtensionChainTooLong`); a fragment header with a
/// non-zero offset is `NonFirstFragment`. Whether the chain fits in the payload length is the
/// caller's call.
pub fn walk_extension_headers(packet: &[u8], first: u8) -> Result<ExtensionChain, WireError> {
    let mut proto = first;
    let mut offset = HEADER_LEN;
    let mut count = 0;
    let mut first_fragment = false;
    while is_extension_header(proto) {
        if count == MAX_EXTENSION_HEADERS {
            return Err(WireError::ExtensionChainTooLong);
        }
        let header = packet.get(offset..).ok_or(WireError::Truncated)?;
        if header.len() < 2 {
            return Err(WireError::Truncated);
        }
        let next = header[field::EXT_NEXT_HEADER];
        let len_byte = header[field::EXT_LEN];
        let len = extension_header_len(proto, len_byte);
        if header.len() < len {
            return Err(WireError::Truncated);
        }
        if proto == ext::FRAGMENT {
            let b = &header[field::FRAG_OFFSET_FLAGS];
            let value = u16::from_be_bytes([b[0], b[1]]);
            if value >> 3 != 0 {
                return Err(WireError::NonFirstFragment);
            }
            first_fragment |= value & 1 != 0;
        }
        proto = next;
        offset += len;
        count += 1;
    }
    Ok(ExtensionChain {
        proto,
        l4_offset: offset,
        count,
        first_fragment,
    })
}

/// Where a packet's fragment header is, and what it says (see [`find_fragment_header`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentHeader {
    /// Offset of the byte that names the fragment header as the next header: 6 in the fixed
    /// header, or the first byte of the extension header before it.
    pub next_header_at: usize,
    /// Offset of the fragment header itself; the fragment's data starts 8 bytes after it.
    pub at: usize,
    /// The header after the fragment header (of the reassembled datagram).
    pub next_header: u8,
    /// The fragment's offset in bytes.
    pub offset: u16,
    pub more_frags: bool,
    pub ident: u32,
}

/// The fragment header of an IPv6 packet, as the kernel's defragmentation finds it: past the
/// hop-by-hop, routing, destination options and authentication headers only (the part no
/// fragment may split), each complete in the buffer, at most [`MAX_EXTENSION_HEADERS`] of them.
/// `None` when the packet has none (the walk reached an upper-layer header), or when the
/// headers before it are cut short.
pub fn find_fragment_header(packet: &[u8]) -> Option<FragmentHeader> {
    let mut kind = *packet.get(field::NEXT_HEADER)?;
    let mut next_header_at = field::NEXT_HEADER;
    let mut at = HEADER_LEN;
    for _ in 0..MAX_EXTENSION_HEADERS {
        let header = packet.get(at..)?;
        if kind == ext::FRAGMENT {
            let h = header.get(..8)?;
            let offset_flags = u16::from_be_bytes([h[2], h[3]]);
            return Some(FragmentHeader {
                next_header_at,
                at,
                next_header: h[0],
                offset: offset_flags & !7,
                more_frags: offset_flags & 1 != 0,
                ident: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            });
        }
        if !is_extension_header(kind) || header.len() < 2 {
            return None;
        }
        let len = extension_header_len(kind, header[field::EXT_LEN]);
        if header.len() < len {
            return None;
        }
        next_header_at = at;
        kind = header[field::EXT_NEXT_HEADER];
        at += len;
    }
    None
}

fn addr(bytes: &[u8]) -> [u8; 16] {
    let mut out = [0; 16];
    out.copy_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuple::{Addr, Family, ipproto};
    use crate::wire::{L3Info, build, parse_embedded_l3, parse_l3};

    /// An ICMPv6 echo request from ::1 to ::1 (`ping -6 -c1 ::1`, `tcpdump -i lo -xx`): flow label
    /// 0x12345, payload 16 bytes, hop limit 64. The ICMPv6 part is 8 bytes of header and
    /// 8 bytes of data.
    const LOOPBACK_PING6: [u8; 56] = [
        0x60, 0x01, 0x23, 0x45, 0x00, 0x10, 0x3a,
        0x40, // version, flow, length 16, ICMPv6, 64
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, // ::1
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, // ::1
        0x80, 0x00, 0xed, 0xf2, 0x00, 0x2a, 0x00, 0x01, // echo request, id 42, seq 1
        0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, // "abcdefgh"
    ];

    const LOOPBACK: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    #[test]
    fn parses_a_loopback_ping() {
        let packet = Packet::new_checked(&LOOPBACK_PING6[..]).unwrap();
        assert_eq!(packet.version(), 6);
        assert_eq!(packet.traffic_class(), 0);
        assert_eq!(packet.flow_label(), 0x12345);
        assert_eq!(packet.payload_len(), 16);
        assert_eq!(packet.next_header(), ipproto::ICMPV6);
        assert_eq!(packet.hop_limit(), 64);
        assert_eq!(packet.src_addr(), LOOPBACK);
        assert_eq!(packet.dst_addr(), LOOPBACK);
        assert_eq!(packet.payload(), &LOOPBACK_PING6[40..]);
        assert_eq!(
            parse_l3(&LOOPBACK_PING6),
            Ok(L3Info {
                family: Family::Ipv6,
                src: Addr::v6(LOOPBACK),
                dst: Addr::v6(LOOPBACK),
                proto: ipproto::ICMPV6,
                l4_offset: 40,
                l4_len: 16,
                wire_len: 56,
                first_fragment: false,
            })
        );
    }

    #[test]
    fn the_builder_reproduces_the_capture() {
        let mut packet = build::ipv6(LOOPBACK, LOOPBACK, ipproto::ICMPV6, &LOOPBACK_PING6[40..]);
        Packet::new_unchecked(&mut packet[..]).set_version_tc_flow(0, 0x12345);
        // The builder also recomputes the ICMPv6 checksum: the capture's must come out.
        assert_eq!(packet, LOOPBACK_PING6);
    }

    #[test]
    fn extension_headers_are_walked() {
        let chain = [
            (ext::HOP_BY_HOP, vec![5, 2, 0, 0, 1, 0]), // router alert, PadN
            (ext::DEST_OPTIONS, vec![]),
            (ext::ROUTING, vec![0, 0, 0, 0, 0, 0]),
            (ext::FRAGMENT, build::ipv6_fragment_body(0, true, 7)),
            (ext::AUTH, vec![0; 14]),
        ];
        let udp = build::udp(1, 2, 4);
        let packet = build::ipv6_with_ext(LOOPBACK, LOOPBACK, &chain, ipproto::UDP, &udp);
        let info = parse_l3(&packet).unwrap();
        assert_eq!(info.proto, ipproto::UDP);
        assert_eq!(info.l4_offset, 40 + 8 + 8 + 8 + 8 + 16);
        assert_eq!(info.l4_len, 12);
        assert_eq!(info.wire_len as usize, packet.len());
        assert!(info.first_fragment);
        assert_eq!(
            walk_extension_headers(&packet, ext::HOP_BY_HOP)
                .unwrap()
                .count,
            5
        );
    }

    #[test]
    fn an_atomic_fragment_is_not_a_first_fragment() {
        let chain = [(ext::FRAGMENT, build::ipv6_fragment_body(0, false, 7))];
        let packet = build::ipv6_with_ext(
            LOOPBACK,
            LOOPBACK,
            &chain,
            ipproto::UDP,
            &build::udp(1, 2, 0),
        );
        assert!(!parse_l3(&packet).unwrap().first_fragment);
    }

    #[test]
    fn a_non_first_fragment_is_refused() {
        let chain = [(ext::FRAGMENT, build::ipv6_fragment_body(1448, false, 7))];
        let packet = build::ipv6_with_ext(LOOPBACK, LOOPBACK, &chain, ipproto::UDP, &[0; 20]);
        assert_eq!(parse_l3(&packet), Err(WireError::NonFirstFragment));
        assert_eq!(parse_embedded_l3(&packet), Err(WireError::NonFirstFragment));
    }

    #[test]
    fn the_chain_is_bounded() {
        let chain = vec![(ext::DEST_OPTIONS, vec![]); MAX_EXTENSION_HEADERS];
        let packet = build::ipv6_with_ext(
            LOOPBACK,
            LOOPBACK,
            &chain,
            ipproto::UDP,
            &build::udp(1, 2, 0),
        );
        assert_eq!(
            parse_l3(&packet).unwrap().l4_offset,
            40 + 8 * MAX_EXTENSION_HEADERS
        );

        let chain = vec![(ext::DEST_OPTIONS, vec![]); MAX_EXTENSION_HEADERS + 1];
        let packet = build::ipv6_with_ext(
            LOOPBACK,
            LOOPBACK,
            &chain,
            ipproto::UDP,
            &build::udp(1, 2, 0),
        );
        assert_eq!(parse_l3(&packet), Err(WireError::ExtensionChainTooLong));
        assert_eq!(
            parse_embedded_l3(&packet),
            Err(WireError::ExtensionChainTooLong)
        );
    }

    #[test]
    fn no_next_header_and_esp_end_the_walk() {
        let packet = build::ipv6(LOOPBACK, LOOPBACK, ext::NO_NEXT_HEADER, &[]);
        assert_eq!(parse_l3(&packet).unwrap().proto, 59);
        let chain = [(ext::HOP_BY_HOP, vec![])];
        let packet = build::ipv6_with_ext(LOOPBACK, LOOPBACK, &chain, 50, &[0; 16]);
        let info = parse_l3(&packet).unwrap();
        assert_eq!((info.proto, info.l4_offset, info.l4_len), (50, 48, 16));
    }

    #[test]
    fn truncated_headers_are_refused() {
        for end in 0..40 {
            assert_eq!(parse_l3(&LOOPBACK_PING6[..end]), Err(WireError::Truncated));
        }
        // The payload may be cut, the headers may not.
        assert_eq!(parse_l3(&LOOPBACK_PING6[..44]).unwrap().l4_len, 4);
        let chain = [(ext::ROUTING, vec![0; 14])];
        let packet = build::ipv6_with_ext(
            LOOPBACK,
            LOOPBACK,
            &chain,
            ipproto::UDP,
            &build::udp(1, 2, 0),
        );
        for end in 40..56 {
            assert_eq!(
                parse_l3(&packet[..end]),
                Err(WireError::Truncated),
                "cut at {end}"
            );
            assert_eq!(parse_embedded_l3(&packet[..end]), Err(WireError::Truncated));
        }
        assert_eq!(parse_l3(&packet[..56]).unwrap().l4_len, 0);
    }

    #[test]
    fn extension_headers_past_the_payload_length_are_refused_outside_only() {
        let chain = [(ext::HOP_BY_HOP, vec![])];
        let mut packet = build::ipv6_with_ext(
            LOOPBACK,
            LOOPBACK,
            &chain,
            ipproto::UDP,
            &build::udp(1, 2, 0),
        );
        Packet::new_unchecked(&mut packet[..]).set_payload_len(4);
        assert_eq!(parse_l3(&packet), Err(WireError::BadTotalLength));
        let info = parse_embedded_l3(&packet).unwrap();
        assert_eq!((info.l4_offset, info.l4_len, info.wire_len), (48, 8, 44));
    }

    #[test]
    fn the_wrong_version_is_refused() {
        let mut packet = LOOPBACK_PING6;
        packet[0] = 0x70;
        assert_eq!(parse_l3(&packet), Err(WireError::BadVersion));
    }
}
