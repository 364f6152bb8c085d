//! Packet builders for tests across the project.
//!
//! Tests should say what a packet is ("a SYN from 127.0.0.1:40001 to :5001"), not spell out its
//! bytes; these helpers turn that sentence into bytes through the same views the parser reads, so
//! a builder and the parser cannot disagree about an offset.
//!
//! Checksums are correct: [`ipv4()`] fills the IPv4 header checksum and, for TCP and UDP, the L4
//! checksum; [`ipv6()`] and [`ipv6_with_ext`] fill the TCP, UDP and ICMPv6 checksums (when the L4
//! bytes are long enough to hold the field); the ICMPv4 builders fill their own, and [`sctp()`]
//! its CRC32c. A test wanting a wrong checksum patches the bytes afterwards. The L4 builders
//! return L4 bytes only; wrap them with [`ipv4()`] or [`ipv6()`]. Payloads are zero bytes.

use super::{checksum, icmp, icmpv6, ipv4, ipv6, sctp, tcp, udp};
use crate::tuple::ipproto;

/// An IPv4 packet: IHL 5, TTL 64, DF clear, identification 0, correct header checksum, `l4`
/// as the payload (its TCP/UDP checksum filled in).
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let total_len = ipv4::HEADER_LEN + l4.len();
    let mut buf = vec![0; total_len];
    let mut packet = ipv4::Packet::new_unchecked(&mut buf[..]);
    packet.set_version_and_header_len(ipv4::HEADER_LEN);
    packet.set_total_len(u16::try_from(total_len).unwrap_or(u16::MAX));
    packet.set_ttl(64);
    packet.set_protocol(proto);
    packet.set_src_addr(src);
    packet.set_dst_addr(dst);
    packet.fill_checksum();
    buf[ipv4::HEADER_LEN..].copy_from_slice(l4);
    fill_l4_checksum(&src, &dst, proto, &mut buf[ipv4::HEADER_LEN..]);
    buf
}

/// Rewrites the fragment fields of a packet built by [`ipv4()`] (`offset` in bytes, a multiple of
/// 8) and recomputes its header checksum.
pub fn set_ipv4_fragment(packet: &mut [u8], offset: u16, more_frags: bool) {
    let mut view = ipv4::Packet::new_unchecked(packet);
    view.set_fragment(false, more_frags, offset);
    view.fill_checksum();
}

/// Fragments of the IPv4 packet `whole` (a 20-byte header, as [`ipv4()`] builds), one per
/// `(offset, length, more_frags)` of its data, each with identification `ident` and a correct
/// header checksum. Offsets are in bytes (multiples of 8); a length past the data takes what
/// is there.
pub fn ipv4_fragments(whole: &[u8], ident: u16, cuts: &[(usize, usize, bool)]) -> Vec<Vec<u8>> {
    let data = &whole[ipv4::HEADER_LEN..];
    cuts.iter()
        .map(|&(offset, len, more)| {
            let mut f = whole[..ipv4::HEADER_LEN].to_vec();
            f.extend_from_slice(&data[offset.min(data.len())..(offset + len).min(data.len())]);
            let total_len = f.len();
            let mut view = ipv4::Packet::new_unchecked(&mut f[..]);
            view.set_total_len(u16::try_from(total_len).unwrap_or(u16::MAX));
            view.set_ident(ident);
            set_ipv4_fragment(&mut f, u16::try_from(offset).unwrap_or(u16::MAX), more);
            f
        })
        .collect()
}

/// Fragments of the IPv6 packet `whole`, whose first `unfragmentable` bytes (fixed header and
/// any extension headers no fragment splits) every fragment repeats, and whose byte at
/// `next_header_at` names what follows them: a fragment header goes in between, with
/// identification `ident`, one per `(offset, length, more_frags)` of the rest.
pub fn ipv6_fragments(
    whole: &[u8],
    unfragmentable: usize,
    next_header_at: usize,
    ident: u32,
    cuts: &[(usize, usize, bool)],
) -> Vec<Vec<u8>> {
    let data = &whole[unfragmentable..];
    cuts.iter()
        .map(|&(offset, len, more)| {
            let mut f = whole[..unfragmentable].to_vec();
            let next = f[next_header_at];
            f[next_header_at] = ipv6::ext::FRAGMENT;
            f.extend_from_slice(&[next, 0]);
            f.extend_from_slice(&ipv6_fragment_body(offset as u16, more, ident)[..6]);
            f.extend_from_slice(&data[offset.min(data.len())..(offset + len).min(data.len())]);
            let payload = f.len() - ipv6::HEADER_LEN;
            ipv6::Packet::new_unchecked(&mut f[..])
                .set_payload_len(u16::try_from(payload).unwrap_or(u16::MAX));
            f
        })
        .collect()
}

/// An IPv6 packet: hop limit 64, traffic class and flow label 0, `l4` as the payload (its
/// TCP/UDP/ICMPv6 checksum filled in).
pub fn ipv6(src: [u8; 16], dst: [u8; 16], next_header: u8, l4: &[u8]) -> Vec<u8> {
    ipv6_with_ext(src, dst, &[], next_header, l4)
}

/// An IPv6 packet with extension headers between the fixed header and `l4`, in the order given.
///
/// Each entry is a header number and its body: the bytes after the next-header and length bytes.
/// The builder pads each header to its unit with zeros (Pad1 in option headers), 8 octets for
/// hop-by-hop, routing and destination options, 8 in total for AH too (its length byte counts
/// 4-octet units minus 2) and writes the length byte; a fragment header's body is its 6 bytes
/// (see [`ipv6_fragment_body`]) and its second byte stays reserved (0).
pub fn ipv6_with_ext(
    src: [u8; 16],
    dst: [u8; 16],
    ext_chain: &[(u8, Vec<u8>)],
    final_proto: u8,
    l4: &[u8],
) -> Vec<u8> {
    let mut buf = vec![0; ipv6::HEADER_LEN];
    for (i, (kind, body)) in ext_chain.iter().enumerate() {
        let next = ext_chain.get(i + 1).map_or(final_proto, |(next, _)| *next);
        let len = (2 + body.len()).next_multiple_of(8);
        let len_byte = match *kind {
            ipv6::ext::FRAGMENT => 0,
            ipv6::ext::AUTH => len / 4 - 2,
            _ => len / 8 - 1,
        };
        let start = buf.len();
        buf.extend_from_slice(&[next, u8::try_from(len_byte).unwrap_or(u8::MAX)]);
        buf.extend_from_slice(body);
        buf.resize(start + len, 0);
    }
    let l4_offset = buf.len();
    buf.extend_from_slice(l4);
    let payload_len = buf.len() - ipv6::HEADER_LEN;
    let first = ext_chain.first().map_or(final_proto, |(kind, _)| *kind);
    let mut packet = ipv6::Packet::new_unchecked(&mut buf[..]);
    packet.set_version_tc_flow(0, 0);
    packet.set_payload_len(u16::try_from(payload_len).unwrap_or(u16::MAX));
    packet.set_next_header(first);
    packet.set_hop_limit(64);
    packet.set_src_addr(src);
    packet.set_dst_addr(dst);
    fill_l4_checksum(&src, &dst, final_proto, &mut buf[l4_offset..]);
    buf
}

/// The 6-byte body of an IPv6 fragment header: offset in bytes (a multiple of 8), the
/// more-fragments flag, the identification.
pub fn ipv6_fragment_body(offset: u16, more_frags: bool, ident: u32) -> Vec<u8> {
    let offset_flags = (offset & !7) | u16::from(more_frags);
    let mut body = offset_flags.to_be_bytes().to_vec();
    body.extend_from_slice(&ident.to_be_bytes());
    body
}

/// A TCP segment without options: `payload_len` zero bytes after a 20-byte header.
pub fn tcp(
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    payload_len: usize,
) -> Vec<u8> {
    tcp_with_options(sport, dport, seq, ack, flags, window, &[], payload_len)
}

/// A TCP segment with raw option bytes (padded with End-of-List to a multiple of 4, at most 40
/// are kept) and `payload_len` zero bytes of payload.
#[allow(clippy::too_many_arguments)]
pub fn tcp_with_options(
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: &[u8],
    payload_len: usize,
) -> Vec<u8> {
    let options = &options[..options.len().min(tcp::MAX_HEADER_LEN - tcp::HEADER_LEN)];
    let header_len = tcp::HEADER_LEN + options.len().next_multiple_of(4);
    let mut buf = vec![0; header_len + payload_len];
    let mut packet = tcp::Packet::new_unchecked(&mut buf[..]);
    packet.set_src_port(sport);
    packet.set_dst_port(dport);
    packet.set_seq_number(seq);
    packet.set_ack_number(ack);
    packet.set_header_len(header_len);
    packet.set_flags(tcp::TcpFlags(flags));
    packet.set_window_len(window);
    buf[tcp::HEADER_LEN..tcp::HEADER_LEN + options.len()].copy_from_slice(options);
    buf
}

/// A UDP datagram with `payload_len` zero bytes of payload.
pub fn udp(sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
    let repr = udp::Repr {
        src_port: sport,
        dst_port: dport,
        payload_len,
    };
    let mut buf = vec![0; repr.buffer_len() + payload_len];
    repr.emit(&mut buf);
    buf
}

/// An SCTP packet: the common header with `vtag`, then `chunks` (each already padded, as
/// [`sctp_chunk`] makes them), the CRC32c filled in.
pub fn sctp(sport: u16, dport: u16, vtag: u32, chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut buf = vec![0; sctp::HEADER_LEN];
    for c in chunks {
        buf.extend_from_slice(c);
    }
    let mut packet = sctp::Packet::new_unchecked(&mut buf[..]);
    packet.set_src_port(sport);
    packet.set_dst_port(dport);
    packet.set_verification_tag(vtag);
    packet.fill_checksum();
    buf
}

/// One SCTP chunk: its header (the length counts `value`, not the padding) and `value`, padded
/// with zeros to a multiple of 4.
pub fn sctp_chunk(kind: u8, flags: u8, value: &[u8]) -> Vec<u8> {
    let length = u16::try_from(sctp::CHUNK_HEADER_LEN + value.len()).unwrap_or(u16::MAX);
    let mut c = vec![kind, flags];
    c.extend_from_slice(&length.to_be_bytes());
    c.extend_from_slice(value);
    c.resize(c.len().next_multiple_of(4), 0);
    c
}

/// An INIT or INIT ACK chunk (`kind`) announcing `tag`, with a window of 64 KiB, 10 streams
/// each way and initial TSN 1; no parameters.
pub fn sctp_init(kind: u8, tag: u32) -> Vec<u8> {
    let mut value = tag.to_be_bytes().to_vec();
    value.extend_from_slice(&65_536u32.to_be_bytes());
    value.extend_from_slice(&10u16.to_be_bytes());
    value.extend_from_slice(&10u16.to_be_bytes());
    value.extend_from_slice(&1u32.to_be_bytes());
    sctp_chunk(kind, 0, &value)
}

/// An ICMP echo request (type 8) or reply (type 0), no data, checksum filled.
pub fn icmp_echo(request: bool, ident: u16, seq: u16) -> Vec<u8> {
    let repr = if request {
        icmp::Repr::EchoRequest { ident, seq }
    } else {
        icmp::Repr::EchoReply { ident, seq }
    };
    let mut buf = vec![0; repr.buffer_len()];
    repr.emit(&mut buf);
    buf
}

/// An ICMPv6 echo request (128) or reply (129), no data; the checksum is filled by [`ipv6()`].
pub fn icmpv6_echo(request: bool, ident: u16, seq: u16) -> Vec<u8> {
    let repr = if request {
        icmpv6::Repr::EchoRequest { ident, seq }
    } else {
        icmpv6::Repr::EchoReply { ident, seq }
    };
    let mut buf = vec![0; repr.buffer_len()];
    repr.emit(&mut buf);
    buf
}

/// An ICMP message of type `kind` and code `code` with a zero second word and `embedded` after
/// it (meant for errors quoting a packet), checksum filled.
pub fn icmp_error(kind: u8, code: u8, embedded: &[u8]) -> Vec<u8> {
    let mut buf = vec![0; icmp::HEADER_LEN + embedded.len()];
    let mut packet = icmp::Packet::new_unchecked(&mut buf[..]);
    packet.set_msg_type(kind);
    packet.set_msg_code(code);
    buf[icmp::HEADER_LEN..].copy_from_slice(embedded);
    icmp::Packet::new_unchecked(&mut buf[..]).fill_checksum();
    buf
}

/// An ICMPv6 message of type `kind` and code `code` with a zero second word and `embedded` after
/// it; the checksum is filled by [`ipv6()`].
pub fn icmpv6_error(kind: u8, code: u8, embedded: &[u8]) -> Vec<u8> {
    let mut buf = vec![0; icmpv6::HEADER_LEN + embedded.len()];
    let mut packet = icmpv6::Packet::new_unchecked(&mut buf[..]);
    packet.set_msg_type(kind);
    packet.set_msg_code(code);
    buf[icmpv6::HEADER_LEN..].copy_from_slice(embedded);
    buf
}

/// Fills the checksum of a TCP, UDP or ICMPv6 payload whose pseudo-header has these addresses;
/// other protocols, and L4 bytes too short to hold the field, are left alone.
fn fill_l4_checksum(src: &[u8], dst: &[u8], proto: u8, l4: &mut [u8]) {
    let at = match proto {
        ipproto::TCP => 16,
        ipproto::UDP => 6,
        ipproto::ICMPV6 => 2,
        _ => return,
    };
    if l4.len() < at + 2 {
        return;
    }
    l4[at..at + 2].copy_from_slice(&[0, 0]);
    let pseudo = checksum::pseudo_header(src, dst, proto, l4.len() as u32);
    let sum = checksum::combine(&[pseudo, checksum::sum(l4)]);
    l4[at..at + 2].copy_from_slice(&checksum::finish(sum, proto).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse_l3;

    fn verifies(src: &[u8], dst: &[u8], proto: u8, l4: &[u8]) -> bool {
        let pseudo = checksum::pseudo_header(src, dst, proto, l4.len() as u32);
        checksum::combine(&[pseudo, checksum::sum(l4)]) == 0xffff
    }

    #[test]
    fn l4_checksums_verify() {
        let (s4, d4) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let (s6, d6) = ([0xfe; 16], [0x20; 16]);
        for (proto, l4) in [
            (ipproto::TCP, tcp(1, 2, 3, 4, 0x02, 5, 7)),
            (ipproto::UDP, udp(1, 2, 3)),
        ] {
            let packet = ipv4(s4, d4, proto, &l4);
            assert!(verifies(&s4, &d4, proto, &packet[20..]));
            let packet = ipv6(s6, d6, proto, &l4);
            assert!(verifies(&s6, &d6, proto, &packet[40..]));
        }
        let packet = ipv6(s6, d6, ipproto::ICMPV6, &icmpv6_echo(true, 1, 2));
        assert!(verifies(&s6, &d6, ipproto::ICMPV6, &packet[40..]));
        assert_eq!(checksum::sum(&icmp_echo(false, 1, 2)), 0xffff);
        assert_eq!(checksum::sum(&icmp_error(11, 0, &[1, 2, 3])), 0xffff);
        // Too short to hold a checksum: left alone rather than panicking.
        assert_eq!(ipv4(s4, d4, ipproto::TCP, &[1, 2, 3])[20..], [1, 2, 3]);
    }

    #[test]
    fn extension_headers_are_laid_out_and_linked() {
        let chain = [
            (ipv6::ext::HOP_BY_HOP, vec![]),
            (ipv6::ext::AUTH, vec![0; 10]),
            (
                ipv6::ext::FRAGMENT,
                ipv6_fragment_body(0, true, 0xdead_beef),
            ),
        ];
        let packet = ipv6_with_ext([1; 16], [2; 16], &chain, ipproto::UDP, &udp(7, 8, 0));
        assert_eq!(packet[6], 0);
        assert_eq!(&packet[40..42], &[51, 0]);
        assert_eq!(&packet[48..50], &[44, 2]); // AH of 12 bytes padded to 16: 16/4 - 2
        assert_eq!(&packet[64..72], &[17, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef]);
        let info = parse_l3(&packet).unwrap();
        assert_eq!(
            (info.proto, info.l4_offset, info.l4_len),
            (ipproto::UDP, 72, 8)
        );
    }

    #[test]
    fn tcp_options_are_padded() {
        let segment = tcp_with_options(1, 2, 3, 4, 0x02, 5, &[2, 4, 5, 0xb4, 3, 3, 7], 2);
        assert_eq!(segment.len(), 20 + 8 + 2);
        assert_eq!(
            tcp::Packet::new_checked(&segment[..]).unwrap().header_len(),
            28
        );
    }
}
