//! A real containerd (Debian's package, with runc) and its CRI plugin, started for one test:
//! pods made through the CRI as the kubelet makes them, so that the agent's `--cri-socket`
//! source is proven against the runtime itself.
//!
//! No registry is reachable, so the one image is built here: a layer holding the static
//! busybox, imported with `ctr`. It serves as the pod sandbox's image too (its entrypoint
//! sleeps, as `pause` does). containerd runs in a network namespace of the test's (entered with
//! `nsenter --net`, which leaves the cgroup mounts in place), and the pods use the node's
//! network (`NamespaceMode::Node`): their processes connect from that namespace, with no CNI.
//! Every path (state, sockets, image) lives in a temporary directory removed on drop.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest, runtime_service_client::RuntimeServiceClient,
};
use tokio::runtime::Runtime;
use tonic::transport::Channel;

use crate::topology::Netns;

/// The image every container of these tests runs, the sandbox's included.
const IMAGE: &str = "idlecut.test/busybox:1";
/// Where Debian's busybox-static puts its binary.
const BUSYBOX: &str = "/bin/busybox";

/// A pod as the kubelet would ask the runtime for it.
pub struct CriPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub container: String,
    /// The labels of the pod's manifest (its controller's among them).
    pub labels: Vec<(String, String)>,
}

impl CriPod {
    /// `namespace/pod/container`, as the tables show it.
    pub fn display_name(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.name, self.container)
    }
}

/// A containerd of the test's own; stops its pods, itself and its shims on drop.
pub struct Containerd {
    dir: PathBuf,
    pub socket: PathBuf,
    child: Child,
    runtime: Runtime,
    sandboxes: Vec<String>,
}

impl Containerd {
    /// Starts containerd inside network namespace `ns` and imports the test image.
    pub fn start(ns: &Netns) -> Self {
        for (program, package) in [
            ("containerd", "containerd"),
            ("runc", "runc"),
            ("ctr", "containerd"),
            (BUSYBOX, "busybox-static"),
        ] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            assert!(
                found,
                "{program} is not installed: apt-get install {package} (./x installs it)"
            );
        }
        let dir = std::env::temp_dir().join(format!(
            "idlecut-containerd-{}-{}",
            std::process::id(),
            ns.name
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("cni")).expect("containerd's directory");
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        fs::write(&config, config_toml(&dir)).expect("containerd's config");
        let log = fs::File::create(dir.join("containerd.log")).expect("containerd's log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime for the CRI client");
        let mut containerd = Self {
            dir,
            socket,
            child,
            runtime,
            sandboxes: Vec::new(),
        };
        containerd.wait_until_serving();
        containerd.import_image();
        containerd
    }

    /// Runs `pod` with one container that runs `script` under busybox's `sh`; returns the
    /// container's ID.
    pub fn run_pod(&mut self, pod: &CriPod, script: &str) -> String {
        let mut labels: HashMap<String, String> = pod.labels.iter().cloned().collect();
        // The kubelet's own labels, as it sets them.
        labels.insert("io.kubernetes.pod.name".into(), pod.name.clone());
        labels.insert("io.kubernetes.pod.namespace".into(), pod.namespace.clone());
        labels.insert("io.kubernetes.pod.uid".into(), pod.uid.clone());
        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                namespace: pod.namespace.clone(),
                attempt: 0,
            }),
            labels,
            linux: Some(LinuxPodSandboxConfig {
                // The kubelet's cgroupfs driver, a BestEffort pod.
                cgroup_parent: format!("/kubepods/besteffort/pod{}", pod.uid),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        pid: NamespaceMode::Pod as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..NamespaceOption::default()
                    }),
                    ..LinuxSandboxSecurityContext::default()
                }),
                ..LinuxPodSandboxConfig::default()
            }),
            ..PodSandboxConfig::default()
        };
        let socket = self.socket.clone();
        let container_name = pod.container.clone();
        let script = script.to_owned();
        let (sandbox, container) = self
            .runtime
            .block_on(async move {
                let mut client = client(&socket).await?;
                let sandbox = client
                    .run_pod_sandbox(RunPodSandboxRequest {
                        config: Some(sandbox_config.clone()),
                        runtime_handler: String::new(),
                    })
                    .await?
                    .into_inner()
                    .pod_sandbox_id;
                let container = client
                    .create_container(CreateContainerRequest {
                        pod_sandbox_id: sandbox.clone(),
                        config: Some(ContainerConfig {
                            metadata: Some(ContainerMetadata {
                                name: container_name,
                                attempt: 0,
                            }),
                            image: Some(ImageSpec {
                                image: IMAGE.into(),
                                ..ImageSpec::default()
                            }),
                            command: vec!["/bin/sh".into(), "-c".into(), script],
                            ..ContainerConfig::default()
                        }),
                        sandbox_config: Some(sandbox_config),
                    })
                    .await?
                    .into_inner()
                    .container_id;
                client
                    .start_container(StartContainerRequest {
                        container_id: container.clone(),
                    })
                    .await?;
                Ok::<_, Box<dyn std::error::Error>>((sandbox, container))
            })
            .unwrap_or_else(|err| {
                panic!(
                    "running pod {} through the CRI: {err}\ncontainerd's log:\n{}",
                    pod.name,
                    self.log_tail()
                )
            });
        self.sandboxes.push(sandbox);
        container
    }

    /// The end of containerd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("containerd's status") {
                panic!("containerd exited with {status}:\n{}", self.log_tail());
            }
            let socket = self.socket.clone();
            let version = self.runtime.block_on(async move {
                let mut client = client(&socket).await?;
                client
                    .version(k8s_cri::v1::VersionRequest::default())
                    .await
                    .map_err(Box::<dyn std::error::Error>::from)
            });
            if version.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd's CRI did not answer within 30 s: {version:?}\n{}",
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Builds the busybox image (a Docker archive: manifest, config, one layer) and imports it
    /// into the namespace the CRI plugin uses.
    fn import_image(&self) {
        let image = self.dir.join("image");
        let bin = image.join("rootfs/bin");
        fs::create_dir_all(&bin).expect("the image's rootfs");
        fs::copy(BUSYBOX, bin.join("busybox")).expect("copying busybox");
        for applet in ["sh", "sleep", "nc", "echo"] {
            symlink("busybox", bin.join(applet)).expect("a busybox applet");
        }
        run(Command::new("tar")
            .arg("-C")
            .arg(image.join("rootfs"))
            .arg("-cf")
            .arg(image.join("layer.tar"))
            .arg("."));
        let digest = run(Command::new("sha256sum").arg(image.join("layer.tar")));
        let digest = digest.split_whitespace().next().expect("a digest");
        fs::write(
            image.join("config.json"),
            format!(
                r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":["/bin/sleep"],"Cmd":["2147483647"],"Env":["PATH=/bin"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{digest}"]}}}}"#
            ),
        )
        .expect("the image's config");
        fs::write(
            image.join("manifest.json"),
            format!(
                r#"[{{"Config":"config.json","RepoTags":["{IMAGE}"],"Layers":["layer.tar"]}}]"#
            ),
        )
        .expect("the image's manifest");
        run(Command::new("tar")
            .arg("-C")
            .arg(&image)
            .arg("-cf")
            .arg(self.dir.join("image.tar"))
            .args(["manifest.json", "config.json", "layer.tar"]));
        run(Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(self.dir.join("image.tar")));
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let socket = self.socket.clone();
        let sandboxes = std::mem::take(&mut self.sandboxes);
        let _ = self.runtime.block_on(async move {
            tokio::time::timeout(Duration::from_secs(20), async {
                let mut client = client(&socket).await?;
                for id in sandboxes {
                    client
                        .stop_pod_sandbox(StopPodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        })
                        .await?;
                    client
                        .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                        .await?;
                }
                Ok::<_, Box<dyn std::error::Error>>(())
            })
            .await
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims outlive containerd by design; these ones were started for our socket.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f"])
            .arg(format!("containerd-shim.*{}", self.socket.display()))
            .status();
        unmount_under(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A CRI client on the socket, dialled as the agent dials it.
async fn client(
    socket: &Path,
) -> Result<RuntimeServiceClient<Channel>, Box<dyn std::error::Error>> {
    Ok(RuntimeServiceClient::new(
        idlecut_cri::channel(socket).await?,
    ))
}

/// containerd 1.6's configuration: everything under `dir`, the native snapshotter (plain
/// copies: no overlay needed), runc with the cgroupfs driver, and an empty CNI directory
/// (pods use the node's network).
fn config_toml(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"version = 2
root = "{dir}/root"
state = "{dir}/state"
[grpc]
  address = "{dir}/containerd.sock"
[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  # The sandbox asks for oom_score_adj -998, which lowering needs CAP_SYS_RESOURCE for: keep
  # it no lower than containerd's own (as rootless setups do).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{dir}/cni"
    conf_dir = "{dir}/cni"
"#
    )
}

/// Runs a command to completion; its stdout, or a panic with its stderr.
fn run(command: &mut Command) -> String {
    let output = command.output().expect("running a command");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Unmounts whatever is still mounted under `dir` (a container's rootfs, its shm), deepest
/// first, so that the directory can be removed.
fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .filter(|point| point.starts_with(&prefix))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in points {
        let _ = Command::new("umount").args(["-l", point]).status();
    }
}
