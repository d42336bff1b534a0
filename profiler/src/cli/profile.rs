//! `mapscope profile alloc|native --pid N --duration D -o FILE`: an allocation profile that
//! `go tool pprof` opens, taken from outside the process: of the Go heap, or of the C
//! allocator's.
use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::{
    error::{Exit, UserError},
    session,
};

#[derive(Debug, Args)]
pub struct ProfileArgs {
    #[command(subcommand)]
    pub kind: ProfileKind,
}

#[derive(Debug, Subcommand)]
pub enum ProfileKind {
    /// Sample allocations for a while and write them as a pprof profile (alloc_objects and
    /// alloc_space, like Go's own heap profile), from the runtime's own sampling, or, when the
    /// program turned that off, from mapscope's own, part of the time within 1% of its CPU.
    Alloc(AllocArgs),
    /// Sample the calls into the process's C allocator (malloc, calloc, realloc, C++'s new...)
    /// for a while and write them as a pprof profile (alloc_objects, alloc_space), one sample
    /// per 512 KiB on average with its stack; the probes are held within 1% of its CPU, and the
    /// profile scaled up. Any process: C, C++, Rust, or the C heap of a Go program with cgo.
    Native(AllocArgs),
}

#[derive(Debug, Args)]
pub struct AllocArgs {
    /// PID of the process (`alloc`: a Go program).
    #[arg(long)]
    pub pid: u32,

    /// How long to sample: `30s`, `500ms`, `5m`. Ctrl-C or the target's exit end it early.
    #[arg(long, value_parser = crate::duration::parse, default_value = "30s")]
    pub duration: Duration,

    /// Where to write the profile (gzipped protobuf; open with `go tool pprof FILE`).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

/// No allocation estimates came out of the session (its collector never ran).
fn nothing_sampled(pid: u32) -> UserError {
    UserError::new(
        Exit::NothingSampled,
        format!(
            "PID {pid}: no allocations were sampled: mapscope could not sample this target's \
             allocations (see the warnings above); no file written"
        ),
    )
}

pub async fn run(args: ProfileArgs) -> anyhow::Result<()> {
    let args = match args.kind {
        ProfileKind::Alloc(args) => args,
        ProfileKind::Native(args) => return native(args).await,
    };
    super::check_output_path(&args.output)?;
    session::preflight(true)?;
    let process = session::open_process(args.pid)?;
    let mut options = session::Options {
        alloc_top_sites: 20,
        alloc_sites_half_life: std::time::Duration::from_secs(60),
        alloc_exact: false,
        native_inuse: false,
        // A short run the user asked for: every probe stays on...
        max_overhead: 0.0,
        stw_stopping: false,
        maps: None,
        final_map_snapshot: false,
    };
    let mut target = session::understand(process, &options)?;
    // Go allocations only: native ones are counted by attach, run and the daemon.
    target.native = None;
    let Some(go) = target.go.as_ref() else {
        return Err(
            session::not_go(&target, "`mapscope profile` samples Go heap allocations").into(),
        );
    };
    if !go.sampling_allocations {
        return Err(UserError::new(
            Exit::NothingSampled,
            format!(
                "PID {}: this Go runtime has no runtime.profilealloc to sample allocations at",
                args.pid
            ),
        )
        .into());
    }
    // ...but where the runtime samples nothing, mapscope counts allocations with a probe on
    // each, which only a budget keeps from costing the target many times its CPU.
    let rate = go
        .mem_profile_rate
        .and_then(|address| crate::process::memory::read_i64(target.process.pid, address).ok());
    if rate == Some(0) {
        options.max_overhead = super::DEFAULT_MAX_OVERHEAD;
    }
    let attached = session::attach(target, &options)?;
    let exited = attached.target.process.exit_watcher()?.exited();
    let outcome = attached
        .profile(None, options, until_done(args.duration, args.pid, exited))
        .await?;
    let profile = outcome.allocs.ok_or_else(|| nothing_sampled(args.pid))?;
    if profile.samples.is_empty() {
        // An empty profile opens in pprof as "no samples", which reads like a failure of the
        // tool; the reason is the target's, and so is the fix.
        return Err(UserError::new(
            Exit::NothingSampled,
            format!(
                "PID {}: no allocation was sampled while mapscope watched (the runtime samples \
                 about one allocation per {} allocated): it allocated little or nothing; profile \
                 it for longer (--duration) or while it serves load; no file written",
                args.pid,
                rate.filter(|&rate| rate > 0)
                    .map_or_else(|| "512 KiB".to_owned(), |rate| format!("{rate} bytes"))
            ),
        )
        .into());
    }
    write_profile(&profile, &args.output, "allocation")
}

/// Write `profile` to `output`, and say so.
fn write_profile(
    profile: &crate::export::pprof::Profile,
    output: &std::path::Path,
    what: &str,
) -> anyhow::Result<()> {
    let bytes = profile.encode().context("encoding the profile")?;
    std::fs::write(output, bytes).with_context(|| format!("writing {}", output.display()))?;
    super::note(&format!(
        "mapscope: wrote {} {what} sample stacks to {}; open it with `go tool pprof {}`",
        profile.samples.len(),
        output.display(),
        output.display()
    ));
    Ok(())
}

/// The until-when of a profile: its duration, a signal, or the target's exit.
async fn until_done(duration: Duration, pid: u32, exited: impl std::future::Future) {
    let mut signals = match super::StopSignals::new() {
        Ok(signals) => signals,
        Err(error) => {
            tracing::warn!("signals will not stop the profile early: {error}");
            tokio::time::sleep(duration).await;
            return;
        }
    };
    tokio::select! {
        () = tokio::time::sleep(duration) => {},
        signal = signals.next() => tracing::info!(
            "{}; writing what was sampled so far",
            super::StopSignals::describe(signal)
        ),
        _ = exited => tracing::info!("PID {pid} exited; writing what was sampled"),
    }
}

/// `mapscope profile native`: the process's C allocator's probes only (a Go program's own are
/// not needed), held within the default budget: every call is a probe hit.
async fn native(args: AllocArgs) -> anyhow::Result<()> {
    super::check_output_path(&args.output)?;
    session::preflight(true)?;
    let process = session::open_process(args.pid)?;
    let options = session::Options {
        alloc_top_sites: 20,
        alloc_sites_half_life: Duration::from_secs(60),
        alloc_exact: false,
        native_inuse: false,
        max_overhead: super::DEFAULT_MAX_OVERHEAD,
        stw_stopping: false,
        maps: None,
        final_map_snapshot: false,
    };
    let mut target = session::understand(process, &options)?;
    if target.native.is_none() {
        return Err(UserError::new(
            Exit::NotGo,
            format!(
                "PID {} ({}): no C allocator found (a Go program without cgo allocates only on \
                 the Go heap: use `mapscope profile alloc`)",
                args.pid, target.process.exe_name
            ),
        )
        .into());
    }
    target.go = None;
    let attached = session::attach(target, &options)?;
    let exited = attached.target.process.exit_watcher()?.exited();
    let outcome = attached
        .profile(None, options, until_done(args.duration, args.pid, exited))
        .await?;
    let profile = match outcome.native_profile {
        Some(profile) if !profile.samples.is_empty() => profile,
        _ => {
            return Err(UserError::new(
                Exit::NothingSampled,
                format!(
                    "PID {}: no native allocation was sampled while mapscope watched (one per 512 \
                     KiB allocated on average): it allocated little or nothing through its C \
                     allocator; profile it for longer (--duration) or while it serves load; no \
                     file written",
                    args.pid
                ),
            )
            .into());
        }
    };
    write_profile(&profile, &args.output, "native allocation")
}
