//! The native allocation probes of one process: `native_call` on every entry point of the
//! allocators found (`native::allocator`), each told what its call looks like through its
//! attach cookie (`CallShape`), and the kernel's counts of what they saw.
use std::{num::NonZeroU32, path::PathBuf};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
    programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
};
use profiler_common::native::{
    CallShape, MAX_ENTRY_POINTS, MAX_OWN_CODE, NATIVE_BYTES, NATIVE_FREES, NATIVE_NESTED,
    NATIVE_OBJECTS, NATIVE_REALLOCS, NATIVE_SIZE_BASE, NATIVE_SLOTS, NO_ARG, NO_INDEX,
    ROLE_ALLOCATES, ROLE_FREES, ROLE_REALLOCATES, ZERO_SIZE_ALLOCATES,
};
use thiserror::Error;

use super::{
    FoundAllocator,
    allocator::{AllocatorKind, EntryPoint, Role},
    tails::tail_from,
};

/// The kernel program every entry point gets.
pub const NATIVE_CALL: &str = "native_call";

#[derive(Debug, Error)]
pub enum NativeProbeError {
    #[error("loading the eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("loading eBPF program {NATIVE_CALL}: {0}")]
    Program(Box<aya::programs::ProgramError>),
    #[error("attaching a uprobe to {function} in {}: {source}", object.display())]
    Attach {
        function: String,
        object: PathBuf,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("eBPF map {0} is missing or of the wrong type")]
    Map(&'static str),
    #[error("reading the kernel's native allocation counts: {0}")]
    Read(aya::maps::MapError),
}

/// How `entry`'s arguments read, by its name without the allocator's prefix: where the size
/// is (and what multiplies it), and which pointer it frees or moves.
pub fn shape(entry: &EntryPoint, kind: AllocatorKind, prefix: &str, index: u8) -> CallShape {
    let name = entry
        .function
        .strip_prefix(prefix)
        .unwrap_or(&entry.function);
    let (size_arg, count_arg, pointer_arg) = match entry.role {
        Role::Frees => (NO_ARG, NO_ARG, 0),
        Role::Reallocates => match name {
            "reallocarray" | "mi_reallocarray" => (2, 1, 0),
            _ => (1, NO_ARG, 0),
        },
        Role::Allocates => match name {
            "calloc" | "mi_calloc" => (1, 0, NO_ARG),
            "posix_memalign" => (2, NO_ARG, NO_ARG),
            "aligned_alloc" | "memalign" => (1, NO_ARG, NO_ARG),
            _ => (0, NO_ARG, NO_ARG),
        },
    };
    CallShape {
        role: match entry.role {
            Role::Allocates => ROLE_ALLOCATES,
            Role::Reallocates if kind == AllocatorKind::Mimalloc => {
                ROLE_REALLOCATES | ZERO_SIZE_ALLOCATES
            }
            Role::Reallocates => ROLE_REALLOCATES,
            Role::Frees => ROLE_FREES,
        },
        size_arg,
        count_arg,
        pointer_arg,
        function_bytes: u32::try_from(entry.code_bytes)
            .unwrap_or(u32::MAX)
            .min(0xff_ffff),
        index,
    }
}

/// By entry point index (numbered across `allocators`, in order), the entry points that may
/// tail-jump into it (`native::tails`), for `NATIVE_TAIL_FROM`.
fn tail_table(allocators: &[FoundAllocator]) -> Vec<(u32, u64)> {
    let mut table = Vec::new();
    let mut base = 0u32;
    for found in allocators {
        let count = found.allocator.entry_points.len() as u32;
        if dedicated(found) {
            // Their entry points reach one another through internal functions that the code
            // of the entry points alone does not show (tcmalloc's `realloc(NULL, n)`): any of
            // them may be a tail jump from any other.
            let all = (base..(base + count).min(MAX_ENTRY_POINTS))
                .fold(0u64, |all, index| all | 1 << index);
            for index in base..(base + count).min(MAX_ENTRY_POINTS) {
                table.push((index, all));
            }
        } else if let Ok(data) = std::fs::read(&found.host_path)
            && let Ok(file) = object::File::parse(&*data)
        {
            for (position, from) in tail_from(&file, &found.allocator.entry_points)
                .into_iter()
                .enumerate()
            {
                let index = base + position as u32;
                if index < MAX_ENTRY_POINTS && from != 0 {
                    table.push((index, from.checked_shl(base).unwrap_or(0)));
                }
            }
        }
        base += count;
    }
    table
}

/// Whether `found` is an allocator library of its own (jemalloc, tcmalloc, mimalloc), not the
/// C library (whose `strdup` or `fopen` allocate for the program) nor an executable.
fn dedicated(found: &FoundAllocator) -> bool {
    !found.in_executable
        && matches!(
            found.allocator.kind,
            AllocatorKind::Jemalloc | AllocatorKind::Tcmalloc | AllocatorKind::Mimalloc
        )
}

/// Where the code of `allocators`' dedicated libraries (jemalloc, tcmalloc, mimalloc: not the
/// C library, nor an executable) is mapped in `pid`, from `/proc/PID/maps`.
fn own_code(pid: u32, allocators: &[FoundAllocator]) -> Vec<[u64; 2]> {
    let dedicated: Vec<&std::path::Path> = allocators
        .iter()
        .filter(|found| dedicated(found))
        .map(|found| found.object.as_path())
        .collect();
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            let path = fields.nth(3)?;
            if !perms.contains('x')
                || !dedicated
                    .iter()
                    .any(|object| *object == std::path::Path::new(path))
            {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some([
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
            ])
        })
        .collect()
}

/// What the kernel counted, summed over the CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NativeCounts {
    pub objects: u64,
    pub bytes: u64,
    pub frees: u64,
    pub reallocs: u64,
    /// The allocator's calls to itself, not counted.
    pub nested: u64,
    /// Allocations by size: `(at most this many bytes, count)`, one per power of two.
    pub sizes: Vec<(u64, u64)>,
}

/// The object with `native_call` attached to every entry point of the allocators of `pid`.
/// Dropping it detaches them.
pub struct NativeProbes {
    _ebpf: Ebpf,
    counts: PerCpuArray<MapData, u64>,
    pub attached: usize,
}

impl NativeProbes {
    pub fn attach(pid: u32, allocators: &[FoundAllocator]) -> Result<Self, NativeProbeError> {
        let mut ebpf = aya::EbpfLoader::new().load(crate::probes::object::for_this_kernel())?;
        // Before any probe fires: the code ranges whose calls are the allocator's own.
        let mut own: aya::maps::Array<&mut MapData, [u64; 2]> = ebpf
            .map_mut("NATIVE_OWN_CODE")
            .and_then(|map| aya::maps::Array::try_from(map).ok())
            .ok_or(NativeProbeError::Map("NATIVE_OWN_CODE"))?;
        for (index, range) in (0..MAX_OWN_CODE).zip(own_code(pid, allocators)) {
            own.set(index, range, 0).map_err(NativeProbeError::Read)?;
        }
        let mut tails: aya::maps::Array<&mut MapData, u64> = ebpf
            .map_mut("NATIVE_TAIL_FROM")
            .and_then(|map| aya::maps::Array::try_from(map).ok())
            .ok_or(NativeProbeError::Map("NATIVE_TAIL_FROM"))?;
        for (index, from) in tail_table(allocators) {
            tails.set(index, from, 0).map_err(NativeProbeError::Read)?;
        }
        let program: &mut aya::programs::UProbe = ebpf
            .program_mut(NATIVE_CALL)
            .ok_or(NativeProbeError::Map(NATIVE_CALL))?
            .try_into()
            .map_err(|error| NativeProbeError::Program(Box::new(error)))?;
        program
            .load()
            .map_err(|error| NativeProbeError::Program(Box::new(error)))?;
        let scope = NonZeroU32::new(pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
        let mut attached = 0;
        // Entry points are numbered across the process's allocators (`tail_table`).
        let mut next_index = 0u32;
        for found in allocators {
            let base = next_index;
            next_index += found.allocator.entry_points.len() as u32;
            for (position, entry) in found.allocator.entry_points.iter().enumerate() {
                let index = base + position as u32;
                let index = if index < MAX_ENTRY_POINTS {
                    index as u8
                } else {
                    NO_INDEX
                };
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(entry.file_offset),
                    cookie: Some(
                        shape(entry, found.allocator.kind, found.allocator.prefix, index).encode(),
                    ),
                };
                program
                    .attach(point, &found.host_path, scope)
                    .map_err(|source| NativeProbeError::Attach {
                        function: entry.function.clone(),
                        object: found.object.clone(),
                        source: Box::new(source),
                    })?;
                attached += 1;
            }
        }
        let counts = ebpf
            .take_map("NATIVE_COUNTS")
            .and_then(|map| PerCpuArray::try_from(map).ok())
            .ok_or(NativeProbeError::Map("NATIVE_COUNTS"))?;
        Ok(Self {
            _ebpf: ebpf,
            counts,
            attached,
        })
    }

    pub fn counts(&self) -> Result<NativeCounts, NativeProbeError> {
        let slot = |index: u32| -> Result<u64, NativeProbeError> {
            Ok(self
                .counts
                .get(&index, 0)
                .map_err(NativeProbeError::Read)?
                .iter()
                .sum())
        };
        let mut sizes = Vec::new();
        for index in NATIVE_SIZE_BASE..NATIVE_SLOTS {
            let bound = 1u64
                .checked_shl(index - NATIVE_SIZE_BASE)
                .unwrap_or(u64::MAX);
            sizes.push((bound, slot(index)?));
        }
        Ok(NativeCounts {
            objects: slot(NATIVE_OBJECTS)?,
            bytes: slot(NATIVE_BYTES)?,
            frees: slot(NATIVE_FREES)?,
            reallocs: slot(NATIVE_REALLOCS)?,
            nested: slot(NATIVE_NESTED)?,
            sizes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: &str, role: Role) -> EntryPoint {
        EntryPoint {
            function: function.to_owned(),
            aliases: Vec::new(),
            role,
            address: 0x1000,
            file_offset: 0x1000,
            code_bytes: 0x80,
        }
    }

    #[test]
    fn each_entry_point_reads_its_own_arguments() {
        let shape_of = |name: &str, role: Role, prefix: &str| {
            shape(&entry(name, role), AllocatorKind::Glibc, prefix, 0)
        };
        let malloc = shape_of("malloc", Role::Allocates, "");
        assert_eq!((malloc.size_arg, malloc.count_arg), (0, NO_ARG));
        assert_eq!(malloc.function_bytes, 0x80);
        let calloc = shape_of("calloc", Role::Allocates, "");
        assert_eq!((calloc.size_arg, calloc.count_arg), (1, 0));
        let memalign = shape_of("posix_memalign", Role::Allocates, "");
        assert_eq!(memalign.size_arg, 2);
        let realloc = shape_of("je_realloc", Role::Reallocates, "je_");
        assert_eq!((realloc.pointer_arg, realloc.size_arg), (0, 1));
        let array = shape_of("_rjem_reallocarray", Role::Reallocates, "_rjem_");
        assert_eq!((array.size_arg, array.count_arg), (2, 1));
        let free = shape_of("_ZdlPvm", Role::Frees, "");
        assert_eq!(
            (free.role, free.pointer_arg, free.size_arg),
            (ROLE_FREES, 0, NO_ARG)
        );
        assert_eq!(shape_of("mi_calloc", Role::Allocates, "mi_").size_arg, 1);
    }
}
