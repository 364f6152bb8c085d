//! Operation scripts from arbitrary bytes (`ctwasm_host::testing::script`): every state the
//! engine reaches keeps the seed's promise, restores from its own snapshot and continues
//! identically, and the component answers exactly as the native engine does. The fuzz targets
//! under `host/fuzz` run the same checks for millions of scripts; these keep them in every
//! test run.

use ctwasm_host::BackendKind;
use ctwasm_host::testing::script::{Driver, decode, settings};
use proptest::prelude::*;

fn run(kind: BackendKind, bytes: &[u8], round_trips: bool) -> Vec<u8> {
    let ops = decode(bytes);
    let driver = Driver::new(kind, &settings(7)).expect("a backend");
    let driver = if round_trips {
        driver
    } else {
        driver.without_round_trips()
    };
    match driver.run(&ops) {
        Ok(transcript) => transcript,
        Err(e) => panic!("{e:#}\nscript: {ops:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_script_keeps_the_promise_and_survives_its_round_trips(
        bytes in proptest::collection::vec(any::<u8>(), 0..600)
    ) {
        let with = run(BackendKind::Native, &bytes, true);
        let without = run(BackendKind::Native, &bytes, false);
        prop_assert!(with == without, "a snapshot round trip changed what followed");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn the_component_answers_every_script_as_the_native_engine(
        bytes in proptest::collection::vec(any::<u8>(), 0..400)
    ) {
        let native = run(BackendKind::Native, &bytes, true);
        let component = run(BackendKind::Component, &bytes, true);
        prop_assert!(native == component, "the backends diverge");
    }
}

#[test]
fn a_script_that_does_everything_once() {
    // Open, handshake, data, a failed DESTROY, a round trip, time: each operation at least once.
    let bytes = [
        0x00, 0, 0, 0, // SYN of flow 0
        0x80, 0, 0, 0, // SYN-ACK
        0x00, 0, 2, 10, // ACK with data
        0x08, 7, // take
        0x09, 0xff, 0xff, // report, all failed
        0x0a, // flush
        0x0f, // snapshot round trip
        0x0b, 1, // open flow 1
        0x0c, 0, 3, // transfer
        0x0d, 0, // close
        0x86, 200, // an advance of minutes
        0x05, 4, 20, 0x40, // a damaged packet
    ];
    let ops = decode(&bytes);
    assert!(ops.len() >= 12, "{ops:?}");
    let native = run(BackendKind::Native, &bytes, true);
    assert_eq!(native, run(BackendKind::Native, &bytes, false));
    assert_eq!(native, run(BackendKind::Component, &bytes, true));
}
