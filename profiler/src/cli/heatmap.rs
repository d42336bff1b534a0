//! `mapscope heatmap --pid N [--site PATTERN] -o FILE.svg|FILE.json`: attach, learn the
//! target's maps from their growth, overflow and creation events for a while, snapshot the
//! biggest, and draw them.
use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use super::profile::parse_duration;
use crate::{
    collect::{discovery::DutyCycle, maps::MapOptions},
    error::{Exit, UserError},
    export::heatmap,
    session,
};

/// How long the one discovery window at attach probes every map operation: long enough to
/// catch a map used a few times a second, short enough to cost a busy target little.
const DISCOVERY_WINDOW: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
pub struct HeatmapArgs {
    /// PID of the Go process.
    #[arg(long)]
    pub pid: u32,

    /// Only maps whose site (`function (file:line)`) contains this text.
    #[arg(long, value_name = "PATTERN")]
    pub site: Option<String>,

    /// How long to watch for map events before taking the snapshots. mapscope learns of a map
    /// holding 128 entries or more when it grows or allocates an overflow bucket (or is made
    /// with a size hint of 1024 or more, with --map-creations): a map that does none of these
    /// while watched is not drawn.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,

    /// Maps drawn at most (the biggest).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub maps: usize,

    /// Also learn maps made with `make(map, n)`, n >= 1024 (see `attach --map-creations`:
    /// costly for programs that make many maps).
    #[arg(long)]
    pub map_creations: bool,

    /// Largest map read, in bytes of its memory.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20)]
    pub max_bytes: u64,

    /// Output file: `.svg` draws the heatmap, `.json` writes the same data for scripts.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

#[derive(Clone, Copy)]
enum Format {
    Svg,
    Json,
}

fn format_of(output: &std::path::Path) -> Result<Format, UserError> {
    match output.extension().and_then(|extension| extension.to_str()) {
        Some("svg") => Ok(Format::Svg),
        Some("json") => Ok(Format::Json),
        _ => Err(UserError::new(
            Exit::Usage,
            format!(
                "cannot tell the format of {}: name the output FILE.svg (heatmap image) or \
                 FILE.json (the data)",
                output.display()
            ),
        )),
    }
}

pub async fn run(args: HeatmapArgs) -> anyhow::Result<()> {
    let format = format_of(&args.output)?;
    session::preflight(true)?;
    let process = session::open_process(args.pid)?;
    let options = session::Options {
        alloc_top_sites: 20,
        alloc_exact: false,
        maps: Some(MapOptions {
            snapshot_maps: args.maps,
            // One round, at the end of the watch.
            snapshot_interval: args.duration + Duration::from_secs(3600),
            max_bytes_per_snapshot: args.max_bytes,
            max_bytes_per_second: u64::MAX,
            top_sites: usize::MAX,
            creations: args.map_creations,
            // One window at attach finds the maps in use; the watch's events add the rest.
            discovery: Some(DutyCycle {
                window: DISCOVERY_WINDOW,
                period: args.duration + Duration::from_secs(3600),
            }),
            site_filter: args.site.clone(),
        }),
        final_map_snapshot: true,
    };
    let target = session::understand(process, &options)?;
    if target.maps.is_none() {
        return Err(UserError::new(
            Exit::UnsupportedGo,
            format!(
                "PID {}: mapscope does not know the map layout of {}",
                args.pid, target.go_version
            ),
        )
        .into());
    }
    let attached = session::attach(target, &options)?;
    let exited = attached.target.process.exit_watcher()?.exited();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let gone = std::sync::atomic::AtomicBool::new(false);
    let stop = async {
        tokio::select! {
            () = tokio::time::sleep(args.duration) => {},
            _ = interrupt.recv() => tracing::info!("interrupted; drawing the maps seen so far"),
            _ = terminate.recv() => tracing::info!("terminated; drawing the maps seen so far"),
            _ = exited => gone.store(true, std::sync::atomic::Ordering::Relaxed),
        }
    };
    let outcome = attached.profile(None, options, stop).await?;
    let chosen = heatmap::matching(&outcome.maps, args.site.as_deref());
    if chosen.is_empty() && gone.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(UserError::new(
            Exit::NoSuchProcess,
            format!(
                "PID {} exited during the watch, before its maps could be read",
                args.pid
            ),
        )
        .into());
    }
    if chosen.is_empty() {
        let which = args.site.as_ref().map_or(String::new(), |pattern| {
            format!(" at a site matching {pattern:?}")
        });
        return Err(UserError::new(
            Exit::NothingSampled,
            format!(
                "PID {}: no map{which} was seen in {:?}: mapscope learns of maps when they grow, \
                 allocate overflow buckets or are made with a size hint of 1024 or more; watch \
                 longer with --duration, or run `mapscope attach` and read /debug/maps",
                args.pid, args.duration
            ),
        )
        .into());
    }
    let text = match format {
        Format::Svg => heatmap::to_svg(&chosen),
        Format::Json => heatmap::to_json(&chosen).context("encoding the maps")?,
    };
    std::fs::write(&args.output, text)
        .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!(
        "mapscope: wrote {} map(s) to {}",
        chosen.len(),
        args.output.display()
    );
    Ok(())
}
