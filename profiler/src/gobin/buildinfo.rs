//! The Go build info blob (`.go.buildinfo`): Go version, main module and build settings.
//!
//! Layout (Go 1.18+, src/debug/buildinfo/buildinfo.go): a 32-byte header that starts with the
//! 14-byte magic `"\xff Go buildinf:"`, then pointer size (1 byte) and flags (1 byte). With flag
//! bit 1 set the version and the module info follow inline as two uvarint-length-prefixed
//! strings. Older binaries store pointers instead; mapscope does not support them.
use thiserror::Error;

pub const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const HEADER_LEN: usize = 32;
const FLAG_INLINE_STRINGS: u8 = 0x2;
/// The module info string is framed by 16 bytes of sentinel on each side
/// (src/runtime/debug/mod.go, `modinfo` in cmd/go/internal/modload/build.go).
const MODINFO_FRAME: usize = 16;
/// Build info strings are short; anything larger is a corrupt or hostile file.
const MAX_STRING_LEN: u64 = 1 << 20;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildInfo {
    /// As the toolchain wrote it, e.g. `go1.27.3`.
    pub go_version: String,
    /// Main package path (`path` line), when the module info has one.
    pub main_path: Option<String>,
    /// `build` lines: `-ldflags`, `CGO_ENABLED`, `GOARCH`, ….
    pub settings: Vec<(String, String)>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BuildInfoError {
    #[error("no Go build info (magic header missing)")]
    NoMagic,
    #[error("Go build info uses the pre-Go-1.18 pointer format")]
    PointerFormat,
    #[error("Go build info is truncated or malformed")]
    Malformed,
}

/// Parse a blob that starts with the build info header.
pub fn parse(blob: &[u8]) -> Result<BuildInfo, BuildInfoError> {
    if blob.len() < HEADER_LEN || &blob[..MAGIC.len()] != MAGIC {
        return Err(BuildInfoError::NoMagic);
    }
    let flags = blob[15];
    if flags & FLAG_INLINE_STRINGS == 0 {
        return Err(BuildInfoError::PointerFormat);
    }
    let mut rest = &blob[HEADER_LEN..];
    let go_version = read_string(&mut rest)?;
    let modinfo = read_string(&mut rest)?;
    let mut info = BuildInfo {
        go_version: String::from_utf8_lossy(go_version).into_owned(),
        ..BuildInfo::default()
    };
    if modinfo.len() >= 2 * MODINFO_FRAME {
        let text = String::from_utf8_lossy(&modinfo[MODINFO_FRAME..modinfo.len() - MODINFO_FRAME]);
        for line in text.lines() {
            let mut fields = line.splitn(2, '\t');
            match (fields.next(), fields.next()) {
                (Some("path"), Some(path)) => info.main_path = Some(path.to_owned()),
                (Some("build"), Some(setting)) => {
                    let (key, value) = setting.split_once('=').unwrap_or((setting, ""));
                    info.settings.push((key.to_owned(), value.to_owned()));
                }
                _ => {}
            }
        }
    }
    Ok(info)
}

/// Whether the file at `path` is a Go program: an ELF file with valid Go build info (in its
/// `.go.buildinfo` section, or found by its magic when it has no section headers), or without
/// build info, a Go runtime whose release string is found (`runtime_vars`).
pub fn is_go_file(path: &std::path::Path) -> bool {
    use object::{Object as _, ObjectSection as _};
    let Ok(data) = crate::files::read_regular(path, crate::files::MAX_EXECUTABLE) else {
        return false;
    };
    let Ok(file) = object::File::parse(&*data) else {
        return false;
    };
    let blob = match file.section_by_name(".go.buildinfo") {
        Some(section) => section.data().ok(),
        None if file.sections().next().is_none() => find(&data),
        None => None,
    };
    // As `GoBinary::open` decides: build info if it parses; without it (removed, or never
    // written, or its magic gone), Go if its runtime says which release.
    match blob.map(parse) {
        Some(Ok(_)) => true,
        None | Some(Err(BuildInfoError::NoMagic)) => {
            super::runtime_vars::find(&file, &data).is_some()
        }
        Some(Err(_)) => false,
    }
}

/// Find the build info header in a memory image when there is no `.go.buildinfo` section.
/// Go aligns the blob to 16 bytes (the same search `debug/buildinfo` does).
pub fn find(image: &[u8]) -> Option<&[u8]> {
    (0..image.len().saturating_sub(HEADER_LEN))
        .step_by(16)
        .find(|&at| image[at..].starts_with(MAGIC))
        .map(|at| &image[at..])
}

fn read_string<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], BuildInfoError> {
    let len = read_uvarint(rest)?;
    if len > MAX_STRING_LEN || len > rest.len() as u64 {
        return Err(BuildInfoError::Malformed);
    }
    let (string, tail) = rest.split_at(len as usize);
    *rest = tail;
    Ok(string)
}

fn read_uvarint(rest: &mut &[u8]) -> Result<u64, BuildInfoError> {
    let mut value = 0u64;
    for (index, &byte) in rest.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            *rest = &rest[index + 1..];
            return Ok(value);
        }
    }
    Err(BuildInfoError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(version: &str, modinfo: &str) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend([8, FLAG_INLINE_STRINGS]);
        out.resize(HEADER_LEN, 0);
        out.push(version.len() as u8);
        out.extend(version.as_bytes());
        let framed = format!("{}{modinfo}{}", "A".repeat(16), "B".repeat(16));
        // Two-byte uvarint to exercise continuation bytes.
        let len = framed.len();
        out.extend([(len as u8 & 0x7f) | 0x80, (len >> 7) as u8]);
        out.extend(framed.as_bytes());
        out
    }

    #[test]
    fn reads_version_path_and_settings() {
        let info = parse(&blob(
            "go1.27.3",
            "path\texample.com/svc\nmod\texample.com/svc\t(devel)\t\nbuild\t-ldflags=-s -w\nbuild\tCGO_ENABLED=0\n",
        ))
        .unwrap();
        assert_eq!(info.go_version, "go1.27.3");
        assert_eq!(info.main_path.as_deref(), Some("example.com/svc"));
        assert_eq!(
            info.settings,
            vec![
                ("-ldflags".to_owned(), "-s -w".to_owned()),
                ("CGO_ENABLED".to_owned(), "0".to_owned())
            ]
        );
    }

    #[test]
    fn rejects_missing_magic_old_format_and_truncation() {
        assert_eq!(
            parse(b"not a go binary at all, really no"),
            Err(BuildInfoError::NoMagic)
        );
        let mut old = blob("go1.17", "");
        old[15] = 0;
        assert_eq!(parse(&old), Err(BuildInfoError::PointerFormat));
        let full = blob("go1.27.3", "path\tx\n");
        for cut in HEADER_LEN..full.len() - 1 {
            assert!(
                parse(&full[..cut]).is_err(),
                "truncated at {cut} must not parse"
            );
        }
    }

    /// Deterministic fuzzing: random and mutated blobs must never panic, and a parsed string
    /// can never be longer than its input (no unbounded allocation). Issue #3 adds cargo-fuzz.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let valid = blob("go1.27.3", "path\tx\nbuild\tGOARCH=amd64\n");
        for round in 0..20_000 {
            let mut input = if round % 2 == 0 {
                valid.clone()
            } else {
                let mut random = MAGIC.to_vec();
                random.extend((0..next() % 96).map(|_| next() as u8));
                random
            };
            for _ in 0..1 + next() % 4 {
                let at = (next() % input.len() as u64) as usize;
                input[at] = next() as u8;
            }
            input.truncate((next() % (input.len() as u64 + 1)) as usize);
            if let Ok(info) = parse(&input) {
                assert!(info.go_version.len() <= input.len());
                let _ = info.go_version.parse::<crate::gobin::GoVersion>();
            }
            let _ = find(&input);
        }
    }

    #[test]
    fn finds_aligned_header_in_an_image() {
        let mut image = vec![0u8; 64];
        image.extend(blob("go1.23.9", ""));
        assert_eq!(parse(find(&image).unwrap()).unwrap().go_version, "go1.23.9");
        let mut misaligned = vec![0u8; 65];
        misaligned.extend(blob("go1.23.9", ""));
        assert!(find(&misaligned).is_none());
    }
}
