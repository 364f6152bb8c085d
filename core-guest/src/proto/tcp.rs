//! The TCP tracker: the modern kernel's state machine, packet classes, window bookkeeping and
//! timeout choice.
//!
//! A packet is first reduced to its class (SYN, SYN/ACK, FIN, ACK, RST, none); the transition
//! table below, indexed by direction, class and current state, gives the new state or one of
//! two verdicts: invalid (`IV`) or ignore (`IG`, accepted without changing anything because our
//! view may be out of sync with the endpoints). Special cases the table cannot express (reopen
//! after TIME_WAIT, simultaneous open, resynchronisation on an ignored SYN, RST checks) follow it,
//! as in `nf_conntrack_proto_tcp.c`. Sequence numbers are followed per direction as the kernel
//! does (`td_end`, `td_maxend`, `td_maxwin`, `td_maxack`, the flags `conntrack` shows), so the
//! PROTOINFO an event carries matches; windows are checked unless `be_liberal` is set.

use super::{L4Tracker, Outcome, PacketContext, Segment};
use crate::config::Sysctls;
use crate::event::{EventBits, Status, TcpState};
use crate::tuple::{Direction, L4Tuple};

/// TCP header flag bits.
pub mod flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// Per-direction tracker flags (`IP_CT_TCP_FLAG_*`), as ctnetlink carries them.
pub mod ct_flag {
    pub const WINDOW_SCALE: u8 = 0x01;
    pub const SACK_PERM: u8 = 0x02;
    pub const CLOSE_INIT: u8 = 0x04;
    pub const BE_LIBERAL: u8 = 0x08;
    pub const DATA_UNACKNOWLEDGED: u8 = 0x10;
    pub const MAXACK_SET: u8 = 0x20;
    pub const EXP_CHALLENGE_ACK: u8 = 0x40;
    pub const SIMULTANEOUS_OPEN: u8 = 0x80;
}

/// The TCP fields of one segment, as the engine parsed them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    pub seq: u32,
    pub ack: u32,
    /// What the kernel's `tcp_sack` makes of the segment: the highest right edge among the
    /// blocks of its first SACK option when that is after `ack`, else `ack`. The window checks
    /// use it in place of the ACK when the receiver permitted SACK.
    pub sack: u32,
    pub flags: u8,
    pub window: u16,
    pub wscale: Option<u8>,
    pub sack_perm: bool,
    /// Bytes of payload, from the IP length (captures may cut the payload itself).
    pub payload_len: u32,
}

impl TcpSegment {
    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
    /// `segment_seq_plus_len`: the sequence number after this segment.
    fn end(&self) -> u32 {
        self.seq
            .wrapping_add(self.payload_len)
            .wrapping_add(self.has(flag::SYN) as u32)
            .wrapping_add(self.has(flag::FIN) as u32)
    }
}

/// Reads a TCP header into its ports and the segment the tracker sees, or `None` when it is
/// truncated or carries a flag combination the kernel refuses. `l4_wire_len` is the L4 length
/// the IP header claims (captures may cut the payload).
pub fn parse_segment(l4: &[u8], l4_wire_len: usize) -> Option<(L4Tuple, TcpSegment)> {
    let packet = crate::wire::tcp::Packet::new_checked(l4).ok()?;
    let r = crate::wire::tcp::Repr::parse(&packet);
    let flags = r.flags.0;
    if !valid_flags(flags) {
        return None;
    }
    let ports = L4Tuple::Ports {
        src: r.src_port,
        dst: r.dst_port,
    };
    let segment = TcpSegment {
        seq: r.seq,
        ack: r.ack,
        sack: sack_edge(&packet, r.ack),
        flags,
        window: r.window,
        wscale: r.wscale,
        sack_perm: r.sack_perm,
        payload_len: (l4_wire_len as u32).saturating_sub(r.header_len as u32),
    };
    Some((ports, segment))
}

/// `tcp_sack`: starting from `ack`, the right edge of each block of the first SACK option
/// that lies after the edge so far. A timestamp-only header, options cut short and malformed
/// SACK options leave `ack`, as in the kernel.
fn sack_edge(packet: &crate::wire::tcp::Packet<&[u8]>, ack: u32) -> u32 {
    use crate::wire::tcp::TcpOption;
    let Some(blocks) = packet.options().find_map(|o| match o {
        TcpOption::SackRange(blocks) => Some(blocks),
        _ => None,
    }) else {
        return ack;
    };
    blocks.chunks_exact(8).fold(ack, |edge, block| {
        let right = u32::from_be_bytes([block[4], block[5], block[6], block[7]]);
        if after(right, edge) { right } else { edge }
    })
}

/// Flag combinations the kernel accepts (`tcp_valid_flags`), after PSH, ECE and CWR are masked.
pub fn valid_flags(flags: u8) -> bool {
    use flag::*;
    let f = flags & !(PSH | ECE | CWR);
    matches!(
        f,
        x if x == SYN
            || x == SYN | URG
            || x == SYN | ACK
            || x == RST
            || x == RST | ACK
            || x == FIN | ACK
            || x == FIN | ACK | URG
            || x == ACK
            || x == ACK | URG
    )
}

/// Packet classes, the table's rows, in the kernel's order (`TCP_*_SET`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Class {
    Syn = 0,
    SynAck = 1,
    Fin = 2,
    Ack = 3,
    Rst = 4,
    None = 5,
}

impl Class {
    pub fn of(flags: u8) -> Class {
        if flags & flag::RST != 0 {
            Class::Rst
        } else if flags & flag::SYN != 0 {
            if flags & flag::ACK != 0 {
                Class::SynAck
            } else {
                Class::Syn
            }
        } else if flags & flag::FIN != 0 {
            Class::Fin
        } else if flags & flag::ACK != 0 {
            Class::Ack
        } else {
            Class::None
        }
    }
}

/// A cell of the transition table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    To(TcpState),
    Invalid,
    Ignore,
}

const SS: Next = Next::To(TcpState::SynSent);
const SR: Next = Next::To(TcpState::SynRecv);
const ES: Next = Next::To(TcpState::Established);
const FW: Next = Next::To(TcpState::FinWait);
const CW: Next = Next::To(TcpState::CloseWait);
const LA: Next = Next::To(TcpState::LastAck);
const TW: Next = Next::To(TcpState::TimeWait);
const CL: Next = Next::To(TcpState::Close);
const S2: Next = Next::To(TcpState::SynSent2);
const IV: Next = Next::Invalid;
const IG: Next = Next::Ignore;

/// `TRANSITIONS[direction][class][state]`: the modern kernel's `tcp_conntracks`.
#[rustfmt::skip]
const TRANSITIONS: [[[Next; 10]; 6]; 2] = [
    // ORIGINAL
    [
        //          NO  SS  SR  ES  FW  CW  LA  TW  CL  S2
        /* syn    */ [SS, SS, IG, IG, IG, IG, IG, SS, SS, S2],
        // A SYN to a closed or time-waiting connection reopens it; in SYN_RECV and later the
        // endpoints may be in sync while we are not, so ignore and watch for the answer.
        /* synack */ [IV, IV, SR, IV, IV, IV, IV, IV, IV, SR],
        // A SYN/ACK in the original direction only makes sense in a simultaneous open.
        /* fin    */ [IV, IV, FW, FW, LA, LA, LA, TW, CL, IV],
        /* ack    */ [ES, IV, ES, ES, CW, CW, TW, TW, CL, IV],
        // An ACK from NONE is a mid-stream pickup (subject to tcp_loose).
        /* rst    */ [IV, CL, CL, CL, CL, CL, CL, CL, CL, CL],
        /* none   */ [IV, IV, IV, IV, IV, IV, IV, IV, IV, IV],
    ],
    // REPLY
    [
        //          NO  SS  SR  ES  FW  CW  LA  TW  CL  S2
        /* syn    */ [IV, S2, IV, IV, IV, IV, IV, SS, IV, S2],
        // A SYN answering a SYN is a simultaneous open (SYN_SENT2).
        /* synack */ [IV, SR, IG, IG, IG, IG, IG, IG, IG, SR],
        /* fin    */ [IV, IV, FW, FW, LA, LA, LA, TW, CL, IV],
        /* ack    */ [IV, IG, SR, ES, CW, CW, TW, TW, CL, IG],
        // An ACK answering our SYN without SYN means we are out of sync: ignore.
        /* rst    */ [IV, CL, CL, CL, CL, CL, CL, CL, CL, CL],
        /* none   */ [IV, IV, IV, IV, IV, IV, IV, IV, IV, IV],
    ],
];

fn lookup(dir: Direction, class: Class, state: TcpState) -> Next {
    TRANSITIONS[dir.index()][class as usize][state as usize]
}

/// What the kernel calls `struct ip_ct_tcp_state`: one direction's sequence bookkeeping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Side {
    pub td_end: u32,
    pub td_maxend: u32,
    pub td_maxwin: u32,
    pub td_maxack: u32,
    pub td_scale: u8,
    pub flags: u8,
}

/// Marker for "no packet seen yet" in `last_index` (`TCP_NONE_SET`).
const LAST_NONE: Class = Class::None;

/// The TCP state of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpConn {
    pub state: TcpState,
    pub seen: [Side; 2],
    pub last_dir: Direction,
    pub last_index: Class,
    pub last_seq: u32,
    pub last_ack: u32,
    pub last_end: u32,
    pub last_win: u16,
    pub last_flags: u8,
    pub last_wscale: u8,
    pub retrans: u32,
}

fn after(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) < 0
}
fn before(a: u32, b: u32) -> bool {
    after(b, a)
}

impl TcpConn {
    fn blank() -> TcpConn {
        TcpConn {
            state: TcpState::None,
            seen: [Side::default(); 2],
            last_dir: Direction::Original,
            last_index: LAST_NONE,
            last_seq: 0,
            last_ack: 0,
            last_end: 0,
            last_win: 0,
            last_flags: 0,
            last_wscale: 0,
            retrans: 0,
        }
    }

    /// If `self` is `then` with every number of one direction's sequence space moved `step`
    /// along and nothing else changed, that direction and the step.
    ///
    /// Each number belongs to one direction's space: a side's `td_end` and `td_maxend` to its
    /// own, its `td_maxack` to the other's (it acknowledges the other's data), `last_seq` and
    /// `last_end` to the last segment's direction and `last_ack` to the other. The tracker only
    /// ever compares numbers of one space with each other, so it treats a state moved along one
    /// space, and a segment moved the same way, exactly as the originals: a bulk transfer, in
    /// which each data segment and its ACK move the sender's space by the segment's length,
    /// can be carried forward without running each exchange (see `Tracker::transfer`).
    pub(crate) fn moved_from(&self, then: &TcpConn) -> Option<(usize, u32)> {
        (0..2).find_map(|side| {
            let step = self.seen[side].td_end.wrapping_sub(then.seen[side].td_end);
            let mut moved = then.clone();
            moved.move_along(side, step);
            (step != 0 && moved == *self).then_some((side, step))
        })
    }

    /// Moves every number of direction `side`'s sequence space `step` along.
    pub(crate) fn move_along(&mut self, side: usize, step: u32) {
        let own = &mut self.seen[side];
        own.td_end = own.td_end.wrapping_add(step);
        own.td_maxend = own.td_maxend.wrapping_add(step);
        let other = &mut self.seen[1 - side];
        other.td_maxack = other.td_maxack.wrapping_add(step);
        if self.last_dir.index() == side {
            self.last_seq = self.last_seq.wrapping_add(step);
            self.last_end = self.last_end.wrapping_add(step);
        } else {
            self.last_ack = self.last_ack.wrapping_add(step);
        }
    }

    /// Early drop and the GC may evict closing connections even when assured.
    pub fn can_early_drop(&self) -> bool {
        matches!(
            self.state,
            TcpState::FinWait
                | TcpState::LastAck
                | TcpState::TimeWait
                | TcpState::Close
                | TcpState::CloseWait
        )
    }

    /// `nf_tcp_handle_invalid`: on an assured entry, an out-of-window FIN or RST is noted as the
    /// last packet, unless it answers one from the other direction; then the two ends have
    /// evidently given up while we are out of sync, so an entry with more than 120 s left is cut
    /// to `tcp_timeout_unacknowledged` (no event), to be evicted soon.
    fn handle_invalid(&mut self, ctx: &PacketContext<'_>, dir: Direction, class: Class) -> Outcome {
        let status = &*ctx.status;
        if !status.contains(Status::ASSURED)
            || status.contains(Status::FIXED_TIMEOUT)
            || !matches!(class, Class::Fin | Class::Rst)
        {
            return Outcome::Invalid;
        }
        let answers = self.last_dir != dir && matches!(self.last_index, Class::Fin | Class::Rst);
        if !answers {
            self.last_index = class;
            self.last_dir = dir;
            return Outcome::Invalid;
        }
        const NS: u64 = 1_000_000_000;
        let expires = ctx.deadline_ns.saturating_sub(ctx.now_ns);
        let timeout_s = ctx.sysctls.tcp_timeout_unacknowledged;
        if expires < 120 * NS || expires <= timeout_s as u64 * NS {
            return Outcome::Invalid;
        }
        Outcome::InvalidShortenTimeout { timeout_s }
    }

    fn established(&self) -> bool {
        self.state == TcpState::Established
    }

    /// `tcp_options`: window scale and SACK permission, read from a SYN.
    fn read_options(side: &mut Side, seg: &TcpSegment) {
        if seg.sack_perm {
            side.flags |= ct_flag::SACK_PERM;
        }
        if let Some(ws) = seg.wscale {
            side.flags |= ct_flag::WINDOW_SCALE;
            side.td_scale = ws.min(14);
        }
    }

    /// `tcp_in_window`: checks the segment against both sides' windows and, when it fits,
    /// updates their bookkeeping.
    ///
    /// As in the modern kernel, a segment that does not fit is either invalid (beyond what the
    /// receiver allowed, or acknowledging data never seen) or ignored (an old retransmission,
    /// an overly delayed ACK, or a few bytes more than the window, whose end is still noted so
    /// the peer's ACK for them is believed). Under `be_liberal` (the sysctl or the direction's
    /// flag) such a segment is accepted instead, but it updates nothing: `nf_tcp_log_invalid`
    /// answers ACCEPT and `tcp_in_window` returns at once.
    fn in_window(
        &mut self,
        dir: Direction,
        class: Class,
        seg: &TcpSegment,
        sysctls: &Sysctls,
    ) -> Window {
        let (s, r) = (dir.index(), dir.opposite().index());
        let mut seq = seg.seq;
        let mut ack = seg.ack;
        let mut sack = if self.seen[r].flags & ct_flag::SACK_PERM != 0 {
            seg.sack
        } else {
            ack
        };
        let mut win = seg.window as u32;
        let mut end = seg.end();
        let state = self.state;
        {
            let (sender, receiver) = split_pair(&mut self.seen, s, r);
            if sender.td_maxwin == 0 {
                if seg.has(flag::SYN) {
                    // SYN/ACK answering a SYN, or a SYN in the reply direction.
                    sender.td_end = end;
                    sender.td_maxend = end;
                    sender.td_maxwin = win.max(1);
                    Self::read_options(sender, seg);
                    if !(sender.flags & ct_flag::WINDOW_SCALE != 0
                        && receiver.flags & ct_flag::WINDOW_SCALE != 0)
                    {
                        sender.td_scale = 0;
                        receiver.td_scale = 0;
                    }
                    if !seg.has(flag::ACK) {
                        // Simultaneous open.
                        return Window::Accept;
                    }
                } else {
                    // Mid-stream: the history is lost, take what the packet says.
                    sender.td_end = end;
                    let swin = win << sender.td_scale;
                    sender.td_maxwin = swin.max(1);
                    sender.td_maxend = end.wrapping_add(sender.td_maxwin);
                    if receiver.td_maxwin == 0 {
                        receiver.td_end = sack;
                        receiver.td_maxend = sack;
                    } else if sack == receiver.td_end.wrapping_add(1) {
                        receiver.td_end = receiver.td_end.wrapping_add(1);
                    }
                }
            } else if seg.has(flag::SYN)
                && after(end, sender.td_end)
                && matches!(state, TcpState::SynSent | TcpState::SynRecv)
            {
                // A reinitialised connection may reuse the tuple with higher sequence numbers.
                sender.td_end = end;
                sender.td_maxend = end;
                sender.td_maxwin = win.max(1);
                Self::read_options(sender, seg);
            }
            if !seg.has(flag::ACK) || (seg.has(flag::RST) && ack == 0) {
                // No ACK (or a broken stack's RST with ack 0): pretend it acknowledges all.
                ack = receiver.td_end;
                sack = receiver.td_end;
            }
            if seg.has(flag::RST) && seq == 0 && state == TcpState::SynSent {
                // RST answering a SYN.
                seq = sender.td_end;
                end = sender.td_end;
            }
            let in_recv_win = receiver.td_maxwin == 0
                || after(
                    end,
                    sender
                        .td_end
                        .wrapping_sub(receiver.td_maxwin)
                        .wrapping_sub(1),
                );
            let max_ack_window = sender.td_maxwin.max(66_000);
            let ack_ok = after(
                sack,
                receiver.td_end.wrapping_sub(max_ack_window).wrapping_sub(1),
            );
            let ack_seen = before(sack, receiver.td_end.wrapping_add(1));
            let liberal = sysctls.tcp_be_liberal || sender.flags & ct_flag::BE_LIBERAL != 0;
            // `nf_tcp_log_invalid`: liberal windows accept what the checks refuse.
            let refuse = |verdict: Window| if liberal { Window::Accept } else { verdict };
            if !before(seq, sender.td_maxend.wrapping_add(1)) {
                let overshot = end.wrapping_sub(sender.td_maxend).wrapping_add(1);
                if in_recv_win && ack_ok && overshot <= receiver.td_maxwin && ack_seen {
                    // Some bytes more than the window allowed: note their end, so the peer's
                    // ACK for them is not "over the upper bound" later.
                    sender.td_end = end;
                    sender.flags |= ct_flag::DATA_UNACKNOWLEDGED;
                    return refuse(Window::Ignore);
                }
                return refuse(Window::Invalid);
            }
            if !ack_seen {
                return refuse(Window::Invalid);
            }
            if !in_recv_win || !ack_ok {
                // Already acknowledged data again, or an overly delayed ACK.
                return refuse(Window::Ignore);
            }
            if !seg.has(flag::SYN) {
                win <<= sender.td_scale;
            }
            let swin = win.wrapping_add(sack.wrapping_sub(ack));
            if sender.td_maxwin < swin {
                sender.td_maxwin = swin;
            }
            if after(end, sender.td_end) {
                sender.td_end = end;
                sender.flags |= ct_flag::DATA_UNACKNOWLEDGED;
            }
            if seg.has(flag::ACK) {
                if sender.flags & ct_flag::MAXACK_SET == 0 {
                    sender.td_maxack = ack;
                    sender.flags |= ct_flag::MAXACK_SET;
                } else if after(ack, sender.td_maxack) {
                    sender.td_maxack = ack;
                }
            }
            if receiver.td_maxwin != 0 && after(end, sender.td_maxend) {
                receiver.td_maxwin = receiver
                    .td_maxwin
                    .wrapping_add(end.wrapping_sub(sender.td_maxend));
            }
            if after(sack.wrapping_add(win), receiver.td_maxend.wrapping_sub(1)) {
                receiver.td_maxend = sack.wrapping_add(win);
                if win == 0 {
                    receiver.td_maxend = receiver.td_maxend.wrapping_add(1);
                }
            }
            if ack == receiver.td_end {
                receiver.flags &= !ct_flag::DATA_UNACKNOWLEDGED;
            }
        }
        if class == Class::Ack {
            if self.last_dir == dir
                && self.last_seq == seq
                && self.last_ack == ack
                && self.last_end == end
                && self.last_win == seg.window
            {
                self.retrans = self.retrans.saturating_add(1);
            } else {
                self.last_dir = dir;
                self.last_seq = seq;
                self.last_ack = ack;
                self.last_end = end;
                self.last_win = seg.window;
                self.retrans = 0;
            }
        }
        Window::Accept
    }
}

/// What `tcp_in_window` makes of a segment (`enum nf_ct_tcp_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Window {
    /// In the window (or let through by `be_liberal`): the state machine goes on.
    Accept,
    /// Accepted without changing the state or the timeout (`NFCT_TCP_IGNORE`).
    Ignore,
    /// Marked invalid (`NFCT_TCP_INVALID`).
    Invalid,
}

fn split_pair(seen: &mut [Side; 2], s: usize, r: usize) -> (&mut Side, &mut Side) {
    let [a, b] = seen;
    if s == 0 && r == 1 { (a, b) } else { (b, a) }
}

impl L4Tracker for TcpConn {
    fn new_entry(segment: &Segment, sysctls: &Sysctls) -> Option<Self> {
        let seg = segment.tcp?;
        let class = Class::of(seg.flags);
        let mut conn = TcpConn::blank();
        match lookup(Direction::Original, class, TcpState::None) {
            Next::To(TcpState::SynSent) => {
                let side = &mut conn.seen[0];
                side.td_end = seg.end();
                side.td_maxwin = (seg.window as u32).max(1);
                side.td_maxend = side.td_end;
                Self::read_options(side, &seg);
            }
            Next::To(_) if sysctls.tcp_loose => {
                // Pickup of a connection already under way: assume SACK and liberal windows.
                let side = &mut conn.seen[0];
                side.td_end = seg.end();
                side.td_maxwin = (seg.window as u32).max(1);
                side.td_maxend = side.td_end.wrapping_add(side.td_maxwin);
                let f = ct_flag::SACK_PERM | ct_flag::BE_LIBERAL;
                conn.seen[0].flags = f;
                conn.seen[1].flags = f;
            }
            _ => return None,
        }
        Some(conn)
    }

    fn packet(
        &mut self,
        ctx: &mut PacketContext<'_>,
        segment: &Segment,
        dir: Direction,
    ) -> Outcome {
        let Some(seg) = segment.tcp else {
            return Outcome::Invalid;
        };
        let class = Class::of(seg.flags);
        let mut old = self.state;
        let mut new = lookup(dir, class, old);
        let seen_reply = ctx.status.contains(Status::SEEN_REPLY);

        if new == SS && old >= TcpState::TimeWait {
            // Reopen: after a close (CLOSE_INIT seen on either side) or an abort in this
            // direction, end the old entry and let the SYN create a fresh one; else ignore.
            let close_init = (self.seen[0].flags | self.seen[1].flags) & ct_flag::CLOSE_INIT != 0;
            if close_init || (self.last_dir == dir && self.last_index == Class::Rst) {
                return Outcome::Repeat;
            }
            new = IG;
        }
        match new {
            Next::Ignore => {
                if class == Class::SynAck
                    && self.last_index == Class::Syn
                    && self.last_dir != dir
                    && seg.ack == self.last_end
                {
                    // This SYN/ACK answers a SYN we ignored: the endpoints are in sync, so
                    // resynchronise from what we noted then.
                    old = TcpState::SynSent;
                    new = SR;
                    let ld = self.last_dir.index();
                    let side = &mut self.seen[ld];
                    side.td_end = self.last_end;
                    side.td_maxend = self.last_end;
                    side.td_maxwin = (self.last_win as u32).max(1);
                    side.td_scale = self.last_wscale;
                    self.last_flags &= !ct_flag::EXP_CHALLENGE_ACK;
                    side.flags = self.last_flags & !ct_flag::MAXACK_SET;
                    // `nf_ct_tcp_state_reset`: the answering side starts over, keeping only
                    // its be-liberal flag.
                    let liberal = self.seen[dir.index()].flags & ct_flag::BE_LIBERAL;
                    self.seen[dir.index()] = Side {
                        flags: liberal,
                        ..Side::default()
                    };
                } else {
                    self.last_index = class;
                    self.last_dir = dir;
                    self.last_seq = seg.seq;
                    self.last_end = seg.end();
                    self.last_win = seg.window;
                    if class == Class::Syn && dir == Direction::Original {
                        self.last_flags = 0;
                        self.last_wscale = 0;
                        if seg.sack_perm {
                            self.last_flags |= ct_flag::SACK_PERM;
                        }
                        if let Some(ws) = seg.wscale {
                            self.last_flags |= ct_flag::WINDOW_SCALE;
                            self.last_wscale = ws.min(14);
                        }
                        // A SYN on a connection in LAST_ACK: a stack following RFC 5961
                        // answers it with a challenge ACK, which must not close the entry.
                        if old == TcpState::LastAck {
                            self.last_flags |= ct_flag::EXP_CHALLENGE_ACK;
                        }
                    }
                    // A reply ACK to a SYN in SYN_SENT may be a challenge ACK (the SYN hit a
                    // socket in TIME_WAIT); a RST answering it carries the sequence number it
                    // acknowledged.
                    if old == TcpState::SynSent && class == Class::Ack && dir == Direction::Reply {
                        self.last_ack = seg.ack;
                    }
                    return Outcome::AcceptKeepTimeout;
                }
            }
            Next::Invalid => return Outcome::Invalid,
            Next::To(_) => {}
        }
        let Next::To(mut new_state) = new else {
            return Outcome::Invalid;
        };

        let mut skip_window = false;
        match new_state {
            // The challenge ACK answering a SYN we let through in LAST_ACK is not the ACK of
            // the last FIN: accepted, no state change, no refresh.
            TcpState::TimeWait
                if old == TcpState::LastAck
                    && class == Class::Ack
                    && self.last_dir != dir
                    && self.last_index == Class::Syn
                    && self.last_flags & ct_flag::EXP_CHALLENGE_ACK != 0 =>
            {
                self.last_flags &= !ct_flag::EXP_CHALLENGE_ACK;
                return Outcome::AcceptKeepTimeout;
            }
            TcpState::SynSent2 => self.last_flags |= ct_flag::SIMULTANEOUS_OPEN,
            // The reply's ACK completing a simultaneous open.
            TcpState::SynRecv
                if dir == Direction::Reply
                    && class == Class::Ack
                    && self.last_flags & ct_flag::SIMULTANEOUS_OPEN != 0 =>
            {
                new_state = TcpState::Established;
            }
            TcpState::Close if class == Class::Rst => {
                if self.can_early_drop() {
                    skip_window = true;
                } else {
                    let peer = dir.opposite().index();
                    if self.seen[peer].flags & ct_flag::MAXACK_SET != 0
                        && self.last_index != Class::Syn
                    {
                        let seq = seg.seq;
                        if seq == 0 && !self.established() {
                            // Most likely the answer to a SYN we let through.
                        } else if before(seq, self.seen[peer].td_maxack) {
                            return Outcome::Invalid;
                        } else if !self.established() || seq == self.seen[peer].td_maxack {
                        } else if self.last_index == Class::Ack
                            && self.last_dir == dir
                            && seq == self.last_end
                        {
                            // The RST ends a train of segments we saw.
                        } else {
                            // Not exactly at the expected sequence: keep the state so a
                            // challenge ACK can follow.
                            new_state = old;
                        }
                    }
                    let assured = ctx.status.contains(Status::ASSURED);
                    if ((seen_reply && self.last_index == Class::Syn)
                        || (!assured && self.last_index == Class::Ack))
                        && seg.ack == self.last_end
                    {
                        // RST answering a SYN or ACK we let through: skip the window check.
                        skip_window = true;
                    }
                    if old == TcpState::SynSent
                        && self.last_index == Class::Ack
                        && self.last_dir == Direction::Reply
                        && seg.seq == self.last_ack
                    {
                        // RST answering the challenge ACK we let through in SYN_SENT.
                        skip_window = true;
                    }
                }
            }
            _ => {}
        }

        if !skip_window {
            match self.in_window(dir, class, &seg, ctx.sysctls) {
                Window::Accept => {}
                Window::Ignore => return Outcome::AcceptKeepTimeout,
                Window::Invalid => return self.handle_invalid(ctx, dir, class),
            }
        }
        self.last_index = class;
        self.last_dir = dir;
        self.state = new_state;
        if old != new_state && new_state == TcpState::FinWait {
            self.seen[dir.index()].flags |= ct_flag::CLOSE_INIT;
        }

        let s = ctx.sysctls;
        let timeout_of = |st: TcpState| s.tcp_timeout(st);
        let unacked = (self.seen[0].flags | self.seen[1].flags) & ct_flag::DATA_UNACKNOWLEDGED != 0;
        let mut timeout = if self.retrans >= s.tcp_max_retrans
            && timeout_of(new_state) > s.tcp_timeout_max_retrans
        {
            s.tcp_timeout_max_retrans
        } else if class == Class::Rst {
            timeout_of(TcpState::Close)
        } else if unacked && timeout_of(new_state) > s.tcp_timeout_unacknowledged {
            s.tcp_timeout_unacknowledged
        } else if self.last_win == 0 && timeout_of(new_state) > s.tcp_timeout_max_retrans {
            s.tcp_timeout_max_retrans
        } else {
            timeout_of(new_state)
        };

        if new_state != old {
            ctx.events.insert(EventBits::PROTOINFO);
        }
        if !seen_reply {
            if seg.has(flag::RST) {
                // The only answer is a reset: there never was a connection.
                return Outcome::AcceptAndKill;
            }
            if class == Class::Syn && old == TcpState::SynSent {
                // A retransmitted SYN does not keep the entry alive.
                return Outcome::AcceptKeepTimeout;
            }
            if new_state == TcpState::Established && timeout > s.tcp_timeout_unacknowledged {
                // Picked up mid-stream: no long timeout until the other side answers.
                timeout = s.tcp_timeout_unacknowledged;
            }
        } else if !ctx.status.contains(Status::ASSURED)
            && matches!(old, TcpState::SynRecv | TcpState::Established)
            && new_state == TcpState::Established
        {
            ctx.assure();
        }
        Outcome::Accept { timeout_s: timeout }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_kernel_precedence() {
        assert_eq!(Class::of(flag::RST | flag::SYN), Class::Rst);
        assert_eq!(Class::of(flag::SYN | flag::ACK), Class::SynAck);
        assert_eq!(Class::of(flag::FIN | flag::ACK), Class::Fin);
        assert_eq!(Class::of(flag::ACK | flag::PSH), Class::Ack);
        assert_eq!(Class::of(0), Class::None);
    }

    #[test]
    fn the_sack_edge_is_the_highest_right_edge_of_the_first_sack_option() {
        let edge = |options: &[u8], ack: u32| {
            let l4 = crate::wire::build::tcp_with_options(1, 2, 0, ack, flag::ACK, 9, options, 0);
            parse_segment(&l4, l4.len()).expect("a segment").1.sack
        };
        let block = |l: u32, r: u32| [l.to_be_bytes(), r.to_be_bytes()].concat();
        let sack = |blocks: &[Vec<u8>]| {
            let mut o = vec![1, 1, 5, 2 + 8 * blocks.len() as u8];
            o.extend(blocks.concat());
            o
        };
        // Two blocks: the higher right edge, whatever their order.
        assert_eq!(edge(&sack(&[block(150, 200), block(300, 400)]), 100), 400);
        assert_eq!(edge(&sack(&[block(300, 400), block(150, 200)]), 100), 400);
        // Edges at or before the ACK leave it (a D-SACK of old data).
        assert_eq!(edge(&sack(&[block(50, 90)]), 100), 100);
        // Across the wrap of the sequence space, "after" is modular.
        assert_eq!(edge(&sack(&[block(u32::MAX - 5, 10)]), u32::MAX - 100), 10);
        // No SACK option, timestamps only, or a SACK option of a bad length: the ACK.
        assert_eq!(edge(&[], 100), 100);
        assert_eq!(edge(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2], 100), 100);
        assert_eq!(edge(&[5, 6, 0, 0, 1, 0], 100), 100);
        // Only the first SACK option counts.
        let mut two = sack(&[block(150, 200)]);
        two.extend(sack(&[block(300, 400)]));
        assert_eq!(edge(&two, 100), 200);
    }

    #[test]
    fn flag_validity_masks_psh_ece_cwr() {
        assert!(valid_flags(flag::SYN | flag::ECE | flag::CWR));
        assert!(valid_flags(flag::ACK | flag::PSH));
        assert!(!valid_flags(flag::FIN));
        assert!(!valid_flags(flag::SYN | flag::FIN));
        assert!(!valid_flags(0));
    }

    #[test]
    fn table_spot_checks_against_the_reference() {
        use Direction::*;
        assert_eq!(lookup(Original, Class::Syn, TcpState::TimeWait), SS);
        assert_eq!(lookup(Reply, Class::Syn, TcpState::TimeWait), SS);
        assert_eq!(lookup(Reply, Class::SynAck, TcpState::SynRecv), IG);
        assert_eq!(lookup(Original, Class::SynAck, TcpState::SynRecv), SR);
        assert_eq!(lookup(Reply, Class::Ack, TcpState::SynSent), IG);
        assert_eq!(lookup(Original, Class::Ack, TcpState::None), ES);
        assert_eq!(lookup(Original, Class::Fin, TcpState::CloseWait), LA);
        assert_eq!(lookup(Reply, Class::Ack, TcpState::LastAck), TW);
        assert_eq!(lookup(Original, Class::None, TcpState::Established), IV);
    }

    /// A tiny driver: one connection, packets from either side, the entry's status kept as the
    /// engine keeps it (SEEN_REPLY on an accepted reply).
    struct Conn {
        tcp: TcpConn,
        status: Status,
        sysctls: Sysctls,
        /// The entry's deadline, with the packets all at time 0.
        deadline_ns: u64,
    }

    const C0: u32 = 1_000;
    const S0: u32 = 5_000_000;
    const WIN: u16 = 64_000;

    fn seg(seq: u32, ack: u32, flags: u8, window: u16, payload_len: u32) -> Segment<'static> {
        Segment {
            wire_len: 40 + payload_len,
            tcp: Some(TcpSegment {
                seq,
                ack,
                sack: ack,
                flags,
                window,
                wscale: None,
                sack_perm: false,
                payload_len,
            }),
            sctp: None,
        }
    }

    impl Conn {
        fn syn(sysctls: Sysctls) -> Conn {
            let first = seg(C0, 0, flag::SYN, WIN, 0);
            let mut conn = Conn {
                tcp: TcpConn::new_entry(&first, &sysctls).expect("a SYN makes an entry"),
                status: Status(0),
                sysctls,
                deadline_ns: 0,
            };
            assert!(matches!(
                conn.send(Direction::Original, first),
                Outcome::Accept { .. }
            ));
            conn
        }

        fn established(sysctls: Sysctls) -> Conn {
            let mut conn = Conn::syn(sysctls);
            conn.reply(S0, C0 + 1, flag::SYN | flag::ACK, WIN, 0);
            conn.orig(C0 + 1, S0 + 1, flag::ACK, WIN, 0);
            assert_eq!(conn.tcp.state, TcpState::Established);
            assert!(conn.status.contains(Status::ASSURED));
            conn
        }

        fn send(&mut self, dir: Direction, segment: Segment) -> Outcome {
            let mut events = EventBits::empty();
            let mut ctx = PacketContext {
                now_ns: 0,
                status: &mut self.status,
                events: &mut events,
                created_ns: 0,
                deadline_ns: self.deadline_ns,
                sysctls: &self.sysctls,
            };
            let out = self.tcp.packet(&mut ctx, &segment, dir);
            match out {
                Outcome::Accept { timeout_s } | Outcome::InvalidShortenTimeout { timeout_s } => {
                    self.deadline_ns = timeout_s as u64 * 1_000_000_000;
                }
                _ => {}
            }
            if dir == Direction::Reply
                && !matches!(
                    out,
                    Outcome::Invalid | Outcome::Repeat | Outcome::AcceptAndKill
                )
            {
                self.status.insert(Status::SEEN_REPLY);
            }
            out
        }

        fn orig(&mut self, seq: u32, ack: u32, flags: u8, win: u16, len: u32) -> Outcome {
            self.send(Direction::Original, seg(seq, ack, flags, win, len))
        }

        fn reply(&mut self, seq: u32, ack: u32, flags: u8, win: u16, len: u32) -> Outcome {
            self.send(Direction::Reply, seg(seq, ack, flags, win, len))
        }
    }

    fn short_timeouts() -> Sysctls {
        Sysctls {
            tcp_timeout_max_retrans: 5,
            tcp_timeout_unacknowledged: 4,
            ..Sysctls::default()
        }
    }

    #[test]
    fn out_of_window_data_under_be_liberal_is_accepted_but_changes_no_bookkeeping() {
        // Kernel: nf_tcp_log_invalid answers ACCEPT under be_liberal and tcp_in_window returns
        // at once. The FIN's ACK then acknowledges everything, and CLOSE_WAIT gets its own 60 s
        // rather than the unacknowledged cap (live: "out-of-window data, then close,
        // be_liberal=1").
        let mut c = Conn::established(Sysctls {
            tcp_be_liberal: true,
            ..short_timeouts()
        });
        let before = c.tcp.seen;
        let (cs, ss) = (C0 + 1, S0 + 1);
        let far = cs.wrapping_add(10_000_000);
        assert!(matches!(
            c.orig(far, ss, flag::ACK | flag::PSH, WIN, 100),
            Outcome::Accept { .. }
        ));
        assert_eq!(
            c.tcp.seen, before,
            "nothing noted from an out-of-window segment"
        );
        assert_eq!(
            c.orig(cs, ss, flag::FIN | flag::ACK, WIN, 0),
            Outcome::Accept { timeout_s: 4 }
        );
        assert_eq!(
            c.reply(ss, cs + 1, flag::ACK, WIN, 0),
            Outcome::Accept { timeout_s: 60 }
        );
        assert_eq!(c.tcp.state, TcpState::CloseWait);
    }

    #[test]
    fn out_of_window_data_is_invalid_without_be_liberal() {
        let mut c = Conn::established(short_timeouts());
        let far = (C0 + 1).wrapping_add(10_000_000);
        assert_eq!(
            c.orig(far, S0 + 1, flag::ACK | flag::PSH, WIN, 100),
            Outcome::Invalid
        );
        assert_eq!(c.tcp.state, TcpState::Established);
    }

    #[test]
    fn a_few_bytes_beyond_the_window_are_ignored_but_their_end_is_noted() {
        // Kernel: "%u bytes more than expected": td_end moves, IGNORE; the peer's ACK for those
        // bytes is then in the window (live: "bytes beyond the window, then acked").
        let mut c = Conn::established(short_timeouts());
        let (cs, ss) = (C0 + 1, S0 + 1);
        let seq = cs + WIN as u32 + 10;
        assert_eq!(
            c.orig(seq, ss, flag::ACK | flag::PSH, WIN, 100),
            Outcome::AcceptKeepTimeout
        );
        assert_eq!(c.tcp.seen[0].td_end, seq + 100);
        assert_ne!(c.tcp.seen[0].flags & ct_flag::DATA_UNACKNOWLEDGED, 0);
        assert!(matches!(
            c.reply(ss, seq + 100, flag::FIN | flag::ACK, WIN, 0),
            Outcome::Accept { .. }
        ));
        assert_eq!(c.tcp.state, TcpState::FinWait);
    }

    #[test]
    fn an_old_retransmission_is_ignored_not_invalid() {
        // Kernel: "SEQ is under lower bound (already ACKed data retransmitted)" → IGNORE.
        let mut c = Conn::established(short_timeouts());
        let (cs, ss) = (C0 + 1, S0 + 1);
        let big = 70_000u32;
        // Move the client far ahead in steps the server acknowledges.
        let mut at = cs;
        while at < cs + big {
            c.orig(at, ss, flag::ACK | flag::PSH, WIN, 30_000);
            at += 30_000;
            c.reply(ss, at, flag::ACK, WIN, 0);
        }
        assert_eq!(
            c.orig(cs, ss, flag::ACK | flag::PSH, WIN, 100),
            Outcome::AcceptKeepTimeout
        );
    }

    #[test]
    fn an_out_of_window_fin_on_an_assured_entry_is_noted_as_the_last_packet() {
        // Kernel: nf_tcp_handle_invalid records index and direction of an invalid FIN/RST
        // unless it answers one from the other direction.
        let mut c = Conn::established(short_timeouts());
        let far = (S0 + 1).wrapping_add(10_000_000);
        assert_eq!(
            c.reply(far, C0 + 1, flag::RST | flag::ACK, WIN, 0),
            Outcome::Invalid
        );
        assert_eq!(
            (c.tcp.last_index, c.tcp.last_dir),
            (Class::Rst, Direction::Reply)
        );
        let far = (C0 + 1).wrapping_add(10_000_000);
        assert_eq!(
            c.orig(far, S0 + 1, flag::FIN | flag::ACK, WIN, 0),
            Outcome::InvalidShortenTimeout { timeout_s: 4 }
        );
        assert_eq!(
            (c.tcp.last_index, c.tcp.last_dir),
            (Class::Rst, Direction::Reply),
            "an answer to the reply's RST is not noted"
        );
    }

    #[test]
    fn an_out_of_window_fin_answering_an_rst_cuts_a_long_timeout() {
        // Kernel: nf_tcp_handle_invalid lowers the timeout to tcp_timeout_unacknowledged when
        // the invalid FIN/RST answers one from the other side and more than 120 s are left.
        let mut c = Conn::established(short_timeouts());
        assert_eq!(c.deadline_ns, 432_000 * 1_000_000_000);
        let far = (S0 + 1).wrapping_add(10_000_000);
        assert_eq!(
            c.reply(far, C0 + 1, flag::RST | flag::ACK, WIN, 0),
            Outcome::Invalid
        );
        let far = (C0 + 1).wrapping_add(10_000_000);
        assert_eq!(
            c.orig(far, S0 + 1, flag::FIN | flag::ACK, WIN, 0),
            Outcome::InvalidShortenTimeout { timeout_s: 4 }
        );
        // Once short, it is not cut again.
        assert_eq!(
            c.orig(far, S0 + 1, flag::FIN | flag::ACK, WIN, 0),
            Outcome::Invalid
        );
    }

    #[test]
    fn timeout_rules_in_order_retrans_unacked_zero_window() {
        // Live: "data retransmitted 4 times, then fin" (5 s), "unacknowledged data, then fin"
        // (4 s), "zero window, then close" (5 s).
        let (cs, ss) = (C0 + 1, S0 + 1);
        let mut c = Conn::established(short_timeouts());
        for _ in 0..5 {
            c.orig(cs, ss, flag::ACK | flag::PSH, WIN, 100);
        }
        assert!(c.tcp.retrans >= 3);
        assert_eq!(
            c.orig(cs + 100, ss, flag::FIN | flag::ACK, WIN, 0),
            Outcome::Accept { timeout_s: 5 }
        );

        let mut c = Conn::established(short_timeouts());
        c.orig(cs, ss, flag::ACK | flag::PSH, WIN, 100);
        assert_eq!(
            c.reply(ss, cs, flag::FIN | flag::ACK, WIN, 0),
            Outcome::Accept { timeout_s: 4 }
        );

        let mut c = Conn::established(short_timeouts());
        c.orig(cs, ss, flag::ACK | flag::PSH, WIN, 100);
        c.reply(ss, cs + 100, flag::ACK, 0, 0);
        c.orig(cs + 100, ss, flag::FIN | flag::ACK, WIN, 0);
        assert_eq!(
            c.reply(ss, cs + 101, flag::ACK, 0, 0),
            Outcome::Accept { timeout_s: 5 }
        );
        assert_eq!(c.tcp.state, TcpState::CloseWait);
    }

    #[test]
    fn syn_retransmit_keeps_the_timeout_and_a_synack_with_a_wrong_ack_is_invalid() {
        let mut c = Conn::syn(short_timeouts());
        assert_eq!(c.orig(C0, 0, flag::SYN, WIN, 0), Outcome::AcceptKeepTimeout);
        assert_eq!(
            c.reply(S0, C0 + 5_001, flag::SYN | flag::ACK, WIN, 0),
            Outcome::Invalid
        );
        assert_eq!(c.tcp.state, TcpState::SynSent);
        assert!(matches!(
            c.reply(S0, C0 + 1, flag::SYN | flag::ACK, WIN, 0),
            Outcome::Accept { .. }
        ));
        assert_eq!(c.tcp.state, TcpState::SynRecv);
    }

    #[test]
    fn a_rst_answering_a_challenge_ack_in_syn_sent_closes_the_entry() {
        // An old duplicate SYN reaches a socket in TIME_WAIT: the stack answers with a
        // challenge ACK carrying its own numbers, which conntrack ignores (reply ACK in
        // SYN_SENT); the client resets with exactly the acknowledged number. Kernel: the RST
        // skips the window check and the entry goes to CLOSE.
        let mut c = Conn::syn(short_timeouts());
        let acked = C0.wrapping_add(777_777);
        assert_eq!(
            c.reply(S0, acked, flag::ACK, WIN, 0),
            Outcome::AcceptKeepTimeout
        );
        assert_eq!(c.tcp.state, TcpState::SynSent);
        assert_eq!(c.tcp.last_ack, acked);
        assert_eq!(
            c.orig(acked, 0, flag::RST, 0, 0),
            Outcome::Accept { timeout_s: 10 }
        );
        assert_eq!(c.tcp.state, TcpState::Close);

        // A RST with another sequence number still faces the window check.
        let mut c = Conn::syn(short_timeouts());
        c.reply(S0, acked, flag::ACK, WIN, 0);
        assert_eq!(
            c.orig(acked.wrapping_add(1), 0, flag::RST, 0, 0),
            Outcome::Invalid
        );
        assert_eq!(c.tcp.state, TcpState::SynSent);
    }

    /// An established connection closed by the server, up to LAST_ACK.
    fn in_last_ack() -> Conn {
        let mut c = Conn::established(short_timeouts());
        let (cs, ss) = (C0 + 1, S0 + 1);
        c.reply(ss, cs, flag::FIN | flag::ACK, WIN, 0);
        c.orig(cs, ss + 1, flag::ACK, WIN, 0);
        c.orig(cs, ss + 1, flag::FIN | flag::ACK, WIN, 0);
        assert_eq!(c.tcp.state, TcpState::LastAck);
        c
    }

    #[test]
    fn a_challenge_ack_in_last_ack_is_not_the_final_ack() {
        // A new SYN on the tuple while the entry waits in LAST_ACK is ignored and noted; the
        // server's RFC 5961 challenge ACK then leaves the state alone (kernel:
        // "challenge-ack ignored"), and the real final ACK still ends in TIME_WAIT.
        let (cs, ss) = (C0 + 1, S0 + 1);
        let mut c = in_last_ack();
        assert_eq!(
            c.orig(C0.wrapping_add(900_000), 0, flag::SYN, WIN, 0),
            Outcome::AcceptKeepTimeout
        );
        assert_ne!(c.tcp.last_flags & ct_flag::EXP_CHALLENGE_ACK, 0);
        let deadline = c.deadline_ns;
        assert_eq!(
            c.reply(ss + 1, cs + 1, flag::ACK, WIN, 0),
            Outcome::AcceptKeepTimeout
        );
        assert_eq!(c.tcp.state, TcpState::LastAck);
        assert_eq!(c.deadline_ns, deadline);
        assert_eq!(c.tcp.last_flags & ct_flag::EXP_CHALLENGE_ACK, 0);
        assert!(matches!(
            c.reply(ss + 1, cs + 1, flag::ACK, WIN, 0),
            Outcome::Accept { .. }
        ));
        assert_eq!(c.tcp.state, TcpState::TimeWait);

        // Without the SYN, the same ACK is the final one.
        let mut c = in_last_ack();
        assert!(matches!(
            c.reply(ss + 1, cs + 1, flag::ACK, WIN, 0),
            Outcome::Accept { .. }
        ));
        assert_eq!(c.tcp.state, TcpState::TimeWait);
    }

    #[test]
    fn resynchronising_on_a_synack_keeps_the_answering_sides_be_liberal_flag() {
        // nf_ct_tcp_state_reset keeps IP_CT_TCP_FLAG_BE_LIBERAL; the challenge-ACK mark is
        // cleared before the SYN's flags are taken over.
        let mut c = in_last_ack();
        c.tcp.seen[1].flags |= ct_flag::BE_LIBERAL;
        c.tcp.state = TcpState::TimeWait;
        let syn = C0.wrapping_add(900_000);
        c.tcp.last_flags = ct_flag::EXP_CHALLENGE_ACK;
        c.tcp.last_index = Class::None;
        // A SYN in TIME_WAIT without CLOSE_INIT is ignored and noted.
        c.tcp.seen[0].flags &= !ct_flag::CLOSE_INIT;
        c.tcp.seen[1].flags &= !ct_flag::CLOSE_INIT;
        assert_eq!(
            c.orig(syn, 0, flag::SYN, WIN, 0),
            Outcome::AcceptKeepTimeout
        );
        assert!(matches!(
            c.reply(S0, syn + 1, flag::SYN | flag::ACK, WIN, 0),
            Outcome::Accept { .. }
        ));
        assert_eq!(c.tcp.state, TcpState::SynRecv);
        assert_eq!(
            c.tcp.seen[1].flags & ct_flag::BE_LIBERAL,
            ct_flag::BE_LIBERAL
        );
        assert_eq!(c.tcp.seen[0].flags & ct_flag::EXP_CHALLENGE_ACK, 0);
    }
}
