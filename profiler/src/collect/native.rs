//! Native allocations: every second, what the kernel counted at the C allocators' entry points
//! since the last read, scaled by the share of the target's work the probes saw (the overhead
//! governor's `Coverage` of `HIT_NATIVE`), added to each allocator's totals and exported; and
//! the byte-weighted samples of them, by stack, scaled as pprof scales Go's, into sites and a
//! pprof profile.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use profiler_common::{
    counters::HIT_NATIVE,
    native::{LastCall, LiveSample, NATIVE_SAMPLE_BYTES, NativeSampleKey},
};

use super::{
    alloc::{AllocProfile, SampleTables, publish_into, publish_inuse},
    stacks::{StackTable, Symbolized},
};
use crate::{
    export::{metrics::TargetMetrics, native_metrics::NativeEstimate},
    model::{
        alloc::scale,
        sites::{Site, SiteRanking, SiteTotals},
    },
    native::{
        probes::{NativeCounts, NativePlan},
        symbols::{NativeSymbols, is_allocator_frame},
    },
    probes::{
        loaded::{NativeMaps, ProbeChange, ProbeChanges, WindowedProbes},
        stw::ProbePoint,
    },
};

/// How often the counts are read.
const READ_EVERY: Duration = Duration::from_secs(1);

/// One allocator's totals: what the kernel counted, and what that stands for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NativeTally {
    /// The kernel's counts taken so far.
    pub counted: NativeCounts,
    /// Their estimate of the target's whole work: each count divided by the share of the
    /// work its probes saw.
    pub estimate: NativeEstimate,
}

impl NativeTally {
    /// Take the kernel's counts `now`, those since the last take having seen `coverage` of the
    /// target's work.
    pub fn take(&mut self, now: &NativeCounts, coverage: f64) {
        let coverage = coverage.clamp(1e-6, 1.0);
        let grown = |now: u64, seen: u64| now.saturating_sub(seen) as f64 / coverage;
        let estimate = &mut self.estimate;
        estimate.objects += grown(now.objects, self.counted.objects);
        estimate.bytes += grown(now.bytes, self.counted.bytes);
        estimate.frees += grown(now.frees, self.counted.frees);
        for (index, &(bound, count)) in now.sizes.iter().enumerate() {
            let seen = self.counted.sizes.get(index).map_or(0, |&(_, seen)| seen);
            if count > seen {
                estimate.add_sizes(bound, grown(count, seen));
            }
        }
        if estimate.sizes.is_empty() {
            estimate.add_sizes(1, 0.0);
        }
        self.counted = now.clone();
        // Over the whole watch: how much of the work the counts stand for was counted.
        estimate.coverage = if estimate.objects + estimate.frees > 0.0 {
            (now.objects + now.frees) as f64 / (estimate.objects + estimate.frees)
        } else {
            coverage
        };
    }
}

/// What is live at one site (`--native-inuse`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LiveSite {
    pub objects: f64,
    pub bytes: f64,
    /// Bytes × their age in seconds: over `bytes`, the age of the average live byte.
    pub byte_seconds: f64,
}

impl LiveSite {
    fn add(&mut self, other: &LiveSite) {
        self.objects += other.objects;
        self.bytes += other.bytes;
        self.byte_seconds += other.byte_seconds;
    }

    /// The age of the average live byte, in seconds.
    pub fn age_seconds(&self) -> f64 {
        if self.bytes > 0.0 {
            self.byte_seconds / self.bytes
        } else {
            0.0
        }
    }
}

/// What the exit summary says of one allocator.
#[derive(Clone, Debug)]
pub struct NativeSummary {
    /// `AllocatorKind::label`.
    pub allocator: &'static str,
    pub object: std::path::PathBuf,
    pub tally: NativeTally,
    /// The sites allocating the most bytes (estimated from the samples), most first.
    pub top_sites: Vec<(Site, f64)>,
}

/// How the sites are ranked: `--alloc-top-sites` and its half-life, as for Go's.
#[derive(Clone, Copy, Debug)]
pub struct NativeSiteOptions {
    pub top_sites: usize,
    pub half_life: Duration,
}

/// How often the last-call records of ended threads are removed.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How many reads (one a second) look for C++'s `operator new` in a target where it was not
/// mapped at attach.
const WRAPPER_LOOKS: u32 = 30;

/// How often the target's mappings are read for allocator libraries it loaded or unloaded
/// (`dlopen`, `dlclose`) since: a read of `/proc/PID/maps`, a fraction of a millisecond.
const LIBRARIES_EVERY: Duration = Duration::from_secs(2);

/// An allocator library of the target: probed at attach, or mapped since.
struct WatchedLibrary {
    /// As the process names it.
    object: std::path::PathBuf,
    /// Where mapscope attaches to it.
    host_path: std::path::PathBuf,
    /// Its probes (none if it has no allocator, or one too many), put back if it is mapped
    /// again after it was unmapped.
    points: Vec<ProbePoint>,
    /// Whether the last read of the mappings found it, and whether its probes are in the
    /// family now (those probed at attach are before their library is mapped, by `run`).
    mapped: bool,
    probed: bool,
}

/// Where the collector sends the changes the libraries it watches make to the native probes.
pub struct LibraryWatch {
    /// The queue the probes' holder follows.
    pub changes: ProbeChanges,
    /// The probes, when the collector holds them (the overhead governor does not: continuous
    /// mode, `--native-inuse`), and applies its changes itself.
    pub probes: Option<WindowedProbes>,
}

pub struct NativeCollector {
    counts: PerCpuArray<MapData, u64>,
    /// The sampled allocations still live (`--native-inuse`).
    live: HashMap<MapData, u64, LiveSample>,
    /// Each thread's last counted call, and when the records of threads that ended were last
    /// removed.
    last_calls: HashMap<MapData, u32, LastCall>,
    swept: std::time::Instant,
    /// The kernel's two sample tables, as the Go sampler's (`alloc::SampleTables`).
    samples: SampleTables<NativeSampleKey>,
    stacks: StackTable,
    symbols: NativeSymbols,
    plan: NativePlan,
    /// The kernel's table of the dedicated libraries' code, and whether it is complete
    /// (`NativePlan::own_code_complete`).
    own_code: Array<MapData, [u64; 2]>,
    own_code_complete: bool,
    /// The kernel's table of tail jumps between entry points, extended for libraries mapped
    /// later.
    tail_from: Array<MapData, u64>,
    /// The allocator libraries, the changes their mapping and unmapping make to the probes,
    /// and when the mappings were last read.
    libraries: Vec<WatchedLibrary>,
    watch: Option<LibraryWatch>,
    libraries_read: std::time::Instant,
    /// The kernel's table of C++'s `operator new`s while none was found, and how many more
    /// reads look for them (a program `run` starts maps libstdc++ in its first moments).
    wrappers: Option<(Array<MapData, [u64; 3]>, u32)>,
    pid: u32,
    metrics: Arc<TargetMetrics>,
    tallies: Vec<NativeTally>,
    /// Which sites have series of their own, and every site's estimate so far, by allocator.
    ranking: SiteRanking,
    sites_read: std::time::Instant,
    sites: Vec<SiteTotals>,
    /// The sampled allocations by stack, for `/debug/pprof/native` and `profile native`.
    pub profile: AllocProfile,
    started: (std::time::SystemTime, std::time::Instant),
}

impl NativeCollector {
    pub fn new(
        maps: NativeMaps,
        plan: NativePlan,
        pid: u32,
        metrics: Arc<TargetMetrics>,
        sites: NativeSiteOptions,
    ) -> Self {
        let tallies = vec![NativeTally::default(); plan.allocators.len()];
        let wrappers = (!plan.wrappers_found()).then_some((maps.wrappers, WRAPPER_LOOKS));
        let libraries = plan
            .dedicated_libraries()
            .into_iter()
            .map(|object| {
                let host_path = crate::native::in_process_root(pid, &object);
                WatchedLibrary {
                    points: plan.library_points(&host_path),
                    object,
                    host_path,
                    mapped: false,
                    probed: true,
                }
            })
            .collect();
        let collector = Self {
            counts: maps.counts,
            live: maps.live,
            last_calls: maps.last_calls,
            swept: std::time::Instant::now(),
            samples: SampleTables::new(maps.samples, maps.filling),
            stacks: maps.stacks,
            symbols: NativeSymbols::new(pid),
            own_code: maps.own_code,
            own_code_complete: plan.own_code_complete(),
            tail_from: maps.tail_from,
            libraries,
            watch: None,
            // The first read comes a second after attach, as the counts' first.
            libraries_read: std::time::Instant::now()
                .checked_sub(LIBRARIES_EVERY - READ_EVERY)
                .unwrap_or_else(std::time::Instant::now),
            wrappers,
            pid,
            metrics,
            sites: (0..tallies.len()).map(|_| SiteTotals::default()).collect(),
            tallies,
            plan,
            ranking: SiteRanking::new(sites.top_sites, sites.half_life),
            sites_read: std::time::Instant::now(),
            profile: AllocProfile::default(),
            started: (std::time::SystemTime::now(), std::time::Instant::now()),
        };
        // The series from the start: a dashboard shows 0 rather than no data.
        collector.export();
        collector
    }

    /// Read every `READ_EVERY` until `stop` resolves.
    pub async fn run_until(mut self, stop: impl std::future::Future<Output = ()>) -> Self {
        tokio::pin!(stop);
        let mut ticks = tokio::time::interval(READ_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = ticks.tick() => self.read(false),
            }
        }
        self
    }

    /// Follow the target's allocator libraries from now on: probe those it maps later, and
    /// remove the probes of those it unmaps, through `watch`.
    pub fn watch_libraries_through(&mut self, watch: LibraryWatch) {
        self.watch = Some(watch);
    }

    /// Read the target's mappings: an allocator library mapped since the last read gets
    /// probes (counted as an allocator of its own), one unmapped loses them (and is probed
    /// again if mapped again).
    fn watch_libraries(&mut self) {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)) else {
            return;
        };
        let mapped = crate::native::mapped_allocator_libraries(&maps);
        let mut changes = Vec::new();
        for library in &mut self.libraries {
            let now = mapped.contains(&library.object);
            // Unmapped once seen mapped, or mapped again once unmapped.
            let change = (now && !library.probed) || (!now && library.mapped && library.probed);
            if change && !library.points.is_empty() {
                tracing::info!(
                    "PID {}: {} {}: its allocator's probes {}",
                    self.pid,
                    if now { "mapped" } else { "unmapped" },
                    library.object.display(),
                    if now { "put back" } else { "removed" },
                );
                self.plan.library_mapped(&library.object, now);
                changes.push(if now {
                    ProbeChange::Add {
                        object: library.host_path.clone(),
                        points: library.points.clone(),
                    }
                } else {
                    ProbeChange::Remove {
                        object: library.host_path.clone(),
                    }
                });
                library.probed = now;
            }
            library.mapped = now;
        }
        for object in mapped {
            if self.libraries.iter().any(|known| known.object == object) {
                continue;
            }
            let library = self.probe_library(object);
            if !library.points.is_empty() {
                changes.push(ProbeChange::Add {
                    object: library.host_path.clone(),
                    points: library.points.clone(),
                });
            }
            self.libraries.push(library);
        }
        if changes.is_empty() {
            return;
        }
        // The allocators' own code changed: their calls to themselves are told apart by it.
        self.own_code_complete = self.plan.refresh_own_code(self.pid, &mut self.own_code);
        let Some(watch) = self.watch.as_mut() else {
            return;
        };
        for change in changes {
            watch.changes.push(change);
        }
        if let Some(probes) = watch.probes.as_mut() {
            // Removing probes waits on the kernel: off the async workers.
            let own = self.metrics.own_cpu().clone();
            tokio::task::block_in_place(|| own.measure(|| probes.apply_changes()));
        }
    }

    /// Plan the probes of allocator library `object`, mapped since attach, and count it.
    fn probe_library(&mut self, object: std::path::PathBuf) -> WatchedLibrary {
        let host_path = crate::native::in_process_root(self.pid, &object);
        let mut library = WatchedLibrary {
            object,
            host_path,
            points: Vec::new(),
            mapped: true,
            probed: true,
        };
        let found = match crate::native::in_library(self.pid, &library.object) {
            Ok(found) => found,
            Err(error) => {
                tracing::info!("PID {}: {error}; its allocator is not counted", self.pid);
                return library;
            }
        };
        let Some(probes) = self.plan.add_library(self.pid, &found) else {
            return library;
        };
        for (index, from) in &probes.tail_from {
            if let Err(error) = self.tail_from.set(*index, from, 0) {
                tracing::warn!("PID {}: cannot fill NATIVE_TAIL_FROM: {error}", self.pid);
            }
        }
        for _ in probes.allocators.clone() {
            self.tallies.push(NativeTally::default());
            self.sites.push(SiteTotals::default());
        }
        for found in &found {
            tracing::info!(
                "PID {}: {} mapped since attach: {} allocator, {} entry points probed",
                self.pid,
                library.object.display(),
                found.allocator.kind.label(),
                found.allocator.entry_points.len()
            );
        }
        library.points = probes.points;
        // Its series from now: a dashboard shows 0 rather than no data.
        self.export();
        library
    }

    /// Remove the last-call records of the target's threads that ended (the kernel table
    /// holds `MAX_NATIVE_THREADS`; a thread without a record has its allocator's own calls
    /// counted as the program's). A new thread given an ended one's id before the sweep finds
    /// its record, which a call matches only with the same stack pointer and return address.
    fn remove_ended_threads(&mut self) {
        let ended: Vec<u32> = self
            .last_calls
            .keys()
            .filter_map(Result::ok)
            .filter(|tid| !std::path::Path::new(&format!("/proc/{}/task/{tid}", self.pid)).exists())
            .collect();
        if !ended.is_empty() {
            tracing::debug!(
                "PID {}: {} ended threads' last calls removed",
                self.pid,
                ended.len()
            );
            for tid in ended {
                let _ = self.last_calls.remove(&tid);
            }
        }
    }

    /// Take the counts whose share of the target's work is settled; `last`: take them all,
    /// with the share predicted if an on part still counts.
    pub fn read(&mut self, last: bool) {
        let own = self.metrics.own_cpu().clone();
        own.measure(|| self.read_counts(last));
    }

    fn read_counts(&mut self, last: bool) {
        if self.watch.is_some() && self.libraries_read.elapsed() >= LIBRARIES_EVERY {
            self.libraries_read = std::time::Instant::now();
            self.watch_libraries();
        }
        if !self.own_code_complete {
            self.own_code_complete = self.plan.refresh_own_code(self.pid, &mut self.own_code);
        }
        if self.swept.elapsed() >= SWEEP_EVERY {
            self.swept = std::time::Instant::now();
            self.remove_ended_threads();
        }
        if let Some((table, looks)) = self.wrappers.as_mut() {
            *looks = looks.saturating_sub(1);
            if self.plan.refresh_wrappers(self.pid, table) || *looks == 0 {
                self.wrappers = None;
            }
        }
        let coverage = self.metrics.coverage();
        let settled = coverage.settled(HIT_NATIVE);
        if settled.is_none() && !last {
            return;
        }
        let fraction =
            settled.map_or_else(|| coverage.fraction(HIT_NATIVE), |settled| settled.fraction);
        match NativeCounts::read(&self.counts, self.tallies.len()) {
            Ok(counts) => {
                for (tally, now) in self.tallies.iter_mut().zip(&counts) {
                    tally.take(now, fraction);
                }
            }
            Err(error) => {
                tracing::warn!(
                    "PID {}: reading native allocation counts: {error}",
                    self.pid
                );
                return;
            }
        }
        // The samples: the retired table's with the share it was retired with, then (the
        // last read) the filling one's; otherwise the filling table retires now, its share
        // settled, for the next read to take.
        let mut fresh: Vec<(NativeSampleKey, u64, f64)> = Vec::new();
        if let Some(retired_fraction) = self.samples.retired.take() {
            let retired = 1 - self.samples.filling();
            fresh.extend(
                self.samples
                    .drain(retired)
                    .into_iter()
                    .map(|(key, count)| (key, count, retired_fraction)),
            );
        }
        if last {
            let filling = self.samples.filling();
            fresh.extend(
                self.samples
                    .drain(filling)
                    .into_iter()
                    .map(|(key, count)| (key, count, fraction)),
            );
        } else {
            // Not retired (the switch could not be set): its samples are taken at the next
            // read, with that read's share.
            let _ = self.samples.retire_filling(fraction);
        }
        if let Some(settled) = settled {
            coverage.taken(HIT_NATIVE, settled);
        }
        self.take_samples(fresh);
        if self.plan.inuse {
            self.read_live();
        }
        self.export();
    }

    /// What is live now (`--native-inuse`): the sampled blocks not freed yet, scaled as the
    /// samples are, by site (the top sites by live bytes named, the rest `other`) and by stack.
    fn read_live(&mut self) {
        let now = crate::collect::governor::monotonic_ns();
        let rate = NATIVE_SAMPLE_BYTES as i64;
        // By (allocator, stack): objects, bytes, and bytes × age in seconds.
        let mut by_stack: BTreeMap<(u32, i32), (f64, f64, f64)> = BTreeMap::new();
        for (_, live) in self.live.iter().filter_map(Result::ok) {
            let objects = scale(live.size, rate);
            let bytes = objects * live.size as f64;
            let age = now.saturating_sub(live.at_ns) as f64 / 1e9;
            let entry = by_stack.entry((live.allocator, live.stack_id)).or_default();
            entry.0 += objects;
            entry.1 += bytes;
            entry.2 += bytes * age;
        }
        if !by_stack.is_empty() {
            self.symbols.refresh();
        }
        let mut by_site: BTreeMap<(u32, Site), LiveSite> = BTreeMap::new();
        let mut stacks = Vec::with_capacity(by_stack.len());
        for ((allocator, stack_id), (objects, bytes, byte_seconds)) in by_stack {
            let stack = self.symbols.symbolize(&self.stacks, stack_id);
            let site = by_site.entry((allocator, stack.site.clone())).or_default();
            site.objects += objects;
            site.bytes += bytes;
            site.byte_seconds += byte_seconds;
            stacks.push((stack, objects, bytes));
        }
        publish_inuse(&self.profile, stacks);
        // The top sites by live bytes, over every allocator; the rest `other`.
        let mut ranked: Vec<(&(u32, Site), f64)> = by_site
            .iter()
            .map(|(key, live)| (key, live.bytes))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let named: std::collections::BTreeSet<(u32, Site)> = ranked
            .iter()
            .take(self.ranking.top())
            .map(|(key, _)| (*key).clone())
            .collect();
        let mut exported: BTreeMap<(&'static str, Site), LiveSite> = BTreeMap::new();
        for ((allocator, site), live) in by_site {
            let Some(counted) = self.plan.allocators.get(allocator as usize) else {
                continue;
            };
            let site = if named.contains(&(allocator, site.clone())) {
                site
            } else {
                Site {
                    function: "other".into(),
                    location: String::new(),
                }
            };
            exported
                .entry((counted.kind.label(), site))
                .or_default()
                .add(&live);
        }
        self.metrics.native_live(exported);
    }

    /// Scale the samples up (the sampling, then the share of the work they saw), by site and
    /// by stack.
    fn take_samples(&mut self, fresh: Vec<(NativeSampleKey, u64, f64)>) {
        if fresh.is_empty() {
            return;
        }
        self.symbols.refresh();
        let rate = NATIVE_SAMPLE_BYTES as i64;
        let mut gained: Vec<SiteTotals> = (0..self.sites.len())
            .map(|_| SiteTotals::default())
            .collect();
        let mut by_stack: Vec<(i32, Arc<Symbolized>, f64, f64)> = Vec::new();
        for (key, count, fraction) in fresh {
            let Some(gained) = gained.get_mut(key.allocator as usize) else {
                continue;
            };
            let weighted = count as f64 / fraction.clamp(1e-6, 1.0);
            let stack = self.symbols.symbolize(&self.stacks, key.stack_id);
            gained.add(&stack.site, None, key.size, weighted, rate);
            let objects = weighted * scale(key.size, rate);
            by_stack.push((key.stack_id, stack, objects, objects * key.size as f64));
        }
        publish_into(
            &self.profile,
            self.started,
            rate,
            is_allocator_frame,
            by_stack,
        );
        // The ranking follows the bytes of every allocator's sites together.
        let mut gained_bytes: BTreeMap<Site, f64> = BTreeMap::new();
        for totals in &gained {
            for (site, &(_, bytes)) in &totals.by_site {
                *gained_bytes.entry(site.clone()).or_default() += bytes;
            }
        }
        let changes = self
            .ranking
            .update(&gained_bytes, self.sites_read.elapsed());
        self.sites_read = std::time::Instant::now();
        for site in &changes.forgotten {
            for allocator in &self.plan.allocators {
                self.metrics
                    .native_forget_site(allocator.kind.label(), site);
            }
        }
        let other = Site {
            function: "other".into(),
            location: String::new(),
        };
        for ((totals, allocator), exported) in gained
            .into_iter()
            .zip(&self.plan.allocators)
            .zip(&mut self.sites)
        {
            for (site, &(objects, bytes)) in &totals.by_site {
                let label = if self.ranking.is_named(site) {
                    site
                } else {
                    &other
                };
                self.metrics
                    .native_site_allocated(allocator.kind.label(), label, objects, bytes);
            }
            exported.merge(totals);
        }
    }

    fn export(&self) {
        for (tally, allocator) in self.tallies.iter().zip(&self.plan.allocators) {
            let mut estimate = tally.estimate.clone();
            if estimate.sizes.is_empty() {
                estimate.add_sizes(1, 0.0);
                estimate.coverage = self.metrics.coverage().fraction(HIT_NATIVE);
            }
            self.metrics
                .native_allocated(allocator.kind.label(), estimate);
        }
    }

    /// Each allocator's totals and its `top` sites by bytes, for the exit summary.
    pub fn summary(&self, top: usize) -> Vec<NativeSummary> {
        self.tallies
            .iter()
            .zip(&self.plan.allocators)
            .zip(&self.sites)
            .map(|((tally, allocator), sites)| {
                let mut top_sites: Vec<(Site, f64)> = sites
                    .by_site
                    .iter()
                    .map(|(site, &(_, bytes))| (site.clone(), bytes))
                    .collect();
                top_sites.sort_by(|a, b| b.1.total_cmp(&a.1));
                top_sites.truncate(top);
                NativeSummary {
                    allocator: allocator.kind.label(),
                    object: allocator.object.clone(),
                    tally: tally.clone(),
                    top_sites,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(objects: u64, bytes: u64, frees: u64) -> NativeCounts {
        NativeCounts {
            objects,
            bytes,
            frees,
            sizes: vec![(1, 0), (2, 0), (4, 0), (8, 0), (16, objects)],
            ..NativeCounts::default()
        }
    }

    #[test]
    fn each_take_is_scaled_by_the_share_its_counts_saw() {
        let mut tally = NativeTally::default();
        // All of the work seen: 10 allocations of 16 bytes.
        tally.take(&counts(10, 160, 4), 1.0);
        assert_eq!(tally.estimate.objects, 10.0);
        assert_eq!(tally.estimate.coverage, 1.0);
        // Then 20 more, seen a quarter of the time: they stand for 80.
        tally.take(&counts(30, 480, 4), 0.25);
        assert_eq!(tally.estimate.objects, 90.0);
        assert_eq!(tally.estimate.bytes, 160.0 + 320.0 * 4.0);
        assert_eq!(tally.estimate.frees, 4.0);
        // 16-byte allocations are in the le=16 bucket, 8 B doubling: the second.
        assert_eq!(tally.estimate.sizes[1], 90.0);
        // 34 of 94 events counted.
        assert!((tally.estimate.coverage - 34.0 / 94.0).abs() < 1e-12);
    }

    #[test]
    fn counts_that_did_not_move_add_nothing() {
        let mut tally = NativeTally::default();
        tally.take(&counts(5, 50, 5), 0.5);
        let before = tally.estimate.clone();
        tally.take(&counts(5, 50, 5), 0.1);
        assert_eq!(tally.estimate.objects, before.objects);
        assert_eq!(tally.estimate.sizes, before.sizes);
    }
}
