use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use idlecut_ebpf::{
    ConnectionState, FieldOffsets, IPPROTO_TCP, PortBitmap, RawEvent, counter, event_flags,
    event_kind, tcp_state,
};

/// Default sizes; the agent overrides both at load time (`--ring-buffer-size`,
/// `--max-connections`).
const DEFAULT_RING_BUFFER_BYTES: u32 = 1 << 20;
const DEFAULT_MAX_CONNECTIONS: u32 = 65_536;

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BUFFER_BYTES, 0);

#[map(name = "CONNECTIONS")]
static CONNECTIONS: LruHashMap<u64, ConnectionState> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CONNECTIONS, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

// Globals set by the agent at load time (`EbpfLoader::override_global`). Read through
// `read_volatile` so that the compiler does not fold in their placeholder values.
#[unsafe(no_mangle)]
static MAIL_PORTS: PortBitmap = [0; 1024];
#[unsafe(no_mangle)]
static MIN_IDLE_GAP_NS: u64 = 10_000_000_000;
#[unsafe(no_mangle)]
static OFFSETS_INET_SOCK_SET_STATE: FieldOffsets = FieldOffsets::absent();
#[unsafe(no_mangle)]
static OFFSETS_TCP_PROBE: FieldOffsets = FieldOffsets::absent();
#[unsafe(no_mangle)]
static OFFSETS_TCP_RECEIVE_RESET: FieldOffsets = FieldOffsets::absent();
#[unsafe(no_mangle)]
static OFFSETS_TCP_SEND_RESET: FieldOffsets = FieldOffsets::absent();
#[unsafe(no_mangle)]
static OFFSETS_TCP_RETRANSMIT_SKB: FieldOffsets = FieldOffsets::absent();
#[unsafe(no_mangle)]
static OFFSETS_INET_SK_ERROR_REPORT: FieldOffsets = FieldOffsets::absent();

#[inline(always)]
fn offsets(global: &'static FieldOffsets) -> FieldOffsets {
    // SAFETY: a valid, aligned static.
    unsafe { core::ptr::read_volatile(global) }
}

#[inline(always)]
fn is_mail_port(port: u16) -> bool {
    let word = usize::from(port >> 6);
    // SAFETY: `word` < 1024 for any u16, so the element exists.
    let bits = unsafe { core::ptr::read_volatile(MAIL_PORTS.as_ptr().add(word)) };
    bits & (1u64 << (port & 63)) != 0
}

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn read<T>(ctx: &TracePointContext, offset: u16) -> Option<T> {
    if offset == FieldOffsets::ABSENT {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the access; the offset comes from tracefs.
    unsafe { ctx.read_at::<T>(usize::from(offset)) }.ok()
}

/// Local and remote port, in host order, or None when neither is a watched port.
#[inline(always)]
fn mail_ports(ctx: &TracePointContext, off: &FieldOffsets) -> Option<(u16, u16)> {
    let (local, remote) = if off.ports_in_sockaddr != 0 {
        // `sin_port` / `sin6_port` sit two bytes into the sockaddr, in network order.
        let local = u16::from_be(read::<u16>(ctx, off.local_port.wrapping_add(2))?);
        let remote = u16::from_be(read::<u16>(ctx, off.remote_port.wrapping_add(2))?);
        (local, remote)
    } else {
        (
            read::<u16>(ctx, off.local_port)?,
            read::<u16>(ctx, off.remote_port)?,
        )
    };
    if is_mail_port(local) || is_mail_port(remote) {
        Some((local, remote))
    } else {
        None
    }
}

#[inline(always)]
fn emit(event: &RawEvent) {
    match EVENTS.reserve::<RawEvent>(0) {
        Some(mut entry) => {
            entry.write(*event);
            entry.submit(0);
        }
        None => count(counter::RINGBUF_FULL),
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Fills addresses, ports and family of an event from a tracepoint that carries the
/// `saddr_v6` / `daddr_v6` pair (IPv4 stored v4-mapped by the kernel).
#[inline(always)]
fn fill_addresses(ctx: &TracePointContext, off: &FieldOffsets, event: &mut RawEvent) {
    if let Some(addr) = read::<[u8; 16]>(ctx, off.local_addr_v6) {
        event.local_addr = addr;
    }
    if let Some(addr) = read::<[u8; 16]>(ctx, off.remote_addr_v6) {
        event.remote_addr = addr;
    }
    event.family = read::<u16>(ctx, off.family).unwrap_or(0);
}

/// sock:inet_sock_set_state: connections open (-> ESTABLISHED) and end (-> CLOSE); who sent
/// the first FIN is remembered on the way.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let off = offsets(&OFFSETS_INET_SOCK_SET_STATE);
    if read::<u16>(&ctx, off.protocol) != Some(IPPROTO_TCP) {
        return 0;
    }
    let Some((local_port, remote_port)) = mail_ports(&ctx, &off) else {
        return 0;
    };
    let (Some(socket), Some(old_state), Some(new_state)) = (
        read::<u64>(&ctx, off.skaddr),
        read::<i32>(&ctx, off.old_state),
        read::<i32>(&ctx, off.new_state),
    ) else {
        return 0;
    };
    let (old_state, new_state) = (old_state as u8, new_state as u8);
    match new_state {
        tcp_state::ESTABLISHED => {
            let now = now_ns();
            let state = ConnectionState {
                opened_ns: now,
                last_received_ns: now,
                retransmits: 0,
                flags: 0,
                _pad: [0; 3],
            };
            if CONNECTIONS
                .insert(&socket, &state, u64::from(BPF_NOEXIST))
                .is_err()
            {
                count(counter::STATE_INSERT_FAILED);
            }
            let mut event = RawEvent::zeroed();
            event.kind = event_kind::OPEN;
            event.timestamp_ns = now;
            event.socket = socket;
            event.local_port = local_port;
            event.remote_port = remote_port;
            fill_addresses(&ctx, &off, &mut event);
            emit(&event);
        }
        tcp_state::CLOSE if tcp_state::was_established(old_state) => {
            let mut event = RawEvent::zeroed();
            event.kind = event_kind::CLOSE;
            event.timestamp_ns = now_ns();
            event.socket = socket;
            event.local_port = local_port;
            event.remote_port = remote_port;
            event.old_state = old_state;
            match CONNECTIONS.get_ptr(&socket) {
                Some(state) => {
                    // SAFETY: pointer from a successful lookup, read once.
                    let state = unsafe { *state };
                    event.value_ns = state.opened_ns;
                    event.count = state.retransmits;
                    event.flags = state.flags;
                    let _ = CONNECTIONS.remove(&socket);
                }
                None => {
                    event.flags = event_flags::NO_STATE;
                    count(counter::CLOSE_WITHOUT_STATE);
                }
            }
            fill_addresses(&ctx, &off, &mut event);
            emit(&event);
        }
        tcp_state::FIN_WAIT1 | tcp_state::CLOSE_WAIT => {
            if let Some(state) = CONNECTIONS.get_ptr_mut(&socket) {
                // SAFETY: pointer from a successful lookup. Only flags of this connection are
                // written, and only on its own state transitions.
                let state = unsafe { &mut *state };
                if state.flags
                    & (event_flags::LOCAL_CLOSED_FIRST | event_flags::REMOTE_CLOSED_FIRST)
                    == 0
                {
                    state.flags |= if new_state == tcp_state::FIN_WAIT1 {
                        event_flags::LOCAL_CLOSED_FIRST
                    } else {
                        event_flags::REMOTE_CLOSED_FIRST
                    };
                }
            }
        }
        _ => {}
    }
    0
}

/// tcp:tcp_probe fires for every segment received on an established socket: it keeps the
/// connection's receive clock and reports the end of long silences.
#[tracepoint(category = "tcp", name = "tcp_probe")]
pub fn tcp_probe(ctx: TracePointContext) -> u32 {
    let off = offsets(&OFFSETS_TCP_PROBE);
    let Some((local_port, remote_port)) = mail_ports(&ctx, &off) else {
        return 0;
    };
    let Some(socket) = read::<u64>(&ctx, off.skaddr) else {
        return 0;
    };
    let Some(state) = CONNECTIONS.get_ptr_mut(&socket) else {
        return 0;
    };
    let now = now_ns();
    // SAFETY: pointer from a successful lookup; a racing update of the same connection at
    // worst reports a slightly different gap.
    let state = unsafe { &mut *state };
    let gap = now.saturating_sub(state.last_received_ns);
    state.last_received_ns = now;
    // SAFETY: a valid static.
    let min_gap = unsafe { core::ptr::read_volatile(&MIN_IDLE_GAP_NS) };
    if gap >= min_gap {
        let mut event = RawEvent::zeroed();
        event.kind = event_kind::IDLE_GAP_END;
        event.timestamp_ns = now;
        event.socket = socket;
        event.value_ns = gap;
        event.local_port = local_port;
        event.remote_port = remote_port;
        emit(&event);
    }
    0
}

/// tcp:tcp_receive_reset: a valid RST arrived for a socket.
#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    reset(
        &ctx,
        &offsets(&OFFSETS_TCP_RECEIVE_RESET),
        event_kind::RESET_RECEIVED,
    );
    0
}

/// tcp:tcp_send_reset: the socket sent a RST (an abort, SO_LINGER 0, keepalive failure...).
/// Fires after the state change to CLOSE on an abort, so user space matches it afterwards.
#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    reset(
        &ctx,
        &offsets(&OFFSETS_TCP_SEND_RESET),
        event_kind::RESET_SENT,
    );
    0
}

#[inline(always)]
fn reset(ctx: &TracePointContext, off: &FieldOffsets, kind: u8) {
    let Some((local_port, remote_port)) = mail_ports(ctx, off) else {
        return;
    };
    // A RST sent in reply to a segment that matches no socket has no socket: not ours.
    let Some(socket) = read::<u64>(ctx, off.skaddr).filter(|&socket| socket != 0) else {
        return;
    };
    let mut event = RawEvent::zeroed();
    event.kind = kind;
    event.timestamp_ns = now_ns();
    event.socket = socket;
    event.local_port = local_port;
    event.remote_port = remote_port;
    emit(&event);
}

/// tcp:tcp_retransmit_skb: a segment of the socket was retransmitted.
#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let off = offsets(&OFFSETS_TCP_RETRANSMIT_SKB);
    let Some((local_port, remote_port)) = mail_ports(&ctx, &off) else {
        return 0;
    };
    let Some(socket) = read::<u64>(&ctx, off.skaddr) else {
        return 0;
    };
    let mut retransmits = 0;
    if let Some(state) = CONNECTIONS.get_ptr_mut(&socket) {
        // SAFETY: pointer from a successful lookup.
        let state = unsafe { &mut *state };
        state.retransmits = state.retransmits.saturating_add(1);
        retransmits = state.retransmits;
    }
    let mut event = RawEvent::zeroed();
    event.kind = event_kind::RETRANSMIT;
    event.timestamp_ns = now_ns();
    event.socket = socket;
    event.local_port = local_port;
    event.remote_port = remote_port;
    event.count = retransmits;
    emit(&event);
    0
}

/// sock:inet_sk_error_report: the error a socket reports to its application (ETIMEDOUT,
/// ECONNRESET, EHOSTUNREACH...). No socket pointer here, so the 4-tuple identifies it.
#[tracepoint(category = "sock", name = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: TracePointContext) -> u32 {
    let off = offsets(&OFFSETS_INET_SK_ERROR_REPORT);
    if read::<u16>(&ctx, off.protocol) != Some(IPPROTO_TCP) {
        return 0;
    }
    let Some((local_port, remote_port)) = mail_ports(&ctx, &off) else {
        return 0;
    };
    let Some(error) = read::<i32>(&ctx, off.error) else {
        return 0;
    };
    let mut event = RawEvent::zeroed();
    event.kind = event_kind::ERROR_REPORT;
    event.timestamp_ns = now_ns();
    event.local_port = local_port;
    event.remote_port = remote_port;
    event.error = error.unsigned_abs().min(u32::from(u16::MAX)) as u16;
    fill_addresses(&ctx, &off, &mut event);
    emit(&event);
    0
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic at run time.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
