//! The runtime's vitals as Prometheus series: one family per `model::vitals::VITALS` entry,
//! set from each target's memory when a scrape comes, at most once a second.
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use prometheus::{CounterVec, GaugeVec, Opts, Registry};

use crate::{
    model::vitals::{self, RawVitals, VITALS, Vital},
    process::vitals::VitalsReader,
};

/// Reads closer together than this reuse the last values: a scrape every 15 s costs one read
/// per target, and many scrapers together at most one a second.
const MIN_READ_INTERVAL: Duration = Duration::from_secs(1);

enum Family {
    Gauge(GaugeVec),
    Counter(CounterVec),
}

/// A target whose vitals are read.
pub struct VitalsSource {
    pub labels: Vec<String>,
    pub reader: VitalsReader,
    pub vitals: Vec<&'static Vital>,
    /// False once the PID runs another program image (exec, reuse): its memory is no longer
    /// the binary's.
    pub still_runs: Box<dyn Fn() -> bool + Send + Sync>,
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
            let family = if vital.cumulative {
                let family = CounterVec::new(opts, &labels)?;
                registry.register(Box::new(family.clone()))?;
                Family::Counter(family)
            } else {
                let family = GaugeVec::new(opts, &labels)?;
                registry.register(Box::new(family.clone()))?;
                Family::Gauge(family)
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
    pub fn add(&self, source: VitalsSource) {
        if let Ok(raw) = source.reader.read()
            && (source.still_runs)()
        {
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
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        for (_, family) in &self.families {
            let _ = match family {
                Family::Gauge(family) => family.remove_label_values(&labels),
                Family::Counter(family) => family.remove_label_values(&labels),
            };
        }
    }

    /// Read every target again unless that was done less than `MIN_READ_INTERVAL` ago. Called
    /// by the scrape, with no lock held that a scrape takes (it sets counters by resetting them,
    /// so the caller must keep gathering out while this runs).
    pub fn refresh(&self) {
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
        for source in sources.iter() {
            match source.reader.read() {
                // Read from the process it was planned for, still running that image.
                Ok(raw) if (source.still_runs)() => self.publish(source, &raw),
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!("reading vitals of {:?}: {error}", source.labels);
                }
            }
        }
    }

    fn publish(&self, source: &VitalsSource, raw: &RawVitals) {
        if !vitals::plausible(raw) {
            tracing::debug!(
                "vitals of {:?} look wrong, not exported: {raw:?}",
                source.labels
            );
            return;
        }
        let labels: Vec<&str> = source.labels.iter().map(String::as_str).collect();
        for (vital, family) in &self.families {
            if !source.vitals.contains(vital) {
                continue;
            }
            let Some(value) = vital.value(raw) else {
                continue;
            };
            match family {
                Family::Gauge(family) => family.with_label_values(&labels).set(value),
                Family::Counter(family) => {
                    // The runtime's total, not an increase: set it exactly.
                    let counter = family.with_label_values(&labels);
                    counter.reset();
                    counter.inc_by(value);
                }
            }
        }
    }
}
