//! Programs that start, for the daemon: a raw tracepoint on `sched_process_exec` queues the
//! PID of every process that runs a new program, so the daemon looks at those instead of
//! reading every process in /proc every half second. Attached once per daemon, never to a
//! target; it fires once per exec on the node, which is rare next to anything it could slow.
use aya_ebpf::{
    bindings::{BPF_RB_NO_WAKEUP, bpf_pidns_info},
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_ns_current_pid_tgid},
    macros::{map, raw_tracepoint},
    maps::{Array, RingBuf},
    programs::RawTracePointContext,
};
use profiler_common::execs::{EXEC_QUEUE_BYTES, PidNamespace};

/// PIDs that exec'd, as the daemon's PID namespace numbers them. No wake-ups: the daemon
/// drains it on its own clock.
#[map]
static EXECS: RingBuf = RingBuf::with_byte_size(EXEC_QUEUE_BYTES, 0);

/// The daemon's PID namespace, set by the daemon before attaching; zero when it is the
/// initial one, which numbers every process (the helper below would skip those in nested
/// namespaces: containers).
#[map]
static EXEC_PID_NAMESPACE: Array<PidNamespace> = Array::with_max_entries(1, 0);

/// Execs not queued (the queue was full): the daemon then reads all of /proc.
#[map]
static EXECS_LOST: Array<u64> = Array::with_max_entries(1, 0);

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec(_ctx: RawTracePointContext) -> i32 {
    // A process in another PID namespace than the daemon's may be in one nested in it, which
    // the daemon sees with other numbers: queued as 0 (no process has it), "look at all".
    let pid = daemon_pid().unwrap_or(0);
    if EXECS
        .output::<u32>(&pid, u64::from(BPF_RB_NO_WAKEUP))
        .is_err()
        && let Some(lost) = EXECS_LOST.get_ptr_mut(0)
    {
        crate::counters::add(lost, 1);
    }
    0
}

/// The exec'ing process's PID in the daemon's PID namespace; `None` if it runs in another.
#[inline(always)]
fn daemon_pid() -> Option<u32> {
    let namespace = EXEC_PID_NAMESPACE.get(0)?;
    if namespace.device == 0 && namespace.inode == 0 {
        return Some((bpf_get_current_pid_tgid() >> 32) as u32);
    }
    let mut ids = bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: `ids` is a valid bpf_pidns_info of the size passed.
    let found = unsafe {
        bpf_get_ns_current_pid_tgid(
            namespace.device,
            namespace.inode,
            &mut ids,
            core::mem::size_of::<bpf_pidns_info>() as u32,
        )
    };
    (found == 0).then_some(ids.tgid)
}
