//! The kernel side of one pod: its veth (the host end on the pod
//! network's bridge, the other in the container's namespace under
//! `CNI_IFNAME`), the address and default route inside, and what CHECK
//! looks at. Over netlink, as `up` builds a lab; the datapath's part goes
//! through the seam (`Running::attach_pod`).

use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context as _, Result, bail};

use crate::{
    netlink::{self, owner_group, owner_tag},
    sys::fault::step,
    topology::{Ipv4Net, Place, Pod, Topology},
};

fn sandbox(netns: &Path) -> Place {
    Place::Path(netns.to_path_buf())
}

/// Whether the container's namespace has an interface called `ifname`.
pub fn sandbox_has(netns: &Path, ifname: &str) -> Result<bool> {
    let ifname = ifname.to_owned();
    netlink::run_in(&sandbox(netns), |nl| async move {
        Ok(nl.link(&ifname).await?.is_some())
    })
}

/// Whether the host has a link `name`, and whether it is the lab's.
pub fn host_link(topo: &Topology, name: &str) -> Result<Option<(u32, bool)>> {
    let (name, lab) = (name.to_owned(), topo.name.clone());
    netlink::run_in(&Place::Host, |nl| async move {
        Ok(nl.link(&name).await?.map(|link| {
            let ours = link.alias.as_deref() == Some(owner_tag(&lab).as_str())
                || link.group == owner_group(&lab);
            (link.index, ours)
        }))
    })
}

/// Makes the pod's veth, both ends in place, in the lab's link group (so
/// `down` removes it), with the overlay's MTU if there is one; the host
/// end's ifindex and MAC.
///
/// The host end's ifindex is above `floor`: the highest the lab's places
/// used at `up` and its pods' host ends since (0 if unknown). The kernel
/// would pick the host's next one, which a lab namespace's interface may
/// hold, and the datapath and the tracer key interfaces by ifindex. When
/// something else took that index, the host's links are listed for a
/// free one (a dump per ADD costs tens of milliseconds with 1,000 pods).
pub fn create_link(
    topo: &Topology,
    pod: &Pod,
    netns: &Path,
    floor: u32,
) -> Result<(u32, Option<[u8; 6]>)> {
    let (host, inside, lab) = (pod.host_veth.clone(), pod.ifname.clone(), topo.name.clone());
    let place = sandbox(netns);
    // Over an overlay, the pod's packets must fit the tunnel's device.
    let mtu = topo.vxlan().map(|v| v.mtu);
    let floor = match floor {
        0 => netlink::highest_index(&netlink::indexes_by_place(topo)?),
        known => known,
    };
    netlink::run_in(&Place::Host, |nl| async move {
        // The pod's end: the kernel's choice in the pod's namespace.
        let add = |index: u32| {
            nl.add_veth_in(
                (&host, &Place::Host),
                (&inside, &place),
                (index, 0),
                mtu,
                &lab,
            )
        };
        match add(floor + 1).await {
            Err(e) if netlink::index_taken(&e) => {
                let host_max = nl.links().await?.iter().map(|l| l.index).max().unwrap_or(1);
                add(host_max.max(floor) + 1).await?;
            }
            other => other?,
        }
        let link = nl.require_link(&host).await?;
        nl.set_owner(link.index, &lab).await?;
        Ok((link.index, link.mac))
    })
}

/// Inside the container: loopback up, the address on `ifname`, the
/// interface up, the default route via `gateway`. The interface's MAC.
pub fn configure_sandbox(
    netns: &Path,
    ifname: &str,
    net: Ipv4Net,
    gateway: Ipv4Addr,
) -> Result<[u8; 6]> {
    let ifname = ifname.to_owned();
    netlink::run_in(&sandbox(netns), |nl| async move {
        if let Some(lo) = nl.link("lo").await? {
            nl.set_up(lo.index).await?;
        }
        let link = nl.require_link(&ifname).await?;
        nl.add_address(link.index, net).await?;
        nl.set_up(link.index).await?;
        nl.add_route(Ipv4Net::DEFAULT, gateway).await?;
        link.mac
            .with_context(|| format!("{ifname} has no MAC address"))
    })
}

/// The host end onto the pod network's bridge.
pub fn join_bridge(topo: &Topology, pod: &Pod) -> Result<()> {
    let bridge = topo
        .pod_network
        .as_ref()
        .map(|p| p.bridge.clone())
        .context("the lab has no [pod_network]")?;
    let index = pod.host_ifindex;
    netlink::run_in(&Place::Host, |nl| async move {
        let bridge = nl.require_link(&bridge).await?;
        nl.set_controller(index, bridge.index).await
    })
}

/// The host end up: the pod's traffic flows from here.
pub fn set_host_up(pod: &Pod) -> Result<()> {
    let index = pod.host_ifindex;
    netlink::run_in(&Place::Host, |nl| async move { nl.set_up(index).await })
}

/// Deletes the pod's veth by its host end, if the host end is the lab's
/// (the other end goes with it). Gone already is fine.
pub fn remove_link(topo: &Topology, pod: &Pod) -> Result<()> {
    match host_link(topo, &pod.host_veth)? {
        None => Ok(()),
        Some((_, false)) => bail!(
            "{} is not lab `{}`'s: left as it is",
            pod.host_veth,
            topo.name
        ),
        Some((index, true)) => {
            netlink::run_in(&Place::Host, |nl| async move { nl.del_link(index).await })?;
            step("cni: pod link removed");
            Ok(())
        }
    }
}

/// What CHECK finds missing of the pod's own side, one line each: the
/// container's interface, its address, its default route; the host end
/// and its place on the bridge.
pub fn missing(topo: &Topology, pod: &Pod, netns: &Path, gateway: Ipv4Addr) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    let (ifname, addr) = (pod.ifname.clone(), pod.addr);
    let inside = netlink::run_in(&sandbox(netns), |nl| async move {
        let mut missing = Vec::new();
        let Some(link) = nl.link(&ifname).await? else {
            missing.push(format!("the container has no interface {ifname}"));
            return Ok(missing);
        };
        if !link.up {
            missing.push(format!("{ifname} is down"));
        }
        if !nl
            .addresses()
            .await?
            .iter()
            .any(|a| a.index == link.index && a.net.addr == addr)
        {
            missing.push(format!("{ifname} does not have {addr}"));
        }
        if !nl
            .routes()
            .await?
            .iter()
            .any(|r| r.dst.prefix_len == 0 && r.gateway == Some(gateway))
        {
            missing.push(format!("no default route via {gateway}"));
        }
        Ok(missing)
    });
    match inside {
        Ok(lines) => missing.extend(lines),
        Err(err) => missing.push(format!("the container's namespace: {err:#}")),
    }
    match host_link(topo, &pod.host_veth)? {
        Some((index, true)) if index == pod.host_ifindex => {}
        Some(_) => missing.push(format!("{} is not the pod's host end", pod.host_veth)),
        None => missing.push(format!("the host has no {}", pod.host_veth)),
    }
    Ok(missing)
}
