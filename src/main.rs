//! `ctwasm`: Linux connection tracking as a WebAssembly component, from the command line.
//!
//! `replay` feeds a capture through the engine (natively or as the component) and prints the
//! events a listener would read, as `conntrack -E` or as JSON lines; a summary with the kernel's
//! statistics goes to stderr. `component` and `wit` hand out the component this binary embeds
//! and the WIT package it implements.

#![forbid(unsafe_code)]

use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ctwasm_core::{RetryPolicy, Verdict};
use ctwasm_host::backend::{BackendKind, TrackerSettings, open_backend};
use ctwasm_host::capture::CaptureReader;
use ctwasm_host::listener::{ListenerConfig, Listeners};
use ctwasm_host::output::{self, ConntrackOptions};
use ctwasm_host::replay::{ArrivingChecksums, ReplayOptions, ReplayReport, replay};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

mod artifacts_cmd;
mod export_args;
mod filter_args;
mod ipfix_args;
mod kernel_cmd;
mod listen_cmd;
mod metrics_args;
#[cfg(target_os = "linux")]
mod proxy_cmd;
#[cfg(target_os = "linux")]
mod proxy_routes;
mod shadow_cmd;
#[cfg(target_os = "linux")]
mod signals;
mod stress_cmd;
mod values;

#[derive(Parser, Debug)]
#[command(
    name = "ctwasm",
    version,
    about = "Linux netfilter connection tracking as a WebAssembly component"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Replay a pcap or pcapng capture through the tracker and print its events.
    Replay(ReplayArgs),
    /// The seed's stress test, simulated: short connections, a tiny reliable buffer, a flush.
    Stress(stress_cmd::StressArgs),
    /// Print the kernel's conntrack events (conntrack -E), with ENOBUFS and drop counts.
    Watch(kernel_cmd::WatchArgs),
    /// List the kernel's conntrack table or dying list (conntrack -L).
    List(kernel_cmd::ListArgs),
    /// Print the kernel's conntrack statistics (conntrack -S).
    Stats(kernel_cmd::StatsArgs),
    /// Empty the kernel's conntrack table (conntrack -F).
    Flush(kernel_cmd::FlushArgs),
    /// Print one entry of the kernel's table by its original tuple (conntrack -G).
    Get(kernel_cmd::GetArgs),
    /// Delete the kernel's entries a filter selects (conntrack -D).
    Delete(kernel_cmd::DeleteArgs),
    /// Change the mark or status of the kernel's entries a filter selects (conntrack -U).
    Update(kernel_cmd::UpdateArgs),
    /// Print the number of entries in the kernel's table (conntrack -C).
    Count(kernel_cmd::CountArgs),
    /// A TCP proxy that tracks the connections it carries in the sandboxed tracker, with
    /// per-source and per-zone connection limits.
    #[cfg(target_os = "linux")]
    Proxy(proxy_cmd::ProxyArgs),
    /// Read a socket listener's event messages from its Unix socket at a chosen pace; print them.
    Listen(listen_cmd::ListenArgs),
    /// Run the engine beside the kernel on a namespace's live packets; report, flow by flow,
    /// whether their events agree. Exit status: 0 when every flow agreed, 2 when some diverged,
    /// 1 on an error.
    Shadow(shadow_cmd::ShadowArgs),
    /// Write the WebAssembly component this binary embeds (the one `--backend component` runs).
    Component(artifacts_cmd::ComponentArgs),
    /// Print the WIT package the component implements.
    Wit(artifacts_cmd::WitArgs),
}

/// `--format`; with `-o` it becomes an [`output::Format`] ([`output_format`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FormatArg {
    /// The lines conntrack-tools prints: `conntrack -E` for events, `conntrack -L` for
    /// entries.
    Conntrack,
    /// One JSON object a line: an event message, or an entry.
    Json,
}

/// The printed form of `--format` with the `-o` list (which only the conntrack text uses).
fn output_format(format: FormatArg, options: &str) -> Result<output::Format> {
    let options = ConntrackOptions::parse(options)?;
    Ok(match format {
        FormatArg::Conntrack => output::Format::Conntrack(options),
        FormatArg::Json => output::Format::Json,
    })
}

/// `--retry-policy` / `--policy`: the names `RetryPolicy::name` gives, listed in `--help`.
pub(crate) fn retry_policy_parser() -> impl clap::builder::TypedValueParser<Value = RetryPolicy> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["grace", "kernel", "on-drain"])
        .try_map(|s| s.parse::<RetryPolicy>())
}

#[derive(clap::Args, Debug)]
struct ReplayArgs {
    /// The capture (pcap or pcapng; Ethernet, Linux cooked v1/v2, raw IP or loopback).
    capture: PathBuf,
    /// Output format of the events.
    #[arg(long, value_enum, default_value = "conntrack")]
    format: FormatArg,
    /// `conntrack -o` options for the conntrack format: xml, extended, id, timestamp,
    /// ktimestamp.
    #[arg(long, short = 'o', default_value = "")]
    output: String,
    /// A kernel sysctl, e.g. net.netfilter.nf_conntrack_tcp_timeout_time_wait=3 (repeatable).
    #[arg(long = "sysctl", value_name = "NAME=VALUE")]
    sysctls: Vec<String>,
    /// A simulated netlink listener, e.g. rcvbuf=2048,reliable,drain=100/s (repeatable; the
    /// first one's reads are printed). Default: one lossless listener.
    #[arg(long = "listener", value_name = "SPEC")]
    listeners: Vec<String>,
    /// Flush the table (conntrack -F) after the last packet.
    #[arg(long)]
    flush_at_end: bool,
    /// After the last packet, let simulated time run until every entry has timed out (up to
    /// six days, past the longest default timeout). Without it, time runs on for one hour after
    /// the last packet, so this matters only for timeouts longer than that.
    #[arg(long)]
    expire_at_end: bool,
    /// Seed of the tracker's random choices (ids, grace delays).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Event kinds to print, comma-separated: NEW, UPDATE, DESTROY or ALL (conntrack -e). The
    /// listeners still read every event; only the printing is selected.
    #[arg(long = "event-mask", short = 'e', value_name = "KINDS")]
    event_mask: Option<String>,
    /// Print only the events these conntrack-tools filters select (and export only the
    /// finished flows they select; -e does not apply to the export).
    #[command(flatten)]
    filter: filter_args::FilterArgs,
    #[command(flatten)]
    ipfix: ipfix_args::IpfixArgs,
    #[command(flatten)]
    export: export_args::ExportArgs,
    /// Packets per ingest call.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// The capture was taken where arriving packets' checksums are vouched for by the device
    /// (a veth or bridge carrying packets a local stack sent, its checksums unfinished in the
    /// capture): the kernel does not verify them, so neither does the replay. Without it,
    /// packets the capture marks as arriving (Linux cooked headers, pcapng flags) are verified
    /// as conntrack verifies what arrives unverified (nf_conntrack_checksum).
    #[arg(long)]
    offloaded_checksums: bool,
    /// Run the engine natively or as the WebAssembly component under wasmtime.
    #[arg(long, value_parser = clap::value_parser!(BackendKind), default_value = "component")]
    backend: BackendKind,
    /// Use this component file instead of the embedded one.
    #[arg(long, value_name = "FILE.wasm")]
    component: Option<PathBuf>,
    /// How a DESTROY that failed is retried.
    #[arg(long, value_parser = retry_policy_parser(), default_value = "grace")]
    retry_policy: RetryPolicy,
    /// No summary on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay(args) => run_replay(args),
        Command::Stress(args) => stress_cmd::run(args),
        Command::Watch(args) => kernel_cmd::run_watch(args),
        Command::List(args) => kernel_cmd::run_list(args),
        Command::Stats(args) => kernel_cmd::run_stats(args),
        Command::Flush(args) => kernel_cmd::run_flush(args),
        Command::Get(args) => kernel_cmd::run_get(args),
        Command::Delete(args) => kernel_cmd::run_delete(args),
        Command::Update(args) => kernel_cmd::run_update(args),
        Command::Count(args) => kernel_cmd::run_count(args),
        #[cfg(target_os = "linux")]
        Command::Proxy(args) => proxy_cmd::run(args),
        Command::Listen(args) => listen_cmd::run(args),
        Command::Shadow(args) => shadow_cmd::run(args),
        Command::Component(args) => artifacts_cmd::run_component(args).map_err(Into::into),
        Command::Wit(args) => artifacts_cmd::run_wit(args).map_err(Into::into),
    };
    if let Err(e) = result {
        eprintln!("ctwasm: {e:#}");
        std::process::exit(1);
    }
}

/// Parses `--sysctl NAME=VALUE` settings.
fn parse_sysctls<S: AsRef<str>>(list: &[S]) -> Result<Vec<(String, String)>> {
    list.iter()
        .map(|s| {
            let s = s.as_ref();
            let (name, value) = s
                .split_once('=')
                .with_context(|| format!("--sysctl `{s}`: expected NAME=VALUE"))?;
            Ok((name.trim().to_string(), value.trim().to_string()))
        })
        .collect()
}

fn settings(sysctls: &[String], seed: u64, policy: RetryPolicy) -> Result<TrackerSettings> {
    Ok(TrackerSettings {
        sysctls: parse_sysctls(sysctls)?,
        seed,
        retry_policy: Some(policy),
        ..Default::default()
    })
}

fn run_replay(args: ReplayArgs) -> Result<()> {
    let format = output_format(args.format, &args.output)?;
    let export_filter = args.filter.filter()?;
    let mut filter = export_filter.clone();
    filter.events = filter_args::event_mask(args.event_mask.as_deref())?;
    let mut export = args.ipfix.start()?;
    let settings = settings(&args.sysctls, args.seed, args.retry_policy)?;
    let mut reader = CaptureReader::open(&args.capture)?;
    let file_len = std::fs::metadata(&args.capture).map_or(0, |m| m.len());
    let mut listeners: Vec<ListenerConfig> = args
        .listeners
        .iter()
        .map(|s| ListenerConfig::parse(s))
        .collect::<Result<_>>()?;
    let nats = args.export.start()?;
    let mut listeners = if !listeners.is_empty() {
        listeners[0].record = true;
        Listeners::new(listeners)
    } else if nats.is_some() {
        // The stream decides; stdout prints each event once, as the stream took it.
        Listeners::new([ListenerConfig::observer("stdout")])
    } else {
        Listeners::lossless()
    };
    let nats = nats.map(|(export, report)| {
        listeners.push_external(Box::new(export));
        report
    });
    let mut backend = open_backend(args.backend, &settings, args.component.as_deref())?;

    // Packets are counted as they are read: their number is known only at the file's end.
    let progress = if file_len >= 16 << 20 && std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} replay {pos} packets {per_sec} {elapsed}")
                .expect("a valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    // With `-o xml` the events are one document, as `conntrack -E -o xml` writes them.
    let mut xml_opened = false;
    let mut sink = |frame: &ctwasm_core::batch::EventFrame<'_>,
                    msg: &ctwasm_core::netlink::CtMessage|
     -> Result<()> {
        if let Some(export) = export.as_mut()
            && export_filter.matches(msg)
        {
            export.observe(msg, frame.ts_ns);
        }
        if !filter.matches(msg) {
            return Ok(());
        }
        if format.is_xml() && !xml_opened {
            writeln!(out, "{}", output::xml::PROLOGUE)?;
            xml_opened = true;
        }
        writeln!(out, "{}", format.line(frame, msg))?;
        Ok(())
    };
    let replay_options = ReplayOptions {
        batch: args.batch,
        arriving: if args.offloaded_checksums {
            ArrivingChecksums::Offloaded
        } else {
            ArrivingChecksums::Unverified
        },
        flush_at_end: args.flush_at_end,
        expire_at_end: args.expire_at_end,
    };
    // Packets are read as they are replayed; a broken record ends the reading, and what came
    // before it is replayed whole (as tcpdump and tshark read a file up to a cut).
    let mut broken = None;
    let packets = reader
        .by_ref()
        .map_while(|packet| packet.map_err(|e| broken = Some(e)).ok());
    let report = replay(
        backend.as_mut(),
        listeners,
        packets,
        &replay_options,
        &mut sink,
        |n| progress.inc(n),
    )?;
    progress.finish_and_clear();
    if xml_opened {
        writeln!(out, "{}", output::xml::EPILOGUE)?;
    }
    out.flush()?;
    if let Some(export) = export {
        export.finish(args.quiet);
    }
    if let Some(report) = &nats {
        eprintln!("ctwasm: {}", export_args::summary(report));
    }
    if !args.quiet {
        print_summary(
            &args.capture,
            backend.name(),
            reader.skipped_total(),
            &report,
        );
    }
    if let Some(e) = broken {
        let what = if e.truncated {
            "the file is cut short"
        } else {
            "the file is broken"
        };
        bail!(
            "{}: {e}: {what}; the {} whole packets before it were replayed",
            args.capture.display(),
            report.packets
        );
    }
    Ok(())
}

/// The delivery figures the kernel's statistics lack (see `ctwasm_core::Stats`).
fn is_delivery_figure(name: &str) -> bool {
    matches!(
        name,
        "destroy_retries" | "missed_pending" | "dying" | "dying_peak"
    )
}

fn print_summary(path: &std::path::Path, backend: &str, skipped: u64, r: &ReplayReport) {
    let s = &r.stats;
    let mut e = std::io::stderr().lock();
    let _ = writeln!(
        e,
        "ctwasm: {}: {} packets ({} frames skipped) through the {backend} engine, {:.3} s simulated",
        path.display(),
        r.packets,
        skipped,
        r.sim_ns as f64 / 1e9
    );
    let verdicts: Vec<String> = (0u8..8)
        .filter_map(|v| Verdict::from_u8(v).map(|verdict| (verdict, r.verdicts[v as usize])))
        .filter(|(_, n)| *n > 0)
        .map(|(v, n)| format!("{}={n}", v.name()))
        .collect();
    let _ = writeln!(e, "  verdicts: {}", verdicts.join(" "));
    // The kernel's counters on one line, the event-delivery figures on the next, each field
    // named as the stats record names it.
    let (kernel, events): (Vec<_>, Vec<_>) = s
        .fields()
        .map(|(name, value)| (name, format!("{name}={value}")))
        .partition(|(name, _)| !name.starts_with("events_") && !is_delivery_figure(name));
    let line = |fields: Vec<(&str, String)>| {
        fields
            .into_iter()
            .map(|(_, text)| text)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(e, "  conntrack: {}", line(kernel));
    let _ = writeln!(e, "  events: {}", line(events));
    for (i, (name, l)) in r.listeners.iter().enumerate() {
        // Unnamed listeners (the spec's default name) are told apart by their position.
        let name = if name == "listener" {
            format!("{}", i + 1)
        } else {
            name.clone()
        };
        let _ = writeln!(e, "  listener {name}: {l}");
    }
}
