//! TCP headers (RFC 9293) and the options conntrack reads.
//!
//! The TCP tracker follows sequence numbers, acknowledgements, windows and flags, and it reads
//! two options from SYNs: window scale (to interpret later windows) and SACK-permitted (to accept
//! SACK blocks as acknowledgements). This module gives it those fields without copying, and a
//! [`Repr`] small enough to pass around by value. Options from untrusted packets are parsed
//! defensively: a malformed option list ends the iteration, as in the kernel.

use core::fmt;

use super::WireError;

mod field {
    use core::ops::Range;

    pub(super) const SRC_PORT: Range<usize> = 0..2;
    pub(super) const DST_PORT: Range<usize> = 2..4;
    pub(super) const SEQ_NUM: Range<usize> = 4..8;
    pub(super) const ACK_NUM: Range<usize> = 8..12;
    /// Data offset in the high nibble; the low nibble holds reserved bits and AE.
    pub(super) const DATA_OFFSET: usize = 12;
    pub(super) const FLAGS: usize = 13;
    pub(super) const WINDOW: Range<usize> = 14..16;
    pub(super) const CHECKSUM: Range<usize> = 16..18;
    pub(super) const URGENT: Range<usize> = 18..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = field::URGENT.end;

/// The longest header the data offset can describe.
pub const MAX_HEADER_LEN: usize = 60;

/// The largest window scale shift RFC 7323 allows; larger advertised values mean 14.
pub const MAX_WINDOW_SCALE: u8 = 14;

/// Option kinds.
pub mod option {
    pub const END_OF_LIST: u8 = 0;
    pub const NO_OPERATION: u8 = 1;
    pub const MSS: u8 = 2;
    pub const WINDOW_SCALE: u8 = 3;
    pub const SACK_PERMITTED: u8 = 4;
    pub const SACK: u8 = 5;
    pub const TIMESTAMP: u8 = 8;
}

/// The source and destination ports of a TCP (or UDP, SCTP, DCCP) header, from its first four
/// bytes: all an ICMP error is sure to quote.
pub fn ports(buf: &[u8]) -> Result<(u16, u16), WireError> {
    match buf {
        [s0, s1, d0, d1, ..] => Ok((
            u16::from_be_bytes([*s0, *s1]),
            u16::from_be_bytes([*d0, *d1]),
        )),
        _ => Err(WireError::Truncated),
    }
}

/// The eight flag bits of byte 13.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: TcpFlags = TcpFlags(0x01);
    pub const SYN: TcpFlags = TcpFlags(0x02);
    pub const RST: TcpFlags = TcpFlags(0x04);
    pub const PSH: TcpFlags = TcpFlags(0x08);
    pub const ACK: TcpFlags = TcpFlags(0x10);
    pub const URG: TcpFlags = TcpFlags(0x20);
    pub const ECE: TcpFlags = TcpFlags(0x40);
    pub const CWR: TcpFlags = TcpFlags(0x80);

    pub const fn empty() -> TcpFlags {
        TcpFlags(0)
    }

    pub const fn bits(self) -> u8 {
        self.0
    }

    /// All the bits of `other` are set.
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Any bit of `other` is set.
    pub const fn intersects(self, other: TcpFlags) -> bool {
        self.0 & other.0 != 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl core::ops::BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | other.0)
    }
}

impl core::ops::BitAnd for TcpFlags {
    type Output = TcpFlags;
    fn bitand(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 & other.0)
    }
}

/// Prints `SYN|ACK`, or `none`.
impl fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
        if self.0 == 0 {
            return f.write_str("none");
        }
        let mut first = true;
        for (bit, name) in NAMES.iter().enumerate() {
            if self.0 & (1 << bit) != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// One TCP option, as the iterator found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpOption<'a> {
    NoOperation,
    MaxSegmentSize(u16),
    /// The shift as advertised, not clamped (see [`MAX_WINDOW_SCALE`]).
    WindowScale(u8),
    SackPermitted,
    /// SACK blocks: pairs of big-endian (left, right) edges, 8 bytes each.
    SackRange(&'a [u8]),
    Timestamp {
        tsval: u32,
        tsecr: u32,
    },
    /// Any other kind, or a known kind with the wrong length (which the kernel ignores too).
    Unknown {
        kind: u8,
        data: &'a [u8],
    },
}

/// Iterates over the options of a header; ends at End-of-List, at the end of the options, or at
/// the first option whose length byte is missing, below 2 or past the end.
#[derive(Clone, Debug)]
pub struct Options<'a> {
    rest: &'a [u8],
}

impl<'a> Options<'a> {
    /// Options from raw option bytes (the header after its first 20 bytes).
    pub fn new(bytes: &'a [u8]) -> Options<'a> {
        Options { rest: bytes }
    }
}

impl<'a> Iterator for Options<'a> {
    type Item = TcpOption<'a>;

    fn next(&mut self) -> Option<TcpOption<'a>> {
        let (&kind, after_kind) = self.rest.split_first()?;
        match kind {
            option::END_OF_LIST => {
                self.rest = &[];
                return None;
            }
            option::NO_OPERATION => {
                self.rest = after_kind;
                return Some(TcpOption::NoOperation);
            }
            _ => {}
        }
        let len = usize::from(*after_kind.first().unwrap_or(&0));
        if len < 2 || len > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let (this, rest) = self.rest.split_at(len);
        self.rest = rest;
        let data = &this[2..];
        Some(match (kind, data) {
            (option::MSS, &[a, b]) => TcpOption::MaxSegmentSize(u16::from_be_bytes([a, b])),
            (option::WINDOW_SCALE, &[shift]) => TcpOption::WindowScale(shift),
            (option::SACK_PERMITTED, &[]) => TcpOption::SackPermitted,
            (option::SACK, blocks) if !blocks.is_empty() && blocks.len() % 8 == 0 => {
                TcpOption::SackRange(blocks)
            }
            (option::TIMESTAMP, &[a, b, c, d, e, f, g, h]) => TcpOption::Timestamp {
                tsval: u32::from_be_bytes([a, b, c, d]),
                tsecr: u32::from_be_bytes([e, f, g, h]),
            },
            _ => TcpOption::Unknown { kind, data },
        })
    }
}

/// A read (and, over a mutable buffer, write) view of a TCP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view without checks: only for buffers this code built itself.
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// A view of untrusted bytes: see [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// The fixed header is in the buffer (else `Truncated`), and the data offset says at least
    /// 20 bytes and no more than the buffer holds (else `BadHeaderLength`): options must be
    /// complete, the payload may be cut.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN || header_len > len {
            return Err(WireError::BadHeaderLength);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::SRC_PORT])
    }

    pub fn dst_port(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::DST_PORT])
    }

    pub fn seq_number(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::SEQ_NUM])
    }

    pub fn ack_number(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::ACK_NUM])
    }

    /// The header length in bytes (data offset × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.buffer.as_ref()[field::FLAGS])
    }

    /// The window field as sent, before scaling.
    pub fn window_len(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::WINDOW])
    }

    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    pub fn urgent_at(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::URGENT])
    }

    /// The raw option bytes (possibly empty).
    pub fn options_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    pub fn options(&self) -> Options<'_> {
        Options::new(self.options_bytes())
    }

    /// The payload present in the buffer (a capture may have cut it).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// The payload length on the wire, given the L4 length the IP header says
    /// ([`super::L3Info::l4_wire_len`]): what the sequence space counts, whatever the capture
    /// kept. Zero if the IP length is shorter than the header.
    pub fn payload_len(&self, l4_len_from_ip: usize) -> usize {
        l4_len_from_ip.saturating_sub(self.header_len())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, value: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_dst_port(&mut self, value: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_seq_number(&mut self, value: u32) {
        self.buffer.as_mut()[field::SEQ_NUM].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_ack_number(&mut self, value: u32) {
        self.buffer.as_mut()[field::ACK_NUM].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the data offset from a header length in bytes (a multiple of 4, 20..=60), clearing
    /// the reserved bits.
    pub fn set_header_len(&mut self, header_len: usize) {
        self.buffer.as_mut()[field::DATA_OFFSET] = ((header_len / 4) as u8) << 4;
    }

    pub fn set_flags(&mut self, flags: TcpFlags) {
        self.buffer.as_mut()[field::FLAGS] = flags.0;
    }

    pub fn set_window_len(&mut self, value: u16) {
        self.buffer.as_mut()[field::WINDOW].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_urgent_at(&mut self, value: u16) {
        self.buffer.as_mut()[field::URGENT].copy_from_slice(&value.to_be_bytes());
    }
}

/// What the TCP tracker reads from a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    /// The window field as sent, before scaling.
    pub window: u16,
    /// The window scale option, clamped to [`MAX_WINDOW_SCALE`] as RFC 7323 §2.3 (and the kernel)
    /// do, so a shift by it never overflows a `u32`.
    pub wscale: Option<u8>,
    pub sack_perm: bool,
    pub mss: Option<u16>,
    /// The header length in bytes, options included.
    pub header_len: usize,
}

impl Repr {
    /// Reads a checked header. Options after a malformed one are ignored; of repeated options the
    /// last wins.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Repr {
        let mut repr = Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq: packet.seq_number(),
            ack: packet.ack_number(),
            flags: packet.flags(),
            window: packet.window_len(),
            wscale: None,
            sack_perm: false,
            mss: None,
            header_len: packet.header_len(),
        };
        for option in packet.options() {
            match option {
                TcpOption::WindowScale(shift) => repr.wscale = Some(shift.min(MAX_WINDOW_SCALE)),
                TcpOption::SackPermitted => repr.sack_perm = true,
                TcpOption::MaxSegmentSize(mss) => repr.mss = Some(mss),
                _ => {}
            }
        }
        repr
    }

    /// The option bytes [`Repr::emit`] writes, before padding to `header_len`.
    fn options_len(&self) -> usize {
        let mss = if self.mss.is_some() { 4 } else { 0 };
        // NOP + window scale, and SACK-permitted padded with two NOPs, keep 4-byte alignment
        // the way Linux lays them out.
        let wscale = if self.wscale.is_some() { 4 } else { 0 };
        let sack = if self.sack_perm { 4 } else { 0 };
        mss + wscale + sack
    }

    /// The header length `emit` writes: `header_len`, or more if the options need more room,
    /// rounded up to a multiple of 4 and at most 60.
    pub fn buffer_len(&self) -> usize {
        let needed = (HEADER_LEN + self.options_len()).max(self.header_len);
        needed.next_multiple_of(4).min(MAX_HEADER_LEN)
    }

    /// Writes the header (not the payload) into the first [`Repr::buffer_len`] bytes of `buf`,
    /// which must be at least that long. Options: MSS, window scale, SACK-permitted; the rest of
    /// the header up to `header_len` is End-of-List padding. The checksum is left 0: it needs
    /// the IP addresses (the [`super::build`] helpers fill it in).
    pub fn emit(&self, buf: &mut [u8]) {
        let header_len = self.buffer_len();
        let header = &mut buf[..header_len];
        header.fill(0);
        let mut packet = Packet::new_unchecked(&mut *header);
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq);
        packet.set_ack_number(self.ack);
        packet.set_header_len(header_len);
        packet.set_flags(self.flags);
        packet.set_window_len(self.window);
        let mut at = HEADER_LEN;
        if let Some(mss) = self.mss {
            let [hi, lo] = mss.to_be_bytes();
            header[at..at + 4].copy_from_slice(&[option::MSS, 4, hi, lo]);
            at += 4;
        }
        if let Some(shift) = self.wscale {
            header[at..at + 4].copy_from_slice(&[
                option::NO_OPERATION,
                option::WINDOW_SCALE,
                3,
                shift,
            ]);
            at += 4;
        }
        if self.sack_perm {
            header[at..at + 4].copy_from_slice(&[
                option::NO_OPERATION,
                option::NO_OPERATION,
                option::SACK_PERMITTED,
                2,
            ]);
        }
    }
}

fn be16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tuple::ipproto;
    use crate::wire::{build, parse_l3};

    /// The TCP header of a SYN from 127.0.0.1:40001 to 127.0.0.1:5001 (`iperf -c 127.0.0.1`,
    /// `tcpdump -i lo -xx`, Linux 6.x): options MSS 65495, SACK-permitted, timestamps, NOP,
    /// window scale 7, in the order Linux sends them. The checksum is the partial one loopback
    /// captures show (offloaded, never completed).
    pub(crate) const LOOPBACK_SYN_TCP: [u8; 40] = [
        0x9c, 0x41, 0x13, 0x89, // ports 40001 -> 5001
        0x2f, 0x6b, 0x1c, 0x3a, // seq
        0x00, 0x00, 0x00, 0x00, // ack
        0xa0, 0x02, 0xff, 0xd7, // data offset 10, SYN, window 65495
        0xfe, 0x30, 0x00, 0x00, // checksum, urgent pointer
        0x02, 0x04, 0xff, 0xd7, // MSS 65495
        0x04, 0x02, // SACK permitted
        0x08, 0x0a, 0x9a, 0x3b, 0x1c, 0x5d, 0x00, 0x00, 0x00, 0x00, // timestamps
        0x01, // NOP
        0x03, 0x03, 0x07, // window scale 7
    ];

    /// The SYN-ACK answering it: MSS, SACK-permitted, timestamps, NOP, window scale 7, ack =
    /// seq + 1.
    const LOOPBACK_SYN_ACK_TCP: [u8; 40] = [
        0x13, 0x89, 0x9c, 0x41, 0x81, 0x0c, 0x55, 0x02, 0x2f, 0x6b, 0x1c, 0x3b, 0xa0, 0x12, 0xff,
        0xcb, 0xfe, 0x30, 0x00, 0x00, 0x02, 0x04, 0xff, 0xd7, 0x04, 0x02, 0x08, 0x0a, 0x9a, 0x3b,
        0x1c, 0x5d, 0x9a, 0x3b, 0x1c, 0x5d, 0x01, 0x03, 0x03, 0x07,
    ];

    #[test]
    fn parses_a_loopback_syn() {
        let packet = Packet::new_checked(&LOOPBACK_SYN_TCP[..]).unwrap();
        assert_eq!(packet.src_port(), 40001);
        assert_eq!(packet.dst_port(), 5001);
        assert_eq!(packet.seq_number(), 0x2f6b_1c3a);
        assert_eq!(packet.ack_number(), 0);
        assert_eq!(packet.header_len(), 40);
        assert_eq!(packet.flags(), TcpFlags::SYN);
        assert_eq!(packet.window_len(), 65495);
        assert_eq!(packet.checksum(), 0xfe30);
        assert_eq!(packet.urgent_at(), 0);
        assert!(packet.payload().is_empty());
        let options: Vec<_> = packet.options().collect();
        assert_eq!(
            options,
            [
                TcpOption::MaxSegmentSize(65495),
                TcpOption::SackPermitted,
                TcpOption::Timestamp {
                    tsval: 0x9a3b_1c5d,
                    tsecr: 0
                },
                TcpOption::NoOperation,
                TcpOption::WindowScale(7),
            ]
        );
        assert_eq!(
            Repr::parse(&packet),
            Repr {
                src_port: 40001,
                dst_port: 5001,
                seq: 0x2f6b_1c3a,
                ack: 0,
                flags: TcpFlags::SYN,
                window: 65495,
                wscale: Some(7),
                sack_perm: true,
                mss: Some(65495),
                header_len: 40,
            }
        );
    }

    #[test]
    fn parses_the_syn_ack_inside_its_ip_packet() {
        let ip = build::ipv4(
            [127, 0, 0, 1],
            [127, 0, 0, 1],
            ipproto::TCP,
            &LOOPBACK_SYN_ACK_TCP,
        );
        let info = parse_l3(&ip).unwrap();
        let packet = Packet::new_checked(info.l4(&ip)).unwrap();
        let repr = Repr::parse(&packet);
        assert_eq!(repr.flags, TcpFlags::SYN | TcpFlags::ACK);
        assert!(repr.flags.contains(TcpFlags::SYN));
        assert!(!repr.flags.contains(TcpFlags::SYN | TcpFlags::FIN));
        assert_eq!(
            (repr.seq, repr.ack, repr.window),
            (0x810c_5502, 0x2f6b_1c3b, 65483)
        );
        assert_eq!(packet.payload_len(info.l4_wire_len()), 0);
        // The builder filled in a real checksum.
        assert_ne!(packet.checksum(), 0xfe30);
    }

    #[test]
    fn emit_round_trips() {
        let packet = Packet::new_checked(&LOOPBACK_SYN_TCP[..]).unwrap();
        let repr = Repr::parse(&packet);
        let mut buf = vec![0xaa; repr.buffer_len()];
        assert_eq!(buf.len(), 40);
        repr.emit(&mut buf);
        let again = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Repr::parse(&again), repr);
        assert_eq!(again.checksum(), 0);

        let bare = Repr {
            src_port: 5001,
            dst_port: 40001,
            seq: 7,
            ack: 8,
            flags: TcpFlags::ACK | TcpFlags::FIN,
            window: 512,
            wscale: None,
            sack_perm: false,
            mss: None,
            header_len: 20,
        };
        assert_eq!(bare.buffer_len(), 20);
        let mut buf = [0; 20];
        bare.emit(&mut buf);
        assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap()), bare);

        // Options that do not fit the declared header length make it grow.
        let grown = Repr {
            wscale: Some(14),
            sack_perm: true,
            ..bare
        };
        assert_eq!(grown.buffer_len(), 28);
        let mut buf = [0; 28];
        grown.emit(&mut buf);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&buf[..]).unwrap()),
            Repr {
                header_len: 28,
                ..grown
            }
        );
    }

    #[test]
    fn a_window_scale_above_14_is_clamped_in_the_repr_only() {
        let mut header = LOOPBACK_SYN_TCP;
        header[39] = 200;
        let packet = Packet::new_checked(&header[..]).unwrap();
        assert_eq!(packet.options().last(), Some(TcpOption::WindowScale(200)));
        assert_eq!(Repr::parse(&packet).wscale, Some(14));
    }

    #[test]
    fn malformed_options_end_the_walk() {
        let base = |options: &[u8]| build::tcp_with_options(1, 2, 3, 4, 0x02, 5, options, 0);
        let cases: [(&[u8], Vec<TcpOption<'static>>); 7] = [
            // Length byte missing at the end.
            (&[1, 1, 1, 3], vec![TcpOption::NoOperation; 3]),
            // Length below 2.
            (&[3, 1, 7, 0, 4, 2, 0, 0], vec![]),
            // Length past the end.
            (&[4, 2, 8, 10, 0, 0], vec![TcpOption::SackPermitted]),
            // MSS with the wrong length is reported as unknown, and the walk goes on.
            (
                &[2, 3, 5, 4, 2, 0],
                vec![
                    TcpOption::Unknown {
                        kind: 2,
                        data: &[5],
                    },
                    TcpOption::SackPermitted,
                ],
            ),
            // End of list stops even if bytes follow.
            (&[0, 3, 3, 7], vec![]),
            // SACK blocks of 8 bytes.
            (
                &[5, 10, 0, 0, 0, 1, 0, 0, 0, 9, 1, 1],
                vec![
                    TcpOption::SackRange(&[0, 0, 0, 1, 0, 0, 0, 9]),
                    TcpOption::NoOperation,
                    TcpOption::NoOperation,
                ],
            ),
            // A window scale option of length 4 is ignored, as by the kernel.
            (
                &[3, 4, 7, 7],
                vec![TcpOption::Unknown {
                    kind: 3,
                    data: &[7, 7],
                }],
            ),
        ];
        for (options, expected) in cases {
            let header = base(options);
            let packet = Packet::new_checked(&header[..]).unwrap();
            assert_eq!(
                packet.options().collect::<Vec<_>>(),
                expected,
                "options {options:?}"
            );
            let _ = Repr::parse(&packet);
        }
    }

    #[test]
    fn bad_data_offsets_are_refused() {
        for offset in 0..5u8 {
            let mut header = LOOPBACK_SYN_TCP;
            header[12] = offset << 4;
            assert_eq!(
                Packet::new_checked(&header[..]),
                Err(WireError::BadHeaderLength)
            );
        }
        // Data offset 10 (40 bytes) with the options cut by the capture.
        assert_eq!(
            Packet::new_checked(&LOOPBACK_SYN_TCP[..39]),
            Err(WireError::BadHeaderLength)
        );
        let mut header = LOOPBACK_SYN_TCP;
        header[12] = 0xf0;
        assert_eq!(
            Packet::new_checked(&header[..]),
            Err(WireError::BadHeaderLength)
        );
    }

    #[test]
    fn truncated_headers_are_refused() {
        for end in 0..20 {
            assert_eq!(
                Packet::new_checked(&LOOPBACK_SYN_TCP[..end]),
                Err(WireError::Truncated)
            );
        }
        assert_eq!(ports(&LOOPBACK_SYN_TCP[..3]), Err(WireError::Truncated));
        assert_eq!(ports(&LOOPBACK_SYN_TCP[..4]), Ok((40001, 5001)));
    }

    #[test]
    fn payload_length_comes_from_the_ip_length() {
        let segment = build::tcp(1, 2, 3, 4, 0x18, 5, 1000);
        let cut = Packet::new_checked(&segment[..60]).unwrap();
        assert_eq!(cut.payload().len(), 40);
        assert_eq!(cut.payload_len(1020), 1000);
        assert_eq!(cut.payload_len(10), 0);
    }

    #[test]
    fn flags_print_by_name() {
        assert_eq!(format!("{:?}", TcpFlags::SYN | TcpFlags::ACK), "SYN|ACK");
        assert_eq!(format!("{:?}", TcpFlags::empty()), "none");
        assert!((TcpFlags::RST | TcpFlags::ACK).intersects(TcpFlags::RST | TcpFlags::SYN));
        assert_eq!((TcpFlags(0xff) & TcpFlags::FIN).bits(), 0x01);
    }
}
