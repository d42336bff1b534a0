//! C++'s `operator new` (and `new[]`, the nothrow and aligned forms) allocates for its caller
//! by calling `malloc` or `aligned_alloc`: at the allocator's entry the return address is in
//! `operator new`, and the site, its caller, is further up the stack, where no frame pointer
//! leads (distributions build libstdc++ without them). But `operator new`'s code is fixed: when
//! it calls the allocator it holds a known number of bytes on the stack below its own return
//! address (its `depth`), found here by reading its instructions. The kernel program reads the
//! caller from there (`NATIVE_WRAPPERS`, `profiler_common::native::MAX_WRAPPERS`).
use std::path::{Path, PathBuf};

use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic, OpKind, Register};
use object::{Object as _, ObjectSymbol as _};
use profiler_common::native::MAX_WRAPPERS;

/// The Itanium C++ ABI's names of `operator new` and `operator new[]` (with `size_t` an
/// unsigned long), nothrow and aligned forms included. Those that only jump to another (glibc's
/// `operator new[]` jumps to `operator new`) have no frame, and are left out by their code.
const OPERATOR_NEW: [&str; 8] = [
    "_Znwm",
    "_Znam",
    "_ZnwmRKSt9nothrow_t",
    "_ZnamRKSt9nothrow_t",
    "_ZnwmSt11align_val_t",
    "_ZnamSt11align_val_t",
    "_ZnwmSt11align_val_tRKSt9nothrow_t",
    "_ZnamSt11align_val_tRKSt9nothrow_t",
];

/// The most code read of one `operator new`.
const MAX_CODE: u64 = 512;

/// One function that allocates for its caller: its code `[start, end)` in the target's
/// address space, and the bytes it holds on the stack below its return address when it calls
/// (`[start, end, depth]`, as `NATIVE_WRAPPERS` holds it).
pub type Wrapper = [u64; 3];

/// The stack bytes `code` (a function's, at `address`) holds below its return address at each
/// of its calls before its first return or jump: pushes, `sub rsp`; `None` when those calls do
/// not all agree, when it has none (it only jumps on), or when it moves the stack pointer some
/// other way first.
pub fn depth_at_calls(code: &[u8], address: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut depth: i64 = 0;
    let mut at_calls: Option<i64> = None;
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            return None;
        }
        match instruction.flow_control() {
            FlowControl::Call | FlowControl::IndirectCall => {
                match at_calls {
                    Some(known) if known != depth => return None,
                    _ => at_calls = Some(depth),
                }
                continue;
            }
            FlowControl::Return
            | FlowControl::UnconditionalBranch
            | FlowControl::IndirectBranch => {
                break;
            }
            _ => {}
        }
        let immediate = || match instruction.op1_kind() {
            OpKind::Immediate8to64 | OpKind::Immediate32to64 => {
                Some(instruction.immediate(1) as i64)
            }
            OpKind::Immediate8 | OpKind::Immediate32 => Some(instruction.immediate(1) as i64),
            _ => None,
        };
        let on_rsp = instruction.op0_kind() == OpKind::Register
            && instruction.op0_register() == Register::RSP;
        match instruction.mnemonic() {
            Mnemonic::Push => depth += 8,
            Mnemonic::Pop => depth -= 8,
            Mnemonic::Sub if on_rsp => depth += immediate()?,
            Mnemonic::Add if on_rsp => depth -= immediate()?,
            // Anything else that writes the stack pointer (`and rsp`, `mov rsp, rbp`, `lea`).
            _ if on_rsp => return None,
            _ => {}
        }
    }
    at_calls.and_then(|depth| u64::try_from(depth).ok())
}

/// The `operator new`s of the ELF file at `path`, whose first mapping starts at `mapped`,
/// with their depths.
fn in_file(path: &Path, mapped: u64) -> Vec<Wrapper> {
    let Ok(data) = std::fs::read(path) else {
        return Vec::new();
    };
    let Ok(file) = object::File::parse(&*data) else {
        return Vec::new();
    };
    // A shared library or a PIE executable is mapped at a bias from its link addresses, which
    // start at 0; a position-dependent executable at its link addresses.
    let bias = if file.kind() == object::ObjectKind::Dynamic {
        mapped
    } else {
        0
    };
    let mut found = Vec::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        let Ok(name) = symbol.name() else {
            continue;
        };
        if !OPERATOR_NEW.contains(&name) || symbol.address() == 0 {
            continue;
        }
        let start = symbol.address();
        if found
            .iter()
            .any(|&[known, _, _]: &Wrapper| known == start.wrapping_add(bias))
        {
            continue;
        }
        let read = if symbol.size() == 0 {
            MAX_CODE
        } else {
            symbol.size().min(MAX_CODE)
        };
        let Some(code) = super::tails::code(&file, start, read) else {
            continue;
        };
        if let Some(depth) = depth_at_calls(code, start) {
            let size = if symbol.size() == 0 {
                code.len() as u64
            } else {
                symbol.size()
            };
            found.push([
                start.wrapping_add(bias),
                start.wrapping_add(bias) + size,
                depth,
            ]);
        }
    }
    found
}

/// Every `operator new` of process `pid`: in the C++ runtime libraries it maps (libstdc++,
/// libc++) and, with `executable`, in its executable (a static build carries its own), where
/// each is mapped now. (The executable is read whole: looked at once, not again while the
/// libraries are awaited.)
pub fn find(pid: u32, executable: bool) -> Vec<Wrapper> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let mut seen: Vec<&str> = Vec::new();
    let mut wrappers = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(_perms), Some(offset), Some(path)) =
            (fields.next(), fields.next(), fields.next(), fields.nth(2))
        else {
            continue;
        };
        let name = Path::new(path)
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        let cxx_runtime = name.starts_with("libstdc++") || name.starts_with("libc++.");
        let the_executable = executable && exe.as_deref() == Some(Path::new(path));
        // The file's first mapping (offset 0) gives its load bias.
        if !(cxx_runtime || the_executable)
            || !offset.trim_start_matches('0').is_empty()
            || seen.contains(&path)
        {
            continue;
        }
        seen.push(path);
        let Some(start) = range
            .split_once('-')
            .and_then(|(start, _)| u64::from_str_radix(start, 16).ok())
        else {
            continue;
        };
        wrappers.extend(in_file(&root.join(path.trim_start_matches('/')), start));
    }
    if wrappers.len() > MAX_WRAPPERS as usize {
        tracing::debug!(
            "PID {pid}: {} forms of operator new; the first {MAX_WRAPPERS} are followed",
            wrappers.len()
        );
        wrappers.truncate(MAX_WRAPPERS as usize);
    }
    wrappers
}

#[cfg(test)]
mod tests {
    use super::depth_at_calls;

    #[test]
    fn the_depth_at_operator_news_call_is_read_from_its_code() {
        // Debian 12's libstdc++ `operator new(unsigned long)`: endbr64; test rdi, rdi;
        // mov eax, 1; push rbx; cmovne rax, rdi; mov rbx, rax; mov rdi, rbx; call malloc;
        // test rax, rax; je; pop rbx; ret.
        let new: &[u8] = &[
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0xb8, 0x01, 0x00, 0x00, 0x00, 0x53, 0x48,
            0x0f, 0x45, 0xc7, 0x48, 0x89, 0xc3, 0x48, 0x89, 0xdf, 0xe8, 0x00, 0x00, 0x00, 0x00,
            0x48, 0x85, 0xc0, 0x74, 0x02, 0x5b, 0xc3,
        ];
        assert_eq!(depth_at_calls(new, 0x1000), Some(8));
        // Its nothrow form: endbr64; sub rsp, 8; call operator new; add rsp, 8; ret.
        let nothrow: &[u8] = &[
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x83, 0xec, 0x08, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x48,
            0x83, 0xc4, 0x08, 0xc3,
        ];
        assert_eq!(depth_at_calls(nothrow, 0x1000), Some(8));
        // The aligned form calls __popcountdi2 and aligned_alloc at the same depth: push rbp;
        // push rbx; sub rsp, 8.
        let aligned: &[u8] = &[
            0x55, 0x53, 0x48, 0x83, 0xec, 0x08, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x48, 0x89, 0xdf,
            0xe8, 0x00, 0x00, 0x00, 0x00, 0x48, 0x83, 0xc4, 0x08, 0x5b, 0x5d, 0xc3,
        ];
        assert_eq!(depth_at_calls(aligned, 0x1000), Some(24));
        // `operator new[]`: endbr64; jmp operator new. No frame: the allocator's return
        // address is then in `operator new`, whose own is the caller's.
        let array: &[u8] = &[0xf3, 0x0f, 0x1e, 0xfa, 0xe9, 0x00, 0x00, 0x00, 0x00];
        assert_eq!(depth_at_calls(array, 0x1000), None);
        // Calls at different depths, or a stack pointer moved otherwise: not followed.
        let disagreeing: &[u8] = &[0xe8, 0, 0, 0, 0, 0x53, 0xe8, 0, 0, 0, 0, 0xc3];
        assert_eq!(depth_at_calls(disagreeing, 0x1000), None);
        let realigned: &[u8] = &[0x48, 0x83, 0xe4, 0xf0, 0xe8, 0, 0, 0, 0, 0xc3];
        assert_eq!(depth_at_calls(realigned, 0x1000), None);
    }
}
