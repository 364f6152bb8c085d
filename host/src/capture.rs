//! Reading capture files (pcap and pcapng) into the L3 packets the engine ingests.
//!
//! The engine sees IPv4/IPv6 packets from the IP header on, with a timestamp in nanoseconds; a
//! capture file wraps them in a record format (pcap or pcapng, either byte order, microsecond or
//! nanosecond or any pcapng `if_tsresol`) and a link layer (Ethernet with VLAN tags, Linux cooked
//! v1/v2, raw IP, BSD null/loopback). This module peels both off and nothing else: it does not
//! look inside the IP packet, because judging the packet is the engine's job (a truncated IP
//! header is the engine's `invalid`, not a capture error).
//!
//! Two kinds of trouble are told apart:
//! - a frame that is fine but carries no IP (ARP, LLDP, an unknown link type) is *skipped* and
//!   counted by reason, so a replay summary can say what it left out;
//! - a file whose framing is broken (bad magic, a record running past the end of the file, a block
//!   whose trailer disagrees with its header) is an *error* naming the file and the byte offset of
//!   the record, so the user can open it in a hex editor. Nothing panics on hostile input.
//!
//! [`CaptureReader`] reads a file one record at a time, so a capture of any size is replayed
//! in bounded memory; it walks each record with pcap-file's slice parsers, which is what makes
//! byte offsets exact. A file cut short in its last record (a capture stopped mid-write) yields
//! every whole packet before the cut, then an error marked as a truncation.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::PcapNgParser;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::{Endianness, PcapError, TsResolution};

/// One packet as the engine takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedPacket {
    /// Capture time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The IPv4 or IPv6 packet, starting at the IP header (possibly cut by the snap length).
    pub l3: Vec<u8>,
    /// Which way it crossed the interface, where the capture says so.
    pub direction: LinkDirection,
}

impl CapturedPacket {
    /// A packet whose direction the capture does not say.
    pub fn new(ts_ns: u64, l3: Vec<u8>) -> CapturedPacket {
        CapturedPacket {
            ts_ns,
            l3,
            direction: LinkDirection::Unknown,
        }
    }
}

/// Which way a packet crossed the interface it was captured on: Linux cooked headers carry it
/// as the packet type, pcapng as `epb_flags`, a live packet socket as `sll_pkttype`; plain
/// Ethernet and raw-IP captures do not say. It matters because conntrack verifies checksums
/// only on packets that arrive (see `ctwasm_core::batch::PACKET_FLAG_ARRIVED`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LinkDirection {
    #[default]
    Unknown,
    /// Received: to this host, broadcast, multicast, or to another host (promiscuous).
    Inbound,
    /// Sent by this host; also loopback's traffic, which conntrack meets on its way out.
    Outbound,
}

impl LinkDirection {
    /// From a Linux packet type (`PACKET_HOST` 0 ... `PACKET_OUTGOING` 4) and the interface's
    /// `ARPHRD_*` type: everything on loopback counts as sent, since the local stack sent it
    /// and conntrack tracked it at LOCAL_OUT (the received copy only passes the tap again).
    pub fn from_linux(pkttype: u8, hatype: u16) -> LinkDirection {
        const ARPHRD_LOOPBACK: u16 = 772;
        match pkttype {
            _ if hatype == ARPHRD_LOOPBACK => LinkDirection::Outbound,
            0..=3 => LinkDirection::Inbound,
            4 => LinkDirection::Outbound,
            _ => LinkDirection::Unknown,
        }
    }
}

/// The container format a capture was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureFormat {
    Pcap,
    PcapNg,
}

/// Why a frame was left out. Ordered, so that summaries list reasons in a stable order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// An Ethernet or Linux cooked frame whose (innermost) protocol is not IPv4/IPv6.
    NonIpEtherType(u16),
    /// A null/loopback frame whose address family is not IPv4/IPv6.
    NonIpAddressFamily(u32),
    /// A raw-IP frame whose version nibble is neither 4 nor 6.
    NonIpVersion(u8),
    /// The frame is shorter than its link-layer header.
    TruncatedLinkHeader,
    /// A link type this reader does not unwrap.
    UnsupportedLinkType(u32),
    /// A pcapng Simple Packet Block: it has no timestamp to replay it at.
    NoTimestamp,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SkipReason::NonIpEtherType(t) => {
                write!(f, "non-IP ethertype 0x{t:04x}")?;
                match t {
                    0x0806 => write!(f, " (ARP)"),
                    0x8035 => write!(f, " (RARP)"),
                    0x88cc => write!(f, " (LLDP)"),
                    0x8809 => write!(f, " (slow protocols)"),
                    0x888e => write!(f, " (EAPOL)"),
                    t if t < 0x0600 => write!(f, " (802.3 length field)"),
                    _ => Ok(()),
                }
            }
            SkipReason::NonIpAddressFamily(af) => write!(f, "non-IP address family {af}"),
            SkipReason::NonIpVersion(v) => write!(f, "raw frame with IP version {v}"),
            SkipReason::TruncatedLinkHeader => {
                write!(f, "frame shorter than its link-layer header")
            }
            SkipReason::UnsupportedLinkType(l) => write!(f, "unsupported link type {l}"),
            SkipReason::NoTimestamp => write!(f, "simple packet block without a timestamp"),
        }
    }
}

/// A capture read into memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    pub format: CaptureFormat,
    /// The IP packets, in file order (which is not necessarily time order).
    pub packets: Vec<CapturedPacket>,
    /// Frames left out, counted by reason.
    pub skipped: BTreeMap<SkipReason, u64>,
}

impl Capture {
    /// Total number of frames left out.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// A broken capture file: what is wrong and the byte offset of the record where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureError {
    pub offset: usize,
    pub problem: String,
    /// The file ends inside this record: every record before it was whole.
    pub truncated: bool,
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte offset {}", self.problem, self.offset)
    }
}

impl std::error::Error for CaptureError {}

impl CaptureError {
    fn new(offset: usize, problem: impl Into<String>) -> CaptureError {
        CaptureError {
            offset,
            problem: problem.into(),
            truncated: false,
        }
    }

    /// The file ends inside the record at (relative) offset 0.
    fn truncation(problem: String) -> CaptureError {
        CaptureError {
            truncated: true,
            ..CaptureError::new(0, problem)
        }
    }
}

/// Reads a whole pcap or pcapng file; errors name the file and the byte offset of the bad
/// record. For files of any size, [`CaptureReader::open`] reads one record at a time instead.
pub fn read_capture(path: &Path) -> anyhow::Result<Capture> {
    let reader = CaptureReader::open(path)?;
    collect(reader).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Parses a whole capture held in memory, telling pcap from pcapng by the first four bytes.
pub fn parse_capture(bytes: &[u8]) -> Result<Capture, CaptureError> {
    collect(CaptureReader::new(bytes))
}

fn collect<R: Read>(mut reader: CaptureReader<R>) -> Result<Capture, CaptureError> {
    let mut packets = Vec::new();
    for packet in reader.by_ref() {
        packets.push(packet?);
    }
    Ok(Capture {
        format: reader.format().unwrap_or(CaptureFormat::Pcap),
        packets,
        skipped: reader.skipped,
    })
}

/// Bytes asked of the source at a time.
const READ_CHUNK: usize = 256 * 1024;

/// The largest record (a pcap packet record or a pcapng block) the streaming reader holds: far
/// above any snap length (tcpdump's largest is 256 KiB), low enough that a hostile length field
/// cannot make it buffer a whole file.
pub const MAX_RECORD_LEN: usize = 64 * 1024 * 1024;

/// Where a reader is in its file.
enum Format {
    /// Nothing read yet: the file header decides.
    Unknown,
    Pcap {
        parser: PcapParser,
        link: u32,
        big_endian: bool,
        frac_per_sec: u64,
    },
    PcapNg {
        parser: PcapNgParser,
        interfaces: Vec<Interface>,
    },
    /// An error was returned: the reader yields nothing more.
    Failed,
}

/// Reads a capture one record at a time, holding only the record in hand (plus a read-ahead of
/// [`READ_CHUNK`]), so a file of any size is replayed in bounded memory. Yields the IP packets
/// in file order; frames without IP are counted in [`CaptureReader::skipped`]. A broken record
/// ends the iteration with an error naming its byte offset; [`CaptureError::truncated`] tells
/// a file cut short (everything before the cut was whole and was yielded) from one malformed.
///
/// Written around pcap-file's slice parsers, not its `Read`-based readers, because the slice
/// parsers say exactly where a record breaks, which the error messages report.
pub struct CaptureReader<R> {
    source: R,
    /// Bytes read and not yet consumed start at `buf[start]`; `buf[0]` is file offset `base`.
    buf: Vec<u8>,
    start: usize,
    base: u64,
    eof: bool,
    format: Format,
    /// Frames left out so far, by reason.
    pub skipped: BTreeMap<SkipReason, u64>,
}

impl<R> fmt::Debug for CaptureReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureReader")
            .field("offset", &self.offset())
            .field("format", &self.format())
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

impl CaptureReader<std::io::BufReader<std::fs::File>> {
    /// Opens a capture file for reading record by record.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::open(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        Ok(CaptureReader::new(std::io::BufReader::with_capacity(
            READ_CHUNK, file,
        )))
    }
}

impl<R> CaptureReader<R> {
    /// The container format, once the file header has been read.
    pub fn format(&self) -> Option<CaptureFormat> {
        match self.format {
            Format::Pcap { .. } => Some(CaptureFormat::Pcap),
            Format::PcapNg { .. } => Some(CaptureFormat::PcapNg),
            Format::Unknown | Format::Failed => None,
        }
    }

    /// The file offset of the next record: how far the reader got.
    pub fn offset(&self) -> u64 {
        self.base + self.start as u64
    }

    /// Total number of frames left out so far.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

impl<R: Read> CaptureReader<R> {
    pub fn new(source: R) -> Self {
        CaptureReader {
            source,
            buf: Vec::new(),
            start: 0,
            base: 0,
            eof: false,
            format: Format::Unknown,
            skipped: BTreeMap::new(),
        }
    }

    /// Reads more of the source into the buffer, dropping what was consumed; false at the end
    /// of the file.
    fn fill(&mut self) -> Result<bool, CaptureError> {
        if self.eof {
            return Ok(false);
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.base += self.start as u64;
            self.start = 0;
        }
        if self.buf.len() >= MAX_RECORD_LEN {
            return Err(CaptureError::new(
                self.offset() as usize,
                format!("a record longer than the reader's limit of {MAX_RECORD_LEN} bytes"),
            ));
        }
        let old = self.buf.len();
        // `take` + `read_to_end` appends without zeroing the space first, and retries
        // interrupted reads.
        let read = (&mut self.source)
            .take(READ_CHUNK as u64)
            .read_to_end(&mut self.buf)
            .map_err(|e| {
                CaptureError::new(self.offset() as usize + old, format!("read error: {e}"))
            })?;
        self.eof = read == 0;
        Ok(read > 0)
    }

    /// The next packet, `None` at a clean end of file.
    fn next_packet(&mut self) -> Result<Option<CapturedPacket>, CaptureError> {
        loop {
            if self.start == self.buf.len() && !self.fill()? {
                return match self.format {
                    Format::Unknown => {
                        Err(CaptureError::new(0, "file too short for a capture header"))
                    }
                    _ => Ok(None),
                };
            }
            let avail = &self.buf[self.start..];
            let at_eof = self.eof;
            let step = match &mut self.format {
                Format::Unknown => start_file(avail, at_eof).map(|(used, format)| {
                    self.format = format;
                    (used, None)
                }),
                Format::Pcap {
                    parser,
                    link,
                    big_endian,
                    frac_per_sec,
                } => pcap_record(parser, *link, *big_endian, *frac_per_sec, avail, at_eof),
                Format::PcapNg { parser, interfaces } => {
                    pcapng_block(parser, interfaces, avail, at_eof)
                }
                Format::Failed => return Ok(None),
            };
            match step {
                Ok((used, frame)) => {
                    self.start += used;
                    match frame {
                        Some(Ok(packet)) => return Ok(Some(packet)),
                        Some(Err(reason)) => *self.skipped.entry(reason).or_insert(0) += 1,
                        None => {}
                    }
                }
                Err(Step::NeedMore) => {
                    self.fill()?;
                }
                Err(Step::Broken(mut e)) => {
                    e.offset += self.offset() as usize;
                    return Err(e);
                }
            }
        }
    }
}

impl<R: Read> Iterator for CaptureReader<R> {
    type Item = Result<CapturedPacket, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_packet() {
            Ok(packet) => packet.map(Ok),
            Err(e) => {
                self.format = Format::Failed;
                Some(Err(e))
            }
        }
    }
}

/// Why a record could not be read from the bytes in hand.
enum Step {
    /// The record runs past the bytes read so far, and the file goes on: read more.
    NeedMore,
    /// The file is broken here (offset relative to the record's start).
    Broken(CaptureError),
}

/// What one record gave: bytes consumed, and a packet, a skipped frame or nothing (a block
/// that carries no frame).
type Record = (usize, Option<Result<CapturedPacket, SkipReason>>);

fn start_file(avail: &[u8], at_eof: bool) -> Result<(usize, Format), Step> {
    let broken = |problem: String| Err(Step::Broken(CaptureError::new(0, problem)));
    if avail.len() < 4 {
        return if at_eof {
            broken("file too short for a capture header".into())
        } else {
            Err(Step::NeedMore)
        };
    }
    if avail[..4] == PCAPNG_SHB_MAGIC {
        return match PcapNgParser::new(avail) {
            Ok((rest, parser)) => Ok((
                avail.len() - rest.len(),
                Format::PcapNg {
                    parser,
                    interfaces: Vec::new(),
                },
            )),
            Err(PcapError::IncompleteBuffer) if !at_eof => Err(Step::NeedMore),
            Err(PcapError::IncompleteBuffer) => broken("truncated section header block".into()),
            Err(other) => broken(format!("malformed section header block: {other}")),
        };
    }
    match PcapParser::new(avail) {
        Ok((rest, parser)) => {
            let header = parser.header();
            let format = Format::Pcap {
                link: u32::from(header.datalink),
                big_endian: header.endianness == Endianness::Big,
                frac_per_sec: match header.ts_resolution {
                    TsResolution::MicroSecond => 1_000_000,
                    TsResolution::NanoSecond => 1_000_000_000,
                },
                parser,
            };
            Ok((avail.len() - rest.len(), format))
        }
        Err(PcapError::IncompleteBuffer) if !at_eof => Err(Step::NeedMore),
        Err(PcapError::IncompleteBuffer) => broken("truncated pcap file header".into()),
        Err(_) => broken("not a pcap or pcapng file (unknown magic number)".into()),
    }
}

fn pcap_record(
    parser: &PcapParser,
    link: u32,
    big_endian: bool,
    frac_per_sec: u64,
    rest: &[u8],
    at_eof: bool,
) -> Result<Record, Step> {
    let broken = |problem: String| Step::Broken(CaptureError::new(0, problem));
    let (rem, raw) = match parser.next_raw_packet(rest) {
        Ok(r) => r,
        Err(PcapError::IncompleteBuffer) if !at_eof => return Err(Step::NeedMore),
        Err(PcapError::IncompleteBuffer) if rest.len() < 16 => {
            return Err(Step::Broken(CaptureError::truncation(format!(
                "truncated packet record header ({} of 16 bytes)",
                rest.len()
            ))));
        }
        Err(PcapError::IncompleteBuffer) => {
            return Err(Step::Broken(CaptureError::truncation(format!(
                "truncated packet record ({} bytes captured, {} left in the file)",
                record_incl_len(rest, big_endian),
                rest.len() - 16
            ))));
        }
        Err(other) => return Err(broken(format!("malformed packet record: {other}"))),
    };
    let frac = u64::from(raw.ts_frac);
    if frac >= frac_per_sec {
        return Err(broken(format!(
            "packet record timestamp fraction {frac} is not below {frac_per_sec}"
        )));
    }
    let ts_ns = u64::from(raw.ts_sec) * 1_000_000_000 + frac * (1_000_000_000 / frac_per_sec);
    let frame = l3_payload(link, big_endian, &raw.data).map(|l3| CapturedPacket {
        ts_ns,
        l3: l3.to_vec(),
        direction: cooked_direction(link, &raw.data),
    });
    Ok((rest.len() - rem.len(), Some(frame)))
}

fn pcapng_block(
    parser: &mut PcapNgParser,
    interfaces: &mut Vec<Interface>,
    rest: &[u8],
    at_eof: bool,
) -> Result<Record, Step> {
    let broken = |problem: String| Step::Broken(CaptureError::new(0, problem));
    let big_endian = parser.section().endianness == Endianness::Big;
    let (rem, block) = match parser.next_raw_block(rest) {
        Ok(r) => r,
        // pcap-file also says "incomplete" for an option too short for its value; only a
        // block that really runs past the end of the file is a truncation.
        Err(PcapError::IncompleteBuffer) if block_fits(rest, big_endian) => {
            return Err(broken(
                "malformed block: an option is shorter than its value".into(),
            ));
        }
        Err(PcapError::IncompleteBuffer) if !at_eof => return Err(Step::NeedMore),
        Err(PcapError::IncompleteBuffer) => {
            return Err(Step::Broken(CaptureError::truncation(format!(
                "truncated block ({} bytes left in the file)",
                rest.len()
            ))));
        }
        Err(other) => return Err(broken(format!("malformed block: {other}"))),
    };
    let used = rest.len() - rem.len();
    // A new section may have switched the byte order.
    let big_endian = parser.section().endianness == Endianness::Big;
    let body = &block.body[..];
    let frame = match block.type_ {
        PCAPNG_SHB => {
            interfaces.clear();
            None
        }
        PCAPNG_IDB => {
            let Some(idb) = parser.interfaces().last() else {
                return Err(broken("interface description block lost".into()));
            };
            interfaces.push(interface_of(idb).map_err(broken)?);
            None
        }
        PCAPNG_EPB | PCAPNG_PB => {
            let packet = packet_block(block.type_, body, big_endian).map_err(broken)?;
            let Some(iface) = interfaces.get(packet.interface as usize) else {
                return Err(broken(format!(
                    "packet for undeclared interface {}",
                    packet.interface
                )));
            };
            let ts_ns = scale_timestamp(packet.timestamp, iface);
            // A cooked header's packet type, else the block's own flags.
            let direction = match cooked_direction(iface.link, packet.data) {
                LinkDirection::Unknown => packet.direction,
                known => known,
            };
            Some(
                l3_payload(iface.link, big_endian, packet.data).map(|l3| CapturedPacket {
                    ts_ns,
                    l3: l3.to_vec(),
                    direction,
                }),
            )
        }
        PCAPNG_SPB => Some(Err(SkipReason::NoTimestamp)),
        _ => None,
    };
    Ok((used, frame))
}

/// Block type of the pcapng Section Header Block, the same in both byte orders.
const PCAPNG_SHB_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
const PCAPNG_SHB: u32 = 0x0a0d_0d0a;
const PCAPNG_IDB: u32 = 1;
const PCAPNG_PB: u32 = 2;
const PCAPNG_SPB: u32 = 3;
const PCAPNG_EPB: u32 = 6;

/// Link-layer header types (tcpdump.org `LINKTYPE_*`).
mod linktype {
    pub const NULL: u32 = 0;
    pub const ETHERNET: u32 = 1;
    /// `DLT_RAW` has the value 12 or 14 on some BSDs, 101 in files.
    pub const RAW_BSD_12: u32 = 12;
    pub const RAW_BSD_14: u32 = 14;
    pub const RAW: u32 = 101;
    pub const LOOP: u32 = 108;
    pub const LINUX_SLL: u32 = 113;
    pub const IPV4: u32 = 228;
    pub const IPV6: u32 = 229;
    pub const LINUX_SLL2: u32 = 276;
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// 802.1Q, 802.1ad (QinQ) and the old pre-standard QinQ tag.
const ETHERTYPE_VLAN_TAGS: [u16; 3] = [0x8100, 0x88a8, 0x9100];

/// The `incl_len` field of a pcap record header that is known to be 16 bytes long.
fn record_incl_len(record: &[u8], big_endian: bool) -> u32 {
    let b = [record[8], record[9], record[10], record[11]];
    if big_endian {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    }
}

/// What the packets of one pcapng interface need: the link type and the timestamp scale.
#[derive(Clone, Copy, Debug)]
struct Interface {
    link: u32,
    /// Timestamp units per second (`if_tsresol`; microseconds by default).
    units_per_sec: u64,
    /// `if_tsoffset`, seconds added to every timestamp.
    offset_secs: u64,
}

/// Whether the block at the start of `rest` lies wholly inside the file (by its declared length).
fn block_fits(rest: &[u8], big_endian: bool) -> bool {
    let Some(b) = rest.get(4..8).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
        return false;
    };
    let declared = if big_endian {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    };
    declared >= 12 && declared as usize <= rest.len()
}

fn interface_of(
    idb: &pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock<'_>,
) -> Result<Interface, String> {
    let mut iface = Interface {
        link: u32::from(idb.linktype),
        units_per_sec: 1_000_000,
        offset_secs: 0,
    };
    for option in &idb.options {
        match option {
            InterfaceDescriptionOption::IfTsResol(r) => {
                let exponent = u32::from(r & 0x7f);
                let units = if r & 0x80 == 0 {
                    10u64.checked_pow(exponent)
                } else {
                    2u64.checked_pow(exponent)
                };
                iface.units_per_sec =
                    units.ok_or_else(|| format!("unsupported if_tsresol 0x{r:02x}"))?;
            }
            InterfaceDescriptionOption::IfTsOffset(secs) => iface.offset_secs = *secs,
            _ => {}
        }
    }
    Ok(iface)
}

/// Converts a pcapng timestamp in interface units to nanoseconds (saturating far in the future).
fn scale_timestamp(units: u64, iface: &Interface) -> u64 {
    let ns = u128::from(units) * 1_000_000_000 / u128::from(iface.units_per_sec)
        + u128::from(iface.offset_secs) * 1_000_000_000;
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// The fields of an Enhanced Packet Block or an (obsolete) Packet Block.
struct PacketBlock<'a> {
    interface: u32,
    timestamp: u64,
    data: &'a [u8],
    direction: LinkDirection,
}

/// Reads an EPB or PB body. Of the options only an EPB's `epb_flags` is read, for the packet's
/// direction, and leniently: an option list that does not parse leaves the direction unknown
/// rather than make a good packet unreadable.
fn packet_block(kind: u32, body: &[u8], big_endian: bool) -> Result<PacketBlock<'_>, String> {
    let name = if kind == PCAPNG_EPB {
        "enhanced packet block"
    } else {
        "packet block"
    };
    let word = |i: usize| -> Option<u32> {
        let b: [u8; 4] = body.get(i * 4..i * 4 + 4)?.try_into().ok()?;
        Some(if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let (Some(w0), Some(hi), Some(lo), Some(caplen)) = (word(0), word(1), word(2), word(3)) else {
        return Err(format!("{name} shorter than its fixed fields"));
    };
    if word(4).is_none() {
        return Err(format!("{name} shorter than its fixed fields"));
    }
    let interface = if kind == PCAPNG_EPB {
        w0
    } else if big_endian {
        w0 >> 16
    } else {
        w0 & 0xffff
    };
    let data = body
        .get(20..)
        .and_then(|d| d.get(..caplen as usize))
        .ok_or_else(|| format!("{name} captured length {caplen} runs past the block"))?;
    let direction = if kind == PCAPNG_EPB {
        let options = body.get(20 + (caplen as usize).next_multiple_of(4)..);
        epb_direction(options.unwrap_or(&[]), big_endian)
    } else {
        LinkDirection::Unknown
    };
    Ok(PacketBlock {
        interface,
        timestamp: (u64::from(hi) << 32) | u64::from(lo),
        data,
        direction,
    })
}

/// The direction bits (0–1) of an EPB's `epb_flags` option (code 2, four bytes): 1 inbound, 2
/// outbound.
fn epb_direction(mut options: &[u8], big_endian: bool) -> LinkDirection {
    const EPB_FLAGS: u16 = 2;
    let u16_at = |b: &[u8], i: usize| -> Option<u16> {
        let w: [u8; 2] = b.get(i..i + 2)?.try_into().ok()?;
        Some(if big_endian {
            u16::from_be_bytes(w)
        } else {
            u16::from_le_bytes(w)
        })
    };
    while let (Some(code), Some(len)) = (u16_at(options, 0), u16_at(options, 2)) {
        let len = usize::from(len);
        let Some(value) = options.get(4..4 + len) else {
            break;
        };
        if code == 0 {
            break;
        }
        if code == EPB_FLAGS && len == 4 {
            let w: [u8; 4] = value.try_into().expect("4 bytes");
            let flags = if big_endian {
                u32::from_be_bytes(w)
            } else {
                u32::from_le_bytes(w)
            };
            return match flags & 3 {
                1 => LinkDirection::Inbound,
                2 => LinkDirection::Outbound,
                _ => LinkDirection::Unknown,
            };
        }
        options = options.get(4 + len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    LinkDirection::Unknown
}

/// The direction a Linux cooked header records (v1: packet type at 0, `ARPHRD_*` at 2; v2:
/// `ARPHRD_*` at 8, packet type at 10).
fn cooked_direction(link: u32, frame: &[u8]) -> LinkDirection {
    let (pkttype, hatype) = match link {
        linktype::LINUX_SLL => (
            be16(frame, 0)
                .ok()
                .map(|t| u8::try_from(t).unwrap_or(u8::MAX)),
            be16(frame, 2).ok(),
        ),
        linktype::LINUX_SLL2 => (frame.get(10).copied(), be16(frame, 8).ok()),
        _ => return LinkDirection::Unknown,
    };
    match (pkttype, hatype) {
        (Some(t), Some(h)) => LinkDirection::from_linux(t, h),
        _ => LinkDirection::Unknown,
    }
}

/// Strips the link-layer header of `frame`, or says why the frame carries no IP packet.
fn l3_payload(link: u32, file_big_endian: bool, frame: &[u8]) -> Result<&[u8], SkipReason> {
    match link {
        linktype::ETHERNET => {
            let mut at = 12;
            let mut ethertype = be16(frame, at)?;
            while ETHERTYPE_VLAN_TAGS.contains(&ethertype) {
                at += 4;
                ethertype = be16(frame, at)?;
            }
            ip_by_ethertype(ethertype, frame, at + 2)
        }
        linktype::LINUX_SLL => ip_by_ethertype(be16(frame, 14)?, frame, 16),
        linktype::LINUX_SLL2 => ip_by_ethertype(be16(frame, 0)?, frame, 20),
        linktype::RAW | linktype::RAW_BSD_12 | linktype::RAW_BSD_14 => match frame.first() {
            None => Err(SkipReason::TruncatedLinkHeader),
            Some(b) if matches!(b >> 4, 4 | 6) => Ok(frame),
            Some(b) => Err(SkipReason::NonIpVersion(b >> 4)),
        },
        linktype::IPV4 | linktype::IPV6 => Ok(frame),
        linktype::NULL | linktype::LOOP => {
            let b: [u8; 4] = frame
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or(SkipReason::TruncatedLinkHeader)?;
            // DLT_NULL stores the family in the capturing host's byte order (the file's); LOOP
            // always in network order.
            let af = if link == linktype::LOOP || file_big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            };
            match af {
                // AF_INET everywhere; AF_INET6 is 24 (NetBSD/OpenBSD), 28 (FreeBSD), 30 (macOS).
                2 | 24 | 28 | 30 => Ok(&frame[4..]),
                _ => Err(SkipReason::NonIpAddressFamily(af)),
            }
        }
        other => Err(SkipReason::UnsupportedLinkType(other)),
    }
}

fn be16(frame: &[u8], at: usize) -> Result<u16, SkipReason> {
    match frame.get(at..at + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(SkipReason::TruncatedLinkHeader),
    }
}

fn ip_by_ethertype(ethertype: u16, frame: &[u8], header_len: usize) -> Result<&[u8], SkipReason> {
    if ethertype != ETHERTYPE_IPV4 && ethertype != ETHERTYPE_IPV6 {
        return Err(SkipReason::NonIpEtherType(ethertype));
    }
    frame
        .get(header_len..)
        .ok_or(SkipReason::TruncatedLinkHeader)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal IPv4 header (20 bytes, UDP) and an IPv6 header (40 bytes, UDP), enough to be told
    /// apart; the reader does not look inside them.
    fn ipv4() -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 17, 0, 0];
        p.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
        p
    }
    fn ipv6() -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, 17, 64];
        p.extend_from_slice(&[0; 15]);
        p.push(1);
        p.extend_from_slice(&[0; 15]);
        p.push(1);
        p
    }
    fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Builds a pcap file: `nano` picks the nanosecond magic, `big` the byte order.
    fn pcap(link: u32, nano: bool, big: bool, records: &[(u32, u32, &[u8])]) -> Vec<u8> {
        let w32 = |v: u32| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let w16 = |v: u16| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut f = Vec::new();
        f.extend_from_slice(&w32(if nano { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }));
        f.extend_from_slice(&w16(2));
        f.extend_from_slice(&w16(4));
        f.extend_from_slice(&w32(0));
        f.extend_from_slice(&w32(0));
        f.extend_from_slice(&w32(65535));
        f.extend_from_slice(&w32(link));
        for (sec, frac, data) in records {
            f.extend_from_slice(&w32(*sec));
            f.extend_from_slice(&w32(*frac));
            f.extend_from_slice(&w32(data.len() as u32));
            f.extend_from_slice(&w32(data.len() as u32));
            f.extend_from_slice(data);
        }
        f
    }

    /// pcapng building blocks, little- or big-endian.
    struct Ng {
        big: bool,
        bytes: Vec<u8>,
    }
    impl Ng {
        fn new(big: bool) -> Ng {
            let mut ng = Ng {
                big,
                bytes: Vec::new(),
            };
            let mut body = Vec::new();
            body.extend_from_slice(&ng.w32(0x1a2b_3c4d));
            body.extend_from_slice(&ng.w16(1));
            body.extend_from_slice(&ng.w16(0));
            body.extend_from_slice(&(-1i64).to_le_bytes());
            ng.block(PCAPNG_SHB, &body);
            ng
        }
        fn w32(&self, v: u32) -> [u8; 4] {
            if self.big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        }
        fn w16(&self, v: u16) -> [u8; 2] {
            if self.big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        }
        fn block(&mut self, kind: u32, body: &[u8]) {
            let mut body = body.to_vec();
            while !body.len().is_multiple_of(4) {
                body.push(0);
            }
            let len = body.len() as u32 + 12;
            let (k, l) = (self.w32(kind), self.w32(len));
            self.bytes.extend_from_slice(&k);
            self.bytes.extend_from_slice(&l);
            self.bytes.extend_from_slice(&body);
            self.bytes.extend_from_slice(&l);
        }
        fn interface(&mut self, link: u16, tsresol: Option<u8>) -> &mut Ng {
            let mut body = Vec::new();
            body.extend_from_slice(&self.w16(link));
            body.extend_from_slice(&self.w16(0));
            body.extend_from_slice(&self.w32(65535));
            if let Some(r) = tsresol {
                body.extend_from_slice(&self.w16(9));
                body.extend_from_slice(&self.w16(1));
                body.extend_from_slice(&[r, 0, 0, 0]);
                body.extend_from_slice(&self.w16(0));
                body.extend_from_slice(&self.w16(0));
            }
            self.block(PCAPNG_IDB, &body);
            self
        }
        fn packet(&mut self, interface: u32, ts: u64, data: &[u8]) -> &mut Ng {
            self.packet_with(interface, ts, data, &[])
        }
        /// An EPB with raw option bytes after its (padded) data.
        fn packet_with(&mut self, interface: u32, ts: u64, data: &[u8], options: &[u8]) -> &mut Ng {
            let mut body = Vec::new();
            body.extend_from_slice(&self.w32(interface));
            body.extend_from_slice(&self.w32((ts >> 32) as u32));
            body.extend_from_slice(&self.w32(ts as u32));
            body.extend_from_slice(&self.w32(data.len() as u32));
            body.extend_from_slice(&self.w32(data.len() as u32));
            body.extend_from_slice(data);
            body.resize(body.len().next_multiple_of(4), 0);
            body.extend_from_slice(options);
            self.block(PCAPNG_EPB, &body);
            self
        }
        /// One option: code, length, value padded to 4.
        fn option(&self, code: u16, value: &[u8]) -> Vec<u8> {
            let mut o = self.w16(code).to_vec();
            o.extend_from_slice(&self.w16(value.len() as u16));
            o.extend_from_slice(value);
            o.resize(o.len().next_multiple_of(4), 0);
            o
        }
    }

    /// Linux cooked headers say which way each packet went (v1 and v2, loopback's copies
    /// counted as sent); plain Ethernet does not.
    #[test]
    fn cooked_headers_carry_the_direction() {
        let sll = |pkttype: u16, hatype: u16| {
            let mut f = pkttype.to_be_bytes().to_vec();
            f.extend_from_slice(&hatype.to_be_bytes());
            f.extend_from_slice(&[0; 10]);
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            f.extend_from_slice(&ipv4());
            f
        };
        let sll2 = |pkttype: u8, hatype: u16| {
            let mut f = 0x0800u16.to_be_bytes().to_vec();
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&hatype.to_be_bytes());
            f.push(pkttype);
            f.extend_from_slice(&[0; 9]);
            f.extend_from_slice(&ipv4());
            f
        };
        use LinkDirection::*;
        for (pkttype, hatype, want) in [
            (0, 1, Inbound),
            (1, 1, Inbound),
            (3, 1, Inbound),
            (4, 1, Outbound),
            (0, 772, Outbound),
            (4, 772, Outbound),
            (7, 1, Unknown),
        ] {
            let c = parse_capture(&pcap(113, true, false, &[(1, 0, &sll(pkttype, hatype))]));
            assert_eq!(
                c.unwrap().packets[0].direction,
                want,
                "v1 {pkttype} {hatype}"
            );
            let c = parse_capture(&pcap(
                276,
                true,
                false,
                &[(1, 0, &sll2(pkttype as u8, hatype))],
            ));
            assert_eq!(
                c.unwrap().packets[0].direction,
                want,
                "v2 {pkttype} {hatype}"
            );
        }
        let c = parse_capture(&pcap(1, true, false, &[(1, 0, &ethernet(0x0800, &ipv4()))]));
        assert_eq!(c.unwrap().packets[0].direction, Unknown);
    }

    /// pcapng's `epb_flags` carries the direction, in either byte order, after other options;
    /// an option list that does not parse leaves it unknown and the packet readable.
    #[test]
    fn pcapng_epb_flags_carry_the_direction() {
        for big in [false, true] {
            let mut ng = Ng::new(big);
            let flags = |v: u32| {
                let b = if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                ng.option(2, &b)
            };
            let (inbound, outbound, neither) = (flags(1), flags(2 | 0x100), flags(0));
            let comment = ng.option(1, b"a comment");
            let end = ng.option(0, &[]);
            let broken = [ng.w16(2).to_vec(), ng.w16(400).to_vec()].concat();
            ng.interface(101, Some(9));
            for options in [
                [inbound.clone(), end.clone()].concat(),
                [comment.clone(), outbound, end.clone()].concat(),
                neither,
                Vec::new(),
                broken,
                [comment, end, inbound].concat(),
            ] {
                ng.packet_with(0, 1, &ipv4(), &options);
            }
            let c = parse_capture(&ng.bytes).unwrap();
            let got: Vec<_> = c.packets.iter().map(|p| p.direction).collect();
            use LinkDirection::*;
            assert_eq!(
                got,
                [Inbound, Outbound, Unknown, Unknown, Unknown, Unknown],
                "big endian {big}"
            );
        }
    }

    #[test]
    fn pcap_ethernet_in_both_byte_orders_and_resolutions() {
        let v4 = ipv4();
        let frame = ethernet(0x0800, &v4);
        for big in [false, true] {
            let micro = parse_capture(&pcap(1, false, big, &[(10, 500_000, &frame)])).unwrap();
            assert_eq!(micro.format, CaptureFormat::Pcap);
            assert_eq!(
                micro.packets,
                vec![CapturedPacket::new(10_500_000_000, v4.clone())]
            );
            let nano = parse_capture(&pcap(1, true, big, &[(10, 42, &frame)])).unwrap();
            assert_eq!(nano.packets[0].ts_ns, 10_000_000_042);
        }
    }

    #[test]
    fn ethernet_vlan_and_qinq_tags_are_stripped_and_arp_is_skipped() {
        let v6 = ipv6();
        let mut qinq = vec![0u8; 12];
        qinq.extend_from_slice(&[0x88, 0xa8, 0, 10, 0x81, 0x00, 0, 20, 0x86, 0xdd]);
        qinq.extend_from_slice(&v6);
        let mut dot1q = vec![0u8; 12];
        dot1q.extend_from_slice(&[0x81, 0x00, 0, 5, 0x08, 0x00]);
        dot1q.extend_from_slice(&ipv4());
        let arp = ethernet(0x0806, &[0; 28]);
        let runt = vec![0u8; 10];
        let file = pcap(
            1,
            true,
            false,
            &[(1, 0, &qinq), (2, 0, &dot1q), (3, 0, &arp), (4, 0, &runt)],
        );
        let c = parse_capture(&file).unwrap();
        assert_eq!(c.packets.len(), 2);
        assert_eq!(c.packets[0].l3, v6);
        assert_eq!(c.packets[1].l3, ipv4());
        assert_eq!(c.skipped[&SkipReason::NonIpEtherType(0x0806)], 1);
        assert_eq!(c.skipped[&SkipReason::TruncatedLinkHeader], 1);
        assert_eq!(c.skipped_total(), 2);
        assert_eq!(
            SkipReason::NonIpEtherType(0x0806).to_string(),
            "non-IP ethertype 0x0806 (ARP)"
        );
    }

    #[test]
    fn linux_cooked_v1_and_v2() {
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&0x86ddu16.to_be_bytes());
        sll.extend_from_slice(&ipv6());
        let c = parse_capture(&pcap(113, true, false, &[(1, 0, &sll)])).unwrap();
        assert_eq!(c.packets[0].l3, ipv6());

        let mut sll2 = 0x0800u16.to_be_bytes().to_vec();
        sll2.extend_from_slice(&[0; 18]);
        sll2.extend_from_slice(&ipv4());
        let mut sll2_arp = 0x0806u16.to_be_bytes().to_vec();
        sll2_arp.extend_from_slice(&[0; 18]);
        let c =
            parse_capture(&pcap(276, true, false, &[(1, 0, &sll2), (1, 0, &sll2_arp)])).unwrap();
        assert_eq!(c.packets[0].l3, ipv4());
        assert_eq!(c.skipped[&SkipReason::NonIpEtherType(0x0806)], 1);
    }

    #[test]
    fn raw_ip_link_types() {
        for link in [101, 12, 14] {
            let c = parse_capture(&pcap(
                link,
                false,
                false,
                &[(1, 0, &ipv4()), (1, 0, &ipv6()), (1, 0, &[0x20])],
            ))
            .unwrap();
            assert_eq!(c.packets.len(), 2, "link type {link}");
            assert_eq!(c.skipped[&SkipReason::NonIpVersion(2)], 1);
        }
        let c = parse_capture(&pcap(228, false, false, &[(1, 0, &ipv4())])).unwrap();
        assert_eq!(c.packets[0].l3, ipv4());
        let c = parse_capture(&pcap(229, false, true, &[(1, 0, &ipv6())])).unwrap();
        assert_eq!(c.packets[0].l3, ipv6());
    }

    #[test]
    fn null_uses_the_file_byte_order_and_loop_network_order() {
        let with_af = |af: [u8; 4], p: &[u8]| [&af[..], p].concat();
        // DLT_NULL written on a little-endian host: AF_INET = 2 little-endian.
        let le = pcap(
            0,
            false,
            false,
            &[
                (1, 0, &with_af(2u32.to_le_bytes(), &ipv4())),
                (1, 0, &with_af(30u32.to_le_bytes(), &ipv6())),
            ],
        );
        let c = parse_capture(&le).unwrap();
        assert_eq!(
            c.packets.iter().map(|p| p.l3.clone()).collect::<Vec<_>>(),
            vec![ipv4(), ipv6()]
        );
        // The same frames in a big-endian file: the family is big-endian too.
        let be = pcap(
            0,
            false,
            true,
            &[
                (1, 0, &with_af(28u32.to_be_bytes(), &ipv6())),
                (1, 0, &with_af(7u32.to_be_bytes(), &[])),
            ],
        );
        let c = parse_capture(&be).unwrap();
        assert_eq!(c.packets[0].l3, ipv6());
        assert_eq!(c.skipped[&SkipReason::NonIpAddressFamily(7)], 1);
        // LOOP: network order whatever the file says.
        let lp = pcap(
            108,
            false,
            false,
            &[(1, 0, &with_af(24u32.to_be_bytes(), &ipv6()))],
        );
        assert_eq!(parse_capture(&lp).unwrap().packets[0].l3, ipv6());
    }

    #[test]
    fn unknown_link_type_is_skipped_with_its_number() {
        let c = parse_capture(&pcap(147, false, false, &[(1, 0, &ipv4())])).unwrap();
        assert!(c.packets.is_empty());
        assert_eq!(c.skipped[&SkipReason::UnsupportedLinkType(147)], 1);
    }

    #[test]
    fn pcap_truncation_names_the_record_offset() {
        let frame = ethernet(0x0800, &ipv4());
        let file = pcap(1, false, false, &[(1, 0, &frame), (2, 0, &frame)]);
        let second = 24 + 16 + frame.len();
        let cut_data = &file[..file.len() - 3];
        let err = parse_capture(cut_data).unwrap_err();
        assert_eq!(err.offset, second);
        assert!(
            err.to_string().starts_with("truncated packet record ("),
            "{err}"
        );
        assert!(
            err.to_string()
                .ends_with(&format!("at byte offset {second}")),
            "{err}"
        );
        let cut_header = &file[..second + 5];
        let err = parse_capture(cut_header).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("truncated packet record header (5 of 16 bytes) at byte offset {second}")
        );
        assert_eq!(
            parse_capture(&file[..10]).unwrap_err().to_string(),
            "truncated pcap file header at byte offset 0"
        );
        assert!(parse_capture(b"GIF89a..........................").is_err());
        assert!(parse_capture(&[]).is_err());
    }

    #[test]
    fn pcap_bad_timestamp_fraction_is_an_error() {
        let file = pcap(101, false, false, &[(1, 1_000_000, &ipv4())]);
        assert_eq!(parse_capture(&file).unwrap_err().offset, 24);
    }

    #[test]
    fn read_capture_names_the_file() {
        let dir = std::env::temp_dir().join(format!("ctwasm-capture-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.pcap");
        let file = pcap(101, false, false, &[(1, 0, &ipv4())]);
        std::fs::write(&path, &file[..file.len() - 1]).unwrap();
        let err = read_capture(&path).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            err,
            format!(
                "{}: truncated packet record (20 bytes captured, 19 left in the file) at byte offset 24",
                path.display()
            )
        );
        assert!(
            read_capture(Path::new("/nonexistent/ctwasm.pcap"))
                .unwrap_err()
                .to_string()
                .contains("cannot read")
        );
    }

    #[test]
    fn pcapng_interfaces_carry_link_type_and_timestamp_resolution() {
        for big in [false, true] {
            let mut ng = Ng::new(big);
            ng.interface(1, None) // microseconds by default
                .interface(101, Some(9)) // nanoseconds
                .interface(276, Some(0x80 | 10)) // 2^-10 s
                .packet(0, 1_500_000, &ethernet(0x0800, &ipv4()))
                .packet(1, 2_000_000_007, &ipv6())
                .packet(
                    2,
                    3 * 1024 + 512,
                    &[&0x0800u16.to_be_bytes()[..], &[0; 18], &ipv4()].concat(),
                )
                .packet(0, 9, &ethernet(0x0806, &[0; 28]));
            let c = parse_capture(&ng.bytes).unwrap();
            assert_eq!(c.format, CaptureFormat::PcapNg);
            let got: Vec<_> = c.packets.iter().map(|p| (p.ts_ns, p.l3.len())).collect();
            assert_eq!(
                got,
                vec![
                    (1_500_000_000, 20),
                    (2_000_000_007, 40),
                    (3_500_000_000, 20)
                ]
            );
            assert_eq!(c.skipped_total(), 1);
        }
    }

    #[test]
    fn pcapng_new_section_resets_interfaces() {
        let mut ng = Ng::new(false);
        ng.interface(101, Some(9)).packet(0, 1, &ipv4());
        let mut second = Ng::new(true);
        second
            .interface(1, None)
            .packet(0, 2, &ethernet(0x86dd, &ipv6()));
        let mut file = ng.bytes.clone();
        file.extend_from_slice(&second.bytes);
        let c = parse_capture(&file).unwrap();
        assert_eq!(
            c.packets.iter().map(|p| p.ts_ns).collect::<Vec<_>>(),
            vec![1, 2_000]
        );
    }

    #[test]
    fn pcapng_errors_name_the_block_offset() {
        let mut ng = Ng::new(false);
        ng.interface(101, None);
        let packet_at = ng.bytes.len();
        ng.packet(0, 1, &ipv4());
        let err = parse_capture(&ng.bytes[..ng.bytes.len() - 2]).unwrap_err();
        assert_eq!(err.offset, packet_at);
        assert!(err.to_string().starts_with("truncated block"), "{err}");

        let mut undeclared = Ng::new(false);
        undeclared.interface(101, None);
        let at = undeclared.bytes.len();
        undeclared.packet(3, 1, &ipv4());
        let err = parse_capture(&undeclared.bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("packet for undeclared interface 3 at byte offset {at}")
        );

        let mut bad_trailer = ng.bytes.clone();
        let last = bad_trailer.len() - 4;
        bad_trailer[last] ^= 0x10;
        let err = parse_capture(&bad_trailer).unwrap_err();
        assert_eq!(err.offset, packet_at);
        assert!(err.to_string().starts_with("malformed block"), "{err}");
    }

    fn sample_files() -> Vec<Vec<u8>> {
        let mut ng = Ng::new(false);
        ng.interface(1, Some(9))
            .packet(0, 5, &ethernet(0x0800, &ipv4()))
            .packet(0, 6, &ipv6());
        vec![
            pcap(
                1,
                false,
                false,
                &[
                    (1, 2, &ethernet(0x0800, &ipv4())),
                    (3, 4, &ethernet(0x86dd, &ipv6())),
                ],
            ),
            pcap(
                0,
                true,
                true,
                &[(1, 2, &[&[0, 0, 0, 2][..], &ipv4()].concat())],
            ),
            ng.bytes,
        ]
    }

    use crate::testing::Trickle;

    fn read_all<R: Read>(reader: CaptureReader<R>) -> (Vec<CapturedPacket>, Option<CaptureError>) {
        let mut packets = Vec::new();
        for p in reader {
            match p {
                Ok(p) => packets.push(p),
                Err(e) => return (packets, Some(e)),
            }
        }
        (packets, None)
    }

    #[test]
    fn reading_in_any_pieces_gives_the_same_packets_and_errors() {
        for file in sample_files() {
            for cut in 0..=file.len() {
                let whole = read_all(CaptureReader::new(&file[..cut]));
                for step in [1, 3, 7, 64] {
                    let bytes = &file[..cut];
                    let pieces = read_all(CaptureReader::new(Trickle { bytes, step }));
                    assert_eq!(pieces, whole, "cut {cut}, {step} bytes a read");
                }
            }
        }
    }

    #[test]
    fn a_file_cut_in_its_last_record_yields_every_whole_packet_then_a_truncation() {
        for file in sample_files() {
            let all = parse_capture(&file).unwrap().packets;
            // Cut inside the last record: the packets before it come out whole.
            let cut = file.len() - 3;
            let (packets, err) = read_all(CaptureReader::new(&file[..cut]));
            let err = err.expect("a truncation");
            assert!(err.truncated, "{err}");
            assert!(all.starts_with(&packets) && packets.len() + 1 >= all.len());
        }
        // A broken record is not a truncation.
        let mut bad = sample_files().swap_remove(0);
        bad[0] = 0;
        let (_, err) = read_all(CaptureReader::new(&bad[..]));
        assert!(!err.unwrap().truncated);
    }

    /// An endless capture of tiny packets, made as it is read.
    struct Endless {
        header: Vec<u8>,
        record: Vec<u8>,
        at: usize,
    }

    impl Read for Endless {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let mut n = 0;
            while n < out.len() {
                let source = if self.at < self.header.len() {
                    &self.header[self.at..]
                } else {
                    let i = (self.at - self.header.len()) % self.record.len();
                    &self.record[i..]
                };
                let k = source.len().min(out.len() - n);
                out[n..n + k].copy_from_slice(&source[..k]);
                n += k;
                self.at += k;
            }
            Ok(n)
        }
    }

    #[test]
    fn memory_stays_bounded_however_long_the_capture() {
        let file = pcap(101, false, false, &[(1, 2, &ipv4())]);
        let (header, record) = file.split_at(24);
        let mut reader = CaptureReader::new(Endless {
            header: header.to_vec(),
            record: record.to_vec(),
            at: 0,
        });
        for _ in 0..200_000 {
            reader.next().unwrap().unwrap();
            assert!(
                reader.buf.capacity() <= 2 * READ_CHUNK,
                "{}",
                reader.buf.capacity()
            );
        }
        assert!(reader.offset() > 4_000_000);
    }

    #[test]
    fn a_record_longer_than_the_limit_is_an_error_not_an_allocation() {
        // A pcap record that declares 4 GiB, on a source that never ends.
        let mut file = pcap(101, false, false, &[]);
        file.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        file.extend_from_slice(&u32::MAX.to_le_bytes());
        file.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut reader = CaptureReader::new(Endless {
            header: file,
            record: vec![0x45],
            at: 0,
        });
        let err = reader.next().unwrap().unwrap_err();
        assert!(err.offset == 24, "{err}");
        assert!(reader.next().is_none(), "the reader stops at an error");
    }

    #[test]
    fn every_prefix_of_a_valid_file_is_an_error_or_a_capture() {
        for file in sample_files() {
            let full = parse_capture(&file).unwrap();
            for cut in 0..file.len() {
                if let Ok(c) = parse_capture(&file[..cut]) {
                    assert!(c.packets.len() <= full.packets.len());
                }
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_capture(&bytes);
        }

        #[test]
        fn corrupted_valid_files_never_panic(
            which in 0usize..3,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let mut file = sample_files().swap_remove(which);
            for (at, v) in flips {
                let i = at % file.len();
                file[i] = v;
            }
            let _ = parse_capture(&file);
        }
    }
}
