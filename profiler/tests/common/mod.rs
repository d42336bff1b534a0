//! Shared harness for the integration tests: Go toolchains (installed by `cargo xtask test`),
//! Go targets built from testdata/, processes cleaned up by guards, and Prometheus scraping.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness: a failure here is a test failure"
)]

use object::{Object as _, ObjectSection as _};
use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, OnceLock, mpsc},
    time::{Duration, Instant},
};

pub const MAPSCOPE: &str = env!("CARGO_BIN_EXE_mapscope");

/// One `#[test]` per Go release, each calling `$check(version)`; ignored by plain `cargo test`,
/// since it needs root and the toolchains `cargo xtask test` installs.
#[allow(unused_macros, reason = "only the per-release test files use it")]
macro_rules! per_go_release {
    ($check:path; $($name:ident => $version:literal),* $(,)?) => {$(
        #[test]
        #[ignore = "needs root and Go toolchains: run `cargo xtask test`"]
        fn $name() {
            $check($version);
        }
    )*};
}
#[allow(unused_imports, reason = "only the per-release test files use it")]
pub(crate) use per_go_release;

/// Every core kept busy while it lives: a production node's load, under which mapscope's
/// numbers must stay exact. One spinning thread per core, stopped on drop.
pub struct CpuHogs {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHogs {
    pub fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let threads = (0..cores)
            .map(|_| {
                let stop = std::sync::Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut spin = 0_u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        spin = std::hint::black_box(spin.wrapping_add(1));
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The Go release most single-version tests build with.
pub const NEWEST_GO: &str = "1.27.3";

/// Why the real-kernel tests are ignored by plain `cargo test`.
pub const NEEDS_SETUP: &str = "needs root and Go toolchains: run `cargo xtask test`";

/// The `go` binary for a release, from `MAPSCOPE_TEST_GO` (`1.27.3=/path/go,...`).
pub fn go(version: &str) -> PathBuf {
    let list = std::env::var("MAPSCOPE_TEST_GO")
        .unwrap_or_else(|_| panic!("MAPSCOPE_TEST_GO is not set: {NEEDS_SETUP}"));
    list.split(',')
        .filter_map(|entry| entry.split_once('='))
        .find(|(v, _)| *v == version)
        .map(|(_, path)| PathBuf::from(path))
        .unwrap_or_else(|| {
            panic!("Go {version} is not in MAPSCOPE_TEST_GO ({list}): {NEEDS_SETUP}")
        })
}

fn go_command(version: &str) -> Command {
    let mut command = Command::new(go(version));
    command
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod");
    if let Some(cache) = std::env::var_os("MAPSCOPE_TEST_GOCACHE") {
        command.env("GOCACHE", cache);
    }
    command
}

/// Build `testdata/go/<program>` with Go `version` and extra `go build` flags; cached per
/// (program, version, flags) for the life of the test binary.
pub fn build_go(program: &str, version: &str, flags: &[&str]) -> PathBuf {
    build_go_env(program, version, flags, &[])
}

/// `build_go` with environment settings for `go build` (e.g. `CGO_ENABLED=0`).
pub fn build_go_env(program: &str, version: &str, flags: &[&str], env: &[(&str, &str)]) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let settings: Vec<String> = env
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let key = format!(
        "{program}-{version}-{}-{}",
        flags.join(" "),
        settings.join(" ")
    );
    let mut built = BUILT.get_or_init(Mutex::default).lock().unwrap();
    if let Some(path) = built.get(&key) {
        return path.clone();
    }
    let words: Vec<&str> = flags
        .iter()
        .copied()
        .chain(settings.iter().map(String::as_str))
        .collect();
    let tag: String = words
        .join("_")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let output = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("go")
        .join(format!(
            "{program}-go{version}{}{tag}",
            if tag.is_empty() { "" } else { "-" }
        ));
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/go")
        .join(program);
    let out = go_command(version)
        .envs(env.iter().copied())
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&output)
        .arg(".")
        .current_dir(&source)
        .output()
        .expect("running go build");
    assert!(
        out.status.success(),
        "go build of {program} with Go {version} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    built.insert(key, output.clone());
    output
}

/// A test program: testdata/c/`source` built with gcc (g++ for a `.cpp` file;
/// testdata/rust/`source` with the rustc beside the cargo that builds the tests, for a `.rs`
/// file) and `flags` as `name` in the tests' folder (each name once per test binary).
pub fn build_fixture(source: &str, name: &str, flags: &[&str]) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Mutex::default).lock().unwrap();
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let folder = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c");
    std::fs::create_dir_all(&folder).unwrap();
    let output = folder.join(name);
    let extension = Path::new(source)
        .extension()
        .and_then(|extension| extension.to_str());
    let rustc = Path::new(env!("CARGO")).with_file_name("rustc");
    let (folder, compiler) = match extension {
        Some("cpp") => ("c", Path::new("g++")),
        Some("rs") if rustc.exists() => ("rust", rustc.as_path()),
        Some("rs") => ("rust", Path::new("rustc")),
        _ => ("c", Path::new("gcc")),
    };
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(folder)
        .join(source);
    let out = Command::new(compiler)
        .args(flags)
        .arg("-o")
        .arg(&output)
        .arg(&source)
        .output()
        .unwrap_or_else(|error| panic!("running {}: {error}", compiler.display()));
    assert!(
        out.status.success(),
        "{} {flags:?} {} failed:\n{}",
        compiler.display(),
        source.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    built.insert(name.to_owned(), output.clone());
    output
}

/// `mapscope inspect --json <args>`'s report; panics with mapscope's message if it fails.
pub fn inspect_json(args: &[&str]) -> serde_json::Value {
    let output = Command::new(MAPSCOPE)
        .args(["inspect", "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "inspect {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `go tool <args>` output, with the toolchain of `version`.
pub fn go_tool(version: &str, args: &[&str]) -> String {
    let out = go_command(version)
        .arg("tool")
        .args(args)
        .output()
        .expect("running go tool");
    assert!(
        out.status.success(),
        "go tool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Spawn, retrying "text file busy": a test that has just written an executable can find it
/// still open for writing in a child that another test thread forked at that moment and that has
/// not reached exec yet (the descriptor is close-on-exec, so the wait is short).
pub fn spawn_retrying_busy(command: &mut Command) -> Child {
    for _ in 0..50 {
        match command.spawn() {
            Err(error) if error.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            result => {
                return result.unwrap_or_else(|error| panic!("starting {command:?}: {error}"));
            }
        }
    }
    panic!("{command:?} stayed busy (ETXTBSY) for a second")
}

/// A function's address according to `go tool nm`.
pub fn nm_address(version: &str, binary: &Path, function: &str) -> u64 {
    nm_symbol(version, binary, function, &["T", "t"])
}

/// The address `go tool nm` gives a symbol of one of these kinds (`T` text, `R` read-only
/// data, ...; lower case for local symbols).
pub fn nm_symbol(version: &str, binary: &Path, symbol: &str, kinds: &[&str]) -> u64 {
    go_tool(version, &["nm", binary.to_str().unwrap()])
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (address, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
            (kinds.contains(&kind) && name == symbol)
                .then(|| u64::from_str_radix(address, 16).ok())?
        })
        .unwrap_or_else(|| panic!("go tool nm does not list {symbol} in {}", binary.display()))
}

/// A function's instructions according to `go tool objdump`: (address, instruction text).
/// Lines look like "  proc.go:1839\t\t0x4515be\t\tc3\t\t\tRET\t\t": location, address,
/// encoding, instruction, separated by runs of tabs.
pub fn objdump(version: &str, binary: &Path, function: &str) -> Vec<(u64, String)> {
    let pattern = format!("^{}$", function.replace('.', "\\."));
    let text = go_tool(
        version,
        &["objdump", "-s", &pattern, binary.to_str().unwrap()],
    );
    let instructions: Vec<(u64, String)> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line
                .split('\t')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .collect();
            let address = u64::from_str_radix(fields.get(1)?.trim_start_matches("0x"), 16).ok()?;
            Some((address, fields.get(3)?.to_string()))
        })
        .collect();
    assert!(
        !instructions.is_empty(),
        "go tool objdump shows nothing for {function}:\n{text}"
    );
    instructions
}

/// Addresses of the RET instructions in an objdump listing.
pub fn objdump_rets(instructions: &[(u64, String)]) -> Vec<u64> {
    instructions
        .iter()
        .filter(|(_, instruction)| instruction.split_whitespace().next() == Some("RET"))
        .map(|&(address, _)| address)
        .collect()
}

/// Kills the process when the test ends, passed or failed.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a child's stream, readable with a timeout.
pub struct Lines {
    receiver: mpsc::Receiver<String>,
    pub seen: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    pub fn new(stream: impl std::io::Read + Send + 'static) -> Self {
        let (sender, receiver) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                record.lock().unwrap().push(line.clone());
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { receiver, seen }
    }

    /// The next line that satisfies `wanted`, or a panic naming what was seen instead.
    pub fn wait_for(&self, what: &str, timeout: Duration, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(line) if wanted(&line) => return line,
                Ok(_) => continue,
                Err(_) => panic!(
                    "timed out after {timeout:?} waiting for {what}; lines so far:\n{}",
                    self.seen.lock().unwrap().join("\n")
                ),
            }
        }
    }

    pub fn all(&self) -> String {
        self.seen.lock().unwrap().join("\n")
    }
}

/// A running testdata/go/gcload (or compatible) process speaking the stdin/stdout protocol.
pub struct GoTarget {
    pub guard: ChildGuard,
    stdin: ChildStdin,
    pub stdout: Lines,
}

impl GoTarget {
    pub fn start(binary: &Path, args: &[&str]) -> Self {
        let mut command = Command::new(binary);
        command.args(args);
        Self::spawn(command)
    }

    /// Start a command that ends up exec'ing a gcload-compatible program (e.g. through
    /// `unshare`).
    pub fn spawn(mut command: Command) -> Self {
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = spawn_retrying_busy(&mut command);
        let stdin = child.stdin.take().unwrap();
        let stdout = Lines::new(child.stdout.take().unwrap());
        let target = Self {
            guard: ChildGuard(child),
            stdin,
            stdout,
        };
        target
            .stdout
            .wait_for("the target's \"ready\"", Duration::from_secs(30), |line| {
                line == "ready"
            });
        target
    }

    pub fn pid(&self) -> u32 {
        self.guard.0.id()
    }

    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("writing to the target");
        self.stdin.flush().unwrap();
    }

    /// Run one load window and return the runtime's own report of it.
    pub fn run_load(&mut self) -> Report {
        self.send("go");
        let line = self
            .stdout
            .wait_for("the target's report", Duration::from_secs(120), |line| {
                line.starts_with('{')
            });
        serde_json::from_str(&line).unwrap_or_else(|error| panic!("bad report {line}: {error}"))
    }
}

/// What testdata/go/gcload reports about a load window (runtime/metrics and MemStats deltas).
#[derive(Debug, serde::Deserialize)]
pub struct Report {
    pub go_version: String,
    pub num_gc: u64,
    pub pause_total_ns: u64,
    pub gc_cycles: u64,
    pub histograms: BTreeMap<String, RuntimeHistogram>,
    /// runtime/metrics counters' growth over the window (e.g. /gc/heap/allocs:bytes).
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    pub read_mem_stats_stw: u64,
}

#[derive(Debug, serde::Deserialize)]
pub struct RuntimeHistogram {
    pub count: u64,
    pub sum_lo: f64,
    pub sum_hi: f64,
    pub known: bool,
}

impl Report {
    /// A runtime/metrics histogram, if this Go release has it.
    pub fn histogram(&self, name: &str) -> Option<&RuntimeHistogram> {
        self.histograms
            .get(name)
            .filter(|histogram| histogram.known)
    }
}

/// A running `mapscope attach` or `mapscope run`.
pub struct Mapscope {
    pub guard: ChildGuard,
    pub address: SocketAddr,
    pub stdout: Lines,
    pub stderr: Lines,
    stdin: Option<ChildStdin>,
}

impl Mapscope {
    pub fn attach(pid: u32) -> Self {
        Self::attach_with(pid, &[])
    }

    /// `attach` with every probe attached all the time (`--max-overhead 0`): for tests that
    /// compare counts with the target's own over a short window, which a duty-cycled family's
    /// scaled estimates only approach over several cycles (tests/overhead.rs tests those).
    pub fn attach_unbudgeted(pid: u32) -> Self {
        Self::attach_with(pid, &["--max-overhead", "0"])
    }

    pub fn attach_with(pid: u32, options: &[&str]) -> Self {
        let pid = pid.to_string();
        let mut args = vec!["attach", "--pid", &pid, "--listen", "127.0.0.1:0"];
        args.extend_from_slice(options);
        Self::start(&args)
    }

    /// `mapscope daemon` on a free port, selecting the programs run from `program`'s file name
    /// (`exe=`), with `options`.
    pub fn daemon_selecting(program: &Path, options: &[&str]) -> Self {
        let select = format!("exe={}", program.file_name().unwrap().to_str().unwrap());
        let mut args = vec!["daemon", "--listen", "127.0.0.1:0", "--select", &select];
        args.extend_from_slice(options);
        Self::start(&args)
    }

    pub fn start(args: &[&str]) -> Self {
        let mut command = Command::new(MAPSCOPE);
        command.args(args);
        Self::spawn(command)
    }

    /// `start` for a command that runs mapscope (under `setpriv`, in a namespace).
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .env("MAPSCOPE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting mapscope");
        let stdin = child.stdin.take();
        let stdout = Lines::new(child.stdout.take().unwrap());
        let stderr = Lines::new(child.stderr.take().unwrap());
        let line = stderr.wait_for("mapscope to attach", Duration::from_secs(30), |line| {
            line.contains("metrics on http://")
        });
        let address = line
            .rsplit("http://")
            .next()
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .and_then(|address| address.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Self {
            guard: ChildGuard(child),
            address,
            stdout,
            stderr,
            stdin,
        }
    }

    /// mapscope's stdin, which `mapscope run` hands on to its command.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Close mapscope's stdin (and so, for `mapscope run`, its command's).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn scrape(&self) -> Metrics {
        Metrics(parse_prometheus(&http_get(self.address, "/metrics")))
    }

    /// Scrape until `ready` holds (events reach userspace asynchronously), or give up after
    /// `timeout` and return the last scrape for the assertions to judge.
    pub fn scrape_until(&self, timeout: Duration, ready: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + timeout;
        loop {
            let metrics = self.scrape();
            if ready(&metrics) || Instant::now() > deadline {
                // One more scrape after a pause: a count that keeps rising would be a bug too.
                std::thread::sleep(Duration::from_millis(300));
                return self.scrape();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sends a signal to our own, not yet reaped, child.
        unsafe { libc::kill(self.guard.0.id() as i32, signal) };
    }

    /// Wait for mapscope to exit by itself (within `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.guard.0.try_wait().unwrap() {
                // Let the reader threads reach the end of the streams.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mapscope did not exit within {timeout:?}; stderr:\n{}",
                self.stderr.all()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn http_get(address: SocketAddr, path: &str) -> String {
    String::from_utf8_lossy(&http_get_bytes(address, path)).into_owned()
}

/// The body of a successful GET, as bytes (pprof profiles are binary).
pub fn http_get_bytes(address: SocketAddr, path: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .expect("connecting to mapscope");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    // Bytes: some endpoints (pprof) answer in binary.
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&response[..split]);
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    response[split + 4..].to_vec()
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The Prometheus text format, as far as mapscope writes it.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                let labels = body
                    .split("\",")
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, value) = pair
                            .split_once("=\"")
                            .unwrap_or_else(|| panic!("bad label in {line:?}"));
                        (key.to_owned(), value.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

pub struct Metrics(pub Vec<Sample>);

impl Metrics {
    /// Sum of a metric over the series whose labels satisfy `filter`.
    pub fn sum(&self, name: &str, filter: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
        self.0
            .iter()
            .filter(|s| s.name == name && filter(&s.labels))
            .map(|s| s.value)
            .sum()
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.name == name)
    }

    pub fn gc_cycles(&self) -> u64 {
        self.sum("mapscope_gc_cycles_total", |_| true) as u64
    }
}

pub fn is_gc_reason(labels: &BTreeMap<String, String>) -> bool {
    labels
        .get("reason")
        .is_some_and(|reason| reason.starts_with("gc_"))
}

/// A copy of a Go binary whose build info says `new_version` (same length as the original).
pub fn with_build_info_version(binary: &Path, new_version: &str, name: &str) -> PathBuf {
    let mut data = std::fs::read(binary).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let section = file.section_by_name(".go.buildinfo").unwrap();
    let (start, size) = section.file_range().unwrap();
    let (start, end) = (start as usize, (start + size) as usize);
    let old = mapscope::gobin::GoBinary::open(binary, &[])
        .unwrap()
        .build_info
        .go_version;
    assert_eq!(old.len(), new_version.len());
    let at = data[start..end]
        .windows(old.len())
        .position(|window| window == old.as_bytes())
        .expect("version string in .go.buildinfo")
        + start;
    drop(file);
    data[at..at + old.len()].copy_from_slice(new_version.as_bytes());
    let output = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&output, data).unwrap();
    std::fs::set_permissions(&output, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    output
}

/// The prometheus binary from Debian's package (unpacked by `cargo xtask test`): a real,
/// stripped Go 1.19 program built with cgo, and a real Prometheus server.
pub fn debian_prometheus() -> PathBuf {
    PathBuf::from(
        std::env::var("MAPSCOPE_TEST_DEBIAN_GO_PROGRAM").unwrap_or_else(|_| {
            panic!("MAPSCOPE_TEST_DEBIAN_GO_PROGRAM is not set: {NEEDS_SETUP}")
        }),
    )
}

/// Debian's Prometheus server running `config` (YAML) on a free loopback port, killed when
/// dropped; returned once it is ready for web requests.
pub struct PrometheusServer {
    pub guard: ChildGuard,
    pub address: SocketAddr,
    pub log: Lines,
    /// Configuration and storage; removed after the process is gone (fields drop in order).
    _scratch: tempfile::TempDir,
}

impl PrometheusServer {
    pub fn start(config: &str) -> Self {
        let scratch = tempfile::tempdir().unwrap();
        let config_path = scratch.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut child = Command::new(debian_prometheus())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                scratch.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting prometheus");
        let log = Lines::new(child.stderr.take().unwrap());
        let server = Self {
            guard: ChildGuard(child),
            address,
            log,
            _scratch: scratch,
        };
        server
            .log
            .wait_for("prometheus to start", Duration::from_secs(60), |line| {
                line.contains("Server is ready to receive web requests")
            });
        server
    }
}

/// A copy of a test program built by Go `version`, named `PREFIX-PID` so that no other test
/// (or test run) uses the name and `exe=` selects only ours.
pub fn renamed(program: &str, version: &str, prefix: &str) -> PathBuf {
    let path =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}-{}", std::process::id()));
    std::fs::copy(build_go(program, version, &[]), &path).unwrap();
    path
}

/// Whether any series in `metrics` is labelled with target `pid`.
pub fn has_pid(metrics: &Metrics, pid: u32) -> bool {
    metrics
        .0
        .iter()
        .any(|sample| sample.labels.get("pid") == Some(&pid.to_string()))
}

/// Scrape `daemon` until `ready`, and return that scrape; panics with its log after `timeout`.
pub fn wait_until(
    daemon: &Mapscope,
    what: &str,
    timeout: Duration,
    ready: impl Fn(&Metrics) -> bool,
) -> Metrics {
    let deadline = Instant::now() + timeout;
    loop {
        let metrics = daemon.scrape();
        if ready(&metrics) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; daemon log:\n{}",
            daemon.stderr.all()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether this kernel allocates mapscope's on-demand hash tables as entries come (Linux 6.1
/// and later).
pub fn kernel_allocates_on_demand() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (6, 1)
}

/// mapscope's handles on attached probes: a perf event and a BPF link for each. The kernel
/// removes a uprobe when the last of them closes.
pub fn probe_handles(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|link| {
            let link = link.to_string_lossy();
            link == "anon_inode:[perf_event]" || link == "anon_inode:bpf_link"
        })
        .count()
}

/// `settled_probe_handles(pid)` once it is `wanted` (within `timeout`), or the last count
/// that held, for the caller to report.
pub fn settled_probe_handles_at(pid: u32, wanted: usize, timeout: Duration) -> usize {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let count = settled_probe_handles(pid);
        if count == wanted || std::time::Instant::now() >= deadline {
            return count;
        }
    }
}

/// `probe_handles(pid)` once it has held for a second (15 s at most): the count in passing
/// (a detach closes its handles one by one) would prove nothing.
pub fn settled_probe_handles(pid: u32) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut count = probe_handles(pid);
    let mut since = std::time::Instant::now();
    while since.elapsed() < Duration::from_secs(1) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let now = probe_handles(pid);
        if now != count {
            (count, since) = (now, std::time::Instant::now());
        }
    }
    count
}
