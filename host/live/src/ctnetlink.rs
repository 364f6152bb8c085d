//! The live kernel's conntrack over a real `NETLINK_NETFILTER` socket (Linux only).
//!
//! Everything else in this crate models the kernel; this module talks to it. It exists so an
//! operator can watch, list, flush and count the kernel's own connections with the same codec and
//! the same output as the engine's, and so the tests can hold the engine's semantics — above all
//! the seed's promise that a reliable listener gets every DESTROY exactly once — against the
//! real thing.
//!
//! Two kinds of socket, never mixed:
//!
//! * [`EventSocket`] subscribes to the conntrack multicast groups (NEW, UPDATE, DESTROY) with the
//!   receive buffer, `NETLINK_BROADCAST_ERROR` and `NETLINK_NO_ENOBUFS` the caller asked for. A
//!   buffer overrun shows up as `recv` failing with `ENOBUFS` before the queued data; it is
//!   counted and reported as [`Received::Overrun`], and the socket stays usable (the caller may
//!   resync by a dump, as conntrackd does, see [`EventSocket::resync`]).
//! * [`Conntrack`] is a request socket, subscribed to nothing, for dumps, get, delete, flush,
//!   the dying list and the statistics. Keeping requests off the event socket means a dump reply
//!   can never be taken for an event, and a small event buffer never throttles a dump.
//!
//! # Network namespaces
//!
//! A netlink socket belongs to the network namespace of the thread that created it, for life.
//! So `--netns NAME` opens its sockets through [`in_netns`] (see [`crate::netns`]); a socket
//! opened that way keeps talking to the namespace after the thread that opened it is gone.
//!
//! # Why `libc` beside `netlink-sys`
//!
//! `netlink-sys` opens, binds and reads the socket and sets the netlink options it knows
//! (`NETLINK_BROADCAST_ERROR`, `NETLINK_NO_ENOBUFS`, memberships). It has no call for
//! `SO_RCVBUFFORCE` (its `set_rx_buf_sz` is `SO_RCVBUF`, capped by `rmem_max`), none for
//! `SO_MEMINFO` (the socket's drop counter), no `poll` with a timeout, and nothing for `setns`;
//! those are raw system calls in [`crate::sys`].
//!
//! # Hostile input
//!
//! Only messages whose sender is the kernel (netlink port 0) are read; anything else that reaches
//! the socket is counted and dropped. Every datagram goes through the codec
//! ([`CtMessage::parse`]), which returns typed errors for broken bytes, so nothing here panics on
//! what arrives.

use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ctwasm_core::batch::EventFrame;
use ctwasm_core::event::{EventBits, MessageKind};
use ctwasm_core::netlink::consts::*;
use ctwasm_core::netlink::{
    CtAttr, CtMessage, DecodeError, ExpMessage, NlHeader, RawAttr, request, tuple_attrs,
};
use ctwasm_core::tuple::Tuple;
use ctwasm_host::filter::Filter;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER as PROTO_NETFILTER};

pub use crate::netns::{in_netns, netns_path};
use crate::sys;

/// The receive buffer for request replies: a dump skb is at most 32 KiB plus headers, so one
/// `recv` of this size never truncates.
const REQUEST_BUF: usize = 64 * 1024;
/// One event message is a few hundred bytes; one datagram carries one message.
const EVENT_BUF: usize = 16 * 1024;

/// What went wrong talking to the kernel.
#[derive(Debug)]
#[non_exhaustive]
pub enum CtnlError {
    /// `/run/netns/NAME` could not be opened or entered.
    Netns { name: String, source: io::Error },
    /// A socket call failed (`op` names it).
    Socket { op: &'static str, source: io::Error },
    /// The kernel answered a request with an error (a positive errno: 2 = ENOENT, 1 = EPERM).
    Kernel { request: &'static str, errno: i32 },
    /// A reply did not decode.
    Decode {
        request: &'static str,
        error: DecodeError,
    },
    /// A reply datagram was larger than the receive buffer.
    Truncated { len: usize },
    /// The kernel closed a request without the expected reply.
    NoReply { request: &'static str },
    /// The thread that entered the namespace panicked (a bug in the closure given to it).
    ThreadPanicked,
}

/// The causes that `source` returns (the OS error, the decode error) are not repeated here:
/// a report that prints the chain (`{:#}`) shows each once.
impl fmt::Display for CtnlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtnlError::Netns { name, .. } => {
                write!(f, "cannot enter network namespace `{name}`")
            }
            CtnlError::Socket { op, .. } => write!(f, "netlink {op}"),
            CtnlError::Kernel { request, errno } => write!(
                f,
                "ctnetlink {request}: {}",
                io::Error::from_raw_os_error(*errno)
            ),
            CtnlError::Decode { request, .. } => {
                write!(f, "ctnetlink {request}: reply does not decode")
            }
            CtnlError::Truncated { len } => {
                write!(
                    f,
                    "netlink datagram of {len} bytes is larger than the receive buffer"
                )
            }
            CtnlError::NoReply { request } => write!(f, "ctnetlink {request}: no reply"),
            CtnlError::ThreadPanicked => write!(f, "the namespace thread panicked"),
        }
    }
}

impl std::error::Error for CtnlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CtnlError::Netns { source, .. } | CtnlError::Socket { source, .. } => Some(source),
            CtnlError::Decode { error, .. } => Some(error),
            _ => None,
        }
    }
}

fn sock_err(op: &'static str) -> impl FnOnce(io::Error) -> CtnlError {
    move |source| CtnlError::Socket { op, source }
}

fn open_socket(netns: Option<&str>) -> Result<Socket, CtnlError> {
    in_netns(netns, || Socket::new(PROTO_NETFILTER))?.map_err(sock_err("socket"))
}

/// Waits until the socket is readable: `Ok(true)` when it is, `Ok(false)` on timeout or when a
/// signal interrupted the wait.
fn wait_readable(socket: &Socket, timeout: Option<Duration>) -> io::Result<bool> {
    match sys::poll_readable(socket.as_fd(), timeout) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
        r => r,
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

// ---- messages ---------------------------------------------------------------------------------

/// One conntrack message from the kernel, an event or a dump entry, with its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelMessage {
    pub message: CtMessage,
    /// The message's bytes as received (`nlmsghdr` first).
    pub bytes: Vec<u8>,
    /// Wall-clock receive time, ns since the epoch.
    pub received_ns: u64,
    /// For an event a userspace program caused (a flush, a delete), that program's name as
    /// `conntrack -E` prints it (`progname=`): `/proc/PORTID/comm`, read when the event
    /// arrived; `None` when the port id names no process (any more).
    pub progname: Option<String>,
}

impl KernelMessage {
    fn new(message: CtMessage, bytes: &[u8], received_ns: u64) -> KernelMessage {
        let bytes = bytes.to_vec();
        KernelMessage {
            message,
            bytes,
            received_ns,
            progname: None,
        }
    }

    /// Looks up the program behind the message's port id (see [`KernelMessage::progname`]).
    fn with_progname(mut self) -> KernelMessage {
        let port_id = self.message.header.port_id;
        if port_id != 0 {
            self.progname = std::fs::read_to_string(format!("/proc/{port_id}/comm"))
                .ok()
                .map(|name| name.trim_end_matches('\n').to_string());
        }
        self
    }

    /// NEW, UPDATE or DESTROY for an event; a dump entry reads as UPDATE (its type is
    /// `IPCTNL_MSG_CT_NEW` without flags).
    pub fn kind(&self) -> Option<MessageKind> {
        self.message.kind()
    }

    /// The event time: `CTA_TIMESTAMP_EVENT` when the kernel sent it (≥ 6.14 with
    /// `nf_conntrack_timestamp=1`), else the receive time.
    pub fn ts_ns(&self) -> u64 {
        self.message.timestamp_event().unwrap_or(self.received_ns)
    }

    /// The `IPCT_*` bits this message proves ([`CtMessage::proven_events`]).
    pub fn events(&self) -> EventBits {
        self.message.proven_events()
    }

    /// The frame the output formatters take.
    pub fn frame(&self) -> EventFrame<'_> {
        EventFrame {
            events: self.events(),
            group: self.kind().map_or(0, MessageKind::group),
            flags: 0,
            ts_ns: self.ts_ns(),
            netlink: &self.bytes,
        }
    }
}

// ---- the event socket -------------------------------------------------------------------------

/// Which conntrack event groups to join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Groups {
    pub new: bool,
    pub update: bool,
    pub destroy: bool,
}

impl Groups {
    pub const ALL: Groups = Groups {
        new: true,
        update: true,
        destroy: true,
    };
    pub const DESTROY: Groups = Groups {
        new: false,
        update: false,
        destroy: true,
    };

    fn numbers(self) -> impl Iterator<Item = u32> {
        [
            (self.new, NFNLGRP_CONNTRACK_NEW),
            (self.update, NFNLGRP_CONNTRACK_UPDATE),
            (self.destroy, NFNLGRP_CONNTRACK_DESTROY),
        ]
        .into_iter()
        .filter_map(|(on, g)| on.then_some(g))
    }
}

impl Default for Groups {
    fn default() -> Groups {
        Groups::ALL
    }
}

/// How to subscribe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    pub groups: Groups,
    /// Receive buffer to ask for with `SO_RCVBUFFORCE` (the kernel doubles it; at least 2304
    /// bytes result). `None` keeps `net.core.rmem_default`.
    pub rcvbuf: Option<usize>,
    /// `NETLINK_BROADCAST_ERROR`: an event this socket cannot take fails the kernel's delivery,
    /// which makes conntrack keep and redeliver it (reliable events).
    pub reliable: bool,
    /// `NETLINK_NO_ENOBUFS`: never report overruns (and never mark the socket congested).
    pub no_enobufs: bool,
    /// Network namespace name (under `/run/netns`) or path.
    pub netns: Option<String>,
}

/// What one [`EventSocket::recv`] got.
#[derive(Debug)]
pub enum Received {
    /// Messages from one datagram (possibly none, if it held only broken or foreign ones).
    Messages(Vec<KernelMessage>),
    /// `ENOBUFS`: the kernel dropped messages for this socket since the last read.
    Overrun,
    /// Nothing arrived within the timeout.
    TimedOut,
    /// The stop flag given to [`EventSocket::stop_when`] is set (by a signal, typically).
    Interrupted,
}

/// What an [`EventSocket`] has seen so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounts {
    pub new: u64,
    pub update: u64,
    pub destroy: u64,
    /// `recv` failures with `ENOBUFS` (errno 105): each is one overrun, not one lost message.
    pub enobufs: u64,
    /// Datagrams or messages that did not decode.
    pub decode_errors: u64,
    /// Well-formed messages that are not conntrack events, or datagrams not from the kernel.
    pub foreign: u64,
}

impl EventCounts {
    pub fn messages(&self) -> u64 {
        self.new + self.update + self.destroy
    }
}

/// A socket subscribed to the kernel's conntrack events.
#[derive(Debug)]
pub struct EventSocket {
    socket: Socket,
    buf: Vec<u8>,
    counts: EventCounts,
    rcvbuf: usize,
    netns: Option<String>,
    stop: Option<Arc<AtomicBool>>,
}

impl EventSocket {
    /// Opens the socket (in the namespace, if any), sets the options and joins the groups. The
    /// options are set before joining, so no event reaches a half-configured socket.
    pub fn subscribe(options: &SubscribeOptions) -> Result<EventSocket, CtnlError> {
        let mut socket = open_socket(options.netns.as_deref())?;
        if let Some(size) = options.rcvbuf {
            let size = sys::int_size(size);
            sys::setsockopt_int(socket.as_fd(), libc::SOL_SOCKET, sys::SO_RCVBUFFORCE, size)
                .map_err(sock_err("setsockopt(SO_RCVBUFFORCE)"))?;
        }
        if options.reliable {
            socket
                .set_broadcast_error(true)
                .map_err(sock_err("setsockopt(NETLINK_BROADCAST_ERROR)"))?;
        }
        if options.no_enobufs {
            socket
                .set_no_enobufs(true)
                .map_err(sock_err("setsockopt(NETLINK_NO_ENOBUFS)"))?;
        }
        socket.bind_auto().map_err(sock_err("bind"))?;
        for group in options.groups.numbers() {
            socket
                .add_membership(group)
                .map_err(sock_err("setsockopt(NETLINK_ADD_MEMBERSHIP)"))?;
        }
        let rcvbuf = socket.get_rx_buf_sz().map_err(sock_err("getsockopt"))?;
        Ok(EventSocket {
            socket,
            buf: Vec::with_capacity(EVENT_BUF),
            counts: EventCounts::default(),
            rcvbuf,
            netns: options.netns.clone(),
            stop: None,
        })
    }

    /// Makes [`recv`](Self::recv) return [`Received::Interrupted`] once `flag` is set; a
    /// signal that sets it also ends a blocking wait.
    pub fn stop_when(&mut self, flag: Arc<AtomicBool>) {
        self.stop = Some(flag);
    }

    /// The receive buffer the kernel actually uses (`sk_rcvbuf`, after doubling).
    pub fn effective_rcvbuf(&self) -> usize {
        self.rcvbuf
    }

    pub fn counts(&self) -> EventCounts {
        self.counts
    }

    /// The kernel's drop counter for this socket: every broadcast it could not queue here.
    pub fn kernel_drops(&self) -> Result<u32, CtnlError> {
        sys::socket_drops(self.socket.as_fd()).map_err(sock_err("getsockopt(SO_MEMINFO)"))
    }

    /// Reads one datagram, waiting at most `timeout` (`None`: until something arrives or the
    /// stop flag is set, see [`stop_when`](Self::stop_when)).
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Received, CtnlError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
                return Ok(Received::Interrupted);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Ok(Received::TimedOut);
            }
            if !wait_readable(&self.socket, left).map_err(sock_err("poll"))? {
                continue;
            }
            self.buf.clear();
            let flags = libc::MSG_DONTWAIT | libc::MSG_TRUNC;
            match self.socket.recv_from(&mut self.buf, flags) {
                Ok((len, from)) => return Ok(self.take(len, &from)),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.counts.enobufs += 1;
                    return Ok(Received::Overrun);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    return Err(CtnlError::Socket {
                        op: "recv",
                        source: e,
                    });
                }
            }
        }
    }

    fn take(&mut self, len: usize, from: &SocketAddr) -> Received {
        if from.port_number() != 0 || len > self.buf.len() {
            // Not from the kernel, or cut short: neither can be trusted as an event.
            if len > self.buf.len() {
                self.counts.decode_errors += 1;
            } else {
                self.counts.foreign += 1;
            }
            return Received::Messages(Vec::new());
        }
        let received_ns = now_ns();
        let mut out = Vec::new();
        for item in framed(&self.buf[..len]) {
            let Ok(f) = item else {
                self.counts.decode_errors += 1;
                break;
            };
            match f.parsed {
                Ok(message) => match message.kind() {
                    Some(kind) => {
                        match kind {
                            MessageKind::New => self.counts.new += 1,
                            MessageKind::Update => self.counts.update += 1,
                            MessageKind::Destroy => self.counts.destroy += 1,
                        }
                        out.push(KernelMessage::new(message, f.bytes, received_ns).with_progname());
                    }
                    None => self.counts.foreign += 1,
                },
                Err(DecodeError::NotConntrack { .. })
                | Err(DecodeError::Done)
                | Err(DecodeError::NetlinkError(_)) => self.counts.foreign += 1,
                Err(_) => self.counts.decode_errors += 1,
            }
        }
        Received::Messages(out)
    }

    /// The table as the kernel has it now, through a fresh request socket in the same namespace:
    /// what a listener does after an overrun to get back in sync.
    pub fn resync(&self) -> Result<Vec<KernelMessage>, CtnlError> {
        Conntrack::open(self.netns.as_deref())?.dump()
    }
}

/// One expectation message from the kernel: an event, or an entry of a dump.
#[derive(Clone, Debug)]
pub struct KernelExpect {
    pub message: ExpMessage,
    pub bytes: Vec<u8>,
    pub received_ns: u64,
}

/// A socket subscribed to the kernel's expectation events (`conntrack -E expect`).
#[derive(Debug)]
pub struct ExpectSocket {
    socket: Socket,
    buf: Vec<u8>,
    /// Messages that did not decode, or were not expectation events.
    pub skipped: u64,
    /// Overruns (ENOBUFS).
    pub enobufs: u64,
    stop: Option<Arc<AtomicBool>>,
}

impl ExpectSocket {
    /// Joins the expectation groups asked for in `netns` (`groups` as for connections: the
    /// kernel sends expectation NEW and DESTROY; UPDATE is joined as conntrack joins it).
    pub fn subscribe(netns: Option<&str>, groups: Groups) -> Result<Self, CtnlError> {
        let mut socket = open_socket(netns)?;
        socket.bind_auto().map_err(sock_err("bind"))?;
        for (on, group) in [
            (groups.new, NFNLGRP_CONNTRACK_EXP_NEW),
            (groups.update, NFNLGRP_CONNTRACK_EXP_UPDATE),
            (groups.destroy, NFNLGRP_CONNTRACK_EXP_DESTROY),
        ] {
            if on {
                socket
                    .add_membership(group)
                    .map_err(sock_err("setsockopt(NETLINK_ADD_MEMBERSHIP)"))?;
            }
        }
        Ok(ExpectSocket {
            socket,
            buf: Vec::with_capacity(EVENT_BUF),
            skipped: 0,
            enobufs: 0,
            stop: None,
        })
    }

    /// Makes [`recv`](Self::recv) return `None` once `flag` is set.
    pub fn stop_when(&mut self, flag: Arc<AtomicBool>) {
        self.stop = Some(flag);
    }

    /// The events of one datagram, waiting at most `timeout`; `None` when stopped, an empty
    /// list when the time ran out or the datagram held no expectation event.
    pub fn recv(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<Vec<KernelExpect>>, CtnlError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
                return Ok(None);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Ok(Some(Vec::new()));
            }
            if !wait_readable(&self.socket, left).map_err(sock_err("poll"))? {
                continue;
            }
            self.buf.clear();
            let flags = libc::MSG_DONTWAIT | libc::MSG_TRUNC;
            let (len, from) = match self.socket.recv_from(&mut self.buf, flags) {
                Ok(r) => r,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.enobufs += 1;
                    continue;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(sock_err("recv")(e)),
            };
            if from.port_number() != 0 || len > self.buf.len() {
                self.skipped += 1;
                continue;
            }
            let received_ns = now_ns();
            let mut out = Vec::new();
            for item in framed_as(&self.buf[..len], |b| ExpMessage::parse(b).map(|(m, _)| m)) {
                match item {
                    Ok(Framed {
                        parsed: Ok(message),
                        bytes,
                        ..
                    }) if message.kind().is_some() => out.push(KernelExpect {
                        message,
                        bytes: bytes.to_vec(),
                        received_ns,
                    }),
                    _ => self.skipped += 1,
                }
            }
            return Ok(Some(out));
        }
    }
}

// ---- requests -----------------------------------------------------------------------------------

/// The kernel's per-CPU conntrack statistics (`IPCTNL_MSG_CT_GET_STATS_CPU`), as sent: the
/// counters present in the reply, in its order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuStats {
    pub cpu: u16,
    /// `(CTA_STATS_*, value)`.
    pub counters: Vec<(u16, u32)>,
}

impl CpuStats {
    pub fn get(&self, kind: u16) -> Option<u32> {
        self.counters
            .iter()
            .find_map(|&(k, v)| (k == kind).then_some(v))
    }
}

/// The name `conntrack -S` prints for a `CTA_STATS_*` counter.
pub fn cpu_stat_name(kind: u16) -> Option<&'static str> {
    Some(match kind {
        CTA_STATS_SEARCHED => "searched",
        CTA_STATS_FOUND => "found",
        CTA_STATS_NEW => "new",
        CTA_STATS_INVALID => "invalid",
        CTA_STATS_IGNORE => "ignore",
        CTA_STATS_DELETE => "delete",
        CTA_STATS_DELETE_LIST => "delete_list",
        CTA_STATS_INSERT => "insert",
        CTA_STATS_INSERT_FAILED => "insert_failed",
        CTA_STATS_DROP => "drop",
        CTA_STATS_EARLY_DROP => "early_drop",
        CTA_STATS_ERROR => "error",
        CTA_STATS_SEARCH_RESTART => "search_restart",
        CTA_STATS_CLASH_RESOLVE => "clash_resolve",
        CTA_STATS_CHAIN_TOOLONG => "chaintoolong",
        _ => return None,
    })
}

/// The kernel's global conntrack figures (`IPCTNL_MSG_CT_GET_STATS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalStats {
    /// `nf_conntrack_count` of the namespace (dying entries included).
    pub entries: u32,
    /// `nf_conntrack_max` (global).
    pub max_entries: u32,
}

/// The `be32` payloads of a statistics reply (`CtAttr::Other`, since `CTA_STATS_*` numbers
/// overlap `CTA_*`); other sizes are skipped.
fn stats_attrs(msg: &CtMessage) -> Vec<(u16, u32)> {
    msg.attrs
        .iter()
        .filter_map(|a| match a {
            CtAttr::Other(raw) => {
                let v: [u8; 4] = raw.payload.as_slice().try_into().ok()?;
                Some((raw.kind & NLA_TYPE_MASK, u32::from_be_bytes(v)))
            }
            _ => None,
        })
        .collect()
}

/// What [`Conntrack::update`] changes in an entry (`conntrack -U -m ... -u ...`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryChange {
    /// The new mark.
    pub mark: Option<u32>,
    /// The new status word (the entry's own bits and the ones to set).
    pub status: Option<u32>,
}

/// A request socket for the kernel's conntrack table.
#[derive(Debug)]
pub struct Conntrack {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Conntrack {
    /// Opens a request socket in `netns` (or the current namespace).
    pub fn open(netns: Option<&str>) -> Result<Conntrack, CtnlError> {
        let mut socket = open_socket(netns)?;
        socket.bind_auto().map_err(sock_err("bind"))?;
        Ok(Conntrack {
            socket,
            seq: 0,
            buf: Vec::with_capacity(REQUEST_BUF),
        })
    }

    /// Every entry of the table, both families (`IPCTNL_MSG_CT_GET`, `NLM_F_DUMP`).
    pub fn dump(&mut self) -> Result<Vec<KernelMessage>, CtnlError> {
        self.exchange_raw("dump", IPCTNL_MSG_CT_GET, NLM_F_DUMP, AF_UNSPEC, Vec::new())
    }

    /// The entries `filter` selects. The kernel filters by what ctnetlink's dump filter
    /// offers (the family, the mark under its mask, status bits); the rest of the filter is
    /// applied here, so the result is exactly the filter's either way, and a kernel without
    /// one of those filters only sends more.
    pub fn dump_matching(&mut self, filter: &Filter) -> Result<Vec<KernelMessage>, CtnlError> {
        let (family, attrs) = dump_filter_attrs(filter);
        let mut entries =
            self.exchange_raw("dump", IPCTNL_MSG_CT_GET, NLM_F_DUMP, family, attrs)?;
        entries.retain(|m| filter.matches(&m.message));
        Ok(entries)
    }

    /// The dying list: entries whose DESTROY is still waiting for a reliable listener
    /// (`IPCTNL_MSG_CT_GET_DYING`).
    pub fn dump_dying(&mut self) -> Result<Vec<KernelMessage>, CtnlError> {
        self.exchange_raw(
            "dump dying",
            IPCTNL_MSG_CT_GET_DYING,
            NLM_F_DUMP,
            AF_UNSPEC,
            Vec::new(),
        )
    }

    /// The expectation table, both families (`IPCTNL_MSG_EXP_GET`, `NLM_F_DUMP`).
    pub fn dump_expect(&mut self) -> Result<Vec<KernelExpect>, CtnlError> {
        let msg_type = nfnl_msg_type(NFNL_SUBSYS_CTNETLINK_EXP, IPCTNL_MSG_EXP_GET);
        let replies = self.exchange(
            "dump expect",
            msg_type,
            NLM_F_DUMP,
            AF_UNSPEC,
            Vec::new(),
            |b| ExpMessage::parse(b).map(|(m, _)| m),
        )?;
        Ok(replies
            .into_iter()
            .map(|(message, bytes, received_ns)| KernelExpect {
                message,
                bytes,
                received_ns,
            })
            .collect())
    }

    /// The entry with original tuple `orig` in `zone`; `None` if the kernel has none.
    pub fn get(&mut self, orig: &Tuple, zone: u16) -> Result<Option<KernelMessage>, CtnlError> {
        match self.exchange_raw(
            "get",
            IPCTNL_MSG_CT_GET,
            NLM_F_ACK,
            orig.family as u8,
            tuple_request(orig, zone, None),
        ) {
            Ok(mut found) => Ok(found.pop()),
            Err(CtnlError::Kernel { errno, .. }) if errno == libc::ENOENT => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes the entry with original tuple `orig` in `zone` (only if its id is `id`, when
    /// given). `false` if there was no such entry.
    pub fn delete(&mut self, orig: &Tuple, zone: u16, id: Option<u32>) -> Result<bool, CtnlError> {
        match self.exchange_raw(
            "delete",
            IPCTNL_MSG_CT_DELETE,
            NLM_F_ACK,
            orig.family as u8,
            tuple_request(orig, zone, id),
        ) {
            Ok(_) => Ok(true),
            Err(CtnlError::Kernel { errno, .. }) if errno == libc::ENOENT => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Changes the mark and sets status bits of the entry with original tuple `orig` in
    /// `zone` (only if its id is `id`, when given): an `IPCTNL_MSG_CT_NEW` without
    /// `NLM_F_CREATE`, which the kernel takes as an update. The kernel refuses to clear the
    /// bits it owns (EBUSY). `false` if there was no such entry.
    pub fn update(
        &mut self,
        orig: &Tuple,
        zone: u16,
        id: Option<u32>,
        change: EntryChange,
    ) -> Result<bool, CtnlError> {
        let mut attrs = tuple_request(orig, zone, id);
        if let Some(mark) = change.mark {
            attrs.push(CtAttr::Mark(mark));
        }
        if let Some(status) = change.status {
            attrs.push(CtAttr::Status(status));
        }
        match self.exchange_raw(
            "update",
            IPCTNL_MSG_CT_NEW,
            NLM_F_ACK,
            orig.family as u8,
            attrs,
        ) {
            Ok(_) => Ok(true),
            Err(CtnlError::Kernel { errno, .. }) if errno == libc::ENOENT => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Empties the table, both families (`IPCTNL_MSG_CT_DELETE` without a tuple). Entries whose
    /// DESTROY a reliable listener cannot take yet go to the dying list.
    pub fn flush(&mut self) -> Result<(), CtnlError> {
        self.exchange_raw(
            "flush",
            IPCTNL_MSG_CT_DELETE,
            NLM_F_ACK,
            AF_UNSPEC,
            Vec::new(),
        )
        .map(drop)
    }

    /// The per-CPU counters, one entry per possible CPU.
    pub fn stats_cpu(&mut self) -> Result<Vec<CpuStats>, CtnlError> {
        let replies = self.exchange_raw(
            "stats",
            IPCTNL_MSG_CT_GET_STATS_CPU,
            NLM_F_DUMP,
            AF_UNSPEC,
            Vec::new(),
        )?;
        Ok(replies
            .iter()
            .map(|m| CpuStats {
                cpu: m.message.res_id,
                counters: stats_attrs(&m.message),
            })
            .collect())
    }

    /// The namespace's entry count and the global maximum.
    pub fn stats_global(&mut self) -> Result<GlobalStats, CtnlError> {
        let replies = self.exchange_raw(
            "global stats",
            IPCTNL_MSG_CT_GET_STATS,
            NLM_F_ACK,
            AF_UNSPEC,
            Vec::new(),
        )?;
        let msg = replies.first().ok_or(CtnlError::NoReply {
            request: "global stats",
        })?;
        let mut g = GlobalStats::default();
        for (kind, value) in stats_attrs(&msg.message) {
            match kind {
                CTA_STATS_GLOBAL_ENTRIES => g.entries = value,
                CTA_STATS_GLOBAL_MAX_ENTRIES => g.max_entries = value,
                _ => {}
            }
        }
        Ok(g)
    }

    /// Sends one ctnetlink request and reads its replies ([`Conntrack::exchange`]).
    fn exchange_raw(
        &mut self,
        name: &'static str,
        msg: u8,
        flags: u16,
        family: u8,
        attrs: Vec<CtAttr>,
    ) -> Result<Vec<KernelMessage>, CtnlError> {
        let msg_type = nfnl_msg_type(NFNL_SUBSYS_CTNETLINK, msg);
        let replies = self.exchange(name, msg_type, flags, family, attrs, |b| {
            CtMessage::parse(b).map(|(m, _)| m)
        })?;
        Ok(replies
            .into_iter()
            .map(|(m, bytes, at)| KernelMessage::new(m, &bytes, at))
            .collect())
    }

    /// Sends one request and reads its replies, each parsed by `parse`: until `NLMSG_DONE` for
    /// a dump, until the ACK (or error) otherwise. Replies to other sequence numbers (a stale
    /// request) are skipped. Each reply comes with its bytes and receive time.
    #[allow(clippy::type_complexity)]
    fn exchange<T>(
        &mut self,
        name: &'static str,
        msg_type: u16,
        flags: u16,
        family: u8,
        attrs: Vec<CtAttr>,
        parse: fn(&[u8]) -> Result<T, DecodeError>,
    ) -> Result<Vec<(T, Vec<u8>, u64)>, CtnlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let req = request(msg_type, flags, seq, family, attrs);
        self.socket
            .send(&req.to_vec(), 0)
            .map_err(sock_err("send"))?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            self.buf.clear();
            let (len, from) = match self.socket.recv_from(&mut self.buf, libc::MSG_TRUNC) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(sock_err("recv")(e)),
            };
            if from.port_number() != 0 {
                continue;
            }
            if len > self.buf.len() {
                return Err(CtnlError::Truncated { len });
            }
            let received_ns = now_ns();
            for item in framed_as(&self.buf[..len], parse) {
                let f = item.map_err(|error| CtnlError::Decode {
                    request: name,
                    error,
                })?;
                if f.header.seq != seq {
                    continue;
                }
                match f.parsed {
                    Ok(m) => replies.push((m, f.bytes.to_vec(), received_ns)),
                    Err(DecodeError::Done) => return Ok(replies),
                    Err(DecodeError::NetlinkError(0)) if !dump => return Ok(replies),
                    Err(DecodeError::NetlinkError(0)) => {}
                    Err(DecodeError::NetlinkError(e)) => {
                        return Err(CtnlError::Kernel {
                            request: name,
                            errno: e.saturating_neg(),
                        });
                    }
                    Err(DecodeError::NotConntrack { .. }) => {}
                    Err(error) => {
                        return Err(CtnlError::Decode {
                            request: name,
                            error,
                        });
                    }
                }
            }
        }
    }
}

/// One message of a datagram: its header (so replies can be matched by sequence number,
/// control messages included), its bytes, and what the codec made of them.
struct Framed<'a, T = CtMessage> {
    header: NlHeader,
    bytes: &'a [u8],
    parsed: Result<T, DecodeError>,
}

/// Splits a datagram into conntrack messages ([`framed_as`] with [`CtMessage::parse`]).
fn framed(buf: &[u8]) -> impl Iterator<Item = Result<Framed<'_>, DecodeError>> {
    framed_as(buf, |b| CtMessage::parse(b).map(|(m, _)| m))
}

/// Splits a datagram into messages, each parsed by `parse`. An `Err` means the framing itself
/// is broken and the rest of the datagram cannot be read.
fn framed_as<T>(
    mut buf: &[u8],
    parse: fn(&[u8]) -> Result<T, DecodeError>,
) -> impl Iterator<Item = Result<Framed<'_, T>, DecodeError>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let (header, len) = match NlHeader::parse(buf) {
            Ok(h) => h,
            Err(e) => {
                buf = &[];
                return Some(Err(e));
            }
        };
        let bytes = &buf[..len];
        let parsed = parse(bytes);
        // `len` is at least a header and at most the buffer (checked by `NlHeader::parse`), so this
        // always moves on.
        buf = buf
            .get(len.div_ceil(NLMSG_ALIGNTO) * NLMSG_ALIGNTO..)
            .unwrap_or(&[]);
        Some(Ok(Framed {
            header,
            bytes,
            parsed,
        }))
    })
}

/// The attributes of a get/delete request: the original tuple, the zone when not the default,
/// the id when the caller pins one.
/// The family and attributes of a dump request that has the kernel apply the parts of
/// `filter` its dump filter knows: `nfgen_family`, `CTA_MARK` with `CTA_MARK_MASK`, and
/// `CTA_STATUS` with `CTA_STATUS_MASK` (every listed bit set).
fn dump_filter_attrs(filter: &Filter) -> (u8, Vec<CtAttr>) {
    let family = filter.family.map_or(AF_UNSPEC, |f| f as u8);
    let mut attrs = Vec::new();
    if let Some((mark, mask)) = filter.mark {
        attrs.push(CtAttr::Mark(mark & mask));
        attrs.push(CtAttr::Other(RawAttr {
            kind: CTA_MARK_MASK,
            payload: mask.to_be_bytes().to_vec(),
        }));
    }
    if let Some(bits) = filter.status {
        attrs.push(CtAttr::Status(bits.0));
        attrs.push(CtAttr::Other(RawAttr {
            kind: CTA_STATUS_MASK,
            payload: bits.0.to_be_bytes().to_vec(),
        }));
    }
    (family, attrs)
}

fn tuple_request(orig: &Tuple, zone: u16, id: Option<u32>) -> Vec<CtAttr> {
    let mut attrs = vec![CtAttr::TupleOrig(tuple_attrs(orig))];
    if zone != 0 {
        attrs.push(CtAttr::Zone(zone));
    }
    if let Some(id) = id {
        attrs.push(CtAttr::Id(id));
    }
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctwasm_core::netlink::RawAttr;
    use proptest::prelude::*;

    /// The kernel is asked to filter by family, mark and status; the rest stays client-side.
    #[test]
    fn dump_requests_carry_the_filters_the_kernel_applies() {
        use ctwasm_core::Status;
        use ctwasm_host::filter::{parse_family, parse_mark, parse_status};
        let filter = Filter {
            family: Some(parse_family("ipv6").unwrap()),
            mark: Some(parse_mark("0x17/0xf0").unwrap()),
            status: Some(parse_status("ASSURED,SEEN_REPLY").unwrap()),
            zone: Some(3),
            proto: Some(6),
            ..Filter::default()
        };
        let (family, attrs) = dump_filter_attrs(&filter);
        assert_eq!(family, libc::AF_INET6 as u8);
        let bits = Status::ASSURED.union(Status::SEEN_REPLY).0;
        assert_eq!(
            attrs,
            vec![
                CtAttr::Mark(0x10),
                CtAttr::Other(RawAttr {
                    kind: CTA_MARK_MASK,
                    payload: 0xf0u32.to_be_bytes().to_vec()
                }),
                CtAttr::Status(bits),
                CtAttr::Other(RawAttr {
                    kind: CTA_STATUS_MASK,
                    payload: bits.to_be_bytes().to_vec()
                }),
            ]
        );
        assert_eq!(
            dump_filter_attrs(&Filter::default()),
            (AF_UNSPEC, Vec::new())
        );
    }

    /// A namespace that does not exist: the report names it and gives the OS error once.
    #[test]
    fn a_namespace_error_says_the_os_error_once() {
        let err = crate::netns::in_netns(Some("ctwasm-no-such-namespace"), || ()).unwrap_err();
        let report = format!("{:#}", anyhow::Error::new(err));
        let os = io::Error::from_raw_os_error(libc::ENOENT).to_string();
        let os = os.split(" (os error").next().unwrap();
        assert_eq!(report.matches(os).count(), 1, "{report}");
        assert!(report.contains("ctwasm-no-such-namespace"), "{report}");
    }

    /// The JSON `events` of an event is what its message proves, so the engine's event (whose
    /// frame carries its own wider mask) and the same bytes read from the kernel print the
    /// same line.
    #[test]
    fn a_replayed_event_and_the_same_kernel_message_print_the_same_json() {
        use ctwasm_core::tuple::ipproto;
        use ctwasm_core::wire::build;
        use ctwasm_core::{Config, Delivery, EventBits, Tracker};
        use ctwasm_host::output::format_json;

        let mut tracker = Tracker::new(Config::default());
        let segment = |sport, dport, seq, ack, flags| {
            let l4 = build::tcp(sport, dport, seq, ack, flags, 65_000, 0);
            build::ipv4([10, 0, 0, 1], [10, 0, 0, 1], ipproto::TCP, &l4)
        };
        use ctwasm_core::proto::tcp::flag::{ACK, SYN};
        tracker.ingest(1_000, 0, &segment(40000, 80, 100, 0, SYN));
        tracker.ingest(2_000, 0, &segment(80, 40000, 500, 101, SYN | ACK));
        let mut out = Vec::new();
        let n = tracker.take_events(usize::MAX, &mut out);
        tracker.report_delivery(&vec![Delivery::Delivered; n]);
        let mut compared = 0;
        for frame in ctwasm_core::batch::events(&out) {
            let frame = frame.unwrap();
            let (message, _) = CtMessage::parse(frame.netlink).unwrap();
            let kernel = KernelMessage::new(message.clone(), frame.netlink, frame.ts_ns);
            assert_eq!(
                format_json(&frame, &message),
                format_json(&kernel.frame(), &kernel.message)
            );
            compared += 1;
            if frame.events.contains(EventBits::REPLY) {
                // SYN_RECV: the engine's mask says REPLY too; the line does not.
                assert!(format_json(&frame, &message).contains(r#""events":["PROTOINFO"]"#));
            }
        }
        assert_eq!(compared, 2, "NEW and the SYN_RECV UPDATE");
    }

    fn stats_reply(cpu: u16, counters: &[(u16, u32)], seq: u32) -> Vec<u8> {
        let mut m = request(
            nfnl_msg_type(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET_STATS_CPU),
            NLM_F_MULTI,
            seq,
            AF_UNSPEC,
            counters
                .iter()
                .map(|&(kind, v)| {
                    CtAttr::Other(RawAttr {
                        kind,
                        payload: v.to_be_bytes().to_vec(),
                    })
                })
                .collect(),
        );
        m.res_id = cpu;
        m.to_vec()
    }

    #[test]
    fn statistics_replies_decode_their_be32_counters() {
        let bytes = stats_reply(1, &[(CTA_STATS_FOUND, 7), (CTA_STATS_DROP, 3)], 9);
        let (msg, _) = CtMessage::parse(&bytes).expect("parses");
        assert_eq!(msg.res_id, 1);
        assert_eq!(
            stats_attrs(&msg),
            vec![(CTA_STATS_FOUND, 7), (CTA_STATS_DROP, 3)]
        );
        assert_eq!(cpu_stat_name(CTA_STATS_CHAIN_TOOLONG), Some("chaintoolong"));
        assert_eq!(cpu_stat_name(99), None);
    }

    #[test]
    fn framed_reports_sequence_numbers_of_control_messages_and_skips_broken_bodies() {
        let mut buf = stats_reply(0, &[(CTA_STATS_FOUND, 1)], 5);
        // A DONE for seq 5.
        let mut done = vec![0u8; 20];
        done[0..4].copy_from_slice(&20u32.to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        done[8..12].copy_from_slice(&5u32.to_ne_bytes());
        buf.extend_from_slice(&done);
        let items: Vec<_> = framed(&buf).collect();
        assert_eq!(items.len(), 2);
        let f = items[1].as_ref().expect("framing ok");
        assert_eq!(f.header.seq, 5);
        assert_eq!(f.bytes, &done[..]);
        assert_eq!(f.parsed, Err(DecodeError::Done));
    }

    #[test]
    fn events_are_derived_from_the_kind() {
        let mut m = request(
            nfnl_msg_type(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE),
            0,
            0,
            AF_INET,
            vec![CtAttr::TimestampEvent(42)],
        );
        m.header.flags = 0;
        let bytes = m.to_vec();
        let k = KernelMessage::new(m, &bytes, 7);
        assert_eq!(k.kind(), Some(MessageKind::Destroy));
        assert_eq!(k.events(), EventBits::DESTROY);
        assert_eq!(k.ts_ns(), 42);
        assert_eq!(k.frame().group, NFNLGRP_CONNTRACK_DESTROY as u8);
    }

    proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic_the_reply_reader(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for item in framed(&bytes) {
                let _ = item;
            }
        }

        #[test]
        fn framed_never_loops_on_any_length_field(len in any::<u32>(), rest in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = len.to_ne_bytes().to_vec();
            bytes.extend_from_slice(&[0x10, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            bytes.extend_from_slice(&rest);
            prop_assert!(framed(&bytes).count() <= bytes.len() / NLMSG_HDRLEN + 1);
        }
    }
}
