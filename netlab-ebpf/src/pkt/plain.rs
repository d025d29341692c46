//! The fast path's view of a packet: a plain TCP or UDP packet (an IPv4
//! header without options, not a fragment), whose first 38 bytes
//! (Ethernet, IPv4, the ports) are read in one go, changed as a copy, and
//! written back with one store from the first byte that changed.
//!
//! It accepts a subset of what [`parse`](super::parse::parse) calls a
//! `Flow`, checked by the same rules (netfilter's, before it would
//! translate); anything else is the one parser's to describe.

use core::{ffi::c_void, mem::offset_of};

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::bpf_skb_store_bytes,
    programs::{TcContext, XdpContext},
};
use netlab_common::nat::{FlowKey, IPPROTO_TCP, IPPROTO_UDP, Stat};

use crate::global;

use super::{
    csum::{self, L4Csum},
    ctx,
    eth::{ETH_ALEN, ETH_P_IP},
    ipv4::{IP_MF, IP_OFFSET, IPV4_MIN_HLEN, Ipv4Hdr, L3_OFF},
    l4::{
        TCP_CSUM_OFF, TCP_DOFF_OFF, TCP_FIN, TCP_MIN_HLEN, TCP_RST, TCP_SYN, UDP_CSUM_OFF,
        UDP_HLEN, UDP_LEN_OFF, tcp_flags_valid,
    },
    xdp,
};

/// Where L4 starts (no IP options).
pub const L4_OFF: usize = L3_OFF + IPV4_MIN_HLEN;

/// The headers as they sit in the frame, up to the ports.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct Headers {
    pub dmac: [u8; ETH_ALEN],
    pub smac: [u8; ETH_ALEN],
    pub ethertype: u16,
    pub ip: Ipv4Hdr,
    pub sport: u16,
    pub dport: u16,
}

const _: () = assert!(size_of::<Headers>() == L4_OFF + 4);

/// The first byte of the TTL, of the IP checksum.
const TTL_OFF: usize = L3_OFF + offset_of!(Ipv4Hdr, ttl);
const CHECK_OFF: usize = L3_OFF + offset_of!(Ipv4Hdr, check);

/// A plain TCP or UDP packet whose flow it cannot change: no TCP SYN, FIN
/// or RST (those may open, close or reopen a flow). Its headers are a
/// copy the datapath changes; [`write`] puts what changed back.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Plain {
    /// The headers, as they are to leave.
    pub hdr: Headers,
    /// The tuple as it came (its conntrack key).
    pub key: FlowKey,
    pub tcp_flags: u8,
    /// Nonzero: a router hop; [`write`] takes the TTL down by one (the
    /// caller checked it is above 1). (Integers, not `bool`: the struct
    /// crosses a global function's boundary.)
    pub routed: u8,
    /// Nonzero: the MACs in `hdr` changed.
    pub macs: u8,
    /// `skb->len`.
    pub len: u32,
}

impl Plain {
    /// The packet a TC program runs on, when it is one.
    #[inline(always)]
    pub fn read(ctx: &TcContext) -> Option<Plain> {
        let hdr = ctx::load::<Headers>(ctx, 0)?;
        Plain::check(hdr, ctx.len(), |offset| ctx::load::<[u8; 2]>(ctx, offset))
    }

    /// The frame an XDP program runs on, when it is one.
    #[inline(always)]
    pub fn read_xdp(ctx: &XdpContext) -> Option<Plain> {
        let hdr = xdp::load::<Headers>(ctx, 0)?;
        let len = (ctx.data_end() - ctx.data()) as u32;
        Plain::check(hdr, len, |offset| xdp::load::<[u8; 2]>(ctx, offset))
    }

    /// `hdr` of a packet of `len` bytes as a plain packet, if it is one;
    /// `word` reads two bytes at an offset (the TCP flags, the UDP length).
    #[inline(always)]
    fn check(hdr: Headers, len: u32, word: impl Fn(usize) -> Option<[u8; 2]>) -> Option<Plain> {
        let ip = hdr.ip;
        let tot_len = ip.total_len();
        if u16::from_be(hdr.ethertype) != ETH_P_IP
            || ip.ver_ihl != 0x45
            || u16::from_be(ip.frag_off) & (IP_MF | IP_OFFSET) != 0
            || tot_len < IPV4_MIN_HLEN + UDP_HLEN
            || L3_OFF + tot_len > len as usize
        {
            return None;
        }
        let l4_len = tot_len - IPV4_MIN_HLEN;
        let mut tcp_flags = 0;
        match ip.proto {
            IPPROTO_TCP => {
                let [doff, flags] = word(L4_OFF + TCP_DOFF_OFF)?;
                let doff = usize::from(doff >> 4) * 4;
                if doff < TCP_MIN_HLEN
                    || doff > l4_len
                    || !tcp_flags_valid(flags)
                    || flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0
                {
                    return None;
                }
                tcp_flags = flags;
            }
            IPPROTO_UDP => {
                let udp_len = usize::from(u16::from_be_bytes(word(L4_OFF + UDP_LEN_OFF)?));
                if udp_len < UDP_HLEN || udp_len > l4_len {
                    return None;
                }
            }
            _ => return None,
        }
        Some(Plain {
            key: FlowKey {
                saddr: ip.saddr,
                daddr: ip.daddr,
                sport: hdr.sport,
                dport: hdr.dport,
                proto: ip.proto,
                _pad0: 0,
                _pad1: 0,
            },
            hdr,
            tcp_flags,
            routed: 0,
            macs: 0,
            len,
        })
    }

    /// The tuple it leaves with, so far.
    #[inline(always)]
    pub fn after(&self) -> FlowKey {
        FlowKey {
            saddr: self.hdr.ip.saddr,
            daddr: self.hdr.ip.daddr,
            sport: self.hdr.sport,
            dport: self.hdr.dport,
            ..self.key
        }
    }

    /// Makes it leave as `saddr:sport > daddr:dport`.
    #[inline(always)]
    pub fn translate(&mut self, saddr: u32, daddr: u32, sport: u16, dport: u16) {
        self.hdr.ip.saddr = saddr;
        self.hdr.ip.daddr = daddr;
        self.hdr.sport = sport;
        self.hdr.dport = dport;
    }

    /// Hands the frame to `dmac` from `smac`.
    #[inline(always)]
    pub fn set_macs(&mut self, dmac: [u8; ETH_ALEN], smac: [u8; ETH_ALEN]) {
        self.hdr.dmac = dmac;
        self.hdr.smac = smac;
        self.macs = 1;
    }
}

/// Puts what changed in `pkt`'s headers into the packet: the L4 checksum
/// through the kernel (it may be offloaded, which a program cannot see:
/// see [`csum::rewrite_tuple`]), then every changed header byte in one
/// store from the first one, the IP checksum computed here.
#[inline(always)]
pub fn write(ctx: &TcContext, pkt: &mut Plain) -> Result<(), Stat> {
    csum::decode(netlab_plain_write(ctx.skb.skb, pkt))
}

global::function! {
    /// [`write`], verified once: its cases (addresses, ports, a router
    /// hop, new MACs) would multiply every path of the fast path that
    /// reaches it.
    fn netlab_plain_write(skb: *mut __sk_buff, pkt: *mut Plain) -> u32 {
        // SAFETY: the verifier checks the pointer's memory; null is refused here.
        let Some(pkt) = (unsafe { pkt.as_mut() }) else {
            return csum::encode(Err(Stat::WriteFailed));
        };
        csum::encode(write_headers(&TcContext::new(skb), pkt))
    }
}

#[inline(always)]
fn write_headers(ctx: &TcContext, pkt: &mut Plain) -> Result<(), Stat> {
    let key = pkt.key;
    let ip = pkt.hdr.ip;
    let (saddr, daddr) = (ip.saddr, ip.daddr);
    let (sport, dport) = (pkt.hdr.sport, pkt.hdr.dport);
    let addrs = key.saddr != saddr || key.daddr != daddr;
    let ports = key.sport != sport || key.dport != dport;
    let l4 = L4Csum::of(key.proto, L4_OFF);
    let mut ip_diff = 0;
    if addrs {
        ip_diff = csum::diff32(csum::diff32(0, key.saddr, saddr), key.daddr, daddr);
        csum::l4_by_diff(ctx, l4, ip_diff, true)?;
    }
    if ports {
        let diff = csum::diff16(csum::diff16(0, key.sport, sport), key.dport, dport);
        csum::l4_by_diff(ctx, l4, diff, false)?;
    }
    if pkt.routed != 0 {
        // TTL and protocol share one 16-bit word of the checksum.
        let old = u16::from_be_bytes([ip.ttl, ip.proto]).to_be();
        let new = u16::from_be_bytes([ip.ttl - 1, ip.proto]).to_be();
        pkt.hdr.ip.ttl = ip.ttl - 1;
        ip_diff = csum::diff16(ip_diff, old, new);
    }
    pkt.hdr.ip.check = csum::apply_diff(ip.check, ip_diff);
    let from = if pkt.macs != 0 {
        0
    } else if pkt.routed != 0 {
        TTL_OFF
    } else if addrs || ports {
        CHECK_OFF
    } else {
        return Ok(());
    };
    store(ctx, &pkt.hdr, from)
}
/// Stores `hdr` from byte `from` (0, the TTL's or the IP checksum's) to
/// its end.
#[inline(always)]
fn store(ctx: &TcContext, hdr: &Headers, from: usize) -> Result<(), Stat> {
    let base = (hdr as *const Headers).cast::<u8>();
    let total = size_of::<Headers>();
    // Constant sizes, one per case, as the helper's length must be.
    let (offset, len) = match from {
        0 => (0, total),
        TTL_OFF => (TTL_OFF, total - TTL_OFF),
        _ => (CHECK_OFF, total - CHECK_OFF),
    };
    // SAFETY: `base + offset .. base + offset + len` lies within `hdr`;
    // the helper copies it into the packet and checks the packet's bounds.
    let ret = unsafe {
        bpf_skb_store_bytes(
            ctx.skb.skb,
            offset as u32,
            base.add(offset).cast::<c_void>(),
            len as u32,
            0,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(Stat::WriteFailed)
    }
}

/// Writes `pkt`'s changed headers into an XDP frame: the IP and L4
/// checksums updated as complete ones (see `entry`), a UDP checksum of
/// zero left zero.
#[inline(always)]
pub fn write_xdp(ctx: &XdpContext, pkt: &Plain) -> bool {
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
