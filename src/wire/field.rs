//! Big-endian field access. Callers have checked lengths, so indexing never fails on validated
//! views; on unvalidated input use the `get` forms.

/// Reads a big-endian u16 at `at`. The caller guarantees `at + 2 <= buf.len()`.
#[inline(always)]
pub(crate) fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

/// Reads a big-endian u32 at `at`. The caller guarantees `at + 4 <= buf.len()`.
#[inline(always)]
pub(crate) fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Reads a big-endian u16 at `at`, or `None` past the end.
#[inline(always)]
pub(crate) fn get_u16(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// `len` rounded up to a multiple of 4.
#[inline(always)]
pub(crate) const fn padded(len: usize) -> usize {
    (len + 3) & !3
}
