//! `mapscope daemon`: many targets, found by selectors, each attached when it starts and
//! detached when it exits, all served on one endpoint. Each target goes through the same
//! `session` code path as `mapscope attach`; the daemon only finds processes and keeps count.
pub mod config;
pub mod select;

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use tokio::{sync::watch, task::JoinSet};

use crate::{
    error::{Exit, UserError},
    session::{self, Exported, Options},
};
use select::{Candidate, Selector};

/// How often /proc is scanned for new processes: a process is attached within this (plus the
/// attach itself) of starting.
pub const SCAN_INTERVAL: Duration = Duration::from_millis(500);

pub struct Settings {
    pub selectors: Vec<Selector>,
    pub max_targets: usize,
    pub options: Options,
}

/// A process as the daemon keys it: PID and start time (clock ticks since boot), so a PID
/// reused by a new process is a new key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct ProcessKey {
    pid: u32,
    start_time: u64,
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
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
    fn is_go(&mut self, pid: u32) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let path = format!("/proc/{pid}/exe");
        let Ok(metadata) = std::fs::metadata(&path) else {
            return false;
        };
        let key = (metadata.dev(), metadata.ino());
        *self
            .0
            .entry(key)
            .or_insert_with(|| crate::gobin::buildinfo::is_go_file(std::path::Path::new(&path)))
    }
}

/// Run until `stop` resolves: scan, attach, detach; then detach everything.
pub async fn run(
    settings: Settings,
    exported: Exported,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let (stop_all, stopping) = watch::channel(false);
    let mut tasks: JoinSet<ProcessKey> = JoinSet::new();
    let mut attached: BTreeMap<ProcessKey, String> = BTreeMap::new();
    // Processes looked at and not attached (not selected, or failed): not looked at again
    // while they live.
    let mut passed: HashMap<ProcessKey, ()> = HashMap::new();
    let mut go = GoCache::default();
    let mut scan = tokio::time::interval(SCAN_INTERVAL);
    let own_pid = std::process::id();
    loop {
        tokio::select! {
            () = &mut stop => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(key) = done
                    && let Some(name) = attached.remove(&key)
                {
                    tracing::info!("PID {} ({name}) exited; detached", key.pid);
                }
            }
            _ = scan.tick() => {
                let Ok(entries) = std::fs::read_dir("/proc") else { continue };
                let mut alive = Vec::new();
                for entry in entries.flatten() {
                    let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
                        continue;
                    };
                    if pid == own_pid {
                        continue;
                    }
                    let Some(start_time) = start_time(pid) else { continue };
                    let key = ProcessKey { pid, start_time };
                    alive.push(key);
                    if attached.contains_key(&key) || passed.contains_key(&key) {
                        continue;
                    }
                    let Some(candidate) = candidate(pid) else {
                        // Kernel threads have no executable.
                        passed.insert(key, ());
                        continue;
                    };
                    let selected = settings.selectors.iter().any(|selector| {
                        selector.matches(&candidate).unwrap_or_else(|| go.is_go(pid))
                    });
                    if !selected {
                        passed.insert(key, ());
                        continue;
                    }
                    if attached.len() >= settings.max_targets {
                        passed.insert(key, ());
                        exported.metrics.attach_failed("max_targets");
                        tracing::warn!(
                            "PID {pid} ({}) is selected but mapscope is already attached to {} \
                             processes (--max-targets): not attaching",
                            candidate.exe,
                            settings.max_targets
                        );
                        continue;
                    }
                    match attach(pid, &settings.options) {
                        Ok(target) => {
                            let name = target.target.process.exe_name.clone();
                            tracing::info!(
                                "attached to PID {pid} ({name}, {})",
                                target.target.go_version
                            );
                            attached.insert(key, name);
                            let exported = exported.clone();
                            let options = settings.options;
                            let mut stopping = stopping.clone();
                            tasks.spawn(async move {
                                let exited = target.target.process.exit_watcher();
                                let stop = async move {
                                    match exited {
                                        Ok(watcher) => tokio::select! {
                                            _ = watcher.exited() => {}
                                            _ = stopping.changed() => {}
                                        },
                                        Err(_) => { let _ = stopping.changed().await; }
                                    }
                                };
                                if let Err(error) = target.collect(&exported, options, stop).await {
                                    tracing::warn!("PID {pid}: profiling ended early: {error:#}");
                                }
                                key
                            });
                        }
                        Err(error) => {
                            passed.insert(key, ());
                            let reason = failure_reason(&error);
                            exported.metrics.attach_failed(reason);
                            // A process gone before it could be attached is no news.
                            if reason == "exited" {
                                tracing::debug!("PID {pid}: {error:#}");
                            } else {
                                tracing::warn!("not attaching to PID {pid} ({}): {error:#}", candidate.exe);
                            }
                        }
                    }
                }
                // Forget processes that are gone, so the table stays as big as /proc.
                let alive: std::collections::HashSet<ProcessKey> = alive.into_iter().collect();
                passed.retain(|key, ()| alive.contains(key));
            }
        }
    }
    let _ = stop_all.send(true);
    while tasks.join_next().await.is_some() {}
    tracing::info!("detached from every target");
}

fn attach(pid: u32, options: &Options) -> anyhow::Result<session::Attached> {
    let process = session::open_process(pid)?;
    let target = session::understand(process, options)?;
    session::attach(target, *options)
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
