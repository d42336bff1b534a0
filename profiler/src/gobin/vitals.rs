//! Which of the runtime's vitals a binary lets mapscope read, and where: the release's row of
//! the vitals table, confirmed by the binary's DWARF when it has some, and the runtime globals
//! found by symbol or through the runtime's code (`runtime_vars::vitals_globals`).
use super::{
    GoBinary,
    abi::{self, VitalsAbi, VitalsSupport},
};
use crate::model::vitals::{Needs, VITALS, Vital};

/// Where the globals are in the file (add the load bias of a PIE).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Globals {
    pub gc_controller: Option<u64>,
    pub memstats: Option<u64>,
    pub work: Option<u64>,
    pub gomaxprocs: Option<u64>,
    pub sched: Option<u64>,
    pub allglen: Option<u64>,
    pub allp: Option<u64>,
}

impl Globals {
    pub fn biased(self, bias: u64) -> Self {
        let add = |address: Option<u64>| address.map(|address| address.wrapping_add(bias));
        Self {
            gc_controller: add(self.gc_controller),
            memstats: add(self.memstats),
            work: add(self.work),
            gomaxprocs: add(self.gomaxprocs),
            sched: add(self.sched),
            allglen: add(self.allglen),
            allp: add(self.allp),
        }
    }
}

/// What mapscope reads from a target of this binary.
#[derive(Clone, Debug, PartialEq)]
pub struct VitalsPlan {
    pub row: &'static VitalsAbi,
    pub globals: Globals,
    /// The vitals this release's runtime has and whose globals were found.
    pub vitals: Vec<&'static Vital>,
    /// Vitals left out, each with why.
    pub missing: Vec<(&'static Vital, String)>,
}

/// The plan for `binary`, or why it gets no vitals at all.
pub fn plan(binary: &GoBinary) -> Result<VitalsPlan, String> {
    let release = binary.version.release();
    let row = match abi::vitals_abi(binary.version) {
        VitalsSupport::Known(row) => row,
        VitalsSupport::Unverified(row) => match binary.dwarf_disagreements(&row.dwarf) {
            Some(found) if found.is_empty() => row,
            Some(_) => {
                return Err(format!(
                    "Go 1.{} is newer than mapscope's table and its DWARF shows another layout",
                    release.1
                ));
            }
            None => {
                return Err(format!(
                    "Go 1.{} is newer than mapscope's table and the binary has no DWARF to \
                     confirm the layout",
                    release.1
                ));
            }
        },
        VitalsSupport::None => return Err("this Go release is not supported".to_owned()),
    };
    if let Some(found) = binary.dwarf_disagreements(&row.dwarf)
        && !found.is_empty()
    {
        return Err(format!(
            "the binary's DWARF disagrees with mapscope's table: {}",
            found.join("; ")
        ));
    }
    let address = |name: &str| binary.function(name).map(|found| found.address);
    let globals = Globals {
        gc_controller: address(abi::GC_CONTROLLER),
        memstats: address(abi::MEMSTATS),
        work: address(abi::WORK).filter(|_| row.cpu_stats.is_some()),
        gomaxprocs: address(abi::GOMAXPROCS),
        sched: address(abi::SCHED),
        allglen: address(abi::ALLGLEN),
        allp: address(abi::ALLP),
    };
    let mut vitals = Vec::new();
    let mut missing = Vec::new();
    for vital in VITALS {
        if !vital.exported_for(release) {
            missing.push((
                vital,
                format!(
                    "runtime/metrics has it from Go 1.{}; not read for Go 1.{}",
                    vital.since.1, release.1
                ),
            ));
            continue;
        }
        let (global, found) = needs(vital, &globals);
        if found {
            vitals.push(vital);
        } else {
            missing.push((vital, format!("{global} not found in the binary")));
        }
    }
    Ok(VitalsPlan {
        row,
        globals,
        vitals,
        missing,
    })
}

/// The global a vital is read from, and whether it was found.
fn needs(vital: &Vital, globals: &Globals) -> (&'static str, bool) {
    let found = |name: &'static str, address: Option<u64>| (name, address.is_some());
    match vital.needs() {
        Needs::GcController => found(abi::GC_CONTROLLER, globals.gc_controller),
        Needs::Memstats => found(abi::MEMSTATS, globals.memstats),
        Needs::Work => found(abi::WORK, globals.work),
        Needs::Gomaxprocs => found(abi::GOMAXPROCS, globals.gomaxprocs),
        Needs::Sched => found(abi::SCHED, globals.sched),
        Needs::Goroutines => [
            (abi::SCHED, globals.sched),
            (abi::ALLGLEN, globals.allglen),
            (abi::ALLP, globals.allp),
        ]
        .into_iter()
        .find(|(_, address)| address.is_none())
        .map_or((abi::ALLP, true), |(name, _)| (name, false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each vital names the global it is read from: with `memstats` missing, the heap totals
    /// and cycle counts are missing for that reason, and the pacer's figures are not.
    #[test]
    fn a_missing_global_takes_only_its_vitals() {
        let globals = Globals {
            gc_controller: Some(0x1000),
            memstats: None,
            ..Globals::default()
        };
        let vital = |name: &str| VITALS.iter().find(|vital| vital.name == name).unwrap();
        for name in [
            "/gc/heap/allocs:bytes",
            "/memory/classes/total:bytes",
            "/gc/cycles/total:gc-cycles",
        ] {
            assert_eq!(
                needs(vital(name), &globals),
                (abi::MEMSTATS, false),
                "{name}"
            );
        }
        assert_eq!(
            needs(vital("/gc/heap/goal:bytes"), &globals),
            (abi::GC_CONTROLLER, true)
        );
        assert!(!needs(vital("/sched/goroutines:goroutines"), &globals).1);
    }
}
