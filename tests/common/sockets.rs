//! Socket calls std has no method for: a reset close (`SO_LINGER` 0) and binding a chosen
//! local address before connecting. Linux only, as the live tests that use them.

use std::net::{SocketAddr, TcpStream};

/// `SO_LINGER` 0: `close` sends RST.
pub fn abort(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the pointer and length describe `l`.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    drop(s);
}

/// A TCP connection from a fixed local port (for reusing a 4-tuple).
pub fn connect_from(local: SocketAddr, remote: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let af = if local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain system calls on a descriptor we own; the sockaddr buffers are built below
    // and outlive the calls.
    unsafe {
        let fd = libc::socket(af, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            4,
        );
        let stream = TcpStream::from_raw_fd(fd);
        let (l, ll) = sockaddr(local);
        if libc::bind(fd, (&l as *const libc::sockaddr_storage).cast(), ll) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (r, rl) = sockaddr(remote);
        if libc::connect(fd, (&r as *const libc::sockaddr_storage).cast(), rl) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// A UDP-Lite socket bound to `local` (std has UDP sockets only). std's `UdpSocket` drives it:
/// `send_to` and `recv_from` are the same calls on any datagram socket.
pub fn udplite_bind(local: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use std::os::fd::FromRawFd;
    let af = if local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain system calls on a descriptor we own, wrapped at once so it is closed on
    // every path; the sockaddr buffer outlives the call.
    unsafe {
        let fd = libc::socket(
            af,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_UDPLITE,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let socket = std::net::UdpSocket::from_raw_fd(fd);
        let (l, ll) = sockaddr(local);
        if libc::bind(fd, (&l as *const libc::sockaddr_storage).cast(), ll) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(socket)
    }
}

pub fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage; the casts write within its size.
    unsafe {
        let mut s: libc::sockaddr_storage = std::mem::zeroed();
        match a {
            SocketAddr::V4(v4) => {
                let p = (&mut s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                (*p).sin_family = libc::AF_INET as u16;
                (*p).sin_port = v4.port().to_be();
                (*p).sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                (
                    s,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
            SocketAddr::V6(v6) => {
                let p = (&mut s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                (*p).sin6_family = libc::AF_INET6 as u16;
                (*p).sin6_port = v6.port().to_be();
                (*p).sin6_addr.s6_addr = v6.ip().octets();
                (
                    s,
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    }
}

/// A raw IP socket of one protocol (`SOCK_RAW`, the kernel writes the IP header): it sends
/// hand-built layer-4 bytes, and its mere presence makes the local stack take packets of that
/// protocol quietly instead of answering "protocol unreachable" (this kernel has no GRE or SCTP
/// endpoint of its own).
pub struct RawSocket {
    fd: std::os::fd::OwnedFd,
}

impl RawSocket {
    /// A raw socket of protocol `proto` for the family of `local`, bound to that address.
    pub fn bind(local: std::net::IpAddr, proto: i32) -> std::io::Result<RawSocket> {
        use std::os::fd::FromRawFd;
        let af = if local.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain system calls; the descriptor is owned at once, so it is closed on every
        // path, and the sockaddr buffer outlives the call.
        unsafe {
            let fd = libc::socket(af, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            let (l, ll) = sockaddr(SocketAddr::new(local, 0));
            if libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&l as *const libc::sockaddr_storage).cast(),
                ll,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(RawSocket { fd })
        }
    }

    /// Sends `l4` to `to` in one IP packet.
    pub fn send_to(&self, l4: &[u8], to: std::net::IpAddr) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let (r, rl) = sockaddr(SocketAddr::new(to, 0));
        // SAFETY: the buffer and the sockaddr describe live memory of the given lengths.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                l4.as_ptr().cast(),
                l4.len(),
                0,
                (&r as *const libc::sockaddr_storage).cast(),
                rl,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Turns TCP keepalives on: the first probe after `idle` seconds without traffic, then one
/// every `interval` seconds.
pub fn keepalive(s: &TcpStream, idle: i32, interval: i32) {
    set_int_option(s, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set_int_option(s, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle);
    set_int_option(s, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, interval);
}

/// `setsockopt` of an `int` on any socket (IP_TTL, IPV6_UNICAST_HOPS, IP_MTU_DISCOVER, ...).
pub fn set_int_option(s: &impl std::os::fd::AsRawFd, level: i32, name: i32, value: i32) {
    // SAFETY: the pointer and length describe `value`, a live `c_int`.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "socket option {level}/{name}: {}",
        std::io::Error::last_os_error()
    );
}
