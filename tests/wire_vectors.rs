//! The codec against the project's test vectors (`shared/rserpool/vectors/`, vendored in
//! `tests/vectors/`): every valid vector parses and re-emits byte for byte; every bad vector
//! gets the handling its INDEX.md note prescribes.

use std::path::PathBuf;

#[path = "support/vectors.rs"]
mod vectors;

use vectors::{hex, read_hex, vector, vectors_dir};

use rserpool::wire::framer::Frame;
use rserpool::wire::{
    self, asap, enrp, CauseCode, CauseInfo, Disposition, ErrorKind, Framer, MessageRepr, ParamRepr, ParamType,
    Protocol, Writer,
};

fn protocol_of(name: &str) -> Protocol {
    if name.starts_with("enrp-") {
        Protocol::Enrp
    } else {
        Protocol::Asap
    }
}

fn hex_files(dir: PathBuf) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "hex"))
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), read_hex(&p)))
        .collect();
    out.sort();
    out
}

/// The vendored copy must not drift from the shared originals when those are present.
#[test]
fn vendored_vectors_match_shared() {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/rserpool/vectors");
    if !shared.exists() {
        eprintln!("shared vectors not present; checking the vendored copy only");
        return;
    }
    for sub in ["", "bad"] {
        let ours = hex_files(vectors_dir().join(sub));
        let theirs = hex_files(shared.join(sub));
        assert_eq!(ours, theirs, "tests/vectors/{sub} differs from shared/rserpool/vectors/{sub}");
    }
}

#[test]
fn every_valid_vector_round_trips_byte_for_byte() {
    let all = hex_files(vectors_dir());
    assert_eq!(all.len(), 50, "INDEX.md lists 50 valid vectors");
    for (name, bytes) in all {
        let protocol = protocol_of(&name);
        let repr = MessageRepr::parse(&bytes, protocol).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(repr.to_bytes().unwrap(), bytes, "{name}: re-emitted bytes differ");
        // The typed view agrees on the type, and the Repr of the re-emitted bytes is the same.
        match protocol {
            Protocol::Asap => {
                assert!(asap::MessageType::from_u8(asap::parse(&bytes).unwrap().message_type()).is_some())
            }
            Protocol::Enrp => {
                assert!(enrp::MessageType::from_u8(enrp::parse(&bytes).unwrap().message_type()).is_some())
            }
        }
        assert_eq!(MessageRepr::parse(&repr.to_bytes().unwrap(), protocol).unwrap(), repr, "{name}");
    }
}

#[test]
fn every_message_type_is_covered_by_the_vectors() {
    let mut asap_seen = [false; 14];
    let mut enrp_seen = [false; 10];
    for (name, bytes) in hex_files(vectors_dir()) {
        match protocol_of(&name) {
            Protocol::Asap => asap_seen[usize::from(bytes[0]) - 1] = true,
            Protocol::Enrp => enrp_seen[usize::from(bytes[0]) - 1] = true,
        }
    }
    assert!(asap_seen.iter().all(|&s| s) && enrp_seen.iter().all(|&s| s));
}

fn parse(name: &str) -> Result<(), wire::Error> {
    let bytes = vector(name);
    match protocol_of(name) {
        Protocol::Asap => asap::parse(&bytes).map(|_| ()),
        Protocol::Enrp => enrp::parse(&bytes).map(|_| ()),
    }
}

/// Expected outcome of decoding a bad vector as one whole message.
enum Expect {
    Close,
    Discard,
    Reject0,
    RejectQuoting(&'static str),
    RejectEmpty(ParamType),
    Report(CauseCode, &'static str),
}

#[test]
fn every_bad_vector_is_handled_as_its_note_says() {
    use Expect::*;
    let cases: &[(&str, u32, Expect)] = &[
        ("asap-bad-truncated-header", 0, Close),
        ("asap-bad-length-lt-4", 2, Close),
        ("asap-bad-length-exceeds-data", 2, Close),
        ("asap-bad-trailing-garbage", 2, Close),
        ("asap-bad-param-length-lt-4", 12, Reject0),
        ("asap-bad-param-overrun", 4, Reject0),
        ("asap-bad-ipv4-length-7", 36, Reject0),
        ("enrp-bad-pe-checksum-length-4", 12, Reject0),
        ("asap-bad-pool-element-too-short", 12, Reject0),
        ("asap-bad-pool-element-no-policy", 44, Reject0),
        ("asap-bad-policy-value-count", 44, Reject0),
        ("asap-bad-unknown-message-type", 0, Report(CauseCode::UNRECOGNIZED_MESSAGE, "")),
        ("asap-bad-unknown-param-stop", 12, Discard),
        ("asap-bad-unknown-param-stop-report", 12, Report(CauseCode::UNRECOGNIZED_PARAMETER, "4abc0008a1b2c3d4")),
        ("asap-bad-registration-no-pool-handle", 48, RejectEmpty(ParamType::POOL_HANDLE)),
        ("enrp-bad-short-message", 0, Reject0),
        ("enrp-bad-handle-update-action-7", 12, Reject0),
        ("asap-bad-nested-pool-element", 56, RejectQuoting("nested")),
        ("asap-bad-tcp-transport-no-address", 28, RejectQuoting("000500081f410000")),
        ("enrp-bad-unknown-message-type", 0, Report(CauseCode::UNRECOGNIZED_MESSAGE, "")),
        ("asap-bad-pe-identifier-length-10", 12, Reject0),
    ];
    assert_eq!(cases.len(), hex_files(vectors_dir().join("bad")).len(), "one case per bad vector");
    for (name, offset, expect) in cases {
        let bytes = vector(name);
        let err = parse(name).expect_err(name);
        assert_eq!(err.offset, *offset, "{name}: offset ({err})");
        let d = err.disposition();
        let quoted = |info: &CauseInfo| match info {
            CauseInfo::Quote(r) => bytes[r.clone()].to_vec(),
            other => panic!("{name}: expected a quote, got {other:?}"),
        };
        match expect {
            Close => assert_eq!(d, Disposition::Close, "{name}"),
            Discard => assert_eq!(d, Disposition::Discard, "{name}"),
            Reject0 => assert_eq!(
                d,
                Disposition::Reject { cause: CauseCode::UNSPECIFIED, info: CauseInfo::None },
                "{name}: {err}"
            ),
            RejectEmpty(t) => {
                assert_eq!(
                    d,
                    Disposition::Reject { cause: CauseCode::INVALID_VALUES, info: CauseInfo::EmptyParam(*t) },
                    "{name}"
                )
            }
            RejectQuoting(what) => {
                let Disposition::Reject { cause, info } = &d else { panic!("{name}: {d:?}") };
                assert_eq!(*cause, CauseCode::INVALID_VALUES, "{name}");
                let q = quoted(info);
                if *what == "nested" {
                    // The nested Pool Element TLV, from its offset to the end of the outer one.
                    assert_eq!(&q[..2], &[0x00, 0x0a], "{name}");
                    assert_eq!(q.len(), usize::from(u16::from_be_bytes([q[2], q[3]])), "{name}");
                } else {
                    assert_eq!(q, hex(what), "{name}");
                }
            }
            Report(cause, what) => {
                let Disposition::Report { cause: c, info } = &d else { panic!("{name}: {d:?}") };
                assert_eq!(c, cause, "{name}");
                let q = quoted(info);
                if what.is_empty() {
                    assert_eq!(q, bytes, "{name}: quotes the whole message");
                } else {
                    assert_eq!(q, hex(what), "{name}");
                }
            }
        }
        // The error says which message it was and prints without panicking.
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn bad_vectors_on_a_stream() {
    let framer = Framer::new(Protocol::Asap, 32 * 1024);
    // Incomplete header or message: wait for more.
    assert_eq!(framer.frame(&vector("asap-bad-truncated-header")).unwrap(), Frame::Incomplete { need: 1 });
    assert_eq!(framer.frame(&vector("asap-bad-length-exceeds-data")).unwrap(), Frame::Incomplete { need: 8 });
    // Length below 4: the stream cannot be framed.
    let e = framer.frame(&vector("asap-bad-length-lt-4")).unwrap_err();
    assert_eq!(e.disposition(), Disposition::Close);
    // Trailing garbage: a valid Deregistration, then a header claiming 47806 bytes.
    let bytes = vector("asap-bad-trailing-garbage");
    let mut frames = framer.frames(&bytes);
    let first = frames.next().unwrap().unwrap();
    assert!(matches!(asap::parse(first).unwrap().body(), asap::Body::Deregistration { pe_id: 0x3c9e1f07, .. }));
    let e = frames.next().unwrap().unwrap_err();
    assert!(matches!(e.kind, ErrorKind::LengthTooLarge { length: 0xbabe, .. }));
    assert_eq!(e.disposition(), Disposition::Close);
    assert!(frames.next().is_none());
    assert_eq!(frames.consumed(), 20);
}

#[test]
fn skip_and_report_parameters_are_processed_and_reported() {
    let bytes = vector("asap-deregistration-unknown-skip-report");
    let m = asap::parse(&bytes).unwrap();
    assert!(matches!(m.body(), asap::Body::Deregistration { pool_handle: b"echo", pe_id: 0x3c9e1f07 }));
    let mut reported = Vec::new();
    m.for_each_report(|p| reported.push(p.param_type()));
    assert_eq!(reported, [ParamType(0xc0de)]);

    let bytes = vector("asap-handle-resolution-unknown-skip");
    let m = asap::parse(&bytes).unwrap();
    assert!(!m.has_reports());
    assert!(matches!(m.body(), asap::Body::HandleResolution { pool_handle: b"db.shard-07", items: Some(0) }));
}

#[test]
fn typed_views_read_the_fields_index_md_lists() {
    let bytes = vector("asap-registration");
    let m = asap::parse(&bytes).unwrap();
    let asap::Body::Registration { pool_handle, pool_element } = m.body() else { panic!() };
    assert_eq!(*pool_handle, b"echo");
    assert_eq!(pool_element.pe_id(), 0x3c9e1f07);
    assert_eq!(pool_element.home_registrar(), 0x11223344);
    assert_eq!(pool_element.registration_life(), 300000);
    let ut = pool_element.user_transport();
    assert_eq!(ut.protocol(), wire::TransportProtocol::Sctp);
    assert_eq!(ut.port(), 7);
    let addrs: Vec<String> = ut.addresses().map(|a| a.to_string()).collect();
    assert_eq!(addrs, ["192.0.2.10", "198.51.100.10", "2001:db8::10"]);
    assert_eq!(pool_element.policy(), wire::PolicyParam::Known(wire::Policy::WeightedRoundRobin { weight: 7 }));

    let bytes = vector("asap-handle-resolution-response-16pe");
    let m = asap::parse(&bytes).unwrap();
    let asap::Body::HandleResolutionResponse { resolution: asap::Resolution::Found { pool_elements, .. }, .. } =
        m.body()
    else {
        panic!()
    };
    let ids: Vec<u32> = pool_elements.clone().map(|pe| pe.pe_id()).collect();
    assert_eq!(ids.len(), 16);
    assert_eq!(ids[0], 0x2a7f3b10);
    assert_eq!(ids[15], 0x658cd240);

    let bytes = vector("enrp-presence-reply-required");
    let m = enrp::parse(&bytes).unwrap();
    assert_eq!((m.body().sender, m.body().receiver), (0x11223344, 0x5a6b7c8d));
    let enrp::Kind::Presence { reply_required, checksum, server_information } = &m.body().kind else { panic!() };
    assert!(*reply_required);
    assert_eq!(*checksum, 0x0ef2);
    assert_eq!(server_information.server_id(), 0x11223344);

    let bytes = vector("enrp-handle-table-response-two-pools-more");
    let m = enrp::parse(&bytes).unwrap();
    let enrp::Kind::HandleTableResponse { more: true, rejected: false, entries } = &m.body().kind else { panic!() };
    let groups: Vec<(Vec<u8>, usize)> = entries.clone().map(|(h, pes)| (h.to_vec(), pes.count())).collect();
    assert_eq!(groups, [(b"echo".to_vec(), 2), (b"db.shard-07".to_vec(), 1)]);
}

/// The two vectors that leave an optional parameter out parse with the meaning INDEX.md gives
/// (they round-trip byte for byte in `every_valid_vector_round_trips_byte_for_byte`).
#[test]
fn optional_parameters_may_be_left_out() {
    // A Handle Resolution Response without the overall policy: the pool's policy is Round Robin.
    let bytes = vector("asap-handle-resolution-response-no-policy");
    let m = asap::parse(&bytes).unwrap();
    let asap::Body::HandleResolutionResponse { pool_handle: b"echo", resolution } = m.body() else { panic!() };
    let asap::Resolution::Found { policy: None, pool_elements } = resolution else { panic!("{resolution:?}") };
    assert_eq!(resolution.pool_policy(), Some(wire::PolicyParam::Known(wire::Policy::RoundRobin)));
    let pes: Vec<_> = pool_elements.clone().map(|pe| pe.to_repr()).collect();
    assert_eq!(pes.len(), 1);
    let pe = &pes[0];
    assert_eq!((pe.pe_id, pe.home_registrar, pe.registration_life), (0x3c9e1f07, 0x11223344, 300000));
    let sctp = wire::TransportRepr::new(wire::TransportProtocol::Sctp, "192.0.2.1".parse().unwrap(), 7000);
    assert_eq!(pe.user_transport, sctp, "SCTP port 7000 (data only) on 192.0.2.1");
    assert_eq!(pe.policy, wire::PolicyRepr::Known(wire::Policy::RoundRobin));
    assert_eq!(pe.asap_transport, None);

    // An Endpoint Keep Alive without PE Identifier: it addresses every PE of the connection.
    let bytes = vector("asap-endpoint-keep-alive-no-pe-id");
    let m = asap::parse(&bytes).unwrap();
    assert!(matches!(
        m.body(),
        asap::Body::EndpointKeepAlive { home: false, server_id: 0x5a6b7c8d, pool_handle: b"db.shard-07", pe_id: None }
    ));
    // The vector with the PE Identifier differs only by it.
    let bytes = vector("asap-endpoint-keep-alive");
    let m = asap::parse(&bytes).unwrap();
    assert!(matches!(m.body(), asap::Body::EndpointKeepAlive { pe_id: Some(0x1f2e3d4c), .. }));
}

/// The encoding of one parameter, without its padding.
fn encoded(p: &ParamRepr) -> Vec<u8> {
    let mut b = Vec::new();
    p.emit(&mut Writer::new(&mut b));
    b.truncate(usize::from(u16::from_be_bytes([b[2], b[3]])));
    b
}

/// Whether messages of this type may carry parameters of this type more than once.
fn may_repeat(protocol: Protocol, message_type: u8, p: &ParamRepr) -> bool {
    use asap::MessageType as A;
    use enrp::MessageType as E;
    let (asap_type, enrp_type) = (A::from_u8(message_type), enrp::MessageType::from_u8(message_type));
    match (protocol, p) {
        (Protocol::Asap, ParamRepr::PoolElement(_)) => {
            matches!(asap_type, Some(A::HandleResolutionResponse | A::BusinessCard))
        }
        (Protocol::Asap, ParamRepr::Transport(_)) => asap_type == Some(A::ServerAnnounce),
        (Protocol::Enrp, ParamRepr::PoolHandle(_) | ParamRepr::PoolElement(_)) => {
            enrp_type == Some(E::HandleTableResponse)
        }
        (Protocol::Enrp, ParamRepr::ServerInformation(_)) => enrp_type == Some(E::ListResponse),
        _ => false,
    }
}

fn parse_as(protocol: Protocol, bytes: &[u8]) -> Result<(), wire::Error> {
    match protocol {
        Protocol::Asap => asap::parse(bytes).map(drop),
        Protocol::Enrp => enrp::parse(bytes).map(drop),
    }
}

/// WIRE.md 6.1 step 1 and section 9: where a message carries one parameter of a type (one Pool
/// Handle, one Pool Element in a Registration or Handle Update, one PE Identifier, ...), a second
/// one right after it is a parameter where it does not belong: reject, cause 0x3 quoting it.
#[test]
fn a_single_parameter_repeated_is_refused_quoting_the_repeat() {
    let mut checked = Vec::new();
    for (name, bytes) in hex_files(vectors_dir()) {
        let protocol = protocol_of(&name);
        let repr = MessageRepr::parse(&bytes, protocol).unwrap();
        for (i, p) in repr.params.iter().enumerate() {
            if matches!(p, ParamRepr::Raw { .. }) || may_repeat(protocol, repr.message_type, p) {
                continue;
            }
            let mut twice = repr.clone();
            twice.params.insert(i + 1, p.clone());
            let bytes = twice.to_bytes().unwrap();
            let mut before = Vec::new();
            for q in &twice.params[..=i] {
                q.emit(&mut Writer::new(&mut before));
            }
            let at = 4 + 4 * twice.fixed.len() + before.len();
            let err = parse_as(protocol, &bytes).expect_err(&name);
            let what = format!("{name}, parameter {i} twice: {err}");
            assert_eq!(err.kind, ErrorKind::UnexpectedParameter, "{what}");
            assert_eq!(err.offset as usize, at, "{what}");
            let Disposition::Reject { cause: CauseCode::INVALID_VALUES, info: CauseInfo::Quote(r) } = err.disposition()
            else {
                panic!("{what}: {:?}", err.disposition())
            };
            assert_eq!((r.start, &bytes[r.clone()]), (at, &encoded(p)[..]), "{what}");
            checked.push((name.clone(), err.param_type));
        }
    }
    for case in [
        ("asap-registration", ParamType::POOL_ELEMENT),
        ("asap-registration", ParamType::POOL_HANDLE),
        ("asap-deregistration", ParamType::PE_IDENTIFIER),
        ("asap-handle-resolution-hropt", ParamType::HANDLE_RESOLUTION_OPTION),
        ("asap-handle-resolution-response-16pe", ParamType::POLICY),
        ("enrp-handle-update-add", ParamType::POOL_ELEMENT),
        ("enrp-presence", ParamType::SERVER_INFORMATION),
    ] {
        assert!(checked.contains(&(case.0.to_string(), Some(case.1))), "{case:?} among {} cases", checked.len());
    }
}

/// The probe that found it: a Registration whose Pool Element is followed by a second one
/// (another PE) was accepted and the second dropped.
#[test]
fn a_registration_with_two_pool_elements_is_refused() {
    let first = MessageRepr::parse(&vector("asap-registration"), Protocol::Asap).unwrap();
    let other = MessageRepr::parse(&vector("asap-registration-multileg"), Protocol::Asap).unwrap();
    let mut two = first.clone();
    two.params.push(other.params[1].clone());
    let bytes = two.to_bytes().unwrap();
    let err = asap::parse(&bytes).unwrap_err();
    let second = vector("asap-registration").len()..bytes.len();
    assert_eq!((err.kind.clone(), err.param_type), (ErrorKind::UnexpectedParameter, Some(ParamType::POOL_ELEMENT)));
    assert_eq!(
        err.disposition(),
        Disposition::Reject { cause: CauseCode::INVALID_VALUES, info: CauseInfo::Quote(second) }
    );

    // A malformed second one (a Weighted Round Robin policy without its weight) cannot be
    // quoted: cause 0x0.
    let ParamRepr::PoolElement(mut bad) = first.params[1].clone() else { panic!() };
    bad.pe_id += 1;
    bad.policy = wire::PolicyRepr::Unknown { policy_type: wire::PolicyType::WEIGHTED_ROUND_ROBIN, values: vec![] };
    two.params[2] = ParamRepr::PoolElement(bad);
    let err = asap::parse(&two.to_bytes().unwrap()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::UnexpectedParameter);
    assert_eq!(err.disposition(), Disposition::Reject { cause: CauseCode::UNSPECIFIED, info: CauseInfo::None });
}

/// Deciding whether a stray parameter can be quoted checks it on its own, one level deep: Pool
/// Elements nested 4,000 deep are refused without recursing through them.
#[test]
fn deeply_nested_pool_elements_are_refused_without_recursion() {
    let mut chain = Vec::new();
    for _ in 0..4000 {
        let mut outer = vec![0x00, 0x0a, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        outer.extend_from_slice(&chain);
        let len = outer.len() as u16;
        outer[2..4].copy_from_slice(&len.to_be_bytes());
        chain = outer;
    }
    let mut bytes = vec![0x01, 0x00, 0, 0, 0x00, 0x09, 0x00, 0x08, b'e', b'c', b'h', b'o'];
    bytes.extend_from_slice(&chain);
    let len = bytes.len() as u16;
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
    let err = asap::parse(&bytes).unwrap_err();
    assert_eq!((err.kind.clone(), err.offset), (ErrorKind::UnexpectedParameter, 28), "{err}");
    assert_eq!(
        err.disposition(),
        Disposition::Reject { cause: CauseCode::INVALID_VALUES, info: CauseInfo::Quote(28..bytes.len()) }
    );
}
