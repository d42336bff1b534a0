//! Which C allocators an ELF object holds, and their entry points.
//!
//! An allocator is recognised by its own symbols: glibc's `__libc_malloc`, jemalloc's
//! `mallocx`, gperftools' `tc_malloc`, mimalloc's `mi_malloc`, musl's `__libc_malloc_impl`.
//! One that replaces `malloc` (the usual build) is probed on the standard names, plus its own
//! calls that do not go through them (jemalloc's `*allocx`, C++'s operators new and delete
//! where the allocator defines them). One built with a prefix that leaves `malloc` alone
//! (`je_malloc`, Rust's `_rjem_mallocx`, `mi_malloc`) is probed on its prefixed names: the
//! program calls those directly, and the process's `malloc` is another allocator's.
use std::collections::HashMap;

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _, SymbolKind};
use serde::Serialize;

/// Whose allocator it is: the `allocator` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AllocatorKind {
    Glibc,
    Musl,
    Jemalloc,
    Tcmalloc,
    Mimalloc,
    /// Defines `malloc`, and nothing says whose it is.
    Other,
}

impl AllocatorKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Glibc => "glibc",
            Self::Musl => "musl",
            Self::Jemalloc => "jemalloc",
            Self::Tcmalloc => "tcmalloc",
            Self::Mimalloc => "mimalloc",
            Self::Other => "other",
        }
    }
}

/// What a call to an entry point does to the heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Allocates,
    Reallocates,
    Frees,
}

/// The standard C entry points, in the order a name is preferred when several share an
/// address (glibc's `memalign` and `aligned_alloc` are one function).
const STANDARD: &[(&str, Role)] = &[
    ("malloc", Role::Allocates),
    ("calloc", Role::Allocates),
    ("realloc", Role::Reallocates),
    ("reallocarray", Role::Reallocates),
    ("free", Role::Frees),
    ("posix_memalign", Role::Allocates),
    ("aligned_alloc", Role::Allocates),
    ("memalign", Role::Allocates),
    ("valloc", Role::Allocates),
    ("pvalloc", Role::Allocates),
];

/// jemalloc's non-standard API: Rust's jemallocator and many C servers call these directly.
const JEMALLOC_EXTENDED: &[(&str, Role)] = &[
    ("mallocx", Role::Allocates),
    ("rallocx", Role::Reallocates),
    ("dallocx", Role::Frees),
    ("sdallocx", Role::Frees),
];

/// mimalloc's own names, probed when it is linked without overriding `malloc`.
const MIMALLOC_OWN: &[(&str, Role)] = &[
    ("mi_malloc", Role::Allocates),
    ("mi_zalloc", Role::Allocates),
    ("mi_calloc", Role::Allocates),
    ("mi_realloc", Role::Reallocates),
    ("mi_reallocarray", Role::Reallocates),
    ("mi_free", Role::Frees),
    ("mi_malloc_aligned", Role::Allocates),
    ("mi_zalloc_aligned", Role::Allocates),
    ("mi_realloc_aligned", Role::Reallocates),
];

/// C++'s operators new and delete (Itanium names): an allocator that defines them serves
/// `new` without going through `malloc` (libstdc++'s own call `malloc`, and are not probed).
const CXX_OPERATORS: &[(&str, Role)] = &[
    ("_Znwm", Role::Allocates),
    ("_Znam", Role::Allocates),
    ("_ZnwmRKSt9nothrow_t", Role::Allocates),
    ("_ZnamRKSt9nothrow_t", Role::Allocates),
    ("_ZnwmSt11align_val_t", Role::Allocates),
    ("_ZnamSt11align_val_t", Role::Allocates),
    ("_ZnwmSt11align_val_tRKSt9nothrow_t", Role::Allocates),
    ("_ZnamSt11align_val_tRKSt9nothrow_t", Role::Allocates),
    ("_ZdlPv", Role::Frees),
    ("_ZdaPv", Role::Frees),
    ("_ZdlPvm", Role::Frees),
    ("_ZdaPvm", Role::Frees),
    ("_ZdlPvRKSt9nothrow_t", Role::Frees),
    ("_ZdaPvRKSt9nothrow_t", Role::Frees),
    ("_ZdlPvSt11align_val_t", Role::Frees),
    ("_ZdaPvSt11align_val_t", Role::Frees),
    ("_ZdlPvmSt11align_val_t", Role::Frees),
    ("_ZdaPvmSt11align_val_t", Role::Frees),
];

/// Prefixes jemalloc is built with: none (it replaces `malloc`), its own `je_`, and Rust's
/// tikv-jemallocator's `_rjem_`.
const JEMALLOC_PREFIXES: &[&str] = &["", "je_", "_rjem_"];

/// One place a probe goes: a function of the allocator, by the name probed and any other
/// names the same code has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntryPoint {
    pub function: String,
    pub aliases: Vec<String>,
    pub role: Role,
    pub address: u64,
    pub file_offset: u64,
    /// Bytes of its code (the symbol's size; 0 when unknown): a call into an entry point from
    /// inside it is the allocator's own.
    #[serde(skip)]
    pub code_bytes: u64,
}

/// An allocator found in one ELF object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Allocator {
    pub kind: AllocatorKind,
    /// Whether the object defines the standard `malloc` (else only its prefixed names).
    pub provides_malloc: bool,
    /// The prefix of its names (`je_`, `_rjem_`), empty for the standard ones.
    pub prefix: &'static str,
    pub entry_points: Vec<EntryPoint>,
}

/// The defined functions of an ELF object, by name: address, file offset and size.
struct Functions(HashMap<String, (u64, u64, u64)>);

impl Functions {
    fn read(file: &object::File<'_>) -> Self {
        let mut functions = HashMap::new();
        // The static symbol table (if not stripped) and the dynamic one: a shared library's
        // exports are in the second, a static executable's functions only in the first.
        for symbol in file.symbols().chain(file.dynamic_symbols()) {
            if symbol.kind() != SymbolKind::Text || !symbol.is_definition() {
                continue;
            }
            let (Ok(name), address) = (symbol.name(), symbol.address()) else {
                continue;
            };
            if let Some(offset) = file_offset(file, address) {
                functions
                    .entry(name.to_owned())
                    .or_insert((address, offset, symbol.size()));
            }
        }
        Self(functions)
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The entry points among `tables` (each name with `prefix`) this object defines, in table
    /// order.
    fn entry_points(&self, prefix: &str, tables: &[&[(&str, Role)]]) -> Vec<EntryPoint> {
        merge_by_address(tables.iter().copied().flatten().filter_map(|(name, role)| {
            let symbol = format!("{prefix}{name}");
            let &(address, file_offset, code_bytes) = self.0.get(&symbol)?;
            Some(EntryPoint {
                function: symbol,
                aliases: Vec::new(),
                role: *role,
                address,
                file_offset,
                code_bytes,
            })
        }))
    }
}

/// The file offset of a virtual address, through the loadable segments (a uprobe is placed
/// by file offset).
fn file_offset(file: &object::File<'_>, address: u64) -> Option<u64> {
    file.segments().find_map(|segment| {
        let delta = address.checked_sub(segment.address())?;
        let (offset, size) = segment.file_range();
        (delta < size).then_some(offset + delta)
    })
}

/// The allocators an ELF object holds: usually none or one; two when, say, a program links a
/// prefixed jemalloc into an executable that also carries a static libc.
pub fn allocators_in(file: &object::File<'_>) -> Vec<Allocator> {
    let functions = Functions::read(file);
    let mut found = Vec::new();
    // Which allocator `malloc` is, by the marks each leaves.
    let jemalloc_prefix = JEMALLOC_PREFIXES
        .iter()
        .copied()
        .filter(|prefix| functions.has(&format!("{prefix}mallocx")))
        .collect::<Vec<_>>();
    if functions.has("malloc") {
        let (kind, tables): (AllocatorKind, &[&[(&str, Role)]]) = if jemalloc_prefix.contains(&"") {
            (
                AllocatorKind::Jemalloc,
                &[STANDARD, JEMALLOC_EXTENDED, CXX_OPERATORS],
            )
        } else if functions.has("tc_malloc") {
            (AllocatorKind::Tcmalloc, &[STANDARD, CXX_OPERATORS])
        } else if functions.has("mi_malloc") {
            (AllocatorKind::Mimalloc, &[STANDARD, CXX_OPERATORS])
        } else if functions.has("__libc_malloc_impl") || functions.has("__malloc_donate") {
            (AllocatorKind::Musl, &[STANDARD])
        } else if functions.has("__libc_malloc") {
            (AllocatorKind::Glibc, &[STANDARD])
        } else {
            (AllocatorKind::Other, &[STANDARD])
        };
        found.push(Allocator {
            kind,
            provides_malloc: true,
            prefix: "",
            entry_points: functions.entry_points("", tables),
        });
    }
    // Prefixed allocators beside (or instead of) the one behind `malloc`.
    for prefix in jemalloc_prefix
        .into_iter()
        .filter(|prefix| !prefix.is_empty())
    {
        found.push(Allocator {
            kind: AllocatorKind::Jemalloc,
            provides_malloc: false,
            prefix,
            entry_points: functions.entry_points(prefix, &[STANDARD, JEMALLOC_EXTENDED]),
        });
    }
    let mimalloc_is_malloc = found
        .first()
        .is_some_and(|first| first.kind == AllocatorKind::Mimalloc);
    if functions.has("mi_malloc") && !mimalloc_is_malloc {
        found.push(Allocator {
            kind: AllocatorKind::Mimalloc,
            provides_malloc: false,
            prefix: "mi_",
            entry_points: functions.entry_points("", &[MIMALLOC_OWN]),
        });
    }
    found
}

/// Entries that share an address (glibc's `memalign` is its `aligned_alloc`; an allocator's
/// `_ZdlPv` may be its `free`) are one probe point: the first, with the others as aliases.
fn merge_by_address(entries: impl IntoIterator<Item = EntryPoint>) -> Vec<EntryPoint> {
    let mut kept: Vec<EntryPoint> = Vec::new();
    for entry in entries {
        match kept.iter_mut().find(|kept| kept.address == entry.address) {
            Some(first) => {
                first.aliases.push(entry.function);
                first.aliases.extend(entry.aliases);
            }
            None => kept.push(entry),
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: &str, address: u64) -> EntryPoint {
        EntryPoint {
            function: function.to_owned(),
            aliases: Vec::new(),
            role: Role::Frees,
            address,
            file_offset: address,
            code_bytes: 0,
        }
    }

    #[test]
    fn entries_at_one_address_are_one_probe_under_the_first_name() {
        let merged = merge_by_address(vec![
            entry("free", 0x10),
            entry("malloc", 0x20),
            entry("_ZdlPv", 0x10),
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].function, "free");
        assert_eq!(merged[0].aliases, vec!["_ZdlPv".to_owned()]);
    }

    #[test]
    fn the_labels_are_stable() {
        let labels: Vec<&str> = [
            AllocatorKind::Glibc,
            AllocatorKind::Musl,
            AllocatorKind::Jemalloc,
            AllocatorKind::Tcmalloc,
            AllocatorKind::Mimalloc,
            AllocatorKind::Other,
        ]
        .iter()
        .map(|kind| kind.label())
        .collect();
        assert_eq!(
            labels,
            ["glibc", "musl", "jemalloc", "tcmalloc", "mimalloc", "other"]
        );
    }
}
