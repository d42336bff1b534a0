//! Go maps, learned from the runtime's rare map events (growth, overflow-bucket allocation,
//! creation with a large size hint), and from short discovery windows in which every map
//! operation is probed. No probe stays on inserts or lookups: one hit costs microseconds, an
//! insert nanoseconds; the windows are duty-cycled by userspace.
//!
//! A map is first seen at one of those points; the kernel remembers it by header address with
//! the user stack of that moment (its site), and counts every later event of that map against
//! the same site without walking the stack again. Userspace reads the maps' memory from there.
use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user, generated::bpf_get_attach_cookie},
    macros::{map, uprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::ProbeContext,
};
use profiler_common::{
    counters,
    maps::{
        FOUND_BY_ACCESS, FOUND_BY_CREATION, FOUND_BY_EVENT, MAX_ACCESS_PROBES, MAX_MAP_OP_KEYS,
        MAX_MAP_SITE_KEYS, MAX_MAP_STACKS, MAX_PENDING_CREATIONS, MAX_TRACKED_MAPS,
        MIN_TRACKED_ENTRIES, MapEvent, MapEventCookie, MapOpKey, MapSiteKey, PendingCreation,
        TRACK_MIN_HINT, TrackedMap,
    },
    stacks::UserStack,
};

use crate::{
    counters::{EEXIST, add, add_at, bump, hit, hit_governed},
    goabi::GoRegs,
};

/// Sites of maps: the user stack at the event where each map was first seen, the innermost
/// `STACK_DEPTH` frames.
#[map]
static MAP_STACKS: HashMap<u32, UserStack> = HashMap::with_max_entries(MAX_MAP_STACKS, 0);

/// Maps seen, by header address. LRU: a freed map that never shows again ages out.
#[map]
static TRACKED_MAPS: LruHashMap<u64, TrackedMap> =
    LruHashMap::with_max_entries(MAX_TRACKED_MAPS, 0);

/// Events by (site, event), per CPU: the exact counts behind the Prometheus counters.
#[map]
static MAP_SITE_EVENTS: PerCpuHashMap<MapSiteKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_MAP_SITE_KEYS, 0);

/// `makemap` calls between entry and return, by goroutine.
#[map]
static PENDING_CREATIONS: HashMap<u64, PendingCreation> =
    HashMap::with_max_entries(MAX_PENDING_CREATIONS, 0);

#[inline(always)]
fn user_stack(ctx: &ProbeContext) -> i32 {
    crate::stacks::user_stack(ctx, &MAP_STACKS)
}

#[inline(always)]
fn count_at_site(stack_id: i32, event: MapEvent) {
    let key = MapSiteKey {
        stack_id,
        event: event as u32,
    };
    add_at(&MAP_SITE_EVENTS, &key, 1, counters::MAP_TABLE_FULL);
}

/// A growth or overflow event: the cookie says which. `MAP` and `TYPE` are the Go ABI
/// argument slots of the map header and the map type; they are constants, one program per
/// pair, because the verifier refuses a register chosen at run time (a variable offset into
/// the context).
#[inline(always)]
fn on_event<const MAP: usize, const TYPE: usize>(ctx: &ProbeContext) -> u32 {
    // SAFETY: the helper only reads the cookie attached to this program's perf event.
    let Some(cookie) = MapEventCookie::decode(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) })
    else {
        return 0;
    };
    let regs = GoRegs::new(ctx);
    let map = regs.int(MAP);
    if map == 0 {
        return 0;
    }
    // Small maps come and go by the million; their events are not worth a stack walk or a
    // table slot. Both layouts keep the entry count first (hmap.count, maps.Map.used).
    // SAFETY: bpf_probe_read_user checks the address and fails cleanly.
    match unsafe { bpf_probe_read_user(map as *const u64) } {
        Ok(entries) if entries >= MIN_TRACKED_ENTRIES => {}
        _ => return 0,
    }
    // SAFETY: reads the kernel's monotonic clock; no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let slot = match cookie.event {
        MapEvent::Growth => 0,
        MapEvent::Overflow => 1,
    };
    let stack_id = if let Some(tracked) = TRACKED_MAPS.get_ptr_mut(map) {
        // SAFETY: the value lives in the map while this program runs. Two CPUs updating one
        // map's entry at once may lose an increment: these per-map figures only rank maps for
        // snapshots; the exported counts are the per-CPU site counts below.
        unsafe {
            (*tracked).events[slot] += 1;
            (*tracked).last_event_ns = now;
            (*tracked).stack_id
        }
    } else {
        let stack_id = user_stack(ctx);
        let mut tracked = TrackedMap {
            map_type: regs.int(TYPE),
            hint: 0,
            events: [0; 2],
            last_event_ns: now,
            stack_id,
            layout: cookie.layout,
            found_by: FOUND_BY_EVENT,
            _pad: [0; 2],
        };
        tracked.events[slot] = 1;
        if TRACKED_MAPS.insert(map, tracked, 0).is_err() {
            bump(counters::MAP_TABLE_FULL);
        }
        stack_id
    };
    count_at_site(stack_id, cookie.event);
    0
}

/// Map in RAX, type in RBX: `(*hmap).newoverflow(t, b)`.
#[uprobe]
pub fn map_event_map0_type1(ctx: ProbeContext) -> u32 {
    if !hit_governed(counters::HIT_MAP_EVENT) {
        return 0;
    }
    on_event::<0, 1>(&ctx)
}

/// Map in RBX, type in RAX: `hashGrow(t, h)`.
#[uprobe]
pub fn map_event_map1_type0(ctx: ProbeContext) -> u32 {
    if !hit_governed(counters::HIT_MAP_EVENT) {
        return 0;
    }
    on_event::<1, 0>(&ctx)
}

/// Map in RCX, type in RBX: `(*table).grow(typ, m, n)`, `(*table).split(typ, m)`.
#[uprobe]
pub fn map_event_map2_type1(ctx: ProbeContext) -> u32 {
    if !hit_governed(counters::HIT_MAP_EVENT) {
        return 0;
    }
    on_event::<2, 1>(&ctx)
}

/// `makemap(t *maptype, hint int, h *hmap) *hmap` (bucket maps) and
/// `makemap(t *abi.SwissMapType, hint int, m *maps.Map) *maps.Map` (Go 1.24+), at entry: the
/// type and hint are known here, the map only at the return. The cookie carries the layout.
#[uprobe]
pub fn map_create_entry(ctx: ProbeContext) -> u32 {
    hit(counters::HIT_MAP_CREATE);
    let regs = GoRegs::new(&ctx);
    let hint = regs.int(1);
    // A negative hint is refused by the runtime; small ones are not worth a stack walk.
    if (hint as i64) < TRACK_MIN_HINT as i64 {
        return 0;
    }
    let pending = PendingCreation {
        map_type: regs.int(0),
        hint,
        stack_id: user_stack(&ctx),
        // SAFETY: as in `map_event`.
        layout: unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u8,
        _pad: [0; 3],
    };
    if PENDING_CREATIONS.insert(regs.g(), pending, 0).is_err() {
        bump(counters::MAP_UNMATCHED_CREATION);
    }
    0
}

/// At each RET of `makemap`: the new map is the result (first result register).
#[uprobe]
pub fn map_create_return(ctx: ProbeContext) -> u32 {
    hit(counters::HIT_MAP_CREATE);
    let regs = GoRegs::new(&ctx);
    let g = regs.g();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(pending) = (unsafe { PENDING_CREATIONS.get(g) }).copied() else {
        return 0;
    };
    let _ = PENDING_CREATIONS.remove(g);
    let map = regs.int(0);
    if map == 0 {
        return 0;
    }
    let tracked = TrackedMap {
        map_type: pending.map_type,
        hint: pending.hint,
        events: [0; 2],
        // SAFETY: as in `map_event`.
        last_event_ns: unsafe { bpf_ktime_get_ns() },
        stack_id: pending.stack_id,
        layout: pending.layout,
        found_by: FOUND_BY_CREATION,
        _pad: [0; 2],
    };
    // Replaces whatever was known at this address: a new map there is a new identity.
    if TRACKED_MAPS.insert(map, tracked, 0).is_err() {
        bump(counters::MAP_TABLE_FULL);
    }
    0
}

/// Operations by (map, kind), counted while a discovery window has the access probes attached
/// (a short window now and then: they fire on every map operation of the target).
#[map]
static MAP_OPS: PerCpuHashMap<MapOpKey, u64> = PerCpuHashMap::with_max_entries(MAX_MAP_OP_KEYS, 0);

/// Hits of each discovery probe, by its index in the window (cookie bits 16–23).
#[map]
static MAP_ACCESS_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_ACCESS_PROBES, 0);

/// Entry (after the frame setup, so the stack walk includes the caller) of every map
/// operation: `mapaccess1*/2*(t, m, key)`, `mapassign*(t, m, key)`, `mapdelete*(t, m, key)`,
/// `mapclear(t, m)`, `mapiterinit(t, h, it)` / `mapIterStart(t, m, it)`: the type in RAX, the
/// map in RBX, Go 1.19 through 1.27. The cookie carries the operation and the layout.
///
/// A map of `MIN_TRACKED_ENTRIES` or more that the kernel does not know yet is tracked from
/// here, with this stack (code that uses it) as its site: that is how maps made before mapscope
/// attached, and never grown since, are found.
#[uprobe]
pub fn map_access(ctx: ProbeContext) -> u32 {
    hit(counters::HIT_MAP_ACCESS);
    // SAFETY: the helper only reads the cookie attached to this program's perf event.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    if let Some(hits) = MAP_ACCESS_HITS.get_ptr_mut(((cookie >> 16) & 0xff) as u32) {
        add(hits, 1);
    }
    let regs = GoRegs::new(&ctx);
    let map = regs.int(1);
    if map == 0 {
        return 0;
    }
    // As in `on_event`: small maps are neither tracked nor counted.
    // SAFETY: bpf_probe_read_user checks the address and fails cleanly.
    match unsafe { bpf_probe_read_user(map as *const u64) } {
        Ok(entries) if entries >= MIN_TRACKED_ENTRIES => {}
        _ => return 0,
    }
    if TRACKED_MAPS.get_ptr(map).is_none() {
        let tracked = TrackedMap {
            map_type: regs.int(0),
            hint: 0,
            events: [0; 2],
            // SAFETY: as in `on_event`.
            last_event_ns: unsafe { bpf_ktime_get_ns() },
            stack_id: user_stack(&ctx),
            layout: ((cookie >> 8) & 0xff) as u8,
            found_by: FOUND_BY_ACCESS,
            _pad: [0; 2],
        };
        // Another CPU may have tracked it meanwhile, by an access or an event: keep theirs.
        if let Err(error) = TRACKED_MAPS.insert(map, tracked, u64::from(BPF_NOEXIST))
            && error != -EEXIST
        {
            bump(counters::MAP_TABLE_FULL);
        }
    }
    let key = MapOpKey {
        map,
        op: (cookie & 0xff) as u32,
        _pad: 0,
    };
    add_at(&MAP_OPS, &key, 1, counters::MAP_TABLE_FULL);
    0
}
