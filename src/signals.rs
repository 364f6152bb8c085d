//! SIGINT and SIGTERM stop a long command instead of killing it, so `watch`, `listen` and
//! `shadow` can print their counts on the way out.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};

/// Makes SIGINT and SIGTERM set the returned flag instead of ending the process. A blocking
/// wait (`poll`) is interrupted by the signal, so readers that check the flag stop promptly.
pub fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .with_context(|| format!("handling signal {signal}"))?;
    }
    Ok(stop)
}
