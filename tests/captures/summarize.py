#!/usr/bin/env python3
"""Summarize the capture fixtures (stdlib only): one markdown table row per capture file.

    python3 summarize.py [DIR]

For every *.pcap / *.pcapng: link type and packet count (parsed here, independent of
tcpdump), and the conntrack event sequence from the matching *.events file(s):
event type, TCP state, the flags conntrack prints ([UNREPLIED], [ASSURED]) and the
DESTROY packet counters (orig/reply). If a file holds more than one conntrack id, each
event is tagged #1, #2, ... in order of first appearance.
"""
import os
import re
import struct
import sys

TRAFFIC = {  # scenario prefix -> what traffic (see traffic.py / make-captures.sh)
    "tcp-close": "TCP connect, 100 B each way, client FIN first, server FIN",
    "tcp-rst": "TCP connect, 100 B each way, client close with SO_LINGER 0 (RST)",
    "tcp-refused": "TCP SYN 40003 -> closed port 5009, RST/ACK back",
    "tcp-reopen": "TCP conn, server closes first (ct TIME_WAIT); 0.5 s later same 4-tuple reconnects, data, client-first close",
    "tcp-simultaneous-open-forced": "crossed SYNs 40001<->40005 (a's SYN dropped at nft input after conntrack), 100 B, a FIN first",
    "tcp-simultaneous-open": "two non-blocking connect()s 40001<->40005 at once; both refused (RST/ACK), no crossing on lo",
    "udp-oneway": "one UDP datagram 40002 -> 5001, receiver never answers",
    "udp-reqresp-any": "as udp-reqresp, captured with tcpdump -i any",
    "udp-reqresp": "two UDP request/response exchanges 50 ms apart",
    "udp-stream": "two UDP exchanges, third exchange 2.5 s after the first",
    "udp-unreachable": "one UDP datagram 40004 -> closed 5009, ICMP port unreachable back",
    "icmp-echo": "ping -c 2 (echo id random)",
    "mixed": "veth ns1->ns2: TCP connect/100 B each way/client-first close, UDP req/resp, ping -c 2",
}


def traffic(base):
    for k in sorted(TRAFFIC, key=len, reverse=True):
        if base.startswith(k):
            return TRAFFIC[k]
    return ""


LINKTYPES = {1: "EN10MB", 113: "LINUX_SLL", 276: "LINUX_SLL2"}


def pcap_info(path):
    data = open(path, "rb").read()
    magic = data[:4]
    if magic == b"\x0a\x0d\x0d\x0a":
        return pcapng_info(data)
    for endian in "<>":
        (m,) = struct.unpack(endian + "I", magic)
        if m in (0xA1B2C3D4, 0xA1B23C4D):
            break
    else:
        raise ValueError(f"{path}: not a pcap file")
    res = "ns" if m == 0xA1B23C4D else "us"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    off, n = 24, 0
    while off + 16 <= len(data):
        incl = struct.unpack(endian + "I", data[off + 8:off + 12])[0]
        off += 16 + incl
        n += 1
    return linktype, n, "pcap/" + res


def pcapng_info(data):
    off, n, linktypes = 0, 0, []
    endian = "<"
    while off + 12 <= len(data):
        btype = struct.unpack(endian + "I", data[off:off + 4])[0]
        if btype == 0x0A0D0D0A:
            bom = data[off + 8:off + 12]
            endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
        blen = struct.unpack(endian + "I", data[off + 4:off + 8])[0]
        if btype == 1:
            linktypes.append(struct.unpack(endian + "H", data[off + 8:off + 10])[0])
        elif btype in (3, 6):
            n += 1
        off += blen
    return (linktypes[0] if linktypes else None), n, "pcapng"


EV = re.compile(r"^\[(?P<ts>[\d.]+)\]\s+\[(?P<ev>\w+)\]\s+(?P<rest>.*)$")


def parse_events(path):
    out = []
    for line in open(path):
        m = EV.match(line.strip())
        if not m:
            continue
        rest = m["rest"]
        toks = rest.split()
        # ipv4 2 tcp 6 [timeout] [STATE] src=...
        l4 = toks[2]
        i = 4
        if i < len(toks) and toks[i].isdigit():
            i += 1
        state = toks[i] if i < len(toks) and "=" not in toks[i] else ""
        flags = [f for f in re.findall(r"\[([A-Z]+)\]", rest)]
        pk = re.findall(r"packets=(\d+)", rest)
        idv = re.findall(r"\bid=(\d+)", rest)[-1]
        out.append(dict(ev=m["ev"], l4=l4, state=state, flags=flags,
                        pk="/".join(pk), id=idv, ts=float(m["ts"])))
    return out


def conntracks(evs):
    """Assign each event to a conntrack: key = id + generation (the kernel can reuse an
    id for a new entry on the same tuple right after the old one is destroyed, see
    tcp-reopen). Returns the list of keys in order of first appearance."""
    gen, keys = {}, []
    for e in evs:
        g = gen.get(e["id"], 0)
        e["key"] = (e["id"], g)
        if e["key"] not in keys:
            keys.append(e["key"])
        if e["ev"] == "DESTROY":
            gen[e["id"]] = g + 1
    return keys


def check(evs, keys):
    """Every conntrack must start with NEW and end with DESTROY (host/docs/kernel-behaviour.md, "Making captures")."""
    problems = []
    for k in keys:
        seq = [e["ev"] for e in evs if e["key"] == k]
        if seq[0] != "NEW" or seq[-1] != "DESTROY" or seq.count("NEW") != 1 \
                or seq.count("DESTROY") != 1:
            problems.append(f"id {k[0]} gen {k[1]}: {seq}")
    return problems


def fmt_events(evs):
    keys = conntracks(evs)
    parts = []
    for e in evs:
        s = e["ev"]
        if len(keys) > 1:
            s += f"#{keys.index(e['key']) + 1}"
        if e["state"]:
            s += " " + e["state"]
        else:
            s += " " + e["l4"]
        if e["flags"]:
            s += " [" + ",".join(e["flags"]) + "]"
        if e["pk"]:
            s += f" ({e['pk']} pkts)"
        parts.append(s)
    return " → ".join(parts) if parts else "(no events)"


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    files = sorted(f for f in os.listdir(d) if f.endswith((".pcap", ".pcapng")))
    bad = []
    print("| file | traffic | link type | packets | kernel events (conntrack -E) |")
    print("|---|---|---|---|---|")
    for f in files:
        lt, n, fmt = pcap_info(os.path.join(d, f))
        base = f.rsplit(".", 1)[0]
        cells = []
        for suffix, label in ((".events", ""), (".ns2.events", "ns2: ")):
            ep = os.path.join(d, base + suffix)
            if os.path.exists(ep):
                evs = parse_events(ep)
                cells.append(label + fmt_events(evs))
                bad += [f"{base + suffix}: {p}" for p in check(evs, conntracks(evs))]
                if not evs:
                    bad.append(f"{base + suffix}: no events")
        if not cells:
            cells = ["(same traffic as the .pcap it was converted from)"]
        print(f"| {f} | {traffic(base)} | {LINKTYPES.get(lt, lt)} ({lt}), {fmt} | {n} | {'<br>'.join(cells)} |")
    for b in bad:
        print("CHECK FAILED:", b, file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
