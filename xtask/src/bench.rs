//! `cargo xtask bench`: overhead of mapscope on its targets, as same-run ratios
//! (profiler/benches/overhead.rs does the measuring).
use anyhow::Result;

use crate::{setup, shell};

const BUCKET_MAP_GO: &str = "1.23.9";

pub fn run(only: Option<String>) -> Result<()> {
    setup::rust()?;
    // The native rows build a C program, and compare with bcc's memleak (or, where bcc cannot
    // compile for the kernel, the same probes in bpftrace).
    setup::debian_packages(&["gcc", "libc6-dev", "bpfcc-tools", "bpftrace"])?;
    // Go 1.23 for a bucket-map snapshot (1.24+ has swiss tables).
    let toolchains = setup::go_toolchains(&[setup::NEWEST_GO, BUCKET_MAP_GO])?;
    let mut command = shell::cargo();
    command.args(["bench", "-p", "profiler", "--bench", "overhead"]);
    if !shell::is_root() {
        command.args(["--config", r#"target."cfg(all())".runner="sudo -E""#]);
    }
    if let Some(go) = toolchains.get(setup::NEWEST_GO) {
        command.env("MAPSCOPE_BENCH_GO", go);
    }
    if let Some(go) = toolchains.get(BUCKET_MAP_GO) {
        command.env("MAPSCOPE_BENCH_GO_BUCKETS", go);
    }
    command.env("MAPSCOPE_TEST_GOCACHE", setup::cache_dir().join("gocache"));
    if let Some(only) = only {
        command.args(["--", &only]);
    }
    shell::run(&mut command)
}
