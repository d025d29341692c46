//! Interface offloads, through the ethtool ioctl (`SIOCETHTOOL`): the two
//! the XDP entry needs (see `datapath::ebpf::loader`). Called on a thread
//! in the interface's namespace.

use std::io;

/// `ETHTOOL_GTXCSUM`/`ETHTOOL_STXCSUM`: transmit checksum offload.
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;
/// `ETHTOOL_GGRO`/`ETHTOOL_SGRO`: generic receive offload.
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// An offload netlab switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offload {
    /// The sender leaves its L4 checksums to the device (a veth: to
    /// whoever receives), which an XDP program on the peer cannot see.
    TxChecksum,
    /// On a veth, also what gives it the NAPI an `XDP_REDIRECT` into it
    /// needs.
    Gro,
}

impl Offload {
    fn commands(self) -> (u32, u32) {
        match self {
            Offload::TxChecksum => (ETHTOOL_GTXCSUM, ETHTOOL_STXCSUM),
            Offload::Gro => (ETHTOOL_GGRO, ETHTOOL_SGRO),
        }
    }
}

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Sets `offload` on interface `name` (in the calling thread's namespace)
/// when it is not already so.
pub fn set(name: &str, offload: Offload, on: bool) -> io::Result<()> {
    let (get, set) = offload.commands();
    if value(name, get)? == u32::from(on) {
        return Ok(());
    }
    ioctl(
        name,
        EthtoolValue {
            cmd: set,
            data: u32::from(on),
        },
    )
    .map(drop)
}

fn value(name: &str, cmd: u32) -> io::Result<u32> {
    ioctl(name, EthtoolValue { cmd, data: 0 })
}

fn ioctl(name: &str, mut value: EthtoolValue) -> io::Result<u32> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    // SAFETY: plain syscall; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed `ifreq` is valid; the name fits (checked above) with
    // its NUL, and `ifru_data` points at `value`, which outlives the call.
    let rc = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_data = (&raw mut value).cast();
        let rc = libc::ioctl(fd, libc::SIOCETHTOOL, &raw mut req);
        libc::close(fd);
        rc
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}
