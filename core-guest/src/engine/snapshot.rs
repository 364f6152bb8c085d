//! [`Tracker::snapshot`] and [`Tracker::restore`]: the encoding of every part of the tracker
//! (the format's rationale is in `crate::snapshot`).

use super::ecache::{Ecache, Pending, Source};
use super::outbox::MAX_FRAME_LEN;
use super::table::{Entry, Life, NIL};
use super::*;
use crate::config::{RetryPolicy, Sysctls};
use crate::event::{ExpEventBits, SctpState};
use crate::netlink::Counters;
use crate::proto::generic::GenericConn;
use crate::proto::gre::GreConn;
use crate::proto::icmp::IcmpConn;
use crate::proto::sctp::SctpConn;
use crate::proto::tcp::{Class, Side, TcpConn};
use crate::proto::udp::UdpConn;
use crate::proto::udplite::UdpLiteConn;
use crate::snapshot::{self as format, Reader, SnapshotError, SnapshotError::Invalid, Writer};
use crate::tuple::{Addr, Family, L4Tuple};

impl Tracker {
    /// The tracker's whole state as bytes; [`Tracker::restore`] continues from them.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut w = Writer::default();
        format::begin(&mut w);
        write_config(&mut w, &self.config);
        let table = &self.table;
        w.u64(table.slab.len() as u64);
        for e in &table.slab {
            write_entry(&mut w, e);
        }
        w.u64(table.free.len() as u64);
        for &f in &table.free {
            w.u32(f);
        }
        self.timers.encode(&mut w);
        let ecache = &self.ecache;
        // The queued frames, back to back: a snapshot does not depend on how the outbox lays
        // them out in blocks. In-flight messages need no bytes (they were taken).
        let outbox = &ecache.outbox;
        let frames_len: usize = outbox.queued_frames().map(|(_, f)| f.len()).sum();
        w.u64(frames_len as u64);
        for (_, frame) in outbox.queued_frames() {
            w.buf.extend_from_slice(frame);
        }
        w.u64(outbox.queued.len() as u64);
        let mut start = 0;
        for (p, _) in outbox.queued_frames() {
            write_pending(&mut w, &Pending { start, ..*p });
            start += u64::from(p.len);
        }
        w.u64(outbox.in_flight.len() as u64);
        for p in outbox.in_flight.iter() {
            write_pending(&mut w, &Pending { start: 0, ..*p });
        }
        w.u32(ecache.dying.head);
        w.u32(ecache.dying.tail);
        w.u64(ecache.dying.len);
        w.u64(table.count);
        w.u64(table.live);
        for v in self.stats.values() {
            w.u64(v);
        }
        w.rng(&ecache.grace_rng);
        w.rng(&table.id_rng);
        w.bool(self.listener_present);
        w.bool(self.reliable_listener);
        w.opt_u64(ecache.worker.at);
        w.u64(ecache.worker.in_flight as u64);
        w.u64(self.now_ns);
        self.expectations.encode(&mut w);
        self.defrag.encode(&mut w);
        format::finish(w)
    }

    /// A tracker from [`Tracker::snapshot`] bytes. Hostile bytes give an error, never a panic.
    pub fn restore(bytes: &[u8]) -> Result<Tracker, SnapshotError> {
        let mut r = Reader::new(format::body(bytes)?);
        let config = read_config(&mut r)?;
        let mut t = Tracker::new(config);
        let n = r.len()?;
        for _ in 0..n {
            t.table.slab.push(read_entry(&mut r)?);
        }
        let slab_len = t.table.slab.len();
        let slot_ok = |s: u32| (s as usize) < slab_len;
        let n = r.len()?;
        for _ in 0..n {
            let f = r.u32()?;
            if !slot_ok(f) || t.table.entry(f).life != Life::Free {
                return Err(Invalid("free list"));
            }
            t.table.free.push(f);
        }
        t.timers = TimerWheel::decode(&mut r, slab_len)?;
        let ecache = &mut t.ecache;
        let frames = r.bytes()?;
        for which in 0..2 {
            let n = r.len()?;
            for _ in 0..n {
                let p = read_pending(&mut r)?;
                let frame = usize::try_from(p.start)
                    .ok()
                    .and_then(|start| frames.get(start..start.checked_add(p.len as usize)?))
                    .filter(|f| f.len() <= MAX_FRAME_LEN);
                let entry_ok = match p.source {
                    Source::Entry { slot, .. } => slot_ok(slot),
                    Source::Expectation { .. } => true,
                };
                match (entry_ok, which, frame) {
                    (true, 0, Some(frame)) if frame_matches(frame, &p) => {
                        ecache.outbox.push_frame(frame, p)
                    }
                    (true, 1, _) => ecache.outbox.in_flight.push_back(p),
                    _ => return Err(Invalid("outbox")),
                }
            }
        }
        ecache.dying.head = r.u32()?;
        ecache.dying.tail = r.u32()?;
        ecache.dying.len = r.u64()?;
        t.table.count = r.u64()?;
        t.table.live = r.u64()?;
        let mut fields = [0u64; Stats::FIELD_COUNT];
        for f in &mut fields {
            *f = r.u64()?;
        }
        t.stats = Stats::from_values(fields);
        t.ecache.grace_rng = r.rng()?;
        t.table.id_rng = r.rng()?;
        t.listener_present = r.bool()?;
        t.reliable_listener = r.bool()?;
        t.ecache.worker.at = r.opt_u64()?;
        t.ecache.worker.in_flight = r.usize("worker")?;
        t.now_ns = r.u64()?;
        t.expectations = expect::Expectations::decode(&mut r, t.config.seed, slab_len)?;
        t.defrag = defrag::Defrag::decode(&mut r)?;
        let expectations = t.expectations.len();
        if t.ecache.outbox.unreported().any(|p| {
            matches!(p.source, Source::Expectation { slot, .. } if slot as usize >= expectations)
        }) {
            return Err(Invalid("outbox"));
        }
        if !r.is_empty() {
            return Err(Invalid("length (bytes after the end)"));
        }
        t.rebuild_indexes()?;
        Ok(t)
    }

    /// Rebuilds the hash index and the id map from the entries and checks that the counts and
    /// the dying list agree with them.
    fn rebuild_indexes(&mut self) -> Result<(), SnapshotError> {
        let (live, counted, dying) = self.table.reindex().map_err(Invalid)?;
        // Walk the dying list: it must visit every dying entry once, in range.
        let list = self.ecache.dying;
        let mut seen = 0u64;
        let mut at = list.head;
        let mut prev = NIL;
        while at != NIL {
            let e = self
                .table
                .slab
                .get(at as usize)
                .ok_or(Invalid("dying list"))?;
            if e.life != Life::Dying || e.dying_prev != prev || seen >= dying {
                return Err(Invalid("dying list"));
            }
            seen += 1;
            prev = at;
            at = e.dying_next;
        }
        if seen != dying || prev != list.tail || list.len != dying {
            return Err(Invalid("dying list"));
        }
        if live != self.table.live || counted != self.table.count {
            return Err(Invalid("entry counts"));
        }
        let from_worker = self
            .ecache
            .outbox
            .unreported()
            .filter(|p| p.from_worker)
            .count();
        if from_worker != self.ecache.worker.in_flight {
            return Err(Invalid("retry worker"));
        }
        self.check_lifecycles()
    }

    /// Checks what keeps every entry moving towards its delivered DESTROY, so that no accepted
    /// snapshot can strand one, send one twice or keep an entry for ever: a live entry is
    /// confirmed and has its timeout on the wheel; a destroying (or dropped) entry has exactly
    /// one DESTROY queued or in flight and no timer; a dying one has no DESTROY out and a retry
    /// coming (its grace timer, or the retry worker), unless the clock is too near its end for
    /// any retry to be scheduled; a free slot has neither.
    fn check_lifecycles(&self) -> Result<(), SnapshotError> {
        if !self.timers.is_not_ahead_of(self.now_ns) {
            return Err(Invalid("timer wheel's clock (ahead of the tracker's)"));
        }
        let slab = &self.table.slab;
        let mut destroys_out = vec![0u8; slab.len()];
        for p in self.ecache.outbox.unreported() {
            if let Source::Entry {
                slot, generation, ..
            } = p.source
                && p.kind == MessageKind::Destroy
                && slab[slot as usize].generation == generation
            {
                let n = &mut destroys_out[slot as usize];
                *n = n.saturating_add(1);
            }
        }
        let retries_fit = self
            .now_ns
            .checked_add(self.longest_retry_delay_ns())
            .is_some();
        let worker_coming = !self.ecache.worker.idle();
        let grace = self.config.retry_policy == RetryPolicy::Grace;
        for (slot, e) in slab.iter().enumerate() {
            let timer = self.timers.deadline(slot as u32).is_some();
            let out = destroys_out[slot];
            let consistent = match e.life {
                Life::Free => !timer && out == 0,
                Life::Live => timer && out == 0 && e.status.contains(Status::CONFIRMED),
                Life::Destroying | Life::Dropped => !timer && out == 1,
                Life::Dying => {
                    let retry_coming = if grace { timer } else { worker_coming };
                    out == 0 && (retry_coming || !retries_fit)
                }
            };
            if !consistent {
                return Err(Invalid("entry's life (its timer or its DESTROY)"));
            }
        }
        Ok(())
    }
}

/// Whether a queued frame is one well-formed event frame about what its record says: the
/// message kind, and an entry's or an expectation's group; the ctnetlink message in it parses
/// whole. (The host forwards these bytes as they are, so they are checked as it would.)
fn frame_matches(frame: &[u8], p: &Pending) -> bool {
    let mut frames = crate::batch::events(frame);
    let (Some(Ok(f)), None) = (frames.next(), frames.next()) else {
        return false;
    };
    if f.group != p.source.group_and_bits(p.kind).0 {
        return false;
    }
    let parsed = match p.source {
        Source::Entry { .. } => {
            crate::netlink::CtMessage::parse(f.netlink).map(|(m, n)| (m.kind(), n))
        }
        Source::Expectation { .. } => {
            crate::netlink::ExpMessage::parse(f.netlink).map(|(m, n)| (m.kind(), n))
        }
    };
    matches!(parsed, Ok((Some(kind), used)) if kind == p.kind && used == f.netlink.len())
}

/// A pending message; the format keeps one layout for both sources, with a flag.
fn write_pending(w: &mut Writer, p: &Pending) {
    let (slot, generation, bits, missed_sent, expect) = match p.source {
        Source::Entry {
            slot,
            generation,
            bits,
            missed_sent,
        } => (slot, generation, bits.0, missed_sent.0, false),
        Source::Expectation {
            slot,
            generation,
            bits,
            missed_sent,
        } => (slot, generation, bits.0, missed_sent.0, true),
    };
    w.u32(slot);
    w.u32(generation);
    w.u16(bits);
    w.u16(missed_sent);
    w.u8(p.kind as u8);
    w.bool(p.from_worker);
    w.bool(expect);
    w.u64(p.start);
    w.u64(u64::from(p.len));
}

fn read_pending(r: &mut Reader<'_>) -> Result<Pending, SnapshotError> {
    let (slot, generation, bits, missed_sent) = (r.u32()?, r.u32()?, r.u16()?, r.u16()?);
    let kind = match r.u8()? {
        0 => MessageKind::New,
        1 => MessageKind::Update,
        2 => MessageKind::Destroy,
        _ => return Err(Invalid("message kind")),
    };
    let from_worker = r.bool()?;
    let source = if r.bool()? {
        Source::Expectation {
            slot,
            generation,
            bits: ExpEventBits(bits),
            missed_sent: ExpEventBits(missed_sent),
        }
    } else {
        Source::Entry {
            slot,
            generation,
            bits: EventBits(bits),
            missed_sent: EventBits(missed_sent),
        }
    };
    Ok(Pending {
        source,
        kind,
        from_worker,
        start: r.u64()?,
        len: u32::try_from(r.u64()?).map_err(|_| Invalid("outbox"))?,
    })
}

fn write_config(w: &mut Writer, c: &Config) {
    let s = &c.sysctls;
    w.u64(c.seed);
    w.u8(match c.retry_policy {
        RetryPolicy::Grace => 0,
        RetryPolicy::Kernel => 1,
        RetryPolicy::OnDrain => 2,
    });
    for v in [
        s.max,
        s.events as u32,
        s.events_retry_timeout,
        s.acct as u32,
        s.timestamp as u32,
        s.tcp_loose as u32,
        s.tcp_be_liberal as u32,
        s.tcp_max_retrans,
        s.tcp_timeout_max_retrans,
        s.tcp_timeout_unacknowledged,
        s.udp_timeout,
        s.udp_timeout_stream,
        s.icmp_timeout,
        s.icmpv6_timeout,
        s.generic_timeout,
        s.expect_max,
        s.ipfrag_time,
        s.ipfrag_high_thresh,
        s.frag6_timeout,
        s.frag6_high_thresh,
        s.gre_timeout,
        s.gre_timeout_stream,
        s.checksum as u32,
    ] {
        w.u32(v);
    }
    for v in s.tcp_timeouts {
        w.u32(v);
    }
    for v in s.sctp_timeouts {
        w.u32(v);
    }
}

fn read_config(r: &mut Reader<'_>) -> Result<Config, SnapshotError> {
    let seed = r.u64()?;
    let retry_policy = match r.u8()? {
        0 => RetryPolicy::Grace,
        1 => RetryPolicy::Kernel,
        2 => RetryPolicy::OnDrain,
        _ => return Err(Invalid("retry policy")),
    };
    let mut v = [0u32; 23];
    for x in &mut v {
        *x = r.u32()?;
    }
    let flag = |x: u32| match x {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Invalid("sysctl switch")),
    };
    if v[1] > 2 {
        return Err(Invalid("nf_conntrack_events"));
    }
    let mut tcp_timeouts = [0u32; 10];
    for x in &mut tcp_timeouts {
        *x = r.u32()?;
    }
    let mut sctp_timeouts = [0u32; 9];
    for x in &mut sctp_timeouts {
        *x = r.u32()?;
    }
    let sysctls = Sysctls {
        max: v[0],
        events: v[1] as u8,
        events_retry_timeout: v[2],
        acct: flag(v[3])?,
        timestamp: flag(v[4])?,
        tcp_loose: flag(v[5])?,
        tcp_be_liberal: flag(v[6])?,
        tcp_max_retrans: v[7],
        tcp_timeouts,
        tcp_timeout_max_retrans: v[8],
        tcp_timeout_unacknowledged: v[9],
        udp_timeout: v[10],
        udp_timeout_stream: v[11],
        icmp_timeout: v[12],
        icmpv6_timeout: v[13],
        generic_timeout: v[14],
        expect_max: v[15],
        ipfrag_time: v[16],
        ipfrag_high_thresh: v[17],
        frag6_timeout: v[18],
        frag6_high_thresh: v[19],
        gre_timeout: v[20],
        gre_timeout_stream: v[21],
        checksum: flag(v[22])?,
        sctp_timeouts,
    };
    Ok(Config {
        sysctls,
        seed,
        retry_policy,
    })
}

pub(super) fn write_tuple(w: &mut Writer, t: &Tuple) {
    w.u8(t.family as u8);
    w.buf.extend_from_slice(&t.src.0);
    w.buf.extend_from_slice(&t.dst.0);
    w.u8(t.proto);
    match t.l4 {
        L4Tuple::Ports { src, dst } => {
            w.u8(0);
            w.u16(src);
            w.u16(dst);
        }
        L4Tuple::Icmp { id, kind, code } => {
            w.u8(1);
            w.u16(id);
            w.u16(u16::from_le_bytes([kind, code]));
        }
        L4Tuple::None => {
            w.u8(2);
            w.u32(0);
        }
    }
}

fn read_addr(r: &mut Reader<'_>) -> Result<Addr, SnapshotError> {
    let mut a = [0u8; 16];
    for b in &mut a {
        *b = r.u8()?;
    }
    Ok(Addr(a))
}

pub(super) fn read_tuple(r: &mut Reader<'_>) -> Result<Tuple, SnapshotError> {
    let family = Family::from_af(r.u8()?).ok_or(Invalid("address family"))?;
    let src = read_addr(r)?;
    let dst = read_addr(r)?;
    let proto = r.u8()?;
    let kind = r.u8()?;
    let a = r.u16()?;
    let b = r.u16()?;
    let l4 = match kind {
        0 => L4Tuple::Ports { src: a, dst: b },
        1 => {
            let [kind, code] = b.to_le_bytes();
            L4Tuple::Icmp { id: a, kind, code }
        }
        2 => L4Tuple::None,
        _ => return Err(Invalid("tuple")),
    };
    Ok(Tuple {
        family,
        src,
        dst,
        proto,
        l4,
    })
}

fn write_side(w: &mut Writer, s: &Side) {
    for v in [s.td_end, s.td_maxend, s.td_maxwin, s.td_maxack] {
        w.u32(v);
    }
    w.u8(s.td_scale);
    w.u8(s.flags);
}

fn read_side(r: &mut Reader<'_>) -> Result<Side, SnapshotError> {
    Ok(Side {
        td_end: r.u32()?,
        td_maxend: r.u32()?,
        td_maxwin: r.u32()?,
        td_maxack: r.u32()?,
        td_scale: r.u8()?,
        flags: r.u8()?,
    })
}

fn read_direction(r: &mut Reader<'_>) -> Result<Direction, SnapshotError> {
    match r.u8()? {
        0 => Ok(Direction::Original),
        1 => Ok(Direction::Reply),
        _ => Err(Invalid("direction")),
    }
}

fn write_proto(w: &mut Writer, p: &ProtoState) {
    match p {
        ProtoState::Tcp(c) => {
            w.u8(0);
            w.u8(c.state as u8);
            write_side(w, &c.seen[0]);
            write_side(w, &c.seen[1]);
            w.u8(c.last_dir as u8);
            w.u8(c.last_index as u8);
            for v in [c.last_seq, c.last_ack, c.last_end] {
                w.u32(v);
            }
            w.u16(c.last_win);
            w.u8(c.last_flags);
            w.u8(c.last_wscale);
            w.u32(c.retrans);
        }
        ProtoState::Udp(_) => w.u8(1),
        ProtoState::Icmp(c) => {
            w.u8(2);
            w.bool(c.v6);
        }
        ProtoState::Generic(_) => w.u8(3),
        ProtoState::UdpLite(_) => w.u8(4),
        ProtoState::Gre(c) => {
            w.u8(5);
            w.u32(c.timeout_s);
            w.u32(c.stream_timeout_s);
        }
        ProtoState::Sctp(c) => {
            w.u8(6);
            w.u8(c.state as u8);
            w.u32(c.vtag[0]);
            w.u32(c.vtag[1]);
            w.bool(c.init[0]);
            w.bool(c.init[1]);
            w.bool(c.heartbeat_vtag_failed);
            w.u8(c.last_dir as u8);
        }
    }
}

fn read_proto(r: &mut Reader<'_>) -> Result<ProtoState, SnapshotError> {
    Ok(match r.u8()? {
        0 => {
            let state = TcpState::from_u8(r.u8()?).ok_or(Invalid("TCP state"))?;
            let seen = [read_side(r)?, read_side(r)?];
            let last_dir = read_direction(r)?;
            let last_index = match r.u8()? {
                0 => Class::Syn,
                1 => Class::SynAck,
                2 => Class::Fin,
                3 => Class::Ack,
                4 => Class::Rst,
                5 => Class::None,
                _ => return Err(Invalid("TCP packet class")),
            };
            ProtoState::Tcp(TcpConn {
                state,
                seen,
                last_dir,
                last_index,
                last_seq: r.u32()?,
                last_ack: r.u32()?,
                last_end: r.u32()?,
                last_win: r.u16()?,
                last_flags: r.u8()?,
                last_wscale: r.u8()?,
                retrans: r.u32()?,
            })
        }
        1 => ProtoState::Udp(UdpConn),
        2 => ProtoState::Icmp(IcmpConn { v6: r.bool()? }),
        3 => ProtoState::Generic(GenericConn),
        4 => ProtoState::UdpLite(UdpLiteConn),
        5 => ProtoState::Gre(GreConn {
            timeout_s: r.u32()?,
            stream_timeout_s: r.u32()?,
        }),
        6 => ProtoState::Sctp(SctpConn {
            state: SctpState::from_u8(r.u8()?).ok_or(Invalid("SCTP state"))?,
            vtag: [r.u32()?, r.u32()?],
            init: [r.bool()?, r.bool()?],
            heartbeat_vtag_failed: r.bool()?,
            last_dir: read_direction(r)?,
        }),
        _ => return Err(Invalid("protocol state")),
    })
}

fn write_entry(w: &mut Writer, e: &Entry) {
    w.u32(e.generation);
    write_tuple(w, &e.orig);
    w.u16(e.zone);
    w.u32(e.id);
    w.u32(e.status.0);
    w.u32(e.mark);
    write_proto(w, &e.proto);
    for c in &e.counters {
        w.u64(c.packets);
        w.u64(c.bytes);
    }
    w.u64(e.start_ns);
    w.u64(e.stop_ns);
    w.u64(e.deadline_ns);
    w.bool(e.ecache.is_some());
    let c = e.ecache.unwrap_or_default();
    w.u16(c.cache.0);
    w.u16(c.missed.0);
    w.u8(match e.life {
        Life::Free => 0,
        Life::Live => 1,
        Life::Destroying => 2,
        Life::Dying => 3,
        Life::Dropped => 4,
    });
    w.u32(e.dying_prev);
    w.u32(e.dying_next);
    w.bool(e.master.is_some());
    if let Some(m) = &e.master {
        write_tuple(w, m);
    }
}

fn read_entry(r: &mut Reader<'_>) -> Result<Entry, SnapshotError> {
    let generation = r.u32()?;
    let orig = read_tuple(r)?;
    let zone = r.u16()?;
    let id = r.u32()?;
    let status = Status(r.u32()?);
    let mark = r.u32()?;
    let proto = read_proto(r)?;
    let mut counters = [Counters::default(); 2];
    for c in &mut counters {
        c.packets = r.u64()?;
        c.bytes = r.u64()?;
    }
    let start_ns = r.u64()?;
    let stop_ns = r.u64()?;
    let deadline_ns = r.u64()?;
    let has_ecache = r.bool()?;
    let cache = EventBits(r.u16()?);
    let missed = EventBits(r.u16()?);
    let life = match r.u8()? {
        0 => Life::Free,
        1 => Life::Live,
        2 => Life::Destroying,
        3 => Life::Dying,
        4 => Life::Dropped,
        _ => return Err(Invalid("entry state")),
    };
    Ok(Entry {
        generation,
        orig,
        zone,
        id,
        status,
        mark,
        proto,
        counters,
        start_ns,
        stop_ns,
        deadline_ns,
        ecache: has_ecache.then_some(Ecache { cache, missed }),
        life,
        dying_prev: r.u32()?,
        dying_next: r.u32()?,
        master: if r.bool()? {
            Some(read_tuple(r)?)
        } else {
            None
        },
    })
}
