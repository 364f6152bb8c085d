//! The UDP tracker: 30 s while unreplied, 120 s once it is a stream.
//!
//! The kernel's two-second rule: an entry that has seen a reply keeps the short timeout until
//! two seconds after its creation; the first packet after that switches it to the stream
//! timeout and marks it ASSURED (a request/response pair finished within two seconds stays
//! unassured, and so can be evicted early under pressure).

use super::{L4Tracker, Outcome, PacketContext, Segment};
use crate::config::Sysctls;
use crate::event::Status;
use crate::tuple::Direction;

/// Nanoseconds after creation before a replied flow counts as a stream.
pub const STREAM_AFTER_NS: u64 = 2_000_000_000;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpConn;

impl L4Tracker for UdpConn {
    fn new_entry(_segment: &Segment, _sysctls: &Sysctls) -> Option<Self> {
        Some(UdpConn)
    }

    fn packet(
        &mut self,
        ctx: &mut PacketContext<'_>,
        _segment: &Segment,
        _dir: Direction,
    ) -> Outcome {
        // SEEN_REPLY is set by the engine after the tracker ran, so the first reply itself still
        // gets the unreplied timeout, as in the kernel.
        if !ctx.status.contains(Status::SEEN_REPLY) {
            return Outcome::Accept {
                timeout_s: ctx.sysctls.udp_timeout,
            };
        }
        // `time_after(jiffies, stream_ts)`: strictly after creation + 2 s.
        if ctx.now_ns > ctx.created_ns.saturating_add(STREAM_AFTER_NS) {
            ctx.assure();
            Outcome::Accept {
                timeout_s: ctx.sysctls.udp_timeout_stream,
            }
        } else {
            Outcome::Accept {
                timeout_s: ctx.sysctls.udp_timeout,
            }
        }
    }
}
