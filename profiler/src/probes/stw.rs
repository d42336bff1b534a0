//! Where the stop-the-world probes go for a given binary.
use iced_x86::Register;
use profiler_common::stw::{StwFrame, StwLayout};
use thiserror::Error;

use crate::gobin::{
    GoBinary,
    abi::{START_THE_WORLD, STOP_THE_WORLD, StwAbi},
    disasm,
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
    /// The file it is in, by index among the target's probed objects: `EXECUTABLE`, or a
    /// library (`native::probes::NativePlan::objects`).
    pub object: u8,
}

/// `ProbePoint::object` of a point in the target's executable.
pub const EXECUTABLE: u8 = 0;

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

/// The programs that fire while the world is stopped, lengthening the pauses they measure.
pub const INSIDE_PAUSE: [&str; 2] = [STOP_RETURN, START_ENTRY];

/// How many of `points` fire while the world is stopped.
pub fn inside_pause(points: &[ProbePoint]) -> usize {
    points
        .iter()
        .filter(|point| INSIDE_PAUSE.contains(&point.program))
        .count()
}

/// Where the stop-the-world probes go in `binary`. With `stopping`, also measure the stopping
/// part of each pause, which takes one probe hit inside the pause; without it no probe fires
/// while the world is stopped, unless this binary's `startTheWorldWithSema` does not keep its
/// argument in its frame (then its entry is probed, inside the pause).
pub fn plan(binary: &GoBinary, abi: &StwAbi, stopping: bool) -> Result<Vec<ProbePoint>, PlanError> {
    use Site::{Entry, Returns};
    let frame = match abi.layout {
        StwLayout::Go122 | StwLayout::Go123 if !stopping => start_frame(binary),
        _ => None,
    };
    // Which sites each layout needs; see the module doc of profiler-ebpf/src/gc.rs.
    let sites: &[(&'static str, &'static str, Site)] = match (abi.layout, stopping) {
        (StwLayout::Go119 | StwLayout::Go121, false) => &[
            (STOP_ENTRY, STOP_THE_WORLD, Entry),
            (START_RETURN, START_THE_WORLD, Returns),
        ],
        (StwLayout::Go119 | StwLayout::Go121, true) => &[
            (STOP_ENTRY, STOP_THE_WORLD, Entry),
            (STOP_RETURN, STOP_THE_WORLD, Returns),
            (START_RETURN, START_THE_WORLD, Returns),
        ],
        (StwLayout::Go122 | StwLayout::Go123, false) if frame.is_some() => {
            &[(START_RETURN, START_THE_WORLD, Returns)]
        }
        (StwLayout::Go122, true) => &[
            (STOP_RETURN, STOP_THE_WORLD, Returns),
            (START_ENTRY, START_THE_WORLD, Entry),
            (START_RETURN, START_THE_WORLD, Returns),
        ],
        (StwLayout::Go122 | StwLayout::Go123, _) => &[
            (START_ENTRY, START_THE_WORLD, Entry),
            (START_RETURN, START_THE_WORLD, Returns),
        ],
    };
    let mut points = Vec::new();
    for &(program, function, site) in sites {
        let found = binary
            .function(function)
            .ok_or(PlanError::MissingFunction(function))?;
        let addresses = match site {
            Entry => vec![binary.entry_site(found)],
            Returns => binary.ret_sites(found),
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
                cookie: abi.cookie(frame),
                object: EXECUTABLE,
            });
        }
    }
    Ok(points)
}

/// Where `startTheWorldWithSema` keeps `w.reason` and `w.startedStopping` (Go 1.22+: the
/// second and third integer argument registers, RBX and RCX, by `StwLayout`'s signature) for
/// its RET probe to read, if its code keeps them in fixed frame slots
/// (`disasm::spill_slots`). Every release from 1.22 to 1.27 does.
pub fn start_frame(binary: &GoBinary) -> Option<StwFrame> {
    let function = binary.function(START_THE_WORLD)?;
    let code = binary.code(function)?;
    let [reason, started] = disasm::spill_slots(
        code,
        function.address,
        &[(Register::RBX, 1), (Register::RCX, 8)],
    )?[..] else {
        return None;
    };
    let below = |slot: u64| {
        u16::try_from(slot)
            .ok()
            .filter(|&below| below <= StwFrame::MAX_BELOW_SP)
    };
    Some(StwFrame {
        reason_below_sp: below(reason)?,
        started_below_sp: below(started)?,
    })
}

#[derive(Clone, Copy)]
enum Site {
    Entry,
    Returns,
}
