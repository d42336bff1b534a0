//! The runtime's vitals as Prometheus series: one family per `model::vitals::VITALS` entry,
//! set from each target's memory when a scrape comes, at most once a second.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, RwLock, RwLockWriteGuard},
    time::{Duration, Instant},
};

use prometheus::{
    CounterVec, GaugeVec, Opts, Registry,
    core::{Collector, Desc},
    proto::{MetricFamily, MetricType},
};

use super::metrics::Shared;
use crate::{
    model::vitals::{self, Cumulative, Kind, RawVitals, VITALS, Vital},
    process::vitals::VitalsReader,
};

/// Reads closer together than this reuse the last values: a scrape every 15 s costs one read
/// per target, and many scrapers together at most one a second.
const MIN_READ_INTERVAL: Duration = Duration::from_secs(1);

enum Family {
    Gauge(GaugeVec),
    Counter(CounterVec),
    Histogram(Arc<Histograms>),
}

/// A histogram family whose buckets are the runtime's counts, set whole each read (the
/// prometheus crate's histograms only take observations).
struct Histograms {
    desc: Desc,
    label_names: Vec<String>,
    by_target: Mutex<BTreeMap<Vec<String>, Cumulative>>,
}

impl Collector for Histograms {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(by_target) = self.by_target.lock() else {
            return Vec::new();
        };
        if by_target.is_empty() {
            return Vec::new();
        }
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::HISTOGRAM);
        for (labels, histogram) in by_target.iter() {
            family.mut_metric().push(super::metrics::histogram_metric(
                &self.label_names,
                labels,
                histogram.buckets.iter().copied(),
                histogram.count,
                histogram.sum,
            ));
        }
        vec![family]
    }
}

/// A target whose vitals are read.
pub struct VitalsSource {
    pub labels: Vec<String>,
    pub reader: VitalsReader,
    pub vitals: Vec<&'static Vital>,
    /// False once the PID runs another program image (exec, reuse): its memory is no longer
    /// the binary's.
    pub still_runs: Box<dyn Fn() -> bool + Send + Sync>,
    /// Where the reads' CPU time is counted, as mapscope's work for this target.
    pub own_cpu: crate::collect::overhead::OwnCpu,
}

pub struct VitalFamilies {
    families: Vec<(&'static Vital, Family)>,
    sources: Mutex<Vec<VitalsSource>>,
    read_at: Mutex<Option<Instant>>,
}

impl VitalFamilies {
    pub fn register(
        registry: &Registry,
        target_labels: &[String],
    ) -> Result<Self, prometheus::Error> {
        let labels: Vec<&str> = target_labels.iter().map(String::as_str).collect();
        let mut families = Vec::new();
        for vital in VITALS {
            let help = format!(
                "{} Read from the target's memory; runtime/metrics {} (Go 1.{}+).",
                vital.help, vital.name, vital.since.1
            );
            let opts = Opts::new(vital.prometheus_name(), help);
            let family = match vital.kind {
                Kind::Counter => {
                    let family = CounterVec::new(opts, &labels)?;
                    registry.register(Box::new(family.clone()))?;
                    Family::Counter(family)
                }
                Kind::Gauge => {
                    let family = GaugeVec::new(opts, &labels)?;
                    registry.register(Box::new(family.clone()))?;
                    Family::Gauge(family)
                }
                Kind::Histogram => {
                    let family = Arc::new(Histograms {
                        desc: Desc::new(
                            opts.name.clone(),
                            opts.help.clone(),
                            target_labels.to_vec(),
                            std::collections::HashMap::new(),
                        )?,
                        label_names: target_labels.to_vec(),
                        by_target: Mutex::default(),
                    });
                    registry.register(Box::new(Shared(Arc::clone(&family))))?;
                    Family::Histogram(family)
                }
            };
            families.push((vital, family));
        }
        Ok(Self {
            families,
            sources: Mutex::default(),
            read_at: Mutex::default(),
        })
    }

    /// Read `source`'s vitals from now on (and once now, so its series exist at once).
    /// `publishing` is held to write while series change, so a scrape sees none mid-change.
    pub fn add(&self, source: VitalsSource, publishing: &RwLock<()>) {
        if let Some(raw) = read(&source) {
            let _writing = write(publishing);
            self.publish(&source, &raw);
        }
        if let Ok(mut sources) = self.sources.lock() {
            sources.push(source);
        }
    }

    /// Stop reading the target with these labels, and remove its series.
    pub fn remove(&self, labels: &[String]) {
        if let Ok(mut sources) = self.sources.lock() {
            sources.retain(|source| source.labels != labels);
        }
        let values: Vec<&str> = labels.iter().map(String::as_str).collect();
        for (_, family) in &self.families {
            match family {
                Family::Gauge(family) => {
                    let _ = family.remove_label_values(&values);
                }
                Family::Counter(family) => {
                    let _ = family.remove_label_values(&values);
                }
                Family::Histogram(family) => {
                    if let Ok(mut by_target) = family.by_target.lock() {
                        by_target.remove(labels);
                    }
                }
            }
        }
    }

    /// Read every target again unless that was done less than `MIN_READ_INTERVAL` ago, then
    /// publish under `publishing` (counters are set by resetting them: a scrape must not gather
    /// in between). The reads happen before the lock is taken: map snapshots publishing
    /// meanwhile do not wait for them.
    pub fn refresh(&self, publishing: &RwLock<()>) {
        {
            let Ok(mut read_at) = self.read_at.lock() else {
                return;
            };
            if read_at.is_some_and(|at| at.elapsed() < MIN_READ_INTERVAL) {
                return;
            }
            *read_at = Some(Instant::now());
        }
        let Ok(sources) = self.sources.lock() else {
            return;
        };
        let read: Vec<(&VitalsSource, RawVitals)> = sources
            .iter()
            .filter_map(|source| Some((source, source.own_cpu.measure(|| read(source))?)))
            .collect();
        let _writing = write(publishing);
        for (source, raw) in &read {
            self.publish(source, raw);
        }
    }

    fn publish(&self, source: &VitalsSource, raw: &RawVitals) {
        let labels: Vec<&str> = source.labels.iter().map(String::as_str).collect();
        for (vital, family) in &self.families {
            if !source.vitals.contains(vital) {
                continue;
            }
            if let Family::Histogram(family) = family {
                if let (Some(histogram), Ok(mut by_target)) =
                    (vital.histogram(raw), family.by_target.lock())
                {
                    by_target.insert(source.labels.clone(), histogram);
                }
                continue;
            }
            let Some(value) = vital.value(raw) else {
                continue;
            };
            match family {
                Family::Gauge(family) => family.with_label_values(&labels).set(value),
                Family::Counter(family) => {
                    // The runtime's total, not an increase: set it exactly. Never lower: a
                    // counter that went down would read as a restart of the target.
                    let counter = family.with_label_values(&labels);
                    if value >= counter.get() {
                        counter.reset();
                        counter.inc_by(value);
                    }
                }
                Family::Histogram(_) => {}
            }
        }
    }
}

/// `source`'s vitals now, with implausible groups cleared; `None` when the read failed or the
/// PID no longer runs the image it was planned for.
fn read(source: &VitalsSource) -> Option<RawVitals> {
    let mut raw = match source.reader.read() {
        Ok(raw) => raw,
        Err(error) => {
            tracing::debug!("reading vitals of {:?}: {error}", source.labels);
            return None;
        }
    };
    if !(source.still_runs)() {
        return None;
    }
    let cleared = vitals::sanitize(&mut raw);
    if !cleared.is_empty() {
        tracing::debug!(
            "vitals of {:?}: {} read implausible values, not exported",
            source.labels,
            cleared.join(", ")
        );
    }
    Some(raw)
}

fn write(lock: &RwLock<()>) -> RwLockWriteGuard<'_, ()> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
