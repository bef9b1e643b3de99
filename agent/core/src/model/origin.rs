//! Who sent a RST this host received: the peer, or something on the path.
//!
//! Every router on the way lowers a packet's IP TTL (IPv6 hop limit) by one. A RST the peer
//! sent therefore arrives with the TTL its other segments arrive with; one that a NAT gateway
//! or firewall forged arrives with the TTL the forger started from, less the hops between it
//! and this host: almost always another value, and usually a higher one, since the forger is
//! closer than the peer. Hosts start from 64, 128 or 255, which also tells roughly how far a
//! sender is.

use crate::events::ResetTtls;
use idlecut_api::vocabulary::ResetOrigin;

/// A RST, judged by its TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetVerdict {
    pub origin: ResetOrigin,
    pub ttls: ResetTtls,
}

impl ResetVerdict {
    /// A RST this host received, from the TTLs the kernel saw.
    pub fn received(ttls: ResetTtls) -> Self {
        let origin = match (ttls.peer, ttls.reset) {
            (Some(peer), Some(reset)) if peer == reset => ResetOrigin::Peer,
            (Some(_), Some(_)) => ResetOrigin::Path,
            _ => ResetOrigin::Unknown,
        };
        Self { origin, ttls }
    }

    /// A RST this host sent.
    pub fn sent() -> Self {
        Self {
            origin: ResetOrigin::Local,
            ttls: ResetTtls::default(),
        }
    }

    /// How much higher the RST's TTL was than the peer's segments' (negative: lower).
    pub fn ttl_difference(&self) -> Option<i16> {
        Some(i16::from(self.ttls.reset?) - i16::from(self.ttls.peer?))
    }

    /// About how many hops away the RST's sender is (1: the next router).
    pub fn sender_hops(&self) -> Option<u8> {
        self.ttls.reset.map(hops_away)
    }

    /// About how many hops away the peer is.
    pub fn peer_hops(&self) -> Option<u8> {
        self.ttls.peer.map(hops_away)
    }
}

/// How many hops a packet that arrived with `ttl` came, assuming its sender started from the
/// nearest common initial TTL at or above it (64, 128 or 255): a packet from the next router
/// arrives undecremented, 1 hop.
fn hops_away(ttl: u8) -> u8 {
    let initial = [64u8, 128, 255]
        .into_iter()
        .find(|&initial| initial >= ttl)
        .unwrap_or(u8::MAX);
    initial - ttl + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(peer: Option<u8>, reset: Option<u8>) -> ResetVerdict {
        ResetVerdict::received(ResetTtls { peer, reset })
    }

    #[test]
    fn the_peers_own_reset_arrives_with_its_ttl() {
        let peer = verdict(Some(61), Some(61));
        assert_eq!(peer.origin, ResetOrigin::Peer);
        assert_eq!(peer.ttl_difference(), Some(0));
        assert_eq!(peer.sender_hops(), Some(4));
    }

    #[test]
    fn a_reset_forged_on_the_path_arrives_with_another_ttl() {
        // The router next to this host forges it (TTL 64, undecremented); the server sits
        // behind that router (63).
        let forged = verdict(Some(63), Some(64));
        assert_eq!(forged.origin, ResetOrigin::Path);
        assert_eq!(forged.ttl_difference(), Some(1));
        assert_eq!(forged.sender_hops(), Some(1));
        assert_eq!(forged.peer_hops(), Some(2));
        // A Windows peer (128) behind a Linux firewall (64) several hops out.
        let far = verdict(Some(120), Some(60));
        assert_eq!(far.origin, ResetOrigin::Path);
        assert_eq!(far.ttl_difference(), Some(-60));
        assert_eq!((far.sender_hops(), far.peer_hops()), (Some(5), Some(9)));
        assert_eq!(verdict(Some(250), Some(255)).sender_hops(), Some(1));
    }

    #[test]
    fn without_both_ttls_nobody_can_tell() {
        for (peer, reset) in [(None, Some(64)), (Some(64), None), (None, None)] {
            let unknown = verdict(peer, reset);
            assert_eq!(unknown.origin, ResetOrigin::Unknown);
            assert_eq!(unknown.ttl_difference(), None);
        }
        assert_eq!(ResetVerdict::sent().origin, ResetOrigin::Local);
    }
}
