//! Running commands with their command line in every error.
use std::{ffi::OsStr, process::Command};

use anyhow::{Context as _, Result, bail};

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub fn run(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

#[derive(Debug, Default)]
pub struct TestTotals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

/// Run `cargo test`, passing its output through, and add up its `test result:` lines.
pub fn run_counting_tests(command: &mut Command) -> Result<TestTotals> {
    use std::io::{BufRead as _, BufReader};

    let shown = format!("{command:?}");
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    let mut totals = TestTotals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            if let Some(result) = line.strip_prefix("test result: ") {
                let count = |word: &str| {
                    result
                        .split([';', '.'])
                        .find_map(|part| part.trim().strip_suffix(word)?.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                };
                totals.passed += count(" passed");
                totals.failed += count(" failed");
                totals.ignored += count(" ignored");
            }
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {shown}"))?;
    if !status.success() {
        println!(
            "tests: {} passed, {} failed, {} skipped",
            totals.passed,
            totals.failed.max(1),
            totals.ignored
        );
        bail!("{shown} failed ({status})");
    }
    Ok(totals)
}

/// Standard output of a command that must succeed.
pub fn output(command: &mut Command) -> Result<String> {
    let shown = format!("{command:?}");
    let out = command
        .output()
        .with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// `program` run as root: directly when we are root, else through `sudo -E`.
pub fn as_root(program: impl AsRef<OsStr>) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut command = Command::new("sudo");
        command.arg("-E").arg(program);
        command
    }
}
