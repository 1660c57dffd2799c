//! Memory the kernel is asked to back ahead of its first use.

use core::mem::MaybeUninit;

/// Asks the kernel to back the whole pages inside `spare` with memory now, in one call,
/// instead of one page fault per 4 KiB page as they are first written (`MADV_POPULATE_WRITE`,
/// Linux 5.14). A hint: on an older kernel, or memory it cannot populate, nothing happens and
/// the pages fault in as before.
pub(crate) fn populate<T>(spare: &mut [MaybeUninit<T>]) {
    const PAGE: usize = 4096;
    let start = spare.as_mut_ptr() as usize;
    let end = start + core::mem::size_of_val(spare);
    let (from, to) = (start.next_multiple_of(PAGE), end / PAGE * PAGE);
    if to > from {
        // SAFETY: [from, to) lies inside `spare`, memory this process owns and that nothing
        // reads (it is uninitialised); MADV_POPULATE_WRITE only faults its pages in (writable,
        // zero-filled or as they are), and never changes their contents or the mapping.
        unsafe {
            libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_POPULATE_WRITE);
        }
    }
}

/// `len` copies of `value`, in memory backed by [`populate`] before it is written: for the
/// large tables that grow in steps (PE slots, index chunks), whose first writes would otherwise
/// take a page fault per 4 KiB.
pub(crate) fn populated_vec<T: Clone>(len: usize, value: T) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    populate(v.spare_capacity_mut());
    v.resize(len, value);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_populated_vector_holds_its_copies_and_populating_keeps_what_was_written() {
        // Several pages, starting anywhere in one: the whole pages inside are populated.
        let v = populated_vec(100_000, 0x5a5a_u16);
        assert_eq!((v.len(), v.iter().all(|&x| x == 0x5a5a)), (100_000, true));
        let mut w: Vec<u64> = (0..20_000).collect();
        w.reserve(50_000);
        populate(w.spare_capacity_mut());
        assert!(w.iter().copied().eq(0..20_000), "populating the spare room touched the elements");
        // Less than a page, and nothing at all: no whole page inside, nothing asked.
        populate(&mut [MaybeUninit::<u8>::uninit(); 100]);
        populate::<u8>(&mut []);
    }
}
