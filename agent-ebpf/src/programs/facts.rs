//! What the programs report, whatever hook they sit on: each function takes the values a hook
//! adapter ([`super::btf`] or [`super::tracepoint`]) has already read and filtered on the
//! ports, updates the connection's state and emits the facts. Both hook kinds therefore report
//! exactly the same events.

use aya_ebpf::bindings::BPF_ANY;
use idlecut_ebpf::{
    ConnectionState, RawEvent, counter, event_flags, event_kind, segment_size, tcp_state,
};

use super::{
    CONNECTIONS, MIN_IDLE_GAP_NS, SKB_OFFSETS, SOCK_OFFSETS, count, emit, emit_end, event_for,
    global, kernel_read, now_ns, state_of,
};

/// A TCP state change on a watched port: connections open (-> ESTABLISHED) and end (-> CLOSE).
/// Who sent the first FIN is told by the state a connection leaves for CLOSE
/// ([`tcp_state::first_fin`]), so the states in between cost no lookup. `whereabouts` fills
/// in the family, the addresses and the network namespace, only for the events that carry
/// them (each hook kind reads them its own way).
#[inline(always)]
pub(super) fn state_change(
    socket: u64,
    (local_port, remote_port): (u16, u16),
    old_state: u8,
    new_state: u8,
    whereabouts: impl FnOnce(&mut RawEvent),
) {
    match new_state {
        tcp_state::ESTABLISHED => {
            let now = now_ns();
            let state = ConnectionState {
                opened_ns: now,
                last_received_ns: now,
                last_sent_ns: now,
                stall_started_ns: 0,
                retransmits: 0,
                flags: 0,
                peer_ttl: 0,
                reset_ttl: 0,
                _pad: [0; 1],
            };
            if CONNECTIONS
                .insert(&socket, &state, u64::from(BPF_ANY))
                .is_err()
            {
                // Counted, and reported by user space as
                // idlecut_kernel_state_insert_failures_total; a log statement here would cost
                // this program thousands of verified instructions.
                count(counter::STATE_INSERT_FAILED);
            }
            let mut event = event_for(event_kind::OPEN, now, socket, local_port, remote_port);
            // SYN_SENT: this host connected; SYN_RECV: it accepted.
            event.old_state = old_state;
            whereabouts(&mut event);
            emit(&event);
        }
        tcp_state::CLOSE if tcp_state::was_established(old_state) => {
            close(socket, (local_port, remote_port), old_state, whereabouts);
        }
        _ => {}
    }
}

/// Reports a connection's end with what its state says, and drops the state.
#[inline(always)]
fn close(
    socket: u64,
    (local_port, remote_port): (u16, u16),
    old_state: u8,
    whereabouts: impl FnOnce(&mut RawEvent),
) {
    let now = now_ns();
    let mut event = event_for(event_kind::CLOSE, now, socket, local_port, remote_port);
    event.old_state = old_state;
    let state = state_of(socket);
    match state {
        Some(state) => {
            // SAFETY: pointer from a successful lookup, read once.
            let state = unsafe { *state };
            event.value_ns = state.opened_ns;
            event.count = state.retransmits;
            event.flags = state.flags;
            if state.stall_started_ns != 0 {
                event.aux_ns = now.saturating_sub(state.stall_started_ns);
            }
        }
        None => {
            event.flags = event_flags::NO_STATE;
            count(counter::CLOSE_WITHOUT_STATE);
        }
    }
    // A seed may know who sent the first FIN (the scan saw it); else the state left tells.
    if event.flags & (event_flags::LOCAL_CLOSED_FIRST | event_flags::REMOTE_CLOSED_FIRST) == 0 {
        event.flags |= tcp_state::first_fin(old_state);
    }
    whereabouts(&mut event);
    emit_end(&event);
    if state.is_some() {
        let _ = CONNECTIONS.remove(&socket);
    }
}

/// A socket of a watched connection is destroyed. Its state is normally gone by then (its
/// CLOSE removed it); if it is still there, the kernel skipped the program run on that CLOSE,
/// and this reports the end instead, with the state the connection left unknown (0).
#[inline(always)]
pub(super) fn destroyed(socket: u64, ports: (u16, u16), whereabouts: impl FnOnce(&mut RawEvent)) {
    if CONNECTIONS.get_ptr(&socket).is_some() {
        close(socket, ports, 0, whereabouts);
    }
}

/// Who a burst of traffic on a connection came from: this host (a send), or the peer (a
/// received segment, with what tcp_probe could read of it).
#[derive(Clone, Copy)]
pub(super) enum Side {
    Local,
    Remote(Segment),
}

/// What a received segment says beyond its arrival. `ttl` is 0 when it could not be read.
#[derive(Clone, Copy)]
pub(super) struct Segment {
    /// IP TTL, or IPv6 hop limit.
    pub ttl: u8,
    pub rst: bool,
}

impl Segment {
    /// A segment whose headers could not be read (no `sk_buff` layout from BTF).
    pub const UNREAD: Self = Self { ttl: 0, rst: false };
}

/// Reads the TTL and the RST flag of a segment tcp_probe saw: the IP header sits at
/// `head + network_header`, and `data` points at the TCP header (the IP layer pulled its own
/// before handing the segment to TCP). Two small reads, only for segments of watched
/// connections.
#[inline(always)]
pub(super) fn segment_at(head: *const u8, network_header: u16, data: *const u8) -> Segment {
    const TCP_FLAGS: u16 = 13;
    const RST: u8 = 0x04;
    // Version in the top nibble of byte 0; the IPv6 hop limit is byte 7, the IPv4 TTL byte 8.
    let ttl = match kernel_read::<[u8; 9]>(head, network_header) {
        Some(ip) if ip[0] >> 4 == 4 => ip[8],
        Some(ip) if ip[0] >> 4 == 6 => ip[7],
        _ => 0,
    };
    let rst = kernel_read::<u8>(data, TCP_FLAGS).is_some_and(|flags| flags & RST != 0);
    Segment { ttl, rst }
}

/// How long ago, by the socket's own clocks, the peer was last heard from, where a BTF program
/// read them: the events it settled without the state (see [`idlecut_ebpf::SocketClocks`])
/// left the state's clock of the peer behind, and this brings it up to date before a gap is
/// measured. The state's clock of this host's sends needs none: every data segment sent is
/// acknowledged, and the acknowledgement is heard (a send the peer never acknowledges is
/// retransmitted, which the state records). Not the socket's own `lsndtime` either: a send's
/// segments leave, and may be acknowledged, before sock_send_length reports it.
/// [`Heard::UNKNOWN`] where the clock was not read: a plain number rather than an `Option`,
/// whose unset payload the compiler may spill and the verifier then refuses to read.
#[derive(Clone, Copy)]
pub(super) struct Heard {
    pub received_ago_ns: u64,
}

impl Heard {
    /// A clock not read: so long ago that it changes nothing.
    pub const UNKNOWN: u64 = u64::MAX;
    /// Where the state's clocks are kept by every event (classic tracepoints).
    pub const NOTHING: Self = Self {
        received_ago_ns: Self::UNKNOWN,
    };
}

/// Traffic on a tracked connection: ends an idle gap if the connection was silent long enough,
/// answers a pending gap, ends a stall, and remembers the TTL the peer's segments arrive with.
/// A received RST does none of the middle two (it is no answer: the connection ends, and
/// tcp_receive_reset reports it with its TTL, kept here). `ports` are (0, 0) where the hook
/// does not have them (user space knows the connection by its socket).
#[inline(always)]
pub(super) fn activity(
    socket: u64,
    (local_port, remote_port): (u16, u16),
    side: Side,
    heard: Heard,
) {
    let Some(state) = state_of(socket) else {
        return;
    };
    let now = now_ns();
    // SAFETY: pointer from a successful lookup. Events of one socket are serialized by the
    // socket lock in the kernel paths these tracepoints sit on; a race at worst misreports
    // one gap.
    let state = unsafe { &mut *state };
    let received = now.saturating_sub(heard.received_ago_ns);
    if received > state.last_received_ns {
        state.last_received_ns = received;
    }
    let last = if state.last_received_ns > state.last_sent_ns {
        state.last_received_ns
    } else {
        state.last_sent_ns
    };
    let gap = now.saturating_sub(last);
    match side {
        Side::Remote(segment) if segment.rst => state.reset_ttl = segment.ttl,
        Side::Remote(segment) => {
            if segment.ttl != 0 {
                state.peer_ttl = segment.ttl;
            }
            state.last_received_ns = now;
            if state.flags & event_flags::AWAITING_ANSWER != 0 {
                state.flags &= !event_flags::AWAITING_ANSWER;
                let mut event = event_for(
                    event_kind::GAP_ANSWERED,
                    now,
                    socket,
                    local_port,
                    remote_port,
                );
                event.aux_ns = now.saturating_sub(state.last_sent_ns);
                emit(&event);
            }
            if state.stall_started_ns != 0 {
                let mut event = event_for(
                    event_kind::STALL_RECOVERED,
                    now,
                    socket,
                    local_port,
                    remote_port,
                );
                event.value_ns = now.saturating_sub(state.stall_started_ns);
                state.stall_started_ns = 0;
                emit(&event);
            }
        }
        Side::Local => state.last_sent_ns = now,
    }
    if gap >= global(&MIN_IDLE_GAP_NS) {
        let mut event = event_for(
            event_kind::IDLE_GAP_END,
            now,
            socket,
            local_port,
            remote_port,
        );
        event.value_ns = gap;
        if matches!(side, Side::Local) {
            event.flags = event_flags::LOCAL_SPOKE_FIRST;
            state.flags |= event_flags::AWAITING_ANSWER;
        }
        emit(&event);
    }
}

/// The TTL a connection's segment arrived with, kept in its state for a later RST to be judged
/// against; for segments that change nothing else (see `btf::Clocks::quiet`).
#[inline(always)]
pub(super) fn peer_ttl(socket: u64, segment: Segment) {
    if segment.ttl != 0
        && let Some(state) = state_of(socket)
    {
        // SAFETY: pointer from a successful lookup; one byte of this connection's state.
        unsafe { (*state).peer_ttl = segment.ttl };
    }
}

/// A RST received or sent (`kind`) on a socket of a watched connection.
#[inline(always)]
pub(super) fn reset(kind: u8, socket: u64, ports: (u16, u16)) {
    // Adopts a scanned connection first, so user space knows the socket.
    let state = state_of(socket);
    let mut event = event_for(kind, now_ns(), socket, ports.0, ports.1);
    if kind == event_kind::RESET_RECEIVED
        && let Some(state) = state
    {
        // SAFETY: pointer from a successful lookup, read once.
        let state = unsafe { *state };
        event.peer_ttl = state.peer_ttl;
        event.reset_ttl = state.reset_ttl;
    }
    emit(&event);
}

/// A segment of the socket was retransmitted (`skb`, 0 where the hook cannot say which). The
/// first one since the peer was last heard from starts a stall.
#[inline(always)]
pub(super) fn retransmit(socket: u64, ports: (u16, u16), skb: u64) {
    let now = now_ns();
    let mut event = event_for(event_kind::RETRANSMIT, now, socket, ports.0, ports.1);
    if let Some(state) = state_of(socket) {
        // SAFETY: pointer from a successful lookup.
        let state = unsafe { &mut *state };
        state.retransmits = state.retransmits.saturating_add(1);
        if state.stall_started_ns == 0 {
            state.stall_started_ns = now;
        }
        state.last_sent_ns = now;
        event.count = state.retransmits;
        event.value_ns = now.saturating_sub(state.stall_started_ns);
    }
    event.error = soft_error(socket);
    segment_size(socket, skb, &mut event);
    emit(&event);
}

/// What tells a path MTU black hole from a path that drops everything: the retransmitted
/// segment's size against the socket's MSS, and whether the peer acknowledged later segments.
/// Three small reads, only on retransmissions of watched connections; nothing when BTF could
/// not tell where the fields are.
#[inline(always)]
fn segment_size(socket: u64, skb: u64, event: &mut RawEvent) {
    let sock = global(&SOCK_OFFSETS);
    let skb_offsets = global(&SKB_OFFSETS);
    if sock.valid == 0 || sock.mss_cache == 0 || skb_offsets.len == 0 || skb == 0 {
        return;
    }
    let sk = socket as *const u8;
    let (Some(bytes), Some(mss)) = (
        kernel_read::<u32>(skb as *const u8, skb_offsets.len),
        kernel_read::<u32>(sk, sock.mss_cache),
    ) else {
        return;
    };
    event.aux_ns = segment_size::pack(bytes, mss);
    if sock.sacked_out != 0 && kernel_read::<u32>(sk, sock.sacked_out).is_some_and(|n| n > 0) {
        event.flags |= event_flags::PEER_SACKED;
    }
}

/// The socket's soft error (`sk_err_soft`): an ICMP error on an established connection leaves
/// it there and TCP retransmits on. 0 for none, or when BTF could not tell where it is.
#[inline(always)]
fn soft_error(socket: u64) -> u16 {
    let offsets = global(&SOCK_OFFSETS);
    if offsets.valid == 0 || offsets.err_soft == 0 {
        return 0;
    }
    kernel_read::<i32>(socket as *const u8, offsets.err_soft).map_or(0, |errno| {
        errno.unsigned_abs().min(u32::from(u16::MAX)) as u16
    })
}

/// The error a socket reports to its application (ETIMEDOUT, ECONNRESET, EHOSTUNREACH...),
/// identified by its 4-tuple (the classic tracepoint has no socket pointer).
#[inline(always)]
pub(super) fn error_report(ports: (u16, u16), error: i32, addresses: impl FnOnce(&mut RawEvent)) {
    let mut event = event_for(event_kind::ERROR_REPORT, now_ns(), 0, ports.0, ports.1);
    event.error = error.unsigned_abs().min(u32::from(u16::MAX)) as u16;
    addresses(&mut event);
    emit(&event);
}
