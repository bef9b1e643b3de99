//! Network namespaces: finding every one of the host, and entering one on the calling thread.

use idlecut_core::scan::Netns;
use nix::sched::{CloneFlags, setns};
use std::{
    collections::HashSet,
    fs::File,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Every network namespace of the host: the agent's own, those named in /run/netns, and those
/// held by processes. Deduplicated by inode. Also says how many process namespaces could not be
/// looked at (without CAP_SYS_PTRACE, those of other users' processes).
pub fn namespaces() -> (Vec<Netns>, usize) {
    let mut candidates: Vec<PathBuf> = vec![PathBuf::from("/proc/self/ns/net")];
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        candidates.extend(entries.filter_map(Result::ok).map(|e| e.path()));
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        candidates.extend(
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .map(|e| e.path().join("ns/net")),
        );
    }
    let mut seen = HashSet::new();
    let mut namespaces = Vec::new();
    let mut unreadable = 0;
    for path in candidates {
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            // A process that exited, a namespace being deleted.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(_) => {
                unreadable += 1;
                continue;
            }
        };
        let Ok(inode) = u32::try_from(meta.ino()) else {
            continue;
        };
        if seen.insert(inode) {
            namespaces.push(Netns { inode, path });
        }
    }
    (namespaces, unreadable)
}

/// The inode of the namespace at `path`, if it can be read.
pub fn inode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .and_then(|meta| u32::try_from(meta.ino()).ok())
}

/// The calling thread's network namespace, to come back to after visiting others.
pub fn current() -> io::Result<File> {
    File::open("/proc/thread-self/ns/net")
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &Path) -> io::Result<()> {
    enter_file(&File::open(path)?)
}

/// Moves the calling thread into the namespace `file` refers to.
pub fn enter_file(file: &File) -> io::Result<()> {
    Ok(setns(file, CloneFlags::CLONE_NEWNET)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The errno of a refused setns comes through as it was (no privilege needed: a file that
    /// is not a namespace is refused first).
    #[test]
    fn entering_what_is_not_a_namespace_is_refused_with_its_errno() {
        let not_a_namespace = File::open("/proc/self/stat").unwrap();
        let refused = enter_file(&not_a_namespace).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EINVAL), "{refused}");
    }

    #[test]
    fn the_agents_own_namespace_is_always_found() {
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        let (found, _) = namespaces();
        assert!(found.iter().any(|ns| u64::from(ns.inode) == own));
        let mut inodes: Vec<u32> = found.iter().map(|ns| ns.inode).collect();
        inodes.sort_unstable();
        inodes.dedup();
        assert_eq!(inodes.len(), found.len(), "deduplicated by inode");
    }
}
