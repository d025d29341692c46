//! What may enter the lab's datapath and what may leave it: the checks
//! that keep the lab closed and its addresses honest, before NAT on the
//! way in and after it on the way out of the uplink.
//!
//! - A lab namespace may only send from a lab subnet, and (the lab is
//!   closed) only to the lab: its subnets, its host addresses, the
//!   uplink's subnet (the world), multicast and broadcast, and the pods of
//!   the cluster's other nodes (peers).
//! - The uplink may only bring sources from beyond the lab (a lab subnet
//!   arriving there is spoofed, as rp_filter would say), and only to the
//!   lab's host addresses (published ports, replies to masquerade), the
//!   uplink's own subnet, or subnets the lab routes without masquerade.
//!   A peer node's pod may reach the lab's subnets, masqueraded or not
//!   (pod to pod keeps its addresses in a cluster, as kindnet routes it).
//!   Any other routed access into a masqueraded subnet (a world host
//!   routing the lab subnet via the uplink) is dropped, as Docker 28 drops routed access
//!   to a NAT network's unpublished ports; so is transit through the host
//!   to anywhere else (the routing table says which packets the host
//!   would forward; its own other addresses answer as they would without
//!   the lab).
//! - On the way out of the uplink, a masqueraded source NAT left
//!   untranslated (it could not translate it) is dropped: no lab address
//!   leaves, but toward a peer node's pods, which see it as it is.

use aya_ebpf::programs::TcContext;
use netlab_common::nat::{APPLY_INGRESS, ROLE_LAB, ROLE_UPLINK, Stat};

use crate::{
    fib::{self, Asker},
    lab::{Iface, Lab, is_group},
    pkt::{ipv6, parse::Parsed},
};

/// The checks of a packet coming in, before any translation.
#[inline(always)]
pub fn admit(ctx: &TcContext, lab: &Lab, iface: &Iface, parsed: &Parsed) -> Result<(), Stat> {
    let Some(ip) = parsed.ip() else {
        return Ok(());
    };
    admit_addrs(Asker::tc(ctx), lab, iface, ip.saddr, ip.daddr, ip.proto)
}

/// [`admit`] for a packet from `saddr` to `daddr`.
#[inline(always)]
pub fn admit_addrs(
    asker: Asker,
    lab: &Lab,
    iface: &Iface,
    saddr: u32,
    daddr: u32,
    proto: u8,
) -> Result<(), Stat> {
    // The uplink's subnet is the world's; any other lab subnet lives
    // behind the lab's own veths.
    let internal = |addr: u32| !lab.in_uplink_net(addr) && lab.is_internal(addr);
    match iface.role {
        ROLE_UPLINK => {
            if internal(saddr) {
                return Err(Stat::SpoofedSource);
            }
            if lab.cfg.closed == 0
                || lab.is_local(daddr)
                || lab.in_uplink_net(daddr)
                || is_group(daddr)
            {
                return Ok(());
            }
            if lab.is_service(daddr) {
                // ClusterIPs serve the lab and the cluster's nodes, each
                // at its own node; the world reaches a Service through a
                // NodePort.
                return Err(Stat::RoutedIntoLab);
            }
            if lab.is_peer(saddr) && internal(daddr) {
                // Another node's pod, routed over the cluster's underlay.
                return Ok(());
            }
            if lab.is_masqueraded(daddr) {
                return Err(Stat::RoutedIntoLab);
            }
            if internal(daddr) {
                // A subnet the lab routes as it is (no masquerade).
                return Ok(());
            }
            // The host's own other addresses answer the world as they
            // would without the lab; forwarding beyond is transit.
            if fib::forwards(asker, saddr, daddr, proto) {
                return Err(Stat::WorldTransit);
            }
            Ok(())
        }
        ROLE_LAB => {
            if lab.cfg.closed != 0 && !lab.in_lab(daddr) {
                return Err(Stat::LeaveLab);
            }
            if saddr != 0 && !internal(saddr) {
                return Err(Stat::SpoofedSource);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// IPv6's admission, as IPv4's and Docker's ip6tables rules have it: on
/// the uplink's way in (before NAT66), no source from one of the lab's
/// IPv6 subnets (spoofed) and no routed access into a masqueraded one; on
/// its way out (after NAT66), no lab source (one NAT66 left untranslated
/// would leak); on a lab veth, only what stays on its link (link-local
/// unicast, multicast: neighbour discovery), what goes from one of the
/// lab's IPv6 subnets or host addresses to another, and what goes between
/// a masqueraded subnet and the uplink's (the world, through masquerade
/// and published ports): from a masqueraded subnet as a namespace sends
/// it, to one as the host hands it on. A namespace sends from the lab's
/// subnets only (else spoofed).
#[inline(always)]
pub fn admit6(
    lab: &Lab,
    iface: &Iface,
    (saddr, daddr): (&[u32; 4], &[u32; 4]),
    hook: u8,
) -> Result<(), Stat> {
    if lab.cfg.closed == 0 {
        return Ok(());
    }
    match iface.role {
        ROLE_UPLINK if hook == APPLY_INGRESS => {
            if lab.is_internal6(saddr) {
                return Err(Stat::SpoofedSource);
            }
            if lab.is_masqueraded6(daddr) {
                return Err(Stat::RoutedIntoLab);
            }
            Ok(())
        }
        ROLE_UPLINK => {
            if lab.is_internal6(saddr) {
                return Err(Stat::UntranslatedLeak);
            }
            Ok(())
        }
        ROLE_LAB => {
            if ipv6::is_link_scope(daddr) {
                return Ok(());
            }
            let inside = |addr: &[u32; 4]| lab.is_internal6(addr) || lab.is_local6(addr);
            if hook == APPLY_INGRESS && !inside(saddr) {
                return Err(Stat::SpoofedSource);
            }
            let world = if hook == APPLY_INGRESS {
                lab.is_masqueraded6(saddr) && lab.in_uplink_net6(daddr)
            } else {
                lab.in_uplink_net6(saddr) && lab.is_masqueraded6(daddr)
            };
            if (inside(saddr) && inside(daddr)) || world {
                return Ok(());
            }
            Err(Stat::Ipv6Closed)
        }
        _ => Ok(()),
    }
}

/// The uplink's last word on a packet leaving it untouched (`Pass`): a
/// masqueraded lab source that NAT left untranslated must not leave. The
/// reason to drop it, if so.
#[inline(always)]
pub fn uplink_leak(lab: &Lab, iface: &Iface, parsed: &Parsed) -> Option<Stat> {
    if iface.role != ROLE_UPLINK {
        return None;
    }
    let to_peer = parsed.ip().is_some_and(|ip| lab.is_peer(ip.daddr));
    parsed
        .saddr()
        .filter(|&saddr| lab.is_masqueraded(saddr) && !to_peer)
        .map(|_| Stat::UntranslatedLeak)
}
