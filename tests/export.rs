//! `--export`: events to a real NATS JetStream server (`nats-server -js` from Debian, started
//! here on loopback with a store in a temporary directory, and stopped), read back from the
//! stream with a real client.
//!
//! The seed's promise carried to the stream: every DESTROY the engine confirmed is in the stream
//! exactly once after de-duplication, also when the server is killed (`kill -9`) mid-run and
//! comes back; and faults (no server, a wrong stream, a server that answers garbage) give clear
//! errors and lose nothing.

mod common;

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ctwasm_export::async_nats;
use futures_util::StreamExt;

/// A `nats-server` with JetStream on a loopback port of its own, killed when dropped.
struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl NatsServer {
    fn start(store: &Path) -> NatsServer {
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store: store.to_path_buf(),
        };
        server.restart();
        server
    }

    /// Starts (again) on the same port and store.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: no goodbye to the clients, nothing flushed.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ctwasm(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ctwasm"));
    command.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    command
}

/// Every message of `stream`: (subject, message id, headers' event kind, payload).
fn read_stream(url: &str, stream: &str) -> Vec<(String, String, String, Vec<u8>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(stream).await.unwrap();
        let total = stream.info().await.unwrap().state.messages as usize;
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let mut out = Vec::with_capacity(total);
        while out.len() < total {
            let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .expect("the stream's messages arrive")
                .unwrap()
                .unwrap();
            let headers = m.headers.clone().unwrap_or_default();
            let header = |name: &str| {
                headers
                    .get(name)
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default()
            };
            // The client names the standard header by a constant of its own.
            let msg_id = headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            out.push((
                m.subject.to_string(),
                msg_id,
                header("Ctwasm-Event"),
                m.payload.to_vec(),
            ));
        }
        out
    })
}

/// `ctwasm stress` of `flows` connections (native engine, JSON summary) exporting to `url`'s
/// stream `stream`, with an acknowledgement timeout of one second, started in the background.
fn stress_exporting(url: &str, stream: &str, flows: u64, more: &[&str]) -> Child {
    let flows = flows.to_string();
    let args = [
        "stress",
        "--flows",
        &flows,
        "--backend",
        "native",
        "--format",
        "json",
        "--export",
        url,
        "--stream",
        stream,
        "--export-ack-timeout",
        "1",
    ];
    ctwasm(&[&args[..], more].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a stress run: its JSON summary and its stderr; it must have succeeded.
fn stress_summary(stress: Child) -> (serde_json::Value, String) {
    let out = stress.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{summary}\n{stderr}");
    (summary, stderr)
}

/// Every connection's DESTROY is in the stream's messages exactly once.
fn assert_each_destroy_once(messages: &[(String, String, String, Vec<u8>)], flows: u64) {
    let mut destroys: HashMap<&str, u32> = HashMap::new();
    for (_, id, kind, _) in messages {
        if kind == "destroy" {
            *destroys.entry(id).or_default() += 1;
        }
    }
    let sample: Vec<_> = messages
        .iter()
        .take(3)
        .map(|m| (&m.0, &m.1, &m.2))
        .collect();
    assert_eq!(
        destroys.len() as u64,
        flows,
        "one DESTROY per connection: {sample:?}"
    );
    assert!(destroys.values().all(|n| *n == 1), "no DESTROY twice");
}

/// The seed's stress through the export, with the server killed for three seconds mid-run:
/// 100 000 connections and a flush; every DESTROY is in the stream exactly once, the engine's
/// dying list drains, and the stream's de-duplication is what keeps the resent ones single.
#[test]
fn every_destroy_reaches_the_stream_once_across_a_killed_server() {
    if !common::require_program(
        "every_destroy_reaches_the_stream_once_across_a_killed_server",
        "nats-server",
    ) {
        return;
    }
    let dir = common::TempDir::new("export-kill");
    let mut server = NatsServer::start(dir.path());
    let url = server.url();
    let flows = 100_000u64;
    let stress = stress_exporting(
        &url,
        "KILLED",
        flows,
        &["--subject", "ct", "--export-host", "fw1"],
    );
    std::thread::sleep(Duration::from_millis(2000));
    server.kill();
    std::thread::sleep(Duration::from_secs(3));
    server.restart();
    let (summary, stderr) = stress_summary(stress);
    assert_eq!(summary["created"], flows, "{summary}");
    assert_eq!(summary["destroy_delivered"], flows, "{summary}");
    assert_eq!(summary["destroy_lost"], 0, "{summary}");
    assert_eq!(summary["dying_final"], 0, "{summary}");
    assert!(
        stderr.contains("failed ") && !stderr.contains("failed 0 "),
        "the outage failed deliveries: {stderr}"
    );

    let messages = read_stream(&url, "KILLED");
    for (subject, id, kind, payload) in &messages {
        assert!(subject.starts_with("ct.fw1.0."), "{subject}");
        assert!(subject.ends_with(kind.as_str()), "{subject} {kind}");
        // The payload is the event frame: its length first, then the ctnetlink message.
        let len = u32::from_le_bytes(payload[..4].try_into().unwrap()) as usize;
        assert_eq!(len, payload.len(), "{id}");
    }
    assert_each_destroy_once(&messages, flows);
}

/// A cluster that is down at start and comes up later: every NEW and every DESTROY fails first,
/// so the DESTROYs wait on the dying list (its peak is every connection), and once the server
/// answers, the engine's retries put each DESTROY in the stream exactly once.
#[test]
fn destroys_wait_on_the_dying_list_until_a_late_server_takes_them() {
    if !common::require_program(
        "destroys_wait_on_the_dying_list_until_a_late_server_takes_them",
        "nats-server",
    ) {
        return;
    }
    let dir = common::TempDir::new("export-late");
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let flows = 5_000u64;
    let retry_sooner = "net.netfilter.nf_conntrack_events_retry_timeout=2";
    let stress = stress_exporting(&url, "LATE", flows, &["--sysctl", retry_sooner]);
    // The flows, the quiet second and the flush all happen with nobody to take them.
    std::thread::sleep(Duration::from_secs(5));
    let mut server = NatsServer {
        child: None,
        port,
        store: dir.path().to_path_buf(),
    };
    server.restart();
    let (summary, stderr) = stress_summary(stress);
    assert!(stderr.contains("no server of"), "{stderr}");
    assert_eq!(summary["destroy_delivered"], flows, "{summary}");
    assert_eq!(
        summary["dying_peak"], flows,
        "every DESTROY waited: {summary}"
    );
    assert_eq!(summary["dying_final"], 0, "{summary}");
    assert_each_destroy_once(&read_stream(&url, "LATE"), flows);
}

/// Faults at the edges: no server at all, a server that answers garbage, a stream that exists
/// with subjects that do not take ours, and hostile option values. Each gives a clear message;
/// a run against an absent server keeps its DESTROYs on the dying list, lost to nobody.
#[test]
fn faults_give_clear_errors_and_lose_nothing() {
    // Nothing listens: the run goes on, every delivery fails, the DESTROYs stay dying.
    let closed = free_port();
    let out = ctwasm(&[
        "stress",
        "--flows",
        "200",
        "--backend",
        "native",
        "--format",
        "json",
        "--horizon",
        "3",
        "--export",
        &format!("nats://127.0.0.1:{closed}"),
        "--export-ack-timeout",
        "0.5",
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("no server of"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["destroy_delivered"], 0, "{summary}");
    assert_eq!(summary["dying_final"], 200, "kept, not lost: {summary}");

    // A server that answers garbage: the same, and no hang.
    let garbage = TcpListener::bind("127.0.0.1:0").unwrap();
    let garbage_port = garbage.local_addr().unwrap().port();
    let talker = std::thread::spawn(move || {
        garbage.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok((mut s, _)) = garbage.accept() {
                use std::io::Write;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n\x00\xff garbage\r\n");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let started = Instant::now();
    let out = ctwasm(&[
        "stress",
        "--flows",
        "50",
        "--backend",
        "native",
        "--format",
        "json",
        "--horizon",
        "2",
        "--export",
        &format!("127.0.0.1:{garbage_port}"),
        "--export-ack-timeout",
        "0.5",
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "no hang");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["destroy_delivered"], 0, "{summary}");
    assert_eq!(summary["dying_final"], 50, "{summary}");
    talker.join().unwrap();

    // Hostile values, refused before anything starts.
    for (args, expect) in [
        (
            &["--export", "http://127.0.0.1:4222"][..],
            "expected nats://",
        ),
        (
            &["--export", "nats://127.0.0.1:99999"][..],
            "not a server address",
        ),
        (&["--export", "nats://127.0.0.1:4222,"][..], "empty server"),
        (
            &["--export", "127.0.0.1:4222", "--stream", "a.b"][..],
            "stream name",
        ),
        (
            &["--export", "127.0.0.1:4222", "--subject", "ct.>"][..],
            "subject prefix",
        ),
        (
            &["--export", "127.0.0.1:4222", "--export-host", "a b"][..],
            "host name",
        ),
        (
            &["--export", "127.0.0.1:4222", "--export-format", "xml"][..],
            "--export-format",
        ),
        (
            &["--export", "127.0.0.1:4222", "--export-ack-timeout", "0"][..],
            "ack-timeout",
        ),
        (
            &["--export", "127.0.0.1:4222", "--export-replicas", "9"][..],
            "replicas",
        ),
        (&["--stream", "S"][..], "--export"),
    ] {
        let out = ctwasm(&[&["stress", "--flows", "1"][..], args].concat())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(1 | 2)),
            "{args:?}: {:?} {stderr}",
            out.status
        );
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }

    if !common::require_program("faults_give_clear_errors_and_lose_nothing", "nats-server") {
        return;
    }
    // A stream of that name that takes other subjects: refused at start, named.
    let dir = common::TempDir::new("export-wrong");
    let server = NatsServer::start(dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "OTHER".into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let out = ctwasm(&[
        "stress",
        "--flows",
        "10",
        "--backend",
        "native",
        "--export",
        &server.url(),
        "--stream",
        "OTHER",
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("OTHER exists but takes subjects"),
        "{stderr}"
    );
}

/// `replay --export`: the stream holds the capture's events in order, and with
/// `--export-format json` each payload is the line `replay --format json` prints; stdout prints
/// each event once, as the stream took it.
#[test]
fn a_replayed_capture_lands_in_the_stream_as_its_json_lines() {
    if !common::require_program(
        "a_replayed_capture_lands_in_the_stream_as_its_json_lines",
        "nats-server",
    ) {
        return;
    }
    let dir = common::TempDir::new("export-replay");
    let server = NatsServer::start(dir.path());
    let capture = "tests/captures/mixed-v4.pcap";
    let expected = ctwasm(&["replay", capture, "--format", "json"])
        .output()
        .unwrap();
    assert!(expected.status.success());
    let expected = String::from_utf8(expected.stdout).unwrap();
    let out = ctwasm(&[
        "replay",
        capture,
        "--format",
        "json",
        "--export",
        &server.url(),
        "--stream",
        "REPLAY",
        "--subject",
        "lab.ct",
        "--export-host",
        "tester",
        "--export-format",
        "json",
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "stdout");
    let messages = read_stream(&server.url(), "REPLAY");
    let lines: Vec<&str> = expected.lines().collect();
    assert!(lines.len() > 10, "{expected}");
    assert_eq!(messages.len(), lines.len(), "{stderr}");
    for ((subject, id, kind, payload), line) in messages.iter().zip(&lines) {
        assert_eq!(std::str::from_utf8(payload).unwrap(), *line, "{id}");
        assert!(subject.starts_with("lab.ct.tester.0."), "{subject}");
        assert!(id.starts_with("tester.0."), "{id}");
        let json: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            json["type"].as_str().unwrap().to_lowercase(),
            *kind,
            "{line}"
        );
    }
}
