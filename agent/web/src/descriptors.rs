//! Open file descriptors: the agent's own work (BPF maps and links, the socket-table scan's
//! namespace and /proc handles, netlink) must never starve because HTTP clients hold every
//! descriptor. The soft limit is raised to the hard one at start-up (systemd's default soft
//! limit is 1024), and HTTP connections get a bounded share of what remains after a reserve.

/// Descriptors kept for the agent's own work, whatever the HTTP side does.
pub const RESERVED_FOR_AGENT: u64 = 256;
/// HTTP connections at once, at most, however high the limit (Prometheus needs one or two).
pub const MAX_HTTP_CONNECTIONS: usize = 512;
/// HTTP connections at once, at least, however low the limit.
pub const MIN_HTTP_CONNECTIONS: usize = 8;

/// The open-files limits before and after raising the soft one to the hard one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFileLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit (no privilege needed), as the Go runtime
/// does. On failure the limit stays as it was, and the HTTP side is sized from it.
pub fn raise_open_file_limit() -> std::io::Result<OpenFileLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let soft_before = limit.rlim_cur;
    // An unlimited hard limit is refused by the kernel above fs.nr_open: stay at a value every
    // kernel accepts.
    let target = if limit.rlim_max == libc::RLIM_INFINITY {
        1 << 20
    } else {
        limit.rlim_max
    };
    if target > limit.rlim_cur {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: a valid pointer to an rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit.rlim_cur = target;
    }
    Ok(OpenFileLimit {
        soft_before,
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// How many HTTP connections may be open at once under a soft limit: half of what the reserve
/// leaves, within [MIN_HTTP_CONNECTIONS, MAX_HTTP_CONNECTIONS].
pub fn http_connection_capacity(soft_limit: u64) -> usize {
    let share = soft_limit.saturating_sub(RESERVED_FOR_AGENT) / 2;
    usize::try_from(share)
        .unwrap_or(usize::MAX)
        .clamp(MIN_HTTP_CONNECTIONS, MAX_HTTP_CONNECTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_leaves_the_reserve_and_stays_bounded() {
        assert_eq!(http_connection_capacity(1024), 384);
        assert_eq!(http_connection_capacity(256), MIN_HTTP_CONNECTIONS);
        assert_eq!(http_connection_capacity(0), MIN_HTTP_CONNECTIONS);
        assert_eq!(http_connection_capacity(1 << 20), MAX_HTTP_CONNECTIONS);
    }
}
