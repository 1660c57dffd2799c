//! The bare echo server's io_uring loop (see the parent module for what it does).
//!
//! With `bufring`, the only part of the bare echo server with `unsafe`: pushing submission
//! entries and taking ownership of accepted descriptors. Everything an entry points at (the
//! reply block, the wake buffer, the provided buffers, the descriptors) is owned by [`Server`]
//! and outlives the operation: connections are removed only with no operation in flight, and
//! if the kernel may still be working when the server ends, the memory is leaked, not freed.

#![deny(unsafe_op_in_unsafe_fn)]
#![allow(unsafe_code)]

use std::io;
use std::net::{Shutdown, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;
use socket2::SockRef;

use super::bufring::BufRing;
use super::{BareEchoConfig, BareEchoStop};

const OP_ACCEPT: u64 = 1 << 56;
const OP_RECV: u64 = 2 << 56;
const OP_SEND: u64 = 3 << 56;
const OP_WAKE: u64 = 4 << 56;
const OP_CANCEL: u64 = 5 << 56;
const OP_MASK: u64 = 0xff << 56;

/// A ring with `SINGLE_ISSUER | DEFER_TASKRUN | SUBMIT_ALL` and a completion queue four times
/// the submission queue, or without the flags on kernels that refuse them (`EINVAL`).
fn build_ring(entries: u32) -> io::Result<IoUring> {
    let cq = entries.saturating_mul(4).min(65536);
    match IoUring::builder()
        .setup_cqsize(cq)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_submit_all()
        .build(entries)
    {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder().setup_cqsize(cq).build(entries),
        r => r,
    }
}

struct Conn {
    fd: OwnedFd,
    /// Bytes of an incomplete request at the end of the stream so far.
    partial: usize,
    /// Reply bytes not yet sent.
    owed: usize,
    sending: bool,
    ops: u32,
    closing: bool,
    shut: bool,
}

struct Server {
    ring: IoUring,
    /// Declared after `ring`, so dropped after it; leaked if the kernel may still use it.
    bufs: BufRing,
    conns: Slab<Conn>,
    block: Vec<u8>,
    dirty: Vec<usize>,
    wake_buf: Box<[u8; 8]>,
    accept_armed: bool,
    wake_armed: bool,
    request_size: usize,
    reply_size: usize,
    drained: bool,
}

fn context(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("bare echo server: {what}: {e}"))
}

/// Serves on the calling thread until `stop` is signalled.
pub(super) fn run(listener: TcpListener, config: &BareEchoConfig, stop: &BareEchoStop) -> io::Result<()> {
    listener.set_nonblocking(false)?;
    let ring = build_ring(config.ring_entries).map_err(|e| context("io_uring setup", e))?;
    let bufs = BufRing::new(config.buffer_count, config.buffer_size, 0);
    bufs.register(&ring.submitter()).map_err(|e| context("buffer ring registration", e))?;
    // A block of whole replies, at least 64 KiB, that every send points into.
    let per_block = (65536 / config.reply_size).max(1);
    let mut s = Server {
        ring,
        bufs,
        conns: Slab::new(),
        block: vec![b'r'; per_block * config.reply_size],
        dirty: Vec::new(),
        wake_buf: Box::new([0; 8]),
        accept_armed: false,
        wake_armed: false,
        request_size: config.request_size,
        reply_size: config.reply_size,
        drained: true,
    };
    let result = s.serve(&listener, stop);
    s.drain();
    result
}

impl Server {
    fn push(&mut self, e: &squeue::Entry) {
        self.drained = false;
        // SAFETY: entries point at the reply block, the wake buffer or provided buffers, all
        // owned by this server and kept alive until every operation has completed (`drain`),
        // or leaked if that does not happen.
        while unsafe { self.ring.submission().push(e) }.is_err() {
            if self.ring.submit().is_err() {
                break;
            }
        }
    }

    fn arm(&mut self, listener: &TcpListener, stop: &BareEchoStop) {
        if !self.accept_armed {
            self.accept_armed = true;
            let e = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd())).build().user_data(OP_ACCEPT);
            self.push(&e);
        }
        if !self.wake_armed {
            self.wake_armed = true;
            let e = opcode::Read::new(types::Fd(stop.0.wake_rx.as_raw_fd()), self.wake_buf.as_mut_ptr(), 8)
                .build()
                .user_data(OP_WAKE);
            self.push(&e);
        }
    }

    fn serve(&mut self, listener: &TcpListener, stop: &BareEchoStop) -> io::Result<()> {
        let mut cqes: Vec<cqueue::Entry> = Vec::with_capacity(256);
        while !stop.stopped() {
            self.arm(listener, stop);
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY | libc::ETIME)) => {}
                Err(e) => return Err(context("io_uring_enter", e)),
            }
            self.reap(&mut cqes);
            self.flush();
        }
        Ok(())
    }

    fn reap(&mut self, cqes: &mut Vec<cqueue::Entry>) {
        loop {
            cqes.clear();
            cqes.extend(self.ring.completion().take(256));
            if cqes.is_empty() {
                break;
            }
            for cqe in cqes.iter() {
                self.handle(cqe);
            }
            self.bufs.publish();
        }
    }

    fn handle(&mut self, cqe: &cqueue::Entry) {
        let ud = cqe.user_data();
        let res = cqe.result();
        let more = cqueue::more(cqe.flags());
        let key = (ud & !OP_MASK) as usize;
        match ud & OP_MASK {
            OP_ACCEPT => {
                if !more {
                    self.accept_armed = false;
                }
                if res >= 0 {
                    // SAFETY: a successful accept returns a new descriptor nobody else owns.
                    let fd = unsafe { OwnedFd::from_raw_fd(res) };
                    let _ = SockRef::from(&fd).set_tcp_nodelay(true);
                    let raw = fd.as_raw_fd();
                    let conn = Conn { fd, partial: 0, owed: 0, sending: false, ops: 1, closing: false, shut: false };
                    let key = self.conns.insert(conn);
                    let e = opcode::RecvMulti::new(types::Fd(raw), self.bufs.group())
                        .build()
                        .user_data(OP_RECV | key as u64);
                    self.push(&e);
                }
            }
            OP_RECV => {
                let bid = cqueue::buffer_select(cqe.flags());
                if let Some(bid) = bid {
                    self.bufs.recycle(bid);
                }
                let (req, rep) = (self.request_size, self.reply_size);
                let Some(c) = self.conns.get_mut(key) else {
                    return;
                };
                if res > 0 {
                    let total = c.partial + res as usize;
                    c.partial = total % req;
                    c.owed += total / req * rep;
                    if c.owed > 0 && !c.sending {
                        self.dirty.push(key);
                    }
                } else if res != -libc::ENOBUFS {
                    c.closing = true;
                }
                if !more {
                    c.ops -= 1;
                    if c.closing {
                        self.dirty.push(key);
                    } else {
                        let e = opcode::RecvMulti::new(types::Fd(c.fd.as_raw_fd()), self.bufs.group())
                            .build()
                            .user_data(OP_RECV | key as u64);
                        c.ops += 1;
                        self.push(&e);
                    }
                }
            }
            OP_SEND => {
                let Some(c) = self.conns.get_mut(key) else {
                    return;
                };
                c.ops -= 1;
                c.sending = false;
                if res > 0 {
                    c.owed -= (res as usize).min(c.owed);
                } else {
                    c.closing = true;
                }
                self.dirty.push(key);
            }
            OP_WAKE => self.wake_armed = false,
            _ => {}
        }
    }

    /// Starts the sends owed and closes finished connections.
    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            if c.closing {
                if !c.shut {
                    c.shut = true;
                    let _ = SockRef::from(&c.fd).shutdown(Shutdown::Both);
                }
                if c.ops == 0 {
                    self.conns.remove(key);
                }
                continue;
            }
            if c.sending || c.owed == 0 {
                continue;
            }
            let len = c.owed.min(self.block.len());
            c.sending = true;
            c.ops += 1;
            let e = opcode::Send::new(types::Fd(c.fd.as_raw_fd()), self.block.as_ptr(), len as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(OP_SEND | key as u64);
            self.push(&e);
        }
        self.dirty = dirty;
    }

    /// Closes everything and waits (bounded) until the kernel has finished every operation.
    fn drain(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(c) = self.conns.get_mut(key) {
                c.closing = true;
                self.dirty.push(key);
            }
        }
        let cancel = |ud| opcode::AsyncCancel::new(ud).build().user_data(OP_CANCEL).flags(squeue::Flags::SKIP_SUCCESS);
        if self.accept_armed {
            self.push(&cancel(OP_ACCEPT));
        }
        if self.wake_armed {
            self.push(&cancel(OP_WAKE));
        }
        let limit = Instant::now() + Duration::from_secs(2);
        let mut cqes = Vec::with_capacity(256);
        loop {
            self.flush();
            if self.conns.is_empty() && !self.accept_armed && !self.wake_armed {
                self.drained = true;
                break;
            }
            if Instant::now() >= limit {
                break;
            }
            let ts = types::Timespec::from(Duration::from_millis(20));
            let _ = self.ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&ts));
            self.reap(&mut cqes);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.drained {
            // Operations may still be in flight: leak what they point at.
            self.bufs.leak();
            std::mem::forget(std::mem::take(&mut self.block));
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new([0; 8])));
        }
    }
}
