//! conntrack-tools' filter options, shared by the commands that select entries or events
//! (`list`, `watch`): the same letters and long names as `conntrack`, parsed into one
//! [`Filter`] by `ctwasm_host::filter`.
//!
//! One letter differs: `conntrack -q` is `--reply-dst`, but `-q` is ctwasm's `--quiet`, so
//! the reply destination has only its long name here.

use anyhow::Result;
use ctwasm_host::filter::{
    Filter, parse_addr, parse_event_mask, parse_family, parse_mark, parse_port, parse_proto,
    parse_state, parse_status, parse_zone,
};

/// Filters, as conntrack-tools takes them.
#[derive(clap::Args, Debug, Default)]
pub struct FilterArgs {
    /// Layer 3 family: ipv4 or ipv6.
    #[arg(long = "family", short = 'f', value_name = "FAMILY")]
    family: Option<String>,
    /// Layer 4 protocol: tcp, udp, icmp, icmpv6, udplite, sctp, dccp, gre, or a number.
    #[arg(long = "proto", short = 'p', value_name = "PROTO")]
    proto: Option<String>,
    /// Source address of the original direction (ADDR or ADDR/PREFIX).
    #[arg(
        long = "orig-src",
        visible_alias = "src",
        short = 's',
        value_name = "ADDR"
    )]
    orig_src: Option<String>,
    /// Destination address of the original direction.
    #[arg(
        long = "orig-dst",
        visible_alias = "dst",
        short = 'd',
        value_name = "ADDR"
    )]
    orig_dst: Option<String>,
    /// Source address of the reply direction.
    #[arg(long = "reply-src", short = 'r', value_name = "ADDR")]
    reply_src: Option<String>,
    /// Destination address of the reply direction (conntrack's -q).
    #[arg(long = "reply-dst", value_name = "ADDR")]
    reply_dst: Option<String>,
    /// Source port of the original direction.
    #[arg(long = "sport", visible_alias = "orig-port-src", value_name = "PORT")]
    sport: Option<String>,
    /// Destination port of the original direction.
    #[arg(long = "dport", visible_alias = "orig-port-dst", value_name = "PORT")]
    dport: Option<String>,
    /// Source port of the reply direction.
    #[arg(long = "reply-port-src", value_name = "PORT")]
    reply_port_src: Option<String>,
    /// Destination port of the reply direction.
    #[arg(long = "reply-port-dst", value_name = "PORT")]
    reply_port_dst: Option<String>,
    /// TCP state (with -p tcp): SYN_SENT, ESTABLISHED, TIME_WAIT, ...
    #[arg(long = "state", value_name = "STATE")]
    state: Option<String>,
    /// Status flags that must all be set, comma-separated: ASSURED,SEEN_REPLY,...
    #[arg(long = "status", short = 'u', value_name = "FLAGS")]
    status: Option<String>,
    /// Connection mark, MARK or MARK/MASK.
    #[arg(long = "mark", short = 'm', value_name = "MARK[/MASK]")]
    mark: Option<String>,
    /// Conntrack zone.
    #[arg(long = "zone", short = 'w', value_name = "ZONE")]
    zone: Option<String>,
}

impl FilterArgs {
    /// The filter these options describe, checked as conntrack-tools checks it.
    pub fn filter(&self) -> Result<Filter> {
        let filter = Filter {
            family: self.family.as_deref().map(parse_family).transpose()?,
            proto: self.proto.as_deref().map(parse_proto).transpose()?,
            orig_src: self
                .orig_src
                .as_deref()
                .map(|v| parse_addr("-s", v))
                .transpose()?,
            orig_dst: self
                .orig_dst
                .as_deref()
                .map(|v| parse_addr("-d", v))
                .transpose()?,
            reply_src: (self.reply_src.as_deref())
                .map(|v| parse_addr("--reply-src", v))
                .transpose()?,
            reply_dst: (self.reply_dst.as_deref())
                .map(|v| parse_addr("--reply-dst", v))
                .transpose()?,
            orig_sport: self
                .sport
                .as_deref()
                .map(|v| parse_port("--sport", v))
                .transpose()?,
            orig_dport: self
                .dport
                .as_deref()
                .map(|v| parse_port("--dport", v))
                .transpose()?,
            reply_sport: (self.reply_port_src.as_deref())
                .map(|v| parse_port("--reply-port-src", v))
                .transpose()?,
            reply_dport: (self.reply_port_dst.as_deref())
                .map(|v| parse_port("--reply-port-dst", v))
                .transpose()?,
            tcp_state: self.state.as_deref().map(parse_state).transpose()?,
            status: self.status.as_deref().map(parse_status).transpose()?,
            mark: self.mark.as_deref().map(parse_mark).transpose()?,
            zone: self.zone.as_deref().map(parse_zone).transpose()?,
            events: None,
        };
        filter.validate()?;
        Ok(filter)
    }
}

/// `-e`: which event kinds to watch (conntrack -E -e).
pub fn event_mask(value: Option<&str>) -> Result<Option<Vec<ctwasm_core::MessageKind>>> {
    Ok(value.map(parse_event_mask).transpose()?)
}
