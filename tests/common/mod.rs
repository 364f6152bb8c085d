//! Live-kernel test helpers: the skip-or-fail rule, the global lock, network namespaces that
//! are always deleted, a packet injector, and the engine's replay of a live capture.

#![allow(dead_code)]

pub mod inject;
#[cfg(target_os = "linux")]
pub mod sockets;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Result;
use ctwasm_core::netlink::CtMessage;
use ctwasm_host::backend::{BackendKind, TrackerSettings, open_backend};
use ctwasm_host::capture::CapturedPacket;
use ctwasm_host::listener::Listeners;
use ctwasm_host::replay::Simulation;
use ctwasm_live::netns::in_netns;

static SERIAL: Mutex<()> = Mutex::new(());
static NEXT_NS: AtomicU32 = AtomicU32::new(0);

/// Live tests run one at a time: the kernel's GC and event worker are shared, and parallel runs
/// disturb each other's timing (see "Timing and parallel runs" in
/// `host/docs/kernel-behaviour.md`).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether this machine can run live tests. When it cannot: a loud skip, or a panic under
/// `CTWASM_REQUIRE_LIVE=1`.
pub fn require_live(test: &str) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    let reason = if !root {
        Some("not running as root".to_string())
    } else {
        match Command::new("ip").args(["netns", "list"]).output() {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(format!(
                "`ip netns list` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Some(format!("cannot run `ip`: {e}")),
        }
    };
    let Some(reason) = reason else { return true };
    if std::env::var("CTWASM_REQUIRE_LIVE").as_deref() == Ok("1") {
        panic!("{test}: live kernel required (CTWASM_REQUIRE_LIVE=1) but {reason}");
    }
    // Written to the process's stderr directly: the test harness captures `eprintln!` and
    // shows it only for failures, which would make a skipped live test look green.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED (needs root and network namespaces): {test}: {reason} ***\n"
    );
    false
}

/// Whether a program this test needs (a real decoder such as `tshark`) is installed. When it
/// is not: a loud skip, or a panic under `CTWASM_REQUIRE_LIVE=1` (CI installs it).
pub fn require_program(test: &str, program: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if std::env::var("CTWASM_REQUIRE_LIVE").as_deref() == Ok("1") {
        panic!("{test}: `{program}` required (CTWASM_REQUIRE_LIVE=1) but not installed");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED (needs `{program}`): {test} ***\n"
    );
    false
}

/// A directory of this test's own under the system's temporary directory, removed with what it
/// holds when dropped, also when the test fails.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("ctwasm-{label}-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process this test started, killed and reaped when dropped, so a failing test leaves
/// no proxy or server behind.
#[derive(Debug)]
pub struct Reaped(Option<std::process::Child>);

impl Reaped {
    pub fn new(child: std::process::Child) -> Reaped {
        Reaped(Some(child))
    }

    pub fn get_mut(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("the child is held until taken")
    }

    /// The child, to wait for it; it is no longer killed on drop.
    pub fn into_inner(mut self) -> std::process::Child {
        self.0.take().expect("the child is held until taken")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends back what it reads until the peer closes.
pub fn echo(mut s: std::net::TcpStream) {
    use std::io::{Read, Write};
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// An echo server on a free loopback port for the next `connections` connections (a thread
/// each), then gone.
pub fn echo_server(connections: usize) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("echo listen");
    let addr = listener.local_addr().expect("echo address");
    std::thread::spawn(move || {
        for s in listener.incoming().take(connections).flatten() {
            std::thread::spawn(move || echo(s));
        }
    });
    addr
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An `inet` table whose `ct state` rules make conntrack track everything in the namespace;
/// `@INPUT@` is replaced by extra rules for the input chain (empty for none).
pub const RULESET: &str = "table inet ctwasm_test {
    chain out {
        type filter hook output priority 0;
        ct state new counter
        ct state established counter
        ct state related counter
        ct state invalid counter
    }
    chain in {
        type filter hook input priority 0;
        ct state new counter
        ct state established counter
        ct state related counter
        ct state invalid counter
        @INPUT@
    }
}
";

/// One namespace with lo up, or two joined by a veth pair (`vA` 10.200.0.1 / fd00:200::1 in the
/// first, `vB` 10.200.0.2 / fd00:200::2 in the second, static neighbours and no link-local
/// addresses, so no ARP, NDP or router solicitations disturb the capture). All deleted on drop,
/// whatever happened.
#[derive(Debug)]
pub struct Lab {
    names: Vec<String>,
    /// The namespaces whose conntrack a scenario observes, each with the interface its packets
    /// are captured on (every packet its conntrack sees passes there once).
    observed: Vec<(usize, &'static str)>,
    /// The hostile link between the namespaces, if the lab has one; stopped (and its TUN
    /// devices gone) before the namespaces are deleted.
    link: Option<ctwasm_live::link::Link>,
    /// The CPUs the creating thread ran on before the lab pinned it to one.
    restore_cpus: Option<Vec<usize>>,
}

fn fresh_name() -> String {
    format!(
        "ctwasm-c-{}-{}",
        std::process::id(),
        NEXT_NS.fetch_add(1, Ordering::SeqCst)
    )
}

impl Lab {
    fn with(n: usize) -> Lab {
        let mut lab = Lab {
            names: Vec::new(),
            observed: (0..n).map(|i| (i, "lo")).collect(),
            link: None,
            restore_cpus: None,
        };
        for _ in 0..n {
            let name = fresh_name();
            run(Command::new("ip").args(["netns", "add", &name]));
            // From here on the guard deletes it, even if the setup below fails.
            lab.names.push(name);
        }
        for i in 0..n {
            lab.exec(i, &["ip", "link", "set", "lo", "up"]);
        }
        lab
    }

    pub fn loopback() -> Lab {
        Lab::with(1)
    }

    /// Two namespaces joined by a hostile link (`ctwasm_live::link`): TUN devices `tA`
    /// (10.201.0.1, fd00:201::1) and `tB` (10.201.0.2, fd00:201::2), point to point; what the
    /// first sends meets `impairments[0]`, what the second sends `impairments[1]`.
    ///
    /// The calling thread is pinned to one CPU first, and stays so until the lab is dropped: the
    /// link's threads and everything the scenario starts run there too. On two CPUs, the link
    /// writing an arriving packet and an application sending one could otherwise be processed
    /// at once, and the capture (which sees an arriving packet before conntrack does and a
    /// leaving one after) could not tell their order.
    pub fn link(impairments: [ctwasm_live::link::Impairments; 2], seed: u64) -> Lab {
        use ctwasm_live::link::{End, Link};
        let mut lab = Lab::with(2);
        let cpus = ctwasm_live::sys::thread_affinity().expect("the thread's CPUs");
        ctwasm_live::sys::set_thread_affinity(&cpus[..1]).expect("pinned to one CPU");
        lab.restore_cpus = Some(cpus);
        lab.observed = vec![(0, "tA"), (1, "tB")];
        let ends = [
            End {
                netns: Some(lab.names[0].clone()),
                device: "tA".into(),
            },
            End {
                netns: Some(lab.names[1].clone()),
                device: "tB".into(),
            },
        ];
        lab.link = Some(Link::start(ends, impairments, seed).expect("the link starts"));
        for (i, dev, me, peer) in [(0, "tA", "1", "2"), (1, "tB", "2", "1")] {
            lab.exec(
                i,
                &["sysctl", "-qw", "net.ipv6.conf.all.router_solicitations=0"],
            );
            lab.exec(i, &["ip", "link", "set", dev, "addrgenmode", "none"]);
            // One segment per packet: TCP hands conntrack super-packets that the device splits
            // only after the capture point would have to see them whole; a TUN device without
            // offloads splits them before its tap, so conntrack and the capture would see
            // different packets. With one segment each, both see the same.
            lab.exec(i, &["ip", "link", "set", dev, "gso_max_segs", "1"]);
            lab.exec(
                i,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.201.0.{me}"),
                    "peer",
                    &format!("10.201.0.{peer}"),
                    "dev",
                    dev,
                ],
            );
            lab.exec(i, &["ip", "link", "set", dev, "up"]);
            lab.exec(
                i,
                &[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("fd00:201::{me}"),
                    "peer",
                    &format!("fd00:201::{peer}"),
                    "dev",
                    dev,
                    "nodad",
                ],
            );
        }
        lab
    }

    /// The running link, if the lab has one.
    pub fn link_handle(&self) -> Option<&ctwasm_live::link::Link> {
        self.link.as_ref()
    }

    /// Stops the link and says what it did (`None` without a link).
    pub fn stop_link(&mut self) -> Option<[ctwasm_live::link::DirectionStats; 2]> {
        self.link.take().map(ctwasm_live::link::Link::stop)
    }

    /// The observed namespaces (by index) and their capture interfaces.
    pub fn observed(&self) -> &[(usize, &'static str)] {
        &self.observed
    }

    /// A client and a server namespace with a router namespace between them (veth pairs
    /// `vA`–`rA` on 10.202.1.0/24 and fd00:202:1::/64, `rB`–`vB` on 10.202.2.0/24 and
    /// fd00:202:2::/64, the second with an MTU of 1280); the router forwards and has no route to
    /// 10.202.3.0/24 or fd00:202:3::/64 (`unreachable`). The client (`.1` of the first net) and
    /// the server (`.1` of the second) are observed; the router only routes.
    pub fn routed() -> Lab {
        let mut lab = Lab::with(3);
        lab.observed = vec![(0, "vA"), (2, "vB")];
        let (a, r, b) = (
            lab.names[0].clone(),
            lab.names[1].clone(),
            lab.names[2].clone(),
        );
        for (left, left_ns, right, right_ns) in [("vA", &a, "rA", &r), ("rB", &r, "vB", &b)] {
            run(Command::new("ip").args([
                "-n", left_ns, "link", "add", left, "type", "veth", "peer", "name", right, "netns",
                right_ns,
            ]));
        }
        for i in 0..3 {
            lab.exec(
                i,
                &["sysctl", "-qw", "net.ipv6.conf.all.router_solicitations=0"],
            );
        }
        lab.exec(1, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        lab.exec(1, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        let addrs: [(usize, &str, &str, &str, u32); 4] = [
            (0, "vA", "10.202.1.1/24", "fd00:202:1::1/64", 1500),
            (1, "rA", "10.202.1.2/24", "fd00:202:1::2/64", 1500),
            (1, "rB", "10.202.2.2/24", "fd00:202:2::2/64", 1280),
            (2, "vB", "10.202.2.1/24", "fd00:202:2::1/64", 1280),
        ];
        for (i, dev, v4, v6, mtu) in addrs {
            lab.exec(i, &["ip", "link", "set", dev, "mtu", &mtu.to_string()]);
            lab.exec(i, &["ip", "addr", "add", v4, "dev", dev]);
            lab.exec(i, &["ip", "addr", "add", v6, "dev", dev, "nodad"]);
            lab.exec(i, &["ip", "link", "set", dev, "up"]);
        }
        for (i, v4, v6) in [
            (0, "10.202.1.2", "fd00:202:1::2"),
            (2, "10.202.2.2", "fd00:202:2::2"),
        ] {
            lab.exec(i, &["ip", "route", "add", "default", "via", v4]);
            lab.exec(i, &["ip", "-6", "route", "add", "default", "via", v6]);
        }
        lab.exec(1, &["ip", "route", "add", "unreachable", "10.202.3.0/24"]);
        lab.exec(
            1,
            &["ip", "-6", "route", "add", "unreachable", "fd00:202:3::/64"],
        );
        lab
    }

    pub fn veth() -> Lab {
        let mut lab = Lab::with(2);
        lab.observed = vec![(0, "vA"), (1, "vB")];
        let (a, b) = (&lab.names[0], &lab.names[1]);
        run(Command::new("ip").args([
            "-n",
            a,
            "link",
            "add",
            "vA",
            "address",
            "02:00:00:00:02:01",
            "type",
            "veth",
            "peer",
            "name",
            "vB",
            "address",
            "02:00:00:00:02:02",
            "netns",
            b,
        ]));
        for (i, dev, me, peer, peer_mac) in [
            (0, "vA", "1", "2", "02:00:00:00:02:02"),
            (1, "vB", "2", "1", "02:00:00:00:02:01"),
        ] {
            lab.exec(
                i,
                &["sysctl", "-qw", "net.ipv6.conf.all.router_solicitations=0"],
            );
            lab.exec(i, &["ip", "link", "set", dev, "addrgenmode", "none"]);
            lab.exec(
                i,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.200.0.{me}/24"),
                    "dev",
                    dev,
                ],
            );
            lab.exec(
                i,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("fd00:200::{me}/64"),
                    "dev",
                    dev,
                    "nodad",
                ],
            );
            lab.exec(i, &["ip", "link", "set", dev, "up"]);
            for addr in [format!("10.200.0.{peer}"), format!("fd00:200::{peer}")] {
                lab.exec(
                    i,
                    &[
                        "ip",
                        "neigh",
                        "replace",
                        &addr,
                        "lladdr",
                        peer_mac,
                        "dev",
                        dev,
                        "nud",
                        "permanent",
                    ],
                );
            }
        }
        lab
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    pub fn exec(&self, i: usize, argv: &[&str]) -> String {
        run(Command::new("ip")
            .args(["netns", "exec", &self.names[i]])
            .args(argv))
    }

    /// Loads an nft ruleset into namespace `i`.
    pub fn nft(&self, i: usize, ruleset: &str) {
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &self.names[i], "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft runs");
        nft.stdin
            .take()
            .expect("stdin")
            .write_all(ruleset.as_bytes())
            .expect("ruleset written");
        let out = nft.wait_with_output().expect("nft ends");
        assert!(
            out.status.success(),
            "nft ruleset: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether a netlink socket inside namespace `i` has joined all three conntrack groups:
    /// the "listener is ready" signal, without sleeping.
    pub fn has_conntrack_listener(&self, i: usize) -> bool {
        self.inside(i, || conntrack_listeners_here(0b111) > 0)
    }

    /// Runs `f` inside namespace `i` (on a thread that entered it).
    pub fn inside<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        in_netns(Some(&self.names[i]), f).expect("entering the test namespace")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        drop(self.link.take());
        if let Some(cpus) = self.restore_cpus.take() {
            let _ = ctwasm_live::sys::set_thread_affinity(&cpus);
        }
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Runs the engine (`kind`: native or the component) with `sysctls` over `packets` (in capture
/// order) and on to `until_ns`, the instant the kernel's table was last read, so both sides have
/// had the same chance to time entries out; one lossless listener; arriving packets verified or
/// not as `arriving` says the capturing device handled them. Returns every message it read.
pub fn replay_capture(
    kind: BackendKind,
    packets: &[CapturedPacket],
    sysctls: &[(String, String)],
    arriving: ctwasm_host::replay::ArrivingChecksums,
    until_ns: u64,
) -> Result<Vec<CtMessage>> {
    let settings = TrackerSettings {
        sysctls: sysctls.to_vec(),
        ..TrackerSettings::default()
    };
    let mut backend = open_backend(kind, &settings, None)?;
    let mut sim = Simulation::new(backend.as_mut(), Listeners::lossless())?;
    sim.arriving = arriving;
    let mut out = Vec::new();
    let mut sink = |_: &ctwasm_core::batch::EventFrame<'_>, m: &CtMessage| -> Result<()> {
        out.push(m.clone());
        Ok(())
    };
    for p in packets {
        // A capture's clock can step back by a few ns between CPUs; the engine's may not.
        let p = CapturedPacket {
            ts_ns: p.ts_ns.max(sim.now()),
            ..p.clone()
        };
        sim.ingest(std::slice::from_ref(&p), &mut sink)?;
    }
    let end = until_ns.max(sim.now());
    sim.run_until(end, &mut sink)?;
    Ok(out)
}

/// How many NETLINK_NETFILTER sockets in the calling thread's network namespace joined
/// exactly the conntrack groups `mask` (bit 0 NEW, 1 UPDATE, 2 DESTROY): a listener is ready
/// once it shows here, without sleeping.
pub fn conntrack_listeners_here(mask: u32) -> usize {
    let want = format!("{mask:08x}");
    std::fs::read_to_string("/proc/thread-self/net/netlink")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"12") && f.get(3) == Some(&want.as_str())
        })
        .count()
}

/// Writes `packets` as a pcap file of raw IP (`LINKTYPE_RAW`, nanosecond times), for reading a
/// live run again with `ctwasm replay` or tshark.
pub fn write_pcap(path: &std::path::Path, packets: &[ctwasm_host::capture::CapturedPacket]) {
    let mut out = Vec::new();
    // Nanosecond-resolution magic, version 2.4, no zone offset, snaplen 256 KiB, LINKTYPE_RAW.
    for v in [0xa1b2_3c4d_u32.to_le_bytes(), [2, 0, 4, 0], [0; 4], [0; 4]] {
        out.extend_from_slice(&v);
    }
    out.extend_from_slice(&(256u32 * 1024).to_le_bytes());
    out.extend_from_slice(&101u32.to_le_bytes());
    for p in packets {
        let secs = (p.ts_ns / 1_000_000_000) as u32;
        let nanos = (p.ts_ns % 1_000_000_000) as u32;
        let len = p.l3.len() as u32;
        for v in [secs, nanos, len, len] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&p.l3);
    }
    std::fs::write(path, out).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A whole SCTP association, hand-built (this kernel has no SCTP sockets), as the packets each
/// side sends in turn: `(from_client, SCTP bytes)`. The client is port 5000 with tag
/// 0x11111111, the server port 6000 with tag 0x22222222: INIT, INIT ACK, COOKIE ECHO, COOKIE
/// ACK, one DATA and its SACK, SHUTDOWN, SHUTDOWN ACK, SHUTDOWN COMPLETE; CRC32c filled in.
pub fn sctp_association_packets() -> Vec<(bool, Vec<u8>)> {
    use ctwasm_core::wire::{build, sctp::chunk};
    let (c, s) = (0x1111_1111, 0x2222_2222);
    let chunks = [
        (true, 0, build::sctp_init(chunk::INIT, c)),
        (false, c, build::sctp_init(chunk::INIT_ACK, s)),
        (true, s, build::sctp_chunk(chunk::COOKIE_ECHO, 0, b"cookie")),
        (false, c, build::sctp_chunk(chunk::COOKIE_ACK, 0, &[])),
        (
            true,
            s,
            build::sctp_chunk(chunk::DATA, 3, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        ),
        (
            false,
            c,
            build::sctp_chunk(chunk::SACK, 0, &[0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0]),
        ),
        (
            true,
            s,
            build::sctp_chunk(chunk::SHUTDOWN, 0, &1u32.to_be_bytes()),
        ),
        (false, c, build::sctp_chunk(chunk::SHUTDOWN_ACK, 0, &[])),
        (true, s, build::sctp_chunk(chunk::SHUTDOWN_COMPLETE, 0, &[])),
    ];
    chunks
        .into_iter()
        .map(|(from_client, vtag, chunk)| {
            let (sport, dport) = if from_client {
                (5000, 6000)
            } else {
                (6000, 5000)
            };
            (from_client, build::sctp(sport, dport, vtag, &[chunk]))
        })
        .collect()
}
