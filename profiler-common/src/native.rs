//! Native allocations: calls into a C allocator's entry points (`malloc`, `free`, jemalloc's
//! `mallocx`, C++'s `operator new`...), counted in the kernel per CPU.

/// What a call does to the heap (`CallShape::role`).
pub const ROLE_ALLOCATES: u8 = 0;
pub const ROLE_REALLOCATES: u8 = 1;
pub const ROLE_FREES: u8 = 2;

/// Set in `CallShape::role` beside `ROLE_REALLOCATES`: `realloc(p, 0)` returns a new empty
/// block (mimalloc) rather than freeing `p` and returning NULL (glibc, jemalloc, tcmalloc).
pub const ZERO_SIZE_ALLOCATES: u8 = 0x80;

/// Set in `CallShape::role`: the call hands its block back through the pointer in its first
/// argument, not as its return value (`posix_memalign`).
pub const RETURNS_THROUGH_ARG0: u8 = 0x40;

/// An argument a call does not have (`CallShape`'s argument indexes).
pub const NO_ARG: u8 = 0xff;

/// The C ABI's integer argument registers an entry point's arguments are read from (RDI, RSI,
/// RDX, RCX, R8, R9 on amd64).
pub const MAX_ARGS: u8 = 6;

/// How to read one entry point's call, packed into its probe's attach cookie: what it does,
/// which integer argument is the size, which one multiplies it (`calloc`'s count,
/// `reallocarray`'s), which one is the pointer freed or moved, and how many bytes of code the
/// function has (a call whose return address lies in them is the allocator calling itself,
/// not the program: at most 2^20 − 1), which of the process's allocators it belongs to (the
/// counters it adds to, `native_counter`), and the entry point's index among the process's
/// (`NATIVE_TAIL_FROM`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallShape {
    pub role: u8,
    pub size_arg: u8,
    pub count_arg: u8,
    pub pointer_arg: u8,
    pub function_bytes: u32,
    pub allocator: u8,
    pub index: u8,
}

impl CallShape {
    pub const fn encode(self) -> u64 {
        (self.role as u64)
            | ((self.size_arg as u64) << 8)
            | ((self.count_arg as u64) << 16)
            | ((self.pointer_arg as u64) << 24)
            | (((self.function_bytes & MAX_FUNCTION_BYTES) as u64) << 32)
            | (((self.allocator & 0xf) as u64) << 52)
            | ((self.index as u64) << 56)
    }

    pub const fn decode(cookie: u64) -> Self {
        Self {
            role: cookie as u8,
            size_arg: (cookie >> 8) as u8,
            count_arg: (cookie >> 16) as u8,
            pointer_arg: (cookie >> 24) as u8,
            function_bytes: ((cookie >> 32) as u32) & MAX_FUNCTION_BYTES,
            allocator: ((cookie >> 52) & 0xf) as u8,
            index: (cookie >> 56) as u8,
        }
    }
}

/// The most code bytes a `CallShape` says an entry point has (1 MiB; allocators' entry points
/// have a few KiB).
pub const MAX_FUNCTION_BYTES: u32 = 0xf_ffff;

/// Allocators of one process counted apart (`CallShape::allocator`): one behind `malloc`, and
/// the prefixed ones beside it.
pub const MAX_ALLOCATORS: u32 = 4;

/// Entry points a process's probes tell apart by index (`CallShape::index`); one past the
/// last is `NO_INDEX`, which no entry point tail-jumps into.
pub const MAX_ENTRY_POINTS: u32 = 64;
pub const NO_INDEX: u8 = 64;

/// The per-CPU counters (`NATIVE_COUNTS`): allocations, their bytes, frees, reallocations,
/// then one count per power of two of the size asked for (`native_size_slot`).
pub const NATIVE_OBJECTS: u32 = 0;
pub const NATIVE_BYTES: u32 = 1;
pub const NATIVE_FREES: u32 = 2;
pub const NATIVE_REALLOCS: u32 = 3;
/// Calls the allocator made to its own entry points (glibc's `realloc` calling `malloc`, a
/// tail jump from one to another), not counted as the program's.
pub const NATIVE_NESTED: u32 = 4;
pub const NATIVE_SIZE_BASE: u32 = 5;
pub const NATIVE_SLOTS: u32 = NATIVE_SIZE_BASE + 65;

/// Where allocator `allocator`'s counter `slot` is in `NATIVE_COUNTS` (`NATIVE_SLOTS` each).
#[inline(always)]
pub const fn native_counter(allocator: u8, slot: u32) -> u32 {
    (allocator as u32 % MAX_ALLOCATORS) * NATIVE_SLOTS + slot
}

/// The size counter of an allocation of `size` bytes: `NATIVE_SIZE_BASE + k` for
/// `2^(k-1) < size <= 2^k` (0 and 1 bytes both in the first), one `le` bucket of a
/// power-of-two histogram each.
#[inline(always)]
pub const fn native_size_slot(size: u64) -> u32 {
    let size = if size == 0 { 1 } else { size };
    NATIVE_SIZE_BASE + (64 - (size - 1).leading_zeros())
}

/// Mean bytes between the allocations whose stacks are taken, as Go's and tcmalloc's samplers
/// take theirs: each allocation is sampled when it reaches the bytes left, then the next
/// distance is drawn from an exponential distribution of this mean (`exponential_distance`),
/// so that a sampled allocation of `n` bytes stands for 1 / (1 − e^(−n/mean)) allocations, as
/// pprof scales Go's.
pub const NATIVE_SAMPLE_BYTES: u64 = 512 * 1024;

/// Key of the kernel's native sample counts (`NATIVE_SAMPLES_0`, `_1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NativeSampleKey {
    /// User stack id in `NATIVE_STACKS` (its second frame the direct caller), or negative if
    /// the stack could not be taken.
    pub stack_id: i32,
    /// `CallShape::allocator`.
    pub allocator: u32,
    /// The size asked for.
    pub size: u64,
}

const _: () = assert!(core::mem::size_of::<NativeSampleKey>() == 16);

/// Entries in each of the two native sample tables: distinct (stack, allocator, size) sampled
/// between two reads.
pub const MAX_NATIVE_SAMPLE_KEYS: u32 = 8192;

/// The two sample tables: the probes fill the one `NATIVE_SAMPLES_FILLING` names while
/// userspace empties the other.
pub const NATIVE_SAMPLE_TABLES: [&str; 2] = ["NATIVE_SAMPLES_0", "NATIVE_SAMPLES_1"];

/// Distinct native allocation stacks kept (`NATIVE_STACKS`).
pub const MAX_NATIVE_STACKS: u32 = 4096;

/// A sampled allocation whose block is not known yet (`--native-inuse`): the allocator returns
/// it. Kept per thread from the entry to the return of that call (the return tells it by its
/// stack pointer, one word above the entry's: the return address popped).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingSample {
    pub sp: u64,
    pub stack_id: i32,
    pub allocator: u32,
    pub size: u64,
    /// Where the call writes the block's address (`posix_memalign`'s first argument); 0: it
    /// returns it.
    pub out: u64,
}

/// A sampled allocation still live (`NATIVE_LIVE`, by its block's address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveSample {
    pub stack_id: i32,
    pub allocator: u32,
    pub size: u64,
    /// When it was allocated (kernel monotonic ns).
    pub at_ns: u64,
}

/// Sampled allocations tracked live at once (`--native-inuse`): at one per 512 KiB on average,
/// 65,536 of them stand for 32 GiB of live heap.
pub const MAX_NATIVE_LIVE: u32 = 65_536;

/// Code ranges (`[start, end)`, in the target's address space) of allocator libraries that
/// allocate only for the program's calls into them (jemalloc, tcmalloc, mimalloc; not the C
/// library, whose `strdup` or `fopen` allocate for the program): a call into an entry point
/// from inside one is the allocator's own, whichever of its functions made it.
pub const MAX_OWN_CODE: u32 = 4;

/// Functions that allocate for their caller (C++'s `operator new` forms: `native::wrappers`):
/// `[start, end, depth]`, their code in the target's address space and the bytes each holds on
/// the stack below its return address when it calls the allocator. A sampled allocation whose
/// return address is in one is its caller's (`[start, end)` empty: unused).
pub const MAX_WRAPPERS: u32 = 8;

/// How many such functions deep a call is followed (the nothrow `operator new` calls the
/// plain one, which calls `malloc`).
pub const MAX_WRAPPER_LEVELS: usize = 3;

/// Threads whose last counted call the kernel keeps, to tell the allocator calling itself
/// from the program calling it (userspace removes those of threads that ended).
pub const MAX_NATIVE_THREADS: u32 = 8192;

/// A thread's last counted call into the allocator: its stack pointer and return address at
/// entry, the function's code (`start..end`), and when (kernel monotonic ns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastCall {
    pub sp: u64,
    pub ret: u64,
    pub start: u64,
    pub end: u64,
    pub at_ns: u64,
    /// Its entry point's index (`CallShape::index`).
    pub index: u64,
}

const _: () = assert!(core::mem::size_of::<LastCall>() == 48);

// A call into another entry point with the same stack pointer and return address as the last
// counted one is that call's tail jump (glibc's `reallocarray` jumps to `realloc`, which jumps
// to `malloc` for a null pointer) when the last one's entry point is known to jump into this
// one, directly or through others (`tail_from`: found in the allocator's code at attach).
// However long after: a time limit (50 µs, then 1 ms) was passed on a busy machine, where the
// thread was preempted between the two hits. Without the knowledge, a wrapper that tail-calls
// `malloc` or `realloc` through a pointer from one call instruction would lose its second call.

/// Whether a call entering at `ip` with stack pointer `sp` and return address `ret` is the
/// allocator's own: made from inside the last counted call's function (nested), or that
/// call's tail jump into this entry point, which `tail_from` (a bit per entry point index)
/// says the last one's may make.
#[inline(always)]
pub fn is_allocators_own(last: &LastCall, ip: u64, sp: u64, ret: u64, tail_from: u64) -> bool {
    let nested = last.start <= ret && ret < last.end && sp < last.sp;
    let tail_jump = sp == last.sp
        && ret == last.ret
        && ip != last.start
        && last.index < u64::from(MAX_ENTRY_POINTS)
        && (tail_from >> last.index) & 1 == 1;
    nested || tail_jump
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)], Copy, integers only, no padding (16 bytes of i32, u32, u64): every
    // byte pattern is valid.
    unsafe impl aya::Pod for super::NativeSampleKey {}
    // SAFETY: as above: #[repr(C)], Copy, integers only, no padding.
    unsafe impl aya::Pod for super::LiveSample {}
    // SAFETY: as above: #[repr(C)], Copy, six u64s.
    unsafe impl aya::Pod for super::LastCall {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_survives_its_cookie() {
        let shape = CallShape {
            role: ROLE_REALLOCATES,
            size_arg: 2,
            count_arg: 1,
            pointer_arg: 0,
            function_bytes: 0x1234,
            allocator: 3,
            index: 17,
        };
        assert_eq!(CallShape::decode(shape.encode()), shape);
    }

    #[test]
    fn sizes_fall_in_power_of_two_slots() {
        assert_eq!(native_size_slot(0), NATIVE_SIZE_BASE);
        assert_eq!(native_size_slot(1), NATIVE_SIZE_BASE);
        assert_eq!(native_size_slot(2), NATIVE_SIZE_BASE + 1);
        assert_eq!(native_size_slot(3), NATIVE_SIZE_BASE + 2);
        assert_eq!(native_size_slot(4096), NATIVE_SIZE_BASE + 12);
        assert_eq!(native_size_slot(4097), NATIVE_SIZE_BASE + 13);
        assert_eq!(native_size_slot(u64::MAX), NATIVE_SLOTS - 1);
    }

    #[test]
    fn the_allocators_own_calls_are_told_from_the_programs() {
        // realloc at 0x1000..0x1400 counted, called from the program at 0x5555 with sp 0x7f00.
        let realloc = LastCall {
            sp: 0x7f00,
            ret: 0x5555,
            start: 0x1000,
            end: 0x1400,
            at_ns: 10_000_000,
            index: 3,
        };
        let from_realloc = 1 << 3;
        // It calls malloc itself: the return address is inside realloc, the stack deeper.
        assert!(is_allocators_own(
            &realloc,
            0x2000,
            0x7ee0,
            0x1100,
            from_realloc
        ));
        // It jumps to malloc (realloc(NULL, n)): same stack pointer and return address.
        assert!(is_allocators_own(
            &realloc,
            0x2000,
            0x7f00,
            0x5555,
            from_realloc
        ));
        // The program calls malloc next, from elsewhere: its own.
        assert!(!is_allocators_own(
            &realloc,
            0x2000,
            0x7f00,
            0x5560,
            from_realloc
        ));
        // The program calls realloc again from the same place: its own.
        assert!(!is_allocators_own(
            &realloc,
            0x1000,
            0x7f00,
            0x5555,
            from_realloc
        ));
        // The same place calls malloc next, through a pointer, but realloc never jumps there.
        assert!(!is_allocators_own(&realloc, 0x2000, 0x7f00, 0x5555, 0));
        // A return address inside realloc's code on a shallower stack is a stale record: the
        // program's own.
        assert!(!is_allocators_own(
            &realloc,
            0x2000,
            0x7f40,
            0x1100,
            from_realloc
        ));
    }
}
