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
    /// The events to watch, as `conntrack -E TABLE`: conntrack or expect.
    #[arg(value_enum, default_value = "conntrack")]
    table: Table,
    /// Output format of the events.
    #[arg(long, value_enum, default_value = "conntrack")]
    format: FormatArg,
    /// `conntrack -o` options for the conntrack format: xml, extended, id, timestamp,
    /// ktimestamp. `timestamp` is the kernel's event time (CTA_TIMESTAMP_EVENT, Linux 6.14+
    /// with nf_conntrack_timestamp=1) where conntrack prints the time it read the event;
    /// without it, the receive time, as conntrack.
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
    /// Print only the events these filters select (and export only the finished flows they
    /// select; -e does not apply to the export).
    #[command(flatten)]
    filter: crate::filter_args::FilterArgs,
    #[command(flatten)]
    ipfix: crate::ipfix_args::IpfixArgs,
    #[command(flatten)]
    metrics: crate::metrics_args::MetricsArgs,
    /// No summary on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// Which of the kernel's tables a command reads (`conntrack -L TABLE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Table {
    /// The connection table.
    Conntrack,
    /// The expectation table (what helpers such as FTP's wait for).
    Expect,
    /// The dying list (entries whose DESTROY waits for a reliable listener).
    Dying,
}

/// How the commands that print table entries print them, and where they look.
#[derive(clap::Args, Debug)]
pub struct EntryArgs {
    /// Output format of the entries (JSON lines have `"type": null`).
    #[arg(long, value_enum, default_value = "conntrack")]
    format: FormatArg,
    /// `conntrack -o` options for the conntrack format: xml, extended, id, timestamp,
    /// ktimestamp (timestamp prints no column for entries, as conntrack -L).
    #[arg(long, short = 'o', default_value = "")]
    output: String,
    /// Inside this network namespace (/run/netns/NAME).
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
}

/// `ctwasm list`: the kernel's table (or dying list), as `conntrack -L` prints it.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// The table to list, as `conntrack -L TABLE`.
    #[arg(value_enum, default_value = "conntrack")]
    table: Table,
    /// List the dying list (entries whose DESTROY waits for a reliable listener).
    #[arg(long)]
    dying: bool,
    #[command(flatten)]
    entry: EntryArgs,
    #[command(flatten)]
    filter: crate::filter_args::FilterArgs,
}

/// `ctwasm get`: one entry of the kernel's table by its original tuple, as `conntrack -G`
/// prints it.
#[derive(clap::Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    entry: EntryArgs,
    /// The original tuple: -s and -d (whole addresses), -p, and --sport/--dport for port
    /// protocols; -w for a zone other than 0.
    #[command(flatten)]
    tuple: crate::filter_args::FilterArgs,
}

/// `ctwasm delete`: delete every entry the filter selects (all of them without one), printing
/// each as `conntrack -D` does.
#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    entry: EntryArgs,
    #[command(flatten)]
    filter: crate::filter_args::FilterArgs,
}

/// `ctwasm update`: change the mark (`-m MARK[/MASK]`) or set status bits (`-u`) of every
/// entry the other options select, as `conntrack -U` does; each changed entry is printed as
/// the kernel has it afterwards.
#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    #[command(flatten)]
    entry: EntryArgs,
    /// Which entries (every option but -m and -u), and the change: `-m MARK[/MASK]` makes the
    /// mark `(mark & ~MASK) ^ MARK`; `-u ASSURED,SEEN_REPLY` sets those bits.
    #[command(flatten)]
    filter: crate::filter_args::FilterArgs,
}

/// `ctwasm count`: the number of entries in the kernel's table, as `conntrack -C` prints it.
#[derive(clap::Args, Debug)]
pub struct CountArgs {
    /// Inside this network namespace (/run/netns/NAME).
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
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
pub use linux::{
    run_count, run_delete, run_flush, run_get, run_list, run_stats, run_update, run_watch,
};

#[cfg(not(target_os = "linux"))]
pub use elsewhere::{
    run_count, run_delete, run_flush, run_get, run_list, run_stats, run_update, run_watch,
};

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

    use anyhow::{Context, bail};
    use ctwasm_core::netlink::NlHeader;
    use ctwasm_core::netlink::consts::{IPCTNL_MSG_CT_GET, NFNL_SUBSYS_CTNETLINK, nfnl_msg_type};
    use ctwasm_core::{MessageKind, Tuple};
    use ctwasm_host::output::{ConntrackOptions, Format, expect, xml};
    use ctwasm_live::ctnetlink::{
        Conntrack, EntryChange, EventSocket, ExpectSocket, Groups, KernelMessage, Received,
        SubscribeOptions, cpu_stat_name,
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
        if args.table == Table::Expect {
            if args.ipfix.is_set() || args.reliable || args.resync {
                bail!(
                    "--ipfix, --reliable and --resync apply to the conntrack table, not to expect"
                );
            }
            let options = expect_options(args.format, &args.output, &args.filter)?;
            return run_watch_expect(&args, options);
        }
        let format = crate::output_format(args.format, &args.output)?;
        let filter = args.filter.filter()?;
        let mask = crate::filter_args::event_mask(args.event_mask.as_deref())?;
        let wanted = |kind| mask.as_ref().is_none_or(|kinds| kinds.contains(&kind));
        // An export needs the DESTROYs (and NEWs, for flows without kernel start times),
        // whatever is printed.
        let exporting = args.ipfix.is_set();
        let groups = Groups {
            new: wanted(MessageKind::New) || exporting,
            update: wanted(MessageKind::Update),
            destroy: wanted(MessageKind::Destroy) || exporting,
        };
        let mut export = args.ipfix.start()?;
        let metrics = args.metrics.start()?;
        // The kernel's table figures for the metrics, read at most once a second.
        let mut kernel = match &metrics {
            Some(_) => Some(KernelFigures::open(args.netns.as_deref())?),
            None => None,
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
        let mut flows = Flows::new(BufWriter::new(std::io::stdout().lock()), format, true);
        let mut resyncs = 0u64;
        let mut printed = 0u64;
        let result = (|| -> Result<()> {
            loop {
                let Some(left) = remaining(args.count, printed, deadline) else {
                    return Ok(());
                };
                if let Some(m) = &metrics {
                    let kernel = kernel.as_mut().expect("opened with the metrics");
                    m.publish(watch_snapshot(&socket, kernel, resyncs, printed, &export));
                }
                // With metrics, wake at least once a second to refresh them.
                let wait = match &metrics {
                    Some(_) => {
                        Some(left.map_or(Duration::from_secs(1), |l| l.min(Duration::from_secs(1))))
                    }
                    None => left,
                };
                match socket.recv(wait)? {
                    Received::Messages(messages) => {
                        for m in messages.iter().filter(|m| filter.matches(&m.message)) {
                            if let Some(export) = export.as_mut() {
                                export.observe(&m.message, m.ts_ns());
                            }
                            if m.kind().is_some_and(|k| !wanted(k)) {
                                continue;
                            }
                            if args.count.is_some_and(|n| printed >= n) {
                                break;
                            }
                            flows.write(m)?;
                            printed += 1;
                        }
                        flows.out.flush()?;
                    }
                    Received::Overrun if args.resync => {
                        resyncs += 1;
                        for m in socket
                            .resync()?
                            .iter()
                            .filter(|m| filter.matches(&m.message))
                        {
                            flows.write(&as_entry(m))?;
                        }
                        flows.out.flush()?;
                    }
                    Received::Overrun => {}
                    Received::TimedOut => {}
                    Received::Interrupted => return Ok(()),
                }
            }
        })();
        let _ = flows.finish(true);
        drop(flows);
        if let Some(export) = export {
            export.finish(args.quiet);
        }
        if let Some(metrics) = metrics {
            metrics.finish();
        }
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

    /// The kernel's table figures, read through a request socket of their own.
    struct KernelFigures {
        ct: Conntrack,
        read_at: Option<Instant>,
        last: ctwasm_host::metrics::Snapshot,
    }

    impl KernelFigures {
        fn open(netns: Option<&str>) -> Result<KernelFigures> {
            Ok(KernelFigures {
                ct: Conntrack::open(netns).context("a request socket for the metrics")?,
                read_at: None,
                last: Default::default(),
            })
        }

        /// Entries, the maximum, the dying list, and the per-CPU counters summed; read again
        /// when a second has passed. A read that fails leaves the last figures.
        fn snapshot(&mut self) -> &ctwasm_host::metrics::Snapshot {
            use ctwasm_host::metrics::{Kind, Snapshot};
            if self
                .read_at
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            {
                return &self.last;
            }
            self.read_at = Some(Instant::now());
            let (Ok(global), Ok(dying), Ok(cpus)) = (
                self.ct.stats_global(),
                self.ct.dump_dying(),
                self.ct.stats_cpu(),
            ) else {
                return &self.last;
            };
            let mut s = Snapshot::default();
            s.push(
                "kernel_entries",
                "Entries in the kernel's table (nf_conntrack_count).",
                Kind::Gauge,
                u64::from(global.entries),
            );
            s.push(
                "kernel_max_entries",
                "nf_conntrack_max.",
                Kind::Gauge,
                u64::from(global.max_entries),
            );
            s.push(
                "kernel_dying",
                "Entries on the kernel's dying list (DESTROY not yet delivered).",
                Kind::Gauge,
                dying.len() as u64,
            );
            let mut sums: Vec<(&'static str, u64)> = Vec::new();
            for cpu in &cpus {
                for &(kind, value) in &cpu.counters {
                    if let Some(name) = cpu_stat_name(kind) {
                        match sums.iter_mut().find(|(n, _)| *n == name) {
                            Some((_, sum)) => *sum += u64::from(value),
                            None => sums.push((name, u64::from(value))),
                        }
                    }
                }
            }
            for (name, sum) in sums {
                s.push(
                    &format!("kernel_{name}"),
                    "A conntrack -S counter, summed over CPUs.",
                    Kind::Counter,
                    sum,
                );
            }
            self.last = s;
            &self.last
        }
    }

    /// What `watch --metrics` serves: the socket's counts, the kernel's table, the export's.
    fn watch_snapshot(
        socket: &EventSocket,
        kernel: &mut KernelFigures,
        resyncs: u64,
        printed: u64,
        export: &Option<crate::ipfix_args::FlowExport>,
    ) -> ctwasm_host::metrics::Snapshot {
        use ctwasm_host::metrics::Kind;
        let c = socket.counts();
        let mut s = kernel.snapshot().clone();
        s.push_labelled(
            "watch_event_messages",
            "Event messages read from the kernel, by type.",
            Kind::Counter,
            "type",
            [("new", c.new), ("update", c.update), ("destroy", c.destroy)]
                .map(|(t, n)| (t.to_string(), n)),
        );
        s.push(
            "watch_enobufs",
            "Overruns (ENOBUFS) reported on the event socket.",
            Kind::Counter,
            c.enobufs,
        );
        s.push(
            "watch_decode_errors",
            "Datagrams or messages that did not decode.",
            Kind::Counter,
            c.decode_errors,
        );
        s.push(
            "watch_resyncs",
            "Table dumps after an overrun (--resync).",
            Kind::Counter,
            resyncs,
        );
        s.push(
            "watch_printed",
            "Event messages printed (after filters and -e).",
            Kind::Counter,
            printed,
        );
        if let Ok(drops) = socket.kernel_drops() {
            s.push(
                "watch_socket_drops",
                "Messages the kernel dropped at the event socket (sk_drops).",
                Kind::Counter,
                u64::from(drops),
            );
        }
        if let Some(export) = export {
            export.push_metrics(&mut s);
        }
        s
    }

    /// The output options for expectations: text or XML only (the JSON lines describe
    /// connections), and no filters (conntrack-tools' apply to connections).
    fn expect_options(
        format: FormatArg,
        output: &str,
        filter: &crate::filter_args::FilterArgs,
    ) -> Result<ConntrackOptions> {
        if format != FormatArg::Conntrack {
            bail!(
                "expectations print as conntrack text or -o xml; --format json is for connections"
            );
        }
        if !filter.filter()?.is_empty() {
            bail!("the filters select connections; expectations are listed and watched whole");
        }
        ConntrackOptions::parse(output)
    }

    fn run_list_expect(netns: Option<&str>, options: ConntrackOptions) -> Result<()> {
        let entries = Conntrack::open(netns)?.dump_expect()?;
        let mut out = BufWriter::new(std::io::stdout().lock());
        let all = (|| -> std::io::Result<()> {
            if options.xml && !entries.is_empty() {
                writeln!(out, "{}", expect::XML_PROLOGUE)?;
            }
            for e in &entries {
                let line = expect::format_expect(&e.message, None, e.received_ns, options);
                writeln!(out, "{line}")?;
            }
            if options.xml && !entries.is_empty() {
                writeln!(out, "{}", expect::XML_EPILOGUE)?;
            }
            out.flush()
        })();
        if !written(all)? {
            return Ok(());
        }
        eprintln!("ctwasm: {} expectations have been shown.", entries.len());
        Ok(())
    }

    fn run_watch_expect(args: &WatchArgs, options: ConntrackOptions) -> Result<()> {
        let mask = crate::filter_args::event_mask(args.event_mask.as_deref())?;
        let wanted = |kind| mask.as_ref().is_none_or(|kinds| kinds.contains(&kind));
        let groups = Groups {
            new: wanted(MessageKind::New),
            update: wanted(MessageKind::Update),
            destroy: wanted(MessageKind::Destroy),
        };
        let mut socket = ExpectSocket::subscribe(args.netns.as_deref(), groups)
            .context("subscribing to expectation events")?;
        socket.stop_when(stop_on_signals()?);
        let deadline = args
            .duration
            .map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
        let mut out = BufWriter::new(std::io::stdout().lock());
        let mut printed = 0u64;
        let mut opened = false;
        let result = (|| -> Result<()> {
            loop {
                let Some(left) = remaining(args.count, printed, deadline) else {
                    return Ok(());
                };
                let Some(events) = socket.recv(left)? else {
                    return Ok(());
                };
                for e in &events {
                    if args.count.is_some_and(|n| printed >= n) {
                        break;
                    }
                    if options.xml && !opened {
                        writeln!(out, "{}", expect::XML_PROLOGUE)?;
                        opened = true;
                    }
                    let kind = e.message.kind();
                    let line = expect::format_expect(&e.message, kind, e.received_ns, options);
                    writeln!(out, "{line}")?;
                    printed += 1;
                }
                out.flush()?;
            }
        })();
        if opened {
            let _ = writeln!(out, "{}", expect::XML_EPILOGUE);
        }
        let _ = out.flush();
        drop(out);
        if let Err(e) = &result
            && e.downcast_ref::<std::io::Error>()
                .is_some_and(ended_by_reader)
        {
            return Ok(());
        }
        if !args.quiet {
            eprintln!(
                "ctwasm watch: {printed} expectation events, ENOBUFS={} skipped={}",
                socket.enobufs, socket.skipped
            );
        }
        result
    }

    /// Prints entries or events in one format, writing the XML document's prologue before the
    /// first flow where conntrack-tools writes it (`-L`, `-E`, `-G`, `-U`; `-D` writes bare
    /// flows) and its epilogue on [`Flows::finish`].
    struct Flows<W: Write> {
        out: W,
        format: Format,
        prologue: bool,
        opened: bool,
    }

    impl<W: Write> Flows<W> {
        fn new(out: W, format: Format, prologue: bool) -> Flows<W> {
            Flows {
                out,
                format,
                prologue,
                opened: false,
            }
        }

        fn write(&mut self, m: &KernelMessage) -> std::io::Result<()> {
            if self.format.is_xml() && self.prologue && !self.opened {
                writeln!(self.out, "{}", xml::PROLOGUE)?;
                self.opened = true;
            }
            writeln!(self.out, "{}", line(m, self.format))
        }

        /// Flushes, closing the document if one was opened and `epilogue` is asked for.
        fn finish(&mut self, epilogue: bool) -> std::io::Result<()> {
            if epilogue && self.opened {
                writeln!(self.out, "{}", xml::EPILOGUE)?;
                self.opened = false;
            }
            self.out.flush()
        }
    }

    impl EntryArgs {
        /// The format, without `-o timestamp`'s receive-time prefix: `conntrack -L` (and -G,
        /// -D, -U) take the option and print no such column for table entries.
        fn format(&self) -> Result<Format> {
            Ok(match crate::output_format(self.format, &self.output)? {
                Format::Conntrack(mut options) => {
                    options.timestamp = false;
                    Format::Conntrack(options)
                }
                other => other,
            })
        }
    }

    /// What is left of a watch bounded by `--count` and `--duration`: `None` once either is
    /// spent, else the time left (`None` inside when there is no deadline).
    fn remaining(
        count: Option<u64>,
        printed: u64,
        deadline: Option<Instant>,
    ) -> Option<Option<Duration>> {
        if count.is_some_and(|n| printed >= n) {
            return None;
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        (left != Some(Duration::ZERO)).then_some(left)
    }

    /// `Ok(true)` when written, `Ok(false)` when the reader went away (`| head`: the command
    /// ends quietly), an error otherwise.
    fn written(r: std::io::Result<()>) -> Result<bool> {
        match r {
            Ok(()) => Ok(true),
            Err(e) if ended_by_reader(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Ends a command that wrote nothing to act on with status 1, as conntrack-tools does, after
    /// its `N flow entries have been ...` line.
    fn report(count: usize, what: &str) -> Result<()> {
        eprintln!("ctwasm: {count} flow entries have been {what}.");
        if count == 0 {
            std::process::exit(1);
        }
        Ok(())
    }

    /// The original tuple and zone of a table entry, to name it in a request.
    fn key(m: &KernelMessage) -> Result<Tuple> {
        m.message
            .orig()
            .context("the kernel sent an entry without its original tuple")
    }

    pub fn run_list(args: ListArgs) -> Result<()> {
        if args.table == Table::Expect {
            let options = expect_options(args.entry.format, &args.entry.output, &args.filter)?;
            return run_list_expect(args.entry.netns.as_deref(), options);
        }
        let format = args.entry.format()?;
        let filter = args.filter.filter()?;
        let mut ct = Conntrack::open(args.entry.netns.as_deref())?;
        let entries = if args.dying || args.table == Table::Dying {
            let mut dying = ct.dump_dying()?;
            dying.retain(|m| filter.matches(&m.message));
            dying
        } else {
            ct.dump_matching(&filter)?
        };
        let mut flows = Flows::new(BufWriter::new(std::io::stdout().lock()), format, true);
        let all = (|| -> std::io::Result<()> {
            for m in &entries {
                flows.write(&as_entry(m))?;
            }
            flows.finish(true)
        })();
        if !written(all)? {
            return Ok(());
        }
        eprintln!("ctwasm: {} flow entries have been shown.", entries.len());
        Ok(())
    }

    pub fn run_get(args: GetArgs) -> Result<()> {
        let format = args.entry.format()?;
        let (tuple, zone) = args.tuple.filter()?.exact_orig()?;
        let mut ct = Conntrack::open(args.entry.netns.as_deref())?;
        let Some(entry) = ct.get(&tuple, zone)? else {
            bail!(
                "no such conntrack entry: {} zone {zone}",
                ctwasm_host::output::tuple_text(&tuple)
            );
        };
        let mut flows = Flows::new(std::io::stdout().lock(), format, true);
        let shown = flows
            .write(&as_entry(&entry))
            .and_then(|()| flows.finish(false));
        if !written(shown)? {
            return Ok(());
        }
        report(1, "shown")
    }

    pub fn run_delete(args: DeleteArgs) -> Result<()> {
        let format = args.entry.format()?;
        let filter = args.filter.filter()?;
        let mut ct = Conntrack::open(args.entry.netns.as_deref())?;
        let mut flows = Flows::new(BufWriter::new(std::io::stdout().lock()), format, false);
        let mut deleted = 0;
        for m in &ct.dump_matching(&filter)? {
            // By tuple and id, so an entry that ended and came back meanwhile is left alone;
            // one that is already gone is not counted.
            if ct.delete(&key(m)?, m.message.zone(), m.message.id())? {
                deleted += 1;
                if !written(flows.write(&as_entry(m)))? {
                    return Ok(());
                }
            }
        }
        if !written(flows.finish(false))? {
            return Ok(());
        }
        report(deleted, "deleted")
    }

    pub fn run_update(args: UpdateArgs) -> Result<()> {
        let format = args.entry.format()?;
        let (filter, change) = args.filter.filter()?.split_change()?;
        let change = change.context("nothing to change: give -m MARK[/MASK] or -u FLAGS")?;
        let mut ct = Conntrack::open(args.entry.netns.as_deref())?;
        let mut flows = Flows::new(BufWriter::new(std::io::stdout().lock()), format, true);
        let mut updated = 0;
        for m in &ct.dump_matching(&filter)? {
            let (tuple, zone) = (key(m)?, m.message.zone());
            let mark = m.message.mark().unwrap_or(0);
            let status = m.message.status().unwrap_or_default();
            let wanted = EntryChange {
                mark: change.mark.map(|_| change.mark_of(mark)),
                status: change.status.map(|_| change.status_of(status).0),
            };
            // Entries that already are as asked are left alone, as conntrack -U leaves them.
            if wanted.mark.is_none_or(|m| m == mark) && wanted.status.is_none_or(|s| s == status.0)
            {
                continue;
            }
            if !ct.update(&tuple, zone, m.message.id(), wanted)? {
                continue;
            }
            // What the kernel has now; an entry that ended meanwhile is not counted.
            let Some(now) = ct.get(&tuple, zone)? else {
                continue;
            };
            updated += 1;
            if !written(flows.write(&as_entry(&now)))? {
                return Ok(());
            }
        }
        if !written(flows.finish(false))? {
            return Ok(());
        }
        report(updated, "updated")
    }

    pub fn run_count(args: CountArgs) -> Result<()> {
        let entries = Conntrack::open(args.netns.as_deref())?
            .stats_global()?
            .entries;
        match writeln!(std::io::stdout(), "{entries}") {
            Err(e) if ended_by_reader(&e) => Ok(()),
            r => Ok(r?),
        }
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
    pub fn run_get(_: GetArgs) -> Result<()> {
        unsupported()
    }
    pub fn run_delete(_: DeleteArgs) -> Result<()> {
        unsupported()
    }
    pub fn run_update(_: UpdateArgs) -> Result<()> {
        unsupported()
    }
    pub fn run_count(_: CountArgs) -> Result<()> {
        unsupported()
    }
}
