//! Where the allocation-sampling probe goes.
use super::stw::ProbePoint;
use crate::gobin::{GoBinary, abi::PROFILE_ALLOC};

/// Program name in the eBPF object (profiler-ebpf/src/alloc.rs).
pub const ALLOC_SAMPLE: &str = "alloc_sample";

/// The probe on `runtime.profilealloc`, after its stack check, or `None` if the binary lacks it.
pub fn plan(binary: &GoBinary) -> Option<ProbePoint> {
    let function = binary.function(PROFILE_ALLOC)?;
    let address = binary.entry_site(function);
    Some(ProbePoint {
        program: ALLOC_SAMPLE,
        function: PROFILE_ALLOC,
        address,
        file_offset: binary.file_offset(address)?,
        cookie: 0,
    })
}
