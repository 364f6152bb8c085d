//! Codec tests: byte-exact round trips of messages captured from a live kernel, a round trip of
//! every attribute kind, unknown attributes, every malformed case as a typed error, and property
//! tests that no input makes the parser panic.

use super::codec::*;
use super::consts::*;
use crate::event::{MessageKind, Status, TcpState};
use crate::netlink::{
    CounterAttr, CtAttr, CtMessage, IpAttr, NlHeader, ProtoAttr, ProtoInfoAttr, RawAttr,
    SctpInfoAttr, TcpInfoAttr, TimestampAttr, TupleAttr, tuple_attrs,
};
use crate::tuple::{Addr, Family, L4Tuple, Tuple, ipproto};
use proptest::prelude::*;

pub(crate) mod testdata;
use testdata::*;

pub(crate) fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2));
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn ct_type(msg: u8) -> u16 {
    nfnl_msg_type(NFNL_SUBSYS_CTNETLINK, msg)
}

/// Writes one attribute header in host order (for hand-made malformed input).
fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(payload);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

/// A conntrack message around raw attribute bytes.
fn msg_with(msg_type: u16, attrs: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((20 + attrs.len()) as u32).to_ne_bytes());
    v.extend_from_slice(&msg_type.to_ne_bytes());
    v.extend_from_slice(&0u16.to_ne_bytes());
    v.extend_from_slice(&7u32.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes());
    v.extend_from_slice(&[AF_INET, 0, 0, 0]);
    v.extend_from_slice(attrs);
    v
}

fn ct_msg(attrs: Vec<CtAttr>) -> CtMessage {
    CtMessage {
        header: NlHeader {
            msg_type: ct_type(IPCTNL_MSG_CT_NEW),
            flags: NLM_F_CREATE | NLM_F_EXCL,
            seq: 0,
            port_id: 0,
        },
        family: AF_INET,
        version: 0,
        res_id: 0,
        attrs,
    }
}

fn roundtrip(m: &CtMessage) -> Vec<u8> {
    let bytes = m.to_vec();
    assert_eq!(bytes.len(), m.buffer_len());
    assert_eq!(bytes.len() % 4, 0);
    let (back, used) = CtMessage::parse(&bytes).expect("parse what we emitted");
    assert_eq!(used, bytes.len());
    assert_eq!(&back, m);
    bytes
}

// ---- captured kernel messages ----------------------------------------------------------------

#[test]
fn kernel_events_decode_to_their_model() {
    for f in EVENTS {
        let bytes = unhex(f.hex);
        let (m, used) = CtMessage::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", f.name));
        assert_eq!(used, bytes.len(), "{}", f.name);
        assert_eq!(m.kind(), Some(f.kind), "{}", f.name);
        assert_eq!(
            u32::from(f.kind.group()),
            f.groups.trailing_zeros() + 1,
            "{}",
            f.name
        );
        assert_eq!(m.family(), Some(f.family), "{}", f.name);
        assert_eq!(m.version, NFNETLINK_V0);
        assert_eq!(m.res_id, 0);
        assert_eq!(m.header.seq, 0, "{}", f.name);
        assert_eq!(m.header.port_id, f.port_id, "{}", f.name);
        let orig = m.orig().unwrap_or_else(|| panic!("{}: orig tuple", f.name));
        assert_eq!(orig.proto, f.proto, "{}", f.name);
        assert_eq!(orig.l4, f.l4, "{}", f.name);
        // Every capture stayed on loopback (127.0.0.1, and 127.0.0.2 for GRE; ::1).
        for a in [orig.src, orig.dst] {
            assert!(a.to_ip(f.family).is_loopback(), "{}: {a:?}", f.name);
        }
        assert_eq!(m.reply(), orig.invert(), "{}: reply is the inverse", f.name);
        assert_eq!(m.status(), Some(Status(f.status)), "{}", f.name);
        assert!(f.status & Status::CONFIRMED.0 != 0, "{}", f.name);
        assert_eq!(m.id(), Some(f.id), "{}", f.name);
        assert_eq!(m.timeout(), f.timeout, "{}", f.name);
        assert_eq!(m.tcp_state(), f.tcp_state, "{}", f.name);
        assert_eq!(m.sctp_state(), f.sctp_state, "{}", f.name);
        assert_eq!(m.counters_orig(), f.counters_orig, "{}", f.name);
        assert_eq!(m.counters_reply(), f.counters_reply, "{}", f.name);
        let ts = m.timestamp();
        assert_eq!(ts.map(|t| t.0).unwrap_or(None), f.ts_start, "{}", f.name);
        assert_eq!(ts.map(|t| t.1).unwrap_or(None), f.ts_stop, "{}", f.name);
        assert_eq!(m.timestamp_event(), f.ts_event, "{}", f.name);
        assert_eq!(m.zone(), 0);
        assert_eq!(m.mark(), None, "{}: mark 0 is left out of events", f.name);
        assert!(f.ts_event.is_some(), "{}: nf_conntrack_timestamp=1", f.name);
        assert!(
            follows_order(&m.attrs, event_attr_order(f.kind)),
            "{}: order {:?}",
            f.name,
            m.attrs.iter().map(CtAttr::kind).collect::<Vec<_>>()
        );
        match f.kind {
            MessageKind::Destroy => {
                assert!(f.status & Status::DYING.0 != 0, "{}", f.name);
                let (o, r) = (
                    f.counters_orig.expect("acct"),
                    f.counters_reply.expect("acct"),
                );
                // A reply was counted exactly when one was seen (GRE PPTP data, each side
                // its own flow, has none).
                let replied = f.status & Status::SEEN_REPLY.0 != 0;
                assert!(
                    o.packets >= 1 && o.bytes > 0 && (r.packets >= 1) == replied,
                    "{}",
                    f.name
                );
                let (start, stop) = (f.ts_start.expect("start"), f.ts_stop.expect("stop"));
                assert!(
                    start <= stop && stop <= f.ts_event.expect("event ts"),
                    "{}",
                    f.name
                );
                // A destroy's SCTP protoinfo carries the state only, without the tags.
                if f.proto == ipproto::SCTP {
                    let sctp = m.attrs.iter().find_map(|a| match a {
                        CtAttr::ProtoInfo(p) => Some(p.clone()),
                        _ => None,
                    });
                    let state = f.sctp_state.expect("an SCTP destroy has its state") as u8;
                    assert_eq!(
                        sctp,
                        Some(vec![ProtoInfoAttr::Sctp(vec![SctpInfoAttr::State(state)])]),
                        "{}",
                        f.name
                    );
                }
                // A destroy's TCP protoinfo carries the state only.
                if f.proto == ipproto::TCP {
                    let tcp = m.attrs.iter().find_map(|a| match a {
                        CtAttr::ProtoInfo(p) => Some(p.clone()),
                        _ => None,
                    });
                    assert_eq!(
                        tcp,
                        Some(vec![ProtoInfoAttr::Tcp(vec![TcpInfoAttr::State(
                            TcpState::TimeWait as u8
                        )])])
                    );
                }
            }
            MessageKind::New | MessageKind::Update => {
                assert!(
                    f.counters_orig.is_none() && f.ts_start.is_none(),
                    "{}",
                    f.name
                );
                assert!(f.timeout.is_some(), "{}", f.name);
                assert_eq!(f.proto == ipproto::TCP, f.tcp_state.is_some(), "{}", f.name);
                assert_eq!(
                    f.proto == ipproto::SCTP,
                    f.sctp_state.is_some(),
                    "{}",
                    f.name
                );
            }
        }
        if f.kind == MessageKind::New {
            assert_eq!(f.status, Status::CONFIRMED.0, "{}", f.name);
        }
    }
}

#[test]
fn kernel_events_reemit_byte_exact() {
    for f in EVENTS {
        let bytes = unhex(f.hex);
        let (m, _) = CtMessage::parse(&bytes).expect("parse");
        assert_eq!(m.buffer_len(), bytes.len(), "{}", f.name);
        let mut out = vec![0xaa];
        m.emit_to_vec(&mut out);
        assert_eq!(out[0], 0xaa, "emit_to_vec appends");
        assert_eq!(&out[1..], &bytes[..], "{}", f.name);
        let all: Vec<_> = parse_messages(&bytes).collect();
        assert_eq!(all, vec![Ok(m)], "{}", f.name);
    }
}

#[test]
fn kernel_events_cover_every_protocol_family_and_kind() {
    let mut seen = std::collections::BTreeSet::new();
    for f in EVENTS {
        seen.insert((f.proto, f.family, f.kind));
    }
    for (proto, family) in [
        (ipproto::TCP, Family::Ipv4),
        (ipproto::TCP, Family::Ipv6),
        (ipproto::UDP, Family::Ipv4),
        (ipproto::UDP, Family::Ipv6),
        (ipproto::ICMP, Family::Ipv4),
        (ipproto::ICMPV6, Family::Ipv6),
        (ipproto::SCTP, Family::Ipv4),
        (ipproto::SCTP, Family::Ipv6),
    ] {
        for kind in [MessageKind::New, MessageKind::Update, MessageKind::Destroy] {
            assert!(
                seen.contains(&(proto, family, kind)),
                "{proto} {family:?} {kind:?}"
            );
        }
    }
    // Both ways an entry dies: flushed by a request (port id set) and expired (port id 0).
    let destroys: Vec<_> = EVENTS
        .iter()
        .filter(|f| f.kind == MessageKind::Destroy)
        .collect();
    assert!(destroys.iter().any(|f| f.port_id != 0));
    assert!(destroys.iter().any(|f| f.port_id == 0));
}

#[test]
fn kernel_dump_reply_and_done() {
    let bytes = unhex(DUMP);
    let msgs: Vec<_> = parse_messages(&bytes)
        .collect::<Result<_, _>>()
        .expect("dump parses");
    assert_eq!(msgs.len(), DUMP_MESSAGES);
    let mut again = Vec::new();
    for m in &msgs {
        assert_eq!(m.header.msg_type, ct_type(IPCTNL_MSG_CT_NEW));
        assert_eq!(m.header.flags, NLM_F_MULTI);
        assert_eq!(m.header.seq, 1);
        assert!(follows_order(&m.attrs, dump_attr_order()), "{:?}", m.attrs);
        assert_eq!(m.mark(), Some(0), "dumps always carry the mark");
        assert!(m.use_count().is_some() && m.id().is_some() && m.counters_orig().is_some());
        assert!(m.timestamp().is_some() && m.timestamp_event().is_none());
        assert_eq!(m.reply(), m.orig().and_then(|t| t.invert()));
        m.emit_to_vec(&mut again);
    }
    assert_eq!(again, bytes);
    let protos: std::collections::BTreeSet<_> = msgs
        .iter()
        .map(|m| (m.family, m.orig().expect("orig").proto))
        .collect();
    assert_eq!(protos.len(), 6, "tcp, udp, icmp over both families");

    let done = unhex(DUMP_DONE);
    assert_eq!(
        parse_messages(&done).collect::<Vec<_>>(),
        vec![Err(DecodeError::Done)]
    );
    assert_eq!(CtMessage::parse(&done), Err(DecodeError::Done));
    // A DONE appended to the dump ends it, and nothing after it is read.
    let mut both = bytes.clone();
    both.extend_from_slice(&done);
    both.extend_from_slice(&bytes);
    let items: Vec<_> = parse_messages(&both).collect();
    assert_eq!(items.len(), DUMP_MESSAGES + 1);
    assert_eq!(items.last(), Some(&Err(DecodeError::Done)));
}

#[test]
fn kernel_error_and_ack() {
    let enoent = unhex(ENOENT);
    let err = CtMessage::parse(&enoent).unwrap_err();
    assert_eq!(err, DecodeError::NetlinkError(-2));
    assert!(err.is_control() && !err.is_ack());
    assert_eq!(parse_messages(&enoent).collect::<Vec<_>>(), vec![Err(err)]);

    // The error echoes the request, which `request()` reproduces byte for byte.
    let tuple = Tuple {
        family: Family::Ipv4,
        src: Addr::v4([127, 0, 0, 1]),
        dst: Addr::v4([127, 0, 0, 1]),
        proto: ipproto::TCP,
        l4: L4Tuple::Ports { src: 9, dst: 9 },
    };
    let req = request(
        ct_type(IPCTNL_MSG_CT_GET),
        0,
        2,
        AF_INET,
        vec![CtAttr::TupleOrig(tuple_attrs(&tuple))],
    );
    assert_eq!(req.header.flags, NLM_F_REQUEST);
    assert_eq!(req.to_vec(), enoent[20..]);
    let (echoed, _) = CtMessage::parse(&enoent[20..]).expect("echoed request");
    assert_eq!(echoed, req);

    let stats = unhex(STATS);
    let (m, _) = CtMessage::parse(&stats).expect("stats reply");
    assert_eq!(m.header.msg_type, ct_type(IPCTNL_MSG_CT_GET_STATS));
    let raw: Vec<_> = m
        .attrs
        .iter()
        .map(|a| match a {
            CtAttr::Other(r) => (
                r.kind,
                u32::from_be_bytes(r.payload[..].try_into().expect("u32")),
            ),
            other => panic!("stats attributes stay raw: {other:?}"),
        })
        .collect();
    assert_eq!(raw[0], (CTA_STATS_GLOBAL_ENTRIES, DUMP_MESSAGES as u32));
    assert_eq!(raw[1].0, CTA_STATS_GLOBAL_MAX_ENTRIES);
    assert_eq!(m.to_vec(), stats);

    let ack = unhex(ACK);
    let err = CtMessage::parse(&ack).unwrap_err();
    assert!(err.is_ack() && err.is_control());
    let mut both = stats.clone();
    both.extend_from_slice(&ack);
    let items: Vec<_> = parse_messages(&both).collect();
    assert_eq!(items, vec![Ok(m), Err(DecodeError::NetlinkError(0))]);
}

// ---- every attribute kind --------------------------------------------------------------------

fn raw(kind: u16, payload: &[u8]) -> RawAttr {
    RawAttr {
        kind,
        payload: payload.to_vec(),
    }
}

fn every_attr() -> Vec<CtAttr> {
    let v4 = vec![
        TupleAttr::Ip(vec![
            IpAttr::V4Src([10, 0, 0, 1]),
            IpAttr::V4Dst([192, 168, 1, 2]),
        ]),
        TupleAttr::Proto(vec![
            ProtoAttr::Num(6),
            ProtoAttr::SrcPort(40000),
            ProtoAttr::DstPort(443),
        ]),
        TupleAttr::Zone(7),
    ];
    let v6 = vec![
        TupleAttr::Ip(vec![IpAttr::V6Src([1; 16]), IpAttr::V6Dst([0xfe; 16])]),
        TupleAttr::Proto(vec![
            ProtoAttr::Num(58),
            ProtoAttr::Icmpv6Id(0xbeef),
            ProtoAttr::Icmpv6Type(128),
            ProtoAttr::Icmpv6Code(0),
        ]),
    ];
    let icmp = vec![TupleAttr::Proto(vec![
        ProtoAttr::Num(1),
        ProtoAttr::IcmpId(0x1234),
        ProtoAttr::IcmpType(8),
        ProtoAttr::IcmpCode(3),
    ])];
    vec![
        CtAttr::TupleOrig(v4),
        CtAttr::TupleReply(v6),
        CtAttr::TupleMaster(icmp),
        CtAttr::Zone(0x0102),
        CtAttr::Id(0xdead_beef),
        CtAttr::Status(0x20e),
        CtAttr::Timeout(432_000),
        CtAttr::ProtoInfo(vec![ProtoInfoAttr::Tcp(vec![
            TcpInfoAttr::State(3),
            TcpInfoAttr::WscaleOriginal(7),
            TcpInfoAttr::WscaleReply(14),
            TcpInfoAttr::FlagsOriginal {
                flags: 0x23,
                mask: 0x01,
            },
            TcpInfoAttr::FlagsReply {
                flags: 0x37,
                mask: 0xff,
            },
        ])]),
        CtAttr::Mark(0x8000_0001),
        CtAttr::Use(1),
        CtAttr::CountersOrig(vec![CounterAttr::Packets(u64::MAX), CounterAttr::Bytes(1)]),
        CtAttr::CountersReply(vec![CounterAttr::Packets(0), CounterAttr::Bytes(1 << 40)]),
        CtAttr::Timestamp(vec![
            TimestampAttr::Start(1),
            TimestampAttr::Stop(u64::MAX - 1),
        ]),
        CtAttr::TimestampEvent(0x18eb_d798_8379_0e4d),
    ]
}

#[test]
fn every_attribute_kind_round_trips() {
    for a in every_attr() {
        let m = ct_msg(vec![a.clone()]);
        let bytes = roundtrip(&m);
        assert_eq!(a.buffer_len() % 4, 0);
        assert_eq!(bytes.len(), 20 + a.buffer_len());
    }
    let all = ct_msg(every_attr());
    roundtrip(&all);
    // Families and message kinds other than the default.
    let mut m = ct_msg(every_attr());
    m.family = AF_INET6;
    m.version = 1;
    m.res_id = 0x0102;
    m.header = NlHeader {
        msg_type: ct_type(IPCTNL_MSG_CT_DELETE),
        flags: NLM_F_MULTI | NLM_F_DUMP_INTR,
        seq: 0xffff_fffe,
        port_id: 0x8000_0000,
    };
    let bytes = roundtrip(&m);
    assert_eq!(&bytes[18..20], &[1, 2], "res_id is big-endian");
    assert_eq!(m.kind(), Some(MessageKind::Destroy));
}

#[test]
fn byte_order_and_padding_on_the_wire() {
    let m = ct_msg(vec![
        CtAttr::Status(0x0102_0304),
        CtAttr::Zone(0x0506),
        CtAttr::TupleOrig(vec![TupleAttr::Proto(vec![ProtoAttr::Num(17)])]),
    ]);
    let b = m.to_vec();
    assert_eq!(&b[0..4], &(b.len() as u32).to_ne_bytes());
    assert_eq!(&b[4..6], &ct_type(IPCTNL_MSG_CT_NEW).to_ne_bytes());
    assert_eq!(&b[6..8], &(NLM_F_CREATE | NLM_F_EXCL).to_ne_bytes());
    // CTA_STATUS: header host order, payload big-endian.
    assert_eq!(
        &b[20..28],
        &[&8u16.to_ne_bytes()[..], &3u16.to_ne_bytes(), &[1, 2, 3, 4]].concat()
    );
    // CTA_ZONE: nla_len 6, then two bytes of zero padding.
    assert_eq!(
        &b[28..36],
        &[&6u16.to_ne_bytes()[..], &18u16.to_ne_bytes(), &[5, 6, 0, 0]].concat()
    );
    // The nests carry NLA_F_NESTED; the nest length includes the child's padding.
    let orig = u16::from_ne_bytes([b[38], b[39]]);
    assert_eq!(orig, CTA_TUPLE_ORIG | NLA_F_NESTED);
    assert_eq!(u16::from_ne_bytes([b[36], b[37]]), 4 + 4 + 8);
    assert_eq!(
        u16::from_ne_bytes([b[42], b[43]]),
        CTA_TUPLE_PROTO | NLA_F_NESTED
    );
    assert_eq!(
        &b[44..52],
        &[&5u16.to_ne_bytes()[..], &1u16.to_ne_bytes(), &[17, 0, 0, 0]].concat()
    );
}

#[test]
fn nests_without_the_nested_flag_are_accepted() {
    let inner = nla(CTA_PROTO_NUM, &[6]);
    let proto = nla(CTA_TUPLE_PROTO, &inner);
    let bytes = msg_with(ct_type(IPCTNL_MSG_CT_NEW), &nla(CTA_TUPLE_ORIG, &proto));
    let (m, _) = CtMessage::parse(&bytes).expect("flagless nests");
    assert_eq!(
        m.attrs,
        vec![CtAttr::TupleOrig(vec![TupleAttr::Proto(vec![
            ProtoAttr::Num(6)
        ])])]
    );
    // Re-emitted with the flag.
    let again = m.to_vec();
    assert_eq!(
        u16::from_ne_bytes([again[22], again[23]]),
        CTA_TUPLE_ORIG | NLA_F_NESTED
    );
}

#[test]
fn missing_final_padding_is_accepted() {
    // A message whose length stops right after a 1-byte payload.
    let mut attrs = nla(
        CTA_TUPLE_ORIG | NLA_F_NESTED,
        &nla(CTA_TUPLE_PROTO, &nla(1, &[6])),
    );
    attrs.extend_from_slice(&[5, 0, 0xff, 0x7f, 9]); // nla_len 5, type 0x7fff, one byte, no pad
    let bytes = msg_with(ct_type(IPCTNL_MSG_CT_NEW), &attrs);
    let (m, used) = CtMessage::parse(&bytes).expect("unpadded tail");
    assert_eq!(used, bytes.len());
    assert_eq!(m.attrs[1], CtAttr::Other(raw(0x7fff, &[9])));
    assert_eq!(m.buffer_len(), bytes.len() + 3);
}

// ---- unknown attributes ----------------------------------------------------------------------

#[test]
fn unknown_attributes_survive_at_every_level() {
    let nested_unknown = {
        let mut p = nla(1, b"ftp\0");
        p.extend(nla(2 | NLA_F_NESTED, &nla(1, &[1, 2, 3, 4])));
        p
    };
    let attrs = vec![
        CtAttr::TupleOrig(vec![
            TupleAttr::Ip(vec![
                IpAttr::V4Src([1, 2, 3, 4]),
                IpAttr::Other(raw(99, &[1])),
            ]),
            TupleAttr::Proto(vec![ProtoAttr::Num(6), ProtoAttr::Other(raw(10, &[]))]),
            TupleAttr::Other(raw(4, &[1, 2, 3])),
        ]),
        CtAttr::ProtoInfo(vec![
            ProtoInfoAttr::Tcp(vec![
                TcpInfoAttr::State(1),
                TcpInfoAttr::Other(raw(6, &[0; 9])),
            ]),
            ProtoInfoAttr::Other(raw(CTA_PROTOINFO_DCCP | NLA_F_NESTED, &nla(1, &[3]))),
        ]),
        CtAttr::CountersOrig(vec![CounterAttr::Other(raw(
            CTA_COUNTERS32_PACKETS,
            &[0, 0, 0, 5],
        ))]),
        CtAttr::CountersReply(vec![CounterAttr::Other(raw(CTA_COUNTERS_PAD, &[]))]),
        CtAttr::Timestamp(vec![TimestampAttr::Other(raw(CTA_TIMESTAMP_PAD, &[]))]),
        CtAttr::Other(raw(CTA_HELP | NLA_F_NESTED, &nested_unknown)),
        CtAttr::Other(raw(CTA_LABELS, &[0xff; 16])),
        CtAttr::Other(raw(200, &[1, 2, 3, 4, 5])),
        // A known type with a flag it never carries is not that type.
        CtAttr::Other(raw(CTA_STATUS | NLA_F_NET_BYTEORDER, &[0, 0, 0, 1])),
        CtAttr::Other(raw(
            CTA_TUPLE_REPLY | NLA_F_NESTED | NLA_F_NET_BYTEORDER,
            &[],
        )),
    ];
    let m = ct_msg(attrs);
    roundtrip(&m);
    assert_eq!(m.attrs[5].kind(), CTA_HELP);
}

// ---- malformed input -------------------------------------------------------------------------

#[test]
fn malformed_headers_are_typed_errors() {
    let good = ct_msg(every_attr()).to_vec();
    assert_eq!(CtMessage::parse(&[]), Err(DecodeError::ShortHeader));
    assert_eq!(CtMessage::parse(&good[..15]), Err(DecodeError::ShortHeader));
    // nlmsg_len below the header.
    let mut b = good.clone();
    b[0..4].copy_from_slice(&15u32.to_ne_bytes());
    assert_eq!(CtMessage::parse(&b), Err(DecodeError::ShortHeader));
    // A conntrack message without its nfgenmsg.
    let mut b = good[..16].to_vec();
    b[0..4].copy_from_slice(&16u32.to_ne_bytes());
    assert_eq!(CtMessage::parse(&b), Err(DecodeError::ShortHeader));
    // nlmsg_len past the buffer.
    assert_eq!(
        CtMessage::parse(&good[..good.len() - 1]),
        Err(DecodeError::LengthPastEnd)
    );
    let mut b = good.clone();
    b[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
    assert_eq!(CtMessage::parse(&b), Err(DecodeError::LengthPastEnd));
    // NLMSG_ERROR without its error code.
    let mut b = good[..16].to_vec();
    b[0..4].copy_from_slice(&16u32.to_ne_bytes());
    b[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
    assert_eq!(CtMessage::parse(&b), Err(DecodeError::ShortHeader));
    // Other subsystems and control types.
    for t in [
        NLMSG_NOOP,
        NLMSG_OVERRUN,
        nfnl_msg_type(NFNL_SUBSYS_CTNETLINK_EXP, IPCTNL_MSG_EXP_NEW),
        0x0a00,
    ] {
        let mut b = good.clone();
        b[4..6].copy_from_slice(&t.to_ne_bytes());
        assert_eq!(
            CtMessage::parse(&b),
            Err(DecodeError::NotConntrack { msg_type: t })
        );
    }
}

#[test]
fn malformed_attributes_are_typed_errors() {
    let parse = |attrs: &[u8]| CtMessage::parse(&msg_with(ct_type(IPCTNL_MSG_CT_NEW), attrs));
    // nla_len past the end of the message.
    let mut a = nla(CTA_STATUS, &[0, 0, 0, 1]);
    a[0..2].copy_from_slice(&9u16.to_ne_bytes());
    assert_eq!(
        parse(&a),
        Err(DecodeError::AttrLengthPastEnd { kind: CTA_STATUS })
    );
    // nla_len past the end of the enclosing nest.
    let mut inner = nla(CTA_PROTO_NUM, &[6]);
    inner[0..2].copy_from_slice(&12u16.to_ne_bytes());
    let a = nla(
        CTA_TUPLE_ORIG | NLA_F_NESTED,
        &nla(CTA_TUPLE_PROTO | NLA_F_NESTED, &inner),
    );
    assert_eq!(
        parse(&a),
        Err(DecodeError::AttrLengthPastEnd {
            kind: CTA_PROTO_NUM
        })
    );
    // nla_len below the header.
    for len in 0u16..4 {
        let mut a = nla(CTA_MARK, &[0; 4]);
        a[0..2].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(parse(&a), Err(DecodeError::AttrTooShort { kind: CTA_MARK }));
    }
    // 1..=3 bytes that cannot hold an attribute header.
    for n in 1..4 {
        let mut a = nla(CTA_MARK, &[0; 4]);
        a.extend(std::iter::repeat_n(0, n));
        assert_eq!(parse(&a), Err(DecodeError::TrailingBytes { len: n }));
    }
    // Nesting too deep: unknown nests, one level more than allowed.
    let deep = |levels: usize| {
        let mut a = nla(1, &[1]);
        for _ in 0..levels {
            a = nla(30 | NLA_F_NESTED, &a);
        }
        a
    };
    assert!(parse(&deep(MAX_NEST_DEPTH - 1)).is_ok());
    assert_eq!(
        parse(&deep(MAX_NEST_DEPTH)),
        Err(DecodeError::NestingTooDeep)
    );
    // An unknown nest whose content is not attributes.
    assert_eq!(
        parse(&nla(30 | NLA_F_NESTED, &[1, 0])),
        Err(DecodeError::TrailingBytes { len: 2 })
    );
}

#[test]
fn wrong_payload_size_of_every_known_leaf() {
    let parse = |attrs: &[u8]| CtMessage::parse(&msg_with(ct_type(IPCTNL_MSG_CT_NEW), attrs));
    let nest = |kind: u16, inner: Vec<u8>| nla(kind | NLA_F_NESTED, &inner);
    let top: [(u16, usize); 7] = [
        (CTA_STATUS, 4),
        (CTA_TIMEOUT, 4),
        (CTA_MARK, 4),
        (CTA_USE, 4),
        (CTA_ID, 4),
        (CTA_ZONE, 2),
        (CTA_TIMESTAMP_EVENT, 8),
    ];
    let ip: [(u16, usize); 4] = [
        (CTA_IP_V4_SRC, 4),
        (CTA_IP_V4_DST, 4),
        (CTA_IP_V6_SRC, 16),
        (CTA_IP_V6_DST, 16),
    ];
    let proto: [(u16, usize); 9] = [
        (CTA_PROTO_NUM, 1),
        (CTA_PROTO_SRC_PORT, 2),
        (CTA_PROTO_DST_PORT, 2),
        (CTA_PROTO_ICMP_ID, 2),
        (CTA_PROTO_ICMP_TYPE, 1),
        (CTA_PROTO_ICMP_CODE, 1),
        (CTA_PROTO_ICMPV6_ID, 2),
        (CTA_PROTO_ICMPV6_TYPE, 1),
        (CTA_PROTO_ICMPV6_CODE, 1),
    ];
    let tcp: [(u16, usize); 5] = [
        (CTA_PROTOINFO_TCP_STATE, 1),
        (CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, 1),
        (CTA_PROTOINFO_TCP_WSCALE_REPLY, 1),
        (CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, 2),
        (CTA_PROTOINFO_TCP_FLAGS_REPLY, 2),
    ];
    type Wrap = Box<dyn Fn(Vec<u8>) -> Vec<u8>>;
    let mut cases: Vec<(u16, usize, Wrap)> = Vec::new();
    for (k, n) in top {
        cases.push((k, n, Box::new(|a| a)));
    }
    for (k, n) in ip {
        cases.push((
            k,
            n,
            Box::new(move |a| nest(CTA_TUPLE_ORIG, nest(CTA_TUPLE_IP, a))),
        ));
    }
    for (k, n) in proto {
        cases.push((
            k,
            n,
            Box::new(move |a| nest(CTA_TUPLE_REPLY, nest(CTA_TUPLE_PROTO, a))),
        ));
    }
    cases.push((
        CTA_TUPLE_ZONE,
        2,
        Box::new(move |a| nest(CTA_TUPLE_MASTER, a)),
    ));
    for (k, n) in tcp {
        cases.push((
            k,
            n,
            Box::new(move |a| nest(CTA_PROTOINFO, nest(CTA_PROTOINFO_TCP, a))),
        ));
    }
    for k in [CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES] {
        cases.push((k, 8, Box::new(move |a| nest(CTA_COUNTERS_ORIG, a))));
        cases.push((k, 8, Box::new(move |a| nest(CTA_COUNTERS_REPLY, a))));
    }
    for k in [CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP] {
        cases.push((k, 8, Box::new(move |a| nest(CTA_TIMESTAMP, a))));
    }
    assert_eq!(cases.len(), 7 + 4 + 9 + 1 + 5 + 4 + 2);
    for (kind, expected, wrap) in &cases {
        assert!(
            parse(&wrap(nla(*kind, &vec![0; *expected]))).is_ok(),
            "{kind}"
        );
        for got in [0, expected - 1, expected + 1, 16 + 1] {
            if got == *expected {
                continue;
            }
            assert_eq!(
                parse(&wrap(nla(*kind, &vec![0; got]))),
                Err(DecodeError::WrongSize {
                    kind: *kind,
                    expected: *expected,
                    got
                }),
                "kind {kind} size {got}"
            );
        }
    }
}

#[test]
fn parse_messages_skips_noop_and_stops_after_an_error() {
    let a = ct_msg(vec![CtAttr::Id(1)]);
    let b = ct_msg(vec![CtAttr::Id(2)]);
    let mut noop = vec![0u8; 16];
    noop[0..4].copy_from_slice(&16u32.to_ne_bytes());
    noop[4..6].copy_from_slice(&NLMSG_NOOP.to_ne_bytes());
    let mut buf = a.to_vec();
    buf.extend_from_slice(&noop);
    buf.extend(b.to_vec());
    let items: Vec<_> = parse_messages(&buf).collect();
    assert_eq!(items, vec![Ok(a.clone()), Ok(b.clone())]);
    // A broken message in the middle: its error, then nothing.
    let mut broken = buf.clone();
    broken.extend(msg_with(ct_type(IPCTNL_MSG_CT_NEW), &nla(CTA_ID, &[1])));
    broken.extend(a.to_vec());
    let items: Vec<_> = parse_messages(&broken).collect();
    let wrong = DecodeError::WrongSize {
        kind: CTA_ID,
        expected: 4,
        got: 1,
    };
    assert_eq!(items, vec![Ok(a.clone()), Ok(b.clone()), Err(wrong)]);
    // Bytes too few for a header at the end.
    buf.extend_from_slice(&[1, 2, 3]);
    let items: Vec<_> = parse_messages(&buf).collect();
    assert_eq!(
        items,
        vec![Ok(a.clone()), Ok(b), Err(DecodeError::ShortHeader)]
    );
    assert_eq!(parse_messages(&[]).count(), 0);
    // parse() reports the padded size it consumed.
    let (_, used) = CtMessage::parse(&buf).expect("first");
    assert_eq!(used, a.buffer_len());
}

#[test]
fn display_and_order_helpers() {
    let errors = [
        DecodeError::ShortHeader,
        DecodeError::LengthPastEnd,
        DecodeError::AttrLengthPastEnd { kind: 3 },
        DecodeError::AttrTooShort { kind: 3 },
        DecodeError::WrongSize {
            kind: 3,
            expected: 4,
            got: 2,
        },
        DecodeError::TrailingBytes { len: 2 },
        DecodeError::NestingTooDeep,
        DecodeError::NotConntrack { msg_type: 0x200 },
        DecodeError::NetlinkError(-2),
        DecodeError::NetlinkError(0),
        DecodeError::Done,
    ];
    let texts: std::collections::BTreeSet<_> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(texts.len(), errors.len());
    let order = event_attr_order(MessageKind::Destroy);
    let attrs = [
        CtAttr::TupleOrig(vec![]),
        CtAttr::Status(0),
        CtAttr::Timestamp(vec![]),
    ];
    assert!(follows_order(&attrs, order));
    let swapped = [CtAttr::Status(0), CtAttr::TupleOrig(vec![])];
    assert!(!follows_order(&swapped, order));
    let twice = [CtAttr::Status(0), CtAttr::Status(0)];
    assert!(!follows_order(&twice, order));
    assert!(!follows_order(
        &[CtAttr::CountersOrig(vec![])],
        event_attr_order(MessageKind::New)
    ));
}

// ---- properties ------------------------------------------------------------------------------

/// Parses `bytes` both ways; anything that parses must re-parse to the same model.
fn parse_never_panics(bytes: &[u8]) {
    if let Ok((m, used)) = CtMessage::parse(bytes) {
        assert!(used <= bytes.len());
        let again = m.to_vec();
        assert_eq!(CtMessage::parse(&again).map(|r| r.0), Ok(m));
    }
    for item in parse_messages(bytes) {
        let _ = item;
    }
}

fn valid_messages() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = EVENTS.iter().map(|f| unhex(f.hex)).collect();
    v.extend([
        unhex(DUMP),
        unhex(ENOENT),
        unhex(STATS),
        unhex(ACK),
        unhex(DUMP_DONE),
    ]);
    v.push(ct_msg(every_attr()).to_vec());
    v
}

#[test]
fn every_prefix_and_byte_flip_of_valid_messages() {
    for bytes in valid_messages() {
        for n in 0..bytes.len() {
            parse_never_panics(&bytes[..n]);
        }
        let mut b = bytes.clone();
        for i in 0..b.len() {
            let orig = b[i];
            for x in [0x00, 0xff, orig ^ 0x01, orig ^ 0x80, orig.wrapping_add(4)] {
                b[i] = x;
                parse_never_panics(&b);
            }
            b[i] = orig;
        }
    }
}

fn arb_tuple() -> impl Strategy<Value = Tuple> {
    (
        any::<bool>(),
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<u16>(),
        any::<u16>(),
        0u8..3,
    )
        .prop_map(|(v6, s, d, p1, p2, l4)| {
            let family = if v6 { Family::Ipv6 } else { Family::Ipv4 };
            let (src, dst) = if v6 {
                (Addr::v6(s), Addr::v6(d))
            } else {
                (
                    Addr::v4([s[0], s[1], s[2], s[3]]),
                    Addr::v4([d[0], d[1], d[2], d[3]]),
                )
            };
            let (proto, l4) = match l4 {
                0 => (ipproto::TCP, L4Tuple::Ports { src: p1, dst: p2 }),
                1 if v6 => (
                    ipproto::ICMPV6,
                    L4Tuple::Icmp {
                        id: p1,
                        kind: p2 as u8,
                        code: 0,
                    },
                ),
                1 => (
                    ipproto::ICMP,
                    L4Tuple::Icmp {
                        id: p1,
                        kind: p2 as u8,
                        code: 1,
                    },
                ),
                _ => (47, L4Tuple::None),
            };
            Tuple {
                family,
                src,
                dst,
                proto,
                l4,
            }
        })
}

fn arb_attr() -> impl Strategy<Value = CtAttr> {
    prop_oneof![
        arb_tuple().prop_map(|t| CtAttr::TupleOrig(tuple_attrs(&t))),
        arb_tuple().prop_map(|t| CtAttr::TupleReply(tuple_attrs(&t))),
        any::<u32>().prop_map(CtAttr::Status),
        any::<u32>().prop_map(CtAttr::Timeout),
        any::<u32>().prop_map(CtAttr::Mark),
        any::<u32>().prop_map(CtAttr::Id),
        any::<u16>().prop_map(CtAttr::Zone),
        any::<u64>().prop_map(CtAttr::TimestampEvent),
        (any::<u64>(), any::<u64>()).prop_map(|(p, b)| CtAttr::CountersOrig(vec![
            CounterAttr::Packets(p),
            CounterAttr::Bytes(b)
        ])),
        (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(s, f, m)| CtAttr::ProtoInfo(vec![
            ProtoInfoAttr::Tcp(vec![
                TcpInfoAttr::State(s),
                TcpInfoAttr::FlagsReply { flags: f, mask: m }
            ])
        ])),
        (28u16..0x3fff, proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(k, p)| {
            CtAttr::Other(RawAttr {
                kind: k,
                payload: p,
            })
        }),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse_never_panics(&bytes);
    }

    #[test]
    fn arbitrary_attrs_after_a_valid_header_never_panic(
        attrs in proptest::collection::vec(any::<u8>(), 0..256),
        msg in 0u8..9,
    ) {
        parse_never_panics(&msg_with(ct_type(msg), &attrs));
    }

    #[test]
    fn mutated_kernel_messages_never_panic(
        idx in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let all = valid_messages();
        let mut b = all[idx.index(all.len())].clone();
        for (at, v) in edits {
            let i = at.index(b.len());
            b[i] = v;
        }
        let n = cut.index(b.len() + 1);
        parse_never_panics(&b);
        parse_never_panics(&b[..n]);
    }

    #[test]
    fn arbitrary_models_round_trip(
        attrs in proptest::collection::vec(arb_attr(), 0..12),
        seq in any::<u32>(),
        flags in any::<u16>(),
    ) {
        let mut m = ct_msg(attrs);
        m.header.seq = seq;
        m.header.flags = flags;
        roundtrip(&m);
    }
}
