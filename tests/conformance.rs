//! The kernel as the judge: real traffic in a network namespace, the kernel's own conntrack
//! events read live, the same packets captured and replayed through the engine, and the two
//! compared flow by flow (event type, TCP or SCTP state, SEEN_REPLY, ASSURED and the timeout;
//! see `ctwasm_host::compare`), and the packets and bytes each DESTROY counts. A difference
//! prints both sequences side by side.
//!
//! Each scenario gets fresh namespaces (deleted on drop, even when a step panics), short
//! per-namespace timeouts, `nf_conntrack_events=1`, a lossless reliable listener subscribed and
//! a capturer bound before the first packet; after the traffic it waits past the timeouts and
//! dumps the table, which evicts expired entries so their DESTROYs come now ("Dumps bring
//! DESTROYs forward" in `host/docs/kernel-behaviour.md`). The engine is then run on the capture
//! up to the instant of that dump. Scenarios run one at a time ("Timing and parallel runs",
//! same page).
//!
//! `CTWASM_CONFORMANCE=substring` runs only the scenarios whose name contains it;
//! `CTWASM_CONFORMANCE_KEEP=DIR` writes each namespace's capture to DIR as a pcap file, to study
//! a divergence again with `ctwasm replay` or tshark.

#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::inject::PacketInjector;
use common::sockets::{abort, connect_from};
use common::{Lab, RULESET, replay_capture, require_live, serial};
use ctwasm_core::proto::tcp::flag::{ACK, FIN, PSH, RST, SYN};
use ctwasm_host::backend::BackendKind;
use ctwasm_host::capture::CapturedPacket;
use ctwasm_host::compare::{Comparison, FlowLog};
use ctwasm_host::replay::ArrivingChecksums;
use ctwasm_live::capture::{Observed, Observer};
use ctwasm_live::ctnetlink::{Conntrack, KernelMessage};
use ctwasm_live::link::Impairments;

/// The per-namespace sysctls every scenario sets, on the kernel and on the engine alike.
const BASE_SYSCTLS: &[(&str, &str)] = &[
    ("nf_conntrack_events", "1"),
    ("nf_conntrack_timestamp", "1"),
    ("nf_conntrack_acct", "1"),
    ("nf_conntrack_tcp_timeout_time_wait", "2"),
    ("nf_conntrack_tcp_timeout_close", "2"),
    ("nf_conntrack_udp_timeout", "2"),
    ("nf_conntrack_udp_timeout_stream", "3"),
    ("nf_conntrack_icmp_timeout", "2"),
    ("nf_conntrack_icmpv6_timeout", "2"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fam {
    V4,
    V6,
}

impl Fam {
    fn lo(self) -> IpAddr {
        match self {
            Fam::V4 => "127.0.0.1".parse().unwrap(),
            Fam::V6 => "::1".parse().unwrap(),
        }
    }
    /// The unspecified address: a raw socket bound to it takes the packets to every address.
    fn any(self) -> IpAddr {
        match self {
            Fam::V4 => std::net::Ipv4Addr::UNSPECIFIED.into(),
            Fam::V6 => std::net::Ipv6Addr::UNSPECIFIED.into(),
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Fam::V4 => "v4",
            Fam::V6 => "v6",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Topology {
    Loopback,
    Veth,
    /// A client and a server namespace with a router between them (`Lab::routed`).
    Routed,
    /// Two namespaces joined by the userspace hostile link: its impairments each way and seed.
    Link(fn() -> ([Impairments; 2], u64)),
}

/// One scenario: its traffic, and what it changes in the common setup.
struct Scenario {
    name: &'static str,
    topology: Topology,
    /// Sysctls set on top of [`BASE_SYSCTLS`].
    sysctls: &'static [(&'static str, &'static str)],
    /// Extra rules for the input chain (after the lo tap saw the packet, after conntrack).
    input_rules: &'static str,
    /// A further ruleset loaded with the common one (empty for none).
    extra_ruleset: &'static str,
    /// The traffic; it calls [`Run::observe`] itself when tracking must start mid-way.
    traffic: fn(&mut Run, Fam),
    /// Whether the runner turns tracking on and starts observing before the traffic.
    observe_first: bool,
    /// Whether each DESTROY's counters must equal the kernel's too. Off only where the capture
    /// point cannot see the packets as conntrack counted them (loopback bulk TCP: the stack
    /// splits some of the super-packets conntrack counted once before they reach the tap).
    counters: bool,
}

/// A scenario in progress.
struct Run {
    lab: Lab,
    input_rules: &'static str,
    extra_ruleset: &'static str,
    observer: Option<Observer>,
}

impl Run {
    /// Loads the ruleset (conntrack starts tracking) and starts the listener and capturer.
    fn observe(&mut self) {
        for &(i, _) in self.lab.observed() {
            self.lab
                .nft(i, &RULESET.replace("@INPUT@", self.input_rules));
            if !self.extra_ruleset.is_empty() {
                self.lab.nft(i, self.extra_ruleset);
            }
        }
        let names: Vec<&str> = self
            .lab
            .observed()
            .iter()
            .map(|&(i, _)| self.lab.name(i))
            .collect();
        let captures: Vec<(&str, &str)> = self
            .lab
            .observed()
            .iter()
            .map(|&(i, dev)| (self.lab.name(i), dev))
            .collect();
        self.observer = Some(Observer::start(&names, &captures).expect("observer starts"));
    }

    fn inside<T: Send>(&self, ns: usize, f: impl FnOnce() -> T + Send) -> T {
        self.lab.inside(ns, f)
    }
}

/// What one scenario found.
struct Outcome {
    name: String,
    comparison: Comparison,
    /// What the hostile link did, for the scenarios that have one.
    link: Option<String>,
    /// Flows whose DESTROY counters differ from the kernel's.
    counter_diffs: Vec<String>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn run_scenario(s: &Scenario, fam: Fam) -> Outcome {
    let sysctls: Vec<(String, String)> = BASE_SYSCTLS
        .iter()
        .chain(s.sysctls)
        .map(|(n, v)| (format!("net.netfilter.{n}"), v.to_string()))
        .collect();
    // A TUN device hands arriving packets on unverified, and conntrack checks them; a veth
    // carries the sending stack's checksums unfinished, and conntrack trusts them (loopback
    // has nothing arriving: its packets are tracked as they leave).
    let arriving = match s.topology {
        Topology::Link(_) => ArrivingChecksums::Unverified,
        Topology::Loopback | Topology::Veth | Topology::Routed => ArrivingChecksums::Offloaded,
    };
    let lab = match s.topology {
        Topology::Loopback => Lab::loopback(),
        Topology::Veth => Lab::veth(),
        Topology::Routed => Lab::routed(),
        Topology::Link(profile) => {
            let (impairments, seed) = profile();
            Lab::link(impairments, seed)
        }
    };
    for i in 0..lab.len() {
        for (n, v) in &sysctls {
            lab.exec(i, &["sysctl", "-qw", &format!("{n}={v}")]);
        }
    }
    let mut run = Run {
        lab,
        input_rules: s.input_rules,
        extra_ruleset: s.extra_ruleset,
        observer: None,
    };
    if s.observe_first {
        run.observe();
    }
    (s.traffic)(&mut run, fam);
    // Past every short timeout, then a dump per namespace: expired entries go now.
    let longest: u64 = sysctls
        .iter()
        .filter(|(n, _)| n.contains("timeout"))
        .filter_map(|(_, v)| v.parse().ok())
        .max()
        .unwrap_or(2);
    std::thread::sleep(Duration::from_millis(longest * 1000 + 1500));
    let until_ns = now_ns();
    for name in run.lab.names() {
        Conntrack::open(Some(name))
            .expect("request socket")
            .dump()
            .expect("dump");
    }
    std::thread::sleep(Duration::from_millis(300));
    let observed = run.observer.take().expect("observing").finish();
    let link = run.lab.stop_link().map(|[ab, ba]| {
        format!(
            "link a->b: {} sent, {} lost, {} cut, {} duplicated, {} late copies, {} held back, \
             {} corrupted; b->a: {} sent, {} lost, {} cut, {} duplicated, {} late copies, {} held \
             back, {} corrupted",
            ab.sent,
            ab.lost,
            ab.outage_drops,
            ab.duplicated,
            ab.late_duplicates,
            ab.held_back,
            ab.corrupted,
            ba.sent,
            ba.lost,
            ba.outage_drops,
            ba.duplicated,
            ba.late_duplicates,
            ba.held_back,
            ba.corrupted
        )
    });

    // Indexed like the observer's sources: the observed namespaces, in order.
    let n = run.lab.observed().len();
    let mut events: Vec<Vec<KernelMessage>> = vec![Vec::new(); n];
    let mut packets: Vec<Vec<CapturedPacket>> = vec![Vec::new(); n];
    for o in observed {
        match o {
            Observed::Event(i, m) => events[i].push(m),
            Observed::Packet(i, p) => packets[i].push(p),
            Observed::Trouble(t) => panic!("{}: {t}", s.name),
        }
    }
    if let Ok(dir) = std::env::var("CTWASM_CONFORMANCE_KEEP") {
        // Each namespace's capture as a pcap file, to study a divergence with `ctwasm replay`.
        for (i, p) in packets.iter().enumerate() {
            let name =
                format!("{} {} ns{i}.pcap", s.name, fam.tag()).replace([' ', '/', ':', ','], "_");
            common::write_pcap(&std::path::Path::new(&dir).join(name), p);
        }
        // And the kernel's events, one line each: the start time tells whether conntrack saw a
        // flow's first packet before the capture did.
        for (i, evs) in events.iter().enumerate() {
            let name =
                format!("{} {} ns{i}.events", s.name, fam.tag()).replace([' ', '/', ':', ','], "_");
            let text: String = evs
                .iter()
                .map(|m| {
                    let t = &m.message;
                    format!(
                        "{:?} {} start={:?} first_packet={:?}\n",
                        t.kind(),
                        t.orig()
                            .map(|o| ctwasm_host::output::tuple_text(&o))
                            .unwrap_or_default(),
                        t.timestamp(),
                        packets[i].first().map(|p| p.ts_ns)
                    )
                })
                .collect();
            std::fs::write(std::path::Path::new(&dir).join(name), text).expect("events file");
        }
    }
    let mut kernel = FlowLog::new();
    let mut ours = FlowLog::new();
    let mut counter_diffs = Vec::new();
    for i in 0..n {
        // Each namespace has its own table; name its flows apart.
        let mut k = FlowLog::new();
        k.extend(events[i].iter().map(|m| &m.message));
        let replayed = replay_capture(
            BackendKind::Native,
            &packets[i],
            &sysctls,
            arriving,
            until_ns,
        )
        .expect("replay");
        // The component must read the very same messages off the same live capture.
        let component = replay_capture(
            BackendKind::Component,
            &packets[i],
            &sysctls,
            arriving,
            until_ns,
        )
        .expect("replay through the component");
        assert!(
            component == replayed,
            "{}: the component's events differ from the native engine's on this capture",
            s.name
        );
        // The counters each DESTROY carries: packets and bytes as conntrack counted them (IP
        // lengths; a reassembled datagram once, with its whole length).
        let (k_counts, o_counts) = (
            destroy_counters(events[i].iter().map(|m| &m.message)),
            destroy_counters(replayed.iter()),
        );
        for (flow, k_c) in &k_counts {
            let o_c = o_counts.get(flow);
            if o_c != Some(k_c) {
                counter_diffs.push(format!("ns{i} {flow}: kernel {k_c:?}, ours {o_c:?}"));
            }
        }
        let mut o = FlowLog::new();
        o.extend(&replayed);
        for (flow, steps) in k.flows() {
            kernel.insert(format!("ns{i} {flow}"), steps.clone());
        }
        for (flow, steps) in o.flows() {
            ours.insert(format!("ns{i} {flow}"), steps.clone());
        }
    }
    Outcome {
        name: format!("{} ({})", s.name, fam.tag()),
        comparison: Comparison::new(&kernel, &ours),
        link,
        counter_diffs,
    }
}

/// `(orig packets, orig bytes, reply packets, reply bytes)` of every DESTROY, by flow (the
/// original tuple and the how-many-th entry of that tuple it ends).
fn destroy_counters<'a>(
    messages: impl Iterator<Item = &'a ctwasm_core::netlink::CtMessage>,
) -> std::collections::BTreeMap<String, (u64, u64, u64, u64)> {
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    let mut out = std::collections::BTreeMap::new();
    for m in messages {
        if m.kind() != Some(ctwasm_core::event::MessageKind::Destroy) {
            continue;
        }
        let Some(orig) = m.orig() else { continue };
        let tuple = ctwasm_host::output::tuple_text(&orig);
        let n = seen.entry(tuple.clone()).or_default();
        *n += 1;
        let (o, r) = (
            m.counters_orig().unwrap_or_default(),
            m.counters_reply().unwrap_or_default(),
        );
        out.insert(
            format!("{tuple} #{n}"),
            (o.packets, o.bytes, r.packets, r.bytes),
        );
    }
    out
}

// ---- traffic --------------------------------------------------------------------------------

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn pair(ip: IpAddr, port: u16) -> (TcpStream, TcpStream, TcpListener) {
    let listener = TcpListener::bind(sa(ip, port)).expect("listen");
    let client = TcpStream::connect(sa(ip, port)).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    (client, server, listener)
}

fn exchange(a: &mut TcpStream, b: &mut TcpStream, n: usize) {
    let msg = vec![b'x'; n];
    a.write_all(&msg).expect("send");
    let mut buf = vec![0; n];
    b.read_exact(&mut buf).expect("recv");
}

/// Reads until the peer's FIN.
fn drain(s: &mut TcpStream) {
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

fn tcp_close_client_first(run: &mut Run, f: Fam) {
    run.inside(0, || {
        let (mut c, mut s, _l) = pair(f.lo(), 5001);
        exchange(&mut c, &mut s, 100);
        exchange(&mut s, &mut c, 100);
        drop(c);
        drain(&mut s);
        drop(s);
    });
}

fn tcp_close_server_first(run: &mut Run, f: Fam) {
    run.inside(0, || {
        let (mut c, mut s, _l) = pair(f.lo(), 5001);
        exchange(&mut c, &mut s, 100);
        exchange(&mut s, &mut c, 100);
        drop(s);
        drain(&mut c);
        drop(c);
    });
}

fn tcp_rst_client(run: &mut Run, f: Fam) {
    run.inside(0, || {
        let (mut c, mut s, _l) = pair(f.lo(), 5001);
        exchange(&mut c, &mut s, 10);
        abort(c);
        drain(&mut s);
    });
}

fn tcp_rst_server(run: &mut Run, f: Fam) {
    run.inside(0, || {
        let (mut c, mut s, _l) = pair(f.lo(), 5001);
        exchange(&mut c, &mut s, 10);
        exchange(&mut s, &mut c, 10);
        abort(s);
        drain(&mut c);
    });
}

fn tcp_refused(run: &mut Run, f: Fam) {
    run.inside(0, || {
        assert!(TcpStream::connect(sa(f.lo(), 5009)).is_err());
    });
}

/// The client half-closes (FIN), the server goes on sending, then aborts.
fn tcp_half_closed_then_reset(run: &mut Run, f: Fam) {
    run.inside(0, || {
        let (mut c, mut s, _l) = pair(f.lo(), 5001);
        exchange(&mut c, &mut s, 10);
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut buf = [0u8; 1];
        assert_eq!(s.read(&mut buf).expect("eof"), 0);
        exchange(&mut s, &mut c, 50);
        std::thread::sleep(Duration::from_millis(50));
        abort(s);
        let _ = c.read(&mut buf);
    });
}

/// Small writes with pauses longer than the delayed-ACK timer: bare ACKs on the wire.
fn tcp_delayed_acks(run: &mut Run, f: Fam) {
    run.inside(0, || {
        let (mut c, mut s, _l) = pair(f.lo(), 5001);
        for i in 0..6 {
            exchange(&mut c, &mut s, 20 + i);
            std::thread::sleep(Duration::from_millis(60));
            exchange(&mut s, &mut c, 200 + i);
            std::thread::sleep(Duration::from_millis(60));
        }
        drop(c);
        std::thread::sleep(Duration::from_millis(60));
        drain(&mut s);
        drop(s);
    });
}

/// 16 connections open at once, data interleaved, closed by different sides and ways.
fn tcp_interleaved(run: &mut Run, f: Fam) {
    run.inside(0, || {
        let listener = TcpListener::bind(sa(f.lo(), 5001)).expect("listen");
        let mut conns: Vec<(TcpStream, TcpStream)> = (0..16)
            .map(|_| {
                let c = TcpStream::connect(sa(f.lo(), 5001)).expect("connect");
                let (s, _) = listener.accept().expect("accept");
                (c, s)
            })
            .collect();
        for round in 0..3 {
            for (c, s) in conns.iter_mut() {
                exchange(c, s, 10 + round);
                exchange(s, c, 30 + round);
            }
        }
        for (i, (mut c, mut s)) in conns.into_iter().enumerate() {
            match i % 4 {
                0 => {
                    drop(c);
                    drain(&mut s);
                }
                1 => {
                    drop(s);
                    drain(&mut c);
                }
                2 => {
                    abort(c);
                    drain(&mut s);
                }
                _ => {
                    abort(s);
                    drain(&mut c);
                }
            }
        }
    });
}

/// The server closes first (its socket keeps the TIME_WAIT), and the client connects again
/// from the same port while conntrack still holds the old entry in TIME_WAIT.
fn tcp_reopen_after_time_wait(run: &mut Run, f: Fam) {
    run.inside(0, || {
        let listener = TcpListener::bind(sa(f.lo(), 5001)).expect("listen");
        for round in 0..2 {
            let mut c = connect_from(sa(f.lo(), 40100), sa(f.lo(), 5001)).expect("connect");
            let (mut s, _) = listener.accept().expect("accept");
            exchange(&mut c, &mut s, 10 + round);
            drop(s);
            drain(&mut c);
            drop(c);
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}

/// The connection is up and has carried data before any ruleset exists; tracking starts
/// while it is idle, and conntrack picks it up from its next segment.
fn tcp_mid_stream_pickup(run: &mut Run, f: Fam) {
    let (mut c, mut s, l) = run.inside(0, || {
        let (mut c, mut s, l) = pair(f.lo(), 5001);
        exchange(&mut c, &mut s, 100);
        exchange(&mut s, &mut c, 100);
        (c, s, l)
    });
    std::thread::sleep(Duration::from_millis(100));
    run.observe();
    exchange(&mut c, &mut s, 10);
    exchange(&mut s, &mut c, 10);
    exchange(&mut c, &mut s, 10);
    drop(c);
    drain(&mut s);
    drop((s, l));
}

/// The first SYN is dropped after conntrack saw it (input chain); the client retransmits.
fn tcp_retransmitted_syn(run: &mut Run, f: Fam) {
    run.inside(0, || {
        let (mut c, mut s, _l) = pair(f.lo(), 5011);
        exchange(&mut c, &mut s, 10);
        drop(c);
        drain(&mut s);
    });
}

/// The first SYN/ACK is dropped after conntrack saw it: the client retransmits its SYN into
/// SYN_RECV and the server its SYN/ACK.
fn tcp_retransmitted_synack(run: &mut Run, f: Fam) {
    run.inside(0, || {
        let (mut c, mut s, _l) = pair(f.lo(), 5012);
        exchange(&mut c, &mut s, 10);
        drop(c);
        drain(&mut s);
    });
}

/// The server closes with data still unread: Linux answers with RST instead of FIN.
fn tcp_close_with_unread_data(run: &mut Run, f: Fam) {
    run.inside(0, || {
        let (mut c, s, _l) = pair(f.lo(), 5001);
        c.write_all(&[b'x'; 100]).expect("send");
        std::thread::sleep(Duration::from_millis(50));
        drop(s);
        let mut buf = [0u8; 1];
        let _ = c.read(&mut buf);
    });
}

/// Both sides shut down their write side at once: FINs cross.
fn tcp_simultaneous_close(run: &mut Run, f: Fam) {
    run.inside(0, || {
        let (mut c, mut s, _l) = pair(f.lo(), 5001);
        exchange(&mut c, &mut s, 10);
        let c2 = c.try_clone().expect("clone");
        let t = std::thread::spawn(move || c2.shutdown(std::net::Shutdown::Write));
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        t.join().expect("thread").expect("shutdown");
        drain(&mut c);
        drain(&mut s);
    });
}

/// Bulk data, far more than one window, one way, with a small receive buffer on the reader.
fn tcp_bulk(run: &mut Run, f: Fam) {
    run.inside(0, || {
        let (mut c, mut s, _l) = pair(f.lo(), 5001);
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'y'; 64 * 1024];
            for _ in 0..64 {
                c.write_all(&chunk).expect("bulk send");
            }
            drop(c);
        });
        std::thread::sleep(Duration::from_millis(200));
        drain(&mut s);
        writer.join().expect("writer");
    });
}

fn udp_pair(ip: IpAddr) -> (UdpSocket, UdpSocket) {
    let a = UdpSocket::bind(sa(ip, 40002)).expect("udp a");
    let b = UdpSocket::bind(sa(ip, 5002)).expect("udp b");
    b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    a.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    (a, b)
}

fn udp_round(a: &UdpSocket, b: &UdpSocket) {
    let mut buf = [0u8; 64];
    a.send_to(b"ping", b.local_addr().unwrap()).expect("send");
    let (n, from) = b.recv_from(&mut buf).expect("recv");
    b.send_to(&buf[..n], from).expect("reply");
    a.recv_from(&mut buf).expect("reply recv");
}

fn udp_one_way(run: &mut Run, f: Fam) {
    run.inside(0, || {
        let (a, b) = udp_pair(f.lo());
        a.send_to(b"one", b.local_addr().unwrap()).expect("send");
        let mut buf = [0u8; 8];
        b.recv_from(&mut buf).expect("recv");
    });
}

fn udp_request_response(run: &mut Run, f: Fam) {
    run.inside(0, || {
        let (a, b) = udp_pair(f.lo());
        udp_round(&a, &b);
        udp_round(&a, &b);
    });
}

/// A third exchange 2.5 s after the first: the stream rule makes the entry ASSURED.
fn udp_stream(run: &mut Run, f: Fam) {
    run.inside(0, || {
        let (a, b) = udp_pair(f.lo());
        udp_round(&a, &b);
        udp_round(&a, &b);
        std::thread::sleep(Duration::from_millis(2500));
        udp_round(&a, &b);
    });
}

/// A datagram to a closed port: the ICMP port-unreachable is RELATED to the UDP entry.
fn udp_port_unreachable(run: &mut Run, f: Fam) {
    run.inside(0, || {
        let a = UdpSocket::bind(sa(f.lo(), 40004)).expect("udp");
        a.send_to(b"anyone?", sa(f.lo(), 5009)).expect("send");
        std::thread::sleep(Duration::from_millis(100));
    });
}

/// UDP-Lite sockets on both ends: a request, a reply, and a `rounds`-th exchange.
fn udplite_exchange(run: &mut Run, f: Fam, rounds: usize) {
    run.inside(0, || {
        let a = common::sockets::udplite_bind(sa(f.lo(), 40006)).expect("udplite a");
        let b = common::sockets::udplite_bind(sa(f.lo(), 5006)).expect("udplite b");
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        let mut buf = [0u8; 64];
        for round in 0..rounds {
            a.send_to(b"lite", b.local_addr().unwrap()).expect("send");
            let (n, from) = b.recv_from(&mut buf).expect("recv");
            if round + 1 < rounds || rounds > 1 {
                b.send_to(&buf[..n], from).expect("reply");
                a.recv_from(&mut buf).expect("reply recv");
            }
        }
    });
}

fn udplite_one_way(run: &mut Run, f: Fam) {
    udplite_exchange(run, f, 1);
}

/// Request, reply, request, reply: assured at the third packet, without UDP's two seconds.
fn udplite_request_response(run: &mut Run, f: Fam) {
    udplite_exchange(run, f, 2);
}

fn icmp_echo(run: &mut Run, f: Fam) {
    let target = f.lo().to_string();
    let flag = if f == Fam::V6 { "-6" } else { "-4" };
    run.lab.exec(
        0,
        &["ping", flag, "-c", "2", "-i", "0.2", "-W", "1", &target],
    );
}

/// TCP, UDP and ping from ns0 to ns1 over a veth pair; each namespace's table is compared with
/// its own interface's capture.
fn veth_mixed(run: &mut Run, f: Fam) {
    let (client_ip, server_ip): (IpAddr, IpAddr) = match f {
        Fam::V4 => ("10.200.0.1".parse().unwrap(), "10.200.0.2".parse().unwrap()),
        Fam::V6 => (
            "fd00:200::1".parse().unwrap(),
            "fd00:200::2".parse().unwrap(),
        ),
    };
    let (listener, udp) = run.inside(1, || {
        let l = TcpListener::bind(sa(server_ip, 5001)).expect("listen");
        let u = UdpSocket::bind(sa(server_ip, 5002)).expect("udp");
        u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        (l, u)
    });
    let (mut c, a) = run.inside(0, || {
        let c = TcpStream::connect(sa(server_ip, 5001)).expect("connect");
        let a = UdpSocket::bind(sa(client_ip, 40002)).expect("udp");
        a.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        (c, a)
    });
    let (mut s, _) = listener.accept().expect("accept");
    exchange(&mut c, &mut s, 100);
    exchange(&mut s, &mut c, 100);
    drop(c);
    drain(&mut s);
    drop(s);
    udp_round(&a, &udp);
    udp_round(&a, &udp);
    let target = server_ip.to_string();
    run.lab
        .exec(0, &["ping", "-c", "2", "-i", "0.2", "-W", "1", &target]);
}

// ---- crafted segments -----------------------------------------------------------------------
//
// Both ends of these connections are played by the test: TCP segments built with
// `ctwasm_core::wire::build`, injected into the namespace's loopback (AF_PACKET, see
// `PacketInjector`), so conntrack sees each exactly once at PREROUTING, like a packet from a
// real peer. Nothing listens on the ports; the local stack answers with RSTs, which
// [`CRAFTED_RULESET`] drops in the output hook before conntrack (priority -300) sees them.

/// The crafted connection's ports.
const CRAFTED_CLIENT_PORT: u16 = 40500;
const CRAFTED_SERVER_PORT: u16 = 6000;

/// Drops the local stack's answers to the crafted segments before conntrack sees them.
const CRAFTED_RULESET: &str = "table inet ctwasm_crafted {
    chain out {
        type filter hook output priority -300;
        tcp sport 6000 drop
        tcp dport 6000 drop
        tcp sport 40500 drop
        tcp dport 40500 drop
    }
}
";

/// Short timeouts that tell the timeout rules apart in the events: a state change under
/// retransmissions gets 5 s, with unacknowledged data 4 s, otherwise its state's own.
const CRAFTED_SYSCTLS: &[(&str, &str)] = &[
    ("nf_conntrack_tcp_timeout_max_retrans", "5"),
    ("nf_conntrack_tcp_timeout_unacknowledged", "4"),
];

const CRAFTED_LIBERAL_SYSCTLS: &[(&str, &str)] = &[
    ("nf_conntrack_tcp_timeout_max_retrans", "5"),
    ("nf_conntrack_tcp_timeout_unacknowledged", "4"),
    ("nf_conntrack_tcp_be_liberal", "1"),
];

/// The client's and the server's initial sequence numbers, and the window both announce.
const C0: u32 = 1_000;
const S0: u32 = 5_000_000;
const WIN: u16 = 64_000;

/// Sends segments of one connection from either end.
struct Wire {
    inj: PacketInjector,
    fam: Fam,
}

impl Wire {
    fn open(run: &Run, fam: Fam) -> Wire {
        if fam == Fam::V4 {
            // An IPv4 packet from 127.0.0.1 that arrives (rather than being sent through lo)
            // is a martian unless these allow it; it would pass PREROUTING, fail routing, and
            // its conntrack would never be confirmed.
            for knob in ["route_localnet", "accept_local"] {
                run.lab
                    .exec(0, &["sysctl", "-qw", &format!("net.ipv4.conf.lo.{knob}=1")]);
                run.lab.exec(
                    0,
                    &["sysctl", "-qw", &format!("net.ipv4.conf.all.{knob}=1")],
                );
            }
        }
        Wire {
            inj: PacketInjector::open(Some(run.lab.name(0)), "lo").expect("injector"),
            fam,
        }
    }

    fn send(&self, from_client: bool, seq: u32, ack: u32, flags: u8, win: u16, len: usize) {
        self.send_with(from_client, seq, ack, flags, win, &[], len);
    }

    /// A segment with raw TCP option bytes.
    #[allow(clippy::too_many_arguments)]
    fn send_with(
        &self,
        from_client: bool,
        seq: u32,
        ack: u32,
        flags: u8,
        win: u16,
        options: &[u8],
        len: usize,
    ) {
        use ctwasm_core::wire::build;
        let (sp, dp) = if from_client {
            (CRAFTED_CLIENT_PORT, CRAFTED_SERVER_PORT)
        } else {
            (CRAFTED_SERVER_PORT, CRAFTED_CLIENT_PORT)
        };
        let l4 = build::tcp_with_options(sp, dp, seq, ack, flags, win, options, len);
        let packet = match self.fam {
            Fam::V4 => build::ipv4([127, 0, 0, 1], [127, 0, 0, 1], 6, &l4),
            Fam::V6 => build::ipv6(
                std::net::Ipv6Addr::LOCALHOST.octets(),
                std::net::Ipv6Addr::LOCALHOST.octets(),
                6,
                &l4,
            ),
        };
        self.inj.send(&packet).expect("inject");
        // Apart enough that the capture's order is the kernel's.
        std::thread::sleep(Duration::from_millis(5));
    }

    /// A segment from the client.
    fn c(&self, seq: u32, ack: u32, flags: u8, win: u16, len: usize) {
        self.send(true, seq, ack, flags, win, len);
    }

    /// A segment from the server.
    fn s(&self, seq: u32, ack: u32, flags: u8, win: u16, len: usize) {
        self.send(false, seq, ack, flags, win, len);
    }

    /// SYN, SYN/ACK, ACK; the next sequence numbers are `C0 + 1` and `S0 + 1`.
    fn handshake(&self) {
        self.c(C0, 0, SYN, WIN, 0);
        self.s(S0, C0 + 1, SYN | ACK, WIN, 0);
        self.c(C0 + 1, S0 + 1, ACK, WIN, 0);
    }

    /// The client closes first, the server answers, from sequence numbers `c` and `s`.
    fn close_client_first(&self, c: u32, s: u32) {
        self.c(c, s, FIN | ACK, WIN, 0);
        self.s(s, c + 1, ACK, WIN, 0);
        self.s(s, c + 1, FIN | ACK, WIN, 0);
        self.c(c + 1, s + 1, ACK, WIN, 0);
    }
}

/// Established, then a data segment far beyond the server's window (invalid: no state change,
/// no timeout refresh, no bookkeeping), then an ordinary close.
fn crafted_out_of_window_data(run: &mut Run, f: Fam) {
    let w = Wire::open(run, f);
    w.handshake();
    let (c, s) = (C0 + 1, S0 + 1);
    w.c(c.wrapping_add(10_000_000), s, PSH | ACK, WIN, 100);
    w.close_client_first(c, s);
}

/// Established with data acknowledged, then an RST from the server far outside the window
/// (invalid), then an ordinary close.
fn crafted_out_of_window_rst(run: &mut Run, f: Fam) {
    let w = Wire::open(run, f);
    w.handshake();
    let (c, s) = (C0 + 1, S0 + 1);
    w.c(c, s, PSH | ACK, WIN, 100);
    w.s(s, c + 100, ACK, WIN, 0);
    w.s(s.wrapping_add(10_000_000), c + 100, RST | ACK, WIN, 0);
    w.close_client_first(c + 100, s);
}

/// The server's out-of-window RST, answered by the client's out-of-window FIN: both invalid,
/// and the second cuts the entry's five days to the unacknowledged timeout (no event): the
/// kernel lets such a connection go soon, and only its DESTROY shows it.
fn crafted_out_of_window_rst_and_fin(run: &mut Run, f: Fam) {
    let w = Wire::open(run, f);
    w.handshake();
    let (c, s) = (C0 + 1, S0 + 1);
    w.c(c, s, PSH | ACK, WIN, 100);
    w.s(s, c + 100, ACK, WIN, 0);
    w.s(s.wrapping_add(10_000_000), c + 100, RST | ACK, WIN, 0);
    w.c((c + 100).wrapping_add(10_000_000), s, FIN | ACK, WIN, 0);
}

/// The same data segment five times (four retransmissions, more than max_retrans = 3), then
/// the client's FIN: FIN_WAIT gets the max_retrans timeout; nothing answers.
fn crafted_retransmissions(run: &mut Run, f: Fam) {
    let w = Wire::open(run, f);
    w.handshake();
    let (c, s) = (C0 + 1, S0 + 1);
    for _ in 0..5 {
        w.c(c, s, PSH | ACK, WIN, 100);
    }
    w.c(c + 100, s, FIN | ACK, WIN, 0);
}

/// Data the server never acknowledges, then the server's FIN: FIN_WAIT gets the
/// unacknowledged timeout.
fn crafted_unacknowledged(run: &mut Run, f: Fam) {
    let w = Wire::open(run, f);
    w.handshake();
    let (c, s) = (C0 + 1, S0 + 1);
    w.c(c, s, PSH | ACK, WIN, 100);
    w.s(s, c, FIN | ACK, WIN, 0);
}

/// The server acknowledges everything with a zero window, the client closes, the server
/// acknowledges the FIN with a zero window: nothing is unacknowledged, the last window is 0,
/// so CLOSE_WAIT gets the max_retrans timeout.
fn crafted_zero_window(run: &mut Run, f: Fam) {
    let w = Wire::open(run, f);
    w.handshake();
    let (c, s) = (C0 + 1, S0 + 1);
    w.c(c, s, PSH | ACK, WIN, 100);
    w.s(s, c + 100, ACK, 0, 0);
    w.c(c + 100, s, FIN | ACK, WIN, 0);
    w.s(s, c + 101, ACK, 0, 0);
}

/// Data a few bytes beyond the server's window (ignored, but its end is noted), then the
/// server's FIN acknowledging exactly those bytes: in the window, FIN_WAIT.
fn crafted_bytes_beyond_window(run: &mut Run, f: Fam) {
    let w = Wire::open(run, f);
    w.handshake();
    let (c, s) = (C0 + 1, S0 + 1);
    let seq = c + u32::from(WIN) + 10;
    w.c(seq, s, PSH | ACK, WIN, 100);
    w.s(s, seq + 100, FIN | ACK, WIN, 0);
}

/// An RST from the server inside the window but not at the expected sequence number: the
/// state stays ESTABLISHED (room for a challenge ACK) but the timeout becomes CLOSE's, so the
/// entry ends without another state change.
fn crafted_rst_in_window_not_exact(run: &mut Run, f: Fam) {
    let w = Wire::open(run, f);
    w.handshake();
    let (c, s) = (C0 + 1, S0 + 1);
    w.c(c, s, PSH | ACK, WIN, 100);
    w.s(s, c + 100, ACK, WIN, 0);
    w.s(s + 50, c + 100, RST | ACK, WIN, 0);
}

/// A SYN, its retransmission 1.5 s later (SYN_SENT's 3 s are not renewed), and a SYN/ACK after
/// the first SYN's 3 s: the entry is gone by then, and a SYN/ACK makes none.
fn crafted_syn_retransmit(run: &mut Run, f: Fam) {
    let w = Wire::open(run, f);
    w.c(C0, 0, SYN, WIN, 0);
    std::thread::sleep(Duration::from_millis(1500));
    w.c(C0, 0, SYN, WIN, 0);
    std::thread::sleep(Duration::from_millis(2000));
    w.s(S0, C0 + 1, SYN | ACK, WIN, 0);
}

/// A SYN/ACK acknowledging more than the SYN (invalid), then the right one, the ACK, and an
/// RST from the client.
fn crafted_synack_wrong_ack(run: &mut Run, f: Fam) {
    let w = Wire::open(run, f);
    w.c(C0, 0, SYN, WIN, 0);
    w.s(S0, C0 + 5_001, SYN | ACK, WIN, 0);
    w.s(S0, C0 + 1, SYN | ACK, WIN, 0);
    w.c(C0 + 1, S0 + 1, ACK, WIN, 0);
    w.c(C0 + 1, S0 + 1, RST, 0, 0);
}

/// A SYN, a reply ACK with numbers of its own (the challenge ACK a socket in TIME_WAIT sends
/// to an old duplicate SYN: ignored in SYN_SENT), then the client's RST carrying exactly the
/// number that ACK acknowledged: the kernel skips the window check and closes the entry.
fn crafted_challenge_ack_in_syn_sent(run: &mut Run, f: Fam) {
    let w = Wire::open(run, f);
    w.c(C0, 0, SYN, WIN, 0);
    let acked = C0.wrapping_add(777_777);
    w.s(S0, acked, ACK, WIN, 0);
    w.c(acked, 0, RST, 0, 0);
}

/// The server closes first and the entry reaches LAST_ACK; a new SYN from the client on the
/// same ports is ignored, the server's RFC 5961 challenge ACK must not count as the final ACK
/// (LAST_ACK stays, its timeout runs out), where the real final ACK would give TIME_WAIT.
fn crafted_challenge_ack_in_last_ack(run: &mut Run, f: Fam) {
    let w = Wire::open(run, f);
    w.handshake();
    let (c, s) = (C0 + 1, S0 + 1);
    w.s(s, c, FIN | ACK, WIN, 0);
    w.c(c, s + 1, ACK, WIN, 0);
    w.c(c, s + 1, FIN | ACK, WIN, 0);
    w.c(C0.wrapping_add(900_000), 0, SYN, WIN, 0);
    w.s(s + 1, c + 1, ACK, WIN, 0);
}

// ---- fragments ------------------------------------------------------------------------------

const FRAG_CLIENT_PORT: u16 = 40600;
const FRAG_SERVER_PORT: u16 = 6600;

/// Sends hand-built UDP datagrams and their fragments between two loopback ports, on which
/// sockets are bound so the local stack takes them quietly (no port unreachable).
struct FragWire {
    wire: Wire,
    _sockets: Vec<UdpSocket>,
    next_ident: std::cell::Cell<u16>,
}

impl FragWire {
    fn open(run: &Run, fam: Fam) -> FragWire {
        let wire = Wire::open(run, fam);
        let lo = fam.lo();
        let sockets = run.inside(0, || {
            [FRAG_CLIENT_PORT, FRAG_CLIENT_PORT + 1, FRAG_SERVER_PORT]
                .into_iter()
                .map(|port| UdpSocket::bind(sa(lo, port)).expect("udp bind"))
                .collect::<Vec<_>>()
        });
        FragWire {
            wire,
            _sockets: sockets,
            next_ident: std::cell::Cell::new(0x4000),
        }
    }

    /// A UDP datagram of `len` payload bytes from a client port (or the server).
    fn datagram(&self, from_client: bool, client_port: u16, len: usize) -> Vec<u8> {
        use ctwasm_core::wire::build;
        let (sp, dp) = match from_client {
            true => (client_port, FRAG_SERVER_PORT),
            false => (FRAG_SERVER_PORT, client_port),
        };
        let l4 = build::udp(sp, dp, len);
        match self.wire.fam {
            Fam::V4 => build::ipv4([127, 0, 0, 1], [127, 0, 0, 1], 17, &l4),
            Fam::V6 => build::ipv6(
                std::net::Ipv6Addr::LOCALHOST.octets(),
                std::net::Ipv6Addr::LOCALHOST.octets(),
                17,
                &l4,
            ),
        }
    }

    /// Fragments of `whole` under an identification of their own: `(offset, length, more)`.
    fn fragments(&self, whole: &[u8], cuts: &[(usize, usize, bool)]) -> Vec<Vec<u8>> {
        use ctwasm_core::wire::build;
        let ident = self.next_ident.get();
        self.next_ident.set(ident + 1);
        match self.wire.fam {
            Fam::V4 => build::ipv4_fragments(whole, ident, cuts),
            Fam::V6 => build::ipv6_fragments(whole, 40, 6, u32::from(ident), cuts),
        }
    }

    /// Injects the packets in order, apart enough that the capture's order is the kernel's.
    fn send(&self, packets: &[&Vec<u8>]) {
        for p in packets {
            self.wire.inj.send(p).expect("inject");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// 3 000 bytes cut in three: the data offsets and lengths, the last fragment last.
const THIRDS: [(usize, usize, bool); 3] = [(0, 1480, true), (1480, 1480, true), (2960, 48, false)];

/// A request in three fragments sent out of order, one of them twice, and a whole reply: the
/// kernel reassembles the request and tracks it once, with its reply.
fn frag_out_of_order_with_a_duplicate(run: &mut Run, f: Fam) {
    let w = FragWire::open(run, f);
    let request = w.datagram(true, FRAG_CLIENT_PORT, 3000);
    let frags = w.fragments(&request, &THIRDS);
    w.send(&[&frags[2], &frags[0], &frags[0], &frags[1]]);
    w.send(&[&w.datagram(false, FRAG_CLIENT_PORT, 500)]);
}

/// A request whose middle fragment is lost never reaches conntrack: no entry at all. Another
/// client's whole datagram beside it is tracked as usual.
fn frag_lost_fragment(run: &mut Run, f: Fam) {
    let w = FragWire::open(run, f);
    let request = w.datagram(true, FRAG_CLIENT_PORT, 3000);
    let frags = w.fragments(&request, &THIRDS);
    w.send(&[&frags[0], &frags[2]]);
    w.send(&[&w.datagram(true, FRAG_CLIENT_PORT + 1, 100)]);
}

/// A whole request, then a reply of which only the first fragment arrives: the entry never
/// sees its reply (no SEEN_REPLY).
fn frag_lost_reply_fragment(run: &mut Run, f: Fam) {
    let w = FragWire::open(run, f);
    w.send(&[&w.datagram(true, FRAG_CLIENT_PORT, 100)]);
    let reply = w.datagram(false, FRAG_CLIENT_PORT, 3000);
    let frags = w.fragments(&reply, &THIRDS);
    w.send(&[&frags[0]]);
}

/// Overlapping fragments: the kernel discards the whole datagram; the client sends it again,
/// cleanly cut, and that one is tracked.
fn frag_overlap_then_clean(run: &mut Run, f: Fam) {
    let w = FragWire::open(run, f);
    let request = w.datagram(true, FRAG_CLIENT_PORT, 3000);
    let bad = w.fragments(
        &request,
        &[(0, 1480, true), (1472, 1488, true), (2960, 48, false)],
    );
    w.send(&[&bad[0], &bad[1], &bad[2]]);
    let good = w.fragments(&request, &THIRDS);
    w.send(&[&good[0], &good[1], &good[2]]);
}

// ---- GRE and SCTP ---------------------------------------------------------------------------

/// Sends hand-built packets of one protocol between two local addresses (IPv4 127.0.0.1 and
/// 127.0.0.2; IPv6 ::1 and fd00::2, added to lo), injected on lo so that they arrive as from a
/// wire, with a raw socket of the protocol open so the local stack takes them quietly (no
/// protocol unreachable).
struct PeerWire {
    wire: Wire,
    proto: u8,
    _raw: common::sockets::RawSocket,
}

impl PeerWire {
    fn open(run: &Run, fam: Fam, proto: u8) -> PeerWire {
        let wire = Wire::open(run, fam);
        if fam == Fam::V6 {
            run.lab.exec(
                0,
                &[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    "fd00::2/128",
                    "dev",
                    "lo",
                    "nodad",
                ],
            );
        }
        let raw = run.inside(0, || {
            common::sockets::RawSocket::bind(fam.any(), i32::from(proto))
                .unwrap_or_else(|e| panic!("raw socket of protocol {proto}: {e}"))
        });
        PeerWire {
            wire,
            proto,
            _raw: raw,
        }
    }

    /// One packet from the first address (`out`) or to it, with `l4` as its payload.
    fn send(&self, out: bool, l4: &[u8]) {
        use ctwasm_core::wire::build;
        let packet = match self.wire.fam {
            Fam::V4 => {
                let (a, b) = ([127, 0, 0, 1], [127, 0, 0, 2]);
                let (s, d) = if out { (a, b) } else { (b, a) };
                build::ipv4(s, d, self.proto, l4)
            }
            Fam::V6 => {
                let a = std::net::Ipv6Addr::LOCALHOST.octets();
                let b: std::net::Ipv6Addr = "fd00::2".parse().unwrap();
                let (s, d) = if out {
                    (a, b.octets())
                } else {
                    (b.octets(), a)
                };
                build::ipv6(s, d, self.proto, l4)
            }
        };
        self.wire.inj.send(&packet).expect("inject");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// GRE version 0 carrying IPv4, out, back and out again: keyed 0 and 0, assured by the third.
fn gre_v0_exchange(run: &mut Run, f: Fam) {
    let w = PeerWire::open(run, f, 47);
    let v0 = [0x00, 0x00, 0x08, 0x00, 0x45, 0x00, 0x00, 0x14];
    w.send(true, &v0);
    w.send(false, &v0);
    w.send(true, &v0);
}

/// Enhanced GRE (PPTP data) both ways, each side with its peer's call id: without the PPTP
/// helper each direction is a flow of its own, never replied.
fn gre_v1_both_ways(run: &mut Run, f: Fam) {
    let w = PeerWire::open(run, f, 47);
    let v1 = |call: u16| {
        let mut h = vec![0x30, 0x81, 0x88, 0x0b, 0x00, 0x00];
        h.extend_from_slice(&call.to_be_bytes());
        h.extend_from_slice(&1u32.to_be_bytes());
        h
    };
    w.send(true, &v1(0x1111));
    w.send(false, &v1(0x2222));
    w.send(true, &v1(0x1111));
}

/// One SCTP association's packets, built with a correct CRC32c (the kernel checks it on packets
/// that arrive from a wire, as these do): the first address is the client, port 5000, tag
/// [`SCTP_TAG_C`]; the second the server, port 6000, tag [`SCTP_TAG_S`].
struct SctpWire {
    wire: PeerWire,
    ports: (u16, u16),
}

const SCTP_TAG_C: u32 = 0x1111_1111;
const SCTP_TAG_S: u32 = 0x2222_2222;

mod sctp_chunk {
    use ctwasm_core::wire::build;
    pub use ctwasm_core::wire::sctp::chunk::*;

    pub fn bare(kind: u8) -> Vec<u8> {
        build::sctp_chunk(kind, 0, &[])
    }
    pub fn init(kind: u8, tag: u32) -> Vec<u8> {
        build::sctp_init(kind, tag)
    }
    pub fn data() -> Vec<u8> {
        build::sctp_chunk(
            DATA,
            3,
            &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, b'd', b'a', b't', b'a'],
        )
    }
    pub fn sack() -> Vec<u8> {
        build::sctp_chunk(SACK, 0, &[0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0])
    }
    pub fn heartbeat(kind: u8) -> Vec<u8> {
        build::sctp_chunk(kind, 0, &[0, 1, 0, 8, b'b', b'e', b'a', b't'])
    }
    pub fn shutdown() -> Vec<u8> {
        build::sctp_chunk(SHUTDOWN, 0, &1u32.to_be_bytes())
    }
}

impl SctpWire {
    fn open(run: &Run, fam: Fam) -> SctpWire {
        SctpWire {
            wire: PeerWire::open(run, fam, 132),
            ports: (5000, 6000),
        }
    }

    /// A packet from the client (`from_client`) or the server, with tag `vtag`.
    fn send(&self, from_client: bool, vtag: u32, chunks: &[Vec<u8>]) {
        let (c, s) = self.ports;
        let (sp, dp) = if from_client { (c, s) } else { (s, c) };
        let l4 = ctwasm_core::wire::build::sctp(sp, dp, vtag, chunks);
        self.wire.send(from_client, &l4);
    }
    fn c(&self, vtag: u32, chunks: &[Vec<u8>]) {
        self.send(true, vtag, chunks);
    }
    fn s(&self, vtag: u32, chunks: &[Vec<u8>]) {
        self.send(false, vtag, chunks);
    }

    /// INIT, INIT ACK, COOKIE ECHO, COOKIE ACK.
    fn setup(&self) {
        use sctp_chunk::*;
        self.c(0, &[init(INIT, SCTP_TAG_C)]);
        self.s(SCTP_TAG_C, &[init(INIT_ACK, SCTP_TAG_S)]);
        self.c(SCTP_TAG_S, &[bare(COOKIE_ECHO)]);
        self.s(SCTP_TAG_C, &[bare(COOKIE_ACK)]);
    }
}

/// A whole association: setup, data and its SACK, a heartbeat both ways, the shutdown.
fn sctp_association(run: &mut Run, f: Fam) {
    use sctp_chunk::*;
    let w = SctpWire::open(run, f);
    w.setup();
    w.c(SCTP_TAG_S, &[data()]);
    w.s(SCTP_TAG_C, &[sack()]);
    w.s(SCTP_TAG_C, &[heartbeat(HEARTBEAT)]);
    w.c(SCTP_TAG_S, &[heartbeat(HEARTBEAT_ACK)]);
    w.c(SCTP_TAG_S, &[shutdown()]);
    w.s(SCTP_TAG_C, &[bare(SHUTDOWN_ACK)]);
    w.c(SCTP_TAG_S, &[bare(SHUTDOWN_COMPLETE)]);
}

/// Set up, data bundled with its SACK, then an ABORT from the server with its own tag.
fn sctp_abort(run: &mut Run, f: Fam) {
    use sctp_chunk::*;
    let w = SctpWire::open(run, f);
    w.setup();
    w.c(SCTP_TAG_S, &[data()]);
    w.s(SCTP_TAG_C, &[sack(), data()]);
    w.s(SCTP_TAG_C, &[bare(ABORT)]);
}

/// Packets the kernel refuses: an ABORT out of the blue (no entry), DATA with a wrong tag and
/// with the peer's tag (invalid, no refresh), an INIT retransmitted into CLOSED (accepted, not
/// refreshed), a reflected ABORT (T bit) that ends the entry.
fn sctp_bad_tags_and_out_of_the_blue(run: &mut Run, f: Fam) {
    use sctp_chunk::*;
    let mut w = SctpWire::open(run, f);
    w.ports = (5002, 6002);
    w.c(0, &[bare(ABORT)]);
    w.c(7, &[data()]);
    w.ports = (5000, 6000);
    w.c(0, &[init(INIT, SCTP_TAG_C)]);
    w.c(0, &[init(INIT, SCTP_TAG_C)]);
    w.s(SCTP_TAG_C, &[init(INIT_ACK, SCTP_TAG_S)]);
    w.c(SCTP_TAG_S, &[bare(COOKIE_ECHO)]);
    w.s(SCTP_TAG_C, &[bare(COOKIE_ACK)]);
    w.c(SCTP_TAG_S ^ 0xff, &[data()]);
    w.c(SCTP_TAG_C, &[data()]);
    w.s(SCTP_TAG_S, &[build_abort_t()]);
}

fn build_abort_t() -> Vec<u8> {
    use sctp_chunk::*;
    ctwasm_core::wire::build::sctp_chunk(ABORT, FLAG_T, &[])
}

/// A HEARTBEAT as the first packet (a second path of an association): HEARTBEAT_SENT, then its
/// ACK establishes the entry.
fn sctp_heartbeat_first(run: &mut Run, f: Fam) {
    use sctp_chunk::*;
    let w = SctpWire::open(run, f);
    w.c(SCTP_TAG_S, &[heartbeat(HEARTBEAT)]);
    w.s(SCTP_TAG_C, &[heartbeat(HEARTBEAT_ACK)]);
    w.c(SCTP_TAG_S, &[data()]);
}

/// An INIT nobody answers, sent again a second later (a retransmission does not refresh the
/// CLOSED entry), and a second association's INIT ACK answered by nothing.
fn sctp_unanswered_init(run: &mut Run, f: Fam) {
    use sctp_chunk::*;
    let mut w = SctpWire::open(run, f);
    w.c(0, &[init(INIT, SCTP_TAG_C)]);
    std::thread::sleep(Duration::from_secs(1));
    w.c(0, &[init(INIT, SCTP_TAG_C)]);
    w.ports = (5004, 6004);
    w.c(0, &[init(INIT, SCTP_TAG_C)]);
    w.s(SCTP_TAG_C, &[init(INIT_ACK, SCTP_TAG_S)]);
}

/// Both ends send INIT at once (RFC 9260 §5.2.1) and answer each other's with an INIT ACK.
fn sctp_simultaneous_init(run: &mut Run, f: Fam) {
    use sctp_chunk::*;
    let w = SctpWire::open(run, f);
    w.c(0, &[init(INIT, SCTP_TAG_C)]);
    w.s(0, &[init(INIT, SCTP_TAG_S)]);
    w.c(SCTP_TAG_S, &[init(INIT_ACK, SCTP_TAG_C)]);
    w.s(SCTP_TAG_C, &[init(INIT_ACK, SCTP_TAG_S)]);
    w.c(SCTP_TAG_S, &[bare(COOKIE_ECHO)]);
    w.s(SCTP_TAG_C, &[bare(COOKIE_ACK)]);
}

/// A SHUTDOWN bundled with an ABORT that carries the wrong tag: the packet is invalid, but the
/// SHUTDOWN before it has moved the entry, and the change shows with the next packet's event.
fn sctp_shutdown_with_a_bad_abort(run: &mut Run, f: Fam) {
    use sctp_chunk::*;
    let w = SctpWire::open(run, f);
    w.setup();
    w.c(SCTP_TAG_S ^ 1, &[shutdown(), bare(ABORT)]);
    w.s(SCTP_TAG_C, &[sack()]);
}

/// SCTP timeouts short enough for a scenario to see its entries end.
const SCTP_SYSCTLS: &[(&str, &str)] = &[
    ("nf_conntrack_sctp_timeout_closed", "2"),
    ("nf_conntrack_sctp_timeout_cookie_wait", "2"),
    ("nf_conntrack_sctp_timeout_cookie_echoed", "2"),
    ("nf_conntrack_sctp_timeout_established", "3"),
    ("nf_conntrack_sctp_timeout_shutdown_sent", "2"),
    ("nf_conntrack_sctp_timeout_shutdown_recd", "2"),
    ("nf_conntrack_sctp_timeout_shutdown_ack_sent", "2"),
    ("nf_conntrack_sctp_timeout_heartbeat_sent", "3"),
];

// ---- over the hostile link ------------------------------------------------------------------
//
// Two namespaces joined by `ctwasm_live::link`: the client in the first (10.201.0.1,
// fd00:201::1), the server in the second (.2). Real sockets on both ends; the link loses,
// reorders and duplicates packets, or cuts a direction for a while. Each namespace's conntrack
// sees its own side: the sender's every packet, the receiver's what arrives.

fn link_addrs(f: Fam) -> (IpAddr, IpAddr) {
    match f {
        Fam::V4 => ("10.201.0.1".parse().unwrap(), "10.201.0.2".parse().unwrap()),
        Fam::V6 => (
            "fd00:201::1".parse().unwrap(),
            "fd00:201::2".parse().unwrap(),
        ),
    }
}

/// 3 % loss, 3 % held back, 2 % duplicated (1 % again 200 ms later), 1 % with a bit flipped,
/// both ways.
fn lossy_link() -> ([Impairments; 2], u64) {
    let imp = Impairments::lossy(0.03, 0.03, 0.02).corrupting(0.01);
    ([imp.clone(), imp], 0x5eed_0001)
}

/// 1 ms of delay and jitter, nothing lost: a clean wire with the link's timing.
fn clean_link() -> ([Impairments; 2], u64) {
    let imp = Impairments::lossy(0.0, 0.0, 0.0);
    ([imp.clone(), imp], 0x5eed_0002)
}

/// A TCP connection from the client to the server's `port` over the link, both ends.
fn link_pair(run: &Run, f: Fam, port: u16) -> (TcpStream, TcpStream) {
    let (_, server_ip) = link_addrs(f);
    let listener = run.inside(1, || {
        TcpListener::bind(sa(server_ip, port)).expect("listen")
    });
    let client = run.inside(0, || {
        TcpStream::connect(sa(server_ip, port)).expect("connect")
    });
    let (server, _) = listener.accept().expect("accept");
    for s in [&client, &server] {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    }
    (client, server)
}

/// `total` bytes from `c` to `s` while `s` reads (after `reader_pause`), then the client
/// closes and the server closes after it.
fn link_bulk_transfer(mut c: TcpStream, mut s: TcpStream, total: usize, reader_pause: Duration) {
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'y'; 16 * 1024];
        for _ in 0..total / chunk.len() {
            c.write_all(&chunk).expect("bulk send");
        }
        drop(c);
    });
    std::thread::sleep(reader_pause);
    drain(&mut s);
    writer.join().expect("writer");
    drop(s);
}

/// 1 MiB one way under loss, reordering and duplicates, SACK on (the default).
fn link_tcp_bulk(run: &mut Run, f: Fam) {
    let (c, s) = link_pair(run, f, 5001);
    link_bulk_transfer(c, s, 1 << 20, Duration::ZERO);
}

/// The same with SACK off on both ends: recovery by duplicate ACKs and retransmission alone.
fn link_tcp_bulk_without_sack(run: &mut Run, f: Fam) {
    for i in 0..2 {
        run.lab.exec(i, &["sysctl", "-qw", "net.ipv4.tcp_sack=0"]);
    }
    let (c, s) = link_pair(run, f, 5001);
    link_bulk_transfer(c, s, 1 << 20, Duration::ZERO);
}

/// The reader stops for 1.5 s while 2 MiB come: the window closes, the sender probes the zero
/// window, then the reader takes everything.
fn link_zero_window(run: &mut Run, f: Fam) {
    let (c, s) = link_pair(run, f, 5001);
    link_bulk_transfer(c, s, 2 << 20, Duration::from_millis(1500));
}

/// Twelve short connections one after the other: a request and an answer of 2 KiB each, the
/// client closes first.
fn link_short_connections(run: &mut Run, f: Fam) {
    let (_, server_ip) = link_addrs(f);
    let listener = run.inside(1, || {
        TcpListener::bind(sa(server_ip, 5001)).expect("listen")
    });
    for _ in 0..12 {
        let mut c = run.inside(0, || {
            TcpStream::connect(sa(server_ip, 5001)).expect("connect")
        });
        let (mut s, _) = listener.accept().expect("accept");
        for sock in [&c, &s] {
            sock.set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
        }
        exchange(&mut c, &mut s, 2048);
        exchange(&mut s, &mut c, 2048);
        drop(c);
        drain(&mut s);
        drop(s);
    }
}

/// Keepalives on an idle connection: probes every second for 2.5 s, then a close.
fn link_keepalive(run: &mut Run, f: Fam) {
    let (c, mut s) = link_pair(run, f, 5001);
    common::sockets::keepalive(&c, 1, 1);
    let mut c = c;
    exchange(&mut c, &mut s, 100);
    std::thread::sleep(Duration::from_millis(2500));
    exchange(&mut s, &mut c, 100);
    drop(c);
    drain(&mut s);
}

/// The client's direction is cut for 3.5 s while it sends: its data is retransmitted past
/// `tcp_max_retrans` (3; the fourth retransmission leaves after about 3 s), then gets through,
/// and the connection closes.
fn link_outage(run: &mut Run, f: Fam) {
    let (mut c, mut s) = link_pair(run, f, 5001);
    exchange(&mut c, &mut s, 1000);
    run.lab
        .link_handle()
        .expect("a link")
        .cut(0, Duration::from_millis(3500));
    exchange(&mut c, &mut s, 1000);
    exchange(&mut s, &mut c, 1000);
    drop(c);
    drain(&mut s);
}

/// A connection carrying data both ways before conntrack runs; tracking starts in the middle
/// (picked up when `nf_conntrack_tcp_loose` allows it), then more data and a close, and a UDP
/// exchange beside it.
fn link_mid_stream_pickup(run: &mut Run, f: Fam) {
    let (client_ip, server_ip) = link_addrs(f);
    let (mut c, mut s) = link_pair(run, f, 5001);
    exchange(&mut c, &mut s, 5000);
    exchange(&mut s, &mut c, 5000);
    // Quiet before tracking starts: delayed ACKs sent and late copies delivered, so that no
    // packet reaches conntrack between the ruleset's load and the capture's start.
    std::thread::sleep(Duration::from_millis(500));
    run.observe();
    for _ in 0..5 {
        exchange(&mut c, &mut s, 3000);
        exchange(&mut s, &mut c, 3000);
    }
    drop(c);
    drain(&mut s);
    let b = run.inside(1, || UdpSocket::bind(sa(server_ip, 5002)).expect("udp b"));
    let a = run.inside(0, || UdpSocket::bind(sa(client_ip, 40002)).expect("udp a"));
    for sock in [&a, &b] {
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    }
    // Lost datagrams are lost; what arrives is answered.
    for _ in 0..4 {
        let _ = a.send_to(b"ping", sa(server_ip, 5002));
        let mut buf = [0u8; 16];
        if let Ok((n, from)) = b.recv_from(&mut buf) {
            let _ = b.send_to(&buf[..n], from);
            let _ = a.recv_from(&mut buf);
        }
    }
}

/// DNS-like traffic: three client sockets send ten queries each to one server socket, which
/// answers each; a query unanswered after 300 ms is sent again, up to three times.
fn link_udp_bursts(run: &mut Run, f: Fam) {
    let (client_ip, server_ip) = link_addrs(f);
    let server = run.inside(1, || UdpSocket::bind(sa(server_ip, 5353)).expect("server"));
    server
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answering = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok((n, from)) = server.recv_from(&mut buf) {
                    let _ = server.send_to(&buf[..n], from);
                }
            }
        })
    };
    let clients: Vec<UdpSocket> = (0..3)
        .map(|i| {
            run.inside(0, || {
                UdpSocket::bind(sa(client_ip, 40100 + i)).expect("client")
            })
        })
        .collect();
    for c in &clients {
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
    }
    for q in 0u16..10 {
        for c in &clients {
            let query = [&q.to_be_bytes()[..], &[0; 30]].concat();
            for _ in 0..3 {
                c.send_to(&query, sa(server_ip, 5353)).expect("query");
                let mut buf = [0u8; 512];
                if c.recv_from(&mut buf).is_ok() {
                    break;
                }
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    answering.join().expect("server");
}

/// Datagrams of 4000 bytes each way (three fragments at the link's MTU of 1500), reordered,
/// duplicated and lost: a datagram missing a fragment is never tracked.
fn link_fragmented_udp(run: &mut Run, f: Fam) {
    let (client_ip, server_ip) = link_addrs(f);
    let b = run.inside(1, || UdpSocket::bind(sa(server_ip, 5002)).expect("udp b"));
    let a = run.inside(0, || UdpSocket::bind(sa(client_ip, 40002)).expect("udp a"));
    for sock in [&a, &b] {
        sock.set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
    }
    let big = vec![b'f'; 4000];
    for _ in 0..10 {
        a.send_to(&big, sa(server_ip, 5002)).expect("send");
        let mut buf = vec![0u8; 8192];
        if let Ok((n, from)) = b.recv_from(&mut buf) {
            b.send_to(&buf[..n], from).expect("reply");
            let _ = a.recv_from(&mut buf);
        }
    }
}

/// Pings of 2500 bytes: fragmented echo requests and replies over the lossy link.
fn link_fragmented_ping(run: &mut Run, f: Fam) {
    let (_, server_ip) = link_addrs(f);
    let target = server_ip.to_string();
    run.lab.exec(
        0,
        &[
            "ping", "-c", "8", "-i", "0.2", "-W", "1", "-s", "2500", "-q", &target,
        ],
    );
}

/// Real HTTP/1.1: Python's `http.server` with keep-alive in the server namespace, and
/// `http.client` making five requests on one connection, then a second connection.
fn link_http_keepalive(run: &mut Run, f: Fam) {
    let (_, server_ip) = link_addrs(f);
    let dir = common::TempDir::new("ctwasm-http");
    std::fs::write(dir.path().join("index.html"), vec![b'h'; 20_000]).expect("page");
    let bind = server_ip.to_string();
    let server = common::Reaped::new(
        Command::new("ip")
            .args(["netns", "exec", run.lab.name(1)])
            .args(["python3", "-m", "http.server", "--protocol", "HTTP/1.1"])
            .args(["--bind", &bind, "--directory"])
            .arg(dir.path())
            .arg("8080")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("http.server starts"),
    );
    let client = format!(
        "import http.client, time\n\
         deadline = time.time() + 10\n\
         for conn in range(2):\n\
         \x20   while True:\n\
         \x20       try:\n\
         \x20           c = http.client.HTTPConnection('{bind}', 8080, timeout=20); c.connect(); break\n\
         \x20       except OSError:\n\
         \x20           if time.time() > deadline: raise\n\
         \x20           time.sleep(0.1)\n\
         \x20   for _ in range(5):\n\
         \x20       c.request('GET', '/index.html'); r = c.getresponse(); assert len(r.read()) == 20000\n\
         \x20   c.close()\n"
    );
    run.lab.exec(0, &["python3", "-c", &client]);
    // Let the server see both closes before it goes (killed and reaped on drop).
    std::thread::sleep(Duration::from_millis(500));
    drop(server);
}

/// The other trackers across the link: GRE version 0 both ways, and an SCTP association (set
/// up, data, shut down) built by hand with its CRC32c, each side's packets sent from its own
/// namespace through raw sockets; and UDP-Lite between real sockets, once over the whole
/// datagram and once with a checksum coverage of 12 bytes. Linux verifies an arriving UDP-Lite
/// datagram's checksum with UDP's pseudo-header, so each side's conntrack finds every datagram
/// that arrives invalid and tracks only what its own side sends (see "UDP-Lite from a wire" in
/// `host/docs/kernel-behaviour.md`); the engine must agree.
fn link_other_protocols(run: &mut Run, f: Fam) {
    let (client_ip, server_ip) = link_addrs(f);
    for (port, coverage) in [(5006u16, 0), (5007, 12)] {
        let client = run.inside(0, || {
            common::sockets::udplite_bind(sa(client_ip, 40000 + port)).expect("udplite client")
        });
        let server = run.inside(1, || {
            common::sockets::udplite_bind(sa(server_ip, port)).expect("udplite server")
        });
        if coverage > 0 {
            // SOL_UDPLITE (136), UDPLITE_SEND_CSCOV (10).
            common::sockets::set_int_option(&client, 136, 10, coverage);
            common::sockets::set_int_option(&server, 136, 10, coverage);
        }
        server
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            client
                .send_to(b"lite over a wire", sa(server_ip, port))
                .expect("udplite out");
            if let Ok((n, from)) = server.recv_from(&mut buf) {
                server.send_to(&buf[..n], from).expect("udplite back");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let raw = |ns: usize, proto: i32| {
        run.inside(ns, || {
            common::sockets::RawSocket::bind(f.any(), proto).expect("raw socket")
        })
    };
    let (gre_c, gre_s) = (raw(0, 47), raw(1, 47));
    let v0 = [0x00, 0x00, 0x08, 0x00, 0x45, 0x00, 0x00, 0x14];
    for _ in 0..3 {
        gre_c.send_to(&v0, server_ip).expect("gre out");
        std::thread::sleep(Duration::from_millis(20));
        gre_s.send_to(&v0, client_ip).expect("gre back");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (sctp_c, sctp_s) = (raw(0, 132), raw(1, 132));
    for (from_client, l4) in common::sctp_association_packets() {
        if from_client {
            sctp_c.send_to(&l4, server_ip).expect("sctp out");
        } else {
            sctp_s.send_to(&l4, client_ip).expect("sctp back");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// TCP Fast Open: the first connection asks for a cookie, the second carries its request in
/// the SYN; the server answers each and both close.
fn link_tcp_fast_open(run: &mut Run, f: Fam) {
    for i in 0..2 {
        run.lab
            .exec(i, &["sysctl", "-qw", "net.ipv4.tcp_fastopen=3"]);
    }
    let (_, server_ip) = link_addrs(f);
    let family = match f {
        Fam::V4 => "AF_INET",
        Fam::V6 => "AF_INET6",
    };
    let server = format!(
        "import socket\n\
         l = socket.socket(socket.{family}); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         l.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16); l.bind(('{server_ip}', 5001)); l.listen()\n\
         l.settimeout(20)\n\
         for _ in range(2):\n\
         \x20   s, _ = l.accept(); s.settimeout(20); s.sendall(s.recv(100) * 10); s.shutdown(socket.SHUT_WR)\n\
         \x20   while s.recv(100): pass\n\
         \x20   s.close()\n"
    );
    // The socket stays blocking until the SYN is out: with a timeout set, Python's sockets
    // are non-blocking underneath and the fast-open `sendto` returns EINPROGRESS.
    let client = format!(
        "import socket, time\n\
         time.sleep(0.5)\n\
         for _ in range(2):\n\
         \x20   s = socket.socket(socket.{family})\n\
         \x20   s.sendto(b'fast open', socket.MSG_FASTOPEN, ('{server_ip}', 5001)); s.settimeout(20)\n\
         \x20   got = b''\n\
         \x20   while len(got) < 90:\n\
         \x20       got += s.recv(1000)\n\
         \x20   s.close(); time.sleep(0.3)\n"
    );
    let server = common::Reaped::new(
        Command::new("ip")
            .args(["netns", "exec", run.lab.name(1), "python3", "-c", &server])
            .spawn()
            .expect("server starts"),
    );
    run.lab.exec(0, &["python3", "-c", &client]);
    let status = server.into_inner().wait().expect("server ends");
    assert!(status.success(), "the fast open server failed");
}

/// A connection picked up mid-stream from three data segments whose answer the client
/// acknowledges with a SACK block (numbers from a live capture): the pickup permits SACK, so
/// the ACK checks use the block's right edge; no segment passes the window in full, so the
/// entry is assured with the retransmission timeout (`last_win` is still 0).
fn crafted_pickup_acknowledged_by_sack(run: &mut Run, f: Fam) {
    let w = Wire::open(run, f);
    let (c, s) = (2755485975u32, 3730589088u32);
    w.c(c, s, ACK, 72, 1448);
    w.c(c + 1448, s, ACK, 72, 1448);
    w.c(c + 2896, s, PSH | ACK, 72, 104);
    w.s(s + 2896, c + 3000, PSH | ACK, 79, 104);
    let mut sack = vec![1, 1, 5, 10];
    sack.extend_from_slice(&(s + 2896).to_be_bytes());
    sack.extend_from_slice(&(s + 3000).to_be_bytes());
    w.send_with(true, c + 3000, s, ACK, 75, &sack, 0);
    w.s(s, c + 1448, ACK, 79, 0);
}

// ---- through a router ------------------------------------------------------------------------

/// ICMP errors a router sends back, RELATED to the flow whose packet they quote: a datagram too
/// big for the router's next link with DF set (fragmentation needed; IPv6: packet too big), one
/// with a TTL of 1 (time exceeded), one to a net the router cannot reach (unreachable); then
/// the big datagram again, small enough, answered by the server; and pings of 2000 bytes, which
/// the router fragments (IPv4) or the client fragments after the router's packet-too-big (IPv6).
fn router_icmp_errors(run: &mut Run, f: Fam) {
    use common::sockets::set_int_option;
    let (client_ip, server_ip, unreachable): (IpAddr, IpAddr, IpAddr) = match f {
        Fam::V4 => (
            "10.202.1.1".parse().unwrap(),
            "10.202.2.1".parse().unwrap(),
            "10.202.3.1".parse().unwrap(),
        ),
        Fam::V6 => (
            "fd00:202:1::1".parse().unwrap(),
            "fd00:202:2::1".parse().unwrap(),
            "fd00:202:3::1".parse().unwrap(),
        ),
    };
    let server = run.inside(2, || UdpSocket::bind(sa(server_ip, 5002)).expect("server"));
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let socket = |port: u16| {
        let s = run.inside(0, || UdpSocket::bind(sa(client_ip, port)).expect("client"));
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    };
    // Fragmentation needed / packet too big: 1400 bytes with DF towards an MTU of 1280.
    let big = socket(40010);
    match f {
        Fam::V4 => set_int_option(
            &big,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        ),
        Fam::V6 => set_int_option(
            &big,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        ),
    }
    big.send_to(&[7; 1400], sa(server_ip, 5002))
        .expect("a datagram too big");
    std::thread::sleep(Duration::from_millis(200));
    // The path MTU is known now: a datagram that fits goes through and is answered.
    big.send_to(&[7; 1000], sa(server_ip, 5002))
        .expect("a datagram that fits");
    let mut buf = [0u8; 2048];
    let (n, from) = server
        .recv_from(&mut buf)
        .expect("the datagram that fits arrives");
    server.send_to(&buf[..n], from).expect("answer");
    big.recv_from(&mut buf).expect("the answer arrives");
    // Time exceeded: a hop limit of 1 dies at the router.
    let short_lived = socket(40011);
    match f {
        Fam::V4 => set_int_option(&short_lived, libc::IPPROTO_IP, libc::IP_TTL, 1),
        Fam::V6 => set_int_option(&short_lived, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 1),
    }
    short_lived
        .send_to(b"ttl 1", sa(server_ip, 5003))
        .expect("a datagram with ttl 1");
    // Unreachable: the router has no way there.
    let lost = socket(40012);
    lost.send_to(b"anyone?", sa(unreachable, 5004))
        .expect("a datagram to nowhere");
    std::thread::sleep(Duration::from_millis(200));
    let target = server_ip.to_string();
    let mut ping = vec![
        "ping", "-c", "3", "-i", "0.2", "-W", "1", "-s", "2000", "-q",
    ];
    if f == Fam::V4 {
        // Let the router fragment it rather than refuse it.
        ping.extend(["-M", "dont"]);
    }
    ping.push(&target);
    run.lab.exec(0, &ping);
}

fn scenarios() -> Vec<Scenario> {
    let lo = |name, traffic: fn(&mut Run, Fam)| Scenario {
        name,
        topology: Topology::Loopback,
        sysctls: &[],
        input_rules: "",
        extra_ruleset: "",
        traffic,
        observe_first: true,
        counters: true,
    };
    let crafted = |name, traffic: fn(&mut Run, Fam)| Scenario {
        sysctls: CRAFTED_SYSCTLS,
        extra_ruleset: CRAFTED_RULESET,
        ..lo(name, traffic)
    };
    vec![
        lo("tcp close, client first", tcp_close_client_first),
        lo("tcp close, server first", tcp_close_server_first),
        lo("tcp rst from the client", tcp_rst_client),
        lo("tcp rst from the server", tcp_rst_server),
        lo("tcp refused", tcp_refused),
        lo("tcp half-closed then reset", tcp_half_closed_then_reset),
        lo("tcp data both ways, delayed acks", tcp_delayed_acks),
        lo("tcp 16 interleaved connections", tcp_interleaved),
        lo("tcp reopen in time_wait", tcp_reopen_after_time_wait),
        lo(
            "tcp close with unread data (rst)",
            tcp_close_with_unread_data,
        ),
        lo("tcp simultaneous close", tcp_simultaneous_close),
        Scenario {
            counters: false,
            ..lo("tcp bulk, 4 MiB one way", tcp_bulk)
        },
        Scenario {
            sysctls: &[("nf_conntrack_tcp_be_liberal", "1")],
            ..lo("tcp close, be_liberal=1", tcp_close_client_first)
        },
        Scenario {
            observe_first: false,
            ..lo("tcp mid-stream pickup", tcp_mid_stream_pickup)
        },
        Scenario {
            input_rules: "tcp dport 5011 tcp flags & (syn | ack) == syn numgen inc mod 2 0 drop",
            ..lo("tcp retransmitted syn", tcp_retransmitted_syn)
        },
        Scenario {
            input_rules: "tcp sport 5012 tcp flags & (syn | ack) == syn | ack numgen inc mod 2 0 drop",
            ..lo("tcp retransmitted syn/ack", tcp_retransmitted_synack)
        },
        lo("udp one way", udp_one_way),
        lo("udp request/response", udp_request_response),
        Scenario {
            sysctls: &[("nf_conntrack_udp_timeout", "4")],
            ..lo("udp stream (2 s rule)", udp_stream)
        },
        lo("udp port unreachable (related)", udp_port_unreachable),
        lo("udplite one way", udplite_one_way),
        lo("udplite request/response", udplite_request_response),
        lo("icmp echo", icmp_echo),
        Scenario {
            topology: Topology::Veth,
            ..lo("veth: tcp, udp, ping", veth_mixed)
        },
        crafted(
            "crafted: out-of-window data, then close",
            crafted_out_of_window_data,
        ),
        Scenario {
            sysctls: CRAFTED_LIBERAL_SYSCTLS,
            ..crafted(
                "crafted: out-of-window data, then close, be_liberal=1",
                crafted_out_of_window_data,
            )
        },
        crafted(
            "crafted: out-of-window rst, then close",
            crafted_out_of_window_rst,
        ),
        crafted(
            "crafted: out-of-window rst answered by an out-of-window fin",
            crafted_out_of_window_rst_and_fin,
        ),
        crafted(
            "crafted: data retransmitted 4 times, then fin",
            crafted_retransmissions,
        ),
        crafted(
            "crafted: unacknowledged data, then fin",
            crafted_unacknowledged,
        ),
        crafted("crafted: zero window, then close", crafted_zero_window),
        crafted(
            "crafted: bytes beyond the window, then acked",
            crafted_bytes_beyond_window,
        ),
        crafted(
            "crafted: rst in the window, not at the expected seq",
            crafted_rst_in_window_not_exact,
        ),
        Scenario {
            sysctls: &[("nf_conntrack_tcp_timeout_syn_sent", "3")],
            ..crafted(
                "crafted: syn retransmitted in syn_sent",
                crafted_syn_retransmit,
            )
        },
        crafted(
            "crafted: syn/ack with a wrong ack",
            crafted_synack_wrong_ack,
        ),
        crafted(
            "crafted: rst answering a challenge ack in syn_sent",
            crafted_challenge_ack_in_syn_sent,
        ),
        crafted(
            "crafted: challenge ack in last_ack",
            crafted_challenge_ack_in_last_ack,
        ),
        crafted(
            "crafted: pickup answered, then acknowledged with a sack block",
            crafted_pickup_acknowledged_by_sack,
        ),
        crafted(
            "fragments: out of order, one twice",
            frag_out_of_order_with_a_duplicate,
        ),
        crafted("fragments: one lost", frag_lost_fragment),
        Scenario {
            sysctls: &[
                ("nf_conntrack_gre_timeout", "2"),
                ("nf_conntrack_gre_timeout_stream", "3"),
            ],
            ..crafted("gre v0: out, back, out", gre_v0_exchange)
        },
        Scenario {
            sysctls: &[
                ("nf_conntrack_gre_timeout", "2"),
                ("nf_conntrack_gre_timeout_stream", "3"),
            ],
            ..crafted("gre v1 (pptp): both ways", gre_v1_both_ways)
        },
        Scenario {
            sysctls: SCTP_SYSCTLS,
            ..crafted(
                "sctp: association, data, heartbeat, shutdown",
                sctp_association,
            )
        },
        Scenario {
            sysctls: SCTP_SYSCTLS,
            ..crafted("sctp: abort", sctp_abort)
        },
        Scenario {
            sysctls: SCTP_SYSCTLS,
            ..crafted(
                "sctp: bad tags and out of the blue",
                sctp_bad_tags_and_out_of_the_blue,
            )
        },
        Scenario {
            sysctls: SCTP_SYSCTLS,
            ..crafted("sctp: heartbeat first", sctp_heartbeat_first)
        },
        Scenario {
            sysctls: SCTP_SYSCTLS,
            ..crafted("sctp: unanswered init", sctp_unanswered_init)
        },
        Scenario {
            sysctls: SCTP_SYSCTLS,
            ..crafted("sctp: simultaneous init", sctp_simultaneous_init)
        },
        Scenario {
            sysctls: SCTP_SYSCTLS,
            ..crafted(
                "sctp: shutdown with a bad abort",
                sctp_shutdown_with_a_bad_abort,
            )
        },
        Scenario {
            topology: Topology::Routed,
            ..lo(
                "router: frag needed, ttl exceeded, unreachable, fragmented ping",
                router_icmp_errors,
            )
        },
        Scenario {
            topology: Topology::Link(lossy_link),
            ..lo("link: tcp 1 MiB, lossy (sack)", link_tcp_bulk)
        },
        Scenario {
            topology: Topology::Link(lossy_link),
            ..lo(
                "link: tcp 1 MiB, lossy, sack off",
                link_tcp_bulk_without_sack,
            )
        },
        Scenario {
            topology: Topology::Link(lossy_link),
            ..lo(
                "link: 12 short tcp connections, lossy",
                link_short_connections,
            )
        },
        Scenario {
            topology: Topology::Link(lossy_link),
            ..lo("link: zero window, lossy", link_zero_window)
        },
        Scenario {
            topology: Topology::Link(lossy_link),
            ..lo(
                "link: keepalives on an idle connection, lossy",
                link_keepalive,
            )
        },
        Scenario {
            topology: Topology::Link(clean_link),
            sysctls: &[("nf_conntrack_tcp_timeout_max_retrans", "8")],
            ..lo("link: 3.5 s outage past tcp_max_retrans", link_outage)
        },
        Scenario {
            topology: Topology::Link(lossy_link),
            observe_first: false,
            ..lo("link: mid-stream pickup, lossy", link_mid_stream_pickup)
        },
        Scenario {
            topology: Topology::Link(lossy_link),
            observe_first: false,
            sysctls: &[("nf_conntrack_tcp_loose", "0")],
            ..lo(
                "link: mid-stream pickup, lossy, tcp_loose=0",
                link_mid_stream_pickup,
            )
        },
        Scenario {
            topology: Topology::Link(lossy_link),
            ..lo(
                "link: dns-like udp bursts with retries, lossy",
                link_udp_bursts,
            )
        },
        Scenario {
            topology: Topology::Link(lossy_link),
            ..lo("link: fragmented udp, lossy", link_fragmented_udp)
        },
        Scenario {
            topology: Topology::Link(lossy_link),
            ..lo("link: fragmented ping, lossy", link_fragmented_ping)
        },
        Scenario {
            topology: Topology::Link(lossy_link),
            ..lo("link: http/1.1 keep-alive, lossy", link_http_keepalive)
        },
        Scenario {
            topology: Topology::Link(clean_link),
            ..lo("link: tcp fast open", link_tcp_fast_open)
        },
        Scenario {
            topology: Topology::Link(lossy_link),
            sysctls: SCTP_SYSCTLS,
            ..lo("link: gre, sctp and udp-lite, lossy", link_other_protocols)
        },
        crafted(
            "fragments: a reply's fragment lost",
            frag_lost_reply_fragment,
        ),
        crafted(
            "fragments: overlapping, then sent again",
            frag_overlap_then_clean,
        ),
    ]
}

#[test]
fn every_scenario_matches_the_kernel_flow_for_flow() {
    let _serial = serial();
    if !require_live("conformance") {
        return;
    }
    let only = std::env::var("CTWASM_CONFORMANCE").ok();
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for s in scenarios() {
        if only.as_deref().is_some_and(|o| !s.name.contains(o)) {
            continue;
        }
        for fam in [Fam::V4, Fam::V6] {
            let started = std::time::Instant::now();
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_scenario(&s, fam)));
            match result {
                Ok(o) => {
                    let diff = o.comparison.diff_text();
                    if let Some(link) = &o.link {
                        eprintln!("{}: {link}", o.name);
                    }
                    eprintln!(
                        "{}: {} flows, {} identical ({:.1} s)\n{}",
                        o.name,
                        o.comparison.compared(),
                        o.comparison.identical(),
                        started.elapsed().as_secs_f64(),
                        if diff.is_empty() {
                            o.comparison.full_text()
                        } else {
                            diff.clone()
                        }
                    );
                    for d in &o.counter_diffs {
                        eprintln!("{}: counters differ: {d}", o.name);
                    }
                    if !diff.is_empty() || o.comparison.compared() == 0 {
                        failures.push(format!("{}:\n{diff}", o.name));
                    }
                    if s.counters && !o.counter_diffs.is_empty() {
                        failures.push(format!(
                            "{}: DESTROY counters differ:\n{}",
                            o.name,
                            o.counter_diffs.join("\n")
                        ));
                    }
                    outcomes.push(o);
                }
                Err(_) => failures.push(format!("{} ({}): panicked", s.name, fam.tag())),
            }
        }
    }
    eprintln!("\nCONFORMANCE (flows compared / identical, per scenario)");
    eprintln!("| Scenario | Flows compared | Flows identical |");
    eprintln!("|---|---|---|");
    let (mut total, mut same) = (0, 0);
    for o in &outcomes {
        eprintln!(
            "| {} | {} | {} |",
            o.name,
            o.comparison.compared(),
            o.comparison.identical()
        );
        total += o.comparison.compared();
        same += o.comparison.identical();
    }
    eprintln!("| **all** | {total} | {same} |");
    assert!(
        failures.is_empty(),
        "scenarios that differ from the kernel:\n{}",
        failures.join("\n")
    );
}

// ---- ctwasm shadow ----------------------------------------------------------------------------

/// Runs `ctwasm shadow` on a fresh namespace carrying a TCP connection (client closes first),
/// a UDP exchange and a ping; returns its exit code, stdout and stderr.
fn shadow(duration: &str, extra: &[&str]) -> (i32, String, String) {
    use std::process::{Command, Stdio};
    let lab = Lab::loopback();
    for (n, v) in BASE_SYSCTLS {
        lab.exec(0, &["sysctl", "-qw", &format!("net.netfilter.{n}={v}")]);
    }
    lab.nft(0, &RULESET.replace("@INPUT@", ""));
    let child = Command::new(env!("CARGO_BIN_EXE_ctwasm"))
        .args([
            "shadow",
            "--netns",
            lab.name(0),
            "--duration",
            duration,
            "--report-every",
            "1",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctwasm shadow starts");
    let ready_by = std::time::Instant::now() + Duration::from_secs(10);
    while !lab.has_conntrack_listener(0) {
        assert!(
            std::time::Instant::now() < ready_by,
            "ctwasm shadow never subscribed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The capturer is opened right after the listener.
    std::thread::sleep(Duration::from_millis(500));
    lab.inside(0, || {
        let ip = Fam::V4.lo();
        let (mut c, mut s, _l) = pair(ip, 5001);
        exchange(&mut c, &mut s, 100);
        exchange(&mut s, &mut c, 100);
        drop(c);
        drain(&mut s);
        drop(s);
        let (a, b) = udp_pair(ip);
        udp_round(&a, &b);
        udp_round(&a, &b);
    });
    lab.exec(0, &["ping", "-c", "2", "-i", "0.2", "-W", "1", "127.0.0.1"]);
    let out = child.wait_with_output().expect("shadow ends");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("--- shadow stdout\n{stdout}--- shadow stderr\n{stderr}");
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

#[test]
fn shadow_reports_that_every_flow_agrees_with_the_kernel() {
    let _serial = serial();
    if !require_live("shadow (agreement)") {
        return;
    }
    let (code, stdout, stderr) = shadow("7", &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("3 flows compared: 3 agree, 0 diverge"),
        "{stdout}"
    );
    assert!(stdout.contains("all 3 flows agree"), "{stdout}");
    assert!(
        stderr.contains("agree"),
        "running counts on stderr: {stderr}"
    );
    assert!(!stderr.contains("DIVERGED"), "{stderr}");
}

#[test]
fn shadow_reports_a_flow_whose_engine_timeout_differs_from_the_kernels() {
    let _serial = serial();
    if !require_live("shadow (divergence)") {
        return;
    }
    // The kernel keeps TIME_WAIT for 2 s; the engine is told 30: the TIME_WAIT update already
    // differs in its timeout, and the kernel's DESTROY has no counterpart.
    let (code, stdout, stderr) = shadow(
        "10",
        &[
            "--sysctl",
            "net.netfilter.nf_conntrack_tcp_timeout_time_wait=30",
        ],
    );
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stdout.contains("3 flows compared: 2 agree, 1 diverge"),
        "{stdout}"
    );
    assert!(
        stdout.contains("DIVERGES tcp 127.0.0.1:")
            && stdout.contains(
                "step 6: kernel UPDATE TIME_WAIT SEEN_REPLY ASSURED 2s, \
                 ours UPDATE TIME_WAIT SEEN_REPLY ASSURED 30s"
            ),
        "{stdout}"
    );
    assert!(
        stderr.contains("DIVERGED tcp 127.0.0.1:"),
        "first divergence reported live: {stderr}"
    );
}
