//! SCTP packets (RFC 9260): the common header and the chunks after it.
//!
//! Conntrack reads an SCTP packet as its common header (ports, verification tag) and a walk over
//! its chunks. The walk is the kernel's: each chunk starts where the previous one's length field,
//! rounded up to 4, says; it stops where the packet ends or where fewer than the 4 bytes of a
//! chunk header remain. Judging the chunks (a zero length, an INIT that is not alone) is the
//! tracker's job, so a zero length is reported as it is, and the walk stops after it (it would
//! never move on).
//!
//! An INIT or INIT ACK carries the tag its sender wants to see on the packets it receives; the
//! kernel reads that header from the packet whatever the chunk's length field says, so
//! [`Chunk::init_tag`] does too.

use super::WireError;

mod field {
    use core::ops::Range;

    pub(super) const SRC_PORT: Range<usize> = 0..2;
    pub(super) const DST_PORT: Range<usize> = 2..4;
    pub(super) const VERIFICATION_TAG: Range<usize> = 4..8;
    pub(super) const CHECKSUM: Range<usize> = 8..12;
}

/// Length of the common header.
pub const HEADER_LEN: usize = field::CHECKSUM.end;
/// Length of a chunk header: type, flags, length.
pub const CHUNK_HEADER_LEN: usize = 4;
/// Length of the fixed part of an INIT or INIT ACK after its chunk header: initiate tag,
/// receiver window, stream counts, initial TSN.
pub const INIT_HEADER_LEN: usize = 16;

/// Chunk types conntrack tells apart (RFC 9260 §3.2).
pub mod chunk {
    pub const DATA: u8 = 0;
    pub const INIT: u8 = 1;
    pub const INIT_ACK: u8 = 2;
    pub const SACK: u8 = 3;
    pub const HEARTBEAT: u8 = 4;
    pub const HEARTBEAT_ACK: u8 = 5;
    pub const ABORT: u8 = 6;
    pub const SHUTDOWN: u8 = 7;
    pub const SHUTDOWN_ACK: u8 = 8;
    pub const ERROR: u8 = 9;
    pub const COOKIE_ECHO: u8 = 10;
    pub const COOKIE_ACK: u8 = 11;
    pub const SHUTDOWN_COMPLETE: u8 = 14;
    /// The T bit of ABORT and SHUTDOWN COMPLETE: the sender had no association and reflected
    /// the peer's tag.
    pub const FLAG_T: u8 = 0x01;
}

/// A read (and, over a mutable buffer, write) view of an SCTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view without checks: only for buffers this code built itself.
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// A view of untrusted bytes: the 12-byte common header must be present.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        let packet = Packet::new_unchecked(buffer);
        if packet.buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(packet)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes(self.field(field::SRC_PORT))
    }

    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes(self.field(field::DST_PORT))
    }

    pub fn verification_tag(&self) -> u32 {
        u32::from_be_bytes(self.field(field::VERIFICATION_TAG))
    }

    /// The CRC32c as stored (little-endian on the wire, as RFC 9260 Appendix A computes it).
    pub fn checksum(&self) -> u32 {
        u32::from_le_bytes(self.field(field::CHECKSUM))
    }

    /// The chunks, in order, as the kernel walks them.
    pub fn chunks(&self) -> Chunks<'_> {
        Chunks {
            data: self.buffer.as_ref(),
            offset: HEADER_LEN,
        }
    }

    fn field<const N: usize>(&self, range: core::ops::Range<usize>) -> [u8; N] {
        let mut out = [0; N];
        out.copy_from_slice(&self.buffer.as_ref()[range]);
        out
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, value: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_dst_port(&mut self, value: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_verification_tag(&mut self, value: u32) {
        self.buffer.as_mut()[field::VERIFICATION_TAG].copy_from_slice(&value.to_be_bytes());
    }

    /// Computes the CRC32c over the whole buffer and stores it.
    pub fn fill_checksum(&mut self) {
        self.buffer.as_mut()[field::CHECKSUM].fill(0);
        let crc = super::checksum::crc32c(self.buffer.as_ref());
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&crc.to_le_bytes());
    }
}

/// One chunk of a packet: its header, and the packet's bytes from its value to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub kind: u8,
    pub flags: u8,
    /// The length field: header and value, without padding.
    pub length: u16,
    /// Every byte after the chunk header, to the end of the packet (not cut at `length`).
    rest: &'a [u8],
}

impl Chunk<'_> {
    /// The initiate tag of an INIT or INIT ACK, when the packet holds the whole fixed part of
    /// one after this chunk's header.
    pub fn init_tag(&self) -> Option<u32> {
        let fixed = self.rest.get(..INIT_HEADER_LEN)?;
        Some(u32::from_be_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]))
    }
}

/// The walk over a packet's chunks: see the module docs.
#[derive(Debug, Clone)]
pub struct Chunks<'a> {
    data: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = Chunk<'a>;

    fn next(&mut self) -> Option<Chunk<'a>> {
        let header = self
            .data
            .get(self.offset..self.offset.checked_add(CHUNK_HEADER_LEN)?)?;
        let length = u16::from_be_bytes([header[2], header[3]]);
        let chunk = Chunk {
            kind: header[0],
            flags: header[1],
            length,
            rest: &self.data[self.offset + CHUNK_HEADER_LEN..],
        };
        self.offset = match length {
            0 => self.data.len(),
            n => self.offset + usize::from(n).next_multiple_of(4),
        };
        Some(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build;

    #[test]
    fn the_walk_follows_lengths_rounded_up_and_stops_at_the_end() {
        let bytes = build::sctp(
            5000,
            6000,
            7,
            &[
                build::sctp_chunk(chunk::DATA, 3, &[1, 2, 3, 4, 5]),
                build::sctp_chunk(chunk::SACK, 0, &[0; 12]),
            ],
        );
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            (p.src_port(), p.dst_port(), p.verification_tag()),
            (5000, 6000, 7)
        );
        let kinds: Vec<(u8, u8, u16)> = p.chunks().map(|c| (c.kind, c.flags, c.length)).collect();
        assert_eq!(kinds, [(chunk::DATA, 3, 9), (chunk::SACK, 0, 16)]);
        // Cut inside the second chunk's header: the walk sees the first only.
        let p = Packet::new_checked(&bytes[..HEADER_LEN + 12 + 2]).unwrap();
        assert_eq!(p.chunks().count(), 1);
        assert_eq!(Packet::new_checked(&bytes[..11]), Err(WireError::Truncated));
    }

    #[test]
    fn a_zero_length_chunk_is_reported_and_ends_the_walk() {
        let mut bytes = build::sctp(1, 2, 0, &[build::sctp_chunk(chunk::DATA, 0, &[0; 8])]);
        bytes[HEADER_LEN + 2..HEADER_LEN + 4].fill(0);
        let p = Packet::new_checked(&bytes[..]).unwrap();
        let lengths: Vec<u16> = p.chunks().map(|c| c.length).collect();
        assert_eq!(lengths, [0]);
    }

    #[test]
    fn the_init_tag_needs_the_whole_fixed_part() {
        let init = build::sctp_init(chunk::INIT, 0xdead_beef);
        let bytes = build::sctp(1, 2, 0, &[init]);
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.chunks().next().unwrap().init_tag(), Some(0xdead_beef));
        let p = Packet::new_checked(&bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(p.chunks().next().unwrap().init_tag(), None);
    }

    #[test]
    fn the_checksum_is_crc32c_stored_little_endian() {
        let bytes = build::sctp(1, 2, 3, &[build::sctp_chunk(chunk::COOKIE_ACK, 0, &[])]);
        let p = Packet::new_checked(&bytes[..]).unwrap();
        let mut zeroed = bytes.clone();
        zeroed[8..12].fill(0);
        assert_eq!(p.checksum(), crate::wire::checksum::crc32c(&zeroed));
    }
}
