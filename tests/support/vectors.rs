//! The test vectors (`tests/vectors/`, a vendored copy of `shared/rserpool/vectors/`) as bytes:
//! one reader for the integration tests and, through `#[path]`, the library's unit tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Where the vendored vectors are.
pub fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// The bytes a string of hex digits spells; whitespace between them is skipped, anything else
/// (or an odd number of digits) is a broken test input and panics.
pub fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("hex digits are ASCII");
            u8::from_str_radix(pair, 16).unwrap_or_else(|_| panic!("not hex: {pair:?}"))
        })
        .collect()
}

/// The bytes of a `.hex` file.
pub fn read_hex(path: &Path) -> Vec<u8> {
    hex(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// A vector by name: a valid one, else one of `bad/`.
pub fn vector(name: &str) -> Vec<u8> {
    let p = vectors_dir().join(format!("{name}.hex"));
    if p.exists() {
        read_hex(&p)
    } else {
        read_hex(&vectors_dir().join("bad").join(format!("{name}.hex")))
    }
}
