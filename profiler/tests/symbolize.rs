//! Symbolization from the pclntab against the Go runtime's own answer (runtime.CallersFrames in
//! testdata/go/symtest), for every supported release, stripped or not, inlined frames included.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure here is a test failure"
)]

mod common;

use mapscope::gobin::{GoBinary, symbolize::Frame};

#[derive(serde::Deserialize)]
struct Stack {
    pcs: Vec<u64>,
    frames: Vec<RuntimeFrame>,
}

#[derive(serde::Deserialize, Debug, PartialEq)]
struct RuntimeFrame {
    function: String,
    file: String,
    line: i32,
}

fn same(ours: &Frame, theirs: &RuntimeFrame) -> bool {
    ours.function == theirs.function && ours.file == theirs.file && ours.line == theirs.line
}

fn check(version: &str, flags: &[&str]) {
    let path = common::build_go("symtest", version, flags);
    let output = std::process::Command::new(&path).output().unwrap();
    assert!(output.status.success());
    let binary = GoBinary::open(&path, &[]).unwrap();
    let symbolizer = binary.symbolizer().expect("a readable pclntab");
    let mut expanded_inline = false;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let stack: Stack = serde_json::from_str(line).unwrap();
        // runtime.Callers gives each physical frame's return address followed by one extra PC per
        // inlined frame; mapscope expands the return address itself and must cover those too.
        let mut at = 0;
        while at < stack.pcs.len() {
            let ours = symbolizer.frames(stack.pcs[at] - 1);
            assert!(
                !ours.is_empty(),
                "Go {version} {flags:?}: no frames for {:#x}",
                stack.pcs[at]
            );
            let theirs = &stack.frames[at..(at + ours.len()).min(stack.frames.len())];
            assert!(
                ours.len() == theirs.len() && ours.iter().zip(theirs).all(|(a, b)| same(a, b)),
                "Go {version} {flags:?}: {:#x} gives {ours:?}, the runtime says {theirs:?}",
                stack.pcs[at]
            );
            expanded_inline |= ours.len() > 1;
            at += ours.len();
        }
    }
    assert!(
        expanded_inline,
        "Go {version} {flags:?}: no inlined frames were exercised"
    );
}

/// Each release, built normally and stripped.
fn check_both(version: &str) {
    check(version, &[]);
    check(version, &["-ldflags=-s -w"]);
}

common::per_go_release! {
    check_both;
    frames_match_runtime_go1_19 => "1.19.8",
    frames_match_runtime_go1_21 => "1.21.13",
    frames_match_runtime_go1_22 => "1.22.10",
    frames_match_runtime_go1_23 => "1.23.9",
    frames_match_runtime_go1_24 => "1.24.11",
    frames_match_runtime_go1_25 => "1.25.5",
    frames_match_runtime_go1_26 => "1.26.6",
    frames_match_runtime_go1_27 => "1.27.3",
}
