//! Decoding ring-buffer records into [`Event`]s, and the two text forms:
//! human (one journey per packet, hops in order with the time between
//! them) and JSON (one object per event).
//!
//! ## JSON fields (stable)
//!
//! Hop, kernel-drop and delivered events: `{"type": "hop" | "kernel_drop" |
//! "delivered",
//! "time": RFC 3339 UTC with ns, "time_ns": ns since the epoch, "trace_id":
//! 16 hex digits, "netns": namespace or "host", "iface": name, "ifindex",
//! "direction": "ingress" | "egress" | "kernel", "hook": the program
//! (`kfree_skb` or `consume_skb` for the kernel's events),
//! "len": bytes, "packet": TUPLE (as the packet reached the hop), "after":
//! TUPLE (as it left the hop; kernel drops: as it left its last hop),
//! "action": "pass" | "redirect" | "drop" | "kernel_drop" | "delivered", "reason":
//! netlab's or the kernel's drop reason or null, "redirect_to": "ns/if" or
//! null, "nat": [{"kind": "dnat" | "snat", "from": "ADDR:PORT", "to":
//! "ADDR:PORT"}], "location": kernel function of a kernel drop or null}.
//!
//! TUPLE: `{"kind": "ipv4" | "ipv4_other" | "ipv6" | "ipv6_other" |
//! "not_ip" | "malformed", "proto": "tcp" | "udp" | "icmp" | "icmp6" |
//! number, "src", "dst", "sport", "dport", "tcp_flags": "SA..." ,
//! "icmp_type", "icmp_id", "ethertype"}` (fields that do not apply are
//! null). `*_other`: addresses only (another protocol, a fragment after the
//! first, or IPv6 extension headers past the four the tracer walks).
//!
//! Losses: `{"type": "lost", "count": new losses, "total": since start}`.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    hash::{BuildHasherDefault, Hasher},
    io::Write as _,
    net::Ipv6Addr,
    time::{Duration, Instant},
};

use netlab_common::{
    nat::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Stat, ip_proto_name},
    trace::{
        Action, DropEvent, EVENT_DELIVERED, EVENT_HOP, EVENT_KERNEL_DROP, EventHeader, FATE_CLONED,
        Hook, HopEvent, REASON_NONE, SNAP_MAX, TUPLE_IPV4, TUPLE_IPV4_OTHER, TUPLE_IPV6,
        TUPLE_IPV6_OTHER, TUPLE_NOT_IP, Tuple,
    },
};

/// One decoded record, borrowing the ring's bytes (no copy, no allocation).
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    pub header: EventHeader,
    /// Packet bytes (hops only, up to the snap length).
    pub data: &'a [u8],
}

impl Event<'_> {
    pub fn is_hop(&self) -> bool {
        self.header.kind == EVENT_HOP
    }
}

/// Decodes one ring-buffer record; `None` for anything malformed (which
/// the reader counts), never a guess.
pub fn decode(bytes: &[u8]) -> Option<Event<'_>> {
    let header_len = size_of::<EventHeader>();
    if bytes.len() < header_len {
        return None;
    }
    // SAFETY: EventHeader is plain `#[repr(C)]` integers (any bit pattern is
    // valid) and `bytes` holds at least its size; read_unaligned copies.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    match header.kind {
        EVENT_HOP => {
            let cap = header.cap_len as usize;
            // Header-only (snap length 0) or a whole HopEvent.
            let whole = cap > 0 || bytes.len() >= size_of::<HopEvent>();
            if cap > SNAP_MAX
                || (whole && bytes.len() < size_of::<HopEvent>())
                || Hook::from_u8(header.hook).is_none()
            {
                return None;
            }
            Action::from_u8(header.action)?;
            Some(Event {
                header,
                data: &bytes[header_len..header_len + cap],
            })
        }
        EVENT_KERNEL_DROP | EVENT_DELIVERED if bytes.len() >= size_of::<DropEvent>() => {
            Some(Event { header, data: &[] })
        }
        _ => None,
    }
}

/// A lab interface's names, with the text every event on it repeats
/// rendered once.
#[derive(Clone, Debug)]
pub struct IfaceNames {
    /// The namespace, or "host".
    pub place: String,
    pub name: String,
    /// `place/name`.
    path: Box<[u8]>,
    /// `"netns":"place","iface":"name","ifindex":N` (JSON).
    json: Box<[u8]>,
}

/// What names events need: interfaces, drop reasons, kernel symbols, and
/// the clock.
#[derive(Debug, Default)]
pub struct Context {
    /// ifindex → names ([`Context::add_iface`]).
    ifaces: BTreeMap<u32, IfaceNames>,
    /// The kernel's `enum skb_drop_reason`, from BTF.
    pub kernel_reasons: BTreeMap<u32, String>,
    /// Sorted kernel symbols (address, name), loaded on the first drop.
    pub symbols: Option<Vec<(u64, String)>>,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, ns.
    pub realtime_offset_ns: i128,
    pub color: bool,
}

impl Context {
    /// Names `ifindex`: interface `name` in `place` (a namespace or "host").
    pub fn add_iface(&mut self, ifindex: u32, place: &str, name: &str) {
        let path = format!("{place}/{name}").into_bytes().into_boxed_slice();
        let mut json = b"\"netns\":".to_vec();
        put_json_str(&mut json, place);
        json.extend_from_slice(b",\"iface\":");
        put_json_str(&mut json, name);
        json.extend_from_slice(b",\"ifindex\":");
        put_u64(&mut json, u64::from(ifindex));
        self.ifaces.insert(
            ifindex,
            IfaceNames {
                place: place.to_owned(),
                name: name.to_owned(),
                path,
                json: json.into_boxed_slice(),
            },
        );
    }

    /// The named interfaces, by ifindex.
    pub fn ifaces(&self) -> impl Iterator<Item = (u32, &IfaceNames)> {
        self.ifaces.iter().map(|(index, names)| (*index, names))
    }

    pub fn place_iface(&self, ifindex: u32) -> (String, String) {
        self.ifaces.get(&ifindex).map_or_else(
            || ("?".to_owned(), format!("if{ifindex}")),
            |names| (names.place.clone(), names.name.clone()),
        )
    }

    pub fn iface_name(&self, ifindex: u32) -> String {
        let mut out = Vec::new();
        self.put_iface_name(&mut out, ifindex);
        into_string(out)
    }

    /// `place/iface` (`?/ifN` for an unknown index).
    fn put_iface_name(&self, out: &mut Vec<u8>, ifindex: u32) {
        match self.ifaces.get(&ifindex) {
            Some(names) => out.extend_from_slice(&names.path),
            None => {
                out.extend_from_slice(b"?/if");
                put_u64(out, u64::from(ifindex));
            }
        }
    }

    /// The event's `netns`, `iface` and `ifindex` fields (JSON).
    fn put_iface_json(&self, out: &mut Vec<u8>, ifindex: u32) {
        match self.ifaces.get(&ifindex) {
            Some(names) => out.extend_from_slice(&names.json),
            None => {
                out.extend_from_slice(b"\"netns\":\"?\",\"iface\":\"if");
                put_u64(out, u64::from(ifindex));
                out.extend_from_slice(b"\",\"ifindex\":");
                put_u64(out, u64::from(ifindex));
            }
        }
    }

    pub fn epoch_ns(&self, ktime_ns: u64) -> u64 {
        (i128::from(ktime_ns) + self.realtime_offset_ns).max(0) as u64
    }

    /// The drop reason's name (netlab's or the kernel's), if the event is a drop.
    fn put_reason(&self, out: &mut Vec<u8>, header: &EventHeader) -> bool {
        match Action::from_u8(header.action) {
            Some(Action::Drop) if header.reason != REASON_NONE => {
                match Stat::ALL.get(usize::from(header.reason)) {
                    Some(stat) => out.extend_from_slice(stat.name().as_bytes()),
                    None => {
                        out.extend_from_slice(b"reason ");
                        put_u64(out, u64::from(header.reason));
                    }
                }
            }
            Some(Action::Drop) => out.extend_from_slice(b"dropped"),
            Some(Action::KernelDrop) => match self.kernel_reasons.get(&header.kernel_reason) {
                Some(name) => out.extend_from_slice(name.as_bytes()),
                None => {
                    out.extend_from_slice(b"reason ");
                    put_u64(out, u64::from(header.kernel_reason));
                }
            },
            _ => return false,
        }
        true
    }

    /// `function+0xoff` of a kernel address, if known.
    fn put_location(&self, out: &mut Vec<u8>, address: u64) -> bool {
        if address == 0 {
            return false;
        }
        let Some(symbols) = self.symbols.as_ref() else {
            return false;
        };
        let at = symbols.partition_point(|(a, _)| *a <= address);
        let Some((start, name)) = at.checked_sub(1).and_then(|i| symbols.get(i)) else {
            return false;
        };
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"+0x");
        put_hex(out, address - start, 1);
        true
    }
}

fn into_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Kernel symbols from /proc/kallsyms, sorted by address (empty when
/// addresses are hidden).
pub fn load_symbols() -> Vec<(u64, String)> {
    let Ok(text) = std::fs::read_to_string("/proc/kallsyms") else {
        return Vec::new();
    };
    let mut symbols: Vec<(u64, String)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let address = u64::from_str_radix(parts.next()?, 16).ok()?;
            let kind = parts.next()?;
            let name = parts.next()?;
            (address != 0 && matches!(kind, "t" | "T")).then(|| (address, name.to_owned()))
        })
        .collect();
    symbols.sort();
    symbols
}

// The writers below append to a reused buffer: no allocation per event
// (the reader formats millions of events per second).

/// "00" to "99": numbers are written two digits at a time.
const PAIRS: [u8; 200] = {
    let mut pairs = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        pairs[2 * i] = b'0' + (i / 10) as u8;
        pairs[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    pairs
};

/// The digits of `n` at the end of `digits`; returns where they start.
fn digits_of(mut n: u64, digits: &mut [u8; 20]) -> usize {
    let mut i = digits.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        digits[i] = b'0' + n as u8;
    }
    i
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    if n < 10 {
        out.push(b'0' + n as u8);
        return;
    }
    let mut digits = [0u8; 20];
    let start = digits_of(n, &mut digits);
    out.extend_from_slice(&digits[start..]);
}

/// `n` with at least `width` digits (zero-padded).
fn put_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let start = digits_of(n, &mut digits).min(digits.len().saturating_sub(width));
    out.extend_from_slice(&digits[start..]);
}

/// Lower-case hex with at least `width` digits.
fn put_hex(out: &mut Vec<u8>, n: u64, width: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [b'0'; 16];
    for (i, byte) in n.to_be_bytes().into_iter().enumerate() {
        digits[2 * i] = HEX[usize::from(byte >> 4)];
        digits[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    let significant = 16 - (n.leading_zeros() / 4) as usize;
    let start = 16 - significant.max(width.min(16)).max(1);
    out.extend_from_slice(&digits[start..]);
}

/// Each octet's decimal digits, and how many there are.
const OCTETS: [([u8; 3], u8); 256] = {
    let mut octets = [([0u8; 3], 0u8); 256];
    let mut i = 0;
    while i < 256 {
        octets[i] = if i >= 100 {
            (
                [
                    b'0' + (i / 100) as u8,
                    b'0' + (i / 10 % 10) as u8,
                    b'0' + (i % 10) as u8,
                ],
                3,
            )
        } else if i >= 10 {
            ([b'0' + (i / 10) as u8, b'0' + (i % 10) as u8, 0], 2)
        } else {
            ([b'0' + i as u8, 0, 0], 1)
        };
        i += 1;
    }
    octets
};

/// An address as it is on the wire, dotted.
fn put_ipv4(out: &mut Vec<u8>, wire: u32) {
    let mut text = [b'.'; 16];
    let mut len = 0;
    for octet in wire.to_ne_bytes() {
        let (digits, n) = OCTETS[usize::from(octet)];
        text[len..len + 3].copy_from_slice(&digits);
        len += usize::from(n);
        // The dot after it (the last one is cut off below).
        text[len] = b'.';
        len += 1;
    }
    out.extend_from_slice(&text[..len - 1]);
}

/// A JSON string (names are validated, but escape anyway).
fn put_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..0x20 => {
                out.extend_from_slice(b"\\u00");
                put_hex(out, u64::from(b), 2);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// The protocol's name, or its number when it has none here.
fn put_proto(out: &mut Vec<u8>, proto: u8) {
    match ip_proto_name(proto) {
        Some(name) => out.extend_from_slice(name.as_bytes()),
        None => put_u64(out, u64::from(proto)),
    }
}

const TCP_FLAG_NAMES: [(u8, u8); 8] = [
    (0x02, b'S'),
    (0x10, b'A'),
    (0x01, b'F'),
    (0x04, b'R'),
    (0x08, b'P'),
    (0x20, b'U'),
    (0x40, b'E'),
    (0x80, b'C'),
];

fn put_tcp_flags(out: &mut Vec<u8>, flags: u8) {
    for (bit, c) in TCP_FLAG_NAMES {
        if flags & bit != 0 {
            out.push(c);
        }
    }
}

pub fn tcp_flags(flags: u8) -> String {
    let mut out = Vec::new();
    put_tcp_flags(&mut out, flags);
    into_string(out)
}

fn has_ports(t: &Tuple) -> bool {
    t.has_l4() && (t.proto == IPPROTO_TCP || t.proto == IPPROTO_UDP)
}

/// An address of a tuple as it is on the wire: IPv4 in the first word.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Addr {
    V4(u32),
    V6([u32; 4]),
}

impl Addr {
    fn of(t: &Tuple, words: [u32; 4]) -> Addr {
        if t.is_ipv6() {
            Addr::V6(words)
        } else {
            Addr::V4(words[0])
        }
    }

    fn put(self, out: &mut Vec<u8>) {
        match self {
            Addr::V4(wire) => put_ipv4(out, wire),
            Addr::V6(words) => {
                let mut octets = [0u8; 16];
                for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
                    chunk.copy_from_slice(&word.to_ne_bytes());
                }
                let _ = write!(out, "{}", Ipv6Addr::from(octets));
            }
        }
    }

    /// `ADDR:PORT`, with an IPv6 address in brackets.
    fn put_with_port(self, out: &mut Vec<u8>, port: u16) {
        let v6 = matches!(self, Addr::V6(_));
        if v6 {
            out.push(b'[');
        }
        self.put(out);
        if v6 {
            out.push(b']');
        }
        out.push(b':');
        put_u64(out, u64::from(port));
    }
}

fn put_endpoint(out: &mut Vec<u8>, a: Addr, port: u16, ports: bool) {
    if ports {
        a.put_with_port(out, u16::from_be(port));
    } else {
        a.put(out);
    }
}

fn put_tuple_text(out: &mut Vec<u8>, t: &Tuple) {
    match t.kind {
        TUPLE_NOT_IP => {
            out.extend_from_slice(b"non-IP (ethertype 0x");
            put_hex(out, u64::from(t.saddr[0]), 4);
            out.push(b')');
        }
        _ if t.is_ipv4() || t.is_ipv6() => {
            let ports = has_ports(t);
            put_endpoint(out, Addr::of(t, t.saddr), t.sport, ports);
            out.extend_from_slice(b" > ");
            put_endpoint(out, Addr::of(t, t.daddr), t.dport, ports);
            out.push(b' ');
            put_proto(out, t.proto);
            let other = t.kind == TUPLE_IPV4_OTHER || t.kind == TUPLE_IPV6_OTHER;
            if other && (t.proto == IPPROTO_TCP || t.proto == IPPROTO_UDP) {
                out.extend_from_slice(b" (fragment)");
            } else if t.has_l4() && t.proto == IPPROTO_TCP {
                out.extend_from_slice(b" [");
                put_tcp_flags(out, t.tcp_flags);
                out.push(b']');
            } else if t.is_echo(true) {
                out.extend_from_slice(b" echo request id ");
                put_u64(out, u64::from(u16::from_be(t.sport)));
            } else if t.is_echo(false) {
                out.extend_from_slice(b" echo reply id ");
                put_u64(out, u64::from(u16::from_be(t.dport)));
            } else if is_icmp(t) {
                out.extend_from_slice(b" type ");
                put_u64(out, u64::from(t.icmp_type));
            }
        }
        _ => out.extend_from_slice(b"malformed"),
    }
}

/// ICMP in IPv4 or ICMPv6 in IPv6, with its type read.
fn is_icmp(t: &Tuple) -> bool {
    match t.kind {
        TUPLE_IPV4 => t.proto == IPPROTO_ICMP,
        TUPLE_IPV6 => t.proto == IPPROTO_ICMPV6,
        _ => false,
    }
}

/// `192.168.15.1:40000 > 192.168.15.2:80 tcp [S]`, `... icmp echo id 7`,
/// `[fd00:15::1]:40000 > [fd00:15::2]:80 tcp [S]`.
pub fn tuple_text(t: &Tuple) -> String {
    let mut out = Vec::new();
    put_tuple_text(&mut out, t);
    into_string(out)
}

fn put_tuple_json(out: &mut Vec<u8>, t: &Tuple) {
    let ip = t.is_ipv4() || t.is_ipv6();
    let ports = has_ports(t);
    let icmp = is_icmp(t);
    let tcp = t.has_l4() && t.proto == IPPROTO_TCP;
    out.extend_from_slice(match t.kind {
        TUPLE_IPV4 => b"{\"kind\":\"ipv4\"",
        TUPLE_IPV4_OTHER => b"{\"kind\":\"ipv4_other\"",
        TUPLE_IPV6 => b"{\"kind\":\"ipv6\"",
        TUPLE_IPV6_OTHER => b"{\"kind\":\"ipv6_other\"",
        TUPLE_NOT_IP => b"{\"kind\":\"not_ip\"",
        _ => b"{\"kind\":\"malformed\"",
    });
    if ip {
        out.extend_from_slice(b",\"proto\":\"");
        // Protocol names are plain lower-case words: nothing to escape.
        put_proto(out, t.proto);
        out.push(b'"');
        out.extend_from_slice(b",\"src\":\"");
        Addr::of(t, t.saddr).put(out);
        out.extend_from_slice(b"\",\"dst\":\"");
        Addr::of(t, t.daddr).put(out);
        out.push(b'"');
    } else {
        out.extend_from_slice(b",\"proto\":null,\"src\":null,\"dst\":null");
    }
    if ports {
        out.extend_from_slice(b",\"sport\":");
        put_u64(out, u64::from(u16::from_be(t.sport)));
        out.extend_from_slice(b",\"dport\":");
        put_u64(out, u64::from(u16::from_be(t.dport)));
    } else {
        out.extend_from_slice(b",\"sport\":null,\"dport\":null");
    }
    if tcp {
        out.extend_from_slice(b",\"tcp_flags\":\"");
        put_tcp_flags(out, t.tcp_flags);
        out.push(b'"');
    } else {
        out.extend_from_slice(b",\"tcp_flags\":null");
    }
    if icmp {
        out.extend_from_slice(b",\"icmp_type\":");
        put_u64(out, u64::from(t.icmp_type));
    } else {
        out.extend_from_slice(b",\"icmp_type\":null");
    }
    out.extend_from_slice(b",\"icmp_id\":");
    if t.is_echo(true) {
        put_u64(out, u64::from(u16::from_be(t.sport)));
    } else if t.is_echo(false) {
        put_u64(out, u64::from(u16::from_be(t.dport)));
    } else {
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(b",\"ethertype\":");
    if t.kind == TUPLE_NOT_IP {
        put_u64(out, u64::from(t.saddr[0]));
    } else {
        out.extend_from_slice(b"null");
    }
    out.push(b'}');
}

/// One side of a rewrite, as [`nat_rewrites`] names it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct End {
    addr: Addr,
    /// A port (TCP/UDP) or an ICMP echo id, host order.
    port: Option<u16>,
    icmp_id: bool,
}

impl End {
    fn put(self, out: &mut Vec<u8>) {
        match (self.port, self.icmp_id) {
            (Some(port), false) => self.addr.put_with_port(out, port),
            (Some(id), true) => {
                self.addr.put(out);
                out.extend_from_slice(b" id ");
                put_u64(out, u64::from(id));
            }
            (None, _) => self.addr.put(out),
        }
    }
}

/// The rewrites between the tuple before and after a hop: (kind, from,
/// to), DNAT first. At most two, so no allocation.
fn rewrites(before: &Tuple, after: &Tuple) -> Rewrites {
    // A rewrite keeps the family (NAT64 is not netlab's).
    let same_family =
        (before.is_ipv4() && after.is_ipv4()) || (before.is_ipv6() && after.is_ipv6());
    if !same_family {
        return [None, None];
    }
    let ports = has_ports(before);
    let icmp = is_icmp(before);
    let end = |t: &Tuple, addr: [u32; 4], port: u16, show: bool, icmp_id: bool| End {
        addr: Addr::of(t, addr),
        port: show.then(|| u16::from_be(port)),
        icmp_id,
    };
    // An ICMP echo id moves with the source (SNAT) of a request and the
    // destination (un-SNAT) of a reply.
    let (s_from, s_to, d_from, d_to) = if icmp {
        let s_id = before.sport != after.sport && before.is_echo(true);
        let d_id = before.dport != after.dport && before.is_echo(false);
        (
            end(before, before.saddr, before.sport, s_id, true),
            end(after, after.saddr, after.sport, s_id, true),
            end(before, before.daddr, before.dport, d_id, true),
            end(after, after.daddr, after.dport, d_id, true),
        )
    } else {
        (
            end(before, before.saddr, before.sport, ports, false),
            end(after, after.saddr, after.sport, ports, false),
            end(before, before.daddr, before.dport, ports, false),
            end(after, after.daddr, after.dport, ports, false),
        )
    };
    let dnat = (d_from != d_to).then_some(("dnat", d_from, d_to));
    let snat = (s_from != s_to).then_some(("snat", s_from, s_to));
    match dnat {
        Some(_) => [dnat, snat],
        None => [snat, None],
    }
}

/// The rewrites between the tuple before and after a hop.
pub fn nat_rewrites(before: &Tuple, after: &Tuple) -> Vec<(&'static str, String, String)> {
    rewrites(before, after)
        .into_iter()
        .flatten()
        .map(|(kind, from, to)| {
            let text = |e: End| {
                let mut out = Vec::new();
                e.put(&mut out);
                into_string(out)
            };
            (kind, text(from), text(to))
        })
        .collect()
}

fn hook_program(hook: Hook) -> &'static str {
    match hook {
        Hook::Ingress => "trace_ingress",
        Hook::Egress => "trace_egress",
        Hook::NatIngress => "nat_ingress",
        Hook::NatEgress => "nat_egress",
        Hook::Kernel => "kernel",
    }
}

fn kernel_hook(header: &EventHeader) -> &'static str {
    match (header.kind, header.reason) {
        (EVENT_DELIVERED, FATE_CLONED) => "kfree_skb",
        (EVENT_DELIVERED, _) => "consume_skb",
        _ => "kfree_skb",
    }
}

fn event_type(header: &EventHeader) -> &'static str {
    match header.kind {
        EVENT_HOP => "hop",
        EVENT_DELIVERED => "delivered",
        _ => "kernel_drop",
    }
}

/// A hop's rewrites, as [`rewrites`] names them.
type Rewrites = [Option<(&'static str, End, End)>; 2];

fn put_action_text(out: &mut Vec<u8>, h: &EventHeader, ctx: &Context) {
    put_action(out, h, &rewrites(&h.before, &h.after), ctx);
}

fn put_action(out: &mut Vec<u8>, h: &EventHeader, nat: &Rewrites, ctx: &Context) {
    let action = Action::from_u8(h.action).unwrap_or(Action::Pass);
    let mut first = true;
    for &(kind, from, to) in nat.iter().flatten() {
        if !first {
            out.extend_from_slice(b", ");
        }
        first = false;
        out.extend_from_slice(if kind == "dnat" { b"DNAT " } else { b"SNAT " });
        from.put(out);
        out.extend_from_slice(" → ".as_bytes());
        to.put(out);
    }
    let sep = |out: &mut Vec<u8>, first: bool| {
        if !first {
            out.extend_from_slice(b", ");
        }
    };
    match action {
        Action::Pass if first => out.extend_from_slice(b"pass"),
        Action::Pass => {}
        Action::Redirect => {
            sep(out, first);
            out.extend_from_slice(b"redirect to ");
            ctx.put_iface_name(out, h.target_ifindex);
        }
        Action::Drop => {
            sep(out, first);
            out.extend_from_slice(b"drop (");
            if !ctx.put_reason(out, h) {
                out.extend_from_slice(b"dropped");
            }
            out.push(b')');
        }
        Action::KernelDrop => {
            sep(out, first);
            out.extend_from_slice(b"kernel drop ");
            if !ctx.put_reason(out, h) {
                out.push(b'?');
            }
            let mark = out.len();
            out.extend_from_slice(b" at ");
            if !ctx.put_location(out, h.location) {
                out.truncate(mark);
            }
        }
        Action::Delivered => {
            sep(out, first);
            if h.reason == FATE_CLONED {
                // The original's free reason is not a loss: say what it was.
                out.extend_from_slice(
                    b"delivered (a clone reached a socket; the original was freed: ",
                );
                match ctx.kernel_reasons.get(&h.kernel_reason) {
                    Some(name) => out.extend_from_slice(name.as_bytes()),
                    None => {
                        out.extend_from_slice(b"reason ");
                        put_u64(out, u64::from(h.kernel_reason));
                    }
                }
                out.push(b')');
            } else {
                out.extend_from_slice(b"delivered");
                let mark = out.len();
                out.extend_from_slice(b" at ");
                if !ctx.put_location(out, h.location) {
                    out.truncate(mark);
                }
            }
        }
    }
}

/// What the datapath did, in words: `pass`, `DNAT a → b`, `redirect to
/// host/x`, `drop (tcp_not_syn)`, `kernel drop NO_SOCKET at f+0x10`,
/// `delivered at f+0x10`.
pub fn action_text(event: &Event, ctx: &Context) -> String {
    let mut out = Vec::new();
    put_action_text(&mut out, &event.header, ctx);
    into_string(out)
}

pub fn trace_id(id: u64) -> String {
    format!("{id:016x}")
}

/// Civil date and time of day of a second since the epoch (UTC).
fn civil(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem / 60 % 60, rem % 60)
}

/// RFC 3339 UTC with nanoseconds.
pub fn rfc3339(epoch_ns: u64) -> String {
    let mut clock = Clock::default();
    let mut out = Vec::new();
    clock.put_rfc3339(&mut out, epoch_ns);
    into_string(out)
}

/// Formats times, remembering the text of the last second (events come
/// millions per second, seconds rarely change).
#[derive(Debug, Default)]
pub struct Clock {
    utc_second: Option<(u64, [u8; 20])>,
    local_second: Option<(u64, [u8; 9])>,
}

impl Clock {
    /// `2024-02-29T23:59:59.000000001Z`.
    fn put_rfc3339(&mut self, out: &mut Vec<u8>, epoch_ns: u64) {
        let secs = epoch_ns / 1_000_000_000;
        let prefix = match self.utc_second {
            Some((s, text)) if s == secs => text,
            _ => {
                let (y, mo, d, h, mi, s) = civil(secs as i64);
                let mut text = Vec::with_capacity(20);
                put_padded(&mut text, y.max(0) as u64, 4);
                text.push(b'-');
                put_padded(&mut text, mo as u64, 2);
                text.push(b'-');
                put_padded(&mut text, d as u64, 2);
                text.push(b'T');
                put_padded(&mut text, h as u64, 2);
                text.push(b':');
                put_padded(&mut text, mi as u64, 2);
                text.push(b':');
                put_padded(&mut text, s as u64, 2);
                text.push(b'.');
                let mut fixed = [b'0'; 20];
                let n = text.len().min(20);
                fixed[..n].copy_from_slice(&text[..n]);
                self.utc_second = Some((secs, fixed));
                fixed
            }
        };
        out.extend_from_slice(&prefix);
        put_padded(out, epoch_ns % 1_000_000_000, 9);
        out.push(b'Z');
    }

    /// Local time of day with nanoseconds: `12:04:05.123456789`.
    fn put_local(&mut self, out: &mut Vec<u8>, epoch_ns: u64) {
        let secs = epoch_ns / 1_000_000_000;
        let prefix = match self.local_second {
            Some((s, text)) if s == secs => text,
            _ => {
                let t = secs as libc::time_t;
                // SAFETY: localtime_r fills the zeroed struct from a valid time_t.
                let mut tm: libc::tm = unsafe { std::mem::zeroed() };
                // SAFETY: valid pointers to locals.
                let (h, m, s) = if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
                    let (_, _, _, h, m, s) = civil(secs as i64);
                    (h as u64, m as u64, s as u64)
                } else {
                    (tm.tm_hour as u64, tm.tm_min as u64, tm.tm_sec as u64)
                };
                let mut text = Vec::with_capacity(9);
                put_padded(&mut text, h, 2);
                text.push(b':');
                put_padded(&mut text, m, 2);
                text.push(b':');
                put_padded(&mut text, s, 2);
                text.push(b'.');
                let mut fixed = [b'0'; 9];
                let n = text.len().min(9);
                fixed[..n].copy_from_slice(&text[..n]);
                self.local_second = Some((secs, fixed));
                fixed
            }
        };
        out.extend_from_slice(&prefix);
        put_padded(out, epoch_ns % 1_000_000_000, 9);
    }
}

/// Appends one event as a JSON object and a newline (the documented fields).
pub fn write_event_json(out: &mut Vec<u8>, event: &Event, ctx: &Context, clock: &mut Clock) {
    let h = &event.header;
    let hook = Hook::from_u8(h.hook).unwrap_or(Hook::Kernel);
    let action = Action::from_u8(h.action).unwrap_or(Action::Pass);
    let epoch = ctx.epoch_ns(h.ts_ns);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(event_type(h).as_bytes());
    out.extend_from_slice(b"\",\"time\":\"");
    clock.put_rfc3339(out, epoch);
    out.extend_from_slice(b"\",\"time_ns\":");
    put_u64(out, epoch);
    out.extend_from_slice(b",\"trace_id\":\"");
    put_hex(out, h.trace_id, 16);
    out.extend_from_slice(b"\",");
    ctx.put_iface_json(out, h.ifindex);
    out.extend_from_slice(b",\"direction\":\"");
    out.extend_from_slice(hook.direction().as_bytes());
    out.extend_from_slice(b"\",\"hook\":\"");
    out.extend_from_slice(
        if hook == Hook::Kernel {
            kernel_hook(h)
        } else {
            hook_program(hook)
        }
        .as_bytes(),
    );
    out.extend_from_slice(b"\",\"len\":");
    put_u64(out, u64::from(h.skb_len));
    out.extend_from_slice(b",\"packet\":");
    let packet = out.len();
    put_tuple_json(out, &h.before);
    out.extend_from_slice(b",\"after\":");
    if h.after == h.before {
        // Most hops rewrite nothing: the same text again.
        out.extend_from_within(packet..out.len() - b",\"after\":".len());
    } else {
        put_tuple_json(out, &h.after);
    }
    out.extend_from_slice(b",\"action\":\"");
    out.extend_from_slice(action.name().as_bytes());
    out.extend_from_slice(b"\",\"reason\":");
    let mark = out.len();
    out.push(b'"');
    if ctx.put_reason(out, h) {
        out.push(b'"');
    } else {
        out.truncate(mark);
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(b",\"redirect_to\":");
    if action == Action::Redirect {
        out.push(b'"');
        ctx.put_iface_name(out, h.target_ifindex);
        out.push(b'"');
    } else {
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(b",\"nat\":[");
    for (i, (kind, from, to)) in rewrites(&h.before, &h.after)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"kind\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"from\":\"");
        from.put(out);
        out.extend_from_slice(b"\",\"to\":\"");
        to.put(out);
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(b"],\"location\":");
    let mark = out.len();
    out.push(b'"');
    if ctx.put_location(out, h.location) {
        out.push(b'"');
    } else {
        out.truncate(mark);
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(b"}\n");
}

/// Appends the loss record: `{"type":"lost","count":N,"total":T}`.
pub fn write_lost_json(out: &mut Vec<u8>, count: u64, total: u64) {
    out.extend_from_slice(b"{\"type\":\"lost\",\"count\":");
    put_u64(out, count);
    out.extend_from_slice(b",\"total\":");
    put_u64(out, total);
    out.extend_from_slice(b"}\n");
}

/// A hasher for trace ids, which are already random.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Collects events by trace id until a journey has been quiet for a while,
/// so that journeys print whole even when packets interleave. Journeys'
/// event lists are recycled, so a steady stream allocates nothing.
#[derive(Default)]
pub struct Grouper {
    open: HashMap<u64, (Instant, Vec<EventHeader>), BuildHasherDefault<IdHasher>>,
    /// Trace ids in the order their journeys began.
    order: VecDeque<u64>,
    spare: Vec<Vec<EventHeader>>,
}

impl Grouper {
    pub fn push(&mut self, header: EventHeader, now: Instant) {
        let spare = &mut self.spare;
        let order = &mut self.order;
        let entry = self.open.entry(header.trace_id).or_insert_with(|| {
            order.push_back(header.trace_id);
            (now, spare.pop().unwrap_or_default())
        });
        entry.0 = now;
        entry.1.push(header);
    }

    /// Journeys that are open.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Hands `each` the journeys quiet for `quiet` (all of them when
    /// `quiet` is zero), in the order they began, each with its events in
    /// time order. Stops at the first journey still active: journeys last
    /// microseconds, so one begun later is not quiet either.
    pub fn take_quiet(
        &mut self,
        now: Instant,
        quiet: Duration,
        mut each: impl FnMut(&[EventHeader]),
    ) {
        while let Some(&id) = self.order.front() {
            let Some((last, _)) = self.open.get(&id) else {
                self.order.pop_front();
                continue;
            };
            if now.saturating_duration_since(*last) < quiet {
                break;
            }
            self.order.pop_front();
            if let Some((_, mut events)) = self.open.remove(&id) {
                // Almost always in order already (one CPU's ring records).
                let order = |e: &EventHeader| (e.ts_ns, e.kind != EVENT_HOP);
                if !events.is_sorted_by_key(order) {
                    events.sort_unstable_by_key(order);
                }
                each(&events);
                events.clear();
                self.spare.push(events);
            }
        }
    }
}

/// The text forms as the reader drives them: events go in one at a time,
/// text comes out in [`TextSink::buf`], which the reader writes out and
/// clears (the same buffer again and again).
pub struct TextSink {
    /// JSON lines, or human journeys.
    json: bool,
    pub buf: Vec<u8>,
    clock: Clock,
    grouper: Grouper,
}

impl TextSink {
    pub fn new(json: bool) -> TextSink {
        TextSink {
            json,
            buf: Vec::with_capacity(1 << 20),
            clock: Clock::default(),
            grouper: Grouper::default(),
        }
    }

    pub fn push(&mut self, event: &Event, ctx: &Context, now: Instant) {
        if self.json {
            write_event_json(&mut self.buf, event, ctx, &mut self.clock);
        } else {
            self.grouper.push(event.header, now);
        }
    }

    /// Notes `count` new losses (`total` since the start).
    pub fn lost(&mut self, count: u64, total: u64) {
        if self.json {
            write_lost_json(&mut self.buf, count, total);
        } else {
            self.buf.extend_from_slice(b"!! ");
            put_u64(&mut self.buf, count);
            self.buf
                .extend_from_slice(b" events lost (ring buffer full; ");
            put_u64(&mut self.buf, total);
            self.buf.extend_from_slice(b" in total)\n");
        }
    }

    /// After a batch: formats the journeys quiet for `quiet` (human form).
    pub fn end_batch(&mut self, ctx: &Context, now: Instant, quiet: Duration) {
        let Self {
            buf,
            clock,
            grouper,
            ..
        } = self;
        grouper.take_quiet(now, quiet, |journey| {
            write_journey(buf, journey, ctx, clock)
        });
    }
}

fn paint_start(out: &mut Vec<u8>, ctx: &Context, code: &str) {
    if ctx.color {
        out.extend_from_slice(b"\x1b[");
        out.extend_from_slice(code.as_bytes());
        out.push(b'm');
    }
}

fn paint_end(out: &mut Vec<u8>, ctx: &Context) {
    if ctx.color {
        out.extend_from_slice(b"\x1b[0m");
    }
}

/// Pads what was written since `mark` with spaces to `width` characters.
fn pad(out: &mut Vec<u8>, mark: usize, width: usize) {
    let chars = out[mark..].iter().filter(|&&b| b & 0xc0 != 0x80).count();
    out.resize(out.len() + width.saturating_sub(chars), b' ');
}

fn put_micros(out: &mut Vec<u8>, ns: u64) {
    if ns >= 1_000_000 {
        let t = (ns + 500) / 1000;
        put_u64(out, t / 1000);
        out.push(b'.');
        put_padded(out, t % 1000, 3);
        out.extend_from_slice(b"ms");
    } else {
        let t = (ns + 50) / 100;
        put_u64(out, t / 10);
        out.push(b'.');
        put_u64(out, t % 10);
        out.extend_from_slice("µs".as_bytes());
    }
}

/// Appends one journey, human-readable:
///
/// ```text
/// trace 5f0c2a9e41d3b870  192.168.15.1 > 192.168.15.2 icmp echo request id 7, 4 hops, 61.2µs
///   12:04:05.123456789  red/veth-red             egress   192.168.15.1 > 192.168.15.2 icmp echo request id 7  98 B  pass
///   +14.1µs             host/veth-red-br         ingress  ...
///   +20.0µs             blue/veth-blue           kernel   ...  delivered at icmp_rcv+0x1f0
/// ```
///
/// A journey whose last event is a pass out of a host-side interface has
/// left the lab: a last line says so.
pub fn write_journey(out: &mut Vec<u8>, events: &[EventHeader], ctx: &Context, clock: &mut Clock) {
    let Some(first) = events.first() else {
        return;
    };
    let last = events.last().unwrap_or(first);
    let hops = events.iter().filter(|e| e.kind == EVENT_HOP).count();
    let span = last.ts_ns.saturating_sub(first.ts_ns);
    paint_start(out, ctx, "1");
    out.extend_from_slice(b"trace ");
    put_hex(out, first.trace_id, 16);
    paint_end(out, ctx);
    out.extend_from_slice(b"  ");
    put_tuple_text(out, &first.before);
    out.extend_from_slice(b", ");
    put_u64(out, hops as u64);
    out.extend_from_slice(if hops == 1 { b" hop, " } else { b" hops, " });
    put_micros(out, span);
    out.push(b'\n');
    let mut previous: Option<u64> = None;
    for h in events {
        out.extend_from_slice(b"  ");
        let mark = out.len();
        match previous {
            None => clock.put_local(out, ctx.epoch_ns(h.ts_ns)),
            Some(prev) => {
                out.push(b'+');
                put_micros(out, h.ts_ns.saturating_sub(prev));
            }
        }
        pad(out, mark, 20);
        previous = Some(h.ts_ns);
        let hook = Hook::from_u8(h.hook).unwrap_or(Hook::Kernel);
        let mark = out.len();
        ctx.put_iface_name(out, h.ifindex);
        pad(out, mark, 24);
        out.push(b' ');
        let mark = out.len();
        out.extend_from_slice(hook.direction().as_bytes());
        pad(out, mark, 8);
        out.push(b' ');
        put_tuple_text(out, &h.before);
        out.extend_from_slice(b"  ");
        if h.kind == EVENT_HOP {
            put_u64(out, u64::from(h.skb_len));
            out.extend_from_slice(b" B");
        }
        out.extend_from_slice(b"  ");
        let action = Action::from_u8(h.action);
        let nat = rewrites(&h.before, &h.after);
        let colour = match action {
            Some(Action::Drop | Action::KernelDrop) => Some("31"),
            Some(Action::Redirect) => Some("35"),
            Some(Action::Delivered) => Some("32"),
            _ if nat[0].is_some() => Some("33"),
            _ => None,
        };
        if let Some(code) = colour {
            paint_start(out, ctx, code);
        }
        put_action(out, h, &nat, ctx);
        if colour.is_some() {
            paint_end(out, ctx);
        }
        out.push(b'\n');
    }
    let left = last.kind == EVENT_HOP
        && last.action == Action::Pass as u8
        && Hook::from_u8(last.hook).is_some_and(|hook| hook == Hook::NatEgress);
    if left {
        out.extend_from_slice(b"  ");
        let mark = out.len();
        pad(out, mark, 20);
        out.extend_from_slice(b"left the lab (forwarded out of ");
        ctx.put_iface_name(out, last.ifindex);
        out.extend_from_slice(b")\n");
    }
}

/// One journey as a string (see [`write_journey`]).
pub fn render_journey(events: &[EventHeader], ctx: &Context) -> String {
    let mut out = Vec::new();
    write_journey(&mut out, events, ctx, &mut Clock::default());
    into_string(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    fn tcp(s: [u8; 4], sp: u16, d: [u8; 4], dp: u16) -> Tuple {
        Tuple {
            saddr: [wire(s), 0, 0, 0],
            daddr: [wire(d), 0, 0, 0],
            sport: sp.to_be(),
            dport: dp.to_be(),
            proto: IPPROTO_TCP,
            tcp_flags: 0x02,
            icmp_type: 0,
            kind: TUPLE_IPV4,
        }
    }

    /// A hop that passed the packet, from `before` to `after`.
    fn hop(before: Tuple, after: Tuple) -> Event<'static> {
        Event {
            header: EventHeader {
                kind: EVENT_HOP,
                action: Action::Pass as u8,
                before,
                after,
                ..EventHeader::default()
            },
            data: &[],
        }
    }

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: reading a plain-data value's bytes.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn decodes_hops_and_refuses_garbage() {
        let mut hop = HopEvent {
            header: EventHeader {
                kind: EVENT_HOP,
                hook: Hook::NatIngress as u8,
                action: Action::Pass as u8,
                reason: REASON_NONE,
                cap_len: 3,
                ..EventHeader::default()
            },
            data: [0; SNAP_MAX],
        };
        hop.data[..3].copy_from_slice(&[1, 2, 3]);
        let bytes = bytes_of(&hop);
        let event = decode(&bytes).unwrap();
        assert_eq!(event.data, [1, 2, 3]);
        assert!(decode(&bytes_of(&hop)[..40]).is_none());
        assert!(decode(&bytes_of(&hop)[..100]).is_none());
        hop.header.cap_len = 0;
        assert!(decode(&bytes_of(&hop.header)).is_some_and(|e| e.data.is_empty()));
        hop.header.cap_len = SNAP_MAX as u32 + 1;
        assert!(decode(&bytes_of(&hop)).is_none());
        hop.header.cap_len = 0;
        hop.header.kind = 9;
        assert!(decode(&bytes_of(&hop)).is_none());
        let drop = DropEvent {
            header: EventHeader {
                kind: EVENT_KERNEL_DROP,
                ..EventHeader::default()
            },
        };
        assert!(decode(&bytes_of(&drop)).is_some_and(|e| !e.is_hop()));
    }

    #[test]
    fn names_rewrites() {
        let before = tcp([198, 18, 0, 2], 40000, [198, 18, 0, 1], 8080);
        let after = tcp([198, 18, 0, 2], 40000, [192, 168, 15, 2], 80);
        assert_eq!(
            nat_rewrites(&before, &after),
            [(
                "dnat",
                "198.18.0.1:8080".to_owned(),
                "192.168.15.2:80".to_owned()
            )]
        );
        assert_eq!(
            nat_rewrites(&after, &before),
            [(
                "dnat",
                "192.168.15.2:80".to_owned(),
                "198.18.0.1:8080".to_owned()
            )]
        );
        assert!(nat_rewrites(&before, &before).is_empty());
        let event = hop(before, after);
        assert_eq!(
            action_text(&event, &Context::default()),
            "DNAT 198.18.0.1:8080 → 192.168.15.2:80"
        );
        assert_eq!(
            tuple_text(&before),
            "198.18.0.2:40000 > 198.18.0.1:8080 tcp [S]"
        );
    }

    /// An IPv6 address as the tuple holds it.
    fn wire6(a: &str) -> [u32; 4] {
        let octets = a.parse::<Ipv6Addr>().unwrap().octets();
        std::array::from_fn(|i| u32::from_ne_bytes(octets[4 * i..4 * i + 4].try_into().unwrap()))
    }

    fn ipv6(s: &str, sp: u16, d: &str, dp: u16, proto: u8) -> Tuple {
        Tuple {
            saddr: wire6(s),
            daddr: wire6(d),
            sport: sp.to_be(),
            dport: dp.to_be(),
            proto,
            tcp_flags: 0x02,
            icmp_type: 0,
            kind: TUPLE_IPV6,
        }
    }

    #[test]
    fn ipv6_tuples_rewrites_and_json() {
        let before = ipv6("2001:2::2", 40000, "2001:2::1", 8080, IPPROTO_TCP);
        let after = ipv6("2001:2::2", 40000, "fd00:15::2", 80, IPPROTO_TCP);
        assert_eq!(
            tuple_text(&before),
            "[2001:2::2]:40000 > [2001:2::1]:8080 tcp [S]"
        );
        let one =
            |kind: &'static str, from: &str, to: &str| vec![(kind, from.to_owned(), to.to_owned())];
        assert_eq!(
            nat_rewrites(&before, &after),
            one("dnat", "[2001:2::1]:8080", "[fd00:15::2]:80")
        );
        // An echo request masqueraded: the id moves with the source.
        let mut ping = ipv6("fd00:15::1", 7, "2001:2::2", 0, IPPROTO_ICMPV6);
        ping.icmp_type = 128;
        let mut out = ping;
        out.saddr = wire6("2001:2::1");
        out.sport = 9u16.to_be();
        assert_eq!(
            tuple_text(&ping),
            "fd00:15::1 > 2001:2::2 icmp6 echo request id 7"
        );
        assert_eq!(
            nat_rewrites(&ping, &out),
            one("snat", "fd00:15::1 id 7", "2001:2::1 id 9")
        );
        // Neighbour discovery: a type, no id.
        let mut ns = ipv6("fe80::1", 0, "ff02::1:ff00:2", 0, IPPROTO_ICMPV6);
        ns.icmp_type = 135;
        assert_eq!(tuple_text(&ns), "fe80::1 > ff02::1:ff00:2 icmp6 type 135");
        let other = Tuple {
            kind: TUPLE_IPV6_OTHER,
            proto: IPPROTO_UDP,
            ..ipv6("fd00:15::1", 0, "fd00:15::2", 0, IPPROTO_UDP)
        };
        assert_eq!(tuple_text(&other), "fd00:15::1 > fd00:15::2 udp (fragment)");
        // Families never make a rewrite.
        let v4 = tcp([198, 18, 0, 2], 40000, [198, 18, 0, 1], 8080);
        assert!(nat_rewrites(&v4, &before).is_empty());
        let event = hop(before, after);
        let mut json = Vec::new();
        write_event_json(
            &mut json,
            &event,
            &Context::default(),
            &mut Clock::default(),
        );
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["packet"]["kind"], "ipv6");
        assert_eq!(v["packet"]["src"], "2001:2::2");
        assert_eq!(v["after"]["dst"], "fd00:15::2");
        assert_eq!(v["after"]["dport"], 80);
        assert_eq!(v["nat"][0]["to"], "[fd00:15::2]:80");
        let mut json = Vec::new();
        let echo = Event {
            header: EventHeader {
                before: ping,
                after: ping,
                ..event.header
            },
            data: &[],
        };
        write_event_json(&mut json, &echo, &Context::default(), &mut Clock::default());
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["packet"]["proto"], "icmp6");
        assert_eq!(v["packet"]["icmp_type"], 128);
        assert_eq!(v["packet"]["icmp_id"], 7);
        assert!(v["packet"]["sport"].is_null());
        let arp = Tuple {
            kind: TUPLE_NOT_IP,
            saddr: [0x0806, 0, 0, 0],
            ..Tuple::default()
        };
        assert_eq!(tuple_text(&arp), "non-IP (ethertype 0x0806)");
    }

    #[test]
    fn json_has_the_documented_fields() {
        let mut ctx = Context::default();
        ctx.add_iface(7, "host", "nl-uplink");
        ctx.kernel_reasons.insert(3, "NO_SOCKET".to_owned());
        let event = Event {
            header: EventHeader {
                kind: EVENT_KERNEL_DROP,
                hook: Hook::Kernel as u8,
                action: Action::KernelDrop as u8,
                kernel_reason: 3,
                ifindex: 7,
                trace_id: 0xabc,
                before: tcp([1, 2, 3, 4], 1, [5, 6, 7, 8], 2),
                after: tcp([1, 2, 3, 4], 1, [5, 6, 7, 8], 2),
                ..EventHeader::default()
            },
            data: &[],
        };
        let mut out = Vec::new();
        write_event_json(&mut out, &event, &ctx, &mut Clock::default());
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "kernel_drop");
        assert_eq!(v["trace_id"], "0000000000000abc");
        assert_eq!(v["netns"], "host");
        assert_eq!(v["iface"], "nl-uplink");
        assert_eq!(v["reason"], "NO_SOCKET");
        assert_eq!(v["packet"]["dport"], 2);
        assert_eq!(v["packet"]["tcp_flags"], "S");
        assert_eq!(v["nat"], serde_json::json!([]));
        assert!(v["location"].is_null() && v["redirect_to"].is_null());
        assert_eq!(v["after"]["src"], "1.2.3.4");
        // A rewrite, a netlab drop and a delivered event.
        let mut hop = event;
        hop.header.kind = EVENT_HOP;
        hop.header.hook = Hook::NatIngress as u8;
        hop.header.action = Action::Drop as u8;
        hop.header.reason = Stat::ALL[0] as u8;
        hop.header.after = tcp([1, 2, 3, 4], 1, [9, 9, 9, 9], 80);
        let mut out = Vec::new();
        write_event_json(&mut out, &hop, &ctx, &mut Clock::default());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["nat"][0]["to"], "9.9.9.9:80");
        assert_eq!(v["reason"], Stat::ALL[0].name());
        assert_eq!(v["hook"], "nat_ingress");
        hop.header.kind = EVENT_DELIVERED;
        hop.header.after = hop.header.before;
        hop.header.hook = Hook::Kernel as u8;
        hop.header.action = Action::Delivered as u8;
        hop.header.reason = FATE_CLONED;
        let mut out = Vec::new();
        write_event_json(&mut out, &hop, &ctx, &mut Clock::default());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "delivered");
        assert_eq!(v["hook"], "kfree_skb");
        assert!(v["reason"].is_null());
        assert_eq!(
            action_text(&hop, &ctx),
            "delivered (a clone reached a socket; the original was freed: NO_SOCKET)"
        );
    }

    #[test]
    fn numbers_and_times() {
        let mut out = Vec::new();
        put_u64(&mut out, 0);
        out.push(b' ');
        put_u64(&mut out, u64::MAX);
        out.push(b' ');
        put_hex(&mut out, 0xabc, 16);
        out.push(b' ');
        put_micros(&mut out, 14_149);
        out.push(b' ');
        put_micros(&mut out, 1_234_567);
        out.push(b' ');
        put_padded(&mut out, 1234, 9);
        out.push(b' ');
        put_padded(&mut out, 0, 2);
        for n in [9, 10, 99, 100, 101, 999_999] {
            out.push(b' ');
            put_u64(&mut out, n);
        }
        for (n, width) in [(0, 1), (0x1f, 2), (0x1f, 4), (u64::MAX, 1), (0x806, 4)] {
            out.push(b' ');
            put_hex(&mut out, n, width);
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "0 18446744073709551615 0000000000000abc 14.1µs 1.235ms 000001234 00 \
             9 10 99 100 101 999999 0 1f 001f ffffffffffffffff 0806"
        );
        for (octets, text) in [
            ([0, 0, 0, 0], "0.0.0.0"),
            ([255, 255, 255, 255], "255.255.255.255"),
            ([10, 0, 100, 9], "10.0.100.9"),
            ([192, 168, 15, 2], "192.168.15.2"),
        ] {
            let mut out = Vec::new();
            put_ipv4(&mut out, wire(octets));
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
        let mut clock = Clock::default();
        let mut out = Vec::new();
        clock.put_rfc3339(&mut out, 1_709_251_199_000_000_001);
        clock.put_rfc3339(&mut out, 1_709_251_199_000_000_002);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2024-02-29T23:59:59.000000001Z2024-02-29T23:59:59.000000002Z"
        );
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(1_709_251_199_000_000_001),
            "2024-02-29T23:59:59.000000001Z"
        );
    }

    #[test]
    fn grouper_orders_and_waits_for_quiet() {
        let mut g = Grouper::default();
        let start = Instant::now();
        let ev = |id, ts| EventHeader {
            kind: EVENT_HOP,
            trace_id: id,
            ts_ns: ts,
            ..EventHeader::default()
        };
        let take = |g: &mut Grouper, now, quiet| {
            let mut journeys: Vec<Vec<EventHeader>> = Vec::new();
            g.take_quiet(now, quiet, |events| journeys.push(events.to_vec()));
            journeys
        };
        g.push(ev(1, 20), start);
        g.push(ev(2, 15), start);
        g.push(ev(1, 10), start);
        assert!(take(&mut g, start, Duration::from_millis(50)).is_empty());
        let later = start + Duration::from_millis(60);
        let journeys = take(&mut g, later, Duration::from_millis(50));
        assert_eq!(journeys.len(), 2);
        assert_eq!(journeys[0][0].ts_ns, 10);
        assert_eq!(journeys[0][1].ts_ns, 20);
        assert_eq!(journeys[1][0].trace_id, 2);
        assert!(g.is_empty());
        // Lists are recycled: a new journey reuses one.
        g.push(ev(3, 30), later);
        assert_eq!(take(&mut g, later, Duration::ZERO).len(), 1);
    }
}
