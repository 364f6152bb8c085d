//! Protocol trackers: one per layer-4 protocol, all of one shape.
//!
//! The kernel gives every protocol the same operations (`nf_conntrack_l4proto`): may this packet
//! create an entry, and what does a packet do to an existing one. Here that shape is the
//! [`L4Tracker`] trait, and an entry holds its protocol's state inline as a [`ProtoState`]
//! enum, dispatched by `match` on the hot path: no box and no virtual call per flow.

pub mod generic;
pub mod icmp;
pub mod tcp;
pub mod udp;

use crate::config::Sysctls;
use crate::event::{EventBits, Status, TcpState};
use crate::tuple::{Direction, ipproto};

/// What the engine learnt about a packet's layer 4 before calling the tracker.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    /// Length of the L3 packet as its IP header says (what the kernel's `skb->len` counts).
    pub wire_len: u32,
    /// TCP fields; `None` for other protocols.
    pub tcp: Option<tcp::TcpSegment>,
}

/// The part of an entry a tracker may read and change while it handles one packet.
#[derive(Debug)]
pub struct PacketContext<'a> {
    pub now_ns: u64,
    pub status: &'a mut Status,
    /// Events this packet raises; the engine delivers them once the packet is done.
    pub events: &'a mut EventBits,
    /// When the entry was created, for the UDP two-second rule.
    pub created_ns: u64,
    /// When the entry times out as things stand.
    pub deadline_ns: u64,
    pub sysctls: &'a Sysctls,
}

/// What a tracker decided about a packet on an existing entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Accept, and set the entry's timeout to this many seconds from now.
    Accept { timeout_s: u32 },
    /// Accept without touching the entry's timeout (ignored TCP packets, SYN retransmits).
    AcceptKeepTimeout,
    /// Accept and count the packet, then end the entry at once (an RST before any reply).
    AcceptAndKill,
    /// The packet does not fit the entry: the kernel's `-NF_ACCEPT`, counted as invalid.
    Invalid,
    /// Invalid, and the entry's timeout is cut to this many seconds from now (TCP: an
    /// out-of-window FIN/RST answering one from the other side, on an entry with long to live).
    InvalidShortenTimeout { timeout_s: u32 },
    /// The entry is over (TCP reopen after TIME_WAIT): end it and look the packet up again.
    Repeat,
}

/// The operations every protocol tracker provides.
pub trait L4Tracker: Sized {
    /// Decides whether `segment` may create an entry (the original direction, first packet) and
    /// gives the initial state; `None` means the packet is invalid and no entry is made.
    fn new_entry(segment: &Segment, sysctls: &Sysctls) -> Option<Self>;
    /// Handles one packet on an entry (the first one included, right after `new_entry`).
    fn packet(&mut self, ctx: &mut PacketContext<'_>, segment: &Segment, dir: Direction)
    -> Outcome;
}

/// The per-entry protocol state, inline in the entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtoState {
    Tcp(tcp::TcpConn),
    Udp(udp::UdpConn),
    Icmp(icmp::IcmpConn),
    Generic(generic::GenericConn),
}

impl ProtoState {
    /// Creates the state for a first packet of protocol `proto`.
    pub fn new_entry(proto: u8, segment: &Segment, sysctls: &Sysctls) -> Option<ProtoState> {
        match proto {
            ipproto::TCP => tcp::TcpConn::new_entry(segment, sysctls).map(ProtoState::Tcp),
            ipproto::UDP => udp::UdpConn::new_entry(segment, sysctls).map(ProtoState::Udp),
            ipproto::ICMP => {
                icmp::IcmpConn::new_entry(segment, sysctls).map(|c| ProtoState::Icmp(c.v4()))
            }
            ipproto::ICMPV6 => {
                icmp::IcmpConn::new_entry(segment, sysctls).map(|c| ProtoState::Icmp(c.v6()))
            }
            _ => generic::GenericConn::new_entry(segment, sysctls).map(ProtoState::Generic),
        }
    }

    pub fn packet(
        &mut self,
        ctx: &mut PacketContext<'_>,
        segment: &Segment,
        dir: Direction,
    ) -> Outcome {
        match self {
            ProtoState::Tcp(c) => c.packet(ctx, segment, dir),
            ProtoState::Udp(c) => c.packet(ctx, segment, dir),
            ProtoState::Icmp(c) => c.packet(ctx, segment, dir),
            ProtoState::Generic(c) => c.packet(ctx, segment, dir),
        }
    }

    pub fn tcp_state(&self) -> Option<TcpState> {
        match self {
            ProtoState::Tcp(c) => Some(c.state),
            _ => None,
        }
    }

    /// Whether early drop may evict this entry even when ASSURED (TCP in a closing state).
    pub fn can_early_drop(&self) -> bool {
        match self {
            ProtoState::Tcp(c) => c.can_early_drop(),
            _ => false,
        }
    }
}
