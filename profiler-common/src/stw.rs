//! Stop-the-world (STW) pauses: the probe layouts and the event the kernel sends per pause.

/// How a Go release passes stop/start-the-world facts between its runtime functions.
///
/// Sent to the kernel programs as the uprobe attach cookie, so one program serves every Go
/// version. The userspace table `gobin::abi` says which Go release uses which layout and cites
/// the Go source for each.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StwLayout {
    /// Go 1.19: `stopTheWorldWithSema()` takes no reason: callers put it in `m.preemptoff`
    /// (a string) first, so the kernel reads it through the current g (R14) → `g.m`. The
    /// start side is as in Go 1.21.
    Go119 = 4,
    /// Go 1.21: `stopTheWorldWithSema(reason stwReason)` and `startTheWorldWithSema() int64`.
    /// The runtime hands no start time between the two, so the kernel clock stands in for it.
    Go121 = 1,
    /// Go 1.22: `worldStop{reason, start}` is returned by stop and passed to
    /// `startTheWorldWithSema(now int64, w worldStop) int64`.
    Go122 = 2,
    /// Go 1.23 and later: `worldStop{reason, startedStopping, finishedStopping, stoppingCPUTime}`.
    Go123 = 3,
}

/// Everything a probe needs to know about its Go release, packed into the 64-bit attach cookie:
/// the layout in bits 0–7, the offset of `g.m` in bits 8–23 and of `m.preemptoff` in bits 24–39
/// (both only used by `Go119`), and the `StwFrame` in bits 40–51 and 52–63.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StwCookie {
    pub layout: StwLayout,
    pub g_m_offset: u16,
    pub m_preemptoff_offset: u16,
    pub frame: Option<StwFrame>,
}

/// Where `startTheWorldWithSema` (Go 1.22+) keeps its argument `w`'s reason and start of
/// stopping in its own frame, as distances below the stack pointer at its RET instructions,
/// where that frame has just been popped but not yet overwritten (found by disassembly,
/// `gobin::disasm::spill_slots`). With them the RET probe alone reads the pause, and no probe
/// fires while the world is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StwFrame {
    /// The `stwReason` byte.
    pub reason_below_sp: u16,
    /// `w.start` (1.22) / `w.startedStopping` (1.23+), 8 bytes.
    pub started_below_sp: u16,
}

impl StwFrame {
    /// Each distance has 12 bits of the cookie; 0 is no distance (the slot is below the SP).
    pub const MAX_BELOW_SP: u16 = 0xfff;
}

impl StwCookie {
    pub const fn encode(self) -> u64 {
        let frame = match self.frame {
            Some(frame) => {
                ((frame.reason_below_sp & StwFrame::MAX_BELOW_SP) as u64) << 40
                    | ((frame.started_below_sp & StwFrame::MAX_BELOW_SP) as u64) << 52
            }
            None => 0,
        };
        (self.layout as u64)
            | ((self.g_m_offset as u64) << 8)
            | ((self.m_preemptoff_offset as u64) << 24)
            | frame
    }

    pub const fn decode(cookie: u64) -> Option<Self> {
        let layout = match cookie & 0xff {
            1 => StwLayout::Go121,
            2 => StwLayout::Go122,
            3 => StwLayout::Go123,
            4 => StwLayout::Go119,
            _ => return None,
        };
        let reason_below_sp = (cookie >> 40) as u16 & StwFrame::MAX_BELOW_SP;
        let started_below_sp = (cookie >> 52) as u16 & StwFrame::MAX_BELOW_SP;
        Some(Self {
            layout,
            g_m_offset: ((cookie >> 8) & 0xffff) as u16,
            m_preemptoff_offset: ((cookie >> 24) & 0xffff) as u16,
            frame: if reason_below_sp != 0 && started_below_sp != 0 {
                Some(StwFrame {
                    reason_below_sp,
                    started_below_sp,
                })
            } else {
                None
            },
        })
    }
}

/// `finished_stopping_ns` was read from the kernel clock at the return of
/// `stopTheWorldWithSema`, because this Go version does not expose the runtime's own value.
pub const STW_FLAG_STOPPED_BY_KERNEL_CLOCK: u32 = 1 << 0;
/// `started_stopping_ns` was read from the kernel clock at the entry of
/// `stopTheWorldWithSema` (Go 1.19 and 1.21), rather than being the runtime's own value.
pub const STW_FLAG_STARTED_BY_KERNEL_CLOCK: u32 = 1 << 1;
/// The reason is the text in `reason_text` (Go 1.19's `m.preemptoff`), not a `stwReason`.
pub const STW_FLAG_REASON_IS_TEXT: u32 = 1 << 2;

/// Bytes of reason text carried (Go 1.19's longest, "doAllThreadsSyscall", has 19).
pub const REASON_TEXT_LEN: usize = 24;

/// One stop-the-world pause, sent from `startTheWorldWithSema`'s return to userspace.
///
/// All times are `CLOCK_MONOTONIC` nanoseconds: Go's `nanotime()` on Linux and the kernel's
/// `bpf_ktime_get_ns()` read the same clock, so runtime and kernel timestamps subtract cleanly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StwEvent {
    /// Thread-group id (the PID a user sees).
    pub pid: u32,
    /// The runtime's `stwReason` value; its meaning is per Go version (`gobin::abi`). With
    /// `STW_FLAG_REASON_IS_TEXT`, the length of `reason_text` instead.
    pub reason: u32,
    /// `STW_FLAG_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// When the runtime began stopping the world (`worldStop.startedStopping`).
    pub started_stopping_ns: u64,
    /// When every P had stopped (`worldStop.finishedStopping`).
    pub finished_stopping_ns: u64,
    /// The `now` that `startTheWorldWithSema` returned: the runtime's end of the pause.
    pub restarted_ns: u64,
    /// With `STW_FLAG_REASON_IS_TEXT`: the reason text, `reason` bytes long (at most
    /// `REASON_TEXT_LEN`).
    pub reason_text: [u8; REASON_TEXT_LEN],
}

/// Per-thread state between a stop and the matching start. The runtime keeps the goroutine that
/// stopped the world on its thread until it starts it again (it holds `m.preemptoff` or
/// `acquirem`), so keying by thread id pairs them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingStw {
    pub reason: u32,
    pub flags: u32,
    pub started_stopping_ns: u64,
    pub finished_stopping_ns: u64,
    pub reason_text: [u8; REASON_TEXT_LEN],
}

const _: () = assert!(core::mem::size_of::<StwEvent>() == 64);
const _: () = assert!(core::mem::size_of::<PendingStw>() == 48);

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are #[repr(C)], Copy, contain only integers (every bit pattern is valid) and
    // have explicit padding fields, so any byte sequence of the right length is a valid value.
    unsafe impl aya::Pod for super::StwEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PendingStw {}
}
