use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_NOEXIST, BPF_RB_NO_WAKEUP},
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, map, tracepoint},
    maps::{HashMap, LruHashMap, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};

// Do-nothing programs on idlecut's tracepoints, of both hook kinds idlecut uses: classic
// tracepoints (the kernel formats a record for each event, then runs the program) and BTF
// tracepoints (`tp_btf`: the program gets the tracepoint's arguments, no record).

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn nop_set_state(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint(category = "tcp", name = "tcp_probe")]
pub fn nop_tcp_probe(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn nop_send_len(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn nop_rcv_reset(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn nop_send_reset(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn nop_retransmit(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint(category = "sock", name = "inet_sk_error_report")]
pub fn nop_err_report(_ctx: TracePointContext) -> u32 {
    0
}

#[tracepoint(category = "tcp", name = "tcp_destroy_sock")]
pub fn nop_destroy_sock(_ctx: TracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn btf_nop_set_state(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "tcp_probe")]
pub fn btf_nop_tcp_probe(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn btf_nop_send_len(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn btf_nop_rcv_reset(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn btf_nop_send_reset(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn btf_nop_retransmit(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn btf_nop_err_report(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn btf_nop_destroy_sock(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[map(name = "COUNTS")]
static COUNTS: HashMap<u32, u64> = HashMap::with_max_entries(1024, 0);

/// Counts calls per thread: a lookup, an insert the first time, an increment. (ebpf_exporter's
/// probe adds atomically; the BPF target's `core` has no atomic read-modify-write, and a key is
/// only ever written by its own thread, on one CPU at a time.)
#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn map_send_len(_ctx: TracePointContext) -> u32 {
    count_call();
    0
}

/// The same on a BTF tracepoint, the hook ebpf_exporter's benchmark uses.
#[btf_tracepoint(function = "sock_send_length")]
pub fn btf_map_send_len(_ctx: BtfTracePointContext) -> u32 {
    count_call();
    0
}

#[inline(always)]
fn count_call() {
    // The low half is the thread id, as in ebpf_exporter's probe.
    let key = bpf_get_current_pid_tgid() as u32;
    match COUNTS.get_ptr_mut(&key) {
        Some(count) => {
            // SAFETY: a valid, aligned u64 from a successful lookup, written only by the
            // thread it counts.
            unsafe { *count += 1 };
        }
        None => {
            let _ = COUNTS.insert(&key, &1, u64::from(BPF_NOEXIST));
        }
    }
}

// What a tracepoint field read costs, on sock:sock_send_length (the bench checks that the
// record's layout is the expected one before attaching the compile-time variant).

/// Offset of `protocol` in sock:sock_send_length's record, set by the bench from tracefs, as
/// idlecut sets its field offsets.
#[unsafe(no_mangle)]
static SEND_LENGTH_PROTOCOL: u16 = 0;

/// The offset the compile-time variant assumes (Linux 6.x x86_64 and arm64).
const SEND_LENGTH_PROTOCOL_CONST: usize = 18;

#[inline(always)]
fn protocol_offset() -> usize {
    // SAFETY: a valid static, read through a volatile load so that its load-time value counts.
    usize::from(unsafe { core::ptr::read_volatile(&SEND_LENGTH_PROTOCOL) })
}

/// One field read through bpf_probe_read_kernel at an offset known at load time: how idlecut
/// reads every field.
#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn helper_read(ctx: TracePointContext) -> u32 {
    // SAFETY: bpf_probe_read_kernel checks the access.
    let _protocol = unsafe { ctx.read_at::<u16>(protocol_offset()) };
    0
}

/// The same field loaded directly from the record at an offset known at load time. The
/// verifier only allows constant offsets into a tracepoint's context, so this one is expected
/// to be rejected; the bench records why.
#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn direct_read(ctx: TracePointContext) -> u32 {
    // SAFETY: inside the record (the verifier checks context accesses).
    let _protocol = unsafe {
        core::ptr::read_volatile(
            ctx.as_ptr()
                .cast::<u8>()
                .add(protocol_offset())
                .cast::<u16>(),
        )
    };
    0
}

/// The same field loaded directly at a compile-time offset: one instruction.
#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn const_read(ctx: TracePointContext) -> u32 {
    // SAFETY: inside the record, whose layout the bench checked against tracefs.
    let _protocol = unsafe {
        core::ptr::read_volatile(
            ctx.as_ptr()
                .cast::<u8>()
                .add(SEND_LENGTH_PROTOCOL_CONST)
                .cast::<u16>(),
        )
    };
    0
}

// What idlecut's heavier steps cost, on sock:sock_send_length: a per-socket state inserted and
// deleted (as on a connection's open and close), in an LRU hash map like idlecut's and in a
// plain hash map; and an 88-byte event (idlecut's RawEvent) through a ring buffer whose reader
// is woken for every event, or never (it polls).

#[map(name = "LRU_STATES")]
static LRU_STATES: LruHashMap<u64, [u64; 5]> = LruHashMap::with_max_entries(65_536, 0);

#[map(name = "HASH_STATES")]
static HASH_STATES: HashMap<u64, [u64; 5]> = HashMap::with_max_entries(65_536, 0);

#[map(name = "RECORDS")]
static RECORDS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// idlecut's event record size.
const RECORD_BYTES: usize = 88;

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn lru_insert_del(_ctx: TracePointContext) -> u32 {
    let key = bpf_get_current_pid_tgid();
    let _ = LRU_STATES.insert(&key, &[0; 5], u64::from(BPF_NOEXIST));
    let _ = LRU_STATES.remove(&key);
    0
}

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn hash_insert_del(_ctx: TracePointContext) -> u32 {
    let key = bpf_get_current_pid_tgid();
    let _ = HASH_STATES.insert(&key, &[0; 5], u64::from(BPF_NOEXIST));
    let _ = HASH_STATES.remove(&key);
    0
}

#[inline(always)]
fn emit(flags: u64) {
    if let Some(mut entry) = RECORDS.reserve::<[u8; RECORD_BYTES]>(0) {
        entry.write([0; RECORD_BYTES]);
        entry.submit(flags);
    }
}

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn ringbuf_wakeup(_ctx: TracePointContext) -> u32 {
    emit(0);
    0
}

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn ringbuf_quiet(_ctx: TracePointContext) -> u32 {
    emit(u64::from(BPF_RB_NO_WAKEUP));
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
