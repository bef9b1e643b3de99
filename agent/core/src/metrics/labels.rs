//! The label sets of the agent's metric families (a contract: dashboards and alerts select
//! on them) and the exemplar of the idle-before-cut histogram.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};

use crate::paths::PathKey;
use idlecut_api::vocabulary::{
    Direction, End, KeepaliveSetting, ResetOrigin, Role, Signature, StallOutcome,
};

// A path's series carry its `service`, `role` and `path` labels (the `PathKey`) first, then
// the labels of the family.

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct EndLabels {
    #[prometheus(flatten)]
    pub(super) path: PathKey,
    pub(super) end: End,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ResetLabels {
    #[prometheus(flatten)]
    pub(super) path: PathKey,
    pub(super) direction: Direction,
    /// Who sent it: `peer`, `path` or `unknown` for received ones, `local` for sent ones.
    pub(super) origin: ResetOrigin,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CutLabels {
    #[prometheus(flatten)]
    pub(super) path: PathKey,
    pub(super) signature: Signature,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ResetCutLabels {
    #[prometheus(flatten)]
    pub(super) path: PathKey,
    /// `peer`, `path` or `unknown`.
    pub(super) origin: ResetOrigin,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StallLabels {
    #[prometheus(flatten)]
    pub(super) path: PathKey,
    pub(super) outcome: StallOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct IcmpLabels {
    #[prometheus(flatten)]
    pub(super) path: PathKey,
    pub(super) r#type: u8,
    pub(super) code: u8,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct SoftIcmpLabels {
    #[prometheus(flatten)]
    pub(super) path: PathKey,
    /// The errno's name: EHOSTUNREACH, ENETUNREACH, EACCES...
    pub(super) error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KeepaliveLabels {
    #[prometheus(flatten)]
    pub(super) path: PathKey,
    pub(super) setting: KeepaliveSetting,
}

/// The open-connection gauge is per service and role, not per path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ServiceLabels {
    pub(super) service: Arc<str>,
    pub(super) role: Role,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub probe: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeHookLabels {
    pub probe: &'static str,
    /// `tp_btf`, `tracepoint` or `fentry`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct VersionLabels {
    pub(super) version: &'static str,
}

/// The exemplar of an idle-before-cut observation: the connection the path cut, as
/// `/api/v1/cuts` lists it (`local` and `remote` address:port), and on Kubernetes its pod
/// (`pod`, `namespace/name`), so that a bucket in Grafana leads to the cut. The addresses fit
/// OpenMetrics' 128 characters (label names and values together) even as IPv6; the pod is
/// there when it fits beside them, which Prometheus enforces (a longer exemplar fails the
/// scrape).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct CutExemplar {
    pub(super) local: String,
    pub(super) remote: String,
    pub(super) pod: Option<String>,
}

/// OpenMetrics' limit on an exemplar's label set: names and values, in characters.
pub(super) const EXEMPLAR_MAX_CHARS: usize = 128;

impl CutExemplar {
    pub(super) fn new(local: String, remote: String, pod: Option<String>) -> Self {
        let used = "local".len() + local.chars().count() + "remote".len() + remote.chars().count();
        let pod = pod.filter(|pod| used + "pod".len() + pod.chars().count() <= EXEMPLAR_MAX_CHARS);
        Self { local, remote, pod }
    }
}

impl EncodeLabelSet for CutExemplar {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let mut labels = vec![
            ("local", self.local.as_str()),
            ("remote", self.remote.as_str()),
        ];
        if let Some(pod) = &self.pod {
            labels.push(("pod", pod.as_str()));
        }
        labels.as_slice().encode(encoder)
    }
}
