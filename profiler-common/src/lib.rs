//! Types shared by the kernel programs (`profiler-ebpf`) and the daemon (`profiler`).
//!
//! Everything here is `#[repr(C)]` and checked for size at compile time: both sides read the same
//! bytes, so a field added on one side only must fail the build, not corrupt a number.
#![cfg_attr(not(test), no_std)]

pub mod alloc;
pub mod counters;
pub mod execs;
pub mod maps;
pub mod native;
pub mod stacks;
pub mod stw;
pub mod trigger;

/// Frames kept of a user stack the kernel walks (allocation and map sites): the leaf end, which
/// names the site, is always kept; a deeper stack loses its outermost frames, as Go's own
/// profiles did up to Go 1.22 at 32. Half the kernel's 127: each stack kept costs 528 bytes.
pub const STACK_DEPTH: usize = 64;

/// The hash tables whose entries the kernel allocates as they are created
/// (`BPF_F_NO_PREALLOC`) where that is safe for tracing programs, from Linux 6.1 (its BPF
/// memory allocator; before, the verifier warns, or refuses on PREEMPT_RT): a target then
/// locks kernel memory for the stacks, samples and sites it has, not for the most it could
/// have. The object declares them preallocated; userspace sets the flag at load.
pub const ON_DEMAND_TABLES: [&str; 6] = [
    "ALLOC_STACKS",
    "ALLOC_SAMPLES_0",
    "ALLOC_SAMPLES_1",
    "MAP_STACKS",
    "MAP_SITE_EVENTS",
    "MAP_OPS",
];
