//! # ctwasm-core: Linux connection tracking as a deterministic, sans-IO engine
//!
//! (module overview written below as the engine lands)

pub mod batch;
pub mod config;
pub mod engine;
pub mod event;
pub mod netlink;
pub mod proto;
pub mod stats;
pub mod timer;
pub mod tuple;
pub mod wire;

pub use config::{Config, RetryPolicy, Sysctls};
pub use engine::expect::{ExpectError, ExpectMask, ExpectStats};
pub use engine::{Delivery, EntryView, Tracker, Verdict};
pub use event::{EventBits, MessageKind, Status, TcpState};
pub use stats::Stats;
pub use tuple::{Addr, Direction, Family, L4Tuple, Tuple};
pub mod proxy;
pub mod snapshot;
pub use proxy::ConnError;
pub use snapshot::SnapshotError;

#[cfg(target_arch = "wasm32")]
mod component;
