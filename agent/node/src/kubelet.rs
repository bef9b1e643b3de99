//! A pod's names, read from the kubelet's log directories instead of asked of the API server.
//!
//! A process's cgroup gives its pod's UID and its container's ID ([`crate::cgroup`]), but
//! people know pods by namespace and name. The kubelet writes both next to each other in the
//! names of its log directories, which a DaemonSet can mount read-only with no RBAC, no token
//! and no connection to the control plane:
//!
//! ```text
//! /var/log/pods/<namespace>_<pod-name>_<pod-uid>/<container-name>/<restart>.log
//! /var/log/containers/<pod-name>_<namespace>_<container-name>-<64-hex-container-id>.log
//! ```
//!
//! Namespaces, pod names and container names cannot hold `_` in Kubernetes, so `_` splits
//! these names without ambiguity; only the names are read, never the logs.
//!
//! The agent asks for many processes at a time, so [`KubeletDirs`] lists the directories once
//! and answers from memory, listing them again now and then, and when asked for a pod or a
//! container it has not seen (a pod that started since), never more than once per question.

use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    cgroup::{canonical_uid, is_container_id},
    directory::{PodDirectory, PodName, Problems, Relisting, listing_has},
};

/// A pod's entry in `/var/log/pods`.
#[derive(Clone, Debug)]
struct PodEntry {
    namespace: String,
    name: String,
    /// Its containers' names, sorted.
    containers: Vec<String>,
}

/// A container's entry in `/var/log/containers`.
#[derive(Clone, Debug)]
struct ContainerEntry {
    namespace: String,
    pod: String,
    container: String,
}

/// The kubelet's log directories under `root`, listed into memory: pod UID to namespace, pod
/// and container names, container ID to container name.
///
/// Not being able to read them is not an error for the agent, which then shows pods by UID:
/// the lookup answers None, and [`PodDirectory::take_new_problem`] says why, once.
#[derive(Debug)]
pub struct KubeletDirs {
    /// Where `pods/` and `containers/` are (the host's `/var/log`, mounted read-only).
    root: PathBuf,
    relisting: Relisting,
    pods: HashMap<String, PodEntry>,
    containers: HashMap<String, ContainerEntry>,
    problems: Problems,
}

impl KubeletDirs {
    /// The kubelet's directories under `root` (`/var/log` on the host, or where it is mounted
    /// in the agent's pod). Nothing is read before the first lookup or [`KubeletDirs::refresh`].
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            relisting: Relisting::default(),
            pods: HashMap::new(),
            containers: HashMap::new(),
            problems: Problems::default(),
        }
    }

    /// Other bounds than [`Relisting`]'s defaults: how old a listing may grow, and how soon a
    /// lookup that found nothing may list again.
    pub fn with_intervals(mut self, refresh_every: Duration, miss_floor: Duration) -> Self {
        self.relisting = Relisting::new(refresh_every, miss_floor);
        self
    }

    /// Where the directories are looked for.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The names of pod `uid`'s containers as the latest listing saw them (sorted), without
    /// listing again: every container the kubelet logs for, whether it runs now or not.
    pub fn containers(&self, uid: &str) -> Option<&[String]> {
        self.pods.get(uid).map(|pod| pod.containers.as_slice())
    }

    /// Lists the directories now, whatever the intervals: at start, so that a problem can be
    /// told before the first lookup.
    pub fn refresh(&mut self) {
        self.list(Instant::now());
    }

    /// What kept the latest listing from reading the directories, e.g.
    /// `/var/log/pods not readable: No such file or directory (os error 2)`; None when it
    /// read them.
    pub fn problem(&self) -> Option<&str> {
        self.problems.current()
    }

    fn answer(&self, uid: &str, container_id: Option<&str>) -> Option<PodName> {
        let pod = self.pods.get(uid)?;
        let container = container_id
            .and_then(|id| self.containers.get(id))
            // Only a container of this pod: the ID is the runtime's, the names the kubelet's.
            .filter(|c| c.namespace == pod.namespace && c.pod == pod.name)
            .map(|c| c.container.clone());
        Some(PodName {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: uid.to_owned(),
            container,
            labels: BTreeMap::new(),
            workload: None,
        })
    }

    /// Lists both directories into fresh maps, so that what vanished is dropped. A directory
    /// that cannot be listed keeps what the previous listing had of it (a passing error does
    /// not unname every pod) and is told in `problem`.
    fn list(&mut self, now: Instant) {
        self.relisting.listed(now);
        let mut problems = Vec::new();

        let pods_dir = self.root.join("pods");
        match list_pods(&pods_dir) {
            Ok(pods) => self.pods = pods,
            Err(err) => problems.push(format!("{} not readable: {err}", pods_dir.display())),
        }
        let containers_dir = self.root.join("containers");
        match list_containers(&containers_dir) {
            Ok(containers) => self.containers = containers,
            Err(err) => problems.push(format!("{} not readable: {err}", containers_dir.display())),
        }
        self.problems
            .set((!problems.is_empty()).then(|| problems.join("; ")));
    }
}

impl PodDirectory for KubeletDirs {
    fn source(&self) -> &'static str {
        "the kubelet's log directories"
    }

    fn remedy(&self) -> &'static str {
        "mount the kubelet's /var/log/pods and /var/log/containers read-only (or set \
         --kubelet-logs none)"
    }

    /// The names of pod `uid` (as [`crate::cgroup::pod_of`] spells it), and of its container
    /// `container_id` when given; None when the kubelet's directories do not have the pod.
    ///
    /// Answers from memory; lists the directories again, at most once, when the listing is
    /// older than the refresh interval, or when the pod or container is not in it and the
    /// listing is older than the miss floor.
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

    /// The problem, once (see [`Problems`]).
    fn take_new_problem(&mut self) -> Option<String> {
        self.problems.take_new()
    }
}

/// `/var/log/pods`: a directory `<namespace>_<pod-name>_<pod-uid>` per pod, a directory per
/// container in it. Entries of another shape are not the kubelet's and are skipped.
fn list_pods(dir: &Path) -> io::Result<HashMap<String, PodEntry>> {
    let mut pods = HashMap::new();
    for entry in fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let file_name = entry.file_name();
        let Some((namespace, name, uid)) = file_name.to_str().and_then(parse_pod_dir) else {
            continue;
        };
        // A pod removed between the two reads has no containers: it is still the pod.
        let mut containers: Vec<String> = fs::read_dir(entry.path())
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|c| c.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|c| c.file_name().into_string().ok())
            .filter(|c| is_dns_label(c))
            .collect();
        containers.sort_unstable();
        pods.insert(
            uid,
            PodEntry {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                containers,
            },
        );
    }
    Ok(pods)
}

/// `/var/log/containers`: a link `<pod-name>_<namespace>_<container-name>-<id>.log` per
/// container (the link's target is not followed: it is a host path).
fn list_containers(dir: &Path) -> io::Result<HashMap<String, ContainerEntry>> {
    let mut containers = HashMap::new();
    for entry in fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let file_name = entry.file_name();
        let Some((id, container)) = file_name.to_str().and_then(parse_container_link) else {
            continue;
        };
        containers.insert(id.to_owned(), container);
    }
    Ok(containers)
}

/// `<namespace>_<pod-name>_<pod-uid>` into its parts, the UID spelled as the cgroup parser
/// spells it.
fn parse_pod_dir(name: &str) -> Option<(&str, &str, String)> {
    let mut parts = name.split('_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !is_dns_label(namespace) || !is_dns_subdomain(pod) {
        return None;
    }
    Some((namespace, pod, canonical_uid(uid, '-')?))
}

/// `<pod-name>_<namespace>_<container-name>-<id>.log` into the container's ID and names.
fn parse_container_link(name: &str) -> Option<(&str, ContainerEntry)> {
    let mut parts = name.strip_suffix(".log")?.split('_');
    let (pod, namespace, rest) = (parts.next()?, parts.next()?, parts.next()?);
    let (container, id) = rest.rsplit_once('-')?;
    if parts.next().is_some()
        || !is_container_id(id)
        || !is_dns_label(container)
        || !is_dns_label(namespace)
        || !is_dns_subdomain(pod)
    {
        return None;
    }
    let entry = ContainerEntry {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        container: container.to_owned(),
    };
    Some((id, entry))
}

/// A name Kubernetes gives namespaces and containers (RFC 1123 label): lowercase letters,
/// digits and inner `-`, at most 63 characters.
fn is_dns_label(name: &str) -> bool {
    name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.is_empty()
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
}

/// A name Kubernetes gives pods (RFC 1123 subdomain): labels joined by `.`, at most 253
/// characters.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::symlink,
        sync::atomic::{AtomicU32, Ordering},
    };

    use super::*;
    use idlecut_api::{pods::Pod, vocabulary::QosClass};

    use crate::{cgroup::pod_of, directory::describe};

    const DOVECOT: &str = "3f5a2c1e-8b7d-4e0f-9a6b-1c2d3e4f5a6b";
    const IMAP_1: &str = "8c7fa0b7e0c5d1f39a2be4c6d8f01a2b3c4d5e6f708192a3b4c5d6e7f8091a2b";
    const IMAP_2: &str = "17db96a24ae1e9dd57143e62b1cb0d2d35e693c65c774c7470e87b0572e07c1a";
    const EXPORTER: &str = "95cbe853416f52d927dec41f1406dd75015ea131244a1ca875a7cd4ebe927ac8";
    const PAUSE: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const RELAY: &str = "a9c1d4e2-77f0-4b3a-8e21-5d6c7b8a9f01";
    const POSTFIX: &str = "49f9e8e5395d57c1083996c09e2e6f042d5fe1ec0310facab32f94912b35ce59";
    const NEW_POD: &str = "c0ffee00-1234-4abc-8def-0123456789ab";
    const NEW_ID: &str = "0e612005fd07e7f47e2cd07df99a2b4e909446814d71d0b5e4efc7159dd51252";

    /// A `/var/log` of its own under the system's temporary directory, removed at the end.
    struct VarLog(PathBuf);

    impl VarLog {
        fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "idlecut-kubelet-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(dir.join("pods")).unwrap();
            fs::create_dir_all(dir.join("containers")).unwrap();
            Self(dir)
        }

        /// Lays out a container's log as the kubelet does: the file of its `restart`, and the
        /// link to it in `containers/`.
        fn container(&self, ns: &str, pod: &str, uid: &str, name: &str, restart: u32, id: &str) {
            let dir = self.0.join(format!("pods/{ns}_{pod}_{uid}/{name}"));
            fs::create_dir_all(&dir).unwrap();
            let log = dir.join(format!("{restart}.log"));
            fs::write(&log, "2024-05-01T10:00:00.000000000Z stdout F started\n").unwrap();
            let link = self
                .0
                .join(format!("containers/{pod}_{ns}_{name}-{id}.log"));
            symlink(&log, link).unwrap();
        }

        /// The pods of a mail namespace: dovecot with two containers, one restarted (both
        /// runs still linked), and a relay whose name has dashes and dots.
        fn mail(&self) {
            self.container("mail", "dovecot-0", DOVECOT, "imap", 0, IMAP_1);
            self.container("mail", "dovecot-0", DOVECOT, "imap", 1, IMAP_2);
            self.container("mail", "dovecot-0", DOVECOT, "exporter", 0, EXPORTER);
            self.container(
                "mail-relay",
                "postfix-7d9f8.eu-west-1",
                RELAY,
                "smtp",
                0,
                POSTFIX,
            );
        }

        fn dirs(&self) -> KubeletDirs {
            KubeletDirs::new(&self.0)
        }
    }

    impl Drop for VarLog {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn name(ns: &str, pod: &str, uid: &str, container: Option<&str>) -> Option<PodName> {
        Some(PodName {
            namespace: ns.to_owned(),
            name: pod.to_owned(),
            uid: uid.to_owned(),
            container: container.map(str::to_owned),
            labels: BTreeMap::new(),
            workload: None,
        })
    }

    #[test]
    fn names_a_pod_and_each_of_its_containers_across_a_restart() {
        let var_log = VarLog::new();
        var_log.mail();
        let mut dirs = var_log.dirs();
        assert_eq!(
            dirs.pod(DOVECOT, None),
            name("mail", "dovecot-0", DOVECOT, None)
        );
        for (id, container) in [(IMAP_1, "imap"), (IMAP_2, "imap"), (EXPORTER, "exporter")] {
            assert_eq!(
                dirs.pod(DOVECOT, Some(id)),
                name("mail", "dovecot-0", DOVECOT, Some(container)),
                "{id}"
            );
        }
        let containers = ["exporter".to_owned(), "imap".to_owned()];
        assert_eq!(dirs.containers(DOVECOT), Some(&containers[..]));
        assert_eq!(dirs.problem(), None);
        assert_eq!(dirs.take_new_problem(), None);
    }

    #[test]
    fn names_with_dashes_and_dots() {
        let var_log = VarLog::new();
        var_log.mail();
        let mut dirs = var_log.dirs();
        assert_eq!(
            dirs.pod(RELAY, Some(POSTFIX)),
            name("mail-relay", "postfix-7d9f8.eu-west-1", RELAY, Some("smtp"))
        );
    }

    #[test]
    fn a_container_without_a_log_or_of_another_pod_has_no_name() {
        let var_log = VarLog::new();
        var_log.mail();
        let mut dirs = var_log.dirs();
        // The sandbox (pause) has no log.
        assert_eq!(
            dirs.pod(DOVECOT, Some(PAUSE)),
            name("mail", "dovecot-0", DOVECOT, None)
        );
        // The relay's container asked for with dovecot's UID.
        assert_eq!(
            dirs.pod(DOVECOT, Some(POSTFIX)),
            name("mail", "dovecot-0", DOVECOT, None)
        );
    }

    #[test]
    fn entries_not_of_the_kubelets_shape_are_ignored() {
        let var_log = VarLog::new();
        var_log.mail();
        let pods = var_log.0.join("pods");
        for junk in [
            "lost+found",
            "mail_dovecot-0",
            "mail_dovecot-0_not-a-uid",
            "mail_dovecot_0_3f5a2c1e-8b7d-4e0f-9a6b-1c2d3e4f5a6c",
            "Mail_dovecot-0_3f5a2c1e-8b7d-4e0f-9a6b-1c2d3e4f5a6d",
        ] {
            fs::create_dir(pods.join(junk)).unwrap();
        }
        // A file of the right shape is not a pod's directory.
        fs::write(
            pods.join("mail_file_3f5a2c1e-8b7d-4e0f-9a6b-1c2d3e4f5a6e"),
            "",
        )
        .unwrap();
        let containers = var_log.0.join("containers");
        for junk in [
            format!("dovecot-0_mail_imap-{IMAP_1}"),
            format!("dovecot-0_mail_imap_{NEW_ID}.log"),
            "dovecot-0_mail_imap-deadbeef.log".to_owned(),
            "README.log".to_owned(),
        ] {
            fs::write(containers.join(junk), "").unwrap();
        }

        let mut dirs = var_log.dirs();
        assert_eq!(
            dirs.pod(DOVECOT, Some(IMAP_1)),
            name("mail", "dovecot-0", DOVECOT, Some("imap"))
        );
        assert_eq!(dirs.pods.len(), 2);
        assert_eq!(dirs.containers.len(), 4);
        for uid in [
            "3f5a2c1e-8b7d-4e0f-9a6b-1c2d3e4f5a6c",
            "3f5a2c1e-8b7d-4e0f-9a6b-1c2d3e4f5a6e",
        ] {
            assert_eq!(dirs.pod(uid, None), None);
        }
    }

    #[test]
    fn a_uid_not_present_is_none() {
        let var_log = VarLog::new();
        var_log.mail();
        let mut dirs = var_log.dirs();
        assert_eq!(dirs.pod(NEW_POD, Some(NEW_ID)), None);
        assert_eq!(dirs.pod("", None), None);
    }

    #[test]
    fn a_new_pod_is_found_once_it_appears() {
        let var_log = VarLog::new();
        var_log.mail();
        let mut dirs = var_log
            .dirs()
            .with_intervals(Duration::from_secs(3600), Duration::ZERO);
        assert_eq!(dirs.pod(NEW_POD, None), None);
        var_log.container("mail", "dovecot-1", NEW_POD, "imap", 0, NEW_ID);
        assert_eq!(
            dirs.pod(NEW_POD, Some(NEW_ID)),
            name("mail", "dovecot-1", NEW_POD, Some("imap"))
        );
        // A new container of a known pod (a restart) too.
        var_log.container("mail", "dovecot-0", DOVECOT, "imap", 2, NEW_POD_RESTART);
        assert_eq!(
            dirs.pod(DOVECOT, Some(NEW_POD_RESTART)),
            name("mail", "dovecot-0", DOVECOT, Some("imap"))
        );
    }

    const NEW_POD_RESTART: &str =
        "5c15b2ee7ccec35defff612a42314ecbd47dda705c15b2ee7ccec35defff612a";

    #[test]
    fn listings_are_bounded() {
        let var_log = VarLog::new();
        var_log.mail();
        let hour = Duration::from_secs(3600);
        let mut dirs = var_log.dirs().with_intervals(hour, hour);
        for _ in 0..100 {
            assert!(dirs.pod(DOVECOT, Some(IMAP_1)).is_some());
            assert_eq!(dirs.pod(NEW_POD, None), None);
        }
        // The first lookup listed; misses within the floor did not list again.
        assert_eq!(dirs.relisting.listings, 1);
        var_log.container("mail", "dovecot-1", NEW_POD, "imap", 0, NEW_ID);
        assert_eq!(dirs.pod(NEW_POD, None), None, "within the miss floor");
        dirs.refresh();
        assert!(dirs.pod(NEW_POD, None).is_some());

        // With no floor and no refresh interval, each lookup lists once, not twice.
        let mut dirs = var_log
            .dirs()
            .with_intervals(Duration::ZERO, Duration::ZERO);
        assert_eq!(dirs.pod("11111111-2222-4333-8444-555555555555", None), None);
        assert!(dirs.pod(DOVECOT, Some(PAUSE)).is_some());
        assert_eq!(dirs.relisting.listings, 2);
    }

    #[test]
    fn gone_pods_are_dropped_at_the_next_listing() {
        let var_log = VarLog::new();
        var_log.mail();
        let mut dirs = var_log
            .dirs()
            .with_intervals(Duration::ZERO, Duration::ZERO);
        assert!(dirs.pod(RELAY, Some(POSTFIX)).is_some());
        fs::remove_dir_all(
            var_log
                .0
                .join(format!("pods/mail-relay_postfix-7d9f8.eu-west-1_{RELAY}")),
        )
        .unwrap();
        fs::remove_file(var_log.0.join(format!(
            "containers/postfix-7d9f8.eu-west-1_mail-relay_smtp-{POSTFIX}.log"
        )))
        .unwrap();
        assert_eq!(dirs.pod(RELAY, Some(POSTFIX)), None);
        assert!(!dirs.pods.contains_key(RELAY));
        assert!(!dirs.containers.contains_key(POSTFIX));
        assert_eq!(dirs.pods.len(), 1);
    }

    #[test]
    fn a_missing_root_is_told_once_and_answers_none() {
        let var_log = VarLog::new();
        let missing = var_log.0.join("nowhere");
        let mut dirs = KubeletDirs::new(&missing).with_intervals(Duration::ZERO, Duration::ZERO);
        assert_eq!(dirs.take_new_problem(), None, "nothing read yet");
        assert_eq!(dirs.pod(DOVECOT, None), None);
        let problem = dirs.take_new_problem().unwrap();
        assert!(
            problem.starts_with(&format!("{}/pods not readable: ", missing.display())),
            "{problem}"
        );
        assert!(problem.contains("/containers not readable: "), "{problem}");
        assert_eq!(dirs.problem(), Some(problem.as_str()));
        assert_eq!(dirs.pod(DOVECOT, None), None);
        assert_eq!(dirs.take_new_problem(), None, "told once");

        // Once readable, it answers; if it breaks again, that is told again.
        fs::create_dir_all(missing.join("pods")).unwrap();
        fs::create_dir_all(missing.join("containers")).unwrap();
        let var_log_again = VarLog(missing.clone());
        var_log_again.container("mail", "dovecot-0", DOVECOT, "imap", 0, IMAP_1);
        assert!(dirs.pod(DOVECOT, Some(IMAP_1)).is_some());
        assert_eq!(dirs.problem(), None);
        assert_eq!(dirs.take_new_problem(), None);
        fs::remove_dir_all(missing.join("containers")).unwrap();
        // What was listed of a directory that can no longer be read is kept.
        assert_eq!(
            dirs.pod(DOVECOT, Some(IMAP_1)),
            name("mail", "dovecot-0", DOVECOT, Some("imap"))
        );
        let problem = dirs.take_new_problem().unwrap();
        assert!(
            problem.starts_with(&format!("{}/containers", missing.display())),
            "{problem}"
        );
        assert!(!problem.contains("/pods"), "{problem}");
    }

    #[test]
    fn a_process_cgroup_becomes_the_apis_pod() {
        let var_log = VarLog::new();
        var_log.mail();
        let mut directories: Vec<Box<dyn PodDirectory>> = vec![Box::new(var_log.dirs())];
        let cgroup = pod_of(&format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{IMAP_2}.scope\n",
            DOVECOT.replace('-', "_")
        ))
        .unwrap();
        assert_eq!(
            describe(&mut directories, &cgroup),
            Pod {
                namespace: Some("mail".to_owned()),
                pod: Some("dovecot-0".to_owned()),
                uid: DOVECOT.to_owned(),
                container: Some("imap".to_owned()),
                qos: Some(QosClass::Burstable),
                workload: None,
                labels: BTreeMap::new(),
            }
        );
        // A pod the directories do not list is still a pod, known by its UID.
        let unlisted = pod_of(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f0f0f0f_1111_2222_3333_444444444444.slice/cri-containerd-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.scope\n",
        )
        .unwrap();
        let pod = describe(&mut directories, &unlisted);
        assert_eq!((pod.namespace, pod.pod), (None, None));
        assert_eq!(pod.uid, "0f0f0f0f-1111-2222-3333-444444444444");
    }

    #[test]
    fn name_parsers_take_the_kubelets_shapes_only() {
        assert_eq!(
            parse_pod_dir("kube-system_kube-apiserver-node-1_3e61c214bc3ed9ff81e21474dd6cba17"),
            Some((
                "kube-system",
                "kube-apiserver-node-1",
                "3e61c214bc3ed9ff81e21474dd6cba17".to_owned()
            ))
        );
        for junk in ["", "_", "__", "a_b_", "_b_c", "a__c", "-a_b_c", "a_b-_c"] {
            assert_eq!(parse_pod_dir(junk), None, "{junk:?}");
        }
        let link = format!("coredns-5d78c9869d-x2x7k_kube-system_coredns-{IMAP_1}.log");
        let (id, entry) = parse_container_link(&link).unwrap();
        assert_eq!(
            (
                id,
                entry.pod.as_str(),
                entry.namespace.as_str(),
                entry.container.as_str()
            ),
            (IMAP_1, "coredns-5d78c9869d-x2x7k", "kube-system", "coredns")
        );
        for junk in [
            ".log",
            "a_b_c.log",
            "a_b_-x.log",
            &format!("a_b_-{IMAP_1}.log"),
            &format!("a_b_c-{IMAP_1}.log.1"),
        ] {
            assert!(parse_container_link(junk).is_none(), "{junk:?}");
        }
        assert!(is_dns_subdomain("postfix-7d9f8.eu-west-1"));
        assert!(!is_dns_subdomain("postfix..eu"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }
}
