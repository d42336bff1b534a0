//! The daemon's watch on programs that start (`profiler-ebpf/src/execs.rs`): one raw tracepoint
//! for the whole node, so that finding new targets costs what starts, not what runs.
use std::os::unix::fs::MetadataExt as _;

use aya::{
    Ebpf,
    maps::{Array, MapData, RingBuf},
    programs::{ProgramError, RawTracePoint},
};
use profiler_common::execs::PidNamespace;

use super::loaded::{LoadError, LogDrain, load, take_map};

const PROGRAM: &str = "process_exec";
const TRACEPOINT: &str = "sched_process_exec";

/// The inode of the initial PID namespace, the same on every kernel (`PROC_PID_INIT_INO` in
/// include/linux/proc_ns.h).
const INITIAL_PID_NAMESPACE_INODE: u64 = 0xEFFF_FFFC;

/// The loaded watch: dropping it detaches the tracepoint.
pub struct ExecWatch {
    queue: RingBuf<MapData>,
    lost: Array<MapData, u64>,
    lost_seen: u64,
    // Last: the maps above are handles of their own; the object holds the program.
    _ebpf: Ebpf,
    _logger: Option<LogDrain>,
}

/// What `ExecWatch::drain` found.
#[derive(Debug, Default)]
pub struct Execs {
    /// Processes (PIDs as this process's namespace numbers them) that exec'd, each once.
    pub pids: Vec<u32>,
    /// Whether only a read of all of /proc finds every process that exec'd: some were not
    /// queued (the queue was full), or ran in another PID namespace.
    pub look_at_all: bool,
}

impl ExecWatch {
    /// Load the watch and attach it; execs are queued from then on.
    pub fn start() -> Result<Self, LoadError> {
        // No target's tables: every family's shrinks to one entry (a ring buffer to a page).
        let (mut ebpf, logger) = load(&[], &[])?;
        let mut namespace: Array<MapData, PidNamespace> =
            take_map(&mut ebpf, "EXEC_PID_NAMESPACE")?;
        // The PID namespace this process sees /proc in, unless it is the initial one, which
        // numbers every process on the node (a DaemonSet's, with hostPID); a sidecar's is its
        // pod's. The kernel programs then give the PID of a process in exactly that namespace,
        // and only say "one elsewhere" of the others: outside it (invisible here), or in one
        // nested in it (visible with other numbers), which a read of all of /proc finds.
        if let Ok(own) = std::fs::metadata("/proc/self/ns/pid")
            && own.ino() != INITIAL_PID_NAMESPACE_INODE
        {
            let own = PidNamespace {
                device: own.dev(),
                inode: own.ino(),
            };
            namespace
                .set(0, own, 0)
                .map_err(|_| LoadError::Map("EXEC_PID_NAMESPACE"))?;
        }
        let queue = take_map(&mut ebpf, "EXECS")?;
        let lost = take_map(&mut ebpf, "EXECS_LOST")?;
        let program: &mut RawTracePoint = ebpf
            .program_mut(PROGRAM)
            .ok_or(LoadError::MissingProgram { name: PROGRAM })?
            .try_into()
            .map_err(|source| LoadError::Program {
                name: PROGRAM,
                source,
            })?;
        program
            .load()
            .and_then(|()| program.attach(TRACEPOINT).map(drop))
            .map_err(|source: ProgramError| LoadError::Program {
                name: PROGRAM,
                source,
            })?;
        Ok(Self {
            queue,
            lost,
            lost_seen: 0,
            _ebpf: ebpf,
            _logger: logger,
        })
    }

    /// The processes that exec'd since the last call.
    pub fn drain(&mut self) -> Execs {
        let mut pids = Vec::new();
        while let Some(item) = self.queue.next() {
            if let Some(bytes) = item.first_chunk::<4>() {
                pids.push(u32::from_ne_bytes(*bytes));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        let elsewhere = pids.first() == Some(&0);
        if elsewhere {
            pids.remove(0);
        }
        let lost_now = self.lost.get(&0, 0).unwrap_or(self.lost_seen);
        let lost = lost_now != self.lost_seen;
        self.lost_seen = lost_now;
        Execs {
            pids,
            look_at_all: lost || elsewhere,
        }
    }
}
