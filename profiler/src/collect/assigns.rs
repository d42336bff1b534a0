//! `--map-assign-sampling`: the `mapassign*` probes attached for a short window once a period,
//! counting assignments by map in the kernel; each window's rates go to the map collector.
//!
//! A task of its own: removing the uprobes takes the kernel about 0.1 s apiece, seconds in all
//! on a loaded machine, and the map collector's snapshots and event counts must not wait for
//! that. The blocking parts (loading, attaching, detaching) run on a blocking thread too, so
//! the async workers keep serving the other targets and the scrapes.
use std::{collections::HashMap, sync::Arc, time::Instant};

use aya::maps::{MapData, PerCpuHashMap};
use tokio::sync::watch;

use super::{
    counters::ProbeCounters,
    maps::{AssignProbes, AssignSampling},
};
use crate::{export::metrics::TargetMetrics, probes::loaded::WindowedProbes};

/// Assignments per second by map (header address), over one window.
pub type AssignRates = HashMap<u64, f64>;

/// The running sampler: stop it with `stop`, which waits until its probes are off.
pub struct SamplerTask {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// The last window's rates: the collector takes the newest whenever it gets to it.
    pub rates: watch::Receiver<AssignRates>,
}

impl SamplerTask {
    pub fn start(
        pid: u32,
        probes: AssignProbes,
        sampling: AssignSampling,
        metrics: Arc<TargetMetrics>,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let (sender, rates) = watch::channel(AssignRates::new());
        let task = tokio::spawn(run(pid, probes, sampling, metrics, sender, stopped));
        Self { stop, task, rates }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(error) = self.task.await {
            tracing::warn!("map assignment sampling ended with an error: {error}");
        }
    }
}

/// The loaded probes and their per-map counts.
struct Loaded {
    probes: WindowedProbes,
    counts: PerCpuHashMap<MapData, u64, u64>,
    /// Probe hits, and assignments not counted for a full table.
    counters: ProbeCounters,
}

async fn run(
    pid: u32,
    source: AssignProbes,
    sampling: AssignSampling,
    metrics: Arc<TargetMetrics>,
    rates: watch::Sender<AssignRates>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut periods = tokio::time::interval(sampling.period);
    // A window that ran long (a slow detach) delays the next; they never bunch up.
    periods.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    periods.tick().await;
    let mut loaded: Option<Loaded> = None;
    loop {
        tokio::select! {
            // A stop and a due window at once: the stop wins (a window costs seconds).
            biased;
            _ = stopped.changed() => break,
            _ = periods.tick() => {}
        }
        if loaded.is_none() {
            let attempt = tokio::task::block_in_place(|| {
                let mut probes = WindowedProbes::load(pid, &source.exe, source.points.clone())?;
                let maps = probes.take_assign_maps()?;
                Ok::<_, crate::probes::loaded::LoadError>(Loaded {
                    probes,
                    counts: maps.counts,
                    counters: ProbeCounters::new(maps.hits, maps.counters),
                })
            });
            match attempt {
                Ok(ready) => loaded = Some(ready),
                Err(error) => {
                    // The same object loaded for the target a moment ago, so this is the
                    // kernel refusing more (locked memory, map limits): retrying every period
                    // would repeat the warning without fixing anything. Said once.
                    tracing::warn!(
                        "map assignment sampling is off: loading its probes failed: {error}"
                    );
                    return;
                }
            }
        }
        let Some(sampler) = loaded.as_mut() else {
            return;
        };
        if let Some(window) = sampler.window(pid, sampling, &mut stopped).await {
            tokio::task::block_in_place(|| sampler.counters.export(&metrics));
            // Replaces a window the collector has not taken yet; never waits on it (it may be
            // stopping, and waiting for this task).
            if rates.send(window).is_err() {
                break;
            }
        }
        if *stopped.borrow() {
            break;
        }
    }
    if let Some(sampler) = loaded {
        // Dropping the object removes whatever is still attached: a blocking wait too.
        tokio::task::block_in_place(move || drop(sampler));
    }
}

impl Loaded {
    /// Attach for `sampling.window` (or until stopped), then the rates by map. `None` when the
    /// probes could not be attached.
    async fn window(
        &mut self,
        pid: u32,
        sampling: AssignSampling,
        stopped: &mut watch::Receiver<bool>,
    ) -> Option<AssignRates> {
        let attaching = Instant::now();
        if let Err(error) = tokio::task::block_in_place(|| self.probes.attach()) {
            // The target exiting fails the attach; that is no news. (An exited child not yet
            // reaped still has /proc/PID, but no exe.)
            if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok() {
                tracing::warn!("map assignment sampling: attaching failed: {error}");
            }
            return None;
        }
        // Counted from here: what the first probes saw while the others were being attached
        // is subtracted. (Reading the table is a system call per map: off the workers too.)
        let baseline = tokio::task::block_in_place(|| total_by_map(&self.counts));
        let started = Instant::now();
        let attach_time = started - attaching;
        tokio::select! {
            () = tokio::time::sleep(sampling.window) => {}
            _ = stopped.changed() => {}
        }
        // Read the counts at the end of the window, before detaching: removing uprobes takes
        // the kernel a while, and counts after `seconds` would inflate the rate.
        let (counted, seconds) = tokio::task::block_in_place(|| {
            (total_by_map(&self.counts), started.elapsed().as_secs_f64())
        });
        let rates: AssignRates = counted
            .into_iter()
            .map(|(map, count)| {
                let before = baseline.get(&map).copied().unwrap_or(0);
                (map, count.saturating_sub(before) as f64 / seconds)
            })
            .collect();
        let detaching = Instant::now();
        tokio::task::block_in_place(|| {
            self.probes.detach();
            // Every map assigned to has a slot: empty the table for the next window, or maps
            // made and dropped since would fill it.
            let keys: Vec<u64> = self.counts.keys().filter_map(Result::ok).collect();
            for key in keys {
                let _ = self.counts.remove(&key);
            }
        });
        tracing::debug!(
            "PID {pid}: assignment probes attached in {attach_time:.1?}, detached and cleared in \
             {:.1?}",
            detaching.elapsed()
        );
        Some(rates)
    }
}

fn total_by_map(counts: &PerCpuHashMap<MapData, u64, u64>) -> HashMap<u64, u64> {
    counts
        .iter()
        .filter_map(Result::ok)
        .map(|(map, per_cpu)| (map, per_cpu.iter().sum::<u64>()))
        .collect()
}
