//! The host's routing table, asked from a TC or XDP program
//! (`bpf_fib_lookup`).

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibLookup},
    cty::c_void,
    helpers::bpf_fib_lookup,
    programs::{TcContext, XdpContext},
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

/// What a FIB lookup is asked from: the program's context (an skb or an
/// XDP buffer, which the helper takes alike) and the packet's interface
/// and length.
#[derive(Clone, Copy)]
pub struct Asker {
    ctx: *mut c_void,
    ifindex: u32,
    len: u32,
}

impl Asker {
    #[inline(always)]
    pub fn tc(ctx: &TcContext) -> Asker {
        Asker {
            ctx: ctx.skb.skb.cast(),
            ifindex: crate::pkt::ctx::ifindex(ctx),
            len: ctx.len(),
        }
    }

    #[inline(always)]
    pub fn xdp(ctx: &XdpContext) -> Asker {
        Asker {
            ctx: ctx.ctx.cast(),
            ifindex: ctx.ingress_ifindex() as u32,
            len: (ctx.data_end() - ctx.data()) as u32,
        }
    }
}

/// Whether the host would forward a packet of `proto` from `saddr` to
/// `daddr`, arriving on the asker's interface, out of another interface
/// (rather than deliver it to itself, or drop it).
#[inline(always)]
pub fn forwards(asker: Asker, saddr: u32, daddr: u32, proto: u8) -> bool {
    // SAFETY: plain data, all zero is a valid lookup request.
    let mut params: FibLookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = proto;
    params.ifindex = asker.ifindex;
    params.__bindgen_anon_1.tot_len = asker.len.min(u32::from(u16::MAX)) as u16;
    params.__bindgen_anon_3.ipv4_src = saddr;
    params.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: the helper reads and writes `params` only, within its size;
    // `ctx` is the running program's context.
    let ret = unsafe {
        bpf_fib_lookup(
            asker.ctx,
            &raw mut params,
            core::mem::size_of::<FibLookup>() as i32,
            0,
        )
    };
    ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS) || ret == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH)
}
