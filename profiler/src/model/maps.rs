//! A Go map's shape, as read from the target's memory: how its entries spread over buckets
//! (Go ≤ 1.23) or groups (swiss tables, Go 1.24+), what it holds and what it costs.
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapLayout {
    Buckets,
    Swiss,
}

/// One bucket with its overflow chain (bucket maps), or one group of 8 slots (swiss tables), in
/// the order they sit in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unit {
    /// Entries in the bucket and its chain, or full slots in the group.
    pub entries: u16,
    /// Overflow buckets chained to the bucket (bucket maps).
    pub overflow: u16,
    /// Deleted slots (swiss tables).
    pub tombstones: u8,
    /// A bucket of the old array that a growth has not evacuated yet (bucket maps).
    pub old: bool,
}

/// A growth in progress (bucket maps): the old array is moved over a bucket or two per write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Evacuation {
    pub old_buckets: u64,
    /// `nevacuate`: old buckets below this index have all been moved.
    pub progress: u64,
    pub same_size: bool,
}

/// One swiss table of a map's directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Table {
    pub capacity: u16,
    pub used: u16,
    pub local_depth: u8,
}

/// A map's type, from its type descriptor.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MapTypeInfo {
    /// As `reflect` prints it (`map[string]int`, `main.Index`); `None` when the name could not
    /// be found (a type made at run time, or no moduledata).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Size of a key and of an element, in bytes (`unsafe.Sizeof`). Over 128 bytes the map
    /// keeps a pointer in the slot instead.
    pub key_bytes: u64,
    pub elem_bytes: u64,
}

impl MapTypeInfo {
    /// `map[string]int (16 B keys, 8 B values)`.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} B keys, {} B values)",
            self.name.as_deref().unwrap_or("map of unknown name"),
            self.key_bytes,
            self.elem_bytes
        )
    }
}

/// How mapscope first came to know a map, which says what its site is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteKind {
    /// Seen made with a large size hint (`--map-creations`): the site made it.
    Created,
    /// Seen growing or allocating an overflow bucket: the site wrote to it.
    Grew,
    /// Seen used in a discovery window (lookup, assignment, delete or iteration) after it was
    /// made: the site is code that uses it, not where it was made.
    Accessed,
    /// Held in a package-level variable (found from the binary's DWARF): the site is the
    /// variable's name.
    Variable,
}

impl SiteKind {
    /// How a person reads the site: "made at", "grown at", "used at".
    pub fn verb(self) -> &'static str {
        match self {
            Self::Created => "made at",
            Self::Grew => "grown at",
            Self::Accessed => "used at",
            Self::Variable => "held in variable",
        }
    }
}

/// When a discovery window counted: its start and its length. Rates are the counts divided by
/// `seconds`; the span says which stretch of the target's life they describe (a service's
/// traffic is not steady, nor is its share of a busy node's CPU).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct CountedSpan {
    pub started_unix_ms: u64,
    pub seconds: f64,
}

/// Operations on one map per second, over the last discovery window.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct OpRates {
    /// `v := m[k]`, `v, ok := m[k]`.
    pub lookups: f64,
    /// `m[k] = v`, including inserts.
    pub assigns: f64,
    /// `delete(m, k)` and `clear(m)`.
    pub deletes: f64,
    /// `for k, v := range m` started.
    pub iterations: f64,
}

impl OpRates {
    /// Each rate with its `op` label.
    pub fn by_op(&self) -> [(&'static str, f64); 4] {
        [
            ("lookup", self.lookups),
            ("assign", self.assigns),
            ("delete", self.deletes),
            ("iterate", self.iterations),
        ]
    }

    pub fn add(&mut self, other: &Self) {
        self.lookups += other.lookups;
        self.assigns += other.assigns;
        self.deletes += other.deletes;
        self.iterations += other.iterations;
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MapShape {
    pub layout: MapLayout,
    pub entries: u64,
    /// Slots the map can hold without allocating: 8 per bucket reachable (bucket array and
    /// chains; old buckets not yet evacuated included), or the tables' capacities (8 for a
    /// small map's single group).
    pub capacity_slots: u64,
    /// Bytes the map holds: header, bucket arrays (with their preallocated overflow buckets)
    /// and separately allocated overflow buckets; or header, directory, tables and groups.
    /// Keys and values stored indirectly (over 128 bytes) are not included.
    pub bytes: u64,
    #[serde(skip)]
    pub units: Vec<Unit>,
    /// Bucket maps: log2 of the bucket count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log2_buckets: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evacuation: Option<Evacuation>,
    /// Swiss tables: the directory's length (0 for a small map) and its distinct tables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory_len: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<Table>,
}

/// Count of units by a value: value → how many units have it.
pub type Distribution = BTreeMap<u32, u64>;

/// A run of consecutive units drawn as one heatmap cell.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Band {
    pub first: u64,
    pub units: u64,
    pub entries: u64,
    pub max_entries: u16,
    pub max_overflow: u16,
    pub tombstones: u64,
    pub old: bool,
}

impl MapShape {
    fn distribution(&self, value: impl Fn(&Unit) -> u32) -> Distribution {
        let mut counts = Distribution::new();
        for unit in &self.units {
            *counts.entry(value(unit)).or_default() += 1;
        }
        counts
    }

    /// Deleted slots (tombstones) in all its groups (swiss tables; 0 for bucket maps).
    pub fn tombstones(&self) -> u64 {
        self.units
            .iter()
            .map(|unit| u64::from(unit.tombstones))
            .sum()
    }

    /// Entries per bucket including its chain, or full slots per group.
    pub fn entries_per_unit(&self) -> Distribution {
        self.distribution(|unit| u32::from(unit.entries))
    }

    /// Overflow chain length per bucket (bucket maps only).
    pub fn overflow_chains(&self) -> Option<Distribution> {
        (self.layout == MapLayout::Buckets)
            .then(|| self.distribution(|unit| u32::from(unit.overflow)))
    }

    /// Tombstones per group (swiss tables only).
    pub fn tombstones_per_group(&self) -> Option<Distribution> {
        (self.layout == MapLayout::Swiss)
            .then(|| self.distribution(|unit| u32::from(unit.tombstones)))
    }

    /// The units in at most `cells` bands of equal length (the last may be shorter), in index
    /// order; old buckets start a band of their own.
    pub fn bands(&self, cells: usize) -> Vec<Band> {
        let cells = cells.max(1);
        let new_units = self.units.iter().take_while(|unit| !unit.old).count();
        let (new, old) = self.units.split_at(new_units);
        let total = self.units.len().max(1);
        let mut bands = Vec::new();
        for (offset, part) in [(0, new), (new_units, old)] {
            if part.is_empty() {
                continue;
            }
            // Each part gets cells in proportion to its size, at least one.
            let part_cells = (cells * part.len()).div_ceil(total).max(1);
            let width = part.len().div_ceil(part_cells);
            for (index, chunk) in part.chunks(width).enumerate() {
                bands.push(Band {
                    first: (offset + index * width) as u64,
                    units: chunk.len() as u64,
                    entries: chunk.iter().map(|unit| u64::from(unit.entries)).sum(),
                    max_entries: chunk.iter().map(|unit| unit.entries).max().unwrap_or(0),
                    max_overflow: chunk.iter().map(|unit| unit.overflow).max().unwrap_or(0),
                    tombstones: chunk.iter().map(|unit| u64::from(unit.tombstones)).sum(),
                    old: chunk.first().is_some_and(|unit| unit.old),
                });
            }
        }
        bands
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(units: Vec<Unit>) -> MapShape {
        MapShape {
            layout: MapLayout::Buckets,
            entries: units.iter().map(|unit| u64::from(unit.entries)).sum(),
            capacity_slots: 0,
            bytes: 0,
            units,
            log2_buckets: None,
            evacuation: None,
            directory_len: None,
            tables: Vec::new(),
        }
    }

    fn unit(entries: u16, overflow: u16, old: bool) -> Unit {
        Unit {
            entries,
            overflow,
            tombstones: 0,
            old,
        }
    }

    #[test]
    fn distributions_count_units_by_value() {
        let map = shape(vec![
            unit(8, 0, false),
            unit(12, 1, false),
            unit(8, 0, false),
        ]);
        assert_eq!(map.entries_per_unit(), BTreeMap::from([(8, 2), (12, 1)]));
        assert_eq!(
            map.overflow_chains(),
            Some(BTreeMap::from([(0, 2), (1, 1)]))
        );
        assert_eq!(map.tombstones_per_group(), None);
    }

    #[test]
    fn bands_cover_every_unit_once_and_keep_old_buckets_apart() {
        let mut units: Vec<Unit> = (0..1000).map(|i| unit(i % 9, i % 3, false)).collect();
        units.extend((0..500).map(|_| unit(4, 0, true)));
        let map = shape(units);
        let bands = map.bands(64);
        assert!(bands.len() <= 64 + 1, "{} bands", bands.len());
        assert_eq!(bands.iter().map(|band| band.units).sum::<u64>(), 1500);
        assert_eq!(
            bands.iter().map(|band| band.entries).sum::<u64>(),
            map.entries
        );
        let mut next = 0;
        for band in &bands {
            assert_eq!(band.first, next);
            next += band.units;
            assert_eq!(band.old, band.first >= 1000, "band at {}", band.first);
        }
        assert_eq!(bands.iter().map(|band| band.max_overflow).max(), Some(2));
    }

    #[test]
    fn small_maps_get_one_band_per_unit() {
        let map = shape(vec![unit(3, 0, false); 5]);
        let bands = map.bands(4096);
        assert_eq!(bands.len(), 5);
        assert!(
            bands
                .iter()
                .all(|band| band.units == 1 && band.entries == 3)
        );
    }
}
