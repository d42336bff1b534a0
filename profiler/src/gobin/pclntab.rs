//! The Go pclntab (`.gopclntab`): the runtime's own function table, which every Go binary keeps
//! for tracebacks, stripped or not. mapscope uses it to find runtime functions when the ELF
//! symbol table is gone (`-ldflags=-s`, distribution builds).
//!
//! Layout for Go 1.18+ (src/runtime/symtab.go `pcHeader`, src/debug/gosym/pclntab.go): magic
//! (0xfffffff0 for 1.18–1.19, 0xfffffff1 for 1.20+), two zero bytes, instruction quantum,
//! pointer size, then pointer-sized nfunc, nfiles, textStart, and the offsets of funcnametab,
//! cutab, filetab, pctab and the function table. The function table holds nfunc+1 pairs of
//! uint32 (entry offset from textStart, offset of the `_func` record); a `_func` starts with
//! its own entry offset and an int32 offset of its name in funcnametab.
use std::collections::BTreeMap;

use thiserror::Error;

use super::Function;

const MAGIC_GO118: u32 = 0xffff_fff0;
const MAGIC_GO120: u32 = 0xffff_fff1;
/// Longest function name read; Go's longest generic instantiations stay well below it.
const MAX_NAME: usize = 4096;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PclntabError {
    #[error("no Go 1.18+ pclntab header")]
    NoHeader,
    #[error("Go pclntab is truncated or inconsistent ({0})")]
    Malformed(&'static str),
    #[error("Go pclntab gives no text start and the binary has no .text section")]
    NoTextStart,
}

pub struct Pclntab<'a> {
    data: &'a [u8],
    nfunc: usize,
    text_start: u64,
    funcnames: usize,
    functab: usize,
}

/// Whether `data` starts like a pclntab header (used to search section-less files).
pub fn looks_like_header(data: &[u8]) -> bool {
    data.len() >= 8
        && matches!(
            u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
            MAGIC_GO118 | MAGIC_GO120
        )
        && data[4] == 0
        && data[5] == 0
        && matches!(data[6], 1 | 2 | 4)
        && data[7] == 8
}

/// The header's textStart and funcnametab offset, if `data` starts with a pclntab header.
pub fn header_words(data: &[u8]) -> Option<(u64, u64)> {
    if !looks_like_header(data) {
        return None;
    }
    let word = |index: usize| {
        let at = 8 + index * 8;
        Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
    };
    Some((word(2)?, word(3)?))
}

impl<'a> Pclntab<'a> {
    /// `text_fallback` is where Go's text starts (`moduledata.text`), used when the header's
    /// textStart is zero (recent linkers leave it to be filled in at run time).
    pub fn parse(data: &'a [u8], text_fallback: Option<u64>) -> Result<Self, PclntabError> {
        if !looks_like_header(data) {
            return Err(PclntabError::NoHeader);
        }
        let word = |index: usize| -> Result<u64, PclntabError> {
            let at = 8 + index * 8;
            data.get(at..at + 8)
                .map(|bytes| u64::from_le_bytes(bytes.try_into().unwrap_or_default()))
                .ok_or(PclntabError::Malformed("header"))
        };
        let to_offset = |value: u64, what| {
            usize::try_from(value)
                .ok()
                .filter(|&v| v < data.len())
                .ok_or(PclntabError::Malformed(what))
        };
        let nfunc = usize::try_from(word(0)?).map_err(|_| PclntabError::Malformed("nfunc"))?;
        let text_start = match word(2)? {
            0 => text_fallback.ok_or(PclntabError::NoTextStart)?,
            start => start,
        };
        let funcnames = to_offset(word(3)?, "funcnametab offset")?;
        let functab = to_offset(word(7)?, "functab offset")?;
        // nfunc+1 eight-byte entries must fit.
        let needed = nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .and_then(|n| n.checked_add(functab))
            .ok_or(PclntabError::Malformed("nfunc"))?;
        if needed > data.len() {
            return Err(PclntabError::Malformed("function table past the end"));
        }
        Ok(Self {
            data,
            nfunc,
            text_start,
            funcnames,
            functab,
        })
    }

    fn u32_at(&self, at: usize) -> Option<u32> {
        let bytes = self.data.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    }

    fn name_of(&self, func_record: usize) -> Option<&'a [u8]> {
        let name_offset = usize::try_from(self.u32_at(func_record.checked_add(4)?)? as i32).ok()?;
        let start = self.funcnames.checked_add(name_offset)?;
        let tail = self.data.get(start..)?;
        let end = tail.iter().take(MAX_NAME).position(|&byte| byte == 0)?;
        Some(&tail[..end])
    }

    /// The named functions, by address and size (up to the next function's entry).
    pub fn find(&self, wanted: &[&str]) -> BTreeMap<String, Function> {
        let mut found = BTreeMap::new();
        for index in 0..self.nfunc {
            let entry_at = self.functab + index * 8;
            let (Some(entry), Some(func_offset), Some(next_entry)) = (
                self.u32_at(entry_at),
                self.u32_at(entry_at + 4),
                self.u32_at(entry_at + 8),
            ) else {
                break;
            };
            let Some(record) = self.functab.checked_add(func_offset as usize) else {
                continue;
            };
            let Some(name) = self.name_of(record) else {
                continue;
            };
            if let Some(&name) = wanted.iter().find(|want| want.as_bytes() == name) {
                found.insert(
                    name.to_owned(),
                    Function {
                        address: self.text_start + u64::from(entry),
                        size: u64::from(next_entry.saturating_sub(entry)),
                    },
                );
            }
        }
        found
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal pclntab with the given (name, entry offset) functions, in order, and an end
    /// entry `end` bytes after textStart.
    pub(crate) fn synthetic(functions: &[(&str, u32)], end: u32, text_start: u64) -> Vec<u8> {
        let header_len = 8 + 8 * 8;
        let mut names = Vec::new();
        let mut name_offsets = Vec::new();
        for (name, _) in functions {
            name_offsets.push(names.len() as u32);
            names.extend(name.as_bytes());
            names.push(0);
        }
        let funcnames = header_len;
        let functab = funcnames + names.len();
        let records = (functions.len() + 1) * 8;
        let mut out = MAGIC_GO120.to_le_bytes().to_vec();
        out.extend([0, 0, 1, 8]);
        for word in [
            functions.len() as u64,
            0,
            text_start,
            funcnames as u64,
            0,
            0,
            0,
            functab as u64,
        ] {
            out.extend(word.to_le_bytes());
        }
        out.extend(&names);
        for (index, (_, entry)) in functions.iter().enumerate() {
            out.extend(entry.to_le_bytes());
            out.extend(((records + index * 8) as u32).to_le_bytes());
        }
        out.extend(end.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        for ((_, entry), name_offset) in functions.iter().zip(&name_offsets) {
            out.extend(entry.to_le_bytes());
            out.extend(name_offset.to_le_bytes());
        }
        out
    }

    #[test]
    fn finds_functions_by_name_with_sizes() {
        let table = synthetic(
            &[
                ("runtime.a", 0),
                ("runtime.startTheWorldWithSema", 0x40),
                ("main.main", 0x100),
            ],
            0x180,
            0x401000,
        );
        let pclntab = Pclntab::parse(&table, None).unwrap();
        let found = pclntab.find(&["runtime.startTheWorldWithSema", "main.main", "absent"]);
        assert_eq!(
            found["runtime.startTheWorldWithSema"],
            Function {
                address: 0x401040,
                size: 0xc0
            }
        );
        assert_eq!(
            found["main.main"],
            Function {
                address: 0x401100,
                size: 0x80
            }
        );
        assert!(!found.contains_key("absent"));
    }

    #[test]
    fn zero_text_start_uses_the_fallback() {
        let table = synthetic(&[("f", 0x10)], 0x20, 0);
        assert_eq!(
            Pclntab::parse(&table, None).err(),
            Some(PclntabError::NoTextStart)
        );
        let found = Pclntab::parse(&table, Some(0x1000)).unwrap().find(&["f"]);
        assert_eq!(found["f"].address, 0x1010);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let valid = synthetic(&[("runtime.x", 0), ("runtime.y", 8)], 16, 0x1000);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut input = valid.clone();
            for _ in 0..1 + next() % 6 {
                let at = (next() % input.len() as u64) as usize;
                input[at] = next() as u8;
            }
            input.truncate((next() % (input.len() as u64 + 1)) as usize);
            if let Ok(table) = Pclntab::parse(&input, Some(0x1000)) {
                let _ = table.find(&["runtime.x", "runtime.y"]);
            }
        }
    }
}
