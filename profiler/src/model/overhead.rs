//! What mapscope costs a target, as shares of the target's own CPU time over a trailing window:
//! the time its threads spent in mapscope's probes (estimated from hits × the cost of a hit),
//! and the CPU mapscope itself spent on it (reading, symbolizing, snapshotting).
use std::{collections::VecDeque, time::Duration};

use profiler_common::counters::HIT_KINDS;

/// How far back the exported ratios look.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Cumulative costs of one target at one moment, all in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CostReading {
    /// When, as time since the meter started.
    pub at: Duration,
    /// CPU time the target used (user + system, all its threads; probe time included, as the
    /// kernel runs uprobes in the probed thread).
    pub target_cpu_ns: f64,
    /// CPU time mapscope spent for this target.
    pub own_cpu_ns: f64,
    /// Estimated CPU time the target spent in each probe family (`counters::HIT_*`).
    pub probe_ns: [f64; HIT_KINDS as usize],
}

/// Shares of the target's CPU time between two readings.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CostRatios {
    pub probes: [f64; HIT_KINDS as usize],
    pub own: f64,
}

impl CostRatios {
    /// Everything mapscope costs the target: its probes and its own work.
    pub fn total(&self) -> f64 {
        self.probes.iter().sum::<f64>() + self.own
    }

    /// `to - from` as shares of the target's CPU in between; `None` when the target used none
    /// (an idle target costs nothing, and 0/0 is no ratio).
    pub fn between(from: &CostReading, to: &CostReading) -> Option<Self> {
        let target = to.target_cpu_ns - from.target_cpu_ns;
        if target <= 0.0 {
            return None;
        }
        let mut probes = [0.0; HIT_KINDS as usize];
        for (share, (to, from)) in probes
            .iter_mut()
            .zip(to.probe_ns.iter().zip(&from.probe_ns))
        {
            *share = (to - from).max(0.0) / target;
        }
        Some(Self {
            probes,
            own: (to.own_cpu_ns - from.own_cpu_ns).max(0.0) / target,
        })
    }
}

/// What a whole session cost the target, for the exit summary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CostSummary {
    pub ratios: CostRatios,
    /// The cost of one hit of each family, as last estimated.
    pub hit_cost_ns: [f64; HIT_KINDS as usize],
}

/// Readings of the last `WINDOW` (and the one just before, so the window is always whole).
#[derive(Debug, Default)]
pub struct CostWindow {
    readings: VecDeque<CostReading>,
}

impl CostWindow {
    pub fn push(&mut self, reading: CostReading) {
        self.readings.push_back(reading);
        // Keep the newest reading at least WINDOW old as the window's start.
        while self.readings.len() > 2 && self.readings[1].at + WINDOW <= reading.at {
            self.readings.pop_front();
        }
    }

    /// The time between the window's first and last readings.
    pub fn span(&self) -> Duration {
        match (self.readings.front(), self.readings.back()) {
            (Some(first), Some(last)) => last.at.saturating_sub(first.at),
            _ => Duration::ZERO,
        }
    }

    /// The shares over the window (shorter right after attach).
    pub fn ratios(&self) -> Option<CostRatios> {
        CostRatios::between(self.readings.front()?, self.readings.back()?)
    }
}

/// What one hit of a family costs: the kernel's trap (calibrated on this machine) plus the
/// mean run time of the family's programs (the kernel's own statistics), when known.
pub fn hit_cost_ns(trap_ns: f64, program: Option<ProgramRuns>) -> f64 {
    trap_ns + program.map_or(0.0, |runs| runs.mean_ns())
}

/// Run time and runs of a family's programs, as the kernel counts them while its statistics
/// are on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramRuns {
    pub run_time_ns: u64,
    pub runs: u64,
}

impl ProgramRuns {
    pub fn sum<'a>(runs: impl IntoIterator<Item = &'a ProgramRuns>) -> Self {
        runs.into_iter().fold(Self::default(), |sum, runs| Self {
            run_time_ns: sum.run_time_ns + runs.run_time_ns,
            runs: sum.runs + runs.runs,
        })
    }

    pub fn mean_ns(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.run_time_ns as f64 / self.runs as f64
        }
    }
}

/// A slice of a statistics window whose programs ran this many times slower per run than the
/// window's median was interrupted (see `without_interrupted`).
const INTERRUPTED: f64 = 4.0;

/// A family's runs over one statistics window, read in slices: the sum of the slices, less
/// those whose mean run is `INTERRUPTED` times the median's (by runs), when there are three
/// slices with runs or more to tell the median by.
///
/// The kernel times each run from its start to its end, so an interrupt taken during a run (a
/// network softirq can take hundreds of microseconds) counts as the program's time. A program
/// of one microsecond run a hundred times a window would read ten times its cost for one such
/// run: the time is the interrupt's, which the target would have paid anyway.
pub fn without_interrupted(slices: &[ProgramRuns]) -> ProgramRuns {
    let mut ran: Vec<&ProgramRuns> = slices.iter().filter(|slice| slice.runs > 0).collect();
    if ran.len() < 3 {
        return ProgramRuns::sum(ran);
    }
    ran.sort_by(|a, b| a.mean_ns().total_cmp(&b.mean_ns()));
    let half = ran.iter().map(|slice| slice.runs).sum::<u64>().div_ceil(2);
    let mut counted = 0;
    let median = ran
        .iter()
        .find(|slice| {
            counted += slice.runs;
            counted >= half
        })
        .map_or(0.0, |slice| slice.mean_ns());
    ProgramRuns::sum(
        ran.into_iter()
            .filter(|slice| slice.mean_ns() <= INTERRUPTED * median),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::counters::{HIT_ALLOC, HIT_STW};

    fn reading(seconds: u64, target_ms: f64, own_ms: f64, alloc_ms: f64) -> CostReading {
        let mut probe_ns = [0.0; HIT_KINDS as usize];
        probe_ns[HIT_ALLOC as usize] = alloc_ms * 1e6;
        CostReading {
            at: Duration::from_secs(seconds),
            target_cpu_ns: target_ms * 1e6,
            own_cpu_ns: own_ms * 1e6,
            probe_ns,
        }
    }

    fn runs(run_time_ns: u64, runs: u64) -> ProgramRuns {
        ProgramRuns { run_time_ns, runs }
    }

    #[test]
    fn an_interrupted_slice_is_left_out_of_the_mean() {
        // Four slices of 1 µs runs, one with a 500 µs interrupt in one of its 4 runs.
        let slices = [
            runs(4_000, 4),
            runs(0, 0),
            runs(504_000, 4),
            runs(5_000, 5),
            runs(3_000, 3),
        ];
        assert_eq!(without_interrupted(&slices), runs(12_000, 12));
        // Slices merely slower (a busy cache) stay: the mean is the programs' real cost.
        let slices = [runs(4_000, 4), runs(10_000, 4), runs(5_000, 5)];
        assert_eq!(without_interrupted(&slices), runs(19_000, 13));
        // With fewer than three slices there is no median to tell by: all count.
        let slices = [runs(4_000, 4), runs(504_000, 4), runs(0, 0)];
        assert_eq!(without_interrupted(&slices), runs(508_000, 8));
        assert_eq!(without_interrupted(&[]), ProgramRuns::default());
        // The median is by runs: one busy slice of 2 µs runs outweighs two quiet ones of 1 µs.
        let slices = [runs(1_000, 1), runs(1_000, 1), runs(200_000, 100)];
        assert_eq!(without_interrupted(&slices), runs(202_000, 102));
    }

    #[test]
    fn ratios_are_shares_of_the_target_cpu_between_two_readings() {
        let ratios = CostRatios::between(
            &reading(0, 1000.0, 10.0, 5.0),
            &reading(10, 3000.0, 30.0, 45.0),
        )
        .unwrap();
        assert!((ratios.probes[HIT_ALLOC as usize] - 0.02).abs() < 1e-12);
        assert_eq!(ratios.probes[HIT_STW as usize], 0.0);
        assert!((ratios.own - 0.01).abs() < 1e-12);
        assert!((ratios.total() - 0.03).abs() < 1e-12);
        // An idle target: no ratio rather than a division by zero.
        assert_eq!(
            CostRatios::between(
                &reading(0, 1000.0, 0.0, 0.0),
                &reading(10, 1000.0, 1.0, 0.0)
            ),
            None
        );
    }

    #[test]
    fn the_window_keeps_the_last_minute_whole() {
        let mut window = CostWindow::default();
        assert_eq!(window.ratios(), None);
        // A heavy first minute, then a quiet one: the ratio forgets the first.
        for second in 0..=60 {
            let s = second as f64;
            window.push(reading(second, s * 100.0, 0.0, s * 10.0));
        }
        let heavy = window.ratios().unwrap().probes[HIT_ALLOC as usize];
        assert!((heavy - 0.1).abs() < 1e-12, "{heavy}");
        for second in 61..=130 {
            let s = second as f64;
            window.push(reading(second, s * 100.0, 0.0, 600.0));
        }
        let quiet = window.ratios().unwrap().probes[HIT_ALLOC as usize];
        assert_eq!(quiet, 0.0);
        // It spans a minute (61 readings a second apart), not less.
        assert_eq!(window.readings.len(), 61);
        assert_eq!(
            window.readings.back().unwrap().at - window.readings.front().unwrap().at,
            WINDOW
        );
    }

    #[test]
    fn a_hit_costs_the_trap_plus_the_programs_mean_run_time() {
        assert_eq!(hit_cost_ns(1500.0, None), 1500.0);
        let runs = ProgramRuns {
            run_time_ns: 3000,
            runs: 10,
        };
        assert_eq!(hit_cost_ns(1500.0, Some(runs)), 1800.0);
        assert_eq!(hit_cost_ns(1500.0, Some(ProgramRuns::default())), 1500.0);
    }
}
