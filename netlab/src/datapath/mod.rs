//! The datapaths: one seam, two implementations.
//!
//! Every lab gets the eBPF counters on every veth ([`attach`]); its NAT and
//! published ports are carried by one family (see
//! [`Datapath::family`](crate::topology::Datapath::family)):
//!
//! - [`ebpf`]: netlab's eBPF programs (`bridge`, `redirect`);
//! - [`iptables`]: the reference, rules in the lab's own chains (`iptables`).
//!
//! Commands reach either through [`Running`], so no command needs to know
//! which one a lab runs.

pub mod ebpf;
pub mod iptables;

use std::collections::BTreeMap;

use anyhow::Result;
use netlab_common::IfaceCounters;

use self::iptables::Variant;
use crate::{
    pins::Pins,
    topology::{Datapath, Family, Iface, Place, PublishedPort, Topology},
};

/// What the counting programs saw on one interface, per hook.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookCounters {
    pub ingress: IfaceCounters,
    pub egress: IfaceCounters,
}

/// The packet counters of the lab's veth ends, by interface: the pinned
/// counters (kept by ifindex) joined with the interfaces as they are now
/// (`indexes`, from [`crate::netlink::lab_indexes`]). Ends without a counter
/// entry (no packet yet) are absent.
pub fn iface_counters(
    lab: &str,
    indexes: &BTreeMap<Place, BTreeMap<String, u32>>,
) -> Result<BTreeMap<Iface, HookCounters>> {
    let by_index = ebpf::maps::iface_counters(&Pins::of(lab))?;
    let mut out = BTreeMap::new();
    for (place, links) in indexes {
        for (name, index) in links {
            let index = *index;
            let ingress = by_index.get(&(index, netlab_common::Direction::Ingress as u32));
            let egress = by_index.get(&(index, netlab_common::Direction::Egress as u32));
            if ingress.is_none() && egress.is_none() {
                continue;
            }
            out.insert(
                Iface {
                    place: place.clone(),
                    name: name.clone(),
                },
                HookCounters {
                    ingress: ingress.copied().unwrap_or_default(),
                    egress: egress.copied().unwrap_or_default(),
                },
            );
        }
    }
    Ok(out)
}

/// Loads the eBPF object if the lab has not loaded it yet (the verifier's
/// work: `up` runs it while it builds the links).
pub fn load(topo: &Topology) -> Result<()> {
    ebpf::loader::load(&Pins::of(&topo.name), topo.nat.conntrack_size)
}

/// Attaches the programs the topology's datapath wants (see
/// [`ebpf::loader::plan`]), after [`load`].
pub fn attach(topo: &Topology) -> Result<()> {
    let plan = ebpf::loader::plan(topo);
    ebpf::loader::attach(&Pins::of(&topo.name), &plan)
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
    // map goes with the pins, but say so explicitly.
    if let Err(err) = ebpf::loader::stop_trace(&pins) {
        log::debug!("down: {err:#}");
    }
    pins.remove()
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

    /// Installs the NAT (idempotent) with exactly `published`.
    pub fn install(&self, published: &[PublishedPort]) -> Result<()> {
        match self {
            Running::Ebpf { topo, pins } => {
                ebpf::config::configure(pins, topo)?;
                ebpf::config::sync_published(pins, topo, published)
            }
            Running::Iptables { topo, variant } => {
                iptables::install(&topo.name, topo, published, *variant)
            }
        }
    }

    /// Makes the datapath forward exactly `published`.
    pub fn sync_published(&self, published: &[PublishedPort]) -> Result<()> {
        match self {
            Running::Ebpf { topo, pins } => ebpf::config::sync_published(pins, topo, published),
            Running::Iptables { topo, variant } => {
                iptables::sync_published(&topo.name, topo, published, *variant)
            }
        }
    }

    /// Adds `new` (already in `published`, the ports now in force). The eBPF
    /// datapath does one map update; the iptables one rewrites its DNAT
    /// chain, as iptables must.
    pub fn publish(&self, published: &[PublishedPort], new: &PublishedPort) -> Result<()> {
        match self {
            Running::Ebpf { topo, pins } => ebpf::config::publish_one(pins, topo, new),
            Running::Iptables { .. } => self.sync_published(published),
        }
    }

    /// Removes `old` (no longer in `published`, the ports still in force).
    pub fn unpublish(&self, published: &[PublishedPort], old: &PublishedPort) -> Result<()> {
        match self {
            Running::Ebpf { pins, .. } => ebpf::config::unpublish_one(pins, old),
            Running::Iptables { .. } => self.sync_published(published),
        }
    }
}
