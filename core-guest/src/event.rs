//! Event bits, expectation event bits, status bits and the message type rule: the vocabulary the
//! event cache, the codec and every output format share. Bit numbers are the kernel's (uapi
//! `nf_conntrack_common.h`), so a mask read from a live kernel and one produced here mean the same
//! thing. The three bit sets are one macro, `bitset!`, so they offer the same operations.

/// Declares a set of kernel bits: a `Copy` newtype over the raw integer, one associated constant
/// per bit (named as the kernel names it, without its prefix), `ALL`, the set operations, and
/// `names()`, which yields the names of the set bits, lowest first.
///
/// The bits must be listed from the lowest up, so that `names()` comes out in bit order.
macro_rules! bitset {
    (
        $(#[$meta:meta])*
        pub struct $name:ident($repr:ty);
        $(
            $(#[$bit_meta:meta])*
            $bit:ident = $shift:expr;
        )+
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub struct $name(pub $repr);

        impl $name {
            $(
                $(#[$bit_meta])*
                pub const $bit: $name = $name(1 << $shift);
            )+
            /// Every bit this set names.
            pub const ALL: $name = $name(0 $(| (1 << $shift))+);

            /// Each bit with its name, as the kernel names it without its prefix.
            pub const NAMES: &'static [($name, &'static str)] = &[$(($name::$bit, stringify!($bit))),+];

            pub const fn empty() -> $name {
                $name(0)
            }
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }
            pub const fn contains(self, other: $name) -> bool {
                self.0 & other.0 == other.0
            }
            pub const fn intersects(self, other: $name) -> bool {
                self.0 & other.0 != 0
            }
            pub const fn union(self, other: $name) -> $name {
                $name(self.0 | other.0)
            }
            pub const fn without(self, other: $name) -> $name {
                $name(self.0 & !other.0)
            }
            pub fn insert(&mut self, other: $name) {
                self.0 |= other.0;
            }
            pub fn remove(&mut self, other: $name) {
                self.0 &= !other.0;
            }
            /// Names of the set bits, lowest first, without the kernel's prefix.
            pub fn names(self) -> impl Iterator<Item = &'static str> {
                Self::NAMES
                    .iter()
                    .filter(move |(bit, _)| self.contains(*bit))
                    .map(|(_, name)| *name)
            }
        }
    };
}

bitset! {
    /// A set of `IPCT_*` event bits (`enum ip_conntrack_events`): what one packet, a timeout or a
    /// delete did to an entry. `ALL` is every bit the kernel defines (`__IPCT_MAX` is 12).
    pub struct EventBits(u16);
    NEW = 0;
    RELATED = 1;
    DESTROY = 2;
    REPLY = 3;
    ASSURED = 4;
    PROTOINFO = 5;
    HELPER = 6;
    MARK = 7;
    SEQADJ = 8;
    SECMARK = 9;
    LABEL = 10;
    SYNPROXY = 11;
}

impl EventBits {
    /// The ctnetlink message a set of bits becomes: DESTROY wins, then NEW/RELATED, then UPDATE.
    pub fn message_kind(self) -> Option<MessageKind> {
        if self.is_empty() {
            None
        } else if self.intersects(EventBits::DESTROY) {
            Some(MessageKind::Destroy)
        } else if self.intersects(EventBits::NEW.union(EventBits::RELATED)) {
            Some(MessageKind::New)
        } else {
            Some(MessageKind::Update)
        }
    }
}

bitset! {
    /// A set of `IPEXP_*` expectation event bits (`enum ip_conntrack_expect_events`). A bit space of
    /// its own: `IPEXP_NEW` is bit 0 like `IPCT_NEW`, but `IPEXP_DESTROY` is bit 1, where entries
    /// have RELATED. An expectation's missed bits and the event field of its frames hold these.
    pub struct ExpEventBits(u16);
    NEW = 0;
    DESTROY = 1;
}

impl ExpEventBits {
    /// The ctnetlink message a set of expectation bits becomes: `IPCTNL_MSG_EXP_DELETE`
    /// ([`MessageKind::Destroy`]) if DESTROY is set, else `IPCTNL_MSG_EXP_NEW`
    /// ([`MessageKind::New`]). Expectations have no UPDATE. Their messages go to their own
    /// groups (`NFNLGRP_CONNTRACK_EXP_NEW` 4, `NFNLGRP_CONNTRACK_EXP_DESTROY` 6), not to
    /// [`MessageKind::group`]'s.
    pub fn message_kind(self) -> Option<MessageKind> {
        if self.intersects(ExpEventBits::DESTROY) {
            Some(MessageKind::Destroy)
        } else if self.intersects(ExpEventBits::NEW) {
            Some(MessageKind::New)
        } else {
            None
        }
    }
}

/// The three kinds of conntrack event message, each with its netlink multicast group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageKind {
    New,
    Update,
    Destroy,
}

impl MessageKind {
    /// The `NFNLGRP_CONNTRACK_*` group number the message is multicast to.
    pub const fn group(self) -> u8 {
        use crate::netlink::consts::*;
        let group = match self {
            MessageKind::New => NFNLGRP_CONNTRACK_NEW,
            MessageKind::Update => NFNLGRP_CONNTRACK_UPDATE,
            MessageKind::Destroy => NFNLGRP_CONNTRACK_DESTROY,
        };
        group as u8
    }
    /// The bracketed tag `conntrack -E` prints, and the JSON `type`.
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::New => "NEW",
            MessageKind::Update => "UPDATE",
            MessageKind::Destroy => "DESTROY",
        }
    }
}

bitset! {
    /// The entry's `IPS_*` status bits (`enum ip_conntrack_status`).
    pub struct Status(u32);
    EXPECTED = 0;
    SEEN_REPLY = 1;
    ASSURED = 2;
    CONFIRMED = 3;
    SRC_NAT = 4;
    DST_NAT = 5;
    SEQ_ADJUST = 6;
    SRC_NAT_DONE = 7;
    DST_NAT_DONE = 8;
    DYING = 9;
    FIXED_TIMEOUT = 10;
    TEMPLATE = 11;
    UNTRACKED = 12;
    HELPER = 13;
    OFFLOAD = 14;
    HW_OFFLOAD = 15;
}

/// TCP conntrack states, numbered as `CTA_PROTOINFO_TCP_STATE` carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    None = 0,
    SynSent = 1,
    SynRecv = 2,
    Established = 3,
    FinWait = 4,
    CloseWait = 5,
    LastAck = 6,
    TimeWait = 7,
    Close = 8,
    SynSent2 = 9,
}

impl TcpState {
    pub const ALL: [TcpState; 10] = [
        TcpState::None,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::Established,
        TcpState::FinWait,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::SynSent2,
    ];
    pub fn from_u8(v: u8) -> Option<TcpState> {
        Self::ALL.get(v as usize).copied()
    }
    /// The name the kernel and `conntrack` print.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::None => "NONE",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::SynSent2 => "SYN_SENT2",
        }
    }
}

/// SCTP conntrack states, numbered as `CTA_PROTOINFO_SCTP_STATE` carries them. (The kernel's
/// enum still names a tenth, HEARTBEAT_ACKED, that no transition has reached since Linux 6.4;
/// it is left out, and a message carrying it is refused like any other unknown state.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum SctpState {
    None = 0,
    Closed = 1,
    CookieWait = 2,
    CookieEchoed = 3,
    Established = 4,
    ShutdownSent = 5,
    ShutdownRecd = 6,
    ShutdownAckSent = 7,
    HeartbeatSent = 8,
}

impl SctpState {
    pub const ALL: [SctpState; 9] = [
        SctpState::None,
        SctpState::Closed,
        SctpState::CookieWait,
        SctpState::CookieEchoed,
        SctpState::Established,
        SctpState::ShutdownSent,
        SctpState::ShutdownRecd,
        SctpState::ShutdownAckSent,
        SctpState::HeartbeatSent,
    ];
    pub fn from_u8(v: u8) -> Option<SctpState> {
        Self::ALL.get(v as usize).copied()
    }
    /// The name the kernel and `conntrack` print.
    pub fn name(self) -> &'static str {
        match self {
            SctpState::None => "NONE",
            SctpState::Closed => "CLOSED",
            SctpState::CookieWait => "COOKIE_WAIT",
            SctpState::CookieEchoed => "COOKIE_ECHOED",
            SctpState::Established => "ESTABLISHED",
            SctpState::ShutdownSent => "SHUTDOWN_SENT",
            SctpState::ShutdownRecd => "SHUTDOWN_RECD",
            SctpState::ShutdownAckSent => "SHUTDOWN_ACK_SENT",
            SctpState::HeartbeatSent => "HEARTBEAT_SENT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_kind_follows_the_union_of_bits() {
        let e = EventBits::REPLY.union(EventBits::PROTOINFO);
        assert_eq!(e.message_kind(), Some(MessageKind::Update));
        assert_eq!(
            e.union(EventBits::NEW).message_kind(),
            Some(MessageKind::New)
        );
        assert_eq!(
            e.union(EventBits::RELATED).message_kind(),
            Some(MessageKind::New)
        );
        assert_eq!(
            e.union(EventBits::NEW)
                .union(EventBits::DESTROY)
                .message_kind(),
            Some(MessageKind::Destroy)
        );
        assert_eq!(EventBits::empty().message_kind(), None);
    }

    #[test]
    fn names_are_the_kernel_names_in_bit_order() {
        let e = EventBits::NEW
            .union(EventBits::ASSURED)
            .union(EventBits::PROTOINFO);
        assert_eq!(
            e.names().collect::<Vec<_>>(),
            ["NEW", "ASSURED", "PROTOINFO"]
        );
        let s = Status(Status::CONFIRMED.0 | Status::SEEN_REPLY.0);
        assert_eq!(s.names().collect::<Vec<_>>(), ["SEEN_REPLY", "CONFIRMED"]);
        assert_eq!(
            Status::ALL.names().last(),
            Some("HW_OFFLOAD"),
            "the last IPS_ bit this engine names"
        );
    }

    #[test]
    fn every_bit_is_named_once_in_bit_order() {
        let names: Vec<_> = EventBits::ALL.names().collect();
        assert_eq!(names.len(), 12);
        assert_eq!(EventBits::ALL, EventBits((1 << 12) - 1));
        assert_eq!(Status::ALL, Status(u32::from(u16::MAX)));
        for (bit, name) in names.iter().enumerate() {
            assert_eq!(EventBits(1 << bit).names().collect::<Vec<_>>(), [*name]);
        }
    }

    #[test]
    fn set_operations() {
        let mut e = EventBits::NEW.union(EventBits::REPLY);
        assert!(e.contains(EventBits::NEW) && !e.contains(EventBits::ALL));
        assert!(e.intersects(EventBits::ALL) && !e.intersects(EventBits::DESTROY));
        e.remove(EventBits::NEW);
        assert_eq!(e, EventBits::REPLY);
        e.insert(EventBits::MARK);
        assert_eq!(e.without(EventBits::REPLY), EventBits::MARK);
        assert!(EventBits::empty().is_empty() && EventBits::default().is_empty());
    }

    /// `IPEXP_NEW` and `IPEXP_DESTROY` are bits 0 and 1 (uapi `nf_conntrack_common.h`); bit 1 of
    /// an entry's events is RELATED, which is why the two spaces are different types.
    #[test]
    fn expectation_bits_are_their_own_space() {
        assert_eq!((ExpEventBits::NEW.0, ExpEventBits::DESTROY.0), (1, 2));
        assert_eq!(ExpEventBits::DESTROY.0, EventBits::RELATED.0);
        assert_eq!(
            ExpEventBits::ALL.names().collect::<Vec<_>>(),
            ["NEW", "DESTROY"]
        );
        assert_eq!(ExpEventBits::NEW.message_kind(), Some(MessageKind::New));
        assert_eq!(ExpEventBits::ALL.message_kind(), Some(MessageKind::Destroy));
        assert_eq!(ExpEventBits::empty().message_kind(), None);
        assert_eq!(ExpEventBits(1 << 5).message_kind(), None);
    }
}
