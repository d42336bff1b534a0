//! The probes' own counters (per-CPU arrays of an eBPF object): hits by probe family and events
//! the programs could not count, exported as their increase since the last export.
use aya::maps::{MapData, PerCpuArray};
use profiler_common::counters;

use crate::export::metrics::TargetMetrics;

pub struct ProbeCounters {
    hits: PerCpuArray<MapData, u64>,
    /// Totals already exported, to export only the increase.
    hits_seen: [u64; counters::HIT_KINDS as usize],
    lost: PerCpuArray<MapData, u64>,
    lost_seen: [u64; counters::COUNT as usize],
}

impl ProbeCounters {
    /// `hits`: `PROBE_HITS`, by `counters::HIT_*`; `lost`: `PROBE_COUNTERS`, by the other
    /// `counters` constants.
    pub fn new(hits: PerCpuArray<MapData, u64>, lost: PerCpuArray<MapData, u64>) -> Self {
        Self {
            hits,
            hits_seen: [0; counters::HIT_KINDS as usize],
            lost,
            lost_seen: [0; counters::COUNT as usize],
        }
    }

    /// Each family's hits as of the last `export`.
    pub fn hit_totals(&self) -> &[u64] {
        &self.hits_seen
    }

    /// Add what the kernel counted since the last call to `mapscope_probe_hits_total` and
    /// `mapscope_probe_events_dropped_total`.
    pub fn export(&mut self, metrics: &TargetMetrics) {
        each_increase(&self.hits, &mut self.hits_seen, |kind, increase| {
            metrics.probe_hits(counters::HIT_NAMES[kind], increase);
        });
        each_increase(&self.lost, &mut self.lost_seen, |kind, increase| {
            metrics.dropped(counters::NAMES[kind], increase);
        });
    }
}

/// For each slot of `array` whose total over CPUs grew past `seen`, the slot and the growth.
pub fn each_increase(
    array: &PerCpuArray<MapData, u64>,
    seen: &mut [u64],
    mut export: impl FnMut(usize, u64),
) {
    for (index, seen) in (0u32..).zip(seen.iter_mut()) {
        let Ok(per_cpu) = array.get(&index, 0) else {
            continue;
        };
        let total: u64 = per_cpu.iter().sum();
        if total > *seen {
            export(index as usize, total - *seen);
            *seen = total;
        }
    }
}
