//! Statistics: the kernel's conntrack counters plus the event-delivery figures it lacks.

/// Counters, named as `conntrack -S` names them where the kernel has one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets whose entry was found in the table.
    pub found: u64,
    /// Packets that fit no entry or were malformed (the kernel's `invalid`).
    pub invalid: u64,
    /// Entries confirmed into the table.
    pub insert: u64,
    pub insert_failed: u64,
    /// New connections refused because the table was full.
    pub drop: u64,
    /// Entries evicted to make room.
    pub early_drop: u64,
    pub error: u64,
    /// TCP packets accepted without changing state because our view may be out of sync.
    pub ignore: u64,
    /// Packets conntrack does not track (ICMPv6 neighbour discovery, MLD).
    pub untracked: u64,
    /// Live entries (in the hash table).
    pub entries: u64,
    /// Live plus dying entries: what `nf_conntrack_max` bounds.
    pub count: u64,
    /// `nf_conntrack_max` in force.
    pub max: u64,
    /// Event messages produced.
    pub events_emitted: u64,
    /// Messages the host reported delivered / failed.
    pub events_delivered: u64,
    pub events_failed: u64,
    /// DESTROY messages sent again from the dying list.
    pub destroy_retries: u64,
    /// Entries now carrying undelivered event bits.
    pub missed_pending: u64,
    /// Entries on the dying list now (their DESTROY not yet delivered), and the most ever.
    pub dying: u64,
    pub dying_peak: u64,
}
