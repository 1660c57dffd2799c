//! Runs the fuzz targets' bodies over their seed corpus and every input the fuzzer ever found
//! crashing (`fuzz/regressions/`), so a fixed crash stays fixed without the fuzzer installed.

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in [root.join("seeds").join(target), root.join("regressions").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn parse_target_over_corpus_and_regressions() {
    let all = inputs("parse");
    assert!(all.len() >= 69, "the seed corpus holds every test vector");
    for (path, data) in all {
        eprintln!("{}", path.display());
        rserpool::wire::fuzz::parse_one(&data);
    }
}

#[test]
fn framer_target_over_corpus_and_regressions() {
    let all = inputs("framer");
    assert!(!all.is_empty());
    for (path, data) in all {
        eprintln!("{}", path.display());
        rserpool::wire::fuzz::frame_stream(&data);
    }
}
