//! Kernel UAPI constants for conntrack over netlink, under the kernel's own names.
//!
//! They come from `<linux/netlink.h>`, `<linux/netfilter/nfnetlink.h>`,
//! `<linux/netfilter/nfnetlink_conntrack.h>` and `<linux/netfilter/nfnetlink_compat.h>`. Keeping
//! the UAPI spelling (`CTA_TUPLE_ORIG`, `CTA_PROTOINFO_TCP_STATE`) lets a reader check any value
//! against the kernel headers with a grep, and is why the names are not in Rust case.
//!
//! Types follow the field they go into: message types and flags are `u16` (`nlmsghdr`),
//! attribute types are `u16` (`nlattr`), the nfnetlink subsystem and message numbers are `u8`
//! (the two bytes of `nlmsg_type`), socket-level numbers are `i32` (`setsockopt`/`socket` take a
//! C `int`), multicast group numbers are `u32`.

// ---- socket level -------------------------------------------------------------------------

/// `AF_NETLINK` / `PF_NETLINK`.
pub const AF_NETLINK: i32 = 16;
/// The netlink protocol of nfnetlink (`socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER)`).
pub const NETLINK_NETFILTER: i32 = 12;
/// The `setsockopt` level of the netlink options below.
pub const SOL_NETLINK: i32 = 270;
pub const NETLINK_ADD_MEMBERSHIP: i32 = 1;
pub const NETLINK_DROP_MEMBERSHIP: i32 = 2;
pub const NETLINK_PKTINFO: i32 = 3;
/// Report delivery failures of broadcasts to the sender; ctnetlink's reliable events rely on it.
pub const NETLINK_BROADCAST_ERROR: i32 = 4;
/// Do not report `ENOBUFS` on overrun (the listener gives up on noticing lost events).
pub const NETLINK_NO_ENOBUFS: i32 = 5;
pub const NETLINK_LISTEN_ALL_NSID: i32 = 8;
pub const NETLINK_LIST_MEMBERSHIPS: i32 = 9;
pub const NETLINK_CAP_ACK: i32 = 10;
pub const NETLINK_EXT_ACK: i32 = 11;
pub const NETLINK_GET_STRICT_CHK: i32 = 12;

// ---- struct nlmsghdr ----------------------------------------------------------------------

/// `sizeof(struct nlmsghdr)`.
pub const NLMSG_HDRLEN: usize = 16;
/// Messages and attributes are aligned to four bytes.
pub const NLMSG_ALIGNTO: usize = 4;

pub const NLMSG_NOOP: u16 = 0x1;
/// Error or acknowledgement: payload is `int error` (negative errno, 0 = ACK) and the offending
/// request's `nlmsghdr` (and, without `NLM_F_CAPPED`, its payload).
pub const NLMSG_ERROR: u16 = 0x2;
/// End of a multipart (dump) reply.
pub const NLMSG_DONE: u16 = 0x3;
pub const NLMSG_OVERRUN: u16 = 0x4;
/// Types below this are reserved for the control messages above.
pub const NLMSG_MIN_TYPE: u16 = 0x10;

pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_MULTI: u16 = 0x02;
pub const NLM_F_ACK: u16 = 0x04;
pub const NLM_F_ECHO: u16 = 0x08;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP_FILTERED: u16 = 0x20;
// Modifiers to GET requests.
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_ATOMIC: u16 = 0x400;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
// Modifiers to NEW requests (and, in ctnetlink, the marker of a NEW event).
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
// Modifiers to DELETE requests.
pub const NLM_F_NONREC: u16 = 0x100;
pub const NLM_F_BULK: u16 = 0x200;
// Flags of ACK messages.
pub const NLM_F_CAPPED: u16 = 0x100;
pub const NLM_F_ACK_TLVS: u16 = 0x200;

// ---- struct nlattr ------------------------------------------------------------------------

/// `sizeof(struct nlattr)`.
pub const NLA_HDRLEN: usize = 4;
pub const NLA_ALIGNTO: usize = 4;
/// Set on every attribute whose payload is a list of attributes.
pub const NLA_F_NESTED: u16 = 1 << 15;
/// Set on attributes whose payload is in network byte order (ctnetlink does not use it: all of
/// its payloads are big-endian without saying so).
pub const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
/// The type bits of `nla_type`, without the two flags.
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

// ---- nfnetlink ----------------------------------------------------------------------------

/// `sizeof(struct nfgenmsg)`: family, version, big-endian `res_id`.
pub const NFGENMSG_LEN: usize = 4;
/// `nfgen_family` value for "all families" in dump and flush requests (`AF_UNSPEC`).
pub const AF_UNSPEC: u8 = 0;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
/// `nfgenmsg.version`.
pub const NFNETLINK_V0: u8 = 0;

/// nfnetlink subsystems: the high byte of `nlmsg_type`.
pub const NFNL_SUBSYS_NONE: u8 = 0;
pub const NFNL_SUBSYS_CTNETLINK: u8 = 1;
pub const NFNL_SUBSYS_CTNETLINK_EXP: u8 = 2;

/// Multicast groups (`NETLINK_ADD_MEMBERSHIP` takes these numbers; the `bind` bitmask takes
/// `1 << (group - 1)`).
pub const NFNLGRP_NONE: u32 = 0;
pub const NFNLGRP_CONNTRACK_NEW: u32 = 1;
pub const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;
pub const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
pub const NFNLGRP_CONNTRACK_EXP_NEW: u32 = 4;
pub const NFNLGRP_CONNTRACK_EXP_UPDATE: u32 = 5;
pub const NFNLGRP_CONNTRACK_EXP_DESTROY: u32 = 6;

// ---- ctnetlink message types (low byte of nlmsg_type) -------------------------------------

pub const IPCTNL_MSG_CT_NEW: u8 = 0;
pub const IPCTNL_MSG_CT_GET: u8 = 1;
pub const IPCTNL_MSG_CT_DELETE: u8 = 2;
pub const IPCTNL_MSG_CT_GET_CTRZERO: u8 = 3;
pub const IPCTNL_MSG_CT_GET_STATS_CPU: u8 = 4;
pub const IPCTNL_MSG_CT_GET_STATS: u8 = 5;
pub const IPCTNL_MSG_CT_GET_DYING: u8 = 6;
pub const IPCTNL_MSG_CT_GET_UNCONFIRMED: u8 = 7;

pub const IPCTNL_MSG_EXP_NEW: u8 = 0;
pub const IPCTNL_MSG_EXP_GET: u8 = 1;
pub const IPCTNL_MSG_EXP_DELETE: u8 = 2;
pub const IPCTNL_MSG_EXP_GET_STATS_CPU: u8 = 3;

// enum ctattr_expect (attributes of CTNETLINK_EXP messages)
pub const CTA_EXPECT_MASTER: u16 = 1;
pub const CTA_EXPECT_TUPLE: u16 = 2;
pub const CTA_EXPECT_MASK: u16 = 3;
pub const CTA_EXPECT_TIMEOUT: u16 = 4;
pub const CTA_EXPECT_ID: u16 = 5;
pub const CTA_EXPECT_HELP_NAME: u16 = 6;
pub const CTA_EXPECT_ZONE: u16 = 7;
pub const CTA_EXPECT_FLAGS: u16 = 8;
pub const CTA_EXPECT_CLASS: u16 = 9;
pub const CTA_EXPECT_NAT: u16 = 10;
pub const CTA_EXPECT_FN: u16 = 11;

/// `nfnl_msg_type(subsys, msg)`: the full `nlmsg_type` of an nfnetlink message.
pub const fn nfnl_msg_type(subsys: u8, msg: u8) -> u16 {
    ((subsys as u16) << 8) | msg as u16
}

// ---- enum ctattr_type ---------------------------------------------------------------------

pub const CTA_UNSPEC: u16 = 0;
pub const CTA_TUPLE_ORIG: u16 = 1;
pub const CTA_TUPLE_REPLY: u16 = 2;
pub const CTA_STATUS: u16 = 3;
pub const CTA_PROTOINFO: u16 = 4;
pub const CTA_HELP: u16 = 5;
pub const CTA_NAT_SRC: u16 = 6;
pub const CTA_TIMEOUT: u16 = 7;
pub const CTA_MARK: u16 = 8;
pub const CTA_COUNTERS_ORIG: u16 = 9;
pub const CTA_COUNTERS_REPLY: u16 = 10;
pub const CTA_USE: u16 = 11;
pub const CTA_ID: u16 = 12;
pub const CTA_NAT_DST: u16 = 13;
pub const CTA_TUPLE_MASTER: u16 = 14;
pub const CTA_SEQ_ADJ_ORIG: u16 = 15;
pub const CTA_SEQ_ADJ_REPLY: u16 = 16;
pub const CTA_SECMARK: u16 = 17;
pub const CTA_ZONE: u16 = 18;
pub const CTA_SECCTX: u16 = 19;
pub const CTA_TIMESTAMP: u16 = 20;
pub const CTA_MARK_MASK: u16 = 21;
pub const CTA_LABELS: u16 = 22;
pub const CTA_LABELS_MASK: u16 = 23;
pub const CTA_SYNPROXY: u16 = 24;
pub const CTA_FILTER: u16 = 25;
pub const CTA_STATUS_MASK: u16 = 26;
pub const CTA_TIMESTAMP_EVENT: u16 = 27;
pub const CTA_MAX: u16 = CTA_TIMESTAMP_EVENT;
/// Old names of `CTA_SEQ_ADJ_*`.
pub const CTA_NAT_SEQ_ADJ_ORIG: u16 = CTA_SEQ_ADJ_ORIG;
pub const CTA_NAT_SEQ_ADJ_REPLY: u16 = CTA_SEQ_ADJ_REPLY;

// enum ctattr_tuple
pub const CTA_TUPLE_UNSPEC: u16 = 0;
pub const CTA_TUPLE_IP: u16 = 1;
pub const CTA_TUPLE_PROTO: u16 = 2;
pub const CTA_TUPLE_ZONE: u16 = 3;

// enum ctattr_ip
pub const CTA_IP_UNSPEC: u16 = 0;
pub const CTA_IP_V4_SRC: u16 = 1;
pub const CTA_IP_V4_DST: u16 = 2;
pub const CTA_IP_V6_SRC: u16 = 3;
pub const CTA_IP_V6_DST: u16 = 4;

// enum ctattr_l4proto
pub const CTA_PROTO_UNSPEC: u16 = 0;
pub const CTA_PROTO_NUM: u16 = 1;
pub const CTA_PROTO_SRC_PORT: u16 = 2;
pub const CTA_PROTO_DST_PORT: u16 = 3;
pub const CTA_PROTO_ICMP_ID: u16 = 4;
pub const CTA_PROTO_ICMP_TYPE: u16 = 5;
pub const CTA_PROTO_ICMP_CODE: u16 = 6;
pub const CTA_PROTO_ICMPV6_ID: u16 = 7;
pub const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
pub const CTA_PROTO_ICMPV6_CODE: u16 = 9;

// enum ctattr_protoinfo
pub const CTA_PROTOINFO_UNSPEC: u16 = 0;
pub const CTA_PROTOINFO_TCP: u16 = 1;
pub const CTA_PROTOINFO_DCCP: u16 = 2;
pub const CTA_PROTOINFO_SCTP: u16 = 3;

// enum ctattr_protoinfo_tcp
pub const CTA_PROTOINFO_TCP_UNSPEC: u16 = 0;
pub const CTA_PROTOINFO_TCP_STATE: u16 = 1;
pub const CTA_PROTOINFO_TCP_WSCALE_ORIGINAL: u16 = 2;
pub const CTA_PROTOINFO_TCP_WSCALE_REPLY: u16 = 3;
/// `struct nf_ct_tcp_flags { __u8 flags; __u8 mask; }`.
pub const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
pub const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;

// enum ctattr_protoinfo_sctp
pub const CTA_PROTOINFO_SCTP_UNSPEC: u16 = 0;
pub const CTA_PROTOINFO_SCTP_STATE: u16 = 1;
pub const CTA_PROTOINFO_SCTP_VTAG_ORIGINAL: u16 = 2;
pub const CTA_PROTOINFO_SCTP_VTAG_REPLY: u16 = 3;

// enum ctattr_counters
pub const CTA_COUNTERS_UNSPEC: u16 = 0;
/// 64-bit counters.
pub const CTA_COUNTERS_PACKETS: u16 = 1;
pub const CTA_COUNTERS_BYTES: u16 = 2;
/// Old 32-bit counters.
pub const CTA_COUNTERS32_PACKETS: u16 = 3;
pub const CTA_COUNTERS32_BYTES: u16 = 4;
/// Alignment padding before 64-bit values (not emitted on x86-64).
pub const CTA_COUNTERS_PAD: u16 = 5;

// enum ctattr_tstamp
pub const CTA_TIMESTAMP_UNSPEC: u16 = 0;
pub const CTA_TIMESTAMP_START: u16 = 1;
pub const CTA_TIMESTAMP_STOP: u16 = 2;
pub const CTA_TIMESTAMP_PAD: u16 = 3;

// enum ctattr_help
pub const CTA_HELP_UNSPEC: u16 = 0;
pub const CTA_HELP_NAME: u16 = 1;
pub const CTA_HELP_INFO: u16 = 2;

// enum ctattr_seqadj
pub const CTA_SEQADJ_UNSPEC: u16 = 0;
pub const CTA_SEQADJ_CORRECTION_POS: u16 = 1;
pub const CTA_SEQADJ_OFFSET_BEFORE: u16 = 2;
pub const CTA_SEQADJ_OFFSET_AFTER: u16 = 3;

// enum ctattr_secctx
pub const CTA_SECCTX_UNSPEC: u16 = 0;
pub const CTA_SECCTX_NAME: u16 = 1;

// enum ctattr_synproxy
pub const CTA_SYNPROXY_UNSPEC: u16 = 0;
pub const CTA_SYNPROXY_ISN: u16 = 1;
pub const CTA_SYNPROXY_ITS: u16 = 2;
pub const CTA_SYNPROXY_TSOFF: u16 = 3;

// enum ctattr_filter
pub const CTA_FILTER_UNSPEC: u16 = 0;
pub const CTA_FILTER_ORIG_FLAGS: u16 = 1;
pub const CTA_FILTER_REPLY_FLAGS: u16 = 2;

// enum ctattr_stats_cpu (IPCTNL_MSG_CT_GET_STATS_CPU replies, one message per CPU)
pub const CTA_STATS_UNSPEC: u16 = 0;
/// Obsolete, sent as 0.
pub const CTA_STATS_SEARCHED: u16 = 1;
pub const CTA_STATS_FOUND: u16 = 2;
/// Obsolete, sent as 0.
pub const CTA_STATS_NEW: u16 = 3;
pub const CTA_STATS_INVALID: u16 = 4;
/// Obsolete, sent as 0.
pub const CTA_STATS_IGNORE: u16 = 5;
/// Obsolete, sent as 0.
pub const CTA_STATS_DELETE: u16 = 6;
/// Obsolete, sent as 0.
pub const CTA_STATS_DELETE_LIST: u16 = 7;
pub const CTA_STATS_INSERT: u16 = 8;
pub const CTA_STATS_INSERT_FAILED: u16 = 9;
pub const CTA_STATS_DROP: u16 = 10;
pub const CTA_STATS_EARLY_DROP: u16 = 11;
pub const CTA_STATS_ERROR: u16 = 12;
pub const CTA_STATS_SEARCH_RESTART: u16 = 13;
pub const CTA_STATS_CLASH_RESOLVE: u16 = 14;
pub const CTA_STATS_CHAIN_TOOLONG: u16 = 15;

// enum ctattr_stats_global (IPCTNL_MSG_CT_GET_STATS replies)
pub const CTA_STATS_GLOBAL_UNSPEC: u16 = 0;
pub const CTA_STATS_GLOBAL_ENTRIES: u16 = 1;
pub const CTA_STATS_GLOBAL_MAX_ENTRIES: u16 = 2;

// enum ctattr_expect_stats
pub const CTA_STATS_EXP_UNSPEC: u16 = 0;
pub const CTA_STATS_EXP_NEW: u16 = 1;
pub const CTA_STATS_EXP_CREATE: u16 = 2;
pub const CTA_STATS_EXP_DELETE: u16 = 3;
