//! The ICMP and ICMPv6 trackers for queries (echo, timestamp, information, address mask, node
//! information): a request and its reply share one entry, every packet refreshes a 30 s timeout,
//! and the entry is deliberately kept after the first reply so a `ping -c 2` is one flow.
//!
//! Only request types create entries; errors never do — the engine attaches them as RELATED to
//! the entry of the packet they quote (see `engine`), which is why this tracker never sees them.

use super::{L4Tracker, Outcome, PacketContext, Segment};
use crate::config::Sysctls;
use crate::tuple::Direction;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IcmpConn {
    pub v6: bool,
}

impl IcmpConn {
    pub fn v4(self) -> IcmpConn {
        IcmpConn { v6: false }
    }
    pub fn v6(self) -> IcmpConn {
        IcmpConn { v6: true }
    }
}

impl L4Tracker for IcmpConn {
    fn new_entry(_segment: &Segment, _sysctls: &Sysctls) -> Option<Self> {
        // Whether the type may create an entry is decided from the tuple by the engine
        // (`tuple::icmp_type_creates_entry`), before the tracker is asked.
        Some(IcmpConn::default())
    }

    fn packet(
        &mut self,
        ctx: &mut PacketContext<'_>,
        _segment: &Segment,
        _dir: Direction,
    ) -> Outcome {
        let timeout_s = if self.v6 {
            ctx.sysctls.icmpv6_timeout
        } else {
            ctx.sysctls.icmp_timeout
        };
        Outcome::Accept { timeout_s }
    }
}
