//! The seeded differential fuzzer: random but valid-looking traffic, and
//! malformed traffic, through every datapath at once, compared with the
//! `iptables` reference batch by batch.
//!
//! The probes are a pure function of the seed ([`generate`]), so every
//! datapath gets the same packets in the same order. Only ICMP errors about
//! a live flow depend on the datapath: they quote the flow as `outside` saw
//! it, with the port masquerade chose there.
//!
//! Probe classes: masqueraded UDP/TCP/ICMP from red (random ports, every
//! TCP flag combination, IP options, reused source ports), fragments (in
//! order, reversed, shuffled, duplicated, incomplete) both ways, malformed
//! headers, traffic to the published ports from outside, spoofed lab
//! sources from outside and foreign sources from red, ICMP errors about
//! live flows (checksums right or broken), TTL expiring at the host,
//! broadcast and multicast, and red-to-blue traffic.
//!
//! The lab is dual-stack, and about a third of the probes are IPv6
//! ([`Generator::probe6`], classes named `ipv6 ...`): the same classes
//! where IPv6 has them (masquerade to outside6, the published ports at
//! the uplink's IPv6 address, ICMPv6 errors about live flows, hop limit
//! expiring at the host, spoofed and foreign sources, fragments both ways
//! with a fragment header, multicast but no neighbour discovery or MLD,
//! red to blue), and IPv6's own: extension headers before L4, and a
//! payload length that lies or a header cut short.
//!
//! Differences by design are listed in [`INTENDED`], known gaps not fixed
//! yet apart in [`KNOWN_GAPS`]; anything else is a finding.
//!
//! Bounded: at most `packets` probes and `seconds` of sending per datapath;
//! batches that not every datapath reached are not compared.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    DATAPATHS, Record,
    lab::{BLUE, BLUE6, ConfLab, GATEWAY6, OUTSIDE, OUTSIDE6, RED, RED6, UPLINK, UPLINK6},
    observe,
    packet::{self, Ip, Ip6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Tcp},
    scripts,
};

pub const DEFAULT_SEED: u64 = 9;

/// How many probes back an ICMP error's flow may have been opened: about
/// three batches, a few seconds, well inside the shortest conntrack
/// timeout (10 s for a TCP flow a RST closed, which most TCP openers are
/// by then). An error about an older flow would be compared at the moment
/// one conntrack or the other lets the flow expire, which is timing.
const LIVE_FLOW_PROBES: usize = 30;

/// How many probes a run sends, and for how long at most.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub seed: u64,
    pub packets: usize,
    pub seconds: u64,
    /// Probes per compared batch.
    pub batch: usize,
}

/// SplitMix64: small, fast and the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn range(&mut self, lo: u16, hi: u16) -> u16 {
        lo + self.below(u64::from(hi - lo) + 1) as u16
    }

    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Where a probe's frame is addressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mac {
    /// The lab's gateway (the bridge), from red or blue.
    Gateway,
    /// The uplink, from outside.
    Uplink,
    Broadcast,
    /// The IPv4 multicast MAC of this group.
    Multicast(Ipv4Addr),
    /// The IPv6 multicast MAC of this group (33:33 and its last 32 bits).
    Multicast6(Ipv6Addr),
}

/// What a probe sends.
#[derive(Clone, Debug)]
pub enum Body {
    Packets(Vec<Vec<u8>>),
    /// From outside to the uplink: an ICMP error about the packet with IP
    /// id `opener` (IPv6: flow label) that red sent, quoted as outside
    /// received it; ICMPv6 about an IPv6 flow when `v6`.
    IcmpErrorAbout {
        opener: u16,
        kind: u8,
        code: u8,
        break_quoted_checksum: bool,
        id: u16,
        v6: bool,
    },
}

#[derive(Clone, Debug)]
pub struct Probe {
    pub n: usize,
    pub class: &'static str,
    pub what: String,
    pub from: &'static str,
    pub to: Mac,
    pub body: Body,
}

/// The TCP or UDP (source, destination) ports of an IPv4 or IPv6 packet
/// that carries its L4 header.
fn ports(packet: &[u8]) -> Option<(u16, u16)> {
    if packet.first()? >> 4 == 6 {
        let (proto, at) = l4_of6(packet)?;
        if !(proto == PROTO_TCP || proto == PROTO_UDP) {
            return None;
        }
        let at = |i: usize| -> Option<u16> {
            Some(u16::from_be_bytes([
                *packet.get(at + i)?,
                *packet.get(at + i + 1)?,
            ]))
        };
        return Some((at(0)?, at(2)?));
    }
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let proto = *packet.get(9)?;
    let frag_offset = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x1fff;
    if !(proto == 6 || proto == 17) || frag_offset != 0 {
        return None;
    }
    let at = |i: usize| -> Option<u16> {
        Some(u16::from_be_bytes([
            *packet.get(ihl + i)?,
            *packet.get(ihl + i + 1)?,
        ]))
    };
    Some((at(0)?, at(2)?))
}

/// The UDP payload length a probe's first (or only) fragment declares.
fn udp_payload_len(packet: &[u8]) -> Option<usize> {
    if packet.first()? >> 4 == 6 {
        let (proto, at) = l4_of6(packet)?;
        if proto != PROTO_UDP {
            return None;
        }
        let len = u16::from_be_bytes([*packet.get(at + 4)?, *packet.get(at + 5)?]);
        return usize::from(len).checked_sub(8);
    }
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let frag_offset = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x1fff;
    if *packet.get(9)? != 17 || frag_offset != 0 {
        return None;
    }
    let len = u16::from_be_bytes([*packet.get(ihl + 4)?, *packet.get(ihl + 5)?]);
    usize::from(len).checked_sub(8)
}

/// The batch a difference's place (`step `batch N` @ POINT`) names.
fn batch_of(place: &str) -> Option<usize> {
    place
        .split('`')
        .nth(1)?
        .strip_prefix("batch ")?
        .parse()
        .ok()
}

/// A probe's flow: its source and destination ports, class and source
/// address.
type Flow = (u16, u16, &'static str, IpAddr);

/// Whether probes of `class` are fragments (of either family).
fn is_fragments(class: &str) -> bool {
    class.trim_start_matches("ipv6 ").starts_with("fragments")
}

/// The one class in `classes`, if they agree.
fn only<'a>(mut classes: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let first = classes.next()?;
    classes.all(|c| c == first).then_some(first)
}

fn addr(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or(Ipv4Addr::UNSPECIFIED)
}

/// The IP id of probe `n`: names it in every capture.
fn probe_id(n: usize) -> u16 {
    0x1000_u16.wrapping_add(n as u16)
}

/// Random TCP options (MSS, window scale, SACK-permitted, timestamps, NOPs).
fn tcp_options(rng: &mut Rng) -> Vec<u8> {
    let mut o = Vec::new();
    if rng.percent(50) {
        o.extend_from_slice(&[2, 4, 0x05, 0xb4]);
    }
    if rng.percent(30) {
        o.extend_from_slice(&[1, 3, 3, 7]);
    }
    if rng.percent(30) {
        o.extend_from_slice(&[4, 2]);
    }
    if rng.percent(30) {
        o.extend_from_slice(&[8, 10]);
        o.extend_from_slice(&rng.bytes(8));
    }
    o
}

/// Random IP options: record route, timestamp, or NOPs.
fn ip_options(rng: &mut Rng) -> Vec<u8> {
    match rng.below(3) {
        0 => vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0],
        1 => vec![68, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        _ => vec![1, 1, 1, 1],
    }
}

/// The share of probes, in percent, that are IPv6 ([`Generator::probe6`]).
const IPV6_SHARE: u64 = 33;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_DEST: u8 = 60;

fn addr6(s: &str) -> Ipv6Addr {
    s.parse().unwrap_or(Ipv6Addr::UNSPECIFIED)
}

/// An IPv6 packet carrying `l4` (of `proto`) behind the extension headers
/// `ext` names, in order: 8 bytes each, a PadN option (hop-by-hop,
/// destination options) or a type 0 routing header with no segments left
/// (which a node processes as if it were absent, RFC 8200 4.4).
fn packet6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, id: u16, ext: &[u8], l4: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, kind) in ext.iter().enumerate() {
        let next = ext.get(i + 1).copied().unwrap_or(proto);
        if *kind == NEXTHDR_ROUTING {
            body.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 0]);
        } else {
            body.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        }
    }
    body.extend_from_slice(l4);
    Ip6::new(src, dst, ext.first().copied().unwrap_or(proto), id).packet(&body)
}

fn describe_ext(ext: &[u8]) -> String {
    if ext.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = ext
        .iter()
        .map(|k| match *k {
            NEXTHDR_HOP => "hop-by-hop",
            NEXTHDR_ROUTING => "routing",
            _ => "dest-opts",
        })
        .collect();
    format!(" behind {}", names.join(","))
}

/// `l4` (of `proto`) from `src` to `dst` in IPv6 fragments carrying at
/// most `chunk` bytes each (rounded down to a multiple of 8), all with
/// identification `id`.
fn fragment6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    proto: u8,
    id: u16,
    l4: &[u8],
    chunk: usize,
) -> Vec<Vec<u8>> {
    let chunk = (chunk / 8).max(1) * 8;
    let mut fragments = Vec::new();
    let mut offset = 0;
    while offset < l4.len() {
        let end = (offset + chunk).min(l4.len());
        let mut ip = Ip6::new(src, dst, proto, id);
        ip.frag = Some(((offset / 8) as u16, end < l4.len()));
        fragments.push(ip.packet(&l4[offset..end]));
        offset = end;
    }
    fragments
}

/// Where the L4 header of an IPv6 packet starts, past its extension
/// headers, and its protocol; None for a fragment after the first.
fn l4_of6(packet: &[u8]) -> Option<(u8, usize)> {
    let mut proto = *packet.get(6)?;
    let mut at = 40;
    for _ in 0..8 {
        match proto {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let len = (usize::from(*packet.get(at + 1)?) + 1) * 8;
                proto = *packet.get(at)?;
                at += len;
            }
            packet::NEXTHDR_FRAGMENT => {
                let field = u16::from_be_bytes([*packet.get(at + 2)?, *packet.get(at + 3)?]);
                if field >> 3 != 0 {
                    return None;
                }
                proto = *packet.get(at)?;
                at += 8;
            }
            _ => return Some((proto, at)),
        }
    }
    None
}

struct Generator {
    rng: Rng,
    /// Red's probes that open a flow to outside: (id, proto).
    openers: Vec<(u16, u8)>,
    /// The same for IPv6 (red6 to outside6).
    openers6: Vec<(u16, u8)>,
    /// Source ports red's probes used, for reuse.
    red_ports: Vec<u16>,
    outside_ports: Vec<u16>,
}

impl Generator {
    /// How many of the last openers were sent within LIVE_FLOW_PROBES
    /// probes before probe `n`.
    fn recent_openers(&self, openers: &[(u16, u8)], n: usize) -> usize {
        let since = probe_id(n.saturating_sub(LIVE_FLOW_PROBES));
        openers
            .iter()
            .rev()
            .take_while(|(id, _)| *id >= since)
            .count()
    }

    fn sport(&mut self, reuse_from_outside: bool) -> u16 {
        let pool = if reuse_from_outside {
            &self.outside_ports
        } else {
            &self.red_ports
        };
        if !pool.is_empty() && self.rng.percent(35) {
            let i = self.rng.below(pool.len() as u64) as usize;
            return pool[i];
        }
        // Below the classed range: a fixed port is compared as is.
        let port = self.rng.range(1024, observe::CLASSED_PORTS - 1);
        if reuse_from_outside {
            self.outside_ports.push(port);
        } else {
            self.red_ports.push(port);
        }
        port
    }

    fn probe(&mut self, n: usize) -> Probe {
        if self.rng.percent(IPV6_SHARE) {
            return self.probe6(n);
        }
        let id = probe_id(n);
        let (red, blue, out, up) = (addr(RED), addr(BLUE), addr(OUTSIDE), addr(UPLINK));
        let roll = self.rng.below(100);
        let mut ip_opts = None;
        if self.rng.percent(8) {
            ip_opts = Some(ip_options(&mut self.rng));
        }
        let with = |mut ip: Ip, opts: &Option<Vec<u8>>| {
            if let Some(o) = opts {
                ip.options = o.clone();
            }
            ip
        };
        match roll {
            // Masqueraded UDP.
            0..=14 => {
                let sport = self.sport(false);
                let any = self.rng.range(1, 32767);
                let dport = self.rng.pick(&[9000, 9000, 9999, 53, any]);
                let len = self.rng.below(300) as usize;
                let payload = self.rng.bytes(len);
                self.openers.push((id, PROTO_UDP));
                Probe {
                    n,
                    class: "masquerade udp",
                    what: format!("red udp :{sport} > outside:{dport} len={len}"),
                    from: "red",
                    to: Mac::Gateway,
                    body: Body::Packets(vec![
                        with(Ip::new(red, out, PROTO_UDP, id), &ip_opts)
                            .packet(&packet::udp(red, out, sport, dport, &payload)),
                    ]),
                }
            }
            // Masqueraded TCP, every flag combination.
            15..=34 => {
                let sport = self.sport(false);
                let dport = self.rng.pick(&[9100, 9100, 9101]);
                let flags = if self.rng.percent(30) {
                    packet::TCP_SYN
                } else {
                    self.rng.below(256) as u8
                };
                let mut tcp = Tcp::new(sport, dport, flags);
                tcp.seq = self.rng.next_u64() as u32;
                tcp.ack = self.rng.next_u64() as u32;
                tcp.options = tcp_options(&mut self.rng);
                let len = if self.rng.percent(30) {
                    self.rng.below(200) as usize
                } else {
                    0
                };
                let payload = self.rng.bytes(len);
                if flags & packet::TCP_SYN != 0 {
                    self.openers.push((id, PROTO_TCP));
                }
                Probe {
                    n,
                    class: "masquerade tcp flags",
                    what: format!(
                        "red tcp :{sport} > outside:{dport} flags={flags:#04x} len={len}"
                    ),
                    from: "red",
                    to: Mac::Gateway,
                    body: Body::Packets(vec![
                        with(Ip::new(red, out, PROTO_TCP, id), &ip_opts)
                            .packet(&tcp.segment(red, out, &payload)),
                    ]),
                }
            }
            // Ping through masquerade.
            35..=39 => {
                let ident = self.rng.range(1, 65535);
                Probe {
                    n,
                    class: "masquerade icmp echo",
                    what: format!("red echo id={ident}"),
                    from: "red",
                    to: Mac::Gateway,
                    body: Body::Packets(vec![
                        with(Ip::new(red, out, PROTO_ICMP, id), &ip_opts).packet(
                            &packet::icmp_echo(
                                packet::ICMP_ECHO_REQUEST,
                                ident,
                                1,
                                &self.rng.bytes(24),
                            ),
                        ),
                    ]),
                }
            }
            // Fragments, both ways.
            40..=51 => {
                let inbound = self.rng.percent(40);
                let len = self.rng.range(100, 3000) as usize;
                let payload = self.rng.bytes(len);
                let (src, dst, sport, dport) = if inbound {
                    (out, up, self.sport(true), 5353)
                } else {
                    (red, out, self.sport(false), 9000)
                };
                let whole = Ip::new(src, dst, PROTO_UDP, id)
                    .packet(&packet::udp(src, dst, sport, dport, &payload));
                let chunk = self.rng.range(8, 1400) as usize;
                let mut frags = packet::fragment(&whole, chunk);
                let order = self.rng.pick(&[
                    "in order",
                    "reversed",
                    "shuffled",
                    "duplicated",
                    "incomplete",
                ]);
                match order {
                    "reversed" => frags.reverse(),
                    "shuffled" => {
                        for i in (1..frags.len()).rev() {
                            let j = self.rng.below(i as u64 + 1) as usize;
                            frags.swap(i, j);
                        }
                    }
                    "duplicated" => {
                        let i = self.rng.below(frags.len() as u64) as usize;
                        let copy = frags[i].clone();
                        frags.push(copy);
                    }
                    "incomplete" if frags.len() > 1 => {
                        let i = self.rng.below(frags.len() as u64) as usize;
                        frags.remove(i);
                    }
                    _ => {}
                }
                if !inbound {
                    self.openers.push((id, PROTO_UDP));
                }
                Probe {
                    n,
                    class: if inbound {
                        "fragments to a published port"
                    } else {
                        "fragments through masquerade"
                    },
                    what: format!(
                        "{} udp len={len} in {} fragments of {chunk}, {order}",
                        if inbound {
                            "outside > uplink:5353"
                        } else {
                            "red > outside:9000"
                        },
                        frags.len()
                    ),
                    from: if inbound { "outside" } else { "red" },
                    to: if inbound { Mac::Uplink } else { Mac::Gateway },
                    body: Body::Packets(frags),
                }
            }
            // Malformed L4 from red.
            52..=59 => {
                let proto = self.rng.pick(&[PROTO_TCP, PROTO_UDP, PROTO_ICMP]);
                let sport = self.sport(false);
                let full = match proto {
                    PROTO_TCP => {
                        let mut t = Tcp::new(sport, 9100, self.rng.below(256) as u8);
                        if self.rng.percent(50) {
                            t.data_offset = Some(self.rng.pick(&[0, 1, 4, 15]));
                        }
                        t.segment(red, out, b"malformed")
                    }
                    PROTO_UDP => packet::udp(red, out, sport, 9000, b"malformed"),
                    _ => packet::icmp_echo(packet::ICMP_ECHO_REQUEST, sport, 1, b"malformed"),
                };
                let cut = if self.rng.percent(60) {
                    self.rng.below(full.len().min(20) as u64) as usize
                } else {
                    full.len()
                };
                let mut l4 = full[..cut].to_vec();
                let bad_sum = cut == full.len();
                if bad_sum && l4.len() > 8 {
                    // Corrupt the checksum instead.
                    let at = match proto {
                        PROTO_TCP => 16,
                        PROTO_UDP => 6,
                        _ => 2,
                    };
                    l4[at] ^= 0x5a;
                }
                Probe {
                    n,
                    class: "malformed l4 from red",
                    what: format!(
                        "red proto {proto} l4 cut to {cut} of {} bytes{}",
                        full.len(),
                        if bad_sum { ", checksum broken" } else { "" }
                    ),
                    from: "red",
                    to: Mac::Gateway,
                    body: Body::Packets(vec![Ip::new(red, out, proto, id).packet(&l4)]),
                }
            }
            // To the published ports (and others) from outside.
            60..=71 => {
                let sport = self.sport(true);
                let (proto, dport) = self.rng.pick(&[
                    (PROTO_TCP, 8080),
                    (PROTO_TCP, 8080),
                    (PROTO_UDP, 5353),
                    (PROTO_TCP, 8081),
                    (PROTO_UDP, 9999),
                ]);
                let mut flags = None;
                let body = if proto == PROTO_TCP {
                    let f = if self.rng.percent(40) {
                        packet::TCP_SYN
                    } else {
                        self.rng.below(256) as u8
                    };
                    flags = Some(f).filter(|f| *f != packet::TCP_SYN);
                    let mut t = Tcp::new(sport, dport, f);
                    t.seq = self.rng.next_u64() as u32;
                    t.options = tcp_options(&mut self.rng);
                    t.segment(out, up, b"")
                } else {
                    packet::udp(out, up, sport, dport, &self.rng.bytes(40))
                };
                let mut ip = with(Ip::new(out, up, proto, id), &ip_opts);
                let expiring = self.rng.percent(10);
                if expiring {
                    ip.ttl = 1;
                }
                Probe {
                    n,
                    class: match (expiring, flags) {
                        (true, _) => "ttl expiring at the host",
                        (false, Some(_)) => "published ports tcp flags",
                        (false, None) => "published ports from outside",
                    },
                    what: format!(
                        "outside proto {proto} :{sport} > uplink:{dport}{}{}",
                        flags.map_or(String::new(), |f| format!(" flags={f:#04x}")),
                        if expiring { " ttl=1" } else { "" }
                    ),
                    from: "outside",
                    to: Mac::Uplink,
                    body: Body::Packets(vec![ip.packet(&body)]),
                }
            }
            // Spoofed sources.
            72..=79 => {
                let inbound = self.rng.percent(60);
                let (src, dst) = if inbound {
                    (
                        self.rng
                            .pick(&[red, blue, addr("192.168.15.5"), addr("192.168.15.77")]),
                        up,
                    )
                } else {
                    (self.rng.pick(&[blue, addr("10.9.8.7"), up, out]), out)
                };
                let sport = self.sport(inbound);
                let (proto, dport) = self.rng.pick(&[
                    (PROTO_TCP, 8080),
                    (PROTO_UDP, 5353),
                    (PROTO_TCP, 9100),
                    (PROTO_UDP, 9000),
                ]);
                let l4 = if proto == PROTO_TCP {
                    Tcp::new(sport, dport, packet::TCP_SYN).segment(src, dst, b"")
                } else {
                    packet::udp(src, dst, sport, dport, b"spoofed")
                };
                Probe {
                    n,
                    class: if inbound {
                        "spoofed lab source from outside"
                    } else {
                        "foreign source from red"
                    },
                    what: format!(
                        "{} proto {proto} {src}:{sport} > {dst}:{dport}",
                        if inbound { "outside" } else { "red" }
                    ),
                    from: if inbound { "outside" } else { "red" },
                    to: if inbound { Mac::Uplink } else { Mac::Gateway },
                    body: Body::Packets(vec![Ip::new(src, dst, proto, id).packet(&l4)]),
                }
            }
            // ICMP errors about live flows (recent ones: see LIVE_FLOW_PROBES).
            80..=89 if self.recent_openers(&self.openers, n) > 0 => {
                let recent = self.recent_openers(&self.openers, n);
                let i = self.openers.len() - 1 - self.rng.below(recent as u64) as usize;
                let (opener, _) = self.openers[i];
                let (kind, code) = self.rng.pick(&[(3, 3), (3, 1), (3, 4), (11, 0), (12, 0)]);
                let broken = self.rng.percent(20);
                Probe {
                    n,
                    class: "icmp errors about live flows",
                    what: format!(
                        "outside icmp {kind}/{code} about probe id {opener:#06x}{}",
                        if broken {
                            ", quoted checksum broken"
                        } else {
                            ""
                        }
                    ),
                    from: "outside",
                    to: Mac::Uplink,
                    body: Body::IcmpErrorAbout {
                        opener,
                        kind,
                        code,
                        break_quoted_checksum: broken,
                        id,
                        v6: false,
                    },
                }
            }
            // Broadcast and multicast.
            90..=93 => {
                let (dst, to) = self.rng.pick(&[
                    (addr("255.255.255.255"), Mac::Broadcast),
                    (addr("192.168.15.255"), Mac::Broadcast),
                    (addr("224.0.0.251"), Mac::Multicast(addr("224.0.0.251"))),
                    (addr("239.7.7.7"), Mac::Multicast(addr("239.7.7.7"))),
                ]);
                let sport = self.sport(false);
                Probe {
                    n,
                    class: "broadcast and multicast",
                    what: format!("red udp :{sport} > {dst}:5353"),
                    from: "red",
                    to,
                    body: Body::Packets(vec![
                        Ip::new(red, dst, PROTO_UDP, id)
                            .packet(&packet::udp(red, dst, sport, 5353, b"bcast")),
                    ]),
                }
            }
            // Inside the lab: red to blue.
            _ => {
                let sport = self.sport(false);
                let (proto, dport) =
                    self.rng
                        .pick(&[(PROTO_TCP, 80), (PROTO_UDP, 53), (PROTO_TCP, 81)]);
                let l4 = if proto == PROTO_TCP {
                    Tcp::new(sport, dport, self.rng.below(256) as u8).segment(red, blue, b"")
                } else {
                    packet::udp(red, blue, sport, dport, b"inside")
                };
                Probe {
                    n,
                    class: "red to blue",
                    what: format!("red proto {proto} :{sport} > blue:{dport}"),
                    from: "red",
                    to: Mac::Gateway,
                    body: Body::Packets(vec![
                        with(Ip::new(red, blue, proto, id), &ip_opts).packet(&l4),
                    ]),
                }
            }
        }
    }

    /// An IPv6 probe (about a third of them): the IPv4 classes' IPv6
    /// counterparts on the dual-stack lab, and IPv6's own (extension
    /// headers, hop limit, a payload length that lies).
    fn probe6(&mut self, n: usize) -> Probe {
        let id = probe_id(n);
        let (red, blue, out, up) = (addr6(RED6), addr6(BLUE6), addr6(OUTSIDE6), addr6(UPLINK6));
        let roll = self.rng.below(100);
        match roll {
            // Masqueraded UDP, possibly behind extension headers.
            0..=14 => {
                let sport = self.sport(false);
                let any = self.rng.range(1, 32767);
                let dport = self.rng.pick(&[9000, 9000, 9999, 53, any]);
                let len = self.rng.below(300) as usize;
                let payload = self.rng.bytes(len);
                let ext = self.ext_headers();
                self.openers6.push((id, PROTO_UDP));
                Probe {
                    n,
                    class: if ext.is_empty() {
                        "ipv6 masquerade udp"
                    } else {
                        "ipv6 extension headers"
                    },
                    what: format!(
                        "red6 udp :{sport} > outside6:{dport} len={len}{}",
                        describe_ext(&ext)
                    ),
                    from: "red",
                    to: Mac::Gateway,
                    body: Body::Packets(vec![packet6(
                        red,
                        out,
                        PROTO_UDP,
                        id,
                        &ext,
                        &packet::udp(red, out, sport, dport, &payload),
                    )]),
                }
            }
            // Masqueraded TCP, every flag combination.
            15..=32 => {
                let sport = self.sport(false);
                let dport = self.rng.pick(&[9100, 9100, 9101]);
                let flags = if self.rng.percent(30) {
                    packet::TCP_SYN
                } else {
                    self.rng.below(256) as u8
                };
                let mut tcp = Tcp::new(sport, dport, flags);
                tcp.seq = self.rng.next_u64() as u32;
                tcp.ack = self.rng.next_u64() as u32;
                tcp.options = tcp_options(&mut self.rng);
                let len = if self.rng.percent(30) {
                    self.rng.below(200) as usize
                } else {
                    0
                };
                let payload = self.rng.bytes(len);
                let ext = self.ext_headers();
                if flags & packet::TCP_SYN != 0 {
                    self.openers6.push((id, PROTO_TCP));
                }
                Probe {
                    n,
                    class: "ipv6 masquerade tcp flags",
                    what: format!(
                        "red6 tcp :{sport} > outside6:{dport} flags={flags:#04x} len={len}{}",
                        describe_ext(&ext)
                    ),
                    from: "red",
                    to: Mac::Gateway,
                    body: Body::Packets(vec![packet6(
                        red,
                        out,
                        PROTO_TCP,
                        id,
                        &ext,
                        &tcp.segment(red, out, &payload),
                    )]),
                }
            }
            // Ping through masquerade.
            33..=37 => {
                let ident = self.rng.range(1, 65535);
                let payload = self.rng.bytes(24);
                Probe {
                    n,
                    class: "ipv6 masquerade icmp echo",
                    what: format!("red6 echo id={ident}"),
                    from: "red",
                    to: Mac::Gateway,
                    body: Body::Packets(vec![Ip6::new(red, out, PROTO_ICMPV6, id).packet(
                        &packet::icmp6_echo(
                            red,
                            out,
                            packet::ICMPV6_ECHO_REQUEST,
                            ident,
                            1,
                            &payload,
                        ),
                    )]),
                }
            }
            // Fragments, both ways.
            38..=47 => {
                let inbound = self.rng.percent(40);
                let len = self.rng.range(100, 3000) as usize;
                let payload = self.rng.bytes(len);
                let (src, dst, sport, dport) = if inbound {
                    (out, up, self.sport(true), 5353)
                } else {
                    (red, out, self.sport(false), 9000)
                };
                let l4 = packet::udp(src, dst, sport, dport, &payload);
                let chunk = self.rng.range(8, 1232) as usize;
                let mut frags = fragment6(src, dst, PROTO_UDP, id, &l4, chunk);
                let order = self.rng.pick(&[
                    "in order",
                    "reversed",
                    "shuffled",
                    "duplicated",
                    "incomplete",
                ]);
                match order {
                    "reversed" => frags.reverse(),
                    "shuffled" => {
                        for i in (1..frags.len()).rev() {
                            let j = self.rng.below(i as u64 + 1) as usize;
                            frags.swap(i, j);
                        }
                    }
                    "duplicated" => {
                        let i = self.rng.below(frags.len() as u64) as usize;
                        let copy = frags[i].clone();
                        frags.push(copy);
                    }
                    "incomplete" if frags.len() > 1 => {
                        let i = self.rng.below(frags.len() as u64) as usize;
                        frags.remove(i);
                    }
                    _ => {}
                }
                if !inbound {
                    self.openers6.push((id, PROTO_UDP));
                }
                Probe {
                    n,
                    class: if inbound {
                        "ipv6 fragments to a published port"
                    } else {
                        "ipv6 fragments through masquerade"
                    },
                    what: format!(
                        "{} udp len={len} in {} fragments of {chunk}, {order}",
                        if inbound {
                            "outside6 > [uplink6]:5353"
                        } else {
                            "red6 > outside6:9000"
                        },
                        frags.len()
                    ),
                    from: if inbound { "outside" } else { "red" },
                    to: if inbound { Mac::Uplink } else { Mac::Gateway },
                    body: Body::Packets(frags),
                }
            }
            // Malformed IPv6 from red: a payload length that lies, a cut
            // extension header or L4 header.
            48..=54 => {
                let sport = self.sport(false);
                let proto = self.rng.pick(&[PROTO_TCP, PROTO_UDP]);
                let l4 = if proto == PROTO_TCP {
                    Tcp::new(sport, 9100, packet::TCP_SYN).segment(red, out, b"malformed")
                } else {
                    packet::udp(red, out, sport, 9000, b"malformed")
                };
                let mut p = Ip6::new(red, out, proto, id).packet(&l4);
                let how = self.rng.pick(&[
                    "payload length too long",
                    "payload length too short",
                    "l4 header cut",
                    "extension header cut",
                ]);
                match how {
                    "payload length too long" => {
                        let more = self.rng.range(1, 64);
                        let len = u16::from_be_bytes([p[4], p[5]]) + more;
                        p[4..6].copy_from_slice(&len.to_be_bytes());
                    }
                    "payload length too short" => {
                        let len = self.rng.below(p.len() as u64 - 40) as u16;
                        p[4..6].copy_from_slice(&len.to_be_bytes());
                    }
                    "l4 header cut" => {
                        let cut = self.rng.below(8) as usize;
                        p = Ip6::new(red, out, proto, id).packet(&l4[..cut]);
                    }
                    _ => {
                        // A destination options header promising 16 bytes,
                        // 4 of them present.
                        p = Ip6::new(red, out, 60, id).packet(&[proto, 1, 1, 2]);
                    }
                }
                Probe {
                    n,
                    class: "ipv6 malformed from red",
                    what: format!("red6 proto {proto} :{sport} > outside6, {how}"),
                    from: "red",
                    to: Mac::Gateway,
                    body: Body::Packets(vec![p]),
                }
            }
            // To the published ports (and others) from outside.
            55..=67 => {
                let sport = self.sport(true);
                let (proto, dport) = self.rng.pick(&[
                    (PROTO_TCP, 8080),
                    (PROTO_TCP, 8080),
                    (PROTO_UDP, 5353),
                    (PROTO_TCP, 8081),
                    (PROTO_UDP, 9999),
                ]);
                let mut flags = None;
                let body = if proto == PROTO_TCP {
                    let f = if self.rng.percent(40) {
                        packet::TCP_SYN
                    } else {
                        self.rng.below(256) as u8
                    };
                    flags = Some(f).filter(|f| *f != packet::TCP_SYN);
                    let mut t = Tcp::new(sport, dport, f);
                    t.seq = self.rng.next_u64() as u32;
                    t.options = tcp_options(&mut self.rng);
                    t.segment(out, up, b"")
                } else {
                    packet::udp(out, up, sport, dport, &self.rng.bytes(40))
                };
                let mut ip = Ip6::new(out, up, proto, id);
                let expiring = self.rng.percent(10);
                if expiring {
                    ip.hop_limit = 1;
                }
                Probe {
                    n,
                    class: match (expiring, flags) {
                        (true, _) => "ipv6 hop limit expiring at the host",
                        (false, Some(_)) => "ipv6 published ports tcp flags",
                        (false, None) => "ipv6 published ports from outside",
                    },
                    what: format!(
                        "outside6 proto {proto} :{sport} > [uplink6]:{dport}{}{}",
                        flags.map_or(String::new(), |f| format!(" flags={f:#04x}")),
                        if expiring { " hop_limit=1" } else { "" }
                    ),
                    from: "outside",
                    to: Mac::Uplink,
                    body: Body::Packets(vec![ip.packet(&body)]),
                }
            }
            // Spoofed sources.
            68..=76 => {
                let inbound = self.rng.percent(60);
                let (src, dst) = if inbound {
                    (
                        self.rng
                            .pick(&[red, blue, addr6(GATEWAY6), addr6("fd00:15::77")]),
                        up,
                    )
                } else {
                    (self.rng.pick(&[blue, addr6("fd00:99::7"), up, out]), out)
                };
                let sport = self.sport(inbound);
                let (proto, dport) = self.rng.pick(&[
                    (PROTO_TCP, 8080),
                    (PROTO_UDP, 5353),
                    (PROTO_TCP, 9100),
                    (PROTO_UDP, 9000),
                ]);
                let l4 = if proto == PROTO_TCP {
                    Tcp::new(sport, dport, packet::TCP_SYN).segment(src, dst, b"")
                } else {
                    packet::udp(src, dst, sport, dport, b"spoofed")
                };
                Probe {
                    n,
                    class: if inbound {
                        "ipv6 spoofed lab source from outside"
                    } else {
                        "ipv6 foreign source from red"
                    },
                    what: format!(
                        "{} proto {proto} [{src}]:{sport} > [{dst}]:{dport}",
                        if inbound { "outside6" } else { "red6" }
                    ),
                    from: if inbound { "outside" } else { "red" },
                    to: if inbound { Mac::Uplink } else { Mac::Gateway },
                    body: Body::Packets(vec![Ip6::new(src, dst, proto, id).packet(&l4)]),
                }
            }
            // ICMPv6 errors about live flows (recent ones: see
            // LIVE_FLOW_PROBES).
            77..=87 if self.recent_openers(&self.openers6, n) > 0 => {
                let recent = self.recent_openers(&self.openers6, n);
                let i = self.openers6.len() - 1 - self.rng.below(recent as u64) as usize;
                let (opener, _) = self.openers6[i];
                // Port and admin unreachable, packet too big, hop limit
                // exceeded, parameter problem.
                let (kind, code) = self.rng.pick(&[(1, 4), (1, 1), (2, 0), (3, 0), (4, 0)]);
                let broken = self.rng.percent(20);
                Probe {
                    n,
                    class: "ipv6 icmp errors about live flows",
                    what: format!(
                        "outside6 icmpv6 {kind}/{code} about probe id {opener:#06x}{}",
                        if broken {
                            ", quoted checksum broken"
                        } else {
                            ""
                        }
                    ),
                    from: "outside",
                    to: Mac::Uplink,
                    body: Body::IcmpErrorAbout {
                        opener,
                        kind,
                        code,
                        break_quoted_checksum: broken,
                        id,
                        v6: true,
                    },
                }
            }
            // Multicast (not neighbour discovery or MLD).
            88..=91 => {
                let dst = self.rng.pick(&[
                    addr6("ff02::1"),
                    addr6("ff02::fb"),
                    addr6("ff05::7"),
                    addr6("ff0e::7:7"),
                ]);
                let sport = self.sport(false);
                Probe {
                    n,
                    class: "ipv6 multicast",
                    what: format!("red6 udp :{sport} > [{dst}]:5353"),
                    from: "red",
                    to: Mac::Multicast6(dst),
                    body: Body::Packets(vec![
                        Ip6::new(red, dst, PROTO_UDP, id)
                            .packet(&packet::udp(red, dst, sport, 5353, b"mcast")),
                    ]),
                }
            }
            // Inside the lab: red to blue.
            _ => {
                let sport = self.sport(false);
                let (proto, dport) =
                    self.rng
                        .pick(&[(PROTO_TCP, 80), (PROTO_UDP, 53), (PROTO_TCP, 81)]);
                let l4 = if proto == PROTO_TCP {
                    Tcp::new(sport, dport, self.rng.below(256) as u8).segment(red, blue, b"")
                } else {
                    packet::udp(red, blue, sport, dport, b"inside")
                };
                let ext = self.ext_headers();
                Probe {
                    n,
                    class: "ipv6 red to blue",
                    what: format!(
                        "red6 proto {proto} :{sport} > blue6:{dport}{}",
                        describe_ext(&ext)
                    ),
                    from: "red",
                    to: Mac::Gateway,
                    body: Body::Packets(vec![packet6(red, blue, proto, id, &ext, &l4)]),
                }
            }
        }
    }

    /// Extension headers before L4 on some probes: hop-by-hop options,
    /// destination options, a routing header with no segments left.
    fn ext_headers(&mut self) -> Vec<u8> {
        if !self.rng.percent(25) {
            return Vec::new();
        }
        let mut kinds = vec![self.rng.pick(&[NEXTHDR_HOP, NEXTHDR_DEST, NEXTHDR_ROUTING])];
        if self.rng.percent(30) {
            kinds.push(NEXTHDR_DEST);
        }
        kinds
    }
}

/// The first `count` probes of `seed`.
pub fn generate(seed: u64, count: usize) -> Vec<Probe> {
    let mut generator = Generator {
        rng: Rng::new(seed),
        openers: Vec::new(),
        openers6: Vec::new(),
        red_ports: Vec::new(),
        outside_ports: Vec::new(),
    };
    (0..count).map(|n| generator.probe(n)).collect()
}

/// The frames of `probe` on this lab; None when it quotes a flow that never
/// reached outside here.
fn resolve(probe: &Probe, lab: &ConfLab) -> Option<Vec<Vec<u8>>> {
    match &probe.body {
        Body::Packets(packets) => Some(packets.clone()),
        Body::IcmpErrorAbout {
            opener,
            kind,
            code,
            break_quoted_checksum,
            id,
            v6,
        } => {
            let (proto, sport, dport) = *lab.at_outside.get(opener)?;
            if *v6 {
                return Some(icmp6_error_about(
                    (proto, sport, dport),
                    *opener,
                    (*kind, *code),
                    *break_quoted_checksum,
                    *id,
                ));
            }
            let (up, out) = (addr(UPLINK), addr(OUTSIDE));
            let mut l4 = if proto == PROTO_TCP {
                Tcp::new(sport, dport, packet::TCP_SYN).segment(up, out, b"")
            } else {
                packet::udp(up, out, sport, dport, b"quoted")
            };
            if *break_quoted_checksum {
                let at = if proto == PROTO_TCP { 16 } else { 6 };
                l4[at] ^= 0xff;
            }
            let mut quoted_ip = Ip::new(up, out, proto, *opener);
            quoted_ip.ttl = packet::CRAFTED_TTL - 1;
            let quoted = quoted_ip.packet(&l4);
            let mut rest = [0_u8; 4];
            if *kind == 3 && *code == 4 {
                rest[2..4].copy_from_slice(&1280_u16.to_be_bytes());
            }
            Some(vec![
                Ip::new(out, up, PROTO_ICMP, *id)
                    .packet(&packet::icmp(*kind, *code, rest, &quoted)),
            ])
        }
    }
}

/// From outside6 to the uplink: ICMPv6 error `kind`/`code` about the flow
/// (proto, sport, dport) of probe id `opener` as outside6 received it
/// (from the uplink's address, hop limit one lower).
fn icmp6_error_about(
    (proto, sport, dport): (u8, u16, u16),
    opener: u16,
    (kind, code): (u8, u8),
    break_quoted_checksum: bool,
    id: u16,
) -> Vec<Vec<u8>> {
    let (up, out) = (addr6(UPLINK6), addr6(OUTSIDE6));
    let mut l4 = if proto == PROTO_TCP {
        Tcp::new(sport, dport, packet::TCP_SYN).segment(up, out, b"")
    } else {
        packet::udp(up, out, sport, dport, b"quoted")
    };
    if break_quoted_checksum {
        let at = if proto == PROTO_TCP { 16 } else { 6 };
        l4[at] ^= 0xff;
    }
    let mut quoted_ip = Ip6::new(up, out, proto, opener);
    quoted_ip.hop_limit = packet::CRAFTED_TTL - 1;
    let quoted = quoted_ip.packet(&l4);
    // Packet too big carries the MTU; parameter problem, the pointer (here
    // the next header field).
    let rest = match kind {
        2 => 1280_u32.to_be_bytes(),
        4 => 6_u32.to_be_bytes(),
        _ => [0; 4],
    };
    vec![
        Ip6::new(out, up, PROTO_ICMPV6, id)
            .packet(&packet::icmp6(out, up, kind, code, rest, &quoted)),
    ]
}

/// The fuzz lab's published ports and their backends' at blue: the default
/// lab's `8080:80/tcp` and the `5353:53/udp` [`fuzz_lab`] adds.
const PUBLISHED: [(u16, u16); 2] = [(8080, 80), (5353, 53)];

/// A lab ready for probes: `netlab up --dual-stack`'s lab (both subnets
/// masqueraded, the published ports in both families), servers on the
/// ports the probes aim at (IPv4 and IPv6 apart), the published UDP port,
/// neighbours resolved in both families.
fn fuzz_lab(datapath: &str) -> Result<(ConfLab, Vec<crate::Background>)> {
    let lab = ConfLab::up_with(datapath, Some(netlab::topology::DEFAULT_LAB_DUAL_STACK))?;
    lab.sb
        .netlab_ok(&["publish", "add", "blue", "5353:53/udp"])?;
    let servers = vec![
        lab.server("outside", scripts::UDP_SERVER, &["9000"])?,
        lab.server("outside", scripts::TCP_SERVER, &["9100"])?,
        lab.server("blue", scripts::TCP_SERVER, &["80"])?,
        lab.server("blue", scripts::UDP_SERVER, &["53"])?,
        lab.server("outside", scripts::UDP_SERVER, &["9000", "-", OUTSIDE6])?,
        lab.server("outside", scripts::TCP_SERVER, &["9100", OUTSIDE6])?,
        lab.server("blue", scripts::TCP_SERVER, &["80", BLUE6])?,
        lab.server("blue", scripts::UDP_SERVER, &["53", "-", BLUE6])?,
    ];
    for (netns, to) in [
        ("red", OUTSIDE),
        ("blue", OUTSIDE),
        ("red", BLUE),
        ("outside", UPLINK),
        ("red", OUTSIDE6),
        ("blue", OUTSIDE6),
        ("red", BLUE6),
        ("outside", UPLINK6),
    ] {
        let family = if to.contains(':') { "-6" } else { "-4" };
        lab.sb.run(&[
            "ip", "netns", "exec", netns, "ping", family, "-c", "1", "-W", "1", to,
        ])?;
    }
    Ok((lab, servers))
}

/// What one datapath did with the probes: a record with one step per batch.
pub fn run_datapath(datapath: &str, probes: &[Probe], budget: Budget) -> Result<Record> {
    let (mut lab, _servers) = fuzz_lab(datapath)?;
    lab.observe("warm-up")?;
    lab.record.seen.clear();
    let start = Instant::now();
    let macs = [
        ("gateway", lab.mac(None, "v-net-0")?),
        ("uplink", lab.mac(None, "nl-uplink")?),
    ];
    for (b, batch) in probes.chunks(budget.batch.max(1)).enumerate() {
        if start.elapsed() > Duration::from_secs(budget.seconds) {
            break;
        }
        for probe in batch {
            let mac = match probe.to {
                Mac::Gateway => macs[0].1.clone(),
                Mac::Uplink => macs[1].1.clone(),
                Mac::Broadcast => "ff:ff:ff:ff:ff:ff".to_owned(),
                Mac::Multicast(group) => {
                    let o = group.octets();
                    format!("01:00:5e:{:02x}:{:02x}:{:02x}", o[1] & 0x7f, o[2], o[3])
                }
                Mac::Multicast6(group) => {
                    let o = group.octets();
                    format!(
                        "33:33:{:02x}:{:02x}:{:02x}:{:02x}",
                        o[12], o[13], o[14], o[15]
                    )
                }
            };
            match resolve(probe, &lab) {
                Some(frames) => lab.send(probe.from, &mac, &frames)?,
                None => lab.note(
                    &format!("probe {}", probe.n),
                    "quotes a flow that never reached outside",
                ),
            }
        }
        lab.observe(&batch_name(b))?;
    }
    Ok(lab.record)
}

fn batch_name(b: usize) -> String {
    format!("batch {b:05}")
}

/// The class of a line about a flow a probe of fragments or malformed L4
/// opened on one datapath only (see `label_class` in [`run_lanes`]).
const REUSED_FLOW: &str = "a flow only one side opened";

/// Why random TCP flags on a reused flow differ from netfilter, through
/// masquerade and to a published port alike.
const NO_TCP_WINDOWS: &str = "nf_conntrack tracks TCP sequence windows: it finds some \
     segments of a closed or reused flow (random flags, an old sequence number) INVALID and \
     leaves them untranslated (the host answers them itself) or unanswered, and resolves a \
     new SYN on a TIME_WAIT flow by its window; netlab, as Cilium, tracks TCP states, not \
     windows, so it translates such segments (and the receiver answers them with a RST) and \
     reopens the flow with the port it had";

/// A kind of fuzz difference kept on purpose: a differing line of a probe
/// of `class` (or "kernel responses"), at a place (`batch N @ POINT`)
/// containing `place_contains`, that contains `line_contains`, on the
/// `side` given ("expected": the reference had it and the datapath did not;
/// "got": the other way round; "": either).
#[derive(Clone, Copy, Debug)]
pub struct FuzzIntended {
    pub class: &'static str,
    pub place_contains: &'static str,
    pub line_contains: &'static str,
    pub side: &'static str,
    pub reason: &'static str,
}

/// Fuzz differences kept on purpose, with the reason; the CI run and the
/// long run (`cargo xtask fuzz`) both use this list (with [`KNOWN_GAPS`],
/// see [`accepted`]). Every other difference found is a bug to fix.
pub const INTENDED: &[FuzzIntended] = &[
    FuzzIntended {
        class: "broadcast and multicast",
        place_contains: "@ red",
        line_contains: "pkt=",
        side: "expected",
        reason: "the iptables datapath sets hairpin mode on the bridge ports, so the bridge floods \
                 red's broadcasts and multicasts back to red (as in the suite's \
                 broadcast_and_multicast case)",
    },
    FuzzIntended {
        class: "foreign source from red",
        place_contains: "",
        line_contains: "",
        side: "expected",
        reason: "the eBPF datapaths admit on each interface only the sources that can be there \
                 (spoofed_source, as rp_filter and Cilium's source check); the sandbox runs \
                 with rp_filter off, so netfilter forwards them",
    },
    FuzzIntended {
        class: "spoofed lab source from outside",
        place_contains: "",
        line_contains: "",
        side: "expected",
        reason: "a lab source arriving on the uplink is spoofed: the eBPF datapaths drop it \
                 (spoofed_source); netfilter, with rp_filter off, DNATs it or hands it to the \
                 host, so the lines are the probe at blue and what answers it (blue's reply, \
                 the host's RST to the spoofed lab address, which reaches the namespace it names)",
    },
    FuzzIntended {
        class: "fragments through masquerade",
        place_contains: "",
        line_contains: "",
        side: "",
        reason: "netfilter reassembles before NAT; a TC program cannot hold a fragment until \
                 its first arrives, so a datagram whose first fragment comes late is lost \
                 (frag_unknown, or untranslated_leak on the uplink), as in Cilium. The lines: \
                 the fragments at outside (netfilter sends the datagram whole or refragmented, \
                 eBPF the fragments it could translate, which outside cannot reassemble), and \
                 the consequences of a datagram that arrived on one datapath only: outside's \
                 echo at red (and its later fragments), red's port unreachable about that echo",
    },
    FuzzIntended {
        class: "fragments to a published port",
        place_contains: "",
        line_contains: "",
        side: "",
        reason: "as for fragments through masquerade: out-of-order fragments cannot be \
                 translated by a TC program. The lines: the fragments at blue, and what a \
                 datagram that reached blue on one datapath only draws: blue's answer at outside \
                 (and its later fragments), outside's port unreachable about it at blue",
    },
    FuzzIntended {
        class: "red to blue",
        place_contains: "@ red",
        line_contains: "type=5/1",
        side: "",
        reason: "ICMP host redirects (type 5) the host sends red about red-to-blue packets \
                 red addressed to the gateway: the kernel limits them per source with an \
                 exponential backoff (ip_rt_redirect_load << n, at most \
                 ip_rt_redirect_number, no sysctl lifts it), so which packet gets one depends \
                 on when the earlier ones went out (bridge and iptables route the same packets \
                 and still differ at the backoff's edge); and the redirect datapath hands \
                 lab-internal packets it can parse to the peer veth without the stack's \
                 forwarding, so only those it leaves to the stack (flags nf_conntrack finds \
                 invalid) can draw one. Redirects are not NAT: the packet itself reaches blue \
                 on every datapath",
    },
    FuzzIntended {
        class: "masquerade tcp flags",
        place_contains: "",
        line_contains: "",
        side: "",
        reason: NO_TCP_WINDOWS,
    },
    FuzzIntended {
        class: REUSED_FLOW,
        place_contains: "",
        line_contains: "",
        side: "",
        reason: "the flow of a datagram only one side passed (fragments only netfilter \
                 reassembled, a bad checksum only netlab translated) reused by a later probe \
                 with the same ports: the answers to it, and the port the later probe kept \
                 (netlab's existing flow) or got anew (netfilter's)",
    },
    FuzzIntended {
        class: "published ports tcp flags",
        place_contains: "",
        line_contains: "",
        side: "",
        reason: NO_TCP_WINDOWS,
    },
    FuzzIntended {
        class: "malformed l4 from red",
        place_contains: "",
        line_contains: "csum=BAD",
        side: "got",
        reason: "nf_conntrack verifies L4 checksums before NAT (nf_conntrack_checksum) and \
                 drops bad ones as INVALID; the eBPF NAT does not sum payloads, and its \
                 incremental update keeps a bad checksum bad, so the receiver drops it",
    },
    FuzzIntended {
        class: "ipv6 malformed from red",
        place_contains: "",
        line_contains: "csum=BAD",
        side: "got",
        reason: "a payload length shorter than the packet: the kernel trims the packet to it \
                 (ipv6_rcv) after the TC hook, so the segment's checksum no longer matches; \
                 nf_conntrack verifies L4 checksums before NAT66 and drops it as INVALID, the \
                 eBPF NAT66 (before the trim) translates it, its checksum kept bad, and the \
                 receiver drops it (as IPv4's bad L4 checksums)",
    },
    FuzzIntended {
        class: "ipv6 multicast",
        place_contains: "@ red",
        line_contains: "pkt=",
        side: "expected",
        reason: "as for IPv4's broadcast and multicast: the iptables datapath sets hairpin mode \
                 on the bridge ports, so the bridge floods red's IPv6 multicasts back to red",
    },
    FuzzIntended {
        class: "ipv6 spoofed lab source from outside",
        place_contains: "",
        line_contains: "",
        side: "expected",
        reason: "as for IPv4: a lab IPv6 source arriving on the uplink is spoofed and the eBPF \
                 datapaths drop it (spoofed_source); ip6tables DNATs it or hands it to the host, \
                 so the lines are the probe at blue and what answers it (blue's reply, the \
                 host's RST to the spoofed lab address, which reaches the namespace it names)",
    },
    FuzzIntended {
        class: "ipv6 fragments through masquerade",
        place_contains: "",
        line_contains: "",
        side: "",
        reason: "netfilter reassembles IPv6 fragments before NAT66 (nf_defrag_ipv6) and sends \
                 the datagram on whole or refragmented by its own cut, with an identification of \
                 its own; NAT66 in eBPF translates each fragment as its sender cut it (the first \
                 with its ports, the later ones by the ports FRAGMENTS6 remembered) and cannot \
                 hold one whose first fragment comes late (frag_unknown, or untranslated_leak \
                 on the uplink), as for IPv4. The lines: the datagram at outside as each side \
                 cut it, and what it draws (outside's echo at red, errors about it)",
    },
    FuzzIntended {
        class: "ipv6 fragments to a published port",
        place_contains: "",
        line_contains: "",
        side: "",
        reason: "as for fragments through masquerade: ip6tables reassembles them before its \
                 DNAT and sends them on as it cuts them, NAT66 as their sender did, and a late \
                 first fragment loses the datagram. The lines: the datagram at blue and what it \
                 draws",
    },
    FuzzIntended {
        class: "ipv6 masquerade tcp flags",
        place_contains: "",
        line_contains: "",
        side: "",
        reason: NO_TCP_WINDOWS,
    },
    FuzzIntended {
        class: "ipv6 published ports tcp flags",
        place_contains: "",
        line_contains: "",
        side: "",
        reason: NO_TCP_WINDOWS,
    },
];

/// Differences that are not by design: gaps the fuzzer found that are
/// known and not fixed yet (README, "Not done yet for IPv6"). Kept apart
/// from [`INTENDED`] so that they stay visible; [`accepted`] joins both
/// for the CI run and the long run, and the report names each as a gap.
///
/// Empty now: the one it held (ICMPv6 errors quoting a packet with
/// extension headers, which NAT66 left at the host) is fixed; the quoted
/// chain is walked as the frame's own.
pub const KNOWN_GAPS: &[FuzzIntended] = &[];

/// [`INTENDED`] and [`KNOWN_GAPS`]: the differences a run does not count
/// as findings.
pub fn accepted() -> Vec<FuzzIntended> {
    INTENDED.iter().chain(KNOWN_GAPS).copied().collect()
}

/// What a fuzz run found.
#[derive(Debug, Default)]
pub struct Summary {
    pub probes_tried: usize,
    pub frames_sent: usize,
    /// Per eBPF datapath: differing lines by probe class.
    pub by_class: BTreeMap<String, BTreeMap<&'static str, usize>>,
    /// Broken invariants, per datapath (iptables included).
    pub violations: BTreeMap<&'static str, Vec<String>>,
    /// Per eBPF datapath: differing lines kept on purpose, by reason.
    pub intended: BTreeMap<String, BTreeMap<&'static str, usize>>,
    /// The first differing line per datapath and class, for the report.
    pub examples: BTreeMap<(String, &'static str), String>,
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

impl Summary {
    pub fn differences(&self) -> usize {
        self.by_class.values().flat_map(|m| m.values()).sum()
    }

    pub fn clean(&self) -> bool {
        self.differences() == 0
            && self.violations.values().all(Vec::is_empty)
            && self.errors.is_empty()
    }

    pub fn report(&self) -> String {
        let mut r = String::new();
        let _ = writeln!(
            r,
            "fuzz: {} probes tried ({} frames) per datapath in {:.1} s",
            self.probes_tried,
            self.frames_sent,
            self.elapsed.as_secs_f64()
        );
        for e in &self.errors {
            let _ = writeln!(r, "ERROR {e}");
        }
        for (datapath, violations) in &self.violations {
            let _ = writeln!(
                r,
                "invariant violations on {datapath}: {}",
                violations.len()
            );
            let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
            for v in violations {
                let kind = v
                    .split(": ")
                    .nth(1)
                    .unwrap_or(v)
                    .split(" in its ")
                    .nth(1)
                    .unwrap_or("?");
                *by_kind
                    .entry(format!(
                        "lab address in its {}",
                        kind.split(':').next().unwrap_or(kind)
                    ))
                    .or_default() += 1;
            }
            for (kind, n) in by_kind {
                let _ = writeln!(r, "  {n:5}  {kind}");
            }
            for v in violations.iter().take(3) {
                let _ = writeln!(r, "    e.g. {v}");
            }
        }
        let _ = writeln!(r, "differences from iptables: {}", self.differences());
        for (datapath, classes) in &self.by_class {
            let total: usize = classes.values().sum();
            let _ = writeln!(r, "  {datapath}: {total}");
            for (class, n) in classes {
                let _ = writeln!(r, "    {n:5}  {class}");
            }
        }
        for (datapath, reasons) in &self.intended {
            for (reason, n) in reasons {
                let _ = writeln!(r, "  {datapath}: {n} lines kept on purpose: {reason}");
            }
        }
        if !self.examples.is_empty() {
            let _ = writeln!(r, "one example per datapath and class:");
            for ((datapath, class), e) in &self.examples {
                let _ = writeln!(r, "  [{datapath}] {class}: {e}");
            }
        }
        r
    }
}

/// Runs `budget` on every datapath at once and compares; differences that
/// `intended` covers are counted apart and do not make the run unclean.
pub fn run(budget: Budget, intended: &[FuzzIntended]) -> Summary {
    let lanes: Vec<(&'static str, &'static str)> = DATAPATHS.iter().map(|d| (*d, *d)).collect();
    run_lanes(budget, intended, &lanes)
}

/// The harness checked against itself: the reference datapath twice, side
/// by side. Any difference is noise the normalisation lets through (or a
/// reference that is not deterministic), not a datapath bug.
pub fn self_check(budget: Budget) -> Summary {
    run_lanes(
        budget,
        &[],
        &[
            (REFERENCE, "iptables"),
            ("iptables (second run)", "iptables"),
        ],
    )
}

/// The lane every other is compared with.
const REFERENCE: &str = "iptables";

/// Runs every lane (label, datapath) at once and compares each with the
/// lane labelled [`REFERENCE`].
fn run_lanes(
    budget: Budget,
    intended: &[FuzzIntended],
    lanes: &[(&'static str, &'static str)],
) -> Summary {
    let start = Instant::now();
    let probes = generate(budget.seed, budget.packets);
    let runs: Vec<(&'static str, Result<Record>)> = thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .iter()
            .map(|&(label, datapath)| {
                let probes = &probes;
                scope.spawn(move || (label, run_datapath(datapath, probes, budget)))
            })
            .collect();
        handles
            .into_iter()
            .zip(lanes)
            .map(|(h, &(label, _))| {
                h.join()
                    .unwrap_or_else(|_| (label, Err(anyhow::anyhow!("panicked"))))
            })
            .collect()
    });
    let mut summary = Summary::default();
    let mut records = BTreeMap::new();
    for (datapath, result) in runs {
        match result.with_context(|| format!("fuzzing {datapath}")) {
            Ok(record) => {
                summary
                    .violations
                    .insert(datapath, record.violations.clone());
                records.insert(datapath, record);
            }
            Err(e) => summary.errors.push(format!("{e:#}")),
        }
    }
    // Only the batches every datapath reached are compared.
    let steps =
        |r: &Record| -> BTreeSet<String> { r.seen.keys().map(|(s, _)| s.clone()).collect() };
    let mut common: Option<BTreeSet<String>> = None;
    for record in records.values() {
        let s = steps(record);
        common = Some(match common {
            None => s,
            Some(c) => c.intersection(&s).cloned().collect(),
        });
    }
    let common = common.unwrap_or_default();
    let batches = common.len();
    summary.probes_tried = (batches * budget.batch.max(1)).min(probes.len());
    summary.frames_sent = probes
        .iter()
        .take(summary.probes_tried)
        .map(|p| match &p.body {
            Body::Packets(f) => f.len(),
            Body::IcmpErrorAbout { .. } => 1,
        })
        .sum();
    let restrict = |r: &Record| -> Record {
        let mut r = r.clone();
        r.seen.retain(|(s, _), _| common.contains(s));
        r.notes.retain(|name, _| {
            name.strip_prefix("probe ")
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n < summary.probes_tried)
        });
        r
    };
    let class_of_id: BTreeMap<String, &'static str> = probes
        .iter()
        .map(|p| (format!("id={:#06x}", probe_id(p.n)), p.class))
        .collect();
    // A kernel's answer to a probe often quotes none of its ids, but names
    // its flow: the masquerade port named after the probe (`P#id`); else
    // the ports of a probe of the same batch (both of them, or its source
    // port alone), when they name one class; else the probe's own source
    // port when no probe of another class used it. A reply's later
    // fragments name their first fragment's flow (`of ...`).
    let mut class_of_port: BTreeMap<u16, Option<&'static str>> = BTreeMap::new();
    let mut flows_of_batch: BTreeMap<usize, Vec<Flow>> = BTreeMap::new();
    // A UDP probe's datagram length, with its ports: an echo of the same
    // length names the probe even where other probes shared its ports.
    let mut datagrams: BTreeMap<usize, Vec<(u16, u16, usize, &'static str)>> = BTreeMap::new();
    for probe in &probes {
        if let Body::Packets(packets) = &probe.body
            && let Some((sport, dport)) = packets.iter().find_map(|p| ports(p))
        {
            if let Some(len) = packets.iter().find_map(|p| udp_payload_len(p)) {
                datagrams
                    .entry(probe.n / budget.batch.max(1))
                    .or_default()
                    .push((sport, dport, len, probe.class));
            }
            class_of_port
                .entry(sport)
                .and_modify(|c| {
                    if *c != Some(probe.class) {
                        *c = None;
                    }
                })
                .or_insert(Some(probe.class));
            let source = packets
                .first()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| {
                    if p.first().is_some_and(|b| b >> 4 == 6) {
                        <[u8; 16]>::try_from(p.get(8..24).unwrap_or_default())
                            .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), IpAddr::from)
                    } else {
                        <[u8; 4]>::try_from(p.get(12..16).unwrap_or_default())
                            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::from)
                    }
                });
            flows_of_batch
                .entry(probe.n / budget.batch.max(1))
                .or_default()
                .push((sport, dport, probe.class, source));
        }
    }
    // A note about probe N is about its class; an error N crafted about a
    // flow of fragments, about the fragments' (only the datapath that let
    // them through has the flow).
    let note_class = |place: &str| -> Option<&'static str> {
        let n: usize = place
            .strip_prefix("note `probe ")?
            .trim_end_matches('`')
            .parse()
            .ok()?;
        let probe = probes.get(n)?;
        if let Body::IcmpErrorAbout { opener, .. } = probe.body
            && let Some(class) = class_of_id.get(&format!("id={opener:#06x}")).copied()
            && is_fragments(class)
        {
            return Some(class);
        }
        Some(probe.class)
    };
    // The masquerade port a line names after a probe (`P#id`): the class of
    // that probe, unless a probe whose translation differs on purpose
    // (fragments, malformed L4) opened its flow, or shared it shortly
    // before. Then a line other than that probe's own packet is about a
    // flow only one side had (a datagram only netfilter reassembled, or one
    // only netlab passed): its answers, or the port a later probe reused.
    let divergent = |class: &str| {
        let class = class.trim_start_matches("ipv6 ");
        class.starts_with("fragments") || class.starts_with("malformed")
    };
    let label_class = |line: &str| -> Option<&'static str> {
        let words = || line.split([' ', ']', '[']);
        let n = words()
            .map(|word| word.rsplit_once(':').map_or(word, |(_, port)| port))
            .filter_map(|w| w.trim_start_matches("id=").strip_prefix("P#"))
            .filter_map(|id| u16::from_str_radix(id, 16).ok())
            .map(|id| usize::from(id.wrapping_sub(probe_id(0))))
            .find(|n| probes.get(*n).is_some())?;
        let probe = &probes[n];
        let own = format!("id={:#06x}", probe_id(n));
        if divergent(probe.class) {
            return Some(if words().any(|w| w == own) {
                probe.class
            } else {
                REUSED_FLOW
            });
        }
        let b = n / budget.batch.max(1);
        let shared = match &probe.body {
            Body::Packets(packets) => packets.iter().find_map(|p| ports(p)),
            _ => None,
        }
        .is_some_and(|(sport, dport)| {
            [b.checked_sub(1), Some(b)]
                .into_iter()
                .flatten()
                .filter_map(|b| flows_of_batch.get(&b))
                .flatten()
                .any(|(s, d, c, _)| (*s, *d) == (sport, dport) && divergent(c))
        });
        Some(if shared { REUSED_FLOW } else { probe.class })
    };
    let response_class = |line: &str, place: &str| -> Option<&'static str> {
        let words: Vec<&str> = line
            .split([' ', ']', '['])
            .filter_map(|word| word.rsplit_once(':').map(|(_, port)| port))
            .collect();
        if let Some(class) = label_class(line) {
            return Some(class);
        }
        let numbers: BTreeSet<u16> = words.iter().filter_map(|w| w.parse().ok()).collect();
        let lens: Vec<usize> = line
            .split(' ')
            .filter_map(|w| w.strip_prefix("len="))
            .filter_map(|n| n.trim_end_matches(']').parse::<usize>().ok())
            .collect();
        let recent = |b: usize| {
            [b.checked_sub(2), b.checked_sub(1), Some(b)]
                .into_iter()
                .flatten()
        };
        if let Some(b) = batch_of(place) {
            // The probe's own datagram, or an echo or error about it (a
            // published port's backend answers from another port).
            let same = recent(b)
                .filter_map(|b| datagrams.get(&b))
                .flatten()
                .filter(|(s, _, l, _)| lens.contains(l) && numbers.contains(s));
            if let Some(class) = only(same.map(|f| f.3)) {
                return Some(class);
            }
            // A fragment of an answer, to a probe that sent fragments.
            if line.contains("frag@") || line.contains("fragment-data") {
                let fragments = recent(b)
                    .filter_map(|b| datagrams.get(&b))
                    .flatten()
                    .filter(|(s, _, _, c)| numbers.contains(s) && is_fragments(c));
                if let Some(class) = only(fragments.map(|f| f.3)) {
                    return Some(class);
                }
            }
        }
        // A kernel's answer may come a batch late (a datagram reassembled
        // from fragments sent at the end of the previous one).
        let flows: Vec<Flow> = batch_of(place)
            .map(|b| {
                [b.checked_sub(1), Some(b)]
                    .into_iter()
                    .flatten()
                    .filter_map(|b| flows_of_batch.get(&b))
                    .flatten()
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        // At blue, a probe to a published port shows its backend's port.
        let seen_as = |d: u16| {
            PUBLISHED
                .iter()
                .find(|(port, _)| *port == d)
                .map_or(d, |(_, backend)| *backend)
        };
        let both = flows.iter().filter(|(s, d, _, _)| {
            numbers.contains(s) && (numbers.contains(d) || numbers.contains(&seen_as(*d)))
        });
        let source = || flows.iter().filter(|(s, _, _, _)| numbers.contains(s));
        // Probes of two classes may share a source port by chance; the
        // address beside it (a spoofed blue, or outside) tells them apart.
        let named = source().filter(|(s, _, _, a)| {
            line.contains(&match a {
                IpAddr::V4(a) => format!("{a}:{s}"),
                IpAddr::V6(a) => format!("[{a}]:{s}"),
            })
        });
        only(both.map(|f| f.2))
            .or_else(|| only(named.map(|f| f.2)))
            .or_else(|| only(source().map(|f| f.2)))
            .or_else(|| {
                numbers
                    .iter()
                    .find_map(|p| class_of_port.get(p).copied().flatten())
            })
    };
    let what_of_id: BTreeMap<String, String> = probes
        .iter()
        .map(|p| {
            (
                format!("id={:#06x}", probe_id(p.n)),
                format!("probe {}: {}", p.n, p.what),
            )
        })
        .collect();
    // Every line every lane saw, for a look at what a probe drew.
    if std::env::var_os("NETLAB_FUZZ_DUMP").is_some() {
        for (dp, r) in &records {
            for ((step, point), lines) in &r.seen {
                for l in lines {
                    eprintln!("DUMP {dp} {step} @ {point}: {l}");
                }
            }
        }
    }
    if let Some(reference) = records.get(REFERENCE) {
        let reference = restrict(reference);
        for (datapath, record) in &records {
            if *datapath == REFERENCE {
                continue;
            }
            for difference in observe::diff(&reference, &restrict(record)) {
                let lines = difference
                    .expected
                    .iter()
                    .map(|l| ("expected", l))
                    .chain(difference.got.iter().map(|l| ("got", l)));
                for (side, line) in lines {
                    // An error a probe crafted about a flow of fragments
                    // belongs to the fragments' class: only the datapath
                    // that let the fragments through has the flow.
                    let quoted_fragments = line
                        .split([' ', ']'])
                        .filter(|w| w.starts_with("id=0x"))
                        .filter_map(|w| class_of_id.get(w).copied())
                        .find(|class| is_fragments(class));
                    // The line's own id when it is a probe's, else the id of
                    // a probe it quotes (an ICMP error about it): a kernel's
                    // answer to a probe belongs to that probe's class.
                    let id = line
                        .split([' ', ']'])
                        .rev()
                        .filter(|w| w.starts_with("id=0x"))
                        .find(|w| class_of_id.contains_key(*w))
                        .map(str::to_owned);
                    let class = quoted_fragments
                        .or_else(|| note_class(&difference.place))
                        .or_else(|| label_class(line).filter(|c| divergent(c) || *c == REUSED_FLOW))
                        .or_else(|| id.as_ref().and_then(|id| class_of_id.get(id).copied()))
                        .or_else(|| response_class(line, &difference.place))
                        .unwrap_or("kernel responses");
                    if std::env::var_os("NETLAB_FUZZ_SHOW_ALL").is_some() {
                        eprintln!(
                            "[{datapath}] {class}: at {}: {side} {line}",
                            difference.place
                        );
                    }
                    if let Some(kept) = intended.iter().find(|i| {
                        i.class == class
                            && difference.place.contains(i.place_contains)
                            && line.contains(i.line_contains)
                            && (i.side.is_empty() || i.side == side)
                    }) {
                        *summary
                            .intended
                            .entry((*datapath).to_owned())
                            .or_default()
                            .entry(kept.reason)
                            .or_default() += 1;
                        continue;
                    }
                    *summary
                        .by_class
                        .entry((*datapath).to_owned())
                        .or_default()
                        .entry(class)
                        .or_default() += 1;
                    summary
                        .examples
                        .entry(((*datapath).to_owned(), class))
                        .or_insert_with(|| {
                            let what = id
                                .and_then(|id| what_of_id.get(&id))
                                .map_or(String::new(), |w| format!("\n      ({w})"));
                            format!("at {}: {side} {line}{what}", difference.place)
                        });
                }
            }
        }
    }
    summary.elapsed = start.elapsed();
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_a_function_of_the_seed() {
        let a = generate(7, 200);
        let b = generate(7, 200);
        let c = generate(8, 200);
        let bytes =
            |ps: &[Probe]| -> Vec<String> { ps.iter().map(|p| format!("{:?}", p.body)).collect() };
        assert_eq!(bytes(&a), bytes(&b));
        assert_ne!(bytes(&a), bytes(&c));
        let classes: BTreeSet<_> = a.iter().map(|p| p.class).collect();
        assert!(classes.len() >= 10, "{classes:?}");
    }

    #[test]
    fn a_third_of_the_probes_are_ipv6() {
        let probes = generate(7, 600);
        let v6: Vec<&Probe> = probes
            .iter()
            .filter(|p| p.class.starts_with("ipv6 "))
            .collect();
        assert!((150..=250).contains(&v6.len()), "{}", v6.len());
        for p in &v6 {
            match &p.body {
                Body::Packets(packets) => {
                    assert!(packets.iter().all(|f| f[0] >> 4 == 6), "{}", p.what);
                }
                Body::IcmpErrorAbout { v6, .. } => assert!(v6, "{}", p.what),
            }
        }
        let classes: BTreeSet<_> = v6.iter().map(|p| p.class).collect();
        assert!(classes.len() >= 12, "{classes:?}");
    }

    #[test]
    fn ipv6_fragments_carry_the_datagram() {
        let (src, dst) = (addr6(RED6), addr6(OUTSIDE6));
        let l4 = packet::udp(src, dst, 1000, 9000, &[7; 100]);
        let frags = fragment6(src, dst, PROTO_UDP, 0x1234, &l4, 50);
        assert_eq!(frags.len(), 3);
        let mut whole = Vec::new();
        for (i, f) in frags.iter().enumerate() {
            let view = packet::parse_ipv6(f, false).unwrap();
            assert_eq!(view.frag_offset(), whole.len());
            assert!(view.is_fragment());
            assert_eq!(view.id, 0x1234);
            assert_eq!(view.frag & packet::IP_MF != 0, i < 2);
            whole.extend_from_slice(&f[48..]);
        }
        assert_eq!(whole, l4);
        assert_eq!(ports(&frags[0]), Some((1000, 9000)));
        assert_eq!(ports(&frags[1]), None);
        assert_eq!(udp_payload_len(&frags[0]), Some(100));
    }

    #[test]
    fn extension_headers_come_before_l4() {
        let (src, dst) = (addr6(RED6), addr6(OUTSIDE6));
        let l4 = packet::udp(src, dst, 1000, 9000, b"x");
        let p = packet6(src, dst, PROTO_UDP, 1, &[NEXTHDR_HOP, NEXTHDR_DEST], &l4);
        assert_eq!(l4_of6(&p), Some((PROTO_UDP, 56)));
        let view = packet::parse_ipv6(&p, false).unwrap();
        assert_eq!(view.options_len, 16);
        assert!(matches!(
            view.l4,
            packet::L4::Udp {
                csum_ok: Some(true),
                ..
            }
        ));
    }
}
