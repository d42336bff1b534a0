//! Swiss tables (Go 1.24+): a small map's single group, or the directory, its distinct
//! tables and their groups.

use super::{
    Memory, SnapshotError, for_each_record, read_scattered, u8_at, u16_at, u64_at, verdict,
};
use crate::{
    gobin::abi::SwissMapAbi,
    model::maps::{MapLayout, MapShape, Table, Unit},
};

/// Control bytes of a swiss group (src/internal/runtime/maps/group.go): full slots have the
/// top bit clear; `CTRL_DELETED` marks a tombstone.
pub(super) const CTRL_DELETED: u8 = 0xfe;
const GROUP_SLOTS: u64 = 8;
/// Largest directory taken as real (2^24 tables of 1024 slots is far beyond any heap).
const MAX_DIRECTORY: u64 = 1 << 24;
const MAX_TABLE_CAPACITY: u16 = 1024;

#[derive(PartialEq, Eq)]
struct SwissHeader {
    used: u64,
    seed: u64,
    directory: u64,
    directory_len: u64,
    global_depth: u8,
    writing: u8,
}

fn swiss_header(
    memory: &mut dyn Memory,
    abi: &SwissMapAbi,
    header: u64,
) -> Result<SwissHeader, SnapshotError> {
    let mut bytes = vec![0u8; abi.map_size as usize];
    memory.read(header, &mut bytes)?;
    Ok(SwissHeader {
        used: u64_at(&bytes, abi.used),
        seed: u64_at(&bytes, abi.seed),
        directory: u64_at(&bytes, abi.dir_ptr),
        directory_len: u64_at(&bytes, abi.dir_len),
        global_depth: u8_at(&bytes, abi.global_depth),
        writing: u8_at(&bytes, abi.writing),
    })
}

/// Count full slots and tombstones in a group's control word.
fn group_unit(control: u64) -> Unit {
    let mut unit = Unit::default();
    for byte in control.to_le_bytes() {
        if byte & 0x80 == 0 {
            unit.entries += 1;
        } else if byte == CTRL_DELETED {
            unit.tombstones += 1;
        }
    }
    unit
}

pub(super) fn read_swiss_map(
    memory: &mut dyn Memory,
    abi: &SwissMapAbi,
    header: u64,
    map_type: u64,
) -> Result<MapShape, SnapshotError> {
    let first = swiss_header(memory, abi, header)?;
    // Garbage first (freed memory reused looks like anything, a writer included), then a
    // writer at work. `writing` is toggled by each write: 0 or 1.
    if first.writing > 1 {
        return Err(SnapshotError::Inconsistent("writing flag out of range"));
    }
    if first.directory_len != 0
        && (first.directory_len > MAX_DIRECTORY
            || first.directory_len != 1u64 << first.global_depth.min(63))
    {
        return Err(SnapshotError::Inconsistent(
            "directory length is not 2^globalDepth",
        ));
    }
    if first.seed == 0 {
        // The runtime seeds every map at random; a zero seed is memory cleared after a free.
        return Err(SnapshotError::Inconsistent("zero hash seed"));
    }
    if first.writing != 0 {
        return Err(SnapshotError::Changed);
    }
    let mut type_bytes = [0u8; 8];
    memory.read(map_type + abi.type_group_size, &mut type_bytes)?;
    let group_size = u64::from_le_bytes(type_bytes);
    // A control word and 8 keys and values (over 128 bytes each they are stored as pointers),
    // 8-byte aligned.
    if !(16..=8 + GROUP_SLOTS * 256).contains(&group_size) || group_size % 8 != 0 {
        return Err(SnapshotError::Inconsistent("group size out of range"));
    }
    let mut shape = MapShape {
        layout: MapLayout::Swiss,
        entries: 0,
        capacity_slots: 0,
        bytes: abi.map_size,
        units: Vec::new(),
        log2_buckets: None,
        evacuation: None,
        directory_len: Some(first.directory_len),
        tables: Vec::new(),
    };
    let walked = walk_swiss(memory, abi, &mut shape, &first, group_size);
    shape.entries = shape.units.iter().map(|unit| u64::from(unit.entries)).sum();
    let last = swiss_header(memory, abi, header);
    verdict(shape, walked, last, first.used, |last| *last != first)
}

/// The small map's group, or the directory, its distinct tables and their groups.
fn walk_swiss(
    memory: &mut dyn Memory,
    abi: &SwissMapAbi,
    shape: &mut MapShape,
    first: &SwissHeader,
    group_size: u64,
) -> Result<(), SnapshotError> {
    if first.directory_len == 0 {
        // A small map: at most one group, no table.
        if first.directory != 0 {
            let mut control = [0u8; 8];
            memory.read(first.directory, &mut control)?;
            shape.units.push(group_unit(u64::from_le_bytes(control)));
            shape.capacity_slots = GROUP_SLOTS;
            shape.bytes += group_size;
        }
    } else {
        memory.reserve(first.directory_len * 8)?;
        let mut directory = vec![0u8; (first.directory_len * 8) as usize];
        memory.read(first.directory, &mut directory)?;
        shape.bytes += first.directory_len * 8;
        // A table of local depth d fills 2^(globalDepth-d) consecutive directory slots.
        let mut tables: Vec<u64> = directory
            .chunks_exact(8)
            .map(|entry| u64_at(entry, 0))
            .collect();
        tables.dedup();
        if tables.contains(&0) {
            return Err(SnapshotError::Inconsistent("null table in the directory"));
        }
        let table_bytes = read_scattered(memory, &tables, abi.table_size)?;
        let mut groups = Vec::with_capacity(tables.len());
        for table in table_bytes.chunks_exact(abi.table_size as usize) {
            let capacity = u16_at(table, abi.table_capacity);
            let found = Table {
                capacity,
                used: u16_at(table, abi.table_used),
                local_depth: u8_at(table, abi.table_local_depth),
            };
            let length_mask = u64_at(table, abi.table_length_mask);
            if !capacity.is_power_of_two()
                || !(8..=MAX_TABLE_CAPACITY).contains(&capacity)
                // Not `length_mask + 1`: a garbage mask of u64::MAX must not overflow.
                || length_mask != u64::from(capacity) / GROUP_SLOTS - 1
                || found.used > capacity
                || found.local_depth > first.global_depth
            {
                return Err(SnapshotError::Inconsistent("table header out of range"));
            }
            groups.push((u64_at(table, abi.table_groups), length_mask + 1, found));
            shape.tables.push(found);
        }
        for (data, count, table) in groups {
            shape.bytes += abi.table_size + count * group_size;
            shape.capacity_slots += u64::from(table.capacity);
            let start = shape.units.len();
            for_each_record(memory, data, count, group_size, |_, group| {
                shape.units.push(group_unit(u64_at(group, 0)));
            })?;
            let full: u64 = shape.units[start..]
                .iter()
                .map(|unit| u64::from(unit.entries))
                .sum();
            if full != u64::from(table.used) {
                // Slots filled or emptied under the read.
                return Err(SnapshotError::Changed);
            }
        }
    }
    Ok(())
}
