//! Every way a user can point mapscope at the wrong thing: one line on stderr naming the
//! problem and the fix, a distinct exit code, never a panic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::{
    path::Path,
    process::{Command, Output},
};

use common::{GoTarget, MAPSCOPE};

const GO: &str = common::NEWEST_GO;

/// mapscope with `args`, logging warnings only (unless `args` or `env` say otherwise): what is
/// checked here is the one error line, not the progress lines before it.
fn mapscope(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(MAPSCOPE);
    command
        .args(args)
        .env("NO_COLOR", "1")
        .env("MAPSCOPE_LOG", "warn");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("running mapscope")
}

/// The exit code, and the stderr, which must be exactly one `mapscope: ` line.
fn one_line_error(output: &Output) -> (i32, String) {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one line on stderr, got:\n{stderr}"
    );
    assert!(stderr.starts_with("mapscope: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    (output.status.code().unwrap_or(-1), stderr)
}

fn attach(pid: u32) -> Output {
    mapscope(
        &[
            "attach",
            "--pid",
            &pid.to_string(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    )
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn missing_pid() {
    // Above the kernel's largest pid_max (2^22): it cannot exist.
    let (code, message) = one_line_error(&attach(4_999_999));
    assert_eq!(code, 3, "{message}");
    assert!(
        message.contains("PID 4999999 does not exist") && message.contains("ps -p"),
        "{message}"
    );
}

/// A thread ID (as `top -H` shows one) is named as a thread of its process, with the PID to
/// use, where before it was "cannot open PID: No such file or directory", exit 1.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn a_thread_id_names_its_process() {
    let target = common::GoTarget::start(&common::build_go("gcload", common::NEWEST_GO, &[]), &[]);
    let pid = target.pid();
    let tid: u32 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .find(|&tid| tid != pid)
        .expect("a Go program runs several threads");
    for args in [&["attach", "--listen", "127.0.0.1:0"][..], &["inspect"][..]] {
        let mut args = args.to_vec();
        let tid = tid.to_string();
        args.extend(["--pid", &tid]);
        let (code, message) = one_line_error(&mapscope(&args, &[]));
        assert_eq!(code, 3, "{message}");
        assert!(
            message.contains(&format!("PID {tid} is a thread of PID {pid}"))
                && message.contains(&format!("--pid {pid}")),
            "{message}"
        );
    }
}

/// A program without a Go runtime is profiled through its C allocator by attach, but the
/// commands that need a Go runtime refuse it, saying which do not (exit 4).
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn not_a_go_program() {
    let sleeper = common::ChildGuard(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = sleeper.0.id().to_string();
    let (code, message) = one_line_error(&mapscope(
        &[
            "profile",
            "alloc",
            "--pid",
            &pid,
            "--duration",
            "1s",
            "-o",
            "/dev/null",
        ],
        &[],
    ));
    assert_eq!(code, 4, "{message}");
    assert!(
        message.contains("(sleep) is not a Go program")
            && message.contains("attach, run or the daemon count its native allocations"),
        "{message}"
    );
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn go_older_than_supported() {
    let real = common::build_go("gcload", GO, &[]);
    // The runtime does not read this copy of the version, so the program still runs normally.
    let old = common::with_build_info_version(&real, "go1.16.3", "gcload-claims-go1.16");
    let target = GoTarget::start(&old, &[]);
    let (code, message) = one_line_error(&attach(target.pid()));
    assert_eq!(code, 5, "{message}");
    assert!(
        message.contains("go1.16.3")
            && message.contains("older than the oldest Go mapscope supports"),
        "{message}"
    );
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn corrupt_build_info() {
    let real = common::build_go("gcload", GO, &[]);
    let corrupt = common::with_build_info_version(&real, "gox.yy.z", "gcload-corrupt-buildinfo");
    let target = GoTarget::start(&corrupt, &[]);
    let (code, message) = one_line_error(&attach(target.pid()));
    assert_eq!(code, 4, "{message}");
    assert!(message.contains("corrupt Go build info"), "{message}");
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn without_privileges() {
    let target = GoTarget::start(&common::build_go("gcload", GO, &[]), &[]);
    // As nobody, with every capability dropped.
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .args([
            MAPSCOPE,
            "attach",
            "--pid",
            &target.pid().to_string(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("running setpriv (util-linux)");
    let (code, message) = one_line_error(&output);
    assert_eq!(code, 7, "{message}");
    assert!(
        message.contains("CAP_SYS_ADMIN")
            && message.contains("CAP_SYS_PTRACE")
            && message.contains("root"),
        "{message}"
    );
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn listen_address_taken() {
    let target = GoTarget::start(&common::build_go("gcload", GO, &[]), &[]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = mapscope(
        &[
            "attach",
            "--pid",
            &target.pid().to_string(),
            "--listen",
            &address,
        ],
        &[],
    );
    let (code, message) = one_line_error(&output);
    assert_eq!(code, 9, "{message}");
    assert!(
        message.contains(&format!("cannot listen on {address}")) && message.contains("--listen"),
        "{message}"
    );
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn kernel_without_uprobes_or_btf() {
    let target = GoTarget::start(&common::build_go("gcload", GO, &[]), &[]);
    let pid = target.pid().to_string();
    let sysfs = tempfile::tempdir().unwrap();
    let args = ["attach", "--pid", pid.as_str(), "--listen", "127.0.0.1:0"];

    let (code, message) =
        one_line_error(&mapscope(&args, &[("MAPSCOPE_SYSFS_ROOT", sysfs.path())]));
    assert_eq!(code, 8, "{message}");
    assert!(message.contains("uprobe support"), "{message}");

    let uprobe = sysfs.path().join("bus/event_source/devices/uprobe");
    std::fs::create_dir_all(&uprobe).unwrap();
    std::fs::write(uprobe.join("type"), "7\n").unwrap();
    let (code, message) =
        one_line_error(&mapscope(&args, &[("MAPSCOPE_SYSFS_ROOT", sysfs.path())]));
    assert_eq!(code, 8, "{message}");
    assert!(message.contains("BTF"), "{message}");
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn run_with_missing_command() {
    let output = mapscope(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--",
            "/nonexistent/service",
        ],
        &[],
    );
    let (code, message) = one_line_error(&output);
    assert_eq!(code, 10, "{message}");
    assert!(message.contains("/nonexistent/service"), "{message}");
}

/// A command mapscope cannot profile (no Go runtime, no C allocator) runs: it may be a
/// wrapper on its way to a program mapscope can. When it ends instead, mapscope says it never
/// ran such a program and how to reach one (exit 4).
#[test]
#[ignore = "needs root and gcc: run `cargo xtask test`"]
fn run_with_a_command_that_never_becomes_profilable() {
    let binary = common::build_fixture(
        "noalloc.c",
        "noalloc-exits",
        &["-O1", "-nostdlib", "-static", "-DEXIT_AT_ONCE"],
    );
    let output = mapscope(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--",
            binary.to_str().unwrap(),
        ],
        &[],
    );
    let (code, message) = one_line_error(&output);
    assert_eq!(code, 4, "{message}");
    assert!(
        message.contains("never ran a program mapscope can profile")
            && message.contains("exit status 5")
            && message.contains("exec"),
        "{message}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let output = mapscope(&["attach"], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--pid"), "{stderr}");
}

/// Where mapscope's stdout goes in the output-error tests.
enum Stdout {
    /// /dev/full: every write fails with ENOSPC.
    Full,
    /// A pipe whose reading end is already closed: every write fails with EPIPE.
    ClosedPipe,
}

fn with_stdout(args: &[&str], stdout: Stdout) -> Output {
    let mut command = Command::new(MAPSCOPE);
    command.args(args).env("NO_COLOR", "1");
    match stdout {
        Stdout::Full => {
            command.stdout(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            );
        }
        Stdout::ClosedPipe => {
            let (reader, writer) = std::io::pipe().unwrap();
            drop(reader);
            command.stdout(writer);
        }
    }
    command.stderr(std::process::Stdio::piped());
    command.output().expect("running mapscope")
}

/// A report that cannot be written (disk full, reader gone) is an error with its reason and
/// exit code 1, never a panic.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn inspect_output_errors_are_errors_not_panics() {
    let binary = common::build_go("gcload", GO, &[]);
    let binary = binary.to_str().unwrap();
    for (stdout, reason) in [
        (Stdout::Full, "No space left on device"),
        (Stdout::ClosedPipe, "Broken pipe"),
    ] {
        let (code, message) = one_line_error(&with_stdout(&["inspect", binary], stdout));
        assert_eq!(code, 1, "{message}");
        assert!(
            message.contains("writing the report to stdout") && message.contains(reason),
            "{message}"
        );
    }
}

/// `mapscope run -- CMD | CONSUMER` whose consumer has gone: the command dies of SIGPIPE (as it
/// would without mapscope) and `run` exits with that status, 128 + 13, having warned that its
/// summary could not be written; never a panic (exit 101).
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn run_keeps_the_commands_status_when_stdout_is_closed() {
    let binary = common::build_go("gcload", GO, &[]);
    let output = with_stdout(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--",
            binary.to_str().unwrap(),
        ],
        Stdout::ClosedPipe,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(128 + libc::SIGPIPE), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("the summary was not written"), "{stderr}");
}

/// Files that are not programs or configs, and would make a careless reader hang (a FIFO with
/// no writer) or fill the memory (/dev/zero): refused at once, one line, their own exit code.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn devices_fifos_and_folders_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    let started = std::time::Instant::now();
    for path in [
        "/dev/zero",
        fifo.to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ] {
        let (code, message) = one_line_error(&mapscope(&["inspect", path], &[]));
        assert_eq!(code, 4, "{path}: {message}");
        let (code, message) = one_line_error(&mapscope(
            &["daemon", "--select", "go", "--config", path],
            &[],
        ));
        assert_eq!(code, 12, "{path}: {message}");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// An output path that cannot be written is refused before attaching, not after the watch.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn output_paths_are_checked_before_attaching() {
    let target = GoTarget::start(&common::build_go("gcload", GO, &[]), &[]);
    let pid = target.pid().to_string();
    let started = std::time::Instant::now();
    for args in [
        &[
            "profile",
            "alloc",
            "--pid",
            &pid,
            "--duration",
            "60s",
            "-o",
            "/nonexistent/p.pb.gz",
        ][..],
        &[
            "heatmap",
            "--pid",
            &pid,
            "--duration",
            "60s",
            "-o",
            "/nonexistent/maps.svg",
        ][..],
    ] {
        let (code, message) = one_line_error(&mapscope(args, &[]));
        assert_eq!(code, 2, "{message}");
        assert!(message.contains("/nonexistent"), "{message}");
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}: the watch ran",
        started.elapsed()
    );
}

/// A target that allocated nothing while watched gets exit 11 and why, not an empty profile
/// and exit 0.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn profile_of_an_idle_target_says_nothing_was_sampled() {
    // gcload allocates nothing until told to "go".
    let target = GoTarget::start(&common::build_go("gcload", GO, &[]), &[]);
    let pid = target.pid().to_string();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("idle.pb.gz");
    let (code, message) = one_line_error(&mapscope(
        &[
            "profile",
            "alloc",
            "--pid",
            &pid,
            "--duration",
            "1s",
            "-o",
            output.to_str().unwrap(),
        ],
        &[],
    ));
    assert_eq!(code, 11, "{message}");
    assert!(
        message.contains("no allocation was sampled") && message.contains("--duration"),
        "{message}"
    );
    assert!(!output.exists());
}

/// A kernel thread or a zombie is named as such, not "does not exist"; a log filter that does
/// not parse is refused, not silently replaced.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn kernel_threads_zombies_and_log_filters_are_named() {
    // PID 2 is kthreadd.
    let (code, message) = one_line_error(&mapscope(&["inspect", "--pid", "2"], &[]));
    assert_eq!(code, 4, "{message}");
    assert!(message.contains("kernel thread"), "{message}");
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    while std::fs::read_to_string(format!("/proc/{pid}/status"))
        .is_ok_and(|status| !status.contains("State:\tZ"))
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (code, message) = one_line_error(&attach(pid));
    child.wait().unwrap();
    assert_eq!(code, 3, "{message}");
    assert!(message.contains("zombie"), "{message}");
    for (args, env) in [
        (&["--log", "foo=bar=baz", "inspect", "/bin/true"][..], None),
        (&["inspect", "/bin/true"][..], Some("foo=bar=baz")),
    ] {
        let mut command = Command::new(MAPSCOPE);
        command.args(args);
        if let Some(filter) = env {
            command.env("MAPSCOPE_LOG", filter);
        }
        let (code, message) = one_line_error(&command.output().unwrap());
        assert_eq!(code, 2, "{message}");
        assert!(message.contains("invalid log filter"), "{message}");
    }
}

/// `attach` serving beyond loopback says what that exposes (it takes no web config), where
/// before it said nothing.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn an_exposed_endpoint_is_said_to_be_exposed() {
    let target = GoTarget::start(&common::build_go("gcload", GO, &[]), &[]);
    let pid = target.pid().to_string();
    let exposed = common::Mapscope::start(&["attach", "--pid", &pid, "--listen", "0.0.0.0:0"]);
    let stderr = exposed.stderr.all();
    assert!(stderr.contains("beyond this machine"), "{stderr}");
    drop(exposed);
    let local = common::Mapscope::start(&["attach", "--pid", &pid, "--listen", "127.0.0.1:0"]);
    let stderr = local.stderr.all();
    assert!(!stderr.contains("beyond this machine"), "{stderr}");
}
