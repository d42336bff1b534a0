//! Which uprobes go where, and attaching them: checks that the machine can run them
//! (`preflight`), the plans computed from the binary (`stw`, `gc_trigger`, `alloc`, `maps`), and
//! the loaded eBPF object.
pub mod alloc;
pub mod gc_trigger;
pub mod loaded;
pub mod maps;
pub mod preflight;
pub mod stw;

/// What a probe program tells mapscope, in words for `inspect` (the program names are the
/// eBPF object's).
pub fn purpose(program: &str) -> &'static str {
    match program {
        stw::STOP_ENTRY => "world stopping",
        stw::STOP_RETURN => "world stopped",
        stw::START_ENTRY => "world restarting",
        stw::START_RETURN => "world restarted (pause ends)",
        gc_trigger::GC_START_ENTRY => "GC cycle asked for (its trigger)",
        gc_trigger::GC_START_WORKERS => "GC cycle starts (counts its trigger)",
        alloc::ALLOC_SAMPLE => "sampled allocation",
        alloc::ALLOC_EXACT => "every allocation (--alloc-exact)",
        maps::MAP_CREATE_ENTRY | maps::MAP_CREATE_RETURN => "map made with a large hint",
        maps::MAP_ACCESS => "map operation (discovery windows)",
        name if name.starts_with("map_event_") => "map grows or overflows",
        _ => "other",
    }
}
