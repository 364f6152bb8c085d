//! # ctwasm-core: Linux connection tracking as a deterministic, sans-IO engine
//!
//! This crate is the conntrack table of Linux netfilter — entries keyed by two tuples, per
//! protocol trackers, timeouts, the event cache — together with the reliable event delivery of
//! "optional reliable conntrack event delivery" (Linux 2.6.31): failed events are kept as
//! *missed* bits and ride on the entry's next message, and an entry whose DESTROY cannot be
//! delivered leaves the table for a *dying list*, still counted against `nf_conntrack_max`, and
//! is retried until a listener has it.
//!
//! ## What it promises
//!
//! - **Deterministic.** No clock, no OS randomness, no I/O, no hash map whose order decides an
//!   output. Time comes in as nanoseconds with every call; randomness (entry ids, grace delays)
//!   comes from a seeded ChaCha8. The same inputs and seed give the same bytes out natively, as
//!   a WebAssembly component, on any platform.
//! - **Sans-IO.** Packets go in ([`Tracker::ingest`]); timers fire when told
//!   ([`Tracker::advance`], [`Tracker::next_deadline`]); events are pulled
//!   ([`Tracker::take_events`]) and their outcome pushed back ([`Tracker::report_delivery`]).
//!   The host owns sockets, clocks and listeners.
//! - **Hostile input is counted, not fatal.** Untrusted bytes (packets, snapshots, netlink
//!   messages) only enter through checked parsers; nothing on those paths panics.
//!
//! ## The modules, in the order a packet meets them
//!
//! - [`batch`]: the flat byte formats packets and events cross the component boundary in.
//! - [`wire`]: zero-copy views of IPv4, IPv6 (extension headers), TCP, UDP, ICMP, ICMPv6.
//! - [`tuple`](mod@tuple): what identifies a flow direction; inversion of tuples and ICMP types.
//! - [`proto`]: one tracker per protocol behind one trait (TCP's state machine, UDP's stream
//!   rule, ICMP queries, generic).
//! - [`engine`]: the tracker, split as the kernel splits it: the table (slab, indexes, ids,
//!   early drop), the per-packet path, the event cache (missed bits, outbox, dying list, retry
//!   policies), expectations ([`engine::expect`]) and snapshots.
//! - [`timer`]: a hierarchical timer wheel, so expiry costs the same whatever the table holds.
//! - [`netlink`]: the ctnetlink codec; every event leaves as the bytes the kernel would send,
//!   built by the one event encoder in [`netlink::event`].
//! - [`event`], [`config`], [`stats`]: event and status bits, sysctls by their kernel names,
//!   the kernel's counters.
//! - [`proxy`]: connection-level calls for proxies, turned into the packets a stack would send.
//! - [`snapshot`]: the whole tracker as bytes, to continue in another instance.
//!
//! The component glue (`component.rs`, compiled for wasm only) maps the WIT interface in
//! `wit/ctwasm.wit` onto [`Tracker`] and nothing else.
//!
//! What the engine promises its users, and the invariants the tests hold it to, are written
//! out in `core-guest/docs/semantics.md`.

// No unsafe code is written here. The one exception is generated: wit-bindgen's export glue
// in the wasm-only `component` module, which is allowed by name below.
#![cfg_attr(not(target_arch = "wasm32"), forbid(unsafe_code))]
#![cfg_attr(target_arch = "wasm32", deny(unsafe_code))]

pub mod batch;
pub mod config;
pub mod engine;
pub mod event;
pub mod netlink;
pub mod proto;
pub mod snapshot;
pub mod stats;
pub mod timer;
pub mod tuple;
pub mod wire;

pub use config::{Config, RetryPolicy, Sysctls};
pub use engine::expect::{ExpectError, ExpectMask, ExpectStats};
pub use engine::{ConnCall, ConnError, ConnHandle, ConnRef, Ending};
pub use engine::{Delivery, EntryView, Tracker, Verdict};
pub use event::{EventBits, ExpEventBits, MessageKind, SctpState, Status, TcpState};
pub use snapshot::SnapshotError;
pub use stats::Stats;
pub use tuple::{Addr, Direction, Family, L4Tuple, Tuple};

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod component;
