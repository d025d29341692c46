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
pub const TCP_ACK: u8 = 0x10;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROB: u8 = 12;
