//! A component backend that survives its guest: when a call traps or overruns its deadline,
//! the dead instance is replaced by a fresh one that continues exactly where the old one was,
//! and nothing the old one promised is lost.
//!
//! How: every so many calls the backend takes a *checkpoint* (a snapshot of the tracker) and
//! from then on keeps a *journal* of every call that changed the tracker (packets, time,
//! events taken, delivery reports, control calls). When a call fails in the guest, a new
//! instance is restored from the checkpoint and the journal is replayed into it. The engine is
//! deterministic, so the replay rebuilds the very state the dead instance had before the
//! failing call, down to the messages it had handed out and not yet had reported; their bytes
//! are produced again and dropped, since the host has them already. The failing call is then
//! tried once on the new instance: a fault that does not come back (a runaway loop on one
//! input, a transient trap) costs the embedder nothing but time. A fault that comes back on the
//! same input is a bug the guest will hit every time: the backend recovers once more, drops
//! that call (its packets are counted in [`Recovery::dropped_packets`]) and returns the error.
//!
//! What it costs: a snapshot per checkpoint, the journal's memory in between, and on a fault
//! one restore plus the replay of at most `checkpoint_every` calls. Snapshots cross the
//! component boundary in pieces of 16 MiB, so tables of millions of entries are checkpointed
//! too (one copy is limited to about 128 MB). A checkpoint that cannot be taken is reported,
//! and the backend keeps the previous one with a longer journal.

use std::time::Duration;

use anyhow::{Context, Result};
use ctwasm_core::{
    ConnCall, ConnError, ConnHandle, Delivery, Direction, Ending, EntryView, ExpectError,
    ExpectMask, ExpectStats, Stats, Tuple,
};
use wasmtime::component::Component;

use crate::backend::{
    Backend, ComponentBackend, DEFAULT_CALL_DEADLINE, GuestFault, TrackerSettings,
};

/// One call that changed the tracker, kept to be replayed after a fault.
#[derive(Clone, Debug)]
enum Call {
    SetListeners(bool, bool),
    Ingest(u64, Vec<u8>),
    Advance(u64),
    TakeEvents(u32),
    ReportDelivery(Vec<Delivery>),
    ListenersDrained(u64),
    Flush(u64),
    Delete(u64, u16, Tuple),
    Open(u64, u16, Tuple),
    Transfer(u64, u32, Direction, u64),
    Close(u64, u32, Ending),
    Calls(u64, Vec<ConnCall>),
    Expect(u64, u32, Tuple, ExpectMask, u32, bool),
    Unexpect(u64, u32),
}

/// Carried by the error of a call that failed again after a recovery: the call was dropped,
/// and the tracker (a fresh instance at the state before it) is alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallDropped;

impl std::fmt::Display for CallDropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the call failed again after a recovery and was dropped")
    }
}

impl std::error::Error for CallDropped {}

/// What recovery has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Dead instances replaced.
    pub recoveries: u64,
    /// Calls that failed again after a recovery and were dropped.
    pub dropped_calls: u64,
    /// Packets of dropped `ingest` calls.
    pub dropped_packets: u64,
    /// Checkpoints taken, and checkpoints that could not be taken.
    pub checkpoints: u64,
    pub failed_checkpoints: u64,
}

/// `inner` as a backend, wrapped for recovery when `settings.checkpoint_every` asks for it
/// (the one place that decides, for `open_backend` and the embedding API alike).
pub fn with_recovery(
    component: &Component,
    inner: ComponentBackend,
    memory_limit: usize,
    settings: &TrackerSettings,
) -> Result<Box<dyn Backend>> {
    Ok(match settings.checkpoint_every {
        None => Box::new(inner),
        Some(every) => Box::new(
            ResilientBackend::new(
                component,
                inner,
                memory_limit,
                settings.call_deadline.unwrap_or(DEFAULT_CALL_DEADLINE),
                every,
            )?
            .with_recurring_fault(settings.fault.filter(|f| f.recurs())),
        ),
    })
}

/// A [`ComponentBackend`] with checkpoints, a journal and recovery (see the module docs).
pub struct ResilientBackend {
    component: Component,
    memory_limit: usize,
    call_deadline: Duration,
    checkpoint_every: usize,
    inner: ComponentBackend,
    checkpoint: Vec<u8>,
    journal: Vec<Call>,
    recovery: Recovery,
    /// A fault (testing only) that every instance of the build commits: set again in each
    /// restored instance, as a real bug would be there again.
    recurring_fault: Option<GuestFault>,
}

impl std::fmt::Debug for ResilientBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResilientBackend")
            .field("journal", &self.journal.len())
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

impl ResilientBackend {
    /// Wraps a fresh `inner` instance of `component` (created with `memory_limit` and
    /// `call_deadline`), taking the first checkpoint now and one every `checkpoint_every`
    /// journaled calls.
    pub fn new(
        component: &Component,
        mut inner: ComponentBackend,
        memory_limit: usize,
        call_deadline: Duration,
        checkpoint_every: usize,
    ) -> Result<Self> {
        let checkpoint = inner.snapshot().context("taking the first checkpoint")?;
        Ok(ResilientBackend {
            component: component.clone(),
            memory_limit,
            call_deadline,
            checkpoint_every: checkpoint_every.max(1),
            inner,
            checkpoint,
            journal: Vec::new(),
            recovery: Recovery::default(),
            recurring_fault: None,
        })
    }

    /// Sets `fault` again in every instance recovery restores (testing only; the first
    /// instance must have it already).
    pub fn with_recurring_fault(mut self, fault: Option<GuestFault>) -> Self {
        self.recurring_fault = fault;
        self
    }

    /// What recovery has done so far.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// Replaces the running component with `component` (another build), which continues from
    /// a snapshot of the running one: no message is lost or sent twice. A component that cannot
    /// read the snapshot is refused, and the running one stays.
    pub fn upgrade(&mut self, component: &Component) -> Result<()> {
        let snapshot = self
            .inner
            .snapshot()
            .context("snapshotting for the upgrade")?;
        let next = ComponentBackend::restore_with(
            component,
            &snapshot,
            self.memory_limit,
            self.call_deadline,
        )
        .context("the new component refused the running tracker's snapshot")?;
        self.inner = next;
        self.component = component.clone();
        self.checkpoint = snapshot;
        self.journal.clear();
        Ok(())
    }

    /// A fresh instance at the state just before the call that failed.
    fn recover(&mut self) -> Result<()> {
        let mut fresh = ComponentBackend::restore_with(
            &self.component,
            &self.checkpoint,
            self.memory_limit,
            self.call_deadline,
        )
        .context("recovering: restoring the last checkpoint")?;
        if self.recurring_fault.is_some() {
            fresh.set_fault(self.recurring_fault)?;
        }
        let mut scratch = Vec::new();
        for call in &self.journal {
            scratch.clear();
            replay(&mut fresh, call, &mut scratch)
                .context("recovering: replaying the journal into the new instance")?;
        }
        self.inner = fresh;
        self.recovery.recoveries += 1;
        Ok(())
    }

    /// Runs `f` on the instance; after a guest fault, recovers and runs it once more; if it
    /// fails again, recovers, drops it and returns the error. `journal` is the call to keep
    /// once it succeeded.
    fn run<T>(
        &mut self,
        journal: Option<Call>,
        mut f: impl FnMut(&mut ComponentBackend) -> Result<T>,
    ) -> Result<T> {
        let result = match f(&mut self.inner) {
            Err(_) if self.inner.is_dead() => {
                self.recover()?;
                match f(&mut self.inner) {
                    Err(e) if self.inner.is_dead() => {
                        self.recover()?;
                        self.recovery.dropped_calls += 1;
                        if let Some(Call::Ingest(_, packets)) = &journal {
                            self.recovery.dropped_packets +=
                                ctwasm_core::batch::packets(packets).count() as u64;
                        }
                        return Err(anyhow::Error::new(CallDropped).context(format!("{e:#}")));
                    }
                    other => other,
                }
            }
            other => other,
        }?;
        if let Some(call) = journal {
            self.journal.push(call);
            if self.journal.len() >= self.checkpoint_every {
                self.take_checkpoint();
            }
        }
        Ok(result)
    }

    fn take_checkpoint(&mut self) {
        match self.inner.snapshot() {
            Ok(snapshot) => {
                self.checkpoint = snapshot;
                self.journal.clear();
                self.recovery.checkpoints += 1;
            }
            Err(_) if self.inner.is_dead() => {
                // The snapshot call itself failed in the guest: the journal still holds
                // everything since the last checkpoint, so recover from that.
                self.recovery.failed_checkpoints += 1;
                if self.recover().is_err() {
                    self.recovery.failed_checkpoints += 1;
                }
            }
            Err(_) => self.recovery.failed_checkpoints += 1,
        }
    }
}

/// Runs one journaled call again; its outputs are dropped (the host has them already).
fn replay(b: &mut ComponentBackend, call: &Call, scratch: &mut Vec<u8>) -> Result<()> {
    match call {
        Call::SetListeners(present, reliable) => b.set_listeners(*present, *reliable),
        Call::Ingest(now, packets) => b.ingest(*now, packets, scratch),
        Call::Advance(now) => b.advance(*now),
        Call::TakeEvents(max) => b.take_events(*max, scratch).map(drop),
        Call::ReportDelivery(results) => b.report_delivery(results),
        Call::ListenersDrained(now) => b.listeners_drained(*now),
        Call::Flush(now) => b.flush(*now),
        Call::Delete(now, zone, tuple) => b.delete(*now, *zone, tuple).map(drop),
        Call::Open(now, zone, tuple) => b.open(*now, *zone, tuple).map(drop),
        Call::Transfer(now, id, dir, bytes) => b.transfer(*now, *id, *dir, *bytes).map(drop),
        Call::Close(now, id, ending) => b.close(*now, *id, *ending).map(drop),
        Call::Calls(now, calls) => b.connection_calls(*now, calls, &mut Vec::new()),
        Call::Expect(now, master, tuple, mask, timeout, permanent) => b
            .expect(*now, *master, tuple, *mask, *timeout, *permanent)
            .map(drop),
        Call::Unexpect(now, id) => b.unexpect(*now, *id).map(drop),
    }
}

impl Backend for ResilientBackend {
    fn name(&self) -> &'static str {
        "component"
    }
    fn recovery(&self) -> Option<Recovery> {
        Some(self.recovery)
    }
    fn set_listeners(&mut self, present: bool, reliable: bool) -> Result<()> {
        let call = Call::SetListeners(present, reliable);
        self.run(Some(call), |b| b.set_listeners(present, reliable))
    }
    fn ingest(&mut self, now_ns: u64, packets: &[u8], verdicts: &mut Vec<u8>) -> Result<()> {
        let start = verdicts.len();
        let call = Call::Ingest(now_ns, packets.to_vec());
        self.run(Some(call), |b| {
            // A failed attempt may have written some verdicts: start again from the same place.
            verdicts.truncate(start);
            b.ingest(now_ns, packets, verdicts)
        })
    }
    fn advance(&mut self, now_ns: u64) -> Result<()> {
        self.run(Some(Call::Advance(now_ns)), |b| b.advance(now_ns))
    }
    fn next_deadline(&mut self) -> Result<Option<u64>> {
        self.run(None, |b| b.next_deadline())
    }
    fn take_events(&mut self, max: u32, out: &mut Vec<u8>) -> Result<usize> {
        let start = out.len();
        self.run(Some(Call::TakeEvents(max)), |b| {
            out.truncate(start);
            b.take_events(max, out)
        })
    }
    fn report_delivery(&mut self, results: &[Delivery]) -> Result<()> {
        let call = Call::ReportDelivery(results.to_vec());
        self.run(Some(call), |b| b.report_delivery(results))
    }
    fn listeners_drained(&mut self, now_ns: u64) -> Result<()> {
        let call = Call::ListenersDrained(now_ns);
        self.run(Some(call), |b| b.listeners_drained(now_ns))
    }
    fn flush(&mut self, now_ns: u64) -> Result<()> {
        self.run(Some(Call::Flush(now_ns)), |b| b.flush(now_ns))
    }
    fn delete(&mut self, now_ns: u64, zone: u16, tuple: &Tuple) -> Result<bool> {
        let call = Call::Delete(now_ns, zone, *tuple);
        self.run(Some(call), |b| b.delete(now_ns, zone, tuple))
    }
    fn dump(&mut self) -> Result<Vec<EntryView>> {
        self.run(None, |b| b.dump())
    }
    fn stats(&mut self) -> Result<Stats> {
        self.run(None, |b| b.stats())
    }
    fn open(
        &mut self,
        now_ns: u64,
        zone: u16,
        tuple: &Tuple,
    ) -> Result<std::result::Result<u32, ConnError>> {
        let call = Call::Open(now_ns, zone, *tuple);
        self.run(Some(call), |b| b.open(now_ns, zone, tuple))
    }
    fn transfer(
        &mut self,
        now_ns: u64,
        id: u32,
        dir: Direction,
        bytes: u64,
    ) -> Result<std::result::Result<(), ConnError>> {
        let call = Call::Transfer(now_ns, id, dir, bytes);
        self.run(Some(call), |b| b.transfer(now_ns, id, dir, bytes))
    }
    fn close(
        &mut self,
        now_ns: u64,
        id: u32,
        ending: Ending,
    ) -> Result<std::result::Result<(), ConnError>> {
        let call = Call::Close(now_ns, id, ending);
        self.run(Some(call), |b| b.close(now_ns, id, ending))
    }
    fn connection_start(&mut self, id: u32) -> Result<Option<u64>> {
        self.run(None, |b| b.connection_start(id))
    }
    fn connection_calls(
        &mut self,
        now_ns: u64,
        calls: &[ConnCall],
        results: &mut Vec<std::result::Result<ConnHandle, ConnError>>,
    ) -> Result<()> {
        let first = results.len();
        let call = Call::Calls(now_ns, calls.to_vec());
        self.run(Some(call), |b| {
            // A failed attempt may have appended nothing or part; the retry starts afresh.
            results.truncate(first);
            b.connection_calls(now_ns, calls, results)
        })
    }
    fn expect(
        &mut self,
        now_ns: u64,
        master_id: u32,
        tuple: &Tuple,
        mask: ExpectMask,
        timeout_s: u32,
        permanent: bool,
    ) -> Result<std::result::Result<u32, ExpectError>> {
        let call = Call::Expect(now_ns, master_id, *tuple, mask, timeout_s, permanent);
        self.run(Some(call), |b| {
            b.expect(now_ns, master_id, tuple, mask, timeout_s, permanent)
        })
    }
    fn unexpect(&mut self, now_ns: u64, id: u32) -> Result<bool> {
        self.run(Some(Call::Unexpect(now_ns, id)), |b| b.unexpect(now_ns, id))
    }
    fn expect_stats(&mut self) -> Result<ExpectStats> {
        self.run(None, |b| b.expect_stats())
    }
    fn snapshot(&mut self) -> Result<Vec<u8>> {
        self.run(None, |b| b.snapshot())
    }
}
