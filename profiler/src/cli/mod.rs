//! Command line: one file per subcommand. `main.rs` only parses and hands over.
pub mod attach;
pub mod daemon;
pub mod generate;
pub mod heatmap;
pub mod inspect;
pub mod profile;
pub mod run;

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

/// Default metrics address: loopback only, so nothing is exposed off the node unless asked.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9871";

#[derive(Debug, Parser)]
#[command(
    name = "mapscope",
    version,
    about = "eBPF profiler for Go services: GC pauses, allocations and maps, from outside the process",
    long_about = "mapscope attaches kernel uprobes to a running Go program (no rebuild, no restart, \
                  nothing written into it) and measures its GC (stop-the-world pauses and GC \
                  cycles), its allocations (sampled sites, pprof profiles) and its maps (growth, \
                  per-bucket collision heatmaps), as Prometheus metrics, pprof files and pictures; \
                  of any program, Go or not, it counts the calls into its C allocator (malloc, \
                  free...). \
                  Needs root, or CAP_SYS_ADMIN + CAP_SYS_PTRACE (uprobes need CAP_SYS_ADMIN since \
                  Linux 6.16 and its stable backports).",
    after_help = "Exit codes: 0 ok, 2 usage, 3 no such process, 4 neither Go nor a known C allocator, 5 unsupported Go \
                  version, 6 runtime functions not found, 7 insufficient privileges, 8 kernel lacks uprobes/BTF, \
                  9 listen address unavailable, 10 command could not be started, 11 nothing was sampled, \
                  12 invalid config file, 1 anything else."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter (tracing EnvFilter syntax), e.g. `debug` or `mapscope=debug,aya=warn`.
    #[arg(
        long,
        global = true,
        env = "MAPSCOPE_LOG",
        hide_env_values = true,
        default_value = "info"
    )]
    pub log: String,

    /// Log line format: `text` for people (coloured only on a terminal, never with NO_COLOR
    /// set), `json` for log shippers (one object per line: timestamp, level, target, fields).
    #[arg(
        long,
        global = true,
        env = "MAPSCOPE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to a running process (Go, or any using a C allocator) and serve its metrics until
    /// it exits or you press Ctrl-C.
    Attach(attach::AttachArgs),
    /// Start a command with the probes already attached, and profile it until it exits.
    Run(run::RunArgs),
    /// Show what mapscope can see in a program: Go version, build, probe points, features, C allocators.
    Inspect(inspect::InspectArgs),
    /// Take a profile from a running Go process and write it in pprof format.
    Profile(profile::ProfileArgs),
    /// Draw the buckets of a running Go process's big maps, with what a random hash would give and
    /// what to do: in the terminal, or as SVG, PNG or JSON.
    Heatmap(heatmap::HeatmapArgs),
    /// Profile every selected process as it starts, until it exits (DaemonSet, sidecar,
    /// systemd): one metrics endpoint for all.
    Daemon(daemon::DaemonArgs),
    /// Write the man pages and shell completions, generated from this command line's own
    /// definition (`cargo xtask dist` ships them).
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Address to serve Prometheus metrics on (/metrics). Port 0 picks a free port (logged).
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Allocation sites that get series of their own: those allocating the most bytes lately
    /// (see --alloc-sites-half-life); all others are summed under function="other". A site
    /// that falls behind keeps its series, frozen, until N newer ones have fallen behind too:
    /// at most 2N+1 site series per target.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub alloc_top_sites: usize,

    /// How fast the named allocation sites follow a change of load: a site's recent bytes
    /// count half after this long (e.g. `1m`, `30s`).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse, default_value = "1m")]
    pub alloc_sites_half_life: std::time::Duration,

    /// Also count every allocation exactly (mapscope_alloc_exact_*), with a uprobe on each
    /// allocation entry point. COSTLY: each allocation then pays microseconds, the target may run
    /// tens of times slower. For short diagnostic runs, never as a default.
    #[arg(long)]
    pub alloc_exact: bool,

    /// Track the C allocator's sampled allocations until they are freed: the live heap by
    /// call site and the age of what is still live (mapscope_native_inuse_*), where memory
    /// leaks. COSTLY: the native probes stay on all the time (not held within
    /// --max-overhead), with a return probe on each allocating call too.
    #[arg(long)]
    pub native_inuse: bool,

    /// The most mapscope may cost each target, as a share of the target's own CPU time (0.01:
    /// 1%). The probe families that can fire often (sampled allocations, map growth, allocation
    /// counting) are then attached only part of the time, and what they feed is scaled up
    /// (mapscope_probe_duty_cycle shows how much). The rare ones (stop-the-world, GC start) and
    /// modes you ask for (--alloc-exact, --map-creations) are never cut. 0 keeps every probe
    /// attached all the time.
    #[arg(long, value_name = "RATIO", default_value_t = DEFAULT_MAX_OVERHEAD, value_parser = parse_overhead)]
    pub max_overhead: f64,

    /// Also measure the stopping part of each stop-the-world pause
    /// (mapscope_stw_stopping_seconds: from when the runtime began stopping the world until
    /// every P had stopped). This needs one probe hit while the world is stopped, which makes
    /// every pause longer by the hit's cost (2.5 µs in this project's bench); without it no
    /// probe fires inside a pause.
    #[arg(long)]
    pub stw_stopping: bool,

    #[command(flatten)]
    pub maps: MapArgs,
}

/// `--max-overhead`'s default: 1% of each target's CPU time.
pub const DEFAULT_MAX_OVERHEAD: f64 = 0.01;

/// `--max-overhead`: a share of the target's CPU time, from 0 (no governor) to below 1.
fn parse_overhead(text: &str) -> Result<f64, String> {
    let ratio: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number: give a share such as 0.01 (1%)"))?;
    if !(0.0..1.0).contains(&ratio) {
        return Err(format!(
            "{text} is not a share of the target's CPU time: give one from 0 (no budget) to \
             below 1, such as 0.01 (1%)"
        ));
    }
    Ok(ratio)
}

impl ExportArgs {
    pub fn options(&self) -> crate::session::Options {
        crate::session::Options {
            alloc_top_sites: self.alloc_top_sites,
            alloc_sites_half_life: self.alloc_sites_half_life,
            alloc_exact: self.alloc_exact,
            native_inuse: self.native_inuse,
            max_overhead: self.max_overhead,
            stw_stopping: self.stw_stopping,
            maps: self.maps.options(),
            final_map_snapshot: false,
        }
    }
}

/// Go map tracking: probes on map growth, overflow buckets and large sized `make` only (never
/// on inserts), and snapshots of the biggest maps read from the target's memory.
#[derive(Debug, Args)]
pub struct MapArgs {
    /// Do not track maps (no map probes, no snapshots).
    #[arg(long)]
    pub no_maps: bool,

    /// Maps read per snapshot round: the biggest and busiest of those tracked.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub map_snapshots: usize,

    /// Time between snapshot rounds: `10s`, `1m`.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse, default_value = "10s")]
    pub map_snapshot_interval: std::time::Duration,

    /// Largest map read, in bytes of its memory (a 1M-entry map[int]int is about 40 MB);
    /// bigger maps are skipped and counted as too_large.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20)]
    pub map_snapshot_max_bytes: u64,

    /// Target memory read per second at most by this target's snapshots (reads are paced;
    /// at least 1 MiB/s).
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20, value_parser = clap::value_parser!(u64).range(1 << 20..))]
    pub map_read_rate: u64,

    /// Map sites that get series of their own (the first seen); the rest are site="other".
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub map_top_sites: usize,

    /// Also track maps from their creation by `make(map, n)` with n >= 1024 (else a map is
    /// learned when it grows or overflows). COSTLY: probes every `make(map, n)` call whose n is
    /// not a small constant, about 50 µs each on a VM; for diagnostic runs.
    #[arg(long)]
    pub map_creations: bool,

    /// Find the maps the target uses, whatever their age, and measure their operation rates
    /// (mapscope_map_operations_per_second): probes on every map lookup, assignment, delete
    /// and range for WINDOW out of every PERIOD, the first window at attach; `off` to rely on
    /// growth, overflow and creation events only. Each probed operation costs the target about
    /// a microsecond or more while attached, and the kernel takes a while to remove the
    /// probes: at the default, 0.67% of the work of a program saturated with map operations in
    /// this project's bench, less for one doing fewer (see README, "Benchmarks").
    #[arg(
        long,
        value_name = "WINDOW/PERIOD",
        default_value = "200ms/2m",
        value_parser = crate::collect::discovery::parse_discovery,
        alias = "map-assign-sampling"
    )]
    pub map_discovery: crate::collect::discovery::DiscoverySetting,
}

impl MapArgs {
    pub fn options(&self) -> Option<crate::collect::maps::MapOptions> {
        (!self.no_maps).then_some(crate::collect::maps::MapOptions {
            snapshot_maps: self.map_snapshots,
            snapshot_interval: self.map_snapshot_interval,
            max_bytes_per_snapshot: self.map_snapshot_max_bytes,
            max_bytes_per_second: self.map_read_rate,
            top_sites: self.map_top_sites,
            creations: self.map_creations,
            discovery: self.map_discovery.0,
            site_filter: None,
        })
    }
}

/// The signals that end a profiling session: Ctrl-C (SIGINT), SIGTERM, and SIGHUP (the
/// terminal closed, or a service manager's reload): each stops cleanly, probes removed and the
/// summary written, instead of killing mapscope with its work lost.
pub struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next of them to arrive: `libc::SIGINT`, `SIGTERM` or `SIGHUP`.
    pub async fn next(&mut self) -> libc::c_int {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
            _ = self.hangup.recv() => libc::SIGHUP,
        }
    }

    /// "interrupted", "terminated" or "hung up", for the log.
    pub fn describe(signal: libc::c_int) -> &'static str {
        match signal {
            libc::SIGINT => "interrupted",
            libc::SIGTERM => "terminated",
            _ => "hung up",
        }
    }
}

/// Say so when `attach` or `run` serve their endpoint beyond this machine: they take no web
/// config, so whoever reaches the address reads the target's metrics, allocation sites and
/// maps, in plain HTTP without a password.
pub fn warn_if_exposed(listen: std::net::SocketAddr) {
    if !listen.ip().is_loopback() {
        tracing::warn!(
            "listening on {listen}, beyond this machine, in plain HTTP without a password: \
             anyone who reaches it reads this target's metrics, allocation sites and maps; \
             `mapscope daemon --web-config-file` serves with TLS and basic auth (it can select \
             one process: --select cmdline=...)"
        );
    }
}

/// That a file can be written at `output` (its folder exists, and it is no folder itself):
/// checked before attaching, so a typo costs no watch.
pub fn check_output_path(output: &std::path::Path) -> Result<(), crate::error::UserError> {
    use crate::error::{Exit, UserError};
    let folder = match output.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => std::path::Path::new("."),
    };
    if !folder.is_dir() {
        return Err(UserError::new(
            Exit::Usage,
            format!(
                "cannot write {}: the folder {} does not exist; create it or pick another path",
                output.display(),
                folder.display()
            ),
        ));
    }
    if output.is_dir() {
        return Err(UserError::new(
            Exit::Usage,
            format!(
                "cannot write {}: it is a folder; name a file in it",
                output.display()
            ),
        ));
    }
    Ok(())
}

/// Write `text` to stdout and flush it. A closed pipe (EPIPE) or a full disk (ENOSPC) is an
/// error to report, never a panic (`print!` panics on them).
pub fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// A line for the person at the terminal, on stderr; lost if stderr is closed.
pub fn note(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The exit summary of a session: what it saw of `target` (PID, executable, Go version), and
/// where its metrics were served.
fn summary_text(
    outcome: &crate::session::Outcome,
    target: (u32, &str, &str),
    endpoint: Option<std::net::SocketAddr>,
) -> String {
    let (pid, exe, go_version) = target;
    crate::export::summary::render(&crate::export::summary::Seen {
        pid,
        exe,
        go_version,
        watched: outcome.watched,
        book: &outcome.book,
        allocs: outcome.alloc_summary.as_ref(),
        maps: &outcome.maps,
        dropped: &outcome.dropped,
        snapshots_dropped: outcome.map_stats.as_ref().map(|stats| &stats.dropped),
        maps_tracked: outcome.map_stats.as_ref().map(|stats| stats.tracked),
        endpoint,
        runtime: outcome.runtime.as_ref(),
        cost: outcome.cost.as_ref(),
        native: &outcome.native,
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_snapshot() {
        let mut command = Cli::command();
        let help = command.render_long_help().to_string();
        // The long help of a subcommand, found by its path of names.
        let mut help_of = |path: &[&str]| {
            let mut found = Some(&mut command);
            for name in path {
                found = found.and_then(|sub| sub.find_subcommand_mut(name));
            }
            found
                .map(|sub| sub.render_long_help().to_string())
                .unwrap_or_default()
        };
        let sections = [
            ("attach", help_of(&["attach"])),
            ("run", help_of(&["run"])),
            ("inspect", help_of(&["inspect"])),
            ("profile alloc", help_of(&["profile", "alloc"])),
            ("heatmap", help_of(&["heatmap"])),
            ("daemon", help_of(&["daemon"])),
        ];
        let snapshot = sections.iter().fold(help, |all, (name, text)| {
            format!("{all}\n---- {name}\n{text}")
        });
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/snapshots/help.txt");
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(path, &snapshot).unwrap();
        }
        let stored = std::fs::read_to_string(path).unwrap_or_default();
        assert_eq!(
            snapshot, stored,
            "--help changed; review it and rerun with UPDATE_SNAPSHOTS=1 to accept"
        );
    }

    #[test]
    fn run_takes_the_command_after_double_dash() {
        let cli = Cli::try_parse_from([
            "mapscope",
            "run",
            "--listen",
            "127.0.0.1:0",
            "--",
            "svc",
            "--flag",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.command, ["svc", "--flag"]);
        assert_eq!(args.export.listen.port(), 0);
    }

    #[test]
    fn attach_requires_a_pid() {
        assert!(Cli::try_parse_from(["mapscope", "attach"]).is_err());
        let cli = Cli::try_parse_from(["mapscope", "attach", "--pid", "42"]).unwrap();
        let Command::Attach(args) = cli.command else {
            panic!("not attach")
        };
        assert_eq!(args.pid, 42);
        assert_eq!(args.export.listen.to_string(), DEFAULT_LISTEN);
    }
}
