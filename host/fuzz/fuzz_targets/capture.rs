//! The capture reader (pcap and pcapng, every link type) on arbitrary bytes: never a panic, and
//! the same packets and error whether the file comes whole or a few bytes at a time.
#![no_main]

use std::io::Read;

use ctwasm_host::capture::CaptureReader;
use libfuzzer_sys::fuzz_target;

/// A source that gives at most `step` bytes a read.
struct Trickle<'a> {
    bytes: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(out.len()).min(self.bytes.len());
        out[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

fuzz_target!(|bytes: &[u8]| {
    let whole: Vec<_> = CaptureReader::new(bytes).collect();
    let step = 1 + bytes.first().copied().unwrap_or(0) as usize % 17;
    let pieces: Vec<_> = CaptureReader::new(Trickle { bytes, step }).collect();
    assert_eq!(whole, pieces);
    assert!(whole.iter().filter(|r| r.is_err()).count() <= 1);
});
