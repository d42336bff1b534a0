//! `mapscope run -- CMD ARGS...`
use std::ffi::OsString;

use anyhow::Context as _;
use clap::Args;

use super::ExportArgs;
use crate::{
    error::{Exit, UserError},
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
    // One last snapshot round as the session ends, for the summary's biggest maps.
    let options = session::Options {
        final_map_snapshot: true,
        ..args.export.options()
    };
    let mut stopped = launch::spawn_stopped(&args.command).map_err(|error| {
        UserError::new(
            Exit::Launch,
            format!("{error}: check the command and its path"),
        )
    })?;
    // On any error below, dropping `stopped` kills the child rather than letting it run
    // unobserved.
    let target = follow_to_go(&mut stopped, &args.command, &options)?;
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
    let endpoint = listener.local_addr().ok();
    let outcome = attached.profile(Some(listener), options, stop).await?;
    let status = child
        .wait()
        .context("collecting the command's exit status")?;
    // The command's status is what `run` exits with, even when the summary cannot be written
    // (`mapscope run -- cmd | head` closes stdout).
    let text = super::summary_text(&outcome, (pid, &exe, &go_version), endpoint);
    if let Err(error) = super::write_stdout(&text) {
        tracing::warn!("the summary was not written: {error}");
    }
    use std::os::unix::process::ExitStatusExt as _;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// The Go program the command is or becomes: a wrapper that is not Go (`env`, a shell script
/// ending in `exec app`, a version manager's shim) is let run to its next exec, as often as it
/// takes, so the probes still go in before the Go program's first instruction. A command that
/// exits without ever running Go is an error that says how to reach the Go program.
fn follow_to_go(
    stopped: &mut launch::StoppedChild,
    command: &[OsString],
    options: &session::Options,
) -> anyhow::Result<session::Target> {
    let mut wrappers: Vec<String> = Vec::new();
    loop {
        let process = session::open_process(stopped.pid)?;
        let name = process.exe_name.clone();
        match session::understand(process, options) {
            Ok(target) => {
                if !wrappers.is_empty() {
                    tracing::info!(
                        "PID {} runs {name} (Go), exec'd by {}",
                        stopped.pid,
                        wrappers.join(" → ")
                    );
                }
                return Ok(target);
            }
            Err(error) if error.exit == Exit::NotGo => {
                tracing::info!(
                    "PID {} runs {name}, not a Go program: letting it run until it execs one \
                     (a Go program it starts as a child is not followed: then mapscope waits \
                     until {name} ends; attach to the program with --pid instead)",
                    stopped.pid
                );
                wrappers.push(name);
            }
            Err(error) => return Err(error.into()),
        }
        match stopped
            .continue_to_next_exec()
            .context("following the command to its Go program")?
        {
            launch::NextExec::Exec => {}
            launch::NextExec::Exited(status) => {
                return Err(UserError::new(
                    Exit::NotGo,
                    format!(
                        "{:?} never ran a Go program (it ran {}, then ended with {status}): if it \
                         starts the Go program as a child, make it `exec` the program, or give \
                         mapscope the Go binary itself (`mapscope run -- /path/to/app`), or \
                         attach to the running program (`mapscope attach --pid N`)",
                        command.first().cloned().unwrap_or_default(),
                        wrappers.join(" → ")
                    ),
                )
                .into());
            }
        }
    }
}
