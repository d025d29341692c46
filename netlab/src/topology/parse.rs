//! Phase one: TOML text → raw serde structs with spans → model.
//!
//! Everything here is about reading: TOML syntax, unknown or missing keys,
//! types, and strings that must spell a value (CIDR, IPv4 address, published
//! port, port range, datapath). The rules between values are in
//! the rules of `validate`, which also get the [`Spans`] of items the model does
//! not carry a position for.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4},
    ops::Range,
};

use serde::Deserialize;
use toml::Spanned;

use super::{
    model::{
        Address, Address6, Bridge, Datapath, Entry, Ipv4Net, Ipv6Net, Namespace, Nat, Peer, Place,
        PodNetwork, Pos, Proto, Publish, Route, Route6, Service, ServiceIds, Topology, Veth,
        VethEnd, Vxlan,
    },
    problem::{Problem, ProblemKind, conntrack_size_text},
    spans::{EndSpans, RouteSpans, Spans},
};

/// Lab name when the file has no `name`.
const DEFAULT_NAME: &str = "default";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLab {
    name: Option<Spanned<String>>,
    datapath: Option<Spanned<String>>,
    #[serde(default)]
    namespace: Vec<RawNamespace>,
    #[serde(default)]
    bridge: Vec<RawBridge>,
    #[serde(default)]
    veth: Vec<RawVeth>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    namespace_group: Vec<RawGroup>,
    nat: Option<RawNat>,
    pod_network: Option<Spanned<RawPodNetwork>>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
}

/// `[[service]]`: a ClusterIP and its backends.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    /// The ClusterIP.
    address: Spanned<String>,
    port: Spanned<i64>,
    proto: Option<Spanned<String>>,
    /// `NAMESPACE:PORT` or `ADDRESS:PORT`.
    #[serde(default)]
    backends: Vec<Spanned<String>>,
    node_port: Option<Spanned<i64>>,
    /// `none` or `client_ip`.
    affinity: Option<Spanned<String>>,
}

/// `[pod_network]`: where the CNI plugin attaches pods.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPodNetwork {
    bridge: Spanned<String>,
    /// `FIRST-LAST` addresses handed to pods.
    range: Option<Spanned<String>>,
    /// `[[pod_network.peer]]`: the cluster's other nodes.
    #[serde(default)]
    peer: Vec<Spanned<RawPeer>>,
    /// `[pod_network.vxlan]`: the peers through an overlay.
    vxlan: Option<Spanned<RawVxlan>>,
}

/// `[pod_network.vxlan]`: the overlay's device, VNI, and optionally its
/// UDP port and MTU.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVxlan {
    name: String,
    vni: Spanned<i64>,
    port: Option<Spanned<i64>>,
    mtu: Option<Spanned<i64>>,
}

/// `[[pod_network.peer]]`: another node's pod subnet and underlay address.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    subnet: Spanned<String>,
    via: Spanned<String>,
}

/// `[[namespace_group]]`: `count` namespaces made from patterns, each on a
/// veth whose host end is on `bridge` (see README, "Big labs").
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    /// Namespace name pattern; `{n}` is the member's number, 1..=count.
    name: Spanned<String>,
    count: Spanned<i64>,
    /// Name of the veth end inside each namespace (pattern); `eth0` if absent.
    veth: Option<Spanned<String>>,
    /// Name of the host end (pattern).
    host_veth: Spanned<String>,
    bridge: Option<Spanned<String>>,
    /// The first member's address; each next member gets the next address.
    address: Option<Spanned<String>>,
    /// Every member's default route goes via this gateway.
    default_via: Option<Spanned<String>>,
    /// The first member's IPv6 address, beside `address`; each next
    /// member gets the next one.
    address6: Option<Spanned<String>>,
    /// Every member's IPv6 default route goes via this gateway.
    default_via6: Option<Spanned<String>>,
    /// `HOST:PORT[/proto]` for the first member; each next member gets the
    /// next host port.
    #[serde(default)]
    publish: Vec<Spanned<String>>,
}

/// The most namespaces one `[[namespace_group]]` makes.
pub(super) const GROUP_MAX: u32 = 10_000;

/// The member-number placeholder of group patterns.
const MEMBER: &str = "{n}";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamespace {
    name: Spanned<String>,
    #[serde(default)]
    publish: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBridge {
    name: Spanned<String>,
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVeth {
    name: Spanned<String>,
    netns: Option<Spanned<String>>,
    bridge: Option<Spanned<String>>,
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
    peer: RawEnd,
}

/// The `peer` of a veth: the same keys as the veth's own end, minus `peer`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnd {
    name: Spanned<String>,
    netns: Option<Spanned<String>>,
    bridge: Option<Spanned<String>>,
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    netns: Option<Spanned<String>>,
    to: Spanned<String>,
    via: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNat {
    #[serde(default)]
    masquerade: Vec<Spanned<String>>,
    uplink: Option<Spanned<String>>,
    port_range: Option<Spanned<String>>,
    conntrack_size: Option<Spanned<i64>>,
    entry: Option<Spanned<String>>,
    service_range: Option<Spanned<String>>,
}

/// Read `text` into the model. `Err` holds every problem found (at least one).
pub(super) fn parse(text: &str, origin: &str) -> Result<(Topology, Spans), Vec<Problem>> {
    let locator = Locator::new(origin, text);
    // Syntax first, on its own, so a syntax error is never reported as a
    // schema one.
    if let Err(e) = text.parse::<toml::Table>() {
        return Err(vec![toml_problem(&locator, ProblemKind::Syntax, &e)]);
    }
    let raw: RawLab = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let kind = if e.message().starts_with("unknown field") {
                ProblemKind::UnknownKey
            } else {
                ProblemKind::Schema
            };
            return Err(vec![toml_problem(&locator, kind, &e)]);
        }
    };
    let mut reader = Reader {
        locator,
        problems: Vec::new(),
    };
    let out = reader.lab(raw);
    if reader.problems.is_empty() {
        Ok(out)
    } else {
        Err(reader.problems)
    }
}

/// A problem from the toml crate. Its message does not always name the key
/// (`invalid type: integer `3`, expected a string`), so the offending source
/// line is quoted after it.
fn toml_problem(locator: &Locator<'_>, kind: ProblemKind, e: &toml::de::Error) -> Problem {
    let (at, line) = match e.span() {
        Some(span) => (locator.pos(span.start), locator.line_text(span.start)),
        None => (locator.unknown(), ""),
    };
    let mut text = match kind {
        ProblemKind::Syntax => format!("TOML syntax error: {}", e.message()),
        _ => e.message().to_owned(),
    };
    let line = line.trim();
    if !line.is_empty() {
        const MAX: usize = 60;
        let (shown, more) = match line.char_indices().nth(MAX) {
            Some((cut, _)) => (&line[..cut], "..."),
            None => (line, ""),
        };
        text = format!("{text}, in `{shown}{more}`");
    }
    Problem::new(kind, &at, text)
}

/// Byte offsets → 1-based line and column (in characters).
struct Locator<'a> {
    origin: &'a str,
    text: &'a str,
    /// Byte offset where each line starts; the first is 0.
    line_starts: Vec<usize>,
}

impl<'a> Locator<'a> {
    fn new(origin: &'a str, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Locator {
            origin,
            text,
            line_starts,
        }
    }

    fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        // line_starts[0] == 0 <= offset, so this is at least 1.
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self
            .line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        Pos {
            origin: self.origin.to_owned(),
            line,
            column: column + 1,
        }
    }

    /// The whole line holding `offset`, without its newline.
    fn line_text(&self, offset: usize) -> &'a str {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self
            .line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let rest = self.text.get(start..).unwrap_or("");
        rest.split('\n').next().unwrap_or("").trim_end_matches('\r')
    }

    fn span(&self, span: Range<usize>) -> Pos {
        self.pos(span.start)
    }

    fn unknown(&self) -> Pos {
        Pos {
            origin: self.origin.to_owned(),
            line: 0,
            column: 0,
        }
    }
}

struct Reader<'a> {
    locator: Locator<'a>,
    problems: Vec<Problem>,
}

impl Reader<'_> {
    fn at<T>(&self, spanned: &Spanned<T>) -> Pos {
        self.locator.span(spanned.span())
    }

    fn problem(&mut self, kind: ProblemKind, at: &Pos, text: impl std::fmt::Display) {
        self.problems.push(Problem::new(kind, at, text));
    }

    fn lab(&mut self, raw: RawLab) -> (Topology, Spans) {
        let mut spans = Spans::default();

        let name = match raw.name {
            Some(name) => {
                spans.name = self.at(&name);
                name.into_inner()
            }
            None => {
                spans.name = self.locator.unknown();
                DEFAULT_NAME.to_owned()
            }
        };

        let datapath = match raw.datapath {
            None => Datapath::default(),
            Some(word) => match word.get_ref().as_str() {
                "bridge" => Datapath::Bridge,
                "redirect" => Datapath::Redirect,
                "iptables" => Datapath::Iptables,
                other => {
                    let at = self.at(&word);
                    self.problem(
                        ProblemKind::Schema,
                        &at,
                        format_args!(
                            "unknown datapath `{other}`; expected `bridge`, `redirect` or `iptables`"
                        ),
                    );
                    Datapath::default()
                }
            },
        };

        let namespaces: Vec<Namespace> = raw
            .namespace
            .into_iter()
            .map(|ns| self.namespace(ns))
            .collect();

        let bridges = raw
            .bridge
            .into_iter()
            .map(|br| {
                let at = self.at(&br.name);
                let name = br.name.into_inner();
                let (addresses, addresses6) = self.addresses(&name, br.addresses);
                Bridge {
                    name,
                    addresses,
                    addresses6,
                    at,
                }
            })
            .collect();

        let veths: Vec<Veth> = raw
            .veth
            .into_iter()
            .map(|v| {
                let a = self.end(
                    RawEnd {
                        name: v.name,
                        netns: v.netns,
                        bridge: v.bridge,
                        addresses: v.addresses,
                    },
                    &mut spans,
                );
                let b = self.end(v.peer, &mut spans);
                Veth { a, b }
            })
            .collect();

        let (mut routes, mut routes6) = (Vec::new(), Vec::new());
        for route in raw.route {
            match self.route(route, &mut spans) {
                Some(Routed::V4(route)) => routes.push(route),
                Some(Routed::V6(route)) => routes6.push(route),
                None => {}
            }
        }

        let (mut namespaces, mut veths) = (namespaces, veths);
        for group in raw.namespace_group {
            self.group(
                group,
                &mut spans,
                &mut namespaces,
                &mut veths,
                (&mut routes, &mut routes6),
            );
        }

        let nat = match raw.nat {
            Some(nat) => self.nat(nat, &mut spans),
            None => Nat::default(),
        };

        let pod_network = raw.pod_network.map(|pods| self.pod_network(pods));
        let mut topo = Topology {
            name,
            datapath,
            namespaces,
            bridges,
            veths,
            routes,
            routes6,
            nat,
            pod_network,
            services: Vec::new(),
        };
        // Backends may name a namespace: read once the namespaces are.
        for service in raw.service {
            let at = self.at(&service);
            if let Some(service) = self.service(service, &topo) {
                topo.services.push(service);
                spans.services.push(at);
            }
        }
        (topo, spans)
    }

    /// A pattern of a group checked on its own, so a bad pattern is one
    /// problem rather than one per member.
    fn pattern(&mut self, raw: &Spanned<String>, key: &str, count: u32, numbered: bool) -> bool {
        let text = raw.get_ref();
        let at = self.at(raw);
        let rest = text.replace(MEMBER, "");
        let why = if rest.contains('{') || rest.contains('}') {
            Some(format!("the only placeholder is `{MEMBER}`"))
        } else if numbered && count > 1 && !text.contains(MEMBER) {
            Some(format!(
                "it needs `{MEMBER}` (the member's number) to give {count} members distinct names"
            ))
        } else {
            None
        };
        if let Some(why) = &why {
            self.problem(
                ProblemKind::NamespaceGroup,
                &at,
                format_args!("namespace_group `{key}` pattern `{text}`: {why}"),
            );
        }
        why.is_none()
    }

    fn group(
        &mut self,
        raw: RawGroup,
        spans: &mut Spans,
        namespaces: &mut Vec<Namespace>,
        veths: &mut Vec<Veth>,
        (routes, routes6): (&mut Vec<Route>, &mut Vec<Route6>),
    ) {
        let count_at = self.at(&raw.count);
        let count = match u32::try_from(*raw.count.get_ref()) {
            Ok(n) if (1..=GROUP_MAX).contains(&n) => n,
            _ => {
                self.problem(
                    ProblemKind::NamespaceGroup,
                    &count_at,
                    format_args!(
                        "namespace_group count {} is out of range; a group has 1 to {GROUP_MAX} namespaces",
                        raw.count.get_ref()
                    ),
                );
                return;
            }
        };
        let mut ok = self.pattern(&raw.name, "name", count, true);
        ok &= self.pattern(&raw.host_veth, "host_veth", count, true);
        if let Some(veth) = &raw.veth {
            ok &= self.pattern(veth, "veth", count, false);
        }

        let first_addr = raw.address.as_ref().and_then(|text| {
            let at = self.at(text);
            match parse_cidr(text.get_ref()) {
                Ok(net) => {
                    let last = u32::from(net.addr).checked_add(count - 1).map(Ipv4Addr::from);
                    let fits = last.is_some_and(|last| {
                        net.contains(last) && (net.prefix_len > 30 || last != net.broadcast())
                    });
                    if fits {
                        return Some((net, at));
                    }
                    self.problem(
                        ProblemKind::NamespaceGroup,
                        &at,
                        format_args!(
                            "namespace_group address {net}: {count} members from there run past \
                             the subnet's last host address {}; start lower or use a wider prefix",
                            Ipv4Addr::from(u32::from(net.broadcast()).saturating_sub(1))
                        ),
                    );
                }
                Err(why) => self.problem(
                    ProblemKind::Address,
                    &at,
                    format_args!(
                        "namespace_group address `{}` is not an IPv4 CIDR like 10.200.0.2/16: {why}",
                        text.get_ref()
                    ),
                ),
            }
            ok = false;
            None
        });

        let via = raw.default_via.as_ref().and_then(|text| {
            let via = self.group_gateway::<Ipv4Addr>(
                text,
                "default_via",
                "an IPv4 address like 10.200.0.1",
            );
            ok &= via.is_some();
            via
        });

        let first_addr6 = raw.address6.as_ref().and_then(|text| {
            let at = self.at(text);
            match parse_cidr6(text.get_ref()) {
                Ok(net) => {
                    let last = u128::from(net.addr)
                        .checked_add(u128::from(count - 1))
                        .map(Ipv6Addr::from);
                    if last.is_some_and(|last| net.contains(last)) {
                        return Some((net, at));
                    }
                    self.problem(
                        ProblemKind::NamespaceGroup,
                        &at,
                        format_args!(
                            "namespace_group address6 {net}: {count} members from there run past \
                             the subnet's end; start lower or use a wider prefix"
                        ),
                    );
                }
                Err(why) => self.problem(
                    ProblemKind::Address,
                    &at,
                    format_args!(
                        "namespace_group address6 `{}` is not an IPv6 CIDR like fd00:200::2/64: {why}",
                        text.get_ref()
                    ),
                ),
            }
            ok = false;
            None
        });

        let via6 = raw.default_via6.as_ref().and_then(|text| {
            let via = self.group_gateway::<Ipv6Addr>(
                text,
                "default_via6",
                "an IPv6 address like fd00:200::1",
            );
            ok &= via.is_some();
            via
        });

        let mut publish = Vec::new();
        for spec in &raw.publish {
            let at = self.at(spec);
            match parse_publish(spec.get_ref()) {
                Ok((host_port, port, proto)) if u32::from(host_port) + count - 1 <= 65535 => {
                    publish.push((host_port, port, proto, at));
                }
                Ok((host_port, ..)) => {
                    self.problem(
                        ProblemKind::NamespaceGroup,
                        &at,
                        format_args!(
                            "namespace_group publish `{}`: {count} host ports from {host_port} run past 65535",
                            spec.get_ref()
                        ),
                    );
                    ok = false;
                }
                Err(why) => {
                    self.problem(
                        ProblemKind::Publish,
                        &at,
                        format_args!(
                            "namespace_group published port `{}` is not HOST:PORT[/tcp|/udp]: {why}",
                            spec.get_ref()
                        ),
                    );
                    ok = false;
                }
            }
        }
        if !ok {
            return;
        }

        let name_at = self.at(&raw.name);
        let host_at = self.at(&raw.host_veth);
        let (veth_pattern, veth_at) = match &raw.veth {
            Some(v) => (v.get_ref().clone(), self.at(v)),
            None => ("eth0".to_owned(), name_at.clone()),
        };
        let bridge_at = raw
            .bridge
            .as_ref()
            .map_or_else(|| host_at.clone(), |b| self.at(b));
        let bridge = raw.bridge.map(Spanned::into_inner);
        for n in 1..=count {
            let number = n.to_string();
            let member = |pattern: &str| pattern.replace(MEMBER, &number);
            let ns = member(raw.name.get_ref());
            let place = Place::Netns(ns.clone());
            namespaces.push(Namespace {
                name: ns.clone(),
                publish: publish
                    .iter()
                    .map(|(host_port, port, proto, at)| Publish {
                        // Checked above: fits in u16.
                        host_port: u16::try_from(u32::from(*host_port) + n - 1).unwrap_or(u16::MAX),
                        port: *port,
                        proto: *proto,
                        at: at.clone(),
                    })
                    .collect(),
                at: name_at.clone(),
            });
            let addresses = first_addr
                .iter()
                .map(|(net, at)| Address {
                    net: Ipv4Net {
                        addr: Ipv4Addr::from(u32::from(net.addr) + n - 1),
                        prefix_len: net.prefix_len,
                    },
                    at: at.clone(),
                })
                .collect();
            let addresses6 = first_addr6
                .iter()
                .map(|(net, at)| Address6 {
                    net: Ipv6Net {
                        addr: Ipv6Addr::from(u128::from(net.addr) + u128::from(n - 1)),
                        prefix_len: net.prefix_len,
                    },
                    at: at.clone(),
                })
                .collect();
            veths.push(Veth {
                a: VethEnd {
                    name: member(&veth_pattern),
                    place: place.clone(),
                    bridge: None,
                    addresses,
                    addresses6,
                    at: veth_at.clone(),
                },
                b: VethEnd {
                    name: member(raw.host_veth.get_ref()),
                    place: Place::Host,
                    bridge: bridge.clone(),
                    addresses: Vec::new(),
                    addresses6: Vec::new(),
                    at: host_at.clone(),
                },
            });
            spans.ends.push(EndSpans {
                netns: name_at.clone(),
                bridge: veth_at.clone(),
            });
            spans.ends.push(EndSpans {
                netns: host_at.clone(),
                bridge: bridge_at.clone(),
            });
            if let Some((via, at)) = &via {
                routes.push(Route {
                    place: place.clone(),
                    to: Ipv4Net::DEFAULT,
                    via: *via,
                    at: at.clone(),
                });
                spans.routes.push(RouteSpans {
                    netns: name_at.clone(),
                    to: at.clone(),
                    via: at.clone(),
                });
            }
            if let Some((via, at)) = &via6 {
                routes6.push(Route6 {
                    place: place.clone(),
                    to: Ipv6Net::DEFAULT,
                    via: *via,
                    at: at.clone(),
                });
                spans.routes6.push(RouteSpans {
                    netns: name_at.clone(),
                    to: at.clone(),
                    via: at.clone(),
                });
            }
        }
    }

    /// A group's gateway (`key`), an address of one family (`like` says
    /// which, with an example), or a problem.
    fn group_gateway<A: std::str::FromStr>(
        &mut self,
        text: &Spanned<String>,
        key: &str,
        like: &str,
    ) -> Option<(A, Pos)> {
        let at = self.at(text);
        match text.get_ref().parse::<A>() {
            Ok(via) => Some((via, at)),
            Err(_) => {
                self.problem(
                    ProblemKind::Route,
                    &at,
                    format_args!("namespace_group {key} `{}` is not {like}", text.get_ref()),
                );
                None
            }
        }
    }

    fn namespace(&mut self, raw: RawNamespace) -> Namespace {
        let at = self.at(&raw.name);
        let name = raw.name.into_inner();
        let publish = raw
            .publish
            .into_iter()
            .filter_map(|spec| {
                let at = self.at(&spec);
                match parse_publish(spec.get_ref()) {
                    Ok((host_port, port, proto)) => Some(Publish {
                        host_port,
                        port,
                        proto,
                        at,
                    }),
                    Err(why) => {
                        self.problem(
                            ProblemKind::Publish,
                            &at,
                            format_args!(
                                "published port `{}` on `{name}` is not HOST:PORT[/tcp|/udp]: {why}",
                                spec.get_ref()
                            ),
                        );
                        None
                    }
                }
            })
            .collect();
        Namespace { name, publish, at }
    }

    fn end(&mut self, raw: RawEnd, spans: &mut Spans) -> VethEnd {
        let at = self.at(&raw.name);
        let name = raw.name.into_inner();
        let netns_at = raw
            .netns
            .as_ref()
            .map_or_else(|| at.clone(), |n| self.at(n));
        let bridge_at = raw
            .bridge
            .as_ref()
            .map_or_else(|| at.clone(), |b| self.at(b));
        spans.ends.push(EndSpans {
            netns: netns_at,
            bridge: bridge_at,
        });
        let (addresses, addresses6) = self.addresses(&name, raw.addresses);
        VethEnd {
            name,
            place: place(raw.netns.map(Spanned::into_inner)),
            bridge: raw.bridge.map(Spanned::into_inner),
            addresses,
            addresses6,
            at,
        }
    }

    /// An interface's addresses, IPv4 and IPv6 apart (an IPv6 one has a
    /// `:`).
    fn addresses(
        &mut self,
        owner: &str,
        raw: Vec<Spanned<String>>,
    ) -> (Vec<Address>, Vec<Address6>) {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for text in raw {
            let at = self.at(&text);
            let parsed = if text.get_ref().contains(':') {
                parse_cidr6(text.get_ref()).map(|net| {
                    v6.push(Address6 {
                        net,
                        at: at.clone(),
                    })
                })
            } else {
                parse_cidr(text.get_ref()).map(|net| {
                    v4.push(Address {
                        net,
                        at: at.clone(),
                    })
                })
            };
            if let Err(why) = parsed {
                self.problem(
                    ProblemKind::Address,
                    &at,
                    format_args!(
                        "address `{}` of `{owner}` is not a CIDR like 192.168.15.1/24 or fd00:15::1/64: {why}",
                        text.get_ref()
                    ),
                );
            }
        }
        (v4, v6)
    }

    /// A `[[route]]`: IPv6 when its gateway is an IPv6 address.
    fn route(&mut self, raw: Spanned<RawRoute>, spans: &mut Spans) -> Option<Routed> {
        let at = self.at(&raw);
        let raw = raw.into_inner();
        let route_spans = RouteSpans {
            netns: raw
                .netns
                .as_ref()
                .map_or_else(|| at.clone(), |n| self.at(n)),
            to: self.at(&raw.to),
            via: self.at(&raw.via),
        };
        let place = place(raw.netns.map(Spanned::into_inner));
        let (to, via) = (raw.to.get_ref().as_str(), raw.via.get_ref().as_str());
        if via.contains(':') {
            return self.route6(to, via, place, at, route_spans, spans);
        }
        let to = match to {
            "default" => Some(Ipv4Net::DEFAULT),
            text if text.contains(':') => {
                self.problem(
                    ProblemKind::Route,
                    &route_spans.to,
                    format_args!(
                        "route destination `{text}` is IPv6, but its gateway `{via}` is not an IPv6 address; a route's destination and gateway are of one family"
                    ),
                );
                None
            }
            text => match parse_cidr(text) {
                Ok(net) => Some(net),
                Err(why) => {
                    self.problem(
                        ProblemKind::Route,
                        &route_spans.to,
                        format_args!(
                            "route destination `{text}` is not `default` or an IPv4 CIDR like 10.0.0.0/8 (the gateway is IPv4): {why}"
                        ),
                    );
                    None
                }
            },
        };
        let via = match via.parse::<Ipv4Addr>() {
            Ok(via) => Some(via),
            Err(_) => {
                self.problem(
                    ProblemKind::Route,
                    &route_spans.via,
                    format_args!(
                        "route gateway `{via}` is not an IPv4 address like 192.168.15.5 or an IPv6 one like fd00:15::5"
                    ),
                );
                None
            }
        };
        let (to, via) = (to?, via?);
        spans.routes.push(route_spans);
        Some(Routed::V4(Route { place, to, via, at }))
    }

    fn route6(
        &mut self,
        to: &str,
        via: &str,
        place: Place,
        at: Pos,
        route_spans: RouteSpans,
        spans: &mut Spans,
    ) -> Option<Routed> {
        let to = match to {
            "default" => Some(Ipv6Net::DEFAULT),
            text => match parse_cidr6(text) {
                Ok(net) => Some(net),
                Err(why) => {
                    self.problem(
                        ProblemKind::Route,
                        &route_spans.to,
                        format_args!(
                            "route destination `{text}` is not `default` or an IPv6 CIDR like fd00:16::/64 (the gateway is IPv6): {why}"
                        ),
                    );
                    None
                }
            },
        };
        let via = match via.parse::<Ipv6Addr>() {
            Ok(via) => Some(via),
            Err(_) => {
                self.problem(
                    ProblemKind::Route,
                    &route_spans.via,
                    format_args!("route gateway `{via}` is not an IPv6 address like fd00:15::5"),
                );
                None
            }
        };
        let (to, via) = (to?, via?);
        spans.routes6.push(route_spans);
        Some(Routed::V6(Route6 { place, to, via, at }))
    }

    fn pod_network(&mut self, raw: Spanned<RawPodNetwork>) -> PodNetwork {
        let at = self.at(&raw);
        let raw = raw.into_inner();
        let range = raw.range.and_then(|range| {
            let parsed = range.get_ref().split_once('-').and_then(|(a, b)| {
                Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
            });
            if parsed.is_none() {
                let at = self.at(&range);
                self.problem(
                    ProblemKind::PodNetwork,
                    &at,
                    format_args!(
                        "pod_network.range `{}` is not FIRST-LAST with two IPv4 addresses, like \"10.77.0.10-10.77.0.250\"",
                        range.get_ref()
                    ),
                );
            }
            parsed
        });
        let peers = raw.peer.into_iter().filter_map(|p| self.peer(p)).collect();
        let vxlan = raw.vxlan.and_then(|v| self.vxlan(v));
        PodNetwork {
            bridge: raw.bridge.into_inner(),
            range,
            peers,
            vxlan,
            at,
        }
    }

    fn vxlan(&mut self, raw: Spanned<RawVxlan>) -> Option<Vxlan> {
        let at = self.at(&raw);
        let raw = raw.into_inner();
        let vni = self.number(&raw.vni, 1, Vxlan::VNI_MAX, "pod_network.vxlan.vni");
        let port = match &raw.port {
            Some(port) => self.number(port, 1, u32::from(u16::MAX), "pod_network.vxlan.port"),
            None => Some(u32::from(Vxlan::DEFAULT_PORT)),
        };
        // 68: the least MTU IPv4 allows; 65485: the most a VXLAN device
        // takes (its lower device's 65535 less the encapsulation).
        let mtu = match &raw.mtu {
            Some(mtu) => self.number(mtu, 68, 65485, "pod_network.vxlan.mtu"),
            None => Some(Vxlan::DEFAULT_MTU),
        };
        Some(Vxlan {
            name: raw.name,
            vni: vni?,
            port: u16::try_from(port?).ok()?,
            mtu: mtu?,
            at,
        })
    }

    fn service(&mut self, raw: Spanned<RawService>, topo: &Topology) -> Option<Service> {
        let raw = raw.into_inner();
        let what = format!("service `{}`", raw.name);
        let vip = match raw.address.get_ref().parse::<Ipv4Addr>() {
            Ok(vip) => Some(vip),
            Err(_) => {
                let at = self.at(&raw.address);
                self.problem(
                    ProblemKind::Service,
                    &at,
                    format_args!(
                        "{what}: address `{}` is not an IPv4 address like 10.96.0.10",
                        raw.address.get_ref()
                    ),
                );
                None
            }
        };
        let port = self.number_of(
            &raw.port,
            1,
            65535,
            &format!("{what}: port"),
            ProblemKind::Service,
        );
        let node_port = match &raw.node_port {
            Some(p) => Some(self.number_of(
                p,
                1,
                65535,
                &format!("{what}: node_port"),
                ProblemKind::Service,
            )?),
            None => None,
        };
        let proto = match raw.proto.as_ref().map(|p| (p.get_ref().as_str(), p)) {
            None | Some(("tcp", _)) => Some(Proto::Tcp),
            Some(("udp", _)) => Some(Proto::Udp),
            Some((other, p)) => {
                let at = self.at(p);
                self.problem(
                    ProblemKind::Service,
                    &at,
                    format_args!("{what}: proto `{other}` is not `tcp` or `udp`"),
                );
                None
            }
        };
        let affinity = match raw.affinity.as_ref().map(|a| (a.get_ref().as_str(), a)) {
            None | Some(("none", _)) => Some(false),
            Some(("client_ip", _)) => Some(true),
            Some((other, a)) => {
                let at = self.at(a);
                self.problem(
                    ProblemKind::Service,
                    &at,
                    format_args!("{what}: affinity `{other}` is not `none` or `client_ip`"),
                );
                None
            }
        };
        let mut backends = Vec::new();
        for backend in &raw.backends {
            match service_backend(backend.get_ref(), topo) {
                Ok(addr) => backends.push(addr),
                Err(why) => {
                    let at = self.at(backend);
                    self.problem(
                        ProblemKind::Service,
                        &at,
                        format_args!("{what}: backend `{}` {why}", backend.get_ref()),
                    );
                }
            }
        }
        Some(Service {
            name: raw.name,
            vip: vip?,
            port: u16::try_from(port?).ok()?,
            proto: proto?,
            backends,
            node_port: node_port.and_then(|p| u16::try_from(p).ok()),
            affinity: affinity?,
            ids: ServiceIds::default(),
        })
    }

    /// A whole number in `min..=max`, or a problem saying which.
    fn number(&mut self, raw: &Spanned<i64>, min: u32, max: u32, what: &str) -> Option<u32> {
        self.number_of(raw, min, max, what, ProblemKind::PodNetwork)
    }

    fn number_of(
        &mut self,
        raw: &Spanned<i64>,
        min: u32,
        max: u32,
        what: &str,
        kind: ProblemKind,
    ) -> Option<u32> {
        let n = *raw.get_ref();
        match u32::try_from(n) {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                let at = self.at(raw);
                self.problem(
                    kind,
                    &at,
                    format_args!("{what} {n} is out of range: it is {min}..={max}"),
                );
                None
            }
        }
    }

    fn peer(&mut self, raw: Spanned<RawPeer>) -> Option<Peer> {
        let at = self.at(&raw);
        let raw = raw.into_inner();
        let subnet = match parse_cidr(raw.subnet.get_ref()) {
            Ok(net) => Some(net),
            Err(why) => {
                let place = self.at(&raw.subnet);
                self.problem(
                    ProblemKind::PodNetwork,
                    &place,
                    format_args!(
                        "pod_network.peer subnet `{}` is not an IPv4 CIDR like 10.78.0.0/24: {why}",
                        raw.subnet.get_ref()
                    ),
                );
                None
            }
        };
        let via = match raw.via.get_ref().parse::<Ipv4Addr>() {
            Ok(via) => Some(via),
            Err(_) => {
                let place = self.at(&raw.via);
                self.problem(
                    ProblemKind::PodNetwork,
                    &place,
                    format_args!(
                        "pod_network.peer via `{}` is not an IPv4 address like 198.18.1.2",
                        raw.via.get_ref()
                    ),
                );
                None
            }
        };
        Some(Peer {
            subnet: subnet?,
            via: via?,
            at,
        })
    }

    fn nat(&mut self, raw: RawNat, spans: &mut Spans) -> Nat {
        let mut nat = Nat::default();
        for entry in raw.masquerade {
            let at = self.at(&entry);
            if entry.get_ref().contains(':') {
                match parse_cidr6(entry.get_ref()) {
                    Ok(net) => {
                        nat.masquerade6.push(net);
                        spans.nat.masquerade6.push(at);
                    }
                    Err(why) => self.problem(
                        ProblemKind::NatSetting,
                        &at,
                        format_args!(
                            "nat.masquerade entry `{}` is not an IPv6 CIDR like fd00:15::/64: {why}",
                            entry.get_ref()
                        ),
                    ),
                }
                continue;
            }
            match parse_cidr(entry.get_ref()) {
                Ok(net) => {
                    nat.masquerade.push(net);
                    spans.nat.masquerade.push(at);
                }
                Err(why) => self.problem(
                    ProblemKind::NatSetting,
                    &at,
                    format_args!(
                        "nat.masquerade entry `{}` is not an IPv4 CIDR like 192.168.15.0/24: {why}",
                        entry.get_ref()
                    ),
                ),
            }
        }
        if let Some(uplink) = raw.uplink {
            spans.nat.uplink = self.at(&uplink);
            nat.uplink = Some(uplink.into_inner());
        }
        if let Some(range) = raw.port_range {
            let at = self.at(&range);
            match parse_port_range(range.get_ref()) {
                Some(ports) => nat.port_range = ports,
                None => self.problem(
                    ProblemKind::NatSetting,
                    &at,
                    format_args!(
                        "nat.port_range `{}` is not FIRST-LAST with ports 1..=65535, like \"32768-60999\"",
                        range.get_ref()
                    ),
                ),
            }
            spans.nat.port_range = at;
        }
        if let Some(size) = raw.conntrack_size {
            let at = self.at(&size);
            match u32::try_from(*size.get_ref()) {
                Ok(n) => nat.conntrack_size = n,
                Err(_) => self.problem(
                    ProblemKind::NatSetting,
                    &at,
                    conntrack_size_text(size.get_ref()),
                ),
            }
            spans.nat.conntrack_size = at;
        }
        if let Some(range) = raw.service_range {
            let at = self.at(&range);
            spans.nat.service_range = at.clone();
            match parse_cidr(range.get_ref()) {
                Ok(net) => nat.service_range = Some(net),
                Err(why) => self.problem(
                    ProblemKind::NatSetting,
                    &at,
                    format_args!(
                        "nat.service_range `{}` is not an IPv4 CIDR like 10.96.0.0/24: {why}",
                        range.get_ref()
                    ),
                ),
            }
        }
        if let Some(entry) = raw.entry {
            spans.nat.entry = self.at(&entry);
            match entry.get_ref().as_str() {
                "tc" => nat.entry = Entry::Tc,
                "xdp" => nat.entry = Entry::Xdp,
                other => {
                    let at = self.at(&entry);
                    self.problem(
                        ProblemKind::NatSetting,
                        &at,
                        format_args!("nat.entry `{other}` is not `tc` or `xdp`"),
                    );
                }
            }
        }
        nat
    }
}

/// A Service backend, `ADDRESS:PORT` or `NAMESPACE:PORT` (the namespace's
/// lab address); why not, if it is neither.
pub fn service_backend(text: &str, topo: &Topology) -> Result<SocketAddrV4, String> {
    if let Ok(addr) = text.parse::<SocketAddrV4>() {
        return Ok(addr);
    }
    let Some((name, port)) = text.rsplit_once(':') else {
        return Err("is not ADDRESS:PORT or NAMESPACE:PORT".to_owned());
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => return Err(format!("has port `{port}`; ports are 1..=65535")),
    };
    match topo.backend_addr(name) {
        Some(addr) => Ok(SocketAddrV4::new(addr, port)),
        None if topo.namespaces.iter().any(|n| n.name == name) => Err(format!(
            "names namespace `{name}`, which has no lab address"
        )),
        None => Err(format!(
            "names no address and no namespace of the lab (`{name}`)"
        )),
    }
}

/// `netns` of an end or route: absent or `host` is the host namespace.
fn place(netns: Option<String>) -> Place {
    match netns {
        None => Place::Host,
        Some(name) if name == "host" => Place::Host,
        Some(name) => Place::Netns(name),
    }
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// A `[[route]]` of either family.
enum Routed {
    V4(Route),
    V6(Route6),
}

/// `ADDR/N` with an IPv6 address and N in 0..=128 (prefix 0 is refused
/// later, by the rules).
fn parse_cidr6(text: &str) -> Result<Ipv6Net, String> {
    let (addr, prefix_len) = split_cidr(text, "IPv6", 128)?;
    Ok(Ipv6Net { addr, prefix_len })
}

/// `A.B.C.D/N` with N in 0..=32 (prefix 0 is refused later, by the rules).
fn parse_cidr(text: &str) -> Result<Ipv4Net, String> {
    let (addr, prefix_len) = split_cidr(text, "IPv4", 32)?;
    Ok(Ipv4Net { addr, prefix_len })
}

/// `ADDR/N`: an address of one family (`family` names it in errors) and N
/// in 0..=`max`.
fn split_cidr<A: std::str::FromStr>(text: &str, family: &str, max: u8) -> Result<(A, u8), String> {
    let Some((addr, prefix)) = text.split_once('/') else {
        return Err("the /prefix is missing".to_owned());
    };
    let addr = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not an {family} address"))?;
    let prefix_len = Some(prefix)
        .filter(|p| is_number(p))
        .and_then(|p| p.parse::<u8>().ok())
        .filter(|&n| n <= max)
        .ok_or_else(|| format!("`/{prefix}` is not a prefix length 0..={max}"))?;
    Ok((addr, prefix_len))
}

/// `HOST:PORT[/tcp|/udp]`; a port of 0 is refused later, by the rules.
fn parse_publish(text: &str) -> Result<(u16, u16, Proto), String> {
    let (ports, proto) = match text.rsplit_once('/') {
        None => (text, Proto::Tcp),
        Some((ports, "tcp")) => (ports, Proto::Tcp),
        Some((ports, "udp")) => (ports, Proto::Udp),
        Some((_, other)) => return Err(format!("unknown protocol `{other}`; use tcp or udp")),
    };
    let Some((host, port)) = ports.split_once(':') else {
        return Err("the `:` between host port and namespace port is missing".to_owned());
    };
    let number = |text: &str| {
        Some(text)
            .filter(|t| is_number(t))
            .and_then(|t| t.parse::<u16>().ok())
            .ok_or_else(|| format!("`{text}` is not a port number 1..=65535"))
    };
    Ok((number(host)?, number(port)?, proto))
}

/// `A-B` with both ports fitting u16 (their order and 0 are checked later).
fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let (first, last) = text.split_once('-')?;
    let number = |t: &str| Some(t).filter(|t| is_number(t))?.parse::<u16>().ok();
    Some((number(first)?, number(last)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{
        ProblemKind as K, parse as parse_lab,
        testutil::{at, only_problem},
    };

    #[test]
    fn locator_counts_characters_on_the_line() {
        let text = "# ┌──┐\nname = \"x\"\n  é = 1";
        let loc = Locator::new("f", text);
        assert_eq!(loc.pos(0).to_string(), "f:1:1");
        let x = text.find("\"x\"").unwrap();
        assert_eq!(loc.pos(x).to_string(), "f:2:8");
        let e = text.find("= 1").unwrap();
        assert_eq!(loc.pos(e).to_string(), "f:3:5");
        assert_eq!(loc.pos(text.len() + 10).line, 3);
    }

    #[test]
    fn syntax_error_has_position() {
        let text = "name = \"lab\"\n[[namespace]]\nname = \"red\n";
        let problem = only_problem(text, K::Syntax, &["TOML syntax error"]);
        assert_eq!(problem.at.line, 3, "{}", problem.message);
        assert!(
            problem.message.contains("lab.toml:3:"),
            "{}",
            problem.message
        );
    }

    #[test]
    fn duplicate_key_is_a_syntax_error() {
        let text = "name = \"a\"\nname = \"b\"\n";
        let problem = only_problem(text, K::Syntax, &["lab.toml:2:"]);
        assert_eq!(problem.at.line, 2);
    }

    #[test]
    fn unknown_top_level_key_is_rejected_with_position() {
        let text = "name = \"lab\"\nbridges = []\n";
        only_problem(text, K::UnknownKey, &["`bridges`", "lab.toml:2:1"]);
    }

    #[test]
    fn unknown_key_in_peer_is_rejected_with_position() {
        let text = r#"[[namespace]]
name = "red"
[[veth]]
name = "a"
netns = "red"
peer = { name = "b", adresses = ["10.0.0.1/24"] }
"#;
        only_problem(text, K::UnknownKey, &["`adresses`", &at(text, "adresses")]);
    }

    #[test]
    fn unknown_key_in_nat_is_rejected_with_position() {
        let text = "[nat]\nmasquerade = []\nconntrack = 5\n";
        only_problem(text, K::UnknownKey, &["`conntrack`", "lab.toml:3:1"]);
    }

    #[test]
    fn missing_key_is_a_schema_error() {
        let text = "[[veth]]\nname = \"a\"\n";
        only_problem(
            text,
            K::Schema,
            &["`peer`", "in `[[veth]]`", "lab.toml:1:1"],
        );
    }

    #[test]
    fn wrong_type_is_a_schema_error() {
        let text = "[nat]\nconntrack_size = \"big\"\n";
        only_problem(
            text,
            K::Schema,
            &["in `conntrack_size = \"big\"`", "lab.toml:2:18"],
        );
    }

    #[test]
    fn unknown_datapath_is_a_schema_error() {
        let text = "datapath = \"xdp\"\n";
        only_problem(text, K::Schema, &["`xdp`", "lab.toml:1:12"]);
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let topo = parse_lab("", "lab.toml").unwrap();
        assert_eq!(topo.name, "default");
        assert_eq!(topo.datapath, Datapath::Bridge);
        assert_eq!(topo.nat, Nat::default());
        assert!(topo.namespaces.is_empty() && topo.veths.is_empty());
    }

    #[test]
    fn datapath_words() {
        for (word, datapath) in [
            ("bridge", Datapath::Bridge),
            ("redirect", Datapath::Redirect),
            ("iptables", Datapath::Iptables),
        ] {
            let topo = parse_lab(&format!("datapath = \"{word}\"\n"), "lab.toml").unwrap();
            assert_eq!(topo.datapath, datapath);
        }
    }

    #[test]
    fn malformed_address_is_reported_with_owner_and_position() {
        let text = r#"[[bridge]]
name = "br0"
addresses = ["10.0.0.1"]
"#;
        only_problem(
            text,
            K::Address,
            &["`10.0.0.1`", "`br0`", "/prefix", &at(text, "\"10.0.0.1\"")],
        );
        let text = "[[bridge]]\nname = \"br0\"\naddresses = [\"10.0.0.300/24\"]\n";
        only_problem(
            text,
            K::Address,
            &["`10.0.0.300`", "`br0`", "lab.toml:3:14"],
        );
        let text = "[[bridge]]\nname = \"br0\"\naddresses = [\"10.0.0.1/33\"]\n";
        only_problem(text, K::Address, &["`/33`", "lab.toml:3:14"]);
    }

    #[test]
    fn malformed_values_are_all_reported() {
        let text = r#"[[namespace]]
name = "red"
publish = ["80"]
[[veth]]
name = "a"
netns = "red"
addresses = ["10.0.0.1/24", "nope"]
peer = { name = "b", addresses = ["10.0.0.2/x"] }
[[route]]
netns = "red"
to = "10.1.0.0"
via = "10.0.0.256"
[nat]
masquerade = ["10.0.0.0"]
port_range = "1000"
conntrack_size = -1
"#;
        let err = parse_lab(text, "lab.toml").unwrap_err();
        assert_eq!(
            err.kinds(),
            [
                K::Publish,
                K::Address,
                K::Address,
                K::Route,
                K::Route,
                K::NatSetting,
                K::NatSetting,
                K::NatSetting,
            ],
            "{err}"
        );
        let lines: Vec<_> = err.to_string().lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 8);
        assert!(lines[0].contains("lab.toml:3:12"), "{}", lines[0]);
        assert!(lines[7].contains("-1") && lines[7].contains("lab.toml:16:18"));
    }

    #[test]
    fn netns_host_means_the_host() {
        let text = r#"[[bridge]]
name = "br0"
addresses = ["10.0.0.1/24"]
[[veth]]
name = "a"
netns = "host"
bridge = "br0"
peer = { name = "b", addresses = ["10.0.0.2/24"] }
[[route]]
netns = "host"
to = "10.1.0.0/16"
via = "10.0.0.2"
"#;
        let topo = parse_lab(text, "lab.toml").unwrap();
        assert_eq!(topo.veths[0].a.place, Place::Host);
        assert_eq!(topo.veths[0].b.place, Place::Host);
        assert_eq!(topo.routes[0].place, Place::Host);
    }

    #[test]
    fn publish_forms() {
        assert_eq!(parse_publish("8080:80/tcp"), Ok((8080, 80, Proto::Tcp)));
        assert_eq!(parse_publish("5353:53/udp"), Ok((5353, 53, Proto::Udp)));
        assert_eq!(parse_publish("9000:9000"), Ok((9000, 9000, Proto::Tcp)));
        assert!(parse_publish("9000").is_err());
        assert!(parse_publish("9000:").is_err());
        assert!(parse_publish("+1:2").is_err());
        assert!(parse_publish("70000:1").is_err());
        assert!(parse_publish("1:2/sctp").is_err());
    }

    #[test]
    fn malformed_publish_is_reported() {
        let text = "[[namespace]]\nname = \"red\"\npublish = [\"8080:80/sctp\"]\n";
        only_problem(
            text,
            K::Publish,
            &["`8080:80/sctp`", "`red`", "sctp", "lab.toml:3:12"],
        );
    }

    const GROUP: &str = r#"name = "big"
[[bridge]]
name = "br-big"
addresses = ["10.200.0.1/16"]
[[namespace_group]]
name = "c{n}"
count = 3
host_veth = "c{n}-br"
bridge = "br-big"
address = "10.200.0.2/16"
default_via = "10.200.0.1"
publish = ["9000:80/tcp"]
"#;

    #[test]
    fn namespace_group_expands_into_members() {
        let topo = parse_lab(GROUP, "lab.toml").unwrap();
        let names: Vec<_> = topo.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["c1", "c2", "c3"]);
        let ends: Vec<_> = topo
            .veth_ends()
            .map(|e| (e.name.as_str(), e.place.to_string(), e.bridge.clone()))
            .collect();
        assert_eq!(ends[0], ("eth0", "c1".to_owned(), None));
        assert_eq!(ends[5], ("c3-br", "host".to_owned(), Some("br-big".into())));
        let addrs: Vec<_> = topo.addresses().map(|a| a.net.to_string()).collect();
        assert_eq!(
            addrs,
            [
                "10.200.0.1/16",
                "10.200.0.2/16",
                "10.200.0.3/16",
                "10.200.0.4/16"
            ]
        );
        assert_eq!(topo.routes.len(), 3);
        assert_eq!(topo.routes[2].place, Place::Netns("c3".into()));
        assert_eq!(topo.routes[2].via, Ipv4Addr::new(10, 200, 0, 1));
        let published: Vec<_> = topo
            .published_ports()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            published,
            [
                "9000/tcp -> c1:80",
                "9001/tcp -> c2:80",
                "9002/tcp -> c3:80"
            ]
        );
        // Members point at the group's lines.
        assert_eq!(topo.namespaces[2].at.to_string(), at(GROUP, "\"c{n}\""));
    }

    #[test]
    fn namespace_group_takes_ipv6_beside_ipv4() {
        let text = GROUP
            .replace(
                r#"addresses = ["10.200.0.1/16"]"#,
                r#"addresses = ["10.200.0.1/16", "fd00:200::1/64"]"#,
            )
            .replace(
                "publish = [",
                "address6 = \"fd00:200::a/64\"\ndefault_via6 = \"fd00:200::1\"\npublish = [",
            );
        let topo = parse_lab(&text, "lab.toml").unwrap();
        let addrs: Vec<_> = topo.addresses6().map(|a| a.net.to_string()).collect();
        assert_eq!(
            addrs,
            [
                "fd00:200::1/64",
                "fd00:200::a/64",
                "fd00:200::b/64",
                "fd00:200::c/64"
            ]
        );
        assert_eq!(topo.routes6.len(), 3);
        assert_eq!(topo.routes6[2].place, Place::Netns("c3".into()));
        assert_eq!(topo.routes6[2].to, Ipv6Net::DEFAULT);
        // Members past the subnet's end, and a gateway that is no address.
        let past = text.replace("fd00:200::a/64", "fd00:200::ffff:ffff:ffff:fffe/64");
        let err = parse_lab(&past, "lab.toml").unwrap_err().to_string();
        assert!(
            err.contains("address6") && err.contains("run past"),
            "{err}"
        );
        let bad = text.replace(
            "default_via6 = \"fd00:200::1\"",
            "default_via6 = \"fd00:200::x\"",
        );
        let err = parse_lab(&bad, "lab.toml").unwrap_err().to_string();
        assert!(err.contains("default_via6 `fd00:200::x`"), "{err}");
    }

    #[test]
    fn namespace_group_of_a_thousand_is_valid() {
        let text = GROUP.replace("count = 3", "count = 1000");
        let topo = parse_lab(&text, "lab.toml").unwrap();
        assert_eq!(topo.namespaces.len(), 1000);
        assert_eq!(topo.veths[999].b.name, "c1000-br");
        assert_eq!(
            topo.veths[999].a.addresses[0].net.addr,
            Ipv4Addr::new(10, 200, 3, 233)
        );
    }

    #[test]
    fn namespace_group_refusals_name_the_line() {
        for (from, to, kind, needles) in [
            (
                "count = 3",
                "count = 0",
                K::NamespaceGroup,
                &["count 0", "1 to 10000"][..],
            ),
            (
                "count = 3",
                "count = 10001",
                K::NamespaceGroup,
                &["count 10001"][..],
            ),
            (
                "name = \"c{n}\"",
                "name = \"c\"",
                K::NamespaceGroup,
                &["`c`", "{n}"][..],
            ),
            (
                "\"c{n}-br\"",
                "\"c{m}-br\"",
                K::NamespaceGroup,
                &["`c{m}-br`"][..],
            ),
            (
                "address = \"10.200.0.2/16\"",
                "address = \"10.200.255.253/16\"",
                K::NamespaceGroup,
                &["run past", "10.200.255.254"][..],
            ),
            (
                "\"9000:80/tcp\"",
                "\"65534:80/tcp\"",
                K::NamespaceGroup,
                &["65535"][..],
            ),
            (
                "default_via = \"10.200.0.1\"",
                "default_via = \"x\"",
                K::Route,
                &["`x`"][..],
            ),
            (
                "bridge = \"br-big\"",
                "bridge = \"br-big\"\nbrige = 1",
                K::UnknownKey,
                &["`brige`"][..],
            ),
        ] {
            let text = GROUP.replace(from, to);
            // The position of the changed value (after `key = `, if any).
            let value = to.find(" = ").map_or(0, |i| i + 3);
            let offset = text.find(to).unwrap() + value;
            let pos = at(&text, &text[offset..]);
            let mut needles = needles.to_vec();
            if kind != K::UnknownKey {
                needles.push(&pos);
            }
            only_problem(&text, kind, &needles);
        }
    }

    #[test]
    fn generated_interface_names_are_checked_once() {
        // `veth-host-{n}` is 15 bytes up to n = 99999... but 16 from 1000 on
        // with this longer prefix.
        let text = GROUP
            .replace("count = 3", "count = 1200")
            .replace("c{n}-br", "c-host-ends-{n}");
        let problem = only_problem(
            &text,
            K::InterfaceName,
            &[
                "c-host-ends-1000",
                "16 bytes",
                "15",
                "[and 200 more like it",
            ],
        );
        assert_eq!(problem.at.to_string(), at(&text, "\"c-host-ends-{n}\""));
    }

    #[test]
    fn cidr_and_range_forms() {
        assert_eq!(
            parse_cidr("10.1.2.3/8"),
            Ok(Ipv4Net {
                addr: Ipv4Addr::new(10, 1, 2, 3),
                prefix_len: 8
            })
        );
        assert!(parse_cidr("10.1.2.3/").is_err());
        assert!(parse_cidr("10.1.2/8").is_err());
        assert!(parse_cidr("10.1.2.3/+8").is_err());
        assert_eq!(parse_port_range("1-65535"), Some((1, 65535)));
        assert_eq!(parse_port_range("1-65536"), None);
        assert_eq!(parse_port_range("-5"), None);
    }
}
