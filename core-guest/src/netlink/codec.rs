//! Encoding and decoding of ctnetlink messages, in the style of rust-netlink
//! (`netlink-packet-core`): one trait for writing ([`Emitable`]), one for reading attributes
//! ([`ParseNla`]), implemented for every attribute enum and for [`CtMessage`].
//!
//! Why hand-written rather than a dependency: the component is built for `wasm32` with a small
//! dependency set, the engine needs the exact byte size of every event it would send (a
//! simulated listener's receive buffer is charged per byte), and the output has to be
//! byte-identical to what the kernel emits, attribute order included. The tests hold messages
//! captured from a live 6.18 kernel (see `testdata.rs`) and require a byte-exact round trip.
//!
//! # Wire rules
//!
//! * `nlmsghdr` and `nlattr` headers are in the host's byte order (`to_ne_bytes`), as a real
//!   netlink socket on this machine uses them; `nfgenmsg.res_id` and every attribute payload are
//!   big-endian.
//! * Every attribute is padded with zeroes to four bytes; a nest's length includes the padding of
//!   its children, a message's length includes the padding of its attributes.
//! * Nests are emitted with `NLA_F_NESTED`; when parsing, a known nest is accepted with or without
//!   the flag (so a nest received without it is re-emitted with it).
//! * A known leaf attribute is recognised only under its exact type (no flag bits). Its payload
//!   must have the exact size, else [`DecodeError::WrongSize`].
//! * Unknown attributes become `Other(RawAttr)` with the full type (flags included) and the
//!   unpadded payload, and are re-emitted verbatim. An unknown attribute flagged `NLA_F_NESTED`
//!   must itself be a well-formed list of attributes: it is walked (not kept as a tree), so an
//!   attribute that claims to be a nest really is one.
//! * The message's attribute list is nesting level 1; a nest at level [`MAX_NEST_DEPTH`] + 1 is
//!   [`DecodeError::NestingTooDeep`]. Known ctnetlink nests go three levels deep
//!   (`CTA_PROTOINFO` → `CTA_PROTOINFO_TCP` → state), the bound only limits the walk over unknown
//!   nests.
//! * Only `IPCTNL_MSG_CT_NEW`, `_GET`, `_DELETE`, `_GET_CTRZERO`, `_GET_DYING` and
//!   `_GET_UNCONFIRMED` carry `CTA_*` attributes. The attributes of the statistics replies
//!   (`IPCTNL_MSG_CT_GET_STATS_CPU`, `_GET_STATS`: `CTA_STATS_*` numbers that overlap `CTA_*`) and
//!   of any later message type are kept as `CtAttr::Other`.
//! * Trailing bytes after the last attribute must be its padding: 1 to 3 bytes that cannot hold
//!   an attribute header are [`DecodeError::TrailingBytes`]. A missing final padding is accepted.
//!
//! # Control messages
//!
//! `NLMSG_ERROR` is reported as [`DecodeError::NetlinkError`] with the kernel's `error` field as
//! sent: a negative errno, or 0 for an acknowledgement (see [`DecodeError::is_ack`]).
//! `NLMSG_DONE` is reported as [`DecodeError::Done`]. [`parse_messages`] yields them like any
//! other error and then stops, which is what a dump reader (read until DONE) and a request/ack
//! reader (read until the ACK or error) both want. `NLMSG_NOOP` is skipped by `parse_messages`.
//!
//! # Event attribute order
//!
//! `ctnetlink_conntrack_event` (`net/netfilter/nf_conntrack_netlink.c`, checked against
//! linux-6.18.y and against the captured messages) writes the top-level attributes of an event in
//! this order; bracketed ones are conditional:
//!
//! **NEW** (`IPCTNL_MSG_CT_NEW`, `NLM_F_CREATE|NLM_F_EXCL`, group 1) and **UPDATE**
//! (`IPCTNL_MSG_CT_NEW`, no flags, group 2):
//! 1. `CTA_TUPLE_ORIG` { `CTA_TUPLE_IP` { `V4_SRC`, `V4_DST` | `V6_SRC`, `V6_DST` },
//!    `CTA_TUPLE_PROTO` { `NUM`, `SRC_PORT`, `DST_PORT` | `ICMP(V6)_ID`, `_TYPE`, `_CODE` },
//!    [`CTA_TUPLE_ZONE` if the zone is directional] }
//! 2. `CTA_TUPLE_REPLY` { same }
//! 3. [`CTA_ZONE`, be16, if the zone is not the default one]
//! 4. `CTA_ID`
//! 5. `CTA_STATUS`
//! 6. `CTA_TIMEOUT` (seconds left)
//! 7. [`CTA_PROTOINFO` if the event mask has `IPCT_PROTOINFO` and the protocol has protoinfo
//!    (TCP: { `CTA_PROTOINFO_TCP` { `STATE`, `WSCALE_ORIGINAL`, `WSCALE_REPLY`,
//!    `FLAGS_ORIGINAL` {flags, mask 0}, `FLAGS_REPLY` } }); UDP and ICMP have none]
//! 8. [`CTA_HELP`], [`CTA_SECCTX`], [`CTA_LABELS`], [`CTA_TUPLE_MASTER`],
//!    [`CTA_SEQ_ADJ_ORIG`, `CTA_SEQ_ADJ_REPLY`], [`CTA_SYNPROXY`]
//! 9. [`CTA_MARK` if the mark is non-zero or the event mask has `IPCT_MARK`]
//! 10. [`CTA_TIMESTAMP_EVENT`, be64 ns, when the event timestamp is set: always with
//!     `nf_conntrack_timestamp=1`]
//!
//! NEW and UPDATE carry **no** counters and no `CTA_TIMESTAMP`, even with `nf_conntrack_acct=1`
//! and `nf_conntrack_timestamp=1`.
//!
//! **DESTROY** (`IPCTNL_MSG_CT_DELETE`, no flags, group 3):
//! 1. `CTA_TUPLE_ORIG`, 2. `CTA_TUPLE_REPLY`, 3. [`CTA_ZONE`], 4. `CTA_ID`, 5. `CTA_STATUS`,
//! 6. [`CTA_TIMEOUT`, seconds left, left out when 0 as for an expired entry; the captured
//!    flushes hit entries whose 2 s timeouts had run out, so none of the fixtures carry it],
//! 7. `CTA_COUNTERS_ORIG` { `PACKETS`, `BYTES` }, 8. `CTA_COUNTERS_REPLY` { same } (with acct),
//! 9. `CTA_TIMESTAMP` { `START`, [`STOP` if non-zero] } (with timestamps),
//! 10. [`CTA_PROTOINFO`: TCP { `CTA_PROTOINFO_TCP` { `STATE` } } only],
//! 11. [`CTA_MARK`], 12. [`CTA_TIMESTAMP_EVENT`].
//!
//! The header's `nlmsg_pid` is 0 for events the kernel raised itself and the requester's port id
//! for events caused by a request (a `conntrack -F` flush); `nlmsg_seq` is 0.
//!
//! Dump replies (`ctnetlink_fill_info`, `NLM_F_MULTI`) use another order, see
//! [`dump_attr_order`].

use super::consts::*;
use super::{
    CounterAttr, CtAttr, CtMessage, IpAttr, NlHeader, ProtoAttr, ProtoInfoAttr, RawAttr,
    SctpInfoAttr, TcpInfoAttr, TimestampAttr, TupleAttr,
};
use crate::event::MessageKind;
use core::fmt;

/// The deepest nesting level accepted when parsing (the message's own attribute list is
/// level 1).
pub const MAX_NEST_DEPTH: usize = 8;

/// Why a buffer is not a (conntrack) netlink message, or the control message it is instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than `nlmsghdr` + `nfgenmsg` (or `nlmsghdr` + `int error`), or an
    /// `nlmsg_len` smaller than those headers.
    ShortHeader,
    /// `nlmsg_len` goes past the end of the buffer.
    LengthPastEnd,
    /// An attribute's `nla_len` goes past the end of its enclosing list.
    AttrLengthPastEnd { kind: u16 },
    /// An attribute's `nla_len` is smaller than the attribute header.
    AttrTooShort { kind: u16 },
    /// A known attribute whose payload does not have the size its type requires.
    WrongSize {
        kind: u16,
        expected: usize,
        got: usize,
    },
    /// 1 to 3 bytes after the last attribute of a list: too few for an attribute header.
    TrailingBytes { len: usize },
    /// Nests more than [`MAX_NEST_DEPTH`] levels deep.
    NestingTooDeep,
    /// A well-formed netlink message that is not a ctnetlink (conntrack) message: another
    /// nfnetlink subsystem, or `NLMSG_NOOP` / `NLMSG_OVERRUN`.
    NotConntrack { msg_type: u16 },
    /// `NLMSG_ERROR`: the kernel's `error` field as sent, a negative errno (`-2` = `ENOENT`), or 0
    /// for an acknowledgement.
    NetlinkError(i32),
    /// `NLMSG_DONE`: the end of a dump.
    Done,
}

impl DecodeError {
    /// An `NLMSG_ERROR` with error 0: the request was acknowledged.
    pub fn is_ack(&self) -> bool {
        *self == DecodeError::NetlinkError(0)
    }
    /// A control message (`NLMSG_ERROR`, ACK, `NLMSG_DONE`) rather than broken bytes.
    pub fn is_control(&self) -> bool {
        matches!(self, DecodeError::NetlinkError(_) | DecodeError::Done)
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::ShortHeader => write!(f, "netlink message shorter than its headers"),
            DecodeError::LengthPastEnd => write!(f, "nlmsg_len goes past the end of the buffer"),
            DecodeError::AttrLengthPastEnd { kind } => {
                write!(
                    f,
                    "attribute {kind:#x}: nla_len goes past the end of its list"
                )
            }
            DecodeError::AttrTooShort { kind } => {
                write!(
                    f,
                    "attribute {kind:#x}: nla_len smaller than the attribute header"
                )
            }
            DecodeError::WrongSize {
                kind,
                expected,
                got,
            } => {
                write!(
                    f,
                    "attribute {kind:#x}: payload of {got} bytes, expected {expected}"
                )
            }
            DecodeError::TrailingBytes { len } => {
                write!(f, "{len} trailing bytes after the last attribute")
            }
            DecodeError::NestingTooDeep => {
                write!(
                    f,
                    "attributes nested more than {MAX_NEST_DEPTH} levels deep"
                )
            }
            DecodeError::NotConntrack { msg_type } => {
                write!(f, "message type {msg_type:#06x} is not a conntrack message")
            }
            DecodeError::NetlinkError(0) => write!(f, "netlink acknowledgement"),
            DecodeError::NetlinkError(e) => write!(f, "netlink error {e}"),
            DecodeError::Done => write!(f, "end of dump (NLMSG_DONE)"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Something with a known wire size that can write itself (rust-netlink's `Emitable`).
pub trait Emitable {
    /// The exact number of bytes [`emit`](Emitable::emit) writes, padding included.
    fn buffer_len(&self) -> usize;
    /// Writes `buffer_len()` bytes at the start of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than `buffer_len()` (a caller bug, not an input condition).
    fn emit(&self, buf: &mut [u8]);
}

/// An attribute type that can be read from its `nla_type` (flags included) and payload.
pub trait ParseNla: Sized {
    /// `depth` is the nesting level of the list the attribute belongs to (1 = the message's).
    fn parse_nla(kind: u16, payload: &[u8], depth: usize) -> Result<Self, DecodeError>;
}

const fn align4(len: usize) -> usize {
    (len + NLA_ALIGNTO - 1) & !(NLA_ALIGNTO - 1)
}

// ---- attribute lists -------------------------------------------------------------------------

/// Walks a list of attributes: `(nla_type with flags, payload without padding)`.
struct NlaIter<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> Iterator for NlaIter<'a> {
    type Item = Result<(u16, &'a [u8]), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.is_empty() {
            return None;
        }
        let item = self.step();
        self.failed = item.is_err();
        Some(item)
    }
}

impl<'a> NlaIter<'a> {
    fn step(&mut self) -> Result<(u16, &'a [u8]), DecodeError> {
        let buf = self.buf;
        let (Some(len), Some(kind)) = (read_ne_u16(buf, 0), read_ne_u16(buf, 2)) else {
            return Err(DecodeError::TrailingBytes { len: buf.len() });
        };
        let len = usize::from(len);
        if len < NLA_HDRLEN {
            return Err(DecodeError::AttrTooShort { kind });
        }
        let payload = buf
            .get(NLA_HDRLEN..len)
            .ok_or(DecodeError::AttrLengthPastEnd { kind })?;
        self.buf = buf.get(align4(len)..).unwrap_or(&[]);
        Ok((kind, payload))
    }
}

fn nla_iter(buf: &[u8]) -> NlaIter<'_> {
    NlaIter { buf, failed: false }
}

fn read_ne_u16(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at + 2)?;
    Some(u16::from_ne_bytes([b[0], b[1]]))
}

fn read_ne_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at + 4)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// Parses a list of attributes at nesting level `depth`.
fn parse_list<T: ParseNla>(buf: &[u8], depth: usize) -> Result<Vec<T>, DecodeError> {
    if depth > MAX_NEST_DEPTH {
        return Err(DecodeError::NestingTooDeep);
    }
    nla_iter(buf)
        .map(|a| a.and_then(|(kind, payload)| T::parse_nla(kind, payload, depth)))
        .collect()
}

/// Checks that an unknown attribute flagged `NLA_F_NESTED` holds a well-formed list.
fn validate_nest(buf: &[u8], depth: usize) -> Result<(), DecodeError> {
    if depth > MAX_NEST_DEPTH {
        return Err(DecodeError::NestingTooDeep);
    }
    for a in nla_iter(buf) {
        let (kind, payload) = a?;
        if kind & NLA_F_NESTED != 0 {
            validate_nest(payload, depth + 1)?;
        }
    }
    Ok(())
}

/// An attribute kept verbatim; one flagged as a nest is validated first.
fn raw(kind: u16, payload: &[u8], depth: usize) -> Result<RawAttr, DecodeError> {
    if kind & NLA_F_NESTED != 0 {
        validate_nest(payload, depth + 1)?;
    }
    Ok(RawAttr {
        kind,
        payload: payload.to_vec(),
    })
}

/// The type a nest is recognised under: flags other than `NLA_F_NESTED` make it unknown.
fn nest_kind(kind: u16) -> Option<u16> {
    (kind & NLA_F_NET_BYTEORDER == 0).then_some(kind & !NLA_F_NESTED)
}

fn fixed<const N: usize>(kind: u16, payload: &[u8]) -> Result<[u8; N], DecodeError> {
    payload.try_into().map_err(|_| DecodeError::WrongSize {
        kind,
        expected: N,
        got: payload.len(),
    })
}
fn be_u8(kind: u16, p: &[u8]) -> Result<u8, DecodeError> {
    fixed::<1>(kind, p).map(|b| b[0])
}
fn be_u16(kind: u16, p: &[u8]) -> Result<u16, DecodeError> {
    fixed(kind, p).map(u16::from_be_bytes)
}
fn be_u32(kind: u16, p: &[u8]) -> Result<u32, DecodeError> {
    fixed(kind, p).map(u32::from_be_bytes)
}
fn be_u64(kind: u16, p: &[u8]) -> Result<u64, DecodeError> {
    fixed(kind, p).map(u64::from_be_bytes)
}

// ---- emitting --------------------------------------------------------------------------------

/// The payload of one attribute, before the header is put around it.
enum Value<'a> {
    Bytes(&'a [u8]),
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    Pair(u8, u8),
}

impl Value<'_> {
    fn len(&self) -> usize {
        match self {
            Value::Bytes(b) => b.len(),
            Value::U8(_) => 1,
            Value::U16(_) | Value::Pair(..) => 2,
            Value::U32(_) => 4,
            Value::U64(_) => 8,
        }
    }
    fn write(&self, buf: &mut [u8]) {
        match self {
            Value::Bytes(b) => buf.copy_from_slice(b),
            Value::U8(v) => buf[0] = *v,
            Value::U16(v) => buf.copy_from_slice(&v.to_be_bytes()),
            Value::U32(v) => buf.copy_from_slice(&v.to_be_bytes()),
            Value::U64(v) => buf.copy_from_slice(&v.to_be_bytes()),
            Value::Pair(a, b) => {
                buf[0] = *a;
                buf[1] = *b;
            }
        }
    }
}

/// Writes one attribute header (host order) and its padding; `fill` writes the payload.
///
/// An attribute longer than `u16::MAX` cannot be expressed in `nla_len`; the length written
/// then saturates (such an attribute cannot come from a parse and is a caller bug).
fn emit_nla(buf: &mut [u8], kind: u16, value_len: usize, fill: impl FnOnce(&mut [u8])) {
    let len = NLA_HDRLEN + value_len;
    let nla_len = u16::try_from(len).unwrap_or(u16::MAX);
    buf[0..2].copy_from_slice(&nla_len.to_ne_bytes());
    buf[2..4].copy_from_slice(&kind.to_ne_bytes());
    fill(&mut buf[NLA_HDRLEN..len]);
    buf[len..align4(len)].fill(0);
}

fn list_len<T: Emitable>(items: &[T]) -> usize {
    items.iter().map(Emitable::buffer_len).sum()
}

fn emit_list<T: Emitable>(items: &[T], buf: &mut [u8]) {
    let mut at = 0;
    for item in items {
        let n = item.buffer_len();
        item.emit(&mut buf[at..at + n]);
        at += n;
    }
}

/// What one attribute enum value is on the wire: a leaf value or a nested list.
enum Wire<'a, N> {
    Leaf(u16, Value<'a>),
    Nest(u16, &'a [N]),
}

/// Implements [`Emitable`] for an attribute enum from a function giving its [`Wire`] form.
macro_rules! emitable_attr {
    ($ty:ty, $nested:ty, $wire:expr) => {
        impl Emitable for $ty {
            fn buffer_len(&self) -> usize {
                let wire: fn(&$ty) -> Wire<'_, $nested> = $wire;
                match wire(self) {
                    Wire::Leaf(_, v) => align4(NLA_HDRLEN + v.len()),
                    Wire::Nest(_, items) => NLA_HDRLEN + list_len(items),
                }
            }
            fn emit(&self, buf: &mut [u8]) {
                let wire: fn(&$ty) -> Wire<'_, $nested> = $wire;
                match wire(self) {
                    Wire::Leaf(kind, v) => emit_nla(buf, kind, v.len(), |b| v.write(b)),
                    Wire::Nest(kind, items) => {
                        emit_nla(buf, kind | NLA_F_NESTED, list_len(items), |b| {
                            emit_list(items, b)
                        })
                    }
                }
            }
        }
    };
}

/// Stands in for "no nested type" in leaf-only enums.
#[derive(Debug)]
enum NoNest {}
impl Emitable for NoNest {
    fn buffer_len(&self) -> usize {
        match *self {}
    }
    fn emit(&self, _: &mut [u8]) {
        match *self {}
    }
}

fn raw_wire<N>(r: &RawAttr) -> Wire<'_, N> {
    Wire::Leaf(r.kind, Value::Bytes(&r.payload))
}

emitable_attr!(IpAttr, NoNest, |a| match a {
    IpAttr::V4Src(v) => Wire::Leaf(CTA_IP_V4_SRC, Value::Bytes(v)),
    IpAttr::V4Dst(v) => Wire::Leaf(CTA_IP_V4_DST, Value::Bytes(v)),
    IpAttr::V6Src(v) => Wire::Leaf(CTA_IP_V6_SRC, Value::Bytes(v)),
    IpAttr::V6Dst(v) => Wire::Leaf(CTA_IP_V6_DST, Value::Bytes(v)),
    IpAttr::Other(r) => raw_wire(r),
});

emitable_attr!(ProtoAttr, NoNest, |a| match a {
    ProtoAttr::Num(v) => Wire::Leaf(CTA_PROTO_NUM, Value::U8(*v)),
    ProtoAttr::SrcPort(v) => Wire::Leaf(CTA_PROTO_SRC_PORT, Value::U16(*v)),
    ProtoAttr::DstPort(v) => Wire::Leaf(CTA_PROTO_DST_PORT, Value::U16(*v)),
    ProtoAttr::IcmpId(v) => Wire::Leaf(CTA_PROTO_ICMP_ID, Value::U16(*v)),
    ProtoAttr::IcmpType(v) => Wire::Leaf(CTA_PROTO_ICMP_TYPE, Value::U8(*v)),
    ProtoAttr::IcmpCode(v) => Wire::Leaf(CTA_PROTO_ICMP_CODE, Value::U8(*v)),
    ProtoAttr::Icmpv6Id(v) => Wire::Leaf(CTA_PROTO_ICMPV6_ID, Value::U16(*v)),
    ProtoAttr::Icmpv6Type(v) => Wire::Leaf(CTA_PROTO_ICMPV6_TYPE, Value::U8(*v)),
    ProtoAttr::Icmpv6Code(v) => Wire::Leaf(CTA_PROTO_ICMPV6_CODE, Value::U8(*v)),
    ProtoAttr::Other(r) => raw_wire(r),
});

/// `TupleAttr` nests two different lists; it is written out by hand.
impl Emitable for TupleAttr {
    fn buffer_len(&self) -> usize {
        match self {
            TupleAttr::Ip(v) => NLA_HDRLEN + list_len(v),
            TupleAttr::Proto(v) => NLA_HDRLEN + list_len(v),
            TupleAttr::Zone(_) => align4(NLA_HDRLEN + 2),
            TupleAttr::Other(r) => align4(NLA_HDRLEN + r.payload.len()),
        }
    }
    fn emit(&self, buf: &mut [u8]) {
        match self {
            TupleAttr::Ip(v) => emit_nla(buf, CTA_TUPLE_IP | NLA_F_NESTED, list_len(v), |b| {
                emit_list(v, b)
            }),
            TupleAttr::Proto(v) => {
                emit_nla(buf, CTA_TUPLE_PROTO | NLA_F_NESTED, list_len(v), |b| {
                    emit_list(v, b)
                })
            }
            TupleAttr::Zone(z) => emit_nla(buf, CTA_TUPLE_ZONE, 2, |b| Value::U16(*z).write(b)),
            TupleAttr::Other(r) => emit_nla(buf, r.kind, r.payload.len(), |b| {
                b.copy_from_slice(&r.payload)
            }),
        }
    }
}

emitable_attr!(TcpInfoAttr, NoNest, |a| match a {
    TcpInfoAttr::State(v) => Wire::Leaf(CTA_PROTOINFO_TCP_STATE, Value::U8(*v)),
    TcpInfoAttr::WscaleOriginal(v) => Wire::Leaf(CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, Value::U8(*v)),
    TcpInfoAttr::WscaleReply(v) => Wire::Leaf(CTA_PROTOINFO_TCP_WSCALE_REPLY, Value::U8(*v)),
    TcpInfoAttr::FlagsOriginal { flags, mask } => {
        Wire::Leaf(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, Value::Pair(*flags, *mask))
    }
    TcpInfoAttr::FlagsReply { flags, mask } => {
        Wire::Leaf(CTA_PROTOINFO_TCP_FLAGS_REPLY, Value::Pair(*flags, *mask))
    }
    TcpInfoAttr::Other(r) => raw_wire(r),
});

emitable_attr!(SctpInfoAttr, NoNest, |a| match a {
    SctpInfoAttr::State(v) => Wire::Leaf(CTA_PROTOINFO_SCTP_STATE, Value::U8(*v)),
    SctpInfoAttr::VtagOriginal(v) => Wire::Leaf(CTA_PROTOINFO_SCTP_VTAG_ORIGINAL, Value::U32(*v)),
    SctpInfoAttr::VtagReply(v) => Wire::Leaf(CTA_PROTOINFO_SCTP_VTAG_REPLY, Value::U32(*v)),
    SctpInfoAttr::Other(r) => raw_wire(r),
});

/// `ProtoInfoAttr` nests a different list per protocol; it is written out by hand.
impl Emitable for ProtoInfoAttr {
    fn buffer_len(&self) -> usize {
        match self {
            ProtoInfoAttr::Tcp(v) => NLA_HDRLEN + list_len(v),
            ProtoInfoAttr::Sctp(v) => NLA_HDRLEN + list_len(v),
            ProtoInfoAttr::Other(r) => align4(NLA_HDRLEN + r.payload.len()),
        }
    }
    fn emit(&self, buf: &mut [u8]) {
        match self {
            ProtoInfoAttr::Tcp(v) => {
                emit_nla(buf, CTA_PROTOINFO_TCP | NLA_F_NESTED, list_len(v), |b| {
                    emit_list(v, b)
                })
            }
            ProtoInfoAttr::Sctp(v) => {
                emit_nla(buf, CTA_PROTOINFO_SCTP | NLA_F_NESTED, list_len(v), |b| {
                    emit_list(v, b)
                })
            }
            ProtoInfoAttr::Other(r) => emit_nla(buf, r.kind, r.payload.len(), |b| {
                b.copy_from_slice(&r.payload)
            }),
        }
    }
}

emitable_attr!(CounterAttr, NoNest, |a| match a {
    CounterAttr::Packets(v) => Wire::Leaf(CTA_COUNTERS_PACKETS, Value::U64(*v)),
    CounterAttr::Bytes(v) => Wire::Leaf(CTA_COUNTERS_BYTES, Value::U64(*v)),
    CounterAttr::Other(r) => raw_wire(r),
});

emitable_attr!(TimestampAttr, NoNest, |a| match a {
    TimestampAttr::Start(v) => Wire::Leaf(CTA_TIMESTAMP_START, Value::U64(*v)),
    TimestampAttr::Stop(v) => Wire::Leaf(CTA_TIMESTAMP_STOP, Value::U64(*v)),
    TimestampAttr::Other(r) => raw_wire(r),
});

/// `CtAttr` nests four different lists; it is written out by hand.
impl Emitable for CtAttr {
    fn buffer_len(&self) -> usize {
        match self {
            CtAttr::TupleOrig(v) | CtAttr::TupleReply(v) | CtAttr::TupleMaster(v) => {
                NLA_HDRLEN + list_len(v)
            }
            CtAttr::ProtoInfo(v) => NLA_HDRLEN + list_len(v),
            CtAttr::CountersOrig(v) | CtAttr::CountersReply(v) => NLA_HDRLEN + list_len(v),
            CtAttr::Timestamp(v) => NLA_HDRLEN + list_len(v),
            CtAttr::Status(_)
            | CtAttr::Timeout(_)
            | CtAttr::Mark(_)
            | CtAttr::Use(_)
            | CtAttr::Id(_) => NLA_HDRLEN + 4,
            CtAttr::Zone(_) => NLA_HDRLEN + 4,
            CtAttr::TimestampEvent(_) => NLA_HDRLEN + 8,
            CtAttr::Other(r) => align4(NLA_HDRLEN + r.payload.len()),
        }
    }

    fn emit(&self, buf: &mut [u8]) {
        fn nest<T: Emitable>(buf: &mut [u8], kind: u16, v: &[T]) {
            emit_nla(buf, kind | NLA_F_NESTED, list_len(v), |b| emit_list(v, b))
        }
        fn leaf(buf: &mut [u8], kind: u16, v: Value<'_>) {
            emit_nla(buf, kind, v.len(), |b| v.write(b))
        }
        match self {
            CtAttr::TupleOrig(v) => nest(buf, CTA_TUPLE_ORIG, v),
            CtAttr::TupleReply(v) => nest(buf, CTA_TUPLE_REPLY, v),
            CtAttr::TupleMaster(v) => nest(buf, CTA_TUPLE_MASTER, v),
            CtAttr::ProtoInfo(v) => nest(buf, CTA_PROTOINFO, v),
            CtAttr::CountersOrig(v) => nest(buf, CTA_COUNTERS_ORIG, v),
            CtAttr::CountersReply(v) => nest(buf, CTA_COUNTERS_REPLY, v),
            CtAttr::Timestamp(v) => nest(buf, CTA_TIMESTAMP, v),
            CtAttr::Status(v) => leaf(buf, CTA_STATUS, Value::U32(*v)),
            CtAttr::Timeout(v) => leaf(buf, CTA_TIMEOUT, Value::U32(*v)),
            CtAttr::Mark(v) => leaf(buf, CTA_MARK, Value::U32(*v)),
            CtAttr::Use(v) => leaf(buf, CTA_USE, Value::U32(*v)),
            CtAttr::Id(v) => leaf(buf, CTA_ID, Value::U32(*v)),
            CtAttr::Zone(v) => leaf(buf, CTA_ZONE, Value::U16(*v)),
            CtAttr::TimestampEvent(v) => leaf(buf, CTA_TIMESTAMP_EVENT, Value::U64(*v)),
            CtAttr::Other(r) => leaf(buf, r.kind, Value::Bytes(&r.payload)),
        }
    }
}

impl CtAttr {
    /// The attribute's `CTA_*` type without flag bits (for `Other`, its type masked with
    /// [`NLA_TYPE_MASK`]).
    pub fn kind(&self) -> u16 {
        match self {
            CtAttr::TupleOrig(_) => CTA_TUPLE_ORIG,
            CtAttr::TupleReply(_) => CTA_TUPLE_REPLY,
            CtAttr::TupleMaster(_) => CTA_TUPLE_MASTER,
            CtAttr::Status(_) => CTA_STATUS,
            CtAttr::ProtoInfo(_) => CTA_PROTOINFO,
            CtAttr::Timeout(_) => CTA_TIMEOUT,
            CtAttr::Mark(_) => CTA_MARK,
            CtAttr::CountersOrig(_) => CTA_COUNTERS_ORIG,
            CtAttr::CountersReply(_) => CTA_COUNTERS_REPLY,
            CtAttr::Use(_) => CTA_USE,
            CtAttr::Id(_) => CTA_ID,
            CtAttr::Zone(_) => CTA_ZONE,
            CtAttr::Timestamp(_) => CTA_TIMESTAMP,
            CtAttr::TimestampEvent(_) => CTA_TIMESTAMP_EVENT,
            CtAttr::Other(r) => r.kind & NLA_TYPE_MASK,
        }
    }
}

// ---- parsing attributes ----------------------------------------------------------------------

impl ParseNla for IpAttr {
    fn parse_nla(kind: u16, p: &[u8], depth: usize) -> Result<Self, DecodeError> {
        Ok(match kind {
            CTA_IP_V4_SRC => IpAttr::V4Src(fixed(kind, p)?),
            CTA_IP_V4_DST => IpAttr::V4Dst(fixed(kind, p)?),
            CTA_IP_V6_SRC => IpAttr::V6Src(fixed(kind, p)?),
            CTA_IP_V6_DST => IpAttr::V6Dst(fixed(kind, p)?),
            _ => IpAttr::Other(raw(kind, p, depth)?),
        })
    }
}

impl ParseNla for ProtoAttr {
    fn parse_nla(kind: u16, p: &[u8], depth: usize) -> Result<Self, DecodeError> {
        Ok(match kind {
            CTA_PROTO_NUM => ProtoAttr::Num(be_u8(kind, p)?),
            CTA_PROTO_SRC_PORT => ProtoAttr::SrcPort(be_u16(kind, p)?),
            CTA_PROTO_DST_PORT => ProtoAttr::DstPort(be_u16(kind, p)?),
            CTA_PROTO_ICMP_ID => ProtoAttr::IcmpId(be_u16(kind, p)?),
            CTA_PROTO_ICMP_TYPE => ProtoAttr::IcmpType(be_u8(kind, p)?),
            CTA_PROTO_ICMP_CODE => ProtoAttr::IcmpCode(be_u8(kind, p)?),
            CTA_PROTO_ICMPV6_ID => ProtoAttr::Icmpv6Id(be_u16(kind, p)?),
            CTA_PROTO_ICMPV6_TYPE => ProtoAttr::Icmpv6Type(be_u8(kind, p)?),
            CTA_PROTO_ICMPV6_CODE => ProtoAttr::Icmpv6Code(be_u8(kind, p)?),
            _ => ProtoAttr::Other(raw(kind, p, depth)?),
        })
    }
}

impl ParseNla for TupleAttr {
    fn parse_nla(kind: u16, p: &[u8], depth: usize) -> Result<Self, DecodeError> {
        Ok(match nest_kind(kind) {
            Some(CTA_TUPLE_IP) => TupleAttr::Ip(parse_list(p, depth + 1)?),
            Some(CTA_TUPLE_PROTO) => TupleAttr::Proto(parse_list(p, depth + 1)?),
            _ => match kind {
                CTA_TUPLE_ZONE => TupleAttr::Zone(be_u16(kind, p)?),
                _ => TupleAttr::Other(raw(kind, p, depth)?),
            },
        })
    }
}

impl ParseNla for TcpInfoAttr {
    fn parse_nla(kind: u16, p: &[u8], depth: usize) -> Result<Self, DecodeError> {
        Ok(match kind {
            CTA_PROTOINFO_TCP_STATE => TcpInfoAttr::State(be_u8(kind, p)?),
            CTA_PROTOINFO_TCP_WSCALE_ORIGINAL => TcpInfoAttr::WscaleOriginal(be_u8(kind, p)?),
            CTA_PROTOINFO_TCP_WSCALE_REPLY => TcpInfoAttr::WscaleReply(be_u8(kind, p)?),
            CTA_PROTOINFO_TCP_FLAGS_ORIGINAL => {
                let [flags, mask] = fixed(kind, p)?;
                TcpInfoAttr::FlagsOriginal { flags, mask }
            }
            CTA_PROTOINFO_TCP_FLAGS_REPLY => {
                let [flags, mask] = fixed(kind, p)?;
                TcpInfoAttr::FlagsReply { flags, mask }
            }
            _ => TcpInfoAttr::Other(raw(kind, p, depth)?),
        })
    }
}

impl ParseNla for SctpInfoAttr {
    fn parse_nla(kind: u16, p: &[u8], depth: usize) -> Result<Self, DecodeError> {
        Ok(match kind {
            CTA_PROTOINFO_SCTP_STATE => SctpInfoAttr::State(be_u8(kind, p)?),
            CTA_PROTOINFO_SCTP_VTAG_ORIGINAL => SctpInfoAttr::VtagOriginal(be_u32(kind, p)?),
            CTA_PROTOINFO_SCTP_VTAG_REPLY => SctpInfoAttr::VtagReply(be_u32(kind, p)?),
            _ => SctpInfoAttr::Other(raw(kind, p, depth)?),
        })
    }
}

impl ParseNla for ProtoInfoAttr {
    fn parse_nla(kind: u16, p: &[u8], depth: usize) -> Result<Self, DecodeError> {
        Ok(match nest_kind(kind) {
            Some(CTA_PROTOINFO_TCP) => ProtoInfoAttr::Tcp(parse_list(p, depth + 1)?),
            Some(CTA_PROTOINFO_SCTP) => ProtoInfoAttr::Sctp(parse_list(p, depth + 1)?),
            _ => ProtoInfoAttr::Other(raw(kind, p, depth)?),
        })
    }
}

impl ParseNla for CounterAttr {
    fn parse_nla(kind: u16, p: &[u8], depth: usize) -> Result<Self, DecodeError> {
        Ok(match kind {
            CTA_COUNTERS_PACKETS => CounterAttr::Packets(be_u64(kind, p)?),
            CTA_COUNTERS_BYTES => CounterAttr::Bytes(be_u64(kind, p)?),
            _ => CounterAttr::Other(raw(kind, p, depth)?),
        })
    }
}

impl ParseNla for TimestampAttr {
    fn parse_nla(kind: u16, p: &[u8], depth: usize) -> Result<Self, DecodeError> {
        Ok(match kind {
            CTA_TIMESTAMP_START => TimestampAttr::Start(be_u64(kind, p)?),
            CTA_TIMESTAMP_STOP => TimestampAttr::Stop(be_u64(kind, p)?),
            _ => TimestampAttr::Other(raw(kind, p, depth)?),
        })
    }
}

impl ParseNla for CtAttr {
    fn parse_nla(kind: u16, p: &[u8], depth: usize) -> Result<Self, DecodeError> {
        let d = depth + 1;
        Ok(match nest_kind(kind) {
            Some(CTA_TUPLE_ORIG) => CtAttr::TupleOrig(parse_list(p, d)?),
            Some(CTA_TUPLE_REPLY) => CtAttr::TupleReply(parse_list(p, d)?),
            Some(CTA_TUPLE_MASTER) => CtAttr::TupleMaster(parse_list(p, d)?),
            Some(CTA_PROTOINFO) => CtAttr::ProtoInfo(parse_list(p, d)?),
            Some(CTA_COUNTERS_ORIG) => CtAttr::CountersOrig(parse_list(p, d)?),
            Some(CTA_COUNTERS_REPLY) => CtAttr::CountersReply(parse_list(p, d)?),
            Some(CTA_TIMESTAMP) => CtAttr::Timestamp(parse_list(p, d)?),
            _ => match kind {
                CTA_STATUS => CtAttr::Status(be_u32(kind, p)?),
                CTA_TIMEOUT => CtAttr::Timeout(be_u32(kind, p)?),
                CTA_MARK => CtAttr::Mark(be_u32(kind, p)?),
                CTA_USE => CtAttr::Use(be_u32(kind, p)?),
                CTA_ID => CtAttr::Id(be_u32(kind, p)?),
                CTA_ZONE => CtAttr::Zone(be_u16(kind, p)?),
                CTA_TIMESTAMP_EVENT => CtAttr::TimestampEvent(be_u64(kind, p)?),
                _ => CtAttr::Other(raw(kind, p, depth)?),
            },
        })
    }
}

/// Every attribute of a list kept as `CtAttr::Other` (statistics replies).
struct OpaqueAttr(CtAttr);

impl ParseNla for OpaqueAttr {
    fn parse_nla(kind: u16, p: &[u8], depth: usize) -> Result<Self, DecodeError> {
        Ok(OpaqueAttr(CtAttr::Other(raw(kind, p, depth)?)))
    }
}

// ---- messages --------------------------------------------------------------------------------

impl NlHeader {
    /// The `nlmsghdr` of the message at the start of `buf`, and `nlmsg_len` (at least a header,
    /// at most `buf`). Control messages (`NLMSG_DONE`, `NLMSG_ERROR`) read this way keep their
    /// sequence number, which [`CtMessage::parse`] turns into an error.
    pub fn parse(buf: &[u8]) -> Result<(NlHeader, usize), DecodeError> {
        frame(buf)
    }
}

/// The `nlmsghdr` of the message at the start of `buf`: `(header, nlmsg_len)`.
fn frame(buf: &[u8]) -> Result<(NlHeader, usize), DecodeError> {
    let (Some(len), Some(msg_type), Some(flags), Some(seq), Some(port_id)) = (
        read_ne_u32(buf, 0),
        read_ne_u16(buf, 4),
        read_ne_u16(buf, 6),
        read_ne_u32(buf, 8),
        read_ne_u32(buf, 12),
    ) else {
        return Err(DecodeError::ShortHeader);
    };
    let len = usize::try_from(len).map_err(|_| DecodeError::LengthPastEnd)?;
    if len < NLMSG_HDRLEN {
        return Err(DecodeError::ShortHeader);
    }
    if len > buf.len() {
        return Err(DecodeError::LengthPastEnd);
    }
    Ok((
        NlHeader {
            msg_type,
            flags,
            seq,
            port_id,
        },
        len,
    ))
}

/// Whether a ctnetlink message type carries `CTA_*` attributes.
fn carries_cta(msg: u8) -> bool {
    matches!(
        msg,
        IPCTNL_MSG_CT_NEW
            | IPCTNL_MSG_CT_GET
            | IPCTNL_MSG_CT_DELETE
            | IPCTNL_MSG_CT_GET_CTRZERO
            | IPCTNL_MSG_CT_GET_DYING
            | IPCTNL_MSG_CT_GET_UNCONFIRMED
    )
}

/// `NLMSG_ERROR` and `NLMSG_DONE` as their errors; `Ok` for any other message.
fn control_message(header: &NlHeader, msg: &[u8]) -> Result<(), DecodeError> {
    match header.msg_type {
        NLMSG_ERROR => {
            let error = read_ne_u32(msg, NLMSG_HDRLEN).ok_or(DecodeError::ShortHeader)?;
            Err(DecodeError::NetlinkError(error as i32))
        }
        NLMSG_DONE => Err(DecodeError::Done),
        _ => Ok(()),
    }
}

/// The body of a framed message (`msg` is the whole message, `nlmsg_len` bytes).
fn parse_body(header: NlHeader, msg: &[u8]) -> Result<CtMessage, DecodeError> {
    control_message(&header, msg)?;
    let [_, sub] = header.msg_type.to_be_bytes();
    let (nfgen, body) = split_nfgenmsg(&header, msg, NFNL_SUBSYS_CTNETLINK)?;
    let attrs = if carries_cta(sub) {
        parse_list::<CtAttr>(body, 1)?
    } else {
        parse_list::<OpaqueAttr>(body, 1)?
            .into_iter()
            .map(|a| a.0)
            .collect()
    };
    Ok(CtMessage {
        header,
        family: nfgen.family,
        version: nfgen.version,
        res_id: nfgen.res_id,
        attrs,
    })
}

impl Emitable for CtMessage {
    fn buffer_len(&self) -> usize {
        NLMSG_HDRLEN + NFGENMSG_LEN + list_len(&self.attrs)
    }

    fn emit(&self, buf: &mut [u8]) {
        let len = self.buffer_len();
        emit_headers(
            buf,
            len,
            &self.header,
            self.family,
            self.version,
            self.res_id,
        );
        emit_list(&self.attrs, &mut buf[NLMSG_HDRLEN + NFGENMSG_LEN..len]);
    }
}

/// Writes `nlmsghdr` (host order, `len` saturated to 32 bits) and `nfgenmsg` (`res_id`
/// big-endian): the part conntrack and expectation messages share.
fn emit_headers(buf: &mut [u8], len: usize, h: &NlHeader, family: u8, version: u8, res_id: u16) {
    buf[0..4].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    buf[4..6].copy_from_slice(&h.msg_type.to_ne_bytes());
    buf[6..8].copy_from_slice(&h.flags.to_ne_bytes());
    buf[8..12].copy_from_slice(&h.seq.to_ne_bytes());
    buf[12..16].copy_from_slice(&h.port_id.to_ne_bytes());
    buf[16] = family;
    buf[17] = version;
    buf[18..20].copy_from_slice(&res_id.to_be_bytes());
}

/// `struct nfgenmsg`.
struct NfGenMsg {
    family: u8,
    version: u8,
    res_id: u16,
}

/// `nfgenmsg` of a framed message of subsystem `subsys`, and the attribute bytes after it.
fn split_nfgenmsg<'a>(
    header: &NlHeader,
    msg: &'a [u8],
    subsys: u8,
) -> Result<(NfGenMsg, &'a [u8]), DecodeError> {
    if header.msg_type >> 8 != subsys as u16 {
        return Err(DecodeError::NotConntrack {
            msg_type: header.msg_type,
        });
    }
    let nfgen = msg
        .get(NLMSG_HDRLEN..NLMSG_HDRLEN + NFGENMSG_LEN)
        .ok_or(DecodeError::ShortHeader)?;
    let fields = NfGenMsg {
        family: nfgen[0],
        version: nfgen[1],
        res_id: u16::from_be_bytes([nfgen[2], nfgen[3]]),
    };
    Ok((fields, &msg[NLMSG_HDRLEN + NFGENMSG_LEN..]))
}

impl CtMessage {
    /// The message's size on the wire (always a multiple of four).
    pub fn buffer_len(&self) -> usize {
        Emitable::buffer_len(self)
    }

    /// Appends the message's bytes to `out`.
    pub fn emit_to_vec(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + Emitable::buffer_len(self), 0);
        Emitable::emit(self, &mut out[start..]);
    }

    /// The message's bytes in a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Emitable::buffer_len(self));
        self.emit_to_vec(&mut out);
        out
    }

    /// Decodes the message at the start of `buf`; returns it and the bytes it takes, padding to
    /// four bytes included (capped at the buffer's end).
    ///
    /// `NLMSG_ERROR` and `NLMSG_DONE` come back as [`DecodeError::NetlinkError`] and
    /// [`DecodeError::Done`]; other non-conntrack messages as [`DecodeError::NotConntrack`].
    pub fn parse(buf: &[u8]) -> Result<(CtMessage, usize), DecodeError> {
        let (header, len) = frame(buf)?;
        let msg = parse_body(header, &buf[..len])?;
        Ok((msg, align4(len).min(buf.len())))
    }
}

/// Decodes a buffer holding several netlink messages, as one `recv()` returns them.
///
/// Yields one item per message and stops after the first error, whether the bytes are broken
/// or the message is a control message: [`DecodeError::Done`] ends a dump,
/// [`DecodeError::NetlinkError`] answers a request (0 = ACK). `NLMSG_NOOP` is skipped.
pub fn parse_messages(buf: &[u8]) -> impl Iterator<Item = Result<CtMessage, DecodeError>> + '_ {
    Messages { buf, failed: false }
}

struct Messages<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl Iterator for Messages<'_> {
    type Item = Result<CtMessage, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed || self.buf.is_empty() {
                return None;
            }
            let item = frame(self.buf).and_then(|(header, len)| {
                let msg = &self.buf[..len];
                self.buf = self.buf.get(align4(len)..).unwrap_or(&[]);
                if header.msg_type == NLMSG_NOOP {
                    Ok(None)
                } else {
                    parse_body(header, msg).map(Some)
                }
            });
            match item {
                Ok(None) => continue,
                Ok(Some(m)) => return Some(Ok(m)),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// A request to send to the kernel: `msg_type` is the full `nlmsg_type`
/// (`nfnl_msg_type(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET)`), `NLM_F_REQUEST` is added to
/// `flags`, `port_id` is 0 (the kernel fills in the sender), version `NFNETLINK_V0`, `res_id` 0.
pub fn request(msg_type: u16, flags: u16, seq: u32, family: u8, attrs: Vec<CtAttr>) -> CtMessage {
    CtMessage {
        header: NlHeader {
            msg_type,
            flags: flags | NLM_F_REQUEST,
            seq,
            port_id: 0,
        },
        family,
        version: NFNETLINK_V0,
        res_id: 0,
        attrs,
    }
}

/// The order of the top-level attributes in an event of `kind` (see the module docs for the
/// conditions and the nests). An event's attributes appear in this order, each at most once,
/// and most of them only under conditions.
pub fn event_attr_order(kind: MessageKind) -> &'static [u16] {
    match kind {
        MessageKind::New | MessageKind::Update => &[
            CTA_TUPLE_ORIG,
            CTA_TUPLE_REPLY,
            CTA_ZONE,
            CTA_ID,
            CTA_STATUS,
            CTA_TIMEOUT,
            CTA_PROTOINFO,
            CTA_HELP,
            CTA_SECCTX,
            CTA_LABELS,
            CTA_TUPLE_MASTER,
            CTA_SEQ_ADJ_ORIG,
            CTA_SEQ_ADJ_REPLY,
            CTA_SYNPROXY,
            CTA_MARK,
            CTA_TIMESTAMP_EVENT,
        ],
        MessageKind::Destroy => &[
            CTA_TUPLE_ORIG,
            CTA_TUPLE_REPLY,
            CTA_ZONE,
            CTA_ID,
            CTA_STATUS,
            CTA_TIMEOUT,
            CTA_COUNTERS_ORIG,
            CTA_COUNTERS_REPLY,
            CTA_TIMESTAMP,
            CTA_PROTOINFO,
            CTA_MARK,
            CTA_TIMESTAMP_EVENT,
        ],
    }
}

/// The order of the top-level attributes in a dump reply (`ctnetlink_fill_info`, flags
/// `NLM_F_MULTI`): tuples, zone (if not default), status, mark (always, 0 included), secctx (if
/// any), id, use, master tuple (if expected), timeout, protoinfo (full TCP nest), then counters,
/// timestamp, and helper, labels, seqadj, synproxy when present. Dumps carry no
/// `CTA_TIMESTAMP_EVENT`.
pub fn dump_attr_order() -> &'static [u16] {
    &[
        CTA_TUPLE_ORIG,
        CTA_TUPLE_REPLY,
        CTA_ZONE,
        CTA_STATUS,
        CTA_MARK,
        CTA_SECCTX,
        CTA_ID,
        CTA_USE,
        CTA_TUPLE_MASTER,
        CTA_TIMEOUT,
        CTA_PROTOINFO,
        CTA_COUNTERS_ORIG,
        CTA_COUNTERS_REPLY,
        CTA_TIMESTAMP,
        CTA_HELP,
        CTA_LABELS,
        CTA_SEQ_ADJ_ORIG,
        CTA_SEQ_ADJ_REPLY,
        CTA_SYNPROXY,
    ]
}

/// Whether `attrs` follow `order`: every attribute's kind is in `order`, at a later position
/// than the one before it (so each appears at most once).
pub fn follows_order(attrs: &[CtAttr], order: &[u16]) -> bool {
    let mut next = 0;
    for a in attrs {
        match order[next..].iter().position(|k| *k == a.kind()) {
            Some(i) => next += i + 1,
            None => return false,
        }
    }
    true
}

// ---- expectation messages ---------------------------------------------------------------------

emitable_attr!(super::ExpAttr, TupleAttr, |a| match a {
    super::ExpAttr::Master(t) => Wire::Nest(CTA_EXPECT_MASTER, t),
    super::ExpAttr::Tuple(t) => Wire::Nest(CTA_EXPECT_TUPLE, t),
    super::ExpAttr::Mask(t) => Wire::Nest(CTA_EXPECT_MASK, t),
    super::ExpAttr::Timeout(v) => Wire::Leaf(CTA_EXPECT_TIMEOUT, Value::U32(*v)),
    super::ExpAttr::Id(v) => Wire::Leaf(CTA_EXPECT_ID, Value::U32(*v)),
    super::ExpAttr::Zone(v) => Wire::Leaf(CTA_EXPECT_ZONE, Value::U16(*v)),
    super::ExpAttr::Flags(v) => Wire::Leaf(CTA_EXPECT_FLAGS, Value::U32(*v)),
    super::ExpAttr::Class(v) => Wire::Leaf(CTA_EXPECT_CLASS, Value::U32(*v)),
    super::ExpAttr::Other(r) => raw_wire(r),
});

impl ParseNla for super::ExpAttr {
    fn parse_nla(kind: u16, p: &[u8], depth: usize) -> Result<Self, DecodeError> {
        use super::ExpAttr;
        Ok(match nest_kind(kind) {
            Some(CTA_EXPECT_MASTER) => ExpAttr::Master(parse_list(p, depth + 1)?),
            Some(CTA_EXPECT_TUPLE) => ExpAttr::Tuple(parse_list(p, depth + 1)?),
            Some(CTA_EXPECT_MASK) => ExpAttr::Mask(parse_list(p, depth + 1)?),
            _ => match kind {
                CTA_EXPECT_TIMEOUT => ExpAttr::Timeout(be_u32(kind, p)?),
                CTA_EXPECT_ID => ExpAttr::Id(be_u32(kind, p)?),
                CTA_EXPECT_ZONE => ExpAttr::Zone(be_u16(kind, p)?),
                CTA_EXPECT_FLAGS => ExpAttr::Flags(be_u32(kind, p)?),
                CTA_EXPECT_CLASS => ExpAttr::Class(be_u32(kind, p)?),
                _ => ExpAttr::Other(raw(kind, p, depth)?),
            },
        })
    }
}

impl Emitable for super::ExpMessage {
    fn buffer_len(&self) -> usize {
        NLMSG_HDRLEN + NFGENMSG_LEN + list_len(&self.attrs)
    }

    fn emit(&self, buf: &mut [u8]) {
        let len = self.buffer_len();
        emit_headers(
            buf,
            len,
            &self.header,
            self.family,
            self.version,
            self.res_id,
        );
        emit_list(&self.attrs, &mut buf[NLMSG_HDRLEN + NFGENMSG_LEN..len]);
    }
}

impl super::ExpMessage {
    pub fn emit_to_vec(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.buffer_len(), 0);
        self.emit(&mut out[start..]);
    }

    /// Parses one expectation message (subsystem `CTNETLINK_EXP`) at the start of `buf`;
    /// `NLMSG_ERROR` and `NLMSG_DONE` come back as their errors, as for [`CtMessage::parse`].
    pub fn parse(buf: &[u8]) -> Result<(super::ExpMessage, usize), DecodeError> {
        let (header, len) = frame(buf)?;
        let msg = &buf[..len];
        control_message(&header, msg)?;
        let (nfgen, body) = split_nfgenmsg(&header, msg, NFNL_SUBSYS_CTNETLINK_EXP)?;
        let message = super::ExpMessage {
            header,
            family: nfgen.family,
            version: nfgen.version,
            res_id: nfgen.res_id,
            attrs: parse_list(body, 1)?,
        };
        Ok((message, align4(len).min(buf.len())))
    }
}
