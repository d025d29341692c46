//! Typed access to the pinned maps: one opener per map (the map's name and
//! its key and value types in one place), and the readers that sum per-CPU
//! values. Every command works on the running datapath through these,
//! without reloading a program.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, ProgramArray, lpm_trie::LpmTrie};
use netlab_common::{
    names,
    nat::{
        Backend, Backend6, CtEntry, CtEntry6, Endpoint, FlowKey, FlowKey6, IfaceConfig,
        MaglevTable, NatConfig, PublishKey, REDIRECT_REASON_SLOTS, Service, ServiceKey, Stat,
        redirect_stat_index,
    },
    trace::{TRACE_STAT_EMITTED, TRACE_STAT_LOST, TraceConfig},
};

use crate::pins::Pins;

fn open(pins: &Pins, name: &str, hint: &str) -> Result<MapData> {
    let path = pins.map(name);
    MapData::from_pin(&path).with_context(|| format!("opening {} ({hint})", path.display()))
}

const NAT_HINT: &str = "is the lab up with the eBPF datapath?";
const TRACE_HINT: &str = "is the lab up, and was it brought up by a netlab with tracing?";

// Writers' openers: the NAT's configuration.

pub fn nat_config(pins: &Pins) -> Result<Array<MapData, NatConfig>> {
    Ok(Array::try_from(Map::Array(open(
        pins,
        names::NAT_CONFIG,
        NAT_HINT,
    )?))?)
}

/// Host addresses of the lab that published ports answer on.
pub fn local_addrs(pins: &Pins) -> Result<HashMap<MapData, u32, u32>> {
    Ok(HashMap::try_from(Map::HashMap(open(
        pins,
        names::LOCAL_ADDRS,
        NAT_HINT,
    )?))?)
}

pub fn lab_nets(pins: &Pins) -> Result<LpmTrie<MapData, u32, u32>> {
    Ok(LpmTrie::try_from(Map::LpmTrie(open(
        pins,
        names::LAB_NETS,
        NAT_HINT,
    )?))?)
}

pub fn masq_subnets(pins: &Pins) -> Result<LpmTrie<MapData, u32, u32>> {
    Ok(LpmTrie::try_from(Map::LpmTrie(open(
        pins,
        names::MASQ_SUBNETS,
        NAT_HINT,
    )?))?)
}

/// Per host-side veth (by ifindex): its gateway address and role.
pub fn iface_config(pins: &Pins) -> Result<HashMap<MapData, u32, IfaceConfig>> {
    Ok(HashMap::try_from(Map::HashMap(open(
        pins,
        names::IFACE_CONFIG,
        NAT_HINT,
    )?))?)
}

/// The same configurations, by slot of the ifindex (see `names::IFACES`).
pub fn ifaces(pins: &Pins) -> Result<Array<MapData, IfaceConfig>> {
    Ok(Array::try_from(Map::Array(open(
        pins,
        names::IFACES,
        NAT_HINT,
    )?))?)
}

/// Published ports: (host port, protocol) → the backend they forward to.
pub fn published(pins: &Pins) -> Result<HashMap<MapData, PublishKey, Backend>> {
    Ok(HashMap::try_from(Map::HashMap(open(
        pins,
        names::PUBLISHED,
        NAT_HINT,
    )?))?)
}

/// The same ports over IPv6: (host port, protocol) → the backend's IPv6
/// address and port.
pub fn published6(pins: &Pins) -> Result<HashMap<MapData, PublishKey, Backend6>> {
    Ok(HashMap::try_from(Map::HashMap(open(
        pins,
        names::PUBLISHED6,
        NAT_HINT,
    )?))?)
}

/// Each published host port's epoch (see `config::cut_flows`).
pub fn publish_epochs(pins: &Pins) -> Result<Array<MapData, u32>> {
    Ok(Array::try_from(Map::Array(open(
        pins,
        names::PUBLISH_EPOCH,
        NAT_HINT,
    )?))?)
}

/// The Services by virtual address and port.
pub fn services(pins: &Pins) -> Result<HashMap<MapData, ServiceKey, Service>> {
    Ok(HashMap::try_from(Map::HashMap(open(
        pins,
        names::SERVICES,
        NAT_HINT,
    )?))?)
}

/// Each Service table's Maglev lookup table, by id.
pub fn maglev(pins: &Pins) -> Result<HashMap<MapData, u32, MaglevTable>> {
    Ok(HashMap::try_from(Map::HashMap(open(
        pins,
        names::MAGLEV,
        NAT_HINT,
    )?))?)
}

/// Each Service backend, by id.
pub fn service_backends(pins: &Pins) -> Result<HashMap<MapData, u32, Backend>> {
    Ok(HashMap::try_from(Map::HashMap(open(
        pins,
        names::SERVICE_BACKENDS,
        NAT_HINT,
    )?))?)
}

/// The ports published ports forward to, one bit each.
pub fn backend_ports(pins: &Pins) -> Result<Array<MapData, u64>> {
    Ok(Array::try_from(Map::Array(open(
        pins,
        names::BACKEND_PORTS,
        NAT_HINT,
    )?))?)
}

/// The `redirect` datapath's endpoints: lab address → where to send it.
pub fn endpoints(pins: &Pins) -> Result<HashMap<MapData, u32, Endpoint>> {
    Ok(HashMap::try_from(Map::HashMap(open(
        pins,
        names::ENDPOINTS,
        NAT_HINT,
    )?))?)
}

/// The same for the namespaces' IPv6 addresses (the words as they sit in
/// the header).
pub fn endpoints6(pins: &Pins) -> Result<HashMap<MapData, [u32; 4], Endpoint>> {
    Ok(HashMap::try_from(Map::HashMap(open(
        pins,
        names::ENDPOINTS6,
        NAT_HINT,
    )?))?)
}

// Readers.

/// Forwarding decisions of the `redirect` datapath per (ifindex, reason),
/// summed over CPUs (the counters are kept per interface slot; the
/// interfaces' configuration says which slot is whose).
pub fn redirect_stats(pins: &Pins) -> Result<BTreeMap<(u32, u32), u64>> {
    let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(Map::PerCpuArray(open(
        pins,
        names::REDIRECT_STATS,
        NAT_HINT,
    )?))?;
    let rows = counters.len() / REDIRECT_REASON_SLOTS;
    let mut out = BTreeMap::new();
    for entry in iface_config(pins)?.iter() {
        let (ifindex, config) = entry?;
        if config.slot == 0 || config.slot >= rows {
            continue;
        }
        for reason in 0..REDIRECT_REASON_SLOTS {
            let values = counters.get(&redirect_stat_index(config.slot, reason), 0)?;
            let n: u64 = values.iter().sum();
            if n != 0 {
                out.insert((ifindex, reason), n);
            }
        }
    }
    Ok(out)
}

/// NAT counters summed over CPUs, by name.
pub fn nat_stats(pins: &Pins) -> Result<Vec<(&'static str, u64)>> {
    let array: PerCpuArray<_, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open(pins, names::NAT_STATS, NAT_HINT)?))?;
    Stat::ALL
        .iter()
        .map(|stat| {
            let values = array.get(&(*stat as u32), 0)?;
            Ok((stat.name(), values.iter().sum()))
        })
        .collect()
}

/// The IPv4 conntrack tables: assured flows, then flows not assured yet
/// (a flow's two halves are always in the same one).
pub const CONNTRACK_TABLES: [&str; 2] = [names::CONNTRACK, names::CONNTRACK_NEW];
/// The IPv6 ones, alike.
pub const CONNTRACK6_TABLES: [&str; 2] = [names::CONNTRACK6, names::CONNTRACK6_NEW];

/// One conntrack table of either family (`FlowKey`/`CtEntry` or
/// `FlowKey6`/`CtEntry6`), whichever kind of hash it is (the assured
/// table is a plain hash, the new one an LRU).
pub fn conntrack_table<K: aya::Pod, V: aya::Pod>(
    pins: &Pins,
    name: &str,
) -> Result<HashMap<MapData, K, V>> {
    let data = open(pins, name, NAT_HINT)?;
    let map = if name == names::CONNTRACK || name == names::CONNTRACK6 {
        Map::HashMap(data)
    } else {
        Map::LruHashMap(data)
    };
    Ok(HashMap::try_from(map)?)
}

/// Every half in the IPv4 conntrack tables (two per flow, expired ones
/// included).
pub fn conntrack_entries(pins: &Pins) -> Result<Vec<(FlowKey, CtEntry)>> {
    entries_of(pins, CONNTRACK_TABLES)
}

/// Every half in the IPv6 conntrack tables.
pub fn conntrack6_entries(pins: &Pins) -> Result<Vec<(FlowKey6, CtEntry6)>> {
    entries_of(pins, CONNTRACK6_TABLES)
}

fn entries_of<K: aya::Pod, V: aya::Pod>(pins: &Pins, tables: [&str; 2]) -> Result<Vec<(K, V)>> {
    let mut entries = Vec::new();
    for name in tables {
        for item in conntrack_table::<K, V>(pins, name)?.iter() {
            entries.push(item?);
        }
    }
    Ok(entries)
}

/// Halves in the conntrack tables of both families (two per flow) and
/// their capacity.
pub fn conntrack_usage(pins: &Pins) -> Result<(usize, u32)> {
    let (mut used, mut max) = (0, 0);
    for name in CONNTRACK_TABLES {
        max += open(pins, name, NAT_HINT)?.info()?.max_entries();
        used += conntrack_table::<FlowKey, CtEntry>(pins, name)?
            .keys()
            .count();
    }
    for name in CONNTRACK6_TABLES {
        max += open(pins, name, NAT_HINT)?.info()?.max_entries();
        used += conntrack_table::<FlowKey6, CtEntry6>(pins, name)?
            .keys()
            .count();
    }
    Ok((used, max))
}

// Tracing.

/// The tracing switch and its settings (one slot).
pub fn trace_config(pins: &Pins) -> Result<Array<MapData, TraceConfig>> {
    Ok(Array::try_from(Map::Array(open(
        pins,
        names::TRACE_CONFIG,
        TRACE_HINT,
    )?))?)
}

/// ifindex → place id (0 for the host), for the `netns` filter.
pub fn trace_ifaces(pins: &Pins) -> Result<HashMap<MapData, u32, u32>> {
    Ok(HashMap::try_from(Map::HashMap(open(
        pins,
        names::TRACE_IFACES,
        TRACE_HINT,
    )?))?)
}

/// When the trace session last started a journey (one slot; 0: none yet).
pub fn trace_live(pins: &Pins) -> Result<Array<MapData, u64>> {
    Ok(Array::try_from(Map::Array(open(
        pins,
        names::TRACE_LIVE,
        TRACE_HINT,
    )?))?)
}

/// The program array the TC programs tail-call `trace_hop` through.
pub fn trace_progs(pins: &Pins) -> Result<ProgramArray<MapData>> {
    Ok(ProgramArray::try_from(Map::ProgramArray(open(
        pins,
        names::TRACE_PROGS,
        TRACE_HINT,
    )?))?)
}

/// The program array the NAT programs' fast paths tail-call their full
/// paths through.
pub fn nat_full(pins: &Pins) -> Result<ProgramArray<MapData>> {
    Ok(ProgramArray::try_from(Map::ProgramArray(open(
        pins,
        names::NAT_FULL,
        "the NAT programs' full paths",
    )?))?)
}

/// The trace statistics (events lost to a full ring, ...).
pub struct TraceStats(PerCpuArray<MapData, u64>);

impl TraceStats {
    pub fn open(pins: &Pins) -> Result<TraceStats> {
        Ok(TraceStats(PerCpuArray::try_from(Map::PerCpuArray(open(
            pins,
            names::TRACE_STATS,
            TRACE_HINT,
        )?))?))
    }

    /// Events lost so far, summed over CPUs.
    pub fn lost(&self) -> u64 {
        self.sum(TRACE_STAT_LOST)
    }

    /// Events put on the ring so far, summed over CPUs.
    pub fn emitted(&self) -> u64 {
        self.sum(TRACE_STAT_EMITTED)
    }

    fn sum(&self, slot: u32) -> u64 {
        self.0
            .get(&slot, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}
