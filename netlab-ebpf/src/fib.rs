//! The host's routing table, asked from a TC program (`bpf_fib_lookup`).

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibLookup},
    helpers::bpf_fib_lookup,
    programs::TcContext,
};
use netlab_common::nat::FlowKey;

/// `AF_INET`.
const AF_INET: u8 = 2;

/// The MACs a packet of `key` arriving on the program's interface
/// leaves with when the host routes it out of `out`: the next hop's
/// (resolved in the kernel's neighbour table) and `out`'s own. `None` when
/// the host would route it elsewhere, not at all, or its next hop is not
/// resolved yet.
#[inline(always)]
pub fn next_hop(ctx: &TcContext, out: u32, key: &FlowKey, len: u32) -> Option<([u8; 6], [u8; 6])> {
    // SAFETY: plain data, all zero is a valid lookup request.
    let mut params: FibLookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = key.proto;
    params.sport = key.sport;
    params.dport = key.dport;
    params.ifindex = crate::pkt::ctx::ifindex(ctx);
    params.__bindgen_anon_1.tot_len = len.min(u32::from(u16::MAX)) as u16;
    params.__bindgen_anon_3.ipv4_src = key.saddr;
    params.__bindgen_anon_4.ipv4_dst = key.daddr;
    // SAFETY: the helper reads and writes `params` only, within its size.
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb.cast(),
            &raw mut params,
            core::mem::size_of::<FibLookup>() as i32,
            0,
        )
    };
    (ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS) && params.ifindex == out)
        .then_some((params.dmac, params.smac))
}

/// Whether the host would forward a packet of `proto` from `saddr` to
/// `daddr`, arriving on the program's interface, out of another interface
/// (rather than deliver it to itself, or drop it).
#[inline(always)]
pub fn forwards(ctx: &TcContext, saddr: u32, daddr: u32, proto: u8, len: u32) -> bool {
    // SAFETY: plain data, all zero is a valid lookup request.
    let mut params: FibLookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = proto;
    params.ifindex = crate::pkt::ctx::ifindex(ctx);
    params.__bindgen_anon_1.tot_len = len.min(u32::from(u16::MAX)) as u16;
    params.__bindgen_anon_3.ipv4_src = saddr;
    params.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: the helper reads and writes `params` only, within its size.
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb.cast(),
            &raw mut params,
            core::mem::size_of::<FibLookup>() as i32,
            0,
        )
    };
    ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS) || ret == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH)
}
