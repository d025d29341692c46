//! Addresses the host is using without a route of its own naming them: its
//! nameservers and the peers of its connections (`topology::check_host`
//! refuses a lab subnet that would capture them).

use std::{
    fs,
    io::Read as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::topology::{AddressInUse, is_link_local};

/// Where the host's resolver configuration names its nameservers;
/// systemd-resolved keeps the upstream ones in the second.
const RESOLV_CONFS: [&str; 2] = ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"];

/// The kernel's socket tables of the calling thread's network namespace.
const SOCKET_TABLES: [(&str, &str); 4] = [
    ("/proc/net/tcp", "the peer of an established TCP connection"),
    ("/proc/net/udp", "the peer of a connected UDP socket"),
    (
        "/proc/net/tcp6",
        "the peer of an established TCP connection",
    ),
    ("/proc/net/udp6", "the peer of a connected UDP socket"),
];

/// Every address the host talks to that a lab must not capture, of
/// either family. Unreadable files are skipped: they only make the check
/// less thorough.
pub fn addresses_in_use() -> Vec<AddressInUse> {
    let mut used = Vec::new();
    for path in RESOLV_CONFS {
        if let Ok(text) = fs::read_to_string(path) {
            used.extend(nameservers(&text).into_iter().map(|addr| AddressInUse {
                addr,
                why: format!("a nameserver in {path}"),
            }));
        }
    }
    for (path, why) in SOCKET_TABLES {
        if let Ok(text) = read_table(path) {
            used.extend(socket_peers(&text).into_iter().map(|addr| AddressInUse {
                addr,
                why: why.to_owned(),
            }));
        }
    }
    used.sort_by_key(|u| u.addr);
    used.dedup_by_key(|u| u.addr);
    used
}

/// A kernel socket table, in fewer reads: every read of one walks the
/// kernel's whole socket hash (about 1 ms each on the development machine),
/// and `fs::read_to_string`, told the file is empty, starts with reads of
/// 32 bytes and grows them one at a time.
fn read_table(path: &str) -> std::io::Result<String> {
    let mut text = String::with_capacity(64 << 10);
    fs::File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// `nameserver ADDRESS` lines, either family (a zone index such as
/// `fe80::1%eth0` and malformed lines skipped).
fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            words.next()?.parse().ok()
        })
        .collect()
}

/// Remote addresses of `/proc/net/{tcp,udp}{,6}` rows that have one (TCP
/// established, UDP connected), loopback, unspecified and link-local left
/// out (an IPv4-mapped IPv6 peer is its IPv4 address).
fn socket_peers(table: &str) -> Vec<IpAddr> {
    const TCP_ESTABLISHED: &str = "01";
    const UDP_CONNECTED: &str = "07";
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let fields: Vec<&str> = row.split_whitespace().collect();
            let (remote, state) = (fields.get(2)?, *fields.get(3)?);
            let (addr, _port) = remote.split_once(':')?;
            let addr = kernel_address(addr)?;
            (state == TCP_ESTABLISHED || state == UDP_CONNECTED).then_some(addr)
        })
        .filter(|addr| match addr {
            IpAddr::V4(a) => !a.is_loopback() && !a.is_unspecified(),
            IpAddr::V6(a) => !a.is_loopback() && !a.is_unspecified() && !is_link_local(*a),
        })
        .collect()
}

/// An address as the kernel prints it in its socket tables: the
/// native-endian u32 words of its network-order bytes, in hex (one word
/// for IPv4, four for IPv6).
fn kernel_address(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let text = hex.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(text, 16).ok()?.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let addr = Ipv6Addr::from(bytes);
            Some(match addr.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(addr),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nameservers() {
        let text = "# generated\nsearch lan\nnameserver 198.51.100.53\nnameserver ::1\n\
                    nameserver\nnameserver 198.18.0.9 # second\n";
        assert_eq!(
            nameservers(text),
            ["198.51.100.53", "::1", "198.18.0.9"].map(|a| a.parse::<IpAddr>().unwrap())
        );
        let text = "nameserver 2001:db8::53\nnameserver fe80::1%eth0\n";
        assert_eq!(
            nameservers(text),
            ["2001:db8::53".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn reads_established_and_connected_peers() {
        // 192.0.2.10:22 <- 198.18.0.5:40000 established; a listener; a
        // loopback connection; a connected UDP socket to 198.51.100.53:53.
        let addr = |a: &str| {
            let ip: Ipv4Addr = a.parse().unwrap();
            format!("{:08X}", u32::from_ne_bytes(ip.octets()))
        };
        let table = format!(
            "  sl  local_address rem_address   st tx_queue\n\
             0: {}:0016 {}:9C40 01 0\n\
             1: 00000000:0016 00000000:0000 0A 0\n\
             2: {}:1F90 {}:9C41 01 0\n\
             3: {}:A000 {}:0035 07 0\n",
            addr("192.0.2.10"),
            addr("198.18.0.5"),
            addr("127.0.0.1"),
            addr("127.0.0.1"),
            addr("192.0.2.10"),
            addr("198.51.100.53"),
        );
        assert_eq!(
            socket_peers(&table),
            ["198.18.0.5", "198.51.100.53"].map(|a| a.parse::<IpAddr>().unwrap())
        );
    }

    #[test]
    fn reads_ipv6_peers() {
        // As /proc/net/tcp6 prints them: four native-endian words.
        let addr = |a: &str| {
            let ip: Ipv6Addr = a.parse().unwrap();
            ip.octets()
                .chunks(4)
                .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
                .collect::<String>()
        };
        let table = format!(
            "  sl  local_address                         remote_address                        st\n\
             0: {}:0016 {}:9C40 01 0\n\
             1: {}:0016 {}:9C41 01 0\n\
             2: {}:0016 {}:9C42 01 0\n\
             3: {}:0016 {}:0000 0A 0\n",
            addr("fd00::2"),
            addr("2001:db8::5"),
            addr("::ffff:192.0.2.10"),
            addr("::ffff:198.18.0.5"),
            addr("fe80::1"),
            addr("fe80::2"),
            addr("::"),
            addr("::"),
        );
        assert_eq!(
            socket_peers(&table),
            ["2001:db8::5", "198.18.0.5"].map(|a| a.parse::<IpAddr>().unwrap())
        );
    }
}
