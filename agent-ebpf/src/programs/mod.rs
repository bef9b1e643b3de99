//! Maps, globals and the helpers every program shares. The programs themselves come in two hook
//! kinds that report the same facts through [`facts`]: BTF tracepoints ([`btf`], typed kernel
//! pointers read with direct loads: the default) and classic tracepoints ([`tracepoint`],
//! records read at offsets from tracefs: the fallback). [`icmp`] holds the fentry programs.

mod btf;
mod facts;
mod icmp;
mod tracepoint;

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP,
        BPF_RB_NO_WAKEUP,
    },
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use idlecut_ebpf::{
    ConnectionState, PortBitmap, PortRange, RawEvent, SkbOffsets, SockOffsets, SocketClocks,
    counter, defaults, event_kind,
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

/// CLOSE events the ring buffer had no room for, by socket, until user space takes them.
/// Not preallocated: empty unless the ring buffer overflowed.
#[map(name = "UNREPORTED")]
static UNREPORTED: HashMap<u64, RawEvent> =
    HashMap::with_max_entries(defaults::UNREPORTED_ENDS, BPF_F_NO_PREALLOC);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

// Globals set by the agent at load time (`EbpfLoader::override_global`), in the object's
// read-only data, which aya freezes before any program loads. Read through `read_volatile` so
// that the compiler does not fold in their placeholder values.
#[unsafe(no_mangle)]
static MAIL_PORTS: PortBitmap = [0; 1024];
#[unsafe(no_mangle)]
static PORT_RANGE: PortRange = PortRange::all();
#[unsafe(no_mangle)]
static MIN_IDLE_GAP_NS: u64 = defaults::MIN_IDLE_GAP_NS;
/// Waking the reader costs more than the rest of a program's run: events are submitted without
/// a wake-up (the agent drains the buffer on a timer) until this many bytes are waiting.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = DEFAULT_RING_BUFFER_BYTES as u64 / 4;
#[unsafe(no_mangle)]
static SOCK_OFFSETS: SockOffsets = SockOffsets::unknown();
#[unsafe(no_mangle)]
static SKB_OFFSETS: SkbOffsets = SkbOffsets::unknown();
#[unsafe(no_mangle)]
static SOCKET_CLOCKS: SocketClocks = SocketClocks::unknown();
/// See `idlecut_ebpf::RETRANSMIT_ERR_GLOBAL`.
#[unsafe(no_mangle)]
static RETRANSMIT_HAS_ERR: u8 = 0;

/// A global's value as the agent set it.
#[inline(always)]
fn global<T: Copy>(global: &'static T) -> T {
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

/// The ports, or None when neither is a watched port: the first test of every program. Two
/// comparisons settle most traffic that is not mail; the bitmap the rest.
#[inline(always)]
fn watched(local: u16, remote: u16) -> Option<(u16, u16)> {
    let range = global(&PORT_RANGE);
    if !range.contains(local) && !range.contains(remote) {
        return None;
    }
    (is_mail_port(local) || is_mail_port(remote)).then_some((local, remote))
}

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Sends an event to user space; a full ring buffer loses it (counted).
#[inline(always)]
fn emit(event: &RawEvent) {
    if !try_emit(event) {
        count(counter::RINGBUF_FULL);
    }
}

/// Sends a CLOSE event to user space. If the ring buffer is full it waits in the
/// UNREPORTED map for user space instead: an end is the one event that must not get lost
/// (the connection would stay open forever). Lost only if that map is full too.
#[inline(always)]
fn emit_end(event: &RawEvent) {
    if !try_emit(event)
        && UNREPORTED
            .insert(&event.socket, event, u64::from(BPF_ANY))
            .is_err()
    {
        count(counter::RINGBUF_FULL);
    }
}

/// Sends an event to user space; false when the ring buffer is full.
#[inline(always)]
fn try_emit(event: &RawEvent) -> bool {
    match EVENTS.reserve::<RawEvent>(0) {
        Some(mut entry) => {
            entry.write(*event);
            let wakeup_bytes = global(&WAKEUP_BYTES);
            let flags = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= wakeup_bytes {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(u64::from(flags));
            true
        }
        None => false,
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
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

/// The state of a tracked connection. A connection the start-up scan found is adopted here the
/// first time a program meets its socket: its seeded state moves from SEEDS (by cookie) to
/// CONNECTIONS (by socket), and user space is told which socket it is.
#[inline(always)]
fn state_of(socket: u64) -> Option<*mut ConnectionState> {
    if let Some(state) = CONNECTIONS.get_ptr_mut(&socket) {
        return Some(state);
    }
    if !SEEDING.get(0).is_some_and(|&seeding| seeding != 0) {
        return None;
    }
    let offsets = global(&SOCK_OFFSETS);
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
        // Counted (idlecut_kernel_state_insert_failures_total); no log statement, which would
        // cost every program that can adopt thousands of verified instructions.
        count(counter::STATE_INSERT_FAILED);
        return None;
    }
    let _ = SEEDS.remove(&cookie);
    // No log line here: the ADOPTED event tells user space, and a log statement on this path
    // costs every program that can adopt a few thousand verified instructions.
    let mut event = event_for(event_kind::ADOPTED, now_ns(), socket, 0, 0);
    event.value_ns = cookie;
    event.netns = netns_of(socket);
    emit(&event);
    CONNECTIONS.get_ptr_mut(&socket)
}

/// The inode of the socket's network namespace, or 0 when BTF could not tell where it is,
/// through checked reads: for classic tracepoints (whose socket is a number) and adoptions
/// (the BTF programs read it with plain loads on opens and closes).
#[inline(always)]
fn netns_of(socket: u64) -> u32 {
    let offsets = global(&SOCK_OFFSETS);
    if offsets.valid == 0 {
        return 0;
    }
    let net: Option<*const u8> = kernel_read(socket as *const u8, offsets.net);
    net.and_then(|net| kernel_read::<u32>(net, offsets.ns_inum))
        .unwrap_or(0)
}

/// Reads a `T` at `base + offset` in kernel memory, checked by `bpf_probe_read_kernel`: for
/// pointers the verifier knows nothing about (classic tracepoint records, fields behind a
/// pointer read from another structure).
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
