//! netlab's kernel side: thin program entry points over a packet-access
//! layer ([`pkt`]: context, headers, checksums, the one parser) and
//! datapath modules split by concern (as Cilium's `bpf/lib`):
//! [`conntrack`], [`endpoints`], [`frag`], [`nat`], [`redirect`], [`trace`], [`kfree`],
//! [`sock`], [`stats`]. Each entry point parses once, hands the result to
//! the modules, and maps their [`Verdict`] to a TC action, counting a
//! drop's reason there and nowhere else.
//!
//! Packets and bytes per interface are the kernel's own counters (netlab
//! reads them over netlink): no program counts them.

#![no_std]
#![no_main]

mod conntrack;
mod endpoints;
mod frag;
mod kfree;
mod nat;
mod pkt;
mod redirect;
mod sock;
mod stats;
mod trace;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_redirect,
    macros::{cgroup_sock_addr, classifier, tracepoint},
    programs::{SockAddrContext, TcContext, TracePointContext},
};
use netlab_common::{
    nat::{APPLY_EGRESS, APPLY_INGRESS, NAT_DNAT, NAT_REFLECT, ROLE_LAB, RedirectReason, Stat},
    trace::Hook,
};

use crate::{
    nat::{Iface, Verdict},
    pkt::parse::{Parsed, parse},
    redirect::Hop,
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

/// Ingress of every lab veth's host side and of the uplink.
#[classifier]
pub fn nat_ingress(ctx: TcContext) -> i32 {
    let parsed = parse(&ctx);
    let traced = trace::begin(&parsed);
    let verdict = ingress(&ctx, &parsed);
    let touched = verdict.may_rewrite();
    trace::end(&ctx, traced, Hook::NatIngress, to_action(verdict), touched)
}

#[inline(always)]
fn ingress(ctx: &TcContext, parsed: &Parsed) -> Verdict {
    let iface = Iface::of(ctx);
    stats::count(Stat::Packets);
    if let Err(reason) = nat::admit(&iface, parsed) {
        return Verdict::Drop(reason);
    }
    let verdict = match parsed {
        Parsed::Flow(pkt) => nat::translate(ctx, pkt, APPLY_INGRESS, &iface),
        Parsed::LaterFragment(frag) => nat::translate_fragment(ctx, frag, APPLY_INGRESS),
        Parsed::IcmpError(err) => nat::icmp_error(ctx, err, APPLY_INGRESS, &iface)
            .unwrap_or_else(|| nat::unrelated_icmp_error(&iface, err)),
        other => {
            count_untranslatable(other);
            // The stack validates what is malformed and drops it.
            Verdict::Pass
        }
    };
    // What follows may hand the rewritten packet on as a plain pass.
    if verdict.may_rewrite() {
        trace::note_rewrite();
    }
    if !matches!(verdict, Verdict::Pass | Verdict::Rewritten(_)) {
        return verdict;
    }
    let Parsed::Flow(pkt) = parsed else {
        if redirect::enabled() {
            redirect::count(&iface, RedirectReason::FallbackUnparsed);
        }
        return verdict;
    };
    let (after, dnat) = match verdict {
        Verdict::Rewritten(out) => (
            nat::rewritten(pkt, &out),
            out.nat & (NAT_DNAT | NAT_REFLECT) == NAT_DNAT,
        ),
        _ => (*pkt, false),
    };
    let bridged = if iface.role == ROLE_LAB && dnat {
        redirect::bridge_to_backend(ctx, &iface, &after)
    } else {
        None
    };
    let hop = match bridged {
        Some(hop) => hop,
        None if !redirect::enabled() => return verdict,
        None => redirect::forward(ctx, &iface, pkt, &after),
    };
    // One place applies a peer redirect's egress NAT, for both ways in.
    match hop {
        Hop::Done(verdict) => verdict,
        Hop::Peer(ifindex) => redirect::into_peer(ctx, &iface, &after, ifindex),
    }
}

/// Egress of every lab veth's host side and of the uplink: masquerade (on
/// the uplink) and the source rewrite of replies to published ports.
#[classifier]
pub fn nat_egress(ctx: TcContext) -> i32 {
    let parsed = parse(&ctx);
    let traced = trace::begin(&parsed);
    let verdict = egress(&ctx, &parsed);
    let touched = verdict.may_rewrite();
    trace::end(&ctx, traced, Hook::NatEgress, to_action(verdict), touched)
}

#[inline(always)]
fn egress(ctx: &TcContext, parsed: &Parsed) -> Verdict {
    let iface = Iface::of(ctx);
    stats::count(Stat::Packets);
    let verdict = match parsed {
        Parsed::Flow(pkt) => nat::translate(ctx, pkt, APPLY_EGRESS, &iface),
        Parsed::LaterFragment(frag) => nat::translate_fragment(ctx, frag, APPLY_EGRESS),
        Parsed::IcmpError(err) => nat::icmp_error(ctx, err, APPLY_EGRESS, &iface)
            .unwrap_or_else(|| nat::unrelated_icmp_error(&iface, err)),
        other => {
            count_untranslatable(other);
            Verdict::Pass
        }
    };
    // What NAT could not translate must not leave with a lab address.
    if let Verdict::Pass = verdict
        && let Some(reason) = nat::uplink_leak(&iface, parsed)
    {
        return Verdict::Drop(reason);
    }
    verdict
}

/// Records one hop while tracing is on: tail-called by the programs above
/// (see [`trace`]), it returns their verdict.
#[classifier]
pub fn trace_hop(ctx: TcContext) -> i32 {
    trace::tail(&ctx)
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
    sock::to_backend(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::from_backend(&ctx);
    SOCK_ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::from_backend(&ctx);
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

/// The one place a verdict becomes a TC action: a drop's reason is counted
/// and named for the trace here.
#[inline(always)]
fn to_action(verdict: Verdict) -> i32 {
    match verdict {
        Verdict::Pass | Verdict::Rewritten(_) => TC_NEXT,
        Verdict::Drop(reason) => {
            stats::count(reason);
            trace::note_drop(reason);
            DROP
        }
        Verdict::Reflect(ifindex) => {
            trace::note_redirect(ifindex);
            // SAFETY: plain helper; redirects to this interface's egress.
            unsafe { bpf_redirect(ifindex, 0) as i32 }
        }
        Verdict::RedirectPeer(ifindex) => {
            trace::note_redirect(ifindex);
            redirect::peer(ifindex)
        }
        Verdict::RedirectNeigh(ifindex) => {
            trace::note_redirect(ifindex);
            redirect::neigh(ifindex)
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
