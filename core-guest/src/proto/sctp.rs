//! The SCTP tracker (`nf_conntrack_proto_sctp.c`): the association's state from its chunks, and
//! the verification tags that tie packets to it.
//!
//! SCTP is keyed by ports like UDP. What moves an entry is the chunks a packet carries, each
//! looked up in one table by direction, chunk type and current state — the kernel's
//! `sctp_conntracks`, copied below: INIT leaves the entry CLOSED (a flood of INITs times out
//! after `nf_conntrack_sctp_timeout_closed`), the INIT ACK moves it to COOKIE_WAIT, COOKIE ECHO to
//! COOKIE_ECHOED, the COOKIE ACK to ESTABLISHED (and ASSURED); SHUTDOWN, SHUTDOWN ACK and
//! SHUTDOWN COMPLETE walk it back to CLOSED, ABORT at once. A HEARTBEAT as the first packet starts
//! an entry of its own, HEARTBEAT_SENT: the path of a multi-homed association that the entry
//! of its first path cannot see. Each state has its timeout, set by the last chunk's state.
//!
//! Packets are checked the kernel's way, in its order:
//! - every chunk has a length; COOKIE ECHO and COOKIE ACK come first; INIT, INIT ACK and
//!   SHUTDOWN COMPLETE come alone;
//! - a first packet holding ABORT, SHUTDOWN COMPLETE or COOKIE ACK starts nothing (out of the
//!   blue, RFC 9260 §8.4), nor does one whose chunks the table does not start with (DATA);
//! - the verification tag must be the one the direction was given (by the other side's INIT or
//!   INIT ACK), except on the chunks with rules of their own (§8.5.1): INIT carries 0; ABORT and
//!   SHUTDOWN COMPLETE carry the direction's tag, or the other direction's with the T bit;
//!   HEARTBEAT and its ACK may teach a direction its tag, and a HEARTBEAT with a new tag is let
//!   through once, without refreshing the entry, so that its ACK can move the entry to the tags
//!   of a restarted association.
//!
//! A packet that fails a check is invalid: it neither counts nor refreshes; the chunks before the
//! failing one have still moved the entry, as in the kernel. An INIT retransmitted into a CLOSED
//! entry passes but does not refresh it either, so that a client reusing its port cannot keep an
//! entry alive forever.
//!
//! The CRC32c is verified only on packets that arrived unverified, before the tracker runs, as
//! the kernel checks it only on packets entering from outside without hardware help: see
//! [`super::checksum`].

use super::{L4Tracker, Outcome, PacketContext, Segment};
use crate::config::Sysctls;
use crate::event::{EventBits, SctpState, Status};
use crate::tuple::Direction;
use crate::wire::sctp::{Chunk, Packet, chunk};

use SctpState as S;

/// `sctp_conntracks`' "sIV": no transition, the packet is invalid.
const IV: Option<SctpState> = None;
const CL: Option<SctpState> = Some(S::Closed);
const CW: Option<SctpState> = Some(S::CookieWait);
const CE: Option<SctpState> = Some(S::CookieEchoed);
const ES: Option<SctpState> = Some(S::Established);
const SS: Option<SctpState> = Some(S::ShutdownSent);
const SR: Option<SctpState> = Some(S::ShutdownRecd);
const SA: Option<SctpState> = Some(S::ShutdownAckSent);
const HS: Option<SctpState> = Some(S::HeartbeatSent);

/// The chunk types with a row in the table, in the table's order.
const ROWS: [u8; 11] = [
    chunk::INIT,
    chunk::INIT_ACK,
    chunk::ABORT,
    chunk::SHUTDOWN,
    chunk::SHUTDOWN_ACK,
    chunk::ERROR,
    chunk::COOKIE_ECHO,
    chunk::COOKIE_ACK,
    chunk::SHUTDOWN_COMPLETE,
    chunk::HEARTBEAT,
    chunk::HEARTBEAT_ACK,
];

/// The next state by direction, chunk row and current state (columns in [`SctpState`] order:
/// NONE, CLOSED, COOKIE_WAIT, COOKIE_ECHOED, ESTABLISHED, SHUTDOWN_SENT, SHUTDOWN_RECD,
/// SHUTDOWN_ACK_SENT, HEARTBEAT_SENT).
#[rustfmt::skip]
const TRANSITIONS: [[[Option<SctpState>; 9]; 11]; 2] = [
    // Original direction.
    [
        /* INIT              */ [CL, CL, CW, CE, ES, CL, CL, SA, CW],
        /* INIT ACK          */ [CL, CL, CW, CE, ES, SS, SR, SA, CL],
        /* ABORT             */ [CL, CL, CL, CL, CL, CL, CL, CL, CL],
        /* SHUTDOWN          */ [CL, CL, CW, CE, SS, SS, SR, SA, CL],
        /* SHUTDOWN ACK      */ [SA, CL, CW, CE, ES, SA, SA, SA, SA],
        /* ERROR             */ [CL, CL, CW, CE, ES, SS, SR, SA, CL],
        /* COOKIE ECHO       */ [CL, CL, CE, CE, ES, SS, SR, SA, CL],
        /* COOKIE ACK        */ [CL, CL, CW, ES, ES, SS, SR, SA, CL],
        /* SHUTDOWN COMPLETE */ [CL, CL, CW, CE, ES, SS, SR, CL, CL],
        /* HEARTBEAT         */ [HS, CL, CW, CE, ES, SS, SR, SA, HS],
        /* HEARTBEAT ACK     */ [CL, CL, CW, CE, ES, SS, SR, SA, HS],
    ],
    // Reply direction.
    [
        /* INIT              */ [IV, CL, CW, CE, ES, SS, SR, SA, IV],
        /* INIT ACK          */ [IV, CW, CW, CE, ES, SS, SR, SA, IV],
        /* ABORT             */ [IV, CL, CL, CL, CL, CL, CL, CL, IV],
        /* SHUTDOWN          */ [IV, CL, CW, CE, SR, SS, SR, SA, IV],
        /* SHUTDOWN ACK      */ [IV, CL, CW, CE, ES, SA, SA, SA, IV],
        /* ERROR             */ [IV, CL, CW, CL, ES, SS, SR, SA, IV],
        /* COOKIE ECHO       */ [IV, CL, CE, CE, ES, SS, SR, SA, IV],
        /* COOKIE ACK        */ [IV, CL, CW, ES, ES, SS, SR, SA, IV],
        /* SHUTDOWN COMPLETE */ [IV, CL, CW, CE, ES, SS, SR, CL, IV],
        /* HEARTBEAT         */ [IV, CL, CW, CE, ES, SS, SR, SA, HS],
        /* HEARTBEAT ACK     */ [IV, CL, CW, CE, ES, SS, SR, SA, ES],
    ],
];

/// The state after a chunk of type `kind` travelling in `dir`; `None` where the table says
/// invalid. Chunks without a row (DATA, SACK, ...) leave the state as it is.
fn next_state(dir: Direction, state: SctpState, kind: u8) -> Option<SctpState> {
    match ROWS.iter().position(|&k| k == kind) {
        Some(row) => TRANSITIONS[dir.index()][row][state as usize],
        None => Some(state),
    }
}

/// Which chunk types a packet carries (the kernel's `map`).
#[derive(Clone, Copy, Default)]
struct ChunkMap([u64; 4]);

impl ChunkMap {
    fn insert(&mut self, kind: u8) {
        self.0[usize::from(kind >> 6)] |= 1 << (kind & 63);
    }
    fn contains(&self, kind: u8) -> bool {
        self.0[usize::from(kind >> 6)] & (1 << (kind & 63)) != 0
    }
}

/// The chunk checks every packet passes first (`do_basic_checks`); the chunk types present, or
/// `None` if the packet is invalid (a check failed, or it has no chunk at all).
fn basic_checks(packet: &Packet<&[u8]>) -> Option<ChunkMap> {
    let mut map = ChunkMap::default();
    let mut alone = false;
    let mut count = 0;
    for c in packet.chunks() {
        alone |= matches!(
            c.kind,
            chunk::INIT | chunk::INIT_ACK | chunk::SHUTDOWN_COMPLETE
        );
        let must_be_first = alone || matches!(c.kind, chunk::COOKIE_ACK | chunk::COOKIE_ECHO);
        if (must_be_first && count != 0) || c.length == 0 {
            return None;
        }
        map.insert(c.kind);
        count += 1;
    }
    (count != 0).then_some(map)
}

/// The state of one association as conntrack follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SctpConn {
    pub state: SctpState,
    /// The verification tag expected on packets in each direction.
    pub vtag: [u32; 2],
    /// Whether each direction has sent an INIT that a COOKIE ACK has not yet settled (the
    /// kernel's collision bookkeeping).
    pub init: [bool; 2],
    /// A HEARTBEAT arrived with a tag other than its direction's, from `last_dir`: its ACK may
    /// move the entry to new tags.
    pub heartbeat_vtag_failed: bool,
    pub last_dir: Direction,
}

impl Default for SctpConn {
    fn default() -> Self {
        SctpConn {
            state: SctpState::None,
            vtag: [0; 2],
            init: [false; 2],
            heartbeat_vtag_failed: false,
            last_dir: Direction::Original,
        }
    }
}

impl SctpConn {
    /// Whether early drop may evict the entry although it is ASSURED: an association that is
    /// shutting down.
    pub fn can_early_drop(&self) -> bool {
        matches!(
            self.state,
            S::ShutdownSent | S::ShutdownRecd | S::ShutdownAckSent
        )
    }

    /// Sets up a new entry from its first packet (`sctp_new`): every chunk must be one the
    /// table starts an entry with; the tags the packet announces are taken. `false` if the
    /// packet cannot start an entry.
    fn begin(&mut self, packet: &Packet<&[u8]>) -> bool {
        *self = SctpConn::default();
        for c in packet.chunks() {
            match next_state(Direction::Original, S::None, c.kind) {
                None | Some(S::None) => return false,
                Some(_) => {}
            }
            match c.kind {
                chunk::INIT => {
                    if packet.verification_tag() != 0 {
                        return false;
                    }
                    let Some(tag) = c.init_tag() else {
                        return false;
                    };
                    self.vtag[Direction::Reply.index()] = tag;
                }
                chunk::HEARTBEAT => {
                    self.vtag[Direction::Original.index()] = packet.verification_tag();
                }
                // An out-of-the-blue SHUTDOWN ACK: the answer (SHUTDOWN COMPLETE or ABORT)
                // reflects its tag.
                chunk::SHUTDOWN_ACK => {
                    self.vtag[Direction::Reply.index()] = packet.verification_tag();
                }
                _ => {}
            }
        }
        true
    }

    /// The special tag rules of one chunk (RFC 9260 §8.5.1) and the HEARTBEAT bookkeeping.
    /// `Err` if the packet is invalid; `Ok(true)` if the chunk is to be skipped (a HEARTBEAT
    /// with a new tag, let through once).
    fn check_tag(
        &mut self,
        c: &Chunk<'_>,
        vtag: u32,
        dir: Direction,
        map: &ChunkMap,
        ignore: bool,
    ) -> Result<bool, ()> {
        let (own, peer) = (dir.index(), dir.opposite().index());
        match c.kind {
            chunk::INIT if vtag != 0 => return Err(()),
            chunk::ABORT | chunk::SHUTDOWN_COMPLETE => {
                let expected = if c.flags & chunk::FLAG_T != 0 {
                    self.vtag[peer]
                } else {
                    self.vtag[own]
                };
                if vtag != expected {
                    return Err(());
                }
            }
            chunk::COOKIE_ECHO if vtag != self.vtag[own] => return Err(()),
            chunk::COOKIE_ACK => self.init = [false; 2],
            chunk::HEARTBEAT | chunk::HEARTBEAT_ACK => {
                if self.vtag[own] == 0 {
                    self.vtag[own] = vtag;
                } else if vtag != self.vtag[own] {
                    if map.contains(chunk::DATA) || ignore {
                        return Err(());
                    }
                    if c.kind == chunk::HEARTBEAT {
                        self.heartbeat_vtag_failed = true;
                        self.last_dir = dir;
                        return Ok(true);
                    }
                    // The ACK of a HEARTBEAT that came with a new tag, from the other side:
                    // the association restarted, its tags are the new ones.
                    if !self.heartbeat_vtag_failed || self.last_dir == dir {
                        return Err(());
                    }
                    self.heartbeat_vtag_failed = false;
                    self.vtag[own] = vtag;
                    self.vtag[peer] = 0;
                } else {
                    self.heartbeat_vtag_failed = false;
                }
            }
            _ => {}
        }
        Ok(false)
    }
}

impl L4Tracker for SctpConn {
    fn new_entry(segment: &Segment, _sysctls: &Sysctls) -> Option<Self> {
        segment.sctp.map(|_| SctpConn::default())
    }

    fn packet(
        &mut self,
        ctx: &mut PacketContext<'_>,
        segment: &Segment,
        dir: Direction,
    ) -> Outcome {
        let Some(packet) = segment.sctp else {
            return Outcome::Invalid;
        };
        let Some(map) = basic_checks(&packet) else {
            return Outcome::Invalid;
        };
        let confirmed = ctx.status.contains(Status::CONFIRMED);
        if !confirmed {
            let out_of_the_blue = [chunk::ABORT, chunk::SHUTDOWN_COMPLETE, chunk::COOKIE_ACK]
                .iter()
                .any(|&k| map.contains(k));
            if out_of_the_blue || !self.begin(&packet) {
                return Outcome::Invalid;
            }
        }
        let vtag = packet.verification_tag();
        let (own, peer) = (dir.index(), dir.opposite().index());
        let own_tag_rules = [
            chunk::INIT,
            chunk::SHUTDOWN_COMPLETE,
            chunk::COOKIE_ECHO,
            chunk::ABORT,
            chunk::SHUTDOWN_ACK,
            chunk::HEARTBEAT,
            chunk::HEARTBEAT_ACK,
        ];
        if !own_tag_rules.iter().any(|&k| map.contains(k)) && vtag != self.vtag[own] {
            return Outcome::Invalid;
        }
        let mut ignore = false;
        for c in packet.chunks() {
            match self.check_tag(&c, vtag, dir, &map, ignore) {
                Err(()) => return Outcome::Invalid,
                Ok(true) => {
                    ignore = true;
                    continue;
                }
                Ok(false) => {}
            }
            let old = self.state;
            let Some(new) = next_state(dir, old, c.kind) else {
                return Outcome::Invalid;
            };
            match c.kind {
                chunk::INIT => {
                    let Some(tag) = c.init_tag() else {
                        return Outcome::Invalid;
                    };
                    // A stale or retransmitted INIT carries the tag already recorded.
                    if old == S::None || self.vtag[peer] != tag {
                        if self.init[own] && self.init[peer] {
                            self.init[peer] = false;
                        }
                        self.init[own] = true;
                    }
                    self.vtag[peer] = tag;
                    ignore |= new == S::Closed && old == S::Closed && confirmed;
                }
                chunk::INIT_ACK => {
                    let Some(tag) = c.init_tag() else {
                        return Outcome::Invalid;
                    };
                    let known = self.vtag[peer];
                    let unsolicited = !self.init[peer] && known != 0 && known != tag;
                    let collision = self.init[own] && self.init[peer] && known != tag;
                    if unsolicited || collision {
                        return Outcome::Invalid;
                    }
                    self.vtag[peer] = tag;
                }
                _ => {}
            }
            self.state = new;
            if old != new {
                ctx.events.insert(EventBits::PROTOINFO);
                if new == S::Established {
                    ctx.assure();
                }
            }
        }
        if ignore {
            return Outcome::AcceptKeepTimeout;
        }
        Outcome::Accept {
            timeout_s: ctx.sysctls.sctp_timeout(self.state),
        }
    }
}
