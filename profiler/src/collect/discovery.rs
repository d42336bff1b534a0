//! Map discovery windows: every map operation of the target probed for a short window once a
//! period, so the maps a service uses now are found whatever their age (a map built before
//! mapscope attached and never grown since fires no map event), and their operations counted.
//! Each window's rates go to the map collector.
//!
//! A task of its own: removing the uprobes takes the kernel about 0.1 s apiece, seconds in all
//! on a loaded machine, and the map collector's snapshots and event counts must not wait for
//! that. The blocking parts (attaching, detaching, reading the counts) run on a blocking thread
//! too, so the async workers keep serving the other targets and the scrapes.
use std::{collections::HashMap, sync::Arc, time::Instant};

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use profiler_common::maps::{MAX_ACCESS_PROBES, MapOp, MapOpKey};
use tokio::sync::watch;

use super::overhead::OwnCpu;
use crate::{
    model::maps::{CountedSpan, OpRates},
    probes::loaded::{DiscoveryMaps, WindowedProbes},
};

/// Duty cycle of the discovery probes: attached for `window`, then `period - window` after the
/// probes are removed before the next window; the first window at attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DutyCycle {
    pub window: std::time::Duration,
    pub period: std::time::Duration,
}

/// A `--map-discovery` setting: a duty cycle, or `None` for off. (A type of its own: clap
/// treats a field of type `Option` as an optional flag, not as a value.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscoverySetting(pub Option<DutyCycle>);

/// `--map-discovery`'s value, for clap.
pub fn parse_discovery(text: &str) -> Result<DiscoverySetting, String> {
    parse_duty_cycle(text).map(DiscoverySetting)
}

/// `WINDOW/PERIOD` (e.g. `200ms/60s`), or `off`.
pub fn parse_duty_cycle(text: &str) -> Result<Option<DutyCycle>, String> {
    if text == "off" {
        return Ok(None);
    }
    let (window, period) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not WINDOW/PERIOD (e.g. 200ms/60s) or off"))?;
    let window = crate::duration::parse(window)?;
    let period = crate::duration::parse(period)?;
    if window >= period {
        return Err(format!(
            "{text:?}: the window must be shorter than the period (the probes would never come \
             off)"
        ));
    }
    Ok(Some(DutyCycle { window, period }))
}

/// A window closes early once its probes were hit about this often (the hits are read every
/// `HIT_POLL`, so a many-core target may go somewhat past it): each hit costs the target a
/// microsecond or more (5 µs on this project's test VMs), so a program doing millions of map
/// operations a second would otherwise pay a second of CPU or more per window. Enough to see
/// every map a busy program uses in that time; rates stay exact (divided by the time open).
pub const MAX_WINDOW_HITS: u64 = 50_000;
/// Turns for windows: one at a time per mapscope process (see `Discovery::run`).
static WINDOW_TURNS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();

/// A read of the counts that takes longer than this, and this per map and operation counted,
/// was interrupted: it is taken again, up to `READ_ATTEMPTS` times (see
/// `Discovery::read_counts`). A key takes two system calls, a few microseconds.
const CLEAN_READ: std::time::Duration = std::time::Duration::from_millis(2);
const CLEAN_READ_PER_KEY: std::time::Duration = std::time::Duration::from_micros(20);
const READ_ATTEMPTS: u32 = 5;

/// How often an open window's hits are read.
const HIT_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// One window's operations per second, by map header address (maps of 128 entries or more).
#[derive(Clone, Debug, Default)]
pub struct AccessWindow {
    pub rates: HashMap<u64, OpRates>,
    /// When the counts were taken (none before the first window).
    pub span: Option<CountedSpan>,
}

/// The running discovery task: stop it with `stop`, which waits until its probes are off.
pub struct DiscoveryTask {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// The last window: the collector takes the newest whenever it gets to it.
    pub windows: watch::Receiver<Arc<AccessWindow>>,
}

impl DiscoveryTask {
    /// `own`: where the CPU the windows take in mapscope (attaching, reading, detaching) is
    /// counted.
    pub fn start(
        pid: u32,
        probes: WindowedProbes,
        maps: DiscoveryMaps,
        cycle: DutyCycle,
        own: OwnCpu,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let (sender, mut windows) = watch::channel(Arc::new(AccessWindow::default()));
        // The empty start value is no window.
        windows.mark_unchanged();
        let discovery = Discovery {
            pid,
            own,
            probes,
            counts: maps.ops,
            hits: maps.hits,
        };
        let task = tokio::spawn(discovery.run(cycle, sender, stopped));
        Self {
            stop,
            task,
            windows,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(error) = self.task.await {
            tracing::warn!("map discovery ended with an error: {error}");
        }
    }
}

/// The counts and probe hits at one instant, as near as it can be told.
struct CountsAt {
    counts: HashMap<MapOpKey, u64>,
    hits: Vec<u64>,
    /// The middle of the read.
    at: Instant,
    at_wall: std::time::SystemTime,
}

struct Discovery {
    pid: u32,
    own: OwnCpu,
    probes: WindowedProbes,
    counts: PerCpuHashMap<MapData, MapOpKey, u64>,
    /// Hits by probe index, since the object was loaded.
    hits: PerCpuArray<MapData, u64>,
}

impl Discovery {
    async fn run(
        mut self,
        cycle: DutyCycle,
        windows: watch::Sender<Arc<AccessWindow>>,
        mut stopped: watch::Receiver<bool>,
    ) {
        // The first window runs at attach. Each next one waits out the rest of the period after
        // the last one's probes are all removed (which takes the kernel a second or more, with
        // the probes still firing meanwhile): windows never run back to back, whatever the
        // period.
        let mut gap = std::time::Duration::ZERO;
        loop {
            tokio::select! {
                // A stop and a due window at once: the stop wins (a window costs seconds).
                biased;
                _ = stopped.changed() => break,
                () = tokio::time::sleep(gap) => {}
            }
            gap = cycle.period.saturating_sub(cycle.window);
            // One window at a time in this process: the kernel removes uprobes one at a time
            // for the whole machine, so the daemon's targets' windows would otherwise queue
            // behind each other's removals with their own probes still firing.
            let turn = tokio::select! {
                biased;
                _ = stopped.changed() => break,
                turn = WINDOW_TURNS.get_or_init(|| tokio::sync::Semaphore::new(1)).acquire() => turn,
            };
            let open = self.window(cycle, &mut stopped, &windows).await;
            drop(turn);
            if !open {
                break;
            }
            if *stopped.borrow() {
                break;
            }
        }
        // Dropping the probes removes whatever is still attached: a blocking wait too.
        tokio::task::block_in_place(move || drop(self));
    }

    /// Attach for `cycle.window` (or until stopped, or until the hit budget is spent), hand the
    /// rates by map to the collector, then remove the probes. False once the collector is gone.
    async fn window(
        &mut self,
        cycle: DutyCycle,
        stopped: &mut watch::Receiver<bool>,
        windows: &watch::Sender<Arc<AccessWindow>>,
    ) -> bool {
        let pid = self.pid;
        let attaching = Instant::now();
        let own = self.own.clone();
        if let Err(error) = tokio::task::block_in_place(|| own.measure(|| self.probes.attach())) {
            // The target exiting fails the attach; that is no news. (An exited child not yet
            // reaped still has /proc/PID, but no exe.)
            if std::fs::read_link(format!("/proc/{pid}/exe")).is_ok() {
                tracing::warn!("PID {pid}: map discovery: attaching failed: {error}");
            }
            return true;
        }
        // Counted from here: what the first probes saw while the others were being attached
        // is subtracted. (Reading the table is a system call per key: off the workers too.)
        let before = tokio::task::block_in_place(|| own.measure(|| self.read_counts()));
        let started = before.at;
        let started_unix_ms = unix_ms(before.at_wall);
        let attach_time = started - attaching;
        let baseline_hits: u64 = before.hits.iter().sum();
        let close = tokio::time::sleep(cycle.window);
        tokio::pin!(close);
        let mut poll = tokio::time::interval(HIT_POLL);
        let mut budget_spent = false;
        loop {
            tokio::select! {
                () = &mut close => break,
                _ = stopped.changed() => break,
                _ = poll.tick() => {
                    let hits: u64 = tokio::task::block_in_place(|| own.measure(|| probe_hits(&self.hits, self.probes.probe_count())))
                        .iter()
                        .sum();
                    if hits.saturating_sub(baseline_hits) >= MAX_WINDOW_HITS {
                        budget_spent = true;
                        break;
                    }
                }
            }
        }
        // Read the counts at the end of the window, before detaching: removing uprobes takes
        // the kernel a while, and counts after `seconds` would inflate the rates.
        let after = tokio::task::block_in_place(|| own.measure(|| self.read_counts()));
        let seconds = (after.at - started).as_secs_f64();
        // The window's hits by probe: the busiest probes come off first.
        let hits: Vec<u64> = after
            .hits
            .iter()
            .zip(before.hits.iter().chain(std::iter::repeat(&0)))
            .map(|(after, before)| after.saturating_sub(*before))
            .collect();
        let mut window = rates(&after.counts, &before.counts, seconds);
        window.span = Some(CountedSpan {
            started_unix_ms,
            seconds,
        });
        let maps_counted = window.rates.len();
        // Delivered now, not after the probes are removed (a second or more): replaces a window
        // the collector has not taken yet, and never waits on it (it may be stopping, and
        // waiting for this task).
        let delivered = windows.send(Arc::new(window)).is_ok();
        let detaching = Instant::now();
        tokio::task::block_in_place(|| {
            own.measure(|| {
                self.probes.detach_busiest_first(&hits);
                // Every busy map has slots: empty the table for the next window, or maps made
                // and dropped since would fill it.
                let keys: Vec<MapOpKey> = self.counts.keys().filter_map(Result::ok).collect();
                for key in keys {
                    let _ = self.counts.remove(&key);
                }
            });
        });
        tracing::debug!(
            "PID {pid}: {} map operation probes attached in {attach_time:.1?}, open {seconds:.3} s \
             ({}), {} hits, {} maps counted, detached and cleared in {:.1?}",
            self.probes.probe_count(),
            if budget_spent {
                "closed early: hit budget spent"
            } else {
                "its full length"
            },
            hits.iter().sum::<u64>(),
            maps_counted,
            detaching.elapsed()
        );
        delivered
    }

    /// Read the counts, timed: a read the scheduler interrupted (on a busy node, for tens of
    /// milliseconds) is taken again, since the operations counted during it could be on either
    /// side of the window's edge and would bias a short window's rates.
    fn read_counts(&self) -> CountsAt {
        let mut attempts = 0;
        loop {
            let wall = std::time::SystemTime::now();
            let begun = Instant::now();
            let counts = totals(&self.counts);
            let hits = probe_hits(&self.hits, self.probes.probe_count());
            let took = begun.elapsed();
            attempts += 1;
            let clean = CLEAN_READ + CLEAN_READ_PER_KEY * counts.len() as u32;
            if took <= clean || attempts == READ_ATTEMPTS {
                return CountsAt {
                    counts,
                    hits,
                    at: begun + took / 2,
                    at_wall: wall + took / 2,
                };
            }
        }
    }
}

/// Milliseconds since the Unix epoch (0 for a time before it), as the reports give times.
pub fn unix_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Hits of each probe, by index, summed over the CPUs.
fn probe_hits(hits: &PerCpuArray<MapData, u64>, probes: usize) -> Vec<u64> {
    (0..MAX_ACCESS_PROBES.min(probes as u32))
        .map(|index| {
            hits.get(&index, 0)
                .map_or(0, |per_cpu| per_cpu.iter().sum())
        })
        .collect()
}

fn totals(counts: &PerCpuHashMap<MapData, MapOpKey, u64>) -> HashMap<MapOpKey, u64> {
    counts
        .iter()
        .filter_map(Result::ok)
        .map(|(key, per_cpu)| (key, per_cpu.iter().sum::<u64>()))
        .collect()
}

/// Per map, what was counted between `baseline` and `counted`, per second.
fn rates(
    counted: &HashMap<MapOpKey, u64>,
    baseline: &HashMap<MapOpKey, u64>,
    seconds: f64,
) -> AccessWindow {
    let mut window = AccessWindow::default();
    for (key, count) in counted {
        let before = baseline.get(key).copied().unwrap_or(0);
        let rate = count.saturating_sub(before) as f64 / seconds.max(f64::MIN_POSITIVE);
        let map = window.rates.entry(key.map).or_default();
        match MapOp::from_index(key.op) {
            Some(MapOp::Lookup) => map.lookups += rate,
            Some(MapOp::Assign) => map.assigns += rate,
            Some(MapOp::Delete) => map.deletes += rate,
            Some(MapOp::Iterate) => map.iterations += rate,
            None => {}
        }
    }
    window
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duty_cycles_parse_and_refuse_a_window_as_long_as_the_period() {
        let cycle = parse_duty_cycle("200ms/60s").unwrap().unwrap();
        assert_eq!(cycle.window, std::time::Duration::from_millis(200));
        assert_eq!(cycle.period, std::time::Duration::from_secs(60));
        assert_eq!(parse_duty_cycle("off"), Ok(None));
        assert!(parse_duty_cycle("1s/1s").unwrap_err().contains("shorter"));
        assert!(
            parse_duty_cycle("200ms")
                .unwrap_err()
                .contains("WINDOW/PERIOD")
        );
    }

    #[test]
    fn rates_subtract_the_baseline_and_split_by_operation() {
        let key = |map, op: MapOp| MapOpKey {
            map,
            op: op as u32,
            _pad: 0,
        };
        let baseline = HashMap::from([(key(1, MapOp::Lookup), 100)]);
        let counted = HashMap::from([
            (key(1, MapOp::Lookup), 300),
            (key(1, MapOp::Assign), 50),
            (key(2, MapOp::Iterate), 4),
            (key(2, MapOp::Delete), 2),
        ]);
        let window = rates(&counted, &baseline, 2.0);
        assert_eq!(
            window.rates[&1],
            OpRates {
                lookups: 100.0,
                assigns: 25.0,
                ..OpRates::default()
            }
        );
        assert_eq!(window.rates[&2].iterations, 2.0);
        assert_eq!(window.rates[&2].deletes, 1.0);
    }
}
