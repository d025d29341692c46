//! Address and port translation, as netfilter does it: destination
//! rewrites (DNAT to published ports, un-SNAT of replies) on ingress before
//! routing, source rewrites (masquerade, un-DNAT of replies) on egress after
//! it. Also the checks that keep the lab honest on the way in (the lab is
//! closed, sources are what the interface can carry) and on the way out of
//! the uplink (no masqueraded address leaves untranslated).

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_NO_PREALLOC},
    cty::c_void,
    helpers::bpf_loop,
    macros::map,
    maps::{Array, HashMap, LpmTrie, lpm_trie::Key},
    programs::TcContext,
};
use netlab_common::nat::{
    APPLY_EGRESS, APPLY_INGRESS, Backend, FlowKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    IfaceConfig, NAT_DNAT, NAT_REFLECT, NAT_SNAT, NET_INTERNAL, NatConfig, PublishKey, ROLE_LAB,
    ROLE_UPLINK, Stat,
};

use crate::{
    conntrack::{self, Known, Rewrite},
    endpoints, frag,
    pkt::{
        csum::{self, L4Csum},
        ctx::{self, value},
        eth::{ETH_DEST_OFF, MacPair},
        ipv4::{IPV4_DADDR_OFF, IPV4_SADDR_OFF, L3_OFF},
        l4::{
            ICMP_ECHO_REQUEST, ICMP_ID_OFF, L4_DPORT_OFF, L4_SPORT_OFF, TCP_ACK, TCP_CSUM_OFF,
            TCP_FIN, TCP_RST, TCP_SYN, UDP_CSUM_OFF,
        },
        parse::{IcmpError, LaterFragment, Packet, Parsed},
    },
    stats,
};

#[map(name = "NAT_CONFIG")]
static NAT_CONFIG: Array<NatConfig> = Array::pinned(1, 0);

/// Not preallocated (`BPF_F_NO_PREALLOC`): a lab publishes a few ports,
/// and preallocating room for every one took 4 ms of every `up`.
#[map(name = "PUBLISHED")]
pub(crate) static PUBLISHED: HashMap<PublishKey, Backend> =
    HashMap::pinned(65536 * 2, BPF_F_NO_PREALLOC);

#[map(name = "LOCAL_ADDRS")]
static LOCAL_ADDRS: HashMap<u32, u32> = HashMap::pinned(256, 0);

#[map(name = "MASQ_SUBNETS")]
static MASQ_SUBNETS: LpmTrie<u32, u32> = LpmTrie::pinned(256, 0);

#[map(name = "LAB_NETS")]
static LAB_NETS: LpmTrie<u32, u32> = LpmTrie::pinned(1024, 0);

#[map(name = "IFACE_CONFIG")]
static IFACE_CONFIG: HashMap<u32, IfaceConfig> = HashMap::pinned(4096, 0);

/// The lab's NAT configuration.
#[inline(always)]
pub fn config() -> Option<&'static NatConfig> {
    NAT_CONFIG.get(0)
}

/// Whether `addr` is one of the lab's host addresses (published ports
/// answer there; the host's own sockets use them).
#[inline(always)]
pub fn is_local(addr: u32) -> bool {
    LOCAL_ADDRS.get_ptr(addr).is_some()
}

#[inline(always)]
fn is_masqueraded(addr: u32) -> bool {
    MASQ_SUBNETS.get(Key::new(32, addr)).is_some()
}

/// The kind of lab network `addr` is in (`NET_*`), 0 when none.
#[inline(always)]
pub fn net_kind(addr: u32) -> u32 {
    LAB_NETS.get(Key::new(32, addr)).copied().unwrap_or(0)
}

/// What to do with a packet once NAT has looked at it.
#[derive(Clone, Copy)]
pub enum Verdict {
    /// Untouched: the next program or the stack decides.
    Pass,
    /// Rewritten as this says; then as [`Verdict::Pass`].
    Rewritten(Rewrite),
    Drop(Stat),
    /// Sent back out of this ifindex (a reflected hairpin flow).
    Reflect(u32),
    /// `redirect` datapath: into the namespace behind this host-side veth.
    RedirectPeer(u32),
    /// `redirect` datapath: out of this interface, next hop from the FIB.
    RedirectNeigh(u32),
}

impl Verdict {
    /// Whether the packet may leave with another tuple than it came with
    /// (a rewrite, or a redirect that may follow one).
    #[inline(always)]
    pub fn may_rewrite(&self) -> bool {
        !matches!(self, Verdict::Pass | Verdict::Drop(_))
    }
}

/// The interface a program runs on, as the lab configured it.
#[derive(Clone, Copy)]
pub struct Iface {
    pub ifindex: u32,
    /// `ROLE_*`, 0 for an interface the lab did not describe.
    pub role: u32,
    /// The address hairpin traffic is SNATed to, 0 when none.
    pub gateway: u32,
}

impl Iface {
    #[inline(always)]
    pub fn of(ctx: &TcContext) -> Iface {
        let ifindex = ctx::ifindex(ctx);
        let cfg = value(IFACE_CONFIG.get_ptr(ifindex));
        Iface {
            ifindex,
            role: cfg.map_or(0, |c| c.role),
            gateway: cfg.map_or(0, |c| c.gateway),
        }
    }
}

/// The checks of a packet coming in, before any translation:
/// - on the uplink, a source inside the lab's subnets is spoofed (they
///   live behind lab veths), as rp_filter would say;
/// - from a lab namespace, the source must be a lab subnet's, and when the
///   lab is closed the destination too (or the uplink's, the world's).
#[inline(always)]
pub fn admit(iface: &Iface, parsed: &Parsed) -> Result<(), Stat> {
    let Some(ip) = parsed.ip() else {
        return Ok(());
    };
    let Some(cfg) = config() else {
        return Ok(());
    };
    // The hash lookups and the uplink's subnet answer for most packets; the
    // trie only for the rest.
    let in_uplink_net =
        |addr: u32| addr & cfg.uplink_mask == cfg.uplink_net && cfg.uplink_mask != 0;
    let internal = |addr: u32| {
        endpoints::get(addr).is_some() || (!in_uplink_net(addr) && net_kind(addr) == NET_INTERNAL)
    };
    match iface.role {
        ROLE_UPLINK if !in_uplink_net(ip.saddr) && internal(ip.saddr) => Err(Stat::SpoofedSource),
        ROLE_LAB => {
            let in_lab = |addr: u32| {
                in_uplink_net(addr)
                    || endpoints::get(addr).is_some()
                    || is_local(addr)
                    || net_kind(addr) != 0
            };
            if cfg.closed != 0 && !in_lab(ip.daddr) {
                return Err(Stat::LeaveLab);
            }
            if ip.saddr != 0 && !internal(ip.saddr) {
                return Err(Stat::SpoofedSource);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The uplink's last word on a packet leaving it untouched (`Pass`): a
/// masqueraded lab source that NAT left untranslated (it could not
/// translate it) must not leave. The reason to drop it, if so.
#[inline(always)]
pub fn uplink_leak(iface: &Iface, parsed: &Parsed) -> Option<Stat> {
    if iface.role != ROLE_UPLINK {
        return None;
    }
    parsed
        .saddr()
        .filter(|&saddr| is_masqueraded(saddr))
        .map(|_| Stat::UntranslatedLeak)
}

/// Translates a packet of a flow at `hook`: a known flow's rewrite when
/// this hook owns it, else what a new flow gets here.
#[inline(always)]
pub fn translate(ctx: &TcContext, pkt: &Packet, hook: u8, iface: &Iface) -> Verdict {
    if pkt.ip.first_fragment {
        frag::remember(
            pkt,
            pkt.key.saddr,
            pkt.key.daddr,
            pkt.key.sport,
            pkt.key.dport,
        );
    }
    if let Some(verdict) = known(ctx, pkt, hook) {
        return verdict;
    }
    if hook == APPLY_INGRESS {
        new_ingress(ctx, pkt, iface)
    } else {
        new_egress(ctx, pkt, iface)
    }
}

/// A known flow's verdict at `hook`; `None` when no live flow has the
/// packet's key and the packet is to be handled as new.
#[inline(always)]
fn known(ctx: &TcContext, pkt: &Packet, hook: u8) -> Option<Verdict> {
    match conntrack::track(&pkt.key, hook, pkt.tcp_flags, pkt.len) {
        Known::None => None,
        // Another hook translates this flow (masquerade waits for egress).
        Known::OtherHook => Some(Verdict::Pass),
        Known::Rewrite(rewrite) => {
            stats::count(Stat::Translated);
            Some(finish(ctx, pkt, rewrite))
        }
        Known::HalfEvicted => Some(Verdict::Drop(Stat::CtHalfEvicted)),
    }
}

/// `pkt` as it is after `out` was applied to it.
#[inline(always)]
pub fn rewritten(pkt: &Packet, out: &Rewrite) -> Packet {
    let mut after = *pkt;
    after.ip.saddr = out.saddr;
    after.ip.daddr = out.daddr;
    after.key.saddr = out.saddr;
    after.key.daddr = out.daddr;
    if pkt.key.proto == IPPROTO_ICMP {
        // The echo identifier sits in the request's sport, the reply's dport.
        if pkt.icmp_type == ICMP_ECHO_REQUEST {
            after.key.sport = out.sport;
        } else {
            after.key.dport = out.dport;
        }
    } else {
        after.key.sport = out.sport;
        after.key.dport = out.dport;
    }
    after
}

/// A known flow's rewrite only (no new flow): the `redirect` datapath's
/// stand-in for the egress hook a peer redirect skips.
#[inline(always)]
pub fn translate_known(ctx: &TcContext, pkt: &Packet, hook: u8) -> Verdict {
    known(ctx, pkt, hook).unwrap_or(Verdict::Pass)
}

/// A fragment after the first: translated with the ports of its first
/// fragment (addresses only; its bytes hold no L4 header).
#[inline(always)]
pub fn translate_fragment(ctx: &TcContext, frag: &LaterFragment, hook: u8) -> Verdict {
    let Some(key) = frag::flow_key(&frag.ip) else {
        // Only a destination rewrite (ingress) needs to know the flow for
        // sure; a masqueraded source stays off the uplink anyway.
        if hook == APPLY_INGRESS && is_local(frag.ip.daddr) {
            return Verdict::Drop(Stat::FragUnknown);
        }
        return Verdict::Pass;
    };
    let Some(rewrite) = conntrack::peek(&key, hook, false) else {
        return Verdict::Pass;
    };
    stats::count(Stat::Fragment);
    if let Err(reason) = rewrite_addrs(ctx, &key, &rewrite, None) {
        return Verdict::Drop(reason);
    }
    after_rewrite(ctx, rewrite)
}

/// A new flow entering on a lab veth or the uplink: DNAT when it is for a
/// published port on one of the host's published addresses.
#[inline(always)]
fn new_ingress(ctx: &TcContext, pkt: &Packet, iface: &Iface) -> Verdict {
    let key = &pkt.key;
    if key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP {
        return Verdict::Pass;
    }
    if !is_local(key.daddr) {
        return Verdict::Pass;
    }
    let Some(backend) = value(PUBLISHED.get_ptr(PublishKey {
        port: key.dport,
        proto: key.proto,
        _pad: 0,
    })) else {
        return Verdict::Pass;
    };
    if !opens_flow(pkt) {
        // INVALID to netfilter too: left untranslated, to the host.
        stats::count(Stat::TcpNotSyn);
        return Verdict::Pass;
    }
    let mut out = Rewrite {
        saddr: key.saddr,
        daddr: backend.addr,
        sport: key.sport,
        dport: backend.port,
        nat: NAT_DNAT,
        _pad: [0; 3],
    };
    if key.saddr == backend.addr {
        // A namespace reaching its own published port: the backend would see
        // its own address as the source and drop the packet as a martian, so
        // the source becomes the segment's gateway (Docker's hairpin NAT).
        if iface.gateway == 0 {
            return Verdict::Pass;
        }
        out.saddr = iface.gateway;
        if let Err(reason) = allocate_port(key, &mut out) {
            return Verdict::Drop(reason);
        }
        out.nat |= NAT_SNAT | NAT_REFLECT;
        return create(
            ctx,
            pkt,
            out,
            APPLY_INGRESS,
            APPLY_INGRESS,
            Stat::HairpinNew,
        );
    }
    create(ctx, pkt, out, APPLY_INGRESS, APPLY_EGRESS, Stat::DnatNew)
}

/// A new flow leaving through the uplink: masquerade when its source is a
/// masqueraded lab subnet; tracked (and given another port when its own is
/// taken) when it is the host's own connection.
#[inline(always)]
fn new_egress(ctx: &TcContext, pkt: &Packet, iface: &Iface) -> Verdict {
    if iface.role != ROLE_UPLINK {
        return Verdict::Pass;
    }
    let key = &pkt.key;
    let mut out = Rewrite {
        saddr: key.saddr,
        daddr: key.daddr,
        sport: key.sport,
        dport: key.dport,
        nat: 0,
        _pad: [0; 3],
    };
    if is_masqueraded(key.saddr) {
        let masq_addr = match config() {
            Some(cfg) if cfg.masq_addr != 0 => cfg.masq_addr,
            // No address to masquerade to: the uplink guard drops it.
            _ => return Verdict::Pass,
        };
        // What cannot be tracked stays untranslated: the uplink guard
        // keeps it from leaving with a lab address.
        if !opens_flow(pkt) {
            stats::count(Stat::TcpNotSyn);
            return Verdict::Pass;
        }
        out.saddr = masq_addr;
        out.nat = NAT_SNAT;
        if let Err(reason) = allocate_port(key, &mut out) {
            return Verdict::Drop(reason);
        }
        return create(ctx, pkt, out, APPLY_EGRESS, APPLY_INGRESS, Stat::SnatNew);
    }
    if !is_local(key.saddr) || !opens_flow(pkt) {
        return Verdict::Pass;
    }
    // The host's own connection: tracked so that its replies are never
    // taken for a new flow to a published port, and moved to another port
    // when a masqueraded flow already holds its tuple (netfilter's
    // implicit source NAT).
    if !conntrack::key_free(&reply_key(key.proto, &out)) {
        out.nat = NAT_SNAT;
        if let Err(reason) = allocate_port(key, &mut out) {
            return Verdict::Drop(reason);
        }
        stats::count(Stat::HostPortRemapped);
    }
    create(
        ctx,
        pkt,
        out,
        APPLY_EGRESS,
        APPLY_INGRESS,
        Stat::HostFlowNew,
    )
}

/// Whether a packet of an unknown flow may create one: a TCP SYN, or a
/// plain ACK (nf_conntrack picks a connection up mid-stream, so one that
/// predates the lab's conntrack keeps working); any UDP datagram; an ICMP
/// echo request.
#[inline(always)]
fn opens_flow(pkt: &Packet) -> bool {
    const OPENING: u8 = TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST;
    match pkt.key.proto {
        IPPROTO_TCP => matches!(pkt.tcp_flags & OPENING, TCP_SYN | TCP_ACK),
        IPPROTO_ICMP => pkt.icmp_type == ICMP_ECHO_REQUEST,
        _ => true,
    }
}

/// The key replies to a flow leaving as `out` arrive with.
#[inline(always)]
pub fn reply_key(proto: u8, out: &Rewrite) -> FlowKey {
    FlowKey {
        saddr: out.daddr,
        daddr: out.saddr,
        sport: out.dport,
        dport: out.sport,
        proto,
        _pad: [0; 3],
    }
}

/// The port search's state, shared with its `bpf_loop` callback. Kept
/// small: the callback's frame and this add to the NAT program's stack.
#[repr(C)]
struct PortSearch {
    /// The key replies would arrive with; its `dport` is the candidate.
    reply: FlowKey,
    min: u32,
    span: u32,
    start: u32,
    found: u32,
}

/// Picks the SNAT source port (ICMP: echo identifier) for `out`: the
/// original one when it is inside the configured range and free, else the
/// next free one after a hash-chosen start. The search covers the whole
/// range, so it fails only when every port is taken (`port_exhausted`).
#[inline(always)]
fn allocate_port(key: &FlowKey, out: &mut Rewrite) -> Result<(), Stat> {
    let (min, max) = match config() {
        Some(cfg) if cfg.port_min != 0 && cfg.port_max >= cfg.port_min => {
            (u32::from(cfg.port_min), u32::from(cfg.port_max))
        }
        _ => (32768, 60999),
    };
    // Never zero (max >= min above); `max(1)` lets the compiler see it, so
    // no divide-by-zero panic path reaches the verifier.
    let span = (max - min + 1).max(1);
    let original = u32::from(u16::from_be(key.sport));
    let start = if original >= min && original <= max {
        original - min
    } else {
        let mix = (key.saddr
            ^ key.daddr.rotate_left(13)
            ^ (u32::from(key.sport) << 16)
            ^ u32::from(key.dport))
        .wrapping_mul(0x9e37_79b1);
        (mix >> 8) % span
    };
    let mut search = PortSearch {
        reply: reply_key(key.proto, out),
        min,
        span,
        start,
        found: 0,
    };
    // SAFETY: the callback is a static function of the expected type and
    // `search` outlives the call.
    unsafe {
        bpf_loop(span, try_port as *mut c_void, (&raw mut search).cast(), 0);
    }
    if search.found == 0 {
        return Err(Stat::PortExhausted);
    }
    out.sport = search.reply.dport;
    Ok(())
}

/// `bpf_loop` callback: whether candidate `i` of the search is free; 1 stops.
extern "C" fn try_port(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the PortSearch `allocate_port` passed.
    let search = unsafe { &mut *ctx.cast::<PortSearch>() };
    let offset = (u64::from(search.start) + i) % u64::from(search.span.max(1));
    search.reply.dport = ((search.min + offset as u32) as u16).to_be();
    if conntrack::key_free(&search.reply) {
        search.found = 1;
        return 1;
    }
    0
}

/// Opens a flow: both conntrack entries, then the rewrite. `counter` names
/// the kind of flow.
#[inline(always)]
fn create(
    ctx: &TcContext,
    pkt: &Packet,
    out: Rewrite,
    apply_original: u8,
    apply_reply: u8,
    counter: Stat,
) -> Verdict {
    let key = &pkt.key;
    let opened = conntrack::Opened {
        out,
        len: pkt.len,
        apply_original,
        apply_reply,
        // A plain ACK picks an established connection up mid-stream.
        picked_up: u8::from(key.proto == IPPROTO_TCP && pkt.tcp_flags & TCP_SYN == 0),
        _pad: 0,
    };
    match conntrack::insert_flow(key, &opened) {
        Ok(()) => {
            stats::count(counter);
            finish(ctx, pkt, out)
        }
        // Another CPU opened this very flow first: follow its entry.
        Err(Stat::CtInsertRace) => {
            stats::count(Stat::CtInsertRace);
            known(ctx, pkt, apply_original).unwrap_or(Verdict::Drop(Stat::CtInsertFailed))
        }
        Err(reason) => Verdict::Drop(reason),
    }
}

/// Rewrites the packet to `out`; a reflected flow then goes straight back out.
#[inline(always)]
fn finish(ctx: &TcContext, pkt: &Packet, out: Rewrite) -> Verdict {
    if let Err(reason) = rewrite(ctx, pkt, &out) {
        return Verdict::Drop(reason);
    }
    if pkt.ip.first_fragment {
        frag::remember(pkt, out.saddr, out.daddr, out.sport, out.dport);
    }
    after_rewrite(ctx, out)
}

/// A reflected flow swaps its MAC addresses (the peer becomes the
/// destination, the gateway the source) and goes back out of its veth.
#[inline(always)]
fn after_rewrite(ctx: &TcContext, out: Rewrite) -> Verdict {
    if out.nat & NAT_REFLECT == 0 {
        return Verdict::Rewritten(out);
    }
    let Some(macs) = ctx::load::<MacPair>(ctx, ETH_DEST_OFF) else {
        return Verdict::Drop(Stat::WriteFailed);
    };
    let swapped = [
        macs[6], macs[7], macs[8], macs[9], macs[10], macs[11], macs[0], macs[1], macs[2], macs[3],
        macs[4], macs[5],
    ];
    if ctx.store(ETH_DEST_OFF, &swapped, 0).is_err() {
        return Verdict::Drop(Stat::WriteFailed);
    }
    Verdict::Reflect(ctx::ifindex(ctx))
}

/// Rewrites both addresses of the IPv4 header (and, given one, the L4
/// checksum their pseudo-header enters).
#[inline(always)]
fn rewrite_addrs(
    ctx: &TcContext,
    key: &FlowKey,
    out: &Rewrite,
    l4: Option<L4Csum>,
) -> csum::Rewrite {
    csum::set_addr(ctx, L3_OFF, IPV4_SADDR_OFF, key.saddr, out.saddr, l4)?;
    csum::set_addr(ctx, L3_OFF, IPV4_DADDR_OFF, key.daddr, out.daddr, l4)
}

/// Rewrites addresses and ports (ICMP: the echo identifier) to `out`.
#[inline(always)]
fn rewrite(ctx: &TcContext, pkt: &Packet, out: &Rewrite) -> csum::Rewrite {
    csum::decode(netlab_nat_rewrite(ctx.skb.skb, pkt, out))
}

/// [`rewrite`] as a global BPF function, verified once (as conntrack's
/// operations are): each checksum helper's failure is a path of its own,
/// which every rewriting path of the NAT programs walked again (measured:
/// nat_ingress 51k → 24k verified instructions).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netlab_nat_rewrite(
    skb: *mut __sk_buff,
    pkt: *const Packet,
    out: *const Rewrite,
) -> u32 {
    // SAFETY: the verifier checks both pointers' memory; null is refused here.
    let (Some(pkt), Some(out)) = (unsafe { pkt.as_ref() }, unsafe { out.as_ref() }) else {
        return csum::encode(Err(Stat::WriteFailed));
    };
    csum::encode(rewrite_packet(&TcContext::new(skb), pkt, out))
}

#[inline(always)]
fn rewrite_packet(ctx: &TcContext, pkt: &Packet, out: &Rewrite) -> csum::Rewrite {
    let key = &pkt.key;
    let l4 = usize::from(pkt.l4);
    let csum = L4Csum::of(key.proto, l4);
    rewrite_addrs(ctx, key, out, Some(csum))?;
    if key.proto == IPPROTO_ICMP {
        // The echo identifier is the request's sport and the reply's dport.
        let (old, new) = if pkt.icmp_type == ICMP_ECHO_REQUEST {
            (key.sport, out.sport)
        } else {
            (key.dport, out.dport)
        };
        return csum::set_port(ctx, l4 + ICMP_ID_OFF, old, new, csum);
    }
    csum::set_port(ctx, l4 + L4_SPORT_OFF, key.sport, out.sport, csum)?;
    csum::set_port(ctx, l4 + L4_DPORT_OFF, key.dport, out.dport, csum)
}

/// Translates an ICMP error about a tracked flow, so it reaches the right
/// host with the embedded header it would expect: the embedded packet went
/// the other way, so its reversed tuple is the key of the error's direction,
/// and the entry found says how that direction is rewritten.
///
/// Returns `None` when no flow of this hook matches (the caller then treats
/// the error as any untranslatable packet).
#[inline(always)]
pub fn icmp_error(ctx: &TcContext, err: &IcmpError, hook: u8, iface: &Iface) -> Option<Verdict> {
    let key = err.inner.reversed();
    // Entries expire lazily: an error about a flow idle past its timeout
    // is about nothing nf_conntrack still knows, so it is unrelated.
    let entry = conntrack::peek(&key, hook, true)?;
    // An error from a router inside a masqueraded subnet (not the flow's
    // endpoint) leaving through the uplink takes the masquerade address, as
    // netfilter does for related ICMP errors: no lab address leaves.
    let mut outer_saddr = entry.saddr;
    if err.ip.saddr != key.saddr {
        outer_saddr = err.ip.saddr;
        if hook == APPLY_EGRESS && iface.role == ROLE_UPLINK && is_masqueraded(err.ip.saddr) {
            outer_saddr = match config() {
                Some(cfg) if cfg.masq_addr != 0 => cfg.masq_addr,
                _ => return Some(Verdict::Drop(Stat::UntranslatedLeak)),
            };
        }
    }
    stats::count(Stat::IcmpErrorTranslated);
    Some(
        match csum::decode(netlab_nat_icmp_error(ctx.skb.skb, err, &entry, outer_saddr)) {
            Ok(()) => Verdict::Rewritten(entry),
            Err(reason) => Verdict::Drop(reason),
        },
    )
}

/// [`rewrite_icmp_error`] as a global BPF function, verified once (see
/// [`netlab_nat_rewrite`]).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn netlab_nat_icmp_error(
    skb: *mut __sk_buff,
    err: *const IcmpError,
    entry: *const Rewrite,
    outer_saddr: u32,
) -> u32 {
    // SAFETY: as in `netlab_nat_rewrite`.
    let (Some(err), Some(entry)) = (unsafe { err.as_ref() }, unsafe { entry.as_ref() }) else {
        return csum::encode(Err(Stat::WriteFailed));
    };
    let key = err.inner.reversed();
    csum::encode(rewrite_icmp_error(
        &TcContext::new(skb),
        err,
        &key,
        entry,
        outer_saddr,
    ))
}

/// An ICMP error no flow of this hook claims. On the uplink, addressed
/// into the lab, it is about nothing the lab sent out: dropped, as
/// netfilter finds it INVALID (and no lab address crosses the uplink).
/// Elsewhere it passes, counted as any untranslatable packet.
#[inline(always)]
pub fn unrelated_icmp_error(iface: &Iface, err: &IcmpError) -> Verdict {
    if iface.role == ROLE_UPLINK && net_kind(err.ip.daddr) == NET_INTERNAL {
        return Verdict::Drop(Stat::IcmpErrorUnrelated);
    }
    stats::count(Stat::Unsupported);
    Verdict::Pass
}

#[inline(always)]
fn rewrite_icmp_error(
    ctx: &TcContext,
    err: &IcmpError,
    key: &FlowKey,
    entry: &Rewrite,
    outer_saddr: u32,
) -> csum::Rewrite {
    // Outer header: the error goes where the flow's packets go; its source
    // is what the caller decided (the flow's, or the router's own).
    if err.ip.daddr == key.daddr {
        csum::set_addr(ctx, L3_OFF, IPV4_DADDR_OFF, err.ip.daddr, entry.daddr, None)?;
    }
    csum::set_addr(ctx, L3_OFF, IPV4_SADDR_OFF, err.ip.saddr, outer_saddr, None)?;
    // Embedded header, reversed: its source is the flow's destination.
    // Fixing its own checksum keeps its one's-complement sum, so the ICMP
    // checksum moves only with the embedded L4 header.
    let inner = &err.inner;
    let icmp = L4Csum::of(IPPROTO_ICMP, usize::from(err.l4));
    let inner_l3 = err.inner_l3();
    csum::set_addr(
        ctx,
        inner_l3,
        IPV4_SADDR_OFF,
        inner.saddr,
        entry.daddr,
        None,
    )?;
    csum::set_addr(
        ctx,
        inner_l3,
        IPV4_DADDR_OFF,
        inner.daddr,
        entry.saddr,
        None,
    )?;
    let inner_l4 = usize::from(err.inner_l4);
    if inner.proto == IPPROTO_ICMP {
        let (old, new) = if err.inner_echo_request {
            (inner.sport, entry.dport)
        } else {
            (inner.dport, entry.sport)
        };
        return csum::set_port(ctx, inner_l4 + ICMP_ID_OFF, old, new, icmp);
    }
    fix_embedded_l4_csum(ctx, err, entry)?;
    csum::set_port(ctx, inner_l4 + L4_SPORT_OFF, inner.sport, entry.dport, icmp)?;
    csum::set_port(ctx, inner_l4 + L4_DPORT_OFF, inner.dport, entry.sport, icmp)
}

/// The embedded TCP/UDP checksum covers the embedded addresses (through
/// its pseudo-header) and ports: keep it true to the translated header
/// when the error carries it (a UDP checksum always; TCP's only when more
/// than the 8 guaranteed bytes were quoted), as netfilter does. A UDP
/// checksum of zero means none and stays zero.
#[inline(always)]
fn fix_embedded_l4_csum(ctx: &TcContext, err: &IcmpError, entry: &Rewrite) -> csum::Rewrite {
    let inner = &err.inner;
    let offset = usize::from(err.inner_l4)
        + if inner.proto == IPPROTO_TCP {
            TCP_CSUM_OFF
        } else {
            UDP_CSUM_OFF
        };
    if offset + 2 > usize::from(err.end) {
        return Ok(());
    }
    let Some(old) = csum::read16(ctx, offset) else {
        return Ok(());
    };
    if inner.proto == IPPROTO_UDP && old == 0 {
        return Ok(());
    }
    let mut new = csum::fold32(old, inner.saddr, entry.daddr);
    new = csum::fold32(new, inner.daddr, entry.saddr);
    new = csum::fold16(new, inner.sport, entry.dport);
    new = csum::fold16(new, inner.dport, entry.sport);
    if inner.proto == IPPROTO_UDP && new == 0 {
        new = 0xffff;
    }
    csum::replace_embedded16(ctx, offset, old, new, usize::from(err.l4))
}
