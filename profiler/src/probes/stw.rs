//! Where the stop-the-world probes go for a given binary.
use profiler_common::stw::StwLayout;
use thiserror::Error;

use crate::gobin::{
    GoBinary,
    abi::{START_THE_WORLD, STOP_THE_WORLD, StwAbi},
};

/// Program names in the eBPF object (profiler-ebpf/src/gc.rs).
pub const STOP_ENTRY: &str = "stw_stop_entry";
pub const STOP_RETURN: &str = "stw_stop_return";
pub const START_ENTRY: &str = "stw_start_entry";
pub const START_RETURN: &str = "stw_start_return";
/// The empty program that `cargo xtask bench` measures mapscope's programs against.
pub const CALIBRATION_NOOP: &str = "calibration_noop";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    pub program: &'static str,
    pub function: &'static str,
    /// Virtual address of the probed instruction.
    pub address: u64,
    /// Where the instruction is in the file: what the kernel attaches a uprobe by.
    pub file_offset: u64,
    /// Passed to the program as the attach cookie (`StwCookie`).
    pub cookie: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("function {0} not found in the binary")]
    MissingFunction(&'static str),
    #[error("the runtime layout {0} reads is not known for this Go release")]
    UnknownLayout(&'static str),
    #[error("no RET instruction found in {0}")]
    NoReturn(&'static str),
    #[error("address {address:#x} of {function} is not in a file-backed segment")]
    NotInFile {
        function: &'static str,
        address: u64,
    },
}

pub fn plan(binary: &GoBinary, abi: &StwAbi) -> Result<Vec<ProbePoint>, PlanError> {
    // Which sites each layout needs; see the module doc of profiler-ebpf/src/gc.rs.
    let sites: &[(&'static str, &'static str, Site)] = match abi.layout {
        StwLayout::Go119 | StwLayout::Go121 => &[
            (STOP_ENTRY, STOP_THE_WORLD, Site::Entry),
            (STOP_RETURN, STOP_THE_WORLD, Site::Returns),
            (START_ENTRY, START_THE_WORLD, Site::Entry),
            (START_RETURN, START_THE_WORLD, Site::Returns),
        ],
        StwLayout::Go122 => &[
            (STOP_RETURN, STOP_THE_WORLD, Site::Returns),
            (START_ENTRY, START_THE_WORLD, Site::Entry),
            (START_RETURN, START_THE_WORLD, Site::Returns),
        ],
        StwLayout::Go123 => &[
            (START_ENTRY, START_THE_WORLD, Site::Entry),
            (START_RETURN, START_THE_WORLD, Site::Returns),
        ],
    };
    let mut points = Vec::new();
    for &(program, function, site) in sites {
        let found = binary
            .function(function)
            .ok_or(PlanError::MissingFunction(function))?;
        let addresses = match site {
            Site::Entry => vec![binary.entry_site(found)],
            Site::Returns => binary.ret_sites(found),
        };
        if addresses.is_empty() {
            return Err(PlanError::NoReturn(function));
        }
        for address in addresses {
            let file_offset = binary
                .file_offset(address)
                .ok_or(PlanError::NotInFile { function, address })?;
            points.push(ProbePoint {
                program,
                function,
                address,
                file_offset,
                cookie: abi.cookie(),
            });
        }
    }
    Ok(points)
}

#[derive(Clone, Copy)]
enum Site {
    Entry,
    Returns,
}
