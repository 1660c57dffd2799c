//! TLS (`docs/TLS.md`), with real registrar processes on loopback and throwaway certificates
//! that each test makes for itself (rcgen; no key is committed):
//!
//! - two registrars whose ENRP runs over mutual TLS share their PEs (accepted);
//! - a registrar whose certificate comes from another CA is refused by the mesh: its
//!   connection is closed, the refusal logged, and neither side learns the other's PEs;
//!   a client that presents no certificate, or speaks plaintext, is closed too;
//! - a pool element and a pool user of the client library register and resolve over ASAP with
//!   TLS; a client that trusts another CA fails its handshake cleanly.
//!
//! On both engines, as the other process tests. No test depends on timing: waits are bounded
//! polls that only guard against deadlock.

mod support;

use support::free_port;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rserpool::client::blocking::{PoolElement, PoolUser};
use rserpool::client::Timers;
use rserpool::tls::{Roots, TlsConnector};
use rserpool::wire::{Policy, PoolElementRepr, TransportProtocol, TransportRepr};
use support::{eventually, Registrar, TempDir, PATIENCE};

/// Short ENRP timers, so that peers dial and redial within a fraction of a second.
const TIMERS: &str = "[timers]
peer_heartbeat = 100
max_time_last_heard = 400
max_time_no_response = 200
mentor_discovery = 300
peer_reconnect = 100
";

/// A throwaway certificate authority whose files live in a temporary directory.
struct Ca {
    dir: TempDir,
    name: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// The files of one issued certificate.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("rserpool test CA {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let dir = TempDir::new(&format!("ca-{name}"));
        std::fs::write(dir.0.join("ca.pem"), cert.pem()).unwrap();
        Self { dir, name: name.into(), cert, key }
    }

    /// The CA's certificate file.
    fn pem(&self) -> PathBuf {
        self.dir.0.join("ca.pem")
    }

    /// Issues a certificate for 127.0.0.1 and localhost, good for both ends of a TLS
    /// connection (registrars are servers to the peers that dial them and clients to the
    /// peers they dial).
    fn issue(&self, who: &str) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, format!("{who} ({})", self.name));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let issued = Issued { cert: self.dir.0.join(format!("{who}.pem")), key: self.dir.0.join(format!("{who}.key")) };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }
}

fn skip(engine: &str) -> bool {
    if engine == "uring" && rserpool::runtime::io_uring_support().is_err() {
        eprintln!("skipping io_uring variant: io_uring unavailable");
        return true;
    }
    false
}

/// The `[tls]` section for a registrar presenting `me`, trusting `ca`, with ENRP over TLS on
/// `enrp_tls` and, when given, ASAP over TLS on `asap_tls`.
fn tls_section(me: &Issued, ca: &PathBuf, enrp_tls: u16, asap_tls: Option<&str>) -> String {
    let mut s = format!(
        "[tls]\ncertificate = {:?}\nprivate_key = {:?}\nca = {:?}\nenrp = \"127.0.0.1:{enrp_tls}\"\n",
        me.cert, me.key, ca
    );
    if let Some(a) = asap_tls {
        s.push_str(&format!("asap = \"{a}\"\n"));
    }
    s
}

/// A registrar whose ENRP runs over mutual TLS on port `enrp_tls`, dialling `peers` (their TLS
/// ports). Its plaintext ENRP address (`plain`) is configured but, with TLS on, not listened on.
fn start(engine: &str, id: &str, plain: u16, tls: &str, peers: &[u16]) -> Registrar {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let config = format!("peers = [{}]\n{tls}{TIMERS}", peers.join(", "));
    Registrar::start_as(engine, 2, id, &format!("127.0.0.1:{plain}"), &config)
}

fn pe(id: u32, port: u16) -> PoolElementRepr {
    support::pe(
        id,
        TransportRepr::new(TransportProtocol::Tcp, "127.0.0.1".parse().unwrap(), port),
        Policy::RoundRobin,
        -1,
    )
}

fn resolve(r: &Registrar, pool: &str) -> Vec<(u32, u32)> {
    r.resolve_homes(pool)
}

/// Whether `r` has logged a line containing `text`.
fn logged(r: &Registrar, text: &str) -> bool {
    r.log().iter().any(|l| l.contains(text))
}

fn mutual_tls_mesh_shares_pes(engine: &str) {
    if skip(engine) {
        return;
    }
    let ca = Ca::new("mesh");
    let (ta, tb) = (free_port(), free_port());
    let (plain_a, plain_b) = (free_port(), free_port());
    let a = start(engine, "aaaa0001", plain_a, &tls_section(&ca.issue("a"), &ca.pem(), ta, None), &[]);
    let b = start(engine, "bbbb0002", plain_b, &tls_section(&ca.issue("b"), &ca.pem(), tb, None), &[ta]);
    a.log_line("no plaintext ENRP listener");
    // With TLS on, the plaintext ENRP port is not listened on: no way around the certificates.
    assert!(TcpStream::connect(("127.0.0.1", plain_a)).is_err(), "plaintext ENRP must be closed");

    let mut at_a = a.client();
    let mut at_b = b.client();
    assert_eq!(at_a.register("pool-a", pe(0xa1, 7001)), (false, None));
    assert_eq!(at_b.register("pool-b", pe(0xb2, 7002)), (false, None));
    for r in [&a, &b] {
        eventually("both PEs resolve at both registrars, under their homes", || {
            resolve(r, "pool-a") == [(0xa1, 0xaaaa0001)] && resolve(r, "pool-b") == [(0xb2, 0xbbbb0002)]
        });
    }
    assert!(!logged(&a, "TLS handshake failed") && !logged(&b, "TLS handshake failed"));
    drop((at_a, at_b));
}

#[test]
fn mutual_tls_mesh_on_epoll() {
    mutual_tls_mesh_shares_pes("epoll");
}

#[test]
fn mutual_tls_mesh_on_io_uring() {
    mutual_tls_mesh_shares_pes("uring");
}

fn wrong_certificates_are_refused(engine: &str) {
    if skip(engine) {
        return;
    }
    let mesh = Ca::new("mesh");
    let rogue = Ca::new("rogue");
    let (ta, tc) = (free_port(), free_port());
    let a = start(engine, "aaaa0001", free_port(), &tls_section(&mesh.issue("a"), &mesh.pem(), ta, None), &[]);
    // C trusts the mesh's CA (so it accepts A's certificate) but presents one from another CA.
    let c = start(engine, "cccc0003", free_port(), &tls_section(&rogue.issue("c"), &mesh.pem(), tc, None), &[ta]);
    let mut at_a = a.client();
    let mut at_c = c.client();
    assert_eq!(at_a.register("pool-a", pe(0xa1, 7001)), (false, None));
    assert_eq!(at_c.register("pool-c", pe(0xc3, 7003)), (false, None));
    // C keeps dialling A, and A refuses it every time (the refusal is logged, rate-limited).
    eventually("A refuses C's certificate", || logged(&a, "TLS handshake failed"));
    // A refusal closes the connection before either registrar hears of the other, so neither
    // has learnt anything: the PEs registered before the first attempt are still unknown.
    assert_eq!(resolve(&a, "pool-c"), []);
    assert_eq!(resolve(&c, "pool-a"), []);
    assert!(!logged(&a, "new ENRP peer") && !logged(&c, "new ENRP peer"));

    // A client with no certificate at all is refused too, and so is plaintext ENRP on the TLS
    // port: each connection is closed, and A goes on serving.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(Arc::new(roots(&mesh)))
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), "127.0.0.1".try_into().unwrap()).unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", ta)).unwrap();
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let refused = tls.write_all(b"hello").and_then(|()| tls.read(&mut [0; 64]));
    assert!(!matches!(refused, Ok(n) if n > 0), "a client without a certificate got data: {refused:?}");
    assert!(closed(TcpStream::connect(("127.0.0.1", ta)).unwrap(), &support::registration("x", pe(1, 1))));
    assert_eq!(resolve(&a, "pool-a"), [(0xa1, 0xaaaa0001)], "A still serves");
    drop((at_a, at_c));
}

/// Whether the far end closes `sock` after it is sent `bytes` (reads until EOF or error).
fn closed(mut sock: TcpStream, bytes: &[u8]) -> bool {
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let _ = sock.write_all(bytes);
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn roots(ca: &Ca) -> rustls::RootCertStore {
    let mut store = rustls::RootCertStore::empty();
    store.add(ca.cert.der().clone()).unwrap();
    store
}

#[test]
fn wrong_certificates_are_refused_on_epoll() {
    wrong_certificates_are_refused("epoll");
}

#[test]
fn wrong_certificates_are_refused_on_io_uring() {
    wrong_certificates_are_refused("uring");
}

/// The address of `r`'s ASAP over TLS listener, from its log.
fn asap_tls_addr(r: &Registrar) -> std::net::SocketAddr {
    let line = r.log_line("ASAP over TLS on ");
    line.split("ASAP over TLS on ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

fn connector(ca: &Ca) -> TlsConnector {
    TlsConnector::new(rserpool::tls::client(&Roots::load(&ca.pem()).unwrap()).unwrap())
}

fn asap_over_tls(engine: &str) {
    if skip(engine) {
        return;
    }
    let ca = Ca::new("asap");
    let me = ca.issue("registrar");
    let tls = format!("[tls]\ncertificate = {:?}\nprivate_key = {:?}\nasap = \"127.0.0.1:0\"\n", me.cert, me.key);
    let r = Registrar::start(engine, 2, &tls);
    let secure = asap_tls_addr(&r);
    assert_ne!(secure, r.addr, "a listener of its own");

    // A pool element registers and a pool user resolves, both over TLS.
    let mut pe = PoolElement::builder("secure").registrar(secure).tls(connector(&ca)).start().unwrap();
    let pe_id = pe.wait_registered(PATIENCE).expect("registered over TLS");
    let pu = PoolUser::builder().registrar(secure).tls(connector(&ca)).start().unwrap();
    let pes = pu.resolve_fresh(b"secure", PATIENCE).expect("resolved over TLS");
    assert_eq!(pes.iter().map(|p| p.pe_id).collect::<Vec<_>>(), [pe_id]);
    assert_eq!(pu.registrar(), Some(secure));
    // The same handlespace behind both listeners.
    assert_eq!(r.client().resolve("secure", Some(4)).unwrap().len(), 1);

    // A client that trusts another CA refuses the registrar's certificate: its handshake fails,
    // its resolution fails (it finds no registrar it trusts), and the registrar, which hears the
    // client's alert, closes that connection alone and goes on serving.
    let other = Ca::new("other");
    let timers = Timers { connect_timeout: 500, t5_server_hunt: 1_000, hunt_retry: 100, ..Timers::default() };
    let doubter = PoolUser::builder().registrar(secure).tls(connector(&other)).timers(timers).start().unwrap();
    assert!(doubter.resolve_fresh(b"secure", PATIENCE).is_err(), "no resolution from an untrusted registrar");
    eventually("the registrar logs the failed handshake", || logged(&r, "TLS handshake failed"));
    assert_eq!(pu.resolve_fresh(b"secure", PATIENCE).expect("still served").len(), 1);
    // A plaintext client on the TLS port gets its connection closed, not an answer.
    assert!(closed(TcpStream::connect(secure).unwrap(), &support::resolution("secure", None)));
    drop(pe);
}

#[test]
fn asap_over_tls_on_epoll() {
    asap_over_tls("epoll");
}

#[test]
fn asap_over_tls_on_io_uring() {
    asap_over_tls("uring");
}
