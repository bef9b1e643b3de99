//! The open connections: those the kernel programs follow, by socket address, and those only a
//! scan has found so far, by cookie, with one index by endpoints over both.
//!
//! The index is the table's invariant: every connection is indexed under its endpoints, and
//! nothing else is. Only `insert` and `remove` change either, so a connection's endpoints are
//! readable but not writable outside this module (nor its namespace, which `find` matches).
//!
//! Compact, because the agent follows every connection of the host's mail ports: the
//! connections sit in one dense vector (a removal moves the last one into the hole), and both
//! indexes hold only 4-byte positions in it, hashed by key and by endpoints, which they read
//! from the connection itself. See `the_cost_of_a_connection` in the tests for the arithmetic.

use std::{
    hash::{BuildHasher, RandomState},
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use hashbrown::HashTable;

use super::{
    ConnectionInfo, CutContext, Identity, Keepalive, Kind, PmtuClues, ResetVerdict, Services,
    cadence::CadenceDetector,
};
use crate::{
    events::{Endpoints, Nanos},
    scan::Owner,
};
use idlecut_api::vocabulary::Signature;

/// How the kernel programs and the model refer to a connection: its socket address once a
/// program has met it, its cookie while only the scan knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Socket(u64),
    Cookie(u64),
}

/// An idle gap this host ended by speaking, not answered yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnansweredGap {
    pub gap: Nanos,
    pub retransmitted: bool,
    pub icmp: bool,
}

/// What a connection has only for a while (an unanswered gap until the answer, a peer-ended
/// gap for its grace period) or only at its end (an error). Boxed, and only while one is set,
/// so that the connections without any (nearly all) do not pay its 88 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transient {
    /// An error reported while the connection was still open, with when.
    pub error: Option<(Nanos, u16)>,
    pub unanswered: Option<UnansweredGap>,
    /// A gap the peer ended at this time, survived unless a RST follows within the grace.
    pub peer_ended_gap: Option<(Nanos, Nanos)>,
    /// Who sent the RST the connection received, once one did.
    pub reset: Option<ResetVerdict>,
    /// The soft error (errno) an ICMP error left on the socket, as its latest retransmission
    /// showed it: TCP is retransmitting through it (RFC 1122).
    pub soft_error: Option<u16>,
    /// What the retransmissions of the current stall said of the path's MTU.
    pub pmtu: Option<PmtuClues>,
}

/// `Endpoints` in 38 bytes instead of 64: both addresses as IPv6 (IPv4 mapped, and flagged so
/// that it comes back as IPv4) and both ports. Lossless for every `Endpoints` the agent makes:
/// built from an address and a port, their IPv6 addresses carry no flow label nor scope id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PackedEndpoints {
    addresses: [[u8; 16]; 2],
    ports: [u16; 2],
    v4: [bool; 2],
}

impl PackedEndpoints {
    pub fn new(endpoints: &Endpoints) -> Self {
        let pack = |addr: &SocketAddr| match addr.ip() {
            IpAddr::V4(ip) => (ip.to_ipv6_mapped().octets(), true),
            IpAddr::V6(ip) => (ip.octets(), false),
        };
        let (local, local_v4) = pack(&endpoints.local);
        let (remote, remote_v4) = pack(&endpoints.remote);
        Self {
            addresses: [local, remote],
            ports: [endpoints.local.port(), endpoints.remote.port()],
            v4: [local_v4, remote_v4],
        }
    }

    pub fn unpack(&self) -> Endpoints {
        Endpoints {
            local: SocketAddr::new(self.ip(0), self.ports[0]),
            remote: SocketAddr::new(self.ip(1), self.ports[1]),
        }
    }

    fn ip(&self, side: usize) -> IpAddr {
        let ip = Ipv6Addr::from(self.addresses[side]);
        match ip.to_ipv4_mapped() {
            Some(v4) if self.v4[side] => IpAddr::V4(v4),
            _ => IpAddr::V6(ip),
        }
    }
}

/// What the model knows of one connection.
#[derive(Clone, Debug)]
pub struct Connection {
    /// Indexed: see the module documentation.
    endpoints: PackedEndpoints,
    /// Inode of its network namespace, 0 when unknown.
    netns: u32,
    /// Its service and role; its identity is derived from them and its remote address.
    kind: Kind,
    pub opened_at: Option<Nanos>,
    /// When the model learned of it (its open, or the scan that found it).
    pub known_since: Nanos,
    pub cookie: Option<u64>,
    /// Shared by the connections of one process (see `discovery::processes`).
    pub owner: Option<Arc<Owner>>,
    pub keepalive: Option<Keepalive>,
    pub retransmits: u32,
    /// Idle clocks from the last scan (kernel time of the last segment received and sent),
    /// for when the kernel's own state cannot be read.
    pub scanned_clocks: Option<(Nanos, Nanos)>,
    pub reset_received: bool,
    pub reset_sent: bool,
    /// A cut after idle was reported for it: its death is not evidence of an age limit.
    pub cut_after_idle: bool,
    /// Its last survived gaps and the cadence they showed.
    pub cadence: CadenceDetector,
    /// None while nothing transient is set: see `Transient`.
    transient: Option<Box<Transient>>,
}

impl Connection {
    /// A connection the model just learned of, with nothing yet seen of it.
    pub fn new(
        kind: Kind,
        endpoints: &Endpoints,
        netns: u32,
        opened_at: Option<Nanos>,
        known_since: Nanos,
    ) -> Self {
        Self {
            endpoints: PackedEndpoints::new(endpoints),
            netns,
            kind,
            opened_at,
            known_since,
            cookie: None,
            owner: None,
            keepalive: None,
            retransmits: 0,
            scanned_clocks: None,
            reset_received: false,
            reset_sent: false,
            cut_after_idle: false,
            cadence: CadenceDetector::default(),
            transient: None,
        }
    }

    pub fn endpoints(&self) -> Endpoints {
        self.endpoints.unpack()
    }

    pub fn netns(&self) -> u32 {
        self.netns
    }

    /// Where and when a cut of this connection happened, for the log and the exemplars; with
    /// who sent the RST when a RST cut it.
    pub fn cut_context(&self, at: Nanos, signature: Signature) -> CutContext {
        let transient = self.transient();
        CutContext {
            at,
            endpoints: Some(self.endpoints()),
            netns: self.netns,
            owner: self.owner.clone(),
            reset: transient.reset.filter(|_| signature == Signature::Reset),
            pmtu: transient.pmtu.filter(|_| signature == Signature::Pmtu),
        }
    }

    pub fn identity(&self, services: &Services) -> Identity {
        services.identity(self.kind, self.endpoints.ip(1))
    }

    /// Its transient facts (all None for most connections).
    pub fn transient(&self) -> Transient {
        self.transient.as_deref().copied().unwrap_or_default()
    }

    /// Changes its transient facts with `change`; the box is made when the first is set and
    /// given back when the last is cleared.
    pub fn edit_transient<R>(&mut self, change: impl FnOnce(&mut Transient) -> R) -> R {
        let mut transient = self.transient();
        let result = change(&mut transient);
        if transient == Transient::default() {
            self.transient = None;
        } else if let Some(boxed) = &mut self.transient {
            **boxed = transient;
        } else {
            self.transient = Some(Box::new(transient));
        }
        result
    }

    /// What the per-connection view shows of it; `socket` when a program follows it.
    pub fn info(&self, services: &Services, socket: Option<u64>) -> ConnectionInfo {
        ConnectionInfo {
            identity: self.identity(services),
            endpoints: self.endpoints(),
            netns: self.netns,
            socket,
            cookie: self.cookie,
            owner: self.owner.clone(),
            opened_at: self.opened_at,
            keepalive: self.keepalive,
            retransmits: self.retransmits,
            scanned_clocks: self.scanned_clocks,
            soft_error: self.transient().soft_error,
            cadence: self.cadence.cadence(),
        }
    }
}

/// A connection and the key it is filed under.
#[derive(Clone, Debug)]
struct Slot {
    key: Key,
    connection: Connection,
}

/// Below this many slots of capacity nothing is given back.
const MIN_SHRINK: usize = 1024;

#[derive(Debug, Default)]
pub struct ConnectionTable {
    /// Every connection, densely (see the module documentation).
    slots: Vec<Slot>,
    /// Positions in `slots`, hashed by key.
    by_key: HashTable<u32>,
    /// Positions in `slots`, hashed by endpoints: connections with the same endpoints (in
    /// different namespaces) have an entry each.
    by_endpoints: HashTable<u32>,
    hasher: RandomState,
    /// How many are filed by cookie.
    cookies: usize,
}

impl ConnectionTable {
    /// Connections found by a scan that no kernel program has met yet.
    pub fn unadopted(&self) -> usize {
        self.cookies
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn contains(&self, key: Key) -> bool {
        self.position(key).is_some()
    }

    /// Puts `connection` under `key`; returns the one it replaces.
    pub fn insert(&mut self, key: Key, connection: Connection) -> Option<Connection> {
        let previous = self.remove(key);
        // Four billion connections would not fit in memory first.
        let Ok(position) = u32::try_from(self.slots.len()) else {
            return previous;
        };
        let Self {
            slots,
            by_key,
            by_endpoints,
            hasher,
            cookies,
        } = self;
        let endpoints = connection.endpoints;
        slots.push(Slot { key, connection });
        by_key.insert_unique(hasher.hash_one(key), position, |&p| {
            hasher.hash_one(slot(slots, p).key)
        });
        by_endpoints.insert_unique(hasher.hash_one(endpoints), position, |&p| {
            hasher.hash_one(slot(slots, p).connection.endpoints)
        });
        if let Key::Cookie(_) = key {
            *cookies += 1;
        }
        previous
    }

    pub fn remove(&mut self, key: Key) -> Option<Connection> {
        let Self {
            slots,
            by_key,
            by_endpoints,
            hasher,
            cookies,
        } = self;
        let (position, _) = by_key
            .find_entry(hasher.hash_one(key), |&p| slot(slots, p).key == key)
            .ok()?
            .remove();
        let removed = slots.swap_remove(position as usize);
        if let Ok(entry) = by_endpoints
            .find_entry(hasher.hash_one(removed.connection.endpoints), |&p| {
                p == position
            })
        {
            entry.remove();
        }
        // The last one moved into the hole: its index entries follow it.
        if let Some(moved) = slots.get(position as usize) {
            let from = slots.len() as u32;
            if let Some(p) = by_key.find_mut(hasher.hash_one(moved.key), |&p| p == from) {
                *p = position;
            }
            let endpoints = moved.connection.endpoints;
            if let Some(p) = by_endpoints.find_mut(hasher.hash_one(endpoints), |&p| p == from) {
                *p = position;
            }
        }
        if let Key::Cookie(_) = key {
            *cookies -= 1;
        }
        self.give_back();
        Some(removed.connection)
    }

    pub fn get_mut(&mut self, key: Key) -> Option<&mut Connection> {
        let position = self.position(key)?;
        self.slots
            .get_mut(position)
            .map(|slot| &mut slot.connection)
    }

    /// Learns the namespace of a connection that had none.
    pub fn set_netns(&mut self, key: Key, netns: u32) {
        if let Some(connection) = self.get_mut(key) {
            connection.netns = netns;
        }
    }

    /// The connection with these endpoints in this namespace. A namespace of 0 (unknown, on
    /// kernels without BTF) matches any.
    pub fn find(&self, endpoints: &Endpoints, netns: u32) -> Option<Key> {
        let packed = PackedEndpoints::new(endpoints);
        self.by_endpoints
            .iter_hash(self.hasher.hash_one(packed))
            .map(|&p| slot(&self.slots, p))
            .find(|slot| {
                let connection = &slot.connection;
                connection.endpoints == packed
                    && (connection.netns == netns || connection.netns == 0 || netns == 0)
            })
            .map(|slot| slot.key)
    }

    /// Every connection, with its key.
    pub fn iter(&self) -> impl Iterator<Item = (Key, &Connection)> {
        self.slots.iter().map(|slot| (slot.key, &slot.connection))
    }

    fn position(&self, key: Key) -> Option<usize> {
        self.by_key
            .find(self.hasher.hash_one(key), |&p| {
                slot(&self.slots, p).key == key
            })
            .map(|&p| p as usize)
    }

    /// Gives memory back once most of it is unused (after many connections closed): a part at
    /// a quarter of its capacity shrinks to twice what it holds, so that it does not shrink
    /// and grow back and forth.
    fn give_back(&mut self) {
        let len = self.slots.len();
        let Self {
            slots,
            by_key,
            by_endpoints,
            hasher,
            ..
        } = self;
        let wasteful = |capacity: usize| capacity > MIN_SHRINK && len < capacity / 4;
        if wasteful(slots.capacity()) {
            slots.shrink_to(len * 2);
        }
        if wasteful(by_key.capacity()) {
            by_key.shrink_to(len * 2, |&p| hasher.hash_one(slot(slots, p).key));
        }
        if wasteful(by_endpoints.capacity()) {
            by_endpoints.shrink_to(len * 2, |&p| {
                hasher.hash_one(slot(slots, p).connection.endpoints)
            });
        }
    }
}

/// The slot at an index position. Every position in the indexes is one of `slots`: `insert`
/// and `remove` keep them so.
fn slot(slots: &[Slot], position: u32) -> &Slot {
    &slots[position as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::parse_ports;

    fn connection(remote_port: u16, netns: u32) -> Connection {
        let endpoints = Endpoints {
            local: "10.0.2.2:143".parse().unwrap(),
            remote: format!("10.0.1.2:{remote_port}").parse().unwrap(),
        };
        let services = Services::new(&parse_ports("143=imap").unwrap());
        let kind = services.kind(&endpoints).unwrap();
        Connection::new(kind, &endpoints, netns, None, 0)
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

    fn many(n: u32) -> Vec<Connection> {
        let services = Services::new(&parse_ports("143=imap").unwrap());
        (0..n)
            .map(|i| {
                let [_, a, b, c] = i.to_be_bytes();
                let endpoints = Endpoints {
                    local: "10.0.2.2:143".parse().unwrap(),
                    remote: SocketAddr::new(IpAddr::from([10, a, b, c]), 40_000),
                };
                let kind = services.kind(&endpoints).unwrap();
                Connection::new(kind, &endpoints, 7, None, 0)
            })
            .collect()
    }

    #[test]
    fn removals_in_the_middle_keep_every_other_connection_found() {
        let mut table = ConnectionTable::default();
        let connections = many(3000);
        let key_of = |i: u64| {
            if i.is_multiple_of(3) {
                Key::Cookie(i)
            } else {
                Key::Socket(i)
            }
        };
        for (i, connection) in (0u64..).zip(&connections) {
            table.insert(key_of(i), connection.clone());
        }
        assert_eq!(table.unadopted(), 1000);
        // Every other one goes: each removal moves the last connection into its slot.
        for i in (0..3000).step_by(2) {
            let removed = table.remove(key_of(i)).unwrap();
            assert_eq!(removed.endpoints(), connections[i as usize].endpoints());
        }
        assert_eq!((table.len(), table.unadopted()), (1500, 500));
        for (i, connection) in (0u64..).zip(&connections) {
            let found = table.find(&connection.endpoints(), 7);
            if i.is_multiple_of(2) {
                assert_eq!(found, None);
                assert!(!table.contains(key_of(i)));
            } else {
                assert_eq!(found, Some(key_of(i)));
                let kept = table.get_mut(key_of(i)).unwrap();
                assert_eq!(kept.endpoints(), connection.endpoints());
            }
        }
        // Nearly all gone: the memory is given back, and what is left is still found.
        for i in (1..2990).step_by(2) {
            table.remove(key_of(i));
        }
        assert_eq!(table.len(), 5);
        assert!(table.slots.capacity() <= MIN_SHRINK);
        for i in (2991..3000).step_by(2) {
            assert_eq!(
                table.find(&connections[i].endpoints(), 7),
                Some(key_of(i as u64))
            );
        }
    }

    #[test]
    fn the_same_endpoints_in_two_namespaces_are_two_connections() {
        let mut table = ConnectionTable::default();
        let a = connection(40_000, 7);
        let ends = a.endpoints();
        table.insert(Key::Socket(1), a);
        table.insert(Key::Socket(2), connection(40_000, 8));
        assert_eq!(table.find(&ends, 7), Some(Key::Socket(1)));
        assert_eq!(table.find(&ends, 8), Some(Key::Socket(2)));
        table.remove(Key::Socket(1));
        assert_eq!(table.find(&ends, 7), None);
        assert_eq!(table.find(&ends, 0), Some(Key::Socket(2)));
    }

    #[test]
    fn endpoints_pack_without_loss() {
        for (local, remote) in [
            ("10.0.2.2:143", "10.0.1.2:40000"),
            ("[2001:db8::1]:993", "[2001:db8::2]:50000"),
            // A v4-mapped address in an IPv6 one stays IPv6; so does one of both families.
            ("[::ffff:10.0.0.1]:143", "[2001:db8::2]:1"),
            ("10.0.0.1:143", "[::1]:65535"),
            ("0.0.0.0:0", "[::]:0"),
        ] {
            let endpoints = Endpoints {
                local: local.parse().unwrap(),
                remote: remote.parse().unwrap(),
            };
            assert_eq!(PackedEndpoints::new(&endpoints).unpack(), endpoints);
        }
    }

    #[test]
    fn transient_facts_are_boxed_only_while_one_is_set() {
        let mut a = connection(40_000, 7);
        assert!(a.transient.is_none());
        // Looking at what is not there makes nothing.
        a.edit_transient(|t| {
            if let Some(unanswered) = &mut t.unanswered {
                unanswered.icmp = true;
            }
        });
        assert!(a.transient.is_none());
        a.edit_transient(|t| t.peer_ended_gap = Some((1, 2)));
        a.edit_transient(|t| t.error = Some((3, 110)));
        assert!(a.transient.is_some());
        assert_eq!(a.edit_transient(|t| t.peer_ended_gap.take()), Some((1, 2)));
        assert_eq!(a.transient().error, Some((3, 110)));
        a.edit_transient(|t| t.error = None);
        assert!(a.transient.is_none(), "given back with the last one");
    }

    /// What a tracked connection costs the agent, pinned: a field added to `Connection` is a
    /// choice made knowingly (the target is 300 B of agent memory per connection, all told).
    ///
    /// - Its slot: 216 B (the connection's 200 and its 16-byte key). The slots are one dense
    ///   vector: only those in use are touched, the rest of its capacity (at most as much
    ///   again, in a mapping of its own: see `heap`) is never resident. 40 B of the 200 are
    ///   its cadence detector (its last 8 survived gaps, see `cadence`): inline rather than
    ///   boxed, since the connections followed for long, the ones that matter here, have gaps.
    /// - Each of the two indexes: a 4-byte position and hashbrown's 1 control byte per bucket,
    ///   buckets a power of two at most 7/8 full: at 100,000 connections 131,072 buckets, so
    ///   5 x 1.31 = 6.6 B per connection per index.
    /// - So 216 + 2 x 6.6 = 229 B at 100,000 connections (at most 216 + 2 x 5 x 2.29 = 239 B
    ///   just past a doubling), plus what only some have: the `Transient` box (88 B, a 96-byte
    ///   chunk of glibc's malloc, as 80 was) while a fact is set; the `Owner`, shared by a
    ///   process's connections.
    #[test]
    fn the_cost_of_a_connection() {
        assert_eq!(size_of::<PackedEndpoints>(), 38);
        assert_eq!(size_of::<Kind>(), 4);
        assert_eq!(size_of::<Connection>(), 200);
        assert_eq!(size_of::<Slot>(), 216);
        assert_eq!(size_of::<Transient>(), 88);
        let mut table = ConnectionTable::default();
        let count = 100_000;
        for (socket, connection) in (0..).zip(many(count)) {
            table.insert(Key::Socket(socket), connection);
        }
        // Buckets from the capacity (7/8 of them).
        let buckets = |capacity: usize| (capacity * 8).div_ceil(7).next_power_of_two();
        let index_bytes = |capacity| buckets(capacity) * (size_of::<u32>() + 1);
        assert_eq!(buckets(table.by_key.capacity()), 131_072);
        let bytes = table.len() * size_of::<Slot>()
            + index_bytes(table.by_key.capacity())
            + index_bytes(table.by_endpoints.capacity());
        assert_eq!(bytes / count as usize, 229);
    }
}
