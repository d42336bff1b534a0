//! Where the allocation-sampling probe goes.
use super::stw::ProbePoint;
use crate::gobin::{
    GoBinary,
    abi::{MALLOCGC, MALLOCGC_SPECIALIZED, PROFILE_ALLOC},
};

/// Program names in the eBPF object (profiler-ebpf/src/alloc.rs).
pub const ALLOC_SAMPLE: &str = "alloc_sample";
pub const ALLOC_EXACT: &str = "alloc_exact";
pub const ALLOC_COUNT: &str = "alloc_count";

/// A probe on every allocation entry point the binary has (`mallocgc`, and on Go 1.26+ its
/// size-specialized variants), after each one's stack check, running `program`: exact mode's
/// (`ALLOC_EXACT`) or counted mode's (`ALLOC_COUNT`).
pub fn plan_every_allocation(binary: &GoBinary, program: &'static str) -> Vec<ProbePoint> {
    let mut functions: Vec<(&'static str, crate::gobin::Function)> = Vec::new();
    if let Some(function) = binary.function(MALLOCGC) {
        functions.push((MALLOCGC, function));
    }
    for pattern in MALLOCGC_SPECIALIZED {
        let prefix = pattern.trim_end_matches('*');
        for (_, function) in binary.functions_with_prefix(prefix) {
            functions.push((pattern, function));
        }
    }
    functions
        .into_iter()
        .filter_map(|(name, function)| {
            let address = binary.entry_site(function);
            Some(ProbePoint {
                program,
                function: name,
                address,
                file_offset: binary.file_offset(address)?,
                cookie: 0,
                object: super::stw::EXECUTABLE,
            })
        })
        .collect()
}

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
        object: super::stw::EXECUTABLE,
    })
}
