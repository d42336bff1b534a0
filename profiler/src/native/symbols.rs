//! Native stacks symbolized: each frame's address found in the process's mappings (kept from
//! its last reading, so the stacks of a program that has just exited still resolve), then its
//! function and source line read from that file's ELF symbols and DWARF by blazesym, C++ and
//! Rust names demangled. The site of a sampled allocation is its direct caller (the second
//! frame: the return address at the allocator's entry), past C++'s `operator new`.
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
};

use blazesym::symbolize::{
    Input, Symbolized as Found, Symbolizer,
    source::{Elf, Source},
};
use std::sync::mpsc;

use crate::{
    collect::stacks::{StackTable, Symbolized},
    export::pprof::Line,
    model::sites::Site,
};

/// One file mapping of the process: `[start, end)` maps `path` from `offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    path: PathBuf,
}

/// The file mappings of a `/proc/PID/maps` listing (anonymous and special ones left out).
fn mappings(maps: &str) -> Vec<Mapping> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, _perms, offset) = (fields.next()?, fields.next()?, fields.next()?);
            let path = fields.nth(2)?;
            if !path.starts_with('/') || line.ends_with(" (deleted)") {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                path: PathBuf::from(path),
            })
        })
        .collect()
}

/// Whether a frame's function is allocation machinery rather than the code that allocated:
/// C++'s operators new (which call `malloc`), an allocator's own entry points.
pub fn is_allocator_frame(function: &str) -> bool {
    function.starts_with("operator new")
        || function.starts_with("operator delete")
        || matches!(
            function,
            "malloc"
                | "calloc"
                | "realloc"
                | "reallocarray"
                | "aligned_alloc"
                | "memalign"
                | "posix_memalign"
                | "valloc"
                | "pvalloc"
                | "mallocx"
                | "rallocx"
        )
}

/// A function and its source line, as blazesym found them.
#[derive(Clone, Debug)]
struct FoundLine {
    function: String,
    file: String,
    line: i64,
}

/// A file and offsets in it to symbolize, and where to send the lines of each.
struct Request {
    path: PathBuf,
    offsets: Vec<u64>,
    reply: mpsc::Sender<Vec<Vec<FoundLine>>>,
}

/// The one thread that owns blazesym's symbolizer (which may not move between threads) for
/// every target: it keeps each file it has read parsed, so the targets running one program,
/// or one C library, share it.
fn symbolizer() -> Option<mpsc::Sender<Request>> {
    static THREAD: std::sync::OnceLock<Option<std::sync::Mutex<mpsc::Sender<Request>>>> =
        std::sync::OnceLock::new();
    THREAD
        .get_or_init(|| {
            let (requests, incoming) = mpsc::channel::<Request>();
            std::thread::Builder::new()
                .name("native-symbols".into())
                .spawn(move || {
                    let symbolizer = Symbolizer::new();
                    for request in incoming {
                        let source = Source::Elf(Elf::new(&request.path));
                        let lines = request
                            .offsets
                            .iter()
                            .map(|&offset| {
                                match symbolizer
                                    .symbolize_single(&source, Input::FileOffset(offset))
                                {
                                    Ok(Found::Sym(symbol)) => {
                                        let line = |function: &str,
                                                    code: Option<
                                            &blazesym::symbolize::CodeInfo<'_>,
                                        >| {
                                            FoundLine {
                                                function: function.to_owned(),
                                                file: code.map_or_else(String::new, |code| {
                                                    code.to_path().display().to_string()
                                                }),
                                                line: code
                                                    .and_then(|code| code.line)
                                                    .map_or(0, i64::from),
                                            }
                                        };
                                        // Inlined calls innermost first, then the function
                                        // that holds them.
                                        let mut lines: Vec<FoundLine> = symbol
                                            .inlined
                                            .iter()
                                            .rev()
                                            .map(|inlined| {
                                                line(&inlined.name, inlined.code_info.as_ref())
                                            })
                                            .collect();
                                        lines.push(line(&symbol.name, symbol.code_info.as_deref()));
                                        lines
                                    }
                                    _ => Vec::new(),
                                }
                            })
                            .collect();
                        let _ = request.reply.send(lines);
                    }
                })
                .ok()
                .map(|_| std::sync::Mutex::new(requests))
        })
        .as_ref()
        .and_then(|requests| requests.lock().ok().map(|sender| sender.clone()))
}

/// Symbolizes and caches the native stacks of one process.
pub struct NativeSymbols {
    pid: u32,
    mappings: Vec<Mapping>,
    known: HashMap<i32, Arc<Symbolized>>,
    names: HashSet<Arc<str>>,
}

impl NativeSymbols {
    pub fn new(pid: u32) -> Self {
        let mut symbols = Self {
            pid,
            mappings: Vec::new(),
            known: HashMap::new(),
            names: HashSet::new(),
        };
        symbols.refresh();
        symbols
    }

    /// Read the process's mappings again, while it runs (a library it loaded since).
    pub fn refresh(&mut self) {
        if let Ok(maps) = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)) {
            self.mappings = mappings(&maps);
        }
    }

    /// How many stacks are kept.
    pub fn kept(&self) -> usize {
        self.known.len()
    }

    /// Where mapscope reads `path` of the process: through its root while it runs (a
    /// container's files are its own), else as named.
    fn readable(&self, path: &std::path::Path) -> PathBuf {
        let root = PathBuf::from(format!("/proc/{}/root", self.pid));
        let inside = root.join(path.strip_prefix("/").unwrap_or(path));
        if inside.exists() {
            inside
        } else {
            path.to_owned()
        }
    }

    /// The lines of the code at each of `addresses` (innermost first), empty when unknown.
    fn lines(&mut self, addresses: &[u64]) -> Vec<Vec<Line>> {
        let mut found: Vec<Vec<Line>> = vec![Vec::new(); addresses.len()];
        // By file: one request each.
        let mut by_file: HashMap<PathBuf, Vec<(usize, u64)>> = HashMap::new();
        for (index, &address) in addresses.iter().enumerate() {
            if let Some(mapping) = self
                .mappings
                .iter()
                .find(|mapping| mapping.start <= address && address < mapping.end)
            {
                let offset = address - mapping.start + mapping.offset;
                by_file
                    .entry(self.readable(&mapping.path))
                    .or_default()
                    .push((index, offset));
            }
        }
        let Some(symbolizer) = symbolizer() else {
            return found;
        };
        for (path, wanted) in by_file {
            let (reply, answer) = mpsc::channel();
            let request = Request {
                path,
                offsets: wanted.iter().map(|(_, offset)| *offset).collect(),
                reply,
            };
            if symbolizer.send(request).is_err() {
                break;
            }
            let Ok(lines) = answer.recv() else {
                break;
            };
            for ((index, _), lines) in wanted.into_iter().zip(lines) {
                found[index] = lines
                    .into_iter()
                    .map(|line| Line {
                        function: intern(&mut self.names, &line.function),
                        file: intern(&mut self.names, &line.file),
                        line: line.line,
                    })
                    .collect();
            }
        }
        found
    }

    /// The stack `stack_id` of `table`, symbolized, its site the direct caller; a negative or
    /// unknown id is the site `unknown`.
    pub fn symbolize(&mut self, table: &StackTable, stack_id: i32) -> Arc<Symbolized> {
        if let Some(known) = self.known.get(&stack_id) {
            return Arc::clone(known);
        }
        let stack = u32::try_from(stack_id)
            .ok()
            .and_then(|id| table.get(&id, 0).ok());
        let mut frames = Vec::new();
        if let Some(stack) = stack {
            // The first address is the allocator's entry; the others are return addresses,
            // whose call instruction is the byte before.
            let pcs: Vec<u64> = stack
                .frames()
                .iter()
                .enumerate()
                .map(|(index, &ip)| if index == 0 { ip } else { ip.saturating_sub(1) })
                .collect();
            let lines = self.lines(&pcs);
            frames = stack.frames().iter().copied().zip(lines).collect();
        }
        let site = frames
            .iter()
            .skip(1)
            .flat_map(|(address, lines)| {
                let outer = lines.last();
                outer.map(|line| (*address, Arc::clone(&line.function), line))
            })
            .find(|(_, function, _)| !is_allocator_frame(function))
            .map_or_else(
                || Site {
                    function: frames.get(1).map_or_else(
                        || "unknown".to_owned(),
                        |(address, _)| format!("{address:#x}"),
                    ),
                    location: String::new(),
                },
                |(_, function, line)| Site {
                    function: function.to_string(),
                    location: if line.file.is_empty() {
                        String::new()
                    } else {
                        let file = line.file.rsplit('/').next().unwrap_or_default();
                        format!("{file}:{}", line.line)
                    },
                },
            );
        // The first frame is the allocator's entry point the probe sits on (under whatever
        // internal name its symbols give it, glibc's `__GI___libc_malloc`): profiles start at
        // the code that called it.
        if frames.len() > 1 {
            frames.remove(0);
        }
        let symbolized = Arc::new(Symbolized {
            frames,
            site,
            churn: None,
        });
        self.known.insert(stack_id, Arc::clone(&symbolized));
        symbolized
    }
}

/// The one shared copy of `name`.
fn intern(names: &mut HashSet<Arc<str>>, name: &str) -> Arc<str> {
    if let Some(known) = names.get(name) {
        return Arc::clone(known);
    }
    let name: Arc<str> = name.into();
    names.insert(Arc::clone(&name));
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_mappings_are_read_with_their_offsets() {
        let maps = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 fd:01 1 /usr/bin/server
55d0c0a02000-55d0c0b00000 r-xp 00002000 fd:01 1 /usr/bin/server
7f1e00000000-7f1e00021000 rw-p 00000000 00:00 0 
7f1e30000000-7f1e30001000 r-xp 00000000 fd:01 4 /tmp/old.so (deleted)
7ffd1c1f0000-7ffd1c1f2000 r-xp 00000000 00:00 0 [vdso]
";
        let found = mappings(maps);
        assert_eq!(found.len(), 2);
        assert_eq!(
            found[1],
            Mapping {
                start: 0x55d0c0a02000,
                end: 0x55d0c0b00000,
                offset: 0x2000,
                path: PathBuf::from("/usr/bin/server"),
            }
        );
    }

    #[test]
    fn the_site_is_past_the_allocation_machinery() {
        assert!(is_allocator_frame("operator new(unsigned long)"));
        assert!(is_allocator_frame("malloc"));
        assert!(!is_allocator_frame("parse_request"));
        assert!(!is_allocator_frame("std::vector<int>::_M_realloc_insert"));
    }
}
