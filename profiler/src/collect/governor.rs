//! The overhead governor of one target: holds what its costly probe families cost it within
//! `--max-overhead` by taking their probes off for part of the time (`model::governor` decides
//! how much), and tells the collectors what share of the target's work each family's counts
//! saw, so that every estimate it feeds is scaled back up (`Coverage`).
//!
//! Each governed family is either attached all the time (duty 1) or cycles: off, then on,
//! the time on being its duty of the cycle. Removing a uprobe takes the kernel from 0.1 s to
//! seconds on a busy machine, one probe after another, and installing them one after another
//! too: so the family's programs are told to stop counting before its probes come off, and to
//! count for the on part once they are all back (`FAMILY_COUNTS_UNTIL`): the time counted is
//! exactly the on part, which the kernel ends on time even when the governor is late.
//!
//! An on part's counts are scaled by the share of the target's own work they saw: the work
//! during the on part against the off work nearest it, the second half of the off part before
//! it and the first half of the one after it (`model::governor::on_share`), settled halfway
//! through that off part. For the allocation families the work is what they count, the
//! runtime's own count of bytes allocated (`gcController.totalAlloc`, read from the target's
//! memory), where it can be read; otherwise the target's CPU time per second, the probes' cost
//! taken out. For a service paced by its clients that is the duty; for a program running flat
//! out, which does less of its work while the probes cost it, less (and more so than its CPU
//! time says: after each trap its own code runs slower for a while).
//! The next cycle's duty comes from what the family cost while on. When that fits the budget
//! again, the family stays attached. The duty is the share of the time the family costs the
//! target: its on part, and the time its probes take to come off and go back, firing but
//! counting nothing (measured by its hits then, at its rate while on); what
//! `mapscope_probe_duty_cycle` shows is the share that counts.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData, PerCpuArray};
use profiler_common::counters::{HIT_KINDS, HIT_NAMES};
use tokio::sync::watch;

use super::overhead::MeterReading;
use crate::{
    export::metrics::TargetMetrics,
    model::governor::{OffStretch, duty_cycles, early_half_goes_back, on_share, planning_share},
    probes::loaded::{ProbeChanges, WindowedProbes},
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
/// How long a family whose collector takes settled counts (`Coverage`) waits for it before
/// counting again (it reads every second), and how often it looks meanwhile.
const TAKE_WAIT: Duration = Duration::from_secs(3);
const TAKE_POLL: Duration = Duration::from_millis(100);

/// How fast a work counter grew between two marks, per second (`None` without one, or when it
/// went back: a target that exec'd, a misread).
fn work_rate(start: Mark, end: Mark) -> Option<f64> {
    let seconds = (end.at - start.at).as_secs_f64();
    let grown = end.work?.checked_sub(start.work?)?;
    (seconds > 0.0).then(|| grown as f64 / seconds)
}

/// A cycle at `duty` (the share of the time the family may cost the target as if on) for a
/// family whose probes, coming off and going back, cost as much as `busy` on: how long it
/// counts, and how long it is off (the coming and going included). Its on part and `busy`
/// are `duty` of the cycle; the on part is what is left of `MAX_PERIOD` × `duty` after
/// `busy`, within `MIN_ON`..`MAX_ON` (the cycle is longer when it must be).
fn cycle(duty: f64, busy: Duration) -> (Duration, Duration) {
    let on = MAX_PERIOD
        .mul_f64(duty)
        .saturating_sub(busy)
        .clamp(MIN_ON, MAX_ON);
    let period = (on + busy).div_f64(duty);
    (on, period.saturating_sub(on))
}

/// The share of a cycle on for `on` and off for `off` that counts: what
/// `mapscope_probe_duty_cycle` shows.
fn counting(on: Duration, off: Duration) -> f64 {
    on.as_secs_f64() / (on + off).as_secs_f64().max(1e-9)
}

/// The share of the target's work each probe family's counts see (1 for those never cut, and
/// for governed ones attached all the time): what the collectors divide the counts of a family
/// by. Shared by a target's collectors.
///
/// For the allocation families the share of an on part is settled halfway through the off
/// part after it, from how fast the target worked during that very part, not predicted from
/// the part before: a prediction off by the change in pace between two parts (10–20% on a
/// program allocating flat out) put the estimates that far off. So until then its share is
/// not known (`settled` is `None`) and the allocation collector leaves its counts in
/// the kernel; once settled, the collector takes them all with that share and says so
/// (`taken`), and only then may the next on part start counting into the same tables.
#[derive(Clone, Debug)]
pub struct Coverage(Arc<Mutex<[Share; HIT_KINDS as usize]>>);

#[derive(Clone, Copy, Debug)]
struct Share {
    /// The share, settled or (while `counting`) predicted.
    fraction: f64,
    /// An on part counts now, or ended and waits for its share to be settled.
    counting: bool,
    /// How many times the family stopped counting with its share settled, and up to which of
    /// those its collector has taken the counts.
    settled: u64,
    taken: u64,
}

impl Default for Coverage {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(
            [Share {
                fraction: 1.0,
                counting: false,
                settled: 0,
                taken: 0,
            }; HIT_KINDS as usize],
        )))
    }
}

/// A family's settled share, and which settling it was (for `Coverage::taken`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settled {
    pub fraction: f64,
    generation: u64,
}

impl Coverage {
    fn with<T>(&self, family: u32, f: impl FnOnce(&mut Share) -> T) -> Option<T> {
        let mut shares = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        shares.get_mut(family as usize).map(f)
    }

    /// The family's share now: settled, or predicted while an on part counts (for the
    /// families whose collectors do not wait, and for a last read).
    pub fn fraction(&self, family: u32) -> f64 {
        self.with(family, |share| share.fraction).unwrap_or(1.0)
    }

    /// The family's settled share; `None` while an on part counts.
    pub fn settled(&self, family: u32) -> Option<Settled> {
        self.with(family, |share| {
            (!share.counting).then_some(Settled {
                fraction: share.fraction,
                generation: share.settled,
            })
        })
        .unwrap_or(Some(Settled {
            fraction: 1.0,
            generation: 0,
        }))
    }

    /// The collector has taken every count the family made up to `settled`.
    pub fn taken(&self, family: u32, settled: Settled) {
        self.with(family, |share| {
            share.taken = share.taken.max(settled.generation)
        });
    }

    /// Whether the collector has taken every count made before the family last stopped
    /// counting.
    fn all_taken(&self, family: u32) -> bool {
        self.with(family, |share| share.taken >= share.settled)
            .unwrap_or(true)
    }

    /// The family has stopped counting: its counts so far saw `fraction` of the target's work.
    fn settle(&self, family: u32, fraction: f64) {
        self.with(family, |share| {
            share.fraction = fraction;
            share.counting = false;
            share.settled += 1;
        });
    }

    /// An on part starts counting, its share predicted as `fraction`; `settle` ends it.
    fn counting(&self, family: u32, fraction: f64) {
        self.with(family, |share| {
            share.fraction = fraction;
            share.counting = true;
        });
    }
}

enum Phase {
    /// Attached all the time; cost checked at `next`.
    Continuous { next: Instant },
    /// Counting until `until`.
    On { until: Instant },
    /// Back to attached all the time once the collector has taken the last cycle's counts
    /// (or at `give_up`); looked at again at `next`.
    Settling { next: Instant, give_up: Instant },
    /// Not counting since `since` (probes removed) until `until`; then on for `on`. Its
    /// duty is reconsidered at `check` (what else costs the target may have dropped). At
    /// `halfway`, the on part before it settles (`Governor::halfway`).
    Off {
        since: Instant,
        until: Instant,
        on: Duration,
        check: Instant,
        halfway: Option<Instant>,
    },
}

impl Phase {
    /// When the governor must next look at the family.
    fn due(&self) -> Instant {
        match *self {
            Self::Continuous { next: until }
            | Self::On { until }
            | Self::Settling { next: until, .. } => until,
            Self::Off {
                until,
                check,
                halfway,
                ..
            } => until.min(check).min(halfway.unwrap_or(until)),
        }
    }
}

/// A family's hits, the target's CPU time and its work counter (if the family has one) at the
/// start of a measurement.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    hits: u64,
    cpu_ns: u64,
    work: Option<u64>,
}

/// Reads a counter of the target's own that grows with what a family counts (the runtime's
/// bytes allocated, for the allocation families): its share of the target's work is measured
/// in it.
pub type WorkCounter = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// One family for the governor to hold.
pub struct GovernedFamily {
    pub family: u32,
    /// Its probes, attached now.
    pub probes: WindowedProbes,
    pub work: Option<WorkCounter>,
    /// Its collector takes only settled counts (`Coverage::settled`) and says when it has.
    pub collector_waits: bool,
    /// Without a work counter, its share is the share of the time it counted, not of the
    /// target's CPU time (`Governed::share_cpu_rate`).
    pub by_time: bool,
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
    /// The family's work counter when it stopped counting: the work its cycle's off part held
    /// is measured from there, the probes' removal and installation included.
    paused_work: Option<u64>,
    /// The last share measured, for sharing the budget with the other families.
    last_share: Option<f64>,
    /// How long removing its probes took last time (for the logs).
    last_removal: Duration,
    /// Its hits while its probes came off and went back last time (they fire but count
    /// nothing then), and its hits per second while on: together, how much of a cycle it
    /// costs the target without counting (`busy`).
    removal_hits: u64,
    install_hits: u64,
    on_hit_rate: Option<f64>,
    /// The target's CPU time per second doing its own work (the probes' cost taken out) while
    /// the family was last on, and while it was last off.
    on_rate: Option<f64>,
    off_rate: Option<f64>,
    /// The target's CPU time per second in all (the probes' included) while last on.
    on_cpu: Option<f64>,
    /// The family's work counter, and how fast it grew while the family was last on.
    work: Option<WorkCounter>,
    on_work_rate: Option<f64>,
    /// Its collector takes only settled counts (`Coverage`): it must have taken a cycle's
    /// counts before the next one counts.
    collector_waits: bool,
    by_time: bool,
    /// The on part counting now: how long, and the stretch of the off part before it that it
    /// stands for.
    cycle: Option<(Duration, OffStretch)>,
    /// The on part that ended, until the first half of the off part after it settles it.
    ended: Option<(Duration, OffStretch)>,
    /// Where the second half of the off part started (`halfway`), and a first half that
    /// goes with the next on part.
    mid_mark: Option<Mark>,
    carried: Option<OffStretch>,
    /// Since when its next on part has waited for the collector to take the last one's
    /// counts.
    waiting_since: Option<Instant>,
}

pub struct Governor {
    pid: u32,
    budget: f64,
    families: Vec<Governed>,
    /// The probes' hit counters, by family (a handle of the governor's own).
    hits: PerCpuArray<MapData, u64>,
    /// Until when each family's programs count (`FAMILY_COUNTS_UNTIL`).
    counts_until: Array<MapData, u64>,
    /// The target's series; its `coverage()` and `own_cpu()` are the governor's too.
    metrics: Arc<TargetMetrics>,
    /// The target's cost meter: the cost of a hit, and what the rest costs.
    readings: watch::Receiver<Option<MeterReading>>,
}

impl Governor {
    /// `families`: each governed family's probes, attached now, its work counter if it has
    /// one, and whether its collector takes only settled counts (`Coverage`); `hits`:
    /// `PROBE_HITS`; `counts_until`: `FAMILY_COUNTS_UNTIL`.
    pub fn new(
        pid: u32,
        budget: f64,
        families: Vec<GovernedFamily>,
        hits: PerCpuArray<MapData, u64>,
        counts_until: Array<MapData, u64>,
        metrics: Arc<TargetMetrics>,
        readings: watch::Receiver<Option<MeterReading>>,
    ) -> Self {
        let now = Instant::now();
        let families = families
            .into_iter()
            .map(
                |GovernedFamily {
                     family,
                     probes,
                     work,
                     collector_waits,
                     by_time,
                 }| {
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
                        paused_work: None,
                        last_share: None,
                        last_removal: Duration::ZERO,
                        removal_hits: 0,
                        install_hits: 0,
                        on_hit_rate: None,
                        on_rate: None,
                        off_rate: None,
                        on_cpu: None,
                        work,
                        on_work_rate: None,
                        collector_waits,
                        by_time,
                        cycle: None,
                        ended: None,
                        mid_mark: None,
                        carried: None,
                        waiting_since: None,
                    }
                },
            )
            .collect();
        let mut governor = Self {
            pid,
            budget,
            families,
            hits,
            counts_until,
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
        let mut readings = self.readings.clone();
        let mut meter_gone = false;
        // Probes added or removed while the family is held (libraries mapped and unmapped).
        let changes = self
            .families
            .iter()
            .find_map(|governed| governed.probes.changes().cloned());
        loop {
            // A family attached all the time and not judged yet is judged as soon as the
            // meter's first reading comes (each moment an allocator's probes stay on over the
            // budget costs a malloc-heavy target dearly), not at its next retry.
            let unjudged = !meter_gone
                && self.families.iter().any(|governed| {
                    matches!(governed.phase, Phase::Continuous { .. })
                        && governed.last_share.is_none()
                });
            // Woken when the next phase is due, to the millisecond: an on part's length is
            // what its counts are scaled by.
            let next = self
                .families
                .iter()
                .map(|governed| governed.phase.due())
                .min()
                .unwrap_or_else(|| Instant::now() + EVALUATE_EVERY);
            tokio::select! {
                biased;
                () = &mut stop => break,
                changed = readings.changed(), if unjudged => {
                    if changed.is_err() {
                        meter_gone = true;
                        continue;
                    }
                    let now = Instant::now();
                    for index in 0..self.families.len() {
                        let governed = &self.families[index];
                        if matches!(governed.phase, Phase::Continuous { .. })
                            && governed.last_share.is_none()
                        {
                            self.advance(index, now);
                        }
                    }
                }
                () = pushed(changes.as_ref()), if changes.is_some() => {
                    let own = self.metrics.own_cpu().clone();
                    for governed in &mut self.families {
                        if governed.probes.changes().is_some_and(ProbeChanges::pending) {
                            // Removing probes waits on the kernel: off the async workers.
                            tokio::task::block_in_place(|| {
                                own.measure(|| governed.probes.apply_changes())
                            });
                        }
                    }
                }
                () = tokio::time::sleep_until(next.into()) => {
                    let now = Instant::now();
                    for index in 0..self.families.len() {
                        if now >= self.families[index].phase.due() {
                            self.advance(index, now);
                        }
                    }
                }
            }
        }
        tokio::task::block_in_place(move || drop(self));
    }

    /// Family `index`'s hits so far.
    fn hits(&self, index: usize) -> Option<u64> {
        let family = self.families[index].family;
        Some(self.hits.get(&family, 0).ok()?.iter().sum())
    }

    /// How long, in time on, family `index`'s probes cost the target each cycle without
    /// counting: its hits while they came off and went back last time, at its rate while on.
    /// (Removing a probe takes the kernel from 0.1 s to seconds on a busy machine, one probe
    /// after another; installing them takes less.)
    fn busy(&self, index: usize) -> Duration {
        let governed = &self.families[index];
        let hits = (governed.removal_hits + governed.install_hits) as f64;
        match governed.on_hit_rate {
            Some(rate) if rate > 0.0 => Duration::from_secs_f64((hits / rate).min(60.0)),
            _ => Duration::ZERO,
        }
    }

    /// Family `index`'s hits so far, the target's CPU time and the family's work counter now.
    fn mark(&self, index: usize) -> Option<Mark> {
        let governed = &self.families[index];
        let hits = self.hits.get(&governed.family, 0).ok()?.iter().sum();
        let cpu_ns = crate::process::cpu::process_cpu_ns(self.pid)?;
        Some(Mark {
            at: Instant::now(),
            hits,
            cpu_ns,
            work: governed.work.as_ref().and_then(|read| read()),
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
            governed.on_cpu = Some(used as f64 / seconds);
            governed.on_rate = Some((used as f64 - probes_ns).max(0.0) / seconds);
            governed.on_work_rate = work_rate(start, end);
            governed.on_hit_rate = Some(end.hits.saturating_sub(start.hits) as f64 / seconds);
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
        let share = self
            .measure(index)
            .map(|share| self.planning_share(index, share));
        if share.is_some() {
            self.families[index].last_share = share;
        }
        (self.duty_for(index, share), share.is_some())
    }

    /// The share to plan family `index`'s duty on, from `share`, what it cost while on just
    /// now (`model::governor::planning_share`).
    fn planning_share(&self, index: usize, share: f64) -> f64 {
        let governed = &self.families[index];
        planning_share(
            share,
            governed.on_cpu,
            governed.off_rate,
            governed.last_share,
        )
    }

    /// The duty family `index` should have if it costs `share` of the target's CPU while on
    /// (`None`: not measured now, it keeps its duty), beside the others' last shares.
    fn duty_for(&self, index: usize, share: Option<f64>) -> f64 {
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
        duty
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
                // The kernel stopped counting at the part's end; the share its counts saw is
                // settled halfway through the off part after it (or now, if none follows).
                let (duty, _) = self.decide(index);
                self.families[index].ended = self.families[index].cycle.take();
                if duty >= 1.0 {
                    self.settle(index, OffStretch::default());
                    // Within the budget again: it stays attached, counting all the time once
                    // the collector has taken this cycle's counts.
                    self.families[index].phase = Phase::Settling {
                        next: now,
                        give_up: now + TAKE_WAIT,
                    };
                    self.advance(index, now);
                } else {
                    self.take_off(index, duty);
                }
            }
            Phase::Settling { give_up, .. } => {
                if self.taken(index, now, give_up) {
                    self.families[index].duty = 1.0;
                    let family = self.families[index].family;
                    self.metrics.coverage().settle(family, 1.0);
                    self.count(family, Counting::Always);
                    self.metrics.duty_cycle(HIT_NAMES[family as usize], 1.0);
                    self.families[index].phase = Phase::Continuous {
                        next: now + EVALUATE_EVERY,
                    };
                } else {
                    self.families[index].phase = Phase::Settling {
                        next: now + TAKE_POLL,
                        give_up,
                    };
                }
            }
            Phase::Off {
                since,
                until,
                on,
                halfway,
                ..
            } => {
                if now >= until {
                    self.put_back(index, since, on);
                } else if halfway.is_some_and(|halfway| now >= halfway) {
                    self.halfway(index, since);
                } else {
                    self.reconsider(index, since, now);
                }
            }
        }
    }

    /// Family `index`, off since `since`: if what else costs the target has dropped since its
    /// duty was set (mapscope's start-up work leaving the meter's window, a family that needs
    /// less), its duty rises now, and its off part ends as soon as the new duty allows,
    /// rather than after a cycle planned for the old one (up to 50 s at the floor). Its duty
    /// is never lowered while off: what it costs is measured only while on.
    fn reconsider(&mut self, index: usize, since: Instant, now: Instant) {
        let governed = &self.families[index];
        let duty = self.duty_for(index, governed.last_share);
        if duty <= governed.duty * 1.2 {
            if let Phase::Off { check, .. } = &mut self.families[index].phase {
                *check = now + EVALUATE_EVERY;
            }
            return;
        }
        let (on, off) = cycle(duty, self.busy(index));
        let family = governed.family;
        tracing::debug!(
            "PID {}: {} probes may be on more now (duty {:.3} -> {duty:.3}): off for {off:.1?} \
             in all, then on for {on:.1?}",
            self.pid,
            HIT_NAMES[family as usize],
            governed.duty,
        );
        self.families[index].duty = duty;
        self.metrics
            .duty_cycle(HIT_NAMES[family as usize], counting(on, off));
        self.families[index].phase = Phase::Off {
            since,
            until: since + off,
            on,
            check: now + EVALUATE_EVERY,
            halfway: self.families[index]
                .ended
                .is_some()
                .then(|| since + off / 2),
        };
        if now >= since + off {
            self.put_back(index, since, on);
        }
    }

    /// Family `index`'s off part (begun at `since`) is halfway: the first half's work is
    /// measured, given to the on part before it or the one after it
    /// (`model::governor::early_half_goes_back`), and the one before settled.
    fn halfway(&mut self, index: usize, since: Instant) {
        let mid = self.mark(index);
        let governed = &mut self.families[index];
        if let Phase::Off { halfway, .. } = &mut governed.phase {
            *halfway = None;
        }
        let early = match mid {
            Some(mid) => stretch(
                since..mid.at,
                governed.paused_work,
                mid.work,
                governed.off_mark.zip(Some(mid)),
            ),
            None => OffStretch {
                seconds: since.elapsed().as_secs_f64(),
                ..OffStretch::default()
            },
        };
        governed.mid_mark = mid;
        if early_half_goes_back(governed.on_work_rate, governed.share_cpu_rate(), early) {
            self.settle(index, early);
        } else {
            governed.carried = Some(early);
            self.settle(index, OffStretch::default());
        }
    }

    /// Family `index`'s on part that ended settles: the share of the target's work its counts
    /// saw, from the pace of the target's work during that part (measured at its end) against
    /// the off work it stands for: the stretch before it, and `after`.
    fn settle(&mut self, index: usize, after: OffStretch) {
        let governed = &mut self.families[index];
        let Some((on, before)) = governed.ended.take() else {
            return;
        };
        let fraction = on_share(
            on.as_secs_f64(),
            governed.on_work_rate,
            governed.share_cpu_rate(),
            before,
            after,
        );
        tracing::debug!(
            "PID {}: {} probes' last {on:.1?} on saw {:.1}% of the target's work (its work per \
             second then {:?}; off work before {:?} and after {:?})",
            self.pid,
            HIT_NAMES[governed.family as usize],
            fraction * 100.0,
            governed.on_work_rate,
            before.work,
            after.work,
        );
        self.metrics.coverage().settle(governed.family, fraction);
    }

    /// Whether family `index`'s collector has taken its counts up to its last settling (or
    /// need not, or it is `give_up` time: a collector that stopped reading does not hold the
    /// family off).
    fn taken(&self, index: usize, now: Instant, give_up: Instant) -> bool {
        let governed = &self.families[index];
        let taken = !governed.collector_waits || self.metrics.coverage().all_taken(governed.family);
        if !taken && now >= give_up {
            tracing::debug!(
                "PID {}: the {} counts were not taken in {TAKE_WAIT:?}; counting again",
                self.pid,
                HIT_NAMES[governed.family as usize]
            );
        }
        taken || now >= give_up
    }

    /// Start a cycle at `duty` for family `index`: stop its programs counting, remove its
    /// probes, and plan the cycle (`cycle`).
    fn take_off(&mut self, index: usize, duty: f64) {
        let family = self.families[index].family;
        self.count(family, Counting::Off);
        let since = Instant::now();
        if matches!(self.families[index].phase, Phase::Continuous { .. }) {
            // What it counted while attached all the time saw all of the target's work.
            self.metrics.coverage().settle(family, 1.0);
        }
        let paused_at = self.hits(index);
        let own = self.metrics.own_cpu().clone();
        let governed = &mut self.families[index];
        // An on part stopped counting at its planned end, in the kernel: the work since, at the
        // on part's pace, belongs to the off part.
        let late = match governed.phase {
            Phase::On { until } => Some(since.saturating_duration_since(until)),
            Phase::Continuous { .. } | Phase::Off { .. } | Phase::Settling { .. } => None,
        };
        governed.paused_work = governed.work.as_ref().and_then(|read| read()).map(|work| {
            match (late, governed.on_work_rate) {
                (Some(late), Some(rate)) => work.saturating_sub((rate * late.as_secs_f64()) as u64),
                _ => work,
            }
        });
        governed.duty = duty;
        tokio::task::block_in_place(|| own.measure(|| governed.probes.detach()));
        governed.last_removal = since.elapsed();
        if let (Some(before), Some(after)) = (paused_at, self.hits(index)) {
            self.families[index].removal_hits = after.saturating_sub(before);
        }
        let busy = self.busy(index);
        let (on, off) = cycle(duty, busy);
        self.metrics
            .duty_cycle(HIT_NAMES[family as usize], counting(on, off));
        let governed = &mut self.families[index];
        tracing::debug!(
            "PID {}: {} probes off for {off:.1?} (removing them took {:.1?}; coming off and \
             back they cost as much as {busy:.1?} on), then on for {on:.1?} (duty {duty:.3})",
            self.pid,
            HIT_NAMES[family as usize],
            governed.last_removal,
        );
        governed.phase = Phase::Off {
            since,
            until: since + off,
            on,
            check: Instant::now() + EVALUATE_EVERY,
            halfway: governed.ended.is_some().then(|| since + off / 2),
        };
        // The target's pace while off is measured from here (the removal's time had probes
        // still firing).
        self.families[index].off_mark = self.mark(index);
    }

    /// End family `index`'s off part (begun at `since`): put its probes back, and count for
    /// `on`, its counts scaled by the share of the target's work the cycle sees.
    fn put_back(&mut self, index: usize, since: Instant, on: Duration) {
        // An off part cut short before its middle: the on part before it settles now.
        if self.families[index].ended.is_some() {
            self.halfway(index, since);
        }
        let now = Instant::now();
        let waiting_since = *self.families[index].waiting_since.get_or_insert(now);
        if !self.taken(index, now, waiting_since + TAKE_WAIT) {
            // Its last counts are still in the kernel's tables: they must not be mixed with
            // this part's, which will have another share.
            self.families[index].phase = Phase::Off {
                since,
                until: now + TAKE_POLL,
                on,
                check: now + TAKE_POLL,
                halfway: None,
            };
            return;
        }
        self.families[index].waiting_since = None;
        // The target's pace while off, before the probes' installation slows it.
        let end = self.mark(index);
        if let (Some(start), Some(end)) = (self.families[index].off_mark, end) {
            let seconds = (end.at - start.at).as_secs_f64();
            if seconds > 0.0 {
                self.families[index].off_rate =
                    Some(end.cpu_ns.saturating_sub(start.cpu_ns) as f64 / seconds);
            }
        }
        let own = self.metrics.own_cpu().clone();
        let installing_at = self.hits(index);
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
            let until = Instant::now() + MAX_ON;
            governed.phase = Phase::Off {
                since,
                until,
                on,
                check: until,
                halfway: None,
            };
            return;
        }
        let family = governed.family;
        let off = since.elapsed();
        if let (Some(before), Some(after)) = (installing_at, self.hits(index)) {
            self.families[index].install_hits = after.saturating_sub(before);
        }
        // The off part's second half (all of it, when none settled an on part before it),
        // the installation included, is this on part's, with a first half carried to it.
        let governed = &mut self.families[index];
        let work_now = governed.work.as_ref().and_then(|read| read());
        let read_at = Instant::now();
        let off_mark = governed.off_mark.take();
        let paused_work = governed.paused_work.take();
        let late = match governed.mid_mark.take() {
            Some(mid) => stretch(mid.at..read_at, mid.work, work_now, Some(mid).zip(end)),
            None => stretch(since..read_at, paused_work, work_now, off_mark.zip(end)),
        };
        let before = governed.carried.take().unwrap_or_default().plus(late);
        // Predicted as if the off part after it will be like the one before.
        let predicted = on_share(
            on.as_secs_f64(),
            governed.on_work_rate,
            governed.share_cpu_rate(),
            before,
            before,
        );
        tracing::debug!(
            "PID {}: {} probes back after {off:.1?} off, on for {on:.1?}: they see about {:.1}% \
             of the target's work (its work per second on {:?}; off before it {:?}; its CPU on \
             {:?}, off {:?})",
            self.pid,
            HIT_NAMES[family as usize],
            predicted * 100.0,
            governed.on_work_rate,
            before.work,
            governed.on_rate,
            governed.off_rate,
        );
        // All its probes are in place: the family counts from now, its share predicted until
        // the off part after it settles it.
        self.metrics.coverage().counting(family, predicted);
        self.families[index].cycle = Some((on, before));
        self.metrics
            .duty_cycle(HIT_NAMES[family as usize], counting(on, off));
        self.count(family, Counting::For(on));
        let now = Instant::now();
        self.families[index].mark = self.mark(index);
        self.families[index].phase = Phase::On { until: now + on };
    }

    /// Tell family `family`'s programs how long to count.
    fn count(&mut self, family: u32, counting: Counting) {
        let until = match counting {
            Counting::Always => 0,
            Counting::Off => 1,
            Counting::For(on) => monotonic_ns().saturating_add(on.as_nanos() as u64),
        };
        if let Err(error) = self.counts_until.set(family, until, 0) {
            tracing::warn!("PID {}: switching a probe family failed: {error}", self.pid);
        }
    }
}

impl Governed {
    /// The target's CPU rate while on, for its share (`model::governor::on_share`); `None`
    /// for a family scaled by time. The native allocation probes are: a service's C
    /// allocations follow its clients, as the time does, while its CPU time while on is mostly
    /// the probes' (a malloc costs tens of ns, its trap a microsecond), and what the
    /// calibrated cost of a hit leaves of it is too uncertain to weigh the work by (an
    /// estimate scaled by it came out at a twelfth of the program's own count).
    fn share_cpu_rate(&self) -> Option<f64> {
        (!self.by_time).then_some(self.on_rate).flatten()
    }
}

/// Resolves once a change is pushed to `changes`; never without a queue.
async fn pushed(changes: Option<&ProbeChanges>) {
    match changes {
        Some(changes) => changes.pushed().await,
        None => std::future::pending().await,
    }
}

/// The stretch `span` of an off part: its length, the family's work counter's growth from
/// `from_work` to `to_work`, and the target's CPU time per second between two marks (`cpu`).
fn stretch(
    span: std::ops::Range<Instant>,
    from_work: Option<u64>,
    to_work: Option<u64>,
    cpu: Option<(Mark, Mark)>,
) -> OffStretch {
    let cpu_rate = cpu.and_then(|(start, end)| {
        let seconds = end.at.saturating_duration_since(start.at).as_secs_f64();
        (seconds > 0.0).then(|| end.cpu_ns.saturating_sub(start.cpu_ns) as f64 / seconds)
    });
    OffStretch {
        seconds: span.end.saturating_duration_since(span.start).as_secs_f64(),
        work: from_work
            .zip(to_work)
            .map(|(from, to)| to.saturating_sub(from)),
        cpu_rate,
    }
}

/// How long a family's programs count (`FAMILY_COUNTS_UNTIL`).
enum Counting {
    Always,
    Off,
    /// From now, for this long.
    For(Duration),
}

/// The kernel's monotonic clock, which the programs read (`bpf_ktime_get_ns`), in ns.
pub(crate) fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(duration: Duration) -> f64 {
        (duration.as_secs_f64() * 1000.0).round() / 1000.0
    }

    #[test]
    fn counts_are_taken_only_settled_and_the_next_part_waits_for_them() {
        use profiler_common::counters::{HIT_ALLOC, HIT_MAP_EVENT};
        let coverage = Coverage::default();
        // Attached all the time: everything counted saw all of the work.
        let settled = coverage.settled(HIT_ALLOC).unwrap();
        assert_eq!(settled.fraction, 1.0);
        // The governor takes the family off: what it counted so far is settled again, and
        // the next on part waits until the collector has taken it.
        coverage.settle(HIT_ALLOC, 1.0);
        assert!(!coverage.all_taken(HIT_ALLOC));
        coverage.taken(HIT_ALLOC, settled);
        assert!(!coverage.all_taken(HIT_ALLOC), "taken before the settling");
        coverage.taken(HIT_ALLOC, coverage.settled(HIT_ALLOC).unwrap());
        assert!(coverage.all_taken(HIT_ALLOC));
        // An on part counts: its share is predicted, not settled.
        coverage.counting(HIT_ALLOC, 0.25);
        assert_eq!(coverage.settled(HIT_ALLOC), None);
        assert_eq!(coverage.fraction(HIT_ALLOC), 0.25);
        // It ends, and what the target did meanwhile settles it.
        coverage.settle(HIT_ALLOC, 0.2);
        let settled = coverage.settled(HIT_ALLOC).unwrap();
        assert_eq!(settled.fraction, 0.2);
        assert!(!coverage.all_taken(HIT_ALLOC));
        coverage.taken(HIT_ALLOC, settled);
        assert!(coverage.all_taken(HIT_ALLOC));
        // Families are apart.
        assert_eq!(coverage.fraction(HIT_MAP_EVENT), 1.0);
        assert!(coverage.all_taken(HIT_MAP_EVENT));
    }

    #[test]
    fn a_cycle_is_its_duty_on_with_the_coming_and_going_counted_as_on() {
        // Quarter duty, probes that come off at once: 2 s on in 8.
        let (on, off) = cycle(0.25, Duration::ZERO);
        assert_eq!((seconds(on), seconds(off)), (2.0, 6.0));
        // Removal and installation that cost as much as 1 s on come out of the on part.
        let (on, off) = cycle(0.25, Duration::from_secs(1));
        assert_eq!((seconds(on), seconds(off)), (1.0, 7.0));
        assert!((counting(on, off) - 0.125).abs() < 1e-9);
        // At the floor the on part stays long enough to measure, and the cycle stretches.
        let (on, off) = cycle(0.01, Duration::ZERO);
        assert_eq!((seconds(on), seconds(off)), (0.5, 49.5));
        let (on, off) = cycle(0.1, Duration::from_secs(2));
        assert_eq!((seconds(on), seconds(off)), (0.5, 24.5));
        // Never more than MAX_ON at once.
        let (on, off) = cycle(0.9, Duration::ZERO);
        assert_eq!(seconds(on), 4.0);
        assert!((counting(on, off) - 0.9).abs() < 1e-9);
    }
}
