//! Operation scripts decoded from arbitrary bytes, for property tests and fuzz targets: packets
//! from a small pool of flows (TCP with sequence numbers that follow the conversation, UDP,
//! ICMP echo; IPv4 and IPv6), damaged packets, time steps from 1 ms to an hour, partial takes,
//! delivery reports with failures, flush, delete, the proxy's connection calls, snapshot round
//! trips and listener changes.
//!
//! [`Driver`] runs a script on a backend as a host would (every message taken is reported, in
//! order), keeps a transcript of everything the backend answered, and at the end checks the
//! seed's promise: with a reliable listener taking everything and time running on, the table
//! empties and every confirmed entry's DESTROY was delivered exactly once. Two backends given
//! the same script must write the same transcript; so must one backend with and without the
//! script's snapshot round trips.
//!
//! Every byte string is a valid script (the decoder never fails), so a fuzzer's mutations
//! always reach the engine.

use anyhow::{Result, bail, ensure};
use ctwasm_core::tuple::ipproto;
use ctwasm_core::wire::build;
use ctwasm_core::{Addr, Delivery, Direction, Ending, Family, L4Tuple, MessageKind, Tuple};

use crate::backend::{Backend, BackendKind, TrackerSettings, open_backend, restore_backend};

/// Flows in the pool: TCP, UDP and ICMP, each over IPv4 and IPv6, two of each kind.
const FLOWS: u8 = 12;
/// The longest script a decoder reads (operations past it are ignored).
pub const MAX_OPS: usize = 512;

/// One step of a script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A packet of `flow`: for TCP `shape` picks SYN, SYN-ACK, ACK, data, FIN or RST with the
    /// flow's current sequence numbers (some shapes off by a window); `len` bytes of payload.
    Packet {
        flow: u8,
        from_client: bool,
        shape: u8,
        len: u16,
    },
    /// A packet of `flow` with byte `at` changed by `xor`, or cut at `at` when `xor` is 0.
    Damaged {
        flow: u8,
        from_client: bool,
        at: u16,
        xor: u8,
    },
    /// Time moves on by this many milliseconds (1 ms to 1 h).
    Advance {
        ms: u64,
    },
    /// Takes up to `max` messages.
    Take {
        max: u32,
    },
    /// Reports every message taken and not yet reported; bit `i` of `failures` fails the
    /// `i`-th of them (modulo 32), when the listener is reliable (an unreliable one never
    /// fails a message: it loses it).
    Report {
        failures: u32,
    },
    Flush,
    Delete {
        flow: u8,
    },
    /// Opens `flow` as a proxy's connection.
    Open {
        flow: u8,
    },
    Transfer {
        conn: u8,
        reply: bool,
        bytes: u32,
    },
    Close {
        conn: u8,
        ending: Ending,
    },
    /// The listener asks for reliable delivery, or stops asking.
    Listener {
        reliable: bool,
    },
    /// The listener has room again.
    Drained,
    /// The backend is replaced by one restored from its snapshot.
    SnapshotRoundTrip,
}

/// Reads a script from bytes: one opcode byte and its operands each (missing bytes read as
/// zero).
pub fn decode(bytes: &[u8]) -> Vec<Op> {
    let mut input = bytes.iter().copied();
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS {
        let Some(code) = input.next() else {
            break;
        };
        let mut next = || input.next().unwrap_or(0);
        let op = match code % 16 {
            0..=4 => Op::Packet {
                flow: next() % FLOWS,
                from_client: code & 0x80 == 0,
                shape: next(),
                len: u16::from(next()) * 4,
            },
            5 => Op::Damaged {
                flow: next() % FLOWS,
                from_client: code & 0x80 == 0,
                at: u16::from(next()),
                xor: next(),
            },
            6 | 7 => {
                // Mostly short steps, sometimes up to an hour.
                let b = next();
                let ms = if code & 0x80 == 0 {
                    1 + u64::from(b) * 10
                } else {
                    1 + u64::from(b) * 14_117
                };
                Op::Advance { ms }
            }
            8 => Op::Take {
                max: u32::from(next() % 8),
            },
            9 => Op::Report {
                failures: u32::from_le_bytes([next(), next(), 0, 0]),
            },
            10 => match code >> 4 {
                0..=1 => Op::Flush,
                2..=9 => Op::Delete {
                    flow: next() % FLOWS,
                },
                10..=12 => Op::Listener {
                    reliable: code & 0x10 != 0,
                },
                13 | 14 => Op::Drained,
                _ => Op::SnapshotRoundTrip,
            },
            11 => Op::Open {
                flow: next() % FLOWS,
            },
            12 => Op::Transfer {
                conn: next(),
                reply: code & 0x80 != 0,
                bytes: u32::from(next()) * 1000,
            },
            13 => {
                let side = if code & 0x40 == 0 {
                    Direction::Original
                } else {
                    Direction::Reply
                };
                Op::Close {
                    conn: next(),
                    ending: if code & 0x80 == 0 {
                        Ending::Fin { first: side }
                    } else {
                        Ending::Reset { from: side }
                    },
                }
            }
            14 => Op::Listener {
                reliable: code & 0x80 == 0,
            },
            _ => Op::SnapshotRoundTrip,
        };
        ops.push(op);
    }
    ops
}

/// Where a TCP flow's two sides are in their sequence spaces.
#[derive(Clone, Copy, Debug, Default)]
struct TcpSides {
    client_next: u32,
    server_next: u32,
}

/// Runs scripts on one backend and keeps what it answered.
pub struct Driver {
    kind: BackendKind,
    backend: Box<dyn Backend>,
    now_ns: u64,
    reliable: bool,
    /// Round trips are skipped when false (the reference run of a round-trip property).
    round_trips: bool,
    tcp: [TcpSides; FLOWS as usize],
    /// Event frames taken and not yet reported, as (kind, id, tuple).
    unreported: Vec<Option<(MessageKind, u32, Tuple)>>,
    /// Ids the proxy calls opened, in order.
    conns: Vec<u32>,
    /// DESTROYs delivered: (id, original tuple).
    destroys: Vec<(u32, Tuple)>,
    /// Everything the backend answered, in order (when `transcribe`).
    pub transcript: Vec<u8>,
    transcribe: bool,
    /// The tracker began empty, so every entry it confirmed is in `stats.insert` and its
    /// DESTROY must be among `destroys` (a restored one may have had entries, and messages in
    /// flight that this driver never saw).
    began_empty: bool,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("kind", &self.kind)
            .field("now_ns", &self.now_ns)
            .field("transcript_len", &self.transcript.len())
            .finish_non_exhaustive()
    }
}

/// The settings scripts run with: a small table (so early drop and refusals happen), a short
/// retry timeout, timestamps and accounting on.
pub fn settings(seed: u64) -> TrackerSettings {
    let sysctls = [
        ("nf_conntrack_max", "6"),
        ("nf_conntrack_events_retry_timeout", "2"),
        ("nf_conntrack_acct", "1"),
        ("nf_conntrack_timestamp", "1"),
    ];
    TrackerSettings {
        sysctls: sysctls
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        seed,
        ..TrackerSettings::default()
    }
}

impl Driver {
    /// A fresh tracker of `kind` with [`settings`], a reliable listener present.
    pub fn new(kind: BackendKind, settings: &TrackerSettings) -> Result<Driver> {
        let mut driver = Driver::from_backend(kind, open_backend(kind, settings, None)?)?;
        driver.began_empty = true;
        Ok(driver)
    }

    /// Drives `backend` (of `kind`) as it is, with a reliable listener present: for trackers
    /// restored from a snapshot.
    pub fn from_backend(kind: BackendKind, mut backend: Box<dyn Backend>) -> Result<Driver> {
        backend.set_listeners(true, true)?;
        Ok(Driver {
            kind,
            backend,
            now_ns: 1_700_000_000_000_000_000,
            reliable: true,
            round_trips: true,
            tcp: [TcpSides::default(); FLOWS as usize],
            unreported: Vec::new(),
            conns: Vec::new(),
            destroys: Vec::new(),
            transcript: Vec::new(),
            transcribe: true,
            began_empty: false,
        })
    }

    /// Keeps no transcript (the promise is still checked): several times faster, for fuzzing
    /// one backend.
    pub fn without_transcript(mut self) -> Driver {
        self.transcribe = false;
        self
    }

    /// Makes [`Op::SnapshotRoundTrip`] do nothing.
    pub fn without_round_trips(mut self) -> Driver {
        self.round_trips = false;
        self
    }

    /// Runs every operation, then [`Driver::finish`].
    pub fn run(mut self, ops: &[Op]) -> Result<Vec<u8>> {
        for op in ops {
            self.step(op)?;
        }
        self.finish()
    }

    fn log(&mut self, tag: u8, bytes: &[u8]) {
        if !self.transcribe {
            return;
        }
        self.transcript.push(tag);
        self.transcript
            .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.transcript.extend_from_slice(bytes);
    }

    /// Runs one operation.
    pub fn step(&mut self, op: &Op) -> Result<()> {
        match *op {
            Op::Packet {
                flow,
                from_client,
                shape,
                len,
            } => {
                let packet = self.packet(flow, from_client, shape, len);
                self.ingest(&packet)?;
            }
            Op::Damaged {
                flow,
                from_client,
                at,
                xor,
            } => {
                let mut packet = self.packet(flow, from_client, 2, 8);
                let at = usize::from(at) % packet.len();
                if xor == 0 {
                    packet.truncate(at);
                } else {
                    packet[at] ^= xor;
                }
                self.ingest(&packet)?;
            }
            Op::Advance { ms } => {
                self.now_ns += ms * 1_000_000;
                self.backend.advance(self.now_ns)?;
                // Everything due by now has fired: what is left lies ahead (or is due now
                // again, as a retry the last round scheduled).
                let next = self.backend.next_deadline()?;
                ensure!(
                    next.is_none_or(|t| t >= self.now_ns),
                    "after advancing to {}, the next deadline is {next:?}",
                    self.now_ns
                );
            }
            Op::Take { max } => self.take(max)?,
            Op::Report { failures } => self.report(failures)?,
            Op::Flush => self.backend.flush(self.now_ns)?,
            Op::Delete { flow } => {
                let found = self.backend.delete(self.now_ns, 0, &flow_tuple(flow))?;
                self.log(b'd', &[u8::from(found)]);
            }
            Op::Open { flow } => {
                let answer = self.backend.open(self.now_ns, 0, &flow_tuple(flow))?;
                if let Ok(id) = answer {
                    self.conns.push(id);
                }
                self.log(b'o', format!("{answer:?}").as_bytes());
            }
            Op::Transfer { conn, reply, bytes } => {
                let id = self.conn(conn);
                let dir = if reply {
                    Direction::Reply
                } else {
                    Direction::Original
                };
                let answer = self
                    .backend
                    .transfer(self.now_ns, id, dir, u64::from(bytes))?;
                self.log(b't', format!("{answer:?}").as_bytes());
            }
            Op::Close { conn, ending } => {
                let id = self.conn(conn);
                let answer = self.backend.close(self.now_ns, id, ending)?;
                self.log(b'c', format!("{answer:?}").as_bytes());
            }
            Op::Listener { reliable } => {
                self.reliable = reliable;
                self.backend.set_listeners(true, reliable)?;
            }
            Op::Drained => self.backend.listeners_drained(self.now_ns)?,
            Op::SnapshotRoundTrip => {
                if self.round_trips {
                    let bytes = self.backend.snapshot()?;
                    self.backend = restore_backend(self.kind, &bytes)?;
                }
            }
        }
        if self.transcribe {
            let stats = self.backend.stats()?;
            self.log(b's', format!("{stats:?}").as_bytes());
        }
        Ok(())
    }

    /// The id of the `n`-th connection opened (ids that were never opened, too, sometimes).
    fn conn(&self, n: u8) -> u32 {
        match self.conns.len() {
            0 => u32::from(n),
            len => self.conns[usize::from(n) % len],
        }
    }

    fn ingest(&mut self, packet: &[u8]) -> Result<()> {
        let mut batch = Vec::new();
        ctwasm_core::batch::push_packet(&mut batch, self.now_ns, 0, packet);
        let mut verdicts = Vec::new();
        self.backend.ingest(self.now_ns, &batch, &mut verdicts)?;
        self.log(b'v', &verdicts);
        Ok(())
    }

    fn take(&mut self, max: u32) -> Result<()> {
        let mut out = Vec::new();
        let n = self.backend.take_events(max, &mut out)?;
        let mut seen = 0;
        for frame in ctwasm_core::batch::events(&out) {
            let frame = frame.map_err(|e| anyhow::anyhow!("a badly framed event: {e:?}"))?;
            seen += 1;
            let about = ctwasm_core::netlink::CtMessage::parse(frame.netlink)
                .ok()
                .and_then(|(m, _)| Some((m.kind()?, m.id()?, m.orig()?)));
            self.unreported.push(about);
        }
        ensure!(seen == n, "take-events said {n} messages and gave {seen}");
        self.log(b'e', &out);
        Ok(())
    }

    fn report(&mut self, failures: u32) -> Result<()> {
        let taken = std::mem::take(&mut self.unreported);
        let mut results = Vec::with_capacity(taken.len());
        for (i, about) in taken.into_iter().enumerate() {
            let failed = self.reliable && failures & (1 << (i % 32)) != 0;
            if failed {
                results.push(Delivery::Failed);
                continue;
            }
            results.push(Delivery::Delivered);
            if let Some((MessageKind::Destroy, id, tuple)) = about {
                self.destroys.push((id, tuple));
            }
        }
        self.backend.report_delivery(&results)
    }

    /// Delivers everything from now on to a reliable listener, flushes, runs time on until
    /// nothing is left, and checks the promise: the table is empty, and every confirmed
    /// entry's DESTROY was delivered exactly once (no DESTROY twice, for a tracker that did
    /// not begin empty). Returns the transcript.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        self.reliable = true;
        self.backend.set_listeners(true, true)?;
        self.report(0)?;
        self.backend.flush(self.now_ns)?;
        let mut step_ns = 1_000_000_000u64;
        for _ in 0..40 {
            loop {
                self.take(u32::MAX)?;
                if self.unreported.is_empty() {
                    break;
                }
                self.report(0)?;
            }
            let stats = self.backend.stats()?;
            if stats.count == 0 && self.backend.next_deadline()?.is_none() {
                break;
            }
            self.now_ns = self.now_ns.saturating_add(step_ns);
            step_ns = step_ns.saturating_mul(2);
            self.backend.advance(self.now_ns)?;
        }
        let stats = self.backend.stats()?;
        if stats.count != 0 || stats.entries != 0 || stats.dying != 0 {
            bail!("the table did not drain: {stats:?}");
        }
        let mut once = std::collections::HashSet::with_capacity(self.destroys.len());
        if let Some((id, _)) = self.destroys.iter().find(|d| !once.insert(**d)) {
            bail!("the DESTROY of id {id} was delivered twice");
        }
        let destroys = &self.destroys;
        if self.began_empty && destroys.len() as u64 != stats.insert {
            bail!(
                "{} entries were confirmed and {} DESTROYs delivered",
                stats.insert,
                destroys.len()
            );
        }
        self.log(b'S', format!("{stats:?}").as_bytes());
        Ok(self.transcript)
    }

    fn packet(&mut self, flow: u8, from_client: bool, shape: u8, len: u16) -> Vec<u8> {
        let tuple = flow_tuple(flow);
        let (src, dst) = if from_client {
            (tuple.src, tuple.dst)
        } else {
            (tuple.dst, tuple.src)
        };
        let len = usize::from(len);
        let l4 = match tuple.l4 {
            L4Tuple::Ports { src: cp, dst: sp } if tuple.proto == ipproto::TCP => {
                let (sport, dport) = if from_client { (cp, sp) } else { (sp, cp) };
                self.tcp_segment(flow, from_client, shape, len, sport, dport)
            }
            L4Tuple::Ports { src: cp, dst: sp } => {
                let (sport, dport) = if from_client { (cp, sp) } else { (sp, cp) };
                build::udp(sport, dport, len)
            }
            L4Tuple::Icmp { id, .. } if tuple.family == Family::Ipv6 => {
                build::icmpv6_echo(from_client, id, u16::from(shape))
            }
            L4Tuple::Icmp { id, .. } => build::icmp_echo(from_client, id, u16::from(shape)),
            L4Tuple::None => Vec::new(),
        };
        match tuple.family {
            Family::Ipv4 => build::ipv4(v4(src), v4(dst), tuple.proto, &l4),
            Family::Ipv6 => build::ipv6(src.0, dst.0, tuple.proto, &l4),
        }
    }

    fn tcp_segment(
        &mut self,
        flow: u8,
        from_client: bool,
        shape: u8,
        len: usize,
        sport: u16,
        dport: u16,
    ) -> Vec<u8> {
        use ctwasm_core::proto::tcp::flag::{ACK, FIN, RST, SYN};
        let sides = &mut self.tcp[usize::from(flow)];
        let (mine, theirs) = if from_client {
            (&mut sides.client_next, sides.server_next)
        } else {
            (&mut sides.server_next, sides.client_next)
        };
        let (flags, len) = match shape % 8 {
            0 => (if from_client { SYN } else { SYN | ACK }, 0),
            1 | 2 => (ACK, 0),
            3 | 4 => (ACK, len),
            5 => (FIN | ACK, 0),
            6 => (RST | ACK, 0),
            _ => (ACK, len),
        };
        if flags & SYN != 0 {
            // A new conversation starts from this side's fresh initial number.
            *mine = 1000 + u32::from(flow) * 100_000 + u32::from(from_client) * 7_000_000;
        }
        // Shape 7 lands a window's worth ahead: out of window for the tracker.
        let seq = if shape % 8 == 7 {
            mine.wrapping_add(1 << 20)
        } else {
            *mine
        };
        let ack = if flags & ACK != 0 { theirs } else { 0 };
        let used = len as u32 + u32::from(flags & (SYN | FIN) != 0);
        if shape % 8 != 7 {
            *mine = mine.wrapping_add(used);
        }
        build::tcp(sport, dport, seq, ack, flags, 65_000, len)
    }
}

fn v4(a: Addr) -> [u8; 4] {
    a.0[..4].try_into().expect("four bytes")
}

/// The pool's flow `n`: kinds cycle TCP, UDP, ICMP; families alternate every three.
pub fn flow_tuple(n: u8) -> Tuple {
    let n = n % FLOWS;
    let v6 = (n / 3) % 2 == 1;
    let host = |last: u8| {
        if v6 {
            let mut a = [0u8; 16];
            a[0] = 0xfd;
            a[15] = last;
            Addr::v6(a)
        } else {
            Addr::v4([10, 0, 0, last])
        }
    };
    let port = 40_000 + u16::from(n);
    let (proto, l4) = match n % 3 {
        0 => (
            ipproto::TCP,
            L4Tuple::Ports {
                src: port,
                dst: 443,
            },
        ),
        1 => (ipproto::UDP, L4Tuple::Ports { src: port, dst: 53 }),
        _ => (
            if v6 { ipproto::ICMPV6 } else { ipproto::ICMP },
            L4Tuple::Icmp {
                id: port,
                kind: if v6 { 128 } else { 8 },
                code: 0,
            },
        ),
    };
    Tuple {
        family: if v6 { Family::Ipv6 } else { Family::Ipv4 },
        src: host(1),
        dst: host(2),
        proto,
        l4,
    }
}
