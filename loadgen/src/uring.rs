//! The client's io_uring transport: one ring per client thread drives all its connections, with
//! every send of a loop iteration and the wait for answers in one `io_uring_enter`.
//!
//! Per connection there is at most one receive (into the connection's own buffer, at the end of
//! the bytes not consumed yet) and one send (of the connection's in-flight buffer) at a time.
//! New requests go into a second buffer, `out`, which becomes the in-flight one when the
//! previous send has completed. The kernel only ever sees memory that this module owns and does
//! not touch until the operation's completion is reaped; if that cannot be waited for at drop,
//! the memory is leaked rather than freed.
//!
//! The only `unsafe` of the client (the bare echo server has its own, in `bare_echo/`):
//! pushing submission entries.

#![deny(unsafe_op_in_unsafe_fn)]
#![allow(unsafe_code)]

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use crate::client::{Handler, Io};

const RECV: u64 = 1 << 32;
const SEND: u64 = 2 << 32;

struct Conn {
    stream: TcpStream,
    /// Received bytes not consumed yet are `rbuf[..rlen]`; a receive writes after them.
    rbuf: Box<[u8]>,
    rlen: usize,
    /// Requests queued, not yet handed to the kernel.
    out: Vec<u8>,
    /// Bytes of the send in flight (`flight[flight_off..]` not acknowledged yet).
    flight: Vec<u8>,
    flight_off: usize,
    recv_armed: bool,
    sending: bool,
    dirty: bool,
    dead: bool,
}

/// io_uring transport of one client thread.
pub struct UringIo {
    ring: IoUring,
    conns: Vec<Conn>,
    dirty: Vec<usize>,
    cqes: Vec<(u64, i32)>,
    in_flight: usize,
    enters: u64,
}

impl UringIo {
    /// Takes over `streams` (connected, blocking), with a receive buffer of `rbuf` bytes each,
    /// and arms a receive on every one.
    pub fn new(streams: Vec<TcpStream>, rbuf: usize) -> io::Result<Self> {
        let entries = (2 * streams.len() + 64).next_power_of_two() as u32;
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries)
            .or_else(|_| IoUring::builder().build(entries))?;
        let mut conns = Vec::with_capacity(streams.len());
        for stream in streams {
            stream.set_nonblocking(false)?;
            stream.set_nodelay(true)?;
            conns.push(Conn {
                stream,
                rbuf: vec![0; rbuf.max(4096)].into_boxed_slice(),
                rlen: 0,
                out: Vec::with_capacity(4096),
                flight: Vec::with_capacity(4096),
                flight_off: 0,
                recv_armed: false,
                sending: false,
                dirty: false,
                dead: false,
            });
        }
        let mut me = Self { ring, conns, dirty: Vec::new(), cqes: Vec::with_capacity(1024), in_flight: 0, enters: 0 };
        for c in 0..me.conns.len() {
            me.arm_recv(c)?;
        }
        Ok(me)
    }

    fn push(&mut self, e: &io_uring::squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built here points into a connection's `rbuf` (after `rlen`) or
            // its `flight` buffer. Neither is read, written, resized or freed while the operation
            // is in flight: `recv_armed` / `sending` guard them until the completion is reaped,
            // and `Drop` leaks the connections if some operation could not be waited for. The
            // file descriptor stays open for as long as the connection exists.
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                self.in_flight += 1;
                return Ok(());
            }
            self.enters += 1;
            self.ring.submit()?;
        }
    }

    fn arm_recv(&mut self, c: usize) -> io::Result<()> {
        let conn = &mut self.conns[c];
        if conn.recv_armed || conn.dead {
            return Ok(());
        }
        let space = &mut conn.rbuf[conn.rlen..];
        let e = opcode::Recv::new(types::Fd(conn.stream.as_raw_fd()), space.as_mut_ptr(), space.len() as u32)
            .build()
            .user_data(RECV | c as u64);
        conn.recv_armed = true;
        self.push(&e)
    }

    fn send_flight(&mut self, c: usize) -> io::Result<()> {
        let conn = &mut self.conns[c];
        let rest = &conn.flight[conn.flight_off..];
        let e = opcode::Send::new(types::Fd(conn.stream.as_raw_fd()), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(SEND | c as u64);
        conn.sending = true;
        self.push(&e)
    }

    fn mark_dirty(&mut self, c: usize) {
        let conn = &mut self.conns[c];
        if !conn.dirty && !conn.out.is_empty() {
            conn.dirty = true;
            self.dirty.push(c);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &c in &dirty {
            let conn = &mut self.conns[c];
            conn.dirty = false;
            if conn.dead || conn.sending || conn.out.is_empty() {
                continue;
            }
            std::mem::swap(&mut conn.out, &mut conn.flight);
            conn.out.clear();
            conn.flight_off = 0;
            self.send_flight(c)?;
        }
        dirty.clear();
        self.dirty = dirty;
        Ok(())
    }

    fn kill(&mut self, c: usize, h: &mut impl Handler) {
        let conn = &mut self.conns[c];
        if !conn.dead {
            conn.dead = true;
            let _ = conn.stream.shutdown(Shutdown::Both);
            h.closed(c);
        }
    }

    fn on_recv(&mut self, c: usize, res: i32, h: &mut impl Handler) -> io::Result<()> {
        let conn = &mut self.conns[c];
        conn.recv_armed = false;
        if conn.dead {
            return Ok(());
        }
        if res > 0 {
            conn.rlen += res as usize;
            let used = h.data(c, &conn.rbuf[..conn.rlen], &mut conn.out).min(conn.rlen);
            conn.rbuf.copy_within(used..conn.rlen, 0);
            conn.rlen -= used;
            if conn.rlen == conn.rbuf.len() {
                // An answer larger than the whole buffer cannot be framed here.
                self.kill(c, h);
                return Ok(());
            }
            self.mark_dirty(c);
            self.arm_recv(c)
        } else if res == -libc::EINTR || res == -libc::EAGAIN || res == -libc::ENOBUFS {
            self.arm_recv(c)
        } else {
            self.kill(c, h);
            Ok(())
        }
    }

    fn on_send(&mut self, c: usize, res: i32, h: &mut impl Handler) -> io::Result<()> {
        let conn = &mut self.conns[c];
        conn.sending = false;
        if conn.dead {
            return Ok(());
        }
        if res >= 0 {
            conn.flight_off += res as usize;
            if conn.flight_off < conn.flight.len() {
                return self.send_flight(c);
            }
            conn.flight.clear();
            conn.flight_off = 0;
            self.mark_dirty(c);
            Ok(())
        } else if res == -libc::EINTR || res == -libc::EAGAIN {
            self.send_flight(c)
        } else {
            self.kill(c, h);
            Ok(())
        }
    }
}

impl Io for UringIo {
    fn connections(&self) -> usize {
        self.conns.len()
    }

    fn out(&mut self, c: usize) -> &mut Vec<u8> {
        let conn = &mut self.conns[c];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(c);
        }
        &mut self.conns[c].out
    }

    fn is_dead(&self, c: usize) -> bool {
        self.conns[c].dead
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.flush()?;
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        self.enters += 1;
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn process(&mut self, h: &mut impl Handler) -> io::Result<()> {
        let mut cqes = std::mem::take(&mut self.cqes);
        loop {
            cqes.clear();
            cqes.extend(self.ring.completion().map(|e| (e.user_data(), e.result())));
            if cqes.is_empty() {
                break;
            }
            for &(ud, res) in &cqes {
                self.in_flight -= 1;
                let c = (ud & 0xffff_ffff) as usize;
                if ud & RECV != 0 {
                    self.on_recv(c, res, h)?;
                } else if ud & SEND != 0 {
                    self.on_send(c, res, h)?;
                }
            }
        }
        self.cqes = cqes;
        Ok(())
    }

    fn syscalls(&self) -> u64 {
        self.enters
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        for conn in &self.conns {
            let _ = conn.stream.shutdown(Shutdown::Both);
        }
        let limit = Instant::now() + Duration::from_secs(2);
        while self.in_flight > 0 && Instant::now() < limit {
            let ts = types::Timespec::from(Duration::from_millis(20));
            let _ = self.ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&ts));
            let n = self.ring.completion().count();
            self.in_flight = self.in_flight.saturating_sub(n);
        }
        if self.in_flight > 0 {
            // The kernel may still write into these buffers: never free them.
            std::mem::forget(std::mem::take(&mut self.conns));
        }
    }
}
