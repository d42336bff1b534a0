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

#[cfg(test)]
mod tests {
    use super::*;

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
