//! The facts the kernel reports and the requests it takes, as typed values: what `probes`
//! decodes the ring buffer into and the connection model consumes, and the seeds the model
//! asks `probes` to plant. Nothing here knows the kernel's byte layouts.

use std::net::SocketAddr;

/// Kernel time: CLOCK_MONOTONIC nanoseconds, as `bpf_ktime_get_ns()` gives it.
pub type Nanos = u64;

/// Local and remote ends of a connection. IPv4 (including v4-mapped IPv6) is always `V4`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoints {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Open {
        at: Nanos,
        socket: u64,
        endpoints: Endpoints,
        /// Inode of the network namespace, 0 when unknown.
        netns: u32,
        /// Which side sent the SYN, when the kernel said (`Local`: this host connected, it is
        /// the client), so that the role does not depend on which port happens to be watched.
        initiated_by: Option<Side>,
    },
    Close {
        at: Nanos,
        socket: u64,
        endpoints: Endpoints,
        netns: u32,
        /// The TCP state the connection left for CLOSE.
        old_state: TcpState,
        /// When the kernel saw it established, if it had state for it.
        opened_at: Option<Nanos>,
        retransmits: u32,
        /// Who sent the first FIN, if anyone did.
        first_fin: Option<Side>,
        /// How long it had been retransmitting without hearing from the peer, if it was.
        stalled_for: Option<Nanos>,
        /// This host had ended an idle gap and the peer had not answered since.
        awaiting_answer: bool,
    },
    ResetReceived {
        at: Nanos,
        socket: u64,
        ttls: ResetTtls,
    },
    ResetSent {
        at: Nanos,
        socket: u64,
    },
    Retransmit {
        at: Nanos,
        socket: u64,
        /// How long the stall this retransmission belongs to has lasted.
        stalled_for: Nanos,
        /// The socket's soft error when it retransmitted: what an ICMP error left on it since
        /// the peer last acknowledged anything (a positive errno), if one did.
        soft_error: Option<u16>,
        /// The segment's size against the socket's MSS, where the kernel's BTF told where to
        /// read them.
        segment: Option<RetransmittedSegment>,
    },
    ErrorReport {
        at: Nanos,
        endpoints: Endpoints,
        errno: u16,
    },
    IdleGapEnd {
        at: Nanos,
        socket: u64,
        gap: Nanos,
        /// Who sent first after the silence.
        first: Side,
    },
    GapAnswered {
        at: Nanos,
        socket: u64,
        /// From this host's first segment after the gap to the peer's answer.
        delay: Nanos,
    },
    StallRecovered {
        at: Nanos,
        socket: u64,
        stalled_for: Nanos,
    },
    IcmpError {
        at: Nanos,
        endpoints: Endpoints,
        icmp_type: u8,
        code: u8,
    },
    /// The scanned connection with this cookie is the kernel socket `socket`.
    Adopted {
        at: Nanos,
        socket: u64,
        cookie: u64,
    },
}

/// What a retransmission says of the path's MTU: a segment as large as the MSS allows, lost
/// again and again while the peer acknowledges later (smaller) data, is too large for the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetransmittedSegment {
    /// Payload bytes of the retransmitted segment.
    pub bytes: u32,
    /// The MSS the socket sent with at that moment (the kernel lowers it when MTU probing
    /// finds a black hole).
    pub mss: u32,
    /// The peer had selectively acknowledged data sent after this segment.
    pub peer_sacked: bool,
}

/// A TCP state (the kernel's `include/net/tcp_states.h`), typed once, where `idlecut-kernel`
/// reads it: nothing above that crate sees the kernel's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    /// A number this build does not know (or none was read).
    Unknown,
}

impl TcpState {
    /// States a connection passes through once it has been established.
    pub const fn was_established(self) -> bool {
        matches!(
            self,
            Self::Established
                | Self::FinWait1
                | Self::FinWait2
                | Self::CloseWait
                | Self::Closing
                | Self::LastAck
        )
    }
}

/// When a connection last received a segment and last sent data (kernel time), as the kernel
/// programs keep them.
pub type IdleClocks = (Nanos, Nanos);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Local,
    Remote,
}

/// What the kernel programs still hold for a followed socket, as a scan's reconciliation asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelSocket {
    /// No state: the socket closed (its end was reported, or lost), or its state was evicted.
    Gone,
    /// Followed; stalled (retransmitting unheard) since then, if it is.
    Followed { stalled_since: Option<Nanos> },
}

/// A connection the scan found that the kernel programs should adopt: `probes` plants it as
/// their state for the socket with this cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seed {
    pub cookie: u64,
    /// Kernel time of the last segment received and of the last data sent.
    pub last_received: Nanos,
    pub last_sent: Nanos,
    /// Who had sent the first FIN when the scan saw it, if anyone had.
    pub first_fin: Option<Side>,
}

/// The IP TTLs (IPv6 hop limits) a received RST is judged by: the peer's last segment's and the
/// RST's own, `None` when not seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetTtls {
    pub peer: Option<u8>,
    pub reset: Option<u8>,
}
