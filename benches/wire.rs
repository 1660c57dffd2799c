//! Codec costs: parse+validate and emit of a Registration with a 3-leg PE and of Handle
//! Resolution Responses with 1, 16 and 128 IPv4 PEs.
//!
//! Run: `taskset -c 1 cargo bench --bench wire` (results: `results/wire/`).

use core::net::{IpAddr, Ipv4Addr};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rserpool::wire::transport::Addresses;
use rserpool::wire::{
    asap, policy, pool_element, MessageRepr, ParamRepr, ParamType, Policy, PolicyRepr, PoolElementRepr, Protocol,
    TransportProtocol, TransportRepr, TransportUse, Writer,
};

fn registration_3_legs() -> MessageRepr {
    let addrs: Addresses =
        ["192.0.2.10", "198.51.100.10", "2001:db8::10"].iter().map(|a| a.parse::<IpAddr>().unwrap()).collect();
    MessageRepr::new(
        Protocol::Asap,
        asap::MessageType::Registration as u8,
        0,
        vec![
            ParamRepr::PoolHandle(b"echo".to_vec()),
            ParamRepr::PoolElement(PoolElementRepr {
                pe_id: 0x3c9e_1f07,
                home_registrar: 0,
                registration_life: 300_000,
                user_transport: TransportRepr {
                    protocol: TransportProtocol::Sctp,
                    port: 7,
                    transport_use: TransportUse::DataOnly,
                    service_code: 0,
                    addresses: addrs,
                },
                policy: PolicyRepr::Known(Policy::WeightedRoundRobin { weight: 7 }),
                asap_transport: None,
            }),
        ],
    )
}

fn ipv4_pe(i: u32) -> PoolElementRepr {
    PoolElementRepr {
        pe_id: 0x1000_0000 + i,
        home_registrar: 0x1122_3344,
        registration_life: 300_000,
        user_transport: TransportRepr::new(
            TransportProtocol::Tcp,
            IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i)),
            9000 + i as u16,
        ),
        policy: PolicyRepr::Known(Policy::LeastUsed { load: i << 20 }),
        asap_transport: None,
    }
}

fn resolution_response(n: u32) -> MessageRepr {
    let mut params = vec![
        ParamRepr::PoolHandle(b"org.example.payments".to_vec()),
        ParamRepr::Policy(PolicyRepr::Known(Policy::LeastUsed { load: 0 })),
    ];
    params.extend((0..n).map(|i| ParamRepr::PoolElement(ipv4_pe(i))));
    MessageRepr::new(Protocol::Asap, asap::MessageType::HandleResolutionResponse as u8, 0, params)
}

fn bench(c: &mut Criterion) {
    let cases: Vec<(String, MessageRepr)> = std::iter::once(("registration-3leg".to_string(), registration_3_legs()))
        .chain([1u32, 16, 128].into_iter().map(|n| (format!("hrr-{n}pe"), resolution_response(n))))
        .collect();

    let mut g = c.benchmark_group("parse");
    for (name, repr) in &cases {
        let bytes = repr.to_bytes().unwrap();
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &bytes, |b, bytes| {
            b.iter(|| {
                let m = asap::parse(black_box(bytes)).unwrap();
                black_box(m.message_type());
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("emit-repr");
    for (name, repr) in &cases {
        let len = repr.to_bytes().unwrap().len();
        g.throughput(Throughput::Bytes(len as u64));
        let mut buf = Vec::with_capacity(64 * 1024);
        g.bench_with_input(BenchmarkId::from_parameter(name), repr, |b, repr| {
            b.iter(|| {
                buf.clear();
                black_box(repr).emit(&mut buf).unwrap();
                black_box(buf.len());
            })
        });
    }
    g.finish();

    // The registrar's path: a response written from stored parts, no owned message built.
    let mut g = c.benchmark_group("emit-parts");
    for n in [1u32, 16, 128] {
        let pes: Vec<PoolElementRepr> = (0..n).map(ipv4_pe).collect();
        let policies: Vec<Policy> =
            pes.iter().map(|p| if let PolicyRepr::Known(k) = p.policy { k } else { Policy::RoundRobin }).collect();
        let len = resolution_response(n).to_bytes().unwrap().len();
        g.throughput(Throughput::Bytes(len as u64));
        let mut buf = Vec::with_capacity(64 * 1024);
        g.bench_function(BenchmarkId::from_parameter(format!("hrr-{n}pe")), |b| {
            b.iter(|| {
                buf.clear();
                let mut w = Writer::new(&mut buf);
                w.message(asap::MessageType::HandleResolutionResponse as u8, 0, |w| {
                    w.tlv_bytes(ParamType::POOL_HANDLE, b"org.example.payments");
                    policy::emit(w, &Policy::LeastUsed { load: 0 });
                    for (pe, pol) in black_box(&pes).iter().zip(&policies) {
                        pool_element::emit(
                            w,
                            pe.pe_id,
                            pe.home_registrar,
                            pe.registration_life,
                            &pe.user_transport,
                            pol,
                            None,
                        );
                    }
                })
                .unwrap();
                black_box(buf.len());
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
