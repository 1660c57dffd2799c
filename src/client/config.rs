//! The client's timers and limits (WIRE.md section 8), all in milliseconds, with the RFC 5352
//! defaults, and the session layer's settings.

/// Protocol timers and retry counts of pool elements and pool users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timers {
    /// T1-ENRPrequest: how long a PU waits for a Handle Resolution Response.
    pub t1_request: u64,
    /// T2-registration: how long a PE waits for a Registration Response.
    pub t2_registration: u64,
    /// T3-deregistration: how long a PE waits for a Deregistration Response.
    pub t3_deregistration: u64,
    /// T4-reregistration: the re-registration period (shortened to the registration life
    /// minus 20 s when that is shorter; half the life for lives of 40 s or less).
    pub t4_reregistration: u64,
    /// T5-serverhunt: how long a client hunts for a registrar before it reports failure (it
    /// goes on hunting; the application decides whether to give up).
    pub t5_server_hunt: u64,
    /// T7-ENRPoutdate: a registrar learnt from a Server Announce is forgotten after this long
    /// without another announce.
    pub t7_outdate: u64,
    /// MAX-REG-ATTEMPT: registration tries at one registrar before hunting another.
    pub max_reg_attempts: u32,
    /// MAX-REQUEST-RETRANSMIT: resolution retries at one registrar before hunting another.
    pub max_request_retransmit: u32,
    /// Stale cache value: how long a PU uses a resolution from its cache (0: no cache).
    pub stale_cache: u64,
    /// How long one connection attempt to a registrar may take (not an RFC timer).
    pub connect_timeout: u64,
    /// Pause after every known registrar failed once, before the hunt tries them again.
    pub hunt_retry: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            t1_request: 15_000,
            t2_registration: 30_000,
            t3_deregistration: 30_000,
            t4_reregistration: 600_000,
            t5_server_hunt: 120_000,
            t7_outdate: 5_000,
            max_reg_attempts: 2,
            max_request_retransmit: 2,
            stale_cache: 30_000,
            connect_timeout: 5_000,
            hunt_retry: 1_000,
        }
    }
}

impl Timers {
    /// The re-registration period of a PE whose registration life is `life` ms (negative: no
    /// expiry).
    pub fn reregistration_period(&self, life: i32) -> u64 {
        let t4 = self.t4_reregistration.max(1);
        match u64::try_from(life) {
            Err(_) => t4,
            Ok(l) if l > 40_000 => t4.min(l - 20_000),
            Ok(l) => t4.min((l / 2).max(1)),
        }
    }
}

/// Settings of the PU↔PE session layer (`docs/session-layer.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// How often the PU sends a heartbeat request on an open session.
    pub heartbeat_interval: u64,
    /// How long the PU waits, after a heartbeat request, for anything from the PE before it
    /// declares the PE failed and fails over.
    pub heartbeat_timeout: u64,
    /// Retrieval: messages the PE had not acknowledged when it failed are re-sent to the next
    /// PE (with the resend flag). Off: they are handed back to the application and never sent
    /// again (at most once).
    pub retrieval: bool,
    /// Most messages kept unacknowledged; a send beyond is refused (`SendError::Full`).
    pub max_unacked: usize,
    /// Most payload bytes kept unacknowledged; a send beyond is refused.
    pub max_unacked_bytes: usize,
    /// Largest frame payload accepted or sent; a larger frame is bad input.
    pub max_payload: usize,
    /// How long a connection attempt to a PE may take before the next candidate is tried.
    pub connect_timeout: u64,
    /// Pause before asking the registrar again when no candidate PE could be reached.
    pub retry_delay: u64,
    /// PE side: a session silent for this long is closed (0: never).
    pub idle_timeout: u64,
    /// PE side: most sessions open at once; more are refused.
    pub max_sessions: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: 1_000,
            heartbeat_timeout: 1_000,
            retrieval: true,
            max_unacked: 4096,
            max_unacked_bytes: 16 << 20,
            max_payload: 1 << 20,
            connect_timeout: 2_000,
            retry_delay: 500,
            idle_timeout: 60_000,
            max_sessions: 1024,
        }
    }
}
