//! Services in the eBPF datapath's maps: a ClusterIP is a `SERVICES`
//! row naming its Maglev table (`MAGLEV`), whose slots name backends
//! (`SERVICE_BACKENDS`); a NodePort is a `PUBLISHED` row naming the
//! table of the node's own backends. A change writes the backends first,
//! then the tables, then the addresses, so a packet never meets a slot
//! naming a backend that is not there yet; a removed backend's epoch
//! moves on, and its flows die at their next packet (see
//! `netlab_common::nat::CT_SERVICE`).

use std::net::SocketAddrV4;

use anyhow::Result;
use netlab_common::nat::{
    Backend, MaglevTable, SERVICE_AFFINITY, Service as ServiceRow, ServiceKey, service_epoch_slot,
};

use super::{
    config::{be, ip_proto, node_port_entry, set_backend_port_word},
    maglev, maps,
};
use crate::{
    pins::Pins,
    topology::{InForce, Service, Topology},
};

fn key(service: &Service) -> ServiceKey {
    ServiceKey {
        vip: be(service.vip),
        port: service.port.to_be(),
        proto: ip_proto(service.proto),
        _pad: 0,
    }
}

/// `service`'s backends with their ids; with `local_only`, those on this
/// node.
fn with_ids(topo: &Topology, service: &Service, local_only: bool) -> Vec<(u16, SocketAddrV4)> {
    if local_only {
        return topo.local_backends(service).collect();
    }
    service
        .ids
        .backends
        .iter()
        .copied()
        .zip(service.backends.iter().copied())
        .collect()
}

fn maglev_table(backends: &[(u16, SocketAddrV4)], service: &Service) -> MaglevTable {
    MaglevTable {
        backends: maglev::table(backends),
        flags: if service.affinity {
            SERVICE_AFFINITY
        } else {
            0
        },
    }
}

/// Moves on the epoch of backend `id`: its flows die at their next packet.
fn cut(pins: &Pins, id: u16) -> Result<()> {
    let mut epochs = maps::publish_epochs(pins)?;
    let slot = service_epoch_slot(id);
    let epoch = epochs.get(&slot, 0)?;
    epochs.set(slot, epoch.wrapping_add(1), 0)?;
    Ok(())
}

/// Makes the datapath serve `service` (its ids assigned, and in
/// `in_force`): what `old` (the same Service before, if any) had that it
/// has not is removed, the flows of removed backends cut, and the others'
/// flows kept.
pub fn set(
    pins: &Pins,
    topo: &Topology,
    in_force: &InForce<'_>,
    service: &Service,
    old: Option<&Service>,
) -> Result<()> {
    // Replies come from the backends' ports: their bits first.
    for addr in &service.backends {
        set_backend_port_word(pins, in_force, addr.port())?;
    }
    write(pins, topo, service)?;
    if let Some(old) = old {
        retire(pins, in_force, old, Some(service))?;
    }
    Ok(())
}

/// Writes `service`'s rows: its backends, then its tables, then its
/// address and NodePort. (`up` writes every Service's after the bitmap of
/// backend ports, which it fills for all of them at once.)
pub fn write(pins: &Pins, topo: &Topology, service: &Service) -> Result<()> {
    let mut backends = maps::service_backends(pins)?;
    for (id, addr) in with_ids(topo, service, false) {
        let row = Backend {
            addr: be(*addr.ip()),
            port: addr.port().to_be(),
            service: 0,
        };
        backends.insert(u32::from(id), row, 0)?;
    }
    let mut tables = maps::maglev(pins)?;
    tables.insert(
        u32::from(service.ids.cluster),
        maglev_table(&with_ids(topo, service, false), service),
        0,
    )?;
    if service.node_port.is_some() {
        tables.insert(
            u32::from(service.ids.node),
            maglev_table(&with_ids(topo, service, true), service),
            0,
        )?;
    }
    maps::services(pins)?.insert(
        key(service),
        ServiceRow {
            id: service.ids.cluster,
            _pad: 0,
        },
        0,
    )?;
    if let Some((key, row)) = node_port_entry(service) {
        maps::published(pins)?.insert(key, row, 0)?;
    }
    Ok(())
}

/// Stops serving `service` (no longer in `in_force`): its address, its
/// NodePort, its tables and its backends, whose flows are cut.
pub fn remove(pins: &Pins, in_force: &InForce<'_>, service: &Service) -> Result<()> {
    retire(pins, in_force, service, None)
}

/// Removes what `old` has and `new` (its successor, if any) has not.
fn retire(pins: &Pins, in_force: &InForce<'_>, old: &Service, new: Option<&Service>) -> Result<()> {
    if new.is_none_or(|new| key(new) != key(old)) {
        let _ = maps::services(pins)?.remove(&key(old));
    }
    if let Some((port_key, _)) = node_port_entry(old)
        && new
            .and_then(node_port_entry)
            .is_none_or(|(new_key, _)| new_key != port_key)
    {
        let _ = maps::published(pins)?.remove(&port_key);
    }
    let mut tables = maps::maglev(pins)?;
    for id in [old.ids.cluster, old.ids.node] {
        let kept = new.is_some_and(|new| new.ids.cluster == id || new.ids.node == id);
        if id != 0 && !kept {
            let _ = tables.remove(&u32::from(id));
        }
    }
    let mut backends = maps::service_backends(pins)?;
    for (id, addr) in old.ids.backends.iter().zip(&old.backends) {
        if new.is_some_and(|new| new.ids.backends.contains(id)) {
            continue;
        }
        let _ = backends.remove(&u32::from(*id));
        cut(pins, *id)?;
        set_backend_port_word(pins, in_force, addr.port())?;
    }
    Ok(())
}
