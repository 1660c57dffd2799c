//! Big-endian field access. Callers have checked lengths, so indexing never fails on validated
//! views; on unvalidated input use the `get` forms.

/// Reads a big-endian u16 at `at`. The caller guarantees `at + 2 <= buf.len()`.
#[inline(always)]
pub(crate) fn u16_at(buf: &[u8], at: usize) -> u16 {
    match buf.get(at..at + 2) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

/// Reads a big-endian u32 at `at`. The caller guarantees `at + 4 <= buf.len()`.
#[inline(always)]
pub(crate) fn u32_at(buf: &[u8], at: usize) -> u32 {
    match buf.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// Reads a big-endian u16 at `at`, or `None` past the end.
#[inline(always)]
pub(crate) fn get_u16(buf: &[u8], at: usize) -> Option<u16> {
    match buf.get(at..at + 2) {
        Some(&[a, b]) => Some(u16::from_be_bytes([a, b])),
        _ => None,
    }
}

/// Reads a big-endian u32 at `at`, or `None` past the end.
#[inline(always)]
pub(crate) fn get_u32(buf: &[u8], at: usize) -> Option<u32> {
    match buf.get(at..at + 4) {
        Some(&[a, b, c, d]) => Some(u32::from_be_bytes([a, b, c, d])),
        _ => None,
    }
}

/// `len` rounded up to a multiple of 4.
#[inline(always)]
pub(crate) const fn padded(len: usize) -> usize {
    (len + 3) & !3
}
