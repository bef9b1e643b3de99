//! Paths: connections grouped by (service, role, remote prefix), the unit every aggregate and
//! verdict is about. The number of paths is capped so that metric cardinality stays bounded;
//! past the cap, new paths are reported together as `path="other"`.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use prometheus_client::encoding::EncodeLabelSet;

use crate::{model::Identity, vocabulary::Role};

/// The label of paths beyond the cap.
pub const OTHER: &str = "other";

/// A path, and the labels of its series in the metrics (`service`, `role`, `path`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PathKey {
    pub service: Arc<str>,
    pub role: Role,
    /// The remote prefix, e.g. `192.0.2.0/24`, or [`OTHER`].
    pub path: Arc<str>,
}

#[derive(Debug)]
pub struct PathTable {
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    max_paths: usize,
    known: HashMap<(Arc<str>, Role, IpAddr), Arc<str>>,
    other: Arc<str>,
}

impl PathTable {
    pub fn new(ipv4_prefix: u8, ipv6_prefix: u8, max_paths: usize) -> Self {
        Self {
            ipv4_prefix,
            ipv6_prefix,
            max_paths,
            known: HashMap::new(),
            other: Arc::from(OTHER),
        }
    }

    /// The path a connection belongs to, and whether it got its own label just now. A path,
    /// once given its own label, keeps it.
    pub fn key(&mut self, identity: &Identity) -> (PathKey, bool) {
        let lookup = self.lookup(identity);
        if self.known.contains_key(&lookup) || self.known.len() >= self.max_paths {
            return (self.path_of(identity), false);
        }
        let path: Arc<str> = Arc::from(prefix_label(
            identity.remote,
            self.ipv4_prefix,
            self.ipv6_prefix,
        ));
        self.known.insert(lookup, path.clone());
        (self.with_path(identity, path), true)
    }

    /// The path a connection belongs to as the table stands (`other` if it has no label).
    pub fn path_of(&self, identity: &Identity) -> PathKey {
        let path = self
            .known
            .get(&self.lookup(identity))
            .unwrap_or(&self.other);
        self.with_path(identity, path.clone())
    }

    fn lookup(&self, identity: &Identity) -> (Arc<str>, Role, IpAddr) {
        let network = network(identity.remote, self.ipv4_prefix, self.ipv6_prefix);
        (identity.service.clone(), identity.role, network)
    }

    fn with_path(&self, identity: &Identity, path: Arc<str>) -> PathKey {
        PathKey {
            service: identity.service.clone(),
            role: identity.role,
            path,
        }
    }

    /// Paths that have their own label.
    pub fn len(&self) -> usize {
        self.known.len()
    }
}

/// The path label of a remote address (before the cap): its prefix, such as `192.0.2.0/24`.
pub fn prefix_label(ip: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> String {
    let bits = match ip {
        IpAddr::V4(_) => ipv4_prefix,
        IpAddr::V6(_) => ipv6_prefix,
    };
    format!("{}/{bits}", network(ip, ipv4_prefix, ipv6_prefix))
}

/// The network address of `ip` under the configured prefix lengths.
pub fn network(ip: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(ipv4_prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(ipv6_prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(service: &str, role: Role, remote: &str) -> Identity {
        Identity {
            service: Arc::from(service),
            role,
            remote: remote.parse().unwrap(),
        }
    }

    #[test]
    fn prefixes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(network(ip("192.0.2.77"), 24, 48), ip("192.0.2.0"));
        assert_eq!(network(ip("192.0.2.77"), 32, 48), ip("192.0.2.77"));
        assert_eq!(network(ip("192.0.2.77"), 0, 48), ip("0.0.0.0"));
        assert_eq!(network(ip("192.0.2.77"), 20, 48), ip("192.0.0.0"));
        assert_eq!(network(ip("2001:db8:1:2::5"), 24, 48), ip("2001:db8:1::"));
        assert_eq!(
            network(ip("2001:db8:1:2::5"), 24, 128),
            ip("2001:db8:1:2::5")
        );
        assert_eq!(network(ip("2001:db8:1:2::5"), 24, 0), ip("::"));
    }

    #[test]
    fn keys_group_by_service_role_and_prefix() {
        let mut table = PathTable::new(24, 48, 10);
        let (a, new) = table.key(&identity("imap", Role::Client, "192.0.2.1"));
        assert!(new);
        let (b, new) = table.key(&identity("imap", Role::Client, "192.0.2.200"));
        assert!(!new, "same prefix");
        let (c, _) = table.key(&identity("imap", Role::Server, "192.0.2.1"));
        let (d, _) = table.key(&identity("imap", Role::Client, "2001:db8:1:ffff::1"));
        assert_eq!(a, b);
        assert_eq!(&*a.path, "192.0.2.0/24");
        assert_ne!(a, c);
        assert_eq!(&*d.path, "2001:db8:1::/48");
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn paths_beyond_the_cap_are_other_and_known_ones_stay() {
        let mut table = PathTable::new(24, 48, 2);
        let (first, _) = table.key(&identity("imap", Role::Client, "192.0.2.1"));
        table.key(&identity("imap", Role::Client, "198.51.100.1"));
        let (third, new) = table.key(&identity("imap", Role::Client, "203.0.113.1"));
        assert!(!new, "beyond the cap");
        assert_eq!(&*third.path, OTHER);
        assert_eq!(&*third.service, "imap");
        assert_eq!(
            table.key(&identity("imap", Role::Client, "192.0.2.9")),
            (first.clone(), false)
        );
        assert_eq!(
            table.path_of(&identity("imap", Role::Client, "192.0.2.9")),
            first
        );
        assert_eq!(
            table.path_of(&identity("imap", Role::Client, "203.0.113.1")),
            third
        );
        assert_eq!(table.len(), 2);
    }
}
