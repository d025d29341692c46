//! Loads netlab's eBPF object, attaches its programs, and pins the programs
//! and maps (see [`Pins`] for the layout) so the lab keeps working after
//! `up` exits.
//!
//! The loader owns every program of the object. At `up`, for the eBPF
//! datapaths: the NAT programs, run as `tc` filters on the TC hooks of the
//! host side of every veth (lab ends and the uplink), and the cgroup
//! sock_addr programs on the cgroup2 root, and with `entry = "xdp"` the
//! XDP entry on the uplink's host end. The iptables datapath gets the
//! maps only. Only while `netlab trace` runs ([`TraceSession`]):
//! `trace_hop` (tail-called by the NAT programs through the `TRACE_PROGS`
//! slot), `trace_ingress`/`trace_egress` on every veth end that carries no
//! NAT program, and the fate tracepoints. `up` never pays the verifier for
//! them, and a lab nobody traces carries none of them.

use std::{
    collections::BTreeMap,
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, ProgramArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TracePoint, Xdp,
        cgroup_sock_addr::CgroupSockAddrAttachType, links::FdLink,
    },
};
use aya_obj::programs::XdpAttachType;
use netlab_common::{
    names,
    trace::{DEFAULT_RING_BYTES, Filter},
};

use super::{maps, object};
use crate::{
    netlink::{self, TcHook},
    netns,
    pins::Pins,
    sys::{
        self,
        ethtool::{self, Offload},
    },
    topology::{Datapath, Entry, Family, Iface, Place, Topology},
};

/// Why the loader will not load a lab's datapath.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "this netlab binary was built without its eBPF object (plain `cargo build`); build and \
         run it with `cargo xtask run -- ARGS`"
    )]
    NoObject,
    #[error(
        "lab `{lab}` was brought up by an older netlab, whose programs and maps differ from this \
         one's ({map}: {found}, not {expected}); run `netlab down` (with this netlab) first, then \
         `netlab up`"
    )]
    OlderNetlab {
        lab: String,
        map: String,
        /// The pinned map's layout, and this netlab's (see [`Layout`]).
        found: Layout,
        expected: Layout,
    },
}

/// A pinned map's layout as this build's programs assume it: key and value
/// sizes, and for maps indexed by a number that grew (the counters) the
/// entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub key: usize,
    pub value: usize,
    pub entries: Option<u32>,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-byte keys and {}-byte values", self.key, self.value)?;
        if let Some(entries) = self.entries {
            write!(f, ", {entries} entries")?;
        }
        Ok(())
    }
}

/// The object `cargo xtask` built, or an empty placeholder (see build.rs).
/// Public so that tests can load the same object into a private bpffs.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netlab-ebpf.o"));

/// Overrides the trace ring buffer size (bytes) of a `netlab trace`.
pub const RING_BYTES_ENV: &str = "NETLAB_TRACE_RING_BYTES";

/// The `tc` filter priority of the datapath's programs on a hook.
pub const DATAPATH_PRIORITY: u16 = 0x4e4c;
/// The `tc` filter priority of a trace session's `trace_ingress` and
/// `trace_egress` (never on a hook that has a datapath program).
pub const WATCH_PRIORITY: u16 = 0x4e4d;

/// An aya loader in the making, on a thread of its own.
///
/// `EbpfLoader::new` reads and parses the kernel's BTF
/// (`/sys/kernel/btf/vmlinux`, 5.5 MB: 16 ms on the development machine,
/// more beside `up`'s other work) for CO-RE relocations, and aya 0.14 offers
/// no way to skip that (aya-rs/aya#1172). netlab's object has no CO-RE
/// relocation (checked here with [`object::core_relocation_bytes`], and by
/// a test), so the parse is wasted: the thread that makes the loader hides
/// the kernel's BTF from itself first
/// ([`sys::hide_kernel_btf_from_this_thread`]), and aya finds none. An
/// object with CO-RE relocations, or a refusal to hide, leaves aya to parse
/// it; the thread still runs beside the command's checks and netlink work.
#[must_use = "the loader is made for `finish`"]
pub struct EarlyLoader(Option<JoinHandle<EbpfLoader<'static>>>);

impl EarlyLoader {
    /// Starts making the loader. Dropping the result unused leaves the
    /// thread to finish (or to end with the process).
    pub fn start() -> EarlyLoader {
        let thread = std::thread::Builder::new()
            .name("loader".into())
            .spawn(loader_without_kernel_btf);
        // Without a thread, `finish` makes the loader itself.
        EarlyLoader(thread.ok())
    }

    /// The loader, once the thread has made it.
    fn finish(self) -> Result<EbpfLoader<'static>> {
        match self.0 {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("making the eBPF loader panicked")),
            None => Ok(EbpfLoader::new()),
        }
    }
}

/// An aya loader made, when the object needs no CO-RE relocation, with the
/// kernel's BTF hidden from this thread (see [`EarlyLoader`]).
fn loader_without_kernel_btf() -> EbpfLoader<'static> {
    match object::core_relocation_bytes(EBPF_OBJECT) {
        Some(0) => {
            if let Err(err) = sys::hide_kernel_btf_from_this_thread() {
                log::debug!("aya parses the kernel's BTF: hiding it failed: {err}");
            }
        }
        other => log::debug!("aya parses the kernel's BTF: CO-RE relocation bytes {other:?}"),
    }
    EbpfLoader::new()
}

/// The programs `up` loads and pins for the eBPF datapaths (once per lab).
const DATAPATH_PROGRAMS: [(&str, Kind); 14] = [
    (names::NAT_INGRESS, Kind::Tc),
    (names::NAT_EGRESS, Kind::Tc),
    (names::NAT_INGRESS_FULL, Kind::Tc),
    (names::NAT_EGRESS_FULL, Kind::Tc),
    (names::NAT6_INGRESS, Kind::Tc),
    (names::NAT6_EGRESS, Kind::Tc),
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
    (
        names::SOCK_CONNECT6,
        Kind::Sock(CgroupSockAddrAttachType::Connect6),
    ),
    (
        names::SOCK_SENDMSG6,
        Kind::Sock(CgroupSockAddrAttachType::UDPSendMsg6),
    ),
    (
        names::SOCK_RECVMSG6,
        Kind::Sock(CgroupSockAddrAttachType::UDPRecvMsg6),
    ),
    (
        names::SOCK_GETPEERNAME6,
        Kind::Sock(CgroupSockAddrAttachType::GetPeerName6),
    ),
];

/// The tracepoint programs of `netlab trace`: (program, category, event).
const TRACEPOINTS: [(&str, &str, &str); 2] = [
    (names::TRACE_KFREE_SKB, "skb", "kfree_skb"),
    (names::TRACE_CONSUME_SKB, "skb", "consume_skb"),
];

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A TC classifier, run as a `tc` filter on interfaces' hooks.
    Tc,
    /// The XDP entry, run in driver mode on the uplink's host end.
    Xdp,
    /// A cgroup sock_addr program, attached to the cgroup2 root.
    Sock(CgroupSockAddrAttachType),
}

/// One program on one hook of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub iface: Iface,
    pub program: &'static str,
    pub hook: TcHook,
}

/// Where the datapath's programs run: the NAT programs on the host side of
/// every veth (lab ends and the uplink) for the eBPF datapaths; nothing for
/// the iptables one.
pub fn plan(topo: &Topology) -> Vec<Attachment> {
    if topo.datapath.family() != Family::Ebpf {
        return Vec::new();
    }
    let host_ends = lab_ends(topo).filter(|iface| iface.place == Place::Host);
    on_both_hooks(host_ends, names::NAT_INGRESS, names::NAT_EGRESS)
}

/// Where a trace session watches: both hooks of every veth end that
/// [`plan`] gives no program (the namespace sides; every end of an
/// iptables lab), where the NAT programs cannot report the hop, and of
/// the overlay's device (a packet about to be encapsulated, or just
/// decapsulated, shown as its inner packet).
pub fn watch_plan(topo: &Topology) -> Vec<Attachment> {
    let datapath = plan(topo);
    let overlay = topo.vxlan().map(|v| Iface {
        place: Place::Host,
        name: v.name.clone(),
    });
    let bare = lab_ends(topo)
        .filter(|iface| !datapath.iter().any(|a| &a.iface == iface))
        .chain(overlay);
    on_both_hooks(bare, names::TRACE_INGRESS, names::TRACE_EGRESS)
}

/// Every veth end of the lab.
fn lab_ends(topo: &Topology) -> impl Iterator<Item = Iface> + '_ {
    topo.veth_ends().map(|end| Iface {
        place: end.place.clone(),
        name: end.name.clone(),
    })
}

/// `ingress` on the ingress hook and `egress` on the egress hook of each of
/// `ifaces`.
fn on_both_hooks(
    ifaces: impl Iterator<Item = Iface>,
    ingress: &'static str,
    egress: &'static str,
) -> Vec<Attachment> {
    ifaces
        .flat_map(|iface| {
            [(ingress, TcHook::Ingress), (egress, TcHook::Egress)].map(|(program, hook)| {
                Attachment {
                    iface: iface.clone(),
                    program,
                    hook,
                }
            })
        })
        .collect()
}

/// The trace ring buffer size of a session: [`RING_BYTES_ENV`] or the default.
pub fn ring_bytes() -> Result<u32> {
    let Some(value) = std::env::var_os(RING_BYTES_ENV) else {
        return Ok(DEFAULT_RING_BYTES);
    };
    let value = value.to_string_lossy();
    let page = page_size();
    match value.parse::<u32>() {
        Ok(bytes) if bytes.is_power_of_two() && bytes >= page => Ok(bytes),
        _ => bail!(
            "{RING_BYTES_ENV}={value}: the ring buffer size must be a power of two of at least \
             the page size ({page} bytes)"
        ),
    }
}

/// The smallest ring buffer.
fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// The pinned maps whose layout both sides of this netlab assume, as this
/// build lays them out. A lab whose pin has another layout was brought up
/// by another netlab.
fn layouts() -> [(&'static str, Layout); 15] {
    use core::mem::size_of;
    use netlab_common::{
        nat::*,
        trace::{TraceConfig, TraceScratch},
    };
    let sized = |key: usize, value: usize| Layout {
        key,
        value,
        entries: None,
    };
    [
        (names::TRACE_CONFIG, sized(4, size_of::<TraceConfig>())),
        (names::TRACE_SCRATCH, sized(4, size_of::<TraceScratch>())),
        (names::NAT_CONFIG, sized(4, size_of::<NatConfig>())),
        (names::IFACE_CONFIG, sized(4, size_of::<IfaceConfig>())),
        (
            names::NAT_STATS,
            Layout {
                entries: Some(STAT_COUNT),
                ..sized(4, size_of::<u64>())
            },
        ),
        (
            names::CONNTRACK,
            sized(size_of::<FlowKey>(), size_of::<CtEntry>()),
        ),
        (
            names::CONNTRACK_NEW,
            sized(size_of::<FlowKey>(), size_of::<CtEntry>()),
        ),
        (
            names::PUBLISHED,
            sized(size_of::<PublishKey>(), size_of::<Backend>()),
        ),
        (
            names::CONNTRACK6,
            sized(size_of::<FlowKey6>(), size_of::<CtEntry6>()),
        ),
        (
            names::CONNTRACK6_NEW,
            sized(size_of::<FlowKey6>(), size_of::<CtEntry6>()),
        ),
        (
            names::PUBLISHED6,
            sized(size_of::<PublishKey>(), size_of::<Backend6>()),
        ),
        (
            names::NAT_FULL,
            Layout {
                entries: Some(4),
                ..sized(4, 4)
            },
        ),
        (names::ENDPOINTS, sized(4, size_of::<Endpoint>())),
        (
            names::SOCK_NAT,
            sized(size_of::<SockKey>(), size_of::<SockNat>()),
        ),
        (
            names::SOCK_NAT6,
            sized(size_of::<SockKey6>(), size_of::<SockNat6>()),
        ),
    ]
}

/// Refuses the pins of a lab an older netlab brought up: its programs are
/// other programs and its maps have other layouts, and a second datapath
/// beside them would translate every packet twice. A lab whose `up` was
/// killed half way has some of this netlab's maps pinned, not all: that is
/// no refusal, the next `up` makes the rest.
pub fn check_pins(pins: &Pins) -> Result<()> {
    for (name, expected) in layouts() {
        let pin = pins.map(name);
        if !pin.exists() {
            continue;
        }
        let info = MapData::from_pin(&pin)
            .and_then(|map| map.info())
            .with_context(|| format!("reading {}", pin.display()))?;
        let found = Layout {
            key: info.key_size() as usize,
            value: info.value_size() as usize,
            entries: expected.entries.map(|_| info.max_entries()),
        };
        if found != expected {
            return Err(Refused::OlderNetlab {
                lab: pins.lab().to_owned(),
                map: name.to_string(),
                found,
                expected,
            }
            .into());
        }
    }
    Ok(())
}

/// Loads the object once per lab: its maps, and for the eBPF datapaths its
/// programs (later `up`s reuse the pinned ones). Needs no interface, so
/// `up` runs it while it builds the links.
pub fn load(
    pins: &Pins,
    sizes: &Sizes,
    family: Family,
    entry: Entry,
    early: EarlyLoader,
) -> Result<()> {
    sys::ensure_bpffs()?;
    pins.create()?;
    let mut programs: Vec<(&str, Kind)> = match family {
        Family::Ebpf => DATAPATH_PROGRAMS.to_vec(),
        // Tracing needs the maps; nothing of the datapath runs in the kernel.
        Family::Iptables => Vec::new(),
    };
    if family == Family::Ebpf && entry == Entry::Xdp {
        programs.push((names::XDP_UPLINK, Kind::Xdp));
    }
    ensure_loaded(pins, sizes, &programs, early)
}

/// The sizes of the maps a lab's topology decides.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Flows each IPv4 conntrack table holds (`nat.conntrack_size`).
    pub conntrack: u32,
    /// Whether the lab has IPv6 subnets. Without, the maps only NAT66 and
    /// the IPv6 socket hooks use are made with one entry: they are
    /// preallocated, and at full size an IPv4 lab would pay for them for
    /// nothing (bpftool's memlock: the two conntrack tables 15.2 MB each
    /// at 65,536 flows, `SOCK_NAT6` 2.0 MB, `FRAGMENTS6` 0.9 MB).
    pub ipv6: bool,
    /// Rows of per-interface counters (`config::iface_slots`).
    pub iface_slots: u32,
}

impl Sizes {
    /// Flows each IPv6 conntrack table holds: `conntrack`, or 1 without
    /// IPv6 subnets.
    pub fn conntrack6(&self) -> u32 {
        if self.ipv6 { self.conntrack } else { 1 }
    }
}

/// Runs every program of `plan` where it says (after [`load`]): one netlink
/// connection per place, the filters replaced in place where they exist, so
/// a second `up` changes nothing. Then the socket-level programs, when the
/// plan has the NAT.
pub fn attach(pins: &Pins, plan: &[Attachment]) -> Result<()> {
    let programs = pinned_programs(pins, plan)?;
    let programs = programs.iter().map(|(name, p)| (*name, p)).collect();
    set_tc_programs(plan, &programs, DATAPATH_PRIORITY)?;
    if plan.iter().any(|a| a.program == names::NAT_INGRESS) {
        attach_sockets(pins)?;
    }
    Ok(())
}

/// Runs the NAT programs on a host-side interface made after `up` (a pod's
/// host end), as [`attach`] does for the topology's.
pub fn attach_host_end(pins: &Pins, name: &str) -> Result<()> {
    let iface = Iface {
        place: Place::Host,
        name: name.to_owned(),
    };
    attach(
        pins,
        &on_both_hooks(
            std::iter::once(iface),
            names::NAT_INGRESS,
            names::NAT_EGRESS,
        ),
    )
}

/// Whether both NAT programs run on host-side interface `index`.
pub fn host_end_attached(index: u32) -> Result<bool> {
    netlink::run_in(&Place::Host, |nl| async move {
        for (hook, program) in [
            (TcHook::Ingress, names::NAT_INGRESS),
            (TcHook::Egress, names::NAT_EGRESS),
        ] {
            let programs = nl.tc_programs(index, hook).await.unwrap_or_default();
            if !programs
                .iter()
                .any(|p| p.priority == DATAPATH_PRIORITY && p.name.starts_with(program))
            {
                return Ok(false);
            }
        }
        Ok(true)
    })
}

/// Puts the world's traffic through the entry `topo` asks for on its
/// uplink (after [`attach`]): for `xdp`, the XDP entry in driver mode on
/// the uplink's host end, transmit checksum offload off on its peer (the
/// program updates L4 checksums as complete ones), and for `redirect` GRO
/// on every namespace end (the NAPI an `XDP_REDIRECT` into a veth needs).
/// For `tc`, an XDP entry left by an earlier `up` goes, and the offloads
/// it set are restored.
pub fn set_entry(pins: &Pins, topo: &Topology) -> Result<()> {
    let Some(uplink) = topo.uplink_end() else {
        return Ok(());
    };
    let host = uplink.place.clone();
    let peer = topo.uplink_peer();
    let xdp = topo.nat.entry == Entry::Xdp && topo.datapath.family() == Family::Ebpf;
    let fd = if xdp {
        let pin = pins.program(names::XDP_UPLINK);
        let program = Xdp::from_pin(&pin, XdpAttachType::Interface)
            .with_context(|| format!("opening pinned program {}", pin.display()))?;
        Some(program)
    } else {
        None
    };
    let name = uplink.name.clone();
    let had_xdp = netlink::run_in(&host, |nl| async move {
        let link = nl.require_link(&name).await?;
        let raw = fd
            .as_ref()
            .map(|p| p.fd().map(|fd| fd.as_fd().as_raw_fd()))
            .transpose()?;
        let had = link.xdp_prog.is_some();
        if raw.is_some() || had {
            nl.set_xdp(link.index, raw).await?;
        }
        Ok(had)
    })?;
    if !xdp && !had_xdp {
        return Ok(());
    }
    if let Some(peer) = peer {
        let name = peer.name.clone();
        netns::on_thread(&peer.place, move || {
            ethtool::set(&name, Offload::TxChecksum, !xdp)
                .with_context(|| format!("transmit checksum offload on {name}"))
        })??;
    }
    if topo.datapath == Datapath::Redirect || !xdp {
        for end in topo.veth_ends().filter(|e| e.place != Place::Host) {
            let name = end.name.clone();
            netns::on_thread(&end.place, move || {
                ethtool::set(&name, Offload::Gro, xdp).with_context(|| format!("GRO on {name}"))
            })??;
        }
    }
    Ok(())
}

/// The pinned programs `plan` runs, by name.
fn pinned_programs(
    pins: &Pins,
    plan: &[Attachment],
) -> Result<BTreeMap<&'static str, SchedClassifier>> {
    let mut programs = BTreeMap::new();
    for attachment in plan {
        if programs.contains_key(attachment.program) {
            continue;
        }
        let pin = pins.program(attachment.program);
        let program = SchedClassifier::from_pin(&pin)
            .with_context(|| format!("opening pinned program {}", pin.display()))?;
        programs.insert(attachment.program, program);
    }
    Ok(programs)
}

/// How many netlink requests an attach keeps in flight on one socket.
const PIPELINE: usize = 64;

/// Makes every attachment of `plan` a `tc` filter of `priority`, running
/// the program of that name in `programs`.
fn set_tc_programs(
    plan: &[Attachment],
    programs: &BTreeMap<&'static str, &SchedClassifier>,
    priority: u16,
) -> Result<()> {
    for (place, attachments) in by_place(plan) {
        netlink::run_in(place, |nl| async move {
            let nl = &nl;
            let indexes: BTreeMap<String, u32> = nl
                .links()
                .await?
                .into_iter()
                .map(|l| (l.name, l.index))
                .collect();
            let index_of = |a: &Attachment| {
                indexes
                    .get(&a.iface.name)
                    .copied()
                    .with_context(|| format!("interface {} is missing", a.iface))
            };
            let mut ifaces: Vec<u32> = attachments
                .iter()
                .map(|a| index_of(a))
                .collect::<Result<_>>()?;
            ifaces.dedup();
            for chunk in ifaces.chunks(PIPELINE) {
                futures::future::try_join_all(chunk.iter().map(|&index| nl.add_clsact(index)))
                    .await?;
            }
            for chunk in attachments.chunks(PIPELINE) {
                futures::future::try_join_all(chunk.iter().map(|a| async move {
                    let Some(program) = programs.get(a.program) else {
                        bail!("program {} was not loaded", a.program);
                    };
                    let fd = program.fd()?;
                    nl.set_tc_program(index_of(a)?, a.hook, priority, fd.as_fd(), a.program)
                        .await
                }))
                .await?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// `plan`'s attachments by the place their interface is in (one netlink
/// connection each).
fn by_place(plan: &[Attachment]) -> BTreeMap<&Place, Vec<&Attachment>> {
    let mut places: BTreeMap<&Place, Vec<&Attachment>> = BTreeMap::new();
    for attachment in plan {
        places
            .entry(&attachment.iface.place)
            .or_default()
            .push(attachment);
    }
    places
}

/// Removes the `tc` filters of `priority` running `plan`'s programs from
/// every hook of `plan` that still exists (gone interfaces and namespaces
/// are fine). Only filters the hook lists under that priority and name are
/// removed, so a failure to remove one is an error.
fn remove_tc_programs(plan: &[Attachment], priority: u16) -> Result<()> {
    for (place, attachments) in by_place(plan) {
        if !netlink::place_exists(place) {
            continue;
        }
        netlink::run_in(place, |nl| async move {
            let nl = &nl;
            let indexes: BTreeMap<String, u32> = nl
                .links()
                .await?
                .into_iter()
                .map(|l| (l.name, l.index))
                .collect();
            for chunk in attachments.chunks(PIPELINE) {
                futures::future::try_join_all(chunk.iter().filter_map(|a| {
                    let index = *indexes.get(&a.iface.name)?;
                    Some(async move {
                        let ours = nl
                            .tc_programs(index, a.hook)
                            .await?
                            .into_iter()
                            .any(|p| p.priority == priority && p.name == a.program);
                        if ours {
                            nl.del_tc_program(index, a.hook, priority).await?;
                        }
                        anyhow::Ok(())
                    })
                }))
                .await?;
            }
            Ok(())
        })?;
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
    for (name, kind) in DATAPATH_PROGRAMS {
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

/// Loads the object (maps are pinned by name, so a later load reuses them
/// and NAT's state and counters survive) and pins every program of
/// `programs` that is not pinned yet.
fn ensure_loaded(
    pins: &Pins,
    sizes: &Sizes,
    programs: &[(&str, Kind)],
    early: EarlyLoader,
) -> Result<()> {
    // Every lab has the trace maps; their pins say the object's maps exist.
    let maps_made = pins.map(names::TRACE_CONFIG).exists();
    if maps_made && programs.iter().all(|(name, _)| pins.program(name).exists()) {
        // An `up` killed before it filled the slots left them empty.
        if programs.iter().any(|(name, _)| *name == names::NAT_INGRESS) {
            fill_full_paths(pins)?;
        }
        return Ok(());
    }
    if EBPF_OBJECT.is_empty() {
        return Err(Refused::NoObject.into());
    }
    let mut loader = early.finish()?;
    if !sizes.ipv6 {
        for map in [names::SOCK_NAT6, names::FRAGMENTS6] {
            loader.map_max_entries(map, 1);
        }
    }
    let conntrack6 = sizes.conntrack6();
    let mut ebpf = loader
        .default_map_pin_directory(pins.maps())
        .map_max_entries(names::CONNTRACK, sizes.conntrack)
        .map_max_entries(names::CONNTRACK_NEW, sizes.conntrack)
        .map_max_entries(names::CONNTRACK6, conntrack6)
        .map_max_entries(names::CONNTRACK6_NEW, conntrack6)
        .map_max_entries(
            names::REDIRECT_STATS,
            sizes.iface_slots.max(1) * netlab_common::nat::REDIRECT_REASON_SLOTS,
        )
        // Only a trace session's programs use these, and each session
        // makes its own (start_trace): here they are placeholders, made at
        // their smallest and dropped with `ebpf`.
        .map_max_entries(names::TRACE_EVENTS, page_size())
        .map_max_entries(names::TRACE_JOURNEYS, 1)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    let wanted: BTreeMap<&str, Kind> = programs
        .iter()
        .copied()
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
    // The pins keep the programs (and maps) once `ebpf` is dropped.
    drop(ebpf);
    if programs.iter().any(|(name, _)| *name == names::NAT_INGRESS) {
        fill_full_paths(pins)?;
    }
    Ok(())
}

/// Puts the NAT programs' full paths in the slots their fast paths
/// tail-call (`NAT_FULL`), before any interface runs them: an empty slot
/// drops the packets the fast path leaves.
fn fill_full_paths(pins: &Pins) -> Result<()> {
    let mut slots = maps::nat_full(pins)?;
    for (slot, name) in [
        (names::NAT_FULL_INGRESS, names::NAT_INGRESS_FULL),
        (names::NAT_FULL_EGRESS, names::NAT_EGRESS_FULL),
        (names::NAT6_FULL_INGRESS, names::NAT6_INGRESS),
        (names::NAT6_FULL_EGRESS, names::NAT6_EGRESS),
    ] {
        let pin = pins.program(name);
        let program = SchedClassifier::from_pin(&pin)
            .with_context(|| format!("opening pinned program {}", pin.display()))?;
        slots
            .set(slot, program.fd()?, 0)
            .with_context(|| format!("installing {name} in {}", names::NAT_FULL))?;
    }
    Ok(())
}

/// Loads (verifies) one program of [`DATAPATH_PROGRAMS`] and pins it.
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
        Kind::Xdp => {
            let program: &mut Xdp = program.try_into()?;
            program.load().map(|()| program.pin(&pin))
        }
    };
    loaded
        .with_context(|| format!("loading program {name} (verifier)"))?
        .with_context(|| format!("pinning {}", pin.display()))?;
    Ok(())
}

/// What `netlab trace` loaded: `trace_hop` in the `TRACE_PROGS` slot,
/// `trace_ingress`/`trace_egress` on the hooks of [`watch_plan`], and the
/// fate probes, attached. Nothing of it is pinned: dropping the session
/// empties the slot, removes the watching filters and closes the programs
/// and links. After a crash the kernel closes the tracepoints with the
/// process; the slot and the filters keep their programs alive until
/// [`stop_trace`] (the next `netlab trace`, `netlab trace --off`) or
/// `down`.
pub struct TraceSession {
    slots: ProgramArray<MapData>,
    /// The session's ring buffer, until [`TraceSession::take_events`].
    events: Option<RingBuf<MapData>>,
    watched: Vec<Attachment>,
    /// Owns the programs and their links.
    _ebpf: Ebpf,
    /// How long the verifier took on `trace_hop` (`BPF_PROG_LOAD`).
    pub hop_load: Duration,
    /// Why kernel fates (drops, deliveries) will not show, if they will not.
    pub fates_missing: Option<String>,
}

impl TraceSession {
    /// The ring buffer the session's programs write (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        self.events
            .take()
            .context("the trace session's ring buffer was taken already")
    }
}

impl Drop for TraceSession {
    fn drop(&mut self) {
        if let Err(err) = self.slots.clear_index(&0) {
            log::warn!("emptying {}: {err}", names::TRACE_PROGS);
        }
        if let Err(err) = remove_tc_programs(&self.watched, WATCH_PRIORITY) {
            log::warn!("removing the trace programs: {err:#}; run `netlab trace --off`");
        }
    }
}

/// Loads `trace_hop` and the watching programs from the object with
/// `filter` built in (their maps are the lab's pinned ones, but for the
/// session's own ring buffer of `ring_bytes` and journeys; see the eBPF
/// crate's `trace` module for why the filter is a constant), puts
/// `trace_hop` in the slot the NAT programs tail-call, runs the watching
/// programs on `watch` (from [`watch_plan`]), and loads and attaches the
/// fate probes. The probes are an extra: when they cannot be attached,
/// [`TraceSession::fates_missing`] says why and tracing goes on.
pub fn start_trace(
    pins: &Pins,
    filter: &Filter,
    watch: &[Attachment],
    ring_bytes: u32,
    early: EarlyLoader,
) -> Result<TraceSession> {
    if EBPF_OBJECT.is_empty() {
        return Err(Refused::NoObject.into());
    }
    let mut slots = maps::trace_progs(pins)?;
    // Only pinned maps are shared with the running programs; the loader
    // creates the others (the session's ring buffer and journeys, per-CPU
    // scratch) for this load alone.
    let mut ebpf = early
        .finish()?
        .default_map_pin_directory(pins.maps())
        .override_global(names::TRACE_FILTER, filter, true)
        .map_max_entries(names::TRACE_EVENTS, ring_bytes)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    let Some(Map::RingBuf(events)) = ebpf.take_map(names::TRACE_EVENTS) else {
        bail!("the eBPF object has no ring buffer {}", names::TRACE_EVENTS);
    };
    let events = RingBuf::try_from(Map::RingBuf(events))?;
    let started = Instant::now();
    load_classifier(&mut ebpf, names::TRACE_HOP)?;
    let hop_load = started.elapsed();
    let Some(hop) = ebpf.program(names::TRACE_HOP) else {
        bail!("the eBPF object has no program {}", names::TRACE_HOP);
    };
    let hop: &SchedClassifier = hop.try_into()?;
    slots
        .set(0, hop.fd()?, 0)
        .with_context(|| format!("installing {} in {}", names::TRACE_HOP, names::TRACE_PROGS))?;
    let mut session = TraceSession {
        slots,
        events: Some(events),
        watched: Vec::new(),
        _ebpf: ebpf,
        hop_load,
        fates_missing: None,
    };
    if !watch.is_empty() {
        const WATCHERS: [&str; 2] = [names::TRACE_INGRESS, names::TRACE_EGRESS];
        for name in WATCHERS {
            load_classifier(&mut session._ebpf, name)?;
        }
        let mut programs = BTreeMap::new();
        for name in WATCHERS {
            let Some(program) = session._ebpf.program(name) else {
                bail!("the eBPF object has no program {name}");
            };
            programs.insert(name, <&SchedClassifier>::try_from(program)?);
        }
        // Whatever fails half way, the session's drop removes.
        session.watched = watch.to_vec();
        set_tc_programs(watch, &programs, WATCH_PRIORITY)?;
    }
    if let Err(err) = attach_fates(&mut session._ebpf) {
        session.fates_missing = Some(format!("{err:#}"));
    }
    Ok(session)
}

/// Loads (verifies) the TC program `name` of a loaded object.
fn load_classifier(ebpf: &mut Ebpf, name: &str) -> Result<()> {
    let Some(program) = ebpf.program_mut(name) else {
        bail!("the eBPF object has no program {name}");
    };
    let program: &mut SchedClassifier = program.try_into()?;
    program
        .load()
        .with_context(|| format!("loading program {name} (verifier)"))
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

/// Cleans up after a `netlab trace` that crashed: empties the `trace_hop`
/// slot and removes the watching filters from `watch` (no error when the
/// lab has no such map, or nothing is left).
pub fn stop_trace(pins: &Pins, watch: &[Attachment]) -> Result<()> {
    remove_tc_programs(watch, WATCH_PRIORITY)?;
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
