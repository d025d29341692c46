//! The fast path: what a packet of an established flow takes, and the
//! plain passes around it. ARCHITECTURE.md draws what it touches per hook.
//!
//! It is the full path's decision, taken with the least work: the headers
//! read once ([`Plain`]), one conntrack lookup (two for a flow not assured
//! yet), no global function, no counter but the flow's own, every changed
//! header byte written in one store. What it cannot decide exactly as the
//! full path would, it leaves to it (`None`), having changed nothing:
//! tracing on, anything but plain TCP and UDP, a packet that may change
//! its flow (SYN, FIN, RST, the first reply, the once-a-second refresh),
//! a new flow, a drop, a hairpin flow, the host's own destinations.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::map,
    maps::ProgramArray,
    programs::TcContext,
};
use netlab_common::nat::{
    APPLY_EGRESS, APPLY_INGRESS, CtEntry, NAT_DNAT, NAT_REFLECT, ROLE_LAB, ROLE_UPLINK,
    RedirectReason,
};

use crate::{
    admit,
    conntrack::{self, Fast, V4},
    endpoints, fib,
    lab::{self, Iface, Lab},
    pkt::{
        ctx::{self, Handoff},
        eth,
        ipv6::ETH_P_IPV6,
        plain::{self, Plain},
    },
    redirect, stats, trace,
};

pub const TC_NEXT: i32 = TC_ACT_UNSPEC;

/// The full paths, tail-called when the fast path leaves a packet: slot
/// `NAT_FULL_INGRESS` and `NAT_FULL_EGRESS`, and IPv6's, `NAT6_FULL_*`,
/// filled by the loader before any program runs on an interface.
#[map(name = "NAT_FULL")]
static NAT_FULL: ProgramArray = ProgramArray::pinned(4, 0);

/// Whether the frame is IPv6 (its fast path is [`crate::fast6`], its
/// full path NAT66's program).
#[inline(always)]
pub fn is_ipv6(ctx: &TcContext) -> bool {
    ctx::load::<u16>(ctx, eth::ETH_PROTO_OFF).is_some_and(|t| u16::from_be(t) == ETH_P_IPV6)
}

/// Hands the packet to the full path in `slot`. Should the slot be empty
/// the packet is dropped: passing it would let it past NAT and the
/// uplink's guard.
#[inline(always)]
pub fn full_path(ctx: &TcContext, slot: u32) -> i32 {
    // SAFETY: the slot holds a TC program of this object, or nothing (the
    // call then fails and returns).
    unsafe {
        NAT_FULL.tail_call(ctx, slot);
    }
    TC_ACT_SHOT
}

/// TC ingress of a host-side veth: the action, or `None` for the full path.
#[inline(always)]
pub fn ingress(ctx: &TcContext) -> Option<i32> {
    fast_ingress(ctx)
}

/// TC egress of a host-side veth: the action, or `None` for the full path.
#[inline(always)]
pub fn egress(ctx: &TcContext) -> Option<i32> {
    fast_egress(ctx)
}

/// The lab's configuration, when the fast path may run: the lab is up and
/// nobody traces (a traced hop is recorded by the full path).
#[inline(always)]
pub fn lab() -> Option<Lab> {
    if trace::config().is_some() {
        return None;
    }
    Lab::get()
}

/// Writes what changed in `pkt`; a failed write drops the packet,
/// counted as the full path counts it.
#[inline(always)]
fn write(ctx: &TcContext, pkt: &mut Plain) -> bool {
    match plain::write(ctx, pkt) {
        Ok(()) => true,
        Err(reason) => {
            stats::count(reason);
            false
        }
    }
}

/// Makes `pkt` leave as its flow's half says.
#[inline(always)]
fn translate(pkt: &mut Plain, half: &CtEntry) {
    if half.nat != 0 {
        pkt.translate(half.saddr, half.daddr, half.sport, half.dport);
    }
}

/// TC ingress of a host-side veth: destination rewrites, then (`redirect`)
/// the hop.
#[inline(always)]
fn fast_ingress(ctx: &TcContext) -> Option<i32> {
    let lab = lab()?;
    let mut pkt = Plain::read(ctx)?;
    let iface = Iface::of(ctx);
    let key = pkt.key;
    admit::admit_addrs(
        fib::Asker::tc(ctx),
        &lab,
        &iface,
        key.saddr,
        key.daddr,
        key.proto,
    )
    .ok()?;
    let mut half = None;
    // Only flows to the lab's host addresses and Services are translated
    // on the way in.
    if lab.is_local(key.daddr) || lab.is_service(key.daddr) {
        let Fast::Hit(found) = conntrack::fast_lookup::<V4>(&key, APPLY_INGRESS, pkt.tcp_flags)
        else {
            return None;
        };
        // A hairpin flow goes back out of its veth; a lab client's DNAT
        // to a backend on its own segment is bridged: the full path's.
        if found.nat & NAT_REFLECT != 0 || (found.nat & NAT_DNAT != 0 && iface.role == ROLE_LAB) {
            return None;
        }
        translate(&mut pkt, found);
        half = Some(found);
    }
    let action = if lab.redirect() {
        hop(ctx, &lab, &iface, &mut pkt, half.is_some())?
    } else {
        TC_NEXT
    };
    if !write(ctx, &mut pkt) {
        return Some(TC_ACT_SHOT);
    }
    if let Some(half) = half {
        conntrack::fast_count(half, pkt.len);
        if !lab.is_local(pkt.hdr.ip.daddr) {
            // The egress hook has nothing left to do (see `nat`).
            ctx::hand_off(ctx, Handoff::Translated);
        }
    }
    Some(action)
}

/// The `redirect` datapath's hop for a packet ingress has decided (and
/// perhaps translated, `translated`): into a lab namespace's veth, or
/// into the uplink's peer, with the MACs and TTL that takes, and the
/// rewrite of the egress hook a peer redirect skips. `None` when the full
/// path decides (the host, the bridge's floods, an expiring TTL, an
/// address no namespace holds, a new flow, a next hop the kernel has not
/// resolved).
#[inline(always)]
fn hop(
    ctx: &TcContext,
    lab: &Lab,
    iface: &Iface,
    pkt: &mut Plain,
    translated: bool,
) -> Option<i32> {
    let daddr = pkt.hdr.ip.daddr;
    if lab.is_local(daddr) || eth::is_group(&pkt.hdr.dmac) || pkt.hdr.ip.ttl <= 1 {
        return None;
    }
    // Another node's pods: wherever the host routes them (the full path
    // passes them to the stack).
    if lab.is_peer(daddr) {
        return None;
    }
    // Beyond the uplink: no namespace holds it, so no endpoint lookup.
    if lab.in_uplink_net(daddr) || !lab.is_internal(daddr) {
        return to_uplink(ctx, lab, iface, pkt, translated);
    }
    let endpoint = endpoints::get(daddr)?;
    if endpoint.ifindex == iface.ifindex {
        return None;
    }
    // Addressed to a gateway: a router hop. Otherwise one segment.
    pkt.routed = u8::from(pkt.hdr.dmac != endpoint.mac);
    let smac = if pkt.routed != 0 {
        endpoint.gateway_mac
    } else {
        pkt.hdr.smac
    };
    pkt.set_macs(endpoint.mac, smac);
    if !translated && !egress_of_peer(pkt)? {
        return None;
    }
    redirect::count(iface, RedirectReason::Peer);
    Some(redirect::peer(endpoint.ifindex))
}

/// Out of the uplink, straight into its peer (the world's side of the
/// veth): what the uplink's egress hook would do (masquerade, the source
/// rewrite of replies to published ports) is done here, the next hop's
/// MAC comes from the kernel's FIB and neighbour tables, and the packet
/// skips the uplink's egress hook and the host's neighbour output. A new
/// flow, or a next hop not resolved yet, takes the full path (which hands
/// the packet to the uplink with `bpf_redirect_neigh`).
#[inline(always)]
fn to_uplink(
    ctx: &TcContext,
    lab: &Lab,
    iface: &Iface,
    pkt: &mut Plain,
    translated: bool,
) -> Option<i32> {
    let uplink = lab.cfg.uplink_ifindex;
    if uplink == 0 || uplink == iface.ifindex || translated {
        return None;
    }
    let half = match conntrack::fast_lookup::<V4>(&pkt.key, APPLY_EGRESS, pkt.tcp_flags) {
        Fast::Hit(half) => {
            translate(pkt, half);
            Some(half)
        }
        // No flow: one opens here if the source is masqueraded or the
        // host's; anything else leaves as it is.
        Fast::Miss if !lab.is_masqueraded(pkt.key.saddr) && !lab.is_local(pkt.key.saddr) => None,
        _ => return None,
    };
    let (dmac, smac) = fib::next_hop(ctx, uplink, &pkt.after(), pkt.len)?;
    if let Some(half) = half {
        conntrack::fast_count(half, pkt.len);
    }
    pkt.routed = 1;
    pkt.set_macs(dmac, smac);
    redirect::count(iface, RedirectReason::Uplink);
    Some(redirect::peer(uplink))
}

/// What the egress hook a peer redirect skips would do to `pkt`: the
/// source rewrite of a reply, when its flow has one. `Some(false)` when
/// the full path must decide.
#[inline(always)]
fn egress_of_peer(pkt: &mut Plain) -> Option<bool> {
    match conntrack::fast_lookup::<V4>(&pkt.after(), APPLY_EGRESS, pkt.tcp_flags) {
        Fast::Miss => Some(true),
        Fast::Slow => Some(false),
        Fast::Hit(half) => {
            translate(pkt, half);
            conntrack::fast_count(half, pkt.len);
            Some(true)
        }
    }
}

/// TC egress of a host-side veth: source rewrites (masquerade on the
/// uplink, replies to published ports), nothing for a packet an ingress
/// hook translated.
#[inline(always)]
fn fast_egress(ctx: &TcContext) -> Option<i32> {
    let lab = lab()?;
    match ctx::peek_handoff(ctx) {
        Some(Handoff::Translated) => {
            ctx::take_handoff(ctx);
            return Some(TC_NEXT);
        }
        // The flow waits for this packet to be confirmed.
        Some(Handoff::Opened) => return None,
        None => {}
    }
    let mut pkt = Plain::read(ctx)?;
    let key = pkt.key;
    let role = Iface::of(ctx).role;
    // On a lab veth, only the host's own flows and replies from a
    // published port's backend can have a flow this hook translates: the
    // rest (east-west traffic) passes without a lookup.
    if role == ROLE_LAB && !lab::is_backend_port(key.sport) && !lab.is_local(key.saddr) {
        return Some(TC_NEXT);
    }
    match conntrack::fast_lookup::<V4>(&key, APPLY_EGRESS, pkt.tcp_flags) {
        Fast::Hit(half) => {
            translate(&mut pkt, half);
            if !write(ctx, &mut pkt) {
                return Some(TC_ACT_SHOT);
            }
            conntrack::fast_count(half, pkt.len);
            Some(TC_NEXT)
        }
        Fast::Miss => {
            // No flow, and none opens here unless the source is a host
            // address, or masqueraded out of the uplink (which must not
            // leave untranslated) to anywhere but a peer node's pods.
            let saddr = key.saddr;
            let passes = match role {
                ROLE_LAB => !lab.is_local(saddr),
                ROLE_UPLINK => {
                    !lab.is_local(saddr) && (!lab.is_masqueraded(saddr) || lab.is_peer(key.daddr))
                }
                _ => false,
            };
            passes.then_some(TC_NEXT)
        }
        Fast::Slow => None,
    }
}
