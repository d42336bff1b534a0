//! Why each GC cycle started: the kinds of `runtime.gcTrigger`, counted in the kernel.

/// `runtime.gcTriggerKind` (src/runtime/mgc.go), the same values from Go 1.19 to 1.27:
/// `gcTriggerHeap` (the heap reached its trigger, from `mallocgc`), `gcTriggerTime` (no cycle
/// for `forcegcperiod`, two minutes: `forcegchelper`) and `gcTriggerCycle` (`runtime.GC`, which
/// `debug.FreeOSMemory` also calls).
pub const TRIGGER_HEAP: u32 = 0;
pub const TRIGGER_TIME: u32 = 1;
pub const TRIGGER_CYCLE: u32 = 2;
/// Number of kinds; the size of the kernel's per-kind counter array.
pub const TRIGGER_KINDS: u32 = 3;

/// The `trigger` label of `mapscope_gc_cycles_by_trigger_total`, by kind. `gcTriggerCycle` is
/// `forced`, as runtime/metrics calls those cycles (`/gc/cycles/forced`).
pub const TRIGGER_NAMES: [&str; TRIGGER_KINDS as usize] = ["heap", "time", "forced"];

/// Where `runtime.gcStart`'s own bail-out check reads (`gp == mp.g0 || mp.locks > 1 ||
/// mp.preemptoff != ""`), packed into the entry probe's attach cookie: the byte offsets of
/// `g.m`, `m.g0`, `m.locks` and `m.preemptoff`, 16 bits each (the userspace table
/// `gobin::abi` gives them per release, checked against DWARF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcStartCookie {
    pub g_m: u16,
    pub m_g0: u16,
    pub m_locks: u16,
    pub m_preemptoff: u16,
}

impl GcStartCookie {
    pub const fn encode(self) -> u64 {
        (self.g_m as u64)
            | ((self.m_g0 as u64) << 16)
            | ((self.m_locks as u64) << 32)
            | ((self.m_preemptoff as u64) << 48)
    }

    pub const fn decode(cookie: u64) -> Self {
        Self {
            g_m: cookie as u16,
            m_g0: (cookie >> 16) as u16,
            m_locks: (cookie >> 32) as u16,
            m_preemptoff: (cookie >> 48) as u16,
        }
    }
}
