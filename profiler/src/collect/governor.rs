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
//! A cycle's counts are scaled by the share of the target's own work they saw, known when its
//! on part starts: the time on against the time off, each weighted by how fast the target
//! worked then, measured while on last time and while off just now. For the allocation
//! families the work is what they count, the runtime's own count of bytes allocated
//! (`gcController.totalAlloc`, read from the target's memory), where it can be read; otherwise
//! the target's CPU time per second, the probes' cost taken out. For a service paced by its
//! clients that is the duty; for a program running flat out, which does less of its work while
//! the probes cost it, less (and more so than its CPU time says: after each trap its own code
//! runs slower for a while).
//! The next cycle's duty comes from what the family cost while on. When that fits the budget
//! again, the family stays attached. The duty is the share of the time the family costs the
//! target: its on part, and the time its probes take to come off and go back, firing but
//! counting nothing (measured by its hits then, at its rate while on); what
//! `mapscope_probe_duty_cycle` shows is the share that counts.
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
    /// Not counting since `since` (probes removed) until `until`; then on for `on`. Its
    /// duty is reconsidered at `check` (what else costs the target may have dropped).
    Off {
        since: Instant,
        until: Instant,
        on: Duration,
        check: Instant,
    },
}

impl Phase {
    /// When the governor must next look at the family.
    fn due(&self) -> Instant {
        match *self {
            Self::Continuous { next: until } | Self::On { until } => until,
            Self::Off { until, check, .. } => until.min(check),
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
    /// The family's work counter, and how fast it grew while the family was last on.
    work: Option<WorkCounter>,
    on_work_rate: Option<f64>,
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
    /// `families`: each governed family's probes, attached now, and its work counter if it has
    /// one; `hits`: `PROBE_HITS`; `counts_until`: `FAMILY_COUNTS_UNTIL`.
    pub fn new(
        pid: u32,
        budget: f64,
        families: Vec<(u32, WindowedProbes, Option<WorkCounter>)>,
        hits: PerCpuArray<MapData, u64>,
        counts_until: Array<MapData, u64>,
        metrics: Arc<TargetMetrics>,
        readings: watch::Receiver<Option<MeterReading>>,
    ) -> Self {
        let now = Instant::now();
        let families = families
            .into_iter()
            .map(|(family, probes, work)| {
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
                    work,
                    on_work_rate: None,
                }
            })
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
        loop {
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
        let share = self.measure(index);
        if share.is_some() {
            self.families[index].last_share = share;
        }
        (self.duty_for(index, share), share.is_some())
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
                let (duty, _) = self.decide(index);
                if duty >= 1.0 {
                    // Within the budget again: it stays attached, counting all the time.
                    self.families[index].duty = 1.0;
                    let family = self.families[index].family;
                    self.count(family, Counting::Always);
                    self.metrics.coverage().set(family, 1.0);
                    self.metrics.duty_cycle(HIT_NAMES[family as usize], 1.0);
                    self.families[index].phase = Phase::Continuous {
                        next: now + EVALUATE_EVERY,
                    };
                } else {
                    self.take_off(index, duty);
                }
            }
            Phase::Off {
                since, until, on, ..
            } => {
                if now >= until {
                    self.put_back(index, since, on);
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
        };
        if now >= since + off {
            self.put_back(index, since, on);
        }
    }

    /// Start a cycle at `duty` for family `index`: stop its programs counting, remove its
    /// probes, and plan the cycle (`cycle`).
    fn take_off(&mut self, index: usize, duty: f64) {
        let family = self.families[index].family;
        self.count(family, Counting::Off);
        let since = Instant::now();
        let paused_at = self.hits(index);
        let own = self.metrics.own_cpu().clone();
        let governed = &mut self.families[index];
        // An on part stopped counting at its planned end, in the kernel: the work since, at the
        // on part's pace, belongs to the off part.
        let late = match governed.phase {
            Phase::On { until } => Some(since.saturating_duration_since(until)),
            Phase::Continuous { .. } | Phase::Off { .. } => None,
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
            governed.off_mark = None;
            let until = Instant::now() + MAX_ON;
            governed.phase = Phase::Off {
                since,
                until,
                on,
                check: until,
            };
            return;
        }
        let family = governed.family;
        let off = since.elapsed();
        if let (Some(before), Some(after)) = (installing_at, self.hits(index)) {
            self.families[index].install_hits = after.saturating_sub(before);
        }
        let off_work = self.families[index]
            .paused_work
            .take()
            .zip(self.families[index].work.as_ref().and_then(|read| read()))
            .and_then(|(paused, now)| now.checked_sub(paused));
        let coverage = self.coverage(index, on, off, off_work);
        tracing::debug!(
            "PID {}: {} probes back after {off:.1?} off, on for {on:.1?}: they see {:.1}% of \
             the target's work (its work per second on {:?}, while off {:?} in all; its CPU on \
             {:?}, off {:?})",
            self.pid,
            HIT_NAMES[family as usize],
            coverage * 100.0,
            self.families[index].on_work_rate,
            off_work,
            self.families[index].on_rate,
            self.families[index].off_rate,
        );
        // All its probes are in place: the family counts from now.
        self.metrics.coverage().set(family, coverage);
        self.metrics
            .duty_cycle(HIT_NAMES[family as usize], counting(on, off));
        self.count(family, Counting::For(on));
        let now = Instant::now();
        self.families[index].mark = self.mark(index);
        self.families[index].phase = Phase::On { until: now + on };
    }

    /// The share of the target's own work a cycle off for `off` and on for `on` sees. With a
    /// work counter: the work the on part will hold (at the rate it grew while on last time)
    /// against `off_work`, what it grew by while the family did not count (the probes' removal
    /// and installation included, when the target ran slowed by them). Else the time on
    /// against the time off, each weighted by how fast the target did its own work then (in
    /// CPU time), or (not known yet) the time share.
    fn coverage(&self, index: usize, on: Duration, off: Duration, off_work: Option<u64>) -> f64 {
        let governed = &self.families[index];
        let (on, off) = (on.as_secs_f64(), off.as_secs_f64());
        if let (Some(rate), Some(off_work)) = (governed.on_work_rate, off_work)
            && rate > 0.0
            && off_work > 0
        {
            return on * rate / (on * rate + off_work as f64);
        }
        match (governed.on_rate, governed.off_rate) {
            (Some(on_rate), Some(off_rate)) if on_rate > 0.0 && off_rate > 0.0 => {
                on * on_rate / (on * on_rate + off * off_rate)
            }
            _ => on / (on + off),
        }
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

/// How long a family's programs count (`FAMILY_COUNTS_UNTIL`).
enum Counting {
    Always,
    Off,
    /// From now, for this long.
    For(Duration),
}

/// The kernel's monotonic clock, which the programs read (`bpf_ktime_get_ns`), in ns.
fn monotonic_ns() -> u64 {
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
