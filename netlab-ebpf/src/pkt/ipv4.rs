//! IPv4.

use core::mem::offset_of;

use super::eth::ETH_HLEN;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

/// The IPv4 header of every frame netlab handles starts right after Ethernet.
pub const L3_OFF: usize = ETH_HLEN;

/// Field offsets from the start of an IPv4 header.
pub const IPV4_TTL_OFF: usize = offset_of!(Ipv4Hdr, ttl);
pub const IPV4_CSUM_OFF: usize = offset_of!(Ipv4Hdr, check);
pub const IPV4_SADDR_OFF: usize = offset_of!(Ipv4Hdr, saddr);
pub const IPV4_DADDR_OFF: usize = offset_of!(Ipv4Hdr, daddr);

pub const IPV4_MIN_HLEN: usize = 20;

/// `frag_off` bits (host order).
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;

impl Ipv4Hdr {
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.ver_ihl >> 4
    }

    /// Header length in bytes (options included).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.ver_ihl & 0x0f) * 4
    }

    #[inline(always)]
    pub fn total_len(&self) -> usize {
        usize::from(u16::from_be(self.tot_len))
    }

    /// Whether this is a fragment after the first (no L4 header in it).
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        u16::from_be(self.frag_off) & IP_OFFSET != 0
    }

    /// Whether more fragments of this datagram follow.
    #[inline(always)]
    pub fn more_fragments(&self) -> bool {
        u16::from_be(self.frag_off) & IP_MF != 0
    }
}
