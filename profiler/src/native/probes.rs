//! The native allocation probes of one process: `native_call` on every entry point of the
//! allocators found (`native::allocator`), each told what its call looks like through its
//! attach cookie (`CallShape`), and the kernel's counts of what they saw. They are loaded and
//! attached with the target's other probes (`probes::loaded`), so the overhead governor and
//! meter treat them as one more family (`HIT_NATIVE`).
use std::path::PathBuf;

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use profiler_common::native::{
    CallShape, MAX_ALLOCATORS, MAX_ENTRY_POINTS, MAX_FUNCTION_BYTES, MAX_OWN_CODE, MAX_WRAPPERS,
    NATIVE_BYTES, NATIVE_FREES, NATIVE_NESTED, NATIVE_OBJECTS, NATIVE_REALLOCS, NATIVE_SIZE_BASE,
    NATIVE_SLOTS, NO_ARG, NO_INDEX, RETURNS_THROUGH_ARG0, ROLE_ALLOCATES, ROLE_FREES,
    ROLE_REALLOCATES, ZERO_SIZE_ALLOCATES, native_counter,
};

use crate::probes::{loaded::LoadError, stw::ProbePoint};

use super::{
    FoundAllocator,
    allocator::{AllocatorKind, EntryPoint, Role},
};

/// The kernel program every entry point gets.
pub const NATIVE_CALL: &str = "native_call";
/// The return probe of the entry points that allocate, with `--native-inuse`.
pub const NATIVE_RETURN: &str = "native_return";

/// How `entry`'s arguments read, by its name without the allocator's prefix: where the size
/// is (and what multiplies it), and which pointer it frees or moves.
pub fn shape(
    entry: &EntryPoint,
    kind: AllocatorKind,
    prefix: &str,
    allocator: u8,
    index: u8,
) -> CallShape {
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
            Role::Allocates if name == "posix_memalign" => ROLE_ALLOCATES | RETURNS_THROUGH_ARG0,
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
            .min(MAX_FUNCTION_BYTES),
        allocator,
        index,
    }
}

/// By entry point index (numbered across `allocators`, in order, from `first`), the entry
/// points that may tail-jump into it (`native::tails`), for `NATIVE_TAIL_FROM`.
fn tail_table(allocators: &[FoundAllocator], first: u32) -> Vec<(u32, u64)> {
    let mut table = Vec::new();
    let mut base = first;
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
        } else {
            for (position, &from) in found.tails.iter().enumerate() {
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

/// Where the code of the `dedicated` libraries is mapped in `pid`, from `/proc/PID/maps`.
/// A library is known by its inode too: the loader maps a library by the path its symbolic
/// links lead to (`libjemalloc.so.2` → `libjemalloc.so.2.5`), which `/proc/PID/maps` shows.
fn own_code(pid: u32, dedicated: &[PathBuf]) -> Vec<[u64; 2]> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let inodes: Vec<u64> = dedicated
        .iter()
        .filter_map(|object| {
            std::fs::metadata(super::in_process_root(pid, object))
                .ok()
                .map(|metadata| metadata.ino())
        })
        .collect();
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            let inode: u64 = fields.nth(2)?.parse().ok()?;
            let path = fields.next()?;
            let ours = dedicated
                .iter()
                .any(|object| *object == std::path::Path::new(path))
                || inodes.contains(&inode);
            if !perms.contains('x') || !ours {
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

/// What the kernel counted for one allocator, summed over the CPUs.
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

impl NativeCounts {
    /// The counts of each of the first `allocators` allocators (`CallShape::allocator`).
    pub fn read(
        counts: &PerCpuArray<MapData, u64>,
        allocators: usize,
    ) -> Result<Vec<Self>, aya::maps::MapError> {
        (0..allocators.min(MAX_ALLOCATORS as usize) as u8)
            .map(|allocator| {
                let slot = |slot: u32| -> Result<u64, aya::maps::MapError> {
                    Ok(counts
                        .get(&native_counter(allocator, slot), 0)?
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
                Ok(Self {
                    objects: slot(NATIVE_OBJECTS)?,
                    bytes: slot(NATIVE_BYTES)?,
                    frees: slot(NATIVE_FREES)?,
                    reallocs: slot(NATIVE_REALLOCS)?,
                    nested: slot(NATIVE_NESTED)?,
                    sizes,
                })
            })
            .collect()
    }
}

/// An allocator the probes count apart (by `CallShape::allocator`, its index here).
#[derive(Clone, Debug)]
pub struct CountedAllocator {
    pub kind: AllocatorKind,
    /// The object it is in, as the process names it.
    pub object: PathBuf,
}

/// Where the native probes of one process go, and what they must know before the first fires.
#[derive(Clone, Debug, Default)]
pub struct NativePlan {
    /// `native_call` on every entry point; `ProbePoint::object` is `EXECUTABLE` for an
    /// allocator in the executable, else `first_library` + its index in `libraries`.
    pub points: Vec<ProbePoint>,
    /// Whether sampled allocations are tracked until freed (`--native-inuse`).
    pub inuse: bool,
    /// The libraries probed, where mapscope attaches to them (through `/proc/PID/root`).
    pub libraries: Vec<PathBuf>,
    /// The allocators counted, by `CallShape::allocator`.
    pub allocators: Vec<CountedAllocator>,
    /// The dedicated allocator libraries (jemalloc, tcmalloc, mimalloc: not the C library,
    /// nor an executable), as the process names them, and where their code was mapped.
    dedicated: Vec<PathBuf>,
    own_code: Vec<[u64; 2]>,
    tail_from: Vec<(u32, u64)>,
    /// C++'s `operator new`s, where they are mapped (`NATIVE_WRAPPERS`).
    wrappers: Vec<super::wrappers::Wrapper>,
    /// Entry points numbered so far (`CallShape::index`), across allocators.
    next_index: u32,
    /// The `ProbePoint::object` of `libraries[0]`.
    first_library: u8,
}

/// The probes of an allocator library mapped after attach (`NativePlan::add_library`).
#[derive(Clone, Debug)]
pub struct LibraryProbes {
    /// Its allocators, by `CallShape::allocator`.
    pub allocators: std::ops::Range<usize>,
    /// Their points (`ProbePoint::object` left for the probes' owner to set).
    pub points: Vec<ProbePoint>,
    /// Their entries of `NATIVE_TAIL_FROM`.
    pub tail_from: Vec<(u32, u64)>,
}

/// Where an entry point named `function` goes in the order its probes are removed: `malloc`
/// and `free` (under any of `allocators`' prefixes) first, then `calloc` and `realloc`, then
/// the rest, which programs call far less.
fn busiest_first(function: &str, allocators: &[FoundAllocator]) -> u8 {
    let name = allocators
        .iter()
        .find_map(|found| {
            let prefix = found.allocator.prefix;
            (!prefix.is_empty())
                .then(|| function.strip_prefix(prefix))
                .flatten()
        })
        .unwrap_or(function);
    match name {
        "malloc" | "free" => 0,
        "calloc" | "realloc" => 1,
        _ => 2,
    }
}

/// The attach point's name of a probe: entry names come from fixed tables (and a few fixed
/// prefixes), so keeping each once for the life of mapscope stays bounded.
fn intern(name: &str) -> &'static str {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut names = NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = names.iter().find(|known| **known == name) {
        return known;
    }
    let kept: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.push(kept);
    kept
}

impl NativePlan {
    /// The probes for `allocators` of process `pid`; library objects are numbered from
    /// `first_library`. Allocators past `MAX_ALLOCATORS` are left out, and said so.
    /// With `inuse`, the entry points that allocate get a return probe too.
    pub fn new(pid: u32, allocators: &[FoundAllocator], first_library: u8, inuse: bool) -> Self {
        let mut plan = Self {
            inuse,
            first_library,
            ..Self::default()
        };
        let kept = &allocators[..allocators.len().min(MAX_ALLOCATORS as usize)];
        for skipped in &allocators[kept.len()..] {
            tracing::warn!(
                "PID {pid}: more than {MAX_ALLOCATORS} allocators; {} in {} is not counted",
                skipped.allocator.kind.label(),
                skipped.object.display()
            );
        }
        for found in kept {
            let object = if found.in_executable {
                crate::probes::stw::EXECUTABLE
            } else {
                match plan
                    .libraries
                    .iter()
                    .position(|known| *known == found.host_path)
                {
                    Some(known) => first_library + known as u8,
                    None => {
                        plan.libraries.push(found.host_path.clone());
                        first_library + (plan.libraries.len() - 1) as u8
                    }
                }
            };
            let points = plan.add_allocator(found, object);
            plan.points.extend(points);
        }
        // Probes come off in this order, one after another at about 0.1 s each, firing until
        // then: the busiest first.
        plan.points
            .sort_by_key(|point| busiest_first(point.function, kept));
        plan.dedicated = kept
            .iter()
            .filter(|found| dedicated(found))
            .map(|found| found.object.clone())
            .collect();
        plan.own_code = own_code(pid, &plan.dedicated);
        plan.tail_from = tail_table(kept, 0);
        plan.wrappers = super::wrappers::find(pid, true);
        plan
    }

    /// Count `found` as allocator number `self.allocators.len()`, its entry points numbered
    /// on from the last allocator's (`tail_table`); its points, in file `object`.
    fn add_allocator(&mut self, found: &FoundAllocator, object: u8) -> Vec<ProbePoint> {
        let allocator = self.allocators.len() as u8;
        self.allocators.push(CountedAllocator {
            kind: found.allocator.kind,
            object: found.object.clone(),
        });
        let mut points = Vec::new();
        for entry in &found.allocator.entry_points {
            let index = match u8::try_from(self.next_index) {
                Ok(index) if self.next_index < MAX_ENTRY_POINTS => index,
                _ => NO_INDEX,
            };
            self.next_index += 1;
            let shape = shape(
                entry,
                found.allocator.kind,
                found.allocator.prefix,
                allocator,
                index,
            );
            let point = ProbePoint {
                program: NATIVE_CALL,
                function: intern(&entry.function),
                address: entry.address,
                file_offset: entry.file_offset,
                cookie: shape.encode(),
                object,
            };
            points.push(point);
            if self.inuse && entry.role != Role::Frees {
                points.push(ProbePoint {
                    program: NATIVE_RETURN,
                    ..point
                });
            }
        }
        points
    }

    /// Count the allocators of a library process `pid` mapped after attach (`dlopen`), after
    /// those counted so far; `None` when no more fit (`MAX_ALLOCATORS`), said so.
    pub fn add_library(&mut self, pid: u32, found: &[FoundAllocator]) -> Option<LibraryProbes> {
        let first = self.allocators.len();
        if first + found.len() > MAX_ALLOCATORS as usize {
            if let Some(library) = found.first() {
                tracing::warn!(
                    "PID {pid}: more than {MAX_ALLOCATORS} allocators; {} in {} (mapped since \
                     attach) is not counted",
                    library.allocator.kind.label(),
                    library.object.display()
                );
            }
            return None;
        }
        let first_index = self.next_index;
        let mut points = Vec::new();
        for allocator in found {
            points.extend(self.add_allocator(allocator, 0));
        }
        points.sort_by_key(|point| busiest_first(point.function, found));
        self.dedicated.extend(
            found
                .iter()
                .filter(|library| dedicated(library))
                .map(|library| library.object.clone()),
        );
        Some(LibraryProbes {
            allocators: first..self.allocators.len(),
            points,
            tail_from: tail_table(found, first_index),
        })
    }

    /// The points planned at attach in the library mapscope attaches to at `host_path`.
    pub fn library_points(&self, host_path: &std::path::Path) -> Vec<ProbePoint> {
        let Some(index) = self.libraries.iter().position(|known| known == host_path) else {
            return Vec::new();
        };
        let object = self.first_library + index as u8;
        self.points
            .iter()
            .filter(|point| point.object == object)
            .copied()
            .collect()
    }

    /// The allocator libraries probed at attach (not the C library, nor an executable): as
    /// the process names them, and where mapscope attaches to them.
    pub fn dedicated_libraries(&self) -> Vec<PathBuf> {
        self.dedicated.clone()
    }

    /// A library's allocators are unmapped (`dlclose`) or mapped again: their code is no
    /// longer, or again, the allocator's own (`refresh_own_code`).
    pub fn library_mapped(&mut self, object: &std::path::Path, mapped: bool) {
        let known = self.dedicated.iter().any(|library| library == object);
        if mapped && !known {
            self.dedicated.push(object.to_owned());
        } else if !mapped {
            self.dedicated.retain(|library| library != object);
        }
    }

    /// Whether C++'s `operator new` was found mapped (not in a C program; not yet in a
    /// program stopped at its exec: `mapscope run`).
    pub fn wrappers_found(&self) -> bool {
        !self.wrappers.is_empty()
    }

    /// Look for `operator new` again in `pid` (its loader may have mapped libstdc++ since),
    /// and tell the kernel programs where it is; whether it was found.
    pub fn refresh_wrappers(
        &mut self,
        pid: u32,
        table: &mut aya::maps::Array<MapData, [u64; 3]>,
    ) -> bool {
        self.wrappers = super::wrappers::find(pid, false);
        for (index, wrapper) in (0..MAX_WRAPPERS).zip(&self.wrappers) {
            if let Err(error) = table.set(index, wrapper, 0) {
                tracing::warn!("PID {pid}: cannot fill NATIVE_WRAPPERS: {error}");
                return false;
            }
        }
        self.wrappers_found()
    }

    /// Whether the code of every dedicated library was found mapped (not yet, in a program
    /// stopped at its exec: `mapscope run`).
    pub fn own_code_complete(&self) -> bool {
        self.dedicated.is_empty() || !self.own_code.is_empty()
    }

    /// Look for the dedicated libraries' code again in `pid` (its loader has mapped them
    /// since), and tell the kernel programs where it is; whether it was found.
    pub fn refresh_own_code(
        &mut self,
        pid: u32,
        table: &mut aya::maps::Array<MapData, [u64; 2]>,
    ) -> bool {
        self.own_code = own_code(pid, &self.dedicated);
        // The slots past them emptied: a library unmapped since must not stay.
        let ranges = self
            .own_code
            .iter()
            .copied()
            .chain(std::iter::repeat([0, 0]));
        for (index, range) in (0..MAX_OWN_CODE).zip(ranges) {
            if let Err(error) = table.set(index, range, 0) {
                tracing::warn!("PID {pid}: cannot fill NATIVE_OWN_CODE: {error}");
                return false;
            }
        }
        self.own_code_complete()
    }

    /// Tell the kernel programs, before any probe fires, which code is a dedicated
    /// allocator's own (`NATIVE_OWN_CODE`) and which entry points tail-jump into which
    /// (`NATIVE_TAIL_FROM`).
    pub fn fill_tables(&self, ebpf: &mut Ebpf) -> Result<(), LoadError> {
        fn array<'a, T: aya::Pod>(
            ebpf: &'a mut Ebpf,
            name: &'static str,
        ) -> Result<aya::maps::Array<&'a mut MapData, T>, LoadError> {
            ebpf.map_mut(name)
                .and_then(|map| aya::maps::Array::try_from(map).ok())
                .ok_or(LoadError::Map(name))
        }
        let fill = |name| move |source| LoadError::Fill { name, source };
        if !self.own_code_complete() {
            tracing::debug!(
                "the dedicated allocator libraries are not all mapped yet: their code is looked \
                 for again once the program runs"
            );
        }
        let mut own = array::<[u64; 2]>(ebpf, "NATIVE_OWN_CODE")?;
        for (index, range) in (0..MAX_OWN_CODE).zip(&self.own_code) {
            own.set(index, range, 0).map_err(fill("NATIVE_OWN_CODE"))?;
        }
        let mut wrappers = array::<[u64; 3]>(ebpf, "NATIVE_WRAPPERS")?;
        for (index, wrapper) in (0..MAX_WRAPPERS).zip(&self.wrappers) {
            wrappers
                .set(index, wrapper, 0)
                .map_err(fill("NATIVE_WRAPPERS"))?;
        }
        let mut tails = array::<u64>(ebpf, "NATIVE_TAIL_FROM")?;
        for (index, from) in &self.tail_from {
            tails
                .set(*index, from, 0)
                .map_err(fill("NATIVE_TAIL_FROM"))?;
        }
        if self.inuse {
            array::<u32>(ebpf, "NATIVE_INUSE_ON")?
                .set(0, 1, 0)
                .map_err(fill("NATIVE_INUSE_ON"))?;
        }
        Ok(())
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
            shape(&entry(name, role), AllocatorKind::Glibc, prefix, 0, 0)
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
