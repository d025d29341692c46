//! The datapaths: one seam, two implementations. A lab's NAT and published
//! ports are carried by one family (see
//! [`Datapath::family`](crate::topology::Datapath::family)):
//!
//! - [`ebpf`]: netlab's eBPF programs (`bridge`, `redirect`);
//! - [`iptables`]: the reference, rules in the lab's own chains (`iptables`).
//!
//! Commands reach either through [`Running`], for what they change
//! (published ports, Services) and for what they read (the NAT's [`NatReport`], the
//! [`Flows`], the [`Redirects`]), and through [`tracing`] for a trace
//! session, so no command needs to know which one a lab runs: adding a
//! family touches this module and its folder. What every lab has,
//! whatever its family: the kernel's own packet counters on every
//! interface ([`crate::netlink::lab_counters`]), and tracing (its shared
//! maps are loaded at `up`; its programs, ring buffer and journeys by
//! `netlab trace`).

pub mod ebpf;
pub mod iptables;
mod report;
pub mod tracing;

use anyhow::{Context as _, Result, bail};
use netlab_common::nat::{CtEntry, CtEntry6, FlowKey, FlowKey6, REDIRECT_REASONS};

pub use self::ebpf::loader::EarlyLoader;
use self::iptables::Variant;
pub use self::report::{Flow, FlowEnds, Flows, NatReport, Redirects};
use crate::{
    netlink,
    pins::Pins,
    sys,
    topology::{Datapath, Family, InForce, Place, Pod, PublishedPort, Service, Topology},
};

/// How the lab's links must be set for a datapath of `topo`'s family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkSettings {
    /// `route_localnet` on the lab's bridges, so the host reaches a
    /// published port through `localhost` (the iptables datapath DNATs it
    /// in OUTPUT; the eBPF one does it at the socket, and needs nothing).
    pub bridge_route_localnet: bool,
    /// Hairpin mode on bridge ports, so a namespace reaches its own
    /// published port through the bridge (iptables DNAT sends it back out
    /// of the port it came in by; the eBPF datapath reflects it itself).
    pub port_hairpin: bool,
}

/// The link settings `topo`'s datapath needs.
pub fn link_settings(topo: &Topology) -> LinkSettings {
    let iptables = topo.datapath.family() == Family::Iptables;
    LinkSettings {
        bridge_route_localnet: iptables,
        port_hairpin: iptables,
    }
}

/// Whether `datapath` is made of rules, which a report shows (rather than
/// counters by reason).
pub fn shows_rules(datapath: Datapath) -> bool {
    datapath.family() == Family::Iptables
}

/// What must hold before `up` changes anything: the lab's pins, if any,
/// are this netlab's.
pub fn check(topo: &Topology) -> Result<()> {
    ebpf::loader::check_pins(&Pins::of(&topo.name))
}

/// Loads the eBPF object if the lab has not loaded it yet (the verifier's
/// work: `up` runs it while it builds the links), with the loader `up`
/// started first thing.
pub fn load(topo: &Topology, early: EarlyLoader) -> Result<()> {
    let sizes = sizes(topo);
    ebpf::loader::load(
        &Pins::of(&topo.name),
        &sizes,
        topo.datapath.family(),
        topo.nat.entry,
        early,
    )
}

/// The sizes of the maps `topo` decides: without IPv6 subnets, its
/// IPv6-only maps are made with one entry (see `ebpf::loader::Sizes`).
fn sizes(topo: &Topology) -> ebpf::loader::Sizes {
    ebpf::loader::Sizes {
        conntrack: topo.nat.conntrack_size,
        ipv6: !topo.internal_subnets6().is_empty(),
        iface_slots: ebpf::config::iface_slots(topo),
    }
}

/// Runs the programs the topology's datapath wants where it wants them
/// (see [`ebpf::loader::plan`]), after [`load`].
pub fn attach(topo: &Topology) -> Result<()> {
    let plan = ebpf::loader::plan(topo);
    let pins = Pins::of(&topo.name);
    ebpf::loader::attach(&pins, &plan)?;
    ebpf::loader::set_entry(&pins, topo)
}

/// Removes everything the datapath installed for lab `lab` (`datapath` as
/// its record says, if there is one): the iptables rules of an iptables lab,
/// and every pin.
pub fn remove(lab: &str, datapath: Option<Datapath>) -> Result<()> {
    if datapath.is_some_and(|d| d.family() == Family::Iptables) {
        iptables::remove(lab)?;
    }
    let pins = Pins::of(lab);
    // A crashed `netlab trace` may have left trace_hop in its slot; the
    // map goes with the pins, but say so explicitly. (Its watching filters
    // went with the lab's interfaces.)
    if let Err(err) = ebpf::loader::stop_trace(&pins, &[]) {
        log::debug!("down: {err:#}");
    }
    pins.remove()
}

/// Forgets every flow netlab's conntrack holds for lab `lab` (the bench,
/// between runs: a run must inherit no flow); a datapath without netlab's
/// conntrack has none. The number of halves removed.
pub fn flush_flows(lab: &str) -> Result<u64> {
    let pins = Pins::of(lab);
    let mut removed = 0;
    for table in ebpf::maps::CONNTRACK_TABLES {
        removed += flush_table::<FlowKey, CtEntry>(&pins, table)?;
    }
    for table in ebpf::maps::CONNTRACK6_TABLES {
        removed += flush_table::<FlowKey6, CtEntry6>(&pins, table)?;
    }
    Ok(removed)
}

/// Empties one conntrack table, if pinned; the halves removed.
fn flush_table<K: aya::Pod, V: aya::Pod>(pins: &Pins, table: &str) -> Result<u64> {
    if !pins.map(table).exists() {
        return Ok(0);
    }
    let mut map = ebpf::maps::conntrack_table::<K, V>(pins, table)?;
    let keys: Vec<K> = map.keys().collect::<Result<_, _>>()?;
    let mut removed = 0;
    for key in keys {
        // A key gone meanwhile (expired, or its flow removed) is fine.
        if map.remove(&key).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The iptables variant a new lab of `topo` uses: [`iptables::VARIANT_ENV`]'s,
/// for an iptables lab; none for the others.
pub fn choose_variant(topo: &Topology) -> Result<Option<Variant>> {
    match topo.datapath.family() {
        Family::Iptables => Variant::from_env().map(Some),
        Family::Ebpf => Ok(None),
    }
}

/// The datapath carrying a lab's NAT, ready to take published ports.
#[derive(Debug)]
pub enum Running<'a> {
    Ebpf {
        topo: &'a Topology,
        pins: Pins,
    },
    Iptables {
        topo: &'a Topology,
        variant: Variant,
    },
}

impl<'a> Running<'a> {
    /// The datapath of `topo`; `variant` is the iptables variant the lab was
    /// built with (`nft` when not recorded).
    pub fn new(topo: &'a Topology, variant: Option<Variant>) -> Running<'a> {
        match topo.datapath.family() {
            Family::Ebpf => Running::Ebpf {
                topo,
                pins: Pins::of(&topo.name),
            },
            Family::Iptables => Running::Iptables {
                topo,
                variant: variant.unwrap_or_default(),
            },
        }
    }

    /// Installs the NAT (idempotent) with exactly the published ports and
    /// Services `in_force`, for the topology and the `pods` attached since.
    pub fn install(&self, in_force: &InForce<'_>, pods: &[Pod]) -> Result<()> {
        match self {
            Running::Ebpf { topo, pins } => {
                ebpf::config::configure(pins, topo, pods)?;
                ebpf::config::sync_published(pins, topo, in_force)?;
                for service in in_force.services {
                    ebpf::services::write(pins, topo, service)?;
                }
                Ok(())
            }
            Running::Iptables { topo, variant } => {
                iptables::install(&topo.name, topo, in_force, *variant)
            }
        }
    }

    /// Makes the datapath forward exactly the published ports in force.
    pub fn sync_published(&self, in_force: &InForce<'_>) -> Result<()> {
        match self {
            Running::Ebpf { topo, pins } => ebpf::config::sync_published(pins, topo, in_force),
            Running::Iptables { topo, variant } => {
                iptables::sync_published(&topo.name, topo, in_force, *variant)
            }
        }
    }

    /// Adds `new` (already in `in_force`). The eBPF datapath does one map
    /// update; the iptables one rewrites its DNAT chain, as iptables must.
    pub fn publish(&self, in_force: &InForce<'_>, new: &PublishedPort) -> Result<()> {
        match self {
            Running::Ebpf { topo, pins } => ebpf::config::publish_one(pins, topo, in_force, new),
            Running::Iptables { .. } => self.sync_published(in_force),
        }
    }

    /// Serves `service` (already in `in_force`, its ids assigned), which
    /// replaces `old` if given: the backends `old` had and `service` has
    /// not are removed and their flows cut; the others' flows go on. The
    /// eBPF datapath writes the Service's rows; the iptables one rewrites
    /// its Service chains, as kube-proxy does.
    pub fn service_set(
        &self,
        in_force: &InForce<'_>,
        service: &Service,
        old: Option<&Service>,
    ) -> Result<()> {
        match self {
            Running::Ebpf { topo, pins } => ebpf::services::set(pins, topo, in_force, service, old),
            Running::Iptables { topo, .. } => {
                self.sync_published(in_force)?;
                if let Some(old) = old {
                    let gone: Vec<_> = old
                        .backends
                        .iter()
                        .filter(|b| !service.backends.contains(b))
                        .copied()
                        .collect();
                    iptables::cut_service_flows(topo, old, &gone)?;
                }
                Ok(())
            }
        }
    }

    /// Stops serving `service` (no longer in `in_force`), and cuts its
    /// flows.
    pub fn service_rm(&self, in_force: &InForce<'_>, service: &Service) -> Result<()> {
        match self {
            Running::Ebpf { pins, .. } => ebpf::services::remove(pins, in_force, service),
            Running::Iptables { topo, .. } => {
                self.sync_published(in_force)?;
                iptables::cut_service_flows(topo, service, &service.backends)
            }
        }
    }

    /// Takes a pod into the datapath: its rows (configuration, endpoint),
    /// then the NAT programs on its host end, so its first packet finds
    /// them. Only the eBPF datapaths take pods.
    pub fn attach_pod(&self, pod: &Pod) -> Result<()> {
        let Running::Ebpf { topo, pins } = self else {
            bail!("pods need an eBPF datapath (`bridge` or `redirect`)");
        };
        let bridge = topo
            .pod_network
            .as_ref()
            .map(|p| p.bridge.clone())
            .context("the lab has no [pod_network]")?;
        let mac = netlink::run_in(&Place::Host, |nl| async move {
            Ok(nl.require_link(&bridge).await?.mac)
        })?
        .context("the pod network's bridge has no MAC address")?;
        ebpf::config::attach_pod(pins, topo, pod, mac)?;
        ebpf::loader::attach_host_end(pins, &pod.host_veth)
    }

    /// Lets a pod go: its rows (its programs go with its host end).
    pub fn detach_pod(&self, pod: &Pod) -> Result<()> {
        match self {
            Running::Ebpf { pins, .. } => ebpf::config::detach_pod(pins, pod),
            Running::Iptables { .. } => Ok(()),
        }
    }

    /// What of a pod's place in the datapath is missing (CHECK), one line
    /// each: its rows, and the programs on its host end.
    pub fn pod_missing(&self, pod: &Pod) -> Result<Vec<String>> {
        let Running::Ebpf { pins, .. } = self else {
            return Ok(vec!["the lab's datapath takes no pods".to_owned()]);
        };
        let mut missing = ebpf::config::pod_missing(pins, pod)?;
        if !ebpf::loader::host_end_attached(pod.host_ifindex)? {
            missing.push(format!("{} runs no NAT program", pod.host_veth));
        }
        Ok(missing)
    }

    /// The NAT's state and counters. What cannot be read is left empty.
    pub fn nat_report(&self) -> NatReport {
        match self {
            Running::Ebpf { pins, .. } => NatReport {
                conntrack: ebpf::maps::conntrack_usage(pins).ok(),
                counters: ebpf::maps::nat_stats(pins).unwrap_or_default(),
                rules: Vec::new(),
            },
            Running::Iptables { topo, variant } => NatReport {
                conntrack: None,
                counters: Vec::new(),
                rules: iptables::rules(&topo.name, *variant).unwrap_or_default(),
            },
        }
    }

    /// The forwarding decisions of a datapath that makes them (`redirect`),
    /// by host-side ifindex and reason; `None` for the others.
    pub fn redirects(&self) -> Option<Redirects> {
        match self {
            Running::Ebpf { topo, pins } if topo.datapath == Datapath::Redirect => {
                let stats = ebpf::maps::redirect_stats(pins).unwrap_or_default();
                Some(
                    stats
                        .into_iter()
                        .filter_map(|((ifindex, reason), n)| {
                            let reason = REDIRECT_REASONS.iter().find(|r| **r as u32 == reason)?;
                            Some(((ifindex, reason.name()), n))
                        })
                        .collect(),
                )
            }
            _ => None,
        }
    }

    /// The flows the datapath tracks now.
    pub fn flows(&self) -> Result<Flows> {
        match self {
            Running::Ebpf { pins, .. } => {
                ebpf::flows::read(pins, sys::monotonic_coarse_ns()).map(Flows::Listed)
            }
            Running::Iptables { .. } => Ok(Flows::InKernelConntrack),
        }
    }

    /// Removes `old` (no longer in `in_force`), and cuts the flows it
    /// opened: a client that keeps sending to it (UDP) must not reach the
    /// old backend forever.
    pub fn unpublish(&self, in_force: &InForce<'_>, old: &PublishedPort) -> Result<()> {
        match self {
            Running::Ebpf { topo, pins } => {
                ebpf::config::unpublish_one(pins, topo, in_force, old)?;
                ebpf::config::cut_flows(pins, old)
            }
            Running::Iptables { topo, .. } => {
                self.sync_published(in_force)?;
                iptables::cut_flows(topo, old)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology;

    /// An IPv4 lab keeps no room for IPv6 flows, sockets or fragments
    /// (the maps are preallocated); a dual-stack lab gets the full sizes.
    #[test]
    fn ipv6_maps_are_sized_by_the_lab_s_ipv6() {
        let v4 = sizes(&topology::default_lab().unwrap());
        assert!(!v4.ipv6);
        assert_eq!(v4.conntrack6(), 1);
        let dual = topology::parse(
            topology::DEFAULT_LAB_DUAL_STACK,
            topology::DEFAULT_LAB_DUAL_STACK_ORIGIN,
        )
        .unwrap();
        let dual_sizes = sizes(&dual);
        assert!(dual_sizes.ipv6);
        assert_eq!(dual_sizes.conntrack6(), dual.nat.conntrack_size);
        assert!(dual.nat.conntrack_size > 1);
    }
}
