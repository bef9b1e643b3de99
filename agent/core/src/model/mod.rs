//! The connection model: turns kernel facts into connection lifecycles.
//!
//! It follows each connection on a watched port from open to close, decides how it ended, and
//! what happened after each idle gap: the path let the connection through (the peer was heard
//! from again), or it cut it (a RST in answer, retransmissions into nothing, ICMP errors).
//! Some facts arrive a moment after the one they explain (the RST an abort sends comes after
//! the state change to CLOSE, a middlebox's RST right after the segment that ended a silence),
//! so closes and peer-ended gaps wait a short grace period before they are settled. Everything
//! here is plain data and unit-tested; the only clock is the kernel's, passed in.

pub mod cadence;
mod classify;
mod lifecycle;
mod origin;
mod pmtu;
mod scan;
mod table;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    sync::Arc,
};

pub use self::{
    cadence::Cadence, classify::icmp_errno_name, origin::ResetVerdict, pmtu::PmtuClues,
};
use self::{
    classify::Closing,
    table::{Connection, ConnectionTable},
};
use crate::{
    events::{Endpoints, Nanos},
    own::OwnConnections,
    own::OwnNotice,
    scan::Owner,
    settings::PortMap,
};
use idlecut_api::vocabulary::{Direction, End, KeepaliveSetting, Role, Signature, StallOutcome};

/// How long a closed connection, or a gap the peer ended, waits for late facts (RST sent,
/// errno, a middlebox's RST). The kernel emits them microseconds after; this leaves room for a
/// slow reader.
pub const CLOSE_GRACE_NS: Nanos = 100_000_000;
/// Closes remembered during one scan: at 20,000 connections a second (40,000 ends), a scan of
/// six seconds. Past it, a connection that closed after the scan read it may come back as
/// discovered, and be settled by the next scan.
const CLOSES_DURING_SCAN_MAX: usize = 1 << 18;

/// Closed connections stay in the per-connection view this long, and at most this many.
pub const RECENTLY_CLOSED_NS: Nanos = 300_000_000_000;
pub const RECENTLY_CLOSED_MAX: usize = 1024;
/// What the aggregation layer needs to know about a connection: which path it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub service: Arc<str>,
    pub role: Role,
    pub remote: IpAddr,
}

/// A connection's service and role, as the model keeps them: with its remote address (in its
/// endpoints) they make its identity. Four bytes per connection instead of an identity's
/// forty; made only by `Services::kind`, so its service is always one of the model's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    service: u16,
    role: Role,
}

/// The watched services by port, each name once: the identities of all the connections of a
/// service share its name.
#[derive(Debug)]
pub struct Services {
    names: Vec<Arc<str>>,
    by_port: HashMap<u16, u16>,
}

impl Services {
    pub fn new(ports: &PortMap) -> Self {
        let mut names: Vec<Arc<str>> = Vec::new();
        let mut by_port = HashMap::new();
        for port in ports.ports() {
            let Some(name) = ports.service(port) else {
                continue;
            };
            let index = match names.iter().position(|known| **known == *name) {
                Some(index) => index,
                None => {
                    names.push(Arc::from(name));
                    names.len() - 1
                }
            };
            // At most one name per port, and there are 65535 ports.
            if let Ok(index) = u16::try_from(index) {
                by_port.insert(port, index);
            }
        }
        Self { names, by_port }
    }

    /// Which service a connection is and in which role, or None if neither port is watched.
    pub fn kind(&self, endpoints: &Endpoints) -> Option<Kind> {
        self.kind_as(endpoints, None)
    }

    /// The same, in the role the kernel saw, when it saw it: a client whose ephemeral port
    /// happens to be a watched one (4190, sieve) is still the client of the remote service.
    pub fn kind_as(&self, endpoints: &Endpoints, role: Option<Role>) -> Option<Kind> {
        let by_role = |role: Role| {
            let port = match role {
                Role::Server => endpoints.local.port(),
                Role::Client => endpoints.remote.port(),
            };
            self.by_port
                .get(&port)
                .map(|&service| Kind { service, role })
        };
        match role {
            Some(role) => by_role(role),
            // Unknown direction (a scanned connection): the watched local port wins.
            None => by_role(Role::Server).or_else(|| by_role(Role::Client)),
        }
    }

    /// The identity of a connection of this kind with this remote address.
    pub fn identity(&self, kind: Kind, remote: IpAddr) -> Identity {
        Identity {
            // In range: `kind` made it from `names` (see `Kind`).
            service: Arc::clone(&self.names[usize::from(kind.service)]),
            role: kind.role,
            remote,
        }
    }
}

/// What the model tells the layers after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    Opened(Identity),
    /// Found already open by a scan (its start was not seen).
    Discovered(Identity),
    /// A connection's keepalive setting became known or changed.
    KeepaliveChanged {
        identity: Identity,
        from: Option<KeepaliveSetting>,
        to: KeepaliveSetting,
    },
    /// A RST went `Direction`; the verdict says who sent it.
    Reset(Identity, Direction, ResetVerdict),
    Retransmit(Identity),
    /// The peer was heard from after a silence of `gap`: the path let the connection through.
    IdleGapSurvived(Identity, Nanos),
    /// The connection's cadence (see `cadence`) was found or changed with its latest survived
    /// gap; `from` is the one it had, if any.
    CadenceChanged {
        identity: Identity,
        from: Option<Cadence>,
        to: Cadence,
    },
    /// The path cut the connection after it had been idle for `gap`.
    Cut {
        identity: Identity,
        gap: Nanos,
        signature: Signature,
        context: CutContext,
    },
    /// Retransmissions without hearing from the peer, for `duration`, and how that ended.
    Stall {
        identity: Identity,
        duration: Nanos,
        outcome: StallOutcome,
    },
    IcmpError {
        identity: Identity,
        icmp_type: u8,
        code: u8,
    },
    /// A retransmission showed a new soft error on the socket: an ICMP error arrived and
    /// left this errno (seen with no program on the ICMP path itself).
    SoftIcmpError {
        identity: Identity,
        errno: u16,
    },
    /// A stall recovered once the kernel's MTU probing lowered the connection's MSS (`from`
    /// the one it began with, `to` the one that got through): the path's MTU is smaller than
    /// the route's and its ICMP errors do not arrive.
    MssLowered {
        identity: Identity,
        from: u16,
        to: u16,
    },
    /// The connection died abnormally while it was not idle, at this age: evidence of a limit
    /// on connection age (RFC 5383 section 4.1) when such deaths cluster.
    DiedWhileActive {
        identity: Identity,
        age: Nanos,
    },
    Closed {
        identity: Identity,
        end: End,
        /// None when the connection's start was not seen.
        duration: Option<Nanos>,
        /// Its keepalive setting, if one was known.
        keepalive: Option<KeepaliveSetting>,
    },
    /// A connection closed that was opened before the agent started: nothing to attribute.
    UntrackedClose,
    /// The kernel had lost a connection's state (LRU map full); user space still had it.
    KernelStateEvicted,
}

impl Update {
    /// The connection the update is about, if any.
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            Self::Opened(identity)
            | Self::Discovered(identity)
            | Self::KeepaliveChanged { identity, .. }
            | Self::Reset(identity, ..)
            | Self::Retransmit(identity)
            | Self::IdleGapSurvived(identity, _)
            | Self::CadenceChanged { identity, .. }
            | Self::Cut { identity, .. }
            | Self::Stall { identity, .. }
            | Self::IcmpError { identity, .. }
            | Self::SoftIcmpError { identity, .. }
            | Self::MssLowered { identity, .. }
            | Self::DiedWhileActive { identity, .. }
            | Self::Closed { identity, .. } => Some(identity),
            Self::UntrackedClose | Self::KernelStateEvicted => None,
        }
    }
}

/// A connection's keepalive as last observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub setting: KeepaliveSetting,
    pub interval_ms: Option<u64>,
}

/// Which connection a cut ended, and when: what the log of recent cuts shows and the exemplars
/// of the idle-before-cut histogram carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutContext {
    /// When the model learned of the cut (kernel time).
    pub at: Nanos,
    /// None where no connection of this host was cut (`idlecut check` reports its own).
    pub endpoints: Option<Endpoints>,
    pub netns: u32,
    pub owner: Option<Arc<Owner>>,
    /// For a cut by a RST: who sent it.
    pub reset: Option<ResetVerdict>,
    /// For a PMTU black hole: the segments that never got through.
    pub pmtu: Option<PmtuClues>,
}

/// A connection that ended recently, for the per-connection view.
#[derive(Clone, Debug)]
pub struct ClosedRecord {
    pub info: ConnectionInfo,
    pub closed_at: Nanos,
    pub end: End,
}

/// What the per-connection view shows of a connection. Idle clocks are read by the caller
/// from the kernel (`socket`, `cookie`) or taken from the last scan.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    pub identity: Identity,
    pub endpoints: Endpoints,
    pub netns: u32,
    pub socket: Option<u64>,
    pub cookie: Option<u64>,
    pub owner: Option<Arc<Owner>>,
    pub opened_at: Option<Nanos>,
    pub keepalive: Option<Keepalive>,
    pub retransmits: u32,
    pub scanned_clocks: Option<(Nanos, Nanos)>,
    /// The ICMP error TCP is retransmitting through (the socket's soft error), if one is.
    pub soft_error: Option<u16>,
    /// Its cadence, once its survived gaps showed one.
    pub cadence: Option<Cadence>,
}

/// Open connections by kernel socket address (or, found by a scan and not yet met by a
/// program, by cookie), recently closed ones in their grace period, and a short history.
#[derive(Debug)]
pub struct ConnectionModel {
    services: Services,
    table: ConnectionTable,
    /// Closed connections in their grace period, by socket.
    closing: HashMap<u64, Closing>,
    /// Sockets with a peer-ended gap in its grace period.
    peer_ended_gaps: Vec<u64>,
    recently_closed: VecDeque<ClosedRecord>,
    /// Closes seen while a scan is under way (None while none is), by namespace and
    /// endpoints, with when: the scan may have read those connections open, and must not
    /// bring them back once they are gone.
    closes_during_scan: Option<HashMap<(u32, Endpoints), Nanos>>,
    /// The agent's own connections (its scheduled checks'), left out.
    own: OwnConnections,
    /// The namespaces the latest scan read whole, and when it finished: a connection that
    /// closes there later, unknown to the model and to the kernel programs, opened since
    /// (see `lifecycle::found_at_its_close`).
    scanned_whole: (HashSet<u32>, Nanos),
    /// Namespaces the model has connections in that the latest scan did not see at all
    /// (deleted, see `scan::settle_vanished`).
    absent_namespaces: HashSet<u32>,
}

impl ConnectionModel {
    pub fn new(ports: PortMap) -> Self {
        Self {
            services: Services::new(&ports),
            table: ConnectionTable::default(),
            closing: HashMap::new(),
            peer_ended_gaps: Vec::new(),
            recently_closed: VecDeque::new(),
            closes_during_scan: None,
            own: OwnConnections::default(),
            scanned_whole: (HashSet::new(), 0),
            absent_namespaces: HashSet::new(),
        }
    }

    /// Leaves a connection of the agent's own out of everything from now on, or ends that
    /// when its connect failed (see `own`).
    pub fn leave_out(&mut self, notice: OwnNotice, at: Nanos) {
        self.own.take(notice, at);
    }

    /// Open connections, found by a scan or seen opening (those in their close grace period
    /// excluded).
    pub fn open_count(&self) -> usize {
        self.table.len()
    }

    /// Scanned connections no kernel program has met yet (their seeds are still pending).
    pub fn pending_adoptions(&self) -> usize {
        self.table.unadopted()
    }

    /// Which service a connection is and in which role, or None if neither port is watched.
    #[cfg(test)]
    pub fn identify(&self, endpoints: &Endpoints) -> Option<Identity> {
        let kind = self.services.kind(endpoints)?;
        Some(self.services.identity(kind, endpoints.remote.ip()))
    }

    /// Every open connection (adopted or not) and the recently closed ones, for the view.
    pub fn connections(&self) -> impl Iterator<Item = ConnectionInfo> + '_ {
        self.table.iter().map(|(key, connection)| {
            let socket = match key {
                table::Key::Socket(socket) => Some(socket),
                table::Key::Cookie(_) => None,
            };
            connection.info(&self.services, socket)
        })
    }

    pub fn recently_closed(&self) -> impl Iterator<Item = &ClosedRecord> {
        self.recently_closed.iter()
    }

    /// Drops everything in its grace period at once (at shutdown), classifying it.
    pub fn flush(&mut self, out: &mut Vec<Update>) {
        let sockets: Vec<u64> = self.closing.keys().copied().collect();
        for socket in sockets {
            self.finish(socket, out);
        }
    }

    /// Settles the closed connection of this socket, if one is in its grace period.
    fn finish(&mut self, socket: u64, out: &mut Vec<Update>) {
        if let Some(closing) = self.closing.remove(&socket) {
            self.settle(closing, out);
        }
    }

    /// The one way a connection ends in the model, its close seen or not: classified, then
    /// kept for the view for a while.
    fn settle(&mut self, closing: Closing, out: &mut Vec<Update>) {
        let record = closing.settle(&self.services, out);
        let closed_at = record.closed_at;
        self.recently_closed.push_back(record);
        while self.recently_closed.len() > RECENTLY_CLOSED_MAX
            || self
                .recently_closed
                .front()
                .is_some_and(|c| closed_at.saturating_sub(c.closed_at) > RECENTLY_CLOSED_NS)
        {
            self.recently_closed.pop_front();
        }
    }
}

/// A gap of `connection` that the path let through: the path's sample, then the connection's
/// cadence when the gap changed it. Every survived gap goes through here.
fn gap_survived(
    connection: &mut Connection,
    identity: Identity,
    gap: Nanos,
    out: &mut Vec<Update>,
) {
    match connection.cadence.push(gap) {
        Some((from, to)) => {
            out.push(Update::IdleGapSurvived(identity.clone(), gap));
            out.push(Update::CadenceChanged { identity, from, to });
        }
        None => out.push(Update::IdleGapSurvived(identity, gap)),
    }
}
