//! The commands: ADD, DEL, CHECK, STATUS, GC and VERSION over the lab
//! record (the store of pods and their addresses, under the lab's lock,
//! which also serializes parallel ADDs) and the datapath's seam.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use super::{
    attach,
    ipam::{self, Delegated},
    spec::{
        AddResult, CniError, Command, Env, Interface, IpConfig, NetConf, PortMapping, RouteOut,
        SUPPORTED, Version, VersionReply, code, mac_text, shaped,
    },
};
use crate::{
    datapath::Running,
    state::{LabLock, LabState},
    sys::fault::step,
    topology::{Ipv4Net, Pod, Proto, PublishedPort, Topology},
};

/// Runs one command; what it prints on stdout on success (nothing for
/// DEL, CHECK, STATUS and GC).
pub fn run(env: &Env, stdin: &str) -> Result<Option<String>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(version(stdin)));
    }
    let conf = NetConf::parse(stdin)?;
    Version::parse(&conf.cni_version)?;
    match env.command {
        Command::Add => add(env, &conf, stdin).map(Some),
        Command::Del => del(env, &conf, stdin).map(|()| None),
        Command::Check => check(env, &conf).map(|()| None),
        Command::Status => status(&conf).map(|()| None),
        Command::Gc => gc(&conf).map(|()| None),
        Command::Version => Ok(None),
    }
}

/// VERSION: the versions spoken, in the version asked for when it is one.
fn version(stdin: &str) -> String {
    let asked = serde_json::from_str::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .filter(|v| SUPPORTED.contains(&v.as_str()));
    let reply = VersionReply {
        cni_version: asked.unwrap_or_else(|| "1.1.0".to_owned()),
        supported_versions: SUPPORTED.map(str::to_owned).to_vec(),
    };
    serde_json::to_string(&reply).unwrap_or_default()
}

/// The lab, up and complete, with its topology; code 50 otherwise.
fn lab_up(conf: &NetConf) -> Result<(LabState, Topology), CniError> {
    let lab = conf.lab();
    let state = LabState::load(lab)?.filter(|s| s.complete).ok_or_else(|| {
        CniError::new(
            50,
            format!("netlab lab `{lab}` is not up: bring the node's network up with `netlab up`"),
        )
    })?;
    let topo = state.topology()?;
    if topo.pod_network.is_none() {
        return Err(CniError::new(
            7,
            format!("netlab lab `{lab}` has no [pod_network] to attach pods to"),
        ));
    }
    Ok((state, topo))
}

/// The port mappings as published ports of `pod`: TCP or UDP, on every
/// host address of the lab (an empty `hostIP`, or `0.0.0.0`).
fn published_ports(conf: &NetConf, pod: &Pod) -> Result<Vec<PublishedPort>, CniError> {
    conf.runtime_config
        .port_mappings
        .iter()
        .map(|m: &PortMapping| {
            let proto = match m.protocol.as_deref().unwrap_or("tcp") {
                "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                other => {
                    return Err(CniError::new(
                        2,
                        format!("runtimeConfig.portMappings protocol {other:?}: netlab publishes tcp and udp"),
                    ));
                }
            };
            match m.host_ip.as_deref().filter(|ip| !ip.is_empty()) {
                None => {}
                Some(ip) if ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) => {}
                Some(ip) => {
                    return Err(CniError::new(
                        2,
                        format!("runtimeConfig.portMappings hostIP {ip:?}: netlab publishes on every host address of the lab"),
                    ));
                }
            }
            if m.host_port == 0 || m.container_port == 0 {
                return Err(CniError::new(
                    2,
                    "runtimeConfig.portMappings: ports must be 1-65535".to_owned(),
                ));
            }
            Ok(PublishedPort {
                host_port: m.host_port,
                proto,
                namespace: pod.key(),
                port: m.container_port,
                addr: Some(pod.addr),
            })
        })
        .collect()
}

fn same(pod: &Pod, network: &str, id: &str, ifname: &str) -> bool {
    pod.network == network && pod.container_id == id && pod.ifname == ifname
}

/// ADD: an address, the veth, the datapath's rows and programs, the port
/// mappings; the result. Anything that fails undoes what was done.
fn add(env: &Env, conf: &NetConf, raw: &str) -> Result<String, CniError> {
    let version = Version::parse(&conf.cni_version)?;
    let (id, ifname) = env.attachment()?;
    let netns = env.netns()?.clone();
    if !netns.exists() {
        return Err(CniError::new(
            3,
            format!("CNI_NETNS {} does not exist", netns.display()),
        ));
    }
    let ipam_type = conf.ipam_type()?;
    let _lock = LabLock::acquire(conf.lab())?;
    let (mut state, topo) = lab_up(conf)?;
    let gateway = topo
        .pod_gateway()
        .ok_or_else(|| CniError::new(7, "the pod network's bridge has no address".to_owned()))?;
    if state.pods.iter().any(|p| same(p, &conf.name, id, ifname)) {
        return Err(CniError::new(
            code::ALREADY_ATTACHED,
            format!(
                "{id}/{ifname} is attached to network {} already (DEL it first)",
                conf.name
            ),
        ));
    }
    if attach::sandbox_has(&netns, ifname)? {
        return Err(CniError::new(
            code::IFNAME_TAKEN,
            format!("the container already has an interface {ifname}"),
        ));
    }
    let host_veth = ipam::host_veth_name(&conf.name, id, ifname);
    // A host end of that name that no record names: an ADD killed before
    // its record was saved. Gone with it, if it is the lab's.
    if let Some((_, ours)) = attach::host_link(&topo, &host_veth)? {
        if !ours {
            return Err(CniError::new(
                code::ALREADY_ATTACHED,
                format!("{host_veth} exists and is not lab `{}`'s", topo.name),
            ));
        }
        let stale = Pod {
            network: conf.name.clone(),
            container_id: id.to_owned(),
            ifname: ifname.to_owned(),
            netns: String::new(),
            host_veth: host_veth.clone(),
            host_ifindex: 0,
            addr: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            mac: None,
            ready: false,
        };
        attach::remove_link(&topo, &stale)?;
    }

    let (net, pod_gateway) = match ipam_type {
        Some(kind) => {
            let Some(Delegated { net, gateway: gw }) = ipam::delegate(env, kind, "ADD", raw)?
            else {
                return Err(CniError::new(
                    5,
                    format!("IPAM plugin {kind} gave no address"),
                ));
            };
            (net, gw.unwrap_or(gateway.addr))
        }
        None => {
            let pool = topo.pod_pool().ok_or_else(|| {
                CniError::new(7, "the pod network has no address to hand out".to_owned())
            })?;
            let mut taken: BTreeSet<Ipv4Addr> = topo.addresses().map(|a| a.net.addr).collect();
            taken.extend(state.pods.iter().map(|p| p.addr));
            taken.insert(gateway.addr);
            let addr = ipam::allocate(pool, &taken, state.pod_last).ok_or_else(|| {
                CniError::new(
                    code::POOL_EXHAUSTED,
                    format!(
                        "no address left in the pod network {}-{} ({} pods)",
                        pool.0,
                        pool.1,
                        state.pods.len()
                    ),
                )
            })?;
            state.pod_last = Some(addr);
            (
                Ipv4Net {
                    addr,
                    prefix_len: gateway.prefix_len,
                },
                gateway.addr,
            )
        }
    };
    let mut pod = Pod {
        network: conf.name.clone(),
        container_id: id.to_owned(),
        ifname: ifname.to_owned(),
        netns: netns.display().to_string(),
        host_veth,
        host_ifindex: 0,
        addr: net.addr,
        prefix_len: net.prefix_len,
        mac: None,
        ready: false,
    };
    let ports = published_ports(conf, &pod)?;
    if let Some(taken) = ports.iter().find_map(|new| {
        state
            .published
            .iter()
            .find(|p| p.host_port == new.host_port && p.proto == new.proto)
    }) {
        return Err(CniError::new(
            code::PORT_TAKEN,
            format!(
                "host port {}/{} is published already ({taken})",
                taken.host_port, taken.proto
            ),
        ));
    }
    if let Some((new, service)) = ports.iter().find_map(|new| {
        let service = state
            .services
            .iter()
            .find(|s| s.node_port == Some(new.host_port) && s.proto == new.proto)?;
        Some((new, service))
    }) {
        return Err(CniError::new(
            code::PORT_TAKEN,
            format!(
                "host port {}/{} is service `{}`'s node port",
                new.host_port, new.proto, service.name
            ),
        ));
    }
    if let Some((new, vxlan)) = ports
        .iter()
        .find_map(|new| Some((new, topo.tunnel_on(new.proto, new.host_port)?)))
    {
        return Err(CniError::new(
            code::PORT_TAKEN,
            format!(
                "host port {}/{} carries the overlay {}'s tunnel",
                new.host_port, new.proto, vxlan.name
            ),
        ));
    }
    // The record first: a crash from here on leaves what DEL or GC finds.
    state.pods.push(pod.clone());
    state.save()?;
    step("cni: pod recorded");

    let host_mac = match attach_pod(&topo, &mut state, &mut pod, &netns, pod_gateway, ports) {
        Ok(mac) => mac,
        Err(err) => {
            let _ = detach(&topo, &mut state, &pod);
            if let Some(kind) = ipam_type {
                let _ = ipam::delegate(env, kind, "DEL", raw);
            }
            return Err(err);
        }
    };
    let result = AddResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            Interface {
                name: pod.host_veth.clone(),
                mac: host_mac.map(mac_text).unwrap_or_default(),
                sandbox: None,
            },
            Interface {
                name: pod.ifname.clone(),
                mac: pod.mac.map(mac_text).unwrap_or_default(),
                sandbox: Some(pod.netns.clone()),
            },
        ],
        ips: vec![IpConfig {
            version: None,
            address: net.to_string(),
            gateway: Some(pod_gateway),
            interface: Some(1),
        }],
        routes: vec![RouteOut {
            dst: "0.0.0.0/0".to_owned(),
            gw: Some(pod_gateway),
        }],
        dns: conf.dns.clone(),
    };
    Ok(serde_json::to_string(&shaped(result, version)).unwrap_or_default())
}

/// The kernel work of ADD, each step saved as it is done; the host end's
/// MAC.
fn attach_pod(
    topo: &Topology,
    state: &mut LabState,
    pod: &mut Pod,
    netns: &std::path::Path,
    gateway: Ipv4Addr,
    ports: Vec<PublishedPort>,
) -> Result<Option<[u8; 6]>, CniError> {
    let save = |state: &mut LabState, pod: &Pod| -> Result<(), CniError> {
        if let Some(record) = state
            .pods
            .iter_mut()
            .find(|p| same(p, &pod.network, &pod.container_id, &pod.ifname))
        {
            *record = pod.clone();
        }
        state.save()?;
        Ok(())
    };
    // Above every index the lab's places and pods took (see create_link;
    // 0, unknown, in a record from before the ceiling was kept).
    let floor = match state.ifindex_ceiling {
        0 => 0,
        ceiling => state
            .pods
            .iter()
            .map(|p| p.host_ifindex)
            .fold(ceiling, u32::max),
    };
    let (host_ifindex, host_mac) = attach::create_link(topo, pod, netns, floor)?;
    pod.host_ifindex = host_ifindex;
    save(state, pod)?;
    step("cni: pod veth");
    pod.mac = Some(attach::configure_sandbox(
        netns,
        &pod.ifname,
        Ipv4Net {
            addr: pod.addr,
            prefix_len: pod.prefix_len,
        },
        gateway,
    )?);
    save(state, pod)?;
    step("cni: pod address and route");
    attach::join_bridge(topo, pod)?;
    step("cni: pod on the bridge");
    let running = Running::new(topo, state.iptables);
    running.attach_pod(pod)?;
    step("cni: pod in the datapath");
    attach::set_host_up(pod)?;
    step("cni: pod's host end up");
    for port in ports {
        // Recorded first, so a DEL after a crash here unpublishes it.
        state.published.push(port.clone());
        state.save()?;
        running.publish(&state.in_force(), &port)?;
        step("cni: pod port published");
    }
    pod.ready = true;
    save(state, pod)?;
    Ok(host_mac)
}

/// Undoes an attachment, whatever part of it exists: its published ports
/// (their flows cut), its rows, its veth; then drops its record and saves.
fn detach(topo: &Topology, state: &mut LabState, pod: &Pod) -> Result<(), CniError> {
    let running = Running::new(topo, state.iptables);
    let key = pod.key();
    while let Some(at) = state.published.iter().position(|p| p.namespace == key) {
        let old = state.published.remove(at);
        running.unpublish(&state.in_force(), &old)?;
        state.save()?;
    }
    running.detach_pod(pod)?;
    attach::remove_link(topo, pod)?;
    state
        .pods
        .retain(|p| !same(p, &pod.network, &pod.container_id, &pod.ifname));
    state.save()?;
    Ok(())
}

/// DEL: whatever of the attachment exists goes, its address freed. Nothing
/// to do (DEL twice, a container never added, the lab down) is success.
fn del(env: &Env, conf: &NetConf, raw: &str) -> Result<(), CniError> {
    let (id, ifname) = env.attachment()?;
    let ipam_type = conf.ipam_type()?;
    let lab = conf.lab();
    let _lock = LabLock::acquire(lab)?;
    if let Some(state) = LabState::load(lab)? {
        let mut state = state;
        let topo = state.topology()?;
        let pod = state
            .pods
            .iter()
            .find(|p| same(p, &conf.name, id, ifname))
            .cloned();
        if let Some(pod) = pod {
            detach(&topo, &mut state, &pod)?;
        }
    }
    if let Some(kind) = ipam_type {
        ipam::delegate(env, kind, "DEL", raw)?;
    }
    Ok(())
}

/// CHECK: the attachment is as ADD left it (and as `prevResult` says).
fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let (id, ifname) = env.attachment()?;
    let netns = env.netns()?.clone();
    let prev: AddResult = conf
        .prev_result
        .clone()
        .ok_or_else(|| CniError::new(7, "CHECK needs prevResult".to_owned()))
        .and_then(|v| {
            serde_json::from_value(v)
                .map_err(|e| CniError::new(7, format!("prevResult is not a result: {e}")))
        })?;
    let _lock = LabLock::acquire(conf.lab())?;
    let (state, topo) = lab_up(conf)?;
    let pod = state
        .pods
        .iter()
        .find(|p| same(p, &conf.name, id, ifname))
        .ok_or_else(|| {
            CniError::new(
                code::DAMAGED,
                format!("{id}/{ifname} is not attached to network {}", conf.name),
            )
        })?;
    let address = format!("{}/{}", pod.addr, pod.prefix_len);
    let gateway = prev
        .ips
        .iter()
        .find(|ip| ip.address == address)
        .and_then(|ip| ip.gateway)
        .ok_or_else(|| {
            CniError::new(
                code::DAMAGED,
                format!("prevResult does not list the pod's address {address}"),
            )
        })?;
    let mut missing = attach::missing(&topo, pod, &netns, gateway)?;
    if !pod.ready {
        missing.push("its ADD did not finish".to_owned());
    }
    missing.extend(Running::new(&topo, state.iptables).pod_missing(pod)?);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::DAMAGED,
            format!("{id}/{ifname} is damaged: {}", missing.join("; ")),
        )
        .with_details(missing.join("\n")))
    }
}

/// STATUS: ready when the node's lab is up with a pod network.
fn status(conf: &NetConf) -> Result<(), CniError> {
    lab_up(conf).map(|_| ())
}

/// GC: every attachment of this network that the runtime does not list
/// goes. A call that lists none is refused (it would remove every pod).
fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid: Vec<(String, String)> = conf
        .valid_attachments
        .iter()
        .chain(conf.attachments.iter())
        .flatten()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    if conf.valid_attachments.is_none() && conf.attachments.is_none() {
        return Err(CniError::new(
            7,
            "GC needs cni.dev/valid-attachments (or cni.dev/attachments)".to_owned(),
        ));
    }
    let lab = conf.lab();
    let _lock = LabLock::acquire(lab)?;
    let Some(mut state) = LabState::load(lab)? else {
        return Ok(());
    };
    let topo = state.topology()?;
    let stale: Vec<Pod> = state
        .pods
        .iter()
        .filter(|p| p.network == conf.name)
        .filter(|p| !valid.contains(&(p.container_id.clone(), p.ifname.clone())))
        .cloned()
        .collect();
    for pod in stale {
        detach(&topo, &mut state, &pod)?;
    }
    Ok(())
}
