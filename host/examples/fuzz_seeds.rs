//! Writes the fuzz targets' seed corpora into `DIR/<target>/`: the repository's captures whole
//! (capture) and packet by packet (wire), the kernel's own ctnetlink messages from the codec's
//! test data plus every event the engine writes for the captures (codec), snapshot bodies of
//! trackers that replayed the captures (snapshot), and scripts that reach every operation
//! (engine, differential).
//!
//! Usage: `cargo run -p ctwasm-host --example fuzz_seeds -- REPOSITORY DIR` (what
//! `host/fuzz/run` does before it fuzzes).

use std::path::Path;

use ctwasm_core::{Config, Delivery, Tracker};
use ctwasm_host::capture::CaptureReader;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, repo, dir] = &args[..] else {
        anyhow::bail!("usage: fuzz_seeds REPOSITORY DIR");
    };
    let (repo, dir) = (Path::new(repo), Path::new(dir));
    let mut written = 0;
    let mut put = |target: &str, name: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(name), bytes)?;
        written += 1;
        Ok(())
    };
    let mut captures: Vec<_> = std::fs::read_dir(repo.join("tests/captures"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("pcap" | "pcapng")
            )
        })
        .collect();
    captures.sort();
    for path in &captures {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        put("capture", &name, &std::fs::read(path)?)?;
        let mut tracker = Tracker::new(Config::default());
        tracker.set_listeners(true, true);
        let mut events = Vec::new();
        for (i, packet) in CaptureReader::open(path)?.enumerate() {
            let packet = packet?;
            put("wire", &format!("{name}-{i}"), &packet.l3)?;
            tracker.ingest(packet.ts_ns, 0, &packet.l3);
            let n = tracker.take_events(usize::MAX, &mut events);
            tracker.report_delivery(&vec![Delivery::Delivered; n]);
        }
        tracker.flush(u64::MAX / 2);
        let n = tracker.take_events(usize::MAX, &mut events);
        tracker.report_delivery(&vec![Delivery::Delivered; n]);
        for (i, frame) in ctwasm_core::batch::events(&events).enumerate() {
            put(
                "codec",
                &format!("{name}-{i}"),
                frame.map_err(|e| anyhow::anyhow!("{e:?}"))?.netlink,
            )?;
        }
        // A snapshot body with a live table, and a script to run on it.
        let mut live = Tracker::new(Config::default());
        live.set_listeners(true, true);
        for packet in CaptureReader::open(path)? {
            let packet = packet?;
            live.ingest(packet.ts_ns, 0, &packet.l3);
        }
        let snapshot = live.snapshot();
        let body = &snapshot[8..snapshot.len() - 4];
        if let Ok(len) = u16::try_from(body.len()) {
            let mut input = len.to_le_bytes().to_vec();
            input.extend_from_slice(body);
            input.extend_from_slice(SCRIPTS[0]);
            put("snapshot", &name, &input)?;
        }
    }
    // The kernel's messages, as the codec tests hold them (hex strings).
    let testdata = std::fs::read_to_string(repo.join("core-guest/src/netlink/tests/testdata.rs"))?;
    for (i, piece) in testdata.split("hex: \"").skip(1).enumerate() {
        let hex: String = piece
            .chars()
            .take_while(|c| *c != '"')
            .filter(|c| c.is_ascii_hexdigit())
            .collect();
        let bytes: Option<Vec<u8>> = (0..hex.len() / 2)
            .map(|k| u8::from_str_radix(&hex[2 * k..2 * k + 2], 16).ok())
            .collect();
        if let Some(bytes) = bytes {
            put("codec", &format!("kernel-{i}"), &bytes)?;
        }
    }
    for (i, script) in SCRIPTS.iter().enumerate() {
        put("engine", &format!("script-{i}"), script)?;
        put("differential", &format!("script-{i}"), script)?;
    }
    eprintln!("fuzz_seeds: {written} files under {}", dir.display());
    Ok(())
}

/// Scripts (see `ctwasm_host::testing::script::decode`) that reach every operation.
const SCRIPTS: [&[u8]; 3] = [
    // A TCP handshake with data, a take, a report that fails everything, a flush, a round trip,
    // a proxy connection, minutes of time, a damaged packet.
    &[
        0x00, 0, 0, 0, 0x80, 0, 0, 0, 0x00, 0, 2, 10, 0x08, 7, 0x09, 0xff, 0xff, 0x0a, 0x0f, 0x0b,
        1, 0x0c, 0, 3, 0x0d, 0, 0x86, 200, 0x05, 4, 20, 0x40,
    ],
    // UDP and ICMP flows filling the table (early drop), with the listener turning unreliable
    // and back, partial takes and drains.
    &[
        0x01, 1, 0, 5, 0x01, 4, 0, 5, 0x01, 7, 0, 5, 0x01, 10, 0, 5, 0x02, 2, 0, 0, 0x02, 5, 0, 0,
        0x02, 8, 0, 0, 0xae, 0x08, 2, 0x09, 1, 0, 0x0e, 0x08, 7, 0x09, 0x55, 0x55, 0xda, 0x07, 9,
    ],
    // Deletes, closes with a reset, an hour of time.
    &[
        0x0b, 0, 0x0b, 3, 0x8d, 0, 0x2a, 3, 0x0c, 1, 9, 0x87, 255, 0x08, 7, 0x09, 0, 0,
    ],
];
