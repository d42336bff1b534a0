//! Understanding a Go binary from outside: its Go version (build info), where runtime
//! functions live (ELF symbols), their RET sites (disassembly), and how virtual addresses map
//! to the file offsets that uprobes are placed at.
pub mod abi;
pub mod buildinfo;
pub mod disasm;
pub mod dwarf;
mod moduledata;
pub mod pclntab;
pub mod runtime_vars;
pub mod symbolize;
pub mod variables;
pub mod version;
pub mod vitals;

use std::{collections::BTreeMap, path::Path};

use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};
use thiserror::Error;

pub use self::{buildinfo::BuildInfo, runtime_vars::VersionSource, version::GoVersion};

/// A function in the binary, by virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    pub address: u64,
    pub size: u64,
}

/// A loadable segment: virtual address range and where its bytes are in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    address: u64,
    file_offset: u64,
    file_size: u64,
}

#[derive(Debug, Error)]
pub enum GoBinaryError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    // The variants below leave the path out of their message: callers name the target.
    #[error("not an ELF executable ({detail})")]
    NotElf { path: String, detail: String },
    #[error("neither Go build info nor a Go runtime with its version in the executable")]
    NotGo { path: String },
    #[error("built by a Go release older than 1.18 (old build info format)")]
    PreGo118 { path: String },
    #[error("corrupt Go build info: {detail}")]
    CorruptBuildInfo { path: String, detail: String },
    #[error("neither an ELF symbol table nor a readable Go pclntab ({detail})")]
    NoFunctionTable { path: String, detail: String },
}

/// What mapscope knows about one Go executable.
#[derive(Debug)]
pub struct GoBinary {
    data: Vec<u8>,
    /// Only `go_version` is set when the binary has no build info (`version_source`).
    pub build_info: BuildInfo,
    pub version: GoVersion,
    pub version_source: VersionSource,
    segments: Vec<Segment>,
    /// Only the runtime functions mapscope asked for, by full Go name.
    functions: BTreeMap<String, Function>,
    /// Where the functions were found.
    pub function_source: FunctionSource,
    pub layout: Layout,
    /// The Go pclntab, for symbolizing any PC (`symbolizer`).
    pclntab: Option<PclntabSpan>,
}

/// Where the pclntab is in the file, and the addresses it is relative to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PclntabSpan {
    file_offset: usize,
    len: usize,
    text_start: Option<u64>,
    gofunc: Option<u64>,
    /// `moduledata.types` up to `etypes`, at link-time addresses.
    types: Option<(u64, u64)>,
}

/// How the executable was linked, as far as a user deciding about mapscope cares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Layout {
    /// Position-independent (ELF type ET_DYN): loaded at a random base.
    pub pie: bool,
    /// No program interpreter (PT_INTERP): statically linked.
    pub static_link: bool,
    /// Has DWARF debug information.
    pub dwarf: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionSource {
    /// The ELF `.symtab`.
    SymbolTable,
    /// The Go runtime's own function table: the binary is stripped.
    Pclntab,
}

impl GoBinary {
    /// The executable's bytes, as read.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Read and analyse the executable at `path` (for a live process, `/proc/PID/exe`, which
    /// reaches the right file even in another mount namespace or after it was deleted).
    /// `wanted` names the functions to resolve.
    pub fn open(path: &Path, wanted: &[&str]) -> Result<Self, GoBinaryError> {
        let data = Self::read(path)?;
        Self::parse(data, &path.display().to_string(), wanted)
    }

    /// Read the executable at `path` for `parse` (a regular file, of a size an executable may
    /// have).
    pub fn read(path: &Path) -> Result<Vec<u8>, GoBinaryError> {
        crate::files::read_regular(path, crate::files::MAX_EXECUTABLE).map_err(|source| {
            GoBinaryError::Read {
                path: path.display().to_string(),
                source,
            }
        })
    }

    /// Analyse an executable already read (`shown` names it in errors).
    pub fn parse(data: Vec<u8>, shown: &str, wanted: &[&str]) -> Result<Self, GoBinaryError> {
        let path = || shown.to_owned();
        let file = object::File::parse(&*data).map_err(|error| GoBinaryError::NotElf {
            path: path(),
            detail: error.to_string(),
        })?;
        if file.format() != object::BinaryFormat::Elf {
            return Err(GoBinaryError::NotElf {
                path: path(),
                detail: format!("{:?} file", file.format()),
            });
        }

        let blob = match file.section_by_name(".go.buildinfo") {
            Some(section) => section.data().ok(),
            // Only a file without section headers is searched for the magic: any other
            // program may hold the magic as data (mapscope does), without being Go.
            None if file.sections().next().is_none() => file
                .segments()
                .filter_map(|segment| segment.data().ok())
                .find_map(buildinfo::find),
            None => None,
        };
        let (build_info, version_source) = match blob.map(buildinfo::parse) {
            Some(Ok(build_info)) => (build_info, VersionSource::BuildInfo),
            Some(Err(buildinfo::BuildInfoError::PointerFormat)) => {
                return Err(GoBinaryError::PreGo118 { path: path() });
            }
            Some(Err(error @ buildinfo::BuildInfoError::Malformed)) => {
                return Err(GoBinaryError::CorruptBuildInfo {
                    path: path(),
                    detail: error.to_string(),
                });
            }
            // No build info: still Go if it has the runtime's function table and the
            // release string the linker writes into every Go program.
            None | Some(Err(buildinfo::BuildInfoError::NoMagic)) => {
                let (go_version, source) = runtime_vars::find(&file, &data)
                    .ok_or_else(|| GoBinaryError::NotGo { path: path() })?;
                let build_info = BuildInfo {
                    go_version,
                    ..BuildInfo::default()
                };
                (build_info, source)
            }
        };
        let version =
            build_info
                .go_version
                .parse()
                .map_err(
                    |error: version::VersionParseError| GoBinaryError::CorruptBuildInfo {
                        path: path(),
                        detail: error.to_string(),
                    },
                )?;

        let layout = Layout {
            pie: file.kind() == object::ObjectKind::Dynamic,
            static_link: !has_interpreter(&data),
            dwarf: file.section_by_name(".debug_info").is_some()
                || file.section_by_name(".zdebug_info").is_some(),
        };
        let segments = file
            .segments()
            .map(|segment| {
                let (file_offset, file_size) = segment.file_range();
                Segment {
                    address: segment.address(),
                    file_offset,
                    file_size,
                }
            })
            .collect();

        let mut functions = BTreeMap::new();
        for symbol in file.symbols() {
            let Ok(name) = symbol.name() else { continue };
            if is_wanted(wanted, name) {
                functions.insert(
                    name.to_owned(),
                    Function {
                        address: symbol.address(),
                        size: symbol.size(),
                    },
                );
            }
        }
        let pclntab = Self::locate_pclntab(&file, &data, wanted, abi::moduledata_row(version));
        let mut function_source = FunctionSource::SymbolTable;
        if file.symbols().next().is_none() {
            // Stripped: the runtime's own table has every function.
            let span = pclntab.ok_or_else(|| GoBinaryError::NoFunctionTable {
                path: path(),
                detail: pclntab::PclntabError::NoHeader.to_string(),
            })?;
            // The span comes from the file's own headers: checked, not trusted.
            let bytes = span
                .file_offset
                .checked_add(span.len)
                .and_then(|end| data.get(span.file_offset..end))
                .ok_or_else(|| GoBinaryError::NoFunctionTable {
                    path: path(),
                    detail: "the pclntab runs past the end of the file".to_owned(),
                })?;
            let table = pclntab::Pclntab::parse(bytes, span.text_start).map_err(|error| {
                GoBinaryError::NoFunctionTable {
                    path: path(),
                    detail: error.to_string(),
                }
            })?;
            // Variables are not in the pclntab; the one mapscope reads is found through the
            // runtime code that sets it, looked up in the same pass over the table.
            let wants_rate = wanted.contains(&abi::MEM_PROFILE_RATE);
            let vitals_row = match abi::vitals_abi(version) {
                abi::VitalsSupport::Known(row) | abi::VitalsSupport::Unverified(row)
                    if abi::GLOBALS.iter().any(|global| wanted.contains(global)) =>
                {
                    Some(row)
                }
                _ => None,
            };
            let mut names = wanted.to_vec();
            if wants_rate {
                names.extend(runtime_vars::MEM_PROFILE_RATE_USERS);
            }
            if vitals_row.is_some() {
                names.extend(abi::GLOBAL_USERS);
            }
            functions = table.find(&names);
            if wants_rate && let Some(address) = runtime_vars::mem_profile_rate(&file, &functions) {
                functions.insert(
                    abi::MEM_PROFILE_RATE.to_owned(),
                    Function { address, size: 8 },
                );
            }
            if let Some(row) = vitals_row {
                for (name, address) in runtime_vars::vitals_globals(&file, &functions, row) {
                    functions.insert(name.to_owned(), Function { address, size: 0 });
                }
            }
            functions.retain(|name, _| is_wanted(wanted, name));
            function_source = FunctionSource::Pclntab;
        }
        drop(file);
        Ok(Self {
            data,
            build_info,
            version,
            version_source,
            segments,
            functions,
            function_source,
            layout,
            pclntab,
        })
    }

    /// Find the pclntab: its section, or in a file without section headers a header found in
    /// the loaded segments (pointer-aligned) that lists `wanted`. Also works out Go's text
    /// start and `go:func.*`: from the header, the symbol table, the runtime's moduledata, or
    /// (text start, for the Go linker's own layout) the start of `.text`.
    fn locate_pclntab(
        file: &object::File<'_>,
        data: &[u8],
        wanted: &[&str],
        moduledata_row: Option<&abi::ModuleDataRow>,
    ) -> Option<PclntabSpan> {
        let text_section = file
            .section_by_name(".text")
            .map(|section| section.address());
        let gofunc_symbol = file
            .symbols()
            .find(|symbol| matches!(symbol.name(), Ok("go:func.*" | "go.func.*")))
            .map(|symbol| symbol.address());
        let span = |file_offset: usize, address: u64| -> Option<PclntabSpan> {
            let table = data.get(file_offset..)?;
            let (header_text, funcnames) = pclntab::header_words(table)?;
            let module =
                moduledata::read(file, address, funcnames, moduledata_row).unwrap_or_default();
            let text_start = Some(header_text)
                .filter(|&text| text != 0)
                .or(module.text)
                .or(text_section);
            Some(PclntabSpan {
                file_offset,
                len: table.len(),
                text_start,
                gofunc: gofunc_symbol.or(module.gofunc),
                types: module.types,
            })
        };
        if let Some(section) = file.section_by_name(".gopclntab") {
            let (offset, size) = section.file_range()?;
            let found = span(usize::try_from(offset).ok()?, section.address())?;
            return Some(PclntabSpan {
                len: usize::try_from(size).ok()?,
                ..found
            });
        }
        for segment in file.segments() {
            let (segment_offset, segment_size) = segment.file_range();
            let Some(bytes) = usize::try_from(segment_offset).ok().and_then(|start| {
                data.get(start..start.checked_add(usize::try_from(segment_size).ok()?)?)
            }) else {
                continue;
            };
            for at in (0..bytes.len().saturating_sub(8)).step_by(8) {
                if !pclntab::looks_like_header(&bytes[at..]) {
                    continue;
                }
                let Some(found) = span(segment_offset as usize + at, segment.address() + at as u64)
                else {
                    continue;
                };
                let found = PclntabSpan {
                    len: bytes.len() - at,
                    ..found
                };
                let table = &data[found.file_offset..found.file_offset + found.len];
                if pclntab::Pclntab::parse(table, found.text_start)
                    .is_ok_and(|table| wanted.is_empty() || !table.find(wanted).is_empty())
                {
                    return Some(found);
                }
            }
        }
        None
    }

    pub fn function(&self, name: &str) -> Option<Function> {
        self.functions.get(name).copied()
    }

    /// Where the type descriptors are (`moduledata.types` up to `etypes`, link-time addresses;
    /// add the load bias in a PIE): type names are offsets from the start.
    pub fn type_descriptors(&self) -> Option<std::ops::Range<u64>> {
        let (start, end) = self.pclntab?.types?;
        Some(start..end)
    }

    /// The file offset of a virtual address, through the program headers (a uprobe is placed by
    /// file offset). `None` when no loadable segment holds the address in the file.
    pub fn file_offset(&self, address: u64) -> Option<u64> {
        self.segments.iter().find_map(|segment| {
            let delta = address.checked_sub(segment.address)?;
            (delta < segment.file_size).then_some(segment.file_offset + delta)
        })
    }

    /// The machine code of a function, when the file holds all of it.
    pub fn code(&self, function: Function) -> Option<&[u8]> {
        let start = usize::try_from(self.file_offset(function.address)?).ok()?;
        let end = start.checked_add(usize::try_from(function.size).ok()?)?;
        self.data.get(start..end)
    }

    /// The resolved functions whose names start with `prefix` (asked for as `prefix*`).
    pub fn functions_with_prefix(&self, prefix: &str) -> Vec<(&str, Function)> {
        self.functions
            .range(prefix.to_owned()..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(name, &function)| (name.as_str(), function))
            .collect()
    }

    /// The lowest address a loadable segment maps from the file: a PIE's load bias is where the
    /// kernel put the executable minus this.
    pub fn lowest_address(&self) -> Option<u64> {
        self.segments
            .iter()
            .filter(|segment| segment.file_size > 0)
            .map(|segment| segment.address)
            .min()
    }

    /// How this binary's DWARF disagrees with the table's `facts`: `None` without DWARF, an
    /// empty list when they agree.
    pub fn dwarf_disagreements(&self, facts: &dwarf::DwarfFacts) -> Option<Vec<String>> {
        if !self.layout.dwarf {
            return None;
        }
        let file = object::File::parse(&*self.data).ok()?;
        Some(match dwarf::index(&file, facts) {
            Ok(index) => facts.disagreements(&index),
            Err(error) => vec![format!("its DWARF could not be read: {error}")],
        })
    }

    /// Where to probe the function's entry so a call counts once even if the goroutine's stack
    /// had to grow (see `disasm::entry_after_stack_check`).
    pub fn entry_site(&self, function: Function) -> u64 {
        self.code(function).map_or(function.address, |code| {
            disasm::entry_after_stack_check(code, function.address)
        })
    }

    /// Where to probe the function so the kernel's stack walk includes its immediate caller:
    /// after the stack check and the frame pointer setup (see `disasm::after_frame_setup`).
    pub fn frame_site(&self, function: Function) -> u64 {
        let entry = self.entry_site(function);
        self.code(function).map_or(entry, |code| {
            disasm::after_frame_setup(code, function.address, entry)
        })
    }

    /// Where the function makes direct calls to.
    pub fn call_targets(&self, function: Function) -> Vec<u64> {
        self.code(function)
            .map(|code| disasm::call_targets(code, function.address))
            .unwrap_or_default()
    }

    /// Virtual addresses of the function's RET instructions.
    pub fn ret_sites(&self, function: Function) -> Vec<u64> {
        self.code(function)
            .map(|code| disasm::ret_sites(code, function.address))
            .unwrap_or_default()
    }
}

/// Whether `name` is asked for: exactly, or by a `prefix*` entry.
pub(crate) fn is_wanted(wanted: &[&str], name: &str) -> bool {
    wanted.iter().any(|want| match want.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => *want == name,
    })
}

/// Whether a 64-bit little-endian ELF file has a PT_INTERP program header (dynamic linking).
fn has_interpreter(data: &[u8]) -> bool {
    use object::read::elf::{ElfFile64, ProgramHeader as _};
    ElfFile64::<object::Endianness>::parse(data).is_ok_and(|elf| {
        let endian = elf.endian();
        elf.elf_program_headers()
            .iter()
            .any(|header| header.p_type(endian) == object::elf::PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_elf_input_is_a_clear_error() {
        let error =
            GoBinary::parse(b"#!/bin/sh\necho hi\n".to_vec(), "script.sh", &[]).unwrap_err();
        assert!(matches!(error, GoBinaryError::NotElf { .. }), "{error}");
    }

    #[test]
    fn this_dynamically_linked_test_binary_has_an_interpreter() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&me));
        assert!(!has_interpreter(b"not an ELF file"));
    }

    #[test]
    fn rust_program_is_not_go() {
        // This test binary is Rust and even contains the build info magic as data (the
        // buildinfo tests use it): still not Go.
        let me = std::env::current_exe().unwrap();
        let error = GoBinary::open(&me, &[]).unwrap_err();
        assert!(matches!(error, GoBinaryError::NotGo { .. }), "{error}");
    }

    #[test]
    fn file_offsets_follow_program_headers() {
        let binary = GoBinary {
            data: Vec::new(),
            build_info: BuildInfo::default(),
            version: GoVersion::new(1, 27, 0),
            version_source: VersionSource::BuildInfo,
            segments: vec![
                Segment {
                    address: 0x400000,
                    file_offset: 0,
                    file_size: 0x1000,
                },
                Segment {
                    address: 0x600000,
                    file_offset: 0x1000,
                    file_size: 0x800,
                },
            ],
            functions: BTreeMap::new(),
            function_source: FunctionSource::SymbolTable,
            layout: Layout::default(),
            pclntab: None,
        };
        assert_eq!(binary.file_offset(0x400010), Some(0x10));
        assert_eq!(binary.file_offset(0x600010), Some(0x1010));
        assert_eq!(
            binary.file_offset(0x600800),
            None,
            "past the file-backed part"
        );
        assert_eq!(binary.file_offset(0x3fffff), None);
    }
}
