//! conntrack-tools' entry filters: which entries `conntrack -L`, `-E`, `-D`, `-C` act on.
//!
//! One [`Filter`] holds every condition `conntrack` takes on the command line (`-f`, `-p`,
//! `-s/-d` and the reply addresses, the four ports, `--state`, `-u`, `-m MARK[/MASK]`, `-w`) and
//! decides for one ctnetlink message, whether it came from the kernel (a dump entry, an event)
//! or from the engine. Every condition must hold, as in conntrack-tools; an absent attribute
//! fails the condition that needs it (an UPDATE without the TCP state does not match
//! `--state`). The values are parsed here with conntrack-tools' names and errors that say what
//! is wrong, so bad input never reaches a socket.

use std::fmt;
use std::net::IpAddr;

use ctwasm_core::netlink::CtMessage;
use ctwasm_core::tuple::ipproto;
use ctwasm_core::{Addr, Family, L4Tuple, MessageKind, Status, TcpState, Tuple};

/// An address condition: the address, and how many leading bits must match (`ADDR/PREFIX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrMatch {
    pub family: Family,
    pub addr: Addr,
    pub prefix: u8,
}

impl AddrMatch {
    fn matches(&self, family: Family, addr: &Addr) -> bool {
        if family != self.family {
            return false;
        }
        let bits = usize::from(self.prefix);
        let (a, b) = (self.addr.bytes(family), addr.bytes(family));
        let whole = bits / 8;
        if a[..whole] != b[..whole] {
            return false;
        }
        match bits % 8 {
            0 => true,
            rest => {
                let mask = 0xffu8 << (8 - rest);
                a[whole] & mask == b[whole] & mask
            }
        }
    }
}

/// What an entry or an event must be for a command to act on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub family: Option<Family>,
    pub proto: Option<u8>,
    pub orig_src: Option<AddrMatch>,
    pub orig_dst: Option<AddrMatch>,
    pub reply_src: Option<AddrMatch>,
    pub reply_dst: Option<AddrMatch>,
    pub orig_sport: Option<u16>,
    pub orig_dport: Option<u16>,
    pub reply_sport: Option<u16>,
    pub reply_dport: Option<u16>,
    pub tcp_state: Option<TcpState>,
    /// Every one of these status bits must be set.
    pub status: Option<Status>,
    /// `(mark, mask)`: the entry's mark under the mask equals the mark under the mask.
    pub mark: Option<(u32, u32)>,
    pub zone: Option<u16>,
    /// Event kinds (`-e`); `None` is all of them.
    pub events: Option<Vec<MessageKind>>,
}

/// What `conntrack -U` changes in each selected entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// `(value, mask)`: the new mark is `(mark & !mask) ^ value`.
    pub mark: Option<(u32, u32)>,
    /// Status bits to set (the kernel lets userspace set ASSURED and SEEN_REPLY).
    pub status: Option<Status>,
}

impl Change {
    /// The mark an entry with `mark` gets.
    pub fn mark_of(&self, mark: u32) -> u32 {
        self.mark
            .map_or(mark, |(value, mask)| (mark & !mask) ^ value)
    }

    /// The status word an entry with `status` gets.
    pub fn status_of(&self, status: Status) -> Status {
        Status(status.0 | self.status.map_or(0, |s| s.0))
    }
}

/// A filter value conntrack-tools would refuse, with what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError {
    pub option: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}: expected {}", self.option, self.expected)
        } else {
            write!(
                f,
                "{} `{}`: expected {}",
                self.option, self.value, self.expected
            )
        }
    }
}

impl std::error::Error for FilterError {}

impl Filter {
    /// Whether no condition is set.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Whether `msg` meets every condition.
    pub fn matches(&self, msg: &CtMessage) -> bool {
        if let Some(events) = &self.events
            && !msg.kind().is_some_and(|k| events.contains(&k))
        {
            return false;
        }
        let family = msg.family();
        if self.family.is_some() && family != self.family {
            return false;
        }
        let (orig, reply) = (msg.orig(), msg.reply());
        if let Some(p) = self.proto
            && orig.is_none_or(|t| t.proto != p)
        {
            return false;
        }
        let addr_ok = |cond: &Option<AddrMatch>, tuple: Option<Tuple>, src: bool| {
            cond.is_none_or(|c| {
                tuple.is_some_and(|t| c.matches(t.family, if src { &t.src } else { &t.dst }))
            })
        };
        if !(addr_ok(&self.orig_src, orig, true)
            && addr_ok(&self.orig_dst, orig, false)
            && addr_ok(&self.reply_src, reply, true)
            && addr_ok(&self.reply_dst, reply, false))
        {
            return false;
        }
        let port_ok = |cond: Option<u16>, tuple: Option<Tuple>, src: bool| {
            cond.is_none_or(|p| {
                tuple.is_some_and(|t| match t.l4 {
                    L4Tuple::Ports { src: s, dst: d } => p == if src { s } else { d },
                    _ => false,
                })
            })
        };
        if !(port_ok(self.orig_sport, orig, true)
            && port_ok(self.orig_dport, orig, false)
            && port_ok(self.reply_sport, reply, true)
            && port_ok(self.reply_dport, reply, false))
        {
            return false;
        }
        if let Some(s) = self.tcp_state
            && msg.tcp_state() != Some(s)
        {
            return false;
        }
        if let Some(bits) = self.status
            && !msg.status().is_some_and(|s| s.contains(bits))
        {
            return false;
        }
        if let Some((mark, mask)) = self.mark
            && msg.mark().unwrap_or(0) & mask != mark & mask
        {
            return false;
        }
        self.zone.is_none_or(|z| msg.zone() == z)
    }

    /// The one original tuple and zone these options name, for `conntrack -G`: whole
    /// addresses with `-s` and `-d` (as conntrack-tools demands), `-p`, and both ports for a
    /// protocol with ports. ICMP tuples need conntrack's `--icmp-*` options, which ctwasm does
    /// not take; `list -p icmp` shows those entries.
    pub fn exact_orig(&self) -> Result<(Tuple, u16), FilterError> {
        let need = |option: &'static str, expected: &'static str| FilterError {
            option,
            value: String::new(),
            expected,
        };
        let (Some(src), Some(dst)) = (self.orig_src, self.orig_dst) else {
            return Err(need("--src/--dst", "both, to name one entry"));
        };
        for a in [src, dst] {
            let whole = if a.family == Family::Ipv4 { 32 } else { 128 };
            if a.prefix != whole {
                return Err(FilterError {
                    option: "--src/--dst",
                    value: format!("{}/{}", a.addr.to_ip(a.family), a.prefix),
                    expected: "a whole address, to name one entry",
                });
            }
        }
        if src.family != dst.family {
            return Err(need("--src/--dst", "addresses of one family"));
        }
        let proto = self
            .proto
            .ok_or(need("-p", "a protocol, to name one entry"))?;
        let l4 = match proto {
            ipproto::TCP | ipproto::UDP | 33 | 132 | 136 => {
                match (self.orig_sport, self.orig_dport) {
                    (Some(src), Some(dst)) => L4Tuple::Ports { src, dst },
                    _ => return Err(need("--sport/--dport", "both, to name one entry")),
                }
            }
            ipproto::ICMP | ipproto::ICMPV6 => {
                return Err(FilterError {
                    option: "-p",
                    value: proto.to_string(),
                    expected: "a protocol without ICMP's --icmp-* options (list -p icmp shows \
                               those entries)",
                });
            }
            _ => L4Tuple::None,
        };
        let tuple = Tuple {
            family: src.family,
            src: src.addr,
            dst: dst.addr,
            proto,
            l4,
        };
        Ok((tuple, self.zone.unwrap_or(0)))
    }

    /// For `conntrack -U`: `-m` and `-u` are the change, not conditions. Returns the filter
    /// without them and the change they ask for; `None` when they ask for none.
    pub fn split_change(&self) -> Result<(Filter, Option<Change>), FilterError> {
        let mut filter = self.clone();
        let mark = filter.mark.take();
        let status = filter.status.take();
        if let Some(bits) = status {
            let settable = Status::ASSURED.0 | Status::SEEN_REPLY.0;
            if bits.0 & !settable != 0 {
                return Err(FilterError {
                    option: "-u",
                    value: Status(bits.0 & !settable)
                        .names()
                        .collect::<Vec<_>>()
                        .join(","),
                    expected: "ASSURED or SEEN_REPLY (the kernel lets userspace set only \
                               those)",
                });
            }
        }
        let change = (mark.is_some() || status.is_some()).then_some(Change { mark, status });
        Ok((filter, change))
    }

    /// Checks the conditions against each other as conntrack-tools does: `--state` and the
    /// port conditions need a protocol with them (`-p tcp`; ports: tcp, udp, udplite, sctp,
    /// dccp), and addresses must be of the `-f` family.
    pub fn validate(&self) -> Result<(), FilterError> {
        if let Some(state) = self.tcp_state
            && self.proto != Some(ipproto::TCP)
        {
            return Err(FilterError {
                option: "--state",
                value: state.name().to_string(),
                expected: "`-p tcp` with it",
            });
        }
        let ports = [
            self.orig_sport,
            self.orig_dport,
            self.reply_sport,
            self.reply_dport,
        ];
        if ports.iter().any(Option::is_some)
            && !matches!(
                self.proto,
                Some(ipproto::TCP | ipproto::UDP | 33 | 132 | 136)
            )
        {
            return Err(FilterError {
                option: "--sport/--dport",
                value: ports
                    .iter()
                    .flatten()
                    .next()
                    .copied()
                    .unwrap_or(0)
                    .to_string(),
                expected: "a protocol with ports with it (`-p tcp`, `-p udp`, ...)",
            });
        }
        if let Some(f) = self.family {
            let addrs = [self.orig_src, self.orig_dst, self.reply_src, self.reply_dst];
            if let Some(a) = addrs.iter().flatten().find(|a| a.family != f) {
                return Err(FilterError {
                    option: "-f",
                    value: a.addr.to_ip(a.family).to_string(),
                    expected: "addresses of the family `-f` names",
                });
            }
        }
        Ok(())
    }
}

/// `-f`: `ipv4` or `ipv6`.
pub fn parse_family(value: &str) -> Result<Family, FilterError> {
    match value {
        "ipv4" | "inet" => Ok(Family::Ipv4),
        "ipv6" | "inet6" => Ok(Family::Ipv6),
        _ => Err(FilterError {
            option: "-f",
            value: value.to_string(),
            expected: "ipv4 or ipv6",
        }),
    }
}

/// `-p`: a protocol name conntrack knows, or a number from 0 to 255.
pub fn parse_proto(value: &str) -> Result<u8, FilterError> {
    let named = match value.to_ascii_lowercase().as_str() {
        "tcp" => Some(ipproto::TCP),
        "udp" => Some(ipproto::UDP),
        "icmp" => Some(ipproto::ICMP),
        "icmpv6" | "ipv6-icmp" => Some(ipproto::ICMPV6),
        "udplite" => Some(136),
        "sctp" => Some(132),
        "dccp" => Some(33),
        "gre" => Some(47),
        _ => None,
    };
    named.or_else(|| value.parse().ok()).ok_or(FilterError {
        option: "-p",
        value: value.to_string(),
        expected: "tcp, udp, icmp, icmpv6, udplite, sctp, dccp, gre or a number 0-255",
    })
}

/// `-s`, `-d` and the reply addresses: an IPv4 or IPv6 address, optionally `/PREFIX`.
pub fn parse_addr(option: &'static str, value: &str) -> Result<AddrMatch, FilterError> {
    let err = |expected| FilterError {
        option,
        value: value.to_string(),
        expected,
    };
    let (ip, prefix) = match value.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (value, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| err("an IPv4 or IPv6 address"))?;
    let (family, addr, max) = match ip {
        IpAddr::V4(a) => (Family::Ipv4, Addr::v4(a.octets()), 32),
        IpAddr::V6(a) => (Family::Ipv6, Addr::v6(a.octets()), 128),
    };
    let prefix = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or(err("a prefix length within the address (/0-32, /0-128)"))?,
    };
    Ok(AddrMatch {
        family,
        addr,
        prefix,
    })
}

/// A port: 0 to 65535.
pub fn parse_port(option: &'static str, value: &str) -> Result<u16, FilterError> {
    value.parse().map_err(|_| FilterError {
        option,
        value: value.to_string(),
        expected: "a port number 0-65535",
    })
}

/// `--state`: a TCP state name as conntrack prints it.
pub fn parse_state(value: &str) -> Result<TcpState, FilterError> {
    TcpState::ALL
        .into_iter()
        .find(|s| s.name().eq_ignore_ascii_case(value))
        .ok_or(FilterError {
            option: "--state",
            value: value.to_string(),
            expected: "a TCP state (SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, \
                       LAST_ACK, TIME_WAIT, CLOSE, SYN_SENT2, NONE)",
        })
}

/// `-u`: status flags, comma-separated (`ASSURED,SEEN_REPLY`); every one must be set.
pub fn parse_status(value: &str) -> Result<Status, FilterError> {
    let mut bits = Status(0);
    for name in value.split(',') {
        let found = Status::NAMES
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(bit, _)| *bit);
        match (found, name.eq_ignore_ascii_case("UNSET")) {
            (Some(bit), _) => bits.insert(bit),
            (None, true) => {}
            (None, false) => {
                return Err(FilterError {
                    option: "-u",
                    value: value.to_string(),
                    expected: "status flags such as ASSURED,SEEN_REPLY,EXPECTED,FIXED_TIMEOUT",
                });
            }
        }
    }
    Ok(bits)
}

/// `-m`: `MARK` or `MARK/MASK`, each decimal or `0x` hexadecimal.
pub fn parse_mark(value: &str) -> Result<(u32, u32), FilterError> {
    let number = |s: &str| match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    };
    let parsed = match value.split_once('/') {
        Some((m, k)) => number(m).zip(number(k)),
        None => number(value).map(|m| (m, u32::MAX)),
    };
    parsed.ok_or(FilterError {
        option: "-m",
        value: value.to_string(),
        expected: "MARK or MARK/MASK (32-bit, decimal or 0x hex)",
    })
}

/// `-w`: a zone, 0 to 65535.
pub fn parse_zone(value: &str) -> Result<u16, FilterError> {
    value.parse().map_err(|_| FilterError {
        option: "-w",
        value: value.to_string(),
        expected: "a zone number 0-65535",
    })
}

/// `-e`: event kinds, comma-separated: NEW, UPDATE, DESTROY, or ALL.
pub fn parse_event_mask(value: &str) -> Result<Vec<MessageKind>, FilterError> {
    let mut kinds = Vec::new();
    for name in value.split(',') {
        let more: &[MessageKind] = match name.to_ascii_uppercase().as_str() {
            "NEW" => &[MessageKind::New],
            "UPDATE" => &[MessageKind::Update],
            "DESTROY" => &[MessageKind::Destroy],
            "ALL" => &[MessageKind::New, MessageKind::Update, MessageKind::Destroy],
            _ => {
                return Err(FilterError {
                    option: "-e",
                    value: value.to_string(),
                    expected: "NEW, UPDATE, DESTROY or ALL, comma-separated",
                });
            }
        };
        for k in more {
            if !kinds.contains(k) {
                kinds.push(*k);
            }
        }
    }
    Ok(kinds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctwasm_core::batch;
    use ctwasm_core::proto::tcp::flag::{ACK, SYN};
    use ctwasm_core::wire::build;
    use ctwasm_core::{Config, Delivery, Tracker};

    /// The engine's messages for a TCP handshake 10.0.0.1:40000 -> 10.0.0.2:80 (NEW, two
    /// UPDATEs) and a UDP packet from fd00::1 to fd00::2 port 53 (NEW).
    fn messages() -> Vec<CtMessage> {
        let mut t = Tracker::new(Config::default());
        let tcp = |from_client: bool, seq, ack, flags| {
            let (s, d, sp, dp) = if from_client {
                ([10, 0, 0, 1], [10, 0, 0, 2], 40000, 80)
            } else {
                ([10, 0, 0, 2], [10, 0, 0, 1], 80, 40000)
            };
            build::ipv4(
                s,
                d,
                ipproto::TCP,
                &build::tcp(sp, dp, seq, ack, flags, 65000, 0),
            )
        };
        t.ingest(1, 0, &tcp(true, 100, 0, SYN));
        t.ingest(2, 0, &tcp(false, 500, 101, SYN | ACK));
        t.ingest(3, 0, &tcp(true, 101, 501, ACK));
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        v6[15] = 1;
        let mut v6b = v6;
        v6b[15] = 2;
        t.ingest(
            4,
            0,
            &build::ipv6(v6, v6b, ipproto::UDP, &build::udp(5000, 53, 4)),
        );
        let mut out = Vec::new();
        let n = t.take_events(usize::MAX, &mut out);
        t.report_delivery(&vec![Delivery::Delivered; n]);
        batch::events(&out)
            .map(|f| CtMessage::parse(f.unwrap().netlink).unwrap().0)
            .collect()
    }

    fn count(f: &Filter) -> usize {
        messages().iter().filter(|m| f.matches(m)).count()
    }

    #[test]
    fn each_condition_selects_what_it_names() {
        assert_eq!(count(&Filter::default()), 4);
        let f = |build: fn(&mut Filter)| {
            let mut f = Filter::default();
            build(&mut f);
            count(&f)
        };
        assert_eq!(f(|f| f.family = Some(Family::Ipv6)), 1);
        assert_eq!(f(|f| f.proto = Some(ipproto::TCP)), 3);
        assert_eq!(
            f(|f| f.orig_src = Some(parse_addr("-s", "10.0.0.1").unwrap())),
            3
        );
        assert_eq!(
            f(|f| f.orig_src = Some(parse_addr("-s", "10.0.0.0/24").unwrap())),
            3
        );
        assert_eq!(
            f(|f| f.orig_src = Some(parse_addr("-s", "10.0.1.0/24").unwrap())),
            0
        );
        assert_eq!(
            f(|f| f.reply_src = Some(parse_addr("--reply-src", "fd00::2").unwrap())),
            1
        );
        assert_eq!(f(|f| f.orig_dport = Some(80)), 3);
        assert_eq!(f(|f| f.reply_dport = Some(40000)), 3);
        assert_eq!(f(|f| f.orig_sport = Some(5000)), 1);
        // The NEW (SYN_SENT) and the two UPDATEs (SYN_RECV, ESTABLISHED) carry the state.
        assert_eq!(f(|f| f.tcp_state = Some(TcpState::Established)), 1);
        assert_eq!(f(|f| f.status = Some(Status::SEEN_REPLY)), 2);
        assert_eq!(
            f(|f| f.status = Some(Status::SEEN_REPLY.union(Status::ASSURED))),
            1
        );
        assert_eq!(f(|f| f.mark = Some((0, u32::MAX))), 4);
        assert_eq!(f(|f| f.mark = Some((1, 1))), 0);
        assert_eq!(f(|f| f.zone = Some(0)), 4);
        assert_eq!(f(|f| f.zone = Some(3)), 0);
        assert_eq!(f(|f| f.events = Some(vec![MessageKind::Update])), 2);
        // All conditions at once.
        let mut all = Filter {
            proto: Some(ipproto::TCP),
            orig_dport: Some(80),
            tcp_state: Some(TcpState::SynRecv),
            ..Filter::default()
        };
        assert_eq!(count(&all), 1);
        all.family = Some(Family::Ipv6);
        assert_eq!(count(&all), 0);
    }

    #[test]
    fn bad_values_are_errors_naming_the_option() {
        for (result, option) in [
            (parse_family("ipv5").map(drop), "-f"),
            (parse_proto("tcpx").map(drop), "-p"),
            (parse_proto("256").map(drop), "-p"),
            (parse_addr("-s", "10.0.0.256").map(drop), "-s"),
            (parse_addr("-s", "10.0.0.1/33").map(drop), "-s"),
            (parse_addr("-d", "fd00::1/129").map(drop), "-d"),
            (parse_addr("-s", "").map(drop), "-s"),
            (parse_port("--sport", "65536").map(drop), "--sport"),
            (parse_port("--dport", "-1").map(drop), "--dport"),
            (parse_state("ESTABLISH").map(drop), "--state"),
            (parse_status("ASSURED,BOGUS").map(drop), "-u"),
            (parse_mark("0x1/").map(drop), "-m"),
            (parse_mark("4294967296").map(drop), "-m"),
            (parse_zone("65536").map(drop), "-w"),
            (parse_event_mask("NEW,CREATE").map(drop), "-e"),
        ] {
            let err = result.unwrap_err();
            assert_eq!(err.option, option, "{err}");
            assert!(err.to_string().contains("expected"), "{err}");
        }
        assert_eq!(parse_proto("6"), Ok(ipproto::TCP));
        assert_eq!(parse_mark("0x10/0xf0"), Ok((0x10, 0xf0)));
        assert_eq!(parse_mark("7"), Ok((7, u32::MAX)));
        assert_eq!(
            parse_status("assured,seen_reply"),
            Ok(Status::ASSURED.union(Status::SEEN_REPLY))
        );
        assert_eq!(
            parse_event_mask("ALL,NEW").unwrap().len(),
            3,
            "no kind twice"
        );
    }

    #[test]
    fn conditions_that_need_each_other_are_checked_together() {
        let state = Filter {
            tcp_state: Some(TcpState::Established),
            ..Filter::default()
        };
        assert_eq!(state.validate().unwrap_err().option, "--state");
        let port = Filter {
            orig_dport: Some(80),
            proto: Some(ipproto::ICMP),
            ..Filter::default()
        };
        assert_eq!(port.validate().unwrap_err().option, "--sport/--dport");
        let family = Filter {
            family: Some(Family::Ipv6),
            orig_src: Some(parse_addr("-s", "10.0.0.1").unwrap()),
            ..Filter::default()
        };
        assert_eq!(family.validate().unwrap_err().option, "-f");
        let fine = Filter {
            proto: Some(ipproto::TCP),
            tcp_state: Some(TcpState::Established),
            orig_dport: Some(80),
            ..Filter::default()
        };
        assert_eq!(fine.validate(), Ok(()));
    }

    fn options(src: Option<&str>, dst: Option<&str>, proto: Option<&str>) -> Filter {
        Filter {
            orig_src: src.map(|v| parse_addr("-s", v).unwrap()),
            orig_dst: dst.map(|v| parse_addr("-d", v).unwrap()),
            proto: proto.map(|v| parse_proto(v).unwrap()),
            ..Filter::default()
        }
    }

    #[test]
    fn get_names_one_tuple_or_says_what_is_missing() {
        let mut f = options(Some("10.0.0.1"), Some("10.0.0.2"), Some("tcp"));
        f.orig_sport = Some(40000);
        f.orig_dport = Some(80);
        f.zone = Some(3);
        let (tuple, zone) = f.exact_orig().unwrap();
        assert_eq!(
            crate::output::tuple_text(&tuple),
            "tcp 10.0.0.1:40000 -> 10.0.0.2:80"
        );
        assert_eq!(zone, 3);
        let gre = options(Some("fd00::1"), Some("fd00::2"), Some("gre"));
        assert_eq!(gre.exact_orig().unwrap().0.l4, L4Tuple::None);

        let refused = |f: Filter, option: &str| {
            let e = f.exact_orig().unwrap_err();
            assert_eq!(e.option, option, "{e}");
        };
        refused(options(Some("10.0.0.1"), None, Some("tcp")), "--src/--dst");
        refused(options(None, None, None), "--src/--dst");
        refused(
            options(Some("10.0.0.0/24"), Some("10.0.0.2"), Some("udp")),
            "--src/--dst",
        );
        refused(
            options(Some("10.0.0.1"), Some("::1"), Some("udp")),
            "--src/--dst",
        );
        refused(options(Some("10.0.0.1"), Some("10.0.0.2"), None), "-p");
        refused(
            options(Some("10.0.0.1"), Some("10.0.0.2"), Some("udp")),
            "--sport/--dport",
        );
        refused(
            options(Some("10.0.0.1"), Some("10.0.0.2"), Some("icmp")),
            "-p",
        );
    }

    #[test]
    fn update_takes_mark_and_status_as_the_change() {
        let mut f = options(None, None, Some("udp"));
        f.mark = Some(parse_mark("0x10/0xf0").unwrap());
        f.status = Some(parse_status("ASSURED").unwrap());
        let (rest, change) = f.split_change().unwrap();
        assert_eq!(rest, options(None, None, Some("udp")));
        let change = change.unwrap();
        // conntrack -U: (mark & ~mask) ^ value.
        assert_eq!(change.mark_of(0x1234_5678), 0x1234_5618);
        assert_eq!(change.mark_of(0), 0x10);
        assert_eq!(
            change.status_of(Status::CONFIRMED),
            Status::CONFIRMED.union(Status::ASSURED)
        );
        let whole = Change {
            mark: Some(parse_mark("7").unwrap()),
            status: None,
        };
        assert_eq!(whole.mark_of(0xdead_beef), 7);
        assert_eq!(whole.status_of(Status::DYING), Status::DYING);

        assert_eq!(options(None, None, None).split_change().unwrap().1, None);
        let dying = Filter {
            status: Some(parse_status("ASSURED,DYING").unwrap()),
            ..Filter::default()
        };
        let e = dying.split_change().unwrap_err();
        assert_eq!((e.option, e.value.as_str()), ("-u", "DYING"), "{e}");
    }
}
