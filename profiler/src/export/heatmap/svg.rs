//! The SVG: one panel per map, laid out from its text. [`layout`] places every line, cell, bar
//! and swatch (pure, so tests can check that every line fits); [`to_svg`] writes it out.
use std::fmt::Write as _;

use super::{
    MAX_CELLS,
    figures::{Bin, Figures, OLD_BLUE, SCALE_TICKS, band_mean, colour, hex, wrap},
};
use crate::{
    collect::maps::MapReport,
    model::{
        maps::{Band, MapLayout},
        spread,
    },
};

/// The picture's font; the PNG embeds it, so its metrics are the ones that count.
pub const FONT_FAMILY: &str = "DejaVu Sans Mono, monospace";
/// Advance of every character of DejaVu Sans Mono, regular and bold: 1233 of 2048 units per em.
pub const ADVANCE: f64 = 1233.0 / 2048.0;
pub const TEXT_SIZE: f64 = 11.0;
pub const HEADING_SIZE: f64 = 12.0;
pub const SMALL_SIZE: f64 = 10.0;
const LINE: f64 = 15.0;
const HEADING_LINE: f64 = 17.0;
const SMALL_LINE: f64 = 14.0;
const MARGIN: f64 = 12.0;
/// Cell side in pixels, and cells per row of the grid.
const CELL: usize = 10;
const COLUMNS: usize = 64;
/// Between the cells and the chart.
const GAP: f64 = 40.0;
const PLOT_WIDTH: f64 = 330.0;
const PLOT_HEIGHT: f64 = 140.0;
/// Text lines wrap past this width, unless the cells and chart are wider.
const MAX_TEXT_WIDTH: f64 = 1000.0;
const SWATCH: f64 = 16.0;
const OBSERVED_FILL: &str = "#7f96b2";
const EXPECTED_STROKE: &str = "#222222";
const MUTED: &str = "#555555";

/// Estimated width of `text` at `size` px: characters × the font's advance.
pub fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * ADVANCE * size
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

/// One line of text, where it goes and how wide it is estimated to be.
#[derive(Clone, Debug, PartialEq)]
pub struct TextLine {
    pub text: String,
    pub x: f64,
    /// Baseline.
    pub y: f64,
    pub size: f64,
    pub bold: bool,
    pub anchor: Anchor,
    pub fill: Option<&'static str>,
    pub width: f64,
}

impl TextLine {
    fn new(text: impl Into<String>, x: f64, y: f64, size: f64) -> Self {
        let text = text.into();
        Self {
            width: text_width(&text, size),
            text,
            x,
            y,
            size,
            bold: false,
            anchor: Anchor::Start,
            fill: None,
        }
    }

    fn anchored(mut self, anchor: Anchor) -> Self {
        self.anchor = anchor;
        self
    }

    fn bold(mut self) -> Self {
        self.bold = true;
        self
    }

    fn filled(mut self, fill: &'static str) -> Self {
        self.fill = Some(fill);
        self
    }

    /// Leftmost x the text reaches.
    pub fn left(&self) -> f64 {
        match self.anchor {
            Anchor::Start => self.x,
            Anchor::Middle => self.x - self.width / 2.0,
            Anchor::End => self.x - self.width,
        }
    }

    /// Rightmost x the text reaches.
    pub fn right(&self) -> f64 {
        self.left() + self.width
    }
}

/// A heatmap cell: one band of consecutive buckets or groups.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub band: Band,
    pub x: usize,
    pub y: usize,
    pub fill: String,
    pub outline: Outline,
    pub title: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outline {
    Plain,
    /// An overflow chain (bucket maps) or tombstones (swiss tables).
    Marked,
    /// Old buckets not yet evacuated.
    Old,
}

/// Legend swatches, axes and the expectation's line.
#[derive(Clone, Debug, PartialEq)]
pub enum Shape {
    Rect {
        x: f64,
        y: f64,
        width: f64,
        height: f64,
        fill: String,
        outline: Outline,
    },
    Line {
        from: (f64, f64),
        to: (f64, f64),
        stroke: &'static str,
        dashed: bool,
    },
    Polyline {
        class: &'static str,
        points: Vec<(f64, f64)>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    Observed,
    Expected,
}

/// A chart bar (observed units with a value) or marker (the random hash's expectation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bar {
    pub series: Series,
    pub value: u32,
    /// The chart's last bin: this value and above.
    pub tail: bool,
    pub count: f64,
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
}

/// One map's panel.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    pub address: u64,
    pub entries: u64,
    /// The one-line summary (the panel's `<title>`).
    pub summary: String,
    pub top: f64,
    pub bottom: f64,
    pub text: Vec<TextLine>,
    pub cells: Vec<Cell>,
    pub shapes: Vec<Shape>,
    pub bars: Vec<Bar>,
}

/// The whole picture.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    pub width: f64,
    pub height: f64,
    pub panels: Vec<Panel>,
    /// Text outside any panel (the note of an empty picture).
    pub text: Vec<TextLine>,
}

impl Layout {
    /// Every line of text in the picture.
    pub fn lines(&self) -> impl Iterator<Item = &TextLine> {
        self.text
            .iter()
            .chain(self.panels.iter().flat_map(|panel| panel.text.iter()))
    }
}

/// A part of a panel laid out from (x0, y0): its contents, width and height.
#[derive(Default)]
struct Part {
    text: Vec<TextLine>,
    cells: Vec<Cell>,
    shapes: Vec<Shape>,
    bars: Vec<Bar>,
    width: f64,
    height: f64,
}

impl Part {
    /// Width from `x0` to the rightmost text or shape edge seen so far, at least `width`.
    fn widen(&mut self, x0: f64, right: f64) {
        self.width = self.width.max(right - x0);
    }
}

/// Text wrapped into a column: lines from `y` down, each within `width` px from `x`.
struct Column<'a> {
    out: &'a mut Vec<TextLine>,
    x: f64,
    width: f64,
    /// The top of the next line.
    y: f64,
}

impl Column<'_> {
    /// `text` at `size` px, continuation lines indented by `indent` characters.
    fn paragraph(
        &mut self,
        text: &str,
        size: f64,
        indent: usize,
        style: impl Fn(TextLine) -> TextLine,
    ) {
        let line_height = if size >= HEADING_SIZE {
            HEADING_LINE
        } else {
            LINE
        };
        let characters = (self.width / (ADVANCE * size)).floor().max(1.0) as usize;
        for line in wrap(text, characters, indent) {
            let trimmed = line.trim_start();
            let offset = (line.chars().count() - trimmed.chars().count()) as f64 * ADVANCE * size;
            self.out.push(style(TextLine::new(
                trimmed,
                self.x + offset,
                self.y + size,
                size,
            )));
            self.y += line_height;
        }
    }
}

/// The cells in a grid, with the colour scale and the marks' legend under it.
fn cells_part(figures: &Figures, bands: &[Band], x0: f64, y0: f64) -> Part {
    let mut part = Part::default();
    let columns = bands.len().clamp(1, COLUMNS);
    let rows = bands.len().div_ceil(columns);
    // Whole pixels: the grid starts on one, and scripts read cells' x and y as integers.
    let (left, top) = (x0.round() as usize, y0.round() as usize);
    for (index, band) in bands.iter().enumerate() {
        part.cells.push(Cell {
            band: *band,
            x: left + (index % columns) * CELL,
            y: top + (index / columns) * CELL,
            fill: hex(colour(band_mean(band))),
            outline: if band.old {
                Outline::Old
            } else if figures.marked(band) {
                Outline::Marked
            } else {
                Outline::Plain
            },
            title: figures.band_text(band),
        });
    }
    part.widen(x0, x0 + (columns * CELL) as f64);
    let mut y = y0 + (rows * CELL) as f64;
    let unit = figures.unit();
    if bands.is_empty() {
        part.text.push(TextLine::new(
            format!("no {unit}s allocated"),
            x0,
            y + TEXT_SIZE,
            TEXT_SIZE,
        ));
        y += LINE;
    }
    y += 6.0;
    let per_cell = bands.first().map_or(1, |band| band.units);
    let plural = if per_cell == 1 { "" } else { "s" };
    for line in [
        format!("each cell: {per_cell} {unit}{plural}, in memory order"),
        format!("colour: mean {}", figures.value_name()),
    ] {
        part.text
            .push(TextLine::new(line, x0, y + SMALL_SIZE, SMALL_SIZE).filled(MUTED));
        y += SMALL_LINE;
    }
    y += 2.0;
    for value in 0..=spread::SLOTS {
        part.shapes.push(Shape::Rect {
            x: x0 + f64::from(value) * SWATCH,
            y,
            width: SWATCH,
            height: 10.0,
            fill: hex(colour(f64::from(value))),
            outline: Outline::Plain,
        });
    }
    y += 10.0;
    for tick in SCALE_TICKS {
        let label = if tick == spread::SLOTS {
            format!("{tick}+")
        } else {
            tick.to_string()
        };
        part.text.push(
            TextLine::new(
                label,
                x0 + (f64::from(tick) + 0.5) * SWATCH,
                y + SMALL_SIZE + 1.0,
                SMALL_SIZE,
            )
            .anchored(Anchor::Middle),
        );
    }
    part.widen(x0, x0 + 9.0 * SWATCH);
    y += SMALL_LINE + 4.0;
    let mut marks = vec![(Outline::Marked, figures.mark_name().to_string())];
    if figures.layout() == MapLayout::Buckets {
        marks.push((Outline::Old, "old buckets, not yet evacuated".into()));
    }
    for (outline, name) in marks {
        part.shapes.push(Shape::Rect {
            x: x0,
            y,
            width: 10.0,
            height: 10.0,
            fill: "white".into(),
            outline,
        });
        part.text.push(
            TextLine::new(format!("outline: {name}"), x0 + 16.0, y + 9.0, SMALL_SIZE).filled(MUTED),
        );
        y += SMALL_LINE;
    }
    for line in &part.text {
        part.width = part.width.max(line.right() - x0);
    }
    part.height = y - y0;
    part
}

/// A round number at or above `value`, for the chart's top: 1, 2, 2.5 or 5 × a power of ten.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 1.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|step| step * magnitude)
        .find(|&candidate| candidate >= value)
        .unwrap_or(10.0 * magnitude)
}

fn count_label(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Bars of the observed distribution, markers of the random hash's, axes with numbers.
fn chart_part(figures: &Figures, bins: &[Bin], x0: f64, y0: f64) -> Part {
    let mut part = Part::default();
    let unit = figures.unit();
    let title = match figures.layout() {
        MapLayout::Buckets => "buckets holding k entries, chain included",
        MapLayout::Swiss => "groups with k of 8 slots full",
    };
    part.text
        .push(TextLine::new(title, x0, y0 + TEXT_SIZE, TEXT_SIZE).bold());
    let top = bins
        .iter()
        .map(|bin| (bin.observed as f64).max(bin.expected))
        .fold(0.0, f64::max);
    let top = nice_ceiling(top);
    let ticks = [0.0, top / 2.0, top];
    let label_width = ticks
        .iter()
        .map(|&tick| text_width(&count_label(tick), SMALL_SIZE))
        .fold(0.0, f64::max);
    let plot_x = x0 + label_width + 6.0;
    let plot_y = y0 + 24.0;
    let bottom = plot_y + PLOT_HEIGHT;
    let count = bins.len().max(1) as f64;
    let pitch = (PLOT_WIDTH / count).floor().clamp(8.0, 28.0);
    let plot_width = pitch * count;
    let scale = |value: f64| bottom - value / top * PLOT_HEIGHT;
    for tick in ticks {
        let y = scale(tick);
        part.text.push(
            TextLine::new(count_label(tick), plot_x - 4.0, y + 3.5, SMALL_SIZE)
                .anchored(Anchor::End)
                .filled(MUTED),
        );
        part.shapes.push(Shape::Line {
            from: (plot_x, y),
            to: (plot_x + plot_width, y),
            stroke: "#e5e5e5",
            dashed: false,
        });
    }
    let mut expected_line = Vec::new();
    for (index, bin) in bins.iter().enumerate() {
        let left = plot_x + index as f64 * pitch;
        let observed = bin.observed as f64;
        part.bars.push(Bar {
            series: Series::Observed,
            value: bin.value,
            tail: bin.tail,
            count: observed,
            x: left + 1.0,
            y: scale(observed),
            width: (pitch - 2.0).max(1.0),
            height: bottom - scale(observed),
        });
        let y = scale(bin.expected);
        part.bars.push(Bar {
            series: Series::Expected,
            value: bin.value,
            tail: bin.tail,
            count: bin.expected,
            x: left,
            y: y - 1.0,
            width: pitch,
            height: 2.0,
        });
        expected_line.push((left + pitch / 2.0, y));
    }
    part.shapes.push(Shape::Polyline {
        class: "expected-line",
        points: expected_line,
    });
    // Where overfull starts: an overflow bucket (over 8 entries) or a full group (8 of 8).
    let from = figures.spread.overfull.from;
    if let Some(index) = bins.iter().position(|bin| bin.value == from) {
        let x = plot_x + index as f64 * pitch;
        part.shapes.push(Shape::Line {
            from: (x, plot_y - 4.0),
            to: (x, bottom),
            stroke: "#b42318",
            dashed: true,
        });
        let label = match figures.layout() {
            MapLayout::Buckets => "overflow →",
            MapLayout::Swiss => "full",
        };
        part.text
            .push(TextLine::new(label, x + 3.0, plot_y + 6.0, SMALL_SIZE).filled("#b42318"));
    }
    part.shapes.push(Shape::Line {
        from: (plot_x, plot_y),
        to: (plot_x, bottom),
        stroke: "#888888",
        dashed: false,
    });
    part.shapes.push(Shape::Line {
        from: (plot_x, bottom),
        to: (plot_x + plot_width, bottom),
        stroke: "#888888",
        dashed: false,
    });
    // Value labels, as many as fit without overlapping; the last bin always.
    let widest = bins
        .iter()
        .map(|bin| text_width(&bin.label(), SMALL_SIZE))
        .fold(0.0, f64::max);
    let step = ((widest + 4.0) / pitch).ceil().max(1.0) as usize;
    let mut labelled: Vec<usize> = (0..bins.len()).step_by(step).collect();
    if let Some(last) = bins.len().checked_sub(1)
        && labelled.last() != Some(&last)
    {
        if labelled
            .last()
            .is_some_and(|&previous| last - previous < step)
        {
            labelled.pop();
        }
        labelled.push(last);
    }
    for index in labelled {
        part.text.push(
            TextLine::new(
                bins[index].label(),
                plot_x + (index as f64 + 0.5) * pitch,
                bottom + 13.0,
                SMALL_SIZE,
            )
            .anchored(Anchor::Middle),
        );
    }
    part.text.push(
        TextLine::new(
            format!("k = {}", figures.value_name()),
            plot_x,
            bottom + 28.0,
            SMALL_SIZE,
        )
        .filled(MUTED),
    );
    let legend_y = bottom + 38.0;
    part.shapes.push(Shape::Rect {
        x: plot_x,
        y: legend_y,
        width: 10.0,
        height: 10.0,
        fill: OBSERVED_FILL.into(),
        outline: Outline::Plain,
    });
    let observed_label = TextLine::new(
        format!("observed {unit}s"),
        plot_x + 14.0,
        legend_y + 9.0,
        SMALL_SIZE,
    );
    let marker_x = observed_label.right() + 14.0;
    part.text.push(observed_label);
    part.shapes.push(Shape::Line {
        from: (marker_x, legend_y + 5.0),
        to: (marker_x + 14.0, legend_y + 5.0),
        stroke: EXPECTED_STROKE,
        dashed: false,
    });
    part.text.push(TextLine::new(
        "random hash",
        marker_x + 18.0,
        legend_y + 9.0,
        SMALL_SIZE,
    ));
    part.widen(x0, plot_x + plot_width);
    for line in &part.text {
        part.width = part.width.max(line.right() - x0);
    }
    part.height = legend_y + 12.0 - y0;
    part
}

/// What a panel needs before it is placed.
struct Prepared<'a> {
    figures: Figures<'a>,
    bands: Vec<Band>,
    bins: Vec<Bin>,
    /// Cells and chart side by side, margins included.
    content_width: f64,
    /// The longest line of text, unwrapped, margins included.
    text_width: f64,
    left_width: f64,
}

fn texts(figures: &Figures) -> Vec<(String, f64)> {
    let mut texts = vec![(figures.heading(), HEADING_SIZE)];
    texts.extend(
        figures
            .info_lines()
            .into_iter()
            .map(|line| (line, TEXT_SIZE)),
    );
    texts.push((figures.spread.headline(), HEADING_SIZE));
    texts.extend(
        figures
            .closing_lines()
            .into_iter()
            .map(|line| (line, TEXT_SIZE)),
    );
    texts
}

fn prepare(report: &MapReport) -> Prepared<'_> {
    let figures = Figures::new(report);
    let bands = report.shape.bands(MAX_CELLS);
    let bins = figures.bins();
    let left = cells_part(&figures, &bands, 0.0, 0.0);
    let chart = chart_part(&figures, &bins, 0.0, 0.0);
    let text_width = texts(&figures)
        .iter()
        .map(|(text, size)| text_width(text, *size))
        .fold(0.0, f64::max);
    Prepared {
        content_width: 2.0 * MARGIN + left.width + GAP + chart.width,
        text_width: 2.0 * MARGIN + text_width,
        left_width: left.width,
        figures,
        bands,
        bins,
    }
}

fn place(prepared: &Prepared, top: f64, width: f64) -> Panel {
    let figures = &prepared.figures;
    let mut text = Vec::new();
    let mut column = Column {
        out: &mut text,
        x: MARGIN,
        width: width - 2.0 * MARGIN,
        y: top,
    };
    column.paragraph(&figures.heading(), HEADING_SIZE, 2, TextLine::bold);
    for line in figures.info_lines() {
        column.paragraph(&line, TEXT_SIZE, 2, |line| line);
    }
    let grid_top = (column.y + 8.0).ceil();
    let left = cells_part(figures, &prepared.bands, MARGIN, grid_top);
    let chart = chart_part(
        figures,
        &prepared.bins,
        MARGIN + prepared.left_width + GAP,
        grid_top,
    );
    column.y = grid_top + left.height.max(chart.height) + 12.0;
    let colour = figures.verdict_colour();
    column.paragraph(&figures.spread.headline(), HEADING_SIZE, 2, |line| {
        line.bold().filled(colour)
    });
    for line in figures.closing_lines() {
        column.paragraph(&line, TEXT_SIZE, 2, |line| line);
    }
    let bottom = column.y + 6.0;
    let mut shapes = left.shapes;
    shapes.extend(chart.shapes);
    text.extend(left.text);
    text.extend(chart.text);
    let mut bars = left.bars;
    bars.extend(chart.bars);
    Panel {
        address: figures.report.address,
        entries: figures.report.shape.entries,
        summary: figures.summary(),
        top,
        bottom,
        text,
        cells: left.cells,
        shapes,
        bars,
    }
}

const EMPTY_NOTE: &str = "no map snapshots yet: mapscope learns of a map when it grows, \
    allocates an overflow bucket, or (with --map-creations) is made with a size hint of 1024 or \
    more, and reads it every --map-snapshot-interval; try again once the service has done some \
    work, or widen --site";

/// Where everything goes: the pure half of [`to_svg`].
///
/// The width is the widest of the cells beside the chart and the longest line of text, the
/// latter capped at 1000 px: longer lines (a long site or type name) wrap. Every line of text is
/// then within the width (its estimated width: characters × [`ADVANCE`] × its size).
pub fn layout(reports: &[&MapReport]) -> Layout {
    let prepared: Vec<Prepared> = reports.iter().map(|report| prepare(report)).collect();
    let content = prepared
        .iter()
        .map(|panel| panel.content_width)
        .fold(0.0, f64::max);
    let longest = prepared
        .iter()
        .map(|panel| panel.text_width)
        .fold(0.0, f64::max);
    let mut width = content.max(longest.min(MAX_TEXT_WIDTH + 2.0 * MARGIN));
    if reports.is_empty() {
        width = 600.0;
    }
    let width = width.ceil();
    let mut panels = Vec::new();
    let mut text = Vec::new();
    let mut y = MARGIN;
    for panel in &prepared {
        let placed = place(panel, y, width);
        y = placed.bottom + 10.0;
        panels.push(placed);
    }
    if reports.is_empty() {
        let mut column = Column {
            out: &mut text,
            x: MARGIN,
            width: width - 2.0 * MARGIN,
            y,
        };
        column.paragraph(EMPTY_NOTE, TEXT_SIZE, 0, |line| line);
        y = column.y + 6.0;
    }
    Layout {
        width,
        height: (y + MARGIN).ceil(),
        panels,
        text,
    }
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A coordinate: whole numbers without decimals, others to a tenth.
fn num(value: f64) -> String {
    let rounded = (value * 10.0).round() / 10.0;
    if rounded.fract() == 0.0 {
        format!("{rounded:.0}")
    } else {
        format!("{rounded:.1}")
    }
}

fn write_text(svg: &mut String, line: &TextLine) {
    let anchor = match line.anchor {
        Anchor::Start => "",
        Anchor::Middle => r#" text-anchor="middle""#,
        Anchor::End => r#" text-anchor="end""#,
    };
    let weight = if line.bold {
        r#" font-weight="bold""#
    } else {
        ""
    };
    let fill = line
        .fill
        .map_or(String::new(), |fill| format!(r#" fill="{fill}""#));
    let size = if line.size == TEXT_SIZE {
        String::new()
    } else {
        format!(r#" font-size="{}""#, num(line.size))
    };
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}"{size}{weight}{anchor}{fill}>{}</text>"#,
        num(line.x),
        num(line.y),
        escape(&line.text)
    );
}

fn outline_attributes(outline: Outline) -> String {
    match outline {
        Outline::Old => format!(r#" stroke="{}" stroke-width="1.5""#, hex(OLD_BLUE)),
        Outline::Marked => r#" stroke="black" stroke-width="1""#.into(),
        Outline::Plain => r##" stroke="#dddddd" stroke-width="0.5""##.into(),
    }
}

fn write_shape(svg: &mut String, shape: &Shape) {
    match shape {
        Shape::Rect {
            x,
            y,
            width,
            height,
            fill,
            outline,
        } => {
            let _ = writeln!(
                svg,
                r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{fill}"{}/>"#,
                num(*x),
                num(*y),
                num(*width),
                num(*height),
                outline_attributes(*outline)
            );
        }
        Shape::Line {
            from,
            to,
            stroke,
            dashed,
        } => {
            let dash = if *dashed {
                r#" stroke-dasharray="3 2""#
            } else {
                ""
            };
            let _ = writeln!(
                svg,
                r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{stroke}" stroke-width="1"{dash}/>"#,
                num(from.0),
                num(from.1),
                num(to.0),
                num(to.1)
            );
        }
        Shape::Polyline { class, points } => {
            let points: Vec<String> = points
                .iter()
                .map(|(x, y)| format!("{},{}", num(*x), num(*y)))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline class="{class}" points="{}" fill="none" stroke="{EXPECTED_STROKE}" stroke-width="1" stroke-opacity="0.6"/>"#,
                points.join(" ")
            );
        }
    }
}

fn write_bar(svg: &mut String, bar: &Bar) {
    let (class, fill, count) = match bar.series {
        Series::Observed => ("observed", OBSERVED_FILL, format!("{:.0}", bar.count)),
        Series::Expected => ("expected", EXPECTED_STROKE, format!("{:.3}", bar.count)),
    };
    let tail = if bar.tail { r#" data-tail="true""# } else { "" };
    let _ = writeln!(
        svg,
        r#"<rect class="{class}" x="{}" y="{}" width="{}" height="{}" fill="{fill}" data-value="{}" data-count="{count}"{tail}/>"#,
        num(bar.x),
        num(bar.y),
        num(bar.width),
        num(bar.height),
        bar.value,
    );
}

/// An SVG with one panel per map: text lines with the site, type, structure and figures; the
/// cells coloured by occupancy with a colour scale; beside them the observed distribution
/// against a random hash's; under them the verdict, why the map looks the way it does, and what
/// to do. Every cell is a `<rect class="cell">` carrying its band in `data-*` attributes, every
/// chart bar a `<rect class="observed">` or `<rect class="expected">` with `data-value` and
/// `data-count`, so scripts and tests can read the image back.
pub fn to_svg(reports: &[&MapReport]) -> String {
    let layout = layout(reports);
    let (width, height) = (num(layout.width), num(layout.height));
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="{FONT_FAMILY}" font-size="{}">"#,
        num(TEXT_SIZE)
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{width}" height="{height}" fill="white"/>"#
    );
    for line in &layout.text {
        write_text(&mut svg, line);
    }
    for panel in &layout.panels {
        // The address only when shown (`MapReport::withhold` leaves 0).
        let address = if panel.address == 0 {
            String::new()
        } else {
            format!(r#" data-address="{:#x}""#, panel.address)
        };
        let _ = writeln!(
            svg,
            r#"<g class="map"{address} data-entries="{}" data-cells="{}">"#,
            panel.entries,
            panel.cells.len()
        );
        let _ = writeln!(svg, "<title>{}</title>", escape(&panel.summary));
        for cell in &panel.cells {
            let band = &cell.band;
            let _ = writeln!(
                svg,
                r#"<rect class="cell" x="{}" y="{}" width="{CELL}" height="{CELL}" fill="{}"{} data-first="{}" data-units="{}" data-entries="{}" data-max-overflow="{}" data-tombstones="{}"><title>{}</title></rect>"#,
                cell.x,
                cell.y,
                cell.fill,
                outline_attributes(cell.outline),
                band.first,
                band.units,
                band.entries,
                band.max_overflow,
                band.tombstones,
                escape(&cell.title),
            );
        }
        for shape in &panel.shapes {
            write_shape(&mut svg, shape);
        }
        for bar in &panel.bars {
            write_bar(&mut svg, bar);
        }
        for line in &panel.text {
            write_text(&mut svg, line);
        }
        let _ = writeln!(
            svg,
            r##"<line x1="0" y1="{}" x2="{width}" y2="{}" stroke="#dddddd" stroke-width="1"/>"##,
            num(panel.bottom + 4.0),
            num(panel.bottom + 4.0)
        );
        let _ = writeln!(svg, "</g>");
    }
    svg.push_str("</svg>\n");
    svg
}
