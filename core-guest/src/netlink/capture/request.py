#!/usr/bin/env python3
# Request/response captures on NETLINK_NETFILTER: a conntrack table dump (NLM_F_DUMP) up to
# NLMSG_DONE, a GET of a tuple that does not exist (NLMSG_ERROR -ENOENT), and GET_STATS with
# NLM_F_ACK (a reply, then an ACK). Each recv() datagram -> one line "<label> <hex>" in argv[1].
import socket, struct, sys
out = open(sys.argv[1], "a")
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12); s.bind((0, 0)); s.settimeout(2)
def nla(t, p): 
    l = 4 + len(p); return struct.pack("=HH", l, t) + p + b"\0" * ((4 - l % 4) % 4)
def msg(ty, fl, seq, fam, attrs=b""):
    body = struct.pack("!BBH", fam, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), ty, fl, seq, 0) + body
def recv_until(label, stop):
    while True:
        d = s.recv(65536); out.write("%s %s\n" % (label, d.hex())); out.flush()
        if stop(d): return
def last_type(d):
    o = 0; t = None
    while o + 16 <= len(d):
        l, t = struct.unpack_from("=IH", d, o); o += (l + 3) & ~3
    return t
s.send(msg(0x101, 0x301, 1, 0)); recv_until("dump", lambda d: last_type(d) == 3)
tup = nla(0x8001, nla(0x8001, nla(1, bytes([127,0,0,1])) + nla(2, bytes([127,0,0,1]))) +
               nla(0x8002, nla(1, b"\x06") + nla(2, struct.pack("!H", 9)) + nla(3, struct.pack("!H", 9))))
s.send(msg(0x101, 0x1, 2, 2, tup)); recv_until("enoent", lambda d: last_type(d) == 2)
s.send(msg(0x105, 0x5, 3, 0)); recv_until("stats", lambda d: last_type(d) == 2)
