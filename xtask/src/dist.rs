//! `cargo xtask dist`: the release tarball a user copies to a node, with nothing else to
//! install: the mapscope binary (statically linked, its eBPF object inside), man pages and
//! shell completions generated from its own command line, the Grafana dashboards, the deploy
//! files, the metrics reference and the README; and its SHA-256 sum beside it.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, shell, workspace_root};

/// The test that checks the tarball (profiler/tests/dist.rs).
pub const TEST_NAME: &str = "the_tarball_runs_where_nothing_else_is_installed";

/// The one target the tarball is for; named explicitly so that the static linking flag below
/// applies to mapscope only, not to build scripts or to the eBPF build nested in build.rs.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Build the tarball; returns its path (`target/dist/mapscope-VERSION-x86_64-linux.tar.gz`).
pub fn run() -> Result<PathBuf> {
    setup::rust()?;
    let root = workspace_root();
    // glibc linked in statically (static-pie): runs on any x86-64 Linux, whatever its glibc.
    shell::run(
        shell::cargo()
            .args(["build", "--release", "-p", "profiler", "--target", TARGET])
            .env(
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                "-C target-feature=+crt-static",
            ),
    )?;
    let binary = root.join("target").join(TARGET).join("release/mapscope");
    let version = version_of(&binary)?;
    let name = format!("mapscope-{version}-x86_64-linux");
    let dist = root.join("target/dist");
    let staging = dist.join(&name);
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    std::fs::create_dir_all(staging.join("bin"))?;
    std::fs::copy(&binary, staging.join("bin/mapscope"))
        .with_context(|| format!("copying {}", binary.display()))?;
    // Man pages and completions from the binary's own clap definition.
    shell::run(Command::new(&binary).arg("generate").arg(&staging))?;
    for folder in ["dashboards", "deploy"] {
        shell::run(
            Command::new("cp")
                .arg("-R")
                .arg(root.join(folder))
                .arg(staging.join(folder)),
        )?;
    }
    std::fs::create_dir_all(staging.join("docs"))?;
    for (from, to) in [
        ("README.md", "README.md"),
        ("docs/METRICS.md", "docs/METRICS.md"),
    ] {
        std::fs::copy(root.join(from), staging.join(to))
            .with_context(|| format!("copying {from}"))?;
    }

    let tarball = format!("{name}.tar.gz");
    // Owner, order and times fixed: the same tree gives the same bytes.
    shell::run(
        Command::new("tar")
            .current_dir(&dist)
            .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
            .args(["--mtime=@0", "-czf", &tarball, &name]),
    )?;
    let sum = Command::new("sha256sum")
        .current_dir(&dist)
        .arg(&tarball)
        .output()
        .context("starting sha256sum")?;
    if !sum.status.success() {
        bail!("sha256sum {tarball} failed");
    }
    std::fs::write(dist.join(format!("{tarball}.sha256")), &sum.stdout)?;
    let path = dist.join(&tarball);
    println!(
        "xtask: {} and {}.sha256 ({})",
        path.display(),
        path.display(),
        size(&path)?
    );
    Ok(path)
}

/// `0.1.0`, from `mapscope --version` (`mapscope 0.1.0`).
fn version_of(binary: &Path) -> Result<String> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("no version in {text:?}"))
}

fn size(path: &Path) -> Result<String> {
    let bytes = std::fs::metadata(path)?.len();
    Ok(format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0)))
}
