//! Structure layouts from the kernel's BTF (`/sys/kernel/btf/vmlinux`), for the fentry
//! programs that read kernel structures.

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use btf_rs::{Btf, Struct, Type};
use idlecut_ebpf::{SkbOffsets, SockOffsets, SocketClocks};
use tracing::warn;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Parses the kernel's BTF, or says why it is not there.
pub fn vmlinux() -> anyhow::Result<Btf> {
    if !Path::new(VMLINUX).exists() {
        bail!("{VMLINUX} does not exist (the kernel was built without CONFIG_DEBUG_INFO_BTF)");
    }
    Btf::from_file(VMLINUX).map_err(|err| anyhow!("parsing {VMLINUX}: {err}"))
}

/// Where `head`, `data`, `transport_header` and `network_header` sit in `struct sk_buff` (it
/// keeps its header offsets in `struct_group`s, anonymous unions that [`byte_offset`] looks into).
pub fn skb_offsets(btf: &Btf) -> anyhow::Result<SkbOffsets> {
    let sk_buff = |name: &str| byte_offset(btf, "sk_buff", &[name]);
    Ok(SkbOffsets {
        head: sk_buff("head")?,
        data: sk_buff("data")?,
        transport_header: sk_buff("transport_header")?,
        network_header: sk_buff("network_header")?,
        len: optional_offset(btf, "sk_buff", &["len"], "PMTU black holes"),
    })
}

/// Where the `struct sock` fields the programs read are (see [`SockOffsets`]): the network
/// namespace (`sock.__sk_common.skc_net.net -> net.ns.inum`), the cookie, and what the BTF
/// tracepoint programs read directly: ports, family, protocol, error and addresses; and the
/// `struct tcp_sock` fields a retransmission is judged by (MSS, selectively acknowledged
/// segments).
pub fn sock_offsets(btf: &Btf) -> anyhow::Result<SockOffsets> {
    let common = |path: &[&str]| {
        let mut full = vec!["__sk_common"];
        full.extend_from_slice(path);
        byte_offset(btf, "sock", &full)
    };
    Ok(SockOffsets {
        net: common(&["skc_net", "net"])?,
        ns_inum: byte_offset(btf, "net", &["ns", "inum"])?,
        cookie: common(&["skc_cookie"])?,
        valid: 1,
        portpair: common(&["skc_portpair"])?,
        family: common(&["skc_family"])?,
        protocol: byte_offset(btf, "sock", &["sk_protocol"])?,
        err: byte_offset(btf, "sock", &["sk_err"])?,
        v4_local: common(&["skc_rcv_saddr"])?,
        v4_remote: common(&["skc_daddr"])?,
        v6_local: common(&["skc_v6_rcv_saddr"])?,
        v6_remote: common(&["skc_v6_daddr"])?,
        inet_sport: byte_offset(btf, "inet_sock", &["inet_sport"])?,
        err_soft: optional_offset(btf, "sock", &["sk_err_soft"], "ICMP errors without fentry"),
        mss_cache: optional_offset(btf, "tcp_sock", &["mss_cache"], "PMTU black holes"),
        sacked_out: optional_offset(btf, "tcp_sock", &["sacked_out"], "PMTU black holes"),
    })
}

/// Where TCP keeps a socket's own clocks (`struct tcp_sock`) and a received segment's flags
/// (`struct sk_buff`'s control block), for [`SocketClocks`]; its timing fields are left for
/// the caller (`clock::socket_clocks`).
pub fn socket_clock_offsets(btf: &Btf) -> anyhow::Result<SocketClocks> {
    let tcp_sock = |path: &[&str]| byte_offset(btf, "tcp_sock", path);
    Ok(SocketClocks {
        rcv_tstamp: tcp_sock(&["rcv_tstamp"])?,
        lrcvtime: tcp_sock(&["inet_conn", "icsk_ack", "lrcvtime"])?,
        ca_state: ca_state_byte(btf)?,
        retrans_out: tcp_sock(&["retrans_out"])?,
        tlp_high_seq: tcp_sock(&["tlp_high_seq"])?,
        segs_in: tcp_sock(&["segs_in"])?,
        skb_tcp_flags: byte_offset(btf, "sk_buff", &["cb"])?
            + byte_offset(btf, "tcp_skb_cb", &["tcp_flags"])?,
        ..SocketClocks::unknown()
    })
}

/// How many arguments a BTF tracepoint hands its programs (its `btf_trace_<name>` prototype,
/// less the context the kernel puts first), or None when BTF does not describe it.
pub fn tracepoint_arguments(btf: &Btf, name: &str) -> Option<usize> {
    let typedef = btf
        .resolve_types_by_name(&format!("btf_trace_{name}"))
        .ok()?
        .into_iter()
        .find_map(|ty| match ty {
            Type::Typedef(t) => Some(t),
            _ => None,
        })?;
    let Type::Ptr(pointer) = btf.resolve_chained_type(&typedef).ok()? else {
        return None;
    };
    match btf.resolve_chained_type(&pointer).ok()? {
        Type::FuncProto(proto) => proto.parameters.len().checked_sub(1),
        _ => None,
    }
}

/// The byte holding `icsk_ca_state` in `struct tcp_sock`, which the programs mask with
/// [`SocketClocks::CA_STATE_BITS`]: refused unless the member starts its byte and is that wide
/// (a bitfield, or a plain byte), so that another layout cannot be misread.
fn ca_state_byte(btf: &Btf) -> anyhow::Result<u16> {
    let path = ["inet_conn", "icsk_ca_state"];
    let (_, member) = member_at(btf, "tcp_sock", &path)?;
    let width = member.bitfield_size().unwrap_or(8);
    if !(SocketClocks::CA_STATE_BITS..=8).contains(&width) {
        bail!(
            "tcp_sock.inet_conn.icsk_ca_state is {width} bits wide, not the {} the programs read",
            SocketClocks::CA_STATE_BITS
        );
    }
    byte_offset(btf, "tcp_sock", &path)
}

/// The offset of a member that only one fact needs (`fact`), or 0 when this kernel's BTF does
/// not have it: the programs then leave that fact out (each of these members sits after its
/// struct's first, so 0 never is its offset), and everything else still works. Said once, at
/// start-up.
fn optional_offset(btf: &Btf, root: &str, path: &[&str], fact: &str) -> u16 {
    byte_offset(btf, root, path).unwrap_or_else(|err| {
        warn!(error = %format!("{err:#}"), "{fact} are not told on this kernel");
        0
    })
}

/// The byte offset of a member path (`["__sk_common", "skc_net", "net"]`) in a struct,
/// following embedded structs and unions (not pointers): the one way this module finds where a
/// member sits.
fn byte_offset(btf: &Btf, root: &str, path: &[&str]) -> anyhow::Result<u16> {
    let (bits, _) = member_at(btf, root, path)?;
    if !bits.is_multiple_of(8) {
        bail!("{root}.{} is not byte aligned", path.join("."));
    }
    u16::try_from(bits / 8).with_context(|| format!("{root}.{} offset too large", path.join(".")))
}

/// The bit offset of a member path in a struct, and the member (see [`byte_offset`]).
fn member_at(btf: &Btf, root: &str, path: &[&str]) -> anyhow::Result<(u32, btf_rs::Member)> {
    let mut current = struct_named(btf, root)?;
    let mut bits = 0u32;
    let mut found = None;
    for (i, name) in path.iter().enumerate() {
        let member = find_member(btf, &current, name).with_context(|| match i {
            0 => format!("no member `{name}` in struct {root}"),
            _ => format!(
                "no member `{name}` in struct {root} at {}",
                path[..i].join(".")
            ),
        })?;
        bits += member.0;
        if i + 1 < path.len() {
            current = match resolve_aggregate(btf, &member.1) {
                Some(inner) => inner,
                None => bail!("{root}.{} is not a struct or union", path[..=i].join(".")),
            };
        }
        found = Some(member.1);
    }
    let member = found.with_context(|| format!("an empty member path in struct {root}"))?;
    Ok((bits, member))
}

fn struct_named(btf: &Btf, name: &str) -> anyhow::Result<Struct> {
    btf.resolve_types_by_name(name)
        .map_err(|err| anyhow!("looking up struct {name}: {err}"))?
        .into_iter()
        .find_map(|ty| match ty {
            Type::Struct(st) => Some(st),
            _ => None,
        })
        .with_context(|| format!("no struct {name} in BTF"))
}

/// A member's bit offset and the member itself, looking into anonymous structs and unions.
fn find_member(btf: &Btf, st: &Struct, name: &str) -> Option<(u32, btf_rs::Member)> {
    for member in &st.members {
        let member_name = btf.resolve_name(member).unwrap_or_default();
        if member_name == name {
            return Some((member.bit_offset(), member.clone()));
        }
        if member_name.is_empty()
            && let Some(inner) = resolve_aggregate(btf, member)
            && let Some((offset, found)) = find_member(btf, &inner, name)
        {
            return Some((member.bit_offset() + offset, found));
        }
    }
    None
}

/// The struct or union a member is, through typedefs and qualifiers.
fn resolve_aggregate(btf: &Btf, member: &btf_rs::Member) -> Option<Struct> {
    let mut ty = btf.resolve_chained_type(member).ok()?;
    for _ in 0..8 {
        ty = match ty {
            Type::Struct(st) | Type::Union(st) => return Some(st),
            Type::Typedef(ref t) => btf.resolve_chained_type(t).ok()?,
            Type::Const(ref t) => btf.resolve_chained_type(t).ok()?,
            Type::Volatile(ref t) => btf.resolve_chained_type(t).ok()?,
            _ => return None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads this machine's BTF: the real thing, where it exists (it does on our machines).
    #[test]
    fn offsets_resolve_against_the_running_kernel() {
        let btf = match vmlinux() {
            Ok(btf) => btf,
            Err(err) if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
                panic!("our CI machines have BTF: {err:#}")
            }
            Err(err) => {
                eprintln!("SKIPPED: {err:#}");
                return;
            }
        };
        let skb = skb_offsets(&btf).unwrap();
        assert!(skb.head > 0 && skb.data > skb.head, "{skb:?}");
        let sock = sock_offsets(&btf).unwrap();
        assert_eq!(sock.valid, 1);
        assert!(sock.net < sock.cookie || sock.cookie < 64, "{sock:?}");
        // The ports are one 32-bit word, right after the address pair and the hash.
        assert_eq!(
            (sock.v4_remote, sock.v4_local, sock.portpair),
            (0, 4, 12),
            "{sock:?}"
        );
        // One walker for both structs: a missing member is named the same way at any depth.
        let missing =
            |root, path: &[&str]| format!("{:#}", byte_offset(&btf, root, path).unwrap_err());
        assert_eq!(
            missing("sk_buff", &["nope"]),
            "no member `nope` in struct sk_buff"
        );
        assert_eq!(
            missing("sock", &["__sk_common", "nope"]),
            "no member `nope` in struct sock at __sk_common"
        );
        // The members one fact needs are found here, and a kernel without one loses that fact
        // only.
        assert!(sock.err_soft > 0 && sock.mss_cache > 0 && sock.sacked_out > 0);
        assert!(skb.len > 0);
        assert_eq!(optional_offset(&btf, "tcp_sock", &["nope"], "a test"), 0);
        let clocks = socket_clock_offsets(&btf).unwrap();
        assert!(
            clocks.rcv_tstamp > 0 && clocks.lrcvtime > 0 && clocks.segs_in > 0,
            "{clocks:?}"
        );
        assert!(
            clocks.ca_state > 0 && clocks.retrans_out > 0 && clocks.tlp_high_seq > 0,
            "{clocks:?}"
        );
        // inet_sock_set_state(sk, oldstate, newstate); this kernel's tcp_retransmit_skb has
        // its `err` (its tracefs record says so too).
        assert_eq!(tracepoint_arguments(&btf, "inet_sock_set_state"), Some(3));
        assert_eq!(tracepoint_arguments(&btf, "tcp_retransmit_skb"), Some(3));
        assert_eq!(tracepoint_arguments(&btf, "no_such_tracepoint"), None);
        // The flags lie within the 48-byte control block.
        let cb = byte_offset(&btf, "sk_buff", &["cb"]).unwrap();
        assert!(
            (cb..cb + 48).contains(&clocks.skb_tcp_flags),
            "{clocks:?}, cb at {cb}"
        );
    }
}
