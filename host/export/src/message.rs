//! What one exported event looks like on the stream: its subject, its headers, its id and its
//! payload. Pure functions of the event frame, so a consumer in any language can rely on them
//! and tests can check them without a server.
//!
//! # The message
//!
//! - Subject: `PREFIX.HOST.ZONE.KIND`, KIND one of `new`, `update`, `destroy` (a consumer of one
//!   host, one zone or DESTROYs only filters by subject).
//! - Headers: `Nats-Msg-Id` (below), `Ctwasm-Host`, `Ctwasm-Zone`, `Ctwasm-Event` (the KIND),
//!   `Ctwasm-Format` (`netlink` or `json`).
//! - Payload, format `netlink` (the default): the event frame exactly as the engine's
//!   `take-events` gives it, `frame_len: u32le | events: u16le | group: u8 | flags: u8 |
//!   ts_ns: u64le` and then the ctnetlink message (`nlmsghdr`, `nfgenmsg`, attributes) as the
//!   kernel broadcasts it: `events` are the event bits it carries (missed ones included), flags
//!   bit 0 marks a redelivery. Format `json`: one JSON object, the line `ctwasm replay --format
//!   json` prints for the event.
//!
//! # The message id
//!
//! JetStream drops a message whose `Nats-Msg-Id` it stored within the stream's duplicate window,
//! so the id must be the same for every attempt at one event and differ between events:
//! `HOST.ZONE.CTID.CONN.KIND.BITS[.DIGEST]`. CONN tells apart connections that drew the same
//! conntrack id (ids are reused once an entry is gone; among 100 000 connections two sharing an
//! id within minutes is likely): the entry's start time when the message carries it
//! (`nf_conntrack_timestamp`), else a digest of its two tuples. BITS are the event bits,
//! missed ones included. A connection has one NEW and one DESTROY, so those need no more; a
//! retried DESTROY (the only message sent again) gets the same id whatever its frame flags. An
//! UPDATE is never sent again (its bits wait in the missed cache for the next event) and a
//! connection can have several with the same bits, so DIGEST, a digest of its ctnetlink bytes,
//! keeps them apart.

use anyhow::{Result, anyhow, bail};
use ctwasm_core::MessageKind;
use ctwasm_core::batch::EventFrame;
use ctwasm_core::netlink::CtMessage;

/// The payload format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// The event frame and its ctnetlink bytes.
    #[default]
    Netlink,
    /// `ctwasm replay --format json`'s line.
    Json,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Netlink => "netlink",
            Format::Json => "json",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Format> {
        match s {
            "netlink" => Ok(Format::Netlink),
            "json" => Ok(Format::Json),
            _ => bail!("`{s}`: expected netlink or json"),
        }
    }
}

/// One event ready to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub subject: String,
    pub msg_id: String,
    pub kind: MessageKind,
    pub zone: u16,
    pub payload: Vec<u8>,
}

/// Checks a name that becomes one token of a subject (a host name, a stream name): letters,
/// digits, `-` and `_` only, so it cannot add tokens or wildcards.
pub fn check_token(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 {
        bail!("{what} `{name}`: expected 1 to 64 characters");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        bail!("{what} `{name}`: `{c}` is not allowed (letters, digits, - and _ only)");
    }
    Ok(())
}

/// Checks a subject prefix: one or more tokens of [`check_token`]'s characters, separated by
/// dots.
pub fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.len() > 128 {
        bail!("subject prefix `{prefix}`: expected 1 to 128 characters");
    }
    for token in prefix.split('.') {
        check_token("subject prefix token", token)
            .map_err(|e| anyhow!("subject prefix `{prefix}`: {e}"))?;
    }
    Ok(())
}

/// The lower-case name of an event kind, as subjects and headers spell it.
pub fn kind_name(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::New => "new",
        MessageKind::Update => "update",
        MessageKind::Destroy => "destroy",
    }
}

/// FNV-1a, 64 bits: a digest that every consumer can recompute and that no library version
/// changes (std's and foldhash's hashers are free to change theirs).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Builds the message for one event frame. Expectation events (groups 4 and 6) are not
/// conntrack entries and are not exported: `None`.
pub fn outgoing(
    frame: &EventFrame<'_>,
    prefix: &str,
    host: &str,
    format: Format,
) -> Result<Option<Outgoing>> {
    if frame.group > 3 {
        return Ok(None);
    }
    let (msg, used) = CtMessage::parse(frame.netlink)
        .map_err(|e| anyhow!("event message at {} ns does not decode: {e}", frame.ts_ns))?;
    if used != frame.netlink.len() {
        bail!(
            "event message at {} ns: bytes after the message",
            frame.ts_ns
        );
    }
    let kind = msg
        .kind()
        .ok_or_else(|| anyhow!("event message at {} ns: not a conntrack event", frame.ts_ns))?;
    let zone = msg.zone();
    let ctid = msg
        .id()
        .ok_or_else(|| anyhow!("event message at {} ns: no conntrack id", frame.ts_ns))?;
    let start = msg.timestamp().and_then(|(start, _)| start);
    let conn = match start {
        Some(start) => format!("s{start}"),
        None => {
            let orig = msg.orig().map(|t| format!("{t:?}")).unwrap_or_default();
            let reply = msg.reply().map(|t| format!("{t:?}")).unwrap_or_default();
            format!(
                "t{:016x}",
                fnv1a(&[orig.as_bytes(), b"|", reply.as_bytes()])
            )
        }
    };
    let name = kind_name(kind);
    let bits = frame.events.0;
    let mut msg_id = format!("{host}.{zone}.{ctid:08x}.{conn}.{name}.{bits:x}");
    if kind == MessageKind::Update {
        msg_id.push_str(&format!(".{:016x}", fnv1a(&[frame.netlink])));
    }
    let payload = match format {
        Format::Netlink => ctwasm_host::listener::encode_frame(frame),
        Format::Json => ctwasm_host::output::format_json(frame, &msg).into_bytes(),
    };
    Ok(Some(Outgoing {
        subject: format!("{prefix}.{host}.{zone}.{name}"),
        msg_id,
        kind,
        zone,
        payload,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctwasm_core::event::EventBits;

    #[test]
    fn names_that_would_add_tokens_or_wildcards_are_refused() {
        for bad in ["", "a.b", "*", ">", "a b", "host\n", &"x".repeat(65), "ü"] {
            assert!(check_token("host", bad).is_err(), "{bad:?}");
        }
        check_token("host", "fw-1_a").unwrap();
        for bad in ["", ".", "a..b", "a.", ".a", "a.*", "a.>", "a b"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
        check_prefix("ct.events").unwrap();
    }

    #[test]
    fn formats_parse_by_name() {
        assert_eq!("json".parse::<Format>().unwrap(), Format::Json);
        assert_eq!("netlink".parse::<Format>().unwrap(), Format::Netlink);
        assert!("xml".parse::<Format>().is_err());
    }

    #[test]
    fn garbage_frames_are_errors_not_panics() {
        for netlink in [&[][..], &[0; 3], &[0xff; 40]] {
            let frame = EventFrame {
                events: EventBits::DESTROY,
                group: 3,
                flags: 0,
                ts_ns: 1,
                netlink,
            };
            assert!(outgoing(&frame, "ct", "h", Format::Netlink).is_err());
        }
        let expectation = EventFrame {
            events: EventBits::NEW,
            group: 4,
            flags: 0,
            ts_ns: 1,
            netlink: &[0xff; 40],
        };
        assert_eq!(
            outgoing(&expectation, "ct", "h", Format::Netlink).unwrap(),
            None
        );
    }
}
