//! What a command needs of the kernel's permission checks, said before it
//! fails half way with `Permission denied`.

use std::fs;

use anyhow::{Result, bail};

/// Capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Namespaces and links (NET_ADMIN), mounts and setns (SYS_ADMIN), programs
/// and maps (BPF).
const NEEDED: [(u32, &str); 3] = [
    (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    (CAP_BPF, "CAP_BPF"),
    (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
];

/// Fails with one line naming what `command` needs when the process lacks
/// any of it.
pub fn require(command: &str) -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(effective) = effective_caps(&status) else {
        // Cannot tell: let the kernel say.
        return Ok(());
    };
    let missing = missing(effective);
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "`netlab {command}` needs root, or the capabilities CAP_NET_ADMIN, CAP_BPF and \
         CAP_SYS_ADMIN (missing: {}); run it with sudo",
        missing.join(", ")
    )
}

fn effective_caps(proc_status: &str) -> Option<u64> {
    let hex = proc_status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

fn missing(effective: u64) -> Vec<&'static str> {
    NEEDED
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        let root = "Name:\tnetlab\nCapEff:\t000001ffffffffff\n";
        assert!(missing(effective_caps(root).unwrap()).is_empty());
        let user = "CapEff:\t0000000000000000\n";
        assert_eq!(
            missing(effective_caps(user).unwrap()),
            ["CAP_NET_ADMIN", "CAP_BPF", "CAP_SYS_ADMIN"]
        );
        let net_admin_only = format!("CapEff:\t{:016x}\n", 1u64 << CAP_NET_ADMIN);
        assert_eq!(
            missing(effective_caps(&net_admin_only).unwrap()),
            ["CAP_BPF", "CAP_SYS_ADMIN"]
        );
        assert_eq!(effective_caps("Name: x\n"), None);
    }
}
