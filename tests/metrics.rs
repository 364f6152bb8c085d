//! `--metrics`: scraping the endpoint of a running command and checking the text with
//! Prometheus' own linter (`promtool check metrics`), and the figures against what the command
//! reports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Reaped, require_program};

const BIN: &str = env!("CARGO_BIN_EXE_ctwasm");

/// One HTTP/1.1 request; returns the status, the Content-Type and the body.
fn http(addr: &str, method: &str, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("the endpoint accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("content-type:")
                .then(|| l["content-type:".len()..].trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// `promtool check metrics` on `text`: its verdict and what it said.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

/// The value of the sample `name` (with its labels, as printed) in `text`.
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Reads the command's stderr until it names its endpoint; returns `HOST:PORT`.
fn endpoint(child: &mut Child) -> String {
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let line = lines
            .next()
            .expect("the command says where its metrics are")
            .unwrap();
        if let Some(rest) = line.strip_prefix("ctwasm: metrics on http://") {
            // Keep draining stderr so the command never blocks on it.
            std::thread::spawn(move || for _ in lines {});
            return rest.trim_end_matches("/metrics").to_string();
        }
    }
    panic!("no metrics line on stderr");
}

#[test]
fn stress_serves_the_trackers_and_listeners_figures_promtool_accepts() {
    if !require_program("stress --metrics", "promtool") {
        return;
    }
    let child = Command::new(BIN)
        .args(["stress", "--backend", "native", "--flows", "3000"])
        .args(["--format", "json", "--metrics", "127.0.0.1:0"])
        .args(["--metrics-hold", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stress starts");
    let mut child = Reaped::new(child);
    let addr = endpoint(child.get_mut());
    // The summary comes before the hold: then the figures are final.
    let mut summary = String::new();
    BufReader::new(child.get_mut().stdout.take().unwrap())
        .read_line(&mut summary)
        .unwrap();
    let summary: serde_json::Value = serde_json::from_str(&summary).expect(&summary);

    let (status, content_type, text) = http(&addr, "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let (ok, said) = promtool(&text);
    assert!(ok, "promtool: {said}\n{text}");
    assert!(said.trim().is_empty(), "promtool: {said}");
    let created = summary["created"].as_u64().unwrap();
    assert_eq!(
        sample(&text, "ctwasm_conntrack_insert_total"),
        Some(created)
    );
    assert_eq!(sample(&text, "ctwasm_conntrack_entries"), Some(0));
    assert_eq!(
        sample(&text, "ctwasm_conntrack_dying_peak"),
        summary["dying_peak"].as_u64()
    );
    assert!(sample(&text, "ctwasm_listener_read_total{listener=\"conntrackd\"}").unwrap() > 0);

    // OpenMetrics when asked for it, as Prometheus asks.
    let (status, content_type, open) = http(
        &addr,
        "GET",
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/openmetrics-text"));
    assert!(open.ends_with("# EOF\n"));
    assert!(open.contains("# TYPE ctwasm_conntrack_insert counter\n"));

    // Other paths and methods.
    assert_eq!(http(&addr, "GET", "/", None).0, 404);
    assert_eq!(http(&addr, "GET", "/metrics/../x", None).0, 404);
    assert_eq!(http(&addr, "POST", "/metrics", None).0, 405);
    // A request that is not HTTP at all leaves the endpoint serving.
    let mut junk = TcpStream::connect(&addr).unwrap();
    junk.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
    drop(junk);
    assert_eq!(http(&addr, "GET", "/metrics", None).0, 200);
}

#[test]
fn bad_metrics_options_are_refused() {
    for (args, why) in [
        (&["--metrics", "localhost"][..], "--metrics"),
        (&["--metrics", "127.0.0.1:99999"], "--metrics"),
        (&["--metrics-hold", "5"], "--metrics"),
        (
            &["--metrics", "127.0.0.1:0", "--metrics-hold=-1"],
            "--metrics-hold",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["stress", "--backend", "native", "--flows", "10"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
    // A port already taken: a clear error, before the run.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["stress", "--backend", "native", "--flows", "10"])
        .args(["--metrics", &addr])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// `watch --metrics` against the live kernel: the event counts, the kernel's table figures
/// (entries and the maximum as the kernel has them), and promtool's approval.
#[cfg(target_os = "linux")]
#[test]
fn watch_serves_the_kernels_figures_promtool_accepts() {
    use common::{Lab, RULESET, conntrack_listeners_here, require_live, serial};
    use std::net::UdpSocket;

    let _serial = serial();
    if !require_live("watch --metrics") || !require_program("watch --metrics", "promtool") {
        return;
    }
    let lab = Lab::loopback();
    lab.nft(0, &RULESET.replace("@INPUT@", ""));
    lab.exec(
        0,
        &["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=60"],
    );
    let child = Command::new(BIN)
        .args(["watch", "--netns", lab.name(0), "-q", "--duration", "20"])
        .args(["--metrics", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("watch starts");
    let mut child = Reaped::new(child);
    let addr = endpoint(child.get_mut());
    let ready_by = Instant::now() + Duration::from_secs(5);
    while lab.inside(0, || conntrack_listeners_here(0b111)) == 0 {
        assert!(Instant::now() < ready_by, "watch never subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.inside(0, || {
        let udp = UdpSocket::bind("127.0.0.1:40401").unwrap();
        for port in 5401..5404 {
            udp.send_to(b"x", ("127.0.0.1", port)).unwrap();
        }
    });
    // The figures are refreshed at least once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (status, _, text) = http(&addr, "GET", "/metrics", None);
        assert_eq!(status, 200);
        if sample(&text, "ctwasm_watch_event_messages_total{type=\"new\"}") == Some(3)
            && sample(&text, "ctwasm_kernel_entries") == Some(3)
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the figures never showed:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (ok, said) = promtool(&text);
    assert!(ok, "promtool: {said}\n{text}");
    assert!(said.trim().is_empty(), "promtool: {said}");
    let max: u64 = lab
        .exec(0, &["sysctl", "-n", "net.netfilter.nf_conntrack_max"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(sample(&text, "ctwasm_kernel_max_entries"), Some(max));
    assert_eq!(sample(&text, "ctwasm_kernel_dying"), Some(0));
    assert_eq!(sample(&text, "ctwasm_watch_enobufs_total"), Some(0));
    assert!(
        sample(&text, "ctwasm_kernel_found_total").is_some(),
        "{text}"
    );
}

/// `proxy --metrics --ipfix`: the proxy's figures as it runs (promtool accepts them) and one
/// flow record per finished connection at the collector.
#[cfg(target_os = "linux")]
#[test]
fn the_proxy_serves_its_figures_and_exports_its_finished_connections() {
    use std::net::UdpSocket;
    if !require_program("proxy --metrics", "promtool") {
        return;
    }
    let upstream = common::echo_server(3).to_string();
    let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
    collector
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let child = Command::new(BIN)
        .args(["proxy", "--listen", "127.0.0.1:0", "--upstream", &upstream])
        .args(["--backend", "native", "--duration", "3"])
        .args([
            "--sysctl",
            "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1",
        ])
        .args(["--metrics", "127.0.0.1:0", "--metrics-hold", "30"])
        .args(["--ipfix", &collector.local_addr().unwrap().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("proxy starts");
    let mut child = Reaped::new(child);
    let mut lines = BufReader::new(child.get_mut().stderr.take().unwrap()).lines();
    let (mut proxy, mut metrics) = (None, None);
    while proxy.is_none() || metrics.is_none() {
        let line = lines.next().expect("the proxy's first lines").unwrap();
        if let Some(rest) = line.strip_prefix("ctwasm proxy: ") {
            proxy = rest.split(" -> ").next().map(str::to_string);
        } else if let Some(rest) = line.strip_prefix("ctwasm: metrics on http://") {
            metrics = Some(rest.trim_end_matches("/metrics").to_string());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let (proxy, metrics) = (proxy.unwrap(), metrics.unwrap());
    for _ in 0..3 {
        let mut c = TcpStream::connect(&proxy).unwrap();
        c.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let _ = c.read_to_end(&mut Vec::new());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (status, _, text) = http(&metrics, "GET", "/metrics", None);
        assert_eq!(status, 200);
        if sample(&text, "ctwasm_proxy_closed_total") == Some(3)
            && sample(&text, "ctwasm_conntrack_insert_total") == Some(3)
        {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (ok, said) = promtool(&text);
    assert!(ok && said.trim().is_empty(), "promtool: {said}\n{text}");
    assert_eq!(sample(&text, "ctwasm_proxy_accepted_total"), Some(3));
    assert_eq!(
        sample(&text, "ctwasm_proxy_bytes_to_upstream_total"),
        Some(15)
    );
    assert_eq!(
        sample(&text, "ctwasm_proxy_refused_total{limit=\"per_source\"}"),
        Some(0)
    );
    // The three DESTROYs (TIME_WAIT of 1 s) reach the collector as three records.
    let mut records = 0;
    let mut buf = [0u8; 2048];
    while records < 3 {
        let n = collector.recv(&mut buf).expect("an IPFIX message");
        assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), 10);
        records += ctwasm_host::ipfix::records_in(&buf[..n]);
    }
    assert_eq!(records, 3);
}
