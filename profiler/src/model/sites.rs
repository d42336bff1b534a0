//! Allocation sites: which code allocates, from the sampled user stacks.
//!
//! The site of a sample is its first frame outside the runtime (the code that called `new`,
//! `make`, `append`…). The runtime includes `internal/runtime/…`, where Go 1.24+ keeps its maps. A runtime allocator entry point on the way there tells the kind of churn:
//! small-map creation, map creation, slice growth.
use std::collections::BTreeMap;

use super::alloc::scale;

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Site {
    pub function: String,
    /// `file.go:line` (base name only).
    pub location: String,
}

/// Churn patterns that drive GC cost, recognised by the runtime function on the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Churn {
    SmallMap,
    Map,
    SliceGrowth,
}

impl Churn {
    pub fn label(self) -> &'static str {
        match self {
            Self::SmallMap => "makemap_small",
            Self::Map => "makemap",
            Self::SliceGrowth => "growslice",
        }
    }

    fn of(function: &str) -> Option<Self> {
        match function {
            "runtime.makemap_small" => Some(Self::SmallMap),
            "runtime.makemap" | "runtime.makemap64" => Some(Self::Map),
            "runtime.growslice" => Some(Self::SliceGrowth),
            _ => None,
        }
    }
}

/// Whether a function is part of the runtime's allocation machinery rather than a caller.
pub fn is_runtime(function: &str) -> bool {
    function.starts_with("runtime.") || function.starts_with("internal/runtime/")
}

/// The site and churn kind of a stack given as (function, location) frames, innermost first.
pub fn classify(frames: &[(String, String)]) -> (Site, Option<Churn>) {
    let mut churn = None;
    for (function, location) in frames {
        if is_runtime(function) {
            churn = churn.or(Churn::of(function));
            continue;
        }
        return (
            Site {
                function: function.clone(),
                location: location.clone(),
            },
            churn,
        );
    }
    // Allocations by the runtime itself (goroutine stacks, its own maps).
    let site = frames
        .last()
        .map_or_else(Site::default, |(function, location)| Site {
            function: function.clone(),
            location: location.clone(),
        });
    (site, churn)
}

/// Estimated (objects, bytes) by site, and objects by (churn, site).
#[derive(Debug, Default, PartialEq)]
pub struct SiteTotals {
    pub by_site: BTreeMap<Site, (f64, f64)>,
    pub churn: BTreeMap<(Churn, Site), f64>,
}

impl SiteTotals {
    /// Add `count` samples (scaled by the probe's coverage) of `size` bytes taken at a stack
    /// classified as (`site`, `churn`).
    pub fn add(&mut self, site: &Site, churn: Option<Churn>, size: u64, count: f64, rate: i64) {
        let objects = count * scale(size, rate);
        let entry = self.by_site.entry(site.clone()).or_default();
        entry.0 += objects;
        entry.1 += objects * size as f64;
        if let Some(churn) = churn {
            *self.churn.entry((churn, site.clone())).or_default() += objects;
        }
    }

    /// Add `other`'s totals to these.
    pub fn merge(&mut self, other: SiteTotals) {
        for (site, (objects, bytes)) in other.by_site {
            let entry = self.by_site.entry(site).or_default();
            entry.0 += objects;
            entry.1 += bytes;
        }
        for (key, objects) in other.churn {
            *self.churn.entry(key).or_default() += objects;
        }
    }
}

/// Which sites have series of their own, following the load: ranked by a decaying recent rate
/// of bytes, not by who came first, so the named sites are where the target allocates now.
///
/// At most `top` sites are named. A site that falls behind is retired: its series stay, frozen
/// (they only ever grow, so no counter goes down), and its new bytes go to `other`. Retired
/// sites are kept up to `top`; past that the oldest is forgotten and its series deleted (a
/// deleted series ends, it never decreases). So a target has at most 2 × `top` site series
/// plus `other`. A newcomer must beat the weakest named site by `HYSTERESIS`, so two sites of
/// about the same rate do not trade places at every read.
#[derive(Debug)]
pub struct SiteRanking {
    top: usize,
    half_life: std::time::Duration,
    /// Bytes, decayed with `half_life`.
    recent: BTreeMap<Site, f64>,
    named: std::collections::BTreeSet<Site>,
    /// Retired sites whose series are kept, oldest first.
    retired: std::collections::VecDeque<Site>,
}

/// How much a site's recent rate must exceed the weakest named site's to take its place.
const HYSTERESIS: f64 = 1.25;
/// Below this many decayed bytes an unnamed site is forgotten (bounds `recent`).
const NEGLIGIBLE: f64 = 1.0;

/// What an update changed.
#[derive(Debug, Default, PartialEq)]
pub struct RankingChanges {
    pub promoted: Vec<Site>,
    pub retired: Vec<Site>,
    /// Retired sites dropped for good: delete their series.
    pub forgotten: Vec<Site>,
}

impl SiteRanking {
    pub fn new(top: usize, half_life: std::time::Duration) -> Self {
        Self {
            top,
            half_life,
            recent: BTreeMap::new(),
            named: std::collections::BTreeSet::new(),
            retired: std::collections::VecDeque::new(),
        }
    }

    /// How many sites may be named.
    pub fn top(&self) -> usize {
        self.top
    }

    pub fn is_named(&self, site: &Site) -> bool {
        self.named.contains(site)
    }

    /// Sites with series now, named or retired.
    pub fn with_series(&self) -> impl Iterator<Item = &Site> {
        self.named.iter().chain(&self.retired)
    }

    /// Account the bytes each site gained over the last `elapsed`, and re-rank.
    pub fn update(
        &mut self,
        gained: &BTreeMap<Site, f64>,
        elapsed: std::time::Duration,
    ) -> RankingChanges {
        let decay = 0.5f64.powf(elapsed.as_secs_f64() / self.half_life.as_secs_f64().max(1e-3));
        for recent in self.recent.values_mut() {
            *recent *= decay;
        }
        for (site, &bytes) in gained {
            *self.recent.entry(site.clone()).or_default() += bytes.max(0.0);
        }
        let named = &self.named;
        self.recent
            .retain(|site, recent| *recent >= NEGLIGIBLE || named.contains(site));

        let mut changes = RankingChanges::default();
        let rate = |site: &Site| self.recent.get(site).copied().unwrap_or(0.0);
        let mut challengers: Vec<(&Site, f64)> = self
            .recent
            .iter()
            .filter(|(site, _)| !self.named.contains(*site))
            .map(|(site, &recent)| (site, recent))
            .collect();
        challengers.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let mut promote = Vec::new();
        let mut retire = Vec::new();
        let mut weakest: Vec<(Site, f64)> = self
            .named
            .iter()
            .map(|site| (site.clone(), rate(site)))
            .collect();
        // Weakest last, so `pop` takes it.
        weakest.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        let mut free = self.top.saturating_sub(self.named.len());
        for (site, recent) in challengers {
            if free > 0 {
                free -= 1;
                promote.push(site.clone());
            } else if let Some((_, weakest_rate)) = weakest.last()
                && recent > weakest_rate * HYSTERESIS
            {
                if let Some((site, _)) = weakest.pop() {
                    retire.push(site);
                }
                promote.push(site.clone());
            } else {
                break;
            }
        }
        for site in retire {
            self.named.remove(&site);
            self.retired.push_back(site.clone());
            changes.retired.push(site);
        }
        for site in promote {
            self.retired.retain(|retired| *retired != site);
            self.named.insert(site.clone());
            changes.promoted.push(site);
        }
        while self.retired.len() > self.top {
            if let Some(site) = self.retired.pop_front() {
                changes.forgotten.push(site);
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|name| (name.to_string(), format!("{name}.go:1")))
            .collect()
    }

    #[test]
    fn the_site_is_the_first_frame_outside_the_runtime() {
        let (site, churn) = classify(&frames(&[
            "runtime.profilealloc",
            "runtime.mallocgc",
            "runtime.growslice",
            "main.fill",
            "main.main",
        ]));
        assert_eq!(site.function, "main.fill");
        assert_eq!(churn, Some(Churn::SliceGrowth));
        let (site, churn) = classify(&frames(&[
            "runtime.profilealloc",
            "runtime.newobject",
            "main.build",
        ]));
        assert_eq!((site.function.as_str(), churn), ("main.build", None));
        let (site, churn) = classify(&frames(&[
            "runtime.profilealloc",
            "runtime.makemap_small",
            "encoding/json.(*decodeState).object",
        ]));
        assert_eq!(
            (site.function.as_str(), churn),
            ("encoding/json.(*decodeState).object", Some(Churn::SmallMap))
        );
    }

    #[test]
    fn runtime_only_stacks_belong_to_their_outermost_frame() {
        let (site, _) = classify(&frames(&[
            "runtime.profilealloc",
            "runtime.malg",
            "runtime.newproc1",
        ]));
        assert_eq!(site.function, "runtime.newproc1");
    }

    fn site(name: &str) -> Site {
        Site {
            function: name.into(),
            location: format!("{name}.go:1"),
        }
    }

    fn gained(sites: &[(&str, f64)]) -> BTreeMap<Site, f64> {
        sites
            .iter()
            .map(|(name, bytes)| (site(name), *bytes))
            .collect()
    }

    /// The named sites follow the load from one set of functions to another; those that fell
    /// behind keep their (frozen) series up to the bound, then are forgotten.
    #[test]
    fn the_named_sites_follow_the_load() {
        let second = std::time::Duration::from_secs(1);
        let mut ranking = SiteRanking::new(2, second);
        let changes = ranking.update(&gained(&[("a", 100.0), ("b", 90.0), ("c", 1.0)]), second);
        assert_eq!(changes.promoted, vec![site("a"), site("b")]);
        assert!(ranking.is_named(&site("a")) && !ranking.is_named(&site("c")));
        // The load moves to d and e.
        let mut retired = Vec::new();
        let mut forgotten = Vec::new();
        for _ in 0..10 {
            let changes = ranking.update(&gained(&[("d", 100.0), ("e", 95.0)]), second);
            retired.extend(changes.retired);
            forgotten.extend(changes.forgotten);
        }
        assert!(ranking.is_named(&site("d")) && ranking.is_named(&site("e")));
        assert_eq!(retired.len(), 2, "{retired:?}");
        assert!(forgotten.is_empty(), "two retired fit the bound of 2");
        assert_eq!(ranking.with_series().count(), 4);
        // And on to f and g: the oldest retired are forgotten, the bound holds.
        for _ in 0..10 {
            let changes = ranking.update(&gained(&[("f", 100.0), ("g", 100.0)]), second);
            forgotten.extend(changes.forgotten);
        }
        assert!(ranking.is_named(&site("f")) && ranking.is_named(&site("g")));
        assert_eq!(forgotten.len(), 2, "{forgotten:?}");
        assert!(ranking.with_series().count() <= 4);
    }

    /// Two sites of about the same rate do not trade places at every read.
    #[test]
    fn close_sites_do_not_flap() {
        let second = std::time::Duration::from_secs(1);
        let mut ranking = SiteRanking::new(1, second);
        ranking.update(&gained(&[("a", 100.0)]), second);
        for round in 0..20 {
            let (a, b) = if round % 2 == 0 {
                (100.0, 110.0)
            } else {
                (110.0, 100.0)
            };
            let changes = ranking.update(&gained(&[("a", a), ("b", b)]), second);
            assert!(changes.promoted.is_empty(), "round {round}: {changes:?}");
        }
        assert!(ranking.is_named(&site("a")));
    }

    #[test]
    fn totals_scale_samples() {
        let mut totals = SiteTotals::default();
        let site = Site {
            function: "main.f".into(),
            location: "main.go:3".into(),
        };
        totals.add(&site, Some(Churn::Map), 1 << 30, 2.0, 512 * 1024);
        let (objects, bytes) = totals.by_site[&site];
        assert!((objects - 2.0).abs() < 1e-6 && (bytes - 2.0 * (1u64 << 30) as f64).abs() < 1.0);
        assert!((totals.churn[&(Churn::Map, site)] - 2.0).abs() < 1e-6);
    }
}
