//! Scenario tests of the whole packet path on virtual time: each asserts the event sequence the
//! live kernel emits for the same traffic (the sequences in `host/docs/kernel-behaviour.md`,
//! "Making captures"), for IPv4 and IPv6, plus the event cache's missed-bit and dying-list
//! behaviour.

use super::table::Life;
use super::*;
use crate::config::{RetryPolicy, Sysctls};
use crate::event::ExpEventBits;
use crate::netlink::{CtAttr, CtMessage};
use crate::proto::tcp::flag::*;
use crate::snapshot::SnapshotError;
use crate::tuple::{L4Tuple, ipproto};
use crate::wire::build;

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
/// A wall-clock-like start so timestamps look like a capture's.
const T0: u64 = 1_700_000_000 * S;

/// One event as the tests compare it: type, TCP state, SEEN_REPLY, ASSURED.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    kind: MessageKind,
    state: Option<TcpState>,
    seen_reply: bool,
    assured: bool,
    id: u32,
    msg: CtMessage,
    bits: EventBits,
    redelivery: bool,
}

fn ev(
    kind: MessageKind,
    state: Option<TcpState>,
    seen_reply: bool,
    assured: bool,
) -> (MessageKind, Option<TcpState>, bool, bool) {
    (kind, state, seen_reply, assured)
}

struct Run {
    t: Tracker,
    v6: bool,
    log: Vec<Seen>,
    /// Outcome to report for the next messages (default: delivered).
    fail_next: usize,
    /// Expectation events received: kind, expectation id, bits.
    expect_log: Vec<(MessageKind, u32, ExpEventBits)>,
}

impl Run {
    fn new(v6: bool, tweak: impl FnOnce(&mut Sysctls)) -> Run {
        let mut config = Config::default();
        config.sysctls.acct = true;
        config.sysctls.timestamp = true;
        tweak(&mut config.sysctls);
        Run {
            t: Tracker::new(config),
            v6,
            log: Vec::new(),
            fail_next: 0,
            expect_log: Vec::new(),
        }
    }

    fn ip(&self, from_client: bool, proto: u8, l4: &[u8]) -> Vec<u8> {
        // Client and server share the loopback address, as in the oracle's captures.
        if self.v6 {
            let lo = std::net::Ipv6Addr::LOCALHOST.octets();
            build::ipv6(lo, lo, proto, l4)
        } else {
            let _ = from_client;
            build::ipv4([127, 0, 0, 1], [127, 0, 0, 1], proto, l4)
        }
    }

    fn tcp(
        &mut self,
        at: u64,
        from_client: bool,
        seq: u32,
        ack: u32,
        flags: u8,
        len: usize,
    ) -> Verdict {
        let (s, d) = if from_client {
            (40001, 5001)
        } else {
            (5001, 40001)
        };
        let l4 = build::tcp(s, d, seq, ack, flags, 65483, len);
        let p = self.ip(from_client, ipproto::TCP, &l4);
        self.feed(at, &p)
    }

    fn udp(&mut self, at: u64, from_client: bool, len: usize) -> Verdict {
        let (s, d) = if from_client {
            (40002, 5001)
        } else {
            (5001, 40002)
        };
        let l4 = build::udp(s, d, len);
        let p = self.ip(from_client, ipproto::UDP, &l4);
        self.feed(at, &p)
    }

    /// A UDP-Lite datagram: the UDP header with the coverage of the whole datagram (0) and a
    /// checksum that is not zero (UDP-Lite mandates one; nothing here verifies it).
    fn udplite(&mut self, at: u64, from_client: bool, len: usize) -> Verdict {
        let (s, d) = if from_client {
            (40002, 5001)
        } else {
            (5001, 40002)
        };
        let mut l4 = build::udp(s, d, len);
        l4[4..8].copy_from_slice(&[0, 0, 0x12, 0x34]);
        let p = self.ip(from_client, ipproto::UDPLITE, &l4);
        self.feed(at, &p)
    }

    /// An SCTP packet between ports 40003 and 5001 with verification tag `vtag`.
    fn sctp(&mut self, at: u64, from_client: bool, vtag: u32, chunks: &[Vec<u8>]) -> Verdict {
        let (s, d) = if from_client {
            (40003, 5001)
        } else {
            (5001, 40003)
        };
        let l4 = build::sctp(s, d, vtag, chunks);
        let p = self.ip(from_client, ipproto::SCTP, &l4);
        self.feed(at, &p)
    }

    /// Each event's type and SCTP state.
    fn sctp_sequence(&self) -> Vec<(MessageKind, Option<SctpState>, bool)> {
        self.log
            .iter()
            .map(|s| (s.kind, s.msg.sctp_state(), s.assured))
            .collect()
    }

    fn echo(&mut self, at: u64, request: bool, seq: u16) -> Verdict {
        let (l4, proto) = if self.v6 {
            (build::icmpv6_echo(request, 0x1234, seq), ipproto::ICMPV6)
        } else {
            (build::icmp_echo(request, 0x1234, seq), ipproto::ICMP)
        };
        let p = self.ip(request, proto, &l4);
        self.feed(at, &p)
    }

    fn feed(&mut self, at: u64, packet: &[u8]) -> Verdict {
        let v = self.t.ingest(T0 + at, 0, packet);
        self.pump();
        v
    }

    fn advance(&mut self, at: u64) {
        self.t.advance(T0 + at);
        self.pump();
    }

    /// Takes every pending message, logs it and reports it.
    fn pump(&mut self) {
        loop {
            let mut out = Vec::new();
            let n = self.t.take_events(usize::MAX, &mut out);
            if n == 0 {
                return;
            }
            let mut results = Vec::new();
            for frame in batch::events(&out) {
                let frame = frame.expect("well-framed events");
                if frame.group >= crate::engine::expect::GROUP_EXP_NEW {
                    let (msg, _) = crate::netlink::ExpMessage::parse(frame.netlink)
                        .expect("an expectation message");
                    let mut reemitted = Vec::new();
                    msg.emit_to_vec(&mut reemitted);
                    assert_eq!(reemitted, frame.netlink, "typed re-emit differs");
                    let failed = self.fail_next > 0;
                    if failed {
                        self.fail_next -= 1;
                        results.push(Delivery::Failed);
                    } else {
                        results.push(Delivery::Delivered);
                        self.expect_log.push((
                            msg.kind().expect("NEW or DESTROY"),
                            msg.id().unwrap(),
                            // The frame's event field holds the expectation's own bits.
                            ExpEventBits(frame.events.0),
                        ));
                    }
                    continue;
                }
                let (msg, used) = CtMessage::parse(frame.netlink).expect("a ctnetlink message");
                assert_eq!(used, frame.netlink.len());
                // The typed codec, itself checked against bytes captured from Linux, re-emits
                // every event the engine writes byte for byte.
                assert_eq!(msg.to_vec(), frame.netlink, "typed re-emit differs");
                let status = msg.status().expect("status in every event");
                let failed = self.fail_next > 0;
                if failed {
                    self.fail_next -= 1;
                    results.push(Delivery::Failed);
                } else {
                    results.push(Delivery::Delivered);
                    self.log.push(Seen {
                        kind: msg.kind().expect("an event message"),
                        state: msg.tcp_state(),
                        seen_reply: status.contains(Status::SEEN_REPLY),
                        assured: status.contains(Status::ASSURED),
                        id: msg.id().expect("id in every event"),
                        bits: frame.events,
                        redelivery: frame.is_redelivery(),
                        msg,
                    });
                }
            }
            self.t.report_delivery(&results);
            self.t.advance(self.t.now());
        }
    }

    fn sequence(&self) -> Vec<(MessageKind, Option<TcpState>, bool, bool)> {
        self.log
            .iter()
            .map(|s| (s.kind, s.state, s.seen_reply, s.assured))
            .collect()
    }
}

use MessageKind::{Destroy as D, New as N, Update as U};
use TcpState::{Close, Established, FinWait, LastAck, SynRecv, SynSent, SynSent2, TimeWait};

/// The handshake of the oracle's TCP cases: client ISN 1000, server ISN 5000.
fn handshake(r: &mut Run) {
    assert_eq!(r.tcp(0, true, 1000, 0, SYN, 0), Verdict::New);
    assert_eq!(
        r.tcp(MS / 10, false, 5000, 1001, SYN | ACK, 0),
        Verdict::EstablishedReply
    );
    assert_eq!(
        r.tcp(MS / 5, true, 1001, 5001, ACK, 0),
        Verdict::Established
    );
}

fn both_families(test: impl Fn(bool)) {
    test(false);
    test(true);
}

#[test]
fn tcp_normal_close_client_first() {
    both_families(|v6| {
        let mut r = Run::new(v6, |s| {
            s.set("nf_conntrack_tcp_timeout_time_wait", "3").unwrap()
        });
        handshake(&mut r);
        r.tcp(MS, true, 1001, 5001, ACK | PSH, 100);
        r.tcp(2 * MS, false, 5001, 1101, ACK, 0);
        r.tcp(3 * MS, false, 5001, 1101, ACK | PSH, 100);
        r.tcp(4 * MS, true, 1101, 5101, ACK, 0);
        r.tcp(100 * MS, true, 1101, 5101, FIN | ACK, 0);
        r.tcp(101 * MS, false, 5101, 1102, FIN | ACK, 0);
        r.tcp(102 * MS, true, 1102, 5102, ACK, 0);
        r.advance(10 * S);
        assert_eq!(
            r.sequence(),
            [
                ev(N, Some(SynSent), false, false),
                ev(U, Some(SynRecv), true, false),
                ev(U, Some(Established), true, true),
                ev(U, Some(FinWait), true, true),
                ev(U, Some(LastAck), true, true),
                ev(U, Some(TimeWait), true, true),
                ev(D, Some(TimeWait), true, true),
            ]
        );
        // The kernel's timeouts when each event was raised, and 6/4 packets on DESTROY.
        let timeouts: Vec<_> = r.log.iter().map(|s| s.msg.timeout()).collect();
        assert_eq!(
            timeouts,
            [
                Some(120),
                Some(60),
                Some(432000),
                Some(120),
                Some(30),
                Some(3),
                None
            ]
        );
        let destroy = &r.log[6].msg;
        assert_eq!(destroy.counters_orig().unwrap().packets, 6);
        assert_eq!(destroy.counters_reply().unwrap().packets, 4);
        let (start, stop) = destroy.timestamp().unwrap();
        assert_eq!(start, Some(T0));
        // The stop time is the expiry, not the moment the timer was looked at.
        assert_eq!(stop, Some(T0 + 102 * MS + 3 * S));
        assert!(destroy.status().unwrap().contains(Status::DYING));
        assert!(r.log.iter().all(|s| s.id == r.log[0].id));
        assert_eq!(r.t.stats().count, 0);
    });
}

#[test]
fn tcp_reset_after_established_closes_after_the_close_timeout() {
    both_families(|v6| {
        let mut r = Run::new(v6, |_| {});
        handshake(&mut r);
        r.tcp(MS, true, 1001, 5001, ACK | PSH, 100);
        r.tcp(2 * MS, false, 5001, 1101, ACK, 0);
        r.tcp(3 * MS, true, 1101, 5001, RST | ACK, 0);
        r.advance(9 * S);
        assert_eq!(r.log.len(), 4, "no DESTROY before tcp_timeout_close (10 s)");
        r.advance(11 * S);
        assert_eq!(
            r.sequence(),
            [
                ev(N, Some(SynSent), false, false),
                ev(U, Some(SynRecv), true, false),
                ev(U, Some(Established), true, true),
                ev(U, Some(Close), true, true),
                ev(D, Some(Close), true, true),
            ]
        );
    });
}

#[test]
fn tcp_server_reset_is_the_same_as_a_client_reset() {
    let mut r = Run::new(false, |_| {});
    handshake(&mut r);
    r.tcp(MS, false, 5001, 1001, RST | ACK, 0);
    r.advance(20 * S);
    assert_eq!(
        r.sequence()[3..],
        [
            ev(U, Some(Close), true, true),
            ev(D, Some(Close), true, true)
        ]
    );
}

#[test]
fn tcp_refused_connection_is_destroyed_at_once_without_seen_reply() {
    both_families(|v6| {
        let mut r = Run::new(v6, |_| {});
        r.tcp(0, true, 1000, 0, SYN, 0);
        r.tcp(MS / 10, false, 0, 1001, RST | ACK, 0);
        assert_eq!(
            r.sequence(),
            [
                ev(N, Some(SynSent), false, false),
                ev(D, Some(Close), false, false)
            ]
        );
        let status = r.log[1].msg.status().unwrap();
        assert_eq!(status, Status(Status::CONFIRMED.0 | Status::DYING.0));
        assert_eq!(r.log[1].bits, EventBits::DESTROY);
        assert_eq!(r.t.stats().count, 0);
    });
}

#[test]
fn tcp_simultaneous_open_goes_through_syn_sent2() {
    let mut r = Run::new(false, |_| {});
    r.tcp(0, true, 1000, 0, SYN, 0);
    r.tcp(MS, false, 5000, 0, SYN, 0);
    r.tcp(2 * MS, true, 1000, 5001, SYN | ACK, 0);
    r.tcp(3 * MS, false, 5000, 1001, SYN | ACK, 0);
    r.tcp(4 * MS, false, 5001, 1001, ACK, 0);
    assert_eq!(
        r.sequence(),
        [
            ev(N, Some(SynSent), false, false),
            ev(U, Some(SynSent2), true, false),
            ev(U, Some(SynRecv), true, false),
            ev(U, Some(Established), true, true),
        ]
    );
}

#[test]
fn tcp_reopen_after_time_wait_makes_a_new_entry() {
    both_families(|v6| {
        let mut r = Run::new(v6, |_| {});
        handshake(&mut r);
        r.tcp(MS, false, 5001, 1001, FIN | ACK, 0);
        r.tcp(2 * MS, true, 1001, 5002, FIN | ACK, 0);
        r.tcp(3 * MS, false, 5002, 1002, ACK, 0);
        assert_eq!(r.log.last().unwrap().state, Some(TimeWait));
        let old_id = r.log[0].id;
        assert_eq!(r.tcp(S, true, 90_000, 0, SYN, 0), Verdict::New);
        let tail: Vec<_> = r.sequence()[r.log.len() - 2..].to_vec();
        assert_eq!(
            tail,
            [
                ev(D, Some(TimeWait), true, true),
                ev(N, Some(SynSent), false, false)
            ]
        );
        assert_eq!(r.log[r.log.len() - 2].id, old_id);
        assert_ne!(r.log.last().unwrap().id, old_id);
        assert_eq!(r.t.stats().entries, 1);
    });
}

#[test]
fn tcp_mid_stream_pickup_is_established_without_seen_reply() {
    let mut r = Run::new(false, |_| {});
    assert_eq!(r.tcp(0, true, 7000, 9000, ACK, 10), Verdict::New);
    assert_eq!(r.sequence(), [ev(N, Some(Established), false, false)]);
    // Capped at the unacknowledged timeout until the other side answers.
    assert_eq!(r.log[0].msg.timeout(), Some(300));
    let mut strict = Run::new(false, |s| s.tcp_loose = false);
    assert_eq!(strict.tcp(0, true, 7000, 9000, ACK, 10), Verdict::Invalid);
    assert_eq!(strict.t.stats().invalid, 1);
    assert!(strict.log.is_empty());
}

#[test]
fn tcp_packets_that_cannot_start_or_fit_a_connection_are_invalid() {
    let mut r = Run::new(false, |_| {});
    assert_eq!(r.tcp(0, true, 1, 0, FIN | ACK, 0), Verdict::Invalid);
    assert_eq!(r.tcp(0, true, 1, 0, SYN | FIN, 0), Verdict::Invalid);
    assert_eq!(r.tcp(0, true, 1, 0, RST, 0), Verdict::Invalid);
    assert_eq!(r.t.stats().invalid, 3);
    assert_eq!(r.t.stats().count, 0);
}

#[test]
fn udp_one_way_times_out_unreplied() {
    both_families(|v6| {
        let mut r = Run::new(v6, |_| {});
        assert_eq!(r.udp(0, true, 10), Verdict::New);
        r.advance(29 * S);
        assert_eq!(r.log.len(), 1);
        r.advance(30 * S);
        assert_eq!(
            r.sequence(),
            [ev(N, None, false, false), ev(D, None, false, false)]
        );
        let d = &r.log[1].msg;
        assert_eq!(
            (
                d.counters_orig().unwrap().packets,
                d.counters_reply().unwrap().packets
            ),
            (1, 0)
        );
        assert_eq!(r.log[0].msg.timeout(), Some(30));
    });
}

#[test]
fn udp_request_response_within_two_seconds_is_never_assured() {
    both_families(|v6| {
        let mut r = Run::new(v6, |_| {});
        r.udp(0, true, 10);
        r.udp(MS, false, 10);
        r.udp(50 * MS, true, 10);
        r.udp(51 * MS, false, 10);
        r.advance(40 * S);
        assert_eq!(
            r.sequence(),
            [
                ev(N, None, false, false),
                ev(U, None, true, false),
                ev(D, None, true, false)
            ]
        );
    });
}

#[test]
fn udp_stream_rule_assures_after_two_seconds() {
    both_families(|v6| {
        let mut r = Run::new(v6, |_| {});
        r.udp(0, true, 10);
        r.udp(MS, false, 10);
        r.udp(50 * MS, true, 10);
        r.udp(51 * MS, false, 10);
        r.udp(2500 * MS, true, 10);
        r.udp(2501 * MS, false, 10);
        r.advance(100 * S);
        assert_eq!(r.log.len(), 3, "the stream timeout (120 s) keeps it alive");
        r.advance(2500 * MS + 121 * S);
        assert_eq!(
            r.sequence(),
            [
                ev(N, None, false, false),
                ev(U, None, true, false),
                ev(U, None, true, true),
                ev(D, None, true, true),
            ]
        );
        assert_eq!(r.log[2].msg.timeout(), Some(120));
    });
}

/// UDP-Lite has no two-second rule: the first packet after the reply assures the entry and
/// gives it the stream timeout.
#[test]
fn udplite_is_assured_by_the_first_packet_after_the_reply() {
    both_families(|v6| {
        let mut r = Run::new(v6, |_| {});
        assert_eq!(r.udplite(0, true, 10), Verdict::New);
        assert_eq!(r.udplite(MS, false, 10), Verdict::EstablishedReply);
        assert_eq!(r.udplite(50 * MS, true, 10), Verdict::Established);
        r.advance(100 * S);
        assert_eq!(r.log.len(), 3, "the stream timeout (120 s) keeps it alive");
        r.advance(50 * MS + 120 * S);
        assert_eq!(
            r.sequence(),
            [
                ev(N, None, false, false),
                ev(U, None, true, false),
                ev(U, None, true, true),
                ev(D, None, true, true),
            ]
        );
        assert_eq!(
            r.log[1].msg.timeout(),
            Some(30),
            "the reply: still unreplied's"
        );
        assert_eq!(r.log[2].msg.timeout(), Some(120));
        // Its flows are keyed by ports: another source port is another entry.
        let tuple = r.log[0].msg.orig().unwrap();
        assert_eq!(tuple.proto, ipproto::UDPLITE);
        assert!(matches!(
            tuple.l4,
            crate::tuple::L4Tuple::Ports {
                src: 40002,
                dst: 5001
            }
        ));
    });
}

/// A UDP-Lite header with a coverage shorter than itself, longer than the datagram, or no
/// checksum is invalid, and creates no entry.
#[test]
fn udplite_with_a_bad_coverage_or_no_checksum_is_invalid() {
    let mut r = Run::new(false, |_| {});
    for (coverage, checksum) in [(7u16, 0x1234u16), (9 + 18, 0x1234), (0, 0)] {
        let mut l4 = build::udp(40002, 5001, 10);
        l4[4..6].copy_from_slice(&coverage.to_be_bytes());
        l4[6..8].copy_from_slice(&checksum.to_be_bytes());
        let p = r.ip(true, ipproto::UDPLITE, &l4);
        assert_eq!(r.feed(0, &p), Verdict::Invalid, "coverage {coverage}");
    }
    assert_eq!(r.t.stats().entries, 0);
}

/// GRE version 0: keyed 0 and 0, 30 s until the reply, then assured with 180 s, timeouts fixed
/// when the entry is made.
#[test]
fn gre_v0_is_keyed_by_zeros_and_assured_after_its_reply() {
    both_families(|v6| {
        let mut r = Run::new(v6, |s| s.gre_timeout_stream = 170);
        // Two addresses: keyed 0 and 0 both ways, one address would make both tuples one.
        let gre = [0x00, 0x00, 0x08, 0x00, 0x45, 0, 0, 20];
        let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let (mut a6, mut b6) = ([0u8; 16], [0u8; 16]);
        (a6[15], b6[15]) = (1, 2);
        let packet = |from: bool| match (v6, from) {
            (false, true) => build::ipv4(a, b, ipproto::GRE, &gre),
            (false, false) => build::ipv4(b, a, ipproto::GRE, &gre),
            (true, true) => build::ipv6(a6, b6, ipproto::GRE, &gre),
            (true, false) => build::ipv6(b6, a6, ipproto::GRE, &gre),
        };
        let (p, q) = (packet(true), packet(false));
        assert_eq!(r.feed(0, &p), Verdict::New);
        // A later change of the sysctl leaves the entry's own timeouts alone.
        r.t.config.sysctls.gre_timeout_stream = 5;
        assert_eq!(r.feed(MS, &q), Verdict::EstablishedReply);
        assert_eq!(r.feed(2 * MS, &p), Verdict::Established);
        r.advance(160 * S);
        assert_eq!(r.log.len(), 3, "still alive on its 170 s");
        r.advance(2 * MS + 170 * S);
        assert_eq!(
            r.sequence(),
            [
                ev(N, None, false, false),
                ev(U, None, true, false),
                ev(U, None, true, true),
                ev(D, None, true, true),
            ]
        );
        assert_eq!(r.log[0].msg.timeout(), Some(30));
        let t = r.log[0].msg.orig().unwrap();
        assert_eq!(t.l4, crate::tuple::L4Tuple::Ports { src: 0, dst: 0 });
    });
}

/// An ICMP error quoting a GRE or a UDP-Lite packet finds its entry by the quoted keys or
/// ports: RELATED, in the reply direction.
#[test]
fn icmp_errors_quoting_gre_and_udplite_are_related() {
    let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    let mut lite = build::udp(40002, 5001, 10);
    lite[4..8].copy_from_slice(&[0, 0, 0x12, 0x34]);
    let gre_v1 = [0x30, 0x81, 0x88, 0x0b, 0, 0, 0x11, 0x11, 0, 0, 0, 1];
    // With the byte of the key each quotes: UDP-Lite's destination port, GRE's call id.
    for (proto, l4, key_at) in [
        (ipproto::UDPLITE, &lite[..], 3),
        (ipproto::GRE, &gre_v1[..], 7),
    ] {
        let mut r = Run::new(false, |_| {});
        let sent = build::ipv4(a, b, proto, l4);
        assert_eq!(r.feed(0, &sent), Verdict::New);
        // The destination answers with a protocol unreachable quoting what it got.
        let error = build::ipv4(b, a, ipproto::ICMP, &build::icmp_error(3, 2, &sent[..28]));
        assert_eq!(
            r.feed(MS, &error),
            Verdict::RelatedReply,
            "protocol {proto}"
        );
        // Quoting other keys or ports finds nothing.
        let mut other = sent.clone();
        other[20 + key_at] ^= 0x01;
        let error = build::ipv4(b, a, ipproto::ICMP, &build::icmp_error(3, 2, &other[..28]));
        assert_eq!(r.feed(2 * MS, &error), Verdict::Invalid, "protocol {proto}");
    }
}

/// Enhanced GRE (PPTP): keyed by the call id; without a helper the answer, which carries the
/// other side's call id, is a flow of its own. Not PPP: invalid.
#[test]
fn gre_v1_is_keyed_by_call_id_and_its_answer_is_another_flow() {
    let mut r = Run::new(false, |_| {});
    let v1 = |call: u16| {
        let mut h = vec![0x20, 0x01, 0x88, 0x0b, 0, 0];
        h.extend_from_slice(&call.to_be_bytes());
        h
    };
    let out = r.ip(true, ipproto::GRE, &v1(0x1111));
    let back = r.ip(false, ipproto::GRE, &v1(0x2222));
    assert_eq!(r.feed(0, &out), Verdict::New);
    assert_eq!(r.feed(MS, &back), Verdict::New, "another flow");
    assert_eq!(r.feed(2 * MS, &out), Verdict::Established);
    assert_eq!(r.t.stats().entries, 2);
    let not_ppp = r.ip(true, ipproto::GRE, &[0x20, 0x01, 0x08, 0x00, 0, 0, 0, 1]);
    assert_eq!(r.feed(3 * MS, &not_ppp), Verdict::Invalid);
}

/// The client's and the server's SCTP verification tags.
const TAG_C: u32 = 0x1111_1111;
const TAG_S: u32 = 0x2222_2222;

mod sctp_chunks {
    use crate::wire::build;
    use crate::wire::sctp::chunk;

    pub fn init() -> Vec<u8> {
        build::sctp_init(chunk::INIT, super::TAG_C)
    }
    pub fn init_ack() -> Vec<u8> {
        build::sctp_init(chunk::INIT_ACK, super::TAG_S)
    }
    pub fn bare(kind: u8) -> Vec<u8> {
        build::sctp_chunk(kind, 0, &[])
    }
    pub fn data() -> Vec<u8> {
        build::sctp_chunk(
            chunk::DATA,
            3,
            &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
        )
    }
    pub fn heartbeat(kind: u8) -> Vec<u8> {
        build::sctp_chunk(kind, 0, &[0, 1, 0, 8, 1, 2, 3, 4])
    }
}

/// INIT, INIT ACK, COOKIE ECHO, COOKIE ACK: the association's setup moves the entry CLOSED,
/// COOKIE_WAIT, COOKIE_ECHOED, ESTABLISHED (assured), each with its timeout; DATA, SACK and a
/// heartbeat leave it; the shutdown walks it back to CLOSED, which times out after 10 s. The
/// sequence and the counters are what Linux 6.18 reported for the same chunks.
#[test]
fn an_sctp_association_walks_the_kernels_states() {
    use crate::wire::sctp::chunk;
    use SctpState as St;
    use sctp_chunks::*;
    both_families(|v6| {
        let mut r = Run::new(v6, |_| {});
        assert_eq!(r.sctp(0, true, 0, &[init()]), Verdict::New);
        assert_eq!(
            r.sctp(MS, false, TAG_C, &[init_ack()]),
            Verdict::EstablishedReply
        );
        assert_eq!(
            r.sctp(2 * MS, true, TAG_S, &[bare(chunk::COOKIE_ECHO)]),
            Verdict::Established
        );
        assert_eq!(
            r.sctp(3 * MS, false, TAG_C, &[bare(chunk::COOKIE_ACK)]),
            Verdict::EstablishedReply
        );
        assert_eq!(r.sctp(4 * MS, true, TAG_S, &[data()]), Verdict::Established);
        let sack = build::sctp_chunk(chunk::SACK, 0, &[0; 12]);
        assert_eq!(
            r.sctp(5 * MS, false, TAG_C, &[sack]),
            Verdict::EstablishedReply
        );
        assert_eq!(
            r.sctp(6 * MS, true, TAG_S, &[heartbeat(chunk::HEARTBEAT)]),
            Verdict::Established
        );
        assert_eq!(
            r.sctp(7 * MS, false, TAG_C, &[heartbeat(chunk::HEARTBEAT_ACK)]),
            Verdict::EstablishedReply
        );
        let shutdown = build::sctp_chunk(chunk::SHUTDOWN, 0, &1u32.to_be_bytes());
        assert_eq!(
            r.sctp(8 * MS, true, TAG_S, &[shutdown]),
            Verdict::Established
        );
        assert_eq!(
            r.sctp(9 * MS, false, TAG_C, &[bare(chunk::SHUTDOWN_ACK)]),
            Verdict::EstablishedReply
        );
        assert_eq!(
            r.sctp(10 * MS, true, TAG_S, &[bare(chunk::SHUTDOWN_COMPLETE)]),
            Verdict::Established
        );
        r.advance(10 * MS + 9 * S);
        assert_eq!(r.log.len(), 7, "CLOSED holds for 10 s");
        r.advance(10 * MS + 10 * S);
        assert_eq!(
            r.sctp_sequence(),
            [
                (N, Some(St::Closed), false),
                (U, Some(St::CookieWait), false),
                (U, Some(St::CookieEchoed), false),
                (U, Some(St::Established), true),
                (U, Some(St::ShutdownSent), true),
                (U, Some(St::ShutdownAckSent), true),
                (U, Some(St::Closed), true),
                (D, Some(St::Closed), true),
            ]
        );
        let timeouts: Vec<_> = r.log.iter().map(|s| s.msg.timeout()).collect();
        assert_eq!(
            timeouts,
            [
                Some(10),
                Some(3),
                Some(3),
                Some(210),
                Some(3),
                Some(3),
                Some(10),
                None
            ]
        );
        let destroy = &r.log[7].msg;
        assert_eq!(destroy.counters_orig().map(|c| c.packets), Some(6));
        assert_eq!(destroy.counters_reply().map(|c| c.packets), Some(5));
        // NEW and UPDATE carry both tags; DESTROY the state alone.
        let vtags = |m: &CtMessage| {
            m.attrs.iter().find_map(|a| match a {
                CtAttr::ProtoInfo(p) => p.iter().find_map(|p| match p {
                    crate::netlink::ProtoInfoAttr::Sctp(v) => Some(v.len()),
                    _ => None,
                }),
                _ => None,
            })
        };
        assert_eq!(vtags(&r.log[3].msg), Some(3));
        assert_eq!(vtags(&destroy.clone()), Some(1));
    });
}

/// First packets that cannot start an entry (RFC 9260 §8.4 and the kernel's chunk checks) are
/// invalid and leave no entry.
#[test]
fn sctp_packets_that_cannot_start_an_association_are_invalid() {
    use crate::wire::sctp::chunk;
    use sctp_chunks::*;
    let mut r = Run::new(false, |_| {});
    let cases: [(&str, u32, Vec<Vec<u8>>); 8] = [
        ("abort", 0, vec![bare(chunk::ABORT)]),
        ("shutdown complete", 0, vec![bare(chunk::SHUTDOWN_COMPLETE)]),
        ("cookie ack", 0, vec![bare(chunk::COOKIE_ACK)]),
        ("data", TAG_S, vec![data()]),
        ("init with a tag", 7, vec![init()]),
        ("init not alone", 0, vec![init(), data()]),
        ("no chunk", 0, vec![]),
        (
            "init cut short",
            0,
            vec![build::sctp_chunk(chunk::INIT, 0, &[0; 8])],
        ),
    ];
    for (what, vtag, chunks) in cases {
        assert_eq!(r.sctp(0, true, vtag, &chunks), Verdict::Invalid, "{what}");
    }
    let mut zero_length = build::sctp(40003, 5001, 0, &[init()]);
    zero_length[14..16].fill(0);
    let p = r.ip(true, ipproto::SCTP, &zero_length);
    assert_eq!(r.feed(0, &p), Verdict::Invalid, "zero-length chunk");
    let p = r.ip(true, ipproto::SCTP, &zero_length[..11]);
    assert_eq!(r.feed(0, &p), Verdict::Invalid, "no common header");
    assert_eq!(r.t.stats().entries, 0);
    assert!(r.log.is_empty());
}

/// A packet with the wrong verification tag is invalid: it neither counts nor refreshes. An INIT
/// retransmitted into a CLOSED entry passes without refreshing it.
#[test]
fn sctp_tags_guard_the_entry_and_init_retransmits_do_not_refresh_it() {
    use crate::wire::sctp::chunk;
    use sctp_chunks::*;
    let mut r = Run::new(false, |_| {});
    assert_eq!(r.sctp(0, true, 0, &[init()]), Verdict::New);
    // The same INIT again, 5 s later: accepted, but the entry still ends 10 s after the first.
    assert_eq!(r.sctp(5 * S, true, 0, &[init()]), Verdict::Established);
    r.advance(10 * S + MS);
    assert_eq!(
        r.sctp_sequence(),
        [
            (N, Some(SctpState::Closed), false),
            (D, Some(SctpState::Closed), false)
        ]
    );
    assert_eq!(r.log[1].msg.counters_orig().map(|c| c.packets), Some(1));

    let mut r = Run::new(false, |_| {});
    r.sctp(0, true, 0, &[init()]);
    r.sctp(MS, false, TAG_C, &[init_ack()]);
    r.sctp(2 * MS, true, TAG_S, &[bare(chunk::COOKIE_ECHO)]);
    r.sctp(3 * MS, false, TAG_C, &[bare(chunk::COOKIE_ACK)]);
    assert_eq!(r.sctp(4 * MS, true, TAG_S ^ 1, &[data()]), Verdict::Invalid);
    assert_eq!(
        r.sctp(5 * MS, true, TAG_C, &[data()]),
        Verdict::Invalid,
        "the peer's tag"
    );
    // An ABORT with the T bit carries the peer's tag: valid, and the entry closes.
    let abort_t = build::sctp_chunk(chunk::ABORT, chunk::FLAG_T, &[]);
    assert_eq!(
        r.sctp(6 * MS, true, TAG_S, std::slice::from_ref(&abort_t)),
        Verdict::Invalid
    );
    assert_eq!(
        r.sctp(7 * MS, true, TAG_C, &[abort_t]),
        Verdict::Established
    );
    r.advance(8 * MS + 10 * S);
    let destroy = &r.log.last().unwrap().msg;
    assert_eq!(destroy.sctp_state(), Some(SctpState::Closed));
    assert_eq!(destroy.counters_orig().map(|c| c.packets), Some(3));
}

/// A first HEARTBEAT starts an entry of its own (a second path of a multi-homed association);
/// its ACK establishes and assures it.
#[test]
fn an_sctp_heartbeat_starts_a_secondary_entry() {
    use crate::wire::sctp::chunk;
    use sctp_chunks::*;
    let mut r = Run::new(true, |_| {});
    assert_eq!(
        r.sctp(0, true, TAG_S, &[heartbeat(chunk::HEARTBEAT)]),
        Verdict::New
    );
    assert_eq!(
        r.sctp(MS, false, TAG_C, &[heartbeat(chunk::HEARTBEAT_ACK)]),
        Verdict::EstablishedReply
    );
    assert_eq!(r.sctp(2 * MS, true, TAG_S, &[data()]), Verdict::Established);
    assert_eq!(
        r.sctp(3 * MS, false, TAG_C, &[data()]),
        Verdict::EstablishedReply
    );
    assert_eq!(
        r.sctp_sequence(),
        [
            (N, Some(SctpState::HeartbeatSent), false),
            (U, Some(SctpState::Established), true),
        ]
    );
    assert_eq!(r.log[0].msg.timeout(), Some(30));
}

/// A chunk that moved the entry stays done when a later chunk of the same packet fails its
/// check: the packet is invalid, and the state change is reported with the next event.
#[test]
fn an_sctp_state_change_before_a_failing_chunk_is_reported_later() {
    use crate::wire::sctp::chunk;
    use sctp_chunks::*;
    let mut r = Run::new(false, |_| {});
    r.sctp(0, true, 0, &[init()]);
    r.sctp(MS, false, TAG_C, &[init_ack()]);
    r.sctp(2 * MS, true, TAG_S, &[bare(chunk::COOKIE_ECHO)]);
    r.sctp(3 * MS, false, TAG_C, &[bare(chunk::COOKIE_ACK)]);
    let shutdown = build::sctp_chunk(chunk::SHUTDOWN, 0, &1u32.to_be_bytes());
    // An ABORT without the T bit must carry the sender's own tag; this one carries another.
    let packet = [shutdown, bare(chunk::ABORT)];
    assert_eq!(r.sctp(4 * MS, true, TAG_S ^ 1, &packet), Verdict::Invalid);
    assert_eq!(r.log.len(), 4, "nothing reported for the invalid packet");
    assert_eq!(
        r.sctp(5 * MS, false, TAG_C, &[data()]),
        Verdict::EstablishedReply
    );
    assert_eq!(
        r.sctp_sequence().last(),
        Some(&(U, Some(SctpState::ShutdownSent), true))
    );
}

#[test]
fn icmp_echo_pairs_share_one_entry() {
    both_families(|v6| {
        let mut r = Run::new(v6, |_| {});
        assert_eq!(r.echo(0, true, 1), Verdict::New);
        assert_eq!(r.echo(MS, false, 1), Verdict::EstablishedReply);
        assert_eq!(r.echo(S, true, 2), Verdict::Established);
        assert_eq!(r.echo(S + MS, false, 2), Verdict::EstablishedReply);
        r.advance(S + 31 * S);
        assert_eq!(
            r.sequence(),
            [
                ev(N, None, false, false),
                ev(U, None, true, false),
                ev(D, None, true, false)
            ]
        );
        let d = &r.log[2].msg;
        assert_eq!(
            (
                d.counters_orig().unwrap().packets,
                d.counters_reply().unwrap().packets
            ),
            (2, 2)
        );
    });
}

#[test]
fn an_echo_reply_alone_creates_nothing() {
    both_families(|v6| {
        let mut r = Run::new(v6, |_| {});
        assert_eq!(r.echo(0, false, 1), Verdict::Invalid);
        assert!(r.log.is_empty());
    });
}

#[test]
fn port_unreachable_is_related_and_raises_no_event() {
    both_families(|v6| {
        let mut r = Run::new(v6, |_| {});
        r.udp(0, true, 10);
        let quoted = {
            let l4 = build::udp(40002, 5009, 10);
            r.ip(true, ipproto::UDP, &l4)
        };
        // The datagram above went to port 5001; quote one to 5009 to show a miss is invalid.
        let error = |r: &Run, quoted: &[u8]| {
            let l4 = if r.v6 {
                build::icmpv6_error(1, 4, quoted)
            } else {
                build::icmp_error(3, 3, quoted)
            };
            r.ip(
                false,
                if r.v6 { ipproto::ICMPV6 } else { ipproto::ICMP },
                &l4,
            )
        };
        let p = error(&r, &quoted);
        assert_eq!(r.feed(MS, &p), Verdict::Invalid);
        let quoted = {
            let l4 = build::udp(40002, 5001, 10);
            r.ip(true, ipproto::UDP, &l4)
        };
        let p = error(&r, &quoted);
        assert_eq!(r.feed(MS, &p), Verdict::RelatedReply);
        r.advance(31 * S);
        assert_eq!(
            r.sequence(),
            [ev(N, None, false, false), ev(D, None, false, false)]
        );
        let d = &r.log[1].msg;
        assert_eq!(
            d.counters_reply().unwrap().packets,
            0,
            "the error is not counted on the entry"
        );
        assert_eq!(r.t.stats().entries, 0);
    });
}

#[test]
fn icmpv6_neighbour_discovery_is_untracked() {
    let mut r = Run::new(true, |_| {});
    let mut ns = build::icmpv6_echo(true, 0, 0);
    ns[0] = 135;
    let p = r.ip(true, ipproto::ICMPV6, &ns);
    assert_eq!(r.feed(0, &p), Verdict::Untracked);
    assert_eq!(r.t.stats().untracked, 1);
}

#[test]
fn unknown_protocols_use_the_generic_tracker() {
    let mut r = Run::new(false, |_| {});
    // DCCP: this kernel has no tracker for it either.
    let p = r.ip(true, 33, &[0u8; 12]);
    assert_eq!(r.feed(0, &p), Verdict::New);
    assert_eq!(r.log[0].msg.timeout(), Some(600));
}

#[test]
fn missed_events_ride_on_the_next_message_and_its_type_follows_the_union() {
    let mut r = Run::new(false, |_| {});
    // The NEW, SYN_RECV and ESTABLISHED updates all fail to reach the reliable listener.
    r.fail_next = 3;
    handshake(&mut r);
    assert!(r.log.is_empty());
    assert_eq!(r.t.stats().missed_pending, 1);
    // A data packet changes nothing by itself, but carries the missed bits: one NEW.
    r.tcp(MS, true, 1001, 5001, ACK | PSH, 100);
    assert_eq!(r.sequence(), [ev(N, Some(Established), true, true)]);
    let bits = r.log[0].bits;
    for b in [
        EventBits::NEW,
        EventBits::REPLY,
        EventBits::ASSURED,
        EventBits::PROTOINFO,
    ] {
        assert!(bits.contains(b), "{bits:?} lacks {b:?}");
    }
    assert_eq!(r.t.stats().missed_pending, 0);
    // Delivered once, the bits are gone: the next data packet sends nothing.
    r.tcp(2 * MS, false, 5001, 1101, ACK, 0);
    assert_eq!(r.log.len(), 1);
}

#[test]
fn a_failed_destroy_goes_to_the_dying_list_and_is_retried_after_the_grace_delay() {
    let mut r = Run::new(false, |s| s.events_retry_timeout = 15);
    r.udp(0, true, 10);
    let id = r.log[0].id;
    r.fail_next = 1;
    r.t.flush(T0 + S);
    r.pump();
    let stats = r.t.stats();
    assert_eq!((stats.entries, stats.dying, stats.count), (0, 1, 1));
    // Out of the hash: the same tuple now makes a new entry with a new id.
    assert_eq!(r.udp(2 * S, true, 10), Verdict::New);
    assert_ne!(r.log.last().unwrap().id, id);
    r.advance(17 * S);
    let destroys: Vec<_> = r
        .log
        .iter()
        .filter(|s| s.kind == D)
        .map(|s| (s.id, s.redelivery))
        .collect();
    assert_eq!(
        destroys,
        [(id, true)],
        "the DESTROY got through on its retry, once, marked as such"
    );
    assert_eq!(r.t.stats().dying, 0);
    assert_eq!(r.t.stats().count, 1);
}

#[test]
fn the_table_never_exceeds_the_maximum_and_refusals_are_counted() {
    let mut r = Run::new(false, |s| s.max = 2);
    r.t.set_listeners(true, false);
    let pkt = |r: &mut Run, at: u64, sport: u16| {
        let l4 = build::udp(sport, 53, 10);
        let p = r.ip(true, ipproto::UDP, &l4);
        r.feed(at, &p)
    };
    assert_eq!(pkt(&mut r, 0, 1), Verdict::New);
    assert_eq!(pkt(&mut r, 0, 2), Verdict::New);
    // Early drop evicts an unassured entry; its DESTROY is delivered, so there is room.
    assert_eq!(pkt(&mut r, 0, 3), Verdict::New);
    assert_eq!(r.t.stats().early_drop, 1);
    assert!(r.t.stats().count <= 2);
    // With a reliable listener whose DESTROYs fail, nothing can be evicted: new flows are
    // dropped, and the bound holds.
    r.t.set_listeners(true, true);
    r.fail_next = usize::MAX;
    assert_eq!(pkt(&mut r, 0, 4), Verdict::Drop);
    assert_eq!(pkt(&mut r, 0, 5), Verdict::Drop);
    let s = r.t.stats();
    assert!(s.count <= 2, "{s:?}");
    assert!(s.drop >= 1);
}

#[test]
fn events_zero_sends_nothing_and_two_needs_a_listener_at_creation() {
    let mut off = Run::new(false, |s| s.events = 0);
    off.udp(0, true, 10);
    off.advance(40 * S);
    assert!(off.log.is_empty());

    let mut auto = Run::new(false, |s| s.events = 2);
    auto.t.set_listeners(false, false);
    auto.udp(0, true, 10);
    auto.t.set_listeners(true, true);
    auto.advance(40 * S);
    assert!(
        auto.log.is_empty(),
        "created with no listener: no event, not even DESTROY"
    );
    auto.udp(41 * S, true, 10);
    auto.advance(80 * S);
    assert_eq!(
        auto.sequence(),
        [ev(N, None, false, false), ev(D, None, false, false)]
    );
}

#[test]
fn same_seed_same_ids_different_seed_different_ids() {
    let ids = |seed: u64| {
        let config = Config {
            seed,
            ..Config::default()
        };
        let mut r = Run {
            t: Tracker::new(config),
            v6: false,
            log: Vec::new(),
            fail_next: 0,
            expect_log: Vec::new(),
        };
        r.udp(0, true, 1);
        r.echo(0, true, 1);
        r.log.iter().map(|s| s.id).collect::<Vec<_>>()
    };
    assert_eq!(ids(7), ids(7));
    assert_ne!(ids(7), ids(8));
}

/// Valid packets of every kind the engine parses, for the bad-input tests to cut and mutate.
fn sample_packets() -> Vec<Vec<u8>> {
    let v4 = |proto, l4: &[u8]| build::ipv4([192, 0, 2, 1], [198, 51, 100, 7], proto, l4);
    let v6 = |proto, l4: &[u8]| {
        let mut a = [0u8; 16];
        a[0] = 0x20;
        a[1] = 0x01;
        a[15] = 1;
        let mut b = a;
        b[15] = 2;
        build::ipv6(a, b, proto, l4)
    };
    let quoted = v4(ipproto::UDP, &build::udp(40000, 53, 20));
    vec![
        v4(ipproto::TCP, &build::tcp(40001, 80, 1, 0, SYN, 65535, 0)),
        v4(ipproto::UDP, &build::udp(40000, 53, 20)),
        v4(ipproto::ICMP, &build::icmp_echo(true, 7, 1)),
        v4(ipproto::ICMP, &build::icmp_error(3, 3, &quoted)),
        v6(ipproto::TCP, &build::tcp(40001, 80, 1, 0, SYN, 65535, 10)),
        v6(ipproto::ICMPV6, &build::icmpv6_echo(true, 7, 1)),
        build::ipv6_with_ext(
            [1; 16],
            [2; 16],
            &[(0, vec![0; 6]), (60, vec![0; 14])],
            ipproto::UDP,
            &build::udp(1, 2, 3),
        ),
        v4(47, &[0u8; 8]),
        v6(47, &[0x30, 0x81, 0x88, 0x0b, 0, 0, 0x12, 0x34, 0, 0, 0, 1]),
        v4(ipproto::UDPLITE, &{
            let mut lite = build::udp(40002, 5001, 10);
            lite[4..8].copy_from_slice(&[0, 0, 0x12, 0x34]);
            lite
        }),
        v4(
            ipproto::SCTP,
            &build::sctp(5000, 6000, 0, &[build::sctp_init(1, TAG_C)]),
        ),
        v6(
            ipproto::SCTP,
            &build::sctp(
                5000,
                6000,
                TAG_S,
                &[sctp_chunks::bare(10), sctp_chunks::data()],
            ),
        ),
    ]
}

#[test]
fn every_prefix_of_a_valid_packet_is_counted_not_panicked_on() {
    for packet in sample_packets() {
        let mut t = Tracker::new(Config::default());
        let mut invalid = 0;
        for len in 0..packet.len() {
            let v = t.ingest(T0 + len as u64, 0, &packet[..len]);
            if v == Verdict::Invalid {
                invalid += 1;
            }
        }
        let s = t.stats();
        assert_eq!(s.invalid, invalid);
        // Cut headers are invalid; once the headers are whole, a cut payload is fine.
        assert!(
            invalid >= 20,
            "{invalid} of {} prefixes invalid",
            packet.len()
        );
        let destroying = t
            .table
            .slab
            .iter()
            .filter(|e| e.life == Life::Destroying)
            .count() as u64;
        assert_eq!(s.count, s.entries + s.dying + destroying);
    }
}

#[test]
fn bogus_lengths_and_unknown_versions_are_invalid() {
    let mut t = Tracker::new(Config::default());
    let good = build::ipv4(
        [192, 0, 2, 1],
        [192, 0, 2, 2],
        ipproto::UDP,
        &build::udp(1, 2, 3),
    );
    let mut short_total = good.clone();
    short_total[2..4].copy_from_slice(&10u16.to_be_bytes());
    let mut bad_ihl = good.clone();
    bad_ihl[0] = 0x43;
    let mut v5 = good.clone();
    v5[0] = 0x55;
    for p in [short_total, bad_ihl, v5, Vec::new(), vec![0x45]] {
        assert_eq!(t.ingest(T0, 0, &p), Verdict::Invalid, "{p:02x?}");
    }
    assert_eq!(t.stats().invalid, 5);
    assert_eq!(t.stats().count, 0);
    // A non-first fragment is no longer invalid: reassembly holds it for the rest.
    let mut fragment = good.clone();
    build::set_ipv4_fragment(&mut fragment, 8, false);
    assert_eq!(t.ingest(T0, 0, &fragment), Verdict::Queued);
    assert_eq!((t.stats().invalid, t.stats().frag_queues), (5, 1));
}

/// A packet that arrived unverified with a wrong checksum is invalid and makes no entry, in
/// every protocol conntrack checks; the same bytes sent by the local stack, or arriving with
/// `nf_conntrack_checksum` 0, are tracked. An IPv4 header whose own checksum is wrong never
/// reaches conntrack when it arrives.
#[test]
fn arriving_packets_with_a_wrong_checksum_are_invalid() {
    both_families(|v6| {
        let r = Run::new(v6, |_| {});
        let corrupt = |mut p: Vec<u8>| {
            let l3 = crate::wire::parse_l3(&p).unwrap();
            p[l3.l4_offset + 1] ^= 0x40;
            p
        };
        let echo = if v6 {
            build::icmpv6_echo(true, 9, 1)
        } else {
            build::icmp_echo(true, 9, 1)
        };
        let icmp = if v6 { ipproto::ICMPV6 } else { ipproto::ICMP };
        let sctp = build::sctp(40003, 5001, 0, &[build::sctp_init(1, 7)]);
        for (name, good) in [
            (
                "tcp",
                r.ip(
                    true,
                    ipproto::TCP,
                    &build::tcp(40001, 5001, 1, 0, SYN, 1000, 0),
                ),
            ),
            (
                "udp",
                r.ip(true, ipproto::UDP, &build::udp(40002, 5001, 20)),
            ),
            ("icmp", r.ip(true, icmp, &echo)),
            ("sctp", r.ip(true, ipproto::SCTP, &sctp)),
        ] {
            let bad = corrupt(good.clone());
            let mut t = Tracker::new(Config::default());
            assert_eq!(t.ingest_arrived(T0, 0, &bad), Verdict::Invalid, "{name}");
            assert_eq!((t.stats().invalid, t.stats().entries), (1, 0), "{name}");
            assert_eq!(t.ingest_arrived(T0, 0, &good), Verdict::New, "{name}: good");
            let mut t = Tracker::new(Config::default());
            assert_eq!(t.ingest(T0, 0, &bad), Verdict::New, "{name}: sent");
            let mut config = Config::default();
            config.sysctls.checksum = false;
            let mut t = Tracker::new(config);
            assert_eq!(
                t.ingest_arrived(T0, 0, &bad),
                Verdict::New,
                "{name}: unchecked"
            );
        }
    });
    let mut p = build::ipv4(
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        ipproto::UDP,
        &build::udp(1, 2, 3),
    );
    p[8] ^= 1; // the TTL: the header checksum no longer holds
    let mut t = Tracker::new(Config::default());
    assert_eq!(t.ingest_arrived(T0, 0, &p), Verdict::Drop);
    assert_eq!((t.stats().drop, t.stats().entries), (1, 0));
    assert_eq!(t.ingest(T0, 0, &p), Verdict::New, "sent: not checked");
}

/// UDP-Lite with its correct checksum arriving from a wire is invalid, as in Linux 6.18 (whose
/// check uses UDP's pseudo-header); sent by the local stack it is tracked.
#[test]
fn arriving_udplite_with_its_correct_checksum_is_invalid_as_in_the_kernel() {
    both_families(|v6| {
        let r = Run::new(v6, |_| {});
        let mut l4 = build::udp(40002, 5001, 20);
        l4[4..8].fill(0);
        let l3 = crate::wire::parse_l3(&r.ip(true, ipproto::UDPLITE, &l4)).unwrap();
        let pseudo = crate::wire::checksum::pseudo_header(
            l3.src.bytes(l3.family),
            l3.dst.bytes(l3.family),
            ipproto::UDPLITE,
            l4.len() as u32,
        );
        let sum = crate::wire::checksum::combine(&[pseudo, crate::wire::checksum::sum(&l4)]);
        l4[6..8].copy_from_slice(&(!sum).to_be_bytes());
        let p = r.ip(true, ipproto::UDPLITE, &l4);
        let mut t = Tracker::new(Config::default());
        assert_eq!(t.ingest_arrived(T0, 0, &p), Verdict::Invalid);
        assert_eq!(t.ingest(T0, 0, &p), Verdict::New);
    });
}

/// The check waits for reassembly: every fragment is queued, and the datagram they make is
/// judged whole when the last one arrives.
#[test]
fn a_fragmented_datagram_is_checked_once_reassembled() {
    let whole = build::ipv4(
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        ipproto::UDP,
        &build::udp(1, 2, 40),
    );
    let mut bad = whole.clone();
    bad[20 + 30] ^= 1; // in the second fragment's data
    for (packet, last) in [(&bad, Verdict::Invalid), (&whole, Verdict::New)] {
        let fragments = build::ipv4_fragments(packet, 7, &[(0, 24, true), (24, 100, false)]);
        let mut t = Tracker::new(Config::default());
        assert_eq!(t.ingest_arrived(T0, 0, &fragments[0]), Verdict::Queued);
        assert_eq!(t.ingest_arrived(T0, 0, &fragments[1]), last);
    }
}

/// The batch flag reaches the check: the same corrupt packet framed as arrived is invalid,
/// framed as sent is tracked; a frame with an unknown flag stops the batch as an error.
#[test]
fn the_arrived_flag_of_a_batch_frame_asks_for_the_check() {
    let mut p = build::ipv4(
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        ipproto::UDP,
        &build::udp(1, 2, 3),
    );
    p[21] ^= 1;
    let mut b = Vec::new();
    batch::push_packet_with(&mut b, T0, 0, batch::PACKET_FLAG_ARRIVED, &p);
    batch::push_packet(&mut b, T0, 0, &p);
    batch::push_packet_with(&mut b, T0, 0, 4, &p);
    batch::push_packet(&mut b, T0, 0, &p);
    let mut t = Tracker::new(Config::default());
    let mut verdicts = Vec::new();
    t.ingest_batch_at(T0, &b, &mut verdicts);
    assert_eq!(verdicts, [Verdict::Invalid as u8, Verdict::New as u8]);
    assert_eq!((t.stats().invalid, t.stats().error), (1, 1));
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_engine(packets in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120), 1..40)) {
        let mut t = Tracker::new(Config::default());
        let mut out = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            // Every other packet as arriving unverified: the checks read the same bytes.
            if i % 2 == 0 {
                t.ingest(T0 + i as u64 * MS, 0, p);
            } else {
                t.ingest_arrived(T0 + i as u64 * MS, 0, p);
            }
            t.take_events(usize::MAX, &mut out);
        }
        let n = batch::events(&out).count();
        t.report_delivery(&vec![Delivery::Delivered; n]);
        t.flush(T0 + S);
        let s = t.stats();
        proptest::prop_assert_eq!(s.entries, 0);
    }

    #[test]
    fn mutated_valid_packets_never_panic_the_engine(which in 0usize..12, at in 0usize..80, byte in proptest::prelude::any::<u8>(), cut in 0usize..120) {
        let mut p = sample_packets().swap_remove(which);
        if at < p.len() {
            p[at] = byte;
        }
        p.truncate(cut.max(1));
        let mut t = Tracker::new(Config::default());
        let v = t.ingest(T0, 0, &p);
        let s = t.stats();
        proptest::prop_assert_eq!(v == Verdict::Invalid, s.invalid == 1);
        // Arriving, a changed byte may also fail a checksum: counted the same way.
        let mut t = Tracker::new(Config::default());
        let v = t.ingest_arrived(T0, 0, &p);
        let s = t.stats();
        proptest::prop_assert_eq!(v == Verdict::Invalid, s.invalid == 1);
        proptest::prop_assert_eq!(v == Verdict::Drop, s.drop == 1);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    /// Arbitrary SCTP traffic on one port pair: chunks of every type the tracker tells apart
    /// (and DATA), with or without the T bit, in any number and order, either direction, with
    /// the tags of the association, zero or any other. The engine never panics, an invalid
    /// packet is counted and makes no entry, the entry times out, and a snapshot taken anywhere
    /// restores to the same bytes.
    #[test]
    fn arbitrary_sctp_traffic_keeps_the_table_consistent(
        packets in proptest::collection::vec(
            (
                proptest::prelude::any::<bool>(),
                0u8..4,
                proptest::collection::vec((0u8..15, proptest::prelude::any::<bool>()), 0..4),
            ),
            1..24,
        )
    ) {
        let mut r = Run::new(false, |_| {});
        for (i, (from_client, tag, chunks)) in packets.into_iter().enumerate() {
            let vtag = [0, TAG_C, TAG_S, 0x5eed][usize::from(tag)];
            let chunks: Vec<Vec<u8>> = chunks
                .into_iter()
                .map(|(kind, t_bit)| match kind {
                    1 => sctp_chunks::init(),
                    2 => sctp_chunks::init_ack(),
                    0 => sctp_chunks::data(),
                    k => build::sctp_chunk(k, u8::from(t_bit), &[0, 1, 0, 8, 1, 2, 3, 4]),
                })
                .collect();
            let before = r.t.stats();
            let v = r.sctp(i as u64 * MS, from_client, vtag, &chunks);
            let after = r.t.stats();
            if v == Verdict::Invalid {
                proptest::prop_assert_eq!(after.invalid, before.invalid + 1);
                proptest::prop_assert_eq!(after.entries, before.entries);
            }
            proptest::prop_assert!(after.entries <= 1);
            let bytes = r.t.snapshot();
            let restored = Tracker::restore(&bytes).expect("a snapshot restores");
            proptest::prop_assert_eq!(restored.snapshot(), bytes);
        }
        r.advance(300 * S);
        proptest::prop_assert_eq!(r.t.stats().entries, 0);
    }
}

/// Runs the same traffic twice: straight through, and with a snapshot/restore in the middle
/// (with a DESTROY failed onto the dying list and a message left unreported); every event after
/// the cut and the final statistics must be the same.
#[test]
fn a_restored_tracker_continues_exactly_where_the_snapshot_was_taken() {
    let run = |cut: bool| {
        let mut r = Run::new(false, |s| s.events_retry_timeout = 5);
        handshake(&mut r);
        r.udp(MS, true, 10);
        r.echo(2 * MS, true, 1);
        r.fail_next = 1;
        r.t.flush(T0 + 10 * MS);
        // Leave one message taken but unreported across the cut.
        r.tcp(20 * MS, true, 1000, 0, SYN, 0);
        let mut taken = Vec::new();
        r.t.take_events(1, &mut taken);
        if cut {
            let bytes = r.t.snapshot();
            r.t = Tracker::restore(&bytes).expect("a snapshot restores");
            assert_eq!(
                r.t.snapshot(),
                bytes,
                "restore then snapshot gives the same bytes"
            );
        }
        r.t.report_delivery(&[Delivery::Delivered]);
        r.pump();
        r.tcp(30 * MS, false, 5000, 1001, SYN | ACK, 0);
        r.advance(200 * S);
        let seq: Vec<_> = r
            .log
            .iter()
            .map(|s| (s.kind, s.state, s.id, s.msg.clone()))
            .collect();
        (seq, r.t.stats())
    };
    let (straight, straight_stats) = run(false);
    let (restored, restored_stats) = run(true);
    assert_eq!(straight, restored);
    assert_eq!(straight_stats, restored_stats);
    assert!(
        straight_stats.destroy_retries >= 1,
        "the dying entry was retried after the restore"
    );
    assert_eq!(straight_stats.count, 0);
}

/// The seed's promise, checked from any state: a reliable listener takes everything from `now`
/// on, the table is flushed and time runs on; then the table must be empty and no entry's
/// DESTROY may have been delivered twice. Returns the ids of the DESTROYs delivered.
fn drains_cleanly(mut t: Tracker, mut now: u64) -> Result<Vec<u32>, String> {
    t.set_listeners(true, true);
    let in_flight = t.ecache.outbox.in_flight.len();
    t.report_delivery(&vec![Delivery::Delivered; in_flight]);
    t.flush(now);
    let mut destroys = Vec::new();
    let mut step = S;
    for _ in 0..64 {
        loop {
            let mut out = Vec::new();
            let n = t.take_events(usize::MAX, &mut out);
            if n == 0 {
                break;
            }
            for frame in batch::events(&out) {
                let frame = frame.map_err(|e| format!("a badly framed event: {e:?}"))?;
                if frame.group >= crate::engine::expect::GROUP_EXP_NEW {
                    continue;
                }
                let (msg, _) = CtMessage::parse(frame.netlink)
                    .map_err(|e| format!("an event that does not parse: {e:?}"))?;
                if msg.kind() == Some(D) {
                    destroys.push(msg.id().unwrap_or(0));
                }
            }
            t.report_delivery(&vec![Delivery::Delivered; n]);
        }
        let s = t.stats();
        if s.count == 0 && t.pending_events() == 0 {
            break;
        }
        now = now.saturating_add(step);
        step = step.saturating_mul(2);
        t.advance(now);
    }
    let s = t.stats();
    if s.count != 0 || s.entries != 0 || s.dying != 0 {
        return Err(format!("the table does not drain: {s:?}"));
    }
    destroys.sort_unstable();
    if let Some(w) = destroys.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("the DESTROY of id {} was delivered twice", w[0]));
    }
    Ok(destroys)
}

/// A UDP datagram 10.0.0.1:`sport` -> 10.0.0.2:53: a new flow for each source port.
fn udp_to_53(sport: u16) -> Vec<u8> {
    build::ipv4(
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        ipproto::UDP,
        &build::udp(sport, 53, 8),
    )
}

#[test]
fn hostile_snapshots_are_errors_not_panics() {
    let good = states_worth_forging().swap_remove(0).snapshot();
    for len in 0..good.len() {
        assert!(
            Tracker::restore(&good[..len]).is_err(),
            "a {len}-byte prefix restored"
        );
    }
    // Every changed byte is caught before a field is read: by the magic, the version or the
    // checksum.
    for at in 0..good.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[at] ^= flip;
            let Err(err) = Tracker::restore(&bad) else {
                panic!("a flipped byte {at} restored");
            };
            assert!(
                matches!(
                    err,
                    SnapshotError::Corrupt
                        | SnapshotError::BadHeader
                        | SnapshotError::UnsupportedVersion { .. }
                ),
                "byte {at}: {err}"
            );
        }
    }
}

/// States whose snapshots hold every kind of cross-reference: entries in each life (live,
/// destroying, dying, dropped by early drop), their timers, queued and in-flight messages, the
/// retry worker, under the grace and the kernel retry policies.
fn states_worth_forging() -> Vec<Tracker> {
    let mut grace = Run::new(false, |_| {});
    handshake(&mut grace);
    grace.udp(MS, true, 10);
    grace.fail_next = 1;
    grace.t.flush(T0 + S);
    grace.pump();

    let mut kernel = Run::new(false, |s| s.max = 4);
    kernel.t = Tracker::new(Config {
        retry_policy: RetryPolicy::Kernel,
        ..kernel.t.config().clone()
    });
    kernel.t.set_listeners(true, false);
    handshake(&mut kernel);
    for sport in 1..=4 {
        kernel.t.ingest(T0 + MS, 0, &udp_to_53(sport));
    }
    // Early drop made room while no listener was reliable: a dropped entry, its DESTROY queued.
    assert_eq!(kernel.t.stats().early_drop, 1);
    kernel.t.set_listeners(true, true);
    kernel.fail_next = 2;
    kernel.t.flush(T0 + S);
    // Half the messages taken and not reported: in flight across the cut.
    let queued = kernel.t.pending_events();
    let mut out = Vec::new();
    kernel.t.take_events(queued / 2, &mut out);
    vec![grace.t, kernel.t]
}

#[test]
fn forged_snapshots_that_pass_the_field_checks_keep_the_promise() {
    // Changed bytes with a valid checksum (a bug or a forger, not line noise) reach the field
    // checks: whatever those accept must go on working and lose no DESTROY, send none twice.
    for (which, t) in states_worth_forging().into_iter().enumerate() {
        let good = t.snapshot();
        drains_cleanly(Tracker::restore(&good).unwrap(), T0 + 3 * S).unwrap();
        let mut rejected = 0;
        for at in 8..good.len() - 4 {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] ^= flip;
                crate::snapshot::resign(&mut bad);
                if let Ok(mut t) = Tracker::restore(&bad) {
                    t.ingest(T0 + 2 * S, 0, &sample_packets()[0]);
                    if let Err(why) = drains_cleanly(t, T0 + 3 * S) {
                        panic!("state {which}: byte {at} ^ {flip:#04x} restored, then {why}");
                    }
                } else {
                    rejected += 1;
                }
            }
        }
        assert!(rejected > 0);
    }
}

#[test]
fn a_snapshot_of_another_format_version_is_refused_whole() {
    let mut r = Run::new(false, |_| {});
    r.udp(0, true, 10);
    let mut old = r.t.snapshot();
    old[7] = 1;
    assert_eq!(
        Tracker::restore(&old).err(),
        Some(SnapshotError::UnsupportedVersion { found: 1 })
    );
    assert_eq!(
        Tracker::restore(b"not a snapshot").err(),
        Some(SnapshotError::BadHeader)
    );
}

mod expectations {
    use super::*;
    use crate::engine::expect::{ExpectError, ExpectMask, FLAG_PERMANENT};

    fn data_tuple(sport: u16) -> Tuple {
        // The server's data connection back to the client (active FTP style).
        Tuple {
            family: crate::tuple::Family::Ipv4,
            src: crate::tuple::Addr::v4([127, 0, 0, 1]),
            dst: crate::tuple::Addr::v4([127, 0, 0, 1]),
            proto: ipproto::TCP,
            l4: L4Tuple::Ports {
                src: sport,
                dst: 40100,
            },
        }
    }

    fn data_syn(r: &mut Run, at: u64, sport: u16) -> Verdict {
        let l4 = build::tcp(sport, 40100, 7000, 0, SYN, 65535, 0);
        let p = r.ip(false, ipproto::TCP, &l4);
        r.feed(at, &p)
    }

    #[test]
    fn an_expected_connection_is_related_to_its_master() {
        let mut r = Run::new(false, |_| {});
        handshake(&mut r);
        let master = r.log[0].id;
        let any_port = ExpectMask {
            src_addr: true,
            src_port: false,
        };
        let exp =
            r.t.expect(T0 + MS, master, &data_tuple(0), any_port, 30, 0)
                .unwrap();
        r.pump();
        assert_eq!(r.expect_log, [(MessageKind::New, exp, ExpEventBits::NEW)]);
        assert_eq!(data_syn(&mut r, 2 * MS, 20), Verdict::New);
        let related = r.log.last().unwrap();
        assert!(
            related.bits.contains(EventBits::RELATED) && !related.bits.contains(EventBits::NEW)
        );
        assert!(related.msg.status().unwrap().contains(Status::EXPECTED));
        let master_attr = related
            .msg
            .attrs
            .iter()
            .any(|a| matches!(a, CtAttr::TupleMaster(_)));
        assert!(master_attr, "a RELATED event names its master");
        assert_eq!(
            r.expect_log[1],
            (MessageKind::Destroy, exp, ExpEventBits::DESTROY),
            "consumed on match"
        );
        let s = r.t.expect_stats();
        assert_eq!(
            (
                s.expect_create,
                s.expect_new,
                s.expect_delete,
                s.expectations
            ),
            (1, 1, 1, 0)
        );
        // A second connection to the same port is not expected any more: a plain NEW.
        assert_eq!(data_syn(&mut r, 3 * MS, 21), Verdict::New);
        assert!(r.log.last().unwrap().bits.contains(EventBits::NEW));
    }

    #[test]
    fn expectations_time_out_die_with_their_master_and_are_bounded() {
        let mut r = Run::new(false, |s| s.expect_max = 2);
        handshake(&mut r);
        let master = r.log[0].id;
        let m = ExpectMask {
            src_addr: true,
            src_port: true,
        };
        let short =
            r.t.expect(T0 + MS, master, &data_tuple(1), m, 5, 0)
                .unwrap();
        let long =
            r.t.expect(T0 + MS, master, &data_tuple(2), m, 500, FLAG_PERMANENT)
                .unwrap();
        assert_eq!(
            r.t.expect(T0 + MS, master, &data_tuple(3), m, 5, 0),
            Err(ExpectError::TableFull)
        );
        assert_eq!(
            r.t.expect(T0 + MS, 12345, &data_tuple(3), m, 5, 0),
            Err(ExpectError::UnknownMaster)
        );
        r.advance(10 * S);
        assert!(
            r.expect_log
                .contains(&(MessageKind::Destroy, short, ExpEventBits::DESTROY))
        );
        assert_eq!(r.t.expect_stats().expectations, 1);
        // Permanent: it stays after a match.
        data_syn(&mut r, 11 * S, 2);
        assert_eq!(r.t.expect_stats().expectations, 1);
        r.t.flush(T0 + 12 * S);
        r.pump();
        assert!(
            r.expect_log
                .contains(&(MessageKind::Destroy, long, ExpEventBits::DESTROY)),
            "gone with the master"
        );
        assert_eq!(r.t.expect_stats().expectations, 0);
    }

    #[test]
    fn expectation_events_are_reliable() {
        let mut r = Run::new(false, |s| s.events_retry_timeout = 2);
        handshake(&mut r);
        let master = r.log[0].id;
        r.fail_next = 1;
        let exp =
            r.t.expect(T0 + MS, master, &data_tuple(9), ExpectMask::default(), 5, 0)
                .unwrap();
        r.pump();
        assert!(r.expect_log.is_empty(), "the NEW failed");
        r.fail_next = 1;
        r.advance(6 * S);
        assert!(
            r.expect_log.is_empty(),
            "the DESTROY failed too, and waits on its retry"
        );
        assert_eq!(r.t.expect_stats().expectations, 1);
        r.advance(10 * S);
        // The retried DESTROY carries the missed NEW.
        assert_eq!(
            r.expect_log,
            [(
                MessageKind::Destroy,
                exp,
                ExpEventBits::NEW.union(ExpEventBits::DESTROY)
            )]
        );
        assert_eq!(r.t.expect_stats().expectations, 0);
    }

    #[test]
    fn expectations_survive_a_snapshot() {
        let mut r = Run::new(false, |_| {});
        handshake(&mut r);
        let master = r.log[0].id;
        r.t.expect(
            T0 + MS,
            master,
            &data_tuple(0),
            ExpectMask {
                src_addr: true,
                src_port: false,
            },
            30,
            0,
        )
        .unwrap();
        r.pump();
        let bytes = r.t.snapshot();
        r.t = Tracker::restore(&bytes).unwrap();
        assert_eq!(r.t.snapshot(), bytes);
        assert_eq!(data_syn(&mut r, 2 * MS, 20), Verdict::New);
        assert!(r.log.last().unwrap().bits.contains(EventBits::RELATED));
    }
}

/// A short TCP connection the proxy way: SYN, then RST from the same side, with nobody taking
/// events in between.
fn syn_then_rst(t: &mut Tracker, at: u64, sport: u16) -> (Verdict, Verdict) {
    let packet = |flags| {
        let l4 = build::tcp(sport, 80, 1000, 0, flags, 65535, 0);
        build::ipv4([10, 0, 0, 1], [10, 0, 0, 2], ipproto::TCP, &l4)
    };
    let syn = t.ingest(T0 + at, 0, &packet(SYN));
    let rst = t.ingest(T0 + at, 0, &packet(RST));
    (syn, rst)
}

#[test]
fn with_nobody_listening_nothing_is_queued_and_no_entry_waits() {
    // The kernel sends no event when no socket listens, and the entry goes at once: 2 000 short
    // connections never fill a table of 500, even though nobody ever takes an event.
    let mut quiet = Run::new(false, |s| s.max = 500);
    quiet.t.set_listeners(false, false);
    for i in 0..2000u16 {
        let (syn, rst) = syn_then_rst(&mut quiet.t, u64::from(i) * MS, 10_000 + i);
        assert_eq!(
            (syn, rst),
            (Verdict::New, Verdict::Established),
            "connection {i}"
        );
    }
    let s = quiet.t.stats();
    assert_eq!((s.count, s.entries, s.dying, s.drop), (0, 0, 0, 0), "{s:?}");
    assert_eq!(s.insert, 2000);
    assert_eq!(quiet.t.pending_events(), 0);
    assert_eq!(s.events_emitted, 0);

    // With a listener present that never reads, every DESTROY waits for it, and the bound
    // refuses new connections instead of losing events.
    let mut deaf = Run::new(false, |s| s.max = 500);
    deaf.t.set_listeners(true, true);
    let refused = (0..2000u16)
        .filter(|&i| syn_then_rst(&mut deaf.t, u64::from(i) * MS, 10_000 + i).0 == Verdict::Drop)
        .count();
    let s = deaf.t.stats();
    assert_eq!(refused, 1500);
    assert_eq!((s.count, s.insert), (500, 500), "{s:?}");
    assert_eq!(
        deaf.t.pending_events(),
        1000,
        "a NEW and a DESTROY per connection"
    );
}

#[test]
fn a_listener_that_leaves_releases_what_waited_for_it_on_the_next_retry() {
    let mut r = Run::new(false, |_| {});
    r.t.set_listeners(true, true);
    r.fail_next = usize::MAX;
    r.udp(0, true, 10);
    r.t.flush(T0 + MS);
    r.pump();
    assert_eq!(
        r.t.stats().dying,
        1,
        "the DESTROY failed: the entry waits on the dying list"
    );
    // The listener goes away: the retry finds nobody listening, which counts as delivered.
    r.fail_next = 0;
    r.t.set_listeners(false, false);
    r.advance(20 * S);
    let s = r.t.stats();
    assert_eq!((s.count, s.dying), (0, 0), "{s:?}");
    assert!(
        r.log.iter().all(|e| e.kind != D),
        "nobody was there to hear it"
    );
}

#[test]
fn a_memory_budget_refuses_new_connections_and_keeps_the_table() {
    let mut r = Run::new(false, |s| s.max = 10_000_000);
    let budget = 256 << 10;
    r.t.set_memory_budget(Some(budget));
    let flow = |r: &mut Run, i: u32, reply: bool| {
        let (a, b) = ([10, 1, (i >> 8) as u8, i as u8], [192, 0, 2, 1]);
        let (src, dst, sport, dport) = if reply {
            (b, a, 53, 4000)
        } else {
            (a, b, 4000, 53)
        };
        let p = build::ipv4(src, dst, ipproto::UDP, &build::udp(sport, dport, 8));
        r.feed(u64::from(i) * MS, &p)
    };
    let mut created = 0;
    let mut first_refused = None;
    for i in 0..20_000u32 {
        match flow(&mut r, i, false) {
            Verdict::New => created += 1,
            Verdict::Drop => {
                first_refused.get_or_insert(i);
            }
            v => panic!("flow {i}: {v:?}"),
        }
        assert!(r.t.memory_footprint() <= budget, "over budget at flow {i}");
    }
    let first_refused = first_refused.expect("the budget was reached");
    let s = r.t.stats();
    assert_eq!(s.entries, created, "{s:?}");
    assert_eq!(s.insert_failed, 20_000 - created);
    assert!(created > 100, "only {created} flows fit");
    // What the table holds still works: replies find their entries.
    for i in 0..first_refused.min(50) {
        assert_eq!(flow(&mut r, i, true), Verdict::EstablishedReply, "flow {i}");
    }
    // Without the cap, the same flows are taken.
    r.t.set_memory_budget(None);
    assert_eq!(flow(&mut r, 30_000, false), Verdict::New);
}

#[test]
fn under_the_on_drain_policy_a_failed_destroy_goes_out_again_when_the_listener_drains() {
    let mut r = Run::new(false, |_| {});
    r.t = Tracker::new(Config {
        retry_policy: RetryPolicy::OnDrain,
        ..r.t.config().clone()
    });
    r.t.set_listeners(true, true);
    r.udp(0, true, 10);
    r.fail_next = 1;
    r.t.flush(T0 + MS);
    r.pump();
    assert_eq!(r.t.stats().dying, 1, "the DESTROY failed");
    // The host says its listener has room: the worker sends the DESTROY again at once.
    r.t.listeners_drained(T0 + 2 * MS);
    r.advance(2 * MS);
    let destroys: Vec<_> = r.log.iter().filter(|e| e.kind == D).collect();
    assert_eq!(destroys.len(), 1, "{:?}", r.sequence());
    assert!(destroys[0].redelivery);
    assert_eq!(r.t.stats().dying, 0);
}

#[test]
fn a_snapshot_that_claims_a_huge_table_is_refused_without_allocating_it() {
    let empty = Tracker::new(Config::default()).snapshot();
    let mut one = Run::new(false, |_| {});
    one.t = Tracker::new(Config::default());
    one.udp(0, true, 10);
    let full = one.t.snapshot();
    // The entry count is the first field that differs: it follows the configuration.
    let at = (0..empty.len())
        .find(|&i| empty[i] != full[i])
        .expect("the snapshots differ");
    assert_eq!(u64::from_le_bytes(empty[at..at + 8].try_into().unwrap()), 0);
    for claim in [u64::MAX, 1 << 40, 1 << 32, 100_000_000] {
        let mut forged = empty.clone();
        forged[at..at + 8].copy_from_slice(&claim.to_le_bytes());
        crate::snapshot::resign(&mut forged);
        // Refused by the count's check against the bytes left, before anything is allocated.
        assert_eq!(
            Tracker::restore(&forged).err(),
            Some(SnapshotError::Truncated),
            "a claim of {claim} entries"
        );
    }
}

/// A host that takes one message a round while one new event arrives a round keeps a constant
/// backlog; the outbox must not grow with the number of rounds (it used to keep every byte
/// until the queue emptied: ~305 bytes more per event, for ever).
#[test]
fn a_constant_backlog_keeps_the_outbox_bounded() {
    // Entries outlive the run (no DESTROY joins the backlog): 200 000 rounds of 1 ms.
    let mut config = Config::default();
    config
        .sysctls
        .set("nf_conntrack_udp_timeout", "3600")
        .unwrap();
    let mut t = Tracker::new(config);
    t.set_listeners(true, true);
    let mut out = Vec::new();
    let mut footprints = Vec::new();
    for round in 0..200_000u32 {
        let a = [10, (round >> 16) as u8, (round >> 8) as u8, round as u8];
        let l4 = build::udp(1000 + (round % 50_000) as u16, 53, 8);
        t.ingest(
            T0 + u64::from(round) * MS,
            0,
            &build::ipv4(a, [10, 255, 0, 1], 17, &l4),
        );
        // Ten messages wait before the host starts taking one per round.
        if round >= 10 {
            out.clear();
            assert_eq!(t.take_events(1, &mut out), 1);
            t.report_delivery(&[Delivery::Delivered]);
        }
        if round % 20_000 == 19_999 {
            footprints.push(t.ecache.outbox.footprint().0);
            assert_eq!(t.pending_events(), 10);
        }
    }
    let (first, last) = (footprints[0], *footprints.last().unwrap());
    assert!(
        last <= first,
        "the outbox grew from {first} to {last} bytes"
    );
}

/// At the end of the clock a failed DESTROY cannot be retried later, and retrying it at the
/// last instant would fail and fire again for ever (a host stepping time spun at 100 % CPU):
/// under every policy, the retry is left unscheduled and the entry waits on the dying list.
#[test]
fn a_destroy_failing_at_the_end_of_the_clock_does_not_retry_for_ever() {
    for policy in [
        RetryPolicy::Grace,
        RetryPolicy::Kernel,
        RetryPolicy::OnDrain,
    ] {
        let mut t = Tracker::new(Config {
            retry_policy: policy,
            ..Config::default()
        });
        t.set_listeners(true, true);
        let now = u64::MAX - 1_000;
        let l4 = build::udp(5000, 53, 8);
        t.ingest(now, 0, &build::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 17, &l4));
        t.flush(now);
        let mut out = Vec::new();
        let mut sent = 0;
        for _ in 0..100 {
            t.advance(u64::MAX);
            out.clear();
            let n = t.take_events(usize::MAX, &mut out);
            sent += n;
            t.report_delivery(&vec![Delivery::Failed; n]);
        }
        // The NEW and the first DESTROY, and at most one retry at the last instant.
        assert!(
            sent <= 3,
            "{policy:?}: {sent} messages in 100 steps at the last instant"
        );
        assert_eq!(t.stats().dying, 1, "{policy:?}");
    }
}

/// Whatever the engine can reach, its snapshot restores: a self-addressed packet (its reply
/// tuple is its original tuple) and a clock past 2^63 ns used to make `restore` refuse the
/// tracker's own snapshot ("two entries with one tuple", "timer wheel's clock").
#[test]
fn states_reached_by_legitimate_packets_restore() {
    let self_addressed = build::ipv4([10, 0, 0, 1], [10, 0, 0, 1], 17, &build::udp(5000, 5000, 8));
    let other = build::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 17, &build::udp(5001, 53, 8));
    for start in [T0, 1 << 63, u64::MAX - 10 * S] {
        let mut t = Tracker::new(Config::default());
        assert_eq!(t.ingest(start, 0, &self_addressed), Verdict::New);
        t.ingest(start, 0, &other);
        let snapshot = t.snapshot();
        let mut restored = Tracker::restore(&snapshot)
            .unwrap_or_else(|e| panic!("at {start}: its own snapshot refused: {e}"));
        assert!(restored.snapshot() == snapshot, "at {start}");
        // Both go on alike: the self-addressed flow is found again, and time runs out the same.
        for t in [&mut t, &mut restored] {
            assert_eq!(
                t.ingest(start + S, 0, &self_addressed),
                Verdict::EstablishedReply
            );
            t.advance(start.saturating_add(3600 * S));
        }
        assert!(
            t.snapshot() == restored.snapshot(),
            "at {start}: the runs diverged"
        );
    }
}

#[test]
fn an_early_dropped_entrys_destroy_failed_after_a_reliable_listener_came_is_retried() {
    // Early drop with no reliable listener makes room at once, as the kernel does: its DESTROY
    // cannot fail then. But the message is still on its way to the host; if a reliable listener
    // joins and that DESTROY fails, it must be retried like any other, not lost with the slot.
    let mut t = Tracker::new(Config {
        sysctls: Sysctls {
            max: 2,
            events_retry_timeout: 1,
            ..Sysctls::default()
        },
        ..Config::default()
    });
    t.set_listeners(true, false);
    assert_eq!(t.ingest(T0, 0, &udp_to_53(1)), Verdict::New);
    assert_eq!(t.ingest(T0, 0, &udp_to_53(2)), Verdict::New);
    assert_eq!(
        t.ingest(T0, 0, &udp_to_53(3)),
        Verdict::New,
        "room by early drop"
    );
    assert_eq!(t.stats().early_drop, 1);
    assert!(t.stats().count <= 2);
    t.set_listeners(true, true);
    // Every message of this batch fails, the victim's DESTROY among them.
    let mut out = Vec::new();
    let n = t.take_events(usize::MAX, &mut out);
    t.report_delivery(&vec![Delivery::Failed; n]);
    // From now on everything is delivered: the table drains, each DESTROY once.
    let destroys = drains_cleanly(t, T0 + S).unwrap();
    assert_eq!(
        destroys.len(),
        3,
        "three entries, three DESTROYs delivered: {destroys:?}"
    );
}

#[test]
fn a_snapshot_whose_timer_wheel_runs_ahead_of_the_tracker_is_refused() {
    // Found by the snapshot fuzz target: a wheel whose clock is past the tracker's would hold
    // every timer back until the tracker caught up, and the host would step to deadlines that
    // never fire.
    let mut r = Run::new(false, |_| {});
    r.udp(0, true, 10);
    r.advance(5 * S);
    let good = r.t.snapshot();
    let mut t = Tracker::restore(&good).unwrap();
    t.now_ns = T0;
    assert_eq!(
        Tracker::restore(&t.snapshot()).err(),
        Some(SnapshotError::Invalid(
            "timer wheel's clock (ahead of the tracker's)"
        ))
    );
}

#[test]
fn an_entry_with_missed_bits_ended_without_events_is_counted_out_once() {
    // Found by the snapshot fuzz target: an entry with missed bits in a tracker whose events
    // are off (a state only a snapshot can hold) was taken out of `missed_pending` twice when
    // it ended, once when unhashed and again when its slot was released.
    let mut r = Run::new(false, |_| {});
    r.fail_next = 1;
    r.udp(0, true, 10);
    assert_eq!(r.t.stats().missed_pending, 1);
    let mut t = Tracker::restore(&r.t.snapshot()).unwrap();
    t.config.sysctls.events = 0;
    let mut t = Tracker::restore(&t.snapshot()).unwrap();
    t.flush(T0 + S);
    let s = t.stats();
    assert_eq!((s.count, s.missed_pending), (0, 0));
}

#[test]
fn every_byte_up_to_the_last_verdict_is_one_and_none_past_it() {
    for v in 0..=Verdict::LAST as u8 {
        assert_eq!(Verdict::from_u8(v).map(|v| v as u8), Some(v));
    }
    assert_eq!(Verdict::from_u8(Verdict::LAST as u8 + 1), None);
}
