//! Structure layouts from the kernel's BTF (`/sys/kernel/btf/vmlinux`), for the fentry
//! programs that read kernel structures.

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use btf_rs::{Btf, Struct, Type};
use idlecut_ebpf::SkbOffsets;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Parses the kernel's BTF, or says why it is not there.
pub fn vmlinux() -> anyhow::Result<Btf> {
    if !Path::new(VMLINUX).exists() {
        bail!("{VMLINUX} does not exist (the kernel was built without CONFIG_DEBUG_INFO_BTF)");
    }
    Btf::from_file(VMLINUX).map_err(|err| anyhow!("parsing {VMLINUX}: {err}"))
}

/// Where `head`, `data` and `transport_header` sit in `struct sk_buff`.
pub fn skb_offsets(btf: &Btf) -> anyhow::Result<SkbOffsets> {
    let sk_buff = btf
        .resolve_types_by_name("sk_buff")
        .map_err(|err| anyhow!("looking up struct sk_buff: {err}"))?
        .into_iter()
        .find_map(|ty| match ty {
            Type::Struct(st) => Some(st),
            _ => None,
        })
        .context("no struct sk_buff in BTF")?;
    let byte_offset = |name: &str| -> anyhow::Result<u16> {
        let bits = member_bit_offset(btf, &sk_buff, name)
            .with_context(|| format!("no member `{name}` in struct sk_buff"))?;
        if bits % 8 != 0 {
            bail!("sk_buff.{name} is not byte aligned");
        }
        u16::try_from(bits / 8).with_context(|| format!("sk_buff.{name} offset too large"))
    };
    Ok(SkbOffsets {
        head: byte_offset("head")?,
        data: byte_offset("data")?,
        transport_header: byte_offset("transport_header")?,
        _pad: 0,
    })
}

/// The bit offset of member `name`, looking into anonymous structs and unions (sk_buff keeps
/// its header offsets in `struct_group`s).
fn member_bit_offset(btf: &Btf, st: &Struct, name: &str) -> Option<u32> {
    for member in &st.members {
        let member_name = btf.resolve_name(member).unwrap_or_default();
        if member_name == name {
            return Some(member.bit_offset());
        }
        if member_name.is_empty()
            && let Ok(Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(member)
            && let Some(offset) = member_bit_offset(btf, &inner, name)
        {
            return Some(member.bit_offset() + offset);
        }
    }
    None
}
