//! Writing a message straight into a byte buffer, for the engine's hot path.
//!
//! [`super::CtMessage`] is the typed representation: a tree of attribute lists that round-trips
//! anything the kernel sends. Building that tree for every event costs a dozen small
//! allocations, so the engine writes its events with this cursor instead, attribute by
//! attribute, into the outbox it already owns. Events reach it through the one encoder in
//! [`super::event`], whose tests check that this byte path and the typed path agree and both
//! give the bytes captured from Linux.

use super::consts::{NLA_F_NESTED, NLA_HDRLEN, NLMSG_HDRLEN};

/// Appends netlink structures to a `Vec<u8>`; nests and the message are closed by offset.
#[derive(Debug)]
pub struct MessageWriter<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> MessageWriter<'a> {
    /// Starts a message: `nlmsghdr` (length filled in by [`MessageWriter::finish`]) and
    /// `nfgenmsg` (version 0, res_id 0).
    pub fn begin(
        out: &'a mut Vec<u8>,
        msg_type: u16,
        flags: u16,
        seq: u32,
        port_id: u32,
        family: u8,
    ) -> Self {
        let start = out.len();
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&msg_type.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&port_id.to_ne_bytes());
        out.extend_from_slice(&[family, 0, 0, 0]);
        MessageWriter { out, start }
    }

    /// Writes the message length.
    pub fn finish(self) {
        let len = (self.out.len() - self.start) as u32;
        debug_assert!(len as usize >= NLMSG_HDRLEN);
        self.out[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    #[inline]
    fn leaf(&mut self, kind: u16, payload: &[u8]) {
        let len = (NLA_HDRLEN + payload.len()) as u16;
        self.out.extend_from_slice(&len.to_ne_bytes());
        self.out.extend_from_slice(&kind.to_ne_bytes());
        self.out.extend_from_slice(payload);
        let pad = (4 - payload.len() % 4) % 4;
        self.out.extend_from_slice(&[0u8; 3][..pad]);
    }

    #[inline]
    pub fn u8(&mut self, kind: u16, v: u8) {
        self.leaf(kind, &[v]);
    }
    /// Big-endian, as ctnetlink payloads are.
    #[inline]
    pub fn u16(&mut self, kind: u16, v: u16) {
        self.leaf(kind, &v.to_be_bytes());
    }
    #[inline]
    pub fn u32(&mut self, kind: u16, v: u32) {
        self.leaf(kind, &v.to_be_bytes());
    }
    #[inline]
    pub fn u64(&mut self, kind: u16, v: u64) {
        self.leaf(kind, &v.to_be_bytes());
    }
    #[inline]
    pub fn bytes(&mut self, kind: u16, v: &[u8]) {
        self.leaf(kind, v);
    }

    /// Opens a nest (`NLA_F_NESTED`); returns its offset for [`MessageWriter::end_nest`].
    pub fn begin_nest(&mut self, kind: u16) -> usize {
        let at = self.out.len();
        self.out.extend_from_slice(&0u16.to_ne_bytes());
        self.out
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    pub fn end_nest(&mut self, at: usize) {
        let len = (self.out.len() - at) as u16;
        self.out[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
}
