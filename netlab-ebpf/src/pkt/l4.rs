//! TCP, UDP and ICMP: header sizes, field offsets from the start of the L4
//! header, and the values netlab tells apart.

pub const TCP_MIN_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
/// ICMP header with the echo identifier and sequence (or the unused word of
/// an error), all RFC 792 guarantees.
pub const ICMP_HLEN: usize = 8;

/// Source and destination port (TCP and UDP alike).
pub const L4_SPORT_OFF: usize = 0;
pub const L4_DPORT_OFF: usize = 2;
pub const TCP_DOFF_OFF: usize = 12;
pub const TCP_CSUM_OFF: usize = 16;
pub const UDP_LEN_OFF: usize = 4;
pub const UDP_CSUM_OFF: usize = 6;
pub const ICMP_CSUM_OFF: usize = 2;
pub const ICMP_ID_OFF: usize = 4;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

/// Whether a TCP flag combination is one a real stack sends, as
/// nf_conntrack's `tcp_valid_flags` (PSH, ECE and CWR left aside): what
/// fails is INVALID there, and never translated here.
#[inline(always)]
pub fn tcp_flags_valid(flags: u8) -> bool {
    const SYN: u8 = TCP_SYN;
    const SYN_URG: u8 = TCP_SYN | TCP_URG;
    const SYN_ACK: u8 = TCP_SYN | TCP_ACK;
    const RST: u8 = TCP_RST;
    const RST_ACK: u8 = TCP_RST | TCP_ACK;
    const FIN_ACK: u8 = TCP_FIN | TCP_ACK;
    const FIN_ACK_URG: u8 = TCP_FIN | TCP_ACK | TCP_URG;
    const ACK: u8 = TCP_ACK;
    const ACK_URG: u8 = TCP_ACK | TCP_URG;
    matches!(
        flags & !(TCP_PSH | TCP_ECE | TCP_CWR),
        SYN | SYN_URG | SYN_ACK | RST | RST_ACK | FIN_ACK | FIN_ACK_URG | ACK | ACK_URG
    )
}

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROB: u8 = 12;
pub const ICMP_TIMESTAMP: u8 = 13;
pub const ICMP_TIMESTAMP_REPLY: u8 = 14;
pub const ICMP_INFO_REQUEST: u8 = 15;
pub const ICMP_INFO_REPLY: u8 = 16;
pub const ICMP_ADDRESS: u8 = 17;
pub const ICMP_ADDRESS_REPLY: u8 = 18;

/// Whether an ICMP type is a query that nf_conntrack tracks by its
/// identifier (echo, timestamp, information, address mask): `Some(true)`
/// for a request, `Some(false)` for a reply.
#[inline(always)]
pub fn icmp_query(kind: u8) -> Option<bool> {
    match kind {
        ICMP_ECHO_REQUEST | ICMP_TIMESTAMP | ICMP_INFO_REQUEST | ICMP_ADDRESS => Some(true),
        ICMP_ECHO_REPLY | ICMP_TIMESTAMP_REPLY | ICMP_INFO_REPLY | ICMP_ADDRESS_REPLY => {
            Some(false)
        }
        _ => None,
    }
}
