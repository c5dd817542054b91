//! The library's stages import only the stages before them (see `src/lib.rs`): a module that
//! names a later stage through a `crate::` path fails this test with the file and line (the
//! stages are folders of their own, so `super::` never leaves one).
//!
//! Imports are found by reading the sources: every `crate::<stage>` path, including those inside
//! `use crate::{...}` groups, counts. Test modules count too: a stage's tests may not reach up.
//! clap, the command line's crate, appears only in `commands`.
#![allow(clippy::expect_used)]

use std::{
    fs,
    path::{Path, PathBuf},
};

/// The stages in the order data flows; `commands` sits above them all.
const STAGES: [(&str, &str); 10] = [
    ("1_kernel", "kernel"),
    ("2_sock_diag", "sock_diag"),
    ("3_decode", "decode"),
    ("4_track", "track"),
    ("5_judge", "judge"),
    ("6_sinks", "sinks"),
    ("7_live", "live"),
    ("8_monitor", "monitor"),
    ("9_views", "views"),
    ("commands", "commands"),
];

fn rank_of_module(name: &str) -> Option<usize> {
    STAGES.iter().position(|&(_, m)| m == name)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The stage modules a source names through `crate::`, with the line of each mention.
fn stages_named(source: &str) -> Vec<(usize, &'static str)> {
    let mut named = Vec::new();
    // Inside a multi-line `use crate::{...}` group: the indentation of its items.
    let mut group: Option<usize> = None;
    for (n, line) in source.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            if let Some(items) = after.strip_prefix('{') {
                group = (!items.contains('}')).then_some(indent + 4);
                for m in items.split([',', '}', ' ']) {
                    push_stage(&mut named, n + 1, m);
                }
            } else {
                push_stage(&mut named, n + 1, after);
            }
            rest = after;
        }
        if let Some(items_indent) = group.filter(|_| !code.contains("crate::{")) {
            // The first path segment of an item at the group's own indentation names a stage.
            let item = code.trim_start();
            if item.starts_with('}') && indent + 4 == items_indent {
                group = None;
            } else if indent == items_indent {
                push_stage(&mut named, n + 1, item);
            }
        }
    }
    named
}

fn push_stage(named: &mut Vec<(usize, &'static str)>, line: usize, path: &str) {
    let first = path
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()
        .unwrap_or_default();
    if let Some(&(_, m)) = STAGES.iter().find(|&&(_, m)| m == first) {
        named.push((line, m));
    }
}

#[test]
fn no_stage_imports_a_later_one() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    let mut upward = Vec::new();
    for (rank, &(dir, module)) in STAGES.iter().enumerate() {
        let mut files = Vec::new();
        rust_files(&src.join(dir), &mut files);
        assert!(!files.is_empty(), "stage {dir} has no sources");
        for file in files {
            let text = fs::read_to_string(&file).expect("readable source");
            for (line, named) in stages_named(&text) {
                checked += 1;
                let other = rank_of_module(named).expect("a stage");
                if other > rank {
                    upward.push(format!(
                        "{}:{line}: {module} imports {named}, a later stage",
                        file.strip_prefix(&src).unwrap_or(&file).display()
                    ));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} imports found: is the scan broken?"
    );
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
}

#[test]
fn clap_stays_in_the_commands() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for &(dir, _) in &STAGES[..STAGES.len() - 1] {
        let mut files = Vec::new();
        rust_files(&src.join(dir), &mut files);
        for file in files {
            let text = fs::read_to_string(&file).expect("readable source");
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                if code.contains("clap::") || code.contains("use clap") {
                    found.push(format!("{}:{}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "clap outside commands:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scan_sees_grouped_and_inline_paths() {
    let source = "use crate::{\n    decode::Event,\n    judge::{\n        self,\n        sinks,\n    },\n};\n\
                  fn f() { crate::sinks::x(); }\nuse crate::{track::Tracker, live::Summary};\n\
                  mod tests {\n    use crate::{\n        views::App,\n    };\n}\n";
    let named: Vec<_> = stages_named(source).into_iter().map(|(_, m)| m).collect();
    assert_eq!(
        named,
        ["decode", "judge", "sinks", "track", "live", "views"]
    );
}
