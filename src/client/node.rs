//! The cores put together per role, as the [`Node`]s adapters drive: [`PeNode`] (a PE's
//! registrations and the sessions PUs open to it) and [`PuNode`] (a PU's resolutions, cache and
//! failover sessions).

use core::net::SocketAddr;
use std::collections::VecDeque;

use super::config::SessionConfig;
use super::pe::{PeConfig, PeCore, PeEvent};
use super::pu::{PuConfig, PuCore, PuEvent};
use super::server::{ServerEvent, SessionServer};
use super::session::{SessionCore, SessionEvent, SessionId, SessionRequest};
use super::{ConnToken, Ctx, Io, Listener, Node};
use crate::time::Time;

/// What a [`PeNode`] tells its application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeNodeEvent {
    /// About the registrations.
    Pe(PeEvent),
    /// About the sessions PUs opened.
    Session(ServerEvent),
}

/// A pool element: its registrations ([`PeCore`]) and its sessions ([`SessionServer`]).
#[derive(Debug)]
pub struct PeNode {
    /// Where the parts write their network actions.
    pub cx: Ctx,
    /// The registrations.
    pub pe: PeCore,
    /// The sessions.
    pub server: SessionServer,
}

impl PeNode {
    /// A PE with no registration yet.
    pub fn new(pe: PeConfig, sessions: SessionConfig) -> Self {
        Self { cx: Ctx::new(), pe: PeCore::new(pe), server: SessionServer::new(sessions) }
    }
}

impl Node for PeNode {
    type Event = PeNodeEvent;

    fn on_connected(&mut self, conn: ConnToken, now: Time) {
        self.pe.on_connected(&mut self.cx, conn, now);
    }

    fn on_data(&mut self, conn: ConnToken, data: &[u8], now: Time) {
        if self.pe.owns(conn) {
            self.pe.on_data(&mut self.cx, conn, data, now);
        } else {
            self.server.on_data(&mut self.cx, conn, data, now);
        }
    }

    fn on_closed(&mut self, conn: ConnToken, now: Time) {
        if self.pe.owns(conn) {
            self.pe.on_closed(&mut self.cx, conn, now);
        } else {
            self.server.on_closed(conn);
        }
    }

    fn on_accepted(&mut self, conn: ConnToken, listener: Listener, peer: SocketAddr, now: Time) {
        match listener {
            Listener::Session => self.server.on_accepted(&mut self.cx, conn, peer, now),
            Listener::Asap => self.pe.on_accepted(&mut self.cx, conn, peer),
        }
    }

    fn on_datagram(&mut self, data: &[u8], from: SocketAddr, now: Time) {
        self.pe.table().on_announce(data, from, now);
    }

    fn on_timer(&mut self, now: Time) {
        self.pe.on_timer(&mut self.cx, now);
        self.server.on_timer(&mut self.cx, now);
    }

    fn next_deadline(&self) -> Option<Time> {
        super::earliest(self.pe.next_deadline(), self.server.next_deadline())
    }

    fn poll_io(&mut self) -> Option<Io> {
        self.cx.poll_io()
    }

    fn poll_event(&mut self) -> Option<PeNodeEvent> {
        if let Some(e) = self.pe.poll_event() {
            return Some(PeNodeEvent::Pe(e));
        }
        self.server.poll_event().map(PeNodeEvent::Session)
    }

    fn refuse(&mut self, conn: ConnToken) {
        self.cx.close(conn);
    }
}

/// What a [`PuNode`] tells its application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PuNodeEvent {
    /// A resolution's outcome (name-service mode).
    Pu(PuEvent),
    /// About one session (failover mode).
    Session(SessionId, SessionEvent),
}

/// Most sessions one [`PuNode`] keeps open.
pub const MAX_SESSIONS: usize = 4096;

/// A pool user: resolutions and cache ([`PuCore`]) and its sessions ([`SessionCore`]).
#[derive(Debug)]
pub struct PuNode {
    /// Where the parts write their network actions.
    pub cx: Ctx,
    /// Resolutions, cache, reports.
    pub pu: PuCore,
    sessions: Vec<SessionCore>,
    /// Sessions waiting for candidates, by pool.
    waiting: Vec<(SessionId, Vec<u8>)>,
    next_session: u64,
    events: VecDeque<PuNodeEvent>,
}

impl PuNode {
    /// A pool user with no session yet.
    pub fn new(config: PuConfig, now: Time) -> Self {
        Self {
            cx: Ctx::new(),
            pu: PuCore::new(config, now),
            sessions: Vec::new(),
            waiting: Vec::new(),
            next_session: 0,
            events: VecDeque::new(),
        }
    }

    /// Resolves a pool (name-service mode); the outcome is a [`PuNodeEvent::Pu`].
    pub fn resolve(&mut self, pool_handle: &[u8], fresh: bool, now: Time) {
        self.pu.resolve(&mut self.cx, pool_handle, fresh, now);
        self.pump(now);
    }

    /// Reports a PE unreachable.
    pub fn report_unreachable(&mut self, pool_handle: &[u8], pe_id: u32, now: Time) {
        self.pu.report_unreachable(&mut self.cx, pool_handle, pe_id, now);
    }

    /// Opens a failover session with a pool; `None` beyond [`MAX_SESSIONS`].
    pub fn open_session(&mut self, pool_handle: &[u8], cfg: SessionConfig, now: Time) -> Option<SessionId> {
        if self.sessions.len() >= MAX_SESSIONS {
            return None;
        }
        self.next_session += 1;
        let id = SessionId(self.next_session);
        self.sessions.push(SessionCore::new(id, pool_handle.to_vec(), cfg));
        self.pump(now);
        Some(id)
    }

    /// Opens a session like [`PuNode::open_session`] and hands its id to `route` at once (an
    /// adapter's event routing), before any event of the session leaves the node.
    pub fn open_routed(
        &mut self,
        pool_handle: &[u8],
        cfg: SessionConfig,
        now: Time,
        route: impl FnOnce(SessionId),
    ) -> Option<SessionId> {
        let id = self.open_session(pool_handle, cfg, now)?;
        route(id);
        Some(id)
    }

    /// A session, to send on it or look at it.
    pub fn session(&mut self, id: SessionId) -> Option<&mut SessionCore> {
        self.sessions.iter_mut().find(|s| s.id() == id)
    }

    /// Runs `f` on session `id` with the node's context (sending, closing), then lets the
    /// node react; `None` when there is no such session.
    pub fn with_session<R>(
        &mut self,
        id: SessionId,
        now: Time,
        f: impl FnOnce(&mut SessionCore, &mut Ctx) -> R,
    ) -> Option<R> {
        let i = self.sessions.iter().position(|s| s.id() == id)?;
        let r = f(&mut self.sessions[i], &mut self.cx);
        self.pump(now);
        Some(r)
    }

    /// Closes and forgets a session.
    pub fn close_session(&mut self, id: SessionId) {
        if let Some(i) = self.sessions.iter().position(|s| s.id() == id) {
            let mut s = self.sessions.swap_remove(i);
            s.close(&mut self.cx);
        }
        self.waiting.retain(|(s, _)| *s != id);
    }

    /// Passes requests between the sessions and the PU core until nothing moves (bounded).
    fn pump(&mut self, now: Time) {
        for _ in 0..64 {
            let mut moved = false;
            for i in 0..self.sessions.len() {
                while let Some(req) = self.sessions[i].poll_request() {
                    moved = true;
                    let id = self.sessions[i].id();
                    let pool = self.sessions[i].pool_handle().to_vec();
                    match req {
                        SessionRequest::Candidates { fresh } => {
                            self.waiting.retain(|(s, _)| *s != id);
                            self.waiting.push((id, pool.clone()));
                            self.pu.resolve(&mut self.cx, &pool, fresh, now);
                        }
                        SessionRequest::Unreachable { pe_id } => {
                            self.pu.report_unreachable(&mut self.cx, &pool, pe_id, now)
                        }
                    }
                }
                while let Some(ev) = self.sessions[i].poll_event() {
                    self.events.push_back(PuNodeEvent::Session(self.sessions[i].id(), ev));
                }
            }
            while let Some(ev) = self.pu.poll_event() {
                moved = true;
                let (pool, pes, fresh) = match &ev {
                    PuEvent::Resolved { pool_handle, pes, from_cache, .. } => {
                        (pool_handle.clone(), pes.clone(), !from_cache)
                    }
                    PuEvent::Failed { pool_handle, .. } => (pool_handle.clone(), Vec::new(), true),
                };
                let ready: Vec<SessionId> = self.waiting.iter().filter(|(_, p)| *p == pool).map(|(s, _)| *s).collect();
                self.waiting.retain(|(_, p)| *p != pool);
                for id in ready {
                    if let Some(s) = self.sessions.iter_mut().find(|s| s.id() == id) {
                        s.offer(&mut self.cx, &pes, now);
                    }
                }
                let _ = fresh;
                self.events.push_back(PuNodeEvent::Pu(ev));
            }
            if !moved {
                return;
            }
        }
    }

    fn session_of(&mut self, conn: ConnToken) -> Option<&mut SessionCore> {
        self.sessions.iter_mut().find(|s| s.owns(conn))
    }
}

impl Node for PuNode {
    type Event = PuNodeEvent;

    fn on_connected(&mut self, conn: ConnToken, now: Time) {
        if self.pu.owns(conn) {
            self.pu.on_connected(&mut self.cx, conn, now);
        } else if let Some(i) = self.sessions.iter().position(|s| s.owns(conn)) {
            self.sessions[i].on_connected(&mut self.cx, conn, now);
        }
        self.pump(now);
    }

    fn on_data(&mut self, conn: ConnToken, data: &[u8], now: Time) {
        if self.pu.owns(conn) {
            self.pu.on_data(&mut self.cx, conn, data, now);
        } else if let Some(i) = self.sessions.iter().position(|s| s.owns(conn)) {
            self.sessions[i].on_data(&mut self.cx, conn, data, now);
        }
        self.pump(now);
    }

    fn on_closed(&mut self, conn: ConnToken, now: Time) {
        if self.pu.owns(conn) {
            self.pu.on_closed(&mut self.cx, conn, now);
        } else if let Some(i) = self.sessions.iter().position(|s| s.owns(conn)) {
            self.sessions[i].on_closed(&mut self.cx, conn, now);
        }
        self.pump(now);
    }

    fn on_datagram(&mut self, data: &[u8], from: SocketAddr, now: Time) {
        self.pu.table().on_announce(data, from, now);
    }

    fn on_timer(&mut self, now: Time) {
        self.pu.on_timer(&mut self.cx, now);
        for s in &mut self.sessions {
            if s.next_deadline().is_some_and(|d| d <= now) {
                s.on_timer(&mut self.cx, now);
            }
        }
        self.pump(now);
    }

    fn next_deadline(&self) -> Option<Time> {
        self.sessions.iter().fold(self.pu.next_deadline(), |d, s| super::earliest(d, s.next_deadline()))
    }

    fn poll_io(&mut self) -> Option<Io> {
        self.cx.poll_io()
    }

    fn poll_event(&mut self) -> Option<PuNodeEvent> {
        self.events.pop_front()
    }

    fn refuse(&mut self, conn: ConnToken) {
        self.cx.close(conn);
    }
}

impl PuNode {
    /// The session that owns `conn`, if any (for adapters and tests).
    pub fn session_for(&mut self, conn: ConnToken) -> Option<SessionId> {
        self.session_of(conn).map(|s| s.id())
    }
}
