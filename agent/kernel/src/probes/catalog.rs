//! What the agent attaches: one probe per kernel hook, and for each tracepoint the two programs
//! that can sit on it (BTF tracepoint, classic tracepoint).

use idlecut_ebpf::offsets_global;

use super::layouts::tracefs::Needs;

/// How a program is attached, as the `kind` label of `idlecut_probe_hook` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    /// A BTF tracepoint (`tp_btf`): typed arguments, direct loads, its own recursion guard.
    BtfTracepoint,
    /// A classic tracepoint: a record formatted per event, read at offsets from tracefs.
    Tracepoint,
    /// A BPF trampoline on a kernel function.
    FEntry,
}

impl HookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BtfTracepoint => "tp_btf",
            Self::Tracepoint => "tracepoint",
            Self::FEntry => "fentry",
        }
    }
}

/// Where a probe attaches.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// A tracepoint: the BTF program where the kernel has BTF (and `--hooks auto`), else the
    /// classic one, whose field offsets come from tracefs into `offsets_global`.
    Tracepoint {
        category: &'static str,
        name: &'static str,
        btf_program: &'static str,
        needs: Needs,
        offsets_global: &'static str,
    },
    /// A BPF trampoline on a kernel function (needs BTF); reads `struct sk_buff` at offsets
    /// from BTF.
    FEntry { function: &'static str },
}

/// A probe: a kernel hook, its program(s), and what is lost without it.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSpec {
    /// The `probe` label: `category:name` or `fentry:function`, whatever program serves it.
    pub label: &'static str,
    pub hook: Hook,
    /// Without it the agent has nothing to report: failing to attach it is fatal.
    pub required: bool,
    /// What is lost when it is missing, for the warning.
    pub feature: &'static str,
}

impl ProbeSpec {
    /// The program's function name in the object for a hook kind.
    pub fn program(&self, kind: HookKind) -> &'static str {
        match (self.hook, kind) {
            (Hook::Tracepoint { btf_program, .. }, HookKind::BtfTracepoint) => btf_program,
            (Hook::Tracepoint { name, .. }, _) => name,
            (Hook::FEntry { function }, _) => function,
        }
    }
}

const fn tracepoint(
    label: &'static str,
    (category, name, btf_program): (&'static str, &'static str, &'static str),
    needs: Needs,
    offsets_global: &'static str,
    feature: &'static str,
) -> ProbeSpec {
    ProbeSpec {
        label,
        hook: Hook::Tracepoint {
            category,
            name,
            btf_program,
            needs,
            offsets_global,
        },
        required: false,
        feature,
    }
}

pub const PROBES: [ProbeSpec; 10] = [
    ProbeSpec {
        required: true,
        ..tracepoint(
            "sock:inet_sock_set_state",
            ("sock", "inet_sock_set_state", "btf_inet_sock_set_state"),
            Needs::StateChange,
            offsets_global::INET_SOCK_SET_STATE,
            "connection opens and closes",
        )
    },
    tracepoint(
        "tcp:tcp_probe",
        ("tcp", "tcp_probe", "btf_tcp_probe"),
        Needs::SocketPortsAndSegment,
        offsets_global::TCP_PROBE,
        "segments received (idle gaps, answers after a gap, stall recoveries)",
    ),
    tracepoint(
        "sock:sock_send_length",
        ("sock", "sock_send_length", "btf_sock_send_length"),
        Needs::SendLength,
        offsets_global::SOCK_SEND_LENGTH,
        "data sent (gaps this host ends; blackhole cuts are then seen only through retransmissions)",
    ),
    tracepoint(
        "tcp:tcp_receive_reset",
        ("tcp", "tcp_receive_reset", "btf_tcp_receive_reset"),
        Needs::SocketAndPorts,
        offsets_global::TCP_RECEIVE_RESET,
        "resets received (endings fall back to the reported errno)",
    ),
    tracepoint(
        "tcp:tcp_send_reset",
        ("tcp", "tcp_send_reset", "btf_tcp_send_reset"),
        Needs::SocketAndAnyPorts,
        offsets_global::TCP_SEND_RESET,
        "resets sent",
    ),
    tracepoint(
        "tcp:tcp_retransmit_skb",
        ("tcp", "tcp_retransmit_skb", "btf_tcp_retransmit_skb"),
        Needs::SocketPortsAndSegment,
        offsets_global::TCP_RETRANSMIT_SKB,
        "retransmissions and stalls",
    ),
    tracepoint(
        "sock:inet_sk_error_report",
        ("sock", "inet_sk_error_report", "btf_inet_sk_error_report"),
        Needs::ErrorReport,
        offsets_global::INET_SK_ERROR_REPORT,
        "timeouts and errors as endings",
    ),
    tracepoint(
        "tcp:tcp_destroy_sock",
        ("tcp", "tcp_destroy_sock", "btf_tcp_destroy_sock"),
        Needs::SocketPortsAndAddresses,
        offsets_global::TCP_DESTROY_SOCK,
        "ends whose close went unreported (they wait for the next scan instead)",
    ),
    ProbeSpec {
        label: "fentry:tcp_v4_err",
        hook: Hook::FEntry {
            function: "tcp_v4_err",
        },
        required: false,
        feature: "ICMP errors for IPv4 connections (icmp cuts still show through EHOSTUNREACH)",
    },
    ProbeSpec {
        label: "fentry:tcp_v6_err",
        hook: Hook::FEntry {
            function: "tcp_v6_err",
        },
        required: false,
        feature: "ICMPv6 errors for IPv6 connections",
    },
];
