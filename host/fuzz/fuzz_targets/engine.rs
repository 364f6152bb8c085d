//! Engine operation sequences (packets from a pool of flows with sequence numbers, damaged
//! packets, time steps from 1 ms to 1 h, partial takes, failed deliveries, flush, delete, proxy
//! calls, snapshot round trips, listener changes) on the native engine, with the invariant: after
//! delivering everything and running time on, the table is empty and every confirmed entry's
//! DESTROY was delivered exactly once to the reliable listener.
#![no_main]

use ctwasm_host::BackendKind;
use ctwasm_host::testing::script::{Driver, decode, settings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let ops = decode(bytes);
    let driver = Driver::new(BackendKind::Native, &settings(7))
        .expect("a native backend")
        .without_transcript();
    if let Err(e) = driver.run(&ops) {
        panic!("{e:#}\nscript: {ops:?}");
    }
});
