//! The header view ICMPv4 and ICMPv6 share.
//!
//! Both families lay out their header the same way: type, code, checksum, then a 4-byte second
//! word whose meaning depends on the type (identifier and sequence number for echo and the other
//! queries; unused, a pointer, a gateway or an MTU for errors), and after it the payload, which
//! for an error is the start of the offending packet. What differs is which types are errors,
//! which carry an identifier, and how the checksum is computed. The first two come in through
//! [`IcmpVersion`]; the checksum and the `Repr`s stay in [`super::icmp`] and [`super::icmpv6`],
//! whose `Packet<T>` are this view with the version filled in.

use core::fmt;
use core::marker::PhantomData;

use super::WireError;

mod field {
    use core::ops::Range;

    pub(super) const TYPE: usize = 0;
    pub(super) const CODE: usize = 1;
    pub(super) const CHECKSUM: Range<usize> = 2..4;
    /// Echo and the other queries: identifier and sequence number. ICMPv6 node information puts
    /// its Qtype where the identifier is, and the kernel (so this tracker) keys on it all the same.
    pub(super) const ECHO_IDENT: Range<usize> = 4..6;
    pub(super) const ECHO_SEQNO: Range<usize> = 6..8;
    /// The second word as a whole, then the payload.
    pub(super) const REST_OF_HEADER: Range<usize> = 4..8;
}

/// Length of the header: every ICMP and ICMPv6 message conntrack looks at has these 8 bytes.
pub const HEADER_LEN: usize = field::REST_OF_HEADER.end;

/// What sets one ICMP family's types apart from the other's, as far as the view needs to know.
pub trait IcmpVersion {
    /// Error types: they quote the offending packet after the header.
    fn is_error_type(msg_type: u8) -> bool;
    /// Types whose second word starts with an identifier.
    fn is_echo_like_type(msg_type: u8) -> bool;
}

/// A read (and, over a mutable buffer, write) view of an ICMP message of version `V`.
///
/// Use it as [`super::icmp::Packet`] or [`super::icmpv6::Packet`].
pub struct Packet<T: AsRef<[u8]>, V> {
    buffer: T,
    version: PhantomData<fn() -> V>,
}

impl<T: AsRef<[u8]>, V: IcmpVersion> Packet<T, V> {
    /// A view without checks: only for buffers this code built itself.
    pub fn new_unchecked(buffer: T) -> Packet<T, V> {
        Packet {
            buffer,
            version: PhantomData,
        }
    }

    /// A view of untrusted bytes: see [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Packet<T, V>, WireError> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// The 8-byte header is in the buffer.
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// The identifier: meaningful for echo-like types ([`IcmpVersion::is_echo_like_type`]).
    pub fn echo_ident(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::ECHO_IDENT])
    }

    /// The sequence number: meaningful for echo.
    pub fn echo_seq_no(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::ECHO_SEQNO])
    }

    /// The second word raw (pointer, gateway, MTU... depending on the type).
    pub fn rest_of_header(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::REST_OF_HEADER];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn is_error(&self) -> bool {
        V::is_error_type(self.msg_type())
    }

    pub fn is_echo_like(&self) -> bool {
        V::is_echo_like_type(self.msg_type())
    }

    /// The bytes after the header: echo data, or for an error the quoted packet.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// For an error, the quoted packet (give it to [`super::parse_embedded_l3`]); `None`
    /// otherwise.
    pub fn embedded(&self) -> Option<&[u8]> {
        self.is_error().then(|| self.payload())
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized, V: IcmpVersion> Packet<&'a T, V> {
    /// The payload for as long as the buffer lives, not only as long as the view: what a `Repr`
    /// borrows.
    pub(super) fn payload_of_buffer(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>, V: IcmpVersion> Packet<T, V> {
    pub fn set_msg_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::TYPE] = value;
    }

    pub fn set_msg_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }

    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_echo_ident(&mut self, value: u16) {
        self.buffer.as_mut()[field::ECHO_IDENT].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_echo_seq_no(&mut self, value: u16) {
        self.buffer.as_mut()[field::ECHO_SEQNO].copy_from_slice(&value.to_be_bytes());
    }

    pub fn set_rest_of_header(&mut self, value: u32) {
        self.buffer.as_mut()[field::REST_OF_HEADER].copy_from_slice(&value.to_be_bytes());
    }

    /// The bytes after the header, to write a quoted packet or echo data into.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]>, V> AsRef<[u8]> for Packet<T, V> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

// By hand rather than derived: a derive would ask the version marker for the trait too.
impl<T: AsRef<[u8]> + fmt::Debug, V> fmt::Debug for Packet<T, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packet")
            .field("buffer", &self.buffer)
            .finish()
    }
}

impl<T: AsRef<[u8]> + Clone, V> Clone for Packet<T, V> {
    fn clone(&self) -> Self {
        Packet {
            buffer: self.buffer.clone(),
            version: PhantomData,
        }
    }
}

impl<T: AsRef<[u8]> + Copy, V> Copy for Packet<T, V> {}

impl<T: AsRef<[u8]> + PartialEq, V> PartialEq for Packet<T, V> {
    fn eq(&self, other: &Self) -> bool {
        self.buffer == other.buffer
    }
}

impl<T: AsRef<[u8]> + Eq, V> Eq for Packet<T, V> {}

fn be16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

#[cfg(test)]
mod tests {
    use crate::wire::{icmp, icmpv6};

    /// The same 8 bytes read through either family: the fields agree, the sorting does not.
    #[test]
    fn both_families_read_one_layout() {
        let bytes = [3, 1, 0xab, 0xcd, 0x12, 0x34, 0x56, 0x78, 0xee];
        let v4 = icmp::Packet::new_checked(&bytes[..]).unwrap();
        let v6 = icmpv6::Packet::new_checked(&bytes[..]).unwrap();
        for (fields, error, echo_like) in [
            (
                (
                    v4.msg_type(),
                    v4.msg_code(),
                    v4.checksum(),
                    v4.rest_of_header(),
                ),
                v4.is_error(),
                v4.is_echo_like(),
            ),
            (
                (
                    v6.msg_type(),
                    v6.msg_code(),
                    v6.checksum(),
                    v6.rest_of_header(),
                ),
                v6.is_error(),
                v6.is_echo_like(),
            ),
        ] {
            assert_eq!(fields, (3, 1, 0xabcd, 0x1234_5678));
            assert!(error && !echo_like);
        }
        assert_eq!((v4.echo_ident(), v4.echo_seq_no()), (0x1234, 0x5678));
        assert_eq!(
            (v4.payload(), v6.embedded()),
            (&[0xee][..], Some(&[0xee][..]))
        );

        // Type 129 is an ICMPv6 echo reply, and nothing ICMPv4 knows.
        let reply = [129, 0, 0, 0, 0, 7, 0, 1];
        let v4 = icmp::Packet::new_checked(&reply[..]).unwrap();
        let v6 = icmpv6::Packet::new_checked(&reply[..]).unwrap();
        assert!(!v4.is_echo_like() && !v4.is_error());
        assert!(v6.is_echo_like() && !v6.is_error() && v6.embedded().is_none());
    }
}
