//! The CLI end to end on real captures: `ctwasm replay` must print, flow by flow, the very lines
//! `conntrack -E -o extended,id,ktimestamp` printed on the live kernel while the capture was
//! taken (`tests/captures/*.events`, Linux 6.18), ids aside; and the native engine and the
//! component must print byte-identical JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The per-namespace sysctls `tests/captures/make-captures.sh` set before each capture.
const CAPTURE_SYSCTLS: [&str; 9] = [
    "net.netfilter.nf_conntrack_events=1",
    "net.netfilter.nf_conntrack_acct=1",
    "net.netfilter.nf_conntrack_timestamp=1",
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait=3",
    "net.netfilter.nf_conntrack_tcp_timeout_close=3",
    "net.netfilter.nf_conntrack_udp_timeout=3",
    "net.netfilter.nf_conntrack_udp_timeout_stream=4",
    "net.netfilter.nf_conntrack_icmp_timeout=3",
    "net.netfilter.nf_conntrack_icmpv6_timeout=3",
];

fn captures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures")
}

/// Every capture that has a kernel event log beside it.
fn captures_with_events() -> Vec<(PathBuf, PathBuf)> {
    let mut v: Vec<_> = std::fs::read_dir(captures_dir())
        .expect("tests/captures exists")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let ext = path.extension()?.to_str()?;
            if ext != "pcap" && ext != "pcapng" {
                return None;
            }
            let events = path.with_extension("events");
            events.exists().then_some((path, events))
        })
        .collect();
    v.sort();
    assert!(
        v.len() >= 20,
        "expected the capture fixtures, found {}",
        v.len()
    );
    v
}

fn ctwasm(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ctwasm"))
        .args(args)
        .output()
        .expect("ctwasm runs");
    assert!(
        out.status.success(),
        "ctwasm {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn replay(capture: &Path, extra: &[&str]) -> String {
    let mut args = vec!["replay", "-q", capture.to_str().unwrap(), "--expire-at-end"];
    for s in CAPTURE_SYSCTLS {
        args.push("--sysctl");
        args.push(s);
    }
    args.extend_from_slice(extra);
    ctwasm(&args)
}

/// Drops what may differ from the kernel by design: the `[time]\t` prefix `-o timestamp` adds
/// (receive time in the kernel's log) and the id (a per-boot hash there, seeded here). The
/// timeout (the word after the protocol number) is cut out and returned apart: the kernel reads
/// it a few microseconds after setting it, and when a jiffy ticks in between it prints one second
/// less (seen in udp-reqresp-v6), so it is compared with a tolerance of one.
fn normalize(line: &str) -> (String, Option<u32>) {
    let line = line.split_once('\t').map(|(_, rest)| rest).unwrap_or(line);
    let mut timeout = None;
    let mut words: Vec<&str> = Vec::new();
    // `[TYPE] l3name l3num l4name l4num [timeout] ...`: the timeout is the 6th field.
    for (i, w) in line.split(' ').filter(|w| !w.is_empty()).enumerate() {
        if i == 5
            && let Ok(t) = w.parse::<u32>()
        {
            timeout = Some(t);
            continue;
        }
        if !w.starts_with("id=") {
            words.push(w);
        }
    }
    (words.join(" "), timeout)
}

fn timeouts_match(ours: &[(String, Option<u32>)], kernel: &[(String, Option<u32>)]) -> bool {
    ours.len() == kernel.len()
        && ours
            .iter()
            .zip(kernel)
            .all(|((_, a), (_, b))| match (a, b) {
                (Some(a), Some(b)) => a.abs_diff(*b) <= 1,
                (a, b) => a == b,
            })
}

/// Lines grouped by flow (the original tuple), each flow's lines in order. The kernel prints
/// concurrent flows' DESTROYs in hash order, so only the order within a flow is meaningful.
fn by_flow(text: &str) -> BTreeMap<String, Vec<(String, Option<u32>)>> {
    let mut flows: BTreeMap<String, Vec<(String, Option<u32>)>> = BTreeMap::new();
    let mut generation: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (line, timeout) = normalize(line);
        let words: Vec<&str> = line.split_whitespace().collect();
        let start = words
            .iter()
            .position(|w| w.starts_with("src="))
            .expect("a tuple");
        let key: String = words[start..]
            .iter()
            .take_while(|w| !w.starts_with('[') && !w.starts_with("packets="))
            .take(4)
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        // A reopened tuple is a new flow: number the generations.
        let g = *generation.entry(key.clone()).or_default();
        let flow_key = format!("{key} #{g}");
        let is_destroy = line.trim_start().starts_with("[DESTROY]");
        flows.entry(flow_key).or_default().push((line, timeout));
        if is_destroy {
            *generation.get_mut(&key).unwrap() += 1;
        }
    }
    flows
}

#[test]
fn replay_prints_what_the_kernel_printed_for_every_capture() {
    let mut compared = 0;
    for (capture, events) in captures_with_events() {
        let kernel = std::fs::read_to_string(&events).unwrap();
        let ours = replay(
            &capture,
            &["-o", "extended,id,ktimestamp", "--backend", "native"],
        );
        let (ours_flows, kernel_flows) = (by_flow(&ours), by_flow(&kernel));
        let text =
            |f: &BTreeMap<String, Vec<(String, Option<u32>)>>| -> Vec<(String, Vec<String>)> {
                f.iter()
                    .map(|(k, v)| (k.clone(), v.iter().map(|(l, _)| l.clone()).collect()))
                    .collect()
            };
        let timeouts_ok = ours_flows.len() == kernel_flows.len()
            && ours_flows
                .values()
                .zip(kernel_flows.values())
                .all(|(a, b)| timeouts_match(a, b));
        assert!(
            timeouts_ok,
            "{}: timeouts differ\n{ours}\n{kernel}",
            capture.display()
        );
        assert_eq!(
            text(&ours_flows),
            text(&kernel_flows),
            "{}: replay differs from the kernel's conntrack -E\n--- ours\n{ours}\n--- kernel\n{kernel}",
            capture.display()
        );
        compared += 1;
    }
    assert!(compared >= 20);
}

#[test]
fn native_and_component_print_identical_json_for_every_capture() {
    for (capture, _) in captures_with_events() {
        for batch in ["1", "32"] {
            let native = replay(
                &capture,
                &["--format", "json", "--backend", "native", "--batch", batch],
            );
            let component = replay(
                &capture,
                &[
                    "--format",
                    "json",
                    "--backend",
                    "component",
                    "--batch",
                    batch,
                ],
            );
            assert!(!native.is_empty(), "{}: no events", capture.display());
            assert_eq!(native, component, "{} (batch {batch})", capture.display());
            for line in native.lines() {
                let v: serde_json::Value =
                    serde_json::from_str(line).expect("one JSON object a line");
                for key in [
                    "ts_ns",
                    "type",
                    "events",
                    "id",
                    "zone",
                    "l3",
                    "proto",
                    "orig",
                    "reply",
                    "status",
                    "tcp_state",
                    "timeout",
                    "mark",
                    "counters",
                    "timestamp",
                ] {
                    assert!(v.get(key).is_some(), "{line} lacks {key}");
                }
            }
        }
    }
}

#[test]
fn batch_size_does_not_change_the_output() {
    let capture = captures_dir().join("mixed-v4.pcap");
    let one = replay(
        &capture,
        &["--format", "json", "--backend", "native", "--batch", "1"],
    );
    let many = replay(
        &capture,
        &["--format", "json", "--backend", "native", "--batch", "256"],
    );
    assert_eq!(one, many);
}

#[test]
fn pcapng_and_linux_cooked_captures_replay_like_their_pcap_twins() {
    let dir = captures_dir();
    let pcap = replay(
        &dir.join("tcp-close-v4.pcap"),
        &["--format", "json", "--backend", "native"],
    );
    let pcapng = replay(
        &dir.join("tcp-close-v4.pcapng"),
        &["--format", "json", "--backend", "native"],
    );
    assert_eq!(pcap, pcapng);
    let sll2 = replay(
        &dir.join("udp-reqresp-any-v4.pcap"),
        &["--backend", "native"],
    );
    assert_eq!(sll2.lines().count(), 3, "NEW, UPDATE, DESTROY:\n{sll2}");
}

#[test]
fn a_truncated_capture_replays_what_is_whole_and_says_where_it_was_cut() {
    let src = std::fs::read(captures_dir().join("tcp-close-v4.pcap")).unwrap();
    // Where the last record starts: the reader's offset after the last packet but one.
    let mut reader = ctwasm_host::capture::CaptureReader::new(&src[..]);
    let mut ends = Vec::new();
    while let Some(p) = reader.next() {
        p.unwrap();
        ends.push(reader.offset() as usize);
    }
    let last_start = ends[ends.len() - 2];
    let dir = std::env::temp_dir().join(format!("ctwasm-trunc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cut = dir.join("cut.pcap");
    std::fs::write(&cut, &src[..src.len() - 7]).unwrap();
    let whole = dir.join("whole.pcap");
    std::fs::write(&whole, &src[..last_start]).unwrap();
    let run = |path: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_ctwasm"))
            .args(["replay", path.to_str().unwrap(), "--backend", "native"])
            .output()
            .unwrap()
    };
    let (out, reference) = (run(&cut), run(&whole));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success(), "a cut file is reported as a failure");
    assert!(reference.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cut.pcap")
            && err.contains(&format!("byte offset {last_start}"))
            && err.contains("cut short")
            && err.contains(&format!("the {} whole packets", ends.len() - 1)),
        "{err}"
    );
    assert!(!out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&reference.stdout),
        "the events of every whole packet, as for the file without its cut record"
    );
}

#[test]
fn listeners_that_lose_events_show_it_in_the_summary() {
    let capture = captures_dir().join("mixed-v4.pcap");
    let out = Command::new(env!("CARGO_BIN_EXE_ctwasm"))
        .args([
            "replay",
            capture.to_str().unwrap(),
            "--backend",
            "native",
            "--listener",
            "rcvbuf=100,drain=0/s",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("enobufs 1"), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "a reader that never reads prints nothing"
    );
}

/// Filters and `-e` select from the events `replay` prints exactly what they select from the
/// unfiltered output; `-o xml` wraps the same events in one document.
#[test]
fn filters_event_masks_and_xml_select_and_wrap_the_replayed_events() {
    let capture = captures_dir().join("mixed-v4.pcap");
    let all = replay(&capture, &["--backend", "native"]);
    let udp_destroys: Vec<&str> = all
        .lines()
        .filter(|l| l.starts_with("[DESTROY] udp "))
        .collect();
    assert!(!udp_destroys.is_empty(), "{all}");
    let selected = replay(
        &capture,
        &["--backend", "native", "-p", "udp", "-e", "DESTROY"],
    );
    assert_eq!(selected.lines().collect::<Vec<_>>(), udp_destroys);
    let to_port = |port: &str| {
        replay(
            &capture,
            &["--backend", "native", "-p", "tcp", "--dport", port],
        )
    };
    // The original direction's port is the first `dport=` of a line.
    let orig_dport = |l: &str| {
        l.split("dport=")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .map(str::to_string)
    };
    let first_tcp = all
        .lines()
        .find(|l| l.contains(" tcp "))
        .expect("a tcp event");
    let port = orig_dport(first_tcp).expect("a port");
    let expected: Vec<&str> = all
        .lines()
        .filter(|l| l.contains(" tcp ") && orig_dport(l).as_deref() == Some(port.as_str()))
        .collect();
    assert_eq!(to_port(&port).lines().collect::<Vec<_>>(), expected);
    assert_eq!(to_port("1"), "");

    let xml = replay(&capture, &["--backend", "native", "-o", "xml"]);
    let lines: Vec<&str> = xml.lines().collect();
    assert_eq!(lines.len(), all.lines().count() + 3, "{xml}");
    assert_eq!(lines[0], "<?xml version=\"1.0\" encoding=\"utf-8\"?>");
    assert_eq!(lines[1], "<conntrack>");
    assert_eq!(*lines.last().unwrap(), "</conntrack>");
    for (flow, text) in lines[2..lines.len() - 1].iter().zip(all.lines()) {
        let kind = text
            .split(']')
            .next()
            .unwrap()
            .trim_start_matches([' ', '[']);
        let opening = format!("<flow type=\"{}\">", kind.to_lowercase());
        assert!(
            flow.starts_with(&opening) && flow.ends_with("</flow>"),
            "{flow}"
        );
    }
}
