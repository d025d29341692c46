//! IPv6's fast path: what a packet of an established IPv6 flow takes on
//! the `bridge` datapath, and the plain passes around it, as [`fast`]
//! does for IPv4: one conntrack lookup of the IPv6 tables (none on ingress
//! but to a host address), no tail call, no global function, no counter
//! but the flow's own. What it cannot decide exactly as NAT66's full path
//! (`nat6_*`) would, it leaves to it (`None`), having changed nothing:
//! tracing on, anything but plain TCP and UDP behind the IPv6 header, a
//! packet that may change its flow, a new flow the full path would open,
//! a drop, a hairpin flow, a DNAT bridged on its segment, and on ingress
//! every packet of the `redirect` datapath (its hop, `redirect::forward6`,
//! is the full path's).

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use netlab_common::nat::{
    APPLY_EGRESS, APPLY_INGRESS, FlowKey6, NAT_DNAT, NAT_REFLECT, ROLE_LAB, ROLE_UPLINK,
};

use crate::{
    admit,
    conntrack::{self, Entry, Fast, V6},
    fast::{self, TC_NEXT},
    lab::Iface,
    pkt::{
        ctx::{self, Handoff},
        plain6::Plain6,
    },
    stats,
};

/// TC ingress of a host-side veth, for an IPv6 frame: the action, or
/// `None` for NAT66's full path.
#[inline(always)]
pub fn ingress(ctx: &TcContext) -> Option<i32> {
    let lab = fast::lab()?;
    if lab.redirect() {
        return None;
    }
    let pkt = Plain6::read(ctx)?;
    let iface = Iface::of(ctx);
    let key = &pkt.key;
    admit::admit6(&lab, &iface, (&key.saddr, &key.daddr), APPLY_INGRESS).ok()?;
    // Only flows to the lab's host addresses are translated on the way in.
    if !lab.is_local6(&key.daddr) {
        return Some(TC_NEXT);
    }
    let Fast::Hit(half) = conntrack::fast_lookup::<V6>(key, APPLY_INGRESS, pkt.tcp_flags) else {
        return None;
    };
    // A hairpin flow goes back out of its veth; a lab client's DNAT to a
    // backend on its own segment is bridged: the full path's.
    if half.nat & NAT_REFLECT != 0 || (half.nat & NAT_DNAT != 0 && iface.role == ROLE_LAB) {
        return None;
    }
    if !write(ctx, &pkt, half) {
        return Some(TC_ACT_SHOT);
    }
    conntrack::fast_count(half, pkt.len);
    if !lab.is_local6(&half.daddr) {
        // The egress hook has nothing left to do (see `nat6`).
        ctx::hand_off(ctx, Handoff::Translated);
    }
    Some(TC_NEXT)
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
        Fast::Hit(half) => {
            if !write(ctx, &pkt, half) {
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

/// Makes `pkt` leave as its flow's `half` says; a failed write drops the
/// packet, counted as the full path counts it.
#[inline(always)]
fn write(ctx: &TcContext, pkt: &Plain6, half: &Entry<V6>) -> bool {
    if half.nat == 0 {
        return true;
    }
    let after = FlowKey6::new(
        half.saddr,
        half.daddr,
        half.sport,
        half.dport,
        pkt.key.proto,
    );
    match pkt.write(ctx, &after) {
        Ok(()) => true,
        Err(reason) => {
            stats::count(reason);
            false
        }
    }
}
