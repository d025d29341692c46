//! The `redirect` datapath: after NAT, hand each packet straight to where it
//! goes instead of through the bridge and the host's stack, as Cilium does.
//!
//! - To a lab namespace: `bpf_redirect_peer` into its veth (from TC ingress
//!   only), with the MACs the receiver expects and the TTL decremented when
//!   the packet crossed a router hop (it was addressed to the gateway).
//! - Toward the world: `bpf_redirect_neigh` out of the uplink (the kernel
//!   resolves the next hop's MAC); the uplink's egress program still
//!   masquerades.
//! - Anything else (the host itself, non-IPv4, fragments, an expiring TTL)
//!   is left to the stack, counted by reason per interface.

use aya_ebpf::{
    helpers::{bpf_redirect_neigh, bpf_redirect_peer},
    macros::map,
    maps::{HashMap, PerCpuHashMap},
    programs::TcContext,
};
use netlab_common::{
    IfaceKey,
    nat::{APPLY_EGRESS, Endpoint, RedirectReason},
};

use crate::{
    nat::{self, LOCAL_ADDRS, NAT_CONFIG, Verdict},
    parse::{ETH_HLEN, Ipv4Hdr, parse},
};

#[map(name = "ENDPOINTS")]
static ENDPOINTS: HashMap<u32, Endpoint> = HashMap::pinned(4096, 0);

#[map(name = "REDIRECT_STATS")]
static REDIRECT_STATS: PerCpuHashMap<IfaceKey, u64> = PerCpuHashMap::pinned(4096 * 8, 0);

/// Whether the lab runs the `redirect` datapath.
#[inline(always)]
pub fn enabled() -> bool {
    NAT_CONFIG.get(0).is_some_and(|cfg| cfg.redirect != 0)
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: ifindex read from the context.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
pub fn count(ctx: &TcContext, reason: RedirectReason) {
    let key = IfaceKey {
        ifindex: ifindex(ctx),
        direction: reason as u32,
    };
    match REDIRECT_STATS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = REDIRECT_STATS.insert(key, 1, 0);
        }
    }
}

/// Forwards a packet NAT has passed (already rewritten) on TC ingress.
#[inline(always)]
pub fn forward(ctx: &TcContext) -> Verdict {
    let Ok(ip) = ctx.load::<Ipv4Hdr>(ETH_HLEN) else {
        count(ctx, RedirectReason::FallbackUnparsed);
        return Verdict::Pass;
    };
    if LOCAL_ADDRS.get_ptr(ip.daddr).is_some() {
        count(ctx, RedirectReason::FallbackLocal);
        return Verdict::Pass;
    }
    let here = ifindex(ctx);
    if let Some(endpoint) = ENDPOINTS.get_ptr(ip.daddr) {
        // SAFETY: a map value pointer from a successful lookup.
        let endpoint = unsafe { *endpoint };
        if endpoint.ifindex == here {
            count(ctx, RedirectReason::FallbackSameIface);
            return Verdict::Pass;
        }
        let Ok(eth_dst) = ctx.load::<[u8; 6]>(0) else {
            count(ctx, RedirectReason::FallbackUnparsed);
            return Verdict::Pass;
        };
        // Addressed to a gateway (ours, or the uplink's MAC from outside):
        // a router hop. Otherwise the namespaces talk on one segment.
        let routed = eth_dst != endpoint.mac;
        if routed && !decrement_ttl(ctx, &ip) {
            count(ctx, RedirectReason::FallbackTtl);
            return Verdict::Pass;
        }
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&endpoint.mac);
        if routed {
            macs[6..].copy_from_slice(&endpoint.gateway_mac);
        } else if let Ok(src) = ctx.load::<[u8; 6]>(6) {
            macs[6..].copy_from_slice(&src);
        }
        if ctx.store(0, &macs, 0).is_err() {
            count(ctx, RedirectReason::FallbackUnparsed);
            return Verdict::Pass;
        }
        // The target veth's egress hook is skipped by a peer redirect: apply
        // the source rewrite it would have made (replies to published ports).
        if let Ok(pkt) = parse(ctx)
            && let Some(Verdict::Drop) = nat::apply_known(ctx, &pkt, APPLY_EGRESS)
        {
            return Verdict::Drop;
        }
        count(ctx, RedirectReason::Peer);
        return Verdict::RedirectPeer(endpoint.ifindex);
    }
    let uplink = NAT_CONFIG.get(0).map_or(0, |cfg| cfg.uplink_ifindex);
    if uplink != 0 && uplink != here {
        if !decrement_ttl(ctx, &ip) {
            count(ctx, RedirectReason::FallbackTtl);
            return Verdict::Pass;
        }
        count(ctx, RedirectReason::Uplink);
        return Verdict::RedirectNeigh(uplink);
    }
    count(ctx, RedirectReason::FallbackUnknown);
    Verdict::Pass
}

/// Decrements the TTL of a routed packet, fixing the IP checksum; false when
/// it would expire (the stack then answers with ICMP time exceeded).
#[inline(always)]
fn decrement_ttl(ctx: &TcContext, ip: &Ipv4Hdr) -> bool {
    if ip.ttl <= 1 {
        return false;
    }
    // TTL and protocol share one 16-bit word of the checksum.
    let old = u16::from_be_bytes([ip.ttl, ip.proto]).to_be();
    let new = u16::from_be_bytes([ip.ttl - 1, ip.proto]).to_be();
    ctx.l3_csum_replace(ETH_HLEN + 10, u64::from(old), u64::from(new), 2)
        .is_ok()
        && ctx.store(ETH_HLEN + 8, &(ip.ttl - 1), 0).is_ok()
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
