//! The datapaths: one seam, two implementations. A lab's NAT and published
//! ports are carried by one family (see
//! [`Datapath::family`](crate::topology::Datapath::family)):
//!
//! - [`ebpf`]: netlab's eBPF programs (`bridge`, `redirect`);
//! - [`iptables`]: the reference, rules in the lab's own chains (`iptables`).
//!
//! Commands reach either through [`Running`], so no command needs to know
//! which one a lab runs. What every lab has, whatever its family: the
//! kernel's own packet counters on every interface
//! ([`crate::netlink::lab_counters`]), and tracing (its shared maps are
//! loaded at `up`; its programs, ring buffer and journeys by `netlab
//! trace`).

pub mod ebpf;
pub mod iptables;

use anyhow::Result;

pub use self::ebpf::loader::EarlyLoader;
use self::iptables::Variant;
use crate::{
    pins::Pins,
    topology::{Datapath, Family, PublishedPort, Topology},
};

/// What must hold before `up` changes anything: the lab's pins, if any,
/// are this netlab's.
pub fn check(topo: &Topology) -> Result<()> {
    ebpf::loader::check_pins(&Pins::of(&topo.name))
}

/// Loads the eBPF object if the lab has not loaded it yet (the verifier's
/// work: `up` runs it while it builds the links), with the loader `up`
/// started first thing.
pub fn load(topo: &Topology, early: EarlyLoader) -> Result<()> {
    let sizes = ebpf::loader::Sizes {
        conntrack: topo.nat.conntrack_size,
        iface_slots: ebpf::config::iface_slots(topo),
    };
    ebpf::loader::load(
        &Pins::of(&topo.name),
        &sizes,
        topo.datapath.family(),
        topo.nat.entry,
        early,
    )
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
            Running::Ebpf { topo, pins } => ebpf::config::publish_one(pins, topo, published, new),
            Running::Iptables { .. } => self.sync_published(published),
        }
    }

    /// Removes `old` (no longer in `published`, the ports still in force),
    /// and cuts the flows it opened: a client that keeps sending to it
    /// (UDP) must not reach the old backend forever.
    pub fn unpublish(&self, published: &[PublishedPort], old: &PublishedPort) -> Result<()> {
        match self {
            Running::Ebpf { pins, .. } => {
                ebpf::config::unpublish_one(pins, published, old)?;
                ebpf::config::cut_flows(pins, old)
            }
            Running::Iptables { topo, .. } => {
                self.sync_published(published)?;
                iptables::cut_flows(topo, old)
            }
        }
    }
}
