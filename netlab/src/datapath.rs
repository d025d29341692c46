//! Loads netlab's eBPF object, attaches its programs with TCX, and pins
//! everything under `/sys/fs/bpf/netlab/<lab>/` so the lab keeps working
//! after `up` exits and later commands find it:
//!
//! ```text
//! /sys/fs/bpf/netlab/<lab>/maps/<MAP>             maps, pinned by name
//! /sys/fs/bpf/netlab/<lab>/progs/<program>        loaded programs
//! /sys/fs/bpf/netlab/<lab>/links/<place>/<if>@<hook>  TCX links (unpin = detach)
//! ```

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    EbpfLoader,
    maps::{Map, MapData, PerCpuHashMap},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType,
        cgroup_sock_addr::CgroupSockAddrAttachType, links::FdLink,
    },
};
use netlab_common::{Direction, IfaceCounters, IfaceKey, names};

use crate::topology::{Datapath, Iface, Place, Topology};

/// The object `cargo xtask` built, or an empty placeholder (see build.rs).
/// Public so that tests can load the same object into a private bpffs.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netlab-ebpf.o"));

pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub fn pin_root() -> PathBuf {
    Path::new(BPFFS).join("netlab")
}

pub fn pin_dir(lab: &str) -> PathBuf {
    pin_root().join(lab)
}

/// The TCX hooks netlab reports on, with their names.
pub const HOOKS: [(Direction, TcAttachType, &str); 2] = [
    (Direction::Ingress, TcAttachType::Ingress, "ingress"),
    (Direction::Egress, TcAttachType::Egress, "egress"),
];

/// Every program the object carries, loaded and pinned once per lab.
const PROGRAMS: [(&str, Kind); 8] = [
    (names::COUNT_INGRESS, Kind::Tc),
    (names::COUNT_EGRESS, Kind::Tc),
    (names::NAT_INGRESS, Kind::Tc),
    (names::NAT_EGRESS, Kind::Tc),
    (
        names::SOCK_CONNECT4,
        Kind::Sock(CgroupSockAddrAttachType::Connect4),
    ),
    (
        names::SOCK_SENDMSG4,
        Kind::Sock(CgroupSockAddrAttachType::UDPSendMsg4),
    ),
    (
        names::SOCK_RECVMSG4,
        Kind::Sock(CgroupSockAddrAttachType::UDPRecvMsg4),
    ),
    (
        names::SOCK_GETPEERNAME4,
        Kind::Sock(CgroupSockAddrAttachType::GetPeerName4),
    ),
];

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A TC classifier, attached with TCX to interfaces.
    Tc,
    /// A cgroup sock_addr program, attached to the cgroup2 root.
    Sock(CgroupSockAddrAttachType),
}

/// One program on one hook of one interface.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub iface: Iface,
    pub program: &'static str,
    pub attach_type: TcAttachType,
}

/// What runs where: on the host side of every veth (lab ends and the
/// uplink) the NAT programs, which also count; elsewhere the counters alone.
pub fn plan(topo: &Topology) -> Vec<Attachment> {
    let mut plan = Vec::new();
    for end in topo.veth_ends() {
        let iface = Iface {
            place: end.place.clone(),
            name: end.name.clone(),
        };
        let mut add = |program, attach_type| {
            plan.push(Attachment {
                iface: iface.clone(),
                program,
                attach_type,
            })
        };
        if end.place == Place::Host && topo.datapath != Datapath::Iptables {
            add(names::NAT_INGRESS, TcAttachType::Ingress);
            add(names::NAT_EGRESS, TcAttachType::Egress);
        } else {
            add(names::COUNT_INGRESS, TcAttachType::Ingress);
            add(names::COUNT_EGRESS, TcAttachType::Egress);
        }
    }
    plan
}

pub fn link_pin(lab: &str, iface: &Iface, program: &str) -> PathBuf {
    pin_dir(lab)
        .join("links")
        .join(pin_name(&iface.place.to_string()))
        .join(format!("{}@{program}", pin_name(&iface.name)))
}

/// bpffs reserves dots in names (lookup fails with EPERM), but interface and
/// namespace names may hold them. Linux never allows `:` in an interface
/// name, so mapping `.` to `:` keeps names distinct.
fn pin_name(name: &str) -> String {
    name.replace('.', ":")
}

/// Mounts bpffs on /sys/fs/bpf if nothing is mounted there yet.
pub fn ensure_bpffs() -> Result<()> {
    let dir = crate::netns::cstring(Path::new(BPFFS));
    // SAFETY: statfs fills the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated path and a valid out pointer.
    if unsafe { libc::statfs(dir.as_ptr(), &mut st) } == 0 && st.f_type == BPF_FS_MAGIC {
        return Ok(());
    }
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    crate::netns::mount(c"bpf", Path::new(BPFFS), c"bpf", 0)
        .context("mounting bpffs on /sys/fs/bpf")?;
    log::info!("mounted bpffs on {BPFFS}");
    Ok(())
}

/// Loads the object once per lab (later `up`s reuse the pinned programs and
/// maps), then makes every attachment of `plan` that has no pinned link yet.
pub fn attach(lab: &str, plan: &[Attachment], conntrack_size: u32) -> Result<()> {
    ensure_bpffs()?;
    let dir = pin_dir(lab);
    for sub in ["maps", "progs", "links"] {
        fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    ensure_loaded(lab, conntrack_size)?;
    let pending: Vec<&Attachment> = plan
        .iter()
        .filter(|a| !link_pin(lab, &a.iface, a.program).exists())
        .collect();
    // Every TCX attach waits for an RCU grace period. The kernel serialises
    // most of that work, so several workers only help a little (measured:
    // 150 attachments took 4.3 s instead of 5.0 s).
    let workers = pending.len().div_ceil(ATTACH_WORKERS).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = pending
            .chunks(workers)
            .map(|chunk| s.spawn(move || attach_chunk(lab, chunk)))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("an attach worker panicked"))?
        })
    })?;
    if plan.iter().any(|a| a.program == names::NAT_INGRESS) {
        attach_sockets(lab)?;
    }
    Ok(())
}

/// How many threads attach TC programs at once.
const ATTACH_WORKERS: usize = 16;

/// Attaches and pins one share of the plan. The worker opens its own handles
/// on the pinned programs and enters each interface's namespace in turn
/// (ifindex lookup is per namespace); pins resolve in the mount namespace,
/// which `setns(CLONE_NEWNET)` leaves alone.
fn attach_chunk(lab: &str, chunk: &[&Attachment]) -> Result<()> {
    let mut programs: BTreeMap<&str, SchedClassifier> = BTreeMap::new();
    for Attachment {
        iface,
        program: name,
        attach_type,
    } in chunk.iter().copied()
    {
        if !programs.contains_key(name) {
            let pin = pin_dir(lab).join("progs").join(name);
            let program = SchedClassifier::from_pin(&pin)
                .with_context(|| format!("opening pinned program {}", pin.display()))?;
            programs.insert(name, program);
        }
        let Some(program) = programs.get_mut(name) else {
            bail!("TC program {name} was not loaded");
        };
        let pin = link_pin(lab, iface, name);
        if let Some(parent) = pin.parent() {
            fs::create_dir_all(parent)?;
        }
        crate::netns::enter(&iface.place)?;
        let id = program
            .attach(&iface.name, *attach_type)
            .with_context(|| format!("attaching {name} to {iface}"))?;
        let link: FdLink = program.take_link(id)?.try_into()?;
        link.pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
    }
    Ok(())
}

/// Attaches the socket-level programs to the root of the cgroup2 tree, so
/// they see every process; they act only on the lab's host namespace.
fn attach_sockets(lab: &str) -> Result<()> {
    let Some(root) = cgroup2_root() else {
        log::warn!(
            "no cgroup2 hierarchy is mounted: the host's own connections to published ports \
             are not translated (the lab's namespaces and the uplink are)"
        );
        return Ok(());
    };
    let cgroup =
        fs::File::open(&root).with_context(|| format!("opening cgroup {}", root.display()))?;
    for (name, kind) in PROGRAMS {
        let Kind::Sock(attach_type) = kind else {
            continue;
        };
        let pin = pin_dir(lab).join("links").join("cgroup").join(name);
        if pin.exists() {
            continue;
        }
        let prog_pin = pin_dir(lab).join("progs").join(name);
        let mut program = CgroupSockAddr::from_pin(&prog_pin, attach_type)
            .with_context(|| format!("opening pinned program {}", prog_pin.display()))?;
        if let Some(parent) = pin.parent() {
            fs::create_dir_all(parent)?;
        }
        // A BPF link always attaches as one of many (the kernel adds
        // BPF_F_ALLOW_MULTI itself and refuses the flag from us).
        let id = program
            .attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to cgroup {}", root.display()))?;
        let link: FdLink = program.take_link(id)?.try_into()?;
        link.pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
    }
    Ok(())
}

/// The mount point of the cgroup2 hierarchy (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid hosts), from /proc/self/mountinfo.
fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// Loads the object and pins every program that is not pinned yet. Maps
/// are pinned by name, so a later load reuses them and counters survive.
fn ensure_loaded(lab: &str, conntrack_size: u32) -> Result<()> {
    let pin_of = |name: &str| pin_dir(lab).join("progs").join(name);
    if PROGRAMS.iter().all(|(name, _)| pin_of(name).exists()) && crate::trace::installed(lab) {
        return Ok(());
    }
    if EBPF_OBJECT.is_empty() {
        bail!(
            "this netlab binary was built without its eBPF object (plain `cargo build`); \
             build and run it with `cargo xtask run -- ARGS`"
        );
    }
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir(lab).join("maps"))
        .map_max_entries(names::CONNTRACK, conntrack_size)
        .map_max_entries(names::CONNTRACK_NEW, conntrack_size)
        .map_max_entries(names::TRACE_EVENTS, crate::trace::ring_bytes()?)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    for (name, kind) in PROGRAMS {
        let pin = pin_of(name);
        if pin.exists() {
            continue;
        }
        let Some(program) = ebpf.program_mut(name) else {
            bail!("the eBPF object has no program {name}");
        };
        let loaded = match kind {
            Kind::Tc => {
                let program: &mut SchedClassifier = program.try_into()?;
                program.load().map(|()| program.pin(&pin))
            }
            Kind::Sock(_) => {
                let program: &mut CgroupSockAddr = program.try_into()?;
                program.load().map(|()| program.pin(&pin))
            }
        };
        loaded
            .with_context(|| format!("loading program {name} (verifier)"))?
            .with_context(|| format!("pinning {}", pin.display()))?;
    }
    // Tracepoints for `netlab trace` (kernel drops), attached once.
    crate::trace::install(&mut ebpf, lab)?;
    // The pins keep the programs loaded once `ebpf` is dropped.
    Ok(())
}

/// Removes every pin of the lab: links detach, programs and maps go with
/// their last reference.
pub fn remove(lab: &str) -> Result<()> {
    let dir = pin_dir(lab);
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
    }
    // Leave /sys/fs/bpf/netlab only while another lab uses it.
    let _ = fs::remove_dir(pin_root());
    Ok(())
}

/// Packet counters per (ifindex, direction), summed over CPUs.
pub fn counters(lab: &str) -> Result<BTreeMap<(u32, u32), IfaceCounters>> {
    let pin = pin_dir(lab).join("maps").join(names::IFACE_COUNTERS);
    let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    let map: PerCpuHashMap<_, IfaceKey, IfaceCounters> =
        PerCpuHashMap::try_from(Map::PerCpuHashMap(data))?;
    let mut out = BTreeMap::new();
    for entry in map.iter() {
        let (key, per_cpu) = entry?;
        let mut sum = IfaceCounters::default();
        for c in per_cpu.iter() {
            sum.packets += c.packets;
            sum.bytes += c.bytes;
        }
        out.insert((key.ifindex, key.direction), sum);
    }
    Ok(out)
}

/// Names of the programs attached with TCX to `iface` at `attach_type`.
pub fn attached(iface: &Iface, attach_type: TcAttachType) -> Result<Vec<String>> {
    crate::netns::on_thread(&iface.place, || -> Result<Vec<String>> {
        let (_, infos) = SchedClassifier::query_tcx(&iface.name, attach_type)?;
        Ok(infos
            .iter()
            .map(|i| i.name_as_str().unwrap_or("?").to_owned())
            .collect())
    })?
}

/// Whether a place can be reached at all (its namespace still exists).
pub fn place_exists(place: &Place) -> bool {
    match place {
        Place::Host => true,
        Place::Netns(name) => crate::netns::exists(name),
    }
}
