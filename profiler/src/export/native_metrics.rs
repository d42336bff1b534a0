//! The native allocation metric families (docs/METRICS.md, "Native allocations"): what the
//! kernel counted at the C allocators' entry points, per target and allocator, scaled by the
//! share of the target's work the probes saw while the overhead governor held them.
//!
//! One collector renders them all from the latest estimates: they are scaled counts (floats
//! that a Prometheus counter or histogram cannot be fed by increments without rounding away
//! the scale), and a target's series go with it in one `remove`.
use std::{collections::BTreeMap, sync::Mutex};

use prometheus::{
    core::{Collector, Desc},
    proto::{Counter, Gauge, Metric, MetricFamily, MetricType},
};

use super::metrics::{histogram_metric, label_pairs, size_buckets};
use crate::{collect::native::LiveSite, model::sites::Site};

/// What one allocator of one target did, estimated over the whole watch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NativeEstimate {
    pub objects: f64,
    pub bytes: f64,
    pub frees: f64,
    /// Allocations by size, one per bucket of `size_buckets` (the last is +Inf).
    pub sizes: Vec<f64>,
    /// The share of the target's work the counts saw (1 with the probes on all the time).
    pub coverage: f64,
}

impl NativeEstimate {
    /// Add `objects` allocations of at most `bound` bytes (a power of two: the kernel's size
    /// slots) to the size buckets.
    pub fn add_sizes(&mut self, bound: u64, objects: f64) {
        let bounds = size_buckets();
        if self.sizes.len() != bounds.len() + 1 {
            self.sizes = vec![0.0; bounds.len() + 1];
        }
        let index = bounds
            .iter()
            .position(|&upper| bound as f64 <= upper)
            .unwrap_or(bounds.len());
        self.sizes[index] += objects;
    }
}

/// The site families: bytes and objects by call site, estimated from the samples.
const SITE_FAMILIES: [(&str, &str); 2] = [
    (
        "mapscope_native_alloc_site_bytes_total",
        "Bytes asked of the C allocator by call site (the direct caller, past C++'s operator \
         new), estimated from byte-weighted samples (one per 512 KiB on average, scaled as \
         pprof scales Go's) and mapscope_native_coverage_ratio; the top sites by bytes have \
         series of their own, the rest are function=\"other\".",
    ),
    (
        "mapscope_native_alloc_site_objects_total",
        "C allocations by call site, estimated likewise.",
    ),
];

/// The live-heap families (`--native-inuse`), gauges by call site.
const LIVE_FAMILIES: [(&str, &str); 3] = [
    (
        "mapscope_native_inuse_bytes",
        "Bytes allocated through the C allocator and not freed yet, by call site, estimated \
         from the byte-weighted samples tracked until freed (--native-inuse); the top sites by \
         live bytes have series of their own, the rest are function=\"other\".",
    ),
    (
        "mapscope_native_inuse_objects",
        "Blocks allocated through the C allocator and not freed yet, by call site, estimated \
         likewise.",
    ),
    (
        "mapscope_native_inuse_age_seconds",
        "The age of the average live byte at each call site (--native-inuse): a site whose \
         live bytes grow old and many is where memory leaks.",
    ),
];

const FAMILIES: [(&str, &str, MetricType); 5] = [
    (
        "mapscope_native_alloc_bytes_total",
        "Bytes asked of the C allocator (malloc, calloc, realloc's new size, aligned and \
         allocator-specific calls), counted at its entry points and scaled by \
         mapscope_native_coverage_ratio; requested sizes, not the allocator's rounded ones.",
        MetricType::COUNTER,
    ),
    (
        "mapscope_native_alloc_objects_total",
        "Allocations made through the C allocator (each realloc that moves or resizes a block \
         counts one, and one free), scaled likewise.",
        MetricType::COUNTER,
    ),
    (
        "mapscope_native_free_objects_total",
        "Blocks given back to the C allocator (free, sized and C++ deletes; free(NULL) not \
         counted), scaled likewise.",
        MetricType::COUNTER,
    ),
    (
        "mapscope_native_alloc_size_bytes",
        "C allocations by requested size, scaled likewise (buckets 8 B doubling to 32 MiB).",
        MetricType::HISTOGRAM,
    ),
    (
        "mapscope_native_coverage_ratio",
        "The share of the target's work the native allocation probes saw (1: all of it, \
         probes on all the time; lower while the overhead governor held them within \
         --max-overhead): the counts above are scaled up by its inverse.",
        MetricType::GAUGE,
    ),
];

/// Every native series, by target labels and allocator.
pub struct NativeFamilies {
    descs: Vec<Desc>,
    label_names: Vec<String>,
    estimates: Mutex<BTreeMap<(Vec<String>, String), NativeEstimate>>,
    site_label_names: Vec<String>,
    /// (objects, bytes) by target labels, allocator and site.
    sites: Mutex<SiteSeries>,
    /// What is live, by target labels, allocator and site (`--native-inuse`).
    live: Mutex<LiveSeries>,
}

/// The last live-heap reading by (target labels, allocator, site).
type LiveSeries = BTreeMap<(Vec<String>, &'static str, Site), LiveSite>;

/// Estimated (objects, bytes) by (target labels, allocator, site).
type SiteSeries = BTreeMap<(Vec<String>, String, Site), (f64, f64)>;

impl NativeFamilies {
    pub fn new(target_labels: &[String]) -> Result<Self, prometheus::Error> {
        let label_names: Vec<String> = target_labels
            .iter()
            .cloned()
            .chain(std::iter::once("allocator".to_owned()))
            .collect();
        let site_label_names: Vec<String> = label_names
            .iter()
            .cloned()
            .chain(["function".to_owned(), "location".to_owned()])
            .collect();
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _)| (name, help, &label_names))
            .chain(
                SITE_FAMILIES
                    .iter()
                    .chain(&LIVE_FAMILIES)
                    .map(|(name, help)| (name, help, &site_label_names)),
            )
            .map(|(name, help, labels)| {
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    labels.clone(),
                    Default::default(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            descs,
            label_names,
            estimates: Mutex::default(),
            site_label_names,
            sites: Mutex::default(),
            live: Mutex::default(),
        })
    }

    fn estimates(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<(Vec<String>, String), NativeEstimate>> {
        self.estimates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The target's (`labels`) allocator `allocator` is now at `estimate`.
    pub fn set(&self, labels: &[String], allocator: &str, estimate: NativeEstimate) {
        self.estimates()
            .insert((labels.to_vec(), allocator.to_owned()), estimate);
    }

    fn sites(&self) -> std::sync::MutexGuard<'_, SiteSeries> {
        self.sites
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The target's allocator `allocator` allocated `objects` more, `bytes` more, at `site`.
    pub fn site_allocated(
        &self,
        labels: &[String],
        allocator: &str,
        site: &Site,
        objects: f64,
        bytes: f64,
    ) {
        let mut sites = self.sites();
        let entry = sites
            .entry((labels.to_vec(), allocator.to_owned(), site.clone()))
            .or_default();
        entry.0 += objects.max(0.0);
        entry.1 += bytes.max(0.0);
    }

    /// Delete the series of a site the ranking forgot.
    pub fn forget_site(&self, labels: &[String], allocator: &str, site: &Site) {
        self.sites()
            .remove(&(labels.to_vec(), allocator.to_owned(), site.clone()));
    }

    fn live(&self) -> std::sync::MutexGuard<'_, LiveSeries> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The target's live heap is now `live` (by allocator and site): the sites not in it lose
    /// their series.
    pub fn set_live(&self, labels: &[String], live: BTreeMap<(&'static str, Site), LiveSite>) {
        let mut series = self.live();
        series.retain(|(target, _, _), _| target != labels);
        for ((allocator, site), reading) in live {
            series.insert((labels.to_vec(), allocator, site), reading);
        }
    }

    /// Remove every series of the target with `labels`.
    pub fn remove(&self, labels: &[String]) {
        self.estimates().retain(|(target, _), _| target != labels);
        self.sites().retain(|(target, _, _), _| target != labels);
        self.live().retain(|(target, _, _), _| target != labels);
    }
}

/// A counter or gauge series with `names` = `values`.
fn scalar_metric(names: &[String], values: &[String], kind: MetricType, value: f64) -> Metric {
    let mut metric = Metric::default();
    metric.set_label(label_pairs(names, values));
    if kind == MetricType::COUNTER {
        let mut counter = Counter::default();
        counter.set_value(value);
        metric.set_counter(counter);
    } else {
        let mut gauge = Gauge::default();
        gauge.set_value(value);
        metric.set_gauge(gauge);
    }
    metric
}

impl Collector for NativeFamilies {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.collect_totals();
        families.extend(self.collect_live());
        let sites = self.sites();
        if sites.is_empty() {
            return families;
        }
        for (index, (name, help)) in SITE_FAMILIES.iter().enumerate() {
            let mut family = MetricFamily::default();
            family.set_name((*name).to_owned());
            family.set_help((*help).to_owned());
            family.set_field_type(MetricType::COUNTER);
            for ((target, allocator, site), &(objects, bytes)) in sites.iter() {
                let values: Vec<String> = target
                    .iter()
                    .cloned()
                    .chain([
                        allocator.clone(),
                        site.function.clone(),
                        site.location.clone(),
                    ])
                    .collect();
                let value = if index == 0 { bytes } else { objects };
                family.mut_metric().push(scalar_metric(
                    &self.site_label_names,
                    &values,
                    MetricType::COUNTER,
                    value,
                ));
            }
            families.push(family);
        }
        families
    }
}

impl NativeFamilies {
    /// The live-heap families, from the last reading.
    fn collect_live(&self) -> Vec<MetricFamily> {
        let live = self.live();
        if live.is_empty() {
            return Vec::new();
        }
        LIVE_FAMILIES
            .iter()
            .enumerate()
            .map(|(index, (name, help))| {
                let mut family = MetricFamily::default();
                family.set_name((*name).to_owned());
                family.set_help((*help).to_owned());
                family.set_field_type(MetricType::GAUGE);
                for ((target, allocator, site), reading) in live.iter() {
                    let values: Vec<String> = target
                        .iter()
                        .cloned()
                        .chain([
                            (*allocator).to_owned(),
                            site.function.clone(),
                            site.location.clone(),
                        ])
                        .collect();
                    let value = match index {
                        0 => reading.bytes,
                        1 => reading.objects,
                        _ => reading.age_seconds(),
                    };
                    family.mut_metric().push(scalar_metric(
                        &self.site_label_names,
                        &values,
                        MetricType::GAUGE,
                        value,
                    ));
                }
                family
            })
            .collect()
    }

    /// The totals' families, from the latest estimates.
    fn collect_totals(&self) -> Vec<MetricFamily> {
        let estimates = self.estimates();
        if estimates.is_empty() {
            return Vec::new();
        }
        let bounds = size_buckets();
        FAMILIES
            .iter()
            .map(|(name, help, kind)| {
                let mut family = MetricFamily::default();
                family.set_name((*name).to_owned());
                family.set_help((*help).to_owned());
                family.set_field_type(*kind);
                for ((target, allocator), estimate) in estimates.iter() {
                    let values: Vec<String> = target
                        .iter()
                        .cloned()
                        .chain(std::iter::once(allocator.clone()))
                        .collect();
                    let metric = match *name {
                        "mapscope_native_alloc_size_bytes" => {
                            let mut cumulative = 0.0;
                            let buckets = bounds.iter().zip(&estimate.sizes).map(|(&bound, n)| {
                                cumulative += n;
                                (bound, cumulative.round() as u64)
                            });
                            histogram_metric(
                                &self.label_names,
                                &values,
                                buckets,
                                estimate.objects.round() as u64,
                                estimate.bytes,
                            )
                        }
                        _ => {
                            let value = match *name {
                                "mapscope_native_alloc_bytes_total" => estimate.bytes,
                                "mapscope_native_alloc_objects_total" => estimate.objects,
                                "mapscope_native_free_objects_total" => estimate.frees,
                                _ => estimate.coverage,
                            };
                            scalar_metric(&self.label_names, &values, *kind, value)
                        }
                    };
                    family.mut_metric().push(metric);
                }
                family
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_land_in_the_bucket_of_their_bound() {
        let mut estimate = NativeEstimate::default();
        estimate.add_sizes(1, 2.0);
        estimate.add_sizes(8, 1.0);
        estimate.add_sizes(4096, 3.0);
        estimate.add_sizes(1 << 40, 1.0);
        let bounds = size_buckets();
        assert_eq!(estimate.sizes[0], 3.0, "1 and 8 bytes are both in le=8");
        let at_4096 = bounds.iter().position(|&bound| bound == 4096.0).unwrap();
        assert_eq!(estimate.sizes[at_4096], 3.0);
        assert_eq!(estimate.sizes[bounds.len()], 1.0, "beyond 32 MiB: +Inf");
    }

    #[test]
    fn a_target_renders_every_family_and_goes_whole() {
        let families = NativeFamilies::new(&["pid".to_owned()]).unwrap();
        let mut estimate = NativeEstimate {
            objects: 3.0,
            bytes: 300.0,
            frees: 2.0,
            coverage: 0.5,
            ..NativeEstimate::default()
        };
        estimate.add_sizes(128, 3.0);
        families.set(&["7".to_owned()], "glibc", estimate);
        let rendered = families.collect();
        assert_eq!(rendered.len(), FAMILIES.len());
        let value = |name: &str| {
            let family = rendered
                .iter()
                .find(|family| family.name() == name)
                .unwrap();
            family.get_metric()[0].clone()
        };
        assert_eq!(
            value("mapscope_native_alloc_bytes_total")
                .get_counter()
                .get_value(),
            300.0
        );
        assert_eq!(
            value("mapscope_native_coverage_ratio")
                .get_gauge()
                .get_value(),
            0.5
        );
        let histogram = value("mapscope_native_alloc_size_bytes");
        assert_eq!(histogram.get_histogram().get_sample_count(), 3);
        let frees = value("mapscope_native_free_objects_total");
        let label = &frees.get_label()[0];
        assert_eq!((label.name(), label.value()), ("allocator", "glibc"));
        families.remove(&["7".to_owned()]);
        assert!(families.collect().is_empty());
    }
}
