//! The web page: every map with its figures and its picture, in one self-contained document
//! (no script, no external resource), readable at 1280 px.
use std::fmt::Write as _;

use super::{
    figures::Figures,
    svg::{escape, to_svg},
};
use crate::{collect::maps::MapReport, model::spread::Verdict};

const STYLE: &str = "\
body { font-family: \"DejaVu Sans Mono\", ui-monospace, Menlo, Consolas, monospace; \
font-size: 14px; line-height: 1.45; color: #1f2328; background: #ffffff; margin: 0 auto; \
max-width: 1240px; padding: 16px 20px; }
h1 { font-size: 20px; margin: 0 0 4px; }
nav ol { padding-left: 24px; margin: 8px 0 16px; }
nav li { overflow-wrap: anywhere; }
section.map { border-top: 1px solid #d0d7de; padding: 12px 0 24px; }
section.map h2 { font-size: 16px; margin: 0 0 2px; overflow-wrap: anywhere; }
p.type { color: #57606a; margin: 0 0 8px; overflow-wrap: anywhere; }
table.figures { border-collapse: collapse; margin: 8px 0 12px; width: 100%; }
table.figures th { text-align: left; vertical-align: top; white-space: nowrap; \
padding: 3px 16px 3px 0; color: #57606a; font-weight: normal; width: 11em; }
table.figures td { padding: 3px 0; overflow-wrap: anywhere; }
table.figures ul { margin: 0; padding-left: 18px; }
.like-random { color: #1a7f37; font-weight: bold; }
.collide { color: #b42318; font-weight: bold; }
.picture { overflow-x: auto; }
.picture svg { display: block; max-width: 100%; height: auto; }
";

fn section(out: &mut String, index: usize, figures: &Figures) {
    let report = figures.report;
    // The address only when shown (`MapReport::withhold` leaves 0).
    let address = if report.address == 0 {
        String::new()
    } else {
        format!(r#" data-address="{:#x}""#, report.address)
    };
    let _ = writeln!(out, r#"<section class="map" id="map-{index}"{address}>"#);
    let _ = writeln!(out, "<h2>{}</h2>", escape(&figures.heading()));
    let _ = writeln!(
        out,
        r#"<p class="type">{}</p>"#,
        escape(&figures.type_text())
    );
    let _ = writeln!(out, r#"<table class="figures">"#);
    for row in figures.rows() {
        let class = match (row.label, figures.spread.verdict) {
            ("verdict", Verdict::LikeRandom) => r#" class="like-random""#,
            ("verdict", Verdict::Collide { .. }) => r#" class="collide""#,
            _ => "",
        };
        let value = if row.values.len() == 1 {
            escape(&row.values[0])
        } else {
            let items: String = row
                .values
                .iter()
                .map(|value| format!("<li>{}</li>", escape(value)))
                .collect();
            format!("<ul>{items}</ul>")
        };
        let _ = writeln!(
            out,
            r#"<tr data-figure="{}"><th>{}</th><td{class}>{value}</td></tr>"#,
            escape(row.label),
            escape(row.label)
        );
    }
    let _ = writeln!(out, "</table>");
    let _ = writeln!(out, r#"<div class="picture">"#);
    out.push_str(&to_svg(&[report]));
    let _ = writeln!(out, "</div>\n</section>");
}

/// A self-contained page listing the maps: per map a `<section class="map" data-address>` with
/// its site, type, a table of figures (entries, capacity, fill, bytes, growths, overflows,
/// operation rates, the verdict and advice) and its picture inline.
pub fn to_html(title: &str, reports: &[&MapReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>",
        escape(title)
    );
    let _ = writeln!(out, "<h1>{}</h1>", escape(title));
    if reports.is_empty() {
        let _ = writeln!(
            out,
            "<p class=\"empty\"><strong>no map snapshots yet</strong></p>\n<p>mapscope learns \
             of a map when it grows, allocates an overflow bucket, is used in a discovery \
             window, or (with <code>--map-creations</code>) is made with a size hint of 1024 or \
             more; it then reads the biggest ones every <code>--map-snapshot-interval</code> \
             (10 s by default). Reload this page once the service has done some work; if it \
             stays empty, check that the maps you expect have 128 entries or more, and the \
             <code>site</code> filter if you gave one.</p>"
        );
    } else {
        let figures: Vec<Figures> = reports.iter().map(|report| Figures::new(report)).collect();
        let _ = writeln!(
            out,
            "<p>{} map(s), the latest snapshot of each: cells coloured by how full each band \
             of buckets or groups is, beside the spread of entries against what a random hash \
             gives at the same load.</p>",
            figures.len()
        );
        if figures.len() > 1 {
            let _ = writeln!(out, "<nav><ol>");
            for (index, map) in figures.iter().enumerate() {
                let _ = writeln!(
                    out,
                    r##"<li><a href="#map-{index}">{}</a>: {}</li>"##,
                    escape(&map.heading()),
                    escape(&map.spread.headline())
                );
            }
            let _ = writeln!(out, "</ol></nav>");
        }
        for (index, map) in figures.iter().enumerate() {
            section(&mut out, index, map);
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}
