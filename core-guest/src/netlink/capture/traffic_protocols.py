#!/usr/bin/env python3
# Loopback-only traffic of the protocols with trackers of their own beyond TCP and UDP: a
# UDP-Lite request/reply/request over 127.0.0.1 and ::1, and GRE from 127.0.0.1 to 127.0.0.2 and
# back (version 0 carrying IPv4, then enhanced GRE/PPP with call ids 0x1111 and 0x2222).
# Raw GRE sockets are open on both addresses, so the stack takes the packets quietly.
import socket, time
for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    a = socket.socket(fam, socket.SOCK_DGRAM, 136); a.bind((host, 0))
    b = socket.socket(fam, socket.SOCK_DGRAM, 136); b.bind((host, 0))
    a.sendto(b"lite", b.getsockname()); d, peer = b.recvfrom(100)
    b.sendto(d, peer); a.recvfrom(100)
    a.sendto(b"lite", b.getsockname()); b.recvfrom(100)
    a.close(); b.close()
one = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47); one.bind(("127.0.0.1", 0))
two = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47); two.bind(("127.0.0.2", 0))
v0 = bytes([0x00, 0x00, 0x08, 0x00, 0x45, 0x00, 0x00, 0x14])
one.sendto(v0, ("127.0.0.2", 0)); two.sendto(v0, ("127.0.0.1", 0)); one.sendto(v0, ("127.0.0.2", 0))
v1 = lambda call: bytes([0x30, 0x81, 0x88, 0x0b, 0, 0]) + call.to_bytes(2, "big") + (1).to_bytes(4, "big")
one.sendto(v1(0x1111), ("127.0.0.2", 0)); two.sendto(v1(0x2222), ("127.0.0.1", 0))
time.sleep(0.2)
one.close(); two.close()
