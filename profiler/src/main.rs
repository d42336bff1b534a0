//! mapscope: parse the command line, set up logging, hand over to the subcommand, and turn
//! errors into one line and an exit code.
use std::{
    io::{IsTerminal as _, Write as _},
    process::ExitCode,
};

use clap::Parser as _;
use mapscope::{
    cli::{self, Cli, Command, LogFormat},
    error::{Exit, UserError},
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // mapscope measures what a probe hit costs on a child of its own (probes::calibrate).
    if let Some(code) = mapscope::probes::calibrate::child_main_if_asked() {
        return ExitCode::from(code);
    }
    limit_malloc_arenas();
    let cli = Cli::parse();
    let filter = match EnvFilter::try_new(&cli.log) {
        Ok(filter) => filter,
        Err(error) => {
            let _ = writeln!(
                std::io::stderr(),
                "mapscope: invalid log filter {:?} (--log or MAPSCOPE_LOG): {error}; use a level \
                 such as info or debug, or per module: mapscope=debug,aya=warn",
                cli.log
            );
            return ExitCode::from(Exit::Usage as u8);
        }
    };
    // Logs go to stderr; stdout carries only the summary. Colour codes only where a person
    // reads them: not in files, pipes or journald, and never with NO_COLOR set (no-color.org).
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
            logs.with_ansi(colour).init();
        }
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return fail(&anyhow::Error::new(error).context("starting the async runtime"));
        }
    };
    // block_on runs the subcommand on this (main) thread, which `run` relies on for ptrace.
    let result = runtime.block_on(async {
        match cli.command {
            Command::Attach(args) => cli::attach::run(args).await.map(|()| 0),
            Command::Run(args) => cli::run::run(args).await,
            Command::Inspect(args) => cli::inspect::run(args).map(|()| 0),
            Command::Profile(args) => cli::profile::run(args).await.map(|()| 0),
            Command::Heatmap(args) => cli::heatmap::run(args).await.map(|()| 0),
            Command::Daemon(args) => cli::daemon::run(args).await.map(|()| 0),
            Command::Generate(args) => cli::generate::run(&args).map(|()| 0),
        }
    });
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(error) => fail(&error),
    }
}

/// glibc gives each thread that allocates its own arena (up to 8 per core), and memory freed
/// in one is kept there. mapscope's threads come and go (blocking work for attaches, detaches,
/// snapshots) and allocate little, so a daemon would keep tens of MB of other threads' freed
/// memory. Two arenas bound that; they are set before any thread starts.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes an allocator setting; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn fail(error: &anyhow::Error) -> ExitCode {
    match error.downcast_ref::<UserError>() {
        // A closed stderr leaves only the exit code to say it; never a panic.
        Some(user) => {
            let _ = writeln!(std::io::stderr(), "mapscope: {user}");
            ExitCode::from(user.exit as u8)
        }
        None => {
            let _ = writeln!(std::io::stderr(), "mapscope: error: {error:#}");
            ExitCode::from(Exit::Internal as u8)
        }
    }
}
