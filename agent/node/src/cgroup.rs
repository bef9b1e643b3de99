//! Which pod a process runs in, read from its `/proc/PID/cgroup`.
//!
//! The kubelet puts every pod in a cgroup named after the pod's UID and QoS class, and the
//! container runtime puts every container in a cgroup named after the container's ID inside
//! it. So the cgroup path alone tells a process's pod and container, without the API server,
//! for any process the agent meets (including ones that were there before the agent started).
//!
//! The shapes, with the kubelet's two cgroup drivers:
//!
//! ```text
//! systemd:  /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope
//!           /kubepods.slice/kubepods-pod<uid>.slice/crio-<id>.scope          (guaranteed)
//!           /kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/docker-<id>.scope
//!           .../kubepods-burstable-pod<uid>.slice/crio-conmon-<id>.scope     (CRI-O's monitor)
//!           .../kubepods-burstable-pod<uid>.slice:cri-containerd:<id>        (runc's slice:prefix:name)
//! cgroupfs: /kubepods/burstable/pod<uid-with-dashes>/<id>
//!           /kubepods/pod<uid>/<id>                                          (guaranteed)
//!           /kubepods/besteffort/pod<uid>/crio-<id>
//! ```
//!
//! Anything may come before the `kubepods` part (kind's `/kubelet.slice/kubelet-kubepods.slice`,
//! a kind node's own `/docker/<node>` or `/system.slice/docker-<node>.scope`, `..` components
//! when the reader sits in another cgroup namespace) and after the container part (a runtime's
//! sub-cgroup such as `crio-<id>.scope/container`). The parser reads the path component by
//! component, so none of that confuses it, and it keeps the innermost pod if there are several.
//!
//! A process in a container that shares the reader's cgroup namespace root, or in a sibling
//! container of the reader's own pod seen through a private cgroup namespace, shows a path
//! without its pod: such a process reads as no pod at all. The agent needs the host's cgroup
//! namespace to see every pod.

use std::{io, path::Path};

pub use idlecut_api::vocabulary::{QosClass, Runtime};

/// The Kubernetes identity a process's cgroup gives: enough to look its names up in the
/// kubelet's directories ([`crate::kubelet`]) and to tell two pods of the same name apart.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodCgroup {
    /// The pod's UID as the kubelet writes it in `/var/log/pods`: a lowercase UUID with dashes
    /// (the systemd driver's underscores turned back), or for a static pod the 32 hex digits of
    /// its manifest's hash.
    pub pod_uid: String,
    /// The pod's QoS class, from the cgroup the kubelet put the pod in.
    pub qos: QosClass,
    /// The 64-hex ID of the container the process runs in (a pod's sandbox, the `pause`
    /// process, is a container too). None when the process sits in the pod's cgroup itself,
    /// in a cgroup the parser does not know, or is CRI-O's `conmon` (see `conmon`).
    pub container_id: Option<String>,
    /// The runtime that named the container's cgroup. None when the cgroup is a bare ID (the
    /// cgroupfs driver with containerd or docker) or there is no container.
    pub runtime: Option<Runtime>,
    /// The process is CRI-O's container monitor (`crio-conmon-<id>.scope`): it is charged to
    /// the pod but belongs to no container, so it has no `container_id`.
    pub conmon: bool,
}

/// The pod of a process, from the whole text of its `/proc/PID/cgroup`; None for a process
/// outside any pod (the caller shows it as the host's) and for text that is not a cgroup file.
///
/// The cgroup v2 line (`0::/path`) is read first when it names a pod; on a hybrid or v1-only
/// machine the `name=systemd` line comes next, then any other v1 line, in the file's order:
/// the v2 line of a hybrid machine may name only systemd's unit while the controllers name
/// the pod, and a v1 controller may be left at `/`.
pub fn pod_of(proc_cgroup: &str) -> Option<PodCgroup> {
    let mut named_systemd = None;
    let mut other_v1 = None;
    for line in proc_cgroup.lines() {
        let Some((hierarchy, path)) = parse_line(line) else {
            continue;
        };
        match hierarchy {
            Hierarchy::Unified => {
                if let Some(pod) = pod_of_path(path) {
                    return Some(pod);
                }
            }
            Hierarchy::NamedSystemd if named_systemd.is_none() => {
                named_systemd = pod_of_path(path);
            }
            Hierarchy::Controllers if other_v1.is_none() => other_v1 = pod_of_path(path),
            Hierarchy::NamedSystemd | Hierarchy::Controllers => {}
        }
    }
    named_systemd.or(other_v1)
}

/// [`pod_of`] for a process by its PID, reading `<proc_root>/<pid>/cgroup` (`proc_root` is
/// `/proc`, or where the host's is mounted). Err when the file cannot be read (the process
/// is gone, or no permission): unlike a process outside any pod, that is not the host.
pub fn pod_of_pid(proc_root: &Path, pid: u32) -> io::Result<Option<PodCgroup>> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))?;
    Ok(pod_of(&text))
}

/// Which hierarchy a line of `/proc/PID/cgroup` is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hierarchy {
    /// `0::/path`: cgroup v2.
    Unified,
    /// `N:name=systemd:/path`: systemd's own v1 hierarchy, which follows every unit.
    NamedSystemd,
    /// `N:cpu,cpuacct:/path` and the like.
    Controllers,
}

/// A line's hierarchy and path: `hierarchy-ID:controller-list:path`, where the path may hold
/// `:` itself, and ends with ` (deleted)` when the cgroup was removed under the process.
fn parse_line(line: &str) -> Option<(Hierarchy, &str)> {
    let mut fields = line.splitn(3, ':');
    let id = fields.next()?;
    let controllers = fields.next()?;
    let path = fields.next()?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || !path.starts_with('/') {
        return None;
    }
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let hierarchy = if id == "0" && controllers.is_empty() {
        Hierarchy::Unified
    } else if controllers.split(',').any(|name| name == "name=systemd") {
        Hierarchy::NamedSystemd
    } else if controllers.is_empty() {
        return None;
    } else {
        Hierarchy::Controllers
    };
    Some((hierarchy, path))
}

/// The pod of one cgroup path: its innermost pod component, and the container component
/// right after it.
fn pod_of_path(path: &str) -> Option<PodCgroup> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let (at, pod) = (0..components.len())
        .rev()
        .find_map(|at| pod_component(&components[..=at]).map(|pod| (at, pod)))?;
    let container = match pod.inline_container {
        Some(inline) => Some(container_component(inline)),
        None => components.get(at + 1).map(|c| container_component(c)),
    };
    let (container_id, runtime, conmon) = match container {
        Some(Container::Id { id, runtime }) => (Some(id.to_owned()), runtime, false),
        Some(Container::Conmon) => (None, Some(Runtime::CriO), true),
        Some(Container::Unknown) | None => (None, None, false),
    };
    Some(PodCgroup {
        pod_uid: pod.uid,
        qos: pod.qos,
        container_id,
        runtime,
        conmon,
    })
}

/// A pod's cgroup, found in one path component.
struct PodComponent<'a> {
    uid: String,
    qos: QosClass,
    /// The `prefix:id` of runc's `slice:prefix:name` form, where the container shares the
    /// pod's component.
    inline_container: Option<&'a str>,
}

/// Whether the last of `components` is a pod's cgroup, with either driver's spelling.
fn pod_component<'a>(components: &[&'a str]) -> Option<PodComponent<'a>> {
    let (&last, parents) = components.split_last()?;
    let (unit, inline_container) = match last.split_once(':') {
        Some((unit, rest)) => (unit, Some(rest)),
        None => (last, None),
    };
    if let Some(stem) = unit.strip_suffix(".slice") {
        let (uid, qos) = systemd_pod(stem)?;
        return Some(PodComponent {
            uid,
            qos,
            inline_container,
        });
    }
    if inline_container.is_some() {
        return None;
    }
    let uid = canonical_uid(last.strip_prefix("pod")?, '-')?;
    // The parent alone, not `kubepods` above it: seen from another cgroup namespace the
    // path may climb to `../burstable/pod<uid>` without naming `kubepods`.
    let qos = match *parents.last()? {
        "kubepods" => QosClass::Guaranteed,
        "burstable" => QosClass::Burstable,
        "besteffort" => QosClass::BestEffort,
        _ => return None,
    };
    Some(PodComponent {
        uid,
        qos,
        inline_container: None,
    })
}

/// A systemd slice name without `.slice`: systemd spells the slice's parents in its name,
/// dash-separated (`kubelet-kubepods-burstable-pod<uid>`), and the kubelet turned the UID's
/// dashes into underscores so that they do not read as parents.
fn systemd_pod(stem: &str) -> Option<(String, QosClass)> {
    let (parents, leaf) = stem.rsplit_once('-')?;
    let uid = canonical_uid(leaf.strip_prefix("pod")?, '_')?;
    let mut parents = parents.rsplit('-');
    let qos = match parents.next()? {
        "kubepods" => QosClass::Guaranteed,
        class @ ("burstable" | "besteffort") => {
            if parents.next()? != "kubepods" {
                return None;
            }
            if class == "burstable" {
                QosClass::Burstable
            } else {
                QosClass::BestEffort
            }
        }
        _ => return None,
    };
    Some((uid, qos))
}

/// A pod UID in the form `/var/log/pods` spells it, from a cgroup's spelling: a UUID whose
/// five groups are joined by `separator` (`-` with cgroupfs, `_` with systemd), or the 32 hex
/// digits of a static pod's hash. None for anything else, so that a stray `pod...` name is not
/// taken for a pod.
pub(crate) fn canonical_uid(text: &str, separator: char) -> Option<String> {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    let hex = |group: &str| group.bytes().all(|b| b.is_ascii_hexdigit());
    if text.len() == 32 && hex(text) {
        return Some(text.to_ascii_lowercase());
    }
    let mut groups = text.split(separator);
    let mut uid = String::with_capacity(36);
    for (n, len) in GROUPS.into_iter().enumerate() {
        let group = groups.next()?;
        if group.len() != len || !hex(group) {
            return None;
        }
        if n > 0 {
            uid.push('-');
        }
        uid.push_str(group);
    }
    if groups.next().is_some() {
        return None;
    }
    uid.make_ascii_lowercase();
    Some(uid)
}

/// Whether `text` is a container ID as CRI runtimes make them: 64 lowercase hex digits.
pub(crate) fn is_container_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What the component after a pod's is.
enum Container<'a> {
    Id {
        id: &'a str,
        runtime: Option<Runtime>,
    },
    /// CRI-O's `crio-conmon-<id>`.
    Conmon,
    /// Not a container's cgroup the parser knows.
    Unknown,
}

/// A container's cgroup name: `<prefix>-<id>.scope` with the systemd driver, `<id>` or
/// `crio-<id>` with cgroupfs, `<prefix>:<id>` in runc's `slice:prefix:name` form.
fn container_component(component: &str) -> Container<'_> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let (prefix, id) = name.rsplit_once(['-', ':']).unwrap_or(("", name));
    if !is_container_id(id) {
        return Container::Unknown;
    }
    let runtime = match prefix {
        "crio-conmon" => return Container::Conmon,
        "cri-containerd" => Some(Runtime::Containerd),
        "crio" => Some(Runtime::CriO),
        "docker" => Some(Runtime::Docker),
        // A bare ID (cgroupfs with containerd or docker), or a runtime not known here: a
        // 64-hex cgroup under a pod is a container all the same.
        _ => None,
    };
    Container::Id { id, runtime }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2_SYSTEMD_CONTAINERD: &str =
        include_str!("../fixtures/proc-cgroup/v2-systemd-containerd.txt");
    const V2_KIND_NODE: &str = include_str!("../fixtures/proc-cgroup/v2-kind-node.txt");
    const V1_CGROUPFS_DOCKER: &str = include_str!("../fixtures/proc-cgroup/v1-cgroupfs-docker.txt");
    const V1_KIND_NODE: &str = include_str!("../fixtures/proc-cgroup/v1-kind-node.txt");
    const HYBRID_SYSTEMD_CRIO: &str =
        include_str!("../fixtures/proc-cgroup/hybrid-systemd-crio.txt");
    const HYBRID_UNIFIED_NOT_POD: &str =
        include_str!("../fixtures/proc-cgroup/hybrid-unified-not-pod.txt");
    const HYBRID_HOST_SSHD: &str = include_str!("../fixtures/proc-cgroup/hybrid-host-sshd.txt");

    const FIXTURES: [&str; 7] = [
        V2_SYSTEMD_CONTAINERD,
        V2_KIND_NODE,
        V1_CGROUPFS_DOCKER,
        V1_KIND_NODE,
        HYBRID_SYSTEMD_CRIO,
        HYBRID_UNIFIED_NOT_POD,
        HYBRID_HOST_SSHD,
    ];

    const UID: &str = "3f5a2c1e-8b7d-4e0f-9a6b-1c2d3e4f5a6b";
    const UID_SYSTEMD: &str = "3f5a2c1e_8b7d_4e0f_9a6b_1c2d3e4f5a6b";
    const ID: &str = "8c7fa0b7e0c5d1f39a2be4c6d8f01a2b3c4d5e6f708192a3b4c5d6e7f8091a2b";
    const PAUSE: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn expected(
        uid: &str,
        qos: QosClass,
        id: Option<&str>,
        runtime: Option<Runtime>,
    ) -> Option<PodCgroup> {
        Some(PodCgroup {
            pod_uid: uid.to_owned(),
            qos,
            container_id: id.map(str::to_owned),
            runtime,
            conmon: false,
        })
    }

    /// The pod of a v2-only process whose one line is `0::<path>`.
    fn v2(path: &str) -> Option<PodCgroup> {
        pod_of(&format!("0::{path}\n"))
    }

    #[test]
    fn v2_only_machine_with_the_systemd_driver_and_containerd() {
        assert_eq!(
            pod_of(V2_SYSTEMD_CONTAINERD),
            expected(
                UID,
                QosClass::Burstable,
                Some(ID),
                Some(Runtime::Containerd)
            )
        );
    }

    #[test]
    fn systemd_driver_spells_each_runtime_and_qos_class() {
        assert_eq!(
            v2(&format!(
                "/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/crio-{ID}.scope"
            )),
            expected(UID, QosClass::Guaranteed, Some(ID), Some(Runtime::CriO))
        );
        assert_eq!(
            v2(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/docker-{ID}.scope"
            )),
            expected(UID, QosClass::BestEffort, Some(ID), Some(Runtime::Docker))
        );
        // The sandbox (pause) is a container of the pod like any other.
        assert_eq!(
            v2(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{PAUSE}.scope"
            )),
            expected(
                UID,
                QosClass::Burstable,
                Some(PAUSE),
                Some(Runtime::Containerd)
            )
        );
        // containerd without the `.scope` suffix (older releases).
        assert_eq!(
            v2(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}"
            )),
            expected(
                UID,
                QosClass::Burstable,
                Some(ID),
                Some(Runtime::Containerd)
            )
        );
    }

    #[test]
    fn crio_conmon_is_the_pods_but_no_containers() {
        let conmon = v2(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/crio-conmon-{ID}.scope"
        ))
        .unwrap();
        assert_eq!(conmon.pod_uid, UID);
        assert_eq!(conmon.qos, QosClass::Burstable);
        assert_eq!(conmon.container_id, None);
        assert_eq!(conmon.runtime, Some(Runtime::CriO));
        assert!(conmon.conmon);

        let cgroupfs = v2(&format!("/kubepods/besteffort/pod{UID}/crio-conmon-{ID}")).unwrap();
        assert!(cgroupfs.conmon);
        assert_eq!(cgroupfs.container_id, None);
    }

    #[test]
    fn a_process_in_the_pods_own_cgroup_or_below_its_container() {
        assert_eq!(
            v2(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice"
            )),
            expected(UID, QosClass::Burstable, None, None)
        );
        // crun's sub-cgroup of a CRI-O container, and a container's own sub-cgroup.
        assert_eq!(
            v2(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/crio-{ID}.scope/container"
            )),
            expected(UID, QosClass::Burstable, Some(ID), Some(Runtime::CriO))
        );
        assert_eq!(
            v2(&format!("/kubepods/besteffort/pod{UID}/{ID}/kube-proxy")),
            expected(UID, QosClass::BestEffort, Some(ID), None)
        );
        // A cgroup under the pod that is not a container's.
        assert_eq!(
            v2(&format!("/kubepods/burstable/pod{UID}/not-a-container")),
            expected(UID, QosClass::Burstable, None, None)
        );
    }

    #[test]
    fn static_pods_have_a_hash_for_uid() {
        let hash = "3e61c214bc3ed9ff81e21474dd6cba17";
        assert_eq!(
            v2(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/cri-containerd-{ID}.scope"
            )),
            expected(
                hash,
                QosClass::Burstable,
                Some(ID),
                Some(Runtime::Containerd)
            )
        );
        assert_eq!(
            v2(&format!("/kubepods/burstable/pod{hash}/{ID}")),
            expected(hash, QosClass::Burstable, Some(ID), None)
        );
    }

    #[test]
    fn runcs_slice_prefix_name_form() {
        assert_eq!(
            pod_of(&format!(
                "1:name=systemd:/system.slice/containerd.service/kubepods-burstable-pod{UID_SYSTEMD}.slice:cri-containerd:{ID}\n"
            )),
            expected(
                UID,
                QosClass::Burstable,
                Some(ID),
                Some(Runtime::Containerd)
            )
        );
    }

    #[test]
    fn v1_only_machine_with_the_cgroupfs_driver() {
        assert_eq!(
            pod_of(V1_CGROUPFS_DOCKER),
            expected(
                "6a4ce4a0-ba47-11ea-b2a7-0cc47ac5979e",
                QosClass::Burstable,
                Some("17db96a24ae1e9dd57143e62b1cb0d2d35e693c65c774c7470e87b0572e07c1a"),
                None
            )
        );
    }

    #[test]
    fn cgroupfs_driver_spells_each_qos_class() {
        assert_eq!(
            v2(&format!("/kubepods/pod{UID}/{ID}")),
            expected(UID, QosClass::Guaranteed, Some(ID), None)
        );
        assert_eq!(
            v2(&format!("/kubepods/besteffort/pod{UID}/crio-{ID}")),
            expected(UID, QosClass::BestEffort, Some(ID), Some(Runtime::CriO))
        );
        // k3s: the cgroupfs driver on a v2 machine; the pause container too.
        assert_eq!(
            v2(&format!("/kubepods/burstable/pod{UID}/{PAUSE}")),
            expected(UID, QosClass::Burstable, Some(PAUSE), None)
        );
    }

    #[test]
    fn hybrid_machine_reads_the_unified_line() {
        assert_eq!(
            pod_of(HYBRID_SYSTEMD_CRIO),
            expected(
                "a9c1d4e2-77f0-4b3a-8e21-5d6c7b8a9f01",
                QosClass::BestEffort,
                Some("49f9e8e5395d57c1083996c09e2e6f042d5fe1ec0310facab32f94912b35ce59"),
                Some(Runtime::CriO)
            )
        );
    }

    #[test]
    fn v1_lines_answer_when_the_unified_line_names_no_pod() {
        assert_eq!(
            pod_of(HYBRID_UNIFIED_NOT_POD),
            expected(
                "8833712d-6e69-4f5c-95f3-aebd020ce2e7",
                QosClass::Burstable,
                Some("95cbe853416f52d927dec41f1406dd75015ea131244a1ca875a7cd4ebe927ac8"),
                None
            )
        );
    }

    #[test]
    fn unified_then_name_systemd_then_other_v1_lines() {
        let other = "11111111-2222-4333-8444-555555555555";
        let systemd = "66666666-7777-4888-9999-aaaaaaaaaaaa";
        let unified = "bbbbbbbb-cccc-4ddd-8eee-ffffffffffff";
        let text = format!(
            "3:cpu,cpuacct:/kubepods/pod{other}/{ID}\n\
             2:memory:/\n\
             1:name=systemd:/kubepods/pod{systemd}/{ID}\n"
        );
        assert_eq!(pod_of(&text).unwrap().pod_uid, systemd);
        let text = format!("{text}0::/kubepods/burstable/pod{unified}/{ID}\n");
        assert_eq!(pod_of(&text).unwrap().pod_uid, unified);
        let text = format!("3:cpu,cpuacct:/kubepods/pod{other}/{ID}\n1:name=systemd:/\n");
        assert_eq!(pod_of(&text).unwrap().pod_uid, other);
    }

    #[test]
    fn nested_kubelets_and_other_namespaces() {
        assert_eq!(
            pod_of(V2_KIND_NODE),
            expected(
                "c0ffee00-1234-4abc-8def-0123456789ab",
                QosClass::BestEffort,
                Some("0e612005fd07e7f47e2cd07df99a2b4e909446814d71d0b5e4efc7159dd51252"),
                Some(Runtime::Containerd)
            )
        );
        assert_eq!(
            pod_of(V1_KIND_NODE),
            expected(
                "0d08203e-255a-11e9-8cd9-0007cb0b2cc8",
                QosClass::BestEffort,
                Some("671a50f5d60566556912f61511d0ec9e4d5c78d53fbc4676727180438bbbbc55"),
                None
            )
        );
        // Read from inside another pod's cgroup namespace: the path climbs with `..`.
        assert_eq!(
            v2(&format!(
                "/../../kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"
            )),
            expected(
                UID,
                QosClass::BestEffort,
                Some(ID),
                Some(Runtime::Containerd)
            )
        );
        assert_eq!(
            v2(&format!("/../../../burstable/pod{UID}/{ID}")),
            expected(UID, QosClass::Burstable, Some(ID), None)
        );
        // A pod nested in a pod (a kind cluster run in a pod): the innermost is the process's.
        let outer = "11111111_2222_4333_8444_555555555555";
        assert_eq!(
            v2(&format!(
                "/kubepods.slice/kubepods-pod{outer}.slice/cri-containerd-{PAUSE}.scope/kubepods/besteffort/pod{UID}/{ID}"
            )),
            expected(UID, QosClass::BestEffort, Some(ID), None)
        );
    }

    #[test]
    fn a_removed_cgroup_still_names_its_pod() {
        assert_eq!(
            v2(&format!("/kubepods/burstable/pod{UID}/{ID} (deleted)")),
            expected(UID, QosClass::Burstable, Some(ID), None)
        );
    }

    #[test]
    fn processes_outside_pods_are_none() {
        assert_eq!(pod_of(HYBRID_HOST_SSHD), None);
        for path in [
            "/",
            "/init.scope",
            "/system.slice/kubelet.service",
            "/system.slice/containerd.service",
            "/user.slice/user-1000.slice/session-3.scope",
            "/user.slice/user-1000.slice/user@1000.service/app.slice/podman-1234.scope",
            "/docker/63425c4a8b4291744a79dd9011fddc7a1f8ffda61f65d72196aa01d00cae2e2d",
            "/system.slice/docker-cf87ba651579c9231db817909e7865e5747bd7abcac0c57ce23cf4abbaee046b.scope",
            "/machine.slice/libpod-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.scope",
            // The QoS cgroups themselves hold no pod.
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods/besteffort",
            // A sibling container seen through the reader's own cgroup namespace.
            "/../cri-containerd-8c7fa0b7e0c5d1f39a2be4c6d8f01a2b3c4d5e6f708192a3b4c5d6e7f8091a2b.scope",
        ] {
            assert_eq!(v2(path), None, "{path}");
        }
        assert_eq!(pod_of(""), None);
    }

    #[test]
    fn near_misses_are_not_pods() {
        for path in [
            // Not under a QoS class or `kubepods`.
            format!("/system.slice/pod{UID}/{ID}"),
            format!("/system.slice/system-pod{UID_SYSTEMD}.slice"),
            format!("/kubepods.slice/kubepods-gold-pod{UID_SYSTEMD}.slice"),
            format!("/kubepods.slice/other-burstable-pod{UID_SYSTEMD}.slice"),
            // The wrong separator for the driver, and UIDs of the wrong shape.
            format!("/kubepods/burstable/pod{UID_SYSTEMD}/{ID}"),
            format!("/kubepods.slice/kubepods-pod{UID}.slice"),
            "/kubepods/burstable/pod3f5a2c1e-8b7d-4e0f-9a6b-1c2d3e4f5a6/x".to_owned(),
            "/kubepods/burstable/pod3f5a2c1e-8b7d-4e0f-9a6b-1c2d3e4f5a6bb/x".to_owned(),
            "/kubepods/burstable/pod3f5a2c1e-8b7d-4e0f-9a6b-1c2d3e4f5a6b-0000/x".to_owned(),
            "/kubepods/burstable/podzf5a2c1e-8b7d-4e0f-9a6b-1c2d3e4f5a6b/x".to_owned(),
            "/kubepods/burstable/pod/x".to_owned(),
            "/kubepods/burstable/pod3e61c214bc3ed9ff81e21474dd6cba1/x".to_owned(),
        ] {
            assert_eq!(v2(&path), None, "{path}");
        }
        // A container ID of the wrong length or case is no container.
        for id in [
            &ID[1..],
            "8C7FA0B7E0C5D1F39A2BE4C6D8F01A2B3C4D5E6F708192A3B4C5D6E7F8091A2B",
        ] {
            let pod = v2(&format!("/kubepods/burstable/pod{UID}/docker-{id}.scope")).unwrap();
            assert_eq!((pod.container_id, pod.runtime), (None, None), "{id}");
        }
    }

    #[test]
    fn lines_that_are_not_cgroup_lines_are_skipped() {
        let good = format!("0::/kubepods/burstable/pod{UID}/{ID}");
        for junk in [
            "",
            "garbage",
            "0:",
            "0::",
            "x::/kubepods",
            ":cpu:/kubepods",
            "0::relative/path",
            "3::/kubepods/burstable", // a v1 line without controllers
        ] {
            let text = format!("{junk}\n{good}\n{junk}");
            assert_eq!(pod_of(&text).unwrap().pod_uid, UID, "{junk:?}");
        }
        // Upper-case UIDs are spelled the kubelet's way.
        assert_eq!(
            canonical_uid("3F5A2C1E-8B7D-4E0F-9A6B-1C2D3E4F5A6B", '-').as_deref(),
            Some(UID)
        );
        assert_eq!(canonical_uid(UID_SYSTEMD, '_').as_deref(), Some(UID));
        assert_eq!(canonical_uid(UID, '_'), None);
        assert_eq!(canonical_uid("", '-'), None);
    }

    /// What any answer must be, whatever the input: a canonical UID and a real container ID,
    /// both found in the input, and a conmon without a container.
    fn assert_sensible(input: &str, answer: &PodCgroup) {
        assert_eq!(
            canonical_uid(&answer.pod_uid, '-').as_deref(),
            Some(answer.pod_uid.as_str()),
            "{input:?}"
        );
        let systemd_uid = answer.pod_uid.replace('-', "_");
        let lower = input.to_ascii_lowercase();
        assert!(
            lower.contains(&answer.pod_uid) || lower.contains(&systemd_uid),
            "{input:?} gave {answer:?}"
        );
        if let Some(id) = &answer.container_id {
            assert!(
                is_container_id(id) && input.contains(id.as_str()),
                "{input:?}"
            );
            assert!(!answer.conmon);
        }
        if answer.conmon {
            assert_eq!(answer.runtime, Some(Runtime::CriO));
        }
    }

    /// A small deterministic generator (xorshift64*), so that a failure replays.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
        }
    }

    #[test]
    fn truncated_inputs_never_panic_and_never_name_another_pod() {
        let more = [
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/crio-conmon-{ID}.scope\n"
            ),
            format!(
                "1:name=systemd:/system.slice/containerd.service/kubepods-burstable-pod{UID_SYSTEMD}.slice:cri-containerd:{ID}\n"
            ),
        ];
        let inputs = FIXTURES
            .iter()
            .copied()
            .chain(more.iter().map(String::as_str));
        for full in inputs {
            let whole = pod_of(full);
            for (cut, _) in full.char_indices() {
                for part in [&full[..cut], &full[cut..]] {
                    let Some(answer) = pod_of(part) else { continue };
                    assert_sensible(part, &answer);
                    let whole = whole.as_ref().expect("a part of a host's text named a pod");
                    assert_eq!(answer.pod_uid, whole.pod_uid, "{part:?}");
                    assert!(
                        answer.container_id.is_none() || answer.container_id == whole.container_id,
                        "{part:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn mangled_inputs_never_panic_and_stay_sensible() {
        const NOISE: [char; 14] = [
            ':', '/', '-', '_', '.', '\n', ' ', '0', 'a', 'Z', 'é', '\u{0}', '⁄', '\\',
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut pods, mut hosts) = (0, 0);
        for round in 0..4_000 {
            let base = FIXTURES[round % FIXTURES.len()];
            let mut chars: Vec<char> = base.chars().collect();
            for _ in 0..=rng.below(4) {
                let at = rng.below(chars.len());
                match rng.below(4) {
                    0 => chars[at] = NOISE[rng.below(NOISE.len())],
                    1 => {
                        chars.remove(at);
                    }
                    2 => chars.insert(at, NOISE[rng.below(NOISE.len())]),
                    _ => {
                        // Splice a slice of another fixture in.
                        let other: Vec<char> =
                            FIXTURES[rng.below(FIXTURES.len())].chars().collect();
                        let from = rng.below(other.len());
                        let to = from + rng.below(other.len() - from);
                        chars.splice(at..at, other[from..to].iter().copied());
                    }
                }
                if chars.is_empty() {
                    break;
                }
            }
            let input: String = chars.into_iter().collect();
            match pod_of(&input) {
                Some(answer) => {
                    assert_sensible(&input, &answer);
                    pods += 1;
                }
                None => hosts += 1,
            }
        }
        // Most mangling leaves some line whole: the loop tried both outcomes.
        assert!(pods > 1_000 && hosts > 500, "{pods} pods, {hosts} hosts");
        for junk in [
            "\n\n\n",
            ":::::",
            "0:://///",
            "0::/..",
            "0::/kubepods/pod",
            "🦀:🦀:/🦀",
        ] {
            assert_eq!(pod_of(junk), None, "{junk:?}");
        }
    }
}
