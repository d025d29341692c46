//! Writes the eBPF datapath's configuration maps from the topology and the
//! published ports (idempotent: every sync makes a map hold exactly what is
//! wanted, so a rerun converges).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use anyhow::{Context, Result, bail};
use aya::maps::lpm_trie::Key;
use netlab_common::nat::{
    Backend, Endpoint, IPPROTO_TCP, IPPROTO_UDP, IfaceConfig, NET_GROUP, NET_INTERNAL, NET_UPLINK,
    NatConfig, PublishKey, ROLE_LAB, ROLE_UPLINK,
};

use super::maps;
use crate::{
    netlink::{self, Link},
    pins::Pins,
    sys,
    topology::{Datapath, Ipv4Net, Place, Proto, PublishedPort, Topology},
};

/// An address as the maps hold it (network byte order).
fn be(addr: Ipv4Addr) -> u32 {
    u32::from(addr).to_be()
}

/// The IP protocol number of a published port.
fn ip_proto(proto: Proto) -> u8 {
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

/// Writes the NAT configuration maps from the topology (idempotent).
pub fn configure(pins: &Pins, topo: &Topology) -> Result<()> {
    let mut config = maps::nat_config(pins)?;
    let (port_min, port_max) = topo.nat.port_range;
    let masq_addr = if topo.nat.masquerade.is_empty() {
        0
    } else {
        topo.uplink_addr().map(be).unwrap_or(0)
    };
    let host_links: BTreeMap<String, Link> = netlink::run_in(&Place::Host, |nl| async move {
        Ok(nl
            .links()
            .await?
            .into_iter()
            .map(|l| (l.name.clone(), l))
            .collect())
    })?;
    let redirect = topo.datapath == Datapath::Redirect;
    let uplink_net = topo
        .veth_ends()
        .find(|e| topo.nat.uplink.as_deref() == Some(e.name.as_str()))
        .and_then(|e| e.addresses.first())
        .map(|a| a.net);
    config.set(
        0,
        NatConfig {
            masq_addr,
            port_min,
            port_max,
            host_netns_cookie: sys::host_netns_cookie()?,
            redirect: u32::from(redirect),
            closed: 1,
            uplink_net: uplink_net.map_or(0, |n| be(n.network().addr)),
            uplink_mask: uplink_net.map_or(0, |n| n.mask().to_be()),
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
    sync_endpoints(pins, topo, &host_links)?;

    // Published ports answer on every host address of the lab (Docker
    // publishes on all host addresses; netlab never claims the host's own).
    let mut local = maps::local_addrs(pins)?;
    let wanted: BTreeSet<u32> = topo.host_addresses().map(|(_, a)| be(a.net.addr)).collect();
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
    let mut lab_nets = maps::lab_nets(pins)?;
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

    let mut masq = maps::masq_subnets(pins)?;
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
                Some(bridge) => topo.host_iface_addr(bridge),
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
    let mut ifaces = maps::iface_config(pins)?;
    for (name, gateway, role) in host_ends {
        let index = *indexes
            .get(&name)
            .with_context(|| format!("interface {name} is missing on the host"))?;
        ifaces.insert(index, IfaceConfig { gateway, role }, 0)?;
    }
    Ok(())
}

fn publish_entry(topo: &Topology, port: &PublishedPort) -> Result<(PublishKey, Backend)> {
    let addr = topo
        .backend_addr(&port.namespace)
        .with_context(|| format!("namespace `{}` has no lab address", port.namespace))?;
    Ok((
        publish_key(port),
        Backend {
            addr: be(addr),
            port: port.port.to_be(),
            _pad: 0,
        },
    ))
}

/// Adds one published port: one map update, whatever the number present.
pub fn publish_one(pins: &Pins, topo: &Topology, port: &PublishedPort) -> Result<()> {
    let mut published = maps::published(pins)?;
    let (key, backend) = publish_entry(topo, port)?;
    published.insert(key, backend, 0)?;
    Ok(())
}

/// Removes one published port: one map delete. Established flows keep
/// their conntrack entries and finish normally.
pub fn unpublish_one(pins: &Pins, port: &PublishedPort) -> Result<()> {
    let mut published = maps::published(pins)?;
    match published.remove(&publish_key(port)) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Fills the endpoint map: every address of a namespace-side veth end whose
/// peer is on the host. The `redirect` datapath hands packets to them; both
/// eBPF datapaths bridge a lab namespace's DNATed flow on to a backend of
/// its own segment (as br_netfilter does).
fn sync_endpoints(pins: &Pins, topo: &Topology, host_links: &BTreeMap<String, Link>) -> Result<()> {
    let mut endpoints = maps::endpoints(pins)?;
    let mut wanted: BTreeMap<u32, Endpoint> = BTreeMap::new();
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
            let mac = netlink::run_in(&inner.place, |nl| async move {
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

/// Makes the PUBLISHED map hold exactly `records`.
pub fn sync_published(pins: &Pins, topo: &Topology, ports: &[PublishedPort]) -> Result<()> {
    let mut published = maps::published(pins)?;
    let mut wanted = BTreeMap::new();
    for port in ports {
        let (key, backend) = publish_entry(topo, port)?;
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
