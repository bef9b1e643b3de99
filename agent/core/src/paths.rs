//! Paths: connections grouped by (service, role, remote prefix), the unit every aggregate and
//! verdict is about. The number of paths is capped so that metric cardinality stays bounded;
//! past the cap, new paths are reported together as `path="other"`.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use prometheus_client::encoding::EncodeLabelSet;

use crate::model::Identity;
use idlecut_api::vocabulary::Role;

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

/// How a remote address becomes a path label: its network under the prefix lengths of
/// `--ipv4-prefix` and `--ipv6-prefix`, such as `192.0.2.0/24`. The one naming of paths: the
/// path table names connections through it, the scheduled checks the address they check, and
/// the listings' filters read a label back through it, so that they all agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefixes {
    pub ipv4: u8,
    pub ipv6: u8,
}

#[derive(Debug)]
pub struct PathTable {
    prefixes: Prefixes,
    max_paths: usize,
    known: HashMap<(Arc<str>, Role, IpAddr), Arc<str>>,
    other: Arc<str>,
}

impl PathTable {
    pub fn new(prefixes: Prefixes, max_paths: usize) -> Self {
        Self {
            prefixes,
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
        let path: Arc<str> = Arc::from(self.prefixes.label(identity.remote));
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
        let network = self.prefixes.network(identity.remote);
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
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }
}

impl Prefixes {
    /// The path label of a remote address (before the cap): its prefix, such as
    /// `192.0.2.0/24`.
    pub fn label(self, ip: IpAddr) -> String {
        let bits = match ip {
            IpAddr::V4(_) => self.ipv4,
            IpAddr::V6(_) => self.ipv6,
        };
        format!("{}/{bits}", self.network(ip))
    }

    /// The path label `value` names: [`OTHER`], or a prefix exactly as [`Prefixes::label`]
    /// writes it (so `2001:db8:1:0::/48` is `2001:db8:1::/48`). Anything else names no path;
    /// the error says what was expected, with the path of the address given when there is
    /// one.
    pub fn parse_label(self, value: &str) -> Result<String, String> {
        if value == OTHER {
            return Ok(OTHER.to_owned());
        }
        let (address, bits) = match value.split_once('/') {
            Some((address, bits)) => (address, Some(bits)),
            None => (value, None),
        };
        let Ok(ip) = address.parse::<IpAddr>() else {
            let example = self.label(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
            return Err(format!(
                "expected a path as this agent names them: a remote prefix of /{} for IPv4 or \
                 /{} for IPv6 (such as {example}), or `{OTHER}`",
                self.ipv4, self.ipv6
            ));
        };
        let (family, bits_here, flag) = match ip {
            IpAddr::V4(_) => ("IPv4", self.ipv4, "--ipv4-prefix"),
            IpAddr::V6(_) => ("IPv6", self.ipv6, "--ipv6-prefix"),
        };
        let label = self.label(ip);
        let exact = bits.and_then(|bits| bits.parse::<u8>().ok()) == Some(bits_here)
            && self.network(ip) == ip;
        if exact {
            Ok(label)
        } else {
            Err(format!(
                "no path has this name: this agent groups {family} remotes by /{bits_here} \
                 ({flag}); expected {label}, or `{OTHER}`"
            ))
        }
    }

    /// The network address of `ip` under these prefix lengths.
    pub fn network(self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.ipv4.min(32)))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6.min(128)))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIXES: Prefixes = Prefixes { ipv4: 24, ipv6: 48 };

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
        let network = |s: &str, ipv4: u8, ipv6: u8| Prefixes { ipv4, ipv6 }.network(ip(s));
        assert_eq!(network("192.0.2.77", 24, 48), ip("192.0.2.0"));
        assert_eq!(network("192.0.2.77", 32, 48), ip("192.0.2.77"));
        assert_eq!(network("192.0.2.77", 0, 48), ip("0.0.0.0"));
        assert_eq!(network("192.0.2.77", 20, 48), ip("192.0.0.0"));
        assert_eq!(network("2001:db8:1:2::5", 24, 48), ip("2001:db8:1::"));
        assert_eq!(network("2001:db8:1:2::5", 24, 128), ip("2001:db8:1:2::5"));
        assert_eq!(network("2001:db8:1:2::5", 24, 0), ip("::"));
    }

    #[test]
    fn keys_group_by_service_role_and_prefix() {
        let mut table = PathTable::new(PREFIXES, 10);
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
        let mut table = PathTable::new(PREFIXES, 2);
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
