//! Scaling the runtime's allocation samples into estimates, as pprof does.
//!
//! The runtime samples an allocation of `size` bytes with probability `1 - e^(-size/rate)`
//! (a Poisson process with mean `rate` = `runtime.MemProfileRate` bytes between samples), so each
//! sample stands for `1 / (1 - e^(-size/rate))` allocations of that size
//! (src/runtime/pprof/protomem.go `scaleHeapSample`).
use std::collections::BTreeMap;

/// What was allocated while mapscope watched, for the exit summary: estimates from the samples,
/// and the sites that allocated the most bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AllocSummary {
    pub objects: f64,
    pub bytes: f64,
    /// Counted by mapscope's own probes (the runtime samples nothing), not from the runtime's
    /// samples.
    pub counted: bool,
    /// Biggest first.
    pub top_sites: Vec<(super::sites::Site, f64)>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AllocTotals {
    pub samples: u64,
    pub objects: f64,
    pub bytes: f64,
}

/// How many allocations one sample of `size` bytes stands for.
pub fn scale(size: u64, rate: i64) -> f64 {
    if size == 0 || rate <= 1 {
        return 1.0;
    }
    1.0 / (1.0 - (-(size as f64) / rate as f64).exp())
}

/// Estimated totals from sample counts by size (scaled by the probe's coverage, so not whole
/// numbers when the overhead governor cycles the probe; `samples` counts them rounded).
pub fn estimate(counts_by_size: &BTreeMap<u64, f64>, rate: i64) -> AllocTotals {
    let mut totals = AllocTotals::default();
    for (&size, &count) in counts_by_size {
        let objects = count * scale(size, rate);
        totals.samples += count.round() as u64;
        totals.objects += objects;
        totals.bytes += objects * size as f64;
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_matches_pprof() {
        let rate = 512 * 1024;
        // A sample of the rate's own size stands for 1/(1-1/e) allocations.
        assert!((scale(rate as u64, rate) - 1.0 / (1.0 - (-1.0f64).exp())).abs() < 1e-12);
        // Small objects: about rate/size allocations per sample.
        assert!((scale(64, rate) - rate as f64 / 64.0).abs() / (rate as f64 / 64.0) < 1e-3);
        // Huge ones are always sampled.
        assert!((scale(1 << 30, rate) - 1.0).abs() < 1e-9);
        // Rate 1 samples everything.
        assert_eq!(scale(64, 1), 1.0);
    }

    #[test]
    fn estimates_add_up_by_size() {
        let rate = 512 * 1024;
        let counts = BTreeMap::from([(64, 10.0), (4096, 3.0)]);
        let totals = estimate(&counts, rate);
        assert_eq!(totals.samples, 13);
        let objects = 10.0 * scale(64, rate) + 3.0 * scale(4096, rate);
        assert!((totals.objects - objects).abs() < 1e-6);
        let bytes = 10.0 * scale(64, rate) * 64.0 + 3.0 * scale(4096, rate) * 4096.0;
        assert!((totals.bytes - bytes).abs() < 1e-3);
    }
}
