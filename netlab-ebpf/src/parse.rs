//! Packet parsing: Ethernet → IPv4 → TCP/UDP/ICMP echo, into a [`Packet`].
//!
//! Reads go through `bpf_skb_load_bytes` (`TcContext::load`), which bounds
//! every read by the packet length and works on non-linear skbs, so a
//! truncated frame is an error value here, never an out-of-bounds read.

use aya_ebpf::programs::TcContext;
use netlab_common::nat::{FlowKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

/// A parsed IPv4 packet with a flow key.
#[derive(Clone, Copy)]
pub struct Packet {
    /// Offset of the IPv4 header.
    pub l3: usize,
    /// Offset of the TCP/UDP/ICMP header.
    pub l4: usize,
    pub key: FlowKey,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub len: u32,
}

/// An ICMP error (destination unreachable, time exceeded, parameter
/// problem) and the header of the packet it is about.
#[derive(Clone, Copy)]
pub struct IcmpError {
    pub l3: usize,
    pub l4: usize,
    pub saddr: u32,
    pub daddr: u32,
    /// Offset of the embedded IPv4 header.
    pub inner_l3: usize,
    /// Offset of the embedded TCP/UDP/ICMP header.
    pub inner_l4: usize,
    /// The embedded packet's flow key (it travelled the other way).
    pub inner: FlowKey,
    /// For an embedded ICMP echo: whether it was a request (id in `sport`).
    pub inner_echo_request: bool,
}

/// Why a frame was not parsed into a [`Packet`].
#[derive(Clone, Copy)]
pub enum NotParsed {
    NotIpv4,
    Malformed,
    /// The IPv4 source, so callers can tell whether the fragment would leak.
    Fragment(u32),
    Unsupported(u32),
    IcmpError(IcmpError),
}

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROB: u8 = 12;

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Packet, NotParsed> {
    let ethertype: u16 = ctx.load(12).map_err(|_| NotParsed::Malformed)?;
    if u16::from_be(ethertype) != ETH_P_IP {
        return Err(NotParsed::NotIpv4);
    }
    let l3 = ETH_HLEN;
    let ip: Ipv4Hdr = ctx.load(l3).map_err(|_| NotParsed::Malformed)?;
    let ihl = usize::from(ip.ver_ihl & 0x0f) * 4;
    let tot_len = usize::from(u16::from_be(ip.tot_len));
    let len = ctx.len() as usize;
    if ip.ver_ihl >> 4 != 4 || ihl < 20 || tot_len < ihl || l3 + tot_len > len {
        return Err(NotParsed::Malformed);
    }
    // More-fragments set or a non-zero offset: L4 ports are not in every piece.
    if u16::from_be(ip.frag_off) & 0x3fff != 0 {
        return Err(NotParsed::Fragment(ip.saddr));
    }
    let l4 = l3 + ihl;
    let l4_len = tot_len - ihl;
    let mut key = FlowKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: 0,
        dport: 0,
        proto: ip.proto,
        _pad: [0; 3],
    };
    let mut tcp_flags = 0;
    let mut icmp_type = 0;
    match ip.proto {
        IPPROTO_TCP => {
            if l4_len < 20 {
                return Err(NotParsed::Malformed);
            }
            let ports: [u16; 2] = ctx.load(l4).map_err(|_| NotParsed::Malformed)?;
            let doff_flags: [u8; 2] = ctx.load(l4 + 12).map_err(|_| NotParsed::Malformed)?;
            if usize::from(doff_flags[0] >> 4) * 4 < 20
                || usize::from(doff_flags[0] >> 4) * 4 > l4_len
            {
                return Err(NotParsed::Malformed);
            }
            key.sport = ports[0];
            key.dport = ports[1];
            tcp_flags = doff_flags[1];
        }
        IPPROTO_UDP => {
            if l4_len < 8 {
                return Err(NotParsed::Malformed);
            }
            let ports: [u16; 2] = ctx.load(l4).map_err(|_| NotParsed::Malformed)?;
            key.sport = ports[0];
            key.dport = ports[1];
        }
        IPPROTO_ICMP => {
            if l4_len < 8 {
                return Err(NotParsed::Malformed);
            }
            let type_code: [u8; 2] = ctx.load(l4).map_err(|_| NotParsed::Malformed)?;
            let id: u16 = ctx.load(l4 + 4).map_err(|_| NotParsed::Malformed)?;
            icmp_type = type_code[0];
            match icmp_type {
                ICMP_ECHO_REQUEST => key.sport = id,
                ICMP_ECHO_REPLY => key.dport = id,
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROB => {
                    return parse_icmp_error(ctx, l3, l4, l3 + tot_len, &ip);
                }
                _ => return Err(NotParsed::Unsupported(ip.saddr)),
            }
        }
        _ => return Err(NotParsed::Unsupported(ip.saddr)),
    }
    Ok(Packet {
        l3,
        l4,
        key,
        tcp_flags,
        icmp_type,
        len: len as u32,
    })
}

/// Parses the packet embedded in an ICMP error: its IPv4 header and the
/// first 8 bytes of its L4 header (all RFC 792 guarantees).
#[inline(always)]
fn parse_icmp_error(
    ctx: &TcContext,
    l3: usize,
    l4: usize,
    end: usize,
    outer: &Ipv4Hdr,
) -> Result<Packet, NotParsed> {
    let inner_l3 = l4 + 8;
    let inner: Ipv4Hdr = ctx.load(inner_l3).map_err(|_| NotParsed::Malformed)?;
    let inner_ihl = usize::from(inner.ver_ihl & 0x0f) * 4;
    let inner_l4 = inner_l3 + inner_ihl;
    if inner.ver_ihl >> 4 != 4 || inner_ihl < 20 || inner_l4 + 8 > end {
        return Err(NotParsed::Malformed);
    }
    let mut key = FlowKey {
        saddr: inner.saddr,
        daddr: inner.daddr,
        sport: 0,
        dport: 0,
        proto: inner.proto,
        _pad: [0; 3],
    };
    let mut inner_echo_request = false;
    match inner.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let ports: [u16; 2] = ctx.load(inner_l4).map_err(|_| NotParsed::Malformed)?;
            key.sport = ports[0];
            key.dport = ports[1];
        }
        IPPROTO_ICMP => {
            let type_code: [u8; 2] = ctx.load(inner_l4).map_err(|_| NotParsed::Malformed)?;
            let id: u16 = ctx.load(inner_l4 + 4).map_err(|_| NotParsed::Malformed)?;
            match type_code[0] {
                ICMP_ECHO_REQUEST => {
                    key.sport = id;
                    inner_echo_request = true;
                }
                ICMP_ECHO_REPLY => key.dport = id,
                _ => return Err(NotParsed::Unsupported(outer.saddr)),
            }
        }
        _ => return Err(NotParsed::Unsupported(outer.saddr)),
    }
    Err(NotParsed::IcmpError(IcmpError {
        l3,
        l4,
        saddr: outer.saddr,
        daddr: outer.daddr,
        inner_l3,
        inner_l4,
        inner: key,
        inner_echo_request,
    }))
}
