//! Encodes one message of every ASAP and ENRP type, together carrying every parameter type,
//! every policy, every transport and every error cause, and checks each with Wireshark's
//! dissectors through `tests/vectors/check_vector.sh` (tshark): no malformed packet, no
//! warning, and the right message type. Needs `tshark` and `text2pcap`
//! (`apt-get install tshark`): where they are missing the check is skipped with a message on
//! stderr, except under `CI=true`, where it fails (`.ci/run` installs them).

use core::net::IpAddr;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use rserpool::wire::transport::Addresses;
use rserpool::wire::{
    asap, enrp, CauseCode, CauseRepr, MessageRepr, ParamRepr, ParamType, Policy, PolicyRepr, PoolElementRepr, Protocol,
    ServerInformationRepr, TransportProtocol, TransportRepr, TransportUse,
};
use smallvec::smallvec;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn transport(protocol: TransportProtocol, port: u16, addrs: &[&str]) -> TransportRepr {
    TransportRepr {
        protocol,
        port,
        transport_use: TransportUse::DataOnly,
        service_code: if protocol == TransportProtocol::Dccp { 0x5253_5030 } else { 0 },
        addresses: addrs.iter().map(|a| ip(a)).collect::<Addresses>(),
    }
}

fn pe(id: u32, user: TransportRepr, policy: Policy, asap: Option<TransportRepr>) -> ParamRepr {
    ParamRepr::PoolElement(PoolElementRepr {
        pe_id: id,
        home_registrar: 0x1122_3344,
        registration_life: 300_000,
        user_transport: user,
        policy: PolicyRepr::Known(policy),
        asap_transport: asap,
    })
}

fn handle(h: &str) -> ParamRepr {
    ParamRepr::PoolHandle(h.as_bytes().to_vec())
}

fn cause(code: u16, info: Vec<u8>) -> CauseRepr {
    CauseRepr { code: CauseCode(code), info }
}

/// One message of every type; returns (name, protocol, message).
fn corpus() -> Vec<(&'static str, MessageRepr)> {
    use TransportProtocol::*;
    let all_policies = [
        Policy::RoundRobin,
        Policy::WeightedRoundRobin { weight: 3 },
        Policy::Random,
        Policy::WeightedRandom { weight: 5 },
        Policy::Priority { priority: 2 },
        Policy::LeastUsed { load: 0x4000_0000 },
        Policy::LeastUsedDegradation { load: 0x1000_0000, degradation: 0x0100_0000 },
        Policy::PriorityLeastUsed { load: 0x2000_0000, degradation: 0x0200_0000 },
        Policy::RandomizedLeastUsed { load: 0x3000_0000 },
    ];
    let user_transports = [
        transport(Sctp, 7000, &["192.0.2.1", "2001:db8::1"]),
        transport(Tcp, 7001, &["192.0.2.2"]),
        transport(Udp, 7002, &["2001:db8::3"]),
        transport(UdpLite, 7003, &["192.0.2.4"]),
        transport(Dccp, 7004, &["192.0.2.5"]),
    ];
    let mut tcp_ctl = transport(Tcp, 8000, &["192.0.2.9"]);
    tcp_ctl.transport_use = TransportUse::DataPlusControl;
    let asap_tcp = transport(Tcp, 3863, &["192.0.2.1"]);
    let asap_sctp = transport(Sctp, 3863, &["192.0.2.1", "2001:db8::1"]);
    let resolution_pes: Vec<ParamRepr> = all_policies
        .iter()
        .enumerate()
        .map(|(i, p)| pe(0x100 + i as u32, user_transports[i % user_transports.len()].clone(), *p, None))
        .collect();
    let ok_body = |t: asap::MessageType, flags: u8, extra: Vec<ParamRepr>| {
        let mut params = vec![handle("echo"), ParamRepr::PeIdentifier(0x3c9e_1f07)];
        params.extend(extra);
        MessageRepr::new(Protocol::Asap, t as u8, flags, params)
    };
    let unknown_tlv = vec![0x4a, 0xbc, 0x00, 0x08, 0xa1, 0xb2, 0xc3, 0xd4];
    let policy_tlv = {
        let mut b = Vec::new();
        ParamRepr::Policy(PolicyRepr::Known(Policy::RoundRobin)).emit(&mut rserpool::wire::Writer::new(&mut b));
        b
    };
    let transport_tlv = {
        let mut b = Vec::new();
        ParamRepr::Transport(transport(Udp, 5004, &["2001:db8:7::5"])).emit(&mut rserpool::wire::Writer::new(&mut b));
        b
    };
    let unknown_message = vec![0x55, 0x00, 0x00, 0x0c, 0x00, 0x09, 0x00, 0x08, 0x65, 0x63, 0x68, 0x6f];
    let handle_tlv = vec![0x00, 0x09, 0x00, 0x08, 0x65, 0x63, 0x68, 0x6f];
    let si =
        |id: u32, t: TransportRepr| ParamRepr::ServerInformation(ServerInformationRepr { server_id: id, transport: t });
    let enrp = |t: enrp::MessageType, flags: u8, extra: Option<u32>, params: Vec<ParamRepr>| {
        let mut m = MessageRepr::new(Protocol::Enrp, t as u8, flags, params);
        m.fixed = smallvec![0x1122_3344, 0x5a6b_7c8d];
        m.fixed.extend(extra);
        m
    };
    use asap::MessageType as A;
    use enrp::MessageType as E;
    vec![
        (
            "registration",
            MessageRepr::new(
                Protocol::Asap,
                A::Registration as u8,
                0,
                vec![
                    handle("echo"),
                    pe(1, user_transports[0].clone(), Policy::WeightedRoundRobin { weight: 7 }, Some(asap_tcp.clone())),
                ],
            ),
        ),
        ("deregistration", ok_body(A::Deregistration, 0, vec![])),
        (
            "registration-response",
            ok_body(
                A::RegistrationResponse,
                asap::FLAG_REJECT,
                vec![ParamRepr::OperationError(vec![
                    cause(0x1, unknown_tlv.clone()),
                    cause(0x3, handle_tlv.clone()),
                    cause(0x4, vec![]),
                    cause(0x5, policy_tlv),
                    cause(0x6, vec![]),
                    cause(0x7, transport_tlv),
                    cause(0x8, vec![]),
                ])],
            ),
        ),
        (
            "deregistration-response",
            ok_body(
                A::DeregistrationResponse,
                0,
                vec![ParamRepr::OperationError(vec![cause(0x0, vec![]), cause(0xA, vec![])])],
            ),
        ),
        (
            "handle-resolution",
            MessageRepr::new(
                Protocol::Asap,
                A::HandleResolution as u8,
                0,
                vec![handle("echo"), ParamRepr::HandleResolutionOption(4)],
            ),
        ),
        ("handle-resolution-response", {
            let mut params = vec![handle("echo"), ParamRepr::Policy(PolicyRepr::Known(Policy::LeastUsed { load: 0 }))];
            params.extend(resolution_pes);
            MessageRepr::new(Protocol::Asap, A::HandleResolutionResponse as u8, 0, params)
        }),
        (
            "handle-resolution-response-unknown",
            MessageRepr::new(
                Protocol::Asap,
                A::HandleResolutionResponse as u8,
                0,
                vec![handle("nope"), ParamRepr::OperationError(vec![cause(0x9, vec![])])],
            ),
        ),
        ("endpoint-keep-alive", {
            let mut m = ok_body(A::EndpointKeepAlive, asap::FLAG_HOME, vec![]);
            m.fixed = smallvec![0x1122_3344];
            m
        }),
        ("endpoint-keep-alive-ack", ok_body(A::EndpointKeepAliveAck, 0, vec![])),
        ("endpoint-unreachable", ok_body(A::EndpointUnreachable, 0, vec![])),
        ("server-announce", {
            let mut m = MessageRepr::new(
                Protocol::Asap,
                A::ServerAnnounce as u8,
                0,
                vec![ParamRepr::Transport(asap_sctp.clone()), ParamRepr::Transport(asap_tcp.clone())],
            );
            m.fixed = smallvec![0x1122_3344];
            m
        }),
        (
            "cookie",
            MessageRepr::new(Protocol::Asap, A::Cookie as u8, 0, vec![ParamRepr::Cookie(b"state-0001".to_vec())]),
        ),
        (
            "cookie-echo",
            MessageRepr::new(Protocol::Asap, A::CookieEcho as u8, 0, vec![ParamRepr::Cookie(b"state-0001".to_vec())]),
        ),
        (
            "business-card",
            MessageRepr::new(
                Protocol::Asap,
                A::BusinessCard as u8,
                0,
                vec![
                    handle("echo"),
                    ParamRepr::Policy(PolicyRepr::Known(Policy::Priority { priority: 1 })),
                    pe(7, tcp_ctl.clone(), Policy::Priority { priority: 1 }, None),
                    pe(8, user_transports[4].clone(), Policy::Priority { priority: 2 }, None),
                ],
            ),
        ),
        (
            "error",
            MessageRepr::new(
                Protocol::Asap,
                A::Error as u8,
                0,
                vec![ParamRepr::OperationError(vec![cause(0x2, unknown_message)])],
            ),
        ),
        (
            "presence",
            enrp(
                E::Presence,
                enrp::FLAG_REPLY_REQUIRED,
                None,
                vec![ParamRepr::PeChecksum(0x0ef2), si(0x1122_3344, transport(Tcp, 9901, &["192.0.2.1"]))],
            ),
        ),
        ("handle-table-request", enrp(E::HandleTableRequest, enrp::FLAG_OWN_CHILDREN_ONLY, None, vec![])),
        (
            "handle-table-response",
            enrp(
                E::HandleTableResponse,
                enrp::FLAG_MORE,
                None,
                vec![
                    handle("echo"),
                    pe(1, user_transports[1].clone(), Policy::Random, Some(asap_tcp.clone())),
                    pe(2, user_transports[1].clone(), Policy::Random, Some(asap_sctp.clone())),
                    handle("db.shard-07"),
                    pe(3, user_transports[2].clone(), Policy::RoundRobin, Some(asap_tcp.clone())),
                ],
            ),
        ),
        (
            "handle-update",
            enrp(
                E::HandleUpdate,
                0,
                Some(0),
                vec![
                    handle("video"),
                    pe(9, user_transports[3].clone(), Policy::WeightedRandom { weight: 3 }, Some(asap_tcp)),
                ],
            ),
        ),
        ("list-request", enrp(E::ListRequest, 0, None, vec![])),
        (
            "list-response",
            enrp(
                E::ListResponse,
                0,
                None,
                vec![
                    si(0x1122_3344, transport(Tcp, 9901, &["192.0.2.1"])),
                    si(0x5a6b_7c8d, transport(Sctp, 9901, &["2001:db8::2"])),
                ],
            ),
        ),
        ("init-takeover", enrp(E::InitTakeover, 0, Some(0x0e1f_2a3b), vec![])),
        ("init-takeover-ack", enrp(E::InitTakeoverAck, 0, Some(0x0e1f_2a3b), vec![])),
        ("takeover-server", enrp(E::TakeoverServer, 0, Some(0x0e1f_2a3b), vec![])),
        ("enrp-error", enrp(E::Error, 0, None, vec![ParamRepr::OperationError(vec![cause(0x1, unknown_tlv)])])),
    ]
}

/// Every ENRP message as the registrar emits it (`wire::enrp::emit_*`, the path of Presence,
/// table transfers, Handle Updates, lists, takeovers and errors), with its bytes.
fn registrar_enrp() -> Vec<(&'static str, Vec<u8>)> {
    use rserpool::wire::{pool_element, Writer};
    use TransportProtocol::Tcp;
    let one = |f: &dyn Fn(&mut Writer<'_>) -> Result<usize, rserpool::wire::EmitError>| {
        let mut b = Vec::new();
        f(&mut Writer::new(&mut b)).unwrap();
        b
    };
    let info = ServerInformationRepr { server_id: 0x1122_3344, transport: transport(Tcp, 9901, &["192.0.2.10"]) };
    let user = transport(Tcp, 7000, &["192.0.2.7"]);
    let asap_t = transport(Tcp, 3863, &["192.0.2.7"]);
    let mut body = Vec::new();
    pool_element::encode_body(&mut body, &user, &Policy::LeastUsed { load: 0x1000 });
    let pe = |w: &mut Writer<'_>| pool_element::emit_encoded(w, 0x3c9e_1f07, 0x1122_3344, 60_000, &body, Some(&asap_t));
    use enrp::MessageType as E;
    vec![
        ("presence", one(&|w| enrp::emit_presence(w, 0x1122_3344, 0x5a6b_7c8d, true, 0xbeef, &info))),
        ("table-request", one(&|w| enrp::emit_handle_table_request(w, 0x1122_3344, 0x5a6b_7c8d, true))),
        (
            "table-response",
            one(&|w| {
                enrp::emit_handle_table_response(w, 0x1122_3344, 0x5a6b_7c8d, true, false, |w| {
                    w.tlv_bytes(ParamType::POOL_HANDLE, b"echo");
                    pe(w);
                    pe(w);
                    w.tlv_bytes(ParamType::POOL_HANDLE, b"other");
                    pe(w);
                })
            }),
        ),
        (
            "table-response-reject",
            one(&|w| enrp::emit_handle_table_response(w, 0x1122_3344, 0x5a6b_7c8d, false, true, |_| {})),
        ),
        (
            "handle-update-add",
            one(&|w| enrp::emit_handle_update(w, 0x1122_3344, 0, enrp::UpdateAction::AddPe, b"echo", pe)),
        ),
        (
            "handle-update-delete",
            one(&|w| enrp::emit_handle_update(w, 0x1122_3344, 0, enrp::UpdateAction::DeletePe, b"echo", pe)),
        ),
        ("list-request", one(&|w| enrp::emit_list_request(w, 0x1122_3344, 0x5a6b_7c8d))),
        ("list-response", one(&|w| enrp::emit_list_response(w, 0x1122_3344, 0x5a6b_7c8d, false, [&info, &info]))),
        ("init-takeover", one(&|w| enrp::emit_takeover(w, E::InitTakeover, 1, 2, 3))),
        ("init-takeover-ack", one(&|w| enrp::emit_takeover(w, E::InitTakeoverAck, 1, 2, 3))),
        ("takeover-server", one(&|w| enrp::emit_takeover(w, E::TakeoverServer, 1, 2, 3))),
        (
            "error",
            one(&|w| {
                enrp::emit_error(w, 0x1122_3344, 0, CauseCode::INVALID_VALUES, &[0, 9, 0, 8, b'e', b'c', b'h', b'o'])
            }),
        ),
    ]
}

#[test]
fn the_registrars_enrp_emitters_write_what_the_codec_reads_back() {
    for (name, bytes) in registrar_enrp() {
        let m = MessageRepr::parse(&bytes, Protocol::Enrp).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.to_bytes().unwrap(), bytes, "{name}: parse and re-emit give the same bytes");
    }
}

#[test]
fn corpus_covers_every_type_parameter_policy_and_cause() {
    let corpus = corpus();
    let mut asap_types = [false; 14];
    let mut enrp_types = [false; 10];
    let mut params = std::collections::BTreeSet::new();
    let mut policies = std::collections::BTreeSet::new();
    let mut causes = std::collections::BTreeSet::new();
    let mut transports = std::collections::BTreeSet::new();
    fn transport_seen(
        t: &TransportRepr,
        params: &mut std::collections::BTreeSet<u16>,
        ts: &mut std::collections::BTreeSet<&'static str>,
    ) {
        params.insert(t.protocol.param_type().0);
        ts.insert(t.protocol.name());
        for a in &t.addresses {
            params.insert(if a.is_ipv4() { 1 } else { 2 });
        }
    }
    for (_, m) in &corpus {
        match m.protocol {
            Protocol::Asap => asap_types[usize::from(m.message_type) - 1] = true,
            Protocol::Enrp => enrp_types[usize::from(m.message_type) - 1] = true,
        }
        for p in &m.params {
            match p {
                ParamRepr::PoolElement(pe) => {
                    params.insert(ParamType::POOL_ELEMENT.0);
                    params.insert(ParamType::POLICY.0);
                    transport_seen(&pe.user_transport, &mut params, &mut transports);
                    if let Some(t) = &pe.asap_transport {
                        transport_seen(t, &mut params, &mut transports);
                    }
                    if let PolicyRepr::Known(p) = pe.policy {
                        policies.insert(p.policy_type().0);
                    }
                }
                ParamRepr::ServerInformation(si) => {
                    params.insert(ParamType::SERVER_INFORMATION.0);
                    transport_seen(&si.transport, &mut params, &mut transports);
                }
                ParamRepr::Transport(t) => transport_seen(t, &mut params, &mut transports),
                ParamRepr::OperationError(cs) => {
                    params.insert(ParamType::OPERATION_ERROR.0);
                    causes.extend(cs.iter().map(|c| c.code.0));
                }
                ParamRepr::Policy(_) => {
                    params.insert(ParamType::POLICY.0);
                }
                ParamRepr::PoolHandle(_) => {
                    params.insert(ParamType::POOL_HANDLE.0);
                }
                ParamRepr::Cookie(_) => {
                    params.insert(ParamType::COOKIE.0);
                }
                ParamRepr::PeIdentifier(_) => {
                    params.insert(ParamType::PE_IDENTIFIER.0);
                }
                ParamRepr::PeChecksum(_) => {
                    params.insert(ParamType::PE_CHECKSUM.0);
                }
                ParamRepr::HandleResolutionOption(_) => {
                    params.insert(ParamType::HANDLE_RESOLUTION_OPTION.0);
                }
                ParamRepr::Address(_) | ParamRepr::Raw { .. } => {}
            }
        }
    }
    assert!(asap_types.iter().all(|&t| t), "every ASAP type");
    assert!(enrp_types.iter().all(|&t| t), "every ENRP type");
    let want: Vec<u16> = (1..=15).chain([0x803f]).collect();
    assert_eq!(params.into_iter().collect::<Vec<_>>(), want, "every parameter type");
    assert_eq!(policies.len(), 9, "every policy");
    assert_eq!(causes.into_iter().collect::<Vec<_>>(), (0..=10).collect::<Vec<u16>>(), "every cause");
    assert_eq!(transports.len(), 5, "every transport");
    // Every corpus message is valid for our own parser too.
    for (name, m) in &corpus {
        let bytes = m.to_bytes().unwrap();
        assert_eq!(&MessageRepr::parse(&bytes, m.protocol).unwrap_or_else(|e| panic!("{name}: {e}")), m, "{name}");
    }
}

/// Whether the Wireshark check runs, given the tools that are missing and whether this is CI.
#[derive(Debug, PartialEq, Eq)]
enum Wireshark {
    /// tshark and text2pcap are there.
    Run,
    /// Missing on this machine: skip, saying why.
    Skip(String),
    /// Missing under `CI=true`: CI installs them, so this is a failure.
    Fail(String),
}

fn wireshark(missing: &[&str], ci: bool) -> Wireshark {
    if missing.is_empty() {
        return Wireshark::Run;
    }
    let what = format!("{} not found (install with: apt-get install tshark)", missing.join(" and "));
    if ci {
        Wireshark::Fail(format!("CI=true and {what}; CI must run the Wireshark check (.ci/run installs tshark)"))
    } else {
        Wireshark::Skip(format!("SKIPPED the Wireshark check of our encoder: {what}; CI runs it"))
    }
}

/// `CI=true` (or `1`), as CI services and `.ci/run` set it.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn missing_tools() -> Vec<&'static str> {
    let have = |tool: &str| Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    ["tshark", "text2pcap"].into_iter().filter(|t| !have(t)).collect()
}

#[test]
fn a_missing_wireshark_skips_except_in_ci() {
    assert_eq!(wireshark(&[], false), Wireshark::Run);
    assert_eq!(wireshark(&[], true), Wireshark::Run);
    let Wireshark::Skip(why) = wireshark(&["tshark", "text2pcap"], false) else { panic!() };
    assert!(why.contains("tshark and text2pcap not found") && why.contains("apt-get install tshark"), "{why}");
    let Wireshark::Fail(why) = wireshark(&["text2pcap"], true) else { panic!() };
    assert!(why.contains("CI=true and text2pcap not found"), "{why}");
}

#[test]
fn wireshark_decodes_every_message_cleanly() {
    match wireshark(&missing_tools(), in_ci()) {
        Wireshark::Run => {}
        Wireshark::Skip(why) => {
            // Straight to stderr, past the test harness's capture, so that it shows in a passing run.
            let _ = writeln!(std::io::stderr(), "wire_tshark: {why}");
            return;
        }
        Wireshark::Fail(why) => panic!("{why}"),
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/check_vector.sh");
    let mut failures = Vec::new();
    let emitted = registrar_enrp().into_iter().map(|(name, b)| (name, MessageRepr::parse(&b, Protocol::Enrp).unwrap()));
    for (name, m) in corpus().into_iter().chain(emitted) {
        let hex: String = m.to_bytes().unwrap().iter().map(|b| format!("{b:02x}")).collect();
        let mut cmd = Command::new("bash");
        cmd.arg(&script);
        if m.protocol == Protocol::Enrp {
            cmd.arg("--enrp");
        }
        let out = cmd.args(["--type", &m.message_type.to_string(), &hex]).output().unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{name}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "Wireshark flagged:\n{}", failures.join("\n"));
}
