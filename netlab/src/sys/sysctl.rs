//! The few sysctls a lab needs, read and written under /proc/sys for the
//! calling thread's network namespace.

use std::{fs, path::PathBuf};

use anyhow::{Context, Result};

fn path(name: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(name.replace('.', "/"))
}

pub fn read(name: &str) -> Result<String> {
    Ok(fs::read_to_string(path(name))
        .with_context(|| format!("reading sysctl {name}"))?
        .trim()
        .to_owned())
}

pub fn write(name: &str, value: &str) -> Result<()> {
    fs::write(path(name), value).with_context(|| format!("setting sysctl {name}={value}"))
}

pub const IP_FORWARD: &str = "net.ipv4.ip_forward";
/// IPv6 forwarding on every interface (it also stops the host taking
/// router advertisements where `accept_ra` is 1, as on any IPv6 router).
pub const IP6_FORWARD: &str = "net.ipv6.conf.all.forwarding";

/// Sets `net.ipv4.conf.IFACE.KEY` (interface names may hold dots, so the
/// path is built from parts).
pub fn write_iface(iface: &str, key: &str, value: &str) -> Result<()> {
    write_conf("ipv4", iface, key, value)
}

/// Sets `net.ipv6.conf.IFACE.KEY`, as [`write_iface`].
pub fn write_iface6(iface: &str, key: &str, value: &str) -> Result<()> {
    write_conf("ipv6", iface, key, value)
}

fn write_conf(family: &str, iface: &str, key: &str, value: &str) -> Result<()> {
    let path = PathBuf::from("/proc/sys/net")
        .join(family)
        .join("conf")
        .join(iface)
        .join(key);
    fs::write(&path, value).with_context(|| format!("setting {}={value}", path.display()))
}
