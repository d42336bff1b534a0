//! Reading the runtime's vitals out of a target's memory (process_vm_readv: never a write, no
//! ptrace stop): the fields `gobin::vitals::plan` located, in one system call.
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

impl VitalsReader {
    pub fn new(pid: u32, row: &'static VitalsAbi, globals: Globals) -> Self {
        Self { pid, row, globals }
    }

    /// The fields now. The runtime updates them without a lock mapscope could take, so fields
    /// read together may come from moments a few instructions apart; each is whole (aligned
    /// words, which the runtime writes atomically).
    pub fn read(&self) -> io::Result<RawVitals> {
        let gc = self.row.gc_controller;
        let gc_span = [
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
        let mut controller = vec![0u8; gc_span as usize];
        let mut cycles = [0u8; 8];
        let delta = self.row.heap_stats_delta;
        let mut heap_stats = vec![0u8; 3 * delta.size as usize];
        let mut sys = [[0u8; 8]; 6];
        let mut cpu = [0u8; CPU_STATS_SIZE as usize];
        let mut gomaxprocs = [0u8; 4];
        let layout = self.row.latency_histogram;
        let mut latencies = vec![0u8; layout.words() * 8];
        let mut pieces: Vec<(u64, &mut [u8])> = Vec::new();
        if let Some(address) = self.globals.gc_controller {
            pieces.push((address, &mut controller));
        }
        if let Some(address) = self.globals.memstats {
            pieces.push((address + self.row.numgc, &mut cycles));
            pieces.push((address + self.row.heap_stats, &mut heap_stats));
            for (bytes, offset) in sys.iter_mut().zip(self.row.sys) {
                pieces.push((address + offset, bytes));
            }
        }
        if let (Some(address), Some(offset)) = (self.globals.work, self.row.cpu_stats) {
            pieces.push((address + offset, &mut cpu));
        }
        if let Some(address) = self.globals.gomaxprocs {
            pieces.push((address, &mut gomaxprocs));
        }
        if let Some(address) = self.globals.sched {
            pieces.push((address + self.row.time_to_run, &mut latencies));
        }
        let goroutine_fields = self.row.goroutines;
        let mut allglen = [0u8; 8];
        let mut allp = [0u8; 16];
        let mut sched_free = vec![[0u8; 4]; goroutine_fields.sched_free.len()];
        let mut system = [0u8; 4];
        let counting_goroutines = if let (Some(sched), Some(allglen_at), Some(allp_at)) =
            (self.globals.sched, self.globals.allglen, self.globals.allp)
        {
            pieces.push((allglen_at, &mut allglen));
            pieces.push((allp_at, &mut allp));
            for (bytes, offset) in sched_free.iter_mut().zip(goroutine_fields.sched_free) {
                pieces.push((sched + offset, bytes));
            }
            if let Some(offset) = goroutine_fields.sched_ngsys {
                pieces.push((sched + offset, &mut system));
            }
            true
        } else {
            false
        };
        memory::read_many(self.pid, &mut pieces)?;
        drop(pieces);

        let word = |bytes: &[u8], at: u64| -> u64 {
            let at = at as usize;
            bytes
                .get(at..at + 8)
                .and_then(|word| word.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        let mut raw = RawVitals::default();
        if self.globals.gc_controller.is_some() {
            raw.gc_percent = Some(word(&controller, gc.gc_percent) as u32 as i32);
            raw.memory_limit = Some(word(&controller, gc.memory_limit) as i64);
            raw.heap_marked = Some(word(&controller, gc.heap_marked));
            raw.scan = Some([
                word(&controller, gc.heap_scan),
                word(&controller, gc.last_stack_scan),
                word(&controller, gc.globals_scan),
            ]);
            raw.heap_goal = Some(HeapGoalInputs {
                gc_percent_heap_goal: word(&controller, gc.gc_percent_heap_goal),
                sweep_dist_min_trigger: word(&controller, gc.sweep_dist_min_trigger),
                triggered: word(&controller, gc.triggered),
                heap_free: word(&controller, gc.heap_free),
                total_alloc: word(&controller, gc.total_alloc),
                total_free: word(&controller, gc.total_free),
                mapped_ready: word(&controller, gc.mapped_ready),
                memory_limit: word(&controller, gc.memory_limit),
                heap_marked: word(&controller, gc.heap_marked),
                headroom_percent: gc.heap_goal_headroom_percent,
            });
        }
        if self.globals.memstats.is_some() {
            // numforcedgc follows numgc (the table checks both offsets against DWARF).
            let both = u64::from_le_bytes(cycles);
            raw.cycles = Some((both as u32, (both >> 32) as u32));
            raw.heap = Some(heap_stats_summed(
                &heap_stats,
                &delta,
                sys.map(u64::from_le_bytes),
            ));
        }
        if self.globals.work.is_some() && self.row.cpu_stats.is_some() {
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
                *value = word(&cpu, offset) as i64;
            }
            raw.cpu = Some(values);
        }
        if self.globals.gomaxprocs.is_some() {
            raw.gomaxprocs = Some(i32::from_le_bytes(gomaxprocs));
        }
        if counting_goroutines {
            raw.goroutines = Some(self.goroutines(
                u64::from_le_bytes(allglen),
                &allp,
                &sched_free,
                i32::from_le_bytes(system),
            )?);
        }
        if self.globals.sched.is_some() {
            let words: Vec<u64> = latencies
                .chunks_exact(8)
                .map(|word| u64::from_le_bytes(word.try_into().unwrap_or_default()))
                .collect();
            raw.sched_latencies = Some((layout, layout.metric_counts(&words)));
        }
        Ok(raw)
    }

    /// `gcount()`'s terms: the ones read already, and each P's free count, read now.
    fn goroutines(
        &self,
        allglen: u64,
        allp: &[u8; 16],
        sched_free: &[[u8; 4]],
        system: i32,
    ) -> io::Result<GoroutineCounts> {
        let (pointer, len) = (
            u64::from_le_bytes(allp[..8].try_into().unwrap_or_default()),
            u64::from_le_bytes(allp[8..].try_into().unwrap_or_default()),
        );
        if len > MAX_PS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("allp has {len} entries"),
            ));
        }
        let mut ps = vec![0u8; len as usize * 8];
        if len > 0 {
            memory::read(self.pid, pointer, &mut ps)?;
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
            .map(|(&p, bytes)| (p + offset, &mut bytes[..]))
            .collect();
        memory::read_many(self.pid, &mut pieces)?;
        Ok(GoroutineCounts {
            allglen,
            sched_free: sched_free
                .iter()
                .map(|bytes| i32::from_le_bytes(*bytes))
                .collect(),
            p_free: p_free
                .iter()
                .map(|bytes| i32::from_le_bytes(*bytes))
                .collect(),
            system: self.row.goroutines.sched_ngsys.map(|_| system),
        })
    }
}

/// The three `heapStatsDelta` generations in `bytes`, summed field by field.
fn heap_stats_summed(bytes: &[u8], fields: &HeapStatsFields, sys: [u64; 6]) -> HeapStats {
    let classes = SIZE_CLASS_BYTES.len();
    let word = |generation: usize, offset: u64| -> u64 {
        let at = generation * fields.size as usize + offset as usize;
        bytes
            .get(at..at + 8)
            .and_then(|word| word.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    let sum = |offset: u64| (0..3).fold(0u64, |total, g| total.wrapping_add(word(g, offset)));
    let counts = |offset: u64| -> Vec<u64> {
        (0..classes as u64)
            .map(|class| sum(offset + class * 8))
            .collect()
    };
    HeapStats {
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
    }
}
