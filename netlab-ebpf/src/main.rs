//! netlab's kernel side: thin program entry points over datapath modules
//! split by concern (as Cilium's `bpf/lib`): [`parse`], [`conntrack`],
//! [`nat`], [`sock`], [`stats`], [`counters`]. Each entry point maps the modules'
//! outcome to a TC verdict and nothing else.

#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod drops;
mod nat;
mod parse;
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
    Direction,
    nat::{APPLY_EGRESS, APPLY_INGRESS, Stat},
    trace::Hook,
};

use crate::{
    nat::Verdict,
    parse::{NotParsed, parse},
};

/// TCX_NEXT: let the next program on the hook (or the stack) decide.
const TCX_NEXT: i32 = TC_ACT_UNSPEC;
const DROP: i32 = TC_ACT_SHOT;

#[classifier]
pub fn count_ingress(ctx: TcContext) -> i32 {
    counters::count(&ctx, Direction::Ingress);
    trace::hop(&ctx, Hook::Ingress);
    TCX_NEXT
}

#[classifier]
pub fn count_egress(ctx: TcContext) -> i32 {
    counters::count(&ctx, Direction::Egress);
    trace::hop(&ctx, Hook::Egress);
    TCX_NEXT
}

/// Ingress of every lab veth's host side and of the uplink (counts too, so
/// one program runs per hop instead of two).
#[classifier]
pub fn nat_ingress(ctx: TcContext) -> i32 {
    let traced = trace::begin(&ctx);
    let action = nat_ingress_action(TcContext::new(ctx.skb.skb));
    trace::end(&ctx, traced, Hook::NatIngress, action)
}

#[inline(always)]
fn nat_ingress_action(ctx: TcContext) -> i32 {
    counters::count(&ctx, Direction::Ingress);
    stats::count(Stat::Packets);
    if nat::leaves_lab(&ctx) {
        stats::count(Stat::LeaveLab);
        return DROP;
    }
    let pkt = match parse(&ctx) {
        Ok(pkt) => pkt,
        Err(NotParsed::IcmpError(err))
            if let Some(verdict) = nat::icmp_error(&ctx, &err, APPLY_INGRESS) =>
        {
            return to_action(verdict);
        }
        Err(why) => {
            count_unparsed(why);
            if redirect::enabled() {
                redirect::count(&ctx, netlab_common::nat::RedirectReason::FallbackUnparsed);
            }
            // Untranslatable packets go to the stack untouched, which
            // validates and drops what is malformed.
            return TCX_NEXT;
        }
    };
    let verdict = match nat::apply_known(&ctx, &pkt, APPLY_INGRESS) {
        Some(verdict) => verdict,
        None => nat::new_ingress(&ctx, &pkt),
    };
    match verdict {
        Verdict::Pass if redirect::enabled() => to_action(redirect::forward(&ctx)),
        verdict => to_action(verdict),
    }
}

/// Egress of every lab veth's host side and of the uplink: masquerade (on
/// the uplink) and the source rewrite of replies to published ports.
#[classifier]
pub fn nat_egress(ctx: TcContext) -> i32 {
    let traced = trace::begin(&ctx);
    let action = nat_egress_action(TcContext::new(ctx.skb.skb));
    trace::end(&ctx, traced, Hook::NatEgress, action)
}

#[inline(always)]
fn nat_egress_action(ctx: TcContext) -> i32 {
    counters::count(&ctx, Direction::Egress);
    stats::count(Stat::Packets);
    let pkt = match parse(&ctx) {
        Ok(pkt) => pkt,
        Err(NotParsed::IcmpError(err))
            if let Some(verdict) = nat::icmp_error(&ctx, &err, APPLY_EGRESS) =>
        {
            return to_action(verdict);
        }
        Err(why) => {
            count_unparsed(why);
            // What we cannot translate must not leave with a lab address.
            return match why {
                NotParsed::Fragment(saddr) | NotParsed::Unsupported(saddr)
                    if nat::is_masqueraded_source(saddr) && nat::on_uplink(&ctx) =>
                {
                    DROP
                }
                NotParsed::IcmpError(err)
                    if nat::is_masqueraded_source(err.saddr) && nat::on_uplink(&ctx) =>
                {
                    DROP
                }
                _ => TCX_NEXT,
            };
        }
    };
    let verdict = match nat::apply_known(&ctx, &pkt, APPLY_EGRESS) {
        Some(verdict) => verdict,
        None => nat::new_egress(&ctx, &pkt),
    };
    to_action(verdict)
}

/// Records one hop while tracing is on: tail-called by the programs above
/// (see [`trace`]), it returns their verdict.
#[classifier]
pub fn trace_hop(ctx: TcContext) -> i32 {
    trace::tail(&ctx)
}

/// `skb:kfree_skb`: the kernel dropped a packet; traced when it is a lab
/// packet's (see [`drops`]).
#[tracepoint]
pub fn trace_kfree_skb(ctx: TracePointContext) -> u32 {
    drops::kfree_skb(&ctx);
    0
}

/// `skb:consume_skb`: a traced packet's journey ends.
#[tracepoint]
pub fn trace_consume_skb(ctx: TracePointContext) -> u32 {
    drops::consume_skb(&ctx);
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
fn count_unparsed(why: NotParsed) {
    stats::count(match why {
        NotParsed::NotIpv4 => Stat::NonIpv4,
        NotParsed::Malformed => Stat::Malformed,
        NotParsed::Fragment(_) => Stat::Fragment,
        NotParsed::Unsupported(_) | NotParsed::IcmpError(_) => Stat::Unsupported,
    });
}

#[inline(always)]
fn to_action(verdict: Verdict) -> i32 {
    match verdict {
        Verdict::Pass => TCX_NEXT,
        Verdict::Drop => DROP,
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
