//! The runtime's `firstmoduledata`, for what the pclntab may not say in the file: where Go's
//! text starts (`moduledata.text`, the address of `runtime.text`), where the `go:func.*`
//! data is (`moduledata.gofunc`), which inline trees are relative to, and where the type
//! descriptors are (`moduledata.types`), which type names are relative to.
//!
//! Recent linkers leave the pclntab header's textStart as zero in the file, and with external
//! linking `runtime.text` is not the start of `.text` (the C start-up code comes first), so
//! neither gives function addresses in a stripped binary. `moduledata` is found by its first
//! word, a pointer to the pclntab, checked against its second, the function name table. In a
//! PIE those words are written at load time by R_X86_64_RELATIVE relocations, whose addends
//! hold the values.
//!
//! Layout (src/runtime/symtab.go `moduledata`, the same in go1.19.8 through go1.27.3): pcHeader
//! pointer, six slices (funcnametab, cutab, filetab, pctab, pclntable, ftab), findfunctab, minpc,
//! maxpc, then text.
use std::collections::BTreeMap;

use object::{Object as _, ObjectSegment as _, RelocationFlags};

use super::abi::ModuleDataRow;

const PC_HEADER: u64 = 0;
const FUNCNAMETAB: u64 = 8;
const TEXT: u64 = 8 + 6 * 24 + 3 * 8;

/// Reads pointer-sized words at virtual addresses: from a load-time relocation if one writes
/// there, otherwise from the file.
pub(super) struct Image<'a> {
    segments: Vec<(u64, &'a [u8])>,
    relocated: BTreeMap<u64, u64>,
}

impl<'a> Image<'a> {
    pub(super) fn new(file: &object::File<'a>) -> Self {
        let segments = file
            .segments()
            .filter_map(|segment| Some((segment.address(), segment.data().ok()?)))
            .collect();
        let relocated = file
            .dynamic_relocations()
            .into_iter()
            .flatten()
            .filter(|(_, relocation)| {
                matches!(relocation.flags(), RelocationFlags::Elf { r_type } if r_type == object::elf::R_X86_64_RELATIVE)
            })
            .filter_map(|(offset, relocation)| Some((offset, u64::try_from(relocation.addend()).ok()?)))
            .collect();
        Self {
            segments,
            relocated,
        }
    }

    /// `len` bytes at `address`, as the file holds them (not relocated).
    pub(super) fn bytes(&self, address: u64, len: u64) -> Option<&'a [u8]> {
        self.segments.iter().find_map(|&(start, data)| {
            let at = usize::try_from(address.checked_sub(start)?).ok()?;
            data.get(at..at.checked_add(usize::try_from(len).ok()?)?)
        })
    }

    pub(super) fn word(&self, address: u64) -> Option<u64> {
        if let Some(&value) = self.relocated.get(&address) {
            return Some(value);
        }
        self.segments.iter().find_map(|&(start, data)| {
            let at = usize::try_from(address.checked_sub(start)?).ok()?;
            let bytes = data.get(at..at.checked_add(8)?)?;
            Some(u64::from_le_bytes(bytes.try_into().ok()?))
        })
    }

    /// Addresses holding `value`: relocation targets first, then aligned words in the file.
    fn holding(&self, value: u64) -> Vec<u64> {
        let mut found: Vec<u64> = self
            .relocated
            .iter()
            .filter(|&(_, &addend)| addend == value)
            .map(|(&address, _)| address)
            .collect();
        let needle = value.to_le_bytes();
        for &(start, data) in &self.segments {
            found.extend(
                (0..data.len().saturating_sub(7))
                    .step_by(8)
                    .filter(|&at| data[at..at + 8] == needle)
                    .map(|at| start + at as u64),
            );
        }
        found
    }
}

/// What mapscope reads from `moduledata`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModuleData {
    /// Where Go's text starts (`runtime.text`).
    pub text: Option<u64>,
    /// The `go:func.*` data that FUNCDATA offsets (inline trees) are relative to.
    pub gofunc: Option<u64>,
    /// The type descriptors (`types` up to `etypes`), which type names are offsets into.
    pub types: Option<(u64, u64)>,
}

/// The moduledata of the module whose pclntab is at `pclntab_address` with its function name
/// table `funcnametab_offset` bytes in. `row` gives the release's field offsets
/// (`abi::moduledata_row`); without one only `text` is read.
pub fn read(
    file: &object::File<'_>,
    pclntab_address: u64,
    funcnametab_offset: u64,
    row: Option<&ModuleDataRow>,
) -> Option<ModuleData> {
    if pclntab_address == 0 {
        return None;
    }
    let image = Image::new(file);
    let base = image
        .holding(pclntab_address)
        .into_iter()
        .find_map(|candidate| {
            let base = candidate.checked_sub(PC_HEADER)?;
            let names = image.word(base + FUNCNAMETAB)?;
            (names == pclntab_address.checked_add(funcnametab_offset)?).then_some(base)
        })?;
    let nonzero = |value: Option<u64>| value.filter(|&value| value != 0);
    let field = |offset: fn(&ModuleDataRow) -> u64| {
        nonzero(row.and_then(|row| image.word(base + offset(row))))
    };
    let types = match (field(|row| row.types), field(|row| row.etypes)) {
        (Some(start), Some(end)) if start < end => Some((start, end)),
        _ => None,
    };
    Some(ModuleData {
        text: nonzero(image.word(base + TEXT)),
        gofunc: field(|row| row.gofunc),
        types,
    })
}
