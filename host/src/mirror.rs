//! A mirror consumer: the table as an event reader rebuilds it, the way conntrackd keeps its
//! cache.
//!
//! The seed's promise is not only "every DESTROY arrives" but that a consumer that applies the
//! events it reads ends up with the kernel's table: it may miss intermediate transitions, yet it
//! gets back in sync. This module is that consumer, so tests can check the promise against the
//! engine's own dump (invariant 2 under "Invariants" in `core-guest/docs/semantics.md`).
//!
//! Events may arrive reordered or twice (a retried DESTROY reaches every listener again), so the
//! mirror identifies an entry by its zone, original tuple and id — never by the tuple alone, since
//! a new connection with the tuple of a dying entry is another entry with another id:
//! - NEW and UPDATE insert the entry or update it (an UPDATE for an entry never seen inserts it,
//!   as conntrackd's `cache_update_force` does); a field the message leaves out keeps its value
//!   (an UPDATE without a state change carries no TCP or SCTP state).
//! - DESTROY removes it. A DESTROY for an entry the mirror never had (its NEW was lost) is
//!   counted as `unknown_destroy`; one for an entry already destroyed is a duplicate.
//!
//! [`Mirror::compare`] sets the mirror beside a dump and lists, readably, what differs among the
//! facts a consumer can know: ids, tuples, the status bits that matter and the TCP or SCTP
//! state.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use ctwasm_core::batch::EventFrame;
use ctwasm_core::netlink::CtMessage;
use ctwasm_core::{EntryView, MessageKind, SctpState, Status, TcpState, Tuple};

use crate::output::tuple_text;

/// Zone, original tuple and id: what identifies an entry to a consumer.
pub type MirrorKey = (u16, Tuple, u32);

/// The status bits a mirror compares (the rest are internal or NAT's).
pub const COMPARED_STATUS: Status =
    Status(Status::EXPECTED.0 | Status::SEEN_REPLY.0 | Status::ASSURED.0 | Status::CONFIRMED.0);

/// One entry as the consumer knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorEntry {
    pub id: u32,
    pub zone: u16,
    pub orig: Tuple,
    pub reply: Option<Tuple>,
    pub status: Status,
    pub tcp_state: Option<TcpState>,
    pub sctp_state: Option<SctpState>,
}

/// What the mirror did with the messages it was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MirrorCounters {
    pub new: u64,
    pub update: u64,
    pub destroy: u64,
    /// NEW or UPDATE for an entry the mirror did not have.
    pub inserted: u64,
    /// Of those, UPDATEs (the entry's NEW was lost).
    pub inserted_by_update: u64,
    /// A NEW for an entry the mirror already had (a NEW sent again through the missed bits).
    pub duplicate_new: u64,
    /// A DESTROY for an entry the mirror never had.
    pub unknown_destroy: u64,
    /// A DESTROY for an entry already destroyed (a retried DESTROY seen twice).
    pub duplicate_destroy: u64,
    /// A NEW or UPDATE for an entry already destroyed (left out of the mirror).
    pub after_destroy: u64,
    /// Messages that are not conntrack events or lack the original tuple or the id.
    pub ignored: u64,
}

/// A consumer's view of the table, built from event messages.
#[derive(Clone, Debug, Default)]
pub struct Mirror {
    entries: BTreeMap<MirrorKey, MirrorEntry>,
    destroyed: HashSet<MirrorKey>,
    counters: MirrorCounters,
}

impl Mirror {
    pub fn new() -> Mirror {
        Mirror::default()
    }

    pub fn counters(&self) -> MirrorCounters {
        self.counters
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn entries(&self) -> impl Iterator<Item = &MirrorEntry> {
        self.entries.values()
    }
    /// Whether a DESTROY for this entry has been applied.
    pub fn was_destroyed(&self, key: &MirrorKey) -> bool {
        self.destroyed.contains(key)
    }

    /// Decodes and applies one event frame.
    pub fn apply_frame(&mut self, frame: &EventFrame<'_>) -> anyhow::Result<()> {
        let msg = crate::output::decode_frame(frame)?;
        self.apply(&msg);
        Ok(())
    }

    /// Applies one ctnetlink event message.
    pub fn apply(&mut self, msg: &CtMessage) {
        let (Some(kind), Some(orig), Some(id)) = (msg.kind(), msg.orig(), msg.id()) else {
            self.counters.ignored += 1;
            return;
        };
        let key = (msg.zone(), orig, id);
        match kind {
            MessageKind::Destroy => {
                self.counters.destroy += 1;
                if self.entries.remove(&key).is_some() {
                    self.destroyed.insert(key);
                } else if !self.destroyed.insert(key) {
                    self.counters.duplicate_destroy += 1;
                } else {
                    self.counters.unknown_destroy += 1;
                }
            }
            MessageKind::New | MessageKind::Update => {
                if kind == MessageKind::New {
                    self.counters.new += 1;
                } else {
                    self.counters.update += 1;
                }
                if self.destroyed.contains(&key) {
                    self.counters.after_destroy += 1;
                    return;
                }
                match self.entries.get_mut(&key) {
                    Some(e) => {
                        if kind == MessageKind::New {
                            self.counters.duplicate_new += 1;
                        }
                        if let Some(r) = msg.reply() {
                            e.reply = Some(r);
                        }
                        if let Some(s) = msg.status() {
                            e.status = s;
                        }
                        if let Some(t) = msg.tcp_state() {
                            e.tcp_state = Some(t);
                        }
                        if let Some(t) = msg.sctp_state() {
                            e.sctp_state = Some(t);
                        }
                    }
                    None => {
                        self.counters.inserted += 1;
                        if kind == MessageKind::Update {
                            self.counters.inserted_by_update += 1;
                        }
                        self.entries.insert(
                            key,
                            MirrorEntry {
                                id,
                                zone: key.0,
                                orig,
                                reply: msg.reply(),
                                status: msg.status().unwrap_or_default(),
                                tcp_state: msg.tcp_state(),
                                sctp_state: msg.sctp_state(),
                            },
                        );
                    }
                }
            }
        }
    }

    /// Compares the mirror with a dump's live entries (dying ones are only noted: their DESTROY
    /// may still be on its way).
    pub fn compare(&self, dump: &[EntryView]) -> MirrorDiff {
        let mut diff = MirrorDiff::default();
        let mut live: BTreeMap<MirrorKey, &EntryView> = BTreeMap::new();
        let mut dying: HashSet<MirrorKey> = HashSet::new();
        for e in dump {
            let key = (e.zone, e.orig, e.id);
            if e.dying {
                dying.insert(key);
            } else {
                live.insert(key, e);
            }
        }
        for (key, m) in &self.entries {
            match live.get(key) {
                Some(t) => {
                    let (ms, ts) = (
                        Status(m.status.0 & COMPARED_STATUS.0),
                        Status(t.status.0 & COMPARED_STATUS.0),
                    );
                    if ms != ts {
                        diff.differing.push(Difference {
                            key: *key,
                            field: "status",
                            mirror: status_text(ms),
                            table: status_text(ts),
                        });
                    }
                    if m.tcp_state != t.tcp_state {
                        diff.differing.push(Difference {
                            key: *key,
                            field: "tcp_state",
                            mirror: state_text(m.tcp_state),
                            table: state_text(t.tcp_state),
                        });
                    }
                    if m.sctp_state != t.sctp_state {
                        diff.differing.push(Difference {
                            key: *key,
                            field: "sctp_state",
                            mirror: m.sctp_state.map_or("-", |s| s.name()).into(),
                            table: t.sctp_state.map_or("-", |s| s.name()).into(),
                        });
                    }
                    if m.reply.is_some_and(|r| r != t.reply) {
                        diff.differing.push(Difference {
                            key: *key,
                            field: "reply",
                            mirror: m.reply.map_or("-".into(), |r| tuple_text(&r)),
                            table: tuple_text(&t.reply),
                        });
                    }
                }
                None if dying.contains(key) => diff.awaiting_destroy.push(*key),
                None => diff.extra.push(*key),
            }
        }
        diff.missing = live
            .keys()
            .filter(|k| !self.entries.contains_key(k))
            .copied()
            .collect();
        diff
    }
}

/// One fact on which the mirror and the table disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub key: MirrorKey,
    pub field: &'static str,
    pub mirror: String,
    pub table: String,
}

/// How a mirror differs from a dump.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorDiff {
    /// Live in the table, absent from the mirror (its NEW was lost and nothing followed).
    pub missing: Vec<MirrorKey>,
    /// In the mirror, in the table no more (a DESTROY the consumer never got).
    pub extra: Vec<MirrorKey>,
    /// In the mirror and dying in the table: the DESTROY is still to come.
    pub awaiting_destroy: Vec<MirrorKey>,
    pub differing: Vec<Difference>,
}

impl MirrorDiff {
    /// The mirror equals the table: nothing missing, extra, pending or different.
    pub fn is_equal(&self) -> bool {
        self.missing.is_empty()
            && self.extra.is_empty()
            && self.awaiting_destroy.is_empty()
            && self.differing.is_empty()
    }
}

/// How many lines of each kind a report prints before summing up the rest.
const SHOWN: usize = 10;

impl fmt::Display for MirrorDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_equal() {
            return write!(f, "the mirror equals the table");
        }
        let list = |f: &mut fmt::Formatter<'_>, what: &str, keys: &[MirrorKey]| {
            if keys.is_empty() {
                return Ok(());
            }
            writeln!(f, "{} {what}:", keys.len())?;
            for k in keys.iter().take(SHOWN) {
                writeln!(f, "  {}", key_text(k))?;
            }
            if keys.len() > SHOWN {
                writeln!(f, "  ... and {} more", keys.len() - SHOWN)?;
            }
            Ok(())
        };
        list(f, "live in the table but not in the mirror", &self.missing)?;
        list(f, "in the mirror but gone from the table", &self.extra)?;
        list(
            f,
            "in the mirror, dying in the table (DESTROY not read yet)",
            &self.awaiting_destroy,
        )?;
        if !self.differing.is_empty() {
            writeln!(f, "{} facts differ:", self.differing.len())?;
            for d in self.differing.iter().take(SHOWN) {
                writeln!(
                    f,
                    "  {}: {} mirror {} table {}",
                    key_text(&d.key),
                    d.field,
                    d.mirror,
                    d.table
                )?;
            }
            if self.differing.len() > SHOWN {
                writeln!(f, "  ... and {} more", self.differing.len() - SHOWN)?;
            }
        }
        Ok(())
    }
}

fn key_text((zone, orig, id): &MirrorKey) -> String {
    let zone = if *zone != 0 {
        format!(" zone={zone}")
    } else {
        String::new()
    };
    format!("id={id}{zone} {}", tuple_text(orig))
}

fn status_text(s: Status) -> String {
    let names: Vec<&str> = s.names().collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join("|")
    }
}

fn state_text(s: Option<TcpState>) -> String {
    s.map_or("-".into(), |s| s.name().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctwasm_core::netlink::{self, CtAttr, NlHeader, ProtoInfoAttr, TcpInfoAttr};
    use ctwasm_core::{Addr, Family, L4Tuple};

    fn tuple(sport: u16) -> Tuple {
        Tuple {
            family: Family::Ipv4,
            src: Addr::v4([10, 0, 0, 1]),
            dst: Addr::v4([192, 0, 2, 1]),
            proto: 6,
            l4: L4Tuple::Ports {
                src: sport,
                dst: 443,
            },
        }
    }

    /// An event message as the engine encodes it, cut down to what a mirror reads.
    fn event(
        kind: MessageKind,
        sport: u16,
        id: u32,
        status: Status,
        state: Option<TcpState>,
    ) -> CtMessage {
        use netlink::consts::*;
        let t = tuple(sport);
        let mut attrs = vec![
            CtAttr::TupleOrig(netlink::tuple_attrs(&t)),
            CtAttr::TupleReply(netlink::tuple_attrs(&t.invert().unwrap())),
            CtAttr::Id(id),
            CtAttr::Status(status.0),
        ];
        if let Some(s) = state {
            attrs.push(CtAttr::ProtoInfo(vec![ProtoInfoAttr::Tcp(vec![
                TcpInfoAttr::State(s as u8),
            ])]));
        }
        let (msg, flags) = match kind {
            MessageKind::Destroy => (IPCTNL_MSG_CT_DELETE, 0),
            MessageKind::New => (IPCTNL_MSG_CT_NEW, NLM_F_CREATE | NLM_F_EXCL),
            MessageKind::Update => (IPCTNL_MSG_CT_NEW, 0),
        };
        let bytes = CtMessage {
            header: NlHeader {
                msg_type: (u16::from(NFNL_SUBSYS_CTNETLINK) << 8) | u16::from(msg),
                flags,
                seq: 0,
                port_id: 0,
            },
            family: 2,
            version: 0,
            res_id: 0,
            attrs,
        }
        .to_vec();
        CtMessage::parse(&bytes).unwrap().0
    }

    fn view(
        sport: u16,
        id: u32,
        status: Status,
        state: Option<TcpState>,
        dying: bool,
    ) -> EntryView {
        let t = tuple(sport);
        EntryView {
            id,
            zone: 0,
            orig: t,
            reply: t.invert().unwrap(),
            status,
            tcp_state: state,
            sctp_state: None,
            timeout_s: 0,
            mark: 0,
            counters_orig: Default::default(),
            counters_reply: Default::default(),
            start_ns: 0,
            dying,
        }
    }

    const CONF: Status = Status::CONFIRMED;
    const REPLIED: Status = Status(Status::CONFIRMED.0 | Status::SEEN_REPLY.0);

    #[test]
    fn new_update_destroy_by_tuple_and_id() {
        let mut m = Mirror::new();
        m.apply(&event(
            MessageKind::New,
            1,
            7,
            CONF,
            Some(TcpState::SynSent),
        ));
        // An UPDATE without a state change keeps the state the mirror knew.
        m.apply(&event(MessageKind::Update, 1, 7, REPLIED, None));
        let table = [view(1, 7, REPLIED, Some(TcpState::SynSent), false)];
        assert!(m.compare(&table).is_equal(), "{}", m.compare(&table));
        // Same tuple, another id: another entry; its DESTROY does not touch id 7.
        m.apply(&event(MessageKind::Destroy, 1, 8, CONF, None));
        assert_eq!((m.len(), m.counters().unknown_destroy), (1, 1));
        m.apply(&event(
            MessageKind::Destroy,
            1,
            7,
            REPLIED,
            Some(TcpState::Close),
        ));
        m.apply(&event(
            MessageKind::Destroy,
            1,
            7,
            REPLIED,
            Some(TcpState::Close),
        ));
        let c = m.counters();
        assert_eq!((m.len(), c.destroy, c.duplicate_destroy), (0, 3, 1));
        assert!(m.compare(&[]).is_equal());
        // A late UPDATE does not bring a destroyed entry back.
        m.apply(&event(MessageKind::Update, 1, 7, REPLIED, None));
        assert_eq!((m.len(), m.counters().after_destroy), (0, 1));
    }

    #[test]
    fn an_update_inserts_a_missed_entry_and_a_second_new_is_counted() {
        let mut m = Mirror::new();
        m.apply(&event(
            MessageKind::Update,
            2,
            9,
            REPLIED,
            Some(TcpState::Established),
        ));
        m.apply(&event(MessageKind::New, 2, 9, REPLIED, None));
        let c = m.counters();
        assert_eq!(
            (c.inserted, c.inserted_by_update, c.duplicate_new),
            (1, 1, 1)
        );
    }

    #[test]
    fn differences_are_listed_readably() {
        let mut m = Mirror::new();
        m.apply(&event(
            MessageKind::New,
            1,
            1,
            CONF,
            Some(TcpState::SynSent),
        ));
        m.apply(&event(MessageKind::New, 2, 2, CONF, None));
        m.apply(&event(MessageKind::New, 3, 3, CONF, None));
        let table = [
            view(1, 1, REPLIED, Some(TcpState::Established), false),
            view(3, 3, CONF, None, true),
            view(4, 4, CONF, None, false),
        ];
        let diff = m.compare(&table);
        assert_eq!(diff.missing, vec![(0, tuple(4), 4)]);
        assert_eq!(diff.extra, vec![(0, tuple(2), 2)]);
        assert_eq!(diff.awaiting_destroy, vec![(0, tuple(3), 3)]);
        assert_eq!(diff.differing.len(), 2);
        let text = diff.to_string();
        assert!(
            text.contains(
                "1 live in the table but not in the mirror:\n  id=4 tcp 10.0.0.1:4 -> 192.0.2.1:443"
            ),
            "{text}"
        );
        assert!(text.contains("id=1 tcp 10.0.0.1:1 -> 192.0.2.1:443: status mirror CONFIRMED table SEEN_REPLY|CONFIRMED"), "{text}");
        assert!(
            text.contains("tcp_state mirror SYN_SENT table ESTABLISHED"),
            "{text}"
        );
    }
}
