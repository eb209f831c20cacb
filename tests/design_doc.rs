//! `docs/design.md` names, for each clause of the trigger rule, the tests that prove it.
//! This checks that every test it names exists, so the table cannot silently go stale
//! when a test is renamed or removed.

use std::path::Path;

/// Every `path::name` in backticks in the design doc's tables.
fn named_tests(doc: &str) -> Vec<(String, String)> {
    doc.lines()
        .filter(|l| l.starts_with('|'))
        .flat_map(|l| l.split('`').skip(1).step_by(2))
        .filter_map(|quoted| {
            let (path, name) = quoted.rsplit_once("::")?;
            path.ends_with(".rs")
                .then(|| (path.to_owned(), name.to_owned()))
        })
        .collect()
}

#[test]
fn every_test_the_design_doc_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/design.md")).expect("docs/design.md");
    let named = named_tests(&doc);
    assert!(
        named.len() >= 10,
        "the clause-to-test table names too few tests: {named:?}"
    );
    let mut missing = Vec::new();
    for (path, name) in &named {
        let source = std::fs::read_to_string(root.join(path))
            .unwrap_or_else(|e| panic!("docs/design.md names {path}, which cannot be read: {e}"));
        let defined =
            source.contains(&format!("fn {name}(")) || source.contains(&format!("fn {name}<"));
        if !defined {
            missing.push(format!("{path}::{name}"));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/design.md names tests that do not exist: {missing:?}"
    );
}

#[test]
fn a_renamed_test_would_be_caught() {
    // The parser must see a name the table could hold, and a wrong one must be missing.
    let named = named_tests("| 1 | x | `tests/e2e.rs::no_such_test_here` |\n");
    assert_eq!(
        named,
        vec![("tests/e2e.rs".to_owned(), "no_such_test_here".to_owned())]
    );
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e.rs"))
            .expect("e2e.rs");
    assert!(!source.contains("fn no_such_test_here("));
}

/// Comments point into this repository (docs/design.md, docs/cloud-api.md,
/// docs/security.md), never to documents a user of the repository does not have, nor
/// to the issue tracker.
#[test]
fn no_source_file_points_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Built from parts so that this file does not match itself.
    let outside = [
        ["DESIGN", ".md"].concat(),
        ["tencent-api", ".md"].concat(),
        ["rust-notes", ".md"].concat(),
        ["../", "shared/"].concat(),
        ["steering ", "repository"].concat(),
    ];
    let mut found = Vec::new();
    let mut stack = vec![root.join("src"), root.join("tests")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                for needle in &outside {
                    if text.contains(needle.as_str()) {
                        found.push(format!("{} mentions {needle}", path.display()));
                    }
                }
                // The issue tracker is outside too: say what the test proves instead.
                let lower = text.to_lowercase();
                let issue = ["issue", " "].concat();
                for (at, _) in lower.match_indices(issue.as_str()) {
                    let next = lower[at + issue.len()..].trim_start_matches('#');
                    if next.starts_with(|c: char| c.is_ascii_digit()) {
                        found.push(format!("{} points to the issue tracker", path.display()));
                    }
                }
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}
