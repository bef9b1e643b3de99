//! The label sets of the agent's metric families (a contract: dashboards and alerts select
//! on them) and the exemplar of the idle-before-cut histogram.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;

use crate::{
    paths::PathKey,
    vocabulary::{Direction, End, KeepaliveSetting, ResetOrigin, Role, Signature, StallOutcome},
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
/// `/api/v1/cuts` lists it (`local` and `remote` address:port), so that a bucket in Grafana
/// leads to the cut. Both fit OpenMetrics' 128 characters even as IPv6.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CutExemplar {
    pub(super) local: String,
    pub(super) remote: String,
}
