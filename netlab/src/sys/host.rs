//! Addresses the host is using without a route of its own naming them: its
//! nameservers and the peers of its connections (`topology::check_host`
//! refuses a lab subnet that would capture them).

use std::{fs, io::Read as _, net::Ipv4Addr};

use crate::topology::AddressInUse;

/// Where the host's resolver configuration names its nameservers;
/// systemd-resolved keeps the upstream ones in the second.
const RESOLV_CONFS: [&str; 2] = ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"];

/// The kernel's socket tables of the calling thread's network namespace.
const SOCKET_TABLES: [(&str, &str); 2] = [
    ("/proc/net/tcp", "the peer of an established TCP connection"),
    ("/proc/net/udp", "the peer of a connected UDP socket"),
];

/// Every IPv4 address the host talks to that a lab must not capture.
/// Unreadable files are skipped: they only make the check less thorough.
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

/// `nameserver A.B.C.D` lines (IPv6 and malformed ones skipped).
fn nameservers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            words.next()?.parse().ok()
        })
        .collect()
}

/// Remote addresses of `/proc/net/{tcp,udp}` rows that have one (TCP
/// established, UDP connected), loopback and unspecified left out.
fn socket_peers(table: &str) -> Vec<Ipv4Addr> {
    const TCP_ESTABLISHED: &str = "01";
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let fields: Vec<&str> = row.split_whitespace().collect();
            let (remote, state) = (fields.get(2)?, fields.get(3)?);
            let (addr, _port) = remote.split_once(':')?;
            // The kernel prints the address as the native-endian u32 of its
            // network-order bytes.
            let addr = Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.to_ne_bytes());
            let udp_connected = *state == "07" && !addr.is_unspecified();
            (*state == TCP_ESTABLISHED || udp_connected).then_some(addr)
        })
        .filter(|addr| !addr.is_loopback() && !addr.is_unspecified())
        .collect()
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
            ["198.51.100.53", "198.18.0.9"].map(|a| a.parse::<Ipv4Addr>().unwrap())
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
            ["198.18.0.5", "198.51.100.53"].map(|a| a.parse::<Ipv4Addr>().unwrap())
        );
    }
}
