//! User stacks recorded by the kernel programs (`profiler_common::stacks`), symbolized against
//! the target's executable and classified into sites, once per stack: a stack id never changes
//! meaning (a table never replaces a stack it holds).
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use aya::maps::{HashMap as KernelHashMap, MapData};
use profiler_common::stacks::UserStack;

use crate::{
    export::pprof::Line,
    gobin::GoBinary,
    model::sites::{Churn, Site, classify},
};

/// A kernel table of user stacks, by stack id (`ALLOC_STACKS`, `MAP_STACKS`).
pub type StackTable = KernelHashMap<MapData, u32, UserStack>;

/// A stack, symbolized once: its physical frames (address and lines, innermost first) and
/// what it means.
pub struct Symbolized {
    pub frames: Vec<(u64, Vec<Line>)>,
    pub site: Site,
    pub churn: Option<Churn>,
}

/// Symbolizes and caches the stacks of one target.
pub struct Stacks {
    binary: Arc<GoBinary>,
    /// Subtracted from addresses in the target to get addresses in the file (PIEs).
    load_bias: u64,
    known: HashMap<i32, Arc<Symbolized>>,
    /// Function and file names, one copy each, shared by every stack that names them.
    names: HashSet<Arc<str>>,
}

impl Stacks {
    pub fn new(binary: Arc<GoBinary>, load_bias: u64) -> Self {
        Self {
            binary,
            load_bias,
            known: HashMap::new(),
            names: HashSet::new(),
        }
    }

    /// How many stacks are kept.
    pub fn kept(&self) -> usize {
        self.known.len()
    }

    /// The stack `stack_id` of `map`, symbolized and classified; a negative or unknown id is
    /// the site `unknown`.
    pub fn symbolize(&mut self, map: &StackTable, stack_id: i32) -> Arc<Symbolized> {
        if let Some(known) = self.known.get(&stack_id) {
            return Arc::clone(known);
        }
        let mut frames = Vec::new();
        let stack = u32::try_from(stack_id)
            .ok()
            .and_then(|id| map.get(&id, 0).ok());
        if let (Some(stack), Some(symbolizer)) = (stack, self.binary.symbolizer()) {
            for (index, &ip) in stack.frames().iter().enumerate() {
                // The first address is where the probe fired; the others are return addresses,
                // whose call instruction is the byte before.
                let pc = ip.saturating_sub(self.load_bias);
                let pc = if index == 0 { pc } else { pc.saturating_sub(1) };
                let lines: Vec<Line> = symbolizer
                    .frames(pc)
                    .into_iter()
                    .map(|found| Line {
                        function: intern(&mut self.names, found.function),
                        file: intern(&mut self.names, found.file),
                        line: i64::from(found.line),
                    })
                    .collect();
                frames.push((ip, lines));
            }
        }
        let flat: Vec<(String, String)> = frames
            .iter()
            .flat_map(|(_, lines)| lines.iter())
            .map(|line| {
                let file = line.file.rsplit('/').next().unwrap_or_default();
                (line.function.to_string(), format!("{file}:{}", line.line))
            })
            .collect();
        let (site, churn) = if flat.is_empty() {
            let unknown = Site {
                function: "unknown".into(),
                location: String::new(),
            };
            (unknown, None)
        } else {
            classify(&flat)
        };
        let symbolized = Arc::new(Symbolized {
            frames,
            site,
            churn,
        });
        self.known.insert(stack_id, Arc::clone(&symbolized));
        symbolized
    }
}

/// The one shared copy of `name`.
fn intern(names: &mut HashSet<Arc<str>>, name: String) -> Arc<str> {
    if let Some(known) = names.get(name.as_str()) {
        return Arc::clone(known);
    }
    let name: Arc<str> = name.into();
    names.insert(Arc::clone(&name));
    name
}
