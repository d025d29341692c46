//! Address and port translation, as netfilter does it: destination
//! rewrites (DNAT to published ports, un-SNAT of replies) on ingress before
//! routing, source rewrites (masquerade, un-DNAT of replies) on egress after
//! it. Built on [`conntrack`] (the flows), [`frag`] (later fragments) and
//! the lab's configuration ([`Lab`]).
//!
//! What a packet of an established flow costs, per hook (ARCHITECTURE.md
//! draws it): on ingress, a flow can only be translated when it is
//! addressed to one of the lab's host addresses (a published port, the
//! masquerade address, a hairpin gateway, the host itself), so other
//! packets cost no conntrack lookup there. A packet translated on ingress
//! tells its egress hook so ([`Handoff`]), which then looks nothing up.
//! Every other packet meets one conntrack lookup at its egress hook. So an
//! established flow's packet costs one lookup and its rewrite.

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use netlab_common::nat::{
    APPLY_EGRESS, APPLY_INGRESS, FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    NAT_DNAT, NAT_REFLECT, NAT_SNAT, ROLE_LAB, ROLE_UPLINK, Stat,
};

use crate::{
    conntrack::{self, Known, V4},
    frag, global, lab,
    lab::{Iface, Lab},
    lb,
    pkt::{
        csum::{self, L4Csum},
        ctx::{self, Handoff},
        ipv4::{IPV4_DADDR_OFF, IPV4_SADDR_OFF, L3_OFF},
        l4::{
            L4_DPORT_OFF, L4_SPORT_OFF, TCP_ACK, TCP_CSUM_OFF, TCP_FIN, TCP_RST, TCP_SYN,
            UDP_CSUM_OFF,
        },
        parse::{IcmpError, LaterFragment, Packet},
    },
    ports::allocate_port,
    stats,
    verdict::{Rewrite, Verdict},
};

/// Translates a packet of a flow at `hook`: a known flow's rewrite when
/// this hook owns it, else what a new flow gets here.
#[inline(always)]
pub fn translate(ctx: &TcContext, lab: &Lab, iface: &Iface, pkt: &Packet, hook: u8) -> Verdict {
    if pkt.ip.first_fragment {
        frag::remember(
            pkt,
            pkt.key.saddr,
            pkt.key.daddr,
            pkt.key.sport,
            pkt.key.dport,
        );
    }
    // Every flow translated on the way in is addressed to a host address
    // of the lab or a Service (see the module's documentation).
    if hook == APPLY_INGRESS && !lab.is_local(pkt.key.daddr) && !lab.is_service(pkt.key.daddr) {
        return Verdict::PASS;
    }
    if let Some(verdict) = known(ctx, lab, pkt, hook) {
        return verdict;
    }
    if hook == APPLY_INGRESS {
        new_ingress(ctx, lab, iface, pkt)
    } else {
        new_egress(ctx, lab, iface, pkt)
    }
}

/// A known flow's verdict at `hook`; `None` when no live flow has the
/// packet's key and the packet is to be handled as new.
#[inline(always)]
fn known(ctx: &TcContext, lab: &Lab, pkt: &Packet, hook: u8) -> Option<Verdict> {
    let tracked = conntrack::track::<V4>(&pkt.key, hook, pkt.tcp_flags, pkt.len);
    match tracked.known {
        Known::None => None,
        // Another hook translates this flow (masquerade waits for egress).
        Known::OtherHook => Some(Verdict::PASS),
        // A flow tracked but not translated (the host's own).
        Known::Rewrite if tracked.rewrite.nat == 0 => Some(Verdict::PASS),
        Known::Rewrite => Some(finish(ctx, lab, pkt, tracked.rewrite, hook)),
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
        // The identifier sits in the request's sport, the reply's dport.
        if pkt.icmp_request {
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

/// The egress rewrite of a known flow only (no new flow): the `redirect`
/// datapath's stand-in for the egress hook a peer redirect skips.
#[inline(always)]
pub fn translate_known_egress(ctx: &TcContext, lab: &Lab, pkt: &Packet) -> Verdict {
    known(ctx, lab, pkt, APPLY_EGRESS).unwrap_or(Verdict::PASS)
}

/// A fragment after the first: translated with the ports of its first
/// fragment (addresses only; its bytes hold no L4 header).
#[inline(always)]
pub fn translate_fragment(ctx: &TcContext, lab: &Lab, frag: &LaterFragment, hook: u8) -> Verdict {
    if hook == APPLY_INGRESS && !lab.is_local(frag.ip.daddr) && !lab.is_service(frag.ip.daddr) {
        return Verdict::PASS;
    }
    let Some(key) = frag::flow_key(&frag.ip) else {
        // Only a destination rewrite (ingress) needs to know the flow for
        // sure; a masqueraded source stays off the uplink anyway.
        if hook == APPLY_INGRESS {
            return Verdict::drop(Stat::FragUnknown);
        }
        return Verdict::PASS;
    };
    let Some(rewrite) = conntrack::peek::<V4>(&key, hook, false) else {
        return Verdict::PASS;
    };
    if rewrite.nat == 0 {
        return Verdict::PASS;
    }
    stats::count(Stat::Fragment);
    if let Err(reason) = rewrite_addrs(ctx, &key, &rewrite, None) {
        return Verdict::drop(reason);
    }
    after_rewrite(ctx, lab, rewrite, hook)
}

/// A new flow entering on a lab veth or the uplink (already known to be
/// addressed to a host address of the lab or a Service): DNAT when it is
/// for a published port or a Service.
#[inline(always)]
fn new_ingress(ctx: &TcContext, lab: &Lab, iface: &Iface, pkt: &Packet) -> Verdict {
    let key = &pkt.key;
    if key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP {
        return Verdict::PASS;
    }
    // A ClusterIP; a NodePort (a published port whose backend a Service
    // chooses); a published port.
    let (backend, keeps) = if lab.is_service(key.daddr) {
        match lab::service(key.daddr, key.dport, key.proto).and_then(|s| lb::choose(s.id, key)) {
            Some((id, backend)) => (backend, Keeps::Backend(id)),
            None => return Verdict::drop(Stat::ServiceNoBackend),
        }
    } else {
        match lab::published(key.dport, key.proto) {
            None => return Verdict::PASS,
            Some(port) if port.service != 0 => match lb::choose(port.service, key) {
                Some((id, backend)) => (backend, Keeps::Backend(id)),
                None => return Verdict::drop(Stat::ServiceNoBackend),
            },
            Some(backend) => (backend, Keeps::Port),
        }
    };
    if !opens_flow(pkt) {
        // INVALID to netfilter too: left untranslated, to the host.
        stats::count(Stat::TcpNotSyn);
        return Verdict::PASS;
    }
    if iface.role == ROLE_UPLINK && ctx::for_other_host(ctx) {
        // Dropped by the stack; nf_conntrack never sees it.
        stats::count(Stat::OtherHost);
        return Verdict::PASS;
    }
    let mut out = Rewrite {
        daddr: backend.addr,
        dport: backend.port,
        nat: NAT_DNAT,
        ..Rewrite::identity(key)
    };
    // A namespace reaching its own published port: the backend would see
    // its own address as the source and drop the packet as a martian, so
    // the source becomes the segment's gateway (Docker's hairpin NAT).
    let hairpin = key.saddr == backend.addr;
    let ported = if hairpin {
        if iface.gateway == 0 {
            return Verdict::PASS;
        }
        out.saddr = iface.gateway;
        out.nat |= NAT_SNAT | NAT_REFLECT;
        allocate_port::<V4>(lab, key, &mut out)
    } else {
        // DNAT keeps the client's tuple, which another flow may hold: one
        // client port that reached another published port or Service of
        // the same backend.
        keep_replies_apart(lab, key, &mut out, Stat::DnatPortRemapped)
    };
    if let Err(reason) = ported {
        return Verdict::drop(reason);
    }
    let how = match keeps {
        _ if hairpin => Opening::HAIRPIN,
        Keeps::Backend(_) => Opening::SERVICE,
        _ => Opening::DNAT,
    };
    create(ctx, lab, pkt, out, how, keeps)
}

/// A new flow leaving through one of the lab's host-side interfaces:
/// masquerade out of the uplink when its source is a masqueraded lab
/// subnet (but not toward a peer node's pods); the host's own connection,
/// tracked (and given another port when its own is taken) on the uplink
/// and into the lab alike.
#[inline(always)]
fn new_egress(ctx: &TcContext, lab: &Lab, iface: &Iface, pkt: &Packet) -> Verdict {
    let key = &pkt.key;
    let mut out = Rewrite::identity(key);
    if iface.role == ROLE_UPLINK && lab.is_masqueraded(key.saddr) && !lab.is_peer(key.daddr) {
        if lab.cfg.masq_addr == 0 {
            // No address to masquerade to: the uplink guard drops it.
            return Verdict::PASS;
        }
        // What cannot be tracked stays untranslated: the uplink guard
        // keeps it from leaving with a lab address.
        if !opens_flow(pkt) {
            stats::count(Stat::TcpNotSyn);
            return Verdict::PASS;
        }
        out.saddr = lab.cfg.masq_addr;
        out.nat = NAT_SNAT;
        if let Err(reason) = allocate_port::<V4>(lab, key, &mut out) {
            return Verdict::drop(reason);
        }
        return create(ctx, lab, pkt, out, Opening::MASQUERADE, Keeps::Nothing);
    }
    if (iface.role != ROLE_UPLINK && iface.role != ROLE_LAB)
        || !lab.is_local(key.saddr)
        || !opens_flow(pkt)
    {
        return Verdict::PASS;
    }
    // The host's own connection: tracked so that its replies are never
    // taken for a new flow to a published port, and moved to another port
    // when a translated flow already holds its tuple.
    if let Err(reason) = keep_replies_apart(lab, key, &mut out, Stat::HostPortRemapped) {
        return Verdict::drop(reason);
    }
    create(ctx, lab, pkt, out, Opening::HOST, Keeps::Nothing)
}

/// netfilter's implicit source NAT: replies find their way back by the
/// reply key, so when another flow holds the one `out` would give, the new
/// flow gets another source port, counted as `counter`.
#[inline(always)]
fn keep_replies_apart(
    lab: &Lab,
    key: &FlowKey,
    out: &mut Rewrite,
    counter: Stat,
) -> Result<(), Stat> {
    if conntrack::key_free::<V4>(&out.reply_key(key.proto)) {
        return Ok(());
    }
    out.nat |= NAT_SNAT;
    allocate_port::<V4>(lab, key, out)?;
    stats::count(counter);
    Ok(())
}

#[inline(always)]
fn opens_flow(pkt: &Packet) -> bool {
    opens(pkt.key.proto, pkt.tcp_flags, pkt.icmp_request)
}

/// Whether a packet of an unknown flow (of either family) may create one:
/// a TCP SYN, or a plain ACK (nf_conntrack picks a connection up
/// mid-stream, so one that predates the lab's conntrack keeps working);
/// any UDP datagram; an ICMP or ICMPv6 query request.
#[inline(always)]
pub fn opens(proto: u8, tcp_flags: u8, icmp_request: bool) -> bool {
    const OPENING: u8 = TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST;
    match proto {
        IPPROTO_TCP => matches!(tcp_flags & OPENING, TCP_SYN | TCP_ACK),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => icmp_request,
        _ => true,
    }
}

/// How a new flow (of either family) is opened: the hooks that rewrite
/// each direction, whether its first packet is already leaving, and how
/// it is counted.
#[derive(Clone, Copy)]
pub struct Opening {
    pub apply_original: u8,
    pub apply_reply: u8,
    /// Opened on egress: the packet is leaving, so the flow is confirmed.
    pub confirmed: bool,
    pub counter: Stat,
}

impl Opening {
    pub const DNAT: Opening = Opening {
        apply_original: APPLY_INGRESS,
        apply_reply: APPLY_EGRESS,
        confirmed: false,
        counter: Stat::DnatNew,
    };
    pub const SERVICE: Opening = Opening {
        counter: Stat::ServiceNew,
        ..Opening::DNAT
    };
    pub const HAIRPIN: Opening = Opening {
        apply_original: APPLY_INGRESS,
        apply_reply: APPLY_INGRESS,
        confirmed: false,
        counter: Stat::HairpinNew,
    };
    pub const MASQUERADE: Opening = Opening {
        apply_original: APPLY_EGRESS,
        apply_reply: APPLY_INGRESS,
        confirmed: true,
        counter: Stat::SnatNew,
    };
    pub const HOST: Opening = Opening {
        apply_original: APPLY_EGRESS,
        apply_reply: APPLY_INGRESS,
        confirmed: true,
        counter: Stat::HostFlowNew,
    };
}

/// Whose epoch a new flow keeps, so that it dies when that goes.
#[derive(Clone, Copy)]
pub enum Keeps {
    Nothing,
    /// The published port it was addressed to.
    Port,
    /// The Service backend it was sent to, by id.
    Backend(u16),
}

/// Opens a flow: both conntrack halves, then the rewrite. Its reply key is
/// free: every caller made sure (the port search, or a lookup).
#[inline(always)]
fn create(
    ctx: &TcContext,
    lab: &Lab,
    pkt: &Packet,
    out: Rewrite,
    how: Opening,
    keeps: Keeps,
) -> Verdict {
    let key = &pkt.key;
    let (published, service, epoch) = match keeps {
        Keeps::Nothing => (0, 0, 0),
        Keeps::Port => (key.dport, 0, lab::publish_epoch(key.proto, key.dport)),
        Keeps::Backend(id) => (id, 1, lab::backend_epoch(id)),
    };
    let mut opened = conntrack::Opened::<V4> {
        out,
        len: pkt.len,
        apply_original: how.apply_original,
        apply_reply: how.apply_reply,
        // A plain ACK picks an established connection up mid-stream.
        picked_up: u8::from(key.proto == IPPROTO_TCP && pkt.tcp_flags & TCP_SYN == 0),
        confirmed: u8::from(how.confirmed),
        published,
        service,
        epoch,
    };
    let out = match conntrack::insert_flow(key, &mut opened) {
        Ok(()) => {
            stats::count(how.counter);
            Rewrite {
                opened: u8::from(!how.confirmed),
                ..out
            }
        }
        // Another CPU opened this very flow first: the packet takes the
        // winner's addresses and ports, which the insert put in
        // `opened.out` (its search may have found another port: ours was
        // held by then). The kind of translation is the one computed here:
        // the same tuple at the same hook gets the same kind. (Taking the
        // winner's `nat` bits too cost the verifier 12,000 instructions.)
        Err(Stat::CtInsertRace) => {
            stats::count(Stat::CtInsertRace);
            let won = opened.out;
            Rewrite {
                saddr: won.saddr,
                daddr: won.daddr,
                sport: won.sport,
                dport: won.dport,
                ..out
            }
        }
        Err(reason) => return Verdict::drop(reason),
    };
    if out.nat == 0 {
        return Verdict::PASS;
    }
    finish(ctx, lab, pkt, out, how.apply_original)
}

/// Rewrites the packet to `out` at `hook`; a reflected flow then goes
/// straight back out.
#[inline(always)]
fn finish(ctx: &TcContext, lab: &Lab, pkt: &Packet, out: Rewrite, hook: u8) -> Verdict {
    if let Err(reason) = rewrite(ctx, pkt, &out) {
        return Verdict::drop(reason);
    }
    if pkt.ip.first_fragment {
        frag::remember(pkt, out.saddr, out.daddr, out.sport, out.dport);
    }
    after_rewrite(ctx, lab, out, hook)
}

/// After a rewrite on ingress, tells the egress hook the packet is done
/// with (unless it is for the host itself, which has no egress hook; a
/// reflected flow goes back out of its veth, egress included).
#[inline(always)]
fn after_rewrite(ctx: &TcContext, lab: &Lab, out: Rewrite, hook: u8) -> Verdict {
    if hook == APPLY_INGRESS && (out.nat & NAT_REFLECT != 0 || !lab.is_local(out.daddr)) {
        let handoff = if out.opened != 0 {
            Handoff::Opened
        } else {
            Handoff::Translated
        };
        ctx::hand_off(ctx, handoff);
    }
    if out.nat & NAT_REFLECT != 0 {
        return Verdict::reflected(out);
    }
    Verdict::rewritten(out)
}

/// What the egress hook does with a packet an ingress hook translated:
/// nothing, but confirm the flow the packet opened (it survived the stack).
#[inline(always)]
pub fn handed_off(handoff: Handoff, pkt: Option<&Packet>) {
    if let (Handoff::Opened, Some(pkt)) = (handoff, pkt) {
        conntrack::confirm::<V4>(&pkt.key.reversed());
    }
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

/// Rewrites addresses and ports (ICMP: the query identifier) to `out`.
#[inline(always)]
fn rewrite(ctx: &TcContext, pkt: &Packet, out: &Rewrite) -> csum::Rewrite {
    csum::decode(netlab_nat_rewrite(ctx.skb.skb, pkt, out))
}

global::function! {
    /// [`rewrite`], verified once (as conntrack's operations are): each
    /// checksum helper's failure is a path of its own, which every
    /// rewriting path of the NAT programs walked again (measured:
    /// nat_ingress 51k → 24k verified instructions).
    fn netlab_nat_rewrite(skb: *mut __sk_buff, pkt: *const Packet, out: *const Rewrite) -> u32 {
        // SAFETY: the verifier checks both pointers' memory; null is refused here.
        let (Some(pkt), Some(out)) = (unsafe { pkt.as_ref() }, unsafe { out.as_ref() }) else {
            return csum::encode(Err(Stat::WriteFailed));
        };
        csum::encode(rewrite_packet(&TcContext::new(skb), pkt, out))
    }
}

#[inline(always)]
fn rewrite_packet(ctx: &TcContext, pkt: &Packet, out: &Rewrite) -> csum::Rewrite {
    let after = FlowKey {
        saddr: out.saddr,
        daddr: out.daddr,
        sport: out.sport,
        dport: out.dport,
        ..pkt.key
    };
    csum::rewrite_tuple(ctx, usize::from(pkt.l4), &pkt.key, &after, pkt.icmp_request)
}

/// Translates an ICMP error about a tracked flow, so it reaches the right
/// host with the embedded header it would expect: the embedded packet went
/// the other way, so its reversed tuple is the key of the error's direction,
/// and the entry found says how that direction is rewritten.
///
/// Returns `None` when no flow of this hook matches (the caller then treats
/// the error as any untranslatable packet).
#[inline(always)]
pub fn icmp_error(
    ctx: &TcContext,
    lab: &Lab,
    err: &IcmpError,
    hook: u8,
    iface: &Iface,
) -> Option<Verdict> {
    let key = err.inner.reversed();
    if hook == APPLY_INGRESS && !lab.is_local(err.ip.daddr) {
        return None;
    }
    // Entries expire lazily: an error about a flow idle past its timeout
    // is about nothing nf_conntrack still knows, so it is unrelated.
    let entry = conntrack::peek::<V4>(&key, hook, true)?;
    if entry.nat == 0 {
        return Some(Verdict::PASS);
    }
    // An error from a router inside a masqueraded subnet (not the flow's
    // endpoint) leaving through the uplink takes the masquerade address, as
    // netfilter does for related ICMP errors: no lab address leaves.
    let mut outer_saddr = entry.saddr;
    if err.ip.saddr != key.saddr {
        outer_saddr = err.ip.saddr;
        if hook == APPLY_EGRESS
            && iface.role == ROLE_UPLINK
            && lab.is_masqueraded(err.ip.saddr)
            && !lab.is_peer(err.ip.daddr)
        {
            if lab.cfg.masq_addr == 0 {
                return Some(Verdict::drop(Stat::UntranslatedLeak));
            }
            outer_saddr = lab.cfg.masq_addr;
        }
    }
    stats::count(Stat::IcmpErrorTranslated);
    if let Err(reason) = csum::decode(netlab_nat_icmp_error(ctx.skb.skb, err, &entry, outer_saddr))
    {
        return Some(Verdict::drop(reason));
    }
    // The error goes where the flow's packets go: a hairpin flow's back
    // out of the veth it came in on.
    Some(after_rewrite(ctx, lab, entry, hook))
}

global::function! {
    /// [`rewrite_icmp_error`] as a global BPF function, verified once (see
    /// [`netlab_nat_rewrite`]).
    fn netlab_nat_icmp_error(
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
}

/// An ICMP error no flow of this hook claims. On the uplink, addressed
/// into the lab, it is about nothing the lab sent out: dropped, as
/// netfilter finds it INVALID (and no lab address crosses the uplink).
/// Elsewhere it passes, counted as any untranslatable packet.
#[inline(always)]
pub fn unrelated_icmp_error(lab: &Lab, iface: &Iface, err: &IcmpError) -> Verdict {
    if iface.role == ROLE_UPLINK
        && !lab.in_uplink_net(err.ip.daddr)
        && lab.is_internal(err.ip.daddr)
    {
        return Verdict::drop(Stat::IcmpErrorUnrelated);
    }
    stats::count(Stat::Unsupported);
    Verdict::PASS
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
        let (old, new) = if err.inner_request {
            (inner.sport, entry.dport)
        } else {
            (inner.dport, entry.sport)
        };
        return csum::restore_embedded_id(ctx, inner_l4, old, new, usize::from(err.l4));
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
