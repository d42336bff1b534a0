//! Native allocations: every second, what the kernel counted at the C allocators' entry points
//! since the last read, scaled by the share of the target's work the probes saw (the overhead
//! governor's `Coverage` of `HIT_NATIVE`), added to each allocator's totals and exported.
use std::{sync::Arc, time::Duration};

use aya::maps::{Array, MapData, PerCpuArray};
use profiler_common::counters::HIT_NATIVE;

use crate::{
    export::{metrics::TargetMetrics, native_metrics::NativeEstimate},
    native::probes::{NativeCounts, NativePlan},
};

/// How often the counts are read.
const READ_EVERY: Duration = Duration::from_secs(1);

/// One allocator's totals: what the kernel counted, and what that stands for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NativeTally {
    /// The kernel's counts taken so far.
    pub counted: NativeCounts,
    /// Their estimate of the target's whole work: each count divided by the share of the
    /// work its probes saw.
    pub estimate: NativeEstimate,
}

impl NativeTally {
    /// Take the kernel's counts `now`, those since the last take having seen `coverage` of the
    /// target's work.
    pub fn take(&mut self, now: &NativeCounts, coverage: f64) {
        let coverage = coverage.clamp(1e-6, 1.0);
        let grown = |now: u64, seen: u64| now.saturating_sub(seen) as f64 / coverage;
        let estimate = &mut self.estimate;
        estimate.objects += grown(now.objects, self.counted.objects);
        estimate.bytes += grown(now.bytes, self.counted.bytes);
        estimate.frees += grown(now.frees, self.counted.frees);
        for (index, &(bound, count)) in now.sizes.iter().enumerate() {
            let seen = self.counted.sizes.get(index).map_or(0, |&(_, seen)| seen);
            if count > seen {
                estimate.add_sizes(bound, grown(count, seen));
            }
        }
        if estimate.sizes.is_empty() {
            estimate.add_sizes(1, 0.0);
        }
        self.counted = now.clone();
        // Over the whole watch: how much of the work the counts stand for was counted.
        estimate.coverage = if estimate.objects + estimate.frees > 0.0 {
            (now.objects + now.frees) as f64 / (estimate.objects + estimate.frees)
        } else {
            coverage
        };
    }
}

/// What the exit summary says of one allocator.
#[derive(Clone, Debug)]
pub struct NativeSummary {
    /// `AllocatorKind::label`.
    pub allocator: &'static str,
    pub object: std::path::PathBuf,
    pub tally: NativeTally,
}

pub struct NativeCollector {
    counts: PerCpuArray<MapData, u64>,
    plan: NativePlan,
    /// The kernel's table of the dedicated libraries' code, while it is not complete
    /// (`NativePlan::own_code_complete`).
    own_code: Option<Array<MapData, [u64; 2]>>,
    pid: u32,
    metrics: Arc<TargetMetrics>,
    tallies: Vec<NativeTally>,
}

impl NativeCollector {
    pub fn new(
        counts: PerCpuArray<MapData, u64>,
        own_code: Array<MapData, [u64; 2]>,
        plan: NativePlan,
        pid: u32,
        metrics: Arc<TargetMetrics>,
    ) -> Self {
        let tallies = vec![NativeTally::default(); plan.allocators.len()];
        let own_code = (!plan.own_code_complete()).then_some(own_code);
        let collector = Self {
            counts,
            plan,
            own_code,
            pid,
            metrics,
            tallies,
        };
        // The series from the start: a dashboard shows 0 rather than no data.
        collector.export();
        collector
    }

    /// Read every `READ_EVERY` until `stop` resolves, then once more.
    pub async fn run_until(mut self, stop: impl std::future::Future<Output = ()>) -> Self {
        tokio::pin!(stop);
        let mut ticks = tokio::time::interval(READ_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = ticks.tick() => self.read(false),
            }
        }
        self
    }

    /// Take the counts whose share of the target's work is settled; `last`: take them all,
    /// with the share predicted if an on part still counts.
    pub fn read(&mut self, last: bool) {
        let own = self.metrics.own_cpu().clone();
        own.measure(|| self.read_counts(last));
    }

    fn read_counts(&mut self, last: bool) {
        if let Some(table) = self.own_code.as_mut()
            && self.plan.refresh_own_code(self.pid, table)
        {
            self.own_code = None;
        }
        let coverage = self.metrics.coverage();
        let settled = coverage.settled(HIT_NATIVE);
        if settled.is_none() && !last {
            return;
        }
        let fraction =
            settled.map_or_else(|| coverage.fraction(HIT_NATIVE), |settled| settled.fraction);
        match NativeCounts::read(&self.counts, self.tallies.len()) {
            Ok(counts) => {
                for (tally, now) in self.tallies.iter_mut().zip(&counts) {
                    tally.take(now, fraction);
                }
            }
            Err(error) => {
                tracing::warn!(
                    "PID {}: reading native allocation counts: {error}",
                    self.pid
                );
                return;
            }
        }
        if let Some(settled) = settled {
            coverage.taken(HIT_NATIVE, settled);
        }
        self.export();
    }

    fn export(&self) {
        for (tally, allocator) in self.tallies.iter().zip(&self.plan.allocators) {
            let mut estimate = tally.estimate.clone();
            if estimate.sizes.is_empty() {
                estimate.add_sizes(1, 0.0);
                estimate.coverage = self.metrics.coverage().fraction(HIT_NATIVE);
            }
            self.metrics
                .native_allocated(allocator.kind.label(), estimate);
        }
    }

    /// Each allocator's totals, for the exit summary.
    pub fn summary(&self) -> Vec<NativeSummary> {
        self.tallies
            .iter()
            .zip(&self.plan.allocators)
            .map(|(tally, allocator)| NativeSummary {
                allocator: allocator.kind.label(),
                object: allocator.object.clone(),
                tally: tally.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(objects: u64, bytes: u64, frees: u64) -> NativeCounts {
        NativeCounts {
            objects,
            bytes,
            frees,
            sizes: vec![(1, 0), (2, 0), (4, 0), (8, 0), (16, objects)],
            ..NativeCounts::default()
        }
    }

    #[test]
    fn each_take_is_scaled_by_the_share_its_counts_saw() {
        let mut tally = NativeTally::default();
        // All of the work seen: 10 allocations of 16 bytes.
        tally.take(&counts(10, 160, 4), 1.0);
        assert_eq!(tally.estimate.objects, 10.0);
        assert_eq!(tally.estimate.coverage, 1.0);
        // Then 20 more, seen a quarter of the time: they stand for 80.
        tally.take(&counts(30, 480, 4), 0.25);
        assert_eq!(tally.estimate.objects, 90.0);
        assert_eq!(tally.estimate.bytes, 160.0 + 320.0 * 4.0);
        assert_eq!(tally.estimate.frees, 4.0);
        // 16-byte allocations are in the le=16 bucket, 8 B doubling: the second.
        assert_eq!(tally.estimate.sizes[1], 90.0);
        // 34 of 94 events counted.
        assert!((tally.estimate.coverage - 34.0 / 94.0).abs() < 1e-12);
    }

    #[test]
    fn counts_that_did_not_move_add_nothing() {
        let mut tally = NativeTally::default();
        tally.take(&counts(5, 50, 5), 0.5);
        let before = tally.estimate.clone();
        tally.take(&counts(5, 50, 5), 0.1);
        assert_eq!(tally.estimate.objects, before.objects);
        assert_eq!(tally.estimate.sizes, before.sizes);
    }
}
