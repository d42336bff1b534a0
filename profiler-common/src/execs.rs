//! The daemon's queue of processes that exec'd (`profiler-ebpf/src/execs.rs`).

/// Bytes of the queue: 4,096 execs between two reads (each PID takes 16 bytes with its
/// header), half a second apart, so 8,000 execs a second before one is lost.
pub const EXEC_QUEUE_BYTES: u32 = 64 * 1024;

/// A PID namespace, as `stat` on `/proc/self/ns/pid` names it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PidNamespace {
    pub device: u64,
    pub inode: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)], two u64s, every bit pattern valid.
    unsafe impl aya::Pod for super::PidNamespace {}
}
