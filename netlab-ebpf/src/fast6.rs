//! IPv6's fast path: what a packet of an established IPv6 flow takes, and
//! the plain passes around it, as [`fast`]
//! does for IPv4: one conntrack lookup of the IPv6 tables (none on ingress
//! but to a host address), no tail call, no global function, no counter
//! but the flow's own. What it cannot decide exactly as NAT66's full path
//! (`nat6_*`) would, it leaves to it (`None`), having changed nothing:
//! tracing on, anything but plain TCP and UDP behind the IPv6 header, a
//! packet that may change its flow, a new flow the full path would open,
//! a drop, a hairpin flow, a DNAT bridged on its segment; with `redirect`,
//! a hop other than into a lab namespace (`redirect::forward6` sends the
//! rest out of the uplink or to the stack).

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use netlab_common::nat::{
    APPLY_EGRESS, APPLY_INGRESS, FlowKey6, NAT_DNAT, NAT_REFLECT, ROLE_LAB, ROLE_UPLINK,
    RedirectReason,
};

use crate::{
    admit,
    conntrack::{self, Entry, Fast, V6},
    endpoints,
    fast::{self, TC_NEXT},
    lab::{Iface, Lab},
    pkt::{
        ctx::{self, Handoff},
        eth, ipv6,
        plain6::Plain6,
    },
    redirect, stats,
};

/// TC ingress of a host-side veth, for an IPv6 frame: the action, or
/// `None` for NAT66's full path.
#[inline(always)]
pub fn ingress(ctx: &TcContext) -> Option<i32> {
    let lab = fast::lab()?;
    let pkt = Plain6::read(ctx)?;
    let iface = Iface::of(ctx);
    let key = &pkt.key;
    admit::admit6(&lab, &iface, (&key.saddr, &key.daddr), APPLY_INGRESS).ok()?;
    // Only flows to the lab's host addresses are translated on the way in.
    let mut half = None;
    if lab.is_local6(&key.daddr) {
        let Fast::Hit(found) = conntrack::fast_lookup::<V6>(key, APPLY_INGRESS, pkt.tcp_flags)
        else {
            return None;
        };
        // A hairpin flow goes back out of its veth; a lab client's DNAT
        // to a backend on its own segment is bridged: the full path's.
        if found.nat & NAT_REFLECT != 0 || (found.nat & NAT_DNAT != 0 && iface.role == ROLE_LAB) {
            return None;
        }
        half = Some(found);
    }
    if lab.redirect() {
        return hop(ctx, &lab, &iface, &pkt, half);
    }
    if let Some(half) = half {
        if !write(ctx, key, half) {
            return Some(TC_ACT_SHOT);
        }
        conntrack::fast_count(half, pkt.len);
        if !lab.is_local6(&half.daddr) {
            // The egress hook has nothing left to do (see `nat6`).
            ctx::hand_off(ctx, Handoff::Translated);
        }
    }
    Some(TC_NEXT)
}

/// The `redirect` datapath's hop for a packet ingress has decided (and
/// perhaps translated, by `half`): into a lab namespace's veth, with the
/// MACs and hop limit that takes, the egress hook the peer redirect skips
/// done first (its admission, its flow's rewrite). Decided before anything
/// is written: `None` when the full path decides (the host, link scope,
/// the bridge's floods, an expiring hop limit, what lies beyond the
/// uplink, an address no namespace holds, a flow its egress would open).
#[inline(always)]
fn hop(
    ctx: &TcContext,
    lab: &Lab,
    iface: &Iface,
    pkt: &Plain6,
    half: Option<&mut Entry<V6>>,
) -> Option<i32> {
    let key = &pkt.key;
    let after = match &half {
        Some(half) => after(key, half),
        None => *key,
    };
    let daddr = &after.daddr;
    let eth_dst = eth::load_daddr(ctx)?;
    if lab.is_local6(daddr)
        || ipv6::is_link_scope(daddr)
        || ipv6::stays_on_link(&after.saddr)
        || eth::is_group(&eth_dst)
        || lab.in_uplink_net6(daddr)
        || !lab.is_internal6(daddr)
    {
        return None;
    }
    let endpoint = endpoints::get6(daddr)?;
    // Addressed to a gateway: a router hop, whose hop limit must not
    // expire here (the stack answers time exceeded).
    let routed = eth_dst != endpoint.mac;
    if endpoint.ifindex == iface.ifindex || (routed && pkt.hop_limit <= 1) {
        return None;
    }
    let target = Iface::of_index(endpoint.ifindex);
    admit::admit6(lab, &target, (&after.saddr, daddr), APPLY_EGRESS).ok()?;
    // What the target's egress hook would translate: a packet ingress
    // translated has nothing left there.
    let egress = if half.is_some() {
        None
    } else {
        match conntrack::fast_lookup::<V6>(&after, APPLY_EGRESS, pkt.tcp_flags) {
            Fast::Hit(found) => Some(found),
            // The host's own flow would open there.
            Fast::Miss if !lab.is_local6(&after.saddr) => None,
            _ => return None,
        }
    };
    // Decided: now the writes.
    for (before, found) in [(key, half), (&after, egress)] {
        if let Some(found) = found {
            if !write(ctx, before, found) {
                return Some(TC_ACT_SHOT);
            }
            conntrack::fast_count(found, pkt.len);
        }
    }
    let written = if routed {
        eth::store_addrs(ctx, &endpoint.mac, &endpoint.gateway_mac)
            .and_then(|()| ipv6::decrement_hop_limit(ctx).map(|_| ()))
    } else {
        eth::store_daddr(ctx, &endpoint.mac)
    };
    if let Err(reason) = written {
        stats::count(reason);
        return Some(TC_ACT_SHOT);
    }
    redirect::count(iface, RedirectReason::Peer);
    Some(redirect::peer(endpoint.ifindex))
}

/// TC egress of a host-side veth, for an IPv6 frame: source rewrites
/// (masquerade on the uplink, replies to published ports), nothing for a
/// packet an ingress hook translated.
#[inline(always)]
pub fn egress(ctx: &TcContext) -> Option<i32> {
    let lab = fast::lab()?;
    let pkt = Plain6::read(ctx)?;
    let iface = Iface::of(ctx);
    let saddr = &pkt.key.saddr;
    // A lab veth admits the packet as it comes (as `nat6_egress` does).
    if iface.role != ROLE_UPLINK {
        admit::admit6(&lab, &iface, (saddr, &pkt.key.daddr), APPLY_EGRESS).ok()?;
    }
    // A lab source on the uplink: masqueraded by its flow, else opening
    // one or dropped (`untranslated_leak`) by the full path.
    let lab_source =
        iface.role == ROLE_UPLINK && (lab.is_internal6(saddr) || lab.is_masqueraded6(saddr));
    match ctx::peek_handoff(ctx) {
        Some(Handoff::Translated) if !lab_source => {
            ctx::take_handoff(ctx);
            return Some(TC_NEXT);
        }
        // The flow waits for this packet to be confirmed.
        Some(_) => return None,
        None => {}
    }
    match conntrack::fast_lookup::<V6>(&pkt.key, APPLY_EGRESS, pkt.tcp_flags) {
        // A lab source the flow leaves untranslated (the host's own flow
        // from an address inside a lab subnet) is the uplink guard's.
        Fast::Hit(half) if lab_source && half.nat == 0 => None,
        Fast::Hit(half) => {
            if !write(ctx, &pkt.key, half) {
                return Some(TC_ACT_SHOT);
            }
            conntrack::fast_count(half, pkt.len);
            Some(TC_NEXT)
        }
        // No flow, and none opens here unless the source is a host
        // address (the host's own flows are tracked) or the lab's.
        Fast::Miss => {
            let passes = !lab_source
                && !lab.is_local6(saddr)
                && matches!(iface.role, ROLE_LAB | ROLE_UPLINK);
            passes.then_some(TC_NEXT)
        }
        Fast::Slow => None,
    }
}

/// Makes the packet, now `before`, leave as its flow's `half` says; a
/// failed write drops the packet, counted as the full path counts it.
#[inline(always)]
fn write(ctx: &TcContext, before: &FlowKey6, half: &Entry<V6>) -> bool {
    if half.nat == 0 {
        return true;
    }
    match Plain6::write(ctx, before, &after(before, half)) {
        Ok(()) => true,
        Err(reason) => {
            stats::count(reason);
            false
        }
    }
}

/// The tuple a packet of `key` leaves with once its flow's `half` applied.
#[inline(always)]
fn after(key: &FlowKey6, half: &Entry<V6>) -> FlowKey6 {
    if half.nat == 0 {
        return *key;
    }
    FlowKey6::new(half.saddr, half.daddr, half.sport, half.dport, key.proto)
}
