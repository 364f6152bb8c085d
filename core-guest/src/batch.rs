//! The byte formats that carry packets in and events out across the component boundary.
//!
//! Lifting a `list<record>` into the guest costs about 80 ns per packet before any work while one
//! flat `list<u8>` costs about 20 ns all in (measured on these machines, see the README), so the
//! high-rate paths cross as one buffer per batch. Both formats are little-endian and fixed, so a
//! batch is the same bytes on every platform and in every component runtime.
//!
//! Packet batch: for each packet, a 16-byte header then the packet's bytes (the WIT's `ingest`
//! says the same): `ts_ns: u64le | zone: u16le | flags: u16le | len: u32le | len bytes`; flags
//! bit 0 marks a packet that arrived from a device with its checksums unverified, every other
//! bit is 0.
//!
//! Event batch: for each message, a 16-byte header then the ctnetlink message (the WIT's
//! `take-events` says the same): `frame_len: u32le | events: u16le | group: u8 | flags: u8 |
//! ts_ns: u64le | ctnetlink message`. `frame_len` counts the header; `events` holds the IPCT_*
//! bits carried; `flags` bit 0 marks a redelivered DESTROY.

use crate::event::EventBits;

pub const PACKET_HEADER_LEN: usize = 16;
pub const EVENT_HEADER_LEN: usize = 16;

/// Frame flag: this DESTROY is a retry of one that failed before.
pub const EVENT_FLAG_REDELIVERY: u8 = 1;

/// Packet flag: the packet arrived from a device and nothing has verified its checksums yet —
/// what the kernel's conntrack meets at PRE_ROUTING with `CHECKSUM_NONE` (a TUN device, a NIC
/// that leaves checksums to the stack or found one wrong). With `nf_conntrack_checksum` set,
/// the trackers verify them as the kernel does and a wrong one makes the packet invalid; an
/// IPv4 header whose checksum is wrong never reaches conntrack (the IP layer drops it first).
/// Without the flag a packet is taken as the local stack sent it, or as a device that verified
/// it handed it on, and nothing is verified.
pub const PACKET_FLAG_ARRIVED: u16 = 1;

/// Every packet flag this version knows; a frame with any other bit is a framing error.
pub const PACKET_FLAGS_KNOWN: u16 = PACKET_FLAG_ARRIVED;

/// One packet read out of a packet batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketFrame<'a> {
    pub ts_ns: u64,
    pub zone: u16,
    /// [`PACKET_FLAG_ARRIVED`] or 0.
    pub flags: u16,
    pub bytes: &'a [u8],
}

impl PacketFrame<'_> {
    pub fn arrived(&self) -> bool {
        self.flags & PACKET_FLAG_ARRIVED != 0
    }
}

/// Appends one packet to a batch buffer, as the local stack sent it (no flags).
pub fn push_packet(batch: &mut Vec<u8>, ts_ns: u64, zone: u16, packet: &[u8]) {
    push_packet_with(batch, ts_ns, zone, 0, packet);
}

/// Appends one packet with its flags ([`PACKET_FLAG_ARRIVED`]).
pub fn push_packet_with(batch: &mut Vec<u8>, ts_ns: u64, zone: u16, flags: u16, packet: &[u8]) {
    batch.extend_from_slice(&ts_ns.to_le_bytes());
    batch.extend_from_slice(&zone.to_le_bytes());
    batch.extend_from_slice(&flags.to_le_bytes());
    batch.extend_from_slice(&(packet.len() as u32).to_le_bytes());
    batch.extend_from_slice(packet);
}

/// Error for a batch whose framing is broken (a bug in the host, not bad traffic): a frame
/// that runs past the end of the batch, or whose flags hold a bit this version does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramingError {
    pub offset: usize,
}

/// Iterates over the packets of a batch; stops with an error at a frame that runs past the end.
pub fn packets(batch: &[u8]) -> impl Iterator<Item = Result<PacketFrame<'_>, FramingError>> {
    let mut offset = 0usize;
    core::iter::from_fn(move || {
        if offset >= batch.len() {
            return None;
        }
        let rest = &batch[offset..];
        let Some(header) = rest.get(..PACKET_HEADER_LEN) else {
            let err = FramingError { offset };
            offset = batch.len();
            return Some(Err(err));
        };
        let ts_ns = u64::from_le_bytes(header[0..8].try_into().expect("8 bytes"));
        let zone = u16::from_le_bytes([header[8], header[9]]);
        let flags = u16::from_le_bytes([header[10], header[11]]);
        let len = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes")) as usize;
        let bytes = rest.get(PACKET_HEADER_LEN..PACKET_HEADER_LEN.saturating_add(len));
        let Some(bytes) = bytes.filter(|_| flags & !PACKET_FLAGS_KNOWN == 0) else {
            let err = FramingError { offset };
            offset = batch.len();
            return Some(Err(err));
        };
        offset += PACKET_HEADER_LEN + len;
        Some(Ok(PacketFrame {
            ts_ns,
            zone,
            flags,
            bytes,
        }))
    })
}

/// One event message read out of an event batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventFrame<'a> {
    pub events: EventBits,
    pub group: u8,
    pub flags: u8,
    pub ts_ns: u64,
    /// The ctnetlink message, `nlmsghdr` first.
    pub netlink: &'a [u8],
}

impl EventFrame<'_> {
    pub fn is_redelivery(&self) -> bool {
        self.flags & EVENT_FLAG_REDELIVERY != 0
    }
}

/// Starts an event frame; the caller appends the netlink bytes and then calls
/// [`finish_event`] with the returned start offset.
pub fn begin_event(
    out: &mut Vec<u8>,
    events: EventBits,
    group: u8,
    flags: u8,
    ts_ns: u64,
) -> usize {
    let start = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&events.0.to_le_bytes());
    out.push(group);
    out.push(flags);
    out.extend_from_slice(&ts_ns.to_le_bytes());
    start
}

/// Writes the frame length of the event frame that began at `start`.
pub fn finish_event(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Iterates over the messages of an event batch.
pub fn events(batch: &[u8]) -> impl Iterator<Item = Result<EventFrame<'_>, FramingError>> {
    let mut offset = 0usize;
    core::iter::from_fn(move || {
        if offset >= batch.len() {
            return None;
        }
        let rest = &batch[offset..];
        let frame_len = rest
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
        let frame = match frame_len {
            Some(len) if len >= EVENT_HEADER_LEN => rest.get(..len),
            _ => None,
        };
        let Some(frame) = frame else {
            let err = FramingError { offset };
            offset = batch.len();
            return Some(Err(err));
        };
        offset += frame.len();
        Some(Ok(EventFrame {
            events: EventBits(u16::from_le_bytes([frame[4], frame[5]])),
            group: frame[6],
            flags: frame[7],
            ts_ns: u64::from_le_bytes(frame[8..16].try_into().expect("8 bytes")),
            netlink: &frame[EVENT_HEADER_LEN..],
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame layouts this module documents are the ones the WIT documents, word for word.
    #[test]
    fn the_frame_layouts_are_the_wits() {
        let wit: String = include_str!("../../wit/ctwasm.wit")
            .lines()
            .map(|l| l.trim().trim_start_matches("///").trim())
            .collect::<Vec<_>>()
            .join(" ");
        let doc: String = include_str!("batch.rs")
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| l.trim_start_matches("//!").trim())
            .collect::<Vec<_>>()
            .join(" ");
        for layout in [
            "`ts_ns: u64le | zone: u16le | flags: u16le | len: u32le | len bytes`",
            "`frame_len: u32le | events: u16le | group: u8 | flags: u8 | ts_ns: u64le | ctnetlink message`",
        ] {
            assert!(wit.contains(layout), "the WIT lacks {layout}");
            assert!(doc.contains(layout), "batch.rs lacks {layout}");
        }
    }

    #[test]
    fn packets_round_trip_and_a_cut_frame_is_an_error() {
        let mut b = Vec::new();
        push_packet(&mut b, 7, 3, &[1, 2, 3]);
        push_packet_with(&mut b, 9, 0, PACKET_FLAG_ARRIVED, &[]);
        let got: Vec<_> = packets(&b).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            got[0],
            PacketFrame {
                ts_ns: 7,
                zone: 3,
                flags: 0,
                bytes: &[1, 2, 3]
            }
        );
        assert_eq!(
            got[1],
            PacketFrame {
                ts_ns: 9,
                zone: 0,
                flags: PACKET_FLAG_ARRIVED,
                bytes: &[]
            }
        );
        assert!(!got[0].arrived() && got[1].arrived());
        let cut = &b[..b.len() - 1];
        let last = packets(cut).last().unwrap();
        assert_eq!(last, Err(FramingError { offset: 19 }));
    }

    /// A flag bit this version does not define is the host's mistake: the batch stops there
    /// rather than guess what the bit asked for.
    #[test]
    fn an_unknown_flag_is_a_framing_error() {
        for bit in 1..16 {
            let mut b = Vec::new();
            push_packet(&mut b, 1, 0, &[1]);
            push_packet_with(&mut b, 2, 0, 1 << bit, &[2]);
            push_packet(&mut b, 3, 0, &[3]);
            let got: Vec<_> = packets(&b).collect();
            assert_eq!(got.len(), 2, "bit {bit}");
            assert!(got[0].is_ok());
            assert_eq!(got[1], Err(FramingError { offset: 17 }), "bit {bit}");
        }
    }

    #[test]
    fn events_round_trip() {
        let mut b = Vec::new();
        let s = begin_event(&mut b, EventBits::NEW, 1, 0, 42);
        b.extend_from_slice(&[9, 9, 9, 9]);
        finish_event(&mut b, s);
        let f = events(&b).next().unwrap().unwrap();
        assert_eq!(
            (f.events, f.group, f.ts_ns, f.netlink),
            (EventBits::NEW, 1, 42, &[9u8, 9, 9, 9][..])
        );
        assert!(events(&b[..10]).next().unwrap().is_err());
    }
}
