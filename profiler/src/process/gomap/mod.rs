//! Reading a Go map out of a live target, never writing: the header, then the bucket array
//! and overflow chains (Go ≤ 1.23) or the directory, tables and groups (swiss tables, Go
//! 1.24+), in large batched reads.
//!
//! The target keeps running while this reads, and the map may be written, grown or freed
//! meanwhile. So every figure is checked against another (entries counted against the header's
//! count, the header read again at the end, sizes against their invariants) and a snapshot that
//! fails a check is dropped with its reason rather than shown.
mod buckets;
mod swiss;
#[cfg(test)]
mod tests;

use thiserror::Error;

use crate::{gobin::abi::MapAbi, model::maps::MapShape};

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
    /// Every `reason` label of `mapscope_map_snapshots_dropped_total`.
    pub const REASONS: [&str; 5] = [
        "unreadable",
        "denied",
        "inconsistent",
        "changed",
        "too_large",
    ];

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
        MapAbi::Buckets(abi) => buckets::read_bucket_map(memory, abi, header, map_type),
        MapAbi::Swiss(abi) => swiss::read_swiss_map(memory, abi, header, map_type),
    }
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
