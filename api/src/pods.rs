//! Which Kubernetes pod a process belongs to, as the HTTP API reports it next to a connection.
//!
//! The agent learns it on the node alone (the process's cgroup for the pod UID and QoS class,
//! the kubelet's log directories for the names), so it is carried as plain text: no type here
//! depends on a Kubernetes client.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::vocabulary::{QosClass, WorkloadKind};

/// The pod (and container) a process runs in.
///
/// A process outside any pod has no `Pod` at all (the API shows it as the host's), so every
/// field that is here was found; only those the node may not know are optional.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pod {
    /// The pod's namespace and name, from the kubelet's log directories; None when they are
    /// not readable (not mounted) or do not list the pod (yet): the UID still says which pod.
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// The pod's UID, as the kubelet writes it (a UUID with dashes; a static pod's is the
    /// 32-hex hash of its manifest): it tells apart two pods of the same name over time.
    pub uid: String,
    /// The container's name, when the process's cgroup names a container the kubelet logs
    /// for; None for a pod's sandbox (pause) process, CRI-O's conmon, or a container whose
    /// log link is not there (yet or any more).
    pub container: Option<String>,
    /// None when the cgroup path did not say it.
    pub qos: Option<QosClass>,
    /// The controller that owns the pod, from its labels; None without the container
    /// runtime's socket (`--cri-socket`), or for a pod no controller owns.
    #[serde(default)]
    pub workload: Option<Workload>,
    /// The pod's labels as the container runtime has them (less the kubelet's own
    /// `io.kubernetes.*`); empty without the runtime's socket.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A pod's owning workload, as `kubectl` spells it: `deployment/imap-proxy`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

impl Pod {
    /// `namespace/pod` (and `/container`), as tables show it; `pod:<uid>` when the names are not
    /// known.
    pub fn display_name(&self) -> String {
        let mut name = match (&self.namespace, &self.pod) {
            (Some(namespace), Some(pod)) => format!("{namespace}/{pod}"),
            _ => format!("pod:{}", self.uid),
        };
        if let Some(container) = &self.container {
            name.push('/');
            name.push_str(container);
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_round_trips_through_json_with_words_as_text() {
        let pod = Pod {
            namespace: Some("mail".to_owned()),
            pod: Some("dovecot-0".to_owned()),
            uid: "3f5a2c1e-8b7d-4e0f-9a6b-1c2d3e4f5a6b".to_owned(),
            container: Some("imap".to_owned()),
            qos: Some(QosClass::BestEffort),
            workload: Some(Workload {
                kind: WorkloadKind::StatefulSet,
                name: "dovecot".to_owned(),
            }),
            labels: BTreeMap::from([("app".to_owned(), "dovecot".to_owned())]),
        };
        let json = serde_json::to_string(&pod).unwrap();
        assert_eq!(
            json,
            r#"{"namespace":"mail","pod":"dovecot-0","uid":"3f5a2c1e-8b7d-4e0f-9a6b-1c2d3e4f5a6b","container":"imap","qos":"besteffort","workload":{"kind":"statefulset","name":"dovecot"},"labels":{"app":"dovecot"}}"#
        );
        assert_eq!(serde_json::from_str::<Pod>(&json).unwrap(), pod);

        let bare = r#"{"namespace":"mail","pod":"p","uid":"u","container":null,"qos":null}"#;
        let pod: Pod = serde_json::from_str(bare).unwrap();
        assert_eq!((pod.container, pod.qos, pod.workload), (None, None, None));
        assert!(
            pod.labels.is_empty(),
            "an older agent's answer has no labels"
        );
    }
}
