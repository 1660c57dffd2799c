//! Registration checks (docs/SECURITY.md): whether a connection may register the addresses a
//! PE names. Without one, anyone who reaches the port could point a pool at any address (or
//! make the registrar dial one, through the ASAP transport of a PE it later takes over).

use core::net::IpAddr;

use ipnet::IpNet;

use crate::config::{RegistrationCheck, Security};
use crate::wire::TransportRepr;

/// The registration rule of one registrar.
#[derive(Clone, Debug, Default)]
pub struct Authorizer {
    check: RegistrationCheck,
    allowlist: Vec<IpNet>,
}

impl Authorizer {
    /// The rule `security` configures.
    pub fn new(security: &Security) -> Self {
        Self { check: security.registration_check, allowlist: security.registration_allowlist.clone() }
    }

    /// Whether a connection from `source` may register a PE with transports `user` and `asap`
    /// (the ASAP transport only when the PE named one: the one filled in from the connection
    /// is the source itself). Unspecified addresses have been replaced by the source already.
    pub fn may_register(&self, source: IpAddr, user: &TransportRepr, asap: Option<&TransportRepr>) -> bool {
        let mut transports = core::iter::once(user).chain(asap);
        match self.check {
            RegistrationCheck::Off => true,
            // Every transport must name the source: the other legs of a multi-homed PE are
            // free, but a PE cannot be registered from a host that is none of its own.
            RegistrationCheck::Source => {
                let source = source.to_canonical();
                transports.all(|t| t.addresses.iter().any(|a| a.to_canonical() == source))
            }
            RegistrationCheck::Allowlist => transports
                .all(|t| t.addresses.iter().all(|a| self.allowlist.iter().any(|n| n.contains(&a.to_canonical())))),
        }
    }
}

/// Whether an ENRP connection from `source` is admitted: loopback, the address of a configured
/// peer, or inside the configured allowlist (docs/SECURITY.md). A registrar that only learnt of
/// a peer from the mesh dials it itself, so admitting configured peers only loses no link.
pub fn peer_admitted(source: IpAddr, peers: &[core::net::SocketAddr], allowlist: &[IpNet]) -> bool {
    let source = source.to_canonical();
    source.is_loopback()
        || peers.iter().any(|p| p.ip().to_canonical() == source)
        || allowlist.iter().any(|n| n.contains(&source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::TransportProtocol;

    fn tcp(addrs: &[&str]) -> TransportRepr {
        let mut t = TransportRepr::new(TransportProtocol::Tcp, addrs[0].parse().unwrap(), 80);
        for a in &addrs[1..] {
            t.addresses.push(a.parse().unwrap());
        }
        t
    }

    fn rule(check: RegistrationCheck, allow: &[&str]) -> Authorizer {
        let security = Security {
            registration_check: check,
            registration_allowlist: allow.iter().map(|n| n.parse().unwrap()).collect(),
            ..Security::default()
        };
        Authorizer::new(&security)
    }

    #[test]
    fn source_must_be_one_of_the_addresses() {
        let a = rule(RegistrationCheck::Source, &[]);
        let src: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(a.may_register(src, &tcp(&["192.0.2.7"]), None));
        assert!(a.may_register(src, &tcp(&["198.51.100.1", "192.0.2.7"]), None), "other legs are free");
        assert!(!a.may_register(src, &tcp(&["198.51.100.1"]), None));
        assert!(!a.may_register(src, &tcp(&["192.0.2.7"]), Some(&tcp(&["198.51.100.1"]))), "ASAP transport too");
        assert!(a.may_register(src, &tcp(&["192.0.2.7"]), Some(&tcp(&["192.0.2.7"]))));
        // A dual-stack listener sees IPv4 clients as IPv4-mapped IPv6 addresses.
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(a.may_register(mapped, &tcp(&["192.0.2.7"]), None));
    }

    #[test]
    fn allowlist_covers_every_address() {
        let a = rule(RegistrationCheck::Allowlist, &["10.0.0.0/8", "2001:db8::/32"]);
        let src: IpAddr = "203.0.113.1".parse().unwrap();
        assert!(a.may_register(src, &tcp(&["10.1.2.3", "2001:db8::1"]), None));
        assert!(!a.may_register(src, &tcp(&["10.1.2.3", "192.0.2.1"]), None), "one leg outside");
        assert!(!a.may_register(src, &tcp(&["10.1.2.3"]), Some(&tcp(&["192.0.2.1"]))));
    }

    #[test]
    fn off_allows_anything() {
        let a = rule(RegistrationCheck::Off, &[]);
        assert!(a.may_register("203.0.113.1".parse().unwrap(), &tcp(&["10.1.2.3"]), None));
    }

    #[test]
    fn peers_from_loopback_configured_or_allowlisted() {
        let peers = ["192.0.2.1:9901".parse().unwrap()];
        let allow: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        for (src, admitted) in [
            ("127.0.0.5", true),
            ("::1", true),
            ("192.0.2.1", true),
            ("::ffff:192.0.2.1", true),
            ("10.0.0.200", true),
            ("10.0.1.1", false),
            ("192.0.2.2", false),
        ] {
            assert_eq!(peer_admitted(src.parse().unwrap(), &peers, &allow), admitted, "{src}");
        }
    }
}
