//! Golden files: what the binary writes where operators and their tools read it,
//! compared with `tests/data/golden/<name>`. `ENISYNC_BLESS=1` rewrites the files
//! (review the diff: it is an interface change).

/// Compares `actual` with `tests/data/golden/<name>`, or rewrites it when blessing.
pub fn assert_golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/golden")
        .join(name);
    if std::env::var_os("ENISYNC_BLESS").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{} differs from what the binary produces now:\n--- expected\n{expected}--- actual\n{actual}",
        path.display()
    );
}
