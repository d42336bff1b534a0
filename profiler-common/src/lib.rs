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
