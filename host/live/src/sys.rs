//! Every system call the crate makes that `std` and `netlink-sys` have no safe call for.
//!
//! This is the only module allowed `unsafe`. Each function wraps one call (or one `recvmsg`
//! and the walk of its control messages) behind a safe signature: the pointers handed to the
//! kernel describe memory the function owns or borrows for the call's duration, and every
//! descriptor is borrowed ([`BorrowedFd`]) or returned owned ([`OwnedFd`]). The rest of the
//! crate reads like ordinary Rust.
//!
//! The calls, and who needs them:
//!
//! * `setsockopt`/`getsockopt` of an `int`: `SO_RCVBUFFORCE` on the event socket and the packet
//!   capturer, `SO_SNDBUFFORCE` on the socket listener, `SO_TIMESTAMPNS`;
//! * `getsockopt(SO_MEMINFO)`: a socket's drop counter;
//! * `poll` with a timeout, which neither `std` nor `netlink-sys` offers;
//! * `ioctl(TIOCOUTQ)`: the bytes a Unix datagram socket still charges its sender;
//! * `setns(CLONE_NEWNET)`: entering a network namespace;
//! * `if_nametoindex`, `socket(AF_PACKET)`, `bind` and `recvmsg` for the packet capturer;
//! * `ioctl(TUNSETIFF)`: attaching to a TUN device, for the link emulator;
//! * `sched_getaffinity`/`sched_setaffinity`: keeping a link and its traffic on one CPU.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

pub use libc::c_int;

/// `SO_RCVBUFFORCE` (asm-generic, as on x86 and arm): `SO_RCVBUF` without the `rmem_max` cap,
/// for CAP_NET_ADMIN. The kernel still doubles the value and enforces `SOCK_MIN_RCVBUF`.
pub const SO_RCVBUFFORCE: c_int = 33;
/// `SO_MEMINFO` (asm-generic): the socket's memory figures, `SK_MEMINFO_DROPS` among them.
pub const SO_MEMINFO: c_int = 55;
/// Number of `u32`s `SO_MEMINFO` fills (`SK_MEMINFO_VARS`).
const SK_MEMINFO_VARS: usize = 9;

/// `ETH_P_ALL`: every protocol, for a capturer.
pub const ETH_P_ALL: u16 = 0x0003;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

/// The last OS error, with the operation that failed in front of it.
pub fn last_err(op: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{op}: {e}"))
}

/// Saturates a size to what an `int` socket option can carry.
pub fn int_size(bytes: usize) -> c_int {
    c_int::try_from(bytes).unwrap_or(c_int::MAX)
}

/// `setsockopt(fd, level, name, &value, sizeof(int))`.
pub fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    value: c_int,
) -> io::Result<()> {
    // SAFETY: the pointer and length describe `value`, a live `c_int` for the whole call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const c_int).cast(),
            std::mem::size_of::<c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `getsockopt(fd, level, name)` of an `int`.
pub fn getsockopt_int(fd: BorrowedFd<'_>, level: c_int, name: c_int) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: the pointer and length describe `value`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The socket's drop counter (`sk_drops`, from `SO_MEMINFO`): packets or broadcasts the kernel
/// could not queue for it.
pub fn socket_drops(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: the pointer and length describe `info`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info[libc::SK_MEMINFO_DROPS as usize])
}

/// Waits until `fd` is readable: `Ok(true)` when it is, `Ok(false)` when `timeout` passed
/// (`None` waits for ever). A signal ends the wait with an error of kind
/// [`io::ErrorKind::Interrupted`]; `poll` is never restarted after one.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Rounded up: a wait of 0.4 ms must not become a poll that returns at once.
    let ms = match timeout {
        None => -1,
        Some(t) => c_int::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(c_int::MAX),
    };
    // SAFETY: one valid pollfd, which outlives the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc > 0)
}

/// The bytes still queued on a socket's send side (`ioctl(TIOCOUTQ)`, `SIOCOUTQ`): for a Unix
/// datagram socket, what its peers have not read yet.
pub fn send_queue_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: c_int = 0;
    // SAFETY: TIOCOUTQ writes one `c_int` through the pointer, which describes `n`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// `TUNSETIFF` (`_IOW('T', 202, int)`), which the libc crate does not name.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens `/dev/net/tun` and attaches it to the TUN device `name` of the calling thread's network
/// namespace (created if absent; it disappears with its last descriptor unless it was made
/// persistent), without packet information: each `read` gives one IP packet, each `write` takes
/// one.
pub fn open_tun(name: &str) -> io::Result<File> {
    let file = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{name}` is not an interface name"),
        ));
    }
    // SAFETY: all-zero is a valid `ifreq`.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: `req` is a live `ifreq` for the whole call, as TUNSETIFF reads and writes one;
    // the descriptor is owned by `file`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
    if rc != 0 {
        return Err(last_err(&format!("TUNSETIFF {name}")));
    }
    Ok(file)
}

/// The CPUs the calling thread may run on.
pub fn thread_affinity() -> io::Result<Vec<usize>> {
    // SAFETY: all-zero is a valid (empty) `cpu_set_t`; the call fills at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(last_err("sched_getaffinity"));
    }
    // SAFETY: `CPU_ISSET` reads `set` within its size for every index below `CPU_SETSIZE`.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Lets the calling thread (and the threads and processes it starts afterwards) run only on
/// `cpus`.
pub fn set_thread_affinity(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: all-zero is a valid (empty) `cpu_set_t`; `CPU_SET` writes within its size for
    // indices below `CPU_SETSIZE`, which the filter keeps to.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a live `cpu_set_t` of the size given.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(last_err("sched_setaffinity"));
    }
    Ok(())
}

/// Moves the calling thread into the network namespace `file` refers to.
pub fn enter_netns(file: &File) -> io::Result<()> {
    // SAFETY: plain system call on a descriptor `file` owns for the call's duration; it changes
    // only the calling thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An AF_PACKET `SOCK_DGRAM` socket, unbound, with protocol 0 (so it receives nothing until it
/// is bound), and the index of the interface `ifname`. The kernel adds and strips the link
/// header: what goes in and out is the IP packet.
pub fn open_packet_socket(ifname: &str) -> io::Result<(OwnedFd, i32)> {
    let name = CString::new(ifname).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated string that outlives the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(last_err(&format!("interface `{ifname}`")));
    }
    // SAFETY: plain system call.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(last_err("socket(AF_PACKET)"));
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    Ok((fd, ifindex as i32))
}

/// A `sockaddr_ll` for `ifindex` and link protocol `protocol` (host order), everything else
/// zero (for loopback, an all-zero destination MAC is its own address).
pub fn packet_address(ifindex: i32, protocol: u16) -> libc::sockaddr_ll {
    // SAFETY: all-zero is a valid sockaddr_ll (plain integers and arrays).
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol.to_be();
    addr.sll_ifindex = ifindex;
    addr
}

/// Binds a packet socket to interface `ifindex` for every protocol.
pub fn bind_packet_socket(fd: BorrowedFd<'_>, ifindex: i32) -> io::Result<()> {
    let addr = packet_address(ifindex, ETH_P_ALL);
    // SAFETY: the pointer and length describe `addr`, which outlives the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_err("bind(AF_PACKET)"))
    }
}

/// What `recvmsg` on a packet socket said about one frame.
#[derive(Clone, Copy, Debug)]
pub struct PacketMeta {
    /// Bytes received into the buffer (at most its length).
    pub len: usize,
    /// `sll_hatype`: the link type (`ARPHRD_*`).
    pub hatype: u16,
    /// `sll_pkttype`: host, broadcast, outgoing, ...
    pub pkttype: u8,
    /// `sll_protocol`, host order.
    pub protocol: u16,
    /// The `SO_TIMESTAMPNS` receive time, ns since the epoch, when the kernel attached one.
    pub ts_ns: Option<u64>,
}

/// Reads one frame without waiting; `Ok(None)` when none is queued (or a signal came first).
pub fn recv_packet(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<PacketMeta>> {
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: every pointer in `msg` describes a live buffer of the stated length.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    let mut ts_ns = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, within
    // `msg_controllen`; the timestamp is read unaligned from inside it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                ts_ns = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Some(PacketMeta {
        len: (n as usize).min(buf.len()),
        hatype: from.sll_hatype,
        pkttype: from.sll_pkttype,
        protocol: u16::from_be(from.sll_protocol),
        ts_ns,
    }))
}
