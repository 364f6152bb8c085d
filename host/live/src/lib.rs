//! # ctwasm-live: the engine beside the live Linux kernel
//!
//! Everything in `ctwasm-host` models the kernel on simulated time; this crate talks to it. It
//! is Linux only and holds all of the project's system calls:
//!
//! * [`ctnetlink`]: the kernel's conntrack over a real `NETLINK_NETFILTER` socket (events,
//!   dumps, get, delete, flush, statistics);
//! * [`capture`]: an AF_PACKET capturer ([`capture::PacketSocket`]) and an [`capture::Observer`]
//!   that reads packets and kernel events on threads, for comparing the engine with the kernel;
//! * [`socket_listener`]: a listener whose deliveries a real kernel socket buffer decides, and
//!   its reader;
//! * [`shadow`]: `ctwasm shadow`, the engine running beside the kernel on the same packets;
//! * [`link`]: a hostile link between two namespaces (loss, reordering, duplicates, outages),
//!   emulated in userspace over TUN devices, for conformance on messy traffic;
//! * [`netns`]: running code inside a network namespace without moving the caller;
//! * [`sys`]: the raw system calls, the only place with `unsafe`.
//!
//! On other systems the crate is empty.

#![cfg(target_os = "linux")]
#![deny(unsafe_code)]

pub mod capture;
pub mod ctnetlink;
pub mod link;
pub mod netns;
pub mod shadow;
pub mod socket_listener;
pub mod sys;
