//! `mapscope run -- CMD ARGS...`
use std::ffi::OsString;

use anyhow::Context as _;
use clap::Args;

use super::ExportArgs;
use crate::{
    error::{Exit, UserError},
    export::summary,
    process::launch,
    session,
};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub export: ExportArgs,

    /// The command to start, after `--`. It is stopped before its first instruction, the
    /// probes are attached, and then it runs; mapscope exits with its exit status.
    #[arg(trailing_var_arg = true, required = true, num_args = 1.., value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Runs on the thread that started the child until the child is resumed: ptrace requests
/// must come from the tracer thread, so nothing here may await before `resume`.
pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    session::preflight(false)?;
    let listener = session::bind(args.export.listen)?;
    super::warn_if_exposed(args.export.listen);
    let options = args.export.options();
    let stopped = launch::spawn_stopped(&args.command).map_err(|error| {
        UserError::new(
            Exit::Launch,
            format!("{error}: check the command and its path"),
        )
    })?;
    let process = session::open_process(stopped.pid)?;
    // On any error below, dropping `stopped` kills the child rather than letting it run
    // unobserved.
    let target = session::understand(process, &args.export.options())?;
    let attached = session::attach(target, &options)?;
    let mut child = stopped.resume().context("resuming the command")?;

    let pid = child.id();
    let (exe, go_version) = (
        attached.target.process.exe_name.clone(),
        attached.target.go_version.clone(),
    );
    let exited = attached.target.process.exit_watcher()?.exited();
    let mut signals = super::StopSignals::new()?;
    let stop = async {
        tokio::pin!(exited);
        loop {
            // A signal is passed on to the command; mapscope keeps profiling until it exits.
            let forward = tokio::select! {
                _ = &mut exited => break,
                signal = signals.next() => signal,
            };
            // SAFETY: sends a signal to our own child, which has not been reaped yet (we reap
            // it only after `exited` resolves), so the PID is still its own.
            unsafe { libc::kill(pid as libc::pid_t, forward) };
        }
    };
    let book = attached.profile(Some(listener), options, stop).await?.book;
    let status = child
        .wait()
        .context("collecting the command's exit status")?;
    // The command's status is what `run` exits with, even when the summary cannot be written
    // (`mapscope run -- cmd | head` closes stdout).
    if let Err(error) = super::write_stdout(&summary::render(&book, pid, &exe, &go_version)) {
        tracing::warn!("the summary was not written: {error}");
    }
    use std::os::unix::process::ExitStatusExt as _;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
