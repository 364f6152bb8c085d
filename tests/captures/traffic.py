#!/usr/bin/env python3
"""Traffic generator for the conntrack capture fixtures (stdlib only).

Called by make-captures.sh inside a network namespace:

    python3 traffic.py SCENARIO FAMILY [ADDRESS]

SCENARIO: tcp-close tcp-rst tcp-refused tcp-reopen tcp-simultaneous-open
          tcp-simultaneous-open-forced (needs the nft input drop rule, see make-captures.sh)
          udp-oneway udp-reqresp udp-stream udp-unreachable
          mixed-server mixed-client   (veth scenario: server runs in ns2, client in ns1)
FAMILY:   4 or 6
ADDRESS:  peer address; default 127.0.0.1 / ::1 (mixed-client: the ns2 address,
          mixed-server: the address to bind)

Fixed ports (host/docs/kernel-behaviour.md, "Making captures"): TCP client 40001, UDP client 40002,
server 5001; closed-port cases use client ports 40003 (TCP) / 40004 (UDP) -> 5009.
The simultaneous-open case uses 40001 <-> 40005.

Every step is separated by short sleeps so that each packet's conntrack event is
distinct and the teardown is as reproducible as possible (see README.md for what
the kernel actually did).
"""
import errno
import select
import socket
import struct
import sys
import threading
import time

TCP_CLIENT, UDP_CLIENT, SERVER = 40001, 40002, 5001
TCP_CLOSED_CLIENT, UDP_CLOSED_CLIENT, CLOSED = 40003, 40004, 5009
SIMOPEN_PEER = 40005
PAYLOAD = b"x" * 100
STEP = 0.1


def log(*a):
    print(f"[traffic {time.time():.6f}]", *a, file=sys.stderr, flush=True)


def fam(f):
    return socket.AF_INET if f == "4" else socket.AF_INET6


def sock(f, kind, port=None, addr=None, reuse=True):
    s = socket.socket(fam(f), kind)
    if reuse:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if port is not None:
        s.bind((addr, port))
    return s


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def tcp_listener(f, addr):
    srv = sock(f, socket.SOCK_STREAM, SERVER, addr)
    srv.listen(4)
    return srv


def tcp_exchange(cli, conn):
    """100 bytes client->server, then 100 bytes server->client."""
    cli.sendall(PAYLOAD)
    assert recv_exact(conn, 100) == PAYLOAD
    time.sleep(STEP)
    conn.sendall(PAYLOAD)
    assert recv_exact(cli, 100) == PAYLOAD
    time.sleep(STEP)


def tcp_connect(f, addr, sport=TCP_CLIENT, dport=SERVER):
    cli = sock(f, socket.SOCK_STREAM, sport, addr)
    cli.connect((addr, dport))
    return cli


def tcp_close(f, addr):
    srv = tcp_listener(f, addr)
    cli = tcp_connect(f, addr)
    conn, _ = srv.accept()
    time.sleep(STEP)
    tcp_exchange(cli, conn)
    log("client close (FIN)")
    cli.close()
    assert conn.recv(1) == b""  # EOF: client FIN arrived
    log("server close (FIN)")
    conn.close()
    srv.close()
    time.sleep(STEP)


def tcp_rst(f, addr):
    srv = tcp_listener(f, addr)
    cli = tcp_connect(f, addr)
    conn, _ = srv.accept()
    time.sleep(STEP)
    tcp_exchange(cli, conn)
    log("client close with SO_LINGER 0 (RST)")
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    cli.close()
    time.sleep(STEP)
    try:
        conn.recv(1)
    except ConnectionResetError:
        log("server saw ECONNRESET")
    conn.close()  # socket already reset: sends nothing
    srv.close()


def tcp_refused(f, addr):
    cli = sock(f, socket.SOCK_STREAM, TCP_CLOSED_CLIENT, addr)
    try:
        cli.connect((addr, CLOSED))
        raise SystemExit("connect to closed port unexpectedly succeeded")
    except ConnectionRefusedError:
        log("ECONNREFUSED as expected")
    cli.close()
    time.sleep(STEP)


def tcp_reopen(f, addr):
    srv = tcp_listener(f, addr)
    # connection 1: server closes first -> server socket ends in TIME_WAIT,
    # conntrack entry ends in TIME_WAIT (timeout 3 s in the test netns)
    cli = tcp_connect(f, addr)
    conn, _ = srv.accept()
    time.sleep(STEP)
    tcp_exchange(cli, conn)
    log("conn1: server close first (FIN)")
    conn.close()
    assert cli.recv(1) == b""
    log("conn1: client close (FIN)")
    cli.close()
    time.sleep(0.5)
    # connection 2: same 4-tuple, well inside the 3 s conntrack TIME_WAIT timeout
    log("conn2: reconnect from the same source port")
    try:
        cli = tcp_connect(f, addr)
    except OSError as e:
        log(f"conn2: connect failed: {e!r}")
        raise
    conn, _ = srv.accept()
    time.sleep(STEP)
    tcp_exchange(cli, conn)
    log("conn2: client close (FIN)")
    cli.close()
    assert conn.recv(1) == b""
    conn.close()
    srv.close()
    time.sleep(STEP)


def tcp_simultaneous_open(f, addr):
    a = sock(f, socket.SOCK_STREAM, TCP_CLIENT, addr)
    b = sock(f, socket.SOCK_STREAM, SIMOPEN_PEER, addr)
    a.setblocking(False)
    b.setblocking(False)
    barrier = threading.Barrier(2)
    results = {}

    def go(name, s, port):
        barrier.wait()
        results[name] = s.connect_ex((addr, port))

    ta = threading.Thread(target=go, args=("a", a, SIMOPEN_PEER))
    tb = threading.Thread(target=go, args=("b", b, TCP_CLIENT))
    ta.start(); tb.start(); ta.join(); tb.join()
    log("connect_ex results", {k: errno.errorcode.get(v, v) for k, v in results.items()})
    _, w, _ = select.select([], [a, b], [], 2.0)
    for name, s in (("a", a), ("b", b)):
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        log(f"{name}: SO_ERROR={errno.errorcode.get(err, err)} writable={s in w}")
    connected = []
    for name, s in (("a", a), ("b", b)):
        try:
            s.getpeername()
            connected.append(s)
        except OSError:
            pass
    log(f"{len(connected)} socket(s) connected")
    time.sleep(STEP)
    if len(connected) == 2:
        a.setblocking(True); b.setblocking(True)
        a.sendall(PAYLOAD)
        assert recv_exact(b, 100) == PAYLOAD
        time.sleep(STEP)
        a.close()
        assert b.recv(1) == b""
        b.close()
    else:
        a.close(); b.close()
    time.sleep(STEP)


def tcp_simultaneous_open_forced(f, addr):
    """True crossed SYNs. make-captures.sh adds an nft rule to the *input* chain that
    drops the bare SYN 40001 -> 40005. Conntrack has already seen (and confirmed) that
    SYN on the output path, so the kernel conntrack sees both SYNs; only socket b never
    receives a's SYN. a stays in SYN_SENT, b's SYN reaches a -> a answers SYN/ACK
    (simultaneous open on a's side), b completes with an ACK."""
    a = sock(f, socket.SOCK_STREAM, TCP_CLIENT, addr)
    b = sock(f, socket.SOCK_STREAM, SIMOPEN_PEER, addr)
    a.setblocking(False)
    b.setblocking(False)
    log("a connect", errno.errorcode.get(a.connect_ex((addr, SIMOPEN_PEER))))
    time.sleep(STEP)
    log("b connect", errno.errorcode.get(b.connect_ex((addr, TCP_CLIENT))))
    _, w, _ = select.select([], [a, b], [], 3.0)
    for name, s in (("a", a), ("b", b)):
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        log(f"{name}: SO_ERROR={errno.errorcode.get(err, err)} writable={s in w}")
        s.getpeername()  # raises if not connected
    a.setblocking(True); b.setblocking(True)
    time.sleep(STEP)
    a.sendall(PAYLOAD)
    assert recv_exact(b, 100) == PAYLOAD
    time.sleep(STEP)
    log("a close (FIN)")
    a.close()
    assert b.recv(1) == b""
    log("b close (FIN)")
    b.close()
    time.sleep(STEP)


def udp_pair(f, addr):
    srv = sock(f, socket.SOCK_DGRAM, SERVER, addr)
    cli = sock(f, socket.SOCK_DGRAM, UDP_CLIENT, addr)
    return srv, cli


def udp_exchange(srv, cli, addr, i):
    cli.sendto(b"req%d" % i + PAYLOAD, (addr, SERVER))
    data, peer = srv.recvfrom(2048)
    srv.sendto(b"rsp%d" % i + PAYLOAD, peer)
    cli.recvfrom(2048)


def udp_oneway(f, addr):
    srv, cli = udp_pair(f, addr)
    cli.sendto(b"oneway" + PAYLOAD, (addr, SERVER))
    srv.recvfrom(2048)  # received, never answered
    time.sleep(STEP)


def udp_reqresp(f, addr):
    srv, cli = udp_pair(f, addr)
    udp_exchange(srv, cli, addr, 1)
    time.sleep(0.05)
    udp_exchange(srv, cli, addr, 2)
    time.sleep(STEP)


def udp_stream(f, addr):
    srv, cli = udp_pair(f, addr)
    t0 = time.monotonic()
    udp_exchange(srv, cli, addr, 1)
    time.sleep(0.05)
    udp_exchange(srv, cli, addr, 2)
    time.sleep(max(0.0, 2.5 - (time.monotonic() - t0)))
    log("third exchange, 2.5 s after the first")
    udp_exchange(srv, cli, addr, 3)
    time.sleep(STEP)


def udp_unreachable(f, addr):
    cli = sock(f, socket.SOCK_DGRAM, UDP_CLOSED_CLIENT, addr)
    cli.connect((addr, CLOSED))  # connected, so the ICMP error is reported
    cli.send(b"unreach" + PAYLOAD)
    cli.settimeout(1.0)
    try:
        cli.recv(2048)
        raise SystemExit("unexpected answer")
    except ConnectionRefusedError:
        log("ECONNREFUSED (ICMP port unreachable) as expected")
    time.sleep(STEP)


def mixed_server(f, addr):
    """Runs in ns2: serve one TCP connection and one UDP request/response."""
    tsrv = tcp_listener(f, addr)
    usrv = sock(f, socket.SOCK_DGRAM, SERVER, addr)
    print("ready", flush=True)
    conn, _ = tsrv.accept()
    assert recv_exact(conn, 100) == PAYLOAD
    time.sleep(STEP)
    conn.sendall(PAYLOAD)
    assert conn.recv(1) == b""
    conn.close()
    tsrv.close()
    data, peer = usrv.recvfrom(2048)
    usrv.sendto(b"rsp" + PAYLOAD, peer)
    usrv.close()


def mixed_client(f, addr):
    """Runs in ns1: TCP connect/data/client-first close, then one UDP req/resp."""
    local = "10.200.0.1" if f == "4" else "fd00:200::1"
    cli = sock(f, socket.SOCK_STREAM, TCP_CLIENT, local)
    cli.connect((addr, SERVER))
    time.sleep(STEP)
    cli.sendall(PAYLOAD)
    assert recv_exact(cli, 100) == PAYLOAD
    time.sleep(STEP)
    cli.close()
    time.sleep(0.3)
    u = sock(f, socket.SOCK_DGRAM, UDP_CLIENT, local)
    u.sendto(b"req" + PAYLOAD, (addr, SERVER))
    u.settimeout(2.0)
    u.recvfrom(2048)
    u.close()
    time.sleep(STEP)


SCENARIOS = {
    "tcp-close": tcp_close,
    "tcp-rst": tcp_rst,
    "tcp-refused": tcp_refused,
    "tcp-reopen": tcp_reopen,
    "tcp-simultaneous-open": tcp_simultaneous_open,
    "tcp-simultaneous-open-forced": tcp_simultaneous_open_forced,
    "udp-oneway": udp_oneway,
    "udp-reqresp": udp_reqresp,
    "udp-stream": udp_stream,
    "udp-unreachable": udp_unreachable,
    "mixed-server": mixed_server,
    "mixed-client": mixed_client,
}


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in SCENARIOS or sys.argv[2] not in ("4", "6"):
        raise SystemExit(__doc__)
    f = sys.argv[2]
    addr = sys.argv[3] if len(sys.argv) > 3 else ("127.0.0.1" if f == "4" else "::1")
    log("start", sys.argv[1], f, addr)
    SCENARIOS[sys.argv[1]](f, addr)
    log("done")


if __name__ == "__main__":
    main()
