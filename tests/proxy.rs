//! `ctwasm proxy` end to end, against the live kernel: real clients through the proxy in a
//! namespace, and the proxy's events compared, connection by connection, with what the
//! kernel's conntrack recorded for the same client legs.
//!
//! 200 clients from 20 source addresses (10 each, concurrently) send data and read it back
//! through the proxy to an echo server; every tenth resets instead of closing. Then one more
//! source opens 25 connections, one after the other, against a limit of 20 per source: the
//! first 20 are carried, the last 5 reset at accept. The kernel sees every client leg; the
//! proxy tracks the carried ones. For each carried connection both must end (DESTROY) in the
//! same TCP state (TIME_WAIT after a close, CLOSE after a reset); the proxy's payload bytes
//! each way (its counters less its synthetic headers) must be exactly what the client sent,
//! and the kernel's (its counters less the real headers) the same to within 1 % and a few
//! headers, since real segments carry varying options and the odd retransmission; and the
//! refusals must be exactly the 5. The guest traps once on purpose in the middle of it all:
//! recovered from its checkpoint, it must have lost nothing of the above.

#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ctwasm_core::MessageKind;
use ctwasm_core::netlink::CtMessage;
use ctwasm_live::ctnetlink::{EventSocket, Groups, Received, SubscribeOptions};

mod common;
use common::sockets::{abort, connect_from};
use common::{Lab, RULESET, Reaped, TempDir, require_live, serial};

const BIN: &str = env!("CARGO_BIN_EXE_ctwasm");
const PROXY: &str = "127.0.0.1:8000";
const UPSTREAM: &str = "127.0.0.1:9000";

/// One connection's end, as either side recorded it: the TCP state of its DESTROY and the
/// payload bytes each way.
#[derive(Clone, Debug, PartialEq, Eq)]
struct End {
    state: String,
    payload: (u64, u64),
}

/// The kernel's DESTROY of a client leg: payload = bytes less headers. The namespace runs
/// without TCP timestamps, so every segment has 40 bytes of headers, and the SYN and SYN/ACK
/// 12 bytes of options more (MSS, SACK permitted, window scale).
fn kernel_end(msg: &CtMessage) -> Option<(u16, End)> {
    let orig = msg.orig()?;
    let ctwasm_core::L4Tuple::Ports { src, dst } = orig.l4 else {
        return None;
    };
    if dst != 8000 {
        return None;
    }
    let (o, r) = (msg.counters_orig()?, msg.counters_reply()?);
    let payload = |c: ctwasm_core::netlink::Counters| c.bytes.saturating_sub(40 * c.packets + 12);
    Some((
        src,
        End {
            state: msg.tcp_state()?.name().to_string(),
            payload: (payload(o), payload(r)),
        },
    ))
}

/// The proxy's DESTROY (a JSON line): its synthetic segments have 40 bytes of headers.
fn proxy_end(line: &str) -> Option<(u16, End)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["type"] != "DESTROY" {
        return None;
    }
    let payload = |dir: &str| {
        let c = &v["counters"][dir];
        c["bytes"].as_u64().unwrap() - 40 * c["packets"].as_u64().unwrap()
    };
    Some((
        v["orig"]["sport"].as_u64()? as u16,
        End {
            state: v["tcp_state"].as_str()?.to_string(),
            payload: (payload("orig"), payload("reply")),
        },
    ))
}

#[test]
fn the_proxys_connections_end_as_the_kernel_saw_them_and_the_limit_is_exact() {
    let _serial = serial();
    if !require_live("proxy end to end") {
        return;
    }
    let lab = Lab::loopback();
    lab.nft(0, &RULESET.replace("@INPUT@", ""));
    // Without timestamps, every segment but the SYNs has a bare 20-byte TCP header.
    lab.exec(0, &["sysctl", "-qw", "net.ipv4.tcp_timestamps=0"]);
    for s in [
        "nf_conntrack_acct=1",
        "nf_conntrack_events=1",
        "nf_conntrack_tcp_timeout_time_wait=1",
        "nf_conntrack_tcp_timeout_close=1",
    ] {
        lab.exec(0, &["sysctl", "-qw", &format!("net.netfilter.{s}")]);
    }
    // Tells the kernel reader and the echo server to end, also when the test fails.
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));

    // The kernel's DESTROYs, read inside the namespace.
    let kernel = kernel_destroys(&lab, &stop.0, kernel_end);

    // The echo server upstream.
    let echo = {
        let (stop, name) = (Arc::clone(&stop.0), lab.name(0).to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            ctwasm_live::netns::in_netns(Some(&name), || {
                let listener = TcpListener::bind(UPSTREAM).expect("echo listen");
                listener.set_nonblocking(true).unwrap();
                ready_tx.send(()).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            s.set_nonblocking(false).unwrap();
                            std::thread::spawn(move || common::echo(s));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
            .expect("netns");
        });
        ready_rx.recv().expect("echo server up");
        server
    };

    // The proxy, inside the namespace.
    let mut proxy = Reaped::new(
        Command::new("ip")
            .args(["netns", "exec", lab.name(0), BIN, "proxy"])
            .args(["--listen", PROXY, "--upstream", UPSTREAM])
            .args([
                "--format",
                "json",
                "--limit-per-source",
                "20",
                "--duration",
                "12",
            ])
            .args(["--sysctl", "net.netfilter.nf_conntrack_acct=1"])
            .args([
                "--sysctl",
                "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1",
            ])
            .args(["--sysctl", "net.netfilter.nf_conntrack_tcp_timeout_close=1"])
            // The guest traps once mid-run; recovery from a checkpoint must lose nothing.
            .args([
                "--checkpoint-every",
                "16",
                "--inject-fault",
                "trap-at-packet=700",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("proxy starts"),
    );
    let output = read_output(&mut proxy);
    let first = &output.first;
    assert!(
        first.contains("127.0.0.1:8000 -> 127.0.0.1:9000"),
        "{first}"
    );

    // 200 clients, 10 from each of 20 sources, concurrently; every tenth resets.
    let name = lab.name(0).to_string();
    let started = Instant::now();
    let carried: Vec<(u16, u64, bool)> = ctwasm_live::netns::in_netns(Some(&name), || {
        let mut handles = Vec::new();
        for i in 0..200u32 {
            handles.push(std::thread::spawn(move || {
                let source = Ipv4Addr::new(127, 0, 0, 2 + (i % 20) as u8);
                let mut s = bound_connect(source, 42_000 + i as u16).expect("connect");
                let size = 1_000 + 97 * u64::from(i);
                let data = vec![i as u8; size as usize];
                s.write_all(&data).expect("send");
                let mut back = vec![0u8; size as usize];
                s.read_exact(&mut back).expect("echo");
                assert_eq!(back, data);
                let port = s.local_addr().unwrap().port();
                let reset = i % 10 == 9;
                if reset {
                    abort(s);
                } else {
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest);
                }
                (port, size, reset)
            }));
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
    .unwrap();
    eprintln!("200 clients through the proxy in {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(10));
    if let Ok(Some(status)) = proxy.get_mut().try_wait() {
        panic!("the proxy ended early ({status})");
    }

    // One source, 25 connections one after the other against the limit of 20.
    let (held, refused) = ctwasm_live::netns::in_netns(Some(&name), || {
        let source = Ipv4Addr::new(127, 0, 0, 100);
        let mut held = Vec::new();
        let mut refused = Vec::new();
        for i in 0..25u16 {
            let mut s = bound_connect(source, 43_000 + i).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let port = s.local_addr().unwrap().port();
            let mut b = [0u8; 1];
            let ok = s.write_all(b"x").is_ok() && matches!(s.read(&mut b), Ok(1));
            if ok {
                held.push((port, s));
            } else {
                refused.push(port);
            }
        }
        (held, refused)
    })
    .unwrap();
    assert_eq!(held.len(), 20);
    assert_eq!(refused.len(), 5);
    let held_ports: Vec<u16> = held.iter().map(|(p, _)| *p).collect();
    for (_, mut s) in held {
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    }

    let (log, events) = output.wait(proxy);
    let kernel = kernel_flushed(&lab, &stop.0, kernel);
    echo.join().unwrap();
    eprintln!("proxy log:\n{log}");

    let ours: BTreeMap<u16, End> = events.lines().filter_map(proxy_end).collect();
    assert_eq!(log.matches("refused 127.0.0.100:").count(), 5, "{log}");
    assert!(
        log.contains("guest faults recovered: 1, calls dropped: 0"),
        "{log}"
    );
    assert!(
        log.contains("refused 5 (per source 5, per zone 0)"),
        "{log}"
    );
    // Every carried connection: the proxy's end is the kernel's. The proxy's payload is exact.
    // The kernel's counters hold the real segments: their headers, whose options vary (a SACK
    // block), and any segment the stack sent again, which a loaded machine does (a whole
    // transfer was seen counted twice). So the kernel's payload is never below what was sent,
    // and what it counts beyond that, over all connections, is at most 1 % and a few headers
    // each plus the segments the namespace's TCP retransmitted (`RetransSegs`, at most one
    // loopback MSS of 65 483 bytes each).
    let retransmitted = tcp_retransmitted_segments(&lab);
    let mut beyond = 0u64;
    let mut allowed = retransmitted * 65_483;
    // The held connections carried one byte each way and closed.
    let held = held_ports.iter().map(|&port| (port, 1, false));
    let mut compared = 0;
    for (port, size, reset) in carried.iter().copied().chain(held) {
        let want = End {
            state: if reset { "CLOSE" } else { "TIME_WAIT" }.to_string(),
            payload: (size, size),
        };
        assert_eq!(ours.get(&port), Some(&want), "proxy, port {port}");
        let k = kernel
            .get(&port)
            .unwrap_or_else(|| panic!("no kernel DESTROY, port {port}"));
        assert_eq!(k.state, want.state, "kernel, port {port}");
        assert!(
            k.payload.0 >= size && k.payload.1 >= size,
            "kernel, port {port}: {k:?}, sent {size} each way"
        );
        beyond += (k.payload.0 - size) + (k.payload.1 - size);
        allowed += 2 * (size / 100 + 600);
        compared += 1;
    }
    assert!(
        beyond <= allowed,
        "the kernel counted {beyond} bytes beyond the payload; headers and {retransmitted} \
         retransmitted segments explain at most {allowed}"
    );
    // The refused ones: seen by the kernel (accepted, then reset), never tracked by the proxy.
    for port in &refused {
        assert_eq!(ours.get(port), None);
        assert_eq!(
            kernel.get(port).map(|e| e.state.as_str()),
            Some("CLOSE"),
            "port {port}"
        );
    }
    assert_eq!(compared, 220);
    assert_eq!(ours.len(), 220);
}

/// `RetransSegs` of the namespace's TCP (`/proc/net/snmp`).
fn tcp_retransmitted_segments(lab: &Lab) -> u64 {
    let snmp = lab.exec(0, &["cat", "/proc/net/snmp"]);
    let tcp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let (names, values) = (tcp[0].split_whitespace(), tcp[1].split_whitespace());
    names
        .zip(values)
        .find(|(name, _)| *name == "RetransSegs")
        .and_then(|(_, v)| v.parse().ok())
        .expect("RetransSegs in /proc/net/snmp")
}

/// Sets the flag when dropped: the test's helper threads end however the test does.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The kernel's DESTROYs in the lab's first namespace, read on a thread until `stop` is set:
/// what `end_of` makes of each, by the port it names.
fn kernel_destroys<E: Send + 'static>(
    lab: &Lab,
    stop: &Arc<AtomicBool>,
    end_of: fn(&CtMessage) -> Option<(u16, E)>,
) -> std::thread::JoinHandle<BTreeMap<u16, E>> {
    let mut socket = EventSocket::subscribe(&SubscribeOptions {
        groups: Groups::DESTROY,
        rcvbuf: Some(8 << 20),
        reliable: true,
        no_enobufs: false,
        netns: Some(lab.name(0).to_string()),
    })
    .expect("event socket");
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let mut ends = BTreeMap::new();
        while !stop.load(Ordering::SeqCst) {
            if let Received::Messages(ms) = socket.recv(Some(Duration::from_millis(100))).unwrap() {
                for m in ms.iter().filter(|m| m.kind() == Some(MessageKind::Destroy)) {
                    if let Some((port, end)) = end_of(&m.message) {
                        ends.insert(port, end);
                    }
                }
            }
        }
        ends
    })
}

/// A running proxy's output: its first line on stderr (the route) at once; the rest of stderr
/// and all of stdout read on threads as they come, as a listener reads them.
struct Output {
    first: String,
    log: std::thread::JoinHandle<String>,
    events: std::thread::JoinHandle<String>,
}

impl Output {
    /// Waits for the proxy to end by itself (it must succeed); its log and its event lines.
    fn wait(self, proxy: Reaped) -> (String, String) {
        let status = proxy.into_inner().wait().expect("proxy ends");
        let log = self.log.join().unwrap();
        let events = self.events.join().unwrap();
        assert!(status.success(), "{log}");
        (log, events)
    }
}

/// The kernel's GC takes its time with entries past their timeout; a flush has it send every
/// remaining DESTROY now, each with the state the entry was in. Then the reader (and whatever
/// else watches `stop`) is stopped, and what it read is returned.
fn kernel_flushed<E>(
    lab: &Lab,
    stop: &AtomicBool,
    kernel: std::thread::JoinHandle<BTreeMap<u16, E>>,
) -> BTreeMap<u16, E> {
    ctwasm_live::ctnetlink::Conntrack::open(Some(lab.name(0)))
        .expect("request socket")
        .flush()
        .expect("flush");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    kernel.join().unwrap()
}

fn read_output(proxy: &mut Reaped) -> Output {
    let mut stderr = BufReader::new(proxy.get_mut().stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let log = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });
    let mut stdout = proxy.get_mut().stdout.take().unwrap();
    let events = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stdout.read_to_string(&mut all);
        all
    });
    Output { first, log, events }
}

/// A connection to the proxy from `source`:`port` (a loopback address of its own; a port of
/// its own too, as `connect_from` binds with SO_REUSEADDR).
fn bound_connect(source: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    connect_from(SocketAddr::new(source.into(), port), PROXY.parse().unwrap())
}

/// A proxy on loopback (no namespace needed), with `extra` options; returns the child and the
/// address it listens on.
fn start_proxy(upstream: &str, extra: &[&str]) -> (Reaped, String) {
    let mut child = Reaped::new(
        Command::new(BIN)
            .args(["proxy", "--listen", "127.0.0.1:0", "--upstream", upstream])
            .args(["--format", "json", "--backend", "native", "--duration", "4"])
            .args(["--sysctl", "net.netfilter.nf_conntrack_tcp_timeout_close=1"])
            .args([
                "--sysctl",
                "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("proxy starts"),
    );
    let mut first = String::new();
    BufReader::new(child.get_mut().stderr.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .strip_prefix("ctwasm proxy: ")
        .and_then(|r| r.split(" -> ").next())
        .unwrap_or_else(|| panic!("no address line: {first}"))
        .to_string();
    (child, addr)
}

/// The proxy's output after it ended: (event lines, log).
fn finish(child: Reaped) -> (Vec<serde_json::Value>, String) {
    let out = child.into_inner().wait_with_output().expect("proxy ends");
    assert!(out.status.success());
    let events = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect(l))
        .collect();
    (events, String::from_utf8(out.stderr).unwrap())
}

/// The event types and TCP states of one connection, in order (`NEW SYN_SENT`, ...).
fn sequence(events: &[serde_json::Value], client_port: u16) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["orig"]["sport"] == client_port)
        .map(|e| {
            format!(
                "{} {}",
                e["type"].as_str().unwrap(),
                e["tcp_state"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

#[test]
fn an_upstream_that_refuses_resets_the_client_and_ends_the_entry_in_close() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (proxy, addr) = start_proxy(&closed.to_string(), &[]);
    let mut c = TcpStream::connect(&addr).unwrap();
    let port = c.local_addr().unwrap().port();
    let mut buf = [0u8; 8];
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    // The proxy resets the client: a read ends with a reset (or an end, if it raced).
    assert!(matches!(c.read(&mut buf), Err(_) | Ok(0)));
    let (events, log) = finish(proxy);
    assert!(
        log.contains(&format!("upstream {closed}: Connection refused")),
        "{log}"
    );
    assert!(log.contains("upstream failed 1"), "{log}");
    assert_eq!(
        sequence(&events, port),
        [
            "NEW SYN_SENT",
            "UPDATE SYN_RECV",
            "UPDATE ESTABLISHED",
            "UPDATE CLOSE",
            "DESTROY CLOSE"
        ]
    );
}

#[test]
fn an_upstream_that_never_answers_is_given_up_after_the_connect_timeout() {
    use std::os::fd::AsRawFd;
    // A listener whose accept queue is full: further SYNs go unanswered.
    let full = TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: listen on a socket this test owns.
    assert_eq!(unsafe { libc::listen(full.as_raw_fd(), 0) }, 0);
    let upstream = full.local_addr().unwrap();
    let _queued: Vec<TcpStream> = (0..2)
        .filter_map(|_| TcpStream::connect_timeout(&upstream, Duration::from_millis(300)).ok())
        .collect();
    let (proxy, addr) = start_proxy(&upstream.to_string(), &["--connect-timeout", "1"]);
    let mut c = TcpStream::connect(&addr).unwrap();
    let port = c.local_addr().unwrap().port();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let started = Instant::now();
    assert!(matches!(c.read(&mut [0u8; 8]), Err(_) | Ok(0)));
    assert!(started.elapsed() >= Duration::from_millis(900));
    let (events, log) = finish(proxy);
    assert!(
        log.contains("no answer in 1.0 s; the client is reset"),
        "{log}"
    );
    assert_eq!(
        sequence(&events, port).last().map(String::as_str),
        Some("DESTROY CLOSE")
    );
}

#[test]
fn clients_that_send_nothing_and_a_limit_of_zero() {
    let upstream = common::echo_server(4);
    // A client that connects and closes without a byte: an ordinary close, nothing carried.
    let (proxy, addr) = start_proxy(&upstream.to_string(), &[]);
    let c = TcpStream::connect(&addr).unwrap();
    let port = c.local_addr().unwrap().port();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut c = c;
    let _ = c.read_to_end(&mut Vec::new());
    let (events, log) = finish(proxy);
    assert!(log.contains("closed 1, reset 0"), "{log}");
    assert!(log.contains("bytes to upstream 0, to clients 0"), "{log}");
    let seq = sequence(&events, port);
    assert_eq!(seq.first().map(String::as_str), Some("NEW SYN_SENT"));
    assert_eq!(seq.last().map(String::as_str), Some("DESTROY TIME_WAIT"));

    // A limit of 0 refuses every connection, with the reason, and tracks none.
    let (proxy, addr) = start_proxy(&upstream.to_string(), &["--limit-per-zone", "0"]);
    for _ in 0..3 {
        let mut c = TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        assert!(matches!(c.read(&mut [0u8; 1]), Err(_) | Ok(0)));
    }
    let (events, log) = finish(proxy);
    assert_eq!(
        log.matches("0 open connections in this zone, limit 0")
            .count(),
        3,
        "{log}"
    );
    assert!(
        log.contains("refused 3 (per source 0, per zone 3)"),
        "{log}"
    );
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn unpaired_or_bad_routes_are_refused() {
    for (args, why) in [
        (&["--listen", "127.0.0.1:0"][..], "--upstream"),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
            ],
            "give them in pairs",
        ),
        (
            &["--listen", "nowhere", "--upstream", "127.0.0.1:1"],
            "--listen",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "127.0.0.1:1",
                "--inject-fault",
                "x",
            ],
            "trap-at-packet=N",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "127.0.0.1:1",
                "--socket",
                "/nonexistent/ctwasm.sock",
            ],
            "is `ctwasm listen` running?",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "127.0.0.1:1",
                "--socket",
                "/tmp/x",
                "--socket-spec",
                "buffer=lots",
            ],
            "--socket-spec",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "127.0.0.1:1",
                "--retry-policy",
                "sometimes",
            ],
            "--retry-policy",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "127.0.0.1:1",
                "--listener",
                "rcvbuf=2048,drain=fast",
            ],
            "--listener",
        ),
        (
            &["--listen", "sctp:127.0.0.1:0", "--upstream", "127.0.0.1:1"],
            "--listen",
        ),
        (&["--config", "/nonexistent/routes.toml"], "--config"),
        (
            &["--udp-idle", "soon", "--config", "/dev/null"],
            "--udp-idle",
        ),
        (&["--config", "/dev/null"], "no route"),
    ] {
        let out = Command::new(BIN).arg("proxy").args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(1 | 2)),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
    // A listening address already taken: named, before anything runs.
    let taken = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let _hold = TcpListener::bind(taken);
    let out = Command::new(BIN)
        .args([
            "proxy",
            "--listen",
            &taken.to_string(),
            "--upstream",
            "127.0.0.1:1",
        ])
        .args(["--backend", "native"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("--listen {taken}")), "{stderr}");
}

/// Who closed first reaches the tracker: a client-first close ends with the client's FIN and
/// ACK (one packet more from the client than from the proxy, beyond the handshake's), a
/// server-first close with the proxy's FIN towards the client and its ACK. Every transfer adds
/// one packet each way (the data and its ACK), so the difference of the packet counts in the
/// DESTROY tells the two apart whatever the reads were.
#[test]
fn a_server_that_closes_first_is_told_apart_from_a_client_that_does() {
    // The upstream closes first when the client's first byte is 'S', else after the client.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = server.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in server.incoming().take(2) {
            let mut s = s.unwrap();
            let mut first = [0u8; 1];
            s.read_exact(&mut first).unwrap();
            s.write_all(b"hello").unwrap();
            if first[0] == b'S' {
                s.shutdown(std::net::Shutdown::Write).unwrap();
            }
            let _ = s.read_to_end(&mut Vec::new());
        }
    });
    let acct = ["--sysctl", "net.netfilter.nf_conntrack_acct=1"];
    let (proxy, addr) = start_proxy(&upstream.to_string(), &acct);
    let mut ports = Vec::new();
    for who in [b'S', b'C'] {
        let mut c = TcpStream::connect(&addr).unwrap();
        ports.push(c.local_addr().unwrap().port());
        c.write_all(&[who]).unwrap();
        let mut hello = [0u8; 5];
        c.read_exact(&mut hello).unwrap();
        if who == b'S' {
            // The server's FIN comes first; then the client closes.
            assert_eq!(c.read(&mut [0u8; 1]).unwrap(), 0);
            c.shutdown(std::net::Shutdown::Write).unwrap();
        } else {
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let _ = c.read_to_end(&mut Vec::new());
        }
    }
    let (events, log) = finish(proxy);
    assert!(log.contains("closed 2, reset 0"), "{log}");
    let difference = |port: u16| {
        let destroy = events
            .iter()
            .find(|e| e["orig"]["sport"] == port && e["type"] == "DESTROY")
            .unwrap_or_else(|| panic!("no DESTROY for {port}: {events:?}"));
        let packets = |dir: &str| destroy["counters"][dir]["packets"].as_i64().unwrap();
        packets("orig") - packets("reply")
    };
    assert_eq!(difference(ports[0]), 0, "server first");
    assert_eq!(difference(ports[1]), 2, "client first");
    for port in ports {
        assert_eq!(
            sequence(&events, port)[3..],
            [
                "UPDATE FIN_WAIT",
                "UPDATE LAST_ACK",
                "UPDATE TIME_WAIT",
                "DESTROY TIME_WAIT"
            ]
        );
    }
}

/// `--socket`: every event also goes to `ctwasm listen`, whose socket buffer is small and
/// whose reader is slow. The socket asks for reliable delivery, so the DESTROYs it refuses
/// wait on the dying list and are sent again, also after the last connection ended: the
/// reader gets every connection's DESTROY exactly once, and the buffer did refuse some.
#[test]
fn a_reliable_socket_listener_gets_every_destroy_exactly_once() {
    let deadline = Instant::now() + Duration::from_secs(90);
    let dir = TempDir::new("proxy-socket");
    let path = dir.path().join("events.sock");
    let mut reader = Reaped::new(
        Command::new(BIN)
            .arg("listen")
            .arg(&path)
            .args(["--format", "json", "--rate", "400", "--duration", "80"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "ctwasm listen never made its socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let connections = 60;
    let upstream = common::echo_server(connections);
    let socket = path.to_str().unwrap();
    let (proxy, addr) = start_proxy(
        &upstream.to_string(),
        &[
            "--socket",
            socket,
            "--socket-spec",
            "buffer=2048,reliable",
            "--retry-policy",
            "kernel",
            "--drain",
            "60",
        ],
    );
    for _ in 0..connections {
        let mut c = TcpStream::connect(&addr).unwrap();
        c.write_all(b"ping").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let _ = c.read_to_end(&mut Vec::new());
    }
    let (_, log) = finish(proxy);
    while reader.get_mut().try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "ctwasm listen did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = reader.into_inner().wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "{stderr}");
    let destroys = stdout
        .lines()
        .filter(|l| l.contains("\"type\":\"DESTROY\""))
        .count();
    assert_eq!(destroys, connections, "{stderr}\n{log}");
    assert!(
        stderr.contains(&format!(
            "distinct destroys={connections} duplicate destroys=0"
        )),
        "{stderr}"
    );
    let refused: u64 = log
        .split("refused ")
        .nth(2)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no socket figures: {log}"));
    assert!(refused > 0, "the buffer never refused: {log}");
    assert!(log.contains("dying now 0"), "{log}");
}

/// `--listener`: simulated netlink listeners on the proxy's clock decide the deliveries as a
/// kernel socket of their setup would. A reliable one with a small buffer and a slow reader
/// refuses some messages, so their DESTROYs wait on the dying list and come again: stdout (its
/// reads) has every connection's DESTROY exactly once. A second, unreliable one of the same
/// setup just loses what it refuses.
#[test]
fn simulated_listeners_decide_the_deliveries_on_the_proxys_clock() {
    let connections = 40;
    let upstream = common::echo_server(connections);
    let (proxy, addr) = start_proxy(
        &upstream.to_string(),
        &[
            "--listener",
            "name=slow,rcvbuf=2048,reliable,drain=200/s",
            "--listener",
            "name=lossy,rcvbuf=2048,drain=200/s",
            "--retry-policy",
            "kernel",
            "--drain",
            "30",
        ],
    );
    for _ in 0..connections {
        let mut c = TcpStream::connect(&addr).unwrap();
        c.write_all(b"ping").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let _ = c.read_to_end(&mut Vec::new());
    }
    let (events, log) = finish(proxy);
    let destroys: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "DESTROY")
        .map(|e| e["id"].as_u64().expect("an id"))
        .collect();
    let distinct: std::collections::HashSet<_> = destroys.iter().collect();
    assert_eq!(destroys.len(), connections, "{log}");
    assert_eq!(distinct.len(), connections, "{log}");
    let dropped = |name: &str| -> u64 {
        log.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("listener {name}: ")))
            .and_then(|l| l.split("dropped ").nth(1))
            .and_then(|d| d.split(' ').next())
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("no figures for listener {name}: {log}"))
    };
    assert!(dropped("slow") > 0, "the buffer never refused: {log}");
    assert!(dropped("lossy") > 0, "the buffer never refused: {log}");
    assert!(log.contains("reliable delivery: dying now 0"), "{log}");
}

/// A UDP flow's end: datagrams and bytes each way, and whether it saw a reply and was assured.
#[derive(Clone, Debug, PartialEq, Eq)]
struct UdpEnd {
    orig: (u64, u64),
    reply: (u64, u64),
    seen_reply: bool,
    assured: bool,
}

const UDP_PROXY_PORT: u16 = 8053;

/// The kernel's DESTROY of a UDP client leg (to the proxy's port).
fn kernel_udp_end(msg: &CtMessage) -> Option<(u16, UdpEnd)> {
    let orig = msg.orig()?;
    let ctwasm_core::L4Tuple::Ports { src, dst } = orig.l4 else {
        return None;
    };
    if orig.proto != 17 || dst != UDP_PROXY_PORT {
        return None;
    }
    let (o, r) = (msg.counters_orig()?, msg.counters_reply()?);
    let status: Vec<&str> = msg.status()?.names().collect();
    Some((
        src,
        UdpEnd {
            orig: (o.packets, o.bytes),
            reply: (r.packets, r.bytes),
            seen_reply: status.contains(&"SEEN_REPLY"),
            assured: status.contains(&"ASSURED"),
        },
    ))
}

/// The proxy's DESTROY of a UDP flow (a JSON line).
fn proxy_udp_end(line: &str) -> Option<(u16, UdpEnd)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["type"] != "DESTROY" || v["proto"] != "udp" {
        return None;
    }
    let counter = |dir: &str| {
        let c = &v["counters"][dir];
        (c["packets"].as_u64().unwrap(), c["bytes"].as_u64().unwrap())
    };
    let status: Vec<&str> = v["status"]
        .as_array()?
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    Some((
        v["orig"]["sport"].as_u64()? as u16,
        UdpEnd {
            orig: counter("orig"),
            reply: counter("reply"),
            seen_reply: status.contains(&"SEEN_REPLY"),
            assured: status.contains(&"ASSURED"),
        },
    ))
}

/// A UDP route end to end: 60 clients from 10 sources send 1 to 4 datagrams of their own sizes
/// each through the proxy to an echo server that answers all but the datagrams starting with
/// `-` (a seventh of the clients get no answer); then one more source sends from 25 ports
/// against a limit of 20 per source. The kernel's conntrack sees every client leg; for each
/// flow the proxy carried, its DESTROY must count exactly the kernel's datagrams and bytes
/// each way (UDP has no retransmissions or options: nothing may differ), and agree on whether
/// a reply was seen; the 5 over the limit are refused, their datagrams dropped.
#[test]
fn the_proxys_udp_flows_end_as_the_kernel_counted_them() {
    let _serial = serial();
    if !require_live("UDP proxy end to end") {
        return;
    }
    let lab = Lab::loopback();
    lab.nft(0, &RULESET.replace("@INPUT@", ""));
    let sysctls = [
        "nf_conntrack_acct=1",
        "nf_conntrack_events=1",
        "nf_conntrack_udp_timeout=2",
        "nf_conntrack_udp_timeout_stream=3",
    ];
    for s in sysctls {
        lab.exec(0, &["sysctl", "-qw", &format!("net.netfilter.{s}")]);
    }
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let kernel = kernel_destroys(&lab, &stop.0, kernel_udp_end);
    // The echo server: answers every datagram but those starting with '-'.
    let echo = {
        let (stop, name) = (Arc::clone(&stop.0), lab.name(0).to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            ctwasm_live::netns::in_netns(Some(&name), || {
                let s = std::net::UdpSocket::bind("127.0.0.1:9053").expect("echo bind");
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((n, from)) = s.recv_from(&mut buf)
                        && buf[0] != b'-'
                    {
                        let _ = s.send_to(&buf[..n], from);
                    }
                }
            })
            .expect("netns");
        });
        ready_rx.recv().expect("echo server up");
        server
    };
    let mut proxy = Reaped::new(
        Command::new("ip")
            .args(["netns", "exec", lab.name(0), BIN, "proxy"])
            .args(["--listen", &format!("udp:127.0.0.1:{UDP_PROXY_PORT}")])
            .args(["--upstream", "127.0.0.1:9053"])
            .args(["--format", "json", "--limit-per-source", "20"])
            .args(["--duration", "7"])
            .args(sysctls.iter().flat_map(|s| ["--sysctl", s]))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("proxy starts"),
    );
    let output = read_output(&mut proxy);
    let first = &output.first;
    assert!(
        first.contains("udp 127.0.0.1:8053 -> 127.0.0.1:9053 (zone 0, sessions idle 2.0 s)"),
        "{first}"
    );

    let name = lab.name(0).to_string();
    let to_proxy: SocketAddr = format!("127.0.0.1:{UDP_PROXY_PORT}").parse().unwrap();
    // Each client: (port, datagrams sent, bytes sent, answered).
    let carried: Vec<(u16, u64, u64, bool)> = ctwasm_live::netns::in_netns(Some(&name), || {
        let handles: Vec<_> = (0..60u32)
            .map(|i| {
                std::thread::spawn(move || {
                    let source = Ipv4Addr::new(127, 0, 0, 2 + (i % 10) as u8);
                    let s = std::net::UdpSocket::bind((source, 45_000 + i as u16)).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(300)))
                        .unwrap();
                    let silent = i % 7 == 0;
                    let (count, mut bytes) = (1 + u64::from(i % 4), 0);
                    for j in 0..count {
                        let size = 20 + 37 * i as usize + 500 * j as usize;
                        let mut d = vec![b'a' + (i % 26) as u8; size];
                        if silent {
                            d[0] = b'-';
                        }
                        s.send_to(&d, to_proxy).unwrap();
                        bytes += size as u64;
                        let mut back = vec![0u8; 65_536];
                        match s.recv(&mut back) {
                            Ok(n) => assert!(!silent && back[..n] == d[..], "client {i}"),
                            Err(_) => assert!(silent, "client {i}: no echo"),
                        }
                    }
                    (45_000 + i as u16, count, bytes, !silent)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
    .unwrap();
    // One source, 25 ports one after the other against the limit of 20.
    let (answered, unanswered) = ctwasm_live::netns::in_netns(Some(&name), || {
        let (mut answered, mut unanswered) = (Vec::new(), Vec::new());
        for i in 0..25u16 {
            let s = std::net::UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 100), 46_000 + i)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            s.send_to(b"x", to_proxy).unwrap();
            match s.recv(&mut [0u8; 8]) {
                Ok(1) => answered.push(46_000 + i),
                _ => unanswered.push(46_000 + i),
            }
        }
        (answered, unanswered)
    })
    .unwrap();
    assert_eq!((answered.len(), unanswered.len()), (20, 5));

    let (log, events) = output.wait(proxy);
    let kernel = kernel_flushed(&lab, &stop.0, kernel);
    echo.join().unwrap();
    eprintln!("proxy log:\n{log}");

    let ours: BTreeMap<u16, UdpEnd> = events.lines().filter_map(proxy_udp_end).collect();
    assert_eq!(log.matches("refused udp 127.0.0.100:").count(), 5, "{log}");
    let held = answered.iter().map(|&port| (port, 1, 1, true));
    let mut compared = 0;
    for (port, count, bytes, replied) in carried.into_iter().chain(held) {
        let want = UdpEnd {
            orig: (count, 28 * count + bytes),
            reply: match replied {
                true => (count, 28 * count + bytes),
                false => (0, 0),
            },
            seen_reply: replied,
            assured: false,
        };
        assert_eq!(ours.get(&port), Some(&want), "proxy, port {port}");
        assert_eq!(kernel.get(&port), Some(&want), "kernel, port {port}");
        compared += 1;
    }
    for port in &unanswered {
        assert_eq!(ours.get(port), None, "port {port} was over the limit");
        let k = kernel
            .get(port)
            .expect("the kernel saw the refused datagram");
        assert_eq!((k.orig.0, k.reply.0), (1, 0), "port {port}");
    }
    assert_eq!(compared, 80);
    assert_eq!(ours.len(), 80);
}

/// `--config`: a UDP route from a routes file, in the zone the file gives, to an upstream where
/// nothing listens. Every datagram the client sent is counted on the client's leg (the kernel
/// counts them there, whatever happens beyond the proxy), none comes back, and the flow ends by
/// timing out: NEW, then DESTROY, unreplied.
#[test]
fn a_routes_file_carries_udp_to_an_upstream_that_refuses() {
    let dir = TempDir::new("proxy-config");
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let upstream = closed.local_addr().unwrap();
    drop(closed);
    let routes = dir.path().join("routes.toml");
    std::fs::write(
        &routes,
        format!(
            "# one route\n[[route]]\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n\
             protocol = \"udp\"\nzone = 7\n"
        ),
    )
    .unwrap();
    let mut child = Reaped::new(
        Command::new(BIN)
            .args(["proxy", "--config", routes.to_str().unwrap()])
            .args([
                "--format",
                "json",
                "--backend",
                "component",
                "--duration",
                "3",
            ])
            .args(["--sysctl", "net.netfilter.nf_conntrack_acct=1"])
            .args(["--sysctl", "net.netfilter.nf_conntrack_udp_timeout=1"])
            .args(["--udp-idle", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("proxy starts"),
    );
    let mut first = String::new();
    BufReader::new(child.get_mut().stderr.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The idle time is held to the tracker's UDP timeout.
    let addr = first
        .strip_prefix("ctwasm proxy: udp ")
        .and_then(|r| r.split(" -> ").next())
        .unwrap_or_else(|| panic!("no address line: {first}"));
    assert!(
        first.ends_with(&format!("-> {upstream} (zone 7, sessions idle 1.0 s)\n")),
        "{first}"
    );
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = client.local_addr().unwrap().port();
    for size in [10, 200, 3000] {
        client.send_to(&vec![7u8; size], addr).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let (events, log) = finish(child);
    let flow: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["orig"]["sport"] == port)
        .collect();
    let kinds: Vec<&str> = flow.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, ["NEW", "DESTROY"], "{log}");
    let end = flow[1];
    assert_eq!(end["zone"], 7);
    assert_eq!(end["counters"]["orig"]["packets"], 3);
    assert_eq!(end["counters"]["orig"]["bytes"], 3 * 28 + 3210);
    assert_eq!(end["counters"]["reply"]["packets"], 0);
    assert!(
        !end["status"]
            .as_array()
            .unwrap()
            .contains(&"SEEN_REPLY".into()),
        "{end}"
    );
}
