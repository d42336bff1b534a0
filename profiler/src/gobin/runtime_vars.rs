//! Runtime variables in binaries that do not name them, found through the runtime code that
//! uses them: `runtime.buildVersion` (the release, when there is no build info),
//! `runtime.MemProfileRate` (allocation sampling, when there are no symbols) and the globals
//! the vitals are read from (`gcController`, `memstats`, `work`, `gomaxprocs`, `sched`,
//! `allglen`, `allp`).
//!
//! The Go release of a binary that has no build info (`.go.buildinfo` removed or never
//! written, as in esbuild's npm binaries) but is Go all the same: a pclntab, a moduledata and
//! the runtime. The linker writes the release into the string variable `runtime.buildVersion`
//! in every Go program, and `runtime.schedinit` reads it (`if buildVersion == "" {…}`, there
//! to keep it linked). So the release is found from the symbol when there is a symbol table,
//! and otherwise among the variables `runtime.schedinit`'s code refers to: the one that is a
//! string header (pointer, length) whose text is a Go version.
use std::collections::BTreeMap;

use object::{Object as _, ObjectSymbol as _};
use serde::Serialize;

use super::{Function, GoBinary, GoVersion, abi, disasm, moduledata::Image, pclntab::Pclntab};

const BUILD_VERSION: &str = "runtime.buildVersion";
const SCHEDINIT: &str = "runtime.schedinit";
const RUNTIME_INIT: &str = "runtime.init";
/// The functions `mem_profile_rate` reads.
pub const MEM_PROFILE_RATE_USERS: [&str; 2] = [SCHEDINIT, RUNTIME_INIT];
/// `go1.27.3`, `devel go1.28-0123abcd Mon Jan 1 …`: version strings are short.
const MAX_VERSION_LEN: u64 = 200;

/// How mapscope learned a binary's Go release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionSource {
    /// The build info blob (`.go.buildinfo`), as `go version` reads it.
    BuildInfo,
    /// `runtime.buildVersion`, found by its ELF symbol.
    BuildVersionSymbol,
    /// `runtime.buildVersion`, found among the variables `runtime.schedinit` uses (a stripped
    /// binary: no symbols).
    BuildVersionViaSchedinit,
}

impl VersionSource {
    /// For people: where the release was read.
    pub fn describe(self) -> &'static str {
        match self {
            Self::BuildInfo => "from the build info",
            Self::BuildVersionSymbol => {
                "no build info: from runtime.buildVersion, found by its symbol"
            }
            Self::BuildVersionViaSchedinit => {
                "no build info: from runtime.buildVersion, found through runtime.schedinit's code"
            }
        }
    }
}

/// The version text `runtime.buildVersion` holds, and how it was found; `None` when the file
/// has no Go function table or no such string (then it is not a Go program mapscope can read).
pub fn find(file: &object::File<'_>, data: &[u8]) -> Option<(String, VersionSource)> {
    let image = Image::new(file);
    if let Some(symbol) = file
        .symbols()
        .find(|symbol| symbol.name() == Ok(BUILD_VERSION))
    {
        return version_at(&image, symbol.address())
            .map(|version| (version, VersionSource::BuildVersionSymbol));
    }
    let schedinit = match file.symbols().find(|symbol| symbol.name() == Ok(SCHEDINIT)) {
        Some(symbol) => super::Function {
            address: symbol.address(),
            size: symbol.size(),
        },
        None => {
            // Text start only: moduledata's later fields depend on the release (not known yet),
            // its text field does not.
            let span = GoBinary::locate_pclntab(file, data, &[SCHEDINIT], None)?;
            let table = Pclntab::parse(
                data.get(span.file_offset..span.file_offset.checked_add(span.len)?)?,
                span.text_start,
            )
            .ok()?;
            *table.find(&[SCHEDINIT]).get(SCHEDINIT)?
        }
    };
    let code = image.bytes(schedinit.address, schedinit.size)?;
    disasm::data_references(code, schedinit.address)
        .into_iter()
        // The code may address the string's length word (`CMPQ buildVersion+8(SB), $0`).
        .flat_map(|address| [address, address.wrapping_sub(8)])
        .find_map(|header| version_at(&image, header))
        .map(|version| (version, VersionSource::BuildVersionViaSchedinit))
}

/// The Go version text in the string header (pointer, length) at `address`, if it is one.
fn version_at(image: &Image<'_>, address: u64) -> Option<String> {
    let pointer = image.word(address)?;
    let len = image.word(address.checked_add(8)?)?;
    if !(4..=MAX_VERSION_LEN).contains(&len) {
        return None;
    }
    let text = std::str::from_utf8(image.bytes(pointer, len)?).ok()?;
    let looks_like_go = text.starts_with("go1.") || text.starts_with("devel go1.");
    (looks_like_go && text.parse::<GoVersion>().is_ok()).then(|| text.to_owned())
}

/// Where `runtime.MemProfileRate` is, in a binary without symbols; `functions` holds
/// `MEM_PROFILE_RATE_USERS` as the pclntab gives them. The variable is 512 KiB unless the
/// linker found no use of `runtime.MemProfile` (then `disableMemoryProfiling` is set):
/// - Go 1.20 and later initialise it statically and `runtime.schedinit` zeroes it
///   (`if disableMemoryProfiling { MemProfileRate = 0 }`): the word `schedinit` stores $0 into
///   whose initial value in the file is 512 KiB.
/// - Go 1.19 sets it in `runtime.init` from `defaultMemProfileRate(512 * 1024)`: the word
///   stored right after the constant is loaded.
pub fn mem_profile_rate(
    file: &object::File<'_>,
    functions: &BTreeMap<String, Function>,
) -> Option<u64> {
    let image = Image::new(file);
    let code = |name: &str| function_code(&image, functions, name);
    let default = abi::DEFAULT_MEM_PROFILE_RATE as u64;
    let statically = code(SCHEDINIT).and_then(|(bytes, address)| {
        disasm::zeroed_words(bytes, address)
            .into_iter()
            .find(|&word| image.word(word) == Some(default))
    });
    statically.or_else(|| {
        let (bytes, address) = code(RUNTIME_INIT)?;
        let stores = disasm::words_set_near_constant(bytes, address, default);
        // Only an unambiguous answer: a wrong address would read as a wrong sampling rate.
        match stores.as_slice() {
            [only] => Some(*only),
            _ => None,
        }
    })
}

/// Where the vitals' globals are, in a binary without symbols; `functions` holds
/// `abi::GLOBAL_USERS` as the pclntab gives them, and `row` the release's field offsets.
/// Each is found through code that every supported release has:
/// - `gcController`: `gcControllerCommit` calls `gcController.commit(…)`: the receiver.
/// - `work`: `gcMarkTermination` calls `work.cpuStats.accumulate(…)`: the receiver, less
///   `workType.cpuStats` (Go 1.20 and later; 1.19 has no `cpuStats`, and no vital needs `work`).
/// - `memstats`: `mcache.refill` calls `memstats.heapStats.acquire()`: the receiver, less
///   `mstats.heapStats`.
/// - `gomaxprocs`: `GOMAXPROCS` reads it once (`ret := int(gomaxprocs)`), the only int32 it
///   widens.
/// - `allglen`: `forEachGRace` reads it first (`atomicAllG`: `allglen`, then `allgptr`).
/// - `allp`: `flushmcache` reads its length (`allp+8`, the bounds check) and its pointer.
/// - `sched`: `GOMAXPROCS` locks `sched.lock` first (`lock(&sched.lock)`, inlined to a call
///   of `lock2`): the receiver, less `schedt.lock`.
///
/// A global not found is left out, and so are the vitals read from it.
pub fn vitals_globals(
    file: &object::File<'_>,
    functions: &BTreeMap<String, Function>,
    row: &abi::VitalsAbi,
) -> Vec<(&'static str, u64)> {
    let image = Image::new(file);
    let code = |name: &str| function_code(&image, functions, name);
    let receiver = |caller: &str, callee: &str| -> Option<u64> {
        let (bytes, address) = code(caller)?;
        disasm::receiver_of_call(bytes, address, functions.get(callee)?.address)
    };
    let mut found = Vec::new();
    if let Some(address) = receiver(abi::GC_CONTROLLER_COMMIT, abi::COMMIT) {
        found.push((abi::GC_CONTROLLER, address));
    }
    if let Some(offset) = row.cpu_stats
        && let Some(address) = receiver(abi::GC_MARK_TERMINATION, abi::CPU_STATS_ACCUMULATE)
    {
        found.push((abi::WORK, address.wrapping_sub(offset)));
    }
    if let Some(address) = receiver(abi::MCACHE_REFILL, abi::HEAP_STATS_ACQUIRE) {
        found.push((abi::MEMSTATS, address.wrapping_sub(row.heap_stats)));
    }
    if let Some((bytes, address)) = code(abi::GOMAXPROCS_FUNCTION)
        && let [only] = disasm::widened_int32_reads(bytes, address).as_slice()
    {
        found.push((abi::GOMAXPROCS, *only));
    }
    if let Some(address) = receiver(abi::GOMAXPROCS_FUNCTION, abi::LOCK2) {
        found.push((abi::SCHED, address.wrapping_sub(row.sched_lock)));
    }
    let references = |name: &str| {
        code(name).map_or_else(Vec::new, |(bytes, address)| {
            disasm::data_references(bytes, address)
        })
    };
    if let Some(&first) = references(abi::FOR_EACH_G_RACE).first() {
        found.push((abi::ALLGLEN, first));
    }
    let allp = references(abi::FLUSH_MCACHE);
    if let Some(&header) = allp
        .iter()
        .find(|&&address| allp.contains(&address.wrapping_add(8)))
    {
        found.push((abi::ALLP, header));
    }
    found
}

/// The machine code of the function `functions` names `name`, and its address.
fn function_code<'a>(
    image: &Image<'a>,
    functions: &BTreeMap<String, Function>,
    name: &str,
) -> Option<(&'a [u8], u64)> {
    let function = functions.get(name)?;
    Some((
        image.bytes(function.address, function.size)?,
        function.address,
    ))
}
