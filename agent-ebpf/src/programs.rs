use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_ANY, BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP,
        BPF_RB_NO_WAKEUP,
    },
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{fentry, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{FEntryContext, TracePointContext},
};
use aya_log_ebpf::{debug, warn};
use idlecut_ebpf::{
    AF_INET, AF_INET6, ConnectionState, FieldOffsets, IPPROTO_TCP, PortBitmap, RawEvent,
    SkbOffsets, SockOffsets, counter, defaults, event_flags, event_kind, tcp_state,
};

// Sizes the agent overrides at load time (`--ring-buffer-size`, `--max-connections`).
const DEFAULT_RING_BUFFER_BYTES: u32 = defaults::RING_BUFFER_BYTES;
const DEFAULT_MAX_CONNECTIONS: u32 = defaults::MAX_CONNECTIONS;

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BUFFER_BYTES, 0);

#[map(name = "CONNECTIONS")]
static CONNECTIONS: LruHashMap<u64, ConnectionState> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CONNECTIONS, 0);

/// Connections found by the start-up scan, by socket cookie, until a program adopts them.
/// Not preallocated: it is empty but for the moments after a scan finds connections.
#[map(name = "SEEDS")]
static SEEDS: HashMap<u64, ConnectionState> =
    HashMap::with_max_entries(DEFAULT_MAX_CONNECTIONS, BPF_F_NO_PREALLOC);

/// Entry 0 is non-zero while SEEDS may hold entries.
#[map(name = "SEEDING")]
static SEEDING: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

// Globals set by the agent at load time (`EbpfLoader::override_global`). Read through
// `read_volatile` so that the compiler does not fold in their placeholder values.
#[unsafe(no_mangle)]
static MAIL_PORTS: PortBitmap = [0; 1024];
#[unsafe(no_mangle)]
static MIN_IDLE_GAP_NS: u64 = defaults::MIN_IDLE_GAP_NS;
/// Waking the reader costs more than the rest of a program's run: events are submitted without
/// a wake-up (the agent drains the buffer on a timer) until this many bytes are waiting.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = DEFAULT_RING_BUFFER_BYTES as u64 / 4;
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
#[unsafe(no_mangle)]
static OFFSETS_SOCK_SEND_LENGTH: FieldOffsets = FieldOffsets::absent();
#[unsafe(no_mangle)]
static SOCK_OFFSETS: SockOffsets = SockOffsets {
    net: 0,
    ns_inum: 0,
    cookie: 0,
    valid: 0,
};
#[unsafe(no_mangle)]
static SKB_OFFSETS: SkbOffsets = SkbOffsets {
    head: 0,
    data: 0,
    transport_header: 0,
    _pad: 0,
};

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
    let (local, remote) =
        if off.ports_in_sockaddr == 0 && off.remote_port == off.local_port.wrapping_add(2) {
            // Side by side, as in every tracepoint that has them: one read instead of two.
            let both = read::<[u16; 2]>(ctx, off.local_port)?;
            (both[0], both[1])
        } else if off.ports_in_sockaddr != 0 {
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
            // SAFETY: a valid static.
            let wakeup_bytes = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
            let flags = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= wakeup_bytes {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(u64::from(flags));
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
    // Ports first: the cheapest test that rejects almost everything.
    let Some((local_port, remote_port)) = mail_ports(&ctx, &off) else {
        return 0;
    };
    if read::<u16>(&ctx, off.protocol) != Some(IPPROTO_TCP) {
        return 0;
    }
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
                last_sent_ns: now,
                stall_started_ns: 0,
                retransmits: 0,
                flags: 0,
                _pad: [0; 3],
            };
            if CONNECTIONS
                .insert(&socket, &state, u64::from(BPF_ANY))
                .is_err()
            {
                count(counter::STATE_INSERT_FAILED);
                warn!(
                    &ctx,
                    "cannot track socket {:x}: state map insert failed", socket
                );
            }
            let mut event = event_for(event_kind::OPEN, now, socket, local_port, remote_port);
            event.netns = netns_of(socket);
            fill_addresses(&ctx, &off, &mut event);
            emit(&event);
        }
        tcp_state::CLOSE if tcp_state::was_established(old_state) => {
            let now = now_ns();
            let mut event = RawEvent::zeroed();
            event.kind = event_kind::CLOSE;
            event.timestamp_ns = now;
            event.socket = socket;
            event.local_port = local_port;
            event.remote_port = remote_port;
            event.old_state = old_state;
            event.netns = netns_of(socket);
            match state_of(&ctx, socket) {
                Some(state) => {
                    // SAFETY: pointer from a successful lookup, read once.
                    let state = unsafe { *state };
                    event.value_ns = state.opened_ns;
                    event.count = state.retransmits;
                    event.flags = state.flags;
                    if state.stall_started_ns != 0 {
                        event.aux_ns = now.saturating_sub(state.stall_started_ns);
                    }
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
            if let Some(state) = state_of(&ctx, socket) {
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

/// tcp:tcp_probe fires for every segment received on an established socket: the peer is
/// alive and the path lets it through.
#[tracepoint(category = "tcp", name = "tcp_probe")]
pub fn tcp_probe(ctx: TracePointContext) -> u32 {
    let off = offsets(&OFFSETS_TCP_PROBE);
    let Some((local_port, remote_port)) = mail_ports(&ctx, &off) else {
        return 0;
    };
    let Some(socket) = read::<u64>(&ctx, off.skaddr) else {
        return 0;
    };
    activity(&ctx, socket, local_port, remote_port, Side::Remote);
    0
}

/// sock:sock_send_length: an application sent data on a socket. The tracepoint has no ports,
/// so the (cheap) protocol check comes first and the state lookup filters the rest.
#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    let off = offsets(&OFFSETS_SOCK_SEND_LENGTH);
    let (protocol, sent) = if off.ret == off.protocol.wrapping_add(2) {
        // Side by side, as on every kernel that has this tracepoint: one read instead of two.
        let Some(bytes) = read::<[u8; 6]>(&ctx, off.protocol) else {
            return 0;
        };
        (
            u16::from_ne_bytes([bytes[0], bytes[1]]),
            i32::from_ne_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]),
        )
    } else {
        let (Some(protocol), Some(sent)) =
            (read::<u16>(&ctx, off.protocol), read::<i32>(&ctx, off.ret))
        else {
            return 0;
        };
        (protocol, sent)
    };
    if protocol != IPPROTO_TCP || sent <= 0 {
        return 0;
    }
    if let Some(socket) = read::<u64>(&ctx, off.skaddr) {
        activity(&ctx, socket, 0, 0, Side::Local);
    }
    0
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Local,
    Remote,
}

/// Traffic on a tracked connection: ends an idle gap if the connection was silent long enough,
/// answers a pending gap, ends a stall.
#[inline(always)]
fn activity(ctx: &TracePointContext, socket: u64, local_port: u16, remote_port: u16, side: Side) {
    let Some(state) = state_of(ctx, socket) else {
        return;
    };
    let now = now_ns();
    // SAFETY: pointer from a successful lookup. Events of one socket are serialized by the
    // socket lock in the kernel paths these tracepoints sit on; a race at worst misreports
    // one gap.
    let state = unsafe { &mut *state };
    let last = if state.last_received_ns > state.last_sent_ns {
        state.last_received_ns
    } else {
        state.last_sent_ns
    };
    let gap = now.saturating_sub(last);
    if side == Side::Remote {
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
    } else {
        state.last_sent_ns = now;
    }
    // SAFETY: a valid static.
    let min_gap = unsafe { core::ptr::read_volatile(&MIN_IDLE_GAP_NS) };
    if gap >= min_gap {
        let mut event = event_for(
            event_kind::IDLE_GAP_END,
            now,
            socket,
            local_port,
            remote_port,
        );
        event.value_ns = gap;
        if side == Side::Local {
            event.flags = event_flags::LOCAL_SPOKE_FIRST;
            state.flags |= event_flags::AWAITING_ANSWER;
        }
        emit(&event);
    }
}

/// The state of a tracked connection. A connection the start-up scan found is adopted here the
/// first time a program meets its socket: its seeded state moves from SEEDS (by cookie) to
/// CONNECTIONS (by socket), and user space is told which socket it is.
#[inline(always)]
fn state_of<C: EbpfContext>(ctx: &C, socket: u64) -> Option<*mut ConnectionState> {
    if let Some(state) = CONNECTIONS.get_ptr_mut(&socket) {
        return Some(state);
    }
    if !SEEDING.get(0).is_some_and(|&seeding| seeding != 0) {
        return None;
    }
    let offsets = sock_offsets();
    if offsets.valid == 0 || socket == 0 {
        return None;
    }
    let cookie: u64 = kernel_read(socket as *const u8, offsets.cookie)?;
    let seed = SEEDS.get_ptr(&cookie)?;
    // SAFETY: pointer from a successful lookup, read once.
    let seed = unsafe { *seed };
    if CONNECTIONS
        .insert(&socket, &seed, u64::from(BPF_NOEXIST))
        .is_err()
    {
        count(counter::STATE_INSERT_FAILED);
        warn!(
            ctx,
            "cannot adopt scanned connection {}: state map insert failed", cookie
        );
        return None;
    }
    let _ = SEEDS.remove(&cookie);
    debug!(
        ctx,
        "adopted scanned connection {} as socket {:x}", cookie, socket
    );
    let mut event = event_for(event_kind::ADOPTED, now_ns(), socket, 0, 0);
    event.value_ns = cookie;
    event.netns = netns_of(socket);
    emit(&event);
    CONNECTIONS.get_ptr_mut(&socket)
}

/// The inode of the socket's network namespace, or 0 when BTF could not tell where it is.
#[inline(always)]
fn netns_of(socket: u64) -> u32 {
    let offsets = sock_offsets();
    if offsets.valid == 0 {
        return 0;
    }
    let net: Option<*const u8> = kernel_read(socket as *const u8, offsets.net);
    net.and_then(|net| kernel_read::<u32>(net, offsets.ns_inum))
        .unwrap_or(0)
}

#[inline(always)]
fn sock_offsets() -> SockOffsets {
    // SAFETY: a valid static.
    unsafe { core::ptr::read_volatile(&SOCK_OFFSETS) }
}

#[inline(always)]
fn event_for(kind: u8, now: u64, socket: u64, local_port: u16, remote_port: u16) -> RawEvent {
    let mut event = RawEvent::zeroed();
    event.kind = kind;
    event.timestamp_ns = now;
    event.socket = socket;
    event.local_port = local_port;
    event.remote_port = remote_port;
    event
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
    // Adopts a scanned connection first, so user space knows the socket.
    let _ = state_of(ctx, socket);
    emit(&event_for(kind, now_ns(), socket, local_port, remote_port));
}

/// tcp:tcp_retransmit_skb: a segment of the socket was retransmitted. The first one since the
/// peer was last heard from starts a stall.
#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let off = offsets(&OFFSETS_TCP_RETRANSMIT_SKB);
    let Some((local_port, remote_port)) = mail_ports(&ctx, &off) else {
        return 0;
    };
    let Some(socket) = read::<u64>(&ctx, off.skaddr) else {
        return 0;
    };
    let now = now_ns();
    let mut event = event_for(event_kind::RETRANSMIT, now, socket, local_port, remote_port);
    if let Some(state) = state_of(&ctx, socket) {
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
    emit(&event);
    0
}

/// sock:inet_sk_error_report: the error a socket reports to its application (ETIMEDOUT,
/// ECONNRESET, EHOSTUNREACH...). No socket pointer here, so the 4-tuple identifies it.
#[tracepoint(category = "sock", name = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: TracePointContext) -> u32 {
    let off = offsets(&OFFSETS_INET_SK_ERROR_REPORT);
    let Some((local_port, remote_port)) = mail_ports(&ctx, &off) else {
        return 0;
    };
    if read::<u16>(&ctx, off.protocol) != Some(IPPROTO_TCP) {
        return 0;
    }
    let Some(error) = read::<i32>(&ctx, off.error) else {
        return 0;
    };
    let mut event = event_for(
        event_kind::ERROR_REPORT,
        now_ns(),
        0,
        local_port,
        remote_port,
    );
    event.error = error.unsigned_abs().min(u32::from(u16::MAX)) as u16;
    fill_addresses(&ctx, &off, &mut event);
    emit(&event);
    0
}

/// An ICMP error for a TCP connection over IPv4: `tcp_v4_err(skb, info)`. `skb->data` points
/// at the IP header of the segment we sent (quoted in the ICMP message), the ICMP header sits
/// at `skb->head + skb->transport_header`.
#[fentry(function = "tcp_v4_err")]
pub fn tcp_v4_err(ctx: FEntryContext) -> u32 {
    let skb: *const u8 = ctx.arg(0);
    let _ = icmp_v4(skb);
    0
}

#[inline(always)]
fn icmp_v4(skb: *const u8) -> Option<()> {
    let skb_off = skb_offsets();
    let data: *const u8 = kernel_read(skb, skb_off.data)?;
    let version_ihl: u8 = kernel_read(data, 0)?;
    let header_len = u16::from(version_ihl & 0x0f) * 4;
    let local_port = u16::from_be(kernel_read::<u16>(data, header_len)?);
    let remote_port = u16::from_be(kernel_read::<u16>(data, header_len + 2)?);
    if !is_mail_port(local_port) && !is_mail_port(remote_port) {
        return None;
    }
    let head: *const u8 = kernel_read(skb, skb_off.head)?;
    let transport: u16 = kernel_read(skb, skb_off.transport_header)?;
    let type_code: [u8; 2] = kernel_read(head, transport)?;
    let local: [u8; 4] = kernel_read(data, 12)?;
    let remote: [u8; 4] = kernel_read(data, 16)?;
    let mut event = event_for(event_kind::ICMP_ERROR, now_ns(), 0, local_port, remote_port);
    event.family = AF_INET;
    event.local_addr = v4_mapped(local);
    event.remote_addr = v4_mapped(remote);
    event.error = u16::from_be_bytes(type_code);
    emit(&event);
    Some(())
}

/// An ICMPv6 error for a TCP connection:
/// `tcp_v6_err(skb, opt, type, code, offset, info)`, the quoted TCP header at
/// `skb->data + offset`, the quoted IPv6 header at `skb->data`.
#[fentry(function = "tcp_v6_err")]
pub fn tcp_v6_err(ctx: FEntryContext) -> u32 {
    let skb: *const u8 = ctx.arg(0);
    let icmp_type: u8 = ctx.arg(2);
    let icmp_code: u8 = ctx.arg(3);
    let offset: i32 = ctx.arg(4);
    let _ = icmp_v6(skb, icmp_type, icmp_code, offset);
    0
}

#[inline(always)]
fn icmp_v6(skb: *const u8, icmp_type: u8, icmp_code: u8, offset: i32) -> Option<()> {
    let offset = u16::try_from(offset).ok()?;
    let data: *const u8 = kernel_read(skb, skb_offsets().data)?;
    let local_port = u16::from_be(kernel_read::<u16>(data, offset)?);
    let remote_port = u16::from_be(kernel_read::<u16>(data, offset.wrapping_add(2))?);
    if !is_mail_port(local_port) && !is_mail_port(remote_port) {
        return None;
    }
    let mut event = event_for(event_kind::ICMP_ERROR, now_ns(), 0, local_port, remote_port);
    event.family = AF_INET6;
    event.local_addr = kernel_read(data, 8)?;
    event.remote_addr = kernel_read(data, 24)?;
    event.error = u16::from_be_bytes([icmp_type, icmp_code]);
    emit(&event);
    Some(())
}

#[inline(always)]
fn skb_offsets() -> SkbOffsets {
    // SAFETY: a valid static.
    unsafe { core::ptr::read_volatile(&SKB_OFFSETS) }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
fn kernel_read<T>(base: *const u8, offset: u16) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the access.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(usize::from(offset)).cast::<T>()) }.ok()
}

#[inline(always)]
fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic at run time.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
