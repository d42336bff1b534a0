//! Types shared by the kernel programs (`profiler-ebpf`) and the daemon (`profiler`).
//!
//! Everything here is `#[repr(C)]` and checked for size at compile time: both sides read the same
//! bytes, so a field added on one side only must fail the build, not corrupt a number.
#![cfg_attr(not(test), no_std)]

pub mod alloc;
pub mod counters;
pub mod maps;
pub mod stw;
pub mod trigger;

/// Frames kept of a user stack the kernel walks (allocation and map sites): the leaf end, which
/// names the site, is always kept; a deeper stack loses its outermost frames, as Go's own
/// profiles did up to Go 1.22 at 32. Half the kernel's 127, which halves the stack tables'
/// memory (every slot is preallocated at full depth).
pub const STACK_DEPTH: usize = 64;
