//! The eBPF object as this kernel should load it: its hash tables that may allocate entries on
//! demand (`profiler_common::ON_DEMAND_TABLES`) get `BPF_F_NO_PREALLOC` where the kernel
//! allows it for tracing programs, so a target locks kernel memory for what it has.
//!
//! Map flags are fixed in the object's map definitions and aya's loader cannot change them, so
//! the definitions are edited in a copy of the object, once per process.
use std::sync::OnceLock;

use aya::util::KernelVersion;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
use thiserror::Error;

use profiler_common::ON_DEMAND_TABLES;

/// Built by build.rs from profiler-ebpf; aligned because aya parses it in place.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mapscope"));

/// Linux's flag for hash tables whose entries are allocated as they are inserted.
const BPF_F_NO_PREALLOC: u32 = 1;

/// The first kernel whose BPF memory allocator makes run-time allocation safe in tracing
/// programs (before, the verifier warns with a kernel stack trace, and refuses on PREEMPT_RT).
const ON_DEMAND_FROM: KernelVersion = KernelVersion::new(6, 1, 0);

/// Where a legacy map definition (`bpf_map_def`: type, key size, value size, max entries,
/// flags, ...) keeps its flags.
const MAP_FLAGS_OFFSET: u64 = 16;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("the eBPF object is not an ELF file mapscope can read: {0}")]
    Elf(String),
    #[error("map {0} has no definition in the eBPF object's maps section")]
    MissingMap(String),
}

/// The object's bytes for this kernel: with `ON_DEMAND_TABLES` allocating their entries as
/// they are created, or (kernels before 6.1, or the edit failed) every table preallocated.
pub fn for_this_kernel() -> &'static [u8] {
    static PREPARED: OnceLock<Option<Edited>> = OnceLock::new();
    let prepared = PREPARED.get_or_init(|| {
        let kernel = KernelVersion::current().ok()?;
        if kernel < ON_DEMAND_FROM {
            tracing::debug!(
                "kernel {kernel:?}: BPF tables preallocated (on demand from Linux 6.1 on)"
            );
            return None;
        }
        with_map_flags(EBPF_OBJECT, &ON_DEMAND_TABLES, BPF_F_NO_PREALLOC)
            .inspect_err(|error| {
                tracing::warn!("BPF tables stay preallocated (more kernel memory): {error}")
            })
            .ok()
    });
    prepared.as_ref().map_or(EBPF_OBJECT, Edited::bytes)
}

/// A copy of an object, in u64 words so that its bytes are as aligned as aya needs.
struct Edited {
    words: Box<[u64]>,
    length: usize,
}

impl Edited {
    fn bytes(&self) -> &[u8] {
        &as_bytes(&self.words)[..self.length]
    }
}

/// A copy of the ELF object `elf` whose map definitions named `names` have `flags` added.
fn with_map_flags(elf: &[u8], names: &[&str], flags: u32) -> Result<Edited, PatchError> {
    let offsets = flags_offsets(elf, names)?;
    let mut words = vec![0_u64; elf.len().div_ceil(8)].into_boxed_slice();
    let bytes = as_bytes_mut(&mut words);
    bytes[..elf.len()].copy_from_slice(elf);
    for offset in offsets {
        // flags_offsets checked the field lies inside its section, hence inside the object.
        if let Some(field) = bytes
            .get_mut(offset..)
            .and_then(<[u8]>::first_chunk_mut::<4>)
        {
            *field = (u32::from_le_bytes(*field) | flags).to_le_bytes();
        }
    }
    Ok(Edited {
        words,
        length: elf.len(),
    })
}

/// Where in `elf` the flags of each of the maps `names` are, in the order named.
fn flags_offsets(elf: &[u8], names: &[&str]) -> Result<Vec<usize>, PatchError> {
    let file = object::File::parse(elf).map_err(|error| PatchError::Elf(error.to_string()))?;
    let offset = |name: &str| {
        file.symbols()
            .filter(|symbol| symbol.name() == Ok(name))
            .find_map(|symbol| {
                let section = file.section_by_index(symbol.section_index()?).ok()?;
                if section.name() != Ok("maps") {
                    return None;
                }
                let (start, size) = section.file_range()?;
                // In a relocatable object a symbol's value is its offset in its section.
                let offset = symbol.address() + MAP_FLAGS_OFFSET;
                if offset + 4 > size {
                    return None;
                }
                usize::try_from(start + offset).ok()
            })
            .ok_or_else(|| PatchError::MissingMap(name.to_owned()))
    };
    names.iter().map(|name| offset(name)).collect()
}

fn as_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: u8 has no alignment and every bit pattern is valid; same memory, 8× the length.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), words.len() * 8) }
}

fn as_bytes_mut(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`, and the borrow is exclusive.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(elf: &[u8], name: &str) -> u32 {
        let offset = flags_offsets(elf, &[name]).unwrap()[0];
        u32::from_le_bytes(elf[offset..offset + 4].try_into().unwrap())
    }

    #[test]
    fn the_on_demand_tables_and_only_they_get_the_flag() {
        let edited = with_map_flags(EBPF_OBJECT, &ON_DEMAND_TABLES, BPF_F_NO_PREALLOC).unwrap();
        let edited = edited.bytes();
        assert_eq!(edited.len(), EBPF_OBJECT.len());
        for name in ON_DEMAND_TABLES {
            assert_eq!(
                flags(EBPF_OBJECT, name),
                0,
                "{name} is declared preallocated"
            );
            assert_eq!(flags(edited, name), BPF_F_NO_PREALLOC, "{name}");
        }
        // The LRU table cannot allocate on demand; it and every other byte stay as they were.
        assert_eq!(flags(edited, "TRACKED_MAPS"), 0);
        let changed = EBPF_OBJECT
            .iter()
            .zip(edited)
            .filter(|(before, after)| before != after)
            .count();
        assert_eq!(changed, ON_DEMAND_TABLES.len(), "one byte per table");
        assert_eq!(edited.as_ptr() as usize % 8, 0, "aligned for aya");
    }

    #[test]
    fn a_table_the_object_lacks_is_an_error_not_a_guess() {
        assert_eq!(
            with_map_flags(EBPF_OBJECT, &["NO_SUCH_TABLE"], BPF_F_NO_PREALLOC).err(),
            Some(PatchError::MissingMap("NO_SUCH_TABLE".into()))
        );
    }
}
