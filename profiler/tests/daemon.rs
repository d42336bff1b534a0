//! `mapscope daemon`: targets found by selectors as they start and stop, labeled, counted,
//! removed when they exit, a reused PID never taken for the old target; its config file and
//! its endpoint's TLS and basic auth.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{GoTarget, MAPSCOPE, Mapscope, has_pid, renamed, wait_until};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Start a process with `start` until it gets `pid` (the kernel hands out the PID after
/// `ns_last_pid`; another process forking in between spoils a try, so try again). `start`
/// returns the process and its PID; one that got another PID is dropped (killed).
fn with_pid<T>(pid: u32, mut start: impl FnMut() -> Option<(T, u32)>) -> Option<T> {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
        let (process, got) = start()?;
        if got == pid {
            return Some(process);
        }
    }
    None
}

/// A selected test program with the PID `pid`.
fn start_with_pid(pid: u32, binary: &Path, args: &[&str]) -> Option<GoTarget> {
    with_pid(pid, || {
        let mut command = Command::new(binary);
        command.args(args);
        let target = GoTarget::spawn(command);
        let got = target.pid();
        Some((target, got))
    })
}

/// `start_with_pid` for a program that is not a test target.
fn start_plain_with_pid(pid: u32, program: &str, args: &[&str]) -> Option<common::ChildGuard> {
    with_pid(pid, || {
        let child = common::ChildGuard(Command::new(program).args(args).spawn().ok()?);
        let got = child.0.id();
        Some((child, got))
    })
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn daemon_follows_targets_as_they_come_and_go() {
    let tag = std::process::id();
    let gcload = renamed("gcload", common::NEWEST_GO, "dmn-gc");
    let maps = renamed("mapshapes", "1.23.9", "dmn-maps");
    let marker = format!("--marker-{tag}");
    // Already running when the daemon starts.
    let mut first = GoTarget::start(&gcload, &["-duration", "1s"]);
    let daemon = Mapscope::daemon_selecting(
        &gcload,
        &[
            "--select",
            &format!("cmdline={marker}"),
            "--label",
            "team=payments",
            "--map-snapshot-interval",
            "1s",
        ],
    );
    let metrics = wait_until(
        &daemon,
        "the running target attached",
        Duration::from_secs(10),
        |metrics| has_pid(metrics, first.pid()),
    );
    let series = metrics
        .0
        .iter()
        .find(|sample| {
            sample.name == "mapscope_gc_cycles_total"
                && sample.labels.get("pid") == Some(&first.pid().to_string())
        })
        .unwrap();
    assert_eq!(
        series.labels["exe"],
        gcload.file_name().unwrap().to_str().unwrap()
    );
    assert_eq!(
        series.labels["go_version"],
        format!("go{}", common::NEWEST_GO)
    );
    assert_eq!(series.labels["team"], "payments");
    assert_eq!(metrics.sum("mapscope_targets", |_| true), 1.0);
    first.run_load();
    let first_label = first.pid().to_string();
    let metrics = wait_until(
        &daemon,
        "GC cycles counted",
        Duration::from_secs(10),
        |metrics| {
            metrics.sum("mapscope_gc_cycles_total", |labels| {
                labels.get("pid") == Some(&first_label)
            }) > 0.0
        },
    );
    // The daemon's own accounting of what it costs the target.
    assert!(
        metrics.sum("mapscope_probe_hits_total", |labels| {
            labels.get("pid") == Some(&first_label)
                && labels.get("probe").map(String::as_str) == Some("stw")
        }) > 0.0
    );

    // Started later (selected by its command line): attached within 2 seconds.
    let started = Instant::now();
    let mut second = GoTarget::start(&maps, &[&marker]);
    wait_until(
        &daemon,
        "the new target attached",
        Duration::from_secs(10),
        |metrics| has_pid(metrics, second.pid()),
    );
    let took = started.elapsed();
    println!("a new target was attached {took:?} after it started");
    assert!(took < Duration::from_secs(2), "attached after {took:?}");
    assert_eq!(daemon.scrape().sum("mapscope_targets", |_| true), 2.0);
    let rss_start = rss_kib(daemon.guard.0.id());

    // Its maps are tracked; then it dies (SIGKILL) while being snapshotted every second.
    second.send("build");
    second
        .stdout
        .wait_for("the map report", Duration::from_secs(60), |line| {
            line.starts_with('{')
        });
    wait_until(
        &daemon,
        "map snapshots",
        Duration::from_secs(10),
        |metrics| {
            metrics.sum("mapscope_map_entries", |labels| {
                labels.get("pid") == Some(&second.pid().to_string())
            }) > 0.0
        },
    );
    let second_pid = second.pid();
    drop(second);
    // The first exits normally.
    let first_pid = first.pid();
    first.send("exit");
    let metrics = wait_until(
        &daemon,
        "exited targets detached",
        Duration::from_secs(10),
        |metrics| !has_pid(metrics, second_pid) && !has_pid(metrics, first_pid),
    );
    assert_eq!(metrics.sum("mapscope_targets", |_| true), 0.0);
    // Exits are logged as exits, never as an exec (the scan misses the process while its
    // probes are still coming off, which is no new program).
    let logged_gone = |log: &str, pid: u32| {
        log.lines()
            .any(|line| line.contains(&format!("PID {pid} (")) && line.contains("is gone"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = daemon.stderr.all();
    while !(logged_gone(&log, first_pid) && logged_gone(&log, second_pid)) {
        assert!(Instant::now() < deadline, "exits not logged:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
        log = daemon.stderr.all();
    }
    assert!(
        !log.contains("another program") && !log.contains("exec'd"),
        "an exit was logged as an exec:\n{log}"
    );
    // Reap it: a zombie still holds its PID.
    drop(first);

    // A PID reused: first by a process the selectors do not pick (never attached), then by a
    // different selected program (attached as what it is, not as the old target).
    let other = start_plain_with_pid(first_pid, "/bin/sleep", &["30"]);
    if let Some(other) = other {
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !has_pid(&daemon.scrape(), first_pid),
            "an unselected process was attached"
        );
        drop(other);
    } else {
        println!(
            "could not get PID {first_pid} again for the unselected process; skipped that step"
        );
    }
    let reused = start_with_pid(first_pid, &maps, &[&marker]).expect("a process with the old PID");
    let metrics = wait_until(
        &daemon,
        "the PID's new process attached",
        Duration::from_secs(10),
        |metrics| has_pid(metrics, first_pid),
    );
    for sample in metrics
        .0
        .iter()
        .filter(|sample| sample.labels.get("pid") == Some(&first_pid.to_string()))
    {
        assert_eq!(
            sample.labels["exe"],
            maps.file_name().unwrap().to_str().unwrap(),
            "{sample:?}"
        );
        assert_eq!(sample.labels["go_version"], "go1.23.9");
    }
    drop(reused);

    // Several more come and go: the daemon's memory stays bounded.
    for round in 0..6 {
        let mut target = GoTarget::start(&maps, &[&marker]);
        wait_until(
            &daemon,
            "a cycling target attached",
            Duration::from_secs(10),
            |metrics| has_pid(metrics, target.pid()),
        );
        target.send("build");
        target
            .stdout
            .wait_for("the map report", Duration::from_secs(60), |line| {
                line.starts_with('{')
            });
        let pid = target.pid();
        drop(target);
        wait_until(
            &daemon,
            "a cycling target detached",
            Duration::from_secs(10),
            |metrics| !has_pid(metrics, pid),
        );
        println!(
            "round {round}: daemon RSS {} KiB",
            rss_kib(daemon.guard.0.id())
        );
    }
    let rss_end = rss_kib(daemon.guard.0.id());
    println!(
        "daemon RSS: {rss_start} KiB with two targets, {rss_end} KiB after 6 more came and went"
    );
    assert!(
        rss_end < rss_start + 32 * 1024,
        "RSS grew from {rss_start} to {rss_end} KiB"
    );
    let metrics = daemon.scrape();
    assert!(metrics.sum("process_resident_memory_bytes", |_| true) > 0.0);
    let log = daemon.stderr.all();
    assert!(!log.contains("ERROR") && !log.contains("panicked"), "{log}");
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn max_targets_refuses_and_counts() {
    let gcload = renamed("gcload", common::NEWEST_GO, "dmn-cap");
    let one = GoTarget::start(&gcload, &[]);
    let two = GoTarget::start(&gcload, &[]);
    let daemon = Mapscope::daemon_selecting(&gcload, &["--max-targets", "1"]);
    let metrics = wait_until(
        &daemon,
        "one attached, one refused",
        Duration::from_secs(10),
        |metrics| {
            metrics.sum("mapscope_target_attach_failures_total", |labels| {
                labels.get("reason").map(String::as_str) == Some("max_targets")
            }) == 1.0
        },
    );
    assert_eq!(metrics.sum("mapscope_targets", |_| true), 1.0);
    assert!(has_pid(&metrics, one.pid()) != has_pid(&metrics, two.pid()));
    assert!(daemon.stderr.all().contains("--max-targets"));
}

/// `mapscope daemon` with `args`: its exit code and stderr (it must refuse before attaching).
fn refused(args: &[&str]) -> (i32, String) {
    let output = Command::new(MAPSCOPE)
        .arg("daemon")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn invalid_config_files_are_refused_with_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    for (text, line, reason) in [
        (
            "select = [\"go\"]\nlisten = \"127.0.0.1:0\"\ncolor = \"red\"\n",
            3,
            "color: unknown key",
        ),
        ("select = [\"go\", \"user=root\"]\n", 1, "unknown selector"),
        ("select = [\"go\"]\n\nlisten = \"localhost\"\n", 3, "listen"),
        (
            "select = [\"go\"]\nmax-targets = \"many\"\n",
            2,
            "max-targets",
        ),
        ("select = [\"go\"\n", 1, ""),
        // At the label's own line, not at [labels].
        (
            "select = [\"go\"]\n[labels]\npid = \"1\"\n",
            3,
            "already uses the label",
        ),
    ] {
        let path = dir.path().join("mapscope.toml");
        std::fs::write(&path, text).unwrap();
        let (code, stderr) = refused(&["--config", path.to_str().unwrap()]);
        assert_eq!(code, 12, "{text:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(&format!("{}:{line}:", path.display())) && stderr.contains(reason),
            "{text:?}: {stderr}"
        );
    }
    let (code, stderr) = refused(&["--config", "/nonexistent/mapscope.toml"]);
    assert_eq!(code, 12, "{stderr}");
    assert!(stderr.contains("/nonexistent/mapscope.toml"), "{stderr}");
    let (code, stderr) = refused(&["--listen", "127.0.0.1:0"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no process is selected"), "{stderr}");
    let web = dir.path().join("web.yml");
    std::fs::write(&web, "basic_auth_users:\n  alice: plaintext\n").unwrap();
    let (code, stderr) = refused(&["--select", "go", "--web-config-file", web.to_str().unwrap()]);
    assert_eq!(code, 12, "{stderr}");
    assert!(
        stderr.contains("web.yml") && stderr.contains("bcrypt"),
        "{stderr}"
    );
}

/// A daemon that selects nothing, serving with the web config `web`: it and its metrics URL
/// (`scheme` is what the web config makes it speak).
fn daemon_serving(web: &Path, scheme: &str) -> (common::ChildGuard, String) {
    let mut child = Command::new(MAPSCOPE)
        .args([
            "daemon",
            "--listen",
            "127.0.0.1:0",
            "--select",
            "exe=no-such-program-here",
        ])
        .args(["--web-config-file", web.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = common::Lines::new(child.stderr.take().unwrap());
    let guard = common::ChildGuard(child);
    let line = stderr.wait_for("the daemon to listen", Duration::from_secs(30), |line| {
        line.contains(&format!("metrics on {scheme}://"))
    });
    (
        guard,
        line.rsplit("metrics on ").next().unwrap().trim().to_owned(),
    )
}

#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn the_endpoint_takes_tls_and_basic_auth_from_a_web_config() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let hash = bcrypt::hash("scrape-me", 4).unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\nbasic_auth_users:\n  prometheus: '{hash}'\n"
        ),
    )
    .unwrap();
    let (_guard, url) = daemon_serving(&web, "https");
    let curl = |args: &[&str]| -> String {
        let output = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let cert = dir.path().join("cert.pem");
    let cert = cert.to_str().unwrap();
    assert_eq!(
        curl(&["--cacert", cert, "-u", "prometheus:scrape-me", &url]),
        "200"
    );
    assert_eq!(curl(&["--cacert", cert, &url]), "401");
    assert_eq!(
        curl(&["--cacert", cert, "-u", "prometheus:wrong", &url]),
        "401"
    );
    // Plain HTTP to the TLS port is answered in HTTP, 400 with the reason, not a TLS alert.
    assert_eq!(curl(&[&url.replace("https://", "http://")]), "400");
}

/// `--select go` reads build info: Go programs, stripped or not, are Go; others are not.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn the_go_selector_knows_go_programs() {
    use mapscope::gobin::buildinfo::is_go_file;
    let plain = common::build_go("gcload", common::NEWEST_GO, &[]);
    let stripped = common::build_go("gcload", "1.21.13", &["-ldflags=-s -w"]);
    let old = common::build_go("gcload", "1.19.8", &[]);
    for go in [&plain, &stripped, &old] {
        assert!(is_go_file(go), "{} is a Go program", go.display());
    }
    for other in [
        Path::new(MAPSCOPE),
        Path::new("/bin/sleep"),
        Path::new("/nonexistent"),
    ] {
        assert!(
            !is_go_file(other),
            "{} is not a Go program",
            other.display()
        );
    }
}

/// The endpoint holds up: an unknown user is answered as slowly as a known one with a wrong
/// password (no user names leak by timing); a flood of wrong passwords does not hold up a
/// scrape with known credentials; and a client that sends half a request is dropped.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn the_endpoint_holds_up_against_guessing_floods_and_slow_clients() {
    let dir = tempfile::tempdir().unwrap();
    // bcrypt's default cost, as `htpasswd -nBC 10` makes: tens of milliseconds a check.
    let hash = bcrypt::hash("scrape-me", 10).unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(&web, format!("basic_auth_users:\n  prometheus: '{hash}'\n")).unwrap();
    let (_guard, url) = daemon_serving(&web, "http");
    // The status and the seconds a request with these credentials took.
    let target = url.clone();
    let request = move |credentials: &str| -> (String, f64) {
        let output = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}"])
            .args(["--max-time", "30", "-u", credentials, &target])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (code, seconds) = text.split_once(' ').unwrap();
        (code.to_owned(), seconds.parse().unwrap())
    };
    // The median seconds of five refused logins as `user`, each with a password of its own
    // (answers are cached by credentials).
    let refused = |user: &str| {
        let mut times: Vec<f64> = (0..5)
            .map(|i| {
                let (code, seconds) = request(&format!("{user}:guess-{i}"));
                assert_eq!(code, "401");
                seconds
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    let unknown = refused("nobody");
    let wrong = refused("prometheus");
    println!("unknown user {unknown:.4} s, known user with a wrong password {wrong:.4} s");
    assert!(
        unknown > 0.5 * wrong,
        "an unknown user is answered in {unknown:.4} s, a known one in {wrong:.4} s: the user names leak"
    );

    // Known credentials, checked once and then cached, against a flood of wrong passwords.
    assert_eq!(request("prometheus:scrape-me").0, "200");
    let flood_started = std::time::Instant::now();
    let flood: Vec<_> = (0..20)
        .map(|i| {
            let request = request.clone();
            std::thread::spawn(move || request(&format!("prometheus:flood-{i}")))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let (code, scrape) = request("prometheus:scrape-me");
    assert_eq!(code, "200");
    for guess in flood {
        assert_eq!(guess.join().unwrap().0, "401");
    }
    let flood = flood_started.elapsed().as_secs_f64();
    println!(
        "a scrape during a flood of 20 wrong passwords: {scrape:.4} s; the flood {flood:.3} s"
    );
    assert!(
        scrape < flood / 4.0,
        "the scrape took {scrape:.3} s while the flood took {flood:.3} s: held up"
    );

    // Half a request: the server hangs up on its own.
    use std::io::{Read as _, Write as _};
    let address = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_owned();
    let mut slow = std::net::TcpStream::connect(&address).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(40)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a half-sent request held its connection for {:?}",
        started.elapsed()
    );
}

/// A target that re-execs its own program (same PID, a new image): the daemon detaches from
/// the old image, says so, and attaches to the new one; the target's GC cycles are counted
/// again after the exec, where before they froze.
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn an_exec_is_followed() {
    let gcload = renamed("gcload", common::NEWEST_GO, "dmn-exec");
    let mut target = GoTarget::start(&gcload, &["-duration", "500ms"]);
    let daemon = Mapscope::daemon_selecting(&gcload, &[]);
    let pid = target.pid();
    wait_until(
        &daemon,
        "the target attached",
        Duration::from_secs(10),
        |metrics| has_pid(metrics, pid),
    );
    target.send("exec");
    target
        .stdout
        .wait_for("the new image ready", Duration::from_secs(30), |line| {
            line == "ready"
        });
    daemon
        .stderr
        .wait_for("the exec noticed", Duration::from_secs(10), |line| {
            line.contains(&format!("PID {pid}")) && line.contains("exec'd")
        });
    daemon
        .stderr
        .wait_for("the new image attached", Duration::from_secs(20), |line| {
            line.contains(&format!("attached to PID {pid}"))
        });
    // The new image's GC cycles are counted: its probes are live.
    let report = target.run_load();
    let metrics = wait_until(
        &daemon,
        "the new image's GC cycles",
        Duration::from_secs(10),
        |metrics| {
            metrics.sum("mapscope_gc_cycles_total", |labels| {
                labels.get("pid") == Some(&pid.to_string())
            }) >= report.num_gc as f64
        },
    );
    assert_eq!(metrics.sum("mapscope_targets", |_| true), 1.0);
}

/// The first child of process `pid`, waiting up to 10 s for it.
fn first_child(pid: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(child) = children.split_whitespace().next() {
            return child.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "PID {pid} started no child");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Finding new targets costs what starts, not what runs: with 300 more processes running, the
/// idle daemon does not read them every half second (which it did, costing 0.3% of a core with
/// 73 processes here, and more on a node with thousands), yet a program started later is still
/// attached within 2 s (the kernel tells the daemon of each exec), and so is one started in a
/// PID namespace nested in the daemon's, which the daemon numbers differently (the kernel only
/// says that something exec'd elsewhere; the daemon then reads all of /proc).
#[test]
#[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
fn finding_new_programs_costs_what_starts_not_what_runs() {
    let gcload = renamed("gcload", common::NEWEST_GO, "dmn-watch");
    let sleepers: Vec<common::ChildGuard> = (0..300)
        .map(|_| common::ChildGuard(Command::new("sleep").arg("300").spawn().unwrap()))
        .collect();
    let daemon = Mapscope::daemon_selecting(&gcload, &[]);
    let pid = daemon.guard.0.id();
    let reads = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/io"))
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix("syscr:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap()
    };
    std::thread::sleep(Duration::from_secs(2));
    let before = reads();
    std::thread::sleep(Duration::from_secs(5));
    let idle_reads = reads() - before;
    println!(
        "{} processes; the idle daemon's reads over 5 s: {idle_reads}",
        sleepers.len()
    );
    assert!(
        idle_reads < sleepers.len() as u64,
        "the idle daemon made {idle_reads} reads in 5 s: it reads every process again and again"
    );

    let started = Instant::now();
    let target = GoTarget::start(&gcload, &["-duration", "500ms"]);
    wait_until(
        &daemon,
        "a program started later attached",
        Duration::from_secs(2),
        |metrics| has_pid(metrics, target.pid()),
    );
    println!("attached {:?} after the program started", started.elapsed());

    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--"])
        .arg(&gcload)
        .args(["-duration", "500ms"]);
    let nested = GoTarget::spawn(command);
    let inner = first_child(nested.pid());
    wait_until(
        &daemon,
        "a program started in a nested PID namespace attached",
        Duration::from_secs(2),
        |metrics| has_pid(metrics, inner),
    );
    assert!(
        !daemon.stderr.all().contains("cannot watch for programs"),
        "{}",
        daemon.stderr.all()
    );
    drop(sleepers);
}
