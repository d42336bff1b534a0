//! `mapscope attach --pid N`
use clap::Args;

use super::ExportArgs;
use crate::session;

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// PID of the process to profile: a Go program, or any program using a C allocator.
    #[arg(long)]
    pub pid: u32,

    #[command(flatten)]
    pub export: ExportArgs,
}

pub async fn run(args: AttachArgs) -> anyhow::Result<()> {
    session::preflight(true)?;
    let process = session::open_process(args.pid)?;
    let target = session::understand(process, &args.export.options())?;
    let listener = session::bind(args.export.listen)?;
    super::warn_if_exposed(args.export.listen);
    // One last snapshot round as the session ends, for the summary's biggest maps.
    let options = session::Options {
        final_map_snapshot: true,
        ..args.export.options()
    };
    let attached = session::attach(target, &options)?;

    let mut signals = super::StopSignals::new()?;
    let process = &attached.target.process;
    let (pid, exe, go_version) = (
        process.pid,
        process.exe_name.clone(),
        attached.target.go_version().to_owned(),
    );
    let exited = process.exit_watcher()?.exited();
    let stop = async {
        tokio::select! {
            signal = signals.next() => {
                tracing::info!("{}; detaching", super::StopSignals::describe(signal));
            }
            result = exited => match result {
                Ok(()) => tracing::info!("PID {pid} exited"),
                Err(error) => tracing::warn!("cannot watch PID {pid} ({error}); detaching"),
            },
        }
    };
    let endpoint = listener.local_addr().ok();
    let outcome = attached.profile(Some(listener), options, stop).await?;
    anyhow::Context::context(
        super::write_stdout(&super::summary_text(
            &outcome,
            (pid, &exe, &go_version),
            endpoint,
        )),
        "writing the summary to stdout",
    )?;
    Ok(())
}
