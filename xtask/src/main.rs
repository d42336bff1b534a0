//! Developer tasks: set-up, build, run, test, bench. Every task installs what it is missing
//! first, so each works on a fresh machine with nothing installed by hand.
mod bench;
mod dist;
mod setup;
mod shell;

use std::{ffi::OsString, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "mapscope's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: rust-src, bpf-linker, Go toolchains.
    Setup,
    /// Release build; the binary ends up at target/release/mapscope.
    Build,
    /// Build and run mapscope as root. With no arguments: profile the bundled demo service.
    Run {
        /// Arguments for mapscope, after `--` (e.g. `-- attach --pid 1234`).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Run every test tier: unit tests, then real eBPF against real Go programs (as root).
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
    },
    /// The release tarball for users: static binary, man pages, completions, dashboards,
    /// deploy files, docs, and its SHA-256 sum (target/dist/).
    Dist,
    /// Same-run overhead ratios: a GC-heavy Go benchmark with and without mapscope attached.
    Bench {
        /// `discovery`: only the cost of the map discovery windows; `vitals`: only the runtime
        /// vitals reads and GC trigger probes; `budget`: the overhead budget's rows; `daemon`:
        /// the daemon's CPU, RSS and BPF memory with 1, 10 and 64 targets; `long`: mapscope's
        /// CPU and RSS over 10 minutes; `pauses`: the runtime's GC pause with and without
        /// mapscope (default, and --stw-stopping).
        only: Option<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => {
            setup::rust()?;
            setup::go_toolchains(setup::GO_VERSIONS)?;
            setup::debian_go()?;
            setup::debian_go_program()?;
            Ok(())
        }
        Task::Build => build_release().map(|_| ()),
        Task::Run { args } => run(args),
        Task::Test { filter } => test(filter),
        Task::Dist => dist::run().map(|_| ()),
        Task::Bench { only } => bench::run(only),
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn build_release() -> Result<PathBuf> {
    setup::rust()?;
    shell::run(shell::cargo().args(["build", "--release", "-p", "profiler"]))?;
    let binary = workspace_root().join("target/release/mapscope");
    if !binary.exists() {
        bail!("the build finished but {} is missing", binary.display());
    }
    Ok(binary)
}

fn run(args: Vec<OsString>) -> Result<()> {
    let mapscope = build_release()?;
    let args = if args.is_empty() {
        let demo = setup::build_demo()?;
        println!(
            "profiling the bundled demo service; metrics at http://127.0.0.1:9871/metrics, Ctrl-C stops"
        );
        vec!["run".into(), "--".into(), demo.into_os_string()]
    } else {
        args
    };
    let status = shell::as_root(&mapscope)
        .args(&args)
        .status()
        .with_context(|| format!("starting {}", mapscope.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

fn test(filter: Option<String>) -> Result<()> {
    setup::rust()?;
    let mut toolchains = setup::go_toolchains(setup::GO_VERSIONS)?;
    let (debian_version, debian_go) = setup::debian_go()?;
    toolchains.insert(debian_version, debian_go);
    let debian_program = setup::debian_go_program()?;
    // The tarball users get, which the tests unpack and run where no Rust is installed; not
    // built (a release build of its own) when a filter leaves that test out.
    let tarball = if filter
        .as_deref()
        .is_none_or(|filter| dist::TEST_NAME.contains(filter))
    {
        Some(dist::run()?)
    } else {
        None
    };
    // The daemon's endpoint tests make a certificate and speak TLS with these; the maps page is
    // checked in a real headless browser; binutils' strip makes symbol-less twins (and its nm
    // is the native tests' ground truth); g++ builds the C++ fixture; the C allocators that
    // replace glibc's; Redis, a real server on Debian's jemalloc (with its client and
    // benchmark).
    setup::debian_packages(&[
        "openssl",
        "curl",
        "chromium",
        "binutils",
        "gcc",
        "g++",
        "libc6-dev",
        "libjemalloc2",
        "libtcmalloc-minimal4",
        "libmimalloc2.0",
        "redis-tools",
    ])?;
    let go_list = toolchains
        .iter()
        .map(|(version, go)| format!("{version}={}", go.display()))
        .collect::<Vec<_>>()
        .join(",");

    shell::run(shell::cargo().args(["fmt", "--all", "--", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")?;
    // Userspace on stable; the eBPF crate only builds for the bpf target, with nightly.
    shell::run(shell::cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "profiler-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    shell::run(
        Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "-p",
                "profiler-ebpf",
                "--release",
            ])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args([
                "--config",
                r#"build.rustflags=["--cfg=bpf_target_arch=\"x86_64\""]"#,
            ])
            .args(["--", "-D", "warnings"]),
    )?;

    // Unit tests and the integration tiers in one cargo invocation: the integration tests are
    // `#[ignore]`d for plain `cargo test` (they need root and Go toolchains), and included here.
    let mut command = shell::cargo();
    // The default members: everything but the eBPF crate, which build.rs builds for the kernel.
    // --no-fail-fast: one failing binary still lets the others run, so a red run lists every
    // failure at once instead of the first.
    command.args(["test", "--no-fail-fast"]);
    if !shell::is_root() {
        command.args(["--config", r#"target."cfg(all())".runner="sudo -E""#]);
    }
    // --show-output: the integration tests print their mapscope-vs-runtime comparisons.
    command.args(["--", "--include-ignored", "--show-output"]);
    if let Some(filter) = filter {
        command.arg(filter);
    }
    command
        .env("MAPSCOPE_TEST_GO", go_list)
        .env("MAPSCOPE_TEST_DEBIAN_GO_PROGRAM", debian_program)
        .env("MAPSCOPE_TEST_GOCACHE", setup::cache_dir().join("gocache"));
    if let Some(tarball) = tarball {
        command.env("MAPSCOPE_TEST_DIST", tarball);
    }
    let totals = shell::run_counting_tests(&mut command)?;
    // One closing line over every test binary, so nobody has to add up cargo's per-binary lines.
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}
