//! `mapscope inspect --pid N` / `mapscope inspect PATH`: what mapscope can see in a binary, for
//! a person deciding whether it can help (or for scripts, with `--json`).
use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

use clap::Args;
use serde::Serialize;

use crate::{
    gobin::{
        FunctionSource, GoBinary, GoBinaryError, Layout, VersionSource,
        abi::{self, NEWEST_KNOWN, OLDEST_SUPPORTED, Support},
    },
    native::{self, FoundAllocator},
    probes::stw::{self, ProbePoint},
    session,
};

#[derive(Debug, Args)]
// One of the two, named as such in the usage line (`<--pid <PID>|PATH>`).
#[command(group = clap::ArgGroup::new("what").required(true).args(["pid", "path"]))]
pub struct InspectArgs {
    /// Inspect the executable of this running process (read through /proc/PID/exe).
    #[arg(long)]
    pub pid: Option<u32>,

    /// Inspect this executable file.
    pub path: Option<PathBuf>,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub path: String,
    pub go_version: String,
    /// Where the version was read: `build_info`, or without build info
    /// `build_version_symbol` / `build_version_via_schedinit` (`runtime.buildVersion`).
    pub go_version_source: VersionSource,
    /// `supported`, `newer` (best effort with the newest known layout), `too_old` or
    /// `unsupported` (Go 1.20).
    pub go_support: &'static str,
    pub main_path: Option<String>,
    pub build_settings: BTreeMap<String, String>,
    pub stripped: bool,
    pub function_source: FunctionSource,
    #[serde(flatten)]
    pub layout: Layout,
    /// `agrees`, `no_dwarf`, `not_applicable` (unsupported release) or what differs.
    pub dwarf_check: String,
    pub probes: Vec<ProbeSite>,
    pub features: Vec<Feature>,
    /// Every runtime vital mapscope knows, and whether it is read from this binary's targets.
    pub vitals: Vec<VitalSupport>,
    /// The C allocators it runs with (a program with cgo has one; a pure Go one, none).
    pub native_allocators: Vec<FoundAllocator>,
}

/// What mapscope sees in a program without a Go runtime: its C allocators.
#[derive(Debug, Serialize)]
pub struct NativeReport {
    pub path: String,
    /// Always null: a Go report's version, so scripts tell the two apart by one field.
    pub go_version: Option<String>,
    pub native_allocators: Vec<FoundAllocator>,
    pub features: Vec<Feature>,
}

#[derive(Debug, Serialize)]
pub struct VitalSupport {
    /// The runtime/metrics name.
    pub metric: &'static str,
    /// The Prometheus series.
    pub series: String,
    pub available: bool,
    /// Why not, when not.
    pub detail: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ProbeSite {
    /// What the probe tells mapscope, for people (`program` is the eBPF program's name).
    pub purpose: &'static str,
    pub program: &'static str,
    pub function: &'static str,
    /// `entry` or `return`.
    pub site: &'static str,
    pub address: u64,
    pub file_offset: u64,
}

impl ProbeSite {
    fn new(point: &ProbePoint, site: &'static str) -> Self {
        Self {
            purpose: crate::probes::purpose(point.program),
            program: point.program,
            function: point.function,
            site,
            address: point.address,
            file_offset: point.file_offset,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub available: bool,
    pub detail: String,
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let (path, who, alive): (PathBuf, String, Box<dyn Fn() -> bool>) = match (args.pid, &args.path)
    {
        (Some(pid), _) => {
            let process = session::open_process(pid)?;
            let who = format!("PID {pid} ({})", process.exe_name);
            (
                process.exe_path(),
                who,
                Box::new(move || process.is_alive()),
            )
        }
        (None, Some(path)) => {
            let who = path.display().to_string();
            (path.clone(), who, Box::new(|| true))
        }
        (None, None) => unreachable!("clap requires --pid or PATH"),
    };
    // Read once, for the Go analysis and the allocator search both.
    let shown = path.display().to_string();
    let data =
        GoBinary::read(&path).map_err(|error| session::go_binary_error(error, &who, &alive))?;
    let allocators = match args.pid {
        Some(pid) => native::for_process(pid, Some(&data)),
        None => native::for_binary(&path, &data),
    };
    let text = match GoBinary::parse(data, &shown, abi::WANTED) {
        // Not Go: what mapscope sees of it is its allocators.
        Err(GoBinaryError::NotGo { .. }) => {
            let native_allocators =
                allocators.map_err(|error| session::neither_go_nor_native(&who, &error))?;
            let report = NativeReport {
                path: who,
                go_version: None,
                features: vec![native_feature(&native_allocators)],
                native_allocators,
            };
            if args.json {
                format!("{}\n", serde_json::to_string_pretty(&report)?)
            } else {
                let mut out = format!(
                    "{}\n  Go version      none: not a Go program\n",
                    report.path
                );
                render_allocators(&mut out, &report.native_allocators);
                render_features(&mut out, &report.features);
                out
            }
        }
        opened => {
            let binary = opened.map_err(|error| session::go_binary_error(error, &who, &alive))?;
            let mut report = build(&who, &binary);
            // A pure Go program has no C allocator: that is no error here.
            report.native_allocators = allocators.unwrap_or_default();
            report
                .features
                .push(native_feature(&report.native_allocators));
            if args.json {
                format!("{}\n", serde_json::to_string_pretty(&report)?)
            } else {
                render(&report)
            }
        }
    };
    anyhow::Context::context(super::write_stdout(&text), "writing the report to stdout")?;
    Ok(())
}

pub fn build(who: &str, binary: &GoBinary) -> Report {
    let support = abi::stw_abi(binary.version);
    let (go_support, row) = match support {
        Support::Known(row) => ("supported", Some(row)),
        Support::Newer(row) => ("newer", Some(row)),
        Support::TooOld => ("too_old", None),
        Support::Unsupported => ("unsupported", None),
    };
    let dwarf_check = match row.map(|row| binary.dwarf_disagreements(&row.dwarf)) {
        None => "not_applicable".to_owned(),
        Some(None) => "no_dwarf".to_owned(),
        Some(Some(found)) if found.is_empty() => "agrees".to_owned(),
        Some(Some(found)) => found.join("; "),
    };
    let mut probes = Vec::new();
    // What a default session attaches (no --stw-stopping).
    let pauses = match row.map(|row| stw::plan(binary, row, false)) {
        Some(Ok(points)) => {
            let entry_programs = [stw::STOP_ENTRY, stw::START_ENTRY];
            probes.extend(points.iter().map(|point| {
                ProbeSite::new(
                    point,
                    if entry_programs.contains(&point.program) {
                        "entry"
                    } else {
                        "return"
                    },
                )
            }));
            let detail = match support {
                Support::Newer(_) => format!(
                    "best effort: Go newer than 1.{} uses the 1.{} runtime layout",
                    NEWEST_KNOWN.1, NEWEST_KNOWN.1
                ),
                _ => {
                    let inside = stw::inside_pause(&points);
                    let count = match points.len() {
                        1 => "1 probe point".to_owned(),
                        many => format!("{many} probe points"),
                    };
                    if inside == 0 {
                        format!("{count}, none inside the pause")
                    } else {
                        format!(
                            "{count}, {inside} inside the pause (its startTheWorldWithSema \
                             keeps no copy of its argument to read at the return)"
                        )
                    }
                }
            };
            Feature {
                name: "gc_pause_distributions",
                available: true,
                detail,
            }
        }
        Some(Err(error)) => Feature {
            name: "gc_pause_distributions",
            available: false,
            detail: session::plan_error(who, error).message,
        },
        None => Feature {
            name: "gc_pause_distributions",
            available: false,
            detail: format!(
                "mapscope supports Go {}.{} and 1.21 through 1.{}, not {}",
                OLDEST_SUPPORTED.0,
                OLDEST_SUPPORTED.1,
                NEWEST_KNOWN.1,
                binary.build_info.go_version
            ),
        },
    };
    // Nothing is attached to a release mapscope does not support.
    let triggers = match row.map(|_| crate::probes::gc_trigger::plan(binary)) {
        None => Feature {
            name: "gc_cycle_triggers",
            available: false,
            detail: "this Go release is not supported".to_owned(),
        },
        Some(Ok(points)) => {
            probes.extend(points.iter().map(|point| ProbeSite::new(point, "entry")));
            Feature {
                name: "gc_cycle_triggers",
                available: true,
                detail: "heap, time or forced, counted as each cycle starts".to_owned(),
            }
        }
        Some(Err(error)) => Feature {
            name: "gc_cycle_triggers",
            available: false,
            detail: error.to_string(),
        },
    };
    let alloc_point = row.and_then(|_| crate::probes::alloc::plan(binary));
    if let Some(point) = alloc_point {
        probes.push(ProbeSite::new(&point, "entry"));
    }
    let map_row = row.and_then(|_| abi::map_abi(binary.version, abi::has_bucket_maps(binary)));
    let discovery = match map_row {
        None => Feature {
            name: "map_discovery",
            available: false,
            detail: "this Go release is not supported".to_owned(),
        },
        Some(map_row) => {
            let points = crate::probes::maps::plan_access(binary, map_row);
            probes.extend(points.iter().map(|point| ProbeSite::new(point, "window")));
            Feature {
                name: "map_discovery",
                available: !points.is_empty(),
                detail: format!(
                    "{} map operation functions, probed only during discovery windows",
                    points.len()
                ),
            }
        }
    };
    let maps = match map_row {
        None => Feature {
            name: "go_maps",
            available: false,
            detail: "this Go release is not supported".to_owned(),
        },
        Some(map_row) => {
            let (points, missing) = crate::probes::maps::plan(binary, map_row, false);
            probes.extend(points.iter().map(|point| ProbeSite::new(point, "entry")));
            let layout = match map_row.abi {
                abi::MapAbi::Buckets(_) => "bucket maps",
                abi::MapAbi::Swiss(_) => "swiss tables",
            };
            Feature {
                name: "go_maps",
                available: !points.is_empty(),
                detail: if missing.is_empty() {
                    format!("{layout}: {} probe points", points.len())
                } else {
                    format!(
                        "{layout}: {} probe points; not in this binary (never called): {}",
                        points.len(),
                        missing.join(", ")
                    )
                },
            }
        }
    };
    let (vitals_feature, vitals) = vitals_support(binary, row.is_some());
    Report {
        path: who.to_owned(),
        go_version: binary.build_info.go_version.clone(),
        go_version_source: binary.version_source,
        go_support,
        main_path: binary.build_info.main_path.clone(),
        build_settings: binary.build_info.settings.iter().cloned().collect(),
        stripped: binary.function_source == FunctionSource::Pclntab,
        function_source: binary.function_source,
        layout: binary.layout,
        dwarf_check,
        probes,
        features: vec![
            pauses,
            triggers,
            Feature {
                name: "allocation_sampling",
                available: alloc_point.is_some(),
                detail: match binary.function(abi::MEM_PROFILE_RATE) {
                    _ if row.is_none() => "this Go release is not supported".to_owned(),
                    _ if alloc_point.is_none() => "runtime.profilealloc not found".to_owned(),
                    Some(_) => "via runtime.profilealloc; MemProfileRate read from the target (if 0, counted by mapscope within --max-overhead)".to_owned(),
                    None => "via runtime.profilealloc; stripped, so MemProfileRate is assumed to be the default 512 KiB".to_owned(),
                },
            },
            maps,
            discovery,
            vitals_feature,
        ],
        vitals,
        native_allocators: Vec::new(),
    }
}

/// The `native_allocations` feature line.
fn native_feature(allocators: &[FoundAllocator]) -> Feature {
    let names: Vec<String> = allocators
        .iter()
        .map(|found| {
            format!(
                "{} in {}",
                found.allocator.kind.label(),
                found.object.display()
            )
        })
        .collect();
    Feature {
        name: "native_allocations",
        available: !names.is_empty(),
        detail: if names.is_empty() {
            "no C allocator (a Go program without cgo allocates only on the Go heap)".to_owned()
        } else {
            format!(
                "found {}: attach, run and the daemon count its calls \
                 (mapscope_native_alloc_bytes_total)",
                names.join(", ")
            )
        },
    }
}

/// Each allocator and its entry points, as the probe table lines up Go's.
fn render_allocators(out: &mut String, allocators: &[FoundAllocator]) {
    for found in allocators {
        let serves = if found.allocator.provides_malloc {
            "behind malloc".to_owned()
        } else {
            format!("its own {}* names", found.allocator.prefix)
        };
        let place = if found.in_executable {
            "statically linked in the executable"
        } else {
            "a library"
        };
        let _ = writeln!(
            out,
            "  native allocator {} ({serves}), {place}: {}",
            found.allocator.kind.label(),
            found.object.display()
        );
        let width = found
            .allocator
            .entry_points
            .iter()
            .map(|entry| entry.function.chars().count())
            .max()
            .unwrap_or(0);
        for entry in &found.allocator.entry_points {
            let role = match entry.role {
                native::Role::Allocates => "allocates",
                native::Role::Reallocates => "reallocates",
                native::Role::Frees => "frees",
            };
            let aliases = if entry.aliases.is_empty() {
                String::new()
            } else {
                format!("  (also {})", entry.aliases.join(", "))
            };
            let _ = writeln!(
                out,
                "    {:<width$}  {role:<11}  {:#x} (file offset {:#x}){aliases}",
                entry.function, entry.address, entry.file_offset
            );
        }
    }
}

fn render_features(out: &mut String, features: &[Feature]) {
    let _ = writeln!(out, "  features");
    for feature in features {
        let state = if feature.available {
            "available"
        } else {
            "unavailable"
        };
        let _ = writeln!(out, "    {:<24} {state}: {}", feature.name, feature.detail);
    }
}

/// The `runtime_vitals` feature, and each vital's line.
fn vitals_support(binary: &GoBinary, supported: bool) -> (Feature, Vec<VitalSupport>) {
    let plan = if supported {
        crate::gobin::vitals::plan(binary)
    } else {
        Err("this Go release is not supported".to_owned())
    };
    let vitals = crate::model::vitals::VITALS
        .iter()
        .map(|vital| {
            let detail = match &plan {
                Err(why) => Some(why.clone()),
                Ok(plan) => plan
                    .missing
                    .iter()
                    .find(|(missing, _)| missing.name == vital.name)
                    .map(|(_, why)| why.clone()),
            };
            VitalSupport {
                metric: vital.name,
                series: vital.prometheus_name(),
                available: detail.is_none(),
                detail,
            }
        })
        .collect::<Vec<_>>();
    let read = vitals.iter().filter(|vital| vital.available).count();
    let feature = Feature {
        name: "runtime_vitals",
        available: read > 0,
        detail: match &plan {
            Err(why) => why.clone(),
            Ok(_) => format!(
                "{read} of {} runtime/metrics values read from the target's memory ({})",
                vitals.len(),
                if binary.function_source == FunctionSource::Pclntab {
                    "globals found through the runtime's code"
                } else {
                    "globals found by symbol"
                }
            ),
        },
    };
    (feature, vitals)
}

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let yes_no =
        |flag: bool, yes: &str, no: &str| if flag { yes.to_owned() } else { no.to_owned() };
    let _ = writeln!(out, "{}", report.path);
    let _ = writeln!(
        out,
        "  Go version      {} ({})",
        report.go_version,
        report.go_support.replace('_', " ")
    );
    if report.go_version_source != VersionSource::BuildInfo {
        let _ = writeln!(
            out,
            "                  {}",
            report.go_version_source.describe()
        );
    }
    if let Some(main) = &report.main_path {
        let _ = writeln!(out, "  main package    {main}");
    }
    // The text view leaves out empty settings and the long DefaultGODEBUG list (--json has all).
    let settings: Vec<String> = report
        .build_settings
        .iter()
        .filter(|(key, value)| !value.is_empty() && key.as_str() != "DefaultGODEBUG")
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    if !settings.is_empty() {
        let _ = writeln!(out, "  build settings  {}", settings.join(" "));
    }
    let _ = writeln!(
        out,
        "  binary          {}, {}, {}, {}",
        yes_no(
            report.stripped,
            "stripped (functions from the Go pclntab)",
            "with symbol table"
        ),
        yes_no(report.layout.pie, "PIE", "not PIE"),
        yes_no(
            report.layout.static_link,
            "statically linked",
            "dynamically linked"
        ),
        yes_no(report.layout.dwarf, "DWARF", "no DWARF"),
    );
    let _ = writeln!(
        out,
        "  DWARF check     {}",
        report.dwarf_check.replace('_', " ")
    );
    if !report.probes.is_empty() {
        let _ = writeln!(out, "  probe points");
        // Columns as wide as their widest entry: function names run from 12 to 40 characters.
        let width = |column: fn(&ProbeSite) -> &str| {
            report
                .probes
                .iter()
                .map(|probe| column(probe).chars().count())
                .max()
                .unwrap_or(0)
        };
        let (purpose, function, site) = (
            width(|probe| probe.purpose),
            width(|probe| probe.function),
            width(|probe| probe.site),
        );
        for probe in &report.probes {
            let _ = writeln!(
                out,
                "    {:<purpose$}  {:<function$}  {:<site$}  {:#x} (file offset {:#x})",
                probe.purpose, probe.function, probe.site, probe.address, probe.file_offset
            );
        }
    }
    render_allocators(&mut out, &report.native_allocators);
    render_features(&mut out, &report.features);
    let missing: Vec<String> = report
        .vitals
        .iter()
        .filter(|vital| !vital.available)
        .map(|vital| {
            format!(
                "{}: {}",
                vital.metric,
                vital.detail.as_deref().unwrap_or_default()
            )
        })
        .collect();
    if !missing.is_empty() && missing.len() < report.vitals.len() {
        let _ = writeln!(out, "  vitals not read");
        for line in missing {
            let _ = writeln!(out, "    {line}");
        }
    }
    out
}
