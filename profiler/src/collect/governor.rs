//! The overhead governor of one target: holds what its costly probe families cost it within
//! `--max-overhead` by taking their probes off for part of the time (`model::governor` decides
//! how much), and tells the collectors what share of the target's work each family's counts
//! saw, so that every estimate it feeds is scaled back up (`Coverage`).
//!
//! Each governed family is either attached all the time (duty 1) or cycles: off, then on,
//! the time on being its duty of the cycle. Removing a uprobe takes the kernel from 0.1 s to
//! seconds on a busy machine, one probe after another, and installing them one after another
//! too: so the family's programs are told to stop counting before its probes come off, and to
//! start once they are all back (`FAMILY_PAUSED`): the time counted is exactly the time
//! between those two switches.
//!
//! A cycle's counts are scaled by the share of the target's own work they saw, known when its
//! on part starts: the time on against the time off, each weighted by how fast the target
//! worked then (its CPU time per second, the probes' cost taken out, measured while on last
//! time and while off just now). For a service paced by its clients that is the duty; for a
//! program running flat out, which does less of its work while the probes cost it, less.
//! The next cycle's duty comes from what the family cost while on. When that fits the budget
//! again, the family stays attached.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData, PerCpuArray};
use profiler_common::counters::{HIT_KINDS, HIT_NAMES};
use tokio::sync::watch;

use super::overhead::MeterReading;
use crate::{
    export::metrics::TargetMetrics, model::governor::duty_cycles, probes::loaded::WindowedProbes,
};

/// How long a cycling family stays attached each cycle at most (its cost is measured
/// meanwhile), and at least: enough to measure it, and to amortize the removal.
const MAX_ON: Duration = Duration::from_secs(4);
const MIN_ON: Duration = Duration::from_millis(500);
/// The longest cycle: a family at a low duty is attached for less time rather than waiting
/// longer, so that a drop in load is seen within this long.
const MAX_PERIOD: Duration = Duration::from_secs(8);
/// How often a family attached all the time has its cost checked against the budget, and
/// (until a check could measure it) tried again: the first check comes soon after attach, so
/// a family over the budget is not left on for long.
const EVALUATE_EVERY: Duration = Duration::from_secs(2);
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// A measurement divides by at least this much of the target's CPU time: a target that used
/// less (idle, or a short window) costs too little in absolute terms to cut, and its share
/// would be noise.
const MIN_MEASURED_CPU_NS: u64 = 20_000_000;
/// The shortest window of the meter's whose fixed costs count (`Governor::fixed_share`).
const MIN_FIXED_SPAN: Duration = Duration::from_secs(10);

/// The share of the target's work each probe family's counts see now (1 for those never cut,
/// and for governed ones attached all the time): what the collectors divide the counts of a
/// family by. Shared by a target's collectors.
#[derive(Clone, Debug)]
pub struct Coverage(Arc<[AtomicU64; HIT_KINDS as usize]>);

impl Default for Coverage {
    fn default() -> Self {
        Self(Arc::new(std::array::from_fn(|_| {
            AtomicU64::new(1.0_f64.to_bits())
        })))
    }
}

impl Coverage {
    pub fn fraction(&self, family: u32) -> f64 {
        self.0
            .get(family as usize)
            .map_or(1.0, |slot| f64::from_bits(slot.load(Ordering::Relaxed)))
    }

    fn set(&self, family: u32, fraction: f64) {
        if let Some(slot) = self.0.get(family as usize) {
            slot.store(fraction.to_bits(), Ordering::Relaxed);
        }
    }
}

enum Phase {
    /// Attached all the time; cost checked at `next`.
    Continuous { next: Instant },
    /// Counting until `until`.
    On { until: Instant },
    /// Not counting since `since` (probes removed) until `until`; then on for `on`.
    Off {
        since: Instant,
        until: Instant,
        on: Duration,
    },
}

/// A family's hits and the target's CPU time at the start of a measurement.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    hits: u64,
    cpu_ns: u64,
}

struct Governed {
    family: u32,
    probes: WindowedProbes,
    phase: Phase,
    /// The fraction of the time it is on (1 when attached all the time).
    duty: f64,
    /// Where the measurement of what the family costs while on started, and where the off
    /// part of its cycle started.
    mark: Option<Mark>,
    off_mark: Option<Mark>,
    /// The last share measured, for sharing the budget with the other families.
    last_share: Option<f64>,
    /// How long removing its probes took last time: a cycle's off part must be longer.
    last_removal: Duration,
    /// The target's CPU time per second doing its own work (the probes' cost taken out) while
    /// the family was last on, and while it was last off.
    on_rate: Option<f64>,
    off_rate: Option<f64>,
}

pub struct Governor {
    pid: u32,
    budget: f64,
    families: Vec<Governed>,
    /// The probes' hit counters, by family (a handle of the governor's own).
    hits: PerCpuArray<MapData, u64>,
    /// Whether each family's programs count (0) or not (1).
    paused: Array<MapData, u32>,
    /// The target's series; its `coverage()` and `own_cpu()` are the governor's too.
    metrics: Arc<TargetMetrics>,
    /// The target's cost meter: the cost of a hit, and what the rest costs.
    readings: watch::Receiver<Option<MeterReading>>,
}

impl Governor {
    /// `families`: each governed family's probes, attached now; `hits`: `PROBE_HITS`;
    /// `paused`: `FAMILY_PAUSED`.
    pub fn new(
        pid: u32,
        budget: f64,
        families: Vec<(u32, WindowedProbes)>,
        hits: PerCpuArray<MapData, u64>,
        paused: Array<MapData, u32>,
        metrics: Arc<TargetMetrics>,
        readings: watch::Receiver<Option<MeterReading>>,
    ) -> Self {
        let now = Instant::now();
        let families = families
            .into_iter()
            .map(|(family, probes)| {
                metrics.duty_cycle(HIT_NAMES[family as usize], 1.0);
                Governed {
                    family,
                    probes,
                    phase: Phase::Continuous {
                        next: now + RETRY_EVERY,
                    },
                    duty: 1.0,
                    mark: None,
                    off_mark: None,
                    last_share: None,
                    last_removal: Duration::ZERO,
                    on_rate: None,
                    off_rate: None,
                }
            })
            .collect();
        let mut governor = Self {
            pid,
            budget,
            families,
            hits,
            paused,
            metrics,
            readings,
        };
        for index in 0..governor.families.len() {
            governor.families[index].mark = governor.mark(index);
        }
        governor
    }

    /// Govern until `stop` resolves; the probes are removed when it returns (off the async
    /// workers: removal waits on the kernel).
    pub async fn run_until(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            // Woken when the next phase is due, to the millisecond: an on part's length is
            // what its counts are scaled by.
            let next = self
                .families
                .iter()
                .map(|governed| match governed.phase {
                    Phase::Continuous { next: until }
                    | Phase::On { until }
                    | Phase::Off { until, .. } => until,
                })
                .min()
                .unwrap_or_else(|| Instant::now() + EVALUATE_EVERY);
            tokio::select! {
                biased;
                () = &mut stop => break,
                () = tokio::time::sleep_until(next.into()) => {
                    let now = Instant::now();
                    for index in 0..self.families.len() {
                        let due = match self.families[index].phase {
                            Phase::Continuous { next: until }
                            | Phase::On { until }
                            | Phase::Off { until, .. } => now >= until,
                        };
                        if due {
                            self.advance(index, now);
                        }
                    }
                }
            }
        }
        tokio::task::block_in_place(move || drop(self));
    }

    /// Family `index`'s hits so far and the target's CPU time now.
    fn mark(&self, index: usize) -> Option<Mark> {
        let family = self.families[index].family;
        let hits = self.hits.get(&family, 0).ok()?.iter().sum();
        let cpu_ns = crate::process::cpu::process_cpu_ns(self.pid)?;
        Some(Mark {
            at: Instant::now(),
            hits,
            cpu_ns,
        })
    }

    /// What family `index` cost the target since its mark, as a share of the target's CPU
    /// time (and how fast the target did its own work meanwhile); `None` while the cost of a
    /// hit is not known yet (then the measurement goes on from the same mark).
    fn measure(&mut self, index: usize) -> Option<f64> {
        let start = self.families[index].mark?;
        let end = self.mark(index)?;
        let reading = self.readings.borrow();
        let cost_ns = reading
            .as_ref()?
            .hit_cost_ns
            .get(self.families[index].family as usize)
            .copied()
            .filter(|cost| *cost > 0.0)?;
        drop(reading);
        let used = end.cpu_ns.saturating_sub(start.cpu_ns);
        let probes_ns = end.hits.saturating_sub(start.hits) as f64 * cost_ns;
        let seconds = (end.at - start.at).as_secs_f64();
        let governed = &mut self.families[index];
        if seconds > 0.0 {
            governed.on_rate = Some((used as f64 - probes_ns).max(0.0) / seconds);
        }
        governed.mark = Some(end);
        Some(probes_ns / used.max(MIN_MEASURED_CPU_NS) as f64)
    }

    /// What the families never cut and mapscope's own work cost over the last minute. Not
    /// before `MIN_FIXED_SPAN`: right after attach the window holds mapscope's one-time work
    /// (the first discovery window, the first symbolization) over very little of the target's
    /// time, which would leave the governed families nothing.
    fn fixed_share(&self) -> f64 {
        let reading = self.readings.borrow();
        let Some(reading) = reading
            .as_ref()
            .filter(|reading| reading.span >= MIN_FIXED_SPAN)
        else {
            return 0.0;
        };
        let governed = |family: usize| {
            self.families
                .iter()
                .any(|governed| governed.family as usize == family)
        };
        let probes: f64 = (0..HIT_KINDS as usize)
            .filter(|family| !governed(*family))
            .map(|family| reading.ratios.probes[family])
            .sum();
        probes + reading.ratios.own
    }

    /// The duty family `index` should have, from what it cost while on since its mark, and
    /// whether that could be measured now.
    fn decide(&mut self, index: usize) -> (f64, bool) {
        let share = self.measure(index);
        if share.is_some() {
            self.families[index].last_share = share;
        }
        let shares: Vec<Option<f64>> = self
            .families
            .iter()
            .enumerate()
            .map(|(other, governed)| {
                if other == index {
                    share
                } else {
                    governed.last_share
                }
            })
            .collect();
        let current: Vec<f64> = self.families.iter().map(|governed| governed.duty).collect();
        let fixed = self.fixed_share();
        let duty = duty_cycles(self.budget, fixed, &shares, &current)[index];
        if let Some(share) = share {
            tracing::debug!(
                "PID {}: {} probes cost {:.2}% of the target's CPU while on; the rest {:.2}%: \
                 duty {duty:.3}",
                self.pid,
                HIT_NAMES[self.families[index].family as usize],
                share * 100.0,
                fixed * 100.0
            );
        }
        (duty, share.is_some())
    }

    fn advance(&mut self, index: usize, now: Instant) {
        match self.families[index].phase {
            Phase::Continuous { .. } => {
                let (duty, measured) = self.decide(index);
                if duty >= 1.0 {
                    let wait = if measured {
                        EVALUATE_EVERY
                    } else {
                        RETRY_EVERY
                    };
                    self.families[index].phase = Phase::Continuous { next: now + wait };
                } else {
                    // Over the budget: cycles at `duty` start now.
                    self.take_off(index, duty);
                }
            }
            Phase::On { .. } => {
                let (duty, _) = self.decide(index);
                if duty >= 1.0 {
                    // Within the budget again: it stays attached, counting all the time.
                    self.set_duty(index, 1.0, 1.0);
                    self.families[index].phase = Phase::Continuous {
                        next: now + EVALUATE_EVERY,
                    };
                } else {
                    self.take_off(index, duty);
                }
            }
            Phase::Off { since, on, .. } => self.put_back(index, since, on),
        }
    }

    /// Start a cycle at `duty` for family `index`: stop its programs counting, remove its
    /// probes, and plan the cycle: off for as long as makes its on part (at most `MAX_PERIOD`
    /// × `duty`, within `MIN_ON`..`MAX_ON`, and long enough that the off part outlasts the
    /// probes' removal) `duty` of the whole.
    fn take_off(&mut self, index: usize, duty: f64) {
        let family = self.families[index].family;
        self.pause(family, true);
        let since = Instant::now();
        let own = self.metrics.own_cpu().clone();
        let governed = &mut self.families[index];
        governed.duty = duty;
        self.metrics.duty_cycle(HIT_NAMES[family as usize], duty);
        tokio::task::block_in_place(|| own.measure(|| governed.probes.detach()));
        governed.last_removal = since.elapsed();
        let outlast = governed.last_removal.mul_f64(1.5 * duty / (1.0 - duty));
        let on = MAX_PERIOD.mul_f64(duty).clamp(MIN_ON, MAX_ON).max(outlast);
        let off = on.mul_f64((1.0 - duty) / duty);
        tracing::debug!(
            "PID {}: {} probes off for {off:.1?} (removing them took {:.1?}), then on for \
             {on:.1?} (duty {duty:.3})",
            self.pid,
            HIT_NAMES[family as usize],
            governed.last_removal,
        );
        governed.phase = Phase::Off {
            since,
            until: since + off,
            on,
        };
        // The target's pace while off is measured from here (the removal's time had probes
        // still firing).
        self.families[index].off_mark = self.mark(index);
    }

    /// End family `index`'s off part (begun at `since`): put its probes back, and count for
    /// `on`, its counts scaled by the share of the target's work the cycle sees.
    fn put_back(&mut self, index: usize, since: Instant, on: Duration) {
        if let (Some(start), Some(end)) = (self.families[index].off_mark.take(), self.mark(index)) {
            let seconds = (end.at - start.at).as_secs_f64();
            if seconds > 0.0 {
                self.families[index].off_rate =
                    Some(end.cpu_ns.saturating_sub(start.cpu_ns) as f64 / seconds);
            }
        }
        let own = self.metrics.own_cpu().clone();
        let governed = &mut self.families[index];
        if let Err(error) = tokio::task::block_in_place(|| own.measure(|| governed.probes.attach()))
        {
            // A target that exited fails the attach; that is no news.
            if std::fs::read_link(format!("/proc/{}/exe", self.pid)).is_ok() {
                tracing::warn!(
                    "PID {}: putting the {} probes back failed: {error}",
                    self.pid,
                    HIT_NAMES[governed.family as usize]
                );
            }
            governed.off_mark = None;
            governed.phase = Phase::Off {
                since,
                until: Instant::now() + MAX_ON,
                on,
            };
            return;
        }
        let family = governed.family;
        let duty = governed.duty;
        let off = since.elapsed();
        let coverage = self.coverage(index, on, off);
        // All its probes are in place: the family counts from now.
        self.set_duty(index, duty, coverage);
        self.pause(family, false);
        let now = Instant::now();
        self.families[index].mark = self.mark(index);
        self.families[index].phase = Phase::On { until: now + on };
    }

    /// The share of the target's own work a cycle off for `off` and on for `on` sees: the
    /// time on against the time off, each weighted by how fast the target did its own work
    /// then (the time share when it is not known yet).
    fn coverage(&self, index: usize, on: Duration, off: Duration) -> f64 {
        let governed = &self.families[index];
        let (on, off) = (on.as_secs_f64(), off.as_secs_f64());
        match (governed.on_rate, governed.off_rate) {
            (Some(on_rate), Some(off_rate)) if on_rate > 0.0 && off_rate > 0.0 => {
                on * on_rate / (on * on_rate + off * off_rate)
            }
            _ => on / (on + off),
        }
    }

    /// Let family `family`'s programs count, or not.
    fn pause(&mut self, family: u32, paused: bool) {
        if let Err(error) = self.paused.set(family, u32::from(paused), 0) {
            tracing::warn!("PID {}: switching a probe family failed: {error}", self.pid);
        }
    }

    /// Family `index` is on `duty` of the time, seeing `coverage` of the target's work.
    fn set_duty(&mut self, index: usize, duty: f64, coverage: f64) {
        let governed = &mut self.families[index];
        governed.duty = duty;
        let family = governed.family;
        self.metrics.coverage().set(family, coverage);
        self.metrics.duty_cycle(HIT_NAMES[family as usize], duty);
    }
}
