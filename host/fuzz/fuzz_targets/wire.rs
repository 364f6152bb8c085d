//! The wire parsers on arbitrary bytes, then the whole packet path of the engine: no input
//! panics, and what the parsers accept lies inside the buffer.
#![no_main]

use ctwasm_core::wire::{parse_embedded_l3, parse_l3};
use ctwasm_core::{Config, Tracker};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|packet: &[u8]| {
    for info in [parse_l3(packet), parse_embedded_l3(packet)]
        .into_iter()
        .flatten()
    {
        assert!(info.l4_offset + info.l4_len <= packet.len());
        assert_eq!(info.l4(packet).len(), info.l4_len);
    }
    // The same bytes through the trackers, twice (a new entry, then a packet of it), in both
    // directions' worth of state.
    let mut tracker = Tracker::new(Config::default());
    let v1 = tracker.ingest(1_000_000_000, 0, packet);
    let v2 = tracker.ingest(2_000_000_000, 0, packet);
    let stats = tracker.stats();
    assert_eq!(stats.entries, stats.count);
    let _ = (v1, v2);
});
