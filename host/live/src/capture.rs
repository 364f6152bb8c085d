//! Packets and kernel events, observed live in a network namespace (Linux only).
//!
//! A conformance check needs the packets the kernel's conntrack saw, with times on the kernel's
//! clock, and the events it raised for them. [`PacketSocket`] is a small AF_PACKET capturer (no
//! libpcap, no tcpdump: it also works where tcpdump cannot drop privileges, see "Capturing
//! without tcpdump" in `host/docs/kernel-behaviour.md`): a `SOCK_DGRAM` packet socket bound to
//! one interface, so the kernel strips the link header and hands over the IP packet, with
//! `SO_TIMESTAMPNS` receive times (CLOCK_REALTIME, as `CTA_TIMESTAMP_EVENT`). On loopback every
//! packet passes the tap twice, once outgoing and once incoming; conntrack handles it once, so
//! the outgoing copy is skipped — libpcap does the same. On a veth both directions are real and
//! both are kept.
//!
//! [`Observer`] runs a capturer and a lossless event listener on two threads and sends both
//! streams into one channel as they come, for `ctwasm shadow`; [`Observer::finish`] stops them
//! and returns everything, for the conformance tests.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ctwasm_host::capture::{CapturedPacket, LinkDirection};

use crate::ctnetlink::{CtnlError, EventSocket, KernelMessage, Received, SubscribeOptions};
use crate::netns::in_netns;
use crate::sys::{self, ETH_P_IP, ETH_P_IPV6};

const PACKET_OUTGOING: u8 = 4;
const ARPHRD_LOOPBACK: u16 = 772;
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

impl PacketSocket {
    /// Opens a capturer on `ifname` inside `netns` (or here), with a receive buffer of `rcvbuf`
    /// bytes (`SO_RCVBUFFORCE`; the kernel doubles it).
    pub fn open(netns: Option<&str>, ifname: &str, rcvbuf: usize) -> io::Result<PacketSocket> {
        let ifname = ifname.to_string();
        in_netns(netns, move || Self::open_here(&ifname, rcvbuf)).map_err(io::Error::other)?
    }

    fn open_here(ifname: &str, rcvbuf: usize) -> io::Result<PacketSocket> {
        // Protocol 0 first: the socket receives nothing until it is bound to the interface, so
        // no packet of another interface slips in between.
        let (fd, ifindex) = sys::open_packet_socket(ifname)?;
        let set = |name, value, what: &str| {
            sys::setsockopt_int(fd.as_fd(), libc::SOL_SOCKET, name, value)
                .map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))
        };
        set(sys::SO_RCVBUFFORCE, sys::int_size(rcvbuf), "SO_RCVBUFFORCE")?;
        set(libc::SO_TIMESTAMPNS, 1, "SO_TIMESTAMPNS")?;
        sys::bind_packet_socket(fd.as_fd(), ifindex)?;
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
            match sys::poll_readable(self.fd.as_fd(), Some(left)) {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Some(p) = self.read_one()? {
                return Ok(Some(p));
            }
        }
    }

    /// Packets the kernel dropped because the socket's buffer was full: a capture with drops
    /// is not what conntrack saw.
    pub fn drops(&self) -> io::Result<u32> {
        sys::socket_drops(self.fd.as_fd())
    }

    fn read_one(&mut self) -> io::Result<Option<CapturedPacket>> {
        let Some(meta) = sys::recv_packet(self.fd.as_fd(), &mut self.buf)? else {
            return Ok(None);
        };
        if meta.hatype == ARPHRD_LOOPBACK && meta.pkttype == PACKET_OUTGOING {
            self.outgoing_copies += 1;
            return Ok(None);
        }
        if meta.protocol != ETH_P_IP && meta.protocol != ETH_P_IPV6 {
            self.non_ip += 1;
            return Ok(None);
        }
        Ok(Some(CapturedPacket {
            ts_ns: meta.ts_ns.unwrap_or_else(wall_ns),
            l3: self.buf[..meta.len].to_vec(),
            // Loopback's kept copy counts as sent: conntrack met it on its way out.
            direction: LinkDirection::from_linux(meta.pkttype, meta.hatype),
        }))
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

/// The event listener's buffer: 16 MiB gave zero loss at 2k flows (see "Timing and parallel
/// runs" in `host/docs/kernel-behaviour.md`).
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
                match socket.drops() {
                    Ok(0) => {}
                    Ok(n) => {
                        let _ = tx.send(Observed::Trouble(format!(
                            "the capturer dropped {n} packets (its buffer was full)"
                        )));
                    }
                    Err(e) => {
                        let _ = tx.send(Observed::Trouble(format!("capture drops: {e}")));
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
