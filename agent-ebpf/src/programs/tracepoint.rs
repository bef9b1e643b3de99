//! The fallback hook kind: classic tracepoints, for kernels without BTF or where a BTF
//! tracepoint does not load. Their records are formatted for every event and read here with
//! `bpf_probe_read_kernel` at offsets the agent takes from tracefs at start-up; they share the
//! per-CPU guard of all tracing programs (a nested run is skipped).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use idlecut_ebpf::{FieldOffsets, IPPROTO_TCP, RawEvent, event_kind};

use super::{
    SKB_OFFSETS, SOCK_OFFSETS,
    facts::{self, Heard, Segment, Side},
    global, kernel_read, netns_of, watched,
};

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
static OFFSETS_TCP_DESTROY_SOCK: FieldOffsets = FieldOffsets::absent();

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
    watched(local, remote)
}

/// Fills addresses and family of an event from a tracepoint that carries the `saddr_v6` /
/// `daddr_v6` pair (IPv4 stored v4-mapped by the kernel).
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

/// sock:inet_sock_set_state.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let off = global(&OFFSETS_INET_SOCK_SET_STATE);
    // Ports first: the cheapest test that rejects almost everything.
    let Some(ports) = mail_ports(&ctx, &off) else {
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
    facts::state_change(socket, ports, old_state as u8, new_state as u8, |event| {
        fill_addresses(&ctx, &off, event);
        event.netns = netns_of(socket);
    });
    0
}

/// tcp:tcp_probe fires for every segment received on an established socket: the peer is
/// alive and the path lets it through.
#[tracepoint(category = "tcp", name = "tcp_probe")]
pub fn tcp_probe(ctx: TracePointContext) -> u32 {
    let off = global(&OFFSETS_TCP_PROBE);
    let Some(ports) = mail_ports(&ctx, &off) else {
        return 0;
    };
    if let Some(socket) = read::<u64>(&ctx, off.skaddr) {
        let segment =
            read::<u64>(&ctx, off.skbaddr).map_or(Segment::UNREAD, |skb| segment(skb as *const u8));
        facts::activity(socket, ports, Side::Remote(segment), Heard::NOTHING);
    }
    0
}

/// The TTL and RST flag of a received segment, where BTF told the `sk_buff` layout.
#[inline(always)]
fn segment(skb: *const u8) -> Segment {
    let offsets = global(&SKB_OFFSETS);
    if !offsets.known() {
        return Segment::UNREAD;
    }
    match (
        kernel_read::<u64>(skb, offsets.head),
        kernel_read::<u16>(skb, offsets.network_header),
        kernel_read::<u64>(skb, offsets.data),
    ) {
        (Some(head), Some(network_header), Some(data)) => {
            facts::segment_at(head as *const u8, network_header, data as *const u8)
        }
        _ => Segment::UNREAD,
    }
}

/// sock:sock_send_length: an application sent data on a socket. The record has no ports: they
/// are read from the socket when BTF said where they are; without BTF, the state lookup is
/// the filter.
#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    let off = global(&OFFSETS_SOCK_SEND_LENGTH);
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
    let Some(socket) = read::<u64>(&ctx, off.skaddr) else {
        return 0;
    };
    let sock = global(&SOCK_OFFSETS);
    if sock.valid != 0 {
        let Some(portpair) = kernel_read::<u32>(socket as *const u8, sock.portpair) else {
            return 0;
        };
        let (local, remote) = super::btf::split_portpair(portpair);
        if watched(local, remote).is_none() {
            return 0;
        }
    }
    facts::activity(socket, (0, 0), Side::Local, Heard::NOTHING);
    0
}

/// tcp:tcp_receive_reset: a valid RST arrived for a socket.
#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    reset(
        &ctx,
        &global(&OFFSETS_TCP_RECEIVE_RESET),
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
        &global(&OFFSETS_TCP_SEND_RESET),
        event_kind::RESET_SENT,
    );
    0
}

#[inline(always)]
fn reset(ctx: &TracePointContext, off: &FieldOffsets, kind: u8) {
    let Some(ports) = mail_ports(ctx, off) else {
        return;
    };
    // A RST sent in reply to a segment that matches no socket has no socket: not ours.
    if let Some(socket) = read::<u64>(ctx, off.skaddr).filter(|&socket| socket != 0) {
        facts::reset(kind, socket, ports);
    }
}

/// tcp:tcp_retransmit_skb: a segment of the socket was retransmitted, unless the record's `err`
/// (newer kernels) says the kernel could not send it.
#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let off = global(&OFFSETS_TCP_RETRANSMIT_SKB);
    let Some(ports) = mail_ports(&ctx, &off) else {
        return 0;
    };
    if read::<i32>(&ctx, off.error).is_some_and(|err| err != 0) {
        return 0;
    }
    if let Some(socket) = read::<u64>(&ctx, off.skaddr) {
        let skb = read::<u64>(&ctx, off.skbaddr).unwrap_or(0);
        facts::retransmit(socket, ports, skb);
    }
    0
}

/// sock:inet_sk_error_report: no socket pointer here, so the 4-tuple identifies it.
#[tracepoint(category = "sock", name = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: TracePointContext) -> u32 {
    let off = global(&OFFSETS_INET_SK_ERROR_REPORT);
    let Some(ports) = mail_ports(&ctx, &off) else {
        return 0;
    };
    if read::<u16>(&ctx, off.protocol) != Some(IPPROTO_TCP) {
        return 0;
    }
    if let Some(error) = read::<i32>(&ctx, off.error) {
        facts::error_report(ports, error, |event| fill_addresses(&ctx, &off, event));
    }
    0
}

/// tcp:tcp_destroy_sock: a socket is destroyed; reports its end if its CLOSE went unreported.
#[tracepoint(category = "tcp", name = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    let off = global(&OFFSETS_TCP_DESTROY_SOCK);
    let Some(ports) = mail_ports(&ctx, &off) else {
        return 0;
    };
    if let Some(socket) = read::<u64>(&ctx, off.skaddr) {
        facts::destroyed(socket, ports, |event| {
            fill_addresses(&ctx, &off, event);
            event.netns = netns_of(socket);
        });
    }
    0
}
