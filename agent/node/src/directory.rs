//! Where a pod's names come from, one source or several: each [`PodDirectory`] answers for a
//! pod UID (and container ID) from what it last listed, and lists again on its own terms.
//!
//! Two sources exist: the kubelet's log directories ([`crate::kubelet`], names only, the
//! default) and the container runtime's CRI socket (the `idlecut-cri` crate: names, labels
//! and the owning workload). Both keep a listing in memory and share the rules of when to list
//! again ([`Relisting`]) and of telling a problem once ([`Problems`]).

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use idlecut_api::{
    pods::{Pod, Workload},
    vocabulary::QosClass,
};

use crate::cgroup::PodCgroup;

/// A source of pod names, asked by pod UID (as [`crate::cgroup::pod_of`] spells it) and
/// container ID.
pub trait PodDirectory: Send {
    /// What the source is, as a warning names it ("the kubelet's log directories").
    fn source(&self) -> &'static str;

    /// What to do about a problem of this source, as a warning says it.
    fn remedy(&self) -> &'static str;

    /// The pod `uid` and its container `container_id`, when this source knows the pod.
    fn pod(&mut self, uid: &str, container_id: Option<&str>) -> Option<PodName>;

    /// What kept the latest listing from reading the source, once (see [`Problems`]).
    fn take_new_problem(&mut self) -> Option<String>;
}

/// A pod's names, as a [`PodDirectory`] gives them for a pod UID (and container ID).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
    /// The UID asked for.
    pub uid: String,
    /// The name of the container asked for; None when no container ID was given, or the
    /// source does not know it (a pod's sandbox, a container that is gone).
    pub container: Option<String>,
    /// The pod's labels (less the kubelet's own `io.kubernetes.*`) and the workload they
    /// tell: only the container runtime has them, the kubelet's directories do not.
    pub labels: BTreeMap<String, String>,
    pub workload: Option<Workload>,
}

impl PodName {
    /// The answer of the HTTP API, with the QoS class the cgroup gave (no directory says it).
    pub fn into_pod(self, qos: Option<QosClass>) -> Pod {
        Pod {
            namespace: Some(self.namespace),
            pod: Some(self.name),
            uid: self.uid,
            container: self.container,
            qos,
            workload: self.workload,
            labels: self.labels,
        }
    }
}

/// The pod a process of this cgroup runs in, named by the first directory that knows it (in
/// the order given: the richest source first), known by its UID alone when none does.
pub fn describe(directories: &mut [Box<dyn PodDirectory>], cgroup: &PodCgroup) -> Pod {
    let container_id = cgroup.container_id.as_deref();
    directories
        .iter_mut()
        .find_map(|directory| directory.pod(&cgroup.pod_uid, container_id))
        .map_or_else(
            || Pod {
                namespace: None,
                pod: None,
                uid: cgroup.pod_uid.clone(),
                container: None,
                qos: Some(cgroup.qos),
                workload: None,
                labels: BTreeMap::new(),
            },
            |name| name.into_pod(Some(cgroup.qos)),
        )
}

/// Whether a source's listing, pods by UID and containers by ID, has pod `uid` (and container
/// `container_id`): what a lookup tells [`Relisting::due`].
pub fn listing_has<P, C>(
    pods: &HashMap<String, P>,
    containers: &HashMap<String, C>,
    uid: &str,
    container_id: Option<&str>,
) -> bool {
    pods.contains_key(uid) && container_id.is_none_or(|id| containers.contains_key(id))
}

/// When a source lists again: when its listing is older than `refresh_every` (which bounds how
/// long a gone pod stays in memory), or when a lookup misses and the listing is older than
/// `miss_floor` (which bounds the cost of asking, again and again, for a pod it does not have).
#[derive(Debug)]
pub struct Relisting {
    pub refresh_every: Duration,
    pub miss_floor: Duration,
    listed_at: Option<Instant>,
    /// How many times the source was listed (tests check the bounds with it).
    pub listings: u64,
}

impl Relisting {
    /// Lists again at least this often: a gone pod is forgotten within a minute.
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(60);
    /// Lists again for an unknown pod or container at most this often: a new pod is named
    /// within a second, and a UID the source does not have costs one listing a second at most.
    pub const DEFAULT_MISS_FLOOR: Duration = Duration::from_secs(1);

    pub fn new(refresh_every: Duration, miss_floor: Duration) -> Self {
        Self {
            refresh_every,
            miss_floor,
            listed_at: None,
            listings: 0,
        }
    }

    /// Whether a lookup at `now` should list first; `known`: the listing has what it asks for.
    pub fn due(&self, now: Instant, known: bool) -> bool {
        let older_than = |age: Duration| {
            self.listed_at
                .is_none_or(|at| now.saturating_duration_since(at) >= age)
        };
        older_than(self.refresh_every) || (!known && older_than(self.miss_floor))
    }

    /// Records a listing made at `now`.
    pub fn listed(&mut self, now: Instant) {
        self.listed_at = Some(now);
        self.listings += 1;
    }
}

impl Default for Relisting {
    fn default() -> Self {
        Self::new(Self::DEFAULT_REFRESH, Self::DEFAULT_MISS_FLOOR)
    }
}

/// A source's latest problem, told once: the caller logs it when it first appears, not at
/// every listing, and again if another follows, or the same one after a listing went fine.
#[derive(Debug, Default)]
pub struct Problems {
    current: Option<String>,
    told: Option<String>,
}

impl Problems {
    /// What the latest listing met; None when it read the source fine.
    pub fn set(&mut self, problem: Option<String>) {
        if problem.is_none() {
            self.told = None;
        }
        self.current = problem;
    }

    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// The problem the first time it is met, None after that while it lasts.
    pub fn take_new(&mut self) -> Option<String> {
        if self.current == self.told {
            return None;
        }
        self.told.clone_from(&self.current);
        self.current.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relisting_lists_when_stale_or_on_a_miss_past_the_floor() {
        let start = Instant::now();
        let mut relisting = Relisting::new(Duration::from_secs(60), Duration::from_secs(1));
        assert!(relisting.due(start, true), "never listed");
        relisting.listed(start);
        assert!(!relisting.due(start, true));
        assert!(!relisting.due(start, false), "a miss right after a listing");
        let later = start + Duration::from_secs(2);
        assert!(!relisting.due(later, true), "known and fresh");
        assert!(relisting.due(later, false), "a miss past the floor");
        assert!(
            relisting.due(start + Duration::from_secs(60), true),
            "stale"
        );
        assert_eq!(relisting.listings, 1);
    }

    #[test]
    fn a_problem_is_told_once_and_again_after_a_good_listing() {
        let mut problems = Problems::default();
        assert_eq!(problems.take_new(), None);
        problems.set(Some("gone".into()));
        assert_eq!(problems.take_new().as_deref(), Some("gone"));
        problems.set(Some("gone".into()));
        assert_eq!(problems.take_new(), None, "the same problem again");
        problems.set(None);
        assert_eq!(problems.current(), None);
        assert_eq!(problems.take_new(), None);
        problems.set(Some("gone".into()));
        assert_eq!(
            problems.take_new().as_deref(),
            Some("gone"),
            "back after a fix"
        );
    }
}
