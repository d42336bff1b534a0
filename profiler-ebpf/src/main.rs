//! mapscope's kernel programs. One module per probe family; each program is small, counts or
//! pairs in the kernel, and sends only rare events (one per stop-the-world) to userspace.
#![no_std]
#![no_main]
// Atomic adds on map values (`counters::add`): the BPF target's core has no atomic RMW types.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod alloc;
mod calibration;
mod counters;
mod execs;
mod gc;
mod gc_trigger;
mod goabi;
mod maps;
mod native;
mod stacks;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any reachable panic path.
    loop {}
}

// bpf_probe_read_user and friends are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
