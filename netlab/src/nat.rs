//! The userspace side of the eBPF NAT: fills its maps from the topology and
//! the published ports, and reads back its counters and conntrack table.
//! The maps are pinned, so every command works on the running datapath
//! without reloading a program.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
};

use anyhow::{Context, Result, bail};
use aya::maps::{
    Array, HashMap, Map, MapData, PerCpuArray,
    lpm_trie::{Key, LpmTrie},
};
use netlab_common::{
    names,
    nat::{
        Backend, CtEntry, DIR_ORIGINAL, Endpoint, FlowKey, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
        IfaceConfig, NAT_DNAT, NAT_REFLECT, NAT_SNAT, NET_GROUP, NET_INTERNAL, NET_UPLINK,
        NatConfig, PublishKey, ROLE_LAB, ROLE_UPLINK, Stat, TcpState, timeout_ns,
    },
};
use serde::Serialize;

use crate::{
    datapath, netns,
    state::PublishRecord,
    topology::{Datapath, Ipv4Net, Place, Proto, Topology},
};

fn map_path(lab: &str, name: &str) -> PathBuf {
    datapath::pin_dir(lab).join("maps").join(name)
}

fn open(lab: &str, name: &str) -> Result<MapData> {
    let path = map_path(lab, name);
    MapData::from_pin(&path).with_context(|| {
        format!(
            "opening {} (is the lab up with the eBPF datapath?)",
            path.display()
        )
    })
}

fn be(addr: Ipv4Addr) -> u32 {
    u32::from(addr).to_be()
}

fn proto_number(proto: &str) -> Result<u8> {
    match proto {
        "tcp" => Ok(IPPROTO_TCP),
        "udp" => Ok(IPPROTO_UDP),
        other => bail!("unknown protocol `{other}`: use tcp or udp"),
    }
}

pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        _ => "?",
    }
}

/// The address a namespace's published ports forward to: its first lab address.
pub fn backend_addr(topo: &Topology, namespace: &str) -> Option<Ipv4Addr> {
    topo.veth_ends()
        .filter(|e| e.place.netns() == Some(namespace))
        .flat_map(|e| e.addresses.iter())
        .map(|a| a.net.addr)
        .next()
}

/// The first address of a host interface of the lab (bridge or veth end).
fn host_iface_addr(topo: &Topology, name: &str) -> Option<Ipv4Addr> {
    topo.bridges
        .iter()
        .filter(|b| b.name == name)
        .flat_map(|b| b.addresses.iter())
        .chain(
            topo.veth_ends()
                .filter(|e| e.place == Place::Host && e.name == name)
                .flat_map(|e| e.addresses.iter()),
        )
        .map(|a| a.net.addr)
        .next()
}

/// The address published ports answer on from the world, and masquerade uses.
pub fn uplink_addr(topo: &Topology) -> Option<Ipv4Addr> {
    topo.nat
        .uplink
        .as_deref()
        .and_then(|u| host_iface_addr(topo, u))
}

/// The published ports a topology declares, as records.
pub fn declared(topo: &Topology) -> Vec<PublishRecord> {
    topo.namespaces
        .iter()
        .flat_map(|ns| {
            ns.publish.iter().map(|p| PublishRecord {
                host_port: p.host_port,
                proto: p.proto.as_str().to_owned(),
                namespace: ns.name.clone(),
                port: p.port,
            })
        })
        .collect()
}

/// Parses `HOST_PORT[:PORT][/PROTO]` (as `docker run -p`; PORT defaults to HOST_PORT).
pub fn parse_mapping(spec: &str) -> Result<(u16, u16, Proto)> {
    let (ports, proto) = match spec.split_once('/') {
        Some((ports, "tcp")) => (ports, Proto::Tcp),
        Some((ports, "udp")) => (ports, Proto::Udp),
        Some((_, other)) => bail!("`{spec}`: unknown protocol `{other}`; use tcp or udp"),
        None => (spec, Proto::Tcp),
    };
    let port = |s: &str| -> Result<u16> {
        match s.parse::<u16>() {
            Ok(p) if p != 0 => Ok(p),
            _ => bail!("`{spec}`: `{s}` is not a port (1-65535)"),
        }
    };
    let (host, inner) = match ports.split_once(':') {
        Some((host, inner)) => (port(host)?, port(inner)?),
        None => (port(ports)?, port(ports)?),
    };
    Ok((host, inner, proto))
}

/// Refuses a published port that conflicts with those in force.
pub fn check_new_publish(
    topo: &Topology,
    current: &[PublishRecord],
    new: &PublishRecord,
) -> Result<()> {
    if let Some(existing) = current
        .iter()
        .find(|r| r.host_port == new.host_port && r.proto == new.proto)
    {
        bail!(
            "host port {}/{} is already published ({existing}); remove it first with `netlab publish rm {}/{}`",
            new.host_port,
            new.proto,
            new.host_port,
            new.proto
        );
    }
    if !topo.namespaces.iter().any(|n| n.name == new.namespace) {
        bail!(
            "backend `{}` is not a namespace of lab `{}`: published ports forward into the lab only",
            new.namespace,
            topo.name
        );
    }
    if backend_addr(topo, &new.namespace).is_none() {
        bail!(
            "namespace `{}` has no address in the lab to forward to",
            new.namespace
        );
    }
    proto_number(&new.proto)?;
    Ok(())
}

/// The cookie of the network namespace netlab runs in (the lab's host), as
/// `bpf_get_netns_cookie` reports it.
fn host_netns_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("opening a socket")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("reading the namespace cookie");
    }
    Ok(cookie)
}

/// Writes the NAT configuration maps from the topology (idempotent).
pub fn configure(lab: &str, topo: &Topology) -> Result<()> {
    let mut config: Array<_, NatConfig> =
        Array::try_from(Map::Array(open(lab, names::NAT_CONFIG)?))?;
    let (port_min, port_max) = topo.nat.port_range;
    let masq_addr = if topo.nat.masquerade.is_empty() {
        0
    } else {
        uplink_addr(topo).map(be).unwrap_or(0)
    };
    let host_links: BTreeMap<String, crate::netlink::Link> =
        netns::run_in(&Place::Host, |nl| async move {
            Ok(nl
                .links()
                .await?
                .into_iter()
                .map(|l| (l.name.clone(), l))
                .collect())
        })?;
    let redirect = topo.datapath == Datapath::Redirect;
    config.set(
        0,
        NatConfig {
            masq_addr,
            port_min,
            port_max,
            host_netns_cookie: host_netns_cookie()?,
            redirect: u32::from(redirect),
            closed: 1,
            _pad: 0,
            uplink_ifindex: topo
                .nat
                .uplink
                .as_deref()
                .and_then(|u| host_links.get(u))
                .map_or(0, |l| l.index),
        },
        0,
    )?;
    sync_endpoints(lab, topo, &host_links, redirect)?;

    // Published ports answer on every host address of the lab (Docker
    // publishes on all host addresses; netlab never claims the host's own).
    let mut local: HashMap<_, u32, u32> =
        HashMap::try_from(Map::HashMap(open(lab, names::LOCAL_ADDRS)?))?;
    let wanted: BTreeSet<u32> = topo
        .bridges
        .iter()
        .flat_map(|b| b.addresses.iter())
        .chain(
            topo.veth_ends()
                .filter(|e| e.place == Place::Host)
                .flat_map(|e| e.addresses.iter()),
        )
        .map(|a| be(a.net.addr))
        .collect();
    let stale: Vec<u32> = local
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !wanted.contains(k))
        .collect();
    for key in stale {
        local.remove(&key)?;
    }
    for addr in &wanted {
        local.insert(addr, 1, 0)?;
    }

    // The lab is closed: its namespaces reach the lab's own subnets (the
    // uplink's included, which stands for the world) and nothing else, so
    // the host never forwards lab traffic out of one of its own interfaces.
    let mut lab_nets: LpmTrie<_, u32, u32> =
        LpmTrie::try_from(Map::LpmTrie(open(lab, names::LAB_NETS)?))?;
    let stale: Vec<Key<u32>> = lab_nets.keys().filter_map(|k| k.ok()).collect();
    for key in stale {
        lab_nets.remove(&key)?;
    }
    let multicast_and_broadcast = [
        Ipv4Net {
            addr: Ipv4Addr::new(224, 0, 0, 0),
            prefix_len: 4,
        },
        Ipv4Net {
            addr: Ipv4Addr::BROADCAST,
            prefix_len: 32,
        },
    ];
    // The uplink's subnet stands for the world; every other subnet lives
    // behind the lab's own veths (and so may never arrive on the uplink).
    let uplink_nets: BTreeSet<Ipv4Net> = topo
        .veth_ends()
        .filter(|e| topo.nat.uplink.as_deref() == Some(e.name.as_str()))
        .flat_map(|e| e.addresses.iter().map(|a| a.net.network()))
        .collect();
    let kinds = topo.addresses().map(|a| {
        let net = a.net.network();
        let kind = if uplink_nets.contains(&net) {
            NET_UPLINK
        } else {
            NET_INTERNAL
        };
        (net, kind)
    });
    for (net, kind) in kinds.chain(multicast_and_broadcast.map(|net| (net, NET_GROUP))) {
        lab_nets.insert(&Key::new(u32::from(net.prefix_len), be(net.addr)), kind, 0)?;
    }

    let mut masq: LpmTrie<_, u32, u32> =
        LpmTrie::try_from(Map::LpmTrie(open(lab, names::MASQ_SUBNETS)?))?;
    let stale: Vec<Key<u32>> = masq.keys().filter_map(|k| k.ok()).collect();
    for key in stale {
        masq.remove(&key)?;
    }
    for net in &topo.nat.masquerade {
        masq.insert(
            &Key::new(u32::from(net.prefix_len), be(net.network().addr)),
            1,
            0,
        )?;
    }

    let host_ends: Vec<(String, u32, u32)> = topo
        .veth_ends()
        .filter(|e| e.place == Place::Host)
        .map(|e| {
            let gateway = match &e.bridge {
                Some(bridge) => host_iface_addr(topo, bridge),
                None => e.addresses.first().map(|a| a.net.addr),
            };
            let role = if topo.nat.uplink.as_deref() == Some(e.name.as_str()) {
                ROLE_UPLINK
            } else {
                ROLE_LAB
            };
            (e.name.clone(), gateway.map(be).unwrap_or(0), role)
        })
        .collect();
    let indexes: BTreeMap<String, u32> = host_links
        .iter()
        .map(|(name, link)| (name.clone(), link.index))
        .collect();
    let mut ifaces: HashMap<_, u32, IfaceConfig> =
        HashMap::try_from(Map::HashMap(open(lab, names::IFACE_CONFIG)?))?;
    for (name, gateway, role) in host_ends {
        let index = *indexes
            .get(&name)
            .with_context(|| format!("interface {name} is missing on the host"))?;
        ifaces.insert(index, IfaceConfig { gateway, role }, 0)?;
    }
    Ok(())
}

fn publish_entry(topo: &Topology, r: &PublishRecord) -> Result<(PublishKey, Backend)> {
    let addr = backend_addr(topo, &r.namespace)
        .with_context(|| format!("namespace `{}` has no lab address", r.namespace))?;
    Ok((
        PublishKey {
            port: r.host_port.to_be(),
            proto: proto_number(&r.proto)?,
            _pad: 0,
        },
        Backend {
            addr: be(addr),
            port: r.port.to_be(),
            _pad: 0,
        },
    ))
}

/// Adds one published port: one map update, whatever the number present.
pub fn publish_one(lab: &str, topo: &Topology, record: &PublishRecord) -> Result<()> {
    let mut published: HashMap<_, PublishKey, Backend> =
        HashMap::try_from(Map::HashMap(open(lab, names::PUBLISHED)?))?;
    let (key, backend) = publish_entry(topo, record)?;
    published.insert(key, backend, 0)?;
    Ok(())
}

/// Removes one published port: one map delete. Established flows keep
/// their conntrack entries and finish normally.
pub fn unpublish_one(lab: &str, record: &PublishRecord) -> Result<()> {
    let mut published: HashMap<_, PublishKey, Backend> =
        HashMap::try_from(Map::HashMap(open(lab, names::PUBLISHED)?))?;
    let key = PublishKey {
        port: record.host_port.to_be(),
        proto: proto_number(&record.proto)?,
        _pad: 0,
    };
    match published.remove(&key) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Fills the `redirect` datapath's endpoint map: every address of a
/// namespace-side veth end whose peer is on the host. Emptied for the other
/// datapaths, so a lab switched from `redirect` forwards normally again.
fn sync_endpoints(
    lab: &str,
    topo: &Topology,
    host_links: &BTreeMap<String, crate::netlink::Link>,
    redirect: bool,
) -> Result<()> {
    let mut endpoints: HashMap<_, u32, Endpoint> =
        HashMap::try_from(Map::HashMap(open(lab, names::ENDPOINTS)?))?;
    let mut wanted: BTreeMap<u32, Endpoint> = BTreeMap::new();
    if redirect {
        for veth in &topo.veths {
            for (inner, outer) in [(&veth.a, &veth.b), (&veth.b, &veth.a)] {
                // The uplink's peer is the world: it is reached through the
                // uplink (and masquerade), never by a peer redirect.
                if inner.place == Place::Host
                    || outer.place != Place::Host
                    || topo.nat.uplink.as_deref() == Some(outer.name.as_str())
                {
                    continue;
                }
                let Some(host_end) = host_links.get(&outer.name) else {
                    bail!("interface {} is missing on the host", outer.name);
                };
                let gateway = outer.bridge.as_deref().unwrap_or(&outer.name);
                let gateway_mac = host_links
                    .get(gateway)
                    .and_then(|l| l.mac)
                    .with_context(|| format!("no MAC address on {gateway}"))?;
                let name = inner.name.clone();
                let mac = netns::run_in(&inner.place, |nl| async move {
                    Ok(nl.require_link(&name).await?.mac)
                })?
                .with_context(|| format!("no MAC address on {}", inner.name))?;
                for address in &inner.addresses {
                    wanted.insert(
                        be(address.net.addr),
                        Endpoint {
                            ifindex: host_end.index,
                            mac,
                            gateway_mac,
                        },
                    );
                }
            }
        }
    }
    let stale: Vec<u32> = endpoints
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !wanted.contains_key(k))
        .collect();
    for key in stale {
        endpoints.remove(&key)?;
    }
    for (addr, endpoint) in &wanted {
        endpoints.insert(addr, endpoint, 0)?;
    }
    Ok(())
}

/// Forwarding decisions of the `redirect` datapath per (ifindex, reason),
/// summed over CPUs.
pub fn redirect_stats(lab: &str) -> Result<BTreeMap<(u32, u32), u64>> {
    let map: aya::maps::PerCpuHashMap<_, netlab_common::IfaceKey, u64> =
        aya::maps::PerCpuHashMap::try_from(Map::PerCpuHashMap(open(lab, names::REDIRECT_STATS)?))?;
    let mut out = BTreeMap::new();
    for entry in map.iter() {
        let (key, values) = entry?;
        out.insert((key.ifindex, key.direction), values.iter().sum());
    }
    Ok(out)
}

/// Makes the PUBLISHED map hold exactly `records`.
pub fn sync_published(lab: &str, topo: &Topology, records: &[PublishRecord]) -> Result<()> {
    let mut published: HashMap<_, PublishKey, Backend> =
        HashMap::try_from(Map::HashMap(open(lab, names::PUBLISHED)?))?;
    let mut wanted = BTreeMap::new();
    for r in records {
        let (key, backend) = publish_entry(topo, r)?;
        wanted.insert((key.port, key.proto), (key, backend));
    }
    let stale: Vec<PublishKey> = published
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !wanted.contains_key(&(k.port, k.proto)))
        .collect();
    for key in stale {
        published.remove(&key)?;
    }
    for (key, backend) in wanted.values() {
        published.insert(key, backend, 0)?;
    }
    Ok(())
}

/// NAT counters summed over CPUs, by name.
pub fn stats(lab: &str) -> Result<Vec<(&'static str, u64)>> {
    let array: PerCpuArray<_, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open(lab, names::NAT_STATS)?))?;
    Stat::ALL
        .iter()
        .map(|stat| {
            let values = array.get(&(*stat as u32), 0)?;
            Ok((stat.name(), values.iter().sum()))
        })
        .collect()
}

/// One direction of a flow as it appears on the wire.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct WireTuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

impl From<&FlowKey> for WireTuple {
    fn from(k: &FlowKey) -> Self {
        WireTuple {
            src: Ipv4Addr::from(u32::from_be(k.saddr)),
            dst: Ipv4Addr::from(u32::from_be(k.daddr)),
            sport: u16::from_be(k.sport),
            dport: u16::from_be(k.dport),
        }
    }
}

/// A tracked flow, as `netlab conntrack` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Flow {
    pub proto: &'static str,
    /// TCP state, or empty for UDP and ICMP.
    pub state: &'static str,
    pub nat: &'static str,
    /// How the flow's first packet looked.
    pub original: WireTuple,
    /// How its replies look on the wire (before they are translated back).
    pub reply: WireTuple,
    pub age_s: u64,
    /// Seconds of idleness left before the flow expires.
    pub expires_in_s: u64,
    pub replied: bool,
    pub packets: u64,
    pub bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct we pass; CLOCK_MONOTONIC is
    // the clock bpf_ktime_get_ns reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Every live flow in the lab's conntrack (expired ones are skipped; the
/// datapath removes them when it meets them).
pub fn conntrack(lab: &str) -> Result<Vec<Flow>> {
    let now = monotonic_ns();
    let mut entries = BTreeMap::new();
    // Assured flows and new ones live in two tables; a flow's two entries
    // are always in the same one.
    for name in CONNTRACK_TABLES {
        let table: HashMap<_, FlowKey, CtEntry> =
            HashMap::try_from(Map::LruHashMap(open(lab, name)?))?;
        for item in table.iter() {
            let (key, entry) = item?;
            entries.insert(
                (key.saddr, key.daddr, key.sport, key.dport, key.proto),
                (key, entry),
            );
        }
    }
    let mut flows = Vec::new();
    for (key, entry) in entries.values() {
        if entry.direction != DIR_ORIGINAL {
            continue;
        }
        let reply = entries
            .get(&(
                entry.peer.saddr,
                entry.peer.daddr,
                entry.peer.sport,
                entry.peer.dport,
                entry.peer.proto,
            ))
            .map(|(_, e)| *e)
            .unwrap_or_default();
        let timeout = timeout_ns(key.proto, entry.tcp_state, entry.flags);
        let idle = now.saturating_sub(entry.last_seen_ns);
        if idle > timeout {
            continue;
        }
        flows.push(Flow {
            proto: proto_name(key.proto),
            state: if key.proto == IPPROTO_TCP {
                TcpState::from_u8(entry.tcp_state).name()
            } else {
                ""
            },
            nat: if entry.nat & NAT_REFLECT != 0 {
                "hairpin"
            } else if entry.nat & NAT_DNAT != 0 {
                "dnat"
            } else if entry.nat & NAT_SNAT != 0 {
                "snat"
            } else {
                "-"
            },
            original: WireTuple::from(key),
            reply: WireTuple::from(&entry.peer),
            age_s: now.saturating_sub(entry.created_ns) / 1_000_000_000,
            expires_in_s: (timeout - idle) / 1_000_000_000,
            replied: entry.flags & netlab_common::nat::CT_REPLIED != 0,
            packets: entry.packets,
            bytes: entry.bytes,
            reply_packets: reply.packets,
            reply_bytes: reply.bytes,
        });
    }
    Ok(flows)
}

/// The conntrack tables: assured flows, then flows not assured yet.
pub const CONNTRACK_TABLES: [&str; 2] = [names::CONNTRACK, names::CONNTRACK_NEW];

/// Entries in the conntrack tables (two per flow) and their capacity.
pub fn conntrack_usage(lab: &str) -> Result<(usize, u32)> {
    let (mut used, mut max) = (0, 0);
    for name in CONNTRACK_TABLES {
        let data = open(lab, name)?;
        max += data.info()?.max_entries();
        let table: HashMap<_, FlowKey, CtEntry> = HashMap::try_from(Map::LruHashMap(data))?;
        used += table.keys().count();
    }
    Ok((used, max))
}

/// `conntrack -L` style lines.
pub fn render_conntrack(flows: &[Flow]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for f in flows {
        let tuple = |t: &WireTuple| {
            if f.proto == "icmp" {
                format!("src={} dst={} id={}", t.src, t.dst, t.sport.max(t.dport))
            } else {
                format!(
                    "src={} dst={} sport={} dport={}",
                    t.src, t.dst, t.sport, t.dport
                )
            }
        };
        let _ = writeln!(
            out,
            "{:<4} {:>6}s {:<11} {} packets={} bytes={} {} packets={} bytes={} {}[{}] age={}s",
            f.proto,
            f.expires_in_s,
            f.state,
            tuple(&f.original),
            f.packets,
            f.bytes,
            tuple(&f.reply),
            f.reply_packets,
            f.reply_bytes,
            if f.replied { "" } else { "[UNREPLIED] " },
            f.nat,
            f.age_s,
        );
    }
    let _ = writeln!(out, "{} flows", flows.len());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mappings_parse_like_docker() {
        assert_eq!(
            parse_mapping("8080:80/tcp").unwrap(),
            (8080, 80, Proto::Tcp)
        );
        assert_eq!(
            parse_mapping("5353:53/udp").unwrap(),
            (5353, 53, Proto::Udp)
        );
        assert_eq!(parse_mapping("9000").unwrap(), (9000, 9000, Proto::Tcp));
        assert!(parse_mapping("0:80").is_err());
        assert!(parse_mapping("70000:80").is_err());
        assert!(parse_mapping("80/sctp").is_err());
        assert!(parse_mapping("a:b").is_err());
    }

    #[test]
    fn conflicting_publish_is_refused() {
        let topo = crate::topology::default_lab().unwrap();
        let current = vec![PublishRecord {
            host_port: 8080,
            proto: "tcp".into(),
            namespace: "blue".into(),
            port: 80,
        }];
        let same_port = PublishRecord {
            host_port: 8080,
            proto: "tcp".into(),
            namespace: "red".into(),
            port: 81,
        };
        let err = check_new_publish(&topo, &current, &same_port).unwrap_err();
        assert!(err.to_string().contains("already published"), "{err}");
        let udp = PublishRecord {
            proto: "udp".into(),
            ..same_port.clone()
        };
        check_new_publish(&topo, &current, &udp).unwrap();
        let outside_lab = PublishRecord {
            host_port: 9090,
            namespace: "nosuch".into(),
            ..same_port
        };
        let err = check_new_publish(&topo, &current, &outside_lab).unwrap_err();
        assert!(err.to_string().contains("not a namespace"), "{err}");
    }

    #[test]
    fn backends_and_uplink_come_from_the_topology() {
        let topo = crate::topology::default_lab().unwrap();
        assert_eq!(
            backend_addr(&topo, "blue"),
            Some(Ipv4Addr::new(192, 168, 15, 2))
        );
        assert_eq!(uplink_addr(&topo), Some(Ipv4Addr::new(203, 0, 113, 1)));
    }
}
