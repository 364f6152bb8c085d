//! `--metrics ADDR`: an HTTP endpoint serving the command's figures to Prometheus
//! (`GET /metrics`: OpenMetrics text when the scraper's Accept header asks for it, as
//! Prometheus does, else the classic text format 0.0.4), for the long-running commands (`watch`, `stress`,
//! `shadow`).
//!
//! The HTTP side is tiny_http's: one thread answers scrapes from the latest published
//! [`Snapshot`]; the command publishes as it goes and never waits on a scraper.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Result, anyhow};
use ctwasm_host::metrics::{Published, Snapshot};

/// The metrics endpoint's options.
#[derive(clap::Args, Debug, Default)]
pub struct MetricsArgs {
    /// Serve metrics for Prometheus at http://ADDR/metrics (OpenMetrics text), e.g.
    /// 127.0.0.1:9464; port 0 picks a free one. The address is printed on stderr.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// After the run, keep serving the final figures this long (so a scraper sees them).
    #[arg(long, value_name = "SECS", requires = "metrics",
          value_parser = crate::values::seconds)]
    metrics_hold: Option<f64>,
}

/// A running endpoint; stops when dropped (after the hold, if one was asked for).
pub struct MetricsServer {
    published: Published,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    hold: Option<Duration>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.server.server_addr().to_ip())
            .finish_non_exhaustive()
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

impl MetricsArgs {
    /// Starts the endpoint, if one was asked for.
    pub fn start(&self) -> Result<Option<MetricsServer>> {
        let Some(addr) = self.metrics else {
            return Ok(None);
        };
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow!("--metrics {addr}: cannot listen: {e}"))?;
        let server = Arc::new(server);
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow!("--metrics {addr}: not an IP address"))?;
        eprintln!("ctwasm: metrics on http://{bound}/metrics");
        let published = Published::new();
        let (serving, reading) = (Arc::clone(&server), published.clone());
        let thread = std::thread::Builder::new()
            .name("ctwasm-metrics".to_string())
            .spawn(move || serve(&serving, &reading))?;
        Ok(Some(MetricsServer {
            published,
            server,
            thread: Some(thread),
            hold: self.metrics_hold.map(Duration::from_secs_f64),
        }))
    }
}

/// Answers requests until the server is unblocked: `GET /metrics` gets the text, anything
/// else a 404 (or 405 for another method on /metrics).
fn serve(server: &tiny_http::Server, published: &Published) {
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or("");
        let response = match (request.method(), path) {
            (tiny_http::Method::Get | tiny_http::Method::Head, "/metrics") => {
                // OpenMetrics for scrapers that ask for it (Prometheus does), the classic
                // text format otherwise.
                let open = request.headers().iter().any(|h| {
                    h.field.equiv("Accept")
                        && h.value.as_str().contains("application/openmetrics-text")
                });
                let (body, kind) = if open {
                    (published.encode(), OPENMETRICS)
                } else {
                    (published.encode_classic(), CLASSIC)
                };
                let header =
                    tiny_http::Header::from_bytes("Content-Type", kind).expect("a valid header");
                tiny_http::Response::from_string(body).with_header(header)
            }
            (_, "/metrics") => tiny_http::Response::from_string("only GET\n").with_status_code(405),
            _ => {
                tiny_http::Response::from_string("metrics are at /metrics\n").with_status_code(404)
            }
        };
        // A scraper that went away is its own problem.
        let _ = request.respond(response);
    }
}

impl MetricsServer {
    /// Replaces what the next scrape sees.
    pub fn publish(&self, snapshot: Snapshot) {
        self.published.publish(snapshot);
    }

    /// Ends the endpoint after the hold, if one was asked for (a signal ends the process,
    /// and the hold with it).
    pub fn finish(self) {
        if let Some(hold) = self.hold {
            std::thread::sleep(hold);
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
