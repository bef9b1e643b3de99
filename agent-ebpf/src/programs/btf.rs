//! The default hook kind: BTF tracepoints (`tp_btf`). The kernel hands them the tracepoint's
//! typed arguments (`struct sock *`...) without formatting a record, and guards each program
//! on its own instead of sharing the per-CPU guard of classic tracepoints, so an interrupt
//! that lands in another program does not make this one skip a run.
//!
//! Fields are read with plain loads ([`load`]), not `bpf_probe_read_kernel`.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_jiffies64, bpf_skc_to_tcp_sock},
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use idlecut_ebpf::{
    AF_INET, IPPROTO_TCP, RawEvent, SkbOffsets, SockOffsets, SocketClocks, event_kind, tcp_state,
};

use super::{
    RETRANSMIT_HAS_ERR, SKB_OFFSETS, SOCK_OFFSETS, SOCKET_CLOCKS,
    facts::{self, Heard, Segment, Side},
    global, kernel_read, v4_mapped, watched,
};

/// The offset of one `struct sock` field, as the agent set it from BTF.
macro_rules! offset_of_field {
    ($field:ident) => {
        // SAFETY: a valid, aligned static; read volatile so that the compiler keeps the load
        // (the verifier, not the compiler, turns it into a constant: see `load`).
        unsafe { core::ptr::read_volatile(&raw const SOCK_OFFSETS.$field) }
    };
}

/// Reads a `T` at `sk + offset` with one plain load instruction.
///
/// Why the verifier accepts it, and checks it: `sk` is a tracepoint argument of BTF type
/// `struct sock *` (PTR_TO_BTF_ID), on which the verifier allows adding a constant and then
/// checks the load's offset and size against the members of `struct sock` (btf_struct_access).
/// `offset` is a constant to the verifier although the agent chose it at load time: it comes
/// from the object's read-only data, a map that aya creates with BPF_F_RDONLY_PROG and freezes
/// before any program loads, and the verifier reads loads from such a map at verification
/// time (bpf_map_direct_read) and tracks them as known scalars. Without that (a writable
/// global, or an offset computed at run time) the verifier would refuse the access with
/// "invalid variable offset". The load is a PROBE_MEM access: a fault reads zero instead of
/// oopsing, which only a NULL socket could cause here and which callers check first anyway.
#[inline(always)]
fn load<T: Copy>(sk: *const u8, offset: u16) -> T {
    // SAFETY: see above; the kernel's exception table covers a faulting load.
    unsafe { core::ptr::read_volatile(sk.wrapping_add(usize::from(offset)).cast::<T>()) }
}

/// The socket's address as plain data: the connection's identity, a map key and an event field.
///
/// `sk` itself stays a pointer to the verifier, which lets it be dereferenced but not taken
/// apart (formatting it for a log record shifts it: "pointer arithmetic with >>= operator
/// prohibited"). The same argument read through `bpf_probe_read_kernel` is a scalar. One helper
/// call, made only once a socket has passed the port filter.
#[inline(always)]
fn socket_id(ctx: &BtfTracePointContext) -> Option<u64> {
    // SAFETY: the context points at the tracepoint's argument array, argument 0 first;
    // bpf_probe_read_kernel checks the access.
    unsafe { bpf_probe_read_kernel(ctx.as_ptr().cast::<u64>()) }
        .ok()
        .filter(|&socket| socket != 0)
}

/// `skc_portpair` holds `skc_dport` (network order) then `skc_num` (host order), in memory
/// order; returns (local, remote) in host order.
#[inline(always)]
pub(super) fn split_portpair(portpair: u32) -> (u16, u16) {
    let [d0, d1, n0, n1] = portpair.to_ne_bytes();
    (u16::from_ne_bytes([n0, n1]), u16::from_be_bytes([d0, d1]))
}

/// The socket's ports when one is watched: one load and two bit tests, the whole cost of a
/// program on a socket that is not ours.
#[inline(always)]
fn mail_ports(sk: *const u8) -> Option<(u16, u16)> {
    let (local, remote) = split_portpair(load::<u32>(sk, offset_of_field!(portpair)));
    watched(local, remote)
}

/// The ports of a socket that may be closing: when it goes to CLOSE the kernel unbinds it and
/// zeroes `skc_num`, so the local port comes from `inet_sport`, which stays. `inet_sport` lies
/// in `struct inet_sock`, beyond the `struct sock` the verifier knows `sk` as, hence the
/// checked read; these hooks fire once per connection, not per segment.
#[inline(always)]
fn ports_of_closing(sk: *const u8) -> Option<(u16, u16)> {
    let local = u16::from_be(kernel_read::<u16>(sk, offset_of_field!(inet_sport))?);
    let (_, remote) = split_portpair(load::<u32>(sk, offset_of_field!(portpair)));
    watched(local, remote)
}

#[inline(always)]
fn is_tcp(sk: *const u8) -> bool {
    load::<u16>(sk, offset_of_field!(protocol)) == IPPROTO_TCP
}

/// Family and addresses, IPv4 stored v4-mapped as the classic tracepoints do. The IPv6
/// addresses (16-byte arrays, rare events) go through the checked read.
#[inline(always)]
fn fill_addresses(sk: *const u8, event: &mut RawEvent) {
    let offsets: SockOffsets = super::global(&SOCK_OFFSETS);
    let family = load::<u16>(sk, offsets.family);
    event.family = family;
    if family == AF_INET {
        event.local_addr = v4_mapped(load::<u32>(sk, offsets.v4_local).to_ne_bytes());
        event.remote_addr = v4_mapped(load::<u32>(sk, offsets.v4_remote).to_ne_bytes());
    } else {
        event.local_addr = kernel_read(sk, offsets.v6_local).unwrap_or([0; 16]);
        event.remote_addr = kernel_read(sk, offsets.v6_remote).unwrap_or([0; 16]);
    }
}

/// The inode of the socket's network namespace: `sk->__sk_common.skc_net.net` is typed
/// (`struct net *`), so both steps are plain loads the verifier checks (see [`load`]).
#[inline(always)]
fn netns(sk: *const u8) -> u32 {
    let offsets: SockOffsets = global(&SOCK_OFFSETS);
    let net = load::<u64>(sk, offsets.net) as *const u8;
    if net.is_null() {
        return 0;
    }
    load::<u32>(net, offsets.ns_inum)
}

/// inet_sock_set_state(const struct sock *sk, int oldstate, int newstate). It fires after the
/// kernel has unbound a socket going to CLOSE, so only that transition needs `inet_sport`.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn btf_inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    let sk: *const u8 = ctx.arg(0);
    let old_state: i32 = ctx.arg(1);
    let new_state: i32 = ctx.arg(2);
    // Only opens and ends are reported (who closed first is told at the end): the states in
    // between, half of a connection's changes, stop at this test.
    if !matches!(new_state as u8, tcp_state::ESTABLISHED | tcp_state::CLOSE) {
        return 0;
    }
    let ports = if new_state as u8 == tcp_state::CLOSE {
        ports_of_closing(sk)
    } else {
        mail_ports(sk)
    };
    let Some(ports) = ports else {
        return 0;
    };
    if !is_tcp(sk) {
        return 0;
    }
    let Some(socket) = socket_id(&ctx) else {
        return 0;
    };
    facts::state_change(socket, ports, old_state as u8, new_state as u8, |event| {
        fill_addresses(sk, event);
        event.netns = netns(sk);
    });
    0
}

/// A socket's own clocks, read where [`SocketClocks`] says they are (see there). In jiffies,
/// as TCP keeps them (32 bits, compared with wrapping arithmetic).
struct Clocks {
    layout: SocketClocks,
    now: u32,
    /// The later of the last data and the last acknowledgement received.
    received: u32,
    /// Recovering from a loss: retransmitting, or probing for one (see [`SocketClocks`]).
    recovering: bool,
    segments_in: u32,
}

impl Clocks {
    /// The socket's clocks; None when the agent could not tell where they are, or `sk` is not
    /// a full TCP socket.
    #[inline(always)]
    fn of(sk: *const u8) -> Option<Self> {
        let layout: SocketClocks = global(&SOCKET_CLOCKS);
        if !layout.known() {
            return None;
        }
        // SAFETY: `sk` is the tracepoint's `struct sock *`; the helper returns it typed as
        // `struct tcp_sock *` (which the verifier then checks loads against), or NULL.
        let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut _) } as *const u8;
        if tp.is_null() {
            return None;
        }
        let data = load::<u32>(tp, layout.lrcvtime);
        let ack = load::<u32>(tp, layout.rcv_tstamp);
        Some(Self {
            // SAFETY: helper without preconditions (the verifier inlines it as a load).
            now: unsafe { bpf_jiffies64() } as u32,
            received: if ack.wrapping_sub(data) as i32 > 0 {
                ack
            } else {
                data
            },
            recovering: load::<u8>(tp, layout.ca_state) & CA_STATE_MASK != 0
                || load::<u32>(tp, layout.retrans_out) != 0
                || load::<u32>(tp, layout.tlp_high_seq) != 0,
            segments_in: load::<u32>(tp, layout.segs_in),
            layout,
        })
    }

    /// Jiffies since the peer was last heard from.
    #[inline(always)]
    fn since_received(&self) -> u32 {
        self.now.wrapping_sub(self.received)
    }

    /// Whether an event changes nothing the connection's state keeps but its idle clocks,
    /// which the first event of each refresh period brings up to date (see [`SocketClocks`]).
    #[inline(always)]
    fn quiet(&self) -> bool {
        !self.recovering
            && self.since_received() < self.layout.min_gap_jiffies
            && self.now >> self.layout.refresh_shift == self.received >> self.layout.refresh_shift
    }

    /// What the state's clock of the peer may have missed: when it was last heard from.
    #[inline(always)]
    fn heard(&self) -> Heard {
        Heard {
            received_ago_ns: u64::from(self.since_received()) * self.layout.tick_ns,
        }
    }
}

/// `icsk_ca_state` within its byte.
const CA_STATE_MASK: u8 = (1 << SocketClocks::CA_STATE_BITS) - 1;

/// A connection's first segments lend the state their TTL, against which a RST's is judged (a
/// lookup, even when they are quiet). Counted by `segs_in`, which includes the handshake's
/// and, on the accepting side, what the child socket took in before its first tcp_probe (seen
/// here: more than 2 by the first segment an accepted connection's program met).
const FIRST_SEGMENTS: u32 = 4;

/// tcp_probe(struct sock *sk, const struct sk_buff *skb): every segment received on an
/// established socket. Most of a busy connection's segments are quiet (see [`Clocks::quiet`])
/// and end here, with no lookup and no clock read.
#[btf_tracepoint(function = "tcp_probe")]
pub fn btf_tcp_probe(ctx: BtfTracePointContext) -> u32 {
    let sk: *const u8 = ctx.arg(0);
    let Some(ports) = mail_ports(sk) else {
        return 0;
    };
    let skb: *const u8 = ctx.arg(1);
    let clocks = Clocks::of(sk);
    if let Some(clocks) = &clocks
        && clocks.quiet()
        && !is_reset(skb, &clocks.layout)
    {
        // A quiet first segment only lends the state its TTL.
        if clocks.segments_in <= FIRST_SEGMENTS
            && let Some(socket) = socket_id(&ctx)
        {
            facts::peer_ttl(socket, segment(skb));
        }
        return 0;
    }
    if let Some(socket) = socket_id(&ctx) {
        let heard = clocks.map_or(Heard::NOTHING, |clocks| clocks.heard());
        facts::activity(socket, ports, Side::Remote(segment(skb)), heard);
    }
    0
}

/// Whether a received segment is a RST, from the flags TCP keeps in its control block.
#[inline(always)]
fn is_reset(skb: *const u8, layout: &SocketClocks) -> bool {
    const RST: u8 = 0x04;
    load::<u8>(skb, layout.skb_tcp_flags) & RST != 0
}

/// The TTL and RST flag of a received segment. `skb` is typed (`struct sk_buff *`), so its
/// header offsets are plain loads, checked like the socket's (see [`load`]); `head` and `data`
/// are pointers to bytes, which the verifier hands over as numbers, read through the checked
/// read.
#[inline(always)]
fn segment(skb: *const u8) -> Segment {
    let offsets: SkbOffsets = super::global(&SKB_OFFSETS);
    if !offsets.known() {
        return Segment::UNREAD;
    }
    let head = load::<u64>(skb, offsets.head) as *const u8;
    let data = load::<u64>(skb, offsets.data) as *const u8;
    facts::segment_at(head, load::<u16>(skb, offsets.network_header), data)
}

/// sock_send_length(struct sock *sk, int ret, int flags): every send on every socket of the
/// host, so the cheapest tests come first and no map is looked up for a socket that is not on
/// a watched port, nor for a quiet send (see [`Clocks::quiet`]).
#[btf_tracepoint(function = "sock_send_length")]
pub fn btf_sock_send_length(ctx: BtfTracePointContext) -> u32 {
    let sent: i32 = ctx.arg(1);
    if sent <= 0 {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    if mail_ports(sk).is_none() || !is_tcp(sk) {
        return 0;
    }
    let clocks = Clocks::of(sk);
    if clocks.as_ref().is_some_and(Clocks::quiet) {
        return 0;
    }
    if let Some(socket) = socket_id(&ctx) {
        let heard = clocks.map_or(Heard::NOTHING, |clocks| clocks.heard());
        facts::activity(socket, (0, 0), Side::Local, heard);
    }
    0
}

/// tcp_receive_reset(struct sock *sk): a valid RST arrived.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn btf_tcp_receive_reset(ctx: BtfTracePointContext) -> u32 {
    let sk: *const u8 = ctx.arg(0);
    if let Some(ports) = ports_of_closing(sk)
        && let Some(socket) = socket_id(&ctx)
    {
        facts::reset(event_kind::RESET_RECEIVED, socket, ports);
    }
    0
}

/// tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, reason): `sk` is NULL for
/// a RST in reply to a segment that matches no socket: not ours.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn btf_tcp_send_reset(ctx: BtfTracePointContext) -> u32 {
    let sk: *const u8 = ctx.arg(0);
    if sk.is_null() {
        return 0;
    }
    if let Some(ports) = ports_of_closing(sk)
        && let Some(socket) = socket_id(&ctx)
    {
        facts::reset(event_kind::RESET_SENT, socket, ports);
    }
    0
}

/// tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb[, int err]): `err`, on
/// kernels whose tracepoint has it, is non-zero for a retransmission the kernel could not send.
/// Only read where the agent found it in BTF: the global is frozen, so the verifier never walks
/// the read on kernels without it (where it would refuse the missing argument).
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn btf_tcp_retransmit_skb(ctx: BtfTracePointContext) -> u32 {
    if global(&RETRANSMIT_HAS_ERR) != 0 {
        let err: i32 = ctx.arg(2);
        if err != 0 {
            return 0;
        }
    }
    let sk: *const u8 = ctx.arg(0);
    if let Some(ports) = mail_ports(sk)
        && let Some(socket) = socket_id(&ctx)
    {
        let skb: u64 = ctx.arg(1);
        facts::retransmit(socket, ports, skb);
    }
    0
}

/// inet_sk_error_report(const struct sock *sk): the error is the socket's `sk_err`. Reported
/// by 4-tuple, as the classic tracepoint (which has no socket pointer) does.
#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn btf_inet_sk_error_report(ctx: BtfTracePointContext) -> u32 {
    let sk: *const u8 = ctx.arg(0);
    let Some(ports) = ports_of_closing(sk) else {
        return 0;
    };
    if !is_tcp(sk) {
        return 0;
    }
    let error = load::<i32>(sk, offset_of_field!(err));
    facts::error_report(ports, error, |event| fill_addresses(sk, event));
    0
}

/// tcp_destroy_sock(struct sock *sk): a socket is destroyed; reports its end if its CLOSE went
/// unreported. Unbound by then: the local port comes from `inet_sport`.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn btf_tcp_destroy_sock(ctx: BtfTracePointContext) -> u32 {
    let sk: *const u8 = ctx.arg(0);
    if let Some(ports) = ports_of_closing(sk)
        && let Some(socket) = socket_id(&ctx)
    {
        facts::destroyed(socket, ports, |event| {
            fill_addresses(sk, event);
            event.netns = netns(sk);
        });
    }
    0
}
