//! The node's own idle timeouts as metrics: what on this host forgets idle TCP flows, per
//! network namespace, with a REQ-5 verdict, so that an alert fires when the node itself cuts
//! below 2h04m. One series per (namespace, source, name): bounded by the host's namespaces.

use std::{collections::HashSet, sync::Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{register, register_seconds};
use crate::node::NodeTimeouts;
use idlecut_api::vocabulary::TimeoutSource;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostTimeoutLabels {
    /// Inode of the network namespace.
    pub netns: String,
    /// `true` for the node's own namespace (`--node-netns`).
    pub node: &'static str,
    pub source: TimeoutSource,
    /// The sysctl, nftables policy (`family/table/name`) or IPVS setting.
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NetnsLabels {
    pub netns: String,
    pub node: &'static str,
}

/// The `idlecut_host_*` families.
#[derive(Debug)]
pub struct NodeMetrics {
    timeout: Family<HostTimeoutLabels, Gauge>,
    req5_violation: Family<HostTimeoutLabels, Gauge>,
    keepalive_time: Family<NetnsLabels, Gauge>,
    /// The series set at the last update, to remove those of namespaces gone since.
    shown: Mutex<(HashSet<HostTimeoutLabels>, HashSet<NetnsLabels>)>,
}

impl NodeMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            timeout: register_seconds(
                registry,
                "host_idle_timeout",
                "Idle timeouts of established TCP flows on this host, per network namespace: conntrack (nf_conntrack_tcp_timeout_established), nftables ct timeout policies, IPVS",
                Family::default(),
            ),
            req5_violation: register(
                registry,
                "host_idle_timeout_req5_violation",
                "1 when that timeout forgets idle flows sooner than --req5-threshold (RFC 5382 REQ-5: 2h04m)",
                Family::default(),
            ),
            keepalive_time: register_seconds(
                registry,
                "host_keepalive_time",
                "The namespace's net.ipv4.tcp_keepalive_time: the first keepalive probe of a socket with SO_KEEPALIVE that did not set its own",
                Family::default(),
            ),
            shown: Mutex::new((HashSet::new(), HashSet::new())),
        }
    }

    /// Sets every series from the latest scan and removes those of namespaces gone since.
    pub fn set(&self, node: &NodeTimeouts, req5_threshold_seconds: f64) {
        let mut shown = self
            .shown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut timeouts = HashSet::new();
        for (netns, is_node, timeout) in node.all() {
            let labels = HostTimeoutLabels {
                netns: netns.to_string(),
                node: if is_node { "true" } else { "false" },
                source: timeout.source,
                name: timeout.name.clone(),
            };
            self.timeout
                .get_or_create(&labels)
                .set(i64::try_from(timeout.seconds).unwrap_or(i64::MAX));
            #[expect(
                clippy::cast_precision_loss,
                reason = "timeouts are seconds, far below 2^52"
            )]
            let violates = (timeout.seconds as f64) < req5_threshold_seconds;
            self.req5_violation
                .get_or_create(&labels)
                .set(i64::from(violates));
            timeouts.insert(labels);
        }
        let mut keepalives = HashSet::new();
        for (&netns, timeouts) in &node.by_netns {
            let Some(keepalive) = timeouts.keepalive else {
                continue;
            };
            let labels = NetnsLabels {
                netns: netns.to_string(),
                node: if Some(netns) == node.node_netns {
                    "true"
                } else {
                    "false"
                },
            };
            self.keepalive_time
                .get_or_create(&labels)
                .set(i64::try_from(keepalive.time_seconds).unwrap_or(i64::MAX));
            keepalives.insert(labels);
        }
        for gone in shown.0.difference(&timeouts) {
            self.timeout.remove(gone);
            self.req5_violation.remove(gone);
        }
        for gone in shown.1.difference(&keepalives) {
            self.keepalive_time.remove(gone);
        }
        *shown = (timeouts, keepalives);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use idlecut_api::{
        host::{HostTimeout, KeepaliveDefaults},
        vocabulary::TcpTimeoutState,
    };

    use super::*;
    use crate::scan::NetnsTimeouts;

    #[test]
    fn timeouts_are_series_with_a_verdict_and_gone_namespaces_go() {
        let mut registry = Registry::with_prefix("idlecut");
        let metrics = NodeMetrics::register(&mut registry);
        let timeouts = NetnsTimeouts {
            timeouts: vec![HostTimeout {
                source: TimeoutSource::Conntrack,
                name: "nf_conntrack_tcp_timeout_established".to_owned(),
                state: TcpTimeoutState::Established,
                seconds: 900,
                applies_to: None,
            }],
            keepalive: Some(KeepaliveDefaults {
                time_seconds: 7200,
                interval_seconds: 75,
                probes: 9,
            }),
        };
        let mut node = NodeTimeouts {
            node_netns: Some(11),
            by_netns: BTreeMap::from([(11, timeouts.clone()), (12, timeouts)]),
        };
        metrics.set(&node, 7440.0);
        let text = encode(&registry);
        assert!(text.contains(r#"idlecut_host_idle_timeout_seconds{netns="11",node="true",source="conntrack",name="nf_conntrack_tcp_timeout_established"} 900"#), "{text}");
        assert!(text.contains(r#"idlecut_host_idle_timeout_req5_violation{netns="12",node="false",source="conntrack",name="nf_conntrack_tcp_timeout_established"} 1"#), "{text}");
        assert!(
            text.contains(r#"idlecut_host_keepalive_time_seconds{netns="11",node="true"} 7200"#),
            "{text}"
        );
        node.by_netns.remove(&12);
        metrics.set(&node, 7440.0);
        let text = encode(&registry);
        assert!(!text.contains(r#"netns="12""#), "{text}");
        assert!(text.contains(r#"netns="11""#), "{text}");
    }

    fn encode(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }
}
