//! Statistics: the kernel's conntrack counters plus the event-delivery figures it lacks.
//!
//! The counters are listed once, in [`stats_fields!`](crate::stats_fields): everything that walks
//! them by name (printing, snapshots, the WIT record on both sides of the component) is generated
//! from that list rather than written out again.

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
    /// IP fragments received for reassembly (the kernel's `ReasmReqds`).
    pub frag_received: u64,
    /// Datagrams reassembled from fragments and tracked whole (`ReasmOKs`).
    pub frag_reassembled: u64,
    /// Fragments dropped, and datagrams given up with the fragments they held: overlapping,
    /// inconsistent or oversized, or over the memory bound (`ReasmFails`, less timeouts).
    pub frag_failed: u64,
    /// Incomplete datagrams given up when their time ran out (`ReasmTimeout`).
    pub frag_timeout: u64,
    /// Incomplete datagrams waiting for fragments now.
    pub frag_queues: u64,
}

/// Calls `$callback!` with the names of [`Stats`]' fields, in the struct's order:
/// `$callback! { found, invalid, ..., dying_peak }`, which works where an item is expected as
/// well as where an expression is.
///
/// This is the one list of the counters; [`Stats::FIELD_NAMES`], [`Stats::values`],
/// [`Stats::from_values`] and [`Stats::fields`] are generated from it, and so can the
/// conversions to and from types with the same fields, such as the bindgen-generated WIT records
/// on each side of the component boundary:
///
/// ```
/// # macro_rules! declare { ($($f:ident),*) => { pub struct Mirror { $(pub $f: u64),* } } }
/// # ctwasm_core::stats_fields!(declare);
/// fn to_mirror(s: &ctwasm_core::Stats) -> Mirror {
///     macro_rules! convert {
///         ($($f:ident),*) => { Mirror { $($f: s.$f),* } };
///     }
///     ctwasm_core::stats_fields!(convert)
/// }
/// # assert_eq!(to_mirror(&ctwasm_core::Stats { dying_peak: 3, ..Default::default() }).dying_peak, 3);
/// ```
///
/// The list and the struct cannot drift apart in their set of names: [`Stats::from_values`]
/// builds a `Stats` literal from the list, which does not compile with a field missing or unknown.
/// A test checks that the order is the struct's.
#[macro_export]
macro_rules! stats_fields {
    ($callback:ident) => {
        $callback! {
            found,
            invalid,
            insert,
            insert_failed,
            drop,
            early_drop,
            error,
            ignore,
            untracked,
            entries,
            count,
            max,
            events_emitted,
            events_delivered,
            events_failed,
            destroy_retries,
            missed_pending,
            dying,
            dying_peak,
            frag_received,
            frag_reassembled,
            frag_failed,
            frag_timeout,
            frag_queues
        }
    };
}

macro_rules! stats_by_name {
    ($($field:ident),+) => {
        impl Stats {
            /// The field names, in the struct's order (the order of every array below).
            pub const FIELD_NAMES: [&'static str; Stats::FIELD_COUNT] = [$(stringify!($field)),+];

            /// The counters as an array, in [`Stats::FIELD_NAMES`] order.
            pub fn values(&self) -> [u64; Stats::FIELD_COUNT] {
                [$(self.$field),+]
            }

            /// The counters from an array in [`Stats::FIELD_NAMES`] order.
            pub fn from_values(values: [u64; Stats::FIELD_COUNT]) -> Stats {
                let [$($field),+] = values;
                Stats { $($field),+ }
            }
        }
    };
}

macro_rules! count_fields {
    ($($field:ident),+) => {
        [$(stringify!($field)),+].len()
    };
}

impl Stats {
    /// How many counters there are.
    pub const FIELD_COUNT: usize = stats_fields!(count_fields);

    /// `(name, value)` of every counter, in the struct's order.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, u64)> {
        Self::FIELD_NAMES.into_iter().zip(self.values())
    }
}

stats_fields!(stats_by_name);

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered() -> Stats {
        let mut values = [0; Stats::FIELD_COUNT];
        for (i, v) in values.iter_mut().enumerate() {
            *v = 100 + i as u64;
        }
        Stats::from_values(values)
    }

    #[test]
    fn values_round_trip() {
        let stats = numbered();
        assert_eq!(Stats::from_values(stats.values()), stats);
        assert_eq!(stats.values()[0], 100);
        assert_eq!((stats.found, stats.dying_peak), (100, 118));
        assert_eq!(
            Stats::from_values([0; Stats::FIELD_COUNT]),
            Stats::default()
        );
    }

    /// The derived `Debug` prints fields in declaration order, so it shows the struct's order.
    #[test]
    fn names_follow_the_struct_order() {
        let debug = format!("{:?}", numbered());
        let declared: Vec<&str> = debug
            .trim_start_matches("Stats {")
            .trim_end_matches('}')
            .split(',')
            .map(|pair| pair.split(':').next().unwrap().trim())
            .collect();
        assert_eq!(declared, Stats::FIELD_NAMES);
        assert_eq!(Stats::FIELD_COUNT, 24);
    }

    #[test]
    fn fields_pair_names_with_values() {
        let stats = Stats {
            drop: 7,
            dying_peak: 9,
            ..Stats::default()
        };
        let fields: Vec<_> = stats.fields().filter(|(_, v)| *v != 0).collect();
        assert_eq!(fields, [("drop", 7), ("dying_peak", 9)]);
        assert_eq!(stats.fields().count(), Stats::FIELD_COUNT);
    }

    /// The use the list is for: a type with the same fields declared, and converted both ways,
    /// as the component glue and the host do with the WIT record.
    #[test]
    fn the_list_declares_and_converts_a_twin_type() {
        macro_rules! declare {
            ($($f:ident),+) => {
                #[derive(Debug, Default, PartialEq)]
                struct Twin { $($f: u64),+ }
            };
        }
        stats_fields!(declare);
        let stats = numbered();
        let twin = {
            macro_rules! to_twin {
                ($($f:ident),+) => { Twin { $($f: stats.$f),+ } };
            }
            stats_fields!(to_twin)
        };
        let back = {
            macro_rules! from_twin {
                ($($f:ident),+) => { Stats { $($f: twin.$f),+ } };
            }
            stats_fields!(from_twin)
        };
        assert_eq!(back, stats);
        assert_ne!(twin, Twin::default());
    }
}
