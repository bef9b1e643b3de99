//! The open connections: those the kernel programs follow, by socket address, and those only a
//! scan has found so far, by cookie, with one index by endpoints over both.
//!
//! The index is the table's invariant: every connection is indexed under its endpoints and
//! namespace, and nothing else is. Only `insert`, `remove` and `set_netns` change either, so a
//! connection's endpoints and namespace are readable but not writable outside this module.

use std::collections::HashMap;

use super::{ConnectionInfo, Identity, Keepalive};
use crate::{
    discovery::Owner,
    events::{Endpoints, Nanos},
};

/// How the kernel programs and the model refer to a connection: its socket address once a
/// program has met it, its cookie while only the scan knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Socket(u64),
    Cookie(u64),
}

/// An idle gap this host ended by speaking, not answered yet.
#[derive(Clone, Copy, Debug)]
pub struct UnansweredGap {
    pub gap: Nanos,
    pub retransmitted: bool,
    pub icmp: bool,
}

/// What the model knows of one connection.
#[derive(Clone, Debug)]
pub struct Connection {
    pub identity: Identity,
    /// Indexed: see the module documentation.
    endpoints: Endpoints,
    /// Inode of its network namespace, 0 when unknown. Indexed.
    netns: u32,
    pub opened_at: Option<Nanos>,
    /// When the model learned of it (its open, or the scan that found it).
    pub known_since: Nanos,
    pub cookie: Option<u64>,
    pub inode: Option<u32>,
    pub owner: Option<Owner>,
    pub keepalive: Option<Keepalive>,
    pub retransmits: u32,
    /// Idle clocks from the last scan (kernel time of the last segment received and sent),
    /// for when the kernel's own state cannot be read.
    pub scanned_clocks: Option<(Nanos, Nanos)>,
    pub reset_received: bool,
    pub reset_sent: bool,
    /// An error reported while the connection was still open, with when.
    pub error: Option<(Nanos, u16)>,
    pub unanswered: Option<UnansweredGap>,
    /// A gap the peer ended at this time, survived unless a RST follows within the grace.
    pub peer_ended_gap: Option<(Nanos, Nanos)>,
    /// A cut after idle was reported for it: its death is not evidence of an age limit.
    pub cut_after_idle: bool,
}

impl Connection {
    /// A connection the model just learned of, with nothing yet seen of it.
    pub fn new(
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

    pub fn endpoints(&self) -> Endpoints {
        self.endpoints
    }

    pub fn netns(&self) -> u32 {
        self.netns
    }

    /// What the per-connection view shows of it; `socket` when a program follows it.
    pub fn info(&self, socket: Option<u64>) -> ConnectionInfo {
        ConnectionInfo {
            identity: self.identity.clone(),
            endpoints: self.endpoints,
            netns: self.netns,
            socket,
            cookie: self.cookie,
            owner: self.owner.clone(),
            opened_at: self.opened_at,
            keepalive: self.keepalive,
            retransmits: self.retransmits,
            scanned_clocks: self.scanned_clocks,
        }
    }
}

#[derive(Debug, Default)]
pub struct ConnectionTable {
    by_socket: HashMap<u64, Connection>,
    by_cookie: HashMap<u64, Connection>,
    by_endpoints: HashMap<Endpoints, Vec<(u32, Key)>>,
}

impl ConnectionTable {
    /// Connections found by a scan that no kernel program has met yet.
    pub fn unadopted(&self) -> usize {
        self.by_cookie.len()
    }

    pub fn len(&self) -> usize {
        self.by_socket.len() + self.by_cookie.len()
    }

    pub fn contains(&self, key: Key) -> bool {
        self.map(key).contains_key(&key.id())
    }

    /// Puts `connection` under `key`; returns the one it replaces.
    pub fn insert(&mut self, key: Key, connection: Connection) -> Option<Connection> {
        let previous = self.remove(key);
        self.by_endpoints
            .entry(connection.endpoints)
            .or_default()
            .push((connection.netns, key));
        self.map_mut(key).insert(key.id(), connection);
        previous
    }

    pub fn remove(&mut self, key: Key) -> Option<Connection> {
        let connection = self.map_mut(key).remove(&key.id())?;
        self.unindex(&connection.endpoints, key);
        Some(connection)
    }

    pub fn get_mut(&mut self, key: Key) -> Option<&mut Connection> {
        self.map_mut(key).get_mut(&key.id())
    }

    /// Learns the namespace of a connection that had none.
    pub fn set_netns(&mut self, key: Key, netns: u32) {
        let Some(connection) = self.map_mut(key).get_mut(&key.id()) else {
            return;
        };
        connection.netns = netns;
        let endpoints = connection.endpoints;
        if let Some(entry) = self
            .by_endpoints
            .get_mut(&endpoints)
            .and_then(|entries| entries.iter_mut().find(|(_, k)| *k == key))
        {
            entry.0 = netns;
        }
    }

    /// The connection with these endpoints in this namespace. A namespace of 0 (unknown, on
    /// kernels without BTF) matches any.
    pub fn find(&self, endpoints: &Endpoints, netns: u32) -> Option<Key> {
        self.by_endpoints.get(endpoints).and_then(|entries| {
            entries
                .iter()
                .find(|&&(n, _)| n == netns || n == 0 || netns == 0)
                .map(|&(_, key)| key)
        })
    }

    /// Every connection, with its key.
    pub fn iter(&self) -> impl Iterator<Item = (Key, &Connection)> {
        let sockets = self.by_socket.iter().map(|(&s, c)| (Key::Socket(s), c));
        let cookies = self.by_cookie.iter().map(|(&k, c)| (Key::Cookie(k), c));
        sockets.chain(cookies)
    }

    fn unindex(&mut self, endpoints: &Endpoints, key: Key) {
        if let Some(entries) = self.by_endpoints.get_mut(endpoints) {
            entries.retain(|&(_, k)| k != key);
            if entries.is_empty() {
                self.by_endpoints.remove(endpoints);
            }
        }
    }

    fn map(&self, key: Key) -> &HashMap<u64, Connection> {
        match key {
            Key::Socket(_) => &self.by_socket,
            Key::Cookie(_) => &self.by_cookie,
        }
    }

    fn map_mut(&mut self, key: Key) -> &mut HashMap<u64, Connection> {
        match key {
            Key::Socket(_) => &mut self.by_socket,
            Key::Cookie(_) => &mut self.by_cookie,
        }
    }
}

impl Key {
    fn id(self) -> u64 {
        match self {
            Self::Socket(id) | Self::Cookie(id) => id,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::vocabulary::Role;

    fn connection(remote_port: u16, netns: u32) -> Connection {
        let endpoints = Endpoints {
            local: "10.0.2.2:143".parse().unwrap(),
            remote: format!("10.0.1.2:{remote_port}").parse().unwrap(),
        };
        let identity = Identity {
            service: Arc::from("imap"),
            role: Role::Server,
            remote: endpoints.remote.ip(),
        };
        Connection::new(identity, endpoints, netns, None, 0)
    }

    #[test]
    fn the_index_follows_inserts_replacements_and_removals() {
        let mut table = ConnectionTable::default();
        let a = connection(40_000, 7);
        let ends = a.endpoints();
        assert!(table.insert(Key::Cookie(1), a.clone()).is_none());
        assert_eq!(table.find(&ends, 7), Some(Key::Cookie(1)));
        assert_eq!(table.find(&ends, 8), None);
        assert_eq!(table.find(&ends, 0), Some(Key::Cookie(1)), "0 matches any");
        // Adopted: the same connection, now by socket.
        let a = table.remove(Key::Cookie(1)).unwrap();
        table.insert(Key::Socket(9), a);
        assert_eq!(table.find(&ends, 7), Some(Key::Socket(9)));
        assert_eq!((table.len(), table.unadopted()), (1, 0));
        // Replaced under the same key by another connection: the old endpoints are gone.
        let b = connection(40_001, 7);
        let replaced = table.insert(Key::Socket(9), b.clone()).unwrap();
        assert_eq!(replaced.endpoints(), ends);
        assert_eq!(table.find(&ends, 7), None);
        assert_eq!(table.find(&b.endpoints(), 7), Some(Key::Socket(9)));
        table.remove(Key::Socket(9));
        assert_eq!(table.len(), 0);
        assert!(table.by_endpoints.is_empty());
    }

    #[test]
    fn a_namespace_learned_later_is_indexed() {
        let mut table = ConnectionTable::default();
        let a = connection(40_000, 0);
        let ends = a.endpoints();
        table.insert(Key::Socket(1), a);
        assert_eq!(table.find(&ends, 5), Some(Key::Socket(1)));
        table.set_netns(Key::Socket(1), 7);
        assert_eq!(table.find(&ends, 5), None);
        assert_eq!(table.find(&ends, 7), Some(Key::Socket(1)));
        assert_eq!(table.iter().next().unwrap().1.netns(), 7);
    }
}
