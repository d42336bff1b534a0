//! `mapscope attach --pid N`
use clap::Args;

use super::ExportArgs;
use crate::{export::summary, session};

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// PID of the Go process to profile.
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
    let options = args.export.options();
    let attached = session::attach(target, &options)?;

    let mut signals = super::StopSignals::new()?;
    let process = &attached.target.process;
    let (pid, exe, go_version) = (
        process.pid,
        process.exe_name.clone(),
        attached.target.go_version.clone(),
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
    let book = attached.profile(Some(listener), options, stop).await?.book;
    anyhow::Context::context(
        super::write_stdout(&summary::render(&book, pid, &exe, &go_version)),
        "writing the summary to stdout",
    )?;
    Ok(())
}
