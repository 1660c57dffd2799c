//! A bounded, lock-free single-producer/single-consumer queue of variable-length records, stored
//! back to back in one byte ring.
//!
//! Why a byte ring rather than a queue of `Vec<u8>`: a cross-shard request and its answer cost no
//! allocation at all. The producer copies the payload into the ring once; the consumer hands the
//! payload to the service straight out of the ring (a borrowed slice) and releases the space
//! afterwards.
//!
//! Layout: every record starts at a multiple of [`ALIGN`] with a 16-byte header (payload length,
//! kind, 64-bit tag) followed by the payload, padded to [`ALIGN`]. A record never wraps: when it
//! does not fit before the end of the buffer, the producer writes a padding header there and
//! starts the record at offset 0. Because positions are multiples of 16 and a header is 16
//! bytes, there is always room for a padding header at the end.
//!
//! Positions (`head`, `tail`) are byte counters that only grow; the index into the buffer is the
//! position modulo the (power-of-two) capacity.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Alignment and header size of records.
const ALIGN: usize = 16;
const HEADER: usize = 16;
/// Length value marking a padding record that runs to the end of the buffer.
const PAD: u32 = u32::MAX;

/// A record as the consumer sees it: borrowed from the ring until [`Consumer::pop`].
#[derive(Debug)]
pub(crate) struct Record<'a> {
    /// Caller-defined kind.
    pub(crate) kind: u8,
    /// Caller-defined 64-bit tag.
    pub(crate) tag: u64,
    /// The payload.
    pub(crate) bytes: &'a [u8],
}

/// Why a push failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    /// Not enough free space right now; retry after the consumer has made progress.
    Full,
    /// The record can never fit (larger than half the capacity).
    TooLarge,
}

/// Keeps the producer's and the consumer's counters on separate cache lines.
#[repr(align(128))]
#[derive(Debug)]
struct Padded(AtomicUsize);

/// The shared ring.
struct Ring {
    /// `capacity` bytes, 16-byte aligned (allocated as `u128`s). Written only by the producer in
    /// the free region and read only by the consumer in the published region, which never
    /// overlap; `UnsafeCell` makes that shared mutation legal.
    buf: Box<[UnsafeCell<u128>]>,
    capacity: usize,
    /// Consumer position: everything before it is free for the producer.
    head: Padded,
    /// Producer position: everything before it (and after `head`) is published to the consumer.
    tail: Padded,
}

// SAFETY: the only interior mutation is of `buf` bytes, and the protocol below guarantees that
// the producer writes only the region in [tail, head + capacity) and the consumer reads only the
// region in [head, tail), with Release/Acquire on `tail` and `head` ordering each handover. There
// is exactly one producer and one consumer (the handles are not `Clone`).
unsafe impl Sync for Ring {}
// SAFETY: the ring owns plain bytes and atomics; moving it between threads is fine.
unsafe impl Send for Ring {}

impl Ring {
    fn base(&self) -> *mut u8 {
        // `UnsafeCell<u128>` is `repr(transparent)`, so the slice's data pointer is a pointer to
        // `capacity` contiguous bytes; `raw_get` keeps write provenance for the whole buffer.
        UnsafeCell::raw_get(self.buf.as_ptr()).cast::<u8>()
    }
}

/// The sending half. Not `Clone`: there is exactly one producer.
pub(crate) struct Producer {
    ring: Arc<Ring>,
    tail: usize,
    cached_head: usize,
}

/// The receiving half. Not `Clone`: there is exactly one consumer.
pub(crate) struct Consumer {
    ring: Arc<Ring>,
    head: usize,
    cached_tail: usize,
    /// Size of the record returned by the last `peek`, released by `pop`.
    current: usize,
}

/// Creates a queue of at least `capacity` bytes (rounded up to a power of two, at least 256).
pub(crate) fn channel(capacity: usize) -> (Producer, Consumer) {
    let capacity = capacity.max(256).next_power_of_two();
    let words = capacity / ALIGN;
    let buf: Box<[UnsafeCell<u128>]> = (0..words).map(|_| UnsafeCell::new(0)).collect();
    let ring = Arc::new(Ring { buf, capacity, head: Padded(AtomicUsize::new(0)), tail: Padded(AtomicUsize::new(0)) });
    (
        Producer { ring: Arc::clone(&ring), tail: 0, cached_head: 0 },
        Consumer { ring, head: 0, cached_tail: 0, current: 0 },
    )
}

const fn record_size(payload: usize) -> usize {
    (HEADER + payload + ALIGN - 1) & !(ALIGN - 1)
}

impl Producer {
    /// The largest payload a single record can carry.
    pub(crate) fn max_payload(&self) -> usize {
        self.ring.capacity / 2 - HEADER
    }

    /// Appends one record, or fails without side effects.
    pub(crate) fn try_push(&mut self, kind: u8, tag: u64, bytes: &[u8]) -> Result<(), PushError> {
        if bytes.len() > self.max_payload() {
            return Err(PushError::TooLarge);
        }
        let cap = self.ring.capacity;
        let need = record_size(bytes.len());
        let idx = self.tail & (cap - 1);
        let till_end = cap - idx;
        let total = if need <= till_end { need } else { till_end + need };
        if cap - (self.tail - self.cached_head) < total {
            // Acquire: the consumer's reads of the space it released happen before our writes.
            self.cached_head = self.ring.head.0.load(Ordering::Acquire);
            if cap - (self.tail - self.cached_head) < total {
                return Err(PushError::Full);
            }
        }
        let base = self.ring.base();
        let mut idx = idx;
        if need > till_end {
            // SAFETY: [idx, cap) lies in the free region checked above (total includes it), and
            // idx + HEADER <= cap because idx is a multiple of 16 below cap.
            unsafe { write_header(base.add(idx), PAD, 0, 0) };
            self.tail += till_end;
            idx = 0;
        }
        // SAFETY: [idx, idx + need) is free (checked above) and inside the buffer (need <=
        // till_end, or idx is 0 and need <= cap / 2). Only this producer writes there, and the
        // consumer will not read it before the Release store of `tail` below.
        unsafe {
            let at = base.add(idx);
            write_header(at, bytes.len() as u32, kind, tag);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), at.add(HEADER), bytes.len());
        }
        self.tail += need;
        // Release: publishes the record bytes written above to the consumer.
        self.ring.tail.0.store(self.tail, Ordering::Release);
        Ok(())
    }
}

/// Writes a record header at `at`.
///
/// # Safety
/// `at..at + HEADER` must be inside the ring buffer and owned by the producer.
unsafe fn write_header(at: *mut u8, len: u32, kind: u8, tag: u64) {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&len.to_ne_bytes());
    h[4] = kind;
    h[8..16].copy_from_slice(&tag.to_ne_bytes());
    // SAFETY: guaranteed by the caller.
    unsafe { std::ptr::copy_nonoverlapping(h.as_ptr(), at, HEADER) };
}

impl Consumer {
    /// The oldest record, if any. Call [`Consumer::pop`] once it has been used.
    pub(crate) fn peek(&mut self) -> Option<Record<'_>> {
        let cap = self.ring.capacity;
        loop {
            if self.head == self.cached_tail {
                // Acquire: pairs with the producer's Release store; the record bytes are visible.
                self.cached_tail = self.ring.tail.0.load(Ordering::Acquire);
                if self.head == self.cached_tail {
                    return None;
                }
            }
            let idx = self.head & (cap - 1);
            let mut h = [0u8; HEADER];
            // SAFETY: [head, cached_tail) is published by the producer and not written again
            // until we advance `head`; a header starts at every record position, fully inside the
            // buffer (see the module comment).
            unsafe { std::ptr::copy_nonoverlapping(self.ring.base().add(idx), h.as_mut_ptr(), HEADER) };
            let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]);
            if len == PAD {
                self.head += cap - idx;
                continue;
            }
            let len = len as usize;
            self.current = record_size(len);
            let mut tag = [0u8; 8];
            tag.copy_from_slice(&h[8..16]);
            // SAFETY: the payload lies in the published region right after the header, inside
            // the buffer; the producer does not touch it until `pop` releases it, and the
            // returned borrow of `self` prevents `pop` while the slice is alive.
            let bytes = unsafe { std::slice::from_raw_parts(self.ring.base().add(idx + HEADER), len) };
            return Some(Record { kind: h[4], tag: u64::from_ne_bytes(tag), bytes });
        }
    }

    /// Releases the record returned by the last [`Consumer::peek`].
    pub(crate) fn pop(&mut self) {
        if self.current == 0 {
            return;
        }
        self.head += self.current;
        self.current = 0;
        // Release: our reads of the record happen before the producer reuses the space.
        self.ring.head.0.store(self.head, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_with_wraparound() {
        let (mut p, mut c) = channel(256);
        let mut next_in = 0u64;
        let mut next_out = 0u64;
        for round in 0..200 {
            // Push a few records of varying size until full.
            loop {
                let len = ((next_in * 7 + round) % 60) as usize;
                let payload = vec![next_in as u8; len];
                match p.try_push(1, next_in, &payload) {
                    Ok(()) => next_in += 1,
                    Err(PushError::Full) => break,
                    Err(PushError::TooLarge) => unreachable!(),
                }
            }
            // Pop some of them.
            for _ in 0..3 {
                let Some(r) = c.peek() else { break };
                assert_eq!(r.tag, next_out);
                assert_eq!(r.kind, 1);
                assert!(r.bytes.iter().all(|&b| b == next_out as u8));
                c.pop();
                next_out += 1;
            }
        }
        while let Some(r) = c.peek() {
            assert_eq!(r.tag, next_out);
            c.pop();
            next_out += 1;
        }
        assert_eq!(next_in, next_out);
    }

    #[test]
    fn too_large_is_refused() {
        let (mut p, _c) = channel(256);
        assert_eq!(p.max_payload(), 112);
        assert_eq!(p.try_push(0, 0, &[0; 113]), Err(PushError::TooLarge));
        assert_eq!(p.try_push(0, 0, &[0; 112]), Ok(()));
    }

    #[test]
    fn two_threads_keep_order_and_content() {
        const N: u64 = 200_000;
        let (mut p, mut c) = channel(4096);
        let producer = std::thread::spawn(move || {
            let mut i = 0u64;
            while i < N {
                let len = (i % 100) as usize;
                let payload: Vec<u8> = (0..len).map(|k| (i as usize + k) as u8).collect();
                match p.try_push((i % 3) as u8, i, &payload) {
                    Ok(()) => i += 1,
                    Err(_) => std::thread::yield_now(),
                }
            }
        });
        let mut expect = 0u64;
        while expect < N {
            let Some(r) = c.peek() else {
                std::thread::yield_now();
                continue;
            };
            assert_eq!(r.tag, expect);
            assert_eq!(r.kind, (expect % 3) as u8);
            assert_eq!(r.bytes.len(), (expect % 100) as usize);
            for (k, b) in r.bytes.iter().enumerate() {
                assert_eq!(*b, (expect as usize + k) as u8);
            }
            c.pop();
            expect += 1;
        }
        producer.join().unwrap();
        assert!(c.peek().is_none());
    }
}
