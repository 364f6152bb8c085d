//! Reliable export of conntrack events to a NATS JetStream stream.
//!
//! The seed's promise, that a listener asking for reliable delivery never loses a DESTROY,
//! stops at one host's netlink socket. This crate carries it to a replicated log: the export is
//! a listener that asked for reliable delivery, and the stream's acknowledgement is its delivery
//! result ([`nats::NatsExport`]). What the cluster does not take stays with the engine, in the
//! missed cache and on the dying list, exactly as for a full netlink buffer, and is sent again;
//! the stream's de-duplication by message id drops the copies a lost acknowledgement causes
//! ([`message`]).
//!
//! The messages are documented in [`message`] so consumers in any language can decode them.

pub mod message;
pub mod nats;

pub use async_nats;
pub use message::Format;
pub use nats::{ExportConfig, ExportReport, ExportStats, NatsExport, parse_servers};
