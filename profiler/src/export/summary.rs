//! The report printed when mapscope detaches: what it saw of everything while attached (GC
//! cycles and pauses, allocations and their top sites, the biggest maps, lost events) and
//! where to look next.
use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, time::Duration};

use crate::{
    collect::{maps::MapReport, native::NativeSummary},
    model::{alloc::AllocSummary, overhead::CostSummary, pause::PauseBook, vitals::RuntimeSummary},
};

/// Maps the summary lists.
const SUMMARY_MAPS: usize = 5;

/// What one target's session saw, for `render`.
pub struct Seen<'a> {
    pub pid: u32,
    pub exe: &'a str,
    pub go_version: &'a str,
    pub watched: Duration,
    pub book: &'a PauseBook,
    /// `None` when allocation sampling was off or unavailable.
    pub allocs: Option<&'a AllocSummary>,
    /// The last snapshot of each tracked map; empty when none was taken (or maps are off).
    pub maps: &'a [MapReport],
    /// Probe events lost, by reason; map snapshots dropped, by reason.
    pub dropped: &'a BTreeMap<String, u64>,
    /// `None` when maps were not tracked.
    pub snapshots_dropped: Option<&'a BTreeMap<&'static str, u64>>,
    /// Maps in mapscope's table at the end; `None` when maps were not tracked.
    pub maps_tracked: Option<usize>,
    /// Where the metrics were served, for the "next" hints.
    pub endpoint: Option<SocketAddr>,
    /// The runtime's vitals between attach and detach, when they could be read.
    pub runtime: Option<&'a RuntimeSummary>,
    /// What mapscope cost the target, when it could be measured.
    pub cost: Option<&'a CostSummary>,
    /// Each native allocator's totals; empty when none was probed.
    pub native: &'a [NativeSummary],
}

pub fn render(seen: &Seen<'_>) -> String {
    let mut out = String::new();
    let book = seen.book;
    let watched = duration(u64::try_from(seen.watched.as_nanos()).unwrap_or(u64::MAX));
    if seen.go_version.is_empty() {
        let _ = writeln!(
            out,
            "mapscope: pid {} ({}, no Go runtime), watched for {watched}",
            seen.pid, seen.exe,
        );
    } else {
        let _ = writeln!(
            out,
            "mapscope: pid {} ({}, {}), watched for {watched}: {} GC cycles completed, {} \
             stop-the-world pauses",
            seen.pid,
            seen.exe,
            seen.go_version,
            book.gc_cycles,
            book.pauses(),
        );
        if let Some(runtime) = seen.runtime {
            runtime_line(&mut out, runtime, book.gc_cycles, seen.watched);
        }
        pauses(&mut out, book);
        allocations(&mut out, seen);
    }
    native(&mut out, seen);
    match seen.maps_tracked {
        Some(0) => {
            let _ = writeln!(out, "  maps: none of 128 entries or more found");
        }
        Some(tracked) if seen.maps.is_empty() => {
            let _ = writeln!(out, "  maps: {tracked} tracked, none could be read");
        }
        _ => {}
    }
    maps(&mut out, seen.maps);
    if let Some(cost) = seen.cost {
        cost_line(&mut out, cost);
    }
    losses(&mut out, seen);
    next(&mut out, seen);
    out
}

fn pauses(out: &mut String, book: &PauseBook) {
    if book.by_reason.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  {:<26} {:>8} {:>10} {:>10} {:>10} {:>12}",
        "pauses by reason", "count", "p50", "p99", "max", "total"
    );
    for (reason, tally) in &book.by_reason {
        let histogram = &tally.total;
        if histogram.count() == 0 {
            continue;
        }
        let show = |ns: Option<u64>| ns.map_or_else(|| "-".to_owned(), duration);
        let _ = writeln!(
            out,
            "  {:<26} {:>8} {:>10} {:>10} {:>10} {:>12}",
            reason,
            histogram.count(),
            show(histogram.quantile(0.5)),
            show(histogram.quantile(0.99)),
            show(histogram.max()),
            duration(u64::try_from(tally.sum_ns).unwrap_or(u64::MAX)),
        );
    }
}

/// GC CPU share and heap goal as the runtime counts them, and the cycles per minute mapscope
/// saw.
fn runtime_line(out: &mut String, runtime: &RuntimeSummary, cycles: u64, watched: Duration) {
    let mut parts = Vec::new();
    if let Some(share) = runtime.gc_cpu_share {
        parts.push(format!("GC took {:.1}% of the CPU", share * 100.0));
    }
    let minutes = watched.as_secs_f64() / 60.0;
    if minutes > 0.0 {
        let rate = cycles as f64 / minutes;
        let decimals = if rate < 100.0 { 1 } else { 0 };
        parts.push(format!("{rate:.decimals$} GC cycles/min"));
    }
    if let Some(goal) = runtime.heap_goal {
        let mut settings = Vec::new();
        match runtime.gogc {
            Some(-1) => settings.push("GOGC off".to_owned()),
            Some(percent) => settings.push(format!("GOGC {percent}")),
            None => {}
        }
        match runtime.memory_limit {
            Some(i64::MAX) | None => {}
            Some(limit) => settings.push(format!("GOMEMLIMIT {}", bytes(limit as f64))),
        }
        let settings = if settings.is_empty() {
            String::new()
        } else {
            format!(" ({})", settings.join(", "))
        };
        parts.push(format!("heap goal {}{settings}", bytes(goal as f64)));
    }
    if !parts.is_empty() {
        let _ = writeln!(out, "  runtime: {}", parts.join("; "));
    }
}

/// What mapscope cost the target: its probes by family (with what a hit cost), and its own
/// work, as shares of the target's CPU time while attached.
fn cost_line(out: &mut String, cost: &CostSummary) {
    let ratios = &cost.ratios;
    let mut families: Vec<(usize, f64)> = ratios
        .probes
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, share)| *share > 0.0)
        .collect();
    families.sort_by(|a, b| b.1.total_cmp(&a.1));
    let listed: Vec<String> = families
        .iter()
        .map(|(family, share)| {
            format!(
                "{} {} at {} a hit",
                profiler_common::counters::HIT_NAMES[*family],
                percent(*share),
                duration(cost.hit_cost_ns[*family].round() as u64)
            )
        })
        .collect();
    let probes: f64 = ratios.probes.iter().sum();
    let _ = writeln!(
        out,
        "  cost to the target: {} of its CPU time: probes {}{}, mapscope's own work {}",
        percent(ratios.total()),
        percent(probes),
        if listed.is_empty() {
            String::new()
        } else {
            format!(" ({})", listed.join(", "))
        },
        percent(ratios.own)
    );
}

/// A share as a percentage, with more digits when small.
fn percent(share: f64) -> String {
    let percent = share * 100.0;
    if percent >= 10.0 {
        format!("{percent:.0}%")
    } else if percent >= 0.1 {
        format!("{percent:.2}%")
    } else {
        format!("{percent:.3}%")
    }
}

fn allocations(out: &mut String, seen: &Seen<'_>) {
    let Some(allocs) = seen.allocs else {
        let _ = writeln!(
            out,
            "  allocations: not sampled (the target's runtime.MemProfileRate is 0, or its runtime \
             cannot be sampled)"
        );
        return;
    };
    let seconds = seen.watched.as_secs_f64().max(1e-3);
    let _ = writeln!(
        out,
        "  allocations: {} in {} objects, {}/s ({})",
        bytes(allocs.bytes),
        count(allocs.objects),
        bytes(allocs.bytes / seconds),
        if allocs.counted {
            "counted by mapscope's probes within the budget and scaled up: the target's own \
             sampling is off"
        } else {
            "estimated from the runtime's samples, as pprof does"
        }
    );
    top_sites(out, &allocs.top_sites, allocs.bytes);
}

/// The `sites` allocating most, each with its share of `total` bytes.
fn top_sites(out: &mut String, sites: &[(crate::model::sites::Site, f64)], total: f64) {
    for (site, site_bytes) in sites {
        let share = if total > 0.0 {
            100.0 * site_bytes / total
        } else {
            0.0
        };
        let at = if site.location.is_empty() {
            String::new()
        } else {
            format!(" ({})", site.location)
        };
        let _ = writeln!(
            out,
            "    {share:>5.1}%  {:>10}  {}{at}",
            bytes(*site_bytes),
            site.function
        );
    }
}

/// Each native allocator's totals, and how much of the time they were counted.
fn native(out: &mut String, seen: &Seen<'_>) {
    let seconds = seen.watched.as_secs_f64().max(1e-3);
    for summary in seen.native {
        let estimate = &summary.tally.estimate;
        let how = if estimate.coverage >= 0.999 {
            "every call counted".to_owned()
        } else {
            format!(
                "counted in {} of the work and scaled up, within --max-overhead",
                percent(estimate.coverage)
            )
        };
        let _ = writeln!(
            out,
            "  native allocations ({}, {}): {} in {} objects, {}/s, {} frees ({how})",
            summary.allocator,
            summary.object.display(),
            bytes(estimate.bytes),
            count(estimate.objects),
            bytes(estimate.bytes / seconds),
            count(estimate.frees),
        );
        // The sites' shares are of what their samples stand for, which is what they sum to.
        let sampled: f64 = summary.top_sites.iter().map(|(_, bytes)| bytes).sum();
        top_sites(out, &summary.top_sites, estimate.bytes.max(sampled));
    }
}

fn maps(out: &mut String, reports: &[MapReport]) {
    if reports.is_empty() {
        return;
    }
    let mut biggest: Vec<&MapReport> = reports.iter().collect();
    biggest.sort_by_key(|map| std::cmp::Reverse(map.shape.bytes));
    let _ = writeln!(
        out,
        "  maps: {} tracked; the biggest (fill = entries / slots):",
        reports.len()
    );
    for map in biggest.into_iter().take(SUMMARY_MAPS) {
        let fill = if map.shape.capacity_slots > 0 {
            100.0 * map.shape.entries as f64 / map.shape.capacity_slots as f64
        } else {
            0.0
        };
        let kind = map
            .type_info
            .as_ref()
            .and_then(|info| info.name.as_ref())
            .map(|name| format!("{name} "))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    {kind}at {}: {} entries, fill {fill:.0}%, {}, {} growths, {} overflow buckets",
            map.site,
            map.shape.entries,
            bytes(map.shape.bytes as f64),
            map.growths,
            map.overflows,
        );
    }
}

fn losses(out: &mut String, seen: &Seen<'_>) {
    let snapshots: u64 = seen
        .snapshots_dropped
        .map_or(0, |dropped| dropped.values().sum());
    if seen.dropped.is_empty() && snapshots == 0 {
        let _ = writeln!(out, "  lost events: none");
        return;
    }
    if !seen.dropped.is_empty() {
        let list: Vec<String> = seen
            .dropped
            .iter()
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        let _ = writeln!(
            out,
            "  lost events: {} (the counts above are that much too low)",
            list.join(", ")
        );
    }
    if let Some(dropped) = seen.snapshots_dropped.filter(|_| snapshots > 0) {
        let list: Vec<String> = dropped
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        let _ = writeln!(
            out,
            "  map snapshots dropped: {} (see docs/METRICS.md)",
            list.join(", ")
        );
    }
}

fn next(out: &mut String, seen: &Seen<'_>) {
    let pid = seen.pid;
    let _ = writeln!(out, "  next:");
    if seen.go_version.is_empty() {
        if let Some(address) = seen.endpoint {
            let _ = writeln!(
                out,
                "    next time, while attached: the mapscope_native_* series at \
                 http://{address}/metrics"
            );
        }
        return;
    }
    if let Some(address) = seen.endpoint {
        let _ = writeln!(
            out,
            "    next time, while attached: go tool pprof http://{address}/debug/pprof/allocs, \
             the map heatmaps at http://{address}/maps"
        );
    }
    let _ = writeln!(
        out,
        "    on a running process: mapscope profile alloc --pid {pid} -o allocs.pb.gz; \
         mapscope heatmap --pid {pid}"
    );
}

/// `512B`, `3.5KiB`, `1.2GiB`: binary units, three significant figures.
pub fn bytes(value: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = value.max(0.0);
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{}{}", significant(value), UNITS[unit])
}

/// `950`, `12.3k`, `4.5M`: three significant figures.
fn count(value: f64) -> String {
    let (value, suffix) = if value >= 1e9 {
        (value / 1e9, "G")
    } else if value >= 1e6 {
        (value / 1e6, "M")
    } else if value >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value.max(0.0), "")
    };
    format!("{}{suffix}", significant(value))
}

/// Three significant figures, trailing zeros dropped.
fn significant(value: f64) -> String {
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// `850ns`, `42.1µs`, `3ms`, `1.5s`: three significant figures, trailing zeros dropped.
pub fn duration(ns: u64) -> String {
    let ns = ns as f64;
    let (value, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    format!("{}{unit}", significant(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pause::Pause;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(850), "850ns");
        assert_eq!(duration(42_100), "42.1µs");
        assert_eq!(duration(3_000_000), "3ms");
        assert_eq!(duration(1_500_000_000), "1.5s");
        assert_eq!(duration(75_776), "75.8µs");
        assert_eq!(duration(151_552), "152µs");
        assert_eq!(duration(1_032_000), "1.03ms");
    }

    #[test]
    fn bytes_and_counts_read_naturally() {
        assert_eq!(bytes(512.0), "512B");
        assert_eq!(bytes(3.5 * 1024.0), "3.5KiB");
        assert_eq!(bytes(1.25 * (1u64 << 30) as f64), "1.25GiB");
        assert_eq!(count(950.0), "950");
        assert_eq!(count(12_345.0), "12.3k");
        assert_eq!(count(4_500_000.0), "4.5M");
    }

    /// Everything seen while attached: pauses by reason, allocations and their top sites,
    /// the biggest maps, losses, and where to look next.
    #[test]
    fn summary_covers_everything_seen() {
        let mut book = PauseBook::default();
        for total_ns in [10_000, 20_000, 30_000] {
            book.record(&Pause {
                reason: "gc_mark_termination".into(),
                ends_gc_cycle: true,
                total_ns,
                stopping_ns: None,
                started_ns: 0,
                restarted_ns: total_ns,
            });
        }
        let site = |function: &str, location: &str| crate::model::sites::Site {
            function: function.into(),
            location: location.into(),
        };
        let allocs = AllocSummary {
            objects: 2_000_000.0,
            bytes: 1024.0 * 1024.0 * 1024.0,
            counted: false,
            top_sites: vec![
                (site("main.build", "main.go:10"), 768.0 * 1024.0 * 1024.0),
                (site("main.parse", "parse.go:7"), 256.0 * 1024.0 * 1024.0),
            ],
        };
        let dropped = BTreeMap::from([("ring_buffer_full".to_owned(), 3)]);
        let text = render(&Seen {
            pid: 7,
            exe: "svc",
            go_version: "go1.27.3",
            watched: Duration::from_secs(10),
            book: &book,
            allocs: Some(&allocs),
            maps: &[],
            dropped: &dropped,
            snapshots_dropped: None,
            maps_tracked: None,
            endpoint: Some("127.0.0.1:9871".parse().unwrap()),
            runtime: Some(&RuntimeSummary {
                gc_cpu_share: Some(0.0412),
                heap_goal: Some(5 << 20),
                gogc: Some(-1),
                memory_limit: Some(1 << 30),
            }),
            cost: Some(&CostSummary {
                ratios: crate::model::overhead::CostRatios {
                    probes: {
                        let mut probes = [0.0; profiler_common::counters::HIT_KINDS as usize];
                        probes[profiler_common::counters::HIT_STW as usize] = 0.0004;
                        probes[profiler_common::counters::HIT_ALLOC as usize] = 0.0031;
                        probes
                    },
                    own: 0.0007,
                },
                hit_cost_ns: [1400.0; profiler_common::counters::HIT_KINDS as usize],
            }),
            native: &[],
        });
        assert!(
            text.contains(
                "cost to the target: 0.42% of its CPU time: probes 0.35% (alloc 0.31% at 1.4µs a \
                 hit, stw 0.040% at 1.4µs a hit), mapscope's own work 0.070%"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "runtime: GC took 4.1% of the CPU; 18.0 GC cycles/min; heap goal 5MiB (GOGC off, \
                 GOMEMLIMIT 1GiB)"
            ),
            "{text}"
        );
        assert!(
            text.starts_with(
                "mapscope: pid 7 (svc, go1.27.3), watched for 10s: 3 GC cycles completed, 3 \
                 stop-the-world pauses"
            ),
            "{text}"
        );
        let row = text
            .lines()
            .find(|line| line.contains("gc_mark_termination"))
            .unwrap();
        assert!(
            row.contains(" 3 ") && row.contains("30µs") && row.contains("60µs"),
            "{row}"
        );
        assert!(
            text.contains("allocations: 1GiB in 2M objects, 102MiB/s"),
            "{text}"
        );
        assert!(
            text.contains(" 75.0%      768MiB  main.build (main.go:10)"),
            "{text}"
        );
        assert!(text.contains("lost events: ring_buffer_full 3"), "{text}");
        assert!(
            text.contains("go tool pprof http://127.0.0.1:9871/debug/pprof/allocs"),
            "{text}"
        );
        assert!(text.contains("mapscope heatmap --pid 7"), "{text}");
    }

    /// A program without a Go runtime: no GC lines, its allocators' totals and how they were
    /// counted.
    #[test]
    fn a_native_program_gets_its_allocators_and_no_gc() {
        use crate::collect::native::{NativeSummary, NativeTally};
        let mut tally = NativeTally::default();
        tally.estimate.objects = 18_000.0;
        tally.estimate.bytes = 9.0 * 1024.0 * 1024.0;
        tally.estimate.frees = 17_000.0;
        tally.estimate.coverage = 0.25;
        let native = [NativeSummary {
            allocator: "jemalloc",
            object: "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2".into(),
            tally,
            top_sites: vec![(
                crate::model::sites::Site {
                    function: "parse_request".into(),
                    location: "server.c:42".into(),
                },
                4.5 * 1024.0 * 1024.0,
            )],
        }];
        let text = render(&Seen {
            pid: 9,
            exe: "redis-server",
            go_version: "",
            watched: Duration::from_secs(3),
            book: &PauseBook::default(),
            allocs: None,
            maps: &[],
            dropped: &BTreeMap::new(),
            snapshots_dropped: None,
            maps_tracked: None,
            endpoint: Some("127.0.0.1:9871".parse().unwrap()),
            runtime: None,
            cost: None,
            native: &native,
        });
        assert!(
            text.starts_with("mapscope: pid 9 (redis-server, no Go runtime), watched for 3s\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "native allocations (jemalloc, /usr/lib/x86_64-linux-gnu/libjemalloc.so.2): 9MiB \
                 in 18k objects, 3MiB/s, 17k frees (counted in 25% of the work and scaled up, \
                 within --max-overhead)"
            ),
            "{text}"
        );
        assert!(
            text.contains("     50.0%      4.5MiB  parse_request (server.c:42)"),
            "{text}"
        );
        assert!(!text.contains("GC") && !text.contains("pprof"), "{text}");
    }
}
