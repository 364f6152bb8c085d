//! Inputs for the tests of this crate and of its embedders; not part of the API (hidden from the
//! docs).

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `rounds` byte strings that every `restore` must refuse: random bytes, up to `max_len` of
/// them, every other string behind a growing prefix of the valid snapshot `valid` (past the
/// magic, into the parser proper). The same strings on every run.
#[doc(hidden)]
pub fn snapshot_noise(valid: &[u8], rounds: usize, max_len: usize) -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x9e37_79b9_7f4a_7c15);
    (0..rounds)
        .map(|round| {
            let len = rng.random_range(0..max_len);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if round % 2 == 1 {
                let keep = valid.len().min(8 + round);
                bytes.splice(0..0, valid[..keep].iter().copied());
            }
            bytes
        })
        .collect()
}

/// A source that hands out at most `step` bytes per read, as a pipe or a slow disk may: for
/// tests of readers that must not depend on how their input arrives.
#[doc(hidden)]
#[derive(Debug)]
pub struct Trickle<'a> {
    pub bytes: &'a [u8],
    pub step: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(out.len()).min(self.bytes.len());
        out[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

pub mod script;
