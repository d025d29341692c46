//! Frames for `BPF_PROG_TEST_RUN`: an Ethernet + IPv4 + TCP/UDP/ICMP
//! builder with correct checksums, the checksum arithmetic (RFC 1071), and
//! readers and assertions on the bytes a program hands back. The tests
//! hold the assertions about netlab; this module only knows the wire.
//!
//! Offsets assume an Ethernet header (14 bytes) before IPv4.

use std::net::{Ipv4Addr, SocketAddrV4};

use netlab_common::nat::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

/// The IPv4 ethertype.
pub const ETH_P_IP: u16 = 0x0800;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;

/// IP flags and fragment offset (host order).
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;

pub fn ep(s: &str) -> SocketAddrV4 {
    s.parse()
        .unwrap_or_else(|e| panic!("bad endpoint {s}: {e}"))
}

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s}: {e}"))
}

/// The loopback's address: a test run hands the program an skb of the
/// loopback device, and a frame to any other unicast MAC is for another
/// host (`PACKET_OTHERHOST`), which the datapath leaves to the stack.
pub const DST_MAC: [u8; 6] = [0, 0, 0, 0, 0, 0];
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp {
        flags: u8,
    },
    Udp {
        zero_checksum: bool,
    },
    /// Ports are unused; an echo's identifier is `id`.
    Icmp {
        kind: u8,
        id: u16,
    },
    /// An ICMP error; the payload is the embedded packet.
    IcmpError {
        kind: u8,
        code: u8,
    },
}

/// An Ethernet + IPv4 + TCP/UDP/ICMP frame, built with correct checksums.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub l4: L4,
    pub ip_options: Vec<u8>,
    /// IP flags and fragment offset, host order.
    pub frag: u16,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn tcp(src: &str, dst: &str, flags: u8) -> Frame {
        Frame::new(ep(src), ep(dst), L4::Tcp { flags })
    }

    pub fn udp(src: &str, dst: &str) -> Frame {
        Frame::new(
            ep(src),
            ep(dst),
            L4::Udp {
                zero_checksum: false,
            },
        )
    }

    pub fn icmp(src: &str, dst: &str, kind: u8, id: u16) -> Frame {
        Frame::new(
            SocketAddrV4::new(ip(src), 0),
            SocketAddrV4::new(ip(dst), 0),
            L4::Icmp { kind, id },
        )
    }

    /// An ICMP error from `src` to `dst` about `about`, embedding its IPv4
    /// header and the first 8 bytes of its L4 header (RFC 792).
    pub fn icmp_error(src: &str, dst: &str, kind: u8, code: u8, about: &[u8]) -> Frame {
        let inner_len = usize::from(about[14] & 0x0f) * 4 + 8;
        Frame::new(
            SocketAddrV4::new(ip(src), 0),
            SocketAddrV4::new(ip(dst), 0),
            L4::IcmpError { kind, code },
        )
        .payload(&about[14..14 + inner_len])
    }

    pub fn new(src: SocketAddrV4, dst: SocketAddrV4, l4: L4) -> Frame {
        Frame {
            src,
            dst,
            l4,
            ip_options: Vec::new(),
            frag: 0,
            payload: b"netlab!!".to_vec(),
        }
    }

    pub fn from(mut self, src: SocketAddrV4) -> Frame {
        self.src = src;
        self
    }

    pub fn to(mut self, dst: SocketAddrV4) -> Frame {
        self.dst = dst;
        self
    }

    pub fn icmp_id(mut self, new_id: u16) -> Frame {
        if let L4::Icmp { id, .. } = &mut self.l4 {
            *id = new_id;
        }
        self
    }

    pub fn ip_options(mut self, options: &[u8]) -> Frame {
        self.ip_options = options.to_vec();
        self
    }

    pub fn frag(mut self, frag: u16) -> Frame {
        self.frag = frag;
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Frame {
        self.payload = payload.to_vec();
        self
    }

    pub fn zero_udp_checksum(mut self) -> Frame {
        self.l4 = L4::Udp {
            zero_checksum: true,
        };
        self
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::Udp { .. } => IPPROTO_UDP,
            L4::Icmp { .. } | L4::IcmpError { .. } => IPPROTO_ICMP,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.bytes_with_proto(self.proto())
    }

    /// The frame with another IP protocol number in its header (the L4
    /// bytes stay as built).
    pub fn bytes_with_proto(&self, proto: u8) -> Vec<u8> {
        assert_eq!(self.ip_options.len() % 4, 0, "IP options come in words");
        let (sport, dport) = (self.src.port(), self.dst.port());
        let mut l4 = Vec::new();
        match self.l4 {
            L4::Tcp { flags } => {
                let ack: u32 = if flags & TCP_ACK != 0 { 2000 } else { 0 };
                l4.extend(sport.to_be_bytes());
                l4.extend(dport.to_be_bytes());
                l4.extend(1000u32.to_be_bytes());
                l4.extend(ack.to_be_bytes());
                l4.extend([5 << 4, flags]);
                l4.extend(64240u16.to_be_bytes());
                l4.extend([0, 0, 0, 0]); // checksum, urgent pointer
            }
            L4::Udp { .. } => {
                let len = (8 + self.payload.len()) as u16;
                l4.extend(sport.to_be_bytes());
                l4.extend(dport.to_be_bytes());
                l4.extend(len.to_be_bytes());
                l4.extend([0, 0]);
            }
            L4::Icmp { kind, id } => {
                l4.extend([kind, 0, 0, 0]);
                l4.extend(id.to_be_bytes());
                l4.extend(1u16.to_be_bytes());
            }
            L4::IcmpError { kind, code } => l4.extend([kind, code, 0, 0, 0, 0, 0, 0]),
        }
        l4.extend(&self.payload);
        let pseudo = pseudo_header(*self.src.ip(), *self.dst.ip(), self.proto(), l4.len());
        match self.l4 {
            L4::Tcp { .. } => {
                let sum = checksum(&[&pseudo, &l4]);
                l4[16..18].copy_from_slice(&sum.to_be_bytes());
            }
            L4::Udp { zero_checksum } => {
                // RFC 768: a computed zero is sent as all ones; zero means none.
                let sum = match checksum(&[&pseudo, &l4]) {
                    _ if zero_checksum => 0,
                    0 => 0xffff,
                    sum => sum,
                };
                l4[6..8].copy_from_slice(&sum.to_be_bytes());
            }
            L4::Icmp { .. } | L4::IcmpError { .. } => {
                let sum = checksum(&[&l4]);
                l4[2..4].copy_from_slice(&sum.to_be_bytes());
            }
        }
        let ihl = 5 + self.ip_options.len() / 4;
        let tot_len = (ihl * 4 + l4.len()) as u16;
        let mut ip = vec![0x40 | ihl as u8, 0];
        ip.extend(tot_len.to_be_bytes());
        ip.extend(0x1234u16.to_be_bytes());
        ip.extend(self.frag.to_be_bytes());
        ip.extend([64, proto, 0, 0]);
        ip.extend(self.src.ip().octets());
        ip.extend(self.dst.ip().octets());
        ip.extend(&self.ip_options);
        let sum = checksum(&[&ip]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());

        let mut frame = ethernet(ETH_P_IP);
        frame.extend(ip);
        frame.extend(l4);
        frame
    }
}

pub fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut frame = DST_MAC.to_vec();
    frame.extend(SRC_MAC);
    frame.extend(ethertype.to_be_bytes());
    frame
}

pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4_len: usize) -> Vec<u8> {
    let mut pseudo = src.octets().to_vec();
    pseudo.extend(dst.octets());
    pseudo.extend([0, proto]);
    pseudo.extend((l4_len as u16).to_be_bytes());
    pseudo
}

/// The ones'-complement sum of `data` in 16-bit words, folded.
pub fn ones_sum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|w| u32::from(w[0]) << 8 | u32::from(w.get(1).copied().unwrap_or(0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of the concatenated `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    !ones_sum(&parts.concat())
}

/// Recomputes the IPv4 header checksum of an edited frame.
pub fn fix_ip_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    fix_ip_checksum_over(frame, ihl);
}

/// Recomputes the IPv4 header checksum over the first `len` header bytes
/// (for headers whose IHL lies).
pub fn fix_ip_checksum_over(frame: &mut [u8], len: usize) {
    frame[24..26].copy_from_slice(&[0, 0]);
    let sum = checksum(&[&frame[14..14 + len]]);
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
}

/// Source and destination as the frame's bytes say (ICMP: ports are 0),
/// read independently of [`Frame`], at the L4 offset the IHL gives.
pub fn endpoints(frame: &[u8]) -> (SocketAddrV4, SocketAddrV4) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let l4 = 14 + ihl;
    let addr = |at: usize| Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
    let port = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    let (sport, dport) = match frame[23] {
        IPPROTO_TCP | IPPROTO_UDP => (port(l4), port(l4 + 2)),
        _ => (0, 0),
    };
    (
        SocketAddrV4::new(addr(26), sport),
        SocketAddrV4::new(addr(30), dport),
    )
}

pub fn icmp_id(frame: &[u8]) -> u16 {
    let l4 = 14 + usize::from(frame[14] & 0x0f) * 4;
    u16::from_be_bytes([frame[l4 + 4], frame[l4 + 5]])
}

/// Asserts that the IPv4 header checksum and the L4 checksum (TCP and UDP:
/// pseudo-header included) of `frame` verify. A UDP checksum of zero
/// ("none") is accepted only when `zero_udp_ok`.
#[track_caller]
pub fn assert_checksums(frame: &[u8], zero_udp_ok: bool) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let tot_len = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    assert_eq!(
        ones_sum(&frame[14..14 + ihl]),
        0xffff,
        "IPv4 header checksum does not verify"
    );
    let l4 = &frame[14 + ihl..14 + tot_len];
    let proto = frame[23];
    let src = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
    let dst = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
    let pseudo = pseudo_header(src, dst, proto, l4.len());
    match proto {
        IPPROTO_TCP => assert_eq!(
            ones_sum(&[&pseudo[..], l4].concat()),
            0xffff,
            "TCP checksum does not verify"
        ),
        IPPROTO_UDP if l4[6..8] == [0, 0] => {
            assert!(zero_udp_ok, "UDP checksum was zeroed");
        }
        IPPROTO_UDP => assert_eq!(
            ones_sum(&[&pseudo[..], l4].concat()),
            0xffff,
            "UDP checksum does not verify"
        ),
        IPPROTO_ICMP => assert_eq!(ones_sum(l4), 0xffff, "ICMP checksum does not verify"),
        other => panic!("no checksum rule for protocol {other}"),
    }
}

#[track_caller]
pub fn assert_frame_eq(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let first = actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a != e)
        .unwrap_or(actual.len().min(expected.len()));
    panic!(
        "{what}: frames differ from byte {first} (lengths {} and {})\n  actual:   {}\n  expected: {}",
        actual.len(),
        expected.len(),
        hex(actual),
        hex(expected)
    );
}

pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_helper_matches_rfc_1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        assert_eq!(
            ones_sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
        let frame = Frame::tcp("198.18.0.2:40000", "198.18.0.1:8080", TCP_SYN).bytes();
        assert_checksums(&frame, false);
        let frame = Frame::icmp("192.168.15.1", "198.18.0.2", ICMP_ECHO_REQUEST, 9)
            .ip_options(&[1, 1, 1, 0])
            .bytes();
        assert_checksums(&frame, false);
        assert_eq!(
            endpoints(
                &Frame::udp("1.2.3.4:5", "6.7.8.9:10")
                    .ip_options(&[1, 1, 1, 0])
                    .bytes()
            ),
            (ep("1.2.3.4:5"), ep("6.7.8.9:10"))
        );
    }
}
