#!/usr/bin/env python3
"""Writes ../testdata.rs from the files capture.sh produced:
    ./gen_testdata.py /tmp/capture.txt > ../testdata.rs && rustfmt --edition 2024 ../testdata.rs
Expectations are decoded here, independently of the Rust codec, so the Rust tests compare two
decoders. Stdlib only."""
import struct, subprocess, sys

TCP_STATES = ["None", "SynSent", "SynRecv", "Established", "FinWait", "CloseWait", "LastAck",
              "TimeWait", "Close", "SynSent2"]
PROTO = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp", 136: "udplite", 47: "gre", 132: "sctp"}
SCTP_STATES = ["None", "Closed", "CookieWait", "CookieEchoed", "Established", "ShutdownSent",
               "ShutdownRecd", "ShutdownAckSent", "HeartbeatSent"]
SCTP_SNAKE = ["none", "closed", "cookie_wait", "cookie_echoed", "established", "shutdown_sent",
              "shutdown_recd", "shutdown_ack_sent", "heartbeat_sent"]
SNAKE = ["none", "syn_sent", "syn_recv", "established", "fin_wait", "close_wait", "last_ack",
         "time_wait", "close", "syn_sent2"]

def attrs(b):
    out, o = {}, 0
    while o + 4 <= len(b):
        l, t = struct.unpack_from("=HH", b, o)
        p = b[o + 4:o + l]
        out[t & 0x3fff] = attrs(p) if t & 0x8000 else p
        o += (l + 3) & ~3
    return out

def messages(b):
    o = 0
    while o < len(b):
        l, ty, fl, seq, pid = struct.unpack_from("=IHHII", b, o)
        yield b[o:o + l], ty, fl, seq, pid
        o += (l + 3) & ~3

def be(p):
    return int.from_bytes(p, "big")

def opt(v):
    return "None" if v is None else "Some(%s)" % v

def event_expect(m, ty, fl, pid):
    fam = m[16]
    a = attrs(m[20:])
    kind = "Destroy" if ty & 0xff == 2 else ("New" if fl & 0x600 else "Update")
    orig = a[1]
    proto = be(orig[2][1])
    p = orig[2]
    if proto in (6, 17, 136, 47, 132):
        l4 = "L4Tuple::Ports { src: %d, dst: %d }" % (be(p[2]), be(p[3]))
    else:
        base = 4 if proto == 1 else 7
        l4 = "L4Tuple::Icmp { id: %d, kind: %d, code: %d }" % (be(p[base]), be(p[base + 1]), be(p[base + 2]))
    tcp = a.get(4, {}).get(1, {}).get(1)
    tcp = None if tcp is None else "TcpState::" + TCP_STATES[be(tcp)]
    sctp = a.get(4, {}).get(3, {}).get(1)
    sctp_name = None if sctp is None else SCTP_SNAKE[be(sctp)]
    sctp = None if sctp is None else "SctpState::" + SCTP_STATES[be(sctp)]
    cnt = lambda k: None if k not in a else "Counters { packets: %d, bytes: %d }" % (be(a[k][1]), be(a[k][2]))
    ts = a.get(20, {})
    start = None if 1 not in ts else be(ts[1])
    stop = None if 2 not in ts else be(ts[2])
    timeout = None if 7 not in a else be(a[7])
    name = "%s%s_%s" % (PROTO[proto], "4" if fam == 2 else "6", kind.lower())
    if tcp:
        name += "_" + SNAKE[be(a[4][1][1])]
    if sctp:
        name += "_" + sctp_name
    if kind == "Destroy":
        name += "_flush" if pid else "_timeout"
    return name, (
        "kind: MessageKind::%s;family: Family::%s;proto: %d;l4: %s;status: %#x;id: %#010x;"
        "port_id: %d;timeout: %s;tcp_state: %s;sctp_state: %s;counters_orig: %s;counters_reply: %s;"
        "ts_start: %s;ts_stop: %s;ts_event: %s"
        % (kind, "Ipv4" if fam == 2 else "Ipv6", proto, l4, be(a[3]), be(a[12]), pid, opt(timeout),
           opt(tcp), opt(sctp), opt(cnt(9)), opt(cnt(10)), opt(start), opt(stop), opt(be(a[27]) if 27 in a else None)))

def hexlit(b, indent="        "):
    h = b.hex()
    lines = [h[i:i + 88] for i in range(0, len(h), 88)]
    if len(lines) == 1:
        return '"%s"' % h
    return "concat!(\n" + "".join('%s"%s",\n' % (indent, l) for l in lines) + indent[:-4] + ")"

def main():
    ev_path = sys.argv[1]
    uname = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    print("""//! Messages captured from a live kernel, for the codec tests.
//!
//! Kernel `%s` (`uname -r`), conntrack-tools 1.4.7, x86-64 (little-endian headers).
//! Captured inside a throwaway network namespace by `capture/capture.sh`, generated with
//! `capture/gen_testdata.py`:
//!
//! ```text
//! ip netns add ctwasm-codec-$$; ip -n ctwasm-codec-$$ link set lo up
//! ip netns exec NS sysctl -w net.netfilter.nf_conntrack_events=1 nf_conntrack_acct=1 \\
//!     nf_conntrack_timestamp=1 nf_conntrack_{udp,icmp,icmpv6}_timeout=2 \\
//!     nf_conntrack_tcp_timeout_time_wait=2
//! ip netns exec NS nft -f - <<< 'table inet t { chain out { type filter hook output priority 0;
//!     ct state new counter } }'
//! ip netns exec NS python3 listen.py OUT READY 20 &   # AF_NETLINK/NETLINK_NETFILTER raw socket,
//!     # bind (0,0), SO_RCVBUF 4 MiB, setsockopt(SOL_NETLINK=270, NETLINK_ADD_MEMBERSHIP, 1|2|3)
//! ip netns exec NS python3 traffic.py 4; ip netns exec NS python3 traffic.py 6  # TCP + UDP on lo
//! ip netns exec NS python3 traffic_protocols.py; ip netns exec NS python3 traffic_sctp.py
//! ip netns exec NS ping -c1 127.0.0.1; ip netns exec NS ping -6 -c1 ::1
//! ip netns exec NS python3 request.py OUT.req   # dump, GET of a missing tuple, GET_STATS|ACK
//! ip netns exec NS conntrack -F                 # DESTROY events, nlmsg_pid = conntrack's port
//! ip netns exec NS ping -c1 127.0.0.1; sleep 6; ip netns exec NS conntrack -L  # timeout DESTROY
//! ip netns del NS
//! ```
//!
//! Every event datagram held exactly one message. Expected values were decoded by the Python
//! generator, independently of the Rust codec.

use crate::event::{MessageKind, SctpState, TcpState};
use crate::netlink::Counters;
use crate::tuple::{Family, L4Tuple};

/// One captured event message and what it says.
#[derive(Debug)]
pub(super) struct EventFixture {
    pub name: &'static str,
    /// The `nl_groups` bitmask `recvfrom` reported (1 = NEW, 2 = UPDATE, 4 = DESTROY).
    pub groups: u32,
    pub hex: &'static str,
    pub kind: MessageKind,
    pub family: Family,
    pub proto: u8,
    /// The original direction's ports or ICMP id/type/code.
    pub l4: L4Tuple,
    pub status: u32,
    pub id: u32,
    pub port_id: u32,
    pub timeout: Option<u32>,
    pub tcp_state: Option<TcpState>,
    pub sctp_state: Option<SctpState>,
    pub counters_orig: Option<Counters>,
    pub counters_reply: Option<Counters>,
    pub ts_start: Option<u64>,
    pub ts_stop: Option<u64>,
    pub ts_event: Option<u64>,
}
""" % uname)
    names = {}
    print("pub(super) const EVENTS: &[EventFixture] = &[")
    for line in open(ev_path):
        g, h = line.split()
        b = bytes.fromhex(h)
        msgs = list(messages(b))
        assert len(msgs) == 1 and len(msgs[0][0]) == len(b)
        m, ty, fl, seq, pid = msgs[0]
        name, fields = event_expect(m, ty, fl, pid)
        n = names.get(name, 0) + 1
        names[name] = n
        if n > 1:
            name += "_%d" % n
        print("    EventFixture {\n        name: \"%s\",\n        groups: %s,\n        hex: %s,\n        %s,\n    },"
              % (name, g, hexlit(b, "            "), fields.replace(";", ",\n        ")))
    print("];\n")
    req = {}
    for line in open(ev_path + ".req"):
        label, h = line.split()
        req.setdefault(label, []).append(bytes.fromhex(h))
    dump = req["dump"]
    nd = len(list(messages(dump[0])))
    print("/// One `recv()` of the reply to `IPCTNL_MSG_CT_GET` with `NLM_F_REQUEST|NLM_F_DUMP`, family")
    print("/// `AF_UNSPEC`, seq 1: %d conntrack messages (`NLM_F_MULTI`) in one datagram." % nd)
    print("pub(super) const DUMP_MESSAGES: usize = %d;" % nd)
    print("pub(super) const DUMP: &str = %s;\n" % hexlit(dump[0], "    "))
    print("/// The next `recv()`: `NLMSG_DONE` (flags `NLM_F_MULTI`).")
    print("pub(super) const DUMP_DONE: &str = %s;\n" % hexlit(dump[1], "    "))
    print("/// `IPCTNL_MSG_CT_GET` (seq 2) of a TCP tuple 127.0.0.1:9 -> 127.0.0.1:9 that does not exist:")
    print("/// `NLMSG_ERROR` with -ENOENT followed by the whole request.")
    print("pub(super) const ENOENT: &str = %s;\n" % hexlit(req["enoent"][0], "    "))
    print("/// `IPCTNL_MSG_CT_GET_STATS` with `NLM_F_ACK` (seq 3): the reply (CTA_STATS_GLOBAL_ENTRIES,")
    print("/// CTA_STATS_GLOBAL_MAX_ENTRIES) ...")
    print("pub(super) const STATS: &str = %s;\n" % hexlit(req["stats"][0], "    "))
    print("/// ... and the ACK (`NLMSG_ERROR` with error 0, flags `NLM_F_CAPPED`).")
    print("pub(super) const ACK: &str = %s;" % hexlit(req["stats"][1], "    "))

main()
