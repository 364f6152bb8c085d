//! IP reassembly before tracking, as the kernel's `nf_defrag_ipv4` and `nf_defrag_ipv6` do it.
//!
//! Conntrack never sees a fragment: the defragmentation hooks run first and hand it whole
//! datagrams. So a datagram whose fragments do not all arrive is never tracked, and one that is
//! reassembled counts once, with its whole length. This module keeps the incomplete datagrams
//! and applies the kernel's rules, which differ between the families:
//!
//! - A queue per datagram: (zone, source, destination, identification, and for IPv4 the
//!   protocol). Its deadline is set once, when its first fragment comes: `ipfrag_time` (30 s)
//!   for IPv4, `nf_conntrack_frag6_timeout` (60 s) for IPv6. A queue that runs out of time is
//!   given up (and, conntrack's reassembly being silent, no ICMP error is sent).
//! - Fragments are kept as the kernel keeps them, in *runs*: a fragment that starts where the
//!   last one ends extends its run. A fragment inside a single run is a duplicate and is
//!   dropped, the queue kept; one that overlaps anything otherwise discards the whole datagram
//!   (RFC 5722, which Linux applies to IPv4 too).
//! - The last fragment (more-fragments clear) fixes the length; a later one that contradicts
//!   it, or data beyond it, is corruption. IPv4 discards the queue then; IPv6 drops just that
//!   fragment. A non-last IPv4 fragment is cut to a multiple of 8 bytes; a non-last IPv6
//!   fragment that is not a multiple of 8 discards the queue and goes on unreassembled, as does
//!   an IPv6 first fragment too short to hold its upper-layer header.
//! - Complete (first and last fragment in, no hole), the datagram is rebuilt from the first
//!   fragment's headers (for IPv6 without the fragment header) and the data, and tracked as
//!   one packet. One longer than 65 535 bytes is given up.
//! - Held bytes are bounded per family (`ipfrag_high_thresh`, `nf_conntrack_frag6_high_thresh`,
//!   4 MiB each): past the bound, every fragment is dropped until queues complete or expire.
//!   The kernel charges a fragment's socket-buffer size; here a fragment costs its IP length,
//!   the same model as a listener's receive buffer.
//!
//! Not modelled: `ipfrag_max_dist` (which restarts a queue when too many fragments from its
//! source came in between; it needs the kernel's per-peer counters) and the interface that
//! the kernel adds to the key of IPv6 link-local and multicast datagrams.
//!
//! A capture may cut a fragment's payload short (its snap length): its IP length still counts,
//! and the bytes it lacks are zeros in the rebuilt datagram (conntrack reads only the headers
//! of the first fragment).

use std::collections::BTreeMap;

use crate::config::Sysctls;
use crate::stats::Stats;
use crate::tuple::Family;
use crate::wire::{ipv4, ipv6};

use super::NS_PER_S;

/// The largest datagram: a 16-bit IP length.
const MAX_DATAGRAM: usize = 65_535;

/// What identifies one datagram's fragments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct FragKey {
    pub family: Family,
    pub zone: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub ident: u32,
    /// IPv4's protocol field; 0 for IPv6, whose key has none.
    pub proto: u8,
}

/// A run of contiguous fragments: its offset in the datagram and its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub offset: u32,
    pub data: Vec<u8>,
}

impl Run {
    fn end(&self) -> u32 {
        self.offset + self.data.len() as u32
    }
}

/// One incomplete datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Queue {
    /// When it is given up.
    pub deadline_ns: u64,
    /// Its place among queues of the same deadline (creation order).
    pub seq: u64,
    /// The headers no fragment splits, from the first fragment, once it came: IPv4's header;
    /// IPv6's fixed and extension headers before the fragment header, the next-header byte
    /// that named the fragment header already naming what follows it.
    pub head: Option<Vec<u8>>,
    /// Non-overlapping runs, by offset.
    pub runs: Vec<Run>,
    /// The datagram's data length as known so far; final once `last_in`.
    pub len: u32,
    pub last_in: bool,
    /// Data bytes held.
    pub meat: u32,
    /// Bytes charged against the family's bound.
    pub charged: u64,
}

/// The incomplete datagrams of a tracker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Defrag {
    pub queues: BTreeMap<FragKey, Queue>,
    /// The queues by deadline, then creation.
    pub deadlines: BTreeMap<(u64, u64), FragKey>,
    pub next_seq: u64,
    /// Bytes held, IPv4 and IPv6.
    pub held: [u64; 2],
}

/// One fragment, read from its packet.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fragment<'a> {
    key: FragKey,
    /// Offset of its data in the datagram, bytes.
    offset: u32,
    more: bool,
    /// Its data length as the IP header says.
    data_len: u32,
    /// The data present in the buffer (a capture may have cut it).
    data: &'a [u8],
    /// The headers to keep if it is the first fragment (see [`Queue::head`]), and for IPv6
    /// where the byte naming the fragment header is in them.
    head: &'a [u8],
    next_header_at: Option<(usize, u8)>,
    /// The IP length, what the fragment costs.
    wire_len: u32,
}

/// What became of a fragment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reassembly {
    /// Held until its datagram is complete.
    Held,
    /// Dropped, alone or with its datagram.
    Dropped,
    /// It completed its datagram: the whole packet, to be tracked.
    Whole(Vec<u8>),
    /// Not reassembled, and to be tracked as it is (an IPv6 fragment the kernel lets through).
    AsIs,
}

fn family_index(f: Family) -> usize {
    match f {
        Family::Ipv4 => 0,
        Family::Ipv6 => 1,
    }
}

/// Reads `packet` as a fragment, if it is one the reassembly takes: IPv4 with more-fragments
/// set or a non-zero offset; IPv6 with a fragment header after only the headers no fragment
/// splits, and a non-zero payload length. `None` for anything else, malformed packets included
/// (the packet path judges those).
pub(crate) fn fragment_of(zone: u16, packet: &[u8]) -> Option<Fragment<'_>> {
    match packet.first()? >> 4 {
        4 => {
            let p = ipv4::Packet::new_checked(packet).ok()?;
            if !p.more_frags() && p.frag_offset() == 0 {
                return None;
            }
            let ihl = p.header_len();
            let total = usize::from(p.total_len());
            if total < ihl {
                return None;
            }
            let mut src = [0; 16];
            let mut dst = [0; 16];
            src[..4].copy_from_slice(&p.src_addr());
            dst[..4].copy_from_slice(&p.dst_addr());
            let end = total.min(packet.len());
            Some(Fragment {
                key: FragKey {
                    family: Family::Ipv4,
                    zone,
                    src,
                    dst,
                    ident: u32::from(p.ident()),
                    proto: p.protocol(),
                },
                offset: u32::from(p.frag_offset()),
                more: p.more_frags(),
                data_len: (total - ihl) as u32,
                data: packet.get(ihl..end).unwrap_or(&[]),
                head: &packet[..ihl],
                next_header_at: None,
                wire_len: total as u32,
            })
        }
        6 => {
            let p = ipv6::Packet::new_checked(packet).ok()?;
            if p.payload_len() == 0 {
                // A jumbogram: it has no fragment header.
                return None;
            }
            let f = ipv6::find_fragment_header(packet)?;
            let total = ipv6::HEADER_LEN + usize::from(p.payload_len());
            let data_at = f.at + 8;
            if total < data_at {
                return None;
            }
            let end = total.min(packet.len());
            Some(Fragment {
                key: FragKey {
                    family: Family::Ipv6,
                    zone,
                    src: p.src_addr(),
                    dst: p.dst_addr(),
                    ident: f.ident,
                    proto: 0,
                },
                offset: u32::from(f.offset),
                more: f.more_frags,
                data_len: (total - data_at) as u32,
                data: packet.get(data_at..end).unwrap_or(&[]),
                head: &packet[..f.at],
                next_header_at: Some((f.next_header_at, f.next_header)),
                wire_len: total as u32,
            })
        }
        _ => None,
    }
}

/// Whether an IPv6 first fragment lacks its upper-layer header (RFC 8200, section 4.5): the
/// kernel lets such a fragment through unreassembled. `data` is the fragment's data, whose
/// first header is `next`.
fn upper_layer_truncated(next: u8, data: &[u8], data_len: u32) -> bool {
    // Past any further extension headers, as the kernel's skip does.
    let mut kind = next;
    let mut at = 0usize;
    for _ in 0..ipv6::MAX_EXTENSION_HEADERS {
        if !ipv6::is_extension_header(kind) || kind == ipv6::ext::FRAGMENT {
            break;
        }
        let Some(h) = data.get(at..at + 2) else {
            return true;
        };
        let len = match kind {
            ipv6::ext::AUTH => (usize::from(h[1]) + 2) * 4,
            _ => (usize::from(h[1]) + 1) * 8,
        };
        kind = h[0];
        at += len;
    }
    let header = match kind {
        crate::tuple::ipproto::TCP => 20,
        crate::tuple::ipproto::UDP | crate::tuple::ipproto::ICMPV6 => 8,
        _ => 1,
    };
    at + header > data_len as usize
}

impl Defrag {
    /// Takes one fragment at `now_ns`.
    pub(crate) fn add(
        &mut self,
        now_ns: u64,
        frag: Fragment<'_>,
        sysctls: &Sysctls,
        stats: &mut Stats,
    ) -> Reassembly {
        let v6 = frag.key.family == Family::Ipv6;
        if v6
            && frag.offset == 0
            && let Some((_, next)) = frag.next_header_at
            && upper_layer_truncated(next, frag.data, frag.data_len)
        {
            return Reassembly::AsIs;
        }
        stats.frag_received = stats.frag_received.wrapping_add(1);
        let family = family_index(frag.key.family);
        let (timeout, bound) = match v6 {
            false => (sysctls.ipfrag_time, sysctls.ipfrag_high_thresh),
            true => (sysctls.frag6_timeout, sysctls.frag6_high_thresh),
        };
        // Over the bound, no fragment is taken, for a queue that exists or not.
        if bound == 0 || self.held[family] > u64::from(bound) {
            return self.failed(stats);
        }
        if !self.queues.contains_key(&frag.key) {
            let deadline_ns = now_ns.saturating_add(u64::from(timeout) * NS_PER_S);
            let seq = self.next_seq;
            self.next_seq += 1;
            self.deadlines.insert((deadline_ns, seq), frag.key);
            self.queues.insert(
                frag.key,
                Queue {
                    deadline_ns,
                    seq,
                    head: None,
                    runs: Vec::new(),
                    len: 0,
                    last_in: false,
                    meat: 0,
                    charged: 0,
                },
            );
        }
        let offset = frag.offset;
        let mut end = offset + frag.data_len;
        // The corruption checks, which differ by family: IPv4 gives the datagram up, IPv6 drops
        // the fragment alone (or, for a ragged non-last one, lets it through as it is).
        let q = self.queues.get_mut(&frag.key).expect("the queue exists");
        if v6 && end > MAX_DATAGRAM as u32 {
            return self.failed(stats);
        }
        if !frag.more {
            if end < q.len || (q.last_in && end != q.len) {
                return self.corrupt(frag.key, v6, stats);
            }
            q.last_in = true;
            q.len = end;
        } else {
            if end & 7 != 0 {
                if v6 {
                    self.kill(&frag.key);
                    stats.frag_failed = stats.frag_failed.wrapping_add(1);
                    return Reassembly::AsIs;
                }
                end &= !7;
            }
            if end > q.len {
                if q.last_in {
                    return self.corrupt(frag.key, v6, stats);
                }
                q.len = end;
            }
        }
        if end == offset {
            return self.corrupt(frag.key, v6, stats);
        }
        let data_len = (end - offset) as usize;
        let mut data = frag.data[..frag.data.len().min(data_len)].to_vec();
        data.resize(data_len, 0);
        match insert(&mut q.runs, offset, data) {
            Insert::Done => {}
            Insert::Duplicate => return Reassembly::Dropped,
            Insert::Overlap => {
                self.kill(&frag.key);
                return self.failed(stats);
            }
        }
        q.meat += data_len as u32;
        q.charged += u64::from(frag.wire_len);
        self.held[family] += u64::from(frag.wire_len);
        if offset == 0 {
            let mut head = frag.head.to_vec();
            if let Some((at, next)) = frag.next_header_at {
                head[at] = next;
            }
            q.head = Some(head);
        }
        if !(q.head.is_some() && q.last_in && q.meat == q.len) {
            return Reassembly::Held;
        }
        let q = self.kill(&frag.key).expect("the queue exists");
        match rebuild(frag.key.family, q) {
            Some(whole) => {
                stats.frag_reassembled = stats.frag_reassembled.wrapping_add(1);
                Reassembly::Whole(whole)
            }
            None => self.failed(stats),
        }
    }

    /// Gives up every queue whose time has run out by `now_ns`.
    pub(crate) fn expire(&mut self, now_ns: u64, stats: &mut Stats) {
        while let Some((&(deadline, _), &key)) = self.deadlines.first_key_value() {
            if deadline > now_ns {
                break;
            }
            self.kill(&key);
            stats.frag_timeout = stats.frag_timeout.wrapping_add(1);
        }
    }

    /// The earliest deadline of a queue.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first_key_value().map(|(&(d, _), _)| d)
    }

    /// Incomplete datagrams now.
    pub(crate) fn len(&self) -> usize {
        self.queues.len()
    }

    /// Removes a queue and releases what it held.
    fn kill(&mut self, key: &FragKey) -> Option<Queue> {
        let q = self.queues.remove(key)?;
        self.deadlines.remove(&(q.deadline_ns, q.seq));
        let family = family_index(key.family);
        self.held[family] = self.held[family].saturating_sub(q.charged);
        Some(q)
    }

    fn failed(&mut self, stats: &mut Stats) -> Reassembly {
        stats.frag_failed = stats.frag_failed.wrapping_add(1);
        Reassembly::Dropped
    }

    /// A fragment that contradicts what the queue knows: IPv4 gives the datagram up, IPv6
    /// drops the fragment and keeps the queue.
    fn corrupt(&mut self, key: FragKey, v6: bool, stats: &mut Stats) -> Reassembly {
        if !v6 {
            self.kill(&key);
        }
        self.failed(stats)
    }
}

enum Insert {
    Done,
    Duplicate,
    Overlap,
}

/// Puts `[offset, offset + data.len())` among `runs` as the kernel's fragment tree does: past
/// the last run it extends that run if it starts where it ends (and overlaps if it starts
/// before); elsewhere it is a duplicate inside one run, an overlap if it meets any run
/// otherwise, or a run of its own.
fn insert(runs: &mut Vec<Run>, offset: u32, data: Vec<u8>) -> Insert {
    let end = offset + data.len() as u32;
    let Some(last) = runs.last_mut() else {
        runs.push(Run { offset, data });
        return Insert::Done;
    };
    if last.end() < end {
        if offset < last.end() {
            return Insert::Overlap;
        }
        if offset == last.end() {
            last.data.extend_from_slice(&data);
        } else {
            runs.push(Run { offset, data });
        }
        return Insert::Done;
    }
    // The first run that ends after the fragment starts: the only one it can be inside.
    let at = runs.partition_point(|r| r.end() <= offset);
    match runs.get(at) {
        Some(r) if r.offset < end => {
            if offset >= r.offset && end <= r.end() {
                Insert::Duplicate
            } else {
                Insert::Overlap
            }
        }
        _ => {
            runs.insert(at, Run { offset, data });
            Insert::Done
        }
    }
}

/// The whole datagram: the first fragment's headers with the lengths and fragment fields of an
/// unfragmented packet, then the data. `None` when it would pass 65 535 bytes.
fn rebuild(family: Family, q: Queue) -> Option<Vec<u8>> {
    let head = q.head?;
    let total = head.len() + q.len as usize;
    let mut whole = Vec::with_capacity(total);
    whole.extend_from_slice(&head);
    for run in q.runs {
        whole.extend_from_slice(&run.data);
    }
    match family {
        Family::Ipv4 => {
            if total > MAX_DATAGRAM {
                return None;
            }
            let mut p = ipv4::Packet::new_unchecked(&mut whole[..]);
            p.set_total_len(total as u16);
            p.set_fragment(false, false, 0);
        }
        Family::Ipv6 => {
            let payload = total - ipv6::HEADER_LEN;
            if payload > MAX_DATAGRAM {
                return None;
            }
            ipv6::Packet::new_unchecked(&mut whole[..]).set_payload_len(payload as u16);
        }
    }
    Some(whole)
}

impl Defrag {
    /// Writes every queue, in key order, for a snapshot. The deadlines index and the held
    /// bytes are rebuilt from the queues.
    pub(crate) fn encode(&self, w: &mut crate::snapshot::Writer) {
        w.u64(self.next_seq);
        w.u64(self.queues.len() as u64);
        for (k, q) in &self.queues {
            w.u8(family_index(k.family) as u8);
            w.u16(k.zone);
            w.buf.extend_from_slice(&k.src);
            w.buf.extend_from_slice(&k.dst);
            w.u32(k.ident);
            w.u8(k.proto);
            w.u64(q.deadline_ns);
            w.u64(q.seq);
            w.bool(q.head.is_some());
            if let Some(head) = &q.head {
                w.u64(head.len() as u64);
                w.buf.extend_from_slice(head);
            }
            w.u64(q.runs.len() as u64);
            for run in &q.runs {
                w.u32(run.offset);
                w.u64(run.data.len() as u64);
                w.buf.extend_from_slice(&run.data);
            }
            w.u32(q.len);
            w.bool(q.last_in);
            w.u64(q.charged);
        }
    }

    /// Reads what [`Defrag::encode`] wrote, checking that every queue is one the reassembly
    /// could have built: runs in order, apart and within the length, the data counted right.
    pub(crate) fn decode(
        r: &mut crate::snapshot::Reader<'_>,
    ) -> Result<Defrag, crate::snapshot::SnapshotError> {
        use crate::snapshot::SnapshotError::Invalid;
        let mut d = Defrag {
            next_seq: r.u64()?,
            ..Defrag::default()
        };
        let n = r.len()?;
        for _ in 0..n {
            let family = match r.u8()? {
                0 => Family::Ipv4,
                1 => Family::Ipv6,
                _ => return Err(Invalid("fragment queue")),
            };
            let zone = r.u16()?;
            let mut src = [0; 16];
            let mut dst = [0; 16];
            for b in src.iter_mut().chain(dst.iter_mut()) {
                *b = r.u8()?;
            }
            let key = FragKey {
                family,
                zone,
                src,
                dst,
                ident: r.u32()?,
                proto: r.u8()?,
            };
            let deadline_ns = r.u64()?;
            let seq = r.u64()?;
            let head = match r.bool()? {
                true => Some(r.bytes()?.to_vec()),
                false => None,
            };
            let runs_n = r.len()?;
            let mut runs: Vec<Run> = Vec::with_capacity(runs_n.min(64));
            let mut meat = 0u32;
            for _ in 0..runs_n {
                let offset = r.u32()?;
                let data = r.bytes()?.to_vec();
                // Runs may touch (a fragment that fills a gap starts a run of its own), never
                // overlap; an IPv4 fragment at the last offset can reach past 65 535.
                let after_last = runs.last().is_none_or(|l| l.end() <= offset);
                let end = u64::from(offset) + data.len() as u64;
                if data.is_empty() || !after_last || end > 2 * MAX_DATAGRAM as u64 {
                    return Err(Invalid("fragment queue"));
                }
                meat += data.len() as u32;
                runs.push(Run { offset, data });
            }
            let len = r.u32()?;
            let last_in = r.bool()?;
            let charged = r.u64()?;
            let ends_within = runs.last().is_none_or(|l| l.end() <= len);
            let first_in = runs.first().is_some_and(|f| f.offset == 0);
            let complete = head.is_some() && last_in && meat == len;
            if !ends_within
                || head.is_some() != first_in
                || complete
                || seq >= d.next_seq
                || d.queues.contains_key(&key)
            {
                return Err(Invalid("fragment queue"));
            }
            let i = family_index(family);
            d.held[i] = d.held[i].saturating_add(charged);
            if d.deadlines.insert((deadline_ns, seq), key).is_some() {
                return Err(Invalid("fragment queue"));
            }
            d.queues.insert(
                key,
                Queue {
                    deadline_ns,
                    seq,
                    head,
                    runs,
                    len,
                    last_in,
                    meat,
                    charged,
                },
            );
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    //! Fragments cut from whole datagrams, against the same datagrams tracked whole: the
    //! reassembled one must leave the table, the events and the counters exactly as the whole
    //! one does, and what the kernel discards must leave nothing.

    use proptest::prelude::*;

    use super::*;
    use crate::config::Config;
    use crate::engine::{Tracker, Verdict};
    use crate::tuple::ipproto;
    use crate::wire::build;

    const A4: [u8; 4] = [10, 0, 0, 1];
    const B4: [u8; 4] = [10, 0, 0, 2];
    const S: u64 = 1_000_000_000;

    fn a6() -> [u8; 16] {
        let mut a = [0; 16];
        a[0] = 0xfd;
        a[15] = 1;
        a
    }
    fn b6() -> [u8; 16] {
        let mut b = a6();
        b[15] = 2;
        b
    }

    fn tracker() -> Tracker {
        let mut config = Config::default();
        config.sysctls.acct = true;
        Tracker::new(config)
    }

    /// A UDP datagram of `payload` bytes, IPv4.
    fn udp4(payload: usize) -> Vec<u8> {
        let mut p = build::ipv4(A4, B4, ipproto::UDP, &build::udp(5000, 53, payload));
        ipv4::Packet::new_unchecked(&mut p[..]).set_ident(0x1234);
        p
    }

    /// A UDP datagram of `payload` bytes, IPv6, with `ext` before the UDP header.
    fn udp6(payload: usize, ext: &[(u8, Vec<u8>)]) -> Vec<u8> {
        build::ipv6_with_ext(
            a6(),
            b6(),
            ext,
            ipproto::UDP,
            &build::udp(5000, 53, payload),
        )
    }

    /// IPv4 fragments of `whole` with its identification: `(offset, length, more)` each.
    fn frag4(whole: &[u8], cuts: &[(usize, usize, bool)]) -> Vec<Vec<u8>> {
        let ident = ipv4::Packet::new_unchecked(whole).ident();
        build::ipv4_fragments(whole, ident, cuts)
    }

    /// IPv6 fragments of `whole` (see [`build::ipv6_fragments`]).
    fn frag6(
        whole: &[u8],
        unfrag: usize,
        nh_at: usize,
        cuts: &[(usize, usize, bool)],
    ) -> Vec<Vec<u8>> {
        build::ipv6_fragments(whole, unfrag, nh_at, 0xabcd_0001, cuts)
    }

    /// Feeds `packets` one per millisecond; returns the verdicts.
    fn feed(t: &mut Tracker, packets: &[Vec<u8>]) -> Vec<Verdict> {
        packets
            .iter()
            .enumerate()
            .map(|(i, p)| t.ingest(S + i as u64 * 1_000_000, 0, p))
            .collect()
    }

    /// The table and events after `whole` alone at `at` (the instant of the fragment that
    /// completed it), seen at `now`.
    fn whole_at(whole: &[u8], at: u64, now: u64) -> (Vec<crate::engine::EntryView>, Vec<u8>) {
        let mut t = tracker();
        assert_eq!(t.ingest(at, 0, whole), Verdict::New);
        t.advance(now);
        let mut events = Vec::new();
        t.take_events(usize::MAX, &mut events);
        (t.dump(0, usize::MAX).0, events)
    }

    fn table_and_events(t: &mut Tracker) -> (Vec<crate::engine::EntryView>, Vec<u8>) {
        let mut events = Vec::new();
        t.take_events(usize::MAX, &mut events);
        (t.dump(0, usize::MAX).0, events)
    }

    #[test]
    fn ipv4_fragments_in_any_order_are_tracked_as_the_whole_datagram() {
        let whole = udp4(3000);
        let frags = frag4(
            &whole,
            &[(2960, 48, false), (0, 1480, true), (1480, 1480, true)],
        );
        let mut t = tracker();
        let verdicts = feed(&mut t, &frags);
        assert_eq!(verdicts, [Verdict::Queued, Verdict::Queued, Verdict::New]);
        let (table, events) = table_and_events(&mut t);
        assert_eq!(table[0].counters_orig.packets, 1);
        assert_eq!(
            table[0].counters_orig.bytes, 3028,
            "the whole datagram's length"
        );
        assert_eq!(
            (table, events),
            whole_at(&whole, S + 2_000_000, S + 2_000_000)
        );
        let s = t.stats();
        assert_eq!(
            (s.frag_received, s.frag_reassembled, s.frag_queues),
            (3, 1, 0)
        );
        assert_eq!((s.invalid, s.frag_failed), (0, 0));
    }

    #[test]
    fn an_incomplete_datagram_is_never_tracked_and_times_out() {
        let whole = udp4(3000);
        let frags = frag4(&whole, &[(0, 1480, true), (2960, 48, false)]);
        let mut t = tracker();
        assert_eq!(feed(&mut t, &frags), [Verdict::Queued, Verdict::Queued]);
        assert!(t.dump(0, usize::MAX).0.is_empty());
        assert_eq!(t.stats().frag_queues, 1);
        assert_eq!(
            t.next_deadline(),
            Some(S + 30 * S),
            "ipfrag_time from the first"
        );
        t.advance(S + 30 * S - 1);
        assert_eq!(t.stats().frag_queues, 1);
        t.advance(S + 30 * S);
        let s = t.stats();
        assert_eq!(
            (s.frag_queues, s.frag_timeout, s.frag_reassembled),
            (0, 1, 0)
        );
        assert_eq!(t.next_deadline(), None);
        // The missing fragment alone, later, starts a queue of its own.
        assert_eq!(
            feed(&mut t, &frag4(&whole, &[(1480, 1480, true)])),
            [Verdict::Queued]
        );
        assert!(t.dump(0, usize::MAX).0.is_empty());
    }

    #[test]
    fn an_overlap_discards_the_datagram_and_a_duplicate_only_itself() {
        let whole = udp4(3000);
        let mut t = tracker();
        let v = feed(
            &mut t,
            &frag4(
                &whole,
                &[
                    (0, 1480, true),
                    (0, 1480, true), // a duplicate: dropped, the queue kept
                    (1480, 1480, true),
                    (2960, 48, false),
                ],
            ),
        );
        assert_eq!(
            v,
            [
                Verdict::Queued,
                Verdict::Drop,
                Verdict::Queued,
                Verdict::New
            ]
        );
        assert_eq!(t.stats().frag_failed, 0, "a duplicate is no failure");
        let mut t = tracker();
        let v = feed(
            &mut t,
            &frag4(
                &whole,
                &[
                    (0, 1480, true),
                    (1472, 1488, true), // overlaps the first: the datagram is given up
                    (1480, 1480, true),
                    (2960, 48, false),
                ],
            ),
        );
        assert_eq!(
            v,
            [
                Verdict::Queued,
                Verdict::Drop,
                Verdict::Queued,
                Verdict::Queued
            ]
        );
        assert!(t.dump(0, usize::MAX).0.is_empty());
        assert_eq!(t.stats().frag_failed, 1);
        // A fragment spanning two runs it would only fill is an overlap too: runs are kept
        // apart as they came.
        let mut t = tracker();
        let v = feed(
            &mut t,
            &frag4(&whole, &[(1480, 1480, true), (0, 8, true), (0, 1480, true)]),
        );
        assert_eq!(v, [Verdict::Queued, Verdict::Queued, Verdict::Drop]);
    }

    #[test]
    fn contradicting_lengths_and_oversized_datagrams_are_given_up() {
        let whole = udp4(3000);
        // IPv4: a second last fragment with another end gives the datagram up.
        let mut t = tracker();
        let v = feed(
            &mut t,
            &frag4(&whole, &[(2960, 48, false), (1480, 100, false)]),
        );
        assert_eq!(v, [Verdict::Queued, Verdict::Drop]);
        assert_eq!(t.stats().frag_queues, 0);
        // IPv6: the same drops the fragment and keeps the queue.
        let whole6 = udp6(3000, &[]);
        let mut t = tracker();
        let frags = frag6(
            &whole6,
            40,
            6,
            &[
                (2960, 48, false),
                (0, 1480, false),
                (0, 1480, true),
                (1480, 1480, true),
            ],
        );
        assert_eq!(
            feed(&mut t, &frags),
            [
                Verdict::Queued,
                Verdict::Drop,
                Verdict::Queued,
                Verdict::New
            ]
        );
        // More than 65 535 bytes once whole (the last offset the field holds is 65 528, and
        // 16 bytes there end the data at 65 544): given up.
        let mut fake = udp4(0);
        fake.truncate(20);
        fake.resize(20 + 65_544, 0);
        let cuts: Vec<(usize, usize, bool)> = (0..8)
            .map(|i| (i * 8184, 8184, true))
            .chain([(65_472, 56, true), (65_528, 16, false)])
            .collect();
        let mut t = tracker();
        let v = feed(&mut t, &frag4(&fake, &cuts));
        assert_eq!(v.last(), Some(&Verdict::Drop), "{v:?}");
        assert!(v[..v.len() - 1].iter().all(|v| *v == Verdict::Queued));
        assert_eq!((t.stats().frag_failed, t.stats().frag_queues), (1, 0));
    }

    #[test]
    fn past_the_memory_bound_every_fragment_is_dropped() {
        let mut config = Config::default();
        config.sysctls.ipfrag_high_thresh = 3000;
        let mut t = Tracker::new(config);
        let whole = udp4(3000);
        let frags = frag4(
            &whole,
            &[(0, 1480, true), (1480, 1480, true), (2960, 48, false)],
        );
        // 1 500 and 1 500 bytes held is not past 3 000; the third is taken and completes.
        assert_eq!(
            feed(&mut t, &frags),
            [Verdict::Queued, Verdict::Queued, Verdict::New]
        );
        let mut other = udp4(3000);
        ipv4::Packet::new_unchecked(&mut other[..]).set_ident(7);
        let more = frag4(
            &other,
            &[(0, 1480, true), (1480, 1480, true), (0, 1480, true)],
        );
        let mut t2 = Tracker::new(t.config().clone());
        assert_eq!(
            feed(&mut t2, &more[..2]),
            [Verdict::Queued, Verdict::Queued]
        );
        let mut third = udp4(100);
        ipv4::Packet::new_unchecked(&mut third[..]).set_ident(8);
        let f = frag4(&third, &[(0, 64, true)]);
        assert_eq!(
            t2.ingest(S, 0, &f[0]),
            Verdict::Queued,
            "3 000 held: not past"
        );
        let f = frag4(&third, &[(64, 36, false)]);
        assert_eq!(
            t2.ingest(S, 0, &f[0]),
            Verdict::Drop,
            "3 084 held: past the bound"
        );
        assert_eq!(t2.stats().frag_failed, 1);
    }

    #[test]
    fn ipv6_reassembly_keeps_the_unfragmentable_headers_and_drops_the_fragment_header() {
        // A destination options header before the fragment header stays in the datagram.
        let ext = [(ipv6::ext::DEST_OPTIONS, vec![0u8; 6])];
        let whole = udp6(2000, &ext);
        let frags = frag6(&whole, 48, 40, &[(1008, 1000, false), (0, 1008, true)]);
        let mut t = tracker();
        assert_eq!(feed(&mut t, &frags), [Verdict::Queued, Verdict::New]);
        let (table, events) = table_and_events(&mut t);
        assert_eq!(table[0].counters_orig.bytes, whole.len() as u64);
        assert_eq!(
            (table, events),
            whole_at(&whole, S + 1_000_000, S + 1_000_000)
        );
    }

    #[test]
    fn ipv6_fragments_the_kernel_lets_through_unreassembled() {
        let whole = udp6(2000, &[]);
        // A first fragment that is not the last and not a multiple of 8: the queue is given up
        // and the fragment tracked as it is (its UDP header is there).
        let mut t = tracker();
        let f = frag6(&whole, 40, 6, &[(0, 1001, true)]);
        assert_eq!(t.ingest(S, 0, &f[0]), Verdict::New);
        assert_eq!(t.stats().frag_failed, 1);
        // A first fragment too short for its UDP header: through as it is, and invalid.
        let mut t = tracker();
        let f = frag6(&whole, 40, 6, &[(0, 4, true)]);
        assert_eq!(t.ingest(S, 0, &f[0]), Verdict::Invalid);
        assert_eq!(t.stats().frag_received, 0);
    }

    #[test]
    fn a_snapshot_keeps_the_incomplete_datagrams() {
        let whole = udp6(3000, &[]);
        let frags = frag6(
            &whole,
            40,
            6,
            &[(0, 1480, true), (2960, 48, false), (1480, 1480, true)],
        );
        let mut t = tracker();
        assert_eq!(
            feed(&mut t, &frags[..2]),
            [Verdict::Queued, Verdict::Queued]
        );
        let mut restored = Tracker::restore(&t.snapshot()).expect("restores");
        assert_eq!(restored.snapshot(), t.snapshot());
        let at = S + 2_000_000;
        assert_eq!(t.ingest(at, 0, &frags[2]), Verdict::New);
        assert_eq!(restored.ingest(at, 0, &frags[2]), Verdict::New);
        assert_eq!(restored.snapshot(), t.snapshot());
        assert_eq!(table_and_events(&mut restored), whole_at(&whole, at, at));
    }

    /// Cuts of `len` data bytes (more than 8) into fragments of multiples of 8, the last one
    /// the rest.
    fn cuts(len: usize, sizes: &[usize]) -> Vec<(usize, usize, bool)> {
        let mut out = Vec::new();
        let mut off = 0;
        for &s in sizes {
            // At least two fragments: a first one too big becomes 8 bytes.
            let s = match (s * 8).max(8) {
                s if off + s < len => s,
                _ if out.is_empty() => 8,
                _ => break,
            };
            out.push((off, s, true));
            off += s;
        }
        out.push((off, len - off, false));
        out
    }

    #[test]
    fn an_endless_stream_of_incomplete_datagrams_stays_within_the_bound() {
        let mut t = tracker();
        let bound = u64::from(t.config().sysctls.ipfrag_high_thresh);
        let whole = udp4(3000);
        for i in 0..10_000u32 {
            let f = build::ipv4_fragments(&whole, i as u16, &[(0, 1480, true)]);
            t.ingest(S + u64::from(i), 0, &f[0]);
            assert!(t.defrag.held[0] <= bound + 1500);
        }
        let s = t.stats();
        assert_eq!(s.frag_received, 10_000);
        assert_eq!(s.frag_queues + s.frag_failed, 10_000);
        assert!(s.frag_failed > 7_000, "{s:?}");
        assert!(t.dump(0, usize::MAX).0.is_empty());
        // Once they time out, the room is back.
        t.advance(S + 31 * S);
        assert_eq!((t.stats().frag_queues, t.defrag.held[0]), (0, 0));
        let f = build::ipv4_fragments(&whole, 1, &THIRDS_4);
        assert_eq!(
            feed(&mut t, &f).last(),
            Some(&Verdict::New),
            "fragments are taken again"
        );
    }

    const THIRDS_4: [(usize, usize, bool); 3] =
        [(0, 1480, true), (1480, 1480, true), (2960, 48, false)];

    proptest! {
        /// Arbitrary fragments (any offsets, lengths, flags and identifications of a few
        /// datagrams, either family, with a tiny bound): never a panic, the bytes held within
        /// the bound and one fragment, every fragment counted once.
        #[test]
        fn arbitrary_fragments_never_panic_and_stay_bounded(
            frags in proptest::collection::vec(
                (any::<bool>(), 0u16..4, 0u16..8192, 0usize..300, any::<bool>()),
                1..80,
            ),
        ) {
            let mut config = Config::default();
            config.sysctls.ipfrag_high_thresh = 2000;
            config.sysctls.frag6_high_thresh = 2000;
            let mut t = Tracker::new(config);
            let mut received = 0;
            for (i, (v6, ident, offset8, len, more)) in frags.into_iter().enumerate() {
                let offset = usize::from(offset8) * 8;
                let packet = match v6 {
                    false => {
                        let whole = udp4(offset + len);
                        let mut f = build::ipv4_fragments(&whole, ident, &[(offset, len, more)]);
                        f.remove(0)
                    }
                    true => {
                        let whole = udp6(offset + len, &[]);
                        let mut f = build::ipv6_fragments(&whole, 40, 6, u32::from(ident), &[(offset, len, more)]);
                        f.remove(0)
                    }
                };
                let before = t.stats().frag_received;
                t.ingest(S + i as u64 * 1_000_000, 0, &packet);
                received += t.stats().frag_received - before;
                prop_assert!(t.defrag.held[0] <= 2000 + 1500);
                prop_assert!(t.defrag.held[1] <= 2000 + 1500);
            }
            prop_assert_eq!(t.stats().frag_received, received);
            let restored = Tracker::restore(&t.snapshot()).expect("restores");
            prop_assert!(restored.snapshot() == t.snapshot());
        }

        /// Any cutting, any order, any duplicates: the datagram is tracked once, as the whole
        /// packet would be, when its last missing fragment comes, in either family.
        #[test]
        fn any_fragmentation_reassembles_to_the_whole_datagram(
            payload in 64usize..6000,
            sizes in proptest::collection::vec(1usize..200, 1..12),
            order in any::<u64>(),
            dups in proptest::collection::vec(any::<u8>(), 0..4),
            v6 in any::<bool>(),
        ) {
            let (whole, unfrag) = match v6 {
                false => (udp4(payload), 20),
                true => (udp6(payload, &[]), 40),
            };
            let plan = cuts(whole.len() - unfrag, &sizes);
            let mut frags = match v6 {
                false => frag4(&whole, &plan),
                true => frag6(&whole, 40, 6, &plan),
            };
            // A seeded shuffle, then exact copies of some fragments, each right after itself.
            let mut state = order | 1;
            for i in (1..frags.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                frags.swap(i, (state % (i as u64 + 1)) as usize);
            }
            for d in dups {
                let i = usize::from(d) % frags.len();
                let copy = frags[i].clone();
                frags.insert(i + 1, copy);
            }
            let mut t = tracker();
            let verdicts = feed(&mut t, &frags);
            let completed: Vec<usize> = verdicts
                .iter()
                .enumerate()
                .filter(|(_, v)| **v == Verdict::New)
                .map(|(i, _)| i)
                .collect();
            prop_assert_eq!(completed.len(), 1, "{:?}", verdicts);
            let at = S + completed[0] as u64 * 1_000_000;
            // A duplicate that comes after completion starts a queue of its own, which holds it.
            for (i, v) in verdicts.iter().enumerate() {
                prop_assert!(
                    i == completed[0] || matches!(v, Verdict::Queued | Verdict::Drop),
                    "{:?}", verdicts
                );
            }
            let last = S + (frags.len() as u64 - 1) * 1_000_000;
            prop_assert_eq!(table_and_events(&mut t), whole_at(&whole, at, last));
            prop_assert_eq!(t.stats().frag_failed, 0);
        }
    }
}
