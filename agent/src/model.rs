//! The connection model: turns kernel facts into connection lifecycles.
//!
//! It follows each connection on a watched port from open to close, decides how it ended, and
//! what happened after each idle gap: the path let the connection through (the peer was heard
//! from again), or it cut it (a RST in answer, retransmissions into nothing, ICMP errors).
//! Some facts arrive a moment after the one they explain (the RST an abort sends comes after
//! the state change to CLOSE, a middlebox's RST right after the segment that ended a silence),
//! so closes and peer-ended gaps wait a short grace period before they are settled. Everything
//! here is plain data and unit-tested; the only clock is the kernel's, passed in.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use idlecut_ebpf::tcp_state;

use crate::{
    config::PortMap,
    discovery::{KeepaliveObservation, Owner, Scan},
    events::{Endpoints, Event, Nanos, Seed, Side},
    vocabulary::{Direction, End, KeepaliveSetting, Role, Signature, StallOutcome},
};

/// How long a closed connection, or a gap the peer ended, waits for late facts (RST sent,
/// errno, a middlebox's RST). The kernel emits them microseconds after; this leaves room for a
/// slow reader.
pub const CLOSE_GRACE_NS: Nanos = 100_000_000;

/// Closed connections stay in the per-connection view this long, and at most this many.
pub const RECENTLY_CLOSED_NS: Nanos = 300_000_000_000;
pub const RECENTLY_CLOSED_MAX: usize = 1024;
const ETIMEDOUT: u16 = 110;
const ENETUNREACH: u16 = 101;
const EHOSTUNREACH: u16 = 113;

/// What the aggregation layer needs to know about a connection: which path it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub service: Arc<str>,
    pub role: Role,
    pub remote: IpAddr,
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
    Reset(Identity, Direction),
    Retransmit(Identity),
    /// The peer was heard from after a silence of `gap`: the path let the connection through.
    IdleGapSurvived(Identity, Nanos),
    /// The path cut the connection after it had been idle for `gap`.
    Cut {
        identity: Identity,
        gap: Nanos,
        signature: Signature,
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
            | Self::Reset(identity, _)
            | Self::Retransmit(identity)
            | Self::IdleGapSurvived(identity, _)
            | Self::Cut { identity, .. }
            | Self::Stall { identity, .. }
            | Self::IcmpError { identity, .. }
            | Self::DiedWhileActive { identity, .. }
            | Self::Closed { identity, .. } => Some(identity),
            Self::UntrackedClose | Self::KernelStateEvicted => None,
        }
    }
}

/// An idle gap this host ended by speaking, not answered yet.
#[derive(Clone, Copy, Debug)]
struct UnansweredGap {
    gap: Nanos,
    retransmitted: bool,
    icmp: bool,
}

/// How the kernel programs and the model refer to a connection: its socket address once a
/// program has met it, its cookie while only the scan knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Socket(u64),
    Cookie(u64),
}

#[derive(Clone, Debug)]
struct Connection {
    identity: Identity,
    endpoints: Endpoints,
    /// Inode of its network namespace, 0 when unknown.
    netns: u32,
    opened_at: Option<Nanos>,
    /// When the model learned of it (its open, or the scan that found it).
    known_since: Nanos,
    cookie: Option<u64>,
    inode: Option<u32>,
    owner: Option<Owner>,
    keepalive: Option<Keepalive>,
    retransmits: u32,
    /// Idle clocks from the last scan (kernel time of the last segment received and sent),
    /// for when the kernel's own state cannot be read.
    scanned_clocks: Option<(Nanos, Nanos)>,
    reset_received: bool,
    reset_sent: bool,
    /// An error reported while the connection was still open, with when.
    error: Option<(Nanos, u16)>,
    unanswered: Option<UnansweredGap>,
    /// A gap the peer ended at this time, survived unless a RST follows within the grace.
    peer_ended_gap: Option<(Nanos, Nanos)>,
    /// A cut after idle was reported for it: its death is not evidence of an age limit.
    cut_after_idle: bool,
}

impl Connection {
    /// A connection the model just learned of, with nothing yet seen of it.
    fn new(
        identity: Identity,
        endpoints: Endpoints,
        netns: u32,
        opened_at: Option<Nanos>,
        known_since: Nanos,
    ) -> Self {
        Self {
            identity,
            endpoints,
            netns,
            opened_at,
            known_since,
            cookie: None,
            inode: None,
            owner: None,
            keepalive: None,
            retransmits: 0,
            scanned_clocks: None,
            reset_received: false,
            reset_sent: false,
            error: None,
            unanswered: None,
            peer_ended_gap: None,
            cut_after_idle: false,
        }
    }
}

#[derive(Clone, Debug)]
struct Closing {
    connection: Connection,
    closed_at: Nanos,
    old_state: u8,
    stalled_for: Option<Nanos>,
}

/// A connection's keepalive as last observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub setting: KeepaliveSetting,
    pub interval_ms: Option<u64>,
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
    pub owner: Option<Owner>,
    pub opened_at: Option<Nanos>,
    pub keepalive: Option<Keepalive>,
    pub retransmits: u32,
    pub scanned_clocks: Option<(Nanos, Nanos)>,
}

/// Open connections by kernel socket address (or, found by a scan and not yet met by a
/// program, by cookie), recently closed ones in their grace period, and a short history.
#[derive(Debug)]
pub struct ConnectionModel {
    ports: PortMap,
    open: HashMap<u64, Connection>,
    discovered: HashMap<u64, Connection>,
    by_endpoints: HashMap<Endpoints, Vec<(u32, Key)>>,
    closing: HashMap<u64, Closing>,
    /// Sockets with a peer-ended gap in its grace period.
    peer_ended_gaps: Vec<u64>,
    recently_closed: VecDeque<ClosedRecord>,
    /// Closes of connections the model did not know, recently: a scan that started before
    /// them must not bring them back.
    untracked_closes: VecDeque<(Nanos, u32, Endpoints)>,
}

impl ConnectionModel {
    pub fn new(ports: PortMap) -> Self {
        Self {
            ports,
            open: HashMap::new(),
            discovered: HashMap::new(),
            by_endpoints: HashMap::new(),
            closing: HashMap::new(),
            peer_ended_gaps: Vec::new(),
            recently_closed: VecDeque::new(),
            untracked_closes: VecDeque::new(),
        }
    }

    /// Open connections, found by a scan or seen opening (those in their close grace period
    /// excluded).
    pub fn open_count(&self) -> usize {
        self.open.len() + self.discovered.len()
    }

    /// Scanned connections no kernel program has met yet (their seeds are still pending).
    pub fn pending_adoptions(&self) -> usize {
        self.discovered.len()
    }

    fn index_insert(&mut self, endpoints: Endpoints, netns: u32, key: Key) {
        self.by_endpoints
            .entry(endpoints)
            .or_default()
            .push((netns, key));
    }

    fn index_remove(&mut self, endpoints: &Endpoints, key: Key) {
        if let Some(entries) = self.by_endpoints.get_mut(endpoints) {
            entries.retain(|&(_, k)| k != key);
            if entries.is_empty() {
                self.by_endpoints.remove(endpoints);
            }
        }
    }

    /// The connection with these endpoints in this namespace. A namespace of 0 (unknown, on
    /// kernels without BTF) matches any.
    fn index_find(&self, endpoints: &Endpoints, netns: u32) -> Option<Key> {
        self.by_endpoints.get(endpoints).and_then(|entries| {
            entries
                .iter()
                .find(|&&(n, _)| n == netns || n == 0 || netns == 0)
                .map(|&(_, key)| key)
        })
    }

    fn connection_mut(&mut self, key: Key) -> Option<&mut Connection> {
        match key {
            Key::Socket(socket) => self.open.get_mut(&socket),
            Key::Cookie(cookie) => self.discovered.get_mut(&cookie),
        }
    }

    /// Which service a connection is and in which role, or None if neither port is watched.
    pub fn identify(&self, endpoints: &Endpoints) -> Option<Identity> {
        let (service, role) = if let Some(service) = self.ports.service(endpoints.local.port()) {
            (service, Role::Server)
        } else {
            (self.ports.service(endpoints.remote.port())?, Role::Client)
        };
        Some(Identity {
            service: Arc::from(service),
            role,
            remote: endpoints.remote.ip(),
        })
    }

    pub fn apply(&mut self, event: Event, out: &mut Vec<Update>) {
        match event {
            Event::Open {
                at,
                socket,
                endpoints,
                netns,
            } => self.open(socket, endpoints, netns, Some(at), out),
            Event::Adopted { socket, cookie, .. } => self.adopt(socket, cookie),
            Event::Close {
                at,
                socket,
                endpoints,
                netns,
                old_state,
                opened_at,
                stalled_for,
                awaiting_answer: _,
                retransmits: _,
                first_fin: _,
            } => self.close(
                socket,
                endpoints,
                netns,
                at,
                old_state,
                opened_at,
                stalled_for,
                out,
            ),
            Event::ResetReceived { socket, .. } => {
                if let Some(connection) = self.open.get_mut(&socket) {
                    // A RST right after the silence ended, or in answer to this host's first
                    // segments after it: the path cut the connection for being idle.
                    let gap = match (
                        connection.peer_ended_gap.take(),
                        connection.unanswered.take(),
                    ) {
                        (Some((_, gap)), _) | (None, Some(UnansweredGap { gap, .. })) => Some(gap),
                        (None, None) => None,
                    };
                    if let Some(gap) = gap {
                        connection.cut_after_idle = true;
                        out.push(Update::Cut {
                            identity: connection.identity.clone(),
                            gap,
                            signature: Signature::Reset,
                        });
                    }
                }
                self.reset(socket, Direction::Received, out);
            }
            Event::ResetSent { socket, .. } => self.reset(socket, Direction::Sent, out),
            Event::Retransmit { socket, .. } => {
                if let Some(connection) = self.find_mut(socket) {
                    connection.retransmits = connection.retransmits.saturating_add(1);
                    if let Some(unanswered) = &mut connection.unanswered {
                        unanswered.retransmitted = true;
                    }
                    out.push(Update::Retransmit(connection.identity.clone()));
                }
            }
            Event::ErrorReport {
                at,
                endpoints,
                errno,
            } => self.error_report(endpoints, at, errno),
            Event::IdleGapEnd {
                at,
                socket,
                gap,
                first,
            } => {
                let Some(connection) = self.open.get_mut(&socket) else {
                    return;
                };
                match first {
                    Side::Remote => {
                        // An earlier one still in its grace period is settled first.
                        if let Some((_, earlier)) = connection.peer_ended_gap.replace((at, gap)) {
                            out.push(Update::IdleGapSurvived(
                                connection.identity.clone(),
                                earlier,
                            ));
                        } else {
                            self.peer_ended_gaps.push(socket);
                        }
                    }
                    // The first silence this host broke and that is still unanswered is the one
                    // that tells when the path gave up.
                    Side::Local => {
                        connection.unanswered.get_or_insert(UnansweredGap {
                            gap,
                            retransmitted: false,
                            icmp: false,
                        });
                    }
                }
            }
            Event::GapAnswered { socket, .. } => {
                if let Some(connection) = self.open.get_mut(&socket)
                    && let Some(unanswered) = connection.unanswered.take()
                {
                    out.push(Update::IdleGapSurvived(
                        connection.identity.clone(),
                        unanswered.gap,
                    ));
                }
            }
            Event::StallRecovered {
                socket,
                stalled_for,
                ..
            } => {
                if let Some(connection) = self.open.get(&socket) {
                    out.push(Update::Stall {
                        identity: connection.identity.clone(),
                        duration: stalled_for,
                        outcome: StallOutcome::Recovered,
                    });
                }
            }
            Event::IcmpError {
                endpoints,
                icmp_type,
                code,
                ..
            } => {
                let Some(key) = self.index_find(&endpoints, 0) else {
                    return;
                };
                if let Some(connection) = self.connection_mut(key) {
                    if let Some(unanswered) = &mut connection.unanswered {
                        unanswered.icmp = true;
                    }
                    out.push(Update::IcmpError {
                        identity: connection.identity.clone(),
                        icmp_type,
                        code,
                    });
                }
            }
        }
    }

    /// Settles what waited for its grace period to end at kernel time `now`: closed
    /// connections are classified, peer-ended gaps without a RST count as survived.
    pub fn expire(&mut self, now: Nanos, out: &mut Vec<Update>) {
        let due: Vec<u64> = self
            .closing
            .iter()
            .filter(|(_, closing)| now >= closing.closed_at.saturating_add(CLOSE_GRACE_NS))
            .map(|(&socket, _)| socket)
            .collect();
        for socket in due {
            self.finish(socket, out);
        }
        let open = &mut self.open;
        self.peer_ended_gaps.retain(|socket| {
            let Some(connection) = open.get_mut(socket) else {
                return false;
            };
            match connection.peer_ended_gap {
                Some((at, gap)) if now >= at.saturating_add(CLOSE_GRACE_NS) => {
                    connection.peer_ended_gap = None;
                    out.push(Update::IdleGapSurvived(connection.identity.clone(), gap));
                    false
                }
                Some(_) => true,
                None => false,
            }
        });
    }

    fn open(
        &mut self,
        socket: u64,
        endpoints: Endpoints,
        netns: u32,
        opened_at: Option<Nanos>,
        out: &mut Vec<Update>,
    ) {
        // A socket address is reused only after its previous connection closed: settle that
        // one first so that late facts are not attributed to the new connection.
        if self.closing.contains_key(&socket) {
            self.finish(socket, out);
        }
        let Some(identity) = self.identify(&endpoints) else {
            return;
        };
        let connection = Connection::new(
            identity.clone(),
            endpoints,
            netns,
            opened_at,
            opened_at.unwrap_or(0),
        );
        if let Some(previous) = self.open.insert(socket, connection) {
            // Its close was lost: it ended, we cannot say how.
            self.index_remove(&previous.endpoints, Key::Socket(socket));
            out.push(Update::Closed {
                identity: previous.identity,
                end: End::Unknown,
                duration: None,
                keepalive: previous.keepalive.map(|k| k.setting),
            });
        }
        self.index_insert(endpoints, netns, Key::Socket(socket));
        out.push(Update::Opened(identity));
    }

    /// A kernel program met a scanned connection: from now on it is known by its socket.
    fn adopt(&mut self, socket: u64, cookie: u64) {
        let Some(connection) = self.discovered.remove(&cookie) else {
            return;
        };
        self.index_remove(&connection.endpoints, Key::Cookie(cookie));
        self.index_insert(connection.endpoints, connection.netns, Key::Socket(socket));
        self.open.insert(socket, connection);
    }

    #[expect(clippy::too_many_arguments, reason = "the fields of one close event")]
    fn close(
        &mut self,
        socket: u64,
        endpoints: Endpoints,
        netns: u32,
        at: Nanos,
        old_state: u8,
        kernel_opened_at: Option<Nanos>,
        stalled_for: Option<Nanos>,
        out: &mut Vec<Update>,
    ) {
        let connection = match self.open.remove(&socket) {
            Some(mut connection) => {
                // A gap the peer ended just before the close is settled by the close itself.
                if let Some((_, gap)) = connection.peer_ended_gap.take() {
                    out.push(Update::IdleGapSurvived(connection.identity.clone(), gap));
                }
                self.index_remove(&connection.endpoints, Key::Socket(socket));
                // A seen start with no kernel state left: the LRU map evicted it. (Scanned
                // connections have no start and may legitimately have no state.)
                if kernel_opened_at.is_none() && connection.opened_at.is_some() {
                    out.push(Update::KernelStateEvicted);
                }
                connection.opened_at = connection.opened_at.or(kernel_opened_at);
                connection
            }
            // The kernel saw it open but its OPEN event was lost: count it now, whole.
            None if kernel_opened_at.is_some() => {
                self.open(socket, endpoints, netns, kernel_opened_at, out);
                let Some(connection) = self.open.remove(&socket) else {
                    return;
                };
                self.index_remove(&connection.endpoints, Key::Socket(socket));
                connection
            }
            None => match self.index_find(&endpoints, netns) {
                // Found by a scan and never met by a program (no BTF to adopt it).
                Some(Key::Cookie(cookie)) => {
                    let Some(connection) = self.discovered.remove(&cookie) else {
                        return;
                    };
                    self.index_remove(&endpoints, Key::Cookie(cookie));
                    connection
                }
                _ => {
                    self.untracked_closes.push_back((at, netns, endpoints));
                    if self.untracked_closes.len() > RECENTLY_CLOSED_MAX {
                        self.untracked_closes.pop_front();
                    }
                    out.push(Update::UntrackedClose);
                    return;
                }
            },
        };
        let reset_received = connection.reset_received;
        self.closing.insert(
            socket,
            Closing {
                connection,
                closed_at: at,
                old_state,
                stalled_for,
            },
        );
        // Nothing that comes later can change a received reset: classify at once.
        if reset_received {
            self.finish(socket, out);
        }
    }

    fn find_mut(&mut self, socket: u64) -> Option<&mut Connection> {
        // (Scanned connections are adopted before any event refers to their socket.)
        match self.open.get_mut(&socket) {
            Some(connection) => Some(connection),
            None => self
                .closing
                .get_mut(&socket)
                .map(|closing| &mut closing.connection),
        }
    }

    fn reset(&mut self, socket: u64, direction: Direction, out: &mut Vec<Update>) {
        let Some(connection) = self.find_mut(socket) else {
            return;
        };
        let already = match direction {
            Direction::Received => std::mem::replace(&mut connection.reset_received, true),
            Direction::Sent => std::mem::replace(&mut connection.reset_sent, true),
        };
        if !already {
            out.push(Update::Reset(connection.identity.clone(), direction));
        }
    }

    fn error_report(&mut self, endpoints: Endpoints, at: Nanos, errno: u16) {
        if let Some(closing) = self
            .closing
            .values_mut()
            .find(|closing| closing.connection.endpoints == endpoints)
        {
            closing.connection.error = Some((at, errno));
        } else if let Some(key) = self.index_find(&endpoints, 0)
            && let Some(connection) = self.connection_mut(key)
        {
            connection.error = Some((at, errno));
        }
    }

    fn finish(&mut self, socket: u64, out: &mut Vec<Update>) {
        let Some(Closing {
            connection,
            closed_at,
            old_state,
            stalled_for,
        }) = self.closing.remove(&socket)
        else {
            return;
        };
        let errno = connection.error.map(|(_, errno)| errno);
        let end = classify_end(
            connection.reset_received,
            connection.reset_sent,
            errno,
            old_state,
        );
        let abnormal = end != End::Fin;
        let identity = &connection.identity;
        let cut = connection
            .unanswered
            .filter(|_| abnormal)
            .and_then(|unanswered| {
                cut_signature(unanswered, end, errno).map(|s| (unanswered.gap, s))
            });
        if let Some((gap, signature)) = cut {
            out.push(Update::Cut {
                identity: identity.clone(),
                gap,
                signature,
            });
        }
        if let Some(duration) = stalled_for.filter(|_| abnormal) {
            out.push(Update::Stall {
                identity: identity.clone(),
                duration,
                outcome: StallOutcome::Fatal,
            });
        }
        let died = matches!(end, End::ResetReceived | End::Timeout | End::Error);
        if died
            && cut.is_none()
            && !connection.cut_after_idle
            && let Some(opened_at) = connection.opened_at
        {
            // When it was stalled, the trouble began with the stall, not at the close.
            let trouble_at = closed_at.saturating_sub(stalled_for.unwrap_or(0));
            out.push(Update::DiedWhileActive {
                identity: identity.clone(),
                age: trouble_at.saturating_sub(opened_at),
            });
        }
        out.push(Update::Closed {
            identity: connection.identity.clone(),
            end,
            duration: connection
                .opened_at
                .map(|opened_at| closed_at.saturating_sub(opened_at)),
            keepalive: connection.keepalive.map(|k| k.setting),
        });
        self.recently_closed.push_back(ClosedRecord {
            info: info_of(&connection, None),
            closed_at,
            end,
        });
        while self.recently_closed.len() > RECENTLY_CLOSED_MAX
            || self
                .recently_closed
                .front()
                .is_some_and(|c| closed_at.saturating_sub(c.closed_at) > RECENTLY_CLOSED_NS)
        {
            self.recently_closed.pop_front();
        }
    }

    /// Takes in a scan of the kernel's socket tables (made between `started` and `finished`,
    /// kernel time): connections it knows get their inode, owner and keepalive; connections it
    /// does not know were open before the agent (or their open was lost): they are tracked
    /// from now on, and returned as seeds for the kernel programs to adopt. Connections it
    /// should have found and did not are settled (see `settle_vanished`); their sockets are
    /// returned too, so that their leftover kernel state can be dropped.
    pub fn apply_scan(
        &mut self,
        scan: &Scan,
        started: Nanos,
        finished: Nanos,
        stall_of: &dyn Fn(u64) -> Option<Nanos>,
        out: &mut Vec<Update>,
    ) -> (Vec<Seed>, Vec<u64>) {
        let vanished = self.settle_vanished(scan, started, finished, stall_of, out);
        let mut seeds = Vec::new();
        for scanned in &scan.connections {
            let clocks = (
                finished.saturating_sub(u64::from(scanned.last_received_ms()) * 1_000_000),
                finished.saturating_sub(u64::from(scanned.last_data_sent_ms) * 1_000_000),
            );
            let key = match self.index_find(&scanned.endpoints, scanned.netns) {
                Some(key) => key,
                None => {
                    // It closed while the scan ran: do not bring it back.
                    let closed_meanwhile = self.untracked_closes.iter().any(|&(at, netns, ep)| {
                        at >= started
                            && ep == scanned.endpoints
                            && (netns == scanned.netns || netns == 0)
                    });
                    if closed_meanwhile || self.discovered.contains_key(&scanned.cookie) {
                        continue;
                    }
                    let Some(identity) = self.identify(&scanned.endpoints) else {
                        continue;
                    };
                    self.discovered.insert(
                        scanned.cookie,
                        Connection {
                            cookie: Some(scanned.cookie),
                            ..Connection::new(
                                identity.clone(),
                                scanned.endpoints,
                                scanned.netns,
                                None,
                                finished,
                            )
                        },
                    );
                    self.index_insert(
                        scanned.endpoints,
                        scanned.netns,
                        Key::Cookie(scanned.cookie),
                    );
                    out.push(Update::Discovered(identity));
                    seeds.push(Seed {
                        cookie: scanned.cookie,
                        last_received: clocks.0,
                        last_sent: clocks.1,
                        first_fin: match scanned.state {
                            tcp_state::CLOSE_WAIT | tcp_state::LAST_ACK => Some(Side::Remote),
                            tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING => {
                                Some(Side::Local)
                            }
                            _ => None,
                        },
                    });
                    Key::Cookie(scanned.cookie)
                }
            };
            let owner = scan.owners.get(&scanned.inode).cloned();
            let Some(connection) = self.connection_mut(key) else {
                continue;
            };
            connection.cookie = Some(scanned.cookie);
            connection.inode = Some(scanned.inode);
            if owner.is_some() {
                connection.owner = owner;
            }
            if connection.netns == 0 {
                connection.netns = scanned.netns;
            }
            connection.scanned_clocks = Some(clocks);
            let observed = match scanned.keepalive {
                KeepaliveObservation::Off => Some(Keepalive {
                    setting: KeepaliveSetting::Off,
                    interval_ms: None,
                }),
                KeepaliveObservation::On { interval_ms } => Some(Keepalive {
                    setting: KeepaliveSetting::from_interval_ms(interval_ms),
                    interval_ms: Some(interval_ms),
                }),
                KeepaliveObservation::Unknown => None,
            };
            if let Some(observed) = observed {
                let previous = connection.keepalive.replace(observed);
                if previous.map(|k| k.setting) != Some(observed.setting) {
                    out.push(Update::KeepaliveChanged {
                        identity: connection.identity.clone(),
                        from: previous.map(|k| k.setting),
                        to: observed.setting,
                    });
                }
            }
        }
        (seeds, vanished)
    }

    /// Connections the scan should have found and did not: they ended while their close went
    /// unseen (the kernel skips a program run when another BPF program is running on that CPU,
    /// or the ring buffer was full). They are classified like any close, from what was seen of
    /// them: one that was stalled (`stall_of` says since when, from the kernel's leftover state)
    /// timed out; otherwise how it ended is unknown. Returns the sockets settled.
    fn settle_vanished(
        &mut self,
        scan: &Scan,
        started: Nanos,
        finished: Nanos,
        stall_of: &dyn Fn(u64) -> Option<Nanos>,
        out: &mut Vec<Update>,
    ) -> Vec<u64> {
        let found: std::collections::HashSet<(u32, Endpoints)> = scan
            .connections
            .iter()
            .map(|c| (c.netns, c.endpoints))
            .collect();
        let vanished = |c: &Connection| {
            c.netns != 0
                && c.known_since < started
                && scan.complete.contains(&c.netns)
                && !found.contains(&(c.netns, c.endpoints))
        };
        let sockets: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, c)| vanished(c))
            .map(|(&s, _)| s)
            .collect();
        let cookies: Vec<u64> = self
            .discovered
            .iter()
            .filter(|(_, c)| vanished(c))
            .map(|(&k, _)| k)
            .collect();
        for &socket in &sockets {
            let Some(mut connection) = self.open.remove(&socket) else {
                continue;
            };
            self.index_remove(&connection.endpoints, Key::Socket(socket));
            let stalled_for = stall_of(socket).map(|since| finished.saturating_sub(since));
            if stalled_for.is_some() && connection.error.is_none() {
                connection.error = Some((finished, ETIMEDOUT));
            }
            self.closing.insert(
                socket,
                Closing {
                    connection,
                    closed_at: finished,
                    old_state: tcp_state::ESTABLISHED,
                    stalled_for,
                },
            );
            self.finish(socket, out);
        }
        for cookie in cookies {
            let Some(connection) = self.discovered.remove(&cookie) else {
                continue;
            };
            self.index_remove(&connection.endpoints, Key::Cookie(cookie));
            out.push(Update::Closed {
                identity: connection.identity.clone(),
                end: End::Unknown,
                duration: None,
                keepalive: connection.keepalive.map(|k| k.setting),
            });
        }
        sockets
    }

    /// Every open connection (adopted or not) and the recently closed ones, for the view.
    pub fn connections(&self) -> impl Iterator<Item = ConnectionInfo> + '_ {
        self.open
            .iter()
            .map(|(&socket, c)| info_of(c, Some(socket)))
            .chain(self.discovered.values().map(|c| info_of(c, None)))
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
}

fn info_of(connection: &Connection, socket: Option<u64>) -> ConnectionInfo {
    ConnectionInfo {
        identity: connection.identity.clone(),
        endpoints: connection.endpoints,
        netns: connection.netns,
        socket,
        cookie: connection.cookie,
        owner: connection.owner.clone(),
        opened_at: connection.opened_at,
        keepalive: connection.keepalive,
        retransmits: connection.retransmits,
        scanned_clocks: connection.scanned_clocks,
    }
}

/// How the path cut a connection that ended abnormally while this host's first segments after
/// an idle gap were unanswered. ICMP unreachable errors (seen, or left behind as the socket's
/// soft error) say the most; then a RST; then retransmissions into nothing.
fn cut_signature(unanswered: UnansweredGap, end: End, errno: Option<u16>) -> Option<Signature> {
    if unanswered.icmp || matches!(errno, Some(EHOSTUNREACH | ENETUNREACH)) {
        Some(Signature::Icmp)
    } else if end == End::ResetReceived {
        Some(Signature::Reset)
    } else if unanswered.retransmitted || end == End::Timeout {
        Some(Signature::Blackhole)
    } else {
        None
    }
}

/// How a connection ended, from what was seen of it. A received RST explains everything after
/// it; ETIMEDOUT (which a keepalive failure reports along with the RST it sends) is more telling
/// than the RST; an error stands on its own; a FIN exchange shows in the state it closed from.
pub fn classify_end(
    reset_received: bool,
    reset_sent: bool,
    errno: Option<u16>,
    old_state: u8,
) -> End {
    if reset_received {
        End::ResetReceived
    } else if errno == Some(ETIMEDOUT) {
        End::Timeout
    } else if reset_sent {
        End::ResetSent
    } else if errno.is_some() {
        End::Error
    } else if matches!(
        old_state,
        tcp_state::FIN_WAIT2 | tcp_state::TIME_WAIT | tcp_state::CLOSING | tcp_state::LAST_ACK
    ) {
        End::Fin
    } else {
        End::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_ports;

    const SOCK: u64 = 0xffff_0000_0000_1000;
    const NETNS: u32 = 4026532000;
    const SECOND: Nanos = 1_000_000_000;

    fn model() -> ConnectionModel {
        ConnectionModel::new(parse_ports("143=imap,587=submission").unwrap())
    }

    fn server_side() -> Endpoints {
        Endpoints {
            local: "10.0.2.2:143".parse().unwrap(),
            remote: "10.0.1.2:40000".parse().unwrap(),
        }
    }

    fn identity(service: &str, role: Role, remote: &str) -> Identity {
        Identity {
            service: Arc::from(service),
            role,
            remote: remote.parse().unwrap(),
        }
    }

    fn open(at: Nanos) -> Event {
        Event::Open {
            at,
            socket: SOCK,
            endpoints: server_side(),
            netns: NETNS,
        }
    }

    fn close(at: Nanos, old_state: u8, opened_at: Option<Nanos>) -> Event {
        Event::Close {
            at,
            socket: SOCK,
            endpoints: server_side(),
            netns: NETNS,
            old_state,
            opened_at,
            retransmits: 0,
            first_fin: None,
            stalled_for: None,
            awaiting_answer: false,
        }
    }

    fn run(events: &[Event]) -> Vec<Update> {
        let mut model = model();
        let mut out = Vec::new();
        for event in events {
            model.apply(*event, &mut out);
        }
        model.expire(u64::MAX, &mut out);
        out
    }

    fn ends(updates: &[Update]) -> Vec<End> {
        updates
            .iter()
            .filter_map(|update| match update {
                Update::Closed { end, .. } => Some(*end),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn role_follows_the_service_port() {
        let model = model();
        assert_eq!(
            model.identify(&server_side()),
            Some(identity("imap", Role::Server, "10.0.1.2"))
        );
        let client = Endpoints {
            local: "10.0.1.2:40000".parse().unwrap(),
            remote: "10.0.2.2:587".parse().unwrap(),
        };
        assert_eq!(
            model.identify(&client),
            Some(identity("submission", Role::Client, "10.0.2.2"))
        );
        let neither = Endpoints {
            local: "10.0.1.2:40000".parse().unwrap(),
            remote: "10.0.2.2:8143".parse().unwrap(),
        };
        assert_eq!(model.identify(&neither), None);
    }

    #[test]
    fn fin_close_with_duration() {
        let updates = run(&[
            open(SECOND),
            close(91 * SECOND, tcp_state::LAST_ACK, Some(SECOND)),
        ]);
        assert_eq!(
            updates,
            vec![
                Update::Opened(identity("imap", Role::Server, "10.0.1.2")),
                Update::Closed {
                    identity: identity("imap", Role::Server, "10.0.1.2"),
                    end: End::Fin,
                    duration: Some(90 * SECOND),
                    keepalive: None,
                },
            ]
        );
    }

    #[test]
    fn reset_received_before_close_is_classified_at_once() {
        let mut model = model();
        let mut out = Vec::new();
        model.apply(open(0), &mut out);
        model.apply(
            Event::ResetReceived {
                at: 1,
                socket: SOCK,
            },
            &mut out,
        );
        model.apply(close(2, tcp_state::ESTABLISHED, Some(0)), &mut out);
        assert_eq!(ends(&out), vec![End::ResetReceived]);
        assert_eq!(model.open_count(), 0);
    }

    #[test]
    fn abort_reset_sent_after_close_is_waited_for() {
        // SO_LINGER 0: the kernel moves to CLOSE first, then sends the RST, then reports
        // ECONNRESET.
        let mut model = model();
        let mut out = Vec::new();
        model.apply(open(0), &mut out);
        model.apply(close(SECOND, tcp_state::ESTABLISHED, Some(0)), &mut out);
        model.expire(SECOND + 1, &mut out);
        assert_eq!(
            ends(&out),
            vec![],
            "classified before its grace period ended"
        );
        model.apply(
            Event::ResetSent {
                at: SECOND + 2,
                socket: SOCK,
            },
            &mut out,
        );
        model.apply(
            Event::ErrorReport {
                at: SECOND + 3,
                endpoints: server_side(),
                errno: 104,
            },
            &mut out,
        );
        model.expire(SECOND + CLOSE_GRACE_NS, &mut out);
        assert_eq!(ends(&out), vec![End::ResetSent]);
        assert!(out.contains(&Update::Reset(
            identity("imap", Role::Server, "10.0.1.2"),
            Direction::Sent
        )));
    }

    #[test]
    fn timeout_after_close_is_matched_by_endpoints() {
        let updates = run(&[
            open(0),
            Event::Retransmit {
                at: 1,
                socket: SOCK,
                stalled_for: 0,
            },
            close(2, tcp_state::ESTABLISHED, Some(0)),
            Event::ErrorReport {
                at: 3,
                endpoints: server_side(),
                errno: ETIMEDOUT,
            },
        ]);
        assert_eq!(ends(&updates), vec![End::Timeout]);
        assert!(updates.contains(&Update::Retransmit(identity(
            "imap",
            Role::Server,
            "10.0.1.2"
        ))));
    }

    #[test]
    fn error_reported_for_another_connection_is_not_attributed() {
        let other = Endpoints {
            local: "10.0.2.2:143".parse().unwrap(),
            remote: "10.0.1.2:40001".parse().unwrap(),
        };
        let updates = run(&[
            open(0),
            close(2, tcp_state::FIN_WAIT2, Some(0)),
            Event::ErrorReport {
                at: 3,
                endpoints: other,
                errno: ETIMEDOUT,
            },
        ]);
        assert_eq!(ends(&updates), vec![End::Fin]);
    }

    #[test]
    fn end_classification_priorities() {
        use tcp_state::*;
        assert_eq!(
            classify_end(true, true, Some(ETIMEDOUT), LAST_ACK),
            End::ResetReceived
        );
        assert_eq!(
            classify_end(false, true, Some(ETIMEDOUT), ESTABLISHED),
            End::Timeout
        );
        assert_eq!(
            classify_end(false, true, Some(104), ESTABLISHED),
            End::ResetSent
        );
        assert_eq!(
            classify_end(false, false, Some(113), ESTABLISHED),
            End::Error
        );
        for state in [FIN_WAIT2, TIME_WAIT, CLOSING, LAST_ACK] {
            assert_eq!(classify_end(false, false, None, state), End::Fin);
        }
        assert_eq!(classify_end(false, false, None, FIN_WAIT1), End::Unknown);
        assert_eq!(classify_end(false, false, None, ESTABLISHED), End::Unknown);
    }

    #[test]
    fn lost_open_is_recovered_from_the_kernel_state() {
        let updates = run(&[close(10 * SECOND, tcp_state::LAST_ACK, Some(4 * SECOND))]);
        assert_eq!(
            updates,
            vec![
                Update::Opened(identity("imap", Role::Server, "10.0.1.2")),
                Update::Closed {
                    identity: identity("imap", Role::Server, "10.0.1.2"),
                    end: End::Fin,
                    duration: Some(6 * SECOND),
                    keepalive: None,
                },
            ]
        );
    }

    #[test]
    fn close_of_a_connection_older_than_the_agent_is_untracked() {
        assert_eq!(
            run(&[close(1, tcp_state::LAST_ACK, None)]),
            vec![Update::UntrackedClose]
        );
    }

    #[test]
    fn eviction_from_the_kernel_map_keeps_the_user_space_start() {
        let updates = run(&[open(SECOND), close(3 * SECOND, tcp_state::LAST_ACK, None)]);
        assert!(updates.contains(&Update::KernelStateEvicted));
        assert!(updates.contains(&Update::Closed {
            identity: identity("imap", Role::Server, "10.0.1.2"),
            end: End::Fin,
            duration: Some(2 * SECOND),
            keepalive: None,
        }));
    }

    #[test]
    fn reused_socket_address_settles_the_previous_connection_first() {
        let mut model = model();
        let mut out = Vec::new();
        model.apply(open(0), &mut out);
        model.apply(close(5, tcp_state::LAST_ACK, Some(0)), &mut out);
        model.apply(open(6), &mut out);
        model.apply(
            Event::ResetSent {
                at: 7,
                socket: SOCK,
            },
            &mut out,
        );
        assert_eq!(
            ends(&out),
            vec![End::Fin],
            "the RST belongs to the new connection"
        );
        assert_eq!(model.open_count(), 1);
    }

    #[test]
    fn events_for_unknown_sockets_are_ignored() {
        assert_eq!(
            run(&[
                Event::ResetReceived { at: 1, socket: 7 },
                Event::Retransmit {
                    at: 1,
                    socket: 7,
                    stalled_for: 0
                },
                Event::IdleGapEnd {
                    at: 1,
                    socket: 7,
                    gap: 1,
                    first: Side::Local,
                },
            ]),
            vec![]
        );
    }

    fn imap_server() -> Identity {
        identity("imap", Role::Server, "10.0.1.2")
    }

    fn gap_end(at: Nanos, gap: Nanos, first: Side) -> Event {
        Event::IdleGapEnd {
            at,
            socket: SOCK,
            gap,
            first,
        }
    }

    fn retransmit(at: Nanos, stalled_for: Nanos) -> Event {
        Event::Retransmit {
            at,
            socket: SOCK,
            stalled_for,
        }
    }

    fn timed_out(at: Nanos, stalled_for: Nanos) -> [Event; 2] {
        [
            Event::Close {
                at,
                socket: SOCK,
                endpoints: server_side(),
                netns: NETNS,
                old_state: tcp_state::ESTABLISHED,
                opened_at: Some(0),
                retransmits: 3,
                first_fin: None,
                stalled_for: Some(stalled_for),
                awaiting_answer: true,
            },
            Event::ErrorReport {
                at,
                endpoints: server_side(),
                errno: ETIMEDOUT,
            },
        ]
    }

    fn cuts(updates: &[Update]) -> Vec<(Nanos, Signature)> {
        updates
            .iter()
            .filter_map(|update| match update {
                Update::Cut { gap, signature, .. } => Some((*gap, *signature)),
                _ => None,
            })
            .collect()
    }

    fn survived(updates: &[Update]) -> Vec<Nanos> {
        updates
            .iter()
            .filter_map(|update| match update {
                Update::IdleGapSurvived(_, gap) => Some(*gap),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_gap_this_host_ended_and_the_peer_answered_is_survived() {
        let updates = run(&[
            open(0),
            gap_end(300 * SECOND, 290 * SECOND, Side::Local),
            Event::GapAnswered {
                at: 300 * SECOND + 1,
                socket: SOCK,
                delay: 1,
            },
        ]);
        assert_eq!(survived(&updates), vec![290 * SECOND]);
        assert!(cuts(&updates).is_empty());
    }

    #[test]
    fn a_gap_the_peer_ended_is_survived_after_the_grace_period() {
        let mut model = model();
        let mut out = Vec::new();
        model.apply(open(0), &mut out);
        model.apply(gap_end(100 * SECOND, 60 * SECOND, Side::Remote), &mut out);
        model.expire(100 * SECOND + 1, &mut out);
        assert!(
            survived(&out).is_empty(),
            "settled before its grace period ended"
        );
        model.expire(100 * SECOND + CLOSE_GRACE_NS, &mut out);
        assert_eq!(survived(&out), vec![60 * SECOND]);
    }

    #[test]
    fn a_rst_that_ends_the_silence_is_a_cut_not_a_survived_gap() {
        // Azure's "TCP reset on idle": the middlebox's RST is what the host hears first.
        let updates = run(&[
            open(0),
            gap_end(240 * SECOND, 240 * SECOND, Side::Remote),
            Event::ResetReceived {
                at: 240 * SECOND,
                socket: SOCK,
            },
            close(240 * SECOND, tcp_state::ESTABLISHED, Some(0)),
        ]);
        assert_eq!(cuts(&updates), vec![(240 * SECOND, Signature::Reset)]);
        assert!(survived(&updates).is_empty());
        assert_eq!(ends(&updates), vec![End::ResetReceived]);
        assert!(
            !updates
                .iter()
                .any(|u| matches!(u, Update::DiedWhileActive { .. })),
            "a cut after idle is not an age limit"
        );
    }

    #[test]
    fn a_rst_in_answer_to_the_first_segment_after_the_gap_is_a_reset_cut() {
        // AWS NAT gateway: 350 s idle, then the next segment from inside gets a RST.
        let updates = run(&[
            open(0),
            gap_end(400 * SECOND, 360 * SECOND, Side::Local),
            Event::ResetReceived {
                at: 400 * SECOND + 1,
                socket: SOCK,
            },
            close(400 * SECOND + 2, tcp_state::ESTABLISHED, Some(0)),
        ]);
        assert_eq!(cuts(&updates), vec![(360 * SECOND, Signature::Reset)]);
    }

    #[test]
    fn retransmissions_into_nothing_after_a_gap_are_a_blackhole_cut() {
        let mut events = vec![
            open(0),
            gap_end(700 * SECOND, 600 * SECOND, Side::Local),
            retransmit(700 * SECOND + 1, 0),
            retransmit(701 * SECOND, SECOND),
        ];
        events.extend(timed_out(715 * SECOND, 15 * SECOND));
        let updates = run(&events);
        assert_eq!(cuts(&updates), vec![(600 * SECOND, Signature::Blackhole)]);
        assert_eq!(ends(&updates), vec![End::Timeout]);
        assert!(updates.contains(&Update::Stall {
            identity: imap_server(),
            duration: 15 * SECOND,
            outcome: StallOutcome::Fatal,
        }));
    }

    #[test]
    fn icmp_errors_after_a_gap_are_an_icmp_cut() {
        let updates = run(&[
            open(0),
            gap_end(300 * SECOND, 250 * SECOND, Side::Local),
            Event::IcmpError {
                at: 300 * SECOND + 1,
                endpoints: server_side(),
                icmp_type: 3,
                code: 1,
            },
            retransmit(300 * SECOND + 2, 0),
            close(310 * SECOND, tcp_state::ESTABLISHED, Some(0)),
            Event::ErrorReport {
                at: 310 * SECOND,
                endpoints: server_side(),
                errno: EHOSTUNREACH,
            },
        ]);
        assert_eq!(cuts(&updates), vec![(250 * SECOND, Signature::Icmp)]);
        assert_eq!(ends(&updates), vec![End::Error]);
        assert!(updates.contains(&Update::IcmpError {
            identity: imap_server(),
            icmp_type: 3,
            code: 1
        }));
    }

    #[test]
    fn the_soft_error_left_by_icmp_marks_an_icmp_cut_without_the_icmp_probe() {
        let updates = run(&[
            open(0),
            gap_end(300 * SECOND, 250 * SECOND, Side::Local),
            retransmit(300 * SECOND + 2, 0),
            close(310 * SECOND, tcp_state::ESTABLISHED, Some(0)),
            Event::ErrorReport {
                at: 310 * SECOND,
                endpoints: server_side(),
                errno: EHOSTUNREACH,
            },
        ]);
        assert_eq!(cuts(&updates), vec![(250 * SECOND, Signature::Icmp)]);
    }

    #[test]
    fn an_active_connection_that_dies_counts_toward_an_age_limit() {
        let mut events = vec![
            open(0),
            retransmit(3600 * SECOND, 0),
            retransmit(3601 * SECOND, SECOND),
        ];
        events.extend(timed_out(3620 * SECOND, 20 * SECOND));
        let updates = run(&events);
        assert!(cuts(&updates).is_empty());
        assert!(updates.contains(&Update::DiedWhileActive {
            identity: imap_server(),
            age: 3600 * SECOND,
        }));
    }

    #[test]
    fn a_stall_the_peer_ends_is_recovered() {
        let updates = run(&[
            open(0),
            retransmit(10 * SECOND, 0),
            Event::StallRecovered {
                at: 12 * SECOND,
                socket: SOCK,
                stalled_for: 2 * SECOND,
            },
            close(20 * SECOND, tcp_state::LAST_ACK, Some(0)),
        ]);
        assert!(updates.contains(&Update::Stall {
            identity: imap_server(),
            duration: 2 * SECOND,
            outcome: StallOutcome::Recovered,
        }));
        assert_eq!(ends(&updates), vec![End::Fin]);
    }

    fn scanned(keepalive: KeepaliveObservation) -> crate::discovery::Scanned {
        crate::discovery::Scanned {
            netns: NETNS,
            endpoints: server_side(),
            state: tcp_state::ESTABLISHED,
            cookie: 77,
            inode: 5000,
            keepalive,
            last_data_sent_ms: 4000,
            last_data_recv_ms: 3000,
            last_ack_recv_ms: 2000,
        }
    }

    fn scan_into(
        model: &mut ConnectionModel,
        scan: &Scan,
        started: Nanos,
        finished: Nanos,
        out: &mut Vec<Update>,
    ) -> Vec<Seed> {
        model.apply_scan(scan, started, finished, &|_| None, out).0
    }

    fn scan_of(connections: Vec<crate::discovery::Scanned>) -> Scan {
        Scan {
            connections,
            ..Scan::default()
        }
    }

    #[test]
    fn a_scan_finds_connections_older_than_the_agent_and_seeds_them() {
        let mut model = model();
        let mut out = Vec::new();
        let scan = scan_of(vec![scanned(KeepaliveObservation::On {
            interval_ms: 60_000,
        })]);
        let seeds = scan_into(&mut model, &scan, 90 * SECOND, 100 * SECOND, &mut out);
        assert_eq!(
            seeds,
            vec![Seed {
                cookie: 77,
                last_received: 98 * SECOND,
                last_sent: 96 * SECOND,
                first_fin: None,
            }]
        );
        assert_eq!(
            out,
            vec![
                Update::Discovered(imap_server()),
                Update::KeepaliveChanged {
                    identity: imap_server(),
                    from: None,
                    to: KeepaliveSetting::Below2h,
                },
            ]
        );
        assert_eq!((model.open_count(), model.pending_adoptions()), (1, 1));
        // Scanned again: nothing new.
        out.clear();
        assert!(scan_into(&mut model, &scan, 200 * SECOND, 200 * SECOND, &mut out).is_empty());
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn an_adopted_connection_is_followed_by_socket_and_its_cut_measured() {
        let mut model = model();
        let mut out = Vec::new();
        let scan = scan_of(vec![scanned(KeepaliveObservation::Off)]);
        scan_into(&mut model, &scan, 0, 100 * SECOND, &mut out);
        out.clear();
        model.apply(
            Event::Adopted {
                at: 400 * SECOND,
                socket: SOCK,
                cookie: 77,
            },
            &mut out,
        );
        assert_eq!(model.pending_adoptions(), 0);
        model.apply(gap_end(400 * SECOND, 302 * SECOND, Side::Local), &mut out);
        model.apply(
            Event::ResetReceived {
                at: 400 * SECOND,
                socket: SOCK,
            },
            &mut out,
        );
        model.apply(close(400 * SECOND, tcp_state::ESTABLISHED, None), &mut out);
        assert_eq!(cuts(&out), vec![(302 * SECOND, Signature::Reset)]);
        assert!(out.contains(&Update::Closed {
            identity: imap_server(),
            end: End::ResetReceived,
            duration: None,
            keepalive: Some(KeepaliveSetting::Off),
        }));
        assert!(!out.contains(&Update::KernelStateEvicted), "{out:?}");
        assert_eq!(model.open_count(), 0);
    }

    #[test]
    fn a_scanned_connection_never_adopted_is_closed_by_its_endpoints() {
        let mut model = model();
        let mut out = Vec::new();
        scan_into(
            &mut model,
            &scan_of(vec![scanned(KeepaliveObservation::Unknown)]),
            0,
            SECOND,
            &mut out,
        );
        out.clear();
        let updates = {
            model.apply(close(5 * SECOND, tcp_state::LAST_ACK, None), &mut out);
            model.expire(u64::MAX, &mut out);
            out
        };
        assert_eq!(ends(&updates), vec![End::Fin]);
        assert!(!updates.contains(&Update::UntrackedClose));
        assert_eq!(model.open_count(), 0);
    }

    #[test]
    fn a_connection_seen_opening_is_not_discovered_again() {
        let mut model = model();
        let mut out = Vec::new();
        model.apply(open(SECOND), &mut out);
        out.clear();
        let seeds = scan_into(
            &mut model,
            &scan_of(vec![scanned(KeepaliveObservation::On {
                interval_ms: 7_200_000,
            })]),
            0,
            2 * SECOND,
            &mut out,
        );
        assert!(seeds.is_empty());
        assert_eq!(
            out,
            vec![Update::KeepaliveChanged {
                identity: imap_server(),
                from: None,
                to: KeepaliveSetting::TwoHoursOrMore,
            }]
        );
        let info: Vec<ConnectionInfo> = model.connections().collect();
        assert_eq!(info.len(), 1);
        assert_eq!((info[0].socket, info[0].cookie), (Some(SOCK), Some(77)));
    }

    #[test]
    fn a_connection_that_closed_during_the_scan_is_not_brought_back() {
        let mut model = model();
        let mut out = Vec::new();
        // Closed (unknown to the model) after the scan started, before it was applied.
        model.apply(close(5 * SECOND, tcp_state::LAST_ACK, None), &mut out);
        let seeds = scan_into(
            &mut model,
            &scan_of(vec![scanned(KeepaliveObservation::Off)]),
            4 * SECOND,
            6 * SECOND,
            &mut out,
        );
        assert!(seeds.is_empty());
        assert_eq!(model.open_count(), 0);
    }

    #[test]
    fn recently_closed_connections_are_kept_for_the_view() {
        let mut model = model();
        let mut out = Vec::new();
        model.apply(open(0), &mut out);
        model.apply(close(SECOND, tcp_state::LAST_ACK, Some(0)), &mut out);
        model.expire(u64::MAX, &mut out);
        let closed: Vec<&ClosedRecord> = model.recently_closed().collect();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].end, End::Fin);
    }

    #[test]
    fn a_connection_whose_close_was_lost_is_settled_by_the_next_scan() {
        let mut model = model();
        let mut out = Vec::new();
        model.apply(open(SECOND), &mut out);
        out.clear();
        let mut scan = scan_of(vec![]);
        // Its namespace was not read completely: nothing can be concluded.
        scan_into(&mut model, &scan, 5 * SECOND, 6 * SECOND, &mut out);
        assert_eq!(model.open_count(), 1);
        scan.complete.insert(NETNS);
        scan_into(&mut model, &scan, 5 * SECOND, 6 * SECOND, &mut out);
        assert_eq!(model.open_count(), 0);
        assert_eq!(
            out,
            vec![Update::Closed {
                identity: imap_server(),
                end: End::Unknown,
                duration: Some(5 * SECOND),
                keepalive: None,
            }]
        );
    }

    #[test]
    fn a_lost_close_in_a_stall_after_a_gap_is_still_a_blackhole_cut() {
        let mut model = model();
        let mut out = Vec::new();
        model.apply(open(SECOND), &mut out);
        model.apply(gap_end(100 * SECOND, 90 * SECOND, Side::Local), &mut out);
        model.apply(retransmit(100 * SECOND + 1, 0), &mut out);
        out.clear();
        let mut scan = scan_of(vec![]);
        scan.complete.insert(NETNS);
        let (_, vanished) = model.apply_scan(
            &scan,
            110 * SECOND,
            120 * SECOND,
            &|_| Some(100 * SECOND),
            &mut out,
        );
        assert_eq!(vanished, vec![SOCK]);
        assert_eq!(cuts(&out), vec![(90 * SECOND, Signature::Blackhole)]);
        assert_eq!(ends(&out), vec![End::Timeout]);
    }

    #[test]
    fn a_connection_opened_during_the_scan_is_not_settled() {
        let mut model = model();
        let mut out = Vec::new();
        model.apply(open(5 * SECOND), &mut out);
        let mut scan = scan_of(vec![]);
        scan.complete.insert(NETNS);
        scan_into(&mut model, &scan, 4 * SECOND, 6 * SECOND, &mut out);
        assert_eq!(model.open_count(), 1);
    }
}
