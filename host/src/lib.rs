//! # ctwasm-host: the engine's host
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
//! Whatever touches the live kernel (ctnetlink, packet capture, real socket buffers, `ctwasm
//! shadow`) lives in `ctwasm-live`, Linux only; this crate has no `unsafe` and no system calls
//! of its own.

#![forbid(unsafe_code)]

pub mod artifacts;
pub mod backend;
pub mod capture;
pub mod compare;
pub mod listener;
pub mod mirror;
pub mod output;
pub mod replay;
pub mod resilient;
pub mod stress;
