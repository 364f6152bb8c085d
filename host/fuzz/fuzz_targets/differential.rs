//! The same operation sequences through the native engine and the WebAssembly component: the
//! same verdicts, event bytes, statistics and call results, operation by operation.
#![no_main]

use ctwasm_host::BackendKind;
use ctwasm_host::testing::script::{Driver, decode, settings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let ops = decode(bytes);
    let run = |kind| {
        let driver = Driver::new(kind, &settings(7)).expect("a backend");
        driver
            .run(&ops)
            .unwrap_or_else(|e| panic!("{kind:?}: {e:#}\nscript: {ops:?}"))
    };
    let native = run(BackendKind::Native);
    let component = run(BackendKind::Component);
    if native != component {
        let at = native
            .iter()
            .zip(&component)
            .position(|(a, b)| a != b)
            .unwrap_or(native.len().min(component.len()));
        panic!(
            "the backends diverge at transcript byte {at}:\nnative    {:?}\ncomponent {:?}\nscript: {ops:?}",
            String::from_utf8_lossy(&native[at.saturating_sub(40)..(at + 80).min(native.len())]),
            String::from_utf8_lossy(
                &component[at.saturating_sub(40)..(at + 80).min(component.len())]
            )
        );
    }
});
