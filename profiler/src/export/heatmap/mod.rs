//! Map heatmaps for a person: each tracked map's buckets (or swiss groups) in memory order,
//! one cell per band of consecutive units, coloured by how full the band is; beside them the
//! observed spread of entries against a random hash's, the verdict and what to do. As SVG
//! ([`to_svg`]), PNG ([`to_png`]), a web page ([`to_html`]), coloured blocks for a terminal
//! ([`to_terminal`]), and JSON for scripts ([`to_json`]).
mod figures;
mod html;
mod png;
mod svg;
mod terminal;

pub use html::to_html;
pub use png::{HeatmapError, to_png};
pub use svg::{
    ADVANCE, Anchor, Bar, Cell, FONT_FAMILY, Layout, Outline, Panel, Series, Shape, TextLine,
    escape, layout, text_width, to_svg,
};
pub use terminal::to_terminal;

use crate::{
    collect::maps::MapReport,
    model::{
        maps::{Band, Distribution},
        spread::Spread,
    },
};
use figures::Figures;

/// Cells per map at most: a 1M-entry bucket map has 262144 buckets; 4096 cells keep the image
/// readable and its size bounded (each cell then stands for 64 buckets).
pub const MAX_CELLS: usize = 4096;

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
    /// Observed against a random hash, with the verdict and its reasons.
    spread: Spread,
    /// The verdict as a person reads it.
    headline: String,
    advice: Vec<String>,
}

/// The JSON form: per map its figures, distributions, the heatmap's bands, the comparison with
/// a random hash and the advice.
pub fn to_json(reports: &[&MapReport]) -> serde_json::Result<String> {
    let maps: Vec<MapJson> = reports
        .iter()
        .map(|report| {
            let figures = Figures::new(report);
            MapJson {
                report,
                bucket_entries: report.shape.entries_per_unit(),
                overflow_chains: report.shape.overflow_chains(),
                tombstones: report.shape.tombstones_per_group(),
                bands: report.shape.bands(MAX_CELLS),
                headline: figures.spread.headline(),
                spread: figures.spread,
                advice: figures.advice,
            }
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "maps": maps }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        maps::{Evacuation, MapLayout, MapShape, MapTypeInfo, OpRates, SiteKind, Table, Unit},
        spread::Verdict,
    };

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
            operations_counted: None,
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

    /// Entries per unit of `entries` keys hashed at random into `units` units.
    fn random_counts(entries: u64, units: usize, seed: u64) -> Vec<u16> {
        let mut state = seed;
        let mut counts = vec![0u16; units];
        for _ in 0..entries {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            counts[(z % units as u64) as usize] += 1;
        }
        counts
    }

    /// A bucket map of 2^log2 buckets holding `entries` random keys, growing when `growing`.
    fn bucket_report(
        site: &str,
        type_name: &str,
        log2: u8,
        entries: u64,
        growing: bool,
    ) -> MapReport {
        let buckets = 1usize << log2;
        let mut units: Vec<Unit> = random_counts(entries, buckets, u64::from(log2))
            .into_iter()
            .map(|entries| Unit {
                entries,
                overflow: entries.saturating_sub(1) / 8,
                ..Unit::default()
            })
            .collect();
        let mut evacuation = None;
        if growing {
            // The upper half of the new array waits for the last old buckets.
            for unit in &mut units[buckets / 2..] {
                *unit = Unit::default();
            }
            units.extend((0..buckets / 4).map(|_| Unit {
                entries: 5,
                old: true,
                ..Unit::default()
            }));
            evacuation = Some(Evacuation {
                old_buckets: buckets as u64 / 2,
                progress: buckets as u64 / 4,
                same_size: false,
            });
        }
        let mut map = report(0);
        map.site = site.into();
        map.type_info = Some(MapTypeInfo {
            name: Some(type_name.into()),
            key_bytes: 16,
            elem_bytes: 8,
        });
        map.operations_per_second = Some(OpRates {
            lookups: 1200.0,
            assigns: 310.5,
            deletes: 0.0,
            iterations: 2.5,
        });
        map.shape = MapShape {
            layout: MapLayout::Buckets,
            entries: units.iter().map(|unit| u64::from(unit.entries)).sum(),
            capacity_slots: units
                .iter()
                .map(|unit| 8 * (1 + u64::from(unit.overflow)))
                .sum(),
            bytes: 48 + 144 * units.len() as u64,
            units,
            log2_buckets: Some(log2),
            evacuation,
            directory_len: None,
            tables: Vec::new(),
        };
        map
    }

    /// A swiss map of `tables` tables of 1024 slots, filled at random, with tombstones.
    fn swiss_report(tables: usize) -> MapReport {
        let mut units = Vec::new();
        let mut table_list = Vec::new();
        for table in 0..tables {
            let used = 450 + (table as u64 * 97) % 440;
            let counts = random_counts(used, 128, 40 + table as u64);
            // Go caps a group at 8: spill what a random draw put over it into the next group.
            let mut capped = vec![0u16; 128];
            let mut carry = 0u16;
            for round in 0..2 {
                for (index, count) in counts.iter().enumerate() {
                    let wanted = if round == 0 { *count } else { 0 } + carry;
                    let room = 8 - capped[index];
                    let placed = wanted.min(room);
                    capped[index] += placed;
                    carry = wanted - placed;
                }
            }
            table_list.push(Table {
                capacity: 1024,
                used: capped.iter().sum(),
                local_depth: 3,
            });
            units.extend(capped.into_iter().enumerate().map(|(index, entries)| Unit {
                entries,
                tombstones: if index % 7 == 0 {
                    (8 - entries as u8).min(2)
                } else {
                    0
                },
                ..Unit::default()
            }));
        }
        let mut map = report(0);
        map.site = "main.loadIndex (index.go:88)".into();
        map.site_kind = SiteKind::Accessed;
        map.address = 0xc000_2000;
        map.shape = MapShape {
            layout: MapLayout::Swiss,
            entries: units.iter().map(|unit| u64::from(unit.entries)).sum(),
            capacity_slots: 1024 * tables as u64,
            bytes: 48 + 8 * 8 + tables as u64 * (48 + 128 * 200),
            units,
            log2_buckets: None,
            evacuation: None,
            directory_len: Some(8),
            tables: table_list,
        };
        map
    }

    fn long_report() -> MapReport {
        let site = format!(
            "github.com/example/service/internal/{}.(*Index).rebuild (index.go:88)",
            "very_long_package_name/".repeat(12)
        );
        assert!(site.len() >= 300, "{}", site.len());
        let type_name = format!(
            "map[github.com/example/service/internal/keys.{}]*github.com/example/service/internal/values.Entry",
            "CompositeKey".repeat(10)
        );
        bucket_report(&site, &type_name, 12, 26_000, false)
    }

    fn assert_text_fits(layout: &Layout) {
        for line in layout.lines() {
            assert!(
                line.left() >= 0.0 && line.right() <= layout.width,
                "{:?} reaches {}..{} of {}",
                line.text,
                line.left(),
                line.right(),
                layout.width
            );
        }
    }

    #[test]
    fn heatmap_text_fits_the_width_with_a_long_site_and_type() {
        let long = long_report();
        let swiss = swiss_report(8);
        let growing = bucket_report(
            "main.buildGrown (main.go:97)",
            "map[int]int",
            10,
            5000,
            true,
        );
        for reports in [vec![&long], vec![&swiss, &growing, &long], vec![]] {
            let layout = layout(&reports);
            assert_text_fits(&layout);
            // Long lines wrapped rather than widened the picture past the cap.
            assert!(layout.width <= 1100.0, "{}", layout.width);
            let svg = to_svg(&reports);
            assert!(svg.starts_with(&format!(
                r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}""#,
                layout.width, layout.height
            )));
            for panel in &layout.panels {
                for cell in &panel.cells {
                    assert!((cell.x + 10) as f64 <= layout.width);
                    assert!((cell.y + 10) as f64 <= layout.height);
                }
                assert!(panel.bottom <= layout.height);
            }
        }
        // The whole site is in the picture, wrapped over lines.
        let layout = layout(&[&long]);
        let heading: String = layout.panels[0]
            .text
            .iter()
            .filter(|line| line.bold && line.size == 12.0)
            .map(|line| line.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            heading.starts_with("grown at github.com/example/service"),
            "{heading}"
        );
        assert!(
            heading
                .replace(' ', "")
                .contains(&long.site.replace(' ', "")),
            "{heading}"
        );
    }

    #[test]
    fn heatmap_svg_names_the_site_kind_and_uses_each_layouts_words() {
        let growing = bucket_report(
            "main.buildGrown (main.go:97)",
            "map[int]int",
            10,
            5000,
            true,
        );
        let svg = to_svg(&[&growing]);
        assert!(
            svg.contains(">grown at main.buildGrown (main.go:97)</text>"),
            "{svg}"
        );
        for words in [
            "2^10 buckets",
            "overflow buckets",
            "old buckets not yet evacuated",
            "outline: overflow chain",
            "1200 lookups, 310 assigns, 0 deletes, 2.5 ranges started per second",
            "keys spread like a random hash",
        ] {
            assert!(svg.contains(words), "{words}: {svg}");
        }
        let swiss = swiss_report(4);
        let svg = to_svg(&[&swiss]);
        assert!(svg.contains(">used at main.loadIndex (index.go:88)</text>"));
        for words in ["4 tables", "groups of 8 slots", "full slots", "tombstones"] {
            assert!(svg.contains(words), "{words}: {svg}");
        }
        // Every word a person reads (the lines, the panel's and the cells' titles); the cells'
        // data attributes are the same for both layouts.
        let layout = layout(&[&swiss]);
        let panel = &layout.panels[0];
        let words = layout
            .lines()
            .map(|line| line.text.clone())
            .chain(std::iter::once(panel.summary.clone()))
            .chain(panel.cells.iter().map(|cell| cell.title.clone()))
            .collect::<Vec<_>>()
            .join("\n")
            .to_lowercase();
        assert!(words.contains("group 0: "), "{words}");
        // Overflow buckets allocated while watched are a bucket-map figure only.
        for bucket_word in ["bucket", "chain", "overflow"] {
            assert!(!words.contains(bucket_word), "{bucket_word}: {words}");
        }
    }

    /// `name="value"` of the first such attribute in `text`.
    fn attribute<'a>(text: &'a str, name: &str) -> &'a str {
        let start = text.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        text[start..].split('"').next().unwrap()
    }

    #[test]
    fn heatmap_chart_bars_read_back_as_the_spread() {
        for map in [
            bucket_report("main.a (a.go:1)", "map[int]int", 11, 13_000, false),
            swiss_report(3),
        ] {
            let svg = to_svg(&[&map]);
            let spread = crate::model::spread::spread(&map.shape);
            let read = |class: &str| -> Vec<(u32, f64)> {
                svg.split(&format!(r#"<rect class="{class}""#))
                    .skip(1)
                    .map(|bar| {
                        (
                            attribute(bar, "data-value").parse().unwrap(),
                            attribute(bar, "data-count").parse().unwrap(),
                        )
                    })
                    .collect()
            };
            let observed = read("observed");
            let expected = read("expected");
            assert!(observed.len() >= 9 && observed.len() == expected.len());
            for (value, count) in &observed {
                assert_eq!(
                    *count as u64,
                    spread.observed.get(value).copied().unwrap_or(0),
                    "{value}"
                );
            }
            for (value, count) in &expected {
                let want = spread.expected.get(value).copied().unwrap_or(0.0);
                assert!((count - want).abs() < 1e-3, "{value}: {count} vs {want}");
            }
            // Every unit is in a bar.
            let units: f64 = observed.iter().map(|(_, count)| count).sum();
            assert_eq!(units as u64, spread.units);
            // The colour scale has its numbers.
            for tick in ["0", "2", "4", "6", "8+"] {
                assert!(
                    svg.contains(&format!(r#"text-anchor="middle">{tick}</text>"#)),
                    "{tick}"
                );
            }
            assert_eq!(spread.verdict, Verdict::LikeRandom);
        }
    }

    #[test]
    fn heatmap_png_has_the_svgs_size_and_draws_the_title() {
        let map = bucket_report(
            "main.buildGrown (main.go:97)",
            "map[int]int",
            8,
            1500,
            false,
        );
        let layout = layout(&[&map]);
        let svg = to_svg(&[&map]);
        let png = to_png(&svg).unwrap();
        let pixmap = resvg::tiny_skia::Pixmap::decode_png(&png).unwrap();
        assert_eq!(
            (pixmap.width(), pixmap.height()),
            (layout.width as u32, layout.height as u32)
        );
        // The heading's first line: dark pixels where its text is.
        let heading = &layout.panels[0].text[0];
        assert!(heading.bold);
        let dark = (heading.left() as u32..heading.right() as u32)
            .flat_map(|x| {
                ((heading.y - heading.size) as u32..heading.y as u32 + 3).map(move |y| (x, y))
            })
            .filter(|&(x, y)| {
                let pixel = pixmap.pixel(x, y).unwrap();
                u32::from(pixel.red()) + u32::from(pixel.green()) + u32::from(pixel.blue()) < 200
            })
            .count();
        assert!(dark > 50, "{dark} dark pixels in the heading");
        // Empty: still a picture.
        let empty = to_png(&to_svg(&[])).unwrap();
        assert!(resvg::tiny_skia::Pixmap::decode_png(&empty).is_ok());
    }

    /// Every text node as the embedded font shapes it, with its rendered bounds.
    fn rendered_text(group: &resvg::usvg::Group, out: &mut Vec<resvg::usvg::Rect>) {
        for node in group.children() {
            match node {
                resvg::usvg::Node::Group(group) => rendered_text(group, out),
                resvg::usvg::Node::Text(text) => out.push(text.abs_bounding_box()),
                _ => {}
            }
        }
    }

    #[test]
    fn heatmap_rendered_text_stays_inside_the_picture() {
        let long = long_report();
        let swiss = swiss_report(2);
        let svg = to_svg(&[&long, &swiss]);
        let layout = layout(&[&long, &swiss]);
        let tree = png::parse(&svg).unwrap();
        let mut boxes = Vec::new();
        rendered_text(tree.root(), &mut boxes);
        assert_eq!(boxes.len(), layout.lines().count());
        for bounds in boxes {
            assert!(
                bounds.left() >= 0.0 && f64::from(bounds.right()) <= layout.width,
                "{bounds:?} outside 0..{}",
                layout.width
            );
        }
        // The advance the layout assumes is the embedded font's, regular and bold: a line of
        // 100 characters is as wide as estimated, to a pixel or two (the glyphs' side bearings).
        let line = "M".repeat(100);
        let svg = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="800" height="40" font-family="{FONT_FAMILY}"><text x="0" y="15" font-size="11">{line}</text><text x="0" y="35" font-size="11" font-weight="bold">{line}</text></svg>"#
        );
        let tree = png::parse(&svg).unwrap();
        let mut boxes = Vec::new();
        rendered_text(tree.root(), &mut boxes);
        let estimated = text_width(&line, 11.0);
        assert_eq!(boxes.len(), 2);
        for bounds in boxes {
            assert!(
                (f64::from(bounds.width()) - estimated).abs() < 2.0,
                "{} vs {estimated}",
                bounds.width()
            );
        }
    }

    /// Visible characters of a terminal line: ANSI sequences stripped.
    fn visible(line: &str) -> String {
        let mut out = String::new();
        let mut chars = line.chars();
        while let Some(char) = chars.next() {
            if char == '\x1b' {
                for next in chars.by_ref() {
                    if next.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(char);
            }
        }
        out
    }

    #[test]
    fn heatmap_terminal_lines_fit_the_columns_and_blocks_are_the_bands() {
        let long = long_report();
        let swiss = swiss_report(3);
        let growing = bucket_report(
            "main.buildGrown (main.go:97)",
            "map[int]int",
            10,
            5000,
            true,
        );
        let reports = [&long, &swiss, &growing];
        for columns in [20usize, 41, 80, 203] {
            for colour in [true, false] {
                let text = to_terminal(&reports, columns, colour);
                for line in text.lines() {
                    assert!(
                        visible(line).chars().count() <= columns,
                        "{columns}: {:?}",
                        visible(line)
                    );
                }
                if columns > 40 {
                    assert!(text.contains("keys spread like a random hash"));
                    assert!(text.contains("grown at main.buildGrown (main.go:97)"));
                }
                if colour {
                    // One background per block, and 9 per colour scale.
                    let bands: usize = reports
                        .iter()
                        .map(|map| map.shape.bands(columns * 16).len())
                        .sum();
                    let backgrounds = text.matches("\x1b[48;2;").count();
                    assert_eq!(backgrounds, bands + 9 * reports.len(), "{columns}");
                    // Every full row of blocks is exactly the terminal's width.
                    let rows = text
                        .lines()
                        .filter(|line| line.starts_with("\x1b[48;2;"))
                        .map(|line| visible(line).chars().count())
                        .collect::<Vec<_>>();
                    assert!(rows.iter().filter(|&&width| width == columns).count() >= 3);
                } else {
                    assert!(!text.contains('\x1b'));
                    assert!(text.contains('█') || text.contains('▓'));
                }
            }
        }
        assert!(to_terminal(&[], 80, true).starts_with("no map snapshots yet"));
    }

    #[test]
    fn heatmap_html_lists_every_map_with_its_figures() {
        let bucket = bucket_report(
            "main.build<Grown> (main.go:97)",
            "map[int]int",
            10,
            5000,
            true,
        );
        let swiss = swiss_report(2);
        let page = to_html("mapscope: PID 4321", &[&bucket, &swiss]);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(
            !page.contains("<script") && !page.contains("http://")
                || page.contains("xmlns=\"http://www.w3.org/2000/svg\"")
        );
        assert!(!page.contains("<script") && !page.contains("src="));
        for map in [&bucket, &swiss] {
            let start = page
                .find(&format!(r#"data-address="{:#x}">"#, map.address))
                .unwrap();
            let section = &page[start..start + page[start..].find("</section>").unwrap()];
            for figure in [
                format!(
                    "{} entries in {} slots",
                    map.shape.entries, map.shape.capacity_slots
                ),
                format!("({} B)", map.shape.bytes),
                "keys spread like a random hash".to_string(),
            ] {
                assert!(section.contains(&figure), "{figure}: {section}");
            }
            for label in [
                "type",
                "structure",
                "entries",
                "bytes",
                "while watched",
                "verdict",
                "why it looks so",
            ] {
                assert!(
                    section.contains(&format!(r#"<tr data-figure="{label}">"#)),
                    "{label}"
                );
            }
            assert!(section.contains("<svg xmlns="));
            assert_eq!(section.matches(r#"<g class="map""#).count(), 1);
        }
        assert!(page.contains("main.build&lt;Grown&gt;") && !page.contains("build<Grown>"));
        assert!(page.contains("1200 lookups"));
        assert!(page.contains("grew 3 times, 1 overflow bucket allocated"));
        assert!(page.contains(r#"<td class="like-random">keys spread like a random hash</td>"#));
        let empty = to_html("mapscope", &[]);
        assert!(empty.contains("no map snapshots yet") && empty.contains("Reload"));
    }

    #[test]
    fn heatmap_advice_shows_where_the_figures_say_so() {
        // A map grown three times while watched: pre-size it.
        let grown = bucket_report("main.a (a.go:1)", "map[string]int", 11, 13_000, false);
        let svg = to_svg(&[&grown]);
        assert!(
            svg.contains(
                "→ it grew 3 times while watched: pre-size it, make(map[string]int, 13000)"
            ),
            "{svg}"
        );
        // Drained: 2^14 buckets for 900 entries.
        let drained = bucket_report("main.b (b.go:2)", "map[string]int", 14, 900, false);
        let svg = to_svg(&[&drained]);
        assert!(svg.contains("maps never shrink; rebuild it"), "{svg}");
        let json: serde_json::Value = serde_json::from_str(&to_json(&[&drained]).unwrap()).unwrap();
        assert!(
            json["maps"][0]["advice"][0]
                .as_str()
                .unwrap()
                .starts_with("holds 2.3 MiB for 900 entries")
        );
        assert_eq!(json["maps"][0]["spread"]["verdict"], "like_random");
        assert_eq!(
            json["maps"][0]["headline"],
            "keys spread like a random hash"
        );
        assert!(json["maps"][0]["spread"]["expected"]["0"].as_f64().unwrap() > 10_000.0);
    }
}
