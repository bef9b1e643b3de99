//! The node's timeout readers (`idlecut_node::timeouts`) against real network namespaces: each
//! test makes a namespace of its own (`idlecut-t-...`, deleted on drop), sets timeouts in it
//! with sysctl and nftables, then reads them from a thread that entered it with `setns`, as the
//! agent's scan thread does.
//!
//! These load no eBPF programs: they need root only for the namespaces (CAP_SYS_ADMIN) and
//! nftables (CAP_NET_ADMIN), and the `ip`, `sysctl` and `nft` tools.

use std::fs::{self, File};

use idlecut_integration_tests::{
    Netns,
    api::{
        host::HostTimeout,
        vocabulary::{TcpTimeoutState, TimeoutSource},
    },
    require_root,
};
use idlecut_node::timeouts::{Sources, TimeoutError, read_current_namespace};

const ESTABLISHED: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established";

/// A network namespace of the test's own, named after it and this process.
fn namespace(tag: &str) -> Netns {
    Netns::new(format!("idlecut-t-{tag}-{}", std::process::id()))
}

fn find<'a>(timeouts: &'a [HostTimeout], name: &str, state: TcpTimeoutState) -> &'a HostTimeout {
    timeouts
        .iter()
        .find(|t| t.name == name && t.state == state)
        .unwrap_or_else(|| panic!("no {name} {state} in {timeouts:#?}"))
}

#[test]
fn sysctls_are_read_in_the_namespace_the_thread_entered() {
    require_root();
    let netns = namespace("sysctl");
    netns.sysctl("net.netfilter.nf_conntrack_tcp_timeout_established", "7");
    netns.sysctl("net.netfilter.nf_conntrack_tcp_timeout_close_wait", "8");
    netns.sysctl("net.ipv4.tcp_keepalive_time", "600");
    let host_value = fs::read_to_string(ESTABLISHED).expect("the host's own sysctl");

    let (found, proc_net, thread_net) = netns.run(|| {
        // Also what the module docs say: /proc/sys follows the thread, /proc/net the process.
        let found = read_current_namespace(&Sources::default());
        let interfaces = |path: &str| fs::read_to_string(path).expect(path).lines().count() - 2;
        (
            found,
            interfaces("/proc/net/dev"),
            interfaces("/proc/thread-self/net/dev"),
        )
    });
    assert!(found.errors.is_empty(), "{:?}", found.errors);
    let established = find(
        &found.timeouts,
        "nf_conntrack_tcp_timeout_established",
        TcpTimeoutState::Established,
    );
    assert_eq!(established.seconds, 7);
    assert_eq!(established.source, TimeoutSource::Conntrack);
    assert_eq!(
        find(
            &found.timeouts,
            "nf_conntrack_tcp_timeout_close_wait",
            TcpTimeoutState::CloseWait
        )
        .seconds,
        8
    );
    assert_eq!(found.keepalive.map(|k| k.time_seconds), Some(600));
    assert!(found.conntrack.is_some_and(|c| c.loose.is_some()));
    // The process's own namespace is untouched, and its other threads still read it.
    assert_eq!(fs::read_to_string(ESTABLISHED).expect("host"), host_value);
    assert_ne!(host_value.trim(), "7");
    // The namespace has only `lo`; /proc/net/dev (the main thread's namespace) may have more.
    assert_eq!(thread_net, 1, "/proc/thread-self/net/dev in the namespace");
    let host_interfaces = fs::read_to_string("/proc/net/dev")
        .expect("host")
        .lines()
        .count()
        - 2;
    assert_eq!(
        proc_net, host_interfaces,
        "/proc/net/dev shows the process's namespace"
    );
}

#[test]
fn a_descriptor_opened_before_setns_keeps_its_namespace() {
    require_root();
    let netns = namespace("fd");
    netns.sysctl("net.netfilter.nf_conntrack_tcp_timeout_established", "9");
    let host_value = fs::read_to_string(ESTABLISHED).expect("host");
    let before = File::open(ESTABLISHED).expect("open before setns");
    let (old, new) = netns.run(move || {
        let mut before = before;
        let old = std::io::read_to_string(&mut before).expect("read the old descriptor");
        (
            old,
            fs::read_to_string(ESTABLISHED).expect("open after setns"),
        )
    });
    assert_eq!(old, host_value);
    assert_eq!(new.trim(), "9");
}

const MAIL_RULESET: &str = r#"
table inet t {
  ct timeout mailshort {
    protocol tcp
    l3proto ip
    policy = { established: 5, close_wait: 5 }
  }
  chain pre {
    type filter hook prerouting priority filter
    tcp dport 143 ct timeout set "mailshort"
  }
}
table ip t2 {
  ct timeout long {
    protocol tcp
    l3proto ip
    policy = { established: 86400 }
  }
  ct timeout unused {
    protocol tcp
    l3proto ip
    policy = { established: 60 }
  }
  ct timeout dns {
    protocol udp
    l3proto ip
    policy = { unreplied: 5 }
  }
  chain pre {
    type filter hook prerouting priority filter
    tcp dport { 143, 993 } ct timeout set "long"
    tcp sport 25 ip saddr 10.0.0.0/8 ct timeout set "long"
    th dport 587 ct timeout set "long"
    tcp dport 1000-2000 ct timeout set "long"
    tcp dport != 110 ct timeout set "long"
    ct timeout set tcp dport map { 465 : "long" }
    tcp dport { 2525, 3000-3100 } ct timeout set "long"
    udp dport 53 ct timeout set "dns"
  }
}
"#;

#[test]
fn nftables_policies_are_read_with_the_rules_that_apply_them() {
    require_root();
    let netns = namespace("nft");
    netns.nft(MAIL_RULESET);
    let sources = Sources {
        nftables: true,
        ipvs: true,
        ..Sources::default()
    };
    let found = netns.run(move || read_current_namespace(&sources));
    assert!(found.errors.is_empty(), "{:?}", found.errors);

    let mailshort = find(
        &found.timeouts,
        "inet/t/mailshort",
        TcpTimeoutState::Established,
    );
    assert_eq!(
        mailshort,
        &HostTimeout {
            source: TimeoutSource::Nftables,
            name: "inet/t/mailshort".to_owned(),
            state: TcpTimeoutState::Established,
            seconds: 5,
            applies_to: Some("tcp dport 143".to_owned()),
        }
    );
    assert_eq!(
        find(
            &found.timeouts,
            "inet/t/mailshort",
            TcpTimeoutState::CloseWait
        )
        .seconds,
        5
    );
    // The states the policy did not set are the namespace's defaults: not reported.
    assert!(
        !found
            .timeouts
            .iter()
            .any(|t| t.name == "inet/t/mailshort" && t.state == TcpTimeoutState::Unacknowledged),
        "{:#?}",
        found.timeouts
    );

    let long = find(&found.timeouts, "ip/t2/long", TcpTimeoutState::Established);
    assert_eq!(long.seconds, 86400);
    assert_eq!(
        long.applies_to.as_deref(),
        Some(
            "tcp dport { 143, 993 } or tcp sport 25 and other conditions or tcp dport 587 \
             or tcp dport 1000-2000 or tcp dport != 110 or tcp dport 465 \
             or tcp dport { 2525, 3000-3100 }"
        )
    );
    let unused = find(
        &found.timeouts,
        "ip/t2/unused",
        TcpTimeoutState::Established,
    );
    assert_eq!(unused.applies_to.as_deref(), Some("no rule applies it"));
    assert!(
        !found.timeouts.iter().any(|t| t.name.ends_with("/dns")),
        "UDP policies are not TCP cutters"
    );
    // No IPVS on this kernel: nothing, and no error.
    assert!(
        !found
            .timeouts
            .iter()
            .any(|t| t.source == TimeoutSource::Ipvs)
    );
    // The sysctls are read too.
    assert!(
        found
            .timeouts
            .iter()
            .any(|t| t.source == TimeoutSource::Conntrack)
    );
}

#[test]
fn without_cap_net_admin_nftables_is_a_permission_error_and_the_rest_is_read() {
    require_root();
    let netns = namespace("eperm");
    netns.nft(MAIL_RULESET);
    let sources = Sources {
        nftables: true,
        ..Sources::default()
    };
    let found = netns.run(move || {
        drop_effective_capability(CAP_NET_ADMIN);
        read_current_namespace(&sources)
    });
    assert_eq!(found.errors.len(), 1, "{:?}", found.errors);
    assert_eq!(found.errors[0].source, TimeoutSource::Nftables);
    assert!(
        matches!(
            found.errors[0].error,
            TimeoutError::PermissionDenied {
                what: "nftables ct timeout policies"
            }
        ),
        "{:?}",
        found.errors[0].error
    );
    assert!(found.errors[0].error.to_string().contains("CAP_NET_ADMIN"));
    assert!(found.keepalive.is_some());
    assert!(
        found
            .timeouts
            .iter()
            .all(|t| t.source == TimeoutSource::Conntrack)
    );
}

const CAP_NET_ADMIN: u32 = 12;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops a capability from the calling thread's effective set (capabilities are per thread).
fn drop_effective_capability(capability: u32) {
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget/capset with a version 3 header and the two data structs it reads/writes.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()),
            0,
            "capget: {}",
            std::io::Error::last_os_error()
        );
        data[(capability / 32) as usize].effective &= !(1 << (capability % 32));
        assert_eq!(
            libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()),
            0,
            "capset: {}",
            std::io::Error::last_os_error()
        );
    }
}
