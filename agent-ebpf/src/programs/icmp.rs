//! ICMP errors received for watched connections, from fentry programs on `tcp_v4_err` /
//! `tcp_v6_err` (no tracepoint sees them). Where the kernel refuses the attach (no BPF
//! trampolines), icmp cuts still show through the errno the connection ends with.

use aya_ebpf::{macros::fentry, programs::FEntryContext};
use idlecut_ebpf::{AF_INET, AF_INET6, event_kind};

use super::{SKB_OFFSETS, emit, event_for, global, is_mail_port, kernel_read, now_ns, v4_mapped};

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
    let skb_off = global(&SKB_OFFSETS);
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
    let data: *const u8 = kernel_read(skb, global(&SKB_OFFSETS).data)?;
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
