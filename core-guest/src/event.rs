//! Event bits, status bits and the message type rule: the vocabulary the event cache, the codec
//! and every output format share. Bit numbers are the kernel's (uapi `nf_conntrack_common.h`), so a
//! mask read from a live kernel and one produced here mean the same thing.

/// A set of `IPCT_*` event bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EventBits(pub u16);

impl EventBits {
    pub const NEW: EventBits = EventBits(1 << 0);
    pub const RELATED: EventBits = EventBits(1 << 1);
    pub const DESTROY: EventBits = EventBits(1 << 2);
    pub const REPLY: EventBits = EventBits(1 << 3);
    pub const ASSURED: EventBits = EventBits(1 << 4);
    pub const PROTOINFO: EventBits = EventBits(1 << 5);
    pub const HELPER: EventBits = EventBits(1 << 6);
    pub const MARK: EventBits = EventBits(1 << 7);
    pub const SEQADJ: EventBits = EventBits(1 << 8);
    pub const SECMARK: EventBits = EventBits(1 << 9);
    pub const LABEL: EventBits = EventBits(1 << 10);
    pub const SYNPROXY: EventBits = EventBits(1 << 11);
    /// Every bit the kernel defines (`__IPCT_MAX` is 12).
    pub const ALL: EventBits = EventBits((1 << 12) - 1);

    const NAMES: [&'static str; 12] = [
        "NEW",
        "RELATED",
        "DESTROY",
        "REPLY",
        "ASSURED",
        "PROTOINFO",
        "HELPER",
        "MARK",
        "SEQADJ",
        "SECMARK",
        "LABEL",
        "SYNPROXY",
    ];

    pub const fn empty() -> EventBits {
        EventBits(0)
    }
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub const fn contains(self, other: EventBits) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn intersects(self, other: EventBits) -> bool {
        self.0 & other.0 != 0
    }
    pub const fn union(self, other: EventBits) -> EventBits {
        EventBits(self.0 | other.0)
    }
    pub const fn without(self, other: EventBits) -> EventBits {
        EventBits(self.0 & !other.0)
    }
    pub fn insert(&mut self, other: EventBits) {
        self.0 |= other.0;
    }
    pub fn remove(&mut self, other: EventBits) {
        self.0 &= !other.0;
    }
    /// Names of the set bits, lowest first.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .iter()
            .enumerate()
            .filter(move |(bit, _)| self.0 & (1 << bit) != 0)
            .map(|(_, name)| *name)
    }
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

/// The three kinds of conntrack event message, each with its netlink multicast group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageKind {
    New,
    Update,
    Destroy,
}

impl MessageKind {
    /// The `NFNLGRP_CONNTRACK_*` group number the message is multicast to.
    pub fn group(self) -> u8 {
        match self {
            MessageKind::New => 1,
            MessageKind::Update => 2,
            MessageKind::Destroy => 3,
        }
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

/// The entry's `IPS_*` status bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Status(pub u32);

impl Status {
    pub const EXPECTED: Status = Status(1 << 0);
    pub const SEEN_REPLY: Status = Status(1 << 1);
    pub const ASSURED: Status = Status(1 << 2);
    pub const CONFIRMED: Status = Status(1 << 3);
    pub const SRC_NAT: Status = Status(1 << 4);
    pub const DST_NAT: Status = Status(1 << 5);
    pub const SEQ_ADJUST: Status = Status(1 << 6);
    pub const SRC_NAT_DONE: Status = Status(1 << 7);
    pub const DST_NAT_DONE: Status = Status(1 << 8);
    pub const DYING: Status = Status(1 << 9);
    pub const FIXED_TIMEOUT: Status = Status(1 << 10);
    pub const TEMPLATE: Status = Status(1 << 11);
    pub const UNTRACKED: Status = Status(1 << 12);
    pub const HELPER: Status = Status(1 << 13);
    pub const OFFLOAD: Status = Status(1 << 14);
    pub const HW_OFFLOAD: Status = Status(1 << 15);

    const NAMES: [&'static str; 16] = [
        "EXPECTED",
        "SEEN_REPLY",
        "ASSURED",
        "CONFIRMED",
        "SRC_NAT",
        "DST_NAT",
        "SEQ_ADJUST",
        "SRC_NAT_DONE",
        "DST_NAT_DONE",
        "DYING",
        "FIXED_TIMEOUT",
        "TEMPLATE",
        "UNTRACKED",
        "HELPER",
        "OFFLOAD",
        "HW_OFFLOAD",
    ];

    pub const fn contains(self, other: Status) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn insert(&mut self, other: Status) {
        self.0 |= other.0;
    }
    /// Names of the set bits, lowest first, without the `IPS_` prefix.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .iter()
            .enumerate()
            .filter(move |(bit, _)| self.0 & (1 << bit) != 0)
            .map(|(_, name)| *name)
    }
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
    }
}
