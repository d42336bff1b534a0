//! Map heatmaps for a person: each tracked map's buckets (or swiss groups) in index order,
//! one cell per band of consecutive buckets, coloured by how full the band is, outlined by its
//! longest overflow chain; and the same data as JSON for scripts.
use std::fmt::Write as _;

use crate::{
    collect::maps::MapReport,
    model::maps::{Band, Distribution, MapLayout},
};

/// Cells per map at most: a 1M-entry bucket map has 262144 buckets; 4096 cells keep the image
/// readable and its size bounded (each cell then stands for 64 buckets).
pub const MAX_CELLS: usize = 4096;
const COLUMNS: usize = 64;
const CELL: usize = 10;
const MARGIN: usize = 10;
const TITLE: usize = 40;

/// The maps whose site contains `pattern` (all of them without one).
pub fn matching<'a>(reports: &'a [MapReport], pattern: Option<&str>) -> Vec<&'a MapReport> {
    reports
        .iter()
        .filter(|report| pattern.is_none_or(|pattern| report.site.contains(pattern)))
        .collect()
}

#[derive(serde::Serialize)]
struct MapJson<'a> {
    #[serde(flatten)]
    report: &'a MapReport,
    bucket_entries: Distribution,
    #[serde(skip_serializing_if = "Option::is_none")]
    overflow_chains: Option<Distribution>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tombstones: Option<Distribution>,
    bands: Vec<Band>,
}

/// The JSON form: per map its figures, distributions and the heatmap's bands.
pub fn to_json(reports: &[&MapReport]) -> serde_json::Result<String> {
    let maps: Vec<MapJson> = reports
        .iter()
        .map(|report| MapJson {
            report,
            bucket_entries: report.shape.entries_per_unit(),
            overflow_chains: report.shape.overflow_chains(),
            tombstones: report.shape.tombstones_per_group(),
            bands: report.shape.bands(MAX_CELLS),
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "maps": maps }))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Fill colour for a band's mean occupancy (0 = white, 8 or more = dark red).
fn fill(band: &Band) -> String {
    let mean = band.entries as f64 / band.units.max(1) as f64;
    let level = (mean / 8.0).clamp(0.0, 1.0);
    // White → yellow → red.
    let (red, green, blue) = if level < 0.5 {
        (255.0, 255.0, 255.0 * (1.0 - level * 2.0))
    } else {
        (
            255.0 - 80.0 * (level - 0.5) * 2.0,
            255.0 * (1.0 - (level - 0.5) * 2.0),
            0.0,
        )
    };
    format!("#{:02x}{:02x}{:02x}", red as u8, green as u8, blue as u8)
}

fn title(report: &MapReport) -> String {
    let shape = &report.shape;
    let structure = match shape.layout {
        MapLayout::Buckets => format!(
            "bucket map, 2^{} buckets{}",
            shape.log2_buckets.unwrap_or(0),
            shape.evacuation.map_or(String::new(), |growth| format!(
                ", growing ({} of {} old buckets evacuated)",
                growth.progress, growth.old_buckets
            ))
        ),
        MapLayout::Swiss => format!(
            "swiss map, {} tables, directory {}",
            shape.tables.len(),
            shape.directory_len.unwrap_or(0)
        ),
    };
    let type_info = report
        .type_info
        .as_ref()
        .map_or(String::new(), |info| format!(" — {}", info.describe()));
    format!(
        "{}{type_info} — {structure}; {} entries in {} slots ({:.0}% full), {} bytes; {} growths, {} overflow buckets; map {:#x}",
        report.site,
        shape.entries,
        shape.capacity_slots,
        100.0 * shape.entries as f64 / shape.capacity_slots.max(1) as f64,
        shape.bytes,
        report.growths,
        report.overflows,
        report.address,
    )
}

/// An SVG with one panel per map. Every cell is a `<rect class="cell">` carrying its band in
/// `data-*` attributes, so scripts and tests can read the image back.
pub fn to_svg(reports: &[&MapReport]) -> String {
    let width = 2 * MARGIN + COLUMNS * CELL;
    let panels: Vec<(Vec<Band>, usize)> = reports
        .iter()
        .map(|report| {
            let bands = report.shape.bands(MAX_CELLS);
            let rows = bands.len().div_ceil(COLUMNS).max(1);
            (bands, rows)
        })
        .collect();
    let height = MARGIN
        + panels
            .iter()
            .map(|(_, rows)| TITLE + rows * CELL + MARGIN)
            .sum::<usize>()
        + 30;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="monospace" font-size="10">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{width}" height="{height}" fill="white"/>"#
    );
    let mut y = MARGIN;
    for (report, (bands, rows)) in reports.iter().zip(&panels) {
        let shape = &report.shape;
        let per_cell = bands.first().map_or(1, |band| band.units);
        let unit = match shape.layout {
            MapLayout::Buckets => "bucket",
            MapLayout::Swiss => "group",
        };
        let _ = writeln!(
            svg,
            r#"<g class="map" data-address="{:#x}" data-entries="{}" data-cells="{}">"#,
            report.address,
            shape.entries,
            bands.len()
        );
        let _ = writeln!(
            svg,
            r#"<text x="{MARGIN}" y="{}" font-size="11" font-weight="bold">{}</text>"#,
            y + 12,
            escape(&title(report))
        );
        let _ = writeln!(
            svg,
            r#"<text x="{MARGIN}" y="{}">each cell: {per_cell} {unit}(s) in index order; colour: mean entries per {unit} (white 0, red 8+); black outline: an overflow chain; blue: old buckets not yet evacuated</text>"#,
            y + 28
        );
        let top = y + TITLE;
        for (index, band) in bands.iter().enumerate() {
            let x = MARGIN + (index % COLUMNS) * CELL;
            let cell_y = top + (index / COLUMNS) * CELL;
            let stroke = if band.old {
                r##" stroke="#1f5fbf" stroke-width="1.5""##
            } else if band.max_overflow > 0 {
                r#" stroke="black" stroke-width="1""#
            } else {
                r##" stroke="#dddddd" stroke-width="0.5""##
            };
            let _ = writeln!(
                svg,
                r#"<rect class="cell" x="{x}" y="{cell_y}" width="{CELL}" height="{CELL}" fill="{}"{stroke} data-first="{}" data-units="{}" data-entries="{}" data-max-overflow="{}" data-tombstones="{}"><title>{unit}s {}..{}: {} entries, longest chain {}, {} tombstones</title></rect>"#,
                fill(band),
                band.first,
                band.units,
                band.entries,
                band.max_overflow,
                band.tombstones,
                band.first,
                band.first + band.units - 1,
                band.entries,
                band.max_overflow,
                band.tombstones,
            );
        }
        let _ = writeln!(svg, "</g>");
        y = top + rows * CELL + MARGIN;
    }
    if reports.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{MARGIN}" y="{}">no map snapshots</text>"#,
            y + 12
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::maps::{MapShape, MapTypeInfo, SiteKind, Unit};

    fn report(units: usize) -> MapReport {
        let units: Vec<Unit> = (0..units)
            .map(|i| Unit {
                entries: (i % 9) as u16,
                overflow: u16::from(i % 50 == 0),
                ..Unit::default()
            })
            .collect();
        MapReport {
            address: 0xc000_1000,
            site: "main.build <x> (main.go:10)".into(),
            site_kind: SiteKind::Grew,
            map_type: 0x4000,
            type_info: Some(MapTypeInfo {
                name: Some("map[string]main.Item".into()),
                key_bytes: 16,
                elem_bytes: 40,
            }),
            hint: 0,
            growths: 3,
            overflows: 1,
            shape: MapShape {
                layout: MapLayout::Buckets,
                entries: units.iter().map(|unit| u64::from(unit.entries)).sum(),
                capacity_slots: 8 * units.len() as u64,
                bytes: 1000,
                units,
                log2_buckets: Some(10),
                evacuation: None,
                directory_len: None,
                tables: Vec::new(),
            },
            read_bytes: 0,
            read_micros: 0,
            taken_unix_ms: 0,
            operations_per_second: None,
        }
    }

    #[test]
    fn svg_has_one_cell_per_band_and_escapes_the_title() {
        let big = report(20_000);
        let small = report(100);
        let svg = to_svg(&[&big, &small]);
        let cells = svg.matches(r#"class="cell""#).count();
        assert_eq!(cells, big.shape.bands(MAX_CELLS).len() + 100);
        assert!(cells <= MAX_CELLS + 100 + 1);
        assert!(svg.contains("main.build &lt;x&gt;"));
        assert!(svg.contains("map[string]main.Item (16 B keys, 40 B values)"));
        assert!(!svg.contains("<x>"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn json_sums_match_the_shape() {
        let map = report(1000);
        let json: serde_json::Value = serde_json::from_str(&to_json(&[&map]).unwrap()).unwrap();
        let first = &json["maps"][0];
        assert_eq!(first["entries"], map.shape.entries);
        assert_eq!(first["type"], "map[string]main.Item");
        assert_eq!(
            (first["key_bytes"].as_u64(), first["elem_bytes"].as_u64()),
            (Some(16), Some(40))
        );
        let bands: u64 = first["bands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|band| band["entries"].as_u64().unwrap())
            .sum();
        assert_eq!(bands, map.shape.entries);
        let buckets: u64 = first["bucket_entries"]
            .as_object()
            .unwrap()
            .values()
            .map(|count| count.as_u64().unwrap())
            .sum();
        assert_eq!(buckets, 1000);
    }

    #[test]
    fn matching_filters_by_site_substring() {
        let map = report(1);
        let reports = vec![map];
        assert_eq!(matching(&reports, Some("main.build")).len(), 1);
        assert_eq!(matching(&reports, Some("nope")).len(), 0);
        assert_eq!(matching(&reports, None).len(), 1);
    }
}
