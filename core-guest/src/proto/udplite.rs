//! The UDP-Lite tracker (RFC 3828): keyed by ports like UDP, with UDP's timeouts, but its own
//! ASSURED rule and its own header checks.
//!
//! UDP-Lite has no two-second rule: once a reply has been seen, every packet refreshes the
//! entry with the stream timeout, and the first such packet marks it ASSURED. Its header's
//! length field is the checksum coverage, not the length: 0 means the whole datagram, anything
//! else must be at least the 8-byte header and at most the datagram; and the checksum is
//! mandatory. A packet that breaks either is invalid (it creates no entry, refreshes none).
//! The checksum itself is verified only on packets that arrived unverified, before the tracker
//! runs, with the kernel's own (UDP) pseudo-header: see [`super::checksum`].

use super::{L4Tracker, Outcome, PacketContext, Segment};
use crate::config::Sysctls;
use crate::tuple::{Direction, L4Tuple};

/// The UDP-Lite header: ports, checksum coverage, checksum.
const HEADER_LEN: usize = 8;

/// The ports of a UDP-Lite header, if the packet is one the kernel tracks: `l4` the bytes
/// present, `l4_len` the length the IP header gives the datagram.
pub fn ports(l4: &[u8], l4_len: usize) -> Option<L4Tuple> {
    let h = l4.get(..HEADER_LEN)?;
    let coverage = usize::from(u16::from_be_bytes([h[4], h[5]]));
    if coverage != 0 && !(HEADER_LEN..=l4_len).contains(&coverage) {
        return None;
    }
    if h[6] == 0 && h[7] == 0 {
        return None;
    }
    Some(L4Tuple::Ports {
        src: u16::from_be_bytes([h[0], h[1]]),
        dst: u16::from_be_bytes([h[2], h[3]]),
    })
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpLiteConn;

impl L4Tracker for UdpLiteConn {
    fn new_entry(_segment: &Segment, _sysctls: &Sysctls) -> Option<Self> {
        Some(UdpLiteConn)
    }

    fn packet(
        &mut self,
        ctx: &mut PacketContext<'_>,
        _segment: &Segment,
        _dir: Direction,
    ) -> Outcome {
        let s = ctx.sysctls;
        ctx.replied_stream(s.udp_timeout, s.udp_timeout_stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(coverage: u16, checksum: u16) -> [u8; 8] {
        let mut h = [0x13, 0x88, 0x00, 0x35, 0, 0, 0, 0];
        h[4..6].copy_from_slice(&coverage.to_be_bytes());
        h[6..8].copy_from_slice(&checksum.to_be_bytes());
        h
    }

    #[test]
    fn the_coverage_and_the_checksum_decide_whether_a_packet_is_tracked() {
        let ports = |c, s, len| super::ports(&header(c, s), len);
        let expected = Some(L4Tuple::Ports { src: 5000, dst: 53 });
        assert_eq!(ports(0, 0x1234, 100), expected, "0: the whole datagram");
        assert_eq!(ports(8, 0x1234, 100), expected, "the header alone");
        assert_eq!(ports(100, 0x1234, 100), expected, "all of it");
        assert_eq!(ports(7, 0x1234, 100), None, "less than the header");
        assert_eq!(ports(101, 0x1234, 100), None, "more than the datagram");
        assert_eq!(ports(0, 0, 100), None, "no checksum");
        assert_eq!(super::ports(&header(0, 1)[..7], 100), None, "a cut header");
    }
}
