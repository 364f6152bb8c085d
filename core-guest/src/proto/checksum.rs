//! The checksums conntrack verifies on packets that arrive unverified.
//!
//! The kernel's protocol `error` callbacks check a packet's checksum only at PRE_ROUTING, only
//! with `nf_conntrack_checksum` set, and only when no device verified it (`CHECKSUM_NONE`, or a
//! `CHECKSUM_COMPLETE` sum that does not add up): a packet the local stack sends is trusted,
//! and so is one whose checksum a device checked or left to be filled in (a veth carrying a
//! local sender's offloaded checksum). The host says which packets arrived unverified
//! ([`crate::batch::PACKET_FLAG_ARRIVED`]); this module does the checks, each as its kernel
//! function does it:
//!
//! | protocol | kernel | covers | pseudo-header |
//! |---|---|---|---|
//! | TCP | `tcp_error` | the segment | protocol 6, the L4 length |
//! | UDP | `udp_error` | the datagram; a zero checksum is "none" and passes | 17, the L4 length |
//! | UDP-Lite | `udplite_error` | the coverage | **17** (see below) |
//! | ICMP | `nf_conntrack_icmpv4_error` | the message | none |
//! | ICMPv6 | `nf_conntrack_icmpv6_error` (before neighbour discovery is let through untracked) | the message | 58, the L4 length |
//! | SCTP | `sctp_error` | the packet, CRC32c with its field zeroed | none |
//!
//! GRE and the protocols tracked generically carry no checksum conntrack looks at.
//!
//! UDP-Lite is checked through `nf_checksum_partial(..., IPPROTO_UDP, ...)`: its pseudo-header
//! carries protocol 17 where the sender's carried 136, so a correct UDP-Lite checksum fails and
//! the datagram is invalid (Linux 6.18 tracks no UDP-Lite that arrives from a wire). For IPv4 the
//! kernel's helper also passes the protocol and the length to `csum_tcpudp_nofold` in each
//! other's places, so its pseudo-header adds 17 plus the low byte of the L4 length; for IPv6 the
//! length is whole. This module computes what the kernel computes, so a datagram is invalid here
//! exactly when it is there.
//!
//! The length every check uses is the IP header's (the kernel's `skb->len` after the IP layer
//! trimmed link padding). A capture that cut the packet short (a snap length) cannot be checked
//! and passes: judging it wrong would invent an invalid packet the kernel never saw.

use crate::tuple::ipproto;
use crate::wire::checksum::{combine, crc32c_parts, pseudo_header, sum};
use crate::wire::{self, L3Info};

/// Whether an IPv4 header's own checksum holds (IPv6 has none). The IP layer drops a packet
/// whose header checksum is wrong before conntrack sees it.
pub fn ip_header_holds(packet: &[u8]) -> bool {
    match wire::ipv4::Packet::new_checked(packet) {
        Ok(ip) => sum(&packet[..ip.header_len()]) == 0xffff,
        // Not IPv4, or too broken to have a header checksum: the parser judges it.
        Err(_) => true,
    }
}

/// Whether a packet that arrived unverified passes its protocol's checksum check (the whole
/// datagram: a fragment's check waits for its reassembly).
pub fn arriving_checksum_holds(packet: &[u8]) -> bool {
    let Ok(l3) = wire::parse_l3(packet) else {
        return true;
    };
    let l4 = l3.l4(packet);
    if l4.len() < l3.l4_wire_len() {
        return true;
    }
    match l3.proto {
        ipproto::TCP if l4.len() >= wire::tcp::HEADER_LEN => sums_to_zero(&l3, ipproto::TCP, l4),
        ipproto::UDP if l4.len() >= 8 => {
            let check = u16::from_be_bytes([l4[6], l4[7]]);
            check == 0 || sums_to_zero(&l3, ipproto::UDP, l4)
        }
        ipproto::UDPLITE if l4.len() >= 8 => udplite_holds(&l3, packet, l4),
        ipproto::ICMP if l4.len() >= 8 => sum(l4) == 0xffff,
        ipproto::ICMPV6 if l4.len() >= 8 => sums_to_zero(&l3, ipproto::ICMPV6, l4),
        ipproto::SCTP if l4.len() >= wire::sctp::HEADER_LEN => {
            let stored = u32::from_le_bytes([l4[8], l4[9], l4[10], l4[11]]);
            crc32c_parts(&[&l4[..8], &[0; 4], &l4[12..]]) == stored
        }
        // Too short for its header (the parser makes it invalid), or no checksum to check.
        _ => true,
    }
}

/// The RFC 1071 check with the usual pseudo-header.
fn sums_to_zero(l3: &L3Info, proto: u8, l4: &[u8]) -> bool {
    let pseudo = pseudo_header(
        l3.src.bytes(l3.family),
        l3.dst.bytes(l3.family),
        proto,
        l4.len() as u32,
    );
    combine(&[pseudo, sum(l4)]) == 0xffff
}

/// `udplite_error`'s check, pseudo-header and all (see the module docs).
fn udplite_holds(l3: &L3Info, packet: &[u8], l4: &[u8]) -> bool {
    let coverage = match usize::from(u16::from_be_bytes([l4[4], l4[5]])) {
        0 => l4.len(),
        c => c,
    };
    let check = u16::from_be_bytes([l4[6], l4[7]]);
    if coverage < 8 || coverage > l4.len() || check == 0 {
        // Invalid before any checksum: the tracker's own checks refuse it.
        return true;
    }
    let (src, dst) = (l3.src.bytes(l3.family), l3.dst.bytes(l3.family));
    let pseudo = if src.len() == 4 {
        // The protocol where the length belongs, the length's low byte where the protocol
        // belongs: the two add up to one 16-bit word.
        combine(&[sum(src), sum(dst), 17 + (l4.len() as u16 & 0xff)])
    } else {
        pseudo_header(src, dst, ipproto::UDP, l4.len() as u32)
    };
    // The kernel sums from the network header (an IPv4 header whose checksum holds adds
    // nothing; IPv6's is subtracted again), so the covered L4 bytes are what count.
    let covered = &packet[l3.l4_offset..l3.l4_offset + coverage];
    combine(&[pseudo, sum(covered)]) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build;

    fn v4(proto: u8, l4: &[u8]) -> Vec<u8> {
        build::ipv4([10, 0, 0, 1], [10, 0, 0, 2], proto, l4)
    }

    fn v6(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut src = [0u8; 16];
        src[0] = 0xfd;
        src[15] = 1;
        let mut dst = src;
        dst[15] = 2;
        build::ipv6(src, dst, proto, l4)
    }

    /// Flips one bit of byte `at` of the L4 part (every packet here has at least 8 bytes).
    fn flip(mut packet: Vec<u8>, at: usize) -> Vec<u8> {
        let l3 = wire::parse_l3(&packet).unwrap();
        packet[l3.l4_offset + at] ^= 0x10;
        packet
    }

    #[test]
    fn built_packets_pass_and_a_flipped_bit_fails_for_each_checked_protocol() {
        let tcp = build::tcp(40000, 80, 1, 0, wire::tcp::TcpFlags::SYN.bits(), 1000, 12);
        let udp = build::udp(40000, 53, 30);
        let sctp = build::sctp(40000, 5000, 0, &[build::sctp_init(1, 0x1234)]);
        let echo = build::icmp_echo(true, 7, 1);
        let echo6 = build::icmpv6_echo(true, 7, 1);
        for (name, packet) in [
            ("tcp v4", v4(ipproto::TCP, &tcp)),
            ("tcp v6", v6(ipproto::TCP, &tcp)),
            ("udp v4", v4(ipproto::UDP, &udp)),
            ("udp v6", v6(ipproto::UDP, &udp)),
            ("sctp v4", v4(ipproto::SCTP, &sctp)),
            ("sctp v6", v6(ipproto::SCTP, &sctp)),
            ("icmp", v4(ipproto::ICMP, &echo)),
            ("icmpv6", v6(ipproto::ICMPV6, &echo6)),
        ] {
            assert!(ip_header_holds(&packet), "{name}: header");
            assert!(arriving_checksum_holds(&packet), "{name}: as built");
            for at in [0, 3, 7] {
                assert!(
                    !arriving_checksum_holds(&flip(packet.clone(), at)),
                    "{name}: bit flipped in byte {at}"
                );
            }
            // Cut by a snap length: nothing to judge.
            let cut = &packet[..packet.len() - 1];
            assert!(arriving_checksum_holds(cut), "{name}: cut");
        }
    }

    #[test]
    fn a_udp_datagram_without_a_checksum_passes_and_gre_is_not_checked() {
        let mut udp = build::udp(1, 2, 4);
        udp[6..8].fill(0);
        assert!(arriving_checksum_holds(&v4(ipproto::UDP, &udp)));
        let gre = [0, 0, 0x08, 0, 0xde, 0xad, 0xbe, 0xef];
        assert!(arriving_checksum_holds(&v4(ipproto::GRE, &gre)));
    }

    #[test]
    fn a_wrong_ipv4_header_checksum_is_found() {
        let mut p = v4(ipproto::UDP, &build::udp(1, 2, 4));
        p[10] ^= 1;
        assert!(!ip_header_holds(&p));
        assert!(ip_header_holds(&v6(ipproto::UDP, &build::udp(1, 2, 4))));
    }

    /// UDP-Lite with its correct checksum (pseudo-header protocol 136) fails, and one computed
    /// the kernel's way passes, in both families, for full and partial coverage.
    #[test]
    fn udplite_is_checked_with_the_kernels_pseudo_header() {
        for coverage in [0u16, 8, 12] {
            let mut l4 = vec![0x9c, 0x40, 0x13, 0x88, 0, 0, 0, 0];
            l4[4..6].copy_from_slice(&coverage.to_be_bytes());
            l4.extend_from_slice(&[0x5a; 300]);
            let covered = if coverage == 0 {
                l4.len()
            } else {
                usize::from(coverage)
            };
            for family in [4, 6] {
                let wrap = |l4: &[u8]| {
                    if family == 4 {
                        v4(ipproto::UDPLITE, l4)
                    } else {
                        v6(ipproto::UDPLITE, l4)
                    }
                };
                let l3 = wire::parse_l3(&wrap(&l4)).unwrap();
                let (src, dst) = (
                    l3.src.bytes(l3.family).to_vec(),
                    l3.dst.bytes(l3.family).to_vec(),
                );
                let len = l4.len() as u32;
                let with = |pseudo: u16| {
                    let mut l4 = l4.clone();
                    let c = !combine(&[pseudo, sum(&l4[..covered])]);
                    l4[6..8].copy_from_slice(&c.to_be_bytes());
                    wrap(&l4)
                };
                let rfc = with(pseudo_header(&src, &dst, ipproto::UDPLITE, len));
                assert!(
                    !arriving_checksum_holds(&rfc),
                    "v{family} {coverage}: RFC 3828"
                );
                let kernel = if family == 4 {
                    combine(&[sum(&src), sum(&dst), 17 + (len as u16 & 0xff)])
                } else {
                    pseudo_header(&src, &dst, ipproto::UDP, len)
                };
                let kernels = with(kernel);
                assert!(arriving_checksum_holds(&kernels), "v{family} {coverage}");
                assert!(!arriving_checksum_holds(&flip(kernels, 1)));
            }
        }
    }
}
