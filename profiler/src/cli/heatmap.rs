//! `mapscope heatmap --pid N [--site PATTERN] [-o FILE.svg|FILE.png|FILE.json]`: attach, find
//! the maps the target uses (one discovery window at attach) and those that grow or overflow
//! meanwhile, snapshot the biggest, and draw them: into a file, or in the terminal.
use std::{
    io::{IsTerminal as _, Write as _},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;

use crate::{
    collect::{
        discovery::DutyCycle,
        maps::{MapOptions, MapStats},
    },
    error::{Exit, UserError},
    export::heatmap,
    session,
};

/// How long the one discovery window at attach probes every map operation: long enough to
/// catch a map used a few times a second, short enough to cost a busy target little.
const DISCOVERY_WINDOW: Duration = Duration::from_millis(500);

/// Terminal width when stdout is not a terminal and `COLUMNS` is unset.
const DEFAULT_COLUMNS: usize = 100;

#[derive(Debug, Args)]
pub struct HeatmapArgs {
    /// PID of the Go process.
    #[arg(long)]
    pub pid: u32,

    /// Only maps whose site (`function (file:line)`) contains this text.
    #[arg(long, value_name = "PATTERN")]
    pub site: Option<String>,

    /// How long to watch before taking the snapshots. mapscope finds the maps of 128 entries
    /// or more that the target uses in one short window at attach (every map operation is
    /// probed for half a second, less on a very busy target), those held in package-level
    /// variables (binaries with DWARF), and any that grows or allocates an overflow bucket while
    /// watched (or is made with a size hint of 1024 or more, with --map-creations).
    #[arg(long, value_parser = crate::duration::parse, default_value = "10s")]
    pub duration: Duration,

    /// Maps drawn at most (the biggest).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub maps: usize,

    /// Also learn maps made with `make(map, n)`, n >= 1024 (see `attach --map-creations`:
    /// costly for programs that make many maps).
    #[arg(long)]
    pub map_creations: bool,

    /// Largest map read, in bytes of its memory.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_bytes: u64,

    /// Output file: `.svg` or `.png` draws the heatmaps, `.json` writes the same data for
    /// scripts. Without it, the maps are drawn in the terminal.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Clone, Copy)]
enum Format {
    Svg,
    Png,
    Json,
}

/// The format `output` asks for, and that it can be written: checked before attaching, so a
/// typo costs no watch.
fn check_output(output: &Path) -> Result<Format, UserError> {
    let format = match output.extension().and_then(|extension| extension.to_str()) {
        Some("svg") => Format::Svg,
        Some("png") => Format::Png,
        Some("json") => Format::Json,
        _ => {
            return Err(UserError::new(
                Exit::Usage,
                format!(
                    "cannot tell the format of {}: name the output FILE.svg or FILE.png (heatmap \
                     images) or FILE.json (the data)",
                    output.display()
                ),
            ));
        }
    };
    super::check_output_path(output)?;
    Ok(format)
}

/// Why no map is drawn, and what to try: none was seen, none at the site asked for, or every
/// snapshot was dropped (and why).
fn nothing_drawn(pid: u32, args: &HeatmapArgs, stats: &MapStats) -> String {
    if stats.tracked == 0 {
        return format!(
            "PID {pid}: no map of 128 entries or more was used, grown or made while watched \
             ({:?}): if the program does hold big maps, it did not touch them in the window at \
             attach; watch while it serves traffic, or longer with --duration (maps that grow \
             are found whenever they do)",
            args.duration
        );
    }
    if let Some(pattern) = &args.site
        && stats.matching == 0
    {
        let sites: Vec<&str> = stats
            .sites_seen
            .iter()
            .map(String::as_str)
            .take(5)
            .collect();
        return format!(
            "PID {pid}: {} map(s) seen, none at a site matching {pattern:?}; sites seen: {}; \
             pick one of them with --site, or drop --site",
            stats.tracked,
            sites.join("; ")
        );
    }
    let reasons: Vec<String> = stats
        .dropped
        .iter()
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect();
    let hint = if stats.dropped.contains_key("too_large") {
        "raise --max-bytes for too_large maps"
    } else if stats.dropped.contains_key("denied") {
        "run mapscope as root or with CAP_SYS_PTRACE to read the target's memory"
    } else {
        "maps written while read are dropped as changed: try again, or when the program is \
         quieter"
    };
    format!(
        "PID {pid}: {} map(s) seen, but every snapshot was dropped ({}): {hint}",
        stats.matching,
        if reasons.is_empty() {
            "none read".to_owned()
        } else {
            reasons.join(", ")
        }
    )
}

/// Columns to draw the terminal picture in: the terminal's, else `COLUMNS`, else 100.
fn terminal_columns() -> usize {
    terminal_size::terminal_size()
        .map(|(width, _)| usize::from(width.0))
        .or_else(|| std::env::var("COLUMNS").ok()?.parse().ok())
        .unwrap_or(DEFAULT_COLUMNS)
        .max(40)
}

pub async fn run(args: HeatmapArgs) -> anyhow::Result<()> {
    let format = args.output.as_deref().map(check_output).transpose()?;
    session::preflight(true)?;
    let process = session::open_process(args.pid)?;
    let options = session::Options {
        alloc_top_sites: 20,
        alloc_sites_half_life: std::time::Duration::from_secs(60),
        alloc_exact: false,
        native_inuse: false,
        // A short run the user asked for: every probe stays on.
        max_overhead: 0.0,
        stw_stopping: false,
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
    let mut target = session::understand(process, &options)?;
    // Go maps only: the native allocation probes would cost the target for nothing here.
    target.native = None;
    let Some(go) = target.go.as_ref() else {
        return Err(session::not_go(&target, "`mapscope heatmap` draws Go maps").into());
    };
    if go.maps.is_none() {
        return Err(UserError::new(
            Exit::UnsupportedGo,
            format!(
                "PID {}: mapscope does not know the map layout of {}",
                args.pid, go.go_version
            ),
        )
        .into());
    }
    let attached = session::attach(target, &options)?;
    let exited = attached.target.process.exit_watcher()?.exited();
    let mut signals = super::StopSignals::new()?;
    let gone = std::sync::atomic::AtomicBool::new(false);
    let stop = async {
        tokio::select! {
            () = tokio::time::sleep(args.duration) => {},
            signal = signals.next() => tracing::info!(
                "{}; drawing the maps seen so far",
                super::StopSignals::describe(signal)
            ),
            _ = exited => gone.store(true, std::sync::atomic::Ordering::Relaxed),
        }
    };
    let outcome = attached.profile(None, options, stop).await?;
    // The collector picked the maps at the site asked for; the view may still hold others
    // from before (a site filter only chooses what is read).
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
        let stats = outcome.map_stats.unwrap_or_default();
        return Err(
            UserError::new(Exit::NothingSampled, nothing_drawn(args.pid, &args, &stats)).into(),
        );
    }
    let (Some(output), Some(format)) = (&args.output, format) else {
        let stdout = std::io::stdout();
        let colour = stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let picture = heatmap::to_terminal(&chosen, terminal_columns(), colour);
        stdout
            .lock()
            .write_all(picture.as_bytes())
            .context("writing the heatmap to stdout")?;
        return Ok(());
    };
    let bytes = match format {
        Format::Svg => heatmap::to_svg(&chosen).into_bytes(),
        Format::Png => heatmap::to_png(&heatmap::to_svg(&chosen)).context("rendering the PNG")?,
        Format::Json => heatmap::to_json(&chosen)
            .context("encoding the maps")?
            .into_bytes(),
    };
    std::fs::write(output, bytes).with_context(|| format!("writing {}", output.display()))?;
    super::note(&format!(
        "mapscope: wrote {} map(s) to {}",
        chosen.len(),
        output.display()
    ));
    Ok(())
}
