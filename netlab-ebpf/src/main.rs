//! netlab's kernel side: thin program entry points over layers that import
//! only downward (ARCHITECTURE.md draws them), as Cilium's `bpf/lib`:
//!
//! - the packet-access layer, [`pkt`] (context and mark, headers,
//!   checksums, the one parser), with [`global`] (the shape of a global BPF
//!   function);
//! - below the features: [`lab`] (the configuration, the interface, the
//!   questions asked of an address), [`verdict`], [`fib`];
//! - the state: [`conntrack`], [`frag`], [`endpoints`], [`stats`];
//! - the features: [`admit`], [`nat`], then [`redirect`] on top of NAT;
//! - observing: [`trace`], [`kfree`]; the host's sockets: [`sock`].
//!
//! Each entry point parses once, hands the result to the modules, and maps
//! their [`Verdict`] to a TC action, counting a drop's reason there and
//! nowhere else.
//!
//! Packets and bytes per interface are the kernel's own counters (netlab
//! reads them over netlink): no program counts them.

#![no_std]
#![no_main]

mod admit;
mod conntrack;
mod endpoints;
mod entry;
mod fast;
mod fast6;
mod fib;
mod frag;
mod global;
mod kfree;
mod lab;
mod lb;
mod nat;
mod nat6;
mod pkt;
mod ports;
mod redirect;
mod sock;
mod stats;
mod trace;
mod verdict;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_redirect,
    macros::{cgroup_sock_addr, classifier, tracepoint, xdp},
    programs::{SockAddrContext, TcContext, TracePointContext, XdpContext},
};
use netlab_common::{
    names,
    nat::{
        APPLY_EGRESS, APPLY_INGRESS, Addr, NAT_DNAT, NAT_REFLECT, ROLE_LAB, ROLE_UPLINK,
        RedirectReason, Stat,
    },
    trace::Hook,
};

use crate::{
    conntrack::{V4, V6},
    lab::{Iface, Lab},
    pkt::{
        ctx,
        ipv6::ETH_P_IPV6,
        parse::{Parsed, parse},
        parse6::{Kind6, parse6},
    },
    redirect::Hop,
    sock::Family,
    verdict::{Action, Verdict, Verdict6, VerdictOf},
};

/// TC_ACT_UNSPEC: let the next filter on the hook (or the stack) decide.
const TC_NEXT: i32 = TC_ACT_UNSPEC;
const DROP: i32 = TC_ACT_SHOT;

/// A hop where netlab only watches (see `names::TRACE_INGRESS`): attached
/// by `netlab trace` while it runs, loaded with its filter.
#[classifier]
pub fn trace_ingress(ctx: TcContext) -> i32 {
    trace::watch(&ctx, Hook::Ingress);
    TC_NEXT
}

#[classifier]
pub fn trace_egress(ctx: TcContext) -> i32 {
    trace::watch(&ctx, Hook::Egress);
    TC_NEXT
}

/// Ingress of every lab veth's host side and of the uplink: the fast path
/// ([`fast`]), else the full path, tail-called.
#[classifier]
pub fn nat_ingress(ctx: TcContext) -> i32 {
    if fast::is_ipv6(&ctx) {
        if let Some(action) = fast6::ingress(&ctx) {
            return action;
        }
        return fast::full_path(&ctx, names::NAT6_FULL_INGRESS);
    }
    if let Some(action) = fast::ingress(&ctx) {
        return action;
    }
    fast::full_path(&ctx, names::NAT_FULL_INGRESS)
}

/// The full path of `nat_ingress`, a program of its own: tail-called, it
/// has the whole BPF stack for itself (the fast path's frame and its own
/// would not fit together), and the fast path's program stays small.
#[classifier]
pub fn nat_ingress_full(ctx: TcContext) -> i32 {
    let parsed = parse(&ctx);
    let traced = trace::begin(&ctx, &parsed);
    let verdict = ingress(&ctx, &parsed);
    conntrack::sweep_if_wanted::<V4>();
    let touched = verdict.may_rewrite();
    trace::end(
        &ctx,
        traced,
        Hook::NatIngress,
        to_action(&ctx, &verdict),
        touched,
    )
}

#[inline(always)]
fn ingress(ctx: &TcContext, parsed: &Parsed) -> Verdict {
    let Some(lab) = Lab::get() else {
        return Verdict::PASS;
    };
    let iface = Iface::of(ctx);
    if let Err(reason) = admit::admit(ctx, &lab, &iface, parsed) {
        return Verdict::drop(reason);
    }
    let verdict = match parsed {
        Parsed::Flow(pkt) => nat::translate(ctx, &lab, &iface, pkt, APPLY_INGRESS),
        Parsed::LaterFragment(frag) => nat::translate_fragment(ctx, &lab, frag, APPLY_INGRESS),
        Parsed::IcmpError(err) => nat::icmp_error(ctx, &lab, err, APPLY_INGRESS, &iface)
            .unwrap_or_else(|| nat::unrelated_icmp_error(&lab, &iface, err)),
        other => {
            count_untranslatable(other);
            // The stack validates what is malformed and drops it.
            Verdict::PASS
        }
    };
    // What follows may hand the rewritten packet on as a plain pass.
    if verdict.may_rewrite() {
        trace::note_rewrite();
    }
    if !matches!(verdict.action, Action::Pass | Action::Rewritten) {
        return verdict;
    }
    let Parsed::Flow(pkt) = parsed else {
        if lab.redirect() {
            redirect::count(&iface, RedirectReason::FallbackUnparsed);
        }
        return verdict;
    };
    let dnat = verdict.action == Action::Rewritten
        && verdict.rewrite.nat & (NAT_DNAT | NAT_REFLECT) == NAT_DNAT;
    // The bridge and the stack take it from here (most packets of the
    // `bridge` datapath): no need to know how it looks now.
    if !lab.redirect() && !(dnat && iface.role == ROLE_LAB) {
        return verdict;
    }
    let after = match verdict.rewrite() {
        Some(out) => nat::rewritten(pkt, &out),
        None => *pkt,
    };
    let bridged = if iface.role == ROLE_LAB && dnat {
        redirect::bridge_to_backend(ctx, &lab, &iface, &after)
    } else {
        None
    };
    let hop = match bridged {
        Some(hop) => hop,
        None if !lab.redirect() => return verdict,
        None => redirect::forward(ctx, &iface, pkt, &after),
    };
    // One place applies a peer redirect's egress NAT, for both ways in.
    match hop {
        Hop::Done(verdict) => verdict,
        Hop::Peer(ifindex) => redirect::into_peer(ctx, &lab, &iface, &after, ifindex),
    }
}

/// Egress of every lab veth's host side and of the uplink: masquerade (on
/// the uplink) and the source rewrite of replies to published ports. The
/// fast path, else the full path, tail-called.
#[classifier]
pub fn nat_egress(ctx: TcContext) -> i32 {
    if fast::is_ipv6(&ctx) {
        if let Some(action) = fast6::egress(&ctx) {
            return action;
        }
        return fast::full_path(&ctx, names::NAT6_FULL_EGRESS);
    }
    if let Some(action) = fast::egress(&ctx) {
        return action;
    }
    fast::full_path(&ctx, names::NAT_FULL_EGRESS)
}

/// The full path of `nat_egress` (see [`nat_ingress_full`]).
#[classifier]
pub fn nat_egress_full(ctx: TcContext) -> i32 {
    let parsed = parse(&ctx);
    let traced = trace::begin(&ctx, &parsed);
    let verdict = egress(&ctx, &parsed);
    conntrack::sweep_if_wanted::<V4>();
    let touched = verdict.may_rewrite();
    trace::end(
        &ctx,
        traced,
        Hook::NatEgress,
        to_action(&ctx, &verdict),
        touched,
    )
}

#[inline(always)]
fn egress(ctx: &TcContext, parsed: &Parsed) -> Verdict {
    let Some(lab) = Lab::get() else {
        return Verdict::PASS;
    };
    let iface = Iface::of(ctx);
    let verdict = if let Some(handoff) = ctx::take_handoff(ctx) {
        // An ingress hook translated this packet: nothing is left here.
        let pkt = match parsed {
            Parsed::Flow(pkt) => Some(pkt),
            _ => None,
        };
        nat::handed_off(handoff, pkt);
        Verdict::PASS
    } else {
        match parsed {
            Parsed::Flow(pkt) => nat::translate(ctx, &lab, &iface, pkt, APPLY_EGRESS),
            Parsed::LaterFragment(frag) => nat::translate_fragment(ctx, &lab, frag, APPLY_EGRESS),
            Parsed::IcmpError(err) => nat::icmp_error(ctx, &lab, err, APPLY_EGRESS, &iface)
                .unwrap_or_else(|| nat::unrelated_icmp_error(&lab, &iface, err)),
            other => {
                count_untranslatable(other);
                Verdict::PASS
            }
        }
    };
    // What NAT could not translate must not leave with a lab address.
    if verdict.is_pass()
        && let Some(reason) = admit::uplink_leak(&lab, &iface, parsed)
    {
        return Verdict::drop(reason);
    }
    verdict
}

/// The IPv6 path of `nat_ingress` (IPv6's admission, NAT66), a program of
/// its own, tail-called for every IPv6 frame: IPv4's programs never carry
/// IPv6's paths, nor IPv6's theirs.
#[classifier]
pub fn nat6_ingress(ctx: TcContext) -> i32 {
    // The tracer reads the IPv6 tuple itself.
    let traced = trace::begin(&ctx, &Parsed::NotIpv4(ETH_P_IPV6));
    let Some(verdict) = nat6::verdict_slot() else {
        return trace::end(&ctx, traced, Hook::NatIngress, TC_NEXT, false);
    };
    ingress6(&ctx, verdict);
    conntrack::sweep_if_wanted::<V6>();
    let touched = verdict.may_rewrite();
    trace::end(
        &ctx,
        traced,
        Hook::NatIngress,
        to_action(&ctx, verdict),
        touched,
    )
}

/// The decision of `nat6_ingress`, into `verdict` (its per-CPU slot:
/// IPv6's tuples leave its stack no room for one).
#[inline(always)]
fn ingress6(ctx: &TcContext, verdict: &mut Verdict6) {
    let Some(lab) = Lab::get() else {
        return;
    };
    let iface = Iface::of(ctx);
    let Some(parsed) = parse6(ctx) else {
        return;
    };
    let Some(addrs) = parsed.addrs() else {
        // The stack drops what is no IPv6 header.
        stats::count(Stat::Malformed);
        return;
    };
    if let Err(reason) = admit::admit6(&lab, &iface, addrs, APPLY_INGRESS) {
        *verdict = Verdict6::drop(reason);
        return;
    }
    match parsed.kind {
        Kind6::Flow => nat6::translate(ctx, &iface, &parsed.flow, APPLY_INGRESS, verdict),
        Kind6::IcmpError => nat6::error(ctx, &iface, &parsed.error, APPLY_INGRESS, verdict),
        Kind6::LaterFragment => {
            nat6::translate_fragment(ctx, &parsed.flow, APPLY_INGRESS, verdict);
        }
        Kind6::Untranslatable => stats::count(parsed.why),
        Kind6::Bad => {}
    }
    if !matches!(verdict.action, Action::Pass | Action::Rewritten) {
        return;
    }
    if verdict.action == Action::Rewritten {
        trace::note_rewrite();
    }
    // A namespace's flow DNATed to a backend of its own segment is
    // bridged on, as br_netfilter does, its later fragments and ICMPv6
    // errors too (the bridge forwards them by the backend's MAC); with
    // `redirect`, every flow's packet takes its hop (see IPv4's
    // `ingress`).
    let dnat = verdict.action == Action::Rewritten
        && verdict.rewrite.nat & (NAT_DNAT | NAT_REFLECT) == NAT_DNAT;
    let flow = parsed.kind == Kind6::Flow;
    let hop = match redirect::bridge_to_backend6(ctx, &lab, &iface, dnat, &verdict.rewrite.daddr) {
        Some(Hop::Peer(_)) if !flow => return,
        Some(hop) => hop,
        None if !lab.redirect() => return,
        None if !flow => {
            redirect::count(&iface, RedirectReason::FallbackUnparsed);
            return;
        }
        None => redirect::forward6(ctx, &iface, &parsed.flow, verdict),
    };
    match hop {
        Hop::Done(done) => match done.action {
            Action::Drop => *verdict = Verdict6::drop(done.reason),
            Action::RedirectNeigh => *verdict = Verdict6::neigh(done.arg),
            // Passed on as NAT66 left it.
            _ => {}
        },
        Hop::Peer(ifindex) => {
            redirect::into_peer6(ctx, &lab, &iface, &parsed.flow, ifindex, verdict);
        }
    }
}

/// The IPv6 path of `nat_egress` (see [`nat6_ingress`]).
#[classifier]
pub fn nat6_egress(ctx: TcContext) -> i32 {
    let traced = trace::begin(&ctx, &Parsed::NotIpv4(ETH_P_IPV6));
    let Some(verdict) = nat6::verdict_slot() else {
        return trace::end(&ctx, traced, Hook::NatEgress, TC_NEXT, false);
    };
    egress6(&ctx, verdict);
    conntrack::sweep_if_wanted::<V6>();
    let touched = verdict.may_rewrite();
    trace::end(
        &ctx,
        traced,
        Hook::NatEgress,
        to_action(&ctx, verdict),
        touched,
    )
}

/// The decision of `nat6_egress`, into `verdict` (see [`ingress6`]).
#[inline(always)]
fn egress6(ctx: &TcContext, verdict: &mut Verdict6) {
    let Some(lab) = Lab::get() else {
        return;
    };
    let iface = Iface::of(ctx);
    let Some(parsed) = parse6(ctx) else {
        return;
    };
    let Some(addrs) = parsed.addrs() else {
        stats::count(Stat::Malformed);
        return;
    };
    // A lab veth admits the packet as it comes; the uplink, as NAT66
    // leaves it (below).
    if iface.role != ROLE_UPLINK
        && let Err(reason) = admit::admit6(&lab, &iface, addrs, APPLY_EGRESS)
    {
        *verdict = Verdict6::drop(reason);
        return;
    }
    if let Some(handoff) = ctx::take_handoff(ctx) {
        // An ingress hook translated this packet: nothing is left here.
        nat6::handed_off(
            handoff,
            (parsed.kind == Kind6::Flow).then_some(&parsed.flow),
        );
    } else {
        match parsed.kind {
            Kind6::Flow => nat6::translate(ctx, &iface, &parsed.flow, APPLY_EGRESS, verdict),
            Kind6::IcmpError => nat6::error(ctx, &iface, &parsed.error, APPLY_EGRESS, verdict),
            Kind6::LaterFragment => {
                nat6::translate_fragment(ctx, &parsed.flow, APPLY_EGRESS, verdict);
            }
            Kind6::Untranslatable => stats::count(parsed.why),
            Kind6::Bad => {}
        }
    }
    // What NAT66 left untranslated must not leave with a lab address.
    if iface.role == ROLE_UPLINK
        && verdict.is_pass()
        && let Err(reason) = admit::admit6(&lab, &iface, addrs, APPLY_EGRESS)
    {
        *verdict = Verdict6::drop(reason);
    }
}

/// Records one hop while tracing is on: tail-called by the programs above
/// (see [`trace`]), it returns their verdict.
#[classifier]
pub fn trace_hop(ctx: TcContext) -> i32 {
    trace::tail(&ctx)
}

/// The XDP entry on the uplink's host end (`entry = "xdp"`): early drops,
/// and (`redirect`) established flows to published ports handed to their
/// backend's veth (see [`entry`]).
#[xdp]
pub fn xdp_uplink(ctx: XdpContext) -> u32 {
    entry::uplink(&ctx)
}

/// `skb:kfree_skb`: the kernel dropped a packet; traced when it is a lab
/// packet's (see [`kfree`]).
#[tracepoint]
pub fn trace_kfree_skb(ctx: TracePointContext) -> u32 {
    kfree::kfree_skb(&ctx);
    0
}

/// `skb:consume_skb`: a traced packet's journey ends.
#[tracepoint]
pub fn trace_consume_skb(ctx: TracePointContext) -> u32 {
    kfree::consume_skb(&ctx);
    0
}

/// cgroup sock_addr verdict: let the call proceed.
const SOCK_ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx, Family::V4);
    SOCK_ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx, Family::V4);
    SOCK_ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::from_backend(&ctx, Family::V4);
    SOCK_ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::from_backend(&ctx, Family::V4);
    SOCK_ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    sock::to_backend6(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::to_backend6(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::from_backend6(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    sock::from_backend6(&ctx);
    SOCK_ALLOW
}

#[inline(always)]
fn count_untranslatable(parsed: &Parsed) {
    stats::count(match parsed {
        Parsed::NotIpv4(_) => Stat::NonIpv4,
        Parsed::Untranslatable(_, why) => *why,
        _ => Stat::Malformed,
    });
}

/// The one place a verdict (of either family) becomes a TC action: a
/// drop's reason is counted and named for the trace here.
#[inline(always)]
fn to_action<A: Addr>(ctx: &TcContext, verdict: &VerdictOf<A>) -> i32 {
    match verdict.action {
        Action::Reflected => {
            // The peer becomes the destination, the gateway the source.
            if let Err(reason) = pkt::eth::swap_addrs(ctx) {
                return drop(reason);
            }
            let ifindex = ctx::ifindex(ctx);
            trace::note_redirect(ifindex);
            // SAFETY: plain helper; redirects to this interface's egress.
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
        Action::Pass | Action::Rewritten => TC_NEXT,
        Action::Drop => drop(verdict.dropped().unwrap_or(Stat::WriteFailed)),
        Action::RedirectPeer => {
            trace::note_redirect(verdict.arg);
            redirect::peer(verdict.arg)
        }
        Action::RedirectNeigh => {
            trace::note_redirect(verdict.arg);
            redirect::neigh(verdict.arg)
        }
    }
}

#[inline(always)]
fn drop(reason: Stat) -> i32 {
    stats::count(reason);
    trace::note_drop(reason);
    DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
