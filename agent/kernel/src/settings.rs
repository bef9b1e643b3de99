//! The settings of the kernel side, parsed where their rules are known: how many connections
//! the kernel may track, how large its ring buffer may be, and which kinds of hook the probes
//! may use. The defaults are the kernel programs' own (`defaults`).

pub use idlecut_ebpf::defaults;

/// Bounds of what the kernel side may be given: beyond them a setting costs more memory (and
/// start-up time) than any single host needs.
pub const MAX_CONNECTIONS_BOUND: u32 = 1 << 20;
pub const RING_BUFFER_BOUND: u32 = 1 << 28;

/// Which kinds of kernel hook the probes may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hooks {
    /// BTF tracepoints where the kernel has BTF (cheaper, no tracefs needed), classic
    /// tracepoints for any probe whose BTF tracepoint does not load.
    Auto,
    /// Classic tracepoints only (the fallback; needs tracefs).
    Classic,
}

pub fn parse_hooks(value: &str) -> Result<Hooks, String> {
    match value {
        "auto" => Ok(Hooks::Auto),
        "classic" => Ok(Hooks::Classic),
        _ => Err(format!("`{value}` is not a kind of hooks: auto or classic")),
    }
}

pub fn parse_max_connections(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if (64..=MAX_CONNECTIONS_BOUND).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{value}` is not a number of connections (64-{MAX_CONNECTIONS_BOUND})"
        )),
    }
}

pub fn parse_ring_buffer_bytes(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if (4096..=RING_BUFFER_BOUND).contains(&n) && n.is_power_of_two() => Ok(n),
        _ => Err(format!(
            "`{value}` is not a ring buffer size: a power of two from 4096 to {RING_BUFFER_BOUND} bytes"
        )),
    }
}

/// Which of this host's idle timeouts a scan reads, besides conntrack's sysctls (always read:
/// they cost nothing): nftables `ct timeout` policies and IPVS, which need CAP_NET_ADMIN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeTimeoutSources {
    pub nftables: bool,
    pub ipvs: bool,
}

impl std::fmt::Display for NodeTimeoutSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("conntrack")?;
        if self.nftables {
            f.write_str(",nftables")?;
        }
        if self.ipvs {
            f.write_str(",ipvs")?;
        }
        Ok(())
    }
}

pub fn parse_node_timeouts(value: &str) -> Result<NodeTimeoutSources, String> {
    let mut sources = NodeTimeoutSources::default();
    for word in value.split(',').map(str::trim) {
        match word {
            "conntrack" => {}
            "nftables" => sources.nftables = true,
            "ipvs" => sources.ipvs = true,
            _ => {
                return Err(format!(
                    "`{word}` is not a source of idle timeouts: conntrack, nftables or ipvs, such \
                     as conntrack,nftables (nftables and ipvs need CAP_NET_ADMIN)"
                ));
            }
        }
    }
    Ok(sources)
}

/// A path, or `none`: `--kubelet-logs` (the directory holding the kubelet's `pods/` and
/// `containers/` log directories) and `--cri-socket` (the container runtime's CRI socket).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OptionalPath(pub Option<std::path::PathBuf>);

impl std::fmt::Display for OptionalPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(path) => write!(f, "{}", path.display()),
            None => f.write_str("none"),
        }
    }
}

pub fn parse_kubelet_logs(value: &str) -> Result<OptionalPath, String> {
    optional_path(
        value,
        "a directory",
        "name pods without the kubelet's directories",
    )
}

pub fn parse_cri_socket(value: &str) -> Result<OptionalPath, String> {
    optional_path(value, "a socket", "leave the container runtime unasked")
}

fn optional_path(value: &str, what: &str, none_does: &str) -> Result<OptionalPath, String> {
    match value.trim() {
        "" => Err(format!(
            "an empty path is not {what} (write none to {none_does})"
        )),
        "none" => Ok(OptionalPath(None)),
        path => Ok(OptionalPath(Some(path.into()))),
    }
}

/// `--node-netns`: a path that opens the node's own network namespace.
pub fn parse_node_netns(value: &str) -> Result<std::path::PathBuf, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("an empty path is not a network namespace (such as /proc/1/ns/net)".into());
    }
    Ok(value.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_settings_parse_or_say_what_is_expected() {
        assert_eq!(
            parse_node_timeouts("conntrack"),
            Ok(NodeTimeoutSources::default())
        );
        let all = parse_node_timeouts("conntrack,nftables,ipvs").unwrap();
        assert!(all.nftables && all.ipvs);
        assert_eq!(all.to_string(), "conntrack,nftables,ipvs");
        assert!(
            parse_node_timeouts("iptables")
                .unwrap_err()
                .contains("conntrack, nftables or ipvs")
        );
        assert_eq!(parse_kubelet_logs("none"), Ok(OptionalPath(None)));
        assert_eq!(parse_cri_socket("none"), Ok(OptionalPath(None)));
        assert_eq!(
            parse_cri_socket("/run/containerd/containerd.sock")
                .unwrap()
                .to_string(),
            "/run/containerd/containerd.sock"
        );
        assert!(parse_cri_socket("").unwrap_err().contains("none to leave"));
        assert_eq!(
            parse_kubelet_logs("/var/log").unwrap().to_string(),
            "/var/log"
        );
        assert!(parse_kubelet_logs(" ").is_err());
        assert!(parse_node_netns("").is_err());
    }

    #[test]
    fn sizes_are_bounded() {
        assert!(parse_ring_buffer_bytes("2147483648").is_err());
        assert!(parse_ring_buffer_bytes("268435456").is_ok());
        assert!(parse_max_connections("16777216").is_err());
        assert!(parse_max_connections("1048576").is_ok());
    }
}
