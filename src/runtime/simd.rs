//! Byte-group matching for the handlespace's hash index and cache prefetch for its tables and
//! slots, here because they need `unsafe`.

/// One bit per byte of `group` that equals `byte` (bit `k` for byte `k`).
#[inline]
pub fn match_bytes(group: [u8; 16], byte: u8) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_cmpeq_epi8, _mm_movemask_epi8, _mm_set1_epi8, _mm_set_epi64x};
        let lo = u64::from_le_bytes([group[0], group[1], group[2], group[3], group[4], group[5], group[6], group[7]]);
        let hi =
            u64::from_le_bytes([group[8], group[9], group[10], group[11], group[12], group[13], group[14], group[15]]);
        // SAFETY: SSE2 is part of every x86_64 CPU (the target's baseline), and these
        // intrinsics only compute on registers.
        unsafe {
            let eq = _mm_cmpeq_epi8(_mm_set_epi64x(hi as i64, lo as i64), _mm_set1_epi8(byte as i8));
            _mm_movemask_epi8(eq) as u32
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // Bytewise arithmetic on 128 bits, whose carries cannot cross bytes.
        const ONES: u128 = u128::from_le_bytes([1; 16]);
        const LOW7: u128 = ONES * 0x7f;
        let x = u128::from_le_bytes(group) ^ (ONES * u128::from(byte));
        let high = !(((x & LOW7) + LOW7) | x | LOW7);
        (0..16).fold(0, |m, k| m | ((high >> (8 * k + 7)) as u32 & 1) << k)
    }
}

/// Asks the CPU to bring every cache line of `value` closer (a hint: no effect on results).
#[inline]
pub fn prefetch<T>(value: &T) {
    let start = value as *const T as usize;
    prefetch_lines(start, start + core::mem::size_of::<T>().max(1));
}

/// Asks for every cache line of `values` if they take at most `max_bytes` (a hint; nothing
/// for a longer slice, of which the caller would need only some lines).
#[inline]
pub fn prefetch_slice<T>(values: &[T], max_bytes: usize) {
    let bytes = core::mem::size_of_val(values);
    // An empty slice's pointer names no memory: nothing to ask for.
    if bytes != 0 && bytes <= max_bytes {
        let start = values.as_ptr() as usize;
        prefetch_lines(start, start + bytes);
    }
}

/// Prefetches the cache lines of the addresses `start..end` (the bytes of a live value).
#[inline]
fn prefetch_lines(start: usize, end: usize) {
    const LINE: usize = 64;
    let mut line = start & !(LINE - 1);
    while line < end {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch reads nothing the program sees and never faults, whatever the
        // address (here lines of a valid reference); its instruction is in SSE, the target's
        // baseline.
        unsafe {
            use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(line as *const i8);
        }
        line += LINE;
    }
}

#[cfg(test)]
mod tests {
    use super::match_bytes;

    #[test]
    fn matches_exactly_the_equal_bytes() {
        let group = [0x80, 0x81, 0, 0x80, 0xff, 0x01, 0x7f, 0x80, 0, 0, 0x81, 0x80, 0x80, 3, 0, 0x7f];
        for byte in [0u8, 1, 3, 0x7f, 0x80, 0x81, 0xff, 0x42] {
            let expected = (0..16).filter(|&k| group[k] == byte).fold(0, |m, k| m | 1 << k);
            assert_eq!(match_bytes(group, byte), expected, "byte {byte:#x}");
        }
    }
}
