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
/// must come from the tracer thread, so nothing here may await before `resume`, except while
/// a native program is profiled (`profile_native_image`), whose tasks run on the workers.
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
    let mut before: Vec<String> = Vec::new();
    loop {
        let process = session::open_process(stopped.pid)?;
        let name = process.exe_name.clone();
        let target = match session::understand(process, &options) {
            Ok(target) => target,
            // Neither Go nor a C allocator (a static program of its own): let it run to its
            // next exec, unobserved.
            Err(error) if error.exit == Exit::NotGo => {
                tracing::info!(
                    "PID {} runs {name}: {error}; letting it run until it execs another program",
                    stopped.pid
                );
                before.push(name);
                match stopped
                    .continue_to_next_exec()
                    .context("following the command to its next program")?
                {
                    launch::NextExec::Exec => continue,
                    launch::NextExec::Exited(status) => {
                        return Err(never_profiled(&args.command, &before, &status.to_string()));
                    }
                }
            }
            Err(error) => return Err(error.into()),
        };
        if !before.is_empty() {
            tracing::info!(
                "PID {} runs {name}, exec'd by {}",
                stopped.pid,
                before.join(" → ")
            );
        }
        if target.go.is_some() {
            return profile_go_image(stopped, target, listener, options).await;
        }
        match profile_native_image(&mut stopped, target, &listener, &options).await? {
            Some(status) => return Ok(status),
            None => before.push(name),
        }
    }
}

/// The error for a command that ended without running a program mapscope can profile.
fn never_profiled(command: &[OsString], ran: &[String], status: &str) -> anyhow::Error {
    UserError::new(
        Exit::NotGo,
        format!(
            "{:?} never ran a program mapscope can profile (it ran {}, then ended with {status}): \
             mapscope profiles Go programs and programs that allocate through a C allocator; if \
             it starts such a program as a child, make it `exec` the program, or give mapscope \
             the program itself (`mapscope run -- /path/to/app`), or attach to the running \
             program (`mapscope attach --pid N`)",
            command.first().cloned().unwrap_or_default(),
            ran.join(" → ")
        ),
    )
    .into()
}

/// Profile a Go program (and its C allocator, with cgo) from its first instruction to its
/// exit, which it runs untraced; its exit status is `run`'s.
async fn profile_go_image(
    stopped: launch::StoppedChild,
    target: session::Target,
    listener: std::net::TcpListener,
    options: session::Options,
) -> anyhow::Result<i32> {
    let attached = session::attach(target, &options)?;
    let mut child = stopped.resume().context("resuming the command")?;
    let pid = child.id();
    let (exe, go_version) = (
        attached.target.process.exe_name.clone(),
        attached.target.go_version().to_owned(),
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

/// Profile a program without a Go runtime through its C allocator, from its first
/// instruction until it execs another program (a wrapper: `env`, a start script ending in
/// `exec app`, a version manager's shim), or ends. It stays traced meanwhile, so that it is
/// held at its next exec while its probes come off and the next program's go in. Returns its
/// exit status once it has ended (after the summary), `None` once it has exec'd.
async fn profile_native_image(
    stopped: &mut launch::StoppedChild,
    target: session::Target,
    listener: &std::net::TcpListener,
    options: &session::Options,
) -> anyhow::Result<Option<i32>> {
    let (pid, exe) = (target.process.pid, target.process.exe_name.clone());
    tracing::info!(
        "PID {pid} runs {exe}, not a Go program: counting its native allocations until it \
         ends or execs another program"
    );
    let attached = session::attach(target, options)?;
    let (stop, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let served = listener.try_clone().context("serving metrics")?;
    let endpoint = listener.local_addr().ok();
    let (watching, started) = std::sync::mpsc::channel::<()>();
    let session = tokio::spawn(attached.profile_then(
        Some(served),
        options.clone(),
        async {
            let _ = stopped_rx.await;
        },
        move || {
            let _ = watching.send(());
        },
    ));
    // The command goes on once the session watches (its time is the summary's); the probes
    // count from their attach either way.
    let _ = started.recv_timeout(std::time::Duration::from_secs(5));
    // Signals to mapscope go on to the command, as for a Go program; the tracer below hands
    // them on to it.
    let mut signals = super::StopSignals::new()?;
    let forward = tokio::spawn(async move {
        loop {
            let signal = signals.next().await;
            // SAFETY: our own traced child, not reaped until the tracer below sees it end.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    });
    // The tracer's wait, on this thread (ptrace requests must come from it); the session's
    // tasks run on the runtime's workers meanwhile.
    let next = stopped.continue_to_next_exec();
    forward.abort();
    let _ = stop.send(());
    let outcome = session.await.context("the profiling session")??;
    match next.context("following the command")? {
        launch::NextExec::Exec => {
            tracing::info!("PID {pid} ({exe}) exec'd another program");
            Ok(None)
        }
        launch::NextExec::Exited(status) => {
            let text = super::summary_text(&outcome, (pid, &exe, ""), endpoint);
            if let Err(error) = super::write_stdout(&text) {
                tracing::warn!("the summary was not written: {error}");
            }
            Ok(Some(status.code()))
        }
    }
}
