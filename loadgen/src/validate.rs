//! Checks of every answer: ASAP answers are parsed (zero-copy) and checked against the plan
//! (right type, right pool, every PE of that pool, no PE twice, not rejected); RESP GET replies
//! must be bulk strings of the value size; echo replies must be the reply bytes.

use rserpool::wire::asap::{self, Body, Resolution};

use crate::stats::ErrorKind;
use crate::workload::Plan;

/// What an ASAP message from the registrar is, once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    /// A Handle Resolution Response about `pool` (None: not one of our handles).
    Resolution {
        /// The pool named in the answer.
        pool: Option<usize>,
        /// Whether its content is right.
        result: Result<(), ErrorKind>,
    },
    /// A Registration Response about PE `pe_id`.
    Registration {
        /// The PE.
        pe_id: u32,
        /// Err(Rejected) if the R flag or an error is set.
        result: Result<(), ErrorKind>,
    },
    /// A Deregistration Response about PE `pe_id`.
    Deregistration {
        /// The PE.
        pe_id: u32,
        /// Err(Rejected) if it carries an error.
        result: Result<(), ErrorKind>,
    },
    /// The registrar checks that one of our PEs is alive: answer with a Keep Alive Ack.
    KeepAlive {
        /// The pool.
        pool_handle: &'a [u8],
        /// The PE; `None`: every PE of the connection (rsplib's registrar sends that, ours
        /// never does).
        pe_id: Option<u32>,
    },
    /// A valid message that is no answer to anything we send.
    Other,
    /// Not a valid ASAP message.
    Malformed,
}

/// Classifies and checks one complete ASAP message.
pub fn check_asap<'a>(plan: &Plan, msg: &'a [u8]) -> Answer<'a> {
    let Ok(m) = asap::parse(msg) else { return Answer::Malformed };
    match m.body() {
        Body::HandleResolutionResponse { pool_handle, resolution } => {
            let pool = plan.pool_of_handle(pool_handle);
            let result = match (pool, resolution) {
                (None, _) => Err(ErrorKind::Unexpected),
                (Some(_), Resolution::Failed(_)) => Err(ErrorKind::ResolutionFailed),
                (Some(pool), Resolution::Found { pool_elements, .. }) => {
                    check_pool_elements(plan, pool, pool_elements.clone().map(|pe| pe.pe_id()))
                }
            };
            Answer::Resolution { pool, result }
        }
        Body::RegistrationResponse { rejected, pe_id, error, .. } => Answer::Registration {
            pe_id: *pe_id,
            result: if *rejected || error.is_some() { Err(ErrorKind::Rejected) } else { Ok(()) },
        },
        Body::DeregistrationResponse { pe_id, error, .. } => Answer::Deregistration {
            pe_id: *pe_id,
            result: if error.is_some() { Err(ErrorKind::Rejected) } else { Ok(()) },
        },
        Body::EndpointKeepAlive { pool_handle, pe_id, .. } => Answer::KeepAlive { pool_handle, pe_id: *pe_id },
        _ => Answer::Other,
    }
}

/// Checks the PE identifiers of an answer about `pool`: at least one, each of that pool, none
/// twice.
pub fn check_pool_elements(plan: &Plan, pool: usize, ids: impl Iterator<Item = u32>) -> Result<(), ErrorKind> {
    let mut seen = [0u32; 32];
    let mut n = 0usize;
    for id in ids {
        if plan.pool_of_pe(id) != Some(pool) {
            return Err(ErrorKind::ForeignPoolElement);
        }
        if seen[..n.min(seen.len())].contains(&id) {
            return Err(ErrorKind::DuplicatePoolElement);
        }
        if n < seen.len() {
            seen[n] = id;
        }
        n += 1;
    }
    if n == 0 {
        return Err(ErrorKind::NoPoolElement);
    }
    Ok(())
}

/// Looks at the front of a RESP reply stream: `None` if the first reply is incomplete, else
/// the bytes it takes and whether it is a bulk string of `value_size` bytes.
pub fn check_resp(buf: &[u8], value_size: usize) -> Option<(usize, Result<(), ErrorKind>)> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = &buf[..line_end];
    let after = line_end + 2;
    match line.first() {
        Some(b'$') => {
            let len = &line[1..];
            if len == b"-1" {
                return Some((after, Err(ErrorKind::BadReply)));
            }
            let n: usize = std::str::from_utf8(len).ok()?.parse().ok()?;
            if buf.len() < after + n + 2 {
                return None;
            }
            let ok = n == value_size && &buf[after + n..after + n + 2] == b"\r\n";
            Some((after + n + 2, if ok { Ok(()) } else { Err(ErrorKind::BadReply) }))
        }
        // Errors, simple strings, integers: one line, and not what a GET of our keys returns.
        Some(b'-' | b'+' | b':') => Some((after, Err(ErrorKind::BadReply))),
        _ => Some((buf.len(), Err(ErrorKind::Malformed))),
    }
}

/// Whether an echo reply is `reply_size` bytes of `b'r'`, as the bare server sends.
pub fn check_echo(reply: &[u8]) -> Result<(), ErrorKind> {
    if reply.iter().all(|&b| b == b'r') {
        Ok(())
    } else {
        Err(ErrorKind::BadReply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{resp_command, WorkloadSpec};
    use rserpool::wire::asap::MessageType;
    use rserpool::wire::{
        CauseCode, CauseRepr, MessageRepr, ParamRepr, Policy, PolicyRepr, PoolElementRepr, Protocol, TransportProtocol,
        TransportRepr, Writer,
    };

    fn plan() -> std::sync::Arc<Plan> {
        Plan::new(WorkloadSpec { pools: 100, pool_size: 10, ..WorkloadSpec::default() }, 2, None)
    }

    fn pe(id: u32) -> ParamRepr {
        ParamRepr::PoolElement(PoolElementRepr {
            pe_id: id,
            home_registrar: 7,
            registration_life: 1000,
            user_transport: TransportRepr::new(TransportProtocol::Tcp, "127.0.0.1".parse().unwrap(), 1),
            policy: PolicyRepr::Known(Policy::RoundRobin),
            asap_transport: None,
        })
    }

    fn response(plan: &Plan, pool: usize, ids: &[u32]) -> Vec<u8> {
        let mut params = vec![
            ParamRepr::PoolHandle(plan.handle(pool).to_vec()),
            ParamRepr::Policy(PolicyRepr::Known(Policy::RoundRobin)),
        ];
        params.extend(ids.iter().map(|&i| pe(i)));
        MessageRepr::new(Protocol::Asap, MessageType::HandleResolutionResponse as u8, 0, params).to_bytes().unwrap()
    }

    #[test]
    fn resolution_answers() {
        let p = plan();
        let ok = response(&p, 5, &[p.static_pe_id(5, 0), p.static_pe_id(5, 9), p.churn_pe_id(1, 3)]);
        // The churn PE belongs to pool 5 only if the plan put slot 3 of connection 1 there.
        let expect = if p.churn_pool(1, 3) == 5 { Ok(()) } else { Err(ErrorKind::ForeignPoolElement) };
        assert_eq!(check_asap(&p, &ok), Answer::Resolution { pool: Some(5), result: expect });
        let ok = response(&p, 5, &[p.static_pe_id(5, 0), p.static_pe_id(5, 9)]);
        assert_eq!(check_asap(&p, &ok), Answer::Resolution { pool: Some(5), result: Ok(()) });
        let foreign = response(&p, 5, &[p.static_pe_id(5, 0), p.static_pe_id(6, 0)]);
        assert_eq!(
            check_asap(&p, &foreign),
            Answer::Resolution { pool: Some(5), result: Err(ErrorKind::ForeignPoolElement) }
        );
        let twice = response(&p, 5, &[p.static_pe_id(5, 1), p.static_pe_id(5, 1)]);
        assert_eq!(
            check_asap(&p, &twice),
            Answer::Resolution { pool: Some(5), result: Err(ErrorKind::DuplicatePoolElement) }
        );
        // Without the overall policy (RFC 5352 makes it optional: Round Robin): still an answer.
        let mut bare = MessageRepr::parse(&ok, Protocol::Asap).unwrap();
        bare.params.retain(|q| !matches!(q, ParamRepr::Policy(_)));
        let bare = bare.to_bytes().unwrap();
        assert_eq!(check_asap(&p, &bare), Answer::Resolution { pool: Some(5), result: Ok(()) });
        let empty = response(&p, 5, &[]);
        assert_eq!(check_asap(&p, &empty), Answer::Resolution { pool: Some(5), result: Err(ErrorKind::NoPoolElement) });
        let failed = MessageRepr::new(
            Protocol::Asap,
            MessageType::HandleResolutionResponse as u8,
            0,
            vec![
                ParamRepr::PoolHandle(p.handle(5).to_vec()),
                ParamRepr::OperationError(vec![CauseRepr { code: CauseCode(9), info: Vec::new() }]),
            ],
        )
        .to_bytes()
        .unwrap();
        assert_eq!(
            check_asap(&p, &failed),
            Answer::Resolution { pool: Some(5), result: Err(ErrorKind::ResolutionFailed) }
        );
        let mut stranger = response(&p, 5, &[p.static_pe_id(5, 0)]);
        stranger[12] = b'x'; // "xool-00005"
        assert_eq!(check_asap(&p, &stranger), Answer::Resolution { pool: None, result: Err(ErrorKind::Unexpected) });
    }

    #[test]
    fn registration_answers_and_others() {
        let p = plan();
        let emit = |t: MessageType, flags: u8, err: bool| {
            let mut v = Vec::new();
            let e = err.then_some((CauseCode(6), &b""[..]));
            asap::emit_handle_and_id(&mut Writer::new(&mut v), t, flags, p.handle(1), Some(42), e).unwrap();
            v
        };
        let ok = emit(MessageType::RegistrationResponse, 0, false);
        assert_eq!(check_asap(&p, &ok), Answer::Registration { pe_id: 42, result: Ok(()) });
        let rej = emit(MessageType::RegistrationResponse, asap::FLAG_REJECT, true);
        assert_eq!(check_asap(&p, &rej), Answer::Registration { pe_id: 42, result: Err(ErrorKind::Rejected) });
        let dereg = emit(MessageType::DeregistrationResponse, 0, false);
        assert_eq!(check_asap(&p, &dereg), Answer::Deregistration { pe_id: 42, result: Ok(()) });
        let dereg_err = emit(MessageType::DeregistrationResponse, 0, true);
        assert_eq!(check_asap(&p, &dereg_err), Answer::Deregistration { pe_id: 42, result: Err(ErrorKind::Rejected) });
        let mut ka = Vec::new();
        asap::emit_keep_alive(&mut Writer::new(&mut ka), true, 0x1234, p.handle(1), 42).unwrap();
        assert_eq!(check_asap(&p, &ka), Answer::KeepAlive { pool_handle: p.handle(1), pe_id: Some(42) });
        assert_eq!(check_asap(&p, p.resolve_request(1)), Answer::Other);
        assert_eq!(check_asap(&p, &[1, 0, 0, 3]), Answer::Malformed);
    }

    #[test]
    fn resp_replies() {
        assert_eq!(check_resp(b"$3\r\nabc\r\n$3", 3), Some((9, Ok(()))));
        assert_eq!(check_resp(b"$3\r\nabc\r", 3), None);
        assert_eq!(check_resp(b"$3\r\n", 3), None);
        assert_eq!(check_resp(b"$1", 3), None);
        assert_eq!(check_resp(b"$2\r\nab\r\n", 3), Some((8, Err(ErrorKind::BadReply))));
        assert_eq!(check_resp(b"$-1\r\n", 3), Some((5, Err(ErrorKind::BadReply))));
        assert_eq!(check_resp(b"-ERR wrong\r\n+OK", 3), Some((12, Err(ErrorKind::BadReply))));
        assert_eq!(check_resp(b"?what\r\n", 3), Some((7, Err(ErrorKind::Malformed))));
        let _ = resp_command(&[b"GET", b"k"]);
    }

    #[test]
    fn echo_replies() {
        assert_eq!(check_echo(b"rrrr"), Ok(()));
        assert_eq!(check_echo(b"rrxr"), Err(ErrorKind::BadReply));
    }
}
