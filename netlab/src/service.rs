//! `netlab service add|rm|list`: Services changed at run time, as a
//! Kubernetes controller would change them from Services and
//! EndpointSlices (ARCHITECTURE.md, "Services"). `add` of a name in force
//! replaces that Service: backends it keeps keep their flows, backends it
//! drops have theirs cut. The record is changed under the lab's lock; the
//! datapath takes the change at once (see [`Running::service_set`]).

use std::{net::SocketAddrV4, time::Instant};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::Running,
    state::{LabLock, LabState},
    topology::{self, Proto, Service, ServiceIds},
};

/// What `service add` or `service rm` did; `--json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceOutcome {
    pub lab: String,
    /// `add`, `update` or `rm`.
    pub action: String,
    pub service: Service,
    /// How long the datapath took to apply the change, in microseconds.
    pub datapath_update_us: u64,
}

/// What `service add` is given.
#[derive(Clone, Debug, Default)]
pub struct ServiceSpec {
    pub name: String,
    /// `VIP:PORT[/PROTO]`.
    pub address: String,
    /// `ADDRESS:PORT` or `NAMESPACE:PORT` each.
    pub backends: Vec<String>,
    pub node_port: Option<u16>,
    pub affinity: bool,
}

/// Parses `VIP:PORT[/PROTO]` (TCP by default).
pub fn parse_address(spec: &str) -> Result<(SocketAddrV4, Proto)> {
    let (addr, proto) = match spec.split_once('/') {
        Some((addr, "tcp")) => (addr, Proto::Tcp),
        Some((addr, "udp")) => (addr, Proto::Udp),
        Some((_, other)) => bail!("`{spec}`: unknown protocol `{other}`; use tcp or udp"),
        None => (spec, Proto::Tcp),
    };
    match addr.parse::<SocketAddrV4>() {
        Ok(addr) if addr.port() != 0 => Ok((addr, proto)),
        _ => bail!("`{spec}` is not VIP:PORT[/PROTO], like 10.96.0.10:80/tcp"),
    }
}

/// The Service `spec` describes in `topo`, or why not (every rule the
/// topology's `[[service]]` follows, against the Services in force).
fn service(topo: &topology::Topology, in_force: &[Service], spec: &ServiceSpec) -> Result<Service> {
    let (address, proto) = parse_address(&spec.address)?;
    let mut backends = Vec::new();
    for text in &spec.backends {
        match topology::service_backend(text, topo) {
            Ok(addr) => backends.push(addr),
            Err(why) => bail!("backend `{text}` {why}"),
        }
    }
    let new = Service {
        name: spec.name.clone(),
        vip: *address.ip(),
        port: address.port(),
        proto,
        backends,
        node_port: spec.node_port,
        affinity: spec.affinity,
        ids: ServiceIds::default(),
    };
    let others: Vec<Service> = in_force
        .iter()
        .filter(|s| s.name != new.name)
        .cloned()
        .collect();
    if let Some(first) = topology::service_problems(topo, &others, &new)
        .into_iter()
        .next()
    {
        bail!("{first}");
    }
    Ok(new)
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// `service add NAME VIP:PORT[/PROTO] BACKEND...`: a new Service, or new
/// backends (and settings) for the one of that name.
pub fn add(lab: &str, spec: &ServiceSpec) -> Result<ServiceOutcome> {
    let _lock = LabLock::acquire(lab)?;
    let mut record = LabState::require(lab)?;
    let topo = record.topology()?;
    let new = service(&topo, &record.services, spec)?;
    if let Some(node_port) = new.node_port
        && let Some(p) = record
            .published
            .iter()
            .find(|p| p.host_port == node_port && p.proto == new.proto)
    {
        bail!(
            "node port {node_port}/{} is published already ({p})",
            new.proto
        );
    }
    let old = record.put_service(new.clone())?;
    let Some(new) = record
        .services
        .iter()
        .find(|s| s.name == spec.name)
        .cloned()
    else {
        bail!("service `{}` vanished from the record", spec.name);
    };
    let started = Instant::now();
    Running::new(&topo, record.iptables).service_set(&record.in_force(), &new, old.as_ref())?;
    let datapath_update_us = elapsed_us(started);
    log::info!("datapath updated in {datapath_update_us} us");
    record.save()?;
    Ok(ServiceOutcome {
        lab: lab.to_owned(),
        action: if old.is_some() { "update" } else { "add" }.to_owned(),
        service: new,
        datapath_update_us,
    })
}

/// `service rm NAME`.
pub fn remove(lab: &str, name: &str) -> Result<ServiceOutcome> {
    let _lock = LabLock::acquire(lab)?;
    let mut record = LabState::require(lab)?;
    let topo = record.topology()?;
    let Some(at) = record.services.iter().position(|s| s.name == name) else {
        bail!("lab `{lab}` has no service `{name}`");
    };
    let old = record.services.remove(at);
    let started = Instant::now();
    Running::new(&topo, record.iptables).service_rm(&record.in_force(), &old)?;
    let datapath_update_us = elapsed_us(started);
    record.save()?;
    Ok(ServiceOutcome {
        lab: lab.to_owned(),
        action: "rm".to_owned(),
        service: old,
        datapath_update_us,
    })
}

/// `service list`: the Services in force.
pub fn list(lab: &str) -> Result<Vec<Service>> {
    Ok(LabState::require(lab)?.services)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_tcp_by_default() {
        let (addr, proto) = parse_address("10.96.0.10:80").unwrap();
        assert_eq!(
            (addr.to_string().as_str(), proto),
            ("10.96.0.10:80", Proto::Tcp)
        );
        assert_eq!(parse_address("10.96.0.10:53/udp").unwrap().1, Proto::Udp);
        for bad in ["10.96.0.10", "10.96.0.10:0", "web:80", "10.96.0.10:80/sctp"] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }
}
