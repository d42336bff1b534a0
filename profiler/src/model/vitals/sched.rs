//! The scheduler's figures: the goroutine count as `gcount()` makes it, and the scheduling
//! latency histogram summed into Prometheus buckets.

/// What `gcount()` adds up (src/runtime/proc.go).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GoroutineCounts {
    /// `allglen`: goroutines ever made (live, dead or free).
    pub allglen: u64,
    /// Free goroutines held by the scheduler, and by each P.
    pub sched_free: Vec<i32>,
    pub p_free: Vec<i32>,
    /// `sched.ngsys`, where the release leaves system goroutines out.
    pub system: Option<i32>,
}

impl GoroutineCounts {
    /// `gcount()`: in int32 as the runtime computes it, and at least 1 ("at least the current
    /// goroutine is running").
    pub fn count(&self) -> i32 {
        let mut n = self.allglen as i32;
        for free in self.sched_free.iter().chain(&self.p_free) {
            n = n.wrapping_sub(*free);
        }
        if let Some(system) = self.system {
            n = n.wrapping_sub(system);
        }
        n.max(1)
    }
}

/// How a release keeps a `runtime.timeHistogram` (src/runtime/histogram.go).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeHistogramLayout {
    /// Go 1.19: `counts [45 * 16]uint64; underflow uint64`.
    Go119,
    /// Go 1.21 and later: `counts [40 * 4]atomic.Uint64; underflow, overflow atomic.Uint64`.
    Go121,
}

impl TimeHistogramLayout {
    /// How many `uint64` words the histogram is: its counts, then underflow (and overflow).
    pub fn words(self) -> usize {
        match self {
            Self::Go119 => 45 * 16 + 1,
            Self::Go121 => 40 * 4 + 2,
        }
    }

    /// The bucket edges runtime/metrics gives this histogram, in seconds, as
    /// `timeHistogramMetricsBuckets` computes them: `words() + 1` edges from -Inf to +Inf.
    /// Bucket `i` is `[edge i, edge i+1)`; the first holds the underflow, and (Go 1.21+) the
    /// last the overflow.
    pub fn edges(self) -> Vec<f64> {
        let mut edges = vec![f64::NEG_INFINITY];
        match self {
            Self::Go119 => {
                // timeHistSubBucketBits = 4, timeHistNumSuperBuckets = 45.
                edges.extend((0..16u64).map(|j| j as f64 / 1e9));
                for i in 0..44u64 {
                    for j in 0..16u64 {
                        edges.push(((1u64 << (i + 4)) | (j << i)) as f64 / 1e9);
                    }
                }
            }
            Self::Go121 => {
                // timeHistMinBucketBits = 9, timeHistMaxBucketBits = 48,
                // timeHistSubBucketBits = 2.
                edges.extend((0..4u64).map(|j| (j << 6) as f64 / 1e9));
                for i in 9..48u64 {
                    for j in 0..4u64 {
                        edges.push(((1u64 << (i - 1)) | (j << (i - 3))) as f64 / 1e9);
                    }
                }
                edges.push((1u64 << 47) as f64 / 1e9);
            }
        }
        edges.push(f64::INFINITY);
        edges
    }

    /// The runtime/metrics counts (underflow first, then the counts, then any overflow) from
    /// the histogram's words as they lie in memory (counts first).
    pub fn metric_counts(self, words: &[u64]) -> Vec<u64> {
        let counts = match self {
            Self::Go119 => 45 * 16,
            Self::Go121 => 40 * 4,
        };
        let mut out = Vec::with_capacity(words.len());
        out.extend(words.get(counts).copied());
        out.extend(words.iter().take(counts).copied());
        if self == Self::Go121 {
            out.extend(words.get(counts + 1).copied());
        }
        out
    }
}

/// The upper bounds mapscope exports scheduling latencies in (seconds): powers of two
/// nanoseconds from 256 ns to 68.7 s, each an edge of the runtime's own buckets on every
/// release, so each cumulative count is a sum of whole runtime buckets, exactly.
pub fn latency_bounds() -> Vec<f64> {
    (8..=36).map(|bits| (1u64 << bits) as f64 / 1e9).collect()
}

/// A runtime histogram summed into `bounds` (Prometheus's cumulative `le` buckets, +Inf
/// implied): the count of runtime buckets whose upper edge is at or below each bound. The sum
/// is a lower bound, each observation at its bucket's lower edge (at least 0): the runtime keeps
/// none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cumulative {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

pub fn cumulative(edges: &[f64], counts: &[u64], bounds: &[f64]) -> Cumulative {
    let mut out = Cumulative::default();
    let mut bucket = 0;
    for &bound in bounds {
        while bucket < counts.len() && edges.get(bucket + 1).is_some_and(|&upper| upper <= bound) {
            out.count = out.count.saturating_add(counts[bucket]);
            bucket += 1;
        }
        out.buckets.push((bound, out.count));
    }
    out.count = counts
        .iter()
        .fold(0u64, |total, &count| total.saturating_add(count));
    out.sum = counts
        .iter()
        .zip(edges)
        .map(|(&count, &lower)| count as f64 * lower.max(0.0))
        .sum();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The edges are runtime/metrics' (`timeHistogramMetricsBuckets`, Go 1.19 and 1.21+):
    /// increasing, one more than the words, and every exported bound is one of them.
    #[test]
    fn latency_histogram_edges_are_the_runtimes() {
        for (layout, words) in [
            (TimeHistogramLayout::Go119, 721),
            (TimeHistogramLayout::Go121, 162),
        ] {
            let edges = layout.edges();
            assert_eq!(layout.words(), words);
            assert_eq!(edges.len(), words + 1);
            assert!(edges.windows(2).all(|pair| pair[0] < pair[1]), "{layout:?}");
            for bound in latency_bounds() {
                assert!(edges.contains(&bound), "{layout:?}: {bound}");
            }
        }
        let go121 = TimeHistogramLayout::Go121.edges();
        // [0, 64 ns), [64, 128), …, then 256 ns with four sub-buckets per power of two.
        assert_eq!(&go121[1..7], &[0.0, 64e-9, 128e-9, 192e-9, 256e-9, 320e-9]);
        assert_eq!(go121[161], (1u64 << 47) as f64 / 1e9);
        let go119 = TimeHistogramLayout::Go119.edges();
        assert_eq!(&go119[1..4], &[0.0, 1e-9, 2e-9]);
        assert_eq!(go119[17], 16e-9);
        // Counts in memory: the buckets, then underflow (and overflow); runtime/metrics puts
        // underflow first.
        let words: Vec<u64> = (0..162).collect();
        let counts = TimeHistogramLayout::Go121.metric_counts(&words);
        assert_eq!(counts.len(), 162);
        assert_eq!((counts[0], counts[1], counts[161]), (160, 0, 161));
    }

    #[test]
    fn histograms_sum_into_the_bounds_exactly() {
        // Buckets [-inf, 0), [0, 1), [1, 2), [2, 4), [4, inf).
        let edges = [f64::NEG_INFINITY, 0.0, 1.0, 2.0, 4.0, f64::INFINITY];
        let counts = [1, 2, 3, 4, 5];
        let out = cumulative(&edges, &counts, &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(out.buckets, vec![(1.0, 3), (2.0, 6), (3.0, 6), (4.0, 10)]);
        assert_eq!(out.count, 15);
        // Each at its lower edge, negatives at 0.
        assert_eq!(out.sum, 3.0 + 8.0 + 20.0);
    }
}
