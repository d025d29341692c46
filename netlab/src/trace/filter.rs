//! `netlab trace` filters: a tcpdump-like expression subset, parsed here
//! and compiled to the [`Filter`] the programs evaluate in the kernel.
//!
//! ```text
//! expr    := and ("or" | "||") and ...
//! and     := unary ("and" | "&&") unary ...
//! unary   := ("not" | "!") unary | "(" expr ")" | primitive
//! primitive := [src|dst] host ADDR | [src|dst] net ADDR/LEN | [src|dst] port N[-M]
//!            | [src|dst] portrange N-M | tcp | udp | icmp | icmp6 | proto N
//!            | ip | ip6 | iface NAME | iface NS/NAME | netns NAME | ADDR | ADDR/LEN
//! ```
//!
//! Addresses are IPv4 or IPv6 (`host fd00:15::2`, `net 2001:2::/64`); a
//! host or net test holds for packets of its own family only, `tcp`, `udp`,
//! `port` and `proto` for both, as in tcpdump.
//!
//! The kernel evaluates disjunctive normal form: negations are pushed down
//! to the primitives, `and` is distributed over `or`, and the result must
//! fit [`MAX_CLAUSES`] clauses of [`MAX_LITERALS`] literals each.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use netlab_common::{
    nat::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
    trace::{
        Clause, Filter, LIT_FAMILY, LIT_HOST, LIT_HOST6, LIT_IFACE, LIT_NETNS, LIT_PORT, LIT_PROTO,
        Literal, MAX_CLAUSES, MAX_LITERALS, SIDE_ANY, SIDE_DST, SIDE_SRC,
    },
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("filter: {0}")]
    Syntax(String),
    #[error(
        "filter: `{name}` is not an interface of the lab (it has: {known}); \
         write `iface NAME` or `iface NAMESPACE/NAME`"
    )]
    UnknownIface { name: String, known: String },
    #[error("filter: `{name}` is not a namespace of the lab (it has: {known})")]
    UnknownNetns { name: String, known: String },
    #[error(
        "filter: too complex for the kernel: {clauses} alternatives of up to {literals} tests \
         after expansion (at most {MAX_CLAUSES} of {MAX_LITERALS}); simplify the `or`s"
    )]
    TooComplex { clauses: usize, literals: usize },
}

/// Which address or port of the packet a primitive looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Any,
    Src,
    Dst,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Primitive {
    Net {
        side: Side,
        addr: IpAddr,
        prefix: u8,
    },
    Port {
        side: Side,
        min: u16,
        max: u16,
    },
    Proto(u8),
    /// `ip` (4) or `ip6` (6).
    Family(u8),
    /// An interface name, maybe `ns/name`.
    Iface(String),
    Netns(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    Prim(Primitive),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

impl Expr {
    pub fn and(self, other: Expr) -> Expr {
        Expr::And(Box::new(self), Box::new(other))
    }
}

/// Parses a filter expression (the words of the command line, joined).
pub fn parse(text: &str) -> Result<Option<Expr>, FilterError> {
    let tokens = tokenize(text);
    if tokens.is_empty() {
        return Ok(None);
    }
    let mut parser = Parser { tokens, at: 0 };
    let expr = parser.or()?;
    if let Some(extra) = parser.peek() {
        return Err(FilterError::Syntax(format!(
            "unexpected `{extra}` (join tests with `and` / `or`)"
        )));
    }
    Ok(Some(expr))
}

fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.is_whitespace() || c == '(' || c == ')' || c == '!' {
            if !word.is_empty() {
                tokens.push(std::mem::take(&mut word));
            }
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
        } else {
            word.push(c);
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    tokens
}

struct Parser {
    tokens: Vec<String>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.at).map(String::as_str)
    }

    fn next(&mut self, wanted: &str) -> Result<String, FilterError> {
        let token = self
            .tokens
            .get(self.at)
            .cloned()
            .ok_or_else(|| FilterError::Syntax(format!("expected {wanted} at the end")))?;
        self.at += 1;
        Ok(token)
    }

    fn or(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.and()?;
        while matches!(self.peek(), Some("or" | "||")) {
            self.at += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.unary()?;
        while matches!(self.peek(), Some("and" | "&&")) {
            self.at += 1;
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, FilterError> {
        match self.peek() {
            Some("not" | "!") => {
                self.at += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Some("(") => {
                self.at += 1;
                let inner = self.or()?;
                match self.peek() {
                    Some(")") => {
                        self.at += 1;
                        Ok(inner)
                    }
                    _ => Err(FilterError::Syntax("missing `)`".into())),
                }
            }
            _ => {
                let prim = self.primitive()?;
                // tcpdump's `tcp port 80`: a protocol qualifying the next test.
                if matches!(prim, Primitive::Proto(IPPROTO_TCP | IPPROTO_UDP))
                    && matches!(self.peek(), Some("port" | "portrange" | "src" | "dst"))
                {
                    let next = self.primitive()?;
                    return Ok(Expr::Prim(prim).and(Expr::Prim(next)));
                }
                Ok(Expr::Prim(prim))
            }
        }
    }

    fn primitive(&mut self) -> Result<Primitive, FilterError> {
        let mut word =
            self.next("a test (host, net, port, tcp, udp, icmp, icmp6, ip, ip6, iface, netns)")?;
        let side = match word.as_str() {
            "src" => Side::Src,
            "dst" => Side::Dst,
            _ => Side::Any,
        };
        if side != Side::Any {
            word = self.next("host, net or port after src/dst")?;
        }
        let prim = match word.as_str() {
            "host" => {
                let addr = parse_addr(&self.next("an address after `host`")?)?;
                Primitive::Net {
                    side,
                    addr,
                    prefix: full_prefix(addr),
                }
            }
            "net" => {
                let net = self.next("ADDR/LEN after `net`")?;
                let (addr, prefix) = parse_net(&net)?;
                Primitive::Net { side, addr, prefix }
            }
            "port" | "portrange" => {
                let ports = self.next("a port after `port`")?;
                let (min, max) = parse_ports(&ports)?;
                Primitive::Port { side, min, max }
            }
            "tcp" | "udp" | "icmp" | "icmp6" | "ip" | "ip6" | "proto" | "iface" | "netns"
            | "ns"
                if side != Side::Any =>
            {
                return Err(FilterError::Syntax(format!(
                    "`{word}` does not take src/dst"
                )));
            }
            "tcp" => Primitive::Proto(IPPROTO_TCP),
            "udp" => Primitive::Proto(IPPROTO_UDP),
            "icmp" => Primitive::Proto(IPPROTO_ICMP),
            "icmp6" => Primitive::Proto(IPPROTO_ICMPV6),
            "ip" => Primitive::Family(4),
            "ip6" => Primitive::Family(6),
            "proto" => {
                let proto = self.next("a protocol number after `proto`")?;
                Primitive::Proto(match proto.as_str() {
                    "tcp" => IPPROTO_TCP,
                    "udp" => IPPROTO_UDP,
                    "icmp" => IPPROTO_ICMP,
                    "icmp6" => IPPROTO_ICMPV6,
                    n => n.parse().map_err(|_| {
                        FilterError::Syntax(format!("`{n}` is not a protocol (0-255)"))
                    })?,
                })
            }
            "iface" | "dev" => Primitive::Iface(self.next("a name after `iface`")?),
            "netns" | "ns" => Primitive::Netns(self.next("a name after `netns`")?),
            other if other.contains('/') => {
                let (addr, prefix) = parse_net(other)?;
                Primitive::Net { side, addr, prefix }
            }
            other if let Ok(addr) = other.parse::<IpAddr>() => Primitive::Net {
                side,
                addr,
                prefix: full_prefix(addr),
            },
            other => {
                return Err(FilterError::Syntax(format!(
                    "unknown test `{other}` (known: host, net, port, portrange, tcp, udp, \
                     icmp, icmp6, ip, ip6, proto, iface, netns, and, or, not)"
                )));
            }
        };
        Ok(prim)
    }
}

fn parse_addr(text: &str) -> Result<IpAddr, FilterError> {
    text.parse()
        .map_err(|_| FilterError::Syntax(format!("`{text}` is not an IPv4 or IPv6 address")))
}

/// A host's prefix length: 32 or 128.
fn full_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn parse_net(text: &str) -> Result<(IpAddr, u8), FilterError> {
    let (addr, len) = text
        .split_once('/')
        .ok_or_else(|| FilterError::Syntax(format!("`{text}` is not ADDR/LEN")))?;
    let addr = parse_addr(addr)?;
    let most = full_prefix(addr);
    let prefix: u8 = len.parse().ok().filter(|p| *p <= most).ok_or_else(|| {
        FilterError::Syntax(format!("`/{len}` is not a prefix length (0-{most})"))
    })?;
    Ok((addr, prefix))
}

fn parse_ports(text: &str) -> Result<(u16, u16), FilterError> {
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| FilterError::Syntax(format!("`{p}` is not a port (0-65535)")))
    };
    match text.split_once('-') {
        Some((a, b)) => {
            let (min, max) = (port(a)?, port(b)?);
            if min > max {
                return Err(FilterError::Syntax(format!("port range `{text}` is empty")));
            }
            Ok((min, max))
        }
        None => {
            let p = port(text)?;
            Ok((p, p))
        }
    }
}

/// Names the filter can refer to: the lab's interfaces and namespaces.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// `(namespace or "host", interface) → ifindex`.
    pub ifaces: BTreeMap<(String, String), u32>,
    /// namespace → id in `TRACE_IFACES` (the host is 0).
    pub netns: BTreeMap<String, u32>,
}

impl Names {
    fn iface_indexes(&self, name: &str) -> Result<Vec<u32>, FilterError> {
        let mut found: Vec<u32> = match name.split_once('/') {
            Some((place, iface)) => self
                .ifaces
                .get(&(place.to_owned(), iface.to_owned()))
                .copied()
                .into_iter()
                .collect(),
            None => self
                .ifaces
                .iter()
                .filter(|((_, iface), _)| iface == name)
                .map(|(_, index)| *index)
                .collect(),
        };
        found.sort_unstable();
        found.dedup();
        if found.is_empty() {
            let known: Vec<String> = self
                .ifaces
                .keys()
                .map(|(place, iface)| format!("{place}/{iface}"))
                .collect();
            return Err(FilterError::UnknownIface {
                name: name.to_owned(),
                known: known.join(", "),
            });
        }
        Ok(found)
    }
}

/// One literal before it is laid out for the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Lit {
    negate: bool,
    literal: Literal,
}

/// Compiles an expression (None: everything) to the kernel's form.
pub fn compile(expr: Option<&Expr>, names: &Names) -> Result<Filter, FilterError> {
    let mut filter = Filter::default();
    let Some(expr) = expr else {
        return Ok(filter);
    };
    let clauses = dnf(expr, false, names)?;
    let widest = clauses.iter().map(Vec::len).max().unwrap_or(0);
    if clauses.len() > MAX_CLAUSES || widest > MAX_LITERALS {
        return Err(FilterError::TooComplex {
            clauses: clauses.len(),
            literals: widest,
        });
    }
    if clauses.is_empty() {
        // Never true: one clause with a literal that cannot hold.
        let mut clause = Clause {
            len: 1,
            ..Clause::default()
        };
        clause.literals[0] = Literal {
            kind: LIT_IFACE,
            value: first(0),
            ..Literal::default()
        };
        filter.clauses[0] = clause;
        filter.len = 1;
        return Ok(filter);
    }
    for (slot, lits) in filter.clauses.iter_mut().zip(&clauses) {
        for (out, lit) in slot.literals.iter_mut().zip(lits) {
            *out = Literal {
                negate: u8::from(lit.negate),
                ..lit.literal
            };
        }
        slot.len = lits.len() as u32;
    }
    filter.len = clauses.len() as u32;
    Ok(filter)
}

/// Disjunctive normal form of `expr` (negated when `negate`): a list of
/// clauses, each a list of literals. An empty clause is "true"; no clause
/// is "false".
fn dnf(expr: &Expr, negate: bool, names: &Names) -> Result<Vec<Vec<Lit>>, FilterError> {
    const CAP: usize = 64;
    Ok(match (expr, negate) {
        (Expr::Prim(prim), _) => {
            let alternatives = literals(prim, names)?;
            if negate {
                // not (a or b) = not a and not b: one clause.
                vec![
                    alternatives
                        .into_iter()
                        .map(|literal| Lit {
                            negate: true,
                            literal,
                        })
                        .collect(),
                ]
            } else {
                alternatives
                    .into_iter()
                    .map(|literal| {
                        vec![Lit {
                            negate: false,
                            literal,
                        }]
                    })
                    .collect()
            }
        }
        (Expr::Not(inner), _) => dnf(inner, !negate, names)?,
        (Expr::Or(a, b), false) | (Expr::And(a, b), true) => {
            let mut out = dnf(a, negate, names)?;
            out.extend(dnf(b, negate, names)?);
            out
        }
        (Expr::And(a, b), false) | (Expr::Or(a, b), true) => {
            let left = dnf(a, negate, names)?;
            let right = dnf(b, negate, names)?;
            let mut out = Vec::new();
            for l in &left {
                for r in &right {
                    let mut clause = l.clone();
                    for lit in r {
                        if !clause.contains(lit) {
                            clause.push(lit.clone());
                        }
                    }
                    out.push(clause);
                    if out.len() > CAP {
                        return Err(FilterError::TooComplex {
                            clauses: left.len() * right.len(),
                            literals: 0,
                        });
                    }
                }
            }
            out
        }
    })
}

/// The literals a primitive stands for, any of which makes it true.
fn literals(prim: &Primitive, names: &Names) -> Result<Vec<Literal>, FilterError> {
    let side = |side: Side| match side {
        Side::Any => SIDE_ANY,
        Side::Src => SIDE_SRC,
        Side::Dst => SIDE_DST,
    };
    Ok(match prim {
        Primitive::Net {
            side: s,
            addr,
            prefix,
        } => {
            let (kind, bits) = match addr {
                IpAddr::V4(a) => (LIT_HOST, u128::from(u32::from(*a)) << 96),
                IpAddr::V6(a) => (LIT_HOST6, u128::from(*a)),
            };
            let mask = u128::MAX.checked_shl(128 - u32::from(*prefix)).unwrap_or(0);
            // The kernel compares the raw wire bytes, word by word, as the
            // tuple holds them (an IPv4 address in the first word).
            let words = |v: u128| -> [u32; 4] {
                let bytes = v.to_be_bytes();
                std::array::from_fn(|i| {
                    u32::from_ne_bytes([
                        bytes[4 * i],
                        bytes[4 * i + 1],
                        bytes[4 * i + 2],
                        bytes[4 * i + 3],
                    ])
                })
            };
            vec![Literal {
                kind,
                side: side(*s),
                value: words(bits & mask),
                mask: words(mask),
                ..Literal::default()
            }]
        }
        Primitive::Port { side: s, min, max } => vec![Literal {
            kind: LIT_PORT,
            side: side(*s),
            port_min: *min,
            port_max: *max,
            ..Literal::default()
        }],
        Primitive::Proto(proto) => vec![Literal {
            kind: LIT_PROTO,
            value: first(u32::from(*proto)),
            ..Literal::default()
        }],
        Primitive::Family(version) => vec![Literal {
            kind: LIT_FAMILY,
            value: first(u32::from(*version)),
            ..Literal::default()
        }],
        Primitive::Iface(name) => names
            .iface_indexes(name)?
            .into_iter()
            .map(|ifindex| Literal {
                kind: LIT_IFACE,
                value: first(ifindex),
                ..Literal::default()
            })
            .collect(),
        Primitive::Netns(name) => {
            let id = names
                .netns
                .get(name)
                .copied()
                .ok_or_else(|| FilterError::UnknownNetns {
                    name: name.clone(),
                    known: names.netns.keys().cloned().collect::<Vec<_>>().join(", "),
                })?;
            vec![Literal {
                kind: LIT_NETNS,
                value: first(id),
                ..Literal::default()
            }]
        }
    })
}

/// A literal's value that fits a word: in the first.
fn first(value: u32) -> [u32; 4] {
    [value, 0, 0, 0]
}

impl fmt::Display for Primitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |s: &Side| match s {
            Side::Any => "",
            Side::Src => "src ",
            Side::Dst => "dst ",
        };
        match self {
            Primitive::Net {
                side: s,
                addr,
                prefix,
            } if *prefix == full_prefix(*addr) => write!(f, "{}host {addr}", side(s)),
            Primitive::Net {
                side: s,
                addr,
                prefix,
            } => write!(f, "{}net {addr}/{prefix}", side(s)),
            Primitive::Port { side: s, min, max } if min == max => {
                write!(f, "{}port {min}", side(s))
            }
            Primitive::Port { side: s, min, max } => write!(f, "{}portrange {min}-{max}", side(s)),
            Primitive::Proto(p) => write!(f, "proto {p}"),
            Primitive::Family(4) => f.write_str("ip"),
            Primitive::Family(_) => f.write_str("ip6"),
            Primitive::Iface(name) => write!(f, "iface {name}"),
            Primitive::Netns(name) => write!(f, "netns {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn names() -> Names {
        let mut names = Names::default();
        names.ifaces.insert(("red".into(), "veth-red".into()), 10);
        names
            .ifaces
            .insert(("host".into(), "veth-red-br".into()), 11);
        names.ifaces.insert(("red".into(), "lo".into()), 1);
        names.ifaces.insert(("blue".into(), "lo".into()), 1);
        names.netns.insert("host".into(), 0);
        names.netns.insert("red".into(), 1);
        names
    }

    fn compiled(text: &str) -> Result<Filter, FilterError> {
        compile(parse(text)?.as_ref(), &names())
    }

    /// Evaluates a compiled filter as the kernel does, on (saddr, daddr,
    /// sport, dport, proto, ifindex, netns id), host order; both addresses
    /// of one family.
    fn eval<A: Into<IpAddr>>(filter: &Filter, pkt: (A, A, u16, u16, u8, u32, u32)) -> bool {
        let (s, d, sp, dp, proto, ifindex, ns) = pkt;
        let (s, d) = (s.into(), d.into());
        let v6 = s.is_ipv6();
        // As the tuple holds an address: wire bytes, IPv4 in the first word.
        let wire = |a: IpAddr| -> [u32; 4] {
            let bytes: Vec<u8> = match a {
                IpAddr::V4(a) => a.octets().into_iter().chain([0; 12]).collect(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            std::array::from_fn(|i| u32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()))
        };
        let within = |a: [u32; 4], l: &Literal| (0..4).all(|i| a[i] & l.mask[i] == l.value[i]);
        if filter.len == 0 {
            return true;
        }
        filter.clauses[..filter.len as usize].iter().any(|c| {
            c.literals[..c.len as usize].iter().all(|l| {
                let on = |src: bool, dst: bool| match l.side {
                    SIDE_SRC => src,
                    SIDE_DST => dst,
                    _ => src || dst,
                };
                let holds = match l.kind {
                    LIT_HOST => !v6 && on(within(wire(s), l), within(wire(d), l)),
                    LIT_HOST6 => v6 && on(within(wire(s), l), within(wire(d), l)),
                    LIT_PORT => {
                        (proto == 6 || proto == 17)
                            && on(
                                (l.port_min..=l.port_max).contains(&sp),
                                (l.port_min..=l.port_max).contains(&dp),
                            )
                    }
                    LIT_PROTO => u32::from(proto) == l.value[0],
                    LIT_FAMILY => (l.value[0] == 6) == v6,
                    LIT_IFACE => ifindex == l.value[0],
                    LIT_NETNS => ns == l.value[0],
                    _ => false,
                };
                holds != (l.negate != 0)
            })
        })
    }

    const RED: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 1);
    const BLUE: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 2);
    const OUT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    #[test]
    fn empty_filter_matches_everything() {
        assert_eq!(compiled("  ").unwrap().len, 0);
    }

    #[test]
    fn host_port_and_proto() {
        let err = compiled("host 192.168.15.2 port 80").unwrap_err();
        // Juxtaposition is not `and`.
        assert!(matches!(err, FilterError::Syntax(_)), "{err}");
        assert_eq!(
            compiled("host 192.168.15.2 and tcp port 80").unwrap(),
            compiled("host 192.168.15.2 and tcp and port 80").unwrap()
        );
        let f = compiled("host 192.168.15.2 and tcp and port 80").unwrap();
        assert_eq!(f.len, 1);
        assert_eq!(f.clauses[0].len, 3);
        assert!(eval(&f, (RED, BLUE, 40000, 80, 6, 0, 0)));
        assert!(!eval(&f, (RED, BLUE, 40000, 80, 17, 0, 0)));
        assert!(!eval(&f, (RED, OUT, 40000, 80, 6, 0, 0)));
        assert!(!eval(&f, (RED, BLUE, 40000, 81, 6, 0, 0)));
    }

    #[test]
    fn src_dst_and_nets() {
        let f = compiled("src net 192.168.15.0/24 and dst host 198.18.0.2").unwrap();
        assert!(eval(&f, (RED, OUT, 1, 2, 1, 0, 0)));
        assert!(!eval(&f, (OUT, RED, 1, 2, 1, 0, 0)));
        let f = compiled("192.168.0.0/16").unwrap();
        assert!(eval(&f, (OUT, BLUE, 1, 2, 1, 0, 0)));
        assert!(!eval(&f, (OUT, OUT, 1, 2, 1, 0, 0)));
        let f = compiled("net 0.0.0.0/0").unwrap();
        assert!(eval(&f, (OUT, OUT, 1, 2, 1, 0, 0)));
    }

    #[test]
    fn negation_is_pushed_down() {
        let f = compiled("not (icmp or port 22)").unwrap();
        assert_eq!(f.len, 1);
        assert!(!eval(&f, (RED, BLUE, 0, 0, 1, 0, 0)));
        assert!(!eval(&f, (RED, BLUE, 22, 5000, 6, 0, 0)));
        assert!(eval(&f, (RED, BLUE, 23, 5000, 6, 0, 0)));
        let f = compiled("! tcp").unwrap();
        assert!(eval(&f, (RED, BLUE, 0, 0, 17, 0, 0)));
        assert!(!eval(&f, (RED, BLUE, 0, 0, 6, 0, 0)));
        let f = compiled("not not udp").unwrap();
        assert!(eval(&f, (RED, BLUE, 0, 0, 17, 0, 0)));
    }

    #[test]
    fn and_distributes_over_or() {
        let f = compiled("(tcp or udp) and (port 53 or port 80)").unwrap();
        assert_eq!(f.len, 4);
        assert!(eval(&f, (RED, BLUE, 1000, 53, 17, 0, 0)));
        assert!(eval(&f, (RED, BLUE, 1000, 80, 6, 0, 0)));
        assert!(!eval(&f, (RED, BLUE, 1000, 81, 6, 0, 0)));
        assert!(!eval(&f, (RED, BLUE, 0, 0, 1, 0, 0)));
        let f = compiled("not (tcp and port 80)").unwrap();
        assert_eq!(f.len, 2);
        assert!(eval(&f, (RED, BLUE, 1000, 80, 17, 0, 0)));
        assert!(!eval(&f, (RED, BLUE, 1000, 80, 6, 0, 0)));
    }

    #[test]
    fn ports_and_ranges() {
        let f = compiled("dst portrange 8000-8080").unwrap();
        assert!(eval(&f, (RED, BLUE, 1, 8080, 6, 0, 0)));
        assert!(!eval(&f, (RED, BLUE, 8080, 1, 6, 0, 0)));
        assert!(!eval(&f, (RED, BLUE, 1, 8080, 1, 0, 0)));
        assert!(compiled("port 70000").is_err());
        assert!(compiled("port 9-3").is_err());
    }

    #[test]
    fn interfaces_and_namespaces() {
        let f = compiled("iface veth-red").unwrap();
        assert!(eval(&f, (RED, BLUE, 0, 0, 1, 10, 1)));
        assert!(!eval(&f, (RED, BLUE, 0, 0, 1, 11, 0)));
        let f = compiled("iface host/veth-red-br or netns red").unwrap();
        assert!(eval(&f, (RED, BLUE, 0, 0, 1, 11, 0)));
        assert!(eval(&f, (RED, BLUE, 0, 0, 1, 99, 1)));
        assert!(!eval(&f, (RED, BLUE, 0, 0, 1, 99, 0)));
        // A name in two namespaces stands for both.
        let f = compiled("not iface lo").unwrap();
        assert_eq!(f.clauses[0].len, 1);
        let err = compiled("iface nope").unwrap_err();
        assert!(err.to_string().contains("red/veth-red"), "{err}");
        let err = compiled("netns green").unwrap_err();
        assert!(err.to_string().contains("red"), "{err}");
    }

    #[test]
    fn syntax_errors_say_what() {
        for (text, needle) in [
            ("host", "expected an address"),
            ("host 1.2.3", "not an IPv4 or IPv6 address"),
            ("host fd00::1::2", "not an IPv4 or IPv6 address"),
            ("net fd00::/129", "prefix length (0-128)"),
            ("src ip6", "does not take src/dst"),
            ("(tcp", "missing `)`"),
            ("tcp and", "expected a test"),
            ("frobnicate", "unknown test `frobnicate`"),
            ("src tcp", "does not take src/dst"),
            ("net 10.0.0.0/33", "prefix length"),
        ] {
            let err = compiled(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    const RED6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x15, 0, 0, 0, 0, 0, 1);
    const BLUE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x15, 0, 0, 0, 0, 0, 2);
    const OUT6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);

    #[test]
    fn ipv6_hosts_nets_and_families() {
        let f = compiled("host fd00:15::2").unwrap();
        assert_eq!(f.clauses[0].literals[0].kind, LIT_HOST6);
        assert!(eval(&f, (RED6, BLUE6, 1, 2, 58, 0, 0)));
        assert!(!eval(&f, (RED6, OUT6, 1, 2, 58, 0, 0)));
        // An IPv6 test never holds for IPv4, nor the other way round.
        assert!(!eval(&f, (RED, BLUE, 1, 2, 1, 0, 0)));
        assert!(!eval(
            &compiled("net 0.0.0.0/0").unwrap(),
            (RED6, BLUE6, 1, 2, 6, 0, 0)
        ));
        let f = compiled("src net fd00:15::/64 and dst 2001:2::/48").unwrap();
        assert!(eval(&f, (RED6, OUT6, 1, 2, 6, 0, 0)));
        assert!(!eval(&f, (OUT6, RED6, 1, 2, 6, 0, 0)));
        let f = compiled("fd00:15::/64").unwrap();
        assert!(eval(&f, (OUT6, BLUE6, 1, 2, 6, 0, 0)));
        assert!(!eval(&f, (OUT6, OUT6, 1, 2, 6, 0, 0)));
        // Bits past the prefix are ignored, as tcpdump masks them.
        let f = compiled("net fd00:15::1/64").unwrap();
        assert!(eval(&f, (OUT6, BLUE6, 1, 2, 6, 0, 0)));
        let f = compiled("ip6 and icmp6").unwrap();
        assert!(eval(&f, (RED6, BLUE6, 0, 0, 58, 0, 0)));
        assert!(!eval(&f, (RED6, BLUE6, 0, 0, 1, 0, 0)));
        assert!(!eval(&f, (RED, BLUE, 0, 0, 58, 0, 0)));
        let f = compiled("ip").unwrap();
        assert!(eval(&f, (RED, BLUE, 0, 0, 1, 0, 0)));
        assert!(!eval(&f, (RED6, BLUE6, 0, 0, 58, 0, 0)));
        // tcp and port hold for both families.
        let f = compiled("tcp port 80").unwrap();
        assert!(eval(&f, (RED6, BLUE6, 4000, 80, 6, 0, 0)));
        assert!(eval(&f, (RED, BLUE, 4000, 80, 6, 0, 0)));
        assert_eq!(Primitive::Family(6).to_string(), "ip6");
        assert_eq!(
            Primitive::Net {
                side: Side::Src,
                addr: IpAddr::V6(BLUE6),
                prefix: 128
            }
            .to_string(),
            "src host fd00:15::2"
        );
    }

    #[test]
    fn too_complex_is_refused() {
        let text = (1..=9)
            .map(|p| format!("port {p}"))
            .collect::<Vec<_>>()
            .join(" or ");
        assert!(matches!(
            compiled(&text),
            Err(FilterError::TooComplex { clauses: 9, .. })
        ));
        let text = (1..=9)
            .map(|p| format!("not port {p}"))
            .collect::<Vec<_>>()
            .join(" and ");
        assert!(matches!(
            compiled(&text),
            Err(FilterError::TooComplex { literals: 9, .. })
        ));
    }
}
