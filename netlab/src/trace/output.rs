//! Decoding ring-buffer records into [`Event`]s, and the two text forms:
//! human (one journey per packet, hops in order with the time between
//! them) and JSON (one object per event).
//!
//! ## JSON fields (stable)
//!
//! Hop and kernel-drop events: `{"type": "hop" | "kernel_drop",
//! "time": RFC 3339 UTC with ns, "time_ns": ns since the epoch, "trace_id":
//! 16 hex digits, "netns": namespace or "host", "iface": name, "ifindex",
//! "direction": "ingress" | "egress" | "kernel", "hook": the program,
//! "len": bytes, "packet": TUPLE (as the packet reached the hop), "after":
//! TUPLE (as it left the hop; kernel drops: as it left its last hop),
//! "action": "pass" | "redirect" | "drop" | "kernel_drop", "reason":
//! netlab's or the kernel's drop reason or null, "redirect_to": "ns/if" or
//! null, "nat": [{"kind": "dnat" | "snat", "from": "ADDR:PORT", "to":
//! "ADDR:PORT"}], "location": kernel function of a kernel drop or null}.
//!
//! TUPLE: `{"kind": "ipv4" | "ipv4_other" | "not_ipv4" | "malformed",
//! "proto": "tcp" | "udp" | "icmp" | number, "src", "dst", "sport", "dport",
//! "tcp_flags": "SA..." , "icmp_type", "ethertype"}` (fields that do not
//! apply are null).
//!
//! Losses: `{"type": "lost", "count": new losses, "total": since start}`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use netlab_common::{
    nat::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Stat},
    trace::{
        Action, DropEvent, EVENT_HOP, EVENT_KERNEL_DROP, EventHeader, Hook, HopEvent, REASON_NONE,
        SNAP_MAX, TUPLE_IPV4, TUPLE_IPV4_OTHER, TUPLE_MALFORMED, TUPLE_NOT_IPV4, Tuple,
    },
};
use serde_json::{Value, json};

use crate::datapath::ebpf::ip_proto_name;

/// One decoded record.
#[derive(Clone, Debug)]
pub struct Event {
    pub header: EventHeader,
    /// Packet bytes (hops only, up to the snap length).
    pub data: Vec<u8>,
}

impl Event {
    pub fn is_hop(&self) -> bool {
        self.header.kind == EVENT_HOP
    }
}

/// Decodes one ring-buffer record; `None` for anything malformed (which
/// the reader counts), never a guess.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    let header_len = size_of::<EventHeader>();
    if bytes.len() < header_len {
        return None;
    }
    // SAFETY: EventHeader is plain `#[repr(C)]` integers (any bit pattern is
    // valid) and `bytes` holds at least its size; read_unaligned copies.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    match header.kind {
        EVENT_HOP if bytes.len() >= size_of::<HopEvent>() => {
            let cap = header.cap_len as usize;
            if cap > SNAP_MAX || Hook::from_u8(header.hook).is_none() {
                return None;
            }
            Action::from_u8(header.action)?;
            Some(Event {
                header,
                data: bytes[header_len..header_len + cap].to_vec(),
            })
        }
        EVENT_KERNEL_DROP if bytes.len() >= size_of::<DropEvent>() => Some(Event {
            header,
            data: Vec::new(),
        }),
        _ => None,
    }
}

/// What names events need: interfaces, drop reasons, kernel symbols, and
/// the clock.
#[derive(Debug, Default)]
pub struct Context {
    /// ifindex → (namespace or "host", interface).
    pub ifaces: BTreeMap<u32, (String, String)>,
    /// The kernel's `enum skb_drop_reason`, from BTF.
    pub kernel_reasons: BTreeMap<u32, String>,
    /// Sorted kernel symbols (address, name), loaded on the first drop.
    pub symbols: Option<Vec<(u64, String)>>,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, ns.
    pub realtime_offset_ns: i128,
    pub color: bool,
}

impl Context {
    pub fn place_iface(&self, ifindex: u32) -> (String, String) {
        self.ifaces
            .get(&ifindex)
            .cloned()
            .unwrap_or_else(|| ("?".to_owned(), format!("if{ifindex}")))
    }

    pub fn iface_name(&self, ifindex: u32) -> String {
        let (place, iface) = self.place_iface(ifindex);
        format!("{place}/{iface}")
    }

    pub fn epoch_ns(&self, ktime_ns: u64) -> u64 {
        (i128::from(ktime_ns) + self.realtime_offset_ns).max(0) as u64
    }

    fn reason(&self, header: &EventHeader) -> Option<String> {
        match Action::from_u8(header.action)? {
            Action::Drop if header.reason != REASON_NONE => {
                Some(Stat::ALL.get(usize::from(header.reason)).map_or_else(
                    || format!("reason {}", header.reason),
                    |s| s.name().to_owned(),
                ))
            }
            Action::Drop => Some("dropped".to_owned()),
            Action::KernelDrop => Some(
                self.kernel_reasons
                    .get(&header.kernel_reason)
                    .cloned()
                    .unwrap_or_else(|| format!("reason {}", header.kernel_reason)),
            ),
            _ => None,
        }
    }

    fn location(&self, address: u64) -> Option<String> {
        if address == 0 {
            return None;
        }
        let symbols = self.symbols.as_ref()?;
        let at = symbols.partition_point(|(a, _)| *a <= address);
        let (start, name) = symbols.get(at.checked_sub(1)?)?;
        Some(format!("{name}+{:#x}", address - start))
    }
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

/// The protocol's name, or its number when it has none here.
fn proto_name(proto: u8) -> String {
    ip_proto_name(proto).map_or_else(|| proto.to_string(), str::to_owned)
}

fn addr(wire: u32) -> Ipv4Addr {
    Ipv4Addr::from(wire.to_ne_bytes())
}

pub fn tcp_flags(flags: u8) -> String {
    const NAMES: [(u8, char); 8] = [
        (0x02, 'S'),
        (0x10, 'A'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x20, 'U'),
        (0x40, 'E'),
        (0x80, 'C'),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, c)| *c)
        .collect()
}

fn has_ports(t: &Tuple) -> bool {
    t.kind == TUPLE_IPV4 && (t.proto == IPPROTO_TCP || t.proto == IPPROTO_UDP)
}

fn endpoint(a: u32, port: u16, ports: bool) -> String {
    if ports {
        format!("{}:{}", addr(a), u16::from_be(port))
    } else {
        addr(a).to_string()
    }
}

/// `192.168.15.1:40000 > 192.168.15.2:80 tcp [S]`, `... icmp echo id 7`.
pub fn tuple_text(t: &Tuple) -> String {
    match t.kind {
        TUPLE_NOT_IPV4 => format!("non-IPv4 (ethertype {:#06x})", t.saddr),
        TUPLE_MALFORMED => "malformed".to_owned(),
        TUPLE_IPV4 | TUPLE_IPV4_OTHER => {
            let ports = has_ports(t);
            let mut text = format!(
                "{} > {} {}",
                endpoint(t.saddr, t.sport, ports),
                endpoint(t.daddr, t.dport, ports),
                proto_name(t.proto)
            );
            if t.kind == TUPLE_IPV4_OTHER && (t.proto == IPPROTO_TCP || t.proto == IPPROTO_UDP) {
                text.push_str(" (fragment)");
            } else if t.kind == TUPLE_IPV4 && t.proto == IPPROTO_TCP {
                let _ = write!(text, " [{}]", tcp_flags(t.tcp_flags));
            } else if t.kind == TUPLE_IPV4 && t.proto == IPPROTO_ICMP {
                let _ = match t.icmp_type {
                    8 => write!(text, " echo request id {}", u16::from_be(t.sport)),
                    0 => write!(text, " echo reply id {}", u16::from_be(t.dport)),
                    other => write!(text, " type {other}"),
                };
            }
            text
        }
        _ => "-".to_owned(),
    }
}

fn tuple_json(t: &Tuple) -> Value {
    let ipv4 = t.kind == TUPLE_IPV4 || t.kind == TUPLE_IPV4_OTHER;
    let ports = has_ports(t);
    let icmp = t.kind == TUPLE_IPV4 && t.proto == IPPROTO_ICMP;
    let tcp = t.kind == TUPLE_IPV4 && t.proto == IPPROTO_TCP;
    json!({
        "kind": match t.kind {
            TUPLE_IPV4 => "ipv4",
            TUPLE_IPV4_OTHER => "ipv4_other",
            TUPLE_NOT_IPV4 => "not_ipv4",
            _ => "malformed",
        },
        "proto": if ipv4 { json!(proto_name(t.proto)) } else { Value::Null },
        "src": if ipv4 { json!(addr(t.saddr).to_string()) } else { Value::Null },
        "dst": if ipv4 { json!(addr(t.daddr).to_string()) } else { Value::Null },
        "sport": if ports { json!(u16::from_be(t.sport)) } else { Value::Null },
        "dport": if ports { json!(u16::from_be(t.dport)) } else { Value::Null },
        "tcp_flags": if tcp { json!(tcp_flags(t.tcp_flags)) } else { Value::Null },
        "icmp_type": if icmp { json!(t.icmp_type) } else { Value::Null },
        "icmp_id": match (icmp, t.icmp_type) {
            (true, 8) => json!(u16::from_be(t.sport)),
            (true, 0) => json!(u16::from_be(t.dport)),
            _ => Value::Null,
        },
        "ethertype": if t.kind == TUPLE_NOT_IPV4 { json!(t.saddr) } else { Value::Null },
    })
}

/// The rewrites between the tuple before and after a hop.
pub fn nat_rewrites(before: &Tuple, after: &Tuple) -> Vec<(&'static str, String, String)> {
    let ipv4 = |t: &Tuple| t.kind == TUPLE_IPV4 || t.kind == TUPLE_IPV4_OTHER;
    if !ipv4(before) || !ipv4(after) {
        return Vec::new();
    }
    let ports = has_ports(before);
    let icmp = before.kind == TUPLE_IPV4 && before.proto == IPPROTO_ICMP;
    let mut out = Vec::new();
    // An ICMP echo id moves with the source (SNAT) of a request and the
    // destination (un-SNAT) of a reply.
    let (s_from, s_to, d_from, d_to) = if icmp {
        (
            if before.sport != after.sport && before.icmp_type == 8 {
                format!("{} id {}", addr(before.saddr), u16::from_be(before.sport))
            } else {
                addr(before.saddr).to_string()
            },
            if before.sport != after.sport && before.icmp_type == 8 {
                format!("{} id {}", addr(after.saddr), u16::from_be(after.sport))
            } else {
                addr(after.saddr).to_string()
            },
            if before.dport != after.dport && before.icmp_type == 0 {
                format!("{} id {}", addr(before.daddr), u16::from_be(before.dport))
            } else {
                addr(before.daddr).to_string()
            },
            if before.dport != after.dport && before.icmp_type == 0 {
                format!("{} id {}", addr(after.daddr), u16::from_be(after.dport))
            } else {
                addr(after.daddr).to_string()
            },
        )
    } else {
        (
            endpoint(before.saddr, before.sport, ports),
            endpoint(after.saddr, after.sport, ports),
            endpoint(before.daddr, before.dport, ports),
            endpoint(after.daddr, after.dport, ports),
        )
    };
    if d_from != d_to {
        out.push(("dnat", d_from, d_to));
    }
    if s_from != s_to {
        out.push(("snat", s_from, s_to));
    }
    out
}

fn hook_program(hook: Hook) -> &'static str {
    match hook {
        Hook::Ingress => "count_ingress",
        Hook::Egress => "count_egress",
        Hook::NatIngress => "nat_ingress",
        Hook::NatEgress => "nat_egress",
        Hook::Kernel => "kfree_skb",
    }
}

/// What the datapath did, in words: `pass`, `DNAT a → b`, `redirect to
/// host/x`, `drop (tcp_not_syn)`, `kernel drop NO_SOCKET at f+0x10`.
pub fn action_text(event: &Event, ctx: &Context) -> String {
    let h = &event.header;
    let action = Action::from_u8(h.action).unwrap_or(Action::Pass);
    let mut parts = Vec::new();
    for (kind, from, to) in nat_rewrites(&h.before, &h.after) {
        parts.push(format!("{} {from} → {to}", kind.to_uppercase()));
    }
    match action {
        Action::Pass if parts.is_empty() => parts.push("pass".to_owned()),
        Action::Pass => {}
        Action::Redirect => parts.push(format!("redirect to {}", ctx.iface_name(h.target_ifindex))),
        Action::Drop => parts.push(format!(
            "drop ({})",
            ctx.reason(h).unwrap_or_else(|| "dropped".into())
        )),
        Action::KernelDrop => {
            let mut text = format!(
                "kernel drop {}",
                ctx.reason(h).unwrap_or_else(|| "?".into())
            );
            if let Some(location) = ctx.location(h.location) {
                let _ = write!(text, " at {location}");
            }
            parts.push(text);
        }
    }
    parts.join(", ")
}

pub fn trace_id(id: u64) -> String {
    format!("{id:016x}")
}

/// RFC 3339 UTC with nanoseconds.
pub fn rfc3339(epoch_ns: u64) -> String {
    let secs = (epoch_ns / 1_000_000_000) as i64;
    let nanos = epoch_ns % 1_000_000_000;
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
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub fn event_json(event: &Event, ctx: &Context) -> Value {
    let h = &event.header;
    let hook = Hook::from_u8(h.hook).unwrap_or(Hook::Kernel);
    let action = Action::from_u8(h.action).unwrap_or(Action::Pass);
    let (netns, iface) = ctx.place_iface(h.ifindex);
    let epoch = ctx.epoch_ns(h.ts_ns);
    let nat: Vec<Value> = nat_rewrites(&h.before, &h.after)
        .into_iter()
        .map(|(kind, from, to)| json!({"kind": kind, "from": from, "to": to}))
        .collect();
    json!({
        "type": if event.is_hop() { "hop" } else { "kernel_drop" },
        "time": rfc3339(epoch),
        "time_ns": epoch,
        "trace_id": trace_id(h.trace_id),
        "netns": netns,
        "iface": iface,
        "ifindex": h.ifindex,
        "direction": hook.direction(),
        "hook": hook_program(hook),
        "len": h.skb_len,
        "packet": tuple_json(&h.before),
        "after": tuple_json(&h.after),
        "action": action.name(),
        "reason": ctx.reason(h),
        "redirect_to": (action == Action::Redirect).then(|| ctx.iface_name(h.target_ifindex)),
        "nat": nat,
        "location": ctx.location(h.location),
    })
}

pub fn lost_json(count: u64, total: u64) -> Value {
    json!({"type": "lost", "count": count, "total": total})
}

/// Collects events by trace id until a journey has been quiet for a while,
/// so that journeys print whole even when packets interleave.
#[derive(Debug, Default)]
pub struct Grouper {
    open: BTreeMap<u64, (Instant, Vec<Event>)>,
}

impl Grouper {
    pub fn push(&mut self, event: Event, now: Instant) {
        let entry = self
            .open
            .entry(event.header.trace_id)
            .or_insert_with(|| (now, Vec::new()));
        entry.0 = now;
        entry.1.push(event);
    }

    /// Journeys quiet for `quiet`, oldest first (all of them when `quiet`
    /// is zero), each with its events in time order.
    pub fn take_quiet(&mut self, now: Instant, quiet: Duration) -> Vec<Vec<Event>> {
        let done: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, (last, _))| now.saturating_duration_since(*last) >= quiet)
            .map(|(id, _)| *id)
            .collect();
        let mut journeys: Vec<Vec<Event>> = done
            .into_iter()
            .filter_map(|id| self.open.remove(&id))
            .map(|(_, mut events)| {
                events.sort_by_key(|e| (e.header.ts_ns, !e.is_hop()));
                events
            })
            .collect();
        journeys.sort_by_key(|events| events.first().map(|e| e.header.ts_ns));
        journeys
    }
}

fn paint(ctx: &Context, code: &str, text: &str) -> String {
    if ctx.color {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// One journey, human-readable:
///
/// ```text
/// trace 5f0c2a9e41d3b870  icmp 192.168.15.1 > 192.168.15.2, 4 hops, 61.2µs
///   12:04:05.123456789  red/veth-red         egress   192.168.15.1 > 192.168.15.2 icmp echo request id 7  98 B  pass
///   +14.1µs             host/veth-red-br     ingress  ...
/// ```
pub fn render_journey(events: &[Event], ctx: &Context) -> String {
    let Some(first) = events.first() else {
        return String::new();
    };
    let last = events.last().unwrap_or(first);
    let hops = events.iter().filter(|e| e.is_hop()).count();
    let span = last.header.ts_ns.saturating_sub(first.header.ts_ns);
    let mut out = format!(
        "{}  {}, {hops} hop{}, {}\n",
        paint(
            ctx,
            "1",
            &format!("trace {}", trace_id(first.header.trace_id))
        ),
        tuple_text(&first.header.before),
        if hops == 1 { "" } else { "s" },
        micros(span)
    );
    let mut previous: Option<u64> = None;
    for event in events {
        let h = &event.header;
        let when = match previous {
            None => clock(ctx.epoch_ns(h.ts_ns)),
            Some(prev) => format!("+{}", micros(h.ts_ns.saturating_sub(prev))),
        };
        previous = Some(h.ts_ns);
        let hook = Hook::from_u8(h.hook).unwrap_or(Hook::Kernel);
        let action = action_text(event, ctx);
        let action = match Action::from_u8(h.action) {
            Some(Action::Drop | Action::KernelDrop) => paint(ctx, "31", &action),
            Some(Action::Redirect) => paint(ctx, "35", &action),
            _ if action != "pass" => paint(ctx, "33", &action),
            _ => action,
        };
        let len = if event.is_hop() {
            format!("{} B", h.skb_len)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {when:<20}{:<24} {:<8} {}  {len}  {action}",
            ctx.iface_name(h.ifindex),
            hook.direction(),
            tuple_text(&h.before),
        );
    }
    out
}

fn micros(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.3}ms", ns as f64 / 1e6)
    } else {
        format!("{:.1}µs", ns as f64 / 1e3)
    }
}

/// Local time of day with nanoseconds.
fn clock(epoch_ns: u64) -> String {
    let secs = (epoch_ns / 1_000_000_000) as libc::time_t;
    // SAFETY: localtime_r fills the zeroed struct from a valid time_t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to locals.
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return rfc3339(epoch_ns);
    }
    format!(
        "{:02}:{:02}:{:02}.{:09}",
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        epoch_ns % 1_000_000_000
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn wire(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    fn tcp(s: [u8; 4], sp: u16, d: [u8; 4], dp: u16) -> Tuple {
        Tuple {
            saddr: wire(s),
            daddr: wire(d),
            sport: sp.to_be(),
            dport: dp.to_be(),
            proto: IPPROTO_TCP,
            tcp_flags: 0x02,
            icmp_type: 0,
            kind: TUPLE_IPV4,
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
        let event = decode(&bytes_of(&hop)).unwrap();
        assert_eq!(event.data, [1, 2, 3]);
        assert!(decode(&bytes_of(&hop)[..40]).is_none());
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
        let before = tcp([203, 0, 113, 2], 40000, [203, 0, 113, 1], 8080);
        let after = tcp([203, 0, 113, 2], 40000, [192, 168, 15, 2], 80);
        assert_eq!(
            nat_rewrites(&before, &after),
            [(
                "dnat",
                "203.0.113.1:8080".to_owned(),
                "192.168.15.2:80".to_owned()
            )]
        );
        assert_eq!(
            nat_rewrites(&after, &before),
            [(
                "dnat",
                "192.168.15.2:80".to_owned(),
                "203.0.113.1:8080".to_owned()
            )]
        );
        assert!(nat_rewrites(&before, &before).is_empty());
        let event = Event {
            header: EventHeader {
                kind: EVENT_HOP,
                action: Action::Pass as u8,
                before,
                after,
                ..EventHeader::default()
            },
            data: Vec::new(),
        };
        assert_eq!(
            action_text(&event, &Context::default()),
            "DNAT 203.0.113.1:8080 → 192.168.15.2:80"
        );
        assert_eq!(
            tuple_text(&before),
            "203.0.113.2:40000 > 203.0.113.1:8080 tcp [S]"
        );
    }

    #[test]
    fn json_has_the_documented_fields() {
        let mut ctx = Context::default();
        ctx.ifaces
            .insert(7, ("host".to_owned(), "nl-uplink".to_owned()));
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
            data: Vec::new(),
        };
        let v = event_json(&event, &ctx);
        assert_eq!(v["type"], "kernel_drop");
        assert_eq!(v["trace_id"], "0000000000000abc");
        assert_eq!(v["netns"], "host");
        assert_eq!(v["iface"], "nl-uplink");
        assert_eq!(v["reason"], "NO_SOCKET");
        assert_eq!(v["packet"]["dport"], 2);
        assert_eq!(v["packet"]["tcp_flags"], "S");
        assert_eq!(v["nat"], json!([]));
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
        let ev = |id, ts| Event {
            header: EventHeader {
                kind: EVENT_HOP,
                trace_id: id,
                ts_ns: ts,
                ..EventHeader::default()
            },
            data: Vec::new(),
        };
        g.push(ev(1, 20), start);
        g.push(ev(2, 15), start);
        g.push(ev(1, 10), start);
        assert!(g.take_quiet(start, Duration::from_millis(50)).is_empty());
        let later = start + Duration::from_millis(60);
        let journeys = g.take_quiet(later, Duration::from_millis(50));
        assert_eq!(journeys.len(), 2);
        assert_eq!(journeys[0][0].header.ts_ns, 10);
        assert_eq!(journeys[0][1].header.ts_ns, 20);
        assert_eq!(journeys[1][0].header.trace_id, 2);
    }
}
