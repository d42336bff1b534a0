//! Stop-the-world events: ring buffer → `Pause` → Prometheus and the summary book.
use std::{mem::size_of, sync::Arc};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use profiler_common::{
    stw::StwEvent,
    trigger::{TRIGGER_KINDS, TRIGGER_NAMES},
};
use tokio::io::unix::AsyncFd;

use super::counters::{ProbeCounters, each_increase};
use crate::{
    export::metrics::TargetMetrics,
    gobin::abi::StwAbi,
    model::pause::{self, CycleClock, PauseBook},
    probes::loaded::StwMaps,
};

/// How stale the exported pause metrics may be (a Prometheus scrape interval is 15 s or more).
const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// How stale the probes' counters may be while no pause comes: read at every drain, they were
/// most of the daemon's system calls per target (18 per-CPU array reads, four times a second).
/// A drain that brings pauses reads them too, so that a scrape never shows a cycle's pauses
/// without its trigger (counted before them).
const COUNTER_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The drop reason of a ring buffer record too short to be an event.
pub const SHORT_EVENT: &str = "short_event";

pub struct StwCollector {
    events: AsyncFd<RingBuf<MapData>>,
    counters: ProbeCounters,
    /// GC cycles started, by trigger kind, and the totals already exported.
    triggers: PerCpuArray<MapData, u64>,
    triggers_seen: [u64; TRIGGER_KINDS as usize],
    /// The Go runtime's layout; `None` for a target without one, which has no pauses.
    abi: Option<&'static StwAbi>,
    metrics: Arc<TargetMetrics>,
    pub book: PauseBook,
    cycles: CycleClock,
    /// What the target's probes and mapscope cost it, updated with the hit counts.
    pub meter: Option<super::overhead::OverheadMeter>,
}

impl StwCollector {
    pub fn new(
        maps: StwMaps,
        abi: Option<&'static StwAbi>,
        metrics: Arc<TargetMetrics>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            events: crate::fdwatch::readable(maps.events)?,
            counters: ProbeCounters::new(maps.hits, maps.counters),
            triggers: maps.triggers,
            triggers_seen: [0; TRIGGER_KINDS as usize],
            abi,
            metrics,
            book: PauseBook::default(),
            cycles: CycleClock::default(),
            meter: None,
        })
    }

    /// Collect until `stop` resolves, then drain what is left. The kernel wakes us only when
    /// its ring buffer is filling up; otherwise events wait for the next tick, so a GC-heavy
    /// target costs one wake-up per tick rather than one per pause.
    pub async fn run_until(&mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(DRAIN_INTERVAL);
        let mut counters_read = std::time::Instant::now();
        loop {
            tokio::select! {
                () = &mut stop => break,
                ready = self.events.readable_mut() => match ready {
                    Ok(mut guard) => {
                        guard.clear_ready();
                        let own = self.metrics.own_cpu().clone();
                        own.measure(|| {
                            self.drain();
                            self.sync_counters(false);
                        });
                        counters_read = std::time::Instant::now();
                    }
                    Err(error) => {
                        tracing::error!("reading stop-the-world events failed: {error}");
                        break;
                    }
                },
                _ = tick.tick() => {
                    let own = self.metrics.own_cpu().clone();
                    own.measure(|| {
                        let awaited = self
                            .meter
                            .as_ref()
                            .is_some_and(super::overhead::OverheadMeter::awaiting_first_reading);
                        if self.drain() > 0
                            || counters_read.elapsed() >= COUNTER_INTERVAL
                            || awaited
                        {
                            counters_read = std::time::Instant::now();
                            self.sync_counters(false);
                        }
                    });
                }
            }
        }
        self.drain();
        self.sync_counters(true);
    }

    /// Handle every event in the ring buffer now; how many there were.
    pub fn drain(&mut self) -> usize {
        let mut drained = 0;
        let ring = self.events.get_mut();
        while let Some(item) = ring.next() {
            drained += 1;
            if item.len() < size_of::<StwEvent>() {
                self.metrics.dropped(SHORT_EVENT, 1);
                continue;
            }
            // SAFETY: the buffer holds at least size_of::<StwEvent>() bytes written by the
            // kernel program as an StwEvent; read_unaligned copes with any alignment, and every
            // bit pattern is a valid StwEvent (integers only).
            let event: StwEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let Some(abi) = self.abi else {
                continue;
            };
            match pause::decode(&event, abi) {
                Ok(pause) => {
                    self.metrics.observe(&pause);
                    self.metrics.cycle_phases(&self.cycles.pause(&pause));
                    self.book.record(&pause);
                }
                Err(invalid) => self.metrics.dropped(invalid.label(), 1),
            }
        }
        drained
    }

    /// Export the probes' counters, and their cost (once a second, or now with `force`).
    fn sync_counters(&mut self, force: bool) {
        self.counters.export(&self.metrics);
        if let Some(meter) = &mut self.meter {
            meter.update(self.counters.hit_totals(), &self.metrics, force);
        }
        each_increase(&self.triggers, &mut self.triggers_seen, |kind, increase| {
            self.metrics
                .gc_cycles_started(TRIGGER_NAMES[kind], increase);
        });
    }
}
