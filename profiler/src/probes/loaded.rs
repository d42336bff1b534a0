//! The eBPF object for one target: loaded, attached to its probe points, and detached on drop.
use std::{
    num::NonZeroU32,
    os::fd::AsFd as _,
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use aya_log::EbpfLogger;
use thiserror::Error;

use profiler_common::{
    alloc::{ALLOC_SAMPLE_TABLES, AllocKey},
    counters::HIT_KINDS,
    maps::{MapOpKey, MapSiteKey, TrackedMap},
    native::{LastCall, LiveSample, NATIVE_SAMPLE_TABLES, NativeSampleKey},
};

use super::{calibrate::TrapKind, stw::ProbePoint};

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("loading the eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("eBPF program {name} is missing from the object")]
    MissingProgram { name: &'static str },
    #[error("loading eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("attaching a uprobe to {function} at {address:#x}: {source}")]
    Attach {
        function: &'static str,
        address: u64,
        source: ProgramError,
    },
    #[error("eBPF map {0} is missing or of the wrong type")]
    Map(&'static str),
    #[error("no file {object} among the target's probed objects for {function}")]
    NoObject { function: &'static str, object: u8 },
    #[error("filling eBPF map {name}: {source}")]
    Fill {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("the target's probes were detached")]
    Detached,
}

/// Kernel maps of the allocation sampler.
pub struct AllocMaps {
    /// The two sample tables (`ALLOC_SAMPLE_TABLES`), and the switch that says which one the
    /// probes fill.
    pub samples: [HashMap<MapData, AllocKey, u64>; 2],
    pub filling: aya::maps::Array<MapData, u32>,
    pub stacks: crate::collect::stacks::StackTable,
    /// Exact and counted mode's counters (filled only when their probes are attached).
    pub exact: PerCpuArray<MapData, u64>,
    /// A handle on the probe hit counters (`PROBE_HITS`): when its family's did not move,
    /// none of the above did either.
    pub hits: PerCpuArray<MapData, u64>,
}

/// Kernel maps of the native allocation probes.
pub struct NativeMaps {
    /// Per-CPU counts by allocator (`native_counter`).
    pub counts: PerCpuArray<MapData, u64>,
    /// The code of the dedicated allocator libraries, filled again once they are mapped.
    pub own_code: aya::maps::Array<MapData, [u64; 2]>,
    /// C++'s `operator new`s, filled again once they are mapped.
    pub wrappers: aya::maps::Array<MapData, [u64; 3]>,
    /// Which entry points tail-jump into which, extended for libraries mapped later.
    pub tail_from: aya::maps::Array<MapData, u64>,
    /// The two sample tables, and the switch that says which one the probes fill.
    pub samples: [HashMap<MapData, NativeSampleKey, u64>; 2],
    pub filling: aya::maps::Array<MapData, u32>,
    pub stacks: crate::collect::stacks::StackTable,
    /// The sampled allocations still live, by block (`--native-inuse`).
    pub live: HashMap<MapData, u64, LiveSample>,
    /// Each thread's last counted call, by thread id.
    pub last_calls: HashMap<MapData, u32, LastCall>,
}

/// Kernel maps of the Go-map tracker.
pub struct MapMaps {
    /// Maps seen, by header address (an LRU hash).
    pub tracked: HashMap<MapData, u64, TrackedMap>,
    pub site_events: PerCpuHashMap<MapData, MapSiteKey, u64>,
    pub stacks: crate::collect::stacks::StackTable,
}

/// Kernel maps of the discovery windows.
pub struct DiscoveryMaps {
    /// Operations by (map, kind).
    pub ops: PerCpuHashMap<MapData, MapOpKey, u64>,
    /// Hits of each probe, by its index in the window.
    pub hits: PerCpuArray<MapData, u64>,
}

/// Kernel maps that the collectors read; they outlive the probes so the last events can still
/// be drained after detaching.
pub struct StwMaps {
    pub events: RingBuf<MapData>,
    pub counters: PerCpuArray<MapData, u64>,
    /// Hits of every probe family (`profiler_common::counters::HIT_*`).
    pub hits: PerCpuArray<MapData, u64>,
    /// GC cycles started, by trigger kind (`profiler_common::trigger`).
    pub triggers: PerCpuArray<MapData, u64>,
}

/// The object, shared with the windowed probes of the same target (which attach its programs
/// for a while now and then).
type SharedEbpf = Arc<Mutex<Ebpf>>;

pub struct AttachedProbes {
    ebpf: SharedEbpf,
    /// Drains aya-log records into `tracing`. Must outlive the programs: dropping it closes
    /// the log map.
    logger: Option<LogDrain>,
    pid: u32,
    objects: Objects,
    /// Probes loaded but attached only by `windowed`.
    windowed: Vec<ProbePoint>,
    /// The links of families whose probes the overhead governor takes on and off, by family.
    governed: Vec<(u32, ProbePoint, UProbeLinkId)>,
    /// The costliest trap among each family's probes, by family.
    trap_kinds: [TrapKind; HIT_KINDS as usize],
    pub count: usize,
}

/// The files a target's probes go in, by `ProbePoint::object`: its executable first, as
/// `/proc/PID/exe` (so the kernel resolves the right inode in any mount namespace), then the
/// libraries of its native allocators, through `/proc/PID/root`.
pub type Objects = Arc<[std::path::PathBuf]>;

/// The object (or a queue of changes to its probes), even if a thread panicked holding it:
/// aya's state stays consistent between calls, and the probes must still come off.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AttachedProbes {
    /// Load the programs of `points` and `windowed`, and attach every one of `points`, for
    /// `pid` only; `windowed` stay loaded for `windowed()`, and the links of the `governed`
    /// families are kept for `governed()` (those the overhead governor holds, and the native
    /// family, whose probes change with the libraries the target maps). `small_tables`: tables
    /// of the object sized to `SMALL_TABLE` entries (those of a family that should find nothing
    /// to count). `native`: what the native allocation probes must know before the first of
    /// them fires.
    pub fn attach(
        pid: u32,
        objects: Objects,
        native: Option<&crate::native::probes::NativePlan>,
        points: &[ProbePoint],
        windowed: &[ProbePoint],
        governed: &[u32],
        small_tables: &[&str],
    ) -> Result<Self, LoadError> {
        let all: Vec<ProbePoint> = points.iter().chain(windowed).cloned().collect();
        // The daemon's exec queue is in every object, but used only by the daemon's own.
        let small_tables: Vec<&str> = small_tables.iter().copied().chain(["EXECS"]).collect();
        let (mut ebpf, logger) = load(&all, &small_tables)?;
        if let Some(native) = native {
            native.fill_tables(&mut ebpf)?;
        }
        let mut governed_links = Vec::new();
        for point in points {
            // The link is owned by the program: dropping the object detaches it.
            let link = attach_point(&mut ebpf, pid, &objects, point)?;
            if let Some(family) =
                super::family(point.program).filter(|family| governed.contains(family))
            {
                governed_links.push((family, *point, link));
            }
        }
        let trap_kinds = trap_kinds(&objects, &all);
        Ok(Self {
            ebpf: Arc::new(Mutex::new(ebpf)),
            logger,
            pid,
            objects,
            windowed: windowed.to_vec(),
            governed: governed_links,
            trap_kinds,
            count: points.len(),
        })
    }

    /// The costliest trap among each family's probes, by family (`TrapKind`): what the
    /// overhead meter charges each of its hits.
    pub fn trap_kinds(&self) -> [TrapKind; HIT_KINDS as usize] {
        self.trap_kinds
    }

    /// The probes of each family whose links were kept, attached, for the governor to take off
    /// and put back, or for their collector to change (by family); each family once.
    pub fn governed(&mut self) -> Vec<(u32, WindowedProbes)> {
        let mut families: Vec<(u32, WindowedProbes)> = Vec::new();
        for (family, point, link) in std::mem::take(&mut self.governed) {
            let index = match families.iter().position(|(known, _)| *known == family) {
                Some(index) => index,
                None => {
                    families.push((
                        family,
                        WindowedProbes {
                            ebpf: Arc::downgrade(&self.ebpf),
                            pid: self.pid,
                            objects: self.objects.to_vec(),
                            first_added: self.objects.len(),
                            points: Vec::new(),
                            links: Vec::new(),
                            on: true,
                            changes: None,
                        },
                    ));
                    families.len() - 1
                }
            };
            let probes = &mut families[index].1;
            probes.links.push(Link::new(&point, link));
            probes.points.push(point);
        }
        families
    }

    fn take<T: TryFrom<Map>>(&mut self, name: &'static str) -> Result<T, LoadError> {
        take_map(&mut lock(&self.ebpf), name)
    }

    /// The windowed probes, attached and detached by their owner; `None` when there are none.
    pub fn windowed(&self) -> Option<WindowedProbes> {
        (!self.windowed.is_empty()).then(|| WindowedProbes {
            ebpf: Arc::downgrade(&self.ebpf),
            pid: self.pid,
            objects: self.objects.to_vec(),
            first_added: self.objects.len(),
            points: self.windowed.clone(),
            links: Vec::new(),
            on: false,
            changes: None,
        })
    }

    /// Every loaded program of the object, by probe family, as a descriptor of its own (for
    /// its run-time statistics).
    pub fn program_fds(&self) -> Vec<(u32, aya::programs::ProgramFd)> {
        lock(&self.ebpf)
            .programs()
            .filter_map(|(name, program)| {
                let family = super::family(name)?;
                Some((family, program.fd().ok()?.try_clone().ok()?))
            })
            .collect()
    }

    /// The discovery window's per-(map, operation) counts, and its hits by probe index.
    pub fn take_discovery_maps(&mut self) -> Result<DiscoveryMaps, LoadError> {
        Ok(DiscoveryMaps {
            ops: self.take("MAP_OPS")?,
            hits: self.take("MAP_ACCESS_HITS")?,
        })
    }

    /// A second handle on the probe hit counters (`PROBE_HITS`), for the overhead governor
    /// and the allocation collector; before `take_stw_maps` takes the first.
    pub fn hit_counters(&self) -> Result<PerCpuArray<MapData, u64>, LoadError> {
        const NAME: &str = "PROBE_HITS";
        let ebpf = lock(&self.ebpf);
        let Some(Map::PerCpuArray(data)) = ebpf.map(NAME) else {
            return Err(LoadError::Map(NAME));
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|_| LoadError::Map(NAME))?;
        let data = MapData::from_fd(fd).map_err(|_| LoadError::Map(NAME))?;
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(|_| LoadError::Map(NAME))
    }

    /// Until when each governed family counts (`FAMILY_COUNTS_UNTIL`, by family).
    pub fn take_family_switch(&mut self) -> Result<aya::maps::Array<MapData, u64>, LoadError> {
        self.take("FAMILY_COUNTS_UNTIL")
    }

    pub fn take_stw_maps(&mut self) -> Result<StwMaps, LoadError> {
        Ok(StwMaps {
            events: self.take("STW_EVENTS")?,
            counters: self.take("PROBE_COUNTERS")?,
            hits: self.take("PROBE_HITS")?,
            triggers: self.take("GC_TRIGGERS")?,
        })
    }

    /// The allocation collector's maps; before `take_stw_maps` (for the hit counters).
    pub fn take_alloc_maps(&mut self) -> Result<AllocMaps, LoadError> {
        Ok(AllocMaps {
            hits: self.hit_counters()?,
            samples: [
                self.take(ALLOC_SAMPLE_TABLES[0])?,
                self.take(ALLOC_SAMPLE_TABLES[1])?,
            ],
            filling: self.take("ALLOC_SAMPLES_FILLING")?,
            stacks: self.take("ALLOC_STACKS")?,
            exact: self.take("ALLOC_EXACT")?,
        })
    }

    /// The native allocation collector's maps.
    pub fn take_native_maps(&mut self) -> Result<NativeMaps, LoadError> {
        let [first, second] = NATIVE_SAMPLE_TABLES;
        Ok(NativeMaps {
            counts: self.take("NATIVE_COUNTS")?,
            own_code: self.take("NATIVE_OWN_CODE")?,
            wrappers: self.take("NATIVE_WRAPPERS")?,
            tail_from: self.take("NATIVE_TAIL_FROM")?,
            samples: [self.take(first)?, self.take(second)?],
            filling: self.take("NATIVE_SAMPLES_FILLING")?,
            stacks: self.take("NATIVE_STACKS")?,
            live: self.take("NATIVE_LIVE")?,
            last_calls: self.take("NATIVE_LAST_CALL")?,
        })
    }

    pub fn take_map_maps(&mut self) -> Result<MapMaps, LoadError> {
        Ok(MapMaps {
            tracked: self.take("TRACKED_MAPS")?,
            site_events: self.take("MAP_SITE_EVENTS")?,
            stacks: self.take("MAP_STACKS")?,
        })
    }

    /// Remove every uprobe from the target. The kernel restores the original instructions.
    /// Windowed probes hold the object weakly: this removes theirs too, once a window attaching
    /// or detaching right now has let go of it (normally none is: their task is stopped first).
    pub fn detach(self) {
        // The programs first, then the log drain, which must outlive them.
        let Self { ebpf, logger, .. } = self;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Arc::strong_count(&ebpf) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(ebpf);
        drop(logger);
    }
}

/// Each probe family's tables, and the families that fill them. The kernel creates every map
/// of an object, whichever programs are loaded, and LRU tables (and, before Linux 6.1, every
/// hash table: see `super::object`) are preallocated, per CPU for the per-CPU ones: the tables
/// no planned family fills are shrunk to one entry, so a target pays kernel memory only for
/// what is probed in it.
const FAMILY_TABLES: [(&[u32], &[&str]); 7] = {
    use profiler_common::counters::*;
    [
        (&[HIT_STW], &["STOPPED", "STARTING", "STW_EVENTS"]),
        (&[HIT_GC_START], &["GC_START_KINDS"]),
        (
            &[HIT_ALLOC, HIT_ALLOC_COUNT],
            &[
                ALLOC_SAMPLE_TABLES[0],
                ALLOC_SAMPLE_TABLES[1],
                "ALLOC_STACKS",
            ],
        ),
        (&[HIT_MAP_CREATE], &["PENDING_CREATIONS"]),
        (&[HIT_MAP_ACCESS], &["MAP_OPS", "MAP_ACCESS_HITS"]),
        (
            &[HIT_MAP_EVENT, HIT_MAP_CREATE, HIT_MAP_ACCESS],
            &["TRACKED_MAPS", "MAP_SITE_EVENTS", "MAP_STACKS"],
        ),
        (
            &[HIT_NATIVE],
            &[
                "NATIVE_LAST_CALL",
                NATIVE_SAMPLE_TABLES[0],
                NATIVE_SAMPLE_TABLES[1],
                "NATIVE_STACKS",
            ],
        ),
    ]
};

/// The size of a table that should find little to count (`AttachedProbes::attach`): what
/// does come is still counted, or counted as lost when it is full.
pub const SMALL_TABLE: u32 = 64;

/// Bytes of the kernel programs' log buffer.
const LOG_BUFFER_BYTES: u32 = 16 * 1024;

/// Load the object and the programs `points` use, with the log drain running (when there is
/// an async runtime to run it: the probe cost calibration has none, and logs nothing).
pub(super) fn load(
    points: &[ProbePoint],
    small_tables: &[&str],
) -> Result<(Ebpf, Option<LogDrain>), LoadError> {
    let mut loader = EbpfLoader::new();
    for name in small_tables {
        loader.map_max_entries(name, SMALL_TABLE);
    }
    for (families, tables) in FAMILY_TABLES {
        let used = points.iter().any(|point| {
            super::family(point.program).is_some_and(|family| families.contains(&family))
        });
        if !used {
            for name in tables {
                loader.map_max_entries(name, 1);
            }
        }
    }
    // aya-log's ring buffer (128 KiB by default) carries one rare warning.
    loader.map_max_entries("AYA_LOGS", LOG_BUFFER_BYTES);
    let mut ebpf = loader.load(super::object::for_this_kernel())?;
    let logger = match EbpfLogger::init(&mut ebpf) {
        Ok(_) if tokio::runtime::Handle::try_current().is_err() => None,
        Ok(logger) => Some(LogDrain(spawn_log_drain(logger))),
        Err(error) => {
            tracing::warn!("eBPF log messages will not be shown: {error}");
            None
        }
    };
    // Load only the programs this plan uses (the object also holds the bench's calibration
    // program, and Go releases differ in which STW programs they need).
    let mut names: Vec<&'static str> = points.iter().map(|point| point.program).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        uprobe(&mut ebpf, name)?
            .load()
            .map_err(|source| LoadError::Program { name, source })?;
    }
    Ok((ebpf, logger))
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingProgram { name })?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })
}

/// Attach one point's program, for `pid` only, in its file among `objects`.
fn attach_point(
    ebpf: &mut Ebpf,
    pid: u32,
    objects: &[std::path::PathBuf],
    point: &ProbePoint,
) -> Result<UProbeLinkId, LoadError> {
    let file = objects
        .get(usize::from(point.object))
        .ok_or(LoadError::NoObject {
            function: point.function,
            object: point.object,
        })?;
    let scope = NonZeroU32::new(pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
    let attach_point = UProbeAttachPoint {
        location: UProbeAttachLocation::AbsoluteOffset(point.file_offset),
        cookie: Some(point.cookie),
    };
    uprobe(ebpf, point.program)?
        .attach(attach_point, file, scope)
        .map_err(|source| LoadError::Attach {
            function: point.function,
            address: point.address,
            source,
        })
}

/// The costliest trap among each family's `points`, by family: read from the instruction each
/// replaces. A return probe fires in the kernel's return trampoline, which this counts as
/// stepped; an instruction that cannot be read counts as stepped too.
fn trap_kinds(
    objects: &[std::path::PathBuf],
    points: &[ProbePoint],
) -> [TrapKind; HIT_KINDS as usize] {
    use std::os::unix::fs::FileExt as _;
    let mut kinds = [TrapKind::Emulated; HIT_KINDS as usize];
    // Each object opened once (a library holds a dozen entry points).
    let files: Vec<Option<std::fs::File>> = objects
        .iter()
        .map(|path| std::fs::File::open(path).ok())
        .collect();
    for point in points {
        let Some(family) = super::family(point.program) else {
            continue;
        };
        let kind = if super::is_return_probe(point.program) {
            TrapKind::Stepped
        } else {
            let mut code = [0u8; 16];
            let read = files
                .get(usize::from(point.object))
                .and_then(Option::as_ref)
                .and_then(|file| file.read_at(&mut code, point.file_offset).ok());
            match read {
                Some(read) => TrapKind::of_instruction(&code[..read]),
                None => TrapKind::Stepped,
            }
        };
        let slot = &mut kinds[family as usize];
        *slot = (*slot).max(kind);
    }
    kinds
}

/// Probes of a target's object attached for a window now and then (map discovery), or those
/// of a family its owner takes off and puts back (the overhead governor), or keeps on while
/// adding and removing some (the native allocators of libraries mapped and unmapped later).
/// Only attaches and detaches uprobes of programs loaded with the object, and holds the object
/// weakly: once the target's probes are detached, attaching fails and nothing leaks.
pub struct WindowedProbes {
    ebpf: std::sync::Weak<Mutex<Ebpf>>,
    pid: u32,
    /// The files its points go in, by `ProbePoint::object`: the target's, then those added.
    objects: Vec<std::path::PathBuf>,
    /// Where the files added after attach begin in `objects`.
    first_added: usize,
    points: Vec<ProbePoint>,
    links: Vec<Link>,
    /// Whether its owner has it on: attached, or between `attach` and `detach`. Points added
    /// while on are attached at once.
    on: bool,
    /// Points to add or remove, queued by whoever finds them (`apply_changes`).
    changes: Option<ProbeChanges>,
}

/// One attached probe.
struct Link {
    /// Its cookie (the probe index is in bits 16–23: `detach_busiest_first`).
    cookie: u64,
    program: &'static str,
    /// Its file, by index in `WindowedProbes::objects`.
    object: u8,
    id: UProbeLinkId,
}

impl Link {
    fn new(point: &ProbePoint, id: UProbeLinkId) -> Self {
        Self {
            cookie: point.cookie,
            program: point.program,
            object: point.object,
            id,
        }
    }
}

/// A change to a family's probes after attach: a library mapped later gets probes of its
/// own, and loses them once it is unmapped (a uprobe stays on its file while mapscope holds
/// it, firing in no process but keeping the file and the probe alive).
#[derive(Debug)]
pub enum ProbeChange {
    /// Probe `points` in the file at `object` (their `ProbePoint::object` is ignored).
    Add {
        object: std::path::PathBuf,
        points: Vec<ProbePoint>,
    },
    /// Remove every probe in the file at `object`.
    Remove { object: std::path::PathBuf },
}

/// A queue of `ProbeChange`s: filled by the collector that watches the target's mappings,
/// applied by the owner of the family's `WindowedProbes`, which is woken for them.
#[derive(Clone, Default)]
pub struct ProbeChanges(Arc<(Mutex<Vec<ProbeChange>>, tokio::sync::Notify)>);

impl ProbeChanges {
    pub fn push(&self, change: ProbeChange) {
        lock(&self.0.0).push(change);
        self.0.1.notify_one();
    }

    fn take(&self) -> Vec<ProbeChange> {
        std::mem::take(&mut *lock(&self.0.0))
    }

    /// Whether changes wait to be applied.
    pub fn pending(&self) -> bool {
        !lock(&self.0.0).is_empty()
    }

    /// Resolves once a change is pushed (or was, since the last wait).
    pub async fn pushed(&self) {
        self.0.1.notified().await;
    }
}

/// Stops the log drain when dropped.
pub(super) struct LogDrain(tokio::task::JoinHandle<()>);

impl Drop for LogDrain {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl WindowedProbes {
    /// How many uprobes a window attaches.
    pub fn probe_count(&self) -> usize {
        self.points.len()
    }

    /// Whether the probes are on now.
    pub fn attached(&self) -> bool {
        self.on
    }

    /// Take changes from `changes` from now on (`apply_changes`).
    pub fn follow(&mut self, changes: ProbeChanges) {
        self.changes = Some(changes);
    }

    /// The queue it takes changes from, if any.
    pub fn changes(&self) -> Option<&ProbeChanges> {
        self.changes.as_ref()
    }

    /// Attach every point (the changes queued first applied); on a failure, detach those
    /// attached and say why. A point added later that fails (its file gone) is dropped, and
    /// the rest go on.
    pub fn attach(&mut self) -> Result<(), LoadError> {
        self.detach();
        self.apply_changes();
        let Some(ebpf) = self.ebpf.upgrade() else {
            return Err(LoadError::Detached);
        };
        let mut ebpf = lock(&ebpf);
        let mut failed_late: Vec<u8> = Vec::new();
        for point in &self.points {
            match attach_point(&mut ebpf, self.pid, &self.objects, point) {
                Ok(id) => self.links.push(Link::new(point, id)),
                Err(error) if self.is_late(point.object) => {
                    tracing::debug!("PID {}: {error}; its library's probes dropped", self.pid);
                    failed_late.push(point.object);
                }
                Err(error) => {
                    drop(ebpf);
                    self.detach();
                    return Err(error);
                }
            }
        }
        drop(ebpf);
        self.on = true;
        for object in failed_late {
            self.remove_object(object);
        }
        Ok(())
    }

    /// Whether file `object` was added after attach (`ProbeChange::Add`): the files added come
    /// after the target's own.
    fn is_late(&self, object: u8) -> bool {
        usize::from(object) >= self.first_added
    }

    /// Remove the window's uprobes; the kernel restores the original instructions.
    pub fn detach(&mut self) {
        self.detach_busiest_first(&[]);
    }

    /// Remove the window's uprobes, those with the most `hits` (by probe index, cookie bits
    /// 16–23) first. Each removal waits for the kernel's RCU grace periods, about 0.1 s, one
    /// after another (the kernel serializes them), while the probes not yet removed keep
    /// firing: 13 probes stay on for 1.4 s after the window, and the busy ones must not be last.
    pub fn detach_busiest_first(&mut self, hits: &[u64]) {
        self.on = false;
        let links = std::mem::take(&mut self.links);
        self.detach_links(links, hits);
    }

    fn detach_links(&self, mut links: Vec<Link>, hits: &[u64]) {
        let Some(ebpf) = self.ebpf.upgrade() else {
            // The object is gone, and its links with it.
            return;
        };
        links.sort_by_key(|link| {
            std::cmp::Reverse(
                hits.get(((link.cookie >> 16) & 0xff) as usize)
                    .copied()
                    .unwrap_or(0),
            )
        });
        let mut ebpf = lock(&ebpf);
        for link in links {
            if let Ok(program) = uprobe(&mut ebpf, link.program) {
                let _ = program.detach(link.id);
            }
        }
    }

    /// Apply the changes queued (`follow`): a file's points added (attached at once if the
    /// probes are on), or removed with their probes. Blocks while the kernel removes them.
    pub fn apply_changes(&mut self) {
        let Some(changes) = self.changes.as_ref().map(ProbeChanges::take) else {
            return;
        };
        for change in changes {
            match change {
                ProbeChange::Add { object, points } => self.add(object, points),
                ProbeChange::Remove { object } => {
                    if let Some(index) = self.objects.iter().position(|known| *known == object) {
                        self.remove_object(index as u8);
                    }
                }
            }
        }
    }

    fn add(&mut self, object: std::path::PathBuf, points: Vec<ProbePoint>) {
        let index = match self.objects.iter().position(|known| *known == object) {
            Some(index) => index,
            None => {
                self.objects.push(object);
                self.objects.len() - 1
            }
        };
        let Ok(index) = u8::try_from(index) else {
            tracing::warn!(
                "PID {}: too many probed files; a library left out",
                self.pid
            );
            return;
        };
        let points: Vec<ProbePoint> = points
            .into_iter()
            .map(|point| ProbePoint {
                object: index,
                ..point
            })
            .collect();
        // Not twice: a library mapped again after it was removed comes back once.
        self.remove_object(index);
        if self.on
            && let Some(ebpf) = self.ebpf.upgrade()
        {
            let mut ebpf = lock(&ebpf);
            for point in &points {
                match attach_point(&mut ebpf, self.pid, &self.objects, point) {
                    Ok(id) => self.links.push(Link::new(point, id)),
                    Err(error) => {
                        // Unmapped and gone already: its removal follows.
                        tracing::debug!("PID {}: {error}", self.pid);
                    }
                }
            }
        }
        self.points.extend(points);
    }

    /// Remove file `object`'s points, and detach their probes.
    fn remove_object(&mut self, object: u8) {
        self.points.retain(|point| point.object != object);
        let (gone, kept) = std::mem::take(&mut self.links)
            .into_iter()
            .partition(|link| link.object == object);
        self.links = kept;
        self.detach_links(gone, &[]);
    }
}

impl Drop for WindowedProbes {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Take a map out of an object, as the type the collector reads it as.
pub(super) fn take_map<T: TryFrom<Map>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, LoadError> {
    ebpf.take_map(name)
        .and_then(|map| T::try_from(map).ok())
        .ok_or(LoadError::Map(name))
}

fn spawn_log_drain(logger: EbpfLogger<&'static dyn log::Log>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut logger) = crate::fdwatch::readable(logger) else {
            return;
        };
        loop {
            let Ok(mut guard) = logger.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    })
}
