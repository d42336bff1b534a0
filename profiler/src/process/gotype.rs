//! A Go map's type, read from the target's type descriptors, never written: its name as
//! `reflect` prints it (`map[string]int`, or `main.Index` for a named map type) and the sizes
//! of its key and element.
//!
//! The descriptors of a program's own types are in its read-only data and never change, so one
//! read per type is enough. Names are stored once per module, as offsets from
//! `moduledata.types`; a type made at run time (`reflect.MapOf`) lives in the heap, outside
//! that range, and its name is not looked for (its sizes still are).
use std::ops::Range;

use super::gomap::{Memory, SnapshotError};
use crate::{
    gobin::abi::{TFLAG_EXTRA_STAR, TypeAbi},
    model::maps::MapTypeInfo,
};

/// Longest type name read: a map keyed by a large anonymous struct can have a long one, but
/// past this it is no help in a title.
const MAX_NAME: usize = 1024;
/// Bytes read at a name at first: enough for the flags, the length and most names.
const NAME_PROBE: usize = 128;
/// Largest plausible key or element size: anything above is memory that is not a type.
const MAX_TYPE_SIZE: u64 = 1 << 40;

/// The type of a map from its descriptor at `map_type`. `types` is where the target's type
/// descriptors are (`moduledata.types` up to `etypes`, at run-time addresses), if known.
pub fn read_map_type(
    memory: &mut dyn Memory,
    abi: &TypeAbi,
    types: Option<&Range<u64>>,
    map_type: u64,
) -> Result<MapTypeInfo, SnapshotError> {
    let mut descriptor = [0u8; 64];
    let length = (abi.map_elem + 8) as usize;
    let descriptor = descriptor
        .get_mut(..length)
        .ok_or(SnapshotError::Inconsistent("map type layout"))?;
    memory.read(map_type, descriptor)?;
    let word = |offset: u64| {
        let at = offset as usize;
        descriptor
            .get(at..at + 8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    let (key, elem) = (word(abi.map_key), word(abi.map_elem));
    if key == 0 || elem == 0 {
        return Err(SnapshotError::Inconsistent(
            "map type without a key or element type",
        ));
    }
    let (mut key_size, mut elem_size) = ([0u8; 8], [0u8; 8]);
    memory.read_many(&mut [
        (key.wrapping_add(abi.size), &mut key_size),
        (elem.wrapping_add(abi.size), &mut elem_size),
    ])?;
    let (key_bytes, elem_bytes) = (u64::from_le_bytes(key_size), u64::from_le_bytes(elem_size));
    if key_bytes > MAX_TYPE_SIZE || elem_bytes > MAX_TYPE_SIZE {
        return Err(SnapshotError::Inconsistent(
            "key or element size out of range",
        ));
    }
    let name_offset = i32::from_le_bytes(
        descriptor
            .get(abi.name_offset as usize..abi.name_offset as usize + 4)
            .and_then(|b| b.try_into().ok())
            .unwrap_or_default(),
    );
    let extra_star = descriptor
        .get(abi.tflag as usize)
        .is_some_and(|flags| flags & TFLAG_EXTRA_STAR != 0);
    let name = match types.filter(|types| types.contains(&map_type) && name_offset > 0) {
        Some(types) => read_name(memory, types, types.start.wrapping_add(name_offset as u64))?,
        None => None,
    };
    let name = name.map(|name| {
        if extra_star {
            name.strip_prefix('*').map(str::to_owned).unwrap_or(name)
        } else {
            name
        }
    });
    Ok(MapTypeInfo {
        name,
        key_bytes,
        elem_bytes,
    })
}

/// The name stored at `address`: a flags byte, the length as a varint, the bytes
/// (`internal/abi.Name`, the same since Go 1.17). `Ok(None)` if it does not read as one; an
/// error if the memory could not be read (the caller tries again later).
fn read_name(
    memory: &mut dyn Memory,
    types: &Range<u64>,
    address: u64,
) -> Result<Option<String>, SnapshotError> {
    let Some(available) = types
        .end
        .checked_sub(address)
        .and_then(|left| usize::try_from(left).ok())
    else {
        return Ok(None);
    };
    let mut bytes = vec![0u8; NAME_PROBE.min(available)];
    memory.read(address, &mut bytes)?;
    let Some((start, length)) = name_span(&bytes) else {
        return Ok(None);
    };
    if length > MAX_NAME || start + length > available {
        return Ok(None);
    }
    if start + length > bytes.len() {
        bytes.resize(start + length, 0);
        memory.read(address, &mut bytes)?;
    }
    let Ok(name) = std::str::from_utf8(&bytes[start..start + length]) else {
        return Ok(None);
    };
    // Type names are printable; anything else is not a name.
    Ok((!name.is_empty() && !name.chars().any(char::is_control)).then(|| name.to_owned()))
}

/// Where a name's bytes start and how many there are, from its first bytes.
fn name_span(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut length = 0usize;
    // A varint of at most 4 bytes (lengths under 2^28) after the flags byte.
    for (index, &byte) in bytes.iter().enumerate().skip(1).take(4) {
        length |= usize::from(byte & 0x7f) << (7 * (index - 1));
        if byte & 0x80 == 0 {
            return Some((index + 1, length));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gobin::abi::TYPE_ABI;

    /// Memory made of byte runs at addresses.
    #[derive(Default)]
    struct Fake {
        runs: Vec<(u64, Vec<u8>)>,
    }

    impl Fake {
        fn put(&mut self, address: u64, bytes: &[u8]) {
            self.runs.push((address, bytes.to_vec()));
        }
    }

    impl Memory for Fake {
        fn read_many(&mut self, pieces: &mut [(u64, &mut [u8])]) -> Result<(), SnapshotError> {
            for (address, buffer) in pieces.iter_mut() {
                let run = self
                    .runs
                    .iter()
                    .find(|(start, bytes)| {
                        *address >= *start
                            && *address + buffer.len() as u64 <= start + bytes.len() as u64
                    })
                    .ok_or(SnapshotError::Unreadable)?;
                let at = (*address - run.0) as usize;
                buffer.copy_from_slice(&run.1[at..at + buffer.len()]);
            }
            Ok(())
        }
    }

    const TYPES: Range<u64> = 0x1000..0x9000;

    fn descriptor(size: u64, tflag: u8, name_offset: i32, key: u64, elem: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; 64];
        bytes[..8].copy_from_slice(&size.to_le_bytes());
        bytes[20] = tflag;
        bytes[40..44].copy_from_slice(&name_offset.to_le_bytes());
        bytes[48..56].copy_from_slice(&key.to_le_bytes());
        bytes[56..64].copy_from_slice(&elem.to_le_bytes());
        bytes
    }

    fn name(text: &str) -> Vec<u8> {
        let mut bytes = vec![0u8];
        let mut length = text.len();
        loop {
            let byte = (length & 0x7f) as u8;
            length >>= 7;
            if length == 0 {
                bytes.push(byte);
                break;
            }
            bytes.push(byte | 0x80);
        }
        bytes.extend_from_slice(text.as_bytes());
        // More names follow in a real type section.
        bytes.resize(bytes.len() + NAME_PROBE, 0);
        bytes
    }

    /// A map type at 0x2000 whose name is at types + 0x6000, key at 0x4000, element at 0x5000.
    fn memory_with(stored_name: &str, tflag: u8) -> Fake {
        let mut fake = Fake::default();
        fake.put(0x2000, &descriptor(8, tflag, 0x6000, 0x4000, 0x5000));
        fake.put(TYPES.start + 0x6000, &name(stored_name));
        fake.put(0x4000, &descriptor(16, 0, 0, 0, 0));
        fake.put(0x5000, &descriptor(24, 0, 0, 0, 0));
        fake
    }

    #[test]
    fn reads_name_and_sizes() {
        let mut fake = memory_with("*map[string][]uint8", TFLAG_EXTRA_STAR);
        let found = read_map_type(&mut fake, &TYPE_ABI, Some(&TYPES), 0x2000).unwrap();
        assert_eq!(
            found,
            MapTypeInfo {
                name: Some("map[string][]uint8".to_owned()),
                key_bytes: 16,
                elem_bytes: 24,
            }
        );
        // Without the flag the star is the name's own.
        let mut fake = memory_with("*map[int]int", 0);
        let found = read_map_type(&mut fake, &TYPE_ABI, Some(&TYPES), 0x2000).unwrap();
        assert_eq!(found.name.as_deref(), Some("*map[int]int"));
    }

    #[test]
    fn long_names_take_a_second_read() {
        let long = format!("*map[struct {{ {} }}]int", "A int; ".repeat(40));
        assert!(long.len() > NAME_PROBE);
        let mut fake = memory_with(&long, TFLAG_EXTRA_STAR);
        let found = read_map_type(&mut fake, &TYPE_ABI, Some(&TYPES), 0x2000).unwrap();
        assert_eq!(found.name.as_deref(), Some(&long[1..]));
    }

    #[test]
    fn names_outside_the_module_are_not_looked_for() {
        // A type made at run time (outside moduledata.types), or no moduledata: sizes only.
        let mut fake = memory_with("*map[int]int", TFLAG_EXTRA_STAR);
        let elsewhere = 0x8000_0000..0x8000_1000;
        for types in [None, Some(&elsewhere)] {
            let found = read_map_type(&mut fake, &TYPE_ABI, types, 0x2000).unwrap();
            assert_eq!(
                (found.name, found.key_bytes, found.elem_bytes),
                (None, 16, 24)
            );
        }
    }

    #[test]
    fn garbage_is_not_a_type() {
        let mut fake = Fake::default();
        fake.put(0x2000, &descriptor(8, 0, 0x3000, 0, 0x5000));
        assert_eq!(
            read_map_type(&mut fake, &TYPE_ABI, Some(&TYPES), 0x2000),
            Err(SnapshotError::Inconsistent(
                "map type without a key or element type"
            ))
        );
        let mut fake = memory_with("*map[int]int", 0);
        fake.runs[2].1[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            read_map_type(&mut fake, &TYPE_ABI, Some(&TYPES), 0x2000),
            Err(SnapshotError::Inconsistent(_))
        ));
        assert_eq!(
            read_map_type(&mut Fake::default(), &TYPE_ABI, Some(&TYPES), 0x2000),
            Err(SnapshotError::Unreadable)
        );
        // A name that runs past the type section or does not read whole, or holds control
        // bytes, is no name; the sizes stand.
        let mut fake = Fake::default();
        let near_end = (TYPES.end - 6 - TYPES.start) as i32;
        fake.put(0x2000, &descriptor(8, 0, near_end, 0x4000, 0x5000));
        fake.put(TYPES.end - 6, &name("map[int]int"));
        fake.put(0x4000, &descriptor(16, 0, 0, 0, 0));
        fake.put(0x5000, &descriptor(24, 0, 0, 0, 0));
        let found = read_map_type(&mut fake, &TYPE_ABI, Some(&TYPES), 0x2000).unwrap();
        assert_eq!((found.name, found.key_bytes), (None, 16));
        let mut fake = memory_with("*map[int]int", 0);
        fake.runs[1].1.extend_from_slice(&[b'x'; 200]);
        fake.runs[1].1[1] = 0x7f;
        assert_eq!(
            read_map_type(&mut fake, &TYPE_ABI, Some(&TYPES), 0x2000)
                .unwrap()
                .name,
            None,
            "control bytes"
        );
        // A name longer than the first read whose rest does not read: an error, so the
        // caller does not keep "no name" for good.
        let long = format!("*map[string]{}", "x".repeat(200));
        let mut fake = memory_with(&long, TFLAG_EXTRA_STAR);
        fake.runs[1].1.truncate(NAME_PROBE + 10);
        assert_eq!(
            read_map_type(&mut fake, &TYPE_ABI, Some(&TYPES), 0x2000),
            Err(SnapshotError::Unreadable)
        );
        let mut fake = memory_with("map[\u{1}]int", 0);
        assert_eq!(
            read_map_type(&mut fake, &TYPE_ABI, Some(&TYPES), 0x2000)
                .unwrap()
                .name,
            None
        );
    }

    #[test]
    fn name_lengths_are_varints() {
        assert_eq!(name_span(&[0, 5, b'a']), Some((2, 5)));
        assert_eq!(name_span(&[0, 0x81, 0x01]), Some((3, 129)));
        assert_eq!(name_span(&[0, 0x80, 0x80, 0x80, 0x80, 0x01]), None);
        assert_eq!(name_span(&[0]), None);
    }
}
