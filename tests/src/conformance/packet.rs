//! IP packets byte by byte, IPv4 and IPv6: a builder for crafted traffic
//! (checksums right unless asked otherwise) and a parser for what the
//! captures saw, into one view for both families.
//!
//! Both sides work on IP packets; the Ethernet header is the sender's and
//! the capture's business.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_IGMP: u8 = 2;
/// IPv6's fragment extension header.
pub const NEXTHDR_FRAGMENT: u8 = 44;
/// IPv6 extension headers the parser steps over (hop-by-hop, routing,
/// destination options).
const NEXTHDR_SKIPPED: [u8; 3] = [0, 43, 60];

/// The ethertypes of the two families.
pub const ETH_P_IP: [u8; 2] = [0x08, 0x00];
pub const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// Flags of the IP fragment field (host order).
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;

/// Crafted packets leave with this TTL (IPv6: hop limit), so a capture can
/// tell them (77, or 76 once forwarded) from what a kernel sent (64, 63,
/// 255).
pub const CRAFTED_TTL: u8 = 77;

/// The Internet checksum over the concatenation of `parts` (each part but
/// the last of even length).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for pair in &mut chunks {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The pseudo-header an L4 checksum covers: RFC 793's for IPv4, RFC
/// 8200's (section 8.1) for IPv6. Mixed families have none.
fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut p = vec![0_u8; 12];
            p[0..4].copy_from_slice(&s.octets());
            p[4..8].copy_from_slice(&d.octets());
            p[9] = proto;
            p[10..12].copy_from_slice(&(len as u16).to_be_bytes());
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut p = vec![0_u8; 40];
            p[0..16].copy_from_slice(&s.octets());
            p[16..32].copy_from_slice(&d.octets());
            p[32..36].copy_from_slice(&(len as u32).to_be_bytes());
            p[39] = proto;
            p
        }
        _ => Vec::new(),
    }
}

/// The IPv4 header of a crafted packet.
#[derive(Clone, Debug)]
pub struct Ip {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub id: u16,
    pub ttl: u8,
    /// Flags and fragment offset in 8-byte units, host order.
    pub frag: u16,
    /// Options, padded to a multiple of 4 by [`Ip::packet`].
    pub options: Vec<u8>,
}

impl Ip {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, id: u16) -> Self {
        Self {
            src,
            dst,
            proto,
            id,
            ttl: CRAFTED_TTL,
            frag: 0,
            options: Vec::new(),
        }
    }

    /// The whole packet: this header (checksummed) then `l4`.
    pub fn packet(&self, l4: &[u8]) -> Vec<u8> {
        let mut options = self.options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(0);
        }
        let header_len = 20 + options.len();
        let mut p = vec![0_u8; header_len];
        p[0] = 0x40 | (header_len / 4) as u8;
        p[2..4].copy_from_slice(&((header_len + l4.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&self.id.to_be_bytes());
        p[6..8].copy_from_slice(&self.frag.to_be_bytes());
        p[8] = self.ttl;
        p[9] = self.proto;
        p[12..16].copy_from_slice(&self.src.octets());
        p[16..20].copy_from_slice(&self.dst.octets());
        p[20..].copy_from_slice(&options);
        let sum = checksum(&[&p]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p.extend_from_slice(l4);
        p
    }
}

/// The IPv6 header of a crafted packet, and its fragment header when it
/// is a fragment. Its flow label is the packet's `id`: it names a crafted
/// packet as the IPv4 header's id does.
#[derive(Clone, Debug)]
pub struct Ip6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub proto: u8,
    pub id: u16,
    pub hop_limit: u8,
    /// A fragment: its offset in 8-byte units and whether more follow.
    pub frag: Option<(u16, bool)>,
}

impl Ip6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, id: u16) -> Self {
        Self {
            src,
            dst,
            proto,
            id,
            hop_limit: CRAFTED_TTL,
            frag: None,
        }
    }

    /// The whole packet: this header, the fragment header if any, then
    /// `l4`.
    pub fn packet(&self, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0_u8; 40];
        p[0] = 0x60;
        p[2..4].copy_from_slice(&self.id.to_be_bytes());
        p[7] = self.hop_limit;
        p[8..24].copy_from_slice(&self.src.octets());
        p[24..40].copy_from_slice(&self.dst.octets());
        if let Some((offset, more)) = self.frag {
            p[6] = NEXTHDR_FRAGMENT;
            let field = (offset << 3) | u16::from(more);
            p.extend_from_slice(&[self.proto, 0]);
            p.extend_from_slice(&field.to_be_bytes());
            p.extend_from_slice(&u32::from(self.id).to_be_bytes());
        } else {
            p[6] = self.proto;
        }
        p.extend_from_slice(l4);
        let payload_len = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&payload_len.to_be_bytes());
        p
    }
}

/// An ICMPv6 message from `src` to `dst` (its checksum covers the
/// pseudo-header): type, code, the 4 bytes after the checksum, then `body`.
pub fn icmp6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let sum = checksum(&[
        &pseudo_header(src.into(), dst.into(), PROTO_ICMPV6, m.len()),
        &m,
    ]);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// An ICMPv6 echo request or reply.
pub fn icmp6_echo(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    kind: u8,
    id: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut rest = [0_u8; 4];
    rest[0..2].copy_from_slice(&id.to_be_bytes());
    rest[2..4].copy_from_slice(&seq.to_be_bytes());
    icmp6(src, dst, kind, 0, rest, payload)
}

/// A UDP datagram (header and payload), checksummed for `src` → `dst`
/// (both of one family).
pub fn udp(
    src: impl Into<IpAddr>,
    dst: impl Into<IpAddr>,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let (src, dst) = (src.into(), dst.into());
    let len = 8 + payload.len();
    let mut d = vec![0_u8; 8];
    d[0..2].copy_from_slice(&sport.to_be_bytes());
    d[2..4].copy_from_slice(&dport.to_be_bytes());
    d[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    d.extend_from_slice(payload);
    let mut sum = checksum(&[&pseudo_header(src, dst, PROTO_UDP, len), &d]);
    if sum == 0 {
        sum = 0xffff;
    }
    d[6..8].copy_from_slice(&sum.to_be_bytes());
    d
}

/// A TCP segment.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The data offset field; `None`: the real header length. A value
    /// below 5 still writes a 20-byte header (the malformed case).
    pub data_offset: Option<u8>,
    /// Options, padded to a multiple of 4.
    pub options: Vec<u8>,
}

impl Tcp {
    pub fn new(sport: u16, dport: u16, flags: u8) -> Self {
        Self {
            sport,
            dport,
            seq: 0x1000_0000,
            ack: 0,
            flags,
            data_offset: None,
            options: Vec::new(),
        }
    }

    pub fn segment(
        &self,
        src: impl Into<IpAddr>,
        dst: impl Into<IpAddr>,
        payload: &[u8],
    ) -> Vec<u8> {
        let (src, dst) = (src.into(), dst.into());
        let mut options = self.options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(1);
        }
        let header_len = 20 + options.len();
        let mut s = vec![0_u8; header_len];
        s[0..2].copy_from_slice(&self.sport.to_be_bytes());
        s[2..4].copy_from_slice(&self.dport.to_be_bytes());
        s[4..8].copy_from_slice(&self.seq.to_be_bytes());
        s[8..12].copy_from_slice(&self.ack.to_be_bytes());
        s[12] = self.data_offset.unwrap_or((header_len / 4) as u8) << 4;
        s[13] = self.flags;
        s[14..16].copy_from_slice(&64240_u16.to_be_bytes());
        s[20..].copy_from_slice(&options);
        s.extend_from_slice(payload);
        let sum = checksum(&[&pseudo_header(src, dst, PROTO_TCP, s.len()), &s]);
        s[16..18].copy_from_slice(&sum.to_be_bytes());
        s
    }
}

/// An ICMP message: type, code, the 4 bytes after the checksum, then `body`.
pub fn icmp(kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let sum = checksum(&[&m]);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// An echo request or reply.
pub fn icmp_echo(kind: u8, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut rest = [0_u8; 4];
    rest[0..2].copy_from_slice(&id.to_be_bytes());
    rest[2..4].copy_from_slice(&seq.to_be_bytes());
    icmp(kind, 0, rest, payload)
}

/// Splits an IP packet (without options) into fragments carrying at most
/// `chunk` bytes of payload each (rounded down to a multiple of 8).
pub fn fragment(packet: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    let payload = &packet[header_len..];
    let chunk = (chunk / 8).max(1) * 8;
    let src = Ipv4Addr::from([packet[12], packet[13], packet[14], packet[15]]);
    let dst = Ipv4Addr::from([packet[16], packet[17], packet[18], packet[19]]);
    let id = u16::from_be_bytes([packet[4], packet[5]]);
    let mut fragments = Vec::new();
    let mut offset = 0;
    while offset < payload.len() {
        let end = (offset + chunk).min(payload.len());
        let mut ip = Ip::new(src, dst, packet[9], id);
        ip.ttl = packet[8];
        ip.frag = (offset / 8) as u16 | if end < payload.len() { IP_MF } else { 0 };
        fragments.push(ip.packet(&payload[offset..end]));
        offset = end;
    }
    fragments
}

/// What a capture saw, parsed as far as it goes: an IPv4 or an IPv6
/// packet, in the fields both have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpView {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The upper-layer protocol (IPv6: past the extension headers).
    pub proto: u8,
    /// IPv4: the header's id. IPv6: the flow label (a crafted packet's id,
    /// see [`Ip6`]), 16 bits of it; without one, a fragment's
    /// identification.
    pub id: u16,
    /// TTL or hop limit.
    pub ttl: u8,
    /// Fragment offset (8-byte units) and [`IP_MF`], as IPv4 has them
    /// (IPv6's fragment header, translated); and for IPv4, [`IP_DF`].
    pub frag: u16,
    /// IPv4 options, or IPv6 extension headers other than a fragment
    /// header, in bytes.
    pub options_len: usize,
    /// IPv4's header checksum; always true for IPv6, which has none.
    pub header_ok: bool,
    /// Total length from the header.
    pub total_len: usize,
    pub l4: L4,
}

impl IpView {
    pub fn is_ipv6(&self) -> bool {
        self.src.is_ipv6()
    }

    /// Link-local housekeeping, which the captures leave out: ICMPv6's
    /// ([`is_icmp6_housekeeping`]) and IGMP (IPv4's multicast listener
    /// reports, which a host sends on its own schedule when an interface
    /// joins a group: a report the host's bridge sent while one datapath's
    /// step ran and another's did not is timing, not NAT).
    pub fn is_housekeeping(&self) -> bool {
        if self.is_ipv6() {
            matches!(self.l4, L4::Icmp { kind, .. } if is_icmp6_housekeeping(kind))
        } else {
            self.proto == PROTO_IGMP && self.dst.is_multicast()
        }
    }

    pub fn is_fragment(&self) -> bool {
        self.frag & (IP_MF | 0x1fff) != 0
    }

    pub fn frag_offset(&self) -> usize {
        usize::from(self.frag & 0x1fff) * 8
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        data_offset: u8,
        payload: Vec<u8>,
        /// None: not all of it is here (a fragment or a truncated copy).
        csum_ok: Option<bool>,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
        csum_ok: Option<bool>,
    },
    Icmp {
        kind: u8,
        code: u8,
        rest: [u8; 4],
        body: Vec<u8>,
        csum_ok: Option<bool>,
        /// For an error: the packet it is about, as far as it is quoted.
        embedded: Option<Box<IpView>>,
    },
    /// A non-first fragment: only bytes.
    FragmentData {
        len: usize,
    },
    /// Too short for its protocol's header.
    Truncated {
        proto: u8,
        len: usize,
    },
    Other {
        proto: u8,
        len: usize,
    },
}

pub fn is_icmp_error(kind: u8) -> bool {
    matches!(kind, 3 | 4 | 5 | 11 | 12)
}

/// ICMPv6 errors: destination unreachable, packet too big, time
/// exceeded, parameter problem.
pub fn is_icmp6_error(kind: u8) -> bool {
    matches!(kind, 1..=4)
}

/// ICMPv6's link-local housekeeping: multicast listener queries and
/// reports, router and neighbour discovery. Kernels send it on their own
/// schedule (timers, first contact), so captures leave it out.
pub fn is_icmp6_housekeeping(kind: u8) -> bool {
    matches!(kind, 130..=137 | 143)
}

/// Parses an Ethernet frame carrying IPv4 or IPv6.
pub fn parse_frame(frame: &[u8]) -> Option<IpView> {
    if frame.len() < 14 {
        return None;
    }
    match [frame[12], frame[13]] {
        ETH_P_IP => parse_ipv4(&frame[14..], false),
        ETH_P_IPV6 => parse_ipv6(&frame[14..], false),
        _ => None,
    }
}

/// Parses an IPv4 packet. `quoted`: it is the inside of an ICMP error, so
/// it may be cut short, and its total length is not the bytes at hand.
pub fn parse_ipv4(p: &[u8], quoted: bool) -> Option<IpView> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(p[0] & 0x0f) * 4;
    if header_len < 20 || p.len() < header_len {
        return None;
    }
    let total_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let end = if quoted {
        p.len()
    } else {
        total_len.clamp(header_len, p.len())
    };
    let complete = total_len <= end;
    let src = Ipv4Addr::from([p[12], p[13], p[14], p[15]]);
    let dst = Ipv4Addr::from([p[16], p[17], p[18], p[19]]);
    let proto = p[9];
    let frag = u16::from_be_bytes([p[6], p[7]]);
    let body = &p[header_len..end];
    let first = frag & 0x1fff == 0;
    let whole = first && frag & IP_MF == 0 && complete;
    let (src, dst) = (IpAddr::V4(src), IpAddr::V4(dst));
    let l4 = if first {
        parse_l4(src, dst, proto, body, whole, quoted)
    } else {
        L4::FragmentData { len: body.len() }
    };
    Some(IpView {
        src,
        dst,
        proto,
        id: u16::from_be_bytes([p[4], p[5]]),
        ttl: p[8],
        frag,
        options_len: header_len - 20,
        header_ok: checksum(&[&p[..header_len]]) == 0,
        total_len,
        l4,
    })
}

/// Parses an IPv6 packet (`quoted`: as for [`parse_ipv4`]), past its
/// hop-by-hop, routing, destination options and fragment headers.
pub fn parse_ipv6(p: &[u8], quoted: bool) -> Option<IpView> {
    if p.len() < 40 || p[0] >> 4 != 6 {
        return None;
    }
    let payload_len = usize::from(u16::from_be_bytes([p[4], p[5]]));
    let total_len = 40 + payload_len;
    let end = if quoted {
        p.len()
    } else {
        total_len.min(p.len())
    };
    let complete = total_len <= end;
    let octets = |at: usize| -> [u8; 16] { p[at..at + 16].try_into().unwrap_or_default() };
    let src = IpAddr::V6(Ipv6Addr::from(octets(8)));
    let dst = IpAddr::V6(Ipv6Addr::from(octets(24)));
    let mut proto = p[6];
    let mut at = 40;
    let mut options_len = 0;
    let mut frag = 0;
    // The flow label's low 16 bits (a crafted packet's id, see [`Ip6`]),
    // which routers and NAT66 keep, and which a kernel that reassembles
    // and refragments keeps too, where its fragments' identification is
    // its own (random); the fragment header's only without a flow label.
    let flow_label = u16::from_be_bytes([p[2], p[3]]);
    let mut id = flow_label;
    // A chain longer than this is left as "other" (no packet here has one).
    for _ in 0..8 {
        if NEXTHDR_SKIPPED.contains(&proto) && at + 8 <= end {
            let len = (usize::from(p[at + 1]) + 1) * 8;
            proto = p[at];
            at += len;
            options_len += len;
        } else if proto == NEXTHDR_FRAGMENT && at + 8 <= end {
            let field = u16::from_be_bytes([p[at + 2], p[at + 3]]);
            frag = (field >> 3) | if field & 1 != 0 { IP_MF } else { 0 };
            if flow_label == 0 {
                id = u16::from_be_bytes([p[at + 6], p[at + 7]]);
            }
            proto = p[at];
            at += 8;
        } else {
            break;
        }
    }
    let body = p.get(at.min(end)..end).unwrap_or_default();
    let first = frag & 0x1fff == 0;
    let whole = first && frag & IP_MF == 0 && complete;
    let l4 = if first {
        parse_l4(src, dst, proto, body, whole, quoted)
    } else {
        L4::FragmentData { len: body.len() }
    };
    Some(IpView {
        src,
        dst,
        proto,
        id,
        ttl: p[7],
        frag,
        options_len,
        header_ok: true,
        total_len,
        l4,
    })
}

/// The upper-layer header `body` holds for `proto` (ICMP of `src`'s
/// family), its checksum checked when the packet is `whole`.
fn parse_l4(src: IpAddr, dst: IpAddr, proto: u8, body: &[u8], whole: bool, quoted: bool) -> L4 {
    let l4_sum = |proto: u8| -> Option<bool> {
        whole.then(|| checksum(&[&pseudo_header(src, dst, proto, body.len()), body]) == 0)
    };
    let icmp = if src.is_ipv6() {
        PROTO_ICMPV6
    } else {
        PROTO_ICMP
    };
    match proto {
        PROTO_TCP if body.len() >= 20 => {
            let data_offset = body[12] >> 4;
            let start = (usize::from(data_offset) * 4).clamp(20, body.len());
            L4::Tcp {
                sport: u16::from_be_bytes([body[0], body[1]]),
                dport: u16::from_be_bytes([body[2], body[3]]),
                flags: body[13],
                data_offset,
                payload: body[start..].to_vec(),
                csum_ok: l4_sum(PROTO_TCP),
            }
        }
        PROTO_UDP if body.len() >= 8 => L4::Udp {
            sport: u16::from_be_bytes([body[0], body[1]]),
            dport: u16::from_be_bytes([body[2], body[3]]),
            payload: body[8..].to_vec(),
            // A zero checksum means "none" in UDP over IPv4; over IPv6
            // it is wrong (RFC 8200, 8.1).
            csum_ok: if body[6..8] == [0, 0] && src.is_ipv4() {
                Some(true)
            } else {
                l4_sum(PROTO_UDP)
            },
        },
        _ if proto == icmp && body.len() >= 8 => {
            let kind = body[0];
            let embedded = match icmp {
                _ if quoted => None,
                PROTO_ICMP if is_icmp_error(kind) => parse_ipv4(&body[8..], true),
                PROTO_ICMPV6 if is_icmp6_error(kind) => parse_ipv6(&body[8..], true),
                _ => None,
            };
            // ICMPv6's checksum covers the pseudo-header, ICMP's does not.
            let csum_ok = if icmp == PROTO_ICMPV6 {
                l4_sum(PROTO_ICMPV6)
            } else {
                whole.then(|| checksum(&[body]) == 0)
            };
            L4::Icmp {
                kind,
                code: body[1],
                rest: [body[4], body[5], body[6], body[7]],
                body: body[8..].to_vec(),
                csum_ok,
                embedded: embedded.map(Box::new),
            }
        }
        PROTO_TCP | PROTO_UDP | PROTO_ICMP | PROTO_ICMPV6 => L4::Truncated {
            proto,
            len: body.len(),
        },
        _ => L4::Other {
            proto,
            len: body.len(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 1);
    const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    fn frame(packet: &[u8]) -> Vec<u8> {
        let mut f = vec![0_u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(packet);
        f
    }

    #[test]
    fn igmp_reports_are_housekeeping_multicast_udp_is_not() {
        let group = Ipv4Addr::new(224, 0, 0, 22);
        let report = Ip::new(A, group, PROTO_IGMP, 1).packet(&[0x22, 0, 0, 0, 0, 0, 0, 0]);
        let view = parse_frame(&frame(&report));
        assert!(view.is_some_and(|v| v.is_housekeeping()));
        let mdns = Ipv4Addr::new(224, 0, 0, 251);
        let udp = Ip::new(A, mdns, PROTO_UDP, 2).packet(&udp(A, mdns, 5353, 5353, b"q"));
        let view = parse_frame(&frame(&udp));
        assert!(view.is_some_and(|v| !v.is_housekeeping()));
    }

    #[test]
    fn built_packets_parse_back_with_good_checksums() {
        let p = Ip::new(A, B, PROTO_UDP, 7).packet(&udp(A, B, 1000, 53, b"hello"));
        let v = parse_frame(&frame(&p)).unwrap();
        assert!(v.header_ok);
        assert_eq!(
            v.l4,
            L4::Udp {
                sport: 1000,
                dport: 53,
                payload: b"hello".to_vec(),
                csum_ok: Some(true)
            }
        );
        let t = Ip::new(A, B, PROTO_TCP, 8).packet(&Tcp::new(1, 2, TCP_SYN).segment(A, B, b"x"));
        match parse_frame(&frame(&t)).unwrap().l4 {
            L4::Tcp { csum_ok, flags, .. } => {
                assert_eq!(csum_ok, Some(true));
                assert_eq!(flags, TCP_SYN);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn icmp_errors_quote_their_packet() {
        let inner = Ip::new(B, A, PROTO_UDP, 9).packet(&udp(B, A, 53, 1000, b"q"));
        let err = Ip::new(A, B, PROTO_ICMP, 10).packet(&icmp(3, 3, [0; 4], &inner));
        let v = parse_frame(&frame(&err)).unwrap();
        let L4::Icmp {
            embedded: Some(e),
            csum_ok,
            ..
        } = v.l4
        else {
            panic!("no embedded header")
        };
        assert_eq!(csum_ok, Some(true));
        assert_eq!(e.src, B);
        assert!(matches!(
            e.l4,
            L4::Udp {
                csum_ok: Some(true),
                ..
            }
        ));
    }

    #[test]
    fn fragments_cover_the_payload() {
        let p = Ip::new(A, B, PROTO_UDP, 11).packet(&udp(A, B, 1, 2, &[7; 100]));
        let frags = fragment(&p, 40);
        assert_eq!(frags.len(), 3);
        let views: Vec<_> = frags
            .iter()
            .map(|f| parse_frame(&frame(f)).unwrap())
            .collect();
        assert!(matches!(views[0].l4, L4::Udp { csum_ok: None, .. }));
        assert_eq!(views[1].frag_offset(), 40);
        assert_eq!(views[2].frag & IP_MF, 0);
        assert!(views.iter().all(|v| v.header_ok));
    }

    const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x15, 0, 0, 0, 0, 0, 1);
    const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);

    fn frame6(packet: &[u8]) -> Vec<u8> {
        let mut f = vec![0_u8; 12];
        f.extend_from_slice(&ETH_P_IPV6);
        f.extend_from_slice(packet);
        f
    }

    #[test]
    fn ipv6_packets_parse_back_with_good_checksums() {
        let p = Ip6::new(A6, B6, PROTO_UDP, 0x0701).packet(&udp(A6, B6, 1000, 53, b"hello"));
        let v = parse_frame(&frame6(&p)).unwrap();
        assert!(v.is_ipv6());
        assert_eq!(
            (v.src, v.dst, v.id, v.ttl),
            (A6.into(), B6.into(), 0x0701, CRAFTED_TTL)
        );
        assert_eq!(
            v.l4,
            L4::Udp {
                sport: 1000,
                dport: 53,
                payload: b"hello".to_vec(),
                csum_ok: Some(true)
            }
        );
        let t =
            Ip6::new(A6, B6, PROTO_TCP, 2).packet(&Tcp::new(1, 2, TCP_SYN).segment(A6, B6, b""));
        assert!(matches!(
            parse_frame(&frame6(&t)).unwrap().l4,
            L4::Tcp {
                csum_ok: Some(true),
                flags: TCP_SYN,
                ..
            }
        ));
        let echo = icmp6_echo(A6, B6, ICMPV6_ECHO_REQUEST, 7, 1, b"x");
        let e = Ip6::new(A6, B6, PROTO_ICMPV6, 3).packet(&echo);
        assert!(matches!(
            parse_frame(&frame6(&e)).unwrap().l4,
            L4::Icmp {
                kind: ICMPV6_ECHO_REQUEST,
                csum_ok: Some(true),
                ..
            }
        ));
        // The same message to another address fails its checksum: the
        // pseudo-header counts.
        let elsewhere = Ip6::new(A6, Ipv6Addr::LOCALHOST, PROTO_ICMPV6, 3).packet(&echo);
        assert!(matches!(
            parse_frame(&frame6(&elsewhere)).unwrap().l4,
            L4::Icmp {
                csum_ok: Some(false),
                ..
            }
        ));
    }

    #[test]
    fn icmpv6_errors_quote_their_packet_and_fragments_parse() {
        let inner = Ip6::new(B6, A6, PROTO_UDP, 9).packet(&udp(B6, A6, 53, 1000, b"q"));
        let err = Ip6::new(A6, B6, PROTO_ICMPV6, 10).packet(&icmp6(
            A6,
            B6,
            ICMPV6_DEST_UNREACH,
            4,
            [0; 4],
            &inner,
        ));
        let v = parse_frame(&frame6(&err)).unwrap();
        let L4::Icmp {
            embedded: Some(e),
            csum_ok,
            ..
        } = v.l4
        else {
            panic!("no embedded header")
        };
        assert_eq!(csum_ok, Some(true));
        assert_eq!(e.src, IpAddr::V6(B6));
        assert!(matches!(
            e.l4,
            L4::Udp {
                csum_ok: Some(true),
                ..
            }
        ));

        let mut later = Ip6::new(A6, B6, PROTO_UDP, 0x0abc);
        later.frag = Some((10, false));
        let v = parse_frame(&frame6(&later.packet(&[0; 16]))).unwrap();
        assert_eq!((v.id, v.frag_offset(), v.options_len), (0x0abc, 80, 0));
        assert_eq!(v.l4, L4::FragmentData { len: 16 });
    }
}
