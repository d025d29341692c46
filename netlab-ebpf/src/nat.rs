//! Address and port translation: new DNAT flows to published ports, new
//! masquerade (SNAT) flows, source-port allocation, and the packet rewrite
//! with its checksum fix-ups.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    macros::map,
    maps::{Array, HashMap, LpmTrie, lpm_trie::Key},
    programs::TcContext,
};
use netlab_common::nat::{
    APPLY_EGRESS, APPLY_INGRESS, Backend, CtEntry, DIR_ORIGINAL, DIR_REPLY, FlowKey, IPPROTO_ICMP,
    IPPROTO_TCP, IPPROTO_UDP, IfaceConfig, NAT_DNAT, NAT_REFLECT, NAT_SNAT, NatConfig, PublishKey,
    ROLE_LAB, ROLE_UPLINK, Stat, TcpState,
};

use crate::{
    conntrack,
    parse::{ETH_HLEN, ICMP_ECHO_REQUEST, IcmpError, Packet, TCP_ACK, TCP_SYN},
    stats,
};

#[map(name = "NAT_CONFIG")]
pub(crate) static NAT_CONFIG: Array<NatConfig> = Array::pinned(1, 0);

#[map(name = "PUBLISHED")]
pub(crate) static PUBLISHED: HashMap<PublishKey, Backend> = HashMap::pinned(65536 * 2, 0);

#[map(name = "LOCAL_ADDRS")]
pub(crate) static LOCAL_ADDRS: HashMap<u32, u32> = HashMap::pinned(256, 0);

#[map(name = "MASQ_SUBNETS")]
static MASQ_SUBNETS: LpmTrie<u32, u32> = LpmTrie::pinned(256, 0);

#[map(name = "LAB_NETS")]
static LAB_NETS: LpmTrie<u32, u32> = LpmTrie::pinned(1024, 0);

#[map(name = "IFACE_CONFIG")]
static IFACE_CONFIG: HashMap<u32, IfaceConfig> = HashMap::pinned(4096, 0);

/// How many candidate ports a new SNAT flow tries before giving up.
const PORT_PROBES: u32 = 32;

/// The tuple a packet leaves with.
#[derive(Clone, Copy)]
pub struct Tuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
}

impl Tuple {
    #[inline(always)]
    fn of(entry: &CtEntry) -> Tuple {
        Tuple {
            saddr: entry.saddr,
            daddr: entry.daddr,
            sport: entry.sport,
            dport: entry.dport,
        }
    }
}

/// What to do with a packet once NAT has looked at it.
pub enum Verdict {
    Pass,
    Drop,
    /// Sent back out of this ifindex (a reflected hairpin flow).
    Reflect(u32),
    /// `redirect` datapath: into the namespace behind this host-side veth.
    RedirectPeer(u32),
    /// `redirect` datapath: out of this interface, next hop from the FIB.
    RedirectNeigh(u32),
}

#[inline(always)]
pub fn is_masqueraded_source(saddr: u32) -> bool {
    MASQ_SUBNETS.get(Key::new(32, saddr)).is_some()
}

/// Applies a known flow's translation if this hook owns it.
/// Returns `None` when the packet has no live flow (handle it as new).
#[inline(always)]
pub fn apply_known(ctx: &TcContext, pkt: &Packet, hook: u8) -> Option<Verdict> {
    let entry_ptr = conntrack::lookup(&pkt.key)?;
    // SAFETY: a map value pointer from a successful lookup.
    if unsafe { (*entry_ptr).apply } != hook {
        // Another hook translates this flow (masquerade waits for egress).
        return Some(Verdict::Pass);
    }
    match conntrack::track(pkt, &pkt.key, entry_ptr) {
        conntrack::Tracked::Rewrite(entry) => {
            stats::count(Stat::Translated);
            Some(finish(ctx, pkt, &Tuple::of(&entry), entry.nat))
        }
        conntrack::Tracked::Expired => None,
        conntrack::Tracked::HalfEvicted => Some(Verdict::Drop),
    }
}

/// A new flow entering on a lab veth or the uplink: DNAT when it is for a
/// published port on one of the host's published addresses.
#[inline(always)]
pub fn new_ingress(ctx: &TcContext, pkt: &Packet) -> Verdict {
    let key = &pkt.key;
    if key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP {
        return Verdict::Pass;
    }
    if LOCAL_ADDRS.get_ptr(key.daddr).is_none() {
        return Verdict::Pass;
    }
    let Some(backend) = PUBLISHED.get_ptr(PublishKey {
        port: key.dport,
        proto: key.proto,
        _pad: 0,
    }) else {
        return Verdict::Pass;
    };
    // SAFETY: a map value pointer from a successful lookup.
    let backend = unsafe { *backend };
    if !opens_flow(pkt) {
        stats::count(Stat::TcpNotSyn);
        return Verdict::Drop;
    }
    let mut out = Tuple {
        saddr: key.saddr,
        daddr: backend.addr,
        sport: key.sport,
        dport: backend.port,
    };
    let mut nat = NAT_DNAT;
    if key.saddr == backend.addr {
        // A namespace reaching its own published port: the backend would see
        // its own address as the source and drop the packet as a martian, so
        // the source becomes the segment's gateway (Docker's hairpin NAT).
        // SAFETY: ifindex read from the context.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        // SAFETY: a map value pointer from a successful lookup.
        let gateway = match IFACE_CONFIG.get_ptr(ifindex) {
            Some(cfg) => unsafe { (*cfg).gateway },
            None => 0,
        };
        if gateway == 0 {
            return Verdict::Pass;
        }
        out.saddr = gateway;
        if !allocate_port(key, &mut out) {
            return Verdict::Drop;
        }
        nat |= NAT_SNAT | NAT_REFLECT;
        stats::count(Stat::HairpinNew);
        return create_and_rewrite(ctx, pkt, out, nat, APPLY_INGRESS, APPLY_INGRESS);
    }
    stats::count(Stat::DnatNew);
    create_and_rewrite(ctx, pkt, out, nat, APPLY_INGRESS, APPLY_EGRESS)
}

/// Whether a packet entering from a lab namespace is for a destination
/// outside the lab, which the host would forward out of some other
/// interface (its own uplink to the real network, say): the lab is closed.
#[inline(always)]
pub fn leaves_lab(ctx: &TcContext) -> bool {
    if !NAT_CONFIG.get(0).is_some_and(|cfg| cfg.closed != 0) {
        return false;
    }
    // SAFETY: ifindex read from the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a map value pointer from a successful lookup.
    let from_lab = IFACE_CONFIG
        .get_ptr(ifindex)
        .is_some_and(|cfg| unsafe { (*cfg).role } == ROLE_LAB);
    if !from_lab {
        return false;
    }
    match ctx.load::<u16>(12) {
        Ok(ethertype) if u16::from_be(ethertype) == 0x0800 => {}
        _ => return false,
    }
    match ctx.load::<u32>(ETH_HLEN + 16) {
        Ok(daddr) => LAB_NETS.get(Key::new(32, daddr)).is_none(),
        Err(_) => false,
    }
}

/// Whether the interface the program runs on is the lab's uplink.
#[inline(always)]
pub fn on_uplink(ctx: &TcContext) -> bool {
    // SAFETY: ifindex read from the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a map value pointer from a successful lookup.
    IFACE_CONFIG
        .get_ptr(ifindex)
        .is_some_and(|cfg| unsafe { (*cfg).role } == ROLE_UPLINK)
}

/// A new flow leaving through the uplink: masquerade when its source is a
/// masqueraded lab subnet.
#[inline(always)]
pub fn new_egress(ctx: &TcContext, pkt: &Packet) -> Verdict {
    let key = &pkt.key;
    if !is_masqueraded_source(key.saddr) || !on_uplink(ctx) {
        return Verdict::Pass;
    }
    let masq_addr = match NAT_CONFIG.get(0) {
        Some(cfg) if cfg.masq_addr != 0 => cfg.masq_addr,
        _ => return Verdict::Pass,
    };
    // Anything that cannot be tracked must not leave with a lab address.
    if !opens_flow(pkt) {
        stats::count(Stat::TcpNotSyn);
        return Verdict::Drop;
    }
    let mut out = Tuple {
        saddr: masq_addr,
        daddr: key.daddr,
        sport: key.sport,
        dport: key.dport,
    };
    if !allocate_port(key, &mut out) {
        return Verdict::Drop;
    }
    stats::count(Stat::SnatNew);
    create_and_rewrite(ctx, pkt, out, NAT_SNAT, APPLY_EGRESS, APPLY_INGRESS)
}

/// Whether a packet of an unknown flow may create one: a TCP SYN, any UDP
/// datagram, an ICMP echo request.
#[inline(always)]
fn opens_flow(pkt: &Packet) -> bool {
    match pkt.key.proto {
        IPPROTO_TCP => pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        IPPROTO_ICMP => pkt.icmp_type == ICMP_ECHO_REQUEST,
        _ => true,
    }
}

/// Picks the SNAT source port (ICMP: echo identifier) for `out`: the
/// original one when it is inside the configured range and free, else a
/// hash-chosen one, probing [`PORT_PROBES`] candidates.
#[inline(always)]
fn allocate_port(key: &FlowKey, out: &mut Tuple) -> bool {
    let (min, max) = match NAT_CONFIG.get(0) {
        Some(cfg) if cfg.port_min != 0 && cfg.port_max >= cfg.port_min => {
            (u32::from(cfg.port_min), u32::from(cfg.port_max))
        }
        _ => (32768, 60999),
    };
    // Never zero (max >= min above); `max(1)` lets the compiler see it, so
    // no divide-by-zero panic path reaches the verifier.
    let span = (max - min + 1).max(1);
    let now = conntrack::now();
    let original = u32::from(u16::from_be(key.sport));
    let mix = (key.saddr
        ^ key.daddr.rotate_left(13)
        ^ (u32::from(key.sport) << 16)
        ^ u32::from(key.dport))
    .wrapping_mul(0x9e37_79b1);
    let start = if original >= min && original <= max {
        original - min
    } else {
        (mix >> 8) % span
    };
    for i in 0..PORT_PROBES {
        if i >= span {
            break;
        }
        let port = min + (start + i) % span;
        out.sport = (port as u16).to_be();
        let reply = FlowKey {
            saddr: out.daddr,
            daddr: out.saddr,
            sport: out.dport,
            dport: out.sport,
            proto: key.proto,
            _pad: [0; 3],
        };
        if conntrack::reply_key_free(&reply, now) {
            return true;
        }
    }
    stats::count(Stat::PortExhausted);
    false
}

#[inline(always)]
fn create_and_rewrite(
    ctx: &TcContext,
    pkt: &Packet,
    out: Tuple,
    nat: u8,
    apply_original: u8,
    apply_reply: u8,
) -> Verdict {
    let key = &pkt.key;
    let now = conntrack::now();
    let reply_key = FlowKey {
        saddr: out.daddr,
        daddr: out.saddr,
        sport: out.dport,
        dport: out.sport,
        proto: key.proto,
        _pad: [0; 3],
    };
    let original = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        packets: 1,
        bytes: u64::from(pkt.len),
        saddr: out.saddr,
        daddr: out.daddr,
        sport: out.sport,
        dport: out.dport,
        peer: reply_key,
        direction: DIR_ORIGINAL,
        nat,
        apply: apply_original,
        tcp_state: if key.proto == IPPROTO_TCP {
            TcpState::SynSent as u8
        } else {
            TcpState::None as u8
        },
        flags: 0,
        _pad: [0; 7],
    };
    // Replies are restored to the original tuple, reversed.
    let reply = CtEntry {
        created_ns: now,
        last_seen_ns: now,
        packets: 0,
        bytes: 0,
        saddr: key.daddr,
        daddr: key.saddr,
        sport: key.dport,
        dport: key.sport,
        peer: *key,
        direction: DIR_REPLY,
        nat,
        apply: apply_reply,
        tcp_state: 0,
        flags: 0,
        _pad: [0; 7],
    };
    if conntrack::insert_flow(key, &original, &reply).is_err() {
        stats::count(Stat::CtInsertFailed);
        return Verdict::Drop;
    }
    finish(ctx, pkt, &out, nat)
}

/// Rewrites the packet; a reflected flow also swaps its MAC addresses (the
/// peer becomes the destination, the gateway the source) and goes straight
/// back out.
#[inline(always)]
fn finish(ctx: &TcContext, pkt: &Packet, out: &Tuple, nat: u8) -> Verdict {
    if rewrite(ctx, pkt, out).is_err() {
        stats::count(Stat::RewriteFailed);
        return Verdict::Drop;
    }
    if nat & NAT_REFLECT == 0 {
        return Verdict::Pass;
    }
    let Ok(macs) = ctx.load::<[u8; 12]>(0) else {
        stats::count(Stat::RewriteFailed);
        return Verdict::Drop;
    };
    let swapped = [
        macs[6], macs[7], macs[8], macs[9], macs[10], macs[11], macs[0], macs[1], macs[2], macs[3],
        macs[4], macs[5],
    ];
    if ctx.store(0, &swapped, 0).is_err() {
        stats::count(Stat::RewriteFailed);
        return Verdict::Drop;
    }
    // SAFETY: ifindex read from the context.
    Verdict::Reflect(unsafe { (*ctx.skb.skb).ifindex })
}

/// Replaces the IPv4 address at `offset` (no-op when unchanged), fixing the
/// IP header checksum at `ip_csum` and, when given, an L4 checksum that
/// covers it through the pseudo-header (`(offset, BPF_F_* flags)`).
#[inline(always)]
fn set_addr(
    ctx: &TcContext,
    offset: usize,
    ip_csum: usize,
    old: u32,
    new: u32,
    l4_csum: Option<(usize, u64)>,
) -> Result<(), ()> {
    if old == new {
        return Ok(());
    }
    if let Some((csum, flags)) = l4_csum {
        ctx.l4_csum_replace(csum, u64::from(old), u64::from(new), flags | 4)
            .map_err(|_| ())?;
    }
    ctx.l3_csum_replace(ip_csum, u64::from(old), u64::from(new), 4)
        .map_err(|_| ())?;
    ctx.store(offset, &new, 0).map_err(|_| ())
}

/// Replaces a 16-bit port or ICMP identifier at `offset` (no-op when
/// unchanged), fixing the L4 checksum at `csum` (ports are not part of the
/// pseudo-header, so only the flags about a zero UDP checksum apply).
#[inline(always)]
fn set_port(
    ctx: &TcContext,
    offset: usize,
    csum: usize,
    old: u16,
    new: u16,
    flags: u64,
) -> Result<(), ()> {
    if old == new {
        return Ok(());
    }
    ctx.l4_csum_replace(csum, u64::from(old), u64::from(new), flags | 2)
        .map_err(|_| ())?;
    ctx.store(offset, &new, 0).map_err(|_| ())
}

/// Rewrites addresses and ports to `out`, keeping the IP and L4 checksums
/// right whether or not the checksum is offloaded (CHECKSUM_PARTIAL): the
/// helpers update the pseudo-header part only where it applies, and leave a
/// UDP checksum of zero alone.
#[inline(always)]
fn rewrite(ctx: &TcContext, pkt: &Packet, out: &Tuple) -> Result<(), ()> {
    let key = &pkt.key;
    let (l3, l4) = (pkt.l3, pkt.l4);
    let (csum, l4_flags) = match key.proto {
        IPPROTO_TCP => (l4 + 16, u64::from(BPF_F_PSEUDO_HDR)),
        IPPROTO_UDP => (l4 + 6, u64::from(BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0)),
        _ => (l4 + 2, 0),
    };
    // ICMP's checksum has no pseudo-header: addresses do not enter it.
    let icmp = key.proto == IPPROTO_ICMP;
    let pseudo = (!icmp).then_some((csum, l4_flags));
    set_addr(ctx, l3 + 12, l3 + 10, key.saddr, out.saddr, pseudo)?;
    set_addr(ctx, l3 + 16, l3 + 10, key.daddr, out.daddr, pseudo)?;
    if icmp {
        // The echo identifier is the request's sport and the reply's dport.
        let (old, new) = if pkt.icmp_type == ICMP_ECHO_REQUEST {
            (key.sport, out.sport)
        } else {
            (key.dport, out.dport)
        };
        return set_port(ctx, l4 + 4, csum, old, new, 0);
    }
    let port_flags = l4_flags & u64::from(BPF_F_MARK_MANGLED_0);
    set_port(ctx, l4, csum, key.sport, out.sport, port_flags)?;
    set_port(ctx, l4 + 2, csum, key.dport, out.dport, port_flags)
}

/// Translates an ICMP error about a tracked flow, so it reaches the right
/// host with the embedded header it would expect: the embedded packet went
/// the other way, so its reversed tuple is the key of the error's direction,
/// and the entry found says how that direction is rewritten.
///
/// Returns `None` when no flow of this hook matches (the caller then treats
/// the error as any untranslatable packet).
#[inline(always)]
pub fn icmp_error(ctx: &TcContext, err: &IcmpError, hook: u8) -> Option<Verdict> {
    let key = err.inner.reversed();
    // SAFETY: a map value pointer from a successful lookup.
    let entry = unsafe { *conntrack::lookup(&key)? };
    if entry.apply != hook {
        return None;
    }
    // An error from a router inside a masqueraded subnet (not the flow's
    // endpoint) leaving through the uplink takes the masquerade address, as
    // netfilter does for related ICMP errors: no lab address leaves.
    let mut outer_saddr = entry.saddr;
    if err.saddr != key.saddr {
        outer_saddr = err.saddr;
        if hook == APPLY_EGRESS && is_masqueraded_source(err.saddr) && on_uplink(ctx) {
            outer_saddr = match NAT_CONFIG.get(0) {
                Some(cfg) if cfg.masq_addr != 0 => cfg.masq_addr,
                _ => return Some(Verdict::Drop),
            };
        }
    }
    stats::count(Stat::IcmpErrorTranslated);
    Some(
        match rewrite_icmp_error(ctx, err, &key, &entry, outer_saddr) {
            Ok(()) => Verdict::Pass,
            Err(()) => {
                stats::count(Stat::RewriteFailed);
                Verdict::Drop
            }
        },
    )
}

#[inline(always)]
fn rewrite_icmp_error(
    ctx: &TcContext,
    err: &IcmpError,
    key: &FlowKey,
    entry: &CtEntry,
    outer_saddr: u32,
) -> Result<(), ()> {
    // Outer header: the error goes where the flow's packets go; its source
    // is what the caller decided (the flow's, or the router's own).
    if err.daddr == key.daddr {
        set_addr(ctx, err.l3 + 16, err.l3 + 10, err.daddr, entry.daddr, None)?;
    }
    set_addr(ctx, err.l3 + 12, err.l3 + 10, err.saddr, outer_saddr, None)?;
    // Embedded header, reversed: its source is the flow's destination.
    // Fixing its own checksum keeps its one's-complement sum, so the ICMP
    // checksum only moves with the ports.
    let inner = &err.inner;
    let (inner_l3, inner_l4, icmp_csum) = (err.inner_l3, err.inner_l4, err.l4 + 2);
    set_addr(
        ctx,
        inner_l3 + 12,
        inner_l3 + 10,
        inner.saddr,
        entry.daddr,
        None,
    )?;
    set_addr(
        ctx,
        inner_l3 + 16,
        inner_l3 + 10,
        inner.daddr,
        entry.saddr,
        None,
    )?;
    if inner.proto == IPPROTO_ICMP {
        let (old, new) = if err.inner_echo_request {
            (inner.sport, entry.dport)
        } else {
            (inner.dport, entry.sport)
        };
        return set_port(ctx, inner_l4 + 4, icmp_csum, old, new, 0);
    }
    set_port(ctx, inner_l4, icmp_csum, inner.sport, entry.dport, 0)?;
    set_port(ctx, inner_l4 + 2, icmp_csum, inner.dport, entry.sport, 0)
}
