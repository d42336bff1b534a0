//! Prometheus label values for the runtime's stop-the-world reasons.

/// The runtime's reason text in snake_case: `"GC mark termination"` → `gc_mark_termination`,
/// `"AllThreadsSyscall"` → `all_threads_syscall`, `"CountPagesInUse (test)"` →
/// `count_pages_in_use_test`.
pub fn label(runtime_name: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    for chunk in runtime_name.split(|c: char| !c.is_ascii_alphanumeric()) {
        let chars: Vec<char> = chunk.chars().collect();
        let mut word = String::new();
        for (index, &c) in chars.iter().enumerate() {
            let previous = index.checked_sub(1).map(|i| chars[i]);
            let next = chars.get(index + 1).copied();
            // A word starts at lower→Upper ("allThreads") and at the last capital of an
            // acronym that runs into a word ("GCMark" → "GC", "Mark").
            let starts_word = c.is_ascii_uppercase()
                && match previous {
                    Some(p) if p.is_ascii_lowercase() || p.is_ascii_digit() => true,
                    Some(p) if p.is_ascii_uppercase() => {
                        next.is_some_and(|n| n.is_ascii_lowercase())
                    }
                    _ => false,
                };
            if starts_word && !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            word.push(c.to_ascii_lowercase());
        }
        if !word.is_empty() {
            words.push(word);
        }
    }
    words.join("_")
}

/// Label for a `stwReason` value the Go release does not name (a newer runtime).
pub fn unnamed(reason: u32) -> String {
    format!("reason_{reason}")
}

/// The runtime's name for the pause that ends a GC cycle; counting those counts completed
/// cycles, as `/gc/cycles/total:gc-cycles` and `MemStats.NumGC` do.
pub const GC_MARK_TERMINATION: &str = "GC mark termination";

/// The label of the pause that starts a GC cycle (`"GC sweep termination"`; Go 1.19's empty
/// reason text is mapped to it).
pub const GC_SWEEP_TERMINATION_LABEL: &str = "gc_sweep_termination";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_reasons_become_snake_case() {
        let cases = [
            ("GC mark termination", "gc_mark_termination"),
            ("GC sweep termination", "gc_sweep_termination"),
            ("read mem stats", "read_mem_stats"),
            ("AllThreadsSyscall", "all_threads_syscall"),
            ("GOMAXPROCS", "gomaxprocs"),
            ("CountPagesInUse (test)", "count_pages_in_use_test"),
            ("ReadMemStatsSlow (test)", "read_mem_stats_slow_test"),
            ("GCMark", "gc_mark"),
            ("unknown", "unknown"),
        ];
        for (name, want) in cases {
            assert_eq!(label(name), want, "{name}");
        }
    }
}
