//! Native allocations: the C allocators a process allocates through, found in the ELF objects
//! it maps (or, for a file, the ones it would load), not assumed.
//!
//! The allocator behind `malloc` is the first in the dynamic linker's order that defines it:
//! the executable itself (a static allocator), then a library that replaces it (preloaded or
//! linked: jemalloc, tcmalloc, mimalloc), then the C library. Allocators linked under a prefix
//! (`je_`, `_rjem_`, `mi_`) serve the code that calls them by name and are found beside it.
pub mod allocator;
pub mod probes;
pub mod symbols;
pub mod tails;
pub mod wrappers;

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::Serialize;

pub use allocator::{Allocator, AllocatorKind, EntryPoint, Role};

#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} is not an ELF object: {detail}")]
    NotElf { path: String, detail: String },
    #[error("no C allocator found: no malloc in {searched}")]
    NoAllocator { searched: String },
}

/// An allocator and the object it lives in.
#[derive(Clone, Debug, Serialize)]
pub struct FoundAllocator {
    /// The object as the process (or the dynamic linker) names it.
    pub object: PathBuf,
    /// Where mapscope reads it and attaches probes to it: through `/proc/PID/root` for a
    /// process, so an object inside a container is the container's.
    #[serde(skip)]
    pub host_path: PathBuf,
    /// The executable itself (statically linked allocator), not a library.
    pub in_executable: bool,
    /// By entry point, the entry points found to jump into it (`tails::tail_from`).
    #[serde(skip)]
    pub tails: Vec<u64>,
    #[serde(flatten)]
    pub allocator: Allocator,
}

/// Where a process's or a file's allocators may be, in the dynamic linker's order.
struct Candidate<'a> {
    object: PathBuf,
    host_path: PathBuf,
    in_executable: bool,
    /// Its bytes, when the caller has read them already.
    data: Option<&'a [u8]>,
}

/// Libraries that replace `malloc`, by file name.
fn is_allocator_library(name: &str) -> bool {
    ["jemalloc", "tcmalloc", "mimalloc"]
        .iter()
        .any(|allocator| name.contains(allocator))
}

/// The dynamic loader (`ld-linux-x86-64.so.2`; musl's is its C library too).
fn is_dynamic_loader(name: &str) -> bool {
    name.starts_with("ld-linux")
}

/// The C library (glibc's `libc.so.6`, musl's `libc.so` / `ld-musl-*.so.1`).
fn is_c_library(name: &str) -> bool {
    name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("ld-musl-")
}

fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("")
}

/// Put the candidates in the order their `malloc` would win: the executable, allocator
/// libraries, the C library; other libraries are not read (a process may map hundreds).
fn ordered<'a>(executable: Candidate<'a>, libraries: Vec<Candidate<'a>>) -> Vec<Candidate<'a>> {
    let (mut allocators, mut c_libraries) = (Vec::new(), Vec::new());
    for library in libraries {
        let name = file_name(&library.object);
        if is_allocator_library(name) {
            allocators.push(library);
        } else if is_c_library(name) {
            c_libraries.push(library);
        }
    }
    let mut all = vec![executable];
    all.extend(allocators);
    all.extend(c_libraries);
    all
}

/// The allocators among `candidates`: the first that provides `malloc`, and every prefixed one.
fn choose(candidates: Vec<Candidate>) -> Result<Vec<FoundAllocator>, NativeError> {
    let mut found = Vec::new();
    let mut malloc_taken = false;
    let mut searched = Vec::new();
    for candidate in candidates {
        searched.push(candidate.object.display().to_string());
        let read;
        let data = match candidate.data {
            Some(data) => data,
            None => {
                match crate::files::read_regular(&candidate.host_path, crate::files::MAX_EXECUTABLE)
                {
                    Ok(bytes) => {
                        read = bytes;
                        read.as_slice()
                    }
                    // A library is only a candidate: one that cannot be read is left out, but the
                    // executable must be readable.
                    Err(source) if candidate.in_executable => {
                        return Err(NativeError::Read {
                            path: candidate.object.display().to_string(),
                            source,
                        });
                    }
                    Err(error) => {
                        tracing::debug!(object = %candidate.object.display(), %error, "library not read");
                        continue;
                    }
                }
            }
        };
        let file = match object::File::parse(data) {
            Ok(file) => file,
            Err(error) if candidate.in_executable => {
                return Err(NativeError::NotElf {
                    path: candidate.object.display().to_string(),
                    detail: error.to_string(),
                });
            }
            Err(_) => continue,
        };
        for allocator in allocator::allocators_in(&file) {
            if allocator.provides_malloc {
                if malloc_taken {
                    continue;
                }
                malloc_taken = true;
            }
            found.push(FoundAllocator {
                object: candidate.object.clone(),
                host_path: candidate.host_path.clone(),
                in_executable: candidate.in_executable,
                // While the object's bytes are at hand: attaching needs them, and would read the
                // file (the C library: megabytes) a second time.
                tails: tails::tail_from(&file, &allocator.entry_points),
                allocator,
            });
        }
    }
    if found.is_empty() {
        return Err(NativeError::NoAllocator {
            searched: searched.join(", "),
        });
    }
    Ok(found)
}

/// The allocators process `pid` maps, read through `/proc/PID/root`; `executable`: the bytes
/// of `/proc/PID/exe`, when the caller has read them already.
pub fn for_process(
    pid: u32,
    executable: Option<&[u8]>,
) -> Result<Vec<FoundAllocator>, NativeError> {
    let maps_path = format!("/proc/{pid}/maps");
    let maps = std::fs::read_to_string(&maps_path).map_err(|source| NativeError::Read {
        path: maps_path,
        source,
    })?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let code = mapped_code(&maps);
    if code
        .iter()
        .all(|object| *object == exe || is_dynamic_loader(file_name(object)))
    {
        // Stopped at its exec (`mapscope run`): the dynamic loader has not mapped its
        // libraries yet. They are the ones the executable needs, found in its root.
        let read;
        let data = match executable {
            Some(data) => data,
            None => {
                let path = PathBuf::from(format!("/proc/{pid}/exe"));
                read = crate::files::read_regular(&path, crate::files::MAX_EXECUTABLE).map_err(
                    |source| NativeError::Read {
                        path: exe.display().to_string(),
                        source,
                    },
                )?;
                &read
            }
        };
        return for_binary_in(&exe, data, Some(&root), &preloaded(pid, &root));
    }
    let executable = Candidate {
        object: exe.clone(),
        // The executable as the process runs it, even if its file was replaced or deleted.
        host_path: PathBuf::from(format!("/proc/{pid}/exe")),
        in_executable: true,
        data: executable,
    };
    let mut libraries: Vec<Candidate> = Vec::new();
    for object in code {
        if object == exe || libraries.iter().any(|known| known.object == object) {
            continue;
        }
        libraries.push(Candidate {
            host_path: root.join(object.strip_prefix("/").unwrap_or(&object)),
            object,
            in_executable: false,
            data: None,
        });
    }
    choose(ordered(executable, libraries))
}

/// Where mapscope reads (and attaches to) `object` of process `pid`: through its
/// `/proc/PID/root`, so that an object inside a container is the container's.
pub fn in_process_root(pid: u32, object: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root")).join(object.strip_prefix("/").unwrap_or(object))
}

/// The allocator libraries (jemalloc, tcmalloc, mimalloc) whose code a `/proc/PID/maps`
/// listing maps, each once: those a process loaded after attach (`dlopen`) are found here.
pub fn mapped_allocator_libraries(maps: &str) -> Vec<PathBuf> {
    let mut libraries: Vec<PathBuf> = Vec::new();
    for object in mapped_code(maps) {
        if is_allocator_library(file_name(&object)) && !libraries.contains(&object) {
            libraries.push(object);
        }
    }
    libraries
}

/// Every allocator in library `object` of process `pid`, read through its `/proc/PID/root`
/// (a library mapped after attach: its `malloc`, if it has one, is not the process's, but
/// whoever loaded it calls it by its own names or through `dlsym`).
pub fn in_library(pid: u32, object: &Path) -> Result<Vec<FoundAllocator>, NativeError> {
    let host_path = in_process_root(pid, object);
    let data =
        crate::files::read_regular(&host_path, crate::files::MAX_EXECUTABLE).map_err(|source| {
            NativeError::Read {
                path: object.display().to_string(),
                source,
            }
        })?;
    let file = object::File::parse(data.as_slice()).map_err(|error| NativeError::NotElf {
        path: object.display().to_string(),
        detail: error.to_string(),
    })?;
    Ok(allocator::allocators_in(&file)
        .into_iter()
        .map(|allocator| FoundAllocator {
            object: object.to_owned(),
            host_path: host_path.clone(),
            in_executable: false,
            tails: tails::tail_from(&file, &allocator.entry_points),
            allocator,
        })
        .collect())
}

/// The files mapped executable in a `/proc/PID/maps` listing, in address order; deleted ones
/// (a library upgraded under a running process) left out, as their path is no longer theirs.
fn mapped_code(maps: &str) -> Vec<PathBuf> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let perms = fields.nth(1)?;
            let path = fields.nth(3)?;
            (perms.contains('x') && path.starts_with('/') && !line.ends_with(" (deleted)"))
                .then(|| PathBuf::from(path))
        })
        .collect()
}

/// The allocators the executable file at `path`, read as `data`, would run with: its own, and
/// those of the libraries it needs, found where the dynamic linker looks (its run path, then
/// the system's folders).
pub fn for_binary(path: &Path, data: &[u8]) -> Result<Vec<FoundAllocator>, NativeError> {
    for_binary_in(path, data, None, &[])
}

/// The libraries the dynamic loader will load into process `pid` before the ones its
/// executable needs: its `LD_PRELOAD`, then the system's `/etc/ld.so.preload` (in its root).
fn preloaded(pid: u32, root: &Path) -> Vec<PathBuf> {
    let environment = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let from_environment = environment
        .split(|byte| *byte == 0)
        .filter_map(|variable| variable.strip_prefix(b"LD_PRELOAD="))
        .map(|value| String::from_utf8_lossy(value).into_owned())
        .next()
        .unwrap_or_default();
    let from_file = std::fs::read_to_string(root.join("etc/ld.so.preload")).unwrap_or_default();
    from_environment
        .split([' ', ':'])
        .chain(from_file.split_whitespace())
        .filter(|name| !name.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// `for_binary`, its libraries looked for under `root` (a process's `/proc/PID/root`) when
/// given, `preload` loaded before them.
fn for_binary_in(
    path: &Path,
    data: &[u8],
    root: Option<&Path>,
    preload: &[PathBuf],
) -> Result<Vec<FoundAllocator>, NativeError> {
    let needed = needed_libraries(data, path, root).map_err(|detail| NativeError::NotElf {
        path: path.display().to_string(),
        detail,
    })?;
    // Preloaded libraries come first: a preloaded allocator's malloc is the one that wins.
    let needed: Vec<PathBuf> = preload.iter().cloned().chain(needed).collect();
    let executable = Candidate {
        object: path.to_owned(),
        host_path: match root {
            // A process's executable as it runs it.
            Some(root) => root.with_file_name("exe"),
            None => path.to_owned(),
        },
        in_executable: true,
        data: Some(data),
    };
    let libraries = needed
        .into_iter()
        .map(|library| Candidate {
            host_path: match root {
                Some(root) => root.join(library.strip_prefix("/").unwrap_or(&library)),
                None => library.clone(),
            },
            object: library,
            in_executable: false,
            data: None,
        })
        .collect();
    choose(ordered(executable, libraries))
}

/// The folders the dynamic linker searches after an object's run path, on the architectures
/// mapscope runs on (Debian's multiarch folders first).
const SYSTEM_LIBRARY_FOLDERS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

/// The libraries an ELF file names as needed (`DT_NEEDED`), each where it is found (under
/// `root`, when given; named as seen from there), in order.
fn needed_libraries(data: &[u8], path: &Path, root: Option<&Path>) -> Result<Vec<PathBuf>, String> {
    use object::{
        elf::{DT_NEEDED, DT_RPATH, DT_RUNPATH},
        read::elf::{Dyn as _, ElfFile64},
    };
    let file = ElfFile64::<object::Endianness>::parse(data).map_err(|error| error.to_string())?;
    let endian = file.endian();
    let sections = file.elf_section_table();
    let Some((entries, strings_index)) = sections
        .dynamic(endian, data)
        .map_err(|error| error.to_string())?
    else {
        // Statically linked: nothing more to load.
        return Ok(Vec::new());
    };
    let strings = sections
        .strings(endian, data, strings_index)
        .map_err(|error| error.to_string())?;
    let origin = path.parent().unwrap_or(Path::new("/"));
    let (mut needed, mut run_path) = (Vec::new(), Vec::new());
    for entry in entries {
        let Ok(value) = entry.string(endian, strings) else {
            continue;
        };
        let value = String::from_utf8_lossy(value).into_owned();
        match entry.tag32(endian) {
            Some(DT_NEEDED) => needed.push(value),
            Some(DT_RUNPATH | DT_RPATH) => run_path.extend(
                value
                    .split(':')
                    .map(|folder| folder.replace("$ORIGIN", &origin.display().to_string())),
            ),
            _ => {}
        }
    }
    let folders: Vec<PathBuf> = run_path
        .into_iter()
        .map(PathBuf::from)
        .chain(SYSTEM_LIBRARY_FOLDERS.iter().map(PathBuf::from))
        .collect();
    Ok(needed
        .into_iter()
        .filter_map(|name| {
            if name.contains('/') {
                return Some(PathBuf::from(name));
            }
            folders
                .iter()
                .map(|folder| folder.join(&name))
                .find(|candidate| match root {
                    Some(root) => root
                        .join(candidate.strip_prefix("/").unwrap_or(candidate))
                        .is_file(),
                    None => candidate.is_file(),
                })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_code_is_the_executable_file_mappings_in_order() {
        let maps = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1 /usr/bin/redis-server
55d0c0a02000-55d0c0b00000 r-xp 00002000 fd:01 1 /usr/bin/redis-server
7f1e00000000-7f1e00021000 rw-p 00000000 00:00 0 
7f1e10000000-7f1e10022000 r--p 00000000 fd:01 2 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2
7f1e10022000-7f1e10100000 r-xp 00022000 fd:01 2 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2
7f1e20028000-7f1e2017d000 r-xp 00028000 fd:01 3 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e30000000-7f1e30001000 r-xp 00000000 fd:01 4 /tmp/old.so (deleted)
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0 [stack]
7ffd1c1f0000-7ffd1c1f2000 r-xp 00000000 00:00 0 [vdso]
";
        assert_eq!(
            mapped_code(maps),
            [
                "/usr/bin/redis-server",
                "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                "/usr/lib/x86_64-linux-gnu/libc.so.6"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn the_executable_then_allocator_libraries_then_the_c_library() {
        let candidate = |path: &str, in_executable| Candidate {
            object: PathBuf::from(path),
            host_path: PathBuf::from(path),
            in_executable,
            data: None,
        };
        let order: Vec<PathBuf> = ordered(
            candidate("/srv/app", true),
            vec![
                candidate("/lib/x86_64-linux-gnu/libc.so.6", false),
                candidate("/lib/x86_64-linux-gnu/libssl.so.3", false),
                candidate("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", false),
                candidate("/lib/ld-musl-x86_64.so.1", false),
            ],
        )
        .into_iter()
        .map(|candidate| candidate.object)
        .collect();
        assert_eq!(
            order,
            [
                "/srv/app",
                "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/ld-musl-x86_64.so.1"
            ]
            .map(PathBuf::from)
        );
    }
}
