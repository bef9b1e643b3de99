//! The agent's own connections: those its scheduled checks open. The connection model leaves
//! them out, so that paths, cuts and the passive estimate describe the users' connections
//! only. A check compared with an estimate made of its own probes would confirm itself, and
//! its deliberately idled connections would count as cuts of the users' mail.
//!
//! A check binds each socket before connecting and registers its local port and the remote
//! address here; the pipeline takes registrations in before every kernel event it applies.
//! The registration is sent before the connect starts, so it is always taken in before that
//! connection's first event.

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tokio::{net::TcpSocket, sync::mpsc};

use crate::events::{Endpoints, Nanos};

/// Registrations kept at most: a check run opens a few dozen connections per port, so this
/// holds many runs of many checks; past it the oldest go first.
const KEPT_MAX: usize = 4096;
/// How long a registration whose close was never seen is kept (a check's longest silence is
/// its `max_idle`, hours at most).
const KEPT_FOR: Nanos = 24 * 3600 * 1_000_000_000;

/// One of the agent's connections: its local port, and the address it connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OwnConnection {
    pub local_port: u16,
    pub remote: SocketAddr,
}

impl OwnConnection {
    fn of(endpoints: &Endpoints) -> Self {
        Self {
            local_port: endpoints.local.port(),
            remote: endpoints.remote,
        }
    }
}

/// Where a check registers the connections it opens. Cloned into every check.
#[derive(Clone, Debug)]
pub struct Registrar(mpsc::UnboundedSender<OwnConnection>);

pub type Registrations = mpsc::UnboundedReceiver<OwnConnection>;

pub fn channel() -> (Registrar, Registrations) {
    let (sender, receiver) = mpsc::unbounded_channel();
    (Registrar(sender), receiver)
}

impl Registrar {
    /// Binds `socket` to an ephemeral port and registers it as the agent's connection to
    /// `remote`. Call before connecting.
    pub fn bind(&self, socket: &TcpSocket, remote: SocketAddr) -> io::Result<()> {
        let any = match remote {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        socket.bind(any)?;
        let local_port = socket.local_addr()?.port();
        // The pipeline outlives every check; if it is gone, the agent is stopping.
        let _ = self.0.send(OwnConnection { local_port, remote });
        Ok(())
    }
}

/// The registered connections, for the connection model.
#[derive(Debug, Default)]
pub struct OwnConnections {
    registered: HashMap<OwnConnection, Nanos>,
    order: VecDeque<(Nanos, OwnConnection)>,
}

impl OwnConnections {
    pub fn register(&mut self, own: OwnConnection, at: Nanos) {
        self.registered.insert(own, at);
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
            if self.registered.get(&gone) == Some(&since) {
                self.registered.remove(&gone);
            }
        }
    }

    /// Whether the connection is one of the agent's own, as this host's side sees it.
    pub fn contains(&self, endpoints: &Endpoints) -> bool {
        !self.registered.is_empty() && self.registered.contains_key(&OwnConnection::of(endpoints))
    }

    /// Forgets the connection at its close; returns whether it was the agent's own.
    pub fn closed(&mut self, endpoints: &Endpoints) -> bool {
        !self.registered.is_empty()
            && self
                .registered
                .remove(&OwnConnection::of(endpoints))
                .is_some()
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
        assert!(connections.contains(&endpoints(40000)));
        assert!(!connections.contains(&endpoints(40001)));
        let mirrored = Endpoints {
            local: endpoints(40000).remote,
            remote: endpoints(40000).local,
        };
        assert!(!connections.contains(&mirrored), "the server's side");
        assert!(connections.closed(&endpoints(40000)));
        assert!(!connections.contains(&endpoints(40000)));
        assert!(!connections.closed(&endpoints(40000)));
    }

    #[test]
    fn registrations_are_bounded_in_number_and_time() {
        let mut connections = OwnConnections::default();
        for port in 0..u16::try_from(KEPT_MAX).expect("small") + 10 {
            connections.register(own(port), 1);
        }
        assert_eq!(connections.registered.len(), KEPT_MAX);
        assert!(!connections.contains(&endpoints(9)), "the oldest went");
        assert!(connections.contains(&endpoints(10)));
        connections.register(own(10), 2);
        connections.register(own(60000), 2 + KEPT_FOR);
        assert!(connections.contains(&endpoints(60000)));
        assert!(!connections.contains(&endpoints(11)), "expired");
        assert_eq!(connections.registered.len(), 1);
    }

    #[tokio::test]
    async fn binding_registers_the_ephemeral_port() {
        let (registrar, mut registrations) = channel();
        let socket = TcpSocket::new_v4().expect("socket");
        let remote = SocketAddr::from(([127, 0, 0, 1], 143));
        registrar.bind(&socket, remote).expect("bind");
        let registered = registrations.try_recv().expect("registered");
        assert_eq!(registered.remote, remote);
        assert_eq!(
            registered.local_port,
            socket.local_addr().expect("bound").port()
        );
        assert_ne!(registered.local_port, 0);
    }
}
