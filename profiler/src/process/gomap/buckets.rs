//! Bucket maps (Go ≤ 1.23, and later releases built with GOEXPERIMENT=noswissmap): the
//! header, the bucket array, the old array during a growth, and the overflow chains.

use super::{
    Memory, SnapshotError, for_each_record, read_scattered, u8_at, u32_at, u64_at, verdict,
};
use crate::{
    gobin::abi::BucketMapAbi,
    model::maps::{Evacuation, MapLayout, MapShape, Unit},
};

/// Bits of `hmap.flags` (src/runtime/map.go): a writer is active; the growth keeps the size.
pub(super) const HASH_WRITING: u8 = 4;
pub(super) const SAME_SIZE_GROW: u8 = 8;
/// iterator, oldIterator, hashWriting, sameSizeGrow: the only bits the runtime sets.
const KNOWN_FLAGS: u8 = 15;
/// Slots per bucket, and tophash values below `MIN_TOP_HASH` (empty or evacuated markers).
const BUCKET_SLOTS: u16 = 8;
const MIN_TOP_HASH: u8 = 5;
const EVACUATED: std::ops::Range<u8> = 2..5;
/// A map with more buckets than 2^40 is not a map: its header is garbage.
pub(super) const MAX_LOG2_BUCKETS: u8 = 40;
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
pub(super) fn array_buckets(log2: u8) -> u64 {
    let buckets = 1u64 << log2;
    if log2 >= 4 {
        buckets + (1u64 << (log2 - 4))
    } else {
        buckets
    }
}

pub(super) fn read_bucket_map(
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
