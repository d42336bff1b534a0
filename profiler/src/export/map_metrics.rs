//! The Go-map metric families (docs/METRICS.md, "Maps"). Every series is per target and per
//! map site: the function (and file:line) that created the map or first grew it. Bucket
//! indexes are never labels; distributions over buckets are histograms.
use std::collections::BTreeSet;

use prometheus::{
    CounterVec, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry,
};

use crate::model::maps::{Distribution, MapShape, OpRates};

/// Entries per bucket: a bucket holds 8, its overflow chain 8 more per bucket; a swiss group
/// holds 8 (so its buckets stop at 8).
fn entry_buckets() -> Vec<f64> {
    vec![
        0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0,
    ]
}

fn chain_buckets() -> Vec<f64> {
    vec![0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0]
}

fn tombstone_buckets() -> Vec<f64> {
    (0..=8).map(f64::from).collect()
}

pub struct MapFamilies {
    bucket_entries: HistogramVec,
    overflow_chains: HistogramVec,
    tombstones: HistogramVec,
    entries: GaugeVec,
    capacity: GaugeVec,
    bytes: GaugeVec,
    tracked: GaugeVec,
    operations: GaugeVec,
    growths: CounterVec,
    overflows: CounterVec,
    snapshots: IntCounterVec,
    dropped: IntCounterVec,
    bytes_read: IntCounterVec,
}

impl MapFamilies {
    /// The families, labeled by `target_labels` (plus `site` or `reason`).
    pub fn register(
        registry: &Registry,
        target_labels: &[String],
    ) -> Result<Self, prometheus::Error> {
        let target: Vec<&str> = target_labels.iter().map(String::as_str).collect();
        let with = |extra: &'static str| -> Vec<&str> {
            target
                .iter()
                .copied()
                .chain(std::iter::once(extra))
                .collect()
        };
        let site_labels = with("site");
        let operation_labels: Vec<&str> = site_labels
            .iter()
            .copied()
            .chain(std::iter::once("op"))
            .collect();
        let reason_labels = with("reason");
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets),
                &site_labels,
            )
        };
        let gauge = |name: &str, help: &str| GaugeVec::new(Opts::new(name, help), &site_labels);
        let families = Self {
            bucket_entries: histogram(
                "mapscope_map_bucket_entries",
                "Entries per bucket including its overflow chain (bucket maps, Go <= 1.23), or \
                 full slots per group (swiss tables, Go 1.24+), over the buckets/groups of the \
                 tracked maps of a site; every snapshot observes each bucket once.",
                entry_buckets(),
            )?,
            overflow_chains: histogram(
                "mapscope_map_overflow_chain_length",
                "Overflow buckets chained to each bucket (bucket maps), per snapshot.",
                chain_buckets(),
            )?,
            tombstones: histogram(
                "mapscope_map_group_tombstones",
                "Deleted slots (tombstones) per group (swiss tables), per snapshot.",
                tombstone_buckets(),
            )?,
            entries: gauge(
                "mapscope_map_entries",
                "Entries in the tracked maps of a site, at their last snapshot.",
            )?,
            capacity: gauge(
                "mapscope_map_capacity_slots",
                "Slots the tracked maps of a site hold without allocating (buckets x 8 incl. \
                 overflow, or table capacities), at their last snapshot.",
            )?,
            bytes: gauge(
                "mapscope_map_bytes",
                "Bytes held by the tracked maps of a site (headers, bucket arrays, overflow \
                 buckets; or directories, tables, groups), at their last snapshot.",
            )?,
            tracked: gauge(
                "mapscope_maps_snapshotted",
                "Maps of a site whose last snapshot is in the map gauges.",
            )?,
            operations: GaugeVec::new(
                Opts::new(
                    "mapscope_map_operations_per_second",
                    "Operations per second on the tracked maps of a site, by op: lookup (v := \
                     m[k]), assign (m[k] = v), delete (delete, clear), iterate (range started); \
                     measured in the last map discovery window.",
                ),
                &operation_labels,
            )?,
            growths: CounterVec::new(
                Opts::new(
                    "mapscope_map_growths_total",
                    "Growths of maps of 128+ entries (bucket maps: hashGrow; swiss tables: a \
                     table grown or split) by map site; an estimate, scaled up, while the \
                     overhead governor cycles the map_event probes \
                     (mapscope_probe_duty_cycle{probe=\"map_event\"} below 1).",
                ),
                &site_labels,
            )?,
            overflows: CounterVec::new(
                Opts::new(
                    "mapscope_map_overflow_buckets_total",
                    "Overflow buckets allocated (runtime newoverflow, bucket maps) by map site \
                     (scaled like mapscope_map_growths_total).",
                ),
                &site_labels,
            )?,
            snapshots: IntCounterVec::new(
                Opts::new(
                    "mapscope_map_snapshots_total",
                    "Map snapshots taken and kept.",
                ),
                &target,
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "mapscope_map_snapshots_dropped_total",
                    "Map snapshots dropped, by reason: changed (written while read), \
                     inconsistent (freed and reused), unreadable (freed), denied (no right to read \
                     the target's memory), too_large (over --map-snapshot-max-bytes).",
                ),
                &reason_labels,
            )?,
            bytes_read: IntCounterVec::new(
                Opts::new(
                    "mapscope_map_snapshot_read_bytes_total",
                    "Bytes of target memory read for map snapshots.",
                ),
                &target,
            )?,
        };
        registry.register(Box::new(families.bucket_entries.clone()))?;
        registry.register(Box::new(families.overflow_chains.clone()))?;
        registry.register(Box::new(families.tombstones.clone()))?;
        registry.register(Box::new(families.entries.clone()))?;
        registry.register(Box::new(families.capacity.clone()))?;
        registry.register(Box::new(families.bytes.clone()))?;
        registry.register(Box::new(families.tracked.clone()))?;
        registry.register(Box::new(families.operations.clone()))?;
        registry.register(Box::new(families.growths.clone()))?;
        registry.register(Box::new(families.overflows.clone()))?;
        registry.register(Box::new(families.snapshots.clone()))?;
        registry.register(Box::new(families.dropped.clone()))?;
        registry.register(Box::new(families.bytes_read.clone()))?;
        Ok(families)
    }
}

/// Sums of one site's latest snapshots, for its gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SiteTotals {
    pub maps: u64,
    pub entries: u64,
    pub capacity_slots: u64,
    pub bytes: u64,
}

/// The map series of one target (labels pid, exe, go_version).
pub struct TargetMapMetrics<'a> {
    pub families: &'a MapFamilies,
    pub labels: &'a [String],
    pub sites: &'a std::sync::Mutex<BTreeSet<String>>,
    pub reasons: &'a std::sync::Mutex<BTreeSet<String>>,
    /// Held to write while one snapshot's observations go in (see `Metrics::encode`).
    pub publishing: &'a std::sync::RwLock<()>,
}

fn observe_all(histogram: &prometheus::Histogram, distribution: &Distribution) {
    for (&value, &count) in distribution {
        for _ in 0..count {
            histogram.observe(f64::from(value));
        }
    }
}

impl TargetMapMetrics<'_> {
    fn with<'b>(&'b self, site: &'b str) -> Vec<&'b str> {
        self.labels
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(site))
            .collect()
    }

    fn touch(&self, site: &str) {
        if let Ok(mut sites) = self.sites.lock() {
            sites.insert(site.to_owned());
        }
    }

    pub fn events(&self, site: &str, growths: f64, overflows: f64, bucket_maps: bool) {
        self.touch(site);
        let labels = self.with(site);
        self.families
            .growths
            .with_label_values(&labels)
            .inc_by(growths);
        if bucket_maps {
            self.families
                .overflows
                .with_label_values(&labels)
                .inc_by(overflows);
        }
    }

    /// One kept snapshot: its buckets/groups into the site's histograms, all at once for a
    /// scrape (a 1M-entry map is 262,144 observations: a scrape in their midst would see part
    /// of a map).
    pub fn snapshot(&self, site: &str, shape: &MapShape, bytes_read: u64) {
        self.touch(site);
        let labels = self.with(site);
        let families = self.families;
        // The distributions are computed before the lock is taken; only the observing holds it.
        let (entries, chains, tombstones) = (
            shape.entries_per_unit(),
            shape.overflow_chains(),
            shape.tombstones_per_group(),
        );
        let _whole = self
            .publishing
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        observe_all(
            &families.bucket_entries.with_label_values(&labels),
            &entries,
        );
        if let Some(chains) = chains {
            observe_all(
                &families.overflow_chains.with_label_values(&labels),
                &chains,
            );
        }
        if let Some(tombstones) = tombstones {
            observe_all(&families.tombstones.with_label_values(&labels), &tombstones);
        }
        families.snapshots.with_label_values(self.labels).inc();
        families
            .bytes_read
            .with_label_values(self.labels)
            .inc_by(bytes_read);
    }

    /// The drop counters of every reason in `reasons`, at 0 (a dashboard shows 0 where
    /// nothing was dropped, and `increase()` counts the first drop).
    pub fn create_drop_series(&self, reasons: &[&str]) {
        for reason in reasons {
            if let Ok(mut seen) = self.reasons.lock() {
                seen.insert((*reason).to_owned());
            }
            self.families
                .dropped
                .with_label_values(&self.with(reason))
                // Creates the series at 0; never lowers one that exists.
                .inc_by(0);
        }
    }

    pub fn dropped(&self, reason: &str, bytes_read: u64) {
        if let Ok(mut reasons) = self.reasons.lock() {
            reasons.insert(reason.to_owned());
        }
        let labels = self.with(reason);
        self.families.dropped.with_label_values(&labels).inc();
        self.families
            .bytes_read
            .with_label_values(self.labels)
            .inc_by(bytes_read);
    }

    /// Set a site's gauges to the sums of its maps' latest snapshots.
    pub fn totals(&self, site: &str, totals: SiteTotals) {
        self.touch(site);
        let labels = self.with(site);
        let families = self.families;
        families
            .tracked
            .with_label_values(&labels)
            .set(totals.maps as f64);
        families
            .entries
            .with_label_values(&labels)
            .set(totals.entries as f64);
        families
            .capacity
            .with_label_values(&labels)
            .set(totals.capacity_slots as f64);
        families
            .bytes
            .with_label_values(&labels)
            .set(totals.bytes as f64);
    }

    /// A site's operation rates, from the last discovery window.
    pub fn operation_rates(&self, site: &str, rates: &OpRates) {
        self.touch(site);
        for (op, rate) in rates.by_op() {
            let mut labels = self.with(site);
            labels.push(op);
            self.families
                .operations
                .with_label_values(&labels)
                .set(rate);
        }
    }

    pub fn clear_operation_rates(&self, site: &str) {
        for (op, _) in OpRates::default().by_op() {
            let mut labels = self.with(site);
            labels.push(op);
            let _ = self.families.operations.remove_label_values(&labels);
        }
    }

    /// A site whose maps are all gone has no gauges (not zeros, which would read as empty maps).
    pub fn clear_totals(&self, site: &str) {
        let labels = self.with(site);
        let families = self.families;
        let _ = families.tracked.remove_label_values(&labels);
        let _ = families.entries.remove_label_values(&labels);
        let _ = families.capacity.remove_label_values(&labels);
        let _ = families.bytes.remove_label_values(&labels);
    }

    pub fn remove(&self) {
        let families = self.families;
        if let Ok(sites) = self.sites.lock() {
            for site in sites.iter() {
                let labels = self.with(site);
                let _ = families.bucket_entries.remove_label_values(&labels);
                let _ = families.overflow_chains.remove_label_values(&labels);
                let _ = families.tombstones.remove_label_values(&labels);
                let _ = families.entries.remove_label_values(&labels);
                let _ = families.capacity.remove_label_values(&labels);
                let _ = families.bytes.remove_label_values(&labels);
                let _ = families.tracked.remove_label_values(&labels);
                let _ = families.growths.remove_label_values(&labels);
                let _ = families.overflows.remove_label_values(&labels);
                self.clear_operation_rates(site);
            }
        }
        if let Ok(reasons) = self.reasons.lock() {
            for reason in reasons.iter() {
                let labels = self.with(reason);
                let _ = families.dropped.remove_label_values(&labels);
            }
        }
        let _ = families.snapshots.remove_label_values(self.labels);
        let _ = families.bytes_read.remove_label_values(self.labels);
    }
}
