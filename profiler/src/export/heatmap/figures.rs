//! What every form of the heatmap says about a map, in words and numbers: one place, so the
//! SVG, the terminal and the web page say the same thing the same way.
use crate::{
    collect::maps::MapReport,
    model::{
        maps::{Band, MapLayout},
        spread::{self, History, Spread, Verdict, human_bytes, percent, things},
    },
};

/// A map's figures, words and random-hash comparison.
pub(super) struct Figures<'a> {
    pub report: &'a MapReport,
    pub spread: Spread,
    pub advice: Vec<String>,
}

/// One labelled figure (the web page's table; the picture's lines are these values).
pub(super) struct Row {
    pub label: &'static str,
    pub values: Vec<String>,
}

impl<'a> Figures<'a> {
    pub fn new(report: &'a MapReport) -> Self {
        let history = History {
            growths: report.growths,
            hint: report.hint,
            type_name: report
                .type_info
                .as_ref()
                .and_then(|info| info.name.as_deref()),
        };
        Self {
            report,
            spread: spread::spread(&report.shape),
            advice: spread::advice(&report.shape, &history),
        }
    }

    pub fn layout(&self) -> MapLayout {
        self.report.shape.layout
    }

    /// "bucket" or "group".
    pub fn unit(&self) -> &'static str {
        self.spread.unit_name()
    }

    /// What a cell's colour and a chart's value count.
    pub fn value_name(&self) -> &'static str {
        match self.layout() {
            MapLayout::Buckets => "entries per bucket",
            MapLayout::Swiss => "full slots per group",
        }
    }

    /// "grown at main.buildGrown (main.go:97)".
    pub fn heading(&self) -> String {
        format!("{} {}", self.report.site_kind.verb(), self.report.site)
    }

    pub fn type_text(&self) -> String {
        self.report.type_info.as_ref().map_or_else(
            || "type unknown (its descriptor did not read)".into(),
            |info| info.describe(),
        )
    }

    /// "bucket map: 2^10 buckets, 37 overflow buckets; …" or "swiss map: 16 tables, …".
    pub fn structure(&self) -> String {
        let shape = &self.report.shape;
        match shape.layout {
            MapLayout::Buckets => {
                let log2 = shape.log2_buckets.unwrap_or(0);
                let buckets = shape.units.iter().filter(|unit| !unit.old).count();
                let overflow: u64 = shape
                    .units
                    .iter()
                    .map(|unit| u64::from(unit.overflow))
                    .sum();
                let growth = shape.evacuation.map_or(String::new(), |growth| {
                    let waiting = shape.units.iter().filter(|unit| unit.old).count() as u64;
                    format!(
                        "; {}: {} of {} old buckets evacuated, {} not yet evacuated",
                        if growth.same_size {
                            "same-size growth"
                        } else {
                            "growing"
                        },
                        growth.old_buckets.saturating_sub(waiting),
                        growth.old_buckets,
                        things(waiting, "old bucket"),
                    )
                });
                if buckets == 0 {
                    return "bucket map: no buckets allocated yet".into();
                }
                format!(
                    "bucket map: 2^{log2} buckets ({buckets}), {}{growth}",
                    things(overflow, "overflow bucket")
                )
            }
            MapLayout::Swiss => {
                let tombstones = shape.tombstones();
                if shape.tables.is_empty() {
                    format!(
                        "swiss map: small, one group of 8 slots, {}, {}",
                        things(shape.entries, "full slot"),
                        things(tombstones, "tombstone"),
                    )
                } else {
                    format!(
                        "swiss map: {} (directory of {}), {} of 8 slots, {}, {}",
                        things(shape.tables.len() as u64, "table"),
                        shape.directory_len.unwrap_or(0),
                        things(shape.units.len() as u64, "group"),
                        things(shape.entries, "full slot"),
                        things(tombstones, "tombstone"),
                    )
                }
            }
        }
    }

    /// "12000 entries in 16384 slots (73% full)".
    pub fn occupancy(&self) -> String {
        let shape = &self.report.shape;
        format!(
            "{} entries in {} slots ({} full)",
            shape.entries,
            shape.capacity_slots,
            percent(shape.entries as f64 / shape.capacity_slots.max(1) as f64)
        )
    }

    pub fn bytes(&self) -> String {
        let bytes = self.report.shape.bytes;
        if bytes < 1024 {
            human_bytes(bytes)
        } else {
            format!("{} ({bytes} B)", human_bytes(bytes))
        }
    }

    /// "grew 3 times, 12 overflow buckets allocated" (overflows only for bucket maps).
    pub fn watched(&self) -> String {
        let growths = match self.report.growths {
            0 => "did not grow".to_string(),
            1 => "grew once".to_string(),
            count => format!("grew {count} times"),
        };
        match self.layout() {
            MapLayout::Buckets => format!(
                "{growths}, {} allocated",
                things(self.report.overflows, "overflow bucket")
            ),
            MapLayout::Swiss => format!("{growths} (table growths and splits)"),
        }
    }

    /// "1200 lookups, 300 assigns, 0 deletes, 2 ranges per second", when a window measured it.
    pub fn operations(&self) -> Option<String> {
        self.report.operations_per_second.map(|rates| {
            format!(
                "{} lookups, {} assigns, {} deletes, {} ranges started per second",
                rate(rates.lookups),
                rate(rates.assigns),
                rate(rates.deletes),
                rate(rates.iterations)
            )
        })
    }

    /// The figures with their labels, in reading order.
    pub fn rows(&self) -> Vec<Row> {
        let row = |label, value: String| Row {
            label,
            values: vec![value],
        };
        let mut rows = vec![row("type", self.type_text())];
        // Address 0 is no map's: it stands for an address withheld (`MapReport::withhold`).
        if self.report.address != 0 {
            rows.push(row("map", format!("{:#x}", self.report.address)));
        }
        rows.extend([
            row("structure", self.structure()),
            row("entries", self.occupancy()),
            row("bytes", self.bytes()),
            row("while watched", self.watched()),
        ]);
        if let Some(operations) = self.operations() {
            rows.push(row("operations", operations));
        }
        rows.push(row("verdict", self.spread.headline()));
        if self.spread.comparable() {
            rows.push(row("statistic", self.spread.statistic()));
            rows.push(row("distance", self.spread.distance_line()));
            rows.push(row("expectation", self.spread.model.describe()));
        }
        rows.push(Row {
            label: "why it looks so",
            values: self.spread.reasons.clone(),
        });
        if !self.advice.is_empty() {
            rows.push(Row {
                label: "advice",
                values: self.advice.clone(),
            });
        }
        rows
    }

    /// The lines above the cells, after the heading.
    pub fn info_lines(&self) -> Vec<String> {
        let mut lines = vec![
            if self.report.address == 0 {
                self.type_text()
            } else {
                format!("{}, map {:#x}", self.type_text(), self.report.address)
            },
            self.structure(),
            format!("{}, {}", self.occupancy(), self.bytes()),
            format!("while watched: {}", self.watched()),
        ];
        if let Some(operations) = self.operations() {
            lines.push(operations);
        }
        lines
    }

    /// The lines under the cells and the chart, after the verdict: its statistic and what it
    /// was compared with, why the map looks the way it does, what to do.
    pub fn closing_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.spread.comparable() {
            lines.push(self.spread.statistic());
            lines.push(self.spread.distance_line());
            lines.push(format!("expectation: {}", self.spread.model.describe()));
        }
        lines.extend(
            self.spread
                .reasons
                .iter()
                .map(|reason| format!("· {reason}")),
        );
        lines.extend(self.advice.iter().map(|advice| format!("→ {advice}")));
        lines
    }

    /// What marks an outlined cell: a chain (bucket maps) or tombstones (swiss tables).
    pub fn mark_name(&self) -> &'static str {
        match self.layout() {
            MapLayout::Buckets => "overflow chain",
            MapLayout::Swiss => "tombstones",
        }
    }

    pub fn marked(&self, band: &Band) -> bool {
        match self.layout() {
            MapLayout::Buckets => band.max_overflow > 0,
            MapLayout::Swiss => band.tombstones > 0,
        }
    }

    /// A cell's tooltip.
    pub fn band_text(&self, band: &Band) -> String {
        let unit = self.unit();
        let which = if band.units <= 1 {
            format!("{unit} {}", band.first)
        } else {
            format!("{unit}s {}..{}", band.first, band.first + band.units - 1)
        };
        match self.layout() {
            MapLayout::Buckets => format!(
                "{}{which}: {} entries, longest overflow chain {} buckets",
                if band.old {
                    "old, not yet evacuated: "
                } else {
                    ""
                },
                band.entries,
                band.max_overflow
            ),
            MapLayout::Swiss => format!(
                "{which}: {}, {}",
                things(band.entries, "full slot"),
                things(band.tombstones, "tombstone")
            ),
        }
    }

    /// The one-line summary: the picture's accessible name, and what scripts grep for.
    pub fn summary(&self) -> String {
        let type_info = self
            .report
            .type_info
            .as_ref()
            .map_or(String::new(), |info| format!(" — {}", info.describe()));
        format!(
            "{}{type_info} — {}; {}, {}; {}; {}",
            self.heading(),
            self.structure(),
            self.occupancy(),
            human_bytes(self.report.shape.bytes),
            self.watched(),
            self.spread.headline()
        )
    }

    /// The chart's bins: 0..=8 for groups; for buckets 0 up to the largest value seen or
    /// expected (at least 10, so the overfull line shows), values from [`MAX_BIN`] on in one.
    pub fn bins(&self) -> Vec<Bin> {
        let spread = &self.spread;
        let top = match self.layout() {
            MapLayout::Swiss => spread::SLOTS,
            MapLayout::Buckets => {
                let seen = spread.observed.keys().next_back().copied().unwrap_or(0);
                let expected = spread
                    .expected
                    .iter()
                    .filter(|&(_, &count)| count >= 0.5)
                    .map(|(&value, _)| value)
                    .next_back()
                    .unwrap_or(0);
                seen.max(expected).clamp(spread::SLOTS + 2, MAX_BIN)
            }
        };
        (0..=top)
            .map(|value| {
                let tail = value == MAX_BIN;
                let range = if tail {
                    value..=u32::MAX
                } else {
                    value..=value
                };
                Bin {
                    value,
                    tail,
                    observed: spread.observed.range(range.clone()).map(|(_, &n)| n).sum(),
                    // An empty f64 sum is -0.0: adding 0.0 makes it read 0.
                    expected: spread.expected.range(range).map(|(_, &n)| n).sum::<f64>() + 0.0,
                }
            })
            .collect()
    }

    pub fn verdict_colour(&self) -> &'static str {
        match self.spread.verdict {
            Verdict::LikeRandom => "#1a7f37",
            Verdict::Collide { .. } => "#b42318",
        }
    }
}

/// The chart's last bin holds this value and every larger one.
pub(super) const MAX_BIN: u32 = 32;

/// One value of the chart: units observed with it and expected from a random hash.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Bin {
    pub value: u32,
    /// The last bin: this value and above.
    pub tail: bool,
    pub observed: u64,
    pub expected: f64,
}

impl Bin {
    pub fn label(&self) -> String {
        if self.tail {
            format!("{}+", self.value)
        } else {
            self.value.to_string()
        }
    }
}

fn rate(value: f64) -> String {
    if value >= 10.0 || value == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// The colour scale: mean entries per bucket (or full slots per group) from 0 (white) through
/// 4 (yellow) to 8 or more (dark red).
pub(super) fn colour(mean: f64) -> (u8, u8, u8) {
    let level = (mean / 8.0).clamp(0.0, 1.0);
    let (red, green, blue) = if level < 0.5 {
        (255.0, 255.0, 255.0 * (1.0 - level * 2.0))
    } else {
        (
            255.0 - 80.0 * (level - 0.5) * 2.0,
            255.0 * (1.0 - (level - 0.5) * 2.0),
            0.0,
        )
    };
    (red as u8, green as u8, blue as u8)
}

pub(super) fn band_mean(band: &Band) -> f64 {
    band.entries as f64 / band.units.max(1) as f64
}

pub(super) fn hex((red, green, blue): (u8, u8, u8)) -> String {
    format!("#{red:02x}{green:02x}{blue:02x}")
}

/// The values the colour scale's legend names.
pub(super) const SCALE_TICKS: [u32; 5] = [0, 2, 4, 6, 8];

/// Old buckets not yet evacuated are outlined in this blue.
pub(super) const OLD_BLUE: (u8, u8, u8) = (0x1f, 0x5f, 0xbf);

/// Break `text` into lines of at most `width` characters at spaces (a word longer than a line is
/// cut where the line ends); lines after the first start with `indent` spaces.
pub(super) fn wrap(text: &str, width: usize, indent: usize) -> Vec<String> {
    let width = width.max(indent + 8);
    let mut lines: Vec<Vec<char>> = Vec::new();
    let mut line: Vec<char> = Vec::new();
    // Nothing but the indent on the line yet.
    let mut blank = true;
    for word in text.split(' ').filter(|word| !word.is_empty()) {
        let mut word: Vec<char> = word.chars().collect();
        // A word that does not fit after a space, but fits on a line of its own, starts one.
        if !blank && line.len() + 1 + word.len() > width && indent + word.len() <= width {
            lines.push(std::mem::replace(&mut line, vec![' '; indent]));
            blank = true;
        }
        if !blank {
            if line.len() + 2 > width {
                lines.push(std::mem::replace(&mut line, vec![' '; indent]));
            } else {
                line.push(' ');
            }
        }
        // The word, cut where lines end (after a '/', '.' or such in the line's second half,
        // if there is one). At least one character of room each time: a fresh line holds the
        // indent and 8 more.
        while word.len() > width - line.len() {
            let room = width - line.len();
            let cut = word[..room]
                .iter()
                .rposition(|&char| matches!(char, '/' | '.' | ',' | ';' | ')' | ']' | '*'))
                .map(|at| at + 1)
                .filter(|&cut| 2 * cut >= room)
                .unwrap_or(room);
            line.extend(word.drain(..cut));
            lines.push(std::mem::replace(&mut line, vec![' '; indent]));
        }
        line.append(&mut word);
        blank = false;
    }
    if !blank || lines.is_empty() {
        lines.push(line);
    }
    lines
        .into_iter()
        .map(|line| line.into_iter().collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_keeps_every_line_within_the_width_and_every_character() {
        let long = format!("grown at main.{} (main.go:97)", "x".repeat(300));
        for width in [10usize, 37, 80, 200] {
            for indent in [0usize, 2] {
                for text in [long.as_str(), "a b c", "", "one  two   three"] {
                    let lines = wrap(text, width, indent);
                    assert!(
                        lines.iter().all(|line| line.chars().count() <= width),
                        "{width}: {lines:?}"
                    );
                    let joined: String = lines.concat().split_whitespace().collect();
                    let original: String = text.split_whitespace().collect();
                    assert_eq!(joined, original, "{width}: {lines:?}");
                }
            }
        }
        assert_eq!(wrap("a b c", 80, 2), vec!["a b c"]);
        assert_eq!(wrap("aaaa bbbb cccc", 9, 2), vec!["aaaa bbbb", "  cccc"]);
    }
}
