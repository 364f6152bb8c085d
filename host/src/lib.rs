//! # ctwasm-host: the engine's host
//!
//! Linux netfilter connection tracking, rebuilt as a deterministic engine that runs as a
//! WebAssembly component (or linked natively), for programs that embed it. [`Tracker`] is the
//! way in: built by [`TrackerBuilder`], it takes packets or connection-level calls, keeps the
//! table, and hands out the events a `conntrack -E` listener would see; every failure is one
//! [`Error`].
//!
//! A complete program (`examples/embed.rs`, also the README's embedding section):
#![doc = concat!("```\n", include_str!("../examples/embed.rs"), "```")]
//! It prints
//!
//! ```text
//! verdicts: [New, EstablishedReply, Established]
//!     [NEW] tcp      6 120 SYN_SENT src=10.0.0.1 dst=10.0.0.2 sport=40000 dport=443 [UNREPLIED] src=10.0.0.2 dst=10.0.0.1 sport=443 dport=40000
//!  [UPDATE] tcp      6 60 SYN_RECV src=10.0.0.1 dst=10.0.0.2 sport=40000 dport=443 src=10.0.0.2 dst=10.0.0.1 sport=443 dport=40000
//!  [UPDATE] tcp      6 3600 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=40000 dport=443 src=10.0.0.2 dst=10.0.0.1 sport=443 dport=40000 [ASSURED]
//! Some(Established) Tuple { family: Ipv4, src: 10.0.0.1, dst: 10.0.0.2, proto: 6, l4: Ports { src: 40000, dst: 443 } }
//! ```
//!
//! ## The rest of the crate
//!
//! The engine in `core-guest` does no I/O; this crate gives it some, all of it deterministic and
//! platform-independent. It runs the engine either linked natively or as the WebAssembly
//! component under wasmtime ([`backend`]; the component's bytes and its WIT package in
//! [`artifacts`]), reads captures ([`capture`]), models netlink listeners exactly as Linux
//! treats them ([`listener`]), drives the three on simulated time ([`replay`]) and prints
//! events as `conntrack -E` or as JSON lines ([`output`]). [`mirror`] keeps a consumer's view
//! of the table the way conntrackd does, [`stress`] runs the seed's stress test on simulated
//! time, and [`compare`] holds the engine's events against the kernel's, flow by flow.
//!
//! [`ipfix`] exports finished flows to an IPFIX collector, the one piece of this crate that
//! talks to the network (through std's sockets, from a thread of its own).
//!
//! Whatever touches the live kernel (ctnetlink, packet capture, real socket buffers, `ctwasm
//! shadow`) lives in `ctwasm-live`, Linux only; this crate has no `unsafe` and no system calls
//! of its own beyond the exporter's sockets.

#![forbid(unsafe_code)]

pub mod artifacts;
pub mod backend;
pub mod capture;
pub mod compare;
pub mod embed;
pub mod filter;
pub mod ipfix;
pub mod listener;
pub mod metrics;
pub mod mirror;
pub mod output;
pub mod replay;
pub mod resilient;
pub mod stress;
pub mod testing;

pub use embed::{
    BackendKind, Batch, CALLS_PER_CROSSING, Call, ConfigError, Connection, ConnectionRef, Delivery,
    Direction, EVENT_CHUNK, Ending, EntryView, Error, Event, EventBits, ExpectMask, ExpectStats,
    Expectation, Fault, GuestFault, Listeners, Refusal, RetryPolicy, Stats, Tracker,
    TrackerBuilder, Tuple, Verdict, port_tuple,
};
