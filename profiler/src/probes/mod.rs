//! Which uprobes go where, and attaching them: checks that the machine can run them
//! (`preflight`), the plans computed from the binary (`stw`, `gc_trigger`, `alloc`, `maps`), and
//! the loaded eBPF object.
pub mod alloc;
pub mod calibrate;
pub mod execs;
pub mod gc_trigger;
pub mod loaded;
pub mod maps;
pub mod object;
pub mod preflight;
pub mod stw;

/// What a probe program tells mapscope, in words for `inspect` (the program names are the
/// eBPF object's).
pub fn purpose(program: &str) -> &'static str {
    match program {
        stw::STOP_ENTRY => "world stopping",
        stw::STOP_RETURN => "world stopped (fires inside the pause)",
        stw::START_ENTRY => "world restarting (fires inside the pause)",
        stw::START_RETURN => "world restarted (pause ends)",
        gc_trigger::GC_START_ENTRY => "GC cycle asked for (its trigger)",
        gc_trigger::GC_START_WORKERS => "GC cycle starts (counts its trigger)",
        alloc::ALLOC_SAMPLE => "sampled allocation",
        alloc::ALLOC_EXACT => "every allocation (--alloc-exact)",
        alloc::ALLOC_COUNT => "every allocation, part of the time (runtime sampling off)",
        maps::MAP_CREATE_ENTRY | maps::MAP_CREATE_RETURN => "map made with a large hint",
        maps::MAP_ACCESS => "map operation (discovery windows)",
        name if name.starts_with(maps::MAP_EVENT_PREFIX) => "map grows or overflows",
        crate::native::probes::NATIVE_CALL => "native allocator call (C malloc, free...)",
        crate::native::probes::NATIVE_RETURN => "native allocation returns (--native-inuse)",
        _ => "other",
    }
}

/// Whether `program` is a return probe (`uretprobe`): only on C code, never on Go's.
pub fn is_return_probe(program: &str) -> bool {
    program == crate::native::probes::NATIVE_RETURN
}

/// The family a probe program counts its hits under (`profiler_common::counters::HIT_*`): what
/// `mapscope_probe_hits_total` and the cost figures are labeled by. `None` for the calibration
/// program, which no target carries.
pub fn family(program: &str) -> Option<u32> {
    use profiler_common::counters::*;
    Some(match program {
        stw::STOP_ENTRY | stw::STOP_RETURN | stw::START_ENTRY | stw::START_RETURN => HIT_STW,
        gc_trigger::GC_START_ENTRY | gc_trigger::GC_START_WORKERS => HIT_GC_START,
        alloc::ALLOC_SAMPLE => HIT_ALLOC,
        alloc::ALLOC_EXACT => HIT_ALLOC_EXACT,
        alloc::ALLOC_COUNT => HIT_ALLOC_COUNT,
        maps::MAP_CREATE_ENTRY | maps::MAP_CREATE_RETURN => HIT_MAP_CREATE,
        maps::MAP_ACCESS => HIT_MAP_ACCESS,
        name if name.starts_with(maps::MAP_EVENT_PREFIX) => HIT_MAP_EVENT,
        crate::native::probes::NATIVE_CALL | crate::native::probes::NATIVE_RETURN => HIT_NATIVE,
        _ => return None,
    })
}
