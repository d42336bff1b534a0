//! `cargo xtask bench`: overhead of mapscope on its targets, as same-run ratios
//! (profiler/benches/overhead.rs does the measuring).
use anyhow::Result;

use crate::{setup, shell};

pub fn run() -> Result<()> {
    setup::rust()?;
    let toolchains = setup::go_toolchains(&[setup::NEWEST_GO])?;
    let mut command = shell::cargo();
    command.args(["bench", "-p", "profiler", "--bench", "overhead"]);
    if !shell::is_root() {
        command.args(["--config", r#"target."cfg(all())".runner="sudo -E""#]);
    }
    if let Some(go) = toolchains.get(setup::NEWEST_GO) {
        command.env("MAPSCOPE_BENCH_GO", go);
    }
    command.env("MAPSCOPE_TEST_GOCACHE", setup::cache_dir().join("gocache"));
    shell::run(&mut command)
}
