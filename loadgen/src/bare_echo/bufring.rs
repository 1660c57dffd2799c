//! The bare echo server's provided buffer ring (`IORING_REGISTER_PBUF_RING`): `count` receive
//! buffers of `size` bytes that the kernel picks from for multishot receives.
//!
//! The server never reads what it receives (it only counts bytes), so the buffers are memory the
//! kernel writes and nothing here reads. The ring entries are shared with the kernel, so every
//! field is an atomic: entries past the published tail are written with relaxed stores, then
//! the tail with a release store, which the kernel reads with acquire. That leaves one `unsafe`
//! call: registering the ring's address with the kernel.

#![deny(unsafe_op_in_unsafe_fn)]
#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// One ring entry, laid out as the kernel's `struct io_uring_buf`. The `resv` field of entry 0
/// is the ring's tail.
#[repr(C)]
struct Entry {
    addr: AtomicU64,
    len: AtomicU32,
    bid: AtomicU16,
    resv: AtomicU16,
}

const _: () = assert!(std::mem::size_of::<Entry>() == std::mem::size_of::<BufRingEntry>());

/// Entries per 4 KiB page.
const PER_PAGE: usize = 4096 / std::mem::size_of::<Entry>();

/// The kernel wants the ring page aligned (4 KiB pages, as on x86-64).
#[repr(C, align(4096))]
struct Page([Entry; PER_PAGE]);

/// A provided buffer ring and its buffers.
pub(super) struct BufRing {
    entries: Box<[Page]>,
    bufs: Box<[u8]>,
    count: u16,
    size: u32,
    /// Local tail: entries up to here are written, published by `publish`.
    tail: u16,
    group: u16,
}

impl BufRing {
    /// Allocates `count` buffers of `size` bytes and fills the ring with all of them. `count`
    /// is a power of two (the configuration is checked before).
    pub(super) fn new(count: u16, size: u32, group: u16) -> Self {
        assert!(count.is_power_of_two(), "buffer count {count} is not a power of two");
        let pages = usize::from(count).div_ceil(PER_PAGE);
        let mut this = Self {
            entries: (0..pages)
                .map(|_| {
                    Page(
                        [const {
                            Entry {
                                addr: AtomicU64::new(0),
                                len: AtomicU32::new(0),
                                bid: AtomicU16::new(0),
                                resv: AtomicU16::new(0),
                            }
                        }; PER_PAGE],
                    )
                })
                .collect(),
            bufs: vec![0; usize::from(count) * size as usize].into_boxed_slice(),
            count,
            size,
            tail: 0,
            group,
        };
        for bid in 0..count {
            this.recycle(bid);
        }
        this.publish();
        this
    }

    /// Registers the ring with `submitter`'s io_uring as buffer group `group`.
    pub(super) fn register(&self, submitter: &Submitter<'_>) -> io::Result<()> {
        let addr = self.entries.as_ptr() as u64;
        // SAFETY: `entries` is a page-aligned allocation of at least `count` entries that stays
        // allocated for as long as this `BufRing` lives, and the server drops (or leaks) the
        // `BufRing` only after the ring itself. The buffers the entries point at live as long.
        unsafe { submitter.register_buf_ring_with_flags(addr, self.count, self.group, 0) }
    }

    /// The buffer group id to use in receive SQEs.
    pub(super) fn group(&self) -> u16 {
        self.group
    }

    fn entry(&self, idx: usize) -> &Entry {
        &self.entries[idx / PER_PAGE].0[idx % PER_PAGE]
    }

    /// Gives buffer `bid` back (visible to the kernel after [`BufRing::publish`]).
    pub(super) fn recycle(&mut self, bid: u16) {
        let bid = bid % self.count;
        let entry = self.entry(usize::from(self.tail & (self.count - 1)));
        entry.addr.store(self.bufs.as_ptr() as u64 + u64::from(bid) * u64::from(self.size), Ordering::Relaxed);
        entry.len.store(self.size, Ordering::Relaxed);
        entry.bid.store(bid, Ordering::Relaxed);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes recycled buffers visible to the kernel.
    pub(super) fn publish(&mut self) {
        // Release: the entry stores above are visible before the kernel sees the new tail.
        self.entry(0).resv.store(self.tail, Ordering::Release);
    }

    /// Forgets the ring and the buffers instead of freeing them, for when the kernel may still
    /// write into them.
    pub(super) fn leak(&mut self) {
        std::mem::forget(std::mem::take(&mut self.entries));
        std::mem::forget(std::mem::take(&mut self.bufs));
    }
}
