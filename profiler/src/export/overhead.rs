//! What mapscope costs each target, as Prometheus series (`collect::overhead` measures it).
use profiler_common::counters::{HIT_KINDS, HIT_NAMES};
use prometheus::{CounterVec, GaugeVec, Opts, Registry};

use crate::model::overhead::{CostRatios, CostReading};

pub struct OverheadFamilies {
    duty: GaugeVec,
    probe_ratio: GaugeVec,
    hit_cost: GaugeVec,
    probe_seconds: CounterVec,
    own_seconds: CounterVec,
    own_ratio: GaugeVec,
    total_ratio: GaugeVec,
    target_seconds: CounterVec,
}

impl OverheadFamilies {
    pub fn register(
        registry: &Registry,
        target_labels: &[String],
    ) -> Result<Self, prometheus::Error> {
        let target: Vec<&str> = target_labels.iter().map(String::as_str).collect();
        let with_probe: Vec<&str> = target.iter().copied().chain(["probe"]).collect();
        let duty = GaugeVec::new(
            Opts::new(
                "mapscope_probe_duty_cycle",
                "Fraction of the time this probe family's probes are attached now (1: all the \
                 time). Below 1, the overhead governor holds the family within --max-overhead, \
                 and every figure it feeds is an estimate scaled up by this fraction.",
            ),
            &with_probe,
        )?;
        let probe_ratio = GaugeVec::new(
            Opts::new(
                "mapscope_probe_overhead_ratio",
                "CPU time the target spent in this probe family over the last minute (hits × \
                 the cost of a hit: the uprobe trap, calibrated on this machine, plus the \
                 programs' mean run time, stack walks included), divided by the CPU time the \
                 target used (/proc/PID/stat).",
            ),
            &with_probe,
        )?;
        let hit_cost = GaugeVec::new(
            Opts::new(
                "mapscope_probe_hit_cost_seconds",
                "Estimated cost of one hit of this probe family in this target: the uprobe \
                 trap plus the family's programs' mean run time (kernel BPF statistics).",
            ),
            &with_probe,
        )?;
        let probe_seconds = CounterVec::new(
            Opts::new(
                "mapscope_probe_cpu_seconds_total",
                "Estimated CPU time the target has spent in this probe family (hits × the cost \
                 of a hit).",
            ),
            &with_probe,
        )?;
        let own_seconds = CounterVec::new(
            Opts::new(
                "mapscope_own_cpu_seconds_total",
                "CPU time mapscope itself spent for this target: reading the kernel's counts \
                 and the target's memory, symbolizing, snapshotting maps, discovery windows.",
            ),
            &target,
        )?;
        let own_ratio = GaugeVec::new(
            Opts::new(
                "mapscope_own_cpu_ratio",
                "mapscope's own CPU time for this target over the last minute, divided by the \
                 CPU time the target used.",
            ),
            &target,
        )?;
        let total_ratio = GaugeVec::new(
            Opts::new(
                "mapscope_overhead_ratio",
                "Everything mapscope cost this target over the last minute (every probe family \
                 plus its own CPU), as a share of the CPU time the target used.",
            ),
            &target,
        )?;
        let target_seconds = CounterVec::new(
            Opts::new(
                "mapscope_target_cpu_seconds_total",
                "CPU time the target used while mapscope watched (user + system, all its \
                 threads, /proc/PID/stat; the probes' time included): what the ratios divide by.",
            ),
            &target,
        )?;
        registry.register(Box::new(target_seconds.clone()))?;
        registry.register(Box::new(duty.clone()))?;
        registry.register(Box::new(probe_ratio.clone()))?;
        registry.register(Box::new(hit_cost.clone()))?;
        registry.register(Box::new(probe_seconds.clone()))?;
        registry.register(Box::new(own_seconds.clone()))?;
        registry.register(Box::new(own_ratio.clone()))?;
        registry.register(Box::new(total_ratio.clone()))?;
        Ok(Self {
            duty,
            probe_ratio,
            hit_cost,
            probe_seconds,
            own_seconds,
            own_ratio,
            total_ratio,
            target_seconds,
        })
    }

    /// Set one target's series from its meter's latest reading and window.
    pub fn set(
        &self,
        labels: &[String],
        hit_cost_ns: &[f64; HIT_KINDS as usize],
        reading: &CostReading,
        first_cpu_ns: f64,
        ratios: CostRatios,
    ) {
        let target: Vec<&str> = labels.iter().map(String::as_str).collect();
        for (family, probe) in HIT_NAMES.iter().enumerate() {
            let with_probe: Vec<&str> = target.iter().copied().chain([*probe]).collect();
            self.probe_ratio
                .with_label_values(&with_probe)
                .set(ratios.probes[family]);
            self.hit_cost
                .with_label_values(&with_probe)
                .set(hit_cost_ns[family] / 1e9);
            raise_to(
                &self.probe_seconds.with_label_values(&with_probe),
                reading.probe_ns[family] / 1e9,
            );
        }
        raise_to(
            &self.own_seconds.with_label_values(&target),
            reading.own_cpu_ns / 1e9,
        );
        self.own_ratio.with_label_values(&target).set(ratios.own);
        raise_to(
            &self.target_seconds.with_label_values(&target),
            (reading.target_cpu_ns - first_cpu_ns) / 1e9,
        );
        self.total_ratio
            .with_label_values(&target)
            .set(ratios.total());
    }

    /// A governed family's duty cycle (only governed families have the series).
    pub fn duty_cycle(&self, labels: &[String], probe: &str, duty: f64) {
        let with_probe: Vec<&str> = labels.iter().map(String::as_str).chain([probe]).collect();
        self.duty.with_label_values(&with_probe).set(duty);
    }

    pub fn remove(&self, labels: &[String]) {
        let target: Vec<&str> = labels.iter().map(String::as_str).collect();
        for probe in HIT_NAMES {
            let with_probe: Vec<&str> = target.iter().copied().chain([probe]).collect();
            let _ = self.duty.remove_label_values(&with_probe);
            let _ = self.probe_ratio.remove_label_values(&with_probe);
            let _ = self.hit_cost.remove_label_values(&with_probe);
            let _ = self.probe_seconds.remove_label_values(&with_probe);
        }
        let _ = self.own_seconds.remove_label_values(&target);
        let _ = self.own_ratio.remove_label_values(&target);
        let _ = self.total_ratio.remove_label_values(&target);
        let _ = self.target_seconds.remove_label_values(&target);
    }
}

/// A counter set to a cumulative total that only grows: add the difference.
fn raise_to(counter: &prometheus::Counter, total: f64) {
    let increase = total - counter.get();
    if increase > 0.0 {
        counter.inc_by(increase);
    }
}
