//! The capture reader (pcap and pcapng, every link type) on arbitrary bytes: never a panic, and
//! the same packets and error whether the file comes whole or a few bytes at a time.
#![no_main]

use ctwasm_host::capture::CaptureReader;
use ctwasm_host::testing::Trickle;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let whole: Vec<_> = CaptureReader::new(bytes).collect();
    let step = 1 + bytes.first().copied().unwrap_or(0) as usize % 17;
    let pieces: Vec<_> = CaptureReader::new(Trickle { bytes, step }).collect();
    assert_eq!(whole, pieces);
    assert!(whole.iter().filter(|r| r.is_err()).count() <= 1);
});
