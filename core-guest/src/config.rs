//! Configuration: the kernel's sysctls by their own names, the seed and the retry policy.
//!
//! Operators already know `net.netfilter.nf_conntrack_tcp_timeout_established`; every setting
//! here is reachable by that name (with or without the `net.netfilter.` prefix) and holds the
//! value the kernel documents as its default. Timeouts are whole seconds, as `/proc` shows them.

use core::fmt;

use crate::event::{SctpState, TcpState};

/// How a DESTROY that could not be delivered is retried from the dying list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryPolicy {
    /// The seed's (Linux 2.6.31): each dying entry retries after its own uniformly random delay
    /// in `[0, nf_conntrack_events_retry_timeout)`, drawn from the seeded generator.
    Grace,
    /// Modern Linux (5.19+): one worker; first run 1 s after the first failure, then every
    /// 10 ms while deliveries fail, and at once when another DESTROY gets through.
    Kernel,
    /// Retry as soon as the host reports that the listeners have room again.
    OnDrain,
}

impl RetryPolicy {
    pub fn parse(name: &str) -> Option<RetryPolicy> {
        match name {
            "grace" => Some(RetryPolicy::Grace),
            "kernel" => Some(RetryPolicy::Kernel),
            "on-drain" | "ondrain" | "drain" => Some(RetryPolicy::OnDrain),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            RetryPolicy::Grace => "grace",
            RetryPolicy::Kernel => "kernel",
            RetryPolicy::OnDrain => "on-drain",
        }
    }
}

/// The names [`RetryPolicy::parse`] takes, for command lines (`--retry-policy kernel`).
impl core::str::FromStr for RetryPolicy {
    type Err = ConfigError;

    fn from_str(name: &str) -> Result<RetryPolicy, ConfigError> {
        RetryPolicy::parse(name).ok_or_else(|| ConfigError::BadValue {
            name: "retry policy".into(),
            value: name.into(),
            expected: "grace, kernel or on-drain",
        })
    }
}

/// The tunables, one field per kernel sysctl.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sysctls {
    /// `nf_conntrack_max`: live plus dying entries never exceed it.
    pub max: u32,
    /// `nf_conntrack_events`: 0 off, 1 always, 2 only if a listener exists at creation.
    pub events: u8,
    /// `nf_conntrack_events_retry_timeout`, seconds (the seed's grace bound).
    pub events_retry_timeout: u32,
    /// `nf_conntrack_acct`: counters in DESTROY events and dumps.
    pub acct: bool,
    /// `nf_conntrack_timestamp`: start/stop times and the per-event timestamp.
    pub timestamp: bool,
    /// `nf_conntrack_checksum`: verify the checksums of packets that arrive unverified (see
    /// [`crate::batch::PACKET_FLAG_ARRIVED`]); a packet whose checksum is wrong is invalid.
    pub checksum: bool,
    /// `nf_conntrack_tcp_loose`: pick up connections in mid-stream.
    pub tcp_loose: bool,
    /// `nf_conntrack_tcp_be_liberal`.
    pub tcp_be_liberal: bool,
    /// `nf_conntrack_tcp_max_retrans`.
    pub tcp_max_retrans: u32,
    /// `nf_conntrack_tcp_timeout_*`, indexed by [`TcpState`] as `u8` (NONE uses SYN_SENT's).
    pub tcp_timeouts: [u32; 10],
    /// `nf_conntrack_tcp_timeout_max_retrans`.
    pub tcp_timeout_max_retrans: u32,
    /// `nf_conntrack_tcp_timeout_unacknowledged`.
    pub tcp_timeout_unacknowledged: u32,
    pub udp_timeout: u32,
    pub udp_timeout_stream: u32,
    pub icmp_timeout: u32,
    pub icmpv6_timeout: u32,
    pub generic_timeout: u32,
    /// `nf_conntrack_gre_timeout` and `_stream`: fixed into a GRE entry when it is created.
    pub gre_timeout: u32,
    pub gre_timeout_stream: u32,
    /// `nf_conntrack_sctp_timeout_*`, indexed by [`SctpState`] as `u8` (NONE is never an
    /// entry's state after its first packet; it holds CLOSED's, as the kernel's table does).
    pub sctp_timeouts: [u32; 9],
    /// `nf_conntrack_expect_max`.
    pub expect_max: u32,
    /// `net.ipv4.ipfrag_time`: seconds an incomplete IPv4 datagram waits for its fragments.
    pub ipfrag_time: u32,
    /// `net.ipv4.ipfrag_high_thresh`: bytes of IPv4 fragments held at most; past it, fragments
    /// are dropped until queues complete or expire.
    pub ipfrag_high_thresh: u32,
    /// `nf_conntrack_frag6_timeout`: the same for IPv6, in conntrack's own reassembly.
    pub frag6_timeout: u32,
    /// `nf_conntrack_frag6_high_thresh`.
    pub frag6_high_thresh: u32,
}

impl Default for Sysctls {
    fn default() -> Self {
        Sysctls {
            max: 262_144,
            events: 1,
            events_retry_timeout: 15,
            acct: false,
            timestamp: false,
            checksum: true,
            tcp_loose: true,
            tcp_be_liberal: false,
            tcp_max_retrans: 3,
            //             NONE SS   SR  ES      FW   CW  LA  TW   CL  S2
            tcp_timeouts: [120, 120, 60, 432000, 120, 60, 30, 120, 10, 120],
            tcp_timeout_max_retrans: 300,
            tcp_timeout_unacknowledged: 300,
            udp_timeout: 30,
            udp_timeout_stream: 120,
            icmp_timeout: 30,
            icmpv6_timeout: 30,
            generic_timeout: 600,
            gre_timeout: 30,
            gre_timeout_stream: 180,
            //              NONE CL  CW CE ES   SS SR SA HS
            sctp_timeouts: [10, 10, 3, 3, 210, 3, 3, 3, 30],
            expect_max: 4096,
            ipfrag_time: 30,
            ipfrag_high_thresh: 4 << 20,
            frag6_timeout: 60,
            frag6_high_thresh: 4 << 20,
        }
    }
}

/// A setting that could not be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    UnknownSysctl(String),
    BadValue {
        name: String,
        value: String,
        expected: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::UnknownSysctl(n) => write!(f, "unknown sysctl `{n}`"),
            ConfigError::BadValue {
                name,
                value,
                expected,
            } => {
                write!(f, "bad value `{value}` for `{name}`: expected {expected}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// The IPv4 reassembly sysctls [`Sysctls::set`] knows, under `net.ipv4.`.
const IPV4_FRAG_NAMES: [&str; 2] = ["ipfrag_time", "ipfrag_high_thresh"];

const TCP_TIMEOUT_NAMES: [(&str, TcpState); 9] = [
    ("syn_sent", TcpState::SynSent),
    ("syn_recv", TcpState::SynRecv),
    ("established", TcpState::Established),
    ("fin_wait", TcpState::FinWait),
    ("close_wait", TcpState::CloseWait),
    ("last_ack", TcpState::LastAck),
    ("time_wait", TcpState::TimeWait),
    ("close", TcpState::Close),
    ("syn_sent2", TcpState::SynSent2),
];

const SCTP_TIMEOUT_NAMES: [(&str, SctpState); 8] = [
    ("closed", SctpState::Closed),
    ("cookie_wait", SctpState::CookieWait),
    ("cookie_echoed", SctpState::CookieEchoed),
    ("established", SctpState::Established),
    ("shutdown_sent", SctpState::ShutdownSent),
    ("shutdown_recd", SctpState::ShutdownRecd),
    ("shutdown_ack_sent", SctpState::ShutdownAckSent),
    ("heartbeat_sent", SctpState::HeartbeatSent),
];

impl Sysctls {
    /// Every name [`Sysctls::set`] accepts, in its full form (`net.netfilter.` for conntrack's
    /// own, `net.ipv4.` for IPv4 reassembly's).
    pub fn names() -> Vec<String> {
        let mut v: Vec<String> = [
            "nf_conntrack_max",
            "nf_conntrack_events",
            "nf_conntrack_events_retry_timeout",
            "nf_conntrack_acct",
            "nf_conntrack_timestamp",
            "nf_conntrack_checksum",
            "nf_conntrack_tcp_loose",
            "nf_conntrack_tcp_be_liberal",
            "nf_conntrack_tcp_max_retrans",
            "nf_conntrack_tcp_timeout_max_retrans",
            "nf_conntrack_tcp_timeout_unacknowledged",
            "nf_conntrack_udp_timeout",
            "nf_conntrack_udp_timeout_stream",
            "nf_conntrack_icmp_timeout",
            "nf_conntrack_icmpv6_timeout",
            "nf_conntrack_generic_timeout",
            "nf_conntrack_gre_timeout",
            "nf_conntrack_gre_timeout_stream",
            "nf_conntrack_expect_max",
            "nf_conntrack_frag6_timeout",
            "nf_conntrack_frag6_high_thresh",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(
            TCP_TIMEOUT_NAMES
                .iter()
                .map(|(n, _)| format!("nf_conntrack_tcp_timeout_{n}")),
        );
        v.extend(
            SCTP_TIMEOUT_NAMES
                .iter()
                .map(|(n, _)| format!("nf_conntrack_sctp_timeout_{n}")),
        );
        let mut names: Vec<String> = v.iter().map(|n| format!("net.netfilter.{n}")).collect();
        names.extend(IPV4_FRAG_NAMES.iter().map(|n| format!("net.ipv4.{n}")));
        names
    }

    /// Applies `name=value` where `name` is a kernel sysctl name, with or without the
    /// `net.netfilter.` prefix (`net.nf_conntrack_max` is accepted too, as in `/proc`), with dots
    /// or with slashes (`net/netfilter/nf_conntrack_max`).
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        // `net/netfilter/NAME`, the form of the path under /proc/sys, as `sysctl` accepts it.
        let dotted = name.replace('/', ".");
        let short = dotted
            .strip_prefix("net.netfilter.")
            .or_else(|| dotted.strip_prefix("net."))
            .unwrap_or(&dotted);
        let bad = |expected: &'static str| ConfigError::BadValue {
            name: name.to_string(),
            value: value.to_string(),
            expected,
        };
        let num = || {
            value
                .trim()
                .parse::<u32>()
                .map_err(|_| bad("a whole number"))
        };
        let flag = || match value.trim() {
            "0" => Ok(false),
            "1" => Ok(true),
            _ => Err(bad("0 or 1")),
        };
        // IPv4 reassembly's, as `net.ipv4.NAME` (or the bare name).
        match short.strip_prefix("ipv4.").unwrap_or(short) {
            "ipfrag_time" => {
                self.ipfrag_time = num()?;
                return Ok(());
            }
            "ipfrag_high_thresh" => {
                self.ipfrag_high_thresh = num()?;
                return Ok(());
            }
            _ => {}
        }
        let Some(rest) = short.strip_prefix("nf_conntrack_") else {
            return Err(ConfigError::UnknownSysctl(name.to_string()));
        };
        match rest {
            "max" => self.max = num()?,
            "events" => {
                let v = num()?;
                if v > 2 {
                    return Err(bad("0, 1 or 2"));
                }
                self.events = v as u8;
            }
            "events_retry_timeout" => self.events_retry_timeout = num()?,
            "acct" => self.acct = flag()?,
            "timestamp" => self.timestamp = flag()?,
            "checksum" => self.checksum = flag()?,
            "tcp_loose" => self.tcp_loose = flag()?,
            "tcp_be_liberal" => self.tcp_be_liberal = flag()?,
            "tcp_max_retrans" => self.tcp_max_retrans = num()?,
            "tcp_timeout_max_retrans" => self.tcp_timeout_max_retrans = num()?,
            "tcp_timeout_unacknowledged" => self.tcp_timeout_unacknowledged = num()?,
            "udp_timeout" => self.udp_timeout = num()?,
            "udp_timeout_stream" => self.udp_timeout_stream = num()?,
            "icmp_timeout" => self.icmp_timeout = num()?,
            "icmpv6_timeout" => self.icmpv6_timeout = num()?,
            "generic_timeout" => self.generic_timeout = num()?,
            "gre_timeout" => self.gre_timeout = num()?,
            "gre_timeout_stream" => self.gre_timeout_stream = num()?,
            "expect_max" => self.expect_max = num()?,
            "frag6_timeout" => self.frag6_timeout = num()?,
            "frag6_high_thresh" => self.frag6_high_thresh = num()?,
            other if other.starts_with("sctp_timeout_") => {
                let state = SCTP_TIMEOUT_NAMES
                    .iter()
                    .find(|(n, _)| Some(*n) == other.strip_prefix("sctp_timeout_"))
                    .map(|(_, st)| *st)
                    .ok_or_else(|| ConfigError::UnknownSysctl(name.to_string()))?;
                self.sctp_timeouts[state as usize] = num()?;
            }
            other => {
                let state = other.strip_prefix("tcp_timeout_").and_then(|s| {
                    TCP_TIMEOUT_NAMES
                        .iter()
                        .find(|(n, _)| *n == s)
                        .map(|(_, st)| *st)
                });
                match state {
                    Some(st) => {
                        let v = num()?;
                        self.tcp_timeouts[st as usize] = v;
                        if st == TcpState::SynSent {
                            // The kernel keeps NONE equal to SYN_SENT.
                            self.tcp_timeouts[TcpState::None as usize] = v;
                        }
                    }
                    None => return Err(ConfigError::UnknownSysctl(name.to_string())),
                }
            }
        }
        Ok(())
    }

    pub fn tcp_timeout(&self, state: TcpState) -> u32 {
        self.tcp_timeouts[state as usize]
    }

    pub fn sctp_timeout(&self, state: SctpState) -> u32 {
        self.sctp_timeouts[state as usize]
    }
}

/// Everything a tracker is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub sysctls: Sysctls,
    /// Seeds the grace-delay generator and the id and hash keys: same seed, same run.
    pub seed: u64,
    pub retry_policy: RetryPolicy,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sysctls: Sysctls::default(),
            seed: 0,
            retry_policy: RetryPolicy::Grace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policies_parse_from_their_names() {
        for p in [
            RetryPolicy::Grace,
            RetryPolicy::Kernel,
            RetryPolicy::OnDrain,
        ] {
            assert_eq!(p.name().parse::<RetryPolicy>(), Ok(p));
        }
        assert!("sometimes".parse::<RetryPolicy>().is_err());
    }

    #[test]
    fn sysctls_take_kernel_names_with_or_without_prefix() {
        let mut s = Sysctls::default();
        s.set("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "3")
            .unwrap();
        s.set("nf_conntrack_udp_timeout_stream", "4").unwrap();
        s.set("net.nf_conntrack_max", "100").unwrap();
        s.set("net.netfilter.nf_conntrack_tcp_timeout_syn_sent", "7")
            .unwrap();
        assert_eq!(s.tcp_timeout(TcpState::TimeWait), 3);
        assert_eq!(s.tcp_timeout(TcpState::None), 7);
        // The /proc/sys path form, as `sysctl` takes it.
        s.set("net/netfilter/nf_conntrack_udp_timeout", "11")
            .unwrap();
        s.set("net/nf_conntrack_max", "101").unwrap();
        assert_eq!((s.udp_timeout, s.max), (11, 101));
        s.set("net.nf_conntrack_max", "100").unwrap();
        assert!(matches!(
            s.set("net/netfilter/nf_conntrack_bogus", "1"),
            Err(ConfigError::UnknownSysctl(name)) if name == "net/netfilter/nf_conntrack_bogus"
        ));
        assert_eq!((s.udp_timeout_stream, s.max), (4, 100));
        // Reassembly's: IPv4's under net.ipv4, IPv6's conntrack's own.
        s.set("net.ipv4.ipfrag_time", "5").unwrap();
        s.set("net/ipv4/ipfrag_high_thresh", "65536").unwrap();
        s.set("net.netfilter.nf_conntrack_frag6_timeout", "6")
            .unwrap();
        s.set("nf_conntrack_frag6_high_thresh", "1024").unwrap();
        assert_eq!(
            (
                s.ipfrag_time,
                s.ipfrag_high_thresh,
                s.frag6_timeout,
                s.frag6_high_thresh
            ),
            (5, 65536, 6, 1024)
        );
        assert!(matches!(
            s.set("net.ipv4.ipfrag_time", "soon"),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            s.set("net.ipv4.ip_forward", "1"),
            Err(ConfigError::UnknownSysctl(_))
        ));
        assert!(matches!(
            s.set("nf_conntrack_events", "3"),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            s.set("nf_conntrack_bogus", "1"),
            Err(ConfigError::UnknownSysctl(_))
        ));
        for name in Sysctls::names() {
            let v = if name.ends_with("events") { "2" } else { "1" };
            s.set(&name, v).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
