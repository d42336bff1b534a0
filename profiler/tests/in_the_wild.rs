//! Targets as production has them: binaries deleted or replaced after start, and processes in
//! their own mount namespace (containers), whose executable path means nothing on the host.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::{GoTarget, Mapscope};

const GO: &str = "1.27.3";

/// Attach, run one load window, and check mapscope saw exactly the runtime's GC cycles and
/// pauses.
fn attach_and_compare(mut target: GoTarget) {
    let mapscope = Mapscope::attach(target.pid());
    let report = target.run_load();
    let metrics =
        mapscope.scrape_until(Duration::from_secs(10), |m| m.gc_cycles() >= report.num_gc);
    assert_eq!(
        metrics.gc_cycles(),
        report.num_gc,
        "GC cycles vs MemStats.NumGC"
    );
    let pauses = metrics.sum("mapscope_stw_pause_seconds_count", common::is_gc_reason) as u64;
    let runtime = report.histogram("/sched/pauses/total/gc:seconds").unwrap();
    assert_eq!(pauses, runtime.count, "GC pauses vs /sched/pauses/total/gc");
    target.send("exit");
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn binary_deleted_after_start() {
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("gcload-deleted");
    std::fs::copy(common::build_go("gcload", GO, &[]), &copy).unwrap();
    let target = GoTarget::start(&copy, &["-duration", "500ms"]);
    std::fs::remove_file(&copy).unwrap();
    let link = std::fs::read_link(format!("/proc/{}/exe", target.pid())).unwrap();
    assert!(link.to_string_lossy().ends_with("(deleted)"), "{link:?}");
    attach_and_compare(target);
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn process_in_its_own_mount_namespace() {
    // The target runs from a tmpfs mounted only inside its namespace: from mapscope's side the
    // directory is empty, and only /proc/PID/exe reaches the binary.
    let binary = common::build_go("gcload", GO, &[]);
    let mountpoint = tempfile::tempdir().unwrap();
    let inside = mountpoint.path().join("gcload");
    let script = format!(
        "mount -t tmpfs mapscope-test {dir} && cp {binary} {inside} && exec {inside} -duration 500ms",
        dir = mountpoint.path().display(),
        binary = binary.display(),
        inside = inside.display(),
    );
    let mut command = Command::new("unshare");
    command.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let target = GoTarget::spawn(command);
    assert!(
        !Path::new(&inside).exists(),
        "the binary must be invisible outside the namespace"
    );
    assert_ne!(
        std::fs::read_link(format!("/proc/{}/ns/mnt", target.pid())).unwrap(),
        std::fs::read_link("/proc/self/ns/mnt").unwrap(),
        "the target should be in another mount namespace"
    );
    attach_and_compare(target);
}

/// A Go release newer than the table: a clear warning, then best effort with the newest layout
/// (here the binary is really Go 1.27 claiming to be 1.99, so the numbers must still agree).
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn newer_go_than_known_warns_and_works() {
    let real = common::build_go("gcload", GO, &[]);
    let newer = common::with_build_info_version(&real, "go1.99.0", "gcload-claims-go1.99");
    let target = GoTarget::start(&newer, &["-duration", "500ms"]);
    let pid = target.pid();
    let mapscope_stderr = {
        let mapscope = Mapscope::attach(pid);
        let stderr = mapscope.stderr.all();
        drop(mapscope);
        stderr
    };
    assert!(
        mapscope_stderr.contains("newer than the newest Go mapscope knows")
            && mapscope_stderr.contains("check the numbers against runtime/metrics"),
        "{mapscope_stderr}"
    );
    attach_and_compare(target);
}

/// No section headers at all (as `sstrip` leaves a binary): the build info, the pclntab and
/// Go's text start must all be found through the program headers and the runtime's moduledata.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn binary_without_section_headers() {
    for (flags, name) in [
        (&["-ldflags=-s -w"][..], "gcload-no-sections"),
        (
            &["-buildmode=pie", "-ldflags=-s -w"][..],
            "gcload-pie-no-sections",
        ),
    ] {
        let mut data = std::fs::read(common::build_go("gcload", GO, flags)).unwrap();
        // ELF64 header: e_shoff at 0x28 (8 bytes), e_shnum at 0x3c, e_shstrndx at 0x3e (2 each).
        data[0x28..0x30].fill(0);
        data[0x3c..0x40].fill(0);
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, &data).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();

        let report = common::inspect_json(&[path.to_str().unwrap()]);
        assert_eq!(report["go_version"], format!("go{GO}"));
        assert_eq!(report["stripped"], true);
        attach_and_compare(GoTarget::start(&path, &["-duration", "300ms"]));
    }
}
