//! Maps held in package-level variables (`var cache = map[string]int{}`, `var index map[K]V`
//! set in `init`, `var labels = labelSet{}` of a named map type), found in the binary itself:
//! where each variable is, and the map type descriptor that reading the map needs.
//!
//! Only the DWARF ties a variable to its type. An ELF data symbol (STT_OBJECT) has a name, an
//! address and a size, no type; and the Go linker keeps type descriptors out of `.symtab`
//! altogether (go1.19.8 through go1.27.3 list no `type:map[string]int` or
//! `type.map[string]int`, only `type:*` / `type.*`, where they all start). So a binary built
//! with `-ldflags=-w` (or `-s`) yields no map variables: its maps are found by the probes.
//!
//! What Go's linker writes (src/cmd/link/internal/ld/dwarf.go, the same shape in go1.19.8
//! through go1.27.3):
//! - a package-level variable is a DW_TAG_variable at depth 1 of its package's unit:
//!   DW_AT_name the symbol name (`main.cache`), DW_AT_location `DW_OP_addr <link-time
//!   address>`, DW_AT_type a reference, usually into another unit, to its type;
//! - a map type is a DW_TAG_typedef named as the type (`map[string]int`, `main.labelSet`) with
//!   DW_AT_go_kind 21 (`reflect.Map`) and DW_AT_go_runtime_type, its type descriptor's offset
//!   from `moduledata.types` (DW_FORM_addr written by `AddSectionOffset`, so an offset despite
//!   the form), 0 when the linker kept no descriptor for it. It points at the header pointer
//!   type (`*hash<string,int>` through go1.23, `*map<string,int>` for the swiss maps of go1.24
//!   on), which is not needed here.
//!
//! Only `.debug_info`, `.debug_abbrev` and `.debug_str` are read (decompressed if need be), in one
//! pass that reads the attributes of variables and typedefs only and skips every other entry.
use std::{borrow::Cow, collections::HashMap, ops::Range};

use gimli::{AttributeValue, EndianSlice, RunTimeEndian, SectionId};
use object::{Object as _, ObjectSection as _, ObjectSegment as _};
use thiserror::Error;

use super::{
    GoBinary,
    abi::{TFLAG_EXTRA_STAR, TYPE_ABI},
};

/// A package-level variable holding a Go map.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MapVariable {
    /// Its Go name, e.g. `main.cache` (the symbol name).
    pub name: String,
    /// The variable's link-time address (add the load bias for a PIE): it holds the map header
    /// pointer (8 bytes), zero while the map is nil.
    pub address: u64,
    /// The link-time address of the map's type descriptor (add the load bias for a PIE).
    pub type_descriptor: u64,
    /// The type's name as `reflect` prints it (`map[string]int`, `main.labelSet`), read from
    /// the descriptor; the DWARF name (package paths in full) if that cannot be read.
    pub type_name: String,
}

#[derive(Debug, Error)]
pub enum VariablesError {
    #[error("its DWARF could not be read ({0}); package-level maps are left to the probes to find")]
    Dwarf(#[from] gimli::Error),
    #[error(
        "its DWARF could not be decompressed ({0}); package-level maps are left to the probes to find"
    )]
    Decompress(#[from] object::Error),
    #[error(
        "where its type descriptors are is unknown (runtime.firstmoduledata not found), so the \
         DWARF's map types cannot be placed; package-level maps are left to the probes to find"
    )]
    NoTypeDescriptors,
}

/// `DW_AT_go_kind` (src/cmd/internal/dwarf/dwarf.go): the type's `reflect.Kind`.
const DW_AT_GO_KIND: gimli::DwAt = gimli::DwAt(0x2900);
/// `DW_AT_go_runtime_type`: the type descriptor, as an offset from `moduledata.types`.
const DW_AT_GO_RUNTIME_TYPE: gimli::DwAt = gimli::DwAt(0x2904);
/// `reflect.Map` (`abi.Map`, `kindMap` in go1.19's runtime/typekind.go).
const KIND_MAP: u8 = 21;
/// `kindMask`: the kind is the low 5 bits of the descriptor's kind byte (go1.19 keeps flags in
/// the others).
const KIND_MASK: u8 = (1 << 5) - 1;
/// `kind` / `Kind_` (uint8) in `runtime._type` / `internal/abi.Type`: after size, ptrdata,
/// hash, tflag, align and fieldAlign, the same in go1.19.8 through go1.27.3.
const TYPE_KIND: usize = 23;
/// Bytes of a type descriptor read: through `str` / `Str`, the name offset.
const DESCRIPTOR_BYTES: usize = TYPE_ABI.name_offset as usize + 4;
/// Longest type name read from a descriptor; a longer one is taken from the DWARF.
const MAX_NAME: usize = 4096;
/// Sections a Go package-level variable can live in.
const DATA_SECTIONS: [&str; 4] = [".data", ".noptrdata", ".bss", ".noptrbss"];

impl GoBinary {
    /// The package-level variables holding maps, by address; none without DWARF (built with
    /// `-ldflags=-w` or `-s`). Reads the DWARF of the bytes `open` read (nothing is read again
    /// from disk): about 50 ms for a 43 MB binary with 3,800 variables in its DWARF (a release
    /// build; five times that in a debug build).
    pub fn map_variables(&self) -> Result<Vec<MapVariable>, VariablesError> {
        if !self.layout.dwarf {
            return Ok(Vec::new());
        }
        let file = object::File::parse(&*self.data)?;
        map_variables(&file, self.type_descriptors())
    }
}

/// The package-level variables holding maps in `file`, by address. `types` is where the type
/// descriptors are (`moduledata.types` up to `etypes`, link-time addresses), which DWARF gives
/// as offsets; without it nothing can be found once there is DWARF (an error). Without DWARF:
/// none.
pub fn map_variables(
    file: &object::File<'_>,
    types: Option<Range<u64>>,
) -> Result<Vec<MapVariable>, VariablesError> {
    if file.section_by_name(".debug_info").is_none() {
        return Ok(Vec::new());
    }
    let types = types.ok_or(VariablesError::NoTypeDescriptors)?;
    let load = |id: SectionId| -> Result<Cow<'_, [u8]>, object::Error> {
        if !matches!(
            id,
            SectionId::DebugInfo | SectionId::DebugAbbrev | SectionId::DebugStr
        ) {
            return Ok(Cow::Borrowed(&[]));
        }
        match file.section_by_name(id.name()) {
            Some(section) => section.uncompressed_data(),
            None => Ok(Cow::Borrowed(&[])),
        }
    };
    let sections = gimli::DwarfSections::load(load)?;
    let endian = if file.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let dwarf = sections.borrow(|section| EndianSlice::new(section, endian));
    let found = walk(&dwarf)?;
    let data: Vec<Range<u64>> = DATA_SECTIONS
        .iter()
        .filter_map(|name| file.section_by_name(name))
        .map(|section| section.address()..section.address().saturating_add(section.size()))
        .collect();
    let image = Image::new(file);
    Ok(join(found, &data, &types, &image))
}

/// What one pass over the DWARF found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Found {
    /// Package-level variables at an address: (name, address, offset of the type's entry in
    /// `.debug_info`).
    variables: Vec<(String, u64, u64)>,
    /// Map types by the offset of their entry in `.debug_info`: (name, descriptor offset from
    /// `moduledata.types`).
    map_types: HashMap<u64, (String, u64)>,
}

/// Read every unit's variables at depth 1 and its map typedefs; skip everything else without
/// decoding it.
fn walk<R: gimli::Reader<Offset = usize>>(dwarf: &gimli::Dwarf<R>) -> Result<Found, gimli::Error> {
    let mut found = Found::default();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let abbreviations = dwarf.abbreviations(&header)?;
        let encoding = header.encoding();
        let mut entries = header.entries_raw(&abbreviations, None)?;
        while !entries.is_empty() {
            let depth = entries.next_depth();
            let offset = entries.next_offset();
            let Some(abbreviation) = entries.read_abbreviation()? else {
                continue;
            };
            let tag = abbreviation.tag();
            let wanted =
                (tag == gimli::DW_TAG_variable && depth == 1) || tag == gimli::DW_TAG_typedef;
            if !wanted {
                entries.skip_attributes(abbreviation.attributes())?;
                continue;
            }
            let (mut name, mut address, mut type_ref, mut kind, mut runtime_type) =
                (None, None, None, None, None);
            for &spec in abbreviation.attributes() {
                let attribute = entries.read_attribute(spec)?;
                let value = attribute.value();
                match attribute.name() {
                    gimli::DW_AT_name => name = text(dwarf, value),
                    gimli::DW_AT_location => address = only_address(value, encoding),
                    gimli::DW_AT_type => {
                        type_ref = match value {
                            AttributeValue::UnitRef(at) => {
                                at.to_debug_info_offset(&header).map(|at| at.0 as u64)
                            }
                            AttributeValue::DebugInfoRef(at) => Some(at.0 as u64),
                            _ => None,
                        }
                    }
                    DW_AT_GO_KIND => kind = value.udata_value(),
                    DW_AT_GO_RUNTIME_TYPE => {
                        runtime_type = match value {
                            AttributeValue::Addr(offset) => Some(offset),
                            other => other.udata_value(),
                        }
                    }
                    _ => {}
                }
            }
            let Some(name) = name else { continue };
            if tag == gimli::DW_TAG_variable {
                if let (Some(address), Some(type_ref)) = (address, type_ref) {
                    found.variables.push((name, address, type_ref));
                }
            } else if kind == Some(u64::from(KIND_MAP))
                && let (Some(runtime_type), Some(at)) =
                    (runtime_type, offset.to_debug_info_offset(&header))
            {
                found.map_types.insert(at.0 as u64, (name, runtime_type));
            }
        }
    }
    Ok(found)
}

/// A name: inline (what Go writes) or in `.debug_str`.
fn text<R: gimli::Reader>(dwarf: &gimli::Dwarf<R>, value: AttributeValue<R>) -> Option<String> {
    let bytes = match value {
        AttributeValue::String(bytes) => bytes,
        AttributeValue::DebugStrRef(offset) => dwarf.debug_str.get_str(offset).ok()?,
        _ => return None,
    };
    Some(bytes.to_string_lossy().ok()?.into_owned())
}

/// The address of a location that is exactly `DW_OP_addr <address>` (a static variable).
fn only_address<R: gimli::Reader>(
    value: AttributeValue<R>,
    encoding: gimli::Encoding,
) -> Option<u64> {
    let AttributeValue::Exprloc(expression) = value else {
        return None;
    };
    let mut operations = expression.operations(encoding);
    match (operations.next(), operations.next()) {
        (Ok(Some(gimli::Operation::Address { address })), Ok(None)) => Some(address),
        _ => None,
    }
}

/// The file's loadable bytes by link-time address.
struct Image<'a> {
    segments: Vec<(u64, &'a [u8])>,
}

impl<'a> Image<'a> {
    fn new(file: &object::File<'a>) -> Self {
        Self {
            segments: file
                .segments()
                .filter_map(|segment| Some((segment.address(), segment.data().ok()?)))
                .collect(),
        }
    }

    /// The file's bytes from `address` to the end of its segment.
    fn bytes_from(&self, address: u64) -> Option<&'a [u8]> {
        self.segments.iter().find_map(|&(start, data)| {
            let at = usize::try_from(address.checked_sub(start)?).ok()?;
            data.get(at..).filter(|rest| !rest.is_empty())
        })
    }
}

/// Variables whose type is a map type, in a data section, whose descriptor is a map type in
/// the file: sorted by address, each address once.
fn join(
    found: Found,
    data: &[Range<u64>],
    types: &Range<u64>,
    image: &Image<'_>,
) -> Vec<MapVariable> {
    let mut variables: Vec<MapVariable> = found
        .variables
        .into_iter()
        .filter(|&(_, address, _)| {
            data.iter().any(|range| {
                address >= range.start && address.checked_add(8).is_some_and(|end| end <= range.end)
            })
        })
        .filter_map(|(name, address, type_ref)| {
            let (dwarf_name, offset) = found.map_types.get(&type_ref)?;
            // 0: no descriptor (what is at `types.start` is some other type, or a name).
            let offset = Some(*offset).filter(|&offset| offset != 0)?;
            let type_descriptor = types.start.checked_add(offset)?;
            let type_name = descriptor_name(image, types, type_descriptor)?;
            Some(MapVariable {
                name,
                address,
                type_descriptor,
                type_name: type_name.unwrap_or_else(|| dwarf_name.clone()),
            })
        })
        .collect();
    variables.sort_by_key(|variable| variable.address);
    variables.dedup_by_key(|variable| variable.address);
    variables
}

/// `None` unless the file holds a map type descriptor at `descriptor`, inside `types`; then its
/// name as `reflect` prints it, `Some(None)` if that does not read.
fn descriptor_name(
    image: &Image<'_>,
    types: &Range<u64>,
    descriptor: u64,
) -> Option<Option<String>> {
    let fits = descriptor >= types.start
        && descriptor
            .checked_add(DESCRIPTOR_BYTES as u64)
            .is_some_and(|end| end <= types.end);
    if !fits {
        return None;
    }
    let bytes = image.bytes_from(descriptor)?.get(..DESCRIPTOR_BYTES)?;
    if bytes.get(TYPE_KIND)? & KIND_MASK != KIND_MAP {
        return None;
    }
    let name_offset = i32::from_le_bytes(
        bytes
            .get(TYPE_ABI.name_offset as usize..DESCRIPTOR_BYTES)?
            .try_into()
            .ok()?,
    );
    let extra_star = bytes
        .get(TYPE_ABI.tflag as usize)
        .is_some_and(|flags| flags & TFLAG_EXTRA_STAR != 0);
    let name = u64::try_from(name_offset)
        .ok()
        .filter(|&offset| offset > 0)
        .and_then(|offset| types.start.checked_add(offset))
        .filter(|at| types.contains(at))
        .and_then(|at| {
            let left = usize::try_from(types.end - at).ok()?;
            let bytes = image.bytes_from(at)?;
            name(bytes.get(..left.min(bytes.len()))?)
        })
        .map(|name| match name.strip_prefix('*') {
            Some(own) if extra_star => own.to_owned(),
            _ => name,
        });
    Some(name)
}

/// A name as the linker stores it (`internal/abi.Name`, the same since go1.17): a flags byte,
/// the length as a varint, the bytes. `None` if `bytes` does not start with a printable one.
fn name(bytes: &[u8]) -> Option<String> {
    let mut length = 0usize;
    let mut start = None;
    // A varint of at most 4 bytes (lengths under 2^28) after the flags byte.
    for (index, &byte) in bytes.iter().enumerate().skip(1).take(4) {
        length |= usize::from(byte & 0x7f) << (7 * (index - 1));
        if byte & 0x80 == 0 {
            start = Some(index + 1);
            break;
        }
    }
    let start = start?;
    if length == 0 || length > MAX_NAME {
        return None;
    }
    let text = std::str::from_utf8(bytes.get(start..start.checked_add(length)?)?).ok()?;
    (!text.chars().any(char::is_control)).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use gimli::LittleEndian;

    use super::*;
    use crate::gobin::{BuildInfo, FunctionSource, GoVersion, Layout, VersionSource};

    /// DWARF 4 in the shape Go's linker writes, built by hand: a unit of types, then a unit of
    /// package `main` whose entries refer to the types across units (`DW_FORM_ref_addr`).
    struct Dwarf {
        abbrev: Vec<u8>,
        info: Vec<u8>,
    }

    const CU: u8 = 1;
    const VARIABLE: u8 = 2;
    const TYPEDEF: u8 = 3;
    const FUNCTION: u8 = 4;
    const BASE_TYPE: u8 = 5;
    /// A variable whose type is in its own unit (`DW_FORM_ref4`).
    const VARIABLE_LOCAL_REF: u8 = 6;

    fn abbreviations() -> Vec<u8> {
        use gimli::constants::*;
        let (string, block1, ref_addr, ref4, data1, addr) = (
            DW_FORM_string.0 as u8,
            DW_FORM_block1.0 as u8,
            DW_FORM_ref_addr.0 as u8,
            DW_FORM_ref4.0 as u8,
            DW_FORM_data1.0 as u8,
            DW_FORM_addr.0 as u8,
        );
        let name = DW_AT_name.0 as u8;
        let location = DW_AT_location.0 as u8;
        let type_ = DW_AT_type.0 as u8;
        // Go's own attributes need two bytes of ULEB128: 0x2900 and 0x2904.
        let (kind, runtime_type) = ([0x80, 0x52], [0x84, 0x52]);
        let mut bytes = Vec::new();
        let mut entry = |code: u8, tag: u8, children: bool, attributes: &[&[u8]]| {
            bytes.extend([code, tag, u8::from(children)]);
            for attribute in attributes {
                bytes.extend(*attribute);
            }
            bytes.extend([0, 0]);
        };
        entry(CU, DW_TAG_compile_unit.0 as u8, true, &[&[name, string]]);
        entry(
            VARIABLE,
            DW_TAG_variable.0 as u8,
            false,
            &[&[name, string], &[location, block1], &[type_, ref_addr]],
        );
        entry(
            TYPEDEF,
            DW_TAG_typedef.0 as u8,
            false,
            &[
                &[name, string],
                &[type_, ref_addr],
                &[kind[0], kind[1], data1],
                &[runtime_type[0], runtime_type[1], addr],
            ],
        );
        entry(
            FUNCTION,
            DW_TAG_subprogram.0 as u8,
            true,
            &[&[name, string]],
        );
        entry(
            BASE_TYPE,
            DW_TAG_base_type.0 as u8,
            false,
            &[&[name, string], &[kind[0], kind[1], data1]],
        );
        entry(
            VARIABLE_LOCAL_REF,
            DW_TAG_variable.0 as u8,
            false,
            &[&[name, string], &[location, block1], &[type_, ref4]],
        );
        bytes.push(0);
        bytes
    }

    /// Writes one unit's entries; `finish` puts the header in front.
    struct Unit {
        start: usize,
        bytes: Vec<u8>,
    }

    impl Unit {
        /// Header: unit_length (4), version (2), debug_abbrev_offset (4), address_size (1).
        const HEADER: usize = 11;

        fn new(info: &[u8], name: &str) -> Self {
            let mut unit = Self {
                start: info.len(),
                bytes: Vec::new(),
            };
            unit.bytes.push(CU);
            unit.string(name);
            unit
        }

        /// The `.debug_info` offset of the next entry.
        fn here(&self) -> u32 {
            (self.start + Self::HEADER + self.bytes.len()) as u32
        }

        fn string(&mut self, text: &str) {
            self.bytes.extend(text.as_bytes());
            self.bytes.push(0);
        }

        fn variable(&mut self, name: &str, address: u64, type_at: u32) {
            self.bytes.push(VARIABLE);
            self.string(name);
            self.bytes.push(9);
            self.bytes.push(gimli::constants::DW_OP_addr.0);
            self.bytes.extend(address.to_le_bytes());
            self.bytes.extend(type_at.to_le_bytes());
        }

        fn typedef(&mut self, name: &str, kind: u8, runtime_type: u64) -> u32 {
            let at = self.here();
            self.bytes.push(TYPEDEF);
            self.string(name);
            self.bytes.extend(0u32.to_le_bytes());
            self.bytes.push(kind);
            self.bytes.extend(runtime_type.to_le_bytes());
            at
        }

        fn finish(mut self, info: &mut Vec<u8>) {
            self.bytes.push(0);
            let length = (Self::HEADER - 4 + self.bytes.len()) as u32;
            info.extend(length.to_le_bytes());
            info.extend(4u16.to_le_bytes());
            info.extend(0u32.to_le_bytes());
            info.push(8);
            info.extend(self.bytes);
        }
    }

    /// Where the tests put things: data at 0x5000..0x6000, type descriptors at 0x1000..0x3000.
    const DATA: Range<u64> = 0x5000..0x6000;
    const TYPES: Range<u64> = 0x1000..0x3000;

    fn sample() -> Dwarf {
        let mut info = Vec::new();
        let mut types = Unit::new(&info, "go:types");
        let string_int = types.typedef("map[string]int", KIND_MAP, 0x100);
        let label_set = types.typedef("main.labelSet", KIND_MAP, 0x200);
        let not_a_map_in_the_file = types.typedef("map[int]int", KIND_MAP, 0x300);
        let nameless = types.typedef("map[int]string", KIND_MAP, 0x400);
        let out_of_range = types.typedef("map[int]bool", KIND_MAP, 0x10_0000);
        let slice = types.typedef("main.names", 23, 0x500);
        let kept_no_descriptor = types.typedef("map[int]float64", KIND_MAP, 0);
        let int = types.here();
        types.bytes.push(BASE_TYPE);
        types.string("int");
        types.bytes.push(2);
        types.finish(&mut info);

        let mut main = Unit::new(&info, "main");
        main.variable("main.cache", 0x5010, string_int);
        main.variable("main.labels", 0x5008, label_set);
        main.variable("main.counter", 0x5018, int);
        main.variable("main.names", 0x5020, slice);
        main.variable("main.elsewhere", 0x9000, string_int);
        main.variable("main.odd", 0x5028, not_a_map_in_the_file);
        main.variable("main.nameless", 0x5030, nameless);
        main.variable("main.far", 0x5038, out_of_range);
        main.variable("main.undescribed", 0x5050, kept_no_descriptor);
        // A local variable: inside a function, never a package-level one.
        main.bytes.push(FUNCTION);
        main.string("main.main");
        main.variable("main.local", 0x5040, string_int);
        main.bytes.push(0);
        // A map type in the variable's own unit, referred to by unit offset.
        let local_type = main.typedef("map[uint8]uint8", KIND_MAP, 0x600);
        main.bytes.push(VARIABLE_LOCAL_REF);
        main.string("main.small");
        main.bytes.push(9);
        main.bytes.push(gimli::constants::DW_OP_addr.0);
        main.bytes.extend(0x5048u64.to_le_bytes());
        main.bytes
            .extend((local_type - main.start as u32).to_le_bytes());
        main.finish(&mut info);
        Dwarf {
            abbrev: abbreviations(),
            info,
        }
    }

    fn walk_bytes(dwarf: &Dwarf) -> Result<Found, gimli::Error> {
        let dwarf = gimli::Dwarf::load(|id| {
            Ok::<_, gimli::Error>(EndianSlice::new(
                match id {
                    SectionId::DebugInfo => &dwarf.info[..],
                    SectionId::DebugAbbrev => &dwarf.abbrev[..],
                    _ => &[],
                },
                LittleEndian,
            ))
        })?;
        walk(&dwarf)
    }

    /// A map type descriptor (kind 21 unless `kind` says otherwise) naming itself at
    /// `name_offset`.
    fn descriptor(kind: u8, tflag: u8, name_offset: i32) -> Vec<u8> {
        let mut bytes = vec![0u8; 48];
        bytes[TYPE_ABI.tflag as usize] = tflag;
        bytes[TYPE_KIND] = kind;
        let at = TYPE_ABI.name_offset as usize;
        bytes[at..at + 4].copy_from_slice(&name_offset.to_le_bytes());
        bytes
    }

    fn stored_name(text: &str) -> Vec<u8> {
        let mut bytes = vec![0, text.len() as u8];
        bytes.extend(text.as_bytes());
        bytes
    }

    /// The type descriptors `sample` refers to, as the file holds them.
    fn type_section() -> Vec<u8> {
        let mut bytes = vec![0u8; (TYPES.end - TYPES.start) as usize];
        let mut put = |at: usize, data: &[u8]| bytes[at..at + data.len()].copy_from_slice(data);
        // Offset 0 is no descriptor, even where a map's would read.
        put(0, &descriptor(KIND_MAP, 0, 0x1100));
        // go1.19 keeps flags above the kind bits: still a map.
        put(
            0x100,
            &descriptor(KIND_MAP | 0x20, TFLAG_EXTRA_STAR, 0x1000),
        );
        put(0x1000, &stored_name("*map[string]int"));
        put(0x200, &descriptor(KIND_MAP, 0, 0x1100));
        put(0x1100, &stored_name("main.labelSet"));
        put(0x300, &descriptor(25, 0, 0x1100));
        // A name offset past the end of the types.
        put(0x400, &descriptor(KIND_MAP, 0, 0x7000));
        put(0x600, &descriptor(KIND_MAP, TFLAG_EXTRA_STAR, 0x1200));
        put(0x1200, &stored_name("*map[uint8]uint8"));
        bytes
    }

    fn variable(name: &str, address: u64, type_descriptor: u64, type_name: &str) -> MapVariable {
        MapVariable {
            name: name.to_owned(),
            address,
            type_descriptor,
            type_name: type_name.to_owned(),
        }
    }

    #[test]
    fn variables_of_map_types_are_found_with_their_descriptors() {
        let found = walk_bytes(&sample()).unwrap();
        assert_eq!(found.variables.len(), 10, "all but the local: {found:?}");
        assert_eq!(found.map_types.len(), 7, "the slice type is no map");
        let types = type_section();
        let image = Image {
            segments: vec![(TYPES.start, &types[..])],
        };
        assert_eq!(
            join(found, &[DATA], &TYPES, &image),
            vec![
                variable("main.labels", 0x5008, 0x1200, "main.labelSet"),
                variable("main.cache", 0x5010, 0x1100, "map[string]int"),
                // A name that does not read: the DWARF's.
                variable("main.nameless", 0x5030, 0x1400, "map[int]string"),
                variable("main.small", 0x5048, 0x1600, "map[uint8]uint8"),
            ],
            "not: the int, the slice, the variable outside the data, the descriptor that is \
             not a map's, past the types or absent (0), the local variable"
        );
    }

    #[test]
    fn a_descriptor_missing_from_the_file_leaves_its_variables_out() {
        let found = walk_bytes(&sample()).unwrap();
        let image = Image {
            segments: Vec::new(),
        };
        assert_eq!(join(found, &[DATA], &TYPES, &image), Vec::new());
    }

    #[test]
    fn malformed_dwarf_is_an_error_or_less_never_a_panic() {
        let whole = sample();
        for length in 0..whole.info.len() {
            let cut = Dwarf {
                abbrev: whole.abbrev.clone(),
                info: whole.info[..length].to_vec(),
            };
            let _ = walk_bytes(&cut);
        }
        // Every abbreviation is used; only the table's final terminator may go.
        for length in 0..whole.abbrev.len() - 1 {
            let cut = Dwarf {
                abbrev: whole.abbrev[..length].to_vec(),
                info: whole.info.clone(),
            };
            assert!(walk_bytes(&cut).is_err(), "abbreviations cut at {length}");
        }
        let mut flipped = sample();
        for at in 0..flipped.info.len() {
            flipped.info[at] ^= 0xff;
            let _ = walk_bytes(&flipped);
            flipped.info[at] ^= 0xff;
        }
    }

    #[test]
    fn names_are_read_as_the_linker_stores_them() {
        assert_eq!(
            name(&stored_name("map[string]int")).as_deref(),
            Some("map[string]int")
        );
        let long = "m".repeat(200);
        let mut stored = vec![0, 0xc8, 0x01];
        stored.extend(long.as_bytes());
        assert_eq!(name(&stored), Some(long));
        assert_eq!(name(&[0, 5, b'a']), None, "runs past the bytes");
        assert_eq!(name(&[0, 0]), None, "empty");
        assert_eq!(
            name(&[0, 0x80, 0x80, 0x80, 0x80, 0x01]),
            None,
            "varint too long"
        );
        assert_eq!(name(&[0, 2, b'a', 0x07]), None, "control character");
        assert_eq!(name(&[]), None);
    }

    #[test]
    fn without_dwarf_there_are_none() {
        let binary = GoBinary {
            data: b"not even an ELF file".to_vec(),
            build_info: BuildInfo::default(),
            version: GoVersion::new(1, 27, 0),
            version_source: VersionSource::BuildInfo,
            segments: Vec::new(),
            functions: BTreeMap::new(),
            function_source: FunctionSource::SymbolTable,
            layout: Layout::default(),
            pclntab: None,
        };
        assert_eq!(binary.map_variables().unwrap(), Vec::new());
    }
}
