//! A listener whose deliveries a real kernel decides: each event message goes, as its ctnetlink
//! bytes, to a local Unix datagram socket with a small buffer, sent without blocking.
//!
//! The simulated listeners ([`ctwasm_host::listener`]) reproduce netlink's rules on simulated time. This
//! one puts a real kernel buffer in their place, so that "the kernel refused the message" is a
//! fact rather than a model: a send the kernel refuses (`EAGAIN`, `ENOBUFS`) is a missed message,
//! and a miss by a reliable (broadcast-error) listener fails the delivery, exactly where
//! `netlink_broadcast` would return `-ENOBUFS`. A lossy listener's misses are only counted.
//!
//! # Which buffer decides
//!
//! On `AF_UNIX` a datagram is charged to its **sender** until the reader takes it: the sending
//! socket's `sk_wmem_alloc` against its `SO_SNDBUF` (checked before adding, as netlink checks
//! `sk_rmem_alloc` against `sk_rcvbuf`; each message costs its skb's truesize). The receiving
//! socket's `SO_RCVBUF` is not consulted at all (measured on Linux 6.18: with a 4608-byte
//! `SO_SNDBUF`, four 200-byte datagrams fit whatever the reader's `SO_RCVBUF`). So the `buffer`
//! of this listener is set as the sending socket's `SO_SNDBUF`, and it is the reader's buffer in
//! every sense that matters: it fills when the reader falls behind and empties as it reads. A
//! reader bound to a path (not a socket pair) also bounds its queue at `net.unix.max_dgram_qlen`
//! datagrams; whichever limit comes first refuses. Linux doubles the size asked for and keeps at
//! least 4608 bytes.
//!
//! What a Unix socket does not do is netlink's congestion (refusing everything until the reader
//! has emptied its queue) and the reader-side `ENOBUFS`: here a refusal ends as soon as there is
//! room, and only the sender sees it. [`ListenerStats::enobufs`] counts refusal episodes (runs of
//! refusals between two accepted sends), what a netlink reader would have seen as ENOBUFS.
//!
//! # Time
//!
//! The engine runs on simulated time and the reader on the wall clock. With `pace` set, the
//! listener keeps simulated time from running ahead of real time (it waits in
//! [`ExternalListener::advance`] until the wall clock has caught up, at `pace` simulated seconds
//! per real second), so timers, grace delays and the reader's pace relate as they would on a
//! live system. Without it the engine runs as fast as it can and only retries give the reader
//! time. Either way which message is refused depends on real timing; what does not is the
//! reliable contract: every message the kernel took is read once, and every DESTROY it refused
//! is retried until it is taken.
//!
//! # The stream
//!
//! One datagram per ctnetlink message, in delivery order. An empty datagram ends the stream
//! ([`SocketListener::finish`]): readers stop there. [`SocketReader`] is an in-process reader
//! thread; `ctwasm listen SOCKET` is the same reader as a separate process.

use std::collections::HashMap;
use std::io;
use std::ops::ControlFlow;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ctwasm_core::batch::EventFrame;
use ctwasm_core::netlink::{CtMessage, DecodeError};
use ctwasm_core::{MessageKind, Tuple};
use ctwasm_host::listener::{
    ALL_GROUPS, ExternalListener, ListenerStats, Offer, group_bit, parse_bytes, parse_groups,
};

use crate::sys;

/// How one socket listener is set up.
#[derive(Clone, Debug, PartialEq)]
pub struct SocketListenerConfig {
    pub name: String,
    /// The buffer to ask for, bytes (set as the sending socket's `SO_SNDBUF`; see the module
    /// docs). Linux doubles it and keeps at least 4608.
    pub buffer: usize,
    /// Subscribed groups, as [`group_bit`]s.
    pub groups: u8,
    /// Broadcast-error: a refused message fails the delivery.
    pub broadcast_error: bool,
    /// Simulated seconds per wall-clock second the run may go at (`None`: as fast as it can).
    pub pace: Option<f64>,
}

impl Default for SocketListenerConfig {
    fn default() -> Self {
        SocketListenerConfig {
            name: "socket".to_string(),
            buffer: 2048,
            groups: ALL_GROUPS,
            broadcast_error: false,
            pace: None,
        }
    }
}

impl SocketListenerConfig {
    /// Parses a spec like the simulated listeners' (`buffer=2048,reliable,groups=destroy,pace=1,
    /// name=NAME`; `rcvbuf` is accepted for `buffer`).
    pub fn parse(spec: &str) -> anyhow::Result<SocketListenerConfig> {
        let mut c = SocketListenerConfig::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                Some(("buffer" | "rcvbuf", v)) => c.buffer = parse_bytes(v)?,
                Some(("groups", v)) => c.groups = parse_groups(v)?,
                Some(("name", v)) if !v.is_empty() => c.name = v.to_string(),
                // Bounded so that a simulated second maps onto a real `Duration` (at most
                // about eleven days of real time per simulated second).
                Some(("pace", v)) => match v.parse::<f64>() {
                    Ok(p) if (1e-6..=1e9).contains(&p) => c.pace = Some(p),
                    _ => bail!(
                        "pace `{v}` is not a number of simulated s per real s from 0.000001 to \
                         1000000000"
                    ),
                },
                None if part == "reliable" || part == "broadcast-error" => c.broadcast_error = true,
                _ => bail!(
                    "socket listener spec `{spec}`: unknown option `{part}` (expected \
                     buffer=BYTES, reliable, groups=new+update+destroy, pace=SPEED, name=NAME)"
                ),
            }
        }
        Ok(c)
    }
}

/// The sending end: an [`ExternalListener`] over a non-blocking Unix datagram socket.
#[derive(Debug)]
pub struct SocketListener {
    config: SocketListenerConfig,
    socket: UnixDatagram,
    effective_buffer: usize,
    stats: ListenerStats,
    /// Within a run of refusals (the next refusal is not a new episode).
    refusing: bool,
    /// The reader is gone (the send failed otherwise than for lack of room): no longer listening.
    gone: Option<io::Error>,
    /// The simulated origin and the wall-clock instant it maps to, when pacing.
    clock: Option<(u64, Instant)>,
}

impl SocketListener {
    /// A listener and the reading end of its socket pair (give it to a [`SocketReader`]).
    pub fn pair(config: SocketListenerConfig) -> io::Result<(SocketListener, UnixDatagram)> {
        let (send, recv) = UnixDatagram::pair()?;
        Ok((SocketListener::new(config, send)?, recv))
    }

    /// A listener sending to a reader bound at `path` (`ctwasm listen PATH`).
    pub fn connect(path: &Path, config: SocketListenerConfig) -> io::Result<SocketListener> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        SocketListener::new(config, socket)
    }

    /// What the commands' `--socket PATH --socket-spec SPEC` ask for: a listener set up by
    /// `spec`, sending to the reader at `path`, and the end of its stream; errors name the
    /// option at fault.
    pub fn connect_spec(path: &Path, spec: &str) -> anyhow::Result<(SocketListener, StreamEnd)> {
        use anyhow::Context as _;
        let config = SocketListenerConfig::parse(spec).context("--socket-spec")?;
        let listener = SocketListener::connect(path, config).with_context(|| {
            format!(
                "--socket {}: connecting to the reader (is `ctwasm listen` running?)",
                path.display()
            )
        })?;
        let end = listener.end_handle()?;
        Ok((listener, end))
    }

    fn new(config: SocketListenerConfig, socket: UnixDatagram) -> io::Result<SocketListener> {
        set_sndbuf(&socket, config.buffer)?;
        socket.set_nonblocking(true)?;
        let effective_buffer = sndbuf(&socket)?;
        Ok(SocketListener {
            config,
            socket,
            effective_buffer,
            stats: ListenerStats::default(),
            refusing: false,
            gone: None,
            clock: None,
        })
    }

    pub fn config(&self) -> &SocketListenerConfig {
        &self.config
    }

    /// The buffer the kernel actually applies (`SO_SNDBUF` as read back), bytes.
    pub fn effective_buffer(&self) -> usize {
        self.effective_buffer
    }

    /// Bytes sent and not yet read (the skbs' truesize, `SIOCOUTQ`).
    pub fn queued_bytes(&self) -> io::Result<usize> {
        sys::send_queue_bytes(self.socket.as_fd())
    }

    /// Why the reader stopped listening, if it did.
    pub fn gone(&self) -> Option<&io::Error> {
        self.gone.as_ref()
    }

    /// A handle on the same socket that can end the stream once the listener itself has been
    /// handed to a simulation.
    pub fn end_handle(&self) -> io::Result<StreamEnd> {
        Ok(StreamEnd(self.socket.try_clone()?))
    }

    /// Ends the stream: sends the empty datagram readers stop at, waiting for room until
    /// `deadline`.
    pub fn finish(&self, deadline: Instant) -> io::Result<()> {
        send_end(&self.socket, deadline)
    }
}

/// Ends a socket listener's stream from outside the simulation (see
/// [`SocketListener::end_handle`]). Everything the listener sent before is read before the end.
#[derive(Debug)]
pub struct StreamEnd(UnixDatagram);

impl StreamEnd {
    /// Sends the empty datagram readers stop at, waiting for room until `deadline`.
    pub fn finish(self, deadline: Instant) -> io::Result<()> {
        send_end(&self.0, deadline)
    }
}

fn send_end(socket: &UnixDatagram, deadline: Instant) -> io::Result<()> {
    loop {
        match socket.send(&[]) {
            Ok(_) => return Ok(()),
            Err(e) if is_refusal(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether a failed send is the kernel refusing for lack of room (a missed message), rather than
/// the reader being gone.
fn is_refusal(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
}

impl ExternalListener for SocketListener {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn is_reliable(&self) -> bool {
        self.config.broadcast_error
    }

    fn is_subscribed(&self, group: u8) -> bool {
        self.gone.is_none() && self.config.groups & group_bit(group) != 0
    }

    fn offer(&mut self, _now_ns: u64, frame: &EventFrame<'_>) -> Offer {
        if !self.is_subscribed(frame.group) {
            return Offer::NotSubscribed;
        }
        match self.socket.send(frame.netlink) {
            Ok(_) => {
                self.refusing = false;
                self.stats.received += 1;
                let queued = self.queued_bytes().unwrap_or(0);
                self.stats.peak_queued_bytes = self.stats.peak_queued_bytes.max(queued);
                Offer::Queued
            }
            Err(e) if is_refusal(&e) => {
                self.stats.dropped += 1;
                let first_overrun = !self.refusing;
                if first_overrun {
                    self.refusing = true;
                    self.stats.enobufs += 1;
                }
                Offer::Dropped { first_overrun }
            }
            Err(e) => {
                // A closed netlink socket leaves its groups: it neither receives nor fails
                // anything from now on.
                self.gone = Some(e);
                Offer::NotSubscribed
            }
        }
    }

    fn has_room(&self) -> bool {
        self.gone.is_none() && self.queued_bytes().is_ok_and(|q| q < self.effective_buffer)
    }

    fn set_origin(&mut self, origin_ns: u64) {
        self.clock = Some((origin_ns, Instant::now()));
    }

    fn advance(&mut self, now_ns: u64) {
        let Some(pace) = self.config.pace else {
            return;
        };
        let (origin, start) = *self.clock.get_or_insert((now_ns, Instant::now()));
        let due = Duration::from_secs_f64(now_ns.saturating_sub(origin) as f64 / 1e9 / pace);
        let wait = (start + due).saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    /// `read` stays 0: the reader counts its own reads ([`Tally`]).
    fn stats(&self) -> ListenerStats {
        self.stats
    }
}

fn set_sndbuf(socket: &UnixDatagram, bytes: usize) -> io::Result<()> {
    let set =
        |name| sys::setsockopt_int(socket.as_fd(), libc::SOL_SOCKET, name, sys::int_size(bytes));
    // SO_SNDBUFFORCE passes net.core.wmem_max; without CAP_NET_ADMIN, SO_SNDBUF is capped by it.
    set(libc::SO_SNDBUFFORCE).or_else(|_| set(libc::SO_SNDBUF))
}

fn sndbuf(socket: &UnixDatagram) -> io::Result<usize> {
    let value = sys::getsockopt_int(socket.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF)?;
    Ok(usize::try_from(value).unwrap_or(0))
}

// ---- the reader -------------------------------------------------------------------------------

/// What a reader counted: messages by kind, and DESTROYs by (original tuple, id), which is how
/// "every DESTROY exactly once" is checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub messages: u64,
    pub new: u64,
    pub update: u64,
    pub destroy: u64,
    /// Datagrams that are not one whole ctnetlink conntrack message.
    pub decode_errors: u64,
    /// How many times each entry's DESTROY was read.
    pub destroys: HashMap<(Tuple, u32), u32>,
    /// Whether the stream's end (an empty datagram) was read.
    pub ended: bool,
    /// Wall time from the first datagram read to the last.
    pub reading: Duration,
    /// When the last DESTROY was read.
    pub last_destroy_at: Option<Instant>,
}

impl Tally {
    /// Counts one datagram; returns its message when it decodes. An empty datagram marks the end.
    pub fn record(&mut self, bytes: &[u8]) -> Option<Result<CtMessage, DecodeError>> {
        if bytes.is_empty() {
            self.ended = true;
            return None;
        }
        self.messages += 1;
        let message = match CtMessage::parse(bytes) {
            Ok((m, used)) if used == bytes.len() => m,
            Ok((_, used)) => {
                self.decode_errors += 1;
                return Some(Err(DecodeError::TrailingBytes {
                    len: bytes.len() - used,
                }));
            }
            Err(e) => {
                self.decode_errors += 1;
                return Some(Err(e));
            }
        };
        match message.kind() {
            Some(MessageKind::New) => self.new += 1,
            Some(MessageKind::Update) => self.update += 1,
            Some(MessageKind::Destroy) => {
                self.destroy += 1;
                if let (Some(orig), Some(id)) = (message.orig(), message.id()) {
                    *self.destroys.entry((orig, id)).or_default() += 1;
                }
            }
            None => {}
        }
        Some(Ok(message))
    }

    /// Entries whose DESTROY was read at least once.
    pub fn distinct_destroys(&self) -> u64 {
        self.destroys.len() as u64
    }

    /// DESTROYs read beyond the first for the same entry.
    pub fn duplicate_destroys(&self) -> u64 {
        self.destroys.values().map(|&n| u64::from(n) - 1).sum()
    }
}

/// Reads one datagram every `1 / rate` s at most (`None`: as fast as they come).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReadPace {
    pub rate: Option<f64>,
}

impl ReadPace {
    /// The gap between two reads.
    pub fn interval(self) -> Duration {
        match self.rate {
            Some(r) if r > 0.0 && r.is_finite() => Duration::from_secs_f64(1.0 / r),
            _ => Duration::ZERO,
        }
    }
}

/// An in-process reader: a thread draining the reading end of a [`SocketListener::pair`] at a
/// chosen pace until the stream ends, a stop is asked for, or a deadline passes.
#[derive(Debug)]
pub struct SocketReader {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<io::Result<Tally>>,
}

impl SocketReader {
    /// Starts reading `socket` at `pace`; the thread gives up at `deadline` whatever happens.
    pub fn spawn(socket: UnixDatagram, pace: ReadPace, deadline: Instant) -> SocketReader {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("socket-reader".into())
            .spawn(move || {
                read_stream(&socket, pace, deadline, &flag, |_, _| {
                    Ok(ControlFlow::Continue(()))
                })
            })
            .expect("spawning a thread");
        SocketReader { stop, thread }
    }

    /// Asks the reader to stop now, without waiting for the end of the stream.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for the reader and returns what it counted.
    pub fn join(self) -> anyhow::Result<Tally> {
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the reader thread panicked"))?
            .context("reading the socket")
    }
}

/// The reading loop both readers share: reads `socket` at `pace`, counting into a [`Tally`] and
/// handing each datagram and its decoded message to `each`, until the empty datagram ends the
/// stream, `stop` is set, `deadline` passes or `each` breaks (an error from `each` is returned).
pub fn read_stream(
    socket: &UnixDatagram,
    pace: ReadPace,
    deadline: Instant,
    stop: &AtomicBool,
    mut each: impl FnMut(&[u8], &Result<CtMessage, DecodeError>) -> io::Result<ControlFlow<()>>,
) -> io::Result<Tally> {
    // Short timeouts so a stop or the deadline is noticed while the socket is idle.
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    let interval = pace.interval();
    let mut tally = Tally::default();
    // The largest ctnetlink conntrack message is far below this; MSG_TRUNC would be counted as
    // a decode error anyway.
    let mut buf = vec![0u8; 64 * 1024];
    let mut not_before = Instant::now();
    let mut first: Option<Instant> = None;
    while !tally.ended && !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if now < not_before {
            std::thread::sleep((not_before - now).min(deadline - now));
            continue;
        }
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        let read_at = Instant::now();
        not_before = read_at + interval;
        let bytes = &buf[..n];
        if let Some(decoded) = tally.record(bytes) {
            let start = *first.get_or_insert(read_at);
            tally.reading = read_at - start;
            if matches!(&decoded, Ok(m) if m.kind() == Some(MessageKind::Destroy)) {
                tally.last_destroy_at = Some(read_at);
            }
            if each(bytes, &decoded)?.is_break() {
                break;
            }
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctwasm_core::netlink::consts::{NFNLGRP_CONNTRACK_DESTROY, NFNLGRP_CONNTRACK_NEW};

    const GROUP_NEW: u8 = NFNLGRP_CONNTRACK_NEW as u8;
    const GROUP_DESTROY: u8 = NFNLGRP_CONNTRACK_DESTROY as u8;

    fn frame(group: u8, netlink: &[u8]) -> EventFrame<'_> {
        EventFrame {
            events: ctwasm_core::event::EventBits::NEW,
            group,
            flags: 0,
            ts_ns: 0,
            netlink,
        }
    }

    #[test]
    fn the_kernel_refuses_once_the_buffer_is_full_and_takes_again_after_a_read() {
        let (mut l, reader) = SocketListener::pair(SocketListenerConfig {
            buffer: 1,
            broadcast_error: true,
            ..SocketListenerConfig::default()
        })
        .unwrap();
        // Linux keeps at least SOCK_MIN_SNDBUF.
        assert!(l.effective_buffer() >= 4096, "{}", l.effective_buffer());
        let msg = [0u8; 200];
        let mut offers = Vec::new();
        for _ in 0..64 {
            offers.push(l.offer(0, &frame(GROUP_NEW, &msg)));
        }
        let taken = offers.iter().filter(|o| **o == Offer::Queued).count();
        assert!((1..64).contains(&taken), "{offers:?}");
        // Refusals come after the acceptances, and one episode reports once.
        assert!(offers[..taken].iter().all(|o| *o == Offer::Queued));
        assert_eq!(
            offers[taken],
            Offer::Dropped {
                first_overrun: true
            }
        );
        assert!(offers[taken + 1..].iter().all(|o| o.missed()));
        assert!(!l.has_room());
        assert!(l.queued_bytes().unwrap() >= l.effective_buffer());
        let s = l.stats();
        assert_eq!(
            (s.received, s.dropped, s.enobufs),
            (taken as u64, 64 - taken as u64, 1)
        );
        // One read makes room again.
        let mut buf = [0u8; 512];
        assert_eq!(reader.recv(&mut buf).unwrap(), 200);
        assert!(l.has_room());
        assert_eq!(l.offer(0, &frame(GROUP_NEW, &msg)), Offer::Queued);
        // Not subscribed: not offered at all.
        let mut only_destroy = SocketListener::pair(SocketListenerConfig {
            groups: group_bit(GROUP_DESTROY),
            ..SocketListenerConfig::default()
        })
        .unwrap()
        .0;
        assert_eq!(
            only_destroy.offer(0, &frame(GROUP_NEW, &msg)),
            Offer::NotSubscribed
        );
    }

    #[test]
    fn a_reliable_socket_that_refuses_fails_the_broadcast_and_the_others_still_receive() {
        use ctwasm_core::Delivery;
        use ctwasm_core::batch::EventFrame;
        use ctwasm_core::event::EventBits;
        use ctwasm_host::listener::{ListenerConfig, Listeners};

        let mut set = Listeners::new([ListenerConfig::parse("rcvbuf=unlimited").unwrap()]);
        let (socket, _unread) = SocketListener::pair(SocketListenerConfig {
            broadcast_error: true,
            ..SocketListenerConfig::default()
        })
        .unwrap();
        set.push_external(Box::new(socket));
        assert!(set.has_reliable() && set.has_listeners_for(GROUP_DESTROY));
        let frame = EventFrame {
            events: EventBits::DESTROY,
            group: GROUP_DESTROY,
            flags: 0,
            ts_ns: 1,
            netlink: &[0; 200],
        };
        let outcomes: Vec<Delivery> = (0..64).map(|i| set.deliver(i, &frame)).collect();
        assert_eq!(outcomes[0], Delivery::Delivered);
        assert_eq!(outcomes[63], Delivery::Failed);
        assert!(!set.reliable_have_room());
        let stats = set.all_stats();
        assert_eq!(stats[0].1.received, 64);
        assert_eq!(stats[1].0, "socket");
        assert_eq!(
            stats[1].1.received + stats[1].1.dropped,
            64,
            "{:?}",
            stats[1]
        );
    }

    #[test]
    fn a_reader_that_went_away_stops_listening() {
        let (mut l, reader) = SocketListener::pair(SocketListenerConfig {
            broadcast_error: true,
            ..SocketListenerConfig::default()
        })
        .unwrap();
        drop(reader);
        assert_eq!(
            l.offer(0, &frame(GROUP_NEW, &[1, 2, 3])),
            Offer::NotSubscribed
        );
        assert!(l.gone().is_some());
        assert!(!l.is_subscribed(GROUP_DESTROY));
    }

    #[test]
    fn the_reader_stops_at_the_end_of_the_stream_and_counts_what_does_not_decode() {
        let (mut l, socket) = SocketListener::pair(SocketListenerConfig::default()).unwrap();
        assert_eq!(l.offer(0, &frame(GROUP_NEW, &[1, 2, 3])), Offer::Queued);
        let end = l.end_handle().unwrap();
        drop(l);
        let reader = SocketReader::spawn(
            socket,
            ReadPace { rate: None },
            Instant::now() + Duration::from_secs(20),
        );
        end.finish(Instant::now() + Duration::from_secs(20))
            .unwrap();
        let tally = reader.join().unwrap();
        assert!(tally.ended);
        assert_eq!((tally.messages, tally.decode_errors), (1, 1));
    }

    #[test]
    fn spec_parsing() {
        let c =
            SocketListenerConfig::parse("buffer=4K,reliable,groups=destroy,pace=2,name=d").unwrap();
        assert_eq!(
            c,
            SocketListenerConfig {
                name: "d".into(),
                buffer: 4096,
                groups: group_bit(GROUP_DESTROY),
                broadcast_error: true,
                pace: Some(2.0),
            }
        );
        assert!(SocketListenerConfig::parse("pace=0").is_err());
        assert!(SocketListenerConfig::parse("drain=1/s").is_err());
    }
}
