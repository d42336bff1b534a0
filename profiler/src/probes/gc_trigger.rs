//! Where the GC trigger probes go (profiler-ebpf/src/gc_trigger.rs): the entry and RET
//! instructions of `runtime.gcStart` and the entry of `runtime.gcBgMarkStartWorkers`, the same
//! functions on every supported release.
use super::stw::{PlanError, ProbePoint};
use crate::gobin::{
    GoBinary,
    abi::{GC_BG_MARK_START_WORKERS, GC_START},
};

/// Program names in the eBPF object.
pub const GC_START_ENTRY: &str = "gc_start_entry";
pub const GC_START_RETURN: &str = "gc_start_return";
pub const GC_START_WORKERS: &str = "gc_start_workers";

/// The probe points; `Err` names what the binary lacks.
pub fn plan(binary: &GoBinary) -> Result<Vec<ProbePoint>, PlanError> {
    let start = binary
        .function(GC_START)
        .ok_or(PlanError::MissingFunction(GC_START))?;
    let workers = binary
        .function(GC_BG_MARK_START_WORKERS)
        .ok_or(PlanError::MissingFunction(GC_BG_MARK_START_WORKERS))?;
    let returns = binary.ret_sites(start);
    if returns.is_empty() {
        return Err(PlanError::NoReturn(GC_START));
    }
    let sites = std::iter::once((GC_START_ENTRY, GC_START, binary.entry_site(start)))
        .chain(
            returns
                .into_iter()
                .map(|address| (GC_START_RETURN, GC_START, address)),
        )
        .chain(std::iter::once((
            GC_START_WORKERS,
            GC_BG_MARK_START_WORKERS,
            binary.entry_site(workers),
        )));
    sites
        .map(|(program, function, address)| {
            let file_offset = binary
                .file_offset(address)
                .ok_or(PlanError::NotInFile { function, address })?;
            Ok(ProbePoint {
                program,
                function,
                address,
                file_offset,
                cookie: 0,
            })
        })
        .collect()
}
