//! Who owns a socket: the `/proc` walk from socket inodes to the processes holding them, their
//! cgroups, and the Kubernetes pods those name.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::Arc,
};

use idlecut_core::scan::Owner;
use idlecut_node::{
    cgroup,
    directory::{self, PodDirectory},
};

/// Finds the processes that hold the given socket inodes, and their cgroups, by reading
/// /proc/*/fd. Sockets nobody holds (already closed by their application) are left out. The
/// sockets of one process share one `Owner` (the model keeps it with each connection).
pub fn owners(
    wanted: &HashSet<u32>,
    directories: &mut [Box<dyn PodDirectory>],
) -> HashMap<u32, Arc<Owner>> {
    let mut owners = HashMap::new();
    if wanted.is_empty() {
        return owners;
    }
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return owners;
    };
    for process in processes.filter_map(Result::ok) {
        let Ok(pid) = process.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let mut owner: Option<Arc<Owner>> = None;
        for fd in fds.filter_map(Result::ok) {
            let Some(inode) = std::fs::read_link(fd.path())
                .ok()
                .and_then(|target| socket_inode(&target))
            else {
                continue;
            };
            if wanted.contains(&inode) && !owners.contains_key(&inode) {
                let owner = owner.get_or_insert_with(|| {
                    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok();
                    Arc::new(Owner {
                        pid,
                        cgroup: text.as_deref().and_then(cgroup_in),
                        pod: text
                            .as_deref()
                            .and_then(cgroup::pod_of)
                            .map(|pod| directory::describe(directories, &pod)),
                    })
                });
                owners.insert(inode, Arc::clone(owner));
            }
        }
        if owners.len() == wanted.len() {
            break;
        }
    }
    owners
}

/// The inode of a socket from the target of its `/proc/PID/fd` link (`socket:[INODE]`).
fn socket_inode(target: &Path) -> Option<u32> {
    target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The cgroup v2 path of a `/proc/PID/cgroup` text (the `0::` line), or its first v1 hierarchy.
fn cgroup_in(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .or_else(|| text.lines().next().and_then(|l| l.splitn(3, ':').nth(2)))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_give_their_inode_and_other_links_nothing() {
        assert_eq!(socket_inode(Path::new("socket:[4242]")), Some(4242));
        assert_eq!(socket_inode(Path::new("pipe:[4242]")), None);
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
        assert_eq!(socket_inode(Path::new("socket:[x]")), None);
    }

    #[test]
    fn cgroup_v2_is_preferred_over_v1() {
        assert_eq!(
            cgroup_in("0::/system.slice/dovecot.service\n").as_deref(),
            Some("/system.slice/dovecot.service")
        );
        assert_eq!(
            cgroup_in("12:pids:/user.slice\n0::/init.scope\n").as_deref(),
            Some("/init.scope")
        );
        assert_eq!(
            cgroup_in("12:pids:/user.slice\n").as_deref(),
            Some("/user.slice")
        );
        assert_eq!(cgroup_in(""), None);
    }

    /// The real /proc: this test process holds the socket it opened.
    #[test]
    fn finds_the_owner_of_a_socket_this_process_holds() {
        use std::os::unix::fs::MetadataExt as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let inode = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino();
        let inode = u32::try_from(inode).unwrap();
        let found = owners(&HashSet::from([inode]), &mut []);
        assert_eq!(found[&inode].pid, std::process::id());
        assert_eq!(
            found[&inode].pod, None,
            "the test runs on the host, in no pod"
        );
    }
}
