//! Which entry points of an allocator end by jumping into another (a tail call), so that the
//! kernel counts such a call once: glibc's `reallocarray` jumps to `realloc` through its PLT
//! slot, and `realloc` jumps to `malloc` for a null pointer. The jumped-to entry point fires
//! with the caller's stack pointer and return address, as if the program had called it.
use iced_x86::{Decoder, DecoderOptions, FlowControl, OpKind};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, ObjectSymbolTable as _};

use super::allocator::EntryPoint;

/// Sections holding PLT stubs, which jump through a GOT slot to the symbol a relocation names.
const PLT_SECTIONS: [&str; 3] = [".plt", ".plt.sec", ".plt.got"];

/// The most code read of an entry point whose symbol has no size.
const UNSIZED_CODE: u64 = 4096;

/// For each of `entries` (by position), the positions of the entries that may jump into it as
/// their last act, directly or through others (a bit each; positions past 63 are left out).
pub fn tail_from(file: &object::File<'_>, entries: &[EntryPoint]) -> Vec<u64> {
    let jumps: Vec<Vec<usize>> = entries
        .iter()
        .map(|entry| {
            jump_targets(file, entry)
                .into_iter()
                .flat_map(|target| entry_at(file, entries, target))
                .collect()
        })
        .collect();
    let mut from = vec![0u64; entries.len()];
    for start in 0..entries.len().min(64) {
        // Everything reachable from `start` by jumps.
        let mut seen = vec![false; entries.len()];
        let mut stack = jumps[start].clone();
        while let Some(next) = stack.pop() {
            if next == start || std::mem::replace(&mut seen[next], true) {
                continue;
            }
            from[next] |= 1 << start;
            stack.extend(&jumps[next]);
        }
    }
    from
}

/// `size` bytes of code at `address` (fewer where its section ends), from the section that
/// holds it.
pub(super) fn code<'a>(file: &'a object::File<'_>, address: u64, size: u64) -> Option<&'a [u8]> {
    let section = file.sections().find(|section| {
        section.address() <= address && address < section.address() + section.size()
    })?;
    let data = section.data().ok()?;
    let start = usize::try_from(address - section.address()).ok()?;
    let end = data.len().min(start + usize::try_from(size).ok()?);
    data.get(start..end)
}

/// The targets of `entry`'s jumps (conditional or not) that leave it.
fn jump_targets(file: &object::File<'_>, entry: &EntryPoint) -> Vec<u64> {
    let size = if entry.code_bytes == 0 {
        UNSIZED_CODE
    } else {
        entry.code_bytes
    };
    let Some(code) = code(file, entry.address, size) else {
        return Vec::new();
    };
    let end = entry.address + code.len() as u64;
    Decoder::with_ip(64, code, entry.address, DecoderOptions::NONE)
        .into_iter()
        .filter(|instruction| {
            matches!(
                instruction.flow_control(),
                FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch
            ) && instruction.op0_kind() == OpKind::NearBranch64
        })
        .map(|instruction| instruction.near_branch_target())
        .filter(|target| !(entry.address..end).contains(target))
        .collect()
}

/// The entries a jump to `target` enters: the one at that address, or those a PLT stub there
/// leads to.
fn entry_at(file: &object::File<'_>, entries: &[EntryPoint], target: u64) -> Vec<usize> {
    let at = |address: u64| entries.iter().position(|entry| entry.address == address);
    if let Some(index) = at(target) {
        return vec![index];
    }
    let Some(name) = plt_symbol(file, target) else {
        return Vec::new();
    };
    entries
        .iter()
        .enumerate()
        .filter(|(_, entry)| entry.function == name || entry.aliases.contains(&name))
        .map(|(index, _)| index)
        .collect()
}

/// The symbol the PLT stub at `address` jumps to, through its GOT slot's relocation.
fn plt_symbol(file: &object::File<'_>, address: u64) -> Option<String> {
    let in_plt = file.sections().any(|section| {
        section
            .name()
            .is_ok_and(|name| PLT_SECTIONS.contains(&name))
            && section.address() <= address
            && address < section.address() + section.size()
    });
    if !in_plt {
        return None;
    }
    let stub = code(file, address, 16)?;
    let slot = Decoder::with_ip(64, stub, address, DecoderOptions::NONE)
        .into_iter()
        .find(|instruction| {
            instruction.flow_control() == FlowControl::IndirectBranch
                && instruction.is_ip_rel_memory_operand()
        })?
        .ip_rel_memory_address();
    let symbols = file.dynamic_symbol_table()?;
    file.dynamic_relocations()?
        .find_map(|(offset, relocation)| {
            if offset != slot {
                return None;
            }
            let object::RelocationTarget::Symbol(index) = relocation.target() else {
                return None;
            };
            let name = symbols.symbol_by_index(index).ok()?.name().ok()?;
            Some(name.split('@').next().unwrap_or(name).to_owned())
        })
}
