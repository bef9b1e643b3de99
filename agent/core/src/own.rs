//! The agent's own connections: those its scheduled checks open. The connection model leaves
//! them out, so that paths, cuts and the passive estimate describe the users' connections
//! only. A check compared with an estimate made of its own probes would confirm itself, and
//! its deliberately idled connections would count as cuts of the users' mail.
//!
//! A check binds each socket before connecting and registers its local port and the remote
//! address (`idlecut_check::registrar`); the pipeline takes registrations in before every kernel event it applies.
//! The registration is sent before the connect starts, so it is always taken in before that
//! connection's first event. A connection that then fails to connect (a SYN dropped, refused)
//! is never seen by the kernel programs, so no close would ever end its registration: the
//! check abandons it, and it ends [`ABANDONED_GRACE`] later (a user's connection may get the
//! same local port to the same server afterwards, and must not be left out).

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use crate::events::{Endpoints, Nanos};

/// Registrations kept at most: a check run opens a few dozen connections per port, so this
/// holds many runs of many checks; past it the oldest go first.
const KEPT_MAX: usize = 4096;
/// How long a registration whose close was never seen is kept (a check's longest silence is
/// its `max_idle`, hours at most).
const KEPT_FOR: Nanos = 24 * 3600 * 1_000_000_000;
/// How long an abandoned registration still counts: a handshake that completed just as the
/// check gave up on it emits its open and close a moment before the check says so.
pub const ABANDONED_GRACE: Nanos = 10 * 1_000_000_000;

/// What a check tells the pipeline about a connection of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnNotice {
    /// About to connect: leave this connection out.
    Connecting(OwnConnection),
    /// The connect failed or was given up: the kernel never saw it established, so no close
    /// will end the registration.
    Abandoned(OwnConnection),
}

/// One of the agent's connections: its local port, and the address it connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OwnConnection {
    pub local_port: u16,
    pub remote: SocketAddr,
}

impl OwnConnection {
    pub fn of(endpoints: &Endpoints) -> Self {
        Self {
            local_port: endpoints.local.port(),
            remote: endpoints.remote,
        }
    }
}

/// The registered connections, for the connection model.
#[derive(Debug, Default)]
pub struct OwnConnections {
    /// Connection -> (when registered, until when it counts).
    registered: HashMap<OwnConnection, (Nanos, Nanos)>,
    order: VecDeque<(Nanos, OwnConnection)>,
}

impl OwnConnections {
    pub fn take(&mut self, notice: OwnNotice, at: Nanos) {
        match notice {
            OwnNotice::Connecting(own) => self.register(own, at),
            OwnNotice::Abandoned(own) => {
                if let Some((_, until)) = self.registered.get_mut(&own) {
                    *until = (*until).min(at.saturating_add(ABANDONED_GRACE));
                }
            }
        }
    }

    pub fn register(&mut self, own: OwnConnection, at: Nanos) {
        self.registered
            .insert(own, (at, at.saturating_add(KEPT_FOR)));
        self.order.push_back((at, own));
        while self.order.len() > KEPT_MAX
            || self
                .order
                .front()
                .is_some_and(|&(since, _)| at >= since.saturating_add(KEPT_FOR))
        {
            let Some((since, gone)) = self.order.pop_front() else {
                break;
            };
            // Registered again since: that registration stays.
            if self
                .registered
                .get(&gone)
                .is_some_and(|&(at, _)| at == since)
            {
                self.registered.remove(&gone);
            }
        }
    }

    /// Whether the connection is one of the agent's own at `at`, as this host's side sees it.
    pub fn contains(&self, endpoints: &Endpoints, at: Nanos) -> bool {
        !self.registered.is_empty()
            && self
                .registered
                .get(&OwnConnection::of(endpoints))
                .is_some_and(|&(_, until)| at < until)
    }

    /// Forgets the connection at its close; returns whether it was the agent's own.
    pub fn closed(&mut self, endpoints: &Endpoints, at: Nanos) -> bool {
        !self.registered.is_empty()
            && self
                .registered
                .remove(&OwnConnection::of(endpoints))
                .is_some_and(|(_, until)| at < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(local_port: u16) -> Endpoints {
        Endpoints {
            local: SocketAddr::from(([10, 0, 1, 2], local_port)),
            remote: SocketAddr::from(([10, 0, 2, 2], 143)),
        }
    }

    fn own(local_port: u16) -> OwnConnection {
        OwnConnection {
            local_port,
            remote: SocketAddr::from(([10, 0, 2, 2], 143)),
        }
    }

    #[test]
    fn a_registered_connection_is_known_until_its_close() {
        let mut connections = OwnConnections::default();
        connections.register(own(40000), 1);
        assert!(connections.contains(&endpoints(40000), 2));
        assert!(!connections.contains(&endpoints(40001), 2));
        let mirrored = Endpoints {
            local: endpoints(40000).remote,
            remote: endpoints(40000).local,
        };
        assert!(!connections.contains(&mirrored, 2), "the server's side");
        assert!(connections.closed(&endpoints(40000), 3));
        assert!(!connections.contains(&endpoints(40000), 4));
        assert!(!connections.closed(&endpoints(40000), 4));
    }

    #[test]
    fn registrations_are_bounded_in_number_and_time() {
        let mut connections = OwnConnections::default();
        for port in 0..u16::try_from(KEPT_MAX).expect("small") + 10 {
            connections.register(own(port), 1);
        }
        assert_eq!(connections.registered.len(), KEPT_MAX);
        assert!(!connections.contains(&endpoints(9), 1), "the oldest went");
        assert!(connections.contains(&endpoints(10), 1));
        connections.register(own(10), 2);
        connections.register(own(60000), 2 + KEPT_FOR);
        assert!(connections.contains(&endpoints(60000), 2 + KEPT_FOR));
        assert!(
            !connections.contains(&endpoints(11), 2 + KEPT_FOR),
            "expired"
        );
        assert_eq!(connections.registered.len(), 1);
    }

    #[test]
    fn an_abandoned_connection_ends_its_registration_after_a_grace() {
        let mut connections = OwnConnections::default();
        connections.take(OwnNotice::Connecting(own(40000)), 1);
        connections.take(OwnNotice::Abandoned(own(40000)), 100);
        // A handshake that completed as the check gave up is still its own...
        assert!(connections.contains(&endpoints(40000), 100 + ABANDONED_GRACE - 1));
        // ...but a user's connection that gets the port later is not.
        assert!(!connections.contains(&endpoints(40000), 100 + ABANDONED_GRACE));
        assert!(!connections.closed(&endpoints(40000), 100 + ABANDONED_GRACE));
        // Abandoning what is not registered registers nothing.
        connections.take(OwnNotice::Abandoned(own(40001)), 200);
        assert!(!connections.contains(&endpoints(40001), 201));
    }
}
