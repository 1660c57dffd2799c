//! A provided buffer ring (`IORING_REGISTER_PBUF_RING`): `count` receive buffers of `size` bytes
//! that the kernel picks from for multishot receives.
//!
//! Ownership of a buffer alternates: the kernel owns it while it is in the ring; a completion
//! hands it to us (its id is in the CQE flags); we read it in place and give it back with
//! [`BufRing::recycle`], made visible to the kernel in one store by [`BufRing::publish`]. A
//! buffer is never held across loop iterations: whatever the service did not consume is copied
//! into the connection's reassembly buffer first, so the ring never runs dry because of a slow
//! connection.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// An anonymous private mapping, resident from the start, unmapped on drop.
///
/// Populated at once (`MAP_POPULATE`) because the kernel cycles through every buffer of the ring:
/// left lazy, the pages a large receive touches would be faulted in one by one over hours, on the
/// hot path, and the process's resident size would creep up to the same total anyway, which
/// looks like a leak in a soak test.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: anonymous private mapping with no address hint; the kernel picks a fresh,
        // page-aligned, zero-filled region (populated up front) or fails.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p.cast::<u8>()).map(|ptr| Self { ptr, len }).ok_or_else(|| io::Error::other("mmap returned null"))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping we created and nobody else unmaps.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A provided buffer ring and its buffers.
pub(crate) struct BufRing {
    /// Ring entries (page aligned, as the kernel requires).
    ring: Mapping,
    /// `count * size` bytes of buffers.
    bufs: Mapping,
    count: u16,
    size: u32,
    /// Local tail: entries up to here are written, published by `publish`.
    tail: u16,
    group: u16,
}

impl BufRing {
    /// Allocates `count` (a power of two, at most 32768) buffers of `size` bytes and fills the
    /// ring with all of them.
    pub(crate) fn new(count: u16, size: u32, group: u16) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 32768 || size == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let ring = Mapping::new(usize::from(count) * std::mem::size_of::<BufRingEntry>())?;
        let bufs = Mapping::new(usize::from(count) * size as usize)?;
        let mut this = Self { ring, bufs, count, size, tail: 0, group };
        for bid in 0..count {
            this.recycle(bid);
        }
        this.publish();
        Ok(this)
    }

    /// Registers the ring with `submitter`'s io_uring as buffer group `group`.
    pub(crate) fn register(&self, submitter: &Submitter<'_>) -> io::Result<()> {
        // SAFETY: the ring memory is a live mapping of `count` entries that stays mapped until
        // this `BufRing` drops; the driver unregisters it (or destroys the ring) before that.
        unsafe { submitter.register_buf_ring_with_flags(self.ring.ptr.as_ptr() as u64, self.count, self.group, 0) }
    }

    /// The buffer group id to use in receive SQEs.
    pub(crate) fn group(&self) -> u16 {
        self.group
    }

    /// The first `len` bytes of buffer `bid`.
    ///
    /// # Safety
    /// `bid` must have been handed to us by a completion and not yet recycled, so the kernel is
    /// not writing to it.
    pub(crate) unsafe fn get(&self, bid: u16, len: usize) -> &[u8] {
        let bid = usize::from(bid % self.count);
        let len = len.min(self.size as usize);
        // SAFETY: the buffer lies inside the `bufs` mapping; the caller guarantees the kernel
        // does not write to it until it is recycled, which needs `&mut self`.
        unsafe { std::slice::from_raw_parts(self.bufs.ptr.as_ptr().add(bid * self.size as usize), len) }
    }

    /// Gives buffer `bid` back (visible to the kernel after [`BufRing::publish`]).
    pub(crate) fn recycle(&mut self, bid: u16) {
        let bid = bid % self.count;
        let idx = usize::from(self.tail & (self.count - 1));
        let addr = self.bufs.ptr.as_ptr() as u64 + u64::from(bid) * u64::from(self.size);
        // SAFETY: `idx < count`, so the entry lies inside the ring mapping. The kernel only
        // reads entries between its head and the published tail, and this one is past the
        // published tail until `publish`.
        let entry = unsafe { &mut *self.ring.ptr.as_ptr().cast::<BufRingEntry>().add(idx) };
        entry.set_addr(addr);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes recycled buffers visible to the kernel.
    pub(crate) fn publish(&mut self) {
        let base = self.ring.ptr.as_ptr().cast::<BufRingEntry>();
        // SAFETY: `base` is the first entry of a live ring; `tail` points at the ring's 16-bit
        // tail field (overlaying the first entry's reserved field), which is naturally aligned
        // and shared with the kernel, so it is accessed atomically.
        let tail = unsafe { &*BufRingEntry::tail(base).cast::<AtomicU16>() };
        // Release: the entry writes above are visible before the kernel sees the new tail.
        tail.store(self.tail, Ordering::Release);
    }
}
