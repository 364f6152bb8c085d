//! The wire layer: zero-copy views of IPv4, IPv6, TCP, UDP, ICMP and ICMPv6 headers.
//!
//! Everything the engine learns about a packet it learns here, and every packet it sees is
//! untrusted: it comes from a capture file, from a live socket, or from inside an ICMP error that
//! some router on the path quoted. So this layer is built around one promise.
//!
//! # The panic contract
//!
//! Each protocol has a view `Packet<T: AsRef<[u8]>>` over a byte buffer, with its field offsets
//! as `const` ranges in a private `mod field`. `Packet::new_checked` calls `check_len`, which
//! validates exactly what the accessors rely on (the buffer holds the fixed header, the header
//! length fields point inside the buffer). **Once `check_len` has passed, no accessor panics**,
//! whatever the bytes are. `new_unchecked` exists for buffers the code built itself (emit,
//! builders); untrusted input must go through `new_checked`, [`parse_l3`] or
//! [`parse_embedded_l3`]. Accessors return raw field values; judging them (is this TCP flag
//! combination valid? is this UDP length sane?) is the trackers' job, not the wire layer's.
//!
//! ICMP and ICMPv6 lay their header out alike, so they share one view, [`icmp_header::Packet`];
//! [`icmp::Packet`] and [`icmpv6::Packet`] are that view with each family's types filled in, and
//! only the type predicates, the checksum and the `Repr`s are written per family.
//!
//! # Layer 3 in one call
//!
//! The engine does not walk IP headers itself: [`parse_l3`] turns an outer packet into an
//! [`L3Info`] (addresses, final protocol after IPv6 extension headers, where the L4 header is,
//! how many of its bytes are present, how long the packet was on the wire), and
//! [`parse_embedded_l3`] does the same, more leniently, for the packet quoted in an ICMP error.
//! Captures often cut payloads (snaplen), so the buffer may be shorter than the IP length says;
//! only the headers must be complete. The lengths the engine counts come from the IP header
//! (`wire_len`), not from the buffer.
//!
//! # Errors
//!
//! One small `Copy` error type, [`WireError`]: the packet path never allocates to report an error.
//!
//! # Checksums
//!
//! Nothing here verifies a checksum: captures of loopback traffic carry offloaded (unfilled)
//! checksums, and conntrack does not drop on them by default either. [`checksum`] computes them
//! for the emitters and the [`build`] helpers.

use core::fmt;

use crate::tuple::{Addr, Family};

pub mod build;
pub mod icmp;
pub mod icmp_header;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod sctp;
pub mod tcp;
pub mod udp;

/// Why a buffer could not be read as the protocol asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// The buffer ends before a header that must be complete.
    Truncated,
    /// The IP version nibble is neither 4 nor 6.
    BadVersion,
    /// A header length field (IPv4 IHL, TCP data offset) is below the minimum or past the buffer.
    BadHeaderLength,
    /// The IP total/payload length is smaller than the headers it must contain.
    BadTotalLength,
    /// A fragment other than the first: it carries no L4 header, conntrack cannot track it.
    NonFirstFragment,
    /// More IPv6 extension headers than [`ipv6::MAX_EXTENSION_HEADERS`].
    ExtensionChainTooLong,
    /// Any other inconsistency.
    Malformed,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            WireError::Truncated => "truncated packet",
            WireError::BadVersion => "unknown IP version",
            WireError::BadHeaderLength => "bad header length",
            WireError::BadTotalLength => "bad IP total length",
            WireError::NonFirstFragment => "non-first fragment",
            WireError::ExtensionChainTooLong => "IPv6 extension header chain too long",
            WireError::Malformed => "malformed packet",
        };
        f.write_str(text)
    }
}

impl std::error::Error for WireError {}

/// What the engine needs from the network layer of one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L3Info {
    pub family: Family,
    pub src: Addr,
    pub dst: Addr,
    /// The final upper-layer protocol, after any IPv6 extension headers.
    pub proto: u8,
    /// Offset of the L4 header in the buffer.
    pub l4_offset: usize,
    /// Bytes of L4 header and payload present in the buffer: the IP length, cut to the buffer.
    pub l4_len: usize,
    /// The packet's length as its IP header says (IPv4 total length, IPv6 40 + payload length):
    /// the length byte counters use, because captures may cut payloads.
    pub wire_len: u32,
    /// A first fragment (offset 0, more-fragments set): its L4 header is there, the rest of the
    /// datagram follows in fragments this engine will refuse.
    pub first_fragment: bool,
}

impl L3Info {
    /// The L4 bytes present in `buf` (the buffer this info was parsed from).
    ///
    /// Returns an empty slice rather than panicking if handed a different, shorter buffer.
    pub fn l4<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        let end = self.l4_offset.saturating_add(self.l4_len);
        buf.get(self.l4_offset..end).unwrap_or(&[])
    }

    /// The L4 length as the IP header says (header and payload, cut payloads included): what
    /// `tcp::Packet::payload_len` wants to compute sequence-space lengths.
    pub fn l4_wire_len(&self) -> usize {
        (self.wire_len as usize).saturating_sub(self.l4_offset)
    }
}

/// How strictly the IP lengths are checked against the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strictness {
    /// An outer packet: the IP length must cover the headers.
    Outer,
    /// A packet quoted in an ICMP error: the lengths are whatever the router quoted.
    Embedded,
}

/// Strict parse of an outer packet.
///
/// The version nibble selects the family. IPv4: IHL at least 5 and complete in the buffer, total
/// length at least the header length, header checksum *not* verified. IPv6: the extension headers
/// hop-by-hop (0), routing (43), fragment (44), destination options (60) and AH (51) are walked,
/// at most [`ipv6::MAX_EXTENSION_HEADERS`] of them, each complete in the buffer and inside the
/// payload length. A non-first fragment is `Err(NonFirstFragment)`.
///
/// The buffer may be shorter than the IP length (a capture's snaplen cut the payload) as long as
/// the L3 headers are complete; a buffer longer than the IP length is trimmed to it (Ethernet
/// padding), which `l4_len` reflects.
pub fn parse_l3(buf: &[u8]) -> Result<L3Info, WireError> {
    parse(buf, Strictness::Outer)
}

/// Lenient parse of the packet quoted inside an ICMP or ICMPv6 error.
///
/// Same as [`parse_l3`], except that the IP total/payload length is not checked at all: routers
/// quote only the first bytes of the offending packet (the L4 part may be just 8 bytes), and some
/// rewrite the quoted length. Only the L3 headers must be complete. `l4_len` is the buffer after
/// the headers, cut to the quoted IP length when that length is plausible.
pub fn parse_embedded_l3(buf: &[u8]) -> Result<L3Info, WireError> {
    parse(buf, Strictness::Embedded)
}

fn parse(buf: &[u8], strictness: Strictness) -> Result<L3Info, WireError> {
    let first = *buf.first().ok_or(WireError::Truncated)?;
    match first >> 4 {
        4 => parse_ipv4(buf, strictness),
        6 => parse_ipv6(buf, strictness),
        _ => Err(WireError::BadVersion),
    }
}

fn parse_ipv4(buf: &[u8], strictness: Strictness) -> Result<L3Info, WireError> {
    let packet = ipv4::Packet::new_checked(buf)?;
    let header_len = packet.header_len();
    let total_len = usize::from(packet.total_len());
    if strictness == Strictness::Outer && total_len < header_len {
        return Err(WireError::BadTotalLength);
    }
    if packet.frag_offset() != 0 {
        return Err(WireError::NonFirstFragment);
    }
    Ok(L3Info {
        family: Family::Ipv4,
        src: Addr::v4(packet.src_addr()),
        dst: Addr::v4(packet.dst_addr()),
        proto: packet.protocol(),
        l4_offset: header_len,
        l4_len: present_l4_len(buf.len(), header_len, total_len),
        wire_len: u32::from(packet.total_len()),
        first_fragment: packet.more_frags(),
    })
}

fn parse_ipv6(buf: &[u8], strictness: Strictness) -> Result<L3Info, WireError> {
    let packet = ipv6::Packet::new_checked(buf)?;
    let ip_end = ipv6::HEADER_LEN + usize::from(packet.payload_len());
    let chain = ipv6::walk_extension_headers(buf, packet.next_header())?;
    if strictness == Strictness::Outer && chain.l4_offset > ip_end {
        return Err(WireError::BadTotalLength);
    }
    Ok(L3Info {
        family: Family::Ipv6,
        src: Addr::v6(packet.src_addr()),
        dst: Addr::v6(packet.dst_addr()),
        proto: chain.proto,
        l4_offset: chain.l4_offset,
        l4_len: present_l4_len(buf.len(), chain.l4_offset, ip_end),
        wire_len: ip_end as u32,
        first_fragment: chain.first_fragment,
    })
}

/// The L4 bytes present: from `l4_offset` to the IP end, cut to the buffer. An IP end before
/// the L4 header (only reachable for quoted packets) is ignored: the buffer is all there is.
fn present_l4_len(buf_len: usize, l4_offset: usize, ip_end: usize) -> usize {
    let end = if ip_end >= l4_offset {
        ip_end.min(buf_len)
    } else {
        buf_len
    };
    end.saturating_sub(l4_offset)
}

/// The Internet checksum (RFC 1071) and SCTP's CRC32c, for emitters and builders and for the
/// checks `proto::checksum` makes on packets that arrived unverified.
pub mod checksum {
    use crate::tuple::ipproto;

    /// The ones' complement sum of `data` as big-endian 16-bit words, folded to 16 bits (an odd
    /// trailing byte is padded with zero).
    pub fn sum(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        let mut words = data.chunks_exact(2);
        for word in &mut words {
            acc += u32::from(u16::from_be_bytes([word[0], word[1]]));
        }
        if let [last] = words.remainder() {
            acc += u32::from(*last) << 8;
        }
        fold(acc)
    }

    /// Ones' complement addition of already folded sums.
    pub fn combine(sums: &[u16]) -> u16 {
        fold(sums.iter().map(|s| u32::from(*s)).sum())
    }

    fn fold(mut acc: u32) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    /// The folded sum of the TCP/UDP/ICMPv6 pseudo-header (RFC 793, RFC 8200 §8.1). `src` and
    /// `dst` are 4 bytes for IPv4 and 16 for IPv6.
    pub fn pseudo_header(src: &[u8], dst: &[u8], proto: u8, l4_len: u32) -> u16 {
        let len = if src.len() == 4 {
            // IPv4 carries a 16-bit length; larger values cannot occur in a valid packet.
            sum(&(l4_len as u16).to_be_bytes())
        } else {
            sum(&l4_len.to_be_bytes())
        };
        combine(&[sum(src), sum(dst), u16::from(proto), len])
    }

    /// CRC32c (Castagnoli, reflected, as SCTP and iSCSI use it), for the SCTP builders and for
    /// verifying arriving SCTP packets. Written here rather than taken from a crate: a table
    /// made at compile time is a dozen lines, and it runs only on packets that arrived
    /// unverified, byte by byte being fast enough for that.
    pub fn crc32c(data: &[u8]) -> u32 {
        crc32c_parts(&[data])
    }

    /// CRC32c over `parts` one after the other, as if they were one buffer (SCTP's check runs
    /// over the packet with its checksum field read as zeros).
    pub fn crc32c_parts(parts: &[&[u8]]) -> u32 {
        const TABLE: [u32; 256] = {
            let mut table = [0u32; 256];
            let mut i = 0;
            while i < 256 {
                let mut crc = i as u32;
                let mut bit = 0;
                while bit < 8 {
                    crc = if crc & 1 != 0 {
                        (crc >> 1) ^ 0x82f6_3b78
                    } else {
                        crc >> 1
                    };
                    bit += 1;
                }
                table[i] = crc;
                i += 1;
            }
            table
        };
        !parts.iter().flat_map(|p| p.iter()).fold(!0u32, |crc, b| {
            TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8)
        })
    }

    /// The value to store in a checksum field: the complement of the sum. UDP stores 0xffff for a
    /// computed 0, since 0 there means "no checksum".
    pub fn finish(sum: u16, proto: u8) -> u16 {
        match !sum {
            0 if proto == ipproto::UDP => 0xffff,
            value => value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuple::ipproto;
    use proptest::prelude::*;

    const V4_SRC: [u8; 4] = [192, 0, 2, 1];
    const V4_DST: [u8; 4] = [198, 51, 100, 7];
    const V6_SRC: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const V6_DST: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    /// A set of valid packets covering every view: the fuzzing seeds.
    fn valid_packets() -> Vec<Vec<u8>> {
        let syn_options = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let tcp_syn = build::tcp_with_options(
            40001,
            5001,
            1,
            0,
            tcp::TcpFlags::SYN.bits(),
            65495,
            &syn_options,
            0,
        );
        let tcp_data = build::tcp(40001, 5001, 2, 9, 0x18, 512, 30);
        let udp = build::udp(53, 5353, 12);
        let echo4 = build::icmp_echo(true, 7, 1);
        let echo6 = build::icmpv6_echo(false, 7, 1);
        let inner4 = build::ipv4(V4_DST, V4_SRC, ipproto::UDP, &udp);
        let inner6 = build::ipv6(V6_DST, V6_SRC, ipproto::TCP, &tcp_syn);
        let error4 = build::icmp_error(3, 3, &inner4[..28]);
        let error6 = build::icmpv6_error(1, 4, &inner6[..48]);
        let hop_by_hop = vec![(0u8, vec![1, 4, 0, 0, 0, 0])];
        let chain = vec![
            (0u8, vec![]),
            (60u8, vec![]),
            (43u8, vec![0, 0, 0, 0, 0, 0]),
            (44u8, build::ipv6_fragment_body(0, true, 0x1234)),
            (51u8, vec![0; 14]),
        ];
        vec![
            build::ipv4(V4_SRC, V4_DST, ipproto::TCP, &tcp_syn),
            build::ipv4(V4_SRC, V4_DST, ipproto::TCP, &tcp_data),
            build::ipv4(V4_SRC, V4_DST, ipproto::UDP, &udp),
            build::ipv4(V4_SRC, V4_DST, ipproto::ICMP, &echo4),
            build::ipv4(V4_SRC, V4_DST, ipproto::ICMP, &error4),
            build::ipv6(V6_SRC, V6_DST, ipproto::TCP, &tcp_syn),
            build::ipv6(V6_SRC, V6_DST, ipproto::UDP, &udp),
            build::ipv6(V6_SRC, V6_DST, ipproto::ICMPV6, &echo6),
            build::ipv6(V6_SRC, V6_DST, ipproto::ICMPV6, &error6),
            build::ipv6_with_ext(V6_SRC, V6_DST, &hop_by_hop, ipproto::ICMPV6, &echo6),
            build::ipv6_with_ext(V6_SRC, V6_DST, &chain, ipproto::TCP, &tcp_data),
        ]
    }

    /// Touches every accessor a tracker may call, recursing once into ICMP errors.
    fn exercise(buf: &[u8], depth: u8) {
        for info in [parse_l3(buf), parse_embedded_l3(buf)]
            .into_iter()
            .flatten()
        {
            let _ = info.l4_wire_len();
            exercise_l4(info.proto, info.l4(buf), depth);
        }
        for proto in [ipproto::TCP, ipproto::UDP, ipproto::ICMP, ipproto::ICMPV6] {
            exercise_l4(proto, buf, depth);
        }
    }

    fn exercise_l4(proto: u8, l4: &[u8], depth: u8) {
        let _ = tcp::ports(l4);
        match proto {
            ipproto::TCP => {
                if let Ok(packet) = tcp::Packet::new_checked(l4) {
                    let repr = tcp::Repr::parse(&packet);
                    let _ = (
                        packet.seq_number(),
                        packet.ack_number(),
                        packet.window_len(),
                    );
                    let _ = (
                        packet.checksum(),
                        packet.urgent_at(),
                        packet.payload().len(),
                    );
                    let _ = packet.payload_len(l4.len() + 3);
                    let _ = packet.options().count();
                    let mut out = vec![0; repr.buffer_len()];
                    repr.emit(&mut out);
                    assert!(tcp::Packet::new_checked(&out[..]).is_ok());
                }
            }
            ipproto::UDP => {
                if let Ok(packet) = udp::Packet::new_checked(l4) {
                    let repr = udp::Repr::parse(&packet);
                    let _ = (packet.len(), packet.checksum(), packet.payload().len());
                    let mut out = vec![0; repr.buffer_len()];
                    repr.emit(&mut out);
                }
            }
            ipproto::ICMP => {
                if let Ok(packet) = icmp::Packet::new_checked(l4) {
                    let _ = (packet.echo_ident(), packet.echo_seq_no(), packet.checksum());
                    let repr = icmp::Repr::parse(&packet);
                    let mut out = vec![0; repr.buffer_len()];
                    repr.emit(&mut out);
                    if let (Some(inner), 0) = (packet.embedded(), depth) {
                        exercise(inner, depth + 1);
                    }
                }
            }
            ipproto::ICMPV6 => {
                if let Ok(packet) = icmpv6::Packet::new_checked(l4) {
                    let _ = (packet.echo_ident(), packet.echo_seq_no(), packet.checksum());
                    let _ = packet.is_untracked_type();
                    let repr = icmpv6::Repr::parse(&packet);
                    let mut out = vec![0; repr.buffer_len()];
                    repr.emit(&mut out);
                    if let (Some(inner), 0) = (packet.embedded(), depth) {
                        exercise(inner, depth + 1);
                    }
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_seed_parses_strictly() {
        for packet in valid_packets() {
            let info = parse_l3(&packet).unwrap();
            assert_eq!(info.l4_offset + info.l4_len, packet.len());
            assert_eq!(info.wire_len as usize, packet.len());
        }
    }

    #[test]
    fn every_prefix_of_every_seed_is_handled_without_panic() {
        for packet in valid_packets() {
            for end in 0..=packet.len() {
                exercise(&packet[..end], 0);
            }
        }
    }

    #[test]
    fn a_cut_payload_keeps_the_wire_length() {
        let packet = build::ipv4(
            V4_SRC,
            V4_DST,
            ipproto::TCP,
            &build::tcp(1, 2, 3, 4, 0x10, 5, 100),
        );
        let info = parse_l3(&packet[..20 + 20 + 10]).unwrap();
        assert_eq!((info.l4_offset, info.l4_len, info.wire_len), (20, 30, 140));
        assert_eq!(info.l4_wire_len(), 120);
        let tcp = tcp::Packet::new_checked(info.l4(&packet[..50])).unwrap();
        assert_eq!(tcp.payload_len(info.l4_wire_len()), 100);
    }

    #[test]
    fn ethernet_padding_is_trimmed() {
        let mut packet = build::ipv4(V4_SRC, V4_DST, ipproto::UDP, &build::udp(1, 2, 0));
        packet.extend_from_slice(&[0; 18]);
        let info = parse_l3(&packet).unwrap();
        assert_eq!((info.l4_len, info.wire_len), (8, 28));
    }

    #[test]
    fn the_empty_buffer_and_other_versions_are_refused() {
        assert_eq!(parse_l3(&[]), Err(WireError::Truncated));
        assert_eq!(parse_embedded_l3(&[]), Err(WireError::Truncated));
        let mut packet = build::ipv4(V4_SRC, V4_DST, ipproto::UDP, &build::udp(1, 2, 0));
        packet[0] = 0x55;
        assert_eq!(parse_l3(&packet), Err(WireError::BadVersion));
        packet[0] = 0x05;
        assert_eq!(parse_embedded_l3(&packet), Err(WireError::BadVersion));
    }

    #[test]
    fn an_embedded_packet_needs_only_its_headers() {
        let inner = build::ipv4(
            V4_DST,
            V4_SRC,
            ipproto::TCP,
            &build::tcp(80, 40000, 1, 0, 2, 0, 500),
        );
        let quoted = &inner[..28];
        assert_eq!(parse_l3(quoted).unwrap().l4_len, 8);
        let info = parse_embedded_l3(quoted).unwrap();
        assert_eq!((info.l4_offset, info.l4_len, info.wire_len), (20, 8, 540));
        assert_eq!(tcp::ports(info.l4(quoted)), Ok((80, 40000)));

        // A quoted total length smaller than the header is tolerated, refused outside.
        let mut lying = quoted.to_vec();
        lying[2..4].copy_from_slice(&8u16.to_be_bytes());
        assert_eq!(parse_l3(&lying), Err(WireError::BadTotalLength));
        assert_eq!(parse_embedded_l3(&lying).unwrap().l4_len, 8);
    }

    #[test]
    fn crc32c_gives_the_published_check_values() {
        // RFC 3720 B.4: 32 bytes of zeros; and the customary check string.
        assert_eq!(checksum::crc32c(&[0; 32]), 0x8a91_36aa);
        assert_eq!(checksum::crc32c(&[0xff; 32]), 0x62a8_ab43);
        assert_eq!(checksum::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn checksum_of_a_known_ipv4_header() {
        // RFC 1071-style worked example: a header whose checksum field is 0xb861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(!checksum::sum(&header), 0xb861);
        assert_eq!(checksum::sum(&[0xff]), 0xff00);
        assert_eq!(checksum::finish(0xffff, ipproto::UDP), 0xffff);
        assert_eq!(checksum::finish(0xffff, ipproto::TCP), 0);
    }

    /// A seed, a cut point, and a few byte overwrites.
    fn mutated_seed() -> impl Strategy<Value = Vec<u8>> {
        let seeds = valid_packets();
        (
            0..seeds.len(),
            any::<prop::sample::Index>(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        )
            .prop_map(move |(which, cut, edits)| {
                let mut packet = seeds[which].clone();
                for (at, value) in edits {
                    let at = at.index(packet.len());
                    packet[at] = value;
                }
                let end = cut.index(packet.len() + 1);
                packet.truncate(end);
                packet
            })
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..160)) {
            exercise(&bytes, 0);
        }

        #[test]
        fn random_bytes_behind_a_version_nibble_never_panic(
            version in prop::sample::select(vec![0x40u8, 0x45, 0x4f, 0x60]),
            bytes in prop::collection::vec(any::<u8>(), 0..160),
        ) {
            let mut packet = vec![version];
            packet.extend_from_slice(&bytes);
            exercise(&packet, 0);
        }

        #[test]
        fn mutated_and_cut_valid_packets_never_panic(packet in mutated_seed()) {
            exercise(&packet, 0);
        }
    }
}
