//! Hand-built IP packets sent into an interface as if they had arrived on it.
//!
//! An AF_PACKET `SOCK_DGRAM` socket, so the kernel adds the link header. On loopback the packet
//! is looped back at once and enters the stack through PREROUTING: conntrack handles it exactly
//! once, as it does a packet from a real peer, and the capturer sees its incoming copy.
//! Conformance scenarios use it to drive both ends of a TCP connection with segments no socket
//! would send (out-of-window data, retransmissions, wrong acknowledgements).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use ctwasm_live::netns::in_netns;
use ctwasm_live::sys::{ETH_P_IP, ETH_P_IPV6, open_packet_socket, packet_address};

#[derive(Debug)]
pub struct PacketInjector {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketInjector {
    /// Opens an injector on `ifname` inside `netns` (or here). The socket's protocol is 0: it
    /// only sends, it never receives.
    pub fn open(netns: Option<&str>, ifname: &str) -> io::Result<PacketInjector> {
        let ifname = ifname.to_string();
        let (fd, ifindex) =
            in_netns(netns, move || open_packet_socket(&ifname)).map_err(io::Error::other)??;
        Ok(PacketInjector { fd, ifindex })
    }

    /// Sends one IPv4 or IPv6 packet (the version nibble decides the link protocol).
    pub fn send(&self, l3: &[u8]) -> io::Result<()> {
        let proto = match l3.first().map(|b| b >> 4) {
            Some(4) => ETH_P_IP,
            Some(6) => ETH_P_IPV6,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not an IPv4 or IPv6 packet",
                ));
            }
        };
        let mut addr = packet_address(self.ifindex, proto);
        // Destination MAC all zeros: loopback's own address.
        addr.sll_halen = 6;
        // SAFETY: the buffer and the address describe live memory of the stated lengths.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                l3.as_ptr().cast(),
                l3.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("sendto(AF_PACKET): {e}")));
        }
        if n as usize != l3.len() {
            return Err(io::Error::other(format!(
                "sendto(AF_PACKET): {n} of {} bytes sent",
                l3.len()
            )));
        }
        Ok(())
    }
}
