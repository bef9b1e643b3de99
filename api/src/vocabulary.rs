//! The words the agent reports in: every label value of the metrics, every enumerated field of
//! the HTTP API and every column value of `idlecut connections`, each spelled once here.
//!
//! These spellings are a contract (dashboards, alerts and scripts match on them): each word
//! type says its text with `as_str`, serializes and parses as that text, and encodes as that
//! text in a Prometheus label, so no other module writes one of them as a string literal.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Defines a closed set of words: the enum, `ALL`, `as_str`, `Display`, `FromStr`, serde as
/// the text, and Prometheus label encoding as the text.
macro_rules! words {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$variant_meta])* $variant,)+
        }

        impl $name {
            pub const ALL: [Self; [$($text),+].len()] = [$(Self::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;

            fn from_str(text: &str) -> Result<Self, UnknownWord> {
                Self::ALL
                    .into_iter()
                    .find(|word| word.as_str() == text)
                    .ok_or_else(|| UnknownWord {
                        text: text.to_owned(),
                        expected: &[$($text),+],
                    })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        #[cfg(feature = "prometheus")]
        impl prometheus_client::encoding::EncodeLabelValue for $name {
            fn encode(
                &self,
                encoder: &mut prometheus_client::encoding::LabelValueEncoder,
            ) -> fmt::Result {
                fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

/// A word that is not one of its set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownWord {
    pub text: String,
    pub expected: &'static [&'static str],
}

impl fmt::Display for UnknownWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: expected ", self.text)?;
        let (last, rest) = self.expected.split_last().unwrap_or((&"", &[]));
        if !rest.is_empty() {
            write!(f, "{} or ", rest.join(", "))?;
        }
        f.write_str(last)
    }
}

impl std::error::Error for UnknownWord {}

words! {
    /// Which end of a connection this host is.
    pub enum Role {
        /// The local port is the service port: this host serves mail.
        Server = "server",
        /// The remote port is the service port: this host is a mail client (or proxy).
        Client = "client",
    }
}

words! {
    /// How a connection ended.
    pub enum End {
        /// Both sides closed with FIN.
        Fin = "fin",
        /// The peer (or a middlebox on the path) sent a RST.
        ResetReceived = "reset_received",
        /// This host sent a RST (application abort, SO_LINGER 0, unread data, keepalive
        /// failure).
        ResetSent = "reset_sent",
        /// The kernel gave up: retransmissions or keepalive probes unanswered (ETIMEDOUT).
        Timeout = "timeout",
        /// The kernel reported another error (EHOSTUNREACH after ICMP errors, ...).
        Error = "error",
        /// None of the above could be established.
        Unknown = "unknown",
    }
}

words! {
    /// How a path cut a connection after an idle gap.
    pub enum Signature {
        /// A RST answered the first segments after the gap.
        Reset = "reset",
        /// Segments after the gap were retransmitted and never answered.
        Blackhole = "blackhole",
        /// ICMP unreachable errors arrived for the segments after the gap.
        Icmp = "icmp",
        /// Not an idle cut: full-size segments were lost again and again while the peer
        /// acknowledged later, smaller ones. The path's MTU shrank and the ICMP errors that
        /// say so ("fragmentation needed", "packet too big") never arrived: a PMTU black hole.
        Pmtu = "pmtu",
    }
}

impl Signature {
    /// Whether it says the path cut the connection for being idle (a PMTU black hole does
    /// not: it is kept out of the cut-off interval and the REQ-5 verdict).
    pub fn is_idle_cut(self) -> bool {
        self != Self::Pmtu
    }
}

words! {
    /// How a stall (retransmissions without hearing from the peer) ended.
    pub enum StallOutcome {
        /// The peer was heard from again: the connection survived the loss.
        Recovered = "recovered",
        /// The connection died in it.
        Fatal = "fatal",
    }
}

words! {
    /// Who sent a RST, told by its IP TTL (IPv6 hop limit): a RST the peer sent arrives with
    /// the TTL of the peer's other segments, one forged by a middlebox with another.
    pub enum ResetOrigin {
        /// The same TTL as the peer's segments: the peer sent it (its own idle timeout, an
        /// application that aborted).
        Peer = "peer",
        /// Another TTL: something on the path forged it (a NAT or firewall that forgot the flow).
        Path = "path",
        /// No segment of the peer seen before it, or the RST's TTL could not be read.
        Unknown = "unknown",
        /// This host sent it.
        Local = "local",
    }
}

words! {
    /// Which way a RST went.
    pub enum Direction {
        Received = "received",
        Sent = "sent",
    }
}

words! {
    /// A connection's TCP keepalive, as the metrics group it.
    pub enum KeepaliveSetting {
        Off = "off",
        /// Probes more often than every two hours: defeats radio dormancy on mobile devices.
        Below2h = "below_2h",
        TwoHoursOrMore = "2h_or_more",
    }
}

words! {
    /// Whether a row of the per-connection view is a connection open now or one that ended.
    pub enum ConnectionState {
        Open = "open",
        Closed = "closed",
    }
}

words! {
    /// The result of one row of `idlecut check`.
    pub enum CheckStatus {
        Pass = "pass",
        Fail = "fail",
        CouldNotTell = "could_not_tell",
    }
}

words! {
    /// The checks `idlecut check` runs, in their order.
    pub enum CheckName {
        Reachability = "reachability",
        Identity = "identity",
        Extensions = "extensions",
        IdleCutoff = "idle_cutoff",
        Keepalive = "keepalive",
    }
}

words! {
    /// The mail protocol a server greets in (`idlecut check`).
    pub enum MailProtocol {
        Imap = "imap",
        Smtp = "smtp",
    }
}

words! {
    /// What `idlecut check`'s idle sessions did before their silence.
    pub enum IdleSession {
        Greeted = "greeted",
        LoggedIn = "logged_in",
    }
}

words! {
    /// How a scheduled check's run ended (`idlecut_check_runs_total`): its report's result, or
    /// `error` when it could not run (the name did not resolve, a file could not be read).
    pub enum CheckRunResult {
        Pass = "pass",
        Fail = "fail",
        CouldNotTell = "could_not_tell",
        Error = "error",
    }
}

words! {
    /// Whether a scheduled check's idle cut-off agrees with the passive estimate of the same
    /// path (`/api/v1/paths`).
    pub enum CheckAgreement {
        /// The two intervals overlap (within the timers' slack).
        Confirms = "confirms",
        /// They do not: one side saw connections survive silences the other saw cut.
        Contradicts = "contradicts",
        /// One side has no interval to compare yet.
        Unknown = "unknown",
    }
}

impl MailProtocol {
    /// The protocol a greeting speaks: IMAP greets with `* OK`, SMTP with `220`.
    pub fn of_greeting(line: &str) -> Option<Self> {
        if line.starts_with("* ") {
            Some(Self::Imap)
        } else if line.starts_with("220") {
            Some(Self::Smtp)
        } else {
            None
        }
    }

    /// The service name the agent's paths use for this protocol's usual port.
    pub const fn service(self) -> &'static str {
        match self {
            Self::Imap => "imap",
            Self::Smtp => "submission",
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Imap => "IMAP",
            Self::Smtp => "SMTP",
        }
    }
}

impl CheckStatus {
    /// The word in the table: a failure stands out.
    pub const fn word(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "FAIL",
            Self::CouldNotTell => "could not tell",
        }
    }
}

impl CheckName {
    /// The name in the table.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Reachability => "reachability",
            Self::Identity => "identity",
            Self::Extensions => "extensions",
            Self::IdleCutoff => "idle cut-off",
            Self::Keepalive => "keepalive",
        }
    }
}

/// RFC 1122 4.2.3.6 and RFC 5383 4.2: keepalive should not probe more often than every two
/// hours. The agent estimates the interval from the keepalive timer, so a minute of
/// slack keeps a 2 h setting on the right side.
const KEEPALIVE_TWO_HOURS_MS: u64 = 7_200_000 - 60_000;

impl KeepaliveSetting {
    pub const fn from_interval_ms(interval_ms: u64) -> Self {
        if interval_ms < KEEPALIVE_TWO_HOURS_MS {
            Self::Below2h
        } else {
            Self::TwoHoursOrMore
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_through_text_json_and_labels() {
        for end in End::ALL {
            assert_eq!(end.as_str().parse::<End>(), Ok(end));
            let json = serde_json::to_string(&end).unwrap();
            assert_eq!(json, format!("\"{end}\""));
            assert_eq!(serde_json::from_str::<End>(&json).unwrap(), end);
        }
        assert_eq!(
            serde_json::to_string(&KeepaliveSetting::TwoHoursOrMore).unwrap(),
            "\"2h_or_more\""
        );
        assert!(serde_json::from_str::<Role>("\"peer\"").is_err());
    }

    #[test]
    fn an_unknown_word_says_what_was_expected() {
        let err = "peer".parse::<Role>().unwrap_err();
        assert_eq!(err.to_string(), "`peer`: expected server or client");
        let err = "x".parse::<Signature>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "`x`: expected reset, blackhole, icmp or pmtu"
        );
    }

    #[test]
    fn keepalive_settings_split_at_two_hours() {
        assert_eq!(
            KeepaliveSetting::from_interval_ms(60_000),
            KeepaliveSetting::Below2h
        );
        assert_eq!(
            KeepaliveSetting::from_interval_ms(7_199_500),
            KeepaliveSetting::TwoHoursOrMore
        );
        assert_eq!(
            KeepaliveSetting::from_interval_ms(7_000_000),
            KeepaliveSetting::Below2h
        );
    }
}

// Kubernetes words (pods)

words! {
    /// A pod's Kubernetes QoS class, as the kubelet names the cgroup it puts the pod in
    /// (`kubepods-burstable.slice`, `kubepods/besteffort`; guaranteed pods sit directly under
    /// `kubepods`). Carried with a pod's names because the cgroup path gives it without asking
    /// the API server, and it says whether the pod's containers run under limits.
    pub enum QosClass {
        /// Requests equal limits for every resource of every container.
        Guaranteed = "guaranteed",
        /// Some request or limit set, not all equal.
        Burstable = "burstable",
        /// No request or limit at all.
        BestEffort = "besteffort",
    }
}

words! {
    /// The container runtime that made a container's cgroup, told by the prefix it gives the
    /// cgroup (`cri-containerd-`, `crio-`, `docker-`). Reported so that a container ID can be
    /// looked up with the right tool (`crictl`, `docker`).
    pub enum Runtime {
        Containerd = "containerd",
        CriO = "cri-o",
        Docker = "docker",
    }
}

words! {
    /// What kind of controller owns a pod, as its labels tell (the container runtime reports
    /// them; the API server is not asked): `pod-template-hash` is set by a Deployment's
    /// ReplicaSets, `statefulset.kubernetes.io/pod-name` by a StatefulSet,
    /// `pod-template-generation` by a DaemonSet, `batch.kubernetes.io/job-name` by a Job.
    pub enum WorkloadKind {
        Deployment = "deployment",
        StatefulSet = "statefulset",
        DaemonSet = "daemonset",
        Job = "job",
    }
}

// Host timeout words

words! {
    /// Which part of a network namespace's stack a host timeout was read from: what forgets an
    /// idle TCP flow (or, for `keepalive`, what would keep it from going idle), so the operator
    /// knows which setting to change.
    pub enum TimeoutSource {
        /// conntrack's own sysctls (`net.netfilter.nf_conntrack_tcp_timeout_*`): every tracked
        /// flow that no policy overrides.
        Conntrack = "conntrack",
        /// An nftables `ct timeout` policy: the flows the rules that set it match.
        Nftables = "nftables",
        /// IPVS's own connection table (`ipvsadm --set`): flows to virtual services.
        Ipvs = "ipvs",
        /// The namespace's TCP keepalive defaults (`net.ipv4.tcp_keepalive_*`): not a cutter,
        /// but what sockets that turn keepalive on without their own timers probe at.
        Keepalive = "keepalive",
    }
}

words! {
    /// Which TCP state of a flow a host timeout counts down in: an idle established connection
    /// meets `established`, the others only after a close or unanswered segments.
    pub enum TcpTimeoutState {
        /// Both sides open, nothing in flight: the idle timeout proper.
        Established = "established",
        /// One side sent FIN, the other has not yet (a half-closed connection left idle).
        CloseWait = "close_wait",
        /// The other side closed first and this one is closing (IPVS's `tcpfin`).
        FinWait = "fin_wait",
        /// Data was sent and not acknowledged yet: caps the flow's timeout (conntrack's
        /// `unacknowledged`), e.g. the first segment after an idle gap to a vanished peer.
        Unacknowledged = "unacknowledged",
        /// The same segment was retransmitted several times: caps the flow's timeout
        /// (conntrack's `max_retrans`).
        Retransmitting = "retransmitting",
    }
}

words! {
    /// Whether a connection's TCP keepalive comes before its path cuts idle connections.
    pub enum KeepaliveOutlook {
        /// Its keepalive time is shorter than the path's cut-off: it will survive silences.
        Survives = "survives",
        /// Its keepalive time is longer than the path's cut-off: a silence will get it cut.
        WillBeCut = "will_be_cut",
    }
}

words! {
    /// Where the cutter of a path sits, as this node's own timeouts tell.
    pub enum CutterLocation {
        /// A timeout of this node lies inside the path's cut-off interval.
        Node = "node",
        /// Every timeout of this node is above the cut-off: the cutter is further away.
        BeyondNode = "beyond_node",
    }
}
