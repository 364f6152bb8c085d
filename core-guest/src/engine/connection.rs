//! Connection-level calls for proxies, which see connections rather than packets.
//!
//! A proxy knows that a connection opened, carried so many bytes each way and closed; the table
//! and its events must look exactly as if the kernel had watched the packets. So each call is
//! turned into the segments a TCP stack would have sent (handshake, one segment per 65 000 bytes
//! of data and the peer's ACK of it, FIN exchange or reset), or the datagrams of other protocols
//! (one per datagram a proxy relays, up to 65 507 bytes: what an IPv4 UDP datagram can carry),
//! and run through the packet path after parsing (`track`): one code path, the same entries,
//! the same events. The segments are built
//! as the parser's output, not as bytes: no buffer, no checksum, no parse, and a length that
//! stands for the payload.
//!
//! A `transfer` of many segments costs the same as one of a few: once one data-and-ACK exchange
//! has left the entry as the previous one did, only moved along the sender's sequence space (the
//! steady state of a bulk transfer), the remaining exchanges are applied at once
//! ([`Tracker::repeat_exchange`]) and only the last one, which carries the remainder, is run
//! through the tracker again. A test checks the result byte for byte against running every
//! segment.

use super::table::{Entry, Life};
use super::{Tracker, Verdict};
use crate::proto::tcp::{TcpSegment, flag};
use crate::proto::{ProtoState, Segment};
use crate::stats::Stats;
use crate::tuple::{Direction, Family, L4Tuple, Tuple, ipproto};

/// Why a connection-level call was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnError {
    UnknownId,
    TableFull,
    BadTuple,
}

/// One connection-level call of a batch ([`Tracker::connection_calls`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnCall {
    /// See [`Tracker::open_with`].
    Open {
        zone: u16,
        tuple: Tuple,
        first_bytes: u64,
    },
    Transfer {
        conn: ConnRef,
        dir: Direction,
        bytes: u64,
    },
    Close {
        conn: ConnRef,
        ending: Ending,
    },
    /// A call the caller could not read (a tuple of two address families, say): it fails with
    /// this error and keeps its place, so the indices of the calls after it still hold.
    Unreadable(ConnError),
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ending {
    /// An orderly close, whose first FIN went in this direction.
    Fin { first: Direction },
    /// A reset, sent in this direction.
    Reset { from: Direction },
}

impl Ending {
    /// The client (the original direction) closed first: what a proxy sees most.
    pub const CLIENT_FIN: Ending = Ending::Fin {
        first: Direction::Original,
    };
    /// The client reset the connection.
    pub const CLIENT_RESET: Ending = Ending::Reset {
        from: Direction::Original,
    };
}

/// A connection named in a batch: a live one by its handle, or as the one the batch's open at
/// this index opened (so a batch can open a connection and carry its data at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnRef {
    Live(ConnHandle),
    Opened(u32),
}

/// One connection: its id and when it started. Ids are drawn again once an entry is gone; the
/// pair names one connection, never a later one that drew the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnHandle {
    pub id: u32,
    pub start_ns: u64,
}

/// The window every synthetic segment advertises (no scaling is negotiated).
const WINDOW: u16 = 65_535;
/// Data per synthetic TCP segment: what an IPv4 total length can describe, rounded down.
pub(crate) const SEGMENT_BYTES: u64 = 65_000;
/// Data per synthetic datagram (UDP, ICMP, others): the most an IPv4 UDP datagram carries, so
/// a datagram a proxy relays is one datagram here too.
pub(crate) const DATAGRAM_BYTES: u64 = 65_507;

/// How much data one synthetic packet of `proto` carries at most.
fn packet_bytes(proto: u8) -> u64 {
    match proto {
        ipproto::TCP => SEGMENT_BYTES,
        _ => DATAGRAM_BYTES,
    }
}

impl Tracker {
    /// Opens a connection: the handshake (TCP) or an empty first packet (other protocols) in
    /// `zone`; [`Tracker::open_with`] with no first bytes.
    pub fn open(&mut self, now_ns: u64, zone: u16, tuple: &Tuple) -> Result<u32, ConnError> {
        self.open_with(now_ns, zone, tuple, 0).map(|h| h.id)
    }

    /// Opens a connection whose client sent `first_bytes` first: for TCP the handshake, then
    /// those bytes as a `transfer` in the original direction; for other protocols the first
    /// datagram, carrying them (what a UDP proxy sees: a datagram from a new client), and
    /// more datagrams only for what one cannot carry. Answers with the connection's handle.
    pub fn open_with(
        &mut self,
        now_ns: u64,
        zone: u16,
        tuple: &Tuple,
        first_bytes: u64,
    ) -> Result<ConnHandle, ConnError> {
        tuple.invert().ok_or(ConnError::BadTuple)?;
        check_tuple(tuple)?;
        let (first, rest) = match tuple.proto {
            ipproto::TCP => (Synthetic::tcp(1, 0, flag::SYN, 0), first_bytes),
            _ => {
                let carried = first_bytes.min(DATAGRAM_BYTES);
                (Synthetic::data(carried as u32), first_bytes - carried)
            }
        };
        let verdict = self.feed(now_ns, zone, tuple, first);
        match verdict {
            Verdict::Drop => return Err(ConnError::TableFull),
            Verdict::Invalid | Verdict::Untracked => return Err(ConnError::BadTuple),
            _ => {}
        }
        let (slot, _) = self.table.find(zone, tuple).ok_or(ConnError::BadTuple)?;
        let e = self.table.entry(slot);
        let handle = ConnHandle {
            id: e.id,
            start_ns: e.start_ns,
        };
        if tuple.proto == ipproto::TCP && verdict == Verdict::New {
            // The rest of the handshake goes to the new entry directly.
            let conn = self.conn_at(slot);
            let synack = Synthetic::tcp(1, 2, flag::SYN | flag::ACK, 0);
            self.feed_conn(now_ns, &conn, Direction::Reply, synack);
            let ack = Synthetic::tcp(2, 2, flag::ACK, 0);
            self.feed_conn(now_ns, &conn, Direction::Original, ack);
        }
        if rest > 0 {
            let conn = self.conn_at(slot);
            self.transfer_conn(now_ns, &conn, Direction::Original, rest);
        }
        Ok(handle)
    }

    /// `bytes` of data carried in direction `dir` of connection `id`: for TCP one segment per
    /// [`SEGMENT_BYTES`] (at least one), each acknowledged by the peer; for other protocols
    /// one datagram per [`DATAGRAM_BYTES`] (at least one). In constant time.
    pub fn transfer(
        &mut self,
        now_ns: u64,
        id: u32,
        dir: Direction,
        bytes: u64,
    ) -> Result<(), ConnError> {
        let conn = self.live_conn(id)?;
        self.transfer_conn(now_ns, &conn, dir, bytes);
        Ok(())
    }

    fn transfer_conn(&mut self, now_ns: u64, conn: &Conn, dir: Direction, bytes: u64) {
        let size = packet_bytes(conn.orig.proto);
        let segments = bytes.div_ceil(size).max(1);
        let last = bytes - (segments - 1) * size;
        let full = size as u32;
        let mut sent = 1;
        if segments > 3 {
            // Two full exchanges; if the second left the entry as the first did, moved along,
            // the ones before the last are applied at once.
            self.exchange(now_ns, conn, dir, full);
            let before = self.connection_image(conn.slot);
            self.exchange(now_ns, conn, dir, full);
            sent = 3;
            if self.repeat_exchange(&before, segments - 3) {
                sent = segments;
            }
        }
        while sent < segments {
            self.exchange(now_ns, conn, dir, full);
            sent += 1;
        }
        self.exchange(now_ns, conn, dir, last as u32);
    }

    /// Closes connection `id` as it ended (TCP): the FIN exchange of an orderly close started
    /// by one side (its FIN, the other's FIN, its ACK of that), or one side's reset. Other
    /// protocols have no close on the wire; their entry is ended as `conntrack -D` would.
    pub fn close(&mut self, now_ns: u64, id: u32, ending: Ending) -> Result<(), ConnError> {
        let conn = self.live_conn(id)?;
        self.close_conn(now_ns, &conn, ending);
        Ok(())
    }

    fn close_conn(&mut self, now_ns: u64, conn: &Conn, ending: Ending) {
        if conn.orig.proto != ipproto::TCP {
            let id = self.table.entry(conn.slot).id;
            self.delete_id(now_ns, id);
            return;
        }
        match ending {
            Ending::Reset { from } => self.segment(now_ns, conn, from, flag::RST | flag::ACK, 0),
            Ending::Fin { first } => {
                self.segment(now_ns, conn, first, flag::FIN | flag::ACK, 0);
                self.segment(now_ns, conn, first.opposite(), flag::FIN | flag::ACK, 0);
                self.segment(now_ns, conn, first, flag::ACK, 0);
            }
        }
    }

    /// Runs `calls` in order at `now_ns`, appending each one's outcome to `results`: the
    /// connection it opened or acted on. This is what a proxy that gathers its connections'
    /// calls pays one boundary crossing for; each call does what the single call does, and a
    /// handle of a connection that is no longer the live one with its id is refused
    /// ([`ConnError::UnknownId`]), as is a [`ConnRef::Opened`] that names no open before it
    /// that succeeded.
    pub fn connection_calls(
        &mut self,
        now_ns: u64,
        calls: &[ConnCall],
        results: &mut Vec<Result<ConnHandle, ConnError>>,
    ) {
        let first = results.len();
        for (index, call) in calls.iter().enumerate() {
            // The handle a call names, then its live connection (one lookup).
            let done = &results[first..];
            let handle = |conn: ConnRef| match conn {
                ConnRef::Live(h) => Ok(h),
                ConnRef::Opened(i) if (i as usize) < index => {
                    match (calls[i as usize], done[i as usize]) {
                        (ConnCall::Open { .. }, Ok(h)) => Ok(h),
                        _ => Err(ConnError::UnknownId),
                    }
                }
                ConnRef::Opened(_) => Err(ConnError::UnknownId),
            };
            let outcome = match *call {
                ConnCall::Open {
                    zone,
                    tuple,
                    first_bytes,
                } => self.open_with(now_ns, zone, &tuple, first_bytes),
                ConnCall::Transfer { conn, dir, bytes } => handle(conn).and_then(|h| {
                    let conn = self.handle_conn(h)?;
                    self.transfer_conn(now_ns, &conn, dir, bytes);
                    Ok(h)
                }),
                ConnCall::Close { conn, ending } => handle(conn).and_then(|h| {
                    let conn = self.handle_conn(h)?;
                    self.close_conn(now_ns, &conn, ending);
                    Ok(h)
                }),
                ConnCall::Unreadable(e) => Err(e),
            };
            results.push(outcome);
        }
    }

    /// When the live connection `id` started: its entry's creation instant, `None` if no live
    /// entry has this id. Ids are unique among live and dying entries but are drawn again once
    /// an entry is gone, so a host that keeps connections by id keeps the start with it and
    /// checks it here before acting: the pair names one connection, never a later one that drew
    /// the same id.
    pub fn connection_start(&self, id: u32) -> Option<u64> {
        let e = self.table.entry(self.table.slot_of(id)?);
        (e.life == Life::Live).then_some(e.start_ns)
    }

    /// The live connection `h` names: the one with its id, if it started when `h` says.
    fn handle_conn(&self, h: ConnHandle) -> Result<Conn, ConnError> {
        let conn = self.live_conn(h.id)?;
        match self.table.entry(conn.slot).start_ns == h.start_ns {
            true => Ok(conn),
            false => Err(ConnError::UnknownId),
        }
    }

    fn live_conn(&self, id: u32) -> Result<Conn, ConnError> {
        let slot = self.table.slot_of(id).ok_or(ConnError::UnknownId)?;
        match self.table.entry(slot).life {
            Life::Live => Ok(self.conn_at(slot)),
            _ => Err(ConnError::UnknownId),
        }
    }

    fn conn_at(&self, slot: u32) -> Conn {
        let e = self.table.entry(slot);
        Conn {
            slot,
            generation: e.generation,
            zone: e.zone,
            orig: e.orig,
            reply: e.reply(),
        }
    }

    /// One data segment of `payload` bytes in `dir` and, for TCP, the peer's ACK of it (as a
    /// stack would send, which also opens the window for the next one).
    fn exchange(&mut self, now_ns: u64, conn: &Conn, dir: Direction, payload: u32) {
        if conn.orig.proto != ipproto::TCP {
            self.feed_conn(now_ns, conn, dir, Synthetic::data(payload));
            return;
        }
        self.segment(now_ns, conn, dir, flag::ACK | flag::PSH, payload);
        self.segment(now_ns, conn, dir.opposite(), flag::ACK, 0);
    }

    /// The next TCP segment in `dir` of connection `conn`, numbered where its entry's
    /// bookkeeping says that direction's data ends, acknowledging all the other's.
    fn segment(&mut self, now_ns: u64, conn: &Conn, dir: Direction, flags: u8, payload: u32) {
        let (seq, ack) = match &self.table.entry(conn.slot).proto {
            ProtoState::Tcp(c) if self.table.entry(conn.slot).generation == conn.generation => (
                c.seen[dir.index()].td_end,
                c.seen[dir.opposite().index()].td_end,
            ),
            _ => (0, 0),
        };
        self.feed_conn(now_ns, conn, dir, Synthetic::tcp(seq, ack, flags, payload));
    }

    /// Runs `seg` on connection `conn` in `dir` through the packet path. While the connection
    /// still has its entry, the packet goes to it directly; if the entry has gone (it timed out
    /// before this call), the packet is looked up as any other.
    fn feed_conn(&mut self, now_ns: u64, conn: &Conn, dir: Direction, seg: Synthetic) -> Verdict {
        let tuple = match dir {
            Direction::Original => conn.orig,
            Direction::Reply => conn.reply,
        };
        let segment = seg.parsed(&tuple);
        self.advance(now_ns);
        let e = self.table.entry(conn.slot);
        let verdict = if e.generation == conn.generation && e.is_live() {
            match self.track_in(conn.slot, dir, false, now_ns, &segment) {
                Some(verdict) => verdict,
                None => self.track(now_ns, conn.zone, tuple, &segment),
            }
        } else {
            self.track(now_ns, conn.zone, tuple, &segment)
        };
        self.count_verdict(verdict)
    }

    /// Runs the segment `seg` on `tuple` through the packet path, as `ingest` runs a parsed
    /// packet.
    fn feed(&mut self, now_ns: u64, zone: u16, tuple: &Tuple, seg: Synthetic) -> Verdict {
        let segment = seg.parsed(tuple);
        self.ingest_parsed(now_ns, zone, *tuple, &segment)
    }

    /// What the connection in `slot` looks like now, for [`Tracker::repeat_exchange`].
    fn connection_image(&self, slot: u32) -> ConnectionImage {
        ConnectionImage {
            slot,
            entry: self.table.entry(slot).clone(),
            stats: self.stats(),
            queued: self.pending_events(),
        }
    }

    /// Applies `times` more exchanges like the one that took the connection from `before` to
    /// now, if that exchange was a steady one: it only added to the counters and to the `found`
    /// statistic, and moved one direction's sequence numbers along (see
    /// [`crate::proto::tcp::TcpConn::moved_from`]), raising no event and leaving the timeout
    /// where it was. Then the next exchange, fed the numbers the last one left, would do the
    /// same again, and `times` of them add `times` times as much. Returns false, changing
    /// nothing, when the exchange was not steady.
    fn repeat_exchange(&mut self, before: &ConnectionImage, times: u64) -> bool {
        let stats = self.stats();
        let only_found = Stats {
            found: stats.found,
            ..before.stats
        };
        if self.pending_events() != before.queued || only_found != stats {
            return false;
        }
        let now = self.table.entry(before.slot);
        let move_along = match (&before.entry.proto, &now.proto) {
            (ProtoState::Tcp(then), ProtoState::Tcp(tcp)) => match tcp.moved_from(then) {
                Some(moved) => Some(moved),
                None => return false,
            },
            (then, proto) if then == proto => None,
            _ => return false,
        };
        let unchanged = Entry {
            counters: now.counters,
            proto: now.proto.clone(),
            ..before.entry.clone()
        };
        if unchanged != *now {
            return false;
        }
        let e = self.table.entry_mut(before.slot);
        for (c, then) in e.counters.iter_mut().zip(before.entry.counters) {
            c.packets = c
                .packets
                .wrapping_add(c.packets.wrapping_sub(then.packets).wrapping_mul(times));
            c.bytes = c
                .bytes
                .wrapping_add(c.bytes.wrapping_sub(then.bytes).wrapping_mul(times));
        }
        if let (ProtoState::Tcp(tcp), Some((side, step))) = (&mut e.proto, move_along) {
            tcp.move_along(side, step.wrapping_mul(times as u32));
        }
        let found = stats.found.wrapping_sub(before.stats.found);
        self.stats.found = self.stats.found.wrapping_add(found.wrapping_mul(times));
        true
    }
}

/// A tuple the packet path could have read from a packet: TCP, UDP and UDP-Lite have ports
/// (and GRE its keys in their place), ICMP and ICMPv6 a query key, other protocols neither.
fn check_tuple(tuple: &Tuple) -> Result<(), ConnError> {
    let keyed = matches!(
        tuple.proto,
        ipproto::TCP | ipproto::UDP | ipproto::UDPLITE | ipproto::GRE
    );
    let fits = match tuple.l4 {
        L4Tuple::Ports { .. } => keyed,
        L4Tuple::Icmp { .. } => match tuple.family {
            Family::Ipv4 => tuple.proto == ipproto::ICMP,
            Family::Ipv6 => tuple.proto == ipproto::ICMPV6,
        },
        L4Tuple::None => !keyed && !matches!(tuple.proto, ipproto::ICMP | ipproto::ICMPV6),
    };
    if fits {
        Ok(())
    } else {
        Err(ConnError::BadTuple)
    }
}

/// A live connection: where its entry is (the slot's generation tells a slot since reused
/// apart) and its tuples.
#[derive(Clone, Copy, Debug)]
struct Conn {
    slot: u32,
    generation: u32,
    zone: u16,
    orig: Tuple,
    reply: Tuple,
}

/// A connection's entry with what the tracker around it looked like.
struct ConnectionImage {
    slot: u32,
    entry: Entry,
    stats: Stats,
    queued: usize,
}

/// One synthetic segment: TCP's numbers and flags, and how much data it stands for.
#[derive(Clone, Copy, Debug)]
struct Synthetic {
    seq: u32,
    ack: u32,
    flags: u8,
    payload: u32,
}

impl Synthetic {
    fn tcp(seq: u32, ack: u32, flags: u8, payload: u32) -> Synthetic {
        Synthetic {
            seq,
            ack,
            flags,
            payload,
        }
    }
    fn data(payload: u32) -> Synthetic {
        Synthetic::tcp(0, 0, 0, payload)
    }

    /// The segment as the parser would have read it from its packet on `tuple`: the IP and
    /// layer-4 headers without options, the payload stood in for by the length alone.
    fn parsed(self, tuple: &Tuple) -> Segment<'static> {
        let l3 = match tuple.family {
            Family::Ipv4 => 20,
            Family::Ipv6 => 40,
        };
        let l4 = match tuple.l4 {
            L4Tuple::Ports { .. } if tuple.proto == ipproto::TCP => 20,
            L4Tuple::Ports { .. } | L4Tuple::Icmp { .. } => 8,
            L4Tuple::None => 0,
        };
        Segment {
            wire_len: l3 + l4 + self.payload,
            tcp: (tuple.proto == ipproto::TCP).then_some(TcpSegment {
                seq: self.seq,
                ack: self.ack,
                sack: self.ack,
                flags: self.flags,
                window: WINDOW,
                wscale: None,
                sack_perm: false,
                payload_len: self.payload,
            }),
            sctp: None,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The connection calls against a reference that builds every segment as bytes, one per
    //! 65 000 bytes of data, and feeds them to `ingest` as a capture would be fed: the same
    //! snapshot (every field of every entry, the timers, the queued messages) after every call.

    use proptest::prelude::*;

    use super::*;
    use crate::config::Config;
    use crate::wire::build;

    fn tracker() -> Tracker {
        let mut config = Config::default();
        config.sysctls.acct = true;
        config.sysctls.timestamp = true;
        let mut t = Tracker::new(config);
        t.set_listeners(true, true);
        t
    }

    /// The packet `seg` stands for, as bytes.
    fn packet(tuple: &Tuple, seg: Synthetic) -> Vec<u8> {
        let l4 = match (tuple.proto, tuple.l4) {
            (ipproto::TCP, L4Tuple::Ports { src, dst }) => {
                build::tcp(src, dst, seg.seq, seg.ack, seg.flags, WINDOW, 0)
            }
            (ipproto::UDP, L4Tuple::Ports { src, dst }) => build::udp(src, dst, 0),
            (ipproto::ICMP, L4Tuple::Icmp { id, kind, .. }) => build::icmp_echo(kind == 8, id, 1),
            (ipproto::ICMPV6, L4Tuple::Icmp { id, kind, .. }) => {
                build::icmpv6_echo(kind == 128, id, 1)
            }
            _ => Vec::new(),
        };
        let mut packet = match tuple.family {
            Family::Ipv4 => {
                let s: [u8; 4] = tuple.src.0[..4].try_into().unwrap();
                let d: [u8; 4] = tuple.dst.0[..4].try_into().unwrap();
                build::ipv4(s, d, tuple.proto, &l4)
            }
            Family::Ipv6 => build::ipv6(tuple.src.0, tuple.dst.0, tuple.proto, &l4),
        };
        // The payload is stood in for by the IP length alone.
        let stated = packet.len() as u64 + u64::from(seg.payload);
        match tuple.family {
            Family::Ipv4 => packet[2..4].copy_from_slice(&(stated as u16).to_be_bytes()),
            Family::Ipv6 => packet[4..6].copy_from_slice(&((stated - 40) as u16).to_be_bytes()),
        }
        packet
    }

    /// `td_end` of both directions of a TCP entry.
    fn tcp_ends(t: &Tracker, id: u32) -> Option<[u32; 2]> {
        match &t.table.entry(t.table.slot_of(id)?).proto {
            ProtoState::Tcp(c) => Some([c.seen[0].td_end, c.seen[1].td_end]),
            _ => None,
        }
    }

    /// The reference: every segment as bytes through `ingest`.
    struct Reference(Tracker);

    impl Reference {
        fn send(&mut self, now: u64, zone: u16, tuple: &Tuple, seg: Synthetic) -> Verdict {
            self.0.ingest(now, zone, &packet(tuple, seg))
        }
        fn seq(&self, id: u32, dir: Direction) -> (u32, u32) {
            let ends = tcp_ends(&self.0, id).unwrap_or_default();
            (ends[dir.index()], ends[dir.opposite().index()])
        }
        /// The handshake or first datagram, then what the first datagram could not carry.
        fn open(&mut self, now: u64, zone: u16, t: &Tuple, first_bytes: u64) -> Option<u32> {
            let id = self.open_empty(now, zone, t, first_bytes)?;
            let rest = match t.proto {
                ipproto::TCP => first_bytes,
                _ => first_bytes.saturating_sub(DATAGRAM_BYTES),
            };
            if rest > 0 {
                self.transfer(now, zone, t, id, Direction::Original, rest);
            }
            Some(id)
        }
        fn open_empty(&mut self, now: u64, zone: u16, t: &Tuple, first_bytes: u64) -> Option<u32> {
            let reply = t.invert()?;
            let v = if t.proto == ipproto::TCP {
                let v = self.send(now, zone, t, Synthetic::tcp(1, 0, flag::SYN, 0));
                if v == Verdict::New {
                    self.send(
                        now,
                        zone,
                        &reply,
                        Synthetic::tcp(1, 2, flag::SYN | flag::ACK, 0),
                    );
                    self.send(now, zone, t, Synthetic::tcp(2, 2, flag::ACK, 0));
                }
                v
            } else {
                let carried = first_bytes.min(DATAGRAM_BYTES) as u32;
                self.send(now, zone, t, Synthetic::data(carried))
            };
            matches!(
                v,
                Verdict::New | Verdict::Established | Verdict::EstablishedReply
            )
            .then(|| self.0.lookup(zone, t).map(|e| e.id))
            .flatten()
        }
        fn transfer(
            &mut self,
            now: u64,
            zone: u16,
            orig: &Tuple,
            id: u32,
            dir: Direction,
            bytes: u64,
        ) {
            let reply = orig.invert().unwrap();
            let (tuple, peer) = match dir {
                Direction::Original => (*orig, reply),
                Direction::Reply => (reply, *orig),
            };
            let mut left = bytes;
            loop {
                let size = match orig.proto {
                    ipproto::TCP => SEGMENT_BYTES,
                    _ => DATAGRAM_BYTES,
                };
                let chunk = left.min(size) as u32;
                if orig.proto == ipproto::TCP {
                    let (seq, ack) = self.seq(id, dir);
                    self.send(
                        now,
                        zone,
                        &tuple,
                        Synthetic::tcp(seq, ack, flag::ACK | flag::PSH, chunk),
                    );
                    let (seq, ack) = self.seq(id, dir.opposite());
                    self.send(now, zone, &peer, Synthetic::tcp(seq, ack, flag::ACK, 0));
                } else {
                    self.send(now, zone, &tuple, Synthetic::data(chunk));
                }
                left -= u64::from(chunk);
                if left == 0 {
                    return;
                }
            }
        }
        fn close(&mut self, now: u64, zone: u16, orig: &Tuple, id: u32, ending: Ending) {
            if orig.proto != ipproto::TCP {
                self.0.delete_id(now, id);
                return;
            }
            let reply = orig.invert().unwrap();
            let on = |dir: Direction| match dir {
                Direction::Original => *orig,
                Direction::Reply => reply,
            };
            let send = |r: &mut Reference, dir: Direction, flags: u8| {
                let (seq, ack) = r.seq(id, dir);
                r.send(now, zone, &on(dir), Synthetic::tcp(seq, ack, flags, 0));
            };
            match ending {
                Ending::Reset { from } => send(self, from, flag::RST | flag::ACK),
                Ending::Fin { first } => {
                    send(self, first, flag::FIN | flag::ACK);
                    send(self, first.opposite(), flag::FIN | flag::ACK);
                    send(self, first, flag::ACK);
                }
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Call {
        Open {
            conn: usize,
            first_bytes: u64,
        },
        Transfer {
            conn: usize,
            reply: bool,
            bytes: u64,
        },
        Close {
            conn: usize,
            ending: Ending,
        },
        Wait {
            ms: u64,
        },
    }

    fn conn_tuple(i: usize) -> Tuple {
        let v6 = i % 2 == 1;
        let (family, src, dst) = if v6 {
            let mut s = [0u8; 16];
            s[0] = 0xfd;
            s[15] = i as u8 + 1;
            let mut d = s;
            d[15] = 200;
            (Family::Ipv6, crate::tuple::Addr(s), crate::tuple::Addr(d))
        } else {
            (
                Family::Ipv4,
                crate::tuple::Addr::v4([10, 0, 0, i as u8 + 1]),
                crate::tuple::Addr::v4([10, 0, 1, 1]),
            )
        };
        let (proto, l4) = match i % 8 {
            0..=3 => (
                ipproto::TCP,
                L4Tuple::Ports {
                    src: 40_000 + i as u16,
                    dst: 443,
                },
            ),
            4 | 5 => (
                ipproto::UDP,
                L4Tuple::Ports {
                    src: 50_000 + i as u16,
                    dst: 53,
                },
            ),
            6 => (
                ipproto::ICMP,
                L4Tuple::Icmp {
                    id: i as u16,
                    kind: 8,
                    code: 0,
                },
            ),
            _ => (
                ipproto::ICMPV6,
                L4Tuple::Icmp {
                    id: i as u16,
                    kind: 128,
                    code: 0,
                },
            ),
        };
        let family = if proto == ipproto::ICMP {
            Family::Ipv4
        } else {
            family
        };
        let (src, dst) = if proto == ipproto::ICMP {
            (
                crate::tuple::Addr::v4([10, 0, 0, i as u8 + 1]),
                crate::tuple::Addr::v4([10, 0, 1, 1]),
            )
        } else {
            (src, dst)
        };
        let family = if proto == ipproto::ICMPV6 {
            Family::Ipv6
        } else {
            family
        };
        Tuple {
            family,
            src,
            dst,
            proto,
            l4,
        }
    }

    fn byte_count() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(SEGMENT_BYTES - 1),
            Just(SEGMENT_BYTES),
            Just(SEGMENT_BYTES + 1),
            Just(DATAGRAM_BYTES),
            Just(DATAGRAM_BYTES + 1),
            Just(3 * SEGMENT_BYTES),
            Just(3 * SEGMENT_BYTES + 1),
            Just(4 * SEGMENT_BYTES),
            1..200 * SEGMENT_BYTES,
        ]
    }

    fn call() -> impl Strategy<Value = Call> {
        let conn = 0usize..8;
        prop_oneof![
            1 => (conn.clone(), prop_oneof![Just(0), byte_count()])
                .prop_map(|(conn, first_bytes)| Call::Open { conn, first_bytes }),
            6 => (conn.clone(), any::<bool>(), byte_count())
                .prop_map(|(conn, reply, bytes)| Call::Transfer { conn, reply, bytes }),
            1 => (conn, any::<bool>(), any::<bool>()).prop_map(|(conn, reset, by_client)| {
                let side = if by_client { Direction::Original } else { Direction::Reply };
                let ending = if reset {
                    Ending::Reset { from: side }
                } else {
                    Ending::Fin { first: side }
                };
                Call::Close { conn, ending }
            }),
            1 => prop_oneof![0u64..2_000, 0u64..200_000].prop_map(|ms| Call::Wait { ms }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn the_calls_leave_the_table_as_every_segment_through_ingest_would(
            calls in proptest::collection::vec(call(), 1..40)
        ) {
            let (mut fast, mut slow) = (tracker(), Reference(tracker()));
            let mut ids: [Option<u32>; 8] = [None; 8];
            let mut now = 1_000_000_000u64;
            let opens = (0..8).map(|conn| Call::Open { conn, first_bytes: 0 });
            for call in opens.chain(calls) {
                match call {
                    Call::Open { conn, first_bytes } => {
                        let t = conn_tuple(conn);
                        let got = fast.open_with(now, 1, &t, first_bytes).ok().map(|h| h.id);
                        prop_assert_eq!(got, slow.open(now, 1, &t, first_bytes));
                        ids[conn] = got;
                    }
                    Call::Transfer { conn, reply, bytes } => {
                        let Some(id) = ids[conn] else { continue };
                        let dir = if reply { Direction::Reply } else { Direction::Original };
                        let orig = conn_tuple(conn);
                        let live = slow.0.get(id).is_some_and(|e| !e.dying && e.orig == orig);
                        let got = fast.transfer(now, id, dir, bytes);
                        prop_assert_eq!(got.is_ok(), live);
                        if live {
                            slow.transfer(now, 1, &orig, id, dir, bytes);
                        }
                    }
                    Call::Close { conn, ending } => {
                        let Some(id) = ids[conn] else { continue };
                        let orig = conn_tuple(conn);
                        let live = slow.0.get(id).is_some_and(|e| !e.dying && e.orig == orig);
                        prop_assert_eq!(fast.close(now, id, ending).is_ok(), live);
                        if live {
                            slow.close(now, 1, &orig, id, ending);
                        }
                    }
                    Call::Wait { ms } => {
                        now += ms * 1_000_000;
                        fast.advance(now);
                        slow.0.advance(now);
                    }
                }
                prop_assert!(fast.snapshot() == slow.0.snapshot(), "the tables differ after a call");
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let n = fast.take_events(usize::MAX, &mut a);
                prop_assert_eq!(n, slow.0.take_events(usize::MAX, &mut b));
                prop_assert!(a == b, "the events differ");
                fast.report_delivery(&vec![crate::engine::Delivery::Delivered; n]);
                slow.0.report_delivery(&vec![crate::engine::Delivery::Delivered; n]);
            }
        }
    }

    #[test]
    fn a_transfer_of_many_segments_is_carried_forward_not_run_segment_by_segment() {
        let mut t = tracker();
        let orig = conn_tuple(0);
        let id = t.open(1, 0, &orig).unwrap();
        let found = t.stats().found;
        // 10 GiB: 165 202 segments and as many ACKs.
        t.transfer(2, id, Direction::Original, 10 << 30).unwrap();
        let e = t.get(id).unwrap();
        let segments = (10u64 << 30).div_ceil(SEGMENT_BYTES);
        assert_eq!(
            e.counters_orig.packets,
            1 + 1 + segments,
            "SYN, ACK, the data"
        );
        assert_eq!(e.counters_reply.packets, 1 + segments, "SYN-ACK, the ACKs");
        assert_eq!(
            e.counters_orig.bytes,
            40 + 40 + segments * 40 + (10 << 30),
            "every segment's headers and the data"
        );
        assert_eq!(t.stats().found, found + 2 * segments);
        // The sequence numbers moved by the data, modulo 2^32, as a stack's would.
        let ends = tcp_ends(&t, id).unwrap();
        assert_eq!(ends[0], 2u32.wrapping_add((10u64 << 30) as u32));
    }

    #[test]
    fn a_datagram_opens_its_flow_carrying_its_bytes_as_one_packet() {
        let udp = conn_tuple(4);
        assert_eq!(udp.proto, ipproto::UDP);
        for (first, packets) in [
            (0u64, 1u64),
            (512, 1),
            (DATAGRAM_BYTES, 1),
            (DATAGRAM_BYTES + 1, 2),
        ] {
            let mut t = tracker();
            let h = t.open_with(1, 0, &udp, first).unwrap();
            let e = t.get(h.id).unwrap();
            assert_eq!(e.counters_orig.packets, packets, "{first} bytes");
            assert_eq!(e.counters_orig.bytes, packets * 28 + first, "{first} bytes");
            assert_eq!(e.counters_reply.packets, 0);
        }
        // TCP: the handshake, then the first bytes as a transfer.
        let tcp = conn_tuple(0);
        let (mut a, mut b) = (tracker(), tracker());
        let h = a.open_with(1, 0, &tcp, 1_000).unwrap();
        let id = b.open(1, 0, &tcp).unwrap();
        b.transfer(1, id, Direction::Original, 1_000).unwrap();
        assert_eq!(
            a.get(h.id).map(|e| (e.counters_orig, e.counters_reply)),
            b.get(id).map(|e| (e.counters_orig, e.counters_reply))
        );
    }

    #[test]
    fn a_bulk_exchange_is_steady_in_every_protocol_and_direction() {
        for conn in 0..8 {
            for dir in [Direction::Original, Direction::Reply] {
                let mut t = tracker();
                let orig = conn_tuple(conn);
                let id = t.open(1, 0, &orig).unwrap();
                let full = SEGMENT_BYTES as u32;
                let conn = t.live_conn(id).unwrap();
                t.exchange(1, &conn, dir, full);
                let before = t.connection_image(conn.slot);
                t.exchange(1, &conn, dir, full);
                assert!(t.repeat_exchange(&before, 5), "{orig:?} {dir:?}");
            }
        }
    }

    #[test]
    fn a_batch_does_what_its_calls_do_one_by_one() {
        let (mut batched, mut single) = (tracker(), tracker());
        let now = 5_000_000_000;
        let (a, b) = (conn_tuple(0), conn_tuple(4));
        let calls = [
            ConnCall::Open {
                zone: 2,
                tuple: a,
                first_bytes: 0,
            },
            ConnCall::Open {
                zone: 2,
                tuple: b,
                first_bytes: 0,
            },
            ConnCall::Transfer {
                conn: ConnRef::Opened(0),
                dir: Direction::Original,
                bytes: 700,
            },
            ConnCall::Transfer {
                conn: ConnRef::Opened(0),
                dir: Direction::Reply,
                bytes: 9 << 20,
            },
            ConnCall::Transfer {
                conn: ConnRef::Opened(1),
                dir: Direction::Reply,
                bytes: 1,
            },
            ConnCall::Close {
                conn: ConnRef::Opened(0),
                ending: Ending::CLIENT_FIN,
            },
            ConnCall::Close {
                conn: ConnRef::Opened(1),
                ending: Ending::Reset {
                    from: Direction::Reply,
                },
            },
        ];
        let mut results = vec![Err(ConnError::TableFull)];
        batched.connection_calls(now, &calls, &mut results);
        let (ida, idb) = (
            single.open(now, 2, &a).unwrap(),
            single.open(now, 2, &b).unwrap(),
        );
        single.transfer(now, ida, Direction::Original, 700).unwrap();
        single
            .transfer(now, ida, Direction::Reply, 9 << 20)
            .unwrap();
        single.transfer(now, idb, Direction::Reply, 1).unwrap();
        single.close(now, ida, Ending::CLIENT_FIN).unwrap();
        single
            .close(
                now,
                idb,
                Ending::Reset {
                    from: Direction::Reply,
                },
            )
            .unwrap();
        let (ha, hb) = (
            ConnHandle {
                id: ida,
                start_ns: now,
            },
            ConnHandle {
                id: idb,
                start_ns: now,
            },
        );
        assert_eq!(
            results,
            [
                Err(ConnError::TableFull),
                Ok(ha),
                Ok(hb),
                Ok(ha),
                Ok(ha),
                Ok(hb),
                Ok(ha),
                Ok(hb)
            ],
            "earlier results are kept"
        );
        assert!(batched.snapshot() == single.snapshot());
    }

    #[test]
    fn a_batch_that_names_no_connection_of_its_own_gets_unknown_id_and_goes_on() {
        let mut t = tracker();
        let fresh = tracker();
        let tuple = conn_tuple(0);
        let refused = Tuple { proto: 89, ..tuple };
        let stale = ConnHandle {
            id: 12345,
            start_ns: 0,
        };
        let calls = [
            // Names itself, a later call, a transfer, a refused open, an index past the end,
            // a connection that does not exist.
            ConnCall::Transfer {
                conn: ConnRef::Opened(0),
                dir: Direction::Original,
                bytes: 1,
            },
            ConnCall::Close {
                conn: ConnRef::Opened(5),
                ending: Ending::Reset {
                    from: Direction::Reply,
                },
            },
            ConnCall::Open {
                zone: 0,
                tuple: refused,
                first_bytes: 0,
            },
            ConnCall::Close {
                conn: ConnRef::Opened(2),
                ending: Ending::CLIENT_FIN,
            },
            ConnCall::Transfer {
                conn: ConnRef::Opened(0),
                dir: Direction::Reply,
                bytes: 1,
            },
            ConnCall::Close {
                conn: ConnRef::Opened(u32::MAX),
                ending: Ending::CLIENT_FIN,
            },
            ConnCall::Close {
                conn: ConnRef::Live(stale),
                ending: Ending::CLIENT_FIN,
            },
            ConnCall::Unreadable(ConnError::BadTuple),
        ];
        let mut results = Vec::new();
        t.connection_calls(1, &calls, &mut results);
        use ConnError::*;
        assert_eq!(
            results,
            [
                Err(UnknownId),
                Err(UnknownId),
                Err(BadTuple),
                Err(UnknownId),
                Err(UnknownId),
                Err(UnknownId),
                Err(UnknownId),
                Err(BadTuple)
            ]
        );
        assert!(
            t.snapshot() == fresh.snapshot(),
            "refused calls change nothing"
        );
        // An open after them works; a handle of the same id but another start does not.
        let mut results = Vec::new();
        t.connection_calls(
            2,
            &[ConnCall::Open {
                zone: 0,
                tuple,
                first_bytes: 0,
            }],
            &mut results,
        );
        let Ok(h) = results[0] else {
            panic!("{results:?}")
        };
        assert_eq!(h.start_ns, 2);
        let other = ConnHandle { start_ns: 1, ..h };
        let mut results = Vec::new();
        let close = |conn| ConnCall::Close {
            conn: ConnRef::Live(conn),
            ending: Ending::CLIENT_FIN,
        };
        t.connection_calls(3, &[close(other), close(h)], &mut results);
        assert_eq!(results, [Err(UnknownId), Ok(h)]);
    }
}
