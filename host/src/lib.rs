//! # ctwasm-host: the engine's host
//!
//! The engine in `core-guest` does no I/O; this crate gives it some. It runs the engine either
//! linked natively or as the WebAssembly component under wasmtime ([`backend`]), reads captures
//! ([`capture`]), models netlink listeners exactly as Linux treats them ([`listener`]), drives
//! the three on simulated time ([`replay`]) — or with a real kernel socket buffer deciding
//! deliveries ([`socket_listener`], Linux) — and prints events as `conntrack -E` or as JSON lines
//! ([`output`]). [`mirror`] keeps a consumer's view of the table the way conntrackd does, and
//! [`stress`] runs the seed's stress test on simulated time.
//!
//! On Linux, [`ctnetlink`] talks to the live kernel's conntrack; [`live_capture`],
//! [`conformance`] and [`shadow`] put the engine beside the kernel on the same packets and
//! compare their events flow by flow.

pub mod backend;
pub mod capture;
pub mod conformance;
#[cfg(target_os = "linux")]
pub mod ctnetlink;
pub mod listener;
#[cfg(target_os = "linux")]
pub mod live_capture;
pub mod mirror;
pub mod output;
pub mod replay;
#[cfg(target_os = "linux")]
pub mod shadow;
#[cfg(target_os = "linux")]
pub mod socket_listener;
pub mod stress;
