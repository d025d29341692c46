//! The `redirect` datapath: after NAT, hand each packet straight to where it
//! goes instead of through the bridge and the host's stack, as Cilium does.
//!
//! - To a lab namespace: `bpf_redirect_peer` into its veth (from TC ingress
//!   only), with the MACs the receiver expects and the TTL decremented when
//!   the packet crossed a router hop (it was addressed to the gateway).
//! - Toward the world: `bpf_redirect_neigh` out of the uplink (the kernel
//!   resolves the next hop's MAC); the uplink's egress program still
//!   masquerades.
//! - Anything else (the host itself, non-IPv4, fragments, broadcast and
//!   multicast, an address of a lab subnet no namespace holds, an expiring
//!   TTL) is left to the stack and the bridge, counted by reason per
//!   interface.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_NO_PREALLOC},
    helpers::{bpf_redirect_neigh, bpf_redirect_peer},
    macros::map,
    maps::PerCpuHashMap,
    programs::TcContext,
};
use netlab_common::nat::{APPLY_EGRESS, Endpoint, NET_UPLINK, RedirectKey, RedirectReason, Stat};

use crate::{
    endpoints,
    nat::{self, Iface, Verdict},
    pkt::{
        csum,
        ctx::{self, value_mut},
        eth::{ETH_ALEN, ETH_DEST_OFF, ETH_SOURCE_OFF, MacPair, is_group},
        parse::Packet,
    },
};

/// Not preallocated (`BPF_F_NO_PREALLOC`): a few keys per interface are
/// used, and preallocating 32,768 per-CPU values took 19 ms of every `up`.
#[map(name = "REDIRECT_STATS")]
static REDIRECT_STATS: PerCpuHashMap<RedirectKey, u64> =
    PerCpuHashMap::pinned(4096 * 8, BPF_F_NO_PREALLOC);

/// Whether the lab runs the `redirect` datapath.
#[inline(always)]
pub fn enabled() -> bool {
    nat::config().is_some_and(|cfg| cfg.redirect != 0)
}

#[inline(always)]
pub fn count(iface: &Iface, reason: RedirectReason) {
    let key = RedirectKey {
        ifindex: iface.ifindex,
        reason: reason as u32,
    };
    match value_mut(REDIRECT_STATS.get_ptr_mut(key)) {
        // Per-CPU: only this CPU writes it while we run.
        Some(n) => *n += 1,
        None => {
            let _ = REDIRECT_STATS.insert(key, 1, 0);
        }
    }
}

/// Where [`forward`] or [`bridge_to_backend`] sends a packet.
#[derive(Clone, Copy)]
pub enum Hop {
    /// Decided: passed on, dropped, or out of the uplink.
    Done(Verdict),
    /// Into the namespace behind this host-side veth, once [`into_peer`]
    /// has applied the egress NAT the peer redirect skips.
    Peer(u32),
}

/// Forwards a packet NAT has passed on TC ingress. `pkt` is the packet as
/// parsed, `after` its tuple once NAT rewrote it.
#[inline(always)]
pub fn forward(ctx: &TcContext, iface: &Iface, pkt: &Packet, after: &Packet) -> Hop {
    decode(netlab_redirect_forward(ctx.skb.skb, iface, pkt, after))
}

/// [`forward`] as a global BPF function, verified once: its endpoint,
/// uplink and fallback paths, each with a TTL rewrite, multiplied every
/// path NAT left (measured, with `ingress` calling it once where it made
/// two inlined calls and the egress NAT a peer redirect needs moved out to
/// [`into_peer`]: nat_ingress 26k → 20k verified instructions).
/// It calls no other global function, so its stack does not add to
/// conntrack's under the program's.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netlab_redirect_forward(
    skb: *mut __sk_buff,
    iface: *const Iface,
    pkt: *const Packet,
    after: *const Packet,
) -> u64 {
    // SAFETY: the verifier checks the pointers' memory; null is refused here.
    let refs = unsafe { (iface.as_ref(), pkt.as_ref(), after.as_ref()) };
    let (Some(iface), Some(pkt), Some(after)) = refs else {
        return encode(Hop::Done(Verdict::Drop(Stat::WriteFailed)));
    };
    encode(forward_packet(&TcContext::new(skb), iface, pkt, after))
}

/// How [`netlab_redirect_forward`] returns a [`Hop`]: its kind in the high
/// half, its ifindex or reason in the low.
const HOP_PASS: u64 = 0;
const HOP_DROP: u64 = 1;
const HOP_NEIGH: u64 = 2;
const HOP_PEER: u64 = 3;

#[inline(always)]
fn encode(hop: Hop) -> u64 {
    let (kind, value) = match hop {
        Hop::Done(Verdict::Drop(reason)) => (HOP_DROP, reason as u32),
        Hop::Done(Verdict::RedirectNeigh(ifindex)) => (HOP_NEIGH, ifindex),
        Hop::Peer(ifindex) => (HOP_PEER, ifindex),
        // forward_packet decides nothing else.
        Hop::Done(_) => (HOP_PASS, 0),
    };
    (kind << 32) | u64::from(value)
}

/// The hop [`encode`] made, through `black_box` (as `csum::decode`: the
/// verifier takes a global function's result for any value).
#[inline(always)]
fn decode(code: u64) -> Hop {
    let code = core::hint::black_box(code);
    let value = code as u32;
    match code >> 32 {
        HOP_PASS => Hop::Done(Verdict::Pass),
        HOP_NEIGH => Hop::Done(Verdict::RedirectNeigh(value)),
        HOP_PEER => Hop::Peer(value),
        _ => Hop::Done(Verdict::Drop(
            Stat::ALL
                .get(value as usize)
                .copied()
                .unwrap_or(Stat::WriteFailed),
        )),
    }
}

#[inline(always)]
fn forward_packet(ctx: &TcContext, iface: &Iface, pkt: &Packet, after: &Packet) -> Hop {
    let daddr = after.key.daddr;
    if nat::is_local(daddr) {
        count(iface, RedirectReason::FallbackLocal);
        return Hop::Done(Verdict::Pass);
    }
    let Some(eth_dst) = ctx::load::<[u8; ETH_ALEN]>(ctx, ETH_DEST_OFF) else {
        count(iface, RedirectReason::FallbackUnparsed);
        return Hop::Done(Verdict::Pass);
    };
    if is_group(&eth_dst) || pkt.ip.first_fragment {
        // Broadcast and multicast are the bridge's to flood; fragments
        // leave in order through the stack.
        count(iface, RedirectReason::FallbackUnparsed);
        return Hop::Done(Verdict::Pass);
    }
    if let Some(endpoint) = endpoints::get(daddr) {
        return to_endpoint(ctx, iface, pkt, endpoint, eth_dst);
    }
    let uplink = nat::config().map_or(0, |cfg| cfg.uplink_ifindex);
    // Only what lies beyond the uplink goes out of it: an address of a lab
    // subnet that no namespace holds (a subnet broadcast, say) stays here.
    let kind = nat::net_kind(daddr);
    let beyond = kind == 0 || kind == NET_UPLINK;
    if uplink != 0 && uplink != iface.ifindex && beyond {
        if let Some(stop) = route_hop(ctx, iface, pkt) {
            return Hop::Done(stop);
        }
        count(iface, RedirectReason::Uplink);
        return Hop::Done(Verdict::RedirectNeigh(uplink));
    }
    count(iface, RedirectReason::FallbackUnknown);
    Hop::Done(Verdict::Pass)
}

/// A router hop: the TTL goes down by one. `Some` when the packet must not
/// be redirected: its TTL would expire (the stack answers time exceeded), or
/// the rewrite failed.
#[inline(always)]
fn route_hop(ctx: &TcContext, iface: &Iface, pkt: &Packet) -> Option<Verdict> {
    match csum::decrement_ttl(ctx, pkt.ip.ttl, pkt.ip.proto) {
        Ok(true) => None,
        Ok(false) => {
            count(iface, RedirectReason::FallbackTtl);
            Some(Verdict::Pass)
        }
        Err(reason) => Some(Verdict::Drop(reason)),
    }
}

#[inline(always)]
fn to_endpoint(
    ctx: &TcContext,
    iface: &Iface,
    pkt: &Packet,
    endpoint: &Endpoint,
    eth_dst: [u8; ETH_ALEN],
) -> Hop {
    if endpoint.ifindex == iface.ifindex {
        count(iface, RedirectReason::FallbackSameIface);
        return Hop::Done(Verdict::Pass);
    }
    // Addressed to a gateway (ours, or the uplink's MAC from outside):
    // a router hop. Otherwise the namespaces talk on one segment.
    let routed = eth_dst != endpoint.mac;
    if routed && let Some(stop) = route_hop(ctx, iface, pkt) {
        return Hop::Done(stop);
    }
    let mut macs: MacPair = [0; 12];
    macs[..ETH_ALEN].copy_from_slice(&endpoint.mac);
    if routed {
        macs[ETH_ALEN..].copy_from_slice(&endpoint.gateway_mac);
    } else if let Some(src) = ctx::load::<[u8; ETH_ALEN]>(ctx, ETH_SOURCE_OFF) {
        macs[ETH_ALEN..].copy_from_slice(&src);
    }
    if ctx.store(ETH_DEST_OFF, &macs, 0).is_err() {
        return Hop::Done(Verdict::Drop(Stat::WriteFailed));
    }
    Hop::Peer(endpoint.ifindex)
}

/// A lab namespace's new or known flow, just DNATed on its way in, to a
/// backend on the namespace's own segment: handed on as a bridge would,
/// as br_netfilter does for iptables' DNAT. Its destination MAC becomes the
/// backend's; it is not routed, so its TTL stays and the host sends the
/// client no ICMP redirect ("reach 198.18.0.1 through your neighbour").
/// `None` when the backend sits elsewhere (the packet is then routed).
#[inline(always)]
pub fn bridge_to_backend(ctx: &TcContext, iface: &Iface, after: &Packet) -> Option<Hop> {
    let endpoint = endpoints::get(after.key.daddr)?;
    let eth_dst = ctx::load::<[u8; ETH_ALEN]>(ctx, ETH_DEST_OFF)?;
    // Addressed to the gateway of the backend's segment: the same segment.
    if eth_dst != endpoint.gateway_mac || endpoint.ifindex == iface.ifindex {
        return None;
    }
    if ctx.store(ETH_DEST_OFF, &endpoint.mac, 0).is_err() {
        return Some(Hop::Done(Verdict::Drop(Stat::WriteFailed)));
    }
    if !enabled() {
        // The bridge forwards it by its new destination MAC.
        return Some(Hop::Done(Verdict::Pass));
    }
    Some(Hop::Peer(endpoint.ifindex))
}

/// The peer redirect of a [`Hop::Peer`]: the target veth's egress hook is
/// skipped by it, so the source rewrite that hook would have made (replies
/// to published ports) is applied here, to `after`.
#[inline(always)]
pub fn into_peer(ctx: &TcContext, iface: &Iface, after: &Packet, ifindex: u32) -> Verdict {
    if let Verdict::Drop(reason) = nat::translate_known(ctx, after, APPLY_EGRESS) {
        return Verdict::Drop(reason);
    }
    count(iface, RedirectReason::Peer);
    Verdict::RedirectPeer(ifindex)
}

/// Performs a redirect verdict.
#[inline(always)]
pub fn peer(ifindex: u32) -> i32 {
    // SAFETY: plain helper.
    unsafe { bpf_redirect_peer(ifindex, 0) as i32 }
}

#[inline(always)]
pub fn neigh(ifindex: u32) -> i32 {
    // SAFETY: plain helper; a null params pointer asks the kernel to look
    // the next hop up in the FIB.
    unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}
