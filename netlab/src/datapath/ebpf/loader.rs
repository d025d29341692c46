//! Loads netlab's eBPF object, attaches its programs, and pins everything
//! (see [`Pins`] for the layout) so the lab keeps working after `up` exits.
//!
//! The loader owns every program of the object: the TC programs (attached
//! with TCX to the lab's veths) and the cgroup sock_addr programs (attached
//! to the cgroup2 root) at `up`; and, only while `netlab trace` runs
//! ([`TraceSession`]), `trace_hop` (tail-called by the TC programs through
//! the `TRACE_PROGS` slot) and the fate tracepoints (`skb:kfree_skb`,
//! `skb:consume_skb`). `up` never pays the
//! verifier for them, and a lab nobody traces carries none of them.

use std::{
    collections::BTreeMap,
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, ProgramArray},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, TracePoint,
        cgroup_sock_addr::CgroupSockAddrAttachType, links::FdLink,
    },
};
use netlab_common::{
    Direction, names,
    trace::{DEFAULT_RING_BYTES, Filter},
};

use super::maps;
use crate::{
    netns,
    pins::Pins,
    sys,
    topology::{Family, Iface, Place, Topology},
};

/// The object `cargo xtask` built, or an empty placeholder (see build.rs).
/// Public so that tests can load the same object into a private bpffs.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netlab-ebpf.o"));

/// Overrides the trace ring buffer size (bytes) when `up` loads the object.
pub const RING_BYTES_ENV: &str = "NETLAB_TRACE_RING_BYTES";

/// The TCX hooks netlab reports on, with their names.
pub const HOOKS: [(Direction, TcAttachType, &str); 2] = [
    (Direction::Ingress, TcAttachType::Ingress, "ingress"),
    (Direction::Egress, TcAttachType::Egress, "egress"),
];

/// Every program `up` loads and pins (once per lab): all but the trace ones.
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

/// The tracepoint programs of `netlab trace`: (program, category, event).
const TRACEPOINTS: [(&str, &str, &str); 2] = [
    (names::TRACE_KFREE_SKB, "skb", "kfree_skb"),
    (names::TRACE_CONSUME_SKB, "skb", "consume_skb"),
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
/// The iptables datapath gets the counters everywhere.
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
        if end.place == Place::Host && topo.datapath.family() == Family::Ebpf {
            add(names::NAT_INGRESS, TcAttachType::Ingress);
            add(names::NAT_EGRESS, TcAttachType::Egress);
        } else {
            add(names::COUNT_INGRESS, TcAttachType::Ingress);
            add(names::COUNT_EGRESS, TcAttachType::Egress);
        }
    }
    plan
}

/// The trace ring buffer size for the next load: [`RING_BYTES_ENV`] or the default.
pub fn ring_bytes() -> Result<u32> {
    let Some(value) = std::env::var_os(RING_BYTES_ENV) else {
        return Ok(DEFAULT_RING_BYTES);
    };
    let value = value.to_string_lossy();
    // SAFETY: sysconf has no preconditions.
    let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    match value.parse::<u32>() {
        Ok(bytes) if bytes.is_power_of_two() && bytes >= page => Ok(bytes),
        _ => bail!(
            "{RING_BYTES_ENV}={value}: the ring buffer size must be a power of two of at least \
             the page size ({page} bytes)"
        ),
    }
}

/// Loads the object once per lab (later `up`s reuse the pinned programs and
/// maps). Needs no interface, so `up` runs it while it builds the links.
pub fn load(pins: &Pins, conntrack_size: u32) -> Result<()> {
    sys::ensure_bpffs()?;
    pins.create()?;
    ensure_loaded(pins, conntrack_size)
}

/// Makes every attachment of `plan` that has no pinned link yet (after
/// [`load`]).
pub fn attach(pins: &Pins, plan: &[Attachment]) -> Result<()> {
    let pending: Vec<&Attachment> = plan
        .iter()
        .filter(|a| !pins.tc_link(&a.iface, a.program).exists())
        .collect();
    // Every TCX attach waits for an RCU grace period. The kernel serialises
    // most of that work, so several workers only help a little (measured:
    // 150 attachments took 4.3 s instead of 5.0 s).
    let workers = pending.len().div_ceil(ATTACH_WORKERS).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = pending
            .chunks(workers)
            .map(|chunk| s.spawn(move || attach_chunk(pins, chunk)))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("an attach worker panicked"))?
        })
    })?;
    if plan.iter().any(|a| a.program == names::NAT_INGRESS) {
        attach_sockets(pins)?;
    }
    Ok(())
}

/// How many threads attach TC programs at once.
const ATTACH_WORKERS: usize = 16;

/// Attaches and pins one share of the plan. The worker opens its own handles
/// on the pinned programs and enters each interface's namespace in turn
/// (ifindex lookup is per namespace); pins resolve in the mount namespace,
/// which `setns(CLONE_NEWNET)` leaves alone.
fn attach_chunk(pins: &Pins, chunk: &[&Attachment]) -> Result<()> {
    let mut programs: BTreeMap<&str, SchedClassifier> = BTreeMap::new();
    for Attachment {
        iface,
        program: name,
        attach_type,
    } in chunk.iter().copied()
    {
        if !programs.contains_key(name) {
            let pin = pins.program(name);
            let program = SchedClassifier::from_pin(&pin)
                .with_context(|| format!("opening pinned program {}", pin.display()))?;
            programs.insert(name, program);
        }
        let Some(program) = programs.get_mut(name) else {
            bail!("TC program {name} was not loaded");
        };
        let pin = pins.tc_link(iface, name);
        Pins::create_parent(&pin)?;
        netns::enter(&iface.place)?;
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
fn attach_sockets(pins: &Pins) -> Result<()> {
    let Some(root) = sys::cgroup2_root() else {
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
        let pin = pins.cgroup_link(name);
        if pin.exists() {
            continue;
        }
        let prog_pin = pins.program(name);
        let mut program = CgroupSockAddr::from_pin(&prog_pin, attach_type)
            .with_context(|| format!("opening pinned program {}", prog_pin.display()))?;
        Pins::create_parent(&pin)?;
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

/// Loads the object and pins every program that is not pinned yet. Maps
/// are pinned by name, so a later load reuses them and counters survive.
fn ensure_loaded(pins: &Pins, conntrack_size: u32) -> Result<()> {
    if PROGRAMS.iter().all(|(name, _)| pins.program(name).exists()) {
        return Ok(());
    }
    if EBPF_OBJECT.is_empty() {
        bail!(
            "this netlab binary was built without its eBPF object (plain `cargo build`); \
             build and run it with `cargo xtask run -- ARGS`"
        );
    }
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pins.maps())
        .map_max_entries(names::CONNTRACK, conntrack_size)
        .map_max_entries(names::CONNTRACK_NEW, conntrack_size)
        .map_max_entries(names::TRACE_EVENTS, ring_bytes()?)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    let wanted: BTreeMap<&str, Kind> = PROGRAMS
        .into_iter()
        .filter(|(name, _)| !pins.program(name).exists())
        .collect();
    if let Some(name) = wanted.keys().find(|name| ebpf.program(name).is_none()) {
        bail!("the eBPF object has no program {name}");
    }
    // One thread per program: the verifier runs on the loading thread, so
    // the two NAT programs (most of the verifier time) are checked at once
    // on two CPUs.
    let pending: Vec<(&str, Kind, &mut aya::programs::Program)> = ebpf
        .programs_mut()
        .filter_map(|(name, program)| {
            let (&name, &kind) = wanted.get_key_value(name)?;
            Some((name, kind, program))
        })
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = pending
            .into_iter()
            .map(|(name, kind, program)| s.spawn(move || load_and_pin(pins, name, kind, program)))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a program loader panicked"))?
        })
    })?;
    // The pins keep the programs loaded once `ebpf` is dropped.
    Ok(())
}

/// Loads (verifies) one program of [`PROGRAMS`] and pins it.
fn load_and_pin(
    pins: &Pins,
    name: &str,
    kind: Kind,
    program: &mut aya::programs::Program,
) -> Result<()> {
    let pin = pins.program(name);
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
    Ok(())
}

/// What `netlab trace` loaded: `trace_hop` in the `TRACE_PROGS` slot and
/// the fate probes, attached. Nothing of it is pinned: dropping the session
/// empties the slot and closes the programs and links, and after a crash
/// the kernel closes them with the process; only the slot keeps
/// `trace_hop` alive then, until [`stop_trace`] (the next `netlab trace`,
/// `netlab trace --off`, `down`) empties it.
pub struct TraceSession {
    slots: ProgramArray<MapData>,
    /// Owns the programs and their links.
    _ebpf: Ebpf,
    /// How long the verifier took on `trace_hop` (`BPF_PROG_LOAD`).
    pub hop_load: Duration,
    /// Why kernel fates (drops, deliveries) will not show, if they will not.
    pub fates_missing: Option<String>,
}

impl Drop for TraceSession {
    fn drop(&mut self) {
        if let Err(err) = self.slots.clear_index(&0) {
            log::warn!("emptying {}: {err}", names::TRACE_PROGS);
        }
    }
}

/// Loads `trace_hop` from the object with `filter` built in (its maps are
/// the lab's pinned ones; see the eBPF crate's `trace` module for why the
/// filter is a constant), puts it in the slot the TC programs tail-call,
/// and loads and attaches the fate probes. The probes are an extra: when they cannot be attached,
/// [`TraceSession::fates_missing`] says why and tracing goes on.
pub fn start_trace(pins: &Pins, filter: &Filter) -> Result<TraceSession> {
    if EBPF_OBJECT.is_empty() {
        bail!(
            "this netlab binary was built without its eBPF object (plain `cargo build`); \
             build and run it with `cargo xtask run -- ARGS`"
        );
    }
    let mut slots = maps::trace_progs(pins)?;
    // Only pinned maps are shared with the running programs; the loader
    // creates the others (per-CPU scratch) for this load alone.
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pins.maps())
        .override_global(names::TRACE_FILTER, filter, true)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    let Some(program) = ebpf.program_mut(names::TRACE_HOP) else {
        bail!("the eBPF object has no program {}", names::TRACE_HOP);
    };
    let program: &mut SchedClassifier = program.try_into()?;
    let started = Instant::now();
    program
        .load()
        .with_context(|| format!("loading program {} (verifier)", names::TRACE_HOP))?;
    let hop_load = started.elapsed();
    slots
        .set(0, program.fd()?, 0)
        .with_context(|| format!("installing {} in {}", names::TRACE_HOP, names::TRACE_PROGS))?;
    let mut session = TraceSession {
        slots,
        _ebpf: ebpf,
        hop_load,
        fates_missing: None,
    };
    if let Err(err) = attach_fates(&mut session._ebpf) {
        session.fates_missing = Some(format!("{err:#}"));
    }
    Ok(session)
}

fn attach_fates(ebpf: &mut Ebpf) -> Result<()> {
    sys::ensure_tracefs()?;
    for (name, category, event) in TRACEPOINTS {
        let Some(program) = ebpf.program_mut(name) else {
            bail!("the eBPF object has no program {name}");
        };
        let program: &mut TracePoint = program.try_into()?;
        program
            .load()
            .with_context(|| format!("loading program {name} (verifier)"))?;
        program
            .attach(category, event)
            .with_context(|| format!("attaching {name} to {category}:{event}"))?;
    }
    Ok(())
}

/// Empties the `trace_hop` slot a crashed `netlab trace` left filled (no
/// error when the lab has no such map).
pub fn stop_trace(pins: &Pins) -> Result<()> {
    if !pins.map(names::TRACE_PROGS).exists() {
        return Ok(());
    }
    let mut slots = maps::trace_progs(pins)?;
    match slots.clear_index(&0) {
        Ok(()) => Ok(()),
        // Already empty.
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(err) => Err(err).with_context(|| format!("emptying {}", names::TRACE_PROGS)),
    }
}

/// Whether `trace_hop` sits in the slot (a `netlab trace` runs, or one crashed).
pub fn trace_installed(pins: &Pins) -> bool {
    maps::trace_progs(pins)
        .ok()
        .is_some_and(|slots| slots.indices().any(|i| matches!(i, Ok(0))))
}

/// Names of the programs attached with TCX to `iface` at `attach_type`.
pub fn attached(iface: &Iface, attach_type: TcAttachType) -> Result<Vec<String>> {
    netns::on_thread(&iface.place, || -> Result<Vec<String>> {
        let (_, infos) = SchedClassifier::query_tcx(&iface.name, attach_type)?;
        Ok(infos
            .iter()
            .map(|i| i.name_as_str().unwrap_or("?").to_owned())
            .collect())
    })?
}
