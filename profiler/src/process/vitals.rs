//! Reading the runtime's vitals out of a target's memory (process_vm_readv: never a write, no
//! ptrace stop): the fields `gobin::vitals::plan` located, in one system call when all can be
//! read, else one per global so that one unreadable global does not take the others with it.
use std::io;

use super::memory;
use crate::{
    gobin::{
        abi::{CPU_STATS, CPU_STATS_SIZE, HeapStatsFields, SIZE_CLASS_BYTES, VitalsAbi},
        vitals::Globals,
    },
    model::vitals::{CPU_CLASSES, GoroutineCounts, HeapGoalInputs, HeapStats, RawVitals},
};

/// More Ps than any machine has: an `allp` longer than this is a misread.
const MAX_PS: u64 = 1 << 16;

#[derive(Clone)]
pub struct VitalsReader {
    pid: u32,
    row: &'static VitalsAbi,
    /// In the target's address space (load bias added).
    globals: Globals,
}

/// The bytes read for each global (empty where the global was not found or not read).
struct Buffers {
    controller: Vec<u8>,
    /// `numgc` and `numforcedgc`.
    cycles: Vec<u8>,
    /// `consistentHeapStats.gen`, the three `heapStatsDelta`s, and `gen` again: the two
    /// readings of `gen` frame the generations so a rotation during the read shows.
    heap: Vec<u8>,
    sys: Vec<u8>,
    cpu: Vec<u8>,
    gomaxprocs: Vec<u8>,
    latencies: Vec<u8>,
    /// `allglen`, `allp`'s pointer and length, the scheduler's free counts, `ngsys`.
    goroutines: Vec<u8>,
}

impl VitalsReader {
    pub fn new(pid: u32, row: &'static VitalsAbi, globals: Globals) -> Self {
        Self { pid, row, globals }
    }

    /// The fields now. The runtime updates them without a lock mapscope could take, so fields
    /// read together may come from moments a few instructions apart. Where the runtime has an
    /// invariant to check that by (the heap stats' spare generation is zero, free and
    /// allocated heap fit in mapped memory), a reading that breaks it is left out; the rest can
    /// show a value between two of the runtime's.
    pub fn read(&self) -> io::Result<RawVitals> {
        let row = self.row;
        let gc = row.gc_controller;
        let controller_len = [
            gc.gc_percent,
            gc.memory_limit,
            gc.heap_marked,
            gc.heap_scan,
            gc.last_stack_scan,
            gc.globals_scan,
            gc.gc_percent_heap_goal,
            gc.sweep_dist_min_trigger,
            gc.triggered,
            gc.heap_free,
            gc.total_alloc,
            gc.total_free,
            gc.mapped_ready,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + 8;
        let delta = row.heap_stats_delta;
        let goroutine_free = row.goroutines.sched_free.len();
        let mut buffers = Buffers {
            controller: vec![0; controller_len as usize],
            cycles: vec![0; 8],
            heap: vec![0; 4 + 3 * delta.size as usize + 4],
            sys: vec![0; 6 * 8],
            cpu: vec![0; CPU_STATS_SIZE as usize],
            gomaxprocs: vec![0; 4],
            latencies: vec![0; row.latency_histogram.words() * 8],
            goroutines: vec![0; 8 + 16 + 4 * goroutine_free + 4],
        };
        let mut groups = self.groups(&mut buffers);
        // One system call; if a piece cannot be read, each global on its own.
        let mut all: Vec<(u64, &mut [u8])> = groups
            .iter_mut()
            .flatten()
            .map(|(at, bytes)| (*at, &mut **bytes))
            .collect();
        if memory::read_many(self.pid, &mut all).is_err() {
            drop(all);
            let mut any = false;
            for group in groups.iter_mut().filter(|group| !group.is_empty()) {
                let mut pieces: Vec<(u64, &mut [u8])> = group
                    .iter_mut()
                    .map(|(at, bytes)| (*at, &mut **bytes))
                    .collect();
                if memory::read_many(self.pid, &mut pieces).is_ok() {
                    any = true;
                } else {
                    drop(pieces);
                    group.clear();
                }
            }
            if !any {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "none of the runtime's globals could be read",
                ));
            }
        }
        let read: Vec<bool> = groups.iter().map(|group| !group.is_empty()).collect();
        drop(groups);
        Ok(self.decode(&buffers, &read))
    }

    /// The pieces to read, one group per global, in `Buffers`' order; a group is empty when
    /// its global was not found.
    fn groups<'a>(&self, buffers: &'a mut Buffers) -> Vec<Vec<(u64, &'a mut [u8])>> {
        let row = self.row;
        let globals = self.globals;
        let at = |base: u64, offset: u64| base.wrapping_add(offset);
        let Buffers {
            controller,
            cycles,
            heap,
            sys,
            cpu,
            gomaxprocs,
            latencies,
            goroutines,
        } = buffers;
        let mut groups = Vec::new();
        groups.push(
            globals
                .gc_controller
                .map(|base| vec![(base, &mut controller[..])])
                .unwrap_or_default(),
        );
        groups.push(match globals.memstats {
            Some(base) => {
                let (gen_before, rest) = heap.split_at_mut(4);
                let (generations, gen_after) = rest.split_at_mut(rest.len() - 4);
                let generation_index = at(base, row.heap_stats + 3 * row.heap_stats_delta.size);
                let mut pieces: Vec<(u64, &mut [u8])> = vec![
                    (at(base, row.numgc), &mut cycles[..]),
                    (generation_index, gen_before),
                    (at(base, row.heap_stats), generations),
                    (generation_index, gen_after),
                ];
                for (bytes, offset) in sys.chunks_exact_mut(8).zip(row.sys) {
                    pieces.push((at(base, offset), bytes));
                }
                pieces
            }
            None => Vec::new(),
        });
        groups.push(match (globals.work, row.cpu_stats) {
            (Some(base), Some(offset)) => vec![(at(base, offset), &mut cpu[..])],
            _ => Vec::new(),
        });
        groups.push(
            globals
                .gomaxprocs
                .map(|base| vec![(base, &mut gomaxprocs[..])])
                .unwrap_or_default(),
        );
        groups.push(
            globals
                .sched
                .map(|base| vec![(at(base, row.time_to_run), &mut latencies[..])])
                .unwrap_or_default(),
        );
        groups.push(match (globals.sched, globals.allglen, globals.allp) {
            (Some(sched), Some(allglen), Some(allp)) => {
                let (allglen_bytes, rest) = goroutines.split_at_mut(8);
                let (allp_bytes, rest) = rest.split_at_mut(16);
                let (free, system) = rest.split_at_mut(rest.len() - 4);
                let mut pieces: Vec<(u64, &mut [u8])> =
                    vec![(allglen, allglen_bytes), (allp, allp_bytes)];
                for (bytes, offset) in free.chunks_exact_mut(4).zip(row.goroutines.sched_free) {
                    pieces.push((at(sched, *offset), bytes));
                }
                if let Some(offset) = row.goroutines.sched_ngsys {
                    pieces.push((at(sched, offset), system));
                }
                pieces
            }
            _ => Vec::new(),
        });
        groups
    }

    /// The raw fields from what was read (`read`: per group of `groups`, whether it was).
    fn decode(&self, buffers: &Buffers, read: &[bool]) -> RawVitals {
        let row = self.row;
        let gc = row.gc_controller;
        let word = |bytes: &[u8], at: u64| -> u64 {
            let at = at as usize;
            bytes
                .get(at..at + 8)
                .and_then(|word| word.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        let int32 = |bytes: &[u8], at: usize| -> i32 {
            bytes
                .get(at..at + 4)
                .and_then(|word| word.try_into().ok())
                .map_or(0, i32::from_le_bytes)
        };
        let [controller, memstats, work, gomaxprocs, sched, goroutines] =
            [0, 1, 2, 3, 4, 5].map(|group| read.get(group).copied().unwrap_or(false));
        let mut raw = RawVitals::default();
        if controller {
            let controller = &buffers.controller;
            raw.gc_percent = Some(word(controller, gc.gc_percent) as u32 as i32);
            raw.memory_limit = Some(word(controller, gc.memory_limit) as i64);
            raw.heap_marked = Some(word(controller, gc.heap_marked));
            raw.scan = Some([
                word(controller, gc.heap_scan),
                word(controller, gc.last_stack_scan),
                word(controller, gc.globals_scan),
            ]);
            raw.heap_goal = Some(HeapGoalInputs {
                gc_percent_heap_goal: word(controller, gc.gc_percent_heap_goal),
                sweep_dist_min_trigger: word(controller, gc.sweep_dist_min_trigger),
                triggered: word(controller, gc.triggered),
                heap_free: word(controller, gc.heap_free),
                total_alloc: word(controller, gc.total_alloc),
                total_free: word(controller, gc.total_free),
                mapped_ready: word(controller, gc.mapped_ready),
                memory_limit: word(controller, gc.memory_limit),
                heap_marked: word(controller, gc.heap_marked),
                headroom_percent: gc.heap_goal_headroom_percent,
            });
        }
        if memstats {
            // numforcedgc follows numgc (the table checks both offsets against DWARF).
            let both = word(&buffers.cycles, 0);
            raw.cycles = Some((both as u32, (both >> 32) as u32));
            let sys: Vec<u64> = (0..6).map(|index| word(&buffers.sys, index * 8)).collect();
            raw.heap = heap_stats_summed(
                &buffers.heap,
                &row.heap_stats_delta,
                sys.try_into().unwrap_or_default(),
            );
        }
        if work {
            let fields = CPU_STATS;
            let order = [
                fields.gc_assist,
                fields.gc_dedicated,
                fields.gc_idle,
                fields.gc_pause,
                fields.gc_total,
                fields.scavenge_assist,
                fields.scavenge_background,
                fields.scavenge_total,
                fields.idle,
                fields.user,
                fields.total,
            ];
            let mut values = [0i64; CPU_CLASSES];
            for (value, offset) in values.iter_mut().zip(order) {
                *value = word(&buffers.cpu, offset) as i64;
            }
            raw.cpu = Some(values);
        }
        if gomaxprocs {
            raw.gomaxprocs = Some(int32(&buffers.gomaxprocs, 0));
        }
        if sched {
            let layout = row.latency_histogram;
            let words: Vec<u64> = (0..layout.words() as u64)
                .map(|index| word(&buffers.latencies, index * 8))
                .collect();
            raw.sched_latencies = Some((layout, layout.metric_counts(&words)));
        }
        if goroutines {
            let bytes = &buffers.goroutines;
            let free_count = row.goroutines.sched_free.len();
            let sched_free = (0..free_count)
                .map(|index| int32(bytes, 24 + 4 * index))
                .collect();
            let system = int32(bytes, 24 + 4 * free_count);
            raw.goroutines = self
                .goroutines(
                    word(bytes, 0),
                    word(bytes, 8),
                    word(bytes, 16),
                    sched_free,
                    system,
                )
                .map_err(|error| tracing::debug!("PID {}: goroutines: {error}", self.pid))
                .ok();
        }
        raw
    }

    /// `gcount()`'s terms: the ones read already, and each P's free count, read now.
    fn goroutines(
        &self,
        allglen: u64,
        allp: u64,
        len: u64,
        sched_free: Vec<i32>,
        system: i32,
    ) -> io::Result<GoroutineCounts> {
        if len > MAX_PS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("allp has {len} entries"),
            ));
        }
        let mut ps = vec![0u8; len as usize * 8];
        if len > 0 {
            memory::read(self.pid, allp, &mut ps)?;
        }
        let ps: Vec<u64> = ps
            .chunks_exact(8)
            .map(|word| u64::from_le_bytes(word.try_into().unwrap_or_default()))
            // allp[i] is never nil for i < len(allp); a nil ends the walk like the runtime's.
            .take_while(|&p| p != 0)
            .collect();
        let mut p_free = vec![[0u8; 4]; ps.len()];
        let offset = self.row.goroutines.p_free;
        let mut pieces: Vec<(u64, &mut [u8])> = ps
            .iter()
            .zip(p_free.iter_mut())
            .map(|(&p, bytes)| (p.wrapping_add(offset), &mut bytes[..]))
            .collect();
        memory::read_many(self.pid, &mut pieces)?;
        Ok(GoroutineCounts {
            allglen,
            sched_free,
            p_free: p_free
                .iter()
                .map(|bytes| i32::from_le_bytes(*bytes))
                .collect(),
            system: self.row.goroutines.sched_ngsys.map(|_| system),
        })
    }
}

/// The three `heapStatsDelta` generations summed field by field, from `bytes`: `gen`, the
/// generations, `gen` again. `None` when the read caught `consistentHeapStats.read` rotating
/// them (`gen` changed, or the generation that stays zero between reads, the one after `gen`,
/// is not): the sum would count a generation twice or miss it.
fn heap_stats_summed(bytes: &[u8], fields: &HeapStatsFields, sys: [u64; 6]) -> Option<HeapStats> {
    let size = fields.size as usize;
    let gen_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let (before, after) = (gen_at(0)?, gen_at(4 + 3 * size)?);
    if before != after || before > 2 {
        return None;
    }
    let generations = bytes.get(4..4 + 3 * size)?;
    let spare = (before as usize + 1) % 3;
    if generations[spare * size..(spare + 1) * size]
        .iter()
        .any(|&byte| byte != 0)
    {
        return None;
    }
    let word = |generation: usize, offset: u64| -> u64 {
        let at = generation * size + offset as usize;
        generations
            .get(at..at + 8)
            .and_then(|word| word.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    let sum = |offset: u64| (0..3).fold(0u64, |total, g| total.wrapping_add(word(g, offset)));
    let counts = |offset: u64| -> Vec<u64> {
        (0..SIZE_CLASS_BYTES.len() as u64)
            .map(|class| sum(offset + class * 8))
            .collect()
    };
    Some(HeapStats {
        committed: sum(fields.committed) as i64,
        released: sum(fields.released) as i64,
        large_alloc: sum(fields.large_alloc),
        large_alloc_count: sum(fields.large_alloc_count),
        large_free: sum(fields.large_free),
        large_free_count: sum(fields.large_free_count),
        small_alloc_count: counts(fields.small_alloc_count),
        small_free_count: counts(fields.small_free_count),
        class_bytes: &SIZE_CLASS_BYTES,
        sys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: HeapStatsFields = HeapStatsFields {
        size: 32,
        committed: 0,
        released: 8,
        large_alloc: 16,
        large_alloc_count: 24,
        large_free: 16,
        large_free_count: 24,
        small_alloc_count: 0,
        small_free_count: 0,
    };

    /// `gen`, three 32-byte generations whose first word is `firsts`, `gen` again.
    fn heap_bytes(before: u32, firsts: [u64; 3], after: u32) -> Vec<u8> {
        let mut bytes = before.to_le_bytes().to_vec();
        for first in firsts {
            let mut generation = vec![0u8; 32];
            generation[..8].copy_from_slice(&first.to_le_bytes());
            bytes.extend(generation);
        }
        bytes.extend(after.to_le_bytes());
        bytes
    }

    /// Between two runtime reads, `gen` names the generation written now, the one before it
    /// holds the total, and the one after it is zero: summed. Caught mid-rotation (the spare
    /// generation not yet zeroed, or `gen` moving during the read): left out.
    #[test]
    fn heap_generations_are_summed_only_when_consistent() {
        let sys = [0; 6];
        let at_rest = heap_stats_summed(&heap_bytes(1, [100, 5, 0], 1), &FIELDS, sys);
        assert_eq!(at_rest.map(|heap| heap.committed), Some(105));
        // gen 0: generation 1 is the spare one.
        let rest0 = heap_stats_summed(&heap_bytes(0, [5, 0, 100], 0), &FIELDS, sys);
        assert_eq!(rest0.map(|heap| heap.committed), Some(105));
        // Mid-rotation from the first case: gen moved on to 2, generation 0 merged into
        // generation 1 but not yet zeroed.
        assert_eq!(
            heap_stats_summed(&heap_bytes(2, [100, 105, 0], 2), &FIELDS, sys),
            None
        );
        assert_eq!(
            heap_stats_summed(&heap_bytes(1, [100, 5, 0], 2), &FIELDS, sys),
            None
        );
        assert_eq!(
            heap_stats_summed(&heap_bytes(7, [0, 0, 0], 7), &FIELDS, sys),
            None
        );
    }
}
