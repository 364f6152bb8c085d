//! Connection-level calls for proxies, which see connections rather than packets.
//!
//! A proxy knows that a connection opened, carried so many bytes each way and closed; the table
//! and its events must look exactly as if the kernel had watched the packets. So each call is
//! turned into the packets a TCP stack would have sent (handshake, one segment per 64 KiB of
//! data and the peer's ACK of it, FIN exchange or reset) and fed through the ordinary packet path: one code path, the
//! same entries, the same events. The synthetic segments carry no payload bytes; their IP
//! length says how much data they stand for, which is all the trackers and counters read.

use crate::engine::{Tracker, Verdict};
use crate::proto::tcp::flag;
use crate::tuple::{Direction, Family, L4Tuple, Tuple, ipproto};
use crate::wire::build;

/// Why a connection-level call was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnError {
    UnknownId,
    TableFull,
    BadTuple,
}

const WINDOW: u16 = 65_535;
/// Data per synthetic segment: what an IPv4 total length can describe, rounded down.
const SEGMENT_BYTES: u64 = 65_000;

impl Tracker {
    /// Opens a connection: the handshake (TCP) or first packet (other protocols) in `zone`.
    pub fn open(&mut self, now_ns: u64, zone: u16, tuple: &Tuple) -> Result<u32, ConnError> {
        let reply = tuple.invert().ok_or(ConnError::BadTuple)?;
        let verdict = match tuple.proto {
            ipproto::TCP => {
                let v = self.feed(now_ns, zone, tuple, Segment::tcp(1, 0, flag::SYN, 0))?;
                if v == Verdict::New {
                    self.feed(
                        now_ns,
                        zone,
                        &reply,
                        Segment::tcp(1, 2, flag::SYN | flag::ACK, 0),
                    )?;
                    self.feed(now_ns, zone, tuple, Segment::tcp(2, 2, flag::ACK, 0))?;
                }
                v
            }
            _ => self.feed(now_ns, zone, tuple, Segment::data(0))?,
        };
        match verdict {
            Verdict::Drop => Err(ConnError::TableFull),
            Verdict::Invalid | Verdict::Untracked => Err(ConnError::BadTuple),
            _ => self
                .lookup(zone, tuple)
                .map(|e| e.id)
                .ok_or(ConnError::BadTuple),
        }
    }

    /// `bytes` of data carried in direction `dir` of connection `id`.
    pub fn transfer(
        &mut self,
        now_ns: u64,
        id: u32,
        dir: Direction,
        bytes: u64,
    ) -> Result<(), ConnError> {
        let (zone, orig) = self.live_conn(id)?;
        let tuple = self.directed(&orig, dir)?;
        let mut left = bytes;
        loop {
            let chunk = left.min(SEGMENT_BYTES);
            match orig.proto {
                ipproto::TCP => {
                    let (seq, ack) = self.next_seq(id, dir);
                    self.feed(
                        now_ns,
                        zone,
                        &tuple,
                        Segment::tcp(seq, ack, flag::ACK | flag::PSH, chunk as u32),
                    )?;
                    // The peer acknowledges each segment, as a stack would, which also opens
                    // the window for the next one.
                    let peer = self.directed(&orig, dir.opposite())?;
                    let (seq, ack) = self.next_seq(id, dir.opposite());
                    self.feed(now_ns, zone, &peer, Segment::tcp(seq, ack, flag::ACK, 0))?;
                }
                _ => {
                    self.feed(now_ns, zone, &tuple, Segment::data(chunk as u32))?;
                }
            }
            left -= chunk;
            if left == 0 {
                return Ok(());
            }
        }
    }

    /// Closes connection `id`: a reset, or the FIN exchange of an orderly close (TCP). Other
    /// protocols have no close on the wire; their entry is ended as `conntrack -D` would.
    pub fn close(&mut self, now_ns: u64, id: u32, reset: bool) -> Result<(), ConnError> {
        let (zone, orig) = self.live_conn(id)?;
        if orig.proto != ipproto::TCP {
            self.delete_id(now_ns, id);
            return Ok(());
        }
        let reply = self.directed(&orig, Direction::Reply)?;
        if reset {
            let (seq, ack) = self.next_seq(id, Direction::Original);
            self.feed(
                now_ns,
                zone,
                &orig,
                Segment::tcp(seq, ack, flag::RST | flag::ACK, 0),
            )?;
            return Ok(());
        }
        let (seq, ack) = self.next_seq(id, Direction::Original);
        self.feed(
            now_ns,
            zone,
            &orig,
            Segment::tcp(seq, ack, flag::FIN | flag::ACK, 0),
        )?;
        let (seq, ack) = self.next_seq(id, Direction::Reply);
        self.feed(
            now_ns,
            zone,
            &reply,
            Segment::tcp(seq, ack, flag::FIN | flag::ACK, 0),
        )?;
        let (seq, ack) = self.next_seq(id, Direction::Original);
        self.feed(now_ns, zone, &orig, Segment::tcp(seq, ack, flag::ACK, 0))?;
        Ok(())
    }

    /// When the live connection `id` started: its entry's creation instant, `None` if no live
    /// entry has this id. Ids are unique among live and dying entries but are drawn again once
    /// an entry is gone, so a host that keeps connections by id keeps the start with it and
    /// checks it here before acting: the pair names one connection, never a later one that drew
    /// the same id.
    pub fn connection_start(&self, id: u32) -> Option<u64> {
        self.get(id).filter(|e| !e.dying).map(|e| e.start_ns)
    }

    fn live_conn(&self, id: u32) -> Result<(u16, Tuple), ConnError> {
        match self.get(id) {
            Some(e) if !e.dying => Ok((e.zone, e.orig)),
            _ => Err(ConnError::UnknownId),
        }
    }

    fn directed(&self, orig: &Tuple, dir: Direction) -> Result<Tuple, ConnError> {
        match dir {
            Direction::Original => Ok(*orig),
            Direction::Reply => orig.invert().ok_or(ConnError::BadTuple),
        }
    }

    /// Builds the packet for `seg` on `tuple` and runs it through the packet path.
    fn feed(
        &mut self,
        now_ns: u64,
        zone: u16,
        tuple: &Tuple,
        seg: Segment,
    ) -> Result<Verdict, ConnError> {
        let l4 = match (tuple.proto, tuple.l4) {
            (ipproto::TCP, L4Tuple::Ports { src, dst }) => {
                build::tcp(src, dst, seg.seq, seg.ack, seg.flags, WINDOW, 0)
            }
            (ipproto::UDP, L4Tuple::Ports { src, dst }) => build::udp(src, dst, 0),
            (ipproto::ICMP, L4Tuple::Icmp { id, kind, .. }) => build::icmp_echo(kind == 8, id, 1),
            (ipproto::ICMPV6, L4Tuple::Icmp { id, kind, .. }) => {
                build::icmpv6_echo(kind == 128, id, 1)
            }
            (ipproto::TCP | ipproto::UDP | ipproto::ICMP | ipproto::ICMPV6, _) => {
                return Err(ConnError::BadTuple);
            }
            (_, _) => Vec::new(),
        };
        let mut packet = match tuple.family {
            Family::Ipv4 => {
                let s: [u8; 4] = tuple.src.0[..4].try_into().expect("four bytes");
                let d: [u8; 4] = tuple.dst.0[..4].try_into().expect("four bytes");
                build::ipv4(s, d, tuple.proto, &l4)
            }
            Family::Ipv6 => build::ipv6(tuple.src.0, tuple.dst.0, tuple.proto, &l4),
        };
        // Stand the payload in by the IP length alone (the buffer is "cut" after the header).
        let stated = packet.len() as u64 + seg.payload as u64;
        match tuple.family {
            Family::Ipv4 => {
                packet[2..4].copy_from_slice(&(stated.min(65_535) as u16).to_be_bytes())
            }
            Family::Ipv6 => {
                packet[4..6].copy_from_slice(&((stated - 40).min(65_535) as u16).to_be_bytes())
            }
        }
        Ok(self.ingest(now_ns, zone, &packet))
    }

    /// Sequence and acknowledgement numbers for the next segment in `dir`.
    fn next_seq(&self, id: u32, dir: Direction) -> (u32, u32) {
        self.tcp_ends(id)
            .map(|ends| (ends[dir.index()], ends[dir.opposite().index()]))
            .unwrap_or((0, 0))
    }
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    seq: u32,
    ack: u32,
    flags: u8,
    payload: u32,
}

impl Segment {
    fn tcp(seq: u32, ack: u32, flags: u8, payload: u32) -> Segment {
        Segment {
            seq,
            ack,
            flags,
            payload,
        }
    }
    fn data(payload: u32) -> Segment {
        Segment {
            seq: 0,
            ack: 0,
            flags: 0,
            payload,
        }
    }
}
