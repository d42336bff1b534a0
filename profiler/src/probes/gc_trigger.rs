//! Where the GC trigger probes go (profiler-ebpf/src/gc_trigger.rs): the entries of
//! `runtime.gcStart` and `runtime.gcBgMarkStartWorkers`, the same functions on every supported
//! release.
use super::stw::{PlanError, ProbePoint};
use crate::gobin::{
    GoBinary,
    abi::{self, GC_BG_MARK_START_WORKERS, GC_START},
};

/// Program names in the eBPF object.
pub const GC_START_ENTRY: &str = "gc_start_entry";
pub const GC_START_WORKERS: &str = "gc_start_workers";

/// The probe points; `Err` says what is missing.
pub fn plan(binary: &GoBinary) -> Result<Vec<ProbePoint>, PlanError> {
    let row = abi::gc_start_abi(binary.version)
        .filter(|row| {
            // A release newer than the table only where its DWARF confirms the layout.
            binary.version.release() <= row.last
                || binary
                    .dwarf_disagreements(&row.dwarf)
                    .is_some_and(|found| found.is_empty())
        })
        .ok_or(PlanError::UnknownLayout(GC_START))?;
    [
        (GC_START_ENTRY, GC_START, row.cookie.encode()),
        (GC_START_WORKERS, GC_BG_MARK_START_WORKERS, 0),
    ]
    .into_iter()
    .map(|(program, function, cookie)| {
        let found = binary
            .function(function)
            .ok_or(PlanError::MissingFunction(function))?;
        let address = binary.entry_site(found);
        let file_offset = binary
            .file_offset(address)
            .ok_or(PlanError::NotInFile { function, address })?;
        Ok(ProbePoint {
            program,
            function,
            address,
            file_offset,
            cookie,
            object: super::stw::EXECUTABLE,
        })
    })
    .collect()
}
