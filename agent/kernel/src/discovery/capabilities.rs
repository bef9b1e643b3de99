//! The agent's own capabilities, read from `/proc/self/status`: they decide which log line
//! explains a scan that could not look into some namespaces.

/// CAP_SYS_PTRACE (linux/capability.h): needed to open other users' processes' namespaces.
const CAP_SYS_PTRACE: u32 = 19;

/// Whether the agent holds CAP_SYS_PTRACE in its effective set.
pub fn has_sys_ptrace() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| effective(&status))
        .is_some_and(|caps| caps & (1 << CAP_SYS_PTRACE) != 0)
}

/// The effective capability set (`CapEff:`, hexadecimal) of a `/proc/PID/status` text.
fn effective(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_set_is_read_from_its_line() {
        let status = "Name:\tidlecut\nCapInh:\t0000000000000000\nCapEff:\t0000000000080000\n";
        assert_eq!(effective(status), Some(1 << CAP_SYS_PTRACE));
        assert_eq!(effective("Name:\tx\nCapEff:\tzz\n"), None);
        assert_eq!(effective(""), None);
    }
}
