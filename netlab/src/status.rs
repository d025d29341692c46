//! `netlab status`: what the lab is made of right now, read back from the
//! kernel (links, addresses, routes, the programs on each TC hook, and the
//! kernel's packet counters).
//!
//! [`LabStatus`] is what `netlab status --json` prints; the tests and the
//! benchmark read it back with the same types.

use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{self, Running},
    netlink::{self, TcHook, run_in},
    state::LabState,
    topology::{self, Datapath, Iface, Place},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabStatus {
    pub lab: String,
    pub datapath: Datapath,
    pub origin: String,
    /// False while `up` runs, or after it was interrupted.
    pub complete: bool,
    pub namespaces: Vec<String>,
    pub places: Vec<PlaceStatus>,
    pub nat: Option<NatStatus>,
    /// Pods the CNI plugin attached (`[pod_network]`).
    #[serde(default)]
    pub pods: Vec<PodStatus>,
}

/// A pod the CNI plugin attached, as the lab record has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatus {
    /// `cni:NETWORK/CONTAINER/IFNAME`, the name its published ports carry.
    pub key: String,
    pub address: String,
    pub host_veth: String,
    /// The runtime's `CNI_NETNS`.
    pub netns: String,
    /// False while its ADD runs, or after one was interrupted.
    pub ready: bool,
}

/// How many Services the human status lists (all of them are in
/// `--json` and `netlab service list`).
const SERVICES_SHOWN: usize = 10;

/// What the NAT holds and has done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatStatus {
    pub uplink: Option<String>,
    pub published: Vec<String>,
    /// The Services in force, one line each (`NAME VIP:PORT/PROTO ->
    /// BACKEND...`).
    #[serde(default)]
    pub services: Vec<String>,
    /// Conntrack entries in use (two per flow) and the table's capacity.
    pub conntrack_entries: usize,
    pub conntrack_capacity: u32,
    /// Counters by reason (see `netlab_common::nat::Stat`); empty for the
    /// iptables datapath.
    pub counters: BTreeMap<String, u64>,
    /// The lab's iptables rules with their counters, then after a line
    /// `ip6tables:` its ip6tables ones (iptables datapath).
    pub iptables_rules: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceStatus {
    /// `host` or a namespace name.
    pub place: String,
    /// False when the namespace has gone missing.
    pub present: bool,
    pub links: Vec<LinkStatus>,
    pub routes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub name: String,
    pub index: Option<u32>,
    pub kind: Option<String>,
    pub up: bool,
    pub master: Option<String>,
    pub addresses: Vec<String>,
    pub hooks: Vec<HookStatus>,
    /// `redirect` datapath: packets forwarded or left to the stack, by reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub redirect: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookStatus {
    /// `ingress` or `egress`.
    pub hook: String,
    /// BPF programs on the hook (`tc` filters), in run order.
    pub programs: Vec<String>,
    /// What the kernel counted: received (ingress) or sent (egress).
    pub packets: u64,
    pub bytes: u64,
}

pub fn collect(state: &LabState) -> Result<LabStatus> {
    let topo = state.topology()?;
    let running = Running::new(&topo, state.iptables);
    let redirects = running.redirects().unwrap_or_default();

    let mut by_place: BTreeMap<Place, Vec<Iface>> = BTreeMap::new();
    by_place.entry(Place::Host).or_default();
    for ns in &topo.namespaces {
        by_place.entry(Place::Netns(ns.name.clone())).or_default();
    }
    for iface in topo.ifaces() {
        by_place.entry(iface.place.clone()).or_default().push(iface);
    }

    let mut places = Vec::new();
    for (place, ifaces) in by_place {
        if !netlink::place_exists(&place) {
            places.push(PlaceStatus {
                place: place.to_string(),
                present: false,
                links: Vec::new(),
                routes: Vec::new(),
            });
            continue;
        }
        let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
        let (links, addresses, addresses6, routes, programs) = run_in(&place, |nl| async move {
            let links = nl.links().await?;
            let mut programs = BTreeMap::new();
            for link in links
                .iter()
                .filter(|l| l.kind.as_deref() == Some("veth") && names.contains(&l.name.as_str()))
            {
                for hook in TcHook::BOTH {
                    // One hook that cannot be listed shows as empty; the
                    // rest of the lab still shows.
                    let on_hook = nl.tc_programs(link.index, hook).await;
                    if let Err(err) = &on_hook {
                        log::warn!("{err:#}");
                    }
                    programs.insert((link.index, hook), on_hook.unwrap_or_default());
                }
            }
            let (addresses, addresses6) = nl.addresses_both().await?;
            Ok((links, addresses, addresses6, nl.routes().await?, programs))
        })?;
        let name_of: BTreeMap<u32, &str> =
            links.iter().map(|l| (l.index, l.name.as_str())).collect();
        let lab_indexes: Vec<u32> = links
            .iter()
            .filter(|l| ifaces.iter().any(|i| i.name == l.name))
            .map(|l| l.index)
            .collect();

        let mut link_status = Vec::new();
        for iface in &ifaces {
            let link = links.iter().find(|l| l.name == iface.name);
            let mut hooks = Vec::new();
            if let Some(link) = link.filter(|l| l.kind.as_deref() == Some("veth")) {
                for hook in TcHook::BOTH {
                    let counter = match hook {
                        TcHook::Ingress => link.counters.ingress,
                        TcHook::Egress => link.counters.egress,
                    };
                    let mut on_hook: Vec<String> = Vec::new();
                    // An XDP program runs before the ingress hook's filters.
                    if let (TcHook::Ingress, Some(id)) = (hook, link.xdp_prog) {
                        on_hook.push(format!("{} (xdp)", program_name(id)));
                    }
                    on_hook.extend(
                        programs
                            .get(&(link.index, hook))
                            .into_iter()
                            .flatten()
                            .map(|p| p.name.clone()),
                    );
                    hooks.push(HookStatus {
                        hook: hook.name().to_owned(),
                        programs: on_hook,
                        packets: counter.packets,
                        bytes: counter.bytes,
                    });
                }
            }
            link_status.push(LinkStatus {
                name: iface.name.clone(),
                index: link.map(|l| l.index),
                kind: link.and_then(|l| l.kind.clone()),
                up: link.is_some_and(|l| l.up),
                master: link
                    .and_then(|l| l.controller)
                    .and_then(|i| name_of.get(&i).map(|n| (*n).to_owned())),
                addresses: link
                    .map(|l| {
                        // IPv6 after IPv4, the kernel's link-local ones left out.
                        let v6 = addresses6
                            .iter()
                            .filter(|a| a.index == l.index && !topology::is_link_local(a.net.addr))
                            .map(|a| a.net.to_string());
                        addresses
                            .iter()
                            .filter(|a| a.index == l.index)
                            .map(|a| a.net.to_string())
                            .chain(v6)
                            .collect()
                    })
                    .unwrap_or_default(),
                hooks,
                redirect: link
                    .filter(|_| place == Place::Host)
                    .map(|l| {
                        netlab_common::nat::REDIRECT_REASONS
                            .iter()
                            .filter_map(|r| {
                                let n = *redirects.get(&(l.index, r.name()))?;
                                Some((r.name().to_owned(), n))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        let routes = routes
            .iter()
            .filter(|r| r.oif.is_none_or(|i| lab_indexes.contains(&i)))
            .map(|r| {
                let mut s = if r.dst.prefix_len == 0 {
                    "default".to_owned()
                } else {
                    r.dst.to_string()
                };
                if let Some(gw) = r.gateway {
                    let _ = write!(s, " via {gw}");
                }
                if let Some(dev) = r.oif.and_then(|i| name_of.get(&i)) {
                    let _ = write!(s, " dev {dev}");
                }
                s
            })
            .collect();
        places.push(PlaceStatus {
            place: place.to_string(),
            present: true,
            links: link_status,
            routes,
        });
    }
    // The IPv6 address where the lab translates IPv6 (masquerades it).
    let uplink6 = topo
        .uplink_addr6()
        .filter(|_| !topo.nat.masquerade6.is_empty())
        .map(|a| format!(", {a}"))
        .unwrap_or_default();
    let uplink = topo.uplink_addr().map(|a| {
        format!(
            "{} ({a}{uplink6})",
            topo.nat.uplink.as_deref().unwrap_or("?")
        )
    });
    let published = state.published.iter().map(|p| p.to_string()).collect();
    let services = state
        .services
        .iter()
        .map(|s| {
            let backends: Vec<String> = s.backends.iter().map(ToString::to_string).collect();
            let node_port = s
                .node_port
                .map(|p| format!(" (node port {p})"))
                .unwrap_or_default();
            format!("{s} -> {}{node_port}", backends.join(" "))
        })
        .collect();
    let report = running.nat_report();
    let (conntrack_entries, conntrack_capacity) = report.conntrack.unwrap_or((0, 0));
    let nat = NatStatus {
        uplink,
        published,
        services,
        conntrack_entries,
        conntrack_capacity,
        counters: report
            .counters
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        iptables_rules: report.rules,
    };
    Ok(LabStatus {
        nat: Some(nat),
        lab: state.lab.clone(),
        datapath: state.datapath,
        origin: state.origin.clone(),
        complete: state.complete,
        namespaces: topo.namespaces.iter().map(|n| n.name.clone()).collect(),
        places,
        pods: state
            .pods
            .iter()
            .map(|pod| PodStatus {
                key: pod.key(),
                address: format!("{}/{}", pod.addr, pod.prefix_len),
                host_veth: pod.host_veth.clone(),
                netns: pod.netns.clone(),
                ready: pod.ready,
            })
            .collect(),
    })
}

pub fn render(status: &LabStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lab {} ({} datapath, from {}){}",
        status.lab,
        status.datapath,
        status.origin,
        if status.complete {
            ""
        } else {
            " — INCOMPLETE: `up` did not finish; run `netlab up` or `netlab down`"
        }
    );
    let _ = writeln!(out, "namespaces: {}", status.namespaces.join(", "));
    for place in &status.places {
        let _ = writeln!(
            out,
            "\n[{}]{}",
            place.place,
            if place.present { "" } else { " MISSING" }
        );
        for link in &place.links {
            let _ = writeln!(
                out,
                "  {:<14} {:<6} {:<4} {:<18} {}",
                link.name,
                link.kind.as_deref().unwrap_or("absent"),
                if link.up { "up" } else { "down" },
                link.addresses.join(","),
                link.master
                    .as_ref()
                    .map(|m| format!("master {m}"))
                    .unwrap_or_default(),
            );
            if !link.redirect.is_empty() {
                let reasons: Vec<String> = link
                    .redirect
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let _ = writeln!(out, "      redirect: {}", reasons.join(" "));
            }
            for hook in &link.hooks {
                let _ = writeln!(
                    out,
                    "      {:<7} {:>10} pkts {:>12} bytes  progs: {}",
                    hook.hook,
                    hook.packets,
                    hook.bytes,
                    if hook.programs.is_empty() {
                        "-".to_owned()
                    } else {
                        hook.programs.join(" → ")
                    }
                );
            }
        }
        for route in &place.routes {
            let _ = writeln!(out, "  route {route}");
        }
    }
    if !status.pods.is_empty() {
        let _ = writeln!(out, "\n[pods]");
        for pod in &status.pods {
            let _ = writeln!(
                out,
                "  {:<18} {:<14} {}  netns {}{}",
                pod.address,
                pod.host_veth,
                pod.key,
                if pod.netns.is_empty() {
                    "-"
                } else {
                    &pod.netns
                },
                if pod.ready {
                    ""
                } else {
                    "  (ADD did not finish; DEL or GC removes it)"
                }
            );
        }
    }
    if let Some(nat) = &status.nat {
        let _ = writeln!(out, "\n[nat]");
        let _ = writeln!(
            out,
            "  uplink: {}",
            nat.uplink
                .as_deref()
                .unwrap_or("none (no masquerade, published ports reachable from the lab only)")
        );
        let _ = writeln!(
            out,
            "  published: {}",
            if nat.published.is_empty() {
                "none".to_owned()
            } else {
                nat.published.join(", ")
            }
        );
        if !nat.services.is_empty() {
            let _ = writeln!(out, "  services: {}", nat.services.len());
            for line in nat.services.iter().take(SERVICES_SHOWN) {
                let _ = writeln!(out, "    {line}");
            }
            if nat.services.len() > SERVICES_SHOWN {
                let _ = writeln!(
                    out,
                    "    ... and {} more (`netlab service list`)",
                    nat.services.len() - SERVICES_SHOWN
                );
            }
        }
        let _ = writeln!(
            out,
            "  conntrack (netlab's): {} of {} entries (two per flow)",
            nat.conntrack_entries, nat.conntrack_capacity
        );
        let counters: Vec<String> = nat
            .counters
            .iter()
            .filter(|(_, v)| **v != 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if datapath::shows_rules(status.datapath) {
            let _ = writeln!(out, "  rules (iptables, netlab's own chains):");
            for rule in &nat.iptables_rules {
                let _ = writeln!(out, "    {rule}");
            }
        } else {
            let _ = writeln!(out, "  counters: {}", counters.join(" "));
        }
    }
    out
}

/// The name of BPF program `id` as the kernel knows it, else `#ID`.
fn program_name(id: u32) -> String {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|info| info.id() == id)
        .and_then(|info| info.name_as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("#{id}"))
}
