//! Go's internal register ABI (ABIInternal), used by every Go function since Go 1.17 on amd64.
//!
//! Go does not pass arguments in the C ABI's registers, so `ProbeContext::arg` would read the
//! wrong ones. Integer arguments and results go, in order, into RAX, RBX, RCX, RDI, RSI, R8, R9,
//! R10, R11 (src/cmd/compile/abi-internal.md, "amd64 architecture"); a struct argument is split
//! field by field over the same sequence. Only this module knows register names, so an arm64
//! port (R0–R15) replaces it alone.
use aya_ebpf::{helpers::bpf_probe_read_user, programs::ProbeContext};

pub struct GoRegs<'a> {
    ctx: &'a ProbeContext,
}

impl<'a> GoRegs<'a> {
    #[inline(always)]
    pub fn new(ctx: &'a ProbeContext) -> Self {
        Self { ctx }
    }

    /// The `n`th integer register of the Go ABI sequence (argument or result slot `n`).
    #[cfg(bpf_target_arch = "x86_64")]
    #[inline(always)]
    pub fn int(&self, n: usize) -> u64 {
        // SAFETY: `regs` is the kernel's pt_regs for this probe hit, valid for the whole program.
        let regs = unsafe { &*self.ctx.regs };
        match n {
            0 => regs.rax,
            1 => regs.rbx,
            2 => regs.rcx,
            3 => regs.rdi,
            4 => regs.rsi,
            5 => regs.r8,
            6 => regs.r9,
            7 => regs.r10,
            8 => regs.r11,
            _ => 0,
        }
    }
}

impl GoRegs<'_> {
    /// The stack pointer.
    #[cfg(bpf_target_arch = "x86_64")]
    #[inline(always)]
    pub fn sp(&self) -> u64 {
        // SAFETY: as in `int`.
        unsafe { (*self.ctx.regs).rsp }
    }

    /// The current goroutine (`g`): ABIInternal keeps it in R14 on amd64.
    #[cfg(bpf_target_arch = "x86_64")]
    #[inline(always)]
    pub fn g(&self) -> u64 {
        // SAFETY: as in `int`.
        unsafe { (*self.ctx.regs).r14 }
    }

    /// The current goroutine's M (`g.m`, at `g_m_offset` in `runtime.g`), read from the
    /// target; `None` if it cannot be read.
    #[inline(always)]
    pub fn m(&self, g_m_offset: u16) -> Option<u64> {
        // SAFETY: bpf_probe_read_user copies from the target's memory and fails cleanly on a
        // bad address; nothing is dereferenced directly.
        unsafe { bpf_probe_read_user((self.g() + u64::from(g_m_offset)) as *const u64) }.ok()
    }
}

#[cfg(not(bpf_target_arch = "x86_64"))]
compile_error!("mapscope reads Go's amd64 register ABI; add this architecture to goabi.rs");
