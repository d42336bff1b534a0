//! `mapscope daemon`: many targets, found by selectors, each attached when it starts and
//! detached when it exits, all served on one endpoint. Each target goes through the same
//! `session` code path as `mapscope attach`; the daemon only finds processes and keeps count.
pub mod config;
pub mod select;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use tokio::{sync::watch, task::JoinSet};

use crate::{
    error::{Exit, UserError},
    session::{self, Exported, Options},
};
use select::{Candidate, Selector};

/// How often the daemon looks for new processes: a process is attached within this (plus the
/// attach itself) of starting. It looks at the processes that exec'd since (`ExecWatch`), or,
/// without that watch, at every process in /proc.
pub const SCAN_INTERVAL: Duration = Duration::from_millis(500);

/// How often every process in /proc is looked at even with the exec watch: what the watch
/// cannot see (a program started by fork alone) is found within this.
pub const FULL_SCAN_INTERVAL: Duration = Duration::from_secs(30);

pub struct Settings {
    pub selectors: Vec<Selector>,
    pub max_targets: usize,
    pub options: Options,
}

/// A process as the daemon keys it: PID, start time (clock ticks since boot) and executable
/// (device, inode). A PID reused by a new process, or a process that exec'd another program,
/// is a new key: `runc init` becoming the container's program, `sh -c 'exec app'`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct ProcessKey {
    pid: u32,
    start_time: u64,
    exe: (u64, u64),
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

fn process_key(pid: u32) -> Option<ProcessKey> {
    use std::os::unix::fs::MetadataExt as _;
    let start_time = start_time(pid)?;
    // Kernel threads have no executable: (0, 0), and no candidate later.
    let exe = std::fs::metadata(format!("/proc/{pid}/exe"))
        .map_or((0, 0), |metadata| (metadata.dev(), metadata.ino()));
    Some(ProcessKey {
        pid,
        start_time,
        exe,
    })
}

/// Whether the process `key` names still runs, now from another executable: it exec'd.
fn runs_another_program(key: &ProcessKey) -> bool {
    process_key(key.pid).is_some_and(|now| {
        now.start_time == key.start_time && now.exe != key.exe && now.exe != (0, 0)
    })
}

fn candidate(pid: u32) -> Option<Candidate> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline)
        .split('\0')
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Some(Candidate {
        exe: exe.to_string_lossy().into_owned(),
        cmdline,
        cgroup: std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default(),
    })
}

/// The `reason` label of an attach failure.
fn failure_reason(error: &anyhow::Error) -> &'static str {
    match error.downcast_ref::<UserError>().map(|user| user.exit) {
        Some(Exit::NotGo) => "not_go",
        Some(Exit::UnsupportedGo) => "unsupported_go",
        Some(Exit::MissingSymbols) => "missing_symbols",
        Some(Exit::NoSuchProcess) => "exited",
        Some(Exit::Privileges) => "privileges",
        _ => "error",
    }
}

/// Whether a process runs a Go program, cached by executable (device, inode): reading build
/// info means reading the file, done once per binary.
#[derive(Default)]
struct GoCache(HashMap<(u64, u64), bool>);

impl GoCache {
    /// `exe` is the executable's (device, inode), from the process's key.
    fn is_go(&mut self, pid: u32, exe: (u64, u64)) -> bool {
        *self.0.entry(exe).or_insert_with(|| {
            crate::gobin::buildinfo::is_go_file(std::path::Path::new(&format!("/proc/{pid}/exe")))
        })
    }
}

/// Why a target's task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TaskEnd {
    /// The process exited.
    Gone,
    /// The process runs another program image now (the probes belonged to the old one).
    Exec,
    /// Profiling failed while the process still runs its program (logged by the task).
    Failed,
    /// Stopped from outside: the daemon is stopping.
    Stopped,
}

/// A target being profiled: its task stops when its process exits, when the daemon stops, or
/// when `stop` is sent (the process exec'd another program).
struct Running {
    name: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Run until `stop` resolves: scan, attach, detach; then detach everything.
pub async fn run(
    settings: Settings,
    exported: Exported,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let (stop_all, stopping) = watch::channel(false);
    let mut tasks: JoinSet<TaskEnd> = JoinSet::new();
    let mut task_keys: HashMap<tokio::task::Id, ProcessKey> = HashMap::new();
    let mut attached: BTreeMap<ProcessKey, Running> = BTreeMap::new();
    // Processes looked at and not attached (not selected, or failed): not looked at again
    // while they live. Refused for the target cap: counted once, retried when a slot frees.
    let mut passed: HashSet<ProcessKey> = HashSet::new();
    let mut refused: HashSet<ProcessKey> = HashSet::new();
    let mut go = GoCache::default();
    let binaries = std::sync::Arc::new(session::Binaries::default());
    let mut scan = tokio::time::interval(SCAN_INTERVAL);
    let own_pid = std::process::id();
    // Started before the first scan, so that no program starting in between is missed.
    let mut execs = match crate::probes::execs::ExecWatch::start() {
        Ok(watch) => Some(watch),
        Err(error) => {
            tracing::warn!(
                "cannot watch for programs that start ({error}): reading every process in /proc \
                 every {SCAN_INTERVAL:?} instead, which costs more the more processes the node runs"
            );
            None
        }
    };
    // Every process is looked at first, and again after a target's task ends (its slot is
    // free for a refused process, its PID may run a program to attach again).
    let mut full_scan_due = true;
    let mut last_full_scan = std::time::Instant::now();
    loop {
        tokio::select! {
            () = &mut stop => break,
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                // A task that panicked is over too: its slot is freed either way.
                let (id, end) = match &done {
                    Ok((id, end)) => (*id, *end),
                    Err(error) => (error.id(), TaskEnd::Failed),
                };
                if let Some(key) = task_keys.remove(&id)
                    && let Some(running) = attached.remove(&key)
                {
                    let (pid, name) = (key.pid, &running.name);
                    match end {
                        // The next scan looks at its new image, attaching again if it is
                        // still selected.
                        TaskEnd::Exec => tracing::info!(
                            "PID {pid} ({name}) exec'd; detached from its old image, looking at the new one"
                        ),
                        TaskEnd::Gone => tracing::info!("PID {pid} ({name}) is gone; detached"),
                        // Not attached again while it lives: it would fail the same way.
                        TaskEnd::Failed | TaskEnd::Stopped => {
                            passed.insert(key);
                            tracing::info!(
                                "PID {pid} ({name}) still runs but is no longer profiled; not \
                                 attaching to it again while it lives"
                            );
                        }
                    }
                }
                full_scan_due = true;
                tokio::task::block_in_place(release_freed_memory);
            }
            _ = scan.tick() => {
                let exec_list = execs.as_mut().map(crate::probes::execs::ExecWatch::drain);
                let full = full_scan_due
                    || last_full_scan.elapsed() >= FULL_SCAN_INTERVAL
                    || exec_list.as_ref().is_none_or(|execs| execs.look_at_all);
                let pids = if full {
                    let Ok(entries) = std::fs::read_dir("/proc") else { continue };
                    full_scan_due = false;
                    last_full_scan = std::time::Instant::now();
                    entries
                        .flatten()
                        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
                        .collect()
                } else {
                    exec_list.map(|execs| execs.pids).unwrap_or_default()
                };
                let mut alive = HashSet::new();
                for &pid in &pids {
                    if pid == own_pid {
                        continue;
                    }
                    let Some(key) = process_key(pid) else { continue };
                    alive.insert(key);
                    if attached.contains_key(&key) || passed.contains(&key) {
                        continue;
                    }
                    let Some(candidate) = candidate(pid) else {
                        passed.insert(key);
                        continue;
                    };
                    let selected = settings
                        .selectors
                        .iter()
                        .any(|selector| selector.selects(&candidate, &mut || go.is_go(pid, key.exe)));
                    if !selected {
                        passed.insert(key);
                        continue;
                    }
                    if attached.len() >= settings.max_targets {
                        if refused.insert(key) {
                            exported.metrics.attach_failed("max_targets");
                            tracing::warn!(
                                "PID {pid} ({}) is selected but mapscope is already attached to {} \
                                 processes (--max-targets): not attaching while that lasts",
                                candidate.exe,
                                settings.max_targets
                            );
                        }
                        continue;
                    }
                    let options = settings.options.clone();
                    let shared = std::sync::Arc::clone(&binaries);
                    let attaching = tokio::task::spawn_blocking(move || {
                        attach(key, &options, &shared).map(|target| (target, options))
                    })
                    .await;
                    match attaching {
                        Ok(Ok((target, options))) => {
                            let name = target.target.process.exe_name.clone();
                            tracing::info!(
                                "attached to PID {pid} ({name}, {})",
                                target.target.runtime()
                            );
                            let (stop_one, stopped) = tokio::sync::oneshot::channel::<()>();
                            attached.insert(key, Running { name, stop: Some(stop_one) });
                            let exported = exported.clone();
                            let mut stopping = stopping.clone();
                            let task = tasks.spawn(async move {
                                let exited = target.target.process.exit_watcher();
                                let stop = async move {
                                    let exited = async move {
                                        match exited {
                                            Ok(watcher) => { let _ = watcher.exited().await; }
                                            Err(_) => std::future::pending().await,
                                        }
                                    };
                                    tokio::select! {
                                        () = exited => {}
                                        _ = stopping.changed() => {}
                                        _ = stopped => {}
                                    }
                                };
                                let same_image = target.target.process.still_runs_its_image();
                                let outcome = target.collect(&exported, options, stop, || {}).await;
                                if let Err(error) = &outcome {
                                    tracing::warn!("PID {pid}: profiling ended early: {error:#}");
                                }
                                if same_image() {
                                    if outcome.is_err() { TaskEnd::Failed } else { TaskEnd::Stopped }
                                } else if crate::process::pidfd::image(pid).is_some()
                                    && start_time(pid) == Some(key.start_time)
                                {
                                    // (A zombie has no image: gone, not exec'd.)
                                    TaskEnd::Exec
                                } else {
                                    TaskEnd::Gone
                                }
                            });
                            task_keys.insert(task.id(), key);
                        }
                        Ok(Err(error)) => {
                            passed.insert(key);
                            let reason = failure_reason(&error);
                            exported.metrics.attach_failed(reason);
                            // A process gone before it could be attached is no news.
                            if reason == "exited" {
                                tracing::debug!("PID {pid}: {error:#}");
                            } else {
                                tracing::warn!("not attaching to PID {pid} ({}): {error:#}", candidate.exe);
                            }
                        }
                        Err(error) => {
                            passed.insert(key);
                            exported.metrics.attach_failed("error");
                            tracing::warn!("attaching to PID {pid} failed: {error}");
                        }
                    }
                }
                // A target whose key is gone but whose process lives on (same PID, same start)
                // exec'd another program: its probes sit on the old executable. Stop it; the new
                // program is a new key. A process that exited is no exec: its exit watcher ends
                // its task, and the task's end says it is gone.
                for (key, running) in attached.iter_mut() {
                    let looked_at = full || pids.binary_search(&key.pid).is_ok();
                    if looked_at && !alive.contains(key) && runs_another_program(key) && let Some(stop) = running.stop.take() {
                        tracing::info!(
                            "PID {} ({}) now runs another program: detaching",
                            key.pid,
                            running.name
                        );
                        let _ = stop.send(());
                    }
                }
                // Forget processes that are gone, so the tables stay as big as /proc.
                if full {
                    passed.retain(|key| alive.contains(key));
                    refused.retain(|key| alive.contains(key));
                }
            }
        }
    }
    let _ = stop_all.send(true);
    while tasks.join_next().await.is_some() {}
    tracing::info!("detached from every target");
}

/// Give back to the system the memory a detached target held (its parsed executable when no
/// other target shares it, its eBPF object, its tables). glibc keeps freed memory in per-thread
/// arenas, and attaches and detaches run on blocking threads with arenas of their own, so
/// without this the daemon's RSS settles tens of MB above what it uses, by chance of which
/// thread ran what.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only hands free heap pages back to the kernel; it takes no pointers
    // and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Attach to the process `key` names, if it still is that process once held by its pidfd.
fn attach(
    key: ProcessKey,
    options: &Options,
    binaries: &session::Binaries,
) -> anyhow::Result<session::Attached> {
    let process = session::open_process(key.pid)?;
    if process_key(key.pid) != Some(key) {
        return Err(UserError::new(
            Exit::NoSuchProcess,
            format!("PID {} changed while mapscope opened it", key.pid),
        )
        .into());
    }
    let target = session::understand_with(process, options, binaries)?;
    session::attach(target, options)
}

/// The number of targets is bounded; the label sets are bounded per target (see
/// docs/METRICS.md), so the series are bounded by `max_targets` times that.
pub fn describe(settings: &Settings) -> String {
    let selectors: Vec<String> = settings.selectors.iter().map(ToString::to_string).collect();
    format!(
        "selecting {} (at most {} targets)",
        selectors.join(", "),
        settings.max_targets
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::metrics::ATTACH_FAILURE_REASONS;

    /// Every reason an attach failure is counted under has its zero series (and is documented
    /// with them): the two lists cannot drift apart.
    #[test]
    fn every_failure_reason_is_a_known_one() {
        let exits = [
            Exit::Internal,
            Exit::Usage,
            Exit::NoSuchProcess,
            Exit::NotGo,
            Exit::UnsupportedGo,
            Exit::MissingSymbols,
            Exit::Privileges,
            Exit::KernelFeature,
            Exit::ListenAddress,
            Exit::Launch,
            Exit::NothingSampled,
            Exit::Config,
        ];
        let mut reasons: Vec<&str> = exits
            .into_iter()
            .map(|exit| failure_reason(&UserError::new(exit, "x").into()))
            .collect();
        reasons.push(failure_reason(&anyhow::anyhow!("not a user error")));
        reasons.push("max_targets");
        for reason in &reasons {
            assert!(ATTACH_FAILURE_REASONS.contains(reason), "{reason}");
        }
        for reason in ATTACH_FAILURE_REASONS {
            assert!(reasons.contains(&reason), "{reason} is never counted");
        }
    }
}
