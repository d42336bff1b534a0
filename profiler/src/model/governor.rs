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
    fn an_unmeasured_family_keeps_its_duty() {
        let duties = duty_cycles(0.01, 0.0, &[None, Some(0.001)], &[0.25, 0.5]);
        assert_eq!(duties, vec![0.25, 1.0]);
    }
}
