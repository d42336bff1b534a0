//! The heatmap in a terminal: per map its figures, a grid of blocks the width of the terminal
//! (one block per band of buckets or groups), the colour scale, the observed distribution
//! against a random hash's as a text histogram, the verdict and the advice.
use std::fmt::Write as _;

use super::figures::{Bin, Figures, OLD_BLUE, band_mean, colour, wrap};
use crate::{
    collect::maps::MapReport,
    model::{maps::MapLayout, spread},
};

/// Rows of blocks per map at most: the grid stays on one screen.
const GRID_ROWS: usize = 16;
/// Narrower terminals are drawn this wide.
const MIN_COLUMNS: usize = 20;
/// Blocks by occupancy without colour: mean under 1, 1–2, 3–4, 5–6, 7 or more.
const LEVELS: [char; 5] = ['·', '░', '▒', '▓', '█'];
const RESET: &str = "\x1b[0m";

fn level(mean: f64) -> char {
    let index = ((mean / 8.0) * 4.0).round().clamp(0.0, 4.0) as usize;
    LEVELS[index]
}

fn background((red, green, blue): (u8, u8, u8)) -> String {
    format!("\x1b[48;2;{red};{green};{blue}m")
}

fn foreground((red, green, blue): (u8, u8, u8)) -> String {
    format!("\x1b[38;2;{red};{green};{blue}m")
}

/// Lines of text wrapped to the terminal, each styled (when colour is on) as a whole.
struct Out {
    text: String,
    columns: usize,
    colour: bool,
}

impl Out {
    fn paragraph(&mut self, text: &str, indent: usize, style: &str) {
        for line in wrap(text, self.columns, indent) {
            if self.colour && !style.is_empty() {
                let _ = writeln!(self.text, "{style}{line}{RESET}");
            } else {
                let _ = writeln!(self.text, "{line}");
            }
        }
    }

    /// One line of plain text, cut to the terminal's width (a histogram row in a terminal too
    /// narrow for its numbers).
    fn line(&mut self, text: &str) {
        let cut: String = text.chars().take(self.columns).collect();
        let _ = writeln!(self.text, "{}", cut.trim_end());
    }

    fn blank(&mut self) {
        self.text.push('\n');
    }
}

/// Coloured blocks, one per band, `columns` to a row.
fn grid(out: &mut Out, figures: &Figures) {
    let shape = &figures.report.shape;
    let bands = shape.bands(out.columns * GRID_ROWS);
    if bands.is_empty() {
        out.paragraph(&format!("no {}s allocated", figures.unit()), 0, "");
        return;
    }
    for row in bands.chunks(out.columns) {
        let mut line = String::new();
        for band in row {
            let mean = band_mean(band);
            if out.colour {
                let (mark, ink) = if band.old {
                    ('o', foreground(OLD_BLUE))
                } else if figures.marked(band) {
                    ('•', foreground((0, 0, 0)))
                } else {
                    (' ', String::new())
                };
                let _ = write!(line, "{}{ink}{mark}", background(colour(mean)));
            } else if band.old {
                line.push('o');
            } else {
                line.push(level(mean));
            }
        }
        if out.colour {
            line.push_str(RESET);
        }
        let _ = writeln!(out.text, "{line}");
    }
    let per_cell = bands.first().map_or(1, |band| band.units);
    let unit = figures.unit();
    let plural = if per_cell == 1 { "" } else { "s" };
    out.paragraph(
        &format!("each block: {per_cell} {unit}{plural}, in memory order"),
        2,
        "",
    );
}

/// The colour scale (or the characters by level), and what marks mean.
fn scale(out: &mut Out, figures: &Figures) {
    let name = figures.value_name();
    if out.colour {
        let mut swatches = String::new();
        for value in 0..=spread::SLOTS {
            let _ = write!(swatches, "{} ", background(colour(f64::from(value))));
        }
        let text = format!("0 {} 8+ mean {name}", " ".repeat(9));
        if text.chars().count() <= out.columns {
            let _ = writeln!(out.text, "0 {swatches}{RESET} 8+ mean {name}");
        } else {
            let _ = writeln!(out.text, "0 {swatches}{RESET} 8+");
        }
        let mut marks = format!("• {}", figures.mark_name());
        if figures.layout() == MapLayout::Buckets {
            marks.push_str(", o old buckets not yet evacuated");
        }
        out.paragraph(&marks, 2, "");
    } else {
        let mut text = format!("· 0, ░ 1-2, ▒ 3-4, ▓ 5-6, █ 7+ mean {name}");
        if figures.layout() == MapLayout::Buckets {
            text.push_str("; o old buckets not yet evacuated");
        }
        out.paragraph(&text, 2, "");
    }
}

/// Observed units per value as bars, the random hash's expectation as a │ on each.
fn histogram(out: &mut Out, figures: &Figures, bins: &[Bin]) {
    let title = match figures.layout() {
        MapLayout::Buckets => {
            "buckets holding k entries (chain included): █ observed, │ random hash"
        }
        MapLayout::Swiss => "groups with k of 8 slots full: █ observed, │ random hash",
    };
    out.paragraph(title, 2, "");
    let observed_width = bins
        .iter()
        .map(|bin| bin.observed.to_string().len())
        .max()
        .unwrap_or(1)
        .max("seen".len());
    let expected_width = bins
        .iter()
        .map(|bin| format!("{:.1}", bin.expected).len())
        .max()
        .unwrap_or(1)
        .max("random".len());
    let label_width = bins
        .iter()
        .map(|bin| bin.label().len())
        .max()
        .unwrap_or(1)
        .max(1);
    // label, space, bar, space, seen, space, random.
    let bar_width = out
        .columns
        .saturating_sub(label_width + observed_width + expected_width + 3);
    let top = bins
        .iter()
        .map(|bin| (bin.observed as f64).max(bin.expected))
        .fold(0.0, f64::max)
        .max(1.0);
    let cells = |value: f64| ((value / top) * bar_width as f64).round() as usize;
    let header = format!(
        "{:>label_width$} {} {:>observed_width$} {:>expected_width$}",
        "k",
        " ".repeat(bar_width),
        "seen",
        "random"
    );
    out.line(&header);
    for bin in bins {
        let observed = cells(bin.observed as f64).min(bar_width);
        let expected = cells(bin.expected).min(bar_width);
        let mut bar: Vec<char> = (0..bar_width)
            .map(|index| if index < observed { '█' } else { ' ' })
            .collect();
        if bar_width > 0 && (bin.expected > 0.0 || bin.observed > 0) {
            bar[expected.saturating_sub(1).min(bar_width - 1)] = '│';
        }
        let bar: String = bar.into_iter().collect();
        let line = format!(
            "{:>label_width$} {bar} {:>observed_width$} {:>expected_width$.1}",
            bin.label(),
            bin.observed,
            bin.expected
        );
        out.line(&line);
    }
}

/// The heatmaps for a terminal `columns` wide (at least 20): no line is wider, and each map's
/// grid has one block per band (24-bit colour when `colour`, else characters by level).
pub fn to_terminal(reports: &[&MapReport], columns: usize, colour: bool) -> String {
    let mut out = Out {
        text: String::new(),
        columns: columns.max(MIN_COLUMNS),
        colour,
    };
    if reports.is_empty() {
        out.paragraph(
            "no map snapshots yet: mapscope learns of a map when it grows, allocates an \
             overflow bucket, or (with --map-creations) is made with a size hint of 1024 or \
             more; watch longer with --duration, or widen --site",
            0,
            "",
        );
        return out.text;
    }
    for (index, report) in reports.iter().enumerate() {
        if index > 0 {
            out.blank();
        }
        let figures = Figures::new(report);
        out.paragraph(&figures.heading(), 2, "\x1b[1m");
        for line in figures.info_lines() {
            out.paragraph(&line, 2, "");
        }
        out.blank();
        grid(&mut out, &figures);
        scale(&mut out, &figures);
        out.blank();
        if figures.spread.comparable() {
            histogram(&mut out, &figures, &figures.bins());
            out.blank();
        }
        let verdict_style = match figures.spread.verdict {
            spread::Verdict::LikeRandom => "\x1b[1;32m",
            spread::Verdict::Collide { .. } => "\x1b[1;31m",
        };
        out.paragraph(&figures.spread.headline(), 2, verdict_style);
        for line in figures.closing_lines() {
            out.paragraph(&line, 2, "");
        }
    }
    out.text
}
