//! `--ipfix`: the records a collector receives, decoded by a real decoder (tshark's IPFIX
//! dissector) and compared field by field with the DESTROY events of the same run.
//!
//! The test is the collector: it binds a UDP socket on loopback, points `ctwasm replay` (and,
//! live, `ctwasm watch`) at it, writes what arrives into a pcap (raw IPv4/UDP around each
//! datagram, exactly as received), and has `tshark` decode that file. The DESTROY events come
//! from the same command's JSON output.

use std::io::Write as _;
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::require_program;

const BIN: &str = env!("CARGO_BIN_EXE_ctwasm");

/// One flow as the collector saw it, or as the DESTROY event says it should be.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Flow {
    src: String,
    dst: String,
    sport: u16,
    dport: u16,
    proto: u8,
    /// Octets and packets, original then reply direction.
    octets: (u64, u64),
    packets: (u64, u64),
    /// As tshark prints absolute times: `Nov 30, 2026 20:43:49.123000000 UTC`.
    start: String,
    end: String,
    id: u64,
    mark: u32,
}

/// Receives datagrams on `socket` until `quiet` passes without one (or `limit`).
fn collect(socket: &UdpSocket, quiet: Duration, limit: Duration) -> Vec<Vec<u8>> {
    socket.set_read_timeout(Some(quiet)).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while start.elapsed() < limit {
        match socket.recv(&mut buf) {
            Ok(n) => got.push(buf[..n].to_vec()),
            Err(_) => break,
        }
    }
    got
}

/// A pcap (raw IPv4) of UDP datagrams from 127.0.0.1:`sport` to 127.0.0.1:`dport`.
fn write_pcap(path: &Path, datagrams: &[Vec<u8>], sport: u16, dport: u16) {
    let mut f = std::fs::File::create(path).unwrap();
    // Magic, version 2.4, zone, sigfigs, snaplen, LINKTYPE_RAW.
    let mut head = Vec::new();
    head.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    head.extend_from_slice(&2u16.to_le_bytes());
    head.extend_from_slice(&4u16.to_le_bytes());
    head.extend_from_slice(&[0; 8]);
    head.extend_from_slice(&65_535u32.to_le_bytes());
    head.extend_from_slice(&101u32.to_le_bytes());
    f.write_all(&head).unwrap();
    for (i, d) in datagrams.iter().enumerate() {
        let total = 20 + 8 + d.len();
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&(total as u16).to_be_bytes());
        ip.extend_from_slice(&(i as u16).to_be_bytes());
        ip.extend_from_slice(&[0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
        let sum = ip
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum::<u32>();
        let folded = (sum & 0xffff) + (sum >> 16);
        let checksum = !(((folded & 0xffff) + (folded >> 16)) as u16);
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        ip.extend_from_slice(&sport.to_be_bytes());
        ip.extend_from_slice(&dport.to_be_bytes());
        ip.extend_from_slice(&((8 + d.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(d);
        let mut rec = Vec::new();
        rec.extend_from_slice(&(i as u32).to_le_bytes());
        rec.extend_from_slice(&0u32.to_le_bytes());
        rec.extend_from_slice(&(ip.len() as u32).to_le_bytes());
        rec.extend_from_slice(&(ip.len() as u32).to_le_bytes());
        f.write_all(&rec).unwrap();
        f.write_all(&ip).unwrap();
    }
}

const FIELDS: [&str; 13] = [
    "cflow.srcaddr",
    "cflow.srcaddrv6",
    "cflow.dstaddr",
    "cflow.dstaddrv6",
    "cflow.srcport",
    "cflow.dstport",
    "cflow.protocol",
    "cflow.octets",
    "cflow.packets",
    "cflow.abstimestart",
    "cflow.abstimeend",
    "cflow.flow_id",
    "cflow.appl_id.selector_id",
];

/// The flows tshark decodes from `pcap`, with every `cflow` field of every data record.
fn decode(pcap: &Path, port: u16) -> Vec<Flow> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(pcap)
        .args(["-d", &format!("udp.port=={port},cflow")])
        .args(["-Y", "cflow.flowset_id >= 256", "-T", "fields"])
        .args([
            "-E",
            "separator=|",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=;",
        ]);
    for f in FIELDS {
        cmd.args(["-e", f]);
    }
    // Templates arrive before the data they describe, so one pass decodes every record; a
    // record tshark cannot decode shows up as a missing flow below.
    let out = cmd.output().expect("tshark runs");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut flows = Vec::new();
    for line in text.lines() {
        let cols: Vec<Vec<&str>> = line
            .split('|')
            .map(|c| c.split(';').filter(|v| !v.is_empty()).collect())
            .collect();
        assert_eq!(cols.len(), FIELDS.len(), "{line}");
        // Per record: one of each field, except octets and packets (forward and reverse)
        // and the addresses (v4 or v6 columns).
        let records = cols[4].len();
        let (mut v4, mut v6) = (0, 0);
        for r in 0..records {
            let (src, dst) = if cols[0].len() > v4 && cols[1].len() <= v6 {
                v4 += 1;
                (cols[0][v4 - 1], cols[2][v4 - 1])
            } else if cols[1].len() > v6 && cols[0].len() <= v4 {
                v6 += 1;
                (cols[1][v6 - 1], cols[3][v6 - 1])
            } else {
                // Both families in one message: tshark lists each column in record order,
                // so the data set order decides; this test's flows are of one family.
                panic!("mixed families in one message: {line}");
            };
            let num = |c: usize, i: usize| -> u64 { cols[c][i].parse().expect(cols[c][i]) };
            flows.push(Flow {
                src: src.to_string(),
                dst: dst.to_string(),
                sport: num(4, r) as u16,
                dport: num(5, r) as u16,
                proto: num(6, r) as u8,
                octets: (num(7, 2 * r), num(7, 2 * r + 1)),
                packets: (num(8, 2 * r), num(8, 2 * r + 1)),
                start: cols[9][r].to_string(),
                end: cols[10][r].to_string(),
                id: num(11, r),
                mark: u32::from_str_radix(cols[12][r], 16).expect("selector hex"),
            });
        }
    }
    flows.sort();
    flows
}

/// `ms` since the epoch as tshark prints an absolute time.
fn tshark_time(ms: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = ms / 1000;
    let rem = secs % 86_400;
    let (year, month, day, _) = ctwasm_host::output::civil_date(secs);
    format!(
        "{} {:2}, {year} {:02}:{:02}:{:02}.{:03}000000 UTC",
        MONTHS[(month - 1) as usize],
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// The flows the DESTROY events (JSON lines) describe.
fn expected(json_lines: &str) -> Vec<Flow> {
    let mut flows = Vec::new();
    for line in json_lines.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect(line);
        if v["type"] != "DESTROY" {
            continue;
        }
        let port = |k: &str| v["orig"][k].as_u64().unwrap_or(0) as u16;
        let proto = match v["proto"].as_str().unwrap() {
            "tcp" => 6,
            "udp" => 17,
            "icmp" => 1,
            "icmpv6" => 58,
            other => other.parse().unwrap_or_else(|_| panic!("proto {other}")),
        };
        let c = |dir: &str, k: &str| v["counters"][dir][k].as_u64().unwrap();
        let ms = |k: &str| v["timestamp"][k].as_u64().unwrap() / 1_000_000;
        flows.push(Flow {
            src: v["orig"]["src"].as_str().unwrap().to_string(),
            dst: v["orig"]["dst"].as_str().unwrap().to_string(),
            sport: port("sport"),
            dport: port("dport"),
            proto,
            octets: (c("orig", "bytes"), c("reply", "bytes")),
            packets: (c("orig", "packets"), c("reply", "packets")),
            start: tshark_time(ms("start")),
            end: tshark_time(ms("stop")),
            id: v["id"].as_u64().unwrap(),
            mark: v["mark"].as_u64().unwrap() as u32,
        });
    }
    flows.sort();
    flows
}

#[test]
fn tshark_time_prints_as_tshark_does() {
    assert_eq!(
        tshark_time(1_796_071_478_343),
        "Nov 30, 2026 20:44:38.343000000 UTC"
    );
    assert_eq!(tshark_time(0), "Jan  1, 1970 00:00:00.000000000 UTC");
}

/// Every capture's DESTROYs, replayed with accounting and timestamps on, reach the collector
/// as records tshark decodes to the same addresses, ports, protocol, counts each way, start
/// and end (ms), id and mark.
#[test]
fn replayed_flows_reach_the_collector_as_records_tshark_decodes_to_the_destroys() {
    if !require_program("ipfix replay", "tshark") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ctwasm-ipfix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut total = 0;
    for capture in ["mixed-v4.pcap", "mixed-v6.pcap", "tcp-close-v4.pcap"] {
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = collector.local_addr().unwrap().port();
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/captures")
            .join(capture);
        let out = Command::new(BIN)
            .args(["replay", "-q", "--expire-at-end", "--format", "json"])
            .arg(&path)
            .args([
                "--sysctl",
                "net.netfilter.nf_conntrack_acct=1",
                "--sysctl",
                "net.netfilter.nf_conntrack_timestamp=1",
                "--ipfix",
                &format!("127.0.0.1:{port}"),
            ])
            .stderr(Stdio::inherit())
            .output()
            .expect("replay runs");
        assert!(out.status.success());
        let want = expected(&String::from_utf8(out.stdout).unwrap());
        assert!(!want.is_empty(), "{capture}: no DESTROY");
        let datagrams = collect(
            &collector,
            Duration::from_millis(500),
            Duration::from_secs(10),
        );
        let sender_port = 1;
        let pcap = dir.join(format!("{capture}.ipfix.pcap"));
        write_pcap(&pcap, &datagrams, sender_port, port);
        let got = decode(&pcap, port);
        assert_eq!(got, want, "{capture}");
        total += got.len();
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(total >= 6, "{total}");
}

/// Hostile `--ipfix` values are refused before anything runs, naming the option.
#[test]
fn bad_collectors_are_refused_with_the_option_named() {
    let capture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures/mixed-v4.pcap");
    for (value, why) in [
        ("sctp://127.0.0.1:1", "unknown transport"),
        ("127.0.0.1:0", "port 0"),
        ("tcp://", "no host"),
        ("127.0.0.1:70000", "invalid"),
    ] {
        let out = Command::new(BIN)
            .args(["replay", "-q"])
            .arg(&capture)
            .args(["--ipfix", value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value}: {stderr}");
        assert!(
            stderr.contains("--ipfix") && stderr.contains(why),
            "{value}: {stderr}"
        );
        assert!(out.stdout.is_empty());
    }
    let out = Command::new(BIN)
        .args(["replay", "-q"])
        .arg(&capture)
        .args(["--ipfix-domain", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ipfix"));
}

/// The live kernel's DESTROYs, read by `ctwasm watch --ipfix`, reach the collector as records
/// tshark decodes to the same fields (the mark set by nft included); a collector that is down
/// costs records, counted, and never the events `watch` prints.
#[cfg(target_os = "linux")]
#[test]
fn watched_kernel_flows_reach_the_collector_as_records_tshark_decodes_to_the_destroys() {
    use common::{Lab, RULESET, conntrack_listeners_here, require_live, serial};
    use std::io::Read as _;
    use std::net::{TcpListener, TcpStream};

    let _serial = serial();
    if !require_live("ipfix watch") || !require_program("ipfix watch", "tshark") {
        return;
    }
    let lab = Lab::loopback();
    lab.nft(0, &RULESET.replace("@INPUT@", ""));
    lab.nft(
        0,
        "table inet ctwasm_mark { chain out { type filter hook output priority 0; \
         udp dport 5302 ct mark set 7; }; }",
    );
    for s in [
        "nf_conntrack_acct=1",
        "nf_conntrack_timestamp=1",
        "nf_conntrack_events=1",
    ] {
        lab.exec(0, &["sysctl", "-qw", &format!("net.netfilter.{s}")]);
    }
    let traffic = || {
        lab.inside(0, || {
            let listener = TcpListener::bind("127.0.0.1:5301").unwrap();
            let mut client = TcpStream::connect("127.0.0.1:5301").unwrap();
            let (mut server, _) = listener.accept().unwrap();
            client.write_all(b"hello").unwrap();
            let mut buf = [0u8; 5];
            server.read_exact(&mut buf).unwrap();
            drop(client);
            let _ = server.read_to_end(&mut Vec::new());
            let udp = UdpSocket::bind("127.0.0.1:40301").unwrap();
            let peer = UdpSocket::bind("127.0.0.1:5302").unwrap();
            udp.send_to(b"marked", "127.0.0.1:5302").unwrap();
            let (n, from) = peer.recv_from(&mut [0u8; 16]).unwrap();
            peer.send_to(&b"reply!"[..n], from).unwrap();
            udp.send_to(b"x", "127.0.0.1:5303").unwrap();
        });
    };
    let watch = |collector: &str| {
        let child = Command::new(BIN)
            .args(["watch", "--netns", lab.name(0), "--format", "json"])
            .args(["-e", "DESTROY", "--duration", "3", "--ipfix", collector])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("watch starts");
        // It joined NEW (start times for an export) and DESTROY.
        let ready_by = Instant::now() + Duration::from_secs(3);
        while lab.inside(0, || conntrack_listeners_here(0b101)) == 0 {
            assert!(Instant::now() < ready_by, "watch never subscribed");
            std::thread::sleep(Duration::from_millis(20));
        }
        traffic();
        ctwasm_live::ctnetlink::Conntrack::open(Some(lab.name(0)))
            .unwrap()
            .flush()
            .unwrap();
        child.wait_with_output().expect("watch ends")
    };

    let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = collector.local_addr().unwrap().port();
    let out = watch(&format!("127.0.0.1:{port}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let want = expected(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(want.len(), 3, "{want:?}");
    assert!(want.iter().any(|f| f.mark == 7 && f.octets.1 > 0));
    let datagrams = collect(
        &collector,
        Duration::from_millis(500),
        Duration::from_secs(10),
    );
    let dir = std::env::temp_dir().join(format!("ctwasm-ipfix-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("watch.ipfix.pcap");
    write_pcap(&pcap, &datagrams, 1, port);
    let got = decode(&pcap, port);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(got, want);
    assert!(stderr.contains("ipfix to udp://127.0.0.1:"), "{stderr}");
    assert!(stderr.contains("3 records"), "{stderr}");

    // A TCP collector that is down: every event printed, the records counted as dropped.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = watch(&format!("tcp://{closed}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(expected(&String::from_utf8(out.stdout).unwrap()).len(), 3);
    assert!(
        stderr.contains("0 records in 0 messages, dropped 3"),
        "{stderr}"
    );
}
