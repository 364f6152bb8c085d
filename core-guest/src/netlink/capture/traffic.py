#!/usr/bin/env python3
# Loopback-only traffic: one TCP connect/send/close, one UDP request/reply, for argv[1] in {4,6}.
import socket, sys, threading
fam, host = (socket.AF_INET, "127.0.0.1") if sys.argv[1] == "4" else (socket.AF_INET6, "::1")
srv = socket.socket(fam, socket.SOCK_STREAM); srv.bind((host, 0)); srv.listen(1)
port = srv.getsockname()[1]
def serve():
    c, _ = srv.accept(); d = c.recv(100); c.sendall(d); c.close()
t = threading.Thread(target=serve); t.start()
c = socket.create_connection((host, port)); c.sendall(b"hello"); c.recv(100); c.close(); t.join(); srv.close()
u = socket.socket(fam, socket.SOCK_DGRAM); u.bind((host, 0))
v = socket.socket(fam, socket.SOCK_DGRAM); v.sendto(b"ping", u.getsockname())
d, a = u.recvfrom(100); u.sendto(b"pong", a); v.recvfrom(100); u.close(); v.close()
