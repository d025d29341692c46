//! IP fragments. Only a datagram's first fragment carries the L4 ports NAT
//! keys flows by; the later ones carry addresses alone. Each hop that sees
//! a first fragment remembers its ports under the datagram's addresses,
//! protocol and IP id (as Cilium's fragment map), and later fragments look
//! them up there, so a fragmented datagram is translated whole, in order.
//!
//! A later fragment that arrives before its first cannot be translated
//! (netfilter reassembles first; a TC program cannot hold packets): it is
//! dropped when NAT would apply to it (`frag_unknown`), passed otherwise.
//!
//! IPv6 alike, in a map of its own keyed by the fragment header's 32-bit
//! identification (`FRAGMENTS6`).

use aya_ebpf::{macros::map, maps::LruHashMap};
use netlab_common::nat::{FlowKey, FlowKey6, FragKey, FragKey6, FragPorts};

use crate::pkt::{
    ctx::value,
    parse::{Ip, Packet},
    parse6::Packet6,
};

#[map(name = "FRAGMENTS")]
static FRAGMENTS: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(8192, 0);

#[map(name = "FRAGMENTS6")]
static FRAGMENTS6: LruHashMap<FragKey6, FragPorts> = LruHashMap::pinned(8192, 0);

#[inline(always)]
fn key_of(ip: &Ip, saddr: u32, daddr: u32) -> FragKey {
    FragKey {
        saddr,
        daddr,
        id: ip.id,
        proto: ip.proto,
        _pad: 0,
    }
}

/// Remembers a first fragment's ports under the addresses it has now.
#[inline(always)]
pub fn remember(pkt: &Packet, saddr: u32, daddr: u32, sport: u16, dport: u16) {
    let _ = FRAGMENTS.insert(key_of(&pkt.ip, saddr, daddr), FragPorts { sport, dport }, 0);
}

/// The flow key of a later fragment, when its first fragment was seen.
#[inline(always)]
pub fn flow_key(ip: &Ip) -> Option<FlowKey> {
    // SAFETY: copied at once; a racing eviction makes one fragment's
    // ports another datagram's, and conntrack then finds no flow for it.
    let ports = unsafe { value(FRAGMENTS.get_ptr(key_of(ip, ip.saddr, ip.daddr))) }.copied()?;
    Some(FlowKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: ports.sport,
        dport: ports.dport,
        proto: ip.proto,
        _pad0: 0,
        _pad1: 0,
    })
}

#[inline(always)]
fn key6_of(pkt: &Packet6, saddr: &[u32; 4], daddr: &[u32; 4]) -> FragKey6 {
    FragKey6 {
        saddr: *saddr,
        daddr: *daddr,
        id: pkt.frag_id,
        proto: pkt.key.proto,
        _pad: [0; 3],
    }
}

/// [`remember`] for an IPv6 first fragment.
#[inline(always)]
pub fn remember6(pkt: &Packet6, saddr: &[u32; 4], daddr: &[u32; 4], sport: u16, dport: u16) {
    let _ = FRAGMENTS6.insert(key6_of(pkt, saddr, daddr), FragPorts { sport, dport }, 0);
}

/// [`flow_key`] for an IPv6 later fragment (`pkt`'s key holds its
/// addresses and protocol).
#[inline(always)]
pub fn flow_key6(pkt: &Packet6) -> Option<FlowKey6> {
    let key = &pkt.key;
    // SAFETY: copied at once (see `flow_key`).
    let ports =
        unsafe { value(FRAGMENTS6.get_ptr(key6_of(pkt, &key.saddr, &key.daddr))) }.copied()?;
    Some(FlowKey6::new(
        key.saddr,
        key.daddr,
        ports.sport,
        ports.dport,
        key.proto,
    ))
}
