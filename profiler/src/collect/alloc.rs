//! Sampled allocations: the kernel's (stack, size) sample counts → estimated allocated bytes and
//! objects, scaled as pprof scales the runtime's heap profile.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use aya::maps::{MapData, PerCpuHashMap};
use profiler_common::alloc::AllocKey;

use crate::{
    export::metrics::TargetMetrics,
    model::alloc::{AllocTotals, estimate},
    probes::loaded::AllocMaps,
};

/// How often the kernel's counts are read (a Prometheus scrape interval is 15 s or more).
const READ_INTERVAL: Duration = Duration::from_secs(1);

pub struct AllocCollector {
    samples: PerCpuHashMap<MapData, AllocKey, u64>,
    /// Reads the target's `runtime.MemProfileRate`.
    rate: Box<dyn FnMut() -> Option<i64> + Send>,
    metrics: Arc<TargetMetrics>,
    exported: AllocTotals,
    /// The last rate read, kept for when the target has gone (the final read after exit).
    last_rate: Option<i64>,
    warned_rate: Option<i64>,
}

impl AllocCollector {
    pub fn new(
        maps: AllocMaps,
        rate: Box<dyn FnMut() -> Option<i64> + Send>,
        metrics: Arc<TargetMetrics>,
    ) -> Self {
        Self {
            samples: maps.samples,
            rate,
            metrics,
            exported: AllocTotals::default(),
            last_rate: None,
            warned_rate: None,
        }
    }

    pub async fn run_until(&mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(READ_INTERVAL);
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = tick.tick() => self.read(),
            }
        }
        self.read();
    }

    /// Re-read every count and export what grew.
    pub fn read(&mut self) {
        let rate = (self.rate)().or(self.last_rate);
        self.last_rate = rate;
        let rate = match rate {
            Some(rate) if rate > 0 => rate,
            other => {
                if self.warned_rate != Some(other.unwrap_or(-1)) {
                    self.warned_rate = Some(other.unwrap_or(-1));
                    match other {
                        Some(0) => tracing::warn!(
                            "the target set runtime.MemProfileRate to 0, which turns the runtime's \
                             allocation sampling off: mapscope sees no allocations"
                        ),
                        _ => tracing::warn!(
                            "cannot read the target's runtime.MemProfileRate (stripped binary?); \
                             assuming the runtime default of 512 KiB: allocation estimates are \
                             wrong if the program changed it"
                        ),
                    }
                }
                match other {
                    Some(0) => {
                        self.metrics.allocated(&self.exported, &self.exported, 0);
                        return;
                    }
                    _ => crate::gobin::abi::DEFAULT_MEM_PROFILE_RATE,
                }
            }
        };
        let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
        for entry in self.samples.iter() {
            let Ok((key, per_cpu)) = entry else { continue };
            *counts.entry(key.size).or_default() += per_cpu.iter().sum::<u64>();
        }
        let totals = estimate(&counts, rate);
        self.metrics.allocated(&self.exported, &totals, rate);
        self.exported = totals;
    }
}
