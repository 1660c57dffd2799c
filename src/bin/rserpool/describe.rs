//! Human-readable and JSON descriptions of messages and their parts, for `rserpool decode`,
//! `register` and `resolve`.

use rserpool::wire::{
    asap, enrp, message_name, CauseRepr, MessageRepr, ParamRepr, ParamType, Policy, PolicyRepr, PoolElementRepr,
    Protocol, TransportProtocol, TransportRepr, TransportUse,
};
use serde_json::{json, Map, Value};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn id(v: u32) -> String {
    format!("0x{v:08x}")
}

/// A pool handle as text when it is printable ASCII, else `None`.
fn printable(bytes: &[u8]) -> Option<String> {
    (!bytes.is_empty() && bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' '))
        .then(|| String::from_utf8_lossy(bytes).into_owned())
}

fn load(v: u32) -> Value {
    json!({ "raw": id(v), "percent": (f64::from(v) * 10000.0 / f64::from(u32::MAX)).round() / 100.0 })
}

fn transport(t: &TransportRepr) -> Value {
    let mut m = Map::new();
    m.insert("protocol".into(), json!(t.protocol.name()));
    m.insert("port".into(), json!(t.port));
    if t.protocol.has_transport_use() {
        let u = match t.transport_use {
            TransportUse::DataOnly => "data only",
            TransportUse::DataPlusControl => "data plus control",
        };
        m.insert("transport_use".into(), json!(u));
    }
    if t.protocol == TransportProtocol::Dccp {
        m.insert("service_code".into(), json!(id(t.service_code)));
    }
    m.insert("addresses".into(), json!(t.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>()));
    Value::Object(m)
}

/// Describes a known policy (name, type and its values).
pub fn policy_json(p: &Policy) -> Value {
    let mut m = Map::new();
    let t = p.policy_type();
    m.insert("policy".into(), json!(t.name()));
    m.insert("policy_type".into(), json!(id(t.0)));
    match *p {
        Policy::RoundRobin | Policy::Random => {}
        Policy::WeightedRoundRobin { weight } | Policy::WeightedRandom { weight } => {
            m.insert("weight".into(), json!(weight));
        }
        Policy::Priority { priority } => {
            m.insert("priority".into(), json!(priority));
        }
        Policy::LeastUsed { load: l } | Policy::RandomizedLeastUsed { load: l } => {
            m.insert("load".into(), load(l));
        }
        Policy::LeastUsedDegradation { load: l, degradation } | Policy::PriorityLeastUsed { load: l, degradation } => {
            m.insert("load".into(), load(l));
            m.insert("load_degradation".into(), load(degradation));
        }
    }
    Value::Object(m)
}

fn policy(p: &PolicyRepr) -> Value {
    match p {
        PolicyRepr::Known(p) => policy_json(p),
        PolicyRepr::Unknown { policy_type, values } => {
            json!({ "policy": "unknown", "policy_type": id(policy_type.0), "values": hex(values) })
        }
    }
}

/// Describes a Pool Element.
pub fn pool_element_json(pe: &PoolElementRepr) -> Value {
    let mut m = Map::new();
    m.insert("pe_id".into(), json!(id(pe.pe_id)));
    m.insert("home_registrar".into(), json!(id(pe.home_registrar)));
    m.insert(
        "registration_life_ms".into(),
        if pe.registration_life < 0 { json!("infinite") } else { json!(pe.registration_life) },
    );
    m.insert("user_transport".into(), transport(&pe.user_transport));
    m.insert("policy".into(), policy(&pe.policy));
    if let Some(t) = &pe.asap_transport {
        m.insert("asap_transport".into(), transport(t));
    }
    Value::Object(m)
}

fn causes(cs: &[CauseRepr]) -> Value {
    Value::Array(
        cs.iter()
            .map(|c| {
                let mut m = Map::new();
                m.insert("code".into(), json!(format!("0x{:x}", c.code.0)));
                m.insert("cause".into(), json!(c.code.name().unwrap_or("unknown")));
                if !c.info.is_empty() {
                    m.insert("info".into(), json!(hex(&c.info)));
                }
                Value::Object(m)
            })
            .collect(),
    )
}

fn param(p: &ParamRepr) -> Value {
    let (t, body) = match p {
        ParamRepr::Address(a) => (
            if a.is_ipv4() { ParamType::IPV4_ADDRESS } else { ParamType::IPV6_ADDRESS },
            json!({ "address": a.to_string() }),
        ),
        ParamRepr::Transport(t) => (t.protocol.param_type(), transport(t)),
        ParamRepr::Policy(p) => (ParamType::POLICY, policy(p)),
        ParamRepr::PoolHandle(h) => {
            let mut m = Map::new();
            if let Some(s) = printable(h) {
                m.insert("handle".into(), json!(s));
            }
            m.insert("hex".into(), json!(hex(h)));
            m.insert("length".into(), json!(h.len()));
            (ParamType::POOL_HANDLE, Value::Object(m))
        }
        ParamRepr::PoolElement(pe) => (ParamType::POOL_ELEMENT, pool_element_json(pe)),
        ParamRepr::ServerInformation(si) => (
            ParamType::SERVER_INFORMATION,
            json!({ "server_id": id(si.server_id), "transport": transport(&si.transport) }),
        ),
        ParamRepr::OperationError(cs) => (ParamType::OPERATION_ERROR, json!({ "causes": causes(cs) })),
        ParamRepr::Cookie(c) => (ParamType::COOKIE, json!({ "cookie": hex(c), "length": c.len() })),
        ParamRepr::PeIdentifier(v) => (ParamType::PE_IDENTIFIER, json!({ "pe_id": id(*v) })),
        ParamRepr::PeChecksum(c) => (ParamType::PE_CHECKSUM, json!({ "checksum": format!("0x{c:04x}") })),
        ParamRepr::HandleResolutionOption(n) => (ParamType::HANDLE_RESOLUTION_OPTION, json!({ "items": n })),
        ParamRepr::Raw { param_type, value } => {
            let t = ParamType(*param_type);
            let action = format!("{:?}", t.unknown_action());
            (t, json!({ "unknown": true, "action": action, "value": hex(value) }))
        }
    };
    let mut m = Map::new();
    m.insert("param".into(), json!(t.name().unwrap_or("unknown")));
    m.insert("param_type".into(), json!(format!("0x{:04x}", t.0)));
    if let Value::Object(fields) = body {
        m.extend(fields);
    }
    Value::Object(m)
}

fn flag_names(protocol: Protocol, message_type: u8, flags: u8) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut add = |bit: u8, name| {
        if flags & bit != 0 {
            out.push(name);
        }
    };
    match (protocol, message_type) {
        (Protocol::Asap, 0x03) => add(asap::FLAG_REJECT, "R (rejected)"),
        (Protocol::Asap, 0x07) => add(asap::FLAG_HOME, "H (home registrar)"),
        (Protocol::Enrp, 0x01) => add(enrp::FLAG_REPLY_REQUIRED, "R (reply required)"),
        (Protocol::Enrp, 0x02) => add(enrp::FLAG_OWN_CHILDREN_ONLY, "W (own children only)"),
        (Protocol::Enrp, 0x03) => {
            add(enrp::FLAG_REJECT, "R (rejected)");
            add(enrp::FLAG_MORE, "M (more to send)");
        }
        (Protocol::Enrp, 0x04) => add(enrp::FLAG_TAKEOVER_SUGGESTED, "T (takeover suggested)"),
        (Protocol::Enrp, 0x06) => add(enrp::FLAG_REJECT, "R (rejected)"),
        _ => {}
    }
    out
}

/// Describes a whole message as JSON: protocol, type, flags, fixed fields and every parameter.
pub fn to_json(m: &MessageRepr) -> Value {
    let mut o = Map::new();
    o.insert("protocol".into(), json!(m.protocol.to_string()));
    o.insert("type".into(), json!(format!("0x{:02x}", m.message_type)));
    o.insert("type_name".into(), json!(message_name(m.protocol, m.message_type)));
    o.insert("flags".into(), json!(format!("0x{:02x}", m.flags)));
    o.insert("flag_names".into(), json!(flag_names(m.protocol, m.message_type, m.flags)));
    let words = &m.fixed;
    match m.protocol {
        Protocol::Asap => {
            if let Some(s) = words.first() {
                o.insert("server_id".into(), json!(id(*s)));
            }
        }
        Protocol::Enrp => {
            if words.len() >= 2 {
                o.insert("sender".into(), json!(id(words[0])));
                o.insert("receiver".into(), json!(id(words[1])));
            }
            if let Some(w) = words.get(2) {
                if m.message_type == enrp::MessageType::HandleUpdate as u8 {
                    let action = match w >> 16 {
                        0 => "add PE",
                        1 => "delete PE",
                        _ => "unknown",
                    };
                    o.insert("update_action".into(), json!(action));
                } else {
                    o.insert("target".into(), json!(id(*w)));
                }
            }
        }
    }
    o.insert("params".into(), Value::Array(m.params.iter().map(param).collect()));
    if let Some(note) = left_out(m) {
        o.insert("note".into(), json!(note));
    }
    Value::Object(o)
}

/// What an optional parameter that the message leaves out means (WIRE.md section 6).
fn left_out(m: &MessageRepr) -> Option<&'static str> {
    let has = |f: fn(&ParamRepr) -> bool| m.params.iter().any(f);
    match (m.protocol, asap::MessageType::from_u8(m.message_type)) {
        (Protocol::Asap, Some(asap::MessageType::HandleResolutionResponse))
            if !has(|p| matches!(p, ParamRepr::Policy(_) | ParamRepr::OperationError(_))) =>
        {
            Some("no overall policy: the pool's policy is Round Robin (RFC 5352 section 2.2.6)")
        }
        (Protocol::Asap, Some(asap::MessageType::EndpointKeepAlive))
            if !has(|p| matches!(p, ParamRepr::PeIdentifier(_))) =>
        {
            Some("no PE Identifier: addressed to every PE of the connection")
        }
        _ => None,
    }
}

/// Renders a JSON description as an indented, human-readable tree.
pub fn to_text(v: &Value) -> String {
    let mut out = String::new();
    render(v, 0, &mut out);
    out
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some("-".into()),
        Value::Array(a) if a.iter().all(|x| x.is_string() || x.is_number()) => {
            Some(a.iter().filter_map(scalar).collect::<Vec<_>>().join(", "))
        }
        Value::Object(o) if o.contains_key("percent") => {
            Some(format!("{} ({}%)", scalar(&o["raw"]).unwrap_or_default(), scalar(&o["percent"]).unwrap_or_default()))
        }
        _ => None,
    }
}

fn render(v: &Value, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                if matches!(k.as_str(), "param" | "param_type" | "cause" | "code")
                    || x.as_array().is_some_and(|a| a.is_empty())
                {
                    continue;
                }
                match scalar(x) {
                    Some(s) => out.push_str(&format!("{pad}{k}: {s}\n")),
                    None => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        render(x, depth + 1, out);
                    }
                }
            }
        }
        Value::Array(a) => {
            for x in a {
                match (x.get("param"), x.get("param_type"), x.get("cause"), x.get("code")) {
                    (Some(n), Some(t), _, _) | (_, _, Some(n), Some(t)) => {
                        let (n, t) = (scalar(n).unwrap_or_default(), scalar(t).unwrap_or_default());
                        out.push_str(&format!("{pad}- {n} ({t})\n"));
                    }
                    _ => out.push_str(&format!("{pad}-\n")),
                }
                render(x, depth + 1, out);
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other).unwrap_or_default())),
    }
}
