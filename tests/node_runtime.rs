//! The component on a second runtime: Node.js, with the component transpiled to JavaScript and
//! core wasm by jco (`host/node/drive.mjs`). The component imports nothing, so any component
//! runtime must answer exactly as wasmtime does; these tests hold that true for every stored
//! capture, and carry a snapshot taken under Node over to wasmtime and to the native engine.
//!
//! Needs `node` and the driver's packages (`npm ci --prefix host/node`, which `.ci/run` does).
//! Without them the tests say so and pass, unless CTWASM_REQUIRE_LIVE=1 (as in CI), where they
//! fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use ctwasm_core::Delivery;
use ctwasm_host::backend::{Backend, BackendKind, TrackerSettings, open_backend, restore_backend};
use ctwasm_host::capture::read_capture;

/// The calls of a run, in the driver's script format (see `host/node/drive.mjs`), and what
/// wasmtime answered, in its output format.
#[derive(Default)]
struct Recorded {
    script: Vec<u8>,
    output: Vec<u8>,
    /// Where the script goes on after its first snapshot call.
    after_first_snapshot: Option<usize>,
}

impl Recorded {
    fn op(&mut self, op: u8, args: &[&[u8]]) {
        self.script.push(op);
        for a in args {
            self.script.extend_from_slice(a);
        }
    }
    fn answer(&mut self, op: u8, bytes: &[u8]) {
        self.output.push(op);
        self.output
            .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.output.extend_from_slice(bytes);
    }
}

/// Runs `backend` through one capture as a lossless-but-one-in-five-failing host would:
/// batches of 32, every event taken and reported, then time run on until nothing is due;
/// a snapshot half way and at the end. Records the calls and the answers.
fn record(backend: &mut dyn Backend, rec: &mut Recorded, capture: &Path) {
    let packets = read_capture(capture).unwrap().packets;
    let (mut taken, mut now) = (0usize, 0u64);
    rec.op(1, &[&0u64.to_le_bytes(), &0u32.to_le_bytes()]);
    rec.op(2, &[&[3]]);
    backend.set_listeners(true, true).unwrap();
    let mut pump = |backend: &mut dyn Backend, rec: &mut Recorded| {
        let mut events = Vec::new();
        let n = backend.take_events(u32::MAX, &mut events).unwrap();
        rec.op(5, &[&u32::MAX.to_le_bytes()]);
        rec.answer(5, &events);
        let results: Vec<Delivery> = (0..n)
            .map(|i| {
                if (taken + i) % 5 == 4 {
                    Delivery::Failed
                } else {
                    Delivery::Delivered
                }
            })
            .collect();
        taken += n;
        backend.report_delivery(&results).unwrap();
        let bytes: Vec<u8> = results
            .iter()
            .map(|r| (*r == Delivery::Failed) as u8)
            .collect();
        rec.op(6, &[&(n as u32).to_le_bytes(), &bytes]);
    };
    let batches: Vec<_> = packets.chunks(32).collect();
    for (i, batch) in batches.iter().enumerate() {
        let mut bytes = Vec::new();
        for p in *batch {
            ctwasm_core::batch::push_packet(&mut bytes, p.ts_ns.max(1), 0, &p.l3);
        }
        now = now.max(batch[0].ts_ns);
        let mut verdicts = Vec::new();
        backend.ingest(now, &bytes, &mut verdicts).unwrap();
        rec.op(
            3,
            &[
                &now.to_le_bytes(),
                &(bytes.len() as u32).to_le_bytes(),
                &bytes,
            ],
        );
        rec.answer(3, &verdicts);
        pump(backend, rec);
        if i == batches.len() / 2 {
            rec.op(7, &[]);
            rec.after_first_snapshot.get_or_insert(rec.script.len());
            rec.answer(7, &backend.snapshot().unwrap());
        }
    }
    let end = now + 3_600_000_000_000;
    while let Some(at) = backend.next_deadline().unwrap().filter(|&at| at <= end) {
        now = at.max(now + 1);
        backend.advance(now).unwrap();
        rec.op(4, &[&now.to_le_bytes()]);
        pump(backend, rec);
    }
    rec.op(7, &[]);
    rec.answer(7, &backend.snapshot().unwrap());
}

/// Runs the driver on `script`; `None` (after saying why) when Node or its packages are
/// missing and the run does not require them.
fn run_node(script: &[u8]) -> Option<Vec<u8>> {
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("host/node");
    let missing = if !driver
        .join("node_modules/@bytecodealliance/jco-transpile")
        .exists()
    {
        Some("the driver's packages (run `npm ci --prefix host/node`)")
    } else if Command::new("node").arg("--version").output().is_err() {
        Some("`node`")
    } else {
        None
    };
    if let Some(what) = missing {
        assert!(
            std::env::var("CTWASM_REQUIRE_LIVE").as_deref() != Ok("1"),
            "CTWASM_REQUIRE_LIVE=1 but {what} is missing"
        );
        // Past the harness's capture of `eprintln!`, so that the skip is seen.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: the Node.js runtime test needs {what} ***\n"
        );
        return None;
    }
    let dir = tempdir();
    let component = dir.join("ctwasm.wasm");
    std::fs::write(&component, ctwasm_host::artifacts::COMPONENT).unwrap();
    let (script_path, output) = (dir.join("script"), dir.join("output"));
    std::fs::write(&script_path, script).unwrap();
    let status = Command::new("node")
        .arg(driver.join("drive.mjs"))
        .args([&component, &script_path, &output])
        .status()
        .unwrap();
    assert!(status.success(), "the Node driver failed: {status}");
    let bytes = std::fs::read(&output).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    Some(bytes)
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ctwasm-node-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn captures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures");
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
        .collect();
    all.sort();
    all
}

/// Splits a driver output into its answers: (opcode, bytes).
fn answers(output: &[u8]) -> Vec<(u8, &[u8])> {
    let mut all = Vec::new();
    let mut at = 0;
    while at < output.len() {
        let len = u32::from_le_bytes(output[at + 1..at + 5].try_into().unwrap()) as usize;
        all.push((output[at], &output[at + 5..at + 5 + len]));
        at += 5 + len;
    }
    all
}

/// Every stored capture through the component under Node gives wasmtime's verdicts, event
/// frames and snapshots, byte for byte.
#[test]
fn node_answers_as_wasmtime_does_for_every_capture() {
    let mut rec = Recorded::default();
    let captures = captures();
    assert!(captures.len() >= 25, "{} captures", captures.len());
    for capture in &captures {
        let mut backend =
            open_backend(BackendKind::Component, &TrackerSettings::default(), None).unwrap();
        record(backend.as_mut(), &mut rec, capture);
    }
    let Some(node) = run_node(&rec.script) else {
        return;
    };
    let (ours, theirs) = (answers(&rec.output), answers(&node));
    assert_eq!(ours.len(), theirs.len(), "answers");
    let events: usize = ours
        .iter()
        .filter(|(op, _)| *op == 5)
        .map(|(_, b)| ctwasm_core::batch::events(b).count())
        .sum();
    assert!(events >= 100, "only {events} events");
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!(a == b, "answer {i} (opcode {}) differs", a.0);
    }
}

/// A snapshot taken under Node, half way through a capture, restored under wasmtime and in the
/// native engine: both continue exactly as Node itself does.
#[test]
fn a_snapshot_taken_under_node_continues_under_wasmtime_and_natively() {
    let capture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures/mixed-v4.pcap");
    let mut rec = Recorded::default();
    let mut backend =
        open_backend(BackendKind::Component, &TrackerSettings::default(), None).unwrap();
    record(backend.as_mut(), &mut rec, &capture);
    let Some(node) = run_node(&rec.script) else {
        return;
    };
    // The script's first snapshot is the one half way; everything after it is the second half.
    let node_answers = answers(&node);
    let half = node_answers.iter().position(|(op, _)| *op == 7).unwrap();
    let snapshot = node_answers[half].1;
    let script_half = rec.after_first_snapshot.expect("a snapshot half way");
    for kind in [BackendKind::Component, BackendKind::Native] {
        let mut restored = restore_backend(kind, snapshot).unwrap();
        let mut out = Recorded::default();
        replay_script(restored.as_mut(), &rec.script[script_half..], &mut out);
        let ours = answers(&out.output);
        assert_eq!(
            ours,
            node_answers[half + 1..],
            "{kind:?} after Node's snapshot"
        );
    }
}

/// Runs the calls of a script (the listeners are already set in a restored tracker).
fn replay_script(b: &mut dyn Backend, s: &[u8], out: &mut Recorded) {
    let mut at = 0;
    let u64_at = |at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(s[at..at + 4].try_into().unwrap());
    while at < s.len() {
        let op = s[at];
        at += 1;
        match op {
            3 => {
                let (now, len) = (u64_at(at), u32_at(at + 8) as usize);
                let mut verdicts = Vec::new();
                b.ingest(now, &s[at + 12..at + 12 + len], &mut verdicts)
                    .unwrap();
                out.answer(3, &verdicts);
                at += 12 + len;
            }
            4 => {
                b.advance(u64_at(at)).unwrap();
                at += 8;
            }
            5 => {
                let mut events = Vec::new();
                b.take_events(u32_at(at), &mut events).unwrap();
                out.answer(5, &events);
                at += 4;
            }
            6 => {
                let n = u32_at(at) as usize;
                let results: Vec<Delivery> = s[at + 4..at + 4 + n]
                    .iter()
                    .map(|&f| {
                        if f == 0 {
                            Delivery::Delivered
                        } else {
                            Delivery::Failed
                        }
                    })
                    .collect();
                b.report_delivery(&results).unwrap();
                at += 4 + n;
            }
            7 => out.answer(7, &b.snapshot().unwrap()),
            _ => unreachable!("opcode {op} in the second half"),
        }
    }
}
