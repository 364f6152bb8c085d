//! The README's embedding example: a TCP handshake into a tracker, its events out.

use ctwasm_core::wire::build;
use ctwasm_host::{Batch, Delivery, Listeners, Tracker};

fn main() -> Result<(), ctwasm_host::Error> {
    // The engine as a sandboxed component, with one sysctl changed.
    let mut tracker = Tracker::builder()
        .sysctl("net.netfilter.nf_conntrack_tcp_timeout_established", 3600)
        .build()?;
    tracker.set_listeners(Listeners::Present)?;

    // A TCP handshake, as L3 packets with their times (nanoseconds) and zone.
    let (client, server) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    let mut batch = Batch::new();
    let syn = build::tcp(40000, 443, 1, 0, 0x02, 65535, 0);
    let syn_ack = build::tcp(443, 40000, 9, 2, 0x12, 65535, 0);
    let ack = build::tcp(40000, 443, 2, 10, 0x10, 65535, 0);
    batch.push(1_000, 0, &build::ipv4(client, server, 6, &syn));
    batch.push(2_000, 0, &build::ipv4(server, client, 6, &syn_ack));
    batch.push(3_000, 0, &build::ipv4(client, server, 6, &ack));
    let verdicts = tracker.ingest(3_000, &batch)?;
    println!("verdicts: {verdicts:?}");

    // The events, as `conntrack -E` prints them; each is reported delivered.
    tracker.poll_events(|event| {
        println!("{event}");
        Delivery::Delivered
    })?;

    // The table, as `conntrack -L` lists it.
    for entry in tracker.dump()? {
        println!("{:?} {:?}", entry.tcp_state, entry.orig);
    }
    Ok(())
}
