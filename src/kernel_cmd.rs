//! `ctwasm watch`, `list`, `stats` and `flush`: the live kernel's conntrack through the host's
//! ctnetlink adapter, printed the way conntrack-tools prints it.
//!
//! These exist so an operator can put the kernel's events next to the engine's with one tool and
//! one output format (`replay` and `watch` print the same text and the same JSON lines), and so
//! the live tests can drive the kernel through the same adapter users run. They need Linux; on
//! other systems they say so and fail.

use std::io::Write;

use anyhow::Result;

use crate::FormatArg;

/// `ctwasm watch`: the kernel's conntrack events, as `conntrack -E` prints them.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// Output format of the events.
    #[arg(long, value_enum, default_value = "conntrack")]
    format: FormatArg,
    /// `conntrack -o` options for the conntrack format: extended, id, timestamp, ktimestamp.
    #[arg(long, short = 'o', default_value = "")]
    output: String,
    /// Reliable events (NETLINK_BROADCAST_ERROR): an event this socket cannot take is kept and
    /// redelivered by the kernel; a DESTROY is never lost.
    #[arg(long)]
    reliable: bool,
    /// NETLINK_NO_ENOBUFS: do not report overruns.
    #[arg(long)]
    no_enobufs: bool,
    /// Receive buffer to ask for with SO_RCVBUFFORCE (the kernel doubles it). Default:
    /// net.core.rmem_default.
    #[arg(long, value_name = "BYTES")]
    rcvbuf: Option<usize>,
    /// After an overrun (ENOBUFS), dump the table and print its entries as `list` does (in JSON
    /// with `"type": null`), as conntrackd resyncs.
    #[arg(long)]
    resync: bool,
    /// Watch inside this network namespace (/run/netns/NAME).
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = crate::values::seconds)]
    duration: Option<f64>,
    /// Stop after this many event messages.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Event kinds to watch, comma-separated: NEW, UPDATE, DESTROY or ALL (conntrack -e). The
    /// socket joins only their groups, so the kernel sends nothing else.
    #[arg(long = "event-mask", short = 'e', value_name = "KINDS")]
    event_mask: Option<String>,
    #[command(flatten)]
    filter: crate::filter_args::FilterArgs,
    /// No summary on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// `ctwasm list`: the kernel's table (or dying list), as `conntrack -L` prints it.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// List the dying list (entries whose DESTROY waits for a reliable listener).
    #[arg(long)]
    dying: bool,
    /// Output format of the entries (JSON lines have `"type": null`).
    #[arg(long, value_enum, default_value = "conntrack")]
    format: FormatArg,
    /// `conntrack -o` options for the conntrack format: extended, id, timestamp, ktimestamp.
    #[arg(long, short = 'o', default_value = "")]
    output: String,
    /// Inside this network namespace (/run/netns/NAME).
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    #[command(flatten)]
    filter: crate::filter_args::FilterArgs,
}

/// `ctwasm stats`: the kernel's per-CPU counters, as `conntrack -S` prints them.
#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Inside this network namespace (/run/netns/NAME).
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
}

/// `ctwasm flush`: empty the kernel's table, as `conntrack -F` does.
#[derive(clap::Args, Debug)]
pub struct FlushArgs {
    /// Inside this network namespace (/run/netns/NAME).
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
}

#[cfg(target_os = "linux")]
pub use linux::{run_flush, run_list, run_stats, run_watch};

#[cfg(not(target_os = "linux"))]
pub use elsewhere::{run_flush, run_list, run_stats, run_watch};

/// A write to stdout that failed because the reader went away (`| head`) ends the command
/// quietly; any other failure is an error.
fn ended_by_reader(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use std::io::BufWriter;
    use std::time::{Duration, Instant};

    use anyhow::Context;
    use ctwasm_core::MessageKind;
    use ctwasm_core::netlink::NlHeader;
    use ctwasm_core::netlink::consts::{IPCTNL_MSG_CT_GET, NFNL_SUBSYS_CTNETLINK, nfnl_msg_type};
    use ctwasm_host::output::Format;
    use ctwasm_live::ctnetlink::{
        Conntrack, EventSocket, Groups, KernelMessage, Received, SubscribeOptions, cpu_stat_name,
    };

    use crate::signals::stop_on_signals;

    /// A dump entry as `conntrack -L` shows it: no event prefix and no `[USERSPACE]` tag, which
    /// the formatter derives from the header (a dump reply is typed like an UPDATE and carries
    /// our port id), so the header is replaced by a plain GET one.
    fn as_entry(m: &KernelMessage) -> KernelMessage {
        let mut message = m.message.clone();
        message.header = NlHeader {
            msg_type: nfnl_msg_type(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET),
            ..NlHeader::default()
        };
        KernelMessage {
            bytes: message.to_vec(),
            message,
            received_ns: m.received_ns,
            progname: None,
        }
    }

    fn line(m: &KernelMessage, format: Format) -> String {
        format.line_with_progname(&m.frame(), &m.message, m.progname.as_deref())
    }

    pub fn run_watch(args: WatchArgs) -> Result<()> {
        let format = crate::output_format(args.format, &args.output)?;
        let filter = args.filter.filter()?;
        let groups = match crate::filter_args::event_mask(args.event_mask.as_deref())? {
            None => Groups::ALL,
            Some(kinds) => Groups {
                new: kinds.contains(&MessageKind::New),
                update: kinds.contains(&MessageKind::Update),
                destroy: kinds.contains(&MessageKind::Destroy),
            },
        };
        let stop = stop_on_signals()?;
        let mut socket = EventSocket::subscribe(&SubscribeOptions {
            groups,
            rcvbuf: args.rcvbuf,
            reliable: args.reliable,
            no_enobufs: args.no_enobufs,
            netns: args.netns.clone(),
        })
        .context("subscribing to conntrack events")?;
        socket.stop_when(stop);
        let deadline = args
            .duration
            .map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
        let started = Instant::now();
        let stdout = std::io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        let mut resyncs = 0u64;
        let mut printed = 0u64;
        let result = (|| -> Result<()> {
            loop {
                if args.count.is_some_and(|n| printed >= n) {
                    return Ok(());
                }
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                if left == Some(Duration::ZERO) {
                    return Ok(());
                }
                match socket.recv(left)? {
                    Received::Messages(messages) => {
                        for m in messages.iter().filter(|m| filter.matches(&m.message)) {
                            if args.count.is_some_and(|n| printed >= n) {
                                break;
                            }
                            writeln!(out, "{}", line(m, format))?;
                            printed += 1;
                        }
                        out.flush()?;
                    }
                    Received::Overrun if args.resync => {
                        resyncs += 1;
                        for m in socket
                            .resync()?
                            .iter()
                            .filter(|m| filter.matches(&m.message))
                        {
                            writeln!(out, "{}", line(&as_entry(m), format))?;
                        }
                        out.flush()?;
                    }
                    Received::Overrun => {}
                    Received::TimedOut => {}
                    Received::Interrupted => return Ok(()),
                }
            }
        })();
        let _ = out.flush();
        drop(out);
        if let Err(e) = &result
            && e.downcast_ref::<std::io::Error>()
                .is_some_and(ended_by_reader)
        {
            return Ok(());
        }
        if !args.quiet {
            let c = socket.counts();
            let drops = socket
                .kernel_drops()
                .map_or_else(|e| format!("unknown ({e})"), |d| d.to_string());
            eprintln!(
                "ctwasm watch: {} event messages in {:.3} s (new={} update={} destroy={}), \
                 ENOBUFS={} kernel drops={} resyncs={} decode errors={} foreign={}, \
                 rcvbuf={} bytes{}",
                c.messages(),
                started.elapsed().as_secs_f64(),
                c.new,
                c.update,
                c.destroy,
                c.enobufs,
                drops,
                resyncs,
                c.decode_errors,
                c.foreign,
                socket.effective_rcvbuf(),
                if args.reliable { ", reliable" } else { "" },
            );
        }
        result
    }

    pub fn run_list(args: ListArgs) -> Result<()> {
        let format = crate::output_format(args.format, &args.output)?;
        let filter = args.filter.filter()?;
        let mut ct = Conntrack::open(args.netns.as_deref())?;
        let mut entries = if args.dying {
            ct.dump_dying()?
        } else {
            ct.dump()?
        };
        entries.retain(|m| filter.matches(&m.message));
        let stdout = std::io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        let written = (|| -> std::io::Result<()> {
            for m in &entries {
                writeln!(out, "{}", line(&as_entry(m), format))?;
            }
            out.flush()
        })();
        match written {
            Err(e) if ended_by_reader(&e) => return Ok(()),
            r => r?,
        }
        eprintln!("ctwasm: {} flow entries have been shown.", entries.len());
        Ok(())
    }

    pub fn run_stats(args: StatsArgs) -> Result<()> {
        let mut ct = Conntrack::open(args.netns.as_deref())?;
        let cpus = ct.stats_cpu()?;
        let global = ct.stats_global()?;
        let dying = ct.dump_dying()?.len();
        let mut out = std::io::stdout().lock();
        for cpu in &cpus {
            let mut text = format!("cpu={:<4}\t", cpu.cpu);
            for &(kind, value) in &cpu.counters {
                if let Some(name) = cpu_stat_name(kind) {
                    text.push_str(&format!("{name}={value} "));
                }
            }
            if let Err(e) = writeln!(out, "{text}") {
                return if ended_by_reader(&e) {
                    Ok(())
                } else {
                    Err(e.into())
                };
            }
        }
        eprintln!(
            "ctwasm: entries={} dying={} max={}",
            global.entries, dying, global.max_entries
        );
        Ok(())
    }

    pub fn run_flush(args: FlushArgs) -> Result<()> {
        Conntrack::open(args.netns.as_deref())?.flush()?;
        eprintln!("ctwasm: connection tracking table has been emptied.");
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod elsewhere {
    use super::*;

    fn unsupported() -> Result<()> {
        anyhow::bail!("talking to the kernel's conntrack needs Linux (ctnetlink)")
    }
    pub fn run_watch(_: WatchArgs) -> Result<()> {
        unsupported()
    }
    pub fn run_list(_: ListArgs) -> Result<()> {
        unsupported()
    }
    pub fn run_stats(_: StatsArgs) -> Result<()> {
        unsupported()
    }
    pub fn run_flush(_: FlushArgs) -> Result<()> {
        unsupported()
    }
}
