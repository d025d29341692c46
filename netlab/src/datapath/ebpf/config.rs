//! The eBPF datapath's configuration maps: [`plan`] says what they must
//! hold for a topology and the links the kernel has (pure, unit-tested, as
//! `iptables/plan.rs` is for the rules), [`apply`] makes the pinned maps
//! hold exactly that (idempotent: a rerun converges). Published ports are
//! kept apart ([`sync_published`], [`publish_one`], [`unpublish_one`]):
//! they change at run time, one map update each.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::{Context, Result, bail};
use aya::maps::lpm_trie::Key;
use netlab_common::nat::{
    Backend, Backend6, Endpoint, IPPROTO_TCP, IPPROTO_UDP, IfaceConfig, NET_GROUP, NET_INTERNAL,
    NET_SET_INLINE, NET_UPLINK, NatConfig, Net, Net6, Net6SetOf, NetSet, PublishKey, ROLE_LAB,
    ROLE_UPLINK, backend_port_bit, iface_slot, publish_epoch_slot,
};

use super::maps;
use crate::{
    netlink,
    pins::Pins,
    sys,
    topology::{
        Datapath, InForce, Ipv4Net, Ipv6Net, MAX_PEERS, Place, Pod, Proto, PublishedPort, Service,
        Topology,
    },
};

/// An address as the maps hold it (network byte order).
pub(super) fn be(addr: Ipv4Addr) -> u32 {
    u32::from(addr).to_be()
}

/// A subnet as the datapath compares it.
fn net(net: Ipv4Net) -> Net {
    Net {
        net: be(net.network().addr),
        mask: net.mask().to_be(),
    }
}

/// The IP protocol number of a published port.
pub(super) fn ip_proto(proto: Proto) -> u8 {
    match proto {
        Proto::Tcp => IPPROTO_TCP,
        Proto::Udp => IPPROTO_UDP,
    }
}

fn publish_key(port: &PublishedPort) -> PublishKey {
    PublishKey {
        port: port.host_port.to_be(),
        proto: ip_proto(port.proto),
        _pad: 0,
    }
}

/// What the kernel says of the lab's links, as [`plan`] needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabLinks {
    /// The host's links by name: ifindex and MAC.
    pub host: BTreeMap<String, (u32, Option<[u8; 6]>)>,
    /// MACs of the namespace-side veth ends, by (namespace, name).
    pub inner_macs: BTreeMap<(Place, String), [u8; 6]>,
    /// The cookie of the lab's host network namespace.
    pub host_netns_cookie: u64,
}

impl LabLinks {
    /// Reads them from the kernel.
    pub fn read(topo: &Topology) -> Result<LabLinks> {
        let host = netlink::run_in(&Place::Host, |nl| async move {
            Ok(nl
                .links()
                .await?
                .into_iter()
                .map(|l| (l.name.clone(), (l.index, l.mac)))
                .collect())
        })?;
        let mut inner_macs = BTreeMap::new();
        for (inner, _) in endpoint_ends(topo) {
            let name = inner.name.clone();
            let mac = netlink::run_in(&inner.place, |nl| async move {
                Ok(nl.require_link(&name).await?.mac)
            })?
            .with_context(|| format!("no MAC address on {}", inner.name))?;
            inner_macs.insert((inner.place.clone(), inner.name.clone()), mac);
        }
        Ok(LabLinks {
            host,
            inner_macs,
            host_netns_cookie: sys::host_netns_cookie()?,
        })
    }

    fn index(&self, name: &str) -> Result<u32> {
        self.host
            .get(name)
            .map(|(index, _)| *index)
            .with_context(|| format!("interface {name} is missing on the host"))
    }
}

/// Every pair (namespace-side end, host-side end) of a veth whose
/// namespace side is reached through its host side: the lab's endpoints.
/// The uplink's peer is the world, reached through the uplink (and
/// masquerade), never by a peer redirect.
fn endpoint_ends(
    topo: &Topology,
) -> impl Iterator<Item = (&crate::topology::VethEnd, &crate::topology::VethEnd)> {
    topo.veths
        .iter()
        .flat_map(|v| [(&v.a, &v.b), (&v.b, &v.a)])
        .filter(|(inner, outer)| {
            inner.place != Place::Host && outer.place == Place::Host && !topo.is_uplink(&outer.name)
        })
}

/// Everything the configuration maps must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapContents {
    pub nat: NatConfig,
    /// `LOCAL_ADDRS`: every host address of the lab (the first eight are
    /// also inline in `nat.local`).
    pub local: BTreeSet<u32>,
    /// `LAB_NETS`: (prefix length, network) → kind (`NET_*`).
    pub lab_nets: BTreeMap<(u32, u32), u32>,
    /// `MASQ_SUBNETS`: (prefix length, network).
    pub masquerade: BTreeSet<(u32, u32)>,
    /// `IFACE_CONFIG`: ifindex → the interface's configuration.
    pub ifaces: BTreeMap<u32, IfaceConfig>,
    /// `IFACES`: slot → the configuration of the interface that has it
    /// (the lowest ifindex of those that map to it).
    pub iface_slots: BTreeMap<u32, IfaceConfig>,
    /// `ENDPOINTS`: namespace address → where it is reached.
    pub endpoints: BTreeMap<u32, Endpoint>,
    /// `ENDPOINTS6`: the same for namespaces' IPv6 addresses.
    pub endpoints6: BTreeMap<[u32; 4], Endpoint>,
}

/// How many rows of per-interface counters a lab of `topo` needs: one per
/// host-side veth end, and row 0 (which counts nothing).
pub fn iface_slots(topo: &Topology) -> u32 {
    topo.host_ends().count() as u32 + 1
}

/// 16 network-order bytes as the datapath reads them from a header: four
/// words, each as it sits in memory.
fn header_words(bytes: [u8; 16]) -> [u32; 4] {
    let mut out = [0; 4];
    for (word, chunk) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    out
}

/// An IPv6 subnet as the datapath compares it.
fn net6(net: Ipv6Net) -> Net6 {
    Net6 {
        net: header_words(net.network().addr.octets()),
        mask: header_words(net.mask().to_be_bytes()),
    }
}

/// The lab's IPv6 subnets or host addresses (validation keeps them within
/// the inline room).
fn net6_set<const N: usize>(nets: &[Ipv6Net]) -> Net6SetOf<N> {
    let mut set = Net6SetOf::<N>::default();
    for (slot, n) in set.nets.iter_mut().zip(nets) {
        *slot = net6(*n);
    }
    set
}

/// Fills a [`NetSet`] with `nets`: inline when they fit, else flagged to
/// be asked of its map (which always holds them all).
fn net_set(nets: &[Net]) -> NetSet {
    let mut set = NetSet {
        count: nets.len().min(NET_SET_INLINE) as u32,
        ..NetSet::default()
    };
    if nets.len() > NET_SET_INLINE {
        set.overflow = 1;
    }
    for (slot, n) in set.nets.iter_mut().zip(nets) {
        *slot = *n;
    }
    set
}

/// The rows a pod takes: its host end's configuration (a lab interface
/// whose gateway is the pod network's, counted in no row of redirect
/// decisions) and its endpoint (reached through its host end, from the
/// pod network's bridge). `None` for a pod not attached yet.
pub fn pod_rows(
    topo: &Topology,
    pod: &Pod,
    bridge_mac: [u8; 6],
) -> Option<(IfaceConfig, Endpoint)> {
    let gateway = topo.pod_gateway()?;
    let mac = pod.mac?;
    (pod.host_ifindex != 0).then_some((
        IfaceConfig {
            gateway: be(gateway.addr),
            role: ROLE_LAB,
            slot: 0,
            ifindex: pod.host_ifindex,
            // Pods have no IPv6 yet.
            gateway6: [0; 4],
        },
        Endpoint {
            ifindex: pod.host_ifindex,
            mac,
            gateway_mac: bridge_mac,
        },
    ))
}

/// What the maps must hold for `topo` and its `pods` on the kernel's
/// `links` (pure). A pod whose host end is gone (its namespace went) has
/// no rows.
pub fn plan(topo: &Topology, links: &LabLinks, pods: &[Pod]) -> Result<MapContents> {
    let (port_min, port_max) = topo.nat.port_range;
    let masq_addr = if topo.nat.masquerade.is_empty() {
        0
    } else {
        topo.uplink_addr().map(be).unwrap_or(0)
    };
    let uplink_net = topo
        .uplink_end()
        .and_then(|e| e.addresses.first())
        .map(|a| a.net);
    let uplink_nets: BTreeSet<Ipv4Net> = topo
        .uplink_end()
        .into_iter()
        .flat_map(|e| e.addresses.iter().map(|a| a.net.network()))
        .collect();
    let uplink_addr6 = topo
        .uplink_end()
        .and_then(|e| e.addresses6.first())
        .map(|a| a.net.addr);
    let mut uplink_nets6: Vec<Ipv6Net> = Vec::new();
    for net in topo
        .uplink_end()
        .into_iter()
        .flat_map(|e| e.addresses6.iter().map(|a| a.net.network()))
    {
        if !uplink_nets6.contains(&net) {
            uplink_nets6.push(net);
        }
    }

    // Published ports answer on every host address of the lab (Docker
    // publishes on all host addresses; netlab never claims the host's own).
    let local: BTreeSet<u32> = topo.host_addresses().map(|(_, a)| be(a.net.addr)).collect();
    let local_nets: Vec<Net> = local.iter().map(|&a| Net { net: a, mask: !0 }).collect();

    // The uplink's subnet stands for the world; every other subnet lives
    // behind the lab's own veths (and so may never arrive on the uplink).
    let mut lab_nets = BTreeMap::new();
    let mut internal = Vec::new();
    for address in topo.addresses() {
        let network = address.net.network();
        let kind = if uplink_nets.contains(&network) {
            NET_UPLINK
        } else {
            NET_INTERNAL
        };
        let key = (u32::from(network.prefix_len), be(network.addr));
        if lab_nets.insert(key, kind).is_none() && kind == NET_INTERNAL {
            internal.push(net(network));
        }
    }
    for group in [
        Ipv4Net {
            addr: Ipv4Addr::new(224, 0, 0, 0),
            prefix_len: 4,
        },
        Ipv4Net {
            addr: Ipv4Addr::BROADCAST,
            prefix_len: 32,
        },
    ] {
        lab_nets.insert((u32::from(group.prefix_len), be(group.addr)), NET_GROUP);
    }
    let masquerade: BTreeSet<(u32, u32)> = topo
        .nat
        .masquerade
        .iter()
        .map(|n| (u32::from(n.prefix_len), be(n.network().addr)))
        .collect();
    let masq_nets: Vec<Net> = topo.nat.masquerade.iter().map(|n| net(*n)).collect();
    // Validation keeps them within the set's inline room (no trie).
    const _: () = assert!(MAX_PEERS <= NET_SET_INLINE);
    let peer_nets: Vec<Net> = topo
        .pod_network
        .iter()
        .flat_map(|p| p.peers.iter().map(|peer| net(peer.subnet)))
        .collect();

    let nat = NatConfig {
        masq_addr,
        port_min,
        port_max,
        host_netns_cookie: links.host_netns_cookie,
        redirect: u32::from(topo.datapath == Datapath::Redirect),
        uplink_ifindex: match topo.nat.uplink.as_deref() {
            Some(name) => links.index(name)?,
            None => 0,
        },
        // The lab is closed: its namespaces reach the lab's own subnets (the
        // uplink's included, which stands for the world) and nothing else,
        // so the host never forwards lab traffic out of one of its own
        // interfaces; and the world reaches the lab only through published
        // ports and the replies of masquerade.
        closed: 1,
        _pad: 0,
        uplink: uplink_net.map(net).unwrap_or_default(),
        local: net_set(&local_nets),
        internal: net_set(&internal),
        masquerade: net_set(&masq_nets),
        peers: net_set(&peer_nets),
        services: topo.nat.service_range.map(net).unwrap_or_default(),
        internal6: net6_set(&topo.internal_subnets6()),
        local6: net6_set(&topo.local_addresses6()),
        masquerade6: net6_set(&topo.nat.masquerade6),
        // NAT66 masquerades to the uplink's first IPv6 address, as
        // ip6tables' MASQUERADE picks the outgoing interface's.
        masq_addr6: match (topo.nat.masquerade6.is_empty(), uplink_addr6) {
            (false, Some(addr)) => header_words(addr.octets()),
            _ => [0; 4],
        },
        uplink6: net6_set(&uplink_nets6),
    };

    let mut ifaces = BTreeMap::new();
    for (slot, end) in (1..).zip(topo.host_ends()) {
        let gateway = match &end.bridge {
            Some(bridge) => topo.host_iface_addr(bridge),
            None => end.addresses.first().map(|a| a.net.addr),
        };
        let gateway6 = match &end.bridge {
            Some(bridge) => topo
                .host_addresses6()
                .find(|(iface, _)| iface == bridge)
                .map(|(_, a)| a.net.addr),
            None => end.addresses6.first().map(|a| a.net.addr),
        };
        let role = if topo.is_uplink(&end.name) {
            ROLE_UPLINK
        } else {
            ROLE_LAB
        };
        let ifindex = links.index(&end.name)?;
        ifaces.insert(
            ifindex,
            IfaceConfig {
                gateway: gateway.map(be).unwrap_or(0),
                role,
                slot,
                ifindex,
                gateway6: gateway6.map_or([0; 4], |a| header_words(a.octets())),
            },
        );
    }
    let mut pod_endpoints = BTreeMap::new();
    let bridge_mac = topo
        .pod_network
        .as_ref()
        .and_then(|p| links.host.get(&p.bridge))
        .and_then(|(_, mac)| *mac);
    for pod in pods {
        let present = links.host.get(&pod.host_veth).map(|(index, _)| *index);
        if present != Some(pod.host_ifindex) {
            continue;
        }
        if let Some((config, endpoint)) = bridge_mac.and_then(|mac| pod_rows(topo, pod, mac)) {
            ifaces.insert(pod.host_ifindex, config);
            pod_endpoints.insert(be(pod.addr), endpoint);
        }
    }
    let mut iface_slots = BTreeMap::new();
    for (ifindex, config) in &ifaces {
        iface_slots.entry(iface_slot(*ifindex)).or_insert(*config);
    }

    // The `redirect` datapath hands packets to the endpoints; both eBPF
    // datapaths bridge a lab namespace's DNATed flow on to a backend of its
    // own segment (as br_netfilter does).
    let mut endpoints = BTreeMap::new();
    let mut endpoints6 = BTreeMap::new();
    for (inner, outer) in endpoint_ends(topo) {
        let host_end = links.index(&outer.name)?;
        let gateway = outer.bridge.as_deref().unwrap_or(&outer.name);
        let gateway_mac = links
            .host
            .get(gateway)
            .and_then(|(_, mac)| *mac)
            .with_context(|| format!("no MAC address on {gateway}"))?;
        let Some(mac) = links
            .inner_macs
            .get(&(inner.place.clone(), inner.name.clone()))
        else {
            bail!("no MAC address on {}", inner.name);
        };
        let endpoint = Endpoint {
            ifindex: host_end,
            mac: *mac,
            gateway_mac,
        };
        for address in &inner.addresses {
            endpoints.insert(be(address.net.addr), endpoint);
        }
        for address in &inner.addresses6 {
            endpoints6.insert(header_words(address.net.addr.octets()), endpoint);
        }
    }

    endpoints.extend(pod_endpoints);

    Ok(MapContents {
        nat,
        local,
        lab_nets,
        masquerade,
        ifaces,
        iface_slots,
        endpoints,
        endpoints6,
    })
}

/// Writes one pod's rows (see [`pod_rows`]): its host end's configuration,
/// the interface slot when no other interface holds it, its endpoint.
pub fn attach_pod(pins: &Pins, topo: &Topology, pod: &Pod, bridge_mac: [u8; 6]) -> Result<()> {
    let (config, endpoint) = pod_rows(topo, pod, bridge_mac)
        .with_context(|| format!("pod {} has no host end or MAC yet", pod.key()))?;
    maps::iface_config(pins)?.insert(pod.host_ifindex, config, 0)?;
    let mut slots = maps::ifaces(pins)?;
    let slot = iface_slot(pod.host_ifindex);
    let held = slots.get(&slot, 0)?;
    if held.role == 0 || held.ifindex == pod.host_ifindex {
        slots.set(slot, config, 0)?;
    }
    maps::endpoints(pins)?.insert(be(pod.addr), endpoint, 0)?;
    Ok(())
}

/// Removes one pod's rows, those that are still its own; rows already gone
/// are fine (a second DEL).
pub fn detach_pod(pins: &Pins, pod: &Pod) -> Result<()> {
    if pod.host_ifindex == 0 {
        return Ok(());
    }
    let mut endpoints = maps::endpoints(pins)?;
    if endpoints
        .get(&be(pod.addr), 0)
        .is_ok_and(|e| e.ifindex == pod.host_ifindex)
    {
        endpoints.remove(&be(pod.addr))?;
    }
    let mut configs = maps::iface_config(pins)?;
    if configs.get(&pod.host_ifindex, 0).is_ok() {
        configs.remove(&pod.host_ifindex)?;
    }
    let mut slots = maps::ifaces(pins)?;
    let slot = iface_slot(pod.host_ifindex);
    if slots.get(&slot, 0)?.ifindex == pod.host_ifindex {
        slots.set(slot, IfaceConfig::default(), 0)?;
    }
    Ok(())
}

/// What of a pod's rows is missing, for CHECK: one line each.
pub fn pod_missing(pins: &Pins, pod: &Pod) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    if maps::iface_config(pins)?.get(&pod.host_ifindex, 0).is_err() {
        missing.push(format!("{} has no datapath configuration", pod.host_veth));
    }
    if !maps::endpoints(pins)?
        .get(&be(pod.addr), 0)
        .is_ok_and(|e| e.ifindex == pod.host_ifindex)
    {
        missing.push(format!("{} is not the datapath's endpoint", pod.addr));
    }
    Ok(missing)
}

/// Makes the pinned configuration maps hold exactly `plan`.
pub fn apply(pins: &Pins, plan: &MapContents) -> Result<()> {
    maps::nat_config(pins)?.set(0, plan.nat, 0)?;

    let mut local = maps::local_addrs(pins)?;
    let stale: Vec<u32> = local
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !plan.local.contains(k))
        .collect();
    for key in stale {
        local.remove(&key)?;
    }
    for addr in &plan.local {
        local.insert(addr, 1, 0)?;
    }

    let mut lab_nets = maps::lab_nets(pins)?;
    let stale: Vec<Key<u32>> = lab_nets.keys().filter_map(|k| k.ok()).collect();
    for key in stale {
        lab_nets.remove(&key)?;
    }
    for (&(prefix_len, addr), kind) in &plan.lab_nets {
        lab_nets.insert(&Key::new(prefix_len, addr), kind, 0)?;
    }

    let mut masq = maps::masq_subnets(pins)?;
    let stale: Vec<Key<u32>> = masq.keys().filter_map(|k| k.ok()).collect();
    for key in stale {
        masq.remove(&key)?;
    }
    for &(prefix_len, addr) in &plan.masquerade {
        masq.insert(&Key::new(prefix_len, addr), 1, 0)?;
    }

    let mut ifaces = maps::iface_config(pins)?;
    let mut slots = maps::ifaces(pins)?;
    let stale: Vec<u32> = ifaces
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !plan.ifaces.contains_key(k))
        .collect();
    for key in stale {
        ifaces.remove(&key)?;
        // The slots of interfaces gone, unless another has them now.
        let slot = iface_slot(key);
        if !plan.iface_slots.contains_key(&slot) {
            slots.set(slot, IfaceConfig::default(), 0)?;
        }
    }
    for (index, config) in &plan.ifaces {
        ifaces.insert(index, config, 0)?;
    }
    for (slot, config) in &plan.iface_slots {
        slots.set(*slot, config, 0)?;
    }

    let mut endpoints = maps::endpoints(pins)?;
    let stale: Vec<u32> = endpoints
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !plan.endpoints.contains_key(k))
        .collect();
    for key in stale {
        endpoints.remove(&key)?;
    }
    for (addr, endpoint) in &plan.endpoints {
        endpoints.insert(addr, endpoint, 0)?;
    }

    let mut endpoints6 = maps::endpoints6(pins)?;
    let stale: Vec<[u32; 4]> = endpoints6
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !plan.endpoints6.contains_key(k))
        .collect();
    for key in stale {
        endpoints6.remove(&key)?;
    }
    for (addr, endpoint) in &plan.endpoints6 {
        endpoints6.insert(addr, endpoint, 0)?;
    }
    Ok(())
}

/// Writes the configuration maps for `topo` and its `pods` (idempotent).
pub fn configure(pins: &Pins, topo: &Topology, pods: &[Pod]) -> Result<()> {
    let links = LabLinks::read(topo)?;
    apply(pins, &plan(topo, &links, pods)?)
}

fn publish_entry(topo: &Topology, port: &PublishedPort) -> Result<(PublishKey, Backend)> {
    let addr = port
        .backend(topo)
        .with_context(|| format!("namespace `{}` has no lab address", port.namespace))?;
    Ok((
        publish_key(port),
        Backend {
            addr: be(addr),
            port: port.port.to_be(),
            service: 0,
        },
    ))
}

/// The `PUBLISHED6` row of `port`: over IPv6 to its namespace's address
/// in a masqueraded IPv6 subnet, as ip6tables' DNAT has it. `None` for a
/// port not published over IPv6 (a namespace without such an address, a
/// port published to an explicit IPv4 address).
fn publish_entry6(topo: &Topology, port: &PublishedPort) -> Option<(PublishKey, Backend6)> {
    if port.addr.is_some() {
        return None;
    }
    let addr = topo.backend_addr6(&port.namespace)?;
    Some((
        publish_key(port),
        Backend6 {
            addr: header_words(addr.octets()),
            port: port.port.to_be(),
            _pad: 0,
        },
    ))
}

/// The `PUBLISHED` row of `service`'s NodePort, if it has one.
pub fn node_port_entry(service: &Service) -> Option<(PublishKey, Backend)> {
    let port = service.node_port?;
    Some((
        PublishKey {
            port: port.to_be(),
            proto: ip_proto(service.proto),
            _pad: 0,
        },
        Backend {
            addr: 0,
            port: 0,
            service: service.ids.node,
        },
    ))
}

/// The words of `BACKEND_PORTS` for the backends in force.
fn backend_port_words(in_force: &InForce<'_>) -> BTreeMap<u32, u64> {
    let mut words = BTreeMap::new();
    for port in in_force.backend_ports() {
        let (word, bit) = backend_port_bit(port);
        *words.entry(word).or_insert(0) |= bit;
    }
    words
}

/// Writes the word of `BACKEND_PORTS` that holds `port`'s bit, as the
/// backends in force make it.
/// One pass over the ports, nothing allocated: with 30,000 ports, building
/// every word first took 200 µs of a `publish add`, measured.
pub fn set_backend_port_word(pins: &Pins, in_force: &InForce<'_>, port: u16) -> Result<()> {
    let (word, _) = backend_port_bit(port);
    let value = in_force
        .backend_ports()
        .map(backend_port_bit)
        .filter(|(w, _)| *w == word)
        .fold(0, |value, (_, bit)| value | bit);
    maps::backend_ports(pins)?.set(word, value, 0)?;
    Ok(())
}

/// Adds one published port (already in `published`, the ports in force):
/// one map update, whatever the number present, and its backend port's
/// bit.
pub fn publish_one(
    pins: &Pins,
    topo: &Topology,
    in_force: &InForce<'_>,
    port: &PublishedPort,
) -> Result<()> {
    let (key, backend) = publish_entry(topo, port)?;
    // The bit first: a reply from the backend may follow the first packet.
    set_backend_port_word(pins, in_force, port.port)?;
    maps::published(pins)?.insert(key, backend, 0)?;
    if let Some((key, backend)) = publish_entry6(topo, port) {
        maps::published6(pins)?.insert(key, backend, 0)?;
    }
    Ok(())
}

/// Removes one published port (no longer in `published`): one map delete
/// per family it was published for, and its backend port's bit unless
/// another published port still uses it.
pub fn unpublish_one(
    pins: &Pins,
    topo: &Topology,
    in_force: &InForce<'_>,
    port: &PublishedPort,
) -> Result<()> {
    // Gone already is fine (a DEL after an ADD that recorded the port and
    // died before publishing it).
    let mut map = maps::published(pins)?;
    let key = publish_key(port);
    if map.get(&key, 0).is_ok() {
        map.remove(&key)?;
    }
    if publish_entry6(topo, port).is_some() {
        let mut map = maps::published6(pins)?;
        if map.get(&key, 0).is_ok() {
            map.remove(&key)?;
        }
    }
    set_backend_port_word(pins, in_force, port.port)
}

/// Cuts the flows a published port opened (`port` was removed), as
/// Docker and kube-proxy flush the kernel's conntrack entries of a removed
/// port, so a client that keeps sending (UDP) is evaluated afresh: the
/// port's epoch moves on, and each of its flows dies at its next packet
/// (one array update, whatever the number of flows: a scan of both
/// conntrack tables took 0.4-0.8 ms, measured).
pub fn cut_flows(pins: &Pins, port: &PublishedPort) -> Result<()> {
    let Some(slot) = publish_epoch_slot(ip_proto(port.proto), port.host_port) else {
        return Ok(());
    };
    let mut epochs = maps::publish_epochs(pins)?;
    let epoch = epochs.get(&slot, 0)?;
    epochs.set(slot, epoch.wrapping_add(1), 0)?;
    Ok(())
}

/// Makes the PUBLISHED map hold exactly the published ports in force
/// and the Services' NodePorts, and the bitmap of backend ports their
/// backends'.
pub fn sync_published(pins: &Pins, topo: &Topology, in_force: &InForce<'_>) -> Result<()> {
    let mut published = maps::published(pins)?;
    let mut wanted = BTreeMap::new();
    for port in in_force.published {
        let (key, backend) = publish_entry(topo, port)?;
        wanted.insert((key.port, key.proto), (key, backend));
    }
    for service in in_force.services {
        if let Some((key, backend)) = node_port_entry(service) {
            wanted.insert((key.port, key.proto), (key, backend));
        }
    }
    let present: Vec<(PublishKey, Backend)> = published.iter().filter_map(|e| e.ok()).collect();
    let mut epochs = maps::publish_epochs(pins)?;
    for (key, _) in &present {
        if !wanted.contains_key(&(key.port, key.proto)) {
            published.remove(key)?;
            // Its flows die (see `cut_flows`).
            if let Some(slot) = publish_epoch_slot(key.proto, u16::from_be(key.port)) {
                let epoch = epochs.get(&slot, 0)?;
                epochs.set(slot, epoch.wrapping_add(1), 0)?;
            }
        }
    }
    // The bitmap's words that the ports present or wanted touch: only
    // those can differ from what they should be (one lookup per port, not
    // one per word of the map).
    let mut words = maps::backend_ports(pins)?;
    let wanted_words = backend_port_words(in_force);
    let touched: BTreeSet<u32> = present
        .iter()
        .filter(|(_, backend)| backend.service == 0)
        .map(|(_, backend)| backend_port_bit(u16::from_be(backend.port)).0)
        .chain(wanted_words.keys().copied())
        .collect();
    for word in touched {
        let value = wanted_words.get(&word).copied().unwrap_or(0);
        if words.get(&word, 0)? != value {
            words.set(word, value, 0)?;
        }
    }
    for (key, backend) in wanted.values() {
        published.insert(key, backend, 0)?;
    }
    // IPv6's rows, as IPv4's (their epochs are the same ports').
    let mut published6 = maps::published6(pins)?;
    let wanted6: BTreeMap<(u16, u8), (PublishKey, Backend6)> = in_force
        .published
        .iter()
        .filter_map(|port| publish_entry6(topo, port))
        .map(|(key, backend)| ((key.port, key.proto), (key, backend)))
        .collect();
    let present6: Vec<PublishKey> = published6.keys().filter_map(|k| k.ok()).collect();
    for key in &present6 {
        if !wanted6.contains_key(&(key.port, key.proto)) {
            published6.remove(key)?;
        }
    }
    for (key, backend) in wanted6.values() {
        published6.insert(key, backend, 0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology;

    fn links(topo: &Topology) -> LabLinks {
        let mut links = LabLinks {
            host_netns_cookie: 7,
            ..LabLinks::default()
        };
        let mut index = 100;
        for bridge in &topo.bridges {
            links.host.insert(
                bridge.name.clone(),
                (index, Some([2, 0, 0, 0, 0, index as u8])),
            );
            index += 1;
        }
        for end in topo.veth_ends() {
            if end.place == Place::Host {
                links.host.insert(
                    end.name.clone(),
                    (index, Some([2, 0, 0, 0, 1, index as u8])),
                );
            } else {
                links.inner_macs.insert(
                    (end.place.clone(), end.name.clone()),
                    [2, 0, 0, 0, 2, index as u8],
                );
            }
            index += 1;
        }
        links
    }

    fn v4(text: &str) -> u32 {
        be(text.parse().unwrap_or(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn the_default_lab_fills_every_map() {
        let topo = topology::default_lab().unwrap_or_else(|e| panic!("{e}"));
        let links = links(&topo);
        let plan = plan(&topo, &links, &[]).unwrap_or_else(|e| panic!("{e:#}"));
        let nat = &plan.nat;
        assert_eq!(nat.masq_addr, v4("198.18.0.1"));
        assert_eq!((nat.port_min, nat.port_max), (32768, 60999));
        assert_eq!(nat.host_netns_cookie, 7);
        assert_eq!(nat.redirect, 0);
        assert_eq!(nat.closed, 1);
        assert_eq!(nat.uplink_ifindex, links.host["nl-uplink"].0);
        assert!(nat.uplink.contains(v4("198.18.0.77")));
        assert!(!nat.uplink.contains(v4("192.168.15.2")));
        // The bridge's and the uplink's addresses, inline.
        assert_eq!(plan.local, [v4("192.168.15.5"), v4("198.18.0.1")].into());
        assert_eq!(nat.local.overflow, 0);
        assert!(nat.local.nets.iter().any(|n| n.contains(v4("198.18.0.1"))));
        assert!(!nat.local.nets.iter().any(|n| n.contains(v4("198.18.0.2"))));
        // One internal subnet (the bridge's), masqueraded.
        assert_eq!(nat.internal.nets.iter().filter(|n| n.mask != 0).count(), 1);
        assert!(nat.internal.nets[0].contains(v4("192.168.15.200")));
        assert!(nat.masquerade.nets[0].contains(v4("192.168.15.1")));
        assert_eq!(nat.peers.count, 0);
        assert_eq!(plan.lab_nets[&(24, v4("198.18.0.0"))], NET_UPLINK);
        assert_eq!(plan.lab_nets[&(24, v4("192.168.15.0"))], NET_INTERNAL);
        assert_eq!(plan.lab_nets[&(4, v4("224.0.0.0"))], NET_GROUP);
        // Every host end has a role and its own counters' row.
        let uplink = plan.ifaces[&links.host["nl-uplink"].0];
        assert_eq!(
            (uplink.role, uplink.gateway),
            (ROLE_UPLINK, v4("198.18.0.1"))
        );
        let red = plan.ifaces[&links.host["veth-red-br"].0];
        assert_eq!((red.role, red.gateway), (ROLE_LAB, v4("192.168.15.5")));
        let slots: BTreeSet<u32> = plan.ifaces.values().map(|c| c.slot).collect();
        assert_eq!(slots, (1..iface_slots(&topo)).collect());
        // Each in its array slot too, tagged with its ifindex.
        for (ifindex, config) in &plan.ifaces {
            assert_eq!(plan.iface_slots[&iface_slot(*ifindex)], *config);
            assert_eq!(config.ifindex, *ifindex);
        }
        // red and blue are endpoints, behind their host ends, with the
        // bridge as their gateway; outside (the world) is not.
        assert_eq!(plan.endpoints.len(), 2);
        let blue = plan.endpoints[&v4("192.168.15.2")];
        assert_eq!(blue.ifindex, links.host["veth-blue-br"].0);
        assert_eq!(Some(blue.gateway_mac), links.host["v-net-0"].1);
        assert!(!plan.endpoints.contains_key(&v4("198.18.0.2")));
    }

    #[test]
    fn more_subnets_than_fit_inline_overflow_to_their_maps() {
        let mut text = String::from("name = \"wide\"\n");
        for i in 0..10 {
            text.push_str(&format!(
                "[[namespace]]\nname = \"n{i}\"\n[[veth]]\nname = \"v{i}\"\nnetns = \"n{i}\"\n\
                 addresses = [\"10.{i}.0.2/24\"]\npeer = {{ name = \"v{i}-h\", addresses = [\"10.{i}.0.1/24\"] }}\n"
            ));
        }
        let topo = topology::parse(&text, "wide.toml").unwrap_or_else(|e| panic!("{e}"));
        let plan = plan(&topo, &links(&topo), &[]).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(plan.nat.local.overflow, 1);
        assert_eq!(plan.local.len(), 10);
        assert_eq!(plan.nat.internal.overflow, 1);
        assert_eq!(
            plan.lab_nets
                .values()
                .filter(|k| **k == NET_INTERNAL)
                .count(),
            10
        );
        assert_eq!(plan.nat.masq_addr, 0, "no masquerade, no uplink");
    }

    #[test]
    fn a_missing_link_is_named() {
        let topo = topology::default_lab().unwrap_or_else(|e| panic!("{e}"));
        let mut links = links(&topo);
        links.host.remove("veth-blue-br");
        let err = plan(&topo, &links, &[]).err().map(|e| format!("{e:#}"));
        assert_eq!(
            err.as_deref(),
            Some("interface veth-blue-br is missing on the host")
        );
    }

    /// An IPv6 address as the datapath reads it from a header.
    fn v6(text: &str) -> [u32; 4] {
        header_words(
            text.parse::<std::net::Ipv6Addr>()
                .unwrap_or(std::net::Ipv6Addr::UNSPECIFIED)
                .octets(),
        )
    }

    #[test]
    fn the_lab_s_ipv6_subnets_are_inline_and_the_world_s_is_not() {
        let text = include_str!("../../topology/default.toml")
            .replace(
                r#""192.168.15.5/24""#,
                r#""192.168.15.5/24", "fd00:15::5/64""#,
            )
            .replace(
                r#""192.168.15.1/24""#,
                r#""192.168.15.1/24", "fd00:15::1/64""#,
            )
            .replace(r#""198.18.0.1/24""#, r#""198.18.0.1/24", "2001:2::1/64""#)
            // The world's end: another prefix length, and a second prefix.
            .replace(
                r#""198.18.0.2/24""#,
                r#""198.18.0.2/24", "2001:2::2/56", "2001:db8:1::2/64""#,
            );
        let topo = topology::parse(&text, "dual.toml").unwrap_or_else(|e| panic!("{e}"));
        let dual = plan(&topo, &links(&topo), &[]).unwrap_or_else(|e| panic!("{e:#}"));
        let set = dual.nat.internal6;
        assert!(set.contains(&v6("fd00:15::1")));
        assert!(set.contains(&v6("fd00:15::ffff:1")));
        assert!(!set.contains(&v6("fd00:16::1")));
        assert!(!set.contains(&v6("2001:2::2")));
        assert!(!set.contains(&v6("2001:2:0:7::2")));
        assert!(!set.contains(&v6("2001:db8:1::9")));
        assert!(!set.contains(&v6("fe80::1")));
        assert_eq!(set.nets.iter().filter(|n| n.mask[0] != 0).count(), 1);
        // The host's own addresses (the bridge's, the uplink's), reached
        // from the lab and answering for published ports; the rest of the
        // uplink's subnet is the world's, masqueraded to the uplink's.
        let hosts = dual.nat.local6;
        assert!(hosts.contains(&v6("2001:2::1")));
        assert!(hosts.contains(&v6("fd00:15::5")));
        assert!(!hosts.contains(&v6("2001:2::2")));
        assert_eq!(hosts.nets.iter().filter(|n| n.mask[0] != 0).count(), 2);
        assert!(dual.nat.uplink6.contains(&v6("2001:2::2")));
        assert!(!dual.nat.uplink6.contains(&v6("fd00:15::2")));
        // An IPv4-only lab has none: only its link's IPv6 passes.
        let topo = topology::default_lab().unwrap_or_else(|e| panic!("{e}"));
        let v4_only = plan(&topo, &links(&topo), &[]).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(!v4_only.nat.internal6.contains(&v6("::")));
        assert_eq!(v4_only.nat.internal6, Net6SetOf::default());
        assert_eq!(v4_only.nat.local6, Net6SetOf::default());
        assert_eq!(v4_only.nat.masq_addr6, [0; 4]);
    }

    #[test]
    fn a_node_s_peers_are_inline() {
        let text = format!(
            "{}\n[[pod_network.peer]]\nsubnet = \"10.78.0.0/24\"\nvia = \"198.18.1.2\"\n",
            include_str!("../../../../docs/cni/node.toml")
        );
        let topo = topology::parse(&text, "node.toml").unwrap_or_else(|e| panic!("{e}"));
        let plan = plan(&topo, &links(&topo), &[]).unwrap_or_else(|e| panic!("{e:#}"));
        let peers = plan.nat.peers;
        assert_eq!((peers.count, peers.overflow), (1, 0));
        assert!(peers.nets[0].contains(v4("10.78.0.9")));
        assert!(!peers.nets[0].contains(v4("10.77.0.9")));
        // Peers are neither the lab's own subnets nor masqueraded.
        assert!(
            !plan
                .nat
                .internal
                .nets
                .iter()
                .any(|n| n.mask != 0 && n.contains(v4("10.78.0.9")))
        );
        assert!(
            !plan
                .nat
                .masquerade
                .nets
                .iter()
                .any(|n| n.mask != 0 && n.contains(v4("10.78.0.9")))
        );
    }
}
