//! The bare io_uring request/reply server: counts whole requests in the stream (pipelined or
//! split) and answers each with one reply of the configured size.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use loadgen::bare_echo;
use rserpool::runtime;

fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap();
    v
}

#[test]
fn replies_per_complete_request() {
    if let Err(reason) = runtime::io_uring_support() {
        eprintln!("skipping: {reason}");
        return;
    }
    let cfg = bare_echo::BareEchoConfig { request_size: 48, reply_size: 256, ..Default::default() };
    let server = bare_echo::spawn(cfg).unwrap();
    let mut c = TcpStream::connect(server.local_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    c.set_nodelay(true).unwrap();

    // Three pipelined requests and half of a fourth.
    c.write_all(&[1u8; 48 * 3 + 24]).unwrap();
    assert_eq!(read_n(&mut c, 256 * 3), vec![b'r'; 256 * 3]);
    // The rest of the fourth, one byte at a time.
    for _ in 0..24 {
        c.write_all(&[2]).unwrap();
    }
    assert_eq!(read_n(&mut c, 256), vec![b'r'; 256]);

    // Many at once: more reply bytes than one send carries.
    c.write_all(&vec![3u8; 48 * 1000]).unwrap();
    assert_eq!(read_n(&mut c, 256 * 1000).len(), 256_000);

    // Several connections.
    let mut others: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(server.local_addr()).unwrap()).collect();
    for o in &mut others {
        o.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        o.write_all(&[0u8; 96]).unwrap();
    }
    for o in &mut others {
        assert_eq!(read_n(o, 512).len(), 512);
    }

    server.stop_handle().stop();
    server.join().unwrap();
    let mut b = [0u8; 1];
    assert_eq!(c.read(&mut b).unwrap_or(0), 0, "connection closed at stop");
}
