//! `netlab publish add|rm|list`: published ports changed at run time, as
//! `docker run -p` declares them. The record is changed under the lab's
//! lock, and the datapath takes the change at once without reloading
//! anything (see [`Running::publish`]).

use std::time::Instant;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::Running,
    state::{LabLock, LabState},
    topology::{Proto, PublishedPort, Service, Topology},
};

/// What `publish add` or `publish rm` did; `--json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublishOutcome {
    pub lab: String,
    /// `add` or `rm`.
    pub action: String,
    pub port: PublishedPort,
    /// How long the datapath took to apply the change (the map update, or
    /// the chain rewrite for iptables), in microseconds.
    pub datapath_update_us: u64,
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
pub fn check_new(topo: &Topology, current: &[PublishedPort], new: &PublishedPort) -> Result<()> {
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
    if let Some(vxlan) = topo.tunnel_on(new.proto, new.host_port) {
        bail!(
            "host port {}/{} carries the overlay {}'s tunnel; publish another port",
            new.host_port,
            new.proto,
            vxlan.name
        );
    }
    if !topo.namespaces.iter().any(|n| n.name == new.namespace) {
        bail!(
            "backend `{}` is not a namespace of lab `{}`: published ports forward into the lab only",
            new.namespace,
            topo.name
        );
    }
    if topo.backend_addr(&new.namespace).is_none() {
        bail!(
            "namespace `{}` has no address in the lab to forward to",
            new.namespace
        );
    }
    Ok(())
}

/// The Service whose NodePort is `port`/`proto`, if any.
fn node_port_of(record: &LabState, port: u16, proto: Proto) -> Option<&Service> {
    record
        .services
        .iter()
        .find(|s| s.node_port == Some(port) && s.proto == proto)
}

fn load(lab: &str) -> Result<(LabState, Topology)> {
    let record = LabState::require(lab)?;
    let topo = record.topology()?;
    Ok((record, topo))
}

fn elapsed_us(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// `publish add NAMESPACE MAPPING`.
pub fn add(lab: &str, namespace: String, mapping: &str) -> Result<PublishOutcome> {
    let _lock = LabLock::acquire(lab)?;
    let (mut record, topo) = load(lab)?;
    let (host_port, port, proto) = parse_mapping(mapping)?;
    let new = PublishedPort {
        host_port,
        proto,
        namespace,
        port,
        addr: None,
    };
    check_new(&topo, &record.published, &new)?;
    if let Some(service) = node_port_of(&record, new.host_port, new.proto) {
        bail!(
            "host port {}/{} is service `{}`'s node port",
            new.host_port,
            new.proto,
            service.name
        );
    }
    record.published.push(new.clone());
    let started = Instant::now();
    Running::new(&topo, record.iptables).publish(&record.in_force(), &new)?;
    let datapath_update_us = elapsed_us(started);
    log::info!("datapath updated in {datapath_update_us} us");
    record.save()?;
    Ok(PublishOutcome {
        lab: lab.to_owned(),
        action: "add".to_owned(),
        port: new,
        datapath_update_us,
    })
}

/// `publish rm HOST_PORT[/PROTO]`.
pub fn remove(lab: &str, spec: &str) -> Result<PublishOutcome> {
    let _lock = LabLock::acquire(lab)?;
    let (mut record, topo) = load(lab)?;
    let (host_port, _, proto) = parse_mapping(spec)?;
    let Some(at) = record
        .published
        .iter()
        .position(|r| r.host_port == host_port && r.proto == proto)
    else {
        bail!("host port {host_port}/{proto} is not published in lab `{lab}`");
    };
    let removed = record.published.remove(at);
    let started = Instant::now();
    Running::new(&topo, record.iptables).unpublish(&record.in_force(), &removed)?;
    let datapath_update_us = elapsed_us(started);
    log::info!("datapath updated in {datapath_update_us} us");
    record.save()?;
    Ok(PublishOutcome {
        lab: lab.to_owned(),
        action: "rm".to_owned(),
        port: removed,
        datapath_update_us,
    })
}

/// `publish list`: the ports in force, each with the address it forwards to.
pub fn list(lab: &str) -> Result<Vec<(PublishedPort, Option<std::net::Ipv4Addr>)>> {
    let (record, topo) = load(lab)?;
    Ok(record
        .published
        .into_iter()
        .map(|p| {
            let backend = p.backend(&topo);
            (p, backend)
        })
        .collect())
}

#[cfg(test)]
mod tests {
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
        for bad in ["0:80", "70000:80", "80/sctp", "a:b"] {
            assert!(parse_mapping(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn conflicting_publish_is_refused() {
        let topo = crate::topology::default_lab().unwrap();
        let current = vec![PublishedPort {
            host_port: 8080,
            proto: Proto::Tcp,
            namespace: "blue".into(),
            port: 80,
            addr: None,
        }];
        let same_port = PublishedPort {
            host_port: 8080,
            proto: Proto::Tcp,
            namespace: "red".into(),
            port: 81,
            addr: None,
        };
        let err = check_new(&topo, &current, &same_port).unwrap_err();
        assert!(err.to_string().contains("already published"), "{err}");
        let udp = PublishedPort {
            proto: Proto::Udp,
            ..same_port.clone()
        };
        check_new(&topo, &current, &udp).unwrap();
        let outside_lab = PublishedPort {
            host_port: 9090,
            namespace: "nosuch".into(),
            ..same_port
        };
        let err = check_new(&topo, &current, &outside_lab).unwrap_err();
        assert!(err.to_string().contains("not a namespace"), "{err}");
    }

    #[test]
    fn the_overlay_tunnel_port_is_refused() {
        let text = include_str!("../../docs/cni/node.toml").to_owned()
            + "\n[pod_network.vxlan]\nname = \"nl-vx\"\nvni = 42\n";
        let topo = crate::topology::parse(&text, "node.toml").unwrap();
        let tunnel = PublishedPort {
            host_port: 4789,
            proto: Proto::Udp,
            namespace: "outside".into(),
            port: 53,
            addr: None,
        };
        let err = check_new(&topo, &[], &tunnel).unwrap_err();
        assert!(err.to_string().contains("overlay nl-vx's tunnel"), "{err}");
        let tcp = PublishedPort {
            proto: Proto::Tcp,
            ..tunnel
        };
        check_new(&topo, &[], &tcp).unwrap();
    }
}
