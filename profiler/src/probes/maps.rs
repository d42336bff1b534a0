//! Where the map probes go: the entry of each map event function of the binary's Go release
//! (growth, overflow), the entry (after its frame setup) and every RET of `makemap` (creation
//! with a large hint), and, for discovery windows only, the entry of every map operation.
use profiler_common::maps::{
    LAYOUT_BUCKETS, LAYOUT_SWISS, MAX_ACCESS_PROBES, MapEventCookie, MapOp,
};

use super::stw::ProbePoint;
use crate::gobin::{
    Function, GoBinary,
    abi::{self, MAKEMAP, MapAbi, MapAbiRow},
};

/// Program names in the eBPF object (profiler-ebpf/src/maps.rs). The event programs differ
/// only in which argument registers hold the map and its type.
const MAP_EVENT: [(u8, u8, &str); 3] = [
    (0, 1, "map_event_map0_type1"),
    (1, 0, "map_event_map1_type0"),
    (2, 1, "map_event_map2_type1"),
];
pub const MAP_CREATE_ENTRY: &str = "map_create_entry";
pub const MAP_CREATE_RETURN: &str = "map_create_return";
pub const MAP_ACCESS: &str = "map_access";
/// The growth and overflow programs' names begin so (one program per register layout).
pub const MAP_EVENT_PREFIX: &str = "map_event_";

/// The discovery window's probes: every map operation function the binary has, after its frame
/// setup so the kernel's stack walk includes the code that called it (the site of a map found
/// there).
///
/// A function that calls another of the same operation is left out: its calls are counted
/// there, once (Go 1.27's `mapaccess1*` is `p, _ := mapaccess2*(…); return p`). The stack walk
/// from the inner one still reaches the code that made the call, the first frame outside the
/// runtime.
pub fn plan_access(binary: &GoBinary, row: &MapAbiRow) -> Vec<ProbePoint> {
    let present: Vec<(Function, MapOp, &'static str)> = abi::MAP_OPERATIONS
        .iter()
        .filter_map(|&(name, op)| Some((binary.function(name)?, op, name)))
        .collect();
    present
        .iter()
        .filter(|(function, op, _)| {
            let calls = binary.call_targets(*function);
            !present.iter().any(|(callee, callee_op, _)| {
                callee_op == op
                    && callee.address != function.address
                    && calls.contains(&callee.address)
            })
        })
        .filter_map(|&(function, op, name)| {
            let address = binary.frame_site(function);
            Some((name, op, address, binary.file_offset(address)?))
        })
        .take(MAX_ACCESS_PROBES as usize)
        .enumerate()
        .map(|(index, (name, op, address, file_offset))| ProbePoint {
            program: MAP_ACCESS,
            function: name,
            address,
            file_offset,
            // `take` keeps the index within the cookie's 8 bits and the hit table.
            cookie: op.access_cookie(layout(row), index as u8),
            object: super::stw::EXECUTABLE,
        })
        .collect()
}

fn layout(row: &MapAbiRow) -> u8 {
    match row.abi {
        MapAbi::Buckets(_) => LAYOUT_BUCKETS,
        MapAbi::Swiss(_) => LAYOUT_SWISS,
    }
}

/// The probe points, and the event functions this binary lacks (the linker drops functions a
/// program never calls: a program without map growth has no `hashGrow`).
/// `creations` adds the `makemap` probes: they fire on every `make(map, n)` whose hint is not a
/// small constant, and the one at its RET is single-stepped by the kernel (tens of µs a call
/// on a VM), so they are opt-in.
pub fn plan(
    binary: &GoBinary,
    row: &MapAbiRow,
    creations: bool,
) -> (Vec<ProbePoint>, Vec<&'static str>) {
    let mut points = Vec::new();
    let mut missing = Vec::new();
    for probe in row.events {
        let Some(program) = MAP_EVENT
            .iter()
            .find(|(map, kind, _)| (*map, *kind) == (probe.map_arg, probe.type_arg))
            .map(|(_, _, name)| *name)
        else {
            missing.push(probe.function);
            continue;
        };
        let Some(function) = binary.function(probe.function) else {
            missing.push(probe.function);
            continue;
        };
        let address = binary.entry_site(function);
        let Some(file_offset) = binary.file_offset(address) else {
            missing.push(probe.function);
            continue;
        };
        let cookie = MapEventCookie {
            event: probe.event,
            map_arg: probe.map_arg,
            type_arg: probe.type_arg,
            layout: layout(row),
        };
        points.push(ProbePoint {
            program,
            function: probe.function,
            address,
            file_offset,
            cookie: cookie.encode(),
            object: super::stw::EXECUTABLE,
        });
    }
    match binary.function(MAKEMAP) {
        _ if !creations => {}
        Some(function) => {
            // makemap is called from the code that makes the map: that caller is the site, so
            // the probe goes where the stack walk includes it.
            let entry = binary.frame_site(function);
            let sites = std::iter::once((MAP_CREATE_ENTRY, entry)).chain(
                binary
                    .ret_sites(function)
                    .into_iter()
                    .map(|ret| (MAP_CREATE_RETURN, ret)),
            );
            for (program, address) in sites {
                if let Some(file_offset) = binary.file_offset(address) {
                    points.push(ProbePoint {
                        program,
                        function: MAKEMAP,
                        address,
                        file_offset,
                        cookie: u64::from(layout(row)),
                        object: super::stw::EXECUTABLE,
                    });
                }
            }
        }
        None => missing.push(MAKEMAP),
    }
    (points, missing)
}
