//! The XDP entry (`xdp_uplink`, on the uplink's host end when the lab asks
//! for `entry = "xdp"`): what arrives from the world meets netlab before
//! the host builds on it.
//!
//! - It drops what the TC programs would drop on the uplink's ingress
//!   (spoofed lab sources, routed access into a masqueraded subnet, transit
//!   through the host), with the same reasons, and IPv4 headers that are
//!   not one (the host's stack would drop them later).
//! - With the `redirect` datapath, a packet of an established flow to a
//!   published port is translated here and handed to its backend's veth
//!   (`XDP_REDIRECT`), the MACs and TTL of the router hop with it.
//! - Everything else goes on to the TC programs (`XDP_PASS`), as does
//!   everything while a trace runs (a trace records TC hops).
//!
//! Its rewrites update the L4 checksum as a complete one: an XDP program
//! cannot see whether the sender left it to an offload (a veth peer's
//! stack does by default), so netlab turns transmit checksum offload off
//! on the uplink's peer when it attaches this program, and the backend's
//! veth needs NAPI to take a redirected frame (netlab turns GRO on there).
//! ARCHITECTURE.md and the README say what that costs.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_redirect,
    programs::XdpContext,
};
use netlab_common::nat::{APPLY_INGRESS, NAT_DNAT, RedirectReason, Stat};

use crate::{
    admit,
    conntrack::{self, Fast, V4},
    endpoints,
    fib::Asker,
    lab::{Iface, Lab},
    pkt::{
        plain::{self, Plain},
        xdp::{self, L3},
    },
    redirect, stats, trace,
};

/// The XDP entry's verdict on a frame from the world.
#[inline(always)]
pub fn uplink(ctx: &XdpContext) -> u32 {
    if trace::config().is_some() {
        return XDP_PASS;
    }
    let Some(lab) = Lab::get() else {
        return XDP_PASS;
    };
    if let Some(reason) = refused(ctx, &lab) {
        stats::count(reason);
        return XDP_DROP;
    }
    if lab.redirect()
        && let Some(verdict) = to_backend(ctx, &lab)
    {
        return verdict;
    }
    XDP_PASS
}

/// Why the frame is dropped here, if it is.
#[inline(always)]
fn refused(ctx: &XdpContext, lab: &Lab) -> Option<Stat> {
    let hdr = match xdp::l3(ctx) {
        L3::NotIpv4 => return None,
        L3::Bad => return Some(Stat::BadHeader),
        L3::Ipv4(hdr) => hdr,
    };
    let iface = Iface::of_index(ctx.ingress_ifindex() as u32);
    admit::admit_addrs(
        Asker::xdp(ctx),
        lab,
        &iface,
        hdr.saddr,
        hdr.daddr,
        hdr.proto,
    )
    .err()
}

/// An established flow's packet to a published port, translated and
/// handed to its backend's veth; `None` for the TC programs to decide.
#[inline(always)]
fn to_backend(ctx: &XdpContext, lab: &Lab) -> Option<u32> {
    let mut pkt = Plain::read_xdp(ctx)?;
    let key = pkt.key;
    if !lab.is_local(key.daddr) || pkt.hdr.ip.ttl <= 1 {
        return None;
    }
    let Fast::Hit(half) = conntrack::fast_lookup::<V4>(&key, APPLY_INGRESS, pkt.tcp_flags) else {
        return None;
    };
    if half.nat != NAT_DNAT {
        return None;
    }
    let endpoint = endpoints::get(half.daddr)?;
    pkt.translate(half.saddr, half.daddr, half.sport, half.dport);
    pkt.routed = 1;
    pkt.set_macs(endpoint.mac, endpoint.gateway_mac);
    if !plain::write_xdp(ctx, &pkt) {
        return None;
    }
    conntrack::fast_count(half, pkt.len);
    stats::count(Stat::XdpRedirected);
    redirect::count(
        &Iface::of_index(ctx.ingress_ifindex() as u32),
        RedirectReason::Peer,
    );
    // SAFETY: plain helper; the target is a veth of the lab.
    Some(unsafe { bpf_redirect(endpoint.ifindex, 0) } as u32)
}
