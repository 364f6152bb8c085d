//! The live kernel, through the ctnetlink adapter: what an operator sees with `ctwasm watch`,
//! `list`, `stats` and `flush`, and the seed's stress test run against the kernel itself.
//!
//! Every test makes its own network namespace (`ctwasm-t-PID-N`), turns conntrack on inside it
//! (an nft ruleset with `ct state` rules on output and input, `nf_conntrack_events=1` so entries
//! made before a listener still raise events, short timeouts), sends traffic only on that
//! namespace's loopback, and deletes the namespace when it ends, whatever happens (a drop guard).
//! They run one at a time (a global lock): the kernel's GC and event worker are shared, and
//! parallel runs disturb each other's timing ("Timing and parallel runs" in
//! `host/docs/kernel-behaviour.md`).
//!
//! Without root or `ip netns` they print a loud SKIPPED line and pass; with
//! `CTWASM_REQUIRE_LIVE=1` (CI) they fail instead.

#![cfg(target_os = "linux")]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ctwasm_core::event::MessageKind;
use ctwasm_live::ctnetlink::{Conntrack, EventSocket, Received, SubscribeOptions, in_netns};

mod common;
use common::{RULESET, conntrack_listeners_here, require_live, run, serial};

static NEXT_NS: AtomicU32 = AtomicU32::new(0);

const BIN: &str = env!("CARGO_BIN_EXE_ctwasm");

/// A network namespace with conntrack switched on; deleted on drop.
struct Netns {
    name: String,
}

const SYSCTLS: &[(&str, &str)] = &[
    ("nf_conntrack_events", "1"),
    ("nf_conntrack_timestamp", "1"),
    ("nf_conntrack_acct", "1"),
    ("nf_conntrack_udp_timeout", "3"),
    ("nf_conntrack_udp_timeout_stream", "4"),
    ("nf_conntrack_icmp_timeout", "3"),
    ("nf_conntrack_tcp_timeout_time_wait", "3"),
    ("nf_conntrack_tcp_timeout_close", "3"),
];

impl Netns {
    fn new() -> Netns {
        let name = format!(
            "ctwasm-t-{}-{}",
            std::process::id(),
            NEXT_NS.fetch_add(1, Ordering::SeqCst)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        // From here on the guard deletes it, even if the setup below fails.
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        // The ruleset first: it registers the conntrack hooks, which creates the per-netns
        // sysctls.
        nft(&ns, &RULESET.replace("@INPUT@", ""));
        for (name, value) in SYSCTLS {
            ns.exec(&["sysctl", "-qw", &format!("net.netfilter.{name}={value}")]);
        }
        ns
    }

    fn exec(&self, argv: &[&str]) -> String {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv))
    }

    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }

    /// Runs `f` inside the namespace (on a thread that entered it).
    fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(self.name(), f).expect("entering the test namespace")
    }

    /// Whether a netlink socket inside the namespace has joined all three conntrack groups:
    /// the "listener is ready" signal, without sleeping.
    fn has_conntrack_listener(&self) -> bool {
        self.inside(|| conntrack_listeners_here(0b111) > 0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// TCP connect / data / close, a two-packet UDP exchange, and a ping, all on 127.0.0.1.
fn mixed_traffic(ns: &Netns) {
    ns.inside(|| {
        let listener = TcpListener::bind("127.0.0.1:5001").expect("tcp listen");
        let mut client = TcpStream::connect("127.0.0.1:5001").expect("tcp connect");
        let (mut server, _) = listener.accept().expect("accept");
        client.write_all(b"hello").expect("send");
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).expect("recv");
        drop(client);
        let mut rest = Vec::new();
        let _ = server.read_to_end(&mut rest);
        drop(server);

        let a = UdpSocket::bind("127.0.0.1:40002").expect("udp a");
        let b = UdpSocket::bind("127.0.0.1:5002").expect("udp b");
        a.send_to(b"ping", "127.0.0.1:5002").expect("udp send");
        let mut buf = [0u8; 16];
        let (n, from) = b.recv_from(&mut buf).expect("udp recv");
        b.send_to(&buf[..n], from).expect("udp reply");
        a.recv_from(&mut buf).expect("udp reply recv");
    });
    ns.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", "127.0.0.1"]);
    sctp_association(ns);
}

/// The state each event of [`sctp_association`] carries, the DESTROY's last: the NEW in
/// CLOSED, the setup, the shutdown back to CLOSED.
const SCTP_ASSOCIATION_STATES: [&str; 8] = [
    "CLOSED",
    "COOKIE_WAIT",
    "COOKIE_ECHOED",
    "ESTABLISHED",
    "SHUTDOWN_SENT",
    "SHUTDOWN_ACK_SENT",
    "CLOSED",
    "CLOSED",
];

/// An SCTP association from 127.0.0.1:5000 to 127.0.0.2:6000, hand-built (this kernel has no
/// SCTP sockets; a raw socket of protocol 132 sends the packets and takes them in): set up,
/// one DATA and its SACK, shut down.
fn sctp_association(ns: &Netns) {
    let (a, b) = (
        std::net::IpAddr::from([127, 0, 0, 1]),
        std::net::IpAddr::from([127, 0, 0, 2]),
    );
    ns.inside(|| {
        // One socket takes every packet in; each side sends from its own address (127.0.0.2
        // answers from itself, as the route would have it).
        let _taker = common::sockets::RawSocket::bind(Ipv4Addr::UNSPECIFIED.into(), 132)
            .expect("raw SCTP socket");
        let client = common::sockets::RawSocket::bind(a, 132).expect("raw SCTP client");
        let server = common::sockets::RawSocket::bind(b, 132).expect("raw SCTP server");
        for (from_client, l4) in common::sctp_association_packets() {
            let (sender, to) = if from_client {
                (&client, b)
            } else {
                (&server, a)
            };
            sender.send_to(&l4, to).expect("SCTP packet");
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

#[test]
fn watch_prints_the_kernels_new_update_and_destroy_for_tcp_udp_and_ping() {
    let _serial = serial();
    if !require_live("watch") {
        return;
    }
    let ns = Netns::new();
    let mut child = Command::new(BIN)
        .args([
            "watch",
            "--netns",
            &ns.name,
            "--format",
            "json",
            "--duration",
            "6",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctwasm watch starts");
    let ready_by = Instant::now() + Duration::from_secs(5);
    while !ns.has_conntrack_listener() {
        assert!(Instant::now() < ready_by, "ctwasm watch never subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
    mixed_traffic(&ns);
    run(Command::new(BIN).args(["flush", "--netns", &ns.name]));
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("watch output");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("watch summary");
    assert!(child.wait().expect("watch ends").success(), "{stderr}");
    eprintln!("{stdout}{stderr}");

    /// What one flow showed: its message types in order, its ids, its TCP states.
    #[derive(Default)]
    struct Seen {
        types: Vec<String>,
        ids: BTreeSet<u64>,
        tcp_states: Vec<String>,
    }
    let mut flows: BTreeMap<String, Seen> = BTreeMap::new();
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let proto = v["proto"].as_str().unwrap_or("?").to_string();
        let flow = flows.entry(proto).or_default();
        flow.types
            .push(v["type"].as_str().expect("a type").to_string());
        flow.ids.insert(v["id"].as_u64().expect("an id"));
        if let Some(s) = v["tcp_state"].as_str() {
            flow.tcp_states.push(s.to_string());
        }
    }
    for proto in ["tcp", "udp", "icmp"] {
        let Seen { types, ids, .. } = flows
            .get(proto)
            .unwrap_or_else(|| panic!("no {proto} events in:\n{stdout}"));
        assert_eq!(types.first().map(String::as_str), Some("NEW"), "{proto}");
        assert!(types.iter().any(|t| t == "UPDATE"), "{proto}: {types:?}");
        assert_eq!(types.last().map(String::as_str), Some("DESTROY"), "{proto}");
        assert_eq!(
            types.iter().filter(|t| *t == "DESTROY").count(),
            1,
            "{proto}"
        );
        assert_eq!(ids.len(), 1, "{proto}: one entry, one id: {ids:?}");
    }
    let tcp_states = &flows["tcp"].tcp_states;
    for state in ["SYN_SENT", "SYN_RECV", "ESTABLISHED"] {
        assert!(tcp_states.iter().any(|s| s == state), "{tcp_states:?}");
    }
    // The SCTP association's states, each once, under their own key.
    let sctp_states: Vec<String> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["sctp_state"].as_str().map(str::to_string))
        .collect();
    assert_eq!(sctp_states, SCTP_ASSOCIATION_STATES);
    assert!(stderr.contains("ENOBUFS=0"), "{stderr}");
}

/// `conntrack -L` text without the fields that tick between two reads.
fn steady(line: &str) -> String {
    let mut words: Vec<&str> = line.split_whitespace().collect();
    // `ipv4 2 tcp 6 TIMEOUT ...` with -o extended; the timeout is the fifth word.
    if words.len() > 4 && words[4].parse::<u32>().is_ok() {
        words.remove(4);
    }
    words
        .into_iter()
        .filter(|w| !w.starts_with("delta-time="))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn list_stats_and_flush_agree_with_conntrack_tools() {
    let _serial = serial();
    if !require_live("list/stats/flush") {
        return;
    }
    let ns = Netns::new();
    // An established TCP connection kept open, and a UDP flow.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let name = ns.name.clone();
    let holder = std::thread::spawn(move || {
        in_netns(Some(&name), move || {
            let listener = TcpListener::bind("127.0.0.1:5003").expect("listen");
            let client = TcpStream::connect("127.0.0.1:5003").expect("connect");
            let (server, _) = listener.accept().expect("accept");
            let udp = UdpSocket::bind("127.0.0.1:40005").expect("udp");
            udp.send_to(b"x", "127.0.0.1:5004").expect("udp send");
            ready_tx.send(()).expect("ready");
            let _ = done_rx.recv();
            drop((client, server));
        })
        .expect("netns thread");
    });
    ready_rx.recv().expect("traffic made");

    let ours = run(Command::new(BIN).args(["list", "--netns", &ns.name, "-o", "extended,id"]));
    let tools = ns.exec(&["conntrack", "-L", "-o", "extended,id"]);
    let ours_lines: BTreeSet<String> = ours.lines().map(steady).collect();
    let tools_lines: BTreeSet<String> = tools.lines().map(steady).collect();
    eprintln!("ctwasm list:\n{ours}conntrack -L:\n{tools}");
    assert_eq!(ours_lines, tools_lines);
    assert!(ours.contains("ESTABLISHED"), "{ours}");
    assert!(ours.contains("udp      17"), "{ours}");
    assert_eq!(ours.lines().count(), 2);

    let stats = Command::new(BIN)
        .args(["stats", "--netns", &ns.name])
        .output()
        .expect("stats");
    assert!(stats.status.success());
    let stats_out = String::from_utf8_lossy(&stats.stdout);
    let stats_err = String::from_utf8_lossy(&stats.stderr);
    let tools_stats = ns.exec(&["conntrack", "-S"]);
    eprintln!("ctwasm stats:\n{stats_out}{stats_err}conntrack -S:\n{tools_stats}");
    // The counters are per CPU and move with any traffic on the machine; the shape must match.
    let shape = |s: &str| -> Vec<Vec<String>> {
        s.lines()
            .map(|l| {
                l.split_whitespace()
                    .map(|w| w.split('=').next().unwrap_or("").to_string())
                    .collect()
            })
            .collect()
    };
    assert_eq!(shape(&stats_out), shape(&tools_stats));
    assert!(stats_err.contains("entries=2 dying=0"), "{stats_err}");

    run(Command::new(BIN).args(["flush", "--netns", &ns.name]));
    let after = run(Command::new(BIN).args(["list", "--netns", &ns.name]));
    assert_eq!(after, "", "the table is empty after a flush");
    let mut ct = Conntrack::open(ns.name()).expect("request socket");
    assert_eq!(ct.stats_global().expect("global stats").entries, 0);
    assert!(ct.dump_dying().expect("dying list").is_empty());
    let _ = done_tx.send(());
    holder.join().expect("holder thread");
}

/// Adds nft rules inside the namespace: `rules` is an nft script.
fn nft(ns: &Netns, rules: &str) {
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft runs");
    nft.stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("rules written");
    assert!(nft.wait().expect("nft ends").success(), "nft: {rules}");
}

#[test]
fn list_filters_select_what_conntrack_tools_selects() {
    let _serial = serial();
    if !require_live("list filters") {
        return;
    }
    let ns = Netns::new();
    // UDP to port 5006 gets mark 7; UDP to port 5007 goes to zone 3 (set before conntrack).
    nft(
        &ns,
        "table inet ctwasm_filters {
            chain raw_out { type filter hook output priority raw; udp dport 5007 ct zone set 3; }
            chain mark_out { type filter hook output priority 0; udp dport 5006 ct mark set 7; }
        }",
    );
    // Two established TCP connections kept open, UDP over IPv4 and IPv6, a ping.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<u16>();
    let name = ns.name.clone();
    let holder = std::thread::spawn(move || {
        in_netns(Some(&name), move || {
            let listener = TcpListener::bind("127.0.0.1:5003").expect("listen");
            let a = TcpStream::connect("127.0.0.1:5003").expect("connect");
            let client_port = a.local_addr().expect("port").port();
            let (a_server, _) = listener.accept().expect("accept");
            let listener6 = TcpListener::bind("[::1]:5005").expect("listen v6");
            let b = TcpStream::connect("[::1]:5005").expect("connect v6");
            let (b_server, _) = listener6.accept().expect("accept v6");
            let udp = UdpSocket::bind("127.0.0.1:40005").expect("udp");
            for port in [5004, 5006, 5007] {
                udp.send_to(b"x", ("127.0.0.1", port)).expect("udp send");
            }
            let udp6 = UdpSocket::bind("[::1]:40006").expect("udp v6");
            udp6.send_to(b"x", "[::1]:5004").expect("udp6 send");
            ready_tx.send(client_port).expect("ready");
            let _ = done_rx.recv();
            drop((a, a_server, b, b_server));
        })
        .expect("netns thread");
    });
    let client_port = ready_rx.recv().expect("traffic made").to_string();
    ns.exec(&["ping", "-c", "1", "-W", "1", "127.0.0.1"]);

    let selections: Vec<Vec<&str>> = vec![
        vec![],
        vec!["-p", "tcp"],
        vec!["-p", "udp", "--dport", "5004"],
        vec!["-f", "ipv6"],
        vec!["-f", "ipv4", "-p", "udp"],
        vec!["-s", "127.0.0.1", "-p", "tcp", "--state", "ESTABLISHED"],
        vec!["-d", "::1"],
        vec!["--reply-src", "127.0.0.1", "-p", "udp"],
        vec!["-p", "tcp", "--sport", &client_port],
        vec!["-p", "tcp", "--reply-port-src", "5003"],
        vec!["-m", "7"],
        vec!["-m", "0/0xff"],
        vec!["-w", "3"],
        vec!["-u", "ASSURED"],
        vec!["-u", "SEEN_REPLY,ASSURED", "-p", "tcp"],
        vec!["-p", "icmp"],
        vec!["-p", "tcp", "--state", "TIME_WAIT"],
    ];
    let mut nonempty = 0;
    for options in &selections {
        let ours = run(Command::new(BIN)
            .args(["list", "--netns", &ns.name, "-o", "extended,id"])
            .args(options));
        let mut argv = vec!["conntrack", "-L", "-o", "extended,id"];
        argv.extend(options.iter().copied());
        let tools = ns.exec(&argv);
        let ours_lines: BTreeSet<String> = ours.lines().map(steady).collect();
        let tools_lines: BTreeSet<String> = tools.lines().map(steady).collect();
        assert_eq!(
            ours_lines, tools_lines,
            "options {options:?}\nctwasm list:\n{ours}conntrack -L:\n{tools}"
        );
        nonempty += usize::from(!ours_lines.is_empty());
        eprintln!("{options:?}: {} entries, as conntrack -L", ours_lines.len());
    }
    // The traffic made something for most selections to find (the state and -p filters that
    // select nothing are checked too).
    assert!(nonempty >= selections.len() - 3, "{nonempty}");
    let _ = done_tx.send(());
    holder.join().expect("holder thread");
}

/// SCTP events: the state after the timeout, in text and in XML, as conntrack-tools prints
/// them.
#[test]
fn watch_prints_sctp_events_as_conntrack_tools_prints_them() {
    let _serial = serial();
    if !require_live("watch sctp") {
        return;
    }
    let ours = watch_beside_conntrack(&["-p", "sctp"], 0b111);
    let states: Vec<&str> = ours
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    assert_eq!(states, SCTP_ASSOCIATION_STATES, "{ours}");
    // In XML the tool names SCTP states from its TCP table (CLOSED, 1, prints SYN_SENT);
    // ctwasm prints what the tool prints.
    let ours = watch_beside_conntrack(&["-p", "sctp", "-o", "xml"], 0b111);
    assert_eq!(ours.matches("<state>").count(), 8, "{ours}");
    assert!(ours.contains("<state>SYN_SENT</state>"), "{ours}");
}

#[test]
fn watch_event_masks_and_filters_print_what_conntrack_tools_prints() {
    let _serial = serial();
    if !require_live("watch filters") {
        return;
    }
    let ours = watch_beside_conntrack(&["-e", "NEW,DESTROY", "-p", "udp", "-o", "id"], 0b101);
    // The UDP flow's NEW and DESTROY, nothing of TCP or ping, no UPDATE.
    let lines: Vec<&str> = ours.lines().collect();
    assert_eq!(lines.len(), 2, "{ours}");
    assert!(lines[0].contains("[NEW] udp") && lines[1].contains("[DESTROY] udp"));

    // The same events as an XML document, opened before the first flow and closed at the end.
    let ours = watch_beside_conntrack(&["-e", "NEW,DESTROY", "-p", "udp", "-o", "xml"], 0b101);
    let lines: Vec<&str> = ours.lines().collect();
    assert_eq!(lines.len(), 5, "{ours}");
    assert_eq!(lines[0], "<?xml version=\"1.0\" encoding=\"utf-8\"?>");
    assert!(
        lines[2].starts_with("<flow type=\"new\">")
            && lines[3].starts_with("<flow type=\"destroy\">")
    );
    assert_eq!(lines[4], "</conntrack>");
}

/// Runs `ctwasm watch OPTIONS` and `conntrack -E OPTIONS` side by side for 4 s in a fresh
/// namespace over [`mixed_traffic`] and a flush, asserts they printed the same bytes, and
/// returns them. `groups` is the conntrack groups both join with these options (bit 0 NEW,
/// 1 UPDATE, 2 DESTROY).
fn watch_beside_conntrack(options: &[&str], groups: u32) -> String {
    let ns = Netns::new();
    let ours = Command::new(BIN)
        .args(["watch", "--netns", &ns.name, "--duration", "4"])
        .args(options)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctwasm watch starts");
    let tools = Command::new("ip")
        .args(["netns", "exec", &ns.name, "timeout", "-s", "INT", "4"])
        .args(["conntrack", "-E"])
        .args(options)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("conntrack -E starts");
    // Both joined the groups the options select: an event mask is the kernel's to apply.
    let ready_by = Instant::now() + Duration::from_secs(3);
    while ns.inside(|| conntrack_listeners_here(groups)) < 2 {
        assert!(Instant::now() < ready_by, "the listeners never subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
    mixed_traffic(&ns);
    // The flush comes from this test's own socket, not from a `ctwasm flush` that exits at
    // once: both tools look the sender up in /proc when the DESTROY arrives (`progname=`), and
    // a sender that is still alive makes that lookup the same for both.
    let mut ct = Conntrack::open(ns.name()).expect("request socket");
    ct.flush().expect("flush");
    let ours = ours.wait_with_output().expect("watch ends");
    let tools = tools.wait_with_output().expect("conntrack -E ends");
    let (ours_text, tools_text) = (
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&tools.stdout),
    );
    eprintln!("{options:?}\nctwasm watch:\n{ours_text}conntrack -E:\n{tools_text}");
    assert!(
        ours.status.success(),
        "{}",
        String::from_utf8_lossy(&ours.stderr)
    );
    assert_eq!(ours_text, tools_text);
    ours_text.into_owned()
}

/// `conntrack -o xml` without the elements that tick between two reads.
fn steady_xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = ["<timeout>", "<deltatime>"]
        .iter()
        .filter_map(|tag| rest.find(tag))
        .min()
    {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("</").expect("a closing tag") + start;
        let close = rest[end..].find('>').expect("the closing tag ends") + end + 1;
        rest = &rest[close..];
    }
    out.push_str(rest);
    out
}

/// A command's stdout and exit status, whatever the status.
fn output_and_status(cmd: &mut Command) -> (String, i32) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

#[test]
fn get_update_delete_count_and_xml_print_what_conntrack_tools_prints() {
    let _serial = serial();
    if !require_live("get/update/delete/count") {
        return;
    }
    let ns = Netns::new();
    // Long enough that no entry times out while the test looks at it.
    ns.exec(&[
        "sysctl",
        "-qw",
        "net.netfilter.nf_conntrack_udp_timeout=120",
    ]);
    ns.inside(|| {
        let udp = UdpSocket::bind("127.0.0.1:40101").expect("udp");
        for port in 5101..=5104 {
            udp.send_to(b"x", ("127.0.0.1", port)).expect("udp send");
        }
        let udp6 = UdpSocket::bind("[::1]:40102").expect("udp v6");
        for port in [5105, 5106] {
            udp6.send_to(b"x", ("::1", port)).expect("udp6 send");
        }
    });
    let ctwasm =
        |args: &[&str]| output_and_status(Command::new(BIN).args(args).args(["--netns", &ns.name]));
    let conntrack = |args: &[&str]| {
        output_and_status(
            Command::new("ip")
                .args(["netns", "exec", &ns.name, "conntrack"])
                .args(args),
        )
    };
    let steady_lines = |text: &str| text.lines().map(steady).collect::<BTreeSet<_>>();

    // -C
    assert_eq!(ctwasm(&["count"]), conntrack(&["-C"]));
    assert_eq!(ctwasm(&["count"]).0, "6\n");

    // -G, in text and XML, and an entry that is not there.
    let tuple = [
        "-s",
        "127.0.0.1",
        "-d",
        "127.0.0.1",
        "-p",
        "udp",
        "--sport",
        "40101",
    ];
    for output in ["id", "xml"] {
        let ours = ctwasm(&[&["get", "-o", output], &tuple[..], &["--dport", "5101"]].concat());
        let tools = conntrack(&[&["-G", "-o", output], &tuple[..], &["--dport", "5101"]].concat());
        eprintln!(
            "ctwasm get -o {output}:\n{}conntrack -G:\n{}",
            ours.0, tools.0
        );
        assert_eq!((ours.1, tools.1), (0, 0));
        assert_eq!(
            steady_lines(&steady_xml(&ours.0)),
            steady_lines(&steady_xml(&tools.0))
        );
        assert!(ours.0.contains("dport=5101") || ours.0.contains("<dport>5101</dport>"));
    }
    // conntrack takes port options only after -p.
    let missing = [&tuple[..], &["--dport", "5999"]].concat();
    assert_eq!(
        ctwasm(&[&["get"], &missing[..]].concat()),
        (String::new(), 1)
    );
    assert_eq!(
        conntrack(&[&["-G"], &missing[..]].concat()),
        (String::new(), 1)
    );

    // -L -o timestamp: conntrack prints no time column for table entries.
    let ours = ctwasm(&["list", "-o", "timestamp,extended"]);
    let tools = conntrack(&["-L", "-o", "timestamp,extended"]);
    assert_eq!(steady_lines(&ours.0), steady_lines(&tools.0));
    assert!(!ours.0.starts_with('['), "{}", ours.0);

    // -L -o xml: the same document.
    let ours = ctwasm(&["list", "-o", "xml"]);
    let tools = conntrack(&["-L", "-o", "xml"]);
    assert_eq!(
        steady_lines(&steady_xml(&ours.0)),
        steady_lines(&steady_xml(&tools.0))
    );
    assert_eq!(ours.0.lines().count(), 6 + 3, "{}", ours.0);

    // -U: conntrack 1.4.7 sends its update with family AF_UNSPEC, which this kernel refuses
    // ("Operation not supported"), so the result is checked with -L and -G instead.
    // The updated entry is printed as the kernel has it afterwards (a get: use=2), as
    // conntrack -G prints it.
    let ours = ctwasm(&[
        "update", "-o", "extended", "-p", "udp", "--dport", "5102", "-m", "7",
    ]);
    assert_eq!(ours.1, 0);
    let got = conntrack(&[&["-G", "-o", "extended"], &tuple[..], &["--dport", "5102"]].concat());
    assert_eq!(steady_lines(&ours.0), steady_lines(&got.0), "{}", ours.0);
    let marked = conntrack(&["-L", "-m", "7"]);
    assert_eq!(marked.0.lines().count(), 1, "{}", marked.0);
    assert!(marked.0.contains("dport=5102") && marked.0.contains("mark=7"));
    // Already as asked: nothing to do, status 1, as conntrack-tools.
    assert_eq!(
        ctwasm(&["update", "-p", "udp", "--dport", "5102", "-m", "7"]),
        (String::new(), 1)
    );
    // MARK/MASK keeps the bits outside the mask: (7 & ~0xf0) ^ 0x30.
    ctwasm(&["update", "-p", "udp", "--dport", "5102", "-m", "0x30/0xf0"]);
    assert_eq!(conntrack(&["-L", "-m", "0x37"]).0.lines().count(), 1);

    // -D: what conntrack -L selected, deleted and printed; then nothing left to delete.
    let selected = conntrack(&["-L", "-o", "extended", "-p", "udp", "--dport", "5103"]);
    let ours = ctwasm(&["delete", "-o", "extended", "-p", "udp", "--dport", "5103"]);
    assert_eq!(ours.1, 0);
    assert_eq!(steady_lines(&ours.0), steady_lines(&selected.0));
    assert_eq!(ours.0.lines().count(), 1);
    assert_eq!(conntrack(&["-L", "-p", "udp", "--dport", "5103"]).0, "");
    assert_eq!(
        ctwasm(&["delete", "-p", "udp", "--dport", "5103"]),
        (String::new(), 1)
    );
    assert_eq!(
        conntrack(&["-D", "-p", "udp", "--dport", "5103"]),
        (String::new(), 1)
    );
    // In XML, conntrack -D prints bare flows, without the document's prologue.
    let tools = conntrack(&["-D", "-p", "udp", "--dport", "5106", "-o", "xml"]);
    let selected = conntrack(&["-L", "-p", "udp", "--dport", "5105", "-o", "xml"]);
    let ours = ctwasm(&["delete", "-p", "udp", "--dport", "5105", "-o", "xml"]);
    assert!(
        tools.0.starts_with("<flow>") && tools.0.lines().count() == 1,
        "{}",
        tools.0
    );
    assert!(
        ours.0.starts_with("<flow>") && ours.0.lines().count() == 1,
        "{}",
        ours.0
    );
    assert!(
        steady_lines(&steady_xml(&selected.0)).contains(steady_xml(ours.0.trim_end()).as_str())
    );
    assert_eq!(ctwasm(&["count"]).0, "3\n");
}

#[test]
fn get_and_delete_one_entry() {
    let _serial = serial();
    if !require_live("get/delete") {
        return;
    }
    let ns = Netns::new();
    ns.inside(|| {
        let udp = UdpSocket::bind("127.0.0.1:40006").expect("udp");
        udp.send_to(b"x", "127.0.0.1:5006").expect("udp send");
    });
    let mut ct = Conntrack::open(ns.name()).expect("request socket");
    let entries = ct.dump().expect("dump");
    assert_eq!(entries.len(), 1);
    let orig = entries[0].message.orig().expect("an original tuple");
    let id = entries[0].message.id();
    let got = ct.get(&orig, 0).expect("get").expect("the entry exists");
    assert_eq!(got.message.id(), id);
    assert!(ct.delete(&orig, 0, id).expect("delete"));
    assert_eq!(ct.get(&orig, 0).expect("get after delete"), None);
    assert!(!ct.delete(&orig, 0, None).expect("second delete"));
}

/// What one stress run measured.
#[derive(Debug)]
struct StressRun {
    flows: usize,
    rcvbuf: usize,
    destroys: usize,
    unique_ids: usize,
    duplicates: usize,
    enobufs: u64,
    dying_after_flush: usize,
    drain: Duration,
    count_after: u32,
}

/// The seed's stress test against the kernel: a listener with a small buffer reading slowly
/// (1 ms per datagram), `flows` one-datagram UDP flows to 127.1.x.y:9999 with a bound
/// receiver, then a flush. Reads until every flow's DESTROY arrived, or (lossy runs) 3 s of
/// silence, or the absolute deadline.
fn stress(ns: &Netns, flows: usize, reliable: bool, deadline: Duration) -> StressRun {
    let start = Instant::now();
    let mut socket = EventSocket::subscribe(&SubscribeOptions {
        rcvbuf: Some(2048),
        reliable,
        netns: Some(ns.name.clone()),
        ..SubscribeOptions::default()
    })
    .expect("subscribed");
    let rcvbuf = socket.effective_rcvbuf();
    let reader = std::thread::spawn(move || {
        let mut ids: Vec<u32> = Vec::new();
        let mut unique = BTreeSet::new();
        let mut last_destroy = Instant::now();
        let mut last_any = Instant::now();
        let mut flushed_seen = false;
        loop {
            let now = Instant::now();
            if now.duration_since(start) > deadline
                || unique.len() >= flows
                || (flushed_seen && now.duration_since(last_any) > Duration::from_secs(3))
            {
                break;
            }
            match socket.recv(Some(Duration::from_millis(200))).expect("recv") {
                Received::Messages(messages) => {
                    last_any = Instant::now();
                    for m in messages {
                        if m.kind() == Some(MessageKind::Destroy) {
                            flushed_seen = true;
                            last_destroy = Instant::now();
                            let id = m.message.id().expect("DESTROY carries an id");
                            ids.push(id);
                            unique.insert(id);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Received::Overrun => last_any = Instant::now(),
                Received::TimedOut | Received::Interrupted => {}
            }
        }
        (ids, last_destroy, socket.counts().enobufs)
    });

    ns.inside(|| {
        let receiver = UdpSocket::bind("0.0.0.0:9999").expect("receiver");
        let sender = UdpSocket::bind("127.0.0.1:0").expect("sender");
        for i in 0..flows {
            let dst = Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250) as u8 + 1);
            sender
                .send_to(b"x", SocketAddrV4::new(dst, 9999))
                .expect("datagram sent");
        }
        drop(receiver);
    });
    std::thread::sleep(Duration::from_secs(1));
    let mut ct = Conntrack::open(ns.name()).expect("request socket");
    let flushed_at = Instant::now();
    ct.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(500));
    let dying_after_flush = ct.dump_dying().expect("dying list").len();
    let (ids, last_destroy, enobufs) = reader.join().expect("reader");
    let unique: BTreeSet<u32> = ids.iter().copied().collect();
    let mut count_after = ct.stats_global().expect("global stats").entries;
    let settle = Instant::now() + Duration::from_secs(5);
    while count_after != 0 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(100));
        count_after = ct.stats_global().expect("global stats").entries;
    }
    StressRun {
        flows,
        rcvbuf,
        destroys: ids.len(),
        unique_ids: unique.len(),
        duplicates: ids.len() - unique.len(),
        enobufs,
        dying_after_flush,
        drain: last_destroy.saturating_duration_since(flushed_at),
        count_after,
    }
}

#[test]
fn seed_stress_test_against_the_kernel_every_destroy_exactly_once() {
    let _serial = serial();
    if !require_live("stress (reliable)") {
        return;
    }
    let ns = Netns::new();
    let r = stress(&ns, 2000, true, Duration::from_secs(60));
    eprintln!(
        "LIVE STRESS (reliable, BROADCAST_ERROR): {} UDP flows, rcvbuf {} B effective, \
         {} DESTROY received ({} unique ids, {} duplicates), drain {:.2} s after the flush, \
         dying list at +0.5 s: {}, ENOBUFS {}, nf_conntrack_count afterwards {} \
         [host/docs/kernel-behaviour.md, \"The seed's stress test on Linux\": 2000/2000 in \
         10.2 s at 4096 B, dying 1814 at +0.5 s]",
        r.flows,
        r.rcvbuf,
        r.destroys,
        r.unique_ids,
        r.duplicates,
        r.drain.as_secs_f64(),
        r.dying_after_flush,
        r.enobufs,
        r.count_after
    );
    assert_eq!(r.rcvbuf, 4096, "SO_RCVBUFFORCE 2048 is doubled");
    assert_eq!(r.unique_ids, 2000, "{r:?}");
    assert_eq!(r.duplicates, 0, "{r:?}");
    assert_eq!(r.count_after, 0, "{r:?}");
}

#[test]
fn seed_stress_test_against_the_kernel_without_broadcast_error_loses_events() {
    let _serial = serial();
    if !require_live("stress (unreliable)") {
        return;
    }
    let ns = Netns::new();
    let r = stress(&ns, 2000, false, Duration::from_secs(30));
    eprintln!(
        "LIVE STRESS (no BROADCAST_ERROR): {} UDP flows, rcvbuf {} B effective, \
         {} DESTROY received, drain {:.2} s, dying at +0.5 s: {}, ENOBUFS {} \
         [host/docs/kernel-behaviour.md, \"The seed's stress test on Linux\": 145/2000, \
         ENOBUFS 181]",
        r.flows,
        r.rcvbuf,
        r.destroys,
        r.drain.as_secs_f64(),
        r.dying_after_flush,
        r.enobufs
    );
    assert!(r.enobufs > 0, "{r:?}");
    assert!(r.destroys < 2000, "{r:?}");
    assert_eq!(
        r.dying_after_flush, 0,
        "without a reliable listener nothing waits"
    );
}

#[test]
fn namespaces_are_always_deleted() {
    let _serial = serial();
    if !require_live("netns cleanup") {
        return;
    }
    let name = {
        let ns = Netns::new();
        ns.name.clone()
    };
    let list = run(Command::new("ip").args(["netns", "list"]));
    assert!(
        !BufReader::new(list.as_bytes())
            .lines()
            .map_while(Result::ok)
            .any(|l| l.split_whitespace().next() == Some(name.as_str())),
        "{name} still listed:\n{list}"
    );
}

/// An FTP control connection through the kernel's FTP helper (assigned by nft): after a
/// first line, a `PORT` command makes the helper expect the data connection.
fn ftp_expectation(ns: &Netns, port: u16) -> (TcpStream, TcpStream) {
    ns.inside(|| {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("ftp listen");
        let mut client = TcpStream::connect(("127.0.0.1", port)).expect("ftp connect");
        let (mut server, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        let mut say = |from: &mut TcpStream, to: &mut TcpStream, line: &[u8]| {
            from.write_all(line).expect("send");
            let _ = to.read(&mut buf).expect("recv");
        };
        say(&mut server, &mut client, b"220 ready\r\n");
        // The helper reads commands only after the first line it saw the end of.
        say(&mut client, &mut server, b"USER anonymous\r\n");
        say(&mut server, &mut client, b"230 ok\r\n");
        say(&mut client, &mut server, b"PORT 127,0,0,1,200,10\r\n");
        say(&mut server, &mut client, b"200 ok\r\n");
        (client, server)
    })
}

#[test]
fn expectations_list_and_watch_as_conntrack_tools_prints_them() {
    let _serial = serial();
    if !require_live("expectations") {
        return;
    }
    let ns = Netns::new();
    nft(
        &ns,
        "table inet ctwasm_ftp {
            ct helper ftp-std { type \"ftp\" protocol tcp; }
            chain out { type filter hook output priority 0; tcp dport 2121 ct helper set \"ftp-std\"; }
        }",
    );
    let ours = Command::new(BIN)
        .args(["watch", "expect", "--netns", &ns.name, "--duration", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctwasm watch expect starts");
    let tools = Command::new("ip")
        .args(["netns", "exec", &ns.name, "timeout", "-s", "INT", "3"])
        .args(["conntrack", "-E", "expect"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("conntrack -E expect starts");
    // Both joined the three expectation groups (NFNLGRP_CONNTRACK_EXP_*: bits 3-5).
    let ready_by = Instant::now() + Duration::from_secs(3);
    while ns.inside(|| conntrack_listeners_here(0b11_1000)) < 2 {
        assert!(Instant::now() < ready_by, "the listeners never subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _control = ftp_expectation(&ns, 2121);

    // The table, in text (-o timestamp prints a time column for expectations) and XML.
    let timeout_free = |text: &str| -> Vec<String> {
        text.lines()
            .map(|l| {
                let l = l.split('\t').next_back().unwrap_or(l);
                let mut words: Vec<&str> = l.split_whitespace().collect();
                // The timeout is the first number of the line.
                if let Some(i) = words.iter().position(|w| w.parse::<u32>().is_ok()) {
                    words.remove(i);
                }
                words.join(" ")
            })
            .collect()
    };
    let ours_list = run(Command::new(BIN).args(["list", "expect", "--netns", &ns.name]));
    let tools_list = ns.exec(&["conntrack", "-L", "expect"]);
    eprintln!("ctwasm list expect:\n{ours_list}conntrack -L expect:\n{tools_list}");
    assert_eq!(timeout_free(&ours_list), timeout_free(&tools_list));
    assert_eq!(ours_list.lines().count(), 1);
    assert!(ours_list.contains("dport=51210") && ours_list.contains("helper=ftp"));
    let ours_stamped =
        run(Command::new(BIN).args(["list", "expect", "--netns", &ns.name, "-o", "timestamp"]));
    assert!(ours_stamped.starts_with('[') && ours_stamped.contains("]\t"));
    assert_eq!(timeout_free(&ours_stamped), timeout_free(&tools_list));
    let ours_xml =
        run(Command::new(BIN).args(["list", "expect", "--netns", &ns.name, "-o", "xml"]));
    let tools_xml = ns.exec(&["conntrack", "-L", "expect", "-o", "xml"]);
    assert_eq!(steady_xml(&ours_xml), steady_xml(&tools_xml));
    assert!(ours_xml.starts_with("<?xml") && ours_xml.ends_with("</expect>\n"));

    let ours = ours.wait_with_output().expect("watch ends");
    let tools = tools.wait_with_output().expect("conntrack -E expect ends");
    let (ours_text, tools_text) = (
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&tools.stdout),
    );
    eprintln!("ctwasm watch expect:\n{ours_text}conntrack -E expect:\n{tools_text}");
    assert!(
        ours.status.success(),
        "{}",
        String::from_utf8_lossy(&ours.stderr)
    );
    assert_eq!(ours_text, tools_text);
    assert!(ours_text.starts_with("    [NEW] "), "{ours_text}");

    // Filters and JSON describe connections: refused for expectations.
    for args in [&["-p", "tcp"][..], &["--format", "json"]] {
        let out = Command::new(BIN)
            .args(["list", "expect", "--netns", &ns.name])
            .args(args)
            .output()
            .expect("list expect runs");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty());
    }
}
