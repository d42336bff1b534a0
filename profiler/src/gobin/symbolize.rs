//! PC → source frames (function, file, line), with inlined calls expanded the way the runtime's
//! own `runtime.CallersFrames` does (src/runtime/symtabinl.go): for a PC inside inlined code,
//! the function's inline tree names the inlined function, and its `parentPc` gives a PC at the
//! call site, whose position is the next frame out.
//!
//! Works on stripped binaries: everything comes from the pclntab and the `go:func.*` data.
use super::{
    GoBinary,
    pclntab::{FUNCDATA_INL_TREE, FuncRecord, PCDATA_INL_TREE_INDEX, Pclntab},
};

/// Inlining deeper than this is a corrupt table, not a program.
const MAX_INLINE_DEPTH: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: i32,
}

pub struct Symbolizer<'a> {
    table: Pclntab<'a>,
    gofunc: Option<u64>,
    binary: &'a GoBinary,
}

impl GoBinary {
    /// A symbolizer over this binary's pclntab, if it has a readable one.
    pub fn symbolizer(&self) -> Option<Symbolizer<'_>> {
        let span = self.pclntab?;
        let data = self
            .data
            .get(span.file_offset..span.file_offset.checked_add(span.len)?)?;
        let table = Pclntab::parse(data, span.text_start).ok()?;
        Some(Symbolizer {
            table,
            gofunc: span.gofunc,
            binary: self,
        })
    }
}

impl Symbolizer<'_> {
    /// The frames at `pc`, innermost (inlined) first, outermost (the real function) last.
    /// Empty when `pc` is not in Go code. For a return address, pass the address minus one,
    /// as `runtime.CallersFrames` does, so the call instruction is what is looked up.
    pub fn frames(&self, pc: u64) -> Vec<Frame> {
        let Some(func) = self.table.func_at(pc) else {
            return Vec::new();
        };
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let position = |pc: u64| {
            self.table
                .file_line(func, pc)
                .map_or((String::new(), 0), |(file, line)| (text(file), line))
        };
        let mut frames = Vec::new();
        let mut pc = pc;
        if let Some(tree) = self.inline_tree(func) {
            for _ in 0..MAX_INLINE_DEPTH {
                let index = self
                    .table
                    .pcdata(func, PCDATA_INL_TREE_INDEX, pc)
                    .unwrap_or(-1);
                let Some(call) = (index >= 0)
                    .then(|| self.table.inlined_call(tree, index))
                    .flatten()
                else {
                    break;
                };
                let (file, line) = position(pc);
                let function = self
                    .table
                    .name(call.name_offset)
                    .map(text)
                    .unwrap_or_default();
                frames.push(Frame {
                    function,
                    file,
                    line,
                });
                pc = func.entry + u64::from(call.parent_pc);
            }
        }
        let (file, line) = position(pc);
        let function = self.display_name(self.table.func_name(func));
        frames.push(Frame {
            function,
            file,
            line,
        });
        frames
    }

    /// A function name as Go shows it to people: since Go 1.20 the type arguments of generic
    /// instantiations (`main.f[go.shape.int]`) print as `[...]` (src/runtime/symtab.go
    /// `funcNamePiecesForPrint`), in tracebacks, `CallersFrames` and pprof alike.
    fn display_name(&self, raw: Option<&[u8]>) -> String {
        let name = String::from_utf8_lossy(raw.unwrap_or_default()).into_owned();
        if self.table.is_go118() {
            return name;
        }
        match (name.find('['), name.rfind(']')) {
            (Some(open), Some(close)) if open < close => {
                format!("{}[...]{}", &name[..open], &name[close + 1..])
            }
            _ => name,
        }
    }

    /// The function's inline tree, as the bytes from its start to the end of the file (each
    /// record read is bounds-checked).
    fn inline_tree(&self, func: FuncRecord) -> Option<&[u8]> {
        let offset = self.table.funcdata(func, FUNCDATA_INL_TREE)?;
        let address = self.gofunc?.checked_add(u64::from(offset))?;
        let file_offset = usize::try_from(self.binary.file_offset(address)?).ok()?;
        self.binary.data.get(file_offset..)
    }
}
