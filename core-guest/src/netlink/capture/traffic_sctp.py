#!/usr/bin/env python3
# Loopback-only SCTP, hand-built (this kernel has no SCTP sockets; raw sockets of protocol 132 on
# both ends take the packets quietly): over 127.0.0.1 -> 127.0.0.2 a whole association (INIT,
# INIT ACK, COOKIE ECHO, COOKIE ACK, DATA, SACK, HEARTBEAT and its ACK, SHUTDOWN, SHUTDOWN ACK,
# SHUTDOWN COMPLETE) and a HEARTBEAT that starts an entry of its own; over ::1 the setup only.
# The CRC32c is correct, although conntrack checks it only on packets entering from outside.
import socket, struct, time

def crc32c(data):
    crc = 0xffffffff
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82f63b78 if crc & 1 else 0)
    return crc ^ 0xffffffff

def packet(sport, dport, vtag, chunks):
    body = struct.pack("!HHII", sport, dport, vtag, 0) + b"".join(chunks)
    return body[:8] + struct.pack("<I", crc32c(body)) + body[12:]

def chunk(kind, flags, value=b""):
    n = 4 + len(value)
    return struct.pack("!BBH", kind, flags, n) + value + b"\0" * (-n % 4)

def init(kind, tag):
    return chunk(kind, 0, struct.pack("!IIHHI", tag, 65536, 10, 10, 1))

TC, TS = 0x11111111, 0x22222222
HB = struct.pack("!HH", 1, 8) + b"beat"

def association(fam, a_addr, b_addr, whole):
    a = socket.socket(fam, socket.SOCK_RAW, 132); a.bind((a_addr, 0))
    b = socket.socket(fam, socket.SOCK_RAW, 132); b.bind((b_addr, 0))
    def c(vtag, *ch): a.sendto(packet(5000, 6000, vtag, ch), (b_addr, 0)); time.sleep(0.05)
    def s(vtag, *ch): b.sendto(packet(6000, 5000, vtag, ch), (a_addr, 0)); time.sleep(0.05)
    c(0, init(1, TC)); s(TC, init(2, TS)); c(TS, chunk(10, 0, b"cookie")); s(TC, chunk(11, 0))
    if whole:
        c(TS, chunk(0, 3, struct.pack("!IHHI", 1, 0, 0, 0) + b"data"))
        s(TC, chunk(3, 0, struct.pack("!IIHH", 1, 65536, 0, 0)))
        c(TS, chunk(4, 0, HB)); s(TC, chunk(5, 0, HB))
        c(TS, chunk(7, 0, struct.pack("!I", 1))); s(TC, chunk(8, 0)); c(TS, chunk(14, 0))
        # A second path's first packet: a HEARTBEAT from another port pair.
        a.sendto(packet(5001, 6001, TS, [chunk(4, 0, HB)]), (b_addr, 0)); time.sleep(0.05)
    a.close(); b.close()

association(socket.AF_INET, "127.0.0.1", "127.0.0.2", True)
association(socket.AF_INET6, "::1", "::1", False)
time.sleep(0.2)
