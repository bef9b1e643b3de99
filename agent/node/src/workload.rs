//! Which controller owns a pod, from the pod's name and labels alone.
//!
//! The API server knows owners (`ownerReferences`); the node does not ask it. But each
//! controller labels the pods it makes, and the kubelet hands those labels to the container
//! runtime, where the agent reads them (CRI). What each label says:
//!
//! | label | set by | owner's name |
//! | --- | --- | --- |
//! | `pod-template-hash: H` | a Deployment's ReplicaSet | the pod name less `-H-xxxxx` |
//! | `statefulset.kubernetes.io/pod-name` | a StatefulSet | the pod name less `-ordinal` |
//! | `pod-template-generation` (with `controller-revision-hash`) | a DaemonSet | the pod name less `-xxxxx` |
//! | `batch.kubernetes.io/job-name: J` (or the older `job-name`) | a Job | `J` |
//!
//! A label that does not fit the pod's name (set by hand, say) gives no workload rather than
//! a wrong one.

use std::collections::BTreeMap;

use idlecut_api::{pods::Workload, vocabulary::WorkloadKind};

/// The workload that owns pod `pod_name`, from its labels; None for a bare pod, or labels that
/// do not fit its name.
pub fn workload_of(pod_name: &str, labels: &BTreeMap<String, String>) -> Option<Workload> {
    let label = |key: &str| labels.get(key).map(String::as_str);
    let workload = |kind, name: &str| {
        (!name.is_empty()).then(|| Workload {
            kind,
            name: name.to_owned(),
        })
    };
    if let Some(hash) = label("pod-template-hash") {
        // <deployment>-<hash>-<random suffix>
        let replica_set = without_suffix(pod_name)?;
        let deployment = replica_set.strip_suffix(hash)?.strip_suffix('-')?;
        return workload(WorkloadKind::Deployment, deployment);
    }
    if label("statefulset.kubernetes.io/pod-name") == Some(pod_name) {
        let (set, ordinal) = pod_name.rsplit_once('-')?;
        return ordinal
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| workload(WorkloadKind::StatefulSet, set))
            .flatten();
    }
    if label("pod-template-generation").is_some() && label("controller-revision-hash").is_some() {
        return workload(WorkloadKind::DaemonSet, without_suffix(pod_name)?);
    }
    if let Some(job) = label("batch.kubernetes.io/job-name").or_else(|| label("job-name")) {
        return pod_name
            .starts_with(&format!("{job}-"))
            .then(|| workload(WorkloadKind::Job, job))
            .flatten();
    }
    None
}

/// A generated pod name less its random suffix (`-` and five characters of the alphabet
/// Kubernetes draws them from: lowercase consonants and digits).
fn without_suffix(pod_name: &str) -> Option<&str> {
    let (stem, suffix) = pod_name.rsplit_once('-')?;
    (suffix.len() == 5
        && suffix
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()))
    .then_some(stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn owner(pod: &str, pairs: &[(&str, &str)]) -> Option<String> {
        workload_of(pod, &labels(pairs)).map(|w| w.to_string())
    }

    #[test]
    fn each_controllers_labels_name_it() {
        assert_eq!(
            owner(
                "imap-proxy-7d4b9c8f6-x2x9z",
                &[("app", "imap-proxy"), ("pod-template-hash", "7d4b9c8f6")]
            )
            .as_deref(),
            Some("deployment/imap-proxy")
        );
        assert_eq!(
            owner(
                "dovecot-12",
                &[
                    ("controller-revision-hash", "dovecot-5c9f7"),
                    ("statefulset.kubernetes.io/pod-name", "dovecot-12")
                ]
            )
            .as_deref(),
            Some("statefulset/dovecot")
        );
        assert_eq!(
            owner(
                "idlecut-4hx2q",
                &[
                    ("controller-revision-hash", "6b8d9c7f5"),
                    ("pod-template-generation", "3")
                ]
            )
            .as_deref(),
            Some("daemonset/idlecut")
        );
        assert_eq!(
            owner(
                "mailcheck-28390210-q8wfn",
                &[("batch.kubernetes.io/job-name", "mailcheck-28390210")]
            )
            .as_deref(),
            Some("job/mailcheck-28390210")
        );
        assert_eq!(
            owner("backup-2k9sd", &[("job-name", "backup")]).as_deref(),
            Some("job/backup")
        );
    }

    #[test]
    fn a_bare_pod_or_labels_that_do_not_fit_its_name_give_none() {
        assert_eq!(owner("toolbox", &[("app", "toolbox")]), None);
        assert_eq!(owner("toolbox", &[]), None);
        // The hash is not in the name: a label copied by hand.
        assert_eq!(
            owner("imap-proxy-x2x9z", &[("pod-template-hash", "7d4b9c8f6")]),
            None
        );
        // No random suffix.
        assert_eq!(
            owner(
                "imap-proxy-7d4b9c8f6",
                &[("pod-template-hash", "7d4b9c8f6")]
            ),
            None
        );
        // The StatefulSet label names another pod, or the ordinal is not a number.
        assert_eq!(
            owner(
                "dovecot-1",
                &[("statefulset.kubernetes.io/pod-name", "dovecot-2")]
            ),
            None
        );
        assert_eq!(
            owner(
                "dovecot-a",
                &[("statefulset.kubernetes.io/pod-name", "dovecot-a")]
            ),
            None
        );
        // A DaemonSet needs both of its labels; a Job's pod starts with the Job's name.
        assert_eq!(
            owner("idlecut-4hx2q", &[("pod-template-generation", "3")]),
            None
        );
        assert_eq!(owner("other-2k9sd", &[("job-name", "backup")]), None);
        assert_eq!(
            owner("-7d4b9c8f6-x2x9z", &[("pod-template-hash", "7d4b9c8f6")]),
            None
        );
    }
}
