//! An empty uprobe: the baseline `cargo xtask bench` compares mapscope's programs with, so the
//! reported per-hit cost separates the kernel's uprobe trap from mapscope's own work.
//! Never attached by the profiler itself.
use aya_ebpf::{macros::uprobe, programs::ProbeContext};

#[uprobe]
pub fn calibration_noop(_ctx: ProbeContext) -> u32 {
    0
}
