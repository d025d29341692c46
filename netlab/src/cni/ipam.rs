//! Pod addresses: netlab's own allocator (pure: the lab record, under the
//! lab's lock, is its store) or a delegated IPAM plugin run as the
//! specification says (same environment, the configuration on stdin).

use std::{
    collections::BTreeSet,
    io::Write as _,
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
};

use serde::Deserialize;

use super::spec::{CniError, Env};
use crate::topology::Ipv4Net;

/// The next free address of `pool` after `last` (round robin, wrapping, as
/// host-local does: an address freed a moment ago is not handed out again
/// while the old pod's flows may still live), skipping `taken`.
pub fn allocate(
    pool: (Ipv4Addr, Ipv4Addr),
    taken: &BTreeSet<Ipv4Addr>,
    last: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let (first, end) = (u32::from(pool.0), u32::from(pool.1));
    if first > end {
        return None;
    }
    let size = u64::from(end - first) + 1;
    let start = match last.map(u32::from) {
        Some(l) if (first..=end).contains(&l) => u64::from(l - first) + 1,
        _ => 0,
    };
    (0..size)
        .map(|i| Ipv4Addr::from(first + ((start + i) % size) as u32))
        .find(|a| !taken.contains(a))
}

/// The host end's name for an attachment: `nlp` and 11 hex digits of a
/// hash of the network, container and interface (14 bytes, under Linux's
/// 15), so every attachment has its own and a repeated ADD finds it.
pub fn host_veth_name(network: &str, container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bits: stable across builds, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in [network, container_id, ifname].join("\0").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("nlp{:011x}", hash >> 20)
}

/// What a delegated IPAM plugin answered: the pod's address and gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delegated {
    pub net: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Deserialize)]
struct IpamResult {
    #[serde(default)]
    ips: Vec<IpamIp>,
}

#[derive(Deserialize)]
struct IpamIp {
    address: String,
    gateway: Option<Ipv4Addr>,
}

/// Runs IPAM plugin `kind` (found in `CNI_PATH`) for `command` (ADD or
/// DEL) with `config` on stdin; ADD's first IPv4 address.
pub fn delegate(
    env: &Env,
    kind: &str,
    command: &str,
    config: &str,
) -> Result<Option<Delegated>, CniError> {
    let plugin = env
        .path
        .iter()
        .map(|dir| dir.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                7,
                format!("IPAM plugin {kind:?} is not in CNI_PATH ({:?})", env.path),
            )
        })?;
    let out = run(&plugin, command, config)?;
    if !out.status.success() {
        let reply: Option<super::spec::ErrorReply> = serde_json::from_slice(&out.stdout).ok();
        return Err(match reply {
            Some(r) => CniError::new(r.code, format!("IPAM plugin {kind}: {}", r.msg))
                .with_details(r.details),
            None => CniError::new(
                5,
                format!(
                    "IPAM plugin {kind} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ),
        });
    }
    if command != "ADD" {
        return Ok(None);
    }
    let result: IpamResult = serde_json::from_slice(&out.stdout)
        .map_err(|e| CniError::new(6, format!("IPAM plugin {kind} answered no result: {e}")))?;
    let ip = result
        .ips
        .iter()
        .find_map(|ip| {
            let (addr, prefix) = ip.address.split_once('/')?;
            Some(Delegated {
                net: Ipv4Net {
                    addr: addr.parse().ok()?,
                    prefix_len: prefix.parse().ok().filter(|p| *p <= 32)?,
                },
                gateway: ip.gateway,
            })
        })
        .ok_or_else(|| CniError::new(5, format!("IPAM plugin {kind} gave no IPv4 address")))?;
    Ok(Some(ip))
}

/// The plugin run with this process's environment (the runtime's), but
/// `CNI_COMMAND`, and `config` on its stdin.
fn run(plugin: &Path, command: &str, config: &str) -> Result<std::process::Output, CniError> {
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::new(5, format!("running {}: {e}", plugin.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(config.as_bytes());
    }
    child
        .wait_with_output()
        .map_err(|e| CniError::new(5, format!("running {}: {e}", plugin.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, last)
    }

    #[test]
    fn addresses_go_round_and_run_out() {
        let pool = (a(10), a(12));
        let mut taken = BTreeSet::from([a(11)]);
        assert_eq!(allocate(pool, &taken, None), Some(a(10)));
        assert_eq!(allocate(pool, &taken, Some(a(10))), Some(a(12)));
        // After the last, the search wraps.
        assert_eq!(allocate(pool, &taken, Some(a(12))), Some(a(10)));
        taken.extend([a(10), a(12)]);
        assert_eq!(allocate(pool, &taken, Some(a(10))), None);
        // A freed address comes back once the others are passed.
        taken.remove(&a(10));
        assert_eq!(allocate(pool, &taken, Some(a(10))), Some(a(10)));
        assert_eq!(allocate((a(5), a(4)), &BTreeSet::new(), None), None);
    }

    #[test]
    fn host_ends_are_named_per_attachment() {
        let one = host_veth_name("pods", "c1", "eth0");
        assert_eq!(one.len(), 14);
        assert!(one.starts_with("nlp"));
        assert_eq!(one, host_veth_name("pods", "c1", "eth0"));
        assert_ne!(one, host_veth_name("pods", "c1", "eth1"));
        assert_ne!(one, host_veth_name("pods", "c2", "eth0"));
    }
}
