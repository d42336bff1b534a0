//! Go maps: the rare runtime events that reveal a map (growth, overflow-bucket allocation,
//! creation with a large size hint), counted in the kernel by map and by site.

/// What happened to a map, as the attach cookie tells the program (bits 0–7), with the Go ABI
/// argument slots holding the map header (bits 8–15) and the map type (bits 16–23).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapEvent {
    /// The map's storage was replaced by a larger one (bucket maps: `hashGrow`; swiss tables:
    /// a table grown or split, or a small map turned into a table).
    Growth = 0,
    /// A bucket map allocated an overflow bucket (`newoverflow`): 8 more keys hashed to one
    /// full bucket.
    Overflow = 1,
}

pub const MAP_EVENT_KINDS: usize = 2;

/// Attach cookie of the event program: the event and where its arguments are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEventCookie {
    pub event: MapEvent,
    /// Go ABI integer argument slot of the map header pointer.
    pub map_arg: u8,
    /// Go ABI integer argument slot of the map type pointer.
    pub type_arg: u8,
    /// Bucket map (0) or swiss table map (1): how userspace must read it.
    pub layout: u8,
}

impl MapEventCookie {
    pub const fn encode(self) -> u64 {
        (self.event as u64)
            | ((self.map_arg as u64) << 8)
            | ((self.type_arg as u64) << 16)
            | ((self.layout as u64) << 24)
    }

    pub const fn decode(cookie: u64) -> Option<Self> {
        let event = match cookie & 0xff {
            0 => MapEvent::Growth,
            1 => MapEvent::Overflow,
            _ => return None,
        };
        Some(Self {
            event,
            map_arg: ((cookie >> 8) & 0xff) as u8,
            type_arg: ((cookie >> 16) & 0xff) as u8,
            layout: ((cookie >> 24) & 0xff) as u8,
        })
    }
}

pub const LAYOUT_BUCKETS: u8 = 0;
pub const LAYOUT_SWISS: u8 = 1;

/// An operation on a map, as the discovery window's attach cookie tells the program (bits 0–7;
/// the layout in bits 8–15, the probe's index in the window in bits 16–23). Every such runtime function takes the map type first and the map
/// second (Go ABI slots 0 and 1), in every release mapscope supports.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapOp {
    /// `mapaccess1*`, `mapaccess2*`: `v := m[k]`, `v, ok := m[k]`.
    Lookup = 0,
    /// `mapassign*`: `m[k] = v`.
    Assign = 1,
    /// `mapdelete*`, `mapclear`: `delete(m, k)`, `clear(m)`.
    Delete = 2,
    /// `mapiterinit` (bucket maps), `mapIterStart` (swiss tables): a `range` over the map.
    Iterate = 3,
}

pub const MAP_OP_KINDS: usize = 4;

impl MapOp {
    pub const ALL: [Self; MAP_OP_KINDS] = [Self::Lookup, Self::Assign, Self::Delete, Self::Iterate];

    pub const fn access_cookie(self, layout: u8, probe: u8) -> u64 {
        (self as u64) | ((layout as u64) << 8) | ((probe as u64) << 16)
    }

    pub const fn from_index(index: u32) -> Option<Self> {
        match index {
            0 => Some(Self::Lookup),
            1 => Some(Self::Assign),
            2 => Some(Self::Delete),
            3 => Some(Self::Iterate),
            _ => None,
        }
    }
}

/// Key of the discovery window's counts: one map's operations of one kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapOpKey {
    /// The map's header address.
    pub map: u64,
    /// `MapOp` as a number.
    pub op: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<MapOpKey>() == 16);

/// How the kernel first came to know a map (`TrackedMap::found_by`).
pub const FOUND_BY_EVENT: u8 = 0;
pub const FOUND_BY_CREATION: u8 = 1;
pub const FOUND_BY_ACCESS: u8 = 2;
/// Put in the table by userspace: a package-level variable holds it (from the binary's DWARF).
pub const FOUND_BY_VARIABLE: u8 = 3;

/// A map the kernel has seen, keyed by its header address in `TRACKED_MAPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackedMap {
    /// The map's type descriptor (`*maptype` / `*abi.SwissMapType`) in the target.
    pub map_type: u64,
    /// Size hint it was created with, 0 if it was first seen growing or overflowing.
    pub hint: u64,
    /// Events since it was first seen, by `MapEvent`.
    pub events: [u64; MAP_EVENT_KINDS],
    /// Kernel time of the last event (bpf_ktime_get_ns).
    pub last_event_ns: u64,
    /// User stack where it was first seen (created, or grown), in `MAP_STACKS`; negative if
    /// the stack could not be taken. The map's site.
    pub stack_id: i32,
    /// `LAYOUT_BUCKETS` or `LAYOUT_SWISS`.
    pub layout: u8,
    /// `FOUND_BY_*`: whether `stack_id` made, grew or used the map.
    pub found_by: u8,
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<TrackedMap>() == 48);

/// Key of the per-site event counts: the site's stack and the event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapSiteKey {
    pub stack_id: i32,
    pub event: u32,
}

const _: () = assert!(core::mem::size_of::<MapSiteKey>() == 8);

/// A `makemap` call in progress, keyed by goroutine (`g`) from its entry to its return: the
/// goroutine may move to another thread in between, but keeps its `g`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingCreation {
    pub map_type: u64,
    pub hint: u64,
    pub stack_id: i32,
    pub layout: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<PendingCreation>() == 24);

/// Maps remembered at once (least recently touched are forgotten first); 48 B each.
pub const MAX_TRACKED_MAPS: u32 = 8192;
/// Distinct map sites (stacks) and (site, event) counters: a site is a stack id below
/// `MAX_MAP_STACKS` or none (-1), so the counters can never outnumber their table.
pub const MAX_MAP_STACKS: u32 = 1024;
pub const MAX_MAP_SITE_KEYS: u32 = MAP_EVENT_KINDS as u32 * (MAX_MAP_STACKS + 1);
/// Probes a discovery window attaches at most (one per map operation function): each counts its
/// hits at its index, so the busiest come off first.
pub const MAX_ACCESS_PROBES: u32 = 32;
/// (map, operation) pairs counted in one discovery window: only maps of
/// `MIN_TRACKED_ENTRIES` or more are counted, so 4 kinds × 1024 busy big maps. A per-CPU table
/// is preallocated for every CPU (tracing programs cannot use lazily allocated hash maps before
/// Linux 6.1): 4096 × 8 B × CPUs per target, 2 MiB per target on a 64-CPU node.
pub const MAX_MAP_OP_KEYS: u32 = 4096;
/// `makemap` calls in flight at once (one per goroutine inside it).
pub const MAX_PENDING_CREATIONS: u32 = 4096;
/// Growth and overflow events of maps holding fewer entries than this are ignored (the
/// program returns before any stack walk or table update): programs make small maps by the
/// million, and collisions and growth cost matter in big ones.
pub const MIN_TRACKED_ENTRIES: u64 = 128;
/// Maps created with at least this size hint are tracked from creation; smaller ones only once
/// they grow (most `make(map, n)` calls have small hints and are not worth a stack walk).
pub const TRACK_MIN_HINT: u64 = 1024;

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)], Copy, integers only, explicit padding: every byte pattern is valid.
    unsafe impl aya::Pod for super::TrackedMap {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MapSiteKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MapOpKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_round_trips() {
        let cookie = MapEventCookie {
            event: MapEvent::Overflow,
            map_arg: 0,
            type_arg: 1,
            layout: LAYOUT_SWISS,
        };
        assert_eq!(MapEventCookie::decode(cookie.encode()), Some(cookie));
        assert_eq!(MapEventCookie::decode(7), None);
    }

    #[test]
    fn ops_round_trip() {
        for op in MapOp::ALL {
            assert_eq!(MapOp::from_index(op as u32), Some(op));
            let cookie = op.access_cookie(LAYOUT_SWISS, 7);
            assert_eq!(cookie & 0xff, op as u64);
            assert_eq!((cookie >> 8) & 0xff, u64::from(LAYOUT_SWISS));
            assert_eq!(cookie >> 16, 7);
        }
        assert_eq!(MapOp::from_index(4), None);
    }
}
