//! The outbox: event messages produced and not yet reported, queued until the host takes them,
//! then in flight until it reports their outcome.
//!
//! The frames' bytes live in fixed blocks of [`BLOCK_LEN`] instead of one growing vector. One
//! vector would double as the queue grows: ten million queued messages are about 2 GB of
//! frames, and a 4 GiB guest cannot hold that and its doubled copy. Blocks never move once
//! written, growth costs one block at a time (which the memory budget can count exactly), and a
//! block is freed as soon as the host has taken its last frame, so a long drain gives memory
//! back as it goes. A frame never straddles two blocks. The message records wait in
//! [`ChunkedQueue`]s for the same reason: ten million of them are 320 MB, and a `VecDeque`
//! would want 512 MB more to double.

use std::collections::VecDeque;

use super::budget::{vec_bytes, vec_growth};
use super::ecache::Pending;

/// Room an event frame may need: the frame header and the largest message the encoder writes
/// (an IPv6 entry with every optional attribute is under 400 bytes).
pub(super) const MAX_FRAME_LEN: usize = 512;
/// Bytes in one block of frames. At most `MAX_FRAME_LEN` of it stays unused.
pub(super) const BLOCK_LEN: usize = 256 * 1024;

/// Messages waiting for the host, then waiting for their outcome.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    /// Frames, in the order they were queued. Offsets ([`Pending::start`]) count bytes of one
    /// endless stream in which block `i` starts at `base + i * BLOCK_LEN`.
    blocks: VecDeque<Vec<u8>>,
    /// Stream offset of the first block (a multiple of `BLOCK_LEN`).
    base: u64,
    pub(super) queued: ChunkedQueue<Pending>,
    pub(super) in_flight: ChunkedQueue<Pending>,
}

impl Outbox {
    /// Moves up to `max` queued frames into `out`; they wait for their outcome from now on.
    /// Fewer are moved only if the in-flight list cannot grow inside the memory there is.
    pub(super) fn take(&mut self, max: usize, out: &mut Vec<u8>) -> usize {
        let mut n = 0;
        // Frames queued one after the other lie back to back in a block: they are copied out as
        // one run, `start..end` of the stream.
        let mut run: Option<(u64, u64)> = None;
        while n < max && self.queued.len() > 0 && self.in_flight.try_reserve_one() {
            let p = self.queued.pop_front().expect("a queued message");
            let end = p.start + u64::from(p.len);
            let starts_block = p.start.is_multiple_of(BLOCK_LEN as u64);
            run = match run {
                Some((start, run_end)) if run_end == p.start && !starts_block => Some((start, end)),
                Some((start, run_end)) => {
                    out.extend_from_slice(self.stream(start, run_end));
                    Some((p.start, end))
                }
                None => Some((p.start, end)),
            };
            self.in_flight.push_back(p);
            n += 1;
        }
        if let Some((start, end)) = run {
            out.extend_from_slice(self.stream(start, end));
        }
        self.release_taken_blocks();
        n
    }

    /// Bytes `start..end` of the stream, which lie in one block.
    fn stream(&self, start: u64, end: u64) -> &[u8] {
        let at = (start - self.base) as usize;
        let (index, offset) = (at / BLOCK_LEN, at % BLOCK_LEN);
        &self.blocks[index][offset..offset + (end - start) as usize]
    }

    /// Frees the blocks in front of the oldest queued frame. With nothing queued the last block
    /// is kept, emptied, for the next message.
    fn release_taken_blocks(&mut self) {
        let Some(oldest) = self.queued.front() else {
            self.blocks.truncate(1);
            if let Some(block) = self.blocks.front_mut() {
                block.clear();
            }
            self.base = 0;
            return;
        };
        let done = ((oldest.start - self.base) / BLOCK_LEN as u64) as usize;
        self.blocks.drain(..done);
        self.base += (done * BLOCK_LEN) as u64;
    }

    /// Whether the last block has `len` bytes free.
    #[inline]
    fn room_for(&self, len: usize) -> bool {
        self.blocks
            .back()
            .is_some_and(|b| BLOCK_LEN - b.len() >= len)
    }

    /// Makes room for one more message without growing past what memory allows: `false` when
    /// the memory is not there (the caller must not queue then).
    #[inline]
    pub(super) fn reserve_one(&mut self) -> bool {
        if !self.room_for(MAX_FRAME_LEN) {
            let mut block = Vec::new();
            if block.try_reserve_exact(BLOCK_LEN).is_err() || self.blocks.try_reserve(1).is_err() {
                return false;
            }
            self.blocks.push_back(block);
        }
        self.queued.try_reserve_one()
    }

    /// Queues the frame `write` appends (after [`Outbox::reserve_one`] said yes) and the
    /// [`Pending`] that `pending(start, len)` makes of where it landed.
    #[inline]
    pub(super) fn push(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>),
        pending: impl FnOnce(u64, u32) -> Pending,
    ) {
        let index = self.blocks.len() - 1;
        let block = self.blocks.back_mut().expect("reserve_one made a block");
        let offset = block.len();
        write(block);
        debug_assert!(block.len() <= BLOCK_LEN, "a frame past MAX_FRAME_LEN");
        // A frame is a few hundred bytes (`MAX_FRAME_LEN`), far below `u32::MAX`.
        let len = (block.len() - offset) as u32;
        let start = self.base + (index * BLOCK_LEN + offset) as u64;
        self.queued.push_back(pending(start, len));
    }

    /// Queues a frame as it is (a restored snapshot's), with the [`Pending`] it belongs to.
    pub(super) fn push_frame(&mut self, bytes: &[u8], mut p: Pending) {
        if !self.room_for(bytes.len()) {
            self.blocks.push_back(Vec::with_capacity(BLOCK_LEN));
        }
        self.push(
            |out| out.extend_from_slice(bytes),
            |start, len| {
                p.start = start;
                p.len = len;
                p
            },
        );
    }

    /// The queued frames, oldest first.
    pub(super) fn queued_frames(&self) -> impl Iterator<Item = (&Pending, &[u8])> {
        self.queued
            .iter()
            .map(|p| (p, self.stream(p.start, p.start + u64::from(p.len))))
    }

    /// Bytes the outbox takes now, and what [`Outbox::reserve_one`] may allocate:
    /// `(now, growth)`.
    pub(super) fn footprint(&self) -> (u64, u64) {
        let now = (self.blocks.len() * BLOCK_LEN) as u64
            + vec_bytes::<Vec<u8>>(self.blocks.capacity())
            + self.queued.footprint()
            + self.in_flight.footprint();
        let block_growth = if self.room_for(MAX_FRAME_LEN) {
            0
        } else {
            BLOCK_LEN as u64 + vec_growth::<Vec<u8>>(self.blocks.len(), self.blocks.capacity(), 1)
        };
        (now, block_growth + self.queued.growth_for_one())
    }

    /// Every message not yet reported, queued first.
    pub(super) fn unreported(&self) -> impl Iterator<Item = &Pending> {
        self.queued.iter().chain(self.in_flight.iter())
    }
}

/// A first-in first-out queue kept in chunks of [`CHUNK_LEN`] items: it grows a chunk at a time
/// (never doubling), and frees each chunk once its last item is popped. Written here because
/// the engine needs fallible growth and an exact account of its memory, which no well-kept
/// crate's deque offers.
#[derive(Debug)]
pub(super) struct ChunkedQueue<T> {
    chunks: VecDeque<Vec<T>>,
    /// Items already popped from the front chunk.
    head: usize,
    len: usize,
}

/// Items in one chunk of a [`ChunkedQueue`].
const CHUNK_LEN: usize = 4096;

impl<T> Default for ChunkedQueue<T> {
    fn default() -> Self {
        ChunkedQueue {
            chunks: VecDeque::new(),
            head: 0,
            len: 0,
        }
    }
}

impl<T: Copy> ChunkedQueue<T> {
    #[inline]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn back_is_full(&self) -> bool {
        self.chunks.back().is_none_or(|c| c.len() == CHUNK_LEN)
    }

    /// Makes room for one more item: `false` when the memory is not there.
    #[inline]
    pub(super) fn try_reserve_one(&mut self) -> bool {
        if !self.back_is_full() {
            return true;
        }
        let mut chunk = Vec::new();
        if chunk.try_reserve_exact(CHUNK_LEN).is_err() || self.chunks.try_reserve(1).is_err() {
            return false;
        }
        self.chunks.push_back(chunk);
        true
    }

    #[inline]
    pub(super) fn push_back(&mut self, item: T) {
        if self.back_is_full() {
            self.chunks.push_back(Vec::with_capacity(CHUNK_LEN));
        }
        self.chunks
            .back_mut()
            .expect("a chunk with room")
            .push(item);
        self.len += 1;
    }

    pub(super) fn front(&self) -> Option<&T> {
        self.chunks.front().and_then(|c| c.get(self.head))
    }

    #[inline]
    pub(super) fn pop_front(&mut self) -> Option<T> {
        let only_chunk = self.chunks.len() == 1;
        let front = self.chunks.front_mut()?;
        let item = *front.get(self.head)?;
        self.head += 1;
        self.len -= 1;
        if self.head == front.len() {
            // The front chunk is used up: freed, or emptied for reuse if it is the only one.
            if only_chunk {
                front.clear();
            } else {
                self.chunks.pop_front();
            }
            self.head = 0;
        }
        Some(item)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks
            .iter()
            .enumerate()
            .flat_map(|(i, c)| &c[if i == 0 { self.head } else { 0 }..])
    }

    /// Bytes the queue takes now.
    fn footprint(&self) -> u64 {
        vec_bytes::<T>(self.chunks.len() * CHUNK_LEN) + vec_bytes::<Vec<T>>(self.chunks.capacity())
    }

    /// Bytes [`ChunkedQueue::try_reserve_one`] may allocate.
    fn growth_for_one(&self) -> u64 {
        if self.back_is_full() {
            vec_bytes::<T>(CHUNK_LEN)
                + vec_growth::<Vec<T>>(self.chunks.len(), self.chunks.capacity(), 1)
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ecache::Source;
    use crate::event::{EventBits, MessageKind};
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn pending() -> Pending {
        Pending {
            source: Source::Entry {
                slot: 0,
                generation: 0,
                bits: EventBits::default(),
                missed_sent: EventBits::default(),
            },
            kind: MessageKind::New,
            from_worker: false,
            start: 0,
            len: 0,
        }
    }

    /// The chunked queue behaves as a `VecDeque` through any mix of pushes and pops, and keeps
    /// at most one chunk it does not need.
    #[test]
    fn the_chunked_queue_is_a_fifo() {
        let mut queue = ChunkedQueue::default();
        let mut model = VecDeque::new();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut next = 0u64;
        for _ in 0..200_000 {
            // Pushes win slightly, then pops, so the queue grows and empties more than once.
            let push = rng.random_range(0..100) < if next < 60_000 { 55 } else { 40 };
            if push {
                assert!(queue.try_reserve_one());
                queue.push_back(next);
                model.push_back(next);
                next += 1;
            } else {
                assert_eq!(queue.pop_front(), model.pop_front());
            }
            assert_eq!(queue.len(), model.len());
            assert_eq!(queue.front(), model.front());
            assert!(queue.chunks.len() <= model.len().div_ceil(CHUNK_LEN) + 1);
        }
        assert!(queue.iter().eq(model.iter()));
        while let Some(v) = model.pop_front() {
            assert_eq!(queue.pop_front(), Some(v));
        }
        assert!(queue.len() == 0 && queue.pop_front().is_none());
    }

    fn queue(outbox: &mut Outbox, fill: u8, len: usize) {
        assert!(outbox.reserve_one());
        outbox.push(
            |out| out.resize(out.len() + len, fill),
            |start, len| Pending {
                start,
                len,
                ..pending()
            },
        );
    }

    /// Frames come out whole and in order across many blocks, blocks are freed as they are
    /// taken, and the footprint never counts more than one block of slack.
    #[test]
    fn frames_cross_blocks_in_order_and_taken_blocks_are_freed() {
        let mut outbox = Outbox::default();
        let frames = 3 * BLOCK_LEN / 300;
        for i in 0..frames {
            queue(&mut outbox, i as u8, 200 + i % 300);
        }
        assert!(outbox.blocks.len() >= 3);
        let (footprint, _) = outbox.footprint();
        let bytes: usize = (0..frames).map(|i| 200 + i % 300).sum();
        assert!(footprint < (bytes + 2 * BLOCK_LEN) as u64 + 64 * frames as u64);

        let mut out = Vec::new();
        let mut seen = 0;
        while seen < frames {
            out.clear();
            let blocks_before = outbox.blocks.len();
            let n = outbox.take(97, &mut out);
            let mut at = 0;
            for i in seen..seen + n {
                let len = 200 + i % 300;
                assert!(out[at..at + len].iter().all(|&b| b == i as u8), "frame {i}");
                at += len;
            }
            assert_eq!(at, out.len());
            assert!(outbox.blocks.len() <= blocks_before);
            seen += n;
        }
        assert_eq!(outbox.blocks.len(), 1, "only the reusable block is left");
        assert_eq!(outbox.in_flight.len(), frames);
        // The next message starts the stream again in the kept block.
        queue(&mut outbox, 7, 10);
        assert_eq!(outbox.queued.front().unwrap().start, 0);
    }

    /// A restored frame lands whole in a block, wherever the last one ended.
    #[test]
    fn pushed_frames_never_straddle_blocks() {
        let mut outbox = Outbox::default();
        let big = vec![9u8; MAX_FRAME_LEN];
        let per_block = BLOCK_LEN / MAX_FRAME_LEN;
        for _ in 0..per_block + 3 {
            outbox.push_frame(&big, pending());
        }
        for (p, bytes) in outbox.queued_frames() {
            assert_eq!(bytes, &big[..]);
            let at = (p.start - outbox.base) as usize;
            assert!(at % BLOCK_LEN + MAX_FRAME_LEN <= BLOCK_LEN);
        }
    }
}
