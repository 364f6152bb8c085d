//! Packets and kernel events, observed live in a network namespace (Linux only).
//!
//! A conformance check needs the packets the kernel's conntrack saw, with times on the kernel's
//! clock, and the events it raised for them. [`PacketSocket`] is a small AF_PACKET capturer (no
//! libpcap, no tcpdump: it also works where tcpdump cannot drop privileges, kernel-oracle §10):
//! a `SOCK_DGRAM` packet socket bound to one interface, so the kernel strips the link header and
//! hands over the IP packet, with `SO_TIMESTAMPNS` receive times (CLOCK_REALTIME, as
//! `CTA_TIMESTAMP_EVENT`). On loopback every packet passes the tap twice, once outgoing and once
//! incoming; conntrack handles it once, so the outgoing copy is skipped (§3.1) — libpcap does the
//! same. On a veth both directions are real and both are kept.
//!
//! [`Observer`] runs a capturer and a lossless event listener on two threads and sends both
//! streams into one channel as they come, for `ctwasm shadow`; [`Observer::finish`] stops them
//! and returns everything, for the conformance harness.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::capture::CapturedPacket;
use crate::ctnetlink::{
    CtnlError, EventSocket, KernelMessage, Received, SubscribeOptions, in_netns,
};

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const PACKET_OUTGOING: u8 = 4;
const ARPHRD_LOOPBACK: u16 = 772;
const SO_RCVBUFFORCE: libc::c_int = 33;
/// Loopback's MTU is 64 KiB and GSO packets reach the tap whole.
const FRAME_BUF: usize = 256 * 1024;

/// An AF_PACKET socket on one interface.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    buf: Vec<u8>,
    /// Frames that were not IPv4/IPv6 (ARP and the like).
    pub non_ip: u64,
    /// Loopback's outgoing copies, skipped.
    pub outgoing_copies: u64,
}

fn last_err(op: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{op}: {e}"))
}

impl PacketSocket {
    /// Opens a capturer on `ifname` inside `netns` (or here), with a receive buffer of `rcvbuf`
    /// bytes (`SO_RCVBUFFORCE`; the kernel doubles it).
    pub fn open(netns: Option<&str>, ifname: &str, rcvbuf: usize) -> io::Result<PacketSocket> {
        let ifname = ifname.to_string();
        in_netns(netns, move || Self::open_here(&ifname, rcvbuf)).map_err(io::Error::other)?
    }

    fn open_here(ifname: &str, rcvbuf: usize) -> io::Result<PacketSocket> {
        let name = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
        // SAFETY: a NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(last_err(&format!("interface `{ifname}`")));
        }
        // Protocol 0 first: the socket receives nothing until it is bound to the interface, so
        // no packet of another interface slips in between.
        // SAFETY: plain system call.
        let raw =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(last_err("socket(AF_PACKET)"));
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let set = |level, name, value: libc::c_int, what: &str| -> io::Result<()> {
            // SAFETY: the pointer and length describe a live c_int.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    level,
                    name,
                    (&value as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 { Ok(()) } else { Err(last_err(what)) }
        };
        let size = libc::c_int::try_from(rcvbuf).unwrap_or(libc::c_int::MAX);
        set(libc::SOL_SOCKET, SO_RCVBUFFORCE, size, "SO_RCVBUFFORCE")?;
        set(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1, "SO_TIMESTAMPNS")?;
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: the pointer and length describe `addr`.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(last_err("bind(AF_PACKET)"));
        }
        Ok(PacketSocket {
            fd,
            buf: vec![0; FRAME_BUF],
            non_ip: 0,
            outgoing_copies: 0,
        })
    }

    /// The next IP packet, waiting at most `timeout`; `None` when nothing came.
    pub fn recv(&mut self, timeout: Duration) -> io::Result<Option<CapturedPacket>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if rc == 0 {
                return Ok(None);
            }
            if let Some(p) = self.read_one()? {
                return Ok(Some(p));
            }
        }
    }

    fn read_one(&mut self) -> io::Result<Option<CapturedPacket>> {
        // SAFETY: all-zero is a valid sockaddr_ll and msghdr.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: self.buf.as_mut_ptr().cast(),
            iov_len: self.buf.len(),
        };
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: every pointer in `msg` describes a live buffer of the stated length.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        if from.sll_hatype == ARPHRD_LOOPBACK && from.sll_pkttype == PACKET_OUTGOING {
            self.outgoing_copies += 1;
            return Ok(None);
        }
        let proto = u16::from_be(from.sll_protocol);
        if proto != ETH_P_IP && proto != ETH_P_IPV6 {
            self.non_ip += 1;
            return Ok(None);
        }
        let mut ts_ns = None;
        // SAFETY: the CMSG macros walk the control buffer the kernel filled, within
        // `msg_controllen`.
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
        let ts_ns = ts_ns.unwrap_or_else(wall_ns);
        let len = (n as usize).min(self.buf.len());
        Ok(Some(CapturedPacket {
            ts_ns,
            l3: self.buf[..len].to_vec(),
        }))
    }
}

/// Sends hand-built IP packets into an interface as if they had arrived on it: an AF_PACKET
/// `SOCK_DGRAM` socket, so the kernel adds the link header. On loopback the packet is looped
/// back at once and enters the stack through PREROUTING: conntrack handles it exactly once, as
/// it does a packet from a real peer, and the capturer sees its incoming copy. Conformance
/// scenarios use it to drive both ends of a TCP connection with segments no socket would send
/// (out-of-window data, retransmissions, wrong acknowledgements).
#[derive(Debug)]
pub struct PacketInjector {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketInjector {
    /// Opens an injector on `ifname` inside `netns` (or here).
    pub fn open(netns: Option<&str>, ifname: &str) -> io::Result<PacketInjector> {
        let ifname = ifname.to_string();
        in_netns(netns, move || {
            let name = std::ffi::CString::new(ifname.as_str()).map_err(io::Error::other)?;
            // SAFETY: a NUL-terminated string that outlives the call.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            if ifindex == 0 {
                return Err(last_err(&format!("interface `{ifname}`")));
            }
            // Protocol 0: the socket only sends, it never receives.
            // SAFETY: plain system call.
            let raw =
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if raw < 0 {
                return Err(last_err("socket(AF_PACKET)"));
            }
            Ok(PacketInjector {
                // SAFETY: `raw` is a fresh descriptor we own.
                fd: unsafe { OwnedFd::from_raw_fd(raw) },
                ifindex: ifindex as i32,
            })
        })
        .map_err(io::Error::other)?
    }

    /// Sends one IPv4 or IPv6 packet (the version nibble decides the link protocol).
    pub fn send(&self, l3: &[u8]) -> io::Result<()> {
        let proto = match l3.first().map(|b| b >> 4) {
            Some(4) => ETH_P_IP,
            Some(6) => ETH_P_IPV6,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not an IPv4 or IPv6 packet",
                ));
            }
        };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto.to_be();
        addr.sll_ifindex = self.ifindex;
        // Destination MAC all zeros: loopback's own address.
        addr.sll_halen = 6;
        // SAFETY: the buffer and the address describe live memory of the stated lengths.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                l3.as_ptr().cast(),
                l3.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(last_err("sendto(AF_PACKET)"));
        }
        if n as usize != l3.len() {
            return Err(io::Error::other(format!(
                "sendto(AF_PACKET): {n} of {} bytes sent",
                l3.len()
            )));
        }
        Ok(())
    }
}

fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What an [`Observer`] saw, in arrival order per source.
#[derive(Debug)]
pub enum Observed {
    /// A packet, tagged with the index of the capturer that saw it.
    Packet(usize, CapturedPacket),
    /// A kernel event, tagged with the index of the namespace whose listener read it.
    Event(usize, KernelMessage),
    /// A source failed, or the event listener overran (events were lost: the comparison is void).
    Trouble(String),
}

/// Capturers and event listeners running on their own threads.
#[derive(Debug)]
pub struct Observer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    rx: mpsc::Receiver<Observed>,
}

/// The event listener's buffer: 16 MiB gave zero loss at 2k flows (kernel-oracle §11.5).
pub const EVENT_RCVBUF: usize = 16 << 20;
const CAPTURE_RCVBUF: usize = 32 << 20;
const POLL: Duration = Duration::from_millis(50);

impl Observer {
    /// Subscribes a listener in each of `event_netns` and opens a capturer on each
    /// `(netns, interface)`; both are ready when this returns, so traffic may start.
    pub fn start(event_netns: &[&str], captures: &[(&str, &str)]) -> Result<Observer, CtnlError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let mut threads = Vec::new();
        for (i, ns) in event_netns.iter().enumerate() {
            let mut socket = EventSocket::subscribe(&SubscribeOptions {
                rcvbuf: Some(EVENT_RCVBUF),
                reliable: true,
                netns: Some(ns.to_string()),
                ..SubscribeOptions::default()
            })?;
            let (tx, stop) = (tx.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                loop {
                    let stopping = stop.load(Ordering::SeqCst);
                    match socket.recv(Some(POLL)) {
                        Ok(Received::Messages(ms)) => {
                            for m in ms {
                                let _ = tx.send(Observed::Event(i, m));
                            }
                        }
                        Ok(Received::Overrun) => {
                            let _ = tx.send(Observed::Trouble("event listener overran".into()));
                        }
                        Ok(Received::TimedOut) if stopping => break,
                        Ok(Received::TimedOut) => {}
                        Ok(Received::Interrupted) => break,
                        Err(e) => {
                            let _ = tx.send(Observed::Trouble(format!("events: {e}")));
                            break;
                        }
                    }
                }
            }));
        }
        for (i, (ns, ifname)) in captures.iter().enumerate() {
            let mut socket =
                PacketSocket::open(Some(ns), ifname, CAPTURE_RCVBUF).map_err(|source| {
                    CtnlError::Socket {
                        op: "packet capture",
                        source,
                    }
                })?;
            let (tx, stop) = (tx.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                loop {
                    let stopping = stop.load(Ordering::SeqCst);
                    match socket.recv(POLL) {
                        Ok(Some(p)) => {
                            let _ = tx.send(Observed::Packet(i, p));
                        }
                        Ok(None) if stopping => break,
                        Ok(None) => {}
                        Err(e) => {
                            let _ = tx.send(Observed::Trouble(format!("capture: {e}")));
                            break;
                        }
                    }
                }
            }));
        }
        Ok(Observer { stop, threads, rx })
    }

    /// What has arrived so far (live use).
    pub fn receiver(&self) -> &mpsc::Receiver<Observed> {
        &self.rx
    }

    /// Stops the threads once their sources have been quiet for a moment and returns what is
    /// left in the channel.
    pub fn finish(self) -> Vec<Observed> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        self.rx.try_iter().collect()
    }
}
