//! Sampled allocations: the kernel's (stack, size) sample counts → estimated allocated bytes and
//! objects, scaled as pprof scales the runtime's heap profile.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use aya::maps::{MapData, PerCpuArray};
use profiler_common::{
    alloc::{
        AllocKey, COUNTED_SAMPLE_BYTES, EXACT_BYTES, EXACT_OBJECTS, EXACT_SIZE_BASE, EXACT_SLOTS,
        slot_bound,
    },
    counters::{HIT_ALLOC, HIT_ALLOC_COUNT},
};

use crate::{
    export::metrics::{SizeHistogram, TargetMetrics},
    export::pprof::{self, Line},
    gobin::GoBinary,
    model::{
        alloc::{AllocSummary, AllocTotals, estimate, scale},
        sites::{Site, SiteRanking, SiteTotals, is_runtime},
    },
    probes::loaded::AllocMaps,
};

use super::stacks::{Stacks, Symbolized};

/// How the collector names allocation sites.
pub struct SiteOptions {
    /// The target's executable, for symbolizing stacks.
    pub binary: Arc<GoBinary>,
    /// Subtracted from addresses in the target to get addresses in the file (PIEs).
    pub load_bias: u64,
    /// Sites with series of their own; the rest are folded into `other`.
    pub top_sites: usize,
    /// How fast the named sites follow a change of load (`SiteRanking`).
    pub half_life: std::time::Duration,
}

/// The latest allocation samples, for `/debug/pprof/allocs` and `mapscope profile alloc`.
pub type AllocProfile = Arc<std::sync::Mutex<Option<AllocSnapshot>>>;

/// The sampled allocations as of the last read, by stack. Updated in place by each read with
/// what was sampled since (the stacks are shared, already symbolized); the pprof profile is
/// built from it only when one is asked for. Bounded by the kernel's stack table.
pub struct AllocSnapshot {
    /// Estimated (objects, bytes) by stack id: samples scaled by the rate and the probe's
    /// coverage when they came.
    by_stack: std::collections::HashMap<i32, (Arc<Symbolized>, f64, f64)>,
    rate: i64,
    started: (std::time::SystemTime, std::time::Instant),
    taken: std::time::Instant,
    /// Whether a function is the allocator's, whose frames at the leaf of a stack the profile
    /// leaves out (Go's runtime; a C allocator and C++'s operator new).
    allocator: fn(&str) -> bool,
    /// What is live now, by stack, where it is tracked (`--native-inuse`): (objects, bytes).
    inuse: Option<Vec<(Arc<Symbolized>, f64, f64)>>,
}

/// Set what is live now in `profile` (`--native-inuse`), by stack: (objects, bytes).
pub fn publish_inuse(profile: &AllocProfile, live: Vec<(Arc<Symbolized>, f64, f64)>) {
    if let Ok(mut current) = profile.lock()
        && let Some(snapshot) = current.as_mut()
    {
        snapshot.inuse = Some(live);
    }
}

/// Add `gained` (stack id, stack, objects, bytes) to `profile`, sampled at `rate` since
/// `started`, its stacks' leaf frames the `allocator`'s while it says so.
pub fn publish_into(
    profile: &AllocProfile,
    started: (std::time::SystemTime, std::time::Instant),
    rate: i64,
    allocator: fn(&str) -> bool,
    gained: Vec<(i32, Arc<Symbolized>, f64, f64)>,
) {
    let Ok(mut current) = profile.lock() else {
        return;
    };
    let snapshot = current.get_or_insert_with(|| AllocSnapshot {
        by_stack: std::collections::HashMap::new(),
        rate,
        started,
        taken: std::time::Instant::now(),
        allocator,
        inuse: None,
    });
    snapshot.rate = rate;
    snapshot.taken = std::time::Instant::now();
    for (stack_id, stack, objects, bytes) in gained {
        let entry = snapshot
            .by_stack
            .entry(stack_id)
            .or_insert_with(|| (stack, 0.0, 0.0));
        entry.1 += objects;
        entry.2 += bytes;
    }
}

impl AllocSnapshot {
    /// The allocations as a pprof profile typed like Go's own (alloc_objects, alloc_space,
    /// and where what is live is tracked inuse_objects and inuse_space, shown by default).
    pub fn to_pprof(&self) -> pprof::Profile {
        let tracked = self.inuse.is_some();
        let values = |objects: f64, bytes: f64, live: bool| {
            let (objects, bytes) = (objects.round() as i64, bytes.round() as i64);
            match (tracked, live) {
                (false, _) => vec![objects, bytes],
                (true, false) => vec![objects, bytes, 0, 0],
                (true, true) => vec![0, 0, objects, bytes],
            }
        };
        let allocated = self
            .by_stack
            .values()
            .map(|(stack, objects, bytes)| pprof::Sample {
                stack: without_allocator(&stack.frames, self.allocator),
                values: values(*objects, *bytes, false),
            });
        let live = self
            .inuse
            .iter()
            .flatten()
            .map(|(stack, objects, bytes)| pprof::Sample {
                stack: without_allocator(&stack.frames, self.allocator),
                values: values(*objects, *bytes, true),
            });
        let samples = allocated.chain(live).collect();
        let (sample_types, default_sample_type) = if tracked {
            (
                vec![
                    ("alloc_objects", "count"),
                    ("alloc_space", "bytes"),
                    ("inuse_objects", "count"),
                    ("inuse_space", "bytes"),
                ],
                "inuse_space",
            )
        } else {
            (
                vec![("alloc_objects", "count"), ("alloc_space", "bytes")],
                "alloc_space",
            )
        };
        let (wall, monotonic) = self.started;
        pprof::Profile {
            sample_types,
            default_sample_type,
            period_type: ("space", "bytes"),
            period: self.rate,
            time_nanos: wall
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos() as i64),
            duration_nanos: self.taken.duration_since(monotonic).as_nanos() as i64,
            samples,
        }
    }
}

/// The kernel's two sample tables and which one its probes fill. Each read empties the table
/// retired at the read before, idle since (a probe that chose it just before it was retired
/// finished long ago), then retires the filling one if its family fired. So a read costs what
/// was sampled since, not the target's history, and a new stack always finds room. Keyed by
/// `K`: Go's samples (`AllocKey`), native ones (`NativeSampleKey`).
pub(super) struct SampleTables<K> {
    tables: [aya::maps::HashMap<MapData, K, u64>; 2],
    switch: aya::maps::Array<MapData, u32>,
    filling: usize,
    /// The probe's coverage when the retired table was retired, while it holds samples not
    /// read yet: the share of the target's work its samples saw.
    pub(super) retired: Option<f64>,
}

impl<K: aya::Pod> SampleTables<K> {
    /// The tables, the probes filling the first.
    pub(super) fn new(
        tables: [aya::maps::HashMap<MapData, K, u64>; 2],
        switch: aya::maps::Array<MapData, u32>,
    ) -> Self {
        Self {
            tables,
            switch,
            filling: 0,
            retired: None,
        }
    }

    /// The table the probes fill now.
    pub(super) fn filling(&self) -> usize {
        self.filling
    }

    /// Empty table `index`: its sample counts by key.
    pub(super) fn drain(&mut self, index: usize) -> Vec<(K, u64)> {
        let table = &mut self.tables[index];
        let keys: Vec<K> = table.keys().filter_map(Result::ok).collect();
        let mut counts = Vec::with_capacity(keys.len());
        for key in keys {
            if let Ok(count) = table.get(&key, 0) {
                counts.push((key, count));
            }
            let _ = table.remove(&key);
        }
        counts
    }

    /// Have the probes fill the other table (empty: drained before), and retire this one;
    /// whether it could be.
    pub(super) fn retire_filling(&mut self, coverage: f64) -> bool {
        let next = 1 - self.filling;
        match self.switch.set(0, next as u32, 0) {
            Ok(()) => {
                self.retired = Some(coverage);
                self.filling = next;
                true
            }
            Err(error) => {
                tracing::debug!("switching allocation sample tables: {error}");
                false
            }
        }
    }
}

/// How often the kernel's counts are read (a Prometheus scrape interval is 15 s or more).
const READ_INTERVAL: Duration = Duration::from_secs(1);

pub struct AllocCollector {
    samples: SampleTables<AllocKey>,
    /// Samples read so far, as the kernel counted them (not scaled).
    taken: u64,
    /// The estimated objects by size so far (sampled mode).
    sizes: SizeHistogram,
    /// Exact and counted mode's counters, read when `exact` or `counted` is on.
    exact_counts: PerCpuArray<MapData, u64>,
    /// The probes' hit counters, and the sampling family's as last read: while it does not
    /// move (no load, or its probes are off) there is nothing new to read.
    hits: PerCpuArray<MapData, u64>,
    hits_seen: Option<u64>,
    pub exact: bool,
    exact_exported: (u64, u64),
    /// Counted mode (the target's runtime samples nothing): the totals and sizes come from the
    /// governed every-allocation probes, the sites from their byte-weighted samples.
    pub counted: bool,
    /// Counted mode's counters (`ALLOC_EXACT`'s slots) as last read, and their growth scaled
    /// by the share of the target's work the probes saw when it came.
    counted_seen: Vec<u64>,
    counted_weighted: Vec<f64>,
    stacks: super::stacks::StackTable,
    symbolizer: Stacks,
    /// Published after every read.
    pub profile: AllocProfile,
    started: (std::time::SystemTime, std::time::Instant),
    /// Which sites have series of their own, following the load.
    ranking: SiteRanking,
    /// When the sites were last exported, for the ranking's decay.
    sites_read: std::time::Instant,
    /// Every site's estimated (objects, bytes) so far, and churn.
    sites_exported: SiteTotals,
    /// Reads the target's `runtime.MemProfileRate`.
    rate: Box<dyn FnMut() -> Option<i64> + Send>,
    metrics: Arc<TargetMetrics>,
    exported: AllocTotals,
    /// The last rate read, kept for when the target has gone (the final read after exit).
    last_rate: Option<i64>,
    warned_rate: Option<i64>,
}

impl AllocCollector {
    pub fn new(
        maps: AllocMaps,
        rate: Box<dyn FnMut() -> Option<i64> + Send>,
        metrics: Arc<TargetMetrics>,
        sites: SiteOptions,
    ) -> Self {
        let ranking = SiteRanking::new(sites.top_sites, sites.half_life);
        Self {
            samples: SampleTables::new(maps.samples, maps.filling),
            taken: 0,
            sizes: SizeHistogram::from_estimates(&BTreeMap::new()),
            exact_counts: maps.exact,
            hits: maps.hits,
            hits_seen: None,
            exact: false,
            exact_exported: (0, 0),
            counted: false,
            counted_seen: vec![0; EXACT_SLOTS as usize],
            counted_weighted: vec![0.0; EXACT_SLOTS as usize],
            stacks: maps.stacks,
            symbolizer: Stacks::new(Arc::clone(&sites.binary), sites.load_bias),
            profile: AllocProfile::default(),
            started: (std::time::SystemTime::now(), std::time::Instant::now()),
            ranking,
            sites_read: std::time::Instant::now(),
            sites_exported: SiteTotals::default(),
            rate,
            metrics,
            exported: AllocTotals::default(),
            last_rate: None,
            warned_rate: None,
        }
    }

    pub async fn run_until(&mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(READ_INTERVAL);
        let own = self.metrics.own_cpu().clone();
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = tick.tick() => own.measure(|| self.read(false)),
            }
        }
    }

    /// Read what the kernel counted since the last read and export it. `last`: the probes are
    /// gone, so both sample tables are emptied (at other times the filling one waits a read).
    pub fn read(&mut self, last: bool) {
        if self.exact {
            self.read_exact();
        }
        let (rate, family) = if self.counted {
            (COUNTED_SAMPLE_BYTES as i64, HIT_ALLOC_COUNT)
        } else {
            let Some(rate) = self.sampling_rate() else {
                self.metrics.allocated(&self.exported, &self.exported, 0);
                return;
            };
            (rate, HIT_ALLOC)
        };
        // Counts are taken only with their share of the target's work settled: while one of
        // the overhead governor's on parts counts (its share is known only once it ends), they
        // wait in the kernel. A last read takes them with the predicted share.
        let settled = self.metrics.coverage().settled(family);
        if settled.is_none() && !last {
            return;
        }
        // Samples since the last read saw this share of the target's work: each stands for
        // 1/coverage as many.
        let coverage = settled.map_or_else(
            || self.metrics.coverage().fraction(family),
            |settled| settled.fraction,
        );
        let hits = self
            .hits
            .get(&family, 0)
            .ok()
            .map(|per_cpu| per_cpu.iter().sum::<u64>());
        let fired = hits.is_none() || hits != self.hits_seen;
        self.hits_seen = hits;
        let mut fresh: Vec<(AllocKey, u64, f64)> = Vec::new();
        if let Some(retired_coverage) = self.samples.retired.take() {
            let retired = 1 - self.samples.filling;
            fresh.extend(
                self.samples
                    .drain(retired)
                    .into_iter()
                    .map(|(key, count)| (key, count, retired_coverage)),
            );
        }
        if last {
            let filling = self.samples.filling;
            fresh.extend(
                self.samples
                    .drain(filling)
                    .into_iter()
                    .map(|(key, count)| (key, count, coverage)),
            );
        }
        // Every count so far is taken (the filling table retired, or nothing in it since the
        // last read), once this read is done: the governor may count into it again.
        let taken = if fired && !last {
            self.samples.retire_filling(coverage)
        } else {
            true
        };
        let done = |collector: &Self| {
            if let Some(settled) = settled.filter(|_| taken) {
                collector.metrics.coverage().taken(family, settled);
            }
        };
        if fresh.is_empty() && !(self.counted && fired) {
            if last {
                // An empty profile, not none: the target was sampled, and allocated too
                // little to show.
                self.publish(Vec::new(), rate);
            }
            done(self);
            return;
        }
        let mut sites = SiteTotals::default();
        let mut gained_by_size: BTreeMap<u64, f64> = BTreeMap::new();
        let mut by_stack = Vec::with_capacity(fresh.len());
        for (key, count, coverage) in fresh {
            let weighted = count as f64 / coverage;
            self.taken += count;
            *gained_by_size.entry(key.size).or_default() += weighted;
            let stack = self.symbolizer.symbolize(&self.stacks, key.stack_id);
            sites.add(&stack.site, stack.churn, key.size, weighted, rate);
            let objects = weighted * scale(key.size, rate);
            by_stack.push((key.stack_id, stack, objects, objects * key.size as f64));
        }
        let totals = if self.counted {
            let (totals, sizes) = self.read_counted(coverage, self.taken);
            self.sizes = sizes;
            totals
        } else {
            let gained = estimate(&gained_by_size, rate);
            for (&size, &count) in &gained_by_size {
                self.sizes.add(size, count * scale(size, rate));
            }
            AllocTotals {
                samples: self.taken,
                objects: self.exported.objects + gained.objects,
                bytes: self.exported.bytes + gained.bytes,
            }
        };
        self.metrics.allocated(&self.exported, &totals, rate);
        self.metrics.allocation_sizes(self.sizes.clone());
        self.metrics.allocation_stacks(self.symbolizer.kept());
        self.exported = totals;
        self.export_sites(sites);
        self.publish(by_stack, rate);
        done(self);
    }

    /// Exact mode: export the growth of the every-allocation counters.
    fn read_exact(&mut self) {
        let total = |slot: u32| -> u64 {
            self.exact_counts
                .get(&slot, 0)
                .map_or(0, |per_cpu| per_cpu.iter().sum())
        };
        let now = (total(EXACT_OBJECTS), total(EXACT_BYTES));
        self.metrics.exactly_allocated(
            now.0.saturating_sub(self.exact_exported.0),
            now.1.saturating_sub(self.exact_exported.1),
        );
        self.exact_exported = now;
    }

    /// Counted mode: the every-allocation counters' growth since the last read, scaled by
    /// `coverage`, added to the totals and sizes so far.
    fn read_counted(&mut self, coverage: f64, samples: u64) -> (AllocTotals, SizeHistogram) {
        for slot in 0..EXACT_SLOTS {
            let now: u64 = self
                .exact_counts
                .get(&slot, 0)
                .map_or(0, |per_cpu| per_cpu.iter().sum());
            let seen = &mut self.counted_seen[slot as usize];
            self.counted_weighted[slot as usize] += now.saturating_sub(*seen) as f64 / coverage;
            *seen = now;
        }
        let weighted = &self.counted_weighted;
        // Each size slot is one power-of-two bucket: its objects go in at its upper bound.
        let objects_by_size: BTreeMap<u64, f64> = (EXACT_SIZE_BASE..EXACT_SLOTS)
            .filter(|slot| weighted[*slot as usize] > 0.0)
            .map(|slot| (slot_bound(slot), weighted[slot as usize]))
            .collect();
        let mut sizes = SizeHistogram::from_estimates(&objects_by_size);
        sizes.sum = weighted[EXACT_BYTES as usize];
        let totals = AllocTotals {
            samples,
            objects: weighted[EXACT_OBJECTS as usize],
            bytes: weighted[EXACT_BYTES as usize],
        };
        (totals, sizes)
    }

    /// The rate to scale samples by: the target's `MemProfileRate`, the last one read once the
    /// target has gone, or the runtime default when it cannot be read (stripped binary). `None`
    /// when sampling is off. Each condition is logged once.
    fn sampling_rate(&mut self) -> Option<i64> {
        let rate = (self.rate)().or(self.last_rate);
        self.last_rate = rate;
        if let Some(rate) = rate.filter(|&rate| rate > 0) {
            return Some(rate);
        }
        let condition = rate.unwrap_or(-1);
        let first_time = self.warned_rate != Some(condition);
        self.warned_rate = Some(condition);
        if rate == Some(0) {
            if first_time {
                tracing::warn!(
                    "the target set runtime.MemProfileRate to 0, which turns the runtime's \
                     allocation sampling off: mapscope sees no sampled allocations. The Go linker \
                     does that when a program never references runtime.MemProfile; importing \
                     runtime/pprof or net/http/pprof (or setting runtime.MemProfileRate) turns it \
                     back on; or give mapscope a budget (--max-overhead above 0) and it counts \
                     them itself, part of the time"
                );
            }
            return None;
        }
        if first_time {
            tracing::warn!(
                "cannot read the target's runtime.MemProfileRate (stripped binary?); assuming the \
                 runtime default of 512 KiB: allocation estimates are wrong if the program changed it"
            );
        }
        Some(crate::gobin::abi::DEFAULT_MEM_PROFILE_RATE)
    }

    /// Add what was sampled since the last read to the allocation snapshot.
    fn publish(&self, gained: Vec<(i32, Arc<Symbolized>, f64, f64)>, rate: i64) {
        publish_into(&self.profile, self.started, rate, is_runtime, gained);
    }

    /// The estimates so far and the `top` sites by bytes (every site, named or not); `None`
    /// when the target's sampling is off (no estimate is 0 then, it is unknown).
    pub fn summary(&self, top: usize) -> Option<AllocSummary> {
        if self.last_rate == Some(0) && !self.counted {
            return None;
        }
        let mut sites: Vec<(Site, f64)> = self
            .sites_exported
            .by_site
            .iter()
            .map(|(site, &(_, bytes))| (site.clone(), bytes))
            .collect();
        sites.sort_by(|a, b| b.1.total_cmp(&a.1));
        sites.truncate(top);
        Some(AllocSummary {
            objects: self.exported.objects,
            bytes: self.exported.bytes,
            counted: self.counted,
            top_sites: sites,
        })
    }

    /// Export what each site gained since the last read: under its own name if it is among the
    /// sites allocating most now (`SiteRanking`), else under `other`. A site the ranking
    /// forgets has its series deleted.
    fn export_sites(&mut self, gained: SiteTotals) {
        let gained_bytes: BTreeMap<Site, f64> = gained
            .by_site
            .iter()
            .map(|(site, &(_, bytes))| (site.clone(), bytes))
            .filter(|(_, bytes)| *bytes > 0.0)
            .collect();
        let changes = self
            .ranking
            .update(&gained_bytes, self.sites_read.elapsed());
        self.sites_read = std::time::Instant::now();
        for site in &changes.promoted {
            tracing::debug!(
                "allocation site {} now has series of its own",
                site.function
            );
        }
        for site in &changes.forgotten {
            self.metrics.forget_site(site);
        }
        let other = Site {
            function: "other".into(),
            location: String::new(),
        };
        let label = |site: &Site| {
            if self.ranking.is_named(site) {
                site.clone()
            } else {
                other.clone()
            }
        };
        for (site, &(objects, bytes)) in &gained.by_site {
            self.metrics.site_allocated(&label(site), objects, bytes);
        }
        for ((churn, site), &objects) in &gained.churn {
            self.metrics.churned(*churn, &label(site), objects);
        }
        self.sites_exported.merge(gained);
    }
}

/// The stack without the allocator's frames at its leaf (Go's runtime, by `allocator`), as
/// Go's own heap profiles show it (their stacks start at the code that allocated). A stack that
/// is all allocator stays whole.
fn without_allocator(
    frames: &[(u64, Vec<Line>)],
    allocator: fn(&str) -> bool,
) -> Vec<(u64, Vec<Line>)> {
    let mut kept = Vec::new();
    let mut in_allocator = true;
    for (address, lines) in frames {
        let lines: Vec<Line> = lines
            .iter()
            .filter(|line| {
                in_allocator &= allocator(&line.function);
                !in_allocator
            })
            .cloned()
            .collect();
        if !lines.is_empty() {
            kept.push((*address, lines));
        }
    }
    if kept.is_empty() {
        frames.to_vec()
    } else {
        kept
    }
}
