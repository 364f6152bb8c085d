//! Snapshot and restore: a tracker's whole state as bytes, so a run can move to a fresh
//! component instance (after a trap, an upgrade, a migration) and go on exactly where it was.
//!
//! Everything that decides future output is kept: entries with their protocol state, event
//! cache and missed bits; the dying list in order; the timer wheel slot by slot (the order of
//! timers within a tick is the order they fire in); the outbox, including messages handed to the
//! host and not yet reported; the random generators' positions; the statistics. The hash index
//! and the id map are rebuilt from the entries.
//!
//! The layout: the magic `CTWASM\0`, one byte of format version, the little-endian body, and a
//! CRC-32 of everything before it. A restore refuses another version and any byte that changed
//! (the CRC catches every single- and double-bit flip and every burst up to 32 bits) before it
//! reads a field, then checks every index it reads, so hostile bytes give an error, never a
//! panic, a half-loaded tracker or one that breaks later.

use core::fmt;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Why bytes could not be restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// Not a ctwasm tracker snapshot at all.
    BadHeader,
    /// A snapshot of a format version this build does not read (`found`; it reads
    /// [`FORMAT_VERSION`]).
    UnsupportedVersion { found: u8 },
    /// The bytes were changed after they were written: the checksum does not match.
    Corrupt,
    /// The bytes end early.
    Truncated,
    /// A value is out of range or inconsistent with the rest (named by the field).
    Invalid(&'static str),
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::BadHeader => write!(f, "not a ctwasm tracker snapshot"),
            SnapshotError::UnsupportedVersion { found } => write!(
                f,
                "a snapshot of format version {found}; this build reads version {FORMAT_VERSION}"
            ),
            SnapshotError::Corrupt => write!(f, "the snapshot is corrupt (checksum mismatch)"),
            SnapshotError::Truncated => write!(f, "the snapshot ends early"),
            SnapshotError::Invalid(what) => write!(f, "the snapshot's {what} is invalid"),
        }
    }
}

impl std::error::Error for SnapshotError {}

/// What every snapshot starts with, before its version byte.
pub(crate) const MAGIC: &[u8; 7] = b"CTWASM\x00";

/// The format version this build writes and reads. Version 2 added the checksum; version 3
/// the reassembly's sysctls and its incomplete datagrams; version 4 the SCTP timeouts and
/// entries; version 5 `nf_conntrack_checksum`.
pub const FORMAT_VERSION: u8 = 5;

/// Bytes of the trailing checksum.
const CHECKSUM_LEN: usize = 4;

/// Starts a snapshot: the magic and the version.
pub(crate) fn begin(w: &mut Writer) {
    w.buf.extend_from_slice(MAGIC);
    w.u8(FORMAT_VERSION);
}

/// Writes the checksum of `bytes` (a whole snapshot) again over its last four bytes: for tests
/// that forge snapshots whose fields, not their checksum, must be refused. Not part of the API.
#[doc(hidden)]
pub fn resign(bytes: &mut [u8]) {
    let n = bytes.len() - CHECKSUM_LEN;
    let crc = crc32fast::hash(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_le_bytes());
}

/// Ends a snapshot: the checksum of everything before it.
pub(crate) fn finish(mut w: Writer) -> Vec<u8> {
    let crc = crc32fast::hash(&w.buf);
    w.u32(crc);
    w.buf
}

/// Checks the magic, the version and the checksum, and returns the body between them.
pub(crate) fn body(bytes: &[u8]) -> Result<&[u8], SnapshotError> {
    let head = MAGIC.len() + 1;
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::BadHeader);
    }
    match bytes.get(MAGIC.len()) {
        None => return Err(SnapshotError::Truncated),
        Some(&FORMAT_VERSION) => {}
        Some(&found) => return Err(SnapshotError::UnsupportedVersion { found }),
    }
    if bytes.len() < head + CHECKSUM_LEN {
        return Err(SnapshotError::Truncated);
    }
    let (signed, crc) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    let crc = u32::from_le_bytes(crc.try_into().expect("four bytes"));
    if crc32fast::hash(signed) != crc {
        return Err(SnapshotError::Corrupt);
    }
    Ok(&signed[head..])
}

/// Appends fixed-width little-endian values.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn bool(&mut self, v: bool) {
        self.buf.push(v as u8);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u128(&mut self, v: u128) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn opt_u64(&mut self, v: Option<u64>) {
        self.bool(v.is_some());
        self.u64(v.unwrap_or(0));
    }
    pub(crate) fn rng(&mut self, rng: &ChaCha8Rng) {
        self.buf.extend_from_slice(&rng.get_seed());
        self.u64(rng.get_stream());
        self.u128(rng.get_word_pos());
    }
}

/// Reads what [`Writer`] wrote; every read is checked.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.buf.len() < n {
            return Err(SnapshotError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn bool(&mut self) -> Result<bool, SnapshotError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(SnapshotError::Invalid("flag")),
        }
    }
    pub(crate) fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    pub(crate) fn u128(&mut self) -> Result<u128, SnapshotError> {
        Ok(u128::from_le_bytes(
            self.take(16)?.try_into().expect("16 bytes"),
        ))
    }
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], SnapshotError> {
        let n = self.len()?;
        self.take(n)
    }
    /// A position or count stored as a u64, which must fit this platform's `usize`. A plain
    /// `as usize` would drop the high half on wasm32 and accept there what the native engine
    /// refuses (the outbox's byte ranges are checked after this).
    pub(crate) fn usize(&mut self, what: &'static str) -> Result<usize, SnapshotError> {
        usize::try_from(self.u64()?).map_err(|_| SnapshotError::Invalid(what))
    }
    /// A length, bounded by the bytes left (a length cannot promise more items than bytes).
    pub(crate) fn len(&mut self) -> Result<usize, SnapshotError> {
        let n = self.u64()?;
        if n > self.buf.len() as u64 {
            return Err(SnapshotError::Truncated);
        }
        Ok(n as usize)
    }
    pub(crate) fn opt_u64(&mut self) -> Result<Option<u64>, SnapshotError> {
        let some = self.bool()?;
        let v = self.u64()?;
        Ok(some.then_some(v))
    }
    pub(crate) fn rng(&mut self) -> Result<ChaCha8Rng, SnapshotError> {
        let seed: [u8; 32] = self.take(32)?.try_into().expect("32 bytes");
        let stream = self.u64()?;
        let pos = self.u128()?;
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(stream);
        rng.set_word_pos(pos);
        Ok(rng)
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}
