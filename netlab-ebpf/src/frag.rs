//! IP fragments. Only a datagram's first fragment carries the L4 ports NAT
//! keys flows by; the later ones carry addresses alone. Each hop that sees
//! a first fragment remembers its ports under the datagram's addresses,
//! protocol and IP id (as Cilium's fragment map), and later fragments look
//! them up there, so a fragmented datagram is translated whole, in order.
//!
//! A later fragment that arrives before its first cannot be translated
//! (netfilter reassembles first; a TC program cannot hold packets): it is
//! dropped when NAT would apply to it (`frag_unknown`), passed otherwise.

use aya_ebpf::{macros::map, maps::LruHashMap};
use netlab_common::nat::{FlowKey, FragKey, FragPorts};

use crate::pkt::{
    ctx::value,
    parse::{Ip, Packet},
};

#[map(name = "FRAGMENTS")]
static FRAGMENTS: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(8192, 0);

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
