//! The container runtime's CRI socket (containerd's `/run/containerd/containerd.sock`, CRI-O's
//! `/var/run/crio/crio.sock`) as a source of pod names, labels and owning workloads.
//!
//! The kubelet hands each pod's metadata and labels to the runtime when it starts the pod's
//! sandbox, so the runtime can say, for a pod UID, its namespace, name and labels (and from the
//! labels its workload: [`idlecut_node::workload`]), and for a container ID, its name. Only two
//! read-only calls are made, `ListPodSandbox` and `ListContainers`, both unfiltered, listed
//! into memory and looked up by UID and container ID, under the same rules of when to list
//! again as the kubelet's directories ([`Relisting`]).
//!
//! The socket is a powerful thing to hold (whoever can write to it can start containers), so
//! this source is off unless the operator names the socket (`--cri-socket`).
//!
//! The scan that asks runs on a thread of its own, not in the async runtime, and waits for
//! each listing, bounded by a timeout: a runtime that does not answer costs a scan that long,
//! then pods are named by the other sources until the next listing.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use idlecut_api::pods::Workload;
use idlecut_node::{
    directory::{PodDirectory, PodName, Problems, Relisting, listing_has},
    workload::workload_of,
};
use k8s_cri::v1::{
    Container, ListContainersRequest, ListPodSandboxRequest, PodSandbox, PodSandboxState,
    runtime_service_client::RuntimeServiceClient,
};
use tokio::{net::UnixStream, runtime::Handle};
use tonic::transport::{Channel, Endpoint, Uri};

/// How long one listing (connecting, then both calls) may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Labels the kubelet adds for the runtime's own use: they repeat the pod's metadata.
const KUBELET_LABEL_PREFIX: &str = "io.kubernetes.";

/// A pod as the runtime lists it, with the workload its labels tell (found once per listing,
/// not at each lookup).
#[derive(Clone, Debug, PartialEq, Eq)]
struct PodEntry {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    workload: Option<Workload>,
}

/// Pods and containers from the runtime, listed into memory.
pub struct CriDirectory {
    socket: PathBuf,
    /// The agent's async runtime, which drives the gRPC connection while the scan's thread
    /// waits for its answer.
    runtime: Handle,
    timeout: Duration,
    relisting: Relisting,
    /// By pod UID.
    pods: HashMap<String, PodEntry>,
    /// Container ID to (pod UID, container name).
    containers: HashMap<String, (String, String)>,
    problems: Problems,
}

impl CriDirectory {
    /// The runtime behind `socket`, asked through `runtime` (a handle of the agent's tokio
    /// runtime; the lookups themselves must be made from outside it). Nothing is asked before
    /// the first lookup.
    pub fn new(socket: impl Into<PathBuf>, runtime: Handle) -> Self {
        Self {
            socket: socket.into(),
            runtime,
            timeout: DEFAULT_TIMEOUT,
            relisting: Relisting::default(),
            pods: HashMap::new(),
            containers: HashMap::new(),
            problems: Problems::default(),
        }
    }

    /// Other bounds than the defaults: how old a listing may grow, how soon a lookup that
    /// found nothing may list again, and how long a listing may take.
    pub fn with_bounds(mut self, relisting: Relisting, timeout: Duration) -> Self {
        self.relisting = relisting;
        self.timeout = timeout;
        self
    }

    /// How many listings were made (tests check the bounds with it).
    pub fn listings(&self) -> u64 {
        self.relisting.listings
    }

    fn answer(&self, uid: &str, container_id: Option<&str>) -> Option<PodName> {
        let pod = self.pods.get(uid)?;
        let container = container_id
            .and_then(|id| self.containers.get(id))
            .filter(|(pod_uid, _)| pod_uid == uid)
            .map(|(_, name)| name.clone());
        Some(PodName {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: uid.to_owned(),
            container,
            workload: pod.workload.clone(),
            labels: pod.labels.clone(),
        })
    }

    /// Lists pods and containers into fresh maps; a listing that fails keeps the previous one
    /// (a runtime restarting does not unname every pod) and is told as a problem.
    fn list(&mut self, now: Instant) {
        self.relisting.listed(now);
        let listing = self.runtime.block_on(async {
            tokio::time::timeout(self.timeout, fetch(&self.socket))
                .await
                .unwrap_or_else(|_| {
                    Err(format!("no answer within {} ms", self.timeout.as_millis()))
                })
        });
        match listing {
            Ok((sandboxes, containers)) => {
                (self.pods, self.containers) = index(sandboxes, containers);
                self.problems.set(None);
            }
            Err(problem) => self.problems.set(Some(format!(
                "the container runtime at {} did not list its pods: {problem}",
                self.socket.display()
            ))),
        }
    }
}

impl PodDirectory for CriDirectory {
    fn source(&self) -> &'static str {
        "the container runtime's CRI socket"
    }

    fn remedy(&self) -> &'static str {
        "mount the runtime's socket and name it with --cri-socket (or set --cri-socket none)"
    }

    fn pod(&mut self, uid: &str, container_id: Option<&str>) -> Option<PodName> {
        let now = Instant::now();
        if self.relisting.due(
            now,
            listing_has(&self.pods, &self.containers, uid, container_id),
        ) {
            self.list(now);
        }
        self.answer(uid, container_id)
    }

    fn take_new_problem(&mut self) -> Option<String> {
        self.problems.take_new()
    }
}

/// A gRPC channel to the runtime's CRI socket: the one way to dial it.
pub async fn channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_owned();
    // The URI is a placeholder that gRPC needs; the connector ignores it and dials the socket.
    Endpoint::from_static("http://cri.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
}

/// Both listings, over one connection to the socket.
async fn fetch(socket: &Path) -> Result<(Vec<PodSandbox>, Vec<Container>), String> {
    let channel = channel(socket)
        .await
        .map_err(|err| format!("cannot connect: {}", source_chain(&err)))?;
    let mut client = RuntimeServiceClient::new(channel);
    let sandboxes = client
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .map_err(|status| format!("ListPodSandbox: {}", status.message()))?
        .into_inner()
        .items;
    let containers = client
        .list_containers(ListContainersRequest { filter: None })
        .await
        .map_err(|status| format!("ListContainers: {}", status.message()))?
        .into_inner()
        .containers;
    Ok((sandboxes, containers))
}

/// An error with its causes, `a: b: c` (tonic's own message is only the outermost).
fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Pods by UID and containers by ID. A pod whose sandbox was recreated has several; the ready
/// one, else the latest attempt, speaks for it. Sandboxes without metadata (which the CRI does
/// not forbid) are skipped.
type Index = (HashMap<String, PodEntry>, HashMap<String, (String, String)>);

fn index(sandboxes: Vec<PodSandbox>, containers: Vec<Container>) -> Index {
    let mut best: HashMap<String, (bool, u32, PodEntry)> = HashMap::new();
    let mut uid_of_sandbox = HashMap::new();
    for sandbox in sandboxes {
        let Some(metadata) = sandbox.metadata else {
            continue;
        };
        if metadata.uid.is_empty() || metadata.name.is_empty() {
            continue;
        }
        let ready = sandbox.state == PodSandboxState::SandboxReady as i32;
        let labels = sandbox
            .labels
            .into_iter()
            .filter(|(key, _)| !key.starts_with(KUBELET_LABEL_PREFIX))
            .collect();
        let entry = PodEntry {
            workload: workload_of(&metadata.name, &labels),
            namespace: metadata.namespace,
            name: metadata.name,
            labels,
        };
        uid_of_sandbox.insert(sandbox.id, metadata.uid.clone());
        let rank = (ready, metadata.attempt);
        match best.get(&metadata.uid) {
            Some((r, a, _)) if (*r, *a) >= rank => {}
            _ => {
                best.insert(metadata.uid, (ready, metadata.attempt, entry));
            }
        }
    }
    let containers = containers
        .into_iter()
        .filter_map(|container| {
            let uid = uid_of_sandbox.get(&container.pod_sandbox_id)?;
            let name = container.metadata?.name;
            Some((container.id, (uid.clone(), name)))
        })
        .collect();
    let pods = best
        .into_iter()
        .map(|(uid, (_, _, entry))| (uid, entry))
        .collect();
    (pods, containers)
}

#[cfg(test)]
mod tests {
    use k8s_cri::v1::{ContainerMetadata, PodSandboxMetadata};

    use super::*;

    const UID: &str = "3f5a2c1e-8b7d-4e0f-9a6b-1c2d3e4f5a6b";

    fn sandbox(id: &str, attempt: u32, ready: bool, labels: &[(&str, &str)]) -> PodSandbox {
        PodSandbox {
            id: id.to_owned(),
            metadata: Some(PodSandboxMetadata {
                name: "imap-proxy-7d4b9c8f6-x2x9z".to_owned(),
                uid: UID.to_owned(),
                namespace: "mail".to_owned(),
                attempt,
            }),
            state: if ready {
                PodSandboxState::SandboxReady
            } else {
                PodSandboxState::SandboxNotready
            } as i32,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..PodSandbox::default()
        }
    }

    fn container(id: &str, sandbox: &str, name: &str) -> Container {
        Container {
            id: id.to_owned(),
            pod_sandbox_id: sandbox.to_owned(),
            metadata: Some(ContainerMetadata {
                name: name.to_owned(),
                attempt: 0,
            }),
            ..Container::default()
        }
    }

    fn directory_with(index: Index) -> CriDirectory {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut directory = CriDirectory::new("/nonexistent", runtime.handle().clone());
        (directory.pods, directory.containers) = index;
        directory
    }

    #[test]
    fn a_pod_is_named_with_its_labels_workload_and_containers() {
        let labels = [
            ("app", "imap-proxy"),
            ("pod-template-hash", "7d4b9c8f6"),
            ("io.kubernetes.pod.uid", UID),
            ("io.kubernetes.pod.name", "imap-proxy-7d4b9c8f6-x2x9z"),
        ];
        let directory = directory_with(index(
            vec![
                sandbox("old", 0, false, &labels),
                sandbox("new", 1, true, &labels),
            ],
            vec![
                container("c1", "new", "proxy"),
                container("c0", "old", "proxy-before"),
                container("orphan", "gone", "x"),
            ],
        ));
        let name = directory.answer(UID, Some("c1")).unwrap();
        assert_eq!(
            (name.namespace.as_str(), name.name.as_str()),
            ("mail", "imap-proxy-7d4b9c8f6-x2x9z")
        );
        assert_eq!(name.container.as_deref(), Some("proxy"));
        assert_eq!(
            name.workload.map(|w| w.to_string()).as_deref(),
            Some("deployment/imap-proxy")
        );
        assert_eq!(
            name.labels.keys().collect::<Vec<_>>(),
            ["app", "pod-template-hash"],
            "the kubelet's own labels are left out"
        );
        // A container of the pod's earlier sandbox is still the pod's.
        let earlier = directory.answer(UID, Some("c0")).unwrap();
        assert_eq!(earlier.container.as_deref(), Some("proxy-before"));
        // The sandbox's own process (pause) names no container.
        assert_eq!(directory.answer(UID, Some("new")).unwrap().container, None);
        assert!(directory.answer("another-uid", None).is_none());
        assert!(!listing_has(
            &directory.pods,
            &directory.containers,
            UID,
            Some("orphan")
        ));
    }

    #[test]
    fn the_ready_sandbox_speaks_for_the_pod_whatever_the_order() {
        let ready = sandbox("a", 0, true, &[("app", "ready")]);
        let stale = sandbox("b", 3, false, &[("app", "stale")]);
        for sandboxes in [vec![ready.clone(), stale.clone()], vec![stale, ready]] {
            let (pods, _) = index(sandboxes, Vec::new());
            assert_eq!(pods[UID].labels["app"], "ready");
        }
        let mut bare = sandbox("c", 0, true, &[]);
        bare.metadata = None;
        assert!(index(vec![bare], Vec::new()).0.is_empty());
    }

    #[test]
    fn a_socket_that_is_not_there_is_a_problem_told_once_and_no_answer() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("idlecut-cri-{}", std::process::id()));
        let mut directory = CriDirectory::new(dir.join("missing.sock"), runtime.handle().clone())
            .with_bounds(
                Relisting::new(Duration::ZERO, Duration::ZERO),
                Duration::from_secs(2),
            );
        assert!(directory.pod(UID, None).is_none());
        let problem = directory.take_new_problem().unwrap();
        assert!(
            problem.starts_with(&format!(
                "the container runtime at {} did not list its pods: cannot connect",
                dir.join("missing.sock").display()
            )),
            "{problem}"
        );
        assert!(problem.contains("No such file or directory"), "{problem}");
        assert!(directory.pod(UID, None).is_none());
        assert_eq!(directory.take_new_problem(), None, "told once");
        assert_eq!(directory.listings(), 2);
    }

    #[test]
    fn a_runtime_that_accepts_but_never_answers_costs_the_timeout_only() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("idlecut-cri-mute-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mute.sock");
        let _ = std::fs::remove_file(&path);
        // Accepts connections (the kernel's backlog does) and never reads or writes.
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut directory = CriDirectory::new(&path, runtime.handle().clone()).with_bounds(
            Relisting::new(Duration::ZERO, Duration::ZERO),
            Duration::from_millis(300),
        );
        let started = Instant::now();
        assert!(directory.pod(UID, None).is_none());
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(5), "waited {waited:?}");
        let problem = directory.take_new_problem().unwrap();
        assert!(problem.ends_with("no answer within 300 ms"), "{problem}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
