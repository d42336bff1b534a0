//! What one uprobe hit costs on this machine, measured once per mapscope process: a child
//! mapscope starts (this same executable) calls a small function in a tight loop, its CPU time
//! taken without a probe and with an empty eBPF program on it. The difference per call is the kernel's trap:
//! the breakpoint, finding the probe, running a program, and resuming the caller.
//!
//! The probed instruction is `push rbp`, the first instruction of a Go function with a frame
//! after its stack check (where mapscope's entry probes go), so the kernel handles it the same
//! way (x86 emulates it rather than stepping it out of line). What each of mapscope's programs
//! adds on top is measured separately, on the targets themselves (`collect::overhead`).
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
    ".popsection",
);

#[cfg(target_arch = "x86_64")]
unsafe extern "C" {
    /// Returns its argument plus one; the probe goes on its first instruction.
    fn mapscope_calibration_site(value: u64) -> u64;
}

/// A plain function elsewhere (mapscope's probes are built for x86-64 only).
#[cfg(not(target_arch = "x86_64"))]
#[inline(never)]
extern "C" fn mapscope_calibration_site(value: u64) -> u64 {
    std::hint::black_box(value) + 1
}

fn call_site(value: u64) -> u64 {
    // SAFETY: the function only computes on its argument register and follows the C ABI.
    #[allow(unused_unsafe)]
    unsafe {
        mapscope_calibration_site(value)
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
    // One line in, the number of calls; one line out, the CPU time they took in nanoseconds
    // (this thread's: the trap is kernel time of the probed thread, and time the machine gave
    // to others does not count, so a busy machine does not inflate the probed rounds, which
    // last thousands of times longer). Until EOF.
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "ready").is_err() {
        return Some(1);
    }
    for line in stdin.lock().lines() {
        let Ok(calls) = line.map(|line| line.trim().parse::<u64>()) else {
            return Some(1);
        };
        let Ok(calls) = calls else {
            return Some(1);
        };
        let started = crate::collect::overhead::thread_cpu_ns();
        let mut sum = 0u64;
        for call in 0..calls {
            sum = sum.wrapping_add(call_site(std::hint::black_box(call)));
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

    /// Nanoseconds per call of the least of `ROUNDS` rounds.
    fn ns_per_call(&mut self) -> Result<f64, CalibrationError> {
        let mut least = f64::INFINITY;
        for _ in 0..ROUNDS {
            writeln!(self.input, "{CALLS}").map_err(CalibrationError::Pipe)?;
            let answer = self.line()?;
            let nanos: f64 = answer
                .parse()
                .map_err(|_| CalibrationError::Answer(answer.clone()))?;
            least = least.min(nanos / CALLS as f64);
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

/// Where the calibration site is in mapscope's executable file: found through this process's
/// own mappings (the child maps the same file the same way).
fn site_file_offset() -> Result<u64, CalibrationError> {
    let address = mapscope_calibration_site as *const () as u64;
    crate::process::memory::executable_offset(std::process::id(), address)
        .map_err(|error| CalibrationError::Site(error.to_string()))
}

/// The cost of one uprobe hit with an empty program, on this machine, now.
pub fn trap_cost() -> Result<Duration, CalibrationError> {
    let file_offset = site_file_offset()?;
    let mut calibrator = Calibrator::start()?;
    let pid = calibrator.child.id();
    // Warm up: the first calls fault the page in.
    calibrator.ns_per_call()?;
    let without = calibrator.ns_per_call()?;
    let point = ProbePoint {
        program: NOOP,
        function: "mapscope_calibration_site",
        address: file_offset,
        file_offset,
        cookie: 0,
        object: super::stw::EXECUTABLE,
    };
    let exe = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
    let probes = AttachedProbes::attach(pid, [exe].into(), None, &[point], &[], &[], &[])?;
    let with = calibrator.ns_per_call();
    probes.detach();
    let with = with?;
    if with <= without {
        return Err(CalibrationError::NoDifference { with, without });
    }
    Ok(Duration::from_secs_f64((with - without) / 1e9))
}

/// The calibration, run once per process on a thread of its own (it takes a few tenths of a
/// second): `cost()` is `None` until it is done, and if it failed.
pub struct TrapCost(std::sync::OnceLock<Option<Duration>>);

static TRAP_COST: TrapCost = TrapCost(std::sync::OnceLock::new());

impl TrapCost {
    /// Start the calibration if it has not started; call early (at attach).
    pub fn start() {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("calibration".into())
                .spawn(|| {
                    let measured = match trap_cost() {
                        Ok(cost) => {
                            tracing::info!("one uprobe hit costs {cost:.2?} on this machine (the trap, with an empty program)");
                            Some(cost)
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
    pub fn get() -> Option<Duration> {
        TRAP_COST.0.get().copied().flatten()
    }
}
