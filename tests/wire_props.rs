//! Property tests of the codec: emit → parse gives back the same Repr and parse → emit the same
//! bytes; no input makes the parser panic; the framer yields the same messages however a stream
//! is split into reads. Seeds: proptest's defaults, failures persist in
//! `tests/wire_props.proptest-regressions`.

use core::net::IpAddr;

use proptest::prelude::*;
use rserpool::wire::framer::Frame;
use rserpool::wire::transport::Addresses;
use rserpool::wire::{
    asap, enrp, CauseCode, CauseRepr, Framer, MessageRepr, ParamRepr, Policy, PolicyRepr, PolicyType, PoolElementRepr,
    Protocol, ServerInformationRepr, TransportProtocol, TransportRepr, TransportUse,
};
use smallvec::SmallVec;

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![any::<[u8; 4]>().prop_map(IpAddr::from), any::<[u8; 16]>().prop_map(IpAddr::from)]
}

fn transport_of(protocols: &'static [TransportProtocol]) -> impl Strategy<Value = TransportRepr> {
    (
        proptest::sample::select(protocols),
        any::<u16>(),
        any::<bool>(),
        any::<u32>(),
        proptest::collection::vec(ip(), 1..4),
    )
        .prop_map(|(protocol, port, ctl, sc, addrs)| {
            let n = if protocol == TransportProtocol::Sctp { addrs.len() } else { 1 };
            TransportRepr {
                protocol,
                port,
                transport_use: if protocol.has_transport_use() && ctl {
                    TransportUse::DataPlusControl
                } else {
                    TransportUse::DataOnly
                },
                service_code: if protocol == TransportProtocol::Dccp { sc } else { 0 },
                addresses: addrs.into_iter().take(n).collect::<Addresses>(),
            }
        })
}

const ALL_TRANSPORTS: &[TransportProtocol] = &[
    TransportProtocol::Sctp,
    TransportProtocol::Tcp,
    TransportProtocol::Udp,
    TransportProtocol::UdpLite,
    TransportProtocol::Dccp,
];
const ASAP_TRANSPORTS: &[TransportProtocol] = &[TransportProtocol::Sctp, TransportProtocol::Tcp];

fn policy() -> impl Strategy<Value = PolicyRepr> {
    let known = (0usize..9, any::<u32>(), any::<u32>()).prop_map(|(i, a, b)| {
        PolicyRepr::Known(match i {
            0 => Policy::RoundRobin,
            1 => Policy::WeightedRoundRobin { weight: a },
            2 => Policy::Random,
            3 => Policy::WeightedRandom { weight: a },
            4 => Policy::Priority { priority: a },
            5 => Policy::LeastUsed { load: a },
            6 => Policy::LeastUsedDegradation { load: a, degradation: b },
            7 => Policy::PriorityLeastUsed { load: a, degradation: b },
            _ => Policy::RandomizedLeastUsed { load: a },
        })
    });
    let unknown = (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..12))
        .prop_filter("unknown type", |(t, _)| PolicyType(*t).value_count().is_none())
        .prop_map(|(t, values)| PolicyRepr::Unknown { policy_type: PolicyType(t), values });
    prop_oneof![4 => known, 1 => unknown]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn pool_element() -> impl Strategy<Value = PoolElementRepr> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<i32>(),
        transport_of(ALL_TRANSPORTS),
        policy(),
        proptest::option::of(transport_of(ASAP_TRANSPORTS)),
    )
        .prop_map(|(pe_id, home_registrar, registration_life, user_transport, policy, asap_transport)| {
            PoolElementRepr { pe_id, home_registrar, registration_life, user_transport, policy, asap_transport }
        })
}

fn server_information() -> impl Strategy<Value = ServerInformationRepr> {
    (any::<u32>(), transport_of(ALL_TRANSPORTS))
        .prop_map(|(server_id, transport)| ServerInformationRepr { server_id, transport })
}

fn operation_error() -> impl Strategy<Value = ParamRepr> {
    proptest::collection::vec((any::<u16>(), bytes(12)), 1..4).prop_map(|cs| {
        ParamRepr::OperationError(cs.into_iter().map(|(c, info)| CauseRepr { code: CauseCode(c), info }).collect())
    })
}

/// A parameter of an unknown type that is skipped (action bits 10 or 11).
fn unknown_skip() -> impl Strategy<Value = ParamRepr> {
    (0x8000u16..=0xffff, bytes(9))
        .prop_filter("unknown", |(t, _)| *t != 0x803f)
        .prop_map(|(param_type, value)| ParamRepr::Raw { param_type, value })
}

fn handle() -> impl Strategy<Value = ParamRepr> {
    bytes(48).prop_map(ParamRepr::PoolHandle)
}

fn pe() -> impl Strategy<Value = ParamRepr> {
    pool_element().prop_map(ParamRepr::PoolElement)
}

fn asap_message() -> impl Strategy<Value = MessageRepr> {
    use asap::MessageType as T;
    let handle_id = || (handle(), any::<u32>()).prop_map(|(h, i)| vec![h, ParamRepr::PeIdentifier(i)]);
    let body = prop_oneof![
        (handle(), pe()).prop_map(|(h, p)| (T::Registration, vec![], vec![h, p])),
        handle_id().prop_map(|v| (T::Deregistration, vec![], v)),
        (handle_id(), proptest::option::of(operation_error())).prop_map(|(mut v, e)| {
            v.extend(e);
            (T::RegistrationResponse, vec![], v)
        }),
        (handle_id(), proptest::option::of(operation_error())).prop_map(|(mut v, e)| {
            v.extend(e);
            (T::DeregistrationResponse, vec![], v)
        }),
        (handle(), proptest::option::of(any::<u32>())).prop_map(|(h, n)| {
            let mut v = vec![h];
            v.extend(n.map(ParamRepr::HandleResolutionOption));
            (T::HandleResolution, vec![], v)
        }),
        // The overall policy is optional (RFC 5352; absent = Round Robin).
        (handle(), proptest::option::of(policy()), proptest::collection::vec(pe(), 0..5)).prop_map(|(h, p, pes)| {
            let mut v = vec![h];
            v.extend(p.map(ParamRepr::Policy));
            v.extend(pes);
            (T::HandleResolutionResponse, vec![], v)
        }),
        (handle(), operation_error()).prop_map(|(h, e)| (T::HandleResolutionResponse, vec![], vec![h, e])),
        // The PE Identifier is optional here (rsplib leaves it out to address every PE).
        (any::<u32>(), handle_id(), any::<bool>()).prop_map(|(s, mut v, all)| {
            v.truncate(if all { 1 } else { 2 });
            (T::EndpointKeepAlive, vec![s], v)
        }),
        handle_id().prop_map(|v| (T::EndpointKeepAliveAck, vec![], v)),
        handle_id().prop_map(|v| (T::EndpointUnreachable, vec![], v)),
        (any::<u32>(), proptest::collection::vec(transport_of(ALL_TRANSPORTS), 0..3)).prop_map(|(s, ts)| (
            T::ServerAnnounce,
            vec![s],
            ts.into_iter().map(ParamRepr::Transport).collect()
        )),
        bytes(40).prop_map(|c| (T::Cookie, vec![], vec![ParamRepr::Cookie(c)])),
        bytes(40).prop_map(|c| (T::CookieEcho, vec![], vec![ParamRepr::Cookie(c)])),
        (handle(), policy(), proptest::collection::vec(pe(), 0..4)).prop_map(|(h, p, pes)| {
            let mut v = vec![h, ParamRepr::Policy(p)];
            v.extend(pes);
            (T::BusinessCard, vec![], v)
        }),
        operation_error().prop_map(|e| (T::Error, vec![], vec![e])),
    ];
    (body, any::<u8>(), proptest::option::of((unknown_skip(), any::<prop::sample::Index>()))).prop_map(
        |((t, fixed, mut params), flags, unk)| {
            if let Some((u, at)) = unk {
                let i = at.index(params.len() + 1);
                params.insert(i, u);
            }
            MessageRepr {
                protocol: Protocol::Asap,
                message_type: t as u8,
                flags,
                fixed: SmallVec::from_vec(fixed),
                params,
            }
        },
    )
}

fn enrp_message() -> impl Strategy<Value = MessageRepr> {
    use enrp::MessageType as T;
    let body = prop_oneof![
        (any::<u16>(), server_information()).prop_map(|(c, si)| (
            T::Presence,
            vec![],
            vec![ParamRepr::PeChecksum(c), ParamRepr::ServerInformation(si)]
        )),
        Just((T::HandleTableRequest, vec![], vec![])),
        proptest::collection::vec((handle(), proptest::collection::vec(pe(), 0..3)), 0..3).prop_map(|groups| {
            let v = groups.into_iter().flat_map(|(h, pes)| std::iter::once(h).chain(pes)).collect();
            (T::HandleTableResponse, vec![], v)
        }),
        (0u32..2, handle(), pe()).prop_map(|(a, h, p)| (T::HandleUpdate, vec![a << 16], vec![h, p])),
        Just((T::ListRequest, vec![], vec![])),
        proptest::collection::vec(server_information(), 0..4).prop_map(|s| (
            T::ListResponse,
            vec![],
            s.into_iter().map(ParamRepr::ServerInformation).collect()
        )),
        any::<u32>().prop_map(|t| (T::InitTakeover, vec![t], vec![])),
        any::<u32>().prop_map(|t| (T::InitTakeoverAck, vec![t], vec![])),
        any::<u32>().prop_map(|t| (T::TakeoverServer, vec![t], vec![])),
        operation_error().prop_map(|e| (T::Error, vec![], vec![e])),
    ];
    (body, any::<u8>(), any::<u32>(), any::<u32>()).prop_map(|((t, extra, params), flags, s, r)| {
        let mut fixed = SmallVec::from_slice(&[s, r]);
        fixed.extend(extra);
        MessageRepr { protocol: Protocol::Enrp, message_type: t as u8, flags, fixed, params }
    })
}

fn any_message() -> impl Strategy<Value = MessageRepr> {
    prop_oneof![asap_message(), enrp_message()]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn emit_parse_gives_back_the_repr(m in any_message()) {
        let bytes = m.to_bytes().unwrap();
        prop_assert_eq!(bytes.len() % 4, 0);
        let parsed = MessageRepr::parse(&bytes, m.protocol).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&parsed, &m);
        prop_assert_eq!(parsed.to_bytes().unwrap(), bytes);
    }

    /// `TransportRepr`'s hand-written clone (addresses copied as a slice) is a faithful,
    /// independent copy, inline (up to two addresses) or spilled to the heap (three).
    #[test]
    fn a_cloned_transport_is_equal_and_independent(t in transport_of(ALL_TRANSPORTS)) {
        let mut c = t.clone();
        prop_assert_eq!(&c, &t);
        c.addresses.push(IpAddr::from([192, 0, 2, 1]));
        c.port = t.port.wrapping_add(1);
        prop_assert_eq!(c.addresses.len(), t.addresses.len() + 1);
        prop_assert_ne!(&c, &t);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        exercise(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(m in any_message(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let mut bytes = m.to_bytes().unwrap();
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        exercise(&bytes);
    }

    #[test]
    fn framer_is_independent_of_read_boundaries(
        msgs in proptest::collection::vec(any_message(), 1..6),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let encoded: Vec<Vec<u8>> = msgs.iter().map(|m| m.to_bytes().unwrap()).collect();
        let stream: Vec<u8> = encoded.concat();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let framer = Framer::new(Protocol::Asap, 65535);
        let (mut pending, mut got, mut from) = (Vec::new(), Vec::new(), 0);
        for cut in cuts {
            pending.extend_from_slice(&stream[from..cut]);
            from = cut;
            let mut frames = framer.frames(&pending);
            for f in frames.by_ref() {
                got.push(f.unwrap().to_vec());
            }
            let consumed = frames.consumed();
            pending.drain(..consumed);
            if let Frame::Incomplete { need } = framer.frame(&pending).unwrap() {
                prop_assert!(need >= 1);
            }
        }
        prop_assert!(pending.is_empty());
        prop_assert_eq!(got, encoded);
    }
}

/// Parses `bytes` every way there is and walks every view (the fuzz target's body, for both
/// protocols), then frames it.
fn exercise(bytes: &[u8]) {
    for selector in [0u8, 1] {
        let mut input = Vec::with_capacity(bytes.len() + 1);
        input.push(selector);
        input.extend_from_slice(bytes);
        rserpool::wire::fuzz::parse_one(&input);
    }
    let framer = Framer::new(Protocol::Asap, 65535);
    let mut frames = framer.frames(bytes);
    for _ in frames.by_ref() {}
    assert!(frames.consumed() <= bytes.len());
}
