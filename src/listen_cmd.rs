//! `ctwasm listen SOCKET`: the reader at the far end of a socket listener, as its own process.
//!
//! A host run with a socket listener ([`ctwasm_live::socket_listener`]) sends each event message,
//! as its ctnetlink bytes, to a Unix datagram socket whose small kernel buffer decides which
//! messages get through. This command is that socket's reader: it binds the path, reads at a
//! chosen pace (a slow reader is what fills the buffer), decodes and prints each message as
//! `watch` prints the kernel's, and at the end says how many it read, DESTROYs by entry included,
//! so "every DESTROY exactly once" can be checked from outside.
//!
//! It stops at the end of the stream (the empty datagram the sender ends with), after `--count`
//! messages, after `--duration` seconds, or on SIGINT/SIGTERM; it removes the socket it bound.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use crate::FormatArg;

/// `ctwasm listen`: read event messages from a socket listener and print them.
#[derive(clap::Args, Debug)]
pub struct ListenArgs {
    /// The Unix datagram socket to bind (must not exist yet; removed at the end).
    socket: PathBuf,
    /// Messages read per second (default: as fast as they come).
    #[arg(long, value_name = "MSGS_PER_S", value_parser = crate::values::rate)]
    rate: Option<f64>,
    /// Output format of the events.
    #[arg(long, value_enum, default_value = "conntrack")]
    format: FormatArg,
    /// `conntrack -o` options for the conntrack format: xml, extended, id, timestamp,
    /// ktimestamp.
    #[arg(long, short = 'o', default_value = "")]
    output: String,
    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "S", value_parser = crate::values::seconds)]
    duration: Option<f64>,
    /// No counts on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
}

#[cfg(target_os = "linux")]
pub use linux::run;

#[cfg(not(target_os = "linux"))]
pub fn run(_: ListenArgs) -> Result<()> {
    anyhow::bail!("`ctwasm listen` needs Linux")
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use std::io::{self, BufWriter};
    use std::ops::ControlFlow;
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use anyhow::Context;
    use ctwasm_live::ctnetlink::KernelMessage;
    use ctwasm_live::socket_listener::{ReadPace, read_stream};

    use crate::signals::stop_on_signals;

    /// Removes the socket file when the command ends, however it ends.
    struct Bound(PathBuf);

    impl Drop for Bound {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    pub fn run(args: ListenArgs) -> Result<()> {
        let format = crate::output_format(args.format, &args.output)?;
        if let Some(rate) = args.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            anyhow::bail!("--rate {rate}: expected a positive number of messages per second");
        }
        let stop = stop_on_signals()?;
        let socket = UnixDatagram::bind(&args.socket)
            .with_context(|| format!("binding {}", args.socket.display()))?;
        let _bound = Bound(args.socket.clone());
        let started = Instant::now();
        // Without --duration the deadline is far enough away never to matter.
        let deadline = started
            + args
                .duration
                .map_or(Duration::from_secs(100 * 365 * 86_400), |s| {
                    Duration::from_secs_f64(s.max(0.0))
                });
        let stdout = std::io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        let mut printed = 0u64;
        let mut broken_pipe = false;
        // With `-o xml` the events are one document, as `conntrack -E -o xml` writes them.
        let mut xml_opened = false;
        let tally = read_stream(
            &socket,
            ReadPace { rate: args.rate },
            deadline,
            &stop,
            |bytes, decoded| {
                let Ok(message) = decoded else {
                    return Ok(ControlFlow::Continue(()));
                };
                let received_ns = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                let m = KernelMessage {
                    message: message.clone(),
                    bytes: bytes.to_vec(),
                    received_ns,
                    // Sent by a simulated engine, not by a program's netlink socket.
                    progname: None,
                };
                let mut line = format.line(&m.frame(), &m.message);
                if format.is_xml() && !xml_opened {
                    line = format!("{}\n{line}", ctwasm_host::output::xml::PROLOGUE);
                    xml_opened = true;
                }
                if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                    broken_pipe = e.kind() == io::ErrorKind::BrokenPipe;
                    return Err(e);
                }
                printed += 1;
                Ok(if args.count.is_some_and(|n| printed >= n) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            },
        );
        if xml_opened && !broken_pipe {
            let _ = writeln!(out, "{}", ctwasm_host::output::xml::EPILOGUE);
        }
        let _ = out.flush();
        drop(out);
        let t = match tally {
            Ok(t) => t,
            // `| head` went away: end quietly.
            Err(_) if broken_pipe => return Ok(()),
            Err(e) => return Err(e).context("reading the socket"),
        };
        if !args.quiet {
            let elapsed = started.elapsed().as_secs_f64();
            eprintln!(
                "ctwasm listen: {} event messages in {elapsed:.3} s (new={} update={} \
                 destroy={}), distinct destroys={} duplicate destroys={} decode errors={}, \
                 reading {:.3} s{}",
                t.messages,
                t.new,
                t.update,
                t.destroy,
                t.distinct_destroys(),
                t.duplicate_destroys(),
                t.decode_errors,
                t.reading.as_secs_f64(),
                if t.ended { ", stream ended" } else { "" },
            );
        }
        Ok(())
    }
}
