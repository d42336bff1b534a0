//! What one uprobe hit costs on this machine, measured once per mapscope process: a child
//! mapscope starts (this same executable) calls a small function in a tight loop, its CPU time
//! taken without a probe and with an empty eBPF program on it. The difference per call is the kernel's trap:
//! the breakpoint, finding the probe, running a program, and resuming the caller.
//!
//! What the trap costs depends on the probed instruction (`TrapKind`). x86 emulates a few
//! (`push reg`, relative jumps and calls, `nop`): one exception. Every other instruction is
//! copied out of line and single-stepped there: a second exception, about five times the
//! cost here (glibc's `malloc` starts with `push r12`, 1.2 µs a hit; its `free` with
//! `test rdi, rdi`, 6 µs). So two sites are measured: `push rbp`, the first instruction of a
//! Go function with a frame after its stack check (where mapscope's Go entry probes go), and
//! `test rdi, rdi`, stepped. Each family is charged the cost of its costliest probe
//! (`AttachedProbes::trap_kinds`). What each of mapscope's programs adds on top is measured
//! separately, on the targets themselves (`collect::overhead`).
use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use thiserror::Error;

use super::{loaded::AttachedProbes, stw::ProbePoint};

/// The argument that makes mapscope the calibration child (never shown in `--help`).
pub const CHILD_ARG: &str = "__mapscope-calibration-child";

/// The eBPF program put on the site: it does nothing, so only the trap is measured.
const NOOP: &str = super::stw::CALIBRATION_NOOP;

/// Calls per timed round: about 30 ms with the probe on at 1.5 µs a hit.
const CALLS: u64 = 20_000;
/// Rounds with and without the probe. The least time of each is taken: a round can only be
/// slowed (cache misses after a switch), never sped up.
const ROUNDS: usize = 4;

#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".pushsection .text.mapscope_calibration_site,\"ax\",@progbits",
    ".globl mapscope_calibration_site",
    ".type mapscope_calibration_site,@function",
    "mapscope_calibration_site:",
    "push rbp",
    "mov rbp, rsp",
    "lea rax, [rdi + 1]",
    "pop rbp",
    "ret",
    ".size mapscope_calibration_site, .-mapscope_calibration_site",
    ".globl mapscope_calibration_stepped_site",
    ".type mapscope_calibration_stepped_site,@function",
    "mapscope_calibration_stepped_site:",
    "test rdi, rdi",
    "lea rax, [rdi + 1]",
    "ret",
    ".size mapscope_calibration_stepped_site, .-mapscope_calibration_stepped_site",
    ".popsection",
);

#[cfg(target_arch = "x86_64")]
unsafe extern "C" {
    /// Return their argument plus one; the probe goes on their first instruction, which the
    /// kernel emulates (`push rbp`) or steps out of line (`test rdi, rdi`).
    fn mapscope_calibration_site(value: u64) -> u64;
    fn mapscope_calibration_stepped_site(value: u64) -> u64;
}

/// Plain functions elsewhere (mapscope's probes are built for x86-64 only).
#[cfg(not(target_arch = "x86_64"))]
#[inline(never)]
extern "C" fn mapscope_calibration_site(value: u64) -> u64 {
    std::hint::black_box(value) + 1
}
#[cfg(not(target_arch = "x86_64"))]
#[inline(never)]
extern "C" fn mapscope_calibration_stepped_site(value: u64) -> u64 {
    std::hint::black_box(value) + 1
}

fn call_site(kind: TrapKind, value: u64) -> u64 {
    // SAFETY: the functions only compute on their argument register and follow the C ABI.
    #[allow(unused_unsafe)]
    unsafe {
        match kind {
            TrapKind::Emulated => mapscope_calibration_site(value),
            TrapKind::Stepped => mapscope_calibration_stepped_site(value),
        }
    }
}

/// How the kernel runs the instruction a uprobe replaced, which decides what a hit costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum TrapKind {
    /// Emulated in the trap (x86: `push reg`, relative jumps and calls, `nop`).
    #[default]
    Emulated,
    /// Copied out of line and single-stepped there: a second exception.
    Stepped,
}

impl TrapKind {
    /// The kind of the x86-64 instruction at the start of `code`, by the kernel's rules
    /// (arch/x86/kernel/uprobes.c: `branch_setup_xol_ops`, `push_setup_xol_ops`). An
    /// instruction that cannot be decoded counts as stepped, the costlier.
    pub fn of_instruction(code: &[u8]) -> Self {
        use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, OpKind};
        let mut decoder = Decoder::new(64, code, DecoderOptions::NONE);
        if !decoder.can_decode() {
            return Self::Stepped;
        }
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            return Self::Stepped;
        }
        // `push r64`: one byte, or two with REX.B (0x41) for r8-r15, no other prefix.
        let push = matches!(code, [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..]);
        let relative_branch = matches!(
            instruction.flow_control(),
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch | FlowControl::Call
        ) && matches!(
            instruction.op0_kind(),
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
        ) && !matches!(
            instruction.code(),
            Code::Loop_rel8_64_RCX
                | Code::Loope_rel8_64_RCX
                | Code::Loopne_rel8_64_RCX
                | Code::Jrcxz_rel8_64
        );
        let nop = instruction.code() == Code::Nopd || instruction.code() == Code::Nopq;
        if push || relative_branch || nop {
            Self::Emulated
        } else {
            Self::Stepped
        }
    }
}

/// What a hit costs, by the kind of trap.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrapCosts {
    pub emulated: Duration,
    pub stepped: Duration,
}

impl TrapCosts {
    pub fn of(&self, kind: TrapKind) -> Duration {
        match kind {
            TrapKind::Emulated => self.emulated,
            TrapKind::Stepped => self.stepped,
        }
    }
}

#[derive(Debug, Error)]
pub enum CalibrationError {
    #[error("starting the calibration child: {0}")]
    Spawn(std::io::Error),
    #[error("talking to the calibration child: {0}")]
    Pipe(std::io::Error),
    #[error("the calibration child answered {0:?}")]
    Answer(String),
    #[error("finding the calibration site in mapscope's own mappings: {0}")]
    Site(String),
    #[error("attaching the calibration probe: {0}")]
    Attach(#[from] super::loaded::LoadError),
    #[error("the probe made no measurable difference ({with:.1} vs {without:.1} ns per call)")]
    NoDifference { with: f64, without: f64 },
}

/// If this process was started as the calibration child, serve and return the exit code.
pub fn child_main_if_asked() -> Option<u8> {
    if std::env::args().nth(1).as_deref() != Some(CHILD_ARG) {
        return None;
    }
    // One line in, the number of calls and the site (0: emulated, 1: stepped); one line out,
    // the CPU time they took in nanoseconds
    // (this thread's: the trap is kernel time of the probed thread, and time the machine gave
    // to others does not count, so a busy machine does not inflate the probed rounds, which
    // last thousands of times longer). Until EOF.
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "ready").is_err() {
        return Some(1);
    }
    for line in stdin.lock().lines() {
        let Ok(line) = line else {
            return Some(1);
        };
        let (calls, kind) = match line.split_whitespace().collect::<Vec<_>>()[..] {
            [calls, "0"] => (calls.parse::<u64>(), TrapKind::Emulated),
            [calls, "1"] => (calls.parse::<u64>(), TrapKind::Stepped),
            _ => return Some(1),
        };
        let Ok(calls) = calls else {
            return Some(1);
        };
        let started = crate::collect::overhead::thread_cpu_ns();
        let mut sum = 0u64;
        for call in 0..calls {
            sum = sum.wrapping_add(call_site(kind, std::hint::black_box(call)));
        }
        std::hint::black_box(sum);
        let nanos = crate::collect::overhead::thread_cpu_ns().saturating_sub(started);
        if writeln!(stdout, "{nanos}").is_err() {
            return Some(1);
        }
    }
    Some(0)
}

/// The child, killed and reaped when dropped.
struct Calibrator {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Calibrator {
    fn start() -> Result<Self, CalibrationError> {
        let mut child = Command::new("/proc/self/exe")
            .arg(CHILD_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(CalibrationError::Spawn)?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CalibrationError::Answer("no pipes".into()));
        };
        let mut calibrator = Self {
            child,
            input,
            output: BufReader::new(output),
        };
        let ready = calibrator.line()?;
        if ready != "ready" {
            return Err(CalibrationError::Answer(ready));
        }
        Ok(calibrator)
    }

    fn line(&mut self) -> Result<String, CalibrationError> {
        let mut line = String::new();
        self.output
            .read_line(&mut line)
            .map_err(CalibrationError::Pipe)?;
        Ok(line.trim().to_owned())
    }

    /// Nanoseconds per call of the site of `kind`, the least of `ROUNDS` rounds.
    fn ns_per_call(&mut self, kind: TrapKind) -> Result<f64, CalibrationError> {
        // The stepped trap costs several times more: fewer calls take as long.
        let calls = match kind {
            TrapKind::Emulated => CALLS,
            TrapKind::Stepped => CALLS / 4,
        };
        let site = kind as u8;
        let mut least = f64::INFINITY;
        for _ in 0..ROUNDS {
            writeln!(self.input, "{calls} {site}").map_err(CalibrationError::Pipe)?;
            let answer = self.line()?;
            let nanos: f64 = answer
                .parse()
                .map_err(|_| CalibrationError::Answer(answer.clone()))?;
            least = least.min(nanos / calls as f64);
        }
        Ok(least)
    }
}

impl Drop for Calibrator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the calibration site of `kind` is in mapscope's executable file: found through this
/// process's own mappings (the child maps the same file the same way).
fn site_file_offset(kind: TrapKind) -> Result<u64, CalibrationError> {
    let address = match kind {
        TrapKind::Emulated => mapscope_calibration_site as *const () as u64,
        TrapKind::Stepped => mapscope_calibration_stepped_site as *const () as u64,
    };
    crate::process::memory::executable_offset(std::process::id(), address)
        .map_err(|error| CalibrationError::Site(error.to_string()))
}

/// The probe point of the site of `kind` in mapscope's executable.
fn site(kind: TrapKind) -> Result<ProbePoint, CalibrationError> {
    let file_offset = site_file_offset(kind)?;
    Ok(ProbePoint {
        program: NOOP,
        function: match kind {
            TrapKind::Emulated => "mapscope_calibration_site",
            TrapKind::Stepped => "mapscope_calibration_stepped_site",
        },
        address: file_offset,
        file_offset,
        cookie: 0,
        object: super::stw::EXECUTABLE,
    })
}

/// The cost of one uprobe hit with an empty program, on this machine, now, by kind of trap:
/// both sites timed without probes, then with (one object, loaded and removed once).
pub fn trap_costs() -> Result<TrapCosts, CalibrationError> {
    let kinds = [TrapKind::Emulated, TrapKind::Stepped];
    let points = [site(kinds[0])?, site(kinds[1])?];
    let mut calibrator = Calibrator::start()?;
    let pid = calibrator.child.id();
    let mut without = [0.0; 2];
    for (kind, without) in kinds.into_iter().zip(&mut without) {
        // Warm up: the first calls fault the page in.
        calibrator.ns_per_call(kind)?;
        *without = calibrator.ns_per_call(kind)?;
    }
    let exe = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
    let probes = AttachedProbes::attach(pid, [exe].into(), None, &points, &[], &[], &[])?;
    let with: Result<Vec<f64>, CalibrationError> = kinds
        .into_iter()
        .map(|kind| calibrator.ns_per_call(kind))
        .collect();
    probes.detach();
    let with = with?;
    let cost = |index: usize| {
        if with[index] <= without[index] {
            return Err(CalibrationError::NoDifference {
                with: with[index],
                without: without[index],
            });
        }
        Ok(Duration::from_secs_f64(
            (with[index] - without[index]) / 1e9,
        ))
    };
    Ok(TrapCosts {
        emulated: cost(0)?,
        stepped: cost(1)?,
    })
}

/// The calibration, run once per process on a thread of its own (it takes a few tenths of a
/// second): `cost()` is `None` until it is done, and if it failed.
pub struct TrapCost(std::sync::OnceLock<Option<TrapCosts>>);

static TRAP_COST: TrapCost = TrapCost(std::sync::OnceLock::new());

impl TrapCost {
    /// Start the calibration if it has not started; call early (at attach).
    pub fn start() {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("calibration".into())
                .spawn(|| {
                    let measured = match trap_costs() {
                        Ok(costs) => {
                            tracing::info!(
                                "one uprobe hit costs {:.2?} on this machine on an instruction \
                                 the kernel emulates, {:.2?} on one it steps (the trap, with an \
                                 empty program)",
                                costs.emulated,
                                costs.stepped
                            );
                            Some(costs)
                        }
                        Err(error) => {
                            tracing::warn!(
                                "could not measure what a probe hit costs on this machine \
                                 ({error}): mapscope_probe_overhead_ratio will be missing"
                            );
                            None
                        }
                    };
                    let _ = TRAP_COST.0.set(measured);
                });
            if let Err(error) = spawned {
                tracing::warn!("could not start the probe cost calibration: {error}");
                let _ = TRAP_COST.0.set(None);
            }
        });
    }

    /// Whether the calibration has ended (measured or failed).
    pub fn finished() -> bool {
        TRAP_COST.0.get().is_some()
    }

    /// The measured cost of a hit, once known.
    pub fn get() -> Option<TrapCosts> {
        TRAP_COST.0.get().copied().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::TrapKind::{self, Emulated, Stepped};

    #[test]
    fn the_kernels_emulated_instructions_are_told_from_the_stepped() {
        let cases: [(&[u8], TrapKind); 12] = [
            (&[0x55], Emulated),                   // push rbp
            (&[0x41, 0x54], Emulated),             // push r12 (glibc's malloc)
            (&[0xe9, 0, 0, 0, 0], Emulated),       // jmp rel32
            (&[0x74, 0x10], Emulated),             // je rel8
            (&[0x0f, 0x84, 0, 0, 0, 0], Emulated), // je rel32
            (&[0xe8, 0, 0, 0, 0], Emulated),       // call rel32
            (&[0x90], Emulated),                   // nop
            (&[0x48, 0x85, 0xff], Stepped),        // test rdi, rdi (glibc's free)
            (&[0xf3, 0x0f, 0x1e, 0xfa], Stepped),  // endbr64
            (&[0xc3], Stepped),                    // ret
            (&[0xff, 0x25, 0, 0, 0, 0], Stepped),  // jmp [rip+0]: indirect
            (&[0x0f], Stepped),                    // cut short
        ];
        for (code, kind) in cases {
            assert_eq!(TrapKind::of_instruction(code), kind, "{code:02x?}");
        }
    }
}
