//! The eBPF object for one target: loaded, attached to its probe points, and detached on drop.
use std::{num::NonZeroU32, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, RingBuf, StackTraceMap},
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
use aya_log::EbpfLogger;
use thiserror::Error;

use profiler_common::{
    alloc::AllocKey,
    maps::{MapSiteKey, TrackedMap},
};

use super::stw::ProbePoint;

/// Built by build.rs from profiler-ebpf; aligned because aya parses it in place.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mapscope"));

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
}

/// Kernel maps of the allocation sampler.
pub struct AllocMaps {
    pub samples: PerCpuHashMap<MapData, AllocKey, u64>,
    pub stacks: StackTraceMap<MapData>,
    /// Exact mode's counters (filled only when its probes are attached).
    pub exact: PerCpuArray<MapData, u64>,
}

/// Kernel maps of the Go-map tracker.
pub struct MapMaps {
    /// Maps seen, by header address (an LRU hash).
    pub tracked: HashMap<MapData, u64, TrackedMap>,
    pub site_events: PerCpuHashMap<MapData, MapSiteKey, u64>,
    pub stacks: StackTraceMap<MapData>,
}

/// Kernel maps that the collectors read; they outlive the probes so the last events can still
/// be drained after detaching.
pub struct StwMaps {
    pub events: RingBuf<MapData>,
    pub counters: PerCpuArray<MapData, u64>,
    /// Hits of every probe family (`profiler_common::counters::HIT_*`).
    pub hits: PerCpuArray<MapData, u64>,
}

pub struct AttachedProbes {
    ebpf: Ebpf,
    /// Drains aya-log records into `tracing`. Must outlive the programs: dropping it closes
    /// the log map.
    logger: Option<tokio::task::JoinHandle<()>>,
    pub count: usize,
}

impl AttachedProbes {
    /// Load the programs and attach every point, for `pid` only. The executable is named by
    /// `/proc/PID/exe` so the kernel resolves the right inode in any mount namespace.
    pub fn attach(pid: u32, exe: &Path, points: &[ProbePoint]) -> Result<Self, LoadError> {
        let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT)?;
        let logger = match EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(spawn_log_drain(logger)),
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
            let program: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or(LoadError::MissingProgram { name })?
                .try_into()
                .map_err(|source| LoadError::Program { name, source })?;
            program
                .load()
                .map_err(|source| LoadError::Program { name, source })?;
        }
        let scope = NonZeroU32::new(pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
        for point in points {
            let program: &mut UProbe = ebpf
                .program_mut(point.program)
                .ok_or(LoadError::MissingProgram {
                    name: point.program,
                })?
                .try_into()
                .map_err(|source| LoadError::Program {
                    name: point.program,
                    source,
                })?;
            let attach_point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(point.file_offset),
                cookie: Some(point.cookie),
            };
            program
                .attach(attach_point, exe, scope)
                .map_err(|source| LoadError::Attach {
                    function: point.function,
                    address: point.address,
                    source,
                })?;
        }
        Ok(Self {
            ebpf,
            logger,
            count: points.len(),
        })
    }

    /// Take a map out of the object, as the type the collector reads it as.
    fn take<T: TryFrom<Map>>(&mut self, name: &'static str) -> Result<T, LoadError> {
        self.ebpf
            .take_map(name)
            .and_then(|map| T::try_from(map).ok())
            .ok_or(LoadError::Map(name))
    }

    pub fn take_stw_maps(&mut self) -> Result<StwMaps, LoadError> {
        Ok(StwMaps {
            events: self.take("STW_EVENTS")?,
            counters: self.take("PROBE_COUNTERS")?,
            hits: self.take("PROBE_HITS")?,
        })
    }

    pub fn take_alloc_maps(&mut self) -> Result<AllocMaps, LoadError> {
        Ok(AllocMaps {
            samples: self.take("ALLOC_SAMPLES")?,
            stacks: self.take("ALLOC_STACKS")?,
            exact: self.take("ALLOC_EXACT")?,
        })
    }

    /// Hits of every probe family, summed over CPUs, by `profiler_common::counters::HIT_*`.
    pub fn hit_counts(&mut self) -> Vec<u64> {
        let Ok(hits) = self.take::<PerCpuArray<MapData, u64>>("PROBE_HITS") else {
            return Vec::new();
        };
        (0..profiler_common::counters::HIT_KINDS)
            .map(|kind| hits.get(&kind, 0).map_or(0, |per_cpu| per_cpu.iter().sum()))
            .collect()
    }

    /// Assignment counts by map (`--map-assign-sampling`).
    pub fn take_assign_counts(&mut self) -> Result<PerCpuHashMap<MapData, u64, u64>, LoadError> {
        self.take("MAP_ASSIGNS")
    }

    pub fn take_map_maps(&mut self) -> Result<MapMaps, LoadError> {
        Ok(MapMaps {
            tracked: self.take("TRACKED_MAPS")?,
            site_events: self.take("MAP_SITE_EVENTS")?,
            stacks: self.take("MAP_STACKS")?,
        })
    }

    /// Remove every uprobe from the target. The kernel restores the original instructions.
    pub fn detach(self) {
        let Self { ebpf, logger, .. } = self;
        drop(ebpf);
        if let Some(logger) = logger {
            logger.abort();
        }
    }
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
