//! The client's portable transport (mio / epoll, edge-triggered), for kernels or containers
//! where io_uring is not allowed, and to compare the client's own cost: one `read` per readable
//! connection and one `write` per connection with queued requests per loop iteration, plus one
//! `epoll_wait`.

use std::io::{self, Read, Write};
use std::net::TcpStream as StdStream;
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::client::{Handler, Io};

struct Conn {
    stream: TcpStream,
    rbuf: Box<[u8]>,
    rlen: usize,
    out: Vec<u8>,
    readable: bool,
    dirty: bool,
    dead: bool,
}

/// epoll transport of one client thread.
pub struct EpollIo {
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    dirty: Vec<usize>,
    ready: Vec<usize>,
    syscalls: u64,
}

impl EpollIo {
    /// Takes over `streams` (connected), with a receive buffer of `rbuf` bytes each.
    pub fn new(streams: Vec<StdStream>, rbuf: usize) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut conns = Vec::with_capacity(streams.len());
        for (i, s) in streams.into_iter().enumerate() {
            s.set_nonblocking(true)?;
            s.set_nodelay(true)?;
            let mut stream = TcpStream::from_std(s);
            poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)?;
            conns.push(Conn {
                stream,
                rbuf: vec![0; rbuf.max(4096)].into_boxed_slice(),
                rlen: 0,
                out: Vec::with_capacity(4096),
                readable: true,
                dirty: false,
                dead: false,
            });
        }
        let ready = (0..conns.len()).collect();
        Ok(Self { poll, events: Events::with_capacity(1024), conns, dirty: Vec::new(), ready, syscalls: 0 })
    }

    fn kill(&mut self, c: usize, h: &mut impl Handler) {
        if !self.conns[c].dead {
            self.conns[c].dead = true;
            h.closed(c);
        }
    }

    /// Writes what `c` has queued; false if the connection failed.
    fn write_out(&mut self, c: usize) -> bool {
        let conn = &mut self.conns[c];
        let mut sent = 0;
        while sent < conn.out.len() {
            self.syscalls += 1;
            match conn.stream.write(&conn.out[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        conn.out.drain(..sent);
        true
    }
}

impl Io for EpollIo {
    fn connections(&self) -> usize {
        self.conns.len()
    }

    fn out(&mut self, c: usize) -> &mut Vec<u8> {
        if !self.conns[c].dirty {
            self.conns[c].dirty = true;
            self.dirty.push(c);
        }
        &mut self.conns[c].out
    }

    fn is_dead(&self, c: usize) -> bool {
        self.conns[c].dead
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        let dirty = std::mem::take(&mut self.dirty);
        for &c in &dirty {
            self.conns[c].dirty = false;
            if !self.conns[c].dead && !self.write_out(c) {
                // Reported as closed on the next read.
                self.conns[c].readable = true;
                self.ready.push(c);
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
        let timeout = if self.ready.is_empty() { timeout } else { Duration::ZERO };
        self.syscalls += 1;
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for ev in self.events.iter() {
            let c = ev.token().0;
            let conn = &mut self.conns[c];
            if (ev.is_readable() || ev.is_read_closed() || ev.is_error()) && !conn.readable {
                conn.readable = true;
                self.ready.push(c);
            }
            if ev.is_writable() && !conn.out.is_empty() && !conn.dirty {
                conn.dirty = true;
                self.dirty.push(c);
            }
        }
        Ok(())
    }

    fn process(&mut self, h: &mut impl Handler) -> io::Result<()> {
        let ready = std::mem::take(&mut self.ready);
        for &c in &ready {
            let conn = &mut self.conns[c];
            conn.readable = false;
            if conn.dead {
                continue;
            }
            loop {
                let conn = &mut self.conns[c];
                let space = conn.rbuf.len() - conn.rlen;
                if space == 0 {
                    self.kill(c, h);
                    break;
                }
                self.syscalls += 1;
                match conn.stream.read(&mut conn.rbuf[conn.rlen..]) {
                    Ok(0) => {
                        self.kill(c, h);
                        break;
                    }
                    Ok(n) => {
                        conn.rlen += n;
                        let used = h.data(c, &conn.rbuf[..conn.rlen], &mut conn.out).min(conn.rlen);
                        conn.rbuf.copy_within(used..conn.rlen, 0);
                        conn.rlen -= used;
                        if !conn.out.is_empty() && !conn.dirty {
                            conn.dirty = true;
                            self.dirty.push(c);
                        }
                        // A short read emptied the socket; the next arrival raises a new edge.
                        if n < space {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.kill(c, h);
                        break;
                    }
                }
            }
        }
        let mut ready = ready;
        ready.clear();
        self.ready = ready;
        Ok(())
    }

    fn syscalls(&self) -> u64 {
        self.syscalls
    }
}
