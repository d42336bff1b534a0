//! `mapscope daemon`: profile every selected process, attaching as they start and detaching
//! as they exit, on one metrics endpoint (DaemonSet, sidecar, systemd).
use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::{ArgAction, Args, CommandFactory as _, Parser as _};

use super::{Cli, Command, ExportArgs};
use crate::{
    daemon::{
        self,
        config::{self, FlagKind},
        select::{Label, Selector},
    },
    error::{Exit, UserError},
    export::{metrics::Metrics, webconfig::WebConfig},
    session::{self, Exported},
};

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Config file (TOML): keys are this command's long flag names (`select = ["go"]`,
    /// `max-targets = 16`, a `[labels]` table for --label). Flags given here win over it; lists
    /// add up.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Which processes to profile, repeatable, any match selects: `exe=NAME` (executable base
    /// name), `exe=/PATH/GLOB*` (full path), `cmdline=REGEX`, `cgroup=PATH` (part of the cgroup
    /// path: a pod, a container id), `go` (every Go program); `+` joins parts that must all
    /// match (`go+cgroup=kubepods`: Go programs in pods).
    #[arg(long = "select", value_name = "SPEC")]
    pub select: Vec<Selector>,

    /// A label KEY=VALUE on every series of every target, repeatable (e.g. cluster=prod-eu).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<Label>,

    /// Targets at most; selected processes beyond it are refused, logged and counted
    /// (mapscope_target_attach_failures_total{reason="max_targets"}).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_targets: u64,

    /// TLS and basic auth for the endpoint, from a Prometheus exporter web config file
    /// (`tls_server_config: {cert_file, key_file}`, `basic_auth_users: {NAME: BCRYPT-HASH}`).
    #[arg(long, value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,

    #[command(flatten)]
    pub export: ExportArgs,
}

/// The daemon's flags as a config file may name them.
fn known_flags() -> Vec<(String, FlagKind)> {
    let command = Cli::command();
    let Some(daemon) = command.find_subcommand("daemon") else {
        return Vec::new();
    };
    daemon
        .get_arguments()
        .filter_map(|arg| {
            let name = arg.get_long()?;
            if matches!(name, "config" | "help" | "log") {
                return None;
            }
            let kind = match arg.get_action() {
                ArgAction::SetTrue => FlagKind::Switch,
                ArgAction::Append => FlagKind::List,
                _ => FlagKind::Value,
            };
            Some((name.to_owned(), kind))
        })
        .collect()
}

/// The command line with the config file's settings put in front of the daemon's own flags.
fn with_config(args: DaemonArgs) -> Result<DaemonArgs, UserError> {
    let Some(path) = args.config.clone() else {
        return Ok(args);
    };
    let text =
        crate::files::read_regular_text(&path, crate::files::MAX_CONFIG).map_err(|error| {
            UserError::new(
                Exit::Config,
                format!("cannot read the config file {}: {error}", path.display()),
            )
        })?;
    let argv: Vec<String> = std::env::args_os()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let at = argv
        .iter()
        .position(|arg| arg == "daemon")
        .unwrap_or(argv.len());
    let own = &argv[at.min(argv.len())..];
    let given = |flag: &str| {
        own.iter()
            .any(|arg| arg == &format!("--{flag}") || arg.starts_with(&format!("--{flag}=")))
    };
    let check = |extra: &[String]| -> Result<(), String> {
        let probe = ["mapscope", "daemon"]
            .into_iter()
            .map(str::to_owned)
            .chain(extra.iter().cloned());
        Cli::try_parse_from(probe).map(|_| ()).map_err(|error| {
            let text = error.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            first.trim_start_matches("error: ").to_owned()
        })
    };
    let file_args = config::to_args(&path, &text, &known_flags(), given, check)
        .map_err(|error| UserError::new(Exit::Config, format!("invalid config file {error}")))?;
    let full = argv[..at.min(argv.len())]
        .iter()
        .cloned()
        .chain(std::iter::once("daemon".to_owned()))
        .chain(file_args)
        .chain(own.iter().skip(1).cloned());
    match Cli::try_parse_from(full) {
        Ok(Cli {
            command: Command::Daemon(merged),
            ..
        }) => Ok(merged),
        Ok(_) => Ok(args),
        Err(error) => Err(UserError::new(
            Exit::Usage,
            error
                .render()
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        )),
    }
}

pub async fn run(args: DaemonArgs) -> anyhow::Result<()> {
    let args = with_config(args)?;
    if args.select.is_empty() {
        return Err(UserError::new(
            Exit::Usage,
            "no process is selected: add --select SPEC (e.g. --select go, --select exe=NAME) or \
             select = [...] in the config file",
        )
        .into());
    }
    let web = match &args.web_config_file {
        Some(path) => Some(Arc::new(WebConfig::load(path).map_err(|error| {
            UserError::new(Exit::Config, format!("invalid web config file {error}"))
        })?)),
        None => None,
    };
    session::preflight(true)?;
    // One value per label name: the config file's come first, the command line's later win.
    let mut labels: Vec<(String, String)> = Vec::new();
    for label in &args.label {
        labels.retain(|(name, _)| *name != label.name);
        labels.push((label.name.clone(), label.value.clone()));
    }
    let exported =
        Exported::new(Metrics::with_labels(labels).context("creating the metrics registry")?);
    let listener = session::bind(args.export.listen)?;
    let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let scheme = if web.as_ref().is_some_and(|web| web.tls.is_some()) {
        "https"
    } else {
        "http"
    };
    let (address, server) = session::serve(listener, &exported, web, async {
        let _ = shutdown_rx.await;
    })?;
    let settings = daemon::Settings {
        selectors: args.select.clone(),
        max_targets: usize::try_from(args.max_targets).unwrap_or(usize::MAX),
        options: args.export.options(),
    };
    tracing::info!(
        "daemon {}; metrics on {scheme}://{address}/metrics",
        daemon::describe(&settings)
    );
    let mut signals = super::StopSignals::new()?;
    let stop = async {
        let signal = signals.next().await;
        tracing::info!(
            "{}; detaching from every target",
            super::StopSignals::describe(signal)
        );
    };
    daemon::run(settings, exported, stop).await;
    let _ = shutdown.send(());
    match server.await {
        Ok(Ok(())) | Err(_) => {}
        Ok(Err(error)) => tracing::warn!("metrics server stopped with an error: {error}"),
    }
    Ok(())
}
