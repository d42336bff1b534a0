//! A log-linear histogram of nanosecond durations for the terminal summary's quantiles.
//!
//! Each power of two is split into 16 equal buckets, so a quantile is within 1/32 (about 3%)
//! of a recorded value, at a fixed 8 KiB per histogram whatever the range (1 ns to 584 years).
const SUB_BUCKET_BITS: u32 = 4;
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
const BUCKETS: usize = 64 * SUB_BUCKETS;

#[derive(Clone, Debug)]
pub struct LogLinearHistogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    min: u64,
    max: u64,
}

impl Default for LogLinearHistogram {
    fn default() -> Self {
        Self {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

fn bucket_of(value: u64) -> usize {
    let value = value.max(1);
    let octave = 63 - value.leading_zeros();
    let sub = if octave >= SUB_BUCKET_BITS {
        (value >> (octave - SUB_BUCKET_BITS)) as usize
    } else {
        (value << (SUB_BUCKET_BITS - octave)) as usize
    } & (SUB_BUCKETS - 1);
    octave as usize * SUB_BUCKETS + sub
}

/// Lower bound and width of a bucket.
fn bucket_bounds(index: usize) -> (f64, f64) {
    let octave = (index / SUB_BUCKETS) as i32;
    let sub = (index % SUB_BUCKETS) as f64;
    let base = 2f64.powi(octave);
    let width = base / SUB_BUCKETS as f64;
    (base + sub * width, width)
}

impl LogLinearHistogram {
    pub fn record(&mut self, value: u64) {
        self.counts[bucket_of(value)] += 1;
        self.total += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max)
    }

    /// The value below which a fraction `q` (0..=1) of the recorded values fall: the middle of
    /// the bucket holding that rank, kept within the exact minimum and maximum.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, width) = bucket_bounds(index);
                let middle = (low + width / 2.0) as u64;
                return Some(middle.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_contain_their_values() {
        let mut previous = 0;
        for value in (1..5000u64).chain([1 << 20, (1 << 40) + 12345, u64::MAX]) {
            let index = bucket_of(value);
            assert!(
                index >= previous,
                "bucket index must not decrease at {value}"
            );
            previous = index;
            let (low, width) = bucket_bounds(index);
            let v = value as f64;
            assert!(
                low <= v && v < low + width * 1.000001,
                "{value} not in [{low}, {})",
                low + width
            );
        }
    }

    #[test]
    fn quantiles_are_within_three_percent() {
        let mut histogram = LogLinearHistogram::default();
        for value in 1..=10_000u64 {
            histogram.record(value * 1000);
        }
        for (q, exact) in [(0.5, 5_000_000.0), (0.99, 9_900_000.0), (0.01, 100_000.0)] {
            let got = histogram.quantile(q).unwrap() as f64;
            assert!(
                (got - exact).abs() / exact < 0.032,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(histogram.quantile(1.0), Some(10_000_000));
        assert_eq!(histogram.max(), Some(10_000_000));
        assert_eq!(histogram.count(), 10_000);
    }

    #[test]
    fn single_value_and_empty() {
        let mut histogram = LogLinearHistogram::default();
        assert_eq!(histogram.quantile(0.5), None);
        histogram.record(12_345);
        assert_eq!(histogram.quantile(0.5), Some(12_345));
        assert_eq!(histogram.quantile(0.99), Some(12_345));
    }
}
