//! Is this node the middlebox? The node's own idle timeouts (what the latest scan read in its
//! network namespace: conntrack, nftables `ct timeout` policies, IPVS) next to a path's cut-off
//! interval.
//!
//! A path whose connections are cut after more than `lower` and at most `upper` seconds of
//! silence is cut by something that forgets idle flows after a time in that interval. When a
//! timeout of the node lies in it, the node is the likely cutter; when every timeout of the
//! node is above the interval, the cutter is beyond the node. Connections of the node's pods
//! and of the node itself traverse the node's network namespace (pods' traffic is routed,
//! and often masqueraded, there), so its timeouts are the node's; those of other namespaces of
//! this host are only reported (metrics), not blamed.

use std::collections::BTreeMap;

use idlecut_api::{
    host::HostTimeout,
    paths::NodeTimeout,
    vocabulary::{CutterLocation, TcpTimeoutState, TimeoutSource},
};

use crate::scan::{NetnsTimeouts, Scan};

/// How far outside the cut-off interval a timeout may fall and still be taken for the cutter:
/// conntrack's garbage collection and the agent's own clocks blur the edges a little.
const SLACK_SECONDS: f64 = 1.0;
const SLACK_SHARE: f64 = 0.05;

/// The idle timeouts of this host's network namespaces, as the latest scan read them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeTimeouts {
    /// Inode of the node's own network namespace, when known.
    pub node_netns: Option<u32>,
    pub by_netns: BTreeMap<u32, NetnsTimeouts>,
}

/// What the node's timeouts say of one path.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeJudgement {
    pub cutter: Option<CutterLocation>,
    /// The node's timeouts inside the interval, shortest first.
    pub inside: Vec<NodeTimeout>,
    /// The same in a sentence, for the path's explanation.
    pub sentence: Option<String>,
}

impl NodeTimeouts {
    /// Takes the scan's reading (namespaces gone since are forgotten).
    pub fn from_scan(scan: &Scan) -> Self {
        Self {
            node_netns: scan.node_netns,
            by_netns: scan.timeouts.clone(),
        }
    }

    /// Every established-flow timeout of every namespace: (namespace, whether it is the
    /// node's, the timeout).
    pub fn all(&self) -> impl Iterator<Item = (u32, bool, &HostTimeout)> {
        self.by_netns.iter().flat_map(move |(&netns, timeouts)| {
            timeouts
                .timeouts
                .iter()
                .filter(|timeout| timeout.state == TcpTimeoutState::Established)
                .map(move |timeout| (netns, Some(netns) == self.node_netns, timeout))
        })
    }

    /// The node's timeouts against a path's cut-off interval (`lower` < cut-off <= `upper`).
    pub fn judge(&self, lower: Option<f64>, upper: Option<f64>) -> NodeJudgement {
        let Some(node) = self.node_netns else {
            return NodeJudgement::default();
        };
        let Some(upper) = upper else {
            return NodeJudgement::default();
        };
        let lower = lower.unwrap_or(0.0);
        let mut node_timeouts: Vec<&HostTimeout> = self
            .all()
            .filter(|&(_, is_node, _)| is_node)
            .map(|(_, _, timeout)| timeout)
            .collect();
        node_timeouts.sort_by_key(|timeout| timeout.seconds);
        let slack = |edge: f64| SLACK_SECONDS.max(edge * SLACK_SHARE);
        #[expect(
            clippy::cast_precision_loss,
            reason = "timeouts are seconds, far below 2^52"
        )]
        let inside: Vec<NodeTimeout> = node_timeouts
            .iter()
            .filter(|timeout| {
                let seconds = timeout.seconds as f64;
                seconds > lower - slack(lower) && seconds <= upper + slack(upper)
            })
            .map(|timeout| NodeTimeout {
                netns: node,
                timeout: (*timeout).clone(),
            })
            .collect();
        if let Some(first) = inside.first() {
            let sentence = format!(
                "This node's {} (namespace {node}, {}) forgets idle flows: it is the likely cutter.",
                source_words(first.timeout.source),
                setting_words(&first.timeout),
            );
            return NodeJudgement {
                cutter: Some(CutterLocation::Node),
                inside,
                sentence: Some(sentence),
            };
        }
        // Every other timeout of the node is either shorter than silences the path let
        // through (it forgets flows the path does not lose: not on this path, or picked up
        // again) or longer than the cut-off: the node is not what cuts.
        #[expect(
            clippy::cast_precision_loss,
            reason = "timeouts are seconds, far below 2^52"
        )]
        let shortest_above = node_timeouts
            .iter()
            .find(|timeout| timeout.seconds as f64 > upper);
        let sentence = match shortest_above {
            Some(shortest) => format!(
                "This node's own idle timeouts do not cut this path (the shortest above the \
                 cut-off: its {}, {}): the cutter is beyond this node.",
                source_words(shortest.source),
                setting_words(shortest)
            ),
            None if node_timeouts.is_empty() => "This node forgets no idle flow (no conntrack, \
                 nftables or IPVS timeout in its namespace): the cutter is beyond this node."
                .to_owned(),
            None => "This node's own idle timeouts are all shorter than silences this path let \
                 through: the cutter is beyond this node."
                .to_owned(),
        };
        NodeJudgement {
            cutter: Some(CutterLocation::BeyondNode),
            inside,
            sentence: Some(sentence),
        }
    }
}

fn source_words(source: TimeoutSource) -> &'static str {
    match source {
        TimeoutSource::Conntrack => "conntrack",
        TimeoutSource::Nftables => "nftables ct timeout policy",
        TimeoutSource::Ipvs => "IPVS",
        TimeoutSource::Keepalive => "TCP keepalive",
    }
}

fn setting_words(timeout: &HostTimeout) -> String {
    let applies = timeout
        .applies_to
        .as_ref()
        .map(|rules| format!(", for {rules}"))
        .unwrap_or_default();
    // In seconds, as the sysctl or the policy is written.
    format!("{} = {} s{applies}", timeout.name, timeout.seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conntrack(seconds: u64) -> HostTimeout {
        HostTimeout {
            source: TimeoutSource::Conntrack,
            name: "nf_conntrack_tcp_timeout_established".to_owned(),
            state: TcpTimeoutState::Established,
            seconds,
            applies_to: None,
        }
    }

    fn node_with(timeouts: Vec<HostTimeout>) -> NodeTimeouts {
        let mut other = NetnsTimeouts::default();
        // Another namespace of the host (a router beyond the node, in a test) is never blamed.
        other.timeouts.push(conntrack(15));
        NodeTimeouts {
            node_netns: Some(7),
            by_netns: BTreeMap::from([
                (
                    7,
                    NetnsTimeouts {
                        timeouts,
                        keepalive: None,
                    },
                ),
                (9, other),
            ]),
        }
    }

    #[test]
    fn a_node_timeout_inside_the_interval_is_the_likely_cutter() {
        let node = node_with(vec![conntrack(900), conntrack(432_000)]);
        let judgement = node.judge(Some(850.0), Some(910.0));
        assert_eq!(judgement.cutter, Some(CutterLocation::Node));
        assert_eq!(judgement.inside.len(), 1);
        assert_eq!(judgement.inside[0].netns, 7);
        assert_eq!(judgement.inside[0].timeout.seconds, 900);
        let sentence = judgement.sentence.unwrap();
        assert!(
            sentence.contains("conntrack (namespace 7, nf_conntrack_tcp_timeout_established = 900"),
            "{sentence}"
        );
        assert!(sentence.contains("likely cutter"), "{sentence}");
    }

    #[test]
    fn a_cut_below_every_node_timeout_is_beyond_the_node() {
        let node = node_with(vec![conntrack(432_000)]);
        // The other namespace's 15 s lies inside, but it is not the node's.
        let judgement = node.judge(Some(12.0), Some(16.0));
        assert_eq!(judgement.cutter, Some(CutterLocation::BeyondNode));
        assert!(judgement.inside.is_empty());
        assert!(
            judgement.sentence.unwrap().contains("beyond this node"),
            "names where to look"
        );
        let empty = node_with(Vec::new()).judge(Some(12.0), Some(16.0));
        assert_eq!(empty.cutter, Some(CutterLocation::BeyondNode));
    }

    #[test]
    fn without_a_cut_or_the_nodes_namespace_nothing_is_said() {
        let node = node_with(vec![conntrack(900)]);
        assert_eq!(node.judge(Some(1000.0), None), NodeJudgement::default());
        let mut unknown = node.clone();
        unknown.node_netns = None;
        assert_eq!(
            unknown.judge(Some(850.0), Some(910.0)),
            NodeJudgement::default()
        );
    }

    #[test]
    fn a_node_timeout_shorter_than_survived_silences_is_not_the_cutter() {
        // 900 s forgets flows this path keeps through 1000 s silences (not on its way, or
        // picked up again): the cut at 1200 s comes from further away.
        let node = node_with(vec![conntrack(900)]);
        let judgement = node.judge(Some(1000.0), Some(1200.0));
        assert_eq!(judgement.cutter, Some(CutterLocation::BeyondNode));
        assert!(
            judgement
                .sentence
                .unwrap()
                .contains("shorter than silences"),
            "says why"
        );
    }

    #[test]
    fn the_edges_of_the_interval_have_some_slack() {
        let node = node_with(vec![conntrack(6)]);
        // Cut after 6.3 s of silence, survived 4.9 s: 6 s is inside.
        assert_eq!(
            node.judge(Some(4.9), Some(6.3)).cutter,
            Some(CutterLocation::Node)
        );
        // Survived 6.2 s (the flow was picked up again within a second): still plausible.
        assert_eq!(
            node.judge(Some(6.2), Some(9.0)).cutter,
            Some(CutterLocation::Node)
        );
    }
}
