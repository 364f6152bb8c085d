//! The ctnetlink codec on arbitrary bytes: decoding never panics, what decodes re-encodes to
//! bytes that decode to the same message, and the `conntrack -E` text and JSON formatters take
//! whatever decodes.
#![no_main]

use ctwasm_core::EventBits;
use ctwasm_core::batch::EventFrame;
use ctwasm_core::netlink::{CtMessage, ExpMessage, parse_messages};
use ctwasm_host::output::{format_conntrack, format_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok((msg, used)) = CtMessage::parse(bytes) {
        assert!(used <= bytes.len());
        let again = msg.to_vec();
        let (reparsed, _) = CtMessage::parse(&again).expect("re-encoded bytes decode");
        assert_eq!(reparsed, msg, "decode, encode, decode changed the message");
        let frame = EventFrame {
            events: EventBits(u16::from_le_bytes([
                bytes[0],
                bytes.get(1).copied().unwrap_or(0),
            ])),
            group: 1,
            flags: 0,
            ts_ns: 1_700_000_000_000_000_000,
            netlink: &bytes[..used],
        };
        let _ = format_conntrack(&frame, &msg);
        let _ = format_json(&frame, &msg);
    }
    if let Ok((msg, _)) = ExpMessage::parse(bytes) {
        let mut again = Vec::new();
        msg.emit_to_vec(&mut again);
        let (reparsed, _) = ExpMessage::parse(&again).expect("re-encoded bytes decode");
        assert_eq!(
            reparsed, msg,
            "decode, encode, decode changed the expectation"
        );
    }
    for msg in parse_messages(bytes).take(64) {
        let _ = msg;
    }
});
