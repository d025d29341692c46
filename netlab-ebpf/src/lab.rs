//! The lab as the programs see it, below every feature: its NAT
//! configuration (one array slot, read once per packet and handed down),
//! the interface a program runs on, and the questions every feature asks
//! of an address (a host address of the lab? behind the lab's veths?
//! masqueraded? the world's?).
//!
//! The sets of addresses most packets are asked about live inline in the
//! configuration (`NetSet`): up to eight subnets each, compared without a
//! map lookup. A lab with more sets the set's overflow flag, and the rest
//! are asked of the set's map.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, lpm_trie::Key},
    programs::TcContext,
};
use netlab_common::nat::{
    BACKEND_PORT_WORDS, Backend, Backend6, IFACE_SLOTS, IfaceConfig, MAGLEV_SLOTS, MaglevTable,
    NET_INTERNAL, NatConfig, NetSet, PUBLISH_EPOCH_SLOTS, PublishKey, Service, ServiceKey,
    backend_port_bit, iface_slot, publish_epoch_slot, service_epoch_slot,
};

use crate::pkt::ctx::{self, array_value, value};

#[map(name = "NAT_CONFIG")]
static NAT_CONFIG: Array<NatConfig> = Array::pinned(1, 0);

/// The lab's host addresses beyond the eight of `NatConfig::local`.
#[map(name = "LOCAL_ADDRS")]
static LOCAL_ADDRS: HashMap<u32, u32> = HashMap::pinned(4096, 0);

/// Every subnet masqueraded out of the uplink (asked only when
/// `NatConfig::masquerade` overflows).
#[map(name = "MASQ_SUBNETS")]
static MASQ_SUBNETS: LpmTrie<u32, u32> = LpmTrie::pinned(256, 0);

/// Every lab subnet and its kind (`NET_*`), asked only when
/// `NatConfig::internal` overflows.
#[map(name = "LAB_NETS")]
static LAB_NETS: LpmTrie<u32, u32> = LpmTrie::pinned(16384, 0);

/// Which ports published ports forward to (see `names::BACKEND_PORTS`).
#[map(name = "BACKEND_PORTS")]
static BACKEND_PORTS: Array<u64> = Array::pinned(BACKEND_PORT_WORDS, 0);

/// Whether some published port forwards to a backend on `port` (network
/// order): only such a source port can carry a reply a lab veth's egress
/// hook translates (besides the host's own flows).
#[inline(always)]
pub fn is_backend_port(port: u16) -> bool {
    let (word, bit) = backend_port_bit(u16::from_be(port));
    array_value(BACKEND_PORTS.get_ptr(word)).is_some_and(|w| w & bit != 0)
}

/// Not preallocated (`BPF_F_NO_PREALLOC`): a lab publishes a few ports,
/// and preallocating room for every one took 4 ms of every `up`.
#[map(name = "PUBLISHED")]
static PUBLISHED: HashMap<PublishKey, Backend> = HashMap::pinned(65536 * 2, BPF_F_NO_PREALLOC);

/// The backend of a published port.
#[inline(always)]
pub fn published(port: u16, proto: u8) -> Option<Backend> {
    // SAFETY: copied at once; a racing `publish rm` makes this one
    // packet's backend the removed one's.
    unsafe {
        value(PUBLISHED.get_ptr(PublishKey {
            port,
            proto,
            _pad: 0,
        }))
    }
    .copied()
}

/// The same ports over IPv6 (see `names::PUBLISHED6`). Not preallocated,
/// as `PUBLISHED`.
#[map(name = "PUBLISHED6")]
static PUBLISHED6: HashMap<PublishKey, Backend6> = HashMap::pinned(65536 * 2, BPF_F_NO_PREALLOC);

/// The IPv6 backend of a published port.
#[inline(always)]
pub fn published6(port: u16, proto: u8) -> Option<Backend6> {
    // SAFETY: copied at once, as in `published`.
    unsafe {
        value(PUBLISHED6.get_ptr(PublishKey {
            port,
            proto,
            _pad: 0,
        }))
    }
    .copied()
}

/// Each published host port's epoch (see `names::PUBLISH_EPOCH`).
#[map(name = "PUBLISH_EPOCH")]
static PUBLISH_EPOCH: Array<u32> = Array::pinned(PUBLISH_EPOCH_SLOTS, 0);

/// The epoch of host port `port` (network order) for `proto`.
#[inline(always)]
pub fn publish_epoch(proto: u8, port: u16) -> u32 {
    publish_epoch_slot(proto, u16::from_be(port))
        .and_then(|slot| array_value(PUBLISH_EPOCH.get_ptr(slot)).copied())
        .unwrap_or(0)
}

/// The epoch of Service backend `id` (see `names::PUBLISH_EPOCH`).
#[inline(always)]
pub fn backend_epoch(id: u16) -> u32 {
    array_value(PUBLISH_EPOCH.get_ptr(service_epoch_slot(id)))
        .copied()
        .unwrap_or(0)
}

/// The most Services, and Service backends, a lab holds: ids are 16 bits.
const SERVICE_IDS: u32 = 65536;

/// The Services by virtual address and port. Not preallocated, as
/// `PUBLISHED`.
#[map(name = "SERVICES")]
static SERVICES: HashMap<ServiceKey, Service> = HashMap::pinned(SERVICE_IDS, BPF_F_NO_PREALLOC);

/// Each Service's Maglev table, by the Service's id.
#[map(name = "MAGLEV")]
static MAGLEV: HashMap<u32, MaglevTable> = HashMap::pinned(SERVICE_IDS, BPF_F_NO_PREALLOC);

/// Each Service backend, by its id.
#[map(name = "SERVICE_BACKENDS")]
static SERVICE_BACKENDS: HashMap<u32, Backend> = HashMap::pinned(SERVICE_IDS, BPF_F_NO_PREALLOC);

/// The Service at `vip`:`port` (network order) for `proto`.
#[inline(always)]
pub fn service(vip: u32, port: u16, proto: u8) -> Option<Service> {
    // SAFETY: copied at once; a racing `service rm` makes this one packet
    // see the removed Service.
    unsafe {
        value(SERVICES.get_ptr(ServiceKey {
            vip,
            port,
            proto,
            _pad: 0,
        }))
    }
    .copied()
}

/// Service `id`'s `SERVICE_*` bits; `None` when it has no table.
#[inline(always)]
pub fn maglev_flags(id: u16) -> Option<u16> {
    // SAFETY: one field copied at once.
    unsafe { value(MAGLEV.get_ptr(u32::from(id))) }.map(|t| t.flags)
}

/// The backend in the slot `hash` picks of Service `id`'s table, with
/// its id.
#[inline(always)]
pub fn maglev_backend(id: u16, hash: u32) -> Option<(u16, Backend)> {
    // SAFETY: one slot copied at once; a racing update makes this one
    // packet take the old table's backend, whose epoch then says whether
    // its flow lives.
    let table = unsafe { value(MAGLEV.get_ptr(u32::from(id))) }?;
    // `hash * slots / 2^32`: a slot below MAGLEV_SLOTS, as the verifier
    // can see (a modulo compiles to a multiply and shift it cannot bound).
    let slot = (u64::from(hash) * MAGLEV_SLOTS as u64) >> 32;
    let backend_id = *table.backends.get(slot as usize)?;
    if backend_id == 0 {
        return None;
    }
    // SAFETY: copied at once, as above.
    let backend = unsafe { value(SERVICE_BACKENDS.get_ptr(u32::from(backend_id))) }?;
    Some((backend_id, *backend))
}

#[map(name = "IFACE_CONFIG")]
static IFACE_CONFIG: HashMap<u32, IfaceConfig> = HashMap::pinned(16384, 0);

#[map(name = "IFACES")]
static IFACES: Array<IfaceConfig> = Array::pinned(IFACE_SLOTS, 0);

/// The lab's configuration, as userspace wrote it.
#[derive(Clone, Copy)]
pub struct Lab {
    pub cfg: &'static NatConfig,
}

impl Lab {
    /// The configuration; `None` before `up` wrote it (every packet then
    /// passes untouched).
    #[inline(always)]
    pub fn get() -> Option<Lab> {
        NAT_CONFIG.get(0).map(|cfg| Lab { cfg })
    }

    /// Whether the `redirect` datapath runs.
    #[inline(always)]
    pub fn redirect(&self) -> bool {
        self.cfg.redirect != 0
    }

    /// Whether `addr` is one of the lab's host addresses: published ports
    /// answer there, and every flow translated on the way in is addressed
    /// to one (DNAT, the replies of masquerade and hairpin SNAT, the host's
    /// own flows).
    #[inline(always)]
    pub fn is_local(&self, addr: u32) -> bool {
        in_set(&self.cfg.local, addr) || (overflows(&self.cfg.local) && local_overflow(addr))
    }

    /// Whether `addr` lies behind the lab's own veths (a namespace's or a
    /// bridge's subnet).
    #[inline(always)]
    pub fn is_internal(&self, addr: u32) -> bool {
        in_set(&self.cfg.internal, addr)
            || (overflows(&self.cfg.internal) && internal_overflow(addr))
    }

    /// Whether traffic from `addr` is masqueraded out of the uplink.
    #[inline(always)]
    pub fn is_masqueraded(&self, addr: u32) -> bool {
        in_set(&self.cfg.masquerade, addr)
            || (overflows(&self.cfg.masquerade) && masq_overflow(addr))
    }

    /// Whether `addr` is in another node's pod subnet (a peer of the
    /// cluster): reached and reaching the lab unmasqueraded.
    #[inline(always)]
    pub fn is_peer(&self, addr: u32) -> bool {
        in_set(&self.cfg.peers, addr)
    }

    /// Whether `addr` is in the Services' range (a ClusterIP's).
    #[inline(always)]
    pub fn is_service(&self, addr: u32) -> bool {
        self.cfg.services.contains(addr)
    }

    /// Whether `addr` is in the uplink's subnet (the world's side).
    #[inline(always)]
    pub fn in_uplink_net(&self, addr: u32) -> bool {
        self.cfg.uplink.contains(addr)
    }

    /// Whether the IPv6 `addr` is one of the lab's host addresses outside
    /// its IPv6 subnets (the uplink's): published ports answer there, and
    /// every IPv6 flow translated on the way in is addressed to one.
    #[inline(always)]
    pub fn is_local6(&self, addr: &[u32; 4]) -> bool {
        self.cfg.local6.contains(addr)
    }

    /// Whether the IPv6 `addr` lies in one of the lab's IPv6 subnets.
    #[inline(always)]
    pub fn is_internal6(&self, addr: &[u32; 4]) -> bool {
        self.cfg.internal6.contains(addr)
    }

    /// Whether IPv6 from `addr` is masqueraded out of the uplink.
    #[inline(always)]
    pub fn is_masqueraded6(&self, addr: &[u32; 4]) -> bool {
        self.cfg.masquerade6.contains(addr)
    }

    /// Whether the IPv6 `addr` is in one of the uplink's subnets (the
    /// world's side).
    #[inline(always)]
    pub fn in_uplink_net6(&self, addr: &[u32; 4]) -> bool {
        self.cfg.uplink6.contains(addr)
    }

    /// Whether lab traffic may be addressed to `addr`: the lab's own
    /// subnets and host addresses, the world beyond the uplink, multicast
    /// and broadcast (which the bridges flood), the cluster's other
    /// nodes' pods, and the Services.
    #[inline(always)]
    pub fn in_lab(&self, addr: u32) -> bool {
        self.in_uplink_net(addr)
            || is_group(addr)
            || self.is_internal(addr)
            || self.is_local(addr)
            || self.is_peer(addr)
            || self.is_service(addr)
    }
}

/// Whether `addr` (network order) is multicast or the limited broadcast.
#[inline(always)]
pub fn is_group(addr: u32) -> bool {
    addr == u32::MAX || u32::from_be(addr) >> 28 == 0xe
}

#[inline(always)]
fn overflows(set: &NetSet) -> bool {
    set.overflow != 0
}

/// Whether one of the set's inline subnets holds `addr` (only the used
/// ones are compared: most sets hold one or two).
#[inline(always)]
fn in_set(set: &NetSet, addr: u32) -> bool {
    let count = set.count as usize;
    let mut i = 0;
    while i < set.nets.len() {
        if i >= count {
            return false;
        }
        let net = &set.nets[i];
        if addr & net.mask == net.net {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn local_overflow(addr: u32) -> bool {
    LOCAL_ADDRS.get_ptr(addr).is_some()
}

#[inline(always)]
fn internal_overflow(addr: u32) -> bool {
    LAB_NETS.get(Key::new(32, addr)).copied() == Some(NET_INTERNAL)
}

#[inline(always)]
fn masq_overflow(addr: u32) -> bool {
    MASQ_SUBNETS.get(Key::new(32, addr)).is_some()
}

/// The interface a program runs on, as the lab configured it.
#[derive(Clone, Copy)]
pub struct Iface {
    pub ifindex: u32,
    /// `ROLE_*`, 0 for an interface the lab did not describe.
    pub role: u32,
    /// The address hairpin traffic is SNATed to, 0 when none.
    pub gateway: u32,
    /// Its row of per-interface counters, 0 for none.
    pub slot: u32,
}

impl Iface {
    /// The interface's configuration: from its slot of `IFACES` (an
    /// array read), else from `IFACE_CONFIG` when another interface has
    /// the slot.
    #[inline(always)]
    pub fn of(ctx: &TcContext) -> Iface {
        Iface::of_index(ctx::ifindex(ctx))
    }

    /// The configuration of interface `ifindex`.
    #[inline(always)]
    pub fn of_index(ifindex: u32) -> Iface {
        let cfg = config_of(ifindex);
        Iface {
            ifindex,
            role: cfg.map_or(0, |c| c.role),
            gateway: cfg.map_or(0, |c| c.gateway),
            slot: cfg.map_or(0, |c| c.slot),
        }
    }

    /// The address IPv6 hairpin traffic is SNATed to, all zero when none
    /// (read again: only a hairpin flow's first packet asks).
    #[inline(always)]
    pub fn gateway6(&self) -> [u32; 4] {
        config_of(self.ifindex).map_or([0; 4], |c| c.gateway6)
    }
}

/// Interface `ifindex`'s configuration: from its slot of `IFACES` (an
/// array read), else from `IFACE_CONFIG` when another interface has the
/// slot.
#[inline(always)]
fn config_of(ifindex: u32) -> Option<&'static IfaceConfig> {
    let cfg = array_value(IFACES.get_ptr(iface_slot(ifindex)))
        .filter(|c| c.ifindex == ifindex && c.role != 0);
    if cfg.is_some() {
        return cfg;
    }
    // SAFETY: userspace replaces an interface's configuration only when the
    // lab changes; the fields are read at once.
    unsafe { value(IFACE_CONFIG.get_ptr(ifindex)) }
}
