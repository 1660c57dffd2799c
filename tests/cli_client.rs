//! The client commands and the test client against a scripted registrar (a loopback listener in
//! the test) that sends what ours never does but RFC 5352 allows and rsplib's registrar sends:
//! a Handle Resolution Response without the overall policy (the pool's policy is Round Robin)
//! and an Endpoint Keep Alive without PE Identifier (addressed to every PE of the connection).

mod support;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rserpool::wire::asap::{self, Body, MessageType};
use support::{parse_resolution, vector, Client, PATIENCE};

/// A registrar on 127.0.0.1 that plays `script` with the first client that connects.
fn scripted<T: Send + 'static>(script: impl FnOnce(Client) -> T + Send + 'static) -> (String, JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    let player = std::thread::spawn(move || {
        let deadline = Instant::now() + PATIENCE;
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("no client connected: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        script(Client::over(stream))
    });
    (addr, player)
}

fn rserpool(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rserpool"));
    cmd.args(args);
    cmd
}

#[test]
fn resolve_takes_a_response_without_policy_as_round_robin() {
    for json in [false, true] {
        let (addr, player) = scripted(|mut pu| {
            let request = pu.recv();
            assert!(matches!(
                asap::parse(&request).unwrap().body(),
                Body::HandleResolution { pool_handle: b"echo", .. }
            ));
            pu.send(&vector("asap-handle-resolution-response-no-policy"));
        });
        let mut args = vec!["resolve", "--registrar", &addr, "echo"];
        if json {
            args.push("--json");
        }
        let out = rserpool(&args).output().unwrap();
        player.join().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        if json {
            let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(v["policy"]["policy"], "Round Robin", "{stdout}");
            assert_eq!(v["policy_implied"], true, "{stdout}");
            assert_eq!(v["pool_elements"][0]["pe_id"], "0x3c9e1f07", "{stdout}");
        } else {
            assert!(stdout.starts_with("pool \"echo\": 1 PE(s), policy Round Robin (not sent"), "{stdout}");
            assert!(stdout.contains("PE 0x3c9e1f07"), "{stdout}");
        }
    }
}

#[test]
fn the_test_client_takes_a_response_without_policy() {
    let pes = parse_resolution(&vector("asap-handle-resolution-response-no-policy")).unwrap();
    assert_eq!(pes.iter().map(|pe| pe.pe_id).collect::<Vec<_>>(), [0x3c9e1f07]);
}

#[test]
fn register_acks_its_pe_for_a_keep_alive_without_pe_identifier() {
    let (addr, player) = scripted(|mut registrar| {
        let m = registrar.recv();
        let Body::Registration { pool_handle: b"echo", pool_element } = *asap::parse(&m).unwrap().body() else {
            panic!("not a Registration for echo")
        };
        let pe_id = pool_element.pe_id();
        registrar.send(&support::handle_and_id(MessageType::RegistrationResponse, b"echo", pe_id));
        // Addressed to every PE of the connection (and naming another pool, as the vector does).
        registrar.send(&vector("asap-endpoint-keep-alive-no-pe-id"));
        match *asap::parse(&registrar.recv()).unwrap().body() {
            Body::EndpointKeepAliveAck { pool_handle, pe_id } => Some((pool_handle.to_vec(), pe_id)),
            _ => None,
        }
    });
    let mut child = rserpool(&[
        "register",
        "--registrar",
        &addr,
        "--pool",
        "echo",
        "--transport",
        "tcp:127.0.0.1:7000",
        "--id",
        "0a0b0c0d",
        "--lifetime",
        "-1",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let ack = player.join();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ack.unwrap(), Some((b"echo".to_vec(), 0x0a0b0c0d)), "a Keep Alive Ack for its own PE");
}
