#!/usr/bin/env python3
# Raw NETLINK_NETFILTER listener: joins NFNLGRP_CONNTRACK_NEW/UPDATE/DESTROY (1,2,3) and writes
# every received datagram as one hex line "<groups-bitmask> <hex>" to argv[1]. Stdlib only.
import socket, sys, time
out = open(sys.argv[1], "w")
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((0, 0))
for g in (1, 2, 3):
    s.setsockopt(270, 1, g)  # SOL_NETLINK, NETLINK_ADD_MEMBERSHIP
open(sys.argv[2], "w").write("ready\n")
s.settimeout(1.0)
deadline = time.time() + float(sys.argv[3])
while time.time() < deadline:
    try:
        data, addr = s.recvfrom(65536)
    except socket.timeout:
        continue
    out.write("%d %s\n" % (addr[1], data.hex()))
    out.flush()
