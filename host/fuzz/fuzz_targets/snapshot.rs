//! Snapshot restore on arbitrary bodies (the target adds the header and a valid checksum, so the
//! fuzzer reaches the field checks), then operations: whatever restores must keep working and
//! keep the promise (the table drains, every DESTROY delivered once).
#![no_main]

use ctwasm_core::Tracker;
use ctwasm_host::BackendKind;
use ctwasm_host::backend::NativeBackend;
use ctwasm_host::testing::script::{Driver, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    // The first bytes are the body's length; the rest after the body, a script to run.
    let Some((len, rest)) = input.split_first_chunk::<2>() else {
        return;
    };
    let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (body, script) = rest.split_at(len);
    let mut snapshot = b"CTWASM\x00".to_vec();
    snapshot.push(ctwasm_core::snapshot::FORMAT_VERSION);
    snapshot.extend_from_slice(body);
    let crc = crc32fast::hash(&snapshot);
    snapshot.extend_from_slice(&crc.to_le_bytes());
    let Ok(tracker) = Tracker::restore(&snapshot) else {
        return;
    };
    let driver = Driver::from_backend(
        BackendKind::Native,
        Box::new(NativeBackend::from_tracker(tracker)),
    )
    .expect("a restored tracker takes listeners")
    .without_transcript();
    if let Err(e) = driver.run(&decode(script)) {
        panic!("a restored snapshot broke the promise: {e:#}");
    }
});
