//! The tokio adapter (cargo feature `tokio`): an async pool element serving an echo and an
//! async pool user's session with it, against a registrar process.
#![cfg(feature = "tokio")]

mod support;

use std::time::Duration;

use rserpool::client::node::PeNodeEvent;
use rserpool::client::server::ServerEvent;
use rserpool::client::session::SessionEvent;
use rserpool::client::tokio::{PoolElement, PoolUser};
use support::{Registrar, PATIENCE};

#[tokio::test]
async fn an_async_pool_user_talks_to_an_async_pool_element() {
    let r = Registrar::start("epoll", 1, "");
    let mut pe = PoolElement::start("async", &[r.addr], "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let pe_id = pe.wait_registered(PATIENCE).await.unwrap();
    let pu = PoolUser::start(&[r.addr]).await.unwrap();
    let found = pu.resolve(b"async", PATIENCE).await.unwrap();
    assert_eq!(found.iter().map(|p| p.pe_id).collect::<Vec<_>>(), [pe_id]);
    let mut session = pu.session(b"async", Default::default()).await.unwrap();
    session.send(0, b"ping".to_vec()).await.unwrap();
    let served = tokio::spawn(async move {
        loop {
            match pe.next_event().await {
                Some(PeNodeEvent::Session(ServerEvent::Data { session, stream, seq, payload, .. })) => {
                    pe.send(session, stream, payload);
                    pe.ack(session, seq);
                    return pe;
                }
                Some(_) => {}
                None => panic!("the PE stopped"),
            }
        }
    });
    let answer = tokio::time::timeout(PATIENCE, async {
        let mut acked = false;
        let mut data = None;
        while let Some(ev) = session.recv().await {
            match ev {
                SessionEvent::Data { payload, pe_id: from, .. } => data = Some((payload, from)),
                SessionEvent::Acked { seq: 1 } => acked = true,
                _ => {}
            }
            if acked && data.is_some() {
                break;
            }
        }
        data
    })
    .await
    .unwrap();
    assert_eq!(answer, Some((b"ping".to_vec(), pe_id)));
    let pe = served.await.unwrap();
    pe.deregister(Duration::from_secs(5)).await.unwrap();
    assert!(pu.resolve(b"async", PATIENCE).await.is_ok(), "still cached: the cache outlives the PE");
}
