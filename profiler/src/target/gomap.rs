//! Reading a Go map out of a live target, never writing: the header, then the bucket array
//! and overflow chains (Go ≤ 1.23) or the directory, tables and groups (swiss tables, Go
//! 1.24+), in large batched reads.
//!
//! The target keeps running while this reads, and the map may be written, grown or freed
//! meanwhile. So every figure is checked against another (entries counted against the header's
//! count, the header read again at the end, sizes against their invariants) and a snapshot that
//! fails a check is dropped with its reason rather than shown.
use thiserror::Error;

use crate::{
    gobin::abi::{BucketMapAbi, MapAbi, SwissMapAbi},
    model::maps::{Evacuation, MapLayout, MapShape, Table, Unit},
};

/// Where the bytes come from: the target (`Budgeted`), or a fake in tests.
pub trait Memory {
    /// Fill every buffer from its address, or fail if any cannot be read whole.
    fn read_many(&mut self, pieces: &mut [(u64, &mut [u8])]) -> Result<(), SnapshotError>;

    fn read(&mut self, address: u64, buffer: &mut [u8]) -> Result<(), SnapshotError> {
        self.read_many(&mut [(address, buffer)])
    }

    /// Bytes that may still be read: what a snapshot checks before allocating a buffer.
    fn remaining(&self) -> u64 {
        u64::MAX
    }

    /// `TooLarge` unless `bytes` more may be read.
    fn reserve(&self, bytes: u64) -> Result<(), SnapshotError> {
        if bytes > self.remaining() {
            return Err(SnapshotError::TooLarge {
                budget: self.budget(),
            });
        }
        Ok(())
    }

    fn budget(&self) -> u64 {
        u64::MAX
    }
}

/// A target's memory with a byte budget for one snapshot.
pub struct Budgeted {
    pub pid: u32,
    pub budget: u64,
    pub bytes_read: u64,
}

impl Memory for Budgeted {
    fn read_many(&mut self, pieces: &mut [(u64, &mut [u8])]) -> Result<(), SnapshotError> {
        let wanted: u64 = pieces.iter().map(|(_, buffer)| buffer.len() as u64).sum();
        if self.bytes_read + wanted > self.budget {
            return Err(SnapshotError::TooLarge {
                budget: self.budget,
            });
        }
        self.bytes_read += wanted;
        super::memory::read_many(self.pid, pieces).map_err(|error| {
            if error.kind() == std::io::ErrorKind::PermissionDenied {
                SnapshotError::Denied
            } else {
                SnapshotError::Unreadable
            }
        })
    }

    fn remaining(&self) -> u64 {
        self.budget.saturating_sub(self.bytes_read)
    }

    fn budget(&self) -> u64 {
        self.budget
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("a pointer of the map no longer reads (freed, or the process exited)")]
    Unreadable,
    #[error(
        "reading the target's memory was denied: mapscope needs CAP_SYS_PTRACE over it, and a \
         security module (AppArmor, SELinux, Yama) may forbid it"
    )]
    Denied,
    #[error("the map's memory is inconsistent ({0}): freed and reused, or written while read")]
    Inconsistent(&'static str),
    #[error("the map changed while it was read")]
    Changed,
    #[error("the map is larger than the snapshot budget of {budget} bytes")]
    TooLarge { budget: u64 },
}

impl SnapshotError {
    /// The `reason` label of `mapscope_map_snapshots_dropped_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unreadable => "unreadable",
            Self::Denied => "denied",
            Self::Inconsistent(_) => "inconsistent",
            Self::Changed => "changed",
            Self::TooLarge { .. } => "too_large",
        }
    }
}

fn u64_at(bytes: &[u8], offset: u64) -> u64 {
    let at = offset as usize;
    bytes
        .get(at..at + 8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

fn u32_at(bytes: &[u8], offset: u64) -> u32 {
    let at = offset as usize;
    bytes
        .get(at..at + 4)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
}

fn u16_at(bytes: &[u8], offset: u64) -> u16 {
    let at = offset as usize;
    bytes
        .get(at..at + 2)
        .map_or(0, |b| u16::from_le_bytes(b.try_into().unwrap_or_default()))
}

fn u8_at(bytes: &[u8], offset: u64) -> u8 {
    bytes.get(offset as usize).copied().unwrap_or(0)
}

/// Largest chunk read in one piece, so a huge bucket array does not need one huge buffer
/// request at once (and the budget check fails before reading).
const CHUNK: usize = 1 << 20;

/// Read `count` records of `size` bytes starting at `address`, handing each to `each`.
fn for_each_record(
    memory: &mut dyn Memory,
    address: u64,
    count: u64,
    size: u64,
    mut each: impl FnMut(u64, &[u8]),
) -> Result<(), SnapshotError> {
    let per_chunk = (CHUNK as u64 / size).max(1);
    let mut buffer = Vec::new();
    let mut index = 0;
    while index < count {
        let records = per_chunk.min(count - index);
        buffer.resize((records * size) as usize, 0);
        memory.read(address + index * size, &mut buffer)?;
        for (offset, record) in buffer.chunks_exact(size as usize).enumerate() {
            each(index + offset as u64, record);
        }
        index += records;
    }
    Ok(())
}

/// Read many records of `size` bytes, one per address, in batches.
fn read_scattered(
    memory: &mut dyn Memory,
    addresses: &[u64],
    size: u64,
) -> Result<Vec<u8>, SnapshotError> {
    memory.reserve((addresses.len() as u64).saturating_mul(size))?;
    let mut buffer = vec![0u8; addresses.len() * size as usize];
    let mut pieces: Vec<(u64, &mut [u8])> = addresses
        .iter()
        .copied()
        .zip(buffer.chunks_exact_mut(size as usize))
        .collect();
    memory.read_many(&mut pieces)?;
    Ok(buffer)
}

/// Read the map whose header is at `header`, of the type descriptor at `map_type`.
pub fn read_map(
    memory: &mut dyn Memory,
    abi: &MapAbi,
    header: u64,
    map_type: u64,
) -> Result<MapShape, SnapshotError> {
    match abi {
        MapAbi::Buckets(abi) => read_bucket_map(memory, abi, header, map_type),
        MapAbi::Swiss(abi) => read_swiss_map(memory, abi, header, map_type),
    }
}

/// Bits of `hmap.flags` (src/runtime/map.go): a writer is active; the growth keeps the size.
const HASH_WRITING: u8 = 4;
const SAME_SIZE_GROW: u8 = 8;
/// iterator, oldIterator, hashWriting, sameSizeGrow: the only bits the runtime sets.
const KNOWN_FLAGS: u8 = 15;
/// Slots per bucket, and tophash values below `MIN_TOP_HASH` (empty or evacuated markers).
const BUCKET_SLOTS: u16 = 8;
const MIN_TOP_HASH: u8 = 5;
const EVACUATED: std::ops::Range<u8> = 2..5;
/// A map with more buckets than 2^40 is not a map: its header is garbage.
const MAX_LOG2_BUCKETS: u8 = 40;
/// Overflow chains longer than this are taken as a cycle in garbage.
const MAX_CHAIN: u16 = 1024;

#[derive(PartialEq, Eq)]
struct BucketHeader {
    count: u64,
    hash_seed: u32,
    flags: u8,
    log2_buckets: u8,
    buckets: u64,
    old_buckets: u64,
    nevacuate: u64,
}

fn bucket_header(
    memory: &mut dyn Memory,
    abi: &BucketMapAbi,
    header: u64,
) -> Result<BucketHeader, SnapshotError> {
    let mut bytes = vec![0u8; abi.hmap_size as usize];
    memory.read(header, &mut bytes)?;
    Ok(BucketHeader {
        count: u64_at(&bytes, abi.count),
        hash_seed: u32_at(&bytes, abi.hash0),
        flags: u8_at(&bytes, abi.flags),
        log2_buckets: u8_at(&bytes, abi.log2_buckets),
        buckets: u64_at(&bytes, abi.buckets),
        old_buckets: u64_at(&bytes, abi.old_buckets),
        nevacuate: u64_at(&bytes, abi.nevacuate),
    })
}

/// Buckets `makeBucketArray` allocates for 2^b: from b = 4 on, 1/16 more as preallocated
/// overflow buckets (src/runtime/map.go).
fn array_buckets(log2: u8) -> u64 {
    let buckets = 1u64 << log2;
    if log2 >= 4 {
        buckets + (1u64 << (log2 - 4))
    } else {
        buckets
    }
}

fn read_bucket_map(
    memory: &mut dyn Memory,
    abi: &BucketMapAbi,
    header: u64,
    map_type: u64,
) -> Result<MapShape, SnapshotError> {
    let first = bucket_header(memory, abi, header)?;
    // Garbage first (freed memory reused looks like anything, a writer included), then a
    // writer at work.
    if first.log2_buckets > MAX_LOG2_BUCKETS || first.count > (1u64 << 50) {
        return Err(SnapshotError::Inconsistent(
            "bucket count or entry count out of range",
        ));
    }
    if first.flags & !KNOWN_FLAGS != 0 {
        return Err(SnapshotError::Inconsistent("unknown flag bits"));
    }
    if first.hash_seed == 0 {
        // The runtime seeds every map at random; a zero seed is memory cleared after a free.
        return Err(SnapshotError::Inconsistent("zero hash seed"));
    }
    if first.flags & HASH_WRITING != 0 {
        return Err(SnapshotError::Changed);
    }
    let mut type_bytes = [0u8; 2];
    memory.read(map_type + abi.type_bucket_size, &mut type_bytes)?;
    let bucket_size = u64::from(u16::from_le_bytes(type_bytes));
    // tophash[8] + 8 keys + 8 values + overflow pointer; keys and values over 128 bytes are
    // stored as pointers.
    if !(24..=8 + 16 * 128 + 8 + 64).contains(&bucket_size) {
        return Err(SnapshotError::Inconsistent("bucket size out of range"));
    }
    let mut shape = MapShape {
        layout: MapLayout::Buckets,
        entries: 0,
        capacity_slots: 0,
        bytes: abi.hmap_size,
        units: Vec::new(),
        log2_buckets: Some(first.log2_buckets),
        evacuation: None,
        directory_len: None,
        tables: Vec::new(),
    };
    if first.buckets == 0 && (first.count != 0 || first.old_buckets != 0) {
        return Err(SnapshotError::Inconsistent("entries without buckets"));
    }
    // The arrays alone, before reading any: a map over budget is refused without a read.
    memory.reserve(array_buckets(first.log2_buckets).saturating_mul(bucket_size))?;
    let walked = walk_bucket_arrays(memory, &mut shape, &first, bucket_size);
    let last = bucket_header(memory, abi, header);
    let settled = |h: &BucketHeader| {
        // Iterator flags come and go with range loops; anything else moving means a write.
        (
            h.count,
            h.flags & !3,
            h.log2_buckets,
            h.buckets,
            h.old_buckets,
            h.nevacuate,
        )
    };
    verdict(shape, walked, last, first.count, |last| {
        settled(last) != settled(&first) || last.flags & HASH_WRITING != 0
    })
}

/// A walk's result once the header was read again after it. Whatever the walk found, a header
/// that moved (or a writer at work) means a write raced the read: the map is fine, the
/// snapshot is not. Then the walk's and the re-read's own errors; then the entries counted
/// against the header's count, which differ when entries moved under a still header (an
/// insert and a delete).
fn verdict<H>(
    shape: MapShape,
    walked: Result<(), SnapshotError>,
    last: Result<H, SnapshotError>,
    count: u64,
    moved: impl FnOnce(&H) -> bool,
) -> Result<MapShape, SnapshotError> {
    if let Ok(last) = &last
        && moved(last)
    {
        return Err(SnapshotError::Changed);
    }
    walked?;
    last?;
    if shape.entries != count {
        return Err(SnapshotError::Changed);
    }
    Ok(shape)
}

/// The bucket array and, during a growth, the old array not yet evacuated.
fn walk_bucket_arrays(
    memory: &mut dyn Memory,
    shape: &mut MapShape,
    first: &BucketHeader,
    bucket_size: u64,
) -> Result<(), SnapshotError> {
    if first.buckets != 0 {
        walk_buckets(
            memory,
            shape,
            first.buckets,
            first.log2_buckets,
            bucket_size,
            false,
        )?;
    }
    if first.old_buckets != 0 {
        let same_size = first.flags & SAME_SIZE_GROW != 0;
        let old_log2 = if same_size {
            first.log2_buckets
        } else {
            first
                .log2_buckets
                .checked_sub(1)
                .ok_or(SnapshotError::Inconsistent("growth from no buckets"))?
        };
        shape.evacuation = Some(Evacuation {
            old_buckets: 1 << old_log2,
            progress: first.nevacuate,
            same_size,
        });
        walk_buckets(
            memory,
            shape,
            first.old_buckets,
            old_log2,
            bucket_size,
            true,
        )?;
    }
    Ok(())
}

/// Walk every bucket of an array and its overflow chains. For an old array (a growth in
/// progress), evacuated buckets are skipped: their entries are in the new array already.
fn walk_buckets(
    memory: &mut dyn Memory,
    shape: &mut MapShape,
    array: u64,
    log2: u8,
    bucket_size: u64,
    old: bool,
) -> Result<(), SnapshotError> {
    let buckets = 1u64 << log2;
    // Saturating: a garbage pointer near the top of the address space must not overflow (its
    // read fails instead).
    let array_end = array.saturating_add(array_buckets(log2) * bucket_size);
    shape.bytes += array_buckets(log2) * bucket_size;
    let first_unit = shape.units.len();
    let occupancy = |bucket: &[u8]| {
        bucket[..8]
            .iter()
            .filter(|&&top| top >= MIN_TOP_HASH)
            .count() as u16
    };
    let overflow_of = |bucket: &[u8]| u64_at(bucket, bucket_size - 8);
    // (unit index, next overflow bucket) for every chain still being followed.
    let mut chains: Vec<(usize, u64)> = Vec::new();
    for_each_record(memory, array, buckets, bucket_size, |_, bucket| {
        if old && EVACUATED.contains(&bucket[0]) {
            return;
        }
        let unit = shape.units.len();
        shape.units.push(Unit {
            entries: occupancy(bucket),
            old,
            ..Unit::default()
        });
        let next = overflow_of(bucket);
        if next != 0 {
            chains.push((unit, next));
        }
    })?;
    let mut depth = 0;
    while !chains.is_empty() {
        depth += 1;
        if depth > MAX_CHAIN {
            return Err(SnapshotError::Inconsistent("overflow chain loops"));
        }
        let addresses: Vec<u64> = chains.iter().map(|&(_, address)| address).collect();
        let bytes = read_scattered(memory, &addresses, bucket_size)?;
        let mut next_chains = Vec::new();
        for ((unit, address), bucket) in chains.iter().zip(bytes.chunks_exact(bucket_size as usize))
        {
            let entry = &mut shape.units[*unit];
            entry.entries += occupancy(bucket);
            entry.overflow += 1;
            if !(array..array_end).contains(address) {
                shape.bytes += bucket_size;
            }
            let next = overflow_of(bucket);
            if next != 0 {
                next_chains.push((*unit, next));
            }
        }
        chains = next_chains;
    }
    for unit in &shape.units[first_unit..] {
        shape.entries += u64::from(unit.entries);
        shape.capacity_slots += u64::from(BUCKET_SLOTS) * (1 + u64::from(unit.overflow));
    }
    Ok(())
}

/// Control bytes of a swiss group (src/internal/runtime/maps/group.go): full slots have the
/// top bit clear; `CTRL_DELETED` marks a tombstone.
const CTRL_DELETED: u8 = 0xfe;
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

fn read_swiss_map(
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::gobin::abi::{MAP_TABLE, MapAbiRow, NOSWISS_MAP_ROW};

    fn bucket_abi(row: &MapAbiRow) -> BucketMapAbi {
        match row.abi {
            MapAbi::Buckets(abi) => abi,
            MapAbi::Swiss(_) => panic!("not a bucket-map row"),
        }
    }

    fn swiss_abi() -> SwissMapAbi {
        match MAP_TABLE[1].abi {
            MapAbi::Swiss(abi) => abi,
            MapAbi::Buckets(_) => panic!("not a swiss-map row"),
        }
    }

    /// A fake address space: regions of bytes at addresses, with gaps between them. A piece
    /// reads only if it lies whole inside one region. Writes can be scheduled to land after a
    /// given number of `read_many` calls, as a concurrent writer would.
    struct Fake {
        regions: Vec<(u64, Vec<u8>)>,
        next: u64,
        reads: usize,
        scheduled: Vec<(usize, u64, Vec<u8>)>,
    }

    impl Fake {
        fn new() -> Self {
            Self {
                regions: Vec::new(),
                next: 0x10_0000,
                reads: 0,
                scheduled: Vec::new(),
            }
        }

        fn alloc(&mut self, bytes: Vec<u8>) -> u64 {
            let address = self.next;
            // Leave an unmapped page after every region.
            self.next += (bytes.len() as u64).div_ceil(0x1000).max(1) * 0x1000 + 0x1000;
            self.regions.push((address, bytes));
            address
        }

        fn zeroed(&mut self, len: u64) -> u64 {
            self.alloc(vec![0; len as usize])
        }

        fn write(&mut self, address: u64, bytes: &[u8]) {
            let (start, region) = self
                .regions
                .iter_mut()
                .find(|(start, region)| {
                    address >= *start
                        && address + bytes.len() as u64 <= *start + region.len() as u64
                })
                .expect("a write inside a region");
            let at = (address - *start) as usize;
            region[at..at + bytes.len()].copy_from_slice(bytes);
        }

        fn write_u64(&mut self, address: u64, value: u64) {
            self.write(address, &value.to_le_bytes());
        }

        fn write_u16(&mut self, address: u64, value: u16) {
            self.write(address, &value.to_le_bytes());
        }

        fn write_u8(&mut self, address: u64, value: u8) {
            self.write(address, &[value]);
        }

        /// Write `bytes` at `address` once `reads` calls of `read_many` have been served.
        fn write_after(&mut self, reads: usize, address: u64, bytes: Vec<u8>) {
            self.scheduled.push((reads, address, bytes));
        }
    }

    impl Memory for Fake {
        fn read_many(&mut self, pieces: &mut [(u64, &mut [u8])]) -> Result<(), SnapshotError> {
            self.reads += 1;
            for (address, buffer) in pieces.iter_mut() {
                let end = address
                    .checked_add(buffer.len() as u64)
                    .ok_or(SnapshotError::Unreadable)?;
                let (start, region) = self
                    .regions
                    .iter()
                    .find(|(start, region)| {
                        *address >= *start && end <= *start + region.len() as u64
                    })
                    .ok_or(SnapshotError::Unreadable)?;
                let at = (*address - start) as usize;
                buffer.copy_from_slice(&region[at..at + buffer.len()]);
            }
            let reads = self.reads;
            let due: Vec<_> = self
                .scheduled
                .extract_if(.., |(after, ..)| *after <= reads)
                .collect();
            for (_, address, bytes) in due {
                self.write(address, &bytes);
            }
            Ok(())
        }
    }

    fn put(bytes: &mut [u8], offset: u64, value: &[u8]) {
        let at = offset as usize;
        bytes[at..at + value.len()].copy_from_slice(value);
    }

    fn unit(entries: u16, overflow: u16, old: bool) -> Unit {
        Unit {
            entries,
            overflow,
            tombstones: 0,
            old,
        }
    }

    fn group(entries: u16, tombstones: u8) -> Unit {
        Unit {
            entries,
            tombstones,
            ..Unit::default()
        }
    }

    // ---- Bucket maps ----

    const BUCKET_SIZE: u64 = 144;

    /// A tophash array with the first `full` slots full (tophash >= 5) and the rest emptyRest.
    fn tophash(full: usize) -> [u8; 8] {
        let mut tops = [0u8; 8];
        for (index, top) in tops.iter_mut().enumerate().take(full) {
            *top = 5 + 31 * index as u8;
        }
        tops
    }

    fn bucket(size: u64, tops: [u8; 8], overflow: u64) -> Vec<u8> {
        let mut bytes = vec![0xaa; size as usize];
        bytes[..8].copy_from_slice(&tops);
        put(&mut bytes, size - 8, &overflow.to_le_bytes());
        bytes
    }

    fn set_bucket(fake: &mut Fake, address: u64, tops: [u8; 8], overflow: u64) {
        fake.write(address, &bucket(BUCKET_SIZE, tops, overflow));
    }

    fn separate_bucket(fake: &mut Fake, tops: [u8; 8], overflow: u64) -> u64 {
        fake.alloc(bucket(BUCKET_SIZE, tops, overflow))
    }

    #[derive(Clone, Copy, Default)]
    struct Hmap {
        count: u64,
        flags: u8,
        log2: u8,
        buckets: u64,
        old_buckets: u64,
        nevacuate: u64,
    }

    fn hmap_bytes(abi: &BucketMapAbi, h: Hmap) -> Vec<u8> {
        let mut bytes = vec![0u8; abi.hmap_size as usize];
        put(&mut bytes, abi.count, &h.count.to_le_bytes());
        put(&mut bytes, abi.hash0, &0x9e37_79b9u32.to_le_bytes());
        put(&mut bytes, abi.flags, &[h.flags]);
        put(&mut bytes, abi.log2_buckets, &[h.log2]);
        put(&mut bytes, abi.buckets, &h.buckets.to_le_bytes());
        put(&mut bytes, abi.old_buckets, &h.old_buckets.to_le_bytes());
        put(&mut bytes, abi.nevacuate, &h.nevacuate.to_le_bytes());
        bytes
    }

    fn bucket_type_bytes(abi: &BucketMapAbi, size: u16) -> Vec<u8> {
        let mut bytes = vec![0u8; 96];
        put(&mut bytes, abi.type_bucket_size, &size.to_le_bytes());
        bytes
    }

    fn read_buckets(
        fake: &mut Fake,
        abi: &BucketMapAbi,
        header: u64,
        map_type: u64,
    ) -> Result<MapShape, SnapshotError> {
        read_map(fake, &MapAbi::Buckets(*abi), header, map_type)
    }

    fn bucket_shape(
        log2: u8,
        entries: u64,
        capacity_slots: u64,
        bytes: u64,
        units: Vec<Unit>,
    ) -> MapShape {
        MapShape {
            layout: MapLayout::Buckets,
            entries,
            capacity_slots,
            bytes,
            units,
            log2_buckets: Some(log2),
            evacuation: None,
            directory_len: None,
            tables: Vec::new(),
        }
    }

    /// A small bucket map (B = 1): bucket 0 has 3 entries and a separate overflow bucket with 2,
    /// bucket 1 has 4. Count 9.
    struct SmallBuckets {
        header: u64,
        map_type: u64,
        array: u64,
        overflow: u64,
    }

    fn small_bucket_map(fake: &mut Fake, abi: &BucketMapAbi) -> SmallBuckets {
        let array = fake.zeroed(2 * BUCKET_SIZE);
        let overflow = separate_bucket(fake, tophash(2), 0);
        set_bucket(fake, array, tophash(3), overflow);
        set_bucket(fake, array + BUCKET_SIZE, tophash(4), 0);
        let header = fake.alloc(hmap_bytes(
            abi,
            Hmap {
                count: 9,
                log2: 1,
                buckets: array,
                ..Hmap::default()
            },
        ));
        let map_type = fake.alloc(bucket_type_bytes(abi, BUCKET_SIZE as u16));
        SmallBuckets {
            header,
            map_type,
            array,
            overflow,
        }
    }

    #[test]
    fn bucket_map_with_overflow_chains() {
        for row in [&MAP_TABLE[0], &NOSWISS_MAP_ROW] {
            let abi = bucket_abi(row);
            let mut fake = Fake::new();
            // B = 4: 16 buckets and one preallocated overflow bucket in the array.
            let array = fake.zeroed(17 * BUCKET_SIZE);
            let at = |index: u64| array + index * BUCKET_SIZE;
            let full = [8, 3, 0, 8, 5, 2, 1, 8, 0, 4, 7, 6, 2, 0, 1, 3];
            for (index, &count) in full.iter().enumerate() {
                set_bucket(&mut fake, at(index as u64), tophash(count), 0);
            }
            // Full slots among emptyOne (1) and emptyRest (0) markers: 5 full.
            set_bucket(&mut fake, at(4), [0x9a, 1, 5, 0xfe, 255, 0x40, 1, 0], 0);
            // Bucket 0 -> the array's spare bucket (3 entries).
            set_bucket(&mut fake, at(16), tophash(3), 0);
            set_bucket(&mut fake, at(0), tophash(8), at(16));
            // Bucket 3 -> separate (8) -> separate (2).
            let x2 = separate_bucket(&mut fake, tophash(2), 0);
            let x1 = separate_bucket(&mut fake, tophash(8), x2);
            set_bucket(&mut fake, at(3), tophash(8), x1);
            // Bucket 7 -> separate (1).
            let x3 = separate_bucket(&mut fake, tophash(1), 0);
            set_bucket(&mut fake, at(7), tophash(8), x3);

            let entries: [u16; 16] = [11, 3, 0, 18, 5, 2, 1, 9, 0, 4, 7, 6, 2, 0, 1, 3];
            let count: u64 = entries.iter().map(|&e| u64::from(e)).sum();
            assert_eq!(count, 72);
            let header = fake.alloc(hmap_bytes(
                &abi,
                Hmap {
                    count,
                    log2: 4,
                    buckets: array,
                    // Iterator flags do not matter.
                    flags: 1 | 2,
                    ..Hmap::default()
                },
            ));
            let map_type = fake.alloc(bucket_type_bytes(&abi, BUCKET_SIZE as u16));

            let shape = read_buckets(&mut fake, &abi, header, map_type).unwrap();
            let overflow = |index: usize| match index {
                0 | 7 => 1,
                3 => 2,
                _ => 0,
            };
            let units = entries
                .iter()
                .enumerate()
                .map(|(index, &e)| unit(e, overflow(index), false))
                .collect();
            let expected = bucket_shape(
                4,
                72,
                16 * 8 + 4 * 8,
                abi.hmap_size + 17 * BUCKET_SIZE + 3 * BUCKET_SIZE,
                units,
            );
            assert_eq!(shape, expected);
            assert_eq!(
                shape.entries_per_unit(),
                BTreeMap::from([
                    (0, 3),
                    (1, 2),
                    (2, 2),
                    (3, 2),
                    (4, 1),
                    (5, 1),
                    (6, 1),
                    (7, 1),
                    (9, 1),
                    (11, 1),
                    (18, 1)
                ])
            );
            assert_eq!(
                shape.overflow_chains(),
                Some(BTreeMap::from([(0, 13), (1, 2), (2, 1)]))
            );
            assert_eq!(shape.tombstones_per_group(), None);
        }
    }

    #[test]
    fn bucket_array_larger_than_one_chunk() {
        // B = 13: 8192 buckets of 144 bytes, more than one CHUNK; bucket i holds i % 9 entries.
        let abi = bucket_abi(&MAP_TABLE[0]);
        let mut fake = Fake::new();
        let log2 = 13;
        let buckets = 1u64 << log2;
        assert!(buckets * BUCKET_SIZE > CHUNK as u64);
        let mut array = vec![0u8; (array_buckets(log2) * BUCKET_SIZE) as usize];
        for index in 0..buckets {
            let at = (index * BUCKET_SIZE) as usize;
            array[at..at + 8].copy_from_slice(&tophash((index % 9) as usize));
        }
        let array = fake.alloc(array);
        let count: u64 = (0..buckets).map(|index| index % 9).sum();
        let header = fake.alloc(hmap_bytes(
            &abi,
            Hmap {
                count,
                log2,
                buckets: array,
                ..Hmap::default()
            },
        ));
        let map_type = fake.alloc(bucket_type_bytes(&abi, BUCKET_SIZE as u16));
        let shape = read_buckets(&mut fake, &abi, header, map_type).unwrap();
        assert_eq!(shape.entries, count);
        assert_eq!(shape.units.len() as u64, buckets);
        assert!(
            shape
                .units
                .iter()
                .enumerate()
                .all(|(index, unit)| u64::from(unit.entries) == index as u64 % 9)
        );
        assert_eq!(shape.capacity_slots, buckets * 8);
        assert_eq!(
            shape.bytes,
            abi.hmap_size + (buckets + buckets / 16) * BUCKET_SIZE
        );
    }

    #[test]
    fn bucket_map_growing() {
        // B = 3 (8 new buckets), growing from B = 2 (4 old buckets), nevacuate = 2: old buckets
        // 0 and 1 evacuated, 3 evacuated out of order by a write, 2 not evacuated yet.
        let abi = bucket_abi(&MAP_TABLE[0]);
        let mut fake = Fake::new();
        let new = fake.zeroed(8 * BUCKET_SIZE);
        let old = fake.zeroed(4 * BUCKET_SIZE);
        let new_full = [2, 1, 0, 4, 3, 0, 0, 4];
        for (index, &count) in new_full.iter().enumerate() {
            set_bucket(
                &mut fake,
                new + index as u64 * BUCKET_SIZE,
                tophash(count),
                0,
            );
        }
        let new_overflow = separate_bucket(&mut fake, tophash(1), 0);
        set_bucket(&mut fake, new + 7 * BUCKET_SIZE, tophash(4), new_overflow);
        // Evacuated: every tophash is evacuatedX (2), evacuatedY (3) or evacuatedEmpty (4).
        set_bucket(&mut fake, old, [2, 3, 4, 4, 4, 4, 4, 4], 0);
        set_bucket(&mut fake, old + BUCKET_SIZE, [4; 8], 0);
        // An evacuated bucket's stale overflow pointer is never followed.
        set_bucket(
            &mut fake,
            old + 3 * BUCKET_SIZE,
            [3, 2, 3, 4, 4, 4, 4, 4],
            0xdead_0000,
        );
        let old_overflow = separate_bucket(&mut fake, tophash(4), 0);
        set_bucket(
            &mut fake,
            old + 2 * BUCKET_SIZE,
            [0x77, 1, 0x80, 0xf0, 0, 0, 0, 0],
            old_overflow,
        );

        let count = 2 + 1 + 4 + 3 + 4 + 1 + 3 + 4;
        let header = fake.alloc(hmap_bytes(
            &abi,
            Hmap {
                count,
                log2: 3,
                buckets: new,
                old_buckets: old,
                nevacuate: 2,
                ..Hmap::default()
            },
        ));
        let map_type = fake.alloc(bucket_type_bytes(&abi, BUCKET_SIZE as u16));
        let shape = read_buckets(&mut fake, &abi, header, map_type).unwrap();

        let mut units: Vec<Unit> = new_full.iter().map(|&e| unit(e as u16, 0, false)).collect();
        units[7] = unit(5, 1, false);
        units.push(unit(7, 1, true));
        let mut expected = bucket_shape(
            3,
            count,
            8 * 8 + 8 + 2 * 8,
            abi.hmap_size + 8 * BUCKET_SIZE + 4 * BUCKET_SIZE + 2 * BUCKET_SIZE,
            units,
        );
        expected.evacuation = Some(Evacuation {
            old_buckets: 4,
            progress: 2,
            same_size: false,
        });
        assert_eq!(shape, expected);
        assert_eq!(
            shape
                .units
                .iter()
                .map(|u| u64::from(u.entries))
                .sum::<u64>(),
            count
        );
    }

    #[test]
    fn bucket_map_growing_same_size() {
        // Same-size growth (flags & 8): the old array has as many buckets as the new one.
        let abi = bucket_abi(&MAP_TABLE[0]);
        let mut fake = Fake::new();
        let new = fake.zeroed(4 * BUCKET_SIZE);
        let old = fake.zeroed(4 * BUCKET_SIZE);
        set_bucket(&mut fake, new, tophash(3), 0);
        set_bucket(&mut fake, old, [2; 8], 0);
        set_bucket(&mut fake, old + BUCKET_SIZE, tophash(2), 0);
        set_bucket(&mut fake, old + 2 * BUCKET_SIZE, tophash(0), 0);
        set_bucket(&mut fake, old + 3 * BUCKET_SIZE, tophash(6), 0);
        let header = fake.alloc(hmap_bytes(
            &abi,
            Hmap {
                count: 11,
                flags: SAME_SIZE_GROW | 1,
                log2: 2,
                buckets: new,
                old_buckets: old,
                nevacuate: 1,
            },
        ));
        let map_type = fake.alloc(bucket_type_bytes(&abi, BUCKET_SIZE as u16));
        let shape = read_buckets(&mut fake, &abi, header, map_type).unwrap();
        let mut expected = bucket_shape(
            2,
            11,
            7 * 8,
            abi.hmap_size + 8 * BUCKET_SIZE,
            vec![
                unit(3, 0, false),
                unit(0, 0, false),
                unit(0, 0, false),
                unit(0, 0, false),
                unit(2, 0, true),
                unit(0, 0, true),
                unit(6, 0, true),
            ],
        );
        expected.evacuation = Some(Evacuation {
            old_buckets: 4,
            progress: 1,
            same_size: true,
        });
        assert_eq!(shape, expected);

        // A growth that doubles from B = 0 cannot be.
        fake.write_u8(header + abi.flags, 0);
        fake.write_u8(header + abi.log2_buckets, 0);
        assert_eq!(
            read_buckets(&mut fake, &abi, header, map_type),
            Err(SnapshotError::Inconsistent("growth from no buckets"))
        );
    }

    #[test]
    fn empty_bucket_map() {
        let abi = bucket_abi(&MAP_TABLE[0]);
        let mut fake = Fake::new();
        let header = fake.alloc(hmap_bytes(&abi, Hmap::default()));
        let map_type = fake.alloc(bucket_type_bytes(&abi, BUCKET_SIZE as u16));
        assert_eq!(
            read_buckets(&mut fake, &abi, header, map_type),
            Ok(bucket_shape(0, 0, 0, abi.hmap_size, Vec::new()))
        );
        // Entries, or an old array, without buckets.
        fake.write_u64(header + abi.count, 3);
        assert_eq!(
            read_buckets(&mut fake, &abi, header, map_type),
            Err(SnapshotError::Inconsistent("entries without buckets"))
        );
        fake.write_u64(header + abi.count, 0);
        fake.write_u64(header + abi.old_buckets, map_type);
        assert_eq!(
            read_buckets(&mut fake, &abi, header, map_type),
            Err(SnapshotError::Inconsistent("entries without buckets"))
        );
    }

    #[test]
    fn small_bucket_map_reads() {
        let abi = bucket_abi(&MAP_TABLE[0]);
        let mut fake = Fake::new();
        let map = small_bucket_map(&mut fake, &abi);
        assert_eq!(
            read_buckets(&mut fake, &abi, map.header, map.map_type),
            Ok(bucket_shape(
                1,
                9,
                3 * 8,
                abi.hmap_size + 3 * BUCKET_SIZE,
                vec![unit(5, 1, false), unit(4, 0, false)]
            ))
        );
    }

    #[test]
    fn bucket_map_inconsistencies() {
        let abi = bucket_abi(&MAP_TABLE[0]);
        let fresh = || {
            let mut fake = Fake::new();
            let map = small_bucket_map(&mut fake, &abi);
            (fake, map)
        };
        let read = |fake: &mut Fake, map: &SmallBuckets| {
            read_buckets(fake, &abi, map.header, map.map_type)
        };

        // The header's count disagrees with the entries counted.
        let (mut fake, map) = fresh();
        fake.write_u64(map.header + abi.count, 10);
        assert_eq!(read(&mut fake, &map), Err(SnapshotError::Changed));

        // A writer is active.
        let (mut fake, map) = fresh();
        fake.write_u8(map.header + abi.flags, HASH_WRITING);
        assert_eq!(read(&mut fake, &map), Err(SnapshotError::Changed));

        // The header changes between the first and the last read: a write, or a writer flag.
        for (offset, bytes) in [
            (abi.count, 10u64.to_le_bytes().to_vec()),
            (abi.flags, vec![HASH_WRITING]),
            (abi.buckets, map.overflow.to_le_bytes().to_vec()),
        ] {
            let (mut fake, map) = fresh();
            fake.write_after(1, map.header + offset, bytes);
            assert_eq!(read(&mut fake, &map), Err(SnapshotError::Changed));
            assert!(fake.reads > 2);
        }
        // Iterator flags coming and going are not a change.
        let (mut fake, map) = fresh();
        fake.write_after(1, map.header + abi.flags, vec![1 | 2]);
        assert_eq!(read(&mut fake, &map).map(|shape| shape.entries), Ok(9));

        // An overflow pointer to unmapped memory.
        let (mut fake, map) = fresh();
        fake.write_u64(map.overflow + BUCKET_SIZE - 8, 0xdead_0000);
        assert_eq!(read(&mut fake, &map), Err(SnapshotError::Unreadable));

        // The header itself does not read.
        let (mut fake, map) = fresh();
        assert_eq!(
            read_buckets(&mut fake, &abi, 0xdead_0000, map.map_type),
            Err(SnapshotError::Unreadable)
        );

        // Overflow chains that loop: onto themselves, and through two buckets.
        let (mut fake, map) = fresh();
        fake.write_u64(map.overflow + BUCKET_SIZE - 8, map.overflow);
        assert_eq!(
            read(&mut fake, &map),
            Err(SnapshotError::Inconsistent("overflow chain loops"))
        );
        let (mut fake, map) = fresh();
        fake.write_u64(map.overflow + BUCKET_SIZE - 8, map.array);
        assert_eq!(
            read(&mut fake, &map),
            Err(SnapshotError::Inconsistent("overflow chain loops"))
        );

        // Garbage sizes.
        let (mut fake, map) = fresh();
        fake.write_u8(map.header + abi.log2_buckets, MAX_LOG2_BUCKETS + 1);
        assert_eq!(
            read(&mut fake, &map),
            Err(SnapshotError::Inconsistent(
                "bucket count or entry count out of range"
            ))
        );
        let (mut fake, map) = fresh();
        fake.write_u64(map.header + abi.count, 1 << 51);
        assert_eq!(
            read(&mut fake, &map),
            Err(SnapshotError::Inconsistent(
                "bucket count or entry count out of range"
            ))
        );
        for size in [0u16, 16, 23, 8 + 16 * 128 + 8 + 64 + 1, u16::MAX] {
            let (mut fake, map) = fresh();
            fake.write_u16(map.map_type + abi.type_bucket_size, size);
            assert_eq!(
                read(&mut fake, &map),
                Err(SnapshotError::Inconsistent("bucket size out of range")),
                "bucket size {size}"
            );
        }

        // A bucket pointer at the top of the address space: unreadable, and no overflow.
        for buckets in [u64::MAX - 7, u64::MAX - 2 * BUCKET_SIZE + 8] {
            let (mut fake, map) = fresh();
            fake.write_u64(map.header + abi.buckets, buckets);
            assert_eq!(read(&mut fake, &map), Err(SnapshotError::Unreadable));
        }
    }

    // ---- Swiss tables ----

    const GROUP_SIZE: u64 = 136;
    const EMPTY: u8 = 0x80;
    const DELETED: u8 = CTRL_DELETED;

    #[derive(Clone, Copy, Default)]
    struct SwissMap {
        used: u64,
        directory: u64,
        directory_len: u64,
        global_depth: u8,
        writing: u8,
    }

    fn swiss_map_bytes(abi: &SwissMapAbi, m: SwissMap) -> Vec<u8> {
        let mut bytes = vec![0u8; abi.map_size as usize];
        put(&mut bytes, abi.used, &m.used.to_le_bytes());
        put(
            &mut bytes,
            abi.seed,
            &0x9e37_79b9_7f4a_7c15u64.to_le_bytes(),
        );
        put(&mut bytes, abi.dir_ptr, &m.directory.to_le_bytes());
        put(&mut bytes, abi.dir_len, &m.directory_len.to_le_bytes());
        put(&mut bytes, abi.global_depth, &[m.global_depth]);
        put(&mut bytes, abi.writing, &[m.writing]);
        bytes
    }

    fn swiss_type_bytes(abi: &SwissMapAbi, group_size: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; 96];
        put(&mut bytes, abi.type_group_size, &group_size.to_le_bytes());
        bytes
    }

    /// Groups with the given control words, keys and values left as filler.
    fn groups(fake: &mut Fake, controls: &[[u8; 8]]) -> u64 {
        let mut bytes = vec![0x55u8; controls.len() * GROUP_SIZE as usize];
        for (index, control) in controls.iter().enumerate() {
            put(&mut bytes, index as u64 * GROUP_SIZE, control);
        }
        fake.alloc(bytes)
    }

    fn table(fake: &mut Fake, abi: &SwissMapAbi, found: Table, data: u64, length_mask: u64) -> u64 {
        let mut bytes = vec![0u8; abi.table_size as usize];
        put(&mut bytes, abi.table_used, &found.used.to_le_bytes());
        put(
            &mut bytes,
            abi.table_capacity,
            &found.capacity.to_le_bytes(),
        );
        put(&mut bytes, abi.table_local_depth, &[found.local_depth]);
        put(&mut bytes, abi.table_groups, &data.to_le_bytes());
        put(
            &mut bytes,
            abi.table_length_mask,
            &length_mask.to_le_bytes(),
        );
        fake.alloc(bytes)
    }

    fn read_swiss(
        fake: &mut Fake,
        abi: &SwissMapAbi,
        header: u64,
        map_type: u64,
    ) -> Result<MapShape, SnapshotError> {
        read_map(fake, &MapAbi::Swiss(*abi), header, map_type)
    }

    fn swiss_shape(
        entries: u64,
        capacity_slots: u64,
        bytes: u64,
        units: Vec<Unit>,
        directory_len: u64,
        tables: Vec<Table>,
    ) -> MapShape {
        MapShape {
            layout: MapLayout::Swiss,
            entries,
            capacity_slots,
            bytes,
            units,
            log2_buckets: None,
            evacuation: None,
            directory_len: Some(directory_len),
            tables,
        }
    }

    #[test]
    fn swiss_small_maps() {
        let abi = swiss_abi();
        let mut fake = Fake::new();
        let map_type = fake.alloc(swiss_type_bytes(&abi, GROUP_SIZE));
        let small = groups(
            &mut fake,
            &[[0x12, EMPTY, 0x7f, 0x00, EMPTY, 0x33, 0x44, EMPTY]],
        );
        let header = fake.alloc(swiss_map_bytes(
            &abi,
            SwissMap {
                used: 5,
                directory: small,
                ..SwissMap::default()
            },
        ));
        let shape = read_swiss(&mut fake, &abi, header, map_type).unwrap();
        assert_eq!(
            shape,
            swiss_shape(
                5,
                8,
                abi.map_size + GROUP_SIZE,
                vec![group(5, 0)],
                0,
                Vec::new()
            )
        );
        assert_eq!(shape.entries_per_unit(), BTreeMap::from([(5, 1)]));
        assert_eq!(shape.tombstones_per_group(), Some(BTreeMap::from([(0, 1)])));
        assert_eq!(shape.overflow_chains(), None);

        // No group allocated yet.
        let empty = fake.alloc(swiss_map_bytes(&abi, SwissMap::default()));
        assert_eq!(
            read_swiss(&mut fake, &abi, empty, map_type),
            Ok(swiss_shape(0, 0, abi.map_size, Vec::new(), 0, Vec::new()))
        );
        // Entries without a group.
        fake.write_u64(empty + abi.used, 1);
        assert_eq!(
            read_swiss(&mut fake, &abi, empty, map_type),
            Err(SnapshotError::Changed)
        );
        // A group that does not read.
        fake.write_u64(header + abi.dir_ptr, 0xdead_0000);
        assert_eq!(
            read_swiss(&mut fake, &abi, header, map_type),
            Err(SnapshotError::Unreadable)
        );
    }

    /// globalDepth 2, directory [t1, t1, t2, t3]: t1 (localDepth 1, 2 groups), t2 (localDepth
    /// 2, 1 group), t3 (localDepth 2, 4 groups), with tombstones.
    struct Swiss {
        header: u64,
        map_type: u64,
        directory: u64,
        tables: [u64; 3],
        data: [u64; 3],
    }

    const T1: Table = Table {
        capacity: 16,
        used: 3,
        local_depth: 1,
    };
    const T2: Table = Table {
        capacity: 8,
        used: 6,
        local_depth: 2,
    };
    const T3: Table = Table {
        capacity: 32,
        used: 9,
        local_depth: 2,
    };

    fn swiss_map(fake: &mut Fake, abi: &SwissMapAbi) -> Swiss {
        let map_type = fake.alloc(swiss_type_bytes(abi, GROUP_SIZE));
        let d1 = groups(
            fake,
            &[
                [0x01, EMPTY, DELETED, 0x7f, EMPTY, EMPTY, DELETED, 0x22],
                [EMPTY; 8],
            ],
        );
        let d2 = groups(
            fake,
            &[[0x00, 0x11, 0x22, 0x33, 0x44, 0x55, DELETED, EMPTY]],
        );
        let d3 = groups(
            fake,
            &[
                [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17],
                [DELETED; 8],
                [EMPTY, 0x05, DELETED, EMPTY, EMPTY, EMPTY, EMPTY, EMPTY],
                [EMPTY; 8],
            ],
        );
        let t1 = table(fake, abi, T1, d1, 1);
        let t2 = table(fake, abi, T2, d2, 0);
        let t3 = table(fake, abi, T3, d3, 3);
        let directory: Vec<u8> = [t1, t1, t2, t3]
            .iter()
            .flat_map(|t| t.to_le_bytes())
            .collect();
        let directory = fake.alloc(directory);
        let header = fake.alloc(swiss_map_bytes(
            abi,
            SwissMap {
                used: 18,
                directory,
                directory_len: 4,
                global_depth: 2,
                writing: 0,
            },
        ));
        Swiss {
            header,
            map_type,
            directory,
            tables: [t1, t2, t3],
            data: [d1, d2, d3],
        }
    }

    #[test]
    fn swiss_map_with_directory() {
        let abi = swiss_abi();
        let mut fake = Fake::new();
        let map = swiss_map(&mut fake, &abi);
        let shape = read_swiss(&mut fake, &abi, map.header, map.map_type).unwrap();
        let units = vec![
            group(3, 2),
            group(0, 0),
            group(6, 1),
            group(8, 0),
            group(0, 8),
            group(1, 1),
            group(0, 0),
        ];
        let bytes = abi.map_size
            + 4 * 8
            + (abi.table_size + 2 * GROUP_SIZE)
            + (abi.table_size + GROUP_SIZE)
            + (abi.table_size + 4 * GROUP_SIZE);
        assert_eq!(bytes, 1128);
        assert_eq!(
            shape,
            swiss_shape(18, 16 + 8 + 32, bytes, units, 4, vec![T1, T2, T3])
        );
        assert_eq!(
            shape.tombstones_per_group(),
            Some(BTreeMap::from([(0, 3), (1, 2), (2, 1), (8, 1)]))
        );
        assert_eq!(
            shape.entries_per_unit(),
            BTreeMap::from([(0, 3), (1, 1), (3, 1), (6, 1), (8, 1)])
        );
        assert_eq!(shape.overflow_chains(), None);
    }

    #[test]
    fn swiss_map_inconsistencies() {
        let abi = swiss_abi();
        let fresh = || {
            let mut fake = Fake::new();
            let map = swiss_map(&mut fake, &abi);
            (fake, map)
        };
        let read = |fake: &mut Fake, map: &Swiss| read_swiss(fake, &abi, map.header, map.map_type);
        let table_header = Err(SnapshotError::Inconsistent("table header out of range"));

        // The directory's length is not 2^globalDepth.
        for (len, depth) in [(3, 2), (4, 3), (4, 1), (1 << 25, 25)] {
            let (mut fake, map) = fresh();
            fake.write_u64(map.header + abi.dir_len, len);
            fake.write_u8(map.header + abi.global_depth, depth);
            assert_eq!(
                read(&mut fake, &map),
                Err(SnapshotError::Inconsistent(
                    "directory length is not 2^globalDepth"
                )),
                "dirLen {len}, globalDepth {depth}"
            );
        }

        // Table capacities that are not a power of two or out of range, and length masks that
        // do not match the capacity.
        for (capacity, length_mask) in [
            (24u16, 2u64),
            (0, u64::MAX),
            (4, 0),
            (2048, 255),
            (16, 0),
            (16, 2),
            (16, u64::MAX),
        ] {
            let (mut fake, map) = fresh();
            fake.write_u16(map.tables[1] + abi.table_capacity, capacity);
            fake.write_u64(map.tables[1] + abi.table_length_mask, length_mask);
            assert_eq!(
                read(&mut fake, &map),
                table_header,
                "capacity {capacity}, lengthMask {length_mask}"
            );
        }
        // More used than capacity; a local depth over the global depth.
        let (mut fake, map) = fresh();
        fake.write_u16(map.tables[1] + abi.table_used, 9);
        assert_eq!(read(&mut fake, &map), table_header);
        let (mut fake, map) = fresh();
        fake.write_u8(map.tables[2] + abi.table_local_depth, 3);
        assert_eq!(read(&mut fake, &map), table_header);

        // A table's count disagrees with its full slots.
        let (mut fake, map) = fresh();
        fake.write_u16(map.tables[0] + abi.table_used, 4);
        assert_eq!(read(&mut fake, &map), Err(SnapshotError::Changed));
        // The map's count disagrees with the tables'.
        let (mut fake, map) = fresh();
        fake.write_u64(map.header + abi.used, 17);
        assert_eq!(read(&mut fake, &map), Err(SnapshotError::Changed));

        // A writer is active, or starts (or the map changes) while it is read.
        let (mut fake, map) = fresh();
        fake.write_u8(map.header + abi.writing, 1);
        assert_eq!(read(&mut fake, &map), Err(SnapshotError::Changed));
        for (offset, bytes) in [
            (abi.writing, vec![1u8]),
            (abi.used, 19u64.to_le_bytes().to_vec()),
        ] {
            let (mut fake, map) = fresh();
            fake.write_after(1, map.header + offset, bytes);
            assert_eq!(read(&mut fake, &map), Err(SnapshotError::Changed));
        }

        // A null table in the directory.
        let (mut fake, map) = fresh();
        fake.write_u64(map.directory + 16, 0);
        assert_eq!(
            read(&mut fake, &map),
            Err(SnapshotError::Inconsistent("null table in the directory"))
        );

        // Unreadable directory, table, or groups.
        let (mut fake, map) = fresh();
        fake.write_u64(map.header + abi.dir_ptr, 0xdead_0000);
        assert_eq!(read(&mut fake, &map), Err(SnapshotError::Unreadable));
        let (mut fake, map) = fresh();
        fake.write_u64(map.directory + 24, 0xdead_0000);
        assert_eq!(read(&mut fake, &map), Err(SnapshotError::Unreadable));
        let (mut fake, map) = fresh();
        fake.write_u64(map.tables[2] + abi.table_groups, map.data[1]);
        assert_eq!(read(&mut fake, &map), Err(SnapshotError::Unreadable));

        // Group sizes out of range or not 8-aligned.
        for size in [0u64, 8, 12, 140, 8 + 8 * 256 + 8, u64::MAX] {
            let (mut fake, map) = fresh();
            fake.write_u64(map.map_type + abi.type_group_size, size);
            assert_eq!(
                read(&mut fake, &map),
                Err(SnapshotError::Inconsistent("group size out of range")),
                "group size {size}"
            );
        }
    }

    // ---- The target's memory, with a budget ----

    /// A bucket map built in this process's own memory, read through `Budgeted` (process_vm_readv
    /// on our own pid).
    #[test]
    fn budgeted_reads_own_process() {
        let abi = bucket_abi(&MAP_TABLE[0]);
        let overflow = bucket(BUCKET_SIZE, tophash(2), 0);
        let mut array = bucket(BUCKET_SIZE, tophash(8), overflow.as_ptr() as u64);
        array.extend(bucket(BUCKET_SIZE, tophash(3), 0));
        let map_type = bucket_type_bytes(&abi, BUCKET_SIZE as u16);
        let header = hmap_bytes(
            &abi,
            Hmap {
                count: 13,
                log2: 1,
                buckets: array.as_ptr() as u64,
                ..Hmap::default()
            },
        );
        let (header_at, type_at) = (header.as_ptr() as u64, map_type.as_ptr() as u64);
        let needed = abi.hmap_size + 2 + 2 * BUCKET_SIZE + BUCKET_SIZE + abi.hmap_size;
        let budgeted = |budget| Budgeted {
            pid: std::process::id(),
            budget,
            bytes_read: 0,
        };

        let mut memory = budgeted(needed);
        let shape = read_map(&mut memory, &MapAbi::Buckets(abi), header_at, type_at);
        assert_eq!(
            shape,
            Ok(bucket_shape(
                1,
                13,
                3 * 8,
                abi.hmap_size + 3 * BUCKET_SIZE,
                vec![unit(10, 1, false), unit(3, 0, false)]
            ))
        );
        assert_eq!(memory.bytes_read, needed);

        // One byte short: the last header read is refused.
        let mut memory = budgeted(needed - 1);
        assert_eq!(
            read_map(&mut memory, &MapAbi::Buckets(abi), header_at, type_at),
            Err(SnapshotError::TooLarge { budget: needed - 1 })
        );
        assert_eq!(memory.bytes_read, needed - abi.hmap_size);

        // An unmapped pointer in the target.
        let mut memory = budgeted(needed);
        assert_eq!(
            read_map(&mut memory, &MapAbi::Buckets(abi), 8, type_at),
            Err(SnapshotError::Unreadable)
        );
        std::hint::black_box((&overflow, &array, &map_type, &header));
    }

    #[test]
    fn reasons() {
        assert_eq!(SnapshotError::Unreadable.reason(), "unreadable");
        assert_eq!(SnapshotError::Denied.reason(), "denied");
        assert!(SnapshotError::Denied.to_string().contains("CAP_SYS_PTRACE"));
        assert_eq!(SnapshotError::Inconsistent("x").reason(), "inconsistent");
        assert_eq!(SnapshotError::Changed.reason(), "changed");
        assert_eq!(SnapshotError::TooLarge { budget: 1 }.reason(), "too_large");
        assert_eq!(
            SnapshotError::TooLarge { budget: 4096 }.to_string(),
            "the map is larger than the snapshot budget of 4096 bytes"
        );
    }
}
