//! The overhead budget: how much of the time each costly probe family may stay attached so that
//! everything mapscope costs a target fits in `--max-overhead`.
//!
//! Families that are rare by construction (stop-the-world, the once-per-cycle GC probes) and
//! modes the user asked for (`--alloc-exact`, `--map-creations`) are never cut: their cost,
//! with mapscope's own CPU, comes off the budget first. What is left is shared between the
//! governed families (the allocation sampler, map growth events, allocation counting where the
//! runtime samples nothing): each gets an equal part, a family that needs less than its part
//! leaves the rest to the others, and one that needs more is attached for only the fraction of
//! the time that fits.

/// The least fraction of the time a governed family stays attached: below it, its scaled
/// estimates would rest on too few events to mean anything.
pub const MIN_DUTY: f64 = 0.01;

/// The fraction of the time each governed family may be attached.
///
/// `budget`: the most mapscope may cost the target, as a share of its CPU time. `fixed`: what
/// the families never cut and mapscope's own work cost it. `on_shares`: what each governed
/// family costs the target while attached (`None` when not measured yet: it keeps the duty
/// it has, `current`).
pub fn duty_cycles(
    budget: f64,
    fixed: f64,
    on_shares: &[Option<f64>],
    current: &[f64],
) -> Vec<f64> {
    let mut duties: Vec<f64> = current.to_vec();
    let mut left = (budget - fixed).max(0.0);
    // Families measured, cheapest first: each takes what it needs up to an equal part of what
    // is left.
    let mut measured: Vec<(usize, f64)> = on_shares
        .iter()
        .enumerate()
        .filter_map(|(family, share)| Some((family, share.filter(|share| share.is_finite())?)))
        .collect();
    // Those not measured yet keep their duty until they are.
    measured.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut remaining = measured.len();
    for (family, share) in measured {
        let part = left / remaining as f64;
        let duty = if share <= part {
            1.0
        } else {
            (part / share).clamp(MIN_DUTY, 1.0)
        };
        duties[family] = duty;
        left = (left - duty * share).max(0.0);
        remaining -= 1;
    }
    duties
}

/// The share of the target's CPU time to plan a family's duty on, from `share`, what it cost
/// while on just now; `on_cpu` and `off_cpu`: the target's CPU time per second (the probes'
/// included) while it was on, and while it was last off; `last`: the share planned on last
/// time.
///
/// - Weighted by the CPU time while on against while off: the budget is a share of all of the
///   target's CPU time, and a target that uses more of it while the probes are on (their time
///   comes on top of a paced service's work; a program running flat out on a busy machine
///   gets more of it) spends more than the duty's share of its CPU time on.
/// - A cost that rose counts at once, one that fell half way: a duty of budget ÷ cost,
///   planned on the last part's cost alone, overshoots on average when the cost varies from
///   part to part (the duty is convex in the cost): by 5–15% on a program allocating flat out,
///   whose cost while on varied from 24% to 45% between parts. A fall to under a quarter of
///   the last share is no such variation but the load dropping, and counts at once, so the
///   duty rises back as soon as the load is gone.
pub fn planning_share(
    share: f64,
    on_cpu: Option<f64>,
    off_cpu: Option<f64>,
    last: Option<f64>,
) -> f64 {
    let weighted = match (on_cpu, off_cpu) {
        (Some(on), Some(off)) if on > 0.0 && off > 0.0 => share * (on / off).clamp(0.5, 2.0),
        _ => share,
    };
    match last {
        Some(last) if weighted < last && weighted >= last / 4.0 => (weighted + last) / 2.0,
        _ => weighted,
    }
}

/// What one stretch of an off part held: how long, how much the family's work counter grew (the
/// runtime's bytes allocated, when it has one) and the target's own CPU time per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OffStretch {
    pub seconds: f64,
    pub work: Option<u64>,
    pub cpu_rate: Option<f64>,
}

impl OffStretch {
    /// Both stretches as one (an empty stretch adds nothing).
    pub fn plus(self, other: Self) -> Self {
        let (a, b) = (self, other);
        if a.seconds <= 0.0 && a.work.is_none() {
            return b;
        }
        if b.seconds <= 0.0 && b.work.is_none() {
            return a;
        }
        let seconds = a.seconds + b.seconds;
        let cpu_rate = match (a.cpu_rate, b.cpu_rate) {
            (Some(x), Some(y)) if seconds > 0.0 => Some((x * a.seconds + y * b.seconds) / seconds),
            (rate, None) | (None, rate) => rate,
            _ => None,
        };
        Self {
            seconds,
            work: a.work.zip(b.work).map(|(x, y)| x + y),
            cpu_rate,
        }
    }
}

/// The share of the target's work an on part of `on` seconds saw, against the off work it
/// stands for: `before`, the stretch of the off part before it that is its, and `after`, the
/// one after it. With a work counter: the work the on part held (at `on_work_rate`, measured
/// over it) against the off work; else the time on against the time off, each weighted by how
/// fast the target did its own work then (in CPU time); else the time share.
pub fn on_share(
    on: f64,
    on_work_rate: Option<f64>,
    on_cpu_rate: Option<f64>,
    before: OffStretch,
    after: OffStretch,
) -> f64 {
    let off = before.plus(after);
    if let (Some(rate), Some(work)) = (on_work_rate, off.work)
        && rate > 0.0
        && work > 0
    {
        return on * rate / (on * rate + work as f64);
    }
    match (on_cpu_rate, off.cpu_rate) {
        (Some(on_rate), Some(off_rate)) if on_rate > 0.0 && off_rate > 0.0 => {
            on * on_rate / (on * on_rate + off.seconds * off_rate)
        }
        _ if on + off.seconds > 0.0 => on / (on + off.seconds),
        _ => 1.0,
    }
}

/// Whether the first half of an off part, `early`, is the on part's before it (the one that
/// ended `early.seconds` ago, which worked at `on_work_rate` or, without a work counter, used
/// `on_cpu_rate`), or the next one's.
///
/// Each half of an off part stands with the on part nearer to it: an on part's counts are
/// scaled up by the off work they stand for, and when the load changes during an off part,
/// the work on either side of the change looks like the on part on its side. (An off part
/// that stood wholly with the on part after it lost its work when the load stopped during it:
/// the next on part counted nothing to scale up, 7.7% of a run's allocations.) But a first
/// half that worked four times as fast as the on part before it saw the load start: that
/// work is like the next on part's, not the idle one's, which may have counted nothing.
pub fn early_half_goes_back(
    on_work_rate: Option<f64>,
    on_cpu_rate: Option<f64>,
    early: OffStretch,
) -> bool {
    if early.seconds <= 0.0 {
        return true;
    }
    if let (Some(rate), Some(work)) = (on_work_rate, early.work) {
        return work as f64 / early.seconds <= 4.0 * rate;
    }
    match (on_cpu_rate, early.cpu_rate) {
        (Some(on), Some(off)) => off <= 4.0 * on,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stretch(seconds: f64, work: u64, cpu_rate: f64) -> OffStretch {
        OffStretch {
            seconds,
            work: Some(work),
            cpu_rate: Some(cpu_rate),
        }
    }

    #[test]
    fn an_on_part_stands_for_the_off_work_on_either_side_of_it() {
        // Steady: 1 s on at 100/s, half of the 3 s off on each side: 300 of work off.
        let share = on_share(
            1.0,
            Some(100.0),
            Some(0.5),
            stretch(1.5, 150, 0.5),
            stretch(1.5, 150, 0.5),
        );
        assert!(close(share, 0.25));
        // Without a work counter: CPU time weighs the time.
        let cpu_only = |mut stretch: OffStretch| {
            stretch.work = None;
            stretch
        };
        let share = on_share(
            1.0,
            None,
            Some(0.5),
            cpu_only(stretch(1.5, 0, 0.25)),
            cpu_only(stretch(1.5, 0, 0.75)),
        );
        assert!(close(share, 0.5 / (0.5 + 0.375 + 1.125)));
        // Nothing known but the time.
        let share = on_share(1.0, None, None, OffStretch::default(), stretch(3.0, 0, 0.0));
        assert!(close(share, 0.25));
        // The last on part before attached all the time: only the stretch before counts.
        let share = on_share(
            1.0,
            Some(100.0),
            None,
            stretch(1.5, 150, 0.5),
            OffStretch::default(),
        );
        assert!(close(share, 0.4));
        // The load stopped a moment into the off part: the on part before it stands for that
        // work (the next one, idle, counts none and could scale up none).
        let before_the_stop = on_share(
            1.0,
            Some(100.0),
            None,
            stretch(1.5, 150, 0.5),
            stretch(1.5, 50, 0.1),
        );
        assert!(close(before_the_stop, 100.0 / 300.0));
        assert_eq!(
            on_share(
                0.0,
                None,
                None,
                OffStretch::default(),
                OffStretch::default()
            ),
            1.0
        );
    }

    #[test]
    fn the_first_half_of_an_off_part_goes_back_unless_the_load_started_in_it() {
        assert!(early_half_goes_back(
            Some(100.0),
            None,
            stretch(1.5, 150, 0.5)
        ));
        assert!(early_half_goes_back(
            Some(100.0),
            None,
            stretch(1.5, 10, 0.5)
        ));
        assert!(!early_half_goes_back(
            Some(10.0),
            None,
            stretch(1.5, 150, 0.5)
        ));
        // By CPU time without a work counter.
        let cpu_only = OffStretch {
            work: None,
            ..stretch(1.5, 0, 0.9)
        };
        assert!(!early_half_goes_back(None, Some(0.1), cpu_only));
        assert!(early_half_goes_back(None, Some(0.5), cpu_only));
        assert!(early_half_goes_back(None, None, OffStretch::default()));
    }

    #[test]
    fn stretches_add_up() {
        let both = stretch(1.0, 100, 0.2).plus(stretch(3.0, 50, 0.6));
        assert_eq!(both.seconds, 4.0);
        assert_eq!(both.work, Some(150));
        assert!(close(both.cpu_rate.unwrap(), 0.5));
        assert_eq!(
            OffStretch::default().plus(stretch(1.0, 1, 0.1)),
            stretch(1.0, 1, 0.1)
        );
        // A stretch without a work reading leaves the sum without one.
        let unread = OffStretch {
            work: None,
            ..stretch(1.0, 0, 0.1)
        };
        assert_eq!(unread.plus(stretch(1.0, 1, 0.1)).work, None);
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn families_that_fit_stay_attached() {
        assert_eq!(
            duty_cycles(0.01, 0.002, &[Some(0.003), Some(0.004)], &[1.0, 1.0]),
            vec![1.0, 1.0]
        );
        // An idle target costs nothing, whatever the budget.
        assert_eq!(duty_cycles(0.01, 0.0, &[Some(0.0)], &[0.3]), vec![1.0]);
    }

    #[test]
    fn a_costly_family_gets_the_fraction_that_fits() {
        // 20% while attached, 0.2% fixed, 1% budget: attached 4% of the time.
        let duties = duty_cycles(0.01, 0.002, &[Some(0.2)], &[1.0]);
        assert!(close(duties[0], 0.04), "{duties:?}");
        // But never below the floor.
        let duties = duty_cycles(0.01, 0.002, &[Some(2.0)], &[1.0]);
        assert!(close(duties[0], MIN_DUTY), "{duties:?}");
        // 10% while attached: 0.8% / 10% = 8%.
        let duties = duty_cycles(0.01, 0.002, &[Some(0.1)], &[1.0]);
        assert!(close(duties[0], 0.08), "{duties:?}");
        assert!(duties[0] * 0.1 + 0.002 <= 0.01 + 1e-12);
    }

    #[test]
    fn a_cheap_family_leaves_its_unused_part_to_a_costly_one() {
        // 0.8% to share: the cheap one needs 0.1%, the costly one gets the other 0.7%.
        let duties = duty_cycles(0.01, 0.002, &[Some(0.05), Some(0.001)], &[1.0, 1.0]);
        assert_eq!(duties[1], 1.0);
        assert!(close(duties[0], 0.007 / 0.05), "{duties:?}");
        // Two costly ones split it evenly.
        let duties = duty_cycles(0.01, 0.0, &[Some(0.05), Some(0.1)], &[1.0, 1.0]);
        assert!(
            close(duties[0] * 0.05, 0.005) && close(duties[1] * 0.1, 0.005),
            "{duties:?}"
        );
    }

    #[test]
    fn fixed_costs_over_the_budget_leave_the_floor() {
        let duties = duty_cycles(0.01, 0.02, &[Some(0.05)], &[1.0]);
        assert_eq!(duties, vec![MIN_DUTY]);
    }

    #[test]
    fn the_planning_share_weighs_cpu_and_follows_a_rise_at_once_a_fall_half_way_and_a_stop_at_once()
    {
        // Nothing else known: the share as measured.
        assert!(close(planning_share(0.3, None, None, None), 0.3));
        // The target used 10% more CPU per second while on: the same share of that is 10%
        // more of its average.
        assert!(close(
            planning_share(0.3, Some(1.1e9), Some(1e9), None),
            0.33
        ));
        // A paced target whose CPU grows with the probes' cost: its cost is weighed by it.
        assert!(close(
            planning_share(0.2, Some(1.25e8), Some(1e8), None),
            0.25
        ));
        // Absurd ratios (a target that slept while off) are bounded.
        assert!(close(planning_share(0.2, Some(1e9), Some(1e6), None), 0.4));
        // A rise counts at once, a fall half way.
        assert!(close(planning_share(0.4, None, None, Some(0.3)), 0.4));
        assert!(close(planning_share(0.2, None, None, Some(0.3)), 0.25));
        // A load that stopped counts at once.
        assert!(close(planning_share(0.05, None, None, Some(0.3)), 0.05));
        assert!(close(planning_share(0.0, None, None, Some(0.3)), 0.0));
        // So a cost that varies from part to part around 30% is planned on its higher side:
        // each part's duty, of budget ÷ cost planned, then costs the budget or less on
        // average, where planning on the last part alone would cost 4% more.
        let costs = [0.3, 0.36, 0.25, 0.33, 0.27, 0.36, 0.24, 0.3];
        let spent = |plan: &dyn Fn(f64, Option<f64>) -> f64| {
            let mut last = None;
            let mut spent = 0.0;
            for pair in costs.windows(2) {
                let planned = plan(pair[0], last);
                last = Some(planned);
                spent += 0.09 / planned * pair[1];
            }
            spent / (costs.len() - 1) as f64
        };
        let naive = spent(&|cost, _| cost);
        let planned = spent(&|cost, last| planning_share(cost, None, None, last));
        assert!(naive > 0.093 && planned < 0.09, "{naive} {planned}");
    }

    #[test]
    fn an_unmeasured_family_keeps_its_duty() {
        let duties = duty_cycles(0.01, 0.0, &[None, Some(0.001)], &[0.25, 0.5]);
        assert_eq!(duties, vec![0.25, 1.0]);
    }
}
