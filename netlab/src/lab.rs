//! Builds a lab from its topology (`up`) and removes it (`down`).
//!
//! Ownership rules, so netlab never touches what it did not create:
//! - links: every link netlab creates carries its lab's owner tag as its
//!   alias; an existing link by a lab name without the tag is a conflict.
//! - namespaces: recorded in the lab record before they are created; an
//!   existing namespace that the record does not list is a conflict.
//!
//! `up` converges: whatever already exists and is ours is kept as it is, so a
//! second `up` creates nothing new. `down` works from the record and the tags
//! alone, so it also cleans up after an `up` that was killed half way.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    datapath::{self, Running},
    netlink::{self, Netlink, owner_group, owner_tag, run_in},
    netns,
    state::{self, LabLock, LabState, STATE_DIR},
    sys::{self, fault::step, sysctl},
    topology::{
        self, HostAddress, HostAddress6, HostNetwork, HostRoute, HostRoute6, Iface, Place, Topology,
    },
};

/// What `up` did, for its summary line.
#[derive(Debug, Default)]
pub struct UpReport {
    pub created: Vec<String>,
    pub kept: Vec<String>,
}

/// Why `up` refuses a lab: something it would touch belongs to another
/// owner. Callers (and tests) decide on the variant; the text is what
/// users read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "lab `{lab}` is already up from {origin} with a different topology; run `netlab down \
         --lab {lab}` first"
    )]
    DifferentTopology { lab: String, origin: String },
    #[error(
        "namespace `{ns}` already exists and lab `{lab}` did not create it; remove it or rename \
         the namespace in the topology"
    )]
    ForeignNamespace { ns: String, lab: String },
    #[error(
        "interface `{name}` already exists on the host and lab `{lab}` did not create it; \
         netlab never modifies interfaces it did not create"
    )]
    ForeignLink { name: String, lab: String },
}

/// What exists of the names a topology uses: namespaces, and host links
/// with their alias (netlab's owner tag on the links it made).
#[derive(Debug, Default)]
struct Found {
    namespaces: BTreeSet<String>,
    host_links: BTreeMap<String, Option<String>>,
}

/// How `up` treats a lab subnet that would capture traffic the host uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostOverlap {
    /// Refuse, naming the address (the default).
    #[default]
    Refuse,
    /// Warn and go on (`--force`).
    Warn,
}

pub fn up(topo: &Topology, origin: &str, text: &str, overlap: HostOverlap) -> Result<UpReport> {
    // Started before the checks, so aya's BTF parse runs beside them.
    let early = datapath::EarlyLoader::start();
    let result = build(topo, origin, text, overlap, early);
    if result.is_err() && matches!(LabState::load(&topo.name), Ok(None)) {
        // Refused before anything was recorded: leave no lock file behind.
        remove_lock_file(&topo.name);
    }
    result
}

fn remove_lock_file(lab: &str) {
    let _ = std::fs::remove_file(state::lock_path(lab));
    let _ = std::fs::remove_dir(STATE_DIR);
}

fn build(
    topo: &Topology,
    origin: &str,
    text: &str,
    overlap: HostOverlap,
    early: datapath::EarlyLoader,
) -> Result<UpReport> {
    let _lock = LabLock::acquire(&topo.name)?;
    let tag = owner_tag(&topo.name);
    let mut state = match LabState::load(&topo.name)? {
        Some(state) if state.complete && state.topology != text => {
            return Err(Refused::DifferentTopology {
                lab: topo.name.clone(),
                origin: state.origin,
            }
            .into());
        }
        Some(state) => state,
        None => LabState {
            lab: topo.name.clone(),
            ..LabState::default()
        },
    };

    check_host(topo, &tag, overlap)?;
    check_ownership(topo, &state, &tag)?;
    datapath::check(topo)?;

    state.origin = origin.to_owned();
    state.topology = text.to_owned();
    state.datapath = topo.datapath;
    state.complete = false;
    state.save()?;

    // The verifier (most of a first `up`) needs no interface: it runs on a
    // thread of its own while this one builds the namespaces and links.
    let report = std::thread::scope(|s| -> Result<UpReport> {
        let loading = s.spawn(|| datapath::load(topo, early));
        let built = build_network(topo, &mut state);
        let loaded = loading
            .join()
            .map_err(|_| anyhow::anyhow!("the eBPF loader panicked"))?;
        let report = built?;
        loaded?;
        Ok(report)
    })?;

    let ifaces: Vec<Iface> = topo
        .veth_ends()
        .map(|e| Iface {
            place: e.place.clone(),
            name: e.name.clone(),
        })
        .collect();
    state.ifindex_ceiling = check_distinct_ifindexes(topo, &ifaces)?;
    log::debug!("attaching the datapath");
    datapath::attach(topo)?;
    step("datapath attached");

    // The first `up` takes the topology's published ports; later ones keep
    // what `netlab publish` changed since.
    if !state.complete && state.published.is_empty() {
        state.published = topo.published_ports();
    }
    if let Some(variant) = datapath::choose_variant(topo)? {
        state.iptables = Some(variant);
        state.save()?;
    }
    if !state.complete && state.services.is_empty() {
        state.put_services(&topo.services)?;
    }
    Running::new(topo, state.iptables).install(&state.in_force(), &state.pods)?;
    enable_forwarding(topo, &mut state)?;
    step("nat configured");

    state.complete = true;
    state.save()?;
    Ok(report)
}

/// Makes the namespaces, links, addresses and routes that are missing.
fn build_network(topo: &Topology, state: &mut LabState) -> Result<UpReport> {
    let mut report = UpReport::default();
    for ns in &topo.namespaces {
        if netns::exists(&ns.name) {
            report.kept.push(format!("namespace {}", ns.name));
            continue;
        }
        // One at a time: a crash must leave no name recorded that some
        // other owner could create meanwhile (the record is small and lives
        // on tmpfs, so a save per namespace is cheap).
        state.note_namespace(&ns.name)?;
        netns::create(&ns.name)?;
        step(&format!("namespace {}", ns.name));
        report.created.push(format!("namespace {}", ns.name));
    }

    create_links(topo, &mut report)?;
    configure(topo)?;
    Ok(report)
}

/// Traffic between the lab and its uplink is routed by the host, as Docker
/// does: switch IPv4 forwarding on, and IPv6's for a lab that masquerades
/// IPv6, remembering the values to restore.
fn enable_forwarding(topo: &Topology, state: &mut LabState) -> Result<()> {
    if topo.nat.uplink.is_none() {
        return Ok(());
    }
    switch_on(sysctl::IP_FORWARD, |s| &mut s.ip_forward_was, state)?;
    if !topo.nat.masquerade6.is_empty() {
        switch_on(sysctl::IP6_FORWARD, |s| &mut s.ip6_forward_was, state)?;
    }
    Ok(())
}

/// Writes 1 to `sysctl`, first recording in `was` what it held.
fn switch_on(
    sysctl: &str,
    was: impl Fn(&mut LabState) -> &mut Option<String>,
    state: &mut LabState,
) -> Result<()> {
    let current = sysctl::read(sysctl)?;
    if current != "1" {
        if was(state).is_none() {
            *was(state) = Some(current);
            state.save()?;
        }
        sysctl::write(sysctl, "1")?;
    }
    Ok(())
}

/// Puts the forwarding switches back as they were, unless another lab
/// still needs them.
fn restore_forwarding(lab: &str, state: Option<&LabState>) -> Result<()> {
    let Some(state) = state else {
        return Ok(());
    };
    let others_up = state::labs().iter().any(|other| other != lab);
    if others_up {
        return Ok(());
    }
    if let Some(was) = state.ip_forward_was.as_deref() {
        sysctl::write(sysctl::IP_FORWARD, was)?;
    }
    if let Some(was) = state.ip6_forward_was.as_deref() {
        sysctl::write(sysctl::IP6_FORWARD, was)?;
    }
    Ok(())
}

/// Refuses a lab subnet that collides with the host's own routes or
/// addresses, or holds an address the host is using (a nameserver, the
/// peer of a connection); with [`HostOverlap::Warn`], says so and goes on.
fn check_host(topo: &Topology, tag: &str, overlap: HostOverlap) -> Result<()> {
    let host = run_in(&Place::Host, |nl| async move {
        let links = nl.links().await?;
        let (addresses, addresses6) = nl.addresses_both().await?;
        let routes = nl.routes().await?;
        let routes6 = nl.routes6().await?;
        Ok((links, addresses, routes, addresses6, routes6))
    })?;
    let (links, addresses, routes, addresses6, routes6) = host;
    let name_of: BTreeMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
    let own_links: Vec<String> = links
        .iter()
        .filter(|l| l.alias.as_deref() == Some(tag))
        .map(|l| l.name.clone())
        .collect();
    let host = HostNetwork {
        routes: routes
            .iter()
            .map(|r| HostRoute {
                dst: r.dst,
                dev: r.oif.and_then(|i| name_of.get(&i).cloned()),
            })
            .collect(),
        addresses: addresses
            .iter()
            .filter_map(|a| {
                Some(HostAddress {
                    dev: name_of.get(&a.index)?.clone(),
                    net: a.net,
                })
            })
            .collect(),
        routes6: routes6
            .iter()
            .filter(|r| !topology::is_link_local(r.dst.addr))
            .map(|r| HostRoute6 {
                dst: r.dst,
                dev: r.oif.and_then(|i| name_of.get(&i).cloned()),
            })
            .collect(),
        addresses6: addresses6
            .iter()
            .filter(|a| !topology::is_link_local(a.net.addr))
            .filter_map(|a| {
                Some(HostAddress6 {
                    dev: name_of.get(&a.index)?.clone(),
                    net: a.net,
                })
            })
            .collect(),
        in_use: sys::host::addresses_in_use(),
    };
    match (topology::check_host(topo, &host, &own_links), overlap) {
        (Err(err), HostOverlap::Warn) => {
            log::warn!("--force: going on although {err:#}");
            Ok(())
        }
        (result, _) => Ok(result?),
    }
}

/// Refuses to adopt a namespace or host link that some other owner made.
fn check_ownership(topo: &Topology, state: &LabState, tag: &str) -> Result<()> {
    let mut found = Found {
        namespaces: topo
            .namespaces
            .iter()
            .filter(|ns| netns::exists(&ns.name))
            .map(|ns| ns.name.clone())
            .collect(),
        ..Found::default()
    };
    let host_names: Vec<String> = topo
        .ifaces()
        .filter(|i| i.place == Place::Host)
        .map(|i| i.name)
        .collect();
    found.host_links = run_in(&Place::Host, |nl| async move {
        let mut links = BTreeMap::new();
        for name in host_names {
            if let Some(link) = nl.link(&name).await? {
                links.insert(name, link.alias);
            }
        }
        Ok(links)
    })?;
    Ok(ownership(topo, state, tag, &found)?)
}

/// The ownership rules (module docs) on what exists.
fn ownership(topo: &Topology, state: &LabState, tag: &str, found: &Found) -> Result<(), Refused> {
    if let Some(ns) = topo
        .namespaces
        .iter()
        .find(|ns| found.namespaces.contains(&ns.name) && !state.namespaces.contains(&ns.name))
    {
        return Err(Refused::ForeignNamespace {
            ns: ns.name.clone(),
            lab: topo.name.clone(),
        });
    }
    match found
        .host_links
        .iter()
        .find(|(_, alias)| alias.as_deref() != Some(tag))
    {
        Some((name, _)) => Err(Refused::ForeignLink {
            name: name.clone(),
            lab: topo.name.clone(),
        }),
        None => Ok(()),
    }
}

fn index_in(
    links: &BTreeMap<Place, BTreeMap<String, u32>>,
    place: &Place,
    name: &str,
) -> Option<u32> {
    links.get(place).and_then(|l| l.get(name)).copied()
}

/// How many netlink requests `up` keeps in flight on one socket: enough to
/// keep the kernel busy, few enough for the socket's receive buffer.
const PIPELINE: usize = 64;

fn create_links(topo: &Topology, report: &mut UpReport) -> Result<()> {
    let lab = topo.name.as_str();
    let bridges: Vec<String> = topo.bridges.iter().map(|b| b.name.clone()).collect();
    let created = run_in(&Place::Host, |nl| async move {
        let mut created = Vec::new();
        for name in &bridges {
            if nl.link(name).await?.is_some() {
                continue;
            }
            nl.add_bridge(name).await?;
            let link = nl.require_link(name).await?;
            nl.set_owner(link.index, lab).await?;
            step(&format!("bridge {name}"));
            created.push(format!("bridge {name}"));
        }
        Ok(created)
    })?;
    report.kept.extend(
        topo.bridges
            .iter()
            .map(|b| format!("bridge {}", b.name))
            .filter(|b| !created.contains(b)),
    );
    report.created.extend(created);
    if let Some(vxlan) = topo.vxlan() {
        create_vxlan(topo, vxlan, report)?;
    }

    let existing = netlink::indexes_by_place(topo)?;
    let mut missing = Vec::new();
    for veth in &topo.veths {
        let label = format!("veth {}/{}", veth.a.name, veth.b.name);
        let a = index_in(&existing, &veth.a.place, &veth.a.name);
        let b = index_in(&existing, &veth.b.place, &veth.b.name);
        match (a, b) {
            (Some(_), Some(_)) => {
                report.kept.push(label);
                continue;
            }
            // Half a pair (a crash, or an end someone deleted): remove our
            // leftover and build the pair again.
            (Some(index), None) => delete_in(&veth.a.place, index)?,
            (None, Some(index)) => delete_in(&veth.b.place, index)?,
            (None, None) => {}
        }
        missing.push((veth, label));
    }
    if missing.is_empty() {
        return Ok(());
    }
    // Each pair is made with its ends already in place under their final
    // names, PIPELINE requests in flight at a time; the host ends are then
    // tagged (the namespace ends are tagged by `configure`). A crash before
    // the tag leaves untagged host ends whose peers live in the lab's
    // namespaces: `down` removes the namespaces, and the pairs go with them.
    //
    // The ends get consecutive ifindexes above every index the lab's places
    // use now, as if both had been made in the host (see `add_veth_in`).
    let first_index = existing
        .values()
        .flat_map(|links| links.values())
        .max()
        .map_or(1, |max| max + 1);
    let labels = run_in(&Place::Host, |nl| async move {
        let nl = &nl;
        let mut labels = Vec::new();
        for (c, chunk) in (0u32..).zip(missing.chunks(PIPELINE)) {
            futures::future::try_join_all((0u32..).zip(chunk).map(|(i, (veth, _))| {
                let a = first_index + 2 * (c * PIPELINE as u32 + i);
                nl.add_veth_in(
                    (&veth.a.name, &veth.a.place),
                    (&veth.b.name, &veth.b.place),
                    (a, a + 1),
                    None,
                    lab,
                )
            }))
            .await?;
            let host: BTreeMap<String, netlink::Link> = nl
                .links()
                .await?
                .into_iter()
                .map(|l| (l.name.clone(), l))
                .collect();
            let host_ends = chunk
                .iter()
                .flat_map(|(veth, _)| [&veth.a, &veth.b])
                .filter(|end| end.place == Place::Host);
            futures::future::try_join_all(host_ends.map(|end| {
                let link = host.get(&end.name);
                async move {
                    let link = link.with_context(|| {
                        format!("interface {} vanished right after it was created", end.name)
                    })?;
                    nl.ensure_owner(link, lab).await
                }
            }))
            .await?;
            for (_, label) in chunk {
                step(label);
                labels.push(label.clone());
            }
        }
        Ok(labels)
    })?;
    report.created.extend(labels);
    Ok(())
}

/// The overlay's device, made once: its VTEP MAC is the node's own
/// (derived from its pod subnet), so the peers need not learn it.
fn create_vxlan(topo: &Topology, vxlan: &topology::Vxlan, report: &mut UpReport) -> Result<()> {
    let label = format!("vxlan {}", vxlan.name);
    let Some(pods) = topo.pod_gateway() else {
        bail!("the overlay {} needs the pod network's subnet", vxlan.name);
    };
    let lab = topo.name.as_str();
    let created = run_in(&Place::Host, |nl| async move {
        if nl.link(&vxlan.name).await?.is_some() {
            return Ok(false);
        }
        let mac = topology::Vtep::of(pods).mac;
        nl.add_vxlan(&vxlan.name, vxlan.vni, vxlan.port, vxlan.mtu, mac, lab)
            .await?;
        let link = nl.require_link(&vxlan.name).await?;
        nl.set_owner(link.index, lab).await?;
        Ok(true)
    })?;
    if created {
        step(&label);
        report.created.push(label);
    } else {
        report.kept.push(label);
    }
    Ok(())
}

fn delete_in(place: &Place, index: u32) -> Result<()> {
    run_in(place, |nl| async move { nl.del_link(index).await })
}

/// Enslaves, addresses and raises every link, then adds routes once every
/// gateway's subnet is connected.
fn configure(topo: &Topology) -> Result<()> {
    let mut places: BTreeSet<Place> = topo.veth_ends().map(|e| e.place.clone()).collect();
    places.insert(Place::Host);
    for place in &places {
        run_in(place, |nl| async move { configure_links(&nl, topo).await })?;
        step(&format!("links in {place}"));
    }
    for place in &places {
        run_in(place, |nl| async move {
            for route in topo.routes.iter().filter(|r| &r.place == nl.place()) {
                nl.add_route(route.to, route.via).await?;
            }
            for route in topo.routes6.iter().filter(|r| &r.place == nl.place()) {
                nl.add_route6(route.to, route.via).await?;
            }
            if nl.place() == &Place::Host {
                route_peers(&nl, topo).await?;
                route_services(&nl, topo).await?;
            }
            Ok(())
        })?;
        step(&format!("routes in {place}"));
    }
    Ok(())
}

/// Routes the peers' pod subnets: over the underlay to each peer's
/// address, or through the overlay's device to each peer's VTEP, which
/// the device's neighbour and forwarding tables map to the peer's address.
async fn route_peers(nl: &Netlink, topo: &Topology) -> Result<()> {
    let Some(vxlan) = topo.vxlan() else {
        for peer in peers(topo) {
            nl.add_route(peer.subnet, peer.via).await.with_context(|| {
                format!(
                    "routing the peer node's pods {} via {}: is the node's underlay up?",
                    peer.subnet, peer.via
                )
            })?;
        }
        return Ok(());
    };
    let dev = nl.require_link(&vxlan.name).await?;
    if let Some(pods) = topo.pod_gateway() {
        let own = topology::Vtep::of(pods);
        nl.add_address(
            dev.index,
            topology::Ipv4Net {
                addr: own.addr,
                prefix_len: 32,
            },
        )
        .await?;
    }
    nl.set_up(dev.index).await?;
    for peer in peers(topo) {
        let vtep = topology::Vtep::of(peer.subnet);
        nl.add_vtep(dev.index, vtep.addr, vtep.mac, peer.via)
            .await?;
        nl.add_route_onlink(peer.subnet, vtep.addr, dev.index)
            .await?;
    }
    Ok(())
}

/// Routes the Services' range into the lab (its pod bridge, else its
/// first bridge): the host's own connections to a ClusterIP then find a
/// route (iptables translates them after routing; the eBPF datapath at the
/// socket, before), and a ClusterIP nothing serves stays in the lab rather
/// than following the host's default route out. The route goes with the
/// bridge at `down`.
async fn route_services(nl: &Netlink, topo: &Topology) -> Result<()> {
    let Some(range) = topo.nat.service_range else {
        return Ok(());
    };
    let bridge = topo
        .pod_network
        .as_ref()
        .map(|p| p.bridge.as_str())
        .or_else(|| topo.bridges.first().map(|b| b.name.as_str()));
    let Some(bridge) = bridge else {
        return Ok(());
    };
    let link = nl.require_link(bridge).await?;
    nl.add_route_dev(range, link.index).await
}

/// The cluster's other nodes, whose pod subnets the host routes.
fn peers(topo: &Topology) -> impl Iterator<Item = &topology::Peer> {
    topo.pod_network.iter().flat_map(|p| p.peers.iter())
}

async fn configure_links(nl: &Netlink, topo: &Topology) -> Result<()> {
    let place = nl.place().clone();
    let settings = datapath::link_settings(topo);
    // The lab's IPv6 addresses skip duplicate address detection (netlab
    // gave them out), and so do its links' own link-local ones: while
    // one is tentative (a second or two after the link comes up) the host
    // sends no neighbour solicitation from that link, and the first IPv6
    // packets it routes there are lost.
    let ipv6 = !topo.internal_subnets6().is_empty();
    let no_dad = |name: &str| -> Result<()> {
        if ipv6 {
            sysctl::write_iface6(name, "accept_dad", "0")?;
        }
        Ok(())
    };
    if place != Place::Host {
        let lo = nl.require_link("lo").await?;
        nl.set_up(lo.index).await?;
    }
    if place == Place::Host {
        for bridge in &topo.bridges {
            if settings.bridge_route_localnet {
                // netfilter's DNAT of `localhost:PORT` routes a 127/8 source
                // out of the bridge (Docker does the same without its proxy).
                sysctl::write_iface(&bridge.name, "route_localnet", "1")?;
            }
            let link = nl.require_link(&bridge.name).await?;
            for address in &bridge.addresses {
                nl.add_address(link.index, address.net).await?;
            }
            for address in &bridge.addresses6 {
                nl.add_address6(link.index, address.net).await?;
            }
            no_dad(&bridge.name)?;
            nl.set_up(link.index).await?;
        }
    }
    for end in topo.veth_ends().filter(|e| e.place == place) {
        let link = nl.require_link(&end.name).await?;
        nl.ensure_owner(&link, &topo.name).await?;
        if let Some(bridge) = &end.bridge {
            let bridge = nl.require_link(bridge).await?;
            if link.controller != Some(bridge.index) {
                nl.set_controller(link.index, bridge.index).await?;
            }
            if settings.port_hairpin {
                // netfilter's hairpin NAT sends a namespace's packets back
                // out of the port they came in on (Docker does the same).
                nl.set_hairpin(link.index).await?;
            }
        }
        for address in &end.addresses {
            nl.add_address(link.index, address.net).await?;
        }
        for address in &end.addresses6 {
            nl.add_address6(link.index, address.net).await?;
        }
        no_dad(&end.name)?;
        nl.set_up(link.index).await?;
    }
    Ok(())
}

/// The datapath's maps key interfaces by ifindex (the redirect decisions,
/// the trace's places); refuse to attach rather than mix two interfaces.
/// The highest ifindex the lab's places use.
fn check_distinct_ifindexes(topo: &Topology, ifaces: &[Iface]) -> Result<u32> {
    let links = netlink::indexes_by_place(topo)?;
    let ceiling = netlink::highest_index(&links);
    let mut seen: BTreeMap<u32, &Iface> = BTreeMap::new();
    for iface in ifaces {
        let index = index_in(&links, &iface.place, &iface.name)
            .with_context(|| format!("interface {iface} vanished during up"))?;
        if let Some(other) = seen.insert(index, iface) {
            bail!(
                "interfaces {other} and {iface} share ifindex {index}; run `netlab down` and `up` again"
            );
        }
    }
    Ok(ceiling)
}

/// How long `down` waits at most for the kernel's namespace cleanup to
/// take the host ends of the lab's veths.
const CLEANUP_WAIT: Duration = Duration::from_secs(5);

/// What `down` removed.
#[derive(Debug, Default)]
pub struct DownReport {
    pub removed: Vec<String>,
}

pub fn down(lab: &str) -> Result<DownReport> {
    let lock = LabLock::acquire(lab)?;
    let state = LabState::load(lab)?;
    let tag = owner_tag(lab);
    let mut report = DownReport::default();

    // Links first, in one request: deleting the lab's link group is one
    // batched unregister of the bridges and the host ends, and each veth
    // takes its peer in the lab's namespaces along. (Namespaces first made
    // the kernel's background cleanup do it, and `down` waited for that.)
    log::debug!("down: removing links");
    let group = owner_group(lab);
    let ours = |l: &netlink::Link| l.alias.as_deref() == Some(tag.as_str());
    let removed = run_in(&Place::Host, |nl| async move {
        let links = nl.links().await?;
        let removed: Vec<String> = links
            .iter()
            .filter(|l| ours(l))
            .map(|l| format!("link {}", l.name))
            .collect();
        let in_group: Vec<_> = links.iter().filter(|l| l.group == group).collect();
        if !in_group.is_empty() && in_group.iter().all(|l| ours(l)) {
            nl.del_group(group).await?;
        }
        // Whatever is left (not in the group, or the group is shared).
        for link in nl.links().await? {
            if ours(&link) {
                nl.del_link(link.index).await?;
            }
        }
        Ok(removed)
    })?;
    report.removed.extend(removed);

    // Routes to peer nodes' pods go with the uplink when it carries them;
    // through an underlay netlab did not make, they are removed here.
    if let Some(topo) = state.as_ref().and_then(|s| s.topology().ok()) {
        let wanted: Vec<(topology::Ipv4Net, std::net::Ipv4Addr)> =
            peers(&topo).map(|p| (p.subnet, p.via)).collect();
        if !wanted.is_empty() {
            let removed = run_in(&Place::Host, |nl| async move {
                let mut removed = Vec::new();
                for route in nl.routes().await? {
                    if let Some(gw) = route.gateway
                        && wanted.contains(&(route.dst, gw))
                    {
                        nl.del_route(&route).await?;
                        removed.push(format!("route {} via {gw}", route.dst));
                    }
                }
                Ok(removed)
            })?;
            report.removed.extend(removed);
        }
    }

    log::debug!("down: removing namespaces");
    for ns in state.iter().flat_map(|s| s.namespaces.iter()) {
        if netns::exists(ns) {
            netns::delete(ns)?;
            report.removed.push(format!("namespace {ns}"));
        }
    }
    // Host ends that were never tagged (an `up` killed right after making
    // them) go with their namespaces, in the kernel's background cleanup:
    // wait while it makes progress (bounded), so the next `up` meets none.
    run_in(&Place::Host, |nl| async move {
        let leftover = |links: &[netlink::Link]| {
            links
                .iter()
                .filter(|l| l.kind.as_deref() == Some("veth") && (l.group == group || ours(l)))
                .count()
        };
        let deadline = Instant::now() + CLEANUP_WAIT;
        let mut veths = leftover(&nl.links().await?);
        let mut stalled = 0;
        while veths > 0 && stalled < 5 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = leftover(&nl.links().await?);
            stalled = if now == veths { stalled + 1 } else { 0 };
            veths = now;
        }
        Ok(())
    })?;

    // Unpinning last (the programs' filters went with their interfaces).
    log::debug!("down: removing the datapath's rules and pins");
    datapath::remove(lab, state.as_ref().map(|s| s.datapath))?;
    log::debug!("down: done");
    restore_forwarding(lab, state.as_ref())?;
    LabState::remove(lab)?;
    drop(lock);
    remove_lock_file(lab);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_lab() -> Topology {
        topology::parse(topology::DEFAULT_LAB, "default").expect("the default lab parses")
    }

    #[test]
    fn ownership_refuses_what_another_owner_made() {
        let topo = default_lab();
        let tag = owner_tag(&topo.name);
        let mut state = LabState::default();
        let mut found = Found::default();
        assert_eq!(ownership(&topo, &state, &tag, &found), Ok(()));
        // A namespace of the lab's that the record does not list.
        found.namespaces.insert("red".to_owned());
        assert_eq!(
            ownership(&topo, &state, &tag, &found),
            Err(Refused::ForeignNamespace {
                ns: "red".to_owned(),
                lab: topo.name.clone()
            })
        );
        // Recorded: ours, kept.
        state.namespaces.push("red".to_owned());
        assert_eq!(ownership(&topo, &state, &tag, &found), Ok(()));
        // A host link by a lab name, tagged by us: ours; untagged or
        // another lab's: not.
        found
            .host_links
            .insert("v-net-0".to_owned(), Some(tag.clone()));
        assert_eq!(ownership(&topo, &state, &tag, &found), Ok(()));
        for alias in [None, Some(owner_tag("another"))] {
            found.host_links.insert("v-net-0".to_owned(), alias);
            assert_eq!(
                ownership(&topo, &state, &tag, &found),
                Err(Refused::ForeignLink {
                    name: "v-net-0".to_owned(),
                    lab: topo.name.clone()
                })
            );
        }
    }

    #[test]
    fn refusals_say_what_to_do() {
        let refused = Refused::DifferentTopology {
            lab: "default".to_owned(),
            origin: "lab.toml".to_owned(),
        };
        assert_eq!(
            refused.to_string(),
            "lab `default` is already up from lab.toml with a different topology; run `netlab \
             down --lab default` first"
        );
    }
}
