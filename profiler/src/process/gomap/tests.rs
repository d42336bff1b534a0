//! The readers against fake address spaces: every layout, growth state and race the
//! target's writers can cause.
use std::collections::BTreeMap;

use super::{
    buckets::{HASH_WRITING, MAX_LOG2_BUCKETS, SAME_SIZE_GROW, array_buckets},
    swiss::CTRL_DELETED,
    *,
};
use crate::{
    gobin::abi::{BucketMapAbi, MAP_TABLE, MapAbiRow, NOSWISS_MAP_ROW, SwissMapAbi},
    model::maps::{Evacuation, MapLayout, Table, Unit},
};

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
                address >= *start && address + bytes.len() as u64 <= *start + region.len() as u64
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
                .find(|(start, region)| *address >= *start && end <= *start + region.len() as u64)
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
    let read =
        |fake: &mut Fake, map: &SmallBuckets| read_buckets(fake, &abi, map.header, map.map_type);

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
    for error in [
        SnapshotError::Unreadable,
        SnapshotError::Denied,
        SnapshotError::Inconsistent("x"),
        SnapshotError::Changed,
        SnapshotError::TooLarge { budget: 1 },
    ] {
        assert!(SnapshotError::REASONS.contains(&error.reason()), "{error}");
    }
    assert_eq!(
        SnapshotError::TooLarge { budget: 4096 }.to_string(),
        "the map is larger than the snapshot budget of 4096 bytes"
    );
}
