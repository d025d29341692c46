//! NAT66, as Docker's ip6tables rules do it and netfilter translates:
//! masquerade of the lab's masqueraded IPv6 subnets out of the uplink (to
//! the uplink's IPv6 address, with a source port from the same search as
//! IPv4's, [`ports`]), published ports on the host's IPv6 addresses to
//! their backend's IPv6 address (a namespace reaching its own through the
//! hairpin), the replies of all, and ICMPv6 errors about them with the
//! header they quote. Built on the IPv6 family of
//! [`conntrack`], with IPv4's rules of [`nat`] (which flows a packet may
//! open, how each kind is opened and what it keeps).
//!
//! Every IPv6 flow translated on the way in is addressed to one of the
//! lab's host IPv6 addresses (`NatConfig::local6`): other packets cost no
//! lookup there. Every packet meets one lookup at its
//! egress hook, but one an ingress hook translated ([`Handoff`]).

use aya_ebpf::{bindings::__sk_buff, macros::map, maps::PerCpuArray, programs::TcContext};
use netlab_common::nat::{
    APPLY_INGRESS, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, NAT_DNAT, NAT_REFLECT, NAT_SNAT,
    ROLE_LAB, ROLE_UPLINK, Stat,
};

use crate::{
    conntrack::{self, Known, Opened, V6},
    frag, global,
    lab::{self, Iface, Lab},
    nat::{Keeps, Opening, opens},
    pkt::{
        csum::{self, L4Csum},
        ctx::{self, Handoff, per_cpu_value_mut},
        ipv6::{IPV6_DADDR_OFF, IPV6_SADDR_OFF},
        l4::{ICMP_ID_OFF, L4_DPORT_OFF, L4_SPORT_OFF, TCP_CSUM_OFF, TCP_SYN, UDP_CSUM_OFF},
        parse6::{Icmp6Error, Packet6},
    },
    ports::allocate_port,
    stats,
    verdict::{Rewrite6, Verdict6},
};

/// Where the IPv6 header starts (after Ethernet).
const L3_OFF: usize = crate::pkt::eth::ETH_HLEN;

/// Where NAT66 builds a flow's rewrite and its new halves: IPv6's are
/// 40-byte tuples, more than the BPF stack of the IPv6 programs and the
/// calls under them can hold beside the rest.
#[map]
static NAT6_WORK: PerCpuArray<Opened<V6>> = PerCpuArray::with_max_entries(1, 0);

/// Where the IPv6 programs keep their verdict, for the same reason.
#[map]
static NAT6_VERDICT: PerCpuArray<Verdict6> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's verdict slot, reset to `PASS`.
#[inline(always)]
pub fn verdict_slot() -> Option<&'static mut Verdict6> {
    let verdict = per_cpu_value_mut(&NAT6_VERDICT, 0)?;
    *verdict = Verdict6::PASS;
    Some(verdict)
}

/// Translates a packet of a flow at `hook` (`APPLY_*`) on `iface`: a
/// known flow's rewrite when this hook owns it, else what a new flow gets
/// here, into `verdict` (the caller's: a verdict per call would not fit
/// the IPv6 programs' stack).
#[inline(always)]
pub fn translate(ctx: &TcContext, iface: &Iface, pkt: &Packet6, hook: u8, verdict: &mut Verdict6) {
    netlab_nat6_flow(ctx.skb.skb, pkt, u32::from(hook), iface.ifindex, verdict);
}

global::function! {
    /// [`translate`], verified once for both IPv6 programs, in a frame of
    /// its own.
    fn netlab_nat6_flow(
        skb: *mut __sk_buff,
        pkt: *const Packet6,
        hook: u32,
        ifindex: u32,
        verdict: *mut Verdict6,
    ) -> u32 {
        // SAFETY: the verifier checks both pointers' memory; null is refused here.
        let (Some(pkt), Some(verdict)) = (unsafe { pkt.as_ref() }, unsafe { verdict.as_mut() })
        else {
            return 0;
        };
        let (Some(lab), Some(work)) = (Lab::get(), per_cpu_value_mut(&NAT6_WORK, 0)) else {
            return 0;
        };
        let ctx = TcContext::new(skb);
        *verdict = flow(&ctx, &lab, &Iface::of_index(ifindex), pkt, hook as u8, work);
        0
    }
}

/// The body of [`netlab_nat6_flow`]; `work` is this CPU's work slot.
#[inline(always)]
fn flow(
    ctx: &TcContext,
    lab: &Lab,
    iface: &Iface,
    pkt: &Packet6,
    hook: u8,
    work: &mut Opened<V6>,
) -> Verdict6 {
    let key = &pkt.key;
    if pkt.first_fragment {
        frag::remember6(pkt, &key.saddr, &key.daddr, key.sport, key.dport);
    }
    if hook == APPLY_INGRESS && !lab.is_local6(&pkt.key.daddr) {
        return Verdict6::PASS;
    }
    match conntrack::track_into::<V6>(&pkt.key, hook, pkt.tcp_flags, pkt.len, &mut work.out) {
        // Another hook translates this flow (masquerade waits for egress).
        Known::OtherHook => return Verdict6::PASS,
        Known::Rewrite if work.out.nat == 0 => return Verdict6::PASS,
        Known::Rewrite => return finish(ctx, lab, pkt, &work.out, hook),
        // `track_into` left `work.out` the packet's own tuple.
        Known::None => {}
    }
    if hook == APPLY_INGRESS {
        new_ingress(ctx, lab, iface, pkt, work)
    } else {
        new_egress(ctx, lab, iface, pkt, work)
    }
}

/// A new flow entering, addressed to one of the uplink's IPv6 addresses:
/// DNAT when it is for a published port with an IPv6 backend.
#[inline(always)]
fn new_ingress(
    ctx: &TcContext,
    lab: &Lab,
    iface: &Iface,
    pkt: &Packet6,
    work: &mut Opened<V6>,
) -> Verdict6 {
    let key = &pkt.key;
    if key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP {
        return Verdict6::PASS;
    }
    let Some(backend) = lab::published6(key.dport, key.proto) else {
        return Verdict6::PASS;
    };
    if !opens(key.proto, pkt.tcp_flags, pkt.icmp_request) {
        // INVALID to netfilter too: left untranslated, to the host.
        stats::count(Stat::TcpNotSyn);
        return Verdict6::PASS;
    }
    if iface.role == ROLE_UPLINK && ctx::for_other_host(ctx) {
        // Dropped by the stack; nf_conntrack never sees it.
        stats::count(Stat::OtherHost);
        return Verdict6::PASS;
    }
    let out = &mut work.out;
    out.daddr = backend.addr;
    out.dport = backend.port;
    out.nat = NAT_DNAT;
    // A namespace reaching its own published port: the source becomes the
    // segment's gateway (Docker's hairpin masquerade), and the flow is
    // reflected back out of its veth, as IPv4's.
    let hairpin = key.saddr == backend.addr;
    if hairpin {
        let gateway = iface.gateway6();
        if gateway == [0; 4] {
            return Verdict6::PASS;
        }
        out.saddr = gateway;
        out.nat |= NAT_SNAT | NAT_REFLECT;
        if let Err(reason) = allocate_port::<V6>(lab, key, out) {
            return Verdict6::drop(reason);
        }
    } else if !conntrack::key_free::<V6>(&out.reply_key(key.proto)) {
        // DNAT keeps the client's tuple, which another flow may hold (one
        // client port that reached another published port of the same
        // backend): netfilter's implicit source NAT gives it another port.
        out.nat |= NAT_SNAT;
        if let Err(reason) = allocate_port::<V6>(lab, key, out) {
            return Verdict6::drop(reason);
        }
        stats::count(Stat::DnatPortRemapped);
    }
    let how = if hairpin {
        Opening::HAIRPIN
    } else {
        Opening::DNAT
    };
    create(ctx, lab, pkt, how, Keeps::Port, work)
}

/// A new flow leaving: masquerade out of the uplink when its source is in
/// a masqueraded IPv6 subnet; the host's own flow (from one of its lab
/// IPv6 addresses, out of a lab veth or the uplink) tracked, as IPv4's
/// `host_flow_new`. Anything else leaves as it is (the uplink's admission
/// then keeps a lab source from leaving).
#[inline(always)]
fn new_egress(
    ctx: &TcContext,
    lab: &Lab,
    iface: &Iface,
    pkt: &Packet6,
    work: &mut Opened<V6>,
) -> Verdict6 {
    let key = &pkt.key;
    if iface.role != ROLE_UPLINK || !lab.is_masqueraded6(&key.saddr) {
        return host_flow(ctx, lab, iface, pkt, work);
    }
    let masq_addr = lab.cfg.masq_addr6;
    if masq_addr == [0; 4] {
        return Verdict6::PASS;
    }
    if !opens(key.proto, pkt.tcp_flags, pkt.icmp_request) {
        stats::count(Stat::TcpNotSyn);
        return Verdict6::PASS;
    }
    work.out.saddr = masq_addr;
    work.out.nat = NAT_SNAT;
    if let Err(reason) = allocate_port::<V6>(lab, key, &mut work.out) {
        return Verdict6::drop(reason);
    }
    create(ctx, lab, pkt, Opening::MASQUERADE, Keeps::Nothing, work)
}

/// The host's own new flow leaving by a lab link: tracked so that its
/// replies are never taken for a new flow to an IPv6 published port, and
/// moved to another source port when a translated flow already holds its
/// reply tuple (netfilter's implicit source NAT).
#[inline(always)]
fn host_flow(
    ctx: &TcContext,
    lab: &Lab,
    iface: &Iface,
    pkt: &Packet6,
    work: &mut Opened<V6>,
) -> Verdict6 {
    let key = &pkt.key;
    if (iface.role != ROLE_UPLINK && iface.role != ROLE_LAB)
        || !lab.is_local6(&key.saddr)
        || !opens(key.proto, pkt.tcp_flags, pkt.icmp_request)
    {
        return Verdict6::PASS;
    }
    if !conntrack::key_free::<V6>(&work.out.reply_key(key.proto)) {
        work.out.nat |= NAT_SNAT;
        if let Err(reason) = allocate_port::<V6>(lab, key, &mut work.out) {
            return Verdict6::drop(reason);
        }
        stats::count(Stat::HostPortRemapped);
    }
    create(ctx, lab, pkt, Opening::HOST, Keeps::Nothing, work)
}

/// Opens the flow `opened.out` describes: both conntrack halves, then the
/// rewrite (as IPv4's `nat::create`).
#[inline(always)]
fn create(
    ctx: &TcContext,
    lab: &Lab,
    pkt: &Packet6,
    how: Opening,
    keeps: Keeps,
    opened: &mut Opened<V6>,
) -> Verdict6 {
    let key = &pkt.key;
    let (published, epoch) = match keeps {
        Keeps::Port => (key.dport, lab::publish_epoch(key.proto, key.dport)),
        _ => (0, 0),
    };
    opened.len = pkt.len;
    opened.apply_original = how.apply_original;
    opened.apply_reply = how.apply_reply;
    // A plain ACK picks an established connection up mid-stream.
    opened.picked_up = u8::from(key.proto == IPPROTO_TCP && pkt.tcp_flags & TCP_SYN == 0);
    opened.confirmed = u8::from(how.confirmed);
    opened.published = published;
    opened.service = 0;
    opened.epoch = epoch;
    match conntrack::insert_flow(key, opened) {
        Ok(()) => {
            stats::count(how.counter);
            opened.out.opened = u8::from(!how.confirmed);
        }
        // Another CPU opened this very flow first: the packet takes the
        // winner's translation, which the insert put in `opened.out` (see
        // IPv4's `nat::create`).
        Err(Stat::CtInsertRace) => stats::count(Stat::CtInsertRace),
        Err(reason) => return Verdict6::drop(reason),
    }
    finish(ctx, lab, pkt, &opened.out, how.apply_original)
}

/// Rewrites the packet to `out` at `hook`.
#[inline(always)]
fn finish(ctx: &TcContext, lab: &Lab, pkt: &Packet6, out: &Rewrite6, hook: u8) -> Verdict6 {
    if let Err(reason) = csum::decode(netlab_nat6_rewrite(ctx.skb.skb, pkt, out)) {
        return Verdict6::drop(reason);
    }
    if pkt.first_fragment {
        frag::remember6(pkt, &out.saddr, &out.daddr, out.sport, out.dport);
    }
    after_rewrite(ctx, lab, out, hook)
}

/// A fragment after the first (`Kind6::LaterFragment`) at `hook`:
/// translated with the ports its first fragment left in `FRAGMENTS6`,
/// addresses only (its bytes hold no L4 header; IPv6 has no header
/// checksum), as IPv4's `nat::translate_fragment`.
#[inline(always)]
pub fn translate_fragment(ctx: &TcContext, pkt: &Packet6, hook: u8, verdict: &mut Verdict6) {
    netlab_nat6_fragment(ctx.skb.skb, pkt, u32::from(hook), verdict);
}

global::function! {
    /// [`translate_fragment`], verified once for both IPv6 programs.
    fn netlab_nat6_fragment(
        skb: *mut __sk_buff,
        pkt: *const Packet6,
        hook: u32,
        verdict: *mut Verdict6,
    ) -> u32 {
        // SAFETY: the verifier checks both pointers' memory; null is refused here.
        let (Some(pkt), Some(verdict)) = (unsafe { pkt.as_ref() }, unsafe { verdict.as_mut() })
        else {
            return 0;
        };
        let (Some(lab), Some(work)) = (Lab::get(), per_cpu_value_mut(&NAT6_WORK, 0)) else {
            return 0;
        };
        let ctx = TcContext::new(skb);
        *verdict = fragment(&ctx, &lab, pkt, hook as u8, work);
        0
    }
}

/// The body of [`netlab_nat6_fragment`]; `work` is this CPU's work slot.
#[inline(always)]
fn fragment(
    ctx: &TcContext,
    lab: &Lab,
    pkt: &Packet6,
    hook: u8,
    work: &mut Opened<V6>,
) -> Verdict6 {
    if hook == APPLY_INGRESS && !lab.is_local6(&pkt.key.daddr) {
        return Verdict6::PASS;
    }
    let Some(key) = frag::flow_key6(pkt) else {
        // Only a destination rewrite (ingress) needs to know the flow for
        // sure; a masqueraded source stays off the uplink anyway.
        if hook == APPLY_INGRESS {
            return Verdict6::drop(Stat::FragUnknown);
        }
        return Verdict6::PASS;
    };
    if !conntrack::peek_into::<V6>(&key, hook, false, &mut work.out) || work.out.nat == 0 {
        return Verdict6::PASS;
    }
    stats::count(Stat::Fragment);
    let out = &work.out;
    for (offset, old, new) in [
        (L3_OFF + IPV6_SADDR_OFF, &key.saddr, &out.saddr),
        (L3_OFF + IPV6_DADDR_OFF, &key.daddr, &out.daddr),
    ] {
        if old != new && ctx.store(offset, new, 0).is_err() {
            return Verdict6::drop(Stat::WriteFailed);
        }
    }
    after_rewrite(ctx, lab, out, hook)
}

/// After a rewrite on ingress, tells the egress hook the packet is done
/// with (unless it is for the host itself, which has no egress hook; a
/// reflected flow goes back out of its veth, egress included).
#[inline(always)]
fn after_rewrite(ctx: &TcContext, lab: &Lab, out: &Rewrite6, hook: u8) -> Verdict6 {
    let reflected = out.nat & NAT_REFLECT != 0;
    if hook == APPLY_INGRESS && (reflected || !lab.is_local6(&out.daddr)) {
        let handoff = if out.opened != 0 {
            Handoff::Opened
        } else {
            Handoff::Translated
        };
        ctx::hand_off(ctx, handoff);
    }
    if reflected {
        return Verdict6::reflected(*out);
    }
    Verdict6::rewritten(*out)
}

/// What the egress hook does with a packet an ingress hook translated:
/// nothing, but confirm the flow the packet opened (it survived the stack).
#[inline(always)]
pub fn handed_off(handoff: Handoff, pkt: Option<&Packet6>) {
    if let (Handoff::Opened, Some(pkt)) = (handoff, pkt) {
        conntrack::confirm::<V6>(&pkt.key.reversed());
    }
}

/// [`handed_off`] for a packet rewritten to `out` on ingress, not parsed
/// again (a peer redirect skips the egress hook).
#[inline(always)]
pub fn handed_off_as(handoff: Handoff, out: &Rewrite6, proto: u8) {
    if let Handoff::Opened = handoff {
        netlab_nat6_confirm_as(out, u32::from(proto));
    }
}

global::function! {
    /// [`handed_off_as`]'s confirm, in a frame of its own: the ingress
    /// program's has no room for the 40-byte reply key beside the calls
    /// into NAT66 and conntrack (measured: 16 bytes over the 512).
    fn netlab_nat6_confirm_as(out: *const Rewrite6, proto: u32) -> u32 {
        // SAFETY: the verifier checks the pointer's memory; null is refused here.
        if let Some(out) = unsafe { out.as_ref() } {
            conntrack::confirm::<V6>(&out.reply_key(proto as u8));
        }
        0
    }
}

global::function! {
    /// The rewrite of an IPv6 packet's tuple, verified once (as IPv4's
    /// `netlab_nat_rewrite`).
    fn netlab_nat6_rewrite(skb: *mut __sk_buff, pkt: *const Packet6, out: *const Rewrite6) -> u32 {
        // SAFETY: the verifier checks both pointers' memory; null is refused here.
        let (Some(pkt), Some(out)) = (unsafe { pkt.as_ref() }, unsafe { out.as_ref() }) else {
            return csum::encode(Err(Stat::WriteFailed));
        };
        let after = netlab_common::nat::FlowKey6::new(
            out.saddr,
            out.daddr,
            out.sport,
            out.dport,
            pkt.key.proto,
        );
        csum::encode(csum::rewrite_tuple6(
            &TcContext::new(skb),
            usize::from(pkt.l4),
            &pkt.key,
            &after,
            pkt.icmp_request,
        ))
    }
}

/// Translates an ICMPv6 error at `hook` on `iface`, into `verdict`: one
/// about a tracked flow reaches the right host quoting the header it
/// would expect (as IPv4's `nat::icmp_error`); one no flow of this hook
/// claims is unrelated.
#[inline(always)]
pub fn error(ctx: &TcContext, iface: &Iface, err: &Icmp6Error, hook: u8, verdict: &mut Verdict6) {
    netlab_nat6_error(ctx.skb.skb, err, u32::from(hook), iface.ifindex, verdict);
}

global::function! {
    /// [`error`], verified once for both IPv6 programs.
    fn netlab_nat6_error(
        skb: *mut __sk_buff,
        err: *const Icmp6Error,
        hook: u32,
        ifindex: u32,
        verdict: *mut Verdict6,
    ) -> u32 {
        // SAFETY: as in `netlab_nat6_flow`.
        let (Some(err), Some(verdict)) = (unsafe { err.as_ref() }, unsafe { verdict.as_mut() })
        else {
            return 0;
        };
        let (Some(lab), Some(work)) = (Lab::get(), per_cpu_value_mut(&NAT6_WORK, 0)) else {
            return 0;
        };
        let ctx = TcContext::new(skb);
        let iface = Iface::of_index(ifindex);
        *verdict = icmp_error(&ctx, &lab, err, hook as u8, &mut work.out)
            .unwrap_or_else(|| unrelated_icmp_error(&lab, &iface, err));
        0
    }
}

/// An ICMPv6 error about a tracked flow, translated: the quoted packet
/// went the other way, so its reversed tuple is the key of the error's
/// direction, whose rewrite lands in `entry`. `None` when no flow of this
/// hook matches.
#[inline(always)]
fn icmp_error(
    ctx: &TcContext,
    lab: &Lab,
    err: &Icmp6Error,
    hook: u8,
    entry: &mut Rewrite6,
) -> Option<Verdict6> {
    if hook == APPLY_INGRESS && !lab.is_local6(&err.addrs.daddr) {
        return None;
    }
    // An error about a flow idle past its timeout is about nothing
    // nf_conntrack still knows: unrelated.
    if !conntrack::peek_into::<V6>(&err.inner.reversed(), hook, true, entry) {
        return None;
    }
    if entry.nat == 0 {
        return Some(Verdict6::PASS);
    }
    stats::count(Stat::IcmpErrorTranslated);
    if let Err(reason) = csum::decode(netlab_nat6_icmp_error(ctx.skb.skb, err, entry)) {
        return Some(Verdict6::drop(reason));
    }
    Some(after_rewrite(ctx, lab, entry, hook))
}

/// An ICMPv6 error no flow of this hook claims. On the uplink, addressed
/// into one of the lab's subnets, it is about nothing the lab sent out:
/// dropped, as netfilter finds it INVALID. Elsewhere it passes, counted.
#[inline(always)]
fn unrelated_icmp_error(lab: &Lab, iface: &Iface, err: &Icmp6Error) -> Verdict6 {
    if iface.role == ROLE_UPLINK && lab.is_internal6(&err.addrs.daddr) {
        return Verdict6::drop(Stat::IcmpErrorUnrelated);
    }
    stats::count(Stat::Unsupported);
    Verdict6::PASS
}

global::function! {
    /// [`rewrite_icmp6_error`], verified once.
    fn netlab_nat6_icmp_error(skb: *mut __sk_buff, err: *const Icmp6Error, entry: *const Rewrite6) -> u32 {
        // SAFETY: as in `netlab_nat6_rewrite`.
        let (Some(err), Some(entry)) = (unsafe { err.as_ref() }, unsafe { entry.as_ref() }) else {
            return csum::encode(Err(Stat::WriteFailed));
        };
        csum::encode(rewrite_icmp6_error(&TcContext::new(skb), err, entry))
    }
}

/// The error goes where the flow's packets go, and its source is the
/// flow's when the flow's endpoint sent it (a router on the way keeps its
/// own); the quoted packet, reversed, is made the one that host sent. The
/// ICMPv6 checksum moves with the outer addresses (its pseudo-header) and
/// with every quoted byte changed; the quoted L4 checksum, when quoted,
/// is kept true to the quoted header, as netfilter keeps it.
#[inline(always)]
fn rewrite_icmp6_error(ctx: &TcContext, err: &Icmp6Error, entry: &Rewrite6) -> csum::Rewrite {
    // The error's direction is the quoted packet's, reversed.
    let inner = &err.inner;
    let icmp_l4 = usize::from(err.l4);
    let outer = &err.addrs;
    // The outer addresses enter the ICMPv6 checksum through its
    // pseudo-header, the quoted ones as data.
    let pseudo = L4Csum::of(IPPROTO_ICMPV6, icmp_l4);
    let icmp = L4Csum::of_payload(icmp_l4);
    if outer.daddr == inner.saddr {
        csum::set_addr6(
            ctx,
            L3_OFF + IPV6_DADDR_OFF,
            &outer.daddr,
            &entry.daddr,
            pseudo,
        )?;
    }
    if outer.saddr == inner.daddr {
        csum::set_addr6(
            ctx,
            L3_OFF + IPV6_SADDR_OFF,
            &outer.saddr,
            &entry.saddr,
            pseudo,
        )?;
    }
    let inner_l3 = err.inner_l3();
    let inner_l4 = usize::from(err.inner_l4);
    csum::set_addr6(
        ctx,
        inner_l3 + IPV6_SADDR_OFF,
        &inner.saddr,
        &entry.daddr,
        icmp,
    )?;
    csum::set_addr6(
        ctx,
        inner_l3 + IPV6_DADDR_OFF,
        &inner.daddr,
        &entry.saddr,
        icmp,
    )?;
    // The quoted L4 header's checksum covers the quoted addresses (its
    // pseudo-header) and ports: it moves by the same partial sum.
    let mut diff = csum::diff128(0, &inner.saddr, &entry.daddr);
    diff = csum::diff128(diff, &inner.daddr, &entry.saddr);
    if inner.proto == IPPROTO_ICMPV6 {
        let (old, new) = if err.inner_request {
            (inner.sport, entry.dport)
        } else {
            (inner.dport, entry.sport)
        };
        csum::set_port(ctx, inner_l4 + ICMP_ID_OFF, old, new, icmp)?;
        diff = csum::diff16(diff, old, new);
        return fix_quoted_csum(ctx, err, inner_l4 + 2, diff);
    }
    csum::set_port(ctx, inner_l4 + L4_SPORT_OFF, inner.sport, entry.dport, icmp)?;
    csum::set_port(ctx, inner_l4 + L4_DPORT_OFF, inner.dport, entry.sport, icmp)?;
    diff = csum::diff16(diff, inner.sport, entry.dport);
    diff = csum::diff16(diff, inner.dport, entry.sport);
    let offset = inner_l4
        + if inner.proto == IPPROTO_TCP {
            TCP_CSUM_OFF
        } else {
            UDP_CSUM_OFF
        };
    fix_quoted_csum(ctx, err, offset, diff)
}

/// Moves the quoted checksum at `offset` by `diff`, when the error
/// quotes it (TCP's lies past the 8 bytes every error carries).
#[inline(always)]
fn fix_quoted_csum(ctx: &TcContext, err: &Icmp6Error, offset: usize, diff: u32) -> csum::Rewrite {
    if offset + 2 > usize::from(err.end) {
        return Ok(());
    }
    let Some(old) = csum::read16(ctx, offset) else {
        return Ok(());
    };
    let new = csum::apply_diff(old, diff);
    csum::replace_embedded16(ctx, offset, old, new, usize::from(err.l4))
}
