//! `cargo xtask dist`'s tarball, as a user with only that file gets it: its SHA-256 sum checks,
//! it unpacks to the binary, man pages, completions, dashboards, deploy files and docs, and the
//! binary runs in a root holding nothing else (no Rust, no libraries, no eBPF object on disk):
//! `--version` and `inspect` of a Go program.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::{path::PathBuf, process::Command};

/// The tarball `cargo xtask test` built before the tests (`MAPSCOPE_TEST_DIST`).
fn tarball() -> PathBuf {
    PathBuf::from(
        std::env::var_os("MAPSCOPE_TEST_DIST")
            .expect("MAPSCOPE_TEST_DIST: run the tests through `cargo xtask test`"),
    )
}

#[test]
#[ignore = "needs root and the tarball: run `cargo xtask test`"]
fn the_tarball_runs_where_nothing_else_is_installed() {
    let tarball = tarball();
    let folder = tarball.parent().unwrap();
    let name = tarball.file_name().unwrap().to_str().unwrap();
    let check = Command::new("sha256sum")
        .current_dir(folder)
        .args(["--check", &format!("{name}.sha256")])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let unpacked = tempfile::tempdir().unwrap();
    let untar = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .unwrap();
    assert!(untar.success());
    let top = unpacked.path().join(name.trim_end_matches(".tar.gz"));
    for file in [
        "bin/mapscope",
        "man/mapscope.1",
        "man/mapscope-attach.1",
        "man/mapscope-daemon.1",
        "completions/mapscope.bash",
        "completions/_mapscope",
        "completions/mapscope.fish",
        "dashboards/gc-pauses.json",
        "deploy/kubernetes/daemonset.yaml",
        "deploy/systemd/mapscope.service",
        "docs/METRICS.md",
        "README.md",
    ] {
        assert!(top.join(file).is_file(), "{file} missing from {name}");
    }
    let man = std::fs::read_to_string(top.join("man/mapscope-daemon.1")).unwrap();
    assert!(man.starts_with(".ie") || man.contains(".TH"), "{man}");
    assert!(man.contains("max\\-targets"), "the daemon's flags: {man}");
    let bash = std::fs::read_to_string(top.join("completions/mapscope.bash")).unwrap();
    assert!(bash.contains("--alloc-top-sites"), "{bash}");

    // A root with the unpacked tree and one Go program, nothing else: no shell, no libc, no
    // Rust. The binary must need none of it.
    let root = top.as_path();
    std::fs::copy(
        common::build_go("gcload", common::NEWEST_GO, &[]),
        root.join("gcload"),
    )
    .unwrap();
    let in_root = |args: &[&str]| {
        let output = Command::new("/usr/sbin/chroot")
            .arg(root)
            .arg("/bin/mapscope")
            .args(args)
            .env_clear()
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let version = in_root(&["--version"]);
    assert!(
        version.starts_with(&format!("mapscope {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let inspect = in_root(&["inspect", "/gcload"]);
    assert!(
        inspect.contains(&format!("go{} (supported)", common::NEWEST_GO))
            && inspect.contains("gc_pause_distributions   available"),
        "{inspect}"
    );
}
