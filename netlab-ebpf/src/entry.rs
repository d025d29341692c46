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
use netlab_common::nat::{APPLY_INGRESS, IPPROTO_UDP, NAT_DNAT, RedirectReason, Stat};

use crate::{
    admit,
    conntrack::{self, Fast},
    endpoints,
    fib::Asker,
    lab::{Iface, Lab},
    pkt::{
        csum,
        eth::ETH_P_IP,
        ipv4::{Ipv4Hdr, L3_OFF},
        l4::{TCP_CSUM_OFF, UDP_CSUM_OFF},
        plain::{Headers, L4_OFF, Plain},
        xdp,
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
    let ethertype = xdp::load::<u16>(ctx, crate::pkt::eth::ETH_PROTO_OFF)?;
    if u16::from_be(ethertype) != ETH_P_IP {
        return None;
    }
    let Some(hdr) = xdp::load::<Ipv4Hdr>(ctx, L3_OFF) else {
        return Some(Stat::BadHeader);
    };
    let len = ctx.data_end() - ctx.data();
    let ihl = hdr.header_len();
    let tot_len = hdr.total_len();
    if hdr.version() != 4 || ihl < 20 || tot_len < ihl || L3_OFF + tot_len > len {
        return Some(Stat::BadHeader);
    }
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
    let Fast::Hit(half) = conntrack::fast_lookup(&key, APPLY_INGRESS, pkt.tcp_flags) else {
        return None;
    };
    if half.nat != NAT_DNAT {
        return None;
    }
    let endpoint = endpoints::get(half.daddr)?;
    pkt.translate(half.saddr, half.daddr, half.sport, half.dport);
    pkt.routed = 1;
    pkt.set_macs(endpoint.mac, endpoint.gateway_mac);
    if !write(ctx, &pkt) {
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

/// Writes `pkt`'s changed headers into the frame: the IP and L4 checksums
/// updated as complete ones (see the module's documentation), a UDP
/// checksum of zero left zero.
#[inline(always)]
fn write(ctx: &XdpContext, pkt: &Plain) -> bool {
    let key = pkt.key;
    let mut hdr: Headers = pkt.hdr;
    let (saddr, daddr, sport, dport) = (hdr.ip.saddr, hdr.ip.daddr, hdr.sport, hdr.dport);
    let addrs = csum::diff32(csum::diff32(0, key.saddr, saddr), key.daddr, daddr);
    let ports = csum::diff16(csum::diff16(0, key.sport, sport), key.dport, dport);
    let field = L4_OFF
        + if key.proto == IPPROTO_UDP {
            UDP_CSUM_OFF
        } else {
            TCP_CSUM_OFF
        };
    let Some(l4_check) = xdp::load::<u16>(ctx, field) else {
        return false;
    };
    if !(key.proto == IPPROTO_UDP && l4_check == 0) {
        // The addresses enter the pseudo-header; the ports the header.
        let mut new = csum::apply_diff(csum::apply_diff(l4_check, addrs), ports);
        if key.proto == IPPROTO_UDP && new == 0 {
            new = 0xffff;
        }
        if !xdp::store(ctx, field, &new) {
            return false;
        }
    }
    let ip = hdr.ip;
    let old = u16::from_be_bytes([ip.ttl, ip.proto]).to_be();
    hdr.ip.ttl = ip.ttl - 1;
    let new = u16::from_be_bytes([ip.ttl - 1, ip.proto]).to_be();
    hdr.ip.check = csum::apply_diff(ip.check, csum::diff16(addrs, old, new));
    xdp::store(ctx, 0, &hdr)
}
