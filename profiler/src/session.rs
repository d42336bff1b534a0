//! One profiled target, from "here is a PID" to the summary: the single code path behind
//! `attach` and `run` (and, later, each target of the daemon).
use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use profiler_common::counters::HIT_NATIVE;
use tokio::sync::oneshot;

use crate::{
    collect::{
        alloc::{AllocCollector, AllocProfile, SiteOptions},
        maps::{MapCollector, MapOptions, MapReport, MapStats, MapView},
        stacks::Stacks,
        stw::StwCollector,
    },
    error::{Exit, UserError},
    export::{
        self,
        metrics::{Metrics, TargetIdentity},
    },
    gobin::{
        GoBinary, GoBinaryError,
        abi::{self, MapAbiRow, NEWEST_KNOWN, OLDEST_SUPPORTED, StwAbi, Support},
    },
    model::pause::PauseBook,
    native::{self, NativeError, probes::NativePlan},
    probes::{
        self,
        loaded::AttachedProbes,
        preflight,
        stw::{self, PlanError, ProbePoint},
    },
    process::{
        memory,
        pidfd::{Process, ProcessError},
    },
};

/// A process mapscope has read and knows how to probe: its Go runtime, its C allocators, or
/// both (a Go program with cgo).
pub struct Target {
    pub process: Process,
    /// `None` for a program without a Go runtime.
    pub go: Option<GoRuntime>,
    /// `None` where no C allocator was found (a Go program without cgo).
    pub native: Option<NativePlan>,
    /// The container the process runs in (from its cgroup), empty outside containers.
    pub container: String,
}

/// A target's Go runtime: where its probes go and what mapscope read of it.
pub struct GoRuntime {
    pub go_version: String,
    pub abi: &'static StwAbi,
    pub points: Vec<ProbePoint>,
    /// Probes loaded with the others but attached only in discovery windows.
    pub windowed_points: Vec<ProbePoint>,
    /// Where `runtime.MemProfileRate` is in the target, when the symbol table says.
    pub mem_profile_rate: Option<u64>,
    /// Where `runtime.disableMemoryProfiling` is, when the symbol table says.
    pub memory_profiling_disabled: Option<u64>,
    /// Whether the allocation sampler is among `points`.
    pub sampling_allocations: bool,
    /// Whether counted mode replaced the sampler (`attach`): the runtime samples nothing.
    pub counting_allocations: bool,
    /// The map layout of this Go release, when the map probes are among `points`.
    pub maps: Option<&'static MapAbiRow>,
    /// The executable as read, for symbolizing stacks.
    pub binary: Arc<GoBinary>,
    /// Where the executable is loaded relative to its file addresses (non-zero for PIEs).
    pub load_bias: u64,
    /// The runtime vitals read from its memory, and where (file addresses).
    pub vitals: Option<crate::gobin::vitals::VitalsPlan>,
}

/// What the user can tune about a profiling session.
#[derive(Clone, Debug)]
pub struct Options {
    /// Allocation sites with series of their own (the rest are `other`).
    pub alloc_top_sites: usize,
    /// How fast those follow the load (`SiteRanking`).
    pub alloc_sites_half_life: Duration,
    /// Count every allocation (a uprobe on each: very costly).
    pub alloc_exact: bool,
    /// Track sampled native allocations until freed (`--native-inuse`: the native probes on all
    /// the time, and return probes).
    pub native_inuse: bool,
    /// The most mapscope may cost the target (share of its CPU time); 0 for no governor.
    pub max_overhead: f64,
    /// Measure the stopping part of each pause (a probe hit inside every pause).
    pub stw_stopping: bool,
    /// Track Go maps (growth, overflow and creation probes; snapshots).
    pub maps: Option<MapOptions>,
    /// Take one more round of map snapshots when profiling stops (for `mapscope heatmap`).
    pub final_map_snapshot: bool,
}

/// Refuse early, with the reason, if this machine or this process cannot run mapscope.
pub fn preflight(need_ptrace: bool) -> Result<(), UserError> {
    preflight::check_capabilities(preflight::effective_capabilities(), need_ptrace).map_err(
        |error| {
            UserError::new(
                Exit::Privileges,
                format!(
                    "insufficient privileges: {error}; run mapscope as root (sudo) or grant \
                     those capabilities (securityContext.capabilities.add in Kubernetes, \
                     AmbientCapabilities in systemd)"
                ),
            )
        },
    )?;
    let sysfs = preflight::sysfs_root();
    preflight::check_kernel(&sysfs).map_err(|error| {
        UserError::new(
            Exit::KernelFeature,
            format!("unsupported kernel: {error}; mapscope needs a Linux kernel built with uprobes and BTF (5.15 or newer)"),
        )
    })?;
    preflight::check_uprobe(&sysfs).map_err(|error| match error {
        preflight::PreflightError::UprobeDenied(_) => UserError::new(
            Exit::Privileges,
            format!(
                "insufficient privileges: {error} (with CAP_SYS_PTRACE to read other \
                 processes): run mapscope as root, or add SYS_ADMIN to the capabilities"
            ),
        ),
        other => UserError::new(Exit::KernelFeature, format!("unsupported kernel: {other}")),
    })?;
    // What a probe hit costs is measured once per process, in a child of its own: from now,
    // while the target is read and its probes planned, so that the overhead governor can judge
    // the first probes soon after they go in (a malloc-heavy program pays for every moment
    // its allocator's probes stay on before that).
    crate::probes::calibrate::TrapCost::start();
    Ok(())
}

pub fn open_process(pid: u32) -> Result<Process, UserError> {
    Process::open(pid).map_err(|error| match error {
        ProcessError::NotFound { .. } => UserError::new(
            Exit::NoSuchProcess,
            format!("PID {pid} does not exist: check it with `ps -p {pid}` (in a container, use the PID as seen from mapscope's PID namespace)"),
        ),
        ProcessError::NoProgram { what, .. } => UserError::new(
            if what.contains("zombie") {
                Exit::NoSuchProcess
            } else {
                Exit::NotGo
            },
            error.to_string(),
        ),
        ProcessError::Denied { .. } => UserError::new(
            Exit::Privileges,
            format!("{error}: run mapscope as root or with CAP_SYS_PTRACE"),
        ),
        ProcessError::Thread { pid: group, .. } => UserError::new(
            Exit::NoSuchProcess,
            format!("{error}: use --pid {group}"),
        ),
        ProcessError::Other { .. } => UserError::new(Exit::Internal, error.to_string()),
    })
}

/// The one-line user error for a Go executable that could not be read or analysed.
pub fn go_binary_error(error: GoBinaryError, who: &str, alive: impl Fn() -> bool) -> UserError {
    match error {
        GoBinaryError::NotGo { .. } | GoBinaryError::NotElf { .. } => UserError::new(
            Exit::NotGo,
            format!("{who} is not a Go program: {error}; mapscope profiles Go programs only"),
        ),
        GoBinaryError::CorruptBuildInfo { .. } | GoBinaryError::NoFunctionTable { .. } => {
            UserError::new(
                Exit::NotGo,
                format!("{who}: {error}; the executable may be damaged"),
            )
        }
        GoBinaryError::PreGo118 { .. } => UserError::new(
            Exit::UnsupportedGo,
            format!(
                "{who}: {error}; mapscope supports Go {}.{} and newer: rebuild it with a current Go",
                OLDEST_SUPPORTED.0, OLDEST_SUPPORTED.1
            ),
        ),
        GoBinaryError::Read { ref source, .. } => {
            let exit = match source.kind() {
                _ if !alive() => Exit::NoSuchProcess,
                std::io::ErrorKind::PermissionDenied => Exit::Privileges,
                std::io::ErrorKind::NotFound => Exit::NotGo,
                // A folder, a device, a FIFO, a file too large to be a program.
                std::io::ErrorKind::InvalidInput => {
                    return UserError::new(
                        Exit::NotGo,
                        format!("{error}: name the Go program's executable file"),
                    );
                }
                _ => Exit::Internal,
            };
            UserError::new(exit, error.to_string())
        }
    }
}

/// The runtime table row for this binary's Go release, or the "too old" error.
pub fn stw_support(binary: &GoBinary, who: &str) -> Result<&'static StwAbi, UserError> {
    let go_version = &binary.build_info.go_version;
    match abi::stw_abi(binary.version) {
        Support::Known(row) => Ok(row),
        Support::Newer(row) => {
            tracing::warn!(
                "{who} was built by {go_version}, newer than the newest Go mapscope knows \
                 (1.{}); assuming the 1.{} runtime layout: check the numbers against \
                 runtime/metrics before trusting them",
                NEWEST_KNOWN.1,
                NEWEST_KNOWN.1
            );
            Ok(row)
        }
        Support::Unsupported => Err(UserError::new(
            Exit::UnsupportedGo,
            format!(
                "{who} was built by {go_version}, which mapscope does not support: it supports \
                 Go 1.19 and 1.21 through 1.{}; rebuild it with a supported Go",
                NEWEST_KNOWN.1
            ),
        )),
        Support::TooOld => Err(UserError::new(
            Exit::UnsupportedGo,
            format!(
                "{who} was built by {go_version}, older than the oldest Go mapscope supports \
                 ({}.{}): rebuild it with Go {}.{} or newer",
                OLDEST_SUPPORTED.0, OLDEST_SUPPORTED.1, OLDEST_SUPPORTED.0, OLDEST_SUPPORTED.1
            ),
        )),
    }
}

/// Read the target's executable and work out where the probes go.
pub fn understand(process: Process, options: &Options) -> Result<Target, UserError> {
    understand_with(process, options, &Binaries::default())
}

/// Executables already read, by (device, inode): targets running the same program share one
/// copy of it (the daemon's many replicas of a service), freed with the last of them.
#[derive(Default)]
pub struct Binaries(
    std::sync::Mutex<std::collections::HashMap<(u64, u64), std::sync::Weak<GoBinary>>>,
);

impl Binaries {
    /// The process's executable, read and analysed; `None` when it is not a Go program.
    fn open(&self, process: &Process, who: &str) -> Result<Option<Arc<GoBinary>>, UserError> {
        use std::os::unix::fs::MetadataExt as _;
        let path = process.exe_path();
        let key = std::fs::metadata(&path)
            .ok()
            .map(|metadata| (metadata.dev(), metadata.ino()));
        if let Some(key) = key
            && let Some(known) = self
                .0
                .lock()
                .ok()
                .and_then(|known| known.get(&key).and_then(std::sync::Weak::upgrade))
        {
            return Ok(Some(known));
        }
        let binary = match GoBinary::open(&path, abi::WANTED) {
            Ok(binary) => Arc::new(binary),
            Err(GoBinaryError::NotGo { .. }) => return Ok(None),
            Err(error) => return Err(go_binary_error(error, who, || process.is_alive())),
        };
        if let (Some(key), Ok(mut known)) = (key, self.0.lock()) {
            known.retain(|_, binary| binary.strong_count() > 0);
            known.insert(key, Arc::downgrade(&binary));
        }
        Ok(Some(binary))
    }
}

/// `understand`, sharing executables already read through `binaries`.
pub fn understand_with(
    process: Process,
    options: &Options,
    binaries: &Binaries,
) -> Result<Target, UserError> {
    let who = format!("PID {} ({})", process.pid, process.exe_name);
    let go = match binaries.open(&process, &who)? {
        Some(binary) => Some(understand_go(&process, binary, options, &who)?),
        None => None,
    };
    // The C allocators it maps: a program's only heap without a Go runtime, and with one the
    // heap cgo code allocates from, which the Go runtime does not see.
    let native = match native::for_process(process.pid, go.as_ref().map(|go| go.binary.data())) {
        Ok(allocators) => {
            // Library objects are numbered after the executable (`ProbePoint::object`).
            Some(NativePlan::new(
                process.pid,
                &allocators,
                1,
                options.native_inuse,
            ))
        }
        Err(_) if !process.is_alive() => {
            return Err(UserError::new(
                Exit::NoSuchProcess,
                format!("{who} exited while mapscope was reading it"),
            ));
        }
        Err(error) if go.is_none() => return Err(neither_go_nor_native(&who, &error)),
        // A Go program without cgo has none: nothing to say.
        Err(error) => {
            tracing::debug!("{who}: no native allocator probed: {error}");
            None
        }
    };
    if !process.is_alive() {
        return Err(UserError::new(
            Exit::NoSuchProcess,
            format!("{who} exited while mapscope was reading it"),
        ));
    }
    let container = process.container_id().unwrap_or_default();
    Ok(Target {
        process,
        go,
        native,
        container,
    })
}

/// The error for a command that needs a Go runtime, given a target without one: `what` it
/// does.
pub fn not_go(target: &Target, what: &str) -> UserError {
    UserError::new(
        Exit::NotGo,
        format!(
            "PID {} ({}) is not a Go program: {what}; attach, run or the daemon count its native \
             allocations",
            target.process.pid, target.process.exe_name
        ),
    )
}

/// A program with neither a Go runtime nor a C allocator mapscope knows.
pub fn neither_go_nor_native(who: &str, error: &NativeError) -> UserError {
    UserError::new(
        Exit::NotGo,
        format!(
            "{who} is not a Go program, and {error}; mapscope profiles Go programs and programs \
             that allocate through glibc, musl, jemalloc, tcmalloc or mimalloc"
        ),
    )
}

/// Where a Go program's probes go, and what mapscope reads of its runtime.
fn understand_go(
    process: &Process,
    binary: Arc<GoBinary>,
    options: &Options,
    who: &str,
) -> Result<GoRuntime, UserError> {
    let abi = stw_support(&binary, who)?;
    check_dwarf(&binary, abi, who)?;
    let mut points =
        stw::plan(&binary, abi, options.stw_stopping).map_err(|error| plan_error(who, error))?;
    if !options.stw_stopping && stw::inside_pause(&points) > 0 {
        tracing::warn!(
            "{who}: its runtime.startTheWorldWithSema keeps no copy of its argument that \
             mapscope can read at the return, so pauses are read at its entry, while the world \
             is stopped: each pause is a probe hit longer"
        );
    }
    match probes::gc_trigger::plan(&binary) {
        Ok(trigger_points) => points.extend(trigger_points),
        Err(error) => tracing::warn!("{who}: GC cycles will not be counted by trigger: {error}"),
    }
    let alloc_point = probes::alloc::plan(&binary);
    match alloc_point {
        Some(point) => points.push(point),
        None => tracing::warn!("{who}: no runtime.profilealloc found; allocation sampling is off"),
    }
    let maps = options
        .maps
        .as_ref()
        .and(abi::map_abi(binary.version, abi::has_bucket_maps(&binary)));
    let mut windowed_points = Vec::new();
    if let (Some(row), Some(map_options)) = (maps, options.maps.as_ref()) {
        if map_options.discovery.is_some() {
            windowed_points = probes::maps::plan_access(&binary, row);
        }
        let (map_points, missing) = probes::maps::plan(&binary, row, map_options.creations);
        if !missing.is_empty() {
            // The linker leaves out what a program never calls (no map growth, no sized make).
            tracing::info!(
                "{who}: no {} in this binary; those map events cannot happen in it",
                missing.join(", ")
            );
        }
        points.extend(map_points);
    }
    // A PIE's code and variables move with its load address.
    let load_bias = match (binary.layout.pie, binary.lowest_address()) {
        (true, Some(lowest)) => memory::executable_base(process.pid)
            .map(|base| base.saturating_sub(lowest))
            .unwrap_or(0),
        _ => 0,
    };
    let variable = |name| {
        binary
            .function(name)
            .map(|variable| variable.address + load_bias)
    };
    let mem_profile_rate = variable(abi::MEM_PROFILE_RATE);
    let memory_profiling_disabled = variable(abi::DISABLE_MEMORY_PROFILING);
    let vitals = match crate::gobin::vitals::plan(&binary) {
        Ok(plan) => {
            for (vital, why) in &plan.missing {
                tracing::debug!("{who}: no {}: {why}", vital.name);
            }
            Some(plan)
        }
        Err(why) => {
            tracing::warn!("{who}: the Go runtime's vitals will not be read: {why}");
            None
        }
    };
    Ok(GoRuntime {
        go_version: binary.build_info.go_version.clone(),
        abi,
        points,
        windowed_points,
        mem_profile_rate,
        memory_profiling_disabled,
        sampling_allocations: alloc_point.is_some(),
        counting_allocations: false,
        maps,
        binary,
        load_bias,
        vitals,
    })
}

/// Where the binary carries DWARF, its runtime must look the way the table says; otherwise
/// mapscope would read the wrong registers or offsets, so it refuses rather than guess.
pub fn check_dwarf(binary: &GoBinary, abi: &StwAbi, who: &str) -> Result<(), UserError> {
    match binary.dwarf_disagreements(&abi.dwarf) {
        Some(found) if !found.is_empty() => Err(UserError::new(
            Exit::UnsupportedGo,
            format!(
                "{who}: its Go runtime ({}) differs from what mapscope knows of that release: {}; \
                 please report this with the Go version",
                binary.build_info.go_version,
                found.join("; ")
            ),
        )),
        _ => Ok(()),
    }
}

pub fn plan_error(who: &str, error: PlanError) -> UserError {
    match error {
        PlanError::MissingFunction(_) => UserError::new(
            Exit::MissingSymbols,
            format!(
                "{who}: {error}; this Go runtime may have renamed it: please report the Go version"
            ),
        ),
        other => UserError::new(Exit::NotGo, format!("{who}: {other}")),
    }
}

pub fn bind(listen: SocketAddr) -> Result<std::net::TcpListener, UserError> {
    export::http::bind(listen).map_err(|error| {
        UserError::new(
            Exit::ListenAddress,
            format!("cannot listen on {listen}: {error}; pick another address with --listen (port 0 picks a free one)"),
        )
    })
}

/// Allocation sites the exit summary lists.
const SUMMARY_SITES: usize = 5;

/// What a profiling session leaves: the pause tally for the summary, and the allocation profile
/// if allocations were sampled.
pub struct Outcome {
    pub book: PauseBook,
    pub allocs: Option<export::pprof::Profile>,
    /// Allocation estimates and top sites, when allocations were sampled.
    pub alloc_summary: Option<crate::model::alloc::AllocSummary>,
    /// Probe events lost, by reason (only reasons with losses).
    pub dropped: std::collections::BTreeMap<String, u64>,
    /// How long the probes were in place.
    pub watched: Duration,
    /// The last snapshot of each tracked map.
    pub maps: Vec<MapReport>,
    /// What the map collector knew at the end, when maps were tracked.
    pub map_stats: Option<MapStats>,
    /// The runtime's vitals compared between attach and detach, when they could be read.
    pub runtime: Option<crate::model::vitals::RuntimeSummary>,
    /// What mapscope cost the target while attached, when it could be measured.
    pub cost: Option<crate::model::overhead::CostSummary>,
    /// Each native allocator's totals, when the target's were probed.
    pub native: Vec<crate::collect::native::NativeSummary>,
    /// The native allocation profile, when a native allocation was sampled.
    pub native_profile: Option<export::pprof::Profile>,
}

impl Target {
    /// The Go release, empty for a program without a Go runtime (the `go_version` label).
    pub fn go_version(&self) -> &str {
        self.go.as_ref().map_or("", |go| &go.go_version)
    }

    /// What it runs, for messages: its Go release, or that it has none.
    pub fn runtime(&self) -> &str {
        self.go
            .as_ref()
            .map_or("native, no Go runtime", |go| &go.go_version)
    }

    /// Every probe attached from the start: the Go runtime's and the native allocators'.
    fn points(&self) -> Vec<ProbePoint> {
        let go = self.go.iter().flat_map(|go| &go.points);
        let native = self.native.iter().flat_map(|native| &native.points);
        go.chain(native).copied().collect()
    }

    /// The files the probes go in (`ProbePoint::object`): the executable, then the native
    /// allocators' libraries.
    fn objects(&self) -> probes::loaded::Objects {
        std::iter::once(self.process.exe_path())
            .chain(
                self.native
                    .iter()
                    .flat_map(|native| native.libraries.clone()),
            )
            .collect()
    }
}

impl GoRuntime {
    /// A reader of the runtime's count of bytes allocated (`gcController.totalAlloc`, which
    /// `/gc/heap/allocs:bytes` is made of), where this release has it and its globals were
    /// found.
    fn allocated_bytes_counter(&self, pid: u32) -> Option<crate::collect::governor::WorkCounter> {
        let plan = self.vitals.as_ref()?;
        let controller = plan.globals.gc_controller?;
        let offset = plan.row.gc_controller.total_alloc;
        let (pid, address) = (pid, controller + self.load_bias + offset);
        Some(Arc::new(move || {
            memory::read_i64(pid, address)
                .ok()
                .map(|bytes| bytes as u64)
        }))
    }

    /// Which allocation probes go in (the runtime's sampler, counted mode or exact mode), and
    /// the sampler's tables to keep small when it will find nothing; `pid` runs this runtime.
    fn choose_allocation_probes(&mut self, pid: u32, options: &Options) -> Vec<&'static str> {
        // Most services run with the runtime's allocation sampling off (the linker turns it off in
        // programs that never reference runtime.MemProfile), so their sampler never fires. (`run`
        // stops the program before the runtime has zeroed the rate: the linker's flag says it
        // will.)
        let read = |address: Option<u64>| address.and_then(|at| memory::read_i64(pid, at).ok());
        let sampling_off = read(self.mem_profile_rate) == Some(0)
            || read(self.memory_profiling_disabled).is_some_and(|word| word & 0xff == 1);
        if options.alloc_exact {
            let exact =
                probes::alloc::plan_every_allocation(&self.binary, probes::alloc::ALLOC_EXACT);
            tracing::warn!(
                "exact allocation counting puts a uprobe on every allocation ({} entry points): \
                 each costs about a microsecond, so expect the target to run several times slower \
                 while attached (mapscope_probe_overhead_ratio{{probe=\"alloc_exact\"}} says how \
                 much)",
                exact.len()
            );
            self.points.extend(exact);
        } else if sampling_off && options.max_overhead > 0.0 && self.sampling_allocations {
            // Counted mode: mapscope counts the allocations itself, with the every-allocation
            // probes the governor holds within the budget, and samples stacks by bytes as the
            // runtime would have. (Without a budget that would be exact mode's cost, unasked.)
            let counted =
                probes::alloc::plan_every_allocation(&self.binary, probes::alloc::ALLOC_COUNT);
            if !counted.is_empty() {
                tracing::info!(
                    "PID {}: the runtime's allocation sampling is off (runtime.MemProfileRate is \
                     0); mapscope counts allocations itself, part of the time within the budget \
                     (--max-overhead), and scales them up (mapscope_probe_duty_cycle{{probe=\
                     \"alloc_count\"}} says how much of the time)",
                    pid
                );
                self.points
                    .retain(|point| point.program != probes::alloc::ALLOC_SAMPLE);
                self.points.extend(counted);
                self.counting_allocations = true;
            }
        }
        if sampling_off && !self.counting_allocations {
            // The sampler never fires: its tables (3 MB of kernel memory where the kernel
            // preallocates them) get a few slots, enough to show as losses if the program turns
            // sampling on later.
            let [first, second] = profiler_common::alloc::ALLOC_SAMPLE_TABLES;
            vec![first, second, "ALLOC_STACKS"]
        } else {
            Vec::new()
        }
    }
}

/// Probes in place, not yet collecting: `run` resumes its stopped child in between.
pub struct Attached {
    pub target: Target,
    probes: AttachedProbes,
}

/// Whether an error comes from the kernel saying EACCES or EPERM somewhere down its chain.
fn denied(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::PermissionDenied
        {
            return true;
        }
        current = error.source();
    }
    false
}

/// The probe families the overhead governor may take off part of the time: those whose hits
/// follow the target's activity without a bound (see `model::governor`).
/// (`HIT_NATIVE` last: `--native-inuse` leaves it out.)
const GOVERNED_FAMILIES: [u32; 4] = [
    profiler_common::counters::HIT_ALLOC,
    profiler_common::counters::HIT_ALLOC_COUNT,
    profiler_common::counters::HIT_MAP_EVENT,
    profiler_common::counters::HIT_NATIVE,
];

/// The families the overhead governor holds: none without a budget, and not the native one
/// while it tracks live blocks (`tracking_live`: every free must be seen for a tracked block
/// not to stay live for ever).
fn governed_families(options: &Options, tracking_live: bool) -> &'static [u32] {
    match (options.max_overhead > 0.0, tracking_live) {
        (false, _) => &[],
        (true, true) => &GOVERNED_FAMILIES[..3],
        (true, false) => &GOVERNED_FAMILIES,
    }
}

pub fn attach(mut target: Target, options: &Options) -> anyhow::Result<Attached> {
    let pid = target.process.pid;
    // Without a Go runtime, no family fills the sampler's tables: `load` shrinks them.
    let mut small_tables = match target.go.as_mut() {
        Some(go) => go.choose_allocation_probes(pid, options),
        None => Vec::new(),
    };
    let tracking_live = options.native_inuse && target.native.is_some();
    if tracking_live {
        tracing::warn!(
            "PID {pid}: --native-inuse keeps the native allocation probes on all the time, with \
             a return probe on each allocating call: each call into the C allocator costs a \
             microsecond or two (mapscope_probe_overhead_ratio{{probe=\"native\"}} says how \
             much), and --max-overhead does not hold them"
        );
    } else {
        // The live-heap tables stay empty.
        small_tables.extend(["NATIVE_PENDING", "NATIVE_LIVE"]);
    }
    // The native probes' links are kept whoever holds them (the governor, or the native
    // collector, which adds and removes those of libraries mapped and unmapped later).
    let mut kept = governed_families(options, tracking_live).to_vec();
    if target.native.is_some() && !kept.contains(&HIT_NATIVE) {
        kept.push(HIT_NATIVE);
    }
    let process = &target.process;
    let windowed = target
        .go
        .as_ref()
        .map(|go| go.windowed_points.clone())
        .unwrap_or_default();
    match AttachedProbes::attach(
        process.pid,
        target.objects(),
        target.native.as_ref(),
        &target.points(),
        &windowed,
        &kept,
        &small_tables,
    ) {
        Ok(probes) => Ok(Attached { target, probes }),
        Err(_) if !process.is_alive() => Err(UserError::new(
            Exit::NoSuchProcess,
            format!(
                "PID {} ({}) exited while mapscope was attaching",
                process.pid, process.exe_name
            ),
        )
        .into()),
        // The preflight's uprobe passed, yet the kernel refused this one (an LSM, a policy
        // that tells processes apart): still a matter of privileges, said as such.
        Err(error) if denied(&error) => Err(UserError::new(
            Exit::Privileges,
            format!(
                "attaching to PID {}: the kernel refused: {error}; run mapscope as root, or with \
                 CAP_SYS_ADMIN and CAP_SYS_PTRACE, and check the LSM policy (SELinux, AppArmor) \
                 for perf_event_open and bpf",
                process.pid
            ),
        )
        .into()),
        Err(error) => {
            Err(anyhow::Error::new(error).context(format!("attaching to PID {}", process.pid)))
        }
    }
}

/// What this process's HTTP endpoint serves: one registry, and each target's latest allocation
/// profile and map snapshots by PID. Shared by every target of `mapscope daemon`.
#[derive(Clone)]
pub struct Exported {
    pub metrics: Arc<Metrics>,
    pub views: export::http::TargetViews,
}

impl Exported {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics: Arc::new(metrics),
            views: export::http::TargetViews::default(),
        }
    }
}

/// Serve `exported` on `listener` until `shutdown` resolves. `web` adds TLS and basic auth.
pub fn serve(
    listener: std::net::TcpListener,
    exported: &Exported,
    web: Option<Arc<export::webconfig::WebConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::from_std(listener).context("serving metrics")?;
    let address = listener.local_addr().context("serving metrics")?;
    let served = export::http::Served {
        metrics: Arc::clone(&exported.metrics),
        targets: exported.views.clone(),
    };
    Ok((
        address,
        tokio::spawn(export::http::serve(listener, served, web, shutdown)),
    ))
}

/// A target's presence in the endpoint: removed on drop.
struct Registered<'a> {
    exported: &'a Exported,
    metrics: Arc<crate::export::metrics::TargetMetrics>,
    pid: u32,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.metrics.remove();
        self.exported.views.remove(self.pid);
        self.exported.metrics.targets_changed(-1);
    }
}

impl Attached {
    /// Serve metrics and collect until `stop` resolves; then detach every probe, drain the last
    /// events and return the tally for the summary. (`attach`, `run`, `profile`, `heatmap`.)
    pub async fn profile(
        self,
        listener: Option<std::net::TcpListener>,
        options: Options,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<Outcome> {
        self.profile_then(listener, options, stop, || {}).await
    }

    /// `profile`, calling `watching` once collection has started (`run` lets a traced
    /// command go on then).
    pub async fn profile_then(
        self,
        listener: Option<std::net::TcpListener>,
        options: Options,
        stop: impl std::future::Future<Output = ()>,
        watching: impl FnOnce(),
    ) -> anyhow::Result<Outcome> {
        let exported = Exported::new(Metrics::new().context("creating the metrics registry")?);
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let process = &self.target.process;
        let what = format!(
            "attached {} probes to PID {} ({}, {})",
            self.probes.count,
            process.pid,
            process.exe_name,
            self.target.runtime(),
        );
        let (server, announce) = match listener {
            Some(listener) => {
                let (address, server) = serve(listener, &exported, None, async {
                    let _ = shutdown_rx.await;
                })?;
                (
                    Some(server),
                    format!("{what}; metrics on http://{address}/metrics"),
                )
            }
            None => (None, what),
        };
        // Said once the target's views are registered: an endpoint named here answers for it.
        let ready = move || {
            tracing::info!("{announce}");
            watching();
        };
        let outcome = self.collect(&exported, options, stop, ready).await;
        let _ = shutdown.send(());
        if let Some(server) = server {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!("metrics server stopped with an error: {error}"),
                Err(error) => tracing::warn!("metrics server task failed: {error}"),
            }
        }
        outcome
    }

    /// Collect into `exported` until `stop` resolves; then detach every probe, drain the last
    /// events, remove the target's series and views, and return the tally. The one code path
    /// for a target, whether alone or one of the daemon's.
    /// `ready` runs once the target's series and views are registered.
    pub async fn collect(
        mut self,
        exported: &Exported,
        options: Options,
        stop: impl std::future::Future<Output = ()>,
        ready: impl FnOnce(),
    ) -> anyhow::Result<Outcome> {
        let process = &self.target.process;
        let go = self.target.go.as_ref();
        let who = TargetIdentity {
            pid: process.pid,
            exe: process.exe_name.clone(),
            go_version: self.target.go_version().to_owned(),
            container: self.target.container.clone(),
        };
        let target_metrics = Arc::new(exported.metrics.target(&who));
        let allocs = AllocProfile::default();
        let native_profile = AllocProfile::default();
        let map_view = MapView::default();
        exported.views.insert(
            process.pid,
            export::http::TargetView {
                name: format!(
                    "PID {} ({}, {})",
                    process.pid,
                    process.exe_name,
                    self.target.runtime()
                ),
                allocs: Arc::clone(&allocs),
                native: Arc::clone(&native_profile),
                maps: Arc::clone(&map_view),
            },
        );
        exported.metrics.targets_changed(1);
        // However this ends, the target's series and views go with it.
        let _registered = Registered {
            exported,
            metrics: Arc::clone(&target_metrics),
            pid: process.pid,
        };
        ready();

        let vitals = go.and_then(|go| {
            let plan = go.vitals.as_ref()?;
            Some(crate::process::vitals::VitalsReader::new(
                process.pid,
                plan.row,
                plan.globals.biased(go.load_bias),
            ))
        });
        // For the exit summary: the runtime as it was at attach, and (below) at detach.
        let read_vitals = || {
            let mut raw = vitals.as_ref()?.read().ok()?;
            crate::model::vitals::sanitize(&mut raw);
            process.is_alive().then_some(raw)
        };
        let vitals_at_attach = read_vitals();
        if let (Some(plan), Some(reader)) = (go.and_then(|go| go.vitals.as_ref()), &vitals) {
            target_metrics.read_vitals(
                reader.clone(),
                plan.vitals.clone(),
                Box::new(process.still_runs_its_image()),
            );
        }
        let watching = std::time::Instant::now();
        let mut governed = self.probes.governed();
        // The native probes follow the libraries the target maps and unmaps: the governor
        // applies the changes while it holds them, the native collector otherwise.
        let native_changes = crate::probes::loaded::ProbeChanges::default();
        let native_governed =
            governed_families(&options, options.native_inuse).contains(&HIT_NATIVE);
        let mut native_probes = None;
        if let Some(index) = governed
            .iter()
            .position(|(family, _)| *family == HIT_NATIVE)
        {
            if native_governed {
                governed[index].1.follow(native_changes.clone());
            } else {
                let (_, mut probes) = governed.remove(index);
                probes.follow(native_changes.clone());
                native_probes = Some(probes);
            }
        }
        // The governor's own handle on the hit counters, taken before the pause collector's.
        let governed_maps = if governed.is_empty() {
            None
        } else {
            Some((
                self.probes.hit_counters()?,
                self.probes.take_family_switch()?,
            ))
        };
        let alloc_maps = if go.is_some_and(|go| go.sampling_allocations) {
            Some(self.probes.take_alloc_maps()?)
        } else {
            None
        };
        let maps = self.probes.take_stw_maps()?;
        let mut collector =
            StwCollector::new(maps, go.map(|go| go.abi), Arc::clone(&target_metrics))
                .context("watching the event ring buffer")?;
        let meter = crate::collect::overhead::OverheadMeter::new(
            process.pid,
            self.probes.program_fds(),
            self.probes.trap_kinds(),
            target_metrics.own_cpu().clone(),
            options.max_overhead,
        );
        let readings = meter.subscribe();
        exported.metrics.set_budget(options.max_overhead);
        collector.meter = Some(meter);
        // The allocation sampler runs beside the pause collector until the same stop.
        let (stop_all, stopped) = tokio::sync::watch::channel(false);
        let alloc_collects = alloc_maps.is_some();
        let alloc_task = if let (Some(maps), Some(go)) = (alloc_maps, go) {
            let (pid, address) = (process.pid, go.mem_profile_rate);
            let read_rate = Box::new(move || address.and_then(|at| memory::read_i64(pid, at).ok()));
            let sites = SiteOptions {
                binary: Arc::clone(&go.binary),
                load_bias: go.load_bias,
                top_sites: options.alloc_top_sites,
                half_life: options.alloc_sites_half_life,
            };
            let mut alloc =
                AllocCollector::new(maps, read_rate, Arc::clone(&target_metrics), sites);
            alloc.profile = Arc::clone(&allocs);
            alloc.exact = options.alloc_exact;
            alloc.counted = go.counting_allocations;
            let mut stopped = stopped.clone();
            Some(tokio::spawn(async move {
                alloc
                    .run_until(async move {
                        let _ = stopped.changed().await;
                    })
                    .await;
                alloc
            }))
        } else {
            None
        };
        let native_task = match self.target.native.take() {
            Some(plan) => {
                let mut collector = crate::collect::native::NativeCollector::new(
                    self.probes.take_native_maps()?,
                    plan,
                    process.pid,
                    Arc::clone(&target_metrics),
                    crate::collect::native::NativeSiteOptions {
                        top_sites: options.alloc_top_sites,
                        half_life: options.alloc_sites_half_life,
                    },
                );
                collector.profile = Arc::clone(&native_profile);
                collector.watch_libraries_through(crate::collect::native::LibraryWatch {
                    changes: native_changes,
                    probes: native_probes,
                });
                let mut stopped = stopped.clone();
                Some(tokio::spawn(collector.run_until(async move {
                    let _ = stopped.changed().await;
                })))
            }
            None => None,
        };
        let go = self.target.go.as_ref();
        let map_task = match (
            go.and_then(|go| go.maps.map(|row| (go, row))),
            options.maps.clone(),
        ) {
            (Some((go, row)), Some(map_options)) => {
                let discover = map_options.discovery.is_some();
                let maps = self.probes.take_map_maps()?;
                let stacks = Stacks::new(Arc::clone(&go.binary), go.load_bias);
                let mut collector = MapCollector::new(
                    maps,
                    stacks,
                    row.abi,
                    process.pid,
                    map_options,
                    Arc::clone(&target_metrics),
                    go.binary
                        .type_descriptors()
                        .map(|types| types.start + go.load_bias..types.end + go.load_bias),
                );
                collector.view = Arc::clone(&map_view);
                // Maps held in package-level variables, from the binary's DWARF (tens of
                // milliseconds for a big binary: off the async workers).
                let bias = go.load_bias;
                match tokio::task::block_in_place(|| go.binary.map_variables()) {
                    Ok(variables) => {
                        collector.variables = variables
                            .into_iter()
                            .map(|variable| crate::gobin::variables::MapVariable {
                                address: variable.address + bias,
                                type_descriptor: variable.type_descriptor + bias,
                                ..variable
                            })
                            .collect();
                    }
                    Err(error) => tracing::info!("PID {}: {error}", process.pid),
                }
                if discover && let Some(windowed) = self.probes.windowed() {
                    collector.discovery = Some((windowed, self.probes.take_discovery_maps()?));
                }
                let mut stopped = stopped.clone();
                // Only while the target runs the program its maps belong to: once it is gone
                // (every read would fail), or exec'd or its PID reused (the addresses would
                // point into another program), the last snapshots taken are the ones to show.
                let final_round = options.final_map_snapshot;
                let same_image = process.still_runs_its_image();
                Some(tokio::spawn(async move {
                    collector
                        .run_until(async move {
                            let _ = stopped.changed().await;
                        })
                        .await;
                    if final_round && same_image() {
                        collector.snapshot_round().await;
                    }
                    collector.stats
                }))
            }
            _ => None,
        };
        let governor_task = governed_maps.map(|(hits, switch)| {
            // The allocation families' work: the bytes the runtime counts as allocated.
            let allocated = go.and_then(|go| go.allocated_bytes_counter(process.pid));
            let governed = governed
                .into_iter()
                .map(|(family, probes)| {
                    // The allocation collector takes their counts only once settled.
                    let allocation = [
                        profiler_common::counters::HIT_ALLOC,
                        profiler_common::counters::HIT_ALLOC_COUNT,
                    ]
                    .contains(&family);
                    let native = family == profiler_common::counters::HIT_NATIVE;
                    crate::collect::governor::GovernedFamily {
                        family,
                        probes,
                        work: allocation.then(|| allocated.clone()).flatten(),
                        // The native collector, too, takes counts only once settled.
                        collector_waits: (allocation && alloc_collects) || native,
                        by_time: native,
                    }
                })
                .collect();
            let governor = crate::collect::governor::Governor::new(
                process.pid,
                options.max_overhead,
                governed,
                hits,
                switch,
                Arc::clone(&target_metrics),
                readings,
            );
            let mut stopped = stopped.clone();
            tokio::spawn(governor.run_until(async move {
                let _ = stopped.changed().await;
            }))
        });
        let exec = self.target.process.exec_seen();
        let (pid, exe) = (process.pid, process.exe_name.clone());
        collector
            .run_until(async {
                tokio::select! {
                    () = stop => {}
                    // An exec replaces the program the probes were placed in: its counts would
                    // stop, or mean something else. Never go on silently.
                    () = exec => tracing::warn!(
                        "PID {pid} ({exe}) exec'd a new program image: the probes belonged to \
                         the old one; detaching"
                    ),
                }
                let _ = stop_all.send(true);
            })
            .await;
        // The watch ends here: the rounds and detaching that follow are not the target's time.
        let watched = watching.elapsed();
        let runtime = vitals_at_attach
            .zip(read_vitals())
            .map(|(start, end)| crate::model::vitals::RuntimeSummary::between(&start, &end));
        let alloc = match alloc_task {
            Some(task) => task.await.ok(),
            None => None,
        };
        let map_stats = match map_task {
            Some(task) => task.await.ok(),
            None => None,
        };
        let native = match native_task {
            Some(task) => task.await.ok(),
            None => None,
        };
        if let Some(task) = governor_task {
            let _ = task.await;
        }
        // Each uprobe's removal waits for the kernel to retire it (about 0.1 s apiece here):
        // off the async workers, which serve the other targets and the scrapes meanwhile.
        let probes = self.probes;
        tokio::task::block_in_place(|| probes.detach());
        tracing::info!("detached all probes from PID {}", process.pid);
        collector.drain();
        // What the probes counted until they came off.
        let native = native.map_or_else(Vec::new, |mut native| {
            native.read(true);
            native.summary(SUMMARY_SITES)
        });
        let alloc_summary = alloc.and_then(|mut alloc| {
            alloc.read(true);
            alloc.summary(SUMMARY_SITES)
        });

        let book = std::mem::take(&mut collector.book);
        let allocs = allocs
            .lock()
            .ok()
            .and_then(|mut current| current.take())
            .map(|snapshot| snapshot.to_pprof());
        let maps = map_view.lock().map(|view| view.clone()).unwrap_or_default();
        Ok(Outcome {
            book,
            allocs,
            alloc_summary,
            dropped: target_metrics.dropped_so_far(),
            watched,
            maps,
            map_stats,
            runtime,
            native,
            native_profile: native_profile
                .lock()
                .ok()
                .and_then(|mut current| current.take())
                .map(|snapshot| snapshot.to_pprof()),
            cost: collector.meter.as_ref().and_then(|meter| meter.whole()),
        })
    }
}
