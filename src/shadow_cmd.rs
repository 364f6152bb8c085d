//! `ctwasm shadow`: does the engine match this kernel? The engine runs beside the kernel on the
//! packets of one namespace's interface, and each flow's events are compared as they come (see
//! `ctwasm_live::shadow`). A running count goes to stderr, with the first divergence of each
//! flow that disagrees; the final report goes to stdout. Exit status 0 when every flow agreed,
//! 2 when some diverged (1 is an error).

use anyhow::Result;

/// `ctwasm shadow`: compare the engine with the live kernel, flow by flow.
#[derive(clap::Args, Debug)]
pub struct ShadowArgs {
    /// The network namespace (/run/netns/NAME) whose conntrack to shadow.
    #[arg(long, value_name = "NAME")]
    netns: String,
    /// The interface to capture inside it.
    #[arg(long, default_value = "lo")]
    interface: String,
    /// Stop after this many seconds (default: at SIGINT or SIGTERM).
    #[arg(long, value_name = "SECS", value_parser = crate::values::seconds)]
    duration: Option<f64>,
    /// Run the engine with this sysctl instead of the kernel's (repeatable), e.g.
    /// net.netfilter.nf_conntrack_tcp_timeout_time_wait=30.
    #[arg(long = "sysctl", value_name = "NAME=VALUE")]
    sysctls: Vec<String>,
    /// Seconds between running counts.
    #[arg(long, default_value_t = 5.0, value_name = "SECS", value_parser = crate::values::seconds)]
    report_every: f64,
    /// The interface is a veth or bridge whose arriving packets come from a local sender with
    /// their checksums unfinished: the kernel does not verify them, so neither does the engine
    /// (on loopback nothing arrives unverified; elsewhere arriving packets are verified as
    /// conntrack verifies them).
    #[arg(long)]
    offloaded_checksums: bool,
    /// Print every flow side by side at the end, not only the divergent ones.
    #[arg(long, short = 'v')]
    verbose: bool,
    #[command(flatten)]
    metrics: crate::metrics_args::MetricsArgs,
}

#[cfg(target_os = "linux")]
pub fn run(args: ShadowArgs) -> Result<()> {
    use std::io::Write;
    use std::time::Duration;

    use ctwasm_live::shadow::{ShadowOptions, ShadowProgress, run_shadow};

    use crate::signals::stop_on_signals;

    let stop = stop_on_signals()?;
    let options = ShadowOptions {
        netns: args.netns.clone(),
        interface: args.interface.clone(),
        duration: args.duration.map(Duration::from_secs_f64),
        overrides: crate::parse_sysctls(&args.sysctls)?,
        report_every: Duration::from_secs_f64(args.report_every.max(0.1)),
        arriving: if args.offloaded_checksums {
            ctwasm_host::replay::ArrivingChecksums::Offloaded
        } else {
            ctwasm_host::replay::ArrivingChecksums::Unverified
        },
    };
    let metrics = args.metrics.start()?;
    let mut progress = |p: &ShadowProgress| match p {
        ShadowProgress::Counts { elapsed, counts: c } => {
            if let Some(m) = &metrics {
                m.publish(shadow_snapshot(c));
            }
            eprintln!(
                "shadow {}: {:.0} s: {} packets, {} kernel events, {} flows: {} agree, {} pending, {} diverge",
                args.netns,
                elapsed.as_secs_f64(),
                c.packets,
                c.events,
                c.flows,
                c.agree,
                c.pending,
                c.diverge
            )
        }
        ShadowProgress::Diverged(line) => eprintln!("shadow {}: DIVERGED {line}", args.netns),
    };
    let report = run_shadow(&options, &stop, &mut progress)?;
    let c = &report.counts;
    if let Some(m) = metrics {
        m.publish(shadow_snapshot(c));
        m.finish();
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "shadow {}: {} packets, {} kernel events; {} flows compared: {} agree, {} diverge ({} flows that existed before the start left out)",
        args.netns, c.packets, c.events, c.flows, c.agree, c.diverge, report.preexisting
    )?;
    if !args.sysctls.is_empty() {
        writeln!(
            out,
            "engine settings that differ from the kernel's: {}",
            args.sysctls.join(" ")
        )?;
    }
    for f in report.comparison.divergent(true) {
        if let Some(line) = f.first_divergence() {
            writeln!(out, "DIVERGES {line}")?;
        }
        write!(out, "{}", f.render())?;
    }
    if args.verbose {
        write!(out, "{}", report.comparison.full_text())?;
    }
    if c.diverge == 0 {
        writeln!(out, "all {} flows agree", c.flows)?;
        Ok(())
    } else {
        out.flush()?;
        std::process::exit(2);
    }
}

/// What `shadow --metrics` serves.
#[cfg(target_os = "linux")]
fn shadow_snapshot(c: &ctwasm_live::shadow::ShadowCounts) -> ctwasm_host::metrics::Snapshot {
    use ctwasm_host::metrics::{Kind, Snapshot};
    let mut s = Snapshot::default();
    s.push(
        "shadow_packets",
        "Packets captured and fed to the engine.",
        Kind::Counter,
        c.packets,
    );
    s.push(
        "shadow_kernel_events",
        "Event messages read from the kernel.",
        Kind::Counter,
        c.events,
    );
    s.push_labelled(
        "shadow_flows",
        "Flows compared, by how the engine's events compare with the kernel's.",
        Kind::Gauge,
        "agreement",
        [
            ("agree", c.agree),
            ("pending", c.pending),
            ("diverge", c.diverge),
        ]
        .map(|(a, n)| (a.to_string(), n as u64)),
    );
    s
}

#[cfg(not(target_os = "linux"))]
pub fn run(_: ShadowArgs) -> Result<()> {
    anyhow::bail!("`ctwasm shadow` needs Linux (AF_PACKET and ctnetlink)")
}
