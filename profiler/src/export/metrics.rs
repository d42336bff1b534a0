//! The Prometheus registry. Every metric is documented in docs/METRICS.md; keep the two in step.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

use prometheus::{
    CounterVec, Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
    core::{Collector, Desc},
    proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};

use super::{
    map_metrics::{MapFamilies, TargetMapMetrics},
    vitals::{VitalFamilies, VitalsSource},
};
use crate::model::{
    alloc::AllocTotals,
    pause::{CyclePhases, Pause},
    sites::{Churn, Site},
};

/// Pause histogram buckets: 0.5 µs doubling to 8.4 s (25 buckets), fine enough to tell 1 µs
/// from 8 µs pauses and long enough for a multi-second stall.
pub fn pause_buckets() -> Vec<f64> {
    (0..25)
        .map(|power| 0.5e-6 * f64::from(1u32 << power))
        .collect()
}

/// GC phase buckets: 50 µs doubling to 420 s (24 buckets): a concurrent mark of a small heap
/// takes tens of µs, the time between two cycles of an idle service minutes (sysmon forces one
/// every 2 minutes).
pub fn cycle_buckets() -> Vec<f64> {
    (0..24)
        .map(|power| 50e-6 * f64::from(1u32 << power))
        .collect()
}

/// Allocation size buckets: 8 B doubling to 32 MiB (23 buckets), around Go's size classes
/// (8 B to 32 KiB) and the large allocations above them.
pub fn size_buckets() -> Vec<f64> {
    (3..=25).map(|power| f64::from(1u32 << power)).collect()
}

/// Label names as the crate takes them (it copies them).
fn refs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

/// Labels of every per-target series, before any user-defined ones (`--label`, daemon config).
pub const BASE_TARGET_LABELS: [&str; 4] = ["pid", "exe", "go_version", "container"];

/// Who a target is, as its labels say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetIdentity {
    pub pid: u32,
    pub exe: String,
    pub go_version: String,
    /// Container id from the process's cgroup, empty outside containers.
    pub container: String,
}

/// `mapscope_alloc_size_bytes`: estimated allocations by size, per target. A collector of its
/// own because the counts are estimates (scaled samples), which a Prometheus histogram cannot
/// observe; it renders the latest estimates as a histogram at each scrape.
struct SizeHistograms {
    desc: Desc,
    label_names: Vec<String>,
    by_target: Mutex<BTreeMap<Vec<String>, SizeHistogram>>,
}

/// Estimated allocation counts per size bucket (the last is +Inf), their count and byte sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SizeHistogram {
    pub buckets: Vec<f64>,
    pub count: f64,
    pub sum: f64,
}

impl SizeHistogram {
    /// From estimated object counts by allocation size.
    pub fn from_estimates(objects_by_size: &BTreeMap<u64, f64>) -> Self {
        let mut histogram = Self {
            buckets: vec![0.0; size_buckets().len() + 1],
            ..Self::default()
        };
        for (&size, &objects) in objects_by_size {
            histogram.add(size, objects);
        }
        histogram
    }

    /// Add an estimated `objects` allocations of `size` bytes.
    pub fn add(&mut self, size: u64, objects: f64) {
        let bounds = size_buckets();
        let index = bounds
            .iter()
            .position(|&bound| size as f64 <= bound)
            .unwrap_or(bounds.len());
        if let Some(bucket) = self.buckets.get_mut(index) {
            *bucket += objects;
        }
        self.count += objects;
        self.sum += objects * size as f64;
    }
}

impl Collector for SizeHistograms {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(by_target) = self.by_target.lock() else {
            return Vec::new();
        };
        let bounds = size_buckets();
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::HISTOGRAM);
        for (labels, estimate) in by_target.iter() {
            let mut cumulative = 0.0;
            let buckets = bounds
                .iter()
                .zip(&estimate.buckets)
                .map(|(&bound, &objects)| {
                    cumulative += objects;
                    (bound, cumulative.round() as u64)
                });
            family.mut_metric().push(histogram_metric(
                &self.label_names,
                labels,
                buckets,
                estimate.count.round() as u64,
                estimate.sum,
            ));
        }
        if family.get_metric().is_empty() {
            return Vec::new();
        }
        vec![family]
    }
}

/// One histogram series: its labels (`names` and `values` in step), its cumulative buckets
/// (upper bound, count; +Inf implied), count and sum.
pub(super) fn histogram_metric(
    names: &[String],
    values: &[String],
    buckets: impl Iterator<Item = (f64, u64)>,
    count: u64,
    sum: f64,
) -> Metric {
    let buckets = buckets
        .map(|(bound, count)| {
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(bound);
            bucket.set_cumulative_count(count);
            bucket
        })
        .collect();
    let mut histogram = Histogram::default();
    histogram.set_bucket(buckets);
    histogram.set_sample_count(count);
    histogram.set_sample_sum(sum);
    let mut metric = Metric::default();
    metric.set_label(label_pairs(names, values));
    metric.set_histogram(histogram);
    metric
}

/// A series' labels, `names` and `values` in step, sorted by name as the crate's own metrics
/// are.
pub(super) fn label_pairs(names: &[String], values: &[String]) -> Vec<LabelPair> {
    let mut pairs: Vec<LabelPair> = names
        .iter()
        .zip(values)
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.clone());
            pair.set_value(value.clone());
            pair
        })
        .collect();
    pairs.sort_by(|a, b| a.name().cmp(b.name()));
    pairs
}

/// Every `reason` of `mapscope_probe_events_dropped_total` (docs/METRICS.md, "Drop reasons"):
/// the kernel programs' counters, and what userspace refuses of their events.
pub const DROP_REASONS: [&str; profiler_common::counters::NAMES.len() + 2] = {
    let kernel = profiler_common::counters::NAMES;
    let mut all = [""; profiler_common::counters::NAMES.len() + 2];
    let mut i = 0;
    while i < kernel.len() {
        all[i] = kernel[i];
        i += 1;
    }
    all[kernel.len()] = crate::model::pause::InvalidPause::Timestamps.label();
    all[kernel.len() + 1] = crate::collect::stw::SHORT_EVENT;
    all
};

/// Every `reason` of `mapscope_target_attach_failures_total`.
pub const ATTACH_FAILURE_REASONS: [&str; 7] = [
    "not_go",
    "unsupported_go",
    "missing_symbols",
    "exited",
    "privileges",
    "max_targets",
    "error",
];

/// One registry for the whole process; targets get label-bound handles from it.
pub struct Metrics {
    registry: Registry,
    pause: HistogramVec,
    stopping: HistogramVec,
    gc_cycles: IntCounterVec,
    gc_triggers: IntCounterVec,
    concurrent_mark: HistogramVec,
    cycle_interval: HistogramVec,
    dropped: IntCounterVec,
    hits: IntCounterVec,
    alloc_bytes: CounterVec,
    alloc_objects: CounterVec,
    alloc_samples: IntCounterVec,
    alloc_rate: IntGaugeVec,
    alloc_stacks: IntGaugeVec,
    site_bytes: CounterVec,
    site_objects: CounterVec,
    churn: CounterVec,
    sizes: Arc<SizeHistograms>,
    exact_objects: IntCounterVec,
    exact_bytes: IntCounterVec,
    maps: MapFamilies,
    native: Arc<super::native_metrics::NativeFamilies>,
    vitals: VitalFamilies,
    overhead: super::overhead::OverheadFamilies,
    targets: prometheus::IntGauge,
    budget: prometheus::Gauge,
    attach_failures: IntCounterVec,
    /// User-defined labels (name, value) on every per-target series.
    extra_labels: Vec<(String, String)>,
    /// Held to write when a map snapshot's many observations go in, and to read while a scrape
    /// gathers: a scrape sees each snapshot whole or not at all.
    publishing: std::sync::RwLock<()>,
}

/// Lets the registry hold a collector that mapscope also keeps (to set its values).
pub(super) struct Shared<C>(pub(super) Arc<C>);

impl<C: Collector> Collector for Shared<C> {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.0.collect()
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        Self::with_labels(Vec::new())
    }

    /// A registry whose per-target series also carry the user-defined labels `extra` (name,
    /// value), the same for every target of this process.
    pub fn with_labels(extra: Vec<(String, String)>) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let target_labels: Vec<String> = BASE_TARGET_LABELS
            .iter()
            .map(|name| (*name).to_owned())
            .chain(extra.iter().map(|(name, _)| name.clone()))
            .collect();
        let names = |more: &[&'static str]| -> Vec<String> {
            target_labels
                .iter()
                .cloned()
                .chain(more.iter().map(|name| (*name).to_owned()))
                .collect()
        };

        let with_reason = names(&["reason"]);
        let pause = HistogramVec::new(
            HistogramOpts::new(
                "mapscope_stw_pause_seconds",
                "Stop-the-world pauses, from when the runtime began stopping the world until it \
                 restarted it, as the runtime measures them (runtime/metrics \
                 /sched/pauses/total/{gc,other}:seconds).",
            )
            .buckets(pause_buckets()),
            &refs(&with_reason),
        )?;
        let stopping = HistogramVec::new(
            HistogramOpts::new(
                "mapscope_stw_stopping_seconds",
                "Time to stop the world: from when the runtime began stopping until every P \
                 had stopped (runtime/metrics /sched/pauses/stopping/{gc,other}:seconds).",
            )
            .buckets(pause_buckets()),
            &refs(&with_reason),
        )?;
        let gc_cycles = IntCounterVec::new(
            Opts::new(
                "mapscope_gc_cycles_total",
                "Completed GC cycles, counted at each GC mark termination \
                 (runtime/metrics /gc/cycles/total:gc-cycles, MemStats.NumGC).",
            ),
            &refs(&names(&[])),
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "mapscope_probe_events_dropped_total",
                "Events mapscope saw but could not count, by reason; non-zero means the other \
                 numbers for this target are too low.",
            ),
            &refs(&names(&["reason"])),
        )?;
        let hits = IntCounterVec::new(
            Opts::new(
                "mapscope_probe_hits_total",
                "Uprobe hits, by probe family (stw, gc_start, alloc, alloc_exact, map_event, \
                 map_create, map_access): what mapscope costs the target, at about a \
                 microsecond per hit (mapscope_probe_hit_cost_seconds).",
            ),
            &refs(&names(&["probe"])),
        )?;
        let alloc_bytes = CounterVec::new(
            Opts::new(
                "mapscope_alloc_bytes_total",
                "Heap bytes allocated, estimated from the runtime's own allocation sampling \
                 (scaled as pprof scales alloc_space) (runtime/metrics /gc/heap/allocs:bytes).",
            ),
            &refs(&names(&[])),
        )?;
        let alloc_objects = CounterVec::new(
            Opts::new(
                "mapscope_alloc_objects_total",
                "Heap objects allocated, estimated from the runtime's own allocation sampling \
                 (runtime/metrics /gc/heap/allocs:objects).",
            ),
            &refs(&names(&[])),
        )?;
        let alloc_samples = IntCounterVec::new(
            Opts::new(
                "mapscope_alloc_samples_total",
                "Allocations the runtime's heap profiler sampled (the estimates' statistical \
                 basis: their relative error is about 1/sqrt of this).",
            ),
            &refs(&names(&[])),
        )?;
        let alloc_rate = IntGaugeVec::new(
            Opts::new(
                "mapscope_alloc_sample_rate_bytes",
                "The target's runtime.MemProfileRate: average bytes between samples.",
            ),
            &refs(&names(&[])),
        )?;
        let alloc_stacks = IntGaugeVec::new(
            Opts::new(
                "mapscope_alloc_stacks",
                "Distinct call stacks of the sampled allocations, symbolized and kept (the \
                 kernel's stack table holds at most 4096: what mapscope keeps per target is \
                 bounded by it).",
            ),
            &refs(&names(&[])),
        )?;
        let with_site = names(&["function", "location"]);
        let site_bytes = CounterVec::new(
            Opts::new(
                "mapscope_alloc_site_bytes_total",
                "Heap bytes allocated by call site (the first function outside the runtime), \
                 estimated from the runtime's allocation sampling; the top sites by bytes have \
                 series of their own, the rest are function=\"other\" (pprof alloc_space).",
            ),
            &refs(&with_site),
        )?;
        let site_objects = CounterVec::new(
            Opts::new(
                "mapscope_alloc_site_objects_total",
                "Heap objects allocated by call site, estimated likewise (pprof alloc_objects).",
            ),
            &refs(&with_site),
        )?;
        let churn = CounterVec::new(
            Opts::new(
                "mapscope_alloc_churn_objects_total",
                "Allocations made by map creation (kind makemap_small, makemap) or slice growth \
                 (growslice), by call site, estimated from the runtime's allocation sampling.",
            ),
            &refs(&names(&["kind", "function", "location"])),
        )?;
        let sizes = Arc::new(SizeHistograms {
            desc: Desc::new(
                "mapscope_alloc_size_bytes".to_owned(),
                "Heap allocations by size, estimated from the runtime's allocation sampling \
                 (buckets 8 B doubling to 32 MiB)."
                    .to_owned(),
                target_labels.clone(),
                Default::default(),
            )?,
            label_names: target_labels.clone(),
            by_target: Mutex::default(),
        });
        let exact_objects = IntCounterVec::new(
            Opts::new(
                "mapscope_alloc_exact_objects_total",
                "Heap objects allocated, every one counted (exact mode, --alloc-exact: costly) \
                 (runtime/metrics /gc/heap/allocs:objects).",
            ),
            &refs(&names(&[])),
        )?;
        let exact_bytes = IntCounterVec::new(
            Opts::new(
                "mapscope_alloc_exact_bytes_total",
                "Heap bytes requested, every allocation counted (exact mode). Requested sizes: \
                 /gc/heap/allocs:bytes counts size-class-rounded bytes, so it is larger.",
            ),
            &refs(&names(&[])),
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "mapscope_build_info",
                "Always 1; labels identify this mapscope.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(pause.clone()))?;
        registry.register(Box::new(stopping.clone()))?;
        registry.register(Box::new(gc_cycles.clone()))?;
        let gc_triggers = IntCounterVec::new(
            Opts::new(
                "mapscope_gc_cycles_by_trigger_total",
                "GC cycles started, by what started them: heap (the heap reached its trigger), \
                 time (no cycle for two minutes) or forced (runtime.GC, debug.FreeOSMemory); \
                 heap + time is runtime/metrics /gc/cycles/automatic, forced is \
                 /gc/cycles/forced, counted at each cycle's start.",
            ),
            &refs(&names(&["trigger"])),
        )?;
        registry.register(Box::new(gc_triggers.clone()))?;
        let concurrent_mark = HistogramVec::new(
            HistogramOpts::new(
                "mapscope_gc_concurrent_mark_seconds",
                "Each GC cycle's concurrent mark phase, from the restart after sweep termination \
                 until the runtime stops the world for mark termination (GODEBUG=gctrace=1's \
                 middle clock term); one observation per cycle seen whole.",
            )
            .buckets(cycle_buckets()),
            &refs(&names(&[])),
        )?;
        let cycle_interval = HistogramVec::new(
            HistogramOpts::new(
                "mapscope_gc_cycle_interval_seconds",
                "Time from one GC cycle's start (it stopping the world for sweep termination) to \
                 the next one's.",
            )
            .buckets(cycle_buckets()),
            &refs(&names(&[])),
        )?;
        registry.register(Box::new(concurrent_mark.clone()))?;
        registry.register(Box::new(cycle_interval.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(hits.clone()))?;
        registry.register(Box::new(alloc_bytes.clone()))?;
        registry.register(Box::new(alloc_objects.clone()))?;
        registry.register(Box::new(alloc_samples.clone()))?;
        registry.register(Box::new(alloc_rate.clone()))?;
        registry.register(Box::new(alloc_stacks.clone()))?;
        registry.register(Box::new(site_bytes.clone()))?;
        registry.register(Box::new(site_objects.clone()))?;
        registry.register(Box::new(churn.clone()))?;
        registry.register(Box::new(Shared(Arc::clone(&sizes))))?;
        let native = Arc::new(super::native_metrics::NativeFamilies::new(&target_labels)?);
        registry.register(Box::new(Shared(Arc::clone(&native))))?;
        registry.register(Box::new(exact_objects.clone()))?;
        registry.register(Box::new(exact_bytes.clone()))?;
        registry.register(Box::new(build_info))?;
        let maps = MapFamilies::register(&registry, &target_labels)?;
        let vitals = VitalFamilies::register(&registry, &target_labels)?;
        let overhead = super::overhead::OverheadFamilies::register(&registry, &target_labels)?;
        let targets = prometheus::IntGauge::new(
            "mapscope_targets",
            "Processes mapscope is attached to now.",
        )?;
        let attach_failures = IntCounterVec::new(
            Opts::new(
                "mapscope_target_attach_failures_total",
                "Selected processes mapscope did not attach to, by reason (not_go, \
                 unsupported_go, missing_symbols, exited, privileges, max_targets, error).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(targets.clone()))?;
        let budget = prometheus::Gauge::new(
            "mapscope_max_overhead_ratio",
            "The most mapscope may cost each target, as a share of the target's CPU time \
             (--max-overhead; 0: no budget).",
        )?;
        registry.register(Box::new(budget.clone()))?;
        // Every failure series exists from the start at 0, so `increase()` sees the first one.
        for reason in ATTACH_FAILURE_REASONS {
            attach_failures.with_label_values(&[reason]).inc_by(0);
        }
        registry.register(Box::new(attach_failures.clone()))?;
        // The daemon's own CPU, memory and file descriptors (process_*), from /proc/self.
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            maps,
            native,
            vitals,
            overhead,
            targets,
            budget,
            attach_failures,
            extra_labels: extra,
            publishing: std::sync::RwLock::new(()),
            registry,
            pause,
            stopping,
            gc_cycles,
            gc_triggers,
            concurrent_mark,
            cycle_interval,
            dropped,
            hits,
            alloc_bytes,
            alloc_objects,
            alloc_samples,
            alloc_rate,
            alloc_stacks,
            site_bytes,
            site_objects,
            churn,
            sizes,
            exact_objects,
            exact_bytes,
        })
    }

    /// Label-bound handle for one target. Creates its GC series at zero, so a dashboard sees
    /// "no pauses yet" rather than "no data".
    pub fn target(self: &Arc<Self>, who: &TargetIdentity) -> TargetMetrics {
        let labels = [
            who.pid.to_string(),
            who.exe.clone(),
            who.go_version.clone(),
            who.container.clone(),
        ]
        .into_iter()
        .chain(self.extra_labels.iter().map(|(_, value)| value.clone()))
        .collect();
        let target = TargetMetrics {
            metrics: Arc::clone(self),
            labels,
            reasons: Mutex::default(),
            drop_reasons: Mutex::default(),
            sites: Mutex::default(),
            churn_sites: Mutex::default(),
            map_sites: Mutex::default(),
            map_drop_reasons: Mutex::default(),
            own_cpu: crate::collect::overhead::OwnCpu::default(),
            coverage: crate::collect::governor::Coverage::default(),
        };
        // A program without a Go runtime has no GC: no series says it has none yet.
        let go = !who.go_version.is_empty();
        if go {
            target
                .metrics
                .gc_cycles
                .with_label_values(&target.labels)
                .inc_by(0);
            // The GC phase histograms too, empty until the first whole cycle.
            for histogram in [
                &target.metrics.concurrent_mark,
                &target.metrics.cycle_interval,
            ] {
                let _ = histogram.with_label_values(&target.labels);
            }
            for reason in ["gc_sweep_termination", "gc_mark_termination"] {
                target.touch_reason(reason);
            }
        }
        // The loss and cost counters too: a dashboard shows 0 where nothing was lost, and
        // `increase()` counts the first loss (a series born at 1 has no increase).
        for reason in DROP_REASONS {
            target.dropped(reason, 0);
        }
        for probe in profiler_common::counters::HIT_NAMES {
            target.probe_hits(probe, 0);
        }
        if go {
            for trigger in profiler_common::trigger::TRIGGER_NAMES {
                target.gc_cycles_started(trigger, 0);
            }
        }
        target
    }

    /// The budget the targets are held to (`--max-overhead`).
    pub fn set_budget(&self, budget: f64) {
        self.budget.set(budget);
    }

    /// One more (or one fewer) attached target.
    pub fn targets_changed(&self, delta: i64) {
        self.targets.add(delta);
    }

    /// A selected process mapscope could not attach to (`reason` from a fixed set).
    pub fn attach_failed(&self, reason: &str) {
        self.attach_failures.with_label_values(&[reason]).inc();
    }

    /// The text exposition format, as served on `/metrics`.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        // The vitals are read when asked for.
        self.vitals.refresh(&self.publishing);
        let mut buffer = Vec::new();
        let families = {
            let _whole = self
                .publishing
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.registry.gather()
        };
        TextEncoder::new().encode(&families, &mut buffer)?;
        String::from_utf8(buffer).map_err(|error| prometheus::Error::Msg(error.to_string()))
    }
}

/// The series of one target. `remove` deletes them all when the target goes away.
pub struct TargetMetrics {
    metrics: Arc<Metrics>,
    labels: Vec<String>,
    /// Reasons with series, so `remove` can find them (the crate cannot delete by prefix).
    reasons: Mutex<BTreeSet<String>>,
    /// Events lost so far, by reason (series exist for every reason; these are the counts, for
    /// the exit summary).
    drop_reasons: Mutex<BTreeMap<String, u64>>,
    sites: Mutex<BTreeSet<Site>>,
    churn_sites: Mutex<BTreeSet<(Churn, Site)>>,
    map_sites: Mutex<BTreeSet<String>>,
    map_drop_reasons: Mutex<BTreeSet<String>>,
    /// CPU time mapscope spends for this target: every collector measures its work into it.
    own_cpu: crate::collect::overhead::OwnCpu,
    /// The fraction of the time each probe family is attached (the overhead governor's).
    coverage: crate::collect::governor::Coverage,
}

impl TargetMetrics {
    /// Where this target's collectors count the CPU time they spend.
    pub fn own_cpu(&self) -> &crate::collect::overhead::OwnCpu {
        &self.own_cpu
    }

    /// What fraction of the time each probe family has been attached.
    pub fn coverage(&self) -> &crate::collect::governor::Coverage {
        &self.coverage
    }

    /// What the target's allocator `allocator` (`AllocatorKind::label`) did so far.
    pub fn native_allocated(
        &self,
        allocator: &str,
        estimate: super::native_metrics::NativeEstimate,
    ) {
        self.metrics.native.set(&self.labels, allocator, estimate);
    }

    /// Native allocations at `site` (`other` for the sites without series of their own).
    pub fn native_site_allocated(
        &self,
        allocator: &str,
        site: &crate::model::sites::Site,
        objects: f64,
        bytes: f64,
    ) {
        self.metrics
            .native
            .site_allocated(&self.labels, allocator, site, objects, bytes);
    }

    /// What is live now, by (allocator, site) (`--native-inuse`): replaces the last reading.
    pub fn native_live(
        &self,
        live: std::collections::BTreeMap<
            (&'static str, crate::model::sites::Site),
            crate::collect::native::LiveSite,
        >,
    ) {
        self.metrics.native.set_live(&self.labels, live);
    }

    /// Delete the series of a native site the ranking forgot.
    pub fn native_forget_site(&self, allocator: &str, site: &crate::model::sites::Site) {
        self.metrics
            .native
            .forget_site(&self.labels, allocator, site);
    }

    /// A governed family's duty cycle (`probe` from `HIT_NAMES`).
    pub fn duty_cycle(&self, probe: &str, duty: f64) {
        self.metrics.overhead.duty_cycle(&self.labels, probe, duty);
    }

    /// Set the cost series from the target's overhead meter.
    pub fn overhead(
        &self,
        hit_cost_ns: &[f64; profiler_common::counters::HIT_KINDS as usize],
        reading: &crate::model::overhead::CostReading,
        first_cpu_ns: f64,
        ratios: crate::model::overhead::CostRatios,
    ) {
        self.metrics
            .overhead
            .set(&self.labels, hit_cost_ns, reading, first_cpu_ns, ratios);
    }

    fn with<'a>(&'a self, extra: &'a str) -> Vec<&'a str> {
        self.labels
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(extra))
            .collect()
    }

    fn touch_reason(&self, reason: &str) {
        let labels = self.with(reason);
        self.metrics.pause.with_label_values(&labels);
        self.metrics.stopping.with_label_values(&labels);
        if let Ok(mut reasons) = self.reasons.lock() {
            reasons.insert(reason.to_owned());
        }
    }

    pub fn observe(&self, pause: &Pause) {
        self.touch_reason(&pause.reason);
        let labels = self.with(&pause.reason);
        self.metrics
            .pause
            .with_label_values(&labels)
            .observe(pause.total_ns as f64 / 1e9);
        if let Some(stopping) = pause.stopping_ns {
            self.metrics
                .stopping
                .with_label_values(&labels)
                .observe(stopping as f64 / 1e9);
        }
        if pause.ends_gc_cycle {
            self.metrics.gc_cycles.with_label_values(&self.labels).inc();
        }
    }

    /// Observe the GC phases a pause completed.
    pub fn cycle_phases(&self, phases: &CyclePhases) {
        if let Some(mark) = phases.concurrent_mark_ns {
            self.metrics
                .concurrent_mark
                .with_label_values(&self.labels)
                .observe(mark as f64 / 1e9);
        }
        if let Some(interval) = phases.interval_ns {
            self.metrics
                .cycle_interval
                .with_label_values(&self.labels)
                .observe(interval as f64 / 1e9);
        }
    }

    /// Export the growth of the allocation estimates from `before` to `now`.
    pub fn allocated(&self, before: &AllocTotals, now: &AllocTotals, rate: i64) {
        let metrics = &self.metrics;
        metrics
            .alloc_bytes
            .with_label_values(&self.labels)
            .inc_by((now.bytes - before.bytes).max(0.0));
        metrics
            .alloc_objects
            .with_label_values(&self.labels)
            .inc_by((now.objects - before.objects).max(0.0));
        metrics
            .alloc_samples
            .with_label_values(&self.labels)
            .inc_by(now.samples.saturating_sub(before.samples));
        metrics.alloc_rate.with_label_values(&self.labels).set(rate);
    }

    /// How many distinct allocation stacks the collector keeps now.
    pub fn allocation_stacks(&self, stacks: usize) {
        self.metrics
            .alloc_stacks
            .with_label_values(&self.labels)
            .set(stacks as i64);
    }

    fn site_labels<'a>(&'a self, site: &'a Site) -> Vec<&'a str> {
        self.labels
            .iter()
            .map(String::as_str)
            .chain([site.function.as_str(), site.location.as_str()])
            .collect()
    }

    fn churn_labels<'a>(&'a self, churn: Churn, site: &'a Site) -> Vec<&'a str> {
        self.labels
            .iter()
            .map(String::as_str)
            .chain([
                churn.label(),
                site.function.as_str(),
                site.location.as_str(),
            ])
            .collect()
    }

    /// Add exact mode's counts.
    pub fn exactly_allocated(&self, objects: u64, bytes: u64) {
        self.metrics
            .exact_objects
            .with_label_values(&self.labels)
            .inc_by(objects);
        self.metrics
            .exact_bytes
            .with_label_values(&self.labels)
            .inc_by(bytes);
    }

    /// Replace this target's allocation size estimates.
    pub fn allocation_sizes(&self, histogram: SizeHistogram) {
        if let Ok(mut by_target) = self.metrics.sizes.by_target.lock() {
            by_target.insert(self.labels.clone(), histogram);
        }
    }

    /// Add an allocation site's growth.
    pub fn site_allocated(&self, site: &Site, objects: f64, bytes: f64) {
        if let Ok(mut sites) = self.sites.lock() {
            sites.insert(site.clone());
        }
        let labels = self.site_labels(site);
        self.metrics
            .site_objects
            .with_label_values(&labels)
            .inc_by(objects.max(0.0));
        self.metrics
            .site_bytes
            .with_label_values(&labels)
            .inc_by(bytes.max(0.0));
    }

    /// Delete a site's series (allocation and churn): the site was retired long enough ago
    /// that its frozen series would only take room (`SiteRanking`).
    pub fn forget_site(&self, site: &Site) {
        if let Ok(mut sites) = self.sites.lock() {
            sites.remove(site);
        }
        let labels = self.site_labels(site);
        let _ = self.metrics.site_bytes.remove_label_values(&labels);
        let _ = self.metrics.site_objects.remove_label_values(&labels);
        if let Ok(mut churn_sites) = self.churn_sites.lock() {
            churn_sites.retain(|(churn, churned)| {
                if churned != site {
                    return true;
                }
                let _ = self
                    .metrics
                    .churn
                    .remove_label_values(&self.churn_labels(*churn, site));
                false
            });
        }
    }

    /// Add a churn pattern's growth at a site.
    pub fn churned(&self, churn: Churn, site: &Site, objects: f64) {
        if let Ok(mut sites) = self.churn_sites.lock() {
            sites.insert((churn, site.clone()));
        }
        let labels = self.churn_labels(churn, site);
        self.metrics
            .churn
            .with_label_values(&labels)
            .inc_by(objects.max(0.0));
    }

    /// Read this target's runtime vitals from its memory, from now until it is removed.
    pub fn read_vitals(
        &self,
        reader: crate::process::vitals::VitalsReader,
        vitals: Vec<&'static crate::model::vitals::Vital>,
        still_runs: Box<dyn Fn() -> bool + Send + Sync>,
    ) {
        self.metrics.vitals.add(
            VitalsSource {
                labels: self.labels.clone(),
                reader,
                vitals,
                still_runs,
                own_cpu: self.own_cpu.clone(),
            },
            &self.metrics.publishing,
        );
    }

    /// Add GC cycles started by `trigger` (from `profiler_common::trigger::TRIGGER_NAMES`).
    pub fn gc_cycles_started(&self, trigger: &str, count: u64) {
        self.metrics
            .gc_triggers
            .with_label_values(&self.with(trigger))
            .inc_by(count);
    }

    /// Add probe hits of a family (`probe` from a fixed set).
    pub fn probe_hits(&self, probe: &str, count: u64) {
        self.metrics
            .hits
            .with_label_values(&self.with(probe))
            .inc_by(count);
    }

    /// Add to a drop counter (`reason` from a fixed set: bounded cardinality).
    pub fn dropped(&self, reason: &str, count: u64) {
        if let Ok(mut reasons) = self.drop_reasons.lock() {
            *reasons.entry(reason.to_owned()).or_default() += count;
        }
        self.metrics
            .dropped
            .with_label_values(&self.with(reason))
            .inc_by(count);
    }

    /// The events lost so far, by reason: only reasons with losses.
    pub fn dropped_so_far(&self) -> BTreeMap<String, u64> {
        self.drop_reasons
            .lock()
            .map(|reasons| {
                reasons
                    .iter()
                    .filter(|(_, count)| **count > 0)
                    .map(|(reason, count)| (reason.clone(), *count))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The Go-map series of this target.
    pub fn maps(&self) -> TargetMapMetrics<'_> {
        TargetMapMetrics {
            families: &self.metrics.maps,
            labels: &self.labels,
            sites: &self.map_sites,
            reasons: &self.map_drop_reasons,
            publishing: &self.metrics.publishing,
        }
    }

    pub fn remove(&self) {
        self.maps().remove();
        self.metrics.native.remove(&self.labels);
        self.metrics.vitals.remove(&self.labels);
        self.metrics.overhead.remove(&self.labels);
        for probe in profiler_common::counters::HIT_NAMES {
            let _ = self.metrics.hits.remove_label_values(&self.with(probe));
        }
        for trigger in profiler_common::trigger::TRIGGER_NAMES {
            let _ = self
                .metrics
                .gc_triggers
                .remove_label_values(&self.with(trigger));
        }
        let _ = self.metrics.exact_objects.remove_label_values(&self.labels);
        let _ = self.metrics.exact_bytes.remove_label_values(&self.labels);
        if let Ok(mut by_target) = self.metrics.sizes.by_target.lock() {
            by_target.remove(&self.labels);
        }
        let _ = self.metrics.gc_cycles.remove_label_values(&self.labels);
        let _ = self
            .metrics
            .concurrent_mark
            .remove_label_values(&self.labels);
        let _ = self
            .metrics
            .cycle_interval
            .remove_label_values(&self.labels);
        let _ = self.metrics.alloc_bytes.remove_label_values(&self.labels);
        let _ = self.metrics.alloc_objects.remove_label_values(&self.labels);
        let _ = self.metrics.alloc_samples.remove_label_values(&self.labels);
        let _ = self.metrics.alloc_rate.remove_label_values(&self.labels);
        let _ = self.metrics.alloc_stacks.remove_label_values(&self.labels);
        if let Ok(reasons) = self.reasons.lock() {
            for reason in reasons.iter() {
                let _ = self.metrics.pause.remove_label_values(&self.with(reason));
                let _ = self
                    .metrics
                    .stopping
                    .remove_label_values(&self.with(reason));
            }
        }
        if let Ok(sites) = self.sites.lock() {
            for site in sites.iter() {
                let labels = self.site_labels(site);
                let _ = self.metrics.site_bytes.remove_label_values(&labels);
                let _ = self.metrics.site_objects.remove_label_values(&labels);
            }
        }
        if let Ok(sites) = self.churn_sites.lock() {
            for (churn, site) in sites.iter() {
                let labels = self.churn_labels(*churn, site);
                let _ = self.metrics.churn.remove_label_values(&labels);
            }
        }
        if let Ok(reasons) = self.drop_reasons.lock() {
            for reason in reasons.keys() {
                let _ = self.metrics.dropped.remove_label_values(&self.with(reason));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pause(reason: &str, total_ns: u64, ends_gc_cycle: bool) -> Pause {
        Pause {
            reason: reason.to_owned(),
            ends_gc_cycle,
            total_ns,
            stopping_ns: Some(total_ns / 10),
            started_ns: 0,
            restarted_ns: total_ns,
        }
    }

    #[test]
    fn buckets_cover_sub_microsecond_to_seconds() {
        let buckets = pause_buckets();
        assert_eq!(buckets.first(), Some(&0.5e-6));
        assert!(buckets.last().is_some_and(|&last| last > 8.0));
        assert!(buckets.windows(2).all(|pair| pair[1] == pair[0] * 2.0));
    }

    #[test]
    fn size_histogram_buckets_estimates() {
        let histogram = SizeHistogram::from_estimates(&BTreeMap::from([
            (8, 100.0),
            (24, 10.0),
            (4096, 2.5),
            (1 << 30, 1.0),
        ]));
        assert_eq!(histogram.buckets.len(), size_buckets().len() + 1);
        assert_eq!(histogram.buckets[0], 100.0, "8 B is in the 8 B bucket");
        assert_eq!(histogram.buckets[2], 10.0, "24 B is in the 32 B bucket");
        assert_eq!(histogram.buckets[9], 2.5, "4 KiB is in the 4096 B bucket");
        assert_eq!(histogram.buckets[23], 1.0, "1 GiB is past the last bound");
        assert_eq!(histogram.count, 113.5);

        let metrics = Arc::new(Metrics::new().unwrap());
        let target = metrics.target(&TargetIdentity {
            pid: 9,
            exe: "svc".into(),
            go_version: "go1.27.3".into(),
            container: String::new(),
        });
        target.allocation_sizes(histogram);
        let text = metrics.encode().unwrap();
        let labels = r#"container="",exe="svc",go_version="go1.27.3",pid="9""#;
        assert!(
            text.contains(&format!(
                "mapscope_alloc_size_bytes_bucket{{{labels},le=\"8\"}} 100"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "mapscope_alloc_size_bytes_bucket{{{labels},le=\"4096\"}} 113"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("mapscope_alloc_size_bytes_count{{{labels}}} 114")),
            "{text}"
        );
        target.remove();
        assert!(
            !metrics
                .encode()
                .unwrap()
                .contains("mapscope_alloc_size_bytes")
        );
    }

    #[test]
    fn a_scrape_sees_each_map_snapshot_whole() {
        use crate::model::maps::{MapLayout, MapShape, Unit};
        let metrics = Arc::new(Metrics::new().unwrap());
        let target = Arc::new(metrics.target(&TargetIdentity {
            pid: 7,
            exe: "svc".into(),
            go_version: "go1.27.3".into(),
            container: String::new(),
        }));
        const UNITS: usize = 20_000;
        let shape = MapShape {
            layout: MapLayout::Swiss,
            entries: 4 * UNITS as u64,
            capacity_slots: 8 * UNITS as u64,
            bytes: 0,
            units: vec![
                Unit {
                    entries: 4,
                    ..Unit::default()
                };
                UNITS
            ],
            log2_buckets: None,
            evacuation: None,
            directory_len: None,
            tables: Vec::new(),
        };
        let writer = {
            let target = Arc::clone(&target);
            std::thread::spawn(move || {
                for _ in 0..30 {
                    target.maps().snapshot("main.f (f.go:1)", &shape, 0);
                }
            })
        };
        // Every scrape meanwhile sees a whole number of snapshots' observations.
        while !writer.is_finished() {
            let text = metrics.encode().unwrap();
            let count: u64 = text
                .lines()
                .find(|line| line.starts_with("mapscope_map_bucket_entries_count"))
                .and_then(|line| line.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0);
            assert_eq!(
                count % UNITS as u64,
                0,
                "a scrape saw part of a snapshot: {count}"
            );
        }
        writer.join().unwrap();
    }

    /// The loss, cost and failure counters exist at 0 from the start, for every documented
    /// label value: a dashboard shows 0, not "no data", and `increase()` sees the first one.
    #[test]
    fn counters_exist_at_zero_for_every_label_value() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let target = metrics.target(&TargetIdentity {
            pid: 7,
            exe: "svc".into(),
            go_version: "go1.27.3".into(),
            container: String::new(),
        });
        target.maps().create_drop_series(&["changed", "too_large"]);
        let text = metrics.encode().unwrap();
        let zero = |name: &str, label: &str, value: &str| {
            text.lines().any(|line| {
                line.starts_with(&format!("{name}{{"))
                    && line.contains(&format!("{label}=\"{value}\""))
                    && line.ends_with(" 0")
            })
        };
        // docs/METRICS.md names every reason in its "Drop reasons" paragraph, and the label
        // table gives their number.
        let docs = include_str!("../../../docs/METRICS.md");
        let paragraph = docs
            .split("Drop reasons:")
            .nth(1)
            .and_then(|rest| rest.split("\n\n").next())
            .expect("a Drop reasons paragraph");
        for reason in DROP_REASONS {
            assert!(
                paragraph.contains(&format!("`{reason}`")),
                "{reason} is not in docs/METRICS.md's Drop reasons"
            );
        }
        assert!(
            docs.contains(&format!("fixed list of {}", DROP_REASONS.len())),
            "docs/METRICS.md's label table gives another number of drop reasons"
        );
        for reason in DROP_REASONS {
            assert!(
                zero("mapscope_probe_events_dropped_total", "reason", reason),
                "{reason}: {text}"
            );
        }
        for probe in profiler_common::counters::HIT_NAMES {
            assert!(zero("mapscope_probe_hits_total", "probe", probe), "{probe}");
        }
        for trigger in profiler_common::trigger::TRIGGER_NAMES {
            assert!(
                zero("mapscope_gc_cycles_by_trigger_total", "trigger", trigger),
                "{trigger}"
            );
        }
        for histogram in [
            "mapscope_gc_concurrent_mark_seconds_count",
            "mapscope_gc_cycle_interval_seconds_count",
        ] {
            assert!(
                text.lines()
                    .any(|line| line.starts_with(&format!("{histogram}{{")) && line.ends_with(" 0")),
                "{histogram}: {text}"
            );
        }
        for reason in ATTACH_FAILURE_REASONS {
            assert!(
                zero("mapscope_target_attach_failures_total", "reason", reason),
                "{reason}"
            );
        }
        for reason in ["changed", "too_large"] {
            assert!(
                zero("mapscope_map_snapshots_dropped_total", "reason", reason),
                "{reason}"
            );
        }
        target.remove();
        assert!(!metrics.encode().unwrap().contains("pid=\"7\""));
    }

    #[test]
    fn exports_and_removes_a_targets_series() {
        // User-defined labels (daemon config) go on every series of every target.
        let metrics =
            Arc::new(Metrics::with_labels(vec![("cluster".into(), "eu".into())]).unwrap());
        let target = metrics.target(&TargetIdentity {
            pid: 42,
            exe: "svc".into(),
            go_version: "go1.27.3".into(),
            container: "c0ffee".into(),
        });
        target.observe(&pause("gc_sweep_termination", 20_000, false));
        target.observe(&pause("gc_mark_termination", 30_000, true));
        target.dropped("ring_buffer_full", 2);
        let text = metrics.encode().unwrap();
        let labels = r#"cluster="eu",container="c0ffee",exe="svc",go_version="go1.27.3",pid="42""#;
        assert!(
            text.contains(&format!("mapscope_gc_cycles_total{{{labels}}} 1")),
            "{text}"
        );
        assert!(text.contains(&format!(
            "mapscope_stw_pause_seconds_count{{{labels},reason=\"gc_mark_termination\"}} 1"
        )));
        assert!(text.contains(&format!(
            "mapscope_stw_pause_seconds_sum{{{labels},reason=\"gc_sweep_termination\"}} 0.00002"
        )));
        assert!(text.contains(&format!(
            "mapscope_probe_events_dropped_total{{{labels},reason=\"ring_buffer_full\"}} 2"
        )));

        target.remove();
        let text = metrics.encode().unwrap();
        assert!(
            !text.contains("pid=\"42\""),
            "series left after remove:\n{text}"
        );
        assert!(text.contains("mapscope_build_info"));
    }
}
