//! A hostile link between two network namespaces, emulated in userspace.
//!
//! Conntrack is judged on messy traffic: lost segments and their retransmissions, reordering,
//! duplicates that come back late, outages longer than the retransmission limit. The kernels
//! this project runs on have no `sch_netem`, so the link is made here: each namespace gets a
//! TUN device (point to point, no link header, so nothing but IP crosses), and one thread
//! carries the IP packets each side sends to the other side, after [`Impairments`] decided
//! their fate. Both kernels see a real link: the sender's conntrack every packet its stack
//! sends, the receiver's only what arrives, as on a wire.
//!
//! The fates come from a seeded ChaCha8 generator per direction, drawn in a fixed order per
//! packet: the n-th packet of a direction meets the same fate in every run with the same seed.
//! (When it is sent is the kernels' business, so two runs are alike, not identical.)
//!
//! Two threads read the devices (each waits on its descriptor with a timeout, so the link stops
//! promptly); one more holds the packets in flight in a time-ordered queue and writes each out
//! when its time comes. The threads run on the CPUs of the thread that starts the link: a
//! caller comparing what conntrack saw with a capture pins itself and the link to one CPU, so
//! that a packet arriving (written by the link) and one leaving (sent by an application) are
//! never processed at once, in an order the capture could not tell. The queue is bounded: past [`MAX_IN_FLIGHT`] packets, a new one is
//! dropped and counted, as a full router queue drops.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::netns::in_netns;
use crate::sys;

/// Packets in flight at most, both directions together.
pub const MAX_IN_FLIGHT: usize = 8192;
/// Larger than any IP packet a TUN device hands over.
const PACKET_BUF: usize = 65_536;
/// How often the readers look at the stop flag while nothing arrives.
const POLL: Duration = Duration::from_millis(20);

/// What one direction of the link does to the packets it carries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Impairments {
    /// Probability that a packet is lost.
    pub loss: f64,
    /// Probability that a packet arrives twice, the copy right behind it.
    pub duplicate: f64,
    /// Probability that a packet arrives again [`Impairments::late_by`] after itself.
    pub late_duplicate: f64,
    pub late_by: Duration,
    /// Probability that a packet is held back by [`Impairments::reorder_by`], so that the
    /// packets behind it overtake it.
    pub reorder: f64,
    pub reorder_by: Duration,
    /// Every packet's delay, plus a uniform share of `jitter` (which reorders packets sent
    /// closer together than it).
    pub delay: Duration,
    pub jitter: Duration,
    /// Times, from the link's start, when this direction carries nothing.
    pub outages: Vec<Range<Duration>>,
    /// Probability that a packet arrives with one bit flipped past its fixed IP header (line
    /// noise the link's CRC missed): the receiver's conntrack and stack find the transport
    /// checksum wrong. Drawn from a generator of its own, so adding it leaves every other fate
    /// of a seeded run as it was.
    pub corrupt: f64,
}

impl Impairments {
    /// A direction that loses, reorders and duplicates: `loss` and the other probabilities as
    /// given, a 1 ms delay with 1 ms of jitter, held-back packets 15 ms late and late
    /// duplicates 200 ms late.
    pub fn lossy(loss: f64, reorder: f64, duplicate: f64) -> Impairments {
        Impairments {
            loss,
            duplicate,
            late_duplicate: duplicate / 2.0,
            late_by: Duration::from_millis(200),
            reorder,
            reorder_by: Duration::from_millis(15),
            delay: Duration::from_millis(1),
            jitter: Duration::from_millis(1),
            outages: Vec::new(),
            corrupt: 0.0,
        }
    }

    /// The same with a share `corrupt` of packets corrupted.
    pub fn corrupting(mut self, corrupt: f64) -> Impairments {
        self.corrupt = corrupt;
        self
    }
}

/// What one direction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Packets the sending side handed to the link.
    pub sent: u64,
    /// Packets written into the receiving side, copies included.
    pub delivered: u64,
    pub lost: u64,
    /// Lost because they came during an outage.
    pub outage_drops: u64,
    pub duplicated: u64,
    pub late_duplicates: u64,
    pub held_back: u64,
    /// Delivered with a bit flipped.
    pub corrupted: u64,
    /// Dropped because [`MAX_IN_FLIGHT`] packets were already in flight.
    pub overflow: u64,
    /// The receiving side refused a write (the device was down, say).
    pub write_errors: u64,
}

/// One end of the link: a TUN device in a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct End {
    /// The namespace (`ip netns` name); `None` for the caller's own.
    pub netns: Option<String>,
    /// The TUN device's name, created if absent.
    pub device: String,
}

/// A running link; [`Link::stop`] ends it and says what it did. Dropping it stops it too, and
/// the TUN devices go with it.
#[derive(Debug)]
pub struct Link {
    stop: Arc<AtomicBool>,
    /// Per direction, nanoseconds since `started` until which it carries nothing.
    cut_until: Arc<[AtomicU64; 2]>,
    started: Instant,
    threads: Vec<JoinHandle<()>>,
    carrier: Option<JoinHandle<[DirectionStats; 2]>>,
}

/// A packet in flight: when it is due, a sequence number that keeps equal times in order, the
/// direction (0: the first end to the second), and its bytes.
type InFlight = Reverse<(Instant, u64, usize, Vec<u8>)>;

impl Link {
    /// Creates (or attaches to) the TUN devices of `ends` and starts carrying packets: what
    /// the first end sends meets `impairments[0]`, what the second sends `impairments[1]`.
    /// The devices are down and without addresses until the caller configures them.
    pub fn start(ends: [End; 2], impairments: [Impairments; 2], seed: u64) -> io::Result<Link> {
        let open = |end: &End| -> io::Result<Arc<File>> {
            let device = end.device.clone();
            in_netns(end.netns.as_deref(), move || sys::open_tun(&device))
                .map_err(io::Error::other)?
                .map(Arc::new)
        };
        let devices = [open(&ends[0])?, open(&ends[1])?];
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<(usize, Instant, Vec<u8>)>();
        let mut threads = Vec::new();
        for (side, device) in devices.iter().enumerate() {
            let (device, tx, stop) = (device.clone(), tx.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                read_side(side, &device, &tx, &stop)
            }));
        }
        drop(tx);
        let started = Instant::now();
        let cut_until = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let cuts = cut_until.clone();
        let carrier = std::thread::spawn(move || {
            let mut carrier = Carrier::new(impairments, seed, started);
            carrier.cut_until = cuts;
            carrier.run(&rx, &devices);
            carrier.stats
        });
        Ok(Link {
            stop,
            cut_until,
            started,
            threads,
            carrier: Some(carrier),
        })
    }

    /// Cuts direction `dir` (0: from the first end) for `length` from now: an outage whose
    /// start the caller chooses while traffic runs. Its drops count as `outage_drops`.
    pub fn cut(&self, dir: usize, length: Duration) {
        let until = (self.started.elapsed() + length).as_nanos();
        self.cut_until[dir & 1].store(u64::try_from(until).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Stops carrying (packets still in flight are dropped) and returns what each direction
    /// did.
    pub fn stop(mut self) -> [DirectionStats; 2] {
        self.halt()
    }

    fn halt(&mut self) -> [DirectionStats; 2] {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The readers have hung up: the carrier's channel is closed and it returns.
        self.carrier
            .take()
            .and_then(|c| c.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Reads the packets one side sends until the link stops.
fn read_side(
    side: usize,
    device: &File,
    tx: &mpsc::Sender<(usize, Instant, Vec<u8>)>,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; PACKET_BUF];
    while !stop.load(Ordering::SeqCst) {
        match sys::poll_readable(device.as_fd(), Some(POLL)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        let n = match (&*device).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if tx.send((side, Instant::now(), buf[..n].to_vec())).is_err() {
            return;
        }
    }
}

/// Decides each packet's fate and delivers it when due.
struct Carrier {
    impairments: [Impairments; 2],
    cut_until: Arc<[AtomicU64; 2]>,
    rngs: [ChaCha8Rng; 2],
    /// Corruption's own draws (see [`Impairments::corrupt`]).
    noise: [ChaCha8Rng; 2],
    started: Instant,
    queue: BinaryHeap<InFlight>,
    next_seq: u64,
    stats: [DirectionStats; 2],
}

impl Carrier {
    fn new(impairments: [Impairments; 2], seed: u64, started: Instant) -> Carrier {
        Carrier {
            impairments,
            cut_until: Arc::new([AtomicU64::new(0), AtomicU64::new(0)]),
            rngs: [
                ChaCha8Rng::seed_from_u64(seed),
                ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
            ],
            noise: [
                ChaCha8Rng::seed_from_u64(seed ^ 0x0bad_c0de_0000_0001),
                ChaCha8Rng::seed_from_u64(seed ^ 0x0bad_c0de_0000_0002),
            ],
            started,
            queue: BinaryHeap::new(),
            next_seq: 0,
            stats: [DirectionStats::default(); 2],
        }
    }

    fn run(&mut self, rx: &mpsc::Receiver<(usize, Instant, Vec<u8>)>, devices: &[Arc<File>; 2]) {
        loop {
            let now = Instant::now();
            while self
                .queue
                .peek()
                .is_some_and(|Reverse((due, ..))| *due <= now)
            {
                let Some(Reverse((_, _, dir, packet))) = self.queue.pop() else {
                    break;
                };
                // A TUN write takes one whole packet or fails; anything less is an error too.
                match (&*devices[1 - dir]).write(&packet) {
                    Ok(n) if n == packet.len() => self.stats[dir].delivered += 1,
                    Ok(_) | Err(_) => self.stats[dir].write_errors += 1,
                }
            }
            let wait = self
                .queue
                .peek()
                .map_or(POLL, |Reverse((due, ..))| {
                    due.saturating_duration_since(now)
                })
                .min(POLL);
            match rx.recv_timeout(wait) {
                Ok((dir, at, packet)) => self.admit(dir, at, packet),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Decides the fate of a packet the side `dir` sent at `at`. The draws are made in the same
    /// order for every packet, whatever the outcome, so the n-th packet's fate depends on the
    /// seed alone.
    fn admit(&mut self, dir: usize, at: Instant, mut packet: Vec<u8>) {
        let imp = &self.impairments[dir];
        let rng = &mut self.rngs[dir];
        let (lose, dup, late, hold, jitter) = (
            rng.random::<f64>() < imp.loss,
            rng.random::<f64>() < imp.duplicate,
            rng.random::<f64>() < imp.late_duplicate,
            rng.random::<f64>() < imp.reorder,
            rng.random::<f64>(),
        );
        let noise = &mut self.noise[dir];
        let (garble, where_, bit) = (
            noise.random::<f64>() < imp.corrupt,
            noise.random::<f64>(),
            noise.random_range(0..8u8),
        );
        let stats = &mut self.stats[dir];
        stats.sent += 1;
        let since = at.saturating_duration_since(self.started);
        let cut = u128::from(self.cut_until[dir].load(Ordering::SeqCst)) > since.as_nanos();
        if cut || imp.outages.iter().any(|o| o.contains(&since)) {
            stats.outage_drops += 1;
            return;
        }
        if lose {
            stats.lost += 1;
            return;
        }
        if garble && flip_past_ip_header(&mut packet, where_, bit) {
            stats.corrupted += 1;
        }
        let mut due = at + imp.delay + imp.jitter.mul_f64(jitter);
        if hold {
            stats.held_back += 1;
            due += imp.reorder_by;
        }
        let mut copies = vec![due];
        if dup {
            stats.duplicated += 1;
            copies.push(due);
        }
        if late {
            stats.late_duplicates += 1;
            copies.push(due + imp.late_by);
        }
        for due in copies {
            if self.queue.len() >= MAX_IN_FLIGHT {
                self.stats[dir].overflow += 1;
                continue;
            }
            self.next_seq += 1;
            self.queue
                .push(Reverse((due, self.next_seq, dir, packet.clone())));
        }
    }
}

/// Flips bit `bit` of the byte at the share `at` (0 to 1) of what follows the fixed IP header
/// (20 bytes or the IPv4 header length; 40 for IPv6). Returns false for a packet with nothing
/// after it.
fn flip_past_ip_header(packet: &mut [u8], at: f64, bit: u8) -> bool {
    let header = match packet.first().map(|b| b >> 4) {
        Some(4) => usize::from(packet[0] & 0x0f) * 4,
        Some(6) => 40,
        _ => return false,
    };
    let Some(rest) = packet.len().checked_sub(header).filter(|&n| n > 0) else {
        return false;
    };
    let i = header + ((rest as f64 * at) as usize).min(rest - 1);
    packet[i] ^= 1 << bit;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corruption_flips_one_bit_past_the_ip_header_and_keeps_the_other_fates() {
        let t0 = Instant::now();
        let lossy = Impairments::lossy(0.3, 0.3, 0.2);
        let mut plain = Carrier::new([lossy.clone(), lossy.clone()], 11, t0);
        let mut noisy = Carrier::new([lossy.clone().corrupting(0.5), lossy], 11, t0);
        let mut v4 = vec![0x45u8; 20];
        v4.extend_from_slice(&[0u8; 30]);
        for i in 0..200u64 {
            let at = t0 + Duration::from_millis(i);
            plain.admit(0, at, v4.clone());
            noisy.admit(0, at, v4.clone());
        }
        let drain = |c: &mut Carrier| -> Vec<(Duration, Vec<u8>)> {
            std::iter::from_fn(|| c.queue.pop())
                .map(|Reverse((due, _, _, p))| (due - t0, p))
                .collect()
        };
        let (a, b) = (drain(&mut plain), drain(&mut noisy));
        let times = |v: &[(Duration, Vec<u8>)]| v.iter().map(|(d, _)| *d).collect::<Vec<_>>();
        assert_eq!(times(&a), times(&b), "loss, copies and delays unchanged");
        let changed = b.iter().filter(|(_, p)| *p != v4).count() as u64;
        assert!(changed > 0 && noisy.stats[0].corrupted > 50);
        for (_, p) in &b {
            assert_eq!(&p[..20], &v4[..20], "the IP header is never touched");
            let bits: u32 = p.iter().zip(&v4).map(|(x, y)| (x ^ y).count_ones()).sum();
            assert!(bits <= 1);
        }
        assert_eq!(plain.stats[0].corrupted, 0);
    }

    fn fates(carrier: &mut Carrier, dir: usize, n: usize) -> Vec<(u64, u64, u64)> {
        let at = carrier.started;
        (0..n)
            .map(|_| {
                let before = carrier.stats[dir];
                carrier.admit(dir, at, vec![0x45]);
                let after = carrier.stats[dir];
                (
                    after.lost - before.lost,
                    after.duplicated - before.duplicated,
                    after.held_back - before.held_back,
                )
            })
            .collect()
    }

    #[test]
    fn the_same_seed_gives_every_packet_the_same_fate() {
        let imp = Impairments::lossy(0.2, 0.2, 0.1);
        let t0 = Instant::now();
        let mut a = Carrier::new([imp.clone(), imp.clone()], 7, t0);
        let mut b = Carrier::new([imp.clone(), imp.clone()], 7, t0);
        let mut c = Carrier::new([imp.clone(), imp], 8, t0);
        let (fa, fb, fc) = (
            fates(&mut a, 0, 500),
            fates(&mut b, 0, 500),
            fates(&mut c, 0, 500),
        );
        assert_eq!(fa, fb);
        assert_ne!(fa, fc);
        // Each direction has its own draws.
        assert_ne!(fates(&mut a, 1, 500), fa);
        // The probabilities hold roughly: 20 % lost of 500.
        let lost: u64 = fa.iter().map(|f| f.0).sum();
        assert!((60..=140).contains(&lost), "{lost}");
    }

    #[test]
    fn outages_drop_everything_and_the_queue_is_bounded() {
        let t0 = Instant::now();
        let outage = Impairments {
            outages: vec![Duration::ZERO..Duration::from_secs(3600)],
            ..Impairments::default()
        };
        let mut carrier = Carrier::new([outage, Impairments::default()], 1, t0);
        carrier.admit(0, t0, vec![1]);
        assert_eq!(carrier.stats[0].outage_drops, 1);
        assert!(carrier.queue.is_empty());
        for _ in 0..MAX_IN_FLIGHT + 10 {
            carrier.admit(1, t0, vec![1]);
        }
        assert_eq!(carrier.queue.len(), MAX_IN_FLIGHT);
        assert_eq!(carrier.stats[1].overflow, 10);
    }

    #[test]
    fn held_back_packets_are_overtaken_and_copies_follow() {
        let t0 = Instant::now();
        let imp = Impairments {
            reorder: 1.0,
            reorder_by: Duration::from_millis(15),
            late_duplicate: 1.0,
            late_by: Duration::from_millis(200),
            ..Impairments::default()
        };
        let mut carrier = Carrier::new([imp, Impairments::default()], 3, t0);
        carrier.admit(0, t0, vec![1]);
        carrier.admit(1, t0, vec![2]);
        let order: Vec<(Duration, Vec<u8>)> = std::iter::from_fn(|| carrier.queue.pop())
            .map(|Reverse((due, _, _, p))| (due - t0, p))
            .collect();
        assert_eq!(
            order,
            [
                (Duration::ZERO, vec![2]),
                (Duration::from_millis(15), vec![1]),
                (Duration::from_millis(215), vec![1]),
            ]
        );
    }
}
