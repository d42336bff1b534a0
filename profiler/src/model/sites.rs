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
    /// Add `count` samples of `size` bytes taken at a stack classified as (`site`, `churn`).
    pub fn add(&mut self, site: &Site, churn: Option<Churn>, size: u64, count: u64, rate: i64) {
        let objects = count as f64 * scale(size, rate);
        let entry = self.by_site.entry(site.clone()).or_default();
        entry.0 += objects;
        entry.1 += objects * size as f64;
        if let Some(churn) = churn {
            *self.churn.entry((churn, site.clone())).or_default() += objects;
        }
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

    #[test]
    fn totals_scale_samples() {
        let mut totals = SiteTotals::default();
        let site = Site {
            function: "main.f".into(),
            location: "main.go:3".into(),
        };
        totals.add(&site, Some(Churn::Map), 1 << 30, 2, 512 * 1024);
        let (objects, bytes) = totals.by_site[&site];
        assert!((objects - 2.0).abs() < 1e-6 && (bytes - 2.0 * (1u64 << 30) as f64).abs() < 1.0);
        assert!((totals.churn[&(Churn::Map, site)] - 2.0).abs() < 1e-6);
    }
}
