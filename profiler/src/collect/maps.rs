//! Go maps: the kernel's event counts by site → Prometheus counters, and periodic snapshots
//! of the biggest tracked maps, read from the target's memory → distributions and gauges, and
//! the latest snapshot of each map for the heatmap endpoint and `mapscope heatmap`.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{HashMap as KernelHashMap, MapData, PerCpuHashMap};
use profiler_common::counters::HIT_MAP_EVENT;
use profiler_common::maps::{
    FOUND_BY_ACCESS, FOUND_BY_CREATION, FOUND_BY_VARIABLE, LAYOUT_BUCKETS, LAYOUT_SWISS,
    MIN_TRACKED_ENTRIES, MapEvent, MapSiteKey, TrackedMap,
};

use super::{
    discovery::{AccessWindow, DiscoveryTask, DutyCycle, unix_ms},
    stacks::Stacks,
};
use crate::{
    export::{map_metrics::SiteTotals, metrics::TargetMetrics},
    gobin::{
        abi::{MapAbi, TYPE_ABI},
        variables::MapVariable,
    },
    model::maps::{CountedSpan, MapShape, MapTypeInfo, OpRates, SiteKind},
    probes::loaded::{DiscoveryMaps, MapMaps, WindowedProbes},
    process::{
        gomap::{self, Budgeted, SnapshotError},
        gotype,
    },
};

/// What the user can tune about map tracking.
#[derive(Clone, Debug)]
pub struct MapOptions {
    /// Maps snapshotted per round (the biggest and busiest tracked ones).
    pub snapshot_maps: usize,
    pub snapshot_interval: Duration,
    /// A map needing more bytes than this is not read (dropped as too_large).
    pub max_bytes_per_snapshot: u64,
    /// Reads are paced to stay under this rate.
    pub max_bytes_per_second: u64,
    /// Sites with series of their own; the rest are `other`.
    pub top_sites: usize,
    /// Also probe `makemap`, to track maps made with a size hint of 1024 or more from their
    /// creation (costly: see `probes::maps::plan`).
    pub creations: bool,
    /// Probe every map operation for `window` out of every `period`: finds the maps in use
    /// whatever their age, and measures their operation rates (costly while attached).
    pub discovery: Option<DutyCycle>,
    /// Only maps whose site contains this are snapshotted (`mapscope heatmap --site`).
    pub site_filter: Option<String>,
}

/// The latest kept snapshot of one map.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MapReport {
    /// The map header's address in the target; 0 when withheld (`withhold`).
    #[serde(skip_serializing_if = "is_zero")]
    pub address: u64,
    pub site: String,
    /// What the site is: where the map was made, grown, or used.
    pub site_kind: SiteKind,
    #[serde(skip_serializing_if = "is_zero")]
    pub map_type: u64,
    /// Size hint it was created with (0 if first seen growing).
    pub hint: u64,
    /// Events of this map since it was first seen (may miss a few under contention; the
    /// Prometheus counters are exact).
    pub growths: u64,
    pub overflows: u64,
    /// Its type's name and key and element sizes, when the descriptor read.
    #[serde(flatten)]
    pub type_info: Option<MapTypeInfo>,
    #[serde(flatten)]
    pub shape: MapShape,
    pub read_bytes: u64,
    pub read_micros: u64,
    pub taken_unix_ms: u64,
    /// Operations per second in the last discovery window, when one has run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operations_per_second: Option<OpRates>,
    /// When that window counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operations_counted: Option<CountedSpan>,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl MapReport {
    /// The report without the target's addresses (its map header and type descriptor): what
    /// the endpoint shows unless asked, since the target's heap addresses would undo its
    /// address-space randomization for whoever reads them.
    pub fn withhold(mut self) -> Self {
        self.address = 0;
        self.map_type = 0;
        self
    }
}

/// The latest snapshots, shared with the HTTP endpoint.
pub type MapView = Arc<Mutex<Vec<MapReport>>>;

/// Why a watch may show no map: how many maps the kernel knew, how many matched the site asked
/// for, and the snapshots dropped by reason.
#[derive(Clone, Debug, Default)]
pub struct MapStats {
    pub tracked: usize,
    pub matching: usize,
    pub dropped: BTreeMap<&'static str, u64>,
    /// Sites of the tracked maps, when a site filter is set (to say which exist).
    pub sites_seen: BTreeSet<String>,
}

/// The stack id a map found through `variables[index]` is tracked with: below -1 (the kernel's
/// "no stack"), so the kernel counts its events apart from every real stack.
fn variable_stack_id(index: usize) -> i32 {
    (-2_i32).saturating_sub(i32::try_from(index).unwrap_or(i32::MAX))
}

/// The variable index a stack id stands for, if it is one.
fn variable_index(stack_id: i32) -> Option<usize> {
    usize::try_from(-2_i64 - i64::from(stack_id)).ok()
}

/// Bytes a map type's descriptor, key and element sizes and name may take to read.
const TYPE_READ_BUDGET: u64 = 4096;
/// How often the kernel's event counts are read.
const EVENT_INTERVAL: Duration = Duration::from_secs(1);
/// A map that fails this many snapshots in a row for a reason other than a write in progress
/// is forgotten (freed, most likely).
const FORGET_AFTER: u32 = 2;
/// A map found changing while read this many rounds in a row has its last snapshot withdrawn,
/// and is forgotten after `GIVE_UP_AFTER`.
const STALE_AFTER: u32 = 3;
const GIVE_UP_AFTER: u32 = 10;
/// Longest pause between two map reads, whatever the rate: a round never stalls for long.
const MAX_PACE: Duration = Duration::from_secs(1);

pub struct MapCollector {
    tracked: KernelHashMap<MapData, u64, TrackedMap>,
    site_events: PerCpuHashMap<MapData, MapSiteKey, u64>,
    stack_map: super::stacks::StackTable,
    stacks: Stacks,
    abi: MapAbi,
    pid: u32,
    options: MapOptions,
    metrics: Arc<TargetMetrics>,
    exported: HashMap<MapSiteKey, u64>,
    /// Sites with their own series; sticky.
    named: BTreeSet<String>,
    latest: HashMap<u64, MapReport>,
    failures: HashMap<u64, u32>,
    sites_with_gauges: BTreeSet<String>,
    /// The discovery window's probes and counts, when discovery is on.
    pub discovery: Option<(WindowedProbes, DiscoveryMaps)>,
    /// Operations per second by map, from the last window.
    op_rates: HashMap<u64, OpRates>,
    /// When the last window counted.
    op_span: Option<CountedSpan>,
    sites_with_rates: BTreeSet<String>,
    /// Snapshots dropped, by reason, and maps known at the last round: why nothing may show.
    pub stats: MapStats,
    /// Package-level variables holding maps (run-time addresses): read each round, and the maps
    /// they hold tracked, named by the variable (see `variable_site`).
    pub variables: Vec<MapVariable>,
    /// Maps held in variables that were given up on (never readable whole): not put back.
    given_up: std::collections::HashSet<u64>,
    /// Every map the kernel's table held at the last discovery window.
    known: std::collections::HashSet<u64>,
    warned_denied: bool,
    /// The target's type descriptors (run-time addresses), where type names are found.
    type_descriptors: Option<std::ops::Range<u64>>,
    /// Map types read so far, by descriptor address: a descriptor never changes.
    types: HashMap<u64, MapTypeInfo>,
    pub view: MapView,
}

impl MapCollector {
    /// `type_descriptors`: where the target's type descriptors are (`moduledata.types` up to
    /// `etypes`, load bias added), for map type names.
    pub fn new(
        maps: MapMaps,
        stacks: Stacks,
        abi: MapAbi,
        pid: u32,
        options: MapOptions,
        metrics: Arc<TargetMetrics>,
        type_descriptors: Option<std::ops::Range<u64>>,
    ) -> Self {
        metrics.maps().create_drop_series(&SnapshotError::REASONS);
        Self {
            tracked: maps.tracked,
            site_events: maps.site_events,
            stack_map: maps.stacks,
            stacks,
            abi,
            pid,
            options,
            metrics,
            exported: HashMap::new(),
            named: BTreeSet::new(),
            latest: HashMap::new(),
            failures: HashMap::new(),
            sites_with_gauges: BTreeSet::new(),
            discovery: None,
            op_rates: HashMap::new(),
            op_span: None,
            stats: MapStats::default(),
            variables: Vec::new(),
            given_up: std::collections::HashSet::new(),
            known: std::collections::HashSet::new(),
            sites_with_rates: BTreeSet::new(),
            warned_denied: false,
            type_descriptors,
            types: HashMap::new(),
            view: MapView::default(),
        }
    }

    pub async fn run_until(&mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let own = self.metrics.own_cpu().clone();
        let mut events = tokio::time::interval(EVENT_INTERVAL);
        let mut snapshots = tokio::time::interval(self.options.snapshot_interval);
        snapshots.tick().await;
        // Discovery runs beside this loop (see `discovery`), never inside it.
        let mut discovery = match (self.options.discovery, self.discovery.take()) {
            (Some(cycle), Some((probes, maps))) => Some(DiscoveryTask::start(
                self.pid,
                probes,
                maps,
                cycle,
                self.metrics.own_cpu().clone(),
            )),
            _ => None,
        };
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = events.tick() => own.measure(|| self.read_events()),
                _ = snapshots.tick() => self.snapshot_round().await,
                Some(window) = async {
                    let windows = &mut discovery.as_mut()?.windows;
                    windows.changed().await.ok()?;
                    Some(windows.borrow_and_update().clone())
                }, if discovery.is_some() => {
                    let found_new = self.take_window(&window);
                    // Maps the window found are read at once, not a snapshot interval later.
                    if found_new {
                        self.snapshot_round().await;
                        snapshots.reset();
                    }
                }
            }
        }
        if let Some(discovery) = discovery {
            discovery.stop().await;
        }
        self.read_events();
    }

    /// A discovery window's rates: into the maps' reports and, per site, the metrics. Whether
    /// the kernel now tracks a map this collector has never read.
    fn take_window(&mut self, window: &AccessWindow) -> bool {
        self.op_rates = window.rates.clone();
        self.op_span = window.span;
        let tracked: Vec<(u64, TrackedMap)> = self.tracked.iter().filter_map(Result::ok).collect();
        let known: std::collections::HashSet<u64> =
            tracked.iter().map(|(address, _)| *address).collect();
        let found_new = known.iter().any(|address| !self.known.contains(address));
        self.known = known;
        let mut by_site: BTreeMap<String, OpRates> = BTreeMap::new();
        for (address, map) in tracked {
            let rates = self.op_rates.get(&address).copied().unwrap_or_default();
            if let Some(report) = self.latest.get_mut(&address) {
                report.operations_per_second = Some(rates);
                report.operations_counted = window.span;
            }
            // Sites whose maps saw no operation get no series (and take no named slot).
            if rates == OpRates::default() {
                continue;
            }
            let site = self.site(map.stack_id);
            let label = self.label(site);
            by_site.entry(label).or_default().add(&rates);
        }
        let metrics = self.metrics.maps();
        for site in &self.sites_with_rates {
            if !by_site.contains_key(site) {
                metrics.clear_operation_rates(site);
            }
        }
        for (site, rates) in &by_site {
            metrics.operation_rates(site, rates);
        }
        self.sites_with_rates = by_site.into_keys().collect();
        self.publish();
        found_new
    }

    /// The site label of a kernel stack: `function (file:line)`; for a map put in the table
    /// from a variable, the variable's name (its "stack" is `variable_stack_id`).
    fn site(&mut self, stack_id: i32) -> String {
        if let Some(variable) = variable_index(stack_id).and_then(|index| self.variables.get(index))
        {
            return variable.name.clone();
        }
        let symbolized = self.stacks.symbolize(&self.stack_map, stack_id);
        let site = &symbolized.site;
        if site.location.is_empty() {
            site.function.clone()
        } else {
            format!("{} ({})", site.function, site.location)
        }
    }

    /// The label a site is exported under: itself while it is among the first `top_sites`.
    fn label(&mut self, site: String) -> String {
        if self.named.contains(&site) {
            return site;
        }
        if self.named.len() < self.options.top_sites {
            self.named.insert(site.clone());
            return site;
        }
        "other".to_owned()
    }

    /// Export the growth of every (site, event) count since the last read.
    pub fn read_events(&mut self) {
        let counts: Vec<(MapSiteKey, u64)> = self
            .site_events
            .iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| (key, per_cpu.iter().sum::<u64>()))
            .collect();
        let bucket_maps = matches!(self.abi, MapAbi::Buckets(_));
        // Events since the last read saw this share of the target's work (the overhead
        // governor's `Coverage`): each stands for 1/coverage as many.
        let coverage = self.metrics.coverage().fraction(HIT_MAP_EVENT);
        let mut by_site: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for (key, count) in counts {
            let before = self.exported.insert(key, count).unwrap_or(0);
            let site = self.site(key.stack_id);
            let label = self.label(site);
            let totals = by_site.entry(label).or_default();
            let new = count.saturating_sub(before) as f64 / coverage;
            if key.event == MapEvent::Growth as u32 {
                totals.0 += new;
            } else if key.event == MapEvent::Overflow as u32 {
                totals.1 += new;
            }
        }
        let metrics = self.metrics.maps();
        for (site, (growths, overflows)) in by_site {
            metrics.events(&site, growths, overflows, bucket_maps);
        }
    }

    /// The maps the package-level variables hold now, in the kernel's table (the variable may
    /// have been given another map since the last round): those of `MIN_TRACKED_ENTRIES` or
    /// more that the table does not know yet. Only mapscope's own table is written.
    fn track_variables(&mut self) {
        let layout = match self.abi {
            MapAbi::Buckets(_) => LAYOUT_BUCKETS,
            MapAbi::Swiss(_) => LAYOUT_SWISS,
        };
        for (index, variable) in self.variables.iter().enumerate() {
            let Ok(header) = crate::process::memory::read_i64(self.pid, variable.address) else {
                continue;
            };
            let header = header as u64;
            let entries = crate::process::memory::read_i64(self.pid, header).unwrap_or(0);
            if header == 0
                || entries < MIN_TRACKED_ENTRIES as i64
                || self.given_up.contains(&header)
            {
                continue;
            }
            if self.tracked.get(&header, 0).is_ok() {
                continue;
            }
            let map = TrackedMap {
                map_type: variable.type_descriptor,
                hint: 0,
                events: [0; 2],
                last_event_ns: 0,
                // The kernel counts this map's growths against this id: its site is the
                // variable's, in the counters as in the gauges.
                stack_id: variable_stack_id(index),
                layout,
                found_by: FOUND_BY_VARIABLE,
                _pad: [0; 2],
            };
            let _ = self.tracked.insert(header, map, 0);
        }
    }

    /// Snapshot the biggest and busiest tracked maps, then refresh the gauges and the view.
    pub async fn snapshot_round(&mut self) {
        if !self.variables.is_empty() {
            let own = self.metrics.own_cpu().clone();
            tokio::task::block_in_place(|| own.measure(|| self.track_variables()));
        }
        let mut tracked: Vec<(u64, TrackedMap)> =
            self.tracked.iter().filter_map(Result::ok).collect();
        let alive: BTreeSet<u64> = tracked.iter().map(|(address, _)| *address).collect();
        self.latest.retain(|address, _| alive.contains(address));
        self.failures.retain(|address, _| alive.contains(address));
        self.stats.tracked = tracked.len();
        // The site asked for is chosen before the few maps read are: ranking first would read
        // other, bigger maps and miss it.
        if let Some(pattern) = self.options.site_filter.clone() {
            tracked.retain(|(_, map)| {
                let site = self.site(map.stack_id);
                let keep = site.contains(&pattern);
                self.stats.sites_seen.insert(site);
                keep
            });
        }
        self.stats.matching = tracked.len();
        // Biggest first, by entry count: the last snapshot's, else the header's count word
        // (8 bytes, the first field in both layouts), else the creation hint; then busiest.
        let mut ranked: Vec<(u64, u64, TrackedMap)> = tracked
            .into_iter()
            .map(|(address, map)| {
                let size = match self.latest.get(&address) {
                    Some(report) => report.shape.entries,
                    None => crate::process::memory::read_i64(self.pid, address)
                        .ok()
                        .and_then(|count| u64::try_from(count).ok())
                        .unwrap_or(map.hint),
                };
                (address, size, map)
            })
            .collect();
        ranked.sort_by_key(|(_, size, map)| {
            std::cmp::Reverse((*size, map.events[0] + map.events[1]))
        });
        for (address, _, map) in ranked.into_iter().take(self.options.snapshot_maps) {
            // Reading a big map takes milliseconds of system calls: off the async workers.
            let own = self.metrics.own_cpu().clone();
            let read_bytes =
                tokio::task::block_in_place(|| own.measure(|| self.snapshot(address, &map)));
            let pace = read_bytes as f64 / self.options.max_bytes_per_second.max(1) as f64;
            if pace > 0.001 {
                tokio::time::sleep(Duration::from_secs_f64(pace).min(MAX_PACE)).await;
            }
        }
        // The event counters as of now, before the snapshots are published: whatever shaped a
        // snapshot happened before it was read, so a scrape that sees the snapshot sees at
        // least the growths and overflow buckets that led to it.
        self.read_events();
        self.export_totals();
    }

    /// Read one map; returns the bytes read.
    fn snapshot(&mut self, address: u64, map: &TrackedMap) -> u64 {
        let site = self.site(map.stack_id);
        let label = self.label(site.clone());
        let mut memory = Budgeted {
            pid: self.pid,
            budget: self.options.max_bytes_per_snapshot,
            bytes_read: 0,
        };
        let started = Instant::now();
        let result = gomap::read_map(&mut memory, &self.abi, address, map.map_type);
        let elapsed = started.elapsed();
        let metrics = self.metrics.maps();
        match result {
            Ok(shape) => {
                metrics.snapshot(&label, &shape, memory.bytes_read);
                self.failures.remove(&address);
                let report = MapReport {
                    address,
                    site,
                    site_kind: match map.found_by {
                        FOUND_BY_CREATION => SiteKind::Created,
                        FOUND_BY_ACCESS => SiteKind::Accessed,
                        FOUND_BY_VARIABLE => SiteKind::Variable,
                        _ => SiteKind::Grew,
                    },
                    map_type: map.map_type,
                    type_info: self.type_info(map.map_type),
                    hint: map.hint,
                    growths: map.events[0],
                    overflows: map.events[1],
                    shape,
                    read_bytes: memory.bytes_read,
                    read_micros: elapsed.as_micros() as u64,
                    taken_unix_ms: unix_ms(std::time::SystemTime::now()),
                    operations_per_second: self.op_rates.get(&address).copied(),
                    operations_counted: self
                        .op_span
                        .filter(|_| self.op_rates.contains_key(&address)),
                };
                self.latest.insert(address, report);
            }
            Err(error) => {
                metrics.dropped(error.reason(), memory.bytes_read);
                *self.stats.dropped.entry(error.reason()).or_default() += 1;
                tracing::debug!("map at {address:#x} ({site}): snapshot dropped: {error}");
                let failures = self.failures.entry(address).or_default();
                *failures += 1;
                match error {
                    // A write in progress: keep showing the last good snapshot for a while,
                    // not forever (a map written all the time is not readable this way).
                    SnapshotError::Changed => {
                        if *failures >= STALE_AFTER {
                            self.latest.remove(&address);
                        }
                        if *failures >= GIVE_UP_AFTER {
                            // Never readable whole: not worth a read every round.
                            self.failures.remove(&address);
                            let _ = self.tracked.remove(&address);
                            if map.found_by == FOUND_BY_VARIABLE {
                                self.given_up.insert(address);
                            }
                        }
                    }
                    SnapshotError::TooLarge { .. } => {
                        self.latest.remove(&address);
                    }
                    // Not the map's fault: say why once, keep it tracked.
                    SnapshotError::Denied => {
                        self.latest.remove(&address);
                        if !self.warned_denied {
                            self.warned_denied = true;
                            tracing::warn!("PID {}: map snapshots are off: {error}", self.pid);
                        }
                    }
                    // Never show a snapshot that may describe freed memory.
                    SnapshotError::Unreadable | SnapshotError::Inconsistent(_) => {
                        self.latest.remove(&address);
                        if *failures >= FORGET_AFTER {
                            self.failures.remove(&address);
                            // Only mapscope's own kernel table is written, never the target.
                            let _ = self.tracked.remove(&address);
                        }
                    }
                }
            }
        }
        memory.bytes_read
    }

    /// The type of the map whose descriptor is at `map_type`, read once.
    fn type_info(&mut self, map_type: u64) -> Option<MapTypeInfo> {
        if let Some(known) = self.types.get(&map_type) {
            return Some(known.clone());
        }
        let mut memory = Budgeted {
            pid: self.pid,
            budget: TYPE_READ_BUDGET,
            bytes_read: 0,
        };
        match gotype::read_map_type(
            &mut memory,
            &TYPE_ABI,
            self.type_descriptors.as_ref(),
            map_type,
        ) {
            Ok(info) => {
                self.types.insert(map_type, info.clone());
                Some(info)
            }
            // The map read whole through this descriptor a moment ago: a failure here is the
            // target exiting or a descriptor made at run time and gone; tried again next time.
            Err(error) => {
                tracing::debug!("map type at {map_type:#x}: {error}");
                None
            }
        }
    }

    fn export_totals(&mut self) {
        let mut by_site: BTreeMap<String, SiteTotals> = BTreeMap::new();
        let reports: Vec<MapReport> = self.latest.values().cloned().collect();
        for report in &reports {
            let label = self.label(report.site.clone());
            let totals = by_site.entry(label).or_default();
            totals.maps += 1;
            totals.entries += report.shape.entries;
            totals.capacity_slots += report.shape.capacity_slots;
            totals.bytes += report.shape.bytes;
        }
        let metrics = self.metrics.maps();
        for site in &self.sites_with_gauges {
            if !by_site.contains_key(site) {
                metrics.clear_totals(site);
            }
        }
        for (site, totals) in &by_site {
            metrics.totals(site, *totals);
        }
        self.sites_with_gauges = by_site.into_keys().collect();
        self.publish();
    }

    /// The latest reports into the view the endpoint serves, biggest first.
    fn publish(&self) {
        let mut view: Vec<MapReport> = self.latest.values().cloned().collect();
        view.sort_by_key(|report| std::cmp::Reverse(report.shape.bytes));
        if let Ok(mut shared) = self.view.lock() {
            *shared = view;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_stack_ids_round_trip_and_never_meet_real_stacks() {
        for index in [0, 1, 297, 100_000] {
            let id = variable_stack_id(index);
            assert!(id < -1);
            assert_eq!(variable_index(id), Some(index));
        }
        assert_eq!(variable_index(-1), None);
        assert_eq!(variable_index(0), None);
        assert_eq!(variable_index(12), None);
    }
}
