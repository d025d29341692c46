//! From captured frames to comparable observations.
//!
//! Each observation point (a namespace's interface) turns every IPv4 and
//! IPv6 frame it received (but link-local housekeeping: ICMPv6's neighbour
//! and router discovery and multicast listeners, and IGMP) into one line that keeps what must match between datapaths
//! (addresses, protocol, ports, flags, payload, ICMP type/code and the
//! quoted header of an ICMP error, checksum validity) and drops what may
//! legitimately differ:
//!
//! - ports from the ephemeral and masquerade range (32768 and up), every
//!   port of a NAT address (the uplink's and the gateway's) but the
//!   published ones, and ICMP echo identifiers become per-flow classes
//!   (`P1`, `P2`, ...; echo identifiers `E1`, `E2`, ... apart, so that an
//!   extra TCP or UDP flow does not renumber a ping), numbered in order of
//!   first appearance at that point: masquerade may hand out any free port
//!   (netfilter remaps a host socket that collides with a masqueraded flow
//!   below 32768, too), and a client's kernel picks its own;
//! - a fragment after the first that a kernel sent (a reply too big for
//!   the link) names the flow of its first fragment, seen earlier at that
//!   point in that step (`of SRC:PORT > DST:PORT`): its bytes hold no
//!   ports, and this is how a report ties it to the probe it answers;
//! - for packets a kernel sent (not crafted), TCP sequence numbers, window,
//!   options and the exact flag mix are dropped (only SYN / SYN-ACK / RST /
//!   other is kept) and payloads are kept by length, not bytes: segmenting
//!   and ACK timing vary from run to run;
//! - the IP id of a kernel's packet is dropped; a crafted packet's is kept
//!   (it names the packet).
//!
//! Classes are numbered afresh at every step, so one extra flow in a step
//! does not renumber every later one; flows seen only inside ICMP errors
//! are numbered apart (`Q1`, ...) for the same reason.
//!
//! A step's observation at a point is the *set* of its lines: a packet
//! counts as received or not, not how many times.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::packet::{CRAFTED_TTL, IP_MF, IpView, L4, PROTO_ICMP, PROTO_ICMPV6};

/// Ports from here on are classed (Linux's ephemeral range starts here, and
/// so does netlab's default masquerade range).
pub const CLASSED_PORTS: u16 = 32768;

/// Addresses whose ports NAT chooses: the default lab's uplink (masquerade)
/// and gateway (hairpin masquerade), in either family (the dual-stack
/// lab's IPv6 ones beside them).
pub const NAT_ADDRESSES: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
    IpAddr::V4(Ipv4Addr::new(192, 168, 15, 5)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x15, 0, 0, 0, 0, 0, 5)),
];

/// Host ports the suite and the fuzzer publish (kept as they are: a
/// published port is not NAT's choice).
pub const PUBLISHED_PORTS: [u16; 3] = [8080, 5353, 5400];

/// Ports at the uplink's address that the fuzzer's probes address on
/// purpose without publishing them (TCP 8081, UDP 9999): not NAT's choice
/// either. Numbered as classes, the host's RSTs from them took a number
/// after whatever other classed flows of the step came first, intended
/// differences included, so the same RST read as another class on each
/// datapath (seed 11: 18 such lines per eBPF datapath).
pub const PROBED_PORTS: [u16; 2] = [8081, 9999];

/// Whether `port` at `addr` is compared by class rather than by value.
fn classed(addr: IpAddr, port: u16) -> bool {
    port >= CLASSED_PORTS
        || (NAT_ADDRESSES.contains(&addr)
            && !PUBLISHED_PORTS.contains(&port)
            && !PROBED_PORTS.contains(&port))
}

/// The lab subnet that must never be seen beyond the uplink.
pub const LAB_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(192, 168, 15, 0), 24);
/// The dual-stack lab's IPv6 subnet, which must not be seen there either.
pub const LAB_NET6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd00, 0x15, 0, 0, 0, 0, 0, 0), 64);

pub fn in_lab_net(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX << (32 - u32::from(LAB_NET.1));
            u32::from(a) & mask == u32::from(LAB_NET.0)
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX << (128 - u32::from(LAB_NET6.1));
            u128::from(a) & mask == u128::from(LAB_NET6.0)
        }
    }
}

/// ICMP of either family: echo identifiers stand for its ports.
fn is_icmp(proto: u8) -> bool {
    proto == PROTO_ICMP || proto == PROTO_ICMPV6
}

/// `addr:port`, or `[addr]:port` for IPv6 (as URLs and `ss` write it).
fn endpoint(addr: IpAddr, port: &str) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

type Endpoint = (IpAddr, u16);

/// Per-flow classes of ports and echo identifiers at one point.
#[derive(Debug, Default)]
pub struct Classes {
    seen: HashMap<(u8, Endpoint, Endpoint, Endpoint), String>,
    /// Classes of flows only ever seen quoted in ICMP errors: numbered
    /// apart, so that an extra error does not renumber the flows after it.
    quoted: HashMap<(u8, Endpoint, Endpoint, Endpoint), String>,
    /// Echo identifiers outside ICMP errors, numbered apart from ports.
    echo: HashMap<(u8, Endpoint, Endpoint, Endpoint), String>,
    /// The flow of each first fragment a kernel sent, by (source,
    /// destination, protocol, IP id): `SRC:PORT > DST:PORT`, classed.
    fragments: HashMap<(IpAddr, IpAddr, u8, u16), String>,
}

impl Classes {
    /// The name of `port` at `at`, in the flow `a` <-> `b` (either order).
    /// A flow first seen in a crafted packet is named after that packet's
    /// IP id (`P#1a2b`), so that it keeps its name whatever other flows a
    /// datapath let through before it.
    fn port(
        &mut self,
        proto: u8,
        (a, b): (Endpoint, Endpoint),
        at: Endpoint,
        quoted: bool,
        crafted_id: Option<u16>,
    ) -> String {
        if !classed(at.0, at.1) && !is_icmp(proto) {
            return at.1.to_string();
        }
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let key = (proto, lo, hi, at);
        if let Some(name) = self.seen.get(&key) {
            return name.clone();
        }
        if let Some(id) = crafted_id {
            let name = format!("P#{id:04x}");
            self.seen.insert(key, name.clone());
            return name;
        }
        if quoted {
            let next = self.quoted.len() + 1;
            return self
                .quoted
                .entry(key)
                .or_insert_with(|| format!("Q{next}"))
                .clone();
        }
        if is_icmp(proto) {
            let next = self.echo.len() + 1;
            return self
                .echo
                .entry(key)
                .or_insert_with(|| format!("E{next}"))
                .clone();
        }
        let next = self.seen.len() + 1;
        self.seen
            .entry(key)
            .or_insert_with(|| format!("P{next}"))
            .clone()
    }
}

impl Classes {
    /// Notes the flow of a first fragment a kernel sent (`sp`, `dp`: its
    /// ports as classed), for the fragments after it.
    fn first_fragment(&mut self, view: &IpView, crafted_or_quoted: bool, sp: &str, dp: &str) {
        if crafted_or_quoted || !view.is_fragment() || view.frag_offset() != 0 {
            return;
        }
        self.fragments.insert(
            (view.src, view.dst, view.proto, view.id),
            format!("{} > {}", endpoint(view.src, sp), endpoint(view.dst, dp)),
        );
    }
}

/// What a frame was, as the sender's kernel or the test.
fn crafted(view: &IpView) -> bool {
    view.ttl == CRAFTED_TTL || view.ttl == CRAFTED_TTL - 1
}

/// FNV-1a, shortened: enough to tell payloads apart in a report.
fn digest(bytes: &[u8]) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

fn tcp_flags(flags: u8) -> String {
    let names = [
        (0x01, 'F'),
        (0x02, 'S'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, 'A'),
        (0x20, 'U'),
        (0x40, 'E'),
        (0x80, 'C'),
    ];
    let s: String = names
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, c)| *c)
        .collect();
    if s.is_empty() { "none".into() } else { s }
}

fn tcp_kind(flags: u8) -> &'static str {
    match (flags & 0x02 != 0, flags & 0x10 != 0, flags & 0x04 != 0) {
        (_, _, true) => "RST",
        (true, false, _) => "SYN",
        (true, true, _) => "SYN-ACK",
        _ => "segment",
    }
}

fn csum(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "",
        Some(false) => " l4csum=BAD",
        None => "",
    }
}

/// Names the flow of a crafted frame after its IP id before any line of
/// the step is described, so an ICMP error that quotes the flow names it
/// the same whether its line came before the crafted frame's or after
/// (the order two datapaths deliver them in is theirs).
pub fn register_crafted(view: &IpView, classes: &mut Classes) {
    if !crafted(view) {
        return;
    }
    let (sport, dport) = match &view.l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => (*sport, *dport),
        _ => return,
    };
    let (a, b) = ((view.src, sport), (view.dst, dport));
    classes.port(view.proto, (a, b), a, false, Some(view.id));
    classes.port(view.proto, (a, b), b, false, Some(view.id));
}

/// One line for `view` (see the module's rules).
pub fn describe(view: &IpView, classes: &mut Classes, pkttype: u8) -> String {
    let mut line = describe_packet(view, classes, false);
    match pkttype {
        0 => {}
        1 => line.push_str(" pkt=broadcast"),
        2 => line.push_str(" pkt=multicast"),
        3 => line.push_str(" pkt=otherhost"),
        n => {
            let _ = write!(line, " pkt={n}");
        }
    }
    line
}

fn describe_packet(view: &IpView, classes: &mut Classes, quoted: bool) -> String {
    let crafted = crafted(view);
    let id = crafted.then_some(view.id);
    let (src, dst) = (view.src, view.dst);
    let mut line = String::new();
    let proto = view.proto;
    match &view.l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
            data_offset,
            payload,
            csum_ok,
        } => {
            let (a, b) = ((src, *sport), (dst, *dport));
            let sp = classes.port(proto, (a, b), a, quoted, id);
            let dp = classes.port(proto, (a, b), b, quoted, id);
            let _ = write!(line, "tcp {} > {}", endpoint(src, &sp), endpoint(dst, &dp));
            classes.first_fragment(view, crafted || quoted, &sp, &dp);
            if crafted {
                let _ = write!(line, " flags={} doff={data_offset}", tcp_flags(*flags));
                if !payload.is_empty() {
                    let _ = write!(line, " len={} data={}", payload.len(), digest(payload));
                }
            } else {
                let _ = write!(
                    line,
                    " {}{}",
                    tcp_kind(*flags),
                    if payload.is_empty() { "" } else { " +data" }
                );
            }
            line.push_str(csum(*csum_ok));
        }
        L4::Udp {
            sport,
            dport,
            payload,
            csum_ok,
        } => {
            let (a, b) = ((src, *sport), (dst, *dport));
            let sp = classes.port(proto, (a, b), a, quoted, id);
            let dp = classes.port(proto, (a, b), b, quoted, id);
            classes.first_fragment(view, crafted || quoted, &sp, &dp);
            let _ = write!(
                line,
                "udp {} > {} len={}",
                endpoint(src, &sp),
                endpoint(dst, &dp),
                payload.len()
            );
            if !quoted {
                let _ = write!(line, " data={}", digest(payload));
            }
            line.push_str(csum(*csum_ok));
        }
        L4::Icmp {
            kind,
            code,
            rest,
            body,
            csum_ok,
            embedded,
        } => {
            let (name, echo) = if view.is_ipv6() {
                ("icmp6", matches!(kind, 128 | 129))
            } else {
                ("icmp", matches!(kind, 0 | 8))
            };
            let _ = write!(line, "{name} {src} > {dst} type={kind}/{code}");
            if echo {
                let ident = u16::from_be_bytes([rest[0], rest[1]]);
                let seq = u16::from_be_bytes([rest[2], rest[3]]);
                // Echo identifiers are the ICMP flow's "port".
                let (a, b) = ((src, 0), (dst, 0));
                let class = classes.port(
                    proto,
                    (a, b),
                    (IpAddr::V4(Ipv4Addr::UNSPECIFIED), ident),
                    quoted,
                    id,
                );
                let _ = write!(line, " id={class} seq={seq} len={}", body.len());
            }
            if let Some(inner) = embedded {
                let _ = write!(line, " [about: {}]", describe_packet(inner, classes, true));
            }
            if *csum_ok == Some(false) {
                line.push_str(" icmpcsum=BAD");
            }
        }
        L4::FragmentData { len } => {
            let _ = write!(line, "proto{proto} {src} > {dst} fragment-data len={len}");
            if !crafted && let Some(flow) = classes.fragments.get(&(src, dst, proto, view.id)) {
                let _ = write!(line, " of {flow}");
            }
        }
        L4::Truncated { proto, len } => {
            let _ = write!(line, "proto{proto} {src} > {dst} truncated len={len}");
        }
        L4::Other { proto, len } => {
            let _ = write!(line, "proto{proto} {src} > {dst} len={len}");
        }
    }
    if view.is_fragment() {
        let _ = write!(
            line,
            " frag@{}{}",
            view.frag_offset(),
            if view.frag & IP_MF != 0 { "+" } else { "" }
        );
    }
    if crafted {
        let _ = write!(line, " id={:#06x}", view.id);
    }
    if !quoted {
        let _ = write!(line, " ttl={}", view.ttl);
    }
    if view.options_len > 0 {
        let _ = write!(line, " ipopts={}", view.options_len);
    }
    if !view.header_ok && !quoted {
        line.push_str(" ipcsum=BAD");
    }
    line
}

/// Every lab-subnet address in `view`, its quoted packet included.
pub fn lab_addresses(view: &IpView) -> Vec<(&'static str, IpAddr)> {
    let mut found = Vec::new();
    for (field, addr) in [("source", view.src), ("destination", view.dst)] {
        if in_lab_net(addr) {
            found.push((field, addr));
        }
    }
    if let L4::Icmp {
        embedded: Some(inner),
        ..
    } = &view.l4
    {
        for (field, addr) in [
            ("quoted source", inner.src),
            ("quoted destination", inner.dst),
        ] {
            if in_lab_net(addr) {
                found.push((field, addr));
            }
        }
    }
    found
}

/// What one datapath did in one case: per step and point, the lines
/// received; and the outcomes the case noted (a client's result, a
/// server's log, a command's verdict).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub seen: BTreeMap<(String, String), BTreeSet<String>>,
    pub notes: BTreeMap<String, String>,
    /// Broken invariants, whatever the other datapaths did.
    pub violations: Vec<String>,
}

/// One way a datapath's record differs from the reference's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// `step @ point` or `note NAME`.
    pub place: String,
    pub expected: Vec<String>,
    pub got: Vec<String>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "  at {}:", self.place)?;
        for line in &self.expected {
            writeln!(f, "    - expected: {line}")?;
        }
        for line in &self.got {
            writeln!(f, "    + got:      {line}")?;
        }
        Ok(())
    }
}

/// Where `got` differs from `reference`, place by place.
pub fn diff(reference: &Record, got: &Record) -> Vec<Difference> {
    let mut out = Vec::new();
    let places: BTreeSet<_> = reference.seen.keys().chain(got.seen.keys()).collect();
    let empty = BTreeSet::new();
    for place in places {
        let want = reference.seen.get(place).unwrap_or(&empty);
        let have = got.seen.get(place).unwrap_or(&empty);
        if want != have {
            out.push(Difference {
                place: format!("step `{}` @ {}", place.0, place.1),
                expected: want.difference(have).cloned().collect(),
                got: have.difference(want).cloned().collect(),
            });
        }
    }
    let names: BTreeSet<_> = reference.notes.keys().chain(got.notes.keys()).collect();
    for name in names {
        let want = reference.notes.get(name);
        let have = got.notes.get(name);
        if want != have {
            out.push(Difference {
                place: format!("note `{name}`"),
                expected: want.cloned().into_iter().collect(),
                got: have.cloned().into_iter().collect(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::packet::{Ip, PROTO_UDP, parse_ipv4, udp};
    use super::*;

    const RED: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 1);
    const OUT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const UP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    fn line(p: &[u8], classes: &mut Classes) -> String {
        describe(&parse_ipv4(p, false).unwrap(), classes, 0)
    }

    #[test]
    fn masquerade_ports_become_classes_per_flow() {
        let mut a = Classes::default();
        let mut b = Classes::default();
        let mut ip = Ip::new(UP, OUT, PROTO_UDP, 1);
        ip.ttl = 63;
        let l_a = line(&ip.packet(&udp(UP, OUT, 40000, 53, b"x")), &mut a);
        let l_b = line(&ip.packet(&udp(UP, OUT, 51234, 53, b"x")), &mut b);
        assert_eq!(l_a, l_b);
        assert!(l_a.contains("198.18.0.1:P1 > 198.18.0.2:53"), "{l_a}");
        // Same port, other flow: another class.
        let other = line(&ip.packet(&udp(UP, OUT, 40000, 54, b"x")), &mut a);
        assert!(other.contains(":P2 >"), "{other}");
    }

    #[test]
    fn nat_addresses_have_their_ports_classed_but_published_ones() {
        let mut c = Classes::default();
        let mut ip = Ip::new(UP, OUT, PROTO_UDP, 1);
        ip.ttl = 64;
        let remapped = line(&ip.packet(&udp(UP, OUT, 1138, 9100, b"")), &mut c);
        assert!(
            remapped.contains("198.18.0.1:P1 > 198.18.0.2:9100"),
            "{remapped}"
        );
        let published = line(&ip.packet(&udp(UP, OUT, 8080, 9100, b"")), &mut c);
        assert!(published.contains("198.18.0.1:8080 >"), "{published}");
    }

    #[test]
    fn a_kernels_later_fragments_name_the_flow_of_their_first() {
        let mut c = Classes::default();
        let mut ip = Ip::new(OUT, RED, PROTO_UDP, 7);
        ip.ttl = 63;
        let whole = ip.packet(&udp(OUT, RED, 9000, 12345, &[0; 100]));
        let lines: Vec<String> = super::super::packet::fragment(&whole, 64)
            .iter()
            .map(|f| line(f, &mut c))
            .collect();
        assert!(
            lines[1].contains("fragment-data len=")
                && lines[1].contains(" of 198.18.0.2:9000 > 192.168.15.1:12345"),
            "{lines:?}"
        );
    }

    #[test]
    fn echo_identifiers_are_numbered_apart_from_ports() {
        let mut c = Classes::default();
        let mut ip = Ip::new(UP, RED, PROTO_UDP, 1);
        ip.ttl = 64;
        let _ = line(&ip.packet(&udp(UP, RED, 1138, 9100, b"")), &mut c);
        let mut echo = Ip::new(OUT, RED, PROTO_ICMP, 2);
        echo.ttl = 63;
        let reply = line(
            &echo.packet(&super::super::packet::icmp_echo(0, 4242, 1, b"x")),
            &mut c,
        );
        assert!(reply.contains(" id=E1 "), "{reply}");
    }

    #[test]
    fn lab_addresses_are_found_in_quoted_headers() {
        let inner = Ip::new(RED, OUT, PROTO_UDP, 2).packet(&udp(RED, OUT, 1, 2, b""));
        let err = Ip::new(OUT, UP, PROTO_ICMP, 3)
            .packet(&super::super::packet::icmp(3, 3, [0; 4], &inner));
        let view = parse_ipv4(&err, false).unwrap();
        assert_eq!(lab_addresses(&view), [("quoted source", IpAddr::V4(RED))]);
    }

    #[test]
    fn ipv6_lab_addresses_are_found_in_quoted_headers() {
        use super::super::packet::{Ip6, PROTO_ICMPV6, icmp6, parse_ipv6};
        let red6 = Ipv6Addr::new(0xfd00, 0x15, 0, 0, 0, 0, 0, 1);
        let out6 = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
        let up6 = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
        let inner = Ip6::new(red6, out6, PROTO_UDP, 2).packet(&udp(red6, out6, 1, 2, b""));
        let err =
            Ip6::new(out6, up6, PROTO_ICMPV6, 3).packet(&icmp6(out6, up6, 1, 4, [0; 4], &inner));
        let view = parse_ipv6(&err, false).unwrap();
        assert_eq!(lab_addresses(&view), [("quoted source", IpAddr::V6(red6))]);
        let clean = Ip6::new(up6, out6, PROTO_UDP, 2).packet(&udp(up6, out6, 1, 2, b""));
        let err =
            Ip6::new(out6, up6, PROTO_ICMPV6, 3).packet(&icmp6(out6, up6, 1, 4, [0; 4], &clean));
        assert!(lab_addresses(&parse_ipv6(&err, false).unwrap()).is_empty());
    }

    #[test]
    fn diff_names_both_sides() {
        let mut a = Record::default();
        let mut b = Record::default();
        let key = ("s".to_owned(), "red".to_owned());
        a.seen.entry(key.clone()).or_default().insert("x".into());
        b.seen.entry(key).or_default().insert("y".into());
        b.notes.insert("client".into(), "timeout".into());
        let d = diff(&a, &b);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].expected, ["x"]);
        assert_eq!(d[0].got, ["y"]);
        assert_eq!(d[1].got, ["timeout"]);
    }
}
