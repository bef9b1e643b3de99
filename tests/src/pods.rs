//! Kubernetes pods as the kubelet leaves them on a node, without a cluster: a cgroup named as
//! the kubelet's systemd driver names it (`kubepods.slice/kubepods-besteffort.slice/
//! kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`), real processes moved into
//! it, and the kubelet's log directories (`pods/<ns>_<pod>_<uid>/<container>/0.log`,
//! `containers/<pod>_<ns>_<container>-<id>.log`) under a directory of the test's own.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::topology::Netns;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The kubelet's log directories (what the agent's `--kubelet-logs` names), removed on drop.
pub struct KubeletLogs {
    pub root: PathBuf,
}

impl KubeletLogs {
    pub fn new() -> Self {
        let root = std::env::temp_dir().join(format!(
            "idlecut-kubelet-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        for dir in ["pods", "containers"] {
            std::fs::create_dir_all(root.join(dir)).expect("kubelet log directories");
        }
        Self { root }
    }
}

impl Default for KubeletLogs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for KubeletLogs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// One pod with one container: its cgroup (created, removed on drop once its processes are
/// gone) and its entries in the kubelet's log directories.
pub struct FakePod {
    pub namespace: String,
    pub name: String,
    pub container: String,
    pub uid: String,
    pub container_id: String,
    cgroup: PathBuf,
    children: Vec<Child>,
}

impl FakePod {
    pub fn new(logs: &KubeletLogs, namespace: &str, name: &str, container: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let uid = format!("{:08x}-4b1d-4c0e-9a7f-{:012x}", std::process::id(), n);
        let container_id = format!("{:016x}{:048x}", u64::from(std::process::id()), n);
        let pod_dir = logs
            .root
            .join("pods")
            .join(format!("{namespace}_{name}_{uid}"))
            .join(container);
        std::fs::create_dir_all(&pod_dir).expect("the pod's log directory");
        std::fs::write(pod_dir.join("0.log"), "").expect("the container's log");
        std::os::unix::fs::symlink(
            pod_dir.join("0.log"),
            logs.root
                .join("containers")
                .join(format!("{name}_{namespace}_{container}-{container_id}.log")),
        )
        .expect("the container's log link");
        let cgroup = cgroup2_root()
            .join("kubepods.slice/kubepods-besteffort.slice")
            .join(format!(
                "kubepods-besteffort-pod{}.slice",
                uid.replace('-', "_")
            ))
            .join(format!("cri-containerd-{container_id}.scope"));
        std::fs::create_dir_all(&cgroup)
            .unwrap_or_else(|err| panic!("creating the cgroup {}: {err}", cgroup.display()));
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            container: container.to_owned(),
            uid,
            container_id,
            cgroup,
            children: Vec::new(),
        }
    }

    /// Runs `script` with bash inside network namespace `ns`, in this pod's cgroup: the shell
    /// moves itself in, then becomes `ip netns exec` (same process: `ip netns exec` remounts
    /// /sys, where the cgroup hierarchy is not mounted). Killed when the pod is dropped.
    pub fn spawn(&mut self, ns: &Netns, script: &str) {
        let procs = self.cgroup.join("cgroup.procs");
        let child = Command::new("bash")
            .arg("-c")
            .arg(r#"echo $$ > "$1" || exit 99; exec ip netns exec "$2" bash -c "$3""#)
            .args(["pod", &procs.to_string_lossy(), &ns.name, script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting a process of the pod");
        self.children.push(child);
    }

    /// `namespace/pod/container`, as the tables show it.
    pub fn display_name(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.name, self.container)
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The scope, then the pod's slice; the QoS and kubepods slices may be shared.
        let mut dir: &Path = &self.cgroup;
        for _ in 0..4 {
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
            let Some(parent) = dir.parent() else { break };
            dir = parent;
        }
    }
}

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on a v2-only host,
/// `/sys/fs/cgroup/unified` on a hybrid one (ours: kernel.md).
fn cgroup2_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            (after.split_whitespace().next() == Some("cgroup2"))
                .then(|| before.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .expect("a cgroup v2 hierarchy is mounted (the kubelet's cgroups are made there)")
}
