//! Per-Go-release facts about the runtime functions mapscope probes: one table, each row
//! citing the Go source it was read from, each row tested against a binary built by that
//! release (tests/go_versions.rs).
use profiler_common::stw::StwLayout;

use super::GoVersion;

pub const STOP_THE_WORLD: &str = "runtime.stopTheWorldWithSema";
pub const START_THE_WORLD: &str = "runtime.startTheWorldWithSema";

/// The oldest and newest Go releases this table describes.
pub const OLDEST_SUPPORTED: (u32, u32) = (1, 21);
pub const NEWEST_KNOWN: (u32, u32) = (1, 27);

/// How one range of Go releases stops and starts the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StwAbi {
    pub first: (u32, u32),
    pub last: (u32, u32),
    pub layout: StwLayout,
    /// Stop/start reasons, indexed by the runtime's `stwReason` value.
    pub reasons: &'static [&'static str],
    /// Where in Go's source these facts come from.
    pub source: &'static str,
}

/// `stwReasonStrings`, identical in src/runtime/proc.go of go1.21.13, go1.22.10, go1.23.9,
/// go1.24.11, go1.25.5, go1.26.6 and go1.27.3.
const REASONS_GO121: &[&str] = &[
    "unknown",
    "GC mark termination",
    "GC sweep termination",
    "write heap dump",
    "goroutine profile",
    "goroutine profile cleanup",
    "all goroutines stack trace",
    "read mem stats",
    "AllThreadsSyscall",
    "GOMAXPROCS",
    "start trace",
    "stop trace",
    "CountPagesInUse (test)",
    "ReadMetricsSlow (test)",
    "ReadMemStatsSlow (test)",
    "PageCachePagesLeaked (test)",
    "ResetDebugLog (test)",
];

pub const STW_TABLE: &[StwAbi] = &[
    StwAbi {
        first: (1, 21),
        last: (1, 21),
        layout: StwLayout::Go121,
        reasons: REASONS_GO121,
        source: "go1.21.13 src/runtime/proc.go: func stopTheWorldWithSema(reason stwReason); \
                 func startTheWorldWithSema() int64 (returns the restart time)",
    },
    StwAbi {
        first: (1, 22),
        last: (1, 22),
        layout: StwLayout::Go122,
        reasons: REASONS_GO121,
        source: "go1.22.10 src/runtime/proc.go: type worldStop struct { reason stwReason; \
                 start int64 }; func stopTheWorldWithSema(reason stwReason) worldStop; \
                 func startTheWorldWithSema(now int64, w worldStop) int64",
    },
    StwAbi {
        first: (1, 23),
        last: NEWEST_KNOWN,
        layout: StwLayout::Go123,
        reasons: REASONS_GO121,
        source: "go1.23.9 .. go1.27.3 src/runtime/proc.go: type worldStop struct { reason \
                 stwReason; startedStopping, finishedStopping, stoppingCPUTime int64 }; \
                 func startTheWorldWithSema(now int64, w worldStop) int64",
    },
];

/// What mapscope will do with a binary of this Go version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    Known(&'static StwAbi),
    /// Newer than the table: use the newest row and warn, since the layout may have changed.
    Newer(&'static StwAbi),
    TooOld,
}

pub fn stw_abi(version: GoVersion) -> Support {
    let release = version.release();
    if release < OLDEST_SUPPORTED {
        return Support::TooOld;
    }
    match STW_TABLE
        .iter()
        .find(|row| row.first <= release && release <= row.last)
    {
        Some(row) => Support::Known(row),
        None => match STW_TABLE.last() {
            Some(newest) => Support::Newer(newest),
            None => Support::TooOld,
        },
    }
}

impl StwAbi {
    /// The runtime's name for a `stwReason` value, or `None` if this release has no such value.
    pub fn reason_name(&self, reason: u32) -> Option<&'static str> {
        self.reasons.get(reason as usize).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_release_has_exactly_one_row() {
        for minor in OLDEST_SUPPORTED.1..=NEWEST_KNOWN.1 {
            let rows = STW_TABLE
                .iter()
                .filter(|row| row.first <= (1, minor) && (1, minor) <= row.last)
                .count();
            assert_eq!(rows, 1, "go1.{minor}");
        }
    }

    #[test]
    fn picks_layouts_by_release() {
        let layout = |minor, patch| match stw_abi(GoVersion::new(1, minor, patch)) {
            Support::Known(row) => Some(row.layout),
            _ => None,
        };
        assert_eq!(layout(21, 13), Some(StwLayout::Go121));
        assert_eq!(layout(22, 0), Some(StwLayout::Go122));
        assert_eq!(layout(23, 9), Some(StwLayout::Go123));
        assert_eq!(layout(27, 3), Some(StwLayout::Go123));
        assert_eq!(stw_abi(GoVersion::new(1, 20, 14)), Support::TooOld);
        assert!(
            matches!(stw_abi(GoVersion::new(1, 28, 0)), Support::Newer(row) if row.layout == StwLayout::Go123)
        );
    }

    #[test]
    fn gc_reasons_sit_where_the_runtime_puts_them() {
        let Support::Known(row) = stw_abi(GoVersion::new(1, 27, 3)) else {
            panic!("1.27 is known")
        };
        assert_eq!(row.reason_name(1), Some("GC mark termination"));
        assert_eq!(row.reason_name(2), Some("GC sweep termination"));
        assert_eq!(row.reason_name(7), Some("read mem stats"));
        assert_eq!(row.reason_name(200), None);
    }
}
