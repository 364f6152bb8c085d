//! `ctwasm stress`: the seed's stress test on simulated time (see `ctwasm_host::stress`).
//!
//! Prints one summary, as text or as one JSON object, and optionally draws the run — dying
//! list, table count and DESTROYs delivered over simulated time — as an SVG.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use clap::ValueEnum;
use ctwasm_host::backend::{BackendKind, open_backend};
use ctwasm_host::listener::parse_rate;
use ctwasm_host::stress::{self, Progress, Sample, StressOptions, StressReport};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use ctwasm_core::RetryPolicy;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StressFormat {
    /// A few lines for people.
    Text,
    /// One JSON object: created, destroy_delivered, destroy_lost, duplicates, dying_peak,
    /// dying_final, max_seen, dropped_new, drain_ms.
    Json,
}

#[derive(clap::Args, Debug)]
pub struct StressArgs {
    /// Short UDP connections to create (one datagram each, distinct tuples).
    #[arg(long, default_value_t = 100_000)]
    flows: u64,
    /// New connections per simulated second.
    #[arg(long, value_name = "FLOWS_PER_S", default_value_t = 100_000.0,
          value_parser = crate::values::rate)]
    flow_rate: f64,
    /// The listener's effective receive buffer, bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 2048)]
    rcvbuf: usize,
    /// NETLINK_BROADCAST_ERROR on the listener (the default).
    #[arg(long, overrides_with = "no_reliable")]
    reliable: bool,
    /// A listener without NETLINK_BROADCAST_ERROR: it loses events and sees ENOBUFS.
    #[arg(long, overrides_with = "reliable")]
    no_reliable: bool,
    /// Messages the reader reads per simulated second (0 never reads; `unlimited`).
    #[arg(long, value_name = "MSGS_PER_S", default_value = "10000")]
    reader_rate: String,
    /// Share of offers to the listener that fail (fault injection, seeded by --seed).
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    faults: f64,
    /// How a DESTROY that failed is retried.
    #[arg(long, value_parser = crate::retry_policy_parser(), default_value = "grace")]
    policy: RetryPolicy,
    /// Seed of the tracker's and the fault generator's random choices.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// nf_conntrack_max (default: the kernel's 262144).
    #[arg(long, value_name = "N")]
    max: Option<u32>,
    /// A kernel sysctl, e.g. net.netfilter.nf_conntrack_events_retry_timeout=5 (repeatable).
    #[arg(long = "sysctl", value_name = "NAME=VALUE")]
    sysctls: Vec<String>,
    /// Packets per ingest call.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Give up this many simulated seconds after the flush.
    #[arg(long, value_name = "SECONDS", default_value_t = 36_000)]
    horizon: u64,
    /// Run the engine natively or as the WebAssembly component under wasmtime.
    #[arg(long, value_parser = clap::value_parser!(BackendKind), default_value = "component")]
    backend: BackendKind,
    /// Use this component file instead of the embedded one.
    #[arg(long, value_name = "FILE.wasm")]
    component: Option<PathBuf>,
    /// Output format of the summary.
    #[arg(long, value_enum, default_value = "text")]
    format: StressFormat,
    /// Draw the dying list, the table count and DESTROYs delivered over simulated time.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Also send every event to a real Unix datagram socket where `ctwasm listen PATH` reads:
    /// the kernel's socket buffer then decides which deliveries fail.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The socket listener's setup (buffer=BYTES, reliable, groups=..., pace=SPEED).
    #[arg(
        long,
        value_name = "SPEC",
        default_value = "buffer=2048,reliable,pace=1"
    )]
    socket_spec: String,
    #[command(flatten)]
    metrics: crate::metrics_args::MetricsArgs,
    #[command(flatten)]
    export: crate::export_args::ExportArgs,
}

pub fn run(args: StressArgs) -> Result<()> {
    // The listener grammar's rate, where the `/s` may be left out.
    let r = args.reader_rate.trim();
    let rate = if r.eq_ignore_ascii_case("unlimited") || r.ends_with("/s") {
        r.to_string()
    } else {
        format!("{r}/s")
    };
    let rate = parse_rate(&rate).with_context(|| format!("--reader-rate `{r}`"))?;
    let reader_rate = rate.is_finite().then_some(rate);
    if !(0.0..=1.0).contains(&args.faults) {
        return Err(anyhow!("--faults {}: expected a probability", args.faults));
    }
    if !(args.flow_rate > 0.0 && args.flow_rate.is_finite()) {
        return Err(anyhow!("--flow-rate must be a positive number"));
    }
    let parsed = crate::settings(&args.sysctls, args.seed, args.policy)?;
    let options = StressOptions {
        flows: args.flows,
        flow_rate: args.flow_rate,
        rcvbuf: args.rcvbuf,
        reliable: args.reliable || !args.no_reliable,
        reader_rate,
        reader: None,
        faults: args.faults,
        policy: parsed
            .retry_policy
            .unwrap_or(ctwasm_core::RetryPolicy::Grace),
        seed: args.seed,
        max: args.max,
        sysctls: parsed.sysctls,
        batch: args.batch,
        flush: true,
        horizon_ns: args.horizon.saturating_mul(1_000_000_000),
        mirror: false,
    };
    let mut backend = open_backend(args.backend, &options.settings(), args.component.as_deref())?;

    let bar = if args.flows >= 10_000 && std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(args.flows), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg:9} [{bar:40}] {pos}/{len} {per_sec}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let mut first = options.listener();
    if args.socket.is_some() && args.export.is_set() {
        return Err(anyhow!(
            "--socket and --export: one deciding listener at a time (the counts are its own)"
        ));
    }
    let export = args.export.start()?;
    if args.socket.is_some() || export.is_some() {
        // The socket's reader (or the stream) decides; the in-process listener observes what
        // it took, each message once (not every retry its refusals cause, as a second netlink
        // socket would), so the counts below are its own.
        first = ctwasm_host::listener::ListenerConfig {
            groups: first.groups,
            ..ctwasm_host::listener::ListenerConfig::observer(&first.name)
        };
    }
    let mut listeners = ctwasm_host::listener::Listeners::new([first]);
    let mut stream_end = None;
    if let Some(path) = &args.socket {
        let (listener, end) = socket_listener::connect(path, &args.socket_spec)?;
        stream_end = Some(end);
        listeners.push_external(listener);
    }
    let export_report = export.map(|(export, report)| {
        listeners.push_external(Box::new(export));
        report
    });
    let metrics = args.metrics.start()?;
    let report =
        stress::run_with_listeners(backend.as_mut(), &options, listeners, &mut |p| match p {
            Progress::Creating { done, total } => {
                bar.set_message("creating");
                bar.set_length(total);
                bar.set_position(done);
            }
            Progress::Draining { read, total } => {
                bar.set_message("draining");
                bar.set_length(total);
                bar.set_position(read);
            }
            Progress::Figures { stats, listeners } => {
                if let Some(m) = &metrics {
                    let mut snapshot = ctwasm_host::metrics::Snapshot::default();
                    snapshot.push_tracker(&stats);
                    snapshot.push_listeners(&listeners);
                    m.publish(snapshot);
                }
            }
        })?;
    let wall = started.elapsed();
    bar.finish_and_clear();
    if let (Some(end), Some(path)) = (stream_end, &args.socket) {
        // Tell the reader the stream is over once it has read everything sent before.
        match end.finish(Instant::now() + std::time::Duration::from_secs(60)) {
            Ok(()) => eprintln!(
                "ctwasm stress: events went to {}; the counts below are what its socket took",
                path.display()
            ),
            // The run is whole; only the reader left early (a closed socket leaves its groups,
            // so it missed what came after, and the counts below say what the socket took).
            Err(e) => eprintln!(
                "ctwasm stress: the reader at {} went away before the end of the stream ({e}); \
                 the counts below are what its socket took before",
                path.display()
            ),
        }
    }

    if let Some(report) = &export_report {
        eprintln!("ctwasm stress: {}", crate::export_args::summary(report));
    }
    if let Some(path) = &args.plot {
        plot(path, &report, &options)?;
    }
    let mut out = std::io::stdout().lock();
    match args.format {
        StressFormat::Json => writeln!(out, "{}", serde_json::to_string(&report.summary)?)?,
        StressFormat::Text => print_text(&mut out, &report, &options, wall.as_secs_f64())?,
    }
    out.flush()?;
    drop(out);
    if let Some(metrics) = metrics {
        metrics.finish();
    }
    Ok(())
}

fn print_text(
    out: &mut impl Write,
    r: &StressReport,
    o: &StressOptions,
    wall_s: f64,
) -> Result<()> {
    let s = &r.summary;
    let reader = match o.reader_rate {
        Some(rate) => format!("{rate} msgs/s"),
        None => "unlimited".into(),
    };
    writeln!(
        out,
        "ctwasm stress: {} flows at {}/s through the {} engine, policy {}, seed {}",
        o.flows,
        o.flow_rate,
        r.backend,
        o.policy.name(),
        o.seed
    )?;
    writeln!(
        out,
        "  listener: rcvbuf {} B, {}, reader {reader}{}",
        o.rcvbuf,
        if o.reliable {
            "reliable (broadcast-error)"
        } else {
            "not reliable"
        },
        if o.faults > 0.0 {
            format!(", faults {}", o.faults)
        } else {
            String::new()
        }
    )?;
    writeln!(
        out,
        "  created {}  dropped_new {}  max_seen {} (nf_conntrack_max {})",
        s.created, s.dropped_new, s.max_seen, r.stats.max
    )?;
    writeln!(
        out,
        "  DESTROY delivered {}  lost {}  duplicates {}",
        s.destroy_delivered, s.destroy_lost, s.duplicates
    )?;
    writeln!(
        out,
        "  dying peak {}  final {}",
        s.dying_peak, s.dying_final
    )?;
    let limit = match o.reader_rate {
        Some(rate) if rate > 0.0 => format!("{:.3} s", o.flows as f64 / rate),
        Some(_) => "never".into(),
        None => "none".into(),
    };
    match s.drain_ms {
        Some(ms) => writeln!(
            out,
            "  drain {:.3} s simulated from the flush to the last DESTROY read (reader's own limit \
             flows/reader_rate: {limit})",
            ms / 1e3
        )?,
        None => writeln!(out, "  drain: no DESTROY read after the flush")?,
    }
    let st = &r.stats;
    writeln!(
        out,
        "  engine: emitted {} delivered {} failed {} destroy_retries {}",
        st.events_emitted, st.events_delivered, st.events_failed, st.destroy_retries
    )?;
    writeln!(out, "  listener: {}", r.listener)?;
    writeln!(
        out,
        "  simulated {:.3} s, wall {wall_s:.3} s",
        r.end_ns as f64 / 1e9
    )?;
    Ok(())
}

fn plot(path: &Path, r: &StressReport, o: &StressOptions) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let secs = |s: &Sample| s.t_ns as f64 / 1e9;
    let x_max = r.samples.last().map_or(1.0, secs).max(1e-3);
    let y_max = r
        .samples
        .iter()
        .map(|s| s.count.max(s.destroys_read))
        .max()
        .unwrap_or(0)
        .max(1);
    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let caption = format!(
        "ctwasm stress: {} flows, rcvbuf {} B{}, policy {}, backend {}",
        o.flows,
        o.rcvbuf,
        if o.reliable { " reliable" } else { "" },
        o.policy.name(),
        r.backend
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max, 0u64..y_max + y_max / 20)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("simulated time (s)")
        .y_desc("entries / messages")
        .draw()
        .map_err(|e| err(&e))?;
    type Series = (&'static str, RGBColor, fn(&Sample) -> u64);
    let series: [Series; 4] = [
        ("dying list", RED, |s| s.dying),
        ("table count (live + dying)", BLUE, |s| s.count),
        ("live entries", CYAN, |s| s.entries),
        ("DESTROYs delivered", GREEN, |s| s.destroys_read),
    ];
    for (label, color, value) in series {
        chart
            .draw_series(LineSeries::new(
                r.samples.iter().map(|s| (secs(s), value(s))),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    let flush = r.flush_ns as f64 / 1e9;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(flush, 0), (flush, y_max)],
            BLACK.mix(0.4),
        )))
        .map_err(|e| err(&e))?
        .label("flush")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// `--socket`: a listener whose deliveries a real kernel socket buffer decides (Linux only).
#[cfg(target_os = "linux")]
mod socket_listener {
    use std::path::Path;

    use anyhow::Result;
    use ctwasm_host::listener::ExternalListener;
    use ctwasm_live::socket_listener::SocketListener;
    pub use ctwasm_live::socket_listener::StreamEnd;

    pub fn connect(path: &Path, spec: &str) -> Result<(Box<dyn ExternalListener>, StreamEnd)> {
        let (listener, end) = SocketListener::connect_spec(path, spec)?;
        Ok((Box::new(listener), end))
    }
}

#[cfg(not(target_os = "linux"))]
mod socket_listener {
    use std::path::Path;
    use std::time::Instant;

    use anyhow::Result;
    use ctwasm_host::listener::ExternalListener;

    /// Never made: there is no socket listener here.
    pub enum StreamEnd {}

    impl StreamEnd {
        pub fn finish(&self, _: Instant) -> std::io::Result<()> {
            match *self {}
        }
    }

    pub fn connect(_: &Path, _: &str) -> Result<(Box<dyn ExternalListener>, StreamEnd)> {
        anyhow::bail!("`ctwasm stress --socket` needs Linux")
    }
}
