//! The generic tracker: protocols the engine has no tracker for are followed by addresses and
//! protocol number alone, with one long timeout (`nf_conntrack_generic_timeout`, 600 s).

use super::{L4Tracker, Outcome, PacketContext, Segment};
use crate::config::Sysctls;
use crate::tuple::Direction;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenericConn;

impl L4Tracker for GenericConn {
    fn new_entry(_segment: &Segment, _sysctls: &Sysctls) -> Option<Self> {
        Some(GenericConn)
    }
    fn packet(
        &mut self,
        ctx: &mut PacketContext<'_>,
        _segment: &Segment,
        _dir: Direction,
    ) -> Outcome {
        Outcome::Accept {
            timeout_s: ctx.sysctls.generic_timeout,
        }
    }
}
