//! Finding a function's RET instructions, where mapscope places its "function returned"
//! probes: a uretprobe rewrites the return address on the stack, which Go's stack copying
//! and traceback cannot survive, so returns are observed at the instructions themselves.
use iced_x86::{
    Decoder, DecoderOptions, Instruction, InstructionInfo, InstructionInfoFactory, Mnemonic,
    OpAccess, OpKind, Register,
};

/// The instructions of `code`, which starts at `address`, decoded in order (an undecodable
/// byte comes out as an invalid instruction, and decoding goes on after it).
fn instructions(code: &[u8], address: u64) -> impl Iterator<Item = Instruction> + '_ {
    Decoder::with_ip(64, code, address, DecoderOptions::NONE).into_iter()
}

/// Virtual addresses of every near RET in `code`, which starts at `address`.
pub fn ret_sites(code: &[u8], address: u64) -> Vec<u64> {
    instructions(code, address)
        .filter(|instruction| instruction.mnemonic() == Mnemonic::Ret)
        .map(|instruction| instruction.ip())
        .collect()
}

/// Targets of every direct near CALL in `code`, which starts at `address`.
pub fn call_targets(code: &[u8], address: u64) -> Vec<u64> {
    instructions(code, address)
        .filter(|instruction| {
            instruction.mnemonic() == Mnemonic::Call
                && instruction.op0_kind() == OpKind::NearBranch64
        })
        .map(|instruction| instruction.near_branch_target())
        .collect()
}

/// The addresses `code` (starting at `address`) reads or writes through RIP-relative memory
/// operands: the package-level variables a function uses.
pub fn data_references(code: &[u8], address: u64) -> Vec<u64> {
    instructions(code, address)
        .filter(Instruction::is_ip_rel_memory_operand)
        .map(|instruction| instruction.ip_rel_memory_address())
        .collect()
}

/// Addresses `code` (starting at `address`) stores an immediate 0 into, as a 64-bit word,
/// through RIP-relative operands (`MOVQ $0, pkg.var(SB)`).
pub fn zeroed_words(code: &[u8], address: u64) -> Vec<u64> {
    instructions(code, address)
        .filter(|instruction| {
            instruction.mnemonic() == Mnemonic::Mov
                && instruction.is_ip_rel_memory_operand()
                && instruction.op0_kind() == OpKind::Memory
                && instruction.memory_size() == iced_x86::MemorySize::UInt64
                && instruction.op1_kind() == OpKind::Immediate32to64
                && instruction.immediate(1) == 0
        })
        .map(|instruction| instruction.ip_rel_memory_address())
        .collect()
}

/// Addresses `code` (starting at `address`) stores a 64-bit register into through a
/// RIP-relative operand within a few instructions of loading `constant` into that register: a
/// variable initialised at run time from that constant (`var v = f(constant)`; the register
/// may be changed in between, as by the CMOV of `if cond { v = 0 }`).
pub fn words_set_near_constant(code: &[u8], address: u64, constant: u64) -> Vec<u64> {
    const NEAR: usize = 5;
    let mut found = Vec::new();
    // The register holding the constant, and how many instructions ago it was loaded.
    let mut holding: Option<(Register, usize)> = None;
    for instruction in instructions(code, address) {
        holding = holding
            .map(|(register, count)| (register, count + 1))
            .filter(|&(_, count)| count <= NEAR);
        if instruction.mnemonic() == Mnemonic::Mov
            && instruction.op0_kind() == OpKind::Register
            && matches!(
                instruction.op1_kind(),
                OpKind::Immediate32 | OpKind::Immediate32to64 | OpKind::Immediate64
            )
            && instruction.immediate(1) == constant
        {
            holding = Some((instruction.op0_register().full_register(), 0));
        } else if let Some((register, _)) = holding
            && instruction.mnemonic() == Mnemonic::Mov
            && instruction.is_ip_rel_memory_operand()
            && instruction.op0_kind() == OpKind::Memory
            && instruction.op1_kind() == OpKind::Register
            && instruction.op1_register().size() == 8
            && instruction.op1_register().full_register() == register
        {
            found.push(instruction.ip_rel_memory_address());
        }
    }
    found
}

/// The address `code` (starting at `address`) loads into RAX with `LEAQ v(SB), AX` last before
/// a direct CALL to `callee`: in Go's register ABI, the receiver of a method called on a
/// package-level variable (`gcController.commit(…)`), or on one of its fields.
pub fn receiver_of_call(code: &[u8], address: u64, callee: u64) -> Option<u64> {
    let mut receiver = None;
    for instruction in instructions(code, address) {
        if instruction.mnemonic() == Mnemonic::Lea
            && instruction.op0_register() == Register::RAX
            && instruction.is_ip_rel_memory_operand()
        {
            receiver = Some(instruction.ip_rel_memory_address());
        } else if instruction.mnemonic() == Mnemonic::Call {
            if instruction.op0_kind() == OpKind::NearBranch64
                && instruction.near_branch_target() == callee
                && receiver.is_some()
            {
                return receiver;
            }
            // A call clobbers RAX.
            receiver = None;
        } else if instruction.op0_kind() == OpKind::Register
            && instruction.op0_register().full_register() == Register::RAX
        {
            receiver = None;
        }
    }
    None
}

/// Addresses `code` (starting at `address`) reads a 32-bit signed integer from and widens
/// (`MOVSXD v(SB), CX`: `int(v)` of an int32 variable).
pub fn widened_int32_reads(code: &[u8], address: u64) -> Vec<u64> {
    instructions(code, address)
        .filter(|instruction| {
            instruction.mnemonic() == Mnemonic::Movsxd
                && instruction.is_ip_rel_memory_operand()
                && instruction.op1_kind() == OpKind::Memory
                && instruction.memory_size() == iced_x86::MemorySize::Int32
        })
        .map(|instruction| instruction.ip_rel_memory_address())
        .collect()
}

/// How many instructions a Go stack-check prologue takes at most (`MOVQ SP, R12; SUBQ $n, R12;
/// JCS; CMPQ R12, 16(R14); JBE` for huge frames).
const MAX_PROLOGUE: usize = 6;

/// Where a function-entry probe belongs: just after Go's stack-bound check.
///
/// A Go function starts with `CMPQ SP, 16(R14); JBE more` (R14 holds the goroutine, 16 is
/// `g.stackguard0`), or compares R12 after `LEAQ -frame(SP), R12` for large frames. When the
/// stack must grow, `more` calls `runtime.morestack` and jumps back to the function's first
/// instruction, so a probe there would fire twice for one call. The instruction after the
/// branch runs once per call, with the argument registers untouched. Functions without the
/// check (`//go:nosplit`) are probed at their first instruction.
pub fn entry_after_stack_check(code: &[u8], address: u64) -> u64 {
    stack_check_branch(code, address).map_or(address, |branch| branch.next_ip())
}

/// The `JBE more` of the stack-bound check that starts a Go function, if it has one: it
/// branches to the stack-growth path.
fn stack_check_branch(code: &[u8], address: u64) -> Option<Instruction> {
    let mut compared_stack_guard = false;
    for instruction in instructions(code, address).take(MAX_PROLOGUE) {
        if instruction.mnemonic() == Mnemonic::Cmp && reads_stack_guard(&instruction) {
            compared_stack_guard = true;
        } else if compared_stack_guard && instruction.mnemonic() == Mnemonic::Jbe {
            return Some(instruction);
        } else if compared_stack_guard {
            break;
        }
    }
    None
}

/// Where a probe sees the function's caller in the frame-pointer chain: just after the frame
/// pointer is set up (`PUSHQ BP; MOVQ SP, BP`, or `SUBQ $n, SP; MOVQ BP, m(SP); LEAQ m(SP), BP`
/// before Go 1.21), searching from `start` (the entry site). Before that instruction BP is
/// still the caller's, so a stack walk starts at the caller's caller: the immediate caller is
/// lost (kernels from 6.12 recover it only at a PUSHQ BP). `start` if no setup is found.
pub fn after_frame_setup(code: &[u8], address: u64, start: u64) -> u64 {
    let Some(offset) = start
        .checked_sub(address)
        .and_then(|at| usize::try_from(at).ok())
    else {
        return start;
    };
    let Some(rest) = code.get(offset..) else {
        return start;
    };
    for instruction in instructions(rest, start).take(MAX_PROLOGUE) {
        let sets_frame = instruction.op0_kind() == OpKind::Register
            && instruction.op0_register() == Register::RBP
            && ((instruction.mnemonic() == Mnemonic::Mov
                && instruction.op1_kind() == OpKind::Register
                && instruction.op1_register() == Register::RSP)
                || (instruction.mnemonic() == Mnemonic::Lea
                    && instruction.memory_base() == Register::RSP));
        if sets_frame {
            return instruction.next_ip();
        }
    }
    start
}

/// Where a Go function keeps argument registers it copies into its own frame on entry, as
/// distances below the stack pointer at its RET instructions, for reading them there.
///
/// `arguments` lists each argument's full register and the fewest bytes that must be stored.
/// An argument qualifies when the function stores that register to one stack slot before it
/// first calls anything (and before anything else writes the register), and no other
/// instruction writes into the slot or takes an address inside it: the slot then still holds
/// the argument when the function returns, in the frame just popped. Every RET must see the
/// same fixed frame (`PUSHQ BP; SUBQ $n, SP` or `SUBQ $n, SP`, undone before each RET); the
/// `runtime.morestack` path at the end (reached from the stack check, before the frame) is not
/// part of it. `None` when any of that does not hold: the caller then reads the arguments at
/// the entry instead.
pub fn spill_slots(code: &[u8], address: u64, arguments: &[(Register, usize)]) -> Option<Vec<u64>> {
    let instructions: Vec<Instruction> = instructions(code, address).collect();
    if instructions.iter().any(Instruction::is_invalid) {
        return None;
    }
    // The stack-growth path: the target of the stack check's JBE, to the end.
    let morestack_from =
        stack_check_branch(code, address).map_or(u64::MAX, |branch| branch.near_branch_target());

    let mut info = InstructionInfoFactory::new();
    let mut frame = FrameWalk::default();
    let mut called = false;
    let mut written_registers: Vec<Register> = Vec::new();
    // (offset from the body's SP, bytes) of each argument's spill.
    let mut slots: Vec<Option<(i64, i64)>> = vec![None; arguments.len()];
    // Every stack range written or whose address is taken, spills included.
    let mut touched: Vec<(i64, i64)> = Vec::new();
    for instruction in instructions
        .iter()
        .take_while(|instruction| instruction.ip() < morestack_from)
    {
        let used = info.info(instruction);
        for memory in used.used_memory() {
            if !writes(memory.access()) {
                continue;
            }
            match memory.base() {
                Register::RSP => {
                    if let Some(at) = frame.body_offset(memory.displacement() as i64) {
                        touched.push((at, memory.memory_size().size() as i64));
                    }
                }
                // Go addresses its frame through SP; a write through BP is not understood.
                Register::RBP => return None,
                _ => {}
            }
        }
        if instruction.mnemonic() == Mnemonic::Lea
            && instruction.memory_base() == Register::RSP
            && let Some(at) = frame.body_offset(instruction.memory_displacement64() as i64)
        {
            touched.push((at, 1));
        }
        // The spills: argument registers stored into the frame before any call.
        if frame.size.is_some()
            && !called
            && instruction.mnemonic() == Mnemonic::Mov
            && instruction.op0_kind() == OpKind::Memory
            && instruction.memory_base() == Register::RSP
            && instruction.memory_index() == Register::None
            && instruction.op1_kind() == OpKind::Register
        {
            let stored = instruction.op1_register();
            for (slot, &(register, bytes)) in slots.iter_mut().zip(arguments) {
                if slot.is_none()
                    && stored.full_register() == register
                    && stored.size() >= bytes
                    && !written_registers.contains(&register)
                {
                    let at = frame.body_offset(instruction.memory_displacement64() as i64)?;
                    *slot = Some((at, stored.size() as i64));
                }
            }
        }
        written_registers.extend(
            used.used_registers()
                .iter()
                .filter(|register| writes(register.access()))
                .map(|register| register.register().full_register()),
        );
        called |= instruction.mnemonic() == Mnemonic::Call;
        frame.step(instruction, used)?;
    }
    let size = frame.size?;
    if frame.returns == 0 {
        return None;
    }
    slots
        .into_iter()
        .map(|slot| {
            let (at, bytes) = slot?;
            let overlapping = touched
                .iter()
                .filter(|&&(start, length)| start < at + bytes && at < start + length)
                .count();
            // The spill itself is the one write allowed.
            (overlapping == 1 && (0..size).contains(&at)).then(|| (size - at) as u64)
        })
        .collect()
}

fn writes(access: OpAccess) -> bool {
    matches!(
        access,
        OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
}

/// The stack pointer through a Go function's code, in a linear sweep: how far below the entry
/// SP it is before each instruction, and the frame the prologue's SUBQ made.
#[derive(Default)]
struct FrameWalk {
    below_entry: i64,
    size: Option<i64>,
    returns: usize,
}

impl FrameWalk {
    /// Where `SP + displacement` is, as an offset from the SP of the function's body (with the
    /// whole frame in place); `None` before the frame is made.
    fn body_offset(&self, displacement: i64) -> Option<i64> {
        Some(displacement + self.size? - self.below_entry)
    }

    /// Follow `instruction`'s change to SP; `None` if it changes SP in a way a fixed frame does
    /// not (a second SUBQ, a computed SP), or returns with the frame in place.
    fn step(&mut self, instruction: &Instruction, used: &InstructionInfo) -> Option<()> {
        match instruction.mnemonic() {
            Mnemonic::Push => self.below_entry += 8,
            Mnemonic::Pop => self.below_entry -= 8,
            Mnemonic::Sub | Mnemonic::Add
                if instruction.op0_kind() == OpKind::Register
                    && instruction.op0_register() == Register::RSP =>
            {
                if !matches!(
                    instruction.op1_kind(),
                    OpKind::Immediate8to64 | OpKind::Immediate32to64
                ) {
                    return None;
                }
                let amount = instruction.immediate(1) as i64;
                if instruction.mnemonic() == Mnemonic::Add {
                    self.below_entry -= amount;
                } else {
                    self.below_entry += amount;
                    if self.size.replace(self.below_entry).is_some() {
                        return None;
                    }
                }
            }
            Mnemonic::Ret => {
                if self.below_entry != 0 {
                    return None;
                }
                self.returns += 1;
                // Code after a RET is more of the body, with the frame in place.
                self.below_entry = self.size?;
            }
            // A CALL's push is undone by the callee's RET.
            Mnemonic::Call => {}
            _ => {
                let moves_sp = used.used_registers().iter().any(|register| {
                    register.register() == Register::RSP && writes(register.access())
                });
                if moves_sp {
                    return None;
                }
            }
        }
        Some(())
    }
}

/// `g.stackguard0` and `g.stackguard1` (src/runtime/runtime2.go: `stack` is two words, then
/// the two guards). Go's amd64 ABIInternal keeps g in R14. Functions that run on the system
/// stack compare against `stackguard1` (Go 1.24+ compiles `stopTheWorldWithSema` that way).
const STACK_GUARD_OFFSETS: [u64; 2] = [16, 24];

fn reads_stack_guard(instruction: &Instruction) -> bool {
    (0..instruction.op_count()).any(|operand| {
        instruction.op_kind(operand) == OpKind::Memory
            && instruction.memory_base() == Register::R14
            && STACK_GUARD_OFFSETS.contains(&instruction.memory_displacement64())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `LEAQ v(SB), AX; CALL f` gives v as f's receiver; a call in between, or another write
    /// to RAX, forgets it; `MOVSXD w(SB), CX` reads w.
    #[test]
    fn finds_receivers_of_calls_and_widened_reads() {
        let code = [
            // lea rax, [rip+0x100] (ends at 0x1007: 0x1107)
            0x48, 0x8d, 0x05, 0x00, 0x01, 0x00, 0x00,
            // call 0x2000 (ends at 0x100c: rel 0x0ff4)
            0xe8, 0xf4, 0x0f, 0x00, 0x00,
            // lea rax, [rip+0x200] (ends at 0x1013: 0x1213)
            0x48, 0x8d, 0x05, 0x00, 0x02, 0x00, 0x00,
            // mov eax, 1: RAX no longer holds it
            0xb8, 0x01, 0x00, 0x00, 0x00, // call 0x3000 (ends at 0x101d: rel 0x1fe3)
            0xe8, 0xe3, 0x1f, 0x00, 0x00,
            // movsxd rcx, dword ptr [rip+0x300] (ends at 0x1024: 0x1324)
            0x48, 0x63, 0x0d, 0x00, 0x03, 0x00, 0x00,
        ];
        assert_eq!(receiver_of_call(&code, 0x1000, 0x2000), Some(0x1107));
        assert_eq!(receiver_of_call(&code, 0x1000, 0x3000), None);
        assert_eq!(receiver_of_call(&code, 0x1000, 0x4000), None);
        assert_eq!(widened_int32_reads(&code, 0x1000), vec![0x1324]);
    }

    /// The three instruction shapes the runtime-variable finders look for, hand-assembled:
    /// `CMPQ v+8(SB), $0` (a read), `MOVQ $0, v(SB)` (a zeroing store), and
    /// `MOVL $0x80000, AX; ...; MOVQ AX, v(SB)` (a store of a loaded constant).
    #[test]
    fn finds_the_variables_code_reads_zeroes_and_sets() {
        let code = [
            // cmp qword ptr [rip+0x100], 0 (ends at 0x1008: refers to 0x1108)
            0x48, 0x83, 0x3d, 0x00, 0x01, 0x00, 0x00, 0x00,
            // mov qword ptr [rip+0x200], 0 (ends at 0x1013: refers to 0x1213)
            0x48, 0xc7, 0x05, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            // mov eax, 0x80000
            0xb8, 0x00, 0x00, 0x08, 0x00, // xor ecx, ecx
            0x31, 0xc9,
            // mov qword ptr [rip+0x300], rax (ends at 0x1021: refers to 0x1321)
            0x48, 0x89, 0x05, 0x00, 0x03, 0x00, 0x00,
            // mov qword ptr [rip+0x400], rcx: not the register holding the constant (ends at
            // 0x1028: refers to 0x1428)
            0x48, 0x89, 0x0d, 0x00, 0x04, 0x00, 0x00,
        ];
        assert_eq!(
            data_references(&code, 0x1000),
            vec![0x1108, 0x1213, 0x1321, 0x1428]
        );
        assert_eq!(zeroed_words(&code, 0x1000), vec![0x1213]);
        assert_eq!(
            words_set_near_constant(&code, 0x1000, 0x80000),
            vec![0x1321]
        );
        assert!(words_set_near_constant(&code, 0x1000, 0x1234).is_empty());
        // Past `NEAR` instructions the constant no longer counts.
        let mut far = vec![0xb8, 0x00, 0x00, 0x08, 0x00];
        far.extend([0x90; 6]); // six NOPs
        far.extend([0x48, 0x89, 0x05, 0x00, 0x03, 0x00, 0x00]);
        assert!(words_set_near_constant(&far, 0x1000, 0x80000).is_empty());
    }

    #[test]
    fn finds_direct_call_targets() {
        // CALL rel32 to 0x1000 + 5 + 0x10; CALL RAX (indirect: not listed); RET.
        let code = [0xe8, 0x10, 0, 0, 0, 0xff, 0xd0, 0xc3];
        assert_eq!(call_targets(&code, 0x1000), vec![0x1015]);
    }

    #[test]
    fn finds_each_ret_and_not_ret_bytes_inside_other_instructions() {
        // mov eax, 0xc3c3c3c3 ; ret ; add rsp, 8 ; ret 8 ; int3
        let code = [
            0xb8, 0xc3, 0xc3, 0xc3, 0xc3, // mov eax, imm32 holding C3 bytes
            0xc3, // ret
            0x48, 0x83, 0xc4, 0x08, // add rsp, 8
            0xc2, 0x08, 0x00, // ret 8
            0xcc, // int3 padding
        ];
        assert_eq!(ret_sites(&code, 0x1000), vec![0x1005, 0x100a]);
    }

    #[test]
    fn entry_probe_goes_after_the_stack_check() {
        // CMPQ SP, 0x10(R14); JBE +0x20; PUSHQ BP
        let small = [0x49, 0x3b, 0x66, 0x10, 0x76, 0x20, 0x55];
        assert_eq!(entry_after_stack_check(&small, 0x1000), 0x1006);
        // LEAQ -0x98(SP), R12; CMPQ R12, 0x10(R14); JBE rel32; PUSHQ BP
        let large = [
            0x4c, 0x8d, 0xa4, 0x24, 0x68, 0xff, 0xff, 0xff, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86,
            0x00, 0x01, 0x00, 0x00, 0x55,
        ];
        assert_eq!(entry_after_stack_check(&large, 0x2000), 0x2012);
        // LEAQ -0x18(SP), R12; CMPQ R12, 0x18(R14) (stackguard1); JBE rel32; PUSHQ BP
        let system_stack = [
            0x4c, 0x8d, 0x64, 0x24, 0xe8, 0x4d, 0x3b, 0x66, 0x18, 0x0f, 0x86, 0x0e, 0x04, 0x00,
            0x00, 0x55,
        ];
        assert_eq!(entry_after_stack_check(&system_stack, 0x450f20), 0x450f2f);
        // nosplit: PUSHQ BP; MOVQ SP, BP: no check, probe the first instruction.
        let nosplit = [0x55, 0x48, 0x89, 0xe5];
        assert_eq!(entry_after_stack_check(&nosplit, 0x3000), 0x3000);
        // A compare against something else is not the stack check.
        let other = [0x48, 0x39, 0xd8, 0x76, 0x02, 0x55];
        assert_eq!(entry_after_stack_check(&other, 0x4000), 0x4000);
    }

    #[test]
    fn frame_site_follows_the_frame_pointer_setup() {
        // Go 1.21+: CMPQ SP, 0x10(R14); JBE; PUSHQ BP; MOVQ SP, BP; SUBQ $0x18, SP
        let modern = [
            0x49, 0x3b, 0x66, 0x10, 0x76, 0x20, 0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x18,
        ];
        let entry = entry_after_stack_check(&modern, 0x1000);
        assert_eq!(after_frame_setup(&modern, 0x1000, entry), 0x100a);
        // Go 1.19: CMPQ SP, 0x10(R14); JBE; SUBQ $0x38, SP; MOVQ BP, 0x30(SP); LEAQ 0x30(SP), BP
        let old = [
            0x49, 0x3b, 0x66, 0x10, 0x76, 0x20, 0x48, 0x83, 0xec, 0x38, 0x48, 0x89, 0x6c, 0x24,
            0x30, 0x48, 0x8d, 0x6c, 0x24, 0x30, 0x90,
        ];
        let entry = entry_after_stack_check(&old, 0x2000);
        assert_eq!(after_frame_setup(&old, 0x2000, entry), 0x2014);
        // No frame (leaf function): the entry itself.
        let leaf = [0x48, 0x89, 0xd8, 0xc3];
        assert_eq!(after_frame_setup(&leaf, 0x3000, 0x3000), 0x3000);
        assert_eq!(after_frame_setup(&leaf, 0x3000, 0x2000), 0x2000);
    }

    /// A Go function shaped like `startTheWorldWithSema` (Go 1.23): the stack check, then
    /// `body`, then the morestack path, which stores the argument registers above the entry
    /// stack pointer, frameless, and jumps back to the start.
    fn go_function(body: &[u8]) -> Vec<u8> {
        // cmp rsp, [r14+0x10]; jbe morestack
        let mut code = vec![0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86];
        code.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
        code.extend_from_slice(body);
        code.extend_from_slice(&[
            0x48, 0x89, 0x44, 0x24, 0x08, // mov [rsp+0x8], rax
            0x88, 0x5c, 0x24, 0x10, // mov [rsp+0x10], bl
            0x48, 0x89, 0x4c, 0x24, 0x18, // mov [rsp+0x18], rcx
            0xe8, 0, 0, 0, 0,    // call runtime.morestack_noctxt
            0xe9, // jmp to the start
        ]);
        let back = -i32::try_from(code.len() + 4).unwrap();
        code.extend_from_slice(&back.to_le_bytes());
        code
    }

    const PROLOGUE: [u8; 8] = [
        0x55, // push rbp
        0x48, 0x89, 0xe5, // mov rbp, rsp
        0x48, 0x83, 0xec, 0x58, // sub rsp, 0x58
    ];
    const SPILLS: [u8; 14] = [
        0x48, 0x89, 0x44, 0x24, 0x68, // mov [rsp+0x68], rax (now: the caller's spill area)
        0x48, 0x89, 0x4c, 0x24, 0x30, // mov [rsp+0x30], rcx (w.startedStopping)
        0x88, 0x5c, 0x24, 0x1b, // mov [rsp+0x1b], bl (w.reason)
    ];
    const CALL: [u8; 5] = [0xe8, 0, 0, 0, 0];
    const EPILOGUE: [u8; 11] = [
        0x48, 0x8b, 0x44, 0x24, 0x28, // mov rax, [rsp+0x28]
        0x48, 0x83, 0xc4, 0x58, // add rsp, 0x58
        0x5d, // pop rbp
        0xc3, // ret
    ];
    const W: [(Register, usize); 2] = [(Register::RBX, 1), (Register::RCX, 8)];

    fn slots_with(parts: &[&[u8]]) -> Option<Vec<u64>> {
        spill_slots(&go_function(&parts.concat()), 0x1000, &W)
    }

    /// The slots are found as distances below the SP at the RET (frame 0x58 + the saved BP);
    /// a neighbour written later does not matter; anything that could change a slot, or a frame
    /// the RET does not undo, and there are none.
    #[test]
    fn spill_slots_hold_only_arguments_nothing_else_writes() {
        let found = Some(vec![0x60 - 0x1b, 0x60 - 0x30]);
        // mov [rsp+0x1c], ebx: next to the reason, not over it.
        let neighbour: &[u8] = &[0x89, 0x5c, 0x24, 0x1c];
        // mov [rsp+0x30], rdx: the slot reused for another value.
        let reused: &[u8] = &[0x48, 0x89, 0x54, 0x24, 0x30];
        // mov [rsp+0x18], rax: a wider store over the reason byte.
        let over: &[u8] = &[0x48, 0x89, 0x44, 0x24, 0x18];
        // lea rax, [rsp+0x30]: the slot's address handed out.
        let address_taken: &[u8] = &[0x48, 0x8d, 0x44, 0x24, 0x30];
        // mov rcx, [r14+0x30] before the spill: RCX no longer holds the argument.
        let clobbered: &[u8] = &[0x49, 0x8b, 0x4e, 0x30];
        // (what, the function's body in parts, the slots expected)
        type Case<'a> = (&'a str, &'a [&'a [u8]], Option<Vec<u64>>);
        let cases: [Case; 8] = [
            (
                "plain",
                &[&PROLOGUE, &SPILLS, &CALL, &EPILOGUE],
                found.clone(),
            ),
            (
                "neighbour written",
                &[&PROLOGUE, &SPILLS, &CALL, neighbour, &EPILOGUE],
                found,
            ),
            (
                "slot reused",
                &[&PROLOGUE, &SPILLS, &CALL, reused, &EPILOGUE],
                None,
            ),
            (
                "wider store over it",
                &[&PROLOGUE, &SPILLS, &CALL, over, &EPILOGUE],
                None,
            ),
            (
                "address taken",
                &[&PROLOGUE, &SPILLS, &CALL, address_taken, &EPILOGUE],
                None,
            ),
            (
                "register clobbered first",
                &[&PROLOGUE, clobbered, &SPILLS, &CALL, &EPILOGUE],
                None,
            ),
            // The spills after a call: the registers are no longer the arguments.
            (
                "spilled after a call",
                &[&PROLOGUE, &CALL, &SPILLS, &EPILOGUE],
                None,
            ),
            // A RET with the frame still in place.
            (
                "frame not popped",
                &[&PROLOGUE, &SPILLS, &CALL, &[0xc3]],
                None,
            ),
        ];
        for (case, parts, expected) in cases {
            assert_eq!(slots_with(parts), expected, "{case}");
        }
        assert_eq!(spill_slots(&[], 0x1000, &W), None);
    }

    #[test]
    fn empty_and_garbage_input_yield_no_sites() {
        assert!(ret_sites(&[], 0).is_empty());
        assert!(ret_sites(&[0x0f, 0xff, 0xff], 0).is_empty());
        assert_eq!(entry_after_stack_check(&[], 0x10), 0x10);
    }
}
