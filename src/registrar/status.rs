//! `rserpool status`: what a registrar tells an operator about itself, asked over its ASAP
//! port with a private message type that only loopback addresses may send (the answer names
//! peers and counts, nothing a pool user needs). Request: message type [`STATUS_REQUEST`], no
//! body. Answer: message type [`STATUS_RESPONSE`], the [`StatusReport`] as TOML text.

use serde::{Deserialize, Serialize};

use crate::enrp::{EnrpStatus, PeerStatus};

/// Message type of a status request (outside RFC 5352's assignments; private use).
pub const STATUS_REQUEST: u8 = 0xC0;
/// Message type of the answer.
pub const STATUS_RESPONSE: u8 = 0xC1;

/// A registrar's state as `rserpool status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Server id, as hex.
    pub server_id: String,
    /// `joining` (still getting the mesh's handle table from a mentor), `consistent`, or
    /// `alone` (ENRP off).
    pub state: String,
    /// Shards (threads) serving.
    pub shards: u16,
    /// PEs this registrar is home of.
    pub pes_owned: u64,
    /// PEs learnt from peers.
    pub pes_of_peers: u64,
    /// Pools.
    pub pools: u64,
    /// This registrar's PE checksum as announced to peers, as hex.
    pub own_checksum: String,
    /// Peers.
    pub peers: Vec<PeerReport>,
    /// Handle Updates written to peers.
    pub updates_sent: u64,
    /// Handle Updates received.
    pub updates_received: u64,
    /// Audits made.
    pub audits: u64,
    /// Audits that found a mismatch.
    pub mismatches: u64,
    /// Takeovers completed here.
    pub takeovers: u64,
}

/// One peer in a [`StatusReport`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    /// Server id, as hex.
    pub id: String,
    /// ENRP address, when known.
    pub address: String,
    /// Connected now.
    pub connected: bool,
    /// Milliseconds since last heard.
    pub last_heard_ms: u64,
    /// The checksum of its PEs it announced last, as hex (empty before its first Presence).
    pub announced_checksum: String,
    /// The checksum of its PEs held here at the last audit, as hex.
    pub local_checksum: String,
    /// Its PEs held here at the last audit.
    pub local_pes: u64,
}

impl From<&PeerStatus> for PeerReport {
    fn from(p: &PeerStatus) -> Self {
        let hex = |v: Option<u16>| v.map(|v| format!("{v:#06x}")).unwrap_or_default();
        Self {
            id: format!("{:#010x}", p.id),
            address: p.addr.clone().unwrap_or_default(),
            connected: p.connected,
            last_heard_ms: p.last_heard_ms,
            announced_checksum: hex(p.announced_checksum),
            local_checksum: hex(p.local_checksum),
            local_pes: p.local_pes.unwrap_or(0),
        }
    }
}

impl StatusReport {
    /// Fills in the ENRP part.
    pub fn with_enrp(mut self, e: &EnrpStatus) -> Self {
        self.state = e.state.clone();
        self.own_checksum = format!("{:#06x}", e.own_checksum);
        self.peers = e.peers.iter().map(PeerReport::from).collect();
        self.updates_sent = e.updates_sent;
        self.updates_received = e.updates_received;
        self.audits = e.audits;
        self.mismatches = e.mismatches;
        self.takeovers = e.takeovers;
        self
    }

    /// The answer message.
    pub fn to_message(&self) -> Vec<u8> {
        let text = toml::to_string(self).unwrap_or_default();
        let len = (4 + text.len()).min(u16::MAX as usize);
        let mut m = vec![STATUS_RESPONSE, 0];
        m.extend_from_slice(&(len as u16).to_be_bytes());
        m.extend_from_slice(&text.as_bytes()[..len - 4]);
        m
    }

    /// Reads an answer message.
    pub fn from_message(m: &[u8]) -> Result<Self, String> {
        if m.first() != Some(&STATUS_RESPONSE) || m.len() < 4 {
            return Err("not a status answer".into());
        }
        let text = std::str::from_utf8(&m[4..]).map_err(|e| e.to_string())?;
        toml::from_str(text).map_err(|e| e.to_string())
    }
}
