//! Whether a map's entries spread over its buckets (or swiss groups) the way a uniformly random
//! hash spreads them, and where the unevenness a person sees comes from instead.
//!
//! Go seeds every map's hash at random when it makes the map, so real keys rarely collide: a
//! heatmap's dark and pale cells come from load (a random hash already leaves a fifth of the
//! buckets of a full bucket map over 8 entries), a growth in progress (the new array fills as the
//! old buckets are moved over), deletes (chains and tombstones stay until the map grows) and a
//! drained map (it never shrinks). [`spread`] compares the observed distribution with the
//! random-hash one and says which of those it is; [`advice`] says what to do about it.
//!
//! Bucket maps (Go ≤ 1.23): a key's bucket is its hash modulo the 2^B buckets, and a bucket holds
//! any number of entries (8 in itself, the rest in its overflow chain), so under a uniform hash
//! the entries per bucket are Binomial(n, 1/2^B). Swiss tables (Go 1.24+): a key's home group is
//! H1(hash) modulo its table's groups, and a key whose home group is full goes on along the
//! probe sequence (offsets 0, 1, 3, 6, …), so a group holds at most 8 and a binomial is wrong:
//! the expectation is simulated, inserting each table's entries as random hashes with that
//! probe sequence.
use std::collections::BTreeMap;

use super::maps::{Distribution, MapLayout, MapShape, Unit};

/// Slots in a bucket (bucket maps) or in a group (swiss tables).
pub const SLOTS: u32 = 8;
/// A bucket map grows when it holds more than 6.5 entries per bucket on average
/// (`loadFactorNum / loadFactorDen` = 13 / 2, src/runtime/map.go, Go ≤ 1.23).
pub const BUCKET_LOAD_LIMIT: f64 = 6.5;
/// A swiss table is rebuilt when its full slots and tombstones pass 7/8 of its slots
/// (`maxAvgGroupLoad` = 7 of `abi.SwissMapGroupSlots` = 8, src/internal/runtime/maps).
pub const GROUP_LOAD_LIMIT: f64 = 7.0 / 8.0;
/// Inserts the swiss simulation makes at most, give or take one table per distinct table shape
/// (a 1M-entry map: one run per table, a few tens of milliseconds).
const SIMULATION_BUDGET: u64 = 1 << 20;
/// Runs per table at most (small maps are simulated this many times and averaged).
const MAX_RUNS: u64 = 16;
/// A map drained after growing: under a quarter of its slots full, and big enough to matter.
const DRAINED_FILL: f64 = 0.25;
const DRAINED_BYTES: u64 = 64 * 1024;
const DRAINED_SLOTS: u64 = 4096;
/// Tombstones worth a line of advice: over a tenth of a swiss map's slots.
const TOMBSTONE_SHARE: f64 = 0.10;

/// Expected number of units per value (value → units), as a random hash would give.
pub type Expected = BTreeMap<u32, f64>;

/// How the observed spread compares with a random hash's, and why it looks the way it does.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Spread {
    pub layout: MapLayout,
    /// What the expectation is.
    pub model: Model,
    /// Units compared: the current bucket array's buckets (old buckets awaiting evacuation are
    /// not: their entries belong to the old array), or every swiss group.
    pub units: u64,
    /// Entries in those units.
    pub entries: u64,
    /// Units per value: entries per bucket (its chain included), or full slots per group.
    pub observed: Distribution,
    /// The same for a random hash at the same load.
    pub expected: Expected,
    /// The statistic the verdict is read from.
    pub overfull: Overfull,
    /// Total-variation distance between the two distributions (half the sum of the absolute
    /// differences of their shares: 0 = the same shape, 1 = nothing in common), and the
    /// distance random hashes of this size show by chance alone. Reported, not judged.
    pub distance: f64,
    pub distance_noise: f64,
    /// In JSON: `"verdict": "like_random"`, or `"verdict": "collide", "ratio": 3.2`.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Where the unevenness comes from: load, a growth in progress, deletes, tombstones, a
    /// drained map. One sentence each.
    pub reasons: Vec<String>,
}

/// The random-hash expectation a [`Spread`] compares with.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Model {
    /// Bucket maps: Binomial(entries, 1/live) over the `live` buckets whose old bucket has been
    /// evacuated (all of them outside a growth); the other `awaiting` buckets are empty until
    /// their old bucket is moved over.
    Binomial {
        entries: u64,
        live: u64,
        awaiting: u64,
    },
    /// Swiss tables: each table's entries inserted as random hashes with Go's probe sequence,
    /// `simulated_tables` tables in all (several runs per table for small maps), averaged.
    Probing {
        tables: u64,
        simulated_tables: u64,
        simulated_entries: u64,
    },
    /// A small swiss map: one group of 8 slots, where no hash decides anything.
    SingleGroup,
    /// No units to compare.
    Nothing,
}

impl Model {
    /// One line for a chart's legend: what the expectation is.
    pub fn describe(&self) -> String {
        match *self {
            Self::Binomial {
                entries,
                live,
                awaiting,
            } => {
                let mean = entries as f64 / live.max(1) as f64;
                let awaiting = if awaiting > 0 {
                    format!(", {awaiting} buckets empty until evacuated")
                } else {
                    String::new()
                };
                format!(
                    "random hash: Binomial({entries}, 1/{live}), {mean:.1} per bucket{awaiting}"
                )
            }
            Self::Probing {
                simulated_tables, ..
            } => format!(
                "random hash: Go's probe sequence simulated over {simulated_tables} table(s)"
            ),
            Self::SingleGroup => "one group: no hash decides where entries go".into(),
            Self::Nothing => "no buckets or groups to compare".into(),
        }
    }
}

/// The verdict's statistic: units filled to the point where the map pays for it.
///
/// Bucket maps: buckets holding more than 8 entries (value ≥ 9), which need an overflow bucket.
/// Swiss tables: groups with all 8 slots full (value = 8), which send inserts and lookups on to
/// the next group of the probe sequence.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Overfull {
    /// A unit counts from this value up: 9 (bucket maps) or 8 (swiss tables).
    pub from: u32,
    pub observed: u64,
    /// What a random hash gives at the same load.
    pub expected: f64,
    /// The most units the entries could make overfull (9 entries per bucket, or 8 per group,
    /// table by table).
    pub possible: u64,
}

impl Overfull {
    /// The observed count at or above which the keys read as colliding (the ratio half of the
    /// test in [`verdict`]).
    pub fn threshold(&self) -> f64 {
        let expected = self.expected.max(0.0);
        let headroom = (self.possible as f64 - expected).max(0.0);
        (2.0 * expected).min(expected + headroom / 2.0)
    }

    /// Observed minus expected that chance alone does not reach (the excess half of the test).
    pub fn margin(&self) -> f64 {
        3.0 * self.expected.max(0.0).sqrt() + 4.0
    }

    /// The fewest overfull units that read as colliding.
    pub fn colliding_from(&self) -> u64 {
        let excess = self.expected.max(0.0) + self.margin();
        // The excess test is strict: one more than a whole number that only equals it.
        let past_excess = excess.floor() as u64 + 1;
        past_excess.max(self.threshold().ceil() as u64)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    LikeRandom,
    /// `ratio`: observed overfull units over expected (expected floored at 1 unit).
    Collide {
        ratio: f64,
    },
}

/// Collisions or chance: the verdict on an [`Overfull`] count.
///
/// The keys collide when the overfull units are at least twice what a random hash gives
/// (or, where a random hash already fills over a third of what the entries could fill, when they
/// close at least half the gap between the expectation and that most: at high load twice the
/// expectation is out of reach), and the excess over the expectation is more than
/// 3·√expected + 4 units: three standard deviations of a Poisson count, plus 4 units so that a
/// few extra full buckets in a small map never read as collisions. The ratio reported is
/// observed / max(expected, 1).
pub fn verdict(overfull: &Overfull) -> Verdict {
    let observed = overfull.observed as f64;
    let expected = overfull.expected.max(0.0);
    if observed >= overfull.threshold() && observed - expected > overfull.margin() {
        Verdict::Collide {
            ratio: observed / expected.max(1.0),
        }
    } else {
        Verdict::LikeRandom
    }
}

impl Spread {
    /// "bucket" or "group".
    pub fn unit_name(&self) -> &'static str {
        unit_name(self.layout)
    }

    /// The verdict as one line: "keys spread like a random hash", or "N× more overfull buckets
    /// than a random hash gives: the keys collide".
    /// Without a comparison (see [`Spread::comparable`]) it says so instead.
    pub fn headline(&self) -> String {
        match self.model {
            Model::Nothing => return "no buckets or groups yet: nothing to compare".into(),
            Model::SingleGroup => {
                return "one group holds every entry: nothing to compare".into();
            }
            Model::Binomial { .. } | Model::Probing { .. } => {}
        }
        match self.verdict {
            Verdict::LikeRandom => "keys spread like a random hash".into(),
            Verdict::Collide { ratio } => format!(
                "{}× more {} than a random hash gives: the keys collide",
                ratio_text(ratio),
                self.overfull_name()
            ),
        }
    }

    /// What the statistic counts: "overfull buckets" or "full groups".
    pub fn overfull_name(&self) -> &'static str {
        match self.layout {
            MapLayout::Buckets => "overfull buckets",
            MapLayout::Swiss => "full groups",
        }
    }

    /// Whether there is a random-hash expectation to compare with (not for a small swiss map's
    /// single group, nor for a map without buckets or groups).
    pub fn comparable(&self) -> bool {
        matches!(self.model, Model::Binomial { .. } | Model::Probing { .. })
    }

    /// The statistic with its numbers, one line.
    pub fn statistic(&self) -> String {
        if !self.comparable() {
            return format!("nothing to compare: {}", self.model.describe());
        }
        let what = match self.layout {
            MapLayout::Buckets => "overfull buckets (over 8 entries: an overflow bucket each)",
            MapLayout::Swiss => "full groups (8 of 8 slots: probes go on past them)",
        };
        format!(
            "{what}: {} seen; a random hash gives {:.1} ± {:.1}; collisions would show as {} or more",
            self.overfull.observed,
            self.overfull.expected,
            self.overfull.expected.max(0.0).sqrt(),
            self.overfull.colliding_from(),
        )
    }

    /// The secondary figure, one line.
    pub fn distance_line(&self) -> String {
        format!(
            "distance from a random hash: {:.3} (total variation; chance alone gives about {:.3})",
            self.distance, self.distance_noise
        )
    }
}

fn unit_name(layout: MapLayout) -> &'static str {
    match layout {
        MapLayout::Buckets => "bucket",
        MapLayout::Swiss => "group",
    }
}

fn ratio_text(ratio: f64) -> String {
    if ratio >= 10.0 {
        format!("{ratio:.0}")
    } else {
        format!("{ratio:.1}")
    }
}

/// "37%"; "<1%" and ">99%" for shares that would round to 0% or 100% and are not.
pub fn percent(share: f64) -> String {
    if share > 0.0 && share < 0.01 {
        "<1%".into()
    } else if share > 0.99 && share < 1.0 {
        ">99%".into()
    } else {
        format!("{:.0}%", 100.0 * share)
    }
}

/// "1 tombstone", "3 tombstones".
pub fn things(count: u64, word: &str) -> String {
    if count == 1 {
        format!("1 {word}")
    } else {
        format!("{count} {word}s")
    }
}

/// Bytes for a person: "512 B", "64.0 KiB", "1.5 MiB", "2.0 GiB".
pub fn human_bytes(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let value = bytes as f64;
    if value < KIB {
        format!("{bytes} B")
    } else if value < KIB * KIB {
        format!("{:.1} KiB", value / KIB)
    } else if value < KIB * KIB * KIB {
        format!("{:.1} MiB", value / (KIB * KIB))
    } else {
        format!("{:.1} GiB", value / (KIB * KIB * KIB))
    }
}

/// Compare a map's spread with a random hash's, and say where the unevenness comes from.
pub fn spread(shape: &MapShape) -> Spread {
    let mut spread = match shape.layout {
        MapLayout::Buckets => bucket_spread(shape),
        MapLayout::Swiss => swiss_spread(shape),
    };
    let (distance, noise) = total_variation(&spread.observed, &spread.expected, spread.units);
    spread.distance = distance;
    spread.distance_noise = noise;
    spread.verdict = verdict(&spread.overfull);
    spread.reasons = reasons(shape, &spread);
    spread
}

fn empty_spread(layout: MapLayout, model: Model, from: u32) -> Spread {
    Spread {
        layout,
        model,
        units: 0,
        entries: 0,
        observed: Distribution::new(),
        expected: Expected::new(),
        overfull: Overfull {
            from,
            observed: 0,
            expected: 0.0,
            possible: 0,
        },
        distance: 0.0,
        distance_noise: 0.0,
        verdict: Verdict::LikeRandom,
        reasons: Vec::new(),
    }
}

fn observed_of<'a>(units: impl Iterator<Item = &'a Unit>) -> (Distribution, u64, u64) {
    let mut observed = Distribution::new();
    let (mut count, mut entries) = (0u64, 0u64);
    for unit in units {
        *observed.entry(u32::from(unit.entries)).or_default() += 1;
        count += 1;
        entries += u64::from(unit.entries);
    }
    (observed, count, entries)
}

fn overfull_count(observed: &Distribution, from: u32) -> u64 {
    observed.range(from..).map(|(_, &count)| count).sum()
}

/// Bucket maps: Binomial over the buckets that can hold entries.
fn bucket_spread(shape: &MapShape) -> Spread {
    let from = SLOTS + 1;
    let (observed, units, entries) = observed_of(shape.units.iter().filter(|unit| !unit.old));
    if units == 0 {
        return empty_spread(MapLayout::Buckets, Model::Nothing, from);
    }
    // During a growth, a new bucket fills only once its old bucket is evacuated (a write to a
    // bucket evacuates its old bucket first: growWork in src/runtime/map.go): the new array's
    // entries are spread over those live buckets, the others wait, empty.
    let live = match shape.evacuation {
        Some(growth) if growth.old_buckets > 0 => {
            let waiting = shape.units.iter().filter(|unit| unit.old).count() as u64;
            let evacuated = growth.old_buckets.saturating_sub(waiting);
            let per_old = (units / growth.old_buckets).max(1);
            (evacuated * per_old).min(units)
        }
        _ => units,
    };
    // Entries without a live bucket to hold them are figures that do not add up: compare over
    // the whole array rather than divide by nothing.
    let live = if live == 0 && entries > 0 {
        units
    } else {
        live
    };
    let awaiting = units - live;
    let mut expected = Expected::new();
    if awaiting > 0 {
        *expected.entry(0).or_default() += awaiting as f64;
    }
    let mut overfull_expected = 0.0;
    if live > 0 {
        for (value, probability) in binomial(entries, 1.0 / live as f64, live) {
            let count = probability * live as f64;
            let value = u32::try_from(value).unwrap_or(u32::MAX);
            if value >= from {
                overfull_expected += count;
            }
            *expected.entry(value).or_default() += count;
        }
    }
    expected.retain(|_, count| *count >= 1e-6);
    let overfull = Overfull {
        from,
        observed: overfull_count(&observed, from),
        expected: overfull_expected,
        possible: (entries / u64::from(from)).min(live),
    };
    Spread {
        model: Model::Binomial {
            entries,
            live,
            awaiting,
        },
        units,
        entries,
        observed,
        expected,
        overfull,
        ..empty_spread(MapLayout::Buckets, Model::Nothing, from)
    }
}

/// P(X = k) for X ~ Binomial(n, p), as (k, probability) from k = 0 up to past the mean where
/// `units` × P falls below 1e-9. Computed in log space by the recurrence
/// P(k+1) = P(k) · (n−k)/(k+1) · p/(1−p), so neither a large n nor a large mean underflows.
pub fn binomial(n: u64, p: f64, units: u64) -> Vec<(u64, f64)> {
    if n == 0 || p <= 0.0 || p.is_nan() {
        return vec![(0, 1.0)];
    }
    if p >= 1.0 {
        return vec![(n, 1.0)];
    }
    let ln_q = (-p).ln_1p();
    let ln_odds = p.ln() - ln_q;
    let mean = n as f64 * p;
    let spread = (mean * (1.0 - p)).sqrt();
    let negligible = 1e-9 / units.max(1) as f64;
    // Far enough past the mean that the rest is negligible, whatever the rounding.
    let last = ((mean + 40.0 * spread + 40.0).ceil() as u64).min(n);
    let mut terms = Vec::new();
    let mut ln_p = n as f64 * ln_q;
    for k in 0..=last {
        let probability = ln_p.exp();
        if probability >= negligible || (k as f64) <= mean {
            terms.push((k, probability));
        } else if k as f64 > mean {
            break;
        }
        ln_p += ((n - k) as f64 / (k + 1) as f64).ln() + ln_odds;
    }
    // Drop the leading zeros of a large mean (values a random hash never gives).
    let first = terms
        .iter()
        .position(|&(_, probability)| probability >= negligible)
        .unwrap_or(0);
    terms.split_off(first)
}

/// Swiss tables: each table simulated with Go's probe sequence.
fn swiss_spread(shape: &MapShape) -> Spread {
    let from = SLOTS;
    let (observed, units, entries) = observed_of(shape.units.iter());
    if units == 0 {
        return empty_spread(MapLayout::Swiss, Model::Nothing, from);
    }
    let overfull_observed = overfull_count(&observed, from);
    if shape.tables.is_empty() {
        // A small map: its one group holds every entry, no hash chooses.
        let expected = observed.iter().map(|(&k, &v)| (k, v as f64)).collect();
        return Spread {
            model: Model::SingleGroup,
            units,
            entries,
            observed,
            expected,
            overfull: Overfull {
                from,
                observed: overfull_observed,
                expected: overfull_observed as f64,
                possible: overfull_observed,
            },
            ..empty_spread(MapLayout::Swiss, Model::Nothing, from)
        };
    }
    // (groups, full slots) of each table; groups come table after table in directory order
    // (process/gomap.rs), so a table's full slots are its own groups' sum.
    let mut shapes: Vec<(u64, u64)> = Vec::with_capacity(shape.tables.len());
    let mut next = 0usize;
    for table in &shape.tables {
        let groups = (u64::from(table.capacity) / u64::from(SLOTS)).max(1);
        let end = next.saturating_add(groups as usize).min(shape.units.len());
        let used: u64 = shape.units[next.min(end)..end]
            .iter()
            .map(|unit| u64::from(unit.entries))
            .sum();
        shapes.push((groups, used));
        next = end;
    }
    if shapes.iter().map(|&(groups, _)| groups).sum::<u64>() != units {
        // Tables and groups that do not line up: simulate one table of all the groups.
        shapes = vec![(units, entries)];
    }
    let simulation = simulate(&shapes);
    let possible = shapes
        .iter()
        .map(|&(groups, used)| (used / u64::from(SLOTS)).min(groups))
        .sum();
    let overfull_expected = simulation.counts[SLOTS as usize];
    let expected = simulation
        .counts
        .iter()
        .enumerate()
        .filter(|&(_, &count)| count > 0.0)
        .map(|(value, &count)| (value as u32, count))
        .collect();
    Spread {
        model: Model::Probing {
            tables: shape.tables.len() as u64,
            simulated_tables: simulation.tables,
            simulated_entries: simulation.entries,
        },
        units,
        entries,
        observed,
        expected,
        overfull: Overfull {
            from,
            observed: overfull_observed,
            expected: overfull_expected,
            possible,
        },
        ..empty_spread(MapLayout::Swiss, Model::Nothing, from)
    }
}

/// A small, fixed-seed generator (splitmix64): the simulation is the same on every run.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

struct Simulation {
    /// Expected groups with 0..=8 full slots, summed over the tables.
    counts: [f64; SLOTS as usize + 1],
    tables: u64,
    entries: u64,
}

/// The expected full slots per group of tables of (groups, used), by simulation.
///
/// Tables of the same shape share their runs: a shape held by m tables is simulated
/// ⌈m · scale⌉ times and weighted m / runs, where scale spends [`SIMULATION_BUDGET`] inserts
/// (at most [`MAX_RUNS`] runs per table).
fn simulate(tables: &[(u64, u64)]) -> Simulation {
    let mut by_shape: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for &(groups, used) in tables {
        let used = used.min(groups * u64::from(SLOTS));
        *by_shape.entry((groups, used)).or_default() += 1;
    }
    let total: u64 = by_shape
        .iter()
        .map(|(&(_, used), &count)| used * count)
        .sum();
    let scale = (SIMULATION_BUDGET as f64 / total.max(1) as f64).min(MAX_RUNS as f64);
    let mut simulation = Simulation {
        counts: [0.0; SLOTS as usize + 1],
        tables: 0,
        entries: 0,
    };
    let mut groups_full: Vec<u8> = Vec::new();
    for (&(groups, used), &count) in &by_shape {
        let runs = ((count as f64 * scale).ceil() as u64).clamp(1, count * MAX_RUNS);
        let weight = count as f64 / runs as f64;
        let mut random = SplitMix64(0x6d61_7073_636f_7065 ^ (groups << 32) ^ used);
        let mut tally = [0u64; SLOTS as usize + 1];
        for _ in 0..runs {
            fill_table(&mut groups_full, groups as usize, used, &mut random);
            for &full in &groups_full {
                tally[usize::from(full)] += 1;
            }
        }
        for (value, &groups) in tally.iter().enumerate() {
            simulation.counts[value] += groups as f64 * weight;
        }
        simulation.tables += runs;
        simulation.entries += runs * used;
    }
    simulation
}

/// Insert `used` random hashes into `groups` empty groups: home group H1 = hash >> 7 modulo the
/// groups, then the triangular probe sequence of src/internal/runtime/maps/table.go (offsets 1,
/// 2, 3, … added in turn: 0, 1, 3, 6, … from home), which visits every group once when their
/// number is a power of two; any other number (figures that did not line up) probes linearly.
fn fill_table(full: &mut Vec<u8>, groups: usize, used: u64, random: &mut SplitMix64) {
    full.clear();
    full.resize(groups.max(1), 0);
    let groups = full.len();
    let power_of_two = groups.is_power_of_two();
    let mask = groups - 1;
    for _ in 0..used {
        let hash = random.next() >> 7;
        let mut group = if power_of_two {
            hash as usize & mask
        } else {
            (hash % groups as u64) as usize
        };
        // `used` is at most 8 per group, so some group has room within `groups` probes.
        for step in 1..=groups {
            if u32::from(full[group]) < SLOTS {
                full[group] += 1;
                break;
            }
            group = if power_of_two {
                (group + step) & mask
            } else {
                (group + 1) % groups
            };
        }
    }
}

/// Half the sum of absolute differences of the shares, and what chance alone gives: for a
/// multinomial sample of `units`, E|share − p| ≈ √(2/π) · √(p(1−p)/units) per value.
fn total_variation(observed: &Distribution, expected: &Expected, units: u64) -> (f64, f64) {
    if units == 0 {
        return (0.0, 0.0);
    }
    let units_f = units as f64;
    let mut distance = 0.0;
    let mut noise = 0.0;
    let values: std::collections::BTreeSet<u32> =
        observed.keys().chain(expected.keys()).copied().collect();
    for value in values {
        let seen = observed.get(&value).copied().unwrap_or(0) as f64 / units_f;
        let share = expected.get(&value).copied().unwrap_or(0.0) / units_f;
        distance += (seen - share).abs();
        noise +=
            (2.0 / std::f64::consts::PI).sqrt() * (share * (1.0 - share).max(0.0) / units_f).sqrt();
    }
    (distance / 2.0, noise / 2.0)
}

/// Whether a map holds far more than it needs: under a quarter full and big enough to matter.
pub fn drained(shape: &MapShape) -> bool {
    let fill = shape.entries as f64 / shape.capacity_slots.max(1) as f64;
    fill < DRAINED_FILL && (shape.bytes > DRAINED_BYTES || shape.capacity_slots >= DRAINED_SLOTS)
}

fn reasons(shape: &MapShape, spread: &Spread) -> Vec<String> {
    let mut reasons = Vec::new();
    match spread.model {
        Model::Nothing => {
            reasons.push(format!(
                "no {}s allocated yet: nothing to compare",
                spread.unit_name()
            ));
            return reasons;
        }
        Model::SingleGroup => {
            reasons.push(format!(
                "a small map: one group of 8 slots holding {} entries; no hash chooses where \
                 they go",
                spread.entries
            ));
        }
        Model::Binomial { live, awaiting, .. } => {
            let mean = spread.entries as f64 / live.max(1) as f64;
            let share_over = spread.overfull.expected / live.max(1) as f64;
            let share_empty = spread.expected.get(&0).copied().unwrap_or(0.0) - awaiting as f64;
            reasons.push(format!(
                "load: {mean:.1} entries per bucket (Go grows past {BUCKET_LOAD_LIMIT}); at that \
                 load a random hash already leaves {} of the buckets over 8 entries and {} \
                 empty",
                percent(share_over),
                percent(share_empty.max(0.0) / live.max(1) as f64),
            ));
            if let Some(growth) = shape.evacuation {
                let waiting = shape.units.iter().filter(|unit| unit.old);
                let (old, old_entries) = waiting.fold((0u64, 0u64), |(count, entries), unit| {
                    (count + 1, entries + u64::from(unit.entries))
                });
                let kind = if growth.same_size {
                    "a same-size growth (too many overflow buckets, left by deletes) is \
                     compacting the buckets"
                } else {
                    "a growth to twice the buckets is in progress"
                };
                reasons.push(format!(
                    "{kind}: {} of {} old buckets evacuated; {old} old buckets not yet \
                     evacuated hold {old_entries} entries, and {awaiting} new buckets stay \
                     empty until they are",
                    growth.old_buckets - old.min(growth.old_buckets),
                    growth.old_buckets,
                ));
            }
            let left_by_deletes = shape
                .units
                .iter()
                .filter(|unit| !unit.old && unit.overflow > 0 && u32::from(unit.entries) <= SLOTS)
                .count();
            if left_by_deletes > 0 {
                reasons.push(format!(
                    "deletes: {} keep overflow buckets while holding 8 entries or fewer; chains \
                     are freed only when the map grows",
                    things(left_by_deletes as u64, "bucket")
                ));
            }
        }
        Model::Probing { .. } => {
            let capacity: u64 = shape
                .tables
                .iter()
                .map(|table| u64::from(table.capacity))
                .sum();
            let load = spread.entries as f64 / capacity.max(1) as f64;
            reasons.push(format!(
                "load: {} of the tables' slots full (Go rebuilds a table past 7/8); at that \
                 load a random hash already fills {} of the groups, and keys whose home group \
                 is full probe on to the next groups",
                percent(load),
                percent(spread.overfull.expected / spread.units.max(1) as f64),
            ));
            let loads = shape
                .tables
                .iter()
                .map(|table| f64::from(table.used) / f64::from(table.capacity.max(1)));
            let (low, high) = loads.fold((f64::MAX, 0.0f64), |(low, high), load| {
                (low.min(load), high.max(load))
            });
            if shape.tables.len() > 1 && high - low >= 0.25 {
                reasons.push(format!(
                    "tables differ: from {} to {} full; a table that fills splits into two \
                     half-full tables",
                    percent(low),
                    percent(high)
                ));
            }
        }
    }
    if shape.layout == MapLayout::Swiss {
        let tombstones = shape.tombstones();
        if tombstones > 0 {
            let blocked = shape
                .units
                .iter()
                .filter(|unit| {
                    u32::from(unit.entries) < SLOTS
                        && u32::from(unit.entries) + u32::from(unit.tombstones) >= SLOTS
                })
                .count();
            reasons.push(format!(
                "tombstones: {}, {} of the slots; {} no empty slot only because of them, so \
                 lookups probe past them",
                things(tombstones, "deleted slot"),
                percent(tombstones as f64 / shape.capacity_slots.max(1) as f64),
                match blocked {
                    1 => "1 group has".to_string(),
                    count => format!("{count} groups have"),
                },
            ));
        }
    }
    if let Verdict::Collide { .. } = spread.verdict {
        reasons.push(
            "collisions: Go seeds every map's hash at random, so keys rarely collide; compare \
             with the next snapshot (a map read while it was rebuilt can look uneven)"
                .into(),
        );
    }
    if drained(shape) {
        reasons.push(format!(
            "drained: {} of the slots full; the map grew for more entries than it holds now",
            percent(shape.entries as f64 / shape.capacity_slots.max(1) as f64)
        ));
    }
    reasons
}

/// What the map was seen doing, for [`advice`].
#[derive(Clone, Copy, Debug, Default)]
pub struct History<'a> {
    /// Growths seen while watched.
    pub growths: u64,
    /// The size hint it was made with (0 if unknown).
    pub hint: u64,
    /// Its type as Go prints it, for a `make` line.
    pub type_name: Option<&'a str>,
}

/// `n` rounded up to two significant digits (12345 → 13000), a size to write in code.
pub fn round_up_two_digits(n: u64) -> u64 {
    if n < 100 {
        return n;
    }
    let mut magnitude = 1u64;
    while n / magnitude >= 100 {
        magnitude *= 10;
    }
    n.div_ceil(magnitude).saturating_mul(magnitude)
}

/// What to do, where the figures say so: pre-size a map that grew while watched, rebuild one
/// that was drained, and name a swiss map's tombstones when they take over a tenth of its slots.
pub fn advice(shape: &MapShape, history: &History) -> Vec<String> {
    let mut advice = Vec::new();
    let fill = shape.entries as f64 / shape.capacity_slots.max(1) as f64;
    let drained = drained(shape);
    // A map of a group or two is not worth sizing (and too small to be tracked anyway).
    if history.growths >= 1 && !drained && shape.entries > 2 * u64::from(SLOTS) {
        let size = round_up_two_digits(shape.entries.max(history.hint));
        let map_type = history.type_name.unwrap_or("map[K]V");
        let times = if history.growths == 1 {
            "once".to_string()
        } else {
            format!("{} times", history.growths)
        };
        let made = if history.hint > 0 {
            format!("made with a size hint of {}, it ", history.hint)
        } else {
            "it ".into()
        };
        advice.push(format!(
            "{made}grew {times} while watched: pre-size it, make({map_type}, {size}), for the \
             {} entries it holds",
            shape.entries
        ));
    }
    if drained {
        advice.push(format!(
            "holds {} for {} entries ({} full): maps never shrink; rebuild it (copy the entries \
             into a new map)",
            human_bytes(shape.bytes),
            shape.entries,
            percent(fill)
        ));
    }
    if shape.layout == MapLayout::Swiss {
        let tombstones = shape.tombstones();
        let share = tombstones as f64 / shape.capacity_slots.max(1) as f64;
        // A small map's single group is rebuilt whole when it grows: no advice for it.
        if share > TOMBSTONE_SHARE && !shape.tables.is_empty() {
            advice.push(format!(
                "tombstones take {} of the slots: inserts reuse them, but only rebuilding a \
                 table when it fills up clears them; rebuild the map to clear them now",
                percent(share)
            ));
        }
    }
    advice
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::maps::{Evacuation, Table};

    fn bucket_shape(entries_per_bucket: &[u16]) -> MapShape {
        let units: Vec<Unit> = entries_per_bucket
            .iter()
            .map(|&entries| Unit {
                entries,
                overflow: entries.saturating_sub(1) / 8,
                ..Unit::default()
            })
            .collect();
        MapShape {
            layout: MapLayout::Buckets,
            entries: units.iter().map(|unit| u64::from(unit.entries)).sum(),
            capacity_slots: units
                .iter()
                .map(|unit| 8 * (1 + u64::from(unit.overflow)))
                .sum(),
            bytes: 144 * units.len() as u64,
            log2_buckets: Some(units.len().max(1).ilog2() as u8),
            units,
            evacuation: None,
            directory_len: None,
            tables: Vec::new(),
        }
    }

    /// Entries per bucket of `entries` keys hashed uniformly into `buckets` buckets.
    fn random_buckets(entries: u64, buckets: usize, seed: u64) -> Vec<u16> {
        let mut random = SplitMix64(seed);
        let mut counts = vec![0u16; buckets];
        for _ in 0..entries {
            counts[(random.next() % buckets as u64) as usize] += 1;
        }
        counts
    }

    fn swiss_shape(tables: &[(u16, Vec<Unit>)]) -> MapShape {
        let units: Vec<Unit> = tables.iter().flat_map(|(_, units)| units.clone()).collect();
        MapShape {
            layout: MapLayout::Swiss,
            entries: units.iter().map(|unit| u64::from(unit.entries)).sum(),
            capacity_slots: tables
                .iter()
                .map(|&(capacity, _)| u64::from(capacity))
                .sum(),
            bytes: 0,
            units,
            log2_buckets: None,
            evacuation: None,
            directory_len: Some(tables.len().next_power_of_two() as u64),
            tables: tables
                .iter()
                .map(|(capacity, units)| Table {
                    capacity: *capacity,
                    used: units.iter().map(|unit| unit.entries).sum(),
                    local_depth: 0,
                })
                .collect(),
        }
    }

    fn group(entries: u16, tombstones: u8) -> Unit {
        Unit {
            entries,
            tombstones,
            ..Unit::default()
        }
    }

    /// A table filled the way Go fills it, by a different generator than the model's.
    fn random_table(groups: usize, used: u64, seed: u64) -> Vec<Unit> {
        let mut full = Vec::new();
        fill_table(&mut full, groups, used, &mut SplitMix64(seed));
        full.into_iter()
            .map(|entries| group(u16::from(entries), 0))
            .collect()
    }

    #[test]
    fn binomial_is_a_distribution_with_the_right_mean() {
        let terms = binomial(10, 0.5, 1);
        let total: f64 = terms.iter().map(|&(_, p)| p).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let five = terms.iter().find(|&&(k, _)| k == 5).unwrap().1;
        assert!((five - 252.0 / 1024.0).abs() < 1e-12, "{five}");
        // A million entries in 2^18 buckets: the mean is the load, the terms sum to one.
        let terms = binomial(1_000_000, 1.0 / 262_144.0, 262_144);
        let total: f64 = terms.iter().map(|&(_, p)| p).sum();
        let mean: f64 = terms.iter().map(|&(k, p)| k as f64 * p).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        assert!((mean - 1_000_000.0 / 262_144.0).abs() < 1e-6, "{mean}");
        assert!(terms.len() < 40, "{} terms", terms.len());
        // A mean far from zero: no underflow to all zeros.
        let terms = binomial(2000, 0.5, 2);
        let total: f64 = terms.iter().map(|&(_, p)| p).sum();
        assert!((total - 1.0).abs() < 1e-7, "{total}");
        assert!(terms[0].0 > 700, "leading zeros dropped: {:?}", terms[0]);
        assert_eq!(binomial(0, 0.5, 1), vec![(0, 1.0)]);
        assert_eq!(binomial(7, 1.0, 1), vec![(7, 1.0)]);
    }

    #[test]
    fn random_bucket_maps_read_like_a_random_hash() {
        // From light to the load at which Go grows, small and large.
        for (entries, buckets, seed) in [
            (6_500u64, 1024usize, 1u64),
            (200, 64, 2),
            (3_000, 1024, 3),
            (850_000, 131_072, 4),
        ] {
            let shape = bucket_shape(&random_buckets(entries, buckets, seed));
            let spread = spread(&shape);
            assert_eq!(
                spread.verdict,
                Verdict::LikeRandom,
                "{entries}: {spread:#?}"
            );
            assert_eq!(spread.units, buckets as u64);
            assert_eq!(spread.observed, shape.entries_per_unit());
            let units: f64 = spread.expected.values().sum();
            assert!((units - buckets as f64).abs() < 1e-3, "{units}");
            let mean: f64 = spread
                .expected
                .iter()
                .map(|(&k, &v)| f64::from(k) * v)
                .sum();
            assert!(
                (mean - entries as f64).abs() < 1e-3 * entries as f64,
                "{mean}"
            );
            assert!(
                spread.distance < 3.0 * spread.distance_noise + 0.01,
                "{} vs {}",
                spread.distance,
                spread.distance_noise
            );
            assert!(spread.headline().contains("like a random hash"));
            assert!(
                spread.reasons[0].starts_with("load: "),
                "{:?}",
                spread.reasons
            );
        }
    }

    #[test]
    fn skewed_bucket_maps_collide() {
        // 1024 buckets, 3000 entries: 100 buckets of 30, the rest empty.
        let mut buckets = vec![0u16; 1024];
        for bucket in buckets.iter_mut().take(100) {
            *bucket = 30;
        }
        let spread = spread(&bucket_shape(&buckets));
        let Verdict::Collide { ratio } = spread.verdict else {
            panic!("{spread:#?}");
        };
        assert!(ratio > 10.0, "{ratio}");
        assert_eq!(spread.overfull.observed, 100);
        assert!(
            spread
                .headline()
                .ends_with("more overfull buckets than a random hash gives: the keys collide"),
            "{}",
            spread.headline()
        );
        assert!(spread.distance > 0.5, "{}", spread.distance);
        let json = serde_json::to_value(&spread).unwrap();
        assert_eq!(json["verdict"], "collide");
        assert!(json["ratio"].as_f64().unwrap() > 10.0, "{json}");
        assert_eq!(json["overfull"]["observed"], 100);
        assert_eq!(json["observed"]["30"], 100);

        // At the load where Go grows, a random hash already overfills a fifth of the buckets:
        // collisions must stand out from that, and do.
        let mut buckets = random_buckets(6_500, 1024, 9);
        let total: u16 = buckets.iter().sum();
        buckets.iter_mut().for_each(|bucket| *bucket = 0);
        for bucket in buckets.iter_mut().take(total as usize / 12) {
            *bucket = 12;
        }
        assert!(matches!(
            spread_of(&buckets).verdict,
            Verdict::Collide { .. }
        ));
    }

    fn spread_of(buckets: &[u16]) -> Spread {
        spread(&bucket_shape(buckets))
    }

    #[test]
    fn a_few_extra_overfull_buckets_in_a_small_map_are_chance() {
        // 64 buckets at a light load, three of them over 8: the expectation is near zero, but
        // three is within the margin.
        let mut buckets = vec![1u16; 64];
        buckets[0] = 9;
        buckets[1] = 10;
        buckets[2] = 9;
        let spread = spread_of(&buckets);
        assert!(spread.overfull.expected < 1.0, "{:?}", spread.overfull);
        assert_eq!(spread.verdict, Verdict::LikeRandom, "{spread:#?}");
        // The verdict's rule on its own numbers.
        let overfull = |observed, expected, possible| Overfull {
            from: 9,
            observed,
            expected,
            possible,
        };
        assert_eq!(verdict(&overfull(4, 0.01, 100)), Verdict::LikeRandom);
        assert_eq!(
            verdict(&overfull(5, 0.01, 100)),
            Verdict::Collide { ratio: 5.0 }
        );
        assert_eq!(verdict(&overfull(190, 100.0, 1000)), Verdict::LikeRandom);
        assert!(matches!(
            verdict(&overfull(200, 100.0, 1000)),
            Verdict::Collide { ratio } if (ratio - 2.0).abs() < 1e-9
        ));
        // High load: twice the expectation is out of reach, half the headroom is not.
        assert!(matches!(
            verdict(&overfull(800, 600.0, 1000)),
            Verdict::Collide { .. }
        ));
        assert_eq!(verdict(&overfull(780, 600.0, 1000)), Verdict::LikeRandom);
    }

    #[test]
    fn edge_cases_never_panic_or_divide_by_zero() {
        let mut shapes = vec![
            bucket_shape(&[]),
            bucket_shape(&[0]),
            bucket_shape(&[20]),
            bucket_shape(&[0, 0, 0, 0]),
            swiss_shape(&[]),
            swiss_shape(&[(8, vec![group(0, 0)])]),
        ];
        // A small swiss map: one group, no table.
        let mut small = swiss_shape(&[]);
        small.units = vec![group(5, 1)];
        small.entries = 5;
        small.capacity_slots = 8;
        shapes.push(small);
        // Tables and groups that do not line up, a table with more used than slots.
        let mut odd = swiss_shape(&[(64, random_table(8, 40, 1))]);
        odd.units.truncate(5);
        odd.tables.push(Table {
            capacity: 8,
            used: 60,
            local_depth: 0,
        });
        shapes.push(odd);
        // Entries the units do not hold, and a growth with no old buckets.
        let mut inconsistent = bucket_shape(&[0, 0]);
        inconsistent.entries = 50;
        inconsistent.evacuation = Some(Evacuation {
            old_buckets: 0,
            progress: 0,
            same_size: false,
        });
        shapes.push(inconsistent);
        for shape in &shapes {
            let spread = spread(shape);
            assert_eq!(
                spread.verdict,
                Verdict::LikeRandom,
                "{shape:?}: {spread:#?}"
            );
            assert!(spread.distance.is_finite() && spread.distance_noise.is_finite());
            assert!(spread.expected.values().all(|count| count.is_finite()));
            assert!(!spread.reasons.is_empty(), "{shape:?}");
            let _ = advice(shape, &History::default());
        }
        // One bucket holds every entry: a random hash gives the same.
        let one = spread(&bucket_shape(&[20]));
        assert_eq!(one.expected, Expected::from([(20, 1.0)]));
        assert_eq!(one.overfull.observed, 1);
        assert_eq!(spread(&bucket_shape(&[])).model, Model::Nothing);
    }

    #[test]
    fn a_growth_in_progress_leaves_new_buckets_empty_and_says_so() {
        // 8 old buckets doubling to 16: 3 old buckets evacuated into 6 new ones, 5 waiting.
        let mut counts = random_buckets(30, 6, 5);
        counts.extend([0; 10]);
        let mut shape = bucket_shape(&counts);
        shape.units.extend((0..5).map(|_| Unit {
            entries: 6,
            old: true,
            ..Unit::default()
        }));
        shape.entries += 30;
        shape.evacuation = Some(Evacuation {
            old_buckets: 8,
            progress: 3,
            same_size: false,
        });
        let spread = spread(&shape);
        assert_eq!(spread.units, 16);
        assert_eq!(
            spread.model,
            Model::Binomial {
                entries: 30,
                live: 6,
                awaiting: 10
            }
        );
        assert!(spread.expected[&0] >= 10.0);
        assert_eq!(spread.verdict, Verdict::LikeRandom);
        let growth = spread
            .reasons
            .iter()
            .find(|reason| reason.contains("growth"))
            .unwrap();
        assert!(growth.contains("3 of 8 old buckets evacuated"), "{growth}");
        assert!(
            growth.contains("5 old buckets not yet evacuated"),
            "{growth}"
        );
        assert!(growth.contains("hold 30 entries"), "{growth}");
    }

    #[test]
    fn deletes_that_left_chains_are_named() {
        let mut shape = bucket_shape(&random_buckets(4000, 1024, 8));
        shape.units[3].overflow = 2;
        shape.units[3].entries = 2;
        let spread = spread(&shape);
        assert!(
            spread
                .reasons
                .iter()
                .any(|reason| reason.starts_with("deletes: ")),
            "{:?}",
            spread.reasons
        );
    }

    #[test]
    fn random_swiss_tables_read_like_a_random_hash() {
        // Tables at the loads a map goes through: half-full after a split, full before one.
        let tables: Vec<(u16, Vec<Unit>)> = [448u64, 600, 896, 700, 500, 880]
            .iter()
            .enumerate()
            .map(|(seed, &used)| (1024u16, random_table(128, used, 1000 + seed as u64)))
            .collect();
        let shape = swiss_shape(&tables);
        let spread = spread(&shape);
        assert_eq!(spread.verdict, Verdict::LikeRandom, "{spread:#?}");
        assert_eq!(spread.observed, shape.entries_per_unit());
        let units: f64 = spread.expected.values().sum();
        assert!((units - 6.0 * 128.0).abs() < 1e-6, "{units}");
        let slots: f64 = spread
            .expected
            .iter()
            .map(|(&k, &v)| f64::from(k) * v)
            .sum();
        assert!((slots - shape.entries as f64).abs() < 1e-6, "{slots}");
        assert!(spread.expected.keys().all(|&value| value <= SLOTS));
        // At 7/8 a random hash fills a good share of the groups.
        assert!(spread.overfull.expected > 50.0, "{:?}", spread.overfull);
        assert!(
            spread.reasons[0].starts_with("load: "),
            "{:?}",
            spread.reasons
        );
        assert!(
            spread
                .reasons
                .iter()
                .any(|reason| reason.starts_with("tables differ")),
            "{:?}",
            spread.reasons
        );
    }

    #[test]
    fn skewed_swiss_tables_collide() {
        // Half-full tables whose entries sit in full groups, the other groups empty.
        let skewed = |used: u16| -> Vec<Unit> {
            (0..128)
                .map(|index| group(if index < used / 8 { 8 } else { 0 }, 0))
                .collect()
        };
        let shape = swiss_shape(&[(1024, skewed(448)), (1024, skewed(512))]);
        let spread = spread(&shape);
        assert!(
            matches!(spread.verdict, Verdict::Collide { ratio } if ratio > 2.0),
            "{spread:#?}"
        );
        assert!(
            spread
                .headline()
                .contains("more full groups than a random hash gives")
        );
        // Full tables (7/8): twice the expectation is out of reach, and still they collide.
        let shape = swiss_shape(&[(1024, skewed(896)), (1024, skewed(896))]);
        assert!(matches!(spread_verdict(&shape), Verdict::Collide { .. }));
    }

    fn spread_verdict(shape: &MapShape) -> Verdict {
        spread(shape).verdict
    }

    #[test]
    fn the_swiss_simulation_is_bounded_for_a_million_entries() {
        // 1M entries in tables of 1024 slots between half and 7/8 full.
        let mut tables = Vec::new();
        let mut total = 0u64;
        let mut seed = 0u64;
        while total < 1_000_000 {
            let used = 448 + (seed * 37) % 449;
            tables.push((128u64, used));
            total += used;
            seed += 1;
        }
        let started = std::time::Instant::now();
        let simulation = simulate(&tables);
        let elapsed = started.elapsed();
        let shapes = 449u64;
        assert!(
            simulation.entries <= SIMULATION_BUDGET + shapes * 1024,
            "{} inserts",
            simulation.entries
        );
        let groups: f64 = simulation.counts.iter().sum();
        assert!(
            (groups - 128.0 * tables.len() as f64).abs() < 1e-6,
            "{groups}"
        );
        // Generous for an unoptimised test build; a release build takes tens of milliseconds.
        assert!(elapsed < std::time::Duration::from_secs(5), "{elapsed:?}");
        // Deterministic: the same tables give the same expectation.
        assert_eq!(simulate(&tables).counts, simulation.counts);
    }

    #[test]
    fn tombstones_are_named_and_advised_on() {
        let mut units = random_table(128, 600, 77);
        for unit in units.iter_mut().take(60) {
            let free = 8 - unit.entries as u8;
            unit.tombstones = free;
        }
        let shape = swiss_shape(&[(1024, units)]);
        let spread = spread(&shape);
        let line = spread
            .reasons
            .iter()
            .find(|reason| reason.starts_with("tombstones: "))
            .unwrap();
        assert!(
            line.contains("groups have no empty slot only because of them"),
            "{line}"
        );
        let advice = advice(&shape, &History::default());
        assert!(
            advice.iter().any(
                |line| line.starts_with("tombstones take ") && line.contains("rebuild the map")
            ),
            "{advice:?}"
        );
    }

    #[test]
    fn advice_pre_sizes_grown_maps_and_rebuilds_drained_ones() {
        let grown = bucket_shape(&random_buckets(12_345, 2048, 3));
        let history = History {
            growths: 3,
            hint: 0,
            type_name: Some("map[string]int"),
        };
        let advice_lines = advice(&grown, &history);
        assert_eq!(advice_lines.len(), 1, "{advice_lines:?}");
        assert!(
            advice_lines[0].contains("grew 3 times while watched")
                && advice_lines[0].contains("make(map[string]int, 13000)"),
            "{advice_lines:?}"
        );
        assert!(advice(&grown, &History::default()).is_empty());

        // 2^14 buckets drained to 900 entries: rebuild it, and no pre-sizing.
        let mut drained_shape = bucket_shape(&random_buckets(900, 16_384, 4));
        drained_shape.bytes = 2 << 20;
        let advice_lines = advice(&drained_shape, &history);
        assert_eq!(advice_lines.len(), 1, "{advice_lines:?}");
        assert_eq!(
            advice_lines[0],
            "holds 2.0 MiB for 900 entries (<1% full): maps never shrink; rebuild it (copy the \
             entries into a new map)"
        );
        assert!(
            spread(&drained_shape)
                .reasons
                .iter()
                .any(|reason| reason.starts_with("drained: "))
        );
    }

    #[test]
    fn sizes_read_as_a_person_writes_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(64 * 1024), "64.0 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
        assert_eq!(round_up_two_digits(12_345), 13_000);
        assert_eq!(round_up_two_digits(100), 100);
        assert_eq!(round_up_two_digits(101), 110);
        assert_eq!(round_up_two_digits(7), 7);
        assert_eq!(percent(0.001), "<1%");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(0.734), "73%");
    }
}
