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
    cutab: usize,
    filetab: usize,
    pctab: usize,
    functab: usize,
    /// Bytes per pc-value step (the header's instruction size quantum: 1 on amd64).
    quantum: u64,
    /// Go 1.18–1.19 (magic 0xfffffff0) lay out `_func` and `inlinedCall` differently.
    go118: bool,
}

/// A `_func` record found for a PC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuncRecord {
    /// Where the record starts in the pclntab.
    at: usize,
    pub entry: u64,
}

/// PCDATA and FUNCDATA table indexes (src/internal/abi/symtab.go).
pub const PCDATA_INL_TREE_INDEX: u32 = 2;
pub const FUNCDATA_INL_TREE: u32 = 3;

/// An inlined call, from a function's inline tree (`runtime.inlinedCall`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InlinedCall {
    /// Offset of the inlined function's name in the function name table.
    pub name_offset: u32,
    /// Offset from the outer function's entry of an instruction at the call site.
    pub parent_pc: u32,
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
        let cutab = to_offset(word(4)?, "cutab offset")?;
        let filetab = to_offset(word(5)?, "filetab offset")?;
        let pctab = to_offset(word(6)?, "pctab offset")?;
        let functab = to_offset(word(7)?, "functab offset")?;
        let go118 = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) == MAGIC_GO118;
        let quantum = u64::from(data[6]);
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
            cutab,
            filetab,
            pctab,
            functab,
            quantum,
            go118,
        })
    }

    /// Go 1.18–1.19 table format (those runtimes print generic names in full).
    pub fn is_go118(&self) -> bool {
        self.go118
    }

    /// The function containing `pc`, by binary search of the function table.
    pub fn func_at(&self, pc: u64) -> Option<FuncRecord> {
        let offset = u32::try_from(pc.checked_sub(self.text_start)?).ok()?;
        let entry_of = |index: usize| self.u32_at(self.functab + index * 8);
        // The table's last entry (index nfunc) is the end of the text.
        if offset >= entry_of(self.nfunc)? {
            return None;
        }
        let (mut low, mut high) = (0, self.nfunc);
        while high - low > 1 {
            let middle = (low + high) / 2;
            if entry_of(middle)? <= offset {
                low = middle;
            } else {
                high = middle;
            }
        }
        let func_offset = self.u32_at(self.functab + low * 8 + 4)?;
        let at = self.functab.checked_add(func_offset as usize)?;
        let entry = u64::from(self.u32_at(at)?) + self.text_start;
        Some(FuncRecord { at, entry })
    }

    /// The function's name.
    pub fn func_name(&self, func: FuncRecord) -> Option<&'a [u8]> {
        self.name_of(func.at)
    }

    /// A name from the function name table.
    pub fn name(&self, offset: u32) -> Option<&'a [u8]> {
        let tail = self
            .data
            .get(self.funcnames.checked_add(offset as usize)?..)?;
        let end = tail.iter().take(MAX_NAME).position(|&byte| byte == 0)?;
        Some(&tail[..end])
    }

    /// Size of the fixed part of `_func` (Go 1.20 added `startLine`).
    fn func_fixed_size(&self) -> usize {
        if self.go118 { 40 } else { 44 }
    }

    fn field(&self, func: FuncRecord, offset: usize) -> Option<u32> {
        self.u32_at(func.at.checked_add(offset)?)
    }

    /// The source file and line of `pc` in `func` (the innermost inlined position).
    pub fn file_line(&self, func: FuncRecord, pc: u64) -> Option<(&'a [u8], i32)> {
        let file_number = self.pcvalue(self.field(func, 20)?, func.entry, pc)?;
        let line = self.pcvalue(self.field(func, 24)?, func.entry, pc)?;
        let cu = self.field(func, 32)?;
        let index = usize::try_from(i64::from(cu) + i64::from(file_number)).ok()?;
        let file_offset = self.u32_at(self.cutab.checked_add(index.checked_mul(4)?)?)?;
        let tail = self
            .data
            .get(self.filetab.checked_add(file_offset as usize)?..)?;
        let end = tail.iter().take(MAX_NAME).position(|&byte| byte == 0)?;
        Some((&tail[..end], line))
    }

    /// A PCDATA table's value at `pc`; -1 where the table has none (e.g. not inlined).
    pub fn pcdata(&self, func: FuncRecord, table: u32, pc: u64) -> Option<i32> {
        let npcdata = self.field(func, 28)?;
        if table >= npcdata {
            return Some(-1);
        }
        let offset = self.field(func, self.func_fixed_size() + 4 * table as usize)?;
        self.pcvalue(offset, func.entry, pc)
    }

    /// A FUNCDATA offset (relative to the module's `go:func.*` data), if the function has it.
    pub fn funcdata(&self, func: FuncRecord, index: u32) -> Option<u32> {
        let nfuncdata = u32::from(*self.data.get(func.at + self.func_fixed_size() - 1)?);
        if index >= nfuncdata {
            return None;
        }
        let npcdata = self.field(func, 28)? as usize;
        let at = self
            .func_fixed_size()
            .checked_add(4 * npcdata)?
            .checked_add(4 * index as usize)?;
        self.field(func, at).filter(|&offset| offset != u32::MAX)
    }

    /// Decode the inlined call at `index` of an inline tree starting at `tree` (raw bytes).
    pub fn inlined_call(&self, tree: &[u8], index: i32) -> Option<InlinedCall> {
        let (size, name_at, parent_at) = if self.go118 { (20, 12, 16) } else { (16, 4, 8) };
        let record = tree.get(usize::try_from(index).ok()?.checked_mul(size)?..)?;
        let read = |at: usize| Some(u32::from_le_bytes(record.get(at..at + 4)?.try_into().ok()?));
        Some(InlinedCall {
            name_offset: read(name_at)?,
            parent_pc: read(parent_at)?,
        })
    }

    /// Run a pc-value table (src/runtime/symtab.go `pcvalue` and `step`): pairs of a zig-zag
    /// value delta and a pc delta (in instruction quanta, here 1), starting from value -1 at
    /// the function's entry, until the first entry past `target`.
    fn pcvalue(&self, table_offset: u32, entry: u64, target: u64) -> Option<i32> {
        if table_offset == 0 {
            return Some(-1);
        }
        let mut rest = self
            .data
            .get(self.pctab.checked_add(table_offset as usize)?..)?;
        let (mut pc, mut value) = (entry, -1i32);
        let mut first = true;
        // A table has at most one entry per instruction byte; stop runaway input there.
        for _ in 0..1 << 20 {
            let value_delta = read_varint(&mut rest)?;
            if value_delta == 0 && !first {
                return None;
            }
            first = false;
            let delta = ((value_delta >> 1) as i32) ^ -((value_delta & 1) as i32);
            value = value.wrapping_add(delta);
            pc = pc.checked_add(u64::from(read_varint(&mut rest)?) * self.quantum)?;
            if target < pc {
                return Some(value);
            }
        }
        None
    }

    fn u32_at(&self, at: usize) -> Option<u32> {
        let bytes = self.data.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    }

    fn name_of(&self, func_record: usize) -> Option<&'a [u8]> {
        let name_offset = self.u32_at(func_record.checked_add(4)?)?;
        if (name_offset as i32) < 0 {
            return None;
        }
        self.name(name_offset)
    }

    /// The named functions, by address and size (up to the next function's entry); of two with
    /// one name (a function and its ABI0 wrapper), the bigger.
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
            let Ok(name) = std::str::from_utf8(name) else {
                continue;
            };
            if super::is_wanted(wanted, name) {
                let function = Function {
                    address: self.text_start + u64::from(entry),
                    size: u64::from(next_entry.saturating_sub(entry)),
                };
                // A function that assembly calls also has an ABI0 wrapper under the same name
                // here (the symbol table calls it `NAME.abi0`): a few instructions that call
                // the body. The body is the function; it is the bigger of the two.
                found
                    .entry(name.to_owned())
                    .and_modify(|kept: &mut Function| {
                        if function.size > kept.size {
                            *kept = function;
                        }
                    })
                    .or_insert(function);
            }
        }
        found
    }
}

/// A Go varint (LEB128, unsigned, at most 5 bytes for 32 bits).
fn read_varint(rest: &mut &[u8]) -> Option<u32> {
    let mut value = 0u32;
    for (index, &byte) in rest.iter().enumerate().take(5) {
        value |= u32::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            *rest = &rest[index + 1..];
            return Some(value);
        }
    }
    None
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

    /// A function assembly calls has a small ABI0 wrapper of the same name: the body wins,
    /// whichever comes first.
    #[test]
    fn of_two_functions_with_one_name_finds_the_body() {
        for functions in [
            [
                ("runtime.schedinit", 0),
                ("runtime.x", 0x400),
                ("runtime.schedinit", 0x500),
            ],
            [
                ("runtime.schedinit", 0),
                ("runtime.x", 0x20),
                ("runtime.schedinit", 0x40),
            ],
        ] {
            let table = synthetic(&functions, 0x540, 0x401000);
            let found = Pclntab::parse(&table, None)
                .unwrap()
                .find(&["runtime.schedinit"]);
            let (body, size) = if functions[1].1 == 0x400 {
                (0x401000, 0x400)
            } else {
                (0x401040, 0x500)
            };
            assert_eq!(
                found["runtime.schedinit"],
                Function {
                    address: body,
                    size
                }
            );
        }
    }

    #[test]
    fn finds_the_function_containing_a_pc() {
        let table = synthetic(&[("a", 0), ("b", 0x40), ("c", 0x100)], 0x180, 0x401000);
        let pclntab = Pclntab::parse(&table, None).unwrap();
        let name = |pc| pclntab.func_at(pc).and_then(|func| pclntab.func_name(func));
        assert_eq!(name(0x401000), Some(&b"a"[..]));
        assert_eq!(name(0x40103f), Some(&b"a"[..]));
        assert_eq!(name(0x401040), Some(&b"b"[..]));
        assert_eq!(name(0x40117f), Some(&b"c"[..]));
        assert_eq!(name(0x401180), None, "past the end of the text");
        assert_eq!(name(0x400fff), None, "before the text");
        assert_eq!(
            pclntab.func_at(0x401050).map(|func| func.entry),
            Some(0x401040)
        );
    }

    #[test]
    fn pc_value_tables_decode_like_the_runtime() {
        // Value deltas are zig-zag encoded: +5 → 10, -2 → 3. Table: value 4 (from -1) up to
        // entry+3, then 2 up to entry+0x83, then the end marker.
        let mut table = synthetic(&[("f", 0)], 0x100, 0x1000);
        let pctab_at = table.len();
        table.extend([10, 3, 3, 0x80, 0x01, 0]);
        // Point the header's pctab offset at those bytes, minus one so the table's offset is 1
        // (offset 0 means "no table").
        table[8 + 6 * 8..8 + 7 * 8].copy_from_slice(&((pctab_at - 1) as u64).to_le_bytes());
        let pclntab = Pclntab::parse(&table, None).unwrap();
        let value = |pc| pclntab.pcvalue(1, 0x1000, pc);
        assert_eq!(value(0x1000), Some(4));
        assert_eq!(value(0x1002), Some(4));
        assert_eq!(value(0x1003), Some(2));
        assert_eq!(value(0x1082), Some(2));
        assert_eq!(value(0x1083), None, "past the table's end marker");
        assert_eq!(
            pclntab.pcvalue(0, 0x1000, 0x1000),
            Some(-1),
            "offset 0: no table"
        );
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
                for pc in [0x1000, 0x1004, 0x1008, 0x100f, 0x2000, next() % 0x3000] {
                    if let Some(func) = table.func_at(pc) {
                        let _ = table.func_name(func);
                        let _ = table.file_line(func, pc);
                        let _ = table.pcdata(func, PCDATA_INL_TREE_INDEX, pc);
                        let _ = table.funcdata(func, FUNCDATA_INL_TREE);
                        let _ = table.inlined_call(&input, (next() % 8) as i32);
                    }
                }
            }
        }
    }
}
