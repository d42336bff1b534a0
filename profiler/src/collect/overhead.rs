//! What mapscope costs each target, measured while it runs:
//!
//! - in the target: each probe family's hits (counted by the programs) × the cost of a hit: the
//!   kernel's trap, calibrated on this machine (`probes::calibrate`), plus the mean run time of
//!   the family's programs in this target, from the kernel's BPF statistics;
//! - in mapscope: the CPU time of the work done for the target (thread CPU clocks around each
//!   collector's reads, symbolization and snapshots);
//!
//! both as shares of the target's own CPU time (`/proc/PID/stat`), over the last minute.
use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::programs::ProgramFd;
use profiler_common::counters::{HIT_ALLOC_EXACT, HIT_KINDS, HIT_MAP_CREATE, HIT_NAMES};

use crate::{
    export::metrics::TargetMetrics,
    model::{
        self,
        overhead::{CostRatios, CostReading, CostSummary, CostWindow, ProgramRuns, hit_cost_ns},
    },
    probes::calibrate::{TrapCost, TrapKind},
};

/// A mode asked for is judged against the budget over at least this much of the target's time.
const WARN_AFTER: Duration = Duration::from_secs(10);

/// How often the ratios are recomputed (reading `/proc/PID/stat` and the programs' statistics).
const UPDATE_INTERVAL: Duration = Duration::from_secs(1);

/// The kernel counts programs' run time only while someone holds its statistics switch
/// (`BPF_ENABLE_STATS`), and then for every BPF program on the machine, at two clock reads per
/// run. mapscope holds it for `STATS_ON` of every `STATS_PERIOD`: enough runs to know each
/// program's mean, at a twentieth of that cost.
const STATS_ON: Duration = Duration::from_secs(1);
const STATS_PERIOD: Duration = Duration::from_secs(20);
/// While the switch is held, every target's programs are read this often: a slice a run was
/// interrupted in is told from the others (`model::overhead::without_interrupted`).
const STATS_SLICE: Duration = Duration::from_millis(100);

/// CPU time mapscope spends for one target, shared by its collectors.
#[derive(Clone, Debug, Default)]
pub struct OwnCpu(Arc<AtomicU64>);

impl OwnCpu {
    /// Run `work` (synchronous: nothing else runs on this thread meanwhile) and count the CPU
    /// time it took.
    pub fn measure<T>(&self, work: impl FnOnce() -> T) -> T {
        let started = thread_cpu_ns();
        let result = work();
        self.0
            .fetch_add(thread_cpu_ns().saturating_sub(started), Ordering::Relaxed);
        result
    }

    pub fn ns(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// This thread's CPU time, user and system.
pub fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut now) };
    if status != 0 {
        return 0;
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Set when the kernel has no statistics switch: then the statistics count only if the
/// `kernel.bpf_stats_enabled` sysctl is on, at any time, and meters read them at every update.
static NO_STATS_SWITCH: AtomicBool = AtomicBool::new(false);

/// One target's programs, read by the statistics task in slices while it holds the switch.
struct ProgramStats {
    pid: u32,
    /// The programs, with their family (`counters::HIT_*`).
    programs: Vec<(u32, ProgramFd)>,
    /// Each family's runs over the windows so far, interrupted slices left out.
    runs: std::sync::Mutex<[Option<ProgramRuns>; HIT_KINDS as usize]>,
}

impl ProgramStats {
    /// Each program's statistics now (zero where unreadable).
    fn read(&self) -> Vec<ProgramRuns> {
        self.programs
            .iter()
            .map(|(_, program)| program_runs(program).unwrap_or_default())
            .collect()
    }

    /// Each family's runs between two reads.
    fn slice(
        &self,
        before: &[ProgramRuns],
        after: &[ProgramRuns],
    ) -> [ProgramRuns; HIT_KINDS as usize] {
        let mut slice = [ProgramRuns::default(); HIT_KINDS as usize];
        for (((family, _), before), after) in self.programs.iter().zip(before).zip(after) {
            let family = &mut slice[*family as usize];
            family.run_time_ns += after.run_time_ns.saturating_sub(before.run_time_ns);
            family.runs += after.runs.saturating_sub(before.runs);
        }
        slice
    }

    /// A window's slices, by family, into the running totals.
    fn take_window(&self, slices: &[[ProgramRuns; HIT_KINDS as usize]]) {
        let mut runs = self
            .runs
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for ((index, total), name) in runs.iter_mut().enumerate().zip(HIT_NAMES) {
            let family: Vec<ProgramRuns> = slices.iter().map(|slice| slice[index]).collect();
            let counted = model::overhead::without_interrupted(&family);
            let all = ProgramRuns::sum(&family);
            if counted != all {
                tracing::debug!(
                    "PID {}: probes {name}: {} of {} runs left out of the programs' \
                     mean run time as interrupted ({:.0} ns a run with them, {:.0} without)",
                    self.pid,
                    all.runs - counted.runs,
                    all.runs,
                    all.mean_ns(),
                    counted.mean_ns()
                );
            }
            if counted.runs > 0 {
                let total = total.get_or_insert_with(ProgramRuns::default);
                total.run_time_ns += counted.run_time_ns;
                total.runs += counted.runs;
            }
        }
    }
}

/// Said when a target registers: the statistics task holds a window for it soon (at most one
/// every `MIN_STATS_GAP`), rather than after the rest of its period.
static NEW_TARGET: tokio::sync::Notify = tokio::sync::Notify::const_new();
const MIN_STATS_GAP: Duration = Duration::from_secs(2);

/// Every meter's programs, while its meter lives.
static REGISTERED: std::sync::Mutex<Vec<std::sync::Weak<ProgramStats>>> =
    std::sync::Mutex::new(Vec::new());

fn registered() -> Vec<Arc<ProgramStats>> {
    let mut registered = REGISTERED
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    registered.retain(|stats| stats.strong_count() > 0);
    registered
        .iter()
        .filter_map(std::sync::Weak::upgrade)
        .collect()
}

/// Start holding the kernel's BPF statistics switch now and then (once per process), reading
/// every registered target's programs in slices meanwhile.
pub fn start_program_statistics() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        tokio::spawn(async {
            // Not while the trap is being calibrated: the statistics slow every program run,
            // and would inflate it.
            while !TrapCost::finished() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            loop {
                match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                    Ok(switch) => {
                        let mut targets = registered();
                        let mut last: Vec<Vec<ProgramRuns>> =
                            targets.iter().map(|target| target.read()).collect();
                        let mut slices = vec![Vec::new(); targets.len()];
                        let started = Instant::now();
                        while started.elapsed() < STATS_ON {
                            tokio::time::sleep(STATS_SLICE).await;
                            for ((target, last), slices) in
                                targets.iter().zip(&mut last).zip(&mut slices)
                            {
                                let now = target.read();
                                slices.push(target.slice(last, &now));
                                *last = now;
                            }
                            // A target attached during the window joins it from here: else
                            // it waits a whole period for its programs' run time (as the Go
                            // program `run` reaches through `env` did, its cost the trap's
                            // alone for its first 20 s).
                            for target in registered() {
                                if !targets.iter().any(|known| Arc::ptr_eq(known, &target)) {
                                    last.push(target.read());
                                    slices.push(Vec::new());
                                    targets.push(target);
                                }
                            }
                        }
                        drop(switch);
                        for (target, slices) in targets.iter().zip(&slices) {
                            target.take_window(slices);
                        }
                    }
                    Err(error) => {
                        NO_STATS_SWITCH.store(true, Ordering::Relaxed);
                        tracing::info!(
                            "the kernel's BPF run-time statistics are not available ({error}): \
                             probe costs count the uprobe trap only, not the programs' own time"
                        );
                        return;
                    }
                }
                // Until the period ends, or a target attaches (`run` reaches its Go program
                // through `env`: its first window had only `env`'s programs, and the program's
                // costs counted the trap alone for 20 s).
                tokio::time::sleep(MIN_STATS_GAP).await;
                tokio::select! {
                    () = tokio::time::sleep(STATS_PERIOD - STATS_ON - MIN_STATS_GAP) => {}
                    () = NEW_TARGET.notified() => {}
                }
            }
        });
    });
}

/// What the overhead governor needs of a meter's reading.
#[derive(Clone, Debug)]
pub struct MeterReading {
    /// How long the shares' window spans (up to a minute).
    pub span: Duration,
    /// The shares over the last minute.
    pub ratios: CostRatios,
    /// What one hit of each family costs, as last estimated.
    pub hit_cost_ns: [f64; HIT_KINDS as usize],
}

/// One target's cost meter; `update` it now and then with its probes' hit totals.
pub struct OverheadMeter {
    readings: tokio::sync::watch::Sender<Option<MeterReading>>,
    pid: u32,
    programs: Arc<ProgramStats>,
    own: OwnCpu,
    started: Instant,
    last_update: Option<Instant>,
    hits_seen: [u64; HIT_KINDS as usize],
    /// The first reading: the whole watch's cost, for the exit summary.
    first: Option<CostReading>,
    latest: CostReading,
    window: CostWindow,
    /// The cost of one hit of each family as last estimated.
    hit_cost_ns: [f64; HIT_KINDS as usize],
    /// The trap each family's hits are charged (its costliest probe's).
    trap_kinds: [TrapKind; HIT_KINDS as usize],
    /// `--max-overhead` (0: none), and the modes asked for already said to be over it.
    budget: f64,
    warned: [bool; HIT_KINDS as usize],
}

impl OverheadMeter {
    /// `programs`: the target's loaded programs by family, whose run-time statistics are read.
    /// `trap_kinds`: the trap each family's hits cost (`AttachedProbes::trap_kinds`).
    /// `budget`: `--max-overhead`, for the warning when a mode the user asked for goes over it.
    pub fn new(
        pid: u32,
        programs: Vec<(u32, ProgramFd)>,
        trap_kinds: [TrapKind; HIT_KINDS as usize],
        own: OwnCpu,
        budget: f64,
    ) -> Self {
        TrapCost::start();
        start_program_statistics();
        // Everything from here on is charged, hits before the trap's cost is known included
        // (the object was loaded just now: its hit counters start at zero).
        let first = crate::process::cpu::process_cpu_ns(pid).map(|cpu_ns| CostReading {
            target_cpu_ns: cpu_ns as f64,
            own_cpu_ns: own.ns() as f64,
            ..CostReading::default()
        });
        let mut window = CostWindow::default();
        if let Some(first) = first {
            window.push(first);
        }
        Self {
            readings: tokio::sync::watch::Sender::new(None),
            pid,
            programs: register(pid, programs),
            own,
            started: Instant::now(),
            last_update: None,
            hits_seen: [0; HIT_KINDS as usize],
            latest: first.unwrap_or_default(),
            first,
            window,
            hit_cost_ns: [0.0; HIT_KINDS as usize],
            trap_kinds,
            budget,
            warned: [false; HIT_KINDS as usize],
        }
    }

    /// Whether the first reading is still to come (the trap's cost not measured yet): until
    /// then the governor cannot judge the probes, so the hits are offered at every drain.
    pub fn awaiting_first_reading(&self) -> bool {
        self.last_update.is_none()
    }

    /// Take the hit totals counted so far (by family) into account, at most once per
    /// `UPDATE_INTERVAL` (or always, with `force`), and export the ratios.
    pub fn update(&mut self, hits: &[u64], metrics: &TargetMetrics, force: bool) {
        let now = Instant::now();
        if !force
            && self
                .last_update
                .is_some_and(|last| now - last < UPDATE_INTERVAL)
        {
            return;
        }
        // Until the trap is measured there is no cost to count; the hits wait.
        let Some(traps) = TrapCost::get() else {
            return;
        };
        let Some(target_cpu_ns) = crate::process::cpu::process_cpu_ns(self.pid) else {
            return;
        };
        self.last_update = Some(now);
        let runs = self.program_runs();
        let mut reading = CostReading {
            at: now - self.started,
            target_cpu_ns: target_cpu_ns as f64,
            own_cpu_ns: self.own.ns() as f64,
            probe_ns: self.latest.probe_ns,
        };
        for (family, (seen, total)) in self.hits_seen.iter_mut().zip(hits).enumerate() {
            let trap = traps.of(self.trap_kinds[family]);
            let cost = hit_cost_ns(trap.as_nanos() as f64, runs[family]);
            self.hit_cost_ns[family] = cost;
            reading.probe_ns[family] += total.saturating_sub(*seen) as f64 * cost;
            *seen = (*seen).max(*total);
        }
        self.first.get_or_insert(reading);
        self.latest = reading;
        self.window.push(reading);
        let ratios = self.window.ratios().unwrap_or_default();
        let first_cpu_ns = self
            .first
            .map_or(reading.target_cpu_ns, |first| first.target_cpu_ns);
        metrics.overhead(&self.hit_cost_ns, &reading, first_cpu_ns, ratios);
        self.warn_over_budget(&ratios);
        self.readings.send_replace(Some(MeterReading {
            span: self.window.span(),
            ratios,
            hit_cost_ns: self.hit_cost_ns,
        }));
    }

    /// The governor never cuts a mode the user asked for (`--alloc-exact`, `--map-creations`):
    /// say once, per mode, when it alone costs the target more than the budget.
    fn warn_over_budget(&mut self, ratios: &CostRatios) {
        const ASKED_FOR: [(u32, &str); 2] = [
            (HIT_ALLOC_EXACT, "--alloc-exact"),
            (HIT_MAP_CREATE, "--map-creations"),
        ];
        if self.budget <= 0.0 || self.window.span() < WARN_AFTER {
            return;
        }
        for (family, flag) in ASKED_FOR {
            let share = ratios.probes[family as usize];
            if share > self.budget && !self.warned[family as usize] {
                self.warned[family as usize] = true;
                tracing::warn!(
                    "PID {}: {flag} costs the target {:.1}% of its CPU time, over the {:.1}% \
                     budget (--max-overhead); it is not cut because you asked for it: leave it \
                     off when you are done",
                    self.pid,
                    share * 100.0,
                    self.budget * 100.0
                );
            }
        }
    }

    /// Each reading, as it is taken (for the governor).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<MeterReading>> {
        self.readings.subscribe()
    }

    /// The cost over everything measured so far.
    pub fn whole(&self) -> Option<CostSummary> {
        Some(CostSummary {
            ratios: CostRatios::between(self.first.as_ref()?, &self.latest)?,
            hit_cost_ns: self.hit_cost_ns,
        })
    }

    /// Each family's programs' runs, where any were counted: as the statistics task took them,
    /// or without the switch, as the kernel counts them now.
    fn program_runs(&self) -> [Option<ProgramRuns>; HIT_KINDS as usize] {
        if !NO_STATS_SWITCH.load(Ordering::Relaxed) {
            return *self
                .programs
                .runs
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
        }
        let now = self.programs.read();
        let zero = vec![ProgramRuns::default(); now.len()];
        self.programs
            .slice(&zero, &now)
            .map(|runs| Some(runs).filter(|runs| runs.runs > 0))
    }
}

/// Hand a meter's programs to the statistics task.
fn register(pid: u32, programs: Vec<(u32, ProgramFd)>) -> Arc<ProgramStats> {
    let stats = Arc::new(ProgramStats {
        pid,
        programs,
        runs: std::sync::Mutex::new([None; HIT_KINDS as usize]),
    });
    REGISTERED
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .push(Arc::downgrade(&stats));
    // Its programs' run time is wanted soon, not a period from now.
    NEW_TARGET.notify_one();
    stats
}

/// A program's run-time statistics, from its descriptor's `/proc/self/fdinfo` entry.
fn program_runs(program: &ProgramFd) -> Option<ProgramRuns> {
    let fd = program.as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    parse_program_runs(&info)
}

fn parse_program_runs(fdinfo: &str) -> Option<ProgramRuns> {
    let field = |name: &str| {
        fdinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().parse::<u64>().ok())?
        })
    };
    Some(ProgramRuns {
        run_time_ns: field("run_time_ns")?,
        runs: field("run_cnt")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_statistics_come_from_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\nprog_type:\t2\n\
                      prog_jited:\t1\nprog_tag:\tb0c1d2\nmemlock:\t4096\nprog_id:\t88\n\
                      run_time_ns:\t123456\nrun_cnt:\t321\nrecursion_misses:\t0\n\
                      verified_insns:\t99\n";
        assert_eq!(
            parse_program_runs(fdinfo),
            Some(ProgramRuns {
                run_time_ns: 123_456,
                runs: 321
            })
        );
        assert_eq!(parse_program_runs("pos:\t0\n"), None);
    }

    #[test]
    fn own_cpu_counts_the_work_measured() {
        let own = OwnCpu::default();
        let spun = own.measure(|| {
            let started = Instant::now();
            let mut spins = 0u64;
            while started.elapsed() < Duration::from_millis(20) {
                spins = std::hint::black_box(spins + 1);
            }
            spins
        });
        assert!(spun > 0);
        // Spinning 20 ms of wall time on this thread is about 20 ms of its CPU (less if the
        // machine preempted it).
        assert!(own.ns() > 1_000_000, "{}", own.ns());
        assert!(own.ns() < 200_000_000, "{}", own.ns());
    }
}
