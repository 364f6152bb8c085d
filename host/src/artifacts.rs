//! The two files an embedder of the component needs, exactly as this build carries them.
//!
//! The component the host runs and the WIT package it implements are built into the binary, so
//! a user can take both out of the product (`ctwasm component`, `ctwasm wit`) instead of
//! searching `target/`, and the component they get is byte for byte the one the host runs.

/// The guest component `build.rs` builds from `core-guest`: what the component backend runs.
pub const COMPONENT: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ctwasm_core.component.wasm"));

/// The WIT package the component implements, as the text of `wit/ctwasm.wit`.
pub const WIT: &str = include_str!("../../wit/ctwasm.wit");

/// Where `build.rs` left a second build of the same guest, optimized for size (`-C
/// opt-level=s`) instead of speed: other code throughout, the same interface and snapshots. For
/// tests that hot-swap a running tracker between two builds; nothing embeds it.
#[doc(hidden)]
pub const SIZE_BUILD_PATH: &str = concat!(env!("OUT_DIR"), "/ctwasm_core.size.component.wasm");
