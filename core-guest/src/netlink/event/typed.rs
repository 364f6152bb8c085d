//! The typed path of the event encoder, and the differential tests that keep the byte path
//! honest.
//!
//! [`TypedSink`] receives the same calls as [`MessageWriter`] and builds the codec's model
//! instead of bytes: no lengths, no padding, no byte order. For every event captured from Linux,
//! the byte path must give the kernel's bytes and the typed path the kernel's parsed message;
//! for events the engine builds, both paths must agree.

use super::*;
use crate::netlink::{
    CounterAttr, CtAttr, CtMessage, ExpAttr, ExpMessage, IpAttr, ProtoAttr, ProtoInfoAttr, RawAttr,
    SctpInfoAttr, TcpInfoAttr, TimestampAttr, TupleAttr,
};

/// An attribute as the sink received it: a leaf with its big-endian payload, or a nest.
#[derive(Clone, Debug)]
enum Node {
    Leaf(u16, Vec<u8>),
    Nest(u16, Vec<Node>),
}

/// Collects attributes as a tree; [`TypedSink::conntrack`] and [`TypedSink::expect`] turn it
/// into the codec's typed attributes.
#[derive(Debug, Default)]
pub(crate) struct TypedSink {
    /// Open lists: the message's own first, then one per open nest.
    open: Vec<(u16, Vec<Node>)>,
}

impl TypedSink {
    pub(crate) fn new() -> Self {
        TypedSink {
            open: vec![(0, Vec::new())],
        }
    }

    fn push(&mut self, node: Node) {
        self.open.last_mut().expect("the root list").1.push(node);
    }

    fn root(mut self) -> Vec<Node> {
        assert_eq!(self.open.len(), 1, "a nest was left open");
        self.open.pop().expect("the root list").1
    }

    pub(crate) fn conntrack(self) -> Vec<CtAttr> {
        self.root().into_iter().map(ct_attr).collect()
    }

    pub(crate) fn expect(self) -> Vec<ExpAttr> {
        self.root().into_iter().map(exp_attr).collect()
    }
}

impl AttrSink for TypedSink {
    type Nest = ();
    fn u8(&mut self, kind: u16, v: u8) {
        self.push(Node::Leaf(kind, vec![v]));
    }
    fn u16(&mut self, kind: u16, v: u16) {
        self.push(Node::Leaf(kind, v.to_be_bytes().to_vec()));
    }
    fn u32(&mut self, kind: u16, v: u32) {
        self.push(Node::Leaf(kind, v.to_be_bytes().to_vec()));
    }
    fn u64(&mut self, kind: u16, v: u64) {
        self.push(Node::Leaf(kind, v.to_be_bytes().to_vec()));
    }
    fn bytes(&mut self, kind: u16, v: &[u8]) {
        self.push(Node::Leaf(kind, v.to_vec()));
    }
    fn begin_nest(&mut self, kind: u16) {
        self.open.push((kind, Vec::new()));
    }
    fn end_nest(&mut self, (): ()) {
        let (kind, children) = self.open.pop().expect("an open nest");
        self.push(Node::Nest(kind, children));
    }
}

fn be(p: &[u8]) -> u64 {
    p.iter().fold(0, |acc, &b| (acc << 8) | b as u64)
}

fn other(kind: u16, payload: &[u8]) -> RawAttr {
    RawAttr {
        kind,
        payload: payload.to_vec(),
    }
}

fn leaf(node: &Node) -> (u16, &[u8]) {
    match node {
        Node::Leaf(kind, p) => (*kind, p),
        Node::Nest(kind, _) => panic!("attribute {kind} should be a leaf"),
    }
}

fn tuple_attrs(children: Vec<Node>) -> Vec<TupleAttr> {
    children
        .into_iter()
        .map(|n| match n {
            Node::Nest(CTA_TUPLE_IP, ips) => TupleAttr::Ip(
                ips.iter()
                    .map(|n| match leaf(n) {
                        (CTA_IP_V4_SRC, p) => IpAttr::V4Src(p.try_into().expect("4 bytes")),
                        (CTA_IP_V4_DST, p) => IpAttr::V4Dst(p.try_into().expect("4 bytes")),
                        (CTA_IP_V6_SRC, p) => IpAttr::V6Src(p.try_into().expect("16 bytes")),
                        (CTA_IP_V6_DST, p) => IpAttr::V6Dst(p.try_into().expect("16 bytes")),
                        (kind, p) => IpAttr::Other(other(kind, p)),
                    })
                    .collect(),
            ),
            Node::Nest(CTA_TUPLE_PROTO, ps) => TupleAttr::Proto(
                ps.iter()
                    .map(|n| {
                        let (kind, p) = leaf(n);
                        let v = be(p);
                        match kind {
                            CTA_PROTO_NUM => ProtoAttr::Num(v as u8),
                            CTA_PROTO_SRC_PORT => ProtoAttr::SrcPort(v as u16),
                            CTA_PROTO_DST_PORT => ProtoAttr::DstPort(v as u16),
                            CTA_PROTO_ICMP_ID => ProtoAttr::IcmpId(v as u16),
                            CTA_PROTO_ICMP_TYPE => ProtoAttr::IcmpType(v as u8),
                            CTA_PROTO_ICMP_CODE => ProtoAttr::IcmpCode(v as u8),
                            CTA_PROTO_ICMPV6_ID => ProtoAttr::Icmpv6Id(v as u16),
                            CTA_PROTO_ICMPV6_TYPE => ProtoAttr::Icmpv6Type(v as u8),
                            CTA_PROTO_ICMPV6_CODE => ProtoAttr::Icmpv6Code(v as u8),
                            _ => ProtoAttr::Other(other(kind, p)),
                        }
                    })
                    .collect(),
            ),
            n => panic!("unexpected tuple attribute {n:?}"),
        })
        .collect()
}

fn ct_attr(node: Node) -> CtAttr {
    match node {
        Node::Nest(CTA_TUPLE_ORIG, t) => CtAttr::TupleOrig(tuple_attrs(t)),
        Node::Nest(CTA_TUPLE_REPLY, t) => CtAttr::TupleReply(tuple_attrs(t)),
        Node::Nest(CTA_TUPLE_MASTER, t) => CtAttr::TupleMaster(tuple_attrs(t)),
        Node::Nest(kind @ (CTA_COUNTERS_ORIG | CTA_COUNTERS_REPLY), c) => {
            let c = c
                .iter()
                .map(|n| match leaf(n) {
                    (CTA_COUNTERS_PACKETS, p) => CounterAttr::Packets(be(p)),
                    (CTA_COUNTERS_BYTES, p) => CounterAttr::Bytes(be(p)),
                    (kind, p) => CounterAttr::Other(other(kind, p)),
                })
                .collect();
            if kind == CTA_COUNTERS_ORIG {
                CtAttr::CountersOrig(c)
            } else {
                CtAttr::CountersReply(c)
            }
        }
        Node::Nest(CTA_TIMESTAMP, ts) => CtAttr::Timestamp(
            ts.iter()
                .map(|n| match leaf(n) {
                    (CTA_TIMESTAMP_START, p) => TimestampAttr::Start(be(p)),
                    (CTA_TIMESTAMP_STOP, p) => TimestampAttr::Stop(be(p)),
                    (kind, p) => TimestampAttr::Other(other(kind, p)),
                })
                .collect(),
        ),
        Node::Nest(CTA_PROTOINFO, info) => CtAttr::ProtoInfo(
            info.into_iter()
                .map(|n| match n {
                    Node::Nest(CTA_PROTOINFO_TCP, tcp) => ProtoInfoAttr::Tcp(
                        tcp.iter()
                            .map(|n| match leaf(n) {
                                (CTA_PROTOINFO_TCP_STATE, p) => TcpInfoAttr::State(p[0]),
                                (CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, p) => {
                                    TcpInfoAttr::WscaleOriginal(p[0])
                                }
                                (CTA_PROTOINFO_TCP_WSCALE_REPLY, p) => {
                                    TcpInfoAttr::WscaleReply(p[0])
                                }
                                (CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, p) => {
                                    TcpInfoAttr::FlagsOriginal {
                                        flags: p[0],
                                        mask: p[1],
                                    }
                                }
                                (CTA_PROTOINFO_TCP_FLAGS_REPLY, p) => TcpInfoAttr::FlagsReply {
                                    flags: p[0],
                                    mask: p[1],
                                },
                                (kind, p) => TcpInfoAttr::Other(other(kind, p)),
                            })
                            .collect(),
                    ),
                    Node::Nest(CTA_PROTOINFO_SCTP, sctp) => ProtoInfoAttr::Sctp(
                        sctp.iter()
                            .map(|n| match leaf(n) {
                                (CTA_PROTOINFO_SCTP_STATE, p) => SctpInfoAttr::State(p[0]),
                                (CTA_PROTOINFO_SCTP_VTAG_ORIGINAL, p) => {
                                    SctpInfoAttr::VtagOriginal(be(p) as u32)
                                }
                                (CTA_PROTOINFO_SCTP_VTAG_REPLY, p) => {
                                    SctpInfoAttr::VtagReply(be(p) as u32)
                                }
                                (kind, p) => SctpInfoAttr::Other(other(kind, p)),
                            })
                            .collect(),
                    ),
                    n => panic!("unexpected protoinfo {n:?}"),
                })
                .collect(),
        ),
        Node::Leaf(kind, p) => {
            let v = be(&p);
            match kind {
                CTA_STATUS => CtAttr::Status(v as u32),
                CTA_TIMEOUT => CtAttr::Timeout(v as u32),
                CTA_MARK => CtAttr::Mark(v as u32),
                CTA_ID => CtAttr::Id(v as u32),
                CTA_ZONE => CtAttr::Zone(v as u16),
                CTA_TIMESTAMP_EVENT => CtAttr::TimestampEvent(v),
                _ => CtAttr::Other(other(kind, &p)),
            }
        }
        n => panic!("unexpected conntrack attribute {n:?}"),
    }
}

fn exp_attr(node: Node) -> ExpAttr {
    match node {
        Node::Nest(CTA_EXPECT_MASTER, t) => ExpAttr::Master(tuple_attrs(t)),
        Node::Nest(CTA_EXPECT_TUPLE, t) => ExpAttr::Tuple(tuple_attrs(t)),
        Node::Nest(CTA_EXPECT_MASK, t) => ExpAttr::Mask(tuple_attrs(t)),
        Node::Leaf(kind, p) => {
            let v = be(&p);
            match kind {
                CTA_EXPECT_TIMEOUT => ExpAttr::Timeout(v as u32),
                CTA_EXPECT_ID => ExpAttr::Id(v as u32),
                CTA_EXPECT_ZONE => ExpAttr::Zone(v as u16),
                CTA_EXPECT_FLAGS => ExpAttr::Flags(v as u32),
                CTA_EXPECT_CLASS => ExpAttr::Class(v as u32),
                _ => ExpAttr::Other(other(kind, &p)),
            }
        }
        n => panic!("unexpected expectation attribute {n:?}"),
    }
}

impl ConntrackEvent {
    /// The message as the codec's typed model, built through [`TypedSink`].
    pub(crate) fn to_message(self) -> CtMessage {
        let mut sink = TypedSink::new();
        self.write_attrs(&mut sink);
        CtMessage {
            header: self.header(),
            family: self.orig.family as u8,
            version: NFNETLINK_V0,
            res_id: 0,
            attrs: sink.conntrack(),
        }
    }
}

impl ExpectEvent {
    /// The message as the codec's typed model, built through [`TypedSink`].
    pub(crate) fn to_message(self) -> ExpMessage {
        let mut sink = TypedSink::new();
        self.write_attrs(&mut sink);
        ExpMessage {
            header: self.header(),
            family: self.tuple.family as u8,
            version: NFNETLINK_V0,
            res_id: 0,
            attrs: sink.expect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TcpState;
    use crate::netlink::tests::testdata::EVENTS;
    use crate::netlink::tests::unhex;
    use crate::netlink::{event_attr_order, follows_order};
    use crate::tuple::{Addr, Family};

    /// What a captured kernel message says, as the encoder's input.
    fn event_of(m: &CtMessage) -> ConntrackEvent {
        let kind = m.kind().expect("an event");
        let protoinfo = m.attrs.iter().find_map(|a| match a {
            CtAttr::ProtoInfo(p) => p.iter().find_map(|p| match p {
                ProtoInfoAttr::Sctp(t) => {
                    let mut info = SctpInfo::default();
                    for a in t {
                        match a {
                            SctpInfoAttr::State(s) => info.state = *s,
                            SctpInfoAttr::VtagOriginal(v) => info.vtag[0] = *v,
                            SctpInfoAttr::VtagReply(v) => info.vtag[1] = *v,
                            _ => {}
                        }
                    }
                    Some(ProtoInfo::Sctp(info))
                }
                ProtoInfoAttr::Tcp(t) => {
                    let mut info = TcpInfo::default();
                    for a in t {
                        match a {
                            TcpInfoAttr::State(s) => info.state = *s,
                            TcpInfoAttr::WscaleOriginal(s) => info.wscale[0] = *s,
                            TcpInfoAttr::WscaleReply(s) => info.wscale[1] = *s,
                            TcpInfoAttr::FlagsOriginal { flags, .. } => info.flags[0] = *flags,
                            TcpInfoAttr::FlagsReply { flags, .. } => info.flags[1] = *flags,
                            _ => {}
                        }
                    }
                    Some(ProtoInfo::Tcp(info))
                }
                _ => None,
            }),
            _ => None,
        });
        let master = m.attrs.iter().find_map(|a| match a {
            CtAttr::TupleMaster(t) => crate::netlink::tuple_from_attrs(m.family()?, t),
            _ => None,
        });
        let mut bits = EventBits::empty();
        if protoinfo.is_some() && kind != MessageKind::Destroy {
            bits.insert(EventBits::PROTOINFO);
        }
        if master.is_some() {
            bits.insert(EventBits::RELATED);
        }
        if m.mark().is_some() {
            bits.insert(EventBits::MARK);
        }
        let counters = match (m.counters_orig(), m.counters_reply()) {
            (Some(o), Some(r)) => Some([o, r]),
            _ => None,
        };
        let event_ns = m.timestamp_event();
        let timestamps = match m.timestamp() {
            Some((start, stop)) => Some((start.unwrap_or(0), stop.unwrap_or(0))),
            None => event_ns.map(|_| (0, 0)),
        };
        ConntrackEvent {
            kind,
            bits,
            orig: m.orig().expect("orig"),
            reply: m.reply().expect("reply"),
            zone: m.zone(),
            id: m.id().expect("id"),
            status: m.status().expect("status").0,
            timeout_s: m.timeout().unwrap_or(0),
            protoinfo,
            master,
            mark: m.mark().unwrap_or(0),
            counters,
            timestamps,
            event_ns: event_ns.unwrap_or(0),
            port_id: m.header.port_id,
        }
    }

    /// For every event captured from Linux: the byte path gives the kernel's bytes, the typed
    /// path gives the kernel's parsed message, and both follow the kernel's attribute order.
    #[test]
    fn both_paths_reproduce_every_captured_kernel_event() {
        assert!(EVENTS.len() >= 20);
        for f in EVENTS {
            let bytes = unhex(f.hex);
            let (kernel, _) = CtMessage::parse(&bytes).expect("parse");
            let event = event_of(&kernel);
            let mut written = Vec::new();
            event.write_to(&mut written);
            assert_eq!(written, bytes, "byte path, {}", f.name);
            let typed = event.to_message();
            assert_eq!(typed, kernel, "typed path, {}", f.name);
            assert_eq!(typed.to_vec(), bytes, "typed path re-emitted, {}", f.name);
            assert!(follows_order(&typed.attrs, event_attr_order(f.kind)));
        }
    }

    fn v4(a: [u8; 4], b: [u8; 4], src: u16, dst: u16) -> Tuple {
        Tuple {
            family: Family::Ipv4,
            src: Addr::v4(a),
            dst: Addr::v4(b),
            proto: ipproto::TCP,
            l4: L4Tuple::Ports { src, dst },
        }
    }

    /// The conditions no capture covers: zone, master tuple, mark, a DESTROY with time left.
    #[test]
    fn both_paths_agree_on_every_optional_attribute() {
        let orig = v4([10, 0, 0, 1], [10, 0, 0, 2], 40000, 21);
        let base = ConntrackEvent {
            kind: MessageKind::New,
            bits: EventBits::RELATED
                .union(EventBits::PROTOINFO)
                .union(EventBits::MARK),
            orig,
            reply: orig.invert().unwrap(),
            zone: 7,
            id: 0xdead_beef,
            status: 0x8,
            timeout_s: 120,
            protoinfo: Some(ProtoInfo::Tcp(TcpInfo {
                state: TcpState::SynSent as u8,
                wscale: [7, 0],
                flags: [3, 0],
            })),
            master: Some(v4([10, 0, 0, 1], [10, 0, 0, 2], 40001, 21)),
            mark: 0,
            counters: Some(
                [Counters {
                    packets: 1,
                    bytes: 60,
                }; 2],
            ),
            timestamps: Some((1, 0)),
            event_ns: 99,
            port_id: 0,
        };
        for kind in [MessageKind::New, MessageKind::Update, MessageKind::Destroy] {
            for timeout_s in [0, 5] {
                let event = ConntrackEvent {
                    kind,
                    timeout_s,
                    ..base
                };
                let mut written = Vec::new();
                event.write_to(&mut written);
                let typed = event.to_message();
                assert_eq!(typed.to_vec(), written, "{kind:?}");
                assert_eq!(CtMessage::parse(&written).unwrap().0, typed, "{kind:?}");
                assert!(follows_order(&typed.attrs, event_attr_order(kind)));
                let has = |want: fn(&CtAttr) -> bool| typed.attrs.iter().any(want);
                assert!(has(|a| matches!(a, CtAttr::Zone(7))));
                assert!(has(|a| matches!(a, CtAttr::Mark(0))));
                let destroy = kind == MessageKind::Destroy;
                assert_eq!(has(|a| matches!(a, CtAttr::TupleMaster(_))), !destroy);
                assert_eq!(has(|a| matches!(a, CtAttr::CountersOrig(_))), destroy);
                assert_eq!(
                    has(|a| matches!(a, CtAttr::Timeout(_))),
                    !destroy || timeout_s != 0
                );
            }
        }
    }

    #[test]
    fn expectation_events_agree_on_both_paths() {
        let tuple = v4([10, 0, 0, 2], [10, 0, 0, 1], 0, 20);
        let mut mask = tuple;
        mask.src = Addr([0xff; 16]);
        for (kind, zone) in [(ExpectEventKind::New, 0), (ExpectEventKind::Destroy, 3)] {
            let event = ExpectEvent {
                kind,
                master: v4([10, 0, 0, 1], [10, 0, 0, 2], 40000, 21),
                tuple,
                mask,
                timeout_s: 300,
                id: 42,
                zone,
                flags: 1,
                class: 0,
            };
            let mut written = Vec::new();
            event.write_to(&mut written);
            let typed = event.to_message();
            let mut reemitted = Vec::new();
            typed.emit_to_vec(&mut reemitted);
            assert_eq!(reemitted, written);
            assert_eq!(ExpMessage::parse(&written).unwrap().0, typed);
            assert_eq!(
                typed.kind(),
                Some(match kind {
                    ExpectEventKind::New => MessageKind::New,
                    ExpectEventKind::Destroy => MessageKind::Destroy,
                })
            );
            assert_eq!(
                typed.attrs.iter().any(|a| matches!(a, ExpAttr::Zone(_))),
                zone != 0
            );
        }
    }
}
