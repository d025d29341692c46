//! The `redirect` datapath: after NAT, hand each packet straight to where it
//! goes instead of through the bridge and the host's stack, as Cilium does.
//!
//! - To a lab namespace: `bpf_redirect_peer` into its veth (from TC ingress
//!   only), with the MACs the receiver expects and the TTL decremented when
//!   the packet crossed a router hop (it was addressed to the gateway).
//! - Toward the world: `bpf_redirect_neigh` out of the uplink (the kernel
//!   resolves the next hop's MAC); the uplink's egress program still
//!   masquerades.
//! - Anything else (the host itself, ICMP errors, fragments, broadcast and
//!   multicast, link-scope IPv6, an address of a lab subnet no namespace
//!   holds, an expiring TTL or hop limit, another node's pods, which the
//!   host routes) is left to the stack and the bridge, counted by reason
//!   per interface.
//!
//! IPv6 takes the same hops ([`forward6`], [`into_peer6`]) after NAT66.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_redirect_neigh, bpf_redirect_peer},
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};
use netlab_common::nat::{
    APPLY_EGRESS, Endpoint, ROLE_LAB, RedirectReason, Stat, redirect_stat_index,
};

use crate::{
    admit, endpoints, global,
    lab::{Iface, Lab},
    nat, nat6,
    pkt::{
        csum,
        ctx::{self, per_cpu_value_mut},
        eth::{self, ETH_ALEN, is_group},
        ipv6,
        parse::Packet,
        parse6::Packet6,
    },
    verdict::{Action, Verdict, Verdict6},
};

/// Per-CPU counters, a row of `REDIRECT_REASON_SLOTS` per interface slot
/// (`IfaceConfig::slot`): an array index, where a hash of (ifindex,
/// reason) cost a lookup per redirected packet. Sized for the lab's
/// interfaces at load.
#[map(name = "REDIRECT_STATS")]
static REDIRECT_STATS: PerCpuArray<u64> = PerCpuArray::pinned(8, 0);

#[inline(always)]
pub fn count(iface: &Iface, reason: RedirectReason) {
    if iface.slot == 0 {
        return;
    }
    let index = redirect_stat_index(iface.slot, reason as u32);
    // Per-CPU: only this CPU writes it while we run.
    if let Some(n) = per_cpu_value_mut(&REDIRECT_STATS, index) {
        *n += 1;
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

global::function! {
    /// [`forward`] as a global BPF function, verified once: its endpoint,
    /// uplink and fallback paths, each with a TTL rewrite, multiplied every
    /// path NAT left (measured, with `ingress` calling it once where it
    /// made two inlined calls and the egress NAT a peer redirect needs
    /// moved out to [`into_peer`]: nat_ingress 26k → 20k verified
    /// instructions). It calls no other global function, so its stack does
    /// not add to conntrack's under the program's.
    fn netlab_redirect_forward(
        skb: *mut __sk_buff,
        iface: *const Iface,
        pkt: *const Packet,
        after: *const Packet,
    ) -> u64 {
        // SAFETY: the verifier checks the pointers' memory; null is refused here.
        let refs = unsafe { (iface.as_ref(), pkt.as_ref(), after.as_ref()) };
        let (Some(iface), Some(pkt), Some(after), Some(lab)) = (refs.0, refs.1, refs.2, Lab::get())
        else {
            return encode(Hop::Done(Verdict::drop(Stat::WriteFailed)));
        };
        encode(forward_packet(&TcContext::new(skb), &lab, iface, pkt, after))
    }
}

/// IPv6's [`forward`]: a packet NAT66 has passed (or rewritten, as
/// `verdict` says) on TC ingress, `pkt` as parsed.
#[inline(always)]
pub fn forward6(ctx: &TcContext, iface: &Iface, pkt: &Packet6, verdict: &Verdict6) -> Hop {
    decode(netlab_redirect_forward6(
        ctx.skb.skb,
        iface.ifindex,
        pkt,
        verdict,
    ))
}

global::function! {
    /// [`forward6`] as a global BPF function, verified once (as
    /// [`netlab_redirect_forward`]). It takes the interface's index, not
    /// the interface: the IPv6 program's frame has no room to spare for
    /// it (its calls into NAT66 and conntrack fill the 512 bytes).
    fn netlab_redirect_forward6(
        skb: *mut __sk_buff,
        ifindex: u32,
        pkt: *const Packet6,
        verdict: *const Verdict6,
    ) -> u64 {
        // SAFETY: the verifier checks the pointers' memory; null is refused here.
        let refs = unsafe { (pkt.as_ref(), verdict.as_ref()) };
        let (Some(pkt), Some(verdict), Some(lab)) = (refs.0, refs.1, Lab::get()) else {
            return encode(Hop::Done(Verdict::drop(Stat::WriteFailed)));
        };
        let daddr = if verdict.action == Action::Rewritten {
            &verdict.rewrite.daddr
        } else {
            &pkt.key.daddr
        };
        let iface = Iface::of_index(ifindex);
        encode(forward_packet6(&TcContext::new(skb), &lab, &iface, pkt, daddr))
    }
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
        Hop::Done(verdict) => match verdict.action {
            Action::Drop => (HOP_DROP, verdict.reason as u32),
            Action::RedirectNeigh => (HOP_NEIGH, verdict.arg),
            // forward_packet decides nothing else.
            _ => (HOP_PASS, 0),
        },
        Hop::Peer(ifindex) => (HOP_PEER, ifindex),
    };
    (kind << 32) | u64::from(value)
}

/// The hop [`encode`] made, through `black_box` (as `csum::decode`: the
/// verifier takes a global function's result for any value).
#[inline(always)]
fn decode(code: u64) -> Hop {
    let code = global::returned(code);
    let value = code as u32;
    match code >> 32 {
        HOP_PASS => Hop::Done(Verdict::PASS),
        HOP_NEIGH => Hop::Done(Verdict::neigh(value)),
        HOP_PEER => Hop::Peer(value),
        _ => Hop::Done(Verdict::drop(
            Stat::ALL
                .get(value as usize)
                .copied()
                .unwrap_or(Stat::WriteFailed),
        )),
    }
}

#[inline(always)]
fn forward_packet(ctx: &TcContext, lab: &Lab, iface: &Iface, pkt: &Packet, after: &Packet) -> Hop {
    let daddr = after.key.daddr;
    if lab.is_local(daddr) {
        count(iface, RedirectReason::FallbackLocal);
        return Hop::Done(Verdict::PASS);
    }
    let Some(eth_dst) = eth::load_daddr(ctx) else {
        count(iface, RedirectReason::FallbackUnparsed);
        return Hop::Done(Verdict::PASS);
    };
    if is_group(&eth_dst) || pkt.ip.first_fragment {
        // Broadcast and multicast are the bridge's to flood; fragments
        // leave in order through the stack.
        count(iface, RedirectReason::FallbackUnparsed);
        return Hop::Done(Verdict::PASS);
    }
    if let Some(endpoint) = endpoints::get(daddr) {
        return to_endpoint(ctx, iface, &endpoint, eth_dst, || {
            route_hop(ctx, iface, pkt)
        });
    }
    if lab.is_peer(daddr) {
        count(iface, RedirectReason::FallbackUnknown);
        return Hop::Done(Verdict::PASS);
    }
    let uplink = lab.cfg.uplink_ifindex;
    // Only what lies beyond the uplink goes out of it: an address of a lab
    // subnet that no namespace holds (a subnet broadcast, say) stays here.
    let beyond = lab.in_uplink_net(daddr) || !lab.is_internal(daddr);
    if uplink != 0 && uplink != iface.ifindex && beyond {
        if let Some(stop) = route_hop(ctx, iface, pkt) {
            return Hop::Done(stop);
        }
        count(iface, RedirectReason::Uplink);
        return Hop::Done(Verdict::neigh(uplink));
    }
    count(iface, RedirectReason::FallbackUnknown);
    Hop::Done(Verdict::PASS)
}

/// IPv6's [`forward_packet`]: the same hops, without another node's pods
/// (nodes peer over IPv4).
#[inline(always)]
fn forward_packet6(
    ctx: &TcContext,
    lab: &Lab,
    iface: &Iface,
    pkt: &Packet6,
    daddr: &[u32; 4],
) -> Hop {
    // Link-local and multicast (neighbour discovery) stay on their link.
    if lab.is_local6(daddr) || ipv6::is_link_scope(daddr) {
        count(iface, RedirectReason::FallbackLocal);
        return Hop::Done(Verdict::PASS);
    }
    let Some(eth_dst) = eth::load_daddr(ctx) else {
        count(iface, RedirectReason::FallbackUnparsed);
        return Hop::Done(Verdict::PASS);
    };
    if is_group(&eth_dst) || pkt.first_fragment {
        count(iface, RedirectReason::FallbackUnparsed);
        return Hop::Done(Verdict::PASS);
    }
    // A link-scope source may not be routed: the stack answers it.
    if ipv6::stays_on_link(&pkt.key.saddr) {
        count(iface, RedirectReason::FallbackLocal);
        return Hop::Done(Verdict::PASS);
    }
    if let Some(endpoint) = endpoints::get6(daddr) {
        return to_endpoint(ctx, iface, &endpoint, eth_dst, || route_hop6(ctx, iface));
    }
    let uplink = lab.cfg.uplink_ifindex;
    let beyond = lab.in_uplink_net6(daddr) || !lab.is_internal6(daddr);
    if uplink != 0 && uplink != iface.ifindex && beyond {
        if let Some(stop) = route_hop6(ctx, iface) {
            return Hop::Done(stop);
        }
        count(iface, RedirectReason::Uplink);
        return Hop::Done(Verdict::neigh(uplink));
    }
    count(iface, RedirectReason::FallbackUnknown);
    Hop::Done(Verdict::PASS)
}

/// IPv6's [`route_hop`]: the hop limit goes down by one.
#[inline(always)]
fn route_hop6(ctx: &TcContext, iface: &Iface) -> Option<Verdict> {
    match ipv6::decrement_hop_limit(ctx) {
        Ok(true) => None,
        Ok(false) => {
            count(iface, RedirectReason::FallbackTtl);
            Some(Verdict::PASS)
        }
        Err(reason) => Some(Verdict::drop(reason)),
    }
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
            Some(Verdict::PASS)
        }
        Err(reason) => Some(Verdict::drop(reason)),
    }
}

/// The hop into `endpoint`'s namespace; `route_hop` makes the router hop
/// of the packet's family when it crossed one.
#[inline(always)]
fn to_endpoint(
    ctx: &TcContext,
    iface: &Iface,
    endpoint: &Endpoint,
    eth_dst: [u8; ETH_ALEN],
    route_hop: impl FnOnce() -> Option<Verdict>,
) -> Hop {
    if endpoint.ifindex == iface.ifindex {
        count(iface, RedirectReason::FallbackSameIface);
        return Hop::Done(Verdict::PASS);
    }
    // Addressed to a gateway (ours, or the uplink's MAC from outside):
    // a router hop. Otherwise the namespaces talk on one segment.
    let routed = eth_dst != endpoint.mac;
    if routed && let Some(stop) = route_hop() {
        return Hop::Done(stop);
    }
    let stored = if routed {
        eth::store_addrs(ctx, &endpoint.mac, &endpoint.gateway_mac)
    } else {
        eth::store_daddr(ctx, &endpoint.mac)
    };
    if let Err(reason) = stored {
        return Hop::Done(Verdict::drop(reason));
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
pub fn bridge_to_backend(ctx: &TcContext, lab: &Lab, iface: &Iface, after: &Packet) -> Option<Hop> {
    let endpoint = endpoints::get(after.key.daddr)?;
    let eth_dst = eth::load_daddr(ctx)?;
    // Addressed to the gateway of the backend's segment: the same segment.
    if eth_dst != endpoint.gateway_mac || endpoint.ifindex == iface.ifindex {
        return None;
    }
    if let Err(reason) = eth::store_daddr(ctx, &endpoint.mac) {
        return Some(Hop::Done(Verdict::drop(reason)));
    }
    if !lab.redirect() {
        // The bridge forwards it by its new destination MAC.
        return Some(Hop::Done(Verdict::PASS));
    }
    Some(Hop::Peer(endpoint.ifindex))
}

/// IPv6's [`bridge_to_backend`] (both datapaths) for a packet NAT66
/// DNATed (`dnat`) on a lab veth to `daddr`. Its `Hop::Peer` is for a
/// flow's packet: a later fragment or an ICMPv6 error whose MAC was
/// written is passed to the bridge instead.
#[inline(always)]
pub fn bridge_to_backend6(
    ctx: &TcContext,
    lab: &Lab,
    iface: &Iface,
    dnat: bool,
    daddr: &[u32; 4],
) -> Option<Hop> {
    if !dnat || iface.role != ROLE_LAB {
        return None;
    }
    let endpoint = endpoints::get6(daddr)?;
    let eth_dst = eth::load_daddr(ctx)?;
    if eth_dst != endpoint.gateway_mac || endpoint.ifindex == iface.ifindex {
        return None;
    }
    if let Err(reason) = eth::store_daddr(ctx, &endpoint.mac) {
        return Some(Hop::Done(Verdict::drop(reason)));
    }
    if !lab.redirect() {
        return Some(Hop::Done(Verdict::PASS));
    }
    Some(Hop::Peer(endpoint.ifindex))
}

/// The peer redirect of a [`Hop::Peer`]: the target veth's egress hook is
/// skipped by it, so what that hook would have done is done here: confirm
/// the flow the packet opened, or, for a packet ingress did not translate,
/// the source rewrite of its flow (replies to published ports), to `after`.
#[inline(always)]
pub fn into_peer(
    ctx: &TcContext,
    lab: &Lab,
    iface: &Iface,
    after: &Packet,
    ifindex: u32,
) -> Verdict {
    match ctx::take_handoff(ctx) {
        Some(handoff) => nat::handed_off(handoff, Some(after)),
        None => {
            let verdict = nat::translate_known_egress(ctx, lab, after);
            if verdict.dropped().is_some() {
                return verdict;
            }
        }
    }
    count(iface, RedirectReason::Peer);
    Verdict::peer(ifindex)
}

/// IPv6's [`into_peer`], into `verdict` (NAT66's: passed or rewritten
/// for `pkt`, into the namespace behind `ifindex`). The target's egress
/// hook would also admit the packet (a closed lab), so that is done here
/// too.
#[inline(always)]
pub fn into_peer6(
    ctx: &TcContext,
    lab: &Lab,
    iface: &Iface,
    pkt: &Packet6,
    ifindex: u32,
    verdict: &mut Verdict6,
) {
    let target = Iface::of_index(ifindex);
    let rewritten = verdict.action == Action::Rewritten;
    let addrs = if rewritten {
        (&verdict.rewrite.saddr, &verdict.rewrite.daddr)
    } else {
        (&pkt.key.saddr, &pkt.key.daddr)
    };
    if let Err(reason) = admit::admit6(lab, &target, addrs, APPLY_EGRESS) {
        *verdict = Verdict6::drop(reason);
        return;
    }
    match ctx::take_handoff(ctx) {
        Some(handoff) => nat6::handed_off_as(handoff, &verdict.rewrite, pkt.key.proto),
        // Not translated on the way in (else handed off): the packet is
        // still `pkt`, and the egress hook would have run NAT66 on it
        // (which may open the host's own flow there, as `nat6_egress`
        // does), not only a known flow's rewrite.
        None => {
            nat6::translate(ctx, &target, pkt, APPLY_EGRESS, verdict);
            if verdict.dropped().is_some() {
                return;
            }
        }
    }
    count(iface, RedirectReason::Peer);
    *verdict = Verdict6::peer(ifindex);
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
