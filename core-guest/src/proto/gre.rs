//! The GRE tracker (`nf_conntrack_proto_gre.c`): keys, and a short and a stream timeout.
//!
//! The kernel keys GRE by the two keys of the enhanced GRE that PPTP uses (version 1, RFC 2637):
//! the destination key is the packet's call id, the source key what the PPTP helper mapped for
//! the flow (0 without a helper, as here). Version 0 GRE (and a header too short to read) is
//! keyed 0 and 0, like the generic tracker but with the keys in the tuple. A version 1 packet
//! that does not carry PPP is invalid. The keys stand in the tuple's port fields, as ctnetlink
//! reports them (`srckey=`/`dstkey=` in `conntrack` output); so without a helper a version 1
//! flow's answer, keyed by the other side's call id, is a flow of its own, exactly as in the
//! kernel.
//!
//! Timeouts are fixed when the entry is created (`nf_conntrack_gre_timeout`, 30 s, until a reply
//! is seen; `nf_conntrack_gre_timeout_stream`, 180 s, after): the kernel copies them into the
//! entry for a helper to raise. The first packet after the reply marks the entry ASSURED.

use super::{L4Tracker, Outcome, PacketContext, Segment};
use crate::config::Sysctls;
use crate::tuple::{Direction, L4Tuple};

/// The version bits of the first 16 bits of a GRE header.
const VERSION_MASK: u16 = 0x0007;
/// PPP, the only payload enhanced GRE carries for PPTP.
const PROTO_PPP: u16 = 0x880b;

/// The keys of a GRE packet whose layer-4 bytes are `l4`, as the source and destination
/// "ports" of its tuple; `None` for a version 1 packet that is not PPP (invalid).
pub fn keys(l4: &[u8]) -> Option<L4Tuple> {
    let zero = L4Tuple::Ports { src: 0, dst: 0 };
    let Some(base) = l4.get(..4) else {
        return Some(zero);
    };
    if u16::from_be_bytes([base[0], base[1]]) & VERSION_MASK != 1 {
        return Some(zero);
    }
    let Some(pptp) = l4.get(..8) else {
        return Some(zero);
    };
    if u16::from_be_bytes([base[2], base[3]]) != PROTO_PPP {
        return None;
    }
    Some(L4Tuple::Ports {
        src: 0,
        dst: u16::from_be_bytes([pptp[6], pptp[7]]),
    })
}

/// The timeouts fixed at the entry's creation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GreConn {
    pub timeout_s: u32,
    pub stream_timeout_s: u32,
}

impl L4Tracker for GreConn {
    fn new_entry(_segment: &Segment, sysctls: &Sysctls) -> Option<Self> {
        Some(GreConn {
            timeout_s: sysctls.gre_timeout,
            stream_timeout_s: sysctls.gre_timeout_stream,
        })
    }

    fn packet(
        &mut self,
        ctx: &mut PacketContext<'_>,
        _segment: &Segment,
        _dir: Direction,
    ) -> Outcome {
        ctx.replied_stream(self.timeout_s, self.stream_timeout_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_ppp_is_keyed_by_its_call_id_and_the_rest_by_zeros() {
        let zero = Some(L4Tuple::Ports { src: 0, dst: 0 });
        // Version 0 carrying IPv4, with a key: still keyed 0, 0.
        assert_eq!(keys(&[0x20, 0x00, 0x08, 0x00, 0, 0, 0, 7]), zero);
        // Enhanced GRE, PPP, payload length 0, call id 0x1234.
        assert_eq!(
            keys(&[0x20, 0x01, 0x88, 0x0b, 0, 0, 0x12, 0x34]),
            Some(L4Tuple::Ports {
                src: 0,
                dst: 0x1234
            })
        );
        // Version 1 that is not PPP: invalid.
        assert_eq!(keys(&[0x20, 0x01, 0x08, 0x00, 0, 0, 0x12, 0x34]), None);
        // Too short to read: keyed 0, 0, as the kernel falls back.
        assert_eq!(keys(&[0x20]), zero);
        assert_eq!(keys(&[0x20, 0x01, 0x88, 0x0b, 0, 0]), zero);
    }
}
