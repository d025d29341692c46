//! Ethernet.

pub const ETH_HLEN: usize = 14;
pub const ETH_ALEN: usize = 6;
pub const ETH_P_IP: u16 = 0x0800;

/// Field offsets.
pub const ETH_DEST_OFF: usize = 0;
pub const ETH_SOURCE_OFF: usize = 6;
pub const ETH_PROTO_OFF: usize = 12;

/// Destination and source MAC, as they sit in the frame.
pub type MacPair = [u8; 2 * ETH_ALEN];

/// Whether a destination MAC is a group address (multicast or broadcast).
#[inline(always)]
pub fn is_group(mac: &[u8; ETH_ALEN]) -> bool {
    mac[0] & 1 != 0
}
