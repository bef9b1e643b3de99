//! Types shared by idlecut's kernel programs and its user-space agent.
//!
//! Everything here is `#[repr(C)]`, laid out without implicit padding (the unit tests pin sizes
//! and offsets), and plain old data: the kernel writes these bytes and the agent reads them.
//! The agent enables the `user` feature to get `aya::Pod` for them.
#![no_std]

/// Name of the ring buffer that carries [`RawEvent`]s to user space.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-socket state map ([`ConnectionState`] keyed by the kernel socket address).
pub const CONNECTIONS_MAP: &str = "CONNECTIONS";
/// Name of the map of connections found by the start-up scan, keyed by socket cookie, that the
/// kernel programs adopt into [`CONNECTIONS_MAP`] the first time they meet the socket.
pub const SEEDS_MAP: &str = "SEEDS";
/// Name of the one-entry `u32` array that is non-zero while [`SEEDS_MAP`] may hold entries
/// (so that programs skip the cookie lookup the rest of the time).
pub const SEEDING_MAP: &str = "SEEDING";
/// Name of the map of CLOSE events the ring buffer had no room for, by socket: user space
/// drains it on its timer, so that a full ring buffer delays an end instead of losing it.
pub const UNREPORTED_MAP: &str = "UNREPORTED";
/// Name of the per-CPU `u64` counters indexed by [`counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the global holding the port bitmap ([`PortBitmap`]).
pub const PORTS_GLOBAL: &str = "MAIL_PORTS";
/// Name of the global holding the lowest and highest watched port ([`PortRange`]): a socket
/// with both ports outside it is not watched, without a look at the bitmap.
pub const PORT_RANGE_GLOBAL: &str = "PORT_RANGE";
/// Name of the global holding how many bytes may wait in the ring buffer before a program
/// wakes the reader (below that, the agent drains the buffer on its timer).
pub const WAKEUP_BYTES_GLOBAL: &str = "WAKEUP_BYTES";
/// Name of the global holding the minimum idle gap, in nanoseconds, that earns an event.
pub const MIN_IDLE_GAP_GLOBAL: &str = "MIN_IDLE_GAP_NS";
/// Name of the global holding [`SkbOffsets`] (from BTF) for the ICMP error programs.
pub const SKB_OFFSETS_GLOBAL: &str = "SKB_OFFSETS";
/// Name of the global holding [`SockOffsets`] (from BTF): network namespace and cookie.
pub const SOCK_OFFSETS_GLOBAL: &str = "SOCK_OFFSETS";
/// Name of the global holding [`SocketClocks`] (from BTF and the kernel's tick): what lets the
/// BTF programs settle most segments and sends of a mail connection from the socket's own
/// clocks, without its state.
pub const SOCKET_CLOCKS_GLOBAL: &str = "SOCKET_CLOCKS";

/// Name of the global (`u8`) that is 1 when the kernel's tcp_retransmit_skb tracepoint has its
/// `err` argument (newer kernels, where it also fires for a retransmission the kernel could not
/// send, such as one refused while the original still waits in a queue of this host): the BTF
/// program then reports only those that left. 0 leaves the argument unread (the verifier
/// refuses an argument a tracepoint does not have, and skips code a frozen global rules out).
pub const RETRANSMIT_ERR_GLOBAL: &str = "RETRANSMIT_HAS_ERR";

/// Every map the agent opens or sizes, by name: the built object must have exactly these (plus
/// aya-log's), which a test of the agent checks against the embedded object.
pub const MAPS: [&str; 6] = [
    EVENTS_MAP,
    CONNECTIONS_MAP,
    SEEDS_MAP,
    SEEDING_MAP,
    COUNTERS_MAP,
    UNREPORTED_MAP,
];

/// Every global the agent sets at load time, by name: the built object must have exactly these
/// (plus aya-log's level), which a test of the agent checks against the embedded object.
pub const GLOBALS: [&str; 16] = [
    PORTS_GLOBAL,
    PORT_RANGE_GLOBAL,
    WAKEUP_BYTES_GLOBAL,
    MIN_IDLE_GAP_GLOBAL,
    SKB_OFFSETS_GLOBAL,
    SOCK_OFFSETS_GLOBAL,
    SOCKET_CLOCKS_GLOBAL,
    RETRANSMIT_ERR_GLOBAL,
    offsets_global::INET_SOCK_SET_STATE,
    offsets_global::TCP_PROBE,
    offsets_global::TCP_RECEIVE_RESET,
    offsets_global::TCP_SEND_RESET,
    offsets_global::TCP_RETRANSMIT_SKB,
    offsets_global::INET_SK_ERROR_REPORT,
    offsets_global::SOCK_SEND_LENGTH,
    offsets_global::TCP_DESTROY_SOCK,
];

/// Defaults of what the agent sizes and sets at load time; the programs' placeholders use the
/// same values, so an object loaded without overrides behaves like the agent's defaults.
pub mod defaults {
    /// `--ring-buffer-size`.
    pub const RING_BUFFER_BYTES: u32 = 1 << 20;
    /// `--max-connections`.
    pub const MAX_CONNECTIONS: u32 = 65_536;
    /// `--min-idle-gap`, in nanoseconds.
    pub const MIN_IDLE_GAP_NS: u64 = 10_000_000_000;
    /// CLOSE events that may wait in the UNREPORTED map for user space.
    pub const UNREPORTED_ENDS: u32 = 4096;
}

/// Address families as the kernel spells them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// TCP states (include/net/tcp_states.h); stable kernel ABI.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;

    /// States a connection passes through once it has been established.
    pub const fn was_established(state: u8) -> bool {
        matches!(
            state,
            ESTABLISHED | FIN_WAIT1 | FIN_WAIT2 | CLOSE_WAIT | CLOSING | LAST_ACK
        )
    }

    /// Who sent the first FIN, from the state a connection left for CLOSE: this host went
    /// through FIN_WAIT1 (and on to FIN_WAIT2 or CLOSING, where a simultaneous close lands) when
    /// it closed first, the peer's FIN put it in CLOSE_WAIT then LAST_ACK. A flag of
    /// [`super::event_flags`], 0 when nobody had (a reset or an abort from ESTABLISHED).
    pub const fn first_fin(old_state: u8) -> u8 {
        match old_state {
            FIN_WAIT1 | FIN_WAIT2 | CLOSING => super::event_flags::LOCAL_CLOSED_FIRST,
            CLOSE_WAIT | LAST_ACK => super::event_flags::REMOTE_CLOSED_FIRST,
            _ => 0,
        }
    }
}

/// What a [`RawEvent`] reports. Plain `u8` constants rather than an enum: the bytes come from
/// the kernel, and user space must reject an unknown value instead of trusting it.
pub mod event_kind {
    /// The connection reached ESTABLISHED. Addresses, ports and `old_state` (SYN_SENT when this
    /// host connected, SYN_RECV when it accepted) are set.
    pub const OPEN: u8 = 1;
    /// The connection reached CLOSE (or, `old_state` 0, its socket was destroyed while the
    /// programs still held state for it: the kernel skipped the program run on its CLOSE).
    /// Addresses, ports, `old_state`, `flags`, `count`
    /// (retransmissions), `value_ns` (kernel open time, 0 if unknown) and `aux_ns` (how long
    /// the connection had been stalled, retransmitting without hearing from the peer; 0 if it
    /// was not) are set.
    pub const CLOSE: u8 = 2;
    /// A valid RST arrived for the socket (tcp:tcp_receive_reset). `peer_ttl` and `reset_ttl`
    /// tell who sent it, when the RST came through tcp:tcp_probe (an established socket).
    pub const RESET_RECEIVED: u8 = 3;
    /// The socket sent a RST (tcp:tcp_send_reset).
    pub const RESET_SENT: u8 = 4;
    /// A segment of the socket was retransmitted: it left (an attempt the kernel could not send,
    /// where its tracepoint says so, is no retransmission on the path and is not reported; the
    /// kernel does not count it in RetransSegs either). `count` is the total so far, `value_ns` how
    /// long the current stall has lasted (0 for its first retransmission), `error` the
    /// socket's soft error (`sk_err_soft`, a positive errno an ICMP error left; 0 for none).
    /// `aux_ns` is the segment's size: its payload bytes in the high 32 bits, the socket's MSS
    /// (`mss_cache`) in the low 32, 0 when BTF could not tell where they are; `flags` has
    /// [`super::event_flags::PEER_SACKED`] when the peer had acknowledged later data.
    pub const RETRANSMIT: u8 = 5;
    /// The kernel reported an error on a socket (sock:inet_sk_error_report). That tracepoint
    /// has no socket pointer: `socket` is 0 and addresses, ports and `error` identify it.
    pub const ERROR_REPORT: u8 = 6;
    /// Traffic resumed after neither side had sent anything for at least the minimum idle gap.
    /// `value_ns` is the length of the silence; `flags` says which side spoke first
    /// ([`super::event_flags::LOCAL_SPOKE_FIRST`]).
    pub const IDLE_GAP_END: u8 = 7;
    /// The peer was heard from after a gap that the local side ended: the path let the
    /// connection through. `value_ns` is the gap, `aux_ns` how long the answer took.
    pub const GAP_ANSWERED: u8 = 8;
    /// A segment arrived from the peer after retransmissions: the stall is over.
    /// `value_ns` is how long it lasted, from the first retransmission.
    pub const STALL_RECOVERED: u8 = 9;
    /// An ICMP error arrived for the connection (fentry on tcp_v4_err / tcp_v6_err). No socket
    /// pointer: addresses and ports identify it; `error` is `type << 8 | code`.
    pub const ICMP_ERROR: u8 = 10;
    /// A connection found by the start-up scan met a program: its seeded state now lives under
    /// `socket`. `value_ns` is its socket cookie.
    pub const ADOPTED: u8 = 11;
}

/// A RETRANSMIT's `aux_ns`: the segment's payload bytes in the high 32 bits, the socket's MSS
/// in the low 32 (0: the program could not read them). Packed and unpacked here only.
pub mod segment_size {
    pub const fn pack(bytes: u32, mss: u32) -> u64 {
        ((bytes as u64) << 32) | mss as u64
    }

    /// (payload bytes, MSS); None when the MSS is 0 (not read).
    pub const fn unpack(aux_ns: u64) -> Option<(u32, u32)> {
        let mss = aux_ns as u32;
        if mss == 0 {
            None
        } else {
            Some(((aux_ns >> 32) as u32, mss))
        }
    }
}

/// Bits of [`RawEvent::flags`].
pub mod event_flags {
    /// CLOSE: the kernel held no state for this socket (opened before the agent started, or
    /// evicted from the LRU map under pressure).
    pub const NO_STATE: u8 = 1 << 0;
    /// CLOSE: the local side sent its FIN first (went through FIN_WAIT1).
    pub const LOCAL_CLOSED_FIRST: u8 = 1 << 1;
    /// CLOSE: the peer sent its FIN first (went through CLOSE_WAIT).
    pub const REMOTE_CLOSED_FIRST: u8 = 1 << 2;
    /// IDLE_GAP_END: this host sent first after the gap (else the peer did).
    pub const LOCAL_SPOKE_FIRST: u8 = 1 << 3;
    /// CLOSE: the local side had ended an idle gap and the peer had not answered since.
    pub const AWAITING_ANSWER: u8 = 1 << 4;
    /// RETRANSMIT: the peer had selectively acknowledged data sent after the retransmitted
    /// segment (`sacked_out` > 0): segments still reach it while this one does not.
    pub const PEER_SACKED: u8 = 1 << 5;
}

/// Indexes of the per-CPU counters in [`COUNTERS_MAP`].
pub mod counter {
    /// An event could not be reserved in the ring buffer (user space too slow): it is lost.
    pub const RINGBUF_FULL: u32 = 0;
    /// A connection closed on a watched port and the kernel had no state for it.
    pub const CLOSE_WITHOUT_STATE: u32 = 1;
    /// Inserting a connection's state failed (should not happen with an LRU map).
    pub const STATE_INSERT_FAILED: u32 = 2;
    /// Number of counters.
    pub const COUNT: u32 = 3;
}

/// One fact from the kernel. 88 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, in nanoseconds.
    pub timestamp_ns: u64,
    /// Kernel address of the socket: the connection's identity while it lives.
    pub socket: u64,
    /// Kind-specific duration or time, see [`event_kind`].
    pub value_ns: u64,
    /// A second kind-specific duration, see [`event_kind`].
    pub aux_ns: u64,
    /// Local address as IPv6 (IPv4 is stored v4-mapped, as the kernel's tracepoints do).
    pub local_addr: [u8; 16],
    /// Remote address as IPv6 (IPv4 is stored v4-mapped).
    pub remote_addr: [u8; 16],
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
    /// Socket family (AF_INET or AF_INET6; an AF_INET6 socket may carry v4-mapped addresses).
    pub family: u16,
    /// One of [`event_kind`].
    pub kind: u8,
    /// CLOSE: the state the connection left.
    pub old_state: u8,
    /// Bits of [`event_flags`].
    pub flags: u8,
    pub _pad: [u8; 1],
    /// ERROR_REPORT: positive errno. ICMP_ERROR: `type << 8 | code`. RETRANSMIT: the soft
    /// error, a positive errno.
    pub error: u16,
    /// CLOSE, RETRANSMIT: retransmissions seen on the socket.
    pub count: u32,
    /// OPEN, CLOSE, ADOPTED: inode of the socket's network namespace (0 when unknown).
    pub netns: u32,
    /// RESET_RECEIVED: the IP TTL (IPv6 hop limit) of the peer's last segment before the RST,
    /// and the RST's own; 0 when not seen. A RST the peer sent arrives with the same TTL as its
    /// other segments; one forged by a middlebox, with another.
    pub peer_ttl: u8,
    pub reset_ttl: u8,
    pub _reserved: u16,
}

impl RawEvent {
    pub const fn zeroed() -> Self {
        Self {
            timestamp_ns: 0,
            socket: 0,
            value_ns: 0,
            aux_ns: 0,
            local_addr: [0; 16],
            remote_addr: [0; 16],
            local_port: 0,
            remote_port: 0,
            family: 0,
            kind: 0,
            old_state: 0,
            flags: 0,
            _pad: [0; 1],
            error: 0,
            count: 0,
            netns: 0,
            peer_ttl: 0,
            reset_ttl: 0,
            _reserved: 0,
        }
    }
}

/// What the kernel keeps per tracked connection, in the LRU map keyed by socket address.
/// Kept small on purpose (40 bytes): identity and addresses live in user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionState {
    /// When the connection reached ESTABLISHED (`bpf_ktime_get_ns()`).
    pub opened_ns: u64,
    /// When the last segment from the peer arrived.
    pub last_received_ns: u64,
    /// When this host last sent data (or retransmitted).
    pub last_sent_ns: u64,
    /// First retransmission since the peer was last heard from; 0 when not stalled.
    pub stall_started_ns: u64,
    pub retransmits: u32,
    /// Bits of [`event_flags`] gathered along the way (who closed first, awaiting an answer).
    pub flags: u8,
    /// IP TTL (IPv6 hop limit) of the last segment from the peer, 0 until one is seen.
    pub peer_ttl: u8,
    /// IP TTL of a RST received on the connection, 0 until one arrives.
    pub reset_ttl: u8,
    pub _pad: [u8; 1],
}

/// Where the fields of `struct sock` that the programs read sit, from the kernel's BTF. The
/// BTF tracepoint programs read the socket through these; every program reads the network
/// namespace (`sk->__sk_common.skc_net.net`, then `net->ns.inum`) and the cookie
/// (`sk->__sk_common.skc_cookie`) to adopt scanned connections. `valid` is 0 when BTF could not
/// tell (the programs then report namespace 0, do not adopt scanned connections, and the agent
/// uses the classic tracepoints).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOffsets {
    pub net: u16,
    pub ns_inum: u16,
    pub cookie: u16,
    pub valid: u16,
    /// `skc_portpair`: the remote port (network order) then the local port (host order), one
    /// 32-bit load for both.
    pub portpair: u16,
    /// `skc_family`.
    pub family: u16,
    /// `sk_protocol` (16 bits).
    pub protocol: u16,
    /// `sk_err` (an `int`, positive errno).
    pub err: u16,
    /// `skc_rcv_saddr` and `skc_daddr`: IPv4 local and remote addresses.
    pub v4_local: u16,
    pub v4_remote: u16,
    /// `skc_v6_rcv_saddr` and `skc_v6_daddr`: IPv6 local and remote addresses.
    pub v6_local: u16,
    pub v6_remote: u16,
    /// `inet_sock.inet_sport` (network order): the local port, still set after the kernel
    /// unbinds a closed socket (which zeroes `skc_num`).
    pub inet_sport: u16,
    /// `sk_err_soft` (an `int`, positive errno): what an ICMP error left on an established
    /// connection (RFC 1122 soft errors: net and host unreachable, administratively
    /// prohibited...), which TCP keeps retransmitting through. Read at each retransmission,
    /// so ICMP shows with no program on `tcp_v4_err` (fentry, refused on some kernels).
    /// This and the two below are 0 where the kernel's BTF lacks them (never their offset):
    /// the programs then leave out the fact they serve.
    pub err_soft: u16,
    /// `tcp_sock.mss_cache` (u32): the MSS the socket sends with now, which the kernel lowers
    /// when MTU probing finds a black hole.
    pub mss_cache: u16,
    /// `tcp_sock.sacked_out` (u32): segments the peer acknowledged selectively, beyond a hole.
    pub sacked_out: u16,
}

impl SockOffsets {
    /// Nothing known: what the programs see until the agent fills the global in.
    pub const fn unknown() -> Self {
        Self {
            net: 0,
            ns_inum: 0,
            cookie: 0,
            valid: 0,
            portpair: 0,
            family: 0,
            protocol: 0,
            err: 0,
            v4_local: 0,
            v4_remote: 0,
            v6_local: 0,
            v6_remote: 0,
            inet_sport: 0,
            err_soft: 0,
            mss_cache: 0,
            sacked_out: 0,
        }
    }
}

/// Offsets of the `struct sk_buff` fields the programs read, from the kernel's BTF: the ICMP
/// error programs, and tcp_probe for each received segment's TTL and RST flag. All 0 when BTF
/// could not tell (`data` is never at offset 0 in a real `sk_buff`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkbOffsets {
    pub head: u16,
    pub data: u16,
    pub transport_header: u16,
    pub network_header: u16,
    /// `len` (u32): the bytes of data it holds (a retransmitted segment's payload); 0 where
    /// the kernel's BTF lacks it (never its offset): no PMTU facts then.
    pub len: u16,
}

impl SkbOffsets {
    pub const fn unknown() -> Self {
        Self {
            head: 0,
            data: 0,
            transport_header: 0,
            network_header: 0,
            len: 0,
        }
    }

    pub const fn known(&self) -> bool {
        self.data != 0
    }
}

/// What lets a BTF program settle a segment or a send of a mail connection from the socket's
/// own clocks, without looking its state up (a hash lookup and a clock read cost most of a
/// program's run). TCP keeps, in jiffies, when the socket last received data
/// (`icsk_ack.lrcvtime`) and an acknowledgement (`rcv_tstamp`), and whether it is recovering
/// from a loss: its congestion state (`icsk_ca_state`, not TCP_CA_Open, as after an RTO or a
/// fast retransmit), retransmitted segments not yet acknowledged (`retrans_out`), a tail loss
/// probe in flight (`tlp_high_seq`: a probe retransmits without changing the congestion state
/// or setting `retrans_stamp`, and its acknowledgement must end the stall it started). An event
/// is quiet, and ends at that test, when the peer was heard from less than the minimum idle
/// gap ago (so no gap ends, and no answer is awaited: an answer ends a gap of the peer's), TCP
/// is not recovering from a loss (no stall ends), it is not a RST nor a connection's first
/// segment (whose TTL the state keeps), and the peer was last heard from in the same refresh
/// period as now. So the first event of each
/// period takes the full path, and the state's idle clocks are at most one period (under a
/// second) old for the connection view; the programs correct the state's clock of the peer
/// from the socket's before they measure a gap. `tick_ns` is 0 when the agent could not fill
/// this in: every event then takes the full path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketClocks {
    /// Nanoseconds per jiffy (the resolution of CLOCK_MONOTONIC_COARSE); 0: unknown.
    pub tick_ns: u64,
    /// The minimum idle gap in whole jiffies, less one: never longer than the gap.
    pub min_gap_jiffies: u32,
    /// The refresh period is `1 << refresh_shift` jiffies.
    pub refresh_shift: u32,
    /// In `struct tcp_sock`: u32s of jiffies (`rcv_tstamp`, `lrcvtime`), then what tells a
    /// loss recovery, and `segs_in`, a count of segments received.
    pub rcv_tstamp: u16,
    /// `inet_conn.icsk_ack.lrcvtime`.
    pub lrcvtime: u16,
    /// The byte whose low [`SocketClocks::CA_STATE_BITS`] bits are `inet_conn.icsk_ca_state`
    /// (a bitfield, the first of its byte: the low bits on this little-endian target).
    pub ca_state: u16,
    /// Segments (u32s).
    pub retrans_out: u16,
    /// A sequence number, 0 when no tail loss probe is in flight.
    pub tlp_high_seq: u16,
    pub segs_in: u16,
    /// Of a received segment's TCP flags in `struct sk_buff`: `cb` plus the offset of
    /// `tcp_skb_cb.tcp_flags`, which TCP fills in before tcp_probe fires.
    pub skb_tcp_flags: u16,
    pub _pad: u16,
}

impl SocketClocks {
    pub const fn unknown() -> Self {
        Self {
            tick_ns: 0,
            min_gap_jiffies: 0,
            refresh_shift: 0,
            rcv_tstamp: 0,
            lrcvtime: 0,
            ca_state: 0,
            retrans_out: 0,
            tlp_high_seq: 0,
            segs_in: 0,
            skb_tcp_flags: 0,
            _pad: 0,
        }
    }

    /// Width of `icsk_ca_state` (`u8 icsk_ca_state:5`); TCP_CA_Open, its normal state, is 0.
    pub const CA_STATE_BITS: u32 = 5;

    pub const fn known(&self) -> bool {
        self.tick_ns != 0
    }
}

/// Where the fields the programs read sit in a tracepoint's record, read from tracefs at
/// start-up so that one binary works across kernel versions. [`FieldOffsets::ABSENT`] marks a
/// field this kernel's tracepoint does not have.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldOffsets {
    pub skaddr: u16,
    /// Local port, host order (`sport`), or the port inside a `sockaddr` (`saddr`, big endian)
    /// when [`FieldOffsets::ports_in_sockaddr`] is set.
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u16,
    pub protocol: u16,
    pub local_addr_v6: u16,
    pub remote_addr_v6: u16,
    pub old_state: u16,
    pub new_state: u16,
    pub error: u16,
    /// 1 when the ports are the network-order `sin_port` of `sockaddr` fields.
    pub ports_in_sockaddr: u16,
    /// sock:sock_send_length's return value (bytes sent, or a negative errno).
    pub ret: u16,
    /// tcp:tcp_probe's `skbaddr`: the segment received.
    pub skbaddr: u16,
}

impl FieldOffsets {
    pub const ABSENT: u16 = u16::MAX;

    pub const fn absent() -> Self {
        Self {
            skaddr: Self::ABSENT,
            local_port: Self::ABSENT,
            remote_port: Self::ABSENT,
            family: Self::ABSENT,
            protocol: Self::ABSENT,
            local_addr_v6: Self::ABSENT,
            remote_addr_v6: Self::ABSENT,
            old_state: Self::ABSENT,
            new_state: Self::ABSENT,
            error: Self::ABSENT,
            ports_in_sockaddr: 0,
            ret: Self::ABSENT,
            skbaddr: Self::ABSENT,
        }
    }
}

/// The global that carries each program's [`FieldOffsets`]; one per program.
pub mod offsets_global {
    pub const INET_SOCK_SET_STATE: &str = "OFFSETS_INET_SOCK_SET_STATE";
    pub const TCP_PROBE: &str = "OFFSETS_TCP_PROBE";
    pub const TCP_RECEIVE_RESET: &str = "OFFSETS_TCP_RECEIVE_RESET";
    pub const TCP_SEND_RESET: &str = "OFFSETS_TCP_SEND_RESET";
    pub const TCP_RETRANSMIT_SKB: &str = "OFFSETS_TCP_RETRANSMIT_SKB";
    pub const INET_SK_ERROR_REPORT: &str = "OFFSETS_INET_SK_ERROR_REPORT";
    pub const SOCK_SEND_LENGTH: &str = "OFFSETS_SOCK_SEND_LENGTH";
    pub const TCP_DESTROY_SOCK: &str = "OFFSETS_TCP_DESTROY_SOCK";
}

/// A bitmap of the watched ports: bit `p % 64` of word `p / 64`.
pub type PortBitmap = [u64; 1024];

/// The lowest and the highest watched port. Most traffic that is not mail runs between ports
/// above the highest (ephemeral ports, 5000 and up...): two comparisons tell, and the 8 KiB
/// bitmap stays out of the cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub lowest: u16,
    pub highest: u16,
}

impl PortRange {
    /// Every port: what the programs see until the agent sets it.
    pub const fn all() -> Self {
        Self {
            lowest: 0,
            highest: u16::MAX,
        }
    }

    pub const fn contains(&self, port: u16) -> bool {
        port >= self.lowest && port <= self.highest
    }
}

// The layouts both sides rely on, checked wherever this crate is compiled: by the BPF build of
// the programs as much as by the agent's (the unit tests below pin the field offsets too).
const _: () = {
    assert!(core::mem::size_of::<RawEvent>() == 88);
    assert!(core::mem::align_of::<RawEvent>() == 8);
    assert!(core::mem::size_of::<ConnectionState>() == 40);
    assert!(core::mem::size_of::<FieldOffsets>() == 26);
    assert!(core::mem::size_of::<SockOffsets>() == 32);
    assert!(core::mem::size_of::<SkbOffsets>() == 10);
    assert!(core::mem::size_of::<SocketClocks>() == 32);
    assert!(core::mem::size_of::<PortBitmap>() == 8192);
    assert!(core::mem::size_of::<PortRange>() == 4);
};

#[cfg(feature = "user")]
mod user {
    use super::{
        ConnectionState, FieldOffsets, PortRange, RawEvent, SkbOffsets, SockOffsets, SocketClocks,
    };

    // SAFETY: `#[repr(C)]`, only integer fields and arrays, no implicit padding (pinned by the
    // layout tests below), so every bit pattern is a valid value.
    unsafe impl aya::Pod for RawEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnectionState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FieldOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SkbOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PortRange {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SocketClocks {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_retransmitted_segments_size_round_trips() {
        use super::segment_size::{pack, unpack};
        assert_eq!(unpack(pack(1448, 1448)), Some((1448, 1448)));
        assert_eq!(unpack(pack(u32::MAX, 1)), Some((u32::MAX, 1)));
        assert_eq!(unpack(pack(200, 0)), None, "an MSS of 0 was not read");
        assert_eq!(unpack(0), None);
    }

    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    #[test]
    fn raw_event_layout_is_pinned() {
        assert_eq!(size_of::<RawEvent>(), 88);
        assert_eq!(align_of::<RawEvent>(), 8);
        assert_eq!(offset_of!(RawEvent, local_addr), 32);
        assert_eq!(offset_of!(RawEvent, remote_addr), 48);
        assert_eq!(offset_of!(RawEvent, local_port), 64);
        assert_eq!(offset_of!(RawEvent, kind), 70);
        assert_eq!(offset_of!(RawEvent, error), 74);
        assert_eq!(offset_of!(RawEvent, count), 76);
        assert_eq!(offset_of!(RawEvent, netns), 80);
        // No implicit padding: the fields add up to the size.
        assert_eq!(offset_of!(RawEvent, peer_ttl), 84);
        let fields = 8 * 4 + 16 * 2 + 2 * 3 + 4 + 2 + 4 * 2 + 2 + 2; // u64s, addresses, u16s, u8s, error, u32s, TTLs, reserved
        assert_eq!(fields, size_of::<RawEvent>());
    }

    #[test]
    fn connection_state_layout_is_pinned() {
        assert_eq!(size_of::<ConnectionState>(), 40);
        assert_eq!(offset_of!(ConnectionState, retransmits), 32);
        assert_eq!(offset_of!(ConnectionState, flags), 36);
        assert_eq!(offset_of!(ConnectionState, peer_ttl), 37);
        assert_eq!(offset_of!(ConnectionState, reset_ttl), 38);
    }

    #[test]
    fn skb_and_sock_offsets_layouts_are_pinned() {
        assert_eq!(size_of::<SkbOffsets>(), 10);
        assert_eq!(size_of::<SockOffsets>(), 32);
        assert_eq!(size_of::<SocketClocks>(), 32);
        assert_eq!(offset_of!(SocketClocks, rcv_tstamp), 16);
        assert_eq!(offset_of!(SocketClocks, _pad), 30);
    }

    #[test]
    fn field_offsets_layout_is_pinned() {
        assert_eq!(size_of::<FieldOffsets>(), 26);
        assert_eq!(align_of::<FieldOffsets>(), 2);
    }

    #[test]
    fn established_family_of_states() {
        assert!(tcp_state::was_established(tcp_state::LAST_ACK));
        assert!(!tcp_state::was_established(tcp_state::SYN_SENT));
        assert!(!tcp_state::was_established(tcp_state::LISTEN));
    }

    #[test]
    fn the_state_left_for_close_tells_who_sent_the_first_fin() {
        use super::event_flags::{LOCAL_CLOSED_FIRST, REMOTE_CLOSED_FIRST};
        for local in [
            tcp_state::FIN_WAIT1,
            tcp_state::FIN_WAIT2,
            tcp_state::CLOSING,
        ] {
            assert_eq!(tcp_state::first_fin(local), LOCAL_CLOSED_FIRST);
        }
        for remote in [tcp_state::CLOSE_WAIT, tcp_state::LAST_ACK] {
            assert_eq!(tcp_state::first_fin(remote), REMOTE_CLOSED_FIRST);
        }
        assert_eq!(tcp_state::first_fin(tcp_state::ESTABLISHED), 0);
        assert_eq!(tcp_state::first_fin(0), 0);
    }
}
